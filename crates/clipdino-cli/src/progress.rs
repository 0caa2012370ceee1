//! Progress bars (stderr, drawn only on a terminal) and warnings that do not tear them.

use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

fn multi() -> &'static MultiProgress {
    static M: OnceLock<MultiProgress> = OnceLock::new();
    // MultiProgress draws to stderr and hides itself when stderr is not a terminal.
    M.get_or_init(MultiProgress::new)
}

/// A bar of `len` steps labelled `msg`.
pub fn bar(len: u64, msg: impl Into<String>) -> ProgressBar {
    let pb = multi().add(ProgressBar::new(len));
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>22} [{bar:32}] {pos}/{len} {elapsed_precise}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg.into());
    pb
}

/// A spinner for work without a known length.
pub fn spinner(msg: impl Into<String>) -> ProgressBar {
    let pb = multi().add(ProgressBar::new_spinner());
    pb.set_message(msg.into());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Print a warning line on stderr.
pub fn warn(msg: impl AsRef<str>) {
    let line = format!("warning: {}", msg.as_ref());
    multi().suspend(|| eprintln!("{line}"));
}

/// Remove any bars still drawn (before printing an error).
pub fn clear() {
    let _ = multi().clear();
}

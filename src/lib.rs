//! The clipdino browser app: a Yew UI thread and one Web Worker that owns the model.
//!
//! * [`protocol`]: the message enums between them; [`transport`]: how they travel;
//!   [`bridge`]: the worker as the UI thread sees it.
//! * [`state`]: plain state, actions and reducer, share-link codec, weights-source rules
//!   (unit-tested natively); [`url`]: URL helpers of UI and worker.
//! * [`components`], [`hooks`], [`context`], [`canvas`]: the UI; it never does tensor math.
//! * [`worker`]: weights download + Cache API, photo decoding, the model and its cached
//!   image features; a pure scheduler decides what runs next (unit-tested natively).

pub mod bridge;
pub mod canvas;
pub mod components;
pub mod context;
mod crash;
pub mod hooks;
pub mod palette;
pub mod protocol;
pub mod samples;
pub mod state;
pub mod transport;
pub mod url;
pub mod worker;

/// UI entry point (`src/bin/app.rs`).
pub fn start_app() {
    crash::install_panic_banner();
    yew::Renderer::<components::App>::new().render();
}

/// Worker entry point (`src/bin/worker.rs`).
pub fn start_worker() {
    worker::start();
}

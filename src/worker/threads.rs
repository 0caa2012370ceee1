//! The model worker's threads: in the multi-threaded build (`+atomics`, started by the page
//! when it is cross-origin isolated) a pool of Web Workers ([`clipdino_pool`]) handed to the
//! model crate ([`clipdino::par`]); in the single-threaded build just the worker itself.

use crate::protocol::ThreadInfo;
pub use clipdino_pool::{hardware_threads, wanted, MAX_THREADS};

#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
pub use clipdino_pool::run_pool_thread;

/// Use `wanted(setting)` threads from now on: start a pool of that many (or none for 1) and
/// hand it to the model crate. Returns what is in use; a pool that cannot start leaves the model
/// on this thread and says why in the info's note.
#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
pub async fn configure(setting: Option<usize>) -> ThreadInfo {
    let n = wanted(setting);
    let mut info = ThreadInfo {
        multi_threaded_build: true,
        threads: 1,
        hardware: hardware_threads(),
        note: None,
    };
    if n <= 1 {
        clipdino::par::set_pool(None);
        return info;
    }
    match clipdino_pool::start(n).await {
        Ok(p) => {
            clipdino::par::set_pool(Some(p));
            info.threads = n;
        }
        Err(e) => {
            clipdino::par::set_pool(None);
            info.note = Some(e);
        }
    }
    info
}

/// The single-threaded build: nothing to start.
#[cfg(not(all(target_arch = "wasm32", target_feature = "atomics")))]
pub async fn configure(_setting: Option<usize>) -> ThreadInfo {
    ThreadInfo {
        multi_threaded_build: false,
        threads: 1,
        hardware: hardware_threads(),
        note: None,
    }
}

//! Model worker entry point: the single-threaded build (Trunk, `data-type="worker"`) and the
//! multi-threaded one (`scripts/build-site.sh`, loaded by `worker-mt.js`).

fn main() {
    clipdino_web::start_worker();
}

/// A thread of the worker's pool: runs until the pool is dropped (called by `worker-mt.js` in a
/// pool worker, see `src/worker/threads.rs`).
#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn clipdino_pool_thread(id: u32) {
    clipdino_web::worker::threads::run_pool_thread(id);
}

//! wasm-bindgen surface for `bench/worker.js`: steps in and results out as JSON strings.

use wasm_bindgen::prelude::*;

use crate::suite::{self, PlanKind, Step, Suite};

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen]
pub struct WebBench {
    suite: Suite,
}

#[wasm_bindgen]
impl WebBench {
    /// `rgb`: the photo as packed RGB bytes, `height · width · 3`.
    #[wasm_bindgen(constructor)]
    pub fn new(rgb: &[u8], width: usize, height: usize) -> Result<WebBench, JsError> {
        let photo = suite::photo_tensor(rgb, width, height).map_err(js_err)?;
        Ok(Self {
            suite: Suite::new(photo).map_err(js_err)?,
        })
    }

    /// Copy a weight file into wasm memory for the next `load` step.
    pub fn add_file(&mut self, name: String, bytes: Vec<u8>) {
        self.suite.add_file(name, bytes);
    }

    /// Run one step (JSON, see `suite::Step`); returns the result as JSON.
    pub fn step(&mut self, step: &str) -> Result<String, JsError> {
        let step: Step = serde_json::from_str(step).map_err(js_err)?;
        let r = self.suite.run(&step).map_err(js_err)?;
        serde_json::to_string(&r).map_err(js_err)
    }

    /// [`Self::step`] on this thread alone, the pool (if any) kept up but idle
    /// ([`clipdino::par::sequential`]): one thread, timed in turn with the pool's N.
    pub fn step_sequential(&mut self, step: &str) -> Result<String, JsError> {
        clipdino::par::sequential(|| self.step(step))
    }
}

/// The steps of a plan (`full`, `memory`, `smoke`, `kernels`, `profile`) as a JSON array.
#[wasm_bindgen]
pub fn plan(kind: &str, runs: usize) -> Result<String, JsError> {
    let kind: PlanKind =
        serde_json::from_value(serde_json::Value::String(kind.into())).map_err(js_err)?;
    serde_json::to_string(&suite::plan(kind, runs)).map_err(js_err)
}

/// Compute with `n` threads from the next step on: a pool of `n` Web Workers sharing this
/// module's memory (`clipdino_pool`), or none for 1. Only in the multi-threaded build.
#[cfg(target_feature = "atomics")]
#[wasm_bindgen]
pub async fn set_threads(n: usize) -> Result<usize, JsError> {
    if n <= 1 {
        clipdino::par::set_pool(None);
        return Ok(1);
    }
    let pool = clipdino_pool::start(n).await.map_err(js_err)?;
    clipdino::par::set_pool(Some(pool));
    Ok(clipdino::par::threads())
}

/// A thread of the pool (called by `bench/worker.js` in a pool worker).
#[cfg(target_feature = "atomics")]
#[wasm_bindgen]
pub fn clipdino_pool_thread(id: u32) {
    clipdino_pool::run_pool_thread(id);
}

/// Threads the model computes with (1 in the single-threaded build).
#[wasm_bindgen]
pub fn threads() -> usize {
    clipdino::par::threads()
}

/// Current size of the wasm linear memory in bytes (`memory.buffer.byteLength`).
#[wasm_bindgen]
pub fn memory_bytes() -> f64 {
    (core::arch::wasm32::memory_size::<0>() * 65536) as f64
}

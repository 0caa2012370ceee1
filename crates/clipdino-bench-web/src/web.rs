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
}

/// The steps of a plan (`full`, `memory`, `smoke`, `kernels`, `profile`) as a JSON array.
#[wasm_bindgen]
pub fn plan(kind: &str, runs: usize) -> Result<String, JsError> {
    let kind: PlanKind =
        serde_json::from_value(serde_json::Value::String(kind.into())).map_err(js_err)?;
    serde_json::to_string(&suite::plan(kind, runs)).map_err(js_err)
}

/// Current size of the wasm linear memory in bytes (`memory.buffer.byteLength`).
#[wasm_bindgen]
pub fn memory_bytes() -> f64 {
    (core::arch::wasm32::memory_size::<0>() * 65536) as f64
}

//! The GPU benchmark (`tests/gpu_bench/mod.rs`) in headless Chromium on the browser's WebGPU
//! (SwiftShader here: CPU emulation). Ignored: `bench/run.sh --plan gpu` runs it with
//! `-- --include-ignored --nocapture` and takes the line after `GPU_BENCH_JSON` from the output.
#![cfg(target_arch = "wasm32")]

mod gpu_bench;

use clipdino_gpu::Gpu;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
#[ignore = "a benchmark (minutes on CPU emulation): bench/run.sh --plan gpu"]
async fn gpu_benchmark() {
    let gpu = Gpu::new().await.expect("WebGPU in the browser");
    // `performance.now()` of the page (js-sys only: no web-sys features to add).
    let perf = js_sys::Reflect::get(&js_sys::global(), &"performance".into()).expect("performance");
    let perf_now: js_sys::Function = js_sys::Reflect::get(&perf, &"now".into())
        .expect("performance.now")
        .into();
    let now = move || {
        perf_now
            .call0(&perf)
            .ok()
            .and_then(|v| v.as_f64())
            .expect("performance.now()")
    };
    let out = gpu_bench::run(&gpu, &now, 3, &[448], 1).await;
    console_log!("GPU_BENCH_JSON {}", serde_json::to_string(&out).unwrap());
}

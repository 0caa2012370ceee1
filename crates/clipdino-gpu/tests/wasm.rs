//! The kernel checks of `tests/common/mod.rs` in headless Chromium, on the browser's WebGPU
//! (SwiftShader there: launch flags in `webdriver.json`): `cargo test -p clipdino-gpu --target
//! wasm32-unknown-unknown --test wasm`. No adapter is a failure.
#![cfg(target_arch = "wasm32")]

mod common;

use clipdino_gpu::Gpu;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

async fn gpu() -> Gpu {
    let gpu = Gpu::new()
        .await
        .unwrap_or_else(|e| panic!("WebGPU in the browser: {e}"));
    console_log!("adapter: {}", gpu.describe());
    gpu
}

#[wasm_bindgen_test]
async fn matmul_linear_matches_cpu() {
    common::matmul_linear_matches_cpu(&gpu().await).await;
}

#[wasm_bindgen_test]
async fn matmul_epilogue_gelu_quick_gelu_and_residual_match_cpu() {
    common::matmul_epilogue_gelu_quick_gelu_and_residual_match_cpu(&gpu().await).await;
}

#[wasm_bindgen_test]
async fn matmul_strided_attention_products_match_cpu() {
    common::matmul_strided_attention_products_match_cpu(&gpu().await).await;
}

#[wasm_bindgen_test]
async fn layer_norm_matches_cpu() {
    common::layer_norm_matches_cpu(&gpu().await).await;
}

#[wasm_bindgen_test]
async fn softmax_matches_cpu() {
    common::softmax_matches_cpu(&gpu().await).await;
}

#[wasm_bindgen_test]
async fn matmul_compact_weights_match_dequantized_cpu() {
    common::matmul_compact_weights_match_dequantized_cpu(&gpu().await).await;
}

//! Each WGSL kernel against a slow, obvious f64 version on the CPU (`tests/common/mod.rs`), on
//! whatever adapter the platform offers (Mesa's lavapipe after `scripts/setup.sh`). No adapter is
//! a failure, not a skip: these tests exist to prove the kernels on a real WebGPU implementation.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use clipdino_gpu::{block_on, Gpu};

fn gpu() -> Gpu {
    let gpu = block_on(Gpu::new()).unwrap_or_else(|e| {
        panic!("{e}: install a Vulkan driver (scripts/setup.sh installs Mesa's lavapipe)")
    });
    println!("adapter: {}", gpu.describe());
    gpu
}

#[test]
fn matmul_linear_matches_cpu() {
    block_on(common::matmul_linear_matches_cpu(&gpu()));
}

#[test]
fn matmul_epilogue_gelu_quick_gelu_and_residual_match_cpu() {
    block_on(common::matmul_epilogue_gelu_quick_gelu_and_residual_match_cpu(&gpu()));
}

#[test]
fn matmul_strided_attention_products_match_cpu() {
    block_on(common::matmul_strided_attention_products_match_cpu(&gpu()));
}

#[test]
fn layer_norm_matches_cpu() {
    block_on(common::layer_norm_matches_cpu(&gpu()));
}

#[test]
fn softmax_matches_cpu() {
    block_on(common::softmax_matches_cpu(&gpu()));
}

#[test]
fn matmul_compact_weights_match_dequantized_cpu() {
    block_on(common::matmul_compact_weights_match_dequantized_cpu(&gpu()));
}

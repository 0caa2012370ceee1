//! A WebGPU compute path for the clipdino image tower: WGSL kernels (tiled matmul with a fused
//! bias / GELU / residual epilogue, LayerNorm, softmax) driven from Rust through `wgpu`, natively
//! (Vulkan, e.g. Mesa's lavapipe in the tests) and in the browser (`navigator.gpu`).
//!
//! * [`Gpu`]: one adapter + device + compiled pipelines, and buffer upload / readback.
//! * [`kernels`]: the dispatches, each the GPU twin of one CPU operation.
//! * [`GpuVision`]: the image tower of a loaded model on the GPU, with the same output
//!   ([`clipdino::clip::VisionOutput`]) as the CPU [`clipdino::clip::VisionTransformer`].
//!
//! The text tower, the CLIP-DINOiser head and every last-block variant switch stay on the CPU:
//! the GPU returns the tokens entering the last block ([`clipdino::clip::Trunk`]) like the CPU
//! path does.

mod context;
mod error;
pub mod kernels;
mod tower;

pub use context::{Gpu, GpuBuffer};
pub use error::{GpuError, Result};
pub use tower::GpuVision;

/// Wait for a future of this crate natively (the CLI, the tests). The browser awaits instead.
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

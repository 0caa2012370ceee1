//! A WebGPU compute path for the clipdino image tower: WGSL kernels (tiled matmul with a fused
//! bias / GELU / residual epilogue, LayerNorm, softmax) driven from Rust through `wgpu`, natively
//! (Vulkan, e.g. Mesa's lavapipe in the tests) and in the browser (`navigator.gpu`).
//!
//! * [`Gpu`]: one adapter + device + compiled pipelines, and buffer upload / readback.
//! * [`kernels`]: the dispatches, each the GPU twin of one CPU operation.
//! * [`GpuVision`]: the image tower of a loaded model on the GPU, with the same output
//!   ([`clipdino::clip::VisionOutput`]) as the CPU [`clipdino::clip::VisionTransformer`].
//! * [`GpuWeight`], [`GpuWeights`]: weight matrices held compactly on the device (Q8_0 blocks
//!   or f16, dequantized inside the matmul kernel), so that GPU memory stays near the download.
//!
//! The text tower, the CLIP-DINOiser head and every last-block variant switch stay on the CPU:
//! the GPU returns the tokens entering the last block ([`clipdino::clip::Trunk`]) like the CPU
//! path does.

mod check;
mod context;
mod error;
pub mod kernels;
mod lost;
mod tower;
mod weight;

pub use check::{self_check, SELF_CHECK_TOLERANCE};
pub use context::{is_cpu_emulation, Gpu, GpuBuffer};
pub use error::{GpuError, Result};
pub use lost::LostSignal;
pub use tower::GpuVision;
pub use weight::{GpuWeight, GpuWeights, Q8Blocks, WeightFormat, Q8_BLOCK};

/// Where the image tower runs: the user's setting (the app's "compute" setting, the CLI's
/// `--device`). Travels as its lower-case name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The GPU when an adapter exists and passes the [`self_check`], else the CPU.
    #[default]
    Auto,
    /// The GPU (a GPU failure still falls back to the CPU, with a word).
    Gpu,
    /// The SIMD CPU path only; no adapter is requested.
    Cpu,
}

impl DeviceChoice {
    pub const ALL: [DeviceChoice; 3] = [DeviceChoice::Auto, DeviceChoice::Gpu, DeviceChoice::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Gpu => "gpu",
            DeviceChoice::Cpu => "cpu",
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|d| d.name()).collect();
                format!("unknown device `{s}` (one of: {})", names.join(", "))
            })
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Wait for a future of this crate natively (the CLI, the tests). The browser awaits instead.
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

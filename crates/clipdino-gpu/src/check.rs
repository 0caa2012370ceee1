//! The one-time self-check of an adapter: a small random image tower (the shape of
//! `ClipConfig::tiny`, with the loaded model's activation) run on the GPU and on the CPU, on a
//! 48×64 test image. Its MLP matrices are stored f16 and the other matrices Q8_0 (`proj` f32),
//! so every matmul variant runs (f16, Q8 and f32 weights, the strided attention products); the
//! CPU computes with the same numbers dequantized. A driver that miscompiles or mis-executes a
//! kernel fails it before any photo reaches the GPU. It needs no weights of the loaded model and
//! frees what it uploads.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use clipdino::clip::{preprocess, VisionTransformer};
use clipdino::loaders::random_clip_store;
use clipdino::quant::is_matrix;
use clipdino::{Activation, ClipConfig, ComputePath, Stored, TensorStore, Vb};

use crate::context::Gpu;
use crate::error::{GpuError, Result};
use crate::tower::GpuVision;

/// Largest `max |Δ| / max(1, max |cpu|)` the self-check accepts over every output (f32 on both
/// sides; correct kernels measure ~1e-6).
pub const SELF_CHECK_TOLERANCE: f32 = 1e-3;

fn scaled_diff(got: &Tensor, want: &Tensor) -> Result<f32> {
    let max =
        |t: &Tensor| -> Result<f32> { Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?) };
    if got.dims() != want.dims() {
        return Ok(f32::INFINITY);
    }
    let d = max(&(got - want)?)?;
    // NaN anywhere makes the difference NaN: report it as a failure.
    Ok(if d.is_nan() {
        f32::INFINITY
    } else {
        d / max(want)?.max(1.0)
    })
}

/// The image tower's matrices of `store` as a GGUF bundle holds them (`[out, in]` blocks): the
/// MLP's f16, the others Q8_0, `visual.proj` (right-multiplied) left f32.
fn compact_matrices(mut store: TensorStore) -> Result<TensorStore> {
    let names: Vec<String> = store
        .names()
        .into_iter()
        .filter(|n| n.starts_with("visual.") && is_matrix(n) && *n != "visual.proj")
        .map(String::from)
        .collect();
    for name in names {
        let Some(Stored::Float(t)) = store.get(&name).cloned() else {
            continue;
        };
        let t = t.flatten_from(1)?;
        let dtype = if name.contains(".mlp.") {
            GgmlDType::F16
        } else {
            GgmlDType::Q8_0
        };
        store.insert(name, Stored::Quant(Arc::new(QTensor::quantize(&t, dtype)?)));
    }
    Ok(store)
}

/// Run the self-check on `gpu`; `Ok(worst scaled difference)` when it passes.
pub async fn self_check(gpu: &Gpu, activation: Activation) -> Result<f32> {
    let cfg = ClipConfig {
        activation,
        ..ClipConfig::tiny()
    };
    let vb = Vb::new(
        Arc::new(compact_matrices(random_clip_store(&cfg, 15))?),
        Device::Cpu,
        ComputePath::F32,
    )
    .pp("visual");
    let cpu = VisionTransformer::new(&vb, &cfg)?;
    let tower = GpuVision::new(gpu, &vb, &cfg)?;
    let (h, w) = (48, 64);
    let image: Vec<f32> = (0..3 * h * w)
        .map(|i| (i * 37 % 101) as f32 / 100.0)
        .collect();
    let image = Tensor::from_vec(image, (3, h, w), &Device::Cpu)?;
    let pixels = preprocess(&image, cfg.vision.patch_size)?;
    let layer = 1;
    let want = cpu.forward(&pixels, layer, &mut |_, _| {})?;
    let got = tower
        .forward(gpu, &cpu, &pixels, layer, &mut |_, _| {})
        .await?;
    let mut worst = 0f32;
    for (g, w) in [
        (&got.pooled, &want.pooled),
        (&got.dense, &want.dense),
        (&got.inter, &want.inter),
        (&got.trunk.tokens, &want.trunk.tokens),
    ] {
        worst = worst.max(scaled_diff(g, w)?);
    }
    if worst <= SELF_CHECK_TOLERANCE {
        Ok(worst)
    } else {
        Err(GpuError::SelfCheck {
            worst,
            tolerance: SELF_CHECK_TOLERANCE,
        })
    }
}

//! Vectorisable f32 kernels for the two elementwise hot spots of the towers: the softmax of the
//! attention scores and the exact (erf) GELU of the MLPs.
//!
//! candle 0.11.1 evaluates both with a scalar libm call per element (`expf`, `erff`), which on a
//! ViT-B/16 at 448² costs about a quarter of the time of the matmuls of a block. Here both are
//! written branch-free over slices so that LLVM vectorises them (SSE/AVX natively, simd128 in
//! wasm32):
//! * `exp`: Cephes `expf` (range reduction by `ln 2` split in two parts, degree-6 polynomial,
//!   exponent built from bits); relative error ≈ 1e-7, exactly 0 for inputs below −87.3;
//! * `erf`: Abramowitz & Stegun 7.1.26 (`1 − (a₁t + … + a₅t⁵)·e^{−x²}`, `t = 1/(1 + p|x|)`),
//!   absolute error ≤ 1.5e-7 — far below the 1e-4 parity tolerance and f32 noise of the matmuls.
//!
//! Both run in place (the inputs are fresh intermediate results, so no allocation is needed) and
//! fall back to candle's own ops for non-f32, non-contiguous or non-CPU tensors.

use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp1, Layout, Shape, Tensor};

use crate::par;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n·LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5·2²³`: adding it rounds an f32 below 2²² to the nearest integer, held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const EXP_MIN: f32 = -87.33;
const EXP_MAX: f32 = 88.37;

/// `e^x` for f32, branch-free. Inputs below −87.3 (including −∞) give 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(EXP_MIN, EXP_MAX);
    let t = xc * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r2 + r + 1.0;
    let scale = f32::from_bits(((ni + 127) << 23) as u32);
    if x < EXP_MIN {
        0.0
    } else {
        y * scale
    }
}

/// `erf(x)` for f32 (Abramowitz & Stegun 7.1.26), branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// `x·Φ(x) = x/2 · (1 + erf(x/√2))`, torch's default `nn.GELU()`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `x·σ(1.702·x) = x / (1 + e^{−1.702·x})`, OpenAI CLIP's `QuickGELU` (open_clip
/// `transformer.QuickGELU`, transformers `QuickGELUActivation`).
#[inline(always)]
pub fn quick_gelu(x: f32) -> f32 {
    // For x below −51 the exponent saturates at e^{88.4}: the result is −0 … −1e-37, as in torch.
    x / (1.0 + exp(-1.702 * x))
}

/// Softmax of one row, in place.
pub(crate) fn softmax_row(row: &mut [f32]) {
    // Max and sum over 8 lanes so that they vectorise (a plain fold is sequential in IEEE order).
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v);
        }
    }
    let max = chunks.remainder().iter().fold(
        lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        |m, &v| m.max(v),
    );
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in sums.iter_mut().zip(c) {
            *l += v;
        }
    }
    let sum: f32 = sums.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("fastmath ops need a contiguous f32 tensor"),
    }
}

struct SoftmaxLastDim;

impl InplaceOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "clip-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        par::for_each_row(f32_slice_mut(s, l)?, n, softmax_row);
        Ok(())
    }
}

struct GeluErf;

impl InplaceOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "clip-gelu-erf"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        // Element-wise: rows of 4096 values are just a unit of work.
        par::for_each_row(f32_slice_mut(s, l)?, 4096, |row| {
            for v in row {
                *v = gelu_erf(*v);
            }
        });
        Ok(())
    }
}

struct QuickGelu;

impl InplaceOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "clip-quick-gelu"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        par::for_each_row(f32_slice_mut(s, l)?, 4096, |row| {
            for v in row {
                *v = quick_gelu(*v);
            }
        });
        Ok(())
    }
}

/// Sum of a row over 8 lanes (so that it vectorises), then the lanes and the tail in order.
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in sums.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    sums.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

/// LayerNorm of one row into `out`, in two passes (the mean, then the variance of the centred
/// values, so that a large mean loses no precision), as torch's `F.layer_norm` in f32.
fn layer_norm_row(row: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = lane_sum(row, |v| v) / n;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, &x), &w), &b) in out.iter_mut().zip(row).zip(w).zip(b) {
        *o = (x - mean) * inv * w + b;
    }
}

struct LayerNormLastDim<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f32,
}

impl CustomOp1 for LayerNormLastDim<'_> {
    fn name(&self) -> &'static str {
        "clip-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(v), Some((a, b))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("layer norm needs a contiguous f32 tensor")
        };
        let x = &v[a..b];
        let n = self.weight.len();
        let mut out = vec![0f32; x.len()];
        // The output rows are split over the threads; row i reads input row i.
        let rows_per_task = par::rows_per_task(x.len(), n);
        par::for_each_chunk(&mut out, rows_per_task * n, |t, chunk| {
            let x = &x[t * rows_per_task * n..];
            for (o, row) in chunk.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                layer_norm_row(row, o, self.weight, self.bias, self.eps);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// LayerNorm over the last dimension with `weight` and `bias` (both of its size) given as
/// slices, the rows in parallel. `None` when `x` is not a contiguous f32 CPU tensor of that
/// width (the caller then uses candle's ops).
pub fn layer_norm(
    x: &Tensor,
    weight: &[f32],
    bias: &[f32],
    eps: f64,
) -> Option<candle_core::Result<Tensor>> {
    let fits = x.dims().last() == Some(&weight.len()) && weight.len() == bias.len();
    (fast_path(x) && fits && !weight.is_empty()).then(|| {
        x.apply_op1_no_bwd(&LayerNormLastDim {
            weight,
            bias,
            eps: eps as f32,
        })
    })
}

/// Whether `x` can be overwritten by the in-place kernels.
fn fast_path(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu() && x.is_contiguous()
}

/// Softmax over the last dimension, computed in the storage of `x` when possible (no allocation).
/// `x` must own its storage, e.g. the fresh result of a matmul or an addition: views sharing it
/// would see the change. (Rows of −∞ only are not supported; torch gives NaN there.)
pub fn softmax_last_dim_(x: Tensor) -> candle_core::Result<Tensor> {
    if fast_path(&x) {
        x.inplace_op1(&SoftmaxLastDim)?;
        Ok(x)
    } else {
        candle_nn::ops::softmax_last_dim(&x.contiguous()?)
    }
}

/// Exact (erf) GELU, computed in the storage of `x` when possible; same contract as
/// [`softmax_last_dim_`].
pub fn gelu_(x: Tensor) -> candle_core::Result<Tensor> {
    if fast_path(&x) {
        x.inplace_op1(&GeluErf)?;
        Ok(x)
    } else {
        x.gelu_erf()
    }
}

/// QuickGELU in the storage of `x` when possible; same contract as [`gelu_`].
pub fn quick_gelu_(x: Tensor) -> candle_core::Result<Tensor> {
    if fast_path(&x) {
        x.inplace_op1(&QuickGelu)?;
        Ok(x)
    } else {
        x.broadcast_mul(&candle_nn::ops::sigmoid(&(&x * 1.702)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + i as f32 * (87.0 + 88.0) / 200_000.0;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn quick_gelu_is_accurate() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -60.0 + i as f32 * 120.0 / 200_000.0;
            let xd = x as f64;
            let want = xd / (1.0 + (-1.702 * xd).exp());
            worst = worst.max((quick_gelu(x) as f64 - want).abs() / want.abs().max(1.0));
        }
        assert!(worst < 1e-6, "max error {worst:e}");
        let x = Tensor::new(
            &[[-3.0f32, -0.5, 0.0, 0.25, 4.0]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let fast = quick_gelu_(x.copy().unwrap()).unwrap();
        let slow = quick_gelu_(x.t().unwrap()).unwrap().t().unwrap();
        let d = (fast - slow).unwrap().abs().unwrap().max_all().unwrap();
        assert!(
            d.to_scalar::<f32>().unwrap() < 1e-6,
            "fast and candle paths differ"
        );
    }

    #[test]
    fn gelu_is_accurate() {
        // Reference in f64 with libm's erf (as candle's own `gelu_erf` uses).
        let mut worst = 0f64;
        for i in 0..=100_000 {
            let x = -12.0 + i as f32 * 24.0 / 100_000.0;
            let xd = x as f64;
            let want =
                0.5 * xd * (1.0 + candle_core::cpu::erf::erf_f64(xd / std::f64::consts::SQRT_2));
            worst = worst.max((gelu_erf(x) as f64 - want).abs());
        }
        assert!(worst < 5e-7, "max |Δ| {worst:e}");
    }

    #[test]
    fn ops_match_candle() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 4.0, (3, 5, 37), &dev).unwrap())
            .contiguous()
            .unwrap();
        let mask = Tensor::from_vec(
            (0..37)
                .map(|j| if j > 20 { f32::NEG_INFINITY } else { 0.0 })
                .collect::<Vec<_>>(),
            37,
            &dev,
        )
        .unwrap();
        let xm = x.broadcast_add(&mask).unwrap();
        let d = |a: Tensor, b: Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let want = candle_nn::ops::softmax_last_dim(&xm).unwrap();
        assert!(d(softmax_last_dim_(xm.copy().unwrap()).unwrap(), want.clone()) < 1e-6);
        // The input itself is overwritten (in place).
        let y = xm.copy().unwrap();
        let _ = softmax_last_dim_(y.clone()).unwrap();
        assert!(d(y, want) < 1e-6);
        assert!(d(gelu_(x.copy().unwrap()).unwrap(), x.gelu_erf().unwrap()) < 2e-6);
        // Non-contiguous input: candle's path, `x` untouched.
        let xt = x.transpose(1, 2).unwrap();
        let want = candle_nn::ops::softmax_last_dim(&xt.contiguous().unwrap()).unwrap();
        assert!(d(softmax_last_dim_(xt.clone()).unwrap(), want) < 1e-6);
        assert!(d(gelu_(xt.clone()).unwrap(), xt.gelu_erf().unwrap()) < 2e-6);
    }
}

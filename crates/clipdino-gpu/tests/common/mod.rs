//! The kernel checks, shared by the native tests (`tests/kernels.rs`, on lavapipe) and the
//! browser's (`tests/wasm.rs`, on SwiftShader in headless Chromium): each WGSL kernel against a
//! slow, obvious f64 version on the CPU.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use clipdino_gpu::kernels::{Act, Encoder, GpuLayerNorm, Matmul, View};
use clipdino_gpu::{Gpu, GpuBuffer, Q8Blocks, WeightFormat};

/// Deterministic values in `[-scale, scale)` (xorshift).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

async fn read(gpu: &Gpu, b: &GpuBuffer) -> Vec<f32> {
    gpu.read("result", b, 0, b.len()).await.expect("readback")
}

fn assert_close(label: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let (mut worst, mut at) = (0f64, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w).abs() / w.abs().max(1.0);
        if d.is_nan() || d > worst {
            (worst, at) = (if d.is_nan() { f64::INFINITY } else { d }, i);
        }
    }
    println!("{label}: max scaled |Δ| = {worst:.2e}");
    assert!(
        worst <= tol,
        "{label}: element {at}: got {}, want {} (scaled |Δ| {worst:e} > {tol:e})",
        got[at],
        want[at]
    );
}

/// Every `|got − want|` within `bound` (per element); prints the worst `|Δ| / bound`.
fn assert_within(label: &str, got: &[f32], want: &[f64], bound: &[f64]) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let (mut worst, mut at) = (0f64, 0);
    for (i, ((&g, &w), &b)) in got.iter().zip(want).zip(bound).enumerate() {
        let r = (g as f64 - w).abs() / b;
        if r.is_nan() || r > worst {
            (worst, at) = (if r.is_nan() { f64::INFINITY } else { r }, i);
        }
    }
    println!("{label}: max |Δ| / bound = {worst:.2e}");
    assert!(
        worst <= 1.0,
        "{label}: element {at}: got {}, want {} (|Δ| > bound {:e})",
        got[at],
        want[at],
        bound[at]
    );
}

/// `erf` by Simpson's rule on `2/√π ∫₀ˣ e^{−t²} dt` (error far below f32's resolution).
fn erf_slow(x: f64) -> f64 {
    let n = 4000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for i in 1..n {
        s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

/// `x · Wᵀ + bias` with `W` `[n, k]`, then the activation, in f64.
fn linear_slow(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    m: usize,
    n: usize,
    k: usize,
    act: Act,
) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = bias[j] as f64;
            for l in 0..k {
                s += x[i * k + l] as f64 * w[j * k + l] as f64;
            }
            out[i * n + j] = match act {
                Act::None => s,
                Act::Gelu => 0.5 * s * (1.0 + erf_slow(s / 2f64.sqrt())),
                Act::QuickGelu => s / (1.0 + (-1.702 * s).exp()),
            };
        }
    }
    out
}

pub async fn matmul_linear_matches_cpu(gpu: &Gpu) {
    // Sizes that are not multiples of the 64×64×16 tiles.
    for (m, n, k) in [(1, 1, 1), (70, 131, 37), (197, 96, 64), (64, 64, 16)] {
        let (x, w, b) = (
            values(m * k, 1, 1.0),
            values(n * k, 2, 0.5),
            values(n, 3, 0.5),
        );
        let (gx, gw, gb) = (
            gpu.upload("x", &x).unwrap(),
            gpu.upload_weight("w", WeightFormat::F32, (n, k), &w)
                .unwrap(),
            gpu.upload("b", &b).unwrap(),
        );
        let out = gpu.zeros("out", m * n).unwrap();
        let mut enc = Encoder::new(gpu, "test");
        let mm = Matmul::linear(
            m as u32,
            (&gx, View::rows(0, k as u32)),
            &gw,
            Some(&gb),
            View::rows(0, n as u32),
        );
        enc.matmul(&mm, &out);
        enc.submit();
        let want = linear_slow(&x, &w, &b, m, n, k, Act::None);
        assert_close(
            &format!("linear {m}×{k}·{k}×{n}"),
            &read(gpu, &out).await,
            &want,
            1e-5,
        );
    }
}

/// Heavy-tailed weights (a cubed uniform, every 97th value ×40): blocks whose scale one outlier
/// sets, as in trained CLIP.
fn heavy_tailed(n: usize, seed: u64) -> Vec<f32> {
    values(n, seed, 1.0)
        .iter()
        .enumerate()
        .map(|(i, &u)| u * u * u * if i % 97 == 5 { 40.0 } else { 1.0 })
        .collect()
}

/// The compact weight formats (GGML Q8_0 blocks, f16) dequantized inside the matmul kernel
/// against a CPU product with the same numbers dequantized first (candle's Q8_0 dequantization;
/// f16 → f32), with bias and a fused GELU + residual.
pub async fn matmul_compact_weights_match_dequantized_cpu(gpu: &Gpu) {
    // k a multiple of the 32-value blocks; m, n not multiples of the 64×64 tiles.
    for (m, n, k) in [(1, 1, 32), (70, 131, 96), (197, 96, 160), (64, 64, 64)] {
        let (x, w, b) = (
            values(m * k, 21, 1.0),
            heavy_tailed(n * k, 22),
            values(n, 23, 0.5),
        );
        let (gx, gb) = (gpu.upload("x", &x).unwrap(), gpu.upload("b", &b).unwrap());
        let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap();
        let q8_values: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let blocks = Q8Blocks::from_ggml(&q, n, k, "w").unwrap();
        assert_eq!(
            blocks.dequantize(),
            q8_values,
            "Q8 blocks as candle reads them"
        );
        let f16_values: Vec<f32> = w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let cases = [
            (
                "q8",
                gpu.upload_q8("w", &blocks).unwrap(),
                q8_values,
                // int8 values, then the f16 scales padded to whole words.
                n * k + (n * k / 32).div_ceil(2) * 4,
            ),
            (
                "f16",
                gpu.upload_weight("w", WeightFormat::F16, (n, k), &w)
                    .unwrap(),
                f16_values,
                n * k * 2,
            ),
        ];
        for (name, gw, deq, bytes) in cases {
            assert_eq!(gw.bytes() as usize, bytes, "{name}: bytes on the device");
            let residual = values(m * n, 24, 2.0);
            let out = gpu.upload("out", &residual).unwrap();
            let mut enc = Encoder::new(gpu, "test");
            let mm = Matmul::linear(
                m as u32,
                (&gx, View::rows(0, k as u32)),
                &gw,
                Some(&gb),
                View::rows(0, n as u32),
            )
            .act(Act::Gelu)
            .accumulate();
            enc.matmul(&mm, &out);
            enc.submit();
            let want: Vec<f64> = linear_slow(&x, &deq, &b, m, n, k, Act::Gelu)
                .iter()
                .zip(&residual)
                .map(|(&y, &r)| y + r as f64)
                .collect();
            // Heavy-tailed weights cancel: the error of an f32 sum of k products is bounded by
            // ≈ k·2⁻²⁴ · Σ|x·w| (here < 1e-5 · Σ|x·w|), not by the size of the result; GELU's
            // slope is ≤ 1.13, and the residual add rounds once more.
            let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
            let bound: Vec<f64> = linear_slow(&abs(&x), &abs(&deq), &abs(&b), m, n, k, Act::None)
                .iter()
                .zip(&want)
                .map(|(&mag, &w)| 1.2e-5 * mag + 1e-6 * w.abs().max(1.0))
                .collect();
            assert_within(
                &format!("{name} weights {m}×{k}·{k}×{n} + GELU + residual"),
                &read(gpu, &out).await,
                &want,
                &bound,
            );
        }
    }
}

pub async fn matmul_epilogue_gelu_quick_gelu_and_residual_match_cpu(gpu: &Gpu) {
    let (m, n, k) = (33, 75, 48);
    // Pre-activations spread over about ±8, where both activations bend and saturate.
    let (x, w, b) = (
        values(m * k, 4, 2.0),
        values(n * k, 5, 0.6),
        values(n, 6, 1.0),
    );
    let residual = values(m * n, 7, 3.0);
    let (gx, gw, gb) = (
        gpu.upload("x", &x).unwrap(),
        gpu.upload_weight("w", WeightFormat::F32, (n, k), &w)
            .unwrap(),
        gpu.upload("b", &b).unwrap(),
    );
    for act in [Act::Gelu, Act::QuickGelu] {
        let out = gpu.upload("out", &residual).unwrap();
        let mut enc = Encoder::new(gpu, "test");
        let mm = Matmul::linear(
            m as u32,
            (&gx, View::rows(0, k as u32)),
            &gw,
            Some(&gb),
            View::rows(0, n as u32),
        )
        .act(act)
        .accumulate();
        enc.matmul(&mm, &out);
        enc.submit();
        let want: Vec<f64> = linear_slow(&x, &w, &b, m, n, k, act)
            .iter()
            .zip(&residual)
            .map(|(&y, &r)| y + r as f64)
            .collect();
        assert_close(
            &format!("{act:?} + residual"),
            &read(gpu, &out).await,
            &want,
            2e-6,
        );
    }
}

/// Attention's two products straight out of a fused `[T, 3w]` qkv buffer, per head, into the
/// merged-heads layout: the strided, batched views the tower uses.
pub async fn matmul_strided_attention_products_match_cpu(gpu: &Gpu) {
    let (t, heads, d) = (37, 3, 20);
    let w = heads * d;
    let qkv = values(t * 3 * w, 8, 1.0);
    let gqkv = gpu.upload("qkv", &qkv).unwrap();
    let scores = gpu.zeros("scores", heads * t * t).unwrap();
    let out = gpu.zeros("out", t * w).unwrap();
    let scale = 1.0 / (d as f32).sqrt();
    let (t32, w32, d32) = (t as u32, w as u32, d as u32);
    let mut enc = Encoder::new(gpu, "test");
    let heads32 = (0, heads as u32);
    enc.matmul(
        &Matmul::attention_scores(&gqkv, (t32, t32), (w32, d32), heads32, scale),
        &scores,
    );
    enc.submit();
    let got_scores = read(gpu, &scores).await;
    let mut want_scores = vec![0f64; heads * t * t];
    for h in 0..heads {
        for i in 0..t {
            for j in 0..t {
                let s: f64 = (0..d)
                    .map(|l| {
                        qkv[i * 3 * w + h * d + l] as f64 * qkv[j * 3 * w + w + h * d + l] as f64
                    })
                    .sum();
                want_scores[(h * t + i) * t + j] = s * scale as f64;
            }
        }
    }
    assert_close("q·kᵀ·s by head", &got_scores, &want_scores, 1e-5);

    let mut enc = Encoder::new(gpu, "test");
    enc.matmul(
        &Matmul::attention_values(&scores, &gqkv, (t32, t32), (w32, d32), heads32),
        &out,
    );
    enc.submit();
    let mut want = vec![0f64; t * w];
    for h in 0..heads {
        for i in 0..t {
            for l in 0..d {
                want[i * w + h * d + l] = (0..t)
                    .map(|j| {
                        got_scores[(h * t + i) * t + j] as f64
                            * qkv[j * 3 * w + 2 * w + h * d + l] as f64
                    })
                    .sum();
            }
        }
    }
    assert_close("p·v into merged heads", &read(gpu, &out).await, &want, 1e-5);
}

pub async fn layer_norm_matches_cpu(gpu: &Gpu) {
    // Rows of 768 (ViT-B) and 100 (shorter than a workgroup), with a large mean and one outlier
    // channel, as in real CLIP's residual stream.
    for (rows, dim) in [(5, 768), (300, 100)] {
        let mut x = values(rows * dim, 9, 2.0);
        for r in 0..rows {
            for c in 0..dim {
                x[r * dim + c] += 40.0 + if c == 7 { 300.0 } else { 0.0 };
            }
        }
        let (wt, bs) = (values(dim, 10, 1.5), values(dim, 11, 0.5));
        let ln = GpuLayerNorm {
            weight: gpu.upload("w", &wt).unwrap(),
            bias: gpu.upload("b", &bs).unwrap(),
            eps: 1e-5,
        };
        // Input rows 1.. of a buffer with a leading row, output into a strided slice: the views
        // the tower uses for the CLS row and the patch tokens.
        let mut padded = vec![0f32; dim];
        padded.extend(&x);
        let gx = gpu.upload("x", &padded).unwrap();
        let out = gpu.zeros("y", rows * dim).unwrap();
        let mut enc = Encoder::new(gpu, "test");
        enc.layer_norm(
            &ln,
            rows as u32,
            (&gx, View::rows(dim as u32, dim as u32)),
            (&out, View::rows(0, dim as u32)),
        );
        enc.submit();
        let mut want = vec![0f64; rows * dim];
        for r in 0..rows {
            let row = &x[r * dim..][..dim];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
            for c in 0..dim {
                want[r * dim + c] =
                    (row[c] as f64 - mean) / (var + 1e-5).sqrt() * wt[c] as f64 + bs[c] as f64;
            }
        }
        assert_close(
            &format!("layernorm {rows}×{dim}"),
            &read(gpu, &out).await,
            &want,
            2e-5,
        );
    }
}

pub async fn softmax_matches_cpu(gpu: &Gpu) {
    // 785 = 28² + 1 tokens (448² input); large logits test the max subtraction.
    for (rows, len, offset) in [(4, 785, 80.0), (70_000, 3, 0.0), (2, 1, 0.0)] {
        let x: Vec<f32> = values(rows * len, 12, 6.0)
            .iter()
            .map(|v| v + offset)
            .collect();
        let gx = gpu.upload("x", &x).unwrap();
        let mut enc = Encoder::new(gpu, "test");
        enc.softmax(&gx, rows as u32, len as u32);
        enc.submit();
        let mut want = vec![0f64; rows * len];
        for r in 0..rows {
            let row = &x[r * len..][..len];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            for c in 0..len {
                want[r * len + c] = (row[c] as f64 - max).exp() / sum;
            }
        }
        assert_close(
            &format!("softmax {rows}×{len}"),
            &read(gpu, &gx).await,
            &want,
            1e-6,
        );
    }
}

//! The GPU benchmark, shared by its native run (`tests/bench.rs`, lavapipe) and its browser run
//! (`tests/wasm_bench.rs`, SwiftShader in headless Chromium); both are `#[ignore]`d, so the test
//! command never runs them: `bench/run.sh --plan gpu` does (BENCHMARKS.md).
//!
//! Measured on full-size ViT-B/16 shapes at a 448×448 input (785 tokens), random weights:
//! * each kernel alone (the q/k/v projection with f32, f16 and Q8 weights, the MLP's two
//!   products with Q8 weights, both attention products over 12 heads, softmax, LayerNorm):
//!   wall time from submit to a completed readback of one value, achieved GFLOP/s (matmuls) or
//!   GB/s of one read + one write (row kernels);
//! * the whole image tower (`GpuVision::forward`, Q8 weights) at 448²;
//! * the bytes of weights on the device for f32, f16 and Q8 matrices.
//!
//! The result is one JSON object (serde_json), `runs` timings per case after one warm-up run.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use clipdino::clip::{preprocess, VisionTransformer};
use clipdino::loaders::random_clip_store;
use clipdino::{ClipConfig, ComputePath, Vb};
use clipdino_gpu::kernels::{Act, Encoder, GpuLayerNorm, Matmul, View};
use clipdino_gpu::{Gpu, GpuBuffer, GpuVision, GpuWeights, WeightFormat};
use serde_json::{json, Value};

/// Milliseconds from some fixed origin (`Instant` natively, `performance.now()` in the browser).
pub type Clock<'a> = &'a dyn Fn() -> f64;

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                / (1u32 << 24) as f32
                - 0.5
        })
        .collect()
}

/// Wall times (ms) of `runs` submissions of `record`, each waited for by reading one value of
/// `sync` back, after one warm-up submission.
async fn time(
    gpu: &Gpu,
    now: Clock<'_>,
    runs: usize,
    sync: &GpuBuffer,
    record: &dyn Fn(&mut Encoder),
) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..=runs {
        let t0 = now();
        let mut enc = Encoder::new(gpu, "bench");
        record(&mut enc);
        enc.submit();
        gpu.read("sync", sync, 0, 1).await.expect("readback");
        if i > 0 {
            out.push(now() - t0);
        }
    }
    out
}

fn case(name: &str, weights: Option<WeightFormat>, ms: Vec<f64>, flop: f64, bytes: f64) -> Value {
    let med = median(&ms);
    json!({
        "name": name,
        "weights": weights.map(WeightFormat::name),
        "flop": flop,
        "bytes": bytes,
        "ms": ms,
        "median_ms": med,
        "gflops": if flop > 0.0 { flop / med / 1e6 } else { 0.0 },
        "gbps": bytes / med / 1e6,
    })
}

/// FLOPs of `GpuVision::forward` at an `h`×`w` patch grid (every matmul: 2·m·n·k).
fn tower_flop(cfg: &ClipConfig, gh: usize, gw: usize) -> f64 {
    let v = &cfg.vision;
    let (hw, w, m) = ((gh * gw) as f64, v.width as f64, v.mlp_dim as f64);
    let t = hw + 1.0;
    let patch = 2.0 * hw * w * (3 * v.patch_size * v.patch_size) as f64;
    let block = |rows: f64, q: f64| {
        2.0 * t * w * 3.0 * w // qkv of every token
            + 2.0 * 2.0 * q * t * w // q·kᵀ, p·v for `q` queries
            + 2.0 * rows * w * w // out_proj
            + 2.0 * 2.0 * rows * w * m // MLP
    };
    let full = (v.layers - 1) as f64 * block(t, t);
    // Last block: the CLS query, then the value path on the patch tokens (out_proj + MLP).
    let last = block(1.0, 1.0) + 2.0 * hw * w * w + 2.0 * 2.0 * hw * w * m;
    let proj = 2.0 * t * w * cfg.embed_dim as f64;
    patch + full + last + proj
}

/// The benchmark on `gpu`: `runs` timings per kernel; `tower_runs` of the tower at each square
/// input of `tower_sizes` (e.g. `[448]`; no warm-up: the kernels ran before).
pub async fn run(
    gpu: &Gpu,
    now: Clock<'_>,
    runs: usize,
    tower_sizes: &[usize],
    tower_runs: usize,
) -> Value {
    let cfg = ClipConfig::vit_b_16();
    let v = &cfg.vision;
    let (w, mlp, heads) = (v.width, v.mlp_dim, v.heads);
    let d = w / heads;
    let t = 28 * 28 + 1;
    let (t32, w32, d32) = (t as u32, w as u32, d as u32);
    let mut kernels = Vec::new();

    let x = gpu.upload("x", &pseudo(t * w, 1)).unwrap();
    let hidden_in = gpu.upload("hidden", &pseudo(t * mlp, 2)).unwrap();
    let qkv = gpu.upload("qkv", &pseudo(t * 3 * w, 3)).unwrap();
    let out_w = gpu.zeros("out", t * w).unwrap();
    let out_3w = gpu.zeros("out", t * 3 * w).unwrap();
    let out_mlp = gpu.zeros("out", t * mlp).unwrap();
    let scores = gpu.zeros("scores", heads * t * t).unwrap();
    let bias = gpu.upload("bias", &pseudo(3 * w.max(mlp), 4)).unwrap();

    let linear = |name: &str, format: WeightFormat, (n, k): (usize, usize), act: Act| {
        let wt = gpu
            .upload_weight("w", format, (n, k), &pseudo(n * k, 5))
            .unwrap();
        (name.to_string(), format, wt, act)
    };
    let cases = [
        linear(
            "q/k/v projection 785×768 · 768×2304",
            WeightFormat::F32,
            (3 * w, w),
            Act::None,
        ),
        linear(
            "q/k/v projection 785×768 · 768×2304",
            WeightFormat::F16,
            (3 * w, w),
            Act::None,
        ),
        linear(
            "q/k/v projection 785×768 · 768×2304",
            WeightFormat::Q8,
            (3 * w, w),
            Act::None,
        ),
        linear(
            "MLP c_fc + GELU 785×768 · 768×3072",
            WeightFormat::Q8,
            (mlp, w),
            Act::Gelu,
        ),
        linear(
            "MLP c_proj 785×3072 · 3072×768",
            WeightFormat::Q8,
            (w, mlp),
            Act::None,
        ),
    ];
    for (name, format, wt, act) in &cases {
        let (n, k) = (wt.rows(), wt.cols());
        let a = if k == w { &x } else { &hidden_in };
        let c = match n {
            n if n == w => &out_w,
            n if n == mlp => &out_mlp,
            _ => &out_3w,
        };
        let mm = Matmul::linear(
            t32,
            (a, View::rows(0, k as u32)),
            wt,
            Some(&bias),
            View::rows(0, n as u32),
        )
        .act(*act);
        let ms = time(gpu, now, runs, c, &|enc: &mut Encoder| enc.matmul(&mm, c)).await;
        let flop = 2.0 * (t * n * k) as f64;
        let bytes = (t * k * 4 + t * n * 4) as f64 + wt.bytes() as f64;
        kernels.push(case(name, Some(*format), ms, flop, bytes));
    }
    drop(cases);

    let heads32 = (0, heads as u32);
    let qk = Matmul::attention_scores(&qkv, (t32, t32), (w32, d32), heads32, 0.125);
    let ms = time(gpu, now, runs, &scores, &|enc: &mut Encoder| {
        enc.matmul(&qk, &scores)
    })
    .await;
    let flop = 2.0 * (heads * t * t * d) as f64;
    kernels.push(case(
        "attention q·kᵀ, 12 heads, 785×64 · 64×785",
        None,
        ms,
        flop,
        (2 * t * w * 4 + heads * t * t * 4) as f64,
    ));
    let pv = Matmul::attention_values(&scores, &qkv, (t32, t32), (w32, d32), heads32);
    let ms = time(gpu, now, runs, &out_w, &|enc: &mut Encoder| {
        enc.matmul(&pv, &out_w)
    })
    .await;
    kernels.push(case(
        "attention p·v, 12 heads, 785×785 · 785×64",
        None,
        ms,
        flop,
        (heads * t * t * 4 + 2 * t * w * 4) as f64,
    ));
    let ms = time(gpu, now, runs, &scores, &|enc: &mut Encoder| {
        enc.softmax(&scores, (heads * t) as u32, t32)
    })
    .await;
    kernels.push(case(
        "softmax, 12·785 rows of 785",
        None,
        ms,
        0.0,
        (2 * heads * t * t * 4) as f64,
    ));
    let ln = GpuLayerNorm {
        weight: gpu.upload("ln w", &pseudo(w, 6)).unwrap(),
        bias: gpu.upload("ln b", &pseudo(w, 7)).unwrap(),
        eps: 1e-5,
    };
    let ms = time(gpu, now, runs, &out_w, &|enc: &mut Encoder| {
        enc.layer_norm(
            &ln,
            t32,
            (&x, View::rows(0, w32)),
            (&out_w, View::rows(0, w32)),
        )
    })
    .await;
    kernels.push(case(
        "LayerNorm, 785 rows of 768",
        None,
        ms,
        0.0,
        (2 * t * w * 4) as f64,
    ));
    drop((x, hidden_in, qkv, out_w, out_3w, out_mlp, scores, bias));

    // The image tower of a full-size model: its weights in each form, then the timed forward.
    let mut store = random_clip_store(&cfg, 0);
    let text: Vec<String> = store
        .names()
        .into_iter()
        .filter(|n| !n.starts_with("visual."))
        .map(String::from)
        .collect();
    for name in text {
        store.remove(&name);
    }
    let vb = Vb::new(Arc::new(store), Device::Cpu, ComputePath::F32).pp("visual");
    let bytes = |t: &GpuVision, format| json!({"weight_bytes": t.weight_bytes(), "matrix_bytes": t.matrix_bytes(format)});
    let f32_bytes = bytes(
        &GpuVision::with_weights(gpu, &vb, &cfg, GpuWeights::F32).unwrap(),
        WeightFormat::F32,
    );
    let tower = GpuVision::with_weights(gpu, &vb, &cfg, GpuWeights::Q8).unwrap();
    let weights = json!({"f32": f32_bytes, "q8": bytes(&tower, WeightFormat::Q8)});
    let cpu = VisionTransformer::new(&vb, &cfg).unwrap();
    let mut towers = Vec::new();
    for &size in tower_sizes {
        let image = Tensor::from_vec(pseudo(3 * size * size, 8), (3, size, size), &Device::Cpu)
            .unwrap()
            .affine(1.0, 0.5)
            .unwrap();
        let pixels = preprocess(&image, v.patch_size).unwrap();
        let mut ms = Vec::new();
        for _ in 0..tower_runs {
            let t0 = now();
            tower
                .forward(gpu, &cpu, &pixels, 9, &mut |_, _| {})
                .await
                .expect("tower");
            ms.push(now() - t0);
        }
        let g = size / v.patch_size;
        let flop = tower_flop(&cfg, g, g);
        let med = median(&ms);
        towers.push(json!({
            "size": [size, size], "weights": "q8", "ms": ms, "median_ms": med,
            "gflop": flop / 1e9, "gflops": flop / med / 1e6,
        }));
    }
    let info = gpu.adapter_info();
    json!({
        "adapter": gpu.describe(),
        "name": info.name,
        "backend": format!("{:?}", info.backend),
        "driver": info.driver,
        "driver_info": info.driver_info,
        "cpu_emulation": gpu.is_cpu_emulation(),
        "runs": runs,
        "kernels": kernels,
        "tower": towers,
        "weights": weights,
    })
}

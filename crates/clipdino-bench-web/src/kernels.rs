//! Kernel micro-benchmarks at the image tower's shapes: every linear layer as the model runs it
//! and its alternatives (pre-transposed f32, Q8_0 / Q4_0 `QMatMul`, the integer kernel of
//! `ComputePath::Int`), the attention products, and the element-wise ops (GELU, LayerNorm,
//! softmax, the head-split copy) as written in the model crate vs candle's own.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use clipdino::clip::{fastmath, fused_attention, LayerNorm};
use clipdino::intgemm::PackedLinear;
use clipdino::{Result, Stored, TensorStore, Vb};
use serde_json::{json, Value};

use crate::stats::{median, repeat, Runs};

/// A deterministic pseudo-random tensor in [-scale, scale).
fn det(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Median milliseconds of `f` over `runs` (after a warm-up unless told otherwise).
fn time_kernel<T>(runs: Runs, mut f: impl FnMut() -> candle_core::Result<T>) -> Result<f64> {
    let (v, _) = repeat(runs, || {
        std::hint::black_box(f()?);
        Ok(())
    })?;
    Ok(median(&v))
}

/// Kernel micro-benchmarks at the ViT-B/16 shapes for `tokens` rows (785 = a 448×448 window):
/// every linear layer as the model runs it (f32 `x·Wᵀ` through `QMatMul::Tensor`), with a
/// pre-transposed f32 weight, and with Q8_0 / Q4_0 weights; the attention matmuls; and the
/// elementwise ops (GELU, LayerNorm as written in the model crate vs candle's fused kernel,
/// softmax, the head-split copy).
pub fn kernels(tokens: usize, runs: Runs) -> Result<Value> {
    let m = tokens;
    let mut rows = Vec::new();
    let mut int_err = Vec::new();
    let mut push = |name: String, variant: &str, ms: f64, flops: f64| {
        rows.push(json!({
            "kernel": name, "variant": variant, "ms": ms,
            "gflops_per_s": if flops > 0.0 { Some(flops / 1e9 / (ms / 1e3)) } else { None },
        }));
    };
    for (name, k, n) in [
        ("attn.in_proj", 768, 2304),
        ("attn.out_proj", 768, 768),
        ("mlp.c_fc", 768, 3072),
        ("mlp.c_proj", 3072, 768),
    ] {
        let label = format!("{name} [{m}×{k}]·[{k}×{n}]");
        let flops = 2.0 * (m * k * n) as f64;
        let x = det(&[1, m, k], 1, 1.0)?;
        let w = det(&[n, k], 2, 0.05)?;
        let as_model = QMatMul::Tensor(w.clone());
        push(
            label.clone(),
            "f32 x·Wᵀ (as the model)",
            time_kernel(runs, || as_model.forward(&x))?,
            flops,
        );
        let wt = w.t()?.contiguous()?;
        let x2 = x.reshape((m, k))?;
        push(
            label.clone(),
            "f32 x·W (W pre-transposed)",
            time_kernel(runs, || x2.matmul(&wt))?,
            flops,
        );
        for (dt, vname) in [
            (GgmlDType::Q8_0, "q8_0 QMatMul"),
            (GgmlDType::Q4_0, "q4_0 QMatMul"),
        ] {
            let q = QMatMul::from_qtensor(QTensor::quantize(&w, dt)?)?;
            push(
                label.clone(),
                vname,
                time_kernel(runs, || q.forward(&x))?,
                flops,
            );
        }
        // the model's integer kernel (ComputePath::Int), checked against the f32 product
        let xv = x2.flatten_all()?.to_vec1::<f32>()?;
        let packed = PackedLinear::new(name, &w.flatten_all()?.to_vec1::<f32>()?, n, k, None)?;
        let ms = time_kernel(runs, || Ok::<_, candle_core::Error>(packed.matmul(&xv, m)))?;
        let y8 = packed.matmul(&xv, m);
        let y32 = x2.matmul(&wt)?.flatten_all()?.to_vec1::<f32>()?;
        let amax = y32.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = y8
            .iter()
            .zip(&y32)
            .fold(0f32, |a, (p, q)| a.max((p - q).abs()))
            / amax.max(1e-12);
        push(
            label.clone(),
            "int (10-bit W, 13-bit x, i16 dot, 4×2 tile; as the model on ComputePath::Int)",
            ms,
            flops,
        );
        int_err.push(json!({ "kernel": label, "max_abs_err_over_max_abs": err }));
    }
    let (h, d) = (12usize, 64usize);
    let q = det(&[h, m, d], 3, 1.0)?;
    let k = det(&[h, m, d], 4, 1.0)?;
    let v = det(&[h, m, d], 5, 1.0)?;
    let att_flops = 2.0 * (h * m * m * d) as f64;
    push(
        format!("attention q·kᵀ [{h}×{m}×{d}]"),
        "f32 (kᵀ view)",
        time_kernel(runs, || q.matmul(&k.t()?))?,
        att_flops,
    );
    let s = q.matmul(&k.t()?)?;
    push(
        format!("attention softmax [{h}×{m}×{m}]"),
        "candle_nn softmax_last_dim (libm expf per element)",
        time_kernel(runs, || candle_nn::ops::softmax_last_dim(&s))?,
        0.0,
    );
    push(
        format!("attention softmax [{h}×{m}×{m}]"),
        "clipdino fastmath (in place, as the model)",
        time_kernel(runs, || fastmath::softmax_last_dim_(s.copy()?))?,
        0.0,
    );
    let pr = candle_nn::ops::softmax_last_dim(&s)?;
    push(
        format!("attention probs·v [{h}×{m}×{m}]·[{m}×{d}]"),
        "f32",
        time_kernel(runs, || pr.matmul(&v))?,
        att_flops,
    );
    // The whole of attention, head by head, both ways the model runs it.
    let whole = format!("attention q·kᵀ, softmax, probs·v [{h}×{m}×{d}], head by head");
    let (qs, ks, vs) = (
        q.flatten_all()?.to_vec1::<f32>()?,
        k.flatten_all()?.to_vec1::<f32>()?,
        v.flatten_all()?.to_vec1::<f32>()?,
    );
    push(
        whole.clone(),
        "unfused: two candle matmuls around the fastmath softmax (the model natively)",
        time_kernel(runs, || {
            (0..h)
                .map(|i| {
                    let (q, k, v) = (q.get(i)?, k.get(i)?, v.get(i)?);
                    fastmath::softmax_last_dim_(q.matmul(&k.t()?)?)?.matmul(&v)
                })
                .collect::<candle_core::Result<Vec<_>>>()
        })?,
        2.0 * att_flops,
    );
    push(
        whole,
        "fused: 4 query rows at a time, scores in L1 (the model in wasm)",
        time_kernel(runs, || {
            Ok((0..h)
                .map(|i| {
                    let r = i * m * d..(i + 1) * m * d;
                    fused_attention::attend_head(
                        &qs[r.clone()],
                        &ks[r.clone()],
                        &vs[r],
                        None,
                        m,
                        m,
                        d,
                    )
                })
                .collect::<Vec<_>>())
        })?,
        2.0 * att_flops,
    );
    let qkv = det(&[1, m, 3 * 768], 6, 1.0)?;
    push(
        format!("split heads [1×{m}×2304] → [3×12×{m}×64]"),
        "permute + contiguous",
        time_kernel(runs, || {
            qkv.reshape((1, m, 3, h, d))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()
        })?,
        0.0,
    );
    let hid = det(&[1, m, 3072], 7, 3.0)?;
    push(
        format!("gelu [{m}×3072]"),
        "candle gelu_erf (libm erff per element)",
        time_kernel(runs, || hid.gelu_erf())?,
        0.0,
    );
    push(
        format!("gelu [{m}×3072]"),
        "clipdino fastmath gelu_erf (in place, as the model)",
        time_kernel(runs, || fastmath::gelu_(hid.copy()?))?,
        0.0,
    );
    push(
        format!("gelu [{m}×3072]"),
        "gelu (tanh approximation)",
        time_kernel(runs, || hid.gelu())?,
        0.0,
    );
    let xs = det(&[1, m, 768], 8, 2.0)?;
    let (g, b) = (det(&[768], 9, 1.0)?, det(&[768], 10, 0.1)?);
    let mut store = TensorStore::new("kernels");
    store.insert("weight", Stored::Float(g.clone()));
    store.insert("bias", Stored::Float(b.clone()));
    let lnm = LayerNorm::new(
        768,
        &Vb::new(
            std::sync::Arc::new(store),
            Device::Cpu,
            clipdino::ComputePath::F32,
        ),
    )?;
    push(
        format!("layernorm [{m}×768]"),
        "clipdino LayerNorm (composed ops, as the model)",
        time_kernel(runs, || lnm.forward(&xs))?,
        0.0,
    );
    push(
        format!("layernorm [{m}×768]"),
        "candle_nn::ops::layer_norm (fused)",
        time_kernel(runs, || candle_nn::ops::layer_norm(&xs, &g, &b, 1e-5))?,
        0.0,
    );
    let fused = candle_nn::ops::layer_norm(&xs, &g, &b, 1e-5)?;
    let composed = lnm.forward(&xs)?;
    let ln_diff = (fused - composed)?
        .abs()?
        .flatten_all()?
        .max(D::Minus1)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(json!({
        "tokens": m,
        "kernels": rows,
        "layernorm_fused_vs_composed_max_abs_diff": ln_diff,
        "int_kernel_error": int_err,
    }))
}

/// The machine's own limit on thread scaling, for reading the model's: one copy of the integer
/// kernel's largest product in the tower (`mlp.c_fc`, `[785 × 768]·[768 × 3072]`) per thread of
/// the pool, every copy on its own thread alone ([`clipdino::par::sequential`]). The times are
/// wall time per copy, so at N threads over 1 thread they give the best any split of the same
/// work could reach here: 1/N when the threads do not slow each other down (shared caches,
/// memory bandwidth, a host that runs the virtual CPUs on one core's hyperthreads, or clocks a
/// lone core boosts higher).
pub fn ceiling(runs: Runs) -> Result<Value> {
    let (m, k, n) = (785, 768, 3072);
    let x: Vec<f32> = det(&[m, k], 1, 1.0)?.flatten_all()?.to_vec1()?;
    let w: Vec<f32> = det(&[n, k], 2, 0.05)?.flatten_all()?.to_vec1()?;
    let layer = PackedLinear::new("ceiling", &w, n, k, None)?;
    let copies = clipdino::par::threads();
    let (v, _) = repeat(runs, || {
        let ys = clipdino::par::map(copies, |_| {
            clipdino::par::sequential(|| layer.matmul(&x, m))
        });
        Ok(std::hint::black_box(ys).len())
    })?;
    let per_copy: Vec<f64> = v.iter().map(|t| t / copies as f64).collect();
    let mut r = crate::stats::summary(&per_copy);
    r["copies"] = json!(copies);
    r["shape"] = json!([m, k, n]);
    Ok(r)
}

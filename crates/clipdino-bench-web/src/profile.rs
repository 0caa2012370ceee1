//! Where the image-tower time goes: an instrumented replica of
//! `clipdino::clip::VisionTransformer::forward` and kernel micro-benchmarks at the tower's shapes.
//!
//! The replica is built from the same [`Vb`] (same tensors, same compute path) and performs the
//! same candle ops in the same order as the model crate (`clip/vision.rs`, `clip/block.rs`), with a
//! clock read around every op. Its outputs are compared with the real forward pass (max |Δ| is
//! reported), so the profile describes the computation that ships. Candle's CPU ops are
//! synchronous, so the time between two reads is the op's time.

use std::collections::BTreeMap;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use clipdino::clip::{fastmath, LayerNorm};
use clipdino::intgemm::PackedLinear;
use clipdino::linear::Linear;
use clipdino::pipeline::Segmenter;
use clipdino::{Error, Result, Stored, TensorStore, Vb};
use serde_json::{json, Value};

use crate::clock::now_ms;
use crate::suite::summary;

/// Accumulated time (and FLOPs) per op category.
#[derive(Default)]
struct Prof {
    cats: BTreeMap<&'static str, (f64, f64, usize)>,
}

impl Prof {
    fn t<T, E>(
        &mut self,
        cat: &'static str,
        flops: f64,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) -> Result<T>
    where
        Error: From<E>,
    {
        let t = now_ms();
        let v = f()?;
        let e = self.cats.entry(cat).or_default();
        e.0 += now_ms() - t;
        e.1 += flops;
        e.2 += 1;
        Ok(v)
    }
}

/// The model's own linear layer (same compute path), timed as one op including its bias.
struct Lin {
    lin: Linear,
    inp: usize,
    out: usize,
}

impl Lin {
    fn new(vb: &Vb, inp: usize, out: usize, w: &str, b: &str) -> Result<Self> {
        Ok(Self {
            lin: Linear::with_names(inp, out, vb, w, Some(b))?,
            inp,
            out,
        })
    }

    fn fwd(&self, p: &mut Prof, cat: &'static str, x: &Tensor) -> Result<Tensor> {
        let rows = (x.elem_count() / self.inp) as f64;
        p.t(cat, 2.0 * rows * (self.inp * self.out) as f64, || {
            self.lin.forward(x)
        })
    }
}

struct Block {
    ln_1: LayerNorm,
    qkv: Lin,
    out: Lin,
    ln_2: LayerNorm,
    fc: Lin,
    proj: Lin,
}

/// The tower rebuilt from `visual.*` with op-level clocks.
struct Tower {
    conv1: QMatMul,
    class_embedding: Tensor,
    ln_pre: LayerNorm,
    blocks: Vec<Block>,
    ln_post: LayerNorm,
    proj: QMatMul,
    width: usize,
    heads: usize,
    patch: usize,
    embed: usize,
}

fn ln(p: &mut Prof, l: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    // the model's LayerNorm: ~9 elementwise / reduction ops per call
    p.t("layernorm", 0.0, || l.forward(x))
}

impl Tower {
    fn new(root: &Vb, seg: &Segmenter) -> Result<Self> {
        let cfg = &seg.clip_cfg;
        let v = &cfg.vision;
        let vb = root.pp("visual");
        let (w, m, pp) = (v.width, v.mlp_dim, v.patch_size);
        let mut blocks = Vec::with_capacity(v.layers);
        for i in 0..v.layers {
            let b = vb.pp("transformer.resblocks").pp(i);
            blocks.push(Block {
                ln_1: LayerNorm::new(w, &b.pp("ln_1"))?,
                qkv: Lin::new(&b.pp("attn"), w, 3 * w, "in_proj_weight", "in_proj_bias")?,
                out: Lin::new(&b.pp("attn.out_proj"), w, w, "weight", "bias")?,
                ln_2: LayerNorm::new(w, &b.pp("ln_2"))?,
                fc: Lin::new(&b.pp("mlp.c_fc"), w, m, "weight", "bias")?,
                proj: Lin::new(&b.pp("mlp.c_proj"), m, w, "weight", "bias")?,
            });
        }
        Ok(Self {
            conv1: vb.qmatmul(w, 3 * pp * pp, "conv1.weight")?,
            class_embedding: vb.get(&[w], "class_embedding")?,
            ln_pre: LayerNorm::new(w, &vb.pp("ln_pre"))?,
            blocks,
            ln_post: LayerNorm::new(w, &vb.pp("ln_post"))?,
            proj: vb.matmul_right(w, cfg.embed_dim, "proj")?,
            width: w,
            heads: v.heads,
            patch: pp,
            embed: cfg.embed_dim,
        })
    }

    /// `out_proj(softmax(q kᵀ/√d) v)` for the first `n_query` tokens (`MultiheadAttention::attend`;
    /// the model's head grouping keeps all 12 heads in one group up to 1 400 tokens).
    fn attend(&self, p: &mut Prof, blk: &Block, qkv: &Tensor, n_query: usize) -> Result<Tensor> {
        let (b, t, _) = qkv.dims3()?;
        let d = self.width / self.heads;
        let bh = (b * self.heads) as f64;
        let qkv = p.t("attention split heads (copy)", 0.0, || {
            qkv.reshape((b, t, 3, self.heads, d))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?
                .reshape((3, b * self.heads, t, d))
        })?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let q = if n_query == t {
            q
        } else {
            p.t("slicing", 0.0, || q.narrow(1, 0, n_query)?.contiguous())?
        };
        let (nq, tt, dd) = (n_query as f64, t as f64, d as f64);
        let q = p.t("attention q scale", nq * dd * bh, || {
            q * (1.0 / (d as f64).sqrt())
        })?;
        let scores = p.t("attention q·kᵀ", 2.0 * bh * nq * tt * dd, || {
            q.matmul(&k.t()?)
        })?;
        let probs = p.t("attention softmax", 0.0, || {
            fastmath::softmax_last_dim_(scores.clone())
        })?;
        let o = p.t("attention probs·v", 2.0 * bh * nq * tt * dd, || {
            probs.matmul(&v)
        })?;
        // free what the model has freed at this point (large buffers alive longer than in the
        // model would add allocation costs that the model does not pay)
        drop((scores, probs, q, k, v, qkv));
        let o = p.t("attention merge heads (copy)", 0.0, || {
            o.reshape((b, self.heads, n_query, d))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, n_query, self.width))
        })?;
        blk.out.fwd(p, "matmul attn.out_proj", &o)
    }

    fn mlp(&self, p: &mut Prof, blk: &Block, x: &Tensor) -> Result<Tensor> {
        let h = blk.fc.fwd(p, "matmul mlp.c_fc", x)?;
        let h = p.t("gelu (erf)", 0.0, || fastmath::gelu_(h))?;
        blk.proj.fwd(p, "matmul mlp.c_proj", &h)
    }

    /// Returns (pooled, dense, inter) like `VisionTransformer::forward`, and the time per block.
    fn forward(
        &self,
        p: &mut Prof,
        seg: &Segmenter,
        pixels: &Tensor,
        layer: usize,
    ) -> Result<(Tensor, Tensor, Tensor, Vec<f64>)> {
        let (_, _, hh, ww) = pixels.dims4()?;
        let pp = self.patch;
        let (h, w) = (hh / pp, ww / pp);
        let (hw, width) = (h * w, self.width);
        let t0 = now_ms();
        let patches = p.t(
            "patch embedding (unfold + matmul)",
            2.0 * (hw * 3 * pp * pp * width) as f64,
            || {
                pixels
                    .reshape((3, h, pp, w, pp))?
                    .permute((1, 3, 0, 2, 4))?
                    .contiguous()?
                    .reshape((hw, 3 * pp * pp))?
                    .apply(&self.conv1)
            },
        )?;
        let pos = p.t("positional embedding (bicubic resize)", 0.0, || {
            seg.clip.vision.positional_embedding(h, w)
        })?;
        let x = p.t("cls + positional add", 0.0, || {
            let cls = self.class_embedding.reshape((1, width))?;
            Tensor::cat(&[&cls, &patches], 0)? + pos
        })?;
        let mut x = ln(p, &self.ln_pre, &x)?.unsqueeze(0)?;
        let mut block_ms = vec![now_ms() - t0];
        let layers = self.blocks.len();
        let mut inter = None;
        let t = hw + 1;
        for (i, blk) in self.blocks[..layers - 1].iter().enumerate() {
            let tb = now_ms();
            let y = ln(p, &blk.ln_1, &x)?;
            let qkv = blk.qkv.fwd(p, "matmul attn.in_proj (qkv)", &y)?;
            drop(y);
            let a = self.attend(p, blk, &qkv, t)?;
            drop(qkv);
            let hdn = p.t("residual add", 0.0, || &x + a)?;
            let l2 = ln(p, &blk.ln_2, &hdn)?;
            let m = self.mlp(p, blk, &l2)?;
            x = p.t("residual add", 0.0, || hdn + m)?;
            if i == layer {
                inter = Some(l2);
            }
            block_ms.push(now_ms() - tb);
        }
        // last block: CLS-only attention path + MaskCLIP value path (clip/vision.rs)
        let tb = now_ms();
        let last = &self.blocks[layers - 1];
        let y = ln(p, &last.ln_1, &x)?;
        let qkv = last.qkv.fwd(p, "matmul attn.in_proj (qkv)", &y)?;
        let a = self.attend(p, last, &qkv, 1)?;
        let hid = p.t("residual add", 0.0, || x.narrow(1, 0, 1)? + a)?;
        let l2 = ln(p, &last.ln_2, &hid)?;
        let m = self.mlp(p, last, &l2)?;
        let out = p.t("residual add", 0.0, || &hid + m)?;
        let v = p.t("slicing", 0.0, || {
            qkv.narrow(1, 1, hw)?
                .narrow(2, 2 * width, width)?
                .contiguous()
        })?;
        let v = last.out.fwd(p, "matmul attn.out_proj", &v)?;
        let v = p.t("residual add", 0.0, || v + x.narrow(1, 1, hw)?)?;
        let l2v = ln(p, &last.ln_2, &v)?;
        let m = self.mlp(p, last, &l2v)?;
        let v = p.t("residual add", 0.0, || v + m)?;
        block_ms.push(now_ms() - tb);
        let tb = now_ms();
        let pooled = ln(p, &self.ln_post, &out.narrow(1, 0, 1)?)?;
        let pooled = p.t("ln_post + visual.proj", 0.0, || {
            self.proj
                .forward(&pooled.reshape((1, width))?)?
                .reshape(self.embed)
        })?;
        let dense = ln(p, &self.ln_post, &v.reshape((hw, width))?)?;
        let dense = p.t(
            "ln_post + visual.proj",
            2.0 * (hw * width * self.embed) as f64,
            || self.proj.forward(&dense)?.reshape((h, w, self.embed)),
        )?;
        let inter = inter
            .ok_or_else(|| Error::invalid("layer", format!("block {layer} not run")))?
            .narrow(1, 1, hw)?
            .reshape((h, w, width))?;
        block_ms.push(now_ms() - tb);
        Ok((pooled, dense, inter, block_ms))
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// Time every op of the tower on `pixels` (`[1, 3, H, W]`, normalised) over `runs` runs (after a
/// warm-up), and check the replica against the real forward pass.
pub fn profile_tower(
    vb: &Vb,
    seg: &Segmenter,
    pixels: &Tensor,
    runs: crate::suite::Runs,
) -> Result<Value> {
    let tower = Tower::new(vb, seg)?;
    let layer = seg.head_cfg.layer;
    let real = seg.clip.vision.forward(pixels, layer, &mut |_, _| {})?;
    let mut check = None;
    if runs.warmup {
        tower.forward(&mut Prof::default(), seg, pixels, layer)?;
    }
    let n = runs.runs.max(1);
    let mut prof = Prof::default();
    let mut totals = Vec::with_capacity(n);
    let mut blocks: Vec<f64> = Vec::new();
    for _ in 0..n {
        let t = now_ms();
        let (pooled, dense, inter, bms) = tower.forward(&mut prof, seg, pixels, layer)?;
        totals.push(now_ms() - t);
        blocks.resize(bms.len(), 0.0);
        for (a, b) in blocks.iter_mut().zip(&bms) {
            *a += b / n as f64;
        }
        if check.is_none() {
            check = Some(json!({
                "pooled": max_abs_diff(&pooled, &real.pooled)?,
                "dense": max_abs_diff(&dense, &real.dense)?,
                "inter": max_abs_diff(&inter, &real.inter)?,
            }));
        }
    }
    let total: f64 = prof.cats.values().map(|c| c.0).sum::<f64>() / n as f64;
    let mut cats: Vec<(&str, (f64, f64, usize))> = prof.cats.into_iter().collect();
    cats.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let ops: Vec<Value> = cats
        .iter()
        .map(|(name, (ms, flops, calls))| {
            let ms = ms / n as f64;
            let gflop = flops / n as f64 / 1e9;
            json!({
                "op": name,
                "ms": ms,
                "share": ms / total,
                "calls": calls / n,
                "gflop": gflop,
                "gflops_per_s": if gflop > 0.0 { Some(gflop / (ms / 1e3)) } else { None },
            })
        })
        .collect();
    let (_, _, hh, ww) = pixels.dims4()?;
    let p = seg.clip_cfg.vision.patch_size;
    let mut r = summary(&totals);
    r["input"] = json!([1, 3, hh, ww]);
    r["tokens"] = json!(hh / p * (ww / p) + 1);
    r["ops_ms_total"] = json!(total);
    r["ops"] = json!(ops);
    r["block_ms"] = json!(blocks);
    r["max_abs_diff_vs_model"] = check.unwrap_or(Value::Null);
    Ok(r)
}

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

fn time_kernel<T>(
    runs: crate::suite::Runs,
    mut f: impl FnMut() -> candle_core::Result<T>,
) -> Result<f64> {
    if runs.warmup {
        f()?;
    }
    let mut v = Vec::new();
    for _ in 0..runs.runs.max(1) {
        let t = now_ms();
        std::hint::black_box(f()?);
        v.push(now_ms() - t);
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// Kernel micro-benchmarks at the ViT-B/16 shapes for `tokens` rows (785 = a 448×448 window):
/// every linear layer as the model runs it (f32 `x·Wᵀ` through `QMatMul::Tensor`), with a
/// pre-transposed f32 weight, and with Q8_0 / Q4_0 weights; the attention matmuls; and the
/// elementwise ops (GELU, LayerNorm as written in the model crate vs candle's fused kernel,
/// softmax, the head-split copy).
pub fn kernels(tokens: usize, runs: crate::suite::Runs) -> Result<Value> {
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

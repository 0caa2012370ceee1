//! The pre-LN residual attention block shared by both OpenCLIP towers
//! (`open_clip/transformer.py`: `ResidualAttentionBlock` with `nn.MultiheadAttention`):
//!
//! ```text
//! x = x + out_proj(MHA(ln_1(x)))
//! x = x + c_proj(GELU_erf(c_fc(ln_2(x))))
//! ```
//!
//! (OpenAI's weights use QuickGELU `x·σ(1.702·x)` instead of the exact GELU: [`Activation`].)
//!
//! Tensor names: `ln_1.*`, `attn.in_proj_weight [3w, w]` (q, k, v stacked), `attn.in_proj_bias`,
//! `attn.out_proj.*`, `ln_2.*`, `mlp.c_fc.*`, `mlp.c_proj.*`.

use candle_core::{CpuStorage, DType, Module, Storage, Tensor, D};

use super::{fastmath, fused_attention};
use crate::config::Activation;
use crate::error::{Error, Result};
use crate::linear::Linear;
use crate::par;
use crate::timing::{matmul_flops, op, op_flops};
use crate::weights::Vb;

/// Largest attention score matrix computed at once, in elements (64 MiB of f32).
const ATTN_SCORES_BUDGET: usize = 16 << 20;

/// The op timer's name for attention (both paths, so that profiles compare).
const ATTENTION_OP: &str = "attention q·kᵀ, softmax, probs·v (by head)";

/// Attention by [`fused_attention::attend_head`] instead of candle's matmuls around the softmax.
/// In wasm only: natively candle's gemm (AVX2 + FMA) is the faster one (BENCHMARKS.md).
const FUSED: bool = cfg!(target_arch = "wasm32");

/// `f` of the values of a contiguous f32 CPU tensor; `None` for any other tensor.
fn with_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Option<T> {
    let (storage, layout) = t.storage_and_layout();
    let (a, b) = layout.contiguous_offsets()?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Some(f(&v[a..b])),
        _ => None,
    }
}

/// Every head `h < bh` of `q [bh, n_query, d]`, `k, v [bh, t, d]` by the fused kernel, in
/// parallel, as `[1, n_query, d]` tensors; `None` when an operand is not a contiguous f32 CPU
/// tensor (the caller takes the unfused path).
#[allow(clippy::too_many_arguments)]
fn fused_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    bh: usize,
    n_query: usize,
    t: usize,
    d: usize,
) -> Result<Option<Vec<Tensor>>> {
    let mask = match mask {
        Some(m) => Some(m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    let run = |qs: &[f32], ks: &[f32], vs: &[f32]| {
        let flops = |_: &_| 4.0 * (bh * n_query * t * d) as f64;
        op_flops(ATTENTION_OP, flops, || {
            par::map(bh, |h| {
                let out = fused_attention::attend_head(
                    &qs[h * n_query * d..(h + 1) * n_query * d],
                    &ks[h * t * d..(h + 1) * t * d],
                    &vs[h * t * d..(h + 1) * t * d],
                    mask.as_deref(),
                    n_query,
                    t,
                    d,
                );
                Tensor::from_vec(out, (1, n_query, d), q.device())
            })
        })
    };
    let heads = with_f32(q, |qs| with_f32(k, |ks| with_f32(v, |vs| run(qs, ks, vs))));
    let Some(Some(Some(heads))) = heads else {
        return Ok(None);
    };
    Ok(Some(
        heads.into_iter().collect::<candle_core::Result<Vec<_>>>()?,
    ))
}

/// LayerNorm with eps 1e-5 (torch default), computed in two passes (mean first, then the variance
/// of the centred values) so that tokens with a large mean lose no precision.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    /// The same values for the row-parallel kernel ([`fastmath::layer_norm`]).
    weight_f32: Vec<f32>,
    bias_f32: Vec<f32>,
    eps: f64,
}

impl LayerNorm {
    pub const EPS: f64 = 1e-5;

    pub fn new(dim: usize, vb: &Vb) -> Result<Self> {
        let weight = vb.get(&[dim], "weight")?;
        let bias = vb.get(&[dim], "bias")?;
        Ok(Self {
            weight_f32: weight.to_dtype(DType::F32)?.to_vec1()?,
            bias_f32: bias.to_dtype(DType::F32)?.to_vec1()?,
            weight,
            bias,
            eps: Self::EPS,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        op("layernorm", || {
            if let Some(y) = fastmath::layer_norm(x, &self.weight_f32, &self.bias_f32, self.eps) {
                return y;
            }
            let n = x.dim(D::Minus1)? as f64;
            let x = x.broadcast_sub(&(x.sum_keepdim(D::Minus1)? / n)?)?;
            let var = (x.sqr()?.sum_keepdim(D::Minus1)? / n)?;
            x.broadcast_div(&(var + self.eps)?.sqrt()?)?
                .broadcast_mul(&self.weight)?
                .broadcast_add(&self.bias)
        })
    }
}

/// `mlp.c_fc` → activation (exact erf GELU, or QuickGELU for OpenAI weights) → `mlp.c_proj`.
#[derive(Debug, Clone)]
pub struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    act: Activation,
}

impl Mlp {
    pub fn new(width: usize, mlp_dim: usize, act: Activation, vb: &Vb) -> Result<Self> {
        Ok(Self {
            c_fc: Linear::new(width, mlp_dim, &vb.pp("c_fc"))?,
            c_proj: Linear::new(mlp_dim, width, &vb.pp("c_proj"))?,
            act,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = op_flops("matmul mlp.c_fc", matmul_flops(x), || self.c_fc.forward(x))?;
        // c_fc's output is a fresh tensor: the activation overwrites it.
        let h = match self.act {
            Activation::Gelu => op("gelu (erf)", || fastmath::gelu_(h))?,
            Activation::QuickGelu => op("quick_gelu", || fastmath::quick_gelu_(h))?,
        };
        op_flops("matmul mlp.c_proj", matmul_flops(&h), || {
            self.c_proj.forward(&h)
        })
    }
}

/// `torch.nn.MultiheadAttention` (self-attention, batch first) split into its projections so
/// that callers can reuse the value third (MaskCLIP) or query a subset of tokens.
#[derive(Debug, Clone)]
pub struct MultiheadAttention {
    in_proj: Linear,
    out_proj: Linear,
    width: usize,
    heads: usize,
}

impl MultiheadAttention {
    pub fn new(width: usize, heads: usize, vb: &Vb) -> Result<Self> {
        if heads == 0 || !width.is_multiple_of(heads) {
            return Err(Error::config(
                "heads",
                format!("width {width} is not divisible by {heads} heads"),
            ));
        }
        Ok(Self {
            in_proj: Linear::with_names(
                width,
                3 * width,
                vb,
                "in_proj_weight",
                Some("in_proj_bias"),
            )?,
            out_proj: Linear::new(width, width, &vb.pp("out_proj"))?,
            width,
            heads,
        })
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// `[B, T, w]` → `[B, T, 3w]`: q, k and v (in that order along the last dim).
    pub fn qkv(&self, x: &Tensor) -> Result<Tensor> {
        Ok(op_flops(
            "matmul attn.in_proj (qkv)",
            matmul_flops(x),
            || self.in_proj.forward(x),
        )?)
    }

    pub fn out_proj(&self, x: &Tensor) -> Result<Tensor> {
        Ok(op_flops("matmul attn.out_proj", matmul_flops(x), || {
            self.out_proj.forward(x)
        })?)
    }

    /// Split `[B, T, 3w]` into per-head `q, k, v`, each `[B·heads, T, head_dim]` and contiguous,
    /// with one copy.
    pub(crate) fn split_heads(&self, qkv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = qkv.dims3()?;
        let d = self.width / self.heads;
        let qkv = op("attention split heads (copy)", || {
            qkv.reshape((b, t, 3, self.heads, d))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?
                .reshape((3, b * self.heads, t, d))
        })?;
        Ok((qkv.get(0)?, qkv.get(1)?, qkv.get(2)?))
    }

    /// Scaled dot-product attention from a fused `qkv [B, T, 3w]`, for the first `n_query`
    /// tokens only (`n_query = T` for ordinary self-attention). `mask`, if any, is an additive
    /// `[n_query, T]` bias (0 / −∞). Returns `out_proj(attention) [B, n_query, w]`.
    pub fn attend(&self, qkv: &Tensor, n_query: usize, mask: Option<&Tensor>) -> Result<Tensor> {
        self.attend_in_groups(qkv, n_query, mask, ATTN_SCORES_BUDGET, FUSED)
    }

    fn attend_in_groups(
        &self,
        qkv: &Tensor,
        n_query: usize,
        mask: Option<&Tensor>,
        budget: usize,
        fused: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = qkv.dims3()?;
        let d = self.width / self.heads;
        let (q, k, v) = self.split_heads(qkv)?;
        let q = if n_query == t {
            q
        } else {
            op("slicing", || q.narrow(1, 0, n_query)?.contiguous())?
        };
        // torch scales q by 1/√d before q·kᵀ.
        let q = op("attention q scale", || q * (1.0 / (d as f64).sqrt()))?;
        let bh = b * self.heads;
        // Fused, the heads run in parallel with no score matrix to bound.
        if fused {
            if let Some(outs) = fused_heads(&q, &k, &v, mask, bh, n_query, t, d)? {
                return self.merge_heads_and_project(outs, b, n_query);
            }
        }
        // Heads run in parallel ([`par`]), in groups whose score matrices together stay under
        // `budget` elements (large images: 4097² scores per head). Each head is its own product,
        // so neither the grouping nor the thread count changes a bit of the result.
        let group = (budget / (n_query * t).max(1)).clamp(1, bh);
        let mut outs = Vec::with_capacity(bh);
        for start in (0..bh).step_by(group) {
            let g = group.min(bh - start);
            let flops = |_: &_| 4.0 * (g * n_query * t * d) as f64;
            let heads = op_flops(ATTENTION_OP, flops, || {
                par::map(g, |i| -> candle_core::Result<Tensor> {
                    let h = start + i;
                    let (q, k, v) = (q.narrow(0, h, 1)?, k.narrow(0, h, 1)?, v.narrow(0, h, 1)?);
                    let scores = q.matmul(&k.t()?)?;
                    let scores = match mask {
                        Some(m) => scores.broadcast_add(m)?,
                        None => scores,
                    };
                    // `scores` is a fresh tensor: the softmax overwrites it.
                    fastmath::softmax_last_dim_(scores)?.matmul(&v)
                })
            });
            for head in heads {
                outs.push(head?);
            }
        }
        self.merge_heads_and_project(outs, b, n_query)
    }

    /// `out_proj` of the per-head outputs (`B·heads` tensors `[1, n_query, head_dim]`, in head
    /// order) merged back into `[B, n_query, w]` with one copy.
    pub(crate) fn merge_heads_and_project(
        &self,
        mut outs: Vec<Tensor>,
        b: usize,
        n_query: usize,
    ) -> Result<Tensor> {
        let d = self.width / self.heads;
        let out = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 0)?
        };
        let out = op("attention merge heads (copy)", || {
            out.reshape((b, self.heads, n_query, d))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, n_query, self.width))
        })?;
        self.out_proj(&out)
    }
}

/// One pre-LN residual block (`transformer.resblocks.N`).
#[derive(Debug, Clone)]
pub struct ResidualAttentionBlock {
    pub ln_1: LayerNorm,
    pub attn: MultiheadAttention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl ResidualAttentionBlock {
    pub fn new(
        width: usize,
        heads: usize,
        mlp_dim: usize,
        act: Activation,
        vb: &Vb,
    ) -> Result<Self> {
        Ok(Self {
            ln_1: LayerNorm::new(width, &vb.pp("ln_1"))?,
            attn: MultiheadAttention::new(width, heads, &vb.pp("attn"))?,
            ln_2: LayerNorm::new(width, &vb.pp("ln_2"))?,
            mlp: Mlp::new(width, mlp_dim, act, &vb.pp("mlp"))?,
        })
    }

    /// `x + out_proj(MHA(ln_1 x))` for all tokens.
    pub fn attn_residual(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let t = x.dim(1)?;
        let qkv = self.attn.qkv(&self.ln_1.forward(x)?)?;
        let a = self.attn.attend(&qkv, t, mask)?;
        Ok(op("residual add", || x + a)?)
    }

    /// `x + mlp(ln_2 x)`.
    pub fn mlp_residual(&self, x: &Tensor) -> Result<Tensor> {
        let m = self.mlp.forward(&self.ln_2.forward(x)?)?;
        Ok(op("residual add", || x + m)?)
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.mlp_residual(&self.attn_residual(x, mask)?)
    }

    /// Like [`Self::forward`], also returning the `ln_2` output (the CLIP-DINOiser input features).
    pub fn forward_with_ln2(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let h = self.attn_residual(x, mask)?;
        let ln2 = self.ln_2.forward(&h)?;
        let m = self.mlp.forward(&ln2)?;
        let out = op("residual add", || &h + m)?;
        Ok((out, ln2))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{Device, Tensor};

    use super::*;
    use crate::weights::{ComputePath, Stored, TensorStore};

    #[test]
    fn head_groups_and_the_fused_kernel_do_not_change_attention() {
        let dev = Device::Cpu;
        let (w, heads, t, b) = (16, 4, 9, 2);
        let mut store = TensorStore::new("test");
        for (name, shape) in [
            ("in_proj_weight", vec![3 * w, w]),
            ("in_proj_bias", vec![3 * w]),
            ("out_proj.weight", vec![w, w]),
            ("out_proj.bias", vec![w]),
        ] {
            store.insert(
                name,
                Stored::Float(Tensor::randn(0f32, 0.3, shape, &dev).unwrap()),
            );
        }
        let vb = Vb::new(Arc::new(store), dev.clone(), ComputePath::F32);
        let mha = MultiheadAttention::new(w, heads, &vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (b, t, w), &dev).unwrap();
        let qkv = mha.qkv(&x).unwrap();
        let mask = Tensor::from_vec(
            (0..t * t)
                .map(|i| {
                    if i % t > i / t {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect::<Vec<_>>(),
            (t, t),
            &dev,
        )
        .unwrap();
        for (n_query, mask) in [(t, None), (t, Some(&mask)), (1, None)] {
            let all = mha
                .attend_in_groups(&qkv, n_query, mask, usize::MAX, false)
                .unwrap();
            for (budget, fused) in [(1, false), (n_query * t * 3, false), (usize::MAX, true)] {
                let grouped = mha
                    .attend_in_groups(&qkv, n_query, mask, budget, fused)
                    .unwrap();
                let d = (&all - &grouped)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap();
                assert!(
                    d.to_scalar::<f32>().unwrap() < 1e-6,
                    "budget {budget}, fused {fused}, {n_query} queries"
                );
            }
        }
    }
}

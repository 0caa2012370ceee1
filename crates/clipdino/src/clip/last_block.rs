//! Training-free variants of the **last** vision block: each turns the tokens entering that block
//! into dense patch features differently, so blocks 0..L−2 ([`super::vision::Trunk`]) are shared
//! by all of them and a change of method costs one block.
//!
//! With `y = ln_1(x)`, `q, k, v` = the thirds of `y·in_proj_weightᵀ + in_proj_bias` split into
//! heads, `s = 1/√head_dim`, and `attn(A) = out_proj(A·v)` (heads merged):
//!
//! | variant | last block | reference |
//! |---|---|---|
//! | [`LastBlock::MaskClip`] | `v' = out_proj(v) + x; v' + mlp(ln_2 v')` (no attention) | MaskCLIP (Zhou et al., arXiv 2112.01071) as CLIP-DINOiser's `extract_v` |
//! | [`LastBlock::ClearClip`] | `attn(softmax(q·qᵀ·s))`, no residual, no FFN | ClearCLIP (Lan et al., arXiv 2407.12442), mc-lan/ClearCLIP |
//! | [`LastBlock::NaClip`] | `attn(softmax(k·kᵀ·s + G))`, no residual, no FFN; `G` a Gaussian over the patch grid (σ = 5 patches), 0 on the CLS row and column | NACLIP (Hajimiri et al., arXiv 2404.08181), sinahmr/NACLIP `custom_attn` (`arch='reduced'`, `attn_strategy='naclip'`) |
//! | [`LastBlock::SClip`] | `h = x + attn(softmax(q·qᵀ·s) + softmax(k·kᵀ·s))`, `h + mlp(ln_2 h)` | SCLIP (Wang et al., arXiv 2312.01597), wangf3014/SCLIP `custom_attn(csa=True)` |
//!
//! Every variant is then followed by `ln_post` and `@ proj` on the patch tokens.

use candle_core::Tensor;

use super::block::{MultiheadAttention, ResidualAttentionBlock};
use super::fastmath;
use crate::error::Result;
use crate::par;
use crate::timing::{op, op_flops};

/// NACLIP's Gaussian standard deviation, in patches (upstream `gaussian_std=5.`).
pub const NACLIP_SIGMA: f64 = 5.0;

/// Largest score matrix (elements) computed at once over a group of heads (64 MiB of f32).
const SCORES_BUDGET: usize = 16 << 20;

/// Which last-block variant produces the dense features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LastBlock {
    MaskClip,
    ClearClip,
    NaClip,
    SClip,
}

/// The attention of a variant, over all `T` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scores {
    /// `softmax(q·qᵀ·s)`.
    QQ,
    /// `softmax(k·kᵀ·s + G)`.
    KKGauss,
    /// `softmax(q·qᵀ·s) + softmax(k·kᵀ·s)`.
    QQPlusKK,
}

/// NACLIP's additive bias `[T, T]` for an `h×w` grid + CLS (token 0): for patches
/// `(i, j)` and `(k, l)`, `exp(−((i−k)² + (j−l)²) / (2σ²))`; 0 on the CLS row and column.
pub fn naclip_bias(h: usize, w: usize, sigma: f64, device: &candle_core::Device) -> Result<Tensor> {
    let t = h * w + 1;
    let mut g = vec![0f32; t * t];
    let denom = 2.0 * sigma * sigma;
    // one row of the separable factor per axis offset
    let ey: Vec<f64> = (0..h).map(|d| (-((d * d) as f64) / denom).exp()).collect();
    let ex: Vec<f64> = (0..w).map(|d| (-((d * d) as f64) / denom).exp()).collect();
    for a in 0..h * w {
        let (i, j) = (a / w, a % w);
        let row = &mut g[(a + 1) * t + 1..][..h * w];
        for (b, v) in row.iter_mut().enumerate() {
            let (k, l) = (b / w, b % w);
            *v = (ey[i.abs_diff(k)] * ex[j.abs_diff(l)]) as f32;
        }
    }
    Ok(Tensor::from_vec(g, (t, t), device)?)
}

/// `out_proj(A·v)` for all `T` tokens of `qkv [1, T, 3w]`, with `A` the variant's attention.
/// `grid` is the patch grid (for NACLIP's bias).
fn attend(
    attn: &MultiheadAttention,
    qkv: &Tensor,
    scores: Scores,
    grid: (usize, usize),
) -> Result<Tensor> {
    let (b, t, w3) = qkv.dims3()?;
    let width = w3 / 3;
    let heads = attn.heads();
    let d = width / heads;
    let scale = 1.0 / (d as f64).sqrt();
    let (q, k, v) = attn.split_heads(qkv)?;
    let bias = match scores {
        Scores::KKGauss => Some(naclip_bias(grid.0, grid.1, NACLIP_SIGMA, qkv.device())?),
        _ => None,
    };
    let mats = if scores == Scores::QQPlusKK { 2 } else { 1 };
    let bh = b * heads;
    let group = (SCORES_BUDGET / (mats * t * t).max(1)).clamp(1, bh);
    let mut outs = Vec::with_capacity(bh);
    for start in (0..bh).step_by(group) {
        let g = group.min(bh - start);
        let flops = |_: &_| (2 + 2 * mats) as f64 * (g * t * t * d) as f64;
        let res = op_flops("attention (last-block variant, by head)", flops, || {
            par::map(g, |i| -> candle_core::Result<Tensor> {
                let h = start + i;
                let (q, k, v) = (q.narrow(0, h, 1)?, k.narrow(0, h, 1)?, v.narrow(0, h, 1)?);
                // Upstream: bmm(a, bᵀ) · scale (the scale after the product).
                let self_scores = |a: &Tensor| a.matmul(&a.t()?)? * scale;
                let probs = match scores {
                    Scores::QQ => fastmath::softmax_last_dim_(self_scores(&q)?)?,
                    Scores::KKGauss => {
                        let s = self_scores(&k)?;
                        let s = match &bias {
                            Some(g) => s.broadcast_add(g)?,
                            None => s,
                        };
                        fastmath::softmax_last_dim_(s)?
                    }
                    Scores::QQPlusKK => {
                        (fastmath::softmax_last_dim_(self_scores(&q)?)?
                            + fastmath::softmax_last_dim_(self_scores(&k)?)?)?
                    }
                };
                probs.matmul(&v)
            })
        });
        for head in res {
            outs.push(head?);
        }
    }
    attn.merge_heads_and_project(outs, b, t)
}

/// The MaskCLIP value path from the block input `x [1, T, w]` and its `qkv [1, T, 3w]`, for the
/// patch tokens only: `[1, hw, w]` before `ln_post`.
pub(crate) fn maskclip_value_path(
    block: &ResidualAttentionBlock,
    x: &Tensor,
    qkv: &Tensor,
) -> Result<Tensor> {
    let (_, t, w3) = qkv.dims3()?;
    let width = w3 / 3;
    let hw = t - 1;
    let v = op("slicing", || {
        qkv.narrow(1, 1, hw)?
            .narrow(2, 2 * width, width)?
            .contiguous()
    })?;
    let v = block.attn.out_proj(&v)?;
    let v = op("residual add", || v + x.narrow(1, 1, hw)?)?;
    block.mlp_residual(&v)
}

/// The last block `block` in variant `variant` on its input `x [1, 1 + h·w, width]`: the patch
/// tokens `[1, h·w, width]` before `ln_post`.
pub fn forward(
    block: &ResidualAttentionBlock,
    x: &Tensor,
    grid: (usize, usize),
    variant: LastBlock,
) -> Result<Tensor> {
    let hw = x.dim(1)? - 1;
    let qkv = block
        .attn
        .qkv(&candle_core::Module::forward(&block.ln_1, x)?)?;
    let patches =
        |a: Tensor| -> Result<Tensor> { Ok(op("slicing", || a.narrow(1, 1, hw)?.contiguous())?) };
    match variant {
        LastBlock::MaskClip => maskclip_value_path(block, x, &qkv),
        LastBlock::ClearClip => patches(attend(&block.attn, &qkv, Scores::QQ, grid)?),
        LastBlock::NaClip => patches(attend(&block.attn, &qkv, Scores::KKGauss, grid)?),
        LastBlock::SClip => {
            let a = patches(attend(&block.attn, &qkv, Scores::QQPlusKK, grid)?)?;
            let h = op("residual add", || a + x.narrow(1, 1, hw)?)?;
            block.mlp_residual(&h)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn naclip_bias_is_a_gaussian_of_the_grid_distance_with_a_zero_cls_row() {
        let (h, w) = (3, 4);
        let g = naclip_bias(h, w, 5.0, &Device::Cpu).unwrap();
        let g = g.to_vec2::<f32>().unwrap();
        assert_eq!(g.len(), h * w + 1);
        assert!(g[0].iter().all(|&v| v == 0.0));
        assert!(g.iter().all(|r| r[0] == 0.0));
        // patch (0, 1) → token 2; patch (2, 3) → token 12: distance² = 4 + 4
        let want = (-8.0f64 / 50.0).exp() as f32;
        assert!((g[2][12] - want).abs() < 1e-7);
        assert_eq!(g[2][12], g[12][2]);
        assert_eq!(g[5][5], 1.0);
    }
}

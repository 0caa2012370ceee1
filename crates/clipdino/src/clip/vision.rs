//! OpenCLIP image tower (`open_clip/transformer.py`, `VisionTransformer`, open_clip 3.3.0) with
//! the MaskCLIP dense output used by CLIP-DINOiser (`models/maskclip/maskclip.py` of
//! wysoczanska/clip_dinoiser; MaskCLIP: Zhou et al., arXiv 2112.01071).
//!
//! One forward pass yields three things:
//! * `pooled`: the usual CLIP image embedding (CLS → `ln_post` → `@ proj`);
//! * `dense`: MaskCLIP features, where the last block keeps only its value path
//!   (`v = out_proj(v) + x; v = v + mlp(ln_2 v)`, no attention), then `ln_post`, `@ proj`;
//! * `inter`: the `ln_2` output of block `inter_layer` (the CLIP-DINOiser head input).
//!
//! Both last-block variants start from the same input `x` and share its `ln_1` and q/k/v
//! projection; the ordinary path only needs the CLS query (plus all keys and values).

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

use super::block::{LayerNorm, ResidualAttentionBlock};
use super::interp::resize_bicubic_hwc;
use super::last_block::{self, LastBlock};
use super::MAX_PATCHES;
use crate::config::{ClipConfig, VisionConfig};
use crate::error::{Error, Result};
use crate::timing::{matmul_flops, op, op_flops};
use crate::weights::Vb;
use crate::{linear, par};

/// Outputs of [`VisionTransformer::forward`] for one image with an `h×w` patch grid.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// `[embed]`, the CLIP image embedding (not normalised).
    pub pooled: Tensor,
    /// `[h, w, embed]`, MaskCLIP dense features (not normalised).
    pub dense: Tensor,
    /// `[h, w, width]`, `ln_2` output of block `inter_layer`, patch tokens only.
    pub inter: Tensor,
    /// The tokens entering the last block: every [`LastBlock`] variant starts from them.
    pub trunk: Trunk,
}

/// The state after blocks 0..L−2 for one image: the tokens entering the last block. Kept per
/// image (window) so that switching the last-block variant ([`VisionTransformer::dense`]) costs
/// one block instead of a new encode.
#[derive(Debug, Clone)]
pub struct Trunk {
    /// `[1, 1 + h·w, width]` (CLS first).
    pub tokens: Tensor,
    /// Patch grid `(h, w)`.
    pub grid: (usize, usize),
}

#[derive(Debug, Clone)]
pub struct VisionTransformer {
    /// `conv1` (stride = kernel = patch, no bias) as a matmul over unfolded patches,
    /// `[width, 3·p·p]` with columns in torch's `(c, ky, kx)` flatten order.
    conv1: QMatMul,
    class_embedding: Tensor,
    /// `[1 + g·g, width]` for the pretrained `g×g` grid.
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    blocks: Vec<ResidualAttentionBlock>,
    ln_post: LayerNorm,
    /// `visual.proj [width, embed]`, applied as `x @ proj`.
    proj: QMatMul,
    cfg: VisionConfig,
    embed_dim: usize,
}

impl VisionTransformer {
    /// `vb` points at `visual`.
    pub fn new(vb: &Vb, cfg: &ClipConfig) -> Result<Self> {
        // Bounds every size below (they come from a file).
        cfg.validate()?;
        let v = &cfg.vision;
        let (w, p) = (v.width, v.patch_size);
        let blocks = (0..v.layers)
            .map(|i| {
                ResidualAttentionBlock::new(
                    w,
                    v.heads,
                    v.mlp_dim,
                    cfg.activation,
                    &vb.pp("transformer.resblocks").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv1: vb.qmatmul(w, 3 * p * p, "conv1.weight")?,
            class_embedding: vb.get(&[w], "class_embedding")?,
            positional_embedding: vb.get(&[v.positions(), w], "positional_embedding")?,
            ln_pre: LayerNorm::new(w, &vb.pp("ln_pre"))?,
            blocks,
            ln_post: LayerNorm::new(w, &vb.pp("ln_post"))?,
            proj: vb.matmul_right(w, cfg.embed_dim, "proj")?,
            cfg: v.clone(),
            embed_dim: cfg.embed_dim,
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    /// The positional embedding for an `h×w` grid: CLS row kept, the `g×g` part resized with
    /// PyTorch's bicubic (align_corners=False). `[1 + h·w, width]`.
    pub fn positional_embedding(&self, h: usize, w: usize) -> Result<Tensor> {
        let g = self.cfg.grid();
        let width = self.cfg.width;
        if (h, w) == (g, g) {
            return Ok(self.positional_embedding.clone());
        }
        let cells = h
            .checked_mul(w)
            .filter(|&n| n <= MAX_PATCHES)
            .ok_or(Error::GridTooLarge {
                width: w.saturating_mul(self.cfg.patch_size),
                height: h.saturating_mul(self.cfg.patch_size),
                grid_h: h,
                grid_w: w,
                max_tokens: MAX_PATCHES,
            })?;
        let cls = self.positional_embedding.narrow(0, 0, 1)?;
        let grid = self
            .positional_embedding
            .narrow(0, 1, g * g)?
            .reshape((g, g, width))?;
        let grid = resize_bicubic_hwc(&grid, h, w)?.reshape((cells, width))?;
        Ok(Tensor::cat(&[&cls, &grid], 0)?)
    }

    /// Run the tower on normalised pixels `[1, 3, H, W]` (H, W multiples of the patch size, see
    /// [`super::preprocess`]). `inter_layer` selects the block whose `ln_2` output is returned.
    /// `progress(done, total)` is called after each block.
    pub fn forward(
        &self,
        pixels: &Tensor,
        inter_layer: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<VisionOutput> {
        let (b, c, hh, ww) = pixels.dims4().map_err(|_| {
            Error::invalid(
                "pixels",
                format!("expected [1, 3, H, W], got {:?}", pixels.dims()),
            )
        })?;
        let p = self.cfg.patch_size;
        if b != 1 || c != 3 || hh == 0 || ww == 0 || hh % p != 0 || ww % p != 0 {
            return Err(Error::invalid(
                "pixels",
                format!(
                    "expected [1, 3, H, W] with H, W positive multiples of {p}, got {:?}",
                    pixels.dims()
                ),
            ));
        }
        let layers = self.blocks.len();
        if inter_layer >= layers {
            return Err(Error::invalid(
                "inter_layer",
                format!("block {inter_layer} does not exist in a {layers}-block tower"),
            ));
        }
        let (h, w) = (hh / p, ww / p);
        if h * w > MAX_PATCHES {
            return Err(Error::GridTooLarge {
                width: ww,
                height: hh,
                grid_h: h,
                grid_w: w,
                max_tokens: MAX_PATCHES,
            });
        }
        let (width, hw) = (self.cfg.width, h * w);

        // Patch embedding: unfold to [h·w, 3·p·p] in (c, ky, kx) order, then one matmul.
        let flops = |_: &_| 2.0 * (hw * 3 * p * p * width) as f64;
        let patches = op_flops("patch embedding (unfold + matmul)", flops, || {
            let unfolded = pixels
                .reshape((3, h, p, w, p))?
                .permute((1, 3, 0, 2, 4))?
                .contiguous()?
                .reshape((hw, 3 * p * p))?;
            // candle's f32 matmul is single-threaded in wasm: rows in fixed blocks over the pool
            linear::forward_rows(&unfolded, |x| self.conv1.forward(x))
        })?;
        let pos = op("positional embedding (bicubic resize)", || {
            self.positional_embedding(h, w)
        })?;
        let x = op("cls + positional add", || {
            let cls = self.class_embedding.reshape((1, width))?;
            Tensor::cat(&[&cls, &patches], 0)? + pos
        })?;
        let mut x = self.ln_pre.forward(&x)?.unsqueeze(0)?;

        // Each block runs on the pool as a whole (`par::install`); `progress` stays here.
        let mut inter = None;
        for (i, block) in self.blocks[..layers - 1].iter().enumerate() {
            x = if i == inter_layer {
                let (out, ln2) = par::install(|| block.forward_with_ln2(&x, None))?;
                inter = Some(ln2);
                out
            } else {
                par::install(|| block.forward(&x, None))?
            };
            progress(i + 1, layers);
        }

        // Last block, from its input `x`: shared ln_1 and q/k/v.
        let last = &self.blocks[layers - 1];
        let t = hw + 1;
        // Ordinary path: only the CLS query is needed, unless the caller wants this block's ln_2.
        let n_query = if inter_layer == layers - 1 { t } else { 1 };
        let (out, ln2, v) = par::install(|| -> Result<_> {
            let qkv = last.attn.qkv(&last.ln_1.forward(&x)?)?;
            let attn = last.attn.attend(&qkv, n_query, None)?;
            let hid = op("residual add", || x.narrow(1, 0, n_query)? + attn)?;
            let ln2 = last.ln_2.forward(&hid)?;
            let m = last.mlp.forward(&ln2)?;
            let out = op("residual add", || &hid + m)?;
            // MaskCLIP value path (patch tokens only; the CLS row is dropped afterwards anyway).
            let v = last_block::maskclip_value_path(last, &x, &qkv)?;
            Ok((out, ln2, v))
        })?;
        if inter_layer == layers - 1 {
            inter = Some(ln2);
        }
        progress(layers, layers);

        let pooled = self.ln_post.forward(&out.narrow(1, 0, 1)?)?;
        let pooled = pooled.reshape((1, width))?;
        let pooled = op_flops("ln_post + visual.proj", matmul_flops(&pooled), || {
            self.proj.forward(&pooled)
        })?
        .reshape(self.embed_dim)?;
        let dense = self.project_patches(&v, (h, w))?;
        let inter = inter
            .ok_or_else(|| {
                Error::invalid("inter_layer", format!("block {inter_layer} was not run"))
            })?
            .narrow(1, 1, hw)?
            .reshape((h, w, width))?;
        Ok(VisionOutput {
            pooled,
            dense,
            inter,
            trunk: Trunk {
                tokens: x,
                grid: (h, w),
            },
        })
    }

    /// `ln_post`, then `@ proj`: patch tokens `[1, h·w, width]` → dense features `[h, w, E]`.
    fn project_patches(&self, v: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let dense = self.ln_post.forward(&v.reshape((h * w, self.cfg.width))?)?;
        Ok(op_flops("ln_post + visual.proj", matmul_flops(&dense), || {
            linear::forward_rows(&dense, |x| self.proj.forward(x))
        })?
        .reshape((h, w, self.embed_dim))?)
    }

    /// Dense features `[h, w, E]` (not normalised) of the last-block variant `variant`, from the
    /// cached tokens entering the last block: one block, `ln_post` and `proj`.
    pub fn dense(&self, trunk: &Trunk, variant: LastBlock) -> Result<Tensor> {
        let (h, w) = trunk.grid;
        let t = h * w + 1;
        match trunk.tokens.dims() {
            [1, tt, c] if *tt == t && *c == self.cfg.width => {}
            d => {
                return Err(Error::invalid(
                    "trunk",
                    format!(
                        "expected [1, {t}, {}] tokens for a {h}×{w} grid, got {d:?}",
                        self.cfg.width
                    ),
                ))
            }
        }
        let last = self
            .blocks
            .last()
            .ok_or_else(|| Error::config("layers", "the image tower has no blocks"))?;
        let v = last_block::forward(last, &trunk.tokens, trunk.grid, variant)?;
        self.project_patches(&v, trunk.grid)
    }
}

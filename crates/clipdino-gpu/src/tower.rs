//! The OpenCLIP image tower on the GPU: the same computation as
//! [`clipdino::clip::VisionTransformer::forward`] (patch embedding as a matmul, `ln_pre`, the
//! pre-LN residual blocks, the last block's CLS path and MaskCLIP value path, `ln_post`, `proj`,
//! and the `ln_2` tap of block `inter_layer`), recorded as kernel dispatches.
//!
//! Weights are read once from the loaded model's tensors; the matrices are kept on the device in
//! the compact form [`GpuWeights`] picks (by default the download's: Q8_0 blocks as stored,
//! dequantized in the matmul kernel; `crate::weight`), LayerNorm parameters, biases and
//! embeddings in f32. The bicubic resize of the positional embedding
//! and the unfolding of the pixels into patches run on the CPU (a few MFLOP), through the CPU
//! tower, so there is one definition of each.

use candle_core::{Device, Tensor};
use clipdino::clip::{Trunk, VisionOutput, VisionTransformer};
use clipdino::{ClipConfig, Error, Vb};

use crate::context::{Gpu, GpuBuffer};
use crate::error::Result;
use crate::kernels::{Act, Encoder, GpuLayerNorm, Matmul, View};
use crate::weight::{GpuWeight, GpuWeights, WeightFormat};

/// Largest attention score buffer at once, in elements (64 MiB of f32, half WebGPU's default
/// storage binding limit): heads run in groups that fit.
const SCORES_BUDGET: usize = 16 << 20;

#[derive(Debug)]
struct GpuLinear {
    weight: GpuWeight,
    bias: Option<GpuBuffer>,
}

impl GpuLinear {
    /// torch `weight [out, in]` (+ `bias [out]`) under `vb`, the weight as `policy` picks.
    fn new(
        gpu: &Gpu,
        vb: &Vb,
        policy: GpuWeights,
        (inp, out): (usize, usize),
        weight: &str,
        bias: Option<&str>,
    ) -> Result<Self> {
        let (_, stored) = vb.stored_matrix(out, inp, weight)?;
        Ok(Self {
            weight: gpu.upload_stored("weight", policy, stored, (out, inp), false)?,
            bias: bias
                .map(|b| upload(gpu, "bias", &vb.get(&[out], b)?))
                .transpose()?,
        })
    }

    /// `rows` rows of `x` → rows of `c`.
    fn on<'a>(&'a self, rows: usize, x: (&'a GpuBuffer, View), c: View) -> Matmul<'a> {
        Matmul::linear(rows as u32, x, &self.weight, self.bias.as_ref(), c)
    }
}

#[derive(Debug)]
struct GpuBlock {
    ln_1: GpuLayerNorm,
    in_proj: GpuLinear,
    out_proj: GpuLinear,
    ln_2: GpuLayerNorm,
    c_fc: GpuLinear,
    c_proj: GpuLinear,
}

fn upload(gpu: &Gpu, what: &'static str, t: &Tensor) -> Result<GpuBuffer> {
    let v = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    gpu.upload(what, &v)
}

fn layer_norm(gpu: &Gpu, vb: &Vb, dim: usize) -> Result<GpuLayerNorm> {
    Ok(GpuLayerNorm {
        weight: upload(gpu, "layernorm weight", &vb.get(&[dim], "weight")?)?,
        bias: upload(gpu, "layernorm bias", &vb.get(&[dim], "bias")?)?,
        eps: clipdino::clip::LayerNorm::EPS as f32,
    })
}

/// The image tower's weights on one device.
#[derive(Debug)]
pub struct GpuVision {
    conv1: GpuWeight,
    class_embedding: Vec<f32>,
    ln_pre: GpuLayerNorm,
    blocks: Vec<GpuBlock>,
    ln_post: GpuLayerNorm,
    /// `visual.proj` as `[embed, width]` (transposed from upstream's `x @ proj`).
    proj: GpuWeight,
    width: usize,
    heads: usize,
    mlp_dim: usize,
    patch: usize,
    embed_dim: usize,
    act: Act,
}

impl GpuVision {
    /// Upload the tower's weights, the matrices in the download's form
    /// ([`GpuWeights::AsStored`]); `vb` points at `visual` (as for [`VisionTransformer::new`]).
    pub fn new(gpu: &Gpu, vb: &Vb, cfg: &ClipConfig) -> Result<Self> {
        Self::with_weights(gpu, vb, cfg, GpuWeights::default())
    }

    /// [`Self::new`] with the matrices in the form `policy` picks.
    pub fn with_weights(gpu: &Gpu, vb: &Vb, cfg: &ClipConfig, policy: GpuWeights) -> Result<Self> {
        cfg.validate()?;
        let v = &cfg.vision;
        let (w, p, e) = (v.width, v.patch_size, cfg.embed_dim);
        let blocks = (0..v.layers)
            .map(|i| {
                let vb = vb.pp("transformer.resblocks").pp(i);
                let (attn, mlp) = (vb.pp("attn"), vb.pp("mlp"));
                Ok(GpuBlock {
                    ln_1: layer_norm(gpu, &vb.pp("ln_1"), w)?,
                    in_proj: GpuLinear::new(
                        gpu,
                        &attn,
                        policy,
                        (w, 3 * w),
                        "in_proj_weight",
                        Some("in_proj_bias"),
                    )?,
                    out_proj: GpuLinear::new(
                        gpu,
                        &attn.pp("out_proj"),
                        policy,
                        (w, w),
                        "weight",
                        Some("bias"),
                    )?,
                    ln_2: layer_norm(gpu, &vb.pp("ln_2"), w)?,
                    c_fc: GpuLinear::new(
                        gpu,
                        &mlp.pp("c_fc"),
                        policy,
                        (w, v.mlp_dim),
                        "weight",
                        Some("bias"),
                    )?,
                    c_proj: GpuLinear::new(
                        gpu,
                        &mlp.pp("c_proj"),
                        policy,
                        (v.mlp_dim, w),
                        "weight",
                        Some("bias"),
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Upstream `proj [width, embed]`; quantized bundles store it transposed as `proj_t`.
        let proj = if vb.contains("proj") {
            let (_, s) = vb.stored_matrix(w, e, "proj")?;
            gpu.upload_stored("proj", policy, s, (e, w), true)?
        } else {
            let (_, s) = vb.stored_matrix(e, w, "proj_t")?;
            gpu.upload_stored("proj", policy, s, (e, w), false)?
        };
        let (_, conv1) = vb.stored_matrix(w, 3 * p * p, "conv1.weight")?;
        Ok(Self {
            conv1: gpu.upload_stored("conv1", policy, conv1, (w, 3 * p * p), false)?,
            class_embedding: vb.get(&[w], "class_embedding")?.to_vec1()?,
            ln_pre: layer_norm(gpu, &vb.pp("ln_pre"), w)?,
            blocks,
            ln_post: layer_norm(gpu, &vb.pp("ln_post"), w)?,
            proj,
            width: w,
            heads: v.heads,
            mlp_dim: v.mlp_dim,
            patch: p,
            embed_dim: e,
            act: cfg.activation.into(),
        })
    }

    /// Bytes of weights held on the device.
    pub fn weight_bytes(&self) -> u64 {
        let ln = |l: &GpuLayerNorm| l.weight.bytes() + l.bias.bytes();
        let biases = |l: &GpuLinear| l.bias.as_ref().map_or(0, GpuBuffer::bytes);
        self.matrices().map(GpuWeight::bytes).sum::<u64>()
            + ln(&self.ln_pre)
            + ln(&self.ln_post)
            + self
                .blocks
                .iter()
                .map(|b| {
                    ln(&b.ln_1)
                        + ln(&b.ln_2)
                        + biases(&b.in_proj)
                        + biases(&b.out_proj)
                        + biases(&b.c_fc)
                        + biases(&b.c_proj)
                })
                .sum::<u64>()
    }

    fn matrices(&self) -> impl Iterator<Item = &GpuWeight> {
        [&self.conv1, &self.proj].into_iter().chain(
            self.blocks
                .iter()
                .flat_map(|b| [&b.in_proj, &b.out_proj, &b.c_fc, &b.c_proj].map(|l| &l.weight)),
        )
    }

    /// Bytes of the weight matrices held in `format` (the rest of [`Self::weight_bytes`] is f32
    /// LayerNorm parameters and biases).
    pub fn matrix_bytes(&self, format: WeightFormat) -> u64 {
        self.matrices()
            .filter(|m| m.format() == format)
            .map(GpuWeight::bytes)
            .sum()
    }

    /// `out_proj`-less multi-head attention of the first `nq` of `t` tokens of `qkv [t, 3w]`
    /// into rows `0..nq` of `out [·, w]` (heads merged), through `scores`.
    fn attend(
        &self,
        enc: &mut Encoder,
        qkv: &GpuBuffer,
        (t, nq): (usize, usize),
        scores: &GpuBuffer,
        out: &GpuBuffer,
    ) {
        let (w, d) = (self.width as u32, (self.width / self.heads) as u32);
        let (t32, nq32) = (t as u32, nq as u32);
        let group = (scores.len() / (nq * t).max(1)).clamp(1, self.heads);
        for start in (0..self.heads).step_by(group) {
            let g = group.min(self.heads - start) as u32;
            let heads = (start as u32, g);
            let alpha = 1.0 / (d as f32).sqrt();
            enc.matmul(
                &Matmul::attention_scores(qkv, (t32, nq32), (w, d), heads, alpha),
                scores,
            );
            enc.softmax(scores, g * nq32, t32);
            enc.matmul(
                &Matmul::attention_values(scores, qkv, (t32, nq32), (w, d), heads),
                out,
            );
        }
    }

    /// `ln_1` of a block's input `x` (`rows` tokens) into `ln`, then its fused q/k/v projection
    /// into `qkv`.
    fn ln_1_qkv(
        &self,
        enc: &mut Encoder,
        block: &GpuBlock,
        rows: usize,
        x: &GpuBuffer,
        ln: &GpuBuffer,
        qkv: &GpuBuffer,
    ) {
        let w = self.width as u32;
        enc.layer_norm(
            &block.ln_1,
            rows as u32,
            (x, View::rows(0, w)),
            (ln, View::rows(0, w)),
        );
        enc.matmul(
            &block
                .in_proj
                .on(rows, (ln, View::rows(0, w)), View::rows(0, 3 * w)),
            qkv,
        );
    }

    /// `x += c_proj(act(c_fc(ln_2 x)))` on the first `rows` rows of `x`, through `ln` and
    /// `hidden`; `ln_done`: `ln` already holds `ln_2 x`.
    #[allow(clippy::too_many_arguments)]
    fn mlp_residual(
        &self,
        enc: &mut Encoder,
        block: &GpuBlock,
        rows: usize,
        x: &GpuBuffer,
        ln: &GpuBuffer,
        hidden: &GpuBuffer,
        ln_done: bool,
    ) {
        let (w, m) = (self.width as u32, self.mlp_dim as u32);
        if !ln_done {
            enc.layer_norm(
                &block.ln_2,
                rows as u32,
                (x, View::rows(0, w)),
                (ln, View::rows(0, w)),
            );
        }
        enc.matmul(
            &block
                .c_fc
                .on(rows, (ln, View::rows(0, w)), View::rows(0, m))
                .act(self.act),
            hidden,
        );
        enc.matmul(
            &block
                .c_proj
                .on(rows, (hidden, View::rows(0, m)), View::rows(0, w))
                .accumulate(),
            x,
        );
    }

    /// The tower on normalised pixels `[1, 3, H, W]`, like [`VisionTransformer::forward`], whose
    /// positional embedding (`cpu`, the same loaded model) this uses. `progress(done, total)` is
    /// called as each block's work is submitted to the device.
    pub async fn forward(
        &self,
        gpu: &Gpu,
        cpu: &VisionTransformer,
        pixels: &Tensor,
        inter_layer: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<VisionOutput> {
        let p = self.patch;
        let (h, w) = match pixels.dims() {
            &[1, 3, hh, ww] if hh > 0 && ww > 0 && hh % p == 0 && ww % p == 0 => (hh / p, ww / p),
            d => {
                return Err(Error::invalid(
                    "pixels",
                    format!("expected [1, 3, H, W] with H, W positive multiples of {p}, got {d:?}"),
                )
                .into())
            }
        };
        let layers = self.blocks.len();
        if inter_layer >= layers {
            return Err(Error::invalid(
                "inter_layer",
                format!("block {inter_layer} does not exist in a {layers}-block tower"),
            )
            .into());
        }
        // Bounds the grid (GridTooLarge) before any buffer is sized from it.
        let pos = cpu.positional_embedding(h, w)?;
        let (width, hw) = (self.width, h * w);
        let t = hw + 1;
        let mut x0 = pos.flatten_all()?.to_vec1::<f32>()?;
        for (v, c) in x0.iter_mut().zip(&self.class_embedding) {
            *v += c;
        }
        let patches = pixels
            .reshape((3, h, p, w, p))?
            .permute((1, 3, 0, 2, 4))?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;

        let w32 = width as u32;
        let x = gpu.upload("tokens", &x0)?;
        let patches = gpu.upload("patches", &patches)?;
        let ln = gpu.zeros("layernorm output", t * width)?;
        let qkv = gpu.zeros("qkv", t * 3 * width)?;
        let attn = gpu.zeros("attention output", t * width)?;
        let hidden = gpu.zeros("mlp hidden", t * self.mlp_dim)?;
        let scores = gpu.zeros(
            "attention scores",
            (SCORES_BUDGET / (t * t)).clamp(1, self.heads) * t * t,
        )?;
        let inter = gpu.zeros("ln_2 tap", hw * width)?;
        let hid = gpu.zeros("last block (CLS path)", t * width)?;
        let value = gpu.zeros("last block (value path)", hw * width)?;
        let dense = gpu.zeros("dense features", hw * self.embed_dim)?;
        let pooled = gpu.zeros("pooled embedding", self.embed_dim)?;

        gpu.capture("the image tower", || {
            let mut enc = Encoder::new(gpu, "patch embedding");
            let k = (3 * p * p) as u32;
            enc.matmul(
                &Matmul::linear(
                    hw as u32,
                    (&patches, View::rows(0, k)),
                    &self.conv1,
                    None,
                    View::rows(w32, w32),
                )
                .accumulate(),
                &x,
            );
            enc.layer_norm(
                &self.ln_pre,
                t as u32,
                (&x, View::rows(0, w32)),
                (&ln, View::rows(0, w32)),
            );
            enc.copy(&ln, 0, &x, 0, t * width);

            for (i, block) in self.blocks[..layers - 1].iter().enumerate() {
                self.ln_1_qkv(&mut enc, block, t, &x, &ln, &qkv);
                self.attend(&mut enc, &qkv, (t, t), &scores, &attn);
                enc.matmul(
                    &block
                        .out_proj
                        .on(t, (&attn, View::rows(0, w32)), View::rows(0, w32))
                        .accumulate(),
                    &x,
                );
                enc.layer_norm(
                    &block.ln_2,
                    t as u32,
                    (&x, View::rows(0, w32)),
                    (&ln, View::rows(0, w32)),
                );
                if i == inter_layer {
                    enc.copy(&ln, width, &inter, 0, hw * width);
                }
                self.mlp_residual(&mut enc, block, t, &x, &ln, &hidden, true);
                enc.submit();
                progress(i + 1, layers);
                enc = Encoder::new(gpu, "block");
            }

            // Last block from its input `x` (kept: the trunk): shared ln_1 and q/k/v.
            let last = &self.blocks[layers - 1];
            self.ln_1_qkv(&mut enc, last, t, &x, &ln, &qkv);
            // Ordinary path: the CLS query only, unless this block's ln_2 is the tap.
            let nq = if inter_layer == layers - 1 { t } else { 1 };
            self.attend(&mut enc, &qkv, (t, nq), &scores, &attn);
            enc.copy(&x, 0, &hid, 0, nq * width);
            enc.matmul(
                &last
                    .out_proj
                    .on(nq, (&attn, View::rows(0, w32)), View::rows(0, w32))
                    .accumulate(),
                &hid,
            );
            enc.layer_norm(
                &last.ln_2,
                nq as u32,
                (&hid, View::rows(0, w32)),
                (&ln, View::rows(0, w32)),
            );
            if inter_layer == layers - 1 {
                enc.copy(&ln, width, &inter, 0, hw * width);
            }
            self.mlp_residual(&mut enc, last, nq, &hid, &ln, &hidden, true);

            // MaskCLIP value path on the patch tokens: v' = out_proj(v) + x; v' + mlp(ln_2 v').
            enc.copy(&x, width, &value, 0, hw * width);
            enc.matmul(
                &last
                    .out_proj
                    .on(
                        hw,
                        (&qkv, View::rows(3 * w32 + 2 * w32, 3 * w32)),
                        View::rows(0, w32),
                    )
                    .accumulate(),
                &value,
            );
            self.mlp_residual(&mut enc, last, hw, &value, &ln, &hidden, false);

            // ln_post, then `@ proj`: the patch tokens, then the CLS token.
            let e32 = self.embed_dim as u32;
            for (src, rows, dst) in [(&value, hw, &dense), (&hid, 1, &pooled)] {
                enc.layer_norm(
                    &self.ln_post,
                    rows as u32,
                    (src, View::rows(0, w32)),
                    (&ln, View::rows(0, w32)),
                );
                enc.matmul(
                    &Matmul::linear(
                        rows as u32,
                        (&ln, View::rows(0, w32)),
                        &self.proj,
                        None,
                        View::rows(0, e32),
                    ),
                    dst,
                );
            }
            enc.submit();
            progress(layers, layers);
            Ok(())
        })
        .await?;

        let dev = Device::Cpu;
        let pooled = gpu
            .read("pooled embedding", &pooled, 0, self.embed_dim)
            .await?;
        let dense = gpu.read("dense features", &dense, 0, dense.len()).await?;
        let inter = gpu.read("ln_2 tap", &inter, 0, inter.len()).await?;
        let tokens = gpu.read("trunk tokens", &x, 0, x.len()).await?;
        Ok(VisionOutput {
            pooled: Tensor::from_vec(pooled, self.embed_dim, &dev)?,
            dense: Tensor::from_vec(dense, (h, w, self.embed_dim), &dev)?,
            inter: Tensor::from_vec(inter, (h, w, width), &dev)?,
            trunk: Trunk {
                tokens: Tensor::from_vec(tokens, (1, t, width), &dev)?,
                grid: (h, w),
            },
        })
    }
}

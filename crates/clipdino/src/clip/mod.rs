//! OpenCLIP ViT (image + text towers) as used by CLIP-DINOiser, with tensor names mirroring the
//! upstream `open_clip` state dict (open_clip 3.3.0, `open_clip/model.py` and
//! `open_clip/transformer.py`). CLIP: Radford et al., arXiv 2103.00020; OpenCLIP: Cherti et al.,
//! arXiv 2212.07143.

mod block;
pub mod fastmath;
pub mod fused_attention;
pub mod interp;
pub mod last_block;
pub mod text;
pub mod vision;

pub use block::{LayerNorm, Mlp, MultiheadAttention, ResidualAttentionBlock};
pub use last_block::LastBlock;
pub use text::TextTransformer;
pub use vision::{Trunk, VisionOutput, VisionTransformer};

use candle_core::{DType, Tensor};

use crate::config::{ClipConfig, IMAGE_MEAN, IMAGE_STD};
use crate::error::{Error, Result};
use crate::templates::TemplateSet;
use crate::tokenizer::ClipTokenizer;
use crate::weights::Vb;

pub use crate::limits::MAX_PATCHES;

/// `[3, H, W]` RGB in `[0, 1]` → `[1, 3, H', W']` model input: zero-pad bottom/right to a
/// multiple of `patch`, **then** normalise with CLIP's mean/std (as CLIP-DINOiser does, so
/// padded pixels become `−mean/std`).
pub fn preprocess(image_chw01: &Tensor, patch: usize) -> Result<Tensor> {
    let (c, h, w) = image_chw01.dims3().map_err(|_| {
        Error::invalid(
            "image",
            format!("expected [3, H, W], got {:?}", image_chw01.dims()),
        )
    })?;
    if c != 3 || h == 0 || w == 0 || patch == 0 {
        return Err(Error::invalid(
            "image",
            format!(
                "expected a non-empty [3, H, W] image and patch > 0, got {:?} and patch {patch}",
                image_chw01.dims()
            ),
        ));
    }
    let pad_h = h.div_ceil(patch) * patch - h;
    let pad_w = w.div_ceil(patch) * patch - w;
    let x = image_chw01.to_dtype(DType::F32)?;
    let x = x.pad_with_zeros(1, 0, pad_h)?.pad_with_zeros(2, 0, pad_w)?;
    let dev = x.device();
    let mean = Tensor::new(&IMAGE_MEAN, dev)?.reshape((3, 1, 1))?;
    let std = Tensor::new(&IMAGE_STD, dev)?.reshape((3, 1, 1))?;
    Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?.unsqueeze(0)?)
}

/// Label embeddings with, per label, whether its prompts had to be cut (see
/// [`ClipModel::embed_labels_checked`]).
#[derive(Debug, Clone)]
pub struct LabelEmbeddings {
    /// `[L, embed]`, L2-normalised.
    pub embeddings: Tensor,
    /// Per label: at least one of its prompts was longer than the text context and was truncated
    /// (the tokenizer keeps EOT in the last slot).
    pub truncated: Vec<bool>,
}

/// Both CLIP towers.
#[derive(Debug, Clone)]
pub struct ClipModel {
    pub vision: VisionTransformer,
    pub text: TextTransformer,
    pub cfg: ClipConfig,
}

impl ClipModel {
    /// `vb` points at the root of an open_clip state dict (`visual.*`, `token_embedding.*`, …).
    pub fn new(vb: &Vb, cfg: &ClipConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            vision: VisionTransformer::new(&vb.pp("visual"), cfg)?,
            text: TextTransformer::new(vb, cfg)?,
            cfg: cfg.clone(),
        })
    }

    /// Label embeddings `[L, embed]` for zero-shot classification (open_clip's
    /// `build_zero_shot_classifier`): every template of `set` filled with the label, all prompts of
    /// all labels encoded in one batched call, each L2-normalised, averaged per label, and the
    /// average L2-normalised again.
    ///
    /// The tokens a template's prompts share before the label (`SOT a photo of a`) run once per
    /// template, not once per label ([`TextTransformer::forward_shared_prefixes`], exact).
    pub fn embed_labels(
        &self,
        tok: &ClipTokenizer,
        labels: &[String],
        set: TemplateSet,
    ) -> Result<Tensor> {
        Ok(self.embed_labels_checked(tok, labels, set)?.embeddings)
    }

    /// [`Self::embed_labels`], also telling per label whether a prompt was truncated to the
    /// context length. A prompt token outside the text tower's vocabulary (weights made for
    /// another tokenizer) is an error naming the label.
    pub fn embed_labels_checked(
        &self,
        tok: &ClipTokenizer,
        labels: &[String],
        set: TemplateSet,
    ) -> Result<LabelEmbeddings> {
        let n = set.templates().len();
        let embed = self.cfg.embed_dim;
        let vocab = self.cfg.text.vocab_size;
        let mut truncated = vec![false; labels.len()];
        // ids[label][template]
        let mut ids = Vec::with_capacity(labels.len());
        for (label, cut) in labels.iter().zip(&mut truncated) {
            let mut per_template = Vec::with_capacity(n);
            for prompt in set.apply(label) {
                let enc = tok.encode(&prompt)?;
                if let Some(&bad) = enc.ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(Error::invalid(
                        "labels",
                        format!(
                            "the text tower's vocabulary has {vocab} tokens, but the CLIP tokenizer gives token id {bad} for “{label}”; these weights cannot encode text labels"
                        ),
                    ));
                }
                *cut |= enc.truncated;
                per_template.push(enc.ids);
            }
            ids.push(per_template);
        }
        if labels.is_empty() || n == 0 {
            let embeddings = Tensor::zeros((labels.len(), embed), DType::F32, self.text.device())?;
            return Ok(LabelEmbeddings {
                embeddings,
                truncated,
            });
        }
        let e = if labels.len() < 2 {
            self.text.forward(&ids.concat())?
        } else {
            let mut prefixes = Vec::with_capacity(n);
            let mut cut = Vec::with_capacity(n);
            for j in 0..n {
                let first = &ids[0][j];
                // Longest common prefix, ending before any prompt's pooling token (its first
                // largest id) so that every suffix holds it.
                let mut len = ids.iter().map(|p| first_argmax(&p[j])).min().unwrap_or(0);
                for p in &ids {
                    len = len.min(first.iter().zip(&p[j]).take_while(|(a, b)| a == b).count());
                }
                prefixes.push(first[..len].to_vec());
                cut.push(len);
            }
            let prompts: Vec<(usize, Vec<u32>)> = ids
                .iter()
                .flat_map(|p| p.iter().enumerate().map(|(j, q)| (j, q[cut[j]..].to_vec())))
                .collect();
            self.text.forward_shared_prefixes(&prefixes, &prompts)?
        };
        let e = l2_normalize(&e)?;
        let e = e.reshape((labels.len(), n, embed))?.mean(1)?;
        Ok(LabelEmbeddings {
            embeddings: l2_normalize(&e)?,
            truncated,
        })
    }
}

/// Position of the first largest id (`torch.argmax`).
fn first_argmax(ids: &[u32]) -> usize {
    ids.iter()
        .enumerate()
        .fold(0, |best, (j, &id)| if id > ids[best] { j } else { best })
}

/// Rows divided by their L2 norm (floored at 1e-12 like `F.normalize`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(candle_core::D::Minus1)?
        .sqrt()?
        .maximum(1e-12)?;
    Ok(x.broadcast_div(&norm)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn preprocess_pads_then_normalises() {
        let img = Tensor::full(0.5f32, (3, 17, 5), &Device::Cpu).unwrap();
        let x = preprocess(&img, 16).unwrap();
        assert_eq!(x.dims(), &[1, 3, 32, 16]);
        let v = x.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
        for c in 0..3 {
            let inside = (0.5 - IMAGE_MEAN[c]) / IMAGE_STD[c];
            let pad = -IMAGE_MEAN[c] / IMAGE_STD[c];
            assert!((v[c][16][4] - inside).abs() < 1e-6);
            assert!((v[c][17][0] - pad).abs() < 1e-6, "bottom padding");
            assert!((v[c][0][5] - pad).abs() < 1e-6, "right padding");
            assert!((v[c][31][15] - pad).abs() < 1e-6, "corner padding");
        }
    }

    #[test]
    fn preprocess_rejects_bad_shapes() {
        let dev = Device::Cpu;
        assert!(preprocess(&Tensor::zeros((4, 8, 8), DType::F32, &dev).unwrap(), 16).is_err());
        assert!(preprocess(&Tensor::zeros((3, 8), DType::F32, &dev).unwrap(), 16).is_err());
        assert!(preprocess(&Tensor::zeros((3, 0, 8), DType::F32, &dev).unwrap(), 16).is_err());
    }
}

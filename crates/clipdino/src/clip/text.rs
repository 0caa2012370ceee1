//! OpenCLIP text tower (`open_clip/model.py`, `CLIP.encode_text`, open_clip 3.3.0): token +
//! positional embedding, causal pre-LN transformer, `ln_final`, pooling at the EOT token (the
//! position of the largest token id, open_clip's `argmax` pooling), `@ text_projection`.
//!
//! Under the causal mask a token only sees the tokens before it, so the EOT output does not
//! depend on what follows it: a batch is cut to its longest prompt instead of the full context
//! length (exact), shorter prompts are padded with 0 after their EOT. Prompts are grouped by
//! length so that the padding stays small.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::block::{LayerNorm, ResidualAttentionBlock};
use super::fastmath;
use crate::config::{ClipConfig, TextConfig};
use crate::error::{Error, Result};
use crate::par;
use crate::weights::{Stored, Vb};

/// Prompts per forward chunk: bounds the activation memory of very large label sets.
pub const TEXT_CHUNK: usize = 256;

/// `token_embedding.weight [vocab, width]`. A quantized table stays quantized: only the rows
/// of the requested ids are dequantized.
#[derive(Debug, Clone)]
enum TokenEmbedding {
    Float(Tensor),
    Quant(Arc<QTensor>),
}

impl TokenEmbedding {
    fn gather(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            TokenEmbedding::Float(t) => t.index_select(ids, 0)?.to_dtype(DType::F32)?,
            TokenEmbedding::Quant(q) => q.embedding(ids)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct TextTransformer {
    token_embedding: TokenEmbedding,
    positional_embedding: Tensor,
    blocks: Vec<ResidualAttentionBlock>,
    ln_final: LayerNorm,
    /// `text_projection [width, embed]`, applied as `x @ text_projection`.
    text_projection: QMatMul,
    cfg: TextConfig,
    embed_dim: usize,
    device: Device,
}

impl TextTransformer {
    /// `vb` points at the model root (the text tower's tensors are not prefixed upstream).
    pub fn new(vb: &Vb, cfg: &ClipConfig) -> Result<Self> {
        let t = &cfg.text;
        let name = "token_embedding.weight";
        let stored = vb.stored_tensor(name)?;
        let dims = stored.dims();
        if dims != [t.vocab_size, t.width] {
            return Err(Error::ShapeMismatch {
                name: vb.full_name(name),
                source_name: vb.store().source().to_string(),
                expected: vec![t.vocab_size, t.width],
                got: dims,
            });
        }
        let token_embedding = match stored {
            Stored::Float(x) => TokenEmbedding::Float(x.to_device(vb.device())?),
            Stored::Quant(q) => TokenEmbedding::Quant(q),
        };
        let blocks = (0..t.layers)
            .map(|i| {
                ResidualAttentionBlock::new(
                    t.width,
                    t.heads,
                    t.mlp_dim,
                    cfg.activation,
                    &vb.pp("transformer.resblocks").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_embedding,
            positional_embedding: vb.get(&[t.context_length, t.width], "positional_embedding")?,
            blocks,
            ln_final: LayerNorm::new(t.width, &vb.pp("ln_final"))?,
            text_projection: vb.matmul_right(t.width, cfg.embed_dim, "text_projection")?,
            cfg: t.clone(),
            embed_dim: cfg.embed_dim,
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encode tokenised prompts (`SOT … EOT`, unpadded, at most `context_length` ids each) to
    /// `[N, embed]` (not normalised), rows in input order.
    ///
    /// Prompts are sorted by length and run in chunks of at most `TEXT_CHUNK`, each cut to its
    /// longest prompt (see [`plan_chunks`]), so large label sets waste little on padding.
    pub fn forward(&self, tokens: &[Vec<u32>]) -> Result<Tensor> {
        // On the pool as a whole: its ≈ 20 parallel ops per block fork and join there.
        par::install(|| self.forward_on_pool(tokens))
    }

    fn forward_on_pool(&self, tokens: &[Vec<u32>]) -> Result<Tensor> {
        for (i, ids) in tokens.iter().enumerate() {
            self.check_prompt(i, ids.iter().copied(), ids.len())?;
        }
        if tokens.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.embed_dim),
                DType::F32,
                &self.device,
            )?);
        }
        let lens: Vec<usize> = tokens.iter().map(Vec::len).collect();
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| lens[i]);
        // The chunks are independent batches: they run in parallel ([`par`]), each also
        // splitting its own products.
        let chunks = plan_chunks(&order.iter().map(|&i| lens[i]).collect::<Vec<_>>());
        let outs = par::map(chunks.len(), |c| {
            let chunk: Vec<&[u32]> = order[chunks[c].clone()]
                .iter()
                .map(|&i| tokens[i].as_slice())
                .collect();
            self.forward_chunk(&chunk)
        });
        let sorted = Tensor::cat(&outs.into_iter().collect::<Result<Vec<_>>>()?, 0)?;
        // Row k of `sorted` is prompt order[k]: invert the permutation.
        let mut inverse = vec![0u32; order.len()];
        for (k, &i) in order.iter().enumerate() {
            inverse[i] = k as u32;
        }
        let inverse = Tensor::from_vec(inverse, order.len(), &self.device)?;
        Ok(sorted.index_select(&inverse, 0)?)
    }

    fn check_prompt(&self, i: usize, ids: impl Iterator<Item = u32>, len: usize) -> Result<()> {
        if len == 0 || len > self.cfg.context_length {
            return Err(Error::invalid(
                "tokens",
                format!(
                    "prompt {i} has {len} tokens, expected 1..={}",
                    self.cfg.context_length
                ),
            ));
        }
        for id in ids {
            if id as usize >= self.cfg.vocab_size {
                return Err(Error::invalid(
                    "tokens",
                    format!(
                        "prompt {i} holds token id {id}, vocabulary size is {}",
                        self.cfg.vocab_size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Same result as [`Self::forward`] on the prompts `prefixes[p] ++ suffix` for each
    /// `(p, suffix)` of `prompts`, but every prefix runs once: under the causal mask its hidden
    /// states do not depend on what follows, so the suffixes attend to cached per-layer keys and
    /// values of their prefix. Zero-shot prompts (`"a photo of a {}."` for many labels) share
    /// most of their tokens, so this saves most of the work of [`ClipModel::embed_labels`].
    ///
    /// Each suffix must be non-empty and hold the prompt's pooling position (its largest id,
    /// EOT), i.e. no prefix token may be ≥ the prompt's EOT.
    ///
    /// [`ClipModel::embed_labels`]: super::ClipModel::embed_labels
    pub fn forward_shared_prefixes(
        &self,
        prefixes: &[Vec<u32>],
        prompts: &[(usize, Vec<u32>)],
    ) -> Result<Tensor> {
        par::install(|| self.shared_prefixes_on_pool(prefixes, prompts))
    }

    fn shared_prefixes_on_pool(
        &self,
        prefixes: &[Vec<u32>],
        prompts: &[(usize, Vec<u32>)],
    ) -> Result<Tensor> {
        for (i, (p, suffix)) in prompts.iter().enumerate() {
            let prefix = prefixes.get(*p).ok_or_else(|| {
                Error::invalid(
                    "prefix",
                    format!("prompt {i} uses prefix {p} of {}", prefixes.len()),
                )
            })?;
            let full = prefix.iter().chain(suffix.iter()).copied();
            self.check_prompt(i, full, prefix.len() + suffix.len())?;
            let suffix_max = suffix.iter().copied().max();
            let prefix_max = prefix.iter().copied().max();
            match (suffix_max, prefix_max) {
                (None, _) => {
                    return Err(Error::invalid(
                        "prefix",
                        format!("prompt {i} has an empty suffix"),
                    ))
                }
                (Some(sm), Some(pm)) if pm >= sm => {
                    return Err(Error::invalid(
                        "prefix",
                        format!("prompt {i}: its pooling token (largest id) lies in the prefix"),
                    ))
                }
                _ => {}
            }
        }
        if prompts.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.embed_dim),
                DType::F32,
                &self.device,
            )?);
        }
        let cache = self.run_prefixes(prefixes)?;
        let lens: Vec<usize> = prompts.iter().map(|(_, s)| s.len()).collect();
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| lens[i]);
        let chunks = plan_chunks(&order.iter().map(|&i| lens[i]).collect::<Vec<_>>());
        let outs = par::map(chunks.len(), |c| {
            let chunk: Vec<(usize, &[u32])> = order[chunks[c].clone()]
                .iter()
                .map(|&i| (prompts[i].0, prompts[i].1.as_slice()))
                .collect();
            self.forward_suffix_chunk(&cache, &chunk)
        });
        let sorted = Tensor::cat(&outs.into_iter().collect::<Result<Vec<_>>>()?, 0)?;
        let mut inverse = vec![0u32; order.len()];
        for (k, &i) in order.iter().enumerate() {
            inverse[i] = k as u32;
        }
        let inverse = Tensor::from_vec(inverse, order.len(), &self.device)?;
        Ok(sorted.index_select(&inverse, 0)?)
    }

    /// Runs all prefixes as one causal batch (padded after their end, which no real position
    /// sees) and keeps every layer's keys and values.
    fn run_prefixes(&self, prefixes: &[Vec<u32>]) -> Result<PrefixCache> {
        let n = prefixes.len();
        let p = prefixes.iter().map(Vec::len).max().unwrap_or(0);
        let lens = prefixes.iter().map(Vec::len).collect();
        if p == 0 {
            return Ok(PrefixCache {
                k: vec![],
                v: vec![],
                lens,
                p,
            });
        }
        let width = self.cfg.width;
        let mut ids = vec![0u32; n * p];
        for (i, pre) in prefixes.iter().enumerate() {
            ids[i * p..i * p + pre.len()].copy_from_slice(pre);
        }
        let ids = Tensor::from_vec(ids, n * p, &self.device)?;
        let x = self.token_embedding.gather(&ids)?.reshape((n, p, width))?;
        let mut x = x.broadcast_add(&self.positional_embedding.narrow(0, 0, p)?)?;
        let mask = causal_mask(p, &self.device)?;
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        let last = self.blocks.len().saturating_sub(1);
        for (l, block) in self.blocks.iter().enumerate() {
            let qkv = block.attn.qkv(&block.ln_1.forward(&x)?)?;
            let (_, k, v) = block.attn.split_heads(&qkv)?;
            ks.push(k);
            vs.push(v);
            if l < last {
                let h = (&x + block.attn.attend(&qkv, p, Some(&mask))?)?;
                x = block.mlp_residual(&h)?;
            }
        }
        Ok(PrefixCache {
            k: ks,
            v: vs,
            lens,
            p,
        })
    }

    /// Suffixes `(prefix index, ids)`, each attending to its cached prefix and causally to itself.
    fn forward_suffix_chunk(
        &self,
        cache: &PrefixCache,
        rows: &[(usize, &[u32])],
    ) -> Result<Tensor> {
        let b = rows.len();
        let s = rows.iter().map(|(_, r)| r.len()).max().unwrap_or(1);
        let (p, width) = (cache.p, self.cfg.width);
        let heads = self.blocks.first().map_or(1, |blk| blk.attn.heads());
        let d = width / heads;
        let n_keys = p + s;
        let mut ids = vec![0u32; b * s];
        let mut pos = vec![0u32; b * s];
        let mut eot = Vec::with_capacity(b);
        // Additive mask [b, 1, s, p + s]: own prefix visible, prefix padding hidden, suffix causal.
        let mut mask = vec![f32::NEG_INFINITY; b * s * n_keys];
        for (i, (pi, r)) in rows.iter().enumerate() {
            let plen = cache.lens[*pi];
            ids[i * s..i * s + r.len()].copy_from_slice(r);
            for j in 0..s {
                pos[i * s + j] = (plen + j).min(self.cfg.context_length - 1) as u32;
                let m = &mut mask[(i * s + j) * n_keys..(i * s + j + 1) * n_keys];
                m[..plen].fill(0.0);
                m[p..p + j + 1].fill(0.0);
            }
            let at = r
                .iter()
                .enumerate()
                .fold(0, |best, (j, &id)| if id > r[best] { j } else { best });
            eot.push((i * s + at) as u32);
        }
        let ids = Tensor::from_vec(ids, b * s, &self.device)?;
        let pos = Tensor::from_vec(pos, b * s, &self.device)?;
        let mask = Tensor::from_vec(mask, (b, 1, s, n_keys), &self.device)?;
        let pidx: Vec<u32> = rows.iter().map(|(pi, _)| *pi as u32).collect();
        let pidx = Tensor::from_vec(pidx, b, &self.device)?;
        let n_prefixes = cache.lens.len();
        let x = self.token_embedding.gather(&ids)?;
        let mut x =
            (x + self.positional_embedding.index_select(&pos, 0)?)?.reshape((b, s, width))?;
        let scale = 1.0 / (d as f64).sqrt();
        for (l, block) in self.blocks.iter().enumerate() {
            let qkv = block.attn.qkv(&block.ln_1.forward(&x)?)?;
            let (q, k, v) = block.attn.split_heads(&qkv)?;
            let (k, v) = if p > 0 {
                let gather = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.reshape((n_prefixes, heads, p, d))?
                        .index_select(&pidx, 0)?
                        .reshape((b * heads, p, d))?)
                };
                (
                    Tensor::cat(&[&gather(&cache.k[l])?, &k], 1)?,
                    Tensor::cat(&[&gather(&cache.v[l])?, &v], 1)?,
                )
            } else {
                (k, v)
            };
            // By prompt, in parallel: each prompt's heads against its own keys and mask.
            let q = (q * scale)?;
            let per_prompt = par::map(b, |i| -> Result<Tensor> {
                let (q, k, v) = (
                    q.narrow(0, i * heads, heads)?,
                    k.narrow(0, i * heads, heads)?,
                    v.narrow(0, i * heads, heads)?,
                );
                let scores = q.matmul(&k.t()?)?.broadcast_add(&mask.get(i)?)?;
                Ok(fastmath::softmax_last_dim_(scores)?.matmul(&v)?)
            });
            let out = Tensor::cat(&per_prompt.into_iter().collect::<Result<Vec<_>>>()?, 0)?
                .reshape((b, heads, s, d))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, s, width))?;
            let h = (&x + block.attn.out_proj(&out)?)?;
            x = block.mlp_residual(&h)?;
        }
        let eot = Tensor::from_vec(eot, b, &self.device)?;
        let pooled = x.reshape((b * s, width))?.index_select(&eot, 0)?;
        let pooled = self.ln_final.forward(&pooled)?;
        Ok(self.text_projection.forward(&pooled)?)
    }

    fn forward_chunk(&self, tokens: &[&[u32]]) -> Result<Tensor> {
        let b = tokens.len();
        let t = tokens.iter().map(|p| p.len()).max().unwrap_or(1);
        let width = self.cfg.width;
        let mut ids = vec![0u32; b * t];
        let mut eot = Vec::with_capacity(b);
        for (i, p) in tokens.iter().enumerate() {
            ids[i * t..i * t + p.len()].copy_from_slice(p);
            // torch.argmax: the first position holding the largest id.
            let pos = p
                .iter()
                .enumerate()
                .fold(0, |best, (j, &id)| if id > p[best] { j } else { best });
            eot.push((i * t + pos) as u32);
        }
        let ids = Tensor::from_vec(ids, b * t, &self.device)?;
        let x = self.token_embedding.gather(&ids)?.reshape((b, t, width))?;
        let mut x = x.broadcast_add(&self.positional_embedding.narrow(0, 0, t)?)?;
        let mask = causal_mask(t, &self.device)?;
        for block in &self.blocks {
            x = block.forward(&x, Some(&mask))?;
        }
        // ln_final is per token: apply it to the pooled rows only.
        let eot = Tensor::from_vec(eot, b, &self.device)?;
        let pooled = x.reshape((b * t, width))?.index_select(&eot, 0)?;
        let pooled = self.ln_final.forward(&pooled)?;
        Ok(self.text_projection.forward(&pooled)?)
    }
}

/// Per layer, the keys and values of a batch of prompt prefixes, `[N·heads, P, head_dim]` each
/// (`P` the longest prefix; shorter ones padded after their end).
struct PrefixCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    lens: Vec<usize>,
    p: usize,
}

/// A forward pass streams every weight once, which costs about as much as this many extra token
/// rows; used to decide whether a longer prompt joins the current chunk (more padding) or starts a
/// new one (another pass).
const PASS_COST_TOKENS: usize = 64;

/// Split prompts sorted by ascending length into consecutive chunks of at most `TEXT_CHUNK`:
/// a prompt longer than the chunk's current maximum joins it only if the padding this adds to
/// the chunk's rows costs no more than a new pass. Equal lengths share a chunk unless it is full.
fn plan_chunks(sorted_lens: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for (i, &len) in sorted_lens.iter().enumerate().skip(1) {
        let n = i - start;
        let max = sorted_lens[i - 1];
        if n == TEXT_CHUNK || n * (len - max) > PASS_COST_TOKENS {
            chunks.push(start..i);
            start = i;
        }
    }
    if start < sorted_lens.len() {
        chunks.push(start..sorted_lens.len());
    }
    chunks
}

/// Additive causal mask `[t, t]`: 0 on and below the diagonal, −∞ above.
fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(m, (t, t), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn quantized_gather_matches_dequantized_rows() {
        let dev = Device::Cpu;
        let table = Tensor::randn(0f32, 1.0, (50, 64), &dev).unwrap();
        let q = Arc::new(QTensor::quantize(&table, GgmlDType::Q8_0).unwrap());
        let ids = Tensor::new(&[3u32, 0, 49, 3, 17], &dev).unwrap();
        let got = TokenEmbedding::Quant(q.clone()).gather(&ids).unwrap();
        let want = q.dequantize(&dev).unwrap().index_select(&ids, 0).unwrap();
        let d = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn chunk_plan() {
        assert!(plan_chunks(&[]).is_empty());
        assert_eq!(plan_chunks(&[5]), vec![0..1]);
        // Small batches stay together despite different lengths.
        assert_eq!(plan_chunks(&[3, 5, 8, 12, 20]), vec![0..5]);
        // Many short prompts: a much longer one starts its own pass.
        let mut lens = vec![10; 40];
        lens.extend([11, 11, 30]);
        assert_eq!(plan_chunks(&lens), vec![0..42, 42..43]);
        // Chunk size cap.
        let lens = vec![7; 2 * TEXT_CHUNK + 1];
        assert_eq!(
            plan_chunks(&lens),
            vec![
                0..TEXT_CHUNK,
                TEXT_CHUNK..2 * TEXT_CHUNK,
                2 * TEXT_CHUNK..2 * TEXT_CHUNK + 1
            ]
        );
    }

    #[test]
    fn causal_mask_layout() {
        let m = causal_mask(3, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(
            m,
            vec![
                vec![0.0, inf, inf],
                vec![0.0, 0.0, inf],
                vec![0.0, 0.0, 0.0]
            ]
        );
    }
}

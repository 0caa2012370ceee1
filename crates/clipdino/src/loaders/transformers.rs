//! The transformers layout of CLIP weights (`CLIPModel.state_dict()`, e.g.
//! `openai/clip-vit-base-patch16`'s `model.safetensors` / `pytorch_model.bin`), renamed into
//! open_clip's names so that one model code path serves both (transformers 5.x,
//! `models/clip/modeling_clip.py`; open_clip 3.3.0, `model.py` / `transformer.py`).
//!
//! | transformers | open_clip |
//! |---|---|
//! | `vision_model.embeddings.patch_embedding.weight` | `visual.conv1.weight` |
//! | `vision_model.embeddings.class_embedding` | `visual.class_embedding` |
//! | `vision_model.embeddings.position_embedding.weight` | `visual.positional_embedding` |
//! | `vision_model.pre_layrnorm.*` (sic) | `visual.ln_pre.*` |
//! | `vision_model.encoder.layers.N.*` | `visual.transformer.resblocks.N.*` |
//! | `vision_model.post_layernorm.*` | `visual.ln_post.*` |
//! | `visual_projection.weight` `[embed, width]` | `visual.proj` `[width, embed]` (kept transposed as `visual.proj_t`) |
//! | `text_model.embeddings.token_embedding.weight` | `token_embedding.weight` |
//! | `text_model.embeddings.position_embedding.weight` | `positional_embedding` |
//! | `text_model.encoder.layers.N.*` | `transformer.resblocks.N.*` |
//! | `text_model.final_layer_norm.*` | `ln_final.*` |
//! | `text_projection.weight` `[embed, width]` | `text_projection` (kept transposed as `text_projection_t`) |
//! | `logit_scale` | `logit_scale` |
//!
//! and per block `layer_norm1/2` → `ln_1/2`, `mlp.fc1/fc2` → `mlp.c_fc/c_proj`,
//! `self_attn.out_proj` → `attn.out_proj`, and the separate `self_attn.{q,k,v}_proj` weights and
//! biases stacked (q, k, v, in that order) into `attn.in_proj_weight [3w, w]` /
//! `attn.in_proj_bias [3w]`, which is how `nn.MultiheadAttention` holds them. The integer
//! `embeddings.position_ids` buffers of older checkpoints are skipped by the file readers. The
//! transformers `q_proj` is applied before the `1/√d` scaling, like open_clip's.

use candle_core::Tensor;

use super::budget::LoadMeter;
use crate::error::{Error, Result};
use crate::weights::{Stored, TensorStore};

/// The tensor whose presence marks the transformers layout.
pub const TRANSFORMERS_ANCHOR: &str = "vision_model.embeddings.patch_embedding.weight";

/// Whether `store` holds CLIP weights in the transformers layout.
pub fn is_transformers_layout(store: &TensorStore) -> bool {
    store.contains(TRANSFORMERS_ANCHOR)
        || store.contains("text_model.embeddings.token_embedding.weight")
}

/// Renames outside the blocks: (transformers, ours, required).
const RENAMES: [(&str, &str, bool); 15] = [
    (TRANSFORMERS_ANCHOR, "visual.conv1.weight", true),
    (
        "vision_model.embeddings.class_embedding",
        "visual.class_embedding",
        true,
    ),
    (
        "vision_model.embeddings.position_embedding.weight",
        "visual.positional_embedding",
        true,
    ),
    (
        "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.weight",
        true,
    ),
    ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias", true),
    (
        "vision_model.post_layernorm.weight",
        "visual.ln_post.weight",
        true,
    ),
    (
        "vision_model.post_layernorm.bias",
        "visual.ln_post.bias",
        true,
    ),
    ("visual_projection.weight", "visual.proj_t", true),
    (
        "text_model.embeddings.token_embedding.weight",
        "token_embedding.weight",
        true,
    ),
    (
        "text_model.embeddings.position_embedding.weight",
        "positional_embedding",
        true,
    ),
    (
        "text_model.final_layer_norm.weight",
        "ln_final.weight",
        true,
    ),
    ("text_model.final_layer_norm.bias", "ln_final.bias", true),
    ("text_projection.weight", "text_projection_t", true),
    ("logit_scale", "logit_scale", false),
    // Never in a CLIPModel, listed so that a stray copy is not mistaken for a missing tensor.
    ("text_model.embeddings.position_ids", "", false),
];

/// Per-block renames (the q/k/v projections are stacked separately).
const BLOCK_RENAMES: [(&str, &str); 10] = [
    ("layer_norm1.weight", "ln_1.weight"),
    ("layer_norm1.bias", "ln_1.bias"),
    ("layer_norm2.weight", "ln_2.weight"),
    ("layer_norm2.bias", "ln_2.bias"),
    ("self_attn.out_proj.weight", "attn.out_proj.weight"),
    ("self_attn.out_proj.bias", "attn.out_proj.bias"),
    ("mlp.fc1.weight", "mlp.c_fc.weight"),
    ("mlp.fc1.bias", "mlp.c_fc.bias"),
    ("mlp.fc2.weight", "mlp.c_proj.weight"),
    ("mlp.fc2.bias", "mlp.c_proj.bias"),
];

fn take(src: &mut TensorStore, name: &str) -> Result<Stored> {
    src.remove(name).ok_or_else(|| Error::MissingTensor {
        name: name.to_string(),
        source_name: src.source().to_string(),
    })
}

/// `q, k, v` (each `[w, w]` or `[w]`, same shape and dtype) stacked along the rows.
fn stack_qkv(
    src: &mut TensorStore,
    prefix: &str,
    leaf: &str,
    meter: &mut LoadMeter,
) -> Result<Stored> {
    let names: Vec<String> = ["q_proj", "k_proj", "v_proj"]
        .iter()
        .map(|p| format!("{prefix}.self_attn.{p}.{leaf}"))
        .collect();
    let mut parts: Vec<Tensor> = Vec::with_capacity(3);
    for n in &names {
        let t = match take(src, n)? {
            Stored::Float(t) => t,
            Stored::Quant(_) => {
                return Err(Error::UnsupportedDtype {
                    name: n.clone(),
                    source_name: src.source().to_string(),
                    dtype: "quantized".into(),
                })
            }
        };
        if let Some(first) = parts.first() {
            if t.dims() != first.dims() {
                return Err(Error::ShapeMismatch {
                    name: n.clone(),
                    source_name: src.source().to_string(),
                    expected: first.dims().to_vec(),
                    got: t.dims().to_vec(),
                });
            }
            if t.dtype() != first.dtype() {
                return Err(Error::UnsupportedDtype {
                    name: n.clone(),
                    source_name: src.source().to_string(),
                    dtype: format!(
                        "{:?} (q_proj is {:?}; q, k and v must share one dtype)",
                        t.dtype(),
                        first.dtype()
                    ),
                });
            }
        }
        parts.push(t);
    }
    // The stacked copy exists beside its three parts until they are dropped.
    let bytes: u64 = parts
        .iter()
        .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum();
    let what = format!("stacking {prefix}.self_attn.{{q,k,v}}_proj.{leaf}");
    meter.charge(src.source(), &what, bytes)?;
    let fused = Tensor::cat(&parts, 0)?;
    drop(parts);
    meter.release(bytes);
    Ok(Stored::Float(fused))
}

/// Number of blocks `prefix.0`, `prefix.1`, … present (by their `layer_norm1.weight`).
fn count_layers(src: &TensorStore, prefix: &str) -> usize {
    (0..)
        .take_while(|i| src.contains(&format!("{prefix}.{i}.layer_norm1.weight")))
        .count()
}

/// Rename a transformers-layout store into open_clip's names (see the module table). Every
/// tensor a `CLIPModel` holds must be present; the first missing one is named. Tensors this
/// model does not use are dropped.
pub fn from_transformers(mut src: TensorStore, meter: &mut LoadMeter) -> Result<TensorStore> {
    let mut out = TensorStore::new(src.source());
    for (from, to, required) in RENAMES {
        match src.remove(from) {
            Some(t) if !to.is_empty() => out.insert(to, t),
            Some(_) => {}
            None if required => {
                return Err(Error::MissingTensor {
                    name: from.to_string(),
                    source_name: src.source().to_string(),
                })
            }
            None => {}
        }
    }
    for (hf, ours) in [
        (
            "vision_model.encoder.layers",
            "visual.transformer.resblocks",
        ),
        ("text_model.encoder.layers", "transformer.resblocks"),
    ] {
        let layers = count_layers(&src, hf);
        if layers == 0 {
            return Err(Error::MissingTensor {
                name: format!("{hf}.0.layer_norm1.weight"),
                source_name: src.source().to_string(),
            });
        }
        for i in 0..layers {
            let (p, q) = (format!("{hf}.{i}"), format!("{ours}.{i}"));
            for (a, b) in BLOCK_RENAMES {
                let t = take(&mut src, &format!("{p}.{a}"))?;
                out.insert(format!("{q}.{b}"), t);
            }
            let w = stack_qkv(&mut src, &p, "weight", meter)?;
            out.insert(format!("{q}.attn.in_proj_weight"), w);
            let b = stack_qkv(&mut src, &p, "bias", meter)?;
            out.insert(format!("{q}.attn.in_proj_bias"), b);
        }
    }
    Ok(out)
}

/// The inverse of [`from_transformers`]: open_clip names (as [`super::random_clip_store`]
/// writes them, projections untransposed) → a `CLIPModel` state dict, `in_proj` split into
/// `q/k/v_proj` and the projections transposed into `nn.Linear` weights. Used to write random
/// weights in the transformers layout.
pub fn to_transformers(src: &TensorStore) -> Result<TensorStore> {
    let mut out = TensorStore::new(src.source());
    let get = |name: &str| -> Result<Tensor> {
        match src.get(name) {
            Some(Stored::Float(t)) => Ok(t.clone()),
            Some(Stored::Quant(q)) => Ok(q.dequantize(&candle_core::Device::Cpu)?),
            None => Err(Error::MissingTensor {
                name: name.to_string(),
                source_name: src.source().to_string(),
            }),
        }
    };
    for (hf, ours, required) in RENAMES {
        if ours.is_empty() || (!required && !src.contains(ours)) {
            continue;
        }
        let t = match ours.strip_suffix("_t") {
            // open_clip keeps `x @ proj` matrices [width, embed]; nn.Linear wants [embed, width].
            Some(plain) => get(plain)?.t()?.contiguous()?,
            None => get(ours)?,
        };
        out.insert(hf, Stored::Float(t));
    }
    for (hf, ours) in [
        (
            "vision_model.encoder.layers",
            "visual.transformer.resblocks",
        ),
        ("text_model.encoder.layers", "transformer.resblocks"),
    ] {
        let layers = (0..)
            .take_while(|i| src.contains(&format!("{ours}.{i}.ln_1.weight")))
            .count();
        for i in 0..layers {
            let (p, q) = (format!("{hf}.{i}"), format!("{ours}.{i}"));
            for (a, b) in BLOCK_RENAMES {
                out.insert(format!("{p}.{a}"), Stored::Float(get(&format!("{q}.{b}"))?));
            }
            for (leaf, fused) in [("weight", "in_proj_weight"), ("bias", "in_proj_bias")] {
                let t = get(&format!("{q}.attn.{fused}"))?;
                let w = t.dim(0)? / 3;
                for (k, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    let part = t.narrow(0, k * w, w)?.contiguous()?;
                    out.insert(format!("{p}.self_attn.{proj}.{leaf}"), Stored::Float(part));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loaders::LoadBudget;
    use candle_core::Device;

    fn t(shape: &[usize], start: f32) -> Stored {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| start + i as f32).collect();
        Stored::Float(Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
    }

    fn layer(s: &mut TensorStore, p: &str, w: usize) {
        for (n, shape) in [
            ("layer_norm1.weight", vec![w]),
            ("layer_norm1.bias", vec![w]),
            ("layer_norm2.weight", vec![w]),
            ("layer_norm2.bias", vec![w]),
            ("self_attn.out_proj.weight", vec![w, w]),
            ("self_attn.out_proj.bias", vec![w]),
            ("mlp.fc1.weight", vec![4 * w, w]),
            ("mlp.fc1.bias", vec![4 * w]),
            ("mlp.fc2.weight", vec![w, 4 * w]),
            ("mlp.fc2.bias", vec![w]),
        ] {
            s.insert(format!("{p}.{n}"), t(&shape, 0.0));
        }
        for (k, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            let base = 1000.0 * k as f32;
            s.insert(format!("{p}.self_attn.{proj}.weight"), t(&[w, w], base));
            s.insert(format!("{p}.self_attn.{proj}.bias"), t(&[w], base));
        }
    }

    fn store(w: usize) -> TensorStore {
        let mut s = TensorStore::new("model.safetensors");
        for (from, _, _) in RENAMES.iter().take(13) {
            s.insert(*from, t(&[2, 2], 0.0));
        }
        layer(&mut s, "vision_model.encoder.layers.0", w);
        layer(&mut s, "text_model.encoder.layers.0", w);
        s
    }

    #[test]
    fn stacks_q_k_v_in_order_and_renames() {
        let mut m = LoadMeter::new(LoadBudget::DEFAULT);
        let out = from_transformers(store(4), &mut m).unwrap();
        let w = out
            .get("visual.transformer.resblocks.0.attn.in_proj_weight")
            .unwrap()
            .to_f32(&Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(w.len(), 12);
        // rows 0..4 from q (values from 0), 4..8 from k (from 1000), 8..12 from v (from 2000)
        assert_eq!((w[0][0], w[4][0], w[8][1]), (0.0, 1000.0, 2001.0));
        let b = out
            .get("transformer.resblocks.0.attn.in_proj_bias")
            .unwrap()
            .dims();
        assert_eq!(b, [12]);
        for n in [
            "visual.conv1.weight",
            "visual.ln_pre.bias",
            "visual.proj_t",
            "text_projection_t",
            "ln_final.weight",
            "transformer.resblocks.0.mlp.c_proj.bias",
            "visual.transformer.resblocks.0.ln_2.weight",
        ] {
            assert!(out.contains(n), "{n}");
        }
        assert!(!out.names().iter().any(|n| n.contains("self_attn")));
        assert_eq!(m.live_bytes(), 0, "the stacking scratch is given back");
    }

    #[test]
    fn writing_then_reading_the_transformers_layout_is_the_identity() {
        let cfg = crate::ClipConfig::tiny();
        let ours = crate::loaders::random_clip_store(&cfg, 3);
        let hf = to_transformers(&ours).unwrap();
        assert!(is_transformers_layout(&hf));
        assert_eq!(
            hf.dims("visual_projection.weight").unwrap(),
            [cfg.embed_dim, cfg.vision.width]
        );
        let mut m = LoadMeter::new(LoadBudget::DEFAULT);
        let back = from_transformers(hf, &mut m).unwrap();
        crate::loaders::validate_clip_store(&back, &cfg).unwrap();
        assert_eq!(back.len(), ours.len());
        for (name, t) in ours.iter() {
            let (b, want) = match back.get(name) {
                Some(b) => (
                    b.to_f32(&Device::Cpu).unwrap(),
                    t.to_f32(&Device::Cpu).unwrap(),
                ),
                None => {
                    let b = back.get(&format!("{name}_t")).expect(name);
                    let b = b.to_f32(&Device::Cpu).unwrap().t().unwrap();
                    (b, t.to_f32(&Device::Cpu).unwrap())
                }
            };
            let d = (b - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0, "{name}");
        }
    }

    #[test]
    fn errors_name_the_transformers_tensor() {
        let mut m = LoadMeter::new(LoadBudget::DEFAULT);
        let mut s = store(4);
        s.remove("text_model.encoder.layers.0.self_attn.k_proj.bias");
        let e = from_transformers(s, &mut m).unwrap_err().to_string();
        assert!(
            e.contains("text_model.encoder.layers.0.self_attn.k_proj.bias")
                && e.contains("model.safetensors"),
            "{e}"
        );
        let mut s = store(4);
        s.insert(
            "vision_model.encoder.layers.0.self_attn.v_proj.weight",
            t(&[4, 3], 0.0),
        );
        let e = from_transformers(s, &mut m).unwrap_err().to_string();
        assert!(e.contains("v_proj.weight") && e.contains("[4, 3]"), "{e}");
        let mut s = store(4);
        s.remove("vision_model.pre_layrnorm.weight");
        let e = from_transformers(s, &mut m).unwrap_err().to_string();
        assert!(e.contains("vision_model.pre_layrnorm.weight"), "{e}");
    }
}

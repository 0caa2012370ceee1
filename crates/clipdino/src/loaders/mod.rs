//! Weight loaders and writers: safetensors, torch checkpoints, and the GGUF bundle.
//!
//! Everything works on byte buffers (the browser and the CLI share one code path; the crate
//! never touches a filesystem). [`load_model_files`] takes the files a user picked, recognises
//! each by its content, and returns a [`Bundle`] whose tensors have been checked against the
//! configuration, so a wrong or incomplete file is reported at load time with the tensor at fault.
//!
//! Files may be hostile (the app loads whatever a share link names): every loader charges what
//! it allocates to one [`LoadMeter`] per model load, within a [`LoadBudget`]
//! ([`load_model_files_with`]), and checks every size a file declares before using it (see
//! [`budget`]).
//!
//! Tensor names are open_clip's (`visual.transformer.resblocks.0.attn.in_proj_weight`, …); the
//! CLIP-DINOiser head lives under `dinoiser.` (`dinoiser.obj_proj.weight`, …). CLIP weights in
//! the transformers layout (`openai/clip-vit-base-patch16`) are renamed on load ([`transformers`]).

pub mod budget;
mod gguf;
mod pickle;
mod random;
mod safetensors;
mod transformers;

pub use crate::quant::{Quant, Recipe};
pub use budget::{human_bytes, LoadBudget, LoadMeter};
pub use gguf::{
    read_gguf_bundle, read_gguf_bundle_metered, write_gguf_bundle, write_gguf_bundle_with,
    ARCHITECTURE, FORMAT_VERSION, KEY_QUANT,
};
pub use pickle::{read_torch_pickle, read_torch_pickle_metered, write_torch_pickle};
pub use random::{random_clip_store, random_head_store};
pub use safetensors::{
    read_safetensors, read_safetensors_metered, write_safetensors, write_safetensors_entries,
};
pub use transformers::{from_transformers, is_transformers_layout, to_transformers};

use crate::config::{Activation, ClipConfig, HeadConfig};
use crate::error::{Error, Result};
use crate::weights::TensorStore;

/// Prefix of the CLIP-DINOiser head tensors inside a [`Bundle`] store.
pub const HEAD_PREFIX: &str = "dinoiser.";

/// Names of the four head tensors (as in the `model_state_dict` of `last.pt`).
pub const HEAD_TENSORS: [&str; 4] = [
    "obj_proj.weight",
    "obj_proj.bias",
    "bkg_decoder.weight",
    "bkg_decoder.bias",
];

/// Open_clip's default head width, used when no `open_clip_config.json` is given.
pub const DEFAULT_HEAD_WIDTH: usize = 64;

/// Everything needed to build a model: CLIP config, optional head config, and all tensors
/// (CLIP under upstream names, the head under `dinoiser.`).
#[derive(Debug, Clone)]
pub struct Bundle {
    pub clip: ClipConfig,
    pub head: Option<HeadConfig>,
    pub store: TensorStore,
}

impl Bundle {
    /// Check the configs (bounds, head against CLIP) and that the store holds every tensor they
    /// need, with the right shapes.
    pub fn validate(&self) -> Result<()> {
        validate_clip_store(&self.store, &self.clip)?;
        if let Some(h) = &self.head {
            h.validate(&self.clip)?;
            validate_head_store(&self.store, h, HEAD_PREFIX)?;
        }
        Ok(())
    }
}

/// Why a CLIP-DINOiser head is refused on CLIP weights with activation `act` (anything but
/// OpenCLIP's exact GELU): the words of the error the loaders and [`HeadConfig::validate`] give.
///
/// The head's two convolutions were trained on the block-9 features of OpenCLIP ViT-B/16
/// `laion2b_s34b_b88k` (exact GELU). OpenAI's weights (QuickGELU) were trained separately: their
/// feature space is unrelated, so the head's patch correlations and background scores on them
/// would be numbers without meaning, and the overlay would look plausible while being wrong.
pub fn head_activation_refusal(act: Activation) -> String {
    format!(
        "the CLIP-DINOiser head was trained on OpenCLIP ViT-B/16 laion2b features (exact GELU), but these CLIP weights use {act} (OpenAI's CLIP): their features are a different space, so the head's correlations and background scores would mean nothing. Leave the head out and use the CLIP-only segmentation (MaskCLIP)"
    )
}

/// Every tensor a CLIP model with this config reads, with its upstream shape.
/// (`logit_scale` is not listed: segmentation does not use it.) Meant for a
/// [`ClipConfig::validate`]d config: sizes saturate rather than wrap, and one entry is listed per
/// layer.
pub fn expected_clip_tensors(cfg: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let v = &cfg.vision;
    let t = &cfg.text;
    let mut out: Vec<(String, Vec<usize>)> = vec![
        (
            "visual.conv1.weight".into(),
            vec![v.width, 3, v.patch_size, v.patch_size],
        ),
        ("visual.class_embedding".into(), vec![v.width]),
        (
            "visual.positional_embedding".into(),
            vec![v.positions(), v.width],
        ),
        ("visual.ln_pre.weight".into(), vec![v.width]),
        ("visual.ln_pre.bias".into(), vec![v.width]),
    ];
    let blocks =
        |out: &mut Vec<(String, Vec<usize>)>, prefix: &str, w: usize, mlp: usize, layers: usize| {
            for i in 0..layers {
                let p = format!("{prefix}.{i}");
                for (n, s) in [
                    ("ln_1.weight", vec![w]),
                    ("ln_1.bias", vec![w]),
                    ("attn.in_proj_weight", vec![w.saturating_mul(3), w]),
                    ("attn.in_proj_bias", vec![w.saturating_mul(3)]),
                    ("attn.out_proj.weight", vec![w, w]),
                    ("attn.out_proj.bias", vec![w]),
                    ("ln_2.weight", vec![w]),
                    ("ln_2.bias", vec![w]),
                    ("mlp.c_fc.weight", vec![mlp, w]),
                    ("mlp.c_fc.bias", vec![mlp]),
                    ("mlp.c_proj.weight", vec![w, mlp]),
                    ("mlp.c_proj.bias", vec![w]),
                ] {
                    out.push((format!("{p}.{n}"), s));
                }
            }
        };
    blocks(
        &mut out,
        "visual.transformer.resblocks",
        v.width,
        v.mlp_dim,
        v.layers,
    );
    out.push(("visual.ln_post.weight".into(), vec![v.width]));
    out.push(("visual.ln_post.bias".into(), vec![v.width]));
    out.push(("visual.proj".into(), vec![v.width, cfg.embed_dim]));
    out.push(("token_embedding.weight".into(), vec![t.vocab_size, t.width]));
    out.push((
        "positional_embedding".into(),
        vec![t.context_length, t.width],
    ));
    blocks(
        &mut out,
        "transformer.resblocks",
        t.width,
        t.mlp_dim,
        t.layers,
    );
    out.push(("ln_final.weight".into(), vec![t.width]));
    out.push(("ln_final.bias".into(), vec![t.width]));
    out.push(("text_projection".into(), vec![t.width, cfg.embed_dim]));
    out
}

/// Check `store` against [`expected_clip_tensors`]; the first missing or mis-shaped tensor is
/// reported by name. The bundle layouts of [`crate::weights`] are accepted too (conv1 flattened
/// to `[out, 3·p·p]`, `visual.proj_t` / `text_projection_t` transposed).
pub fn validate_clip_store(store: &TensorStore, cfg: &ClipConfig) -> Result<()> {
    cfg.validate()?;
    for (name, shape) in expected_clip_tensors(cfg) {
        let got = match store.dims(&name) {
            Some(d) => d,
            None => {
                let alt = format!("{name}_t");
                if (name == "visual.proj" || name == "text_projection") && store.contains(&alt) {
                    let d = store.dims(&alt).unwrap_or_default();
                    let want = vec![shape[1], shape[0]];
                    if d != want {
                        return Err(store.shape_err(&alt, &want, &d));
                    }
                    continue;
                }
                return Err(store.missing(&name));
            }
        };
        let flat_conv = name == "visual.conv1.weight"
            && got.len() == 2
            && got[0] == shape[0]
            && shape[1..].iter().try_fold(1usize, |a, &d| a.checked_mul(d)) == Some(got[1]);
        if got != shape && !flat_conv {
            return Err(store.shape_err(&name, &shape, &got));
        }
    }
    Ok(())
}

/// Check the four head tensors under `prefix` against `cfg`.
pub fn validate_head_store(store: &TensorStore, cfg: &HeadConfig, prefix: &str) -> Result<()> {
    let (c, p) = (cfg.in_dim, cfg.proj_dim);
    let expected: [(&str, Vec<usize>); 4] = [
        ("obj_proj.weight", vec![p, c, 3, 3]),
        ("obj_proj.bias", vec![p]),
        ("bkg_decoder.weight", vec![1, c, 1, 1]),
        ("bkg_decoder.bias", vec![1]),
    ];
    for (n, shape) in expected {
        let name = format!("{prefix}{n}");
        let got = store.dims(&name).ok_or_else(|| store.missing(&name))?;
        // A bundle may store a conv weight flattened to [out, in·k·k] (quantized head).
        let flat = shape.len() == 4 && got == [shape[0], shape[1..].iter().product()];
        if got != shape && !flat {
            return Err(store.shape_err(&name, &shape, &got));
        }
    }
    Ok(())
}

/// Find the head tensors in a flattened checkpoint: under `model_state_dict.` (the training
/// script's `last.pt`), `state_dict.`, or at top level, each possibly behind a DataParallel
/// `module.` prefix. Returns the store with the four tensors under their bare names, and its config
/// (with `layer` left at 0 for the caller to set).
fn head_from_store(all: TensorStore, source: &str) -> Result<(TensorStore, HeadConfig)> {
    let prefixes = [
        "model_state_dict.",
        "model_state_dict.module.",
        "state_dict.",
        "state_dict.module.",
        "",
        "module.",
    ];
    let prefix = prefixes
        .iter()
        .find(|p| all.contains(&format!("{p}obj_proj.weight")))
        .ok_or_else(|| Error::MissingTensor {
            name: "obj_proj.weight".into(),
            source_name: format!(
                "{source} (looked under model_state_dict, state_dict and the top level)"
            ),
        })?;
    let mut all = all;
    let mut head = TensorStore::new(source);
    for n in HEAD_TENSORS {
        let full = format!("{prefix}{n}");
        let t = all.remove(&full).ok_or_else(|| Error::MissingTensor {
            name: full.clone(),
            source_name: source.to_string(),
        })?;
        head.insert(n, t);
    }
    let w = head.dims("obj_proj.weight").unwrap_or_default();
    if w.len() != 4 || w[2] != 3 || w[3] != 3 {
        return Err(head.shape_err("obj_proj.weight", &[256, 768, 3, 3], &w));
    }
    head_proj_dim(&w, &head)?;
    let cfg = HeadConfig {
        in_dim: w[1],
        proj_dim: w[0],
        layer: 0,
    };
    validate_head_store(&head, &cfg, "")?;
    Ok((head, cfg))
}

/// The CLIP-DINOiser head from a `last.pt` checkpoint (`{'model_state_dict': {...}, ...}`) or a
/// bare state dict: `obj_proj.{weight,bias}` and `bkg_decoder.{weight,bias}`, shape-checked.
pub fn read_dinoiser_checkpoint(bytes: &[u8], source: &str) -> Result<TensorStore> {
    let all = read_torch_pickle(bytes, source)?;
    Ok(head_from_store(all, source)?.0)
}

/// The head's projection width, bounded like every config field.
fn head_proj_dim(w: &[usize], head: &TensorStore) -> Result<()> {
    if w[0] == 0 || w[0] > crate::config::MAX_HEAD_PROJ_DIM {
        return Err(Error::WrongModel {
            source_name: head.source().to_string(),
            detail: format!(
                "`obj_proj.weight` projects to {} channels (1 to {} accepted; upstream: 256)",
                w[0],
                crate::config::MAX_HEAD_PROJ_DIM
            ),
        });
    }
    Ok(())
}

/// What a file's content says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Gguf,
    TorchZip,
    Safetensors,
    Json,
}

/// Recognise a file by its first bytes (never by its name).
pub fn detect_file_kind(bytes: &[u8]) -> Option<FileKind> {
    if gguf::looks_like_gguf(bytes) {
        Some(FileKind::Gguf)
    } else if bytes.starts_with(b"PK\x03\x04") {
        Some(FileKind::TorchZip)
    } else if safetensors::looks_like_safetensors(bytes) {
        Some(FileKind::Safetensors)
    } else if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        Some(FileKind::Json)
    } else {
        None
    }
}

/// open_clip training checkpoints (`epoch_N.pt`) hold `{'state_dict': {'module.visual…'}}`:
/// strip whatever prefix sits in front of `visual.conv1.weight` from every name.
fn strip_clip_prefix(store: TensorStore) -> TensorStore {
    const ANCHOR: &str = "visual.conv1.weight";
    if store.contains(ANCHOR) {
        return store;
    }
    let prefix = match store
        .names()
        .into_iter()
        .find_map(|n| n.strip_suffix(ANCHOR))
    {
        Some(p) if p.ends_with('.') => p.to_string(),
        _ => return store,
    };
    let mut out = TensorStore::new(store.source());
    for (name, t) in store.iter() {
        if let Some(rest) = name.strip_prefix(&prefix) {
            out.insert(rest, t.clone());
        }
    }
    out
}

fn is_head_store(s: &TensorStore) -> bool {
    s.names().iter().any(|n| n.ends_with("obj_proj.weight")) && !s.contains("visual.conv1.weight")
}

/// Build a [`Bundle`] from the files a user chose: a `.gguf` bundle alone, or CLIP weights
/// (`.safetensors` or torch `.bin`) with an optional `open_clip_config.json` and an optional
/// CLIP-DINOiser checkpoint (`last.pt`). Files are recognised by content; names only label errors.
/// Without a config, the architecture is inferred from the shapes (head width 64). All files
/// together load within [`LoadBudget::DEFAULT`].
pub fn load_model_files(files: &[(String, Vec<u8>)]) -> Result<Bundle> {
    load_model_files_with(files, LoadBudget::DEFAULT)
}

/// [`load_model_files`] within `budget` (all files together).
pub fn load_model_files_with(files: &[(String, Vec<u8>)], budget: LoadBudget) -> Result<Bundle> {
    let mut meter = LoadMeter::new(budget);
    if files.is_empty() {
        return Err(Error::invalid("files", "no model files given"));
    }
    let mut gguf: Option<&(String, Vec<u8>)> = None;
    let mut config: Option<(&str, ClipConfig)> = None;
    let mut clip: Option<TensorStore> = None;
    let mut head: Option<(TensorStore, HeadConfig)> = None;
    let mut transformers_file: Option<&str> = None;
    for f in files {
        let (name, bytes) = (f.0.as_str(), f.1.as_slice());
        if bytes.is_empty() {
            return Err(Error::Truncated {
                source_name: name.to_string(),
                detail: "the file is empty".into(),
            });
        }
        let store = match detect_file_kind(bytes) {
            None => {
                return Err(Error::NotWeights {
                    source_name: name.to_string(),
                    detail: "not a GGUF bundle, safetensors file, torch checkpoint or JSON config"
                        .into(),
                })
            }
            Some(FileKind::Gguf) => {
                if files.len() > 1 {
                    return Err(Error::invalid(
                        "files",
                        format!("the GGUF bundle {name} already holds everything; give it alone"),
                    ));
                }
                gguf = Some(f);
                continue;
            }
            Some(FileKind::Json) => {
                let text = std::str::from_utf8(bytes).map_err(|_| Error::NotWeights {
                    source_name: name.to_string(),
                    detail: "JSON file is not UTF-8".into(),
                })?;
                let cfg = ClipConfig::from_json(text).map_err(|e| match e {
                    Error::Config { field, detail } => Error::Config {
                        field,
                        detail: format!("{detail} (in {name})"),
                    },
                    e => e,
                })?;
                if let Some((prev, _)) = config {
                    return Err(Error::invalid(
                        "files",
                        format!("two configs given: {prev} and {name}"),
                    ));
                }
                config = Some((name, cfg));
                continue;
            }
            Some(FileKind::TorchZip) => {
                strip_clip_prefix(read_torch_pickle_metered(bytes, name, &mut meter)?)
            }
            Some(FileKind::Safetensors) => read_safetensors_metered(bytes, name, &mut meter)?,
        };
        let store = if is_transformers_layout(&store) {
            transformers_file = Some(name);
            from_transformers(store, &mut meter)?
        } else {
            store
        };
        if is_head_store(&store) {
            if head.is_some() {
                return Err(Error::invalid(
                    "files",
                    format!("more than one CLIP-DINOiser checkpoint (also {name})"),
                ));
            }
            head = Some(head_from_store(store, name)?);
        } else {
            if let Some(prev) = &clip {
                return Err(Error::invalid(
                    "files",
                    format!("two CLIP weight files given: {} and {name}", prev.source()),
                ));
            }
            clip = Some(store);
        }
    }
    if let Some((name, bytes)) = gguf {
        return read_gguf_bundle_metered(bytes, name, &mut meter);
    }
    let store = match clip {
        Some(s) => s,
        None => {
            let what = if head.is_some() {
                "only a CLIP-DINOiser checkpoint was given; the CLIP weights (open_clip_model.safetensors or open_clip_pytorch_model.bin) are needed too"
            } else {
                "no CLIP weights among the files"
            };
            return Err(Error::invalid("files", what));
        }
    };
    let clip_cfg = match (config, transformers_file) {
        (Some((_, c)), _) => c,
        (None, Some(name)) => {
            return Err(Error::invalid(
                "files",
                format!(
                    "{name} holds CLIP weights in the transformers layout (vision_model.*, text_model.*); give its config.json too: the activation (hidden_act: quick_gelu for OpenAI's weights) and the head counts are not in the weights"
                ),
            ))
        }
        (None, None) => ClipConfig::infer(&store, DEFAULT_HEAD_WIDTH, DEFAULT_HEAD_WIDTH)?,
    };
    validate_clip_store(&store, &clip_cfg)?;
    let mut bundle_store = store;
    let head_cfg = match head {
        Some((h, mut hc)) => {
            if hc.in_dim != clip_cfg.vision.width {
                return Err(Error::WrongModel {
                    source_name: h.source().to_string(),
                    detail: format!(
                        "the CLIP-DINOiser head expects {}-wide features, the CLIP vision tower is {} wide",
                        hc.in_dim, clip_cfg.vision.width
                    ),
                });
            }
            if clip_cfg.activation != Activation::Gelu {
                return Err(Error::WrongModel {
                    source_name: h.source().to_string(),
                    detail: head_activation_refusal(clip_cfg.activation),
                });
            }
            hc.layer = clip_cfg.vision.layers.saturating_sub(3);
            bundle_store.merge(h, HEAD_PREFIX);
            Some(hc)
        }
        None => None,
    };
    let bundle = Bundle {
        clip: clip_cfg,
        head: head_cfg,
        store: bundle_store,
    };
    bundle.validate()?;
    Ok(bundle)
}

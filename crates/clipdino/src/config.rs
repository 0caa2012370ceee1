//! Architecture configuration, read from `open_clip_config.json` and/or the weight shapes,
//! so one code path serves ViT-B/16 and the small random models of the tests.
//!
//! open_clip derives the head count as `width / head_width` (`head_width` defaults to 64) and the
//! MLP width as `width * mlp_ratio` (default 4).
//!
//! A configuration can come from a file anyone wrote (a JSON config, a GGUF bundle's stored
//! config, or tensor shapes), so [`ClipConfig::validate`] bounds every field (the `MAX_*`
//! constants) and the size of the whole model, before any size is derived from it. Within those
//! bounds every product the model computes (`grid·grid + 1`, `3·width`, `vocab·width`, …) fits in
//! 32 bits, so nothing wraps on `wasm32`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::weights::TensorStore;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub patch_size: usize,
    /// Training resolution (224): the positional embedding holds `(image_size/patch)^2 + 1` rows.
    pub image_size: usize,
    pub mlp_dim: usize,
}

impl VisionConfig {
    /// Side of the pretrained patch grid (14 for ViT-B/16 at 224); 0 for a zero patch size.
    pub fn grid(&self) -> usize {
        self.image_size.checked_div(self.patch_size).unwrap_or(0)
    }

    /// Rows of the positional embedding: `grid² + 1` (the CLS token). Saturates instead of
    /// wrapping; [`ClipConfig::validate`] bounds it to at most `MAX_GRID² + 1`.
    pub fn positions(&self) -> usize {
        let g = self.grid();
        g.saturating_mul(g).saturating_add(1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub context_length: usize,
    pub vocab_size: usize,
    pub mlp_dim: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub embed_dim: usize,
    pub vision: VisionConfig,
    pub text: TextConfig,
    /// The MLP activation of both towers. Absent from bundles written before it existed, which
    /// all hold OpenCLIP (exact GELU) weights.
    #[serde(default)]
    pub activation: Activation,
}

/// The activation between `mlp.c_fc` and `mlp.c_proj` in every block of both towers.
///
/// OpenCLIP's own models use torch's exact `nn.GELU()`; OpenAI's CLIP was trained with
/// QuickGELU, `x·σ(1.702·x)` (open_clip: `quick_gelu: true` in the model config, the
/// `-quickgelu` model names; transformers: `hidden_act: "quick_gelu"`). It is read from the
/// config, never guessed from a file name: the weights alone do not tell the two apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Activation {
    /// `x·Φ(x)` with the exact (erf) normal CDF: OpenCLIP's models (CLIP-DINOiser's backbone).
    #[default]
    Gelu,
    /// `x·σ(1.702·x)`: OpenAI's CLIP weights.
    #[cfg_attr(feature = "clap", value(name = "quick_gelu"))]
    QuickGelu,
}

impl Activation {
    /// The name used in configs (`gelu`, `quick_gelu`, as transformers' `hidden_act`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::QuickGelu => "quick_gelu",
        }
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// CLIP-DINOiser head shapes. `layer` is the vision block whose `ln_2` output feeds the head
/// (L−3, i.e. 9 for a 12-block ViT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub in_dim: usize,
    pub proj_dim: usize,
    pub layer: usize,
}

impl HeadConfig {
    pub fn for_clip(cfg: &ClipConfig, proj_dim: usize) -> Self {
        Self {
            in_dim: cfg.vision.width,
            proj_dim,
            layer: cfg.vision.layers.saturating_sub(3),
        }
    }

    /// Check the head against the CLIP model it sits on: OpenCLIP (exact GELU) weights, its
    /// input the vision width, its layer a vision block, its projection width within
    /// [`MAX_HEAD_PROJ_DIM`].
    pub fn validate(&self, clip: &ClipConfig) -> Result<()> {
        if clip.activation != Activation::Gelu {
            return Err(Error::config(
                "head_config",
                crate::loaders::head_activation_refusal(clip.activation),
            ));
        }
        if self.in_dim != clip.vision.width {
            return Err(Error::config(
                "head_config.in_dim",
                format!(
                    "is {}, but the CLIP vision tower is {} wide",
                    self.in_dim, clip.vision.width
                ),
            ));
        }
        in_range(
            "head_config.proj_dim",
            self.proj_dim,
            1,
            MAX_HEAD_PROJ_DIM,
            256,
        )?;
        if self.layer >= clip.vision.layers {
            return Err(Error::config(
                "head_config.layer",
                format!(
                    "is block {}, but the vision tower has {} blocks",
                    self.layer, clip.vision.layers
                ),
            ));
        }
        Ok(())
    }
}

// --- bounds ----------------------------------------------------------------------------

/// Widest tower / embedding accepted (ViT-B/16: 768 vision, 512 text and embedding).
pub const MAX_WIDTH: usize = 4096;
/// Most blocks per tower (ViT-B/16: 12).
pub const MAX_LAYERS: usize = 64;
/// Widest MLP (ViT-B/16: 3072 vision, 2048 text).
pub const MAX_MLP_DIM: usize = 16_384;
/// Largest patch (ViT-B/16: 16).
pub const MAX_PATCH_SIZE: usize = 64;
/// Largest pretrained patch-grid side (ViT-B/16 at 224: 14), the side of
/// [`crate::limits::MAX_PATCHES`].
pub const MAX_GRID: usize = 64;
/// Longest text context (ViT-B/16: 77).
pub const MAX_CONTEXT: usize = 1024;
/// Largest vocabulary (CLIP: 49 408).
pub const MAX_VOCAB: usize = 1 << 20;
/// Widest CLIP-DINOiser projection (upstream: 256).
pub const MAX_HEAD_PROJ_DIM: usize = 4096;
/// Most bytes the CLIP tensors may take in f32, the compute form of every path: the app's whole
/// memory budget (1 GB). ViT-B/16 takes 598 MB.
pub const MAX_MODEL_F32_BYTES: u64 = 1_000_000_000;
/// Longest `open_clip_config.json` read (upstream files are about 1 kB).
pub const MAX_CONFIG_JSON_BYTES: usize = 1 << 20;

/// `value` must lie in `lo..=hi`; `typical` is ViT-B/16's value, for the message.
fn in_range(field: &str, value: usize, lo: usize, hi: usize, typical: usize) -> Result<()> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(Error::config(
            field,
            format!("is {value}; it must be from {lo} to {hi} (ViT-B/16: {typical})"),
        ))
    }
}

fn heads_divide(field: &str, width: usize, heads: usize) -> Result<()> {
    if heads == 0 || heads > width || !width.is_multiple_of(heads) {
        return Err(Error::config(
            field,
            format!("{heads} attention heads do not divide the width {width}"),
        ));
    }
    Ok(())
}

// --- open_clip_config.json -------------------------------------------------------------

#[derive(Deserialize)]
struct OcFile {
    model_cfg: Option<OcModel>,
    // Some files hold the model config at top level.
    embed_dim: Option<usize>,
    vision_cfg: Option<OcVision>,
    text_cfg: Option<OcText>,
    quick_gelu: Option<bool>,
}

#[derive(Deserialize)]
struct OcModel {
    embed_dim: usize,
    vision_cfg: OcVision,
    text_cfg: OcText,
    /// open_clip's `CLIP(quick_gelu=...)`: true for OpenAI's weights (`ViT-B-16-quickgelu`).
    #[serde(default)]
    quick_gelu: bool,
}

#[derive(Deserialize)]
struct OcVision {
    image_size: usize,
    layers: usize,
    width: usize,
    patch_size: usize,
    head_width: Option<usize>,
    mlp_ratio: Option<f64>,
}

#[derive(Deserialize)]
struct OcText {
    context_length: Option<usize>,
    vocab_size: Option<usize>,
    width: usize,
    heads: Option<usize>,
    layers: usize,
    mlp_ratio: Option<f64>,
}

/// `width · mlp_ratio` (default 4) as open_clip computes it, refusing ratios that are not finite
/// and positive or give an MLP wider than [`MAX_MLP_DIM`].
fn mlp_dim(width: usize, ratio: Option<f64>, field: &str) -> Result<usize> {
    let r = ratio.unwrap_or(4.0);
    let dim = width as f64 * r;
    if !(r.is_finite() && r > 0.0 && dim >= 1.0 && dim <= MAX_MLP_DIM as f64) {
        return Err(Error::config(
            field,
            format!("is {r}: with width {width} the MLP must be 1 to {MAX_MLP_DIM} wide"),
        ));
    }
    Ok(dim as usize)
}

fn heads_of(width: usize, head_width: usize, field: &str) -> Result<usize> {
    if head_width == 0 || !width.is_multiple_of(head_width) {
        return Err(Error::config(
            field,
            format!("width {width} is not a multiple of head width {head_width}"),
        ));
    }
    Ok(width / head_width)
}

// --- transformers config.json -----------------------------------------------------------

/// `CLIPTextConfig` fields we read; absent ones take transformers' defaults (as `from_pretrained`).
#[derive(Deserialize)]
struct HfText {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    max_position_embeddings: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
}

/// `CLIPVisionConfig` fields we read (defaults as transformers').
#[derive(Deserialize)]
struct HfVision {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    num_channels: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
}

/// A tower's sub-config: `text_config` overlaid with the older `text_config_dict`, whose values
/// transformers lets win when both are present.
fn hf_sub<T: serde::de::DeserializeOwned>(root: &serde_json::Value, key: &str) -> Result<T> {
    let mut merged = serde_json::Map::new();
    for k in [key.to_string(), format!("{key}_dict")] {
        match root.get(&k) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(m)) => merged.extend(m.clone()),
            Some(_) => {
                return Err(Error::config(
                    format!("config.json {k}"),
                    "is not an object",
                ))
            }
        }
    }
    serde_json::from_value(serde_json::Value::Object(merged))
        .map_err(|e| Error::config(format!("config.json {key}"), e.to_string()))
}

/// transformers' `hidden_act` → ours; the two towers must agree (one activation per model).
fn hf_activation(field: &str, act: Option<&str>) -> Result<Activation> {
    // transformers' CLIP configs default to "quick_gelu" (OpenAI's activation).
    match act.unwrap_or("quick_gelu") {
        "quick_gelu" => Ok(Activation::QuickGelu),
        "gelu" => Ok(Activation::Gelu),
        other => Err(Error::config(
            field,
            format!(
                "is `{other}`; CLIP weights use `quick_gelu` (OpenAI) or `gelu` (exact, OpenCLIP)"
            ),
        )),
    }
}

/// Our LayerNorms use torch's eps 1e-5, as every CLIP does.
fn hf_layer_norm_eps(field: &str, eps: Option<f64>) -> Result<()> {
    let eps = eps.unwrap_or(1e-5);
    if (eps - 1e-5).abs() > 1e-12 {
        return Err(Error::config(
            field,
            format!("is {eps}; only CLIP's 1e-5 is supported"),
        ));
    }
    Ok(())
}

impl ClipConfig {
    /// OpenCLIP `ViT-B-16` (the backbone CLIP-DINOiser was trained on).
    pub fn vit_b_16() -> Self {
        Self {
            embed_dim: 512,
            vision: VisionConfig {
                width: 768,
                layers: 12,
                heads: 12,
                patch_size: 16,
                image_size: 224,
                mlp_dim: 3072,
            },
            text: TextConfig {
                width: 512,
                layers: 12,
                heads: 8,
                context_length: 77,
                vocab_size: 49408,
                mlp_dim: 2048,
            },
            activation: Activation::Gelu,
        }
    }

    /// A tiny ViT for tests and benchmarks of the code paths (not of the speed): the shapes of
    /// `tests/fixtures/tiny` (embed 32; vision width 64, 2 heads, 4 blocks, patch 16; text width
    /// 64, 2 heads, 2 blocks) but the full 49 408-token CLIP vocabulary, so that real labels can
    /// be tokenised.
    pub fn tiny() -> Self {
        Self {
            embed_dim: 32,
            vision: VisionConfig {
                width: 64,
                layers: 4,
                heads: 2,
                patch_size: 16,
                image_size: 224,
                mlp_dim: 256,
            },
            text: TextConfig {
                width: 64,
                layers: 2,
                heads: 2,
                context_length: 77,
                vocab_size: 49408,
                mlp_dim: 256,
            },
            activation: Activation::Gelu,
        }
    }

    /// Parse an `open_clip_config.json` (hub layout `{"model_cfg": {...}}` or a bare model config).
    pub fn from_open_clip_json(json: &str) -> Result<Self> {
        if json.len() > MAX_CONFIG_JSON_BYTES {
            return Err(Error::config(
                "open_clip_config.json",
                format!(
                    "is {} bytes; a config is about 1 kB (at most {MAX_CONFIG_JSON_BYTES} bytes are read)",
                    json.len()
                ),
            ));
        }
        let f: OcFile = serde_json::from_str(json)
            .map_err(|e| Error::config("open_clip_config.json", e.to_string()))?;
        let m = match f.model_cfg {
            Some(m) => m,
            None => OcModel {
                embed_dim: f
                    .embed_dim
                    .ok_or_else(|| Error::config("embed_dim", "missing"))?,
                vision_cfg: f
                    .vision_cfg
                    .ok_or_else(|| Error::config("vision_cfg", "missing"))?,
                text_cfg: f
                    .text_cfg
                    .ok_or_else(|| Error::config("text_cfg", "missing"))?,
                quick_gelu: f.quick_gelu.unwrap_or(false),
            },
        };
        let v = m.vision_cfg;
        let t = m.text_cfg;
        // The widths first: the head count and MLP width derive from them.
        in_range("vision_cfg.width", v.width, 1, MAX_WIDTH, 768)?;
        in_range("text_cfg.width", t.width, 1, MAX_WIDTH, 512)?;
        let vheads = heads_of(v.width, v.head_width.unwrap_or(64), "vision_cfg.head_width")?;
        let theads = t.heads.unwrap_or(8);
        let cfg = Self {
            embed_dim: m.embed_dim,
            vision: VisionConfig {
                width: v.width,
                layers: v.layers,
                heads: vheads,
                patch_size: v.patch_size,
                image_size: v.image_size,
                mlp_dim: mlp_dim(v.width, v.mlp_ratio, "vision_cfg.mlp_ratio")?,
            },
            text: TextConfig {
                width: t.width,
                layers: t.layers,
                heads: theads,
                context_length: t.context_length.unwrap_or(77),
                vocab_size: t.vocab_size.unwrap_or(49408),
                mlp_dim: mlp_dim(t.width, t.mlp_ratio, "text_cfg.mlp_ratio")?,
            },
            activation: if m.quick_gelu {
                Activation::QuickGelu
            } else {
                Activation::Gelu
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse a config file of either layout: an `open_clip_config.json` (`model_cfg` or a bare
    /// `vision_cfg`/`text_cfg`) or a transformers CLIP `config.json` (`vision_config` /
    /// `text_config`), told apart by their keys.
    pub fn from_json(json: &str) -> Result<Self> {
        if json.len() > MAX_CONFIG_JSON_BYTES {
            return Self::from_open_clip_json(json);
        }
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::config("config JSON", e.to_string()))?;
        let has = |k: &str| v.get(k).is_some_and(|x| !x.is_null());
        if has("model_cfg") || has("vision_cfg") {
            Self::from_open_clip_json(json)
        } else if has("vision_config")
            || has("text_config")
            || has("vision_config_dict")
            || has("text_config_dict")
        {
            Self::from_transformers_json(json)
        } else {
            Err(Error::config(
                "config JSON",
                "is neither an open_clip_config.json (`model_cfg`) nor a transformers CLIP config.json (`vision_config`, `text_config`)",
            ))
        }
    }

    /// Parse a transformers `CLIPConfig` `config.json` (`openai/clip-vit-base-patch16`): fields
    /// absent from the file take transformers' defaults, as `CLIPConfig.from_pretrained` does
    /// (`hidden_act` defaults to `quick_gelu`, `patch_size` to 32, `projection_dim` to 512).
    pub fn from_transformers_json(json: &str) -> Result<Self> {
        if json.len() > MAX_CONFIG_JSON_BYTES {
            return Err(Error::config(
                "config.json",
                format!(
                    "is {} bytes; a config is a few kB (at most {MAX_CONFIG_JSON_BYTES} bytes are read)",
                    json.len()
                ),
            ));
        }
        let root: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::config("config.json", e.to_string()))?;
        if !root.is_object() {
            return Err(Error::config("config.json", "is not a JSON object"));
        }
        if let Some(t) = root.get("model_type").and_then(|t| t.as_str()) {
            if t != "clip" {
                return Err(Error::config(
                    "config.json model_type",
                    format!("is `{t}`; a CLIP config says `clip`"),
                ));
            }
        }
        let t: HfText = hf_sub(&root, "text_config")?;
        let v: HfVision = hf_sub(&root, "vision_config")?;
        let embed_dim = match root.get("projection_dim") {
            None | Some(serde_json::Value::Null) => 512,
            Some(x) => x.as_u64().map(|x| x as usize).ok_or_else(|| {
                Error::config("config.json projection_dim", "is not a whole number")
            })?,
        };
        let vact = hf_activation("vision_config.hidden_act", v.hidden_act.as_deref())?;
        let tact = hf_activation("text_config.hidden_act", t.hidden_act.as_deref())?;
        if vact != tact {
            return Err(Error::config(
                "text_config.hidden_act",
                format!("is `{tact}` but vision_config.hidden_act is `{vact}`; both towers must use the same activation"),
            ));
        }
        hf_layer_norm_eps("vision_config.layer_norm_eps", v.layer_norm_eps)?;
        hf_layer_norm_eps("text_config.layer_norm_eps", t.layer_norm_eps)?;
        if v.num_channels.unwrap_or(3) != 3 {
            return Err(Error::config(
                "vision_config.num_channels",
                format!("is {:?}; CLIP reads RGB (3)", v.num_channels),
            ));
        }
        let cfg = Self {
            embed_dim,
            vision: VisionConfig {
                width: v.hidden_size.unwrap_or(768),
                layers: v.num_hidden_layers.unwrap_or(12),
                heads: v.num_attention_heads.unwrap_or(12),
                patch_size: v.patch_size.unwrap_or(32),
                image_size: v.image_size.unwrap_or(224),
                mlp_dim: v.intermediate_size.unwrap_or(3072),
            },
            text: TextConfig {
                width: t.hidden_size.unwrap_or(512),
                layers: t.num_hidden_layers.unwrap_or(12),
                heads: t.num_attention_heads.unwrap_or(8),
                context_length: t.max_position_embeddings.unwrap_or(77),
                vocab_size: t.vocab_size.unwrap_or(49408),
                mlp_dim: t.intermediate_size.unwrap_or(2048),
            },
            activation: vact,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The transformers `config.json` text for this config (the fields [`Self::from_json`]
    /// reads, with the values transformers writes for CLIP).
    pub fn to_transformers_json(&self) -> String {
        let v = &self.vision;
        let t = &self.text;
        let act = self.activation.name();
        serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.embed_dim,
            "logit_scale_init_value": 2.6592,
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": t.vocab_size, "hidden_size": t.width,
                "intermediate_size": t.mlp_dim, "num_hidden_layers": t.layers,
                "num_attention_heads": t.heads, "max_position_embeddings": t.context_length,
                "hidden_act": act, "layer_norm_eps": 1e-5,
                // transformers pools at the largest token id (the end-of-text token) when
                // `eos_token_id` is 2, as in OpenAI's own configs.
                "bos_token_id": 49406, "eos_token_id": 2, "pad_token_id": 1
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": v.width, "intermediate_size": v.mlp_dim,
                "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
                "image_size": v.image_size, "patch_size": v.patch_size, "num_channels": 3,
                "hidden_act": act, "layer_norm_eps": 1e-5
            }
        })
        .to_string()
    }

    /// The `open_clip_config.json` text for this config (hub layout).
    pub fn to_open_clip_json(&self) -> String {
        let v = &self.vision;
        let t = &self.text;
        let mut json = serde_json::json!({
            "model_cfg": {
                "embed_dim": self.embed_dim,
                "vision_cfg": {
                    "image_size": v.image_size, "layers": v.layers, "width": v.width,
                    "patch_size": v.patch_size, "head_width": v.width / v.heads.max(1),
                    "mlp_ratio": v.mlp_dim as f64 / v.width.max(1) as f64,
                },
                "text_cfg": {
                    "context_length": t.context_length, "vocab_size": t.vocab_size,
                    "width": t.width, "heads": t.heads, "layers": t.layers,
                    "mlp_ratio": t.mlp_dim as f64 / t.width.max(1) as f64,
                }
            },
            "preprocess_cfg": {
                "mean": crate::config::IMAGE_MEAN, "std": crate::config::IMAGE_STD
            }
        });
        // As open_clip's `*-quickgelu.json` configs: the key only when set.
        if self.activation == Activation::QuickGelu {
            json["model_cfg"]["quick_gelu"] = true.into();
        }
        json.to_string()
    }

    /// Infer widths, depths, patch, grid, context and vocab from tensor shapes. Head counts are
    /// not visible in shapes: they are taken as `width / 64` (open_clip's default head width)
    /// unless `head_width` says otherwise. Every tensor read is checked for its number of
    /// dimensions first; the result is [`ClipConfig::validate`]d.
    pub fn infer(
        store: &TensorStore,
        vision_head_width: usize,
        text_head_width: usize,
    ) -> Result<Self> {
        Self::infer_unnamed(store, vision_head_width, text_head_width).map_err(|e| match e {
            Error::Config { field, detail } => Error::Config {
                field,
                detail: format!(
                    "{detail} (inferred from the tensor shapes of {}; give its open_clip_config.json if the guess is wrong)",
                    store.source()
                ),
            },
            e => e,
        })
    }

    fn infer_unnamed(
        store: &TensorStore,
        vision_head_width: usize,
        text_head_width: usize,
    ) -> Result<Self> {
        let dims = |n: &str, rank: usize| -> Result<Vec<usize>> {
            let d = store.dims(n).ok_or_else(|| store.missing(n))?;
            if d.len() != rank {
                return Err(Error::WrongRank {
                    name: n.to_string(),
                    source_name: store.source().to_string(),
                    expected: rank,
                    got: d,
                });
            }
            Ok(d)
        };
        let conv = dims("visual.conv1.weight", 4)?;
        let (vw, patch) = (conv[0], conv[2]);
        if conv[1] != 3 || conv[3] != patch {
            return Err(store.shape_err("visual.conv1.weight", &[vw, 3, patch, patch], &conv));
        }
        let rows = dims("visual.positional_embedding", 2)?[0];
        // Integer square root of rows − 1, checked exactly (no float rounding, no overflow).
        let cells = rows.saturating_sub(1);
        let mut grid = (cells as f64).sqrt() as usize;
        while grid.checked_mul(grid).is_none_or(|g2| g2 > cells) {
            grid -= 1;
        }
        while (grid + 1)
            .checked_mul(grid + 1)
            .is_some_and(|g2| g2 <= cells)
        {
            grid += 1;
        }
        if rows == 0 || grid * grid != cells {
            return Err(Error::config(
                "visual.positional_embedding",
                format!("{rows} rows is not a square grid + CLS"),
            ));
        }
        let image_size = grid.checked_mul(patch).ok_or_else(|| {
            Error::config(
                "visual.positional_embedding",
                format!("a {grid}×{grid} grid of {patch}-pixel patches is too large"),
            )
        })?;
        let count = |prefix: &str| {
            (0..)
                .take_while(|i| store.contains(&format!("{prefix}.{i}.ln_1.weight")))
                .count()
        };
        let vlayers = count("visual.transformer.resblocks");
        let tlayers = count("transformer.resblocks");
        let vmlp = dims("visual.transformer.resblocks.0.mlp.c_fc.weight", 2)?[0];
        let embed_dim = match dims("visual.proj", 2) {
            Ok(d) => d[1],
            Err(Error::MissingTensor { .. }) if store.contains("visual.proj_t") => {
                dims("visual.proj_t", 2)?[0]
            }
            Err(e) => return Err(e),
        };
        let tok = dims("token_embedding.weight", 2)?;
        let tpos = dims("positional_embedding", 2)?;
        let tmlp = dims("transformer.resblocks.0.mlp.c_fc.weight", 2)?[0];
        let cfg = Self {
            embed_dim,
            vision: VisionConfig {
                width: vw,
                layers: vlayers,
                heads: heads_of(vw, vision_head_width, "vision head_width")?,
                patch_size: patch,
                image_size,
                mlp_dim: vmlp,
            },
            text: TextConfig {
                width: tok[1],
                layers: tlayers,
                heads: heads_of(tok[1], text_head_width, "text head_width")?,
                context_length: tpos[0],
                vocab_size: tok[0],
                mlp_dim: tmlp,
            },
            // Shapes cannot tell QuickGELU (OpenAI) from GELU: without a config, OpenCLIP's.
            activation: Activation::Gelu,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every field against its bound (the `MAX_*` constants of this module) and the
    /// whole model against [`MAX_MODEL_F32_BYTES`]. Errors name the field and say what is
    /// allowed.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision;
        let t = &self.text;
        in_range("embed_dim", self.embed_dim, 1, MAX_WIDTH, 512)?;
        in_range("vision_cfg.width", v.width, 1, MAX_WIDTH, 768)?;
        heads_divide("vision_cfg.heads", v.width, v.heads)?;
        // The CLIP-DINOiser head reads block L−3.
        in_range("vision_cfg.layers", v.layers, 3, MAX_LAYERS, 12)?;
        in_range("vision_cfg.patch_size", v.patch_size, 1, MAX_PATCH_SIZE, 16)?;
        if !v.image_size.is_multiple_of(v.patch_size) || !(1..=MAX_GRID).contains(&v.grid()) {
            return Err(Error::config(
                "vision_cfg.image_size",
                format!(
                    "is {}; it must be 1 to {MAX_GRID} patches of {} pixels (ViT-B/16: 224)",
                    v.image_size, v.patch_size
                ),
            ));
        }
        in_range("vision_cfg.mlp_dim", v.mlp_dim, 1, MAX_MLP_DIM, 3072)?;
        in_range("text_cfg.width", t.width, 1, MAX_WIDTH, 512)?;
        heads_divide("text_cfg.heads", t.width, t.heads)?;
        in_range("text_cfg.layers", t.layers, 1, MAX_LAYERS, 12)?;
        in_range(
            "text_cfg.context_length",
            t.context_length,
            2,
            MAX_CONTEXT,
            77,
        )?;
        in_range("text_cfg.vocab_size", t.vocab_size, 3, MAX_VOCAB, 49408)?;
        in_range("text_cfg.mlp_dim", t.mlp_dim, 1, MAX_MLP_DIM, 2048)?;
        let bytes = self.f32_bytes();
        if bytes > MAX_MODEL_F32_BYTES {
            return Err(Error::config(
                "model size",
                format!(
                    "these settings describe a model of {} in f32, over the limit of {} (ViT-B/16: 598 MB)",
                    crate::loaders::human_bytes(bytes),
                    crate::loaders::human_bytes(MAX_MODEL_F32_BYTES)
                ),
            ));
        }
        Ok(())
    }

    /// Bytes of the CLIP tensors in f32 (the form every compute path builds), in `u64` with
    /// saturating products (exact for any config within the field bounds).
    pub fn f32_bytes(&self) -> u64 {
        crate::loaders::expected_clip_tensors(self)
            .iter()
            .map(|(_, d)| d.iter().fold(4u64, |a, &x| a.saturating_mul(x as u64)))
            .fold(0u64, u64::saturating_add)
    }
}

/// CLIP normalisation constants (open_clip `OPENAI_DATASET_MEAN` / `OPENAI_DATASET_STD`), with
/// upstream's digits.
#[allow(clippy::excessive_precision)]
pub const IMAGE_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const IMAGE_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_gelu_round_trips_through_both_config_layouts() {
        for act in [Activation::Gelu, Activation::QuickGelu] {
            let mut cfg = ClipConfig::vit_b_16();
            cfg.activation = act;
            let oc = cfg.to_open_clip_json();
            assert_eq!(oc.contains("quick_gelu"), act == Activation::QuickGelu);
            assert_eq!(ClipConfig::from_json(&oc).unwrap(), cfg);
            let hf = cfg.to_transformers_json();
            assert!(hf.contains(&format!("\"hidden_act\":\"{act}\"")), "{hf}");
            assert_eq!(ClipConfig::from_json(&hf).unwrap(), cfg);
            // The bundle's own serialisation (GGUF `clipdino.clip_config`).
            let json = serde_json::to_string(&cfg).unwrap();
            assert_eq!(serde_json::from_str::<ClipConfig>(&json).unwrap(), cfg);
        }
    }

    #[test]
    fn bundles_written_before_the_activation_field_read_as_gelu() {
        let mut v = serde_json::to_value(ClipConfig::tiny()).unwrap();
        v.as_object_mut().unwrap().remove("activation");
        let cfg: ClipConfig = serde_json::from_value(v).unwrap();
        assert_eq!(cfg.activation, Activation::Gelu);
    }

    #[test]
    fn open_clip_quick_gelu_key_is_read_at_either_level() {
        let bare = r#"{"embed_dim": 32, "quick_gelu": true,
            "vision_cfg": {"image_size": 224, "layers": 4, "width": 64, "patch_size": 16},
            "text_cfg": {"width": 64, "heads": 2, "layers": 2}}"#;
        let c = ClipConfig::from_json(bare).unwrap();
        assert_eq!(c.activation, Activation::QuickGelu);
        let hub = ClipConfig::tiny().to_open_clip_json();
        assert_eq!(
            ClipConfig::from_json(&hub).unwrap().activation,
            Activation::Gelu
        );
        let e = ClipConfig::from_json(
            &hub.replace("\"model_cfg\":{", "\"model_cfg\":{\"quick_gelu\":\"yes\","),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("open_clip_config.json"), "{e}");
    }

    #[test]
    fn the_head_is_refused_on_quick_gelu_weights() {
        let mut cfg = ClipConfig::tiny();
        let head = HeadConfig::for_clip(&cfg, 32);
        head.validate(&cfg).unwrap();
        cfg.activation = Activation::QuickGelu;
        let e = head.validate(&cfg).unwrap_err().to_string();
        assert!(e.contains("head_config") && e.contains("laion2b"), "{e}");
    }
}

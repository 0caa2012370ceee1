//! Architecture configuration, read from `open_clip_config.json` and/or the weight shapes,
//! so one code path serves ViT-B/16 and the small random models of the tests.
//!
//! open_clip derives the head count as `width / head_width` (`head_width` defaults to 64) and the
//! MLP width as `width * mlp_ratio` (default 4).

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
    /// Side of the pretrained patch grid (14 for ViT-B/16 at 224).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
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
}

// --- open_clip_config.json -------------------------------------------------------------

#[derive(Deserialize)]
struct OcFile {
    model_cfg: Option<OcModel>,
    // Some files hold the model config at top level.
    embed_dim: Option<usize>,
    vision_cfg: Option<OcVision>,
    text_cfg: Option<OcText>,
}

#[derive(Deserialize)]
struct OcModel {
    embed_dim: usize,
    vision_cfg: OcVision,
    text_cfg: OcText,
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

fn heads_of(width: usize, head_width: usize, field: &str) -> Result<usize> {
    if head_width == 0 || !width.is_multiple_of(head_width) {
        return Err(Error::config(
            field,
            format!("width {width} is not a multiple of head width {head_width}"),
        ));
    }
    Ok(width / head_width)
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
        }
    }

    /// Parse an `open_clip_config.json` (hub layout `{"model_cfg": {...}}` or a bare model config).
    pub fn from_open_clip_json(json: &str) -> Result<Self> {
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
            },
        };
        let v = m.vision_cfg;
        let t = m.text_cfg;
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
                mlp_dim: (v.width as f64 * v.mlp_ratio.unwrap_or(4.0)) as usize,
            },
            text: TextConfig {
                width: t.width,
                layers: t.layers,
                heads: theads,
                context_length: t.context_length.unwrap_or(77),
                vocab_size: t.vocab_size.unwrap_or(49408),
                mlp_dim: (t.width as f64 * t.mlp_ratio.unwrap_or(4.0)) as usize,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The `open_clip_config.json` text for this config (hub layout).
    pub fn to_open_clip_json(&self) -> String {
        let v = &self.vision;
        let t = &self.text;
        serde_json::json!({
            "model_cfg": {
                "embed_dim": self.embed_dim,
                "vision_cfg": {
                    "image_size": v.image_size, "layers": v.layers, "width": v.width,
                    "patch_size": v.patch_size, "head_width": v.width / v.heads,
                    "mlp_ratio": v.mlp_dim as f64 / v.width as f64,
                },
                "text_cfg": {
                    "context_length": t.context_length, "vocab_size": t.vocab_size,
                    "width": t.width, "heads": t.heads, "layers": t.layers,
                    "mlp_ratio": t.mlp_dim as f64 / t.width as f64,
                }
            },
            "preprocess_cfg": {
                "mean": crate::config::IMAGE_MEAN, "std": crate::config::IMAGE_STD
            }
        })
        .to_string()
    }

    /// Infer widths, depths, patch, grid, context and vocab from tensor shapes. Head counts are
    /// not visible in shapes: they are taken as `width / 64` (open_clip's default head width)
    /// unless `head_width` says otherwise.
    pub fn infer(
        store: &TensorStore,
        vision_head_width: usize,
        text_head_width: usize,
    ) -> Result<Self> {
        let dims = |n: &str| store.dims(n).ok_or_else(|| store.missing(n));
        let conv = dims("visual.conv1.weight")?;
        if conv.len() != 4 {
            return Err(store.shape_err("visual.conv1.weight", &[0, 3, 0, 0], &conv));
        }
        let (vw, patch) = (conv[0], conv[2]);
        let pos = dims("visual.positional_embedding")?;
        let grid = ((pos[0].saturating_sub(1)) as f64).sqrt() as usize;
        if grid * grid + 1 != pos[0] {
            return Err(Error::config(
                "visual.positional_embedding",
                format!("{} rows is not a square grid + CLS", pos[0]),
            ));
        }
        let count = |prefix: &str| {
            (0..)
                .take_while(|i| store.contains(&format!("{prefix}.{i}.ln_1.weight")))
                .count()
        };
        let vlayers = count("visual.transformer.resblocks");
        let tlayers = count("transformer.resblocks");
        let vmlp = dims("visual.transformer.resblocks.0.mlp.c_fc.weight")?[0];
        let proj =
            dims("visual.proj").or_else(|_| dims("visual.proj_t").map(|d| vec![d[1], d[0]]))?;
        let tok = dims("token_embedding.weight")?;
        let tpos = dims("positional_embedding")?;
        let tmlp = dims("transformer.resblocks.0.mlp.c_fc.weight")?[0];
        let cfg = Self {
            embed_dim: proj[1],
            vision: VisionConfig {
                width: vw,
                layers: vlayers,
                heads: heads_of(vw, vision_head_width, "vision head_width")?,
                patch_size: patch,
                image_size: grid * patch,
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
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let v = &self.vision;
        let t = &self.text;
        let checks: [(&str, bool); 8] = [
            (
                "vision_cfg.width",
                v.width > 0 && v.heads > 0 && v.width.is_multiple_of(v.heads),
            ),
            ("vision_cfg.layers", (3..=64).contains(&v.layers)),
            ("vision_cfg.patch_size", (1..=64).contains(&v.patch_size)),
            (
                "vision_cfg.image_size",
                v.image_size >= v.patch_size && v.image_size.is_multiple_of(v.patch_size),
            ),
            (
                "text_cfg.width",
                t.width > 0 && t.heads > 0 && t.width.is_multiple_of(t.heads),
            ),
            ("text_cfg.layers", (1..=64).contains(&t.layers)),
            (
                "text_cfg.context_length",
                (2..=1024).contains(&t.context_length),
            ),
            ("embed_dim", self.embed_dim > 0 && t.vocab_size > 2),
        ];
        for (field, ok) in checks {
            if !ok {
                return Err(Error::config(field, format!("invalid value in {self:?}")));
            }
        }
        Ok(())
    }
}

/// CLIP normalisation constants (open_clip `OPENAI_DATASET_MEAN` / `OPENAI_DATASET_STD`), with
/// upstream's digits.
#[allow(clippy::excessive_precision)]
pub const IMAGE_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const IMAGE_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

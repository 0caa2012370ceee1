//! `clipdino random-weights`: seeded random weights written in the exact upstream file formats
//! (`open_clip_model.safetensors`, `open_clip_pytorch_model.bin`, `open_clip_config.json` and a
//! CLIP-DINOiser `last.pt`), for benchmarks and tests on machines without the real weights.
//!
//! `--layout transformers` writes the same weights as transformers' `CLIPModel` holds them
//! (`model.safetensors`, `pytorch_model.bin`, `config.json`: the layout of
//! `openai/clip-vit-base-patch16`); `--act quick_gelu` makes them OpenAI-style (QuickGELU, recorded
//! in the config). The DINOiser head is only written for GELU weights: it is refused on
//! QuickGELU ones (see `clipdino::loaders::head_activation_refusal`).

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use clap::{Args, ValueEnum};
use clipdino::{loaders, Activation, ClipConfig, HeadConfig, TensorStore};

use crate::files::OutputDir;
use crate::progress;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Arch {
    /// OpenCLIP ViT-B/16 (the real architecture; ≈ 600 MB per weight file).
    #[value(name = "vit-b-16")]
    VitB16,
    /// A tiny ViT (width 64, 4 blocks) with the full CLIP vocabulary, for fast tests.
    Tiny,
}

/// The file layout of the CLIP weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// open_clip's state dict: `open_clip_model.safetensors`, `open_clip_pytorch_model.bin`,
    /// `open_clip_config.json`.
    #[value(name = "open_clip")]
    OpenClip,
    /// transformers' `CLIPModel`: `model.safetensors`, `pytorch_model.bin`, `config.json`.
    Transformers,
}

#[derive(Args)]
pub struct RandomWeightsArgs {
    #[arg(long, value_enum)]
    arch: Arch,
    /// File layout of the CLIP weights.
    #[arg(long, value_enum, default_value = "open_clip")]
    layout: Layout,
    /// MLP activation: `gelu` (OpenCLIP, what the DINOiser head was trained on) or
    /// `quick_gelu` (OpenAI's CLIP; no head is written).
    #[arg(long, value_enum, default_value = "gelu")]
    act: Activation,
    /// Seed of the deterministic generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (created if needed).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Config and head config of an architecture (ViT-B/16's head projects to 256 channels).
pub fn arch_configs(arch: Arch) -> (ClipConfig, HeadConfig) {
    match arch {
        Arch::VitB16 => {
            let c = ClipConfig::vit_b_16();
            let h = HeadConfig::for_clip(&c, 256);
            (c, h)
        }
        Arch::Tiny => {
            let c = ClipConfig::tiny();
            let h = HeadConfig::for_clip(&c, 32);
            (c, h)
        }
    }
}

/// Tensors of a store as (name, f32 tensor) pairs, sorted by name.
fn entries(store: &TensorStore) -> Result<Vec<(String, candle_core::Tensor)>> {
    store
        .names()
        .into_iter()
        .map(|n| {
            let s = store
                .get(n)
                .ok_or_else(|| anyhow::anyhow!("tensor {n} vanished from the store"))?;
            Ok((n.to_string(), s.to_f32(&Device::Cpu)?))
        })
        .collect()
}

/// A CLIP-DINOiser checkpoint (`last.pt`: the head's tensors under `model_state_dict`).
pub fn head_checkpoint(head: &TensorStore) -> Result<Vec<u8>> {
    Ok(loaders::write_torch_pickle(
        &entries(head)?,
        Some("model_state_dict"),
        &[("epoch", 0)],
    )?)
}

pub fn run(a: RandomWeightsArgs) -> Result<()> {
    let out = OutputDir::prepare(&a.out, "output folder")?;
    let res = (|| -> Result<Vec<(&'static str, Vec<u8>)>> {
        let (mut cfg, head_cfg) = arch_configs(a.arch);
        cfg.activation = a.act;
        let pb = progress::bar(5, "random weights");
        let clip = loaders::random_clip_store(&cfg, a.seed);
        let clip = match a.layout {
            Layout::OpenClip => clip,
            Layout::Transformers => loaders::to_transformers(&clip)?,
        };
        pb.inc(1);
        let safetensors = loaders::write_safetensors(&clip)?;
        let clip_entries = entries(&clip)?;
        pb.inc(1);
        let bin = loaders::write_torch_pickle(&clip_entries, None, &[])?;
        pb.inc(1);
        let mut files = match a.layout {
            Layout::OpenClip => vec![
                ("open_clip_model.safetensors", safetensors),
                ("open_clip_pytorch_model.bin", bin),
                (
                    "open_clip_config.json",
                    cfg.to_open_clip_json().into_bytes(),
                ),
            ],
            Layout::Transformers => vec![
                ("model.safetensors", safetensors),
                ("pytorch_model.bin", bin),
                ("config.json", cfg.to_transformers_json().into_bytes()),
            ],
        };
        if a.act == Activation::Gelu {
            let head = loaders::random_head_store(&head_cfg, a.seed.wrapping_add(1));
            files.push(("last.pt", head_checkpoint(&head)?));
        }
        pb.finish_and_clear();
        Ok(files)
    })();
    let files = match res {
        Ok(f) => f,
        Err(e) => {
            out.abandon();
            return Err(e);
        }
    };
    let dir = out.path().to_path_buf();
    let sizes: Vec<(String, usize)> = files
        .iter()
        .map(|(n, b)| (n.to_string(), b.len()))
        .collect();
    out.commit(&files)?;
    for (n, len) in sizes {
        println!(
            "{:>10}  {}",
            crate::convert::human_bytes(len as u64),
            dir.join(n).display()
        );
    }
    if a.act != Activation::Gelu {
        progress::warn(format!(
            "no last.pt: {}",
            loaders::head_activation_refusal(a.act)
        ));
    }
    Ok(())
}

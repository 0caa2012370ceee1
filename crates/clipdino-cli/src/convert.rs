//! `clipdino convert`: open_clip weights (+ config) + a CLIP-DINOiser checkpoint → one GGUF
//! bundle (optionally quantized) that the browser app loads in a single download.
//!
//! The storage of each tensor follows a recipe (`--quant`, see `clipdino::quant`): one format
//! for every matrix (`q8_0`), per-group overrides (`q4_k,attn=q5_k`), or a named recipe
//! (`default`). With `--calibrate`, the f32 model first runs on calibration photos and
//! class-name prompts, and the K-quant matrices are quantized with the mean square of each
//! input channel as rounding weights (llama.cpp's importance matrix).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use clipdino::loaders::{self, Bundle, LoadMeter, Recipe};
use clipdino::pipeline::{EncodeOptions, Segmenter};
use clipdino::quant::calib::ActivationStats;
use clipdino::templates::{ClassList, TemplateSet, CLASS_LISTS};
use clipdino::tokenizer::ClipTokenizer;
use clipdino::{ComputePath, TensorStore, Vb};

use crate::engine::{read_model_inputs, BudgetArgs};
use crate::eval::list_images;
use crate::files;
use crate::photo;
use crate::progress;

#[derive(Args)]
pub struct ConvertArgs {
    /// CLIP weights: open_clip's `open_clip_model.safetensors` / `open_clip_pytorch_model.bin`,
    /// or transformers' `model.safetensors` / `pytorch_model.bin` (`openai/clip-vit-base-patch16`).
    #[arg(long, value_name = "FILE")]
    clip: PathBuf,
    /// `open_clip_config.json`, or transformers' `config.json` (required for that layout). It says
    /// the activation (QuickGELU for OpenAI's weights). Default: the architecture is inferred
    /// from the weight shapes, with OpenCLIP's exact GELU.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// CLIP-DINOiser checkpoint `last.pt` (without it the bundle supports MaskCLIP mode only).
    #[arg(long, value_name = "FILE")]
    head: Option<PathBuf>,
    /// Storage recipe: one format for every matrix (f32, f16, q8_0, q6_k, q5_k, q4_k, q5_1,
    /// q5_0, q4_0), a format with per-group overrides (`q4_k,attn=q5_k,vision.first=q8_0`), or
    /// a named recipe (`default`: the published bundle's). See QUANTIZATION.md.
    #[arg(long, value_parser = parse_recipe, default_value = "f32", value_name = "RECIPE")]
    quant: Recipe,
    /// Calibrate the K-quant matrices on these photos (files or folders) and class-name
    /// prompts: the f32 model runs on them first (short side 336, one pass).
    #[arg(long, value_name = "PATH", num_args = 1..)]
    calibrate: Vec<PathBuf>,
    /// Class names of the calibration prompts (with the 7 fast templates): a class file, or
    /// a built-in list (voc21, context60, coco_object, coco_stuff, ade20k, cityscapes).
    #[arg(
        long,
        value_name = "LIST|FILE",
        default_value = "ade20k",
        requires = "calibrate"
    )]
    calibrate_classes: String,
    /// Output GGUF file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    budget: BudgetArgs,
}

fn parse_recipe(s: &str) -> std::result::Result<Recipe, String> {
    s.parse::<Recipe>().map_err(|e| e.to_string())
}

/// Runs the f32 model on the calibration photos and prompts, recording every linear layer's
/// inputs.
fn calibrate(bundle: &Bundle, images: &[PathBuf], classes: &str) -> Result<ActivationStats> {
    let names: Vec<String> = match ClassList::by_id(classes) {
        Some(c) => c.names().into_iter().map(String::from).collect(),
        None => {
            let p = PathBuf::from(classes);
            if !p.is_file() {
                let ids: Vec<&str> = CLASS_LISTS.iter().map(|c| c.id).collect();
                bail!(
                    "--calibrate-classes {classes}: neither a built-in list ({}) nor a class file",
                    ids.join(", ")
                );
            }
            let text = String::from_utf8(files::read_input(&p, "class file")?)
                .map_err(|_| anyhow!("class file {classes} is not UTF-8 text"))?;
            crate::labels::parse_class_file(&text, classes)?
        }
    };
    let mut paths = Vec::new();
    for p in images {
        if p.is_dir() {
            paths.extend(list_images(p)?);
        } else {
            paths.push(p.clone());
        }
    }
    if paths.is_empty() {
        bail!("--calibrate names no image");
    }
    let stats = Arc::new(ActivationStats::new());
    let vb = Vb::new(
        Arc::new(bundle.store.clone()),
        candle_core::Device::Cpu,
        ComputePath::F32,
    )
    .with_calibration(stats.clone());
    let seg = Segmenter::new(&vb, &bundle.clip, bundle.head.as_ref())?;
    let pb = progress::bar(paths.len() as u64 + 1, "calibrating");
    for p in &paths {
        let img = photo::load_image(p)?;
        let x = photo::image_to_tensor(&img)?;
        seg.encode_image(&x, &EncodeOptions::balanced(), &mut |_| {})?;
        pb.inc(1);
    }
    let tok = ClipTokenizer::embedded()?;
    let vocab = bundle.clip.text.vocab_size;
    if vocab >= tok.vocab_size() {
        seg.clip.embed_labels(&tok, &names, TemplateSet::Fast)?;
    } else {
        progress::warn(format!(
            "the text tower's vocabulary has {vocab} tokens, fewer than the CLIP tokenizer's: its layers are not calibrated"
        ));
    }
    pb.finish_and_clear();
    drop((seg, vb));
    Arc::try_unwrap(stats).map_err(|_| anyhow!("calibration statistics still in use"))
}

pub use clipdino::loaders::human_bytes;

/// Tensor count and storage bytes per stored dtype.
pub fn dtype_breakdown(store: &TensorStore) -> BTreeMap<String, (usize, u64)> {
    let mut m: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (_, s) in store.iter() {
        let e = m.entry(s.dtype_name()).or_default();
        e.0 += 1;
        e.1 += s.storage_bytes() as u64;
    }
    m
}

pub fn run(a: ConvertArgs) -> Result<()> {
    files::check_writable_file(&a.out, "output file")?;
    let budget = a.budget.budget();
    let inputs = read_model_inputs(
        Some(&a.clip),
        a.config.as_deref(),
        a.head.as_deref(),
        &budget,
    )?;
    let input_bytes: u64 = inputs.iter().map(|(_, b)| b.len() as u64).sum();
    let sizes: Vec<(String, u64)> = inputs
        .iter()
        .map(|(n, b)| (n.clone(), b.len() as u64))
        .collect();

    let sp = progress::spinner("reading weights");
    let bundle = loaders::load_model_files_with(&inputs, budget)?;
    drop(inputs);
    sp.finish_and_clear();
    let stats = if a.calibrate.is_empty() {
        None
    } else {
        Some(calibrate(&bundle, &a.calibrate, &a.calibrate_classes)?)
    };
    let sp = progress::spinner(format!("writing {}", a.quant));
    let bytes = loaders::write_gguf_bundle_with(&bundle, &a.quant, stats.as_ref())?;
    // Read the result back: proves the bundle loads and gives the real per-dtype sizes.
    sp.set_message("checking the bundle");
    let out_name = a.out.display().to_string();
    let check = loaders::read_gguf_bundle_metered(&bytes, &out_name, &mut LoadMeter::new(budget))
        .map_err(|e| anyhow!("the written bundle does not read back: {e}"))?;
    sp.finish_and_clear();
    files::write_atomic(&a.out, &bytes, "output file")?;

    for (n, s) in &sizes {
        println!("input   {:>10}  {n}", human_bytes(*s));
    }
    println!(
        "output  {:>10}  {}  ({}, {:.1}% of the input, {} tensors)",
        human_bytes(bytes.len() as u64),
        out_name,
        a.quant,
        100.0 * bytes.len() as f64 / input_bytes.max(1) as f64,
        check.store.len()
    );
    for (dt, (count, b)) in dtype_breakdown(&check.store) {
        println!("  {dt:<6} {count:>4} tensors  {:>10}", human_bytes(b));
    }
    println!("  activation {}", check.clip.activation);
    if a.config.is_none() {
        progress::warn(
            "no --config: the activation was taken as exact GELU (OpenCLIP); OpenAI's weights need their config (quick_gelu), or every feature is wrong",
        );
    }
    if check.head.is_none() {
        progress::warn(
            "no DINOiser head (--head last.pt) in the bundle: it supports --mode maskclip only",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(598_600_000), "598.6 MB");
    }
}

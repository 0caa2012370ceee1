//! `clipdino bench`: the benchmark steps of `crates/clipdino-bench-web` — the very code the
//! browser runs in `bench/` — natively, on the same photo and weight files: weight parsing,
//! image encoding, the image tower alone, label embeddings (1 and 10 labels, 7 and 80 templates),
//! the DINOiser head, segmentation for cached labels, K-Means, an op-level profile of the tower
//! (the model's own forward pass with its timing hook on) and kernel micro-benchmarks. Each step
//! reports the median of its timed runs after one warm-up run.
//!
//! Weight files the plan names and `--weights` does not hold are generated in memory: random
//! ViT-B/16 weights with seed 0, what `clipdino random-weights --arch vit-b-16` and `clipdino
//! convert` write (same shapes, so the same cost as the real weights).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use clipdino::loaders::{self, Bundle, Quant};
use clipdino_bench_web::suite::{self, files, PlanKind, Step, Suite};
use image::RgbImage;
use serde_json::{json, Value};

use crate::files as cli_files;
use crate::photo as cli_photo;
use crate::progress;
use crate::random_weights::{arch_configs, head_checkpoint, Arch};

#[derive(Args)]
pub struct BenchArgs {
    /// Which steps: `compare` (f32 and integer compute side by side at 448×448, the app's path,
    /// kernels), `smoke` (one quick run of each step), `profile`, `kernels`, `memory` or `full`
    /// (everything, as in BENCHMARKS.md), `methods` (ClearCLIP / NACLIP / SCLIP switches and
    /// PAMR at 336 and 448).
    #[arg(long, default_value = "compare", value_parser = parse_plan, value_name = "PLAN")]
    plan: PlanKind,
    /// Timed runs per step (the median is reported), after one warm-up run.
    #[arg(long, default_value_t = 5, value_name = "N")]
    runs: usize,
    /// Folder with the weight files the plan loads: `open_clip_model.safetensors`,
    /// `open_clip_config.json`, `last.pt`, `clip-dinoiser-<quant>.gguf` (bench/run.sh writes
    /// them). Missing ones are generated in memory from random ViT-B/16 weights.
    #[arg(long, value_name = "DIR")]
    weights: Option<PathBuf>,
    /// The photo (default: a synthetic 640×427 image).
    #[arg(long, value_name = "FILE", conflicts_with = "rgb")]
    photo: Option<PathBuf>,
    /// The photo as packed RGB bytes (`height · width · 3`), as bench/run.sh passes it to the
    /// browser run too.
    #[arg(long, value_name = "FILE", requires_all = ["width", "height"])]
    rgb: Option<PathBuf>,
    /// Width of the `--rgb` photo.
    #[arg(long, value_name = "PX", requires = "rgb")]
    width: Option<usize>,
    /// Height of the `--rgb` photo.
    #[arg(long, value_name = "PX", requires = "rgb")]
    height: Option<usize>,
    /// Write every result as one JSON document to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print that JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Write each tower step's normalised input here as raw little-endian f32
    /// (`tower_<H>x<W>.f32`, for the ONNX peer of bench/run.sh).
    #[arg(long, value_name = "DIR")]
    dump_inputs: Option<PathBuf>,
}

fn parse_plan(s: &str) -> std::result::Result<PlanKind, String> {
    serde_json::from_value(json!(s)).map_err(|_| {
        format!("`{s}` is not a plan (compare, smoke, profile, kernels, memory, methods or full)")
    })
}

/// A deterministic, textured test image (smooth gradients plus stripes).
fn test_image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as f32 / w as f32, y as f32 / h as f32);
        let s = ((x * 23.0).sin() * (y * 17.0).cos() * 0.5 + 0.5) * 255.0;
        image::Rgb([(x * 255.0) as u8, (y * 255.0) as u8, s as u8])
    })
}

fn photo(a: &BenchArgs) -> Result<(Vec<u8>, usize, usize)> {
    if let (Some(p), Some(w), Some(h)) = (&a.rgb, a.width, a.height) {
        return Ok((cli_files::read_input(p, "photo")?, w, h));
    }
    let img = match &a.photo {
        Some(p) => cli_photo::load_image(p)?,
        None => test_image(640, 427),
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok((img.into_raw(), w, h))
}

/// Random ViT-B/16 weights (seed 0; the head with seed 1, as `random-weights` does) as the file
/// `name` of the plan.
fn generate(name: &str) -> Result<Vec<u8>> {
    let (clip, head) = arch_configs(Arch::VitB16);
    let sp = progress::spinner(format!("random ViT-B/16 weights: {name}"));
    let bytes = match name {
        files::SAFETENSORS => loaders::write_safetensors(&loaders::random_clip_store(&clip, 0))?,
        files::CONFIG => clip.to_open_clip_json().into_bytes(),
        files::HEAD => head_checkpoint(&loaders::random_head_store(&head, 1))?,
        _ => {
            let quant = name
                .strip_prefix("clip-dinoiser-")
                .and_then(|n| n.strip_suffix(".gguf"))
                .and_then(|q| q.parse::<Quant>().ok())
                .with_context(|| format!("the plan names {name}, which cannot be generated"))?;
            let mut store = loaders::random_clip_store(&clip, 0);
            store.merge(loaders::random_head_store(&head, 1), "dinoiser.");
            let bundle = Bundle {
                clip,
                head: Some(head),
                store,
            };
            loaders::write_gguf_bundle(&bundle, quant)?
        }
    };
    sp.finish_and_clear();
    Ok(bytes)
}

/// The weight file `name`: from `--weights`, or generated.
fn weight_file(a: &BenchArgs, name: &str) -> Result<(Vec<u8>, bool)> {
    if let Some(dir) = &a.weights {
        let p = dir.join(name);
        if p.exists() {
            return Ok((cli_files::read_input(&p, "weights file")?, false));
        }
    }
    Ok((generate(name)?, true))
}

/// Write the tower input of `step` (a `tower` step) to `dir`.
fn dump_input(s: &Suite, step: &Step, dir: &std::path::Path) -> Result<()> {
    let (Step::Tower { preset, .. }, Some(m)) = (step, &s.model) else {
        return Ok(());
    };
    let x = s.tower_input(*preset, m.seg.clip_cfg.vision.patch_size)?;
    let (_, _, h, w) = x.dims4()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    cli_files::write_atomic(
        &dir.join(format!("tower_{h}x{w}.f32")),
        &bytes,
        "tower input",
    )
}

/// The median of a step's timed runs, when it has one.
fn median(r: &Value) -> Option<f64> {
    r["median_ms"].as_f64().filter(|m| m.is_finite())
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if let Some(dir) = &a.weights {
        if !dir.is_dir() {
            bail!("--weights {}: no such folder", dir.display());
        }
    }
    if let Some(out) = &a.out {
        cli_files::check_writable_file(out, "output file")?;
    }
    let (rgb, width, height) = photo(&a)?;
    let mut s = Suite::new(suite::photo_tensor(&rgb, width, height)?)?;
    drop(rgb);
    let steps = suite::plan(a.plan, a.runs);
    let mut results: Vec<Value> = Vec::new();
    let mut generated = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if let Step::Load { files, .. } = step {
            for f in files {
                let (bytes, made) = weight_file(&a, f)?;
                if made {
                    generated.push(f.clone());
                }
                s.add_file(f.clone(), bytes);
            }
        }
        if let Some(dir) = &a.dump_inputs {
            dump_input(&s, step, dir)?;
        }
        let t = Instant::now();
        let r = s
            .run(step)
            .with_context(|| format!("step {} of {} ({})", i + 1, steps.len(), step.title()))?;
        progress::clear();
        eprintln!(
            "[native] {:>3}/{} {:<44} {:>10.1} ms{}",
            i + 1,
            steps.len(),
            step.title(),
            t.elapsed().as_secs_f64() * 1e3,
            median(&r)
                .map(|m| format!(" (median {m:.1} ms)"))
                .unwrap_or_default()
        );
        results.push(r);
    }
    let doc = json!({
        "target": "native",
        "arch": std::env::consts::ARCH,
        "candle_threads": candle_core::utils::get_num_threads(),
        "rayon_num_threads_env": std::env::var("RAYON_NUM_THREADS").ok(),
        "avx": candle_core::utils::with_avx(),
        "runs": a.runs,
        "plan": a.plan,
        "generated_weights": generated,
        "steps": results,
    });
    let text = serde_json::to_string_pretty(&doc)?;
    if let Some(out) = &a.out {
        cli_files::write_atomic(out, text.as_bytes(), "output file")?;
    }
    if a.json {
        println!("{text}");
        return Ok(());
    }
    let threads = candle_core::utils::get_num_threads();
    println!(
        "plan {}: median of {} run{} per step, {threads} thread{}{}",
        json!(a.plan).as_str().unwrap_or_default(),
        a.runs,
        if a.runs == 1 { "" } else { "s" },
        if threads == 1 { "" } else { "s" },
        if generated.is_empty() {
            String::new()
        } else {
            format!("; random ViT-B/16 weights for {}", generated.join(", "))
        }
    );
    println!("{:<48}{:>12}", "step", "median ms");
    for (step, r) in steps.iter().zip(&results) {
        // The kernel step reports a median per kernel (in the JSON), not one for the step.
        let ms = median(r).map_or("-".to_string(), |m| format!("{m:.1}"));
        println!("{:<48}{ms:>12}", step.title());
    }
    Ok(())
}

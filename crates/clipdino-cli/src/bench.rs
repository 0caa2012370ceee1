//! `clipdino bench`: median wall-clock time of each stage — model load, label encoding (1 and 10
//! labels, 7 and 80 templates), image encoding, the DINOiser head alone, segmentation and
//! K-Means at several image sizes. Without a model it generates random ViT-B/16 weights in
//! memory (same shapes, so the same cost as the real weights).

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use clipdino::kmeans::{self, KMeansOptions};
use clipdino::loaders::{self, Bundle};
use clipdino::pipeline::{EncodeOptions, FeatureKind, Mode, SegmentOptions};
use clipdino::templates::TemplateSet;
use clipdino::{clip, ClipConfig, HeadConfig};
use image::RgbImage;

use crate::engine::{Compute, Engine, ModelArgs};
use crate::photo;
use crate::progress;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Square image sides to time, comma-separated.
    #[arg(
        long,
        default_value = "224,336,448",
        value_delimiter = ',',
        value_name = "PX,.."
    )]
    sizes: Vec<usize>,
    /// Timed runs per measurement (the median is reported), after one warm-up run.
    #[arg(long, default_value_t = 5, value_name = "N")]
    runs: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

const LABELS10: [&str; 10] = [
    "person",
    "dog",
    "cat",
    "car",
    "tree",
    "sky",
    "road",
    "building",
    "grass",
    "background",
];

/// Median milliseconds of `runs` calls of `f` after one warm-up call.
fn time_ms<T>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?;
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(f()?);
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Ok(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

/// A deterministic, textured test image (smooth gradients plus stripes).
fn test_image(side: usize) -> RgbImage {
    RgbImage::from_fn(side as u32, side as u32, |x, y| {
        let (x, y) = (x as f32 / side as f32, y as f32 / side as f32);
        let s = ((x * 23.0).sin() * (y * 17.0).cos() * 0.5 + 0.5) * 255.0;
        image::Rgb([(x * 255.0) as u8, (y * 255.0) as u8, s as u8])
    })
}

fn random_vit_b_16() -> Result<Bundle> {
    let clip = ClipConfig::vit_b_16();
    let head = HeadConfig::for_clip(&clip, 256);
    let mut store = loaders::random_clip_store(&clip, 0);
    store.merge(loaders::random_head_store(&head, 1), "dinoiser.");
    Ok(Bundle {
        clip,
        head: Some(head),
        store,
    })
}

struct SizeRow {
    size: usize,
    grid: usize,
    encode_ms: f64,
    head_ms: Option<f64>,
    segment_ms: f64,
    kmeans_ms: f64,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if a.sizes.is_empty() || a.sizes.iter().any(|&s| s == 0 || s > 1024) {
        bail!("--sizes must be image sides between 1 and 1024 px");
    }
    let (engine, weights, gen_s) = if a.model.given() {
        (
            Engine::load(&a.model)?,
            a.model
                .model
                .clone()
                .or(a.model.clip.clone())
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            None,
        )
    } else {
        let sp = progress::spinner("random ViT-B/16 weights");
        let t = Instant::now();
        let bundle = random_vit_b_16()?;
        let gen = t.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let e = Engine::from_bundle(
            bundle,
            a.model.compute,
            "random ViT-B/16 weights".into(),
            t0,
        )?;
        sp.finish_and_clear();
        (
            e,
            "random ViT-B/16 weights (in memory)".to_string(),
            Some(gen),
        )
    };
    let seg = &engine.segmenter;
    let has_head = seg.has_head();
    let total = 4 + a.sizes.len() as u64 * 4;
    let pb = progress::bar(total, "benchmark");

    // Label encoding.
    let mut label_rows = Vec::new();
    for n in [1usize, 10] {
        for (set, name) in [(TemplateSet::Fast, "fast"), (TemplateSet::Full, "full")] {
            let labels: Vec<String> = LABELS10[..n].iter().map(|s| s.to_string()).collect();
            let ms = time_ms(a.runs, || engine.embed_labels(&labels, set))?;
            label_rows.push((n, name, set.templates().len(), ms));
            pb.inc(1);
        }
    }
    let labels10: Vec<String> = LABELS10.iter().map(|s| s.to_string()).collect();
    let emb = engine.embed_labels(&labels10, TemplateSet::Fast)?;

    let mut rows = Vec::new();
    for &size in &a.sizes {
        let img = test_image(size);
        let opts = EncodeOptions {
            short_side: Some(size),
            window: None,
        };
        let encode_ms = time_ms(a.runs, || engine.encode(&img, &opts, false))?;
        pb.inc(1);
        let feats = engine.encode(&img, &opts, false)?.features;
        let head_ms = match &seg.head {
            Some(h) => {
                let x = clip::preprocess(
                    &photo::image_to_tensor(&img)?,
                    seg.clip_cfg.vision.patch_size,
                )?;
                let out = seg
                    .clip
                    .vision
                    .forward(&x, seg.head_cfg.layer, &mut |_, _| {})?;
                Some(time_ms(a.runs, || {
                    Ok((h.refine(&out.dense, &out.inter)?, h.background(&out.inter)?))
                })?)
            }
            None => None,
        };
        pb.inc(1);
        let sopts = SegmentOptions {
            mode: if has_head {
                Mode::Dinoiser
            } else {
                Mode::MaskClip
            },
            background: Some(LABELS10.len() - 1),
            output_size: None,
        };
        let segment_ms = time_ms(a.runs, || engine.segment(&feats, &emb, &sopts))?;
        pb.inc(1);
        let kind = if has_head {
            FeatureKind::Refined
        } else {
            FeatureKind::Raw
        };
        let grid = feats.patch_grid(kind)?;
        let kmeans_ms = time_ms(a.runs, || {
            Ok(kmeans::kmeans_tensor(&grid, &KMeansOptions::new(8))?)
        })?;
        pb.inc(1);
        rows.push(SizeRow {
            size,
            grid: size.div_ceil(seg.clip_cfg.vision.patch_size),
            encode_ms,
            head_ms,
            segment_ms,
            kmeans_ms,
        });
    }
    pb.finish_and_clear();

    let threads = candle_core::utils::get_num_threads();
    if a.json {
        let j = serde_json::json!({
            "weights": weights,
            "runs": a.runs,
            "threads": threads,
            "random_weights_seconds": gen_s,
            "load_ms": engine.load_seconds * 1e3,
            "encode_labels": label_rows.iter().map(|(n, set, t, ms)| serde_json::json!({
                "labels": n, "templates": set, "prompts": n * t, "ms": ms,
            })).collect::<Vec<_>>(),
            "sizes": rows.iter().map(|r| serde_json::json!({
                "size": r.size, "patches": r.grid * r.grid, "encode_image_ms": r.encode_ms,
                "head_ms": r.head_ms, "segment_10_labels_ms": r.segment_ms, "kmeans_k8_ms": r.kmeans_ms,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("weights: {weights}");
    println!(
        "median of {} runs, {} thread{}, compute {}",
        a.runs,
        threads,
        if threads == 1 { "" } else { "s" },
        match a.model.compute {
            Compute::F32 => "f32",
            Compute::Quantized => "quantized",
            Compute::Int => "int",
        }
    );
    if let Some(g) = gen_s {
        println!("random weights generated in {g:.2} s");
    }
    println!(
        "load (weights → model): {:.0} ms",
        engine.load_seconds * 1e3
    );
    println!();
    let mut head = format!("{:<30}", "stage (ms)");
    for r in &rows {
        head += &format!("{:>10}", format!("{}px", r.size));
    }
    println!("{head}");
    let line = |name: &str, f: &dyn Fn(&SizeRow) -> Option<f64>| {
        let mut s = format!("{name:<30}");
        for r in &rows {
            s += &match f(r) {
                Some(v) => format!("{v:>10.1}"),
                None => format!("{:>10}", "-"),
            };
        }
        println!("{s}");
    };
    let mut patches = format!("{:<30}", "patches");
    for r in &rows {
        patches += &format!("{:>10}", format!("{0}×{0}", r.grid));
    }
    println!("{patches}");
    line("encode image (tower + head)", &|r| Some(r.encode_ms));
    line("  DINOiser head alone", &|r| r.head_ms);
    line("segment, 10 labels", &|r| Some(r.segment_ms));
    line("k-means, k = 8", &|r| Some(r.kmeans_ms));
    println!();
    println!("{:<30}{:>10}", "encode labels (ms)", "");
    for (n, set, t, ms) in &label_rows {
        println!(
            "{:<30}{ms:>10.1}",
            format!(
                "{n} label{}, {set} ({} prompts)",
                if *n == 1 { "" } else { "s" },
                n * t
            )
        );
    }
    Ok(())
}

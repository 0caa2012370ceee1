//! `clipdino segment`: one image + free-text labels → label map, coloured overlay, per-label
//! areas, optional K-Means cluster view and NumPy dumps of every intermediate.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use candle_core::Tensor;
use clap::Args;
use clipdino::kmeans::{self, KMeansOptions, K_RANGE};
use clipdino::overlay;
use clipdino::pipeline::{FeatureKind, ImageFeatures, Segmentation};
use image::{ImageFormat, RgbImage};

use crate::engine::{Encoded, Engine, ModelArgs, PipelineArgs};
use crate::files::{self, LabelMap, OutputDir};
use crate::labels;
use crate::npy;
use crate::photo;

#[derive(Args)]
pub struct SegmentArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The image (PNG, JPEG, GIF, BMP, WebP or TIFF; EXIF orientation is applied).
    #[arg(long, value_name = "FILE")]
    image: PathBuf,
    /// Comma-separated labels, e.g. "cat,sofa,background".
    #[arg(long, value_name = "LIST", allow_hyphen_values = true)]
    labels: String,
    /// The background label for the CLIP-DINOiser background rule (default: a label named
    /// "background", if any).
    #[arg(long, value_name = "LABEL")]
    background: Option<String>,
    /// Write the photo with the coloured label map blended over it (PNG or JPEG).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Opacity of the label colours in --out.
    #[arg(long, default_value_t = 0.6, value_name = "0..1")]
    opacity: f32,
    /// Write the label map as a PNG (indexed: pixel value = label index).
    #[arg(long, value_name = "FILE")]
    mask_out: Option<PathBuf>,
    /// Cluster the patch features into K groups (2..=16), CLIPSelf-style.
    #[arg(long, value_name = "K", requires = "kmeans_out")]
    kmeans: Option<usize>,
    /// Where to write the K-Means view (MaskCLIP clusters, and DINOiser ones beside them).
    #[arg(long, value_name = "FILE", requires = "kmeans")]
    kmeans_out: Option<PathBuf>,
    /// Write NumPy .npy files of the intermediates into this folder.
    #[arg(long, value_name = "DIR")]
    dump: Option<PathBuf>,
}

fn encode_png_or_jpeg(img: &RgbImage, path: &Path) -> Result<Vec<u8>> {
    let fmt = match ImageFormat::from_path(path) {
        Ok(ImageFormat::Jpeg) => ImageFormat::Jpeg,
        _ => ImageFormat::Png,
    };
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, fmt)
        .map_err(|e| anyhow!("encoding {}: {e}", path.display()))?;
    Ok(out.into_inner())
}

/// Per-window tensors `[gh, gw, C]` merged onto the whole image's patch grid exactly like the
/// pipeline merges dense features (`ImageFeatures::patch_grid`).
fn merge_windows(feats: &ImageFeatures, per_window: &[Tensor]) -> Result<Tensor> {
    let mut f = feats.clone();
    let c = per_window
        .first()
        .and_then(|t| t.dims().last().copied())
        .ok_or_else(|| anyhow!("no windows to merge"))?;
    for (w, t) in f.windows.iter_mut().zip(per_window) {
        w.dense = t.clone();
        w.refined = None;
        w.bkg = None;
    }
    f.embed_dim = c;
    Ok(f.patch_grid(FeatureKind::Raw)?)
}

fn dump_files(
    labels_emb: &Tensor,
    enc: &Encoded,
    seg: &Segmentation,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let feats = &enc.features;
    let mut files = vec![
        ("text_emb.npy", npy::encode_tensor(labels_emb)?),
        (
            "dense.npy",
            npy::encode_tensor(&feats.patch_grid(FeatureKind::Raw)?)?,
        ),
    ];
    if let Some(inter) = &enc.inter {
        files.push((
            "inter.npy",
            npy::encode_tensor(&merge_windows(feats, inter)?)?,
        ));
    }
    if feats.has_refined() {
        files.push((
            "refined.npy",
            npy::encode_tensor(&feats.patch_grid(FeatureKind::Refined)?)?,
        ));
        let bkg: Vec<Tensor> = feats
            .windows
            .iter()
            .filter_map(|w| w.bkg.as_ref().map(|b| b.unsqueeze(2)))
            .collect::<candle_core::Result<_>>()?;
        files.push((
            "bkg.npy",
            npy::encode_tensor(&merge_windows(feats, &bkg)?.squeeze(2)?)?,
        ));
    }
    // Patch-level probabilities [L, gh, gw] (after the background rule).
    let per_window: Vec<Tensor> = seg
        .patch_probs
        .iter()
        .map(|p| p.permute((1, 2, 0)))
        .collect::<candle_core::Result<_>>()?;
    let probs = merge_windows(feats, &per_window)?.permute((2, 0, 1))?;
    files.push(("probs.npy", npy::encode_tensor(&probs)?));
    let lm: Vec<i64> = seg.labels.iter().map(|&l| l as i64).collect();
    files.push((
        "labels.npy",
        npy::encode_i64(&[seg.height, seg.width], &lm)?,
    ));
    Ok(files)
}

pub fn run(a: SegmentArgs) -> Result<()> {
    // Cheap checks first: labels, options, output paths, the image; then the model.
    let labels = labels::parse_labels(&a.labels)?;
    let background = labels::resolve_background(&labels, a.background.as_deref())?;
    let encode_opts = a.pipeline.encode_options()?;
    if let Some(k) = a.kmeans {
        if !K_RANGE.contains(&k) {
            bail!(
                "--kmeans {k}: the number of clusters must be in {}..={}",
                K_RANGE.start(),
                K_RANGE.end()
            );
        }
    }
    if !(0.0..=1.0).contains(&a.opacity) {
        bail!("--opacity {} must be between 0 and 1", a.opacity);
    }
    for (p, what) in [
        (&a.out, "overlay"),
        (&a.mask_out, "mask"),
        (&a.kmeans_out, "k-means view"),
    ] {
        if let Some(p) = p {
            files::check_writable_file(p, what)?;
        }
    }
    let dump = match &a.dump {
        Some(d) => Some(OutputDir::prepare(d, "dump folder")?),
        None => None,
    };
    let res = run_checked(&a, labels, background, encode_opts, dump.as_ref());
    match (res, dump) {
        (Ok(files), Some(d)) => d.commit(&files),
        (Ok(_), None) => Ok(()),
        (Err(e), Some(d)) => {
            d.abandon();
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}

fn run_checked(
    a: &SegmentArgs,
    labels: Vec<String>,
    background: Option<usize>,
    encode_opts: clipdino::pipeline::EncodeOptions,
    dump: Option<&OutputDir>,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let img = photo::load_image(&a.image)?;
    let engine = Engine::load(&a.model)?;
    let mut opts = a.pipeline.options(&engine, background)?;
    opts.encode = encode_opts;
    engine.plan(&img, &opts.encode)?;

    let t = Instant::now();
    let label_emb = engine.embed_labels(&labels, a.pipeline.templates)?;
    let t_labels = t.elapsed().as_secs_f64();
    let mut enc = engine.encode(&img, &opts.encode, dump.is_some())?;
    let t = Instant::now();
    let seg = engine.segment(&mut enc.features, &label_emb, &opts.segment)?;
    let t_segment = t.elapsed().as_secs_f64();
    let (w, h) = (img.width() as usize, img.height() as usize);

    // Outputs (each written atomically).
    if let Some(out) = &a.out {
        let rgb = overlay::blend_rgb(img.as_raw(), &seg.labels, w, h, a.opacity, None)?;
        let im =
            RgbImage::from_raw(w as u32, h as u32, rgb).ok_or_else(|| anyhow!("overlay size"))?;
        files::write_atomic(out, &encode_png_or_jpeg(&im, out)?, "overlay")?;
    }
    if let Some(out) = &a.mask_out {
        let palette: Vec<[u8; 3]> = (0..labels.len() as u32).map(overlay::color).collect();
        let map = LabelMap {
            width: w,
            height: h,
            data: seg.labels.clone(),
        };
        files::write_atomic(out, &files::encode_label_png(&map, &palette)?, "mask")?;
    }
    let mut kmeans_note = None;
    if let (Some(k), Some(out)) = (a.kmeans, &a.kmeans_out) {
        let feats = &enc.features;
        let mut kinds = vec![(FeatureKind::Raw, "MaskCLIP")];
        if feats.has_refined() {
            kinds.push((FeatureKind::Refined, "CLIP-DINOiser"));
        }
        let mut panels: Vec<Vec<u8>> = Vec::new();
        for (kind, _) in &kinds {
            let grid = feats.patch_grid(*kind)?;
            let km = kmeans::kmeans_tensor(&grid, &KMeansOptions::new(k))?;
            let map = feats.grid_to_pixels(&km.assignments, h, w)?;
            panels.push(overlay::blend_rgb(img.as_raw(), &map, w, h, 0.7, None)?);
        }
        // Panels side by side.
        let n = panels.len();
        let mut view = RgbImage::new((w * n) as u32, h as u32);
        for (pi, panel) in panels.iter().enumerate() {
            for y in 0..h {
                let src = &panel[y * w * 3..(y + 1) * w * 3];
                let row = y * w * n * 3 + pi * w * 3;
                view.as_mut()[row..row + w * 3].copy_from_slice(src);
            }
        }
        files::write_atomic(out, &encode_png_or_jpeg(&view, out)?, "k-means view")?;
        kmeans_note = Some(
            kinds
                .iter()
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(" | "),
        );
    }
    let dumped = match dump {
        Some(_) => dump_files(&label_emb, &enc, &seg)?,
        None => Vec::new(),
    };

    // Report.
    let feats = &enc.features;
    let (gh, gw) = feats.grid();
    println!(
        "image {w}×{h}, processed at {}×{} in {} window{} ({gh}×{gw} patches), {} labels, {} mode, refine {}",
        feats.width,
        feats.height,
        feats.windows.len(),
        if feats.windows.len() == 1 { "" } else { "s" },
        labels.len(),
opts.segment.mode.title(),
        opts.segment.refine,
    );
    let areas = overlay::area_fractions(&seg.labels, labels.len());
    let lw = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    println!("{:<lw$}  {:>7}", "label", "area %");
    for (i, (l, f)) in labels.iter().zip(&areas).enumerate() {
        let mark = if Some(i) == opts.segment.background {
            "  (background)"
        } else {
            ""
        };
        println!("{l:<lw$}  {:>7.2}{mark}", 100.0 * f);
    }
    println!(
        "time: load {:.2} s, labels {:.2} s, encode {:.2} s, segment {:.3} s",
        engine.load_seconds, t_labels, enc.seconds, t_segment
    );
    if engine.gpu.is_some() {
        println!("image tower on {}", engine.device());
    }
    if let Some(out) = &a.out {
        println!("overlay: {}", out.display());
    }
    if let Some(out) = &a.mask_out {
        println!("mask: {}", out.display());
    }
    if let (Some(note), Some(out)) = (kmeans_note, &a.kmeans_out) {
        println!("k-means: {} ({note})", out.display());
    }
    if let Some(d) = dump {
        let names: Vec<&str> = dumped.iter().map(|(n, _)| *n).collect();
        println!("dump: {} ({})", d.path().display(), names.join(", "));
    }
    Ok(dumped)
}

//! `clipdino verify`: is this bundle good? Runs a reference (the upstream files, or another
//! bundle, always on f32 compute) and one or more bundles (on the compute paths asked for) on
//! the same photos and labels, and reports how close each bundle comes: per photo and protocol
//! and overall, the cosine of the MaskCLIP dense features and of the DINOiser-refined features
//! (per patch, mean and minimum), the cosine of the label embeddings, the share of pixels whose
//! label equals the reference's, and the times. `--min-agreement` turns the report into a gate
//! (exit code 1 below it) for a publishing workflow.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use clipdino::loaders::{self, Bundle};
use clipdino::pipeline::{ImageFeatures, Mode, Preset, SegmentOptions, Segmenter};
use clipdino::templates::TemplateSet;
use clipdino::tokenizer::ClipTokenizer;
use clipdino::{clip, ComputePath, Vb};
use serde_json::{json, Value};

use crate::convert::human_bytes;
use crate::engine::Engine;
use crate::eval::{list_images, IMAGE_EXTS};
use crate::files;
use crate::labels;
use crate::photo;
use crate::progress;

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    budget: crate::engine::BudgetArgs,
    /// Reference: open_clip weights (`open_clip_model.safetensors` or `.bin`), run in f32.
    #[arg(long, value_name = "FILE", required_unless_present = "reference")]
    clip: Option<PathBuf>,
    /// `open_clip_config.json` or transformers' `config.json` for --clip (default: inferred from
    /// the weight shapes, exact GELU).
    #[arg(long, value_name = "FILE", requires = "clip")]
    config: Option<PathBuf>,
    /// CLIP-DINOiser checkpoint `last.pt` for --clip.
    #[arg(long, value_name = "FILE", requires = "clip")]
    head: Option<PathBuf>,
    /// Reference: a GGUF bundle instead of upstream files (e.g. a Q8_0 one), run in f32.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["clip", "config", "head"])]
    reference: Option<PathBuf>,
    /// A bundle to check (repeat for several).
    #[arg(long = "model", value_name = "FILE", required = true)]
    models: Vec<PathBuf>,
    /// Compute paths to run each bundle on, comma-separated: int (the browser app's), f32,
    /// quantized.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "int")]
    compute: Vec<ComputePath>,
    /// Activation values per row the integer kernel keeps in f32 (default 8; 0 = none).
    #[arg(long, value_name = "N")]
    wide_channels: Option<usize>,
    /// Photos: image files and/or folders of images.
    #[arg(long, value_name = "PATH", required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Comma-separated labels, e.g. "cat,sofa,background".
    #[arg(
        long,
        value_name = "LIST",
        allow_hyphen_values = true,
        group = "label_source"
    )]
    labels: Option<String>,
    /// Class names, one per line.
    #[arg(long, value_name = "FILE", group = "label_source")]
    classes: Option<PathBuf>,
    /// Labels as token-id rows (JSON `{"names": [..], "tokens": [[..], ..]}`), one prompt each
    /// and no templates: for test models with a trimmed vocabulary.
    #[arg(long, value_name = "FILE", group = "label_source")]
    label_tokens: Option<PathBuf>,
    /// Also compare the text embeddings of these class names (one per line, with the templates
    /// of --templates) without segmenting with them: real prompts for the text tower when the
    /// segmentation labels are token rows.
    #[arg(long, value_name = "FILE")]
    text_classes: Option<PathBuf>,
    /// The background label for the DINOiser background rule (default: one named "background").
    #[arg(long, value_name = "LABEL")]
    background: Option<String>,
    /// Prompt templates averaged per label.
    #[arg(long, value_enum, default_value_t = TemplateSet::Full)]
    templates: TemplateSet,
    /// Protocols, comma-separated: balanced (short side 336, one pass), paper (short side 448,
    /// windows 448 / stride 224), fast (224), full-res.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "balanced,paper",
        value_name = "LIST"
    )]
    presets: Vec<String>,
    /// Features that classify the pixels.
    #[arg(long, value_enum, default_value_t = Mode::Dinoiser)]
    mode: Mode,
    /// Write the report as JSON here (the table goes to stdout either way).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Exit with an error when a bundle's label maps agree with the reference's on fewer than
    /// this percentage of pixels (all photos and protocols together).
    #[arg(long, value_name = "PERCENT")]
    min_agreement: Option<f64>,
}

/// Per-patch cosines of two `[h, w, E]` feature maps, appended to `out`.
fn patch_cosines(a: &Tensor, b: &Tensor, out: &mut Vec<f64>) -> Result<()> {
    if a.dims() != b.dims() {
        bail!(
            "feature maps {:?} and {:?} differ in shape",
            a.dims(),
            b.dims()
        );
    }
    let e = a.dim(2)?;
    let rows = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let (x, y) = (rows(a)?, rows(b)?);
    for (p, q) in x.chunks_exact(e).zip(y.chunks_exact(e)) {
        let (mut d, mut np, mut nq) = (0f64, 0f64, 0f64);
        for (u, v) in p.iter().zip(q) {
            d += *u as f64 * *v as f64;
            np += *u as f64 * *u as f64;
            nq += *v as f64 * *v as f64;
        }
        out.push(if np > 0.0 && nq > 0.0 {
            d / (np.sqrt() * nq.sqrt())
        } else if np == nq {
            1.0
        } else {
            0.0
        });
    }
    Ok(())
}

/// Mean, minimum and 1st percentile (the minimum can be one patch whose token flipped, e.g. a
/// massive activation switched on or off; the percentile shows whether it is one or many).
fn stats(v: &[f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let p01 = sorted[(sorted.len() - 1) / 100];
    json!({"mean": mean, "min": sorted[0], "p01": p01})
}

fn stat(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// Labels in whichever form they were given, and how to embed them.
enum LabelSet {
    Text(Vec<String>, clipdino::templates::TemplateSet),
    Tokens(Vec<String>, Vec<Vec<u32>>),
}

impl LabelSet {
    fn names(&self) -> &[String] {
        match self {
            LabelSet::Text(n, _) | LabelSet::Tokens(n, _) => n,
        }
    }

    fn embed(&self, engine: &Engine) -> Result<Tensor> {
        match self {
            LabelSet::Text(names, set) => engine.embed_labels(names, *set),
            LabelSet::Tokens(_, rows) => {
                let e = engine.segmenter.clip.text.forward(rows)?;
                Ok(clip::l2_normalize(&e)?)
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            LabelSet::Text(n, set) => {
                format!(
                    "{} labels, {} templates each",
                    n.len(),
                    set.templates().len()
                )
            }
            LabelSet::Tokens(n, _) => format!("{} labels as token rows", n.len()),
        }
    }
}

fn read_label_tokens(path: &Path) -> Result<LabelSet> {
    let text = files::read_input(path, "label token file")?;
    let v: Value = serde_json::from_slice(&text)
        .with_context(|| format!("label token file {} is not JSON", path.display()))?;
    let rows = v.get("tokens").unwrap_or(&v);
    let rows: Vec<Vec<u32>> = serde_json::from_value(rows.clone()).map_err(|_| {
        anyhow!(
            "label token file {}: expected {{\"tokens\": [[ids…], …]}} or [[ids…], …]",
            path.display()
        )
    })?;
    if rows.is_empty() || rows.iter().any(Vec::is_empty) {
        bail!("label token file {} has an empty row", path.display());
    }
    let names: Vec<String> = match v.get("names") {
        Some(n) => serde_json::from_value(n.clone()).map_err(|_| {
            anyhow!(
                "label token file {}: `names` is not a list of strings",
                path.display()
            )
        })?,
        None => (0..rows.len()).map(|i| format!("label {i}")).collect(),
    };
    if names.len() != rows.len() {
        bail!(
            "label token file {}: {} names for {} token rows",
            path.display(),
            names.len(),
            rows.len()
        );
    }
    Ok(LabelSet::Tokens(names, rows))
}

/// What one run (reference or candidate) produced on one photo and protocol.
struct Run {
    features: ImageFeatures,
    labels: Vec<u32>,
    seconds: f64,
}

/// One model loaded and run on every photo × protocol.
struct Outputs {
    label_emb: Tensor,
    /// Embeddings of the `--text-classes` names.
    text_emb: Option<Tensor>,
    label_seconds: f64,
    load_seconds: f64,
    runs: Vec<Run>,
}

struct Job<'a> {
    photos: &'a [(String, image::RgbImage)],
    presets: &'a [Preset],
    labels: &'a LabelSet,
    text_classes: Option<&'a LabelSet>,
    segment: SegmentOptions,
}

fn run_model(engine: &Engine, job: &Job, what: &str) -> Result<Outputs> {
    let t = Instant::now();
    let label_emb = job.labels.embed(engine)?;
    let label_seconds = t.elapsed().as_secs_f64();
    let text_emb = job.text_classes.map(|l| l.embed(engine)).transpose()?;
    let mut runs = Vec::new();
    let sp = progress::spinner(what.to_string());
    for (name, img) in job.photos {
        for p in job.presets {
            sp.set_message(format!("{what}: {name} ({})", p.name()));
            let mut enc = engine.encode(img, &p.options(), false)?;
            let seg = engine.segment(&mut enc.features, &label_emb, &job.segment)?;
            runs.push(Run {
                features: enc.features,
                labels: seg.labels,
                seconds: enc.seconds,
            });
        }
    }
    sp.finish_and_clear();
    Ok(Outputs {
        label_emb,
        text_emb,
        label_seconds,
        load_seconds: engine.load_seconds,
        runs,
    })
}

fn engine_for(
    bundle: Bundle,
    path: ComputePath,
    wide: Option<usize>,
    source: String,
    t0: Instant,
) -> Result<Engine> {
    let Bundle { clip, head, store } = bundle;
    let mut vb = Vb::new(Arc::new(store), Device::Cpu, path);
    if let Some(k) = wide {
        vb = vb.with_wide_channels(k);
    }
    let segmenter = Segmenter::new(&vb, &clip, head.as_ref())?;
    drop(vb);
    Ok(Engine {
        segmenter,
        tokenizer: ClipTokenizer::embedded()?,
        source,
        load_seconds: t0.elapsed().as_secs_f64(),
        gpu: None,
    })
}

/// Scores of a group of runs against the reference's.
#[derive(Default)]
struct Acc {
    dense: Vec<f64>,
    refined: Vec<f64>,
    same: u64,
    pixels: u64,
    seconds: f64,
    reference_seconds: f64,
}

impl Acc {
    fn add(&mut self, r: &Run, c: &Run) -> Result<()> {
        if r.features.windows.len() != c.features.windows.len() {
            bail!("the bundle cut the photo into other windows than the reference");
        }
        for (rw, cw) in r.features.windows.iter().zip(&c.features.windows) {
            patch_cosines(&cw.dense, &rw.dense, &mut self.dense)?;
            if let (Some(a), Some(b)) = (&cw.refined, &rw.refined) {
                patch_cosines(a, b, &mut self.refined)?;
            }
        }
        self.same += r
            .labels
            .iter()
            .zip(&c.labels)
            .filter(|(a, b)| a == b)
            .count() as u64;
        self.pixels += r.labels.len() as u64;
        self.seconds += c.seconds;
        self.reference_seconds += r.seconds;
        Ok(())
    }

    fn merge(&mut self, o: &Acc) {
        self.dense.extend_from_slice(&o.dense);
        self.refined.extend_from_slice(&o.refined);
        self.same += o.same;
        self.pixels += o.pixels;
        self.seconds += o.seconds;
        self.reference_seconds += o.reference_seconds;
    }

    fn agreement(&self) -> f64 {
        100.0 * self.same as f64 / self.pixels.max(1) as f64
    }

    fn to_json(&self) -> Value {
        json!({
            "dense_cosine": stats(&self.dense),
            "refined_cosine": stats(&self.refined),
            "agreement": self.agreement(),
            "pixels": self.pixels,
            "encode_seconds": self.seconds,
            "reference_encode_seconds": self.reference_seconds,
        })
    }
}

fn text_cosines(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    let (x, y) = (a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
    Ok(x.iter()
        .zip(&y)
        .map(|(p, q)| {
            let d: f64 = p.iter().zip(q).map(|(u, v)| *u as f64 * *v as f64).sum();
            let n = |r: &[f32]| r.iter().map(|u| *u as f64 * *u as f64).sum::<f64>().sqrt();
            d / (n(p) * n(q)).max(1e-30)
        })
        .collect())
}

fn compare(
    reference: &Outputs,
    cand: &Outputs,
    job: &Job,
    file: &Path,
    bytes: u64,
    recipe: &str,
    compute: ComputePath,
) -> Result<(Value, f64)> {
    let text = text_cosines(&cand.label_emb, &reference.label_emb)?;
    let text_classes = match (&cand.text_emb, &reference.text_emb) {
        (Some(c), Some(r)) => stats(&text_cosines(c, r)?),
        _ => Value::Null,
    };
    let mut overall = Acc::default();
    let mut per_preset: Vec<(Preset, Acc)> =
        job.presets.iter().map(|p| (*p, Acc::default())).collect();
    let mut photos = Vec::new();
    let mut i = 0;
    for (name, _) in job.photos {
        for (pi, p) in job.presets.iter().enumerate() {
            let mut a = Acc::default();
            a.add(&reference.runs[i], &cand.runs[i])?;
            let mut j = a.to_json();
            j["photo"] = json!(name);
            j["preset"] = json!(p.name());
            photos.push(j);
            per_preset[pi].1.merge(&a);
            overall.merge(&a);
            i += 1;
        }
    }
    let agreement = overall.agreement();
    let v = json!({
        "file": file.file_name().map(|f| f.to_string_lossy().into_owned()),
        "bytes": bytes,
        "recipe": recipe,
        "compute": format!("{compute:?}").to_lowercase(),
        "load_seconds": cand.load_seconds,
        "label_seconds": cand.label_seconds,
        "text_cosine": stats(&text),
        "text_classes_cosine": text_classes,
        "overall": overall.to_json(),
        "per_preset": per_preset.iter().map(|(p, a)| (p.name().to_string(), a.to_json())).collect::<serde_json::Map<_, _>>(),
        "photos": photos,
    });
    Ok((v, agreement))
}

/// The recipe a bundle was written with (its `clipdino.quant` metadata).
fn bundle_recipe(bytes: &[u8]) -> String {
    candle_core::quantized::gguf_file::Content::read(&mut std::io::Cursor::new(bytes))
        .ok()
        .and_then(|c| match c.metadata.get(loaders::KEY_QUANT) {
            Some(candle_core::quantized::gguf_file::Value::String(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "?".into())
}

fn table(report: &Value) -> String {
    let mut s = String::new();
    let r = &report["reference"];
    s += &format!(
        "reference: {} ({} compute, loaded in {:.1} s); {} photo(s) × {}; {}\n\n",
        r["files"]
            .as_array()
            .map(|f| f
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" + "))
            .unwrap_or_default(),
        r["compute"].as_str().unwrap_or(""),
        stat(r, "load_seconds"),
        report["photos"].as_array().map_or(0, Vec::len),
        report["presets"]
            .as_array()
            .map(|p| p
                .iter()
                .filter_map(|x| x["name"].as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        report["labels_described"].as_str().unwrap_or(""),
    );
    s += &format!(
        "{:<34} {:>8} {:>9} {:>6}  {:>17}  {:>17}  {:>17}  {:>7}\n",
        "bundle",
        "compute",
        "size",
        "load",
        "text cos mean/min",
        "dense cos mean/min",
        "refined mean/min",
        "agree %"
    );
    let pair = |v: &Value| {
        if v.is_null() {
            "-".to_string()
        } else {
            format!("{:.5}/{:.5}", stat(v, "mean"), stat(v, "min"))
        }
    };
    for c in report["candidates"].as_array().into_iter().flatten() {
        s += &format!(
            "{:<34} {:>8} {:>9} {:>5.1}s  {:>17}  {:>17}  {:>17}  {:>7.2}{}\n",
            c["file"].as_str().unwrap_or(""),
            c["compute"].as_str().unwrap_or(""),
            human_bytes(c["bytes"].as_u64().unwrap_or(0)),
            stat(c, "load_seconds"),
            pair(&c["text_cosine"]),
            pair(&c["overall"]["dense_cosine"]),
            pair(&c["overall"]["refined_cosine"]),
            stat(&c["overall"], "agreement"),
            match c["pass"].as_bool() {
                Some(false) => "  BELOW THRESHOLD",
                _ => "",
            }
        );
        if !c["text_classes_cosine"].is_null() {
            s += &format!(
                "    text of --text-classes: cosine {}\n",
                pair(&c["text_classes_cosine"])
            );
        }
        for p in c["photos"].as_array().into_iter().flatten() {
            s += &format!(
                "    {:<30} {:>8} {:>9} {:>6}  {:>17}  {:>17}  {:>17}  {:>7.2}\n",
                p["photo"].as_str().unwrap_or(""),
                p["preset"].as_str().unwrap_or(""),
                "",
                format!("{:.1}s", stat(p, "encode_seconds")),
                "",
                pair(&p["dense_cosine"]),
                pair(&p["refined_cosine"]),
                stat(p, "agreement"),
            );
        }
    }
    s
}

pub fn run(a: VerifyArgs) -> Result<()> {
    if let Some(j) = &a.json {
        files::check_writable_file(j, "report file")?;
    }
    if let Some(m) = a.min_agreement {
        if !(0.0..=100.0).contains(&m) {
            bail!("--min-agreement {m} is not a percentage between 0 and 100");
        }
    }
    let presets = a
        .presets
        .iter()
        .map(|p| p.parse::<Preset>().map_err(|e| anyhow!("--presets: {e}")))
        .collect::<Result<Vec<_>>>()?;
    if presets.is_empty() {
        bail!("--presets lists no protocol");
    }
    let set = a.templates;
    let label_set = match (&a.labels, &a.classes, &a.label_tokens) {
        (Some(l), _, _) => LabelSet::Text(labels::parse_labels(l)?, set),
        (_, Some(c), _) => {
            let text = String::from_utf8(files::read_input(c, "class file")?)
                .map_err(|_| anyhow!("class file {} is not UTF-8 text", c.display()))?;
            LabelSet::Text(
                labels::parse_class_file(&text, &c.display().to_string())?,
                set,
            )
        }
        (_, _, Some(t)) => read_label_tokens(t)?,
        _ => bail!(
            "give the labels: --labels \"a,b,background\", --classes FILE or --label-tokens FILE"
        ),
    };
    let background = labels::resolve_background(label_set.names(), a.background.as_deref())?;
    let text_classes = match &a.text_classes {
        Some(c) => {
            let text = String::from_utf8(files::read_input(c, "class file")?)
                .map_err(|_| anyhow!("class file {} is not UTF-8 text", c.display()))?;
            Some(LabelSet::Text(
                labels::parse_class_file(&text, &c.display().to_string())?,
                set,
            ))
        }
        None => None,
    };
    let mode = a.mode;

    // photos
    let mut paths = Vec::new();
    for p in &a.images {
        if p.is_dir() {
            let found = list_images(p)?;
            if found.is_empty() {
                bail!(
                    "folder {} holds no images ({})",
                    p.display(),
                    IMAGE_EXTS.join(", ")
                );
            }
            paths.extend(found);
        } else {
            paths.push(p.clone());
        }
    }
    let photos: Vec<(String, image::RgbImage)> = paths
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, photo::load_image(p)?))
        })
        .collect::<Result<_>>()?;
    // Read every bundle before the long runs, so that a wrong path fails at once.
    for m in &a.models {
        files::read_input(m, "bundle").map(drop)?;
    }
    let job = Job {
        photos: &photos,
        presets: &presets,
        labels: &label_set,
        text_classes: text_classes.as_ref(),
        segment: SegmentOptions {
            mode,
            background,
            output_size: None,
            ..Default::default()
        },
    };

    // reference
    let t0 = Instant::now();
    let budget = a.budget.budget();
    let inputs = match &a.reference {
        Some(r) => crate::engine::read_model_inputs(Some(r), None, None, &budget)?,
        None => crate::engine::read_model_inputs(
            a.clip.as_deref(),
            a.config.as_deref(),
            a.head.as_deref(),
            &budget,
        )?,
    };
    let ref_files: Vec<String> = inputs.iter().map(|(n, _)| n.clone()).collect();
    let sp = progress::spinner("loading the reference");
    let bundle = loaders::load_model_files_with(&inputs, budget)?;
    drop(inputs);
    if mode == clipdino::pipeline::Mode::Dinoiser && bundle.head.is_none() {
        bail!("the reference has no CLIP-DINOiser head: give --head last.pt, or --mode maskclip");
    }
    let engine = engine_for(bundle, ComputePath::F32, None, ref_files.join(" + "), t0)?;
    sp.finish_and_clear();
    let reference = run_model(&engine, &job, "reference")?;
    drop(engine);

    let mut candidates = Vec::new();
    let mut failures = Vec::new();
    for m in &a.models {
        let bytes = files::read_input(m, "bundle")?;
        let recipe = bundle_recipe(&bytes);
        for &compute in &a.compute {
            let t0 = Instant::now();
            let name = m.display().to_string();
            let bundle = loaders::load_model_files_with(&[(name.clone(), bytes.clone())], budget)?;
            if mode == clipdino::pipeline::Mode::Dinoiser && bundle.head.is_none() {
                bail!("{name} has no CLIP-DINOiser head: use --mode maskclip");
            }
            let engine = engine_for(bundle, compute, a.wide_channels, name.clone(), t0)?;
            let out = run_model(&engine, &job, &format!("{name} ({compute:?})"))?;
            drop(engine);
            let (mut v, agreement) = compare(
                &reference,
                &out,
                &job,
                m,
                bytes.len() as u64,
                &recipe,
                compute,
            )?;
            if let Some(min) = a.min_agreement {
                let pass = agreement >= min;
                v["pass"] = json!(pass);
                if !pass {
                    failures.push(format!(
                        "{name} ({compute:?} compute): label maps agree on {agreement:.2} % of pixels, below --min-agreement {min}"
                    ));
                }
            }
            candidates.push(v);
        }
    }
    progress::clear();

    let report = json!({
        "tool": "clipdino verify",
        "version": env!("CARGO_PKG_VERSION"),
        "reference": {
            "files": ref_files,
            "compute": "f32",
            "load_seconds": reference.load_seconds,
            "label_seconds": reference.label_seconds,
        },
        "photos": photos.iter().map(|(n, i)| json!({"name": n, "width": i.width(), "height": i.height()})).collect::<Vec<_>>(),
        "presets": presets.iter().map(|p| {
            let o = p.options();
            json!({"name": p.name(), "short_side": o.short_side, "window": o.window.map(|w| json!({"size": w.size, "stride": w.stride}))})
        }).collect::<Vec<_>>(),
        "labels": label_set.names(),
        "text_classes": text_classes.as_ref().map(|l| l.names().to_vec()),
        "labels_described": label_set.describe(),
        "templates": match &label_set { LabelSet::Text(_, t) => json!(format!("{t:?}").to_lowercase()), LabelSet::Tokens(..) => Value::Null },
        "background": background,
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "min_agreement": a.min_agreement,
        "candidates": candidates,
        "pass": failures.is_empty(),
    });
    print!("{}", table(&report));
    if let Some(j) = &a.json {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        files::write_atomic(j, text.as_bytes(), "report file")?;
        println!("report: {}", j.display());
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosines_of_patches_and_rows() {
        let dev = Device::Cpu;
        let a = Tensor::from_vec(vec![1f32, 0.0, 0.0, 2.0], (1, 2, 2), &dev).unwrap();
        let b = Tensor::from_vec(vec![2f32, 0.0, 1.0, 1.0], (1, 2, 2), &dev).unwrap();
        let mut v = Vec::new();
        patch_cosines(&a, &b, &mut v).unwrap();
        assert!((v[0] - 1.0).abs() < 1e-12);
        assert!((v[1] - 1.0 / 2f64.sqrt()).abs() < 1e-12);
        let s = stats(&v);
        assert!((stat(&s, "min") - 1.0 / 2f64.sqrt()).abs() < 1e-12);
        let t = text_cosines(
            &Tensor::from_vec(vec![1f32, 0.0], (1, 2), &dev).unwrap(),
            &Tensor::from_vec(vec![0f32, 3.0], (1, 2), &dev).unwrap(),
        )
        .unwrap();
        assert_eq!(t, vec![0.0]);
        let bad = Tensor::zeros((2, 1, 2), DType::F32, &dev).unwrap();
        assert!(patch_cosines(&a, &bad, &mut v).is_err());
    }
}

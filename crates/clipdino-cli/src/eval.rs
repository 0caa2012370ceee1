//! `clipdino eval`: mIoU, per-class IoU and pixel accuracy over a folder of ground-truth masks,
//! either by running the model on the matching images or by reading a folder of predicted label
//! images (`--predictions`). Definitions as mmseg's `IoUMetric` (see `clipdino::metrics`).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use clipdino::metrics::ConfusionMatrix;
use clipdino::pipeline::{Mode, Refine};

use crate::engine::{Engine, ModelArgs, PipelineArgs};
use crate::files::{self, LabelMap};
use crate::labels;
use crate::photo;
use crate::progress;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Folder of images, matched to masks by file stem (not needed with --predictions).
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// Folder of ground-truth PNG label images (indexed/palette or greyscale).
    #[arg(long, value_name = "DIR")]
    masks: PathBuf,
    /// Score these predicted PNG label images (matched by stem) instead of running a model.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["images", "model", "clip"])]
    predictions: Option<PathBuf>,
    /// Class names, one per line; line i is label value i in the masks.
    #[arg(long, value_name = "FILE")]
    classes: PathBuf,
    /// Index of the background class for the DINOiser background rule (default: a class named
    /// "background", if any).
    #[arg(long, value_name = "N")]
    background_index: Option<usize>,
    /// Do not apply the background rule even if a class is named "background".
    #[arg(long, conflicts_with = "background_index")]
    no_background: bool,
    /// Mask value that is not scored.
    #[arg(long, default_value_t = 255, value_name = "N")]
    ignore_index: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Compare several modes on the same encodings, one table row each: `MODE[+REFINE]`
    /// separated by commas, e.g. `dinoiser,naclip,naclip+pamr` (REFINE defaults to --refine).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        conflicts_with = "predictions"
    )]
    modes: Vec<String>,
}

/// One row of `--modes`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Variant {
    mode: Mode,
    refine: Refine,
}

impl Variant {
    fn parse(s: &str, default_refine: Refine) -> Result<Self> {
        let (m, r) = match s.trim().split_once('+') {
            Some((m, r)) => (m, Some(r)),
            None => (s.trim(), None),
        };
        let mode = m.parse::<Mode>().map_err(|e| anyhow!("--modes {s}: {e}"))?;
        let refine = match r {
            Some(r) => r
                .parse::<Refine>()
                .map_err(|e| anyhow!("--modes {s}: {e}"))?,
            None => default_refine,
        };
        Ok(Self { mode, refine })
    }

    fn name(&self) -> String {
        match self.refine {
            Refine::None => self.mode.name().to_string(),
            r => format!("{}+{r}", self.mode.name()),
        }
    }
}

pub(crate) const IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

/// The image files of a folder (by extension), sorted.
pub(crate) fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(list_dir(dir, "image folder")?
        .into_iter()
        .filter(|p| ext_is(p, IMAGE_EXTS))
        .collect())
}

fn list_dir(dir: &Path, what: &str) -> Result<Vec<PathBuf>> {
    let rd = fs::read_dir(dir).map_err(|e| {
        anyhow!(
            "cannot read {what} {}: {}",
            dir.display(),
            files::io_words(&e)
        )
    })?;
    let mut out = Vec::new();
    for entry in rd {
        let p = entry
            .map_err(|e| {
                anyhow!(
                    "cannot read {what} {}: {}",
                    dir.display(),
                    files::io_words(&e)
                )
            })?
            .path();
        if p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn ext_is(p: &Path, exts: &[&str]) -> bool {
    p.extension()
        .map(|e| exts.contains(&e.to_string_lossy().to_lowercase().as_str()))
        .unwrap_or(false)
}

/// The file in `files` whose stem is `stem` and whose extension is one of `exts`.
fn find_by_stem<'a>(files: &'a [PathBuf], stem_: &str, exts: &[&str]) -> Option<&'a PathBuf> {
    files.iter().find(|p| stem(p) == stem_ && ext_is(p, exts))
}

pub fn run(a: EvalArgs) -> Result<()> {
    let class_text = files::read_input(&a.classes, "class file")?;
    let class_text = String::from_utf8(class_text)
        .map_err(|_| anyhow!("class file {} is not UTF-8 text", a.classes.display()))?;
    let classes = labels::parse_class_file(&class_text, &a.classes.display().to_string())?;
    if let Some(b) = a.background_index {
        if b >= classes.len() {
            bail!(
                "--background-index {b} is out of range: the class file lists {} classes",
                classes.len()
            );
        }
    }
    let background = if a.no_background {
        None
    } else {
        match a.background_index {
            Some(b) => Some(b),
            None => labels::resolve_background(&classes, None)?,
        }
    };

    let masks: Vec<PathBuf> = list_dir(&a.masks, "mask folder")?
        .into_iter()
        .filter(|p| ext_is(p, &["png"]))
        .collect();
    if masks.is_empty() {
        bail!(
            "mask folder {} holds no .png label images",
            a.masks.display()
        );
    }

    let mut cm = ConfusionMatrix::new(classes.len(), Some(a.ignore_index));
    match &a.predictions {
        Some(pred_dir) => {
            let preds = list_dir(pred_dir, "prediction folder")?;
            for m in &masks {
                let s = stem(m);
                let p = find_by_stem(&preds, &s, &["png"]).ok_or_else(|| {
                    anyhow!(
                        "no prediction {s}.png in {} for mask {}",
                        pred_dir.display(),
                        m.display()
                    )
                })?;
                let gt = files::read_label_png(m)?;
                let pred = files::read_label_png(p)?;
                add(&mut cm, &pred, &gt, p, m)?;
            }
        }
        None => {
            let img_dir = a.images.as_ref().ok_or_else(|| {
                anyhow!("give --images DIR (with --model or --clip) or --predictions DIR")
            })?;
            let images = list_dir(img_dir, "image folder")?;
            // Pair every mask with its image before loading the model.
            let pairs: Vec<(PathBuf, PathBuf)> = masks
                .iter()
                .map(|m| {
                    let s = stem(m);
                    find_by_stem(&images, &s, IMAGE_EXTS)
                        .map(|i| (i.clone(), m.clone()))
                        .ok_or_else(|| {
                            anyhow!(
                                "no image named {s}.* in {} for mask {}",
                                img_dir.display(),
                                m.display()
                            )
                        })
                })
                .collect::<Result<_>>()?;
            let default_refine = a.pipeline.refine()?;
            let variants: Vec<Variant> = if a.modes.is_empty() {
                vec![Variant {
                    mode: a.pipeline.mode,
                    refine: default_refine,
                }]
            } else {
                a.modes
                    .iter()
                    .map(|s| Variant::parse(s, default_refine))
                    .collect::<Result<_>>()?
            };
            let engine = Engine::load(&a.model)?;
            let modes: Vec<Mode> = variants.iter().map(|v| v.mode).collect();
            let mut opts = a.pipeline.options_for(&engine, background, &modes)?;
            let label_emb = engine.embed_labels(&classes, a.pipeline.templates)?;
            let mut cms: Vec<ConfusionMatrix> = variants.iter().map(|_| cm.clone()).collect();
            let pb = progress::bar(pairs.len() as u64, "evaluating");
            for (img_path, m) in &pairs {
                let img = photo::load_image(img_path)?;
                let gt = files::read_label_png(m)?;
                // one encode per image; each mode adds one last block (or nothing)
                let mut enc = engine.encode(&img, &opts.encode, false)?;
                for (v, cm) in variants.iter().zip(&mut cms) {
                    opts.segment.mode = v.mode;
                    opts.segment.refine = v.refine;
                    let seg = engine.segment(&mut enc.features, &label_emb, &opts.segment)?;
                    let pred = LabelMap {
                        width: img.width() as usize,
                        height: img.height() as usize,
                        data: seg.labels,
                    };
                    add(cm, &pred, &gt, img_path, m)?;
                }
                pb.inc(1);
            }
            pb.finish_and_clear();
            if !a.modes.is_empty() {
                let reports: Vec<(String, Report)> = variants
                    .iter()
                    .zip(&cms)
                    .map(|(v, cm)| (v.name(), Report::new(cm, &classes, masks.len())))
                    .collect();
                if a.json {
                    let rows: Vec<_> = reports
                        .iter()
                        .map(|(n, r)| serde_json::json!({"mode": n, "report": r.to_json()}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", modes_table(&reports));
                }
                return Ok(());
            }
            cm = cms.remove(0);
        }
    }

    let report = Report::new(&cm, &classes, masks.len());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn add(
    cm: &mut ConfusionMatrix,
    pred: &LabelMap,
    gt: &LabelMap,
    pred_path: &Path,
    gt_path: &Path,
) -> Result<()> {
    if (pred.width, pred.height) != (gt.width, gt.height) {
        bail!(
            "{} is {}×{} px but its mask {} is {}×{} px",
            pred_path.display(),
            pred.width,
            pred.height,
            gt_path.display(),
            gt.width,
            gt.height
        );
    }
    cm.add(
        &pred.data,
        &gt.data,
        &format!("{} / {}", pred_path.display(), gt_path.display()),
    )
    .context("scoring")?;
    Ok(())
}

/// `--modes`: per-class IoU per mode (columns) and the means (rows at the bottom).
fn modes_table(reports: &[(String, Report)]) -> String {
    let cw = reports
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(7)
        .max(7);
    let first = &reports[0].1;
    let w = first.class_width();
    let f = |x: Option<f64>| {
        x.map(|v| format!("{v:>cw$.2}"))
            .unwrap_or_else(|| format!("{:>cw$}", "-"))
    };
    let mut s = format!("{:<w$}", "IoU %");
    for (n, _) in reports {
        s += &format!("  {n:>cw$}");
    }
    s += "\n";
    for (i, (c, _, _)) in first.per_class.iter().enumerate() {
        s += &format!("{c:<w$}");
        for (_, r) in reports {
            s += &format!("  {}", f(r.per_class[i].1));
        }
        s += "\n";
    }
    s += "\n";
    for (name, get) in [
        ("mIoU", (|r: &Report| r.miou) as fn(&Report) -> f64),
        ("mAcc", |r: &Report| r.macc),
        ("aAcc", |r: &Report| r.aacc),
    ] {
        s += &format!("{name:<w$}");
        for (_, r) in reports {
            s += &format!("  {}", f(pct(get(r) / 100.0)));
        }
        s += "\n";
    }
    s += &format!("\nimages {}  pixels {}\n", first.images, first.pixels);
    s
}

/// Metrics in percent; classes with an undefined IoU (absent from ground truth and prediction)
/// are listed as `None` and excluded from the means.
pub struct Report {
    pub images: usize,
    pub pixels: u64,
    pub miou: f64,
    pub macc: f64,
    pub aacc: f64,
    pub per_class: Vec<(String, Option<f64>, Option<f64>)>,
}

fn pct(x: f64) -> Option<f64> {
    (!x.is_nan()).then_some(100.0 * x)
}

impl Report {
    pub fn new(cm: &ConfusionMatrix, classes: &[String], images: usize) -> Self {
        let iou = cm.per_class_iou();
        let acc = cm.per_class_accuracy();
        Self {
            images,
            pixels: cm.total(),
            miou: 100.0 * cm.mean_iou(),
            macc: 100.0 * cm.mean_accuracy(),
            aacc: 100.0 * cm.pixel_accuracy(),
            per_class: classes
                .iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), pct(iou[i]), pct(acc[i])))
                .collect(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let num = |x: f64| {
            if x.is_nan() {
                serde_json::Value::Null
            } else {
                x.into()
            }
        };
        serde_json::json!({
            "images": self.images,
            "pixels": self.pixels,
            "mIoU": num(self.miou),
            "mAcc": num(self.macc),
            "aAcc": num(self.aacc),
            "per_class": self.per_class.iter().map(|(c, iou, acc)| serde_json::json!({
                "class": c, "IoU": iou, "Acc": acc,
            })).collect::<Vec<_>>(),
        })
    }

    /// Width of the class-name column (at least the header's 5).
    fn class_width(&self) -> usize {
        self.per_class
            .iter()
            .map(|(c, _, _)| c.chars().count())
            .max()
            .unwrap_or(5)
            .max(5)
    }

    pub fn table(&self) -> String {
        let w = self.class_width();
        let f = |x: Option<f64>| {
            x.map(|v| format!("{v:7.2}"))
                .unwrap_or_else(|| "      -".into())
        };
        let mut s = format!("{:<w$}  {:>7}  {:>7}\n", "class", "IoU %", "Acc %");
        for (c, iou, acc) in &self.per_class {
            s += &format!("{c:<w$}  {}  {}\n", f(*iou), f(*acc));
        }
        let g = |x: f64| f(pct(x / 100.0));
        s += &format!(
            "\nimages {}  pixels {}\nmIoU {}  mAcc {}  aAcc {}\n",
            self.images,
            self.pixels,
            g(self.miou).trim(),
            g(self.macc).trim(),
            g(self.aacc).trim()
        );
        s
    }
}

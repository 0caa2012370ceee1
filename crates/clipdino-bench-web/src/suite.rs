//! The benchmark steps, written once and run unchanged in a browser Web Worker (wasm32) and
//! natively: weight parsing, image encoding, the image tower alone, label embeddings, the
//! DINOiser head, segmentation for cached labels, K-Means, and an instrumented tower run.
//!
//! A [`Step`] is plain JSON (`{"op": "encode", "preset": "448", "runs": 5}`), so the page driver
//! and the native binary iterate the same [`plan`]. Every timed step runs once untimed (warm-up,
//! unless `"warmup": false`) and then `runs` times; results carry the median, min, max and every
//! sample, plus the memory read-out after the step.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use clipdino::kmeans::{kmeans_tensor, KMeansOptions};
use clipdino::loaders::{load_model_files, Bundle};
use clipdino::pipeline::{
    self, resize_bilinear, short_side_size, slide_windows, EncodeOptions, FeatureKind,
    ImageFeatures, Mode, Refine, SegmentOptions, Segmenter,
};
use clipdino::templates::TemplateSet;
use clipdino::tokenizer::ClipTokenizer;
use clipdino::{clip, ComputePath, Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::{self, now_ms, timed};
use crate::stats::{repeat, summary, Runs};
use crate::{kernels, profile};

/// The ten labels of the label and segmentation steps; the last one is the background label of
/// the CLIP-DINOiser rule.
pub const LABELS10: [&str; 10] = [
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

/// Image inputs of the benchmark: the app's resolutions ([`pipeline::Preset`]) and one more, the
/// 448 short side in one pass (the tower at the size the ONNX peer is also timed at). Named by
/// the short side, as the results have always been.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Preset {
    /// Short side 224, one pass.
    #[serde(rename = "224")]
    S224,
    /// Short side 336, one pass.
    #[serde(rename = "336")]
    S336,
    /// Short side 448, one pass.
    #[serde(rename = "448")]
    S448,
    /// The paper protocol: short side 448, windows 448 with stride 224.
    #[serde(rename = "448-window")]
    Window448,
}

impl Preset {
    pub const ALL: [Preset; 4] = [Preset::S224, Preset::S336, Preset::S448, Preset::Window448];

    pub fn options(self) -> EncodeOptions {
        match self {
            Preset::S224 => pipeline::Preset::Fast.options(),
            Preset::S336 => pipeline::Preset::Balanced.options(),
            Preset::S448 => EncodeOptions {
                window: None,
                ..pipeline::Preset::Paper.options()
            },
            Preset::Window448 => pipeline::Preset::Paper.options(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::S224 => "224",
            Preset::S336 => "336",
            Preset::S448 => "448",
            Preset::Window448 => "448-window",
        }
    }
}

/// One benchmark step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// Parse the given files (`load_model_files`) and build the model
    /// (`Segmenter::from_bundle`). The files must have been added with [`Suite::add_file`];
    /// they are dropped afterwards, the last model built is kept for the following steps.
    Load {
        label: String,
        files: Vec<String>,
        compute: ComputePath,
        #[serde(flatten)]
        runs: Runs,
    },
    /// `Segmenter::encode_image` on the photo (tower + head per window); features are cached.
    Encode {
        preset: Preset,
        #[serde(flatten)]
        runs: Runs,
    },
    /// The image tower alone on the preset's first window (same input as the ONNX peer gets).
    Tower {
        preset: Preset,
        #[serde(flatten)]
        runs: Runs,
    },
    /// `ClipModel::embed_labels` for the first `labels` of [`LABELS10`].
    Labels {
        labels: usize,
        templates: TemplateSet,
        #[serde(flatten)]
        runs: Runs,
    },
    /// DINOiser head alone (refine + background score) on the preset's first window.
    Head {
        preset: Preset,
        #[serde(flatten)]
        runs: Runs,
    },
    /// `segment_features` with the ten cached label embeddings (fast templates) on the cached
    /// features of `preset`, output at the photo's size: what a label edit costs (with
    /// `refine`, a label edit with that refinement on).
    Segment {
        preset: Preset,
        #[serde(default, skip_serializing_if = "is_no_refine")]
        refine: Refine,
        #[serde(flatten)]
        runs: Runs,
    },
    /// `Segmenter::prepare_mode` on the cached features of `preset` (its earlier result
    /// dropped before each run): what switching to `mode` costs, one last block per window.
    Mode {
        preset: Preset,
        mode: Mode,
        #[serde(flatten)]
        runs: Runs,
    },
    /// Refined patch grid + spherical K-Means on the cached features of `preset`.
    Kmeans {
        preset: Preset,
        k: usize,
        #[serde(flatten)]
        runs: Runs,
    },
    /// The tower forward with the model's per-op timing hook on (see [`profile`]).
    Profile {
        preset: Preset,
        #[serde(flatten)]
        runs: Runs,
    },
    /// The machine's limit on thread scaling ([`kernels::ceiling`]): one copy of a kernel per
    /// thread, the time per copy.
    Ceiling {
        #[serde(flatten)]
        runs: Runs,
    },
    /// Kernel micro-benchmarks at the tower's shapes (f32 gemm, quantized matmul, elementwise).
    Kernels {
        tokens: usize,
        #[serde(flatten)]
        runs: Runs,
    },
}

impl Step {
    /// A short description for progress lines and tables, e.g. `encode 448-window`.
    pub fn title(&self) -> String {
        match self {
            Step::Load { label, compute, .. } => {
                format!("load {label} ({})", compute_name(*compute))
            }
            Step::Encode { preset, .. } => format!("encode {}", preset.name()),
            Step::Tower { preset, .. } => format!("tower {}", preset.name()),
            Step::Labels {
                labels, templates, ..
            } => format!("labels {labels} × {templates}"),
            Step::Head { preset, .. } => format!("head {}", preset.name()),
            Step::Segment {
                preset,
                refine: Refine::None,
                ..
            } => format!("segment {}", preset.name()),
            Step::Segment { preset, refine, .. } => {
                format!("segment {} +{refine}", preset.name())
            }
            Step::Mode { preset, mode, .. } => format!("mode {} {}", mode.name(), preset.name()),
            Step::Kmeans { preset, k, .. } => format!("k-means {} k={k}", preset.name()),
            Step::Profile { preset, .. } => format!("profile {}", preset.name()),
            Step::Kernels { tokens, .. } => format!("kernels {tokens} tokens"),
            Step::Ceiling { .. } => "ceiling (one kernel copy per thread)".into(),
        }
    }
}

/// The serialised name of a compute path (`f32`, `quantized`, `int`).
pub fn compute_name(c: ComputePath) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Which plan to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanKind {
    /// Every measurement (one long run).
    Full,
    /// The app's path at the paper preset in a fresh process / worker, for the peak memory.
    Memory,
    /// A few quick steps for checking the set-up.
    Smoke,
    /// Only the kernel micro-benchmarks (785 tokens).
    Kernels,
    /// The f32 tower at 448×448 and its op-level profile.
    Profile,
    /// The f32 and integer compute paths side by side at 448×448 (tower, profile), the app's
    /// path (the `default` bundle on the integer kernel: encode, labels, head, segment, K-Means) and the
    /// kernel micro-benchmarks: the quick way to re-measure the headline numbers.
    Compare,
    /// QUANTIZATION.md's bundles on the integer kernel: the `default` recipe, Q8_0 and the
    /// former default Q4_0, each loaded and its image tower timed at 448×448.
    Quant,
    /// Like `memory`, with the `default` recipe's bundle.
    MemoryDefault,
    /// Like `memory`, with the app's high-precision choice: the F16 bundle on the f32 path.
    MemoryHigh,
    /// What the thread-scaling measurement runs at each thread count: the app's path (the
    /// `default` bundle on the integer kernel), the 448×448 tower, the photo encode at 336 and with the
    /// paper's 448 windows, 10 labels.
    Threads,
    /// The last-block methods and PAMR at 336 and 448 (one pass, f32): encode, a switch to
    /// each of ClearCLIP / NACLIP / SCLIP, a label edit without and with PAMR.
    Methods,
}

fn is_no_refine(r: &Refine) -> bool {
    *r == Refine::None
}

/// File names of the weights folder written by `bench/run.sh`.
pub mod files {
    pub const SAFETENSORS: &str = "open_clip_model.safetensors";
    pub const CONFIG: &str = "open_clip_config.json";
    pub const HEAD: &str = "last.pt";
    pub fn gguf(quant: &str) -> String {
        format!("clip-dinoiser-{quant}.gguf")
    }
}

fn load(label: &str, files: Vec<String>, compute: ComputePath, runs: Runs) -> Step {
    Step::Load {
        label: label.to_string(),
        files,
        compute,
        runs,
    }
}

/// The steps of a plan, `runs` timed runs each (the slow quantized-path and profile steps use
/// at most 3).
pub fn plan(kind: PlanKind, runs: usize) -> Vec<Step> {
    let r = Runs::new(runs);
    let few = Runs::new(runs.min(3));
    let upstream = vec![
        files::SAFETENSORS.into(),
        files::CONFIG.into(),
        files::HEAD.into(),
    ];
    match kind {
        PlanKind::Smoke => vec![
            load(
                "upstream safetensors + last.pt",
                upstream,
                ComputePath::F32,
                Runs::once(),
            ),
            Step::Encode {
                preset: Preset::S224,
                runs: Runs::once(),
            },
            Step::Tower {
                preset: Preset::S224,
                runs: Runs::once(),
            },
            Step::Labels {
                labels: 1,
                templates: TemplateSet::Fast,
                runs: Runs::once(),
            },
            Step::Segment {
                preset: Preset::S224,
                refine: Refine::None,
                runs: Runs::once(),
            },
            Step::Kmeans {
                preset: Preset::S224,
                k: 8,
                runs: Runs::once(),
            },
            Step::Profile {
                preset: Preset::S224,
                runs: Runs::once(),
            },
            Step::Kernels {
                tokens: 197,
                runs: Runs::once(),
            },
        ],
        PlanKind::Kernels => vec![Step::Kernels {
            tokens: 785,
            runs: r,
        }],
        PlanKind::Methods => {
            let mut v = vec![load(
                "upstream safetensors + last.pt",
                upstream,
                ComputePath::F32,
                Runs::once(),
            )];
            for p in [Preset::S336, Preset::S448] {
                v.push(Step::Encode {
                    preset: p,
                    runs: Runs::once(),
                });
                for mode in [Mode::ClearClip, Mode::NaClip, Mode::SClip] {
                    v.push(Step::Mode {
                        preset: p,
                        mode,
                        runs: r,
                    });
                }
                for refine in [Refine::None, Refine::PAMR] {
                    v.push(Step::Segment {
                        preset: p,
                        refine,
                        runs: r,
                    });
                }
            }
            v
        }
        PlanKind::Profile => vec![
            load(
                "upstream safetensors + last.pt",
                upstream,
                ComputePath::F32,
                Runs::once(),
            ),
            Step::Tower {
                preset: Preset::Window448,
                runs: r,
            },
            Step::Profile {
                preset: Preset::Window448,
                runs: r,
            },
        ],
        PlanKind::Memory | PlanKind::MemoryDefault | PlanKind::MemoryHigh => vec![
            {
                let (quant, compute) = match kind {
                    PlanKind::Memory => ("q4_0", ComputePath::Int),
                    PlanKind::MemoryHigh => ("f16", ComputePath::F32),
                    _ => ("default", ComputePath::Int),
                };
                load(
                    &format!("gguf {quant}"),
                    vec![files::gguf(quant)],
                    compute,
                    Runs::once(),
                )
            },
            Step::Labels {
                labels: 10,
                templates: TemplateSet::Fast,
                runs: Runs::once(),
            },
            Step::Encode {
                preset: Preset::Window448,
                runs: Runs::once(),
            },
            Step::Segment {
                preset: Preset::Window448,
                refine: Refine::None,
                runs: Runs::once(),
            },
            Step::Kmeans {
                preset: Preset::Window448,
                k: 8,
                runs: Runs::once(),
            },
        ],
        PlanKind::Quant => ["default", "q8_0", "q4_0"]
            .iter()
            .flat_map(|q| {
                [
                    load(
                        &format!("gguf {q}"),
                        vec![files::gguf(q)],
                        ComputePath::Int,
                        r,
                    ),
                    Step::Tower {
                        preset: Preset::Window448,
                        runs: r,
                    },
                ]
            })
            .collect(),
        PlanKind::Threads => vec![
            load(
                "gguf default",
                vec![files::gguf("default")],
                ComputePath::Int,
                Runs::once(),
            ),
            Step::Tower {
                preset: Preset::Window448,
                runs: r,
            },
            // What an encode adds to the tower, to see which part does not scale: the
            // tower at the 336 input, and the head (its products) at both presets.
            Step::Tower {
                preset: Preset::S336,
                runs: r,
            },
            Step::Head {
                preset: Preset::S336,
                runs: r,
            },
            Step::Head {
                preset: Preset::Window448,
                runs: r,
            },
            Step::Encode {
                preset: Preset::S336,
                runs: r,
            },
            Step::Encode {
                preset: Preset::Window448,
                runs: r,
            },
            Step::Labels {
                labels: 10,
                templates: TemplateSet::Fast,
                runs: r,
            },
            // What this machine allows: one copy of the largest product per thread.
            Step::Ceiling { runs: r },
            // Where the 448² tower's time goes at this thread count (what does not scale).
            Step::Profile {
                preset: Preset::Window448,
                runs: few,
            },
        ],
        PlanKind::Compare => {
            let mut v = Vec::new();
            v.push(load(
                "upstream safetensors + last.pt",
                upstream,
                ComputePath::F32,
                r,
            ));
            v.extend(tower_448(r, few));
            v.push(load(
                "gguf default",
                vec![files::gguf("default")],
                ComputePath::Int,
                r,
            ));
            v.extend(tower_448(r, few));
            app_path_steps(&mut v, r, &[Preset::S336, Preset::Window448]);
            v.push(Step::Kernels {
                tokens: 785,
                runs: r,
            });
            v
        }
        PlanKind::Full => {
            // quantized compute path: load, then the tower at 448×448 and its profile
            let mut v = Vec::new();
            for q in ["q8_0", "q4_0"] {
                v.push(load(
                    &format!("gguf {q}"),
                    vec![files::gguf(q)],
                    ComputePath::Quantized,
                    r,
                ));
                v.extend(tower_448(few, Runs::once()));
            }
            v.extend([
                // f32 compute: every bundle dequantized at load (the app's path before ComputePath::Int)
                load("gguf f32", vec![files::gguf("f32")], ComputePath::F32, r),
                load("gguf f16", vec![files::gguf("f16")], ComputePath::F32, r),
                load("gguf q8_0", vec![files::gguf("q8_0")], ComputePath::F32, r),
                load("gguf q4_0", vec![files::gguf("q4_0")], ComputePath::F32, r),
                // kept for the rest: the upstream files, so that the tower output can be compared
                // with the ONNX peer built from the same safetensors (timing is that of any
                // f32-compute model)
                load(
                    "upstream safetensors + last.pt",
                    upstream,
                    ComputePath::F32,
                    r,
                ),
            ]);
            for p in Preset::ALL {
                v.push(Step::Tower { preset: p, runs: r });
            }
            app_path_steps(&mut v, r, &Preset::ALL);
            v.push(Step::Profile {
                preset: Preset::Window448,
                runs: few,
            });
            // the app's path: the published `default` bundle on the integer kernel
            v.push(load(
                "gguf default",
                vec![files::gguf("default")],
                ComputePath::Int,
                r,
            ));
            for p in Preset::ALL {
                v.push(Step::Tower { preset: p, runs: r });
            }
            v.push(Step::Profile {
                preset: Preset::Window448,
                runs: few,
            });
            app_path_steps(&mut v, r, &Preset::ALL);
            v.push(Step::Kernels {
                tokens: 785,
                runs: r,
            });
            v
        }
    }
}

/// The image tower alone at 448×448 (first window of the paper preset), then its op profile.
fn tower_448(tower: Runs, profile: Runs) -> [Step; 2] {
    let preset = Preset::Window448;
    [
        Step::Tower {
            preset,
            runs: tower,
        },
        Step::Profile {
            preset,
            runs: profile,
        },
    ]
}

/// Encode, labels (1 and 10, fast and full templates), head, segment and K-Means on the model
/// loaded last.
fn app_path_steps(v: &mut Vec<Step>, r: Runs, presets: &[Preset]) {
    for &p in presets {
        v.push(Step::Encode { preset: p, runs: r });
    }
    for n in [1, 10] {
        for t in [TemplateSet::Fast, TemplateSet::Full] {
            v.push(Step::Labels {
                labels: n,
                templates: t,
                runs: r,
            });
        }
    }
    for &p in presets {
        v.push(Step::Head { preset: p, runs: r });
        v.push(Step::Segment {
            preset: p,
            refine: Refine::None,
            runs: r,
        });
        v.push(Step::Kmeans {
            preset: p,
            k: 8,
            runs: r,
        });
    }
}

/// A loaded model and what it was loaded from.
pub struct Loaded {
    pub label: String,
    pub compute: ComputePath,
    pub seg: Segmenter,
}

/// State kept between steps.
pub struct Suite {
    /// `[3, H, W]` RGB in [0, 1].
    photo: Tensor,
    tokenizer: ClipTokenizer,
    files: Vec<(String, Vec<u8>)>,
    pub model: Option<Loaded>,
    features: HashMap<Preset, ImageFeatures>,
    labels10: Option<Tensor>,
}

/// A packed RGB photo (`height · width · 3` bytes, row-major) as a `[3, H, W]` tensor in [0, 1].
pub fn photo_tensor(rgb: &[u8], width: usize, height: usize) -> Result<Tensor> {
    if width == 0 || height == 0 || rgb.len() != width * height * 3 {
        return Err(Error::invalid(
            "photo",
            format!(
                "{} bytes for a {width}×{height} RGB image (expected {})",
                rgb.len(),
                width * height * 3
            ),
        ));
    }
    let data: Vec<f32> = rgb.iter().map(|&b| b as f32 / 255.0).collect();
    Ok(Tensor::from_vec(data, (height, width, 3), &Device::Cpu)?
        .permute((2, 0, 1))?
        .contiguous()?)
}

impl Suite {
    pub fn new(photo: Tensor) -> Result<Self> {
        Ok(Self {
            photo,
            tokenizer: ClipTokenizer::embedded()?,
            files: Vec::new(),
            model: None,
            features: HashMap::new(),
            labels10: None,
        })
    }

    /// Hand a weight file to the next `load` step.
    pub fn add_file(&mut self, name: String, bytes: Vec<u8>) {
        self.files.retain(|(n, _)| *n != name);
        self.files.push((name, bytes));
    }

    pub fn file_names(&self) -> Vec<String> {
        self.files.iter().map(|(n, _)| n.clone()).collect()
    }

    fn model(&self) -> Result<&Loaded> {
        self.model
            .as_ref()
            .ok_or_else(|| Error::invalid("model", "no model loaded: run a load step first"))
    }

    /// The tower input of `preset`'s first window: resize, crop, pad + normalise.
    pub fn tower_input(&self, preset: Preset, patch: usize) -> Result<Tensor> {
        let (_, h, w) = self.photo.dims3()?;
        let opts = preset.options();
        let (ph, pw) = short_side_size(h, w, opts.short_side.unwrap_or(h.min(w)));
        let img = if (ph, pw) != (h, w) {
            resize_bilinear(&self.photo, ph, pw)?
        } else {
            self.photo.clone()
        };
        let b = *slide_windows(ph, pw, opts.window)?
            .first()
            .ok_or_else(|| Error::invalid("windows", "no window"))?;
        let crop = img.narrow(1, b.y0, b.height)?.narrow(2, b.x0, b.width)?;
        clip::preprocess(&crop, patch)
    }

    fn labels10(&mut self) -> Result<Tensor> {
        if let Some(t) = &self.labels10 {
            return Ok(t.clone());
        }
        let labels: Vec<String> = LABELS10.iter().map(|s| s.to_string()).collect();
        let t = self
            .model()?
            .seg
            .clip
            .embed_labels(&self.tokenizer, &labels, TemplateSet::Fast)?;
        self.labels10 = Some(t.clone());
        Ok(t)
    }

    fn features(&self, preset: Preset) -> Result<&ImageFeatures> {
        self.features.get(&preset).ok_or_else(|| {
            Error::invalid(
                "features",
                format!("preset {} not encoded yet", preset.name()),
            )
        })
    }

    /// Run one step; the result is a JSON object (timings, sizes, memory).
    pub fn run(&mut self, step: &Step) -> Result<Value> {
        let t0 = now_ms();
        let cpu0 = clock::cpu_ms();
        let mut out = self.run_inner(step)?;
        let wall = now_ms() - t0;
        let obj = out
            .as_object_mut()
            .ok_or_else(|| Error::invalid("result", "not an object"))?;
        obj.insert(
            "step".into(),
            serde_json::to_value(step).map_err(|e| Error::invalid("step", e.to_string()))?,
        );
        obj.insert("wall_ms".into(), json!(wall));
        if let (Some(a), Some(b)) = (cpu0, clock::cpu_ms()) {
            // process CPU time / wall time over the step: ≈ 1 when one thread did the work
            obj.insert("cpu_per_wall".into(), json!((b - a) / wall.max(1e-9)));
        }
        if let Some(m) = &self.model {
            obj.insert("model".into(), json!(m.label));
            obj.insert(
                "compute".into(),
                serde_json::to_value(m.compute).unwrap_or(Value::Null),
            );
        }
        obj.insert("memory".into(), clock::memory());
        Ok(out)
    }

    fn run_inner(&mut self, step: &Step) -> Result<Value> {
        match step {
            Step::Load {
                label,
                files,
                compute,
                runs,
            } => self.load(label, files, *compute, *runs),
            Step::Encode { preset, runs } => {
                let m = self.model()?;
                let opts = preset.options();
                let (v, feats) = repeat(*runs, || {
                    m.seg.encode_image(&self.photo, &opts, &mut |_| {})
                })?;
                let mut r = summary(&v);
                r["processed"] = json!([feats.height, feats.width]);
                r["windows"] = json!(feats
                    .windows
                    .iter()
                    .map(|w| [w.grid.0, w.grid.1])
                    .collect::<Vec<_>>());
                self.features.insert(*preset, feats);
                Ok(r)
            }
            Step::Tower { preset, runs } => {
                let m = self.model()?;
                let cfg = &m.seg.clip_cfg.vision;
                let x = self.tower_input(*preset, cfg.patch_size)?;
                let layer = m.seg.head_cfg.layer;
                let (v, out) = repeat(*runs, || {
                    m.seg.clip.vision.forward(&x, layer, &mut |_, _| {})
                })?;
                let mut r = summary(&v);
                r["input"] = json!(x.dims());
                let (_, _, hh, ww) = x.dims4()?;
                let tokens = hh / cfg.patch_size * (ww / cfg.patch_size) + 1;
                r["tokens"] = json!(tokens);
                r["pooled"] = json!(out.pooled.to_vec1::<f32>()?);
                Ok(r)
            }
            Step::Labels {
                labels,
                templates,
                runs,
            } => {
                if *labels == 0 || *labels > LABELS10.len() {
                    return Err(Error::invalid("labels", format!("{labels} (1..=10)")));
                }
                let m = self.model()?;
                let names: Vec<String> =
                    LABELS10[..*labels].iter().map(|s| s.to_string()).collect();
                let set = *templates;
                let (v, emb) = repeat(*runs, || {
                    m.seg.clip.embed_labels(&self.tokenizer, &names, set)
                })?;
                if *labels == 10 && set == TemplateSet::Fast {
                    self.labels10 = Some(emb);
                }
                let mut r = summary(&v);
                r["prompts"] = json!(labels * set.len());
                Ok(r)
            }
            Step::Head { preset, runs } => {
                let m = self.model()?;
                let head = m
                    .seg
                    .head
                    .as_ref()
                    .ok_or_else(|| Error::invalid("head", "the model has no head"))?;
                let x = self.tower_input(*preset, m.seg.clip_cfg.vision.patch_size)?;
                let out = m
                    .seg
                    .clip
                    .vision
                    .forward(&x, m.seg.head_cfg.layer, &mut |_, _| {})?;
                let (v, _) = repeat(*runs, || {
                    Ok((
                        head.refine(&out.dense, &out.inter)?,
                        head.background(&out.inter)?,
                    ))
                })?;
                let mut r = summary(&v);
                r["grid"] = json!(&out.dense.dims()[..2]);
                Ok(r)
            }
            Step::Segment {
                preset,
                refine,
                runs,
            } => {
                let labels = self.labels10()?;
                let m = self.model()?;
                let feats = self.features(*preset)?;
                let opts = SegmentOptions {
                    mode: if m.seg.has_head() {
                        Mode::Dinoiser
                    } else {
                        Mode::MaskClip
                    },
                    background: Some(LABELS10.len() - 1),
                    output_size: None,
                    refine: *refine,
                };
                let (v, s) = repeat(*runs, || m.seg.segment(feats, &labels, &opts))?;
                let mut r = summary(&v);
                r["output"] = json!([s.height, s.width]);
                r["labels"] = json!(LABELS10.len());
                Ok(r)
            }
            Step::Mode { preset, mode, runs } => {
                let m = self.model()?;
                let feats = self.features(*preset)?;
                let (v, _) = repeat(*runs, || {
                    let mut f = feats.clone();
                    for w in &mut f.windows {
                        w.variants.clear();
                    }
                    m.seg.prepare_mode(&mut f, *mode)
                })?;
                let mut r = summary(&v);
                r["windows"] = json!(feats.windows.len());
                Ok(r)
            }
            Step::Kmeans { preset, k, runs } => {
                let m = self.model()?;
                let feats = self.features(*preset)?;
                let kind = if m.seg.has_head() {
                    FeatureKind::Refined
                } else {
                    FeatureKind::Raw
                };
                let opts = KMeansOptions::new(*k);
                let (v, km) = repeat(*runs, || kmeans_tensor(&feats.patch_grid(kind)?, &opts))?;
                let mut r = summary(&v);
                r["iterations"] = json!(km.iterations);
                r["points"] = json!(km.assignments.len());
                Ok(r)
            }
            Step::Profile { preset, runs } => {
                let m = self.model()?;
                let x = self.tower_input(*preset, m.seg.clip_cfg.vision.patch_size)?;
                profile::profile_tower(&m.seg, &x, *runs)
            }
            Step::Kernels { tokens, runs } => kernels::kernels(*tokens, *runs),
            Step::Ceiling { runs } => kernels::ceiling(*runs),
        }
    }

    fn load(
        &mut self,
        label: &str,
        names: &[String],
        compute: ComputePath,
        runs: Runs,
    ) -> Result<Value> {
        let mut files = Vec::with_capacity(names.len());
        for n in names {
            let i = self.files.iter().position(|(f, _)| f == n).ok_or_else(|| {
                Error::invalid("files", format!("{n} was not added before the load step"))
            })?;
            files.push(self.files.swap_remove(i));
        }
        self.files.clear();
        self.model = None;
        self.features.clear();
        self.labels10 = None;
        let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
        let (mut parse, mut build) = (Vec::new(), Vec::new());
        let mut kept = None;
        let mut storage = Value::Null;
        let n = runs.runs.max(1) + usize::from(runs.warmup);
        for i in 0..n {
            drop(kept.take()); // free the previous model before building the next
            let (p_ms, bundle) = timed(|| load_model_files(&files))?;
            if storage.is_null() {
                storage = storage_summary(&bundle);
            }
            let (b_ms, loaded) = timed(|| Segmenter::from_bundle(bundle, &Device::Cpu, compute))?;
            if i >= usize::from(runs.warmup) {
                parse.push(p_ms);
                build.push(b_ms);
            }
            kept = Some(loaded);
        }
        drop(files);
        let seg = kept.ok_or_else(|| Error::invalid("runs", "no run"))?;
        self.model = Some(Loaded {
            label: label.to_string(),
            compute,
            seg,
        });
        let total: Vec<f64> = parse.iter().zip(&build).map(|(a, b)| a + b).collect();
        let mut r = summary(&total);
        r["bytes"] = json!(bytes);
        r["parse"] = summary(&parse);
        r["build"] = summary(&build);
        r["storage"] = storage;
        Ok(r)
    }
}

/// Tensor count and bytes per stored element type.
fn storage_summary(b: &Bundle) -> Value {
    let mut m: HashMap<String, (usize, usize)> = HashMap::new();
    for (_, s) in b.store.iter() {
        let e = m.entry(s.dtype_name()).or_default();
        e.0 += 1;
        e.1 += s.storage_bytes();
    }
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort();
    json!(v
        .into_iter()
        .map(|(k, (n, bytes))| json!({"dtype": k, "tensors": n, "bytes": bytes}))
        .collect::<Vec<_>>())
}

//! Model loading and the segmentation run shared by `segment`, `eval` and `bench`: weight files
//! from the command line → `clipdino::loaders::Bundle` → `Segmenter`, label embeddings with
//! truncation warnings, and image encoding with a progress bar.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use clipdino::loaders::{self, human_bytes, Bundle, LoadBudget};
use clipdino::pipeline::{
    self, EncodeOptions, ImageFeatures, Mode, Progress, Refine, SegmentOptions, Segmentation,
    Segmenter, Window,
};
use clipdino::templates::TemplateSet;
use clipdino::tokenizer::ClipTokenizer;
use clipdino::ComputePath;
use clipdino_gpu::{DeviceChoice, Gpu, GpuError, GpuVision};
use image::RgbImage;

use crate::files;
use crate::photo;
use crate::progress;

/// Where the weights come from.
#[derive(Args, Clone, Default)]
pub struct ModelArgs {
    /// A GGUF bundle written by `clipdino convert`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["clip", "config", "head"])]
    pub model: Option<PathBuf>,
    /// open_clip weights (`open_clip_model.safetensors` or `open_clip_pytorch_model.bin`).
    #[arg(long, value_name = "FILE")]
    pub clip: Option<PathBuf>,
    /// `open_clip_config.json` or transformers' `config.json` for --clip (default: inferred from
    /// the weight shapes, exact GELU).
    #[arg(long, value_name = "FILE", requires = "clip")]
    pub config: Option<PathBuf>,
    /// CLIP-DINOiser checkpoint `last.pt` for --clip.
    #[arg(long, value_name = "FILE", requires = "clip")]
    pub head: Option<PathBuf>,
    /// Matrix multiplication: dequantize to f32 at load, keep candle's quantized kernels, or
    /// the integer kernel of the browser app (10-bit weights, 13-bit activations, exact sums).
    #[arg(long, value_enum, default_value_t = ComputePath::F32)]
    pub compute: ComputePath,
    /// Where the image tower runs: cpu; gpu (any WebGPU-capable adapter, CPU emulations such as
    /// lavapipe included, after a self-check); auto (a hardware GPU that passes the self-check,
    /// else the CPU). The GPU computes in f32; a GPU failure falls back to the CPU with a warning.
    #[arg(long, default_value_t = DeviceChoice::Cpu, value_name = "DEVICE")]
    pub device: DeviceChoice,
    #[command(flatten)]
    pub budget: BudgetArgs,
}

/// The memory budget of loading the weight files (`clipdino::loaders::LoadBudget`).
#[derive(Args, Clone)]
pub struct BudgetArgs {
    /// Most memory loading the weights may take, in MB, all files together (the default holds
    /// ViT-B/16 in f32 with room to spare; files asking for more are refused before reading).
    #[arg(long, value_name = "MB", default_value_t = LoadBudget::DEFAULT.max_bytes / 1_000_000)]
    pub load_budget_mb: u64,
}

impl Default for BudgetArgs {
    fn default() -> Self {
        Self {
            load_budget_mb: LoadBudget::DEFAULT.max_bytes / 1_000_000,
        }
    }
}

impl BudgetArgs {
    pub fn budget(&self) -> LoadBudget {
        LoadBudget::with_max_bytes(self.load_budget_mb.saturating_mul(1_000_000))
    }
}

/// How the image is processed (shared by `segment` and `eval`).
#[derive(Args, Clone)]
pub struct PipelineArgs {
    /// Features: CLIP-DINOiser (needs the head), raw MaskCLIP, or a training-free last-block
    /// method (ClearCLIP, NACLIP, SCLIP).
    #[arg(long, value_enum, default_value_t = Mode::Dinoiser)]
    pub mode: Mode,
    /// Refinement of the probabilities: none, pamr (10 iterations) or pamr:N.
    #[arg(long, default_value_t = Refine::None, value_parser = parse_refine, value_name = "REFINE")]
    pub refine: Refine,
    /// PAMR iterations (implies --refine pamr).
    #[arg(long, value_name = "N")]
    pub pamr_iterations: Option<usize>,
    /// Resize the image so its short side has this many pixels (aspect kept).
    #[arg(long, default_value_t = 448, value_name = "PX")]
    pub short_side: usize,
    /// Sliding-window side in pixels (mmseg `slide`; the paper uses 448 with stride 224).
    #[arg(
        long,
        value_name = "PX",
        requires = "stride",
        conflicts_with = "full_res"
    )]
    pub window: Option<usize>,
    /// Sliding-window stride in pixels.
    #[arg(long, value_name = "PX", requires = "window")]
    pub stride: Option<usize>,
    /// Feed the image at its own resolution in one pass (the upstream demo).
    #[arg(long)]
    pub full_res: bool,
    /// Prompt templates averaged per label.
    #[arg(long, value_enum, default_value_t = TemplateSet::Full)]
    pub templates: TemplateSet,
}

fn parse_refine(s: &str) -> std::result::Result<Refine, String> {
    s.parse().map_err(|e: clipdino::Error| e.to_string())
}

/// Encode + segment options resolved against a loaded model.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub encode: EncodeOptions,
    pub segment: SegmentOptions,
}

impl PipelineArgs {
    pub fn encode_options(&self) -> Result<EncodeOptions> {
        if self.full_res {
            return Ok(EncodeOptions {
                short_side: None,
                window: None,
            });
        }
        if self.short_side == 0 {
            bail!("--short-side must be a positive number of pixels");
        }
        let window = match (self.window, self.stride) {
            (Some(size), Some(stride)) => {
                if size == 0 || stride == 0 || stride > size {
                    bail!("--window {size} --stride {stride}: both must be positive and the stride at most the window");
                }
                Some(Window { size, stride })
            }
            _ => None,
        };
        Ok(EncodeOptions {
            short_side: Some(self.short_side),
            window,
        })
    }

    /// The refinement: `--refine`, or PAMR with `--pamr-iterations`.
    pub fn refine(&self) -> Result<Refine> {
        let r = match self.pamr_iterations {
            Some(iterations) => Refine::Pamr { iterations },
            None => self.refine,
        };
        r.validate()
            .map_err(|e| anyhow!("--pamr-iterations: {e}"))?;
        Ok(r)
    }

    /// Check the options against the model: DINOiser mode needs the head.
    pub fn options(&self, engine: &Engine, background: Option<usize>) -> Result<RunOptions> {
        self.options_for(engine, background, &[self.mode])
    }

    /// [`Self::options`] for a run of `modes` instead of `--mode` (`eval --modes`): each of
    /// them is checked against the model, `--mode` is not.
    pub fn options_for(
        &self,
        engine: &Engine,
        background: Option<usize>,
        modes: &[Mode],
    ) -> Result<RunOptions> {
        for &m in modes {
            check_mode(engine, m)?;
        }
        Ok(RunOptions {
            encode: self.encode_options()?,
            segment: SegmentOptions {
                mode: self.mode,
                background,
                output_size: None,
                refine: self.refine()?,
            },
        })
    }
}

/// DINOiser mode needs the head (which QuickGELU weights can never have).
pub fn check_mode(engine: &Engine, mode: Mode) -> Result<()> {
    if mode.needs_head() && !engine.segmenter.has_head() {
        let others = Mode::ALL
            .iter()
            .filter(|m| !m.needs_head())
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ");
        let act = engine.segmenter.clip_cfg.activation;
        if act != clipdino::config::Activation::Gelu {
            bail!(
                "{} has no CLIP-DINOiser head, and cannot have one: {}. Use another --mode ({others})",
                engine.source,
                clipdino::loaders::head_activation_refusal(act)
            );
        }
        bail!(
            "{} has no CLIP-DINOiser head: pass --head last.pt (or convert with it), or use another --mode ({others})",
            engine.source
        );
    }
    Ok(())
}

/// Read the weight files named on the command line, as `(file name, bytes)` for
/// `loaders::load_model_files_with`. Files larger together than the load budget are refused
/// from their sizes, before anything is read.
pub fn read_model_inputs(
    clip: Option<&Path>,
    config: Option<&Path>,
    head: Option<&Path>,
    budget: &LoadBudget,
) -> Result<Vec<(String, Vec<u8>)>> {
    let named = [
        (clip, "weights file"),
        (config, "config file"),
        (head, "head checkpoint"),
    ];
    let mut total = 0u64;
    for (p, what) in named {
        if let Some(p) = p {
            let len = files::input_len(p, what)?;
            total = total.saturating_add(len);
            if total > budget.max_bytes {
                bail!(
                    "{what} {} is {}: the weight files come to {}, over the load budget of {} (--load-budget-mb)",
                    p.display(),
                    human_bytes(len),
                    human_bytes(total),
                    human_bytes(budget.max_bytes)
                );
            }
        }
    }
    let mut out = Vec::new();
    for (p, what) in named {
        if let Some(p) = p {
            out.push((p.display().to_string(), files::read_input(p, what)?));
        }
    }
    Ok(out)
}

/// The pipeline's error, with what to change on the command line when the image does not fit.
fn plan_words(e: clipdino::Error) -> anyhow::Error {
    match e {
        clipdino::Error::GridTooLarge { .. } => {
            anyhow!("{e}; use a smaller --short-side, or --window instead of --full-res")
        }
        e => anyhow!(e),
    }
}

/// A loaded model: the segmenter, the tokenizer, and how long loading took.
pub struct Engine {
    pub segmenter: Segmenter,
    pub tokenizer: ClipTokenizer,
    /// The weight file(s), for messages.
    pub source: String,
    pub load_seconds: f64,
    /// The image tower on a GPU (`--device gpu|auto`), if one passed the self-check.
    pub gpu: Option<GpuTower>,
}

/// A device that passed the self-check, with the model's image tower uploaded.
pub struct GpuTower {
    pub gpu: Gpu,
    pub vision: GpuVision,
}

impl GpuTower {
    /// Open the first adapter, self-check it, upload the tower of `bundle`. `None` for
    /// `--device cpu`, and for `auto` without a hardware GPU that passes (with a warning when
    /// one failed); an error for `--device gpu` without a usable adapter.
    fn open(choice: DeviceChoice, bundle: &Bundle) -> Result<Option<Self>> {
        if choice == DeviceChoice::Cpu {
            return Ok(None);
        }
        let attempt = || -> std::result::Result<Option<Self>, GpuError> {
            let gpu = clipdino_gpu::block_on(Gpu::new())?;
            if choice == DeviceChoice::Auto && gpu.is_cpu_emulation() {
                // Slower than the SIMD CPU path: not worth it.
                return Ok(None);
            }
            clipdino_gpu::block_on(clipdino_gpu::self_check(&gpu, bundle.clip.activation))?;
            let vb = clipdino::Vb::new(
                std::sync::Arc::new(bundle.store.clone()),
                Device::Cpu,
                ComputePath::F32,
            );
            let vision = GpuVision::new(&gpu, &vb.pp("visual"), &bundle.clip)?;
            Ok(Some(Self { gpu, vision }))
        };
        match (attempt(), choice) {
            (Ok(t), _) => Ok(t),
            (Err(e), DeviceChoice::Gpu) => Err(anyhow!(e).context("--device gpu")),
            (Err(e), _) => {
                progress::warn(format!("{e}; the image tower runs on the CPU"));
                Ok(None)
            }
        }
    }
}

/// What an encode returns beyond the pipeline's features: the `ln_2` features per window (for
/// `--dump`).
pub struct Encoded {
    pub features: ImageFeatures,
    pub inter: Option<Vec<Tensor>>,
    pub seconds: f64,
}

impl Engine {
    pub fn load(args: &ModelArgs) -> Result<Self> {
        let t0 = Instant::now();
        let budget = args.budget.budget();
        let inputs = match (&args.model, &args.clip) {
            (Some(m), _) => read_model_inputs(Some(m), None, None, &budget)?,
            (None, Some(c)) => read_model_inputs(Some(c), args.config.as_deref(), args.head.as_deref(), &budget)?,
            (None, None) => bail!("no model given: pass --model model.gguf, or --clip weights [--config open_clip_config.json] [--head last.pt]"),
        };
        let source = inputs
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" + ");
        let sp = progress::spinner("loading weights");
        let bundle = loaders::load_model_files_with(&inputs, budget)?;
        drop(inputs);
        let gpu = GpuTower::open(args.device, &bundle);
        let engine = Self::from_bundle(bundle, args.compute, source, t0);
        sp.finish_and_clear();
        let mut engine = engine?;
        engine.gpu = gpu?;
        engine.load_seconds = t0.elapsed().as_secs_f64();
        Ok(engine)
    }

    pub fn from_bundle(
        bundle: Bundle,
        compute: ComputePath,
        source: String,
        t0: Instant,
    ) -> Result<Self> {
        let segmenter = Segmenter::from_bundle(bundle, &Device::Cpu, compute)?;
        let tokenizer = ClipTokenizer::embedded()?;
        Ok(Self {
            segmenter,
            tokenizer,
            source,
            load_seconds: t0.elapsed().as_secs_f64(),
            gpu: None,
        })
    }

    /// Where the image tower runs, for messages (`cpu`, or `gpu: <adapter>`).
    pub fn device(&self) -> String {
        match &self.gpu {
            Some(g) => format!("gpu: {}", g.gpu.describe()),
            None => "cpu".into(),
        }
    }

    /// L2-normalised label embeddings `[L, E]` (`ClipModel::embed_labels_checked`), with a
    /// warning for every label whose prompts exceed the 77-token context (they are truncated).
    pub fn embed_labels(&self, labels: &[String], set: TemplateSet) -> Result<Tensor> {
        let e = self
            .segmenter
            .clip
            .embed_labels_checked(&self.tokenizer, labels, set)
            .with_context(|| self.source.clone())?;
        for (label, _) in labels.iter().zip(&e.truncated).filter(|(_, &cut)| cut) {
            let short: String = label.chars().take(40).collect();
            let ell = if short.len() < label.len() { "…" } else { "" };
            progress::warn(format!(
                "label \"{short}{ell}\" is longer than the 77-token context in its prompts; it was truncated"
            ));
        }
        Ok(e.embeddings)
    }

    /// What encoding `img` with `opts` will do, checked against the pipeline's limits from the
    /// sizes alone (cheap; call it before slow work such as label embedding).
    pub fn plan(&self, img: &RgbImage, opts: &EncodeOptions) -> Result<pipeline::Plan> {
        pipeline::plan(
            img.height() as usize,
            img.width() as usize,
            opts,
            self.segmenter.clip_cfg.vision.patch_size,
        )
        .map_err(plan_words)
    }

    /// Encode an image (expensive); `keep_inter` also returns the head's input features.
    pub fn encode(
        &self,
        img: &RgbImage,
        opts: &EncodeOptions,
        keep_inter: bool,
    ) -> Result<Encoded> {
        let t0 = Instant::now();
        let seg = &self.segmenter;
        // Sizes and limits before the image becomes a tensor or is resized.
        self.plan(img, opts)?;
        let x = photo::image_to_tensor(img)?;
        let blocks = seg.clip_cfg.vision.layers as u64;
        let pb = progress::bar(blocks, "encoding image");
        let mut report = |p: Progress| {
            pb.set_length(blocks * p.windows as u64);
            if p.windows > 1 {
                pb.set_message(format!("window {}/{}", p.window + 1, p.windows));
            }
            pb.set_position((p.window * p.blocks + p.block) as u64);
        };
        let features = match &self.gpu {
            None => seg.encode_image(&x, opts, &mut report),
            Some(g) => {
                // A GPU failure (not a bad input, which the CPU would refuse too) is kept aside
                // and the image is encoded again on the CPU.
                let mut failure = None;
                let out = seg.encode_image_with(&x, opts, &mut report, &mut |pixels, layer, pr| {
                    let run = g
                        .vision
                        .forward(&g.gpu, &seg.clip.vision, pixels, layer, pr);
                    match clipdino_gpu::block_on(run) {
                        Ok(out) => Ok(out),
                        Err(GpuError::Model(e)) => Err(e),
                        Err(e) => {
                            let words = e.to_string();
                            failure = Some(e);
                            Err(clipdino::Error::config("device", words))
                        }
                    }
                });
                match failure {
                    None => out,
                    Some(e) => {
                        progress::warn(format!("{e}; encoding this image on the CPU instead"));
                        seg.encode_image(&x, opts, &mut report)
                    }
                }
            }
        };
        pb.finish_and_clear();
        let features = features.map_err(plan_words)?;
        let inter = keep_inter.then(|| {
            features
                .windows
                .iter()
                .filter_map(|w| w.inter.clone())
                .collect()
        });
        Ok(Encoded {
            features,
            inter,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Classify encoded features; the mode's last block is computed first if needed (one
    /// block per window, from the cached state).
    pub fn segment(
        &self,
        feats: &mut ImageFeatures,
        labels: &Tensor,
        opts: &SegmentOptions,
    ) -> Result<Segmentation> {
        self.segmenter.prepare_mode(feats, opts.mode)?;
        Ok(self.segmenter.segment(feats, labels, opts)?)
    }
}

//! Image → label map, split into an expensive, cached step and a cheap per-vocabulary step, as
//! the CLIP-DINOiser evaluation and demo code run it.
//!
//! * [`Segmenter::encode_image`]: resize the short side (optional), cut mmseg `slide` windows
//!   (optional), and per window run the CLIP image tower (MaskCLIP dense features + the `ln_2`
//!   output of block L−3), the DINOiser refinement and the background score → [`ImageFeatures`].
//! * [`Segmenter::segment`] / [`segment_features`]: per window `softmax(100·cos)` against the
//!   label embeddings (+ the background rule), bilinear ×patch upsampling, crop of the padding,
//!   window accumulation / averaging, resize to the output size, argmax → [`Segmentation`].
//!
//! References: wysoczanska/clip_dinoiser `models/clip_dinoiser/clip_dinoiser.py` (`forward`),
//! `demo.py` (full-resolution path: `F.interpolate(scale_factor=16)[..., :h, :w]`),
//! `segmentation/evaluation/clip_dinoiser_eval.py` and mmseg 0.x `slide_inference` (paper
//! protocol: short side 448, windows 448 / stride 224).

mod resize;
mod window;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

pub use resize::{resize_bilinear, resize_bilinear_vec, short_side_size, Rgba8Resize};
pub use window::{plan, slide_windows, PixelBox, Plan, Window, MAX_TOTAL_PATCHES};

use crate::clip::{self, ClipModel, LastBlock, Trunk};
use crate::config::{ClipConfig, HeadConfig};
use crate::dinoiser::{l2_normalize_last, DinoiserHead, DELTA, FOREGROUND_THRESHOLD};
use crate::error::{Error, Result};
use crate::loaders::Bundle;
pub use crate::pamr::Refine;
use crate::pamr::{pamr, working_size, PAMR_DILATIONS};
use crate::par;
use crate::weights::{ComputePath, Vb};
use resize::{resize_into, Placement};

/// Logit scale of the MaskCLIP / DINOiser classifier (`softmax(output * 100)` upstream; the
/// CLIP `logit_scale` parameter is not used).
pub const LOGIT_SCALE: f32 = 100.0;

/// Which dense features classify the pixels. Serialised (JSON, clap) as [`Mode::name`].
///
/// Every mode is a variant of the last vision block ([`LastBlock`]) on the same tokens entering
/// it, so switching mode on an encoded image costs one block ([`Segmenter::prepare_mode`]).
///
/// The CLIP-DINOiser head is applied to MaskCLIP features only (mode `dinoiser`): that is the
/// combination it was trained and published with (its background rule's δ = 0.99 is calibrated on
/// those probabilities), whereas ClearCLIP, NACLIP and SCLIP already mix patches with their own
/// last-block attention (NACLIP explicitly over a spatial neighbourhood) and no result is
/// published for pooling them a second time with the head's correlations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Mode {
    /// DINOiser-refined MaskCLIP features (+ the background rule when a background label is set).
    #[default]
    Dinoiser,
    /// Raw MaskCLIP features.
    #[cfg_attr(feature = "clap", value(name = "maskclip"))]
    MaskClip,
    /// ClearCLIP: last block = query–query attention, no residual, no feed-forward.
    #[cfg_attr(feature = "clap", value(name = "clearclip"))]
    ClearClip,
    /// NACLIP: last block = key–key attention + a Gaussian neighbourhood, no residual, no FFN.
    #[cfg_attr(feature = "clap", value(name = "naclip"))]
    NaClip,
    /// SCLIP: last block = q–q + k–k attention (summed), residual and feed-forward kept.
    #[cfg_attr(feature = "clap", value(name = "sclip"))]
    SClip,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Dinoiser,
        Mode::MaskClip,
        Mode::ClearClip,
        Mode::NaClip,
        Mode::SClip,
    ];

    /// The serialised name (JSON, CLI, share links).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Dinoiser => "dinoiser",
            Mode::MaskClip => "maskclip",
            Mode::ClearClip => "clearclip",
            Mode::NaClip => "naclip",
            Mode::SClip => "sclip",
        }
    }

    /// Display name (the paper's).
    pub fn title(self) -> &'static str {
        match self {
            Mode::Dinoiser => "CLIP-DINOiser",
            Mode::MaskClip => "MaskCLIP",
            Mode::ClearClip => "ClearCLIP",
            Mode::NaClip => "NACLIP",
            Mode::SClip => "SCLIP",
        }
    }

    /// One line for a setting or `--help`.
    pub fn description(self) -> &'static str {
        match self {
            Mode::Dinoiser => {
                "MaskCLIP features refined by the CLIP-DINOiser head (object-shaped regions, background detection)"
            }
            Mode::MaskClip => "raw MaskCLIP features: the last block's value path only, no attention",
            Mode::ClearClip => {
                "ClearCLIP: last block with query-query attention, no residual and no feed-forward"
            }
            Mode::NaClip => {
                "NACLIP: last block with key-key attention plus a Gaussian neighbourhood, no residual"
            }
            Mode::SClip => {
                "SCLIP: last block with query-query + key-key attention, residual and feed-forward kept"
            }
        }
    }

    /// The last-block variant whose features this mode classifies.
    pub fn last_block(self) -> LastBlock {
        match self {
            Mode::Dinoiser | Mode::MaskClip => LastBlock::MaskClip,
            Mode::ClearClip => LastBlock::ClearClip,
            Mode::NaClip => LastBlock::NaClip,
            Mode::SClip => LastBlock::SClip,
        }
    }

    /// Whether the mode needs the CLIP-DINOiser head.
    pub fn needs_head(self) -> bool {
        self == Mode::Dinoiser
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let all: Vec<_> = Mode::ALL.iter().map(|m| m.name()).collect();
                Error::invalid("mode", format!("`{s}` is not one of {}", all.join(", ")))
            })
    }
}

/// How the image is fed to the image tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Resize so the short side has this many pixels (aspect kept); `None` = full resolution.
    pub short_side: Option<usize>,
    /// Sliding windows; `None` = one pass over the whole (resized) image.
    pub window: Option<Window>,
}

impl EncodeOptions {
    /// Short side 224, one pass: a 14-patch short side, as CLIP was trained.
    pub fn fast() -> Self {
        Self {
            short_side: Some(224),
            window: None,
        }
    }
    /// Short side 336, one pass.
    pub fn balanced() -> Self {
        Self {
            short_side: Some(336),
            window: None,
        }
    }
    /// The paper's evaluation protocol: short side 448, windows 448 with stride 224.
    pub fn paper() -> Self {
        Self {
            short_side: Some(448),
            window: Some(Window {
                size: 448,
                stride: 224,
            }),
        }
    }
    /// The upstream demo: the image as it is, one pass.
    pub fn full_res() -> Self {
        Self {
            short_side: None,
            window: None,
        }
    }
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self::balanced()
    }
}

/// Named [`EncodeOptions`] presets (CLI flags, UI choices, URL state). Serialised (JSON, clap)
/// as [`Preset::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Preset {
    Fast,
    #[default]
    Balanced,
    Paper,
    FullRes,
}

impl Preset {
    pub const ALL: [Preset; 4] = [
        Preset::Fast,
        Preset::Balanced,
        Preset::Paper,
        Preset::FullRes,
    ];

    pub fn options(self) -> EncodeOptions {
        match self {
            Preset::Fast => EncodeOptions::fast(),
            Preset::Balanced => EncodeOptions::balanced(),
            Preset::Paper => EncodeOptions::paper(),
            Preset::FullRes => EncodeOptions::full_res(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Fast => "fast",
            Preset::Balanced => "balanced",
            Preset::Paper => "paper",
            Preset::FullRes => "full-res",
        }
    }

    /// The short side the image is resized to (`None`: kept as it is).
    pub fn short_side(self) -> Option<usize> {
        self.options().short_side
    }

    /// The sliding window, if the preset uses one.
    pub fn window(self) -> Option<Window> {
        self.options().window
    }
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "preset",
                    format!("`{s}` is not one of fast, balanced, paper, full-res"),
                )
            })
    }
}

/// Encoding progress: block `block` of `blocks` done in window `window` (0-based) of `windows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub window: usize,
    pub windows: usize,
    pub block: usize,
    pub blocks: usize,
}

/// What the image tower (+ head) gives for one window.
#[derive(Debug, Clone)]
pub struct WindowOutputs {
    /// MaskCLIP features `[gh, gw, E]`, not normalised.
    pub dense: Tensor,
    /// DINOiser-refined features `[gh, gw, E]` (None without a head).
    pub refined: Option<Tensor>,
    /// Foreground score `[gh, gw]` in (0, 1) (None without a head).
    pub bkg: Option<Tensor>,
    /// The `ln_2` features `[gh, gw, C]` the head reads (None when the encoder does not keep them).
    pub inter: Option<Tensor>,
    /// The tokens entering the last block (None when the encoder does not keep them).
    pub trunk: Option<Trunk>,
}

/// Cached features of one window.
#[derive(Debug, Clone)]
pub struct WindowFeatures {
    /// Pixel box in the processed (resized) image.
    pub pixels: PixelBox,
    /// Patch grid `(gh, gw)` = window size rounded up to whole patches (zero padding).
    pub grid: (usize, usize),
    pub dense: Tensor,
    pub refined: Option<Tensor>,
    pub bkg: Option<Tensor>,
    /// `ln_2` features of block `HeadConfig::layer` `[gh, gw, C]` (for dumps and analysis).
    pub inter: Option<Tensor>,
    /// The tokens entering the last block, from which [`Segmenter::prepare_mode`] computes the
    /// other modes' features.
    pub trunk: Option<Trunk>,
    /// Dense features `[gh, gw, E]` of the last-block variants computed so far besides MaskCLIP.
    pub variants: Vec<(LastBlock, Tensor)>,
}

impl WindowFeatures {
    /// The features `mode` classifies, if they have been computed.
    pub fn features(&self, mode: Mode) -> Result<&Tensor> {
        match mode {
            Mode::MaskClip => Ok(&self.dense),
            Mode::Dinoiser => self.refined.as_ref().ok_or_else(no_head),
            m => self
                .variants
                .iter()
                .find(|(v, _)| *v == m.last_block())
                .map(|(_, t)| t)
                .ok_or_else(|| {
                    Error::invalid(
                        "mode",
                        format!(
                            "{} features have not been computed for these windows \
                             (Segmenter::prepare_mode)",
                            m.title()
                        ),
                    )
                }),
        }
    }
}

/// Which dense features [`ImageFeatures::patch_grid`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    /// MaskCLIP features.
    Raw,
    /// DINOiser-refined features.
    Refined,
    /// The features a mode classifies (computed by [`Segmenter::prepare_mode`] for the
    /// last-block variants).
    Mode(Mode),
}

/// Everything [`Segmenter::segment`] needs; computed once per image and options.
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    /// Original image size.
    pub image_height: usize,
    pub image_width: usize,
    /// Processed (resized) image size; windows live in these coordinates.
    pub height: usize,
    pub width: usize,
    pub patch: usize,
    pub embed_dim: usize,
    pub options: EncodeOptions,
    pub windows: Vec<WindowFeatures>,
    /// The processed image `[3, h, w]` (RGB in [0, 1]) at PAMR's working size
    /// ([`crate::pamr::working_size`] of `height × width`), guiding [`Refine::Pamr`].
    pub guide: Option<Tensor>,
}

/// What [`segment_features`] does with the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentOptions {
    pub mode: Mode,
    /// Index of the background label: in [`Mode::Dinoiser`] an uncertain patch
    /// (max probability `< δ = 0.99`) the head scores as background (`≤ 0.5`) gets background
    /// probability 1.0, as upstream `apply_found`. `None` disables the rule.
    pub background: Option<usize>,
    /// Output `(height, width)`; `None` = the original image size.
    pub output_size: Option<(usize, usize)>,
    /// Refinement of the window-averaged probabilities (at the processed size, capped), before
    /// the resize to the output size.
    pub refine: Refine,
}

/// A segmentation at output resolution.
#[derive(Debug, Clone)]
pub struct Segmentation {
    pub height: usize,
    pub width: usize,
    /// Argmax label per pixel, row-major `height · width`.
    pub labels: Vec<u32>,
    /// Probability of the chosen label per pixel.
    pub confidence: Vec<f32>,
    /// Window-averaged probabilities `[L, height, width]`.
    pub probs: Tensor,
    /// Patch-level probabilities per window `[L, gh, gw]` (after the background rule).
    pub patch_probs: Vec<Tensor>,
}

impl ImageFeatures {
    /// Whether the features `mode` classifies are present in every window.
    pub fn has_mode(&self, mode: Mode) -> bool {
        self.windows.iter().all(|w| w.features(mode).is_ok())
            && (mode != Mode::Dinoiser || self.has_refined())
    }

    /// Whether DINOiser-refined features (and background scores) are present.
    pub fn has_refined(&self) -> bool {
        self.windows
            .iter()
            .all(|w| w.refined.is_some() && w.bkg.is_some())
    }

    /// Patch grid `(gh, gw)` of the whole processed image (rounded up to whole patches).
    pub fn grid(&self) -> (usize, usize) {
        (
            self.height.div_ceil(self.patch),
            self.width.div_ceil(self.patch),
        )
    }

    /// Dense features `[gh, gw, E]` over the whole processed image. With windows, every window
    /// patch goes to the global cell holding its centre and overlapping patches are averaged
    /// (a cell no centre falls in takes the patch with the nearest centre).
    pub fn patch_grid(&self, kind: FeatureKind) -> Result<Tensor> {
        let (gh, gw) = self.grid();
        let e = self.embed_dim;
        let p = self.patch;
        let mut acc = vec![0f32; gh * gw * e];
        let mut count = vec![0u32; gh * gw];
        let mut sources = Vec::with_capacity(self.windows.len());
        for w in &self.windows {
            let t = match kind {
                FeatureKind::Raw => &w.dense,
                FeatureKind::Refined => w.refined.as_ref().ok_or_else(no_head)?,
                FeatureKind::Mode(m) => w.features(m)?,
            };
            let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let (wh, ww) = w.grid;
            for i in 0..wh {
                let cy = (w.pixels.y0 + i * p + p / 2) / p;
                for j in 0..ww {
                    let cx = (w.pixels.x0 + j * p + p / 2) / p;
                    if cy >= gh || cx >= gw {
                        continue;
                    }
                    let cell = cy * gw + cx;
                    count[cell] += 1;
                    for (a, b) in acc[cell * e..][..e]
                        .iter_mut()
                        .zip(&v[(i * ww + j) * e..][..e])
                    {
                        *a += b;
                    }
                }
            }
            sources.push(v);
        }
        for cell in 0..gh * gw {
            let row = &mut acc[cell * e..][..e];
            if count[cell] > 0 {
                let n = count[cell] as f32;
                row.iter_mut().for_each(|a| *a /= n);
                continue;
            }
            // nearest window patch by centre distance (in pixels, squared)
            let (cy, cx) = (
                (cell / gw * p + p / 2) as i64,
                (cell % gw * p + p / 2) as i64,
            );
            let mut best: Option<(i64, usize, usize)> = None;
            for (wi, w) in self.windows.iter().enumerate() {
                for i in 0..w.grid.0 {
                    for j in 0..w.grid.1 {
                        let dy = (w.pixels.y0 + i * p + p / 2) as i64 - cy;
                        let dx = (w.pixels.x0 + j * p + p / 2) as i64 - cx;
                        let d = dy * dy + dx * dx;
                        if best.is_none_or(|b| d < b.0) {
                            best = Some((d, wi, i * w.grid.1 + j));
                        }
                    }
                }
            }
            if let Some((_, wi, k)) = best {
                row.copy_from_slice(&sources[wi][k * e..][..e]);
            }
        }
        let device = self
            .windows
            .first()
            .map(|w| w.dense.device().clone())
            .unwrap_or(Device::Cpu);
        Ok(Tensor::from_vec(acc, (gh, gw, e), &device)?)
    }

    /// Map a `gw × gh` grid map (e.g. K-Means clusters of [`Self::patch_grid`]) to an
    /// `out_w × out_h` pixel map of the *original* image: each pixel takes the cell of the
    /// processed image under it (padding cells never show).
    pub fn grid_to_pixels(&self, grid: &[u32], out_h: usize, out_w: usize) -> Result<Vec<u32>> {
        let (gh, gw) = self.grid();
        if grid.len() != gh * gw {
            return Err(Error::invalid(
                "grid",
                format!("{} cells for a {gh}×{gw} patch grid", grid.len()),
            ));
        }
        let cell = |o: usize, out: usize, size: usize, g: usize| -> usize {
            // pixel centre → processed-image pixel → patch cell
            let y = ((o as f64 + 0.5) * size as f64 / out as f64) as usize;
            (y.min(size - 1) / self.patch).min(g - 1)
        };
        let xs: Vec<usize> = (0..out_w).map(|x| cell(x, out_w, self.width, gw)).collect();
        let mut out = Vec::with_capacity(out_h * out_w);
        for y in 0..out_h {
            let cy = cell(y, out_h, self.height, gh);
            out.extend(xs.iter().map(|&cx| grid[cy * gw + cx]));
        }
        Ok(out)
    }
}

fn no_head() -> Error {
    Error::invalid(
        "mode",
        "these features were encoded without the CLIP-DINOiser head; use MaskCLIP mode",
    )
}

fn check_image(image: &Tensor) -> Result<(usize, usize)> {
    match image.dims() {
        [3, h, w] if *h > 0 && *w > 0 => Ok((*h, *w)),
        d => Err(Error::invalid(
            "image",
            format!("expected a [3, H, W] RGB tensor, got {d:?}"),
        )),
    }
}

/// An executor of the image tower for [`Segmenter::encode_image_with`]: normalised pixels
/// `[1, 3, H, W]`, the `ln_2` tap's block, and `progress(done, total)` per block.
pub type VisionExecutor<'a> =
    dyn FnMut(&Tensor, usize, &mut dyn FnMut(usize, usize)) -> Result<clip::VisionOutput> + 'a;

/// The windowed encoding loop with the per-window encoder as a closure (`Segmenter` passes the
/// CLIP tower + head; tests pass synthetic encoders). `encode(i, n, crop)` gets window `i` of
/// `n` as a `[3, h, w]` crop of the resized image and returns its features.
pub fn encode_with<F>(
    image_chw01: &Tensor,
    opts: &EncodeOptions,
    patch: usize,
    mut encode: F,
) -> Result<ImageFeatures>
where
    F: FnMut(usize, usize, &Tensor) -> Result<WindowOutputs>,
{
    let mut windows = Windows::new(image_chw01, opts, patch)?;
    while let Some((i, n, crop)) = windows.next_crop()? {
        let out = encode(i, n, &crop)?;
        windows.push(out)?;
    }
    windows.finish()
}

/// The state of a windowed encode between windows: the resized image, the window boxes, and
/// the features of the windows done so far. One definition of the loop for the closure form
/// ([`encode_with`]) and the stepwise form ([`ImageEncode`]).
struct Windows {
    image: Tensor,
    /// Original image size.
    size: (usize, usize),
    /// Processed (resized) image size.
    processed: (usize, usize),
    patch: usize,
    opts: EncodeOptions,
    boxes: Vec<PixelBox>,
    done: Vec<WindowFeatures>,
    embed_dim: usize,
}

impl Windows {
    fn new(image_chw01: &Tensor, opts: &EncodeOptions, patch: usize) -> Result<Self> {
        let (h, w) = check_image(image_chw01)?;
        if patch == 0 {
            return Err(Error::config("patch_size", "must be positive"));
        }
        // Sizes and limits first: nothing is resized or allocated for an image that cannot run.
        let Plan {
            height: ph,
            width: pw,
            windows: boxes,
            ..
        } = plan(h, w, opts, patch)?;
        let image = image_chw01.to_dtype(DType::F32)?;
        let image = if (ph, pw) != (h, w) {
            resize_bilinear(&image, ph, pw)?
        } else {
            image
        };
        Ok(Self {
            image,
            size: (h, w),
            processed: (ph, pw),
            patch,
            opts: *opts,
            done: Vec::with_capacity(boxes.len()),
            boxes,
            embed_dim: 0,
        })
    }

    /// The next window to encode: `(i, n, crop)`, or `None` when every window is done.
    fn next_crop(&self) -> Result<Option<(usize, usize, Tensor)>> {
        let i = self.done.len();
        let Some(b) = self.boxes.get(i) else {
            return Ok(None);
        };
        let crop = self
            .image
            .narrow(1, b.y0, b.height)?
            .narrow(2, b.x0, b.width)?;
        Ok(Some((i, self.boxes.len(), crop)))
    }

    /// The features of the window [`Self::next_crop`] gave, checked against its patch grid.
    fn push(&mut self, out: WindowOutputs) -> Result<()> {
        let i = self.done.len();
        let Some(&b) = self.boxes.get(i) else {
            return Err(Error::invalid(
                "windows",
                format!("features for window {i} of {}", self.boxes.len()),
            ));
        };
        let patch = self.patch;
        let grid = (b.height.div_ceil(patch), b.width.div_ceil(patch));
        let dims = out.dense.dims().to_vec();
        if dims.len() != 3 || (dims[0], dims[1]) != grid {
            return Err(Error::invalid(
                "dense",
                format!("window {i}: features {dims:?} for a {grid:?} patch grid"),
            ));
        }
        self.embed_dim = dims[2];
        if let Some(r) = &out.refined {
            if r.dims() != dims.as_slice() {
                return Err(Error::invalid(
                    "refined",
                    format!("window {i}: {:?} vs dense {dims:?}", r.dims()),
                ));
            }
        }
        if let Some(bk) = &out.bkg {
            if bk.dims() != [grid.0, grid.1] {
                return Err(Error::invalid(
                    "bkg",
                    format!("window {i}: {:?} for a {grid:?} patch grid", bk.dims()),
                ));
            }
        }
        self.done.push(WindowFeatures {
            pixels: b,
            grid,
            dense: out.dense,
            refined: out.refined,
            bkg: out.bkg,
            inter: out.inter,
            trunk: out.trunk,
            variants: Vec::new(),
        });
        Ok(())
    }

    fn finish(self) -> Result<ImageFeatures> {
        if self.done.len() != self.boxes.len() {
            return Err(Error::invalid(
                "windows",
                format!(
                    "{} of {} windows encoded",
                    self.done.len(),
                    self.boxes.len()
                ),
            ));
        }
        let ((h, w), (ph, pw)) = (self.size, self.processed);
        let (gh, gw) = working_size(ph, pw);
        let guide = if (gh, gw) != (ph, pw) {
            resize_bilinear(&self.image, gh, gw)?
        } else {
            self.image
        };
        Ok(ImageFeatures {
            image_height: h,
            image_width: w,
            height: ph,
            width: pw,
            patch: self.patch,
            embed_dim: self.embed_dim,
            options: self.opts,
            windows: self.done,
            guide: Some(guide),
        })
    }
}

/// An image encode one window at a time, for an image-tower executor that has to be awaited
/// between windows (a GPU in the browser, whose results arrive through the event loop): the
/// caller runs the tower on [`Self::next_pixels`] and hands its output to [`Self::push`], which
/// runs the head; [`Self::finish`] gives what [`Segmenter::encode_image`] gives.
pub struct ImageEncode<'s> {
    seg: &'s Segmenter,
    windows: Windows,
}

impl ImageEncode<'_> {
    /// The next window's normalised pixels `[1, 3, H, W]` for the tower, with its index and the
    /// window count, or `None` when every window is done.
    pub fn next_pixels(&self) -> Result<Option<(Tensor, usize, usize)>> {
        let patch = self.seg.clip_cfg.vision.patch_size;
        self.windows
            .next_crop()?
            .map(|(i, n, crop)| Ok((clip::preprocess(&crop, patch)?, i, n)))
            .transpose()
    }

    /// The block whose `ln_2` output the tower must tap (the head's input).
    pub fn layer(&self) -> usize {
        self.seg.head_cfg.layer
    }

    /// The tower's output for the window [`Self::next_pixels`] gave: the head runs on it here.
    pub fn push(&mut self, out: clip::VisionOutput) -> Result<()> {
        let (refined, bkg) = match &self.seg.head {
            Some(h) => par::install(|| -> Result<_> {
                Ok((
                    Some(h.refine(&out.dense, &out.inter)?),
                    Some(h.background(&out.inter)?),
                ))
            })?,
            None => (None, None),
        };
        self.windows.push(WindowOutputs {
            dense: out.dense,
            refined,
            bkg,
            inter: Some(out.inter),
            trunk: Some(out.trunk),
        })
    }

    /// The features of every window (an error if some window was not pushed).
    pub fn finish(self) -> Result<ImageFeatures> {
        self.windows.finish()
    }
}

/// Patch probabilities `[n, L]` (row-major Vec): `softmax(100 · F̂ · T̂ᵀ)` with `F̂` the
/// L2-normalised features `[n, E]` and `labels` the normalised label embeddings `[L, E]`.
pub fn patch_probabilities(features: &Tensor, labels: &Tensor) -> Result<Vec<f32>> {
    let f = l2_normalize_last(&features.to_dtype(DType::F32)?)?;
    let logits = (f.matmul(&labels.t()?)? * LOGIT_SCALE as f64)?;
    Ok(candle_nn::ops::softmax_last_dim(&logits)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// The CLIP-DINOiser background rule on patch probabilities `[n, L]`: where the best class
/// probability is `< δ` and the foreground score is not `> 0.5`, the background probability
/// becomes 1.0 (the other classes keep theirs, as upstream).
pub fn apply_background_rule(
    probs: &mut [f32],
    n_labels: usize,
    fg_score: &[f32],
    background: usize,
) {
    for (row, &b) in probs.chunks_exact_mut(n_labels).zip(fg_score) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // upstream: uncertain & ~(score > 0.5), so a NaN score counts as background too
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if max < DELTA && !(b > FOREGROUND_THRESHOLD) {
            row[background] = 1.0;
        }
    }
}

/// Classify cached features against `labels` (`[L, E]`, L2-normalised). Cheap: no encoder.
pub fn segment_features(
    feats: &ImageFeatures,
    labels: &Tensor,
    opts: &SegmentOptions,
) -> Result<Segmentation> {
    let n_labels = match labels.dims() {
        [l, e] if *l > 0 && *e == feats.embed_dim => *l,
        d => {
            return Err(Error::invalid(
                "labels",
                format!(
                    "expected [L, {}] label embeddings with L ≥ 1, got {d:?}",
                    feats.embed_dim
                ),
            ))
        }
    };
    if let Some(bg) = opts.background {
        if bg >= n_labels {
            return Err(Error::invalid(
                "background",
                format!("label index {bg} but only {n_labels} labels"),
            ));
        }
    }
    if feats.windows.is_empty() {
        return Err(Error::invalid("features", "no windows"));
    }
    let labels = labels.to_dtype(DType::F32)?;
    let (ph, pw) = (feats.height, feats.width);
    let p = feats.patch;
    let mut acc = vec![0f32; n_labels * ph * pw];
    let mut count = vec![0u32; ph * pw];
    let mut patch_probs = Vec::with_capacity(feats.windows.len());
    for w in &feats.windows {
        let (gh, gw) = w.grid;
        let n = gh * gw;
        let f = w.features(opts.mode)?;
        let e = f.dim(2)?;
        let mut probs = patch_probabilities(&f.reshape((n, e))?, &labels)?;
        if let (Mode::Dinoiser, Some(bg)) = (opts.mode, opts.background) {
            let b = w.bkg.as_ref().ok_or_else(no_head)?;
            let b = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            apply_background_rule(&mut probs, n_labels, &b, bg);
        }
        // [n, L] → [L, gh, gw]
        let mut planes = vec![0f32; n_labels * n];
        for (k, row) in probs.chunks_exact(n_labels).enumerate() {
            for (l, &v) in row.iter().enumerate() {
                planes[l * n + k] = v;
            }
        }
        // upsample ×patch to the padded window, keep the unpadded part, accumulate
        let b = w.pixels;
        let place = Placement {
            rows: b.height,
            cols: b.width,
            dst_h: ph,
            dst_w: pw,
            y0: b.y0,
            x0: b.x0,
            accumulate: true,
        };
        resize_into(&planes, n_labels, gh, gw, gh * p, gw * p, &mut acc, place);
        for y in b.y0..b.y0 + b.height {
            for c in &mut count[y * pw + b.x0..][..b.width] {
                *c += 1;
            }
        }
        patch_probs.push(Tensor::from_vec(planes, (n_labels, gh, gw), f.device())?);
    }
    if feats.windows.len() > 1 {
        for plane in acc.chunks_exact_mut(ph * pw) {
            for (v, &c) in plane.iter_mut().zip(&count) {
                // every pixel is covered by construction (stride ≤ window)
                *v /= c.max(1) as f32;
            }
        }
    }
    let (oh, ow) = opts
        .output_size
        .unwrap_or((feats.image_height, feats.image_width));
    if oh == 0 || ow == 0 {
        return Err(Error::invalid("output_size", format!("{ow}×{oh}")));
    }
    let (acc, (ph, pw)) = match opts.refine {
        Refine::None => (acc, (ph, pw)),
        Refine::Pamr { iterations } => {
            opts.refine.validate()?;
            let guide = feats.guide.as_ref().ok_or_else(|| {
                Error::invalid(
                    "refine",
                    "these features were encoded without a guide image",
                )
            })?;
            let (c, gh, gw) = guide.dims3()?;
            let mut m = if (gh, gw) != (ph, pw) {
                resize_bilinear_vec(&acc, n_labels, ph, pw, gh, gw)?
            } else {
                acc
            };
            let img = guide
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            pamr(
                &img,
                c,
                &mut m,
                n_labels,
                (gh, gw),
                iterations,
                &PAMR_DILATIONS,
            )?;
            (m, (gh, gw))
        }
    };
    let probs = if (oh, ow) != (ph, pw) {
        resize_bilinear_vec(&acc, n_labels, ph, pw, oh, ow)?
    } else {
        acc
    };
    let hw = oh * ow;
    let mut best = vec![0u32; hw];
    let mut conf = probs[..hw].to_vec();
    for l in 1..n_labels {
        for ((b, c), &v) in best
            .iter_mut()
            .zip(conf.iter_mut())
            .zip(&probs[l * hw..][..hw])
        {
            // strict: ties keep the lowest index, as torch.argmax
            if v > *c {
                *c = v;
                *b = l as u32;
            }
        }
    }
    let device = feats.windows[0].dense.device().clone();
    Ok(Segmentation {
        height: oh,
        width: ow,
        labels: best,
        confidence: conf,
        probs: Tensor::from_vec(probs, (n_labels, oh, ow), &device)?,
        patch_probs,
    })
}

/// CLIP image tower + optional CLIP-DINOiser head.
pub struct Segmenter {
    pub clip: ClipModel,
    pub head: Option<DinoiserHead>,
    /// Head shapes; without a head it still names the block whose `ln_2` output is tapped.
    pub head_cfg: HeadConfig,
    pub clip_cfg: ClipConfig,
}

impl Segmenter {
    /// `vb` is the bundle root (`visual.*`, text tower, `dinoiser.*`); `head = None` builds a
    /// MaskCLIP-only segmenter.
    pub fn new(vb: &Vb, clip_cfg: &ClipConfig, head: Option<&HeadConfig>) -> Result<Self> {
        // The loaders check the same; a segmenter built by hand must not skip it (a head on
        // QuickGELU weights would give plausible-looking, wrong masks).
        if let Some(h) = head {
            h.validate(clip_cfg)?;
        }
        let clip = ClipModel::new(vb, clip_cfg)?;
        let head_cfg = head
            .cloned()
            .unwrap_or_else(|| HeadConfig::for_clip(clip_cfg, 256));
        let head = match head {
            Some(h) => Some(DinoiserHead::new(&vb.pp("dinoiser"), h)?),
            None => None,
        };
        Ok(Self {
            clip,
            head,
            head_cfg,
            clip_cfg: clip_cfg.clone(),
        })
    }

    /// Build from a loaded [`Bundle`] (consumed, so the weights are not copied).
    pub fn from_bundle(bundle: Bundle, device: &Device, path: ComputePath) -> Result<Self> {
        let Bundle { clip, head, store } = bundle;
        let vb = Vb::new(Arc::new(store), device.clone(), path);
        Self::new(&vb, &clip, head.as_ref())
    }

    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Run the image tower (+ head) on `image_chw01` (`[3, H, W]`, RGB in [0, 1]).
    pub fn encode_image(
        &self,
        image_chw01: &Tensor,
        opts: &EncodeOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImageFeatures> {
        self.encode_image_with(image_chw01, opts, progress, &mut |pixels, layer, report| {
            self.clip.vision.forward(pixels, layer, report)
        })
    }

    /// [`Self::encode_image`] with another executor of the image tower: `tower(pixels, layer,
    /// progress)` must compute what [`clip::VisionTransformer::forward`] does (e.g. on a GPU);
    /// the head and everything after stay here.
    pub fn encode_image_with(
        &self,
        image_chw01: &Tensor,
        opts: &EncodeOptions,
        progress: &mut dyn FnMut(Progress),
        tower: &mut VisionExecutor,
    ) -> Result<ImageFeatures> {
        let mut enc = self.begin_encode(image_chw01, opts)?;
        while let Some((pixels, window, windows)) = enc.next_pixels()? {
            let mut report = |block: usize, blocks: usize| {
                progress(Progress {
                    window,
                    windows,
                    block,
                    blocks,
                })
            };
            let out = tower(&pixels, enc.layer(), &mut report)?;
            enc.push(out)?;
        }
        enc.finish()
    }

    /// Start an encode of `image_chw01` driven one window at a time (see [`ImageEncode`]):
    /// sizes and limits are checked and the image is resized here.
    pub fn begin_encode(
        &self,
        image_chw01: &Tensor,
        opts: &EncodeOptions,
    ) -> Result<ImageEncode<'_>> {
        Ok(ImageEncode {
            seg: self,
            windows: Windows::new(image_chw01, opts, self.clip_cfg.vision.patch_size)?,
        })
    }

    /// Compute the features of `mode` for every window of `feats` that lacks them, from the
    /// cached tokens entering the last block: one block per window, no new encode. A no-op for
    /// `maskclip` and `dinoiser` (computed by [`Self::encode_image`]).
    pub fn prepare_mode(&self, feats: &mut ImageFeatures, mode: Mode) -> Result<()> {
        if mode.needs_head() && !feats.has_refined() {
            return Err(no_head());
        }
        let variant = mode.last_block();
        if variant == LastBlock::MaskClip {
            return Ok(());
        }
        for w in &mut feats.windows {
            if w.variants.iter().any(|(v, _)| *v == variant) {
                continue;
            }
            let trunk = w.trunk.as_ref().ok_or_else(|| {
                Error::invalid(
                    "mode",
                    format!(
                        "{}: these features were encoded without the last block's input",
                        mode.title()
                    ),
                )
            })?;
            let dense = self.clip.vision.dense(trunk, variant)?;
            w.variants.push((variant, dense));
        }
        Ok(())
    }

    /// Classify cached features (see [`segment_features`]).
    pub fn segment(
        &self,
        feats: &ImageFeatures,
        labels: &Tensor,
        opts: &SegmentOptions,
    ) -> Result<Segmentation> {
        segment_features(feats, labels, opts)
    }
}

#[cfg(test)]
mod tests;

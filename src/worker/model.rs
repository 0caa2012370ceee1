//! The model as the worker holds it: a `clipdino` [`Segmenter`], the tokenizer, and a
//! per-label embedding cache. All tensor math is in the `clipdino` crate; this file only picks
//! options and converts results into the compact maps the UI draws.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use clipdino::kmeans::{kmeans_tensor, KMeansOptions};
use clipdino::loaders::{load_model_files, Bundle};
use clipdino::pipeline::{
    self, EncodeOptions, FeatureKind, ImageFeatures, SegmentOptions, Segmenter, Window,
};
use clipdino::tokenizer::ClipTokenizer;
use clipdino::{ComputePath, Stored, TensorStore, Vb};
use clipdino_gpu::{Gpu, GpuError, GpuVision};

use crate::protocol::{Mode, ModelInfo, Preset, Refine, TemplateSet, QUICK_GELU_NOTE};

/// A segmentation as the UI draws it: one byte per pixel at the processing size.
pub struct SegmentMaps {
    pub width: u32,
    pub height: u32,
    /// Label index per pixel.
    pub labels: Vec<u8>,
    /// Winning probability × 255 per pixel.
    pub confidence: Vec<u8>,
    /// Fraction of the pixels per label.
    pub areas: Vec<f32>,
}

/// K-Means cluster maps (one byte per pixel), raw and, with a head, refined.
pub struct ClusterMaps {
    pub width: u32,
    pub height: u32,
    pub raw: Vec<u8>,
    pub refined: Option<Vec<u8>>,
}

pub struct Model {
    pub seg: Segmenter,
    pub info: ModelInfo,
    /// How the linear layers compute (`Debug` text of the [`ComputePath`]): part of the label
    /// cache key, since another path gives (slightly) different embeddings.
    pub compute_path: String,
    tokenizer: ClipTokenizer,
    /// `(label, templates)` → L2-normalised embedding `[E]`, plus whether a prompt was cut.
    embeddings: RefCell<HashMap<(String, TemplateSet), (Tensor, bool)>>,
    /// The image tower's weights as loaded (`visual.*`, shared with nothing else once the
    /// model is built), for an upload to the GPU; kept only while the compute setting may use
    /// one (see `compute`).
    visual: RefCell<Option<Arc<TensorStore>>>,
}

/// Why an encode on the GPU failed.
pub enum GpuEncodeError {
    /// The GPU failed (device, driver, limits): the CPU can encode the same photo.
    Gpu(GpuError),
    /// The photo or options are refused (the CPU would refuse them too).
    Model(String),
}

fn storage_summary(bundle: &Bundle) -> String {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (_, t) in bundle.store.iter() {
        let name = match t {
            Stored::Float(_) | Stored::Quant(_) => t.dtype_name(),
        };
        *counts.entry(name).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter()
        .map(|(n, _)| n)
        .collect::<Vec<_>>()
        .join(" + ")
}

impl Model {
    /// Parse weight files (format detected from content) and build the model computing on
    /// `compute` (the app's [`crate::protocol::APP_COMPUTE`] unless the weight set says
    /// otherwise). `info` is completed here with what the files turned out to hold.
    /// `keep_visual`: keep the image tower's weights as loaded, for an upload to the GPU.
    pub fn build(
        files: Vec<(String, Vec<u8>)>,
        tokenizer: ClipTokenizer,
        mut info: ModelInfo,
        compute: ComputePath,
        keep_visual: bool,
    ) -> Result<Model, String> {
        let bundle = load_model_files(&files).map_err(|e| e.to_string())?;
        drop(files);
        let c = &bundle.clip;
        info.has_head = bundle.head.is_some();
        info.storage = storage_summary(&bundle);
        info.architecture = format!(
            "ViT {}×{}, patch {} · text {}×{} · embed {}{}",
            c.vision.layers,
            c.vision.width,
            c.vision.patch_size,
            c.text.layers,
            c.text.width,
            c.embed_dim,
            // OpenAI's weights: the head is refused on them (the loader says why).
            match c.activation {
                clipdino::Activation::Gelu => String::new(),
                clipdino::Activation::QuickGelu => format!(" · {QUICK_GELU_NOTE}"),
            }
        );
        if c.text.vocab_size < tokenizer.vocab_size() {
            return Err(format!(
                "{} holds a text tower for {} tokens, but the CLIP tokenizer has {}.",
                bundle.store.source(),
                c.text.vocab_size,
                tokenizer.vocab_size()
            ));
        }
        let tokenizer = tokenizer
            .with_context_length(c.text.context_length)
            .map_err(|e| e.to_string())?;
        let Bundle { clip, head, store } = bundle;
        let visual = keep_visual.then(|| Arc::new(visual_weights(&store)));
        let vb = Vb::new(Arc::new(store), Device::Cpu, compute);
        let compute_path = format!("{:?}", vb.compute_path());
        let seg = Segmenter::new(&vb, &clip, head.as_ref()).map_err(|e| e.to_string())?;
        Ok(Model {
            seg,
            info,
            compute_path,
            tokenizer,
            embeddings: RefCell::new(HashMap::new()),
            visual: RefCell::new(visual),
        })
    }

    /// Whether the image tower's weights as loaded are still here (for [`Self::upload_tower`]).
    pub fn has_visual_weights(&self) -> bool {
        self.visual.borrow().is_some()
    }

    /// Free the image tower's weights as loaded (the compute setting no longer uses a GPU).
    pub fn drop_visual_weights(&self) {
        self.visual.borrow_mut().take();
    }

    /// Upload the image tower to `gpu` (f32, see [`GpuVision`]); `None` when its weights
    /// were not kept.
    pub fn upload_tower(&self, gpu: &Gpu) -> Option<Result<GpuVision, GpuError>> {
        let store = self.visual.borrow().clone()?;
        let vb = Vb::new(store, Device::Cpu, ComputePath::F32);
        Some(GpuVision::new(gpu, &vb.pp("visual"), &self.seg.clip_cfg))
    }

    pub fn patch(&self) -> usize {
        self.seg.clip_cfg.vision.patch_size
    }

    /// Processing size and encoder options for a `w × h` photo (see [`plan`]).
    pub fn plan(&self, res: Preset, w: u32, h: u32) -> (u32, u32, EncodeOptions) {
        plan(res, w, h, self.patch())
    }

    /// A resized photo (`[3, h, w]` RGB in [0, 1], row-major) as the encoders take it.
    pub fn image(chw01: Vec<f32>, w: u32, h: u32) -> Result<Tensor, String> {
        Tensor::from_vec(chw01, (3, h as usize, w as usize), &Device::Cpu)
            .map_err(|e| e.to_string())
    }

    /// Encode on the CPU.
    pub fn encode(
        &self,
        image: &Tensor,
        opts: &EncodeOptions,
        progress: &mut dyn FnMut(pipeline::Progress),
    ) -> Result<ImageFeatures, String> {
        self.seg
            .encode_image(image, opts, progress)
            .map_err(|e| e.to_string())
    }

    /// Encode with the image tower on `gpu` (uploaded there as `tower`), window by window,
    /// awaiting each window's results; the head and everything after run on the CPU.
    pub async fn encode_gpu(
        &self,
        gpu: &Gpu,
        tower: &GpuVision,
        image: &Tensor,
        opts: &EncodeOptions,
        progress: &mut dyn FnMut(pipeline::Progress),
    ) -> Result<ImageFeatures, GpuEncodeError> {
        let refused = |e: clipdino::Error| GpuEncodeError::Model(e.to_string());
        let mut enc = self.seg.begin_encode(image, opts).map_err(refused)?;
        while let Some((pixels, window, windows)) = enc.next_pixels().map_err(refused)? {
            let mut report = |block: usize, blocks: usize| {
                progress(pipeline::Progress {
                    window,
                    windows,
                    block,
                    blocks,
                })
            };
            let out = tower
                .forward(
                    gpu,
                    &self.seg.clip.vision,
                    &pixels,
                    enc.layer(),
                    &mut report,
                )
                .await
                .map_err(|e| match e {
                    GpuError::Model(e) => refused(e),
                    e => GpuEncodeError::Gpu(e),
                })?;
            enc.push(out).map_err(refused)?;
        }
        enc.finish().map_err(refused)
    }

    /// Length of a label embedding.
    pub fn embed_dim(&self) -> usize {
        self.seg.clip_cfg.embed_dim
    }

    /// A cached label embedding as plain numbers (for storing it), with its `cut` flag.
    pub fn embedding(&self, label: &str, templates: TemplateSet) -> Option<(Vec<f32>, bool)> {
        let cache = self.embeddings.borrow();
        let (t, cut) = cache.get(&(label.to_string(), templates))?;
        Some((t.to_vec1::<f32>().ok()?, *cut))
    }

    /// Cache an embedding read back from storage (see `label_cache`): the same `[E]` f32
    /// tensor [`Model::embed`] would have made.
    pub fn insert_embedding(
        &self,
        label: &str,
        templates: TemplateSet,
        values: Vec<f32>,
        cut: bool,
    ) -> Result<(), String> {
        let n = self.embed_dim();
        if values.len() != n {
            return Err(format!("{} values for a {n}-dim embedding", values.len()));
        }
        let t = Tensor::from_vec(values, n, &Device::Cpu).map_err(|e| e.to_string())?;
        self.embeddings
            .borrow_mut()
            .insert((label.to_string(), templates), (t, cut));
        Ok(())
    }

    pub fn is_embedded(&self, label: &str, templates: TemplateSet) -> bool {
        self.embeddings
            .borrow()
            .contains_key(&(label.to_string(), templates))
    }

    /// Embed one label (cached). Returns whether a prompt had to be cut to the context length.
    pub fn embed(&self, label: &str, templates: TemplateSet) -> Result<bool, String> {
        let key = (label.to_string(), templates);
        if let Some((_, cut)) = self.embeddings.borrow().get(&key) {
            return Ok(*cut);
        }
        let (e, cut) = self
            .seg
            .clip
            .embed_labels_checked(&self.tokenizer, &[label.to_string()], templates)
            .and_then(|e| Ok((e.embeddings.squeeze(0)?, e.truncated[0])))
            .map_err(|e| format!("embedding “{label}”: {e}"))?;
        self.embeddings.borrow_mut().insert(key, (e, cut));
        Ok(cut)
    }

    /// Stack cached embeddings into `[L, E]` (every label must have been embedded).
    pub fn label_matrix(
        &self,
        labels: &[String],
        templates: TemplateSet,
    ) -> Result<Tensor, String> {
        let cache = self.embeddings.borrow();
        let rows: Vec<Tensor> = labels
            .iter()
            .map(|l| {
                cache
                    .get(&(l.clone(), templates))
                    .map(|(t, _)| t.clone())
                    .ok_or_else(|| format!("“{l}” is not embedded"))
            })
            .collect::<Result<_, _>>()?;
        Tensor::stack(&rows, 0).map_err(|e| e.to_string())
    }

    /// The mode these features can serve for `wanted`: MaskCLIP instead of CLIP-DINOiser when
    /// they were encoded without a head.
    pub fn usable_mode(feats: &ImageFeatures, wanted: Mode) -> Mode {
        if wanted.needs_head() && !feats.has_refined() {
            Mode::MaskClip
        } else {
            wanted
        }
    }

    /// Make sure the features of `mode` are in `feats`: computed from the cached trunk (one
    /// last block per window, no encode) when they are not there yet. Returns whether a block
    /// was computed.
    pub fn prepare_mode(&self, feats: &mut ImageFeatures, mode: Mode) -> Result<bool, String> {
        if feats.has_mode(mode) {
            return Ok(false);
        }
        self.seg
            .prepare_mode(feats, mode)
            .map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Segment cached features into the maps the UI draws (`mode` prepared, see
    /// [`Model::prepare_mode`]).
    pub fn segment(
        &self,
        feats: &ImageFeatures,
        labels: &Tensor,
        mode: Mode,
        refine: Refine,
        background: Option<usize>,
    ) -> Result<SegmentMaps, String> {
        let opts = SegmentOptions {
            mode,
            background,
            output_size: Some((feats.height, feats.width)),
            refine,
        };
        let s = self
            .seg
            .segment(feats, labels, &opts)
            .map_err(|e| e.to_string())?;
        let n_labels = labels.dim(0).map_err(|e| e.to_string())?;
        let areas = clipdino::overlay::area_fractions(&s.labels, n_labels);
        let map: Vec<u8> = s.labels.iter().map(|&l| l.min(255) as u8).collect();
        let conf: Vec<u8> = s
            .confidence
            .iter()
            .map(|&c| (c.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        Ok(SegmentMaps {
            width: s.width as u32,
            height: s.height as u32,
            labels: map,
            confidence: conf,
            areas,
        })
    }

    /// K-Means of the raw MaskCLIP patch features and of those of `mode` (prepared, see
    /// [`Model::prepare_mode`]; none for MaskCLIP itself), as per-pixel cluster maps of the
    /// processed image. Clusters are numbered by size in the raw map, and the mode's clusters
    /// take the number of the raw cluster they overlap most.
    pub fn kmeans(
        &self,
        feats: &ImageFeatures,
        k: usize,
        mode: Mode,
    ) -> Result<ClusterMaps, String> {
        let opts = KMeansOptions::new(k);
        let run = |kind| -> Result<Vec<u32>, String> {
            let grid = feats.patch_grid(kind).map_err(|e| e.to_string())?;
            let km = kmeans_tensor(&grid, &opts).map_err(|e| e.to_string())?;
            feats
                .grid_to_pixels(&km.assignments, feats.height, feats.width)
                .map_err(|e| e.to_string())
        };
        let raw = relabel_by_size(&run(FeatureKind::Raw)?, k);
        let refined = if mode != Mode::MaskClip && feats.has_mode(mode) {
            let r = run(FeatureKind::Mode(mode))?;
            Some(match_clusters(&raw, &r, k))
        } else {
            None
        };
        let to_u8 = |v: Vec<u32>| v.into_iter().map(|c| c.min(255) as u8).collect::<Vec<u8>>();
        Ok(ClusterMaps {
            width: feats.width as u32,
            height: feats.height as u32,
            raw: to_u8(raw),
            refined: refined.map(to_u8),
        })
    }
}

/// The `visual.*` tensors of `store` (shared, not copied).
fn visual_weights(store: &TensorStore) -> TensorStore {
    let mut v = TensorStore::new(store.source());
    for (name, t) in store.iter().filter(|(n, _)| n.starts_with("visual.")) {
        v.insert(name.clone(), t.clone());
    }
    v
}

/// Longest processed side: keeps panoramas and thin strips within memory and the encoder's
/// patch budget (a 336-px short side then allows up to 8:1).
pub const MAX_LONG_SIDE: usize = 2688;

/// Processing size `(width, height)` and encoder options for a `w × h` photo: the short side
/// scaled to the resolution's (up or down; kept for a full-resolution preset), the long side
/// capped at [`MAX_LONG_SIDE`]. A single pass that would still exceed the encoder's patch budget
/// uses windows instead.
pub fn plan(res: Preset, w: u32, h: u32, patch: usize) -> (u32, u32, EncodeOptions) {
    let short = res.short_side().unwrap_or(w.min(h).max(1) as usize);
    let (mut ph, mut pw) = pipeline::short_side_size(h.max(1) as usize, w.max(1) as usize, short);
    let long = ph.max(pw);
    if long > MAX_LONG_SIDE {
        let s = MAX_LONG_SIDE as f64 / long as f64;
        ph = ((ph as f64 * s).round() as usize).clamp(1, MAX_LONG_SIDE);
        pw = ((pw as f64 * s).round() as usize).clamp(1, MAX_LONG_SIDE);
    }
    let p = patch.max(1);
    let too_many_patches = ph.div_ceil(p) * pw.div_ceil(p) > clipdino::clip::MAX_PATCHES;
    let window = res.window().or(too_many_patches.then_some(Window {
        size: short,
        stride: short / 2,
    }));
    // The photo arrives already resized: the encoder's own short-side resize is then a no-op.
    let opts = EncodeOptions {
        short_side: Some(ph.min(pw)),
        window,
    };
    (pw as u32, ph as u32, opts)
}

/// Renumber clusters so that 0 is the largest (ties: lower old id first).
pub fn relabel_by_size(map: &[u32], k: usize) -> Vec<u32> {
    let mut counts = vec![0usize; k];
    for &c in map {
        if let Some(n) = counts.get_mut(c as usize) {
            *n += 1;
        }
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    let mut new_id = vec![0u32; k];
    for (new, &old) in order.iter().enumerate() {
        new_id[old] = new as u32;
    }
    map.iter()
        .map(|&c| new_id.get(c as usize).copied().unwrap_or(c))
        .collect()
}

/// Renumber `other`'s clusters to the `reference` clusters they overlap most: greedy matching
/// on the overlap table, largest overlap first (k ≤ 16, so this is instant).
pub fn match_clusters(reference: &[u32], other: &[u32], k: usize) -> Vec<u32> {
    let mut overlap = vec![0usize; k * k];
    for (&r, &o) in reference.iter().zip(other) {
        if (r as usize) < k && (o as usize) < k {
            overlap[o as usize * k + r as usize] += 1;
        }
    }
    let mut pairs: Vec<(usize, usize, usize)> = (0..k)
        .flat_map(|o| (0..k).map(move |r| (o, r)))
        .map(|(o, r)| (overlap[o * k + r], o, r))
        .collect();
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut map_o = vec![None; k];
    let mut used_r = vec![false; k];
    for (_, o, r) in pairs {
        if map_o[o].is_none() && !used_r[r] {
            map_o[o] = Some(r as u32);
            used_r[r] = true;
        }
    }
    other
        .iter()
        .map(|&o| map_o.get(o as usize).copied().flatten().unwrap_or(o))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processing_sizes() {
        let (w, h, o) = plan(Preset::Balanced, 640, 427, 16);
        assert_eq!((w, h), (504, 336));
        assert_eq!(
            o,
            EncodeOptions {
                short_side: Some(336),
                window: None
            }
        );
        assert_eq!(
            pipeline::short_side_size(336, 504, 336),
            (336, 504),
            "no second resize"
        );
        let (w, h, o) = plan(Preset::Paper, 427, 640, 16);
        assert_eq!((w, h), (448, 671));
        assert_eq!(
            o.window,
            Some(Window {
                size: 448,
                stride: 224
            })
        );
        // Small photos are scaled up to the short side.
        assert_eq!(plan(Preset::Fast, 48, 96, 16).0, 224);
        // A 1 × 1000 strip stays bounded.
        let (w, h, o) = plan(Preset::Balanced, 1, 1000, 16);
        assert_eq!((w, h), (3, 2688));
        assert_eq!(o.short_side, Some(3));
        // An 8:1 panorama at 336 fits one pass; the patch budget holds everywhere.
        for (w, h) in [(2688, 336), (5000, 300), (300, 5000), (7, 3)] {
            for r in crate::protocol::RESOLUTIONS {
                let (pw, ph, o) = plan(r, w, h, 16);
                assert!(pw as usize <= MAX_LONG_SIDE && ph as usize <= MAX_LONG_SIDE);
                if o.window.is_none() {
                    assert!(
                        (pw as usize).div_ceil(16) * (ph as usize).div_ceil(16)
                            <= clipdino::clip::MAX_PATCHES
                    );
                }
            }
        }
    }

    /// The tiny random model of `tests/fixtures/tiny` (with or without its head), and a
    /// 64 × 48 photo encoded at its own size. Its text tower has a trimmed 1000-token
    /// vocabulary, which [`Model::build`] refuses for the real tokenizer: the model is put
    /// together here, and label embeddings are inserted, not computed. Native only (the fixture is
    /// read from disk).
    #[cfg(not(target_arch = "wasm32"))]
    fn tiny(head: bool) -> (Model, ImageFeatures) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny/");
        let mut names = vec!["open_clip_model.safetensors", "open_clip_config.json"];
        if head {
            names.push("last.pt");
        }
        let files: Vec<(String, Vec<u8>)> = names
            .iter()
            .map(|n| (n.to_string(), std::fs::read(format!("{dir}{n}")).unwrap()))
            .collect();
        let bundle = load_model_files(&files).unwrap();
        let seg = Segmenter::from_bundle(bundle, &Device::Cpu, ComputePath::F32).unwrap();
        let tokenizer = ClipTokenizer::from_json_bytes(include_bytes!(
            "../../crates/clipdino/assets/tokenizer.json"
        ))
        .unwrap();
        let model = Model {
            seg,
            info: ModelInfo {
                source: "local files".into(),
                files: names.iter().map(|n| n.to_string()).collect(),
                bytes: 0,
                from_cache: false,
                has_head: head,
                storage: String::new(),
                architecture: String::new(),
                millis: 0.0,
                cache_note: None,
            },
            compute_path: "F32".into(),
            tokenizer,
            embeddings: RefCell::new(HashMap::new()),
            visual: RefCell::new(None),
        };
        let (w, h) = (64u32, 48u32);
        let pixels: Vec<f32> = (0..3 * w * h)
            .map(|i| ((i * 37 % 101) as f32 / 100.0 + if i % w < w / 2 { 0.5 } else { 0.0 }) / 1.5)
            .collect();
        let (pw, ph, opts) = model.plan(Preset::FullRes, w, h);
        let image = Model::image(pixels, pw, ph).unwrap();
        let feats = model.encode(&image, &opts, &mut |_| {}).unwrap();
        (model, feats)
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn modes_come_from_the_cached_trunk_and_refinement_changes_the_map() {
        let (model, mut feats) = tiny(true);
        let labels = ["cat", "wall", "floor"].map(String::from);
        let e = model.embed_dim();
        for (k, l) in labels.iter().enumerate() {
            // Unit vectors far apart: the labels split the photo between them.
            let v: Vec<f32> = (0..e)
                .map(|i| (i * (k + 3) * 7919 % 97) as f32 / 48.0 - 1.0)
                .collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let v = v.into_iter().map(|x| x / n).collect();
            model
                .insert_embedding(l, TemplateSet::Fast, v, false)
                .unwrap();
        }
        let m = model.label_matrix(&labels, TemplateSet::Fast).unwrap();
        let seg = |f: &ImageFeatures, mode, refine| {
            model.segment(f, &m, mode, refine, None).unwrap().labels
        };
        // A last-block mode: computed once from the trunk, then cached.
        assert!(!model.prepare_mode(&mut feats, Mode::Dinoiser).unwrap());
        assert!(model.prepare_mode(&mut feats, Mode::NaClip).unwrap());
        assert!(!model.prepare_mode(&mut feats, Mode::NaClip).unwrap());
        let naclip = seg(&feats, Mode::NaClip, Refine::None);
        assert_eq!(naclip.len(), 64 * 48);
        assert_ne!(naclip, seg(&feats, Mode::Dinoiser, Refine::None));
        assert_ne!(
            naclip,
            seg(&feats, Mode::MaskClip, Refine::None),
            "NACLIP is not MaskCLIP under another name"
        );
        assert_ne!(
            naclip,
            seg(&feats, Mode::NaClip, Refine::PAMR),
            "PAMR changes the map"
        );
        // The K-Means view: MaskCLIP beside the mode's clusters (none beside MaskCLIP itself).
        let km = model.kmeans(&feats, 3, Mode::NaClip).unwrap();
        assert!(km.refined.is_some());
        assert!(model
            .kmeans(&feats, 3, Mode::MaskClip)
            .unwrap()
            .refined
            .is_none());
        // Without a head CLIP-DINOiser falls back to MaskCLIP; the other modes still work.
        let (model, mut feats) = tiny(false);
        assert!(!model.seg.has_head());
        assert_eq!(Model::usable_mode(&feats, Mode::Dinoiser), Mode::MaskClip);
        assert_eq!(Model::usable_mode(&feats, Mode::SClip), Mode::SClip);
        assert!(model.prepare_mode(&mut feats, Mode::SClip).unwrap());
    }

    #[test]
    fn clusters_are_numbered_by_size_and_matched() {
        let raw = [2, 2, 2, 0, 0, 1];
        assert_eq!(relabel_by_size(&raw, 3), [0, 0, 0, 1, 1, 2]);
        // `other` is `reference` with ids permuted and one pixel moved.
        let reference = [0, 0, 0, 1, 1, 2];
        let other = [1, 1, 2, 2, 2, 0];
        assert_eq!(match_clusters(&reference, &other, 3), [0, 0, 1, 1, 1, 2]);
    }
}

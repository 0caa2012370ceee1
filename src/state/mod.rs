//! The app state: a plain [`State`], the [`Action`]s that change it and a pure reducer
//! (`impl Reducible`); worker replies are applied in [`replies`], share links are read and
//! written in [`share`], and which weights to load is decided in [`weights`].
//!
//! Nothing here touches the DOM or the worker, so all of it is unit-tested natively. Side
//! effects (sending requests, painting canvases) live in hooks and components, which dispatch
//! [`Action::Sent`] for every request so that replies to superseded requests are dropped here.

pub mod life;
pub mod quality;
mod replies;
pub mod share;
pub mod weights;

use std::collections::HashSet;
use std::rc::Rc;

use clipdino::limits::{self, LimitError};
use yew::Reducible;

use crate::palette;
use crate::protocol::{
    ComputeInfo, ModelInfo, Progress, RequestId, Response, Stage, ThreadInfo, WeightSet,
};
pub use crate::protocol::{DeviceChoice, Mode, Precision, Preset, Refine, Side, TemplateSet};
pub use life::WorkerLife;
pub use quality::{QualityLine, SiteQuality};
pub use share::Share;
pub use weights::WeightsSource;

/// The label limits are the model crate's (one definition for the UI, the worker and the CLI).
pub use clipdino::limits::{MAX_LABELS, MAX_LABEL_CHARS};
pub const K_MIN: usize = 2;
pub const K_MAX: usize = 16;

pub fn is_background(label: &str) -> bool {
    label.trim().eq_ignore_ascii_case("background")
}

/// Trim and collapse inner whitespace.
pub fn normalise_label(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// State

#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// Stable id for keys and edits.
    pub id: u32,
    pub text: String,
    /// Colour slot, kept for the label's lifetime.
    pub slot: usize,
}

impl Label {
    pub fn colour(&self) -> [u8; 3] {
        if is_background(&self.text) {
            palette::BACKGROUND
        } else {
            palette::colour(self.slot)
        }
    }
}

/// What one overlay shows: whose dense features (the mode) and how the probabilities are
/// refined. The compare view shows two of them on the same photo, labels and encode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    pub mode: Mode,
    pub refine: Refine,
}

impl Method {
    /// "NACLIP + PAMR", "CLIP-DINOiser".
    pub fn title(self) -> String {
        match self.refine {
            Refine::None => self.mode.title().to_string(),
            Refine::Pamr { .. } => format!("{} + PAMR", self.mode.title()),
        }
    }

    /// The refinement to compute while labels are being edited: PAMR is live up to
    /// [`PAMR_LIVE_MAX_SIDE`] (≈ 110 ms at 448×336 in wasm, within a live edit's budget); at the
    /// paper's 448 (≈ 200 ms, plus windows) the edit is segmented unrefined and PAMR follows
    /// once it settles ([`Method::settles_later`]).
    pub fn live_refine(self, resolution: Preset) -> Refine {
        let live = resolution
            .short_side()
            .is_some_and(|s| s <= PAMR_LIVE_MAX_SIDE);
        if live {
            self.refine
        } else {
            Refine::None
        }
    }

    /// Whether a second, refined segmentation follows the live one once an edit settles.
    pub fn settles_later(self, resolution: Preset) -> bool {
        self.live_refine(resolution) != self.refine
    }
}

/// Largest processing short side at which PAMR runs on every label edit.
pub const PAMR_LIVE_MAX_SIDE: usize = 336;

/// The compare view's second method when it is switched on: another mode than the primary
/// one (NACLIP, the strongest training-free one without the head; MaskCLIP beside NACLIP),
/// with the same refinement.
pub fn default_compare(primary: Method) -> Method {
    Method {
        mode: if primary.mode == Mode::NaClip {
            Mode::MaskClip
        } else {
            Mode::NaClip
        },
        refine: primary.refine,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The primary overlay's method (the K-Means view follows its mode).
    pub mode: Mode,
    pub refine: Refine,
    /// The compare view's second overlay, when it is on.
    pub compare: Option<Method>,
    pub resolution: Preset,
    pub templates: TemplateSet,
    /// K-Means cluster count.
    pub k: usize,
    /// Overlay opacity in percent.
    pub opacity: u8,
    /// Compute threads (`None`: one per logical core); used by the multi-threaded build.
    pub threads: Option<usize>,
    /// Where the image tower runs (a property of this device, not of a link: not shared).
    pub compute: DeviceChoice,
    /// Which of the site's bundles the default weights are.
    pub precision: Precision,
}

impl Settings {
    pub fn primary(&self) -> Method {
        Method {
            mode: self.mode,
            refine: self.refine,
        }
    }

    /// The method of an overlay (`None`: the compare view is off).
    pub fn method(&self, side: Side) -> Option<Method> {
        match side {
            Side::Primary => Some(self.primary()),
            Side::Compare => self.compare,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: Mode::Dinoiser,
            // On by default: a live label edit with PAMR at 336 measured ≈ 130–150 ms in wasm.
            refine: Refine::PAMR,
            compare: None,
            resolution: Preset::Balanced,
            templates: TemplateSet::Fast,
            k: 6,
            opacity: 55,
            threads: None,
            compute: DeviceChoice::Auto,
            precision: Precision::Standard,
        }
    }
}

/// Progress of the current weights request.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum LoadPhase {
    /// Nothing requested (worker not ready yet, or finished).
    #[default]
    Idle,
    /// A request is out; the worker looks for caches and sizes.
    Checking {
        id: RequestId,
    },
    /// Large download, not cached: the user has to confirm.
    Offer {
        set: WeightSet,
        total_bytes: Option<u64>,
        notes: Vec<String>,
    },
    Active {
        id: RequestId,
        progress: Progress,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhotoSource {
    Sample(String),
    Local { name: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Photo {
    /// The `SetImage` request that carries this photo.
    pub id: RequestId,
    pub source: PhotoSource,
    /// URL for the full-size `<img>` preview (a sample URL or a `blob:` URL).
    pub preview_url: String,
    /// Size after EXIF orientation, once decoded.
    pub size: Option<(u32, u32)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SegView {
    pub id: RequestId,
    pub width: u32,
    pub height: u32,
    pub labels: Vec<String>,
    pub colours: Vec<[u8; 3]>,
    pub label_map: Rc<Vec<u8>>,
    pub confidence: Rc<Vec<u8>>,
    pub areas: Vec<f32>,
    pub millis: f64,
    /// What was computed (the worker's answer: MaskCLIP stands in for CLIP-DINOiser without
    /// a head).
    pub mode: Mode,
    pub refine: Refine,
    /// The mode's last block computed from the cached trunk for this result, in ms.
    pub mode_millis: Option<f64>,
    /// Classifying + refining + maps, in ms.
    pub segment_millis: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KMeansView {
    pub id: RequestId,
    pub k: usize,
    pub width: u32,
    pub height: u32,
    pub raw: Rc<Vec<u8>>,
    /// Clusters of `mode`'s features (none for MaskCLIP itself).
    pub refined: Option<Rc<Vec<u8>>>,
    pub mode: Mode,
    pub millis: f64,
}

/// The last image encode of the current photo.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodeInfo {
    pub resolution: Preset,
    pub grid: (usize, usize),
    pub windows: usize,
    pub millis: f64,
    /// The GPU adapter that ran the image tower (`None`: the CPU).
    pub gpu: Option<String>,
    /// Why it ran on the CPU although a GPU was in use (the GPU failed during it).
    pub fallback: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Area {
    Weights,
    Photo,
    Labels,
    Result,
    Share,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub text: String,
    pub error: bool,
}

/// Newest request of each kind; older replies are ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latest {
    pub load: RequestId,
    pub image: RequestId,
    pub segment: RequestId,
    /// The compare view's second overlay.
    pub compare: RequestId,
    pub kmeans: RequestId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Load,
    Image,
    Segment,
    Compare,
    KMeans,
}

impl Kind {
    /// The request kind of an overlay's segmentations.
    pub fn segment(side: Side) -> Kind {
        match side {
            Side::Primary => Kind::Segment,
            Side::Compare => Kind::Compare,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct State {
    pub labels: Vec<Label>,
    next_label_id: u32,
    pub settings: Settings,
    pub weights_source: WeightsSource,
    pub worker_ready: bool,
    /// The threads the worker computes with (reported by it).
    pub threads: Option<ThreadInfo>,
    /// Where the worker runs the image tower (reported by it).
    pub compute: Option<ComputeInfo>,
    /// Increases when the loaded model's weights must be loaded again for the GPU (an effect
    /// does it).
    pub weights_reloads: u64,
    pub model: Option<ModelInfo>,
    /// The candidate set `model` was loaded from (`None` for local files).
    pub model_set: Option<WeightSet>,
    /// The newest URL load request and its candidate sets (to know which one `Loaded` is).
    pub asked: Option<(RequestId, Vec<WeightSet>)>,
    /// The site's report on its bundles (`models/quality.json`).
    pub site_quality: SiteQuality,
    /// The load request of `model` (sent again to a fresh worker after a crash).
    pub loaded_id: Option<RequestId>,
    /// Deaths and restarts of the model worker.
    pub life: WorkerLife,
    /// Increases with every model loaded (effects re-run on it).
    pub model_generation: u64,
    pub load: LoadPhase,
    /// The photo on screen (decoded by the worker).
    pub photo: Option<Photo>,
    /// A photo sent to the worker and not decoded yet.
    pub pending_photo: Option<Photo>,
    /// The image encoded for the current photo (None while encoding).
    pub encoded: Option<EncodeInfo>,
    pub segmentation: Option<Rc<SegView>>,
    /// The compare view's second overlay.
    pub compare_segmentation: Option<Rc<SegView>>,
    pub kmeans: Option<Rc<KMeansView>>,
    /// Image-side work in progress (decode, encode, embed, segment, k-means).
    pub work: Option<Progress>,
    /// Image encodes done by the worker (a label edit must not change it).
    pub encodes: u64,
    /// Last blocks the worker computed from a cached trunk (mode switches, not encodes).
    pub mode_blocks: u64,
    /// Labels the worker embedded with the text tower, and labels it read back from browser
    /// storage (shown in the debug line; the page tests read them).
    pub label_embeds: u64,
    pub label_loads: u64,
    /// Label shown alone in the overlay (clicked in the legend).
    pub isolate: Option<String>,
    pub notices: Vec<(Area, Notice)>,
    pub latest: Latest,
    /// `blob:` URLs no longer shown, to be revoked by an effect.
    pub stale_urls: Vec<String>,
    /// Sample photo named by a link, to be opened by an effect.
    pub requested_sample: Option<String>,
}

impl State {
    pub fn label_texts(&self) -> Vec<String> {
        self.labels.iter().map(|l| l.text.clone()).collect()
    }

    pub fn background_index(&self) -> Option<usize> {
        self.labels.iter().position(|l| is_background(&l.text))
    }

    pub fn has_background(&self) -> bool {
        self.background_index().is_some()
    }

    /// The status line's words for where the image tower runs: "GPU (adapter)", "CPU, 4
    /// threads", "CPU, 1 thread — GPU unavailable: why" (`None` before the worker said), and
    /// what became of the last encode when the GPU failed during it.
    pub fn compute_status(&self) -> Option<String> {
        let info = self.compute.as_ref()?;
        let mut text = if info.pending {
            "Compute: looking for a GPU…".to_string()
        } else if let Some(name) = &info.gpu {
            if info.needs_weights {
                format!("GPU ({name}) — loading the weights again to put them on it")
            } else {
                format!("GPU ({name})")
            }
        } else {
            let n = self.threads.as_ref().map_or(1, |t| t.threads);
            let cpu = format!("CPU, {n} thread{}", if n == 1 { "" } else { "s" });
            match &info.note {
                Some(why) if info.setting != DeviceChoice::Cpu => {
                    format!("{cpu} — GPU unavailable: {why}")
                }
                _ => cpu,
            }
        };
        if let Some(why) = self.encoded.as_ref().and_then(|e| e.fallback.as_ref()) {
            text.push_str(&format!(
                " · this photo was encoded on the CPU instead: {why}"
            ));
        }
        Some(text)
    }

    pub fn notice(&self, area: Area) -> Option<&Notice> {
        self.notices
            .iter()
            .find(|(a, _)| *a == area)
            .map(|(_, n)| n)
    }

    pub fn sample_id(&self) -> Option<&str> {
        match self
            .photo
            .as_ref()
            .or(self.pending_photo.as_ref())
            .map(|p| &p.source)
        {
            Some(PhotoSource::Sample(id)) => Some(id),
            _ => None,
        }
    }

    fn set_notice(&mut self, area: Area, text: impl Into<String>, error: bool) {
        self.clear_notice(area);
        self.notices.push((
            area,
            Notice {
                text: text.into(),
                error,
            },
        ));
    }

    fn clear_notice(&mut self, area: Area) {
        self.notices.retain(|(a, _)| *a != area);
        if self.life.message == Some(area) {
            self.life.message = None;
        }
    }

    /// A result arrived in `area`: its message goes, unless it tells of a worker death (that
    /// one stays until the user dismisses it, see [`WorkerLife`]).
    fn clear_notice_for_result(&mut self, area: Area) {
        if self.life.message != Some(area) {
            self.clear_notice(area);
        }
    }

    fn free_slot(&self) -> usize {
        let used: HashSet<usize> = self
            .labels
            .iter()
            .filter(|l| !is_background(&l.text))
            .map(|l| l.slot)
            .collect();
        (0..).find(|s| !used.contains(s)).unwrap_or(0)
    }

    /// Why `text` (normalised, not empty) cannot join the labels, the label `except` aside
    /// (`keys`: the [`limits::label_key`] of every label, in order): the shared limits of
    /// [`clipdino::limits`] in the page's words. Two labels are the same when the tokenizer
    /// reads them the same ("Cat", "ｃａｔ" and "c&#97;t" are "cat").
    fn label_problem(&self, text: &str, keys: &[String], except: Option<u32>) -> Option<String> {
        if let Err(e) = limits::check_label(text, 0) {
            return Some(match e {
                LimitError::LabelTooLong { preview, .. } => format!(
                    "“{preview}” is too long: labels have at most {MAX_LABEL_CHARS} characters."
                ),
                _ => "Empty label: type a word or a short phrase.".into(),
            });
        }
        let key = limits::label_key(text);
        let same = self
            .labels
            .iter()
            .zip(keys)
            .find(|(l, k)| Some(l.id) != except && **k == key)?;
        Some(if same.0.text == text {
            format!("“{text}” is already in the list.")
        } else {
            format!(
                "“{text}” is already in the list (it reads the same to the model as “{}”).",
                same.0.text
            )
        })
    }

    /// The [`limits::label_key`] of every label, in order.
    fn label_keys(&self) -> Vec<String> {
        self.labels
            .iter()
            .map(|l| limits::label_key(&l.text))
            .collect()
    }

    /// Add one label (`keys`: [`Self::label_keys`], kept up to date). Returns a reason when
    /// it was not added.
    fn push_label(&mut self, raw: &str, keys: &mut Vec<String>) -> Result<(), String> {
        let text = normalise_label(raw);
        if text.is_empty() {
            return Err("Empty label: type a word or a short phrase.".into());
        }
        if self.labels.len() >= MAX_LABELS {
            let short: String = text.chars().take(24).collect();
            let more = if short.len() < text.len() { "…" } else { "" };
            return Err(format!(
                "At most {MAX_LABELS} labels: “{short}{more}” was not added."
            ));
        }
        if let Some(problem) = self.label_problem(&text, keys, None) {
            return Err(problem);
        }
        keys.push(limits::label_key(&text));
        let slot = if is_background(&text) {
            usize::MAX
        } else {
            self.free_slot()
        };
        self.next_label_id += 1;
        self.labels.push(Label {
            id: self.next_label_id,
            text,
            slot,
        });
        Ok(())
    }

    /// Add comma-separated labels; one notice sums up what was skipped.
    fn add_labels(&mut self, input: &str) {
        let parts: Vec<&str> = input.split([',', '\n', ';']).collect();
        let mut problems = Vec::new();
        let mut added = 0;
        let mut empties = 0;
        let mut keys = self.label_keys();
        for p in &parts {
            if normalise_label(p).is_empty() {
                empties += 1;
                continue;
            }
            match self.push_label(p, &mut keys) {
                Ok(()) => added += 1,
                Err(e) => problems.push(e),
            }
        }
        if added == 0 && problems.is_empty() && empties > 0 {
            problems.push("Empty label: type a word or a short phrase.".into());
        }
        if problems.is_empty() {
            self.clear_notice(Area::Labels);
        } else {
            let total = problems.len();
            let mut text = problems.into_iter().take(3).collect::<Vec<_>>().join(" ");
            if total > 3 {
                text.push_str(&format!(" ({} more skipped.)", total - 3));
            }
            self.set_notice(Area::Labels, text, true);
        }
        self.after_labels_changed();
    }

    fn after_labels_changed(&mut self) {
        if let Some(iso) = &self.isolate {
            if !self.labels.iter().any(|l| &l.text == iso) {
                self.isolate = None;
            }
        }
        if self.labels.is_empty() {
            self.segmentation = None;
            self.compare_segmentation = None;
        }
    }

    fn photo_replaced(&mut self, old: Option<Photo>) {
        if let Some(p) = old {
            if p.preview_url.starts_with("blob:") {
                self.stale_urls.push(p.preview_url);
            }
        }
    }

    fn is_latest(&self, kind: Kind, id: RequestId) -> bool {
        let l = &self.latest;
        id == match kind {
            Kind::Load => l.load,
            Kind::Image => l.image,
            Kind::Segment => l.segment,
            Kind::Compare => l.compare,
            Kind::KMeans => l.kmeans,
        }
    }

    /// An overlay's segmentation.
    pub fn segmentation_of(&self, side: Side) -> Option<&Rc<SegView>> {
        match side {
            Side::Primary => self.segmentation.as_ref(),
            Side::Compare => self.compare_segmentation.as_ref(),
        }
    }

    fn kind_of(&self, id: RequestId) -> Option<Kind> {
        let l = &self.latest;
        if id == l.load {
            Some(Kind::Load)
        } else if id == l.image {
            Some(Kind::Image)
        } else if id == l.segment {
            Some(Kind::Segment)
        } else if id == l.compare {
            Some(Kind::Compare)
        } else if id == l.kmeans {
            Some(Kind::KMeans)
        } else {
            None
        }
    }

    fn colours_for(&self, labels: &[String]) -> Vec<[u8; 3]> {
        labels
            .iter()
            .enumerate()
            .map(|(i, t)| match self.labels.iter().find(|l| &l.text == t) {
                Some(l) => l.colour(),
                None if is_background(t) => palette::BACKGROUND,
                None => palette::colour(i),
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Actions and reducer

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Text typed in the label box and confirmed (Enter / comma / Add): comma-separated.
    AddLabels(String),
    RemoveLabel(u32),
    /// Edit a label in place; commas split it into several labels.
    EditLabel(u32, String),
    ToggleBackground,
    /// Replace all labels by a preset list.
    SetLabels(Vec<String>),
    /// An overlay's mode (the primary one's is also the K-Means view's).
    SetMode(Side, Mode),
    /// An overlay's refinement.
    SetRefine(Side, Refine),
    /// Show the compare view (a second overlay with its own method) or not.
    SetCompare(bool),
    SetResolution(Preset),
    SetTemplates(TemplateSet),
    SetK(usize),
    SetOpacity(u8),
    /// Compute threads (`None`: auto); the request goes out with it.
    SetThreads(Option<usize>),
    /// Where the image tower runs; the request goes out with it.
    SetCompute(DeviceChoice),
    /// Show one label alone (click in the legend again to show all).
    ToggleIsolate(String),
    /// Share link / URL restored.
    RestoreShare(Share),
    /// A request went out to the worker.
    Sent(Kind, RequestId),
    /// A `SetImage` went out for this photo.
    PhotoRequested(Photo),
    /// The user picked weights (or confirmed a download): a new load request is out.
    WeightsRequested(RequestId),
    /// The same for a `LoadUrls` request, with its candidate sets.
    UrlsRequested(RequestId, Vec<WeightSet>),
    /// Which of the site's bundles the default weights are (the request goes out with it).
    SetPrecision(Precision),
    /// The site's quality report was read (or found missing or unreadable).
    SiteQuality(SiteQuality),
    /// The user declined the large download.
    DeclineDownload,
    /// A worker reply with its attachments.
    Worker(Response, Vec<Rc<Vec<u8>>>),
    /// A message that originates in the UI (bad drop, clipboard refused, …).
    Notice(Area, String, bool),
    Dismiss(Area),
    /// The effect revoked the first `n` stale `blob:` URLs.
    UrlsRevoked(usize),
    /// The model worker died (error event, a panic, or silence while computing) at `at_ms`;
    /// `cause` is the event's text.
    WorkerDied {
        at_ms: f64,
        cause: String,
    },
    /// Start a fresh worker after the restart guard gave up (the notice's button).
    RetryWorker,
}

impl Reducible for State {
    type Action = Action;

    fn reduce(self: Rc<Self>, action: Action) -> Rc<Self> {
        let mut s = (*self).clone();
        s.apply(action);
        Rc::new(s)
    }
}

impl State {
    /// The reducer body (also used directly by tests).
    pub fn apply(&mut self, action: Action) {
        match action {
            Action::AddLabels(text) => self.add_labels(&text),
            Action::RemoveLabel(id) => {
                self.labels.retain(|l| l.id != id);
                self.clear_notice(Area::Labels);
                self.after_labels_changed();
            }
            Action::EditLabel(id, text) => {
                let Some(pos) = self.labels.iter().position(|l| l.id == id) else {
                    return;
                };
                let mut parts = text.split([',', '\n', ';']);
                let first = normalise_label(parts.next().unwrap_or(""));
                let rest: Vec<&str> = parts.collect();
                if first.is_empty() {
                    // Clearing a chip's text removes it.
                    self.labels.remove(pos);
                    self.clear_notice(Area::Labels);
                } else if let Some(problem) =
                    self.label_problem(&first, &self.label_keys(), Some(id))
                {
                    self.set_notice(
                        Area::Labels,
                        format!("{problem} The edit was not applied."),
                        true,
                    );
                } else {
                    let was_bg = is_background(&self.labels[pos].text);
                    let slot = if is_background(&first) {
                        usize::MAX
                    } else if was_bg {
                        self.free_slot()
                    } else {
                        self.labels[pos].slot
                    };
                    let label = &mut self.labels[pos];
                    if self.isolate.as_deref() == Some(label.text.as_str()) {
                        self.isolate = Some(first.clone());
                    }
                    label.text = first;
                    label.slot = slot;
                    self.clear_notice(Area::Labels);
                }
                if !rest.is_empty() {
                    self.add_labels(&rest.join(","));
                }
                self.after_labels_changed();
            }
            Action::ToggleBackground => match self.background_index() {
                Some(i) => {
                    self.labels.remove(i);
                    self.after_labels_changed();
                }
                None => self.add_labels("background"),
            },
            Action::SetLabels(list) => {
                self.labels.clear();
                self.isolate = None;
                if list.is_empty() {
                    self.clear_notice(Area::Labels);
                    self.after_labels_changed();
                } else {
                    self.add_labels(&list.join(","));
                }
            }
            Action::SetMode(Side::Primary, m) => self.settings.mode = m,
            Action::SetRefine(Side::Primary, r) => self.settings.refine = r,
            Action::SetMode(Side::Compare, m) => {
                if let Some(c) = &mut self.settings.compare {
                    c.mode = m;
                }
            }
            Action::SetRefine(Side::Compare, r) => {
                if let Some(c) = &mut self.settings.compare {
                    c.refine = r;
                }
            }
            Action::SetCompare(on) => {
                if !on {
                    self.settings.compare = None;
                    self.compare_segmentation = None;
                } else if self.settings.compare.is_none() {
                    self.settings.compare = Some(default_compare(self.settings.primary()));
                }
            }
            Action::SetResolution(r) => self.settings.resolution = r,
            Action::SetTemplates(t) => self.settings.templates = t,
            Action::SetK(k) => self.settings.k = k.clamp(K_MIN, K_MAX),
            Action::SetOpacity(o) => self.settings.opacity = o.min(100),
            Action::SetThreads(t) => self.settings.threads = t.map(|n| n.max(1)),
            Action::SetCompute(c) => {
                self.settings.compute = c;
                if let Some(info) = &mut self.compute {
                    info.setting = c;
                    info.pending = true;
                }
            }
            Action::ToggleIsolate(label) => {
                self.isolate = if self.isolate.as_deref() == Some(label.as_str()) {
                    None
                } else {
                    Some(label)
                }
            }
            Action::RestoreShare(share) => self.apply_share(&share),
            Action::Sent(kind, id) => {
                let l = &mut self.latest;
                match kind {
                    Kind::Load => l.load = id,
                    Kind::Image => l.image = id,
                    Kind::Segment => l.segment = id,
                    Kind::Compare => l.compare = id,
                    Kind::KMeans => l.kmeans = id,
                }
                if kind == Kind::Load {
                    self.load = LoadPhase::Checking { id };
                }
            }
            Action::PhotoRequested(photo) => {
                self.latest.image = photo.id;
                if !matches!(&photo.source, PhotoSource::Sample(id) if Some(id) == self.requested_sample.as_ref())
                {
                    self.requested_sample = None;
                }
                let old = self.pending_photo.replace(photo);
                self.photo_replaced(old);
                self.clear_notice(Area::Photo);
                self.work = Some(Progress::started(Stage::Decode));
            }
            Action::WeightsRequested(id) => {
                self.latest.load = id;
                self.load = LoadPhase::Checking { id };
                self.clear_notice(Area::Weights);
            }
            Action::UrlsRequested(id, sets) => {
                self.apply(Action::WeightsRequested(id));
                self.asked = Some((id, sets));
            }
            Action::SetPrecision(p) => self.settings.precision = p,
            Action::SiteQuality(q) => self.site_quality = q,
            Action::DeclineDownload => {
                self.load = LoadPhase::Idle;
                self.set_notice(
                    Area::Weights,
                    "No weights loaded. Pick weight files from your disk, or start the download when you are ready.",
                    false,
                );
            }
            Action::Worker(msg, payloads) => self.on_response(msg, &payloads),
            Action::Notice(area, text, error) => self.set_notice(area, text, error),
            Action::Dismiss(area) => self.clear_notice(area),
            Action::UrlsRevoked(n) => {
                let n = n.min(self.stale_urls.len());
                self.stale_urls.drain(..n);
            }
            Action::WorkerDied { at_ms, cause } => self.worker_died(at_ms, &cause),
            Action::RetryWorker => self.retry_worker(),
        }
    }
}

/// Helpers of the reducer's tests (here and in the child modules).
#[cfg(test)]
mod test_util {
    use super::*;
    use crate::protocol::Att;

    pub fn with_labels(list: &str) -> State {
        let mut s = State::default();
        s.apply(Action::AddLabels(list.into()));
        s
    }

    pub fn texts(s: &State) -> Vec<&str> {
        s.labels.iter().map(|l| l.text.as_str()).collect()
    }

    pub fn seg_response(
        id: RequestId,
        labels: &[&str],
        w: u32,
        h: u32,
    ) -> (Response, Vec<Rc<Vec<u8>>>) {
        let n = (w * h) as usize;
        (
            Response::Segmentation {
                id,
                width: w,
                height: h,
                labels: labels.iter().map(|s| s.to_string()).collect(),
                label_map: Att(0),
                confidence: Att(1),
                areas: vec![1.0 / labels.len() as f32; labels.len()],
                side: Side::Primary,
                mode: Mode::Dinoiser,
                refine: Refine::None,
                mode_millis: None,
                segment_millis: 1.0,
                mode_blocks: 0,
                encodes: 1,
                label_embeds: labels.len() as u64,
                label_loads: 0,
                millis: 1.0,
                warnings: vec![],
            },
            vec![Rc::new(vec![0; n]), Rc::new(vec![255; n])],
        )
    }

    pub fn photo(id: RequestId, url: &str) -> Photo {
        Photo {
            id,
            source: PhotoSource::Local {
                name: "x.jpg".into(),
            },
            preview_url: url.into(),
            size: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn comma_separated_labels_are_trimmed_and_deduplicated() {
        let s = with_labels("  cat , dog,,  Cat, sky   blue ,dog");
        assert_eq!(texts(&s), ["cat", "dog", "sky blue"]);
        let n = s.notice(Area::Labels).expect("duplicates are reported");
        assert!(
            n.error
                && n.text.contains(
                    "“Cat” is already in the list (it reads the same to the model as “cat”)."
                ),
            "{}",
            n.text
        );
    }

    #[test]
    fn empty_and_overlong_labels_are_refused_with_a_message() {
        let mut s = with_labels(" , ,");
        assert!(s.labels.is_empty());
        assert!(s
            .notice(Area::Labels)
            .unwrap()
            .text
            .starts_with("Empty label"));
        s.apply(Action::AddLabels("x".repeat(MAX_LABEL_CHARS + 1)));
        assert!(s.labels.is_empty());
        assert!(s.notice(Area::Labels).unwrap().text.contains("too long"));
        s.apply(Action::AddLabels("x".repeat(MAX_LABEL_CHARS)));
        assert_eq!(s.labels.len(), 1);
        assert!(
            s.notice(Area::Labels).is_none(),
            "a good label clears the message"
        );
    }

    #[test]
    fn labels_follow_the_shared_limits() {
        // Duplicates by the tokenizer's normalisation, not by lower case alone.
        let s = with_labels("cat, ｃａｔ, CAT, oﬃce, office, dog’s bed, dog's bed");
        assert_eq!(texts(&s), ["cat", "oﬃce", "dog’s bed"]);
        let n = s.notice(Area::Labels).unwrap();
        assert!(
            n.text.contains(
                "“ｃａｔ” is already in the list (it reads the same to the model as “cat”)."
            ),
            "{}",
            n.text
        );
        assert!(n.text.contains("(1 more skipped.)"), "{}", n.text);
        // Length in characters, not bytes: 80 four-byte characters fit, 81 do not; an
        // enormous paste is refused without being cleaned.
        let mut s = with_labels(&"🐈".repeat(MAX_LABEL_CHARS));
        assert_eq!(s.labels.len(), 1);
        s.apply(Action::AddLabels("z".repeat(5_000_000)));
        assert_eq!(s.labels.len(), 1);
        assert!(s.notice(Area::Labels).unwrap().text.starts_with(
            "“zzzzzzzzzzzzzzzzzzzzzzzz…” is too long: labels have at most 80 characters."
        ));
        // Only control characters: nothing the model would read.
        s.apply(Action::AddLabels("\u{7}\u{1b}".into()));
        assert_eq!(s.labels.len(), 1);
        assert!(s
            .notice(Area::Labels)
            .unwrap()
            .text
            .starts_with("Empty label"));
        // An edit that makes two labels read the same is refused.
        s.apply(Action::AddLabels("dog".into()));
        let dog = s.labels[1].id;
        s.apply(Action::EditLabel(
            dog,
            "🐈".repeat(MAX_LABEL_CHARS).to_uppercase(),
        ));
        assert!(s
            .notice(Area::Labels)
            .unwrap()
            .text
            .ends_with("is already in the list. The edit was not applied."));
        s.apply(Action::EditLabel(dog, "Hot  Dog".into()));
        assert_eq!(s.labels[1].text, "Hot Dog");
        // A share link's label flood is cut at the limit and deduplicated the same way.
        let mut flood: Vec<String> = (0..10_000).map(|i| format!("thing {}", i % 300)).collect();
        flood.insert(1, "THING 0".into());
        let mut s = State::default();
        s.apply_share(&Share {
            labels: Some(flood),
            ..Share::default()
        });
        assert_eq!(s.labels.len(), MAX_LABELS);
        assert_eq!(s.labels[1].text, "thing 1");
    }

    #[test]
    fn more_than_max_labels_are_cut_with_a_message() {
        let many: Vec<String> = (0..MAX_LABELS + 37).map(|i| format!("thing {i}")).collect();
        let mut s = State::default();
        s.apply(Action::SetLabels(many));
        assert_eq!(s.labels.len(), MAX_LABELS);
        let n = s.notice(Area::Labels).unwrap();
        assert!(n.text.contains("At most 200 labels"), "{}", n.text);
        assert!(n.text.contains("(34 more skipped.)"), "{}", n.text);
        // Slots stay distinct for every label.
        let slots: HashSet<usize> = s.labels.iter().map(|l| l.slot).collect();
        assert_eq!(slots.len(), MAX_LABELS);
    }

    #[test]
    fn colours_are_stable_across_edits_and_removals() {
        let mut s = with_labels("cat,dog,tree");
        let before: Vec<[u8; 3]> = s.labels.iter().map(|l| l.colour()).collect();
        let dog = s.labels[1].id;
        s.apply(Action::EditLabel(dog, "puppy".into()));
        assert_eq!(texts(&s), ["cat", "puppy", "tree"]);
        assert_eq!(
            s.labels.iter().map(|l| l.colour()).collect::<Vec<_>>(),
            before
        );
        // Removing "cat" keeps the others' colours; a new label reuses the free slot.
        s.apply(Action::RemoveLabel(s.labels[0].id));
        assert_eq!(s.labels[0].colour(), before[1]);
        assert_eq!(s.labels[1].colour(), before[2]);
        s.apply(Action::AddLabels("car".into()));
        assert_eq!(s.labels[2].colour(), before[0]);
    }

    #[test]
    fn edit_in_place_rules() {
        let mut s = with_labels("cat,dog");
        let (cat, dog) = (s.labels[0].id, s.labels[1].id);
        s.apply(Action::EditLabel(cat, " DOG ".into()));
        assert_eq!(
            texts(&s),
            ["cat", "dog"],
            "an edit into a duplicate is refused"
        );
        assert!(s.notice(Area::Labels).unwrap().error);
        s.apply(Action::EditLabel(cat, "kitten, bird".into()));
        assert_eq!(texts(&s), ["kitten", "dog", "bird"], "commas split an edit");
        s.apply(Action::EditLabel(dog, "   ".into()));
        assert_eq!(texts(&s), ["kitten", "bird"], "emptying a chip removes it");
        s.apply(Action::EditLabel(9999, "ghost".into()));
        assert_eq!(texts(&s), ["kitten", "bird"]);
    }

    #[test]
    fn background_chip() {
        let mut s = with_labels("cat,dog");
        assert_eq!(s.background_index(), None);
        s.apply(Action::ToggleBackground);
        assert_eq!(s.background_index(), Some(2));
        assert_eq!(s.labels[2].colour(), palette::BACKGROUND);
        s.apply(Action::AddLabels("Background".into()));
        assert_eq!(s.labels.len(), 3, "background is only there once");
        s.apply(Action::ToggleBackground);
        assert_eq!(texts(&s), ["cat", "dog"]);
        // Typing it is the same as the chip.
        s.apply(Action::AddLabels("background".into()));
        assert!(s.has_background());
    }

    #[test]
    fn isolation_follows_edits_and_resets_on_removal() {
        let mut s = with_labels("cat,dog");
        s.apply(Action::ToggleIsolate("dog".into()));
        assert_eq!(s.isolate.as_deref(), Some("dog"));
        s.apply(Action::EditLabel(s.labels[1].id, "puppy".into()));
        assert_eq!(s.isolate.as_deref(), Some("puppy"));
        s.apply(Action::ToggleIsolate("puppy".into()));
        assert_eq!(s.isolate, None);
        s.apply(Action::ToggleIsolate("cat".into()));
        s.apply(Action::RemoveLabel(s.labels[0].id));
        assert_eq!(s.isolate, None);
    }

    #[test]
    fn clearing_all_labels_clears_the_overlay() {
        let mut s = with_labels("cat");
        s.apply(Action::Sent(Kind::Segment, 1));
        let (r, p) = seg_response(1, &["cat"], 1, 1);
        s.apply(Action::Worker(r, p));
        assert!(s.segmentation.is_some());
        s.apply(Action::RemoveLabel(s.labels[0].id));
        assert!(s.segmentation.is_none());
    }

    /// A segmentation reply for an overlay, with what the worker computed.
    fn side_response(
        id: RequestId,
        side: Side,
        mode: Mode,
        refine: Refine,
    ) -> (Response, Vec<Rc<Vec<u8>>>) {
        let (mut r, p) = seg_response(id, &["cat", "dog"], 2, 2);
        if let Response::Segmentation {
            side: s,
            mode: m,
            refine: f,
            mode_millis,
            ..
        } = &mut r
        {
            (*s, *m, *f, *mode_millis) = (side, mode, refine, Some(3.0));
        }
        (r, p)
    }

    #[test]
    fn pamr_is_live_up_to_336_and_follows_the_edit_at_448() {
        let pamr = Method {
            mode: Mode::NaClip,
            refine: Refine::PAMR,
        };
        for res in [Preset::Fast, Preset::Balanced] {
            assert_eq!(pamr.live_refine(res), Refine::PAMR);
            assert!(!pamr.settles_later(res));
        }
        assert_eq!(pamr.live_refine(Preset::Paper), Refine::None);
        assert!(pamr.settles_later(Preset::Paper));
        let off = Method {
            refine: Refine::None,
            ..pamr
        };
        assert!(!off.settles_later(Preset::Paper));
        assert_eq!(pamr.title(), "NACLIP + PAMR");
        assert_eq!(off.title(), "NACLIP");
        // PAMR is on by default (a live edit at the default 336 fits the budget).
        let s = State::default();
        assert_eq!(s.settings.refine, Refine::PAMR);
        assert_eq!(s.settings.resolution.short_side(), Some(PAMR_LIVE_MAX_SIDE));
    }

    #[test]
    fn every_overlay_has_its_own_method_and_result() {
        let mut s = with_labels("cat, dog");
        // Off: compare actions change nothing.
        s.apply(Action::SetMode(Side::Compare, Mode::SClip));
        assert_eq!(s.settings.compare, None);
        assert_eq!(s.settings.method(Side::Compare), None);
        s.apply(Action::SetMode(Side::Primary, Mode::ClearClip));
        s.apply(Action::SetRefine(Side::Primary, Refine::None));
        s.apply(Action::SetCompare(true));
        assert_eq!(
            s.settings.compare,
            Some(Method {
                mode: Mode::NaClip,
                refine: Refine::None
            }),
            "another mode than the primary one, same refinement"
        );
        s.apply(Action::SetMode(Side::Compare, Mode::SClip));
        s.apply(Action::SetRefine(Side::Compare, Refine::PAMR));
        assert_eq!(
            s.settings.method(Side::Compare).unwrap().title(),
            "SCLIP + PAMR"
        );
        assert_eq!(s.settings.primary().title(), "ClearCLIP");
        // Switching it on again keeps the chosen method.
        s.apply(Action::SetCompare(true));
        assert_eq!(s.settings.compare.unwrap().mode, Mode::SClip);

        // Both overlays' requests are current at once; each reply goes to its own overlay.
        s.apply(Action::Sent(Kind::segment(Side::Primary), 10));
        s.apply(Action::Sent(Kind::segment(Side::Compare), 11));
        let (r, p) = side_response(11, Side::Compare, Mode::SClip, Refine::PAMR);
        s.apply(Action::Worker(r, p));
        assert!(s.segmentation.is_none());
        let c = s.compare_segmentation.clone().unwrap();
        assert_eq!(
            (c.mode, c.refine, c.mode_millis),
            (Mode::SClip, Refine::PAMR, Some(3.0))
        );
        let (r, p) = side_response(10, Side::Primary, Mode::ClearClip, Refine::None);
        s.apply(Action::Worker(r, p));
        assert_eq!(s.segmentation.as_ref().unwrap().mode, Mode::ClearClip);
        assert_eq!(s.segmentation_of(Side::Compare).unwrap().id, 11);
        // A reply of one side's superseded request, or tagged with the other side, is dropped.
        s.apply(Action::Sent(Kind::Compare, 12));
        let (r, p) = side_response(11, Side::Compare, Mode::SClip, Refine::PAMR);
        s.apply(Action::Worker(r, p));
        let (r, p) = side_response(12, Side::Primary, Mode::SClip, Refine::PAMR);
        s.apply(Action::Worker(r, p));
        assert_eq!(s.compare_segmentation.as_ref().unwrap().id, 11);
        assert_eq!(s.segmentation.as_ref().unwrap().id, 10);
        // Closing the compare view drops its result, and a late reply does not bring it back.
        s.apply(Action::SetCompare(false));
        assert!(s.compare_segmentation.is_none());
        let (r, p) = side_response(12, Side::Compare, Mode::SClip, Refine::PAMR);
        s.apply(Action::Worker(r, p));
        assert!(s.compare_segmentation.is_none());
        assert!(s.segmentation.is_some());
        // A new photo clears both overlays.
        s.apply(Action::SetCompare(true));
        let (r, p) = side_response(12, Side::Compare, Mode::SClip, Refine::PAMR);
        s.apply(Action::Worker(r, p));
        assert!(s.compare_segmentation.is_some());
        s.apply(Action::PhotoRequested(photo(20, "blob:y")));
        s.apply(Action::Worker(
            Response::ImageDecoded {
                id: 20,
                width: 4,
                height: 3,
            },
            vec![],
        ));
        assert!(s.segmentation.is_none() && s.compare_segmentation.is_none());
    }

    #[test]
    fn the_worker_says_which_mode_it_computed() {
        // CLIP-DINOiser asked, no head: the worker answers MaskCLIP and the view says so.
        let mut s = with_labels("cat, dog");
        s.apply(Action::Sent(Kind::Segment, 3));
        let (mut r, p) = side_response(3, Side::Primary, Mode::MaskClip, Refine::PAMR);
        if let Response::Segmentation {
            mode_blocks,
            encodes,
            ..
        } = &mut r
        {
            (*mode_blocks, *encodes) = (4, 1);
        }
        s.apply(Action::Worker(r, p));
        let v = s.segmentation.clone().unwrap();
        assert_eq!((s.settings.mode, v.mode), (Mode::Dinoiser, Mode::MaskClip));
        assert_eq!((s.mode_blocks, s.encodes), (4, 1));
    }

    #[test]
    fn the_status_says_where_the_image_tower_runs() {
        use crate::protocol::ComputeInfo;
        let info = |gpu: Option<&str>, note: Option<&str>, needs_weights| ComputeInfo {
            setting: DeviceChoice::Auto,
            gpu: gpu.map(String::from),
            note: note.map(String::from),
            needs_weights,
            pending: false,
        };
        let compute =
            |i: ComputeInfo| Action::Worker(Response::Compute { id: None, info: i }, vec![]);
        let mut s = State::default();
        assert_eq!(s.compute_status(), None, "nothing before the worker says");
        assert_eq!(s.settings.compute, DeviceChoice::Auto);
        s.apply(Action::Worker(
            Response::Threads {
                id: None,
                info: ThreadInfo {
                    multi_threaded_build: true,
                    threads: 2,
                    hardware: 2,
                    note: None,
                },
            },
            vec![],
        ));
        s.apply(compute(info(None, Some("no WebGPU adapter"), false)));
        assert_eq!(
            s.compute_status().unwrap(),
            "CPU, 2 threads — GPU unavailable: no WebGPU adapter"
        );
        // Choosing is pending until the worker answers; the CPU setting has no "unavailable".
        s.apply(Action::SetCompute(DeviceChoice::Cpu));
        assert_eq!(s.settings.compute, DeviceChoice::Cpu);
        assert!(s.compute_status().unwrap().contains("looking for a GPU"));
        s.apply(compute(ComputeInfo {
            setting: DeviceChoice::Cpu,
            ..info(None, None, false)
        }));
        assert_eq!(s.compute_status().unwrap(), "CPU, 2 threads");
        // A GPU for a model loaded without its tower's weights: one reload, not one per reply.
        s.apply(compute(info(Some("google swiftshader"), None, true)));
        assert_eq!(s.weights_reloads, 1);
        s.apply(compute(info(Some("google swiftshader"), None, true)));
        assert_eq!(s.weights_reloads, 1);
        assert!(s
            .compute_status()
            .unwrap()
            .contains("loading the weights again"));
        s.apply(Action::Sent(Kind::Load, 5));
        s.apply(Action::Worker(
            Response::Loaded {
                id: 5,
                info: ModelInfo::for_tests(&["m.gguf"], 1),
            },
            vec![],
        ));
        assert_eq!(s.compute_status().unwrap(), "GPU (google swiftshader)");
        // An encode the GPU failed during: the photo's status says so.
        s.apply(Action::PhotoRequested(photo(7, "blob:x")));
        s.apply(Action::Worker(
            Response::ImageDecoded {
                id: 7,
                width: 4,
                height: 3,
            },
            vec![],
        ));
        s.apply(Action::Worker(
            Response::ImageEncoded {
                id: 7,
                resolution: Preset::Fast,
                encodes: 1,
                grid: (14, 14),
                windows: 1,
                millis: 5.0,
                gpu: None,
                fallback: Some("the GPU failed (device lost)".into()),
            },
            vec![],
        ));
        s.apply(compute(info(None, Some("the GPU device was lost"), false)));
        assert_eq!(
            s.compute_status().unwrap(),
            "CPU, 2 threads — GPU unavailable: the GPU device was lost · this photo was encoded on the CPU instead: the GPU failed (device lost)"
        );
    }
}

//! The app state: a plain [`State`], the [`Action`]s that change it, a pure reducer
//! (`impl Reducible`), and the URL-fragment codec for share links.
//!
//! Nothing here touches the DOM or the worker, so all of it is unit-tested natively. Side
//! effects (sending requests, painting canvases) live in hooks and components, which dispatch
//! [`Action::Sent`] for every request so that replies to superseded requests are dropped here.

use std::collections::HashSet;
use std::rc::Rc;

use yew::Reducible;

use crate::palette;
use crate::protocol::{ErrorContext, ModelInfo, RemoteFile, RequestId, Response, Stage, WeightSet};
pub use crate::protocol::{Mode, Resolution, Templates};

/// Most labels one segmentation takes (label maps are one byte per pixel).
pub const MAX_LABELS: usize = 200;
/// Longest label, in characters (CLIP reads at most 77 tokens including the prompt template).
pub const MAX_LABEL_CHARS: usize = 80;
pub const K_MIN: usize = 2;
pub const K_MAX: usize = 16;
/// Ask before downloading more than this many bytes that are not cached.
pub const CONFIRM_ABOVE_BYTES: u64 = 200 * 1024 * 1024;

/// The bundle a site may publish beside the app (relative to the page).
pub const SITE_BUNDLE: &str = "models/clip-dinoiser-q4_0.gguf";
/// Public upstream files (they send CORS headers), see METHOD.md.
pub const HUB_CLIP: &str =
    "https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/resolve/main/open_clip_model.safetensors";
pub const HUB_CONFIG: &str =
    "https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/resolve/main/open_clip_config.json";
pub const HUB_HEAD: &str =
    "https://raw.githubusercontent.com/wysoczanska/clip_dinoiser/main/checkpoints/last.pt";
/// open_clip_model.safetensors (598.6 MB) + last.pt (7.1 MB) + config.
pub const HUB_APPROX_BYTES: u64 = 605_700_000;

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

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub mode: Mode,
    pub resolution: Resolution,
    pub templates: Templates,
    /// K-Means cluster count.
    pub k: usize,
    /// Overlay opacity in percent.
    pub opacity: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: Mode::Dinoiser,
            resolution: Resolution::Balanced,
            templates: Templates::Fast,
            k: 6,
            opacity: 55,
        }
    }
}

/// Which weights to load.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum WeightsSource {
    /// This site's bundle if present, else the public hub files (asks first: ≈ 600 MB).
    #[default]
    Default,
    /// `model=<url>`: a GGUF bundle.
    Bundle(String),
    /// `clip=<url>&head=<url>[&config=<url>]`: upstream files.
    Pair {
        clip: String,
        head: Option<String>,
        config: Option<String>,
    },
}

/// File name at the end of a URL path (no query / fragment), for display and format detection.
pub fn file_name_of(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.is_empty() {
        "download".to_string()
    } else {
        percent_decode(name)
    }
}

fn remote(url: &str) -> RemoteFile {
    RemoteFile {
        url: url.to_string(),
        name: file_name_of(url),
    }
}

impl WeightsSource {
    /// Candidate sets for a `LoadUrls` request and the confirmation threshold. `resolve` turns
    /// a page-relative URL into an absolute one.
    pub fn candidates(&self, resolve: impl Fn(&str) -> String) -> (Vec<WeightSet>, Option<u64>) {
        match self {
            WeightsSource::Default => (
                vec![
                    WeightSet {
                        label: "CLIP-DINOiser bundle of this site".into(),
                        files: vec![remote(&resolve(SITE_BUNDLE))],
                        approx_bytes: None,
                    },
                    WeightSet {
                        label: "OpenCLIP ViT-B/16 (Hugging Face) + CLIP-DINOiser head (GitHub)"
                            .into(),
                        files: vec![remote(HUB_CLIP), remote(HUB_CONFIG), remote(HUB_HEAD)],
                        approx_bytes: Some(HUB_APPROX_BYTES),
                    },
                ],
                Some(CONFIRM_ABOVE_BYTES),
            ),
            WeightsSource::Bundle(url) => (
                vec![WeightSet {
                    label: format!("Model bundle {}", file_name_of(url)),
                    files: vec![remote(&resolve(url))],
                    approx_bytes: None,
                }],
                None,
            ),
            WeightsSource::Pair { clip, head, config } => {
                let mut files = vec![remote(&resolve(clip))];
                if let Some(c) = config {
                    files.push(remote(&resolve(c)));
                }
                if let Some(h) = head {
                    files.push(remote(&resolve(h)));
                }
                (
                    vec![WeightSet {
                        label: format!(
                            "CLIP weights {}{}",
                            file_name_of(clip),
                            head.as_deref()
                                .map(|h| format!(" + head {}", file_name_of(h)))
                                .unwrap_or_default()
                        ),
                        files,
                        approx_bytes: None,
                    }],
                    None,
                )
            }
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
    Checking { id: RequestId },
    /// Large download, not cached: the user has to confirm.
    Offer {
        set: WeightSet,
        total_bytes: Option<u64>,
        notes: Vec<String>,
    },
    Active {
        id: RequestId,
        stage: Stage,
        item: Option<String>,
        done: u64,
        total: Option<u64>,
        from_cache: bool,
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
    pub mode: Mode,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KMeansView {
    pub id: RequestId,
    pub k: usize,
    pub width: u32,
    pub height: u32,
    pub raw: Rc<Vec<u8>>,
    pub refined: Option<Rc<Vec<u8>>>,
    pub millis: f64,
}

/// The last image encode of the current photo.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodeInfo {
    pub resolution: Resolution,
    pub grid: (usize, usize),
    pub windows: usize,
    pub millis: f64,
}

/// Image-side work in progress (decode, encode, embed, segment, k-means).
#[derive(Clone, Debug, PartialEq)]
pub struct Work {
    pub stage: Stage,
    pub item: Option<String>,
    pub done: u64,
    pub total: Option<u64>,
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
    pub kmeans: RequestId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Load,
    Image,
    Segment,
    KMeans,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct State {
    pub labels: Vec<Label>,
    next_label_id: u32,
    pub settings: Settings,
    pub weights_source: WeightsSource,
    pub worker_ready: bool,
    pub model: Option<ModelInfo>,
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
    pub kmeans: Option<Rc<KMeansView>>,
    pub work: Option<Work>,
    /// Image encodes done by the worker (a label edit must not change it).
    pub encodes: u64,
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
        self.notices.retain(|(a, _)| *a != area);
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

    /// Add one label. Returns a reason when it was not added.
    fn push_label(&mut self, raw: &str) -> Result<(), String> {
        let text = normalise_label(raw);
        if text.is_empty() {
            return Err("Empty label: type a word or a short phrase.".into());
        }
        if text.chars().count() > MAX_LABEL_CHARS {
            let short: String = text.chars().take(24).collect();
            return Err(format!(
                "“{short}…” is too long: labels have at most {MAX_LABEL_CHARS} characters."
            ));
        }
        if self
            .labels
            .iter()
            .any(|l| l.text.to_lowercase() == text.to_lowercase())
        {
            return Err(format!("“{text}” is already in the list."));
        }
        if self.labels.len() >= MAX_LABELS {
            return Err(format!(
                "At most {MAX_LABELS} labels: “{text}” was not added."
            ));
        }
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
        for p in &parts {
            if normalise_label(p).is_empty() {
                empties += 1;
                continue;
            }
            match self.push_label(p) {
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
            Kind::KMeans => l.kmeans,
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

    /// Apply a worker reply. `payloads[i]` holds attachment `Att(i)`.
    fn on_response(&mut self, msg: Response, payloads: &[Rc<Vec<u8>>]) {
        let payload = |att: crate::protocol::Att| payloads.get(att.0).cloned();
        match msg {
            Response::Ready => self.worker_ready = true,
            Response::Progress {
                id,
                stage,
                item,
                done,
                total,
                from_cache,
            } => match self.kind_of(id) {
                Some(Kind::Load) => {
                    self.load = LoadPhase::Active {
                        id,
                        stage,
                        item,
                        done,
                        total,
                        from_cache,
                    }
                }
                Some(_) => {
                    self.work = Some(Work {
                        stage,
                        item,
                        done,
                        total,
                    })
                }
                None => {}
            },
            Response::NeedsConfirmation {
                id,
                set,
                total_bytes,
                notes,
            } => {
                if self.is_latest(Kind::Load, id) {
                    self.load = LoadPhase::Offer {
                        set,
                        total_bytes,
                        notes,
                    };
                }
            }
            Response::Loaded { id, info } => {
                if self.is_latest(Kind::Load, id) {
                    self.load = LoadPhase::Idle;
                    self.model = Some(info);
                    self.model_generation += 1;
                    self.encoded = None;
                    self.segmentation = None;
                    self.kmeans = None;
                    self.clear_notice(Area::Weights);
                    self.clear_notice(Area::Result);
                }
            }
            Response::ImageDecoded { id, width, height } => {
                if self.is_latest(Kind::Image, id) {
                    if let Some(mut p) = self.pending_photo.take() {
                        if p.id == id {
                            p.size = Some((width, height));
                            let old = self.photo.replace(p);
                            self.photo_replaced(old);
                            self.segmentation = None;
                            self.kmeans = None;
                            self.encoded = None;
                            self.work = None;
                            self.clear_notice(Area::Photo);
                        } else {
                            self.pending_photo = Some(p);
                        }
                    }
                }
            }
            Response::ImageEncoded {
                id,
                resolution,
                encodes,
                grid,
                windows,
                millis,
            } => {
                self.encodes = self.encodes.max(encodes);
                if self.photo.as_ref().is_some_and(|p| p.id == id) {
                    self.encoded = Some(EncodeInfo {
                        resolution,
                        grid,
                        windows,
                        millis,
                    });
                }
                if matches!(
                    self.work,
                    Some(Work {
                        stage: Stage::Encode,
                        ..
                    })
                ) {
                    self.work = None;
                }
            }
            Response::Segmentation {
                id,
                width,
                height,
                labels,
                label_map,
                confidence,
                areas,
                encodes,
                label_embeds,
                label_loads,
                millis,
                warnings,
            } => {
                self.encodes = self.encodes.max(encodes);
                self.label_embeds = self.label_embeds.max(label_embeds);
                self.label_loads = self.label_loads.max(label_loads);
                if !self.is_latest(Kind::Segment, id) {
                    return;
                }
                self.work = None;
                let n = width as usize * height as usize;
                match (payload(label_map), payload(confidence)) {
                    (Some(m), Some(c))
                        if m.len() == n && c.len() == n && areas.len() == labels.len() =>
                    {
                        let colours = self.colours_for(&labels);
                        self.segmentation = Some(Rc::new(SegView {
                            id,
                            width,
                            height,
                            labels,
                            colours,
                            label_map: m,
                            confidence: c,
                            areas,
                            millis,
                            mode: self.settings.mode,
                        }));
                        if warnings.is_empty() {
                            self.clear_notice(Area::Result);
                        } else {
                            self.set_notice(Area::Result, warnings.join(" "), false);
                        }
                    }
                    _ => self.set_notice(
                        Area::Result,
                        format!("The worker sent a malformed segmentation ({width}×{height})."),
                        true,
                    ),
                }
            }
            Response::KMeans {
                id,
                k,
                width,
                height,
                raw,
                refined,
                encodes,
                millis,
            } => {
                self.encodes = self.encodes.max(encodes);
                if !self.is_latest(Kind::KMeans, id) {
                    return;
                }
                if matches!(
                    self.work,
                    Some(Work {
                        stage: Stage::KMeans,
                        ..
                    })
                ) {
                    self.work = None;
                }
                let n = width as usize * height as usize;
                let raw = payload(raw).filter(|r| r.len() == n);
                let refined = refined.map(|a| payload(a).filter(|r| r.len() == n));
                match (raw, refined) {
                    (Some(raw), None) => {
                        self.kmeans = Some(Rc::new(KMeansView {
                            id,
                            k,
                            width,
                            height,
                            raw,
                            refined: None,
                            millis,
                        }))
                    }
                    (Some(raw), Some(Some(r))) => {
                        self.kmeans = Some(Rc::new(KMeansView {
                            id,
                            k,
                            width,
                            height,
                            raw,
                            refined: Some(r),
                            millis,
                        }))
                    }
                    _ => self.set_notice(
                        Area::Result,
                        "The worker sent a malformed k-means result.",
                        true,
                    ),
                }
            }
            Response::Error {
                id,
                context,
                message,
            } => self.on_error(id, context, message),
        }
    }

    fn on_error(&mut self, id: Option<RequestId>, context: ErrorContext, message: String) {
        // Errors for superseded requests are as stale as their results.
        if let Some(id) = id {
            if self.kind_of(id).is_none() {
                return;
            }
        }
        match context {
            ErrorContext::Weights => {
                self.load = LoadPhase::Idle;
                self.set_notice(Area::Weights, message, true);
            }
            ErrorContext::Image => {
                if id.is_some() && self.pending_photo.as_ref().map(|p| p.id) == id {
                    let p = self.pending_photo.take();
                    self.photo_replaced(p);
                }
                self.work = None;
                self.set_notice(Area::Photo, message, true);
            }
            ErrorContext::Labels => {
                self.work = None;
                self.set_notice(Area::Labels, message, true);
            }
            ErrorContext::Segment | ErrorContext::KMeans => {
                self.work = None;
                self.set_notice(Area::Result, message, true);
            }
            ErrorContext::Worker => {
                self.work = None;
                if matches!(
                    self.load,
                    LoadPhase::Active { .. } | LoadPhase::Checking { .. }
                ) {
                    self.load = LoadPhase::Idle;
                }
                self.set_notice(Area::Result, message, true);
            }
        }
    }

    /// Apply settings and labels from a share link.
    fn apply_share(&mut self, share: &Share) {
        if let Some(labels) = &share.labels {
            self.labels.clear();
            for l in labels {
                // Links are user data too: skip what the editor would refuse.
                let _ = self.push_label(l);
            }
            self.after_labels_changed();
        }
        if let Some(m) = share.mode {
            self.settings.mode = m;
        }
        if let Some(r) = share.resolution {
            self.settings.resolution = r;
        }
        if let Some(t) = share.templates {
            self.settings.templates = t;
        }
        if let Some(k) = share.k {
            self.settings.k = k.clamp(K_MIN, K_MAX);
        }
        if let Some(o) = share.opacity {
            self.settings.opacity = o.min(100);
        }
        if share.weights != WeightsSource::Default {
            self.weights_source = share.weights.clone();
        }
        if share.sample.is_some() {
            self.requested_sample = share.sample.clone();
        }
    }

    /// The state a page starts in: defaults, then what its URL says (`warnings` from
    /// [`Share::parse`] become a notice).
    pub fn from_link(share: &Share, warnings: Vec<String>) -> Self {
        let mut s = State::default();
        s.apply_share(share);
        if !warnings.is_empty() {
            s.set_notice(Area::Share, warnings.join(" "), true);
        }
        s
    }

    /// The share link fragment (without `#`) for the current state.
    pub fn share(&self) -> Share {
        Share {
            labels: Some(self.label_texts()),
            mode: Some(self.settings.mode),
            resolution: Some(self.settings.resolution),
            templates: Some(self.settings.templates),
            k: Some(self.settings.k),
            opacity: Some(self.settings.opacity),
            sample: self.sample_id().map(str::to_string),
            weights: self.weights_source.clone(),
        }
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
    SetMode(Mode),
    SetResolution(Resolution),
    SetTemplates(Templates),
    SetK(usize),
    SetOpacity(u8),
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
    /// The user declined the large download.
    DeclineDownload,
    /// A worker reply with its attachments.
    Worker(Response, Vec<Rc<Vec<u8>>>),
    /// A message that originates in the UI (bad drop, clipboard refused, …).
    Notice(Area, String, bool),
    Dismiss(Area),
    /// The effect revoked the first `n` stale `blob:` URLs.
    UrlsRevoked(usize),
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
                } else if first.chars().count() > MAX_LABEL_CHARS {
                    self.set_notice(
                        Area::Labels,
                        format!("Labels have at most {MAX_LABEL_CHARS} characters; the edit was not applied."),
                        true,
                    );
                } else if self
                    .labels
                    .iter()
                    .any(|l| l.id != id && l.text.to_lowercase() == first.to_lowercase())
                {
                    self.set_notice(
                        Area::Labels,
                        format!("“{first}” is already in the list."),
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
            Action::SetMode(m) => self.settings.mode = m,
            Action::SetResolution(r) => self.settings.resolution = r,
            Action::SetTemplates(t) => self.settings.templates = t,
            Action::SetK(k) => self.settings.k = k.clamp(K_MIN, K_MAX),
            Action::SetOpacity(o) => self.settings.opacity = o.min(100),
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
                self.work = Some(Work {
                    stage: Stage::Decode,
                    item: None,
                    done: 0,
                    total: None,
                });
            }
            Action::WeightsRequested(id) => {
                self.latest.load = id;
                self.load = LoadPhase::Checking { id };
                self.clear_notice(Area::Weights);
            }
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
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Share links: `#labels=cat,dog&mode=dinoiser&res=336&tpl=7&k=6&opacity=55&sample=chelsea&model=…`

/// Everything a share link (or the page URL) can hold. `None` = not given.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Share {
    pub labels: Option<Vec<String>>,
    pub mode: Option<Mode>,
    pub resolution: Option<Resolution>,
    pub templates: Option<Templates>,
    pub k: Option<usize>,
    pub opacity: Option<u8>,
    /// Sample photo id (a local photo is never shared).
    pub sample: Option<String>,
    pub weights: WeightsSource,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encode like `encodeURIComponent`, but also `!'()*`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode `%XX` escapes (invalid escapes are kept as text) and `+` as space.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pairs(s: &str) -> impl Iterator<Item = (String, String)> + '_ {
    s.trim_start_matches(['#', '?'])
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), v.to_string()),
            None => (percent_decode(p), String::new()),
        })
}

impl Share {
    /// Read the page's query string and fragment (the fragment wins). Unknown keys are
    /// ignored; bad values produce a warning each.
    pub fn parse(query: &str, fragment: &str) -> (Share, Vec<String>) {
        let mut share = Share::default();
        let mut warnings = Vec::new();
        let (mut model, mut clip, mut head, mut config) = (None, None, None, None);
        for (key, raw) in pairs(query).chain(pairs(fragment)) {
            let value = percent_decode(&raw);
            let bad = |w: &mut Vec<String>| w.push(format!("Ignored `{key}={value}` in the link."));
            match key.as_str() {
                "labels" | "l" => {
                    // Labels are separated by encoded-free commas; each part is decoded alone.
                    let list: Vec<String> = raw
                        .split(',')
                        .map(percent_decode)
                        .map(|s| normalise_label(&s))
                        .filter(|s| !s.is_empty())
                        .collect();
                    share.labels = Some(list);
                }
                "mode" => match value.as_str() {
                    "dinoiser" | "clip-dinoiser" => share.mode = Some(Mode::Dinoiser),
                    "maskclip" => share.mode = Some(Mode::MaskClip),
                    _ => bad(&mut warnings),
                },
                "res" => match value.parse().ok().and_then(Resolution::from_short_side) {
                    Some(r) => share.resolution = Some(r),
                    None => bad(&mut warnings),
                },
                "tpl" => match value.as_str() {
                    "7" | "fast" => share.templates = Some(Templates::Fast),
                    "80" | "full" => share.templates = Some(Templates::Full),
                    _ => bad(&mut warnings),
                },
                "k" => match value.parse::<usize>() {
                    Ok(k) if (K_MIN..=K_MAX).contains(&k) => share.k = Some(k),
                    _ => bad(&mut warnings),
                },
                "opacity" => match value.parse::<u8>() {
                    Ok(o) if o <= 100 => share.opacity = Some(o),
                    _ => bad(&mut warnings),
                },
                "sample" => {
                    if value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                        && !value.is_empty()
                    {
                        share.sample = Some(value)
                    } else {
                        bad(&mut warnings)
                    }
                }
                "model" => model = Some(value),
                "clip" => clip = Some(value),
                "head" => head = Some(value),
                "config" => config = Some(value),
                _ => {}
            }
        }
        let url_ok = |u: &Option<String>| u.as_deref().is_none_or(is_fetchable_url);
        for (name, u) in [
            ("model", &model),
            ("clip", &clip),
            ("head", &head),
            ("config", &config),
        ] {
            if !url_ok(u) {
                warnings.push(format!(
                    "Ignored `{name}`: only http(s) or site-relative URLs can be fetched."
                ));
            }
        }
        let keep = |u: Option<String>| u.filter(|s| is_fetchable_url(s));
        let (model, clip, head, config) = (keep(model), keep(clip), keep(head), keep(config));
        share.weights = match (model, clip) {
            (Some(m), _) => WeightsSource::Bundle(m),
            (None, Some(c)) => WeightsSource::Pair {
                clip: c,
                head,
                config,
            },
            (None, None) => {
                if head.is_some() {
                    warnings.push(
                        "A `head` URL needs a `clip` URL beside it; using the default weights."
                            .into(),
                    );
                }
                WeightsSource::Default
            }
        };
        (share, warnings)
    }

    /// The fragment text (without `#`).
    pub fn to_fragment(&self) -> String {
        let mut parts = Vec::new();
        if let Some(labels) = &self.labels {
            let enc: Vec<String> = labels.iter().map(|l| percent_encode(l)).collect();
            parts.push(format!("labels={}", enc.join(",")));
        }
        if let Some(m) = self.mode {
            parts.push(format!(
                "mode={}",
                match m {
                    Mode::Dinoiser => "dinoiser",
                    Mode::MaskClip => "maskclip",
                }
            ));
        }
        if let Some(r) = self.resolution {
            parts.push(format!("res={}", r.short_side()));
        }
        if let Some(t) = self.templates {
            parts.push(format!("tpl={}", t.count()));
        }
        if let Some(k) = self.k {
            parts.push(format!("k={k}"));
        }
        if let Some(o) = self.opacity {
            parts.push(format!("opacity={o}"));
        }
        if let Some(s) = &self.sample {
            parts.push(format!("sample={}", percent_encode(s)));
        }
        match &self.weights {
            WeightsSource::Default => {}
            WeightsSource::Bundle(u) => parts.push(format!("model={}", percent_encode(u))),
            WeightsSource::Pair { clip, head, config } => {
                parts.push(format!("clip={}", percent_encode(clip)));
                if let Some(h) = head {
                    parts.push(format!("head={}", percent_encode(h)));
                }
                if let Some(c) = config {
                    parts.push(format!("config={}", percent_encode(c)));
                }
            }
        }
        parts.join("&")
    }
}

/// http(s) URLs and site-relative paths; never `javascript:`, `data:`, `file:` and the like.
pub fn is_fetchable_url(u: &str) -> bool {
    let lower = u.trim().to_ascii_lowercase();
    if lower.is_empty() {
        return false;
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return true;
    }
    // A relative path has no scheme before its first '/', '?' or '#'.
    let head = lower.split(['/', '?', '#']).next().unwrap_or("");
    !head.contains(':') && !lower.starts_with("//")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Att;

    fn with_labels(list: &str) -> State {
        let mut s = State::default();
        s.apply(Action::AddLabels(list.into()));
        s
    }

    fn texts(s: &State) -> Vec<&str> {
        s.labels.iter().map(|l| l.text.as_str()).collect()
    }

    fn seg_response(
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
                encodes: 1,
                label_embeds: labels.len() as u64,
                label_loads: 0,
                millis: 1.0,
                warnings: vec![],
            },
            vec![Rc::new(vec![0; n]), Rc::new(vec![255; n])],
        )
    }

    #[test]
    fn comma_separated_labels_are_trimmed_and_deduplicated() {
        let s = with_labels("  cat , dog,,  Cat, sky   blue ,dog");
        assert_eq!(texts(&s), ["cat", "dog", "sky blue"]);
        let n = s.notice(Area::Labels).expect("duplicates are reported");
        assert!(
            n.error && n.text.contains("“Cat” is already in the list."),
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
    fn replies_to_superseded_requests_are_dropped() {
        let mut s = with_labels("cat,dog");
        s.apply(Action::Sent(Kind::Segment, 5));
        s.apply(Action::Sent(Kind::Segment, 7));
        let (old, p) = seg_response(5, &["cat"], 2, 2);
        s.apply(Action::Worker(old, p));
        assert!(s.segmentation.is_none());
        let (new, p) = seg_response(7, &["cat", "dog"], 3, 2);
        s.apply(Action::Worker(new, p));
        let seg = s.segmentation.clone().unwrap();
        assert_eq!((seg.width, seg.height, seg.labels.len()), (3, 2, 2));
        assert_eq!(
            seg.colours,
            vec![s.labels[0].colour(), s.labels[1].colour()]
        );
        // Stale progress and errors are ignored too.
        s.apply(Action::Worker(
            Response::Error {
                id: Some(5),
                context: ErrorContext::Segment,
                message: "old".into(),
            },
            vec![],
        ));
        assert!(s.notice(Area::Result).is_none());
        s.apply(Action::Worker(
            Response::Error {
                id: Some(7),
                context: ErrorContext::Segment,
                message: "boom".into(),
            },
            vec![],
        ));
        assert_eq!(s.notice(Area::Result).unwrap().text, "boom");
    }

    #[test]
    fn malformed_segmentation_is_reported_not_shown() {
        let mut s = with_labels("cat");
        s.apply(Action::Sent(Kind::Segment, 1));
        let (r, mut p) = seg_response(1, &["cat"], 2, 2);
        p[0] = Rc::new(vec![0; 3]);
        s.apply(Action::Worker(r, p));
        assert!(s.segmentation.is_none());
        assert!(s.notice(Area::Result).unwrap().text.contains("malformed"));
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

    fn photo(id: RequestId, url: &str) -> Photo {
        Photo {
            id,
            source: PhotoSource::Local {
                name: "x.jpg".into(),
            },
            preview_url: url.into(),
            size: None,
        }
    }

    #[test]
    fn photo_lifecycle() {
        let mut s = State::default();
        s.apply(Action::PhotoRequested(photo(3, "blob:a")));
        assert!(s.photo.is_none() && s.pending_photo.is_some());
        s.apply(Action::Worker(
            Response::ImageDecoded {
                id: 3,
                width: 640,
                height: 480,
            },
            vec![],
        ));
        assert_eq!(s.photo.as_ref().unwrap().size, Some((640, 480)));
        // A corrupt file: message, the previous photo stays, its blob URL is freed.
        s.apply(Action::PhotoRequested(photo(4, "blob:b")));
        s.apply(Action::Worker(
            Response::Error {
                id: Some(4),
                context: ErrorContext::Image,
                message: "not an image".into(),
            },
            vec![],
        ));
        assert_eq!(s.photo.as_ref().unwrap().id, 3);
        assert!(s.pending_photo.is_none());
        assert_eq!(s.notice(Area::Photo).unwrap().text, "not an image");
        assert_eq!(s.stale_urls, ["blob:b"]);
        // A good one replaces the first.
        s.apply(Action::PhotoRequested(photo(6, "blob:c")));
        assert!(s.notice(Area::Photo).is_none());
        s.apply(Action::Worker(
            Response::ImageDecoded {
                id: 6,
                width: 1,
                height: 1,
            },
            vec![],
        ));
        assert_eq!(s.photo.as_ref().unwrap().preview_url, "blob:c");
        assert_eq!(s.stale_urls, ["blob:b", "blob:a"]);
        s.apply(Action::UrlsRevoked(2));
        assert!(s.stale_urls.is_empty());
        // A decode reply for a superseded photo does nothing.
        s.apply(Action::PhotoRequested(photo(8, "blob:d")));
        s.apply(Action::Worker(
            Response::ImageDecoded {
                id: 6,
                width: 9,
                height: 9,
            },
            vec![],
        ));
        assert_eq!(s.photo.as_ref().unwrap().size, Some((1, 1)));
    }

    #[test]
    fn weights_lifecycle_and_progress_routing() {
        let mut s = State::default();
        s.apply(Action::Worker(Response::Ready, vec![]));
        assert!(s.worker_ready);
        s.apply(Action::WeightsRequested(1));
        s.apply(Action::Sent(Kind::Image, 2));
        s.apply(Action::Worker(
            Response::Progress {
                id: 1,
                stage: Stage::Download,
                item: Some("a.gguf".into()),
                done: 50,
                total: Some(100),
                from_cache: true,
            },
            vec![],
        ));
        assert!(matches!(
            s.load,
            LoadPhase::Active {
                done: 50,
                total: Some(100),
                from_cache: true,
                ..
            }
        ));
        s.apply(Action::Worker(
            Response::Progress {
                id: 2,
                stage: Stage::Encode,
                item: None,
                done: 3,
                total: Some(12),
                from_cache: false,
            },
            vec![],
        ));
        assert_eq!(s.work.as_ref().unwrap().done, 3);
        s.apply(Action::Worker(
            Response::Progress {
                id: 99,
                stage: Stage::Encode,
                item: None,
                done: 11,
                total: Some(12),
                from_cache: false,
            },
            vec![],
        ));
        assert_eq!(s.work.as_ref().unwrap().done, 3, "unknown ids are ignored");
        let info = ModelInfo {
            source: "here".into(),
            files: vec!["a.gguf".into()],
            bytes: 100,
            from_cache: true,
            has_head: true,
            storage: "q4_0".into(),
            architecture: "ViT".into(),
            millis: 1.0,
            cache_note: None,
        };
        s.apply(Action::Worker(
            Response::Loaded {
                id: 1,
                info: info.clone(),
            },
            vec![],
        ));
        assert_eq!(s.model.as_ref(), Some(&info));
        assert_eq!(s.model_generation, 1);
        assert_eq!(s.load, LoadPhase::Idle);
        // A failing second load keeps the first model and says why.
        s.apply(Action::WeightsRequested(3));
        s.apply(Action::Worker(
            Response::Error {
                id: Some(3),
                context: ErrorContext::Weights,
                message: "truncated".into(),
            },
            vec![],
        ));
        assert!(s.model.is_some());
        assert_eq!(s.notice(Area::Weights).unwrap().text, "truncated");
        assert_eq!(s.load, LoadPhase::Idle);
    }

    #[test]
    fn large_downloads_wait_for_confirmation() {
        let mut s = State::default();
        s.apply(Action::WeightsRequested(1));
        let (sets, confirm) = WeightsSource::Default.candidates(|u| format!("http://h/app/{u}"));
        assert_eq!(confirm, Some(CONFIRM_ABOVE_BYTES));
        assert_eq!(
            sets[0].files[0].url,
            "http://h/app/models/clip-dinoiser-q4_0.gguf"
        );
        assert_eq!(sets[1].files.len(), 3);
        s.apply(Action::Worker(
            Response::NeedsConfirmation {
                id: 1,
                set: sets[1].clone(),
                total_bytes: Some(HUB_APPROX_BYTES),
                notes: vec![],
            },
            vec![],
        ));
        assert!(matches!(s.load, LoadPhase::Offer { .. }));
        s.apply(Action::DeclineDownload);
        assert_eq!(s.load, LoadPhase::Idle);
        assert!(!s.notice(Area::Weights).unwrap().error);
    }

    #[test]
    fn kmeans_reply_checks_sizes() {
        let mut s = State::default();
        s.apply(Action::Sent(Kind::KMeans, 4));
        let ok = Response::KMeans {
            id: 4,
            k: 3,
            width: 2,
            height: 2,
            raw: Att(0),
            refined: Some(Att(1)),
            encodes: 2,
            millis: 1.0,
        };
        s.apply(Action::Worker(
            ok.clone(),
            vec![Rc::new(vec![0, 1, 2, 0]), Rc::new(vec![0, 1, 1, 2])],
        ));
        let km = s.kmeans.clone().unwrap();
        assert_eq!(
            (km.k, km.raw.len(), km.refined.as_ref().unwrap()[3]),
            (3, 4, 2)
        );
        assert_eq!(s.encodes, 2);
        s.kmeans = None;
        s.apply(Action::Worker(
            ok,
            vec![Rc::new(vec![0, 1, 2, 0]), Rc::new(vec![0])],
        ));
        assert!(s.kmeans.is_none());
        assert!(s.notice(Area::Result).unwrap().error);
    }

    #[test]
    fn share_fragment_round_trip() {
        let mut s = with_labels("cat,hot dog,crème brûlée,a&b=c #1,background");
        s.apply(Action::SetMode(Mode::MaskClip));
        s.apply(Action::SetResolution(Resolution::Paper));
        s.apply(Action::SetTemplates(Templates::Full));
        s.apply(Action::SetK(9));
        s.apply(Action::SetOpacity(70));
        s.weights_source = WeightsSource::Pair {
            clip: "https://example.org/w/clip.safetensors?download=1".into(),
            head: Some("weights/last.pt".into()),
            config: None,
        };
        s.apply(Action::PhotoRequested(Photo {
            id: 1,
            source: PhotoSource::Sample("chelsea".into()),
            preview_url: "samples/chelsea.jpg".into(),
            size: None,
        }));
        let frag = s.share().to_fragment();
        assert!(!frag.contains(' ') && !frag.contains('#'), "{frag}");
        assert!(
            frag.starts_with(
                "labels=cat,hot%20dog,cr%C3%A8me%20br%C3%BBl%C3%A9e,a%26b%3Dc%20%231,background&"
            ),
            "{frag}"
        );
        let (back, warnings) = Share::parse("", &format!("#{frag}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(back, s.share());
        let mut fresh = State::default();
        fresh.apply(Action::RestoreShare(back));
        assert_eq!(fresh.label_texts(), s.label_texts());
        assert_eq!(fresh.settings, s.settings);
        assert_eq!(fresh.weights_source, s.weights_source);
    }

    #[test]
    fn share_parse_query_and_fragment() {
        let (sh, w) = Share::parse(
            "?model=https%3A%2F%2Fx.org%2Fm.gguf&res=224",
            "#res=448&k=99&tpl=3&labels=a,,b",
        );
        assert_eq!(
            sh.weights,
            WeightsSource::Bundle("https://x.org/m.gguf".into())
        );
        assert_eq!(sh.resolution, Some(Resolution::Paper), "the fragment wins");
        assert_eq!(sh.k, None);
        assert_eq!(sh.templates, None);
        assert_eq!(sh.labels, Some(vec!["a".into(), "b".into()]));
        assert_eq!(w.len(), 2, "{w:?}");
        let (sh, w) = Share::parse("", "clip=javascript:alert(1)&head=last.pt");
        assert_eq!(sh.weights, WeightsSource::Default);
        assert_eq!(w.len(), 2, "{w:?}");
        let (sh, _) = Share::parse(
            "clip=c.safetensors&head=h.pt&config=open_clip_config.json",
            "",
        );
        assert_eq!(
            sh.weights,
            WeightsSource::Pair {
                clip: "c.safetensors".into(),
                head: Some("h.pt".into()),
                config: Some("open_clip_config.json".into())
            }
        );
        let (sets, confirm) = sh.weights.candidates(|u| format!("http://h/{u}"));
        assert_eq!(confirm, None, "explicit URLs load without asking");
        let names: Vec<&str> = sets[0].files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["c.safetensors", "open_clip_config.json", "h.pt"]);
        // Labels in a link obey the editor's rules.
        let (sh, _) = Share::parse("", &format!("labels=cat,CAT,{}", "y".repeat(200)));
        let mut s = State::default();
        s.apply(Action::RestoreShare(sh));
        assert_eq!(s.label_texts(), ["cat"]);
        let (sh, w) = Share::parse("", "sample=../../etc&k=2&opacity=101&mode=x");
        assert_eq!(
            (sh.sample, sh.k, sh.opacity, sh.mode),
            (None, Some(2), None, None)
        );
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn a_page_starts_from_its_link() {
        let (sh, w) = Share::parse("?clip=c.safetensors", "#labels=cat,dog&sample=coffee&k=99");
        let s = State::from_link(&sh, w);
        assert_eq!(s.label_texts(), ["cat", "dog"]);
        assert_eq!(s.requested_sample.as_deref(), Some("coffee"));
        assert!(matches!(s.weights_source, WeightsSource::Pair { .. }));
        assert!(s.notice(Area::Share).unwrap().text.contains("k=99"));
        let mut s = s;
        s.apply(Action::SetLabels(vec![]));
        assert!(
            s.labels.is_empty() && s.notice(Area::Labels).is_none(),
            "clearing is not an error"
        );
        s.apply(Action::PhotoRequested(photo(1, "blob:x")));
        assert_eq!(
            s.requested_sample, None,
            "a local photo replaces the linked sample"
        );
    }

    #[test]
    fn url_helpers() {
        assert_eq!(
            file_name_of("https://h/a/b/open_clip_model.safetensors?download=true"),
            "open_clip_model.safetensors"
        );
        assert_eq!(file_name_of("models/my%20model.gguf"), "my model.gguf");
        assert_eq!(file_name_of("https://h/"), "download");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41+b"), "%zzA b");
        assert_eq!(
            percent_decode(&percent_encode("日本 & more")),
            "日本 & more"
        );
        assert!(
            is_fetchable_url("models/x.gguf")
                && is_fetchable_url("HTTPS://x/y")
                && is_fetchable_url("/abs/x")
        );
        assert!(
            !is_fetchable_url("javascript:alert(1)")
                && !is_fetchable_url("data:x")
                && !is_fetchable_url("//evil/x")
        );
    }
}

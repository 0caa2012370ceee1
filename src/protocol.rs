//! The messages between the UI thread and the model worker: one enum each way.
//!
//! A message travels as a JSON string plus a list of *attachments* (`Blob`s and `ArrayBuffer`s,
//! see [`crate::transport`]). Binary payloads — a photo, a weight file, a label map — are never
//! serialised: the message names them by index ([`Att`]) and the buffers are transferred.
//!
//! Every request carries an id. The worker keeps only the newest request of each kind and
//! tags every reply with the id it answers, so the UI can drop replies to superseded requests.

use serde::{Deserialize, Serialize};

/// Request id, unique per page session (allocated by the UI, increasing).
pub type RequestId = u64;

/// Index into the attachment list that travels beside a message.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Att(pub usize);

// The option enums are the model crate's own (one definition each); they travel as their
// lower-case names: `"dinoiser"` / `"maskclip"`, `"fast"` / `"balanced"` / `"paper"`,
// `"fast"` / `"full"`; a refinement as `"none"` or `{"pamr": {"iterations": 10}}`.
pub use clipdino::pipeline::{Mode, Preset, Refine};
pub use clipdino::templates::TemplateSet;
pub use clipdino::ComputePath;
/// The compute setting ("auto" / "gpu" / "cpu"): the GPU crate's own.
pub use clipdino_gpu::DeviceChoice;

/// How the app computes with weights unless a [`WeightSet`] says otherwise: the towers' linear
/// layers on the integer kernel (≈ 2× faster than f32 in wasm, half the memory).
pub const APP_COMPUTE: ComputePath = ComputePath::Int;

/// Which of a site's published bundles: the default (Q8_0 on the integer path) or the
/// high-precision one (F16 on the f32 path; larger download, closest to the upstream model).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Standard,
    High,
}

/// Which of the two overlays a segmentation is for: the page's main one, or the second one of
/// the compare view (its own mode and refinement, the same photo, labels and encode). The
/// worker keeps the newest request of each side (a new primary request does not supersede a
/// pending compare request).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    #[default]
    Primary,
    Compare,
}

/// What [`ModelInfo::architecture`] says of OpenAI CLIP weights (QuickGELU): the page reads it
/// to say why the CLIP-DINOiser head is not available with them.
pub const QUICK_GELU_NOTE: &str = "QuickGELU (OpenAI CLIP)";

/// The processing resolutions the app offers: short side 224 or 336 in one pass, or the paper's
/// 448 with 448×448 sliding windows (stride 224).
pub const RESOLUTIONS: [Preset; 3] = [Preset::Fast, Preset::Balanced, Preset::Paper];

/// A weight file on the web.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    pub url: String,
    /// File name shown to the user and used for format detection (`last.pt`, `x.gguf`, …).
    pub name: String,
}

/// A complete set of weight files (a GGUF bundle, or CLIP + optional config + DINOiser head).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WeightSet {
    /// Short description for the user ("CLIP-DINOiser bundle from this site").
    pub label: String,
    pub files: Vec<RemoteFile>,
    /// Known download size when the server does not say (the hub files are ≈ 600 MB).
    pub approx_bytes: Option<u64>,
    /// Files on another origin than the page (named by a link): not downloaded before the
    /// user agrees, whatever their size, unless already in the browser cache.
    #[serde(default)]
    pub ask_first: bool,
    /// How the model computes with these weights (`None`: [`APP_COMPUTE`]).
    #[serde(default)]
    pub compute: Option<ComputePath>,
    /// This site's own bundle of that precision (its fidelity may be in the site's
    /// `models/quality.json`); `None` for any other weights.
    #[serde(default)]
    pub site_bundle: Option<Precision>,
}

/// A file the user picked or dropped, carried as a `Blob` attachment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LocalFile {
    pub name: String,
    pub size: u64,
    pub blob: Att,
}

/// Where the photo comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ImageInput {
    /// A URL the worker fetches (sample photos of the site).
    Url { url: String },
    /// Bytes the user dropped, pasted or picked.
    File(LocalFile),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Request {
    /// Load the first set of `candidates` that is cached or reachable. When it is neither
    /// cached nor smaller than `confirm_above` bytes, answer `NeedsConfirmation` instead.
    LoadUrls {
        id: RequestId,
        candidates: Vec<WeightSet>,
        confirm_above: Option<u64>,
    },
    /// Load weight files picked by the user (format detected from content).
    LoadFiles {
        id: RequestId,
        files: Vec<LocalFile>,
    },
    /// Decode a photo (EXIF orientation applied, downscaled for processing) and encode it as
    /// soon as a model is loaded.
    SetImage(ImageRequest),
    /// Segment a decoded photo with labels. Cheap when its image features are cached: only
    /// new labels are embedded.
    Segment(SegmentRequest),
    /// Cluster the dense features of a decoded photo, raw and refined.
    KMeans(KMeansRequest),
    /// Stop the request with this id (a download stops at the next chunk).
    Cancel { id: RequestId },
    /// Compute with this many threads (`None`: one per logical core) from the next job on;
    /// answered by [`Response::Threads`]. Only the multi-threaded build has more than one.
    SetThreads {
        id: RequestId,
        threads: Option<usize>,
    },
    /// Run the image tower where `compute` says from the next encode on (the GPU opened and
    /// self-checked here once; `Cpu` releases it); answered by [`Response::Compute`].
    SetCompute {
        id: RequestId,
        compute: DeviceChoice,
    },
    /// Fetch a small text file of the site (its quality report, `models/quality.json`) of at
    /// most `max_bytes`; answered by [`Response::SiteFile`].
    ReadSiteFile {
        id: RequestId,
        url: String,
        max_bytes: u64,
    },
    /// Test hook (sent only by a page opened with `?debug-worker`): make the next image
    /// encode fail this way after its first block, as a real crash would.
    InjectFault { id: RequestId, fault: Fault },
}

/// A crash the page tests can ask the worker for (see [`Request::InjectFault`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A Rust panic (the panic hook's message, then a wasm trap).
    Panic,
    /// What a failed allocation does: `handle_alloc_error`, an abort without a message.
    OutOfMemory,
    /// A worker that computes forever and never replies (the page's silence rule ends it).
    Hang,
    /// Not a crash of the worker: the GPU device is lost (destroyed, as a driver reset would)
    /// after the first block of the next encode on the GPU.
    GpuLost,
}

// The payloads of the image-side requests are plain structs so that the worker keeps them as
// they arrived (its scheduler stores the newest of each kind). On the wire a request is
// `{"Segment": {"id": …, …}}`, exactly as when they were inline struct variants.

/// See [`Request::SetImage`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ImageRequest {
    pub id: RequestId,
    pub input: ImageInput,
    /// Encode at this resolution as soon as a model is there (what the next `Segment` most
    /// likely asks for).
    pub resolution: Preset,
}

/// See [`Request::Segment`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SegmentRequest {
    pub id: RequestId,
    /// The `SetImage` request of the photo.
    pub image: RequestId,
    pub labels: Vec<String>,
    /// Index of the background label, if any (CLIP-DINOiser background rule).
    pub background: Option<usize>,
    pub mode: Mode,
    pub resolution: Preset,
    pub templates: TemplateSet,
    /// Refinement of the probabilities before the argmax (absent in older senders: none).
    #[serde(default)]
    pub refine: Refine,
    #[serde(default)]
    pub side: Side,
}

/// See [`Request::KMeans`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct KMeansRequest {
    pub id: RequestId,
    /// The `SetImage` request of the photo.
    pub image: RequestId,
    /// Number of clusters.
    pub k: usize,
    pub resolution: Preset,
    /// The mode whose features are clustered beside the raw MaskCLIP ones (the page's primary
    /// mode; MaskCLIP alone for `maskclip`).
    #[serde(default)]
    pub mode: Mode,
}

impl Request {
    pub fn id(&self) -> RequestId {
        match self {
            Request::LoadUrls { id, .. } | Request::LoadFiles { id, .. } => *id,
            Request::SetImage(r) => r.id,
            Request::Segment(r) => r.id,
            Request::KMeans(r) => r.id,
            Request::Cancel { id }
            | Request::SetThreads { id, .. }
            | Request::SetCompute { id, .. }
            | Request::ReadSiteFile { id, .. }
            | Request::InjectFault { id, .. } => *id,
        }
    }
}

/// What the worker is doing, for progress lines.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Looking for cached copies and asking servers for sizes.
    Probe,
    /// Downloading (or reading from the Cache API when `from_cache`); `done`/`total` in bytes.
    Download,
    /// Reading a local file; bytes.
    ReadFile,
    /// Parsing weights and building the model.
    Build,
    /// Decoding the photo.
    Decode,
    /// Running the image encoder; `done`/`total` in transformer blocks (over all windows).
    Encode,
    /// Embedding labels with the text encoder; `done`/`total` in labels.
    Embed,
    /// Classifying patches, refining, upsampling.
    Segment,
    KMeans,
}

/// How far a request got.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Progress {
    pub stage: Stage,
    /// File or item being worked on, if any.
    pub item: Option<String>,
    pub done: u64,
    pub total: Option<u64>,
    /// A download is read from the browser cache, not the network.
    pub from_cache: bool,
}

impl Progress {
    /// Stage `stage` has begun (nothing counted yet).
    pub fn started(stage: Stage) -> Self {
        Self {
            stage,
            item: None,
            done: 0,
            total: None,
            from_cache: false,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// Where the weights came from (URL host or "local files").
    pub source: String,
    pub files: Vec<String>,
    pub bytes: u64,
    pub from_cache: bool,
    /// Whether a CLIP-DINOiser head is present (else only raw MaskCLIP works).
    pub has_head: bool,
    /// Storage type(s) of the weights, e.g. "q4_0 + f32".
    pub storage: String,
    /// e.g. "ViT 12×768, patch 16 · text 12×512 · embed 512" (+ [`QUICK_GELU_NOTE`]).
    pub architecture: String,
    pub millis: f64,
    /// Why the weights were not stored in the Cache API, when they were not.
    pub cache_note: Option<String>,
}

#[cfg(test)]
impl ModelInfo {
    /// This site's bundle of `files` (`bytes` in all), with a head: the model the reducer's and
    /// the protocol's tests load.
    pub(crate) fn for_tests(files: &[&str], bytes: u64) -> Self {
        ModelInfo {
            source: "this site".into(),
            files: files.iter().map(|f| f.to_string()).collect(),
            bytes,
            from_cache: false,
            has_head: true,
            storage: "q8_0".into(),
            architecture: "ViT".into(),
            millis: 1.0,
            cache_note: None,
        }
    }
}

impl ModelInfo {
    /// OpenAI CLIP weights (QuickGELU): the CLIP-DINOiser head is refused on them.
    pub fn is_quick_gelu(&self) -> bool {
        self.architecture.contains(QUICK_GELU_NOTE)
    }

    /// What the model line says of weights without a head: the modes they can run.
    pub fn head_note(&self) -> Option<String> {
        if self.has_head {
            return None;
        }
        let usable: Vec<&str> = Mode::ALL
            .into_iter()
            .filter(|&m| self.mode_unavailable(m).is_none())
            .map(Mode::title)
            .collect();
        Some(format!("no CLIP-DINOiser head: {}", usable.join(", ")))
    }

    /// Why `mode` cannot be used with these weights, if it cannot.
    pub fn mode_unavailable(&self, mode: Mode) -> Option<String> {
        if !mode.needs_head() || self.has_head {
            return None;
        }
        Some(if self.is_quick_gelu() {
            format!(
                "{} needs the CLIP-DINOiser head, which cannot be used with OpenAI CLIP (QuickGELU) weights: it was trained on OpenCLIP features.",
                mode.title()
            )
        } else {
            format!(
                "{} needs the CLIP-DINOiser head, and these weights have none.",
                mode.title()
            )
        })
    }
}

/// What [`Request::ReadSiteFile`] found.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum SiteFile {
    Text(String),
    /// Not there (404, another error status, or no answer): the site does not publish it.
    Missing,
    /// There, but not readable as text within the size limit: why.
    Unreadable(String),
}

/// Where an error belongs on the page.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorContext {
    Weights,
    Image,
    Labels,
    Segment,
    KMeans,
    Worker,
}

/// The threads the model computes with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// The worker is the multi-threaded build (the page is cross-origin isolated).
    pub multi_threaded_build: bool,
    /// Threads in use (1: the worker's own).
    pub threads: usize,
    /// Logical cores the browser reports (`navigator.hardwareConcurrency`).
    pub hardware: usize,
    /// Why fewer threads than asked for are in use, if something failed.
    pub note: Option<String>,
}

/// Where the image tower runs: the compute setting and what became of it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ComputeInfo {
    pub setting: DeviceChoice,
    /// The GPU adapter the image tower runs on (it passed the self-check), if any.
    pub gpu: Option<String>,
    /// Why the CPU computes although the setting allows a GPU (no WebGPU adapter, a CPU
    /// emulation under "auto", a failed self-check, a lost device).
    pub note: Option<String>,
    /// A GPU is ready but the loaded model's image-tower weights were not kept (it was loaded
    /// while the setting was CPU): the weights must be loaded again to upload them.
    #[serde(default)]
    pub needs_weights: bool,
    /// The setting is being applied (the adapter probed, the self-check running).
    #[serde(default)]
    pub pending: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Response {
    /// The worker started and waits for requests.
    Ready,
    /// The threads in use: once at start (before `Ready`), then after every `SetThreads`
    /// (`id` is that request's).
    Threads {
        id: Option<RequestId>,
        info: ThreadInfo,
    },
    /// Where the image tower runs: after every `SetCompute` (`id` is that request's), and
    /// unasked (`id: None`) when the worker decides at start and when the GPU is lost.
    Compute {
        id: Option<RequestId>,
        info: ComputeInfo,
    },
    Progress {
        id: RequestId,
        /// On the wire its fields sit beside `id`.
        #[serde(flatten)]
        progress: Progress,
    },
    /// The chosen weights are large and not cached: ask the user first.
    NeedsConfirmation {
        id: RequestId,
        set: WeightSet,
        total_bytes: Option<u64>,
        /// What was tried before this set (e.g. "no bundle on this site").
        notes: Vec<String>,
    },
    Loaded {
        id: RequestId,
        info: ModelInfo,
    },
    ImageDecoded {
        id: RequestId,
        /// Size of the photo after EXIF orientation.
        width: u32,
        height: u32,
    },
    ImageEncoded {
        id: RequestId,
        resolution: Preset,
        /// Image encodes done by this worker so far (a cheap label edit must not change it).
        encodes: u64,
        grid: (usize, usize),
        windows: usize,
        millis: f64,
        /// The GPU adapter that ran the image tower (`None`: the CPU did).
        #[serde(default)]
        gpu: Option<String>,
        /// Why this encode ran on the CPU although a GPU was in use: the GPU failed during it.
        #[serde(default)]
        fallback: Option<String>,
    },
    Segmentation {
        id: RequestId,
        /// Label map size (the processing resolution, same aspect as the photo).
        width: u32,
        height: u32,
        labels: Vec<String>,
        /// `width·height` bytes: label index per pixel.
        label_map: Att,
        /// `width·height` bytes: winning probability × 255.
        confidence: Att,
        /// Fraction of the pixels per label.
        areas: Vec<f32>,
        /// Which overlay, and what was computed (the mode falls back to MaskCLIP without a head).
        #[serde(default)]
        side: Side,
        #[serde(default)]
        mode: Mode,
        #[serde(default)]
        refine: Refine,
        /// Milliseconds spent computing the mode's last block from the cached trunk, when it
        /// was not cached yet (a mode switch; never a new encode).
        #[serde(default)]
        mode_millis: Option<f64>,
        /// Milliseconds of classifying, refining and making the maps (after the labels).
        #[serde(default)]
        segment_millis: f64,
        /// Last blocks computed from a cached trunk by this worker so far.
        #[serde(default)]
        mode_blocks: u64,
        encodes: u64,
        /// Labels this worker ran through the text tower so far, and labels it read back from
        /// browser storage instead (stored by an earlier page load).
        #[serde(default)]
        label_embeds: u64,
        #[serde(default)]
        label_loads: u64,
        millis: f64,
        /// Non-fatal remarks (e.g. a label truncated to 77 tokens).
        warnings: Vec<String>,
    },
    KMeans {
        id: RequestId,
        k: usize,
        /// Patch grid size.
        width: u32,
        height: u32,
        /// `width·height` bytes: cluster per patch of the raw MaskCLIP features.
        raw: Att,
        /// The same for the features of `mode` (absent for MaskCLIP, and for CLIP-DINOiser
        /// without a head); clusters are matched to `raw` so that equal colours mean
        /// overlapping clusters.
        refined: Option<Att>,
        #[serde(default)]
        mode: Mode,
        encodes: u64,
        millis: f64,
    },
    Error {
        id: Option<RequestId>,
        context: ErrorContext,
        message: String,
    },
    /// The answer to [`Request::ReadSiteFile`].
    SiteFile {
        id: RequestId,
        file: SiteFile,
    },
    /// The worker's last words: it panicked and is about to trap (the page starts a fresh one).
    Panicked {
        message: String,
    },
}

impl Response {
    pub fn id(&self) -> Option<RequestId> {
        match self {
            Response::Ready | Response::Panicked { .. } => None,
            Response::Threads { id, .. } | Response::Compute { id, .. } => *id,
            Response::Progress { id, .. }
            | Response::NeedsConfirmation { id, .. }
            | Response::Loaded { id, .. }
            | Response::ImageDecoded { id, .. }
            | Response::ImageEncoded { id, .. }
            | Response::Segmentation { id, .. }
            | Response::KMeans { id, .. }
            | Response::SiteFile { id, .. } => Some(*id),
            Response::Error { id, .. } => *id,
        }
    }
}

/// JSON text of a message (the string part of an envelope).
pub fn to_json<T: Serialize>(msg: &T) -> String {
    // Serialising these plain enums cannot fail (no maps with non-string keys, no I/O).
    serde_json::to_string(msg).unwrap_or_else(|e| format!("{{\"serialise_error\":\"{e}\"}}"))
}

/// Parse the string part of an envelope.
pub fn from_json<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("malformed message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_json() {
        let reqs = [
            Request::LoadUrls {
                id: 1,
                candidates: vec![WeightSet {
                    label: "bundle".into(),
                    files: vec![RemoteFile {
                        url: "models/clip-dinoiser.gguf".into(),
                        name: "clip-dinoiser.gguf".into(),
                    }],
                    approx_bytes: Some(90_000_000),
                    ask_first: true,
                    compute: Some(ComputePath::F32),
                    site_bundle: Some(Precision::High),
                }],
                confirm_above: Some(200 << 20),
            },
            Request::LoadFiles {
                id: 2,
                files: vec![LocalFile {
                    name: "last.pt".into(),
                    size: 7,
                    blob: Att(0),
                }],
            },
            Request::SetImage(ImageRequest {
                id: 3,
                input: ImageInput::File(LocalFile {
                    name: "a.jpg".into(),
                    size: 9,
                    blob: Att(0),
                }),
                resolution: Preset::Paper,
            }),
            Request::Segment(SegmentRequest {
                id: 4,
                image: 3,
                labels: vec!["cat".into(), "background".into()],
                background: Some(1),
                mode: Mode::NaClip,
                resolution: Preset::Fast,
                templates: TemplateSet::Full,
                refine: Refine::PAMR,
                side: Side::Compare,
            }),
            Request::KMeans(KMeansRequest {
                id: 5,
                image: 3,
                k: 6,
                resolution: Preset::Balanced,
                mode: Mode::SClip,
            }),
            Request::Cancel { id: 1 },
            Request::SetThreads {
                id: 6,
                threads: None,
            },
            Request::SetCompute {
                id: 7,
                compute: DeviceChoice::Gpu,
            },
        ];
        for (i, r) in reqs.iter().enumerate() {
            let back: Request = from_json(&to_json(r)).unwrap();
            assert_eq!(&back, r);
            assert_eq!(back.id(), [1, 2, 3, 4, 5, 1, 6, 7][i]);
        }
        // The wire text: payload structs travel like the struct variants they replaced; the
        // option enums by the model crate's lower-case names (they were `"MaskClip"`, `"Fast"`,
        // `"Full"` when the app had its own copies; UI and worker are always built together).
        assert_eq!(
            to_json(&reqs[3]),
            r#"{"Segment":{"id":4,"image":3,"labels":["cat","background"],"background":1,"mode":"naclip","resolution":"fast","templates":"full","refine":{"pamr":{"iterations":10}},"side":"compare"}}"#
        );
        assert_eq!(
            to_json(&reqs[4]),
            r#"{"KMeans":{"id":5,"image":3,"k":6,"resolution":"balanced","mode":"sclip"}}"#
        );
        // A sender without the mode / refinement / side fields (an older page): the defaults.
        let old: Request = from_json(
            r#"{"Segment":{"id":4,"image":3,"labels":["cat"],"background":null,"mode":"maskclip","resolution":"fast","templates":"full"}}"#,
        )
        .unwrap();
        let Request::Segment(old) = old else {
            panic!("{old:?}")
        };
        assert_eq!((old.refine, old.side), (Refine::None, Side::Primary));
        let old: Request =
            from_json(r#"{"KMeans":{"id":5,"image":3,"k":6,"resolution":"balanced"}}"#).unwrap();
        assert!(matches!(
            old,
            Request::KMeans(KMeansRequest {
                mode: Mode::Dinoiser,
                ..
            })
        ));
        // Every mode travels by its own name.
        for m in Mode::ALL {
            assert_eq!(to_json(&m), format!("\"{}\"", m.name()));
        }
        assert_eq!(to_json(&reqs[5]), r#"{"Cancel":{"id":1}}"#);
        assert_eq!(
            to_json(&reqs[6]),
            r#"{"SetThreads":{"id":6,"threads":null}}"#
        );
        assert_eq!(
            to_json(&reqs[7]),
            r#"{"SetCompute":{"id":7,"compute":"gpu"}}"#
        );
        for c in DeviceChoice::ALL {
            assert_eq!(to_json(&c), format!("\"{}\"", c.name()));
        }
    }

    #[test]
    fn responses_round_trip_through_json() {
        let r = Response::Segmentation {
            id: 9,
            width: 4,
            height: 2,
            labels: vec!["a".into()],
            label_map: Att(0),
            confidence: Att(1),
            areas: vec![1.0],
            side: Side::Compare,
            mode: Mode::ClearClip,
            refine: Refine::PAMR,
            mode_millis: Some(12.5),
            segment_millis: 2.0,
            mode_blocks: 1,
            encodes: 1,
            label_embeds: 2,
            label_loads: 1,
            millis: 3.5,
            warnings: vec![],
        };
        let back: Response = from_json(&to_json(&r)).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.id(), Some(9));
        assert!(from_json::<Response>("{\"Nope\":1}").is_err());
        let r = Response::Compute {
            id: None,
            info: ComputeInfo {
                setting: DeviceChoice::Auto,
                gpu: None,
                note: Some("no WebGPU adapter".into()),
                needs_weights: false,
                pending: false,
            },
        };
        assert_eq!(from_json::<Response>(&to_json(&r)).unwrap(), r);
        // An encode reply of an older worker (no GPU fields): the CPU, no fallback.
        let old: Response = from_json(
            r#"{"ImageEncoded":{"id":3,"resolution":"fast","encodes":1,"grid":[14,14],"windows":1,"millis":9.5}}"#,
        )
        .unwrap();
        assert!(matches!(
            old,
            Response::ImageEncoded {
                gpu: None,
                fallback: None,
                ..
            }
        ));
    }

    #[test]
    fn modes_needing_the_head_say_why_they_are_unavailable() {
        let mut info = ModelInfo {
            architecture: "ViT 12×768, patch 16 · text 12×512 · embed 512".into(),
            ..ModelInfo::for_tests(&[], 0)
        };
        assert!(Mode::ALL
            .iter()
            .all(|&m| info.mode_unavailable(m).is_none()));
        info.has_head = false;
        let why = info.mode_unavailable(Mode::Dinoiser).unwrap();
        assert!(why.ends_with("these weights have none."), "{why}");
        info.architecture.push_str(&format!(" · {QUICK_GELU_NOTE}"));
        let why = info.mode_unavailable(Mode::Dinoiser).unwrap();
        assert!(why.contains("OpenAI CLIP (QuickGELU)"), "{why}");
        for m in [Mode::MaskClip, Mode::ClearClip, Mode::NaClip, Mode::SClip] {
            assert_eq!(info.mode_unavailable(m), None);
        }
        assert_eq!(
            info.head_note().as_deref(),
            Some("no CLIP-DINOiser head: MaskCLIP, ClearCLIP, NACLIP, SCLIP")
        );
        info.has_head = true;
        assert_eq!(info.head_note(), None);
    }

    #[test]
    fn resolutions() {
        let sides: Vec<_> = RESOLUTIONS.iter().map(|r| r.short_side()).collect();
        assert_eq!(sides, [Some(224), Some(336), Some(448)]);
        let windows: Vec<_> = RESOLUTIONS.iter().map(|r| r.window().is_some()).collect();
        assert_eq!(windows, [false, false, true]);
    }
}

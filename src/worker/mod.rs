//! The model worker: owns the weights, the decoded photo and its cached features, and answers
//! [`Request`]s with [`Response`]s.
//!
//! The worker keeps the *newest* request of each kind rather than a queue: a new photo, label
//! set or k replaces the one waiting, and every reply names the request it answers. A single
//! job loop ([`pump`]) runs one job at a time (decode, encode, embed, segment, k-means) and
//! yields to the event loop between jobs and between labels, so newer requests are seen early.
//! Downloads run as their own task (they mostly wait on the network), so a photo can be
//! decoded while the weights arrive. A running encode cannot be interrupted (candle computes
//! synchronously); its result stays cached for the photo and resolution it was made for.

mod fetch;
mod image;
mod label_cache;
mod model;
#[cfg(all(test, target_arch = "wasm32"))]
mod wasm_tests;

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::spawn_local;
use web_sys::{Blob, DedicatedWorkerGlobalScope, MessageEvent};

use clipdino::pipeline::ImageFeatures;
use clipdino::tokenizer::ClipTokenizer;

use crate::protocol::{
    from_json, to_json, Att, ErrorContext, ImageInput, LocalFile, Mode, ModelInfo, Request,
    RequestId, Resolution, Response, Stage, Templates, WeightSet,
};
use crate::transport::{buffer_of, pack, unpack};
use fetch::{Reach, ReadError};
use model::Model;

/// Site-relative path of the tokenizer file (copied next to the app by Trunk).
const TOKENIZER_URL: &str = "tokenizer.json";

struct ImageJob {
    id: RequestId,
    input: ImageInput,
    blob: Option<Blob>,
    resolution: Resolution,
}

struct SegmentJob {
    id: RequestId,
    image: RequestId,
    labels: Vec<String>,
    background: Option<usize>,
    mode: Mode,
    resolution: Resolution,
    templates: Templates,
}

struct KMeansJob {
    id: RequestId,
    image: RequestId,
    k: usize,
    resolution: Resolution,
}

struct Photo {
    id: RequestId,
    decoded: image::Decoded,
}

struct Features {
    image: RequestId,
    resolution: Resolution,
    model_gen: u64,
    feats: ImageFeatures,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every load request; a download of an older generation stops.
    load_gen: u64,
    cancelled: HashSet<RequestId>,
    model: Option<Rc<Model>>,
    model_gen: u64,
    /// [`label_cache::weights_fingerprint`] of `model`'s files plus its compute path (set
    /// with it): the model part of the label cache keys.
    model_fingerprint: String,
    tokenizer: Option<ClipTokenizer>,
    /// [`label_cache::content_hash`] of the tokenizer file.
    tokenizer_hash: u64,
    image_job: Option<ImageJob>,
    photo: Option<Rc<Photo>>,
    /// Encode the photo at this resolution as soon as a model is there.
    eager: Option<(RequestId, Resolution)>,
    features: Option<Rc<Features>>,
    segment: Option<SegmentJob>,
    kmeans: Option<KMeansJob>,
    encodes: u64,
    /// Labels run through the text tower, and labels read back from browser storage.
    label_embeds: u64,
    label_loads: u64,
    pumping: bool,
}

type Shared = Rc<RefCell<Inner>>;

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

fn post(msg: &Response, attachments: Vec<JsValue>) {
    let env = pack(to_json(msg), attachments);
    if let Err(e) = scope().post_message_with_transfer(&env.message, &env.transfer) {
        web_sys::console::error_1(&e);
    }
}

fn post_error(id: Option<RequestId>, context: ErrorContext, message: impl Into<String>) {
    post(
        &Response::Error {
            id,
            context,
            message: message.into(),
        },
        vec![],
    );
}

fn progress(
    id: RequestId,
    stage: Stage,
    item: Option<&str>,
    done: u64,
    total: Option<u64>,
    from_cache: bool,
) {
    post(
        &Response::Progress {
            id,
            stage,
            item: item.map(str::to_string),
            done,
            total,
            from_cache,
        },
        vec![],
    );
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Let the event loop deliver pending messages.
async fn yield_now() {
    gloo_timers::future::TimeoutFuture::new(0).await;
}

/// Worker entry point (called by `src/bin/worker.rs`).
pub fn start() {
    // A bug must not leave the page waiting forever: say so, then log as usual.
    std::panic::set_hook(Box::new(|info| {
        post_error(
            None,
            ErrorContext::Worker,
            format!("The model worker crashed ({info}). Reload the page to start it again."),
        );
        console_error_panic_hook::hook(info);
    }));
    let shared: Shared = Rc::new(RefCell::new(Inner::default()));
    let s = shared.clone();
    let onmessage =
        Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| on_message(&s, ev));
    scope().set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    onmessage.forget();
    post(&Response::Ready, vec![]);
}

fn blob_at(atts: &[JsValue], a: Att) -> Option<Blob> {
    atts.get(a.0).and_then(|v| v.dyn_ref::<Blob>().cloned())
}

fn on_message(shared: &Shared, ev: MessageEvent) {
    let (json, atts) = match unpack(&ev.data()) {
        Ok(x) => x,
        Err(e) => return post_error(None, ErrorContext::Worker, e),
    };
    let req: Request = match from_json(&json) {
        Ok(r) => r,
        Err(e) => return post_error(None, ErrorContext::Worker, e),
    };
    match req {
        Request::LoadUrls {
            id,
            candidates,
            confirm_above,
        } => {
            let gen = bump_load(shared);
            let s = shared.clone();
            spawn_local(async move { load_urls(&s, gen, id, candidates, confirm_above).await });
        }
        Request::LoadFiles { id, files } => {
            let gen = bump_load(shared);
            let blobs: Vec<(LocalFile, Option<Blob>)> = files
                .into_iter()
                .map(|f| {
                    let b = blob_at(&atts, f.blob);
                    (f, b)
                })
                .collect();
            let s = shared.clone();
            spawn_local(async move { load_files(&s, gen, id, blobs).await });
        }
        Request::SetImage {
            id,
            input,
            resolution,
        } => {
            let blob = match &input {
                ImageInput::File(f) => blob_at(&atts, f.blob),
                ImageInput::Url { .. } => None,
            };
            let mut st = shared.borrow_mut();
            st.image_job = Some(ImageJob {
                id,
                input,
                blob,
                resolution,
            });
            drop(st);
            kick(shared);
        }
        Request::Segment {
            id,
            image,
            labels,
            background,
            mode,
            resolution,
            templates,
        } => {
            shared.borrow_mut().segment = Some(SegmentJob {
                id,
                image,
                labels,
                background,
                mode,
                resolution,
                templates,
            });
            kick(shared);
        }
        Request::KMeans {
            id,
            image,
            k,
            resolution,
        } => {
            shared.borrow_mut().kmeans = Some(KMeansJob {
                id,
                image,
                k,
                resolution,
            });
            kick(shared);
        }
        Request::Cancel { id } => {
            let mut st = shared.borrow_mut();
            st.cancelled.insert(id);
            if st.segment.as_ref().is_some_and(|j| j.id == id) {
                st.segment = None;
            }
            if st.kmeans.as_ref().is_some_and(|j| j.id == id) {
                st.kmeans = None;
            }
        }
    }
}

fn bump_load(shared: &Shared) -> u64 {
    let mut st = shared.borrow_mut();
    st.load_gen += 1;
    st.load_gen
}

/// Start the job loop unless it runs.
fn kick(shared: &Shared) {
    if shared.borrow().pumping {
        return;
    }
    shared.borrow_mut().pumping = true;
    let s = shared.clone();
    spawn_local(async move {
        pump(&s).await;
        s.borrow_mut().pumping = false;
    });
}

// ---------------------------------------------------------------------------------------------
// Weights

async fn tokenizer(shared: &Shared) -> Result<ClipTokenizer, String> {
    if let Some(t) = shared.borrow().tokenizer.clone() {
        return Ok(t);
    }
    let blob = fetch::get_blob(TOKENIZER_URL)
        .await
        .map_err(|e| format!("The tokenizer file of this site could not be loaded: {e}"))?;
    let bytes = fetch::blob_bytes(&blob).await?;
    let t = ClipTokenizer::from_json_bytes(&bytes).map_err(|e| format!("tokenizer.json: {e}"))?;
    let mut st = shared.borrow_mut();
    st.tokenizer = Some(t.clone());
    st.tokenizer_hash = label_cache::content_hash(&bytes);
    Ok(t)
}

fn is_current_load(shared: &Shared, gen: u64, id: RequestId) -> bool {
    let st = shared.borrow();
    st.load_gen == gen && !st.cancelled.contains(&id)
}

/// Where a set comes from, for the user: host names, or "this site".
fn host_list(set: &WeightSet) -> String {
    let own = js_sys::global()
        .unchecked_into::<web_sys::WorkerGlobalScope>()
        .location()
        .host();
    let mut hosts: Vec<String> = set
        .files
        .iter()
        .map(|f| fetch::host_of(&f.url))
        .map(|h| if h == own { "this site".to_string() } else { h })
        .collect();
    hosts.dedup();
    hosts.join(" + ")
}

async fn load_urls(
    shared: &Shared,
    gen: u64,
    id: RequestId,
    candidates: Vec<WeightSet>,
    confirm_above: Option<u64>,
) {
    let cache = fetch::open_cache().await;
    let cache_note = cache.as_ref().err().cloned();
    let cache = cache.ok();
    progress(id, Stage::Probe, None, 0, None, false);
    let mut notes = Vec::new();
    let mut chosen = None;
    for set in candidates {
        // Cached sets load without asking and without the network.
        let mut all_cached = cache.is_some();
        if let Some(c) = &cache {
            for f in &set.files {
                if fetch::cached(c, &f.url).await.is_none() {
                    all_cached = false;
                    break;
                }
            }
        }
        if all_cached {
            chosen = Some((set, true, None));
            break;
        }
        // A large third-party download the user has to approve first: no request goes out
        // before they do (the known size is enough to ask).
        if let (Some(limit), Some(approx)) = (confirm_above, set.approx_bytes) {
            if approx > limit {
                chosen = Some((set, false, Some(approx)));
                break;
            }
        }
        let mut total: Option<u64> = Some(0);
        let mut problem = None;
        for f in &set.files {
            match fetch::head(&f.url).await {
                Reach::Ok(n) => total = total.zip(n).map(|(a, b)| a + b),
                Reach::Missing(why) | Reach::Unreachable(why) => {
                    problem = Some(why);
                    break;
                }
            }
        }
        if !is_current_load(shared, gen, id) {
            return;
        }
        match problem {
            None => {
                let total = total.or(set.approx_bytes);
                chosen = Some((set, false, total));
                break;
            }
            Some(why) => notes.push(format!("{} — {}.", set.label, why.trim_end_matches('.'))),
        }
    }
    let Some((set, cached, total)) = chosen else {
        let mut msg = String::from("No model weights could be loaded. ");
        msg.push_str(&notes.join(" "));
        msg.push_str(" You can pick the weight files from your disk instead (.gguf, or .safetensors/.bin with last.pt).");
        return post_error(Some(id), ErrorContext::Weights, msg);
    };
    if !cached {
        if let (Some(limit), Some(t)) = (confirm_above, total.or(set.approx_bytes)) {
            if t > limit {
                return post(
                    &Response::NeedsConfirmation {
                        id,
                        set,
                        total_bytes: Some(t),
                        notes,
                    },
                    vec![],
                );
            }
        }
    }
    let started = now_ms();
    let mut files = Vec::new();
    let mut to_cache = Vec::new();
    let mut from_cache = true;
    let mut bytes = 0u64;
    for f in &set.files {
        let name = f.name.clone();
        let s = shared.clone();
        let cancelled = move || !is_current_load(&s, gen, id);
        let mut report = |done: u64, total: Option<u64>, fc: bool| {
            progress(id, Stage::Download, Some(&name), done, total, fc)
        };
        match fetch::get(cache.as_ref(), &f.url, &f.name, &mut report, &cancelled).await {
            Ok(got) => {
                from_cache &= got.from_cache;
                bytes += got.bytes.len() as u64;
                if let Some(b) = got.to_cache {
                    to_cache.push((f.url.clone(), b));
                }
                files.push((f.name.clone(), got.bytes));
            }
            Err(ReadError::Cancelled) => {
                if shared.borrow().cancelled.contains(&id) {
                    post_error(Some(id), ErrorContext::Weights, "Download cancelled.");
                }
                return;
            }
            Err(ReadError::Failed(e)) => {
                let hint = " You can pick the weight files from your disk instead.";
                return post_error(Some(id), ErrorContext::Weights, format!("{e}{hint}"));
            }
        }
    }
    let info = ModelInfo {
        source: if from_cache {
            format!("{} (browser cache)", host_list(&set))
        } else {
            host_list(&set)
        },
        files: set.files.iter().map(|f| f.name.clone()).collect(),
        bytes,
        from_cache,
        has_head: false,
        storage: String::new(),
        architecture: String::new(),
        millis: 0.0,
        cache_note,
    };
    let Some(mut info) = install(shared, gen, id, files, info).await else {
        return;
    };
    // Only weights that built a model are worth keeping.
    if let Some(c) = &cache {
        for (url, blob) in to_cache {
            if let Err(e) = fetch::put(c, &url, &blob).await {
                info.cache_note = Some(format!(
                    "The weights could not be stored in the browser cache ({e}); they will be downloaded again next time."
                ));
            }
        }
    }
    info.millis = now_ms() - started;
    post(&Response::Loaded { id, info }, vec![]);
    kick(shared);
}

async fn load_files(
    shared: &Shared,
    gen: u64,
    id: RequestId,
    blobs: Vec<(LocalFile, Option<Blob>)>,
) {
    let started = now_ms();
    let mut files = Vec::new();
    let mut bytes = 0u64;
    for (f, blob) in &blobs {
        let Some(blob) = blob else {
            return post_error(
                Some(id),
                ErrorContext::Weights,
                format!("{} could not be read.", f.name),
            );
        };
        if blob.size() == 0.0 {
            return post_error(
                Some(id),
                ErrorContext::Weights,
                format!("“{}” is empty (0 bytes).", f.name),
            );
        }
        let s = shared.clone();
        let cancelled = move || !is_current_load(&s, gen, id);
        let mut report = |done: u64, total: Option<u64>| {
            progress(id, Stage::ReadFile, Some(&f.name), done, total, false)
        };
        match fetch::read_blob(blob, &f.name, &mut report, &cancelled).await {
            Ok(b) => {
                bytes += b.len() as u64;
                files.push((f.name.clone(), b));
            }
            Err(ReadError::Cancelled) => return,
            Err(ReadError::Failed(e)) => return post_error(Some(id), ErrorContext::Weights, e),
        }
    }
    let info = ModelInfo {
        source: "local files".into(),
        files: blobs.iter().map(|(f, _)| f.name.clone()).collect(),
        bytes,
        from_cache: false,
        has_head: false,
        storage: String::new(),
        architecture: String::new(),
        millis: 0.0,
        cache_note: None,
    };
    if let Some(mut info) = install(shared, gen, id, files, info).await {
        info.millis = now_ms() - started;
        post(&Response::Loaded { id, info }, vec![]);
        kick(shared);
    }
}

/// Parse + build, then swap the model in. Returns the completed info, or `None` after an
/// error was posted (the previous model, if any, stays).
async fn install(
    shared: &Shared,
    gen: u64,
    id: RequestId,
    files: Vec<(String, Vec<u8>)>,
    info: ModelInfo,
) -> Option<ModelInfo> {
    let tok = match tokenizer(shared).await {
        Ok(t) => t,
        Err(e) => {
            post_error(Some(id), ErrorContext::Weights, e);
            return None;
        }
    };
    if !is_current_load(shared, gen, id) {
        return None;
    }
    let total = info.bytes;
    progress(id, Stage::Build, None, total, Some(total), info.from_cache);
    yield_now().await;
    let fingerprint = label_cache::weights_fingerprint(&files, shared.borrow().tokenizer_hash);
    match Model::build(files, tok, info) {
        Ok(m) => {
            let info = m.info.clone();
            let mut st = shared.borrow_mut();
            st.model_fingerprint = format!("{fingerprint}-{}", m.compute_path);
            st.model = Some(Rc::new(m));
            st.model_gen += 1;
            st.features = None;
            Some(info)
        }
        Err(e) => {
            let had = shared.borrow().model.is_some();
            let keep = if had {
                " The previously loaded model stays in use."
            } else {
                ""
            };
            post_error(
                Some(id),
                ErrorContext::Weights,
                format!("These weights could not be loaded: {e}.{keep}"),
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Job loop

enum Job {
    Decode,
    Encode {
        image: RequestId,
        resolution: Resolution,
        for_id: RequestId,
    },
    Segment,
    KMeans,
}

fn features_match(st: &Inner, image: RequestId, res: Resolution) -> bool {
    st.features
        .as_ref()
        .is_some_and(|f| f.image == image && f.resolution == res && f.model_gen == st.model_gen)
}

fn next_job(st: &mut Inner) -> Option<Job> {
    if st.image_job.is_some() {
        return Some(Job::Decode);
    }
    st.model.as_ref()?;
    let photo_id = st.photo.as_ref().map(|p| p.id);
    // Requests for photos that are gone (replaced, or failed to decode) are dropped.
    if st
        .segment
        .as_ref()
        .is_some_and(|j| Some(j.image) != photo_id)
    {
        st.segment = None;
    }
    if st
        .kmeans
        .as_ref()
        .is_some_and(|j| Some(j.image) != photo_id)
    {
        st.kmeans = None;
    }
    if let Some(j) = &st.segment {
        return Some(if features_match(st, j.image, j.resolution) {
            Job::Segment
        } else {
            Job::Encode {
                image: j.image,
                resolution: j.resolution,
                for_id: j.id,
            }
        });
    }
    if let Some(j) = &st.kmeans {
        return Some(if features_match(st, j.image, j.resolution) {
            Job::KMeans
        } else {
            Job::Encode {
                image: j.image,
                resolution: j.resolution,
                for_id: j.id,
            }
        });
    }
    if let Some((image, resolution)) = st.eager {
        if Some(image) == photo_id && !features_match(st, image, resolution) {
            return Some(Job::Encode {
                image,
                resolution,
                for_id: image,
            });
        }
        st.eager = None;
    }
    None
}

async fn pump(shared: &Shared) {
    loop {
        yield_now().await;
        let job = next_job(&mut shared.borrow_mut());
        match job {
            None => return,
            Some(Job::Decode) => decode_job(shared).await,
            Some(Job::Encode {
                image,
                resolution,
                for_id,
            }) => encode_job(shared, image, resolution, for_id).await,
            Some(Job::Segment) => segment_job(shared).await,
            Some(Job::KMeans) => kmeans_job(shared),
        }
    }
}

async fn decode_job(shared: &Shared) {
    let Some(job) = shared.borrow_mut().image_job.take() else {
        return;
    };
    let id = job.id;
    progress(id, Stage::Decode, None, 0, None, false);
    let (blob, name) = match &job.input {
        ImageInput::File(f) => match job.blob {
            Some(b) => (b, f.name.clone()),
            None => {
                return post_error(
                    Some(id),
                    ErrorContext::Image,
                    format!("“{}” could not be read.", f.name),
                )
            }
        },
        ImageInput::Url { url } => match fetch::get_blob(url).await {
            Ok(b) => (b, crate::state::file_name_of(url)),
            Err(e) => return post_error(Some(id), ErrorContext::Image, e),
        },
    };
    let decoded = match image::decode(&blob, &name).await {
        Ok(d) => d,
        Err(e) => return post_error(Some(id), ErrorContext::Image, e),
    };
    // A newer photo arrived while decoding: this one is stale.
    if shared.borrow().image_job.is_some() {
        return;
    }
    let (width, height) = (decoded.width, decoded.height);
    {
        let mut st = shared.borrow_mut();
        st.photo = Some(Rc::new(Photo { id, decoded }));
        st.features = None;
        st.eager = Some((id, job.resolution));
    }
    post(&Response::ImageDecoded { id, width, height }, vec![]);
}

async fn encode_job(shared: &Shared, image: RequestId, resolution: Resolution, for_id: RequestId) {
    let (model, photo, gen) = {
        let st = shared.borrow();
        match (st.model.clone(), st.photo.clone()) {
            (Some(m), Some(p)) if p.id == image => (m, p, st.model_gen),
            _ => return,
        }
    };
    let started = now_ms();
    let (w, h, opts) = model.plan(resolution, photo.decoded.width, photo.decoded.height);
    let pixels = match image::to_chw01(&photo.decoded, w, h).await {
        Ok(p) => p,
        Err(e) => {
            drop_requests_for(shared, image);
            return post_error(
                Some(for_id),
                ErrorContext::Image,
                format!("The photo could not be resized: {e}"),
            );
        }
    };
    let mut last = 0.0;
    let mut report = |p: clipdino::pipeline::Progress| {
        let now = now_ms();
        let done = (p.window * p.blocks + p.block) as u64;
        let total = (p.windows * p.blocks) as u64;
        if now - last > 50.0 || done == total {
            last = now;
            let item = (p.windows > 1).then(|| format!("window {} of {}", p.window + 1, p.windows));
            progress(
                image,
                Stage::Encode,
                item.as_deref(),
                done,
                Some(total),
                false,
            );
        }
    };
    let result = model.encode(pixels, w, h, &opts, &mut report);
    let feats = match result {
        Ok(f) => f,
        Err(e) => {
            drop_requests_for(shared, image);
            return post_error(
                Some(for_id),
                ErrorContext::Image,
                format!("Encoding the photo failed: {e}"),
            );
        }
    };
    let grid = feats.grid();
    let windows = feats.windows.len();
    let encodes = {
        let mut st = shared.borrow_mut();
        if st.model_gen != gen {
            return; // a new model arrived meanwhile; these features are void
        }
        st.encodes += 1;
        st.features = Some(Rc::new(Features {
            image,
            resolution,
            model_gen: gen,
            feats,
        }));
        st.encodes
    };
    post(
        &Response::ImageEncoded {
            id: image,
            resolution,
            encodes,
            grid,
            windows,
            millis: now_ms() - started,
        },
        vec![],
    );
}

fn drop_requests_for(shared: &Shared, image: RequestId) {
    let mut st = shared.borrow_mut();
    if st.segment.as_ref().is_some_and(|j| j.image == image) {
        st.segment = None;
    }
    if st.kmeans.as_ref().is_some_and(|j| j.image == image) {
        st.kmeans = None;
    }
    st.eager = None;
}

/// Is `id` still the segment request waiting (not replaced or cancelled)?
fn segment_current(shared: &Shared, id: RequestId) -> bool {
    let st = shared.borrow();
    st.segment.as_ref().is_some_and(|j| j.id == id) && !st.cancelled.contains(&id)
}

async fn segment_job(shared: &Shared) {
    let (id, labels, templates, model, fingerprint) = {
        let st = shared.borrow();
        let Some(j) = &st.segment else { return };
        let Some(m) = st.model.clone() else { return };
        let fp = st.model_fingerprint.clone();
        (j.id, j.labels.clone(), j.templates, m, fp)
    };
    let started = now_ms();
    if labels.is_empty() || labels.len() > 255 {
        shared.borrow_mut().segment = None;
        return post_error(
            Some(id),
            ErrorContext::Labels,
            format!("{} labels: between 1 and 200 are needed.", labels.len()),
        );
    }
    // Embed the labels not seen yet, one per turn of the event loop so that a newer label set
    // takes over at once (finished embeddings stay cached). Each is first looked up in browser
    // storage, and stored there once computed (storage failures only mean computing).
    let missing: Vec<&String> = labels
        .iter()
        .filter(|l| !model.is_embedded(l, templates))
        .collect();
    let store = if missing.is_empty() {
        None
    } else {
        label_cache::open().await
    };
    let mut warnings = Vec::new();
    for (i, label) in missing.iter().enumerate() {
        progress(
            id,
            Stage::Embed,
            Some(label),
            i as u64,
            Some(missing.len() as u64),
            false,
        );
        let key = label_cache::entry_key(
            &fingerprint,
            label_cache::EMBED_CACHE_VERSION,
            templates,
            label,
        );
        let stored = match &store {
            Some(c) => label_cache::load(c, &key, model.embed_dim()).await,
            None => None,
        };
        let reused = stored.is_some_and(|(values, cut)| {
            model
                .insert_embedding(label, templates, values, cut)
                .is_ok()
        });
        if reused {
            shared.borrow_mut().label_loads += 1;
        } else {
            if let Err(e) = model.embed(label, templates) {
                shared.borrow_mut().segment = None;
                return post_error(Some(id), ErrorContext::Labels, e);
            }
            shared.borrow_mut().label_embeds += 1;
            if let (Some(c), Some((values, cut))) = (&store, model.embedding(label, templates)) {
                let c = c.clone();
                spawn_local(async move {
                    let _ = label_cache::store(&c, &key, &values, cut).await;
                });
            }
        }
        yield_now().await;
        if !segment_current(shared, id) {
            return;
        }
    }
    for l in &labels {
        if model.embed(l, templates).unwrap_or(false) {
            warnings.push(format!(
                "“{l}” is longer than CLIP's 77-token context and was cut."
            ));
        }
    }
    let Some(job) = shared.borrow_mut().segment.take().filter(|j| j.id == id) else {
        return;
    };
    let feats = {
        let st = shared.borrow();
        match &st.features {
            Some(f)
                if f.image == job.image
                    && f.resolution == job.resolution
                    && f.model_gen == st.model_gen =>
            {
                f.clone()
            }
            // Features went stale while embedding: put the job back for the loop to re-encode.
            _ => {
                drop(st);
                shared.borrow_mut().segment.get_or_insert(job);
                return;
            }
        }
    };
    progress(id, Stage::Segment, None, 0, None, false);
    let result = model
        .label_matrix(&job.labels, templates)
        .and_then(|m| model.segment(&feats.feats, &m, job.mode, job.background));
    let maps = match result {
        Ok(r) => r,
        Err(e) => {
            return post_error(
                Some(id),
                ErrorContext::Segment,
                format!("Segmentation failed: {e}"),
            )
        }
    };
    if job.mode == Mode::Dinoiser && !feats.feats.has_refined() {
        warnings.push("No CLIP-DINOiser head is loaded: showing raw MaskCLIP.".into());
    }
    let (encodes, label_embeds, label_loads) = {
        let st = shared.borrow();
        (st.encodes, st.label_embeds, st.label_loads)
    };
    post(
        &Response::Segmentation {
            id,
            width: maps.width,
            height: maps.height,
            labels: job.labels,
            label_map: Att(0),
            confidence: Att(1),
            areas: maps.areas,
            encodes,
            label_embeds,
            label_loads,
            millis: now_ms() - started,
            warnings,
        },
        vec![buffer_of(&maps.labels), buffer_of(&maps.confidence)],
    );
}

fn kmeans_job(shared: &Shared) {
    let (job, feats, model, encodes) = {
        let mut st = shared.borrow_mut();
        let Some(job) = st.kmeans.take() else { return };
        let (Some(f), Some(m)) = (st.features.clone(), st.model.clone()) else {
            return;
        };
        (job, f, m, st.encodes)
    };
    let started = now_ms();
    progress(job.id, Stage::KMeans, None, 0, None, false);
    match model.kmeans(&feats.feats, job.k) {
        Ok(maps) => {
            let mut atts = vec![buffer_of(&maps.raw)];
            let refined_att = maps.refined.map(|r| {
                atts.push(buffer_of(&r));
                Att(1)
            });
            post(
                &Response::KMeans {
                    id: job.id,
                    k: job.k,
                    width: maps.width,
                    height: maps.height,
                    raw: Att(0),
                    refined: refined_att,
                    encodes,
                    millis: now_ms() - started,
                },
                atts,
            );
        }
        Err(e) => post_error(
            Some(job.id),
            ErrorContext::KMeans,
            format!("K-Means failed: {e}"),
        ),
    }
}

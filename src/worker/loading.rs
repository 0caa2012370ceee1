//! Weights into a model, beside the job loop: candidate URL sets are probed (browser cache
//! first, then a HEAD request each; a large third-party download waits for the user's consent),
//! downloaded with progress into the Cache API, or local files are read; then the files are
//! parsed and the model is built and swapped in. A newer load request (or a cancel) stops an
//! older one at its next step (see [`LoadTicket`]).

use std::rc::Rc;

use wasm_bindgen::JsCast;
use web_sys::Blob;

use clipdino::tokenizer::ClipTokenizer;

use super::fetch::{self, Reach, ReadError};
use super::jobs::kick;
use super::model::Model;
use super::parts;
use super::scheduler::LoadTicket;
use super::{label_cache, now_ms, post, post_error, progress, yield_now, Shared};
use crate::protocol::{
    ComputePath, ErrorContext, LocalFile, ModelInfo, Response, Stage, WeightSet, APP_COMPUTE,
};

/// Site-relative path of the tokenizer file (copied next to the app by Trunk).
const TOKENIZER_URL: &str = "tokenizer.json";

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

fn is_current(shared: &Shared, ticket: &LoadTicket) -> bool {
    shared.borrow().sched.is_current_load(ticket)
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

/// Load the first of `candidates` that is cached or reachable (see [`Request::LoadUrls`]).
///
/// [`Request::LoadUrls`]: crate::protocol::Request::LoadUrls
pub(super) async fn load_urls(
    shared: &Shared,
    ticket: LoadTicket,
    candidates: Vec<WeightSet>,
    confirm_above: Option<u64>,
) {
    let id = ticket.id;
    let cache = fetch::open_cache().await;
    let cache_note = cache.as_ref().err().cloned();
    let cache = cache.ok();
    progress(id, Stage::Probe, None, 0, None, false);
    let mut notes = Vec::new();
    let mut chosen = None;
    let mut plan = None;
    for set in candidates {
        // A bundle in parts: its manifest tells the size and which parts are cached.
        if let Some(url) = parts::manifest_url(&set) {
            let probed = parts::probe(cache.as_ref(), url).await;
            if !is_current(shared, &ticket) {
                return;
            }
            match probed {
                Ok(p) => {
                    let left = p.remaining();
                    chosen = Some((set, left == 0, Some(left)));
                    plan = Some(p);
                    break;
                }
                Err(why) => {
                    notes.push(format!("{} — {}.", set.label, why.trim_end_matches('.')));
                    continue;
                }
            }
        }
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
        if !is_current(shared, &ticket) {
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
        let total = total.or(set.approx_bytes);
        let large = matches!((confirm_above, total), (Some(limit), Some(t)) if t > limit);
        if large || set.ask_first {
            return post(
                &Response::NeedsConfirmation {
                    id,
                    set,
                    total_bytes: total,
                    notes,
                },
                vec![],
            );
        }
    }
    let started = now_ms();
    let mut files = Vec::new();
    let mut to_cache = Vec::new();
    let mut from_cache = true;
    let mut bytes = 0u64;
    let mut cache_note = cache_note;
    if let Some(plan) = &plan {
        let name = plan.manifest.name.clone();
        let s = shared.clone();
        let cancelled = move || !is_current(&s, &ticket);
        let mut report = |done: u64, total: u64, fc: bool| {
            progress(id, Stage::Download, Some(&name), done, Some(total), fc)
        };
        match parts::download(cache.as_ref(), plan, &mut report, &cancelled).await {
            Ok(joined) => {
                from_cache = joined.from_cache;
                bytes = joined.bytes.len() as u64;
                cache_note = cache_note.or(joined.cache_note);
                // The manifest is kept once a model was built (offline reloads).
                if let Ok(b) = Blob::new_with_u8_array_sequence(&js_sys::Array::of1(
                    &js_sys::Uint8Array::from(plan.manifest_bytes.as_slice()),
                )) {
                    to_cache.push((plan.manifest_url.clone(), b));
                }
                files.push((plan.manifest.name.clone(), joined.bytes));
            }
            Err(e) => return load_failed(shared, id, e),
        }
    }
    for f in set.files.iter().filter(|_| plan.is_none()) {
        let name = f.name.clone();
        let s = shared.clone();
        let cancelled = move || !is_current(&s, &ticket);
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
            Err(e) => return load_failed(shared, id, e),
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
    let compute = set.compute.unwrap_or(APP_COMPUTE);
    let Some(mut info) = install(shared, ticket, files, info, compute).await else {
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

/// Say why a download stopped (nothing for a superseded request).
fn load_failed(shared: &Shared, id: crate::protocol::RequestId, e: ReadError) {
    match e {
        ReadError::Cancelled => {
            if shared.borrow().sched.is_cancelled(id) {
                post_error(Some(id), ErrorContext::Weights, "Download cancelled.");
            }
        }
        ReadError::Failed(e) => {
            let hint = " You can pick the weight files from your disk instead.";
            post_error(Some(id), ErrorContext::Weights, format!("{e}{hint}"));
        }
    }
}

/// Load weight files the user picked (see [`Request::LoadFiles`]).
///
/// [`Request::LoadFiles`]: crate::protocol::Request::LoadFiles
pub(super) async fn load_files(
    shared: &Shared,
    ticket: LoadTicket,
    blobs: Vec<(LocalFile, Option<Blob>)>,
) {
    let id = ticket.id;
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
        let cancelled = move || !is_current(&s, &ticket);
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
    if let Some(mut info) = install(shared, ticket, files, info, APP_COMPUTE).await {
        info.millis = now_ms() - started;
        post(&Response::Loaded { id, info }, vec![]);
        kick(shared);
    }
}

/// Parse + build on `compute`, then swap the model in. Returns the completed info, or `None`
/// after an error was posted (the previous model, if any, stays).
async fn install(
    shared: &Shared,
    ticket: LoadTicket,
    files: Vec<(String, Vec<u8>)>,
    info: ModelInfo,
    compute: ComputePath,
) -> Option<ModelInfo> {
    let id = ticket.id;
    let tok = match tokenizer(shared).await {
        Ok(t) => t,
        Err(e) => {
            post_error(Some(id), ErrorContext::Weights, e);
            return None;
        }
    };
    if !is_current(shared, &ticket) {
        return None;
    }
    let total = info.bytes;
    progress(id, Stage::Build, None, total, Some(total), info.from_cache);
    yield_now().await;
    let fingerprint = label_cache::weights_fingerprint(&files, &shared.borrow().tokenizer_hash);
    let keep_visual = shared.borrow().compute.keeps_weights();
    match Model::build(files, tok, info, compute, keep_visual) {
        Ok(m) => {
            let info = m.info.clone();
            let mut st = shared.borrow_mut();
            st.model_fingerprint = format!("{fingerprint}-{}", m.compute_path);
            st.model = Some(Rc::new(m));
            st.sched.model_installed();
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

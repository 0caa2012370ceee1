//! The model worker: owns the weights, the decoded photo and its cached features, and answers
//! [`Request`]s with [`Response`]s.
//!
//! * [`scheduler`]: which job runs next — the newest request of each kind, cancels, stale
//!   features, the order of decode, encode, segment and K-Means (pure, unit-tested natively);
//! * `loading`: weights from URLs (probed, confirmed, downloaded into the Cache API) or local
//!   files, built into a [`model::Model`] beside the running jobs; `parts`: a bundle published
//!   in parts, fetched in parallel from its manifest, each part checked and cached;
//! * `jobs`: the job bodies (decode, encode, embed labels + segment, K-Means) and the loop that
//!   runs them one at a time, yielding to the event loop between jobs and between labels so
//!   that newer requests are seen early.
//!
//! * `compute`: where the image tower runs (the compute setting, the WebGPU device, the
//!   model's tower uploaded there).
//!
//! Every reply names the request it answers. A running encode cannot be interrupted (candle
//! computes synchronously); its result stays cached for the photo, resolution and model it was
//! made for.

mod compute;
mod fetch;
mod image;
mod jobs;
mod label_cache;
mod loading;
mod model;
mod parts;
pub mod scheduler;
pub mod threads;
#[cfg(all(test, target_arch = "wasm32"))]
mod wasm_tests;

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::spawn_local;
use web_sys::{Blob, DedicatedWorkerGlobalScope, MessageEvent};

use clipdino::pipeline::ImageFeatures;
use clipdino::tokenizer::ClipTokenizer;

use crate::protocol::{
    from_json, to_json, Att, ErrorContext, Fault, ImageInput, LocalFile, Progress, Request,
    RequestId, Response, Side, Stage,
};
use crate::transport::{pack, unpack};
use model::Model;
use scheduler::{Scheduler, Slot};

/// What the worker holds between messages.
#[derive(Default)]
struct State {
    /// The features are the photo's encode: the trunk (the tokens entering the last block)
    /// and every mode's last block computed from it so far, added in place on a mode switch.
    sched: Scheduler<Option<Blob>, image::Decoded, RefCell<ImageFeatures>>,
    /// The model of generation `sched.model()`.
    model: Option<Rc<Model>>,
    /// [`label_cache::weights_fingerprint`] of `model`'s files plus its compute path (set
    /// with it): the model part of the label cache keys.
    model_fingerprint: String,
    tokenizer: Option<ClipTokenizer>,
    /// [`label_cache::content_hash`] (SHA-256) of the tokenizer file.
    tokenizer_hash: String,
    /// Image encodes done; labels run through the text tower; labels read back from browser
    /// storage (the page shows them; the page tests read them).
    encodes: u64,
    /// Last blocks computed from a cached trunk (mode switches; never an encode).
    mode_blocks: u64,
    label_embeds: u64,
    label_loads: u64,
    /// The job loop runs.
    pumping: bool,
    /// A crash the next image encode performs (test hook, [`Request::InjectFault`]).
    fault: Option<Fault>,
    /// Where the image tower runs.
    compute: compute::Compute,
}

type Shared = Rc<RefCell<State>>;

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
    let progress = Progress {
        stage,
        item: item.map(str::to_string),
        done,
        total,
        from_cache,
    };
    post(&Response::Progress { id, progress }, vec![]);
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
    // A bug must not leave the page waiting forever: these last words reach the page before
    // the trap that follows, and the page starts a fresh worker.
    std::panic::set_hook(Box::new(|info| {
        post(
            &Response::Panicked {
                message: format!(
                    "The model worker crashed ({}).",
                    crate::crash::one_line(&info.to_string())
                ),
            },
            vec![],
        );
        console_error_panic_hook::hook(info);
    }));
    let shared: Shared = Rc::new(RefCell::new(State::default()));
    let s = shared.clone();
    let onmessage =
        Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| on_message(&s, ev));
    // The thread pool starts first (its workers start only while this thread is free); the
    // UI holds its requests until `Ready`.
    spawn_local(async move {
        let info = threads::configure(None).await;
        post(&Response::Threads { id: None, info }, vec![]);
        scope().set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
        onmessage.forget();
        post(&Response::Ready, vec![]);
    });
    // The default setting ("auto") is applied beside the first requests; a model built
    // meanwhile keeps its image-tower weights until the answer is known.
    spawn_local(async move {
        compute::configure(&shared, None, Default::default()).await;
    });
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
            let ticket = shared.borrow_mut().sched.begin_load(id);
            let s = shared.clone();
            spawn_local(
                async move { loading::load_urls(&s, ticket, candidates, confirm_above).await },
            );
        }
        Request::LoadFiles { id, files } => {
            let ticket = shared.borrow_mut().sched.begin_load(id);
            let blobs: Vec<(LocalFile, Option<Blob>)> = files
                .into_iter()
                .map(|f| {
                    let b = blob_at(&atts, f.blob);
                    (f, b)
                })
                .collect();
            let s = shared.clone();
            spawn_local(async move { loading::load_files(&s, ticket, blobs).await });
        }
        Request::SetImage(r) => {
            let blob = match &r.input {
                ImageInput::File(f) => blob_at(&atts, f.blob),
                ImageInput::Url { .. } => None,
            };
            shared.borrow_mut().sched.set_image(r, blob);
            jobs::kick(shared);
        }
        Request::Segment(r) => {
            let slot = match r.side {
                Side::Primary => Slot::MAIN,
                Side::Compare => Slot::COMPARE,
            };
            shared.borrow_mut().sched.segment(slot, r);
            jobs::kick(shared);
        }
        Request::KMeans(r) => {
            shared.borrow_mut().sched.kmeans(r);
            jobs::kick(shared);
        }
        Request::Cancel { id } => shared.borrow_mut().sched.cancel(id),
        Request::SetThreads {
            id,
            threads: wanted,
        } => spawn_local(async move {
            let info = threads::configure(wanted).await;
            post(&Response::Threads { id: Some(id), info }, vec![]);
        }),
        Request::SetCompute { id, compute } => {
            let s = shared.clone();
            spawn_local(async move { compute::configure(&s, Some(id), compute).await });
        }
        Request::ReadSiteFile { id, url, max_bytes } => spawn_local(async move {
            let file = fetch::small_text(&url, max_bytes).await;
            post(&Response::SiteFile { id, file }, vec![]);
        }),
        Request::InjectFault { fault, .. } => shared.borrow_mut().fault = Some(fault),
    }
}

//! The job loop and the job bodies. The [`Scheduler`](super::scheduler::Scheduler) says what
//! runs next; a body does the work (through [`Model`] and the browser's decoders) and reports
//! the outcome back, which the scheduler may refuse when it went stale meanwhile.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen_futures::spawn_local;
use web_sys::Blob;

use clipdino::pipeline::ImageFeatures;

use super::compute;
use super::image::{self, Decoded};
use super::model::{GpuEncodeError, Model};
use super::scheduler::{FeatureKey, Job, Slot};
use super::{fetch, label_cache, now_ms, post, post_error, progress, yield_now, Shared};
use crate::protocol::{
    Att, ErrorContext, Fault, ImageInput, ImageRequest, KMeansRequest, Mode, Response,
    SegmentRequest, Stage,
};
use crate::transport::buffer_of;
use crate::url::file_name_of;

/// Start the job loop unless it runs.
pub(super) fn kick(shared: &Shared) {
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

/// Run jobs one at a time until there is nothing to do.
async fn pump(shared: &Shared) {
    loop {
        yield_now().await;
        let job = shared.borrow_mut().sched.next_job();
        let Some(job) = job else { return };
        match job {
            Job::Decode {
                request,
                attachment,
            } => decode(shared, request, attachment).await,
            Job::Encode { key, photo, for_id } => encode(shared, key, &photo, for_id).await,
            Job::Segment { slot, request } => segment(shared, slot, &request).await,
            Job::KMeans { request, features } => kmeans(shared, &request, &features),
        }
        shared.borrow_mut().sched.job_done();
    }
}

/// The model of the generation the scheduler planned with, if it is still the one in use.
fn model_of(shared: &Shared, generation: u64) -> Option<Rc<Model>> {
    let st = shared.borrow();
    (st.sched.model() == Some(generation))
        .then(|| st.model.clone())
        .flatten()
}

async fn decode(shared: &Shared, request: ImageRequest, blob: Option<Blob>) {
    let id = request.id;
    progress(id, Stage::Decode, None, 0, None, false);
    let (blob, name) = match &request.input {
        ImageInput::File(f) => match blob {
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
            Ok(b) => (b, file_name_of(url)),
            Err(e) => return post_error(Some(id), ErrorContext::Image, e),
        },
    };
    let decoded = match image::decode(&blob, &name).await {
        Ok(d) => d,
        Err(e) => return post_error(Some(id), ErrorContext::Image, e),
    };
    let (width, height) = (decoded.width, decoded.height);
    // A newer photo arrived while decoding: this one is stale.
    if shared.borrow_mut().sched.decoded(&request, decoded) {
        post(&Response::ImageDecoded { id, width, height }, vec![]);
    }
}

async fn encode(shared: &Shared, key: FeatureKey, photo: &Decoded, for_id: u64) {
    let Some(model) = model_of(shared, key.model) else {
        return;
    };
    let image = key.image;
    let started = now_ms();
    let (w, h, opts) = model.plan(key.resolution, photo.width, photo.height);
    // A failed encode drops the requests waiting for it; the one it ran for is told why.
    let failed = |message: String| {
        shared.borrow_mut().sched.encode_failed(image);
        post_error(Some(for_id), ErrorContext::Image, message);
    };
    let pixels = match image::to_chw01(photo, w, h)
        .await
        .and_then(|p| Model::image(p, w, h))
    {
        Ok(p) => p,
        Err(e) => return failed(format!("The photo could not be resized: {e}")),
    };
    // Said at once (the first block may take seconds): the page then knows the worker is
    // computing, and counts its silence.
    progress(image, Stage::Encode, None, 0, None, false);
    let mut last = 0.0;
    let (fault, lose_gpu) = match shared.borrow_mut().fault.take() {
        Some(Fault::GpuLost) => (None, true),
        f => (f, false),
    };
    let mut report = |p: clipdino::pipeline::Progress| {
        if p.block >= 1 {
            if let Some(f) = fault {
                crash(f);
            }
        }
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
    let mut fallback = None;
    let mut gpu_name = None;
    let on_gpu = match compute::tower(shared, &model, key.model).await {
        None => None,
        Some((device, tower)) => {
            let mut lose = lose_gpu;
            let mut gpu_report = |p: clipdino::pipeline::Progress| {
                if lose && p.block >= 1 {
                    lose = false;
                    device.gpu.lose();
                }
                report(p);
            };
            match model
                .encode_gpu(&device.gpu, &tower, &pixels, &opts, &mut gpu_report)
                .await
            {
                Ok(f) => {
                    gpu_name = Some(device.name.clone());
                    Some(Ok(f))
                }
                Err(GpuEncodeError::Model(e)) => Some(Err(e)),
                Err(GpuEncodeError::Gpu(e)) => {
                    fallback = Some(compute::failed(shared, &device, &e).await);
                    None
                }
            }
        }
    };
    let encoded = match on_gpu {
        Some(r) => r,
        None => model.encode(&pixels, &opts, &mut report),
    };
    let feats = match encoded {
        Ok(f) => f,
        Err(e) => return failed(format!("Encoding the photo failed: {e}")),
    };
    let grid = feats.grid();
    let windows = feats.windows.len();
    let encodes = {
        let mut st = shared.borrow_mut();
        // A new model (or photo) arrived meanwhile: these features are void.
        if !st.sched.encoded(key, RefCell::new(feats)) {
            return;
        }
        st.encodes += 1;
        st.encodes
    };
    post(
        &Response::ImageEncoded {
            id: image,
            resolution: key.resolution,
            encodes,
            grid,
            windows,
            millis: now_ms() - started,
            gpu: gpu_name,
            fallback,
        },
        vec![],
    );
}

/// Embed the labels of `request` that are not embedded yet, then segment. Labels are embedded
/// one per turn of the event loop, so that a newer label set takes over at once (finished
/// embeddings stay cached); each is first looked up in browser storage, and stored there once
/// computed (storage failures only mean computing).
async fn segment(shared: &Shared, slot: Slot, request: &SegmentRequest) {
    let id = request.id;
    let (labels, templates) = (&request.labels, request.templates);
    let (model, fingerprint) = {
        let st = shared.borrow();
        let Some(m) = st.model.clone() else { return };
        (m, st.model_fingerprint.clone())
    };
    let started = now_ms();
    // The page checks its labels with the same limits; a request from elsewhere is checked too.
    if let Err(e) = clipdino::limits::check_labels(labels) {
        shared.borrow_mut().sched.drop_segment(slot, id);
        return post_error(
            Some(id),
            ErrorContext::Labels,
            format!("These labels cannot be used: {e}."),
        );
    }
    let missing: Vec<&String> = labels
        .iter()
        .filter(|l| !model.is_embedded(l, templates))
        .collect();
    let store = if missing.is_empty() {
        None
    } else {
        label_cache::open().await
    };
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
                shared.borrow_mut().sched.drop_segment(slot, id);
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
        if !shared.borrow().sched.segment_current(slot, id) {
            return;
        }
    }
    let mut warnings: Vec<String> = labels
        .iter()
        .filter(|l| model.embed(l, templates).unwrap_or(false))
        .map(|l| format!("“{l}” is longer than CLIP's 77-token context and was cut."))
        .collect();
    // Superseded, cancelled, or the features went stale while embedding (the scheduler then
    // encodes again and hands the request out once more).
    let Some(feats) = shared.borrow_mut().sched.take_segment(slot, id) else {
        return;
    };
    progress(id, Stage::Segment, None, 0, None, false);
    let mode = Model::usable_mode(&feats.borrow(), request.mode);
    if mode != request.mode {
        warnings.push(format!(
            "No CLIP-DINOiser head is loaded: showing {} instead of {}.",
            mode.title(),
            request.mode.title()
        ));
    }
    let mode_millis = match prepare_mode(shared, &model, &feats, mode) {
        Ok(ms) => ms,
        Err(e) => {
            return post_error(
                Some(id),
                ErrorContext::Segment,
                format!("Computing the {} features failed: {e}", mode.title()),
            )
        }
    };
    let segment_started = now_ms();
    let result = model.label_matrix(labels, templates).and_then(|m| {
        model.segment(
            &feats.borrow(),
            &m,
            mode,
            request.refine,
            request.background,
        )
    });
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
    let segment_millis = now_ms() - segment_started;
    let (encodes, mode_blocks, label_embeds, label_loads) = {
        let st = shared.borrow();
        (st.encodes, st.mode_blocks, st.label_embeds, st.label_loads)
    };
    post(
        &Response::Segmentation {
            id,
            width: maps.width,
            height: maps.height,
            labels: labels.clone(),
            label_map: Att(0),
            confidence: Att(1),
            areas: maps.areas,
            side: request.side,
            mode,
            refine: request.refine,
            mode_millis,
            segment_millis,
            mode_blocks,
            encodes,
            label_embeds,
            label_loads,
            millis: now_ms() - started,
            warnings,
        },
        vec![buffer_of(&maps.labels), buffer_of(&maps.confidence)],
    );
}

/// Compute `mode`'s last block from the cached trunk when `feats` lack it (a mode switch):
/// its milliseconds, or `None` when it was cached.
fn prepare_mode(
    shared: &Shared,
    model: &Model,
    feats: &RefCell<ImageFeatures>,
    mode: Mode,
) -> Result<Option<f64>, String> {
    let started = now_ms();
    if !model.prepare_mode(&mut feats.borrow_mut(), mode)? {
        return Ok(None);
    }
    shared.borrow_mut().mode_blocks += 1;
    Ok(Some(now_ms() - started))
}

fn kmeans(shared: &Shared, request: &KMeansRequest, feats: &RefCell<ImageFeatures>) {
    let (model, encodes) = {
        let st = shared.borrow();
        let Some(m) = st.model.clone() else { return };
        (m, st.encodes)
    };
    let started = now_ms();
    progress(request.id, Stage::KMeans, None, 0, None, false);
    let mode = Model::usable_mode(&feats.borrow(), request.mode);
    let result = prepare_mode(shared, &model, feats, mode)
        .and_then(|_| model.kmeans(&feats.borrow(), request.k, mode));
    match result {
        Ok(maps) => {
            let mut atts = vec![buffer_of(&maps.raw)];
            let refined_att = maps.refined.map(|r| {
                atts.push(buffer_of(&r));
                Att(1)
            });
            post(
                &Response::KMeans {
                    id: request.id,
                    k: request.k,
                    width: maps.width,
                    height: maps.height,
                    raw: Att(0),
                    refined: refined_att,
                    mode,
                    encodes,
                    millis: now_ms() - started,
                },
                atts,
            );
        }
        Err(e) => post_error(
            Some(request.id),
            ErrorContext::KMeans,
            format!("K-Means failed: {e}"),
        ),
    }
}

/// Crash as asked by a page test ([`crate::protocol::Request::InjectFault`]), the way real
/// crashes happen: a panic, the abort of a failed allocation (no panic, no message), or a
/// computation that never ends (a busy thread: no message, no error event).
fn crash(fault: Fault) {
    match fault {
        Fault::Hang => loop {
            std::hint::spin_loop();
        },
        Fault::Panic => panic!("fault injected by the page (debug-worker)"),
        Fault::OutOfMemory => {
            std::alloc::handle_alloc_error(std::alloc::Layout::new::<[u8; 1 << 30]>())
        }
        // Not a crash of the worker: the encode on the GPU loses its device (see `encode`).
        Fault::GpuLost => {}
    }
}

//! Effects that keep the worker's results in step with the state: load the configured
//! weights once the worker is up, and re-segment / re-cluster (debounced) whenever labels,
//! settings, photo or model change. A label edit therefore costs one cheap `Segment` request;
//! the image is only encoded again when the photo, resolution or model changes.

use std::cell::RefCell;
use std::rc::Rc;

use gloo_timers::callback::Timeout;
use yew::prelude::*;

use crate::context::AppCtx;
use crate::protocol::{Mode, Preset, TemplateSet};
use crate::state::{LoadPhase, WeightsSource};

/// Typing pause before a label change is sent.
const DEBOUNCE_MS: u32 = 180;

#[derive(Clone, PartialEq)]
struct SegmentKey {
    model: u64,
    photo: Option<u64>,
    labels: Vec<String>,
    background: Option<usize>,
    mode: Mode,
    resolution: Preset,
    templates: TemplateSet,
}

#[derive(Clone, PartialEq)]
struct KMeansKey {
    model: u64,
    photo: Option<u64>,
    k: usize,
    resolution: Preset,
}

#[hook]
pub fn use_request_driver(ctx: &AppCtx) {
    let s = &*ctx.state;

    // Weights: as soon as the worker runs, and again when a link names other weights (not
    // when a fresh worker replaces a dead one: it gets the weights the user had, if any).
    let loaded_source: Rc<RefCell<Option<WeightsSource>>> = use_mut_ref(|| None);
    {
        let ctx = ctx.clone();
        use_effect_with(
            (s.worker_ready, s.weights_source.clone()),
            move |(ready, source)| {
                let new = loaded_source.borrow().as_ref() != Some(source);
                if *ready
                    && new
                    && matches!(ctx.state.load, LoadPhase::Idle | LoadPhase::Offer { .. })
                {
                    *loaded_source.borrow_mut() = Some(source.clone());
                    ctx.load_configured();
                }
            },
        );
    }

    // A dead worker: a fresh one, given the weights and photo again (the reducer says which).
    {
        let ctx = ctx.clone();
        use_effect_with(s.life.restarts, move |n| {
            if *n > 0 {
                ctx.worker.restart(&ctx.state.life.replay);
                if let Some(t) = ctx.state.settings.threads {
                    ctx.set_threads(Some(t));
                }
            }
        });
    }
    {
        let worker = ctx.worker.clone();
        use_effect_with(s.worker_computing(), move |on| worker.set_computing(*on));
    }

    let seg_timer: Rc<RefCell<Option<Timeout>>> = use_mut_ref(|| None);
    {
        let ctx = ctx.clone();
        let key = SegmentKey {
            model: s.model_generation,
            photo: s.photo.as_ref().map(|p| p.id),
            labels: s.label_texts(),
            background: s.background_index(),
            mode: s.settings.mode,
            resolution: s.settings.resolution,
            templates: s.settings.templates,
        };
        use_effect_with(key, move |key| {
            let ready = key.model > 0 && key.photo.is_some() && !key.labels.is_empty();
            let mut slot = seg_timer.borrow_mut();
            // Dropping a pending timeout cancels it.
            *slot = None;
            if ready {
                let ctx = ctx.clone();
                *slot = Some(Timeout::new(DEBOUNCE_MS, move || {
                    ctx.send_segment();
                }));
            }
        });
    }

    let km_timer: Rc<RefCell<Option<Timeout>>> = use_mut_ref(|| None);
    {
        let ctx = ctx.clone();
        let key = KMeansKey {
            model: s.model_generation,
            photo: s.photo.as_ref().map(|p| p.id),
            k: s.settings.k,
            resolution: s.settings.resolution,
        };
        use_effect_with(key, move |key| {
            let ready = key.model > 0 && key.photo.is_some();
            let mut slot = km_timer.borrow_mut();
            *slot = None;
            if ready {
                let ctx = ctx.clone();
                *slot = Some(Timeout::new(DEBOUNCE_MS, move || {
                    ctx.send_kmeans();
                }));
            }
        });
    }

    // Free `blob:` URLs of photos no longer shown.
    {
        let ctx = ctx.clone();
        use_effect_with(s.stale_urls.len(), move |n| {
            if *n > 0 {
                for u in &ctx.state.stale_urls {
                    let _ = web_sys::Url::revoke_object_url(u);
                }
                ctx.dispatch(crate::state::Action::UrlsRevoked(*n));
            }
        });
    }
}

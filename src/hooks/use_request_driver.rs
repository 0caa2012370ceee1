//! Effects that keep the worker's results in step with the state: load the configured
//! weights once the worker is up, and re-segment / re-cluster (debounced) whenever labels,
//! settings, photo or model change. A label edit therefore costs one cheap `Segment` request
//! per overlay; the image is only encoded again when the photo, resolution or model changes (a
//! mode switch computes one last block from the worker's cached trunk). Where PAMR is too slow
//! for a live edit (448), the edit is segmented unrefined at once and refined once it settles.

use std::cell::RefCell;
use std::rc::Rc;

use gloo_timers::callback::Timeout;
use yew::prelude::*;

use crate::context::AppCtx;
use crate::protocol::{DeviceChoice, Mode, Preset, Side, TemplateSet};
use crate::state::{LoadPhase, Method, WeightsSource};

/// Typing pause before a label change is sent.
const DEBOUNCE_MS: u32 = 180;
/// Pause after which an edit has settled: the refinement too slow for a live edit follows.
const SETTLE_MS: u32 = 700;

#[derive(Clone, PartialEq)]
struct SegmentKey {
    model: u64,
    photo: Option<u64>,
    labels: Vec<String>,
    background: Option<usize>,
    method: Option<Method>,
    resolution: Preset,
    templates: TemplateSet,
}

#[derive(Clone, PartialEq)]
struct KMeansKey {
    model: u64,
    photo: Option<u64>,
    k: usize,
    resolution: Preset,
    mode: Mode,
}

/// Keep one overlay's segmentation in step (debounced), and send its settled refinement
/// after a pause where that differs from the live one.
#[hook]
fn use_segment_driver(ctx: &AppCtx, side: Side) {
    let s = &*ctx.state;
    let timers: Rc<RefCell<(Option<Timeout>, Option<Timeout>)>> = use_mut_ref(|| (None, None));
    let ctx = ctx.clone();
    let key = SegmentKey {
        model: s.model_generation,
        photo: s.photo.as_ref().map(|p| p.id),
        labels: s.label_texts(),
        background: s.background_index(),
        method: s.settings.method(side),
        resolution: s.settings.resolution,
        templates: s.settings.templates,
    };
    use_effect_with(key, move |key| {
        let ready =
            key.model > 0 && key.photo.is_some() && !key.labels.is_empty() && key.method.is_some();
        let mut t = timers.borrow_mut();
        // Dropping a pending timeout cancels it.
        *t = (None, None);
        if ready {
            let c = ctx.clone();
            t.0 = Some(Timeout::new(DEBOUNCE_MS, move || {
                c.send_segment(side, false);
            }));
            if key.method.is_some_and(|m| m.settles_later(key.resolution)) {
                t.1 = Some(Timeout::new(SETTLE_MS, move || {
                    ctx.send_segment(side, true);
                }));
            }
        }
    });
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
                // A fresh worker starts on "auto".
                let compute = ctx.state.settings.compute;
                if compute != DeviceChoice::default() {
                    ctx.set_compute(compute);
                }
            }
        });
    }
    {
        let worker = ctx.worker.clone();
        use_effect_with(s.worker_computing(), move |on| worker.set_computing(*on));
    }
    // A GPU is ready but the loaded model's image-tower weights were not kept for it.
    {
        let ctx = ctx.clone();
        use_effect_with(s.weights_reloads, move |n| {
            if *n > 0 {
                ctx.reload_weights_for_gpu();
            }
        });
    }

    use_segment_driver(ctx, Side::Primary);
    use_segment_driver(ctx, Side::Compare);

    let km_timer: Rc<RefCell<Option<Timeout>>> = use_mut_ref(|| None);
    {
        let ctx = ctx.clone();
        let key = KMeansKey {
            model: s.model_generation,
            photo: s.photo.as_ref().map(|p| p.id),
            k: s.settings.k,
            resolution: s.settings.resolution,
            mode: s.settings.mode,
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

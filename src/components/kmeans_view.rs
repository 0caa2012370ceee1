//! CLIPSelf-style K-Means view: the patch features clustered into k groups, raw MaskCLIP beside
//! those of the primary overlay's mode (CLIP-DINOiser-refined, ClearCLIP, NACLIP, SCLIP), in
//! matched colours.

use web_sys::{HtmlCanvasElement, HtmlInputElement};
use yew::prelude::*;

use crate::canvas;
use crate::components::viewer::frame_style;
use crate::context::AppCtx;
use crate::palette;
use crate::state::{Action, KMeansView as View, Mode, K_MAX, K_MIN};

const ALPHA: u8 = 170;

fn paint(node: &NodeRef, view: Option<&View>, refined: bool) {
    let Some(c) = node.cast::<HtmlCanvasElement>() else {
        return;
    };
    let map = view.and_then(|v| {
        if refined {
            v.refined.as_deref()
        } else {
            Some(&*v.raw)
        }
    });
    match (view, map) {
        (Some(v), Some(map)) => {
            let colours: Vec<[u8; 3]> = (0..v.k).map(palette::colour).collect();
            let rgba = canvas::label_rgba(map, &colours, ALPHA, None);
            if let Err(e) = canvas::put_rgba(&c, v.width, v.height, &rgba) {
                web_sys::console::error_1(&e.into());
            }
        }
        _ => canvas::clear(&c),
    }
}

#[component]
pub fn KMeansView() -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let raw = use_node_ref();
    let refined = use_node_ref();
    let s = &*ctx.state;
    {
        let (raw, refined) = (raw.clone(), refined.clone());
        let view = s.kmeans.clone();
        use_effect_with(
            (view.as_ref().map(|v| v.id), s.photo.as_ref().map(|p| p.id)),
            move |_| {
                paint(&raw, view.as_deref(), false);
                paint(&refined, view.as_deref(), true);
            },
        );
    }
    let on_k = {
        let ctx = ctx.clone();
        Callback::from(move |e: InputEvent| {
            if let Some(i) = e.target_dyn_into::<HtmlInputElement>() {
                if let Ok(k) = i.value().parse::<usize>() {
                    ctx.dispatch(Action::SetK(k));
                }
            }
        })
    };
    let Some(photo) = &s.photo else {
        return html! {};
    };
    let view = s.kmeans.as_deref();
    let has_refined = view.map(|v| v.refined.is_some()).unwrap_or(true);
    // Without the head the worker clusters MaskCLIP for CLIP-DINOiser (and says so).
    let unavailable = s
        .model
        .as_ref()
        .is_some_and(|i| i.mode_unavailable(s.settings.mode).is_some());
    let wanted = if unavailable {
        Mode::MaskClip
    } else {
        s.settings.mode
    };
    let stale = view.is_none_or(|v| v.k != s.settings.k || v.mode != wanted);
    // The clusters on screen are of this mode (the worker's answer; the setting until then).
    let mode = view.map(|v| v.mode).unwrap_or(s.settings.mode);
    let why_none = match mode {
        Mode::MaskClip => {
            "the primary mode is MaskCLIP itself: pick another to compare".to_string()
        }
        m => s
            .model
            .as_ref()
            .and_then(|i| i.mode_unavailable(m))
            .unwrap_or_else(|| "needs the CLIP-DINOiser head".into()),
    };
    html! {
        <section class="kmeans" aria-label="K-Means view">
            <div class="kmeans-head">
                <h2>{ "Feature clusters (K-Means)" }</h2>
                <label class="k">
                    { format!("k = {}", s.settings.k) }
                    <input type="range" min={K_MIN.to_string()} max={K_MAX.to_string()} value={s.settings.k.to_string()} oninput={on_k} data-role="k" />
                </label>
                <p class="muted">{ "Each patch's dense feature is clustered; object-shaped clusters mean good dense features (as in CLIPSelf). Same colour = overlapping clusters." }</p>
            </div>
            <div class={classes!("kmeans-panels", stale.then_some("stale"))}>
                <figure>
                    <div class="frame" style={frame_style(photo.size, 45)}>
                        <img src={photo.preview_url.clone()} alt="" />
                        <canvas ref={raw} class="overlay" data-role="kmeans-raw" data-k={view.map(|v| v.k.to_string()).unwrap_or_default()}></canvas>
                    </div>
                    <figcaption>{ "MaskCLIP (raw CLIP features)" }</figcaption>
                </figure>
                <figure>
                    <div class="frame" style={frame_style(photo.size, 45)}>
                        <img src={photo.preview_url.clone()} alt="" />
                        <canvas ref={refined} class={classes!("overlay", (!has_refined).then_some("hidden"))} data-role="kmeans-refined" data-mode={view.map(|v| v.mode.name()).unwrap_or_default()}></canvas>
                        if !has_refined { <div class="badge">{ why_none }</div> }
                    </div>
                    <figcaption data-role="kmeans-mode">{ format!("{} (the primary mode)", mode.title()) }</figcaption>
                </figure>
            </div>
        </section>
    }
}

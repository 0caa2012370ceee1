//! The photo at full size with the segmentation overlay above it ([`Overlay`]) — or, in the
//! compare view, two overlays side by side, each with its own method —, the opacity, and the PNG
//! downloads (of the primary overlay).
//!
//! Side by side rather than a split slider: both methods are seen whole at once (a slider shows
//! each on part of the photo only, and a region's label must be found by dragging), each keeps
//! its hover read-out and caption, and the page test can read both canvases.

use web_sys::{HtmlCanvasElement, HtmlImageElement, HtmlInputElement};
use yew::prelude::*;

use crate::canvas;
use crate::components::overlay::Overlay;
use crate::context::AppCtx;
use crate::samples::Sample;
use crate::state::{Action, Area, PhotoSource, Side};

#[component]
pub fn Viewer() -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let overlay = use_node_ref();
    let img = use_node_ref();
    let compare_canvas = use_node_ref();
    let compare_img = use_node_ref();
    let s = &*ctx.state;
    let on_opacity = {
        let ctx = ctx.clone();
        Callback::from(move |e: InputEvent| {
            if let Some(i) = e.target_dyn_into::<HtmlInputElement>() {
                if let Ok(v) = i.value().parse::<u8>() {
                    ctx.dispatch(Action::SetOpacity(v));
                }
            }
        })
    };
    let download_overlay = {
        let (img, overlay, ctx) = (img.clone(), overlay.clone(), ctx.clone());
        Callback::from(move |_| {
            if let (Some(i), Some(o)) = (
                img.cast::<HtmlImageElement>(),
                overlay.cast::<HtmlCanvasElement>(),
            ) {
                if let Err(e) = canvas::download_overlay(&i, &o, "clipdino-overlay.png") {
                    ctx.dispatch(Action::Notice(
                        Area::Result,
                        format!("The overlay could not be saved: {e}"),
                        true,
                    ));
                }
            }
        })
    };
    let download_map = {
        let (img, ctx) = (img.clone(), ctx.clone());
        let seg = s.segmentation.clone();
        Callback::from(move |_| {
            let (Some(i), Some(seg)) = (img.cast::<HtmlImageElement>(), seg.as_deref()) else {
                return;
            };
            let name = canvas::label_map_file_name(&seg.labels);
            if let Err(e) =
                canvas::download_label_map(&i, &seg.label_map, seg.width, seg.height, &name)
            {
                ctx.dispatch(Action::Notice(
                    Area::Result,
                    format!("The label map could not be saved: {e}"),
                    true,
                ));
            }
        })
    };

    let has_seg = s.segmentation.is_some();
    let Some(photo) = &s.photo else {
        return html! {
            <section class="viewer empty" aria-label="Photo and overlay">
                <div class="placeholder">
                    if s.pending_photo.is_some() {
                        <p>{ "Opening the photo…" }</p>
                    } else {
                        <p><strong>{ "No photo yet." }</strong></p>
                        <p>{ "Pick a sample above, choose a file, drop one here or paste it." }</p>
                    }
                </div>
                // The canvas exists so that the paint effect always has a target.
                <canvas ref={overlay} class="hidden"></canvas>
            </section>
        };
    };
    let credit = match &photo.source {
        PhotoSource::Sample(id) => Sample::by_id(id).map(|s| format!("{} — {}", s.title, s.credit)),
        PhotoSource::Local { name } => Some(name.clone()),
    };
    let size = photo
        .size
        .map(|(w, h)| format!(" · {w} × {h} px"))
        .unwrap_or_default();
    html! {
        <section class="viewer" aria-label="Photo and overlay">
            <div class="toolbar">
                <label class="opacity">
                    { "Overlay opacity" }
                    <input type="range" min="0" max="100" value={s.settings.opacity.to_string()} oninput={on_opacity} data-role="opacity" />
                </label>
                <button class="secondary" disabled={!has_seg} onclick={download_overlay} data-role="download-overlay">{ "Download overlay PNG" }</button>
                <button class="secondary" disabled={!has_seg} onclick={download_map} data-role="download-map"
                    title="Grey PNG at the photo's size: pixel value = label number in the legend (0 = first)">{ "Download label map" }</button>
            </div>
            if s.settings.compare.is_some() {
                <div class="compare" data-role="compare-view">
                    <Overlay side={Side::Primary} img={img} canvas={overlay} vh={55} />
                    <Overlay side={Side::Compare} img={compare_img} canvas={compare_canvas} vh={55} />
                </div>
            } else {
                <Overlay side={Side::Primary} img={img} canvas={overlay} vh={70} />
            }
            if let Some(c) = credit { <p class="credit muted">{ format!("{c}{size}") }</p> }
        </section>
    }
}

/// The frame keeps the photo's aspect ratio, fills the width, and stays within `vh`% of the
/// window height; photo and overlay canvas both fill it, so they always line up.
pub fn frame_style(size: Option<(u32, u32)>, vh: u32) -> String {
    match size {
        Some((w, h)) if w > 0 && h > 0 => {
            format!("aspect-ratio:{w}/{h};width:min(100%, calc({vh}vh * {w} / {h}))")
        }
        _ => String::new(),
    }
}

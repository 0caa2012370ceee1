//! The photo at full size with the segmentation overlay on a canvas above it (NodeRef), the
//! hover read-out (label + confidence), opacity, and the PNG downloads.

use web_sys::{HtmlCanvasElement, HtmlImageElement, HtmlInputElement};
use yew::prelude::*;

use crate::canvas;
use crate::context::AppCtx;
use crate::samples::Sample;
use crate::state::{Action, Area, PhotoSource, SegView};

#[derive(Clone, PartialEq)]
struct Hover {
    x: i32,
    y: i32,
    label: String,
    confidence: f32,
    colour: [u8; 3],
}

fn alpha_of(opacity: u8) -> u8 {
    ((opacity.min(100) as u32 * 255 + 50) / 100) as u8
}

#[component]
pub fn Viewer() -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let overlay = use_node_ref();
    let img = use_node_ref();
    let hover = use_state(|| None::<Hover>);
    let s = &*ctx.state;

    // Repaint when the segmentation, opacity or isolated label change (not on every render).
    {
        let overlay = overlay.clone();
        let seg = s.segmentation.clone();
        let isolate = s.isolate.clone();
        let opacity = s.settings.opacity;
        let deps = (
            seg.as_ref().map(|x| x.id),
            opacity,
            isolate.clone(),
            s.photo.as_ref().map(|p| p.id),
        );
        use_effect_with(deps, move |_| {
            if let Some(c) = overlay.cast::<HtmlCanvasElement>() {
                match seg.as_deref() {
                    Some(seg) => {
                        let only = isolate
                            .as_ref()
                            .and_then(|i| seg.labels.iter().position(|l| l == i));
                        let rgba = canvas::label_rgba(
                            &seg.label_map,
                            &seg.colours,
                            alpha_of(opacity),
                            only,
                        );
                        if let Err(e) = canvas::put_rgba(&c, seg.width, seg.height, &rgba) {
                            web_sys::console::error_1(&e.into());
                        }
                    }
                    None => canvas::clear(&c),
                }
            }
        });
    }

    let on_move = {
        let hover = hover.clone();
        let seg = s.segmentation.clone();
        Callback::from(move |e: MouseEvent| {
            let (Some(seg), Some(target)) =
                (seg.as_deref(), e.target_dyn_into::<HtmlCanvasElement>())
            else {
                return;
            };
            hover.set(read_out(seg, &target, e.offset_x(), e.offset_y()));
        })
    };
    let on_leave = {
        let hover = hover.clone();
        Callback::from(move |_| hover.set(None))
    };
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
            <div class="frame" style={frame_style(photo.size, 70)}>
                <img ref={img} src={photo.preview_url.clone()} alt="Your photo" data-role="photo" />
                <canvas ref={overlay} class={classes!("overlay", (!has_seg).then_some("hidden"))} data-role="overlay"
                    onmousemove={on_move} onmouseleave={on_leave}></canvas>
                if s.pending_photo.is_some() { <div class="badge">{ "Opening the new photo…" }</div> }
                if let Some(h) = &*hover {
                    <div class="hover" style={format!("left:{}px;top:{}px", h.x + 14, h.y + 14)} data-role="hover">
                        <span class="swatch" style={format!("background:{}", crate::palette::css(h.colour))}></span>
                        { format!("{} · {:.0} %", h.label, h.confidence * 100.0) }
                    </div>
                }
            </div>
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

fn read_out(seg: &SegView, target: &HtmlCanvasElement, ox: i32, oy: i32) -> Option<Hover> {
    let (cw, ch) = (
        target.client_width().max(1) as f64,
        target.client_height().max(1) as f64,
    );
    let x = ((ox.max(0) as f64 / cw) * seg.width as f64) as usize;
    let y = ((oy.max(0) as f64 / ch) * seg.height as f64) as usize;
    let (x, y) = (
        x.min(seg.width as usize - 1),
        y.min(seg.height as usize - 1),
    );
    let i = y * seg.width as usize + x;
    let l = *seg.label_map.get(i)? as usize;
    Some(Hover {
        x: ox,
        y: oy,
        label: seg.labels.get(l)?.clone(),
        confidence: *seg.confidence.get(i)? as f32 / 255.0,
        colour: *seg.colours.get(l)?,
    })
}

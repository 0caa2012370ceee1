//! One segmentation drawn over the photo: the frame with the `<img>`, the overlay canvas
//! (repainted when the result, opacity or isolated label change), the hover read-out (label +
//! confidence) and a caption saying which method is showing. The viewer shows one, or two side
//! by side in the compare view.

use std::rc::Rc;

use web_sys::HtmlCanvasElement;
use yew::prelude::*;

use crate::canvas;
use crate::components::method_picker::side_name;
use crate::components::viewer::frame_style;
use crate::context::AppCtx;
use crate::state::{Refine, SegView, Side};

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

#[derive(Properties, PartialEq)]
pub struct Props {
    pub side: Side,
    /// The photo's `<img>` and the overlay canvas (the viewer's downloads read them).
    pub img: NodeRef,
    pub canvas: NodeRef,
    /// Height of the frame in % of the window's.
    pub vh: u32,
}

/// What the caption says about the result on screen against the method asked for.
fn caption(seg: Option<&SegView>, side: Side, ctx: &AppCtx) -> (String, Option<String>) {
    let s = &*ctx.state;
    let Some(method) = s.settings.method(side) else {
        return (String::new(), None);
    };
    let Some(seg) = seg else {
        return (method.title(), Some("computing…".into()));
    };
    let showing = crate::state::Method {
        mode: seg.mode,
        refine: seg.refine,
    };
    let mut title = showing.title();
    if let Some(ms) = seg.mode_millis {
        title.push_str(&format!(" · last block {ms:.0} ms"));
    }
    title.push_str(&format!(" · {:.0} ms", seg.segment_millis));
    let note = if seg.mode != method.mode
        && s.model
            .as_ref()
            .and_then(|m| m.mode_unavailable(method.mode))
            .is_some()
    {
        Some(format!(
            "{} unavailable with these weights",
            method.mode.title()
        ))
    } else if seg.mode != method.mode || seg.refine != method.refine {
        match (seg.refine, method.refine) {
            (Refine::None, Refine::Pamr { .. })
                if seg.mode == method.mode && method.settles_later(s.settings.resolution) =>
            {
                Some("unrefined while you edit · PAMR follows".into())
            }
            _ => Some("updating…".into()),
        }
    } else {
        None
    };
    (title, note)
}

#[component]
pub fn Overlay(props: &Props) -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let hover = use_state(|| None::<Hover>);
    let s = &*ctx.state;
    let side = props.side;
    let seg: Option<Rc<SegView>> = s.segmentation_of(side).cloned();

    // Repaint when the segmentation, opacity or isolated label change (not on every render).
    {
        let canvas_ref = props.canvas.clone();
        let seg = seg.clone();
        let isolate = s.isolate.clone();
        let opacity = s.settings.opacity;
        let deps = (
            seg.as_ref().map(|x| x.id),
            opacity,
            isolate.clone(),
            s.photo.as_ref().map(|p| p.id),
        );
        use_effect_with(deps, move |_| {
            if let Some(c) = canvas_ref.cast::<HtmlCanvasElement>() {
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
        let seg = seg.clone();
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
    let Some(photo) = &s.photo else {
        return html! {};
    };
    let (title, note) = caption(seg.as_deref(), side, &ctx);
    let role = match side {
        Side::Primary => "overlay".to_string(),
        Side::Compare => "overlay-compare".to_string(),
    };
    let has_seg = seg.is_some();
    let comparing = s.settings.compare.is_some();
    html! {
        <figure class="overlay-figure" data-role={format!("figure-{}", side_name(side))}
            data-mode={seg.as_ref().map(|x| x.mode.name().to_string()).unwrap_or_default()}
            data-refine={seg.as_ref().map(|x| x.refine.to_string()).unwrap_or_default()}
            data-segmentation={seg.as_ref().map(|x| x.id.to_string()).unwrap_or_default()}
            data-mode-ms={seg.as_ref().and_then(|x| x.mode_millis).map(|m| format!("{m:.1}")).unwrap_or_default()}
            data-segment-ms={seg.as_ref().map(|x| format!("{:.1}", x.segment_millis)).unwrap_or_default()}>
            <div class="frame" style={frame_style(photo.size, props.vh)}>
                <img ref={props.img.clone()} src={photo.preview_url.clone()} alt="Your photo" data-role={if side == Side::Primary { "photo" } else { "photo-compare" }} />
                <canvas ref={props.canvas.clone()} class={classes!("overlay", (!has_seg).then_some("hidden"))} data-role={role}
                    onmousemove={on_move} onmouseleave={on_leave}></canvas>
                if s.pending_photo.is_some() { <div class="badge">{ "Opening the new photo…" }</div> }
                if let Some(h) = &*hover {
                    <div class="hover" style={format!("left:{}px;top:{}px", h.x + 14, h.y + 14)} data-role={if side == Side::Primary { "hover" } else { "hover-compare" }}>
                        <span class="swatch" style={format!("background:{}", crate::palette::css(h.colour))}></span>
                        { format!("{} · {:.0} %", h.label, h.confidence * 100.0) }
                    </div>
                }
            </div>
            if comparing || note.is_some() {
                <figcaption data-role={format!("caption-{}", side_name(side))}>
                    <strong>{ title }</strong>
                    if let Some(n) = note { <span class="muted">{ format!(" — {n}") }</span> }
                </figcaption>
            }
        </figure>
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

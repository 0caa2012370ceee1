//! One overlay's method: the mode (whose dense features classify the pixels; one line on what
//! it is, and why it is unavailable when the weights cannot run it) and the refinement.

use web_sys::HtmlSelectElement;
use yew::prelude::*;

use crate::components::settings_panel::choice;
use crate::context::AppCtx;
use crate::state::{Action, Mode, Refine, Side, PAMR_LIVE_MAX_SIDE};

#[derive(Properties, PartialEq)]
pub struct Props {
    pub side: Side,
}

/// `primary` / `compare`: the suffix of the controls' `data-role`s.
pub fn side_name(side: Side) -> &'static str {
    match side {
        Side::Primary => "primary",
        Side::Compare => "compare",
    }
}

#[component]
pub fn MethodPicker(props: &Props) -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let side = props.side;
    let s = &*ctx.state;
    let Some(method) = s.settings.method(side) else {
        return html! {};
    };
    let name = side_name(side);
    let unavailable = |m: Mode| s.model.as_ref().and_then(|i| i.mode_unavailable(m));
    let onchange = {
        let ctx = ctx.clone();
        Callback::from(move |e: Event| {
            let mode = e
                .target_dyn_into::<HtmlSelectElement>()
                .and_then(|sel| sel.value().parse::<Mode>().ok());
            if let Some(m) = mode {
                ctx.dispatch(Action::SetMode(side, m));
            }
        })
    };
    let id = format!("mode-{name}");
    let why = unavailable(method.mode);
    // The reason once, when any mode is unavailable with these weights.
    let any_why = Mode::ALL.into_iter().find_map(unavailable);
    let deferred = method.settles_later(s.settings.resolution);
    html! {
        <div class="method" data-role={format!("method-{name}")}>
            <div class="setting">
                <label class="name" for={id.clone()}>{ if side == Side::Primary { "Mode" } else { "Mode (right)" } }</label>
                <select id={id.clone()} data-role={id} {onchange}>
                    { for Mode::ALL.into_iter().map(|m| {
                        let off = unavailable(m).is_some();
                        html! {
                            <option value={m.name()} selected={m == method.mode} disabled={off}
                                title={m.description()}>
                                { if off { format!("{} (needs the head)", m.title()) } else { m.title().to_string() } }
                            </option>
                        }
                    }) }
                </select>
                <p class="muted mode-description" data-role={format!("mode-description-{name}")}>{ method.mode.description() }</p>
                if let Some(w) = why.or(any_why) {
                    <p class="muted mode-unavailable" data-role={format!("mode-unavailable-{name}")}>{ w }</p>
                }
            </div>
            <div class="setting" role="group" aria-label="Refinement" data-role={format!("refine-{name}")}>
                <span class="name">{ if side == Side::Primary { "Refinement" } else { "Refinement (right)" } }</span>
                { choice(&ctx, method.refine, Refine::None, "Off", Refine::None.description(), false, move |r| Action::SetRefine(side, r)) }
                { choice(&ctx, method.refine, Refine::PAMR, "PAMR", Refine::PAMR.description(), false, move |r| Action::SetRefine(side, r)) }
                if deferred {
                    <p class="muted">{ format!("Above {PAMR_LIVE_MAX_SIDE} px PAMR is too slow for every keystroke: the overlay updates unrefined while you edit, then PAMR sharpens it once you pause.") }</p>
                }
            </div>
        </div>
    }
}

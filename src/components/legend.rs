//! Legend of the current segmentation: colour, label, area share. Click to show one label alone.

use yew::prelude::*;

use crate::components::notice::Notice;
use crate::context::AppCtx;
use crate::palette;
use crate::state::{Action, Area};

#[component]
pub fn Legend() -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let s = &*ctx.state;
    let Some(seg) = s.segmentation.clone() else {
        return html! { <Notice area={Area::Result} /> };
    };
    let isolate = s.isolate.clone();
    html! {
        <section class="legend" aria-label="Legend">
            <ul data-role="legend">
                { for seg.labels.iter().enumerate().map(|(i, label)| {
                    let colour = seg.colours.get(i).copied().unwrap_or([0, 0, 0]);
                    let area = seg.areas.get(i).copied().unwrap_or(0.0) * 100.0;
                    let on = isolate.as_deref() == Some(label.as_str());
                    let dim = isolate.is_some() && !on;
                    let ctx = ctx.clone();
                    let l = label.clone();
                    let onclick = Callback::from(move |_| ctx.dispatch(Action::ToggleIsolate(l.clone())));
                    html! {
                        <li>
                            <button class={classes!("entry", on.then_some("isolated"), dim.then_some("dim"))}
                                data-label={label.clone()} data-color={palette::css(colour)}
                                title={if on { "Show all labels" } else { "Show this label alone" }} {onclick}>
                                <span class="swatch" style={format!("background:{}", palette::css(colour))}></span>
                                <span class="name">{ label.clone() }</span>
                                <span class="area">{ format!("{area:.1} %") }</span>
                            </button>
                        </li>
                    }
                }) }
            </ul>
            <Notice area={Area::Result} />
        </section>
    }
}

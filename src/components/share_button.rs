//! "Copy link": the page URL with labels, settings, weight URLs and sample id in the fragment
//! (a local photo is never part of it).

use wasm_bindgen_futures::JsFuture;
use yew::prelude::*;

use crate::context::AppCtx;
use crate::state::{Action, Area};

fn share_url(ctx: &AppCtx) -> String {
    let base = web_sys::window()
        .and_then(|w| w.location().href().ok())
        .unwrap_or_default();
    let base = base.split('#').next().unwrap_or("").to_string();
    format!("{base}#{}", ctx.state.share().to_fragment())
}

#[component]
pub fn ShareButton() -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let shown = use_state(|| None::<String>);
    let onclick = {
        let (ctx, shown) = (ctx.clone(), shown.clone());
        Callback::from(move |_| {
            let url = share_url(&ctx);
            let local = matches!(
                ctx.state.photo.as_ref().map(|p| &p.source),
                Some(crate::state::PhotoSource::Local { .. })
            );
            let note = if local {
                " Your own photo is not part of the link."
            } else {
                ""
            };
            let (ctx, shown) = (ctx.clone(), shown.clone());
            wasm_bindgen_futures::spawn_local(async move {
                let clip = web_sys::window().map(|w| w.navigator().clipboard());
                let ok = match clip {
                    Some(c) => JsFuture::from(c.write_text(&url)).await.is_ok(),
                    None => false,
                };
                if ok {
                    ctx.dispatch(Action::Notice(
                        Area::Share,
                        format!("Link copied.{note}"),
                        false,
                    ));
                    shown.set(Some(url));
                } else {
                    ctx.dispatch(Action::Notice(
                        Area::Share,
                        format!("Copy the link below by hand.{note}"),
                        false,
                    ));
                    shown.set(Some(url));
                }
            });
        })
    };
    html! {
        <div class="share">
            <button class="secondary" {onclick} data-role="share">{ "Copy link" }</button>
            if let Some(url) = &*shown {
                <input class="share-url" readonly=true value={url.clone()} data-role="share-url"
                    onfocus={Callback::from(|e: FocusEvent| {
                        if let Some(i) = e.target_dyn_into::<web_sys::HtmlInputElement>() { i.select(); }
                    })} />
            }
        </div>
    }
}

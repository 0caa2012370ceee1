//! Keep the URL fragment equal to the share link of the current state (`history.replaceState`,
//! no reloads, no history spam), restore state when the fragment is changed by hand, and open
//! a sample photo a link names.

use std::cell::RefCell;
use std::rc::Rc;

use gloo_events::EventListener;
use wasm_bindgen::JsValue;
use yew::prelude::*;

use crate::context::AppCtx;
use crate::samples::Sample;
use crate::state::{Action, Area, Share, WeightsSource};

#[hook]
pub fn use_fragment_sync(ctx: &AppCtx) {
    let latest: Rc<RefCell<AppCtx>> = use_mut_ref(|| ctx.clone());
    *latest.borrow_mut() = ctx.clone();

    let fragment = ctx.state.share().to_fragment();
    use_effect_with(fragment, |frag| {
        if let Some(w) = web_sys::window() {
            let current = w.location().hash().unwrap_or_default();
            let want = format!("#{frag}");
            if current != want {
                if let Ok(h) = w.history() {
                    let _ = h.replace_state_with_url(&JsValue::NULL, "", Some(&want));
                }
            }
        }
    });

    {
        let latest = latest.clone();
        use_effect_with((), move |_| {
            let listener = web_sys::window().map(|w| {
                EventListener::new(&w, "hashchange", move |_| {
                    let Some(w) = web_sys::window() else { return };
                    let hash = w.location().hash().unwrap_or_default();
                    let ctx = latest.borrow().clone();
                    if hash == format!("#{}", ctx.state.share().to_fragment()) {
                        return;
                    }
                    let (share, warnings) = Share::parse("", &hash);
                    if !warnings.is_empty() {
                        ctx.dispatch(Action::Notice(Area::Share, warnings.join(" "), true));
                    }
                    // A hand-edited precision of the site's bundle switches the bundle, as the
                    // setting does.
                    let on_site = |w: &WeightsSource| *w == WeightsSource::Default;
                    let switch = share.precision.filter(|p| {
                        *p != ctx.state.settings.precision
                            && on_site(&share.weights)
                            && on_site(&ctx.state.weights_source)
                    });
                    ctx.dispatch(Action::RestoreShare(share));
                    if let Some(p) = switch {
                        ctx.set_precision(p);
                    }
                })
            });
            move || drop(listener)
        });
    }

    let ctx2 = ctx.clone();
    use_effect_with(ctx.state.requested_sample.clone(), move |wanted| {
        if let Some(id) = wanted {
            if ctx2.state.sample_id() != Some(id.as_str()) {
                match Sample::by_id(id) {
                    Some(s) => ctx2.open_sample(s),
                    None => ctx2.dispatch(Action::Notice(
                        Area::Photo,
                        format!("The link names a sample photo “{id}” this site does not have."),
                        true,
                    )),
                }
            }
        }
    });
}

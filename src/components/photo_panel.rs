//! Choosing the photo: file picker, drop / paste hint, and the gallery of sample photos.

use web_sys::HtmlInputElement;
use yew::prelude::*;

use crate::components::notice::Notice;
use crate::context::AppCtx;
use crate::hooks::use_page_files::files_of;
use crate::samples::SAMPLES;
use crate::state::Area;

#[component]
pub fn PhotoPanel() -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let picker = use_node_ref();
    let pick = {
        let picker = picker.clone();
        Callback::from(move |_| {
            if let Some(i) = picker.cast::<HtmlInputElement>() {
                i.click();
            }
        })
    };
    let picked = {
        let ctx = ctx.clone();
        Callback::from(move |e: Event| {
            let Some(input) = e.target_dyn_into::<HtmlInputElement>() else {
                return;
            };
            let files = files_of(input.files());
            input.set_value("");
            ctx.open_files(files, Area::Photo);
        })
    };
    let current = ctx.state.sample_id().map(str::to_string);
    html! {
        <section class="photo-panel" aria-label="Photo">
            <div class="photo-actions">
                <button class="primary" onclick={pick}>{ "Choose a photo…" }</button>
                <span class="muted">{ "or drop one anywhere, or paste it (Ctrl+V)" }</span>
                <input ref={picker} type="file" accept="image/*" class="hidden" data-role="photo-input" onchange={picked} />
            </div>
            <div class="gallery" role="list">
                { for SAMPLES.iter().map(|s| {
                    let ctx = ctx.clone();
                    let onclick = Callback::from(move |_| ctx.open_sample(s));
                    let active = current.as_deref() == Some(s.id);
                    html! {
                        <button role="listitem" class={classes!("thumb", active.then_some("active"))}
                            title={format!("{} — {}", s.title, s.credit)} data-sample={s.id} {onclick}>
                            <img src={s.thumb_url()} alt={s.title} loading="lazy" />
                        </button>
                    }
                }) }
            </div>
            <Notice area={Area::Photo} />
        </section>
    }
}

//! Choosing the photo: file picker, drop / paste hint, and the gallery of sample photos.

use yew::prelude::*;

use crate::components::notice::Notice;
use crate::context::AppCtx;
use crate::hooks::use_file_picker;
use crate::samples::SAMPLES;
use crate::state::Area;

#[component]
pub fn PhotoPanel() -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let picker = {
        let ctx = ctx.clone();
        use_file_picker(Callback::from(move |files| {
            ctx.open_files(files, Area::Photo)
        }))
    };
    let current = ctx.state.sample_id().map(str::to_string);
    html! {
        <section class="photo-panel" aria-label="Photo">
            <div class="photo-actions">
                <button class="primary" onclick={picker.open.clone()}>{ "Choose a photo…" }</button>
                <span class="muted">{ "or drop one anywhere, or paste it (Ctrl+V)" }</span>
                <input ref={picker.node.clone()} type="file" accept="image/*" class="hidden" data-role="photo-input" onchange={picker.onchange.clone()} />
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

//! The vocabulary: type labels (comma-separated, Enter adds), chips to edit or remove, the
//! background chip, and preset class lists.

use clipdino::templates::CLASS_LISTS;
use web_sys::{HtmlInputElement, HtmlSelectElement};
use yew::prelude::*;

use crate::components::label_chip::LabelChip;
use crate::components::notice::Notice;
use crate::context::AppCtx;
use crate::state::{Action, Area, MAX_LABELS};

#[component]
pub fn LabelsEditor() -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let draft = use_state(String::new);
    let s = &*ctx.state;

    let oninput = {
        let (ctx, draft) = (ctx.clone(), draft.clone());
        Callback::from(move |e: InputEvent| {
            let Some(i) = e.target_dyn_into::<HtmlInputElement>() else {
                return;
            };
            let v = i.value();
            // A comma finishes the labels before it; the rest stays in the box.
            if let Some(pos) = v.rfind(',') {
                let (done, rest) = v.split_at(pos);
                ctx.dispatch(Action::AddLabels(done.to_string()));
                draft.set(rest[1..].trim_start().to_string());
            } else {
                draft.set(v);
            }
        })
    };
    let onkeydown = {
        let (ctx, draft) = (ctx.clone(), draft.clone());
        Callback::from(move |e: KeyboardEvent| match e.key().as_str() {
            "Enter" => {
                e.prevent_default();
                ctx.dispatch(Action::AddLabels((*draft).clone()));
                draft.set(String::new());
            }
            "Backspace" if draft.is_empty() => {
                if let Some(last) = ctx.state.labels.last() {
                    ctx.dispatch(Action::RemoveLabel(last.id));
                }
            }
            _ => {}
        })
    };
    let add = {
        let (ctx, draft) = (ctx.clone(), draft.clone());
        Callback::from(move |_| {
            ctx.dispatch(Action::AddLabels((*draft).clone()));
            draft.set(String::new());
        })
    };
    let toggle_bg = {
        let ctx = ctx.clone();
        Callback::from(move |_| ctx.dispatch(Action::ToggleBackground))
    };
    let clear = {
        let ctx = ctx.clone();
        Callback::from(move |_| ctx.dispatch(Action::SetLabels(vec![])))
    };
    let preset = {
        let ctx = ctx.clone();
        Callback::from(move |e: Event| {
            let Some(sel) = e.target_dyn_into::<HtmlSelectElement>() else {
                return;
            };
            let id = sel.value();
            sel.set_value("");
            if let Some(list) = CLASS_LISTS.iter().find(|c| c.id == id) {
                ctx.dispatch(Action::SetLabels(
                    list.names().into_iter().map(str::to_string).collect(),
                ));
            }
        })
    };
    let has_bg = s.has_background();
    html! {
        <section class="labels" aria-label="Labels">
            <h2>{ "Labels" }</h2>
            <div class="chips" data-role="chips">
                { for s.labels.iter().map(|l| html! { <LabelChip key={l.id} label={l.clone()} /> }) }
                <input class="label-input" placeholder={if s.labels.is_empty() { "Type labels: cat, sofa, window…" } else { "Add a label…" }}
                    value={(*draft).clone()} {oninput} {onkeydown} aria-label="New label" data-role="label-input" />
                <button class="secondary small" onclick={add}>{ "Add" }</button>
            </div>
            <div class="label-tools">
                <button class={classes!("toggle", has_bg.then_some("on"))} aria-pressed={has_bg.to_string()} onclick={toggle_bg}
                    title="CLIP-DINOiser's background rule: regions the head scores as background and no label claims confidently go to “background”.">
                    { if has_bg { "✓ background" } else { "+ background" } }
                </button>
                <select onchange={preset} aria-label="Preset class lists" data-role="presets">
                    <option value="" selected=true>{ "Presets…" }</option>
                    { for CLASS_LISTS.iter().map(|c| html! { <option value={c.id}>{ format!("{} · {}", c.title, c.len()) }</option> }) }
                </select>
                if !s.labels.is_empty() { <button class="link" onclick={clear}>{ "Clear all" }</button> }
                <span class="muted count">{ format!("{} / {MAX_LABELS}", s.labels.len()) }</span>
            </div>
            <Notice area={Area::Labels} />
        </section>
    }
}

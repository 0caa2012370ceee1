//! One label as a chip: colour dot, text (click to edit in place), × to remove.

use web_sys::HtmlInputElement;
use yew::prelude::*;

use crate::context::AppCtx;
use crate::palette;
use crate::state::{is_background, Action, Label};

#[derive(Properties, PartialEq)]
pub struct LabelChipProps {
    pub label: Label,
}

#[component]
pub fn LabelChip(props: &LabelChipProps) -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let editing = use_state(|| false);
    // Set once an edit is committed or cancelled, so that the blur that may follow (the input
    // leaves the DOM) does not commit again — or commit a cancelled edit.
    let finished = use_mut_ref(|| false);
    let input = use_node_ref();
    let label = &props.label;

    // Focus and select the text when editing starts.
    {
        let input = input.clone();
        use_effect_with(*editing, move |on| {
            if *on {
                if let Some(i) = input.cast::<HtmlInputElement>() {
                    let _ = i.focus();
                    i.select();
                }
            }
        });
    }

    let commit = {
        let (ctx, editing, input, id, text) = (
            ctx.clone(),
            editing.clone(),
            input.clone(),
            label.id,
            label.text.clone(),
        );
        let finished = finished.clone();
        Callback::from(move |_: ()| {
            if std::mem::replace(&mut *finished.borrow_mut(), true) {
                return;
            }
            editing.set(false);
            if let Some(i) = input.cast::<HtmlInputElement>() {
                let v = i.value();
                if v != text {
                    ctx.dispatch(Action::EditLabel(id, v));
                }
            }
        })
    };
    let remove = {
        let (ctx, id) = (ctx.clone(), label.id);
        Callback::from(move |_| ctx.dispatch(Action::RemoveLabel(id)))
    };
    let colour = palette::css(label.colour());
    let bg = is_background(&label.text);
    if *editing {
        let onkeydown = {
            let (commit, editing, finished) = (commit.clone(), editing.clone(), finished.clone());
            Callback::from(move |e: KeyboardEvent| match e.key().as_str() {
                "Enter" => {
                    e.prevent_default();
                    commit.emit(());
                }
                "Escape" => {
                    *finished.borrow_mut() = true;
                    editing.set(false);
                }
                _ => {}
            })
        };
        let onblur = commit.reform(|_: FocusEvent| ());
        return html! {
            <span class="chip editing" style={format!("--c:{colour}")}>
                <span class="dot"></span>
                <input ref={input} value={label.text.clone()} aria-label="Edit label" data-role="chip-edit" {onkeydown} {onblur} />
            </span>
        };
    }
    let start = {
        let (editing, finished) = (editing.clone(), finished.clone());
        Callback::from(move |_| {
            *finished.borrow_mut() = false;
            editing.set(true);
        })
    };
    html! {
        <span class={classes!("chip", bg.then_some("background"))} style={format!("--c:{colour}")} data-label={label.text.clone()}>
            <span class="dot"></span>
            <button class="chip-text" onclick={start} title={if bg { "Background: uncertain regions the CLIP-DINOiser head calls background go here. Click to edit." } else { "Click to edit" }}>
                { label.text.clone() }
            </button>
            <button class="chip-x" onclick={remove} aria-label={format!("Remove {}", label.text)} title="Remove">{ "×" }</button>
        </span>
    }
}

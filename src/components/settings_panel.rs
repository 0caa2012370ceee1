//! Mode and refinement (and the compare view's), processing resolution, prompt templates,
//! compute (GPU / CPU), threads.

use web_sys::HtmlSelectElement;
use yew::prelude::*;

use crate::components::method_picker::MethodPicker;
use crate::context::AppCtx;
use crate::state::{Action, DeviceChoice, Preset, Side, TemplateSet};
use crate::worker::threads::MAX_THREADS;

/// A toggle button of a one-of-several setting.
pub fn choice<T: PartialEq + Copy + 'static>(
    ctx: &AppCtx,
    current: T,
    value: T,
    label: &str,
    hint: &str,
    disabled: bool,
    make: impl Fn(T) -> Action + 'static,
) -> Html {
    let ctx = ctx.clone();
    let onclick = Callback::from(move |_| ctx.dispatch(make(value)));
    let on = current == value;
    html! {
        <button class={classes!("seg", on.then_some("on"))} aria-pressed={on.to_string()} title={hint.to_string()} {disabled} {onclick}>
            { label.to_string() }
        </button>
    }
}

/// Auto / 1..N threads, in the multi-threaded build; a note in the single-threaded one.
fn threads_setting(ctx: &AppCtx) -> Html {
    let Some(info) = ctx.state.threads.as_ref() else {
        return html! {};
    };
    if !info.multi_threaded_build {
        return html! {
            <div class="setting" data-role="threads">
                <span class="name">{ "Threads" }</span>
                <span class="muted">{ "1 — this page is not cross-origin isolated, so the browser allows no shared-memory threads" }</span>
            </div>
        };
    }
    let max = info.hardware.clamp(1, MAX_THREADS);
    let current = ctx.state.settings.threads;
    let onchange = {
        let ctx = ctx.clone();
        Callback::from(move |e: Event| {
            if let Some(sel) = e.target_dyn_into::<HtmlSelectElement>() {
                ctx.set_threads(sel.value().parse::<usize>().ok());
            }
        })
    };
    html! {
        <div class="setting" data-role="threads">
            <label class="name" for="threads">{ "Threads" }</label>
            <select id="threads" {onchange} title="Threads that compute the model (the page stays responsive either way)">
                <option value="auto" selected={current.is_none()}>{ format!("auto ({max})") }</option>
                { for (1..=max).map(|n| html! {
                    <option value={n.to_string()} selected={current == Some(n)}>{ n.to_string() }</option>
                }) }
            </select>
        </div>
    }
}

/// Where the image tower runs: auto / GPU / CPU.
fn compute_setting(ctx: &AppCtx) -> Html {
    let current = ctx.state.settings.compute;
    let button = |value: DeviceChoice, label: &str, hint: &str| {
        let c = ctx.clone();
        let onclick = Callback::from(move |_| c.set_compute(value));
        let on = current == value;
        html! {
            <button class={classes!("seg", on.then_some("on"))} aria-pressed={on.to_string()} title={hint.to_string()}
                data-compute={value.name()} {onclick}>{ label.to_string() }</button>
        }
    };
    html! {
        <div class="setting" role="group" aria-label="Compute" data-role="compute">
            <span class="name">{ "Compute" }</span>
            { button(DeviceChoice::Auto, "Auto", "The GPU when the browser offers one (WebGPU) that passes a quick self-check and is not a CPU emulation of one; else the CPU") }
            { button(DeviceChoice::Gpu, "GPU", "The image tower on the GPU through WebGPU, whatever the adapter (even a CPU emulation); the CPU when it fails") }
            { button(DeviceChoice::Cpu, "CPU", "The image tower on the CPU (WebAssembly SIMD); WebGPU is not used at all") }
        </div>
    }
}

#[component]
pub fn SettingsPanel() -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let st = &ctx.state.settings;
    let comparing = st.compare.is_some();
    let on_compare = {
        let ctx = ctx.clone();
        Callback::from(move |_| ctx.dispatch(Action::SetCompare(!comparing)))
    };
    html! {
        <section class="settings" aria-label="Settings">
            <h2>{ "Settings" }</h2>
            <MethodPicker side={Side::Primary} />
            <div class="setting" data-role="compare">
                <span class="name">{ "Compare" }</span>
                <button class={classes!("seg", comparing.then_some("on"))} aria-pressed={comparing.to_string()} onclick={on_compare} data-role="compare-toggle"
                    title="A second overlay of the same photo and labels with its own mode and refinement (the photo is encoded once for both)">
                    { "Side by side" }
                </button>
            </div>
            if comparing { <MethodPicker side={Side::Compare} /> }
            <div class="setting" role="group" aria-label="Resolution" data-role="resolution">
                <span class="name">{ "Resolution" }</span>
                { choice(&ctx, st.resolution, Preset::Fast, "Fast · 224", "Short side 224 px, one pass", false, Action::SetResolution) }
                { choice(&ctx, st.resolution, Preset::Balanced, "Balanced · 336", "Short side 336 px, one pass", false, Action::SetResolution) }
                { choice(&ctx, st.resolution, Preset::Paper, "Paper · 448", "Short side 448 px with 448 px sliding windows, stride 224 (the paper's protocol; slowest)", false, Action::SetResolution) }
            </div>
            <div class="setting" role="group" aria-label="Prompt templates" data-role="templates">
                <span class="name">{ "Prompts" }</span>
                { choice(&ctx, st.templates, TemplateSet::Fast, "7 templates", "The CLIP paper's 7 prompt templates per label (fast)", false, Action::SetTemplates) }
                { choice(&ctx, st.templates, TemplateSet::Full, "80 templates", "All 80 ImageNet prompt templates per label (slower to embed, slightly better)", false, Action::SetTemplates) }
            </div>
            { compute_setting(&ctx) }
            { threads_setting(&ctx) }
        </section>
    }
}

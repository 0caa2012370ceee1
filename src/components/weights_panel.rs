//! Model weights: progress of the download (bytes, %, from cache), the large-download offer,
//! the loaded model's description with its measured fidelity, the precision of the site's
//! bundle, and picking local weight files.

use yew::prelude::*;

use crate::components::notice::Notice;
use crate::context::AppCtx;
use crate::hooks::use_file_picker;
use crate::protocol::{Precision, Progress, Stage};
use crate::state::quality::percent_down;
use crate::state::{Action, Area, LoadPhase, QualityLine, SiteQuality, State};
use crate::url::host_of;

pub fn mb(bytes: u64) -> String {
    if bytes >= 100_000_000 {
        format!("{:.0} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

/// The measured fidelity of the bundle in use (see [`State::quality_line`]).
fn quality_line(s: &State) -> Html {
    match s.quality_line() {
        None => html! {},
        Some(QualityLine::Verified { text, detail }) => html! {
            <p class="quality" data-role="quality" data-verified="true" title={detail}>{ text }</p>
        },
        Some(QualityLine::NotVerified(text)) => html! {
            <p class="quality muted" data-role="quality" data-verified="false">{ text }</p>
        },
    }
}

/// Standard / high precision of the site's bundle, when the site offers both.
fn precision_setting(ctx: &AppCtx) -> Html {
    let s = &*ctx.state;
    let Some(choices) = s.precision_choices() else {
        return html! {};
    };
    let report = match &s.site_quality {
        SiteQuality::Report(r) => Some(r),
        _ => None,
    };
    let buttons = choices.into_iter().map(|(p, size)| {
        let on = s.settings.precision == p;
        let name = match p {
            Precision::Standard => "standard",
            Precision::High => "high",
        };
        let label = match size {
            Some(b) => format!("{name} ({})", mb(b)),
            None => name.to_string(),
        };
        let mut hint = match p {
            // Memory and speed as measured for ViT-B/16 in the browser (BENCHMARKS.md, "Precision").
            Precision::Standard => "The default bundle (8-bit weights), computed on the integer kernel: faster, and about 0.6 GB of memory in this tab.".to_string(),
            Precision::High => "The 16-bit bundle, computed in f32: closest to the full-precision model; a larger download, about 1.1 GB of memory in this tab (standard: 0.6 GB), and photos take about 1.7× as long to encode.".to_string(),
        };
        if let Some(v) = report.and_then(|r| r.find(&p.file_name(), p.compute())) {
            hint.push_str(&format!(" Measured label agreement: {} %.", percent_down(v.agreement)));
        }
        let onclick = {
            let ctx = ctx.clone();
            Callback::from(move |_| ctx.set_precision(p))
        };
        html! {
            <button class={classes!("seg", on.then_some("on"))} aria-pressed={on.to_string()}
                data-precision={p.name()} title={hint} disabled={on} {onclick}>{ label }</button>
        }
    });
    html! {
        <div class="setting precision" role="group" aria-label="Precision" data-role="precision">
            <span class="name">{ "Precision" }</span>
            { for buttons }
        </div>
    }
}

#[component]
pub fn WeightsPanel() -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let picker = {
        let ctx = ctx.clone();
        use_file_picker(Callback::from(move |files| ctx.load_files(files)))
    };
    let s = &*ctx.state;
    let pick = picker.open.clone();
    let file_input = html! {
        <input ref={picker.node.clone()} type="file" multiple=true class="hidden" data-role="weights-input"
            accept=".gguf,.safetensors,.bin,.pt,.pth,.json" onchange={picker.onchange.clone()} />
    };
    let pick_button = |label: &str| {
        html! {
            <button class="secondary" onclick={pick.clone()} title="A .gguf bundle, or CLIP .safetensors/.bin (+ open_clip_config.json) with the DINOiser last.pt">{ label.to_string() }</button>
        }
    };

    let body = match &s.load {
        LoadPhase::Active {
            id,
            progress:
                Progress {
                    stage,
                    item,
                    done,
                    total,
                    from_cache,
                },
        } => {
            let id = *id;
            let cancel = {
                let ctx = ctx.clone();
                Callback::from(move |_| ctx.cancel(id))
            };
            let pct = total
                .filter(|t| *t > 0)
                .map(|t| (*done as f64 / t as f64 * 100.0).min(100.0));
            let what = match stage {
                Stage::Probe => "Looking for the model…".to_string(),
                Stage::Download if *from_cache => format!(
                    "Loading {} from the browser cache",
                    item.clone().unwrap_or_default()
                ),
                Stage::Download => format!("Downloading {}", item.clone().unwrap_or_default()),
                Stage::ReadFile => format!("Reading {}", item.clone().unwrap_or_default()),
                Stage::Build => "Building the model…".to_string(),
                _ => "Loading…".to_string(),
            };
            let amount = match (stage, total) {
                (Stage::Download | Stage::ReadFile, Some(t)) => {
                    format!("{} of {}", mb(*done), mb(*t))
                }
                (Stage::Download | Stage::ReadFile, None) => mb(*done),
                _ => String::new(),
            };
            html! {
                <div class="weights-progress" data-stage={format!("{stage:?}")} data-from-cache={from_cache.to_string()}>
                    <div class="row">
                        <span class="what">{ what }</span>
                        <span class="amount">{ amount }</span>
                        if let Some(p) = pct { <span class="pct" data-role="weights-pct">{ format!("{p:.0} %") }</span> }
                        <button class="link" onclick={cancel}>{ "Cancel" }</button>
                    </div>
                    <progress max="100" value={pct.map(|p| format!("{p:.1}")).unwrap_or_default()}></progress>
                </div>
            }
        }
        LoadPhase::Checking { .. } => html! {
            <div class="weights-progress"><div class="row"><span class="what">{ "Looking for the model…" }</span></div><progress></progress></div>
        },
        LoadPhase::Offer {
            set,
            total_bytes,
            notes,
        } => {
            // Agreeing answers the question: the set is sent again without it.
            let mut agreed = set.clone();
            agreed.ask_first = false;
            let start = {
                let ctx = ctx.clone();
                Callback::from(move |_| ctx.load_urls(vec![agreed.clone()], None))
            };
            let decline = {
                let ctx = ctx.clone();
                Callback::from(move |_| ctx.dispatch(Action::DeclineDownload))
            };
            let size = total_bytes
                .map(|b| format!("≈ {}", mb(b)))
                .unwrap_or_else(|| "a large download".into());
            let question = if set.ask_first {
                let mut hosts: Vec<String> = set.files.iter().map(|f| host_of(&f.url)).collect();
                hosts.dedup();
                let hosts = hosts.join(" and ");
                let size = total_bytes
                    .map(|b| format!(" ({})", mb(b)))
                    .unwrap_or_else(|| " (size not given by the server)".into());
                html! {
                    <p data-role="foreign-weights">
                        { "This link names weights on another site. " }
                        <strong>{ format!("Load weights from {hosts}{size}?") }</strong>
                        { format!(" {} — they are downloaded only if you agree.", set.label) }
                    </p>
                }
            } else {
                html! {
                    <p>
                        { "To segment photos this page needs model weights. " }
                        { format!("It can download {} — {size}, kept in your browser for next time.", set.label) }
                    </p>
                }
            };
            let button = if set.ask_first {
                "Load".to_string()
            } else {
                format!("Download ({size})")
            };
            html! {
                <div class="offer" data-role="weights-offer">
                    { question }
                    if !notes.is_empty() { <p class="muted small">{ format!("Checked first: {}", notes.join(" ")) }</p> }
                    <div class="buttons">
                        <button class="primary" data-role="weights-accept" onclick={start}>{ button }</button>
                        { pick_button("Use files from my disk…") }
                        <button class="link" onclick={decline}>{ "Not now" }</button>
                    </div>
                </div>
            }
        }
        LoadPhase::Idle => match &s.model {
            Some(m) => {
                let origin = if m.from_cache {
                    "loaded from cache".to_string()
                } else {
                    format!("from {}", m.source)
                };
                let site_bundle = s
                    .model_set
                    .as_ref()
                    .and_then(|set| set.site_bundle)
                    .map(|p| p.name());
                html! {
                    <div class="model-ready" data-role="model-ready" data-from-cache={m.from_cache.to_string()}
                        data-site-bundle={site_bundle}>
                        <span class="dot ok"></span>
                        <span>
                            <strong>{ "Model ready" }</strong>
                            { format!(" · {} · {} · {} · {:.1} s", origin, m.storage, mb(m.bytes), m.millis / 1000.0) }
                            if let Some(note) = m.head_note() { <em>{ format!(" · {note}") }</em> }
                        </span>
                        <span class="muted arch" title={m.files.join(", ")}>{ m.architecture.clone() }</span>
                        { pick_button("Other weights…") }
                        if let Some(note) = &m.cache_note { <p class="muted">{ note.clone() }</p> }
                        { quality_line(s) }
                    </div>
                }
            }
            None => {
                let retry = {
                    let ctx = ctx.clone();
                    Callback::from(move |_| ctx.load_configured())
                };
                html! {
                    <div class="model-missing">
                        <span class="dot"></span>
                        <span>{ if s.worker_ready {
                            "No model loaded."
                        } else if s.life.gave_up.is_some() {
                            "The model worker is stopped."
                        } else {
                            "Starting…"
                        } }</span>
                        if s.worker_ready {
                            <button class="secondary" onclick={retry}>{ "Try the download again" }</button>
                        }
                        { pick_button("Choose weight files…") }
                    </div>
                }
            }
        },
    };
    html! {
        <section class="weights" aria-label="Model weights">
            { body }
            { precision_setting(&ctx) }
            { file_input }
            <Notice area={Area::Weights} />
        </section>
    }
}

//! What the worker is doing for the photo (decode, encode per block / window, label
//! embedding, segmentation), and a small debug line with counters the page tests read.

use yew::prelude::*;

use crate::context::AppCtx;
use crate::protocol::Stage;

#[component]
pub fn StatusLine() -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let s = &*ctx.state;
    let work = s.work.as_ref().map(|w| {
        let what = match w.stage {
            Stage::Decode => "Opening the photo".to_string(),
            Stage::Encode => format!(
                "Encoding the photo: block {} of {}{}",
                w.done,
                w.total.unwrap_or(0),
                w.item
                    .as_ref()
                    .map(|i| format!(" ({i})"))
                    .unwrap_or_default()
            ),
            Stage::Embed => format!(
                "Embedding labels: {} of {}{}",
                w.done + 1,
                w.total.unwrap_or(0),
                w.item
                    .as_ref()
                    .map(|i| format!(" — “{i}”"))
                    .unwrap_or_default()
            ),
            Stage::Segment => "Segmenting".to_string(),
            Stage::KMeans => "Clustering features".to_string(),
            _ => "Working".to_string(),
        };
        let pct = w
            .total
            .filter(|t| *t > 0)
            .map(|t| (w.done as f64 / t as f64 * 100.0).min(100.0));
        (what, pct)
    });
    let waiting_for_model = s.model.is_none() && s.photo.is_some();
    let debug = format!(
        "image encodes: {}{} · last blocks from the cached trunk: {} · labels embedded: {} (+{} from browser storage) · segmentation: {} · k-means: {}",
        s.encodes,
        s.encoded
            .as_ref()
            .map(|e| {
                let win = if e.windows > 1 {
                    format!(", {} windows", e.windows)
                } else {
                    String::new()
                };
                let on = if e.gpu.is_some() { "GPU" } else { "CPU" };
                format!(
                    " (last: {}×{} patches{win} in {:.2} s on the {on})",
                    e.grid.1,
                    e.grid.0,
                    e.millis / 1000.0
                )
            })
            .unwrap_or_default(),
        s.mode_blocks,
        s.label_embeds,
        s.label_loads,
        s.segmentation
            .as_ref()
            .map(|x| {
                let block = x
                    .mode_millis
                    .map(|m| format!(", {} block {m:.0} ms", x.mode.title()))
                    .unwrap_or_default();
                let refine = match x.refine {
                    crate::state::Refine::None => String::new(),
                    r => format!(" incl. {r}"),
                };
                format!(
                    "{}×{} in {:.0} ms (classify{refine} {:.0} ms{block})",
                    x.width, x.height, x.millis, x.segment_millis
                )
            })
            .unwrap_or_else(|| "–".into()),
        s.kmeans
            .as_ref()
            .map(|x| format!("k={} in {:.0} ms", x.k, x.millis))
            .unwrap_or_else(|| "–".into()),
    );
    let threads = s.threads.as_ref().map(|t| {
        let build = if t.multi_threaded_build {
            "multi-threaded build"
        } else {
            "single-threaded build (page not cross-origin isolated)"
        };
        let n = t.threads;
        let note = t
            .note
            .as_ref()
            .map(|n| format!(" — {n}"))
            .unwrap_or_default();
        let plural = if n == 1 { "" } else { "s" };
        (format!("{n} thread{plural} · {build}{note}"), t)
    });
    let compute = s.compute_status().map(|text| {
        let c = s.compute.as_ref();
        let word = match c {
            Some(c) if c.pending => "pending",
            Some(c) if c.gpu.is_some() => "gpu",
            _ => "cpu",
        };
        (
            text,
            word,
            c.map(|c| c.setting.name()).unwrap_or_default(),
            c.and_then(|c| c.gpu.clone()).unwrap_or_default(),
        )
    });
    let encoded_on = s
        .encoded
        .as_ref()
        .map(|e| if e.gpu.is_some() { "gpu" } else { "cpu" })
        .unwrap_or_default();
    let fallback = s
        .encoded
        .as_ref()
        .and_then(|e| e.fallback.clone())
        .unwrap_or_default();
    html! {
        <section class="status" aria-live="polite">
            if let Some((what, pct)) = work {
                <div class="work" data-role="work">
                    <span>{ what }</span>
                    <progress max="100" value={pct.map(|p| format!("{p:.1}")).unwrap_or_default()}></progress>
                </div>
            } else if waiting_for_model {
                <div class="work"><span class="muted">{ "The photo will be processed as soon as the model is loaded." }</span></div>
            }
            <p class="debug muted" data-role="debug" data-encodes={s.encodes.to_string()} data-mode-blocks={s.mode_blocks.to_string()}
                data-label-embeds={s.label_embeds.to_string()} data-label-loads={s.label_loads.to_string()}
                data-encode-ms={s.encoded.as_ref().map(|e| format!("{:.0}", e.millis)).unwrap_or_default()}
                data-segment-ms={s.segmentation.as_ref().map(|x| format!("{:.0}", x.millis)).unwrap_or_default()}
                data-kmeans-ms={s.kmeans.as_ref().map(|x| format!("{:.0}", x.millis)).unwrap_or_default()}>{ debug }</p>
            if let Some((text, word, setting, adapter)) = compute {
                <p class="compute muted" data-role="compute-status" data-compute={word} data-setting={setting} data-adapter={adapter}
                    data-encoded-on={encoded_on} data-fallback={fallback}>{ text }</p>
            }
            if let Some((text, t)) = threads {
                <p class="threads muted" data-role="threads-status" data-threads={t.threads.to_string()}
                    data-build={if t.multi_threaded_build { "multi" } else { "single" }}>{ text }</p>
            }
        </section>
    }
}

//! The page: header, weights bar, photo + overlay + legend, labels and settings, K-Means view.

use yew::prelude::*;

use crate::components::kmeans_view::KMeansView;
use crate::components::labels_editor::LabelsEditor;
use crate::components::legend::Legend;
use crate::components::notice::Notice;
use crate::components::photo_panel::PhotoPanel;
use crate::components::settings_panel::SettingsPanel;
use crate::components::share_button::ShareButton;
use crate::components::status_line::StatusLine;
use crate::components::viewer::Viewer;
use crate::components::weights_panel::WeightsPanel;
use crate::context::AppCtx;
use crate::hooks::{
    use_fragment_sync, use_page_files, use_request_driver, use_site_quality, use_worker,
};
use crate::state::{Area, Share, State};

/// State from the page URL (query string + fragment).
fn initial_state() -> State {
    let loc = web_sys::window().map(|w| w.location());
    let query = loc
        .as_ref()
        .and_then(|l| l.search().ok())
        .unwrap_or_default();
    let hash = loc.as_ref().and_then(|l| l.hash().ok()).unwrap_or_default();
    let (share, warnings) = Share::parse(&query, &hash);
    State::from_link(&share, warnings)
}

#[component]
pub fn App() -> Html {
    let state = use_reducer(initial_state);
    let worker = use_worker(state.dispatcher());
    let ctx = AppCtx {
        state: state.clone(),
        worker,
    };
    use_request_driver(&ctx);
    use_fragment_sync(&ctx);
    use_site_quality(&ctx);
    let dragging = use_page_files(&ctx);

    let s = &*state;
    let seg_id = s
        .segmentation
        .as_ref()
        .map(|x| x.id.to_string())
        .unwrap_or_default();
    let km_id = s
        .kmeans
        .as_ref()
        .map(|x| x.id.to_string())
        .unwrap_or_default();
    html! {
        <ContextProvider<AppCtx> context={ctx}>
            <div class="app"
                data-worker-ready={s.worker_ready.to_string()}
                data-model={if s.model.is_some() { "ready" } else { "none" }}
                data-encodes={s.encodes.to_string()}
                data-worker-restarts={s.life.restarts.to_string()}
                data-segmentation={seg_id}
                data-compare-segmentation={s.compare_segmentation.as_ref().map(|x| x.id.to_string()).unwrap_or_default()}
                data-kmeans={km_id}>
                <header class="top">
                    <div class="brand">
                        <svg class="logo" viewBox="0 0 32 32" aria-hidden="true">
                            <rect x="2" y="2" width="13" height="13" rx="3" fill="#e6194b"/>
                            <rect x="17" y="2" width="13" height="13" rx="3" fill="#3cb44b"/>
                            <rect x="2" y="17" width="13" height="13" rx="3" fill="#0082c8"/>
                            <rect x="17" y="17" width="13" height="13" rx="3" fill="#ffe119"/>
                        </svg>
                        <div>
                            <h1>{ "clipdino" }</h1>
                            <p class="tagline">{ "Segment any photo with words you choose — CLIP + CLIP-DINOiser, running entirely in your browser." }</p>
                        </div>
                    </div>
                    <ShareButton />
                </header>
                <Notice area={Area::Share} />
                <WeightsPanel />
                <main class="layout">
                    <section class="stage">
                        <PhotoPanel />
                        <Viewer />
                        <Legend />
                    </section>
                    <aside class="side">
                        <LabelsEditor />
                        <SettingsPanel />
                        <StatusLine />
                    </aside>
                </main>
                <KMeansView />
                <footer class="foot">
                    <p>
                        { "Nothing leaves your device: photos and labels are processed in a Web Worker on this page. " }
                        { "Models: OpenCLIP ViT-B/16 (LAION-2B) and the CLIP-DINOiser head (Wysoczańska et al., " }
                        <a href="https://arxiv.org/abs/2312.12359" rel="noopener">{ "arXiv 2312.12359" }</a>{ "). " }
                        { "Sample photos: see " }<a href="samples/LICENSES.md">{ "their licences" }</a>{ "." }
                    </p>
                </footer>
                if dragging {
                    <div class="drop-overlay" aria-hidden="true">
                        <div>{ "Drop a photo, or weight files (.gguf, .safetensors, .bin, .pt)" }</div>
                    </div>
                }
            </div>
        </ContextProvider<AppCtx>>
    }
}

//! What every component reaches through Yew context: the state handle and the worker, plus
//! the commands that send a request *and* record it in the state (so that replies to older
//! requests are dropped by the reducer).

use wasm_bindgen::JsValue;
use web_sys::File;
use yew::prelude::*;

use crate::bridge::WorkerHandle;
use crate::protocol::{
    Att, DeviceChoice, ImageInput, ImageRequest, KMeansRequest, LocalFile, Precision, Request,
    SegmentRequest, Side, WeightSet,
};
use crate::samples::Sample;
use crate::state::{Action, Area, Kind, Photo, PhotoSource, State};
use crate::url::resolve;

#[derive(Clone, PartialEq)]
pub struct AppCtx {
    pub state: UseReducerHandle<State>,
    pub worker: WorkerHandle,
}

/// What a dropped / picked / pasted file is, judged by type and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRole {
    Photo,
    Weights,
    Unknown,
}

pub const WEIGHT_EXTENSIONS: [&str; 6] = ["gguf", "safetensors", "bin", "pt", "pth", "json"];
const IMAGE_EXTENSIONS: [&str; 11] = [
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "avif", "tif", "tiff", "ico", "jfif",
];

pub fn role_of(name: &str, mime: &str) -> FileRole {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if WEIGHT_EXTENSIONS.contains(&ext.as_str()) {
        FileRole::Weights
    } else if mime.starts_with("image/") || IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        FileRole::Photo
    } else {
        FileRole::Unknown
    }
}

impl AppCtx {
    pub fn dispatch(&self, a: Action) {
        self.state.dispatch(a);
    }

    /// Ask the worker to load `candidates` (see [`Request::LoadUrls`]).
    pub fn load_urls(&self, candidates: Vec<WeightSet>, confirm_above: Option<u64>) {
        let id = self.worker.next_id();
        self.dispatch(Action::UrlsRequested(id, candidates.clone()));
        self.worker.send(
            &Request::LoadUrls {
                id,
                candidates,
                confirm_above,
            },
            vec![],
        );
    }

    /// Load the weights the page URL / share link names (or the defaults).
    pub fn load_configured(&self) {
        let (sets, confirm) = self
            .state
            .weights_source
            .candidates(self.state.settings.precision, resolve);
        self.load_urls(sets, confirm);
    }

    /// Switch the site's bundle: the one chosen is loaded at once (from the browser cache when
    /// it is there; the user saw its size on the button, so no second question).
    pub fn set_precision(&self, precision: Precision) {
        self.dispatch(Action::SetPrecision(precision));
        self.load_urls(precision.site_sets(resolve), None);
    }

    pub fn load_files(&self, files: Vec<File>) {
        if files.is_empty() {
            return;
        }
        let id = self.worker.next_id();
        let mut list = Vec::new();
        let mut atts: Vec<JsValue> = Vec::new();
        for (i, f) in files.into_iter().enumerate() {
            list.push(LocalFile {
                name: f.name(),
                size: f.size() as u64,
                blob: Att(i),
            });
            atts.push(f.into());
        }
        self.dispatch(Action::WeightsRequested(id));
        self.worker
            .send(&Request::LoadFiles { id, files: list }, atts);
    }

    /// Compute with `threads` threads (`None`: one per core) from the next job on.
    pub fn set_threads(&self, threads: Option<usize>) {
        self.dispatch(Action::SetThreads(threads));
        let id = self.worker.next_id();
        self.worker
            .send(&Request::SetThreads { id, threads }, vec![]);
    }

    /// Run the image tower where `compute` says from the next encode on.
    pub fn set_compute(&self, compute: DeviceChoice) {
        self.dispatch(Action::SetCompute(compute));
        let id = self.worker.next_id();
        self.worker
            .send(&Request::SetCompute { id, compute }, vec![]);
    }

    /// Load the model's weights again so that the worker keeps its image tower's for the GPU
    /// (it was loaded while the compute setting was CPU, or no GPU was usable): from the
    /// browser cache for weights from the web; local files have to be picked again.
    pub fn reload_weights_for_gpu(&self) {
        match self.state.model_set.clone() {
            Some(set) => self.load_urls(vec![set], None),
            None if self.state.model.is_some() => self.dispatch(Action::Notice(
                Area::Weights,
                "To compute on the GPU, pick the weight files again: they were loaded while the \
                 image tower ran on the CPU, and are not kept for it."
                    .into(),
                false,
            )),
            None => {}
        }
    }

    pub fn cancel(&self, id: u64) {
        self.worker.send(&Request::Cancel { id }, vec![]);
    }

    pub fn open_sample(&self, sample: &Sample) {
        let id = self.worker.next_id();
        self.dispatch(Action::PhotoRequested(Photo {
            id,
            source: PhotoSource::Sample(sample.id.to_string()),
            preview_url: sample.url(),
            size: None,
        }));
        self.worker.send(
            &Request::SetImage(ImageRequest {
                id,
                input: ImageInput::Url {
                    url: resolve(&sample.url()),
                },
                resolution: self.state.settings.resolution,
            }),
            vec![],
        );
    }

    pub fn open_photo(&self, file: File) {
        let id = self.worker.next_id();
        let name = if file.name().is_empty() {
            "pasted image".to_string()
        } else {
            file.name()
        };
        let preview_url = web_sys::Url::create_object_url_with_blob(&file).unwrap_or_default();
        self.dispatch(Action::PhotoRequested(Photo {
            id,
            source: PhotoSource::Local { name: name.clone() },
            preview_url,
            size: None,
        }));
        self.worker.send(
            &Request::SetImage(ImageRequest {
                id,
                input: ImageInput::File(LocalFile {
                    name,
                    size: file.size() as u64,
                    blob: Att(0),
                }),
                resolution: self.state.settings.resolution,
            }),
            vec![file.into()],
        );
    }

    /// Route files from a drop, paste or picker: photos to the photo, weight files to the
    /// model, anything else gets a message in `area`.
    pub fn open_files(&self, files: Vec<File>, area: Area) {
        let mut photos = Vec::new();
        let mut weights = Vec::new();
        let mut unknown = Vec::new();
        for f in files {
            match role_of(&f.name(), &f.type_()) {
                FileRole::Photo => photos.push(f),
                FileRole::Weights => weights.push(f),
                FileRole::Unknown => unknown.push(f.name()),
            }
        }
        if !unknown.is_empty() {
            self.dispatch(Action::Notice(
                area,
                format!(
                    "{} is neither a photo nor a weights file (.gguf, .safetensors, .bin, .pt, .json).",
                    unknown.iter().map(|n| format!("“{n}”")).collect::<Vec<_>>().join(", ")
                ),
                true,
            ));
        }
        if let Some(p) = photos.into_iter().last() {
            self.open_photo(p);
        }
        if !weights.is_empty() {
            self.load_files(weights);
        }
    }

    /// Segment for an overlay: the live refinement while labels are being edited, or
    /// (`settled`) its full one — sent only when that differs (see [`crate::state::Method::live_refine`]).
    pub fn send_segment(&self, side: Side, settled: bool) -> Option<u64> {
        let s = &*self.state;
        let photo = s.photo.as_ref()?;
        let method = s.settings.method(side)?;
        if s.model.is_none() || s.labels.is_empty() {
            return None;
        }
        let resolution = s.settings.resolution;
        if settled && !method.settles_later(resolution) {
            return None;
        }
        let refine = if settled {
            method.refine
        } else {
            method.live_refine(resolution)
        };
        let id = self.worker.next_id();
        self.dispatch(Action::Sent(Kind::segment(side), id));
        self.worker.send(
            &Request::Segment(SegmentRequest {
                id,
                image: photo.id,
                labels: s.label_texts(),
                background: s.background_index(),
                mode: method.mode,
                resolution,
                templates: s.settings.templates,
                refine,
                side,
            }),
            vec![],
        );
        Some(id)
    }

    pub fn send_kmeans(&self) -> Option<u64> {
        let s = &*self.state;
        let photo = s.photo.as_ref()?;
        s.model.as_ref()?;
        let id = self.worker.next_id();
        self.dispatch(Action::Sent(Kind::KMeans, id));
        self.worker.send(
            &Request::KMeans(KMeansRequest {
                id,
                image: photo.id,
                k: s.settings.k,
                resolution: s.settings.resolution,
                mode: s.settings.mode,
            }),
            vec![],
        );
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_routed_by_type_and_name() {
        assert_eq!(role_of("IMG_1.JPG", ""), FileRole::Photo);
        assert_eq!(role_of("image.png", "image/png"), FileRole::Photo);
        assert_eq!(
            role_of("", "image/png"),
            FileRole::Photo,
            "pasted images have no name"
        );
        assert_eq!(role_of("clip-dinoiser-q4_0.gguf", ""), FileRole::Weights);
        assert_eq!(
            role_of("open_clip_pytorch_model.bin", "application/octet-stream"),
            FileRole::Weights
        );
        assert_eq!(role_of("last.pt", ""), FileRole::Weights);
        assert_eq!(role_of("notes.txt", "text/plain"), FileRole::Unknown);
        assert_eq!(role_of("archive", ""), FileRole::Unknown);
    }
}

//! Which weights to load: the source a page URL names (a bundle, upstream files) or the
//! default — this site's bundle of the chosen [`Precision`], else its standard bundle, else the
//! public upstream files after the user agrees to the large download.

use crate::protocol::{ComputePath, Precision, RemoteFile, WeightSet, APP_COMPUTE};
use crate::url::{file_name_of, origin_of};

/// Ask before downloading more than this many bytes that are not cached.
pub const CONFIRM_ABOVE_BYTES: u64 = 200 * 1024 * 1024;

/// The bundle a site may publish beside the app (relative to the page). Each of the site's
/// bundles may also be published in parts with their manifest (`clipdino split`, same name with
/// [`clipdino::parts::MANIFEST_SUFFIX`] instead of `.gguf`), which is tried first.
pub const SITE_BUNDLE: &str = "models/clip-dinoiser.gguf";
/// The high-precision bundle a site may publish beside it (`scripts/publish-models.sh`).
pub const SITE_BUNDLE_HIGH: &str = "models/clip-dinoiser-f16.gguf";
/// `clipdino verify`'s report on the site's bundles (see [`super::quality`]).
pub const SITE_QUALITY: &str = "models/quality.json";

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::Standard, Precision::High];

    /// The site's bundle of this precision (relative to the page).
    pub fn bundle(self) -> &'static str {
        match self {
            Precision::Standard => SITE_BUNDLE,
            Precision::High => SITE_BUNDLE_HIGH,
        }
    }

    /// The bundle's file name, as `clipdino verify` reports it.
    pub fn file_name(self) -> String {
        file_name_of(self.bundle())
    }

    /// How the app computes with it: the default bundle (Q8_0) on the integer kernel, where it
    /// keeps within 0.4 points of f32 compute; the F16 bundle on f32, where it is closest to the
    /// upstream model (QUANTIZATION.md).
    pub fn compute(self) -> ComputePath {
        match self {
            Precision::Standard => APP_COMPUTE,
            Precision::High => ComputePath::F32,
        }
    }

    /// The manifest of the site's bundle in parts (relative to the page).
    pub fn parts_manifest(self) -> String {
        let bundle = self.bundle();
        let stem = bundle.strip_suffix(".gguf").unwrap_or(bundle);
        format!("{stem}{}", clipdino::parts::MANIFEST_SUFFIX)
    }

    /// The site's bundle as candidate sets: in parts (fetched in parallel), else as one file.
    pub fn site_sets(self, resolve: impl Fn(&str) -> String) -> Vec<WeightSet> {
        let label = match self {
            Precision::Standard => "CLIP-DINOiser bundle of this site",
            Precision::High => "high-precision CLIP-DINOiser bundle of this site",
        };
        let set = |label: String, url: &str| WeightSet {
            label,
            files: vec![remote(&resolve(url))],
            approx_bytes: None,
            ask_first: false,
            compute: Some(self.compute()),
            site_bundle: Some(self),
        };
        vec![
            set(format!("{label} (in parts)"), &self.parts_manifest()),
            set(label.into(), self.bundle()),
        ]
    }

    /// The name in share links (`precision=high`; the standard one is not written).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Standard => "standard",
            Precision::High => "high",
        }
    }
}
impl super::State {
    /// After a load of the site's bundle ended (loaded or failed): the precision setting
    /// follows the bundle actually in use, so that it never shows (nor a share link carries) a
    /// precision whose bundle could not be loaded. Returns what to tell the user when it had to
    /// change; nothing when the setting already matches, when no site bundle is in use, or for
    /// weights a link names.
    pub(super) fn precision_follows_model(&mut self) -> Option<String> {
        if self.weights_source != WeightsSource::Default || self.model.is_none() {
            return None;
        }
        let in_use = self.model_set.as_ref()?.site_bundle?;
        let wanted = std::mem::replace(&mut self.settings.precision, in_use);
        let title = |p: Precision| match p {
            Precision::Standard => "standard",
            Precision::High => "high-precision",
        };
        (wanted != in_use).then(|| {
            format!(
                "This site's {} bundle could not be loaded, so its {} bundle is in use and Precision is set back to {}.",
                title(wanted),
                title(in_use),
                in_use.name()
            )
        })
    }
}

/// Public upstream files (they send CORS headers), see METHOD.md.
pub const HUB_CLIP: &str =
    "https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/resolve/main/open_clip_model.safetensors";
pub const HUB_CONFIG: &str =
    "https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/resolve/main/open_clip_config.json";
pub const HUB_HEAD: &str =
    "https://raw.githubusercontent.com/wysoczanska/clip_dinoiser/main/checkpoints/last.pt";
/// open_clip_model.safetensors (598.6 MB) + last.pt (7.1 MB) + config.
pub const HUB_APPROX_BYTES: u64 = 605_700_000;

/// Which weights to load.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum WeightsSource {
    /// This site's bundle if present, else the public hub files (asks first: ≈ 600 MB).
    #[default]
    Default,
    /// `model=<url>`: a GGUF bundle.
    Bundle(String),
    /// `clip=<url>&head=<url>[&config=<url>]`: upstream files.
    Pair {
        clip: String,
        head: Option<String>,
        config: Option<String>,
    },
}

fn remote(url: &str) -> RemoteFile {
    RemoteFile {
        url: url.to_string(),
        name: file_name_of(url),
    }
}

impl WeightsSource {
    /// Candidate sets for a `LoadUrls` request and the confirmation threshold. `precision`
    /// picks the site's bundle for the default source (the other sources ignore it). `resolve`
    /// turns a page-relative URL into an absolute one. A set a link names with a file on another
    /// origin than the page is only loaded after one click (see [`WeightSet::ask_first`]); this
    /// site's bundle and the built-in default are not.
    pub fn candidates(
        &self,
        precision: Precision,
        resolve: impl Fn(&str) -> String,
    ) -> (Vec<WeightSet>, Option<u64>) {
        let page = origin_of(&resolve(""));
        let foreign = |set: &WeightSet| {
            set.files
                .iter()
                .any(|f| page.is_none() || origin_of(&f.url) != page)
        };
        let (mut sets, confirm) = self.sets(precision, resolve);
        if *self != WeightsSource::Default {
            for set in &mut sets {
                set.ask_first = foreign(set);
            }
        }
        (sets, confirm)
    }

    fn sets(
        &self,
        precision: Precision,
        resolve: impl Fn(&str) -> String,
    ) -> (Vec<WeightSet>, Option<u64>) {
        match self {
            WeightsSource::Default => {
                // The chosen precision first; a site without the high-precision bundle still
                // has its standard one.
                let mut sets = precision.site_sets(&resolve);
                if precision != Precision::Standard {
                    sets.extend(Precision::Standard.site_sets(&resolve));
                }
                sets.push(WeightSet {
                    label: "OpenCLIP ViT-B/16 (Hugging Face) + CLIP-DINOiser head (GitHub)".into(),
                    files: vec![remote(HUB_CLIP), remote(HUB_CONFIG), remote(HUB_HEAD)],
                    approx_bytes: Some(HUB_APPROX_BYTES),
                    ask_first: false,
                    compute: None,
                    site_bundle: None,
                });
                (sets, Some(CONFIRM_ABOVE_BYTES))
            }
            WeightsSource::Bundle(url) => (
                vec![WeightSet {
                    label: format!("Model bundle {}", file_name_of(url)),
                    files: vec![remote(&resolve(url))],
                    approx_bytes: None,
                    ask_first: false,
                    compute: None,
                    site_bundle: None,
                }],
                None,
            ),
            WeightsSource::Pair { clip, head, config } => {
                let mut files = vec![remote(&resolve(clip))];
                if let Some(c) = config {
                    files.push(remote(&resolve(c)));
                }
                if let Some(h) = head {
                    files.push(remote(&resolve(h)));
                }
                (
                    vec![WeightSet {
                        label: format!(
                            "CLIP weights {}{}",
                            file_name_of(clip),
                            head.as_deref()
                                .map(|h| format!(" + head {}", file_name_of(h)))
                                .unwrap_or_default()
                        ),
                        files,
                        approx_bytes: None,
                        ask_first: false,
                        compute: None,
                        site_bundle: None,
                    }],
                    None,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;
    use crate::protocol::{ErrorContext, Response};

    #[test]
    fn large_downloads_wait_for_confirmation() {
        let mut s = State::default();
        s.apply(Action::WeightsRequested(1));
        let (sets, confirm) =
            WeightsSource::Default.candidates(Precision::Standard, |u| format!("http://h/app/{u}"));
        assert_eq!(confirm, Some(CONFIRM_ABOVE_BYTES));
        // The bundle in parts first, then as one file (a site without a manifest), then the
        // hub files.
        assert_eq!(
            sets[0].files[0].url,
            "http://h/app/models/clip-dinoiser.parts.json"
        );
        assert_eq!(
            sets[1].files[0].url,
            "http://h/app/models/clip-dinoiser.gguf"
        );
        assert_eq!(sets[2].files.len(), 3);
        s.apply(Action::Worker(
            Response::NeedsConfirmation {
                id: 1,
                set: sets[2].clone(),
                total_bytes: Some(HUB_APPROX_BYTES),
                notes: vec![],
            },
            vec![],
        ));
        assert!(matches!(s.load, LoadPhase::Offer { .. }));
        s.apply(Action::DeclineDownload);
        assert_eq!(s.load, LoadPhase::Idle);
        assert!(!s.notice(Area::Weights).unwrap().error);
    }

    #[test]
    fn the_high_precision_bundle_computes_in_f32_and_falls_back_to_the_standard_one() {
        let page = |u: &str| format!("http://h/app/{u}");
        let (sets, confirm) = WeightsSource::Default.candidates(Precision::High, page);
        assert_eq!(
            confirm,
            Some(CONFIRM_ABOVE_BYTES),
            "a link's 300 MB asks first"
        );
        let urls: Vec<&str> = sets.iter().map(|s| s.files[0].url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://h/app/models/clip-dinoiser-f16.parts.json",
                "http://h/app/models/clip-dinoiser-f16.gguf",
                "http://h/app/models/clip-dinoiser.parts.json",
                "http://h/app/models/clip-dinoiser.gguf",
                HUB_CLIP
            ]
        );
        let how: Vec<_> = sets.iter().map(|s| (s.compute, s.site_bundle)).collect();
        let high = (Some(ComputePath::F32), Some(Precision::High));
        let standard = (Some(APP_COMPUTE), Some(Precision::Standard));
        assert_eq!(how, [high, high, standard, standard, (None, None)]);
        assert_eq!(Precision::High.file_name(), "clip-dinoiser-f16.gguf");
        // Weights a link names compute the app's way and are no site bundle.
        let (sets, _) = WeightsSource::Bundle("models/clip-dinoiser-f16.gguf".into())
            .candidates(Precision::High, page);
        assert_eq!((sets[0].compute, sets[0].site_bundle), (None, None));
    }

    fn info(file: &str) -> crate::protocol::ModelInfo {
        crate::protocol::ModelInfo::for_tests(&[file], 1)
    }

    #[test]
    fn the_loaded_set_is_the_one_whose_files_arrived() {
        let page = |u: &str| format!("http://h/app/{u}");
        let (sets, _) = WeightsSource::Default.candidates(Precision::High, page);
        let mut s = State::default();
        s.apply(Action::UrlsRequested(4, sets.clone()));
        // The site has no high-precision bundle: the worker fell back to the standard one.
        s.apply(Action::Worker(
            Response::Loaded {
                id: 4,
                info: info("clip-dinoiser.gguf"),
            },
            vec![],
        ));
        assert_eq!(s.model_set.as_ref(), Some(&sets[3]));
        // A reply to an older request does not change it.
        s.apply(Action::Worker(
            Response::Loaded {
                id: 3,
                info: info("clip-dinoiser-f16.gguf"),
            },
            vec![],
        ));
        assert_eq!(s.model_set.as_ref(), Some(&sets[3]));
        // The same bundle in parts is told apart by its manifest's name.
        s.apply(Action::UrlsRequested(5, sets.clone()));
        s.apply(Action::Worker(
            Response::Loaded {
                id: 5,
                info: info("clip-dinoiser-f16.parts.json"),
            },
            vec![],
        ));
        assert_eq!(s.model_set.as_ref(), Some(&sets[0]));
    }

    #[test]
    fn the_precision_setting_follows_the_bundle_in_use() {
        let page = |u: &str| format!("http://h/app/{u}");
        let loaded = |s: &mut State, id, precision: Precision, file: &str| {
            let (sets, _) = WeightsSource::Default.candidates(precision, page);
            s.apply(Action::UrlsRequested(id, sets));
            s.apply(Action::Worker(
                Response::Loaded {
                    id,
                    info: info(file),
                },
                vec![],
            ));
        };
        // The standard bundle in use; the user asks for the high-precision one, which fails
        // (network, a damaged part): the setting goes back to standard and says why.
        let mut s = State::default();
        loaded(&mut s, 1, Precision::Standard, "clip-dinoiser.parts.json");
        assert_eq!(s.notice(Area::Weights), None);
        s.apply(Action::SetPrecision(Precision::High));
        s.apply(Action::UrlsRequested(2, Precision::High.site_sets(page)));
        s.apply(Action::Worker(
            Response::Error {
                id: Some(2),
                context: ErrorContext::Weights,
                message: "The part 2 of 5 (clip-dinoiser-f16.part-001) from h is damaged.".into(),
            },
            vec![],
        ));
        assert_eq!(s.settings.precision, Precision::Standard);
        let n = s.notice(Area::Weights).unwrap();
        assert!(n.error);
        assert_eq!(
            n.text,
            "The part 2 of 5 (clip-dinoiser-f16.part-001) from h is damaged. This site's high-precision bundle could not be loaded, so its standard bundle is in use and Precision is set back to standard."
        );
        assert!(!s.share().to_fragment().contains("precision"));
        // A failure of the bundle already in use changes nothing.
        s.apply(Action::UrlsRequested(
            3,
            Precision::Standard.site_sets(page),
        ));
        s.apply(Action::Worker(
            Response::Error {
                id: Some(3),
                context: ErrorContext::Weights,
                message: "offline".into(),
            },
            vec![],
        ));
        assert_eq!(s.notice(Area::Weights).unwrap().text, "offline");
        // A link asks for high on a site without it: the worker fell back to the standard one.
        let mut s = State::default();
        s.apply(Action::SetPrecision(Precision::High));
        loaded(&mut s, 1, Precision::High, "clip-dinoiser.gguf");
        assert_eq!(s.settings.precision, Precision::Standard);
        let n = s.notice(Area::Weights).unwrap();
        assert!(!n.error && n.text.starts_with("This site's high-precision bundle"));
        // Nothing loaded yet, or weights a link names: nothing to follow.
        let mut s = State::default();
        s.apply(Action::SetPrecision(Precision::High));
        s.apply(Action::UrlsRequested(1, Precision::High.site_sets(page)));
        s.apply(Action::Worker(
            Response::Error {
                id: Some(1),
                context: ErrorContext::Weights,
                message: "offline".into(),
            },
            vec![],
        ));
        assert_eq!(s.settings.precision, Precision::High);
    }

    #[test]
    fn weights_on_another_origin_wait_for_one_click() {
        let page = |u: &str| {
            if u.contains("://") {
                u.to_string()
            } else {
                format!("http://127.0.0.1:8080/app/{u}")
            }
        };
        let bundle = |u: &str| {
            WeightsSource::Bundle(u.into())
                .candidates(Precision::High, page)
                .0
        };
        assert!(!bundle("models/m.gguf")[0].ask_first, "same origin");
        assert!(!bundle("http://127.0.0.1:8080/other/m.gguf")[0].ask_first);
        assert!(
            bundle("http://localhost:8080/m.gguf")[0].ask_first,
            "other host"
        );
        assert!(
            bundle("http://127.0.0.1:9090/m.gguf")[0].ask_first,
            "other port"
        );
        assert!(
            bundle("https://127.0.0.1:8080/m.gguf")[0].ask_first,
            "other scheme"
        );
        let pair = WeightsSource::Pair {
            clip: "clip.safetensors".into(),
            head: Some("https://huggingface.co/x/last.pt".into()),
            config: None,
        };
        assert!(
            pair.candidates(Precision::Standard, page).0[0].ask_first,
            "one foreign file is enough"
        );
        // The default (this site's bundle, else the hub files after the large-download
        // question) is loaded as before.
        let (sets, confirm) = WeightsSource::Default.candidates(Precision::Standard, page);
        assert!(sets.iter().all(|s| !s.ask_first));
        assert_eq!(confirm, Some(CONFIRM_ABOVE_BYTES));
        // The worker's question comes back as the offer.
        let mut s = State::default();
        s.apply(Action::WeightsRequested(1));
        let set = bundle("https://huggingface.co/x/m.gguf").remove(0);
        s.apply(Action::Worker(
            Response::NeedsConfirmation {
                id: 1,
                set: set.clone(),
                total_bytes: Some(350_000_000),
                notes: vec![],
            },
            vec![],
        ));
        assert_eq!(
            s.load,
            LoadPhase::Offer {
                set,
                total_bytes: Some(350_000_000),
                notes: vec![]
            }
        );
    }
}

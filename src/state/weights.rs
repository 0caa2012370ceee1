//! Which weights to load: the source a page URL names (a bundle, upstream files) or the
//! default — this site's bundle, else the public upstream files after the user agrees to the
//! large download.

use crate::protocol::{RemoteFile, WeightSet};
use crate::url::{file_name_of, origin_of};

/// Ask before downloading more than this many bytes that are not cached.
pub const CONFIRM_ABOVE_BYTES: u64 = 200 * 1024 * 1024;

/// The bundle a site may publish beside the app (relative to the page).
pub const SITE_BUNDLE: &str = "models/clip-dinoiser.gguf";
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
    /// Candidate sets for a `LoadUrls` request and the confirmation threshold. `resolve` turns
    /// a page-relative URL into an absolute one. A set a link names with a file on another
    /// origin than the page is only loaded after one click (see [`WeightSet::ask_first`]); this
    /// site's bundle and the built-in default are not.
    pub fn candidates(&self, resolve: impl Fn(&str) -> String) -> (Vec<WeightSet>, Option<u64>) {
        let page = origin_of(&resolve(""));
        let foreign = |set: &WeightSet| {
            set.files
                .iter()
                .any(|f| page.is_none() || origin_of(&f.url) != page)
        };
        let (mut sets, confirm) = self.sets(resolve);
        if *self != WeightsSource::Default {
            for set in &mut sets {
                set.ask_first = foreign(set);
            }
        }
        (sets, confirm)
    }

    fn sets(&self, resolve: impl Fn(&str) -> String) -> (Vec<WeightSet>, Option<u64>) {
        match self {
            WeightsSource::Default => (
                vec![
                    WeightSet {
                        label: "CLIP-DINOiser bundle of this site".into(),
                        files: vec![remote(&resolve(SITE_BUNDLE))],
                        approx_bytes: None,
                        ask_first: false,
                    },
                    WeightSet {
                        label: "OpenCLIP ViT-B/16 (Hugging Face) + CLIP-DINOiser head (GitHub)"
                            .into(),
                        files: vec![remote(HUB_CLIP), remote(HUB_CONFIG), remote(HUB_HEAD)],
                        approx_bytes: Some(HUB_APPROX_BYTES),
                        ask_first: false,
                    },
                ],
                Some(CONFIRM_ABOVE_BYTES),
            ),
            WeightsSource::Bundle(url) => (
                vec![WeightSet {
                    label: format!("Model bundle {}", file_name_of(url)),
                    files: vec![remote(&resolve(url))],
                    approx_bytes: None,
                    ask_first: false,
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
    use crate::protocol::Response;

    #[test]
    fn large_downloads_wait_for_confirmation() {
        let mut s = State::default();
        s.apply(Action::WeightsRequested(1));
        let (sets, confirm) = WeightsSource::Default.candidates(|u| format!("http://h/app/{u}"));
        assert_eq!(confirm, Some(CONFIRM_ABOVE_BYTES));
        assert_eq!(
            sets[0].files[0].url,
            "http://h/app/models/clip-dinoiser.gguf"
        );
        assert_eq!(sets[1].files.len(), 3);
        s.apply(Action::Worker(
            Response::NeedsConfirmation {
                id: 1,
                set: sets[1].clone(),
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
    fn weights_on_another_origin_wait_for_one_click() {
        let page = |u: &str| {
            if u.contains("://") {
                u.to_string()
            } else {
                format!("http://127.0.0.1:8080/app/{u}")
            }
        };
        let bundle = |u: &str| WeightsSource::Bundle(u.into()).candidates(page).0;
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
            pair.candidates(page).0[0].ask_first,
            "one foreign file is enough"
        );
        // The default (this site's bundle, else the hub files after the large-download
        // question) is loaded as before.
        let (sets, confirm) = WeightsSource::Default.candidates(page);
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

//! Share links: `#labels=cat,dog&mode=dinoiser&refine=pamr&compare=naclip&compare_refine=pamr&res=336&tpl=7&k=6&opacity=55&sample=chelsea&model=…`
//! (or `…&sample=chelsea&precision=high` for the site's high-precision bundle).
//!
//! `mode` / `compare` take a mode's name ([`Mode::name`]), `refine` / `compare_refine` a
//! refinement's (`none`, `pamr`, `pamr:N`; written only when not `none`). A link that names a
//! mode but no refinement was written before refinement existed and opens unrefined, as it
//! looked; the compare view is on exactly when `compare` is there.
//!
//! A page's query string and fragment are read into a [`Share`] (bad values are ignored with a
//! warning each: links are user data); the state writes its own [`Share`] back as the fragment.
//! Old links keep working: the keys and values below are a public format.

use super::{
    normalise_label, Area, Method, Mode, Precision, Preset, Refine, State, TemplateSet,
    WeightsSource, K_MAX, K_MIN,
};
use crate::protocol::RESOLUTIONS;
use crate::url::{is_fetchable_url, percent_decode, percent_encode};

/// The app resolution with this short side (`res=336`).
fn resolution_of(short_side: usize) -> Option<Preset> {
    RESOLUTIONS
        .into_iter()
        .find(|r| r.short_side() == Some(short_side))
}

/// A mode by its name ([`Mode::name`]), or the old spelling `clip-dinoiser`.
fn mode_of(name: &str) -> Option<Mode> {
    match name {
        "clip-dinoiser" => Some(Mode::Dinoiser),
        n => n.parse().ok(),
    }
}

/// Everything a share link (or the page URL) can hold. `None` = not given.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Share {
    pub labels: Option<Vec<String>>,
    pub mode: Option<Mode>,
    /// The primary overlay's refinement (`None`: not written, i.e. none — see the module).
    pub refine: Option<Refine>,
    /// The compare view's method (`None`: off).
    pub compare: Option<Method>,
    pub resolution: Option<Preset>,
    pub templates: Option<TemplateSet>,
    pub k: Option<usize>,
    pub opacity: Option<u8>,
    /// Sample photo id (a local photo is never shared).
    pub sample: Option<String>,
    /// Which of the site's bundles (written only when it is the high-precision one and no
    /// other weights are named: the recipient's page asks before that larger download).
    pub precision: Option<Precision>,
    pub weights: WeightsSource,
}

fn pairs(s: &str) -> impl Iterator<Item = (String, String)> + '_ {
    s.trim_start_matches(['#', '?'])
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), v.to_string()),
            None => (percent_decode(p), String::new()),
        })
}

impl Share {
    /// Read the page's query string and fragment (the fragment wins). Unknown keys are
    /// ignored; bad values produce a warning each.
    pub fn parse(query: &str, fragment: &str) -> (Share, Vec<String>) {
        let mut share = Share::default();
        let mut warnings = Vec::new();
        let (mut model, mut clip, mut head, mut config) = (None, None, None, None);
        let (mut compare_mode, mut compare_refine) = (None, None);
        let modes = || {
            let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
            names.join(", ")
        };
        for (key, raw) in pairs(query).chain(pairs(fragment)) {
            let value = percent_decode(&raw);
            let bad = |w: &mut Vec<String>| w.push(format!("Ignored `{key}={value}` in the link."));
            let bad_mode = |w: &mut Vec<String>| {
                w.push(format!(
                    "Ignored `{key}={value}` in the link: the modes are {}.",
                    modes()
                ))
            };
            let bad_refine = |w: &mut Vec<String>| {
                w.push(format!(
                    "Ignored `{key}={value}` in the link: the refinements are none and pamr."
                ))
            };
            match key.as_str() {
                "labels" | "l" => {
                    // Labels are separated by encoded-free commas; each part is decoded alone.
                    let list: Vec<String> = raw
                        .split(',')
                        .map(percent_decode)
                        .map(|s| normalise_label(&s))
                        .filter(|s| !s.is_empty())
                        .collect();
                    share.labels = Some(list);
                }
                "mode" => match mode_of(&value) {
                    Some(m) => share.mode = Some(m),
                    None => bad_mode(&mut warnings),
                },
                "compare" => match mode_of(&value) {
                    Some(m) => compare_mode = Some(m),
                    None => bad_mode(&mut warnings),
                },
                "refine" => match value.parse::<Refine>() {
                    Ok(r) => share.refine = Some(r),
                    Err(_) => bad_refine(&mut warnings),
                },
                "compare_refine" => match value.parse::<Refine>() {
                    Ok(r) => compare_refine = Some(r),
                    Err(_) => bad_refine(&mut warnings),
                },
                "res" => match value.parse().ok().and_then(resolution_of) {
                    Some(r) => share.resolution = Some(r),
                    None => bad(&mut warnings),
                },
                "tpl" => match value.as_str() {
                    "7" | "fast" => share.templates = Some(TemplateSet::Fast),
                    "80" | "full" => share.templates = Some(TemplateSet::Full),
                    _ => bad(&mut warnings),
                },
                "k" => match value.parse::<usize>() {
                    Ok(k) if (K_MIN..=K_MAX).contains(&k) => share.k = Some(k),
                    _ => bad(&mut warnings),
                },
                "opacity" => match value.parse::<u8>() {
                    Ok(o) if o <= 100 => share.opacity = Some(o),
                    _ => bad(&mut warnings),
                },
                "sample" => {
                    if value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                        && !value.is_empty()
                    {
                        share.sample = Some(value)
                    } else {
                        bad(&mut warnings)
                    }
                }
                "precision" => match Precision::ALL.into_iter().find(|p| p.name() == value) {
                    Some(p) => share.precision = Some(p),
                    None => bad(&mut warnings),
                },
                "model" => model = Some(value),
                "clip" => clip = Some(value),
                "head" => head = Some(value),
                "config" => config = Some(value),
                _ => {}
            }
        }
        share.compare = compare_mode.map(|mode| Method {
            mode,
            refine: compare_refine.unwrap_or(Refine::None),
        });
        if compare_mode.is_none() && compare_refine.is_some() {
            warnings.push("Ignored `compare_refine`: the link names no `compare` mode.".into());
        }
        let url_ok = |u: &Option<String>| u.as_deref().is_none_or(is_fetchable_url);
        for (name, u) in [
            ("model", &model),
            ("clip", &clip),
            ("head", &head),
            ("config", &config),
        ] {
            if !url_ok(u) {
                warnings.push(format!(
                    "Ignored `{name}`: only http(s) or site-relative URLs can be fetched."
                ));
            }
        }
        let keep = |u: Option<String>| u.filter(|s| is_fetchable_url(s));
        let (model, clip, head, config) = (keep(model), keep(clip), keep(head), keep(config));
        share.weights = match (model, clip) {
            (Some(m), _) => WeightsSource::Bundle(m),
            (None, Some(c)) => WeightsSource::Pair {
                clip: c,
                head,
                config,
            },
            (None, None) => {
                if head.is_some() {
                    warnings.push(
                        "A `head` URL needs a `clip` URL beside it; using the default weights."
                            .into(),
                    );
                }
                WeightsSource::Default
            }
        };
        (share, warnings)
    }

    /// The fragment text (without `#`).
    pub fn to_fragment(&self) -> String {
        let mut parts = Vec::new();
        if let Some(labels) = &self.labels {
            let enc: Vec<String> = labels.iter().map(|l| percent_encode(l)).collect();
            parts.push(format!("labels={}", enc.join(",")));
        }
        if let Some(m) = self.mode {
            parts.push(format!("mode={}", m.name()));
        }
        if let Some(r) = self.refine.filter(|r| *r != Refine::None) {
            parts.push(format!("refine={r}"));
        }
        if let Some(c) = self.compare {
            parts.push(format!("compare={}", c.mode.name()));
            if c.refine != Refine::None {
                parts.push(format!("compare_refine={}", c.refine));
            }
        }
        if let Some(r) = self.resolution {
            if let Some(px) = r.short_side() {
                parts.push(format!("res={px}"));
            }
        }
        if let Some(t) = self.templates {
            parts.push(format!("tpl={}", t.len()));
        }
        if let Some(k) = self.k {
            parts.push(format!("k={k}"));
        }
        if let Some(o) = self.opacity {
            parts.push(format!("opacity={o}"));
        }
        if let Some(s) = &self.sample {
            parts.push(format!("sample={}", percent_encode(s)));
        }
        match &self.weights {
            WeightsSource::Default => {
                if let Some(p) = self.precision.filter(|p| *p != Precision::Standard) {
                    parts.push(format!("precision={}", p.name()));
                }
            }
            WeightsSource::Bundle(u) => parts.push(format!("model={}", percent_encode(u))),
            WeightsSource::Pair { clip, head, config } => {
                parts.push(format!("clip={}", percent_encode(clip)));
                if let Some(h) = head {
                    parts.push(format!("head={}", percent_encode(h)));
                }
                if let Some(c) = config {
                    parts.push(format!("config={}", percent_encode(c)));
                }
            }
        }
        parts.join("&")
    }
}

impl State {
    /// Apply settings and labels from a share link.
    pub(super) fn apply_share(&mut self, share: &Share) {
        if let Some(labels) = &share.labels {
            self.labels.clear();
            let mut keys = Vec::new();
            for l in labels {
                // Links are user data too: skip what the editor would refuse.
                let _ = self.push_label(l, &mut keys);
            }
            self.after_labels_changed();
        }
        if let Some(m) = share.mode {
            self.settings.mode = m;
        }
        // A link with a mode and no refinement predates refinement: it opens as it looked.
        match share.refine {
            Some(r) => self.settings.refine = r,
            None if share.mode.is_some() => self.settings.refine = Refine::None,
            None => {}
        }
        if share.compare.is_some() || share.mode.is_some() {
            self.settings.compare = share.compare;
        }
        if let Some(r) = share.resolution {
            self.settings.resolution = r;
        }
        if let Some(t) = share.templates {
            self.settings.templates = t;
        }
        if let Some(k) = share.k {
            self.settings.k = k.clamp(K_MIN, K_MAX);
        }
        if let Some(o) = share.opacity {
            self.settings.opacity = o.min(100);
        }
        if let Some(p) = share.precision {
            self.settings.precision = p;
        }
        if share.weights != WeightsSource::Default {
            self.weights_source = share.weights.clone();
        }
        if share.sample.is_some() {
            self.requested_sample = share.sample.clone();
        }
    }

    /// The state a page starts in: defaults, then what its URL says (`warnings` from
    /// [`Share::parse`] become a notice).
    pub fn from_link(share: &Share, warnings: Vec<String>) -> Self {
        let mut s = State::default();
        s.apply_share(share);
        if !warnings.is_empty() {
            s.set_notice(Area::Share, warnings.join(" "), true);
        }
        s
    }

    /// The share link fragment (without `#`) for the current state.
    pub fn share(&self) -> Share {
        Share {
            labels: Some(self.label_texts()),
            mode: Some(self.settings.mode),
            refine: Some(self.settings.refine).filter(|r| *r != Refine::None),
            compare: self.settings.compare,
            resolution: Some(self.settings.resolution),
            templates: Some(self.settings.templates),
            k: Some(self.settings.k),
            opacity: Some(self.settings.opacity),
            sample: self.sample_id().map(str::to_string),
            // Only what a link writes (see [`Share::precision`]), so that links read back equal.
            precision: (self.settings.precision != Precision::Standard
                && self.weights_source == WeightsSource::Default)
                .then_some(self.settings.precision),
            weights: self.weights_source.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::*;

    #[test]
    fn share_fragment_round_trip() {
        let mut s = with_labels("cat,hot dog,crème brûlée,a&b=c #1,background");
        s.apply(Action::SetMode(Side::Primary, Mode::MaskClip));
        s.apply(Action::SetResolution(Preset::Paper));
        s.apply(Action::SetTemplates(TemplateSet::Full));
        s.apply(Action::SetK(9));
        s.apply(Action::SetOpacity(70));
        s.weights_source = WeightsSource::Pair {
            clip: "https://example.org/w/clip.safetensors?download=1".into(),
            head: Some("weights/last.pt".into()),
            config: None,
        };
        s.apply(Action::PhotoRequested(Photo {
            id: 1,
            source: PhotoSource::Sample("chelsea".into()),
            preview_url: "samples/chelsea.jpg".into(),
            size: None,
        }));
        let frag = s.share().to_fragment();
        assert!(!frag.contains(' ') && !frag.contains('#'), "{frag}");
        assert!(
            frag.starts_with(
                "labels=cat,hot%20dog,cr%C3%A8me%20br%C3%BBl%C3%A9e,a%26b%3Dc%20%231,background&"
            ),
            "{frag}"
        );
        let (back, warnings) = Share::parse("", &format!("#{frag}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(back, s.share());
        let mut fresh = State::default();
        fresh.apply(Action::RestoreShare(back));
        assert_eq!(fresh.label_texts(), s.label_texts());
        assert_eq!(fresh.settings, s.settings);
        assert_eq!(fresh.weights_source, s.weights_source);
    }

    #[test]
    fn share_parse_query_and_fragment() {
        let (sh, w) = Share::parse(
            "?model=https%3A%2F%2Fx.org%2Fm.gguf&res=224",
            "#res=448&k=99&tpl=3&labels=a,,b",
        );
        assert_eq!(
            sh.weights,
            WeightsSource::Bundle("https://x.org/m.gguf".into())
        );
        assert_eq!(sh.resolution, Some(Preset::Paper), "the fragment wins");
        assert_eq!(sh.k, None);
        assert_eq!(sh.templates, None);
        assert_eq!(sh.labels, Some(vec!["a".into(), "b".into()]));
        assert_eq!(w.len(), 2, "{w:?}");
        let (sh, w) = Share::parse("", "clip=javascript:alert(1)&head=last.pt");
        assert_eq!(sh.weights, WeightsSource::Default);
        assert_eq!(w.len(), 2, "{w:?}");
        let (sh, _) = Share::parse(
            "clip=c.safetensors&head=h.pt&config=open_clip_config.json",
            "",
        );
        assert_eq!(
            sh.weights,
            WeightsSource::Pair {
                clip: "c.safetensors".into(),
                head: Some("h.pt".into()),
                config: Some("open_clip_config.json".into())
            }
        );
        let (sets, confirm) = sh
            .weights
            .candidates(Precision::Standard, |u| format!("http://h/{u}"));
        assert_eq!(confirm, None, "explicit URLs load without asking");
        let names: Vec<&str> = sets[0].files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["c.safetensors", "open_clip_config.json", "h.pt"]);
        // Labels in a link obey the editor's rules.
        let (sh, _) = Share::parse("", &format!("labels=cat,CAT,{}", "y".repeat(200)));
        let mut s = State::default();
        s.apply(Action::RestoreShare(sh));
        assert_eq!(s.label_texts(), ["cat"]);
        let (sh, w) = Share::parse("", "sample=../../etc&k=2&opacity=101&mode=x");
        assert_eq!(
            (sh.sample, sh.k, sh.opacity, sh.mode),
            (None, Some(2), None, None)
        );
        assert_eq!(w.len(), 3);
        // Broken percent-coding anywhere in a link: read without failing, bad values dropped.
        let (sh, _) = Share::parse("?model=%", "labels=%E0%A4,%zz,cat&k=%&opacity=%4&mode=%00");
        assert_eq!((sh.k, sh.opacity, sh.mode), (None, None, None));
        assert_eq!(sh.labels.as_ref().and_then(|l| l.last()).unwrap(), "cat");
    }

    /// Links written by earlier versions of the page are a public format: this one (every key)
    /// must keep opening the same state, and the page must keep writing it back to the letter.
    #[test]
    fn links_from_earlier_versions_keep_working() {
        let old = "labels=cat,hot%20dog,background&mode=maskclip&res=448&tpl=80&k=9&opacity=70&sample=chelsea&clip=https%3A%2F%2Fexample.org%2Fclip.safetensors&head=weights%2Flast.pt";
        let (sh, w) = Share::parse("", &format!("#{old}"));
        assert!(w.is_empty(), "{w:?}");
        let s = State::from_link(&sh, w);
        assert_eq!(s.label_texts(), ["cat", "hot dog", "background"]);
        assert_eq!(
            (s.settings.mode, s.settings.resolution, s.settings.templates),
            (Mode::MaskClip, Preset::Paper, TemplateSet::Full)
        );
        assert_eq!((s.settings.k, s.settings.opacity), (9, 70));
        assert_eq!(s.requested_sample.as_deref(), Some("chelsea"));
        assert_eq!(
            s.weights_source,
            WeightsSource::Pair {
                clip: "https://example.org/clip.safetensors".into(),
                head: Some("weights/last.pt".into()),
                config: None
            }
        );
        let mut s = s;
        s.apply(Action::PhotoRequested(Photo {
            id: 1,
            source: PhotoSource::Sample("chelsea".into()),
            preview_url: "samples/chelsea.jpg".into(),
            size: None,
        }));
        assert_eq!(s.share().to_fragment(), old);
        // The other spellings old links used.
        for (frag, res, tpl, mode) in [
            (
                "res=224&tpl=7&mode=dinoiser",
                Preset::Fast,
                TemplateSet::Fast,
                Mode::Dinoiser,
            ),
            (
                "res=336&tpl=fast&mode=clip-dinoiser",
                Preset::Balanced,
                TemplateSet::Fast,
                Mode::Dinoiser,
            ),
            (
                "res=448&tpl=full&mode=maskclip",
                Preset::Paper,
                TemplateSet::Full,
                Mode::MaskClip,
            ),
        ] {
            let (sh, w) = Share::parse("", frag);
            assert!(w.is_empty(), "{frag}: {w:?}");
            assert_eq!(
                (sh.resolution, sh.templates, sh.mode),
                (Some(res), Some(tpl), Some(mode))
            );
        }
    }

    #[test]
    fn precision_travels_in_links_of_the_site_bundle_only() {
        let mut s = with_labels("cat");
        assert!(
            !s.share().to_fragment().contains("precision"),
            "standard is not written"
        );
        s.apply(Action::SetPrecision(Precision::High));
        let frag = s.share().to_fragment();
        assert!(frag.ends_with("&precision=high"), "{frag}");
        let (sh, w) = Share::parse("", &frag);
        assert!(w.is_empty(), "{w:?}");
        let fresh = State::from_link(&sh, w);
        assert_eq!(fresh.settings.precision, Precision::High);
        let (sh, _) = Share::parse("", "precision=standard");
        assert_eq!(sh.precision, Some(Precision::Standard));
        let (sh, w) = Share::parse("", "precision=ultra");
        assert_eq!((sh.precision, w.len()), (None, 1));
        // Weights named by the link: the precision of the site's bundles means nothing there.
        s.weights_source = WeightsSource::Bundle("m.gguf".into());
        assert!(!s.share().to_fragment().contains("precision"));
    }

    #[test]
    fn a_page_starts_from_its_link() {
        let (sh, w) = Share::parse("?clip=c.safetensors", "#labels=cat,dog&sample=coffee&k=99");
        let s = State::from_link(&sh, w);
        assert_eq!(s.label_texts(), ["cat", "dog"]);
        assert_eq!(s.requested_sample.as_deref(), Some("coffee"));
        assert!(matches!(s.weights_source, WeightsSource::Pair { .. }));
        assert!(s.notice(Area::Share).unwrap().text.contains("k=99"));
        let mut s = s;
        s.apply(Action::SetLabels(vec![]));
        assert!(
            s.labels.is_empty() && s.notice(Area::Labels).is_none(),
            "clearing is not an error"
        );
        s.apply(Action::PhotoRequested(photo(1, "blob:x")));
        assert_eq!(
            s.requested_sample, None,
            "a local photo replaces the linked sample"
        );
    }

    #[test]
    fn links_carry_the_methods_and_the_comparison() {
        let mut s = with_labels("cat,dog");
        s.apply(Action::SetMode(Side::Primary, Mode::NaClip));
        s.apply(Action::SetCompare(true));
        s.apply(Action::SetMode(Side::Compare, Mode::ClearClip));
        s.apply(Action::SetRefine(Side::Compare, Refine::None));
        let frag = s.share().to_fragment();
        assert!(
            frag.contains("&mode=naclip&refine=pamr&compare=clearclip&res=336&"),
            "{frag}"
        );
        let (sh, w) = Share::parse("", &frag);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(sh, s.share());
        let fresh = State::from_link(&sh, w);
        assert_eq!(fresh.settings, s.settings);
        // Refinements of both sides, PAMR with its iterations.
        let (sh, w) = Share::parse(
            "",
            "mode=sclip&refine=pamr:5&compare=dinoiser&compare_refine=pamr",
        );
        assert!(w.is_empty(), "{w:?}");
        let s = State::from_link(&sh, w);
        assert_eq!(s.settings.refine, Refine::Pamr { iterations: 5 });
        assert_eq!(
            s.settings.compare,
            Some(Method {
                mode: Mode::Dinoiser,
                refine: Refine::PAMR
            })
        );
        assert!(s
            .share()
            .to_fragment()
            .contains("mode=sclip&refine=pamr:5&compare=dinoiser&compare_refine=pamr&"));
        // A link that names a mode and no refinement predates refinement: it opens unrefined,
        // with no compare view; a page without a link starts with the defaults.
        let s = State::from_link(&Share::parse("", "mode=dinoiser&res=336").0, vec![]);
        assert_eq!(
            (s.settings.refine, s.settings.compare),
            (Refine::None, None)
        );
        let s = State::from_link(&Share::parse("", "labels=cat").0, vec![]);
        assert_eq!(s.settings.refine, Refine::PAMR);
        // Unknown values: a notice that says what is allowed, the rest of the link is used.
        let (sh, w) = Share::parse(
            "",
            "labels=cat&mode=segformer&refine=crf&compare=naclip&compare_refine=pamr:999&k=3",
        );
        assert_eq!((sh.mode, sh.refine, sh.k), (None, None, Some(3)));
        assert_eq!(
            sh.compare,
            Some(Method {
                mode: Mode::NaClip,
                refine: Refine::None
            })
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(
            w[0],
            "Ignored `mode=segformer` in the link: the modes are dinoiser, maskclip, clearclip, naclip, sclip."
        );
        assert_eq!(
            w[1],
            "Ignored `refine=crf` in the link: the refinements are none and pamr."
        );
        let s = State::from_link(&sh, w);
        assert!(s
            .notice(Area::Share)
            .unwrap()
            .text
            .contains("compare_refine=pamr:999"));
        assert_eq!(s.label_texts(), ["cat"]);
        let (sh, w) = Share::parse("", "compare_refine=pamr&compare=%00");
        assert_eq!((sh.compare, w.len()), (None, 2), "{w:?}");
    }
}

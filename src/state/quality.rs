//! The measured fidelity of this site's bundles: `models/quality.json`, the report
//! `clipdino verify` wrote when the site was published (`scripts/publish-models.sh`: each bundle
//! on each compute path against the upstream model in f32, on held-out photos with a VOC-style
//! label set). The page states the figure of the bundle in use — only for this site's own
//! bundles, only on the compute path it was measured on, and only when the loaded file has the
//! size the report measured; a missing or unreadable report means "not verified", never a
//! guess.

use serde::Deserialize;

use super::State;
use crate::protocol::{ComputePath, Precision, SiteFile, APP_COMPUTE};

/// The largest report the page reads (a real one is a few kB per bundle).
pub const MAX_REPORT_BYTES: usize = 1 << 20;

/// One bundle on one compute path, as measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// File name (`clip-dinoiser.gguf`).
    pub file: String,
    pub compute: ComputePath,
    pub bytes: u64,
    /// Pixels whose label equals the full-precision model's, in percent, over all photos and
    /// resolutions.
    pub agreement: f64,
    /// Mean cosine of the dense (MaskCLIP) patch features and of the label embeddings.
    pub dense_cosine: f64,
    pub text_cosine: f64,
}

/// What the page needs of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct QualityReport {
    pub photos: usize,
    pub labels: usize,
    /// How the photos were run, in words ("short side 336", "448 px windows").
    pub presets: Vec<String>,
    pub candidates: Vec<Verified>,
}

/// The site's report, as far as the page knows it.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum SiteQuality {
    /// Not asked for (a page whose link names other weights) or not answered yet.
    #[default]
    Unknown,
    /// The site publishes none (404, or the request failed).
    Absent,
    Report(QualityReport),
    /// There is a file, but it is not a report this page can read: why.
    Malformed(String),
}

impl SiteQuality {
    /// What the worker found at the report's URL.
    pub fn from_file(file: SiteFile) -> SiteQuality {
        match file {
            SiteFile::Text(t) => match QualityReport::parse(t.as_bytes()) {
                Ok(r) => SiteQuality::Report(r),
                Err(why) => SiteQuality::Malformed(why),
            },
            SiteFile::Missing => SiteQuality::Absent,
            SiteFile::Unreadable(why) => SiteQuality::Malformed(why),
        }
    }
}

/// The line the weights panel shows for the model in use.
#[derive(Clone, Debug, PartialEq)]
pub enum QualityLine {
    /// The report measured this bundle on this compute path: the sentence, and the details
    /// (for a tooltip).
    Verified {
        text: String,
        detail: String,
    },
    NotVerified(String),
}

// The subset of `clipdino verify --json` read here. Unknown fields are ignored (the report
// grows); missing or mistyped ones make the report unreadable.
#[derive(Deserialize)]
struct RawReport {
    reference: RawReference,
    photos: Vec<serde::de::IgnoredAny>,
    labels: Vec<String>,
    presets: Vec<RawPreset>,
    candidates: Vec<RawCandidate>,
}

#[derive(Deserialize)]
struct RawReference {
    compute: ComputePath,
}

#[derive(Deserialize)]
struct RawPreset {
    short_side: Option<u32>,
    window: Option<RawWindow>,
}

#[derive(Deserialize)]
struct RawWindow {
    size: u32,
}

#[derive(Deserialize)]
struct RawCandidate {
    file: String,
    bytes: u64,
    compute: ComputePath,
    text_cosine: RawStats,
    overall: RawOverall,
}

#[derive(Deserialize)]
struct RawOverall {
    agreement: f64,
    dense_cosine: RawStats,
}

#[derive(Deserialize)]
struct RawStats {
    mean: f64,
}

impl QualityReport {
    /// Read a report; the error says what is wrong with it, in words.
    pub fn parse(bytes: &[u8]) -> Result<QualityReport, String> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(format!("it is larger than {} kB", MAX_REPORT_BYTES / 1024));
        }
        let raw: RawReport = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                format!("it is not a clipdino verify report ({e})")
            }
            _ => format!("it is not JSON ({e})"),
        })?;
        if raw.reference.compute != ComputePath::F32 {
            return Err("its reference is not the full-precision (f32) model".into());
        }
        if raw.photos.is_empty() || raw.labels.is_empty() || raw.presets.is_empty() {
            return Err("it names no photos, labels or resolutions".into());
        }
        let mut candidates = Vec::new();
        for c in raw.candidates {
            let o = &c.overall;
            if !(0.0..=100.0).contains(&o.agreement)
                || !(-1.0..=1.0 + 1e-6).contains(&o.dense_cosine.mean)
                || !(-1.0..=1.0 + 1e-6).contains(&c.text_cosine.mean)
            {
                return Err(format!(
                    "its figures for {} are out of range",
                    c.file.chars().take(60).collect::<String>()
                ));
            }
            candidates.push(Verified {
                file: c.file,
                compute: c.compute,
                bytes: c.bytes,
                agreement: o.agreement,
                dense_cosine: o.dense_cosine.mean,
                text_cosine: c.text_cosine.mean,
            });
        }
        let presets = raw
            .presets
            .iter()
            .map(|p| match (&p.window, p.short_side) {
                (Some(w), _) => format!("{} px windows", w.size),
                (None, Some(s)) => format!("short side {s}"),
                (None, None) => "full size".into(),
            })
            .collect();
        Ok(QualityReport {
            photos: raw.photos.len(),
            labels: raw.labels.len(),
            presets,
            candidates,
        })
    }

    /// The measurement of `file` on `compute`, if the report has one.
    pub fn find(&self, file: &str, compute: ComputePath) -> Option<&Verified> {
        self.candidates
            .iter()
            .find(|c| c.file == file && c.compute == compute)
    }

    /// The size of `file` as the report measured it.
    pub fn bytes_of(&self, file: &str) -> Option<u64> {
        self.candidates
            .iter()
            .find(|c| c.file == file)
            .map(|c| c.bytes)
    }
}

/// `x` cut (not rounded) to one decimal: a figure is never shown better than measured.
pub fn percent_down(x: f64) -> String {
    format!("{:.1}", (x * 10.0).floor() / 10.0)
}

fn compute_name(c: ComputePath) -> &'static str {
    match c {
        ComputePath::F32 => "f32",
        ComputePath::Quantized => "quantized",
        ComputePath::Int => "integer",
    }
}

impl State {
    /// The fidelity line for the model in use: only for this site's own bundles (weights a
    /// link or the user names get none).
    pub fn quality_line(&self) -> Option<QualityLine> {
        let model = self.model.as_ref()?;
        let set = self.model_set.as_ref()?;
        let precision = set.site_bundle?;
        let file = precision.file_name();
        let compute = set.compute.unwrap_or(APP_COMPUTE);
        match &self.site_quality {
            SiteQuality::Unknown => None,
            SiteQuality::Absent => Some(QualityLine::NotVerified(
                "Fidelity not verified: this site publishes no quality report for its bundles."
                    .into(),
            )),
            SiteQuality::Malformed(why) => Some(QualityLine::NotVerified(format!(
                "This site's quality report (models/quality.json) could not be read: {why}. The bundle's fidelity is not verified."
            ))),
            SiteQuality::Report(r) => Some(match r.find(&file, compute) {
                Some(v) if v.bytes == model.bytes => QualityLine::Verified {
                    text: format!(
                        "Label agreement with the full-precision model: {} % of pixels on {} test photo{}, verified when this site was published.",
                        percent_down(v.agreement),
                        r.photos,
                        if r.photos == 1 { "" } else { "s" }
                    ),
                    detail: format!(
                        "clipdino verify of {file} ({} compute) against the upstream weights in f32: {} labels, {}; dense-feature cosine {:.4}, label-embedding cosine {:.4} (means).",
                        compute_name(compute),
                        r.labels,
                        r.presets.join(" and "),
                        v.dense_cosine,
                        v.text_cosine
                    ),
                },
                Some(v) => QualityLine::NotVerified(format!(
                    "Fidelity not verified: the loaded {file} has {} bytes, the one the site's quality report measured {}.",
                    model.bytes, v.bytes
                )),
                None => QualityLine::NotVerified(format!(
                    "Fidelity not verified: the site's quality report does not cover {file} on {} compute.",
                    compute_name(compute)
                )),
            }),
        }
    }

    /// The precision setting's choices with their download sizes (when known), or `None`
    /// when there is nothing to choose: weights named by a link, or a site without a
    /// high-precision bundle in its report (unless it is the current choice, so that the user
    /// can switch back).
    pub fn precision_choices(&self) -> Option<Vec<(Precision, Option<u64>)>> {
        if self.weights_source != super::WeightsSource::Default {
            return None;
        }
        let report = match &self.site_quality {
            SiteQuality::Report(r) => Some(r),
            _ => None,
        };
        let offered = report.is_some_and(|r| r.bytes_of(&Precision::High.file_name()).is_some());
        if !offered && self.settings.precision == Precision::Standard {
            return None;
        }
        let loaded = |p: Precision| {
            let set = self.model_set.as_ref()?;
            (set.site_bundle == Some(p))
                .then(|| self.model.as_ref().map(|m| m.bytes))
                .flatten()
        };
        Some(
            Precision::ALL
                .into_iter()
                .map(|p| {
                    let size = report
                        .and_then(|r| r.bytes_of(&p.file_name()))
                        .or_else(|| loaded(p));
                    (p, size)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;
    use crate::protocol::{ModelInfo, Response, WeightSet};

    /// The shape `clipdino verify --json` writes (trimmed to one photo and two candidates).
    const REPORT: &str = r#"{
      "tool": "clipdino verify",
      "reference": {"files": ["open_clip_model.safetensors"], "compute": "f32"},
      "photos": [{"name": "chelsea.jpg", "width": 451, "height": 300},
                 {"name": "china.jpg", "width": 427, "height": 640},
                 {"name": "flower.jpg", "width": 640, "height": 427}],
      "presets": [{"name": "balanced", "short_side": 336, "window": null},
                  {"name": "paper", "short_side": 448, "window": {"size": 448, "stride": 224}}],
      "labels": ["a","b","c","d","e","f","g","h","i","background"],
      "candidates": [
        {"file": "clip-dinoiser.gguf", "bytes": 1000, "recipe": "q8_0", "compute": "int",
         "text_cosine": {"mean": 0.99941, "min": 0.999, "p01": 0.999},
         "overall": {"dense_cosine": {"mean": 0.99731, "min": 0.9, "p01": 0.99}, "agreement": 97.2649,
                     "pixels": 100}},
        {"file": "clip-dinoiser-f16.gguf", "bytes": 2000, "recipe": "f16", "compute": "f32",
         "text_cosine": {"mean": 0.99999, "min": 0.999, "p01": 0.999},
         "overall": {"dense_cosine": {"mean": 0.99998, "min": 0.99, "p01": 0.99}, "agreement": 99.999,
                     "pixels": 100}}
      ],
      "pass": true
    }"#;

    fn info(bytes: u64) -> ModelInfo {
        ModelInfo::for_tests(&[], bytes)
    }

    /// A page that asked for `sets` (load 1) and got `files` of `bytes`.
    fn loaded(sets: Vec<WeightSet>, files: &[&str], bytes: u64) -> State {
        let mut s = State::default();
        s.apply(Action::UrlsRequested(1, sets));
        let mut i = info(bytes);
        i.files = files.iter().map(|f| f.to_string()).collect();
        s.apply(Action::Worker(Response::Loaded { id: 1, info: i }, vec![]));
        s
    }

    fn site(p: Precision) -> State {
        let (sets, _) = WeightsSource::Default.candidates(p, |u| format!("http://h/{u}"));
        let file = p.file_name();
        let bytes = if p == Precision::High { 2000 } else { 1000 };
        loaded(sets, &[file.as_str()], bytes)
    }

    fn report() -> SiteQuality {
        SiteQuality::Report(QualityReport::parse(REPORT.as_bytes()).unwrap())
    }

    #[test]
    fn reads_the_verify_report() {
        let r = QualityReport::parse(REPORT.as_bytes()).unwrap();
        assert_eq!((r.photos, r.labels), (3, 10));
        assert_eq!(r.presets, ["short side 336", "448 px windows"]);
        let v = r.find("clip-dinoiser.gguf", ComputePath::Int).unwrap();
        assert_eq!((v.bytes, v.agreement), (1000, 97.2649));
        assert!(r.find("clip-dinoiser.gguf", ComputePath::F32).is_none());
        assert_eq!(r.bytes_of("clip-dinoiser-f16.gguf"), Some(2000));
    }

    #[test]
    fn the_default_bundle_states_its_measured_agreement() {
        let mut s = site(Precision::Standard);
        assert_eq!(s.quality_line(), None, "nothing before the report is read");
        s.apply(Action::SiteQuality(report()));
        let Some(QualityLine::Verified { text, detail }) = s.quality_line() else {
            panic!("{:?}", s.quality_line())
        };
        assert_eq!(
            text,
            "Label agreement with the full-precision model: 97.2 % of pixels on 3 test photos, verified when this site was published."
        );
        assert!(
            detail.contains("clip-dinoiser.gguf (integer compute)"),
            "{detail}"
        );
        assert!(
            detail.contains("10 labels, short side 336 and 448 px windows"),
            "{detail}"
        );
        assert!(detail.contains("cosine 0.9973"), "{detail}");
        // Never rounded up to a perfect score.
        let mut s = site(Precision::High);
        s.apply(Action::SiteQuality(report()));
        let Some(QualityLine::Verified { text, .. }) = s.quality_line() else {
            panic!()
        };
        assert!(text.contains(": 99.9 % of pixels"), "{text}");
    }

    #[test]
    fn no_claim_without_a_matching_measurement() {
        // No report on the site.
        let mut s = site(Precision::Standard);
        s.apply(Action::SiteQuality(SiteQuality::Absent));
        assert!(
            matches!(s.quality_line(), Some(QualityLine::NotVerified(t)) if t.contains("no quality report"))
        );
        // A report that does not measure the bundle on the path it runs on.
        let mut r = QualityReport::parse(REPORT.as_bytes()).unwrap();
        r.candidates[0].compute = ComputePath::F32;
        s.apply(Action::SiteQuality(SiteQuality::Report(r)));
        assert!(
            matches!(s.quality_line(), Some(QualityLine::NotVerified(t)) if t.contains("does not cover clip-dinoiser.gguf on integer compute"))
        );
        // Another file under the same name (an old copy in the browser cache).
        let mut s = loaded(
            WeightsSource::Default
                .candidates(Precision::Standard, |u| u.to_string())
                .0,
            &["clip-dinoiser.gguf"],
            999,
        );
        s.apply(Action::SiteQuality(report()));
        assert!(
            matches!(s.quality_line(), Some(QualityLine::NotVerified(t)) if t.contains("999 bytes"))
        );
        // A bundle a link names, even with the site's file name: no claim at all.
        let (sets, _) = WeightsSource::Bundle("models/clip-dinoiser.gguf".into())
            .candidates(Precision::Standard, |u| u.to_string());
        let mut s = loaded(sets, &["clip-dinoiser.gguf"], 1000);
        s.apply(Action::SiteQuality(report()));
        assert_eq!(s.quality_line(), None);
        // The hub files the default falls back to: none either.
        let (sets, _) = WeightsSource::Default.candidates(Precision::Standard, |u| u.to_string());
        let hub = sets.last().unwrap();
        let names: Vec<String> = hub.files.iter().map(|f| f.name.clone()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut s = loaded(sets.clone(), &names, 1000);
        s.apply(Action::SiteQuality(report()));
        assert_eq!(s.quality_line(), None);
        // Local files picked by the user (a load that named no URLs).
        let mut s = site(Precision::Standard);
        s.apply(Action::SiteQuality(report()));
        s.apply(Action::WeightsRequested(2));
        let mut i = info(1000);
        i.files = vec!["clip-dinoiser.gguf".into()];
        s.apply(Action::Worker(Response::Loaded { id: 2, info: i }, vec![]));
        assert_eq!(s.quality_line(), None);
    }

    #[test]
    fn a_malformed_report_is_a_message() {
        for (text, why) in [
            ("<html>not found</html>", "not JSON"),
            ("{\"candidates\": 3}", "not a clipdino verify report"),
            (
                &REPORT.replace("\"compute\": \"f32\"}", "\"compute\": \"int\"}"),
                "not the full-precision",
            ),
            (&REPORT.replace("97.2649", "197.2"), "out of range"),
            (&" ".repeat(MAX_REPORT_BYTES + 1), "larger than"),
        ] {
            let e = QualityReport::parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{e}");
            let mut s = site(Precision::Standard);
            s.apply(Action::SiteQuality(SiteQuality::Malformed(e.clone())));
            let Some(QualityLine::NotVerified(line)) = s.quality_line() else {
                panic!()
            };
            assert!(line.contains(&e) && line.contains("not verified"), "{line}");
        }
    }

    #[test]
    fn precision_choices_come_from_the_report() {
        let mut s = State::default();
        assert_eq!(s.precision_choices(), None, "no report: nothing to choose");
        s.apply(Action::SiteQuality(report()));
        assert_eq!(
            s.precision_choices(),
            Some(vec![
                (Precision::Standard, Some(1000)),
                (Precision::High, Some(2000))
            ])
        );
        // A report without the high-precision bundle offers nothing.
        let mut r = QualityReport::parse(REPORT.as_bytes()).unwrap();
        r.candidates.truncate(1);
        s.apply(Action::SiteQuality(SiteQuality::Report(r)));
        assert_eq!(s.precision_choices(), None);
        // ... unless a link chose it: the sizes then come from what was loaded.
        let mut s = site(Precision::Standard);
        s.apply(Action::SetPrecision(Precision::High));
        s.apply(Action::SiteQuality(SiteQuality::Absent));
        assert_eq!(
            s.precision_choices(),
            Some(vec![
                (Precision::Standard, Some(1000)),
                (Precision::High, None)
            ])
        );
        // Weights named by a link: no choice.
        s.weights_source = WeightsSource::Bundle("x.gguf".into());
        assert_eq!(s.precision_choices(), None);
    }
}

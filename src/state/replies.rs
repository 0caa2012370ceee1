//! Worker replies into the state: every reply names the request it answers, and replies to
//! superseded requests (progress, results, errors alike) are dropped.

use std::rc::Rc;

use super::{Area, EncodeInfo, KMeansView, Kind, LoadPhase, SegView, SiteQuality, State};
use crate::protocol::{ErrorContext, RequestId, Response, Side, Stage};

impl State {
    fn work_is(&self, stage: Stage) -> bool {
        self.work.as_ref().is_some_and(|w| w.stage == stage)
    }

    /// Apply a worker reply. `payloads[i]` holds attachment `Att(i)`.
    pub(super) fn on_response(&mut self, msg: Response, payloads: &[Rc<Vec<u8>>]) {
        let payload = |att: crate::protocol::Att| payloads.get(att.0).cloned();
        match msg {
            Response::Ready => self.worker_ready = true,
            Response::SiteFile { file, .. } => self.site_quality = SiteQuality::from_file(file),
            Response::Panicked { message } => self.life.last_words = Some(message),
            Response::Threads { info, .. } => self.threads = Some(info),
            Response::Compute { info, .. } => {
                let newly =
                    info.needs_weights && !self.compute.as_ref().is_some_and(|c| c.needs_weights);
                if newly {
                    self.weights_reloads += 1;
                }
                self.compute = Some(info);
            }
            Response::Progress { id, progress } => match self.kind_of(id) {
                Some(Kind::Load) => self.load = LoadPhase::Active { id, progress },
                Some(_) => self.work = Some(progress),
                None => {}
            },
            Response::NeedsConfirmation {
                id,
                set,
                total_bytes,
                notes,
            } => {
                if self.is_latest(Kind::Load, id) {
                    self.load = LoadPhase::Offer {
                        set,
                        total_bytes,
                        notes,
                    };
                }
            }
            Response::Loaded { id, info } => {
                if self.is_latest(Kind::Load, id) {
                    self.load = LoadPhase::Idle;
                    // The set the worker chose: the one whose files these are.
                    self.model_set = self
                        .asked
                        .as_ref()
                        .filter(|(asked, _)| *asked == id)
                        .and_then(|(_, sets)| {
                            sets.iter()
                                .find(|s| s.files.iter().map(|f| &f.name).eq(info.files.iter()))
                        })
                        .cloned();
                    self.model = Some(info);
                    self.loaded_id = Some(id);
                    // A model built while a GPU is ready keeps its image-tower weights.
                    if let Some(c) = &mut self.compute {
                        c.needs_weights = false;
                    }
                    self.model_generation += 1;
                    self.encoded = None;
                    self.segmentation = None;
                    self.compare_segmentation = None;
                    self.kmeans = None;
                    // After a crash the same weights come back: the message about it stays.
                    if !std::mem::take(&mut self.life.recovering) {
                        self.clear_notice(Area::Weights);
                        self.clear_notice(Area::Result);
                    }
                    // The chosen precision's bundle failed and the worker fell back.
                    if let Some(why) = self.precision_follows_model() {
                        self.set_notice(Area::Weights, why, false);
                    }
                }
            }
            Response::ImageDecoded { id, width, height } => {
                if self.is_latest(Kind::Image, id) {
                    if let Some(mut p) = self.pending_photo.take() {
                        if p.id == id {
                            p.size = Some((width, height));
                            let old = self.photo.replace(p);
                            self.photo_replaced(old);
                            self.segmentation = None;
                            self.compare_segmentation = None;
                            self.kmeans = None;
                            self.encoded = None;
                            self.work = None;
                            self.clear_notice_for_result(Area::Photo);
                        } else {
                            self.pending_photo = Some(p);
                        }
                    }
                }
            }
            Response::ImageEncoded {
                id,
                resolution,
                encodes,
                grid,
                windows,
                millis,
                gpu,
                fallback,
            } => {
                self.encodes = self.encodes.max(encodes);
                if self.photo.as_ref().is_some_and(|p| p.id == id) {
                    self.encoded = Some(EncodeInfo {
                        resolution,
                        grid,
                        windows,
                        millis,
                        gpu,
                        fallback,
                    });
                }
                if self.work_is(Stage::Encode) {
                    self.work = None;
                }
            }
            Response::Segmentation {
                id,
                width,
                height,
                labels,
                label_map,
                confidence,
                areas,
                side,
                mode,
                refine,
                mode_millis,
                segment_millis,
                mode_blocks,
                encodes,
                label_embeds,
                label_loads,
                millis,
                warnings,
            } => {
                self.encodes = self.encodes.max(encodes);
                self.mode_blocks = self.mode_blocks.max(mode_blocks);
                self.label_embeds = self.label_embeds.max(label_embeds);
                self.label_loads = self.label_loads.max(label_loads);
                // The compare view may have been closed while its request was out.
                if !self.is_latest(Kind::segment(side), id) || self.settings.method(side).is_none()
                {
                    return;
                }
                self.work = None;
                let n = width as usize * height as usize;
                match (payload(label_map), payload(confidence)) {
                    (Some(m), Some(c))
                        if m.len() == n && c.len() == n && areas.len() == labels.len() =>
                    {
                        let colours = self.colours_for(&labels);
                        let view = Some(Rc::new(SegView {
                            id,
                            width,
                            height,
                            labels,
                            colours,
                            label_map: m,
                            confidence: c,
                            areas,
                            millis,
                            mode,
                            refine,
                            mode_millis,
                            segment_millis,
                        }));
                        match side {
                            Side::Primary => self.segmentation = view,
                            Side::Compare => self.compare_segmentation = view,
                        }
                        if warnings.is_empty() {
                            self.clear_notice_for_result(Area::Result);
                        } else {
                            self.set_notice(Area::Result, warnings.join(" "), false);
                        }
                    }
                    _ => self.set_notice(
                        Area::Result,
                        format!("The worker sent a malformed segmentation ({width}×{height})."),
                        true,
                    ),
                }
            }
            Response::KMeans {
                id,
                k,
                width,
                height,
                raw,
                refined,
                mode,
                encodes,
                millis,
            } => {
                self.encodes = self.encodes.max(encodes);
                if !self.is_latest(Kind::KMeans, id) {
                    return;
                }
                if self.work_is(Stage::KMeans) {
                    self.work = None;
                }
                let n = width as usize * height as usize;
                let raw = payload(raw).filter(|r| r.len() == n);
                let refined = refined.map(|a| payload(a).filter(|r| r.len() == n));
                match (raw, refined) {
                    (Some(raw), None) => {
                        self.kmeans = Some(Rc::new(KMeansView {
                            id,
                            k,
                            width,
                            height,
                            raw,
                            refined: None,
                            mode,
                            millis,
                        }))
                    }
                    (Some(raw), Some(Some(r))) => {
                        self.kmeans = Some(Rc::new(KMeansView {
                            id,
                            k,
                            width,
                            height,
                            raw,
                            refined: Some(r),
                            mode,
                            millis,
                        }))
                    }
                    _ => self.set_notice(
                        Area::Result,
                        "The worker sent a malformed k-means result.",
                        true,
                    ),
                }
            }
            Response::Error {
                id,
                context,
                message,
            } => self.on_error(id, context, message),
        }
    }

    fn on_error(&mut self, id: Option<RequestId>, context: ErrorContext, message: String) {
        // Errors for superseded requests are as stale as their results.
        if let Some(id) = id {
            if self.kind_of(id).is_none() {
                return;
            }
        }
        match context {
            ErrorContext::Weights => {
                self.load = LoadPhase::Idle;
                let message = match self.precision_follows_model() {
                    Some(why) => format!("{message} {why}"),
                    None => message,
                };
                self.set_notice(Area::Weights, message, true);
            }
            ErrorContext::Image => {
                if id.is_some() && self.pending_photo.as_ref().map(|p| p.id) == id {
                    let p = self.pending_photo.take();
                    self.photo_replaced(p);
                }
                self.work = None;
                self.set_notice(Area::Photo, message, true);
            }
            ErrorContext::Labels => {
                self.work = None;
                self.set_notice(Area::Labels, message, true);
            }
            ErrorContext::Segment | ErrorContext::KMeans => {
                self.work = None;
                self.set_notice(Area::Result, message, true);
            }
            ErrorContext::Worker => {
                self.work = None;
                if matches!(
                    self.load,
                    LoadPhase::Active { .. } | LoadPhase::Checking { .. }
                ) {
                    self.load = LoadPhase::Idle;
                }
                self.set_notice(Area::Result, message, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::*;
    use crate::protocol::{Att, ErrorContext, Progress, Response, Stage};

    #[test]
    fn replies_to_superseded_requests_are_dropped() {
        let mut s = with_labels("cat,dog");
        s.apply(Action::Sent(Kind::Segment, 5));
        s.apply(Action::Sent(Kind::Segment, 7));
        let (old, p) = seg_response(5, &["cat"], 2, 2);
        s.apply(Action::Worker(old, p));
        assert!(s.segmentation.is_none());
        let (new, p) = seg_response(7, &["cat", "dog"], 3, 2);
        s.apply(Action::Worker(new, p));
        let seg = s.segmentation.clone().unwrap();
        assert_eq!((seg.width, seg.height, seg.labels.len()), (3, 2, 2));
        assert_eq!(
            seg.colours,
            vec![s.labels[0].colour(), s.labels[1].colour()]
        );
        // Stale progress and errors are ignored too.
        s.apply(Action::Worker(
            Response::Error {
                id: Some(5),
                context: ErrorContext::Segment,
                message: "old".into(),
            },
            vec![],
        ));
        assert!(s.notice(Area::Result).is_none());
        s.apply(Action::Worker(
            Response::Error {
                id: Some(7),
                context: ErrorContext::Segment,
                message: "boom".into(),
            },
            vec![],
        ));
        assert_eq!(s.notice(Area::Result).unwrap().text, "boom");
    }

    #[test]
    fn malformed_segmentation_is_reported_not_shown() {
        let mut s = with_labels("cat");
        s.apply(Action::Sent(Kind::Segment, 1));
        let (r, mut p) = seg_response(1, &["cat"], 2, 2);
        p[0] = Rc::new(vec![0; 3]);
        s.apply(Action::Worker(r, p));
        assert!(s.segmentation.is_none());
        assert!(s.notice(Area::Result).unwrap().text.contains("malformed"));
    }

    #[test]
    fn photo_lifecycle() {
        let mut s = State::default();
        s.apply(Action::PhotoRequested(photo(3, "blob:a")));
        assert!(s.photo.is_none() && s.pending_photo.is_some());
        s.apply(Action::Worker(
            Response::ImageDecoded {
                id: 3,
                width: 640,
                height: 480,
            },
            vec![],
        ));
        assert_eq!(s.photo.as_ref().unwrap().size, Some((640, 480)));
        // A corrupt file: message, the previous photo stays, its blob URL is freed.
        s.apply(Action::PhotoRequested(photo(4, "blob:b")));
        s.apply(Action::Worker(
            Response::Error {
                id: Some(4),
                context: ErrorContext::Image,
                message: "not an image".into(),
            },
            vec![],
        ));
        assert_eq!(s.photo.as_ref().unwrap().id, 3);
        assert!(s.pending_photo.is_none());
        assert_eq!(s.notice(Area::Photo).unwrap().text, "not an image");
        assert_eq!(s.stale_urls, ["blob:b"]);
        // A good one replaces the first.
        s.apply(Action::PhotoRequested(photo(6, "blob:c")));
        assert!(s.notice(Area::Photo).is_none());
        s.apply(Action::Worker(
            Response::ImageDecoded {
                id: 6,
                width: 1,
                height: 1,
            },
            vec![],
        ));
        assert_eq!(s.photo.as_ref().unwrap().preview_url, "blob:c");
        assert_eq!(s.stale_urls, ["blob:b", "blob:a"]);
        s.apply(Action::UrlsRevoked(2));
        assert!(s.stale_urls.is_empty());
        // A decode reply for a superseded photo does nothing.
        s.apply(Action::PhotoRequested(photo(8, "blob:d")));
        s.apply(Action::Worker(
            Response::ImageDecoded {
                id: 6,
                width: 9,
                height: 9,
            },
            vec![],
        ));
        assert_eq!(s.photo.as_ref().unwrap().size, Some((1, 1)));
    }

    #[test]
    fn weights_lifecycle_and_progress_routing() {
        let mut s = State::default();
        s.apply(Action::Worker(Response::Ready, vec![]));
        assert!(s.worker_ready);
        s.apply(Action::WeightsRequested(1));
        s.apply(Action::Sent(Kind::Image, 2));
        let download = Progress {
            stage: Stage::Download,
            item: Some("a.gguf".into()),
            done: 50,
            total: Some(100),
            from_cache: true,
        };
        s.apply(Action::Worker(
            Response::Progress {
                id: 1,
                progress: download.clone(),
            },
            vec![],
        ));
        assert_eq!(
            s.load,
            LoadPhase::Active {
                id: 1,
                progress: download
            }
        );
        let encode = |done| Progress {
            done,
            total: Some(12),
            ..Progress::started(Stage::Encode)
        };
        s.apply(Action::Worker(
            Response::Progress {
                id: 2,
                progress: encode(3),
            },
            vec![],
        ));
        assert_eq!(s.work.as_ref().unwrap().done, 3);
        s.apply(Action::Worker(
            Response::Progress {
                id: 99,
                progress: encode(11),
            },
            vec![],
        ));
        assert_eq!(s.work.as_ref().unwrap().done, 3, "unknown ids are ignored");
        let info = ModelInfo {
            from_cache: true,
            ..ModelInfo::for_tests(&["a.gguf"], 100)
        };
        s.apply(Action::Worker(
            Response::Loaded {
                id: 1,
                info: info.clone(),
            },
            vec![],
        ));
        assert_eq!(s.model.as_ref(), Some(&info));
        assert_eq!(s.model_generation, 1);
        assert_eq!(s.load, LoadPhase::Idle);
        // A failing second load keeps the first model and says why.
        s.apply(Action::WeightsRequested(3));
        s.apply(Action::Worker(
            Response::Error {
                id: Some(3),
                context: ErrorContext::Weights,
                message: "truncated".into(),
            },
            vec![],
        ));
        assert!(s.model.is_some());
        assert_eq!(s.notice(Area::Weights).unwrap().text, "truncated");
        assert_eq!(s.load, LoadPhase::Idle);
    }

    #[test]
    fn kmeans_reply_checks_sizes() {
        let mut s = State::default();
        s.apply(Action::Sent(Kind::KMeans, 4));
        let ok = Response::KMeans {
            id: 4,
            k: 3,
            width: 2,
            height: 2,
            raw: Att(0),
            refined: Some(Att(1)),
            mode: Mode::Dinoiser,
            encodes: 2,
            millis: 1.0,
        };
        s.apply(Action::Worker(
            ok.clone(),
            vec![Rc::new(vec![0, 1, 2, 0]), Rc::new(vec![0, 1, 1, 2])],
        ));
        let km = s.kmeans.clone().unwrap();
        assert_eq!(
            (km.k, km.raw.len(), km.refined.as_ref().unwrap()[3]),
            (3, 4, 2)
        );
        assert_eq!(s.encodes, 2);
        s.kmeans = None;
        s.apply(Action::Worker(
            ok,
            vec![Rc::new(vec![0, 1, 2, 0]), Rc::new(vec![0])],
        ));
        assert!(s.kmeans.is_none());
        assert!(s.notice(Area::Result).unwrap().error);
    }
}

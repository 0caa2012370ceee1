//! The model worker's life as the state sees it: a death (panic, abort, out of memory, a worker
//! that stops answering) becomes a message where the user acted, the spinners stop, and a fresh
//! worker is asked for with the requests that rebuild what the user had — the loaded weights
//! and the photo — unless the worker keeps dying ([`MAX_DEATHS`] within [`DEATH_WINDOW_MS`]),
//! then it says so and waits for a retry. The request the worker was running when it died is
//! not sent again: it may be what killed it.
//!
//! The side effects (terminating, starting, re-sending) are [`crate::bridge`]'s; it is told to
//! by [`WorkerLife::restarts`] and [`WorkerLife::replay`].

use super::{Area, Kind, LoadPhase, State};
use crate::protocol::{RequestId, Stage};

/// Deaths counted for the restart-loop guard: those within this many milliseconds.
pub const DEATH_WINDOW_MS: f64 = 120_000.0;
/// This many deaths within [`DEATH_WINDOW_MS`]: no automatic restart.
pub const MAX_DEATHS: usize = 3;
/// A worker that is computing and has said nothing for this long counts as dead. Every long
/// step reports progress far more often (a transformer block, a label, a download chunk).
pub const SILENCE_LIMIT_MS: f64 = 120_000.0;

#[derive(Clone, Debug, PartialEq, Default)]
pub struct WorkerLife {
    /// When the worker died (ms), within the guard's window.
    deaths: Vec<f64>,
    /// Increases with every fresh worker the bridge must start.
    pub restarts: u64,
    /// Requests the fresh worker gets again (weights first, then the photo), by id.
    pub replay: Vec<RequestId>,
    /// The worker's last words (its panic message), shown instead of the bare error event.
    pub(super) last_words: Option<String>,
    /// Too many deaths: no automatic restart until the user asks (the notice in this area has
    /// a button).
    pub gave_up: Option<Area>,
    /// A fresh worker is rebuilding the user's model: its `Loaded` must not clear the message.
    pub(super) recovering: bool,
    /// The area showing the message about the last death. The fresh worker's results (the
    /// photo decoded again, the overlay back) do not clear it; the user does (dismissing it,
    /// or acting there again), or a newer message in that area replaces it.
    pub(super) message: Option<Area>,
}

/// The user-facing reason for a death, from the error event text (a wasm trap in the worker
/// reaches the page as `RuntimeError: unreachable`, which is what an allocation failure —
/// the worker out of memory — or an abort looks like).
pub fn death_reason(cause: &str) -> String {
    let cause = cause.trim();
    let c = cause.to_ascii_lowercase();
    if c.contains("unreachable") || c.contains("out of memory") || c.contains("memory access") {
        format!(
            "it ran out of memory or aborted ({cause}); a smaller photo, a lower resolution or \
             fewer labels may help"
        )
    } else if c.starts_with("no reply") {
        format!("it stopped answering ({cause})")
    } else if cause.is_empty() {
        "it stopped without a message".into()
    } else {
        format!("it failed ({cause})")
    }
}

impl State {
    /// The worker is computing (not waiting for the network), so its silence means trouble.
    pub fn worker_computing(&self) -> bool {
        self.work.is_some()
            || matches!(&self.load, LoadPhase::Active { progress, .. } if progress.stage == Stage::Build)
    }

    /// Where the user acted last, judged by what was in progress.
    fn acting_area(&self) -> Area {
        if matches!(
            self.load,
            LoadPhase::Checking { .. } | LoadPhase::Active { .. }
        ) {
            return Area::Weights;
        }
        match self.work.as_ref().map(|w| w.stage) {
            Some(Stage::Decode) => Area::Photo,
            Some(Stage::Embed) => Area::Labels,
            _ => Area::Result,
        }
    }

    /// The worker died (`cause`: the error event's text) at `at_ms`.
    pub(super) fn worker_died(&mut self, at_ms: f64, cause: &str) {
        let reason = self
            .life
            .last_words
            .take()
            .unwrap_or_else(|| format!("The model worker stopped: {}.", death_reason(cause)));
        let area = self.acting_area();
        // What it was doing is dropped; what the user had is kept for the fresh worker.
        if matches!(
            self.load,
            LoadPhase::Checking { .. } | LoadPhase::Active { .. }
        ) {
            self.latest.load = self.loaded_id.unwrap_or(0);
        }
        self.load = LoadPhase::Idle;
        if self.work.as_ref().is_some_and(|w| w.stage == Stage::Decode) {
            if let Some(p) = self.pending_photo.take() {
                self.photo_replaced(Some(p));
            }
            self.latest.image = self.photo.as_ref().map_or(0, |p| p.id);
        }
        self.work = None;
        self.worker_ready = false;
        self.model = None;
        self.encoded = None;

        self.life.deaths.retain(|t| at_ms - t < DEATH_WINDOW_MS);
        self.life.deaths.push(at_ms);
        self.life.replay = self.loaded_id.into_iter().collect();
        self.life.replay.extend(
            self.pending_photo
                .as_ref()
                .or(self.photo.as_ref())
                .map(|p| p.id),
        );
        if self.life.deaths.len() >= MAX_DEATHS {
            self.life.gave_up = Some(area);
            self.life.recovering = false;
            self.set_notice(
                area,
                format!(
                    "{reason} It stopped {} times within {} minutes, so it was not started \
                     again. Your photo, labels and settings are kept.",
                    self.life.deaths.len(),
                    DEATH_WINDOW_MS / 60_000.0
                ),
                true,
            );
            self.life.message = Some(area);
        } else {
            self.restart_worker();
            let what = if self.life.replay.is_empty() {
                ""
            } else {
                " with the same weights and photo"
            };
            self.set_notice(
                area,
                format!(
                    "{reason} A fresh worker was started{what}; your labels and settings are kept."
                ),
                true,
            );
            self.life.message = Some(area);
        }
    }

    fn restart_worker(&mut self) {
        self.life.gave_up = None;
        self.life.restarts += 1;
        self.life.recovering = self.loaded_id.is_some();
        if let Some(id) = self.loaded_id {
            self.latest.load = id;
            self.load = LoadPhase::Checking { id };
        }
    }

    /// The user asked for a fresh worker after the guard gave up.
    pub(super) fn retry_worker(&mut self) {
        let Some(area) = self.life.gave_up else {
            return;
        };
        self.life.deaths.clear();
        self.clear_notice(area);
        self.restart_worker();
    }

    /// Which kind of request `id` was, if it is one the fresh worker gets again.
    pub fn replay_kind(&self, id: RequestId) -> Option<Kind> {
        if Some(id) == self.loaded_id {
            Some(Kind::Load)
        } else if self.life.replay.contains(&id) {
            Some(Kind::Image)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::*;
    use super::*;
    use crate::protocol::{ErrorContext, ModelInfo, Progress, Response};

    fn info() -> ModelInfo {
        ModelInfo::for_tests(&["a.gguf"], 100)
    }

    /// A page with a model (load 1), a decoded photo (image 2) and a label, encoding.
    fn busy_page() -> State {
        let mut s = with_labels("cat");
        s.apply(Action::Worker(Response::Ready, vec![]));
        s.apply(Action::WeightsRequested(1));
        s.apply(Action::Worker(
            Response::Loaded {
                id: 1,
                info: info(),
            },
            vec![],
        ));
        s.apply(Action::PhotoRequested(photo(2, "blob:a")));
        s.apply(Action::Worker(
            Response::ImageDecoded {
                id: 2,
                width: 8,
                height: 8,
            },
            vec![],
        ));
        s.apply(Action::Worker(
            Response::Progress {
                id: 2,
                progress: Progress {
                    done: 3,
                    total: Some(12),
                    ..Progress::started(Stage::Encode)
                },
            },
            vec![],
        ));
        s
    }

    #[test]
    fn a_death_mid_encode_stops_spinners_and_restarts_with_weights_and_photo() {
        let mut s = busy_page();
        assert!(s.worker_computing());
        s.apply(Action::WorkerDied {
            at_ms: 1000.0,
            cause: "Uncaught RuntimeError: unreachable".into(),
        });
        assert!(s.work.is_none() && !s.worker_ready && s.model.is_none());
        assert_eq!(s.life.restarts, 1);
        assert_eq!(s.life.replay, [1, 2], "weights first, then the photo");
        assert_eq!(s.replay_kind(1), Some(Kind::Load));
        assert_eq!(s.replay_kind(2), Some(Kind::Image));
        assert_eq!(s.load, LoadPhase::Checking { id: 1 });
        let n = s.notice(Area::Result).expect("shown at the overlay");
        assert!(
            n.error && n.text.contains("ran out of memory"),
            "{}",
            n.text
        );
        assert!(n.text.contains("A fresh worker was started"), "{}", n.text);
        assert_eq!(s.label_texts(), ["cat"]);
        assert_eq!(s.photo.as_ref().unwrap().id, 2);
        // The fresh worker answers the replayed requests; the message stays until dismissed.
        s.apply(Action::Worker(Response::Ready, vec![]));
        s.apply(Action::Worker(
            Response::Loaded {
                id: 1,
                info: info(),
            },
            vec![],
        ));
        assert!(s.model.is_some());
        assert_eq!(s.model_generation, 2, "the overlay is requested again");
        assert!(s.notice(Area::Result).is_some());
        // The photo decoded again and the overlay back do not take the message away (the
        // fresh worker answers within a second or two: the user must be able to read it).
        s.apply(Action::Worker(
            Response::ImageDecoded {
                id: 2,
                width: 8,
                height: 8,
            },
            vec![],
        ));
        s.apply(Action::Sent(Kind::Segment, 3));
        let (seg, p) = seg_response(3, &["cat"], 2, 2);
        s.apply(Action::Worker(seg, p));
        assert!(s.segmentation.is_some());
        assert!(s
            .notice(Area::Result)
            .unwrap()
            .text
            .contains("A fresh worker was started"));
        // A later load clears notices as usual.
        s.apply(Action::WeightsRequested(7));
        s.apply(Action::Worker(
            Response::Loaded {
                id: 7,
                info: info(),
            },
            vec![],
        ));
        assert!(s.notice(Area::Result).is_none());
        assert_eq!(s.life.message, None);
        // Without a death message, an overlay clears the area's message as before.
        s.apply(Action::Worker(
            Response::Error {
                id: None,
                context: ErrorContext::Worker,
                message: "x".into(),
            },
            vec![],
        ));
        assert!(s.notice(Area::Result).is_some());
        s.apply(Action::Sent(Kind::Segment, 9));
        let (seg, p) = seg_response(9, &["cat"], 2, 2);
        s.apply(Action::Worker(seg, p));
        assert!(s.notice(Area::Result).is_none());
    }

    #[test]
    fn panic_text_wins_over_the_error_event() {
        let mut s = busy_page();
        s.apply(Action::Worker(
            Response::Panicked {
                message: "The model worker crashed (panicked at x.rs:1: boom).".into(),
            },
            vec![],
        ));
        s.apply(Action::WorkerDied {
            at_ms: 5.0,
            cause: "RuntimeError: unreachable".into(),
        });
        let n = s.notice(Area::Result).unwrap();
        assert!(n
            .text
            .starts_with("The model worker crashed (panicked at x.rs:1: boom)."));
        assert!(!n.text.contains("unreachable"), "{}", n.text);
        // The next death (while the fresh worker reloads the weights: the message goes there)
        // has no last words of its own.
        s.apply(Action::WorkerDied {
            at_ms: 6.0,
            cause: "".into(),
        });
        assert!(s
            .notice(Area::Weights)
            .unwrap()
            .text
            .contains("stopped without a message"));
    }

    #[test]
    fn what_was_running_is_not_sent_again_and_the_message_goes_where_the_user_acted() {
        // A new photo kills it while decoding: dropped with a message at the photo; the
        // previous photo is what the fresh worker gets.
        let mut s = busy_page();
        s.apply(Action::PhotoRequested(photo(5, "blob:b")));
        s.apply(Action::WorkerDied {
            at_ms: 0.0,
            cause: "x".into(),
        });
        assert!(s.pending_photo.is_none());
        assert_eq!(s.stale_urls, ["blob:b"]);
        assert_eq!(s.life.replay, [1, 2]);
        assert!(s
            .notice(Area::Photo)
            .unwrap()
            .text
            .contains("it failed (x)"));
        // New weights kill it while loading: the old ones come back, the message is at the
        // weights.
        let mut s = busy_page();
        s.apply(Action::WeightsRequested(6));
        s.apply(Action::WorkerDied {
            at_ms: 0.0,
            cause: "x".into(),
        });
        assert_eq!(s.life.replay, [1, 2]);
        assert_eq!(s.latest.load, 1);
        assert!(s.notice(Area::Weights).is_some());
        // Labels being embedded: at the labels.
        let mut s = busy_page();
        s.apply(Action::Sent(Kind::Segment, 9));
        s.apply(Action::Worker(
            Response::Progress {
                id: 9,
                progress: Progress::started(Stage::Embed),
            },
            vec![],
        ));
        s.apply(Action::WorkerDied {
            at_ms: 0.0,
            cause: "x".into(),
        });
        assert!(s.notice(Area::Labels).is_some());
        // Nothing loaded yet: nothing to replay, still restarted.
        let mut s = State::default();
        s.apply(Action::WorkerDied {
            at_ms: 0.0,
            cause: "x".into(),
        });
        assert!(s.life.replay.is_empty());
        assert_eq!(s.life.restarts, 1);
        assert_eq!(s.load, LoadPhase::Idle);
    }

    #[test]
    fn restart_loops_are_cut_and_a_retry_starts_again() {
        let mut s = busy_page();
        for (i, t) in [0.0, 50_000.0].into_iter().enumerate() {
            s.apply(Action::WorkerDied {
                at_ms: t,
                cause: "x".into(),
            });
            assert_eq!(s.life.restarts, i as u64 + 1);
            assert_eq!(s.life.gave_up, None);
        }
        // Deaths older than the window are forgotten.
        s.apply(Action::WorkerDied {
            at_ms: 130_000.0,
            cause: "x".into(),
        });
        assert_eq!(s.life.gave_up, None);
        assert_eq!(s.life.restarts, 3);
        s.apply(Action::WorkerDied {
            at_ms: 140_000.0,
            cause: "x".into(),
        });
        assert_eq!(
            s.life.gave_up,
            Some(Area::Weights),
            "three deaths within two minutes"
        );
        assert_eq!(s.life.restarts, 3, "no automatic restart");
        let n = s.notice(Area::Weights).unwrap();
        assert!(n.text.contains("3 times within 2 minutes"), "{}", n.text);
        assert_eq!(s.label_texts(), ["cat"]);
        s.apply(Action::RetryWorker);
        assert_eq!(s.life.gave_up, None);
        assert_eq!(s.life.restarts, 4);
        assert!(s.notice(Area::Weights).is_none());
        s.apply(Action::RetryWorker);
        assert_eq!(s.life.restarts, 4, "only after giving up");
    }

    #[test]
    fn reasons_in_words() {
        assert!(death_reason("Uncaught RuntimeError: unreachable").contains("ran out of memory"));
        assert_eq!(death_reason("  "), "it stopped without a message");
        assert_eq!(death_reason("boom"), "it failed (boom)");
        assert_eq!(
            death_reason("no reply for 121 s while computing"),
            "it stopped answering (no reply for 121 s while computing)"
        );
    }
}

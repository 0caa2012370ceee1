//! What the worker runs next, decided by a plain struct: no `Blob`, no model, no web-sys, so the
//! rules are unit-tested natively like the UI's reducer.
//!
//! The scheduler keeps the *newest* request of each kind, as it arrived (a new photo, label set
//! or k replaces the one waiting; segment requests are kept per [`Slot`]), the decoded photo and
//! the cached image features with the [`FeatureKey`] they were computed for. [`Scheduler::next_job`]
//! picks one job at a time, in this order:
//!
//! 1. decode the newest photo (before anything else: every other request names a photo);
//! 2. per slot, segment — or first encode the photo when the cached features are not those the
//!    request needs (another photo, resolution or model: *stale* features);
//! 3. K-Means, likewise;
//! 4. encode the new photo eagerly at the resolution it was sent with, so that the first label
//!    set finds its features ready.
//!
//! Requests for a photo that is gone (replaced, or whose encode failed) are dropped; a cancelled
//! request never runs; results that went stale while computing (a model swap during an encode)
//! are refused. The job bodies report back with [`Scheduler::decoded`], [`Scheduler::encoded`],
//! [`Scheduler::take_segment`] and [`Scheduler::job_done`]. Loads are not jobs (downloads mostly
//! wait on the network and run beside them), but the newest-wins and cancel rules are the same:
//! [`Scheduler::begin_load`] / [`Scheduler::is_current_load`].
//!
//! The worker stores a `Blob` as the photo request's attachment `A`, the decoded bitmap as the
//! photo `P` and candle features as `F`; the tests use plain values.

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use crate::protocol::{ImageRequest, KMeansRequest, Preset, RequestId, SegmentRequest};

/// Where a segmentation is shown: the page's overlay ([`Slot::MAIN`]) and the compare view's
/// second one ([`Slot::COMPARE`]). Segment requests supersede only the request in their own
/// slot, so two can be pending at once (the same labels in two modes side by side).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(pub u8);

impl Slot {
    pub const MAIN: Slot = Slot(0);
    pub const COMPARE: Slot = Slot(1);
}

/// What cached image features were computed from. Features serve a request only when all of it
/// matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FeatureKey {
    /// The `SetImage` request of the photo.
    pub image: RequestId,
    pub resolution: Preset,
    /// [`Scheduler::model_installed`] generation of the model.
    pub model: u64,
}

/// A load request: current until a newer load is asked for or it is cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadTicket {
    pub id: RequestId,
    generation: u64,
}

/// One unit of work for the job loop.
#[derive(Debug)]
pub enum Job<A, P, F> {
    /// Decode the newest photo request (taken from the queue with its attachment).
    Decode {
        request: ImageRequest,
        attachment: A,
    },
    /// Run the image tower for `key` on `photo`. Errors go to `for_id`, the request waiting
    /// for these features (the photo's own id for an eager encode).
    Encode {
        key: FeatureKey,
        photo: Rc<P>,
        for_id: RequestId,
    },
    /// Embed the labels of `request`, then segment with the features
    /// [`Scheduler::take_segment`] hands over. The request stays queued meanwhile, so that a
    /// newer one can supersede it while labels are being embedded.
    Segment {
        slot: Slot,
        request: Rc<SegmentRequest>,
    },
    /// Cluster `features` (the request is taken from the queue).
    KMeans {
        request: Rc<KMeansRequest>,
        features: Rc<F>,
    },
}

#[derive(Debug)]
pub struct Scheduler<A, P, F> {
    /// Generation of the newest load request.
    loads: u64,
    cancelled: HashSet<RequestId>,
    /// Generation of the model in use, and the last one handed out.
    model: Option<u64>,
    models: u64,
    /// The newest photo request, not decoded yet.
    image: Option<(ImageRequest, A)>,
    photo: Option<(RequestId, Rc<P>)>,
    features: Option<(FeatureKey, Rc<F>)>,
    /// Encode this photo at this resolution once nothing else waits.
    eager: Option<(RequestId, Preset)>,
    segments: BTreeMap<Slot, Rc<SegmentRequest>>,
    kmeans: Option<Rc<KMeansRequest>>,
    /// A job handed out by `next_job` has not reported `job_done` yet.
    running: bool,
}

impl<A, P, F> Default for Scheduler<A, P, F> {
    fn default() -> Self {
        Self {
            loads: 0,
            cancelled: HashSet::new(),
            model: None,
            models: 0,
            image: None,
            photo: None,
            features: None,
            eager: None,
            segments: BTreeMap::new(),
            kmeans: None,
            running: false,
        }
    }
}

impl<A, P, F> Scheduler<A, P, F> {
    pub fn new() -> Self {
        Self::default()
    }

    // -----------------------------------------------------------------------------------------
    // Requests in

    /// A new photo: replaces the one waiting to be decoded.
    pub fn set_image(&mut self, request: ImageRequest, attachment: A) {
        self.image = Some((request, attachment));
    }

    /// A new segment request: replaces the one waiting in its slot.
    pub fn segment(&mut self, slot: Slot, request: SegmentRequest) {
        self.segments.insert(slot, Rc::new(request));
    }

    /// A new K-Means request: replaces the one waiting.
    pub fn kmeans(&mut self, request: KMeansRequest) {
        self.kmeans = Some(Rc::new(request));
    }

    /// Stop request `id`: a waiting segment / K-Means request is dropped, a load stops at its
    /// next check, a segment job at its next label.
    pub fn cancel(&mut self, id: RequestId) {
        self.cancelled.insert(id);
        self.segments.retain(|_, r| r.id != id);
        if self.kmeans.as_ref().is_some_and(|r| r.id == id) {
            self.kmeans = None;
        }
    }

    pub fn is_cancelled(&self, id: RequestId) -> bool {
        self.cancelled.contains(&id)
    }

    /// A new load request: every older one stops being current.
    pub fn begin_load(&mut self, id: RequestId) -> LoadTicket {
        self.loads += 1;
        LoadTicket {
            id,
            generation: self.loads,
        }
    }

    pub fn is_current_load(&self, t: &LoadTicket) -> bool {
        t.generation == self.loads && !self.is_cancelled(t.id)
    }

    /// A new model is in use: cached features are void. Returns its generation.
    pub fn model_installed(&mut self) -> u64 {
        self.models += 1;
        self.model = Some(self.models);
        self.features = None;
        self.models
    }

    /// Generation of the model in use.
    pub fn model(&self) -> Option<u64> {
        self.model
    }

    // -----------------------------------------------------------------------------------------
    // Jobs out

    /// Are these features there for `image` at `resolution`, from the current model?
    fn ready(&self, image: RequestId, resolution: Preset) -> Option<Rc<F>> {
        let want = FeatureKey {
            image,
            resolution,
            model: self.model?,
        };
        self.features
            .as_ref()
            .filter(|(k, _)| *k == want)
            .map(|(_, f)| f.clone())
    }

    /// The encode that makes features for `image` at `resolution` (the photo is current).
    fn encode(
        &self,
        image: RequestId,
        resolution: Preset,
        for_id: RequestId,
    ) -> Option<Job<A, P, F>> {
        let (id, photo) = self.photo.as_ref().filter(|(id, _)| *id == image)?;
        let key = FeatureKey {
            image: *id,
            resolution,
            model: self.model?,
        };
        Some(Job::Encode {
            key,
            photo: photo.clone(),
            for_id,
        })
    }

    /// The next job, or `None` when there is nothing to do (or a job is still running).
    pub fn next_job(&mut self) -> Option<Job<A, P, F>> {
        if self.running {
            return None;
        }
        let job = self.pick();
        self.running = job.is_some();
        job
    }

    fn pick(&mut self) -> Option<Job<A, P, F>> {
        if let Some((request, attachment)) = self.image.take() {
            return Some(Job::Decode {
                request,
                attachment,
            });
        }
        self.model?;
        // Requests for photos that are gone (replaced, or failed to decode) are dropped.
        let photo = self.photo.as_ref().map(|(id, _)| *id);
        self.segments.retain(|_, r| Some(r.image) == photo);
        if self.kmeans.as_ref().is_some_and(|r| Some(r.image) != photo) {
            self.kmeans = None;
        }
        if let Some((&slot, r)) = self.segments.iter().next() {
            return match self.ready(r.image, r.resolution) {
                Some(_) => Some(Job::Segment {
                    slot,
                    request: r.clone(),
                }),
                None => self.encode(r.image, r.resolution, r.id),
            };
        }
        if let Some(r) = self.kmeans.clone() {
            return match self.ready(r.image, r.resolution) {
                Some(features) => {
                    self.kmeans = None;
                    Some(Job::KMeans {
                        request: r,
                        features,
                    })
                }
                None => self.encode(r.image, r.resolution, r.id),
            };
        }
        if let Some((image, resolution)) = self.eager {
            if Some(image) == photo && self.ready(image, resolution).is_none() {
                return self.encode(image, resolution, image);
            }
            self.eager = None;
        }
        None
    }

    /// The job handed out last has finished (whatever its outcome).
    pub fn job_done(&mut self) {
        self.running = false;
    }

    // -----------------------------------------------------------------------------------------
    // Results in

    /// Photo `request` is decoded. Refused (`false`) when a newer photo arrived meanwhile;
    /// otherwise it becomes the photo, its features are to be computed, first at the
    /// resolution it was sent with.
    pub fn decoded(&mut self, request: &ImageRequest, photo: P) -> bool {
        if self.image.is_some() {
            return false;
        }
        self.photo = Some((request.id, Rc::new(photo)));
        self.features = None;
        self.eager = Some((request.id, request.resolution));
        true
    }

    /// Features for `key` are computed. Refused (`false`) when they went stale meanwhile (a
    /// new model, or another photo).
    pub fn encoded(&mut self, key: FeatureKey, features: F) -> bool {
        let photo = self.photo.as_ref().map(|(id, _)| *id);
        if self.model != Some(key.model) || photo != Some(key.image) {
            return false;
        }
        self.features = Some((key, Rc::new(features)));
        true
    }

    /// Encoding photo `image` failed: the requests waiting for it are dropped (their sender is
    /// told through the encode's error).
    pub fn encode_failed(&mut self, image: RequestId) {
        self.segments.retain(|_, r| r.image != image);
        if self.kmeans.as_ref().is_some_and(|r| r.image == image) {
            self.kmeans = None;
        }
        self.eager = None;
    }

    /// Is `id` still the request waiting in `slot` (not superseded, not cancelled)?
    pub fn segment_current(&self, slot: Slot, id: RequestId) -> bool {
        self.segments.get(&slot).is_some_and(|r| r.id == id) && !self.is_cancelled(id)
    }

    /// The features for segment request `id` in `slot`, which leaves the queue — or `None` when
    /// it was superseded or cancelled, or when its features went stale while its labels were
    /// embedded (it then stays queued and `next_job` encodes again).
    pub fn take_segment(&mut self, slot: Slot, id: RequestId) -> Option<Rc<F>> {
        if !self.segment_current(slot, id) {
            return None;
        }
        let r = self.segments.get(&slot)?;
        let features = self.ready(r.image, r.resolution)?;
        self.segments.remove(&slot);
        Some(features)
    }

    /// Segment request `id` in `slot` failed (bad labels, an embedding error): drop it.
    pub fn drop_segment(&mut self, slot: Slot, id: RequestId) {
        if self.segments.get(&slot).is_some_and(|r| r.id == id) {
            self.segments.remove(&slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ImageInput, Mode, Refine, Side, TemplateSet};

    /// Attachments, photos and features are plain strings here.
    type S = Scheduler<&'static str, String, String>;
    type J = Job<&'static str, String, String>;

    fn image(id: RequestId, resolution: Preset) -> ImageRequest {
        ImageRequest {
            id,
            input: ImageInput::Url {
                url: format!("samples/{id}.jpg"),
            },
            resolution,
        }
    }

    fn seg(id: RequestId, image: RequestId, labels: &str, resolution: Preset) -> SegmentRequest {
        SegmentRequest {
            id,
            image,
            labels: labels.split(',').map(String::from).collect(),
            background: None,
            mode: Mode::Dinoiser,
            resolution,
            templates: TemplateSet::Fast,
            refine: Refine::None,
            side: Side::Primary,
        }
    }

    fn km(id: RequestId, image: RequestId, k: usize, resolution: Preset) -> KMeansRequest {
        KMeansRequest {
            id,
            image,
            k,
            resolution,
            mode: Mode::Dinoiser,
        }
    }

    /// What the job is, in a few words (the tests compare these).
    fn what(job: &J) -> String {
        match job {
            Job::Decode {
                request,
                attachment,
            } => format!("decode {} {attachment}", request.id),
            Job::Encode { key, photo, for_id } => format!(
                "encode {} {} m{} for {for_id} ({photo})",
                key.image,
                key.resolution.name(),
                key.model
            ),
            Job::Segment { slot, request } => {
                format!(
                    "segment {} slot {} [{}]",
                    request.id,
                    slot.0,
                    request.labels.join(",")
                )
            }
            Job::KMeans { request, features } => {
                format!("kmeans {} k={} on {features}", request.id, request.k)
            }
        }
    }

    /// Run the next job to completion the way the worker's bodies do, and say what it was.
    fn run(s: &mut S) -> Option<String> {
        let job = s.next_job()?;
        let text = what(&job);
        match job {
            Job::Decode { request, .. } => {
                s.decoded(&request, format!("photo {}", request.id));
            }
            Job::Encode { key, .. } => {
                let f = format!(
                    "feats {}@{} m{}",
                    key.image,
                    key.resolution.name(),
                    key.model
                );
                s.encoded(key, f);
            }
            Job::Segment { slot, request } => {
                s.take_segment(slot, request.id);
            }
            Job::KMeans { .. } => {}
        }
        s.job_done();
        Some(text)
    }

    /// Run jobs until there is nothing left to do.
    fn drain(s: &mut S) -> Vec<String> {
        std::iter::from_fn(|| run(s)).take(50).collect()
    }

    /// A model, photo 1 decoded and encoded at `Balanced`: the state after the page settled.
    fn settled() -> S {
        let mut s = S::new();
        s.model_installed();
        s.set_image(image(1, Preset::Balanced), "blob1");
        assert_eq!(
            drain(&mut s),
            ["decode 1 blob1", "encode 1 balanced m1 for 1 (photo 1)"]
        );
        s
    }

    #[test]
    fn a_photo_is_decoded_first_and_encoded_eagerly_once_a_model_is_there() {
        let mut s = S::new();
        s.set_image(image(1, Preset::Paper), "blob");
        assert_eq!(
            drain(&mut s),
            ["decode 1 blob"],
            "no model yet: decode only"
        );
        s.segment(Slot::MAIN, seg(2, 1, "cat", Preset::Paper));
        assert!(s.next_job().is_none(), "nothing runs without a model");
        assert_eq!(s.model_installed(), 1);
        assert_eq!(
            drain(&mut s),
            [
                "encode 1 paper m1 for 2 (photo 1)",
                "segment 2 slot 0 [cat]"
            ]
        );
    }

    #[test]
    fn the_newest_request_of_each_kind_wins() {
        let mut s = settled();
        // Photos: the second replaces the first before it is decoded.
        s.set_image(image(5, Preset::Balanced), "a");
        s.set_image(image(6, Preset::Balanced), "b");
        // Segments and K-Means: the newest per kind, for the photo that will be current.
        s.segment(Slot::MAIN, seg(7, 6, "cat", Preset::Balanced));
        s.segment(Slot::MAIN, seg(8, 6, "cat,dog", Preset::Balanced));
        s.kmeans(km(9, 6, 4, Preset::Balanced));
        s.kmeans(km(10, 6, 8, Preset::Balanced));
        assert_eq!(
            drain(&mut s),
            [
                "decode 6 b",
                "encode 6 balanced m1 for 8 (photo 6)",
                "segment 8 slot 0 [cat,dog]",
                "kmeans 10 k=8 on feats 6@balanced m1",
            ]
        );
    }

    #[test]
    fn segment_slots_supersede_only_themselves() {
        let mut s = settled();
        s.segment(Slot(1), seg(3, 1, "cat", Preset::Balanced));
        s.segment(Slot::MAIN, seg(4, 1, "dog", Preset::Balanced));
        s.segment(Slot(1), seg(5, 1, "sky", Preset::Balanced));
        assert_eq!(
            drain(&mut s),
            ["segment 4 slot 0 [dog]", "segment 5 slot 1 [sky]"],
            "both slots run, in slot order, each with its newest request"
        );
    }

    #[test]
    fn both_overlays_share_one_encode_and_mode_switches_never_encode() {
        let mut s = settled();
        // The compare view at 448: one encode for the two overlays, then both segment.
        s.segment(Slot::MAIN, seg(3, 1, "cat", Preset::Paper));
        s.segment(Slot::COMPARE, seg(4, 1, "cat", Preset::Paper));
        assert_eq!(
            drain(&mut s),
            [
                "encode 1 paper m1 for 3 (photo 1)",
                "segment 3 slot 0 [cat]",
                "segment 4 slot 1 [cat]"
            ]
        );
        // Another mode or refinement on either side: the cached features serve it (the worker
        // computes the mode's last block from them, in place).
        let mut other = seg(5, 1, "cat", Preset::Paper);
        other.mode = Mode::NaClip;
        other.refine = Refine::PAMR;
        s.segment(Slot::COMPARE, other);
        s.kmeans(KMeansRequest {
            mode: Mode::SClip,
            ..km(6, 1, 4, Preset::Paper)
        });
        assert_eq!(
            drain(&mut s),
            ["segment 5 slot 1 [cat]", "kmeans 6 k=4 on feats 1@paper m1"]
        );
    }

    #[test]
    fn cancelled_requests_never_run() {
        let mut s = settled();
        s.segment(Slot::MAIN, seg(3, 1, "cat", Preset::Balanced));
        s.kmeans(km(4, 1, 6, Preset::Balanced));
        s.cancel(3);
        s.cancel(4);
        assert!(s.next_job().is_none());
        assert!(s.is_cancelled(3) && !s.is_cancelled(5));
        // Cancelling an older id leaves the newer request alone.
        s.segment(Slot::MAIN, seg(6, 1, "cat", Preset::Balanced));
        s.cancel(3);
        assert_eq!(drain(&mut s), ["segment 6 slot 0 [cat]"]);
    }

    #[test]
    fn a_cancel_during_a_segment_stops_it_at_its_next_label() {
        let mut s = settled();
        s.segment(Slot::MAIN, seg(3, 1, "cat,dog", Preset::Balanced));
        let Some(Job::Segment { slot, request }) = s.next_job() else {
            panic!("segment expected")
        };
        assert!(s.segment_current(slot, request.id));
        s.cancel(3);
        assert!(!s.segment_current(slot, request.id));
        assert!(s.take_segment(slot, request.id).is_none());
        s.job_done();
        assert!(s.next_job().is_none());
    }

    #[test]
    fn features_go_stale_with_another_photo_resolution_or_model() {
        let mut s = settled();
        // Same photo and resolution: no new encode.
        s.segment(Slot::MAIN, seg(2, 1, "cat", Preset::Balanced));
        assert_eq!(drain(&mut s), ["segment 2 slot 0 [cat]"]);
        // Another resolution.
        s.segment(Slot::MAIN, seg(3, 1, "cat", Preset::Paper));
        assert_eq!(
            drain(&mut s),
            [
                "encode 1 paper m1 for 3 (photo 1)",
                "segment 3 slot 0 [cat]"
            ]
        );
        // Another model.
        assert_eq!(s.model_installed(), 2);
        s.segment(Slot::MAIN, seg(4, 1, "cat", Preset::Paper));
        assert_eq!(
            drain(&mut s),
            [
                "encode 1 paper m2 for 4 (photo 1)",
                "segment 4 slot 0 [cat]"
            ]
        );
        // Another photo: requests for the old one are dropped, the new one is encoded eagerly.
        s.set_image(image(5, Preset::Fast), "c");
        s.segment(Slot::MAIN, seg(6, 1, "cat", Preset::Paper));
        assert_eq!(
            drain(&mut s),
            ["decode 5 c", "encode 5 fast m2 for 5 (photo 5)"]
        );
    }

    #[test]
    fn segments_run_before_kmeans_before_the_eager_encode() {
        let mut s = S::new();
        s.model_installed();
        s.set_image(image(1, Preset::Fast), "a");
        assert!(matches!(s.next_job(), Some(Job::Decode { .. })));
        s.decoded(&image(1, Preset::Fast), "photo 1".into());
        s.job_done();
        s.kmeans(km(3, 1, 6, Preset::Balanced));
        s.segment(Slot::MAIN, seg(2, 1, "cat", Preset::Paper));
        assert_eq!(
            drain(&mut s),
            [
                "encode 1 paper m1 for 2 (photo 1)",
                "segment 2 slot 0 [cat]",
                "encode 1 balanced m1 for 3 (photo 1)",
                "kmeans 3 k=6 on feats 1@balanced m1",
                "encode 1 fast m1 for 1 (photo 1)",
            ]
        );
    }

    #[test]
    fn one_job_at_a_time() {
        let mut s = settled();
        s.segment(Slot::MAIN, seg(2, 1, "cat", Preset::Balanced));
        let first = s.next_job();
        assert!(first.is_some());
        s.kmeans(km(3, 1, 6, Preset::Balanced));
        assert!(s.next_job().is_none(), "still running");
        s.job_done();
        // The segment request was not taken: it is handed out again, then K-Means.
        assert_eq!(
            drain(&mut s),
            [
                "segment 2 slot 0 [cat]",
                "kmeans 3 k=6 on feats 1@balanced m1"
            ]
        );
    }

    #[test]
    fn a_label_edit_during_an_encode_is_segmented_with_the_new_features() {
        let mut s = S::new();
        s.model_installed();
        s.set_image(image(1, Preset::Balanced), "a");
        s.segment(Slot::MAIN, seg(2, 1, "cat", Preset::Balanced));
        assert_eq!(run(&mut s).unwrap(), "decode 1 a");
        let Some(Job::Encode { key, for_id, .. }) = s.next_job() else {
            panic!("encode expected")
        };
        assert_eq!(for_id, 2);
        // The user edits the labels while the tower runs.
        s.segment(Slot::MAIN, seg(3, 1, "cat,dog", Preset::Balanced));
        assert!(s.encoded(key, "feats".into()));
        s.job_done();
        assert_eq!(drain(&mut s), ["segment 3 slot 0 [cat,dog]"]);
    }

    #[test]
    fn a_resolution_change_during_an_encode_encodes_again() {
        let mut s = settled();
        s.segment(Slot::MAIN, seg(2, 1, "cat", Preset::Fast));
        let Some(Job::Encode { key, .. }) = s.next_job() else {
            panic!("encode expected")
        };
        s.segment(Slot::MAIN, seg(3, 1, "cat", Preset::Paper));
        assert!(s.encoded(key, "fast feats".into()), "still valid features");
        s.job_done();
        assert_eq!(
            drain(&mut s),
            [
                "encode 1 paper m1 for 3 (photo 1)",
                "segment 3 slot 0 [cat]"
            ]
        );
    }

    #[test]
    fn a_model_swap_during_an_encode_voids_its_features() {
        let mut s = settled();
        s.segment(Slot::MAIN, seg(2, 1, "cat", Preset::Paper));
        let Some(Job::Encode { key, .. }) = s.next_job() else {
            panic!("encode expected")
        };
        assert_eq!(key.model, 1);
        s.model_installed();
        assert!(!s.encoded(key, "old model".into()), "refused");
        s.job_done();
        assert_eq!(
            drain(&mut s),
            [
                "encode 1 paper m2 for 2 (photo 1)",
                "segment 2 slot 0 [cat]"
            ]
        );
    }

    #[test]
    fn a_model_swap_while_labels_are_embedded_encodes_again_then_segments() {
        let mut s = settled();
        s.segment(Slot::MAIN, seg(2, 1, "cat", Preset::Balanced));
        let Some(Job::Segment { slot, request }) = s.next_job() else {
            panic!("segment expected")
        };
        s.model_installed();
        assert!(
            s.segment_current(slot, request.id),
            "the request still stands"
        );
        assert!(
            s.take_segment(slot, request.id).is_none(),
            "but not on stale features"
        );
        s.job_done();
        assert_eq!(
            drain(&mut s),
            [
                "encode 1 balanced m2 for 2 (photo 1)",
                "segment 2 slot 0 [cat]"
            ]
        );
    }

    #[test]
    fn a_label_edit_while_labels_are_embedded_supersedes_the_running_segment() {
        let mut s = settled();
        s.segment(Slot::MAIN, seg(2, 1, "cat,dog", Preset::Balanced));
        let Some(Job::Segment { slot, request }) = s.next_job() else {
            panic!("segment expected")
        };
        s.segment(Slot::MAIN, seg(3, 1, "cat,dog,sky", Preset::Balanced));
        assert!(!s.segment_current(slot, request.id));
        assert!(s.take_segment(slot, request.id).is_none());
        s.job_done();
        assert_eq!(drain(&mut s), ["segment 3 slot 0 [cat,dog,sky]"]);
    }

    #[test]
    fn a_new_photo_during_a_segment_waits_for_it_then_replaces_the_old_one() {
        let mut s = settled();
        s.segment(Slot::MAIN, seg(2, 1, "cat", Preset::Balanced));
        let Some(Job::Segment { slot, request }) = s.next_job() else {
            panic!("segment expected")
        };
        s.set_image(image(3, Preset::Balanced), "new");
        // The old photo stays until the new one is decoded (it may be corrupt): the segment
        // of the photo on screen completes.
        assert_eq!(
            s.take_segment(slot, request.id).as_deref(),
            Some(&"feats 1@balanced m1".to_string())
        );
        s.job_done();
        assert_eq!(
            drain(&mut s),
            ["decode 3 new", "encode 3 balanced m1 for 3 (photo 3)"]
        );
    }

    #[test]
    fn a_photo_that_fails_to_decode_keeps_the_old_one_and_its_requests() {
        let mut s = settled();
        s.set_image(image(3, Preset::Balanced), "corrupt");
        assert!(matches!(s.next_job(), Some(Job::Decode { .. })));
        // The decode fails: nothing is reported to the scheduler but the end of the job.
        s.job_done();
        s.segment(Slot::MAIN, seg(4, 1, "cat", Preset::Balanced));
        assert_eq!(drain(&mut s), ["segment 4 slot 0 [cat]"]);
    }

    #[test]
    fn a_photo_decoded_after_a_newer_one_arrived_is_refused() {
        let mut s = S::new();
        s.set_image(image(1, Preset::Fast), "a");
        let Some(Job::Decode { request, .. }) = s.next_job() else {
            panic!("decode expected")
        };
        s.set_image(image(2, Preset::Fast), "b");
        assert!(!s.decoded(&request, "photo 1".into()));
        s.job_done();
        s.model_installed();
        assert_eq!(
            drain(&mut s),
            ["decode 2 b", "encode 2 fast m1 for 2 (photo 2)"]
        );
    }

    #[test]
    fn features_of_a_replaced_photo_are_refused() {
        let mut s = settled();
        s.segment(Slot::MAIN, seg(2, 1, "cat", Preset::Paper));
        let Some(Job::Encode { key, .. }) = s.next_job() else {
            panic!("encode expected")
        };
        s.job_done();
        s.set_image(image(3, Preset::Fast), "b");
        assert_eq!(run(&mut s).unwrap(), "decode 3 b");
        assert!(!s.encoded(key, "photo 1 feats".into()));
    }

    #[test]
    fn a_failed_encode_drops_the_requests_for_that_photo() {
        let mut s = settled();
        s.segment(Slot::MAIN, seg(2, 1, "cat", Preset::Paper));
        s.kmeans(km(3, 1, 6, Preset::Paper));
        let Some(Job::Encode { key, for_id, .. }) = s.next_job() else {
            panic!("encode expected")
        };
        assert_eq!(for_id, 2, "the error goes to the segment request");
        s.encode_failed(key.image);
        s.job_done();
        assert!(s.next_job().is_none(), "no retry loop");
    }

    #[test]
    fn a_failed_segment_is_dropped_and_others_go_on() {
        let mut s = settled();
        s.segment(Slot::MAIN, seg(2, 1, "", Preset::Balanced));
        s.kmeans(km(3, 1, 6, Preset::Balanced));
        let Some(Job::Segment { slot, request }) = s.next_job() else {
            panic!("segment expected")
        };
        s.drop_segment(slot, request.id);
        s.job_done();
        assert_eq!(drain(&mut s), ["kmeans 3 k=6 on feats 1@balanced m1"]);
    }

    #[test]
    fn requests_for_an_unknown_photo_are_dropped() {
        let mut s = settled();
        s.segment(Slot::MAIN, seg(2, 99, "cat", Preset::Balanced));
        s.kmeans(km(3, 99, 6, Preset::Balanced));
        assert!(s.next_job().is_none());
    }

    #[test]
    fn the_newest_load_is_current_until_cancelled() {
        let mut s = S::new();
        let a = s.begin_load(1);
        assert!(s.is_current_load(&a));
        let b = s.begin_load(2);
        assert!(!s.is_current_load(&a), "superseded");
        assert!(s.is_current_load(&b));
        s.cancel(2);
        assert!(!s.is_current_load(&b), "cancelled");
        let c = s.begin_load(3);
        assert!(s.is_current_load(&c));
        assert_eq!(s.model(), None);
        assert_eq!(s.model_installed(), 1);
        assert_eq!(s.model(), Some(1));
    }
}

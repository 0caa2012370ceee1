//! Parity of the CLIP-DINOiser head and the segmentation pipeline with the upstream PyTorch
//! reference, on the random tiny model of `tests/fixtures/tiny/` (written by
//! `tests/reference/make_fixtures.py`; see `tests/fixtures/README.md`).
//!
//! * the head alone, from the reference's own MaskCLIP features (`a.dense`, `a.inter`): isolates
//!   `obj_proj` / correlations / pooling / `bkg_decoder` from the image tower;
//! * the whole path from the image, as upstream `demo.py` runs it (images `a` 45×61, `b` 96×64:
//!   full resolution, one pass, ×16 bilinear upsampling, crop);
//! * the paper protocol on image `c` (90×130): short side → 64, mmseg `slide` windows 64 / 32,
//!   window averaging, resize back to 90×130.
//!
//! The reference (for image `a`, background label 2, in the fixture script):
//! ```python
//! r = ref.forward(img[None], BACKGROUND)           # MaskClip + CLIP_DINOiser.forward
//! full = F.interpolate(r["probs_dinoiser"], scale_factor=16, mode="bilinear",
//!                      align_corners=False)[..., :h, :w]
//! labelmap = full[0].argmax(0)
//! ```

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use clipdino::dinoiser::DinoiserHead;
use clipdino::loaders::{load_model_files, read_dinoiser_checkpoint, Bundle};
use clipdino::pipeline::{
    encode_with, segment_features, EncodeOptions, FeatureKind, ImageFeatures, Mode, SegmentOptions,
    Segmenter, WindowOutputs,
};
use clipdino::{ComputePath, HeadConfig, TensorStore, Vb};
use common::tiny::{expected, read};
use common::{get, label_map};

/// Max |Δ| allowed against the f32 reference.
const TOL: f32 = 1e-4;
/// Index of the background label in `labels` (fixture metadata `background_index`).
const BACKGROUND: usize = 2;

fn max_abs(name: &str, got: &Tensor, want: &Tensor) -> f32 {
    let d = common::max_abs_diff(got, want);
    println!("{name:<28} max |Δ| = {d:.3e}");
    assert!(d <= TOL, "{name}: max |Δ| {d} > {TOL}");
    d
}

fn assert_same_labels(name: &str, got: &[u32], want: &[u32]) {
    common::assert_same_labels(name, got, want, &|s| println!("{s}"));
}

/// MaskCLIP and DINOiser patch probabilities, full-size probabilities and the label map of image
/// `key` from its features (`prefix` names the test in the log).
fn check_segmentations(
    exp: &HashMap<String, Tensor>,
    prefix: &str,
    key: &str,
    feats: &ImageFeatures,
    labels: &Tensor,
) {
    let name = |what: &str| format!("{prefix}{key}.{what}");
    let want = |what: &str| get(exp, &format!("{key}.{what}"));
    let mc = segment_features(
        feats,
        labels,
        &SegmentOptions {
            mode: Mode::MaskClip,
            ..Default::default()
        },
    )
    .unwrap();
    max_abs(
        &name("probs_maskclip"),
        &mc.patch_probs[0],
        &want("probs_maskclip"),
    );
    let opts = SegmentOptions {
        mode: Mode::Dinoiser,
        background: Some(BACKGROUND),
        output_size: None,
        ..Default::default()
    };
    let out = segment_features(feats, labels, &opts).unwrap();
    max_abs(
        &name("probs_dinoiser"),
        &out.patch_probs[0],
        &want("probs_dinoiser"),
    );
    max_abs(&name("probs_full"), &out.probs, &want("probs_full"));
    assert_same_labels(
        &name("labelmap"),
        &out.labels,
        &label_map(exp, &format!("{key}.labelmap")),
    );
}

fn bundle() -> Bundle {
    let files: Vec<(String, Vec<u8>)> = [
        "open_clip_model.safetensors",
        "open_clip_config.json",
        "last.pt",
    ]
    .into_iter()
    .map(|n| (n.to_string(), read(n)))
    .collect();
    load_model_files(&files).expect("fixture model files load")
}

fn segmenter(b: &Bundle) -> Segmenter {
    Segmenter::from_bundle(b.clone(), &Device::Cpu, ComputePath::F32)
        .expect("segmenter builds from the fixture bundle")
}

/// The head alone, on the reference MaskCLIP features: refine, background, classification,
/// background rule, ×16 upsampling and argmax.
#[test]
fn head_matches_reference_from_fixture_features() {
    let exp = expected();
    let store = read_dinoiser_checkpoint(&read("last.pt"), "last.pt").expect("last.pt loads");
    let mut root = TensorStore::new("last.pt");
    root.merge(store, "dinoiser.");
    let vb = Vb::new(Arc::new(root), Device::Cpu, ComputePath::F32);
    let labels = get(&exp, "labels");
    for key in ["a", "b"] {
        let dense = get(&exp, &format!("{key}.dense"));
        let inter = get(&exp, &format!("{key}.inter"));
        let (h, w, c) = inter.dims3().unwrap();
        let cfg = HeadConfig {
            in_dim: c,
            proj_dim: 32,
            layer: 1,
        };
        let head = DinoiserHead::new(&vb.pp("dinoiser"), &cfg).unwrap();
        let refined = head.refine(&dense, &inter).unwrap();
        let bkg = head.background(&inter).unwrap();
        max_abs(
            &format!("head {key}.refined"),
            &refined,
            &get(&exp, &format!("{key}.refined")),
        );
        max_abs(
            &format!("head {key}.bkg"),
            &bkg,
            &get(&exp, &format!("{key}.bkg")),
        );
        let corrs = head.correlations(&inter).unwrap();
        max_abs(
            &format!("head {key}.corrs"),
            &corrs,
            &get(&exp, &format!("{key}.corrs")),
        );
        // the γ mask itself must agree exactly
        let zeros = |t: &Tensor| {
            t.eq(0f32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<u8>()
                .unwrap()
        };
        assert_eq!(
            zeros(&corrs),
            zeros(&get(&exp, &format!("{key}.corrs"))),
            "{key}: γ masks differ"
        );

        // one full-resolution window built from these features
        let image = get(&exp, &format!("{key}.image"));
        let feats = encode_with(&image, &EncodeOptions::full_res(), 16, |_, _, _| {
            Ok(WindowOutputs {
                dense: dense.clone(),
                refined: Some(refined.clone()),
                bkg: Some(bkg.clone()),
                inter: None,
                trunk: None,
            })
        })
        .unwrap();
        assert_eq!(feats.grid(), (h, w));
        check_segmentations(&exp, "head ", key, &feats, &labels);
        // the rule fired somewhere (the fixture guarantees forced patches)
        let forced = label_map(&exp, &format!("{key}.forced"));
        assert!(forced.contains(&1), "{key}: fixture has no forced patch");
    }
}

/// Image → label map through the CLIP image tower, the head and the pipeline (demo protocol).
#[test]
fn full_resolution_pipeline_matches_reference() {
    let exp = expected();
    let b = bundle();
    let seg = segmenter(&b);
    assert!(seg.has_head());
    let labels = get(&exp, "labels");
    for key in ["a", "b"] {
        let image = get(&exp, &format!("{key}.image"));
        let mut reports = 0;
        let feats = seg
            .encode_image(&image, &EncodeOptions::full_res(), &mut |_| reports += 1)
            .unwrap();
        assert!(reports > 0, "no progress reported");
        let w = &feats.windows[0];
        max_abs(
            &format!("{key}.dense"),
            &w.dense,
            &get(&exp, &format!("{key}.dense")),
        );
        max_abs(
            &format!("{key}.refined"),
            w.refined.as_ref().unwrap(),
            &get(&exp, &format!("{key}.refined")),
        );
        max_abs(
            &format!("{key}.bkg"),
            w.bkg.as_ref().unwrap(),
            &get(&exp, &format!("{key}.bkg")),
        );
        max_abs(
            &format!("{key}.patch_grid raw"),
            &feats.patch_grid(FeatureKind::Raw).unwrap(),
            &get(&exp, &format!("{key}.dense")),
        );
        check_segmentations(&exp, "", key, &feats, &labels);
    }
}

/// The paper protocol (short side, mmseg sliding windows, averaging, resize back) on image `c`.
#[test]
fn sliding_window_pipeline_matches_reference() {
    let exp = expected();
    let b = bundle();
    let seg = segmenter(&b);
    let labels = get(&exp, "labels");
    let image = get(&exp, "c.image");
    let opts = common::fixture_window();
    let mut last = None;
    let feats = seg
        .encode_image(&image, &opts, &mut |p| last = Some(p))
        .unwrap();
    assert_eq!((feats.height, feats.width), (64, 92));
    let p = last.expect("progress reported");
    assert_eq!((p.window, p.windows), (1, 2));

    // window boxes (y1, y2, x1, x2) as mmseg
    let want_boxes = exp["c.windows"]
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap();
    let got_boxes: Vec<Vec<i64>> = feats
        .windows
        .iter()
        .map(|w| {
            let b = w.pixels;
            vec![
                b.y0 as i64,
                (b.y0 + b.height) as i64,
                b.x0 as i64,
                (b.x0 + b.width) as i64,
            ]
        })
        .collect();
    assert_eq!(got_boxes, want_boxes);

    let sopts = SegmentOptions {
        mode: Mode::Dinoiser,
        background: Some(BACKGROUND),
        output_size: None,
        ..Default::default()
    };
    let out = seg.segment(&feats, &labels, &sopts).unwrap();
    let window_probs = Tensor::stack(&out.patch_probs, 0).unwrap();
    max_abs(
        "c.window_probs",
        &window_probs,
        &get(&exp, "c.window_probs"),
    );
    max_abs("c.probs", &out.probs, &get(&exp, "c.probs"));
    assert_same_labels("c.labelmap", &out.labels, &label_map(&exp, "c.labelmap"));

    // segment is cheap: time it on these cached features
    let t = std::time::Instant::now();
    for _ in 0..10 {
        seg.segment(&feats, &labels, &sopts).unwrap();
    }
    println!(
        "segment (c, 2 windows, 4 labels, 90×130 output): {:.2} ms",
        t.elapsed().as_secs_f64() * 100.0
    );
}

/// Without the head, the same weights give a MaskCLIP-only segmenter that still matches the
/// MaskCLIP reference, and refuses DINOiser mode with a typed error.
#[test]
fn maskclip_only_segmenter() {
    let exp = expected();
    let b = bundle();
    let vb = Vb::new(Arc::new(b.store.clone()), Device::Cpu, ComputePath::F32);
    let seg = Segmenter::new(&vb, &b.clip, None).unwrap();
    assert!(!seg.has_head());
    let image = get(&exp, "a.image");
    let feats = seg
        .encode_image(&image, &EncodeOptions::full_res(), &mut |_| {})
        .unwrap();
    assert!(!feats.has_refined());
    let labels = get(&exp, "labels");
    let mc = seg
        .segment(
            &feats,
            &labels,
            &SegmentOptions {
                mode: Mode::MaskClip,
                ..Default::default()
            },
        )
        .unwrap();
    max_abs(
        "no-head a.probs_maskclip",
        &mc.patch_probs[0],
        &get(&exp, "a.probs_maskclip"),
    );
    assert!(matches!(
        seg.segment(&feats, &labels, &SegmentOptions::default()),
        Err(clipdino::Error::InvalidInput { .. })
    ));
}

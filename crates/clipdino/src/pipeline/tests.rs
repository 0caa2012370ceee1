//! Pipeline tests on synthetic features (the model-backed path is covered by
//! `tests/parity_pipeline.rs`).

use super::*;

fn dev() -> Device {
    Device::Cpu
}

/// Naive reference bilinear sample of a `[gh, gw]` plane at output pixel (y, x) of an
/// `oh × ow` resize, straight from PyTorch's definition, in f64.
fn sample(plane: &[f32], gh: usize, gw: usize, oh: usize, ow: usize, y: usize, x: usize) -> f64 {
    let axis = |d: usize, inp: usize, out: usize| {
        let s = ((d as f64 + 0.5) * inp as f64 / out as f64 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(inp - 1);
        let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
        (i0, i1, s - i0 as f64)
    };
    let (y0, y1, ly) = axis(y, gh, oh);
    let (x0, x1, lx) = axis(x, gw, ow);
    let v = |i: usize, j: usize| plane[i * gw + j] as f64;
    (1.0 - ly) * ((1.0 - lx) * v(y0, x0) + lx * v(y0, x1))
        + ly * ((1.0 - lx) * v(y1, x0) + lx * v(y1, x1))
}

/// A deterministic pseudo-random "encoder": features depend on the crop content and position
/// within the window, so every window differs.
fn fake_encoder(
    e: usize,
    patch: usize,
) -> impl FnMut(usize, usize, &Tensor) -> Result<WindowOutputs> {
    move |i, _n, crop| {
        let (_, h, w) = crop.dims3()?;
        let (gh, gw) = (h.div_ceil(patch), w.div_ceil(patch));
        let mean = crop.mean_all()?.to_scalar::<f32>()?;
        let mut dense = Vec::with_capacity(gh * gw * e);
        for k in 0..gh * gw * e {
            dense.push(
                ((k as f32 * 0.37 + i as f32 * 1.3 + mean * 7.0).sin() * 3.0).round() / 3.0 + 0.01,
            );
        }
        let dense = Tensor::from_vec(dense, (gh, gw, e), &Device::Cpu)?;
        let refined = (dense.clone() * 0.5)?.sin()?;
        let bkg: Vec<f32> = (0..gh * gw)
            .map(|k| if (k + i) % 3 == 0 { 0.3 } else { 0.8 })
            .collect();
        Ok(WindowOutputs {
            dense,
            refined: Some(refined),
            bkg: Some(Tensor::from_vec(bkg, (gh, gw), &Device::Cpu)?),
            inter: None,
            trunk: None,
        })
    }
}

fn image(h: usize, w: usize) -> Tensor {
    let v: Vec<f32> = (0..3 * h * w)
        .map(|k| ((k * 7919) % 256) as f32 / 255.0)
        .collect();
    Tensor::from_vec(v, (3, h, w), &dev()).unwrap()
}

fn labels(l: usize, e: usize) -> Tensor {
    let v: Vec<f32> = (0..l * e).map(|k| ((k as f32) * 1.7).cos()).collect();
    l2_normalize_last(&Tensor::from_vec(v, (l, e), &dev()).unwrap()).unwrap()
}

/// Reference `segment`: naive per-pixel accumulation from the patch probabilities.
fn naive(feats: &ImageFeatures, probs: &[Tensor], l: usize) -> Vec<f64> {
    let (ph, pw, p) = (feats.height, feats.width, feats.patch);
    let mut acc = vec![0f64; l * ph * pw];
    let mut cnt = vec![0f64; ph * pw];
    for (w, pr) in feats.windows.iter().zip(probs) {
        let (gh, gw) = w.grid;
        let v = pr.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for c in 0..l {
            for y in 0..w.pixels.height {
                for x in 0..w.pixels.width {
                    let s = sample(&v[c * gh * gw..][..gh * gw], gh, gw, gh * p, gw * p, y, x);
                    acc[(c * ph + w.pixels.y0 + y) * pw + w.pixels.x0 + x] += s;
                }
            }
        }
        for y in 0..w.pixels.height {
            for x in 0..w.pixels.width {
                cnt[(w.pixels.y0 + y) * pw + w.pixels.x0 + x] += 1.0;
            }
        }
    }
    let (oh, ow) = (feats.image_height, feats.image_width);
    let mut out = vec![0f64; l * oh * ow];
    for c in 0..l {
        let plane: Vec<f32> = (0..ph * pw)
            .map(|k| (acc[c * ph * pw + k] / cnt[k]) as f32)
            .collect();
        for y in 0..oh {
            for x in 0..ow {
                out[(c * oh + y) * ow + x] = sample(&plane, ph, pw, oh, ow, y, x);
            }
        }
    }
    out
}

#[test]
fn windows_accumulate_like_the_naive_formula() {
    let (e, l, p) = (6, 4, 16);
    for (h, w, opts) in [
        (
            90,
            130,
            EncodeOptions {
                short_side: Some(64),
                window: Some(Window {
                    size: 64,
                    stride: 32,
                }),
            },
        ),
        (45, 61, EncodeOptions::full_res()),
        (
            70,
            50,
            EncodeOptions {
                short_side: Some(40),
                window: Some(Window {
                    size: 32,
                    stride: 20,
                }),
            },
        ),
    ] {
        let feats = encode_with(&image(h, w), &opts, p, fake_encoder(e, p)).unwrap();
        let labels = labels(l, e);
        for mode in [Mode::MaskClip, Mode::Dinoiser] {
            let seg = segment_features(
                &feats,
                &labels,
                &SegmentOptions {
                    mode,
                    background: Some(2),
                    output_size: None,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!((seg.height, seg.width), (h, w));
            let want = naive(&feats, &seg.patch_probs, l);
            let got = seg.probs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let max = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(max < 1e-5, "{h}×{w} {opts:?} {mode:?}: max |Δ| {max}");
            for k in 0..h * w {
                let col: Vec<f32> = (0..l).map(|c| got[c * h * w + k]).collect();
                let best = col.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let first = col.iter().position(|&v| v == best).unwrap() as u32;
                assert_eq!(seg.labels[k], first);
                assert_eq!(seg.confidence[k], best);
            }
        }
    }
}

#[test]
fn patch_probabilities_are_a_softmax_of_scaled_cosines() {
    let f = Tensor::from_vec(vec![3.0f32, 0.0, 0.0, 1.0, 1.0, 0.0], (2, 3), &dev()).unwrap();
    let t = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0], (2, 3), &dev()).unwrap();
    let p = patch_probabilities(&f, &t).unwrap();
    // patch 0: cosines (1, 0) → softmax(100, 0); patch 1: equal cosines → 0.5 / 0.5
    let p0 = 1.0 / (1.0 + (-100f32).exp());
    assert!((p[0] - p0).abs() < 1e-6 && (p[1] - (1.0 - p0)).abs() < 1e-6);
    assert!((p[2] - 0.5).abs() < 1e-6 && (p[3] - 0.5).abs() < 1e-6);
}

#[test]
fn background_rule() {
    // 3 labels, background = 1; patches: confident, uncertain+bg, uncertain+fg, boundary 0.5
    let mut probs = vec![
        0.995, 0.004, 0.001, //
        0.6, 0.3, 0.1, //
        0.6, 0.3, 0.1, //
        0.5, 0.2, 0.3,
    ];
    apply_background_rule(&mut probs, 3, &[0.1, 0.2, 0.9, 0.5], 1);
    assert_eq!(&probs[0..3], &[0.995, 0.004, 0.001]); // certain: untouched
    assert_eq!(&probs[3..6], &[0.6, 1.0, 0.1]); // forced, others kept
    assert_eq!(&probs[6..9], &[0.6, 0.3, 0.1]); // foreground: untouched
    assert_eq!(&probs[9..12], &[0.5, 1.0, 0.3]); // 0.5 is not > 0.5
}

#[test]
fn background_rule_only_in_dinoiser_mode() {
    let (e, l, p) = (5, 3, 16);
    let feats = encode_with(
        &image(40, 40),
        &EncodeOptions::full_res(),
        p,
        fake_encoder(e, p),
    )
    .unwrap();
    let lab = labels(l, e);
    let with = |mode, background| {
        segment_features(
            &feats,
            &lab,
            &SegmentOptions {
                mode,
                background,
                output_size: None,
                ..Default::default()
            },
        )
        .unwrap()
        .patch_probs[0]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(with(Mode::MaskClip, Some(0)), with(Mode::MaskClip, None));
    assert_ne!(with(Mode::Dinoiser, Some(0)), with(Mode::Dinoiser, None));
}

#[test]
fn output_size_and_errors() {
    let (e, p) = (4, 8);
    let feats = encode_with(
        &image(20, 30),
        &EncodeOptions::full_res(),
        p,
        fake_encoder(e, p),
    )
    .unwrap();
    assert_eq!(feats.grid(), (3, 4));
    let lab = labels(2, e);
    let seg = segment_features(
        &feats,
        &lab,
        &SegmentOptions {
            output_size: Some((5, 7)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(seg.probs.dims(), &[2, 5, 7]);
    assert_eq!(seg.labels.len(), 35);
    let bad = |o: SegmentOptions, t: &Tensor| segment_features(&feats, t, &o).is_err();
    assert!(bad(
        SegmentOptions {
            background: Some(2),
            ..Default::default()
        },
        &lab
    ));
    assert!(bad(
        SegmentOptions {
            output_size: Some((0, 3)),
            ..Default::default()
        },
        &lab
    ));
    assert!(bad(SegmentOptions::default(), &labels(2, e + 1)));
    // MaskCLIP-only features cannot be segmented in DINOiser mode
    let mut no_head = feats.clone();
    no_head.windows[0].refined = None;
    assert!(!no_head.has_refined());
    assert!(matches!(
        segment_features(&no_head, &lab, &SegmentOptions::default()),
        Err(Error::InvalidInput { .. })
    ));
    assert!(segment_features(
        &no_head,
        &lab,
        &SegmentOptions {
            mode: Mode::MaskClip,
            ..Default::default()
        }
    )
    .is_ok());
    assert!(no_head.patch_grid(FeatureKind::Refined).is_err());
    // bad images and options
    let enc = |img: &Tensor, o: &EncodeOptions| encode_with(img, o, p, fake_encoder(e, p)).is_err();
    assert!(enc(
        &Tensor::zeros((1, 4, 4), DType::F32, &dev()).unwrap(),
        &EncodeOptions::full_res()
    ));
    assert!(enc(
        &image(8, 8),
        &EncodeOptions {
            short_side: Some(0),
            window: None
        }
    ));
    assert!(enc(
        &image(8, 8),
        &EncodeOptions {
            short_side: None,
            window: Some(Window { size: 4, stride: 8 })
        }
    ));
    // an encoder returning a wrong grid is caught
    let wrong = encode_with(&image(20, 30), &EncodeOptions::full_res(), p, |_, _, _| {
        Ok(WindowOutputs {
            dense: Tensor::zeros((2, 2, e), DType::F32, &dev())?,
            refined: None,
            bkg: None,
            inter: None,
            trunk: None,
        })
    });
    assert!(wrong.is_err());
}

#[test]
fn resizes_short_side_and_cuts_windows() {
    let mut crops = vec![];
    let feats = encode_with(
        &image(90, 130),
        &EncodeOptions {
            short_side: Some(64),
            window: Some(Window {
                size: 64,
                stride: 32,
            }),
        },
        16,
        |i, n, crop| {
            crops.push((i, n, crop.dims().to_vec()));
            fake_encoder(3, 16)(i, n, crop)
        },
    )
    .unwrap();
    assert_eq!((feats.height, feats.width), (64, 92));
    assert_eq!(
        crops,
        vec![(0, 2, vec![3, 64, 64]), (1, 2, vec![3, 64, 64])]
    );
    assert_eq!(
        feats.windows[1].pixels,
        PixelBox {
            y0: 0,
            x0: 28,
            height: 64,
            width: 64
        }
    );
    assert_eq!(feats.windows[1].grid, (4, 4));
}

#[test]
fn patch_grid_averages_aligned_windows() {
    // window stride and image size multiples of the patch: global cell (r, c) gets the mean of
    // the window patches sitting on it; with position-only features that mean is exact.
    let (e, p) = (3, 4);
    let opts = EncodeOptions {
        short_side: None,
        window: Some(Window {
            size: 16,
            stride: 8,
        }),
    };
    let feats = encode_with(&image(24, 32), &opts, p, |_, _, crop| {
        let (_, h, w) = crop.dims3()?;
        let (gh, gw) = (h / p, w / p);
        let v: Vec<f32> = (0..gh * gw * e).map(|k| k as f32).collect();
        Ok(WindowOutputs {
            dense: Tensor::from_vec(v, (gh, gw, e), &Device::Cpu)?,
            refined: None,
            bkg: None,
            inter: None,
            trunk: None,
        })
    })
    .unwrap();
    assert_eq!(feats.windows.len(), 6);
    let g = feats.patch_grid(FeatureKind::Raw).unwrap();
    assert_eq!(g.dims(), &[6, 8, 3]);
    let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    // independent count: each window covers 4×4 cells starting at (y0/p, x0/p)
    let mut acc = [0f32; 6 * 8 * 3];
    let mut cnt = [0f32; 6 * 8];
    for w in &feats.windows {
        let (r0, c0) = (w.pixels.y0 / p, w.pixels.x0 / p);
        for i in 0..4 {
            for j in 0..4 {
                cnt[(r0 + i) * 8 + c0 + j] += 1.0;
                for k in 0..3 {
                    acc[((r0 + i) * 8 + c0 + j) * 3 + k] += ((i * 4 + j) * 3 + k) as f32;
                }
            }
        }
    }
    for (k, v) in g.iter().enumerate() {
        assert!((v - acc[k] / cnt[k / 3]).abs() < 1e-5);
    }
}

#[test]
fn patch_grid_single_window_is_identity_and_unaligned_windows_fill_every_cell() {
    let (e, p) = (5, 16);
    let feats = encode_with(
        &image(45, 61),
        &EncodeOptions::full_res(),
        p,
        fake_encoder(e, p),
    )
    .unwrap();
    let g = feats.patch_grid(FeatureKind::Refined).unwrap();
    let want = feats.windows[0].refined.as_ref().unwrap();
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(values(&g), values(want));
    // A mode's features: the same grid as the kind it reads; a variant once it is computed.
    let g = feats.patch_grid(FeatureKind::Mode(Mode::Dinoiser)).unwrap();
    assert_eq!(values(&g), values(want));
    let g = feats.patch_grid(FeatureKind::Mode(Mode::MaskClip)).unwrap();
    assert_eq!(values(&g), values(&feats.windows[0].dense));
    assert!(feats.patch_grid(FeatureKind::Mode(Mode::NaClip)).is_err());
    let mut with_variant = feats.clone();
    let naclip = (feats.windows[0].dense.clone() * 2.0).unwrap();
    with_variant.windows[0]
        .variants
        .push((Mode::NaClip.last_block(), naclip.clone()));
    let g = with_variant
        .patch_grid(FeatureKind::Mode(Mode::NaClip))
        .unwrap();
    assert_eq!(values(&g), values(&naclip));
    // 92-wide image, 64-px windows at x0 = 0 and 28: cells 0..6 all get a value
    let opts = EncodeOptions {
        short_side: Some(64),
        window: Some(Window {
            size: 64,
            stride: 64,
        }),
    };
    let feats = encode_with(&image(90, 130), &opts, p, fake_encoder(e, p)).unwrap();
    let g = feats.patch_grid(FeatureKind::Raw).unwrap();
    assert_eq!(g.dims(), &[4, 6, e]);
    let norms = g
        .sqr()
        .unwrap()
        .sum(2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(norms.iter().all(|&n| n > 0.0), "{norms:?}");
}

#[test]
fn grid_to_pixels_maps_original_pixels_to_cells() {
    let (e, p) = (2, 16);
    // 45×61 original, full res: grid 3×4, padding cells never show
    let feats = encode_with(
        &image(45, 61),
        &EncodeOptions::full_res(),
        p,
        fake_encoder(e, p),
    )
    .unwrap();
    let grid: Vec<u32> = (0..12).collect();
    let px = feats.grid_to_pixels(&grid, 45, 61).unwrap();
    assert_eq!(px[0], 0);
    assert_eq!(px[15], 0);
    assert_eq!(px[16], 1);
    assert_eq!(px[44 * 61 + 60], 11);
    assert_eq!(px[32 * 61], 8);
    assert!(feats.grid_to_pixels(&grid[..5], 45, 61).is_err());
}

#[test]
fn presets_round_trip() {
    for p in Preset::ALL {
        assert_eq!(p.name().parse::<Preset>().unwrap(), p);
    }
    assert!("nope".parse::<Preset>().is_err());
    assert_eq!(
        Preset::Paper.options().window,
        Some(Window {
            size: 448,
            stride: 224
        })
    );
    assert_eq!(Preset::FullRes.options().short_side, None);
    assert_eq!(Preset::Balanced.short_side(), Some(336));
    assert_eq!(Preset::Paper.window(), Preset::Paper.options().window);
}

/// The serialised names (app protocol, benchmark steps) are the names users type.
#[test]
fn enums_serialise_as_their_names() {
    let json = |v: serde_json::Value| v.as_str().unwrap().to_string();
    for p in Preset::ALL {
        assert_eq!(json(serde_json::to_value(p).unwrap()), p.name());
        assert_eq!(
            serde_json::from_value::<Preset>(p.name().into()).unwrap(),
            p
        );
    }
    for (m, name) in [(Mode::Dinoiser, "dinoiser"), (Mode::MaskClip, "maskclip")] {
        assert_eq!(json(serde_json::to_value(m).unwrap()), name);
    }
    for t in crate::templates::TemplateSet::ALL {
        assert_eq!(json(serde_json::to_value(t).unwrap()), t.name());
    }
    for (c, name) in [
        (ComputePath::F32, "f32"),
        (ComputePath::Quantized, "quantized"),
        (ComputePath::Int, "int"),
    ] {
        assert_eq!(json(serde_json::to_value(c).unwrap()), name);
        assert_eq!(
            serde_json::from_value::<ComputePath>(name.into()).unwrap(),
            c
        );
    }
}

/// `segment` must stay cheap: the paper preset on a 480×640 photo (two 448² windows at
/// 448×597) with 10 labels, features already encoded.
#[test]
fn segment_is_cheap() {
    let (e, l, p) = (512, 10, 16);
    let feats = encode_with(
        &image(480, 640),
        &EncodeOptions::paper(),
        p,
        fake_encoder(e, p),
    )
    .unwrap();
    assert_eq!(feats.windows.len(), 2);
    let lab = labels(l, e);
    let opts = SegmentOptions {
        mode: Mode::Dinoiser,
        background: Some(0),
        output_size: None,
        ..Default::default()
    };
    let _ = segment_features(&feats, &lab, &opts).unwrap();
    let t = std::time::Instant::now();
    let runs = 5;
    for _ in 0..runs {
        let s = segment_features(&feats, &lab, &opts).unwrap();
        assert_eq!(s.labels.len(), 480 * 640);
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0 / runs as f64;
    println!("segment (paper preset, 480×640, 10 labels): {ms:.1} ms");
    // generous bound: the point is that nothing re-encodes (an encode takes seconds)
    assert!(ms < 2000.0, "{ms} ms");
}

/// A head is refused on weights it was not trained for, whoever builds the segmenter: QuickGELU
/// (OpenAI) towers and towers of another width or depth.
#[test]
fn segmenter_refuses_a_head_that_does_not_fit() {
    use crate::loaders::{random_clip_store, random_head_store};
    use crate::{Activation, ComputePath, Vb};
    let build = |cfg: &ClipConfig, head: &HeadConfig| {
        let mut store = random_clip_store(cfg, 1);
        store.merge(random_head_store(head, 2), "dinoiser.");
        let vb = Vb::new(std::sync::Arc::new(store), dev(), ComputePath::F32);
        Segmenter::new(&vb, cfg, Some(head))
    };
    let cfg = ClipConfig::tiny();
    let head = HeadConfig::for_clip(&cfg, 16);
    assert!(build(&cfg, &head).is_ok());
    let quick = ClipConfig {
        activation: Activation::QuickGelu,
        ..cfg.clone()
    };
    let err = build(&quick, &head).err().expect("refused").to_string();
    assert!(err.contains("OpenAI"), "{err}");
    let narrow = HeadConfig {
        in_dim: cfg.vision.width / 2,
        ..head.clone()
    };
    let err = build(&cfg, &narrow).err().expect("refused").to_string();
    assert!(err.contains("in_dim"), "{err}");
}

/// The stepwise encode (a tower awaited between windows) gives what `encode_image` gives, and
/// refuses to finish with windows missing or to take more windows than planned.
#[test]
fn stepwise_encode_matches_encode_image() {
    use crate::loaders::{random_clip_store, random_head_store};
    use crate::{ComputePath, Vb};
    let cfg = ClipConfig::tiny();
    let head = HeadConfig::for_clip(&cfg, 16);
    let mut store = random_clip_store(&cfg, 3);
    store.merge(random_head_store(&head, 4), "dinoiser.");
    let vb = Vb::new(std::sync::Arc::new(store), dev(), ComputePath::F32);
    let seg = Segmenter::new(&vb, &cfg, Some(&head)).unwrap();
    let img = image(40, 72);
    let opts = EncodeOptions {
        short_side: Some(32),
        window: Some(Window {
            size: 32,
            stride: 16,
        }),
    };
    let want = seg.encode_image(&img, &opts, &mut |_| {}).unwrap();
    assert!(want.windows.len() > 1, "several windows");
    let mut enc = seg.begin_encode(&img, &opts).unwrap();
    let mut seen = Vec::new();
    while let Some((pixels, i, n)) = enc.next_pixels().unwrap() {
        seen.push((i, n));
        let out = seg
            .clip
            .vision
            .forward(&pixels, enc.layer(), &mut |_, _| {})
            .unwrap();
        enc.push(out).unwrap();
    }
    let n = want.windows.len();
    assert_eq!(seen, (0..n).map(|i| (i, n)).collect::<Vec<_>>());
    let got = enc.finish().unwrap();
    assert_eq!(got.windows.len(), n);
    for (g, w) in got.windows.iter().zip(&want.windows) {
        assert_eq!(g.pixels, w.pixels);
        for (a, b) in [
            (&g.dense, &w.dense),
            (g.refined.as_ref().unwrap(), w.refined.as_ref().unwrap()),
            (g.bkg.as_ref().unwrap(), w.bkg.as_ref().unwrap()),
        ] {
            let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
            assert_eq!(d.max(0).unwrap().to_scalar::<f32>().unwrap(), 0.0);
        }
    }
    // Finishing early, or pushing a window too many, is an error in words.
    let enc = seg.begin_encode(&img, &opts).unwrap();
    let err = enc.finish().expect_err("windows missing").to_string();
    assert!(err.contains(&format!("0 of {n} windows")), "{err}");
    let mut enc = seg.begin_encode(&img, &opts).unwrap();
    let mut last = None;
    while let Some((pixels, _, _)) = enc.next_pixels().unwrap() {
        let out = seg
            .clip
            .vision
            .forward(&pixels, enc.layer(), &mut |_, _| {})
            .unwrap();
        last = Some(out.clone());
        enc.push(out).unwrap();
    }
    let err = enc
        .push(last.unwrap())
        .expect_err("one too many")
        .to_string();
    assert!(err.contains(&format!("window {n} of {n}")), "{err}");
}

//! The GPU image tower against upstream open_clip's outputs (the committed fixtures of
//! `tests/fixtures/`, written by `tests/reference/make_fixtures.py`) and against the CPU tower,
//! on whatever adapter the platform offers (lavapipe after `scripts/setup.sh`; no adapter fails).
//!
//! Tolerance: `max |Δ| ≤ 1e-3 · max(1, max |want|)` (f32 throughout; the realistic fixture's
//! activations reach ~20, so its errors are taken relative to that scale).
#![cfg(not(target_arch = "wasm32"))]

// The model crate's test helpers (fixture files, scale-relative differences), shared rather than
// written again.
#[path = "../../clipdino/tests/common/mod.rs"]
mod model_tests;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use clipdino::clip::{preprocess, ClipModel, VisionOutput};
use clipdino::loaders::{load_model_files, read_gguf_bundle, write_gguf_bundle, Bundle, Quant};
use clipdino::pipeline::{EncodeOptions, Mode, SegmentOptions, Segmenter, Window};
use clipdino::{ComputePath, Vb};
use clipdino_gpu::{block_on, Gpu, GpuError, GpuVision, GpuWeights, WeightFormat};

const TOL: f32 = 1e-3;

struct Fixture {
    bundle: Bundle,
    expected: HashMap<String, Tensor>,
}

fn load(dir: &str) -> Fixture {
    let files: Vec<(String, Vec<u8>)> = [
        "open_clip_model.safetensors",
        "open_clip_config.json",
        "last.pt",
    ]
    .iter()
    .map(|n| (n.to_string(), model_tests::fixture::read(dir, n)))
    .collect();
    Fixture {
        bundle: load_model_files(&files).expect("fixture loads"),
        expected: model_tests::fixture::expected(dir),
    }
}

fn check(label: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let d = model_tests::scaled_diff(got, want);
    println!("{label}: scaled max |Δ| = {d:.2e}");
    assert!(d <= tol, "{label}: scaled max |Δ| {d:e} > {tol:e}");
}

fn gpu() -> Gpu {
    let gpu = block_on(Gpu::new()).unwrap_or_else(|e| {
        panic!("{e}: install a Vulkan driver (scripts/setup.sh installs Mesa's lavapipe)")
    });
    println!("adapter: {}", gpu.describe());
    gpu
}

fn run(dir: &str, inter_layer: impl Fn(&Fixture) -> usize) {
    let f = load(dir);
    let gpu = gpu();
    let cfg = f.bundle.clip.clone();
    let vb = Vb::new(
        Arc::new(f.bundle.store.clone()),
        Device::Cpu,
        ComputePath::F32,
    );
    let cpu = ClipModel::new(&vb, &cfg).expect("CPU model");
    let tower = GpuVision::new(&gpu, &vb.pp("visual"), &cfg).expect("upload");
    let layer = inter_layer(&f);
    let p = cfg.vision.patch_size;
    let want = |k: &str| {
        f.expected
            .get(k)
            .unwrap_or_else(|| panic!("expected.safetensors has no `{k}`"))
    };
    let gpu_forward = |x: &Tensor, layer: usize| -> VisionOutput {
        let mut calls = 0;
        let out = block_on(tower.forward(&gpu, &cpu.vision, x, layer, &mut |_, _| calls += 1))
            .expect("GPU forward");
        assert_eq!(calls, cfg.vision.layers, "progress calls");
        out
    };

    let x = preprocess(want("img224.image"), p).unwrap();
    let out = gpu_forward(&x, layer);
    check("img224.pooled", &out.pooled, want("img224.pooled"), TOL);
    for key in ["a", "b"] {
        let x = preprocess(want(&format!("{key}.image")), p).unwrap();
        let out = gpu_forward(&x, layer);
        for (name, got) in [("dense", &out.dense), ("inter", &out.inter)] {
            let k = format!("{key}.{name}");
            check(&k, got, want(&k), TOL);
        }
        // Against the CPU tower: the same tensors, and the cached last-block input, from which
        // the CPU computes the other last-block variants.
        let c = cpu.vision.forward(&x, layer, &mut |_, _| {}).unwrap();
        check(
            &format!("{key}.trunk vs CPU"),
            &out.trunk.tokens,
            &c.trunk.tokens,
            TOL,
        );
        assert_eq!(out.trunk.grid, c.trunk.grid);
        check(&format!("{key}.pooled vs CPU"), &out.pooled, &c.pooled, TOL);
        // The ln_2 tap of the last block takes the full-attention branch of the last block.
        let last = cfg.vision.layers - 1;
        let g = gpu_forward(&x, last);
        let c = cpu.vision.forward(&x, last, &mut |_, _| {}).unwrap();
        check(
            &format!("{key}.inter (last block) vs CPU"),
            &g.inter,
            &c.inter,
            TOL,
        );
        check(
            &format!("{key}.dense (last block tap) vs CPU"),
            &g.dense,
            &c.dense,
            TOL,
        );
    }
}

#[test]
fn tiny_tower_matches_open_clip() {
    // tests/fixtures/tiny stores the ln_2 output of block L−3.
    run("tiny", |f| f.bundle.clip.vision.layers - 3);
}

#[test]
fn realistic_tower_matches_open_clip() {
    // tests/fixtures/tiny-realistic stores the head's layer (LayerNorm outlier channels, massive
    // activations).
    run("tiny-realistic", |f| {
        f.bundle.head.as_ref().expect("head config").layer
    });
}

/// The fixture converted to the Q8_0 and F16 bundles: the tower with its matrices compact on the
/// device (Q8_0 blocks as stored, f16 halves; `GpuVision::new`'s default) against the CPU tower
/// on the same bundle (dequantized to f32 at load), tensor by tensor, and the label maps of the
/// whole pipeline (head, background rule; images `a`, `b` whole, `c` in 64-px windows) with
/// either tower.
fn compact(dir: &str) {
    let f = load(dir);
    let gpu = gpu();
    let labels = f.expected["labels"].to_dtype(DType::F32).unwrap();
    let image = |k: &str| f.expected[k].to_dtype(DType::F32).unwrap();
    let sopts = SegmentOptions {
        mode: Mode::Dinoiser,
        background: Some(2),
        output_size: None,
        ..Default::default()
    };
    for (quant, format) in [
        (Quant::Q8_0, WeightFormat::Q8),
        (Quant::F16, WeightFormat::F16),
    ] {
        let bytes = write_gguf_bundle(&f.bundle, quant).unwrap();
        let bundle = read_gguf_bundle(&bytes, "bundle.gguf").unwrap();
        let cfg = bundle.clip.clone();
        let vb = Vb::new(
            Arc::new(bundle.store.clone()),
            Device::Cpu,
            ComputePath::F32,
        )
        .pp("visual");
        let tower = GpuVision::new(&gpu, &vb, &cfg).expect("upload");
        let wide = GpuVision::with_weights(&gpu, &vb, &cfg, GpuWeights::F32).expect("upload");
        let (held, all) = (
            tower.matrix_bytes(format),
            wide.matrix_bytes(WeightFormat::F32),
        );
        println!(
            "{quant}: matrices on the device {held} bytes as {} (f32: {all}); all weights {} vs {} bytes",
            format.name(),
            tower.weight_bytes(),
            wide.weight_bytes()
        );
        for other in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Q8] {
            if other != format {
                assert_eq!(
                    tower.matrix_bytes(other),
                    0,
                    "{quant}: a matrix as {other:?}"
                );
            }
        }
        let ratio = all as f64 / held as f64;
        let want_ratio = if format == WeightFormat::Q8 {
            32.0 / 8.5
        } else {
            2.0
        };
        assert!(
            (ratio - want_ratio).abs() < 0.01,
            "{quant}: f32 / compact = {ratio}"
        );

        let seg = Segmenter::from_bundle(bundle, &Device::Cpu, ComputePath::F32).unwrap();
        let layer = seg.head_cfg.layer;
        let p = cfg.vision.patch_size;
        for key in ["a", "b"] {
            let x = preprocess(&image(&format!("{key}.image")), p).unwrap();
            let c = seg.clip.vision.forward(&x, layer, &mut |_, _| {}).unwrap();
            let g = block_on(tower.forward(&gpu, &seg.clip.vision, &x, layer, &mut |_, _| {}))
                .expect("GPU forward");
            for (name, got, want) in [
                ("pooled", &g.pooled, &c.pooled),
                ("dense", &g.dense, &c.dense),
                ("inter", &g.inter, &c.inter),
                ("trunk", &g.trunk.tokens, &c.trunk.tokens),
            ] {
                check(&format!("{quant} {key}.{name} vs CPU"), got, want, TOL);
            }
        }

        let mut encode_gpu = |pixels: &Tensor, layer: usize, pr: &mut dyn FnMut(usize, usize)| {
            block_on(tower.forward(&gpu, &seg.clip.vision, pixels, layer, pr)).map_err(
                |e| match e {
                    GpuError::Model(e) => e,
                    e => panic!("GPU: {e}"),
                },
            )
        };
        let (mut same, mut pixels) = (0, 0);
        let windows = EncodeOptions {
            short_side: Some(64),
            window: Some(Window {
                size: 64,
                stride: 32,
            }),
        };
        for (key, opts) in [
            ("a", EncodeOptions::full_res()),
            ("b", EncodeOptions::full_res()),
            ("c", windows),
        ] {
            let img = image(&format!("{key}.image"));
            let cpu = seg.encode_image(&img, &opts, &mut |_| {}).unwrap();
            let gpu_feats = seg
                .encode_image_with(&img, &opts, &mut |_| {}, &mut encode_gpu)
                .unwrap();
            let want = seg.segment(&cpu, &labels, &sopts).unwrap().labels;
            let got = seg.segment(&gpu_feats, &labels, &sopts).unwrap().labels;
            assert_eq!(got.len(), want.len());
            same += got.iter().zip(&want).filter(|(g, w)| g == w).count();
            pixels += want.len();
        }
        let rate = same as f64 / pixels as f64;
        println!(
            "{quant}: label maps GPU vs CPU agree on {same}/{pixels} px = {:.3}%",
            100.0 * rate
        );
        assert!(
            rate >= 0.999,
            "{quant}: label maps agree on {:.3}%",
            100.0 * rate
        );
    }
}

#[test]
fn tiny_compact_tower_matches_cpu_on_the_same_bundle() {
    compact("tiny");
}

#[test]
fn realistic_compact_tower_matches_cpu_on_the_same_bundle() {
    compact("tiny-realistic");
}

#[test]
fn self_check_passes_for_both_activations() {
    let gpu = block_on(Gpu::new()).expect("adapter");
    for act in [clipdino::Activation::Gelu, clipdino::Activation::QuickGelu] {
        let worst = block_on(clipdino_gpu::self_check(&gpu, act)).expect("self-check");
        println!("self-check ({act:?}): worst scaled |Δ| {worst:.2e}");
        assert!(worst <= clipdino_gpu::SELF_CHECK_TOLERANCE);
    }
}

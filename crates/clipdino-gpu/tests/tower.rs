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

use candle_core::{Device, Tensor};
use clipdino::clip::{preprocess, ClipModel, VisionOutput};
use clipdino::loaders::{load_model_files, Bundle};
use clipdino::{ComputePath, Vb};
use clipdino_gpu::{block_on, Gpu, GpuVision};

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

fn run(dir: &str, inter_layer: impl Fn(&Fixture) -> usize) {
    let f = load(dir);
    let gpu = block_on(Gpu::new()).unwrap_or_else(|e| {
        panic!("{e}: install a Vulkan driver (scripts/setup.sh installs Mesa's lavapipe)")
    });
    println!("adapter: {}", gpu.describe());
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

#[test]
fn self_check_passes_for_both_activations() {
    let gpu = block_on(Gpu::new()).expect("adapter");
    for act in [clipdino::Activation::Gelu, clipdino::Activation::QuickGelu] {
        let worst = block_on(clipdino_gpu::self_check(&gpu, act)).expect("self-check");
        println!("self-check ({act:?}): worst scaled |Δ| {worst:.2e}");
        assert!(worst <= clipdino_gpu::SELF_CHECK_TOLERANCE);
    }
}

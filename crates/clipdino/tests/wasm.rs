//! The same forward passes as the native parity tests, run in headless Chromium through
//! wasm32 + simd128 (`cargo test -p clipdino --target wasm32-unknown-unknown --test wasm`, see
//! `scripts/test.sh`). The fixtures are compiled in, since the browser has no filesystem:
//! the upstream files in `tests/fixtures/tiny/` go through the same byte loaders the app uses,
//! and every output is compared with the upstream PyTorch results (`expected.safetensors`).
//! K-Means is compared with the assignments the native build computes (`tests/fixtures/kmeans/`).
#![cfg(target_arch = "wasm32")]

mod common;
#[path = "support/hostile.rs"]
mod hostile;
#[path = "support/openai.rs"]
mod openai;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use clipdino::kmeans::{kmeans_tensor, KMeansOptions};
use clipdino::loaders::load_model_files;
use clipdino::pipeline::{EncodeOptions, Mode, SegmentOptions, Segmenter};
use clipdino::ComputePath;
use common::{get, label_map, token_rows};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const TOL: f32 = 1e-4;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/",
            $name
        ))
        .as_slice()
    };
}

fn segmenter() -> Segmenter {
    segmenter_on(ComputePath::F32)
}

fn segmenter_on(path: ComputePath) -> Segmenter {
    let files = vec![
        (
            "open_clip_model.safetensors".to_string(),
            fixture!("tiny/open_clip_model.safetensors").to_vec(),
        ),
        (
            "open_clip_config.json".to_string(),
            fixture!("tiny/open_clip_config.json").to_vec(),
        ),
        ("last.pt".to_string(), fixture!("tiny/last.pt").to_vec()),
    ];
    let bundle = load_model_files(&files).expect("load tiny model");
    Segmenter::from_bundle(bundle, &Device::Cpu, path).expect("segmenter")
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load_buffer(fixture!("tiny/expected.safetensors"), &Device::Cpu)
        .expect("expected")
}

/// The realistic-statistics fixture (`tests/fixtures/tiny-realistic/`).
fn realistic_bundle() -> clipdino::loaders::Bundle {
    let files = vec![
        (
            "open_clip_model.safetensors".to_string(),
            fixture!("tiny-realistic/open_clip_model.safetensors").to_vec(),
        ),
        (
            "open_clip_config.json".to_string(),
            fixture!("tiny-realistic/open_clip_config.json").to_vec(),
        ),
        (
            "last.pt".to_string(),
            fixture!("tiny-realistic/last.pt").to_vec(),
        ),
    ];
    load_model_files(&files).expect("load the realistic tiny model")
}

fn realistic_expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load_buffer(
        fixture!("tiny-realistic/expected.safetensors"),
        &Device::Cpu,
    )
    .expect("expected")
}

/// `max |Δ| / max(1, max |want|)` ≤ 1e-4, as natively (tests/parity_realistic.rs).
fn scaled(name: &str, got: &Tensor, want: &Tensor) {
    let d = common::scaled_diff(got, want);
    web_sys_log(&format!("wasm realistic {name}: scaled max |Δ| = {d:.3e}"));
    assert!(d <= TOL, "{name}: scaled max |Δ| = {d} > {TOL}");
}

fn max_abs(name: &str, got: &Tensor, want: &Tensor) -> f32 {
    let d = common::max_abs_diff(got, want);
    web_sys_log(&format!("wasm parity {name}: max |Δ| = {d:.3e}"));
    assert!(d <= TOL, "{name}: max |Δ| = {d} > {TOL}");
    d
}

fn web_sys_log(s: &str) {
    wasm_bindgen_test::console_log!("{}", s);
}

#[wasm_bindgen_test]
fn text_tower_matches_upstream() {
    let seg = segmenter();
    let exp = expected();
    let got = seg
        .clip
        .text
        .forward(&token_rows(&exp["text.tokens"]))
        .unwrap();
    max_abs("text.embeddings", &got, &get(&exp, "text.embeddings"));
}

/// Image tower, head and pipeline at full resolution (images `a`, `b`) and through the sliding
/// windows (image `c`), as natively (`common::pipeline`).
#[wasm_bindgen_test]
fn image_tower_head_and_segmentation_match_upstream() {
    let close = |name: &str, got: &Tensor, want: &Tensor| {
        max_abs(name, got, want);
    };
    common::pipeline::check(&segmenter(), &expected(), 2, &close, &web_sys_log);
}

/// The simd128 integer kernel gives bit-identical results to the scalar one-output-at-a-time
/// reference (exact integer sums), on ragged shapes and on the tower's own shapes.
#[wasm_bindgen_test]
fn integer_kernel_is_exact_in_wasm() {
    use clipdino::intgemm::PackedLinear;
    let mut state = 0x9e37_79b9_u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state as f32 / u32::MAX as f32) * 2.0 - 1.0
    };
    for (m, n, k) in [
        (1, 1, 3),
        (7, 5, 45),
        (17, 33, 200),
        (50, 2304, 768),
        (9, 768, 3072),
    ] {
        let w: Vec<f32> = (0..n * k).map(|_| next() * 0.05).collect();
        let b: Vec<f32> = (0..n).map(|_| next()).collect();
        let mut x: Vec<f32> = (0..m * k).map(|_| next() * 3.0).collect();
        // massive values on a few rows, for the wide channels
        for i in (0..m).step_by(3) {
            x[i * k + (7 * i) % k] = 800.0;
        }
        for wide in [0, clipdino::intgemm::WIDE_CHANNELS] {
            let p = PackedLinear::new("w", &w, n, k, Some(b.clone()))
                .unwrap()
                .with_wide_channels(wide);
            assert!(
                p.matmul(&x, m) == p.matmul_reference(&x, m),
                "[{m}, {k}] x [{n}, {k}]ᵀ with {wide} wide channels differs"
            );
        }
    }
}

/// The app's compute path in the browser: the towers' linear layers on the integer kernel stay
/// within a cosine of 1e-4 of upstream and give the same label maps on ≥ 99 % of pixels.
#[wasm_bindgen_test]
fn integer_compute_path_stays_close_to_upstream() {
    let seg = segmenter_on(ComputePath::Int);
    let exp = expected();
    let labels = get(&exp, "labels");
    let (mut same, mut total) = (0, 0);
    for key in ["a", "b"] {
        let image = get(&exp, &format!("{key}.image"));
        let feats = seg
            .encode_image(&image, &EncodeOptions::full_res(), &mut |_| {})
            .unwrap();
        let w = &feats.windows[0];
        for (name, got) in [
            ("dense", &w.dense),
            ("refined", w.refined.as_ref().unwrap()),
        ] {
            let want = get(&exp, &format!("{key}.{name}"));
            let (_, cos) = common::patch_cosine(got, &want);
            web_sys_log(&format!("wasm Int path {key}.{name}: min cosine {cos:.6}"));
            assert!(cos > 0.9999, "{key}.{name}: min cosine {cos}");
        }
        let opts = SegmentOptions {
            mode: Mode::Dinoiser,
            background: Some(2),
            output_size: None,
            ..Default::default()
        };
        let out = seg.segment(&feats, &labels, &opts).unwrap();
        let want = label_map(&exp, &format!("{key}.labelmap"));
        same += out.labels.iter().zip(&want).filter(|(a, b)| a == b).count();
        total += want.len();
    }
    web_sys_log(&format!(
        "wasm Int path: label maps agree on {same}/{total} px"
    ));
    assert!(
        same as f64 >= 0.99 * total as f64,
        "labels agree on {same}/{total}"
    );
}

/// The realistic-statistics model (heavy-tailed weights, LayerNorm outlier gains, massive
/// activations) in the browser: same outputs as upstream PyTorch, same label maps.
#[wasm_bindgen_test]
fn realistic_model_matches_upstream() {
    let seg = Segmenter::from_bundle(realistic_bundle(), &Device::Cpu, ComputePath::F32).unwrap();
    let exp = realistic_expected();
    let got = seg
        .clip
        .text
        .forward(&token_rows(&exp["text.tokens"]))
        .unwrap();
    scaled("text.embeddings", &got, &get(&exp, "text.embeddings"));
    common::pipeline::check(&seg, &exp, 2, &scaled, &web_sys_log);
}

#[wasm_bindgen_test]
fn kmeans_matches_native() {
    let exp = expected();
    let golden: serde_json::Value = serde_json::from_slice(fixture!("kmeans/native.json")).unwrap();
    for case in golden["cases"].as_array().unwrap() {
        let key = case["features"].as_str().unwrap();
        let k = case["k"].as_u64().unwrap() as usize;
        let feats = get(&exp, key);
        let (h, w, d) = feats.dims3().unwrap();
        let km =
            kmeans_tensor(&feats.reshape((h * w, d)).unwrap(), &KMeansOptions::new(k)).unwrap();
        let want: Vec<u32> = case["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            km.assignments, want,
            "k-means {key} k={k}: wasm differs from native"
        );
    }
}

#[wasm_bindgen_test]
fn random_weights_match_native() {
    // The same seeded weights natively and in the browser (the bits are pinned natively in
    // tests/loaders.rs): page tests and benchmarks rely on `clipdino random-weights` files.
    let cfg: clipdino::ClipConfig = serde_json::from_value(serde_json::json!({
        "embed_dim": 32,
        "vision": {"width": 64, "layers": 3, "heads": 2, "patch_size": 4, "image_size": 16, "mlp_dim": 256},
        "text": {"width": 64, "layers": 1, "heads": 2, "context_length": 8, "vocab_size": 96, "mlp_dim": 256}
    }))
    .unwrap();
    let store = clipdino::loaders::random_clip_store(&cfg, 42);
    let t = store
        .get("visual.class_embedding")
        .unwrap()
        .to_f32(&Device::Cpu)
        .unwrap();
    let first: Vec<u32> = t.to_vec1::<f32>().unwrap()[..4]
        .iter()
        .map(|x| x.to_bits())
        .collect();
    assert_eq!(first, [0x3e0ea8fa, 0x3e0f464d, 0xbe9d91d5, 0x3d89aaa9]);
}

#[wasm_bindgen_test]
fn hostile_files_are_errors_on_a_32_bit_target() {
    use clipdino::loaders::{read_gguf_bundle, read_safetensors, read_torch_pickle};
    use clipdino::loaders::{LoadBudget, LoadMeter};
    use hostile::*;
    // usize is 32 bits here: sizes that fit in 64 bits must be refused, not wrapped.
    assert_eq!(usize::BITS, 32);
    let cfg = r#"{"embed_dim":32,"vision":{"width":64,"layers":3,"heads":2,"patch_size":4,"image_size":16,"mlp_dim":256},"text":{"width":64,"layers":1,"heads":2,"context_length":8,"vocab_size":96,"mlp_dim":256}}"#;
    let msg = |r: clipdino::Result<()>| r.expect_err("refused").to_string();
    // GGUF: a dimension of 2^33; a stored config whose grid would wrap `grid*grid+1`.
    let g = gguf_file(&bundle_meta(cfg), &[("x", &[1 << 33, 1], 0, 0)], &[]);
    let e = msg(read_gguf_bundle(&g, "dims.gguf").map(|_| ()));
    assert!(e.contains("dims.gguf") && e.contains("`x`"), "{e}");
    let wide = cfg.replace(r#""image_size":16"#, r#""image_size":4194304"#);
    let g = gguf_file(&bundle_meta(&wide), &[], &[]);
    let e = msg(read_gguf_bundle(&g, "grid.gguf").map(|_| ()));
    assert!(e.contains("vision_cfg.image_size"), "{e}");
    let mut meta = bundle_meta(cfg);
    meta.push(("general.alignment", Gguf::I32(0)));
    let e = msg(read_gguf_bundle(&gguf_file(&meta, &[], &[]), "a.gguf").map(|_| ()));
    assert!(e.contains("general.alignment"), "{e}");
    // safetensors: 2^33 elements; an empty tensor whose strides overflow 32 bits.
    for (shape, what) in [("[8589934592]", "big"), ("[0,65536,65536,2]", "empty")] {
        let hdr = format!(r#"{{"w":{{"dtype":"F32","shape":{shape},"data_offsets":[0,0]}}}}"#);
        let e = msg(read_safetensors(&safetensors_file(&hdr, &[]), what).map(|_| ()));
        assert!(e.contains(what) && e.contains("`w`"), "{e}");
    }
    // torch: views of one storage, within a small budget.
    let views = shared_storage_views(20, 1 << 16);
    let mut meter = LoadMeter::new(LoadBudget::with_max_bytes(1 << 20));
    let e = clipdino::loaders::read_torch_pickle_metered(&views, "views.pt", &mut meter)
        .unwrap_err()
        .to_string();
    assert!(e.contains("views.pt") && e.contains("budget"), "{e}");
    let e = msg(read_torch_pickle(&torch_zip(&os_system_pickle("ls"), &[]), "o.pt").map(|_| ()));
    assert!(e.contains("os.system"), "{e}");
}

/// OpenAI-CLIP (QuickGELU) weights in the open_clip layout, the transformers safetensors and
/// the transformers `.bin`, each against its upstream library (as `tests/parity_openai.rs`).
#[wasm_bindgen_test]
fn openai_weights_match_upstream_in_both_layouts() {
    for layout in openai::LAYOUTS {
        let worst = openai::check_layout(layout, &web_sys_log);
        web_sys_log(&format!("wasm openai {layout:?}: worst {worst:.3e}"));
    }
}

/// candle-transformers' own CLIP on the transformers-layout file agrees with ours in wasm too.
#[wasm_bindgen_test]
fn openai_transformers_layout_agrees_with_candle_transformers() {
    openai::check_candle_transformers(&web_sys_log);
}

/// ClearCLIP / NACLIP / SCLIP and PAMR on OpenAI's weights in every layout, CLIP-DINOiser
/// refused (as `tests/parity_openai.rs`).
#[wasm_bindgen_test]
fn openai_methods_and_pamr_match_upstream_in_every_layout() {
    for layout in openai::LAYOUTS {
        openai::check_methods(layout, &|s| web_sys_log(&format!("wasm {s}")));
    }
}

/// ClearCLIP / NACLIP / SCLIP and PAMR in the browser: the same checks as natively
/// (`tests/parity_methods.rs`, shared in `common::methods`), on both tiny models.
#[wasm_bindgen_test]
fn methods_and_pamr_match_upstream() {
    let runs = [
        (
            segmenter(),
            expected(),
            fixture!("tiny/methods.safetensors"),
        ),
        (
            Segmenter::from_bundle(realistic_bundle(), &Device::Cpu, ComputePath::F32).unwrap(),
            realistic_expected(),
            fixture!("tiny-realistic/methods.safetensors"),
        ),
    ];
    for (seg, exp, meth) in runs {
        let meth = candle_core::safetensors::load_buffer(meth, &Device::Cpu).expect("methods");
        common::methods::check(&seg, &exp, &meth, 2, TOL, &|s| {
            web_sys_log(&format!("wasm {s}"))
        });
    }
}

/// A diagnostic, not a check: PAMR's cost in this build (10 labels, 10 iterations, dilations
/// 8 and 16) at the processed sizes of a 4:3 photo at the app's 336 and the paper's 448, printed
/// as the median of 3 runs. The benchmark (`clipdino bench --plan methods`) times the same
/// natively; the numbers are quoted in BENCHMARKS.md.
#[wasm_bindgen_test]
fn pamr_cost_diagnostic() {
    use clipdino::pamr::{pamr, PAMR_DILATIONS, PAMR_ITERATIONS};
    let labels = 10;
    for (h, w) in [(336, 448), (448, 597)] {
        let n = h * w;
        let image: Vec<f32> = (0..3 * n)
            .map(|i: usize| (i.wrapping_mul(7919) % 256) as f32 / 255.0)
            .collect();
        let probs: Vec<f32> = (0..labels * n)
            .map(|i: usize| (i.wrapping_mul(104_729) % 1000) as f32 / 1000.0)
            .collect();
        let mut times = Vec::new();
        for _ in 0..3 {
            let mut p = probs.clone();
            let t0 = js_sys::Date::now();
            pamr(
                &image,
                3,
                &mut p,
                labels,
                (h, w),
                PAMR_ITERATIONS,
                &PAMR_DILATIONS,
            )
            .unwrap();
            times.push(js_sys::Date::now() - t0);
            assert!(p.iter().all(|v| v.is_finite()));
        }
        times.sort_by(f64::total_cmp);
        web_sys_log(&format!(
            "wasm PAMR {w}×{h}, {labels} labels, {PAMR_ITERATIONS} iterations: median {:.0} ms (runs {times:?})",
            times[1]
        ));
    }
}

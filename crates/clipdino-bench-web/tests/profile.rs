//! The profile times the model's own forward pass through the timing hook: timing must not change
//! what it computes, every op of the tower must be seen, and the op times must fit in the wall
//! time. Checked on a tiny random model, on each compute path.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use clipdino::loaders::{self, Bundle, Quant};
use clipdino::pipeline::Segmenter;
use clipdino::{ClipConfig, ComputePath, HeadConfig};
use clipdino_bench_web::profile;
use clipdino_bench_web::stats::Runs;
use clipdino_bench_web::suite::{self, PlanKind, Step};
use serde_json::{json, Value};

fn tiny() -> Bundle {
    let mut clip = ClipConfig::tiny();
    clip.text.vocab_size = 512;
    let head = HeadConfig::for_clip(&clip, 32);
    let mut store = loaders::random_clip_store(&clip, 3);
    store.merge(loaders::random_head_store(&head, 4), "dinoiser.");
    Bundle {
        clip,
        head: Some(head),
        store,
    }
}

fn pixels() -> Tensor {
    let v: Vec<f32> = (0..3 * 48 * 80)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    Tensor::from_vec(v, (1, 3, 48, 80), &Device::Cpu).unwrap()
}

fn profile_of(bundle: Bundle, path: ComputePath) -> Value {
    let Bundle { clip, head, store } = bundle;
    let vb = clipdino::Vb::new(Arc::new(store), Device::Cpu, path);
    let seg = Segmenter::new(&vb, &clip, head.as_ref()).unwrap();
    profile::profile_tower(
        &seg,
        &pixels(),
        Runs {
            runs: 2,
            warmup: false,
        },
    )
    .unwrap()
}

/// Every op the tower runs, by the names the hook gives them.
const OPS: [&str; 13] = [
    "patch embedding (unfold + matmul)",
    "positional embedding (bicubic resize)",
    "cls + positional add",
    "layernorm",
    "matmul attn.in_proj (qkv)",
    "attention split heads (copy)",
    "attention q scale",
    "attention q·kᵀ, softmax, probs·v (by head)",
    "attention merge heads (copy)",
    "matmul attn.out_proj",
    "matmul mlp.c_fc",
    "gelu (erf)",
    "matmul mlp.c_proj",
];

fn check(r: &Value, what: &str) {
    let d = &r["timed_vs_untimed_max_abs_diff"];
    for k in ["pooled", "dense", "inter"] {
        assert_eq!(
            d[k].as_f64(),
            Some(0.0),
            "{what}: timing changed `{k}`: {d}"
        );
    }
    let ops: Vec<&Value> = r["ops"].as_array().unwrap().iter().collect();
    let find = |name: &str| ops.iter().find(|o| o["op"] == name).copied();
    for name in OPS
        .iter()
        .chain(&["residual add", "slicing", "ln_post + visual.proj"])
    {
        let o = find(name).unwrap_or_else(|| panic!("{what}: op `{name}` not timed: {ops:?}"));
        assert!(o["calls"].as_u64().unwrap() > 0, "{what}: {o}");
    }
    // 4 blocks: ln_1 and ln_2 per block, ln_2 once more on the value path, ln_pre, ln_post × 2.
    assert_eq!(find("layernorm").unwrap()["calls"], 4 * 2 + 1 + 3, "{what}");
    // The last block's c_fc runs twice (CLS path and MaskCLIP value path).
    assert_eq!(find("matmul mlp.c_fc").unwrap()["calls"], 5, "{what}");
    for name in OPS
        .iter()
        .filter(|n| n.starts_with("matmul") || n.contains('·'))
    {
        let o = find(name).unwrap();
        assert!(o["gflop"].as_f64().unwrap() > 0.0, "{what}: {o}");
    }
    // Ops do not nest, so their times add up to at most the wall time of the runs.
    let total = r["ops_ms_total"].as_f64().unwrap();
    let wall = r["median_ms"].as_f64().unwrap();
    assert!(
        total > 0.0 && total <= r["max_ms"].as_f64().unwrap() + 1e-9,
        "{what}: {total} vs {wall}"
    );
    assert_eq!(r["block_ms"].as_array().unwrap().len(), 4 + 1, "{what}");
}

#[test]
fn the_profile_times_the_real_forward_f32() {
    check(&profile_of(tiny(), ComputePath::F32), "f32");
}

#[test]
fn the_profile_times_the_real_forward_quantized() {
    for q in [Quant::Q8_0, Quant::Q4_0] {
        let bytes = loaders::write_gguf_bundle(&tiny(), q).unwrap();
        let bundle = loaders::read_gguf_bundle(&bytes, "tiny.gguf").unwrap();
        check(&profile_of(bundle, ComputePath::Quantized), &q.to_string());
    }
}

#[test]
fn the_profile_times_the_real_forward_integer_kernel() {
    check(&profile_of(tiny(), ComputePath::Int), "int");
}

/// The steps travel as JSON (bench/worker.js, results.json): their text stays as it was when the
/// bench had its own copies of the compute-path and template enums.
#[test]
fn steps_keep_their_json() {
    let plan = suite::plan(PlanKind::Memory, 3);
    let v = serde_json::to_value(&plan).unwrap();
    assert_eq!(
        v[0],
        json!({"op": "load", "label": "gguf q4_0", "files": ["clip-dinoiser-q4_0.gguf"],
               "compute": "int", "runs": 1, "warmup": false})
    );
    assert_eq!(
        v[1],
        json!({"op": "labels", "labels": 10, "templates": "fast", "runs": 1, "warmup": false})
    );
    assert_eq!(v[2]["preset"], "448-window");
    let back: Vec<Step> = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), v);
    let step: Step = serde_json::from_str(
        r#"{"op":"load","label":"x","files":[],"compute":"quantized","runs":2}"#,
    )
    .unwrap();
    assert!(matches!(
        step,
        Step::Load {
            compute: ComputePath::Quantized,
            runs: Runs {
                runs: 2,
                warmup: true
            },
            ..
        }
    ));
}

//! The instrumented tower replica must compute what the model computes (else its profile would
//! describe another computation): checked on a tiny random model, f32 and quantized bundles.

use candle_core::{Device, Tensor};
use clipdino::loaders::{self, Bundle, Quant};
use clipdino::pipeline::Segmenter;
use clipdino::{ClipConfig, ComputePath, HeadConfig, TextConfig, VisionConfig};
use clipdino_bench_web::profile;
use clipdino_bench_web::suite::Runs;

fn tiny() -> Bundle {
    let clip = ClipConfig {
        embed_dim: 32,
        vision: VisionConfig {
            width: 64,
            layers: 4,
            heads: 2,
            patch_size: 16,
            image_size: 224,
            mlp_dim: 256,
        },
        text: TextConfig {
            width: 64,
            layers: 2,
            heads: 2,
            context_length: 77,
            vocab_size: 512,
            mlp_dim: 256,
        },
    };
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

fn replica_diff(bundle: Bundle, path: ComputePath) -> f64 {
    let Bundle { clip, head, store } = bundle;
    let vb = clipdino::Vb::new(std::sync::Arc::new(store), Device::Cpu, path);
    let seg = Segmenter::new(&vb, &clip, head.as_ref()).unwrap();
    let r = profile::profile_tower(
        &vb,
        &seg,
        &pixels(),
        Runs {
            runs: 1,
            warmup: false,
        },
    )
    .unwrap();
    let d = &r["max_abs_diff_vs_model"];
    ["pooled", "dense", "inter"]
        .iter()
        .map(|k| d[k].as_f64().unwrap())
        .fold(0.0, f64::max)
}

#[test]
fn replica_matches_the_model_f32() {
    let d = replica_diff(tiny(), ComputePath::F32);
    assert!(d < 1e-5, "max |Δ| {d}");
}

#[test]
fn replica_matches_the_model_quantized() {
    for q in [Quant::Q8_0, Quant::Q4_0] {
        let bytes = loaders::write_gguf_bundle(&tiny(), q).unwrap();
        let bundle = loaders::read_gguf_bundle(&bytes, "tiny.gguf").unwrap();
        let d = replica_diff(bundle, ComputePath::Quantized);
        assert!(d < 1e-5, "{q}: max |Δ| {d}");
    }
}

#[test]
fn replica_matches_the_model_integer_kernel() {
    let d = replica_diff(tiny(), ComputePath::Int);
    assert!(d < 1e-5, "max |Δ| {d}");
}

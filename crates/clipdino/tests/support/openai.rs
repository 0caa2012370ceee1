//! OpenAI-CLIP (QuickGELU) parity on `tests/fixtures/tiny-openai/` (written by
//! `tests/reference/openai_layouts.py`), shared by the native test (`tests/parity_openai.rs`) and
//! the wasm test (`tests/wasm.rs`, which includes this file by path). The fixture files are
//! compiled in, so both run the same bytes through the same loaders as the app.
//!
//! Each layout is loaded the way a user gives it (weights + config, recognised by content) and
//! compared with its own upstream library: the open_clip layout with open_clip
//! (`encode_text`, `encode_image`, the CLIP-DINOiser reference's MaskCLIP dense features and
//! block L−3 `ln_2` output); the transformers layout (safetensors and the older `.bin` with its
//! `position_ids` buffers) with transformers' `CLIPModel` (`hf.*` keys). candle-transformers'
//! own CLIP (`models::clip`, which reads the transformers layout natively) is a third,
//! independent implementation of the text and pooled image embeddings. The last-block methods and
//! PAMR run on every layout against `methods.safetensors` ([`check_methods`]).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use clipdino::clip::{preprocess, ClipModel};
use clipdino::loaders::{load_model_files, Bundle};
use clipdino::pipeline::{EncodeOptions, Mode, SegmentOptions, Segmenter};
use clipdino::{Activation, ClipConfig, ComputePath, Vb};

pub const TOL: f32 = 1e-4;

macro_rules! openai_fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tiny-openai/",
            $name
        ))
        .as_slice()
    };
}

/// The three ways the fixture's weights are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `open_clip_model.safetensors` + `open_clip_config.json` (`quick_gelu: true`).
    OpenClip,
    /// transformers `model.safetensors` + `config.json` (`hidden_act: quick_gelu`).
    TransformersSafetensors,
    /// transformers `pytorch_model.bin` (with `position_ids` buffers) + `config.json`.
    TransformersBin,
}

pub const LAYOUTS: [Layout; 3] = [
    Layout::OpenClip,
    Layout::TransformersSafetensors,
    Layout::TransformersBin,
];

pub fn transformers_config() -> &'static [u8] {
    openai_fixture!("transformers/config.json")
}

pub fn open_clip_config() -> &'static [u8] {
    openai_fixture!("open_clip/open_clip_config.json")
}

pub fn weights(layout: Layout) -> (&'static str, &'static [u8]) {
    match layout {
        Layout::OpenClip => (
            "open_clip_model.safetensors",
            openai_fixture!("open_clip/open_clip_model.safetensors"),
        ),
        Layout::TransformersSafetensors => (
            "model.safetensors",
            openai_fixture!("transformers/model.safetensors"),
        ),
        Layout::TransformersBin => (
            "pytorch_model.bin",
            openai_fixture!("transformers/pytorch_model.bin"),
        ),
    }
}

/// Weights + config of `layout`, as a user picks them.
pub fn files(layout: Layout) -> Vec<(String, Vec<u8>)> {
    let (name, bytes) = weights(layout);
    let config = match layout {
        Layout::OpenClip => ("open_clip_config.json", open_clip_config()),
        _ => ("config.json", transformers_config()),
    };
    vec![
        (name.to_string(), bytes.to_vec()),
        (config.0.to_string(), config.1.to_vec()),
    ]
}

pub fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load_buffer(openai_fixture!("expected.safetensors"), &Device::Cpu)
        .expect("tiny-openai/expected.safetensors")
}

fn get(exp: &HashMap<String, Tensor>, key: &str) -> Tensor {
    exp.get(key)
        .unwrap_or_else(|| panic!("expected.safetensors has no `{key}`"))
        .to_dtype(DType::F32)
        .unwrap()
}

/// `max |got − want|`, asserted ≤ [`TOL`] and logged.
fn check(log: &dyn Fn(&str), label: &str, got: &Tensor, want: &Tensor) -> f32 {
    let d = super::common::max_abs_diff(got, want);
    log(&format!("{label}: max |Δ| = {d:.3e} over {:?}", got.dims()));
    assert!(d <= TOL, "{label}: max |Δ| = {d:e} > {TOL:e}");
    d
}

pub use super::common::token_rows;

pub fn model(bundle: Bundle) -> ClipModel {
    let vb = Vb::new(Arc::new(bundle.store), Device::Cpu, ComputePath::F32);
    ClipModel::new(&vb, &bundle.clip).expect("model")
}

/// Text, pooled image, dense and intermediate features of `m` against the upstream outputs
/// stored under `prefix` (`""` for open_clip, `"hf."` for transformers). Returns the largest
/// difference.
pub fn check_outputs(m: &ClipModel, prefix: &str, log: &dyn Fn(&str)) -> f32 {
    let exp = expected();
    let e = |k: &str| get(&exp, &format!("{prefix}{k}"));
    let mut worst = 0f32;
    let rows = token_rows(&get(&exp, "text.tokens"));
    let text = m.text.forward(&rows).unwrap();
    worst = worst.max(check(
        log,
        &format!("{prefix}text.embeddings"),
        &text,
        &e("text.embeddings"),
    ));
    let p = m.cfg.vision.patch_size;
    let inter_layer = m.cfg.vision.layers - 3;
    let x = preprocess(&get(&exp, "img224.image"), p).unwrap();
    let out = m.vision.forward(&x, inter_layer, &mut |_, _| {}).unwrap();
    worst = worst.max(check(
        log,
        &format!("{prefix}img224.pooled"),
        &out.pooled,
        &e("img224.pooled"),
    ));
    for name in ["a", "b"] {
        let x = preprocess(&get(&exp, &format!("{name}.image")), p).unwrap();
        let out = m.vision.forward(&x, inter_layer, &mut |_, _| {}).unwrap();
        for (what, got) in [("dense", &out.dense), ("inter", &out.inter)] {
            let key = format!("{name}.{what}");
            worst = worst.max(check(log, &format!("{prefix}{key}"), got, &e(&key)));
        }
    }
    worst
}

/// Load `layout` and check it against its upstream library.
pub fn check_layout(layout: Layout, log: &dyn Fn(&str)) -> f32 {
    let bundle = load_model_files(&files(layout)).expect("load the OpenAI-layout fixture");
    assert_eq!(
        bundle.clip.activation,
        Activation::QuickGelu,
        "{layout:?}: the config says QuickGELU"
    );
    let prefix = if layout == Layout::OpenClip {
        ""
    } else {
        "hf."
    };
    check_outputs(&model(bundle), prefix, log)
}

/// candle-transformers' CLIP config for a transformers-layout [`ClipConfig`].
pub fn candle_transformers_config(
    cfg: &ClipConfig,
) -> candle_transformers::models::clip::ClipConfig {
    use candle_transformers::models::clip::{text_model, vision_model, ClipConfig as CtConfig};
    // candle-transformers' CLIP knows QuickGELU only (OpenAI's weights are all it loads).
    assert_eq!(cfg.activation, Activation::QuickGelu);
    let act = text_model::Activation::QuickGelu;
    let (t, v) = (&cfg.text, &cfg.vision);
    CtConfig {
        text_config: text_model::ClipTextConfig {
            vocab_size: t.vocab_size,
            embed_dim: t.width,
            activation: act,
            intermediate_size: t.mlp_dim,
            max_position_embeddings: t.context_length,
            pad_with: None,
            num_hidden_layers: t.layers,
            num_attention_heads: t.heads,
            projection_dim: cfg.embed_dim,
        },
        vision_config: vision_model::ClipVisionConfig {
            embed_dim: v.width,
            activation: act,
            intermediate_size: v.mlp_dim,
            num_hidden_layers: v.layers,
            num_attention_heads: v.heads,
            projection_dim: cfg.embed_dim,
            num_channels: 3,
            image_size: v.image_size,
            patch_size: v.patch_size,
        },
        logit_scale_init_value: 2.6592,
        image_size: v.image_size,
    }
}

/// candle-transformers' `models::clip::ClipModel` on the transformers `model.safetensors`
/// (read by candle-nn's `VarBuilder`, no code of ours on the weights' path) against our model
/// loaded from the same file, and both against transformers: text embeddings of every prompt
/// (full 77-token rows, pooled at the largest id as both do) and the pooled image embedding
/// at 224². Returns the largest difference between the two candle implementations.
pub fn check_candle_transformers(log: &dyn Fn(&str)) -> f32 {
    let cfg = ClipConfig::from_json(std::str::from_utf8(transformers_config()).unwrap())
        .expect("config.json");
    let (_, bytes) = weights(Layout::TransformersSafetensors);
    let vb =
        candle_nn::VarBuilder::from_buffered_safetensors(bytes.to_vec(), DType::F32, &Device::Cpu)
            .expect("VarBuilder over model.safetensors");
    let theirs =
        candle_transformers::models::clip::ClipModel::new(vb, &candle_transformers_config(&cfg))
            .expect("candle-transformers ClipModel");
    let ours = model(load_model_files(&files(Layout::TransformersSafetensors)).unwrap());
    let exp = expected();
    let tokens = get(&exp, "text.tokens").to_dtype(DType::U32).unwrap();
    let t_theirs = theirs.get_text_features(&tokens).unwrap();
    let t_ours = ours
        .text
        .forward(&token_rows(&get(&exp, "text.tokens")))
        .unwrap();
    let mut worst = check(
        log,
        "text.embeddings ours vs candle-transformers",
        &t_ours,
        &t_theirs,
    );
    check(
        log,
        "text.embeddings candle-transformers vs transformers",
        &t_theirs,
        &get(&exp, "hf.text.embeddings"),
    );
    let x = preprocess(&get(&exp, "img224.image"), cfg.vision.patch_size).unwrap();
    let i_theirs = theirs.get_image_features(&x).unwrap().squeeze(0).unwrap();
    let i_ours = ours
        .vision
        .forward(&x, cfg.vision.layers - 3, &mut |_, _| {})
        .unwrap()
        .pooled;
    worst = worst.max(check(
        log,
        "img224.pooled ours vs candle-transformers",
        &i_ours,
        &i_theirs,
    ));
    check(
        log,
        "img224.pooled candle-transformers vs transformers",
        &i_theirs,
        &get(&exp, "hf.img224.pooled"),
    );
    worst
}

/// The last-block methods' and PAMR's references on these weights (`tests/reference/methods.py`
/// on the open_clip layout; no head, so no `dinoiser` entries).
pub fn methods() -> HashMap<String, Tensor> {
    candle_core::safetensors::load_buffer(openai_fixture!("methods.safetensors"), &Device::Cpu)
        .expect("tiny-openai/methods.safetensors")
}

/// A segmenter on `layout`'s files, as the app and the CLI build one (no head: the weights
/// have none, and the loaders refuse one on QuickGELU weights).
pub fn segmenter(layout: Layout) -> Segmenter {
    let bundle = load_model_files(&files(layout)).expect("load the OpenAI-layout fixture");
    Segmenter::from_bundle(bundle, &Device::Cpu, ComputePath::F32).expect("segmenter")
}

/// MaskCLIP, ClearCLIP, NACLIP and SCLIP (dense features, probabilities, label maps) and PAMR of
/// `layout` against the upstream formulas, through the shared check of `common::methods` (≤
/// [`TOL`] scale-relative, identical label maps). The references are computed on the open_clip
/// layout; for the transformers layouts the variants' dense features are compared with those
/// transformers' own modules give instead (`hf.{a,b}.{mode}.dense`). CLIP-DINOiser must be
/// refused, in words. Returns image `a`'s features per mode, for comparing layouts.
pub fn check_methods(layout: Layout, log: &dyn Fn(&str)) -> Vec<(Mode, Tensor)> {
    let seg = segmenter(layout);
    assert!(!seg.has_head(), "{layout:?}: OpenAI weights carry no head");
    let exp = expected();
    let mut meth = methods();
    if layout != Layout::OpenClip {
        for key in ["a", "b"] {
            for m in [Mode::ClearClip, Mode::NaClip, Mode::SClip] {
                let k = format!("{key}.{}.dense", m.name());
                let hf = exp[&format!("hf.{k}")].clone();
                assert!(meth.insert(k, hf).is_some());
            }
        }
    }
    // The reference has no background rule without a head; the index is not used by these modes.
    super::common::methods::check(&seg, &exp, &meth, 0, TOL, &|s| {
        log(&format!("{layout:?} {s}"))
    });

    let mut feats = seg
        .encode_image(
            &get(&exp, "a.image"),
            &EncodeOptions::full_res(),
            &mut |_| {},
        )
        .unwrap();
    // CLIP-DINOiser: refused by the segmenter, whether its features or a segmentation is asked.
    let e = seg
        .prepare_mode(&mut feats, Mode::Dinoiser)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("CLIP-DINOiser head") && e.contains("MaskCLIP"),
        "{e}"
    );
    let opts = SegmentOptions {
        mode: Mode::Dinoiser,
        ..Default::default()
    };
    let e = seg
        .segment(&feats, &get(&exp, "labels"), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("CLIP-DINOiser head"), "{e}");
    [Mode::MaskClip, Mode::ClearClip, Mode::NaClip, Mode::SClip]
        .into_iter()
        .map(|m| {
            seg.prepare_mode(&mut feats, m).unwrap();
            (m, feats.windows[0].features(m).unwrap().clone())
        })
        .collect()
}

//! OpenAI-CLIP weights (QuickGELU) in both layouts against their upstream libraries, natively:
//! see `support/openai.rs` (shared with the wasm test): the towers, and the last-block methods
//! and PAMR on them. Also the errors that name what is wrong with such files, and the GGUF bundle
//! recording the activation.

mod common;
#[path = "support/openai.rs"]
mod openai;

use clipdino::loaders::{
    load_model_files, read_gguf_bundle, read_safetensors, write_gguf_bundle, Quant,
};
use clipdino::{Activation, ClipConfig, Error};
use openai::{Layout, LAYOUTS};

fn log(s: &str) {
    println!("{s}");
}

#[test]
fn every_layout_matches_its_upstream_library() {
    for layout in LAYOUTS {
        let worst = openai::check_layout(layout, &log);
        println!("{layout:?}: worst {worst:.3e}");
    }
}

/// ClearCLIP / NACLIP / SCLIP and PAMR on OpenAI's weights in every layout, against the upstream
/// formulas (`methods.py`; the transformers layouts' variant features against transformers' own
/// modules), CLIP-DINOiser refused. The layouts hold the same numbers under other names, so the
/// renaming loader must give the same segmenter: every mode's features equal bit for bit.
#[test]
fn methods_and_pamr_match_upstream_in_every_layout() {
    let feats: Vec<_> = LAYOUTS
        .into_iter()
        .map(|layout| (layout, openai::check_methods(layout, &log)))
        .collect();
    let (first, want) = &feats[0];
    for (layout, got) in &feats[1..] {
        for ((mode, a), (_, b)) in want.iter().zip(got) {
            let d = common::max_abs_diff(b, a);
            println!("{layout:?} vs {first:?}, {}: max |Δ| = {d:e}", mode.name());
            assert_eq!(
                d, 0.0,
                "{layout:?} and {first:?} give other {mode:?} features"
            );
        }
    }
}

#[test]
fn candle_transformers_clip_agrees_on_the_transformers_layout() {
    let worst = openai::check_candle_transformers(&log);
    println!("ours vs candle-transformers: worst {worst:.3e}");
}

/// The same weights read as exact GELU are far off: the activation really is applied, and a
/// config that says nothing about it would give wrong features.
#[test]
fn the_activation_comes_from_the_config_and_matters() {
    let json = std::str::from_utf8(openai::open_clip_config()).unwrap();
    let without: String = json.replace("\"quick_gelu\": true", "\"quick_gelu\": false");
    assert_ne!(without, json, "the fixture config sets quick_gelu");
    let mut files = openai::files(Layout::OpenClip);
    files[1].1 = without.into_bytes();
    let bundle = load_model_files(&files).unwrap();
    assert_eq!(bundle.clip.activation, Activation::Gelu);
    let m = openai::model(bundle);
    let exp = openai::expected();
    let rows = openai::token_rows(&exp["text.tokens"]);
    let d = common::max_abs_diff(&m.text.forward(&rows).unwrap(), &exp["text.embeddings"]);
    println!("QuickGELU weights run with GELU: text max |Δ| = {d:.3e}");
    assert!(d > 100.0 * openai::TOL, "{d}");

    // The transformers config's hidden_act, likewise.
    let hf = std::str::from_utf8(openai::transformers_config()).unwrap();
    let cfg = ClipConfig::from_json(hf).unwrap();
    assert_eq!(cfg.activation, Activation::QuickGelu);
    let gelu = ClipConfig::from_json(&hf.replace("quick_gelu", "gelu")).unwrap();
    assert_eq!(gelu.activation, Activation::Gelu);
    assert_eq!((gelu.vision.heads, gelu.text.heads), (2, 2));
    assert_eq!(
        (cfg.embed_dim, cfg.vision.patch_size, cfg.text.vocab_size),
        (32, 16, 1000)
    );
}

#[test]
fn transformers_config_errors_name_the_field() {
    let hf = std::str::from_utf8(openai::transformers_config()).unwrap();
    let v: serde_json::Value = serde_json::from_str(hf).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = v.clone();
        f(&mut v);
        ClipConfig::from_json(&v.to_string())
            .unwrap_err()
            .to_string()
    };
    let e = with(&|v| v["vision_config"]["hidden_act"] = "gelu_new".into());
    assert!(
        e.contains("vision_config.hidden_act") && e.contains("gelu_new"),
        "{e}"
    );
    let e = with(&|v| v["text_config"]["hidden_act"] = "gelu".into());
    assert!(
        e.contains("text_config.hidden_act") && e.contains("same activation"),
        "{e}"
    );
    let e = with(&|v| v["text_config"]["layer_norm_eps"] = 1e-6.into());
    assert!(e.contains("text_config.layer_norm_eps"), "{e}");
    let e = with(&|v| v["model_type"] = "siglip".into());
    assert!(e.contains("model_type") && e.contains("siglip"), "{e}");
    let e = with(&|v| v["vision_config"]["num_attention_heads"] = 3.into());
    assert!(e.contains("vision_cfg.heads"), "{e}");
    let e = with(&|v| v["projection_dim"] = "wide".into());
    assert!(e.contains("projection_dim"), "{e}");
    // Older hub configs: `text_config_dict` wins over `text_config`, as in transformers.
    let mut old = v.clone();
    old["text_config_dict"] = serde_json::json!({"num_hidden_layers": 3});
    let c = ClipConfig::from_json(&old.to_string()).unwrap();
    assert_eq!(c.text.layers, 3);
    // Neither layout.
    let e = ClipConfig::from_json("{\"hidden_size\": 3}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("open_clip_config.json") && e.contains("config.json"),
        "{e}"
    );
    // Absent fields take transformers' defaults (ViT-B/32 shapes, QuickGELU).
    let c = ClipConfig::from_json("{\"vision_config\": {}, \"text_config\": {}}").unwrap();
    assert_eq!(c.activation, Activation::QuickGelu);
    assert_eq!(
        (
            c.vision.width,
            c.vision.patch_size,
            c.text.width,
            c.embed_dim
        ),
        (768, 32, 512, 512)
    );
}

#[test]
fn transformers_weights_need_their_config() {
    let (name, bytes) = openai::weights(Layout::TransformersSafetensors);
    let e = load_model_files(&[(name.to_string(), bytes.to_vec())])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("config.json") && e.contains("hidden_act"),
        "{e}"
    );
    // A missing q/k/v projection is named by its transformers name and file.
    let mut store = read_safetensors(bytes, name).unwrap();
    store.remove("vision_model.encoder.layers.2.self_attn.v_proj.bias");
    let st = clipdino::loaders::write_safetensors(&store).unwrap();
    let mut files = openai::files(Layout::TransformersSafetensors);
    files[0].1 = st;
    let e = load_model_files(&files).unwrap_err().to_string();
    assert!(
        e.contains("vision_model.encoder.layers.2.self_attn.v_proj.bias")
            && e.contains("model.safetensors"),
        "{e}"
    );
}

/// The CLIP-DINOiser head is refused on QuickGELU weights, with the reason in words, whether
/// the files are given separately or as a GGUF bundle made by hand.
#[test]
fn dinoiser_head_is_refused_on_openai_weights() {
    let tiny_head = common::tiny::read("last.pt");
    let mut files = openai::files(Layout::TransformersSafetensors);
    files.push(("last.pt".to_string(), tiny_head));
    let e = load_model_files(&files).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::WrongModel { .. }), "{msg}");
    assert!(
        msg.contains("last.pt")
            && msg.contains("laion2b")
            && msg.contains("quick_gelu")
            && msg.contains("MaskCLIP"),
        "{msg}"
    );

    // A bundle of the OpenAI weights records the activation and reads back with it.
    let bundle = load_model_files(&openai::files(Layout::TransformersBin)).unwrap();
    let bytes = write_gguf_bundle(&bundle, Quant::F32).unwrap();
    let back = read_gguf_bundle(&bytes, "openai.gguf").unwrap();
    assert_eq!(back.clip, bundle.clip);
    assert_eq!(back.clip.activation, Activation::QuickGelu);
    let worst = openai::check_outputs(&openai::model(back), "hf.", &log);
    println!("GGUF (f32) of the transformers .bin: worst {worst:.3e}");

    // A hand-made bundle holding both is refused too.
    let mut with_head = load_model_files(&openai::files(Layout::OpenClip)).unwrap();
    let tiny = load_model_files(&[
        (
            "open_clip_model.safetensors".to_string(),
            common::tiny::read("open_clip_model.safetensors"),
        ),
        ("last.pt".to_string(), common::tiny::read("last.pt")),
    ])
    .unwrap();
    for (n, t) in tiny.store.iter() {
        if n.starts_with(clipdino::loaders::HEAD_PREFIX) {
            with_head.store.insert(n.clone(), t.clone());
        }
    }
    with_head.head = tiny.head.clone();
    let e = write_gguf_bundle(&with_head, Quant::F32)
        .and_then(|b| read_gguf_bundle(&b, "mixed.gguf").map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("laion2b") && e.contains("quick_gelu"), "{e}");
}

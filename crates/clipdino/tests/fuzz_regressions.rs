//! Replays fuzzing inputs through the fuzz targets' own checks (`crates/clipdino/fuzz/src/lib.rs`,
//! included by path): every crash input committed under `tests/fuzz_regressions/<target>/` (each
//! one a bug found by `scripts/fuzz.sh`, fixed since), and the fixture files the fuzzers are
//! seeded with (the checks' success paths). Native only (reads files).
#![cfg(not(target_arch = "wasm32"))]

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

/// Every file under `tests/fuzz_regressions/<target>/`, sorted.
fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && !p.ends_with("README.md"))
                .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Run `check` on each input, reporting which one failed.
fn replay(target: &str, check: fn(&[u8]), seeds: Vec<(String, Vec<u8>)>) {
    for (name, bytes) in seeds.into_iter().chain(regressions(target)) {
        let r = std::panic::catch_unwind(|| check(&bytes));
        assert!(r.is_ok(), "{target}: {name} fails the fuzz check");
    }
}

#[test]
fn gguf() {
    use clipdino::loaders::{load_model_files, write_gguf_bundle, Quant};
    let files: Vec<(String, Vec<u8>)> = [
        "open_clip_model.safetensors",
        "open_clip_config.json",
        "last.pt",
    ]
    .iter()
    .map(|n| (n.to_string(), fixture(n)))
    .collect();
    let bundle = load_model_files(&files).unwrap();
    let seeds = Quant::ALL
        .iter()
        .map(|&q| {
            (
                format!("tiny-{q}.gguf"),
                write_gguf_bundle(&bundle, q).unwrap(),
            )
        })
        .collect();
    replay("gguf", checks::check_gguf, seeds);
}

#[test]
fn safetensors() {
    let seeds = vec![(
        "open_clip_model.safetensors".into(),
        fixture("open_clip_model.safetensors"),
    )];
    replay("safetensors", checks::check_safetensors, seeds);
}

#[test]
fn torch_zip() {
    let seeds = ["open_clip_pytorch_model.bin", "last.pt"]
        .iter()
        .map(|n| (n.to_string(), fixture(n)))
        .collect();
    replay("torch_zip", checks::check_torch_zip, seeds);
}

#[test]
fn pickle() {
    let seeds = vec![
        ("empty dict".into(), b"\x80\x02}.".to_vec()),
        (
            "os.system".into(),
            b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.".to_vec(),
        ),
    ];
    replay("pickle", checks::check_pickle, seeds);
}

#[test]
fn config() {
    let mut oc = vec![0u8];
    oc.extend(fixture("open_clip_config.json"));
    let mut st = vec![3u8];
    st.extend(fixture("open_clip_model.safetensors"));
    let seeds = vec![("open_clip_config.json".into(), oc), ("infer".into(), st)];
    replay("config", checks::check_config, seeds);
}

#[test]
fn tokenizer() {
    let seeds = [
        "cat, sofa, window, background",
        "fish &amp; chips",
        "ｃａｔ\u{0}\u{1b}[31m",
    ]
    .iter()
    .map(|s| (s.to_string(), s.as_bytes().to_vec()))
    .collect();
    replay("tokenizer", checks::check_text, seeds);
}

/// Small seed files for `scripts/fuzz.sh` (a micro model in every format, a few kB each, so
/// the fuzzers run thousands of inputs a second instead of tens), written into
/// `$CLIPDINO_FUZZ_SEEDS/<target>/`. Run by the script; ignored otherwise.
#[test]
#[ignore = "writes seed files for scripts/fuzz.sh"]
fn write_fuzz_seeds() {
    use candle_core::Device;
    use clipdino::loaders::{
        random_clip_store, random_head_store, write_gguf_bundle, write_safetensors,
        write_torch_pickle, Bundle, Quant,
    };
    use clipdino::{ClipConfig, HeadConfig};
    let Ok(dir) = std::env::var("CLIPDINO_FUZZ_SEEDS") else {
        panic!("set CLIPDINO_FUZZ_SEEDS to the seed folder");
    };
    let dir = Path::new(&dir);
    let write = |target: &str, name: &str, bytes: &[u8]| {
        std::fs::create_dir_all(dir.join(target)).unwrap();
        std::fs::write(dir.join(target).join(name), bytes).unwrap();
    };
    let clip: ClipConfig = serde_json::from_value(serde_json::json!({
        "embed_dim": 4,
        "vision": {"width": 4, "layers": 3, "heads": 1, "patch_size": 2, "image_size": 4, "mlp_dim": 8},
        "text": {"width": 4, "layers": 1, "heads": 1, "context_length": 4, "vocab_size": 8, "mlp_dim": 8}
    }))
    .unwrap();
    clip.validate().unwrap();
    let head = HeadConfig::for_clip(&clip, 4);
    let store = random_clip_store(&clip, 1);
    let head_store = random_head_store(&head, 2);
    let entries = |s: &clipdino::TensorStore| -> Vec<(String, candle_core::Tensor)> {
        s.names()
            .into_iter()
            .map(|n| {
                (
                    n.to_string(),
                    s.get(n).unwrap().to_f32(&Device::Cpu).unwrap(),
                )
            })
            .collect()
    };
    let clip_st = write_safetensors(&store).unwrap();
    write("safetensors", "micro.safetensors", &clip_st);
    let mut infer = vec![3u8];
    infer.extend(&clip_st);
    write("config", "micro-infer.safetensors", &infer);
    let mut oc = vec![0u8];
    oc.extend(clip.to_open_clip_json().into_bytes());
    write("config", "micro-open_clip.json", &oc);
    // the transformers layout (openai/clip-vit-base-patch16's): its config.json and its tensors
    let mut tj = vec![0x10u8];
    tj.extend(clip.to_transformers_json().into_bytes());
    write("config", "micro-transformers.json", &tj);
    let hf_st = write_safetensors(&clipdino::loaders::to_transformers(&store).unwrap()).unwrap();
    write("safetensors", "micro-transformers.safetensors", &hf_st);
    let mut ts = vec![0x11u8];
    ts.extend(&hf_st);
    write("config", "micro-transformers.safetensors", &ts);
    write(
        "torch_zip",
        "micro.bin",
        &write_torch_pickle(&entries(&store), None, &[]).unwrap(),
    );
    let last = write_torch_pickle(
        &entries(&head_store),
        Some("model_state_dict"),
        &[("epoch", 9)],
    )
    .unwrap();
    write("torch_zip", "micro-last.pt", &last);
    let mut bundle_store = store.clone();
    bundle_store.merge(head_store, "dinoiser.");
    let bundle = Bundle {
        clip,
        head: Some(head),
        store: bundle_store,
    };
    for q in Quant::ALL {
        write(
            "gguf",
            &format!("micro-{q}.gguf"),
            &write_gguf_bundle(&bundle, q).unwrap(),
        );
    }
}

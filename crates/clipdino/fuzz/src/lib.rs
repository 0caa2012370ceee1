//! What every fuzz target checks, shared with the regression tests of the model crate
//! (`crates/clipdino/tests/fuzz_regressions.rs` includes this file by path and replays every
//! committed crash input through it). Each check feeds arbitrary bytes to one parser and
//! asserts: no panic, errors that name the file they came from, and consistent results (a
//! bundle that loads validates and survives a write / read round trip; a config that parses is
//! within bounds).

use std::io::Write;
use std::sync::OnceLock;

use clipdino::config::MAX_MODEL_F32_BYTES;
use clipdino::limits;
use clipdino::loaders::{self, Quant};
use clipdino::templates::TemplateSet;
use clipdino::tokenizer::ClipTokenizer;
use clipdino::{ClipConfig, Error, HeadConfig};

/// The file name given to every parser (errors must mention it).
pub const SOURCE: &str = "fuzz-input.bin";

#[track_caller]
fn named(e: &Error) {
    let msg = e.to_string();
    assert!(
        msg.contains(SOURCE),
        "error does not name the file it came from: {msg:?} ({e:?})"
    );
}

/// The file alone through `load_model_files` (content sniffing, config inference).
fn load_alone(data: &[u8]) {
    match loaders::load_model_files(&[(SOURCE.to_string(), data.to_vec())]) {
        Ok(b) => b.validate().expect("a loaded bundle validates"),
        // About the list of files, not one file: "only a head was given", "no CLIP weights".
        Err(Error::InvalidInput { field, .. }) if field == "files" => {}
        Err(e) => named(&e),
    }
}

/// A GGUF bundle through the reader and the content-sniffing path.
pub fn check_gguf(data: &[u8]) {
    match loaders::read_gguf_bundle(data, SOURCE) {
        Ok(b) => {
            b.validate().expect("a loaded bundle validates");
            if b.store.storage_bytes() < 1 << 20 {
                let again = loaders::write_gguf_bundle(&b, Quant::F32).expect("write back");
                let b2 = loaders::read_gguf_bundle(&again, "again.gguf").expect("read back");
                assert_eq!(
                    (b2.clip, b2.head, b2.store.len()),
                    (b.clip, b.head, b.store.len())
                );
            }
        }
        Err(e) => named(&e),
    }
    load_alone(data);
}

/// A safetensors file through the reader and the content-sniffing path (which infers the
/// architecture from the shapes when no config is given).
pub fn check_safetensors(data: &[u8]) {
    match loaders::read_safetensors(data, SOURCE) {
        Ok(store) => {
            for n in store.names() {
                let s = store.get(n).expect("listed");
                assert!(
                    s.storage_bytes() <= data.len(),
                    "{n} is larger than the file"
                );
            }
        }
        Err(e) => named(&e),
    }
    load_alone(data);
}

/// A torch checkpoint as a whole, as CLIP weights and as a CLIP-DINOiser head.
pub fn check_torch_zip(data: &[u8]) {
    if let Err(e) = loaders::read_torch_pickle(data, SOURCE) {
        named(&e);
    }
    if let Err(e) = loaders::read_dinoiser_checkpoint(data, SOURCE) {
        named(&e);
    }
    load_alone(data);
}

/// `data` as `data.pkl`, zipped (stored, correct CRCs) beside storages `0`..`3` of 64 bytes.
pub fn check_pickle(data: &[u8]) {
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zw.start_file("archive/data.pkl", o).expect("zip");
    zw.write_all(data).expect("zip");
    let storage: Vec<u8> = (0..64u8).collect();
    for k in 0..4 {
        zw.start_file(format!("archive/data/{k}"), o).expect("zip");
        zw.write_all(&storage).expect("zip");
    }
    let file = zw.finish().expect("zip").into_inner();
    match loaders::read_torch_pickle(&file, SOURCE) {
        Ok(store) => {
            for n in store.names() {
                assert!(
                    store.get(n).expect("listed").storage_bytes() <= 1 << 20,
                    "{n}"
                );
            }
        }
        Err(e) => named(&e),
    }
}

/// A config that passes `validate` has every derived size in range.
fn check_valid_config(cfg: &ClipConfig) {
    let bytes = cfg.f32_bytes();
    assert!(bytes > 0 && bytes <= MAX_MODEL_F32_BYTES, "{bytes}");
    let v = &cfg.vision;
    assert!(v.grid() >= 1 && v.positions() == v.grid() * v.grid() + 1);
    assert!(!loaders::expected_clip_tensors(cfg).is_empty());
}

/// First byte: 0 `open_clip_config.json`, 1 a bundle's `ClipConfig` JSON, 2 a `HeadConfig`
/// JSON (against ViT-B/16), anything else a safetensors file to infer a config from.
pub fn check_config(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(cfg) = ClipConfig::from_open_clip_json(text) {
                    cfg.validate().expect("a parsed config validates");
                    check_valid_config(&cfg);
                }
            }
        }
        1 => {
            if let Ok(cfg) = serde_json::from_slice::<ClipConfig>(rest) {
                if cfg.validate().is_ok() {
                    check_valid_config(&cfg);
                }
            }
        }
        2 => {
            if let Ok(h) = serde_json::from_slice::<HeadConfig>(rest) {
                let clip = ClipConfig::vit_b_16();
                if h.validate(&clip).is_ok() {
                    assert!(h.layer < clip.vision.layers && h.in_dim == clip.vision.width);
                }
            }
        }
        // A transformers `config.json` (openai/clip-vit-base-patch16's layout) through the
        // layout-sniffing entry.
        0x10 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(cfg) = ClipConfig::from_json(text) {
                    cfg.validate().expect("a parsed config validates");
                    check_valid_config(&cfg);
                }
            }
        }
        // A transformers-layout safetensors renamed into ours, then its config inferred.
        0x11 => {
            if let Ok(store) = loaders::read_safetensors(rest, SOURCE) {
                let mut meter = loaders::LoadMeter::default();
                match loaders::from_transformers(store, &mut meter)
                    .and_then(|s| ClipConfig::infer(&s, 64, 64))
                {
                    Ok(cfg) => check_valid_config(&cfg),
                    Err(e) => named(&e),
                }
            }
        }
        _ => {
            if let Ok(store) = loaders::read_safetensors(rest, SOURCE) {
                match ClipConfig::infer(&store, 64, 64) {
                    Ok(cfg) => check_valid_config(&cfg),
                    Err(e) => named(&e),
                }
            }
        }
    }
}

fn tokenizer() -> &'static ClipTokenizer {
    static TOK: OnceLock<ClipTokenizer> = OnceLock::new();
    TOK.get_or_init(|| ClipTokenizer::embedded().expect("embedded tokenizer"))
}

/// Arbitrary text through the tokenizer and the label checks.
pub fn check_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let tok = tokenizer();
    let enc = tok.encode(&text).expect("any text tokenizes");
    assert!(enc.ids.len() >= 2 && enc.ids.len() <= tok.context_length());
    assert_eq!(
        (enc.ids[0], enc.ids[enc.ids.len() - 1]),
        (tok.sot(), tok.eot())
    );
    assert!(enc.ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
    let labels: Vec<&str> = text.split(',').collect();
    if limits::check_labels(&labels).is_ok() {
        for l in labels.iter().take(4) {
            assert!(!limits::label_key(l).is_empty());
            limits::truncated_prompts(tok, l, TemplateSet::Fast).expect("prompts tokenize");
        }
    }
}

//! Loader tests: round trips through every writer, the upstream-written fixtures in
//! `tests/fixtures/tiny/` (torch 2.15 `torch.save` / `safetensors.torch.save_file`), and every kind
//! of bad input, which must give a typed error naming the file / tensor / field, never a panic.

mod common;
#[path = "support/hostile.rs"]
mod hostile;

use std::io::Write;

use candle_core::{DType, Device, Tensor};
use clipdino::loaders::{
    self, load_model_files, random_clip_store, random_head_store, read_dinoiser_checkpoint,
    read_gguf_bundle, read_safetensors, read_torch_pickle, write_gguf_bundle, write_safetensors,
    write_safetensors_entries, write_torch_pickle, Bundle, LoadBudget, LoadMeter, Quant,
};
use clipdino::{ClipConfig, Error, HeadConfig, Stored, TensorStore};
use common::{max_abs, max_abs_diff};
use hostile::{
    aliased_storages, deep_pickle, gguf_offset_pos, gguf_tensor_infos, memo_bomb_pickle,
    shared_storage_views, tensors_pickle, torch_zip, TensorSpec,
};

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../tests/fixtures/tiny/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// A small but complete architecture (3 vision blocks so the head sits on block 0; conv1 rows of
/// 3·4·4 = 48 exercise the Q4_0/Q8_0 → f16 fallback).
fn tiny_cfg() -> ClipConfig {
    serde_json::from_value(serde_json::json!({
        "embed_dim": 32,
        "vision": {"width": 64, "layers": 3, "heads": 2, "patch_size": 4, "image_size": 16, "mlp_dim": 256},
        "text": {"width": 64, "layers": 1, "heads": 2, "context_length": 8, "vocab_size": 96, "mlp_dim": 256}
    }))
    .expect("config")
}

fn tiny_bundle(seed: u64) -> Bundle {
    let clip = tiny_cfg();
    let head = HeadConfig::for_clip(&clip, 32);
    let mut store = random_clip_store(&clip, seed);
    store.merge(random_head_store(&head, seed + 1), "dinoiser.");
    Bundle {
        clip,
        head: Some(head),
        store,
    }
}

fn f32_of(s: &Stored) -> Tensor {
    s.to_f32(&Device::Cpu).expect("to f32")
}

fn entries_of(store: &TensorStore) -> Vec<(String, Tensor)> {
    store
        .names()
        .into_iter()
        .map(|n| (n.to_string(), f32_of(store.get(n).unwrap())))
        .collect()
}

fn assert_same_stores(a: &TensorStore, b: &TensorStore) {
    assert_eq!(a.names(), b.names());
    for n in a.names() {
        let (x, y) = (f32_of(a.get(n).unwrap()), f32_of(b.get(n).unwrap()));
        assert_eq!(x.dims(), y.dims(), "{n}");
        assert_eq!(max_abs_diff(&x, &y), 0.0, "{n}");
    }
}

/// The error's message must mention `what` (tensor, file or field name).
fn assert_names(e: &Error, what: &str) {
    let msg = e.to_string();
    assert!(msg.contains(what), "message {msg:?} does not name {what:?}");
}

// ------------------------------------------------------------------------------------------
// Round trips
// ------------------------------------------------------------------------------------------

#[test]
fn safetensors_round_trip_keeps_dtypes_and_values() -> R<()> {
    let dev = Device::Cpu;
    let a = Tensor::arange(0f32, 24., &dev)?.reshape((2, 3, 4))?;
    let entries = vec![
        ("a.f32".to_string(), a.clone()),
        ("b.f16".to_string(), a.to_dtype(DType::F16)?),
        (
            "c.bf16".to_string(),
            a.to_dtype(DType::BF16)?.narrow(2, 1, 2)?,
        ),
        ("d.scalar".to_string(), Tensor::new(3.5f32, &dev)?),
    ];
    let bytes = write_safetensors_entries(&entries, &[("format", "pt")])?;
    let store = read_safetensors(&bytes, "x.safetensors")?;
    assert_eq!(store.len(), 4);
    for (name, t) in &entries {
        let Some(Stored::Float(got)) = store.get(name) else {
            panic!("{name} missing")
        };
        assert_eq!(got.dtype(), t.dtype(), "{name}");
        assert_eq!(got.dims(), t.dims(), "{name}");
        let (g, w) = (got.to_dtype(DType::F32)?, t.to_dtype(DType::F32)?);
        assert_eq!(max_abs_diff(&g, &w), 0.0, "{name}");
    }
    // A whole store, back and forth.
    let clip = random_clip_store(&tiny_cfg(), 3);
    let again = read_safetensors(&write_safetensors(&clip)?, "y")?;
    assert_same_stores(&clip, &again);
    Ok(())
}

#[test]
fn torch_pickle_round_trip_flat_and_wrapped() -> R<()> {
    let dev = Device::Cpu;
    let big = Tensor::arange(0f32, 70_000., &dev)?; // numel > 65535: 4-byte int opcodes
    let entries = vec![
        (
            "w".to_string(),
            Tensor::arange(0f32, 12., &dev)?.reshape((3, 4))?,
        ),
        (
            "h".to_string(),
            Tensor::arange(0f32, 6., &dev)?.to_dtype(DType::F16)?,
        ),
        ("s".to_string(), Tensor::new(-2.25f32, &dev)?),
        ("big".to_string(), big),
        (
            "t".to_string(),
            Tensor::arange(0f32, 6., &dev)?.reshape((2, 3))?.t()?,
        ),
    ];
    let flat = read_torch_pickle(&write_torch_pickle(&entries, None, &[])?, "flat.bin")?;
    let wrapped = read_torch_pickle(
        &write_torch_pickle(
            &entries,
            Some("model_state_dict"),
            &[("epoch", 7), ("step", 1 << 40)],
        )?,
        "wrapped.pt",
    )?;
    for (name, t) in &entries {
        for (store, key) in [
            (&flat, name.clone()),
            (&wrapped, format!("model_state_dict.{name}")),
        ] {
            let got = store.get(&key).unwrap_or_else(|| panic!("{key} missing"));
            assert_eq!(got.dims(), t.dims(), "{key}");
            let want = t.to_dtype(DType::F32)?;
            assert_eq!(max_abs_diff(&f32_of(got), &want), 0.0, "{key}");
        }
    }
    assert_eq!(wrapped.len(), entries.len(), "ints are not tensors");
    let Some(Stored::Float(h)) = flat.get("h") else {
        panic!()
    };
    assert_eq!(h.dtype(), DType::F16);
    Ok(())
}

#[test]
fn gguf_round_trip_every_quant() -> R<()> {
    let bundle = tiny_bundle(11);
    for quant in Quant::ALL {
        let bytes = write_gguf_bundle(&bundle, quant)?;
        let back = read_gguf_bundle(&bytes, "tiny.gguf")?;
        assert_eq!(back.clip, bundle.clip);
        assert_eq!(back.head, bundle.head);
        let mut worst = 0f32;
        for name in bundle.store.names() {
            let orig = f32_of(bundle.store.get(name).unwrap());
            let (got, want) = match name {
                "visual.proj" | "text_projection" => {
                    let s = back
                        .store
                        .get(&format!("{name}_t"))
                        .unwrap_or_else(|| panic!("{name}_t"));
                    (f32_of(s), orig.t()?.contiguous()?)
                }
                "visual.conv1.weight" => {
                    let s = back.store.get(name).unwrap();
                    assert_eq!(s.dims(), vec![64, 48], "conv1 is stored flattened");
                    (f32_of(s), orig.reshape((64, 48))?)
                }
                "logit_scale" => (f32_of(back.store.get(name).unwrap()), orig.reshape(1)?),
                _ => (
                    f32_of(back.store.get(name).unwrap_or_else(|| panic!("{name}"))),
                    orig,
                ),
            };
            let d = max_abs_diff(&got, &want);
            let rel = d / max_abs(&want).max(1e-12);
            let stored = back
                .store
                .get(name)
                .or_else(|| back.store.get(&format!("{name}_t")))
                .unwrap();
            let dtype = stored.dtype_name();
            let bound = match dtype.as_str() {
                "f32" => 0.0,
                "f16" => 1e-3,
                "q8_0" => 1.0 / 127.0,
                "q6_k" => 1.0 / 31.0,
                "q5_1" | "q5_k" => 1.0 / 15.0,
                "q5_0" | "q4_k" => 1.0 / 7.0,
                "q4_0" => 1.0 / 7.0,
                other => panic!("{name}: unexpected storage {other}"),
            };
            assert!(
                rel <= bound,
                "{quant} {name} ({dtype}): rel err {rel} > {bound}"
            );
            worst = worst.max(rel);
            // Storage per the layout rules: matrices in `quant`, or the next larger format when
            // their rows do not split into its blocks (conv1's rows of 48: f16 for every integer
            // format); everything else f32 (f16 with f16).
            let matrix = name.ends_with("in_proj_weight")
                || name.ends_with("out_proj.weight")
                || name.ends_with("c_fc.weight")
                || name.ends_with("c_proj.weight")
                || ["token_embedding.weight", "visual.proj", "text_projection"].contains(&name)
                || name == "visual.conv1.weight";
            let row_len = *stored.dims().last().unwrap();
            let expect = match (quant, matrix) {
                (_, true) => quant.for_row_len(row_len).as_str(),
                (Quant::F16, false) => "f16",
                (_, false) => "f32",
            };
            assert_eq!(dtype, expect, "{quant} {name}");
        }
        println!(
            "gguf {quant}: worst relative max|Δ| = {worst:.3e}, {} bytes",
            bytes.len()
        );
        // Writing a read bundle again with the same quant keeps it bit-identical.
        assert_eq!(write_gguf_bundle(&back, quant)?, bytes, "{quant} rewrite");
    }
    Ok(())
}

#[test]
fn quant_parse_and_display() {
    for q in Quant::ALL {
        assert_eq!(q.to_string().parse::<Quant>().unwrap(), q);
    }
    assert_eq!("Q8_0".parse::<Quant>().unwrap(), Quant::Q8_0);
    let e = "q3_k".parse::<Quant>().unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }));
    assert_names(&e, "q3_k");
}

// ------------------------------------------------------------------------------------------
// Upstream-written fixtures
// ------------------------------------------------------------------------------------------

#[test]
fn fixtures_bin_and_safetensors_hold_identical_tensors() -> R<()> {
    let st = read_safetensors(
        &fixture("open_clip_model.safetensors"),
        "open_clip_model.safetensors",
    )?;
    let bin = read_torch_pickle(
        &fixture("open_clip_pytorch_model.bin"),
        "open_clip_pytorch_model.bin",
    )?;
    assert_eq!(st.len(), 86);
    assert_same_stores(&st, &bin);
    let cfg =
        ClipConfig::from_open_clip_json(std::str::from_utf8(&fixture("open_clip_config.json"))?)?;
    loaders::validate_clip_store(&st, &cfg)?;
    Ok(())
}

#[test]
fn fixture_last_pt_gives_the_head() -> R<()> {
    let bytes = fixture("last.pt");
    let all = read_torch_pickle(&bytes, "last.pt")?;
    assert_eq!(
        all.names(),
        [
            "model_state_dict.bkg_decoder.bias",
            "model_state_dict.bkg_decoder.weight",
            "model_state_dict.obj_proj.bias",
            "model_state_dict.obj_proj.weight"
        ]
    );
    let head = read_dinoiser_checkpoint(&bytes, "last.pt")?;
    assert_eq!(
        head.names(),
        [
            "bkg_decoder.bias",
            "bkg_decoder.weight",
            "obj_proj.bias",
            "obj_proj.weight"
        ]
    );
    assert_eq!(head.dims("obj_proj.weight").unwrap(), [32, 64, 3, 3]);
    assert_eq!(head.dims("obj_proj.bias").unwrap(), [32]);
    assert_eq!(head.dims("bkg_decoder.weight").unwrap(), [1, 64, 1, 1]);
    assert_eq!(head.dims("bkg_decoder.bias").unwrap(), [1]);
    let w = f32_of(head.get("obj_proj.weight").unwrap());
    assert!(max_abs(&w) > 0.0);

    // A bare state dict behind a DataParallel `module.` prefix is accepted too.
    let bare: Vec<(String, Tensor)> = entries_of(&head)
        .into_iter()
        .map(|(n, t)| (format!("module.{n}"), t))
        .collect();
    let again = read_dinoiser_checkpoint(&write_torch_pickle(&bare, None, &[])?, "bare.pt")?;
    assert_same_stores(&head, &again);
    Ok(())
}

fn fixture_files(names: &[&str]) -> Vec<(String, Vec<u8>)> {
    names.iter().map(|n| (n.to_string(), fixture(n))).collect()
}

#[test]
fn load_model_files_combinations() -> R<()> {
    let cfg =
        ClipConfig::from_open_clip_json(std::str::from_utf8(&fixture("open_clip_config.json"))?)?;
    // Weights + config + head, in any order.
    let b = load_model_files(&fixture_files(&[
        "last.pt",
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]))?;
    assert_eq!(b.clip, cfg);
    assert_eq!(b.clip.vision.heads, 2, "head_width 32 from the config");
    assert_eq!(
        b.head,
        Some(HeadConfig {
            in_dim: 64,
            proj_dim: 32,
            layer: 1
        })
    );
    assert!(b.store.contains("dinoiser.obj_proj.weight"));
    assert_eq!(b.store.len(), 86 + 4);

    // .bin without config: inferred, head width 64.
    let b2 = load_model_files(&fixture_files(&["open_clip_pytorch_model.bin"]))?;
    assert_eq!(b2.head, None);
    assert_eq!(b2.clip.vision.heads, 1);
    assert_eq!(
        (
            b2.clip.vision.width,
            b2.clip.vision.layers,
            b2.clip.embed_dim
        ),
        (64, 4, 32)
    );
    assert_eq!(
        (b2.clip.text.vocab_size, b2.clip.text.context_length),
        (1000, 77)
    );

    // An open_clip training checkpoint: `{'epoch': 3, 'state_dict': {'module.visual…': …}}`.
    let st = read_safetensors(&fixture("open_clip_model.safetensors"), "m.safetensors")?;
    let prefixed: Vec<(String, Tensor)> = entries_of(&st)
        .into_iter()
        .map(|(n, t)| (format!("module.{n}"), t))
        .collect();
    let ckpt = write_torch_pickle(&prefixed, Some("state_dict"), &[("epoch", 3)])?;
    let mut files = fixture_files(&["open_clip_config.json"]);
    files.push(("epoch_3.pt".into(), ckpt));
    let b4 = load_model_files(&files)?;
    assert_eq!(b4.clip, cfg);
    assert_same_stores(&b4.store, &st);

    // The bundle of the first, through GGUF and back via load_model_files.
    let g = write_gguf_bundle(&b, Quant::F32)?;
    let b3 = load_model_files(&[("tiny.gguf".to_string(), g)])?;
    assert_eq!(b3.clip, b.clip);
    assert_eq!(b3.head, b.head);
    assert_eq!(
        max_abs_diff(
            &f32_of(b3.store.get("dinoiser.obj_proj.weight").unwrap()),
            &f32_of(b.store.get("dinoiser.obj_proj.weight").unwrap())
        ),
        0.0
    );

    // Wrong combinations.
    let e = load_model_files(&fixture_files(&["last.pt"])).unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    assert_names(&e, "CLIP weights");
    let e = load_model_files(&fixture_files(&[
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
    ]))
    .unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    assert_names(&e, "open_clip_pytorch_model.bin");
    let mut files = fixture_files(&["open_clip_model.safetensors"]);
    files.push(("tiny.gguf".into(), write_gguf_bundle(&b, Quant::F16)?));
    let e = load_model_files(&files).unwrap_err();
    assert_names(&e, "tiny.gguf");
    let e = load_model_files(&[]).unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }));

    // A head for another backbone width.
    let other = random_head_store(
        &HeadConfig {
            in_dim: 48,
            proj_dim: 32,
            layer: 1,
        },
        1,
    );
    let mut files = fixture_files(&["open_clip_model.safetensors", "open_clip_config.json"]);
    let wrapped = write_torch_pickle(
        &entries_of(&other),
        Some("model_state_dict"),
        &[("epoch", 0)],
    )?;
    files.push(("other_head.pt".into(), wrapped));
    let e = load_model_files(&files).unwrap_err();
    assert!(matches!(e, Error::WrongModel { .. }), "{e}");
    assert_names(&e, "other_head.pt");
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Bad inputs
// ------------------------------------------------------------------------------------------

fn without(store: &TensorStore, drop: &str) -> Vec<(String, Tensor)> {
    entries_of(store)
        .into_iter()
        .filter(|(n, _)| n != drop)
        .collect()
}

#[test]
fn missing_and_misshaped_tensors_are_named() -> R<()> {
    let st = read_safetensors(
        &fixture("open_clip_model.safetensors"),
        "open_clip_model.safetensors",
    )?;
    let config = (
        "open_clip_config.json".to_string(),
        fixture("open_clip_config.json"),
    );

    let name = "visual.transformer.resblocks.2.mlp.c_fc.bias";
    let files = vec![
        (
            "cut.safetensors".to_string(),
            write_safetensors_entries(&without(&st, name), &[])?,
        ),
        config.clone(),
    ];
    let e = load_model_files(&files).unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert_names(&e, name);
    assert_names(&e, "cut.safetensors");

    let name = "text_projection";
    let mut entries = without(&st, name);
    entries.push((
        name.to_string(),
        Tensor::zeros((64, 31), DType::F32, &Device::Cpu)?,
    ));
    let files = vec![
        (
            "bad.safetensors".to_string(),
            write_safetensors_entries(&entries, &[])?,
        ),
        config.clone(),
    ];
    let e = load_model_files(&files).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert_names(&e, name);
    assert_names(&e, "[64, 32]");

    // Without a config, a missing tensor the inference needs is named as well.
    let files = vec![(
        "noconv.bin".to_string(),
        write_torch_pickle(&without(&st, "visual.conv1.weight"), None, &[])?,
    )];
    let e = load_model_files(&files).unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert_names(&e, "visual.conv1.weight");

    // A head checkpoint missing one of its tensors / with a wrong shape.
    let head = read_dinoiser_checkpoint(&fixture("last.pt"), "last.pt")?;
    let e = read_dinoiser_checkpoint(
        &write_torch_pickle(
            &without(&head, "bkg_decoder.bias"),
            Some("model_state_dict"),
            &[],
        )?,
        "h.pt",
    )
    .unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert_names(&e, "bkg_decoder.bias");
    let mut entries = without(&head, "bkg_decoder.weight");
    entries.push((
        "bkg_decoder.weight".into(),
        Tensor::zeros((2, 64, 1, 1), DType::F32, &Device::Cpu)?,
    ));
    let e =
        read_dinoiser_checkpoint(&write_torch_pickle(&entries, None, &[])?, "h.pt").unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert_names(&e, "bkg_decoder.weight");
    let e =
        read_dinoiser_checkpoint(&fixture("open_clip_pytorch_model.bin"), "clip.bin").unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert_names(&e, "obj_proj.weight");
    Ok(())
}

/// Cut a file at many offsets: every prefix must give an error (never a panic), naming the file.
fn check_truncations(bytes: &[u8], name: &str, read: impl Fn(&[u8]) -> clipdino::Result<()>) {
    let n = bytes.len();
    let mut cuts: Vec<usize> = vec![0, 1, 3, 4, 7, 8, 9, 16, 24, 31, 33, 64, 100, 200, 500, 1000];
    cuts.extend((1..40).map(|k| n * k / 40));
    cuts.extend([
        n.saturating_sub(1),
        n.saturating_sub(8),
        n.saturating_sub(100),
    ]);
    let mut truncated = 0;
    for cut in cuts.into_iter().filter(|&c| c < n) {
        match read(&bytes[..cut]) {
            Ok(()) => panic!("{name} cut at {cut}/{n} was accepted"),
            Err(e) => {
                if matches!(e, Error::Truncated { .. }) {
                    truncated += 1;
                }
                assert_names(&e, name);
            }
        }
    }
    assert!(truncated > 0, "{name}: no cut was reported as truncated");
}

#[test]
fn truncated_files_never_panic() -> R<()> {
    let st = fixture("open_clip_model.safetensors");
    check_truncations(&st, "m.safetensors", |b| {
        read_safetensors(b, "m.safetensors").map(|_| ())
    });
    let bin = fixture("open_clip_pytorch_model.bin");
    check_truncations(&bin, "m.bin", |b| read_torch_pickle(b, "m.bin").map(|_| ()));
    let pt = fixture("last.pt");
    check_truncations(&pt, "last.pt", |b| {
        read_dinoiser_checkpoint(b, "last.pt").map(|_| ())
    });
    for q in [Quant::F16, Quant::Q4_0] {
        let g = write_gguf_bundle(&tiny_bundle(5), q)?;
        check_truncations(&g, "b.gguf", |b| read_gguf_bundle(b, "b.gguf").map(|_| ()));
    }
    // Through the detection path too.
    check_truncations(&bin, "m.bin", |b| {
        load_model_files(&[("m.bin".into(), b.to_vec())]).map(|_| ())
    });
    Ok(())
}

#[test]
fn garbage_empty_and_text_files() {
    // splitmix-style bytes, no RNG crate needed
    let mut x = 0x1234_5678_9abc_def0u64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    let text = b"Just some notes about the model.\nNot weights.\n".to_vec();
    for (name, bytes) in [
        ("random.bin", random),
        ("empty.safetensors", vec![]),
        ("notes.txt", text),
    ] {
        let e = load_model_files(&[(name.to_string(), bytes.clone())]).unwrap_err();
        assert!(
            matches!(e, Error::NotWeights { .. } | Error::Truncated { .. }),
            "{name}: {e}"
        );
        assert_names(&e, name);
        for r in [
            read_safetensors(&bytes, name).map(|_| ()),
            read_torch_pickle(&bytes, name).map(|_| ()),
            read_gguf_bundle(&bytes, name).map(|_| ()),
            read_dinoiser_checkpoint(&bytes, name).map(|_| ()),
        ] {
            let e = r.expect_err(name);
            assert!(
                matches!(e, Error::NotWeights { .. } | Error::Truncated { .. }),
                "{name}: {e}"
            );
            assert_names(&e, name);
        }
    }
    // A JSON file that is not an open_clip config.
    let e = load_model_files(&[("x.json".into(), b"{\"hello\": 1}".to_vec())]).unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e}");
    assert_names(&e, "x.json");
}

#[test]
fn safetensors_hostile_headers() -> R<()> {
    // Header length claiming 2^60 bytes: refused up front, no allocation.
    let mut b = (1u64 << 60).to_le_bytes().to_vec();
    b.extend_from_slice(b"{\"a\":{}}");
    let e = read_safetensors(&b, "huge.safetensors").unwrap_err();
    assert!(matches!(e, Error::NotWeights { .. }), "{e}");
    assert_names(&e, "huge.safetensors");
    // Within the limit but longer than the file.
    let mut b = 50_000_000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{\"a\":{}}");
    let e = read_safetensors(&b, "long.safetensors").unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    // A tensor whose data range lies past the end / whose shape does not match its bytes.
    for (name, hdr) in [
        (
            "past_end",
            r#"{"w":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#,
        ),
        (
            "bad_shape",
            r#"{"w":{"dtype":"F32","shape":[3,3],"data_offsets":[0,8]}}"#,
        ),
    ] {
        let mut b = (hdr.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(hdr.as_bytes());
        b.extend_from_slice(&[0u8; 8]);
        let e = read_safetensors(&b, name).unwrap_err();
        assert!(
            matches!(e, Error::Truncated { .. } | Error::NotWeights { .. }),
            "{e}"
        );
        assert_names(&e, name);
    }
    // Unsupported dtype: named.
    let hdr = r#"{"w":{"dtype":"F8_E5M2","shape":[8],"data_offsets":[0,8]}}"#;
    let mut b = (hdr.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(hdr.as_bytes());
    b.extend_from_slice(&[0u8; 8]);
    let e = read_safetensors(&b, "f8.safetensors").unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedDtype { .. } | Error::NotWeights { .. }),
        "{e}"
    );
    assert_names(&e, "f8.safetensors");
    Ok(())
}

/// A GGUF file written by candle's writer with our own metadata.
fn gguf_with(meta: &[(&str, candle_core::quantized::gguf_file::Value)]) -> R<Vec<u8>> {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let t = QTensor::quantize(
        &Tensor::zeros((2, 32), DType::F32, &Device::Cpu)?,
        GgmlDType::F32,
    )?;
    let refs: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let mut c = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut c, &refs, &[("x", &t)])?;
    Ok(c.into_inner())
}

#[test]
fn gguf_of_another_model_or_incomplete_metadata() -> R<()> {
    use candle_core::quantized::gguf_file::Value;
    let e = read_gguf_bundle(
        &gguf_with(&[("general.architecture", Value::String("llama".into()))])?,
        "llama.gguf",
    )
    .unwrap_err();
    assert!(matches!(e, Error::WrongModel { .. }), "{e}");
    assert_names(&e, "general.architecture");
    assert_names(&e, "llama");
    assert_names(&e, "llama.gguf");

    let e = read_gguf_bundle(&gguf_with(&[])?, "nometa.gguf").unwrap_err();
    assert_names(&e, "general.architecture");
    let arch = ("general.architecture", Value::String("clipdino".into()));
    let e = read_gguf_bundle(
        &gguf_with(&[arch.clone(), ("clipdino.format_version", Value::U32(1))])?,
        "b.gguf",
    )
    .unwrap_err();
    assert_names(&e, "clipdino.clip_config");
    let e = read_gguf_bundle(&gguf_with(std::slice::from_ref(&arch))?, "b.gguf").unwrap_err();
    assert_names(&e, "clipdino.format_version");
    let e = read_gguf_bundle(
        &gguf_with(&[arch.clone(), ("clipdino.format_version", Value::U32(99))])?,
        "b.gguf",
    )
    .unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e}");
    assert_names(&e, "clipdino.format_version");
    let bad_json = (
        "clipdino.clip_config",
        Value::String("{\"embed_dim\": 3}".into()),
    );
    let e = read_gguf_bundle(
        &gguf_with(&[
            arch.clone(),
            ("clipdino.format_version", Value::U32(1)),
            bad_json,
        ])?,
        "b.gguf",
    )
    .unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e}");
    assert_names(&e, "clipdino.clip_config");
    // Valid metadata but the weights are not there.
    let cfg = serde_json::to_string(&tiny_cfg())?;
    let e = read_gguf_bundle(
        &gguf_with(&[
            arch.clone(),
            ("clipdino.format_version", Value::U32(1)),
            ("clipdino.clip_config", Value::String(cfg)),
        ])?,
        "empty.gguf",
    )
    .unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert_names(&e, "visual.conv1.weight");
    // A zero alignment would divide by zero inside the parser.
    let e = read_gguf_bundle(
        &gguf_with(&[arch, ("general.alignment", Value::U32(0))])?,
        "align.gguf",
    )
    .unwrap_err();
    assert_names(&e, "general.alignment");
    Ok(())
}

#[test]
fn gguf_hostile_counts_and_sizes() -> R<()> {
    // Header declaring 2^40 tensors in a 40-byte file.
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&[0u8; 16]);
    let e = read_gguf_bundle(&b, "count.gguf").unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    assert_names(&e, "count.gguf");

    // A string length of 2^62.
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&(1u64 << 62).to_le_bytes());
    b.extend_from_slice(&[b'a'; 32]);
    let e = read_gguf_bundle(&b, "str.gguf").unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");

    // A real bundle whose first tensor claims enormous dimensions: patch the first dim (u64 after
    // the name) of the first tensor info.
    let good = write_gguf_bundle(&tiny_bundle(2), Quant::F32)?;
    let first = "dinoiser.bkg_decoder.bias".as_bytes();
    let pos = good
        .windows(first.len())
        .position(|w| w == first)
        .expect("first tensor name")
        + first.len();
    for dim in [u64::MAX, 1 << 40] {
        let mut bad = good.clone();
        // n_dims (u32) then dims (u64 each)
        bad[pos + 4..pos + 12].copy_from_slice(&dim.to_le_bytes());
        let e = read_gguf_bundle(&bad, "dims.gguf").unwrap_err();
        assert_names(&e, "dinoiser.bkg_decoder.bias");
    }
    Ok(())
}

/// Pickle of `{'w': _rebuild_tensor_v2(('storage', <class>, '0', 'cpu', numel), offset, size, stride, False, OrderedDict())}`.
fn tensor_pickle(class: &str, numel: u32, offset: u32, size: &[u32], stride: &[u32]) -> Vec<u8> {
    tensors_pickle(&[("w", class, "0", numel, offset, size, stride)])
}

#[test]
fn torch_pickle_views_and_hostile_pickles() -> R<()> {
    let data: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
    // A transposed view with an offset: storage [0..12], offset 1, size [2,3], stride [1,2]
    // → [[1,3,5],[2,4,6]].
    let ok = torch_zip(
        &tensor_pickle("FloatStorage", 12, 1, &[2, 3], &[1, 2]),
        &[("0", &data)],
    );
    let s = read_torch_pickle(&ok, "view.pt")?;
    let w = f32_of(s.get("w").unwrap()).to_vec2::<f32>()?;
    assert_eq!(w, vec![vec![1., 3., 5.], vec![2., 4., 6.]]);
    // Integer storages are skipped, not errors.
    let ints = torch_zip(
        &tensor_pickle("LongStorage", 1, 0, &[1], &[1]),
        &[("0", &[0u8; 8])],
    );
    assert!(read_torch_pickle(&ints, "ints.pt")?.is_empty());

    let cases: Vec<(&str, Vec<u8>)> = vec![
        // view past the end of its storage
        (
            "oob",
            torch_zip(
                &tensor_pickle("FloatStorage", 12, 5, &[2, 4], &[4, 1]),
                &[("0", &data)],
            ),
        ),
        // storage declared larger than its data entry
        (
            "short",
            torch_zip(
                &tensor_pickle("FloatStorage", 100, 0, &[100], &[1]),
                &[("0", &data)],
            ),
        ),
        // storage of 2^32-1 elements: refused before reading
        (
            "huge",
            torch_zip(
                &tensor_pickle("FloatStorage", u32::MAX, 0, &[4], &[1]),
                &[("0", &data)],
            ),
        ),
        // broadcasting view with more elements than storage
        (
            "bcast",
            torch_zip(
                &tensor_pickle("FloatStorage", 12, 0, &[1000, 12], &[0, 1]),
                &[("0", &data)],
            ),
        ),
        // storage entry missing
        (
            "nodata",
            torch_zip(&tensor_pickle("FloatStorage", 12, 0, &[12], &[1]), &[]),
        ),
        // unknown storage class
        (
            "complex",
            torch_zip(
                &tensor_pickle("ComplexFloatStorage", 6, 0, &[6], &[1]),
                &[("0", &data)],
            ),
        ),
        // BINUNICODE claiming 4 GB
        ("str", torch_zip(b"\x80\x02X\xff\xff\xff\xffabc.", &[])),
        // 100 000 nested tuples
        ("deep", torch_zip(&deep_pickle(100_000), &[])),
        // memo bomb: a list doubled 64 times through the memo
        ("bomb", torch_zip(&memo_bomb_pickle(), &[])),
        // unknown opcode, stack underflow, missing STOP
        ("opcode", torch_zip(b"\x80\x02\xff.", &[])),
        ("underflow", torch_zip(b"\x80\x02t.", &[])),
        ("nostop", torch_zip(b"\x80\x02}", &[])),
        // a zip without data.pkl
        ("nopkl", {
            let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            zw.start_file("readme.txt", zip::write::SimpleFileOptions::default())
                .unwrap();
            zw.write_all(b"hi").unwrap();
            zw.finish().unwrap().into_inner()
        }),
    ];
    for (name, bytes) in cases {
        let e = read_torch_pickle(&bytes, name).expect_err(name);
        assert!(
            matches!(
                e,
                Error::NotWeights { .. }
                    | Error::Truncated { .. }
                    | Error::UnsupportedDtype { .. }
                    | Error::OverBudget { .. }
            ),
            "{name}: {e}"
        );
        assert_names(&e, name);
        if ["oob", "short", "huge", "bcast", "complex"].contains(&name) {
            assert_names(&e, "`w`");
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Random weights
// ------------------------------------------------------------------------------------------

#[test]
fn random_weights_are_deterministic_complete_and_scaled() -> R<()> {
    let cfg = tiny_cfg();
    let a = random_clip_store(&cfg, 42);
    let b = random_clip_store(&cfg, 42);
    let c = random_clip_store(&cfg, 43);
    assert_same_stores(&a, &b);
    loaders::validate_clip_store(&a, &cfg)?;
    assert_eq!(
        a.len(),
        loaders::expected_clip_tensors(&cfg).len() + 1,
        "+ logit_scale"
    );
    let n = "visual.transformer.resblocks.0.attn.in_proj_weight";
    assert!(max_abs_diff(&f32_of(a.get(n).unwrap()), &f32_of(c.get(n).unwrap())) > 0.0);

    // Statistics: weight std ≈ width^-0.5, LayerNorm weight ≈ 1.
    let w = f32_of(a.get(n).unwrap()).flatten_all()?.to_vec1::<f32>()?;
    let mean = w.iter().sum::<f32>() / w.len() as f32;
    let std = (w.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / w.len() as f32).sqrt();
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((std - 0.125).abs() < 0.005, "std {std} vs 64^-0.5 = 0.125");
    let ln = f32_of(a.get("visual.ln_pre.weight").unwrap()).to_vec1::<f32>()?;
    assert!(ln.iter().all(|x| (x - 1.0).abs() < 0.1));

    // The generator uses only correctly-rounded IEEE operations, so these bits must be the same
    // on every platform (and stay the same across releases: tests elsewhere rely on the seeds).
    let first: Vec<u32> = f32_of(a.get("visual.class_embedding").unwrap()).to_vec1::<f32>()?[..4]
        .iter()
        .map(|x| x.to_bits())
        .collect();
    assert_eq!(first, [0x3e0ea8fa, 0x3e0f464d, 0xbe9d91d5, 0x3d89aaa9]);
    let head = random_head_store(&HeadConfig::for_clip(&cfg, 32), 42);
    let hc = HeadConfig {
        in_dim: 64,
        proj_dim: 32,
        layer: 0,
    };
    loaders::validate_head_store(&head, &hc, "")?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Mutations: damaged files must give errors (or, when the damage only hits data, weights),
// never a panic. Deterministic: a fixed xorshift stream.
// ------------------------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Overwrite 1–4 bytes, half of them within the first `head` bytes (where headers live).
    fn mutate(&mut self, bytes: &[u8], head: usize) -> Vec<u8> {
        let mut m = bytes.to_vec();
        for _ in 0..1 + self.next() % 4 {
            let region = if self.next().is_multiple_of(2) {
                m.len().min(head)
            } else {
                m.len()
            };
            let pos = self.next() as usize % region;
            m[pos] = match self.next() % 4 {
                0 => 0xff,
                1 => 0,
                2 => m[pos] ^ (1 << (self.next() % 8)),
                _ => self.next() as u8,
            };
        }
        m
    }
}

#[test]
fn mutated_files_never_panic() -> R<()> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut files = fixture_files(&[
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
        "last.pt",
    ]);
    for q in [Quant::F32, Quant::Q4_0] {
        files.push((format!("{q}.gguf"), write_gguf_bundle(&tiny_bundle(9), q)?));
    }
    for (name, bytes) in &files {
        let mut errors = 0;
        for _ in 0..300 {
            let m = rng.mutate(bytes, 4096);
            if let Err(e) = load_model_files(&[(name.clone(), m)]) {
                errors += 1;
                let msg = e.to_string();
                assert!(!msg.is_empty());
            }
        }
        assert!(errors > 0, "{name}: no mutation was detected");
    }

    // The zip CRC catches most damage to `data.pkl`: damage the pickle itself and re-zip it, so
    // the unpickler sees it.
    let bin = fixture("open_clip_pytorch_model.bin");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bin))?;
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i)?;
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut v)?;
        entries.push((f.name().to_string(), v));
    }
    let pkl = entries
        .iter()
        .find(|(n, _)| n.ends_with("/data.pkl"))
        .map(|(_, v)| v.clone())
        .expect("data.pkl");
    let storages: Vec<(String, Vec<u8>)> = entries
        .iter()
        .filter_map(|(n, v)| {
            n.split_once("/data/")
                .map(|(_, k)| (k.to_string(), v.clone()))
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = storages
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(
        read_torch_pickle(&torch_zip(&pkl, &refs), "rezipped.bin")?.len(),
        86
    );
    // More iterations for a longer local fuzzing run: CLIPDINO_FUZZ_ITERS=100000.
    let iters: usize = std::env::var("CLIPDINO_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut errors = 0;
    for _ in 0..iters {
        let m = rng.mutate(&pkl, pkl.len());
        if let Err(e) = read_torch_pickle(&torch_zip(&m, &refs), "mutated.bin") {
            errors += 1;
            assert_names(&e, "mutated.bin");
        }
    }
    assert!(
        errors > 100,
        "only {errors} of 400 damaged pickles were refused"
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Hostile files (issue 13): one budget per load, checked arithmetic, bounded configs. Test
// names carry the issue's item numbers.
// ------------------------------------------------------------------------------------------

fn budget(max_bytes: u64) -> LoadBudget {
    LoadBudget::with_max_bytes(max_bytes)
}

#[test]
fn one_budget_covers_every_file_of_a_load() -> R<()> {
    let files = fixture_files(&[
        "open_clip_model.safetensors",
        "open_clip_config.json",
        "last.pt",
    ]);
    // The default budget holds it; so does a budget of exactly what it allocates.
    let mut meter = LoadMeter::default();
    let st = loaders::read_safetensors_metered(&files[0].1, "m", &mut meter)?;
    let clip_bytes = meter.peak_bytes();
    assert_eq!(
        clip_bytes,
        st.storage_bytes() as u64,
        "tensors are all it keeps"
    );
    load_model_files(&files)?;
    // The head file pushes the load over a budget that holds the CLIP file alone: the error
    // names the head file and a tensor of it.
    let e = loaders::load_model_files_with(&files, budget(clip_bytes + 100)).unwrap_err();
    assert!(matches!(e, Error::OverBudget { .. }), "{e}");
    assert_names(&e, "last.pt");
    assert_names(&e, "of the load's budget of");
    // The tensor count is part of the budget too.
    let few = LoadBudget {
        max_bytes: u64::MAX,
        max_tensors: 10,
    };
    for f in [
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
        "last.pt",
    ] {
        let e = loaders::load_model_files_with(
            &fixture_files(&[f]),
            LoadBudget {
                max_tensors: 2,
                ..few
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::OverBudget { .. }), "{f}: {e}");
        assert_names(&e, f);
    }
    let g = write_gguf_bundle(&tiny_bundle(3), Quant::Q8_0)?;
    let e = loaders::load_model_files_with(&[("b.gguf".into(), g)], few).unwrap_err();
    assert!(matches!(e, Error::OverBudget { .. }), "{e}");
    assert_names(&e, "b.gguf");
    Ok(())
}

#[test]
fn torch_storages_stored_or_deflated_give_the_same_tensors() -> R<()> {
    // torch stores entries uncompressed (read in place); a re-zipped file deflates them.
    let bin = fixture("open_clip_pytorch_model.bin");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bin))?;
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for i in 0..zip.len() {
        let mut f = zip.by_index(i)?;
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut v)?;
        zw.start_file(f.name().to_string(), o)?;
        zw.write_all(&v)?;
    }
    let deflated = zw.finish()?.into_inner();
    assert!(deflated.len() < bin.len());
    assert_same_stores(
        &read_torch_pickle(&bin, "stored.bin")?,
        &read_torch_pickle(&deflated, "deflated.bin")?,
    );
    // A damaged stored storage fails its CRC (the bytes are read in place, not through zip).
    let mut bad = bin.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    let e = read_torch_pickle(&bad, "bitflip.bin").unwrap_err();
    assert_names(&e, "bitflip.bin");
    Ok(())
}

#[test]
fn item1_gguf_alignment_of_any_integer_type_must_be_a_power_of_two() -> R<()> {
    use candle_core::quantized::gguf_file::Value;
    let arch = ("general.architecture", Value::String("clipdino".into()));
    let version = ("clipdino.format_version", Value::U32(1));
    let cfg = (
        "clipdino.clip_config",
        Value::String(serde_json::to_string(&tiny_cfg())?),
    );
    for (what, v) in [
        ("u8 0", Value::U8(0)),
        ("i8 0", Value::I8(0)),
        ("i16 0", Value::I16(0)),
        ("i32 0", Value::I32(0)),
        ("i64 0", Value::I64(0)),
        ("u64 0", Value::U64(0)),
        ("negative", Value::I32(-32)),
        ("not a power of two", Value::U32(24)),
        ("too small", Value::U32(4)),
        ("absurd", Value::U64(1 << 40)),
        ("a string", Value::String("32".into())),
        ("a float", Value::F32(32.0)),
    ] {
        let g = gguf_with(&[
            arch.clone(),
            version.clone(),
            cfg.clone(),
            ("general.alignment", v),
        ])?;
        let e = read_gguf_bundle(&g, "align.gguf").expect_err(what);
        assert!(matches!(e, Error::NotWeights { .. }), "{what}: {e}");
        assert_names(&e, "general.alignment");
        assert_names(&e, "align.gguf");
    }
    // A valid alignment of a signed type is accepted (the read then stops at the missing CLIP
    // tensors of this metadata-only file).
    let g = gguf_with(&[arch, version, cfg, ("general.alignment", Value::I32(32))])?;
    let e = read_gguf_bundle(&g, "ok.gguf").unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    Ok(())
}

#[test]
fn item2_config_inference_checks_every_tensor_rank() -> R<()> {
    let store = read_safetensors(&fixture("open_clip_model.safetensors"), "m")?;
    let entries = entries_of(&store);
    let dev = Device::Cpu;
    let inferred = [
        "visual.conv1.weight",
        "visual.positional_embedding",
        "visual.transformer.resblocks.0.mlp.c_fc.weight",
        "visual.proj",
        "token_embedding.weight",
        "positional_embedding",
        "transformer.resblocks.0.mlp.c_fc.weight",
    ];
    for name in inferred {
        for bad in [
            Tensor::new(1f32, &dev)?,
            Tensor::zeros(5, DType::F32, &dev)?,
        ] {
            let mut e2 = without(&store, name);
            e2.push((name.to_string(), bad.clone()));
            let bytes = write_safetensors_entries(&e2, &[])?;
            // No config: the architecture is inferred from the shapes.
            let e = load_model_files(&[("rank.safetensors".into(), bytes)]).unwrap_err();
            assert!(
                matches!(e, Error::WrongRank { .. } | Error::ShapeMismatch { .. }),
                "{name} {:?}: {e}",
                bad.dims()
            );
            assert_names(&e, name);
            assert_names(&e, "rank.safetensors");
        }
    }
    // The transposed bundle layout of the projection is checked too.
    let mut e2 = without(&store, "visual.proj");
    e2.push(("visual.proj_t".into(), Tensor::zeros(7, DType::F32, &dev)?));
    let s = read_safetensors(&write_safetensors_entries(&e2, &[])?, "t.safetensors")?;
    let e = ClipConfig::infer(&s, 64, 64).unwrap_err();
    assert!(matches!(e, Error::WrongRank { .. }), "{e}");
    assert_names(&e, "visual.proj_t");
    // A positional embedding of 0 or 3 rows is not a square grid + CLS.
    for rows in [0usize, 3] {
        let mut t = TensorStore::new("p");
        for (n, x) in &entries {
            t.insert(n.clone(), Stored::Float(x.clone()));
        }
        t.insert(
            "visual.positional_embedding",
            Stored::Float(Tensor::zeros((rows, 64), DType::F32, &dev)?),
        );
        let e = ClipConfig::infer(&t, 64, 64).unwrap_err();
        assert_names(&e, "visual.positional_embedding");
    }
    Ok(())
}

#[test]
fn item3_torch_views_of_one_storage_are_each_charged() -> R<()> {
    // 100 views of one 1 MB storage: 100 MB of tensors from a 1 MB file.
    const NUMEL: u32 = 1 << 18;
    let storage: Vec<u8> = vec![0u8; NUMEL as usize * 4];
    let names: Vec<String> = (0..100).map(|i| format!("view{i:03}")).collect();
    let tensors: Vec<TensorSpec> = names
        .iter()
        .map(|n| {
            (
                n.as_str(),
                "FloatStorage",
                "0",
                NUMEL,
                0,
                &[NUMEL][..],
                &[1][..],
            )
        })
        .collect();
    let file = torch_zip(&tensors_pickle(&tensors), &[("0", &storage)]);
    // Fine within a budget that holds them all.
    let mut meter = LoadMeter::new(budget(200 << 20));
    assert_eq!(
        loaders::read_torch_pickle_metered(&file, "views.pt", &mut meter)?.len(),
        100
    );
    assert_eq!(
        meter.peak_bytes(),
        100 << 20,
        "views are charged, the storage is read in place"
    );
    // The same from a deflated storage: a 4 kB file asking for 100 × 1 MB.
    let small = shared_storage_views(100, NUMEL);
    assert!(small.len() < 8 << 10, "{}", small.len());
    let mut meter = LoadMeter::new(budget(200 << 20));
    assert_eq!(
        loaders::read_torch_pickle_metered(&small, "views.pt", &mut meter)?.len(),
        100
    );
    let e = loaders::read_torch_pickle_metered(
        &small,
        "views.pt",
        &mut LoadMeter::new(budget(10 << 20)),
    )
    .unwrap_err();
    assert!(matches!(e, Error::OverBudget { .. }), "{e}");
    // Refused at the view that overflows a 10 MB budget: nothing beyond it was built.
    let e = loaders::read_torch_pickle_metered(
        &file,
        "views.pt",
        &mut LoadMeter::new(budget(10 << 20)),
    )
    .unwrap_err();
    assert!(matches!(e, Error::OverBudget { .. }), "{e}");
    assert_names(&e, "views.pt");
    assert_names(&e, "view010");
    Ok(())
}

#[test]
fn item3_torch_entries_sharing_one_compressed_entry_inflate_within_the_budget() -> R<()> {
    // One deflated 4 MB storage of zeros (a few kB in the file), listed under 200 names in the
    // central directory; every tensor names its own storage, i.e. another alias.
    let file = aliased_storages(200, 1 << 20);
    assert!(file.len() < 64 << 10, "{} bytes", file.len());
    // 200 × 4 MB = 800 MB to inflate; a 100 MB budget stops it after 25 entries.
    let mut meter = LoadMeter::new(budget(100 << 20));
    let e = loaders::read_torch_pickle_metered(&file, "aliases.pt", &mut meter).unwrap_err();
    assert!(matches!(e, Error::OverBudget { .. }), "{e}");
    assert_names(&e, "aliases.pt");
    assert_names(&e, "inflate");
    assert!(meter.peak_bytes() <= 100 << 20);
    // Within a budget that allows it, each one-element view is built from its alias.
    let mut meter = LoadMeter::new(budget(1 << 30));
    assert_eq!(
        loaders::read_torch_pickle_metered(&file, "aliases.pt", &mut meter)?.len(),
        200
    );
    assert!(
        meter.peak_bytes() < (8 << 20) + 4096,
        "one inflated entry at a time"
    );
    Ok(())
}

#[test]
fn item3_torch_pickle_stack_memo_and_dup_are_bounded_in_bytes() -> R<()> {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // 200 000 Nones on the stack
        ("stack", {
            let mut p = vec![0x80, 2];
            p.extend(std::iter::repeat_n(b'N', 200_000));
            p.push(b'.');
            p
        }),
        // 200 000 MARKs
        ("marks", {
            let mut p = vec![0x80, 2];
            p.extend(std::iter::repeat_n(b'(', 200_000));
            p.push(b'.');
            p
        }),
        // a 10 000-element list duplicated 100 000 times (48 GB of copies)
        ("dup", {
            let mut p = vec![0x80, 2, b']', b'('];
            p.extend(std::iter::repeat_n(b'N', 10_000));
            p.push(b'e');
            p.extend(std::iter::repeat_n(b'2', 100_000));
            p.push(b'.');
            p
        }),
        // the same list fetched from the memo 100 000 times
        ("memo", {
            let mut p = vec![0x80, 2, b']', b'('];
            p.extend(std::iter::repeat_n(b'N', 10_000));
            p.extend_from_slice(b"eq\x00");
            for _ in 0..100_000 {
                p.extend_from_slice(b"h\x00");
            }
            p.push(b'.');
            p
        }),
    ];
    for (name, pkl) in cases {
        let t0 = std::time::Instant::now();
        let e = read_torch_pickle(&torch_zip(&pkl, &[]), name).expect_err(name);
        assert!(
            matches!(e, Error::NotWeights { .. } | Error::OverBudget { .. }),
            "{name}: {e}"
        );
        assert_names(&e, name);
        assert!(
            e.to_string().contains("stack") || e.to_string().contains("MiB of objects"),
            "{name}: {e}"
        );
        assert!(
            t0.elapsed().as_secs() < 10,
            "{name} took {:?}",
            t0.elapsed()
        );
    }
    Ok(())
}

#[test]
fn item3_torch_pickle_refuses_imports_outside_the_allow_list() -> R<()> {
    // GLOBAL + REDUCE as `pickle` writes `os.system("...")`, and protocol 4's STACK_GLOBAL.
    let marker = std::env::temp_dir().join(format!("clipdino-pwned-{}", std::process::id()));
    let cmd = format!("touch {}", marker.display());
    let mut reduce = b"\x80\x02cos\nsystem\nX".to_vec();
    reduce.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    reduce.extend_from_slice(cmd.as_bytes());
    reduce.extend_from_slice(b"\x85R.");
    let stack_global = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R.".to_vec();
    let newobj = b"\x80\x02csubprocess\nPopen\n)\x81.".to_vec();
    // Hidden inside an otherwise normal state dict.
    let mut nested = tensors_pickle(&[("w", "FloatStorage", "0", 1, 0, &[1], &[1])]);
    nested.truncate(nested.len() - 2);
    nested.extend_from_slice(b"X\x01\x00\x00\x00xcposix\nsystem\nX\x02\x00\x00\x00ls\x85Ru.");
    for (name, pkl, global) in [
        ("reduce.pt", reduce, "os.system"),
        ("stack_global.pt", stack_global, "builtins.eval"),
        ("newobj.pt", newobj, "subprocess.Popen"),
        ("nested.pt", nested, "posix.system"),
    ] {
        let e = read_torch_pickle(&torch_zip(&pkl, &[("0", &[0u8; 4])]), name).unwrap_err();
        assert!(matches!(e, Error::NotWeights { .. }), "{name}: {e}");
        assert_names(&e, name);
        assert_names(&e, global);
        assert_names(&e, "refused");
    }
    assert!(!marker.exists(), "a pickle ran a command");
    // What torch itself writes is allowed: every fixture loads (checked elsewhere), and so
    // do parameters, dtypes, devices and sizes as `torch.save` names them.
    let allowed = b"\x80\x02}(X\x01\x00\x00\x00actorch\nfloat32\nX\x01\x00\x00\x00bctorch\ndevice\nX\x03\x00\x00\x00cpu\x85RX\x01\x00\x00\x00cctorch\nSize\n)Ru.";
    assert!(read_torch_pickle(&torch_zip(allowed, &[]), "ok.pt")?.is_empty());
    Ok(())
}

#[test]
fn item4_gguf_tensors_may_not_share_bytes() -> R<()> {
    let good = write_gguf_bundle(&tiny_bundle(4), Quant::F32)?;
    read_gguf_bundle(&good, "good.gguf")?;
    let same = ["visual.ln_pre.bias", "visual.ln_pre.weight"];
    let infos = gguf_tensor_infos(&good, &same);
    let off = |g: &[u8], i: usize| {
        let p = gguf_offset_pos(g, infos[i].1);
        u64::from_le_bytes(g[p..p + 8].try_into().unwrap())
    };
    // Two tensors of the same size at the same offset.
    let mut bad = good.clone();
    let p1 = gguf_offset_pos(&bad, infos[1].1);
    let o0 = off(&good, 0);
    bad[p1..p1 + 8].copy_from_slice(&o0.to_le_bytes());
    let e = read_gguf_bundle(&bad, "alias.gguf").unwrap_err();
    assert!(matches!(e, Error::NotWeights { .. }), "{e}");
    assert_names(&e, "share bytes");
    assert_names(&e, "visual.ln_pre.bias");
    assert_names(&e, "visual.ln_pre.weight");
    // Every tensor at offset 0.
    let bundle = tiny_bundle(4);
    let all: Vec<String> = bundle
        .store
        .names()
        .iter()
        .map(|n| {
            if *n == "visual.proj" || *n == "text_projection" {
                format!("{n}_t")
            } else {
                n.to_string()
            }
        })
        .collect();
    let all_refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut zeroed = good.clone();
    for (_, nd_pos) in gguf_tensor_infos(&good, &all_refs) {
        let p = gguf_offset_pos(&zeroed, nd_pos);
        zeroed[p..p + 8].copy_from_slice(&0u64.to_le_bytes());
    }
    let e = read_gguf_bundle(&zeroed, "zero.gguf").unwrap_err();
    assert_names(&e, "share bytes");
    // An offset that is not a multiple of the alignment.
    let mut odd = good.clone();
    odd[p1..p1 + 8].copy_from_slice(&(off(&good, 1) + 4).to_le_bytes());
    let e = read_gguf_bundle(&odd, "odd.gguf").unwrap_err();
    assert_names(&e, "visual.ln_pre.weight");
    assert_names(&e, "alignment");
    // A storage type the bundle format does not use is named.
    let mut q41 = good.clone();
    let tp = gguf_offset_pos(&q41, infos[1].1) - 4;
    q41[tp..tp + 4].copy_from_slice(&3u32.to_le_bytes());
    let e = read_gguf_bundle(&q41, "q41.gguf").unwrap_err();
    assert!(matches!(e, Error::UnsupportedDtype { .. }), "{e}");
    assert_names(&e, "visual.ln_pre.weight");
    assert_names(&e, "GGML type 3");
    Ok(())
}

/// A GGUF bundle file whose stored configs are `clip` / `head` (JSON), with the tiny weights.
fn gguf_with_configs(clip: &serde_json::Value, head: Option<&serde_json::Value>) -> R<Vec<u8>> {
    use candle_core::quantized::gguf_file::Value;
    let mut meta = vec![
        ("general.architecture", Value::String("clipdino".into())),
        ("clipdino.format_version", Value::U32(1)),
        ("clipdino.clip_config", Value::String(clip.to_string())),
    ];
    if let Some(h) = head {
        meta.push(("clipdino.head_config", Value::String(h.to_string())));
    }
    gguf_with(&meta)
}

#[test]
fn item5_config_fields_and_model_size_are_bounded() -> R<()> {
    let base = serde_json::to_value(tiny_cfg())?;
    let with = |path: &[&str], v: serde_json::Value| {
        let mut c = base.clone();
        let mut x = &mut c;
        for p in &path[..path.len() - 1] {
            x = x.get_mut(*p).unwrap();
        }
        x[path[path.len() - 1]] = v;
        c
    };
    let huge: u64 = 1 << 40;
    for (field, cfg) in [
        // the issue's example: a 2^16 grid (wraps `grid*grid+1` on wasm32)
        (
            "vision_cfg.image_size",
            with(&["vision", "image_size"], (1u64 << 20).into()),
        ),
        ("vision_cfg.width", with(&["vision", "width"], huge.into())),
        (
            "vision_cfg.layers",
            with(&["vision", "layers"], 100_000.into()),
        ),
        (
            "vision_cfg.patch_size",
            with(&["vision", "patch_size"], 0.into()),
        ),
        (
            "vision_cfg.mlp_dim",
            with(&["vision", "mlp_dim"], huge.into()),
        ),
        ("vision_cfg.heads", with(&["vision", "heads"], 0.into())),
        ("text_cfg.width", with(&["text", "width"], huge.into())),
        (
            "text_cfg.vocab_size",
            with(&["text", "vocab_size"], huge.into()),
        ),
        (
            "text_cfg.context_length",
            with(&["text", "context_length"], huge.into()),
        ),
        ("embed_dim", with(&["embed_dim"], huge.into())),
        // every field within its bound, but 3.6 GB of f32
        (
            "model size",
            serde_json::json!({
                "embed_dim": 4096,
                "vision": {"width": 4096, "layers": 12, "heads": 64, "patch_size": 16, "image_size": 224, "mlp_dim": 16384},
                "text": {"width": 4096, "layers": 1, "heads": 64, "context_length": 77, "vocab_size": 49408, "mlp_dim": 16384}
            }),
        ),
    ] {
        let g = gguf_with_configs(&cfg, None)?;
        let e = read_gguf_bundle(&g, "cfg.gguf").unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{field}: {e}");
        assert_names(&e, &format!("clipdino.clip_config: {field}"));
        assert_names(&e, "cfg.gguf");
        // Directly too.
        let c: ClipConfig = serde_json::from_value(cfg)?;
        assert_names(&c.validate().unwrap_err(), field);
    }
    // The head config is bounded and checked against the CLIP config.
    for (field, head) in [
        (
            "head_config.proj_dim",
            serde_json::json!({"in_dim": 64, "proj_dim": huge, "layer": 0}),
        ),
        (
            "head_config.layer",
            serde_json::json!({"in_dim": 64, "proj_dim": 32, "layer": 99}),
        ),
        (
            "head_config.in_dim",
            serde_json::json!({"in_dim": 65, "proj_dim": 32, "layer": 0}),
        ),
    ] {
        let g = gguf_with_configs(&base, Some(&head))?;
        let e = read_gguf_bundle(&g, "head.gguf").unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{field}: {e}");
        assert_names(&e, field);
    }
    // open_clip JSON: absurd ratios, head widths and sizes.
    let oc = |v: serde_json::Value| ClipConfig::from_open_clip_json(&v.to_string());
    let vit = |extra: serde_json::Value| {
        let mut v =
            serde_json::json!({"image_size": 224, "layers": 12, "width": 768, "patch_size": 16});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::json!({"embed_dim": 512, "vision_cfg": v, "text_cfg": {"width": 512, "layers": 12}})
    };
    assert!(oc(vit(serde_json::json!({})))?.validate().is_ok());
    for (field, extra) in [
        (
            "vision_cfg.mlp_ratio",
            serde_json::json!({"mlp_ratio": 1e300}),
        ),
        (
            "vision_cfg.mlp_ratio",
            serde_json::json!({"mlp_ratio": -4.0}),
        ),
        (
            "vision_cfg.mlp_ratio",
            serde_json::json!({"mlp_ratio": 0.0}),
        ),
        (
            "vision_cfg.head_width",
            serde_json::json!({"head_width": 0}),
        ),
        (
            "vision_cfg.image_size",
            serde_json::json!({"image_size": 1u64 << 30}),
        ),
        (
            "vision_cfg.width",
            serde_json::json!({"width": 1u64 << 40, "head_width": 1u64 << 38}),
        ),
    ] {
        let e = oc(vit(extra.clone())).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{extra}: {e}");
        assert_names(&e, field);
    }
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2 << 20));
    assert_names(
        &ClipConfig::from_open_clip_json(&big).unwrap_err(),
        "open_clip_config.json",
    );
    // ViT-B/16 itself is well inside: 598 MB of f32.
    let b16 = ClipConfig::vit_b_16();
    b16.validate()?;
    assert!(
        (590_000_000..600_000_000).contains(&b16.f32_bytes()),
        "{}",
        b16.f32_bytes()
    );
    Ok(())
}

#[test]
fn item12_empty_tensors_with_huge_dims_are_refused_in_every_format() -> R<()> {
    // safetensors: shape [0, 2^40, 2^40], zero bytes of data.
    let hdr =
        r#"{"w":{"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]}}"#;
    let mut st = (hdr.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(hdr.as_bytes());
    let e = read_safetensors(&st, "empty.safetensors").unwrap_err();
    assert!(matches!(e, Error::NotWeights { .. }), "{e}");
    assert_names(&e, "`w`");
    assert_names(&e, "empty.safetensors");
    // torch: size (0, 2^31-1, 2^31-1, 2^31-1).
    let m = i32::MAX as u32;
    let pt = torch_zip(
        &tensors_pickle(&[("w", "FloatStorage", "0", 1, 0, &[0, m, m, m], &[1, 1, 1, 1])]),
        &[("0", &[0u8; 4])],
    );
    let e = read_torch_pickle(&pt, "empty.pt").unwrap_err();
    assert!(matches!(e, Error::NotWeights { .. }), "{e}");
    assert_names(&e, "`w`");
    // A sane empty tensor is fine.
    let pt = torch_zip(
        &tensors_pickle(&[("w", "FloatStorage", "0", 1, 0, &[0, 768], &[768, 1])]),
        &[("0", &[0u8; 4])],
    );
    assert_eq!(
        read_torch_pickle(&pt, "ok.pt")?.dims("w"),
        Some(vec![0, 768])
    );
    // GGUF: the 4-D head tensor with dims [0, 2^40, 2^40, 1] (innermost first in the file).
    let good = write_gguf_bundle(&tiny_bundle(6), Quant::F32)?;
    let (_, nd) = gguf_tensor_infos(&good, &["dinoiser.obj_proj.weight"])[0].clone();
    let mut bad = good.clone();
    for (i, d) in [1u64, 1 << 40, 1 << 40, 0].iter().enumerate() {
        let p = nd + 4 + 8 * i;
        bad[p..p + 8].copy_from_slice(&d.to_le_bytes());
    }
    let e = read_gguf_bundle(&bad, "empty.gguf").unwrap_err();
    assert_names(&e, "dinoiser.obj_proj.weight");
    assert_names(&e, "empty.gguf");
    Ok(())
}

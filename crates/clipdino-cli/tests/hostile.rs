//! Hostile weight files through the real binary, under a memory cap (issue 13): every file is
//! written by a generator here (`crates/clipdino/tests/support/hostile.rs`), fed to
//! `clipdino convert` and `clipdino segment` in a child shell limited with `ulimit -v`, and must
//! give one line of error in words, exit code 1, no output files, and no side effect of a pickle
//! that tries to run a command.
//!
//! The cap (2 GiB of address space) is twice the default load budget: a file that asks for more
//! than the budget must be refused by the budget, in words, long before the allocator would fail
//! (which would abort the process instead).

mod common;
#[path = "../../clipdino/tests/support/hostile.rs"]
mod hostile;

use std::fs;
use std::process::{Command, Output};

use clipdino::loaders::{self, Quant};
use clipdino::ClipConfig;
use common::{one_line_error, stderr, stdout, tiny, voc_image, Scratch, BIN};
use hostile::*;

/// `ulimit -v` for the child, in KiB.
const CAP_KIB: u64 = 2 * 1024 * 1024;

/// Run the binary in `sh` with the address-space cap.
fn run_capped(args: &[String]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {CAP_KIB} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args)
        .output()
        .expect("run clipdino under sh")
}

/// Which command-line slot the hostile file takes.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// A GGUF bundle: `segment --model F`, `convert --clip F`.
    Bundle,
    /// CLIP weights, no config (the architecture is inferred): `--clip F`.
    Clip,
    /// `--config F` beside the tiny weights.
    Config,
    /// `--head F` beside the tiny weights and config.
    Head,
}

struct Case {
    file: &'static str,
    slot: Slot,
    bytes: Vec<u8>,
    /// Words the error line must hold (besides the file name).
    words: &'static [&'static str],
}

fn tiny_file(f: &str) -> String {
    tiny().join(f).display().to_string()
}

/// The tiny model's config as a bundle stores it.
fn tiny_bundle_config() -> ClipConfig {
    let json = fs::read_to_string(tiny().join("open_clip_config.json")).unwrap();
    ClipConfig::from_open_clip_json(&json).unwrap()
}

/// Every hostile file, one or more per numbered item of the issue.
fn cases(scratch: &Scratch) -> Vec<Case> {
    let cfg = tiny_bundle_config();
    let cfg_json = serde_json::to_string(&cfg).unwrap();
    let mut huge_grid = serde_json::to_value(&cfg).unwrap();
    huge_grid["vision"]["image_size"] = (1u64 << 20).into();

    // A real bundle of the tiny model with every tensor moved to the same bytes.
    let tiny_files: Vec<(String, Vec<u8>)> = ["open_clip_model.safetensors", "last.pt"]
        .iter()
        .map(|f| (f.to_string(), fs::read(tiny().join(f)).unwrap()))
        .collect();
    let bundle = loaders::load_model_files(&tiny_files).unwrap();
    let good = loaders::write_gguf_bundle(&bundle, Quant::F32).unwrap();
    let names: Vec<String> = bundle
        .store
        .names()
        .iter()
        .map(|n| match *n {
            "visual.proj" | "text_projection" => format!("{n}_t"),
            n => n.to_string(),
        })
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut overlap = good.clone();
    for (_, nd) in gguf_tensor_infos(&good, &refs) {
        let p = gguf_offset_pos(&overlap, nd);
        overlap[p..p + 8].copy_from_slice(&0u64.to_le_bytes());
    }

    // Tiny weights with a scalar where config inference reads a 2-D shape.
    let store = loaders::read_safetensors(&tiny_files[0].1, "w").unwrap();
    let mut entries: Vec<(String, candle_core::Tensor)> = store
        .names()
        .iter()
        .filter(|n| **n != "visual.positional_embedding")
        .map(|n| {
            let t = store.get(n).unwrap().to_f32(&candle_core::Device::Cpu);
            (n.to_string(), t.unwrap())
        })
        .collect();
    entries.push((
        "visual.positional_embedding".into(),
        candle_core::Tensor::new(1f32, &candle_core::Device::Cpu).unwrap(),
    ));
    let rank = loaders::write_safetensors_entries(&entries, &[]).unwrap();

    let m = i32::MAX as u32;
    let pwned = scratch.path("PWNED").display().to_string();
    let mut huge_json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tiny().join("open_clip_config.json")).unwrap())
            .unwrap();
    huge_json["model_cfg"]["vision_cfg"]["width"] = 1_000_000_000_000u64.into();

    let mut with_align = bundle_meta(&cfg_json);
    with_align.push(("general.alignment", Gguf::I32(0)));
    let mut with_array = bundle_meta(&cfg_json);
    with_array.push(("junk", Gguf::U8Array(1 << 40)));

    vec![
        // item 1
        Case {
            file: "align0.gguf",
            slot: Slot::Bundle,
            bytes: gguf_file(&with_align, &[], &[]),
            words: &["general.alignment", "power of two"],
        },
        // item 4
        Case {
            file: "overlap.gguf",
            slot: Slot::Bundle,
            bytes: overlap,
            words: &["share bytes"],
        },
        // item 5
        Case {
            file: "grid.gguf",
            slot: Slot::Bundle,
            bytes: gguf_file(&bundle_meta(&huge_grid.to_string()), &[], &[]),
            words: &["clipdino.clip_config: vision_cfg.image_size"],
        },
        Case {
            file: "dims.gguf",
            slot: Slot::Bundle,
            bytes: gguf_file(
                &bundle_meta(&cfg_json),
                &[("x", &[1 << 40, 1 << 40], 0, 0)],
                &[],
            ),
            words: &["`x`", "overflows"],
        },
        Case {
            file: "array.gguf",
            slot: Slot::Bundle,
            bytes: gguf_file(&with_array, &[], &[]),
            words: &["truncated", "junk"],
        },
        // item 12
        Case {
            file: "empty.safetensors",
            slot: Slot::Clip,
            bytes: safetensors_file(
                r#"{"w":{"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]}}"#,
                &[],
            ),
            words: &["`w`", "overflows"],
        },
        Case {
            file: "past_end.safetensors",
            slot: Slot::Clip,
            bytes: safetensors_file(
                r#"{"w":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#,
                &[0; 8],
            ),
            words: &["truncated"],
        },
        // item 2
        Case {
            file: "rank.safetensors",
            slot: Slot::Clip,
            bytes: rank,
            words: &["visual.positional_embedding", "dimensions"],
        },
        // item 3
        Case {
            file: "os_system.bin",
            slot: Slot::Clip,
            bytes: torch_zip(&os_system_pickle(&format!("touch {pwned}")), &[]),
            words: &["os.system", "refused"],
        },
        Case {
            file: "memo_bomb.bin",
            slot: Slot::Clip,
            bytes: torch_zip(&memo_bomb_pickle(), &[]),
            words: &["MiB of objects"],
        },
        Case {
            file: "deep.bin",
            slot: Slot::Clip,
            bytes: torch_zip(&deep_pickle(1_000_000), &[]),
            words: &["nested deeper"],
        },
        Case {
            // 100 views of one 64 MB storage: 6.4 GB asked for by a 70 kB file.
            file: "views.bin",
            slot: Slot::Clip,
            bytes: shared_storage_views(100, 16 << 20),
            words: &["more memory than a model load may use", "view00"],
        },
        Case {
            // 1000 directory entries for one deflated 4 MB entry: 4 GB to inflate.
            file: "aliases.bin",
            slot: Slot::Clip,
            bytes: aliased_storages(1000, 1 << 20),
            words: &["inflate"],
        },
        Case {
            file: "head_view.pt",
            slot: Slot::Head,
            bytes: torch_zip(
                &tensors_pickle(&[(
                    "obj_proj.weight",
                    "FloatStorage",
                    "0",
                    1,
                    0,
                    &[m, 64, 3, 3],
                    &[576, 9, 3, 1],
                )]),
                &[("0", &[0u8; 4])],
            ),
            // 4.9 TB declared over a 4-byte storage.
            words: &["obj_proj.weight", "more memory than a model load may use"],
        },
        Case {
            file: "huge.json",
            slot: Slot::Config,
            bytes: huge_json.to_string().into_bytes(),
            words: &["vision_cfg.width"],
        },
    ]
}

fn convert_args(c: &Case, path: &str, out: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["convert".into()];
    let weights = tiny_file("open_clip_model.safetensors");
    let config = tiny_file("open_clip_config.json");
    let pairs: Vec<(&str, String)> = match c.slot {
        Slot::Bundle | Slot::Clip => vec![("--clip", path.into())],
        Slot::Config => vec![("--clip", weights), ("--config", path.into())],
        Slot::Head => vec![
            ("--clip", weights),
            ("--config", config),
            ("--head", path.into()),
        ],
    };
    for (k, v) in pairs {
        a.push(k.into());
        a.push(v);
    }
    a.extend(["--quant", "q8_0", "--out", out].map(String::from));
    a
}

fn segment_args(c: &Case, path: &str, out: &str, dump: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["segment".into()];
    let weights = tiny_file("open_clip_model.safetensors");
    let config = tiny_file("open_clip_config.json");
    let pairs: Vec<(&str, String)> = match c.slot {
        Slot::Bundle => vec![("--model", path.into())],
        Slot::Clip => vec![("--clip", path.into()), ("--mode", "maskclip".into())],
        Slot::Config => vec![
            ("--clip", weights),
            ("--config", path.into()),
            ("--mode", "maskclip".into()),
        ],
        Slot::Head => vec![
            ("--clip", weights),
            ("--config", config),
            ("--head", path.into()),
        ],
    };
    for (k, v) in pairs {
        a.push(k.into());
        a.push(v);
    }
    let image = voc_image().display().to_string();
    a.extend(
        [
            "--image",
            &image,
            "--labels",
            "cat,background",
            "--short-side",
            "64",
            "--templates",
            "fast",
            "--out",
            out,
            "--dump",
            dump,
        ]
        .map(String::from),
    );
    a
}

/// The capped child itself works: the tiny model converts and segments under the cap.
#[test]
fn valid_files_work_under_the_memory_cap() {
    let s = Scratch::new("capped-ok");
    let out = s.s("m.gguf");
    let o = run_capped(&[
        "convert".into(),
        "--clip".into(),
        tiny_file("open_clip_pytorch_model.bin"),
        "--head".into(),
        tiny_file("last.pt"),
        "--quant".into(),
        "q4_0".into(),
        "--out".into(),
        out.clone(),
    ]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let o = run_capped(&[
        "segment".into(),
        "--model".into(),
        out,
        "--image".into(),
        voc_image().display().to_string(),
        "--labels".into(),
        "cat,background".into(),
        "--short-side".into(),
        "64".into(),
        "--templates".into(),
        "fast".into(),
        "--out".into(),
        s.s("o.png"),
    ]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(s.path("o.png").exists());
}

#[test]
fn hostile_files_give_one_line_errors_under_the_memory_cap() {
    let s = Scratch::new("capped-hostile");
    let all = cases(&s);
    for c in &all {
        fs::write(s.path(c.file), &c.bytes).unwrap();
    }
    let inputs = s.files();
    for c in &all {
        let path = s.s(c.file);
        let runs = [
            ("convert", convert_args(c, &path, &s.s("out.gguf"))),
            (
                "segment",
                segment_args(c, &path, &s.s("overlay.png"), &s.s("dump")),
            ),
        ];
        for (cmd, args) in runs {
            let t0 = std::time::Instant::now();
            let o = run_capped(&args);
            let secs = t0.elapsed().as_secs_f64();
            assert_eq!(
                o.status.code(),
                Some(1),
                "{cmd} {} ({:?}): {:?}\n{}",
                c.file,
                c.slot,
                o.status,
                stderr(&o)
            );
            let mut words = vec![c.file];
            words.extend_from_slice(c.words);
            let line = one_line_error(&o, &words);
            eprintln!("{cmd} {:<22} {secs:5.2} s  {line}", c.file);
            assert_eq!(s.files(), inputs, "{cmd} {}: files left behind", c.file);
            assert!(!s.path("PWNED").exists(), "a pickle ran a command");
        }
    }
}

/// Weight files larger together than the load budget are refused from their sizes, before
/// they are read.
#[test]
fn weight_files_over_the_load_budget_are_refused_before_reading() {
    let s = Scratch::new("budget-flag");
    let o = run_capped(&[
        "convert".into(),
        "--clip".into(),
        tiny_file("open_clip_model.safetensors"),
        "--quant".into(),
        "f32".into(),
        "--out".into(),
        s.s("m.gguf"),
        "--load-budget-mb".into(),
        "0".into(),
    ]);
    one_line_error(
        &o,
        &[
            "open_clip_model.safetensors",
            "over the load budget",
            "--load-budget-mb",
        ],
    );
    assert!(s.files().is_empty());
}

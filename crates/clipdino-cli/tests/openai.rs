//! OpenAI-style CLIP weights (QuickGELU) through the binary: `random-weights --layout
//! transformers|open_clip --act quick_gelu`, `convert` of each layout, `segment` on the files
//! and on the bundle (identical masks), `eval --modes` of the CLIP-only modes, and the DINOiser
//! head refused with its reason.

use std::fs;

mod common;

use common::{ok, one_line_error, run, stderr, stdout, tiny, voc_eval_args, voc_image, Scratch};

fn random(s: &Scratch, dir: &str, layout: &str) -> String {
    let o = run(&[
        "random-weights",
        "--arch",
        "tiny",
        "--seed",
        "3",
        "--layout",
        layout,
        "--act",
        "quick_gelu",
        "--out",
        &s.s(dir),
    ]);
    ok(&o);
    stderr(&o)
}

fn segment(model: &[String], mask: &str) -> String {
    let mut a: Vec<String> = vec!["segment".into()];
    a.extend(model.iter().cloned());
    a.extend(
        [
            "--image",
            &voc_image().display().to_string(),
            "--labels",
            "person,table,background",
            "--mode",
            "maskclip",
            "--short-side",
            "96",
            "--templates",
            "fast",
            "--mask-out",
            mask,
        ]
        .map(String::from),
    );
    ok(&run(&a))
}

fn files(s: &Scratch, weights: &str, config: &str) -> Vec<String> {
    vec![
        "--clip".into(),
        s.s(weights),
        "--config".into(),
        s.s(config),
    ]
}

#[test]
fn openai_layouts_convert_and_segment_alike() {
    let s = Scratch::new("openai");
    let warn = random(&s, "hf", "transformers");
    assert!(
        warn.contains("no last.pt") && warn.contains("laion2b"),
        "{warn}"
    );
    random(&s, "oc", "open_clip");
    assert_eq!(
        s.files(),
        [
            "hf/config.json",
            "hf/model.safetensors",
            "hf/pytorch_model.bin",
            "oc/open_clip_config.json",
            "oc/open_clip_model.safetensors",
            "oc/open_clip_pytorch_model.bin",
        ]
    );
    let hf: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(s.path("hf/config.json")).unwrap()).unwrap();
    assert_eq!(hf["vision_config"]["hidden_act"], "quick_gelu");
    assert_eq!(hf["text_config"]["hidden_act"], "quick_gelu");
    let oc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(s.path("oc/open_clip_config.json")).unwrap())
            .unwrap();
    assert_eq!(oc["model_cfg"]["quick_gelu"], true);

    // Same seed, two layouts, three weight files, and a bundle of the transformers one: one mask.
    let out = ok(&run(&[
        "convert",
        "--clip",
        &s.s("hf/model.safetensors"),
        "--config",
        &s.s("hf/config.json"),
        "--out",
        &s.s("hf.gguf"),
    ]));
    assert!(out.contains("activation quick_gelu"), "{out}");
    let mut masks = Vec::new();
    for (i, model) in [
        files(&s, "hf/model.safetensors", "hf/config.json"),
        files(&s, "hf/pytorch_model.bin", "hf/config.json"),
        files(
            &s,
            "oc/open_clip_model.safetensors",
            "oc/open_clip_config.json",
        ),
        vec!["--model".into(), s.s("hf.gguf")],
    ]
    .iter()
    .enumerate()
    {
        let mask = s.s(&format!("mask{i}.png"));
        segment(model, &mask);
        masks.push(fs::read(&mask).unwrap());
    }
    assert!(masks.iter().all(|m| *m == masks[0]), "masks differ");

    // The same weights read as GELU (config without quick_gelu) segment differently.
    let gelu = oc_without_quick_gelu(&s);
    segment(
        &files(&s, "oc/open_clip_model.safetensors", &gelu),
        &s.s("gelu.png"),
    );
    assert!(fs::read(s.path("gelu.png")).unwrap() != masks[0]);
}

fn oc_without_quick_gelu(s: &Scratch) -> String {
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(s.path("oc/open_clip_config.json")).unwrap())
            .unwrap();
    cfg["model_cfg"]
        .as_object_mut()
        .unwrap()
        .remove("quick_gelu");
    fs::write(s.path("gelu.json"), cfg.to_string()).unwrap();
    "gelu.json".into()
}

#[test]
fn the_dinoiser_head_is_refused_on_openai_weights() {
    let s = Scratch::new("openai-head");
    random(&s, "hf", "transformers");
    let head = tiny().join("last.pt").display().to_string();
    let mut a: Vec<String> = vec!["convert".into()];
    a.extend(files(&s, "hf/model.safetensors", "hf/config.json"));
    a.extend(["--head".into(), head, "--out".into(), s.s("x.gguf")]);
    let line = one_line_error(&run(&a), &["last.pt", "laion2b", "quick_gelu", "MaskCLIP"]);
    println!("{line}");
    assert!(!s.path("x.gguf").exists());

    // transformers weights without their config.json: refused, naming what is missing.
    let o = run(&[
        "convert",
        "--clip",
        &s.s("hf/model.safetensors"),
        "--out",
        &s.s("x.gguf"),
    ]);
    one_line_error(&o, &["model.safetensors", "config.json", "hidden_act"]);
    assert!(stdout(&o).is_empty());

    // segmenting QuickGELU weights in the default (DINOiser) mode: the hint names the other
    // modes and does not suggest a head they cannot take.
    let mut a: Vec<String> = vec!["segment".into()];
    a.extend(files(&s, "hf/model.safetensors", "hf/config.json"));
    a.extend(
        [
            "--image",
            &voc_image().display().to_string(),
            "--labels",
            "person,background",
            "--short-side",
            "96",
            "--mask-out",
            &s.s("m.png"),
        ]
        .map(String::from),
    );
    let line = one_line_error(
        &run(&a),
        &["cannot have one", "laion2b", "--mode (maskclip"],
    );
    assert!(!line.contains("pass --head"), "{line}");
    assert!(!s.path("m.png").exists());
}

/// `eval --modes` on QuickGELU weights: the CLIP-only modes in one table (the default `--mode`,
/// CLIP-DINOiser, is not asked for, so it is not held against the weights); naming `dinoiser`
/// there is refused with the reason.
#[test]
fn eval_compares_the_clip_only_modes_on_openai_weights() {
    let s = Scratch::new("openai-eval");
    random(&s, "hf", "transformers");
    let model = files(&s, "hf/model.safetensors", "hf/config.json");
    let modes = ["maskclip", "clearclip", "naclip", "sclip+pamr:2"];
    let table = ok(&run(&voc_eval_args(&model, &["--modes", &modes.join(",")])));
    let head = table.lines().next().unwrap_or_default();
    for m in modes {
        assert!(head.contains(m), "{m} missing from the header: {table}");
    }
    assert!(
        table.contains("\nmIoU ") && table.contains("images 1"),
        "{table}"
    );
    one_line_error(
        &run(&voc_eval_args(&model, &["--modes", "maskclip,dinoiser"])),
        &["cannot have one", "laion2b", "--mode (maskclip"],
    );
}

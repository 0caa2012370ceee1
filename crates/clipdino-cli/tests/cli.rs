//! The `clipdino` binary as a user runs it: real processes, real files.
//!
//! Models: `clipdino random-weights --arch tiny` (the `tests/fixtures/tiny` shapes with the full
//! CLIP vocabulary, so real labels tokenise) generated once per run, and the upstream-written
//! fixture files of `tests/fixtures/tiny` for the converter. Images and masks: the VOC sample of
//! `tests/fixtures/voc`.

use std::fs;
use std::path::Path;
use std::process::Command;

mod common;

use common::{
    fixture, ok, one_line_error, repo, run, stderr, stdout, tiny, voc_image, Scratch, BIN,
};

fn tiny_args() -> Vec<String> {
    let d = tiny();
    vec![
        "--clip".into(),
        d.join("open_clip_model.safetensors").display().to_string(),
        "--config".into(),
        d.join("open_clip_config.json").display().to_string(),
        "--head".into(),
        d.join("last.pt").display().to_string(),
    ]
}

/// `clipdino eval` of the tiny model on the VOC-layout fixture, then `extra`.
fn voc_eval_args(extra: &[&str]) -> Vec<String> {
    common::voc_eval_args(&tiny_args(), extra)
}

/// `extra` plus `default` flags that `extra` does not set itself.
fn with_defaults(extra: &[&str], defaults: &[(&str, &str)]) -> Vec<String> {
    let mut a: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    for (flag, value) in defaults {
        let resized = *flag == "--short-side" && extra.contains(&"--full-res");
        if !extra.contains(flag) && !resized {
            a.extend([flag.to_string(), value.to_string()]);
        }
    }
    a
}

/// `segment` with the tiny model on the VOC photo; fast defaults unless `extra` overrides them.
fn segment_args(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["segment".into()];
    a.extend(tiny_args());
    a.extend(["--image".into(), voc_image().display().to_string()]);
    a.extend(with_defaults(
        extra,
        &[("--templates", "fast"), ("--short-side", "96")],
    ));
    a
}

/// `(width, height)` of a PNG from its IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let b = fs::read(path).unwrap();
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

/// Per-label area percentages from `segment`'s table.
fn areas(out: &str, labels: &[&str]) -> Vec<f64> {
    labels
        .iter()
        .map(|l| {
            let line = out
                .lines()
                .find(|x| x.split_whitespace().next() == Some(l) || x.starts_with(&format!("{l} ")))
                .unwrap_or_else(|| panic!("no area line for {l} in\n{out}"));
            let rest = line[l.len()..].trim();
            rest.split_whitespace()
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        })
        .collect()
}

// --- npy --------------------------------------------------------------------------------

struct Npy {
    descr: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn read_npy(path: &Path) -> Npy {
    let b = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{}", path.display());
    assert_eq!((b[6], b[7]), (1, 0), "format version 1.0");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0, "data aligned to 64 bytes");
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.ends_with('\n'));
    assert!(header.contains("'fortran_order': False"), "{header}");
    let descr = header
        .split("'descr': '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    let shape_s = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data = b[10 + hlen..].to_vec();
    let item = match descr.as_str() {
        "<f4" => 4,
        "<i8" => 8,
        d => panic!("unexpected descr {d}"),
    };
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>() * item,
        "{}: data size",
        path.display()
    );
    Npy { descr, shape, data }
}

impl Npy {
    fn f32s(&self) -> Vec<f32> {
        assert_eq!(self.descr, "<f4");
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    fn i64s(&self) -> Vec<i64> {
        assert_eq!(self.descr, "<i8");
        self.data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

// --- label PNGs (read / write for eval) ---------------------------------------------------

fn read_mask(path: &Path) -> (usize, usize, Vec<u8>) {
    let mut dec = png::Decoder::new(std::io::Cursor::new(fs::read(path).unwrap()));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate((info.width * info.height) as usize);
    (info.width as usize, info.height as usize, buf)
}

fn write_grey(path: &Path, w: usize, h: usize, data: &[u8]) {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(data).unwrap();
    }
    fs::write(path, out).unwrap();
}

/// Set `rows × cols` of a `w`-wide map to `v`, asserting the rectangle held only `was`.
fn relabel(
    map: &mut [u8],
    w: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    was: u8,
    v: u8,
) {
    for y in rows {
        for x in cols.clone() {
            assert_eq!(
                map[y * w + x],
                was,
                "fixture rectangle is not pure class {was}"
            );
            map[y * w + x] = v;
        }
    }
}

fn eval_json(args: &[String]) -> serde_json::Value {
    let out = ok(&run(args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn per_class(j: &serde_json::Value, class: &str) -> Option<f64> {
    j["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == class)
        .unwrap_or_else(|| panic!("no class {class}"))["IoU"]
        .as_f64()
}

fn eval_predictions(pred_dir: &Path, mask_dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut a: Vec<String> = [
        "eval",
        "--predictions",
        &pred_dir.display().to_string(),
        "--masks",
        &mask_dir.display().to_string(),
        "--classes",
        &fixture("voc/classes.txt").display().to_string(),
        "--json",
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    eval_json(&a)
}

// =========================================================================================
// random-weights, convert, segment
// =========================================================================================

#[test]
fn random_weights_writes_the_upstream_files_deterministically() {
    let d = tiny();
    let cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.join("open_clip_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["model_cfg"]["text_cfg"]["vocab_size"], 49408);
    assert_eq!(cfg["model_cfg"]["vision_cfg"]["width"], 64);
    let st = fs::read(d.join("open_clip_model.safetensors")).unwrap();
    let hlen = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + hlen]).unwrap();
    assert_eq!(
        header["visual.conv1.weight"]["shape"],
        serde_json::json!([64, 3, 16, 16])
    );
    assert_eq!(
        header["token_embedding.weight"]["shape"],
        serde_json::json!([49408, 64])
    );
    for f in ["open_clip_pytorch_model.bin", "last.pt"] {
        assert_eq!(
            &fs::read(d.join(f)).unwrap()[..2],
            b"PK",
            "{f} is a torch zip checkpoint"
        );
    }
    // Same seed, same bytes; no stray files.
    let s = Scratch::new("rw-again");
    ok(&run(&[
        "random-weights",
        "--arch",
        "tiny",
        "--seed",
        "7",
        "--out",
        &s.s("w"),
    ]));
    assert_eq!(
        s.files(),
        [
            "w/last.pt",
            "w/open_clip_config.json",
            "w/open_clip_model.safetensors",
            "w/open_clip_pytorch_model.bin"
        ]
    );
    for f in [
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
        "last.pt",
    ] {
        assert!(
            fs::read(d.join(f)).unwrap() == fs::read(s.path("w").join(f)).unwrap(),
            "{f} differs"
        );
    }
}

#[test]
fn the_torch_bin_and_safetensors_files_give_the_same_segmentation() {
    let s = Scratch::new("bin-vs-st");
    let d = tiny();
    let mut outs = Vec::new();
    for f in ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"] {
        let mask = s.s(&format!("{f}.png"));
        let mut a: Vec<String> = vec![
            "segment".into(),
            "--clip".into(),
            d.join(f).display().to_string(),
        ];
        a.extend(
            [
                "--config",
                &d.join("open_clip_config.json").display().to_string(),
            ]
            .map(String::from),
        );
        a.extend(["--head", &d.join("last.pt").display().to_string()].map(String::from));
        a.extend(
            [
                "--image",
                &voc_image().display().to_string(),
                "--labels",
                "person,table,background",
            ]
            .map(String::from),
        );
        a.extend(
            [
                "--short-side",
                "96",
                "--templates",
                "fast",
                "--mask-out",
                &mask,
            ]
            .map(String::from),
        );
        ok(&run(&a));
        outs.push(fs::read(&mask).unwrap());
    }
    assert!(outs[0] == outs[1]);
}

#[test]
fn convert_every_quant_then_segment_with_the_bundle() {
    let s = Scratch::new("convert");
    let labels = ["person", "table", "background"];
    // Reference: the f32 weights loaded directly.
    ok(&run(&segment_args(&[
        "--labels",
        "person,table,background",
        "--mask-out",
        &s.s("direct.png"),
    ])));
    for q in ["f32", "f16", "q8_0", "q4_0"] {
        let bundle = s.s(&format!("tiny-{q}.gguf"));
        let mut a: Vec<String> = vec!["convert".into()];
        a.extend(tiny_args());
        a.extend(["--quant", q, "--out", &bundle].map(String::from));
        let out = ok(&run(&a));
        assert!(
            out.contains("input") && out.contains("output") && out.contains(&bundle),
            "{out}"
        );
        // the per-dtype breakdown lists the chosen storage type
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(q) && l.contains("tensors")),
            "{out}"
        );
        let size = fs::metadata(&bundle).unwrap().len();

        let overlay = s.s(&format!("overlay-{q}.png"));
        let mask = s.s(&format!("mask-{q}.png"));
        let seg = ok(&run(&[
            "segment",
            "--model",
            &bundle,
            "--image",
            &voc_image().display().to_string(),
            "--labels",
            "person,table,background",
            "--templates",
            "fast",
            "--short-side",
            "96",
            "--out",
            &overlay,
            "--mask-out",
            &mask,
        ]));
        assert_eq!(png_size(Path::new(&overlay)), (500, 375));
        assert_eq!(png_size(Path::new(&mask)), (500, 375));
        let a = areas(&seg, &labels);
        assert!((a.iter().sum::<f64>() - 100.0).abs() < 0.05, "{a:?}\n{seg}");
        if q == "f32" {
            // f32 bundle = the original weights: identical label map.
            assert!(fs::read(&mask).unwrap() == fs::read(s.path("direct.png")).unwrap());
        }
        if q == "q8_0" {
            ok(&run(&[
                "segment",
                "--model",
                &bundle,
                "--compute",
                "quantized",
                "--image",
                &voc_image().display().to_string(),
                "--labels",
                "person,table,background",
                "--templates",
                "fast",
                "--short-side",
                "96",
            ]));
        }
        eprintln!("{q}: bundle {size} bytes");
    }
    let sizes: Vec<u64> = ["f32", "f16", "q8_0", "q4_0"]
        .iter()
        .map(|q| {
            fs::metadata(s.path(&format!("tiny-{q}.gguf")))
                .unwrap()
                .len()
        })
        .collect();
    assert!(
        sizes[0] > sizes[1] && sizes[1] > sizes[2] && sizes[2] > sizes[3],
        "{sizes:?}"
    );
    // Only the outputs we asked for, no temporary files.
    assert!(
        s.files()
            .iter()
            .all(|f| !f.contains(".part") && !f.starts_with('.')),
        "{:?}",
        s.files()
    );
}

#[test]
fn convert_reads_the_upstream_torch_and_safetensors_files_alike() {
    let s = Scratch::new("convert-upstream");
    let t = |f: &str| fixture(&format!("tiny/{f}")).display().to_string();
    for (clip, out) in [
        ("open_clip_model.safetensors", "a.gguf"),
        ("open_clip_pytorch_model.bin", "b.gguf"),
    ] {
        ok(&run(&[
            "convert",
            "--clip",
            &t(clip),
            "--config",
            &t("open_clip_config.json"),
            "--head",
            &t("last.pt"),
            "--quant",
            "q8_0",
            "--out",
            &s.s(out),
        ]));
    }
    assert!(fs::read(s.path("a.gguf")).unwrap() == fs::read(s.path("b.gguf")).unwrap());
    // The fixture's text tower has a 1000-token vocabulary: real labels cannot be encoded, and
    // the user is told so.
    one_line_error(
        &run(&[
            "segment",
            "--model",
            &s.s("a.gguf"),
            "--image",
            &voc_image().display().to_string(),
            "--labels",
            "cat,dog",
            "--short-side",
            "64",
        ]),
        &["vocabulary", "1000"],
    );
}

#[test]
fn segment_dump_writes_npy_files_with_the_right_shapes() {
    let s = Scratch::new("dump");
    let out = ok(&run(&segment_args(&[
        "--short-side",
        "224",
        "--labels",
        "person,dining table,background",
        "--dump",
        &s.s("dump"),
    ])));
    assert!(out.contains("dump:"), "{out}");
    let f = |n: &str| read_npy(&s.path("dump").join(n));
    // 500×375 at short side 224 → 299×224 (or 298): a 14×19 patch grid.
    let (gh, gw) = (14, 19);
    assert_eq!(f("text_emb.npy").shape, [3, 32]);
    assert_eq!(f("dense.npy").shape, [gh, gw, 32]);
    assert_eq!(f("inter.npy").shape, [gh, gw, 64]);
    assert_eq!(f("refined.npy").shape, [gh, gw, 32]);
    assert_eq!(f("bkg.npy").shape, [gh, gw]);
    let probs = f("probs.npy");
    assert_eq!(probs.shape, [3, gh, gw]);
    let labels = f("labels.npy");
    assert_eq!(labels.shape, [375, 500]);
    assert!(labels.i64s().iter().all(|&l| (0..3).contains(&l)));
    let p = probs.f32s();
    assert!(p.iter().all(|&v| (0.0..=1.0 + 1e-6).contains(&v)));
    // Label embeddings are unit vectors.
    for row in f("text_emb.npy").f32s().chunks(32) {
        let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-4, "{n}");
    }

    // MaskCLIP mode, sliding windows: probabilities of each patch sum to 1; same grid.
    let out = ok(&run(&segment_args(&[
        "--short-side",
        "224",
        "--window",
        "160",
        "--stride",
        "96",
        "--mode",
        "maskclip",
        "--labels",
        "person,dining table,background",
        "--dump",
        &s.s("dump2"),
    ])));
    assert!(out.contains("windows"), "{out}");
    let probs = read_npy(&s.path("dump2/probs.npy"));
    assert_eq!(probs.shape, [3, gh, gw]);
    let p = probs.f32s();
    let n = gh * gw;
    for k in 0..n {
        let sum: f32 = (0..3).map(|l| p[l * n + k]).sum();
        assert!((sum - 1.0).abs() < 1e-4, "patch {k}: {sum}");
    }
    assert_eq!(read_npy(&s.path("dump2/labels.npy")).shape, [375, 500]);
}

#[test]
fn segment_kmeans_view_and_full_resolution() {
    let s = Scratch::new("kmeans");
    ok(&run(&segment_args(&[
        "--labels",
        "person,background",
        "--kmeans",
        "4",
        "--kmeans-out",
        &s.s("k.png"),
    ])));
    // MaskCLIP clusters beside CLIP-DINOiser clusters.
    assert_eq!(png_size(&s.path("k.png")), (1000, 375));
    let out = ok(&run(&segment_args(&[
        "--full-res",
        "--labels",
        "person,background",
        "--out",
        &s.s("o.jpg"),
    ])));
    assert!(out.contains("processed at 500×375"), "{out}");
    assert_eq!(&fs::read(s.path("o.jpg")).unwrap()[..2], b"\xff\xd8");
}

#[test]
fn a_label_over_77_tokens_is_truncated_with_a_warning() {
    // 80 characters (the limit), each digit its own token: over 77 tokens in every prompt.
    let long = "1234567890".repeat(8);
    let o = run(&segment_args(&["--labels", &format!("cat,{long}")]));
    ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("warning:") && err.contains("truncated") && err.contains("1234567890123"),
        "{err}"
    );
}

// =========================================================================================
// eval
// =========================================================================================

#[test]
fn eval_ground_truth_against_itself_is_100() {
    let j = eval_predictions(&fixture("voc/masks"), &fixture("voc/masks"), &[]);
    assert_eq!(j["images"], 1);
    assert_eq!(j["pixels"], 187_500);
    assert_eq!(j["mIoU"], 100.0);
    assert_eq!(j["aAcc"], 100.0);
    for c in ["background", "bottle", "chair", "diningtable", "person"] {
        assert_eq!(per_class(&j, c), Some(100.0), "{c}");
    }
    // Classes absent from both are undefined and left out of the mean.
    assert_eq!(per_class(&j, "aeroplane"), None);
}

#[test]
fn eval_scores_a_known_perturbation_as_computed_by_hand() {
    let s = Scratch::new("eval-perturb");
    let (w, h, mut pred) = read_mask(&fixture("voc/masks/voc_sample.png"));
    assert_eq!((w, h), (500, 375));
    // 40×50 px of pure background (class 0) predicted as aeroplane (1), and 40×50 px of pure
    // person (15) predicted as background.
    relabel(&mut pred, w, 0..40, 0..50, 0, 1);
    relabel(&mut pred, w, 200..240, 0..50, 15, 0);
    fs::create_dir_all(s.path("pred")).unwrap();
    write_grey(&s.path("pred/voc_sample.png"), w, h, &pred);
    let j = eval_predictions(&s.path("pred"), &fixture("voc/masks"), &[]);

    // Ground-truth pixel counts (fixtures/voc/README.md): background 62317, person 62316.
    // background: I = 62317 − 2000, pred area = 62317 − 2000 + 2000, U = 62317 + 62317 − 60317.
    let bg = 60317.0 / 64317.0;
    // aeroplane: I = 0, U = 2000 → 0 (counts in the mean, like mmseg).
    // person: I = 62316 − 2000, U = 62316.
    let person = 60316.0 / 62316.0;
    let miou = (bg + 0.0 + 1.0 + 1.0 + 1.0 + person) / 6.0;
    let close = |a: Option<f64>, b: f64| (a.unwrap() - 100.0 * b).abs() < 1e-9;
    assert!(close(per_class(&j, "background"), bg), "{j}");
    assert!(close(per_class(&j, "aeroplane"), 0.0), "{j}");
    assert!(close(per_class(&j, "person"), person), "{j}");
    assert!(close(per_class(&j, "chair"), 1.0), "{j}");
    assert!(close(j["mIoU"].as_f64(), miou), "{j}");
    assert!(
        close(j["aAcc"].as_f64(), (187_500.0 - 4000.0) / 187_500.0),
        "{j}"
    );

    // The same predictions with the perturbed rectangles marked "ignore" (255) in the ground
    // truth score 100 again.
    let (_, _, mut gt) = read_mask(&fixture("voc/masks/voc_sample.png"));
    relabel(&mut gt, w, 0..40, 0..50, 0, 255);
    relabel(&mut gt, w, 200..240, 0..50, 15, 255);
    fs::create_dir_all(s.path("gt")).unwrap();
    write_grey(&s.path("gt/voc_sample.png"), w, h, &gt);
    let j = eval_predictions(&s.path("pred"), &s.path("gt"), &[]);
    assert_eq!(j["mIoU"], 100.0, "{j}");
    assert_eq!(j["pixels"], 187_500 - 4000);
    // ... unless 255 is not the ignore index, and then 255 is no class at all.
    let o = run(&[
        "eval",
        "--predictions",
        &s.s("pred"),
        "--masks",
        &s.s("gt"),
        "--classes",
        &fixture("voc/classes.txt").display().to_string(),
        "--ignore-index",
        "254",
    ]);
    one_line_error(&o, &["255", "ignore index 254"]);
}

#[test]
fn eval_runs_the_model_and_prints_a_table() {
    let mut a = voc_eval_args(&[]);
    let table = ok(&run(&a));
    assert!(
        table.contains("mIoU") && table.contains("diningtable") && table.contains("images 1"),
        "{table}"
    );
    a.push("--json".into());
    let j = eval_json(&a);
    let miou = j["mIoU"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&miou), "{j}");
    assert_eq!(j["pixels"], 187_500);
    assert_eq!(j["per_class"].as_array().unwrap().len(), 21);
}

#[test]
fn eval_compares_modes_in_one_table() {
    let mut a = voc_eval_args(&[
        "--modes",
        "dinoiser,maskclip,clearclip,naclip,sclip,naclip+pamr:2",
    ]);
    let table = ok(&run(&a));
    let head = table.lines().next().unwrap_or_default();
    for m in [
        "dinoiser",
        "maskclip",
        "clearclip",
        "naclip",
        "sclip",
        "naclip+pamr:2",
    ] {
        assert!(head.contains(m), "{m} missing from the header: {table}");
    }
    assert!(
        table.contains("\nmIoU ") && table.contains("diningtable"),
        "{table}"
    );
    a.push("--json".into());
    let j: serde_json::Value = serde_json::from_str(&ok(&run(&a))).unwrap();
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[5]["mode"], "naclip+pamr:2");
    for r in rows {
        assert_eq!(r["report"]["pixels"], 187_500);
    }
    // one bad entry: one line naming it
    let mut bad = a.clone();
    let i = bad.iter().position(|s| s == "--modes").unwrap();
    bad[i + 1] = "naclip,crf".into();
    one_line_error(&run(&bad), &["--modes crf"]);
}

#[test]
fn segment_takes_a_mode_and_pamr() {
    let s = Scratch::new("segment-modes");
    let mut a: Vec<String> = vec!["segment".into()];
    a.extend(tiny_args());
    a.extend(
        [
            "--image",
            &voc_image().display().to_string(),
            "--labels",
            "cat,sofa,background",
            "--short-side",
            "64",
            "--templates",
            "fast",
            "--mode",
            "sclip",
            "--refine",
            "pamr",
            "--mask-out",
            &s.s("m.png"),
        ]
        .map(String::from),
    );
    let out = ok(&run(&a));
    assert!(out.contains("SCLIP mode, refine pamr"), "{out}");
    assert!(s.path("m.png").is_file());
    let i = a.iter().position(|x| x == "pamr").unwrap();
    a[i] = "pamr:0".into();
    let o = run(&a);
    assert!(
        !o.status.success() && stderr(&o).contains("pamr:0"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn eval_bad_inputs() {
    let s = Scratch::new("eval-bad");
    let classes = fixture("voc/classes.txt").display().to_string();
    let masks = fixture("voc/masks").display().to_string();
    fs::create_dir_all(s.path("empty")).unwrap();
    one_line_error(
        &run(&[
            "eval",
            "--predictions",
            &s.s("empty"),
            "--masks",
            &masks,
            "--classes",
            &classes,
        ]),
        &["no prediction voc_sample.png"],
    );
    fs::create_dir_all(s.path("small")).unwrap();
    write_grey(&s.path("small/voc_sample.png"), 4, 3, &[0; 12]);
    one_line_error(
        &run(&[
            "eval",
            "--predictions",
            &s.s("small"),
            "--masks",
            &masks,
            "--classes",
            &classes,
        ]),
        &["4×3", "500×375"],
    );
    fs::write(s.path("none.txt"), "\n\n").unwrap();
    one_line_error(
        &run(&[
            "eval",
            "--predictions",
            &masks,
            "--masks",
            &masks,
            "--classes",
            &s.s("none.txt"),
        ]),
        &["lists no classes"],
    );
    one_line_error(
        &run(&[
            "eval",
            "--predictions",
            &masks,
            "--masks",
            &s.s("nowhere"),
            "--classes",
            &classes,
        ]),
        &["cannot read mask folder", "nowhere"],
    );
    // Predictions with labels beyond the class list.
    fs::create_dir_all(s.path("wide")).unwrap();
    write_grey(
        &s.path("wide/voc_sample.png"),
        500,
        375,
        &vec![40; 500 * 375],
    );
    one_line_error(
        &run(&[
            "eval",
            "--predictions",
            &s.s("wide"),
            "--masks",
            &masks,
            "--classes",
            &classes,
        ]),
        &["predicted value 40"],
    );
}

// =========================================================================================
// bad input to segment and convert: one line in words, exit code ≠ 0, nothing written
// =========================================================================================

#[test]
fn split_writes_parts_and_a_manifest_that_reassemble_the_bundle() {
    use sha2::{Digest, Sha256};
    let hex = |b: &[u8]| format!("{:x}", Sha256::digest(b));
    let s = Scratch::new("split");
    let bundle = s.path("clip-dinoiser.gguf");
    fs::rename(tiny_bundle(&s, "q8_0"), &bundle).unwrap();
    let original = fs::read(&bundle).unwrap();
    let part = original.len() / 3 + 1;
    let out = ok(&run(&[
        "split".to_string(),
        bundle.display().to_string(),
        "--part-size".into(),
        part.to_string(),
        "--out".into(),
        s.s("site/models"),
    ]));
    assert!(out.contains("3 part(s)"), "{out}");
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(s.path("site/models/clip-dinoiser.parts.json")).unwrap())
            .unwrap();
    assert_eq!(m["format"], "clipdino-parts");
    assert_eq!(m["version"], 1);
    assert_eq!(m["name"], "clip-dinoiser.gguf");
    assert_eq!(m["size"], original.len() as u64);
    assert_eq!(m["sha256"], hex(&original));
    let mut joined = Vec::new();
    for (i, p) in m["parts"].as_array().unwrap().iter().enumerate() {
        let file = p["file"].as_str().unwrap();
        assert_eq!(file, format!("clip-dinoiser.part-{i:03}"));
        let bytes = fs::read(s.path("site/models").join(file)).unwrap();
        assert_eq!(p["size"], bytes.len() as u64);
        assert_eq!(p["sha256"], hex(&bytes));
        assert!(bytes.len() <= part);
        joined.extend(bytes);
    }
    assert!(joined == original, "the parts joined are not the bundle");
    // Splitting again into fewer parts replaces the manifest and removes the stale part.
    ok(&run(&[
        "split".to_string(),
        bundle.display().to_string(),
        "--part-size".into(),
        "1MiB".into(),
        "--out".into(),
        s.s("site/models"),
    ]));
    let left: Vec<String> = s
        .files()
        .into_iter()
        .filter(|f| f.starts_with("site"))
        .collect();
    let n = original.len().div_ceil(1 << 20);
    assert_eq!(left.len(), n + 1, "{left:?}");
    assert!(
        left.iter().all(|f| !f.contains(".part-002") || n > 2),
        "{left:?}"
    );
}

#[test]
fn split_bad_arguments_leave_nothing() {
    let s = Scratch::new("split-bad");
    let bundle = s.path("tiny.gguf");
    fs::rename(tiny_bundle(&s, "q8_0"), &bundle).unwrap();
    fs::write(s.path("empty.gguf"), b"").unwrap();
    fs::write(s.path("a file"), b"x").unwrap();
    fs::write(s.path("my model.gguf"), b"GGUF").unwrap();
    let b = bundle.display().to_string();
    let out = s.s("out");
    let cases: &[(Vec<String>, &[&str])] = &[
        (
            vec![s.s("missing.gguf"), "--out".into(), out.clone()],
            &["cannot read bundle", "missing.gguf"],
        ),
        (
            vec![s.s("empty.gguf"), "--out".into(), out.clone()],
            &["empty"],
        ),
        (
            vec![s.s("out-dir-not-here"), "--out".into(), s.s("a file")],
            &["cannot read bundle"],
        ),
        (
            vec![b.clone(), "--out".into(), s.s("a file")],
            &["exists and is not a directory"],
        ),
        (
            vec![s.s("my model.gguf"), "--out".into(), out.clone()],
            &["plain name"],
        ),
        (
            vec![
                b.clone(),
                "--part-size".into(),
                "0".into(),
                "--out".into(),
                out.clone(),
            ],
            &["at least 1 byte"],
        ),
        (
            vec![
                b.clone(),
                "--part-size".into(),
                "3 parsecs".into(),
                "--out".into(),
                out.clone(),
            ],
            &["unknown unit"],
        ),
        (
            vec![
                b.clone(),
                "--part-size".into(),
                "2GiB".into(),
                "--out".into(),
                out.clone(),
            ],
            &["larger than"],
        ),
        (
            vec![
                b.clone(),
                "--part-size".into(),
                "100".into(),
                "--out".into(),
                out.clone(),
            ],
            &["parts", "at most 1000"],
        ),
    ];
    for (args, words) in cases {
        let mut a = vec!["split".to_string()];
        a.extend(args.iter().cloned());
        one_line_error(&run(&a), words);
    }
    assert_eq!(
        s.files(),
        ["a file", "empty.gguf", "my model.gguf", "tiny.gguf"],
        "a failed split leaves nothing behind"
    );
}

/// Run `segment` with outputs into a fresh folder and assert the error and that no file
/// appeared.
#[track_caller]
fn segment_fails(tag: &str, image: Option<&Path>, extra: &[&str], words: &[&str]) -> String {
    let s = Scratch::new(tag);
    fs::write(s.path("input.txt"), "not an image\n").unwrap();
    let before = s.files();
    let mut a: Vec<String> = vec!["segment".into()];
    a.extend(tiny_args());
    a.extend([
        "--image".into(),
        image
            .map(Path::to_path_buf)
            .unwrap_or_else(voc_image)
            .display()
            .to_string(),
    ]);
    let (out, dump) = (s.s("overlay.png"), s.s("dump"));
    a.extend(with_defaults(
        extra,
        &[
            ("--short-side", "64"),
            ("--templates", "fast"),
            ("--out", &out),
            ("--dump", &dump),
        ],
    ));
    let line = one_line_error(&run(&a), words);
    assert_eq!(s.files(), before, "files left behind");
    assert!(!s.path("dump").exists(), "dump folder left behind");
    line
}

#[test]
fn bad_images() {
    let s = Scratch::new("bad-images");
    segment_fails(
        "img-missing",
        Some(&s.path("nope.jpg")),
        &["--labels", "cat"],
        &["cannot read image", "nope.jpg"],
    );
    fs::write(s.path("empty.png"), b"").unwrap();
    segment_fails(
        "img-empty",
        Some(&s.path("empty.png")),
        &["--labels", "cat"],
        &["empty.png", "empty (0 bytes)"],
    );
    fs::write(s.path("notes.txt"), "hello, this is text\n").unwrap();
    segment_fails(
        "img-text",
        Some(&s.path("notes.txt")),
        &["--labels", "cat"],
        &["notes.txt", "not an image"],
    );
    let jpg = fs::read(voc_image()).unwrap();
    fs::write(s.path("cut.jpg"), &jpg[..jpg.len() / 3]).unwrap();
    segment_fails(
        "img-cut",
        Some(&s.path("cut.jpg")),
        &["--labels", "cat"],
        &["cut.jpg", "truncated"],
    );
    // Over the caps: only the header is read, so these are quick.
    write_grey(&s.path("wide.png"), 16385, 1, &vec![0; 16385]);
    segment_fails(
        "img-wide",
        Some(&s.path("wide.png")),
        &["--labels", "cat"],
        &["wide.png", "16385×1", "16384 pixels a side"],
    );
    write_grey(&s.path("big.png"), 12000, 9000, &vec![0; 12000 * 9000]);
    segment_fails(
        "img-big",
        Some(&s.path("big.png")),
        &["--labels", "cat"],
        &["big.png", "12000×9000", "100 megapixels"],
    );
    segment_fails(
        "img-dir",
        Some(&s.0),
        &["--labels", "cat"],
        &["is a directory"],
    );
    // Within the caps, but too many patches for one pass at full resolution.
    write_grey(&s.path("1100.png"), 1100, 1100, &vec![128; 1100 * 1100]);
    segment_fails(
        "img-grid",
        Some(&s.path("1100.png")),
        &["--labels", "cat", "--full-res"],
        &["4096 patches", "--short-side"],
    );
}

/// A motion photo as Google and Samsung phones write it: the still JPEG, then an MP4. The
/// trailer is generated: an `ftyp` box, then an `mdat` box of seeded bytes that is dense with
/// JPEG marker pairs (SOI, SOS, EOI), as compressed video is.
fn motion_photo(jpeg: &[u8], samsung: bool) -> Vec<u8> {
    let mut v = jpeg.to_vec();
    if samsung {
        v.extend_from_slice(b"MotionPhoto_Data");
    }
    v.extend_from_slice(b"\0\0\0\x18ftypmp42\0\0\0\0isommp42");
    let mut mdat = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..40_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        mdat.push(x as u8);
        if i % 997 == 0 {
            mdat.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x0C]);
        }
        if i % 1499 == 0 {
            mdat.extend_from_slice(&[0xFF, 0xD9]);
        }
    }
    v.extend_from_slice(&(mdat.len() as u32 + 8).to_be_bytes());
    v.extend_from_slice(b"mdat");
    v.extend_from_slice(&mdat);
    // the last marker pair in the file is a start of scan, as in the files that were refused
    v.extend_from_slice(&[0xFF, 0xDA, 0x01, 0x02]);
    v
}

#[test]
fn motion_photos_are_read_and_truncated_jpegs_are_not() {
    let s = Scratch::new("motion");
    let jpg = fs::read(voc_image()).unwrap();
    let mask = |image: &Path, tag: &str| {
        let m = s.path(&format!("{tag}.png"));
        let mut a: Vec<String> = vec!["segment".into()];
        a.extend(tiny_args());
        a.extend(with_defaults(
            &[
                "--image",
                &image.display().to_string(),
                "--mask-out",
                &m.display().to_string(),
            ],
            &[
                ("--labels", "person,table,background"),
                ("--templates", "fast"),
                ("--short-side", "64"),
            ],
        ));
        ok(&run(&a));
        read_mask(&m)
    };
    let plain = mask(&voc_image(), "plain");
    for samsung in [false, true] {
        let p = s.path(&format!("motion-{samsung}.jpg"));
        fs::write(&p, motion_photo(&jpg, samsung)).unwrap();
        assert_eq!(
            mask(&p, &format!("motion-{samsung}")),
            plain,
            "samsung={samsung}"
        );
    }
    // Cut inside the still image: truncated, in words, whatever follows.
    for (tag, bytes) in [
        ("cut-scan", jpg[..jpg.len() * 2 / 3].to_vec()),
        ("cut-eoi", jpg[..jpg.len() - 1].to_vec()),
        ("cut-header", jpg[..300].to_vec()),
    ] {
        let p = s.path(&format!("{tag}.jpg"));
        fs::write(&p, bytes).unwrap();
        segment_fails(
            tag,
            Some(&p),
            &["--labels", "cat"],
            &[&format!("{tag}.jpg is truncated"), "end-of-image marker"],
        );
    }
}

/// `bytes` (a baseline JPEG) with the frame header's size replaced.
fn with_jpeg_size(bytes: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut v = bytes.to_vec();
    let sof = v.windows(2).position(|p| p == [0xFF, 0xC0]).expect("SOF0");
    v[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    v[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    v
}

#[test]
fn oversized_and_elongated_images_are_refused_before_allocating() {
    let s = Scratch::new("bombs");
    let jpg = fs::read(voc_image()).unwrap();
    // A 42 KB JPEG whose frame header claims 16000×16000 (768 MB of RGB): refused from the
    // header libjpeg reads, before it allocates for the pixels.
    fs::write(s.path("bomb.jpg"), with_jpeg_size(&jpg, 16000, 16000)).unwrap();
    segment_fails(
        "bomb-jpg",
        Some(&s.path("bomb.jpg")),
        &["--labels", "cat"],
        &[
            "bomb.jpg: the photo is 16000×16000 pixels (256.0 megapixels)",
            "100 megapixels",
        ],
    );
    fs::write(s.path("wide.jpg"), with_jpeg_size(&jpg, 65000, 10)).unwrap();
    segment_fails(
        "bomb-wide",
        Some(&s.path("wide.jpg")),
        &["--labels", "cat"],
        &[
            "wide.jpg: the photo is 65000×10 pixels",
            "16384 pixels a side",
        ],
    );
    // 16384×1 at short side 448 would be resized to 7 340 032×448 px (39 GB as f32): the plan
    // is checked first, in one pass and with windows.
    write_grey(&s.path("strip.png"), 16384, 1, &vec![90; 16384]);
    segment_fails(
        "strip-pass",
        Some(&s.path("strip.png")),
        &["--labels", "cat", "--short-side", "448"],
        &["image of 7340032×448 px", "4096 patches", "--short-side"],
    );
    segment_fails(
        "strip-windows",
        Some(&s.path("strip.png")),
        &[
            "--labels",
            "cat",
            "--short-side",
            "448",
            "--window",
            "448",
            "--stride",
            "224",
        ],
        &[
            "16384×1 px would be processed at 7340032×448 px in 32767 windows",
            "limit is 65536 patches per image",
            "too elongated",
        ],
    );
    // Elongated but within the budget: runs.
    write_grey(&s.path("pano.png"), 600, 40, &vec![90; 600 * 40]);
    let mut a: Vec<String> = vec!["segment".into()];
    a.extend(tiny_args());
    a.extend(with_defaults(
        &[
            "--image",
            &s.s("pano.png"),
            "--short-side",
            "32",
            "--window",
            "32",
            "--stride",
            "16",
        ],
        &[("--labels", "cat,background"), ("--templates", "fast")],
    ));
    let out = ok(&run(&a));
    assert!(out.contains("processed at 480×32"), "{out}");
}

#[test]
fn bad_labels() {
    segment_fails(
        "lab-empty",
        None,
        &["--labels", ""],
        &["label list is empty"],
    );
    segment_fails(
        "lab-commas",
        None,
        &["--labels", " , "],
        &["label 1 of 2", "empty"],
    );
    segment_fails(
        "lab-dup",
        None,
        &["--labels", "cat,dog,Cat,sky,dog"],
        &["duplicate labels", "“cat” (#1)", "“Cat” (#3)", "“dog” (#5)"],
    );
    // Duplicates as the tokenizer reads them: HTML entities, full-width letters.
    segment_fails(
        "lab-dup-norm",
        None,
        &["--labels", "fish &amp; chips,sky,fish & chips,ｓｋｙ"],
        &[
            "duplicate labels",
            "“fish &amp; chips” (#1)",
            "“ｓｋｙ” (#4)",
        ],
    );
    let many: Vec<String> = (0..201).map(|i| format!("thing {i}")).collect();
    segment_fails(
        "lab-many",
        None,
        &["--labels", &many.join(",")],
        &["201 labels", "at most 200"],
    );
    segment_fails(
        "lab-long",
        None,
        &["--labels", &format!("cat,{}", "x".repeat(81))],
        &["label 2", "81 characters", "at most 80"],
    );
    segment_fails(
        "lab-bg",
        None,
        &["--labels", "cat,dog", "--background", "sky"],
        &["--background \"sky\"", "not one of the labels"],
    );
}

#[test]
fn bad_outputs() {
    let s = Scratch::new("bad-out");
    fs::write(s.path("file"), "x").unwrap();
    // A dump folder that cannot be created (its parent is a file), or that is a file.
    segment_fails(
        "out-dump",
        None,
        &["--labels", "cat", "--dump", &s.s("file/dump")],
        &["cannot create dump folder", "file/dump"],
    );
    segment_fails(
        "out-dump-file",
        None,
        &["--labels", "cat", "--dump", &s.s("file")],
        &["exists and is not a directory"],
    );
    segment_fails(
        "out-overlay",
        None,
        &["--labels", "cat", "--out", &s.s("no/such/dir/o.png")],
        &["cannot write overlay", "o.png"],
    );
    segment_fails(
        "out-kmeans",
        None,
        &[
            "--labels",
            "cat",
            "--kmeans",
            "40",
            "--kmeans-out",
            &s.s("k.png"),
        ],
        &["--kmeans 40", "2..=16"],
    );
    assert_eq!(fs::read_to_string(s.path("file")).unwrap(), "x");
}

#[test]
fn bad_weights() {
    let s = Scratch::new("bad-weights");
    let t = |f: &str| tiny().join(f).display().to_string();
    let img = voc_image().display().to_string();
    let seg = |model: &[&str]| {
        let mut a: Vec<String> = vec!["segment".into()];
        a.extend(model.iter().map(|x| x.to_string()));
        a.extend(["--image", &img, "--labels", "cat,dog", "--short-side", "64"].map(String::from));
        run(&a)
    };
    fs::write(s.path("notes.txt"), "these are not weights\n").unwrap();
    one_line_error(&seg(&["--clip", &s.s("notes.txt")]), &["notes.txt"]);
    one_line_error(
        &seg(&["--clip", &s.s("missing.safetensors")]),
        &["cannot read weights file", "missing.safetensors"],
    );
    fs::write(s.path("zero.safetensors"), b"").unwrap();
    one_line_error(
        &seg(&["--clip", &s.s("zero.safetensors")]),
        &["zero.safetensors", "empty (0 bytes)"],
    );
    let st = fs::read(t("open_clip_model.safetensors")).unwrap();
    fs::write(s.path("cut.safetensors"), &st[..st.len() / 2]).unwrap();
    one_line_error(
        &seg(&["--clip", &s.s("cut.safetensors")]),
        &["cut.safetensors"],
    );
    // A DINOiser checkpoint where the CLIP weights belong.
    one_line_error(
        &seg(&["--clip", &t("last.pt")]),
        &["CLIP-DINOiser checkpoint", "CLIP weights"],
    );
    // A CLIP checkpoint where the head belongs.
    one_line_error(
        &seg(&[
            "--clip",
            &t("open_clip_model.safetensors"),
            "--head",
            &t("open_clip_pytorch_model.bin"),
        ]),
        &["two CLIP weight files", "open_clip_pytorch_model.bin"],
    );
    // Weights that do not match the config: the tensor and the file are named.
    let upstream = fixture("tiny/open_clip_model.safetensors")
        .display()
        .to_string();
    one_line_error(
        &seg(&["--clip", &upstream, "--config", &t("open_clip_config.json")]),
        &[
            "token_embedding.weight",
            "open_clip_model.safetensors",
            "[49408, 64]",
        ],
    );
    // A non-GGUF file as --model.
    one_line_error(&seg(&["--model", &s.s("notes.txt")]), &["notes.txt"]);
    // DINOiser mode without the head.
    one_line_error(
        &seg(&[
            "--clip",
            &t("open_clip_model.safetensors"),
            "--config",
            &t("open_clip_config.json"),
        ]),
        &["no CLIP-DINOiser head", "another --mode (maskclip"],
    );
    assert_eq!(
        s.files(),
        ["cut.safetensors", "notes.txt", "zero.safetensors"]
    );
}

#[test]
fn convert_bad_inputs_leave_nothing() {
    let s = Scratch::new("convert-bad");
    let t = |f: &str| tiny().join(f).display().to_string();
    one_line_error(
        &run(&[
            "convert",
            "--clip",
            &t("open_clip_model.safetensors"),
            "--head",
            &t("last.pt"),
            "--quant",
            "q4_0",
            "--out",
            &s.s("no/dir/m.gguf"),
        ]),
        &["cannot write output file", "m.gguf"],
    );
    fs::write(s.path("notes.txt"), "text").unwrap();
    one_line_error(
        &run(&[
            "convert",
            "--clip",
            &s.s("notes.txt"),
            "--quant",
            "q8_0",
            "--out",
            &s.s("m.gguf"),
        ]),
        &["notes.txt"],
    );
    let o = run(&[
        "convert",
        "--clip",
        &t("open_clip_model.safetensors"),
        "--quant",
        "q3",
        "--out",
        &s.s("m.gguf"),
    ]);
    assert!(!o.status.success() && stderr(&o).contains("q3"));
    assert_eq!(s.files(), ["notes.txt"]);
}

// =========================================================================================
// bench
// =========================================================================================

/// `clipdino bench` runs the browser benchmark's steps natively: on the tiny model (given as
/// the files the plan names) every step of the smoke plan runs, the tower profile times the
/// real forward (bit-identical to the untimed one), the tower inputs are dumped for the ONNX
/// peer, and bad arguments are refused in one line.
#[test]
fn bench_runs_the_benchmark_steps_natively() {
    let s = Scratch::new("bench");
    let out = ok(&run(&[
        "bench",
        "--plan",
        "smoke",
        "--runs",
        "1",
        "--weights",
        &tiny().display().to_string(),
        "--photo",
        &voc_image().display().to_string(),
        "--out",
        &s.s("results.json"),
        "--dump-inputs",
        &s.s("inputs"),
    ]));
    for row in [
        "load upstream",
        "encode 224",
        "tower 224",
        "labels 1 × fast",
        "profile 224",
    ] {
        assert!(out.contains(row), "no `{row}` row:\n{out}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(s.path("results.json")).unwrap()).unwrap();
    assert_eq!(j["plan"], "smoke");
    assert_eq!(
        j["generated_weights"],
        serde_json::json!([]),
        "all files were given"
    );
    let steps = j["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 8);
    let profile = steps.iter().find(|r| r["step"]["op"] == "profile").unwrap();
    for k in ["pooled", "dense", "inter"] {
        assert_eq!(profile["timed_vs_untimed_max_abs_diff"][k], 0.0, "{k}");
    }
    assert!(profile["ops"].as_array().unwrap().len() >= 15, "{profile}");
    let dumped: Vec<String> = s
        .files()
        .into_iter()
        .filter(|f| f.starts_with("inputs/"))
        .collect();
    assert_eq!(dumped.len(), 1, "{dumped:?}");
    let (h, w) = dumped[0]
        .trim_start_matches("inputs/tower_")
        .trim_end_matches(".f32")
        .split_once('x')
        .map(|(h, w)| (h.parse::<u64>().unwrap(), w.parse::<u64>().unwrap()))
        .unwrap();
    assert_eq!(h, 224, "{dumped:?}");
    assert_eq!(
        fs::metadata(s.path(&dumped[0])).unwrap().len(),
        4 * 3 * h * w
    );

    one_line_error(&run(&["bench", "--runs", "0"]), &["--runs"]);
    one_line_error(
        &run(&["bench", "--weights", &s.s("nowhere")]),
        &["--weights", "no such folder"],
    );
}

// =========================================================================================
// full size
// =========================================================================================

#[test]
fn full_size_vit_b_16_random_weights_segment_at_224() {
    let s = Scratch::new("vitb16");
    let t = std::time::Instant::now();
    let out = ok(&run(&[
        "random-weights",
        "--arch",
        "vit-b-16",
        "--seed",
        "0",
        "--out",
        &s.s("w"),
    ]));
    let t_gen = t.elapsed().as_secs_f64();
    assert!(out.contains("open_clip_model.safetensors"), "{out}");
    let cfg = fs::read_to_string(s.path("w/open_clip_config.json")).unwrap();
    assert!(
        cfg.contains("\"width\":768") || cfg.contains("\"width\": 768"),
        "{cfg}"
    );
    let t = std::time::Instant::now();
    let w = |f: &str| s.path("w").join(f).display().to_string();
    let out = ok(&run(&[
        "segment",
        "--clip",
        &w("open_clip_model.safetensors"),
        "--config",
        &w("open_clip_config.json"),
        "--head",
        &w("last.pt"),
        "--image",
        &voc_image().display().to_string(),
        "--labels",
        "person,table,background",
        "--short-side",
        "224",
        "--templates",
        "fast",
        "--dump",
        &s.s("dump"),
    ]));
    let t_seg = t.elapsed().as_secs_f64();
    assert!(out.contains("14×19 patches"), "{out}");
    assert_eq!(read_npy(&s.path("dump/dense.npy")).shape, [14, 19, 512]);
    assert_eq!(read_npy(&s.path("dump/inter.npy")).shape, [14, 19, 768]);
    assert_eq!(read_npy(&s.path("dump/refined.npy")).shape, [14, 19, 512]);
    eprintln!("ViT-B/16 random weights: generate + write {t_gen:.1} s, segment (load + run) {t_seg:.1} s\n{out}");
}

/// The commands of the VOC evaluation workflow (scripts/eval-voc.sh), on random weights and a
/// VOC-devkit-layout folder made of the VOC sample: the val list picks the images, the table
/// holds both mIoUs (equal to what `eval` reports) beside the paper's.
#[test]
fn voc_eval_script_scores_the_val_list_with_upstream_files_and_a_bundle() {
    let s = Scratch::new("voc-eval");
    for d in [
        "VOC2012/JPEGImages",
        "VOC2012/SegmentationClass",
        "VOC2012/ImageSets/Segmentation",
    ] {
        fs::create_dir_all(s.path(d)).unwrap();
    }
    // Two val images (one listed twice would be a bug; a train image must be left out).
    for id in ["2007_000001", "2007_000002", "2007_000003"] {
        fs::copy(voc_image(), s.path(&format!("VOC2012/JPEGImages/{id}.jpg"))).unwrap();
        fs::copy(
            fixture("voc/masks/voc_sample.png"),
            s.path(&format!("VOC2012/SegmentationClass/{id}.png")),
        )
        .unwrap();
    }
    fs::write(
        s.path("VOC2012/ImageSets/Segmentation/val.txt"),
        "2007_000001\r\n2007_000003\n",
    )
    .unwrap();
    let bundle = tiny_bundle(&s, "q8_0");
    let script = repo().join("scripts/eval-voc.sh");
    let eval = |out: &str| {
        Command::new("bash")
            .arg(&script)
            .arg(s.path("VOC2012"))
            .arg(tiny())
            .arg(&bundle)
            .arg(s.path(out))
            .env("CLIPDINO", BIN)
            .output()
            .expect("run the VOC evaluation script")
    };
    let table = ok(&eval("report"));
    let read_json = |f: &str| -> serde_json::Value {
        serde_json::from_slice(&fs::read(s.path(f)).unwrap()).unwrap()
    };
    let up = read_json("report/voc21-upstream.json");
    let b = read_json("report/voc21-bundle.json");
    assert_eq!(up["images"], 2, "{up}");
    assert_eq!(b["images"], 2, "{b}");
    let md = fs::read_to_string(s.path("report/voc21.md")).unwrap();
    assert_eq!(md, table);
    assert!(md.contains("all 2 val images"), "{md}");
    for (row, v) in [
        ("| upstream files (f32) | f32 |", &up),
        ("| q8_0.gguf | int |", &b),
    ] {
        let want = format!("{row} {:.2} |", v["mIoU"].as_f64().unwrap());
        assert!(md.contains(&want), "{want:?} not in\n{md}");
    }
    assert!(md.contains("| 62.1 |"), "{md}");
    assert!(
        !s.files().iter().any(|f| f.contains(".voc.")),
        "{:?}",
        s.files()
    );

    // A val list naming a missing image: one error line naming the file, no report.
    fs::write(
        s.path("VOC2012/ImageSets/Segmentation/val.txt"),
        "2007_000009\n",
    )
    .unwrap();
    let o = eval("broken");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("2007_000009.jpg"), "{}", stderr(&o));
    assert!(!s.path("broken/voc21.md").exists());
}

// --- verify and the publish steps ----------------------------------------------------------

/// `convert` of the tiny random model into `dir/<quant>.gguf`.
fn tiny_bundle(s: &Scratch, quant: &str) -> String {
    let out = s.s(&format!("{}.gguf", quant.replace([',', '='], "_")));
    let mut a = vec!["convert".to_string()];
    a.extend(tiny_args());
    a.extend(["--quant".into(), quant.into(), "--out".into(), out.clone()]);
    ok(&run(&a));
    out
}

fn verify_args(models: &[&str], extra: &[&str]) -> Vec<String> {
    let mut a = vec!["verify".to_string()];
    a.extend(tiny_args());
    for m in models {
        a.extend(["--model".into(), m.to_string()]);
    }
    a.extend(with_defaults(
        extra,
        &[
            ("--images", &voc_image().display().to_string()),
            ("--labels", "person,table,plant,background"),
            ("--templates", "fast"),
            ("--presets", "fast,paper"),
        ],
    ));
    a
}

#[test]
fn verify_scores_bundles_against_the_upstream_files() {
    let s = Scratch::new("verify");
    let f32_bundle = tiny_bundle(&s, "f32");
    let q4 = tiny_bundle(&s, "q4_0");
    let report = s.s("report.json");
    let out = ok(&run(&verify_args(
        &[&f32_bundle, &q4],
        &["--compute", "f32,int", "--json", &report],
    )));
    assert!(
        out.contains("f32.gguf") && out.contains("q4_0.gguf"),
        "{out}"
    );
    let r: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["tool"], "clipdino verify");
    assert_eq!(r["labels"].as_array().unwrap().len(), 4);
    assert_eq!(r["background"], 3);
    assert_eq!(r["presets"][1]["window"]["size"], 448);
    let c = r["candidates"].as_array().unwrap();
    assert_eq!(c.len(), 4, "2 bundles × 2 compute paths");
    // The f32 bundle holds the upstream tensors: on f32 compute it IS the reference.
    assert_eq!(
        (c[0]["file"].as_str(), c[0]["compute"].as_str()),
        (Some("f32.gguf"), Some("f32"))
    );
    assert_eq!(c[0]["overall"]["agreement"], 100.0);
    assert_eq!(c[0]["recipe"], "f32");
    for k in ["dense_cosine", "refined_cosine"] {
        assert!(
            c[0]["overall"][k]["min"].as_f64().unwrap() > 0.999_999,
            "{k}"
        );
    }
    assert!(c[0]["text_cosine"]["min"].as_f64().unwrap() > 0.999_999);
    // Every candidate: per photo and preset, and overall, with times and sizes.
    for cand in c {
        assert_eq!(
            cand["photos"].as_array().unwrap().len(),
            2,
            "1 photo × 2 presets"
        );
        assert!(cand["per_preset"]["paper"]["pixels"].as_u64().unwrap() > 0);
        assert!(cand["bytes"].as_u64().unwrap() > 100_000);
        assert!(cand["load_seconds"].as_f64().unwrap() > 0.0);
        let agree = cand["overall"]["agreement"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&agree));
        let dense = cand["overall"]["dense_cosine"]["mean"].as_f64().unwrap();
        assert!(dense > 0.9 && dense <= 1.0 + 1e-9, "{dense}");
        assert!(cand.get("pass").is_none(), "no threshold, no verdict");
    }
    assert_eq!(r["pass"], true);
}

#[test]
fn verify_threshold_refuses_a_bundle_below_it() {
    let s = Scratch::new("verify-threshold");
    let q4 = tiny_bundle(&s, "q4_0");
    let report = s.s("report.json");
    let o = run(&verify_args(
        &[&q4],
        &[
            "--min-agreement",
            "100",
            "--presets",
            "fast",
            "--json",
            &report,
        ],
    ));
    one_line_error(&o, &["q4_0.gguf", "below --min-agreement 100"]);
    // The table and the report are still written, with the verdict.
    assert!(stdout(&o).contains("BELOW THRESHOLD"), "{}", stdout(&o));
    let r: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["pass"], false);
    assert_eq!(r["candidates"][0]["pass"], false);
    // The same bundle passes a threshold below its agreement.
    let agree = r["candidates"][0]["overall"]["agreement"].as_f64().unwrap();
    let floor = format!("{}", (agree - 1.0).max(0.0));
    ok(&run(&verify_args(
        &[&q4],
        &["--min-agreement", &floor, "--presets", "fast"],
    )));
}

#[test]
fn verify_bad_inputs() {
    let s = Scratch::new("verify-bad");
    let q8 = tiny_bundle(&s, "q8_0");
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--presets", "fast,huge"], &["--presets", "huge"]),
        (&["--min-agreement", "101"], &["--min-agreement", "101"]),
        (&["--images", "/nonexistent/photo.png"], &["photo.png"]),
        (&["--background", "sky"], &["sky", "not one of the labels"]),
    ];
    for (extra, words) in cases {
        one_line_error(&run(&verify_args(&[&q8], extra)), words);
    }
    one_line_error(
        &run(&verify_args(&[&s.s("missing.gguf")], &[])),
        &["missing.gguf"],
    );
}

#[test]
fn convert_recipes_and_calibration() {
    let s = Scratch::new("recipes");
    // A mixed recipe: K-quant rows of 256 (c_proj, conv1), fallbacks elsewhere (rows of 64).
    let mut a = vec!["convert".to_string()];
    a.extend(tiny_args());
    a.extend([
        "--quant".into(),
        "q4_k,attn=q6_k,dinoiser=q8_0".into(),
        "--calibrate".into(),
        voc_image().display().to_string(),
        "--calibrate-classes".into(),
        "voc21".into(),
        "--out".into(),
        s.s("mixed.gguf"),
    ]);
    let out = ok(&run(&a));
    for dt in ["q4_k", "q5_0", "q8_0"] {
        assert!(out.contains(dt), "{dt} missing from\n{out}");
    }
    let r = s.s("r.json");
    ok(&run(&verify_args(
        &[&s.s("mixed.gguf")],
        &["--presets", "fast", "--json", &r],
    )));
    let r: serde_json::Value = serde_json::from_slice(&fs::read(&r).unwrap()).unwrap();
    assert_eq!(r["candidates"][0]["recipe"], "q4_k,attn=q6_k,dinoiser=q8_0");
    // A bad recipe is refused in words, naming the group.
    let mut a = vec!["convert".to_string()];
    a.extend(tiny_args());
    a.extend([
        "--quant".into(),
        "q4_k,vison=q8_0".into(),
        "--out".into(),
        s.s("bad.gguf"),
    ]);
    let o = run(&a);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("`vison` is not a tensor group"),
        "{}",
        stderr(&o)
    );
    assert!(!s.path("bad.gguf").exists());
}

/// The commands the publishing workflow runs (scripts/publish-models.sh), on random weights.
#[test]
fn publish_script_writes_both_bundles_and_the_quality_report() {
    let s = Scratch::new("publish");
    let script = repo().join("scripts/publish-models.sh");
    let publish = |out: &str, min: &str| {
        Command::new("bash")
            .arg(&script)
            .arg(tiny())
            .arg(s.path(out))
            .env("CLIPDINO", BIN)
            .env("MIN_AGREEMENT", min)
            .output()
            .expect("run the publish script")
    };
    let o = publish("site", "50");
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let files = s.files();
    for f in [
        "site/clip-dinoiser.gguf",
        "site/clip-dinoiser-f16.gguf",
        "site/quality.json",
    ] {
        assert!(files.contains(&f.to_string()), "{f} not in {files:?}");
    }
    let q: serde_json::Value =
        serde_json::from_slice(&fs::read(s.path("site/quality.json")).unwrap()).unwrap();
    assert_eq!(q["pass"], true);
    assert_eq!(q["min_agreement"], 50.0);
    assert_eq!(q["photos"].as_array().unwrap().len(), 3);
    assert_eq!(q["labels"].as_array().unwrap().len(), 10);
    let c = q["candidates"].as_array().unwrap();
    // each bundle on each compute path: the default on int (the app's) first
    let runs: Vec<(&str, &str)> = c
        .iter()
        .map(|x| (x["file"].as_str().unwrap(), x["compute"].as_str().unwrap()))
        .collect();
    assert_eq!(
        runs,
        [
            ("clip-dinoiser.gguf", "int"),
            ("clip-dinoiser.gguf", "f32"),
            ("clip-dinoiser-f16.gguf", "int"),
            ("clip-dinoiser-f16.gguf", "f32"),
        ]
    );
    assert_eq!(c[0]["recipe"], "q8_0");
    assert!(c.iter().all(|x| x["pass"] == true));
    assert!(!fs::read_to_string(s.path("site/quality.json"))
        .unwrap()
        .contains(".publish."));
    // Both bundles also in parts, each manifest naming its whole file and parts that are there.
    for bundle in ["clip-dinoiser", "clip-dinoiser-f16"] {
        let m = clipdino::parts::Manifest::parse(
            &fs::read(s.path(&format!("site/{bundle}.parts.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(m.name, format!("{bundle}.gguf"));
        assert_eq!(
            m.size,
            fs::metadata(s.path(&format!("site/{bundle}.gguf")))
                .unwrap()
                .len()
        );
        for p in &m.parts {
            assert!(files.contains(&format!("site/{}", p.file)), "{}", p.file);
        }
    }
    // Below the threshold: the script fails and publishes nothing.
    let o = publish("refused", "100.0");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("below --min-agreement"),
        "{}",
        stderr(&o)
    );
    assert!(!s
        .files()
        .iter()
        .any(|f| f.starts_with("refused/") && !f.starts_with("refused/.")));
}

// --- the image tower on the GPU (`--device`) --------------------------------------------------

/// `--device gpu` (lavapipe after `scripts/setup.sh`; no adapter fails) against `--device cpu`:
/// the same features within 1e-3 of their scale and ≥ 99.9 % identical labels, for a single
/// window with the head and for sliding windows.
#[test]
fn segment_on_the_gpu_matches_the_cpu() {
    let s = Scratch::new("gpu");
    for (i, extra) in [
        &["--short-side", "224"][..],
        &["--short-side", "224", "--window", "160", "--stride", "96"][..],
    ]
    .iter()
    .enumerate()
    {
        let dump = |dev: &str| {
            let dir = s.s(&format!("{dev}{i}"));
            let mut a = extra.to_vec();
            a.extend([
                "--labels",
                "person,dining table,background",
                "--device",
                dev,
            ]);
            a.extend(["--dump", &dir]);
            let out = ok(&run(&segment_args(&a)));
            (dir, out)
        };
        let ((cpu, _), (gpu, out)) = (dump("cpu"), dump("gpu"));
        assert!(out.contains("image tower on gpu: "), "{out}");
        for name in ["dense", "inter", "refined", "bkg", "probs"] {
            let (a, b) = (
                read_npy(&Path::new(&cpu).join(format!("{name}.npy"))),
                read_npy(&Path::new(&gpu).join(format!("{name}.npy"))),
            );
            assert_eq!(a.shape, b.shape, "{name}");
            let (a, b) = (a.f32s(), b.f32s());
            let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
            let d = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            println!("{name} (case {i}): max |Δ| {d:.2e} of scale {scale:.2}");
            assert!(d <= 1e-3 * scale, "{name} (case {i}): max |Δ| {d:e}");
        }
        let (a, b) = (
            read_npy(&Path::new(&cpu).join("labels.npy")).i64s(),
            read_npy(&Path::new(&gpu).join("labels.npy")).i64s(),
        );
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
        assert!(
            same >= 0.999,
            "case {i}: {:.4} % of labels identical",
            100.0 * same
        );
    }
}

/// No adapter (wgpu told to use a backend this build lacks): `--device gpu` is an error in
/// words, `--device auto` warns and encodes on the CPU with the CPU's result.
#[test]
fn device_without_an_adapter() {
    let args = |dev: &str| segment_args(&["--labels", "person,background", "--device", dev]);
    let no_gpu = |dev: &str| {
        Command::new(BIN)
            .args(args(dev))
            .env("WGPU_BACKEND", "metal")
            .output()
            .expect("run clipdino")
    };
    one_line_error(&no_gpu("gpu"), &["--device gpu", "no GPU adapter"]);
    let auto = no_gpu("auto");
    let out = ok(&auto);
    assert!(
        stderr(&auto).contains("the image tower runs on the CPU"),
        "{}",
        stderr(&auto)
    );
    assert!(!out.contains("image tower on gpu"), "{out}");
    let areas = |o: &str| -> Vec<String> {
        o.lines()
            .filter(|l| l.starts_with("person") || l.starts_with("background"))
            .map(String::from)
            .collect()
    };
    assert_eq!(areas(&out), areas(&ok(&run(&args("cpu")))));
}

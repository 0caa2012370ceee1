//! Parity of the OpenCLIP towers with upstream PyTorch (open_clip 3.3.0) on the tiny random model
//! of `tests/fixtures/tiny/` (written by `tests/reference/make_fixtures.py`), plus shape and
//! timing checks of a full-size ViT-B/16 with random weights.
//!
//! Expected tensors (`expected.safetensors`): `text.tokens` [6,77] i64 / `text.embeddings` [6,32]
//! = `model.encode_text(tokens)`; `img224.image` [3,224,224] / `img224.pooled` [32] =
//! `model.encode_image(normalise(image))`; for images `a` [3,45,61] and `b` [3,96,64]:
//! `*.dense` [h,w,32] (MaskCLIP value path, CLIP-DINOiser's `extract_v` + `ln_post` + `proj`, on
//! the zero-padded then normalised image with the bicubic-resized positional embedding) and
//! `*.inter` [h,w,64] (`ln_2` output of block L−3); `*.pos_embed` and `pos_embed.16x15` (channels
//! 0..16) check the bicubic positional-embedding resize on its own.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use clipdino::clip::{l2_normalize, preprocess, ClipModel, MAX_PATCHES};
use clipdino::loaders::{random_clip_store, read_safetensors};
use clipdino::templates::TemplateSet;
use clipdino::tokenizer::ClipTokenizer;
use clipdino::{ClipConfig, ComputePath, Error, Stored, TensorStore, Vb};
use common::{max_abs_diff, token_rows};

const TOL: f32 = 1e-4;

struct Tiny {
    cfg: ClipConfig,
    store: TensorStore,
    expected: HashMap<String, Tensor>,
}

fn tiny() -> Tiny {
    let json =
        String::from_utf8(common::tiny::read("open_clip_config.json")).expect("utf-8 config");
    let cfg = ClipConfig::from_open_clip_json(&json).expect("config");
    let name = "open_clip_model.safetensors";
    let store = read_safetensors(&common::tiny::read(name), name).expect(name);
    Tiny {
        cfg,
        store,
        expected: common::tiny::expected(),
    }
}

fn model(store: TensorStore, cfg: &ClipConfig, path: ComputePath) -> ClipModel {
    let vb = Vb::new(Arc::new(store), Device::Cpu, path);
    ClipModel::new(&vb, cfg).expect("model")
}

fn expected<'a>(t: &'a Tiny, name: &str) -> &'a Tensor {
    t.expected
        .get(name)
        .unwrap_or_else(|| panic!("expected.safetensors has no `{name}`"))
}

fn check(label: &str, got: &Tensor, want: &Tensor) {
    let d = max_abs_diff(got, want);
    println!("{label}: max |Δ| = {d:.3e} over {:?}", got.dims());
    assert!(d <= TOL, "{label}: max |Δ| = {d:e} > {TOL:e}");
}

#[test]
fn text_tower_matches_open_clip() {
    let t = tiny();
    let m = model(t.store.clone(), &t.cfg, ComputePath::F32);
    let rows = token_rows(expected(&t, "text.tokens"));
    let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
    println!("prompt lengths {lens:?}");
    let got = m.text.forward(&rows).unwrap();
    check("text.embeddings", &got, expected(&t, "text.embeddings"));

    // Cutting the batch to its longest prompt is exact: one prompt at a time gives the same rows.
    for (i, r) in rows.iter().enumerate() {
        let one = m.text.forward(std::slice::from_ref(r)).unwrap();
        let d = max_abs_diff(&one, &got.narrow(0, i, 1).unwrap());
        assert!(
            d <= 1e-5,
            "prompt {i} alone differs from the batch by {d:e}"
        );
    }
    // More prompts than one chunk, mixed lengths: every row in input order, same values.
    let many: Vec<Vec<u32>> = (0..clipdino::clip::text::TEXT_CHUNK + 3)
        .map(|i| rows[i % rows.len()].clone())
        .collect();
    let all = m.text.forward(&many).unwrap();
    let idx: Vec<u32> = (0..many.len()).map(|i| (i % rows.len()) as u32).collect();
    let want = got
        .index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 0)
        .unwrap();
    let d = max_abs_diff(&all, &want);
    assert!(
        d <= 1e-5,
        "{} prompts in chunks differ by {d:e}",
        many.len()
    );
}

/// Shared-prefix encoding (cached keys/values of each prefix) equals encoding the full prompts.
#[test]
fn shared_prefixes_match_full_prompts() {
    let t = tiny();
    let m = model(t.store.clone(), &t.cfg, ComputePath::F32);
    let rows = token_rows(expected(&t, "text.tokens"));
    let ctx = t.cfg.text.context_length;
    // SOT = 998 in the fixtures; an empty prefix is allowed too.
    let prefixes: Vec<Vec<u32>> = vec![
        vec![998],
        vec![998, 5, 17, 300, 0, 997],
        vec![],
        vec![998, 42],
    ];
    let mut prompts = Vec::new();
    let mut full = Vec::new();
    for (k, r) in rows.iter().enumerate() {
        let pi = k % prefixes.len();
        let pre = &prefixes[pi];
        // The row without its SOT (unless the prefix is empty), cut so that it fits, EOT kept last.
        let body = if pre.is_empty() { &r[..] } else { &r[1..] };
        let room = ctx - pre.len();
        let mut suffix: Vec<u32> = body[..body.len().min(room) - 1].to_vec();
        suffix.push(*body.last().unwrap());
        full.push(pre.iter().chain(&suffix).copied().collect::<Vec<u32>>());
        prompts.push((pi, suffix));
    }
    let want = m.text.forward(&full).unwrap();
    let got = m.text.forward_shared_prefixes(&prefixes, &prompts).unwrap();
    let d = max_abs_diff(&got, &want);
    println!("shared prefixes vs full prompts: max |Δ| = {d:.3e}");
    assert!(d <= 1e-5, "max |Δ| {d:e}");

    let bad = |pre: Vec<Vec<u32>>, pr: Vec<(usize, Vec<u32>)>| {
        matches!(
            m.text.forward_shared_prefixes(&pre, &pr),
            Err(Error::InvalidInput { .. })
        )
    };
    assert!(
        bad(vec![vec![998]], vec![(1, vec![5, 999])]),
        "prefix index out of range"
    );
    assert!(
        bad(vec![vec![998, 999]], vec![(0, vec![5, 7])]),
        "pooling token in the prefix"
    );
    assert!(bad(vec![vec![998]], vec![(0, vec![])]), "empty suffix");
    assert!(
        bad(vec![vec![998; 70]], vec![(0, vec![5; 8])]),
        "longer than the context"
    );
}

#[test]
fn text_tower_rejects_bad_prompts() {
    let t = tiny();
    let m = model(t.store.clone(), &t.cfg, ComputePath::F32);
    let vocab = t.cfg.text.vocab_size as u32;
    assert!(matches!(
        m.text.forward(&[vec![]]),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        m.text.forward(&[vec![1, vocab]]),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        m.text.forward(&[vec![1; t.cfg.text.context_length + 1]]),
        Err(Error::InvalidInput { .. })
    ));
    assert_eq!(m.text.forward(&[]).unwrap().dims(), &[0, t.cfg.embed_dim]);
}

#[test]
fn image_tower_matches_open_clip() {
    let t = tiny();
    let m = model(t.store.clone(), &t.cfg, ComputePath::F32);
    let p = t.cfg.vision.patch_size;
    let inter_layer = t.cfg.vision.layers - 3;

    let x = preprocess(expected(&t, "img224.image"), p).unwrap();
    let mut calls = Vec::new();
    let out = m
        .vision
        .forward(&x, inter_layer, &mut |d, n| calls.push((d, n)))
        .unwrap();
    let layers = t.cfg.vision.layers;
    assert_eq!(
        calls,
        (1..=layers).map(|d| (d, layers)).collect::<Vec<_>>(),
        "progress calls"
    );
    check("img224.pooled", &out.pooled, expected(&t, "img224.pooled"));

    // Bicubic positional-embedding resize, upsampling case (channels 0..16 are stored).
    let pos = m
        .vision
        .positional_embedding(16, 15)
        .unwrap()
        .narrow(1, 0, 16)
        .unwrap();
    check("pos_embed.16x15", &pos, expected(&t, "pos_embed.16x15"));

    for name in ["a", "b"] {
        let x = preprocess(expected(&t, &format!("{name}.image")), p).unwrap();
        let (h, w) = (x.dim(2).unwrap() / p, x.dim(3).unwrap() / p);
        let pos = m.vision.positional_embedding(h, w).unwrap();
        check(
            &format!("{name}.pos_embed"),
            &pos,
            expected(&t, &format!("{name}.pos_embed")),
        );
        let out = m.vision.forward(&x, inter_layer, &mut |_, _| {}).unwrap();
        check(
            &format!("{name}.dense"),
            &out.dense,
            expected(&t, &format!("{name}.dense")),
        );
        check(
            &format!("{name}.inter"),
            &out.inter,
            expected(&t, &format!("{name}.inter")),
        );
    }
}

#[test]
fn image_tower_checks_inputs() {
    let t = tiny();
    let m = model(t.store.clone(), &t.cfg, ComputePath::F32);
    let p = t.cfg.vision.patch_size;
    let dev = Device::Cpu;
    let ok = Tensor::zeros((1, 3, 2 * p, 3 * p), DType::F32, &dev).unwrap();
    let layers = t.cfg.vision.layers;
    assert!(matches!(
        m.vision.forward(&ok, layers, &mut |_, _| {}),
        Err(Error::InvalidInput { .. })
    ));
    let odd = Tensor::zeros((1, 3, 2 * p + 1, 3 * p), DType::F32, &dev).unwrap();
    assert!(matches!(
        m.vision.forward(&odd, 0, &mut |_, _| {}),
        Err(Error::InvalidInput { .. })
    ));
    // One patch row more than the limit allows (checked before any compute).
    let rows = MAX_PATCHES / 64 + 1;
    let big = Tensor::zeros((1, 3, rows * p, 64 * p), DType::F32, &dev).unwrap();
    assert!(matches!(
        m.vision.forward(&big, 0, &mut |_, _| {}),
        Err(Error::GridTooLarge { .. })
    ));
    // The inter features of the last block need its full attention: still consistent.
    let out = m.vision.forward(&ok, layers - 1, &mut |_, _| {}).unwrap();
    assert_eq!(out.inter.dims(), &[2, 3, t.cfg.vision.width]);
}

/// The quantized compute path (Q8_0 weights, as in a GGUF bundle) stays close to f32.
#[test]
fn quantized_path_is_close_to_f32() {
    let t = tiny();
    let mut q = TensorStore::new("tiny q8_0");
    for name in t.store.names() {
        let Some(Stored::Float(x)) = t.store.get(name) else {
            unreachable!()
        };
        let (name, x) = match name {
            "visual.proj" | "text_projection" => {
                (format!("{name}_t"), x.t().unwrap().contiguous().unwrap())
            }
            "visual.conv1.weight" => (name.to_string(), x.flatten_from(1).unwrap()),
            _ => (name.to_string(), x.clone()),
        };
        let quantize =
            x.rank() == 2 && x.dim(1).unwrap() % 32 == 0 && !name.contains("positional_embedding");
        if quantize {
            q.insert(
                name,
                Stored::Quant(Arc::new(QTensor::quantize(&x, GgmlDType::Q8_0).unwrap())),
            );
        } else {
            q.insert(name, Stored::Float(x));
        }
    }
    let f = model(t.store.clone(), &t.cfg, ComputePath::F32);
    let mq = model(q, &t.cfg, ComputePath::Quantized);
    let x = preprocess(expected(&t, "b.image"), t.cfg.vision.patch_size).unwrap();
    let a = f.vision.forward(&x, 1, &mut |_, _| {}).unwrap();
    let b = mq.vision.forward(&x, 1, &mut |_, _| {}).unwrap();
    let cos = |x: &Tensor, y: &Tensor| {
        let x = x.flatten_all().unwrap();
        let y = y.flatten_all().unwrap();
        let dot = (&x * &y)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let n = |v: &Tensor| {
            v.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt()
        };
        dot / (n(&x) * n(&y))
    };
    let (cd, cp) = (cos(&a.dense, &b.dense), cos(&a.pooled, &b.pooled));
    let rows = token_rows(expected(&t, "text.tokens"));
    let ct = cos(
        &f.text.forward(&rows).unwrap(),
        &mq.text.forward(&rows).unwrap(),
    );
    println!("q8_0 vs f32 cosine: dense {cd:.5}, pooled {cp:.5}, text {ct:.5}");
    assert!(cd > 0.99 && cp > 0.99 && ct > 0.99);
}

// --- full-size ViT-B/16 with random weights ----------------------------------------------

/// A deterministic image in [0, 1] with some texture.
fn test_image(h: usize, w: usize) -> Tensor {
    let x = Tensor::arange(0u32, (3 * h * w) as u32, &Device::Cpu).unwrap();
    let x = (x.to_dtype(DType::F32).unwrap() * 0.37)
        .unwrap()
        .sin()
        .unwrap();
    ((x + 1.0).unwrap() * 0.5)
        .unwrap()
        .reshape((3, h, w))
        .unwrap()
}

#[test]
fn full_size_vit_b16_random_weights() {
    let cfg = ClipConfig::vit_b_16();
    let t0 = Instant::now();
    let m = model(random_clip_store(&cfg, 7), &cfg, ComputePath::F32);
    println!(
        "random ViT-B/16 built in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let inter_layer = cfg.vision.layers - 3;
    for (hh, ww) in [(224, 224), (200, 330)] {
        let img = test_image(hh, ww);
        let x = preprocess(&img, 16).unwrap();
        let (h, w) = (hh.div_ceil(16), ww.div_ceil(16));
        let t0 = Instant::now();
        let out = m.vision.forward(&x, inter_layer, &mut |_, _| {}).unwrap();
        println!(
            "image tower {hh}×{ww} ({h}×{w} patches): {:.3} s",
            t0.elapsed().as_secs_f64()
        );
        assert_eq!(out.pooled.dims(), &[512]);
        assert_eq!(out.dense.dims(), &[h, w, 512]);
        assert_eq!(out.inter.dims(), &[h, w, 768]);
        for (n, x) in [
            ("pooled", &out.pooled),
            ("dense", &out.dense),
            ("inter", &out.inter),
        ] {
            let s = x
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(s.is_finite() && s > 0.0, "{n} is degenerate: {s}");
        }
    }
    let prompts = vec![
        vec![49406, 320, 1125, 539, 320, 2368, 269, 49407],
        vec![49406, 2368, 49407],
    ];
    let t0 = Instant::now();
    let e = m.text.forward(&prompts).unwrap();
    println!("text tower, 2 prompts: {:.3} s", t0.elapsed().as_secs_f64());
    assert_eq!(e.dims(), &[2, 512]);

    // Label embeddings: one batched call equals the definition computed prompt by prompt.
    let tok = ClipTokenizer::embedded().unwrap();
    // A repeated label: identical prompts, whose shared prefix stops before the EOT.
    let labels: Vec<String> = ["cat", "traffic light", "cat"].map(String::from).to_vec();
    let t0 = Instant::now();
    let got = m.embed_labels(&tok, &labels, TemplateSet::Fast).unwrap();
    println!(
        "embed_labels, 3 labels × 7 templates: {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(got.dims(), &[3, 512]);
    for (i, label) in labels.iter().enumerate() {
        let mut acc = Tensor::zeros(512, DType::F32, &Device::Cpu).unwrap();
        for prompt in TemplateSet::Fast.apply(label) {
            let ids = tok.encode(&prompt).unwrap().ids;
            let e = m.text.forward(&[ids]).unwrap().squeeze(0).unwrap();
            acc = (acc + l2_normalize(&e).unwrap()).unwrap();
        }
        let want = l2_normalize(&acc).unwrap();
        let d = max_abs_diff(&got.get(i).unwrap(), &want);
        assert!(d <= 1e-5, "label `{label}`: max |Δ| {d:e}");
    }
}

/// The one "embed labels and say which were cut" step the CLI and the app share: a label whose
/// prompts exceed the 77-token context is flagged (and still embedded, as `embed_labels` does),
/// and weights whose text tower cannot hold the tokenizer's ids are refused with the label named.
#[test]
fn embed_labels_checked_flags_truncation_and_foreign_vocabularies() {
    let cfg = ClipConfig::tiny();
    let m = model(random_clip_store(&cfg, 3), &cfg, ComputePath::F32);
    let tok = ClipTokenizer::embedded().unwrap();
    let long = vec!["very"; 90].join(" ");
    let labels: Vec<String> = vec!["cat".into(), long, "sofa".into()];
    for set in TemplateSet::ALL {
        let got = m.embed_labels_checked(&tok, &labels, set).unwrap();
        assert_eq!(got.truncated, [false, true, false], "{set}");
        let plain = m.embed_labels(&tok, &labels, set).unwrap();
        assert_eq!(max_abs_diff(&got.embeddings, &plain), 0.0);
        assert_eq!(got.embeddings.dims(), &[3, cfg.embed_dim]);
    }
    let none = m
        .embed_labels_checked(&tok, &[], TemplateSet::Fast)
        .unwrap();
    assert_eq!(none.embeddings.dims(), &[0, cfg.embed_dim]);
    assert!(none.truncated.is_empty());

    let mut small = ClipConfig::tiny();
    small.text.vocab_size = 1000;
    let m = model(random_clip_store(&small, 3), &small, ComputePath::F32);
    let e = m
        .embed_labels_checked(&tok, &["cat".into()], TemplateSet::Fast)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vocabulary has 1000 tokens") && e.contains("“cat”"),
        "{e}"
    );
}

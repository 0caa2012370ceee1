//! Parity of the OpenCLIP towers with upstream PyTorch (open_clip 3.3.0) on the tiny random model
//! of `tests/fixtures/tiny/` (written by `tests/reference/make_fixtures.py`), plus shape and
//! timing checks of a full-size ViT-B/16 with random weights.
//!
//! Expected tensors (`expected.safetensors`): `text.tokens` [6,77] i64 / `text.embeddings` [6,32]
//! = `model.encode_text(tokens)`; `img224.image` [3,224,224] / `img224.pooled` [32] =
//! `model.encode_image(normalise(image))`; for images `a` [3,45,61] and `b` [3,96,64]:
//! `*.dense` [h,w,32] (MaskCLIP value path, CLIP-DINOiser's `extract_v` + `ln_post` + `proj`, on
//! the zero-padded then normalised image with the bicubic-resized positional embedding) and
//! `*.inter` [h,w,64] (`ln_2` output of block L−3).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use clipdino::clip::{preprocess, ClipModel, MAX_PATCHES};
use clipdino::{ClipConfig, ComputePath, Error, Stored, TensorStore, Vb};

const TOL: f32 = 1e-4;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
}

fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {} is missing ({e}); see tests/fixtures/README.md", path.display()))
}

fn load_safetensors(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load_buffer(&read_fixture(name), &Device::Cpu).expect(name)
}

struct Tiny {
    cfg: ClipConfig,
    store: TensorStore,
    expected: HashMap<String, Tensor>,
}

fn tiny() -> Tiny {
    let json = String::from_utf8(read_fixture("open_clip_config.json")).expect("utf-8 config");
    let cfg = ClipConfig::from_open_clip_json(&json).expect("config");
    let mut store = TensorStore::new("open_clip_model.safetensors");
    for (k, v) in load_safetensors("open_clip_model.safetensors") {
        store.insert(k, Stored::Float(v));
    }
    Tiny {
        cfg,
        store,
        expected: load_safetensors("expected.safetensors"),
    }
}

fn model(store: TensorStore, cfg: &ClipConfig, path: ComputePath) -> ClipModel {
    let vb = Vb::new(Arc::new(store), Device::Cpu, path);
    ClipModel::new(&vb, cfg).expect("model")
}

fn expected<'a>(t: &'a Tiny, name: &str) -> &'a Tensor {
    t.expected.get(name).unwrap_or_else(|| panic!("expected.safetensors has no `{name}`"))
}

fn max_abs_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shape");
    (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn check(label: &str, got: &Tensor, want: &Tensor) {
    let d = max_abs_diff(got, want);
    println!("{label}: max |Δ| = {d:.3e} over {:?}", got.dims());
    assert!(d <= TOL, "{label}: max |Δ| = {d:e} > {TOL:e}");
}

/// Rows of `text.tokens` cut after their EOT (the largest id), as the tokenizer returns them.
fn token_rows(tokens: &Tensor) -> Vec<Vec<u32>> {
    tokens
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|row| {
            let eot = row.iter().enumerate().fold(0, |b, (j, &v)| if v > row[b] { j } else { b });
            row[..=eot].iter().map(|&v| v as u32).collect()
        })
        .collect()
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
        assert!(d <= 1e-5, "prompt {i} alone differs from the batch by {d:e}");
    }
    // More prompts than one chunk: order and values kept.
    let many: Vec<Vec<u32>> = (0..clipdino::clip::text::TEXT_CHUNK + 3).map(|i| rows[i % rows.len()].clone()).collect();
    let all = m.text.forward(&many).unwrap();
    assert_eq!(all.dims(), &[many.len(), t.cfg.embed_dim]);
    let last = all.narrow(0, many.len() - 1, 1).unwrap();
    let k = (many.len() - 1) % rows.len();
    assert!(max_abs_diff(&last, &got.narrow(0, k, 1).unwrap()) <= 1e-5);
}

#[test]
fn text_tower_rejects_bad_prompts() {
    let t = tiny();
    let m = model(t.store.clone(), &t.cfg, ComputePath::F32);
    let vocab = t.cfg.text.vocab_size as u32;
    assert!(matches!(m.text.forward(&[vec![]]), Err(Error::InvalidInput { .. })));
    assert!(matches!(m.text.forward(&[vec![1, vocab]]), Err(Error::InvalidInput { .. })));
    assert!(matches!(m.text.forward(&[vec![1; t.cfg.text.context_length + 1]]), Err(Error::InvalidInput { .. })));
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
    let out = m.vision.forward(&x, inter_layer, &mut |d, n| calls.push((d, n))).unwrap();
    let layers = t.cfg.vision.layers;
    assert_eq!(calls, (1..=layers).map(|d| (d, layers)).collect::<Vec<_>>(), "progress calls");
    check("img224.pooled", &out.pooled, expected(&t, "img224.pooled"));

    for name in ["a", "b"] {
        let x = preprocess(expected(&t, &format!("{name}.image")), p).unwrap();
        let out = m.vision.forward(&x, inter_layer, &mut |_, _| {}).unwrap();
        check(&format!("{name}.dense"), &out.dense, expected(&t, &format!("{name}.dense")));
        check(&format!("{name}.inter"), &out.inter, expected(&t, &format!("{name}.inter")));
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
    assert!(matches!(m.vision.forward(&ok, layers, &mut |_, _| {}), Err(Error::InvalidInput { .. })));
    let odd = Tensor::zeros((1, 3, 2 * p + 1, 3 * p), DType::F32, &dev).unwrap();
    assert!(matches!(m.vision.forward(&odd, 0, &mut |_, _| {}), Err(Error::InvalidInput { .. })));
    // One patch row more than the limit allows (checked before any compute).
    let rows = MAX_PATCHES / 64 + 1;
    let big = Tensor::zeros((1, 3, rows * p, 64 * p), DType::F32, &dev).unwrap();
    assert!(matches!(m.vision.forward(&big, 0, &mut |_, _| {}), Err(Error::GridTooLarge { .. })));
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
        let Some(Stored::Float(x)) = t.store.get(name) else { unreachable!() };
        let (name, x) = match name {
            "visual.proj" | "text_projection" => (format!("{name}_t"), x.t().unwrap().contiguous().unwrap()),
            "visual.conv1.weight" => (name.to_string(), x.flatten_from(1).unwrap()),
            _ => (name.to_string(), x.clone()),
        };
        let quantize = x.rank() == 2 && x.dim(1).unwrap() % 32 == 0 && !name.contains("positional_embedding");
        if quantize {
            q.insert(name, Stored::Quant(Arc::new(QTensor::quantize(&x, GgmlDType::Q8_0).unwrap())));
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
        let dot = (&x * &y).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let n = |v: &Tensor| v.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        dot / (n(&x) * n(&y))
    };
    let (cd, cp) = (cos(&a.dense, &b.dense), cos(&a.pooled, &b.pooled));
    let rows = token_rows(expected(&t, "text.tokens"));
    let ct = cos(&f.text.forward(&rows).unwrap(), &mq.text.forward(&rows).unwrap());
    println!("q8_0 vs f32 cosine: dense {cd:.5}, pooled {cp:.5}, text {ct:.5}");
    assert!(cd > 0.99 && cp > 0.99 && ct > 0.99);
}

// --- full-size ViT-B/16 with random weights ----------------------------------------------

/// Deterministic uniform values in `[-a, a]` (xorshift64*), so the test needs no RNG seeding.
fn uniform(n: usize, a: f32, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed >> 12;
            *seed ^= *seed << 25;
            *seed ^= *seed >> 27;
            let r = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            (r as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
        })
        .collect()
}

fn random_store(cfg: &ClipConfig) -> TensorStore {
    let (v, t, e) = (&cfg.vision, &cfg.text, cfg.embed_dim);
    let g = v.grid();
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("visual.class_embedding".into(), vec![v.width]),
        ("visual.positional_embedding".into(), vec![g * g + 1, v.width]),
        ("visual.conv1.weight".into(), vec![v.width, 3, v.patch_size, v.patch_size]),
        ("visual.proj".into(), vec![v.width, e]),
        ("token_embedding.weight".into(), vec![t.vocab_size, t.width]),
        ("positional_embedding".into(), vec![t.context_length, t.width]),
        ("text_projection".into(), vec![t.width, e]),
    ];
    for (pre, w) in [("visual.ln_pre", v.width), ("visual.ln_post", v.width), ("ln_final", t.width)] {
        shapes.push((format!("{pre}.weight"), vec![w]));
        shapes.push((format!("{pre}.bias"), vec![w]));
    }
    for (pre, n, w, mlp) in [
        ("visual.transformer.resblocks", v.layers, v.width, v.mlp_dim),
        ("transformer.resblocks", t.layers, t.width, t.mlp_dim),
    ] {
        for i in 0..n {
            let b = format!("{pre}.{i}");
            for (s, shape) in [
                ("ln_1.weight", vec![w]),
                ("ln_1.bias", vec![w]),
                ("ln_2.weight", vec![w]),
                ("ln_2.bias", vec![w]),
                ("attn.in_proj_weight", vec![3 * w, w]),
                ("attn.in_proj_bias", vec![3 * w]),
                ("attn.out_proj.weight", vec![w, w]),
                ("attn.out_proj.bias", vec![w]),
                ("mlp.c_fc.weight", vec![mlp, w]),
                ("mlp.c_fc.bias", vec![mlp]),
                ("mlp.c_proj.weight", vec![w, mlp]),
                ("mlp.c_proj.bias", vec![w]),
            ] {
                shapes.push((format!("{b}.{s}"), shape));
            }
        }
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut store = TensorStore::new("random ViT-B/16");
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let mut data = uniform(n, 0.05, &mut seed);
        if name.contains("ln_") && name.ends_with("weight") {
            data.iter_mut().for_each(|x| *x += 1.0);
        }
        store.insert(name, Stored::Float(Tensor::from_vec(data, shape, &Device::Cpu).unwrap()));
    }
    store
}

#[test]
fn full_size_vit_b16_random_weights() {
    let cfg = ClipConfig::vit_b_16();
    let t0 = Instant::now();
    let m = model(random_store(&cfg), &cfg, ComputePath::F32);
    println!("random ViT-B/16 built in {:.2} s", t0.elapsed().as_secs_f64());
    let inter_layer = cfg.vision.layers - 3;
    for (hh, ww) in [(224, 224), (200, 330)] {
        let mut seed = (hh * 1000 + ww) as u64;
        let img = Tensor::from_vec(uniform(3 * hh * ww, 0.5, &mut seed), (3, hh, ww), &Device::Cpu).unwrap();
        let img = (img + 0.5).unwrap();
        let x = preprocess(&img, 16).unwrap();
        let (h, w) = (hh.div_ceil(16), ww.div_ceil(16));
        let t0 = Instant::now();
        let out = m.vision.forward(&x, inter_layer, &mut |_, _| {}).unwrap();
        println!("image tower {hh}×{ww} ({h}×{w} patches): {:.3} s", t0.elapsed().as_secs_f64());
        assert_eq!(out.pooled.dims(), &[512]);
        assert_eq!(out.dense.dims(), &[h, w, 512]);
        assert_eq!(out.inter.dims(), &[h, w, 768]);
        for (n, x) in [("pooled", &out.pooled), ("dense", &out.dense), ("inter", &out.inter)] {
            let s = x.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(s.is_finite() && s > 0.0, "{n} is degenerate: {s}");
        }
    }
    let prompts = vec![vec![49406, 320, 1125, 539, 320, 2368, 269, 49407], vec![49406, 2368, 49407]];
    let t0 = Instant::now();
    let e = m.text.forward(&prompts).unwrap();
    println!("text tower, 2 prompts: {:.3} s", t0.elapsed().as_secs_f64());
    assert_eq!(e.dims(), &[2, 512]);
}

//! Parity of the last-block methods (ClearCLIP, NACLIP, SCLIP: dense features, probabilities,
//! label maps) and of PAMR (every mode; one pass and sliding windows) with the upstream formulas
//! re-run by `tests/reference/methods.py`, on the Gaussian and the realistic tiny models.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use clipdino::loaders::load_model_files;
use clipdino::pipeline::Segmenter;
use clipdino::ComputePath;
use common::fixture;

const TOL: f32 = 1e-4;
/// The fixtures' background label (`BACKGROUND` in `make_fixtures.py`).
const BACKGROUND: usize = 2;

fn load(folder: &str) -> (Segmenter, HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let files: Vec<(String, Vec<u8>)> = [
        "open_clip_model.safetensors",
        "open_clip_config.json",
        "last.pt",
    ]
    .into_iter()
    .map(|n| (n.to_string(), fixture::read(folder, n)))
    .collect();
    let bundle = load_model_files(&files).expect("load the fixture model");
    let seg = Segmenter::from_bundle(bundle, &Device::Cpu, ComputePath::F32).expect("segmenter");
    let meth = candle_core::safetensors::load_buffer(
        &fixture::read(folder, "methods.safetensors"),
        &Device::Cpu,
    )
    .expect("methods.safetensors");
    (seg, fixture::expected(folder), meth)
}

#[test]
fn methods_and_pamr_match_upstream_on_the_tiny_model() {
    let (seg, exp, meth) = load("tiny");
    common::methods::check(&seg, &exp, &meth, BACKGROUND, TOL, &|s| println!("{s}"));
}

#[test]
fn methods_and_pamr_match_upstream_on_the_realistic_tiny_model() {
    let (seg, exp, meth) = load("tiny-realistic");
    common::methods::check(&seg, &exp, &meth, BACKGROUND, TOL, &|s| println!("{s}"));
}

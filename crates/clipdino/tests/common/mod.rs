//! Helpers shared by the integration tests (`mod common;` in each): comparisons of candle
//! tensors and, natively, the tiny fixture model's files. Not every test file uses every helper.
#![allow(dead_code)]

use candle_core::{DType, Tensor};

/// `max |got − want|` over all elements, after a shape check; `got` may be any float dtype.
pub fn max_abs_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shape");
    let got = got.to_dtype(DType::F32).unwrap();
    max_abs(&(got - want.to_dtype(DType::F32).unwrap()).unwrap())
}

/// `max |t|` over all elements.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Rows of a `[N, context]` token tensor (any integer dtype) cut after their EOT (the first
/// largest id), as the tokenizer returns them.
pub fn token_rows(tokens: &Tensor) -> Vec<Vec<u32>> {
    tokens
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|row| {
            let eot = row
                .iter()
                .enumerate()
                .fold(0, |b, (j, &v)| if v > row[b] { j } else { b });
            row[..=eot].iter().map(|&v| v as u32).collect()
        })
        .collect()
}

/// Mean and minimum per-patch cosine similarity of two `[h, w, E]` feature maps.
pub fn patch_cosine(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims(), "shape");
    let e = a.dim(2).unwrap();
    let rows = |t: &Tensor| t.reshape(((), e)).unwrap().to_vec2::<f32>().unwrap();
    let cs: Vec<f32> = rows(a)
        .iter()
        .zip(&rows(b))
        .map(|(x, y)| {
            let d: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx: f32 = x.iter().map(|p| p * p).sum::<f32>().sqrt();
            let ny: f32 = y.iter().map(|p| p * p).sum::<f32>().sqrt();
            d / (nx * ny)
        })
        .collect();
    (
        cs.iter().sum::<f32>() / cs.len() as f32,
        cs.iter().cloned().fold(1.0, f32::min),
    )
}

/// The tiny fixture models' files (`tests/fixtures/tiny/` with Gaussian weights and
/// `tests/fixtures/tiny-realistic/` with realistic statistics, both written by
/// `tests/reference/make_fixtures.py`) and the upstream outputs, read from disk (natively; the
/// wasm tests compile the files in instead).
pub mod fixture {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use candle_core::{Device, Tensor};

    pub fn dir(folder: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(folder)
    }

    pub fn read(folder: &str, name: &str) -> Vec<u8> {
        let path = dir(folder).join(name);
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "fixture {} is missing ({e}); see tests/fixtures/README.md",
                path.display()
            )
        })
    }

    /// The upstream PyTorch outputs (mixed dtypes), read with candle's own reader.
    pub fn expected(folder: &str) -> HashMap<String, Tensor> {
        candle_core::safetensors::load_buffer(&read(folder, "expected.safetensors"), &Device::Cpu)
            .expect("expected.safetensors")
    }
}

/// The Gaussian tiny fixture (`tests/fixtures/tiny/`).
pub mod tiny {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use candle_core::Tensor;

    pub fn dir() -> PathBuf {
        super::fixture::dir("tiny")
    }

    pub fn read(name: &str) -> Vec<u8> {
        super::fixture::read("tiny", name)
    }

    pub fn expected() -> HashMap<String, Tensor> {
        super::fixture::expected("tiny")
    }
}

/// `max |got − want| / max(1, max |want|)`: the error relative to the tensor's own scale, for
/// outputs of the realistic fixture, whose activations reach 10-25 (LayerNorm outlier gains,
/// massive activations) where the Gaussian fixture's stay near 1.
pub fn scaled_diff(got: &Tensor, want: &Tensor) -> f32 {
    max_abs_diff(got, want) / max_abs(want).max(1.0)
}

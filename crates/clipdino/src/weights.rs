//! In-memory tensor store shared by every loader, and `Vb`, a small var-builder over it.
//!
//! Loaders (safetensors, torch pickle, GGUF bundle) all produce a [`TensorStore`] keyed by the
//! upstream open_clip / CLIP-DINOiser tensor names. Model code then asks a [`Vb`] for tensors
//! by (prefixed) name and expected shape, exactly like `candle_nn::VarBuilder`, but a stored
//! tensor may be a plain float tensor or a quantized `QTensor` (GGUF bundle).
//!
//! Layout conventions for quantized tensors (GGUF blocks run along the last dimension):
//! * linear weights are stored `[out, in]` as upstream;
//! * `visual.conv1.weight` `[out, 3, p, p]` is stored flattened as `[out, 3·p·p]`;
//! * right-multiplied matrices (`visual.proj`, `text_projection`, upstream `[in, out]`) are stored
//!   transposed as `[out, in]` under the name with a `_t` suffix (see [`Vb::matmul_right`]).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// How a stored tensor is kept in memory.
#[derive(Debug, Clone)]
pub enum Stored {
    /// A float tensor (F32, F16 or BF16) as read from the file.
    Float(Tensor),
    /// A GGML-quantized tensor (or an F16/F32 one read from a GGUF file).
    Quant(Arc<QTensor>),
}

impl Stored {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Stored::Float(t) => t.dims().to_vec(),
            Stored::Quant(q) => q.shape().dims().to_vec(),
        }
    }

    /// The stored element type, as a short name (`f32`, `f16`, `q8_0`, …).
    pub fn dtype_name(&self) -> String {
        match self {
            Stored::Float(t) => format!("{:?}", t.dtype()).to_lowercase(),
            Stored::Quant(q) => format!("{:?}", q.dtype()).to_lowercase(),
        }
    }

    /// Dequantize / convert to an f32 tensor on `device`.
    pub fn to_f32(&self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Stored::Float(t) => t.to_dtype(DType::F32)?.to_device(device)?,
            Stored::Quant(q) => q.dequantize(device)?,
        })
    }

    /// Storage size in bytes.
    pub fn storage_bytes(&self) -> usize {
        match self {
            Stored::Float(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Stored::Quant(q) => q.storage_size_in_bytes(),
        }
    }
}

/// Named tensors from one or more files. `source` names the file(s) in error messages.
#[derive(Debug, Clone, Default)]
pub struct TensorStore {
    tensors: HashMap<String, Stored>,
    source: String,
}

impl TensorStore {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            tensors: HashMap::new(),
            source: source.into(),
        }
    }

    /// The file name(s) this store was read from, for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn insert(&mut self, name: impl Into<String>, t: Stored) {
        self.tensors.insert(name.into(), t);
    }

    pub fn get(&self, name: &str) -> Option<&Stored> {
        self.tensors.get(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<Stored> {
        self.tensors.remove(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.keys().map(|s| s.as_str()).collect();
        v.sort_unstable();
        v
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Stored)> {
        self.tensors.iter()
    }

    pub fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.get(name).map(|s| s.dims())
    }

    /// Total storage size in bytes.
    pub fn storage_bytes(&self) -> usize {
        self.tensors.values().map(|s| s.storage_bytes()).sum()
    }

    /// Merge another store (e.g. the DINOiser head into the CLIP weights), prefixing its names.
    pub fn merge(&mut self, other: TensorStore, prefix: &str) {
        if !other.source.is_empty() {
            if self.source.is_empty() {
                self.source = other.source.clone();
            } else {
                self.source = format!("{} + {}", self.source, other.source);
            }
        }
        for (k, v) in other.tensors {
            self.tensors.insert(format!("{prefix}{k}"), v);
        }
    }

    pub(crate) fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            name: name.to_string(),
            source_name: self.source.clone(),
        }
    }

    pub(crate) fn shape_err(&self, name: &str, expected: &[usize], got: &[usize]) -> Error {
        Error::ShapeMismatch {
            name: name.to_string(),
            source_name: self.source.clone(),
            expected: expected.to_vec(),
            got: got.to_vec(),
        }
    }

    /// An f32 tensor by full name, with its shape checked.
    pub fn tensor(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let s = self.get(name).ok_or_else(|| self.missing(name))?;
        let got = s.dims();
        if got != shape {
            return Err(self.shape_err(name, shape, &got));
        }
        s.to_f32(device)
    }
}

/// How linear-layer weights are used at compute time. Serialised (JSON, clap) as `f32` /
/// `quantized` / `int`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ComputePath {
    /// Dequantize everything to f32 at load (fastest matmul on wasm today, most memory).
    #[default]
    F32,
    /// Keep quantized tensors quantized and multiply with candle's quantized kernels.
    Quantized,
    /// The towers' linear layers (attention in/out projections, MLPs) re-quantized at load to
    /// 10-bit weights per output channel and run by the exact-sum integer kernel of
    /// [`crate::intgemm`] (activations quantized per row to 13 bits at run time); everything
    /// else as [`ComputePath::F32`]. About 2× faster than f32 in wasm, half the memory of f32.
    Int,
}

/// A prefix-aware view of a [`TensorStore`], in the style of `candle_nn::VarBuilder`.
#[derive(Clone)]
pub struct Vb {
    store: Arc<TensorStore>,
    prefix: String,
    device: Device,
    path: ComputePath,
}

impl Vb {
    pub fn new(store: Arc<TensorStore>, device: Device, path: ComputePath) -> Self {
        Self {
            store,
            prefix: String::new(),
            device,
            path,
        }
    }

    /// Push a name segment: `vb.pp("visual").pp("ln_pre")` → `visual.ln_pre.`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn compute_path(&self) -> ComputePath {
        self.path
    }

    pub fn store(&self) -> &TensorStore {
        &self.store
    }

    /// The full tensor name for `name` under this prefix.
    pub fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.full_name(name))
    }

    /// Stored dims of `name`, if present.
    pub fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.store.dims(&self.full_name(name))
    }

    /// An f32 tensor with a checked shape.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        self.store
            .tensor(&self.full_name(name), shape, &self.device)
    }

    fn stored(&self, full: &str) -> Result<&Stored> {
        self.store.get(full).ok_or_else(|| self.store.missing(full))
    }

    fn check_matrix(&self, full: &str, s: &Stored, out: usize, inp: usize) -> Result<()> {
        let got = s.dims();
        if got.iter().product::<usize>() != out * inp || got.first() != Some(&out) {
            return Err(self.store.shape_err(full, &[out, inp], &got));
        }
        Ok(())
    }

    fn qmatmul_from(&self, full: &str, s: &Stored, out: usize, inp: usize) -> Result<QMatMul> {
        self.check_matrix(full, s, out, inp)?;
        let got = s.dims();
        match (s, self.path) {
            (Stored::Quant(q), ComputePath::Quantized)
                if got.len() == 2 && !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16) =>
            {
                Ok(QMatMul::from_arc(q.clone())?)
            }
            _ => Ok(QMatMul::Tensor(
                s.to_f32(&self.device)?.reshape((out, inp))?,
            )),
        }
    }

    /// A `[out, in]` matrix for `x @ Wᵀ`. Float tensors of any shape with `out·in` elements and
    /// leading dim `out` are reshaped (so conv weights `[out, c, k, k]` work as patch matmuls).
    pub fn qmatmul(&self, out: usize, inp: usize, name: &str) -> Result<QMatMul> {
        let full = self.full_name(name);
        let s = self.stored(&full)?;
        self.qmatmul_from(&full, s, out, inp)
    }

    /// A `[out, in]` weight matrix as f32, whatever its storage (same shape rules as
    /// [`Vb::qmatmul`]).
    pub fn matrix(&self, out: usize, inp: usize, name: &str) -> Result<Tensor> {
        let full = self.full_name(name);
        let s = self.stored(&full)?;
        self.check_matrix(&full, s, out, inp)?;
        Ok(s.to_f32(&self.device)?.reshape((out, inp))?)
    }

    /// A right-multiplied upstream matrix `name` of shape `[in, out]` (used as `x @ W`), returned
    /// as a `[out, in]` [`QMatMul`]. Quantized bundles store it transposed as `name_t`.
    pub fn matmul_right(&self, inp: usize, out: usize, name: &str) -> Result<QMatMul> {
        let full = self.full_name(name);
        if let Some(s) = self.store.get(&full) {
            let got = s.dims();
            if got != [inp, out] {
                return Err(self.store.shape_err(&full, &[inp, out], &got));
            }
            let t = s.to_f32(&self.device)?.t()?.contiguous()?;
            return Ok(QMatMul::Tensor(t));
        }
        let full_t = format!("{full}_t");
        match self.store.get(&full_t) {
            Some(s) => self.qmatmul_from(&full_t, s, out, inp),
            None => Err(self.store.missing(&full)),
        }
    }

    /// The raw stored tensor (for embeddings that stay quantized).
    pub fn stored_tensor(&self, name: &str) -> Result<Stored> {
        let full = self.full_name(name);
        Ok(self.stored(&full)?.clone())
    }
}

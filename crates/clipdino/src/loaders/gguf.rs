//! The GGUF bundle: CLIP + optional CLIP-DINOiser head + configuration in one file.
//!
//! GGUF spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>; read and written with
//! `candle_core::quantized::gguf_file`. Metadata:
//! * `general.architecture = "clipdino"`, `clipdino.format_version` (u32, [`FORMAT_VERSION`]),
//! * `clipdino.clip_config` / `clipdino.head_config`: the [`ClipConfig`] / [`HeadConfig`] as JSON,
//! * `clipdino.quant`: the [`Recipe`] the file was written with (informative).
//!
//! Tensor names are the upstream open_clip names, the head under `dinoiser.`; the layout of the
//! quantized matrices follows [`crate::weights`] (conv1 flattened to `[out, 3·p·p]`, right-multiplied
//! `visual.proj` / `text_projection` stored transposed as `visual.proj_t` / `text_projection_t`).
//!
//! The reader is this module's own bounded parser ([`scan_header`]), not candle's: it walks the
//! header with explicit bounds, keeps only the metadata it needs, and checks every tensor (a
//! storage type of [`READABLE_DTYPES`], shape arithmetic, alignment, a byte range inside the file
//! and shared with no other tensor, the load budget) before anything is allocated, so a truncated
//! or hostile file is reported with the key or tensor at fault.

use std::io::Cursor;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::budget::{checked_numel, LoadMeter, MAX_TENSOR_NAME_BYTES};
use super::Bundle;
use crate::config::{ClipConfig, HeadConfig, MAX_CONFIG_JSON_BYTES};
use crate::error::{Error, Result};
use crate::quant::calib::ActivationStats;
use crate::quant::{is_head_weight, is_matrix, Layout, Quant, Recipe, RIGHT_MULTIPLIED};
use crate::weights::{Stored, TensorStore};

pub const ARCHITECTURE: &str = "clipdino";
pub const FORMAT_VERSION: u32 = 1;
pub const KEY_ARCH: &str = "general.architecture";
pub const KEY_VERSION: &str = "clipdino.format_version";
pub const KEY_CLIP: &str = "clipdino.clip_config";
pub const KEY_HEAD: &str = "clipdino.head_config";
pub const KEY_QUANT: &str = "clipdino.quant";

/// Serialise a bundle as GGUF with every matrix in `quant` ([`Recipe::uniform`]).
pub fn write_gguf_bundle(bundle: &Bundle, quant: Quant) -> Result<Vec<u8>> {
    write_gguf_bundle_with(bundle, &Recipe::uniform(quant), None)
}

/// Serialise a bundle as GGUF with the storage formats of `recipe` (see [`crate::quant`]).
/// With `importance` (activation statistics of the f32 model on calibration inputs), K-quant
/// matrices are quantized with their input channels' mean squares as rounding weights.
pub fn write_gguf_bundle_with(
    bundle: &Bundle,
    recipe: &Recipe,
    importance: Option<&ActivationStats>,
) -> Result<Vec<u8>> {
    bundle.clip.validate()?;
    let dev = Device::Cpu;
    let layout = Layout {
        vision_layers: bundle.clip.vision.layers,
        text_layers: bundle.clip.text.layers,
        head_layer: bundle
            .head
            .as_ref()
            .map_or(bundle.clip.vision.layers.saturating_sub(3), |h| h.layer),
    };
    let mut tensors: Vec<(String, Arc<QTensor>)> = Vec::with_capacity(bundle.store.len());
    for name in bundle.store.names() {
        let stored = bundle
            .store
            .get(name)
            .ok_or_else(|| bundle.store.missing(name))?;
        let matrix = is_matrix(name);
        let transpose = matrix && RIGHT_MULTIPLIED.contains(&name);
        let out_name = if transpose {
            format!("{name}_t")
        } else {
            name.to_string()
        };
        // Target shape: right-multiplied matrices transposed, conv weights stored flattened when
        // quantized (conv1 always; the head's obj_proj when a recipe stores it), scalars as [1]
        // (GGUF has no scalars, e.g. `logit_scale`).
        let mut dims = stored.dims();
        if transpose {
            dims.reverse();
        }
        let flatten = matrix || (is_head_weight(name) && recipe.stores_head());
        if flatten && dims.len() > 2 {
            dims = vec![dims[0], dims[1..].iter().product()];
        }
        if dims.is_empty() {
            dims = vec![1];
        }
        let row_len = dims.last().copied().unwrap_or(1);
        let format = recipe.format_for(&out_name, row_len, &layout);
        let dtype = format.dtype();
        // The layer's input statistics are recorded under the upstream weight name.
        let weights = importance
            .filter(|_| format.takes_importance())
            .and_then(|s| s.get(name))
            .filter(|c| c.sum_sq.len() == row_len)
            .map(|c| c.importance());
        let q = match stored {
            // Re-writing a bundle with its own storage: keep the blocks as they are.
            Stored::Quant(q) if q.dtype() == dtype && q.shape().dims() == dims.as_slice() => {
                q.clone()
            }
            _ => {
                let mut t = stored.to_f32(&dev)?;
                if transpose {
                    t = t.t()?.contiguous()?;
                }
                let t = t.reshape(dims)?;
                Arc::new(match &weights {
                    Some(w) => QTensor::quantize_imatrix(&t, w, dtype)?,
                    None => QTensor::quantize(&t, dtype)?,
                })
            }
        };
        tensors.push((out_name, q));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));

    let clip_json =
        serde_json::to_string(&bundle.clip).map_err(|e| Error::config(KEY_CLIP, e.to_string()))?;
    let mut meta: Vec<(&str, Value)> = vec![
        (KEY_ARCH, Value::String(ARCHITECTURE.to_string())),
        (
            "general.name",
            Value::String("OpenCLIP ViT + CLIP-DINOiser".to_string()),
        ),
        (KEY_VERSION, Value::U32(FORMAT_VERSION)),
        (KEY_QUANT, Value::String(recipe.to_string())),
        (KEY_CLIP, Value::String(clip_json)),
    ];
    if let Some(h) = &bundle.head {
        let head_json =
            serde_json::to_string(h).map_err(|e| Error::config(KEY_HEAD, e.to_string()))?;
        meta.push((KEY_HEAD, Value::String(head_json)));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_ref()))
        .collect();
    let mut cur = Cursor::new(Vec::new());
    gguf_file::write(&mut cur, &meta_refs, &tensor_refs)?;
    Ok(cur.into_inner())
}

// ------------------------------------------------------------------------------------------
// Reading
// ------------------------------------------------------------------------------------------

/// GGML storage types a bundle may hold, with their GGUF type ids (`enum ggml_type` of ggml.h):
/// what [`write_gguf_bundle`] writes (every [`Quant`](crate::quant::Quant)) and BF16. Reading
/// another type is one line here.
const READABLE_DTYPES: [(u32, GgmlDType); 10] = [
    (0, GgmlDType::F32),
    (1, GgmlDType::F16),
    (30, GgmlDType::BF16),
    (8, GgmlDType::Q8_0),
    (14, GgmlDType::Q6K),
    (13, GgmlDType::Q5K),
    (12, GgmlDType::Q4K),
    (7, GgmlDType::Q5_1),
    (6, GgmlDType::Q5_0),
    (2, GgmlDType::Q4_0),
];

/// The GGUF spec's default `general.alignment`.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest `general.alignment` accepted (the spec asks for a multiple of 8; writers use 32).
const MAX_ALIGNMENT: u64 = 1 << 16;
/// Metadata keys whose values the reader keeps (every other value is only skipped).
const KEPT_KEYS: [&str; 5] = [
    KEY_ARCH,
    KEY_VERSION,
    KEY_CLIP,
    KEY_HEAD,
    "general.alignment",
];

/// `true` when `bytes` start with the GGUF magic.
pub fn looks_like_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GGUF")
}

/// A kept metadata value.
#[derive(Debug, Clone, PartialEq)]
enum MetaValue<'a> {
    Int(i128),
    Str(&'a [u8]),
    /// Any other type, by its GGUF type id.
    Other(u32),
}

/// One tensor of the header, shape in row-major order (GGUF lists it innermost first).
struct TensorEntry {
    name: String,
    dims: Vec<usize>,
    dtype: GgmlDType,
    /// Byte range in the file, checked against the file and every other tensor.
    start: usize,
    end: usize,
}

/// What [`scan_header`] read: the kept metadata and every tensor's checked byte range.
struct Header<'a> {
    meta: std::collections::HashMap<String, MetaValue<'a>>,
    tensors: Vec<TensorEntry>,
}

struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
    wide: bool,
    source: &'a str,
}

const MAX_ARRAY_DEPTH: usize = 8;

impl<'a> Walker<'a> {
    fn need(&mut self, n: u64, what: &str) -> Result<usize> {
        let left = (self.b.len() - self.pos) as u64;
        if n > left {
            return Err(Error::Truncated {
                source_name: self.source.to_string(),
                detail: format!(
                    "GGUF header ends inside {what} (needs {n} bytes at offset {}, {left} left)",
                    self.pos
                ),
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(start)
    }
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.need(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[s..s + N]);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }
    fn len(&mut self, what: &str) -> Result<u64> {
        if self.wide {
            self.u64(what)
        } else {
            Ok(self.u32(what)? as u64)
        }
    }
    fn string(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.len(what)?;
        let s = self.need(n, what)?;
        Ok(&self.b[s..s + n as usize])
    }
    fn bad(&self, detail: String) -> Error {
        Error::NotWeights {
            source_name: self.source.to_string(),
            detail: format!("GGUF header at offset {}: {detail}", self.pos),
        }
    }
    /// Read (or skip) one value of type `ty`: integers and strings are returned, arrays and
    /// other scalars skipped without allocating.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue<'a>> {
        // (size, signed) of the fixed-size types: u8 i8 u16 i16 u32 i32 f32 bool _ _ u64 i64 f64.
        let fixed = |ty: u32| -> Option<u64> {
            match ty {
                0 | 1 | 7 => Some(1),
                2 | 3 => Some(2),
                4..=6 => Some(4),
                10..=12 => Some(8),
                _ => None,
            }
        };
        if let Some(n) = fixed(ty) {
            let s = self.need(n, key)?;
            let raw = &self.b[s..s + n as usize];
            let mut a = [0u8; 8];
            a[..raw.len()].copy_from_slice(raw);
            let u = u64::from_le_bytes(a);
            // Sign-extend the signed types.
            let shift = 64 - 8 * n as u32;
            let i = ((u << shift) as i64) >> shift;
            return Ok(match ty {
                0 | 2 | 4 | 10 => MetaValue::Int(u as i128),
                1 | 3 | 5 | 11 => MetaValue::Int(i as i128),
                other => MetaValue::Other(other),
            });
        }
        match ty {
            8 => Ok(MetaValue::Str(self.string(key)?)),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.bad(format!(
                        "metadata `{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let ety = self.u32(key)?;
                let n = self.len(key)?;
                if let Some(sz) = fixed(ety) {
                    self.need(n.saturating_mul(sz), key)?;
                } else {
                    // Strings / arrays: each takes at least a length prefix, so `n` is bounded
                    // by the bytes left before we loop.
                    let min = if self.wide { 8 } else { 4 };
                    if n.saturating_mul(min) > (self.b.len() - self.pos) as u64 {
                        self.need(n.saturating_mul(min), key)?;
                    }
                    for _ in 0..n {
                        self.value(ety, key, depth + 1)?;
                    }
                }
                Ok(MetaValue::Other(9))
            }
            other => Err(self.bad(format!("metadata `{key}` has unknown value type {other}"))),
        }
    }
}

fn dtype_of(id: u32) -> Option<GgmlDType> {
    READABLE_DTYPES
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, d)| *d)
}

fn dtype_names() -> String {
    READABLE_DTYPES
        .iter()
        .map(|(_, d)| format!("{d:?}").to_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `general.alignment` to use: an integer of any type, a power of two from 8 to
/// [`MAX_ALIGNMENT`] (a zero would divide by zero, anything else misplaces every tensor).
fn alignment(meta: &std::collections::HashMap<String, MetaValue>, source: &str) -> Result<u64> {
    let bad = |what: String| {
        Error::NotWeights {
        source_name: source.to_string(),
        detail: format!(
            "GGUF metadata `general.alignment` {what}; it must be a power of two from 8 to {MAX_ALIGNMENT}"
        ),
    }
    };
    match meta.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(MetaValue::Int(a)) => {
            let ok = u64::try_from(*a)
                .ok()
                .filter(|a| a.is_power_of_two() && (8..=MAX_ALIGNMENT).contains(a));
            ok.ok_or_else(|| bad(format!("is {a}")))
        }
        Some(_) => Err(bad("is not an integer".into())),
    }
}

/// Walk the whole header with explicit bounds and check every tensor (dtype, shape with checked
/// arithmetic, alignment, byte range inside the file, no two ranges sharing a byte, count within
/// the budget) before anything is allocated for it. Errors name the key or tensor at fault.
fn scan_header<'a>(bytes: &'a [u8], source: &'a str, meter: &LoadMeter) -> Result<Header<'a>> {
    let mut w = Walker {
        b: bytes,
        pos: 0,
        wide: true,
        source,
    };
    w.need(4, "the magic")?;
    let version = w.u32("the version")?;
    w.wide = match version {
        1 => false,
        2 | 3 => true,
        v => return Err(w.bad(format!("unsupported GGUF version {v}"))),
    };
    let tensor_count = w.len("the tensor count")?;
    let kv_count = w.len("the metadata count")?;
    // Every entry needs a few bytes: refuse counts the file cannot hold before looping.
    let left = (bytes.len() - w.pos) as u64;
    if kv_count.saturating_mul(13) > left || tensor_count.saturating_mul(24) > left {
        return Err(Error::Truncated {
            source_name: source.to_string(),
            detail: format!(
                "GGUF header declares {tensor_count} tensors and {kv_count} metadata entries, more than {left} bytes can hold"
            ),
        });
    }
    let max_tensors = meter.budget().max_tensors.saturating_sub(meter.tensors());
    if tensor_count > max_tensors as u64 {
        return Err(Error::OverBudget {
            source_name: source.to_string(),
            detail: format!(
                "the GGUF header declares {tensor_count} tensors; a model load may hold {}",
                meter.budget().max_tensors
            ),
        });
    }
    let mut meta = std::collections::HashMap::new();
    for _ in 0..kv_count {
        let key = String::from_utf8_lossy(w.string("a metadata key")?).into_owned();
        let ty = w.u32(&key)?;
        let v = w.value(ty, &key, 0)?;
        if KEPT_KEYS.contains(&key.as_str()) && meta.insert(key.clone(), v).is_some() {
            return Err(w.bad(format!("metadata `{key}` is given twice")));
        }
    }
    let align = alignment(&meta, source)?;
    // Tensor infos: shape and type first; byte ranges once the data offset is known.
    let mut raw: Vec<(String, Vec<usize>, GgmlDType, u64)> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for _ in 0..tensor_count {
        let name_bytes = w.string("a tensor name")?;
        if name_bytes.len() > MAX_TENSOR_NAME_BYTES {
            return Err(w.bad(format!(
                "a tensor name of {} bytes (at most {MAX_TENSOR_NAME_BYTES})",
                name_bytes.len()
            )));
        }
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let nd = w.u32(&name)?;
        if nd > 4 {
            return Err(w.bad(format!("tensor `{name}` has {nd} dimensions (at most 4)")));
        }
        let mut dims = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            let d = w.len(&name)?;
            let d = usize::try_from(d).map_err(|_| {
                w.bad(format!(
                    "tensor `{name}` has a dimension of {d}, larger than this machine can address"
                ))
            })?;
            dims.push(d);
        }
        dims.reverse();
        let ty = w.u32(&name)?;
        let dtype = dtype_of(ty).ok_or_else(|| Error::UnsupportedDtype {
            name: name.clone(),
            source_name: source.to_string(),
            dtype: format!(
                "GGML type {ty} (a clipdino bundle stores {})",
                dtype_names()
            ),
        })?;
        let offset = w.u64(&name)?;
        if !names.insert(name.clone()) {
            return Err(w.bad(format!("tensor `{name}` is listed twice")));
        }
        raw.push((name, dims, dtype, offset));
    }
    let data_offset = (w.pos as u64)
        .div_ceil(align)
        .checked_mul(align)
        .ok_or_else(|| w.bad("the tensor data offset overflows".into()))?;

    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, dtype, offset) in raw {
        let corrupt = |detail: String| Error::NotWeights {
            source_name: source.to_string(),
            detail: format!("tensor `{name}`: {detail}"),
        };
        let numel = checked_numel(source, &name, &dims)?;
        let (bs, ts) = (dtype.block_size() as u64, dtype.type_size() as u64);
        // GGML blocks run along the innermost dimension.
        let row = dims.last().copied().unwrap_or(1) as u64;
        if !row.is_multiple_of(bs) {
            return Err(corrupt(format!(
                "its rows of {row} values do not fill whole {dtype:?} blocks of {bs}"
            )));
        }
        let nbytes = (numel / bs)
            .checked_mul(ts)
            .ok_or_else(|| corrupt("its size overflows".into()))?;
        if offset % align != 0 {
            return Err(corrupt(format!(
                "its data offset {offset} is not a multiple of the alignment {align}"
            )));
        }
        let range = data_offset
            .checked_add(offset)
            .and_then(|s| Some((s, s.checked_add(nbytes)?)))
            .ok_or_else(|| corrupt("its data offset overflows".into()))?;
        if range.1 > bytes.len() as u64 {
            return Err(Error::Truncated {
                source_name: source.to_string(),
                detail: format!(
                    "tensor `{name}`: needs bytes {}..{}, the file has {}",
                    range.0,
                    range.1,
                    bytes.len()
                ),
            });
        }
        tensors.push(TensorEntry {
            name,
            dims,
            dtype,
            // Within the file length, so within usize.
            start: range.0 as usize,
            end: range.1 as usize,
        });
    }
    // No two tensors may share bytes: every tensor is copied out, so shared bytes would let a
    // small file fill memory with copies.
    let mut order: Vec<&TensorEntry> = tensors.iter().filter(|t| t.end > t.start).collect();
    order.sort_by_key(|t| t.start);
    for pair in order.windows(2) {
        if pair[1].start < pair[0].end {
            return Err(Error::NotWeights {
                source_name: source.to_string(),
                detail: format!(
                    "tensors `{}` and `{}` share bytes {}..{} of the file",
                    pair[0].name,
                    pair[1].name,
                    pair[1].start,
                    pair[0].end.min(pair[1].end)
                ),
            });
        }
    }
    Ok(Header { meta, tensors })
}

fn meta_str<'a>(h: &Header<'a>, key: &str, source: &str) -> Result<Option<&'a str>> {
    match h.meta.get(key) {
        None => Ok(None),
        Some(MetaValue::Str(s)) => {
            std::str::from_utf8(s)
                .map(Some)
                .map_err(|_| Error::NotWeights {
                    source_name: source.to_string(),
                    detail: format!("metadata key `{key}` is not UTF-8 text"),
                })
        }
        Some(_) => Err(Error::NotWeights {
            source_name: source.to_string(),
            detail: format!("metadata key `{key}` is not a string"),
        }),
    }
}

/// A config stored as JSON text under `key`, parsed (at most [`MAX_CONFIG_JSON_BYTES`]).
fn meta_json<T: serde::de::DeserializeOwned>(
    h: &Header,
    key: &str,
    source: &str,
) -> Result<Option<T>> {
    let Some(text) = meta_str(h, key, source)? else {
        return Ok(None);
    };
    if text.len() > MAX_CONFIG_JSON_BYTES {
        return Err(Error::config(
            key,
            format!(
                "is {} bytes of JSON; a config is well under {MAX_CONFIG_JSON_BYTES} (in {source})",
                text.len()
            ),
        ));
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| Error::config(key, format!("{e} (in {source})")))
}

fn missing_key(key: &str, source: &str) -> Error {
    Error::NotWeights {
        source_name: source.to_string(),
        detail: format!("metadata key `{key}` is missing"),
    }
}

/// Build one tensor from its exact byte range (checked by [`scan_header`]), charging it to
/// `meter` first.
fn load_tensor(t: &TensorEntry, raw: &[u8], meter: &mut LoadMeter, source: &str) -> Result<Stored> {
    let dev = Device::Cpu;
    meter.keep_tensor(source, &t.name, raw.len() as u64)?;
    let dims = t.dims.as_slice();
    Ok(match t.dtype {
        GgmlDType::F32 => Stored::Float(Tensor::from_raw_buffer(raw, DType::F32, dims, &dev)?),
        GgmlDType::F16 => Stored::Float(Tensor::from_raw_buffer(raw, DType::F16, dims, &dev)?),
        GgmlDType::BF16 => Stored::Float(Tensor::from_raw_buffer(raw, DType::BF16, dims, &dev)?),
        dtype => {
            // candle reinterprets the bytes as blocks: give it a suitably aligned buffer.
            let q = if (raw.as_ptr() as usize).is_multiple_of(8) {
                ggml_file::qtensor_from_ggml(dtype, raw, dims.to_vec(), &dev)?
            } else {
                let n = raw.len() as u64;
                meter.charge(
                    source,
                    &format!("an aligned copy of tensor `{}`", t.name),
                    n,
                )?;
                let copy = raw.to_vec();
                let q = if (copy.as_ptr() as usize).is_multiple_of(8) {
                    ggml_file::qtensor_from_ggml(dtype, &copy, dims.to_vec(), &dev)
                        .map_err(Error::from)
                } else {
                    Err(Error::invalid(
                        "gguf tensor",
                        format!("no aligned buffer for tensor `{}` of {source}", t.name),
                    ))
                };
                meter.release(n);
                q?
            };
            Stored::Quant(Arc::new(q))
        }
    })
}

/// Read a bundle written by [`write_gguf_bundle`]. The configs are bounded and the store is
/// checked against them. Within the default [`super::LoadBudget`].
pub fn read_gguf_bundle(bytes: &[u8], source: &str) -> Result<Bundle> {
    read_gguf_bundle_metered(bytes, source, &mut LoadMeter::default())
}

/// [`read_gguf_bundle`] charging every tensor to `meter` before it is built.
pub fn read_gguf_bundle_metered(
    bytes: &[u8],
    source: &str,
    meter: &mut LoadMeter,
) -> Result<Bundle> {
    if !looks_like_gguf(bytes) {
        return Err(Error::NotWeights {
            source_name: source.to_string(),
            detail: "no GGUF magic".into(),
        });
    }
    let header = scan_header(bytes, source, meter)?;
    let arch = meta_str(&header, KEY_ARCH, source)?.ok_or_else(|| missing_key(KEY_ARCH, source))?;
    if arch != ARCHITECTURE {
        return Err(Error::WrongModel {
            source_name: source.to_string(),
            detail: format!("{KEY_ARCH} is `{arch}`, expected `{ARCHITECTURE}`"),
        });
    }
    let version = match header.meta.get(KEY_VERSION) {
        None => return Err(missing_key(KEY_VERSION, source)),
        Some(MetaValue::Int(v)) => u32::try_from(*v).map_err(|_| {
            Error::config(
                KEY_VERSION,
                format!("{v} is not a bundle format (in {source})"),
            )
        })?,
        Some(_) => {
            return Err(Error::config(
                KEY_VERSION,
                format!("is not an integer (in {source})"),
            ))
        }
    };
    if version == 0 || version > FORMAT_VERSION {
        return Err(Error::config(
            KEY_VERSION,
            format!(
                "{source} has bundle format {version}; this build reads up to {FORMAT_VERSION}"
            ),
        ));
    }
    // Config errors name the metadata key, the field inside it and the file.
    let in_key = |key: &'static str| {
        move |e: Error| match e {
            Error::Config { field, detail } => Error::Config {
                field: format!("{key}: {field}"),
                detail: format!("{detail} (in {source})"),
            },
            e => e,
        }
    };
    let clip: ClipConfig =
        meta_json(&header, KEY_CLIP, source)?.ok_or_else(|| missing_key(KEY_CLIP, source))?;
    clip.validate().map_err(in_key(KEY_CLIP))?;
    let head: Option<HeadConfig> = meta_json(&header, KEY_HEAD, source)?;
    if let Some(h) = &head {
        h.validate(&clip).map_err(in_key(KEY_HEAD))?;
    }

    let mut store = TensorStore::new(source);
    let mut tensors = header.tensors;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    for t in tensors {
        let stored = load_tensor(&t, &bytes[t.start..t.end], meter, source)?;
        store.insert(t.name, stored);
    }
    let bundle = Bundle { clip, head, store };
    bundle.validate()?;
    Ok(bundle)
}

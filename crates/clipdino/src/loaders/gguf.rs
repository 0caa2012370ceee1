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
//! Before candle parses the header, [`scan_header`] walks it with explicit bounds so that a
//! truncated or hostile file is reported (and cannot trigger a division by a zero alignment or an
//! allocation larger than the file).

use std::io::Cursor;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::Bundle;
use crate::config::{ClipConfig, HeadConfig};
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

/// `true` when `bytes` start with the GGUF magic.
pub fn looks_like_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GGUF")
}

/// What [`scan_header`] learned.
struct Scan {
    tensor_count: u64,
}

struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
    wide: bool,
    source: &'a str,
}

const MAX_ARRAY_DEPTH: usize = 8;

impl Walker<'_> {
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
    fn u32(&mut self, what: &str) -> Result<u32> {
        let s = self.need(4, what)?;
        Ok(u32::from_le_bytes([
            self.b[s],
            self.b[s + 1],
            self.b[s + 2],
            self.b[s + 3],
        ]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let s = self.need(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.b[s..s + 8]);
        Ok(u64::from_le_bytes(a))
    }
    fn len(&mut self, what: &str) -> Result<u64> {
        if self.wide {
            self.u64(what)
        } else {
            Ok(self.u32(what)? as u64)
        }
    }
    fn string(&mut self, what: &str) -> Result<&[u8]> {
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
    /// Skip one value of type `ty`, returning it as an integer when it is one.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Option<u64>> {
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
            return Ok(match ty {
                0 | 2 | 4 | 10 => Some(u64::from_le_bytes(a)),
                _ => None,
            });
        }
        match ty {
            8 => {
                self.string(key)?;
                Ok(None)
            }
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
                Ok(None)
            }
            other => Err(self.bad(format!("metadata `{key}` has unknown value type {other}"))),
        }
    }
}

/// Walk the header with explicit bounds (see module doc). Errors name the field at fault.
fn scan_header(bytes: &[u8], source: &str) -> Result<Scan> {
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
    for _ in 0..kv_count {
        let key = String::from_utf8_lossy(w.string("a metadata key")?).into_owned();
        let ty = w.u32(&key)?;
        let v = w.value(ty, &key, 0)?;
        if key == "general.alignment" && v == Some(0) {
            return Err(w.bad("`general.alignment` is 0".into()));
        }
    }
    for _ in 0..tensor_count {
        let name = String::from_utf8_lossy(w.string("a tensor name")?).into_owned();
        let nd = w.u32(&name)?;
        if nd > 4 {
            return Err(w.bad(format!("tensor `{name}` has {nd} dimensions")));
        }
        for _ in 0..nd {
            w.len(&name)?;
        }
        w.u32(&name)?;
        w.u64(&name)?;
    }
    Ok(Scan { tensor_count })
}

fn meta_str<'a>(c: &'a gguf_file::Content, key: &str, source: &str) -> Result<Option<&'a str>> {
    match c.metadata.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(Error::NotWeights {
            source_name: source.to_string(),
            detail: format!("metadata key `{key}` is not a string"),
        }),
    }
}

fn missing_key(key: &str, source: &str) -> Error {
    Error::NotWeights {
        source_name: source.to_string(),
        detail: format!("metadata key `{key}` is missing"),
    }
}

/// Build one tensor from its exact byte range (length and alignment checked first).
fn load_tensor(dtype: GgmlDType, raw: &[u8], dims: &[usize]) -> Result<Stored> {
    let dev = Device::Cpu;
    Ok(match dtype {
        GgmlDType::F32 => Stored::Float(Tensor::from_raw_buffer(raw, DType::F32, dims, &dev)?),
        GgmlDType::F16 => Stored::Float(Tensor::from_raw_buffer(raw, DType::F16, dims, &dev)?),
        GgmlDType::BF16 => Stored::Float(Tensor::from_raw_buffer(raw, DType::BF16, dims, &dev)?),
        _ => {
            // candle reinterprets the bytes as blocks: give it a suitably aligned buffer.
            let q = if (raw.as_ptr() as usize).is_multiple_of(8) {
                ggml_file::qtensor_from_ggml(dtype, raw, dims.to_vec(), &dev)?
            } else {
                let copy = raw.to_vec();
                if !(copy.as_ptr() as usize).is_multiple_of(8) {
                    return Err(Error::invalid(
                        "gguf tensor",
                        "could not get an aligned buffer",
                    ));
                }
                ggml_file::qtensor_from_ggml(dtype, &copy, dims.to_vec(), &dev)?
            };
            Stored::Quant(Arc::new(q))
        }
    })
}

/// Read a bundle written by [`write_gguf_bundle`]. The store is checked against the configs.
pub fn read_gguf_bundle(bytes: &[u8], source: &str) -> Result<Bundle> {
    if !looks_like_gguf(bytes) {
        return Err(Error::NotWeights {
            source_name: source.to_string(),
            detail: "no GGUF magic".into(),
        });
    }
    let scan = scan_header(bytes, source)?;
    let content =
        gguf_file::Content::read(&mut Cursor::new(bytes)).map_err(|e| Error::NotWeights {
            source_name: source.to_string(),
            detail: format!("GGUF header: {e}"),
        })?;
    let arch =
        meta_str(&content, KEY_ARCH, source)?.ok_or_else(|| missing_key(KEY_ARCH, source))?;
    if arch != ARCHITECTURE {
        return Err(Error::WrongModel {
            source_name: source.to_string(),
            detail: format!("{KEY_ARCH} is `{arch}`, expected `{ARCHITECTURE}`"),
        });
    }
    let version = content
        .metadata
        .get(KEY_VERSION)
        .ok_or_else(|| missing_key(KEY_VERSION, source))?
        .to_u32()
        .map_err(|_| Error::config(KEY_VERSION, "not a u32"))?;
    if version == 0 || version > FORMAT_VERSION {
        return Err(Error::config(
            KEY_VERSION,
            format!(
                "{source} has bundle format {version}; this build reads up to {FORMAT_VERSION}"
            ),
        ));
    }
    let clip_json =
        meta_str(&content, KEY_CLIP, source)?.ok_or_else(|| missing_key(KEY_CLIP, source))?;
    let clip: ClipConfig =
        serde_json::from_str(clip_json).map_err(|e| Error::config(KEY_CLIP, e.to_string()))?;
    clip.validate()?;
    let head: Option<HeadConfig> = match meta_str(&content, KEY_HEAD, source)? {
        Some(j) => {
            Some(serde_json::from_str(j).map_err(|e| Error::config(KEY_HEAD, e.to_string()))?)
        }
        None => None,
    };
    if content.tensor_infos.len() as u64 != scan.tensor_count {
        return Err(Error::NotWeights {
            source_name: source.to_string(),
            detail: "GGUF tensor names repeat".into(),
        });
    }

    let mut store = TensorStore::new(source);
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let info = &content.tensor_infos[name];
        let dims = info.shape.dims().to_vec();
        let trunc = |detail: String| Error::Truncated {
            source_name: source.to_string(),
            detail: format!("tensor `{name}`: {detail}"),
        };
        let corrupt = |detail: String| Error::NotWeights {
            source_name: source.to_string(),
            detail: format!("tensor `{name}`: {detail}"),
        };
        let elems = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| corrupt(format!("shape {dims:?} overflows")))?;
        let (bs, ts) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
        if elems % bs != 0 {
            return Err(Error::ShapeMismatch {
                name: name.clone(),
                source_name: source.to_string(),
                expected: vec![elems.div_ceil(bs) * bs],
                got: dims,
            });
        }
        let nbytes = (elems / bs)
            .checked_mul(ts)
            .ok_or_else(|| corrupt("size overflows".into()))?;
        let start = content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| corrupt("offset overflows".into()))?;
        let end = start
            .checked_add(nbytes)
            .ok_or_else(|| corrupt("size overflows".into()))?;
        if end > bytes.len() {
            return Err(trunc(format!(
                "needs bytes {start}..{end}, the file has {}",
                bytes.len()
            )));
        }
        store.insert(
            name.clone(),
            load_tensor(info.ggml_dtype, &bytes[start..end], &dims)?,
        );
    }
    let bundle = Bundle { clip, head, store };
    bundle.validate()?;
    Ok(bundle)
}

//! safetensors files (the hub's `open_clip_model.safetensors`) read from and written to memory.
//!
//! Format: `u64` little-endian header length N, N bytes of JSON
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the data.
//! Parsing goes through candle's `SliceSafetensors` (the `safetensors` crate, which validates
//! offsets); the header is checked here first so that errors say what is wrong, and so that no
//! tensor is built before its shape, its name and the whole load's budget have been checked.

use candle_core::safetensors::{Load, SliceSafetensors};
use candle_core::{DType, Device, Tensor};

use super::budget::{checked_numel, LoadMeter, MAX_TENSOR_NAME_BYTES};
use crate::error::{Error, Result};
use crate::weights::{Stored, TensorStore};

/// Header bytes allowed per tensor of the load budget (an entry is ~100 bytes plus its name),
/// plus room for `__metadata__`.
const HEADER_BYTES_PER_TENSOR: u64 = 2048;
const HEADER_METADATA_BYTES: u64 = 1 << 20;

/// The `safetensors` crate refuses larger headers; so do we, with a clearer message.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// `true` when `bytes` start like a safetensors file (plausible header length, then `{`).
pub fn looks_like_safetensors(bytes: &[u8]) -> bool {
    if bytes.len() < 9 {
        return false;
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0xff; 8]));
    (2..=MAX_HEADER_BYTES).contains(&n) && bytes[8] == b'{'
}

/// Read every tensor of a safetensors file. f32 / f16 / bf16 are kept as they are, f64 becomes
/// f32; integer tensors are skipped (never weights); any other dtype is an error naming the tensor.
/// Within the default [`super::LoadBudget`].
pub fn read_safetensors(bytes: &[u8], source: &str) -> Result<TensorStore> {
    read_safetensors_metered(bytes, source, &mut LoadMeter::default())
}

/// The part of a header entry checked before the `safetensors` crate parses the file.
#[derive(serde::Deserialize)]
struct HeaderEntry {
    shape: Vec<u64>,
}

/// Check every header entry before any tensor is built: name length, entry count, and shapes
/// (checked arithmetic, item 12: a zero dim with huge others). The `safetensors` crate checks the
/// offsets afterwards.
fn check_header(header: &[u8], source: &str, meter: &LoadMeter) -> Result<()> {
    let not = |detail: String| Error::NotWeights {
        source_name: source.to_string(),
        detail,
    };
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| not(format!("invalid safetensors header: {e}")))?;
    let max = meter.budget().max_tensors;
    if map.len() > max.saturating_add(1) {
        return Err(Error::OverBudget {
            source_name: source.to_string(),
            detail: format!(
                "the safetensors header lists {} tensors; a model load may hold {max}",
                map.len()
            ),
        });
    }
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        if name.len() > MAX_TENSOR_NAME_BYTES {
            return Err(not(format!(
                "a tensor name of {} bytes (at most {MAX_TENSOR_NAME_BYTES})",
                name.len()
            )));
        }
        let e: HeaderEntry = serde_json::from_value(v)
            .map_err(|e| not(format!("tensor `{name}`: invalid header entry: {e}")))?;
        let dims: Vec<usize> = e
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                not(format!(
                    "tensor `{name}` has shape {:?}: larger than this machine can address",
                    e.shape
                ))
            })?;
        checked_numel(source, &name, &dims)?;
    }
    Ok(())
}

/// [`read_safetensors`] charging every tensor to `meter` (shared by every file of one model
/// load) before it is built.
pub fn read_safetensors_metered(
    bytes: &[u8],
    source: &str,
    meter: &mut LoadMeter,
) -> Result<TensorStore> {
    let trunc = |detail: String| Error::Truncated {
        source_name: source.to_string(),
        detail,
    };
    let not = |detail: String| Error::NotWeights {
        source_name: source.to_string(),
        detail,
    };
    if bytes.len() < 8 {
        return Err(trunc(format!(
            "{} bytes, shorter than the 8-byte safetensors header length",
            bytes.len()
        )));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER_BYTES {
        return Err(not(format!(
            "safetensors header claims {n} bytes (limit {MAX_HEADER_BYTES})"
        )));
    }
    if bytes.len() > 8 && bytes[8] != b'{' {
        return Err(not("no JSON safetensors header after the length".into()));
    }
    if n + 8 > bytes.len() as u64 {
        return Err(trunc(format!(
            "header claims {n} bytes but only {} follow",
            bytes.len() - 8
        )));
    }
    let max_header = (meter.budget().max_tensors as u64)
        .saturating_mul(HEADER_BYTES_PER_TENSOR)
        .saturating_add(HEADER_METADATA_BYTES);
    if n > max_header {
        return Err(Error::OverBudget {
            source_name: source.to_string(),
            detail: format!(
                "its safetensors header is {n} bytes; {max_header} hold the {} tensors a model load may have",
                meter.budget().max_tensors
            ),
        });
    }
    check_header(&bytes[8..8 + n as usize], source, meter)?;
    let st = SliceSafetensors::new(bytes).map_err(|e| {
        // The crate reports a data section that does not match the offsets as "incomplete";
        // tell a cut-off download apart from a malformed file.
        let data_len = (bytes.len() as u64).saturating_sub(8 + n);
        match declared_data_len(&bytes[8..8 + n as usize]) {
            Some(need) if need > data_len => trunc(format!(
                "tensor data needs {need} bytes after the header, only {data_len} present"
            )),
            _ => not(format!("invalid safetensors header: {e}")),
        }
    })?;
    let mut store = TensorStore::new(source);
    let dev = Device::Cpu;
    let mut views = st.tensors();
    // In file order, so the first tensor over the budget is the same on every run.
    views.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in views {
        let dtype = match DType::try_from(view.dtype()) {
            Ok(d) => d,
            Err(_) => {
                return Err(Error::UnsupportedDtype {
                    name,
                    source_name: source.to_string(),
                    dtype: format!("{:?}", view.dtype()),
                })
            }
        };
        let kept = match dtype {
            DType::F32 | DType::F16 | DType::BF16 => dtype,
            DType::F64 => DType::F32,
            DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64 => continue,
            other => {
                return Err(Error::UnsupportedDtype {
                    name,
                    source_name: source.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        // Shapes were checked by `check_header`; the crate checked data length = shape × dtype.
        let numel = view.data().len() as u64 / dtype.size_in_bytes() as u64;
        meter.keep_tensor(source, &name, numel * kept.size_in_bytes() as u64)?;
        let t = if kept == dtype {
            view.load(&dev)?
        } else {
            let scratch = view.data().len() as u64;
            meter.charge(
                source,
                &format!("a working copy of tensor `{name}`"),
                scratch,
            )?;
            let t = view.load(&dev).and_then(|t| t.to_dtype(kept));
            meter.release(scratch);
            t?
        };
        store.insert(name, Stored::Float(t));
    }
    Ok(store)
}

/// The end of the furthest `data_offsets` range declared in a header, if it parses.
fn declared_data_len(header: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    v.as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
}

fn st_dtype(d: DType) -> &'static str {
    match d {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        _ => "F32",
    }
}

/// Serialise named tensors as safetensors (f16 / bf16 kept, anything else written as f32),
/// sorted by name, with an optional `__metadata__` string map.
pub fn write_safetensors_entries(
    entries: &[(String, Tensor)],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let mut sorted: Vec<&(String, Tensor)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in sorted {
        let dtype = st_dtype(t.dtype());
        let flat = t.flatten_all()?;
        let begin = data.len();
        match dtype {
            "F16" => data.extend(
                flat.to_vec1::<half::f16>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes()),
            ),
            "BF16" => data.extend(
                flat.to_vec1::<half::bf16>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes()),
            ),
            _ => data.extend(
                flat.to_dtype(DType::F32)?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes()),
            ),
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.dims(), "data_offsets": [begin, data.len()]}),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    // Pad the header with spaces so that the data starts 8-byte aligned (as the reference writer does).
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Serialise a whole store (quantized tensors are dequantized to f32).
pub fn write_safetensors(store: &TensorStore) -> Result<Vec<u8>> {
    let mut entries = Vec::with_capacity(store.len());
    for name in store.names() {
        let s = store.get(name).ok_or_else(|| store.missing(name))?;
        let t = match s {
            Stored::Float(t) => t.clone(),
            Stored::Quant(q) => q.dequantize(&Device::Cpu)?,
        };
        entries.push((name.to_string(), t));
    }
    write_safetensors_entries(&entries, &[])
}

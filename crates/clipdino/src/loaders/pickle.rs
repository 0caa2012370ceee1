//! PyTorch checkpoints (`torch.save` zip format, torch ≥ 1.6) read from and written to memory.
//!
//! Reference: `torch/serialization.py` (`_save`, `_load`) and `torch/_utils.py`
//! (`_rebuild_tensor_v2`). A checkpoint is a zip archive `<name>/data.pkl` (a protocol-2 pickle
//! whose tensors are `_rebuild_tensor_v2(persistent_id, offset, size, stride, ...)` calls) plus one
//! raw little-endian storage per tensor under `<name>/data/<key>`.
//!
//! The unpickler here is small and bounded: it understands only the opcodes torch emits for state
//! dicts, never executes anything, caps nesting depth and the amount of memo copying, and checks
//! every declared length against the bytes actually present, so a hostile file yields an error
//! rather than a huge allocation or a stack overflow.

use std::collections::HashMap;
use std::io::{Cursor, Read, Seek, Write};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::weights::{Stored, TensorStore};

/// Deepest nesting of pickle containers we accept (state dicts need < 10).
const MAX_DEPTH: u32 = 128;
/// Upper bound on objects copied out of the memo (a pickle can otherwise grow exponentially).
const MAX_MEMO_COPY_NODES: u64 = 1 << 22;

// ------------------------------------------------------------------------------------------
// Unpickler
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Obj {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// Raw bytes are never needed for weights: only their length is kept.
    Bytes(usize),
    Global(String, String),
    Tuple(Vec<Obj>, Meta),
    List(Vec<Obj>, Meta),
    Dict(Vec<(Obj, Obj)>, Meta),
    /// `callable(*args)` (REDUCE / NEWOBJ), kept symbolic.
    Call(Box<Obj>, Box<Obj>, Meta),
    /// `persistent_load(id)` (BINPERSID): a storage reference.
    Pers(Box<Obj>, Meta),
}

/// Nesting depth and node count of an object, kept up to date so that bounds are O(1) to check.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Meta {
    depth: u32,
    nodes: u64,
}

impl Obj {
    fn meta(&self) -> Meta {
        match self {
            Obj::Tuple(_, m)
            | Obj::List(_, m)
            | Obj::Dict(_, m)
            | Obj::Call(_, _, m)
            | Obj::Pers(_, m) => *m,
            _ => Meta { depth: 0, nodes: 1 },
        }
    }
}

fn meta_of<'a>(children: impl Iterator<Item = &'a Obj>) -> Meta {
    let mut m = Meta { depth: 1, nodes: 1 };
    for c in children {
        let cm = c.meta();
        m.depth = m.depth.max(cm.depth + 1);
        m.nodes = m.nodes.saturating_add(cm.nodes);
    }
    m
}

fn grow(m: &mut Meta, child: &Obj) {
    let cm = child.meta();
    m.depth = m.depth.max(cm.depth + 1);
    m.nodes = m.nodes.saturating_add(cm.nodes);
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Obj>,
    memo: HashMap<u32, Obj>,
    copied: u64,
    source: &'a str,
}

impl<'a> Unpickler<'a> {
    fn err(&self, detail: impl std::fmt::Display) -> Error {
        Error::NotWeights {
            source_name: self.source.to_string(),
            detail: format!("data.pkl at byte {}: {detail}", self.pos),
        }
    }

    fn truncated(&self) -> Error {
        Error::Truncated {
            source_name: self.source.to_string(),
            detail: format!("data.pkl ends at byte {} inside an opcode", self.data.len()),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.truncated()),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.truncated())?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> Result<Obj> {
        let s = self.take(n)?;
        match std::str::from_utf8(s) {
            Ok(s) => Ok(Obj::Str(s.to_string())),
            Err(_) => Err(self.err("string is not valid UTF-8")),
        }
    }

    fn push(&mut self, o: Obj) -> Result<()> {
        if o.meta().depth > MAX_DEPTH {
            return Err(self.err(format!("objects nested deeper than {MAX_DEPTH}")));
        }
        self.stack.push(o);
        Ok(())
    }

    fn pop(&mut self) -> Result<Obj> {
        match self.stack.pop() {
            Some(Obj::Mark) | None => Err(self.err("pickle stack underflow")),
            Some(o) => Ok(o),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Obj>> {
        let idx = self
            .stack
            .iter()
            .rposition(|o| *o == Obj::Mark)
            .ok_or_else(|| self.err("MARK not found"))?;
        let items = self.stack.split_off(idx + 1);
        self.stack.pop();
        Ok(items)
    }

    fn copy_budget(&mut self, o: &Obj) -> Result<()> {
        self.copied = self.copied.saturating_add(o.meta().nodes);
        if self.copied > MAX_MEMO_COPY_NODES {
            return Err(self.err("too many memo references (pickle bomb?)"));
        }
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<()> {
        let o = self
            .memo
            .get(&id)
            .cloned()
            .ok_or_else(|| self.err(format!("memo key {id} not set")))?;
        self.copy_budget(&o)?;
        self.push(o)
    }

    fn memo_put(&mut self, id: u32) -> Result<()> {
        let o = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| self.err("MEMO with an empty stack"))?;
        self.copy_budget(&o)?;
        self.memo.insert(id, o);
        Ok(())
    }

    fn add_items(&mut self, items: Vec<Obj>, what: &str) -> Result<()> {
        let bad = || format!("{what} on a non-container");
        let top = match self.stack.last_mut() {
            Some(t) => t,
            None => return Err(self.err(bad())),
        };
        match (top, what) {
            (Obj::Dict(d, m), "SETITEMS") => {
                if !items.len().is_multiple_of(2) {
                    return Err(Error::NotWeights {
                        source_name: self.source.to_string(),
                        detail: "SETITEMS with an odd number of items".into(),
                    });
                }
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    grow(m, &k);
                    grow(m, &v);
                    d.push((k, v));
                }
                let depth = m.depth;
                if depth > MAX_DEPTH {
                    return Err(self.err(format!("objects nested deeper than {MAX_DEPTH}")));
                }
                Ok(())
            }
            (Obj::List(l, m), "APPENDS") => {
                for v in items {
                    grow(m, &v);
                    l.push(v);
                }
                let depth = m.depth;
                if depth > MAX_DEPTH {
                    return Err(self.err(format!("objects nested deeper than {MAX_DEPTH}")));
                }
                Ok(())
            }
            // Appending to / setting items on something we keep symbolic (a custom class): drop.
            (Obj::Call(..), _) => Ok(()),
            _ => Err(self.err(bad())),
        }
    }

    fn reduce(&mut self, callable: Obj, args: Obj) -> Result<Obj> {
        // `OrderedDict()` / `defaultdict(...)` become plain dicts so that SETITEMS can fill them.
        if let Obj::Global(m, c) = &callable {
            if m == "collections" && (c == "OrderedDict" || c == "defaultdict") {
                return Ok(Obj::Dict(Vec::new(), Meta { depth: 1, nodes: 1 }));
            }
        }
        let meta = meta_of([&callable, &args].into_iter());
        Ok(Obj::Call(Box::new(callable), Box::new(args), meta))
    }

    fn run(mut self) -> Result<Obj> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.err(format!("pickle protocol {v}")));
                    }
                }
                0x95 => {
                    // FRAME (protocol 4): only a length hint
                    self.take(8)?;
                }
                b'.' => {
                    // STOP
                    return self.pop();
                }
                b'(' => self.stack.push(Obj::Mark),
                b'N' => self.push(Obj::None)?,
                0x88 => self.push(Obj::Bool(true))?,
                0x89 => self.push(Obj::Bool(false))?,
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push(Obj::Int(v))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?) as i64;
                    self.push(Obj::Int(v))?
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?) as i64;
                    self.push(Obj::Int(v))?
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n ≤ 8 bytes
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return Err(self.err(format!("LONG1 of {n} bytes")));
                    }
                    let b = self.take(n)?;
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Obj::Int(i64::from_le_bytes(buf)))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Obj::Float(v))?
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    let s = self.string(n)?;
                    self.push(s)?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.push(s)?
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?);
                    let n = usize::try_from(n).map_err(|_| self.truncated())?;
                    let s = self.string(n)?;
                    self.push(s)?
                }
                b'T' | b'B' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    self.take(n)?;
                    self.push(Obj::Bytes(n))?
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    self.take(n)?;
                    self.push(Obj::Bytes(n))?
                }
                b'c' => {
                    let m = self.line()?;
                    let c = self.line()?;
                    self.push(Obj::Global(m, c))?
                }
                0x93 => {
                    // STACK_GLOBAL
                    let c = self.pop()?;
                    let m = self.pop()?;
                    match (m, c) {
                        (Obj::Str(m), Obj::Str(c)) => self.push(Obj::Global(m, c))?,
                        _ => return Err(self.err("STACK_GLOBAL without two strings")),
                    }
                }
                b'}' => self.push(Obj::Dict(Vec::new(), Meta { depth: 1, nodes: 1 }))?,
                b']' => self.push(Obj::List(Vec::new(), Meta { depth: 1, nodes: 1 }))?,
                b')' => self.push(Obj::Tuple(Vec::new(), Meta { depth: 1, nodes: 1 }))?,
                b't' => {
                    let items = self.pop_mark()?;
                    let m = meta_of(items.iter());
                    self.push(Obj::Tuple(items, m))?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let m = meta_of(items.iter());
                    self.push(Obj::List(items, m))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Dict(Vec::new(), Meta { depth: 1, nodes: 1 }))?;
                    self.add_items(items, "SETITEMS")?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let m = meta_of(items.iter());
                    self.push(Obj::Tuple(items, m))?
                }
                b'a' => {
                    let v = self.pop()?;
                    self.add_items(vec![v], "APPENDS")?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.add_items(items, "APPENDS")?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.add_items(vec![k, v], "SETITEMS")?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.add_items(items, "SETITEMS")?
                }
                b'Q' => {
                    let id = self.pop()?;
                    let m = meta_of(std::iter::once(&id));
                    self.push(Obj::Pers(Box::new(id), m))?
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let o = self.reduce(callable, args)?;
                    self.push(o)?
                }
                b'b' => {
                    // BUILD: object state (e.g. `_metadata` of a state dict). Not weights: dropped.
                    self.pop()?;
                    if self.stack.last().is_none_or(|o| *o == Obj::Mark) {
                        return Err(self.err("BUILD without an object"));
                    }
                }
                b'q' => {
                    let id = self.u8()? as u32;
                    self.memo_put(id)?
                }
                b'r' => {
                    let id = u32::from_le_bytes(self.le()?);
                    self.memo_put(id)?
                }
                0x94 => {
                    // MEMOIZE
                    let id = self.memo.len() as u32;
                    self.memo_put(id)?
                }
                b'h' => {
                    let id = self.u8()? as u32;
                    self.memo_get(id)?
                }
                b'j' => {
                    let id = u32::from_le_bytes(self.le()?);
                    self.memo_get(id)?
                }
                b'0' => {
                    self.stack
                        .pop()
                        .ok_or_else(|| self.err("POP on an empty stack"))?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let o = self
                        .stack
                        .last()
                        .cloned()
                        .ok_or_else(|| self.err("DUP on an empty stack"))?;
                    self.copy_budget(&o)?;
                    self.push(o)?
                }
                other => {
                    self.pos -= 1;
                    return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}")));
                }
            }
        }
    }
}

fn unpickle(data: &[u8], source: &str) -> Result<Obj> {
    let u = Unpickler {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        copied: 0,
        source,
    };
    u.run()
}

// ------------------------------------------------------------------------------------------
// Tensors out of the object tree
// ------------------------------------------------------------------------------------------

/// One tensor reference found in the pickle.
struct TensorRef {
    name: String,
    storage_key: String,
    storage_class: String,
    storage_numel: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

fn as_usize(o: &Obj) -> Option<usize> {
    match o {
        Obj::Int(v) => usize::try_from(*v).ok(),
        _ => None,
    }
}

fn as_usizes(o: &Obj) -> Option<Vec<usize>> {
    match o {
        Obj::Tuple(v, _) | Obj::List(v, _) => v.iter().map(as_usize).collect(),
        _ => None,
    }
}

fn is_global(o: &Obj, module: &str, class: &str) -> bool {
    matches!(o, Obj::Global(m, c) if m == module && c == class)
}

/// Recognise `_rebuild_tensor_v2(...)`, possibly wrapped in `_rebuild_parameter(...)` or
/// `_rebuild_from_type_v2(...)`. `Ok(None)` for anything that is not a tensor.
fn tensor_ref(name: &str, o: &Obj, source: &str) -> Result<Option<TensorRef>> {
    let (callable, args) = match o {
        Obj::Call(c, a, _) => (c.as_ref(), a.as_ref()),
        _ => return Ok(None),
    };
    let args_vec = match args {
        Obj::Tuple(v, _) => v,
        _ => return Ok(None),
    };
    if is_global(callable, "torch._utils", "_rebuild_parameter")
        || is_global(callable, "torch._utils", "_rebuild_parameter_with_state")
    {
        return match args_vec.first() {
            Some(inner) => tensor_ref(name, inner, source),
            None => Ok(None),
        };
    }
    if is_global(callable, "torch._tensor", "_rebuild_from_type_v2") {
        // (func, type, args, state)
        return match (args_vec.first(), args_vec.get(2)) {
            (Some(func), Some(inner_args)) => {
                let m = meta_of([func, inner_args].into_iter());
                tensor_ref(
                    name,
                    &Obj::Call(Box::new(func.clone()), Box::new(inner_args.clone()), m),
                    source,
                )
            }
            _ => Ok(None),
        };
    }
    if !is_global(callable, "torch._utils", "_rebuild_tensor_v2") {
        return Ok(None);
    }
    let bad = |detail: &str| Error::NotWeights {
        source_name: source.to_string(),
        detail: format!("tensor `{name}`: {detail}"),
    };
    if args_vec.len() < 4 {
        return Err(bad("_rebuild_tensor_v2 with fewer than 4 arguments"));
    }
    // persistent id: ('storage', storage_type, key, location, numel)
    let pid = match &args_vec[0] {
        Obj::Pers(p, _) => match p.as_ref() {
            Obj::Tuple(v, _) => v,
            _ => return Err(bad("storage id is not a tuple")),
        },
        _ => return Err(bad("storage is not a persistent id")),
    };
    if pid.len() < 5 || pid[0] != Obj::Str("storage".into()) {
        return Err(bad(
            "storage id is not ('storage', type, key, location, numel)",
        ));
    }
    let storage_class = match &pid[1] {
        Obj::Global(_, c) => c.clone(),
        _ => return Err(bad("storage type is not a class")),
    };
    let storage_key = match &pid[2] {
        Obj::Str(s) => s.clone(),
        _ => return Err(bad("storage key is not a string")),
    };
    let storage_numel = as_usize(&pid[4]).ok_or_else(|| bad("storage size is not an integer"))?;
    let offset = as_usize(&args_vec[1]).ok_or_else(|| bad("storage offset is not an integer"))?;
    let size = as_usizes(&args_vec[2]).ok_or_else(|| bad("size is not a tuple of integers"))?;
    let stride = as_usizes(&args_vec[3]).ok_or_else(|| bad("stride is not a tuple of integers"))?;
    if size.len() != stride.len() {
        return Err(bad("size and stride have different lengths"));
    }
    Ok(Some(TensorRef {
        name: name.to_string(),
        storage_key,
        storage_class,
        storage_numel,
        offset,
        size,
        stride,
    }))
}

/// Walk nested dicts, collecting tensors under '.'-joined names. Non-tensor values are ignored.
fn collect(prefix: &str, o: &Obj, out: &mut Vec<TensorRef>, source: &str) -> Result<()> {
    if let Some(t) = tensor_ref(prefix, o, source)? {
        out.push(t);
        return Ok(());
    }
    if let Obj::Dict(items, _) = o {
        for (k, v) in items {
            let key = match k {
                Obj::Str(s) => s.clone(),
                Obj::Int(i) => i.to_string(),
                _ => continue,
            };
            let name = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            collect(&name, v, out, source)?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Elem {
    F32,
    F16,
    Bf16,
    F64,
    /// Integer / bool storages: never weights (counters, ids, masks), skipped.
    Skip(usize),
}

impl Elem {
    fn from_class(class: &str) -> Option<Self> {
        Some(match class {
            "FloatStorage" => Elem::F32,
            "HalfStorage" => Elem::F16,
            "BFloat16Storage" => Elem::Bf16,
            "DoubleStorage" => Elem::F64,
            "LongStorage" => Elem::Skip(8),
            "IntStorage" => Elem::Skip(4),
            "ShortStorage" => Elem::Skip(2),
            "CharStorage" | "ByteStorage" | "BoolStorage" => Elem::Skip(1),
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::Bf16 => 2,
            Elem::F64 => 8,
            Elem::Skip(n) => n,
        }
    }
}

/// Gather a (possibly strided) view out of raw storage bytes into contiguous bytes.
fn gather(t: &TensorRef, storage: &[u8], esize: usize, source: &str) -> Result<Vec<u8>> {
    let bad = |detail: String| Error::NotWeights {
        source_name: source.to_string(),
        detail: format!("tensor `{}`: {detail}", t.name),
    };
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("size {:?} overflows", t.size)))?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    // Highest element index touched; must lie inside the storage.
    let mut last = t.offset;
    for (&d, &s) in t.size.iter().zip(&t.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| bad("stride overflows".into()))?;
    }
    if last >= t.storage_numel || t.storage_numel.saturating_mul(esize) > storage.len() {
        return Err(bad(format!(
            "view (offset {}, size {:?}, stride {:?}) exceeds its storage of {} elements",
            t.offset, t.size, t.stride, t.storage_numel
        )));
    }
    if numel > t.storage_numel {
        return Err(bad(
            "overlapping view with more elements than its storage".into()
        ));
    }
    // Contiguous (row-major) fast path.
    let mut contiguous = true;
    let mut expect = 1usize;
    for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect *= d;
    }
    if contiguous {
        let start = t.offset * esize;
        return Ok(storage[start..start + numel * esize].to_vec());
    }
    let mut out = Vec::with_capacity(numel * esize);
    let rank = t.size.len();
    let mut idx = vec![0usize; rank];
    for _ in 0..numel {
        let e: usize = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[e * esize..(e + 1) * esize]);
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            if idx[ax] < t.size[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    Ok(out)
}

fn tensor_from_le(bytes: &[u8], elem: Elem, shape: &[usize]) -> Result<Tensor> {
    let dev = &Device::Cpu;
    Ok(match elem {
        Elem::F32 => Tensor::from_raw_buffer(bytes, DType::F32, shape, dev)?,
        Elem::F16 => Tensor::from_raw_buffer(bytes, DType::F16, shape, dev)?,
        Elem::Bf16 => Tensor::from_raw_buffer(bytes, DType::BF16, shape, dev)?,
        Elem::F64 => {
            Tensor::from_raw_buffer(bytes, DType::F64, shape, dev)?.to_dtype(DType::F32)?
        }
        Elem::Skip(_) => {
            return Err(Error::invalid(
                "storage",
                "integer storages are skipped before conversion",
            ))
        }
    })
}

// ------------------------------------------------------------------------------------------
// Zip archive
// ------------------------------------------------------------------------------------------

/// Declared sizes larger than this multiple of the file are refused before allocating
/// (torch stores entries uncompressed, so 1× would do; deflated archives get some slack).
const MAX_EXPANSION: usize = 64;

fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: usize,
    file_len: usize,
    source: &str,
) -> Result<Vec<u8>> {
    let mut f = zip.by_name(name).map_err(|e| Error::NotWeights {
        source_name: source.to_string(),
        detail: format!("archive entry `{name}`: {e}"),
    })?;
    if f.size() > limit as u64 {
        return Err(Error::NotWeights {
            source_name: source.to_string(),
            detail: format!(
                "archive entry `{name}` declares {} bytes, more than the file can hold",
                f.size()
            ),
        });
    }
    // Pre-allocate what the entry declares, but never more than its compressed bytes could
    // hold uncompressed (stored) — a lying header only costs a reallocation.
    let mut out =
        Vec::with_capacity(f.size().min(f.compressed_size()).min(file_len as u64) as usize);
    (&mut f)
        .take(limit as u64)
        .read_to_end(&mut out)
        .map_err(|e| {
            let detail = format!("archive entry `{name}`: {e}");
            let source_name = source.to_string();
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Truncated {
                    source_name,
                    detail,
                }
            } else {
                // e.g. a CRC mismatch: the bytes are there but damaged.
                Error::NotWeights {
                    source_name,
                    detail,
                }
            }
        })?;
    Ok(out)
}

fn zip_error(source: &str, e: zip::result::ZipError) -> Error {
    let detail = format!("zip archive: {e}");
    match e {
        zip::result::ZipError::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::Truncated {
                source_name: source.to_string(),
                detail,
            }
        }
        // A cut-off archive loses its central directory at the end.
        zip::result::ZipError::InvalidArchive(_) => Error::Truncated {
            source_name: source.to_string(),
            detail: format!("{detail} (is the file complete?)"),
        },
        _ => Error::NotWeights {
            source_name: source.to_string(),
            detail,
        },
    }
}

/// Read every floating-point tensor of a `torch.save` checkpoint. Nested dicts are flattened
/// with '.', e.g. `{'model_state_dict': {'obj_proj.weight': t}}` → `model_state_dict.obj_proj.weight`.
/// Integer and bool tensors are skipped (they are never weights); f64 becomes f32.
pub fn read_torch_pickle(bytes: &[u8], source: &str) -> Result<TensorStore> {
    if bytes.len() < 4 || &bytes[..4] != b"PK\x03\x04" {
        let detail = if bytes.first() == Some(&0x80) {
            "a legacy (pre-1.6) torch pickle; re-save it with a current torch".to_string()
        } else {
            "not a zip archive (torch.save format)".to_string()
        };
        return Err(Error::NotWeights {
            source_name: source.to_string(),
            detail,
        });
    }
    let limit = bytes.len().saturating_mul(MAX_EXPANSION);
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| zip_error(source, e))?;
    let pkl_name = zip
        .file_names()
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or_else(|| Error::NotWeights {
            source_name: source.to_string(),
            detail: "zip archive has no `data.pkl` (not a torch checkpoint)".into(),
        })?;
    let root = pkl_name.strip_suffix("data.pkl").unwrap_or("").to_string();
    let order = zip
        .file_names()
        .find(|n| *n == format!("{root}byteorder"))
        .map(str::to_string);
    if let Some(order) = order {
        let bo = read_entry(&mut zip, &order, 64, bytes.len(), source)?;
        if bo.trim_ascii() != b"little" {
            return Err(Error::NotWeights {
                source_name: source.to_string(),
                detail: "big-endian torch checkpoint".into(),
            });
        }
    }
    let pkl = read_entry(&mut zip, &pkl_name, limit, bytes.len(), source)?;
    let obj = unpickle(&pkl, source)?;
    let mut refs = Vec::new();
    collect("", &obj, &mut refs, source)?;

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut store = TensorStore::new(source);
    for t in refs {
        let elem = Elem::from_class(&t.storage_class).ok_or_else(|| Error::UnsupportedDtype {
            name: t.name.clone(),
            source_name: source.to_string(),
            dtype: t.storage_class.clone(),
        })?;
        if let Elem::Skip(_) = elem {
            continue;
        }
        let esize = elem.size();
        let need = t
            .storage_numel
            .checked_mul(esize)
            .filter(|&n| n <= limit)
            .ok_or_else(|| Error::NotWeights {
                source_name: source.to_string(),
                detail: format!(
                    "tensor `{}`: storage of {} elements is larger than the file",
                    t.name, t.storage_numel
                ),
            })?;
        if !storages.contains_key(&t.storage_key) {
            let entry = format!("{root}data/{}", t.storage_key);
            let data = read_entry(&mut zip, &entry, need, bytes.len(), source)?;
            storages.insert(t.storage_key.clone(), data);
        }
        let storage = &storages[&t.storage_key];
        if storage.len() < need {
            return Err(Error::Truncated {
                source_name: source.to_string(),
                detail: format!(
                    "storage `{}` of tensor `{}` holds {} bytes, {} expected",
                    t.storage_key,
                    t.name,
                    storage.len(),
                    need
                ),
            });
        }
        let raw = gather(&t, storage, esize, source)?;
        let tensor = tensor_from_le(&raw, elem, &t.size)?;
        store.insert(t.name, Stored::Float(tensor));
    }
    Ok(store)
}

// ------------------------------------------------------------------------------------------
// Writer
// ------------------------------------------------------------------------------------------

struct PickleWriter {
    out: Vec<u8>,
}

impl PickleWriter {
    fn op(&mut self, b: u8) {
        self.out.push(b);
    }
    fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }
    fn global(&mut self, module: &str, class: &str) {
        self.out.push(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(class.as_bytes());
        self.out.push(b'\n');
    }
    fn int(&mut self, v: i64) {
        if (0..256).contains(&v) {
            self.out.push(b'K');
            self.out.push(v as u8);
        } else if (0..65536).contains(&v) {
            self.out.push(b'M');
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if i32::try_from(v).is_ok() {
            self.out.push(b'J');
            self.out.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            self.out.push(0x8a);
            self.out.push(8);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn tuple_of(&mut self, v: &[usize]) {
        if v.is_empty() {
            self.op(b')');
            return;
        }
        self.op(b'(');
        for &x in v {
            self.int(x as i64);
        }
        self.op(b't');
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }
    /// `_rebuild_tensor_v2(('storage', torch.<Class>, key, 'cpu', numel), 0, size, stride, False, OrderedDict())`
    fn tensor(&mut self, class: &str, key: &str, dims: &[usize]) {
        let numel: usize = dims.iter().product();
        let mut stride = vec![1usize; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * dims[i + 1];
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b'(');
        self.op(b'(');
        self.str("storage");
        self.global("torch", class);
        self.str(key);
        self.str("cpu");
        self.int(numel as i64);
        self.op(b't');
        self.op(b'Q');
        self.int(0);
        self.tuple_of(dims);
        self.tuple_of(&stride);
        self.op(0x89);
        self.empty_ordered_dict();
        self.op(b't');
        self.op(b'R');
    }
}

fn storage_of(t: &Tensor) -> Result<(&'static str, Vec<u8>)> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F16 => (
            "HalfStorage",
            t.to_vec1::<half::f16>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        DType::BF16 => (
            "BFloat16Storage",
            t.to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        _ => (
            "FloatStorage",
            t.to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
    })
}

/// Write a checkpoint `torch.load(path, weights_only=True)` reads: a state dict of `entries`
/// (f16/bf16 kept, anything else stored as f32), optionally nested under `wrapper` in an outer
/// dict that also holds `extra_ints` (e.g. `{'epoch': 0, 'model_state_dict': {...}}`).
pub fn write_torch_pickle(
    entries: &[(String, Tensor)],
    wrapper: Option<&str>,
    extra_ints: &[(&str, i64)],
) -> Result<Vec<u8>> {
    let mut p = PickleWriter { out: Vec::new() };
    p.op(0x80);
    p.op(2);
    if let Some(w) = wrapper {
        p.op(b'}');
        p.op(b'(');
        for (k, v) in extra_ints {
            p.str(k);
            p.int(*v);
        }
        p.str(w);
    } else if !extra_ints.is_empty() {
        return Err(Error::invalid(
            "extra_ints",
            "needs a wrapper dict to live in",
        ));
    }
    p.empty_ordered_dict();
    let mut storages = Vec::with_capacity(entries.len());
    if !entries.is_empty() {
        p.op(b'(');
        for (i, (name, t)) in entries.iter().enumerate() {
            let (class, bytes) = storage_of(t)?;
            p.str(name);
            p.tensor(class, &i.to_string(), t.dims());
            storages.push(bytes);
        }
        p.op(b'u');
    }
    if wrapper.is_some() {
        p.op(b'u');
    }
    p.op(b'.');

    let io = |e: zip::result::ZipError| Error::invalid("torch checkpoint", e.to_string());
    let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let plain =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    // torch aligns storages to 64 bytes so that they can be memory-mapped.
    let aligned = plain.with_alignment(64);
    let w =
        |zw: &mut zip::ZipWriter<Cursor<Vec<u8>>>, name: &str, data: &[u8], opts| -> Result<()> {
            zw.start_file(format!("archive/{name}"), opts).map_err(io)?;
            zw.write_all(data)
                .map_err(|e| Error::invalid("torch checkpoint", e.to_string()))?;
            Ok(())
        };
    w(&mut zw, "data.pkl", &p.out, plain)?;
    w(&mut zw, ".format_version", b"1", plain)?;
    w(&mut zw, ".storage_alignment", b"64", plain)?;
    w(&mut zw, "byteorder", b"little", plain)?;
    for (i, s) in storages.iter().enumerate() {
        w(&mut zw, &format!("data/{i}"), s, aligned)?;
    }
    w(&mut zw, "version", b"3\n", plain)?;
    let cur = zw.finish().map_err(io)?;
    Ok(cur.into_inner())
}

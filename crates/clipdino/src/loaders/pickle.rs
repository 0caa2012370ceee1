//! PyTorch checkpoints (`torch.save` zip format, torch ≥ 1.6) read from and written to memory.
//!
//! Reference: `torch/serialization.py` (`_save`, `_load`) and `torch/_utils.py`
//! (`_rebuild_tensor_v2`). A checkpoint is a zip archive `<name>/data.pkl` (a protocol-2 pickle
//! whose tensors are `_rebuild_tensor_v2(persistent_id, offset, size, stride, ...)` calls) plus one
//! raw little-endian storage per tensor under `<name>/data/<key>`.
//!
//! The unpickler here is small and bounded: it understands only the opcodes torch emits for state
//! dicts, never executes anything, and refuses any import outside the weights-only allow-list
//! ([`allowed_global`], the subset of `torch._weights_only_unpickler` a state dict needs), so a
//! pickle that names `os.system` is refused, not merely left uncalled. Every object it builds,
//! copies out of the memo or keeps on its stack is charged in bytes to the load's
//! [`LoadMeter`], nesting depth and stack height are capped, and every declared length is
//! checked against the bytes present. Storages stored uncompressed (as torch writes them) are
//! read in place (CRC-checked, never copied); each tensor is charged before it is built, so a
//! thousand views of one storage cost what they are, and compressed entries count against the
//! load's inflation budget, whatever entry the central directory points them at.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Cursor, Read, Write};

use candle_core::{DType, Device, Tensor};

use super::budget::{checked_numel, LoadMeter, MAX_TENSOR_NAME_BYTES};
use crate::error::{Error, Result};
use crate::weights::{Stored, TensorStore};

/// Deepest nesting of pickle containers we accept (state dicts need < 10).
const MAX_DEPTH: u32 = 128;
/// Highest pickle stack (torch batches SETITEMS by 1000, so state dicts need ~2000).
const MAX_STACK: usize = 100_000;
/// Most bytes of objects the unpickler builds (ViT-B/16's state dict needs about 300 kB); also
/// charged to the load's meter.
const MAX_PICKLE_OBJECT_BYTES: u64 = 64 << 20;
/// Largest `data.pkl` read (ViT-B/16's is about 40 kB).
const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Top-level keys of training checkpoints that hold optimizer state, never weights: their
/// tensors are not built.
const NOT_WEIGHTS: [&str; 4] = ["optimizer", "optimizer_state_dict", "optim", "scaler"];

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

/// In-memory size of one `Obj` node, the unit of the byte accounting.
const OBJ_BYTES: u64 = std::mem::size_of::<Obj>() as u64;

/// Nesting depth and (approximate, from above) bytes of an object, kept up to date so that
/// bounds are O(1) to check before anything is copied.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Meta {
    depth: u32,
    bytes: u64,
}

impl Meta {
    const EMPTY: Meta = Meta {
        depth: 1,
        bytes: OBJ_BYTES,
    };
}

impl Obj {
    fn meta(&self) -> Meta {
        match self {
            Obj::Tuple(_, m)
            | Obj::List(_, m)
            | Obj::Dict(_, m)
            | Obj::Call(_, _, m)
            | Obj::Pers(_, m) => *m,
            Obj::Str(s) => Meta {
                depth: 0,
                bytes: OBJ_BYTES + s.len() as u64,
            },
            Obj::Global(m, c) => Meta {
                depth: 0,
                bytes: OBJ_BYTES + (m.len() + c.len()) as u64,
            },
            _ => Meta {
                depth: 0,
                bytes: OBJ_BYTES,
            },
        }
    }
}

fn meta_of<'a>(children: impl Iterator<Item = &'a Obj>) -> Meta {
    let mut m = Meta::EMPTY;
    for c in children {
        grow(&mut m, c);
    }
    m
}

fn grow(m: &mut Meta, child: &Obj) {
    let cm = child.meta();
    m.depth = m.depth.max(cm.depth + 1);
    m.bytes = m.bytes.saturating_add(cm.bytes);
}

/// Whether a pickle may name `module.name`: torch's tensor and storage classes, dtypes and
/// rebuild functions and plain containers, as `torch.load(weights_only=True)` allows. Nothing
/// named is ever called (calls stay symbolic); anything else is refused as a file that may try
/// to run code.
fn allowed_global(module: &str, name: &str) -> bool {
    const REBUILD: [&str; 12] = [
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_qtensor",
        "_rebuild_sparse_tensor",
        "_rebuild_meta_tensor_no_storage",
        "_rebuild_nested_tensor",
        "_rebuild_wrapper_subclass",
        "_rebuild_device_tensor_from_cpu_tensor",
        "_rebuild_device_tensor_from_numpy",
    ];
    const DTYPES: [&str; 31] = [
        "float32",
        "float",
        "float64",
        "double",
        "float16",
        "half",
        "bfloat16",
        "complex32",
        "chalf",
        "complex64",
        "cfloat",
        "complex128",
        "cdouble",
        "uint8",
        "int8",
        "int16",
        "short",
        "int32",
        "int",
        "int64",
        "long",
        "bool",
        "uint16",
        "uint32",
        "uint64",
        "qint8",
        "quint8",
        "qint32",
        "float8_e4m3fn",
        "float8_e5m2",
        "per_tensor_affine",
    ];
    match module {
        "collections" => matches!(name, "OrderedDict" | "Counter"),
        "torch._utils" => REBUILD.contains(&name),
        "torch._tensor" => name == "_rebuild_from_type_v2",
        "torch.nn.parameter" => name == "Parameter",
        "torch.serialization" => name == "_get_layout",
        "torch" => {
            name.ends_with("Storage")
                || matches!(name, "Size" | "Tensor" | "device")
                || DTYPES.contains(&name)
        }
        "_codecs" => name == "encode",
        "builtins" | "__builtin__" => matches!(name, "set" | "bytearray" | "complex"),
        _ => false,
    }
}

struct Unpickler<'a, 'm> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Obj>,
    memo: HashMap<u32, Obj>,
    /// Bytes charged to `meter` for objects (released by the caller once the tree is gone).
    charged: u64,
    meter: &'m mut LoadMeter,
    source: &'a str,
}

impl<'a> Unpickler<'a, '_> {
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

    /// Account for `bytes` of new objects before they are built.
    fn alloc(&mut self, bytes: u64) -> Result<()> {
        if self.charged.saturating_add(bytes) > MAX_PICKLE_OBJECT_BYTES {
            return Err(self.err(format!(
                "the pickle builds more than {} MiB of objects (a state dict needs well under 1 MiB; a pickle bomb?)",
                MAX_PICKLE_OBJECT_BYTES >> 20
            )));
        }
        self.meter
            .charge(self.source, "the objects of data.pkl", bytes)?;
        self.charged += bytes;
        Ok(())
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

    /// Push an object whose bytes were already charged (or that moved from the stack).
    fn push_built(&mut self, o: Obj) -> Result<()> {
        if o.meta().depth > MAX_DEPTH {
            return Err(self.err(format!("objects nested deeper than {MAX_DEPTH}")));
        }
        if self.stack.len() >= MAX_STACK {
            return Err(self.err(format!("more than {MAX_STACK} objects on the pickle stack")));
        }
        self.stack.push(o);
        Ok(())
    }

    /// Push a new leaf object, charging its bytes.
    fn push(&mut self, o: Obj) -> Result<()> {
        self.alloc(o.meta().bytes)?;
        self.push_built(o)
    }

    /// Push a new container node built around children that were moved off the stack.
    fn push_node(&mut self, o: Obj) -> Result<()> {
        self.alloc(OBJ_BYTES)?;
        self.push_built(o)
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

    /// Charge a copy of the memo entry `id` / the stack top (memo GET / PUT, DUP) before it
    /// is cloned: a pickle can otherwise double an object with every reference.
    fn memo_get(&mut self, id: u32) -> Result<()> {
        let bytes = self
            .memo
            .get(&id)
            .ok_or_else(|| self.err(format!("memo key {id} not set")))?
            .meta()
            .bytes;
        self.alloc(bytes)?;
        let copy = self.memo[&id].clone();
        self.push_built(copy)
    }

    fn top_copy(&mut self, what: &str) -> Result<Obj> {
        let bytes = match self.stack.last() {
            Some(o) if *o != Obj::Mark => o.meta().bytes,
            _ => return Err(self.err(format!("{what} with an empty stack"))),
        };
        self.alloc(bytes)?;
        Ok(self.stack[self.stack.len() - 1].clone())
    }

    fn memo_put(&mut self, id: u32) -> Result<()> {
        let copy = self.top_copy("MEMO")?;
        self.memo.insert(id, copy);
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

    fn global(&mut self, module: String, name: String) -> Result<()> {
        if !allowed_global(&module, &name) {
            return Err(self.err(format!(
                "the pickle imports `{module}.{name}`; a weights file only names torch's tensor types and plain containers, so it is refused (it may try to run code)"
            )));
        }
        self.push(Obj::Global(module, name))
    }

    fn reduce(&mut self, callable: Obj, args: Obj) -> Result<Obj> {
        // `OrderedDict()` becomes a plain dict so that SETITEMS can fill it.
        if let Obj::Global(m, c) = &callable {
            if m == "collections" && c == "OrderedDict" {
                return Ok(Obj::Dict(Vec::new(), Meta::EMPTY));
            }
        }
        let meta = meta_of([&callable, &args].into_iter());
        Ok(Obj::Call(Box::new(callable), Box::new(args), meta))
    }

    fn run(&mut self) -> Result<Obj> {
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
                b'(' => {
                    if self.stack.len() >= MAX_STACK {
                        return Err(
                            self.err(format!("more than {MAX_STACK} objects on the pickle stack"))
                        );
                    }
                    self.stack.push(Obj::Mark)
                }
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
                    self.global(m, c)?
                }
                0x93 => {
                    // STACK_GLOBAL
                    let c = self.pop()?;
                    let m = self.pop()?;
                    match (m, c) {
                        (Obj::Str(m), Obj::Str(c)) => self.global(m, c)?,
                        _ => return Err(self.err("STACK_GLOBAL without two strings")),
                    }
                }
                b'}' => self.push_node(Obj::Dict(Vec::new(), Meta::EMPTY))?,
                b']' => self.push_node(Obj::List(Vec::new(), Meta::EMPTY))?,
                b')' => self.push_node(Obj::Tuple(Vec::new(), Meta::EMPTY))?,
                b't' => {
                    let items = self.pop_mark()?;
                    let m = meta_of(items.iter());
                    self.push_node(Obj::Tuple(items, m))?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let m = meta_of(items.iter());
                    self.push_node(Obj::List(items, m))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_node(Obj::Dict(Vec::new(), Meta::EMPTY))?;
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
                    self.push_node(Obj::Tuple(items, m))?
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
                    self.push_node(Obj::Pers(Box::new(id), m))?
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let o = self.reduce(callable, args)?;
                    self.push_node(o)?
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
                    let copy = self.top_copy("DUP")?;
                    self.push_built(copy)?
                }
                other => {
                    self.pos -= 1;
                    return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}")));
                }
            }
        }
    }
}

/// Unpickle `data`, charging its objects to `meter`. Returns the root object and the bytes
/// charged (to release once the object tree is dropped).
fn unpickle(data: &[u8], source: &str, meter: &mut LoadMeter) -> Result<(Obj, u64)> {
    let mut u = Unpickler {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        charged: 0,
        meter,
        source,
    };
    let res = u.run();
    let charged = u.charged;
    match res {
        Ok(o) => Ok((o, charged)),
        Err(e) => {
            u.meter.release(charged);
            Err(e)
        }
    }
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
/// `_rebuild_from_type_v2(...)`. `Ok(None)` for anything that is not a tensor. `name` builds the
/// tensor's name only once one is found.
fn tensor_ref(
    name: &dyn Fn() -> Result<String>,
    o: &Obj,
    source: &str,
) -> Result<Option<TensorRef>> {
    match o {
        Obj::Call(c, a, _) => tensor_call(name, c, a, source),
        _ => Ok(None),
    }
}

fn tensor_call(
    name: &dyn Fn() -> Result<String>,
    callable: &Obj,
    args: &Obj,
    source: &str,
) -> Result<Option<TensorRef>> {
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
            (Some(func), Some(inner_args)) => tensor_call(name, func, inner_args, source),
            _ => Ok(None),
        };
    }
    if !is_global(callable, "torch._utils", "_rebuild_tensor_v2") {
        return Ok(None);
    }
    let name = name()?;
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
        name,
        storage_key,
        storage_class,
        storage_numel,
        offset,
        size,
        stride,
    }))
}

/// Walk nested dicts, collecting tensors under '.'-joined key paths (built only for tensors,
/// at most [`MAX_TENSOR_NAME_BYTES`] long). Non-tensor values are ignored, and so are the
/// optimizer-state entries of training checkpoints ([`NOT_WEIGHTS`]).
fn collect<'o>(
    path: &mut Vec<Cow<'o, str>>,
    o: &'o Obj,
    out: &mut Vec<TensorRef>,
    source: &str,
) -> Result<()> {
    let name = || -> Result<String> {
        let name = path.join(".");
        if name.len() > MAX_TENSOR_NAME_BYTES {
            let mut short: String = name.chars().take(60).collect();
            short.push('…');
            return Err(Error::NotWeights {
                source_name: source.to_string(),
                detail: format!(
                    "tensor `{short}` has a {}-byte name (at most {MAX_TENSOR_NAME_BYTES})",
                    name.len()
                ),
            });
        }
        Ok(name)
    };
    if let Some(t) = tensor_ref(&name, o, source)? {
        out.push(t);
        return Ok(());
    }
    if let Obj::Dict(items, _) = o {
        for (k, v) in items {
            let key: Cow<'o, str> = match k {
                Obj::Str(s) => Cow::Borrowed(s.as_str()),
                Obj::Int(i) => Cow::Owned(i.to_string()),
                _ => continue,
            };
            if path.is_empty() && NOT_WEIGHTS.contains(&key.as_ref()) {
                continue;
            }
            path.push(key);
            let r = collect(path, v, out, source);
            path.pop();
            r?;
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

    fn dtype(self) -> Option<DType> {
        match self {
            Elem::F32 => Some(DType::F32),
            Elem::F16 => Some(DType::F16),
            Elem::Bf16 => Some(DType::BF16),
            Elem::F64 => Some(DType::F64),
            Elem::Skip(_) => None,
        }
    }
}

/// Where a view's elements lie in its storage, all checked against the storage length:
/// `Contiguous(first byte)` or `Strided` (gathered element by element).
enum ViewPlan {
    Contiguous(usize),
    Strided,
}

fn plan_view(
    t: &TensorRef,
    numel: usize,
    storage_len: usize,
    esize: usize,
    source: &str,
) -> Result<ViewPlan> {
    let bad = |detail: String| Error::NotWeights {
        source_name: source.to_string(),
        detail: format!("tensor `{}`: {detail}", t.name),
    };
    let need = t
        .storage_numel
        .checked_mul(esize)
        .ok_or_else(|| bad(format!("storage of {} elements overflows", t.storage_numel)))?;
    if storage_len < need {
        return Err(Error::Truncated {
            source_name: source.to_string(),
            detail: format!(
                "storage `{}` of tensor `{}` holds {storage_len} bytes, {need} expected",
                t.storage_key, t.name
            ),
        });
    }
    // Highest element index touched; must lie inside the storage (no dim is 0 here).
    let mut last = t.offset;
    for (&d, &s) in t.size.iter().zip(&t.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| bad("stride overflows".into()))?;
    }
    if last >= t.storage_numel {
        return Err(bad(format!(
            "view (offset {}, size {:?}, stride {:?}) exceeds its storage of {} elements",
            t.offset, t.size, t.stride, t.storage_numel
        )));
    }
    // Only `expand()` makes such views; parameters never are, and they would let a few bytes
    // stand for many.
    if numel > t.storage_numel {
        return Err(bad(
            "overlapping view with more elements than its storage".into()
        ));
    }
    let mut contiguous = true;
    let mut expect = 1usize;
    for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect = expect.saturating_mul(d);
    }
    // `last < storage_numel` bounds offset·esize and (offset + numel)·esize for a contiguous view.
    Ok(if contiguous {
        ViewPlan::Contiguous(t.offset * esize)
    } else {
        ViewPlan::Strided
    })
}

/// Gather a strided view (checked by [`plan_view`]) into contiguous bytes.
fn gather(t: &TensorRef, storage: &[u8], esize: usize, numel: usize) -> Vec<u8> {
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
    out
}

/// Build the tensor of one view, charging it (and any scratch copy) to `meter` first.
fn build_tensor(
    t: &TensorRef,
    elem: Elem,
    storage: &[u8],
    meter: &mut LoadMeter,
    source: &str,
) -> Result<Tensor> {
    let dev = &Device::Cpu;
    let esize = elem.size();
    let dtype = elem.dtype().ok_or_else(|| {
        Error::invalid("storage", "integer storages are skipped before conversion")
    })?;
    let numel = checked_numel(source, &t.name, &t.size)?;
    let kept_dtype = elem_kept(elem);
    let kept = numel.saturating_mul(kept_dtype.size_in_bytes() as u64);
    meter.keep_tensor(source, &t.name, kept)?;
    if numel == 0 {
        return Ok(Tensor::zeros(t.size.as_slice(), kept_dtype, dev)?);
    }
    let too_big = || Error::OverBudget {
        source_name: source.to_string(),
        detail: format!("tensor `{}` is too large for this machine", t.name),
    };
    let numel = usize::try_from(numel).map_err(|_| too_big())?;
    let nbytes = numel.checked_mul(esize).ok_or_else(too_big)?;
    let plan = plan_view(t, numel, storage.len(), esize, source)?;
    // Scratch: a gathered copy of a strided view, and the f64 tensor before conversion.
    let scratch = match plan {
        ViewPlan::Strided => nbytes as u64,
        ViewPlan::Contiguous(_) => 0,
    } + if matches!(elem, Elem::F64) {
        nbytes as u64
    } else {
        0
    };
    meter.charge(
        source,
        &format!("a working copy of tensor `{}`", t.name),
        scratch,
    )?;
    let built = (|| -> Result<Tensor> {
        let x = match plan {
            ViewPlan::Contiguous(start) => {
                Tensor::from_raw_buffer(&storage[start..start + nbytes], dtype, &t.size, dev)?
            }
            ViewPlan::Strided => {
                Tensor::from_raw_buffer(&gather(t, storage, esize, numel), dtype, &t.size, dev)?
            }
        };
        Ok(x.to_dtype(kept_dtype)?)
    })();
    meter.release(scratch);
    built
}

fn elem_kept(e: Elem) -> DType {
    match e {
        Elem::F16 => DType::F16,
        Elem::Bf16 => DType::BF16,
        _ => DType::F32,
    }
}

// ------------------------------------------------------------------------------------------
// Zip archive
// ------------------------------------------------------------------------------------------

/// One archive entry's bytes: in place when stored uncompressed (CRC-checked), else inflated
/// into a buffer charged to the meter (the caller releases `charged` when done) and counted
/// against the load's inflation budget.
struct Entry<'a> {
    bytes: Cow<'a, [u8]>,
    charged: u64,
}

fn read_entry<'a>(
    zip: &mut zip::ZipArchive<Cursor<&'a [u8]>>,
    file: &'a [u8],
    name: &str,
    limit: u64,
    meter: &mut LoadMeter,
    source: &str,
) -> Result<Entry<'a>> {
    let not = |detail: String| Error::NotWeights {
        source_name: source.to_string(),
        detail: format!("archive entry `{name}`: {detail}"),
    };
    let mut f = zip.by_name(name).map_err(|e| not(e.to_string()))?;
    if f.encrypted() {
        return Err(not("encrypted".into()));
    }
    if f.size() > limit {
        return Err(not(format!(
            "declares {} bytes, more than its tensors need ({limit})",
            f.size()
        )));
    }
    if f.compression() == zip::CompressionMethod::Stored {
        let start = usize::try_from(f.data_start()).ok();
        let len = usize::try_from(f.compressed_size()).ok();
        let range = start
            .zip(len)
            .and_then(|(s, n)| Some(s..s.checked_add(n)?))
            .filter(|r| r.end <= file.len());
        let Some(range) = range else {
            return Err(Error::Truncated {
                source_name: source.to_string(),
                detail: format!(
                    "archive entry `{name}` needs {} bytes from offset {}, the file has {}",
                    f.compressed_size(),
                    f.data_start(),
                    file.len()
                ),
            });
        };
        if f.size() != f.compressed_size() {
            return Err(not("stored entry whose sizes differ".into()));
        }
        let bytes = &file[range];
        if crc32fast::hash(bytes) != f.crc32() {
            return Err(not("damaged (its CRC does not match)".into()));
        }
        return Ok(Entry {
            bytes: Cow::Borrowed(bytes),
            charged: 0,
        });
    }
    // Compressed: never inflate more than the entry declares, nor than `limit`.
    let want = f.size().min(limit);
    meter.inflate(source, &format!("archive entry `{name}`"), want)?;
    meter.charge(source, &format!("archive entry `{name}`"), want)?;
    let mut out = Vec::with_capacity(want as usize);
    let read = (&mut f).take(want).read_to_end(&mut out);
    if let Err(e) = read {
        meter.release(want);
        let detail = format!("archive entry `{name}`: {e}");
        let source_name = source.to_string();
        return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
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
        });
    }
    Ok(Entry {
        bytes: Cow::Owned(out),
        charged: want,
    })
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
/// Integer and bool tensors are skipped (they are never weights); f64 becomes f32. Within the
/// default [`super::LoadBudget`].
pub fn read_torch_pickle(bytes: &[u8], source: &str) -> Result<TensorStore> {
    read_torch_pickle_metered(bytes, source, &mut LoadMeter::default())
}

/// [`read_torch_pickle`] charging everything it allocates to `meter` (shared by every file of
/// one model load).
pub fn read_torch_pickle_metered(
    bytes: &[u8],
    source: &str,
    meter: &mut LoadMeter,
) -> Result<TensorStore> {
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
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| zip_error(source, e))?;
    // torch writes one entry per storage plus a handful of small ones.
    let max_entries = meter.budget().max_tensors.saturating_add(16);
    if zip.len() > max_entries {
        return Err(Error::OverBudget {
            source_name: source.to_string(),
            detail: format!(
                "the archive has {} entries; a model load may hold {} tensors",
                zip.len(),
                meter.budget().max_tensors
            ),
        });
    }
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
        let bo = read_entry(&mut zip, bytes, &order, 64, meter, source)?;
        meter.release(bo.charged);
        if bo.bytes.trim_ascii() != b"little" {
            return Err(Error::NotWeights {
                source_name: source.to_string(),
                detail: "big-endian torch checkpoint".into(),
            });
        }
    }
    let pkl = read_entry(&mut zip, bytes, &pkl_name, MAX_PICKLE_BYTES, meter, source)?;
    let unpickled = unpickle(&pkl.bytes, source, meter);
    meter.release(pkl.charged);
    drop(pkl);
    let (obj, obj_bytes) = unpickled?;
    let mut refs = Vec::new();
    let collected = collect(&mut Vec::new(), &obj, &mut refs, source);
    drop(obj);
    meter.release(obj_bytes);
    collected?;

    // One storage at a time, all its views, then the next (a storage read from a compressed
    // entry is freed before the next one is inflated).
    refs.sort_by(|a, b| a.storage_key.cmp(&b.storage_key));
    let mut store = TensorStore::new(source);
    let mut i = 0;
    while i < refs.len() {
        let key = refs[i].storage_key.clone();
        let group_end = i + refs[i..]
            .iter()
            .take_while(|t| t.storage_key == key)
            .count();
        let mut group: Vec<(&TensorRef, Elem)> = Vec::new();
        for t in &refs[i..group_end] {
            let elem =
                Elem::from_class(&t.storage_class).ok_or_else(|| Error::UnsupportedDtype {
                    name: t.name.clone(),
                    source_name: source.to_string(),
                    dtype: t.storage_class.clone(),
                })?;
            if !matches!(elem, Elem::Skip(_)) {
                group.push((t, elem));
            }
        }
        i = group_end;
        if group.is_empty() {
            continue;
        }
        // The storage must hold what every view declares (checked per view below); never read
        // more than the largest declaration, nor more than the budget has room for.
        let mut need = 0u64;
        for (t, elem) in &group {
            let n = (t.storage_numel as u64)
                .checked_mul(elem.size() as u64)
                .filter(|&n| n <= meter.budget().max_bytes)
                .ok_or_else(|| Error::OverBudget {
                    source_name: source.to_string(),
                    detail: format!(
                        "tensor `{}`: its storage of {} elements is larger than a model load may hold",
                        t.name, t.storage_numel
                    ),
                })?;
            need = need.max(n);
        }
        let entry = format!("{root}data/{key}");
        let data = read_entry(&mut zip, bytes, &entry, need, meter, source)?;
        let mut built = Ok(());
        for (t, elem) in group {
            match build_tensor(t, elem, &data.bytes, meter, source) {
                Ok(x) => store.insert(t.name.clone(), Stored::Float(x)),
                Err(e) => {
                    built = Err(e);
                    break;
                }
            }
        }
        meter.release(data.charged);
        built?;
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

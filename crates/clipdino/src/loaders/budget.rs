//! One memory budget for loading one model, all of its files together.
//!
//! Weight files come from anywhere a share link points, so every size read from a file is
//! untrusted: a 1 kB file can declare a 400 GB tensor, a thousand views of one storage, or a zip
//! entry that inflates a million-fold. Every loader therefore asks a [`LoadMeter`] *before* it
//! allocates: tensors that are kept are charged for good, scratch buffers (inflated zip entries,
//! the pickle's object tree, strided gathers) are charged while they live and released after.
//! Decompression work is bounded separately, cumulatively, so a file cannot make the loader
//! inflate the same entry over and over.
//!
//! [`tensor_bytes`] is the one checked computation of a tensor's size from its file-declared
//! shape: every product in `u64`, refusing shapes whose strides would overflow even when a zero
//! dimension makes the element count 0 (candle computes those strides), so nothing wraps on
//! 32-bit `wasm32`.

use crate::error::{Error, Result};

/// Longest tensor name accepted in any weight file (upstream names are under 60 bytes; GGUF
/// allows 64).
pub const MAX_TENSOR_NAME_BYTES: usize = 1024;

/// Limits on what loading one model may allocate (all its files together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadBudget {
    /// Bytes the loader may hold at once: tensors it keeps plus its scratch buffers. Also the
    /// most bytes it inflates from compressed zip entries over the whole load.
    pub max_bytes: u64,
    /// Tensors the loader may create (every file together).
    pub max_tensors: usize,
}

impl LoadBudget {
    /// The default: the largest legitimate load is the upstream ViT-B/16 in f32
    /// (`open_clip_model.safetensors` 598.6 MB + `last.pt` 7.1 MB, 306 tensors). 1 GB holds it with
    /// 65% to spare and is the app's whole memory budget, so no file can make a load alone exceed
    /// it; 4096 tensors is 13× the count of that model.
    pub const DEFAULT: LoadBudget = LoadBudget {
        max_bytes: 1_000_000_000,
        max_tensors: 4096,
    };

    /// The default with another byte limit.
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            ..Self::DEFAULT
        }
    }
}

impl Default for LoadBudget {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `1234567` → `1.2 MB` (decimal units), for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The running account of one load against a [`LoadBudget`].
#[derive(Debug, Clone)]
pub struct LoadMeter {
    budget: LoadBudget,
    /// Bytes held now (kept tensors + live scratch).
    live: u64,
    /// Highest `live` seen.
    peak: u64,
    tensors: usize,
    inflated: u64,
}

impl Default for LoadMeter {
    fn default() -> Self {
        Self::new(LoadBudget::DEFAULT)
    }
}

impl LoadMeter {
    pub fn new(budget: LoadBudget) -> Self {
        Self {
            budget,
            live: 0,
            peak: 0,
            tensors: 0,
            inflated: 0,
        }
    }

    pub fn budget(&self) -> LoadBudget {
        self.budget
    }

    /// Bytes held now.
    pub fn live_bytes(&self) -> u64 {
        self.live
    }

    /// The most bytes held at once so far.
    pub fn peak_bytes(&self) -> u64 {
        self.peak
    }

    pub fn tensors(&self) -> usize {
        self.tensors
    }

    fn over(&self, source: &str, detail: String) -> Error {
        Error::OverBudget {
            source_name: source.to_string(),
            detail,
        }
    }

    /// Account for `bytes` about to be allocated for `what`; an error (nothing allocated) when
    /// that would exceed the budget.
    pub fn charge(&mut self, source: &str, what: &str, bytes: u64) -> Result<()> {
        let total = self.live.saturating_add(bytes);
        if total > self.budget.max_bytes {
            return Err(self.over(
                source,
                format!(
                    "{what} needs {}, but only {} of the load's budget of {} is left",
                    human_bytes(bytes),
                    human_bytes(self.remaining()),
                    human_bytes(self.budget.max_bytes)
                ),
            ));
        }
        self.live = total;
        self.peak = self.peak.max(total);
        Ok(())
    }

    /// Give back scratch bytes charged earlier.
    pub fn release(&mut self, bytes: u64) {
        self.live = self.live.saturating_sub(bytes);
    }

    /// Account for one more tensor.
    pub fn count_tensor(&mut self, source: &str, name: &str) -> Result<()> {
        if self.tensors >= self.budget.max_tensors {
            return Err(self.over(
                source,
                format!(
                    "tensor `{name}` is one more than the {} tensors a model load may hold",
                    self.budget.max_tensors
                ),
            ));
        }
        self.tensors += 1;
        Ok(())
    }

    /// Account for one kept tensor of `bytes` (count and bytes).
    pub fn keep_tensor(&mut self, source: &str, name: &str, bytes: u64) -> Result<()> {
        self.count_tensor(source, name)?;
        self.charge(source, &format!("tensor `{name}`"), bytes)
    }

    /// Account for `bytes` about to be inflated from a compressed entry (cumulative over the
    /// load, never released), returning how many bytes may still be inflated.
    pub fn inflate(&mut self, source: &str, what: &str, bytes: u64) -> Result<()> {
        let total = self.inflated.saturating_add(bytes);
        if total > self.budget.max_bytes {
            return Err(self.over(
                source,
                format!(
                    "{what} inflates to {}; compressed entries may inflate to {} per load in all",
                    human_bytes(bytes),
                    human_bytes(self.budget.max_bytes)
                ),
            ));
        }
        self.inflated = total;
        Ok(())
    }

    /// Bytes that may still be charged.
    pub fn remaining(&self) -> u64 {
        self.budget.max_bytes.saturating_sub(self.live)
    }
}

/// The element count of a tensor of the file-declared shape `dims`, every product checked in
/// `u64`. Refuses (naming `name` in `source`) shapes whose contiguous strides overflow even
/// when a zero dimension makes the tensor empty (candle computes those strides too, item 12 of
/// the hostile-file review), and counts beyond this target's address space (32-bit on wasm32).
pub fn checked_numel(source: &str, name: &str, dims: &[usize]) -> Result<u64> {
    let bad = |why: &str| Error::NotWeights {
        source_name: source.to_string(),
        detail: format!("tensor `{name}` has shape {dims:?}: {why}"),
    };
    // The product of the non-zero dims bounds every stride candle derives from the shape.
    let mut strides: u64 = 1;
    let mut empty = false;
    for &d in dims {
        if d == 0 {
            empty = true;
            continue;
        }
        strides = strides
            .checked_mul(d as u64)
            .ok_or_else(|| bad("its size overflows"))?;
    }
    // Allocations and strides are bounded by `isize::MAX` bytes in Rust.
    if strides > isize::MAX as u64 {
        return Err(bad("larger than this machine can address"));
    }
    Ok(if empty { 0 } else { strides })
}

/// Bytes of a tensor of shape `dims` with `elem_bytes`-byte elements ([`checked_numel`] first).
pub fn tensor_bytes(source: &str, name: &str, dims: &[usize], elem_bytes: usize) -> Result<usize> {
    let numel = checked_numel(source, name, dims)?;
    numel
        .checked_mul(elem_bytes as u64)
        .filter(|&b| b <= isize::MAX as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| Error::NotWeights {
            source_name: source.to_string(),
            detail: format!(
                "tensor `{name}` has shape {dims:?}: larger than this machine can address"
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_and_releases_within_the_budget() {
        let mut m = LoadMeter::new(LoadBudget {
            max_bytes: 100,
            max_tensors: 2,
        });
        m.charge("f", "scratch", 60).unwrap();
        let e = m.charge("f", "more scratch", 41).unwrap_err().to_string();
        assert!(
            e.contains("f ") && e.contains("more scratch") && e.contains("100 B"),
            "{e}"
        );
        m.release(60);
        m.keep_tensor("f", "a", 100).unwrap();
        assert_eq!((m.live_bytes(), m.peak_bytes(), m.tensors()), (100, 100, 1));
        m.release(1000);
        m.keep_tensor("f", "b", 0).unwrap();
        let e = m.keep_tensor("f", "c", 0).unwrap_err().to_string();
        assert!(e.contains("`c`") && e.contains("2 tensors"), "{e}");
        m.inflate("f", "entry", 100).unwrap();
        assert!(
            m.inflate("f", "entry", 1).is_err(),
            "inflation is cumulative"
        );
    }

    #[test]
    fn tensor_sizes_are_checked() {
        assert_eq!(tensor_bytes("f", "t", &[2, 3], 4).unwrap(), 24);
        assert_eq!(tensor_bytes("f", "t", &[], 2).unwrap(), 2);
        assert_eq!(checked_numel("f", "t", &[4, 0, 5]).unwrap(), 0);
        // Item 12: empty, but with strides that overflow.
        let big = usize::MAX / 4 + 1;
        for dims in [vec![0, big, big], vec![big, 0, 4], vec![usize::MAX, 0]] {
            let e = tensor_bytes("f.bin", "w", &dims, 4)
                .unwrap_err()
                .to_string();
            assert!(e.contains("f.bin") && e.contains("`w`"), "{e}");
        }
        // Empty with sane dims is fine.
        assert_eq!(tensor_bytes("f", "t", &[0, 768], 4).unwrap(), 0);
        assert!(tensor_bytes("f", "t", &[big, 2], 4).is_err());
    }
}

//! Integer matrix multiply for the linear layers of the towers ([`crate::ComputePath::Int`]).
//!
//! `y = x · Wᵀ + b` with `x [m, k]` f32 activations and `W [n, k]` (torch `nn.Linear` layout):
//! * `W` is quantized once, at load, per output channel, symmetric, to `±W_MAX` (10-bit signed);
//! * each row of `x` is quantized at run time, symmetric, to `±a_max` (13-bit signed for the
//!   shapes of ViT-B/16, fewer bits only for very long rows, see [`PackedLinear::a_max`]);
//! * the products are summed **exactly** in integers, then `y[i, j] = sx[i] · sw[j] · Σ + b[j]`.
//!
//! Both operands are held as i16 so that wasm's `i32x4.dot_i16x8_s` (8 multiply-adds per
//! instruction, `pmaddwd` on x86) does the work, in a 4 × 2 register tile: 8 i32x4 accumulators
//! and 3 operand vectors fit in the 16 SIMD registers the browser's JIT gives wasm code. With
//! 128-bit SIMD and no fused multiply-add in wasm this runs ≈ 2× faster than candle's f32 gemm
//! (BENCHMARKS.md). The extra bits over int8 (8-bit both sides, what onnxruntime's dynamic
//! quantization does) cost nothing, because the i16 lanes are there anyway, and cut the error
//! by an order of magnitude or more (unit test below: 0.9 % vs 22 % of the output RMS with an
//! outlier channel; tiny parity model: dense-feature cosine to upstream ≥ 0.99998).
//! The 10/13-bit split was chosen by measurement on the parity model: 9/14 bits gave cosine
//! 0.99994 and 98.5 % label agreement, 10/13 bits 0.99998 and 99.9 %; real CLIP activations
//! have outlier channels, so the activations keep the larger share.
//!
//! **Wide channels.** Trained CLIP towers have outlier activations: LayerNorm gains 5-10× the
//! others on a few channels, and "massive activations" (a few tokens carrying values 100-1000×
//! the median in one or two channels). With one scale per row, such a value leaves the rest of
//! its row only a few of the 13 bits. So each row's [`WIDE_CHANNELS`] largest values (by
//! magnitude; ties to the lower channel) are taken out of the integer product and multiplied in
//! f32 with the same 10-bit weights; the row's scale is set by the remaining values. This costs
//! `WIDE_CHANNELS / k` of the integer work in f32 (≈ 1 % at k = 768) and needs no calibration:
//! whatever channels a row's outliers sit in, they are found per row at run time.
//! `y = (Σ_int · s_x·s_w + b) + Σ_wide x·w` with the wide terms added in ascending channel order,
//! the same order in the kernel and in the reference, so both give the same f32 bits.
//!
//! Exactness: one i32 lane accumulates `2·⌈k/8⌉` products of magnitude ≤ `a_max · W_MAX`;
//! `a_max` is chosen so that this cannot overflow, and the four lanes are added in i64. Any
//! summation order therefore gives the same integers, so the wasm SIMD kernel and the portable
//! one produce bit-identical outputs (checked by the wasm tests).
//!
//! Operands are packed so that a tile reads contiguous memory: `[rows/R][k/8][R][8]`, zero-padded
//! in both `rows` and `k`.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::error::{Error, Result};
use crate::par;

/// Rows of `x` per register tile.
const MR: usize = 4;
/// Rows of `W` (output channels) per register tile.
const NR: usize = 2;
/// Weight levels: 10-bit signed. `A_MAX · W_MAX · k/4` must stay below 2³¹ (see `a_max`).
pub const W_MAX: i32 = 511;
/// Activation levels when `k` allows it: 13-bit signed.
pub const A_MAX: i32 = 4095;
/// Values per activation row computed in f32 beside the integer product (see the module doc).
pub const WIDE_CHANNELS: usize = 8;

/// A linear layer's weights quantized per output channel and packed for the kernel, with its
/// bias (kept f32, added in the epilogue).
#[derive(Debug, Clone)]
pub struct PackedLinear {
    n: usize,
    k: usize,
    /// `k` in blocks of 8 (zero-padded).
    kb: usize,
    a_max: i32,
    /// `[n.div_ceil(NR)][kb][NR][8]`
    data: Vec<i16>,
    /// Per output channel: `max|W[j, :]| / W_MAX`.
    scale: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// Values per activation row kept in f32.
    wide: usize,
}

/// One value of an activation row kept in f32: `(channel, row, value)`.
type Wide = (u32, u32, f32);

/// Symmetric per-row scale for `±levels`: `max|v| / levels` over the row's values except the
/// (ascending) indices in `skip`, or 1 for an all-zero or non-finite row.
fn row_scale(row: &[f32], skip: &[usize], levels: i32) -> f32 {
    let amax = row
        .iter()
        .enumerate()
        .filter(|(j, _)| skip.binary_search(j).is_err())
        .fold(0f32, |m, (_, v)| m.max(v.abs()));
    if amax > 0.0 && amax.is_finite() {
        amax / levels as f32
    } else {
        1.0
    }
}

/// Quantize one row with scale `s` into slot `lane` of tile group `g` of a packed
/// `[..][kb][r][8]` buffer.
fn pack_row(row: &[f32], data: &mut [i16], g: usize, lane: usize, kb: usize, r: usize, s: f32) {
    let inv = 1.0 / s;
    for (b, chunk) in row.chunks(8).enumerate() {
        let dst = &mut data[((g * kb + b) * r + lane) * 8..][..chunk.len()];
        for (d, v) in dst.iter_mut().zip(chunk) {
            // `as` saturates (and maps NaN to 0); |v·inv| ≤ levels for finite rows.
            *d = (v * inv).round_ties_even() as i16;
        }
    }
}

/// Indices of the `wide` largest magnitudes of `row` (ties: the lower index), ascending.
fn widest(row: &[f32], wide: usize) -> Vec<usize> {
    if wide == 0 {
        return Vec::new();
    }
    // (magnitude, index), largest first; strict `>` keeps the earlier index on ties
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(wide + 1);
    for (j, v) in row.iter().enumerate() {
        let a = v.abs();
        if top.len() == wide && a.partial_cmp(&top[wide - 1].0) != Some(std::cmp::Ordering::Greater)
        {
            continue;
        }
        let pos = top.iter().position(|&(b, _)| a > b).unwrap_or(top.len());
        top.insert(pos, (a, j));
        top.truncate(wide);
    }
    let mut idx: Vec<usize> = top.into_iter().map(|(_, j)| j).collect();
    idx.sort_unstable();
    idx
}

/// Quantize `rows × k` row-major values symmetrically per row to `±levels`, packed
/// `[rows.div_ceil(r)][kb][r][8]`, each row's `wide` largest values set aside in f32.
/// Returns the packed values, the per-row scales and the wide values. Rows are independent:
/// they are quantized in parallel ([`crate::par`]), with the same bits as one after the other.
fn quantize_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    r: usize,
    levels: i32,
    wide: usize,
) -> (Vec<i16>, Vec<f32>, Vec<Wide>) {
    let kb = k.div_ceil(8);
    let mut data = vec![0i16; rows.div_ceil(r) * kb * r * 8];
    // Each row's wide channels (ascending; they do not set the row's scale) and its scale.
    let per_row: Vec<(Vec<usize>, f32)> = par::map(rows, |i| {
        let row = &x[i * k..][..k];
        let idx = widest(row, wide);
        let s = row_scale(row, &idx, levels);
        (idx, s)
    });
    let groups = rows.div_ceil(r);
    let per_task = groups.div_ceil((4 * par::threads()).min(rows * k / (1 << 16)).max(1));
    par::for_each_chunk(&mut data, per_task * kb * r * 8, |t, chunk| {
        let mut rest = vec![0f32; if wide > 0 { k } else { 0 }];
        for gi in 0..chunk.len() / (kb * r * 8) {
            let g = t * per_task + gi;
            for lane in 0..r.min(rows.saturating_sub(g * r)) {
                let i = g * r + lane;
                let (idx, s) = &per_row[i];
                let row = &x[i * k..][..k];
                let row = if idx.is_empty() {
                    row
                } else {
                    // the row without its wide values (they are added in f32)
                    rest.copy_from_slice(row);
                    for &j in idx {
                        rest[j] = 0.0;
                    }
                    &rest[..]
                };
                pack_row(row, chunk, gi, lane, kb, r, *s);
            }
        }
    });
    let scale = per_row.iter().map(|(_, s)| *s).collect();
    let mut wides = Vec::with_capacity(rows * wide.min(k));
    for (i, (idx, _)) in per_row.iter().enumerate() {
        let row = &x[i * k..][..k];
        wides.extend(idx.iter().map(|&j| (j as u32, i as u32, row[j])));
    }
    (data, scale, wides)
}

impl PackedLinear {
    /// `w`: `[n, k]` row-major; `bias`: `[n]`. `name` (the weight tensor's) is for errors.
    pub fn new(name: &str, w: &[f32], n: usize, k: usize, bias: Option<Vec<f32>>) -> Result<Self> {
        if w.len() != n * k {
            let detail = format!("{} values for an integer linear layer [{n}, {k}]", w.len());
            return Err(Error::invalid(name, detail));
        }
        Self::build(name, n, k, bias, |pack| {
            for (i, row) in w.chunks_exact(k.max(1)).enumerate() {
                pack(i, row);
            }
            Ok(())
        })
    }

    /// Pack `[n, k]` weights delivered one row at a time: `visit` must call `pack(i, row_i)`
    /// once for every row `i < n` (in any order). Only the packed weights are allocated.
    pub fn build(
        name: &str,
        n: usize,
        k: usize,
        bias: Option<Vec<f32>>,
        visit: impl FnOnce(&mut dyn FnMut(usize, &[f32])) -> Result<()>,
    ) -> Result<Self> {
        if n == 0 || k == 0 {
            let detail = format!("an integer linear layer [{n}, {k}] is empty");
            return Err(Error::invalid(name, detail));
        }
        if let Some(b) = &bias {
            if b.len() != n {
                return Err(Error::invalid(
                    name,
                    format!("bias of {} for {n} outputs", b.len()),
                ));
            }
        }
        let kb = k.div_ceil(8);
        // One i32 lane sums 2·kb products of magnitude ≤ a_max·W_MAX.
        let a_max = (i32::MAX as i64 / (2 * kb as i64 * W_MAX as i64)).min(A_MAX as i64) as i32;
        if a_max < 127 {
            let detail = format!("rows of {k} are too long for exact i32 sums");
            return Err(Error::invalid(name, detail));
        }
        let mut data = vec![0i16; n.div_ceil(NR) * kb * NR * 8];
        let mut scale = vec![0f32; n];
        let mut seen = vec![false; n];
        let mut bad = None;
        visit(&mut |i, row| {
            if i >= n || row.len() != k {
                bad.get_or_insert(format!("row {i} of {} values for [{n}, {k}]", row.len()));
                return;
            }
            scale[i] = row_scale(row, &[], W_MAX);
            pack_row(row, &mut data, i / NR, i % NR, kb, NR, scale[i]);
            seen[i] = true;
        })?;
        if let Some(detail) = bad {
            return Err(Error::invalid(name, detail));
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(Error::invalid(
                name,
                format!("row {i} of {n} was never given"),
            ));
        }
        Ok(Self {
            n,
            k,
            kb,
            a_max,
            data,
            scale,
            bias,
            wide: 0,
        })
    }

    /// Keep each activation row's `wide` largest values in f32 (see the module doc).
    pub fn with_wide_channels(mut self, wide: usize) -> Self {
        self.wide = wide.min(self.k);
        self
    }

    /// Activation values per row kept in f32.
    pub fn wide_channels(&self) -> usize {
        self.wide
    }

    /// The stored (10-bit) weight `W[j, t]` as f32.
    fn weight(&self, j: usize, t: usize) -> f32 {
        let (g, lane) = (j / NR, j % NR);
        self.data[((g * self.kb + t / 8) * NR + lane) * 8 + t % 8] as f32 * self.scale[j]
    }

    /// The stored weights of the channels the wide values sit in, `W[:, c]` for each distinct
    /// channel `c` of `wides`: the channels (ascending) and their columns, gathered in parallel.
    fn wide_columns(&self, wides: &[Wide]) -> (Vec<u32>, Vec<Vec<f32>>) {
        let mut channels: Vec<u32> = wides.iter().map(|w| w.0).collect();
        channels.sort_unstable();
        channels.dedup();
        let cols = par::map(channels.len(), |i| {
            (0..self.n)
                .map(|j| self.weight(j, channels[i] as usize))
                .collect()
        });
        (channels, cols)
    }

    /// Adds the wide values' products to `y`, the rows `r0..` of the output (`[rows, n]`):
    /// `wides` are those rows' wide values, in row order and each row's in ascending channel
    /// order, so every output gets its terms in ascending channel order however the rows are
    /// split between tasks (the same bits as [`Self::matmul_reference`]).
    fn add_wide(
        &self,
        y: &mut [f32],
        r0: usize,
        wides: &[Wide],
        columns: &(Vec<u32>, Vec<Vec<f32>>),
    ) {
        let n = self.n;
        let (channels, cols) = columns;
        for &(c, r, v) in wides {
            let Ok(i) = channels.binary_search(&c) else {
                continue; // unreachable: `columns` holds every channel of `wides`
            };
            for (yv, w) in y[(r as usize - r0) * n..][..n].iter_mut().zip(&cols[i]) {
                *yv += v * w;
            }
        }
    }

    /// Output channels.
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// Activation levels used for this layer (`±a_max`).
    pub fn a_max(&self) -> i32 {
        self.a_max
    }

    /// Bytes held (packed weights, scales, bias).
    pub fn storage_bytes(&self) -> usize {
        2 * self.data.len() + 4 * (self.scale.len() + self.bias.as_ref().map_or(0, Vec::len))
    }

    /// `x [m, k]` row-major → `[m, n]` row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(
            x.len(),
            m * self.k,
            "integer linear layer: input is not [m, k]"
        );
        let (n, kb) = (self.n, self.kb);
        let (xa, xs, wides) = quantize_rows(x, m, self.k, MR, self.a_max, self.wide);
        let columns = self.wide_columns(&wides);
        let mut y = vec![0f32; m * n];
        // Row tiles are split over the threads (the sums are exact, so any split gives the same
        // bits); each task streams its rows past panels of W that stay in L2.
        let panel = ((64 * 1024) / (kb * 16)).max(1) * NR;
        let groups = m.div_ceil(MR);
        let tasks = (4 * par::threads())
            .min(groups)
            .min(m * n * self.k / (1 << 20))
            .max(1);
        let per_task = groups.div_ceil(tasks);
        par::for_each_chunk(&mut y, per_task * MR * n, |t, y| {
            let g0 = t * per_task;
            let rows = y.len() / n;
            let r0 = g0 * MR;
            for n0 in (0..n).step_by(panel) {
                let n1 = (n0 + panel).min(n);
                for mg in g0..g0 + rows.div_ceil(MR) {
                    let a = &xa[mg * kb * MR * 8..][..kb * MR * 8];
                    for ng in n0 / NR..n1.div_ceil(NR) {
                        let b = &self.data[ng * kb * NR * 8..][..kb * NR * 8];
                        let tile = kernel::tile(a, b, kb);
                        for (i, row) in tile.iter().enumerate() {
                            let r = mg * MR + i;
                            if r >= m {
                                break;
                            }
                            let out = &mut y[(r - g0 * MR) * n..][..n];
                            for (j, &v) in row.iter().enumerate() {
                                let c = ng * NR + j;
                                if c < n {
                                    let bias = self.bias.as_ref().map_or(0.0, |b| b[c]);
                                    out[c] = v as f32 * (xs[r] * self.scale[c]) + bias;
                                }
                            }
                        }
                    }
                }
            }
            // This task's rows' wide values (`wides` is in row order), in parallel with the
            // other tasks': serial, they were ≈ 20 % of a layer on one thread.
            let lo = wides.partition_point(|w| (w.1 as usize) < r0);
            let hi = wides.partition_point(|w| (w.1 as usize) < r0 + rows);
            self.add_wide(y, r0, &wides[lo..hi], &columns);
        });
        y
    }

    /// The same product computed one output at a time without SIMD, for tests of the kernel.
    #[doc(hidden)]
    pub fn matmul_reference(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, kb) = (self.n, self.kb);
        let (xa, xs, wides) = quantize_rows(x, m, self.k, 1, self.a_max, self.wide);
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            let mut row_wide: Vec<(u32, f32)> = wides
                .iter()
                .filter(|w| w.1 as usize == r)
                .map(|w| (w.0, w.2))
                .collect();
            row_wide.sort_unstable_by_key(|w| w.0);
            for c in 0..n {
                let (g, lane) = (c / NR, c % NR);
                let mut acc = 0i64;
                for b in 0..kb {
                    for t in 0..8 {
                        let xv = xa[(r * kb + b) * 8 + t] as i64;
                        let wv = self.data[((g * kb + b) * NR + lane) * 8 + t] as i64;
                        acc += xv * wv;
                    }
                }
                let bias = self.bias.as_ref().map_or(0.0, |b| b[c]);
                let mut v = acc as f32 * (xs[r] * self.scale[c]) + bias;
                for &(t, xv) in &row_wide {
                    v += xv * self.weight(c, t as usize);
                }
                y[r * n + c] = v;
            }
        }
        y
    }

    /// Apply to a contiguous f32 tensor `[..., k]` → `[..., n]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        x.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for PackedLinear {
    fn name(&self) -> &'static str {
        "int-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("int-linear needs an f32 input")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("int-linear needs a contiguous input")
        };
        let dims = layout.dims();
        let (&k, lead) = dims.split_last().unwrap_or((&0, &[]));
        if k != self.k {
            candle_core::bail!("int-linear: input {dims:?} does not end in {}", self.k)
        }
        let m: usize = lead.iter().product();
        let y = self.matmul(&all[start..end], m);
        let mut out = lead.to_vec();
        out.push(self.n);
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

/// Sum of the four i32 lanes of each accumulator, exact.
#[inline(always)]
fn hsum(l: [i32; 4]) -> i64 {
    l.iter().map(|&v| v as i64).sum()
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod kernel {
    use core::arch::wasm32::*;

    use super::{hsum, MR, NR};

    /// Eight i16 as one vector from a bounds-checked slice (safe code: the workspace denies
    /// `unsafe`); the form whose speed the kernel micro-benchmark measured.
    #[inline(always)]
    fn load(s: &[i16]) -> v128 {
        i16x8(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])
    }

    /// `a`: `[kb][MR][8]`, `b`: `[kb][NR][8]` → the MR × NR exact dot products.
    #[inline(always)]
    pub fn tile(a: &[i16], b: &[i16], kb: usize) -> [[i64; NR]; MR] {
        let mut acc = [[i32x4_splat(0); NR]; MR];
        for (ac, bc) in a.chunks_exact(MR * 8).zip(b.chunks_exact(NR * 8)).take(kb) {
            let (bv0, bv1) = (load(&bc[0..8]), load(&bc[8..16]));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = load(&ac[i * 8..i * 8 + 8]);
                row[0] = i32x4_add(row[0], i32x4_dot_i16x8(av, bv0));
                row[1] = i32x4_add(row[1], i32x4_dot_i16x8(av, bv1));
            }
        }
        let mut out = [[0i64; NR]; MR];
        for i in 0..MR {
            for j in 0..NR {
                let v = acc[i][j];
                out[i][j] = hsum([
                    i32x4_extract_lane::<0>(v),
                    i32x4_extract_lane::<1>(v),
                    i32x4_extract_lane::<2>(v),
                    i32x4_extract_lane::<3>(v),
                ]);
            }
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use core::arch::x86_64::*;

    use super::{hsum, MR, NR};

    /// The wasm tile with SSE2's `pmaddwd` (the instruction `i32x4.dot_i16x8_s` becomes on
    /// x86): the same pairs summed into the same lanes, so the same integers. LLVM does not
    /// vectorise the portable tile below into `pmaddwd` (measured: the native Int tower took
    /// 12.1 s at 224×336 with it, 1.7 s with this one; f32: 1.1 s), hence this version.
    #[inline(always)]
    #[allow(unsafe_code)]
    pub fn tile(a: &[i16], b: &[i16], kb: usize) -> [[i64; NR]; MR] {
        // SAFETY: the only requirement of `tile_sse2` is the `sse2` target feature, which every
        // x86_64 CPU has (it is part of the x86_64 baseline that rustc compiles for). No pointer
        // is dereferenced: operands are read from bounds-checked slices.
        unsafe { tile_sse2(a, b, kb) }
    }

    /// Eight i16 as one vector (compiled to one unaligned load, like the wasm version).
    #[inline]
    #[target_feature(enable = "sse2")]
    fn load(s: &[i16]) -> __m128i {
        _mm_set_epi16(s[7], s[6], s[5], s[4], s[3], s[2], s[1], s[0])
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn lanes(v: __m128i) -> [i32; 4] {
        [
            _mm_cvtsi128_si32(v),
            _mm_cvtsi128_si32(_mm_shuffle_epi32::<0b01>(v)),
            _mm_cvtsi128_si32(_mm_shuffle_epi32::<0b10>(v)),
            _mm_cvtsi128_si32(_mm_shuffle_epi32::<0b11>(v)),
        ]
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn tile_sse2(a: &[i16], b: &[i16], kb: usize) -> [[i64; NR]; MR] {
        let mut acc = [[_mm_setzero_si128(); NR]; MR];
        for (ac, bc) in a.chunks_exact(MR * 8).zip(b.chunks_exact(NR * 8)).take(kb) {
            let (bv0, bv1) = (load(&bc[0..8]), load(&bc[8..16]));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = load(&ac[i * 8..i * 8 + 8]);
                row[0] = _mm_add_epi32(row[0], _mm_madd_epi16(av, bv0));
                row[1] = _mm_add_epi32(row[1], _mm_madd_epi16(av, bv1));
            }
        }
        acc.map(|row| row.map(|v| hsum(lanes(v))))
    }
}

/// Portable tile: per 8-block the products are summed in i32 pairs-then-lanes exactly like
/// `i32x4.dot_i16x8_s`, so the integers are those of the SIMD tiles above. It is the kernel on
/// other targets, and the tests check the SIMD tile against it bit for bit.
#[cfg_attr(
    any(
        all(target_arch = "wasm32", target_feature = "simd128"),
        target_arch = "x86_64"
    ),
    allow(dead_code)
)]
mod portable {
    use super::{hsum, MR, NR};

    #[inline(always)]
    pub fn tile(a: &[i16], b: &[i16], kb: usize) -> [[i64; NR]; MR] {
        let mut acc = [[[0i32; 4]; NR]; MR];
        for (ac, bc) in a.chunks_exact(MR * 8).zip(b.chunks_exact(NR * 8)).take(kb) {
            for (i, row) in acc.iter_mut().enumerate() {
                let av = &ac[i * 8..][..8];
                for (j, lanes) in row.iter_mut().enumerate() {
                    let bv = &bc[j * 8..][..8];
                    for (l, lane) in lanes.iter_mut().enumerate() {
                        let p = av[2 * l] as i32 * bv[2 * l] as i32
                            + av[2 * l + 1] as i32 * bv[2 * l + 1] as i32;
                        *lane = lane.wrapping_add(p);
                    }
                }
            }
        }
        acc.map(|row| row.map(hsum))
    }
}

#[cfg(not(any(
    all(target_arch = "wasm32", target_feature = "simd128"),
    target_arch = "x86_64"
)))]
use portable as kernel;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn data(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut r = SplitMix64(seed);
        (0..len)
            .map(|_| (r.next_f64() as f32 * 2.0 - 1.0) * scale)
            .collect()
    }

    fn exact(x: &[f32], w: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let d: f64 = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum();
                y[i * n + j] = d as f32 + b[j];
            }
        }
        y
    }

    #[test]
    fn simd_tile_equals_the_portable_tile_at_full_scale() {
        // Operands at the extremes of their levels, where a lane would overflow first.
        let mut r = SplitMix64(12);
        let mut level = |m: i32| ((r.next_f64() * 2.0 - 1.0) * m as f64).round() as i16;
        let kb = 384; // k = 3072, the longest row of ViT-B/16
        let a: Vec<i16> = (0..kb * MR * 8).map(|_| level(A_MAX)).collect();
        let b: Vec<i16> = (0..kb * NR * 8).map(|_| level(W_MAX)).collect();
        assert_eq!(kernel::tile(&a, &b, kb), portable::tile(&a, &b, kb));
        let (a, b) = (
            vec![A_MAX as i16; kb * MR * 8],
            vec![-W_MAX as i16; kb * NR * 8],
        );
        let t = kernel::tile(&a, &b, kb);
        assert_eq!(t, portable::tile(&a, &b, kb));
        assert_eq!(t[0][0], -(A_MAX as i64 * W_MAX as i64 * 8 * kb as i64));
    }

    #[test]
    fn tiles_match_the_one_output_at_a_time_reference_bit_for_bit() {
        // Ragged m, n and k (not multiples of the tile or of 8) exercise every padding path.
        // With wide channels, rows of massive values on a few channels: the f32 side products
        // are added in the same order as the reference's.
        for wide in [0, 3, WIDE_CHANNELS] {
            for (m, n, k) in [(1, 1, 1), (7, 5, 45), (13, 9, 200), (33, 70, 768)] {
                let w = data(n * k, 1, 0.3);
                let mut x = data(m * k, 2, 4.0);
                for i in (0..m).step_by(3) {
                    x[i * k + (5 * i) % k] = 900.0;
                }
                let b = data(n, 3, 1.0);
                let p = PackedLinear::new("w", &w, n, k, Some(b))
                    .unwrap()
                    .with_wide_channels(wide);
                assert_eq!(
                    p.matmul(&x, m),
                    p.matmul_reference(&x, m),
                    "[{m}, {k}] x [{n}, {k}]ᵀ, {wide} wide"
                );
            }
        }
    }

    #[test]
    fn widest_takes_the_largest_magnitudes_and_the_lower_index_on_ties() {
        let row = [1.0, -5.0, 3.0, 5.0, -0.5, 4.0, f32::NAN];
        assert_eq!(widest(&row, 0), Vec::<usize>::new());
        assert_eq!(widest(&row, 1), vec![1]);
        assert_eq!(widest(&row, 3), vec![1, 3, 5]);
        assert_eq!(widest(&row, 4), vec![1, 2, 3, 5]);
        assert_eq!(widest(&row[..2], 5), vec![0, 1]);
    }

    #[test]
    fn wide_channels_keep_rows_with_massive_values_precise() {
        // The input of an MLP's c_proj on a high-norm token: two planted neurons fire with values
        // 400× the others and write only into two output channels (the massive residual
        // channels); every other output comes from the ordinary neurons. Plus three
        // LayerNorm-like gain outliers (8×) on every row.
        let (m, n, k) = (32, 64, 768);
        let mut w = data(n * k, 9, 0.05);
        for j in 0..n {
            for c in [42, 43] {
                w[j * k + c] = if j < 2 { 3.0 } else { 0.0 };
            }
        }
        let mut x = data(m * k, 10, 1.0);
        for i in 0..m {
            for c in [17, 300, 511] {
                x[i * k + c] *= 8.0;
            }
            if i % 4 == 0 {
                x[i * k + 42] = 400.0;
                x[i * k + 43] = -250.0;
            }
        }
        let b = vec![0.0; n];
        let want = exact(&x, &w, &b, m, n, k);
        // error of the ordinary outputs (2..n) relative to their RMS, worst row
        let err = |wide: usize| {
            let p = PackedLinear::new("w", &w, n, k, Some(b.clone()))
                .unwrap()
                .with_wide_channels(wide);
            let y = p.matmul(&x, m);
            (0..m)
                .map(|i| {
                    let (g, t) = (&y[i * n + 2..][..n - 2], &want[i * n + 2..][..n - 2]);
                    let e: f32 = g.iter().zip(t).map(|(a, b)| (a - b) * (a - b)).sum();
                    let r: f32 = t.iter().map(|v| v * v).sum();
                    (e / r).sqrt()
                })
                .fold(0f32, f32::max)
        };
        let (narrow, wide) = (err(0), err(WIDE_CHANNELS));
        // Measured: 5.1 % without wide channels, 0.13 % with them.
        println!(
            "ordinary outputs of massive rows: rel. error {narrow:.2e} narrow, {wide:.2e} wide"
        );
        assert!(wide < narrow / 5.0, "wide {wide} vs narrow {narrow}");
        assert!(wide < 2e-3, "wide {wide}");
    }

    #[test]
    fn build_checks_every_row_is_given_once_with_its_length() {
        let ok = PackedLinear::build("w", 2, 3, None, |pack| {
            pack(1, &[1.0, 2.0, 3.0]);
            pack(0, &[0.5, 0.0, -1.0]);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            ok.matmul(&[1.0, 1.0, 1.0], 1),
            PackedLinear::new("w", &[0.5, 0.0, -1.0, 1.0, 2.0, 3.0], 2, 3, None)
                .unwrap()
                .matmul(&[1.0, 1.0, 1.0], 1)
        );
        let missing = PackedLinear::build("layer.w", 2, 3, None, |pack| {
            pack(0, &[1.0, 2.0, 3.0]);
            Ok(())
        });
        assert!(missing.unwrap_err().to_string().contains("layer.w"));
        let short = PackedLinear::build("w", 2, 3, None, |pack| {
            pack(0, &[1.0, 2.0]);
            pack(1, &[1.0, 2.0, 3.0]);
            Ok(())
        });
        assert!(short.is_err());
    }

    /// `x·Wᵀ` with both sides rounded to `±levels` per row (symmetric), summed in f64.
    fn emulated(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, xl: f32, wl: f32) -> Vec<f32> {
        let q = |v: &[f32], l: f32| -> Vec<f32> {
            v.chunks(k)
                .flat_map(|r| {
                    let s = r.iter().fold(0f32, |a, v| a.max(v.abs())) / l;
                    r.iter()
                        .map(move |v| (v / s).round() * s)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        exact(&q(x, xl), &q(w, wl), &vec![0.0; n], m, n, k)
    }

    #[test]
    fn error_is_far_below_int8() {
        let (m, n, k) = (16, 48, 768);
        let w = data(n * k, 4, 0.05);
        let mut x = data(m * k, 5, 1.0);
        // An outlier channel 50× the others, as in CLIP's residual stream.
        for i in 0..m {
            x[i * k + 17] = 50.0;
        }
        let b = vec![0.0; n];
        let p = PackedLinear::new("w", &w, n, k, Some(b.clone())).unwrap();
        let want = exact(&x, &w, &b, m, n, k);
        let max_err = |y: &[f32]| {
            y.iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max)
        };
        let rms = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
        let ours = max_err(&p.matmul(&x, m));
        let int8 = max_err(&emulated(&x, &w, m, n, k, 127.0, 127.0));
        // Measured: ours 0.9 % of the output RMS, int8 on both sides 22 % (mostly the
        // activations: the outlier leaves 2–3 levels for the other channels).
        assert!(ours < 0.01 * rms, "max error {ours} vs rms {rms}");
        assert!(ours < int8 / 5.0, "ours {ours} vs int8 {int8}");
    }

    #[test]
    fn long_rows_get_fewer_activation_levels_never_overflow() {
        assert_eq!(
            PackedLinear::new("w", &vec![1.0; 3072], 1, 3072, None)
                .unwrap()
                .a_max(),
            A_MAX
        );
        let k = 16384;
        let p = PackedLinear::new("w", &vec![1.0; k], 1, k, None).unwrap();
        assert!(p.a_max() < A_MAX);
        // Worst case: every product at full scale and the same sign.
        let y = p.matmul(&vec![1.0; k], 1);
        assert!((y[0] - k as f32).abs() < 1e-3 * k as f32, "{}", y[0]);
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        assert!(PackedLinear::new("w", &[1.0; 6], 2, 4, None).is_err());
        assert!(PackedLinear::new("w", &[1.0; 8], 2, 4, Some(vec![0.0; 3])).is_err());
    }

    #[test]
    fn tensor_forward_keeps_leading_dims() {
        let (n, k) = (6, 10);
        let w = data(n * k, 6, 0.5);
        let p = PackedLinear::new("w", &w, n, k, None).unwrap();
        let x = Tensor::from_vec(
            data(2 * 3 * k, 7, 1.0),
            (2, 3, k),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let y = p.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 3, n]);
        let flat: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(
            flat,
            p.matmul(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), 6)
        );
        // Non-contiguous input (a transpose) is made contiguous first.
        let xt = Tensor::from_vec(data(k * 3, 8, 1.0), (k, 3), &candle_core::Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        assert_eq!(p.forward(&xt).unwrap().dims(), &[3, n]);
    }
}

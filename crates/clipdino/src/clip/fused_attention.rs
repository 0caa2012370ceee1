//! Attention for one head, `softmax(q·kᵀ + mask)·v`, without the `[n_query, T]` score matrix.
//!
//! The unfused path (two candle matmuls around [`fastmath::softmax_last_dim_`]) writes each
//! head's scores to a fresh, zeroed buffer (785² f32 = 2.4 MB at 448², through wasm's one global
//! allocator lock), reads and rewrites it in the softmax and reads it again in `probs·v`: five
//! passes over memory that does not fit in a core's L2. Here [`R`] query rows at a time are
//! taken through all three steps, their scores (`R·T` floats, 12.6 KB at 448²) staying in L1.
//!
//! Both products are register tiles of `R` rows × [`L`] lanes (8 f32 accumulators in two
//! 128-bit vectors per row; LLVM keeps them in registers and vectorises the lane loops, simd128
//! in wasm): q·kᵀ over `kᵀ` (`[head_dim][T]`, transposed once per head so a tile reads
//! contiguous keys), `probs·v` over `L` value columns per pass. Each output is summed in one
//! fixed order (ascending `head_dim` index for a score, ascending key for an output), separate
//! multiply and add, so the result does not depend on the platform, the thread count or the
//! tiling of other rows; it differs from candle's gemm only by summation order (≈ 1 ulp per
//! term). The softmax is [`fastmath`]'s, unchanged.

use super::fastmath;

/// Query rows per block.
const R: usize = 4;
/// f32 lanes per tile row (keys of a score tile, value columns of an output tile).
const L: usize = 8;

/// `softmax(q·kᵀ + mask)·v` for one head: `q [n_query, d]` (already scaled by `1/√d`),
/// `k, v [t, d]`, `mask [n_query, t]` (additive, 0 / −∞) → `[n_query, d]`, all row-major.
pub fn attend_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    n_query: usize,
    t: usize,
    d: usize,
) -> Vec<f32> {
    assert!(
        q.len() == n_query * d && k.len() == t * d && v.len() == t * d,
        "attend_head: q {} / k {} / v {} values for n_query {n_query}, t {t}, d {d}",
        q.len(),
        k.len(),
        v.len()
    );
    assert!(
        mask.is_none_or(|m| m.len() == n_query * t),
        "attend_head: mask size"
    );
    let mut out = vec![0f32; n_query * d];
    if n_query == 0 || d == 0 {
        return out;
    }
    // Keys in blocks of L, each block `[d][L]` (kᵀ of L keys), zero-padded to whole blocks
    // (the padded keys' scores are never read).
    let tb = t.div_ceil(L);
    let mut kt = vec![0f32; tb * d * L];
    for (j, krow) in k.chunks_exact(d).enumerate() {
        let blk = &mut kt[(j / L) * d * L..(j / L + 1) * d * L];
        for (c, &x) in krow.iter().enumerate() {
            blk[c * L + j % L] = x;
        }
    }
    // Values in column blocks of L, each `[t][L]`; the columns past the last whole block (d not
    // a multiple of L) are read from `v` one at a time.
    let d_tiles = d / L;
    let mut vb = vec![0f32; d_tiles * t * L];
    for (j, vrow) in v.chunks_exact(d).enumerate() {
        for (cb, x) in vrow[..d_tiles * L].chunks_exact(L).enumerate() {
            vb[(cb * t + j) * L..(cb * t + j + 1) * L].copy_from_slice(x);
        }
    }
    let tp = tb * L;
    // The block's queries as `[d][R]`, its scores as `[R][tp]`, its probabilities as `[t][R]`.
    let mut qt = vec![0f32; d * R];
    let mut s = vec![0f32; R * tp];
    let mut pt = vec![0f32; t * R];
    for r0 in (0..n_query).step_by(R) {
        let rows = R.min(n_query - r0);
        qt.fill(0.0);
        for (r, qrow) in q[r0 * d..(r0 + rows) * d].chunks_exact(d).enumerate() {
            for (c, &x) in qrow.iter().enumerate() {
                qt[c * R + r] = x;
            }
        }
        for (blk, srow) in kt.chunks_exact(d * L).zip(0..) {
            let acc = tile(&qt, blk);
            for (r, a) in acc.iter().enumerate() {
                s[r * tp + srow * L..r * tp + (srow + 1) * L].copy_from_slice(a);
            }
        }
        pt.fill(0.0);
        for r in 0..rows {
            let row = &mut s[r * tp..r * tp + t];
            if let Some(m) = mask {
                for (x, &b) in row.iter_mut().zip(&m[(r0 + r) * t..(r0 + r + 1) * t]) {
                    *x += b;
                }
            }
            fastmath::softmax_row(row);
            for (j, &p) in row.iter().enumerate() {
                pt[j * R + r] = p;
            }
        }
        let out_rows = &mut out[r0 * d..(r0 + rows) * d];
        for (cb, blk) in vb.chunks_exact(t * L).enumerate() {
            let acc = tile(&pt, blk);
            for (o, a) in out_rows.chunks_exact_mut(d).zip(&acc) {
                o[cb * L..(cb + 1) * L].copy_from_slice(a);
            }
        }
        for c in d_tiles * L..d {
            for (r, o) in out_rows.chunks_exact_mut(d).enumerate() {
                o[c] = pt
                    .chunks_exact(R)
                    .zip(v.chunks_exact(d))
                    .fold(0.0, |a, (p, vrow)| a + p[r] * vrow[c]);
            }
        }
    }
    out
}

/// `acc[r][l] = Σ_i a[i][r] · b[i][l]` over `a [n][R]`, `b [n][L]` (ascending `i`, separate
/// multiply and add): both products' register tile.
#[inline(always)]
fn tile(a: &[f32], b: &[f32]) -> [[f32; L]; R] {
    let mut acc = [[0f32; L]; R];
    for (x, y) in a.chunks_exact(R).zip(b.chunks_exact(L)) {
        for (acc, &x) in acc.iter_mut().zip(x) {
            for (acc, &y) in acc.iter_mut().zip(y) {
                *acc += x * y;
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64(seed);
        (0..len).map(|_| r.next_f64() as f32 * 4.0 - 2.0).collect()
    }

    /// The textbook computation in f64.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: Option<&[f32]>,
        n: usize,
        t: usize,
        d: usize,
    ) -> Vec<f64> {
        let mut out = vec![0f64; n * d];
        for i in 0..n {
            let mut sc: Vec<f64> = (0..t)
                .map(|j| {
                    let dot: f64 = (0..d)
                        .map(|c| q[i * d + c] as f64 * k[j * d + c] as f64)
                        .sum();
                    dot + mask.map_or(0.0, |m| m[i * t + j] as f64)
                })
                .collect();
            let max = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = sc
                .iter_mut()
                .map(|x| {
                    *x = (*x - max).exp();
                    *x
                })
                .sum();
            for c in 0..d {
                out[i * d + c] = (0..t).map(|j| sc[j] / sum * v[j * d + c] as f64).sum();
            }
        }
        out
    }

    #[test]
    fn matches_the_textbook_computation_on_odd_shapes_with_and_without_a_mask() {
        // Row counts around R, key counts around L, head sizes with and without a whole tile.
        for &(n, t, d) in &[
            (1, 1, 8),
            (5, 9, 16),
            (7, 17, 12),
            (4, 8, 64),
            (13, 77, 64),
            (3, 30, 3),
        ] {
            let (q, k, v) = (data(n * d, 1), data(t * d, 2), data(t * d, 3));
            let causal: Vec<f32> = (0..n * t)
                .map(|i| {
                    if i % t > i / t {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            for mask in [None, Some(&causal[..])] {
                let got = attend_head(&q, &k, &v, mask, n, t, d);
                let want = reference(&q, &k, &v, mask, n, t, d);
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "n {n} t {t} d {d} mask {}: [{i}] {g} vs {w}",
                        mask.is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_the_rows_beside_it() {
        // The same query row in different blocks and positions gives the same bits.
        let (n, t, d) = (9, 21, 16);
        let (q, k, v) = (data(n * d, 4), data(t * d, 5), data(t * d, 6));
        let all = attend_head(&q, &k, &v, None, n, t, d);
        for i in 0..n {
            let one = attend_head(&q[i * d..(i + 1) * d], &k, &v, None, 1, t, d);
            assert_eq!(one, all[i * d..(i + 1) * d], "row {i}");
        }
    }
}

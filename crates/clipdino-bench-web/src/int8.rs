//! A prototype int8 GEMM for the linear layers (not used by the model): what a register-blocked
//! integer kernel could gain in wasm over candle's f32 gemm and its Q8_0 / Q4_0 `vec_dot` kernels.
//!
//! `y = x · Wᵀ` with `x [m, k]` quantized per row at run time and `W [n, k]` quantized per output
//! channel once (symmetric, scale = max|·| / 127), products summed exactly in i32 over all of `k`,
//! then `y[i, j] = sx[i] · sw[j] · Σ`. Values are kept as i16 so that wasm's
//! `i32x4.dot_i16x8_s` (8 multiply-adds per instruction; `pmaddwd` on x86) does the work, in a
//! 4 × 2 micro-tile: 8 accumulators + 6 operand vectors stay within the 16 SIMD registers the
//! browser's JIT maps wasm values to. Operands are packed so each micro-tile reads contiguous
//! memory: `[rows/R][k/8][R][8]`.
//!
//! The packing, the quantization of `x` and the final scaling are included in the timed call.

/// Rows of `x` and of `W` per micro-tile.
const MR: usize = 4;
const NR: usize = 2;

/// Weights quantized per output channel and packed for the micro-kernel.
pub struct PackedWeights {
    n: usize,
    k: usize,
    /// `[n.div_ceil(NR)][k/8][NR][8]`
    data: Vec<i16>,
    scale: Vec<f32>,
}

fn quantize_rows(x: &[f32], rows: usize, k: usize, r: usize) -> (Vec<i16>, Vec<f32>) {
    let groups = rows.div_ceil(r);
    let kb = k / 8;
    let mut data = vec![0i16; groups * kb * r * 8];
    let mut scale = vec![0f32; rows];
    for i in 0..rows {
        let row = &x[i * k..][..k];
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scale[i] = s;
        let inv = 1.0 / s;
        let (g, lane) = (i / r, i % r);
        for (b, chunk) in row.chunks_exact(8).enumerate() {
            let dst = &mut data[((g * kb + b) * r + lane) * 8..][..8];
            for (d, v) in dst.iter_mut().zip(chunk) {
                *d = (v * inv).round() as i16;
            }
        }
    }
    (data, scale)
}

impl PackedWeights {
    /// `w`: `[n, k]` row-major (torch `nn.Linear` layout); `k` must be a multiple of 8.
    pub fn new(w: &[f32], n: usize, k: usize) -> Option<Self> {
        if !k.is_multiple_of(8) || w.len() != n * k {
            return None;
        }
        let (data, scale) = quantize_rows(w, n, k, NR);
        Some(Self { n, k, data, scale })
    }
}

#[cfg(target_arch = "wasm32")]
mod kernel {
    use core::arch::wasm32::*;

    use super::{MR, NR};

    #[inline(always)]
    fn load(s: &[i16]) -> v128 {
        i16x8(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])
    }

    #[inline(always)]
    fn hsum(v: v128) -> i32 {
        i32x4_extract_lane::<0>(v)
            + i32x4_extract_lane::<1>(v)
            + i32x4_extract_lane::<2>(v)
            + i32x4_extract_lane::<3>(v)
    }

    /// `a`: `[kb][MR][8]`, `b`: `[kb][NR][8]` → the MR × NR dot products.
    #[inline(always)]
    pub fn micro(a: &[i16], b: &[i16], kb: usize) -> [[i32; NR]; MR] {
        let mut acc = [[i32x4_splat(0); NR]; MR];
        for (ac, bc) in a.chunks_exact(MR * 8).zip(b.chunks_exact(NR * 8)).take(kb) {
            let bv = [load(&bc[0..8]), load(&bc[8..16])];
            for (i, row) in acc.iter_mut().enumerate() {
                let av = load(&ac[i * 8..][..8]);
                for (j, c) in row.iter_mut().enumerate() {
                    *c = i32x4_add(*c, i32x4_dot_i16x8(av, bv[j]));
                }
            }
        }
        let mut out = [[0i32; NR]; MR];
        for i in 0..MR {
            for j in 0..NR {
                out[i][j] = hsum(acc[i][j]);
            }
        }
        out
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod kernel {
    use super::{MR, NR};

    /// Portable version of the micro-kernel (left to the compiler's auto-vectoriser).
    #[inline(always)]
    pub fn micro(a: &[i16], b: &[i16], kb: usize) -> [[i32; NR]; MR] {
        let mut out = [[0i32; NR]; MR];
        for (ac, bc) in a.chunks_exact(MR * 8).zip(b.chunks_exact(NR * 8)).take(kb) {
            for (i, row) in out.iter_mut().enumerate() {
                let av = &ac[i * 8..][..8];
                for (j, c) in row.iter_mut().enumerate() {
                    let bv = &bc[j * 8..][..8];
                    *c += av
                        .iter()
                        .zip(bv)
                        .map(|(&x, &y)| x as i32 * y as i32)
                        .sum::<i32>();
                }
            }
        }
        out
    }
}

/// `x [m, k]` (row-major f32) times `wᵀ` → `[m, n]` f32.
pub fn matmul(x: &[f32], m: usize, w: &PackedWeights) -> Vec<f32> {
    let (n, k) = (w.n, w.k);
    let kb = k / 8;
    let (xa, xs) = quantize_rows(x, m, k, MR);
    let mut y = vec![0f32; m * n];
    // Panels of W small enough to stay in L2 while every row tile of x streams past.
    let panel = (64 * 1024 / (k * 2)).max(1) * NR;
    for n0 in (0..n).step_by(panel) {
        let n1 = (n0 + panel).min(n);
        for mg in 0..m.div_ceil(MR) {
            let a = &xa[mg * kb * MR * 8..][..kb * MR * 8];
            for ng in n0 / NR..n1.div_ceil(NR) {
                let b = &w.data[ng * kb * NR * 8..][..kb * NR * 8];
                let t = kernel::micro(a, b, kb);
                for (i, row) in t.iter().enumerate() {
                    let r = mg * MR + i;
                    if r >= m {
                        break;
                    }
                    for (j, &v) in row.iter().enumerate() {
                        let c = ng * NR + j;
                        if c < n {
                            y[r * n + c] = v as f32 * xs[r] * w.scale[c];
                        }
                    }
                }
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_f32_within_quantization_error() {
        let (m, n, k) = (7, 5, 48);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 60.0)
            .collect();
        let p = PackedWeights::new(&w, n, k).unwrap();
        let y = matmul(&x, m, &p);
        for i in 0..m {
            for j in 0..n {
                let exact: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
                let scale: f32 = (0..k).map(|t| (x[i * k + t] * w[j * k + t]).abs()).sum();
                assert!(
                    (y[i * n + j] - exact).abs() <= 0.02 * scale,
                    "{i},{j}: {} vs {exact}",
                    y[i * n + j]
                );
            }
        }
    }
}

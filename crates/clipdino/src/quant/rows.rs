//! A stored matrix one row at a time, as f32, without an f32 copy of the whole tensor: GGML
//! blocks are decoded straight from the bundle's bytes, float tensors are converted in small
//! chunks of rows. The integer kernel packs its weights from these rows
//! ([`crate::intgemm::PackedLinear::build`]), so loading a quantized bundle never holds more than
//! the stored tensor, the packed one and one row.
//!
//! The block layouts are GGML's (`ggml-common.h`; candle's `k_quants.rs` mirrors them): every
//! decoder computes exactly what candle's `dequantize` computes, in the same order of f32
//! operations, and the tests below check that bit for bit.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::weights::Stored;

/// Rows of a float tensor converted at once.
const FLOAT_CHUNK_ROWS: usize = 32;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// GGML's packing of the 6-bit scale and min of sub-block `j` in the 12 scale bytes of a
/// Q4_K / Q5_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Decode whole blocks of `dtype` from `src` into `out` (`out.len()` a multiple of the block size
/// and `src` exactly its bytes).
fn decode_blocks(dtype: GgmlDType, src: &[u8], out: &mut [f32]) -> Result<()> {
    let (bs, ts) = (dtype.block_size(), dtype.type_size());
    if !out.len().is_multiple_of(bs) || src.len() != out.len() / bs * ts {
        return Err(Error::invalid(
            "row",
            format!("{} bytes of {dtype:?} for {} values", src.len(), out.len()),
        ));
    }
    for (b, y) in src.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
        match dtype {
            GgmlDType::F32 => {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            GgmlDType::F16 => y[0] = f16_at(b, 0),
            GgmlDType::BF16 => y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            GgmlDType::Q4_0 => {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    let q = b[2 + j];
                    y[j] = ((q & 0x0F) as i16 - 8) as f32 * d;
                    y[j + 16] = ((q >> 4) as i16 - 8) as f32 * d;
                }
            }
            GgmlDType::Q4_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    let q = b[4 + j];
                    y[j] = (q & 0x0F) as f32 * d + m;
                    y[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
            GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
                let (d, m, o) = if dtype == GgmlDType::Q5_0 {
                    (f16_at(b, 0), 0.0, 2)
                } else {
                    (f16_at(b, 0), f16_at(b, 2), 4)
                };
                let qh = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
                for j in 0..16 {
                    let q = b[o + 4 + j];
                    let h0 = (((qh >> j) << 4) & 0x10) as u8;
                    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                    let (x0, x1) = ((q & 0x0F) | h0, (q >> 4) | h1);
                    if dtype == GgmlDType::Q5_0 {
                        y[j] = (x0 as i32 - 16) as f32 * d;
                        y[j + 16] = (x1 as i32 - 16) as f32 * d;
                    } else {
                        y[j] = x0 as f32 * d + m;
                        y[j + 16] = x1 as f32 * d + m;
                    }
                }
            }
            GgmlDType::Q8_0 => {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    y[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
            GgmlDType::Q4K | GgmlDType::Q5K => {
                // d, dmin, scales[12], (Q5_K: qh[32]), qs[128]
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let (qh, qs) = if dtype == GgmlDType::Q5K {
                    (Some(&b[16..48]), &b[48..176])
                } else {
                    (None, &b[16..144])
                };
                for (g, half) in (0..4).map(|g| (g, &qs[32 * g..32 * g + 32])) {
                    let (sc, m) = scale_min_k4(2 * g, scales);
                    let (d1, m1) = (d * sc as f32, dmin * m as f32);
                    let (sc, m) = scale_min_k4(2 * g + 1, scales);
                    let (d2, m2) = (d * sc as f32, dmin * m as f32);
                    let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
                    for l in 0..32 {
                        let (lo, hi) = ((half[l] & 0xF) as f32, (half[l] >> 4) as f32);
                        match qh {
                            None => {
                                y[64 * g + l] = d1 * lo - m1;
                                y[64 * g + 32 + l] = d2 * hi - m2;
                            }
                            Some(qh) => {
                                let a1 = if qh[l] & u1 != 0 { 16f32 } else { 0f32 };
                                let a2 = if qh[l] & u2 != 0 { 16f32 } else { 0f32 };
                                y[64 * g + l] = d1 * (lo + a1) - m1;
                                y[64 * g + 32 + l] = d2 * (hi + a2) - m2;
                            }
                        }
                    }
                }
            }
            GgmlDType::Q6K => {
                // ql[128], qh[64], scales[16] (i8), d
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                for h in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * h..], &qh[32 * h..], &sc[8 * h..]);
                    let y = &mut y[128 * h..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                        let s = |i: usize| sc[is + i] as i8 as f32;
                        y[l] = d * s(0) * q1 as f32;
                        y[l + 32] = d * s(2) * q2 as f32;
                        y[l + 64] = d * s(4) * q3 as f32;
                        y[l + 96] = d * s(6) * q4 as f32;
                    }
                }
            }
            other => {
                return Err(Error::invalid(
                    "row",
                    format!("no row decoder for {other:?} blocks"),
                ))
            }
        }
    }
    Ok(())
}

/// Calls `f(i, row_i)` for every row `i` of `stored`, viewed as a `[rows, cols]` matrix (`name`
/// for errors). At most one row (float: a few rows) is held as f32 at a time.
pub fn for_each_row(
    stored: &Stored,
    rows: usize,
    cols: usize,
    name: &str,
    mut f: impl FnMut(usize, &[f32]),
) -> Result<()> {
    let dims = stored.dims();
    if dims.iter().product::<usize>() != rows * cols || dims.first() != Some(&rows) {
        return Err(Error::invalid(
            name,
            format!("stored as {dims:?}, read as [{rows}, {cols}]"),
        ));
    }
    match stored {
        Stored::Float(t) => {
            let t = t.reshape((rows, cols))?;
            for r0 in (0..rows).step_by(FLOAT_CHUNK_ROWS) {
                let n = FLOAT_CHUNK_ROWS.min(rows - r0);
                let chunk: Tensor = t.narrow(0, r0, n)?.to_dtype(DType::F32)?;
                let v = chunk.flatten_all()?.to_vec1::<f32>()?;
                for (i, row) in v.chunks_exact(cols).enumerate() {
                    f(r0 + i, row);
                }
            }
            Ok(())
        }
        Stored::Quant(q) => for_each_qrow(q, rows, cols, name, f),
    }
}

fn for_each_qrow(
    q: &QTensor,
    rows: usize,
    cols: usize,
    name: &str,
    mut f: impl FnMut(usize, &[f32]),
) -> Result<()> {
    let dtype = q.dtype();
    let (bs, ts) = (dtype.block_size(), dtype.type_size());
    if !cols.is_multiple_of(bs) {
        return Err(Error::invalid(
            name,
            format!("rows of {cols} values do not split into {dtype:?} blocks of {bs}"),
        ));
    }
    let data = q.data()?;
    let row_bytes = cols / bs * ts;
    if data.len() != rows * row_bytes {
        return Err(Error::invalid(
            name,
            format!("{} bytes for [{rows}, {cols}] in {dtype:?}", data.len()),
        ));
    }
    let mut row = vec![0f32; cols];
    for (i, src) in data.chunks_exact(row_bytes).enumerate() {
        decode_blocks(dtype, src, &mut row)
            .map_err(|e| Error::invalid(name, format!("row {i}: {e}")))?;
        f(i, &row);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::Device;

    use super::*;
    use crate::rng::SplitMix64;

    /// Heavy-tailed values with a few huge ones, so that every block scale path is exercised.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64(seed);
        (0..n)
            .map(|i| {
                let u = r.next_f64() * 2.0 - 1.0;
                let v = (u * u * u * 3.0) as f32;
                if i % 97 == 5 {
                    v * 40.0
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn rows_equal_candles_dequantize_bit_for_bit() {
        let dev = Device::Cpu;
        let (rows, cols) = (6, 512);
        let w = Tensor::from_vec(values(rows * cols, 3), (rows, cols), &dev).unwrap();
        for dt in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::F16,
            GgmlDType::F32,
        ] {
            let q = Arc::new(QTensor::quantize(&w, dt).unwrap());
            let want: Vec<u32> = q
                .dequantize(&dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let mut got = vec![0u32; rows * cols];
            let mut seen = 0;
            for_each_row(&Stored::Quant(q), rows, cols, "w", |i, r| {
                for (g, v) in got[i * cols..(i + 1) * cols].iter_mut().zip(r) {
                    *g = v.to_bits();
                }
                seen += 1;
            })
            .unwrap();
            assert_eq!(seen, rows);
            assert!(got == want, "{dt:?}: decoded rows differ from candle");
        }
    }

    #[test]
    fn float_tensors_come_in_row_order_and_shapes_are_checked() {
        let dev = Device::Cpu;
        let (rows, cols) = (70, 12); // more than one chunk
        let v = values(rows * cols, 4);
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let t = Tensor::from_vec(v.clone(), (rows, 3, 4), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let want = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            let want = want.to_vec1::<f32>().unwrap();
            let mut got = Vec::new();
            for_each_row(&Stored::Float(t.clone()), rows, cols, "w", |i, r| {
                assert_eq!(got.len(), i * cols);
                got.extend_from_slice(r);
            })
            .unwrap();
            assert_eq!(got, want, "{dt:?}");
            let e = for_each_row(&Stored::Float(t), cols, rows, "conv", |_, _| {}).unwrap_err();
            assert!(e.to_string().contains("conv"), "{e}");
        }
    }
}

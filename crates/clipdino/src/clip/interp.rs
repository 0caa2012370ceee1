//! Bicubic resize of the positional-embedding grid, matching PyTorch's
//! `F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)` (no antialias).
//!
//! PyTorch (`aten/src/ATen/native/UpSample.h`, `HelperInterpCubic`) computes for each output
//! index `i` the source coordinate `s = (i + 0.5) · in/out − 0.5` (no clamping of `s` for cubic),
//! takes `x0 = floor(s)`, `t = s − x0`, the Keys kernel with `A = −0.75`, and reads the four
//! taps `x0 − 1 … x0 + 2` with their indices clamped into `[0, in − 1]` (border replication).
//! The 2-D resize is separable, so it is written as two small matrix products
//! `out = Wy · X · Wxᵀ` with interpolation matrices whose clamped taps accumulate.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// PyTorch's cubic convolution constant.
const A: f32 = -0.75;

/// Keys kernel for `|x| ≤ 1`.
fn cubic1(x: f32) -> f32 {
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}

/// Keys kernel for `1 < |x| < 2`.
fn cubic2(x: f32) -> f32 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// Most entries of one interpolation matrix (a 4096-patch side from a 64-patch grid needs
/// 2^18): its size comes from a model config and an image, so it is checked, not trusted.
const MAX_MATRIX_ENTRIES: usize = 1 << 24;

/// The `[out_size, in_size]` row-major matrix `W` such that `W · x` is PyTorch's 1-D bicubic
/// resize (align_corners=False) of `x` from `in_size` to `out_size` samples.
pub fn bicubic_matrix(in_size: usize, out_size: usize) -> Result<Vec<f32>> {
    let entries = out_size
        .checked_mul(in_size)
        .filter(|&n| n <= MAX_MATRIX_ENTRIES)
        .ok_or_else(|| {
            Error::invalid(
                "resize",
                format!("a bicubic resize from {in_size} to {out_size} samples is too large"),
            )
        })?;
    let mut m = vec![0f32; entries];
    if in_size == 0 {
        return Ok(m);
    }
    // Computed in f32 like PyTorch's CPU kernel for f32 tensors (`opmath_t` = float).
    let scale = in_size as f32 / out_size as f32;
    let last = in_size as i64 - 1;
    for i in 0..out_size {
        let src = scale * (i as f32 + 0.5) - 0.5;
        // `guard_index_and_lambda`: index clamped to the last sample, lambda clamped to [0, 1].
        let x0 = (src.floor() as i64).min(last);
        let t = (src - x0 as f32).clamp(0.0, 1.0);
        let w = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
        for (k, wk) in w.iter().enumerate() {
            let idx = (x0 - 1 + k as i64).clamp(0, last) as usize;
            m[i * in_size + idx] += wk;
        }
    }
    Ok(m)
}

/// Resize a channels-last grid `[gh, gw, C]` to `[out_h, out_w, C]` with PyTorch's bicubic
/// (align_corners=False). Returns the input unchanged when the size already matches.
pub fn resize_bicubic_hwc(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (gh, gw, c) = x.dims3()?;
    if (gh, gw) == (out_h, out_w) {
        return Ok(x.clone());
    }
    if out_h == 0 || out_w == 0 || gh == 0 || gw == 0 {
        return Err(Error::invalid(
            "resize",
            format!("cannot resize a {gh}×{gw} grid to {out_h}×{out_w}"),
        ));
    }
    let dev: &Device = x.device();
    let wy = Tensor::from_vec(bicubic_matrix(gh, out_h)?, (out_h, gh), dev)?;
    let wx = Tensor::from_vec(bicubic_matrix(gw, out_w)?, (out_w, gw), dev)?;
    // Rows: [out_h, gh] · [gh, gw·C] → [out_h, gw, C].
    let y = wy.matmul(&x.contiguous()?.reshape((gh, gw * c))?)?;
    let y = y.reshape((out_h, gw, c))?;
    // Columns, one batched product per output row: [out_h, out_w, gw] · [out_h, gw, C].
    let wx = wx
        .unsqueeze(0)?
        .broadcast_as((out_h, out_w, gw))?
        .contiguous()?;
    Ok(wx.matmul(&y)?)
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // expected values pasted as PyTorch printed them
mod tests {
    use super::*;

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn matrix_size_is_checked() {
        assert!(bicubic_matrix(64, 4096).is_ok());
        for (i, o) in [(usize::MAX, 2), (1 << 20, 1 << 20)] {
            let e = bicubic_matrix(i, o).unwrap_err().to_string();
            assert!(e.contains("too large"), "{e}");
        }
    }

    #[test]
    fn identity_when_same_size() {
        let m = bicubic_matrix(5, 5).unwrap();
        for i in 0..5 {
            for j in 0..5 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert_eq!(m[i * 5 + j], want, "entry ({i},{j})");
            }
        }
    }

    #[test]
    fn rows_sum_to_one() {
        for (n_in, n_out) in [
            (14, 3),
            (14, 4),
            (14, 6),
            (14, 28),
            (14, 45),
            (4, 7),
            (1, 3),
        ] {
            let m = bicubic_matrix(n_in, n_out).unwrap();
            for i in 0..n_out {
                let s: f32 = m[i * n_in..(i + 1) * n_in].iter().sum();
                assert!(
                    (s - 1.0).abs() < 1e-6,
                    "{n_in}->{n_out} row {i} sums to {s}"
                );
            }
        }
    }

    // Expected values from PyTorch 2.x:
    //   x = torch.arange(16.).pow(2).reshape(1, 1, 4, 4) / 10
    //   F.interpolate(x, size=(3, 7), mode="bicubic", align_corners=False)
    #[test]
    fn matches_torch_2d() {
        let x: Vec<f32> = (0..16).map(|i| (i * i) as f32 / 10.0).collect();
        let t = Tensor::from_vec(x, (4, 4, 1), &Device::Cpu).unwrap();
        let y = resize_bicubic_hwc(&t, 3, 7).unwrap();
        assert_eq!(y.dims(), &[3, 7, 1]);
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = TORCH_4X4_TO_3X7;
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-5, "max |Δ| {d}: got {got:?}");
    }

    // Downsampling and upsampling a 14-wide row, as for ViT-B/16's grid:
    //   r = torch.sin(torch.arange(14.) * 0.7).reshape(1, 1, 1, 14)
    //   F.interpolate(r, size=(1, 4), mode="bicubic", align_corners=False)
    //   F.interpolate(r, size=(1, 20), mode="bicubic", align_corners=False)
    #[test]
    fn matches_torch_1d_down_and_up() {
        let r: Vec<f32> = (0..14).map(|i| (i as f32 * 0.7).sin()).collect();
        let t = Tensor::from_vec(r, (1, 14, 1), &Device::Cpu).unwrap();
        let down = resize_bicubic_hwc(&t, 1, 4)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let up = resize_bicubic_hwc(&t, 1, 20)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let d1 = max_abs_diff(&down, &TORCH_14_TO_4);
        let d2 = max_abs_diff(&up, &TORCH_14_TO_20);
        assert!(d1 < 1e-5, "down max |Δ| {d1}: {down:?}");
        assert!(d2 < 1e-5, "up max |Δ| {d2}: {up:?}");
    }

    // Printed by PyTorch 2.15 with '%.7f'.
    const TORCH_4X4_TO_3X7: [f32; 21] = [
        0.1263609, 0.1901040, 0.3172062, 0.5101849, 0.8010503, 1.1689682, 1.4086956, //
        3.2710202, 3.7507191, 4.5563316, 5.4125009, 6.3665557, 7.4129820, 8.0686684, //
        13.0971642, 13.9928141, 15.4769382, 16.9962978, 18.6135483, 20.3384781, 21.4101238,
    ];
    const TORCH_14_TO_4: [f32; 4] = [0.7937704, -0.1590561, -0.4699029, 0.9529825];
    const TORCH_14_TO_20: [f32; 20] = [
        -0.0523628, 0.3234682, 0.7937704, 0.9773194, 0.9828689, 0.7147416, 0.2910793, //
        -0.1590561, -0.6426687, -0.9331015, -1.0043100, -0.8625538, -0.4699029, -0.0297045, //
        0.4458211, 0.8462249, 0.9950797, 0.9529825, 0.6033010, 0.2755728,
    ];
}

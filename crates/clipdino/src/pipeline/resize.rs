//! Bilinear resizing of `[C, H, W]` maps exactly like PyTorch's
//! `F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)` (no antialias).
//!
//! PyTorch (`aten/src/ATen/native/UpSample.h`): `scale = in / out`,
//! `src = max(scale·(dst + 0.5) − 0.5, 0)`, `i0 = min(floor(src), in − 1)`,
//! `i1 = i0 + (i0 < in − 1)`, `λ1 = src − i0`, `λ0 = 1 − λ1`, all in f32.
//! With `scale_factor=s` instead of a size PyTorch uses `1/s`, which equals `in/out` whenever
//! `out = in·s` (the ×16 patch upsampling), so one code path serves both.
//!
//! The resize is separable: per output row, blend the two source rows (vertical), then blend
//! columns with precomputed taps (horizontal).

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// Source taps along one axis: `(i0, i1, λ0, λ1)` per output index.
#[derive(Debug, Clone)]
pub(crate) struct Taps {
    pub i0: Vec<usize>,
    pub i1: Vec<usize>,
    pub l0: Vec<f32>,
    pub l1: Vec<f32>,
}

impl Taps {
    pub fn new(input: usize, output: usize) -> Self {
        let scale = input as f32 / output as f32;
        let mut t = Taps {
            i0: Vec::with_capacity(output),
            i1: Vec::with_capacity(output),
            l0: Vec::with_capacity(output),
            l1: Vec::with_capacity(output),
        };
        for d in 0..output {
            let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let i1 = i0 + usize::from(i0 < input - 1);
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            t.i0.push(i0);
            t.i1.push(i1);
            t.l0.push(1.0 - l1);
            t.l1.push(l1);
        }
        t
    }
}

/// Where a resized map goes: output pixel `(y, x)` for `y < rows`, `x < cols` of the full
/// `out_h × out_w` resize lands at `(y0 + y, x0 + x)` of a `dst_h × dst_w` destination.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement {
    pub rows: usize,
    pub cols: usize,
    pub dst_h: usize,
    pub dst_w: usize,
    pub y0: usize,
    pub x0: usize,
    /// Add into the destination instead of overwriting it.
    pub accumulate: bool,
}

/// Resize `src` (`c × ih × iw`, row-major) to `oh × ow`, writing only the top-left
/// `rows × cols` part of the result into `dst` at `place`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn resize_into(
    src: &[f32],
    c: usize,
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    dst: &mut [f32],
    place: Placement,
) {
    debug_assert_eq!(src.len(), c * ih * iw);
    debug_assert!(place.rows <= oh && place.cols <= ow);
    debug_assert_eq!(dst.len(), c * place.dst_h * place.dst_w);
    let ty = Taps::new(ih, oh);
    let tx = Taps::new(iw, ow);
    let mut tmp = vec![0f32; iw];
    for ch in 0..c {
        let plane = &src[ch * ih * iw..][..ih * iw];
        let out_plane = &mut dst[ch * place.dst_h * place.dst_w..][..place.dst_h * place.dst_w];
        for y in 0..place.rows {
            let r0 = &plane[ty.i0[y] * iw..][..iw];
            let r1 = &plane[ty.i1[y] * iw..][..iw];
            let (a, b) = (ty.l0[y], ty.l1[y]);
            for ((t, &p), &q) in tmp.iter_mut().zip(r0).zip(r1) {
                *t = a * p + b * q;
            }
            let out = &mut out_plane[(place.y0 + y) * place.dst_w + place.x0..][..place.cols];
            if place.accumulate {
                for (x, o) in out.iter_mut().enumerate() {
                    *o += tx.l0[x] * tmp[tx.i0[x]] + tx.l1[x] * tmp[tx.i1[x]];
                }
            } else {
                for (x, o) in out.iter_mut().enumerate() {
                    *o = tx.l0[x] * tmp[tx.i0[x]] + tx.l1[x] * tmp[tx.i1[x]];
                }
            }
        }
    }
}

/// Bilinear resize of row-major `c × ih × iw` data to `c × oh × ow`.
pub fn resize_bilinear_vec(
    src: &[f32],
    c: usize,
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
) -> Result<Vec<f32>> {
    if ih == 0 || iw == 0 || oh == 0 || ow == 0 {
        return Err(Error::invalid(
            "resize",
            format!("empty size {ih}×{iw} → {oh}×{ow}"),
        ));
    }
    if src.len() != c * ih * iw {
        return Err(Error::invalid(
            "resize",
            format!("{} values for {c}×{ih}×{iw}", src.len()),
        ));
    }
    if (ih, iw) == (oh, ow) {
        return Ok(src.to_vec());
    }
    let mut out = vec![0f32; c * oh * ow];
    let place = Placement {
        rows: oh,
        cols: ow,
        dst_h: oh,
        dst_w: ow,
        y0: 0,
        x0: 0,
        accumulate: false,
    };
    resize_into(src, c, ih, iw, oh, ow, &mut out, place);
    Ok(out)
}

/// Bilinear resize of a `[C, H, W]` tensor to `[C, oh, ow]` (`align_corners=False`).
pub fn resize_bilinear(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (c, ih, iw) = match x.dims() {
        [c, h, w] => (*c, *h, *w),
        d => {
            return Err(Error::invalid(
                "resize",
                format!("expected a [C, H, W] tensor, got {d:?}"),
            ))
        }
    };
    let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let out = resize_bilinear_vec(&data, c, ih, iw, oh, ow)?;
    Ok(Tensor::from_vec(out, (c, oh, ow), x.device())?)
}

/// Bilinear resize of an 8-bit RGBA image (as a browser's `getImageData` gives it) to a
/// `[3, oh, ow]` RGB map in [0, 1], band by band: the caller hands over only the source rows a
/// band of output rows needs ([`Rgba8Resize::source_rows`]), so a large photo is never held
/// as floats, nor whole. The numbers are exactly those of [`resize_bilinear_vec`] on the image
/// converted with `byte as f32 / 255.0` (alpha ignored: the caller composites first).
#[derive(Debug, Clone)]
pub struct Rgba8Resize {
    iw: usize,
    ih: usize,
    ow: usize,
    oh: usize,
    ty: Taps,
    tx: Taps,
}

impl Rgba8Resize {
    pub fn new(iw: usize, ih: usize, ow: usize, oh: usize) -> Result<Self> {
        if ih == 0 || iw == 0 || oh == 0 || ow == 0 {
            return Err(Error::invalid(
                "resize",
                format!("empty size {ih}×{iw} → {oh}×{ow}"),
            ));
        }
        Ok(Self {
            iw,
            ih,
            ow,
            oh,
            ty: Taps::new(ih, oh),
            tx: Taps::new(iw, ow),
        })
    }

    /// The output size `(ow, oh)`.
    pub fn output(&self) -> (usize, usize) {
        (self.ow, self.oh)
    }

    /// The source rows that output rows `out_rows` read.
    pub fn source_rows(&self, out_rows: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let rows = out_rows.start.min(self.oh)..out_rows.end.min(self.oh);
        if rows.is_empty() {
            return 0..0;
        }
        // Taps are monotonic in the output index.
        self.ty.i0[rows.start]..self.ty.i1[rows.end - 1] + 1
    }

    /// Fill output rows `out_rows` of `out` (`[3, oh, ow]`, row-major) from `band`: the RGBA
    /// bytes of source rows `src` (`4·iw` bytes per row), which must cover
    /// [`Self::source_rows`]`(out_rows)`.
    pub fn run_band(
        &self,
        band: &[u8],
        src: std::ops::Range<usize>,
        out_rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> Result<()> {
        let (iw, plane) = (self.iw, self.oh * self.ow);
        let need = self.source_rows(out_rows.clone());
        if out_rows.end > self.oh
            || src.end > self.ih
            || need.start < src.start
            || need.end > src.end
            || band.len() != src.len() * 4 * iw
            || out.len() != 3 * plane
        {
            return Err(Error::invalid(
                "resize",
                format!(
                    "band of rows {src:?} ({} bytes) for output rows {out_rows:?} of {}×{} → {}×{}",
                    band.len(),
                    self.ih,
                    iw,
                    self.oh,
                    self.ow
                ),
            ));
        }
        let row = |i: usize| &band[(i - src.start) * 4 * iw..][..4 * iw];
        let mut tmp = vec![0f32; iw];
        for ch in 0..3 {
            for y in out_rows.clone() {
                let (r0, r1) = (row(self.ty.i0[y]), row(self.ty.i1[y]));
                let (a, b) = (self.ty.l0[y], self.ty.l1[y]);
                for (x, t) in tmp.iter_mut().enumerate() {
                    let p = r0[4 * x + ch] as f32 / 255.0;
                    let q = r1[4 * x + ch] as f32 / 255.0;
                    *t = a * p + b * q;
                }
                let o = &mut out[ch * plane + y * self.ow..][..self.ow];
                for (x, o) in o.iter_mut().enumerate() {
                    *o = self.tx.l0[x] * tmp[self.tx.i0[x]] + self.tx.l1[x] * tmp[self.tx.i1[x]];
                }
            }
        }
        Ok(())
    }
}

/// `(height, width)` after scaling the short side to `short` and keeping the aspect ratio,
/// as mmcv `rescale_size` (the upstream test pipeline's `Resize`, keep_ratio):
/// `scale = short / min(h, w)`, each side `int(side · scale + 0.5)`.
pub fn short_side_size(height: usize, width: usize, short: usize) -> (usize, usize) {
    let scale = short as f64 / height.min(width).max(1) as f64;
    let side = |s: usize| ((s as f64 * scale + 0.5) as usize).max(1);
    (side(height), side(width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_torch_values() {
        // torch.nn.functional.interpolate(torch.arange(6.).reshape(1,1,2,3), size=(3,5),
        //                                 mode="bilinear", align_corners=False)
        let src: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let out = resize_bilinear_vec(&src, 1, 2, 3, 3, 5).unwrap();
        #[rustfmt::skip]
        let want = [
            0.0, 0.4, 1.0, 1.6, 2.0,
            1.5, 1.9, 2.5, 3.1, 3.5,
            3.0, 3.4, 4.0, 4.6, 5.0,
        ];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
        // downscale 4 → 2: each output averages the two middle-ish inputs
        let src: Vec<f32> = vec![0.0, 1.0, 2.0, 3.0];
        assert_eq!(
            resize_bilinear_vec(&src, 1, 1, 4, 1, 2).unwrap(),
            vec![0.5, 2.5]
        );
    }

    #[test]
    fn identity_and_constants() {
        let src: Vec<f32> = (0..2 * 3 * 4).map(|v| (v as f32).sin()).collect();
        assert_eq!(resize_bilinear_vec(&src, 2, 3, 4, 3, 4).unwrap(), src);
        let ones = vec![1.0f32; 2 * 5 * 7];
        for v in resize_bilinear_vec(&ones, 2, 5, 7, 13, 3).unwrap() {
            assert!((v - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn placement_crops_and_accumulates() {
        let src: Vec<f32> = (0..2 * 2 * 3).map(|v| v as f32 * 0.5).collect();
        let full = resize_bilinear_vec(&src, 2, 2, 3, 8, 12).unwrap();
        let (dh, dw) = (9, 14);
        let mut dst = vec![1.0f32; 2 * dh * dw];
        let place = Placement {
            rows: 7,
            cols: 10,
            dst_h: dh,
            dst_w: dw,
            y0: 2,
            x0: 3,
            accumulate: true,
        };
        resize_into(&src, 2, 2, 3, 8, 12, &mut dst, place);
        for c in 0..2 {
            for y in 0..dh {
                for x in 0..dw {
                    let inside = (2..9).contains(&y) && (3..13).contains(&x);
                    let want = if inside {
                        1.0 + full[(c * 8 + y - 2) * 12 + x - 3]
                    } else {
                        1.0
                    };
                    assert!((dst[(c * dh + y) * dw + x] - want).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn short_side() {
        assert_eq!(short_side_size(90, 130, 64), (64, 92));
        assert_eq!(short_side_size(130, 90, 64), (92, 64));
        assert_eq!(short_side_size(480, 640, 448), (448, 597));
        assert_eq!(short_side_size(100, 100, 224), (224, 224));
        assert_eq!(short_side_size(2, 1001, 1), (1, 501)); // 500.5 rounds up
    }

    #[test]
    fn tensor_wrapper_checks_rank() {
        let t = Tensor::zeros((2, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(resize_bilinear(&t, 4, 4).is_err());
        let t = Tensor::ones((1, 2, 2), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert_eq!(resize_bilinear(&t, 3, 5).unwrap().dims(), &[1, 3, 5]);
    }

    /// `resize_bilinear_vec` on the image as floats (`byte / 255`), the reference.
    fn reference(rgba: &[u8], iw: usize, ih: usize, ow: usize, oh: usize) -> Vec<f32> {
        let n = iw * ih;
        let mut chw = vec![0f32; 3 * n];
        for (i, px) in rgba.chunks_exact(4).enumerate() {
            for c in 0..3 {
                chw[c * n + i] = px[c] as f32 / 255.0;
            }
        }
        resize_bilinear_vec(&chw, 3, ih, iw, oh, ow).unwrap()
    }

    #[test]
    fn rgba8_bands_equal_the_float_resize_bit_for_bit() {
        let mut seed = 7u32;
        let mut byte = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as u8
        };
        // Down (strong and mild), up, one axis each way, 1-pixel edges, identity.
        for (iw, ih, ow, oh) in [
            (97, 61, 23, 15),
            (40, 30, 33, 25),
            (13, 9, 31, 20),
            (50, 7, 20, 11),
            (1, 17, 3, 5),
            (17, 1, 4, 1),
            (12, 8, 12, 8),
        ] {
            let rgba: Vec<u8> = (0..iw * ih * 4).map(|_| byte()).collect();
            let want = reference(&rgba, iw, ih, ow, oh);
            let r = Rgba8Resize::new(iw, ih, ow, oh).unwrap();
            for band in [1, 4, oh] {
                let mut out = vec![f32::NAN; 3 * ow * oh];
                for y0 in (0..oh).step_by(band) {
                    let rows = y0..(y0 + band).min(oh);
                    let src = r.source_rows(rows.clone());
                    let bytes = &rgba[src.start * 4 * iw..src.end * 4 * iw];
                    r.run_band(bytes, src, rows, &mut out).unwrap();
                }
                assert!(
                    out.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{iw}×{ih} → {ow}×{oh} in bands of {band}"
                );
            }
        }
    }

    #[test]
    fn rgba8_bands_are_checked() {
        let r = Rgba8Resize::new(8, 8, 4, 4).unwrap();
        let mut out = vec![0f32; 3 * 16];
        let need = r.source_rows(0..2);
        assert!(need.start == 0 && need.end >= 2);
        // A band that misses a needed row, a short band, rows past the end.
        assert!(r.run_band(&[0; 4 * 8], 0..1, 0..2, &mut out).is_err());
        assert!(r.run_band(&[0; 3], need.clone(), 0..2, &mut out).is_err());
        assert!(r.run_band(&[0; 4 * 8 * 8], 0..8, 3..5, &mut out).is_err());
        assert!(Rgba8Resize::new(0, 8, 4, 4).is_err());
        assert_eq!(r.source_rows(4..9), 0..0);
    }
}

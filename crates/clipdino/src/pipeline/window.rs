//! Sliding windows as mmseg's `EncoderDecoder.slide_inference` (mmseg 0.x) places them:
//! `grids = max(size − crop + stride − 1, 0) // stride + 1` per axis, window `i` starts at
//! `i·stride`, ends at `min(start + crop, size)`, and is then shifted back to start at
//! `max(end − crop, 0)` — so the last window ends at the border and no window is larger than
//! the image.

use super::resize::short_side_size;
use super::EncodeOptions;
use crate::clip::MAX_PATCHES;
use crate::error::{Error, Result};

/// Most patches one image may send through the tower, summed over its windows (16 single
/// passes: about 16.8 MP of windows at patch 16, ≈ 0.5 GB of cached features at ViT-B/16
/// widths). Bounds the work and memory of a sliding-window run on a very elongated image.
pub const MAX_TOTAL_PATCHES: usize = 16 * MAX_PATCHES;

/// Window size and stride in pixels (square windows, as the paper's 448 / 224).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub size: usize,
    pub stride: usize,
}

impl Window {
    pub fn validate(&self) -> Result<()> {
        if self.size == 0 || self.stride == 0 || self.stride > self.size {
            // a stride above the size would leave pixels no window covers
            return Err(Error::invalid(
                "window",
                format!(
                    "size {} and stride {} must be positive with stride ≤ size",
                    self.size, self.stride
                ),
            ));
        }
        Ok(())
    }
}

/// A pixel box `[y0, y0 + height) × [x0, x0 + width)` of the processed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelBox {
    pub y0: usize,
    pub x0: usize,
    pub height: usize,
    pub width: usize,
}

/// What encoding an image will do, computed from the sizes alone: nothing is resized or
/// allocated before every limit is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Processed (resized) image size.
    pub height: usize,
    pub width: usize,
    /// Windows over the processed image (one box for a single pass).
    pub windows: Vec<PixelBox>,
    /// Patches per window (the largest window) and over all windows.
    pub window_patches: usize,
    pub total_patches: usize,
}

/// Plan the encoding of a `height × width` image: the processed size (`short_side`), the
/// windows, and the patch counts, checked against the tower's per-pass budget
/// ([`MAX_PATCHES`], as [`Error::GridTooLarge`]) and the per-image budget
/// ([`MAX_TOTAL_PATCHES`]). All arithmetic saturates, so absurd sizes are refused, not wrapped.
pub fn plan(height: usize, width: usize, opts: &EncodeOptions, patch: usize) -> Result<Plan> {
    if height == 0 || width == 0 {
        return Err(Error::invalid(
            "image",
            format!("empty image {width}×{height}"),
        ));
    }
    if patch == 0 {
        return Err(Error::config("patch_size", "must be positive"));
    }
    let (ph, pw) = match opts.short_side {
        Some(0) => return Err(Error::invalid("short_side", "must be positive")),
        Some(s) => short_side_size(height, width, s),
        None => (height, width),
    };
    // Per axis: (window count, window length); one window of the whole side without windows.
    let axis = |size: usize| match opts.window {
        Some(win) => (
            size.saturating_add(win.stride)
                .saturating_sub(win.size.saturating_add(1))
                / win.stride
                + 1,
            size.min(win.size),
        ),
        None => (1, size),
    };
    if let Some(win) = opts.window {
        win.validate()?;
    }
    let ((ny, wh), (nx, ww)) = (axis(ph), axis(pw));
    let (gh, gw) = (wh.div_ceil(patch), ww.div_ceil(patch));
    let window_patches = gh.saturating_mul(gw);
    if window_patches > MAX_PATCHES {
        return Err(Error::GridTooLarge {
            width: ww,
            height: wh,
            grid_h: gh,
            grid_w: gw,
            max_tokens: MAX_PATCHES,
        });
    }
    let count = ny.saturating_mul(nx);
    let total_patches = count.saturating_mul(window_patches);
    if total_patches > MAX_TOTAL_PATCHES {
        return Err(Error::invalid(
            "image",
            format!(
                "{width}×{height} px would be processed at {pw}×{ph} px in {count} windows of \
                 {ww}×{wh} px, {total_patches} patches in all; the limit is \
                 {MAX_TOTAL_PATCHES} patches per image (the image is too elongated: crop it, or \
                 process it at a smaller size)"
            ),
        ));
    }
    Ok(Plan {
        height: ph,
        width: pw,
        windows: slide_windows(ph, pw, opts.window)?,
        window_patches,
        total_patches,
    })
}

/// Start offsets along one axis.
fn starts(size: usize, crop: usize, stride: usize) -> Vec<(usize, usize)> {
    let grids = (size + stride).saturating_sub(crop + 1) / stride + 1;
    (0..grids)
        .map(|i| {
            let end = (i * stride + crop).min(size);
            let start = end.saturating_sub(crop);
            (start, end - start)
        })
        .collect()
}

/// Windows over an `height × width` image in mmseg order (rows outer, columns inner); one box
/// covering everything when `window` is `None`.
pub fn slide_windows(height: usize, width: usize, window: Option<Window>) -> Result<Vec<PixelBox>> {
    if height == 0 || width == 0 {
        return Err(Error::invalid(
            "image",
            format!("empty image {width}×{height}"),
        ));
    }
    let Some(win) = window else {
        return Ok(vec![PixelBox {
            y0: 0,
            x0: 0,
            height,
            width,
        }]);
    };
    win.validate()?;
    let ys = starts(height, win.size, win.stride);
    let xs = starts(width, win.size, win.stride);
    let mut out = Vec::with_capacity(ys.len() * xs.len());
    for &(y0, h) in &ys {
        for &(x0, w) in &xs {
            out.push(PixelBox {
                y0,
                x0,
                height: h,
                width: w,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mmseg's loop, transcribed literally.
    fn mmseg(
        h_img: usize,
        w_img: usize,
        crop: usize,
        stride: usize,
    ) -> Vec<(usize, usize, usize, usize)> {
        let (h_img, w_img, crop, stride) = (h_img as i64, w_img as i64, crop as i64, stride as i64);
        let h_grids = (h_img - crop + stride - 1).max(0) / stride + 1;
        let w_grids = (w_img - crop + stride - 1).max(0) / stride + 1;
        let mut v = vec![];
        for hi in 0..h_grids {
            for wi in 0..w_grids {
                let (mut y1, mut x1) = (hi * stride, wi * stride);
                let y2 = (y1 + crop).min(h_img);
                let x2 = (x1 + crop).min(w_img);
                y1 = (y2 - crop).max(0);
                x1 = (x2 - crop).max(0);
                v.push((
                    y1 as usize,
                    x1 as usize,
                    (y2 - y1) as usize,
                    (x2 - x1) as usize,
                ));
            }
        }
        v
    }

    #[test]
    fn same_boxes_as_mmseg() {
        for (h, w, crop, stride) in [
            (448, 597, 448, 224),
            (64, 92, 64, 32),
            (30, 500, 64, 32),
            (448, 448, 448, 224),
            (1000, 700, 448, 224),
            (65, 65, 64, 64),
            (10, 10, 5, 3),
        ] {
            let got: Vec<_> = slide_windows(h, w, Some(Window { size: crop, stride }))
                .unwrap()
                .iter()
                .map(|b| (b.y0, b.x0, b.height, b.width))
                .collect();
            assert_eq!(
                got,
                mmseg(h, w, crop, stride),
                "{h}×{w} crop {crop} stride {stride}"
            );
        }
    }

    #[test]
    fn plan_checks_limits_from_sizes_alone() {
        let paper = EncodeOptions::paper();
        // 640×427 photo, paper protocol: 448×671 → 2 windows of 448² (784 patches each).
        let p = plan(427, 640, &paper, 16).unwrap();
        assert_eq!((p.height, p.width), (448, 671));
        assert_eq!(p.windows, slide_windows(448, 671, paper.window).unwrap());
        assert_eq!((p.window_patches, p.total_patches), (784, 2 * 784));
        // One pass over a thin strip: the per-pass budget, before anything is resized.
        let one = EncodeOptions {
            short_side: Some(448),
            window: None,
        };
        match plan(1, 16384, &one, 16) {
            Err(Error::GridTooLarge {
                width,
                height,
                grid_h,
                grid_w,
                max_tokens,
            }) => {
                assert_eq!((width, height), (7_340_032, 448));
                assert_eq!((grid_h, grid_w, max_tokens), (28, 458_752, MAX_PATCHES));
            }
            r => panic!("{r:?}"),
        }
        // With windows each pass fits, but 32767 of them do not.
        let e = plan(1, 16384, &paper, 16).unwrap_err().to_string();
        assert!(e.contains("32767 windows of 448×448 px"), "{e}");
        assert!(e.contains("too elongated"), "{e}");
        // A window larger than the per-pass budget.
        let big = EncodeOptions {
            short_side: None,
            window: Some(Window {
                size: 2048,
                stride: 1024,
            }),
        };
        assert!(matches!(
            plan(3000, 3000, &big, 16),
            Err(Error::GridTooLarge { .. })
        ));
        // Right at the total budget: 16 windows of 64×64 patches.
        let w = Window {
            size: 1024,
            stride: 1024,
        };
        let o = EncodeOptions {
            short_side: None,
            window: Some(w),
        };
        assert_eq!(
            plan(4096, 4096, &o, 16).unwrap().total_patches,
            MAX_TOTAL_PATCHES
        );
        assert!(plan(4096, 4097, &o, 16).is_err());
        // Absurd sizes saturate instead of wrapping.
        let huge = EncodeOptions {
            short_side: Some(usize::MAX / 2),
            window: Some(Window {
                size: 448,
                stride: 224,
            }),
        };
        assert!(plan(3, 5, &huge, 16).is_err());
        assert!(plan(0, 5, &paper, 16).is_err());
        assert!(plan(5, 5, &paper, 0).is_err());
        assert!(plan(
            5,
            5,
            &EncodeOptions {
                short_side: Some(0),
                window: None
            },
            16
        )
        .is_err());
    }

    #[test]
    fn paper_layout_and_coverage() {
        let b = slide_windows(
            448,
            597,
            Some(Window {
                size: 448,
                stride: 224,
            }),
        )
        .unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!((b[1].x0, b[1].width), (149, 448)); // last window shifted back to the border
        let one = slide_windows(45, 61, None).unwrap();
        assert_eq!(
            one,
            vec![PixelBox {
                y0: 0,
                x0: 0,
                height: 45,
                width: 61
            }]
        );
        assert!(slide_windows(0, 3, None).is_err());
        assert!(slide_windows(3, 3, Some(Window { size: 2, stride: 0 })).is_err());
        assert!(slide_windows(10, 10, Some(Window { size: 3, stride: 5 })).is_err());
    }
}

//! Colouring of label maps (segmentation labels or K-Means clusters): a fixed palette,
//! RGBA overlays, plain colour maps, blends over the photo, and per-label area fractions.
//!
//! Label maps are row-major `Vec<u32>` of `width · height` entries, as produced by
//! [`crate::pipeline::Segmentation`] and [`crate::kmeans::KMeans`].

use crate::error::{Error, Result};

/// 32 colours picked greedily to maximise the smallest CIELAB distance between any two
/// (min ΔE\*ab ≈ 30), lightness kept in 30..88 so every colour reads over both dark and light
/// photos. Index `i` colours label / cluster `i`; beyond 32 see [`color`].
pub const PALETTE: [[u8; 3]; 32] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [255, 225, 25],
    [0, 0, 255],
    [255, 120, 255],
    [255, 210, 195],
    [90, 75, 0],
    [0, 240, 240],
    [0, 255, 0],
    [120, 45, 90],
    [240, 120, 0],
    [0, 60, 195],
    [0, 105, 90],
    [255, 135, 180],
    [195, 195, 105],
    [210, 0, 255],
    [210, 180, 255],
    [255, 0, 0],
    [195, 105, 75],
    [255, 0, 150],
    [165, 240, 60],
    [135, 180, 195],
    [135, 0, 150],
    [15, 90, 0],
    [105, 90, 90],
    [120, 195, 150],
    [120, 90, 180],
    [180, 135, 0],
    [150, 15, 0],
    [0, 240, 180],
    [45, 135, 255],
];

/// Colour of label `i`: the fixed [`PALETTE`], then golden-angle hues for larger indices
/// (still deterministic, only less carefully separated).
pub fn color(i: u32) -> [u8; 3] {
    if let Some(c) = PALETTE.get(i as usize) {
        return *c;
    }
    let hue = (i as f32 * 137.507_77).rem_euclid(360.0);
    let (s, v) = if i.is_multiple_of(2) {
        (0.75, 0.95)
    } else {
        (0.55, 0.75)
    };
    hsv_to_rgb(hue, s, v)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [u8; 3] {
    let c = v * s;
    let hp = h / 60.0;
    let x = c * (1.0 - (hp.rem_euclid(2.0) - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    let q = |u: f32| ((u + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    [q(r), q(g), q(b)]
}

/// `#rrggbb` of label `i`, for legends.
pub fn color_hex(i: u32) -> String {
    let [r, g, b] = color(i);
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn check_len(label_map: &[u32], width: usize, height: usize) -> Result<()> {
    if width.checked_mul(height) != Some(label_map.len()) {
        return Err(Error::invalid(
            "label_map",
            format!("{} entries for a {width}×{height} image", label_map.len()),
        ));
    }
    Ok(())
}

fn alpha_of(opacity: f32) -> u8 {
    if opacity.is_nan() {
        return 0;
    }
    (opacity.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// RGBA overlay: each pixel gets its label's colour with alpha = `opacity` (0..=1). With
/// `isolate = Some(l)` only label `l` is drawn; every other pixel is fully transparent.
pub fn overlay_rgba(
    label_map: &[u32],
    width: usize,
    height: usize,
    opacity: f32,
    isolate: Option<u32>,
) -> Result<Vec<u8>> {
    check_len(label_map, width, height)?;
    let a = alpha_of(opacity);
    let mut out = Vec::with_capacity(label_map.len() * 4);
    for &l in label_map {
        if isolate.is_some_and(|k| k != l) {
            out.extend_from_slice(&[0, 0, 0, 0]);
        } else {
            let [r, g, b] = color(l);
            out.extend_from_slice(&[r, g, b, a]);
        }
    }
    Ok(out)
}

/// Opaque RGB colour map of the labels.
pub fn colorize(label_map: &[u32], width: usize, height: usize) -> Result<Vec<u8>> {
    check_len(label_map, width, height)?;
    let mut out = Vec::with_capacity(label_map.len() * 3);
    for &l in label_map {
        out.extend_from_slice(&color(l));
    }
    Ok(out)
}

/// The overlay composited over an RGB photo (`rgb.len() == 3·width·height`):
/// `out = (1 − α)·photo + α·colour`, with the same `isolate` rule as [`overlay_rgba`].
pub fn blend_rgb(
    rgb: &[u8],
    label_map: &[u32],
    width: usize,
    height: usize,
    opacity: f32,
    isolate: Option<u32>,
) -> Result<Vec<u8>> {
    check_len(label_map, width, height)?;
    if rgb.len() != label_map.len() * 3 {
        return Err(Error::invalid(
            "image",
            format!(
                "{} bytes of RGB for a {width}×{height} label map",
                rgb.len()
            ),
        ));
    }
    let a = alpha_of(opacity) as u32;
    let mut out = Vec::with_capacity(rgb.len());
    for (px, &l) in rgb.chunks_exact(3).zip(label_map) {
        if isolate.is_some_and(|k| k != l) {
            out.extend_from_slice(px);
            continue;
        }
        let c = color(l);
        for (p, q) in px.iter().zip(c) {
            // integer blend, rounded: (p·(255−a) + q·a) / 255
            out.push(((*p as u32 * (255 - a) + q as u32 * a + 127) / 255) as u8);
        }
    }
    Ok(out)
}

/// Fraction of pixels per label `0..n_labels` (labels ≥ `n_labels` count in the total only).
pub fn area_fractions(label_map: &[u32], n_labels: usize) -> Vec<f32> {
    let mut counts = vec![0u64; n_labels];
    for &l in label_map {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1;
        }
    }
    let total = label_map.len().max(1) as f64;
    counts.iter().map(|&c| (c as f64 / total) as f32).collect()
}

/// Nearest-neighbour upscaling of a `gw × gh` grid map (e.g. K-Means clusters per patch) to
/// `width × height` pixels, cell centres aligned like `F.interpolate(mode="nearest")`.
pub fn upscale_nearest(
    grid: &[u32],
    gw: usize,
    gh: usize,
    width: usize,
    height: usize,
) -> Result<Vec<u32>> {
    check_len(grid, gw, gh)?;
    if gw == 0 || gh == 0 {
        return Err(Error::invalid("grid", "empty grid"));
    }
    let xs: Vec<usize> = (0..width)
        .map(|x| (x * gw / width.max(1)).min(gw - 1))
        .collect();
    let mut out = Vec::with_capacity(width * height);
    for y in 0..height {
        let gy = (y * gh / height.max(1)).min(gh - 1);
        let row = &grid[gy * gw..][..gw];
        out.extend(xs.iter().map(|&gx| row[gx]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(c: [u8; 3]) -> [f64; 3] {
        let lin = |u: u8| {
            let v = u as f64 / 255.0;
            if v > 0.04045 {
                ((v + 0.055) / 1.055).powf(2.4)
            } else {
                v / 12.92
            }
        };
        let (r, g, b) = (lin(c[0]), lin(c[1]), lin(c[2]));
        let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
        let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
        let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
        let f = |t: f64| {
            if t > 0.008856 {
                t.cbrt()
            } else {
                7.787 * t + 16.0 / 116.0
            }
        };
        [
            116.0 * f(y) - 16.0,
            500.0 * (f(x) - f(y)),
            200.0 * (f(y) - f(z)),
        ]
    }

    #[test]
    fn palette_is_distinct() {
        let mut min = f64::MAX;
        for i in 0..64u32 {
            for j in 0..i {
                let (a, b) = (lab(color(i)), lab(color(j)));
                let d =
                    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt();
                if i < 32 {
                    min = min.min(d);
                }
                assert_ne!(color(i), color(j), "{i} and {j} collide");
            }
        }
        assert!(min > 25.0, "closest pair of the fixed palette ΔE {min}");
        assert_eq!(color_hex(0), "#e6194b");
    }

    #[test]
    fn overlay_and_isolate() {
        let map = [0, 1, 2, 1, 0, 3];
        let o = overlay_rgba(&map, 3, 2, 0.5, None).unwrap();
        assert_eq!(o.len(), 24);
        assert_eq!(
            &o[4..8],
            &[PALETTE[1][0], PALETTE[1][1], PALETTE[1][2], 128]
        );
        let iso = overlay_rgba(&map, 3, 2, 1.0, Some(1)).unwrap();
        assert_eq!(&iso[0..4], &[0, 0, 0, 0]);
        assert_eq!(iso[7], 255);
        assert_eq!(
            &iso[12..16],
            &[PALETTE[1][0], PALETTE[1][1], PALETTE[1][2], 255]
        );
        assert_eq!(overlay_rgba(&map, 3, 2, f32::NAN, None).unwrap()[3], 0);
        assert!(overlay_rgba(&map, 4, 2, 0.5, None).is_err());
        assert!(overlay_rgba(&map, usize::MAX, 2, 0.5, None).is_err());
    }

    #[test]
    fn colorize_and_blend() {
        let map = [4, 0];
        assert_eq!(colorize(&map, 2, 1).unwrap(), [0, 0, 255, 230, 25, 75]);
        let photo = [255, 255, 255, 10, 20, 30];
        let full = blend_rgb(&photo, &map, 2, 1, 1.0, None).unwrap();
        assert_eq!(full, colorize(&map, 2, 1).unwrap());
        assert_eq!(blend_rgb(&photo, &map, 2, 1, 0.0, None).unwrap(), photo);
        let half = blend_rgb(&photo, &map, 2, 1, 0.5, Some(4)).unwrap();
        assert_eq!(&half[..3], &[127, 127, 255]);
        assert_eq!(&half[3..], &photo[3..]);
        assert!(blend_rgb(&photo[..5], &map, 2, 1, 0.5, None).is_err());
    }

    #[test]
    fn fractions() {
        let f = area_fractions(&[0, 0, 1, 3, 0, 1, 9, 0], 4);
        assert_eq!(f, vec![0.5, 0.25, 0.0, 0.125]);
        assert_eq!(area_fractions(&[], 2), vec![0.0, 0.0]);
    }

    #[test]
    fn nearest_upscale() {
        let g = [1, 2, 3, 4]; // 2×2
        let up = upscale_nearest(&g, 2, 2, 4, 3).unwrap();
        assert_eq!(up, vec![1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4]);
        assert!(upscale_nearest(&g, 3, 2, 4, 4).is_err());
    }
}

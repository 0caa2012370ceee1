//! PAMR, pixel-adaptive mask refinement (Araslanov & Roth, "Single-Stage Semantic Segmentation
//! from Image Labels", CVPR 2020; `visinf/1-stage-wseg`, `models/mods/pamr.py`), as NACLIP and
//! SCLIP apply it at test time (`PAMR(10, dilations=(8, 16))` on the full-resolution score maps).
//!
//! For every pixel `i` and every dilation `d`, the 8 neighbours at offset `d` (replicate padding):
//! * per image channel `c`, `σ_c(i)` = the standard deviation (unbiased, as `torch.std`) of the
//!   `9·D` values of the 3×3 dilated windows *including* the centre, over all dilations;
//! * `a_p(i) = mean_c( −|I_c(i) − I_c(n_p(i))| / (1e-8 + 0.1·σ_c(i)) )` for the `8·D`
//!   neighbours, then `softmax` over them;
//! * `iterations` times: `m_l(i) ← Σ_p a_p(i) · m_l(n_p(i))` for every label `l`.
//!
//! Upstream first resizes the mask to the image with `align_corners=True`; here both come at the
//! same size (the caller resizes), where that resize is the identity. The affinities are
//! invariant to a per-channel affine change of the image (the `1e-8` aside), so the guide may be
//! RGB in `[0, 1]` or CLIP-normalised.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::par;

/// Dilations of NACLIP's and SCLIP's test-time PAMR (`pamr_stride=(8, 16)`); the training-time
/// default of `1-stage-wseg` is `(1, 2, 4, 8, 12, 24)`.
pub const PAMR_DILATIONS: [usize; 2] = [8, 16];
/// Iterations of NACLIP's and SCLIP's test-time PAMR (`pamr_steps=10`).
pub const PAMR_ITERATIONS: usize = 10;
/// Most iterations accepted from a user.
pub const MAX_PAMR_ITERATIONS: usize = 50;
/// PAMR runs at the processed image's size, reduced (aspect kept) to at most this many pixels:
/// its cost is `8·D·iterations` multiply-adds per pixel and label.
pub const PAMR_MAX_PIXELS: usize = 1 << 19;

/// Refinement of the per-label probabilities before the argmax. Text form (CLI, JSON):
/// `none`, `pamr` ([`PAMR_ITERATIONS`]) or `pamr:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Refine {
    /// Patch probabilities upsampled bilinearly, nothing else.
    #[default]
    None,
    /// PAMR with `iterations` rounds, guided by the photo.
    Pamr { iterations: usize },
}

impl Refine {
    /// PAMR with the upstream iteration count.
    pub const PAMR: Refine = Refine::Pamr {
        iterations: PAMR_ITERATIONS,
    };

    /// One line for a setting or `--help`.
    pub fn description(self) -> &'static str {
        match self {
            Refine::None => "no refinement: patch probabilities upsampled bilinearly",
            Refine::Pamr { .. } => {
                "PAMR: probabilities diffused along the photo's colour edges (sharper outlines)"
            }
        }
    }

    /// Reject iteration counts outside `1..=MAX_PAMR_ITERATIONS`.
    pub fn validate(self) -> Result<()> {
        match self {
            Refine::Pamr { iterations } if !(1..=MAX_PAMR_ITERATIONS).contains(&iterations) => {
                Err(Error::invalid(
                    "refine",
                    format!("PAMR iterations {iterations} outside 1..={MAX_PAMR_ITERATIONS}"),
                ))
            }
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Refine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refine::None => f.write_str("none"),
            Refine::Pamr { iterations } if *iterations == PAMR_ITERATIONS => f.write_str("pamr"),
            Refine::Pamr { iterations } => write!(f, "pamr:{iterations}"),
        }
    }
}

impl std::str::FromStr for Refine {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "refine",
                format!("`{s}` is not one of none, pamr, pamr:N (N iterations, 1..={MAX_PAMR_ITERATIONS})"),
            )
        };
        let r = match s.trim() {
            "none" => Refine::None,
            "pamr" => Refine::PAMR,
            t => {
                let n = t.strip_prefix("pamr:").ok_or_else(bad)?;
                Refine::Pamr {
                    iterations: n.parse().map_err(|_| bad())?,
                }
            }
        };
        r.validate().map_err(|_| bad())?;
        Ok(r)
    }
}

/// The size PAMR runs at for a `h × w` map: unchanged up to [`PAMR_MAX_PIXELS`], else scaled
/// down with the aspect kept.
pub fn working_size(h: usize, w: usize) -> (usize, usize) {
    let n = h.saturating_mul(w);
    if n <= PAMR_MAX_PIXELS {
        return (h, w);
    }
    let s = (PAMR_MAX_PIXELS as f64 / n as f64).sqrt();
    let fit = |v: usize| ((v as f64 * s).floor() as usize).max(1);
    (fit(h), fit(w))
}

/// Source index along one axis of length `n` at offset `off` from `i`, clamped (replicate).
#[inline]
fn clamp(i: usize, off: isize, n: usize) -> usize {
    (i as isize + off).clamp(0, n as isize - 1) as usize
}

/// The 8 offsets of a 3×3 window with dilation `d`, in upstream's kernel order.
fn neighbours(d: usize) -> [(isize, isize); 8] {
    let d = d as isize;
    [
        (-d, -d),
        (-d, 0),
        (-d, d),
        (0, -d),
        (0, d),
        (d, -d),
        (d, 0),
        (d, d),
    ]
}

/// Refine `probs` (`[L, h, w]` row-major, in place) guided by `image` (`[C, h, w]`, e.g. RGB).
pub fn pamr(
    image: &[f32],
    channels: usize,
    probs: &mut [f32],
    labels: usize,
    (h, w): (usize, usize),
    iterations: usize,
    dilations: &[usize],
) -> Result<()> {
    let n = h * w;
    if n == 0 || channels == 0 || image.len() != channels * n || probs.len() != labels * n {
        return Err(Error::invalid(
            "pamr",
            format!(
                "image of {} values for {channels}×{h}×{w}, probabilities of {} for {labels}×{h}×{w}",
                image.len(),
                probs.len()
            ),
        ));
    }
    if dilations.is_empty() || iterations == 0 {
        return Ok(());
    }
    let offsets: Vec<(isize, isize)> = dilations.iter().flat_map(|&d| neighbours(d)).collect();
    let p = offsets.len();
    // Affinities, plane by neighbour: aff[k·n + i].
    let mut aff = vec![0f32; p * n];
    let windows = (9 * dilations.len()) as f32;
    for c in 0..channels {
        let img = &image[c * n..][..n];
        // σ_c(i) over the 9·D window values (centre counted once per dilation), unbiased.
        let mut sq = vec![0f32; n];
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let centre = img[i];
                let (mut s, mut s2) = (centre * dilations.len() as f32, 0f32);
                for &(dy, dx) in &offsets {
                    s += img[clamp(y, dy, h) * w + clamp(x, dx, w)];
                }
                let mean = s / windows;
                s2 += (centre - mean) * (centre - mean) * dilations.len() as f32;
                for &(dy, dx) in &offsets {
                    let v = img[clamp(y, dy, h) * w + clamp(x, dx, w)] - mean;
                    s2 += v * v;
                }
                sq[i] = (s2 / (windows - 1.0)).sqrt();
            }
        }
        for (k, &(dy, dx)) in offsets.iter().enumerate() {
            let plane = &mut aff[k * n..][..n];
            for y in 0..h {
                let ys = clamp(y, dy, h) * w;
                for x in 0..w {
                    let i = y * w + x;
                    let diff = (img[i] - img[ys + clamp(x, dx, w)]).abs();
                    plane[i] -= diff / (1e-8 + 0.1 * sq[i]);
                }
            }
        }
    }
    // mean over channels, softmax over the neighbours
    let inv_c = 1.0 / channels as f32;
    {
        let mut col = vec![0f32; p];
        for i in 0..n {
            let mut max = f32::NEG_INFINITY;
            for (k, v) in col.iter_mut().enumerate() {
                *v = aff[k * n + i] * inv_c;
                max = max.max(*v);
            }
            let mut total = 0f32;
            for v in col.iter_mut() {
                *v = (*v - max).exp();
                total += *v;
            }
            for (k, v) in col.iter().enumerate() {
                aff[k * n + i] = v / total;
            }
        }
    }
    // Labels in parallel, each its own iterations.
    let aff = &aff;
    let offsets = &offsets;
    par::for_each_chunk(probs, n, |_, plane| {
        let mut next = vec![0f32; n];
        for _ in 0..iterations {
            next.iter_mut().for_each(|v| *v = 0.0);
            for (k, &(dy, dx)) in offsets.iter().enumerate() {
                let a = &aff[k * n..][..n];
                for y in 0..h {
                    let src = &plane[clamp(y, dy, h) * w..][..w];
                    let dst = &mut next[y * w..][..w];
                    let ar = &a[y * w..][..w];
                    // interior columns: a contiguous shifted slice
                    let lo = (-dx).max(0) as usize;
                    let hi = (w as isize - dx.max(0)).max(lo as isize) as usize;
                    let hi = hi.min(w);
                    // left border: source columns clamped
                    let end = lo.min(w);
                    for (x, (d, &av)) in dst[..end].iter_mut().zip(&ar[..end]).enumerate() {
                        *d += av * src[clamp(x, dx, w)];
                    }
                    if lo < hi {
                        let s = &src[(lo as isize + dx) as usize..][..hi - lo];
                        for ((d, &av), &sv) in dst[lo..hi].iter_mut().zip(&ar[lo..hi]).zip(s) {
                            *d += av * sv;
                        }
                    }
                    // right border
                    let start = hi.max(lo).min(w);
                    for (x, (d, &av)) in dst[start..].iter_mut().zip(&ar[start..]).enumerate() {
                        *d += av * src[clamp(start + x, dx, w)];
                    }
                }
            }
            plane.copy_from_slice(&next);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Literal transcription of the upstream module on small inputs (neighbour by neighbour,
    /// per channel), to check the shifted-slice loops and the std.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        image: &[f32],
        c: usize,
        probs: &[f32],
        l: usize,
        h: usize,
        w: usize,
        it: usize,
        dil: &[usize],
    ) -> Vec<f32> {
        let n = h * w;
        let at = |ch: usize, y: isize, x: isize| -> f32 {
            let y = y.clamp(0, h as isize - 1) as usize;
            let x = x.clamp(0, w as isize - 1) as usize;
            image[ch * n + y * w + x]
        };
        let mut aff = vec![vec![0f64; 8 * dil.len()]; n];
        for y in 0..h as isize {
            for x in 0..w as isize {
                let i = (y as usize) * w + x as usize;
                for ch in 0..c {
                    let mut vals = vec![];
                    for &d in dil {
                        let d = d as isize;
                        for ky in -1..=1 {
                            for kx in -1..=1 {
                                vals.push(at(ch, y + ky * d, x + kx * d) as f64);
                            }
                        }
                    }
                    let m = vals.iter().sum::<f64>() / vals.len() as f64;
                    let sd = (vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>()
                        / (vals.len() - 1) as f64)
                        .sqrt();
                    let mut k = 0;
                    for &d in dil {
                        for (dy, dx) in neighbours(d) {
                            let diff = (at(ch, y, x) - at(ch, y + dy, x + dx)).abs() as f64;
                            aff[i][k] += -diff / (1e-8 + 0.1 * sd) / c as f64;
                            k += 1;
                        }
                    }
                }
                let mx = aff[i].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let tot: f64 = aff[i].iter().map(|v| (v - mx).exp()).sum();
                aff[i].iter_mut().for_each(|v| *v = (*v - mx).exp() / tot);
            }
        }
        let mut m: Vec<f64> = probs.iter().map(|&v| v as f64).collect();
        for _ in 0..it {
            let mut next = vec![0f64; l * n];
            for li in 0..l {
                for y in 0..h as isize {
                    for x in 0..w as isize {
                        let i = (y as usize) * w + x as usize;
                        let mut k = 0;
                        for &d in dil {
                            for (dy, dx) in neighbours(d) {
                                let yy = (y + dy).clamp(0, h as isize - 1) as usize;
                                let xx = (x + dx).clamp(0, w as isize - 1) as usize;
                                next[li * n + i] += aff[i][k] * m[li * n + yy * w + xx];
                                k += 1;
                            }
                        }
                    }
                }
            }
            m = next;
        }
        m.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn matches_a_literal_transcription() {
        let (h, w, c, l) = (13, 21, 3, 4);
        let mut s = 7u32;
        let mut rnd = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32
        };
        let image: Vec<f32> = (0..c * h * w)
            .map(|_| (rnd() * 8.0).floor() / 8.0)
            .collect();
        let probs: Vec<f32> = (0..l * h * w).map(|_| rnd()).collect();
        for dil in [&[1usize][..], &[8, 16], &[1, 2, 4, 8, 12, 24]] {
            let want = naive(&image, c, &probs, l, h, w, 3, dil);
            let mut got = probs.clone();
            pamr(&image, c, &mut got, l, (h, w), 3, dil).unwrap();
            let d = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "dilations {dil:?}: max |Δ| {d}");
        }
    }

    #[test]
    fn flat_image_averages_neighbours_uniformly_and_keeps_sums() {
        let (h, w) = (5, 6);
        let image = vec![0.5f32; 3 * h * w];
        let mut probs: Vec<f32> = (0..2 * h * w)
            .map(|i| if i < h * w { 1.0 } else { 0.0 })
            .collect();
        pamr(&image, 3, &mut probs, 2, (h, w), 2, &[1]).unwrap();
        // a convex combination per pixel: the two planes still sum to 1
        for i in 0..h * w {
            assert!((probs[i] + probs[h * w + i] - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn refine_text_form_round_trips_and_rejects_bad_counts() {
        for (s, r) in [
            ("none", Refine::None),
            ("pamr", Refine::PAMR),
            ("pamr:3", Refine::Pamr { iterations: 3 }),
        ] {
            assert_eq!(s.parse::<Refine>().unwrap(), r);
            assert_eq!(r.to_string(), s);
        }
        for bad in ["pamr:0", "pamr:51", "pamr:x", "crf", ""] {
            let e = bad.parse::<Refine>().unwrap_err().to_string();
            assert!(e.contains("none, pamr, pamr:N"), "{bad}: {e}");
        }
        assert_eq!(working_size(336, 448), (336, 448));
        let (h, w) = working_size(3000, 4000);
        assert!(h * w <= PAMR_MAX_PIXELS && (w as f64 / h as f64 - 4.0 / 3.0).abs() < 0.01);
    }
}

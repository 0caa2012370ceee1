//! Spherical K-Means (cosine similarity) on dense patch features, for the CLIPSelf-style
//! visualisation (Wu et al., "CLIPSelf", arXiv 2310.01403, Fig. 1): clustering each image's patch
//! features shows how object-shaped they are.
//!
//! Features are L2-normalised; a point joins the centroid with the largest dot product and
//! centroids are re-normalised means. Seeding is k-means++ (Arthur & Vassilvitskii 2007) with the
//! squared chord distance `‖x − c‖² = 2 − 2·cos` and a small built-in PRNG, and every reduction is
//! a plain sequential f32 loop, so native and wasm32 builds give bit-identical assignments.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Allowed cluster counts.
pub const K_RANGE: std::ops::RangeInclusive<usize> = 2..=16;

#[derive(Debug, Clone, PartialEq)]
pub struct KMeansOptions {
    pub k: usize,
    pub max_iter: usize,
    /// Stop when no assignment changes or every centroid moves less than this (chord length).
    pub tol: f32,
    pub seed: u64,
}

impl KMeansOptions {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            max_iter: 50,
            tol: 1e-5,
            seed: 0x00C0_FFEE,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    /// Cluster index per point, in input order.
    pub assignments: Vec<u32>,
    /// `k` unit-norm centroids, each of the feature dimension.
    pub centroids: Vec<Vec<f32>>,
    /// Iterations run (assignment + update rounds).
    pub iterations: usize,
    /// Σ (1 − cos) of each point to its centroid.
    pub inertia: f32,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = 0f32;
    for (x, y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// Normalise in place; an all-zero vector stays zero.
fn normalize(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        for x in v.iter_mut() {
            *x /= n;
        }
    }
}

/// Index and cosine of the centroid closest to `x` (ties keep the lowest index).
fn nearest(x: &[f32], centroids: &[Vec<f32>]) -> (usize, f32) {
    let (mut best, mut best_sim) = (0usize, f32::NEG_INFINITY);
    for (c, cen) in centroids.iter().enumerate() {
        let s = dot(x, cen);
        if s > best_sim {
            best = c;
            best_sim = s;
        }
    }
    (best, best_sim)
}

/// K-Means on a `[.., d]` feature tensor (e.g. a `[gh, gw, E]` patch grid), rows in order.
pub fn kmeans_tensor(features: &Tensor, opts: &KMeansOptions) -> Result<KMeans> {
    let d = match features.dims().last() {
        Some(&d) if features.rank() >= 2 => d,
        _ => {
            return Err(Error::invalid(
                "features",
                format!("expected a [.., d] tensor, got {:?}", features.dims()),
            ))
        }
    };
    let data = features
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    kmeans(&data, d, opts)
}

/// K-Means on `n` row-major points of dimension `d` (`data.len() == n·d`).
pub fn kmeans(data: &[f32], d: usize, opts: &KMeansOptions) -> Result<KMeans> {
    let k = opts.k;
    if !K_RANGE.contains(&k) {
        return Err(Error::invalid(
            "k",
            format!(
                "{k} clusters requested, allowed {}..={}",
                K_RANGE.start(),
                K_RANGE.end()
            ),
        ));
    }
    if d == 0 || data.is_empty() || !data.len().is_multiple_of(d) {
        return Err(Error::invalid(
            "features",
            format!("{} values do not form non-empty rows of {d}", data.len()),
        ));
    }
    let n = data.len() / d;
    if n < k {
        return Err(Error::invalid(
            "features",
            format!("{n} points cannot form {k} clusters"),
        ));
    }
    if data.iter().any(|x| !x.is_finite()) {
        return Err(Error::invalid("features", "non-finite value"));
    }
    let mut x = data.to_vec();
    for row in x.chunks_exact_mut(d) {
        normalize(row);
    }
    let row = |i: usize| &x[i * d..(i + 1) * d];

    // --- k-means++ seeding ------------------------------------------------------------
    let mut rng = SplitMix64(opts.seed);
    let mut centroids: Vec<Vec<f32>> = Vec::with_capacity(k);
    let first = (rng.next_u64() % n as u64) as usize;
    centroids.push(row(first).to_vec());
    // squared distance of each point to its nearest chosen centre: 2 − 2·cos, clamped at 0
    let mut dist: Vec<f32> = (0..n)
        .map(|i| (2.0 - 2.0 * dot(row(i), &centroids[0])).max(0.0))
        .collect();
    while centroids.len() < k {
        let total: f64 = dist.iter().map(|&v| v as f64).sum();
        let pick = if total > 0.0 {
            let target = rng.next_f64() * total;
            let mut acc = 0f64;
            let mut chosen = n - 1;
            for (i, &v) in dist.iter().enumerate() {
                acc += v as f64;
                if acc > target && v > 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        } else {
            // every point coincides with a centre: any point will do
            (rng.next_u64() % n as u64) as usize
        };
        let c = row(pick).to_vec();
        for (i, dv) in dist.iter_mut().enumerate() {
            *dv = dv.min((2.0 - 2.0 * dot(row(i), &c)).max(0.0));
        }
        centroids.push(c);
    }

    // --- Lloyd iterations ---------------------------------------------------------------
    let mut assignments = vec![u32::MAX; n];
    let mut sims = vec![0f32; n];
    let mut iterations = 0;
    for _ in 0..opts.max_iter.max(1) {
        iterations += 1;
        let mut changed = false;
        for (i, (a, sim)) in assignments.iter_mut().zip(sims.iter_mut()).enumerate() {
            let (best, best_sim) = nearest(row(i), &centroids);
            if *a != best as u32 {
                *a = best as u32;
                changed = true;
            }
            *sim = best_sim;
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0f32; d]; k];
        let mut counts = vec![0usize; k];
        for (i, &a) in assignments.iter().enumerate() {
            let a = a as usize;
            counts[a] += 1;
            for (s, v) in sums[a].iter_mut().zip(row(i)) {
                *s += v;
            }
        }
        let mut max_shift = 0f32;
        let mut taken = vec![false; n];
        for c in 0..k {
            let mut new = std::mem::take(&mut sums[c]);
            if counts[c] == 0 {
                // empty cluster: restart it at the point worst served by its centroid
                let mut worst = None;
                for i in 0..n {
                    if !taken[i] && worst.is_none_or(|w: usize| sims[i] < sims[w]) {
                        worst = Some(i);
                    }
                }
                let w = worst.unwrap_or(0);
                taken[w] = true;
                sims[w] = f32::INFINITY;
                new = row(w).to_vec();
            }
            normalize(&mut new);
            let shift = (2.0 - 2.0 * dot(&new, &centroids[c])).max(0.0).sqrt();
            max_shift = max_shift.max(shift);
            centroids[c] = new;
        }
        if max_shift < opts.tol {
            break;
        }
    }
    // final assignment against the final centroids
    let mut inertia = 0f32;
    for (i, a) in assignments.iter_mut().enumerate() {
        let (best, best_sim) = nearest(row(i), &centroids);
        *a = best as u32;
        inertia += 1.0 - best_sim;
    }
    Ok(KMeans {
        assignments,
        centroids,
        iterations,
        inertia,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `per` noisy points around each of `dirs` orthogonal-ish directions, interleaved.
    fn blobs(k: usize, per: usize, d: usize, noise: f32, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = SplitMix64(seed);
        let mut centres = Vec::new();
        for c in 0..k {
            let mut v = vec![0f32; d];
            v[c % d] = 1.0;
            v[(c * 7 + 3) % d] += 0.5;
            centres.push(v);
        }
        let (mut data, mut truth) = (Vec::new(), Vec::new());
        for i in 0..per * k {
            let c = i % k;
            let scale = 1.0 + (i % 3) as f32; // norms vary: cosine must not care
            for &v in &centres[c] {
                data.push((v + noise * (rng.next_f64() as f32 - 0.5)) * scale);
            }
            truth.push(c);
        }
        (data, truth)
    }

    fn same_partition(a: &[u32], b: &[usize]) -> bool {
        let mut map = std::collections::HashMap::new();
        let mut inv = std::collections::HashMap::new();
        a.iter()
            .zip(b)
            .all(|(&x, &y)| *map.entry(x).or_insert(y) == y && *inv.entry(y).or_insert(x) == x)
    }

    #[test]
    fn recovers_known_clusters() {
        for k in [2, 5, 8] {
            let (data, truth) = blobs(k, 40, 32, 0.3, k as u64);
            let r = kmeans(&data, 32, &KMeansOptions::new(k)).unwrap();
            assert!(same_partition(&r.assignments, &truth), "k={k}");
            assert_eq!(r.centroids.len(), k);
            for c in &r.centroids {
                assert!((dot(c, c) - 1.0).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn deterministic() {
        let (data, _) = blobs(6, 50, 16, 1.5, 3);
        let a = kmeans(&data, 16, &KMeansOptions::new(6)).unwrap();
        let b = kmeans(&data, 16, &KMeansOptions::new(6)).unwrap();
        assert_eq!(a, b);
        let mut other = KMeansOptions::new(6);
        other.seed = 99;
        let c = kmeans(&data, 16, &other).unwrap();
        assert_eq!(c.assignments.len(), a.assignments.len());
    }

    #[test]
    fn rejects_bad_input() {
        let data = vec![1.0f32; 40];
        assert!(kmeans(&data, 4, &KMeansOptions::new(1)).is_err());
        assert!(kmeans(&data, 4, &KMeansOptions::new(17)).is_err());
        assert!(kmeans(&[], 4, &KMeansOptions::new(2)).is_err());
        assert!(kmeans(&data, 3, &KMeansOptions::new(2)).is_err()); // 40 % 3 != 0
        assert!(kmeans(&data[..4], 4, &KMeansOptions::new(2)).is_err()); // 1 point, k = 2
        let mut nan = data.clone();
        nan[5] = f32::NAN;
        assert!(kmeans(&nan, 4, &KMeansOptions::new(2)).is_err());
        let t = Tensor::zeros(5, DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(kmeans_tensor(&t, &KMeansOptions::new(2)).is_err());
    }

    #[test]
    fn degenerate_points_still_give_k_clusters() {
        // all points identical: seeding and empty-cluster handling must not loop or panic
        let data = vec![0.5f32; 8 * 10];
        let r = kmeans(&data, 8, &KMeansOptions::new(4)).unwrap();
        assert_eq!(r.assignments.len(), 10);
        assert_eq!(r.centroids.len(), 4);
    }

    #[test]
    fn tensor_input_matches_slice_input() {
        let (data, _) = blobs(3, 10, 8, 0.2, 1);
        let t = Tensor::from_vec(data.clone(), (5, 6, 8), &candle_core::Device::Cpu).unwrap();
        assert_eq!(
            kmeans_tensor(&t, &KMeansOptions::new(3)).unwrap(),
            kmeans(&data, 8, &KMeansOptions::new(3)).unwrap()
        );
    }
}

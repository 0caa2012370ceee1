//! Activation statistics of the linear layers, gathered while the f32 model runs on calibration
//! inputs (photos, class-name prompts). Per layer and input channel: the mean square (llama.cpp's
//! "importance matrix": the K-quant quantizers then weigh each weight's rounding error by how
//! large its input usually is) and the largest magnitude seen (the outlier channels).
//!
//! Enabled by [`crate::Vb::with_calibration`]; every [`crate::linear::Linear`] built from that
//! `Vb` records its inputs under its weight's tensor name.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Statistics of one layer's inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColumnStats {
    /// Σ x² per input channel.
    pub sum_sq: Vec<f64>,
    /// max |x| per input channel.
    pub max_abs: Vec<f32>,
    /// Input rows (tokens) seen.
    pub rows: u64,
}

impl ColumnStats {
    /// Mean square per input channel (the importance the K-quant quantizers take).
    pub fn importance(&self) -> Vec<f32> {
        let n = self.rows.max(1) as f64;
        self.sum_sq.iter().map(|s| (s / n) as f32).collect()
    }
}

/// Statistics of every recorded layer, keyed by weight tensor name. Shared by all layers of a
/// model (interior mutability: the forward passes take `&self`).
#[derive(Debug, Default)]
pub struct ActivationStats {
    layers: Mutex<BTreeMap<String, ColumnStats>>,
}

impl ActivationStats {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `x` (row-major, rows of `k` values) to layer `name`.
    pub fn record(&self, name: &str, x: &[f32], k: usize) {
        if k == 0 {
            return;
        }
        let mut layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        let s = layers.entry(name.to_string()).or_default();
        if s.sum_sq.len() != k {
            *s = ColumnStats {
                sum_sq: vec![0.0; k],
                max_abs: vec![0.0; k],
                rows: 0,
            };
        }
        for row in x.chunks_exact(k) {
            for ((acc, m), &v) in s.sum_sq.iter_mut().zip(s.max_abs.iter_mut()).zip(row) {
                *acc += v as f64 * v as f64;
                *m = m.max(v.abs());
            }
            s.rows += 1;
        }
    }

    /// The statistics of layer `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<ColumnStats> {
        self.layers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Names of the recorded layers, sorted.
    pub fn names(&self) -> Vec<String> {
        self.layers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_square_and_max_per_channel() {
        let s = ActivationStats::new();
        s.record("l", &[1.0, -2.0, 3.0, 0.0], 2);
        s.record("l", &[-1.0, 4.0], 2);
        let c = s.get("l").unwrap();
        assert_eq!(c.rows, 3);
        assert_eq!(c.max_abs, vec![3.0, 4.0]);
        assert_eq!(c.importance(), vec![11.0 / 3.0, 20.0 / 3.0]);
        assert!(s.get("other").is_none());
        assert_eq!(s.names(), vec!["l".to_string()]);
    }
}

//! Repetitions of a timed step and their summary (median, min, max, every sample), shared by the
//! steps of [`crate::suite`], the profile and the kernel micro-benchmarks.

use clipdino::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::timed;

/// Timed repetitions of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runs {
    pub runs: usize,
    #[serde(default = "yes")]
    pub warmup: bool,
}

fn yes() -> bool {
    true
}

impl Runs {
    pub fn new(runs: usize) -> Self {
        Self { runs, warmup: true }
    }
    pub fn once() -> Self {
        Self {
            runs: 1,
            warmup: false,
        }
    }
}

/// Median of a list of milliseconds (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// Median / min / max / samples of a list of milliseconds.
pub fn summary(v: &[f64]) -> Value {
    let min = v.iter().copied().min_by(f64::total_cmp);
    let max = v.iter().copied().max_by(f64::total_cmp);
    json!({
        "median_ms": median(v),
        "min_ms": min,
        "max_ms": max,
        "runs_ms": v,
    })
}

/// Run `f` (warm-up + `runs`) and return the timed samples and the last result.
pub fn repeat<T>(runs: Runs, mut f: impl FnMut() -> Result<T>) -> Result<(Vec<f64>, T)> {
    if runs.warmup {
        f()?;
    }
    let mut v = Vec::with_capacity(runs.runs);
    let mut last = None;
    for _ in 0..runs.runs.max(1) {
        let (ms, out) = timed(&mut f)?;
        v.push(ms);
        last = Some(out);
    }
    let last = last.ok_or_else(|| Error::invalid("runs", "no run"))?;
    Ok((v, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_summaries() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let s = summary(&[2.0, 5.0, 1.0]);
        assert_eq!(
            (s["min_ms"].as_f64(), s["max_ms"].as_f64()),
            (Some(1.0), Some(5.0))
        );
        let mut calls = 0;
        let (v, last) = repeat(Runs::new(3), || {
            calls += 1;
            Ok::<_, Error>(calls)
        })
        .unwrap();
        assert_eq!(
            (v.len(), last, calls),
            (3, 4, 4),
            "one warm-up, three timed"
        );
    }
}

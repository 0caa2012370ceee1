//! Where the image-tower time goes: the model's own forward pass
//! (`clipdino::clip::VisionTransformer::forward`) run with the model crate's per-op timing hook
//! ([`clipdino::timing`]), so the profile describes exactly the computation that ships, on the
//! loaded model's compute path. Candle's CPU ops are synchronous, so the time between two clock
//! reads around an op is the op's time.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use candle_core::Tensor;
use clipdino::clip::VisionOutput;
use clipdino::pipeline::Segmenter;
use clipdino::timing::{with_op_timer, OpTimer};
use clipdino::{Error, Result};
use serde_json::{json, Value};

use crate::clock::now_ms;
use crate::stats::{summary, Runs};

/// Accumulated time, FLOPs and calls per op name.
#[derive(Default)]
struct Ops {
    by_name: BTreeMap<&'static str, (f64, f64, usize)>,
}

impl OpTimer for Ops {
    fn now_ms(&self) -> f64 {
        now_ms()
    }

    fn record(&mut self, op: &'static str, ms: f64, flops: f64) {
        let e = self.by_name.entry(op).or_default();
        e.0 += ms;
        e.1 += flops;
        e.2 += 1;
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// One forward pass of the tower on `pixels` and the wall time between its progress calls:
/// `[stem + block 0, block 1, …, last block, ln_post + projections]` in ms.
fn forward(seg: &Segmenter, pixels: &Tensor) -> Result<(VisionOutput, Vec<f64>)> {
    let mut marks = vec![now_ms()];
    let out = seg
        .clip
        .vision
        .forward(pixels, seg.head_cfg.layer, &mut |_, _| marks.push(now_ms()))?;
    marks.push(now_ms());
    Ok((out, marks.windows(2).map(|w| w[1] - w[0]).collect()))
}

/// Time every op of the tower on `pixels` (`[1, 3, H, W]`, normalised) over `runs` runs (after a
/// warm-up), and check that the timed forward gives what the untimed one gives.
pub fn profile_tower(seg: &Segmenter, pixels: &Tensor, runs: Runs) -> Result<Value> {
    let (plain, _) = forward(seg, pixels)?;
    if runs.warmup {
        forward(seg, pixels)?;
    }
    let ops = Rc::new(RefCell::new(Ops::default()));
    let n = runs.runs.max(1);
    let mut totals = Vec::with_capacity(n);
    let mut blocks: Vec<f64> = Vec::new();
    let mut check = None;
    for _ in 0..n {
        let t = now_ms();
        let (out, block_ms) = with_op_timer(ops.clone(), || forward(seg, pixels))?;
        totals.push(now_ms() - t);
        blocks.resize(block_ms.len(), 0.0);
        for (a, b) in blocks.iter_mut().zip(&block_ms) {
            *a += b / n as f64;
        }
        if check.is_none() {
            check = Some(json!({
                "pooled": max_abs_diff(&out.pooled, &plain.pooled)?,
                "dense": max_abs_diff(&out.dense, &plain.dense)?,
                "inter": max_abs_diff(&out.inter, &plain.inter)?,
            }));
        }
    }
    let ops = Rc::try_unwrap(ops)
        .map_err(|_| Error::invalid("profile", "the op timer is still installed"))?
        .into_inner();
    let total: f64 = ops.by_name.values().map(|c| c.0).sum::<f64>() / n as f64;
    let mut rows: Vec<(&str, (f64, f64, usize))> = ops.by_name.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let rows: Vec<Value> = rows
        .iter()
        .map(|(name, (ms, flops, calls))| {
            let ms = ms / n as f64;
            let gflop = flops / n as f64 / 1e9;
            json!({
                "op": name,
                "ms": ms,
                "share": ms / total,
                "calls": calls / n,
                "gflop": gflop,
                "gflops_per_s": if gflop > 0.0 { Some(gflop / (ms / 1e3)) } else { None },
            })
        })
        .collect();
    let (_, _, hh, ww) = pixels.dims4()?;
    let p = seg.clip_cfg.vision.patch_size;
    let mut r = summary(&totals);
    r["input"] = json!([1, 3, hh, ww]);
    r["tokens"] = json!(hh / p * (ww / p) + 1);
    r["ops_ms_total"] = json!(total);
    r["ops"] = json!(rows);
    r["block_ms"] = json!(blocks);
    r["timed_vs_untimed_max_abs_diff"] = check.unwrap_or(Value::Null);
    Ok(r)
}

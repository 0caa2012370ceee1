//! `clipdino convert`: open_clip weights (+ config) + a CLIP-DINOiser checkpoint → one GGUF
//! bundle (optionally quantized) that the browser app loads in a single download.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Args;
use clipdino::loaders::{self, LoadMeter, Quant};
use clipdino::TensorStore;

use crate::engine::{read_model_inputs, BudgetArgs};
use crate::files;
use crate::progress;

#[derive(Args)]
pub struct ConvertArgs {
    /// open_clip weights: `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`.
    #[arg(long, value_name = "FILE")]
    clip: PathBuf,
    /// `open_clip_config.json` (default: the architecture is inferred from the weight shapes).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// CLIP-DINOiser checkpoint `last.pt` (without it the bundle supports MaskCLIP mode only).
    #[arg(long, value_name = "FILE")]
    head: Option<PathBuf>,
    /// Storage type of the large matrices.
    #[arg(long, value_parser = parse_quant, default_value = "f32", value_name = "f32|f16|q8_0|q4_0")]
    quant: Quant,
    /// Output GGUF file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    budget: BudgetArgs,
}

fn parse_quant(s: &str) -> std::result::Result<Quant, String> {
    s.parse::<Quant>().map_err(|e| e.to_string())
}

pub use clipdino::loaders::human_bytes;

/// Tensor count and storage bytes per stored dtype.
pub fn dtype_breakdown(store: &TensorStore) -> BTreeMap<String, (usize, u64)> {
    let mut m: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (_, s) in store.iter() {
        let e = m.entry(s.dtype_name()).or_default();
        e.0 += 1;
        e.1 += s.storage_bytes() as u64;
    }
    m
}

pub fn run(a: ConvertArgs) -> Result<()> {
    files::check_writable_file(&a.out, "output file")?;
    let budget = a.budget.budget();
    let inputs = read_model_inputs(
        Some(&a.clip),
        a.config.as_deref(),
        a.head.as_deref(),
        &budget,
    )?;
    let input_bytes: u64 = inputs.iter().map(|(_, b)| b.len() as u64).sum();
    let sizes: Vec<(String, u64)> = inputs
        .iter()
        .map(|(n, b)| (n.clone(), b.len() as u64))
        .collect();

    let sp = progress::spinner("reading weights");
    let bundle = loaders::load_model_files_with(&inputs, budget)?;
    drop(inputs);
    sp.set_message(format!("writing {}", a.quant));
    let bytes = loaders::write_gguf_bundle(&bundle, a.quant)?;
    // Read the result back: proves the bundle loads and gives the real per-dtype sizes.
    sp.set_message("checking the bundle");
    let out_name = a.out.display().to_string();
    let check = loaders::read_gguf_bundle_metered(&bytes, &out_name, &mut LoadMeter::new(budget))
        .map_err(|e| anyhow!("the written bundle does not read back: {e}"))?;
    sp.finish_and_clear();
    files::write_atomic(&a.out, &bytes, "output file")?;

    for (n, s) in &sizes {
        println!("input   {:>10}  {n}", human_bytes(*s));
    }
    println!(
        "output  {:>10}  {}  ({}, {:.1}% of the input, {} tensors)",
        human_bytes(bytes.len() as u64),
        out_name,
        a.quant,
        100.0 * bytes.len() as f64 / input_bytes.max(1) as f64,
        check.store.len()
    );
    for (dt, (count, b)) in dtype_breakdown(&check.store) {
        println!("  {dt:<6} {count:>4} tensors  {:>10}", human_bytes(b));
    }
    if check.head.is_none() {
        progress::warn(
            "no DINOiser head (--head last.pt) in the bundle: it supports --mode maskclip only",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(598_600_000), "598.6 MB");
    }
}

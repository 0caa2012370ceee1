//! `clipdino`: the native command line of the clipdino model crate — convert weights to the
//! browser's GGUF bundle, generate random weights in the upstream formats, segment an image,
//! evaluate mIoU on a folder of masks, benchmark, verify a bundle against the upstream weights,
//! and split a bundle into parts for static hosts.
//!
//! Errors are printed as one line in words on stderr with a non-zero exit code; outputs are
//! written through temporary files so nothing is ever left half-written.

mod bench;
mod convert;
mod engine;
mod eval;
mod files;
mod labels;
mod npy;
mod photo;
mod progress;
mod random_weights;
mod segment;
mod split;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "clipdino",
    version,
    about = "Open-vocabulary semantic segmentation with OpenCLIP ViT-B/16 + CLIP-DINOiser, in pure Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert open_clip weights + a DINOiser checkpoint into one GGUF bundle for the browser.
    Convert(convert::ConvertArgs),
    /// Write random weights in the upstream file formats (for tests and benchmarks).
    RandomWeights(random_weights::RandomWeightsArgs),
    /// Segment one image with free-text labels.
    Segment(segment::SegmentArgs),
    /// Score predictions against ground-truth masks: mIoU, per-class IoU, pixel accuracy.
    Eval(eval::EvalArgs),
    /// Time each stage of the pipeline.
    Bench(bench::BenchArgs),
    /// Check bundles against the upstream weights (or another bundle) on photos: feature
    /// cosines, label-map agreement, times; optionally a pass/fail threshold.
    Verify(verify::VerifyArgs),
    /// Cut a bundle into parts for hosts with a file-size limit, plus their manifest.
    Split(split::SplitArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Convert(a) => convert::run(a),
        Command::RandomWeights(a) => random_weights::run(a),
        Command::Segment(a) => segment::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Split(a) => split::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            progress::clear();
            // `{:#}` joins the context chain with ": " — one line, in words.
            let msg = format!("{e:#}").replace(['\n', '\r'], " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

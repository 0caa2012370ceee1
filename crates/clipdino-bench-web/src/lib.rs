//! Benchmark of the `clipdino` model crate in a browser Web Worker and natively.
//!
//! The steps ([`suite::Step`]: weight parsing, image encoding, the image tower alone, label
//! embeddings, the DINOiser head, segmentation, K-Means, an op-level [`profile`] of the tower and
//! [`kernels`] micro-benchmarks) live in [`suite`] and run unchanged on both targets: the wasm32
//! build exports them through wasm-bindgen (`WebBench`, driven by `bench/worker.js`), and
//! natively `clipdino bench` runs the same [`suite::plan`] on the same photo and weight files.
//! `bench/run.sh` runs both and the onnxruntime-web peer, see `BENCHMARKS.md`.

pub mod clock;
pub mod kernels;
pub mod profile;
pub mod stats;
pub mod suite;

#[cfg(target_arch = "wasm32")]
mod web;

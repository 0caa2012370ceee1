//! `clipdino`: open-vocabulary semantic segmentation with OpenCLIP ViT-B/16 and the
//! CLIP-DINOiser head (Wysoczańska et al., arXiv 2312.12359), in pure candle.
//!
//! Tensors in, tensors out: no I/O beyond parsing byte buffers, no web or CLI code, so the
//! same crate runs natively and in `wasm32-unknown-unknown`.

pub mod clip;
pub mod config;
pub mod dinoiser;
pub mod error;
pub mod intgemm;
pub mod kmeans;
pub mod limits;
pub mod linear;
pub mod loaders;
pub mod metrics;
pub mod overlay;
pub mod pamr;
pub mod par;
pub mod parts;
pub mod pipeline;
pub mod quant;
mod rng;
pub mod templates;
pub mod timing;
pub mod tokenizer;
pub mod weights;

pub use config::{Activation, ClipConfig, HeadConfig, TextConfig, VisionConfig};
pub use error::{Error, Result};
pub use weights::{ComputePath, Stored, TensorStore, Vb};

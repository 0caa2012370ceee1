//! Configuration parsing: the first byte picks an `open_clip_config.json`, a bundle's stored
//! `ClipConfig` / `HeadConfig` JSON, a transformers `config.json`, a transformers-layout
//! safetensors renamed into ours, or a safetensors file whose shapes are inferred from.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    clipdino_fuzz::check_config(data);
});

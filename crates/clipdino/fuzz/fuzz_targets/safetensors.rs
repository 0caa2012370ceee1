//! A safetensors file through `read_safetensors` and `load_model_files`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    clipdino_fuzz::check_safetensors(data);
});

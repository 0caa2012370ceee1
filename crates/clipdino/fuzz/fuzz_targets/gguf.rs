//! A GGUF bundle: `read_gguf_bundle` and the content-sniffing `load_model_files` path must give
//! an error naming the file, or a bundle whose configs and tensors agree — never a panic, and
//! never more memory than the load budget.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    clipdino_fuzz::check_gguf(data);
});

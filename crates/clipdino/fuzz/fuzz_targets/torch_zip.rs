//! A whole torch checkpoint (zip archive + pickle + storages) through `read_torch_pickle`,
//! `read_dinoiser_checkpoint` and `load_model_files`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    clipdino_fuzz::check_torch_zip(data);
});

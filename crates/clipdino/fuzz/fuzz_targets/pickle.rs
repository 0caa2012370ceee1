//! The unpickler alone: the input is `data.pkl`, zipped (valid CRCs) beside four small storages
//! so that the pickle's own content, not the archive, is what gets exercised.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    clipdino_fuzz::check_pickle(data);
});

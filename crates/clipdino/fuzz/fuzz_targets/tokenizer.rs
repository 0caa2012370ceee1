//! The tokenizer entry (cleaning, BPE, truncation) and the label checks on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    clipdino_fuzz::check_text(data);
});

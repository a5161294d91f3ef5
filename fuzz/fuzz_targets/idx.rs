#![no_main]
//! Fuzz target `idx`: see [`fixnn_fuzz::idx`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fixnn_fuzz::idx(data);
});

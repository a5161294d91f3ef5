#![no_main]
//! Fuzz target `export_bin`: see [`fixnn_fuzz::export_bin`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fixnn_fuzz::export_bin(data);
});

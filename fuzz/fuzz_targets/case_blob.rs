#![no_main]
//! Fuzz target `case_blob`: see [`fixnn_fuzz::case_blob`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fixnn_fuzz::case_blob(data);
});

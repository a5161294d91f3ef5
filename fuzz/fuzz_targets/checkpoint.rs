#![no_main]
//! Fuzz target `checkpoint`: see [`fixnn_fuzz::checkpoint`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fixnn_fuzz::checkpoint(data);
});

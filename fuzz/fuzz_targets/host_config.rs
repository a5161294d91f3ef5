#![no_main]
//! Fuzz target `host_config`: see [`fixnn_fuzz::host_config`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fixnn_fuzz::host_config(data);
});

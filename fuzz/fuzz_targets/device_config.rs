#![no_main]
//! Fuzz target `device_config`: see [`fixnn_fuzz::device_config`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fixnn_fuzz::device_config(data);
});

//! Device case `packed`: a small CNN whose 4-, 2- and 3-bit weights stay
//! packed in flash (the blob is a `static`), run from the packed codes
//! (`fixnn::layers::PackedConv2d`, `PackedLinear`); the desktop computes
//! the same outputs with the weights unpacked into ordinary layers.
#![no_std]
#![no_main]

static BLOB: &[u8] = include_bytes!(concat!(env!("FIXNN_CASES_DIR"), "/packed.case"));

#[cortex_m_rt::entry]
fn main() -> ! {
    fixnn_firmware::init();
    let ok = fixnn_firmware::case::run_packed_case(BLOB);
    fixnn_firmware::exit(ok)
}

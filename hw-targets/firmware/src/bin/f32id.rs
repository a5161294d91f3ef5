//! The f32 identity sweep (`fixnn_cases::f32id`) on the device: prints
//! `F <function> <inputs> <hash>` per function; the desktop test
//! `tests/f32_identity.rs` compares the lines with its own.
#![no_std]
#![no_main]

use core::fmt::Write;

use cortex_m_rt::entry;
use fixnn_firmware::{self as fw, Out};

#[entry]
fn main() -> ! {
    fw::init();
    let mut o = Out;
    fixnn_firmware::fixnn_cases::f32id::sweep(|name, n, h| {
        let _ = writeln!(o, "F {name} {n} {h:016x}");
    });
    fw::exit(true)
}

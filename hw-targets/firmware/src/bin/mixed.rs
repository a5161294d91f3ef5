//! Device case `mixed`: every other layer type, rounding, range method,
//! method and bit width.
#![no_std]
#![no_main]

use fixnn_firmware::fixnn_cases::nets::{Mixed, CLASSES, MIXED_B};

fixnn_firmware::case_main!(Mixed, MIXED_B, CLASSES);

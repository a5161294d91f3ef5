//! Device case `mixconv`: grouped strided convolution, ReLU, average
//! pooling, flatten and linear, with configs rotated over every rounding,
//! range method, method and bit width.
#![no_std]
#![no_main]

use fixnn_firmware::fixnn_cases::nets::{MixConv, CLASSES, MIX_B};

fixnn_firmware::case_main!(MixConv, MIX_B, CLASSES);

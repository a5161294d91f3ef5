//! Device case `mixdense`: fused conv + batch norm (grouped, padded,
//! dilated), max pooling, linear, BatchNorm1d, ReLU and an activation
//! quantizer, with configs rotated over every rounding, range method,
//! method and bit width.
#![no_std]
#![no_main]

use fixnn_firmware::fixnn_cases::nets::{MixDense, CLASSES, MIX_B};

fixnn_firmware::case_main!(MixDense, MIX_B, CLASSES);

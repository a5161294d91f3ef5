//! Device case `cnn`: the small CNN trained end to end (fits the micro:bit).
#![no_std]
#![no_main]

use fixnn_firmware::fixnn_cases::nets::{Cnn, CLASSES, CNN_B};

fixnn_firmware::case_main!(Cnn, CNN_B, CLASSES);

//! Device case `mlp`: a few training steps of the MNIST MLP (M4 and M7 boards).
#![no_std]
#![no_main]

use fixnn_firmware::fixnn_cases::nets::{Mlp, MLP_B};

fixnn_firmware::case_main!(Mlp, MLP_B, 10);

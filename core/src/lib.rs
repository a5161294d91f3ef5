//! fixnn: a fixed-point neural-network training and inference core.
//!
//! `#![no_std]`, no heap, no panics in the public API: every fallible
//! function returns [`Result`] with the small [`Error`] enum. The same code
//! runs on a desktop and on a Cortex-M0 to M55 and computes the same bits.
//!
//! # The numeric contract
//!
//! A quantized tensor is a slice of integer codes `q` plus a
//! [`Format`]` { bits, scale }`:
//!
//! * real value = `q * 2^(scale + 1 - bits)` (the *step* is `2^(scale + 1 - bits)`);
//! * `bits` is in `2..=16`; codes are stored as `i8` for `bits <= 8` and `i16` up to 16;
//! * codes saturate to the two's complement range `[-2^(bits-1), 2^(bits-1) - 1]`.
//!   (nics_fix_pt clamps at `+2^scale`, one step above what a `bits`-bit
//!   register holds; fixnn follows the hardware. This is the one documented
//!   difference, and a per-tensor option undoes it: [`Clamp::Nics`] saturates
//!   to `[-2^(bits-1), 2^(bits-1)]` as nics_fix_pt does, for `bits <= 15`,
//!   its codes taking `bits + 1` bits.)
//!
//! Every operation on codes is integer arithmetic in a fixed order, so the
//! result does not depend on the machine, the thread count or the
//! optimisation level. See [`quant`] for quantization, requantization,
//! rounding, automatic scale selection and the straight-through mask.
//!
//! # Modules, in the order data flows
//!
//! * [`quant`]: formats, per-tensor configs, rounding, scale selection.
//! * [`tensor`]: statically sized tensors, activations and parameters.
//! * [`backend`]: the compute operations and the sequential reference backend.
//! * [`kernels`]: packed integer kernels (`SMLAD` on Cortex-M4/M7) and [`kernels::DspBackend`].
//! * [`layers`]: layers with forward and backward passes, and the loss.
//! * [`model`]: named tensors, config trees, tables, states and per-call
//!   config overrides.
//! * [`optim`]: SGD on f32 master parameters.
//! * [`error`]: the error type shared by every module.
//! * [`accel`]: run-time selection of faster element passes on x86-64 and a
//!   hook that splits large passes across threads (same results).
//!
//! With the `derive` feature (on by default), `#[derive(Model)]` makes a
//! struct whose fields are layers one sequential layer whose tensors are
//! named after the fields (`fc1.weight`, `block.conv.bias`): see `Model`.
#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod accel;
pub mod backend;
pub mod error;
pub mod kernels;
pub mod layers;
pub mod model;
pub mod optim;
pub mod quant;
pub mod tensor;

pub use error::{Error, Result};
#[cfg(feature = "derive")]
pub use fixnn_macros::Model;
pub use quant::{
    Clamp, Code, Format, Group, Method, QuantConfig, QuantReport, RangeMethod, Rounder, Rounding,
    Stream,
};

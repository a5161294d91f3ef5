//! The device test cases of fixnn.
//!
//! A *case* is a model type (compiled into both the desktop test and the
//! firmware) plus a *blob* of runs written by the desktop: for each run a
//! seed, an optimizer, a config tree and the inputs and labels of every
//! training step. [`run`] trains the model on the blob with any backend and
//! reports every tensor after every phase of every step as a [`Record`].
//! The desktop keeps its records; the device prints one line per record
//! ([`write_line`]: a 64-bit hash of the values, their format and
//! saturation counters) and, on request, the full values of one record.
//! Equal lines mean equal bits.
//!
//! `no_std`, no heap: the firmware of every board links it.

#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod blob;
pub mod f32id;
#[macro_use]
pub mod nets;
pub mod packed;
mod run;

pub use run::{
    hash_record, run, write_error_line, write_line, Case, CaseError, GradFn, Part, Phase, Record,
    Sink, Want,
};

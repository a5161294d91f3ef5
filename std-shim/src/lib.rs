//! fixnn-std: the desktop side of fixnn.
//!
//! The `fixnn` command-line program ([`cli`]), config trees and model
//! states as JSON files ([`configs`]), and the import of nics_fix_pt YAML
//! configs ([`nics`]). The rayon backend, datasets and training come next.

pub mod accel;
pub mod arch;
pub mod checkpoint;
pub mod cli;
pub mod configs;
pub mod data;
pub mod export;
pub mod history;
pub mod inspect;
pub mod nics;
pub mod quantize;
pub mod rayon_backend;
pub mod report;
pub mod spec;
pub mod trace;
pub mod train;

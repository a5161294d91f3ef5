//! fixnn-std: the desktop side of fixnn.
//!
//! For now this is the `fixnn` command-line program ([`cli`]); the rayon
//! backend, datasets, config files and training come in later steps.

pub mod cli;
pub mod quantize;

//! Workspace-level tests of fixnn live in this package's `[[test]]` targets;
//! they check behaviour across crates (the `fixnn` CLI against the core
//! quantizer now; desktop against device once the device suite exists).

pub mod device;

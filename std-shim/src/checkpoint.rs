//! Checkpoints: the model file, the config tree, the f32 master state and
//! the quantized state, and the run's history, in one JSON file written
//! atomically, with a version and a checksum.
//!
//! # File layout
//!
//! ```json
//! {"checksum":"fnv1a64:0123456789abcdef","body":{
//!   "format":"fixnn-checkpoint","version":1,"epoch":1,"step":937,
//!   "spec":{...MODEL.json...},"configs":{...config tree...},
//!   "state":{...model state...},"history":{...}}}
//! ```
//!
//! The checksum is FNV-1a (64 bits) of the exact bytes of `body` as they
//! stand in the file, so any change to the body (a flipped digit, a
//! truncation) is refused. Timing is not part of a checkpoint: the same
//! seed gives the same bytes with any number of threads.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::configs::{write_atomic, ConfigFile, StateFile};
use crate::history::History;
use crate::spec::ModelSpec;

/// The `format` of a checkpoint body.
pub const CHECKPOINT_FORMAT: &str = "fixnn-checkpoint";
/// The version written by this build.
pub const CHECKPOINT_VERSION: u32 = 1;

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A checkpoint as loaded.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Completed epochs.
    pub epoch: u32,
    /// Completed training steps.
    pub step: u64,
    /// The model file the run used.
    pub spec: ModelSpec,
    /// Every tensor's configs (with the scales Auto chose).
    pub configs: ConfigFile,
    /// Codes, formats, masters and momentum.
    pub state: StateFile,
    /// The run's history so far (without timings).
    pub history: History,
}

#[derive(Serialize)]
struct BodyOut<'a> {
    format: &'a str,
    version: u32,
    epoch: u32,
    step: u64,
    spec: &'a ModelSpec,
    configs: &'a ConfigFile,
    state: &'a RawValue,
    history: &'a History,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyIn {
    format: String,
    version: u32,
    epoch: u32,
    step: u64,
    spec: ModelSpec,
    configs: Box<RawValue>,
    state: Box<RawValue>,
    history: History,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn<'a> {
    checksum: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// The bytes of a checkpoint file.
///
/// # Errors
///
/// Serialization errors (not expected).
pub fn encode(
    epoch: u32,
    step: u64,
    spec: &ModelSpec,
    configs: &ConfigFile,
    state_json: &str,
    history: &History,
) -> Result<Vec<u8>, String> {
    let state = RawValue::from_string(state_json.to_string()).map_err(|e| format!("state: {e}"))?;
    let mut h = history.clone();
    for e in &mut h.epochs {
        e.seconds = 0.0;
    }
    let body = serde_json::to_string(&BodyOut {
        format: CHECKPOINT_FORMAT,
        version: CHECKPOINT_VERSION,
        epoch,
        step,
        spec,
        configs,
        state: &state,
        history: &h,
    })
    .map_err(|e| format!("checkpoint: {e}"))?;
    let sum = fnv1a64(body.as_bytes());
    Ok(format!("{{\"checksum\":\"fnv1a64:{sum:016x}\",\"body\":{body}}}").into_bytes())
}

/// Write a checkpoint to `path` atomically (temporary file, fsync, rename).
///
/// # Errors
///
/// I/O errors, naming the path.
pub fn save(path: &Path, bytes: &[u8]) -> Result<(), String> {
    write_atomic(path, bytes)
}

/// Check and parse checkpoint bytes.
///
/// # Errors
///
/// A message saying what is wrong: not a checkpoint, a checksum mismatch
/// (altered or truncated file), an unknown version, a bad part.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| "not a checkpoint: not UTF-8 text".to_string())?;
    crate::configs::check_json(text).map_err(|e| format!("not a checkpoint: {e}"))?;
    let file: FileIn<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_eof() {
            format!("truncated checkpoint: {e}")
        } else {
            format!("not a checkpoint: {e}")
        }
    })?;
    let want = format!("fnv1a64:{:016x}", fnv1a64(file.body.get().as_bytes()));
    if file.checksum != want {
        return Err(format!(
            "checksum mismatch: the file says {}, its body hashes to {want} (altered or damaged checkpoint)",
            file.checksum
        ));
    }
    let body: BodyIn =
        serde_json::from_str(file.body.get()).map_err(|e| format!("checkpoint body: {e}"))?;
    if body.format != CHECKPOINT_FORMAT || body.version != CHECKPOINT_VERSION {
        return Err(format!(
            "not a {CHECKPOINT_FORMAT} version {CHECKPOINT_VERSION} (found {} version {})",
            body.format, body.version
        ));
    }
    Ok(Checkpoint {
        epoch: body.epoch,
        step: body.step,
        spec: body.spec,
        configs: ConfigFile::parse(body.configs.get())
            .map_err(|e| format!("checkpoint configs: {e}"))?,
        state: StateFile::parse(body.state.get()).map_err(|e| format!("checkpoint state: {e}"))?,
        history: body.history,
    })
}

/// Read and check a checkpoint file.
///
/// # Errors
///
/// A message naming the file and what is wrong with it.
pub fn load(path: &Path) -> Result<Checkpoint, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

//! The fuzz targets' entry points, one function per target.
//!
//! Each takes the raw fuzz input and returns `Ok(())` if the parser (and
//! whatever the program does next with the result) accepted it, or
//! `Err(message)` for a clear refusal. A panic, hang or runaway allocation
//! is a bug. The first byte of an input picks a mode where a target covers
//! several parsers; the rest is the document.
//!
//! `tests/fuzz_regressions.rs` includes this file (`#[path]`) and feeds it
//! every file of `tests/fuzz-regressions/<target>/` on stable Rust.

use std::mem::MaybeUninit;
use std::path::Path;

use fixnn::backend::RefBackend;
use fixnn::model::{ConfigDoc, ConfigEntry, ReadError, ReadProblem};
use fixnn_cases::blob::Blob;
use fixnn_cases::nets::{Cnn, MixConv, MixDense, CLASSES, CNN_B, MIX_B};
use fixnn_cases::{Case, CaseError, Record, Sink, Want};

/// A target's entry point: `Ok` if the input was accepted, else the error.
pub type Entry = fn(&[u8]) -> Result<(), String>;

/// Every target, as (name, entry point).
pub const TARGETS: &[(&str, Entry)] = &[
    ("device_config", device_config),
    ("case_blob", case_blob),
    ("host_config", host_config),
    ("checkpoint", checkpoint),
    ("export_bin", export_bin),
    ("idx", idx),
];

/// Split off the mode byte.
fn mode(data: &[u8]) -> Result<(u8, &[u8]), String> {
    data.split_first()
        .map(|(m, rest)| (*m, rest))
        .ok_or_else(|| "empty input".to_string())
}

/// A fresh `cnn` case model (the device suite's small CNN) for loaders
/// to apply their result to.
fn with_cnn<T>(f: impl FnOnce(&mut Cnn) -> T) -> Result<T, String> {
    let mut slot = MaybeUninit::<Cnn>::uninit();
    let net = Cnn::build_in(&mut slot).map_err(|e| format!("build cnn: {e}"))?;
    net.init(1);
    Ok(f(net))
}

/// The device-side config reader (fixnn's own, no heap, no recursion),
/// checked against serde_json reading the same types.
///
/// Mode byte (mod 2): 0, one `ConfigEntry` as the firmware reads it from
/// a case blob, then both configs validated; 1, a whole `ConfigDoc` (the
/// core's config-tree JSON) applied to the `cnn` model.
///
/// The differential check panics (a finding) if fixnn's reader accepts a
/// text serde_json refuses or reads another value, or refuses a text
/// serde_json accepts for any reason but its deliberate strictness: a
/// struct written as an array or an enum as an object (`WrongType`).
pub fn device_config(data: &[u8]) -> Result<(), String> {
    let (m, json) = mode(data)?;
    if m % 2 == 0 {
        let ours = ConfigEntry::from_json(json);
        same_as_serde_json(json, &ours);
        let e = ours.map_err(|e| e.to_string())?;
        e.data.validate().map_err(|e| format!("data: {e}"))?;
        e.grad.validate().map_err(|e| format!("grad: {e}"))?;
        Ok(())
    } else {
        let ours = ConfigDoc::<16>::from_json(json);
        same_as_serde_json(json, &ours);
        let doc = ours.map_err(|e| e.to_string())?;
        with_cnn(|net| doc.apply(net).map(drop).map_err(|r| r.to_string()))?
    }
}

/// Panics if fixnn's reader and serde_json disagree on `json` beyond the
/// reader's deliberate strictness (see [`device_config`]).
fn same_as_serde_json<T>(json: &[u8], ours: &Result<T, ReadError>)
where
    T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let theirs: Result<T, _> = serde_json::from_slice(json);
    match (ours, theirs) {
        (Ok(a), Ok(b)) => assert_eq!(a, &b, "fixnn's reader and serde_json read different values"),
        (Ok(a), Err(e)) => panic!("fixnn's reader accepts what serde_json refuses ({e}): {a:?}"),
        (Err(e), Ok(_)) => assert!(
            matches!(
                e.problem,
                ReadProblem::DuplicateField | ReadProblem::WrongType
            ),
            "fixnn's reader refuses what serde_json accepts: {e}"
        ),
        (Err(_), Err(_)) => {}
    }
}

/// Discards records, keeps the first run error.
#[derive(Default)]
struct FirstError(Option<String>);

impl Sink for FirstError {
    fn record(&mut self, _: &Record<'_>) {}
    fn error(&mut self, run: u32, step: u32, e: &CaseError) {
        self.0
            .get_or_insert_with(|| format!("run {run} step {step}: {e:?}"));
    }
}

/// The case-blob reader and the run loop the firmware runs on it: header,
/// every run and its config entries (each parsed as the device does);
/// blobs of the `cnn` and `mixed` cases are then trained as on a device,
/// with the reference backend.
pub fn case_blob(data: &[u8]) -> Result<(), String> {
    let mut b = Blob::parse(data).map_err(|e| format!("blob: {e:?}"))?;
    while let Some(run) = b.next_run().map_err(|e| format!("blob: {e:?}"))? {
        for json in run.config_entries() {
            let json = json.map_err(|e| format!("blob: {e:?}"))?;
            let _ = ConfigEntry::from_json(json);
        }
    }
    let bk = RefBackend;
    let mut sink = FirstError::default();
    let r = match Blob::parse(data).map(|b| b.name) {
        Ok("cnn") => fixnn_cases::run::<Cnn, _, CNN_B, CLASSES>(&bk, data, Want::All, &mut sink),
        Ok("mixconv") => {
            fixnn_cases::run::<MixConv, _, MIX_B, CLASSES>(&bk, data, Want::All, &mut sink)
        }
        Ok("mixdense") => {
            fixnn_cases::run::<MixDense, _, MIX_B, CLASSES>(&bk, data, Want::All, &mut sink)
        }
        _ => Ok(()),
    };
    r.map_err(|e| format!("run: {e:?}"))?;
    sink.0.map_or(Ok(()), Err)
}

/// The desktop's text inputs, each applied to the `cnn` model after it
/// parsed. Mode byte (mod 4): 0, a model file (`MODEL.json`); 1, a config
/// tree; 2, a state file; 3, a nics_fix_pt YAML config.
pub fn host_config(data: &[u8]) -> Result<(), String> {
    use fixnn_std::{configs, nics, spec};
    let (m, text) = mode(data)?;
    let text = std::str::from_utf8(text).map_err(|e| format!("not UTF-8: {e}"))?;
    match m % 4 {
        0 => {
            let s = spec::ModelSpec::parse(text)?;
            with_cnn(|net| s.apply_configs(net))?.map(drop)
        }
        1 => {
            let c = configs::ConfigFile::parse(text)?;
            with_cnn(|net| c.apply(net))?.map(drop)
        }
        2 => {
            let s = configs::StateFile::parse(text)?;
            with_cnn(|net| s.apply(net))?.map(drop)
        }
        _ => {
            let n = nics::parse(text, nics::ScaleForm::Auto)?;
            with_cnn(|net| n.apply(net))?.map(drop)
        }
    }
}

/// The checkpoint loader, its configs and state applied to the `cnn`
/// model. Mode byte (mod 2): 0, the bytes are a whole checkpoint file; 1,
/// they are its body, wrapped with the right checksum (so that mutations
/// reach the body's parser).
pub fn checkpoint(data: &[u8]) -> Result<(), String> {
    use fixnn_std::checkpoint::{decode, fnv1a64};
    let (m, rest) = mode(data)?;
    let c = if m % 2 == 0 {
        decode(rest)?
    } else {
        let mut file = format!(
            "{{\"checksum\":\"fnv1a64:{:016x}\",\"body\":",
            fnv1a64(rest)
        )
        .into_bytes();
        file.extend_from_slice(rest);
        file.push(b'}');
        decode(&file)?
    };
    with_cnn(|net| {
        c.configs.apply(net)?;
        c.state.apply(net)
    })?
    .map(drop)
}

/// The model-blob parser (`fixnn export --bin`). Mode byte (mod 2): 0, the
/// bytes are a whole blob; 1, the right checksum is appended to them.
pub fn export_bin(data: &[u8]) -> Result<(), String> {
    use fixnn_std::checkpoint::fnv1a64;
    use fixnn_std::export::parse_bin;
    let (m, rest) = mode(data)?;
    if m % 2 == 0 {
        parse_bin(rest).map(drop)
    } else {
        let mut b = rest.to_vec();
        b.extend_from_slice(&fnv1a64(rest).to_le_bytes());
        parse_bin(&b).map(drop)
    }
}

/// The IDX loader. Mode byte: bit 0, images (0) or labels (1); bit 1, the
/// rest is gzipped before it is read (so that mutations of the IDX bytes
/// also go through the gzip path; raw bytes starting with the gzip magic
/// test the decoder itself).
pub fn idx(data: &[u8]) -> Result<(), String> {
    use fixnn_std::data::{images_from_bytes, labels_from_bytes};
    use std::io::Write;
    let (m, rest) = mode(data)?;
    let bytes = if m & 2 != 0 {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(rest).map_err(|e| format!("gzip: {e}"))?;
        e.finish().map_err(|e| format!("gzip: {e}"))?
    } else {
        rest.to_vec()
    };
    let path = Path::new("fuzz.idx");
    if m & 1 == 0 {
        images_from_bytes(path, &bytes).map(drop)
    } else {
        labels_from_bytes(path, &bytes).map(drop)
    }
    .map_err(|e| e.to_string())
}

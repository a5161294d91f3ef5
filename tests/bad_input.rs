//! Bad input at every public entry point: the core API (formats, configs,
//! quantizers, backends, layers, the optimizer, config trees and states in
//! JSON), the desktop library (model files, config and state files,
//! checkpoints, IDX datasets) and the `fixnn` program (train, eval, export,
//! inspect, quantize).
//!
//! Each case asserts ONE clear error that names what is wrong (its kind or
//! the words of its message), that nothing panics (the CLI runs in process,
//! so a panic fails the test), and, where files exist beforehand, that
//! they are unchanged byte for byte after the failure.

use std::path::{Path, PathBuf};

use fixnn::backend::{AccOut, Backend, ConvGeom, LinearGeom, Operand, RefBackend, MAX_REDUCTION};
use fixnn::layers::{softmax_cross_entropy, Layer, Linear, Quant};
use fixnn::model::{
    self, check_json, ConfigDoc, ConfigEntry, JsonProblem, ReadError, ReadProblem, MAX_DEPTH,
};
use fixnn::optim::Sgd;
use fixnn::quant::{self, Format};
use fixnn::tensor::{Ctx, Tensor, S2};
use fixnn::{Error, QuantConfig, Rounder, Rounding, Stream};
use fixnn_std::arch::{Arch, LeNet, MnistMlp};
use fixnn_std::rayon_backend::RayonBackend;

const BAD_BITS: [u8; 4] = [0, 1, 17, 255];

// ---------------------------------------------------------------- helpers

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn mnist_dir() -> PathBuf {
    let d = root().join("../shared/datasets/mnist");
    assert!(d.is_dir(), "MNIST is expected at {}", d.display());
    d
}

#[path = "common/tmp.rs"]
mod tmp;
pub(crate) use tmp::Tmp;

/// A fresh, empty directory for one test.
fn tmp(name: &str) -> Tmp {
    Tmp::new("bad", name, true)
}

/// Run `fixnn` in process: (exit status, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv: Vec<String> = std::iter::once("fixnn")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let code = fixnn_std::cli::run(argv, &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// `fixnn ARGS` fails with status 2 and one line on stderr containing
/// every needle; returns that line.
fn cli_refuses(args: &[&str], needles: &[&str]) -> String {
    let (code, out, err) = cli(args);
    assert_eq!(code, 2, "{args:?}: stdout {out} stderr {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.starts_with("fixnn: error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{err}` does not name `{n}`");
    }
    err
}

/// Every file under `dir` (recursively) with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// Run `f` on a thread with a large stack (models are built by value).
fn big<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// The shipped MNIST MLP model file as JSON, edited by `f`.
fn mlp_spec(f: impl FnOnce(&mut serde_json::Value)) -> String {
    let text = std::fs::read_to_string(root().join("examples/mnist-mlp.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    f(&mut v);
    serde_json::to_string(&v).unwrap()
}

/// A valid checkpoint of a freshly initialised MNIST MLP (no training).
fn fresh_checkpoint() -> Vec<u8> {
    big(|| {
        let spec = fixnn_std::spec::ModelSpec::parse(&mlp_spec(|_| {})).unwrap();
        let mut m = MnistMlp::build(1).unwrap();
        spec.apply_configs(&mut *m).unwrap();
        let configs = fixnn_std::configs::ConfigFile::of(&mut *m);
        let state = fixnn_std::configs::state_json(&mut *m);
        fixnn_std::checkpoint::encode(0, 0, &spec, &configs, &state, &Default::default()).unwrap()
    })
}

fn deep(n: usize) -> String {
    "[".repeat(n) + &"]".repeat(n)
}

#[path = "bad_input/cli.rs"]
mod cli;
#[path = "bad_input/core_api.rs"]
mod core_api;
#[path = "bad_input/core_json.rs"]
mod core_json;
#[path = "bad_input/files.rs"]
mod files;

#[test]
fn a_refused_combination_of_config_fields_says_which() {
    // `Unsupported` names one field; the model file's error also says
    // which other field it does not combine with.
    type Edit = fn(&mut serde_json::Value);
    let cases: [(Edit, &str); 4] = [
        (
            |d| {
                d["multiplier"] = 1_073_741_824u32.into();
                d["range"] = "sweep".into();
            },
            "config field `range` holds a value this version does not support: a real-valued scale (`multiplier`) is chosen by range `max` or `running` only",
        ),
        (
            |d| {
                d["group"] = "channel".into();
                d["range"] = "sweep".into();
            },
            "config field `range` holds a value this version does not support: grouped scales (`group` other than `tensor`) are chosen by range `max` only",
        ),
        (
            |d| {
                d["clamp"] = "nics".into();
                d["zero_point"] = 3.into();
            },
            "config field `zero_point` holds a value this version does not support: nics_fix_pt's clamp has no zero point",
        ),
        (
            |d| {
                d["multiplier"] = 1_073_741_824u32.into();
                d["zero_point"] = 3.into();
            },
            "config field `zero_point` holds a value this version does not support: a real-valued scale (`multiplier`) has no zero point",
        ),
    ];
    for (edit, want) in cases {
        let text = mlp_spec(|v| edit(&mut v["configs"][0]["data"]));
        let err = fixnn_std::spec::ModelSpec::parse(&text).expect_err("a refused combination");
        assert!(
            err.starts_with("configs[0].data: ") && err.contains(want),
            "{err}"
        );
    }
}

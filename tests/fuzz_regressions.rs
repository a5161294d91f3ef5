//! Replays every input kept in `tests/fuzz-regressions/<target>/` through
//! the entry point its fuzz target calls (`fuzz/src/lib.rs`, included
//! here), on stable Rust: inputs that once crashed, hung or ran out of
//! memory under `scripts/fuzz.sh`, and the small valid seeds the fuzzer
//! starts from.
//!
//! Every input must return (`Ok`, or `Err` with a message) without
//! panicking; every `valid-*` seed must return `Ok`. The seeds the code
//! writes itself (a checkpoint, a model blob, a case blob, config and
//! state files of the `cnn` case model, IDX files) are also made afresh
//! and must load `Ok`, and each cut in half must be refused (`bad-*`
//! files, which must return `Err`); `FIXNN_WRITE_SEEDS=1` rewrites the
//! committed ones.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod entry;

use std::io::Write;
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use fixnn::model::{collect_configs, walk, ConfigDoc};
use fixnn::optim::Sgd;
use fixnn::QuantConfig;
use fixnn_cases::blob::{write_header, write_run};
use fixnn_cases::nets::{Cnn, MixConv, MixDense, MIX_B};
use fixnn_cases::Case;
use fixnn_std::checkpoint::encode;
use fixnn_std::configs::{state_json, ConfigFile};
use fixnn_std::export::to_bin;
use fixnn_std::history::History;
use fixnn_std::spec::ModelSpec;

fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-regressions")
        .join(target)
}

fn entry_point(target: &str) -> entry::Entry {
    entry::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target {target}"))
}

/// Runs `f` on `bytes` on a thread with an 8 MiB stack, what the `fixnn`
/// program's main thread and the fuzzer have on Linux (a test thread has
/// 2 MiB), so that a parser recursing too deeply fails here too.
fn call(f: entry::Entry, bytes: &[u8]) -> std::thread::Result<Result<(), String>> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn_scoped(s, || catch_unwind(AssertUnwindSafe(|| f(bytes))))
            .expect("spawn a thread")
            .join()
            .unwrap_or_else(Err)
    })
}

#[test]
fn every_kept_input_returns_without_panicking() {
    let mut problems = Vec::new();
    for (target, f) in entry::TARGETS {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir(target))
            .unwrap_or_else(|e| panic!("{}: {e}", dir(target).display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        files.sort();
        let valid = files
            .iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("valid-"))
            })
            .count();
        assert!(valid > 0, "{target}: no valid-* seed");
        assert!(valid < files.len(), "{target}: no invalid input kept");
        for p in files {
            let bytes = std::fs::read(&p).expect("read a kept input");
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match call(*f, &bytes) {
                Err(_) => problems.push(format!("{target}/{name}: panicked")),
                Ok(Err(m)) if name.starts_with("valid-") => {
                    problems.push(format!("{target}/{name}: refused a valid seed: {m}"))
                }
                Ok(Err(m)) if m.trim().is_empty() => {
                    problems.push(format!("{target}/{name}: error without a message"))
                }
                Ok(Ok(())) if name.starts_with("bad-") => {
                    problems.push(format!("{target}/{name}: accepted a bad input"))
                }
                Ok(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn cfg(json: &str) -> QuantConfig {
    serde_json::from_str(json).expect("a quant config")
}

/// The `cnn` case model with 8-bit configs on parameters and activations.
fn with_cnn<T>(f: impl FnOnce(&mut Cnn) -> T) -> T {
    let mut slot = MaybeUninit::<Cnn>::uninit();
    let net = Cnn::build_in(&mut slot).expect("build cnn");
    net.init(7);
    let data = cfg(r#"{"method":"auto","bits":8,"scale":0}"#);
    let grad = cfg(r#"{"method":"fixed","bits":12,"scale":-6}"#);
    walk(net, &mut |_, t| {
        t.quant.cfg = data;
        t.quant.grad_cfg = grad;
    });
    f(net)
}

fn with_mix<C: Case<MIX_B, 3>, T>(f: impl FnOnce(&mut C) -> T) -> T {
    let mut slot = MaybeUninit::<C>::uninit();
    let net = C::build_in(&mut slot).expect("build a mix case");
    net.init(7);
    let data = cfg(r#"{"method":"auto","bits":6,"scale":0}"#);
    walk(net, &mut |_, t| t.quant.cfg = data);
    f(net)
}

fn mode(m: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![m];
    v.extend_from_slice(rest);
    v
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).expect("gzip");
    e.finish().expect("gzip")
}

/// A case blob of `steps` steps of `net`'s config tree.
fn case_blob<L: fixnn::layers::Layer>(
    name: &str,
    net: &mut L,
    input_len: usize,
    batch: usize,
    steps: usize,
) -> Vec<u8> {
    let doc: ConfigDoc<64> = collect_configs(net).expect("config tree");
    let entries: Vec<Vec<u8>> = doc
        .tensors
        .iter()
        .map(|e| serde_json::to_vec(e).expect("entry JSON"))
        .collect();
    let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    let inputs: Vec<f32> = (0..steps * input_len)
        .map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let labels: Vec<u8> = (0..steps * batch).map(|i| (i % 3) as u8).collect();
    let mut out = Vec::new();
    let mut w = |b: &[u8]| out.extend_from_slice(b);
    write_header(name, 1, &mut w);
    write_run(
        5,
        steps as u32,
        true,
        &Sgd::new(0.05, 0.5, 0.0),
        &refs,
        input_len as u32,
        &inputs,
        batch as u32,
        &labels,
        &mut w,
    );
    out
}

fn idx_images(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut b = 0x0803u32.to_be_bytes().to_vec();
    for v in [count, rows, cols] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend((0..count * rows * cols).map(|i| (i * 29 % 256) as u8));
    b
}

fn idx_labels(count: u32) -> Vec<u8> {
    let mut b = 0x0801u32.to_be_bytes().to_vec();
    b.extend_from_slice(&count.to_be_bytes());
    b.extend((0..count).map(|i| (i % 10) as u8));
    b
}

/// Valid inputs written by fixnn's own writers: (target, file name, bytes).
fn written_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let spec_text = std::fs::read_to_string(root.join("examples/mnist-mlp.json")).expect("example");
    let spec = ModelSpec::parse(&spec_text).expect("example spec");
    let (entries, doc_json, configs, state) = with_cnn(|net| {
        let doc: ConfigDoc<64> = collect_configs(net).expect("config tree");
        let entries: Vec<Vec<u8>> = doc
            .tensors
            .iter()
            .map(|e| serde_json::to_vec(e).expect("entry JSON"))
            .collect();
        (
            entries,
            serde_json::to_vec(&doc).expect("doc JSON"),
            ConfigFile::of(net),
            state_json(net),
        )
    });
    for (i, e) in entries.iter().enumerate().take(4) {
        out.push(("device_config", format!("valid-entry-{i}"), mode(0, e)));
    }
    out.push(("device_config", "valid-tree-cnn".into(), mode(1, &doc_json)));

    let cnn = with_cnn(|net| case_blob("cnn", net, 36, 1, 2));
    let mixconv = with_mix(|net: &mut MixConv| {
        let input_len = <<MixConv as fixnn::layers::Layer>::In as fixnn::tensor::Shape>::LEN;
        case_blob("mixconv", net, input_len, MIX_B, 1)
    });
    let mixdense = with_mix(|net: &mut MixDense| {
        let input_len = <<MixDense as fixnn::layers::Layer>::In as fixnn::tensor::Shape>::LEN;
        case_blob("mixdense", net, input_len, MIX_B, 1)
    });
    out.push(("case_blob", "valid-cnn".into(), cnn));
    out.push(("case_blob", "valid-mixconv".into(), mixconv));
    out.push(("case_blob", "valid-mixdense".into(), mixdense));

    out.push((
        "host_config",
        "valid-configs-cnn".into(),
        mode(1, configs.to_json().as_bytes()),
    ));
    out.push((
        "host_config",
        "valid-state-cnn".into(),
        mode(2, state.as_bytes()),
    ));
    let yaml = "data:\n  fc:\n    weight: {bitwidth: 8, method: 1, scale: 1}\n    bias: {bitwidth: 8, method: 2, scale: 0.25}\ngrad:\n  fc:\n    weight: {bitwidth: 16, method: 1, scale: 4.0, stochastic: true}\n";
    out.push((
        "host_config",
        "valid-nics-yaml".into(),
        mode(3, yaml.as_bytes()),
    ));
    for name in ["mnist-mlp", "mnist-mlp-grad8", "mnist-mlp-4bit", "lenet"] {
        let text = std::fs::read(root.join(format!("examples/{name}.json"))).expect("example");
        out.push(("host_config", format!("valid-spec-{name}"), mode(0, &text)));
    }

    let file = encode(2, 30, &spec, &configs, &state, &History::default()).expect("encode");
    let body_at = file
        .windows(7)
        .position(|w| w == b"\"body\":")
        .expect("body")
        + 7;
    let body = &file[body_at..file.len() - 1];
    out.push(("checkpoint", "valid-file".into(), mode(0, &file)));
    out.push(("checkpoint", "valid-body".into(), mode(1, body)));

    let ck = fixnn_std::checkpoint::decode(&file).expect("decode");
    let bin = to_bin(&ck).expect("to_bin");
    out.push(("export_bin", "valid-blob".into(), mode(0, &bin)));
    out.push((
        "export_bin",
        "valid-body".into(),
        mode(1, &bin[..bin.len() - 8]),
    ));

    let (img, lab) = (idx_images(3, 4, 2), idx_labels(5));
    out.push(("idx", "valid-images-raw".into(), mode(0, &img)));
    out.push(("idx", "valid-labels-raw".into(), mode(1, &lab)));
    out.push(("idx", "valid-images-gz".into(), mode(0, &gzip(&img))));
    out.push(("idx", "valid-labels-gz".into(), mode(1, &gzip(&lab))));
    out.push(("idx", "valid-images-to-gzip".into(), mode(2, &img)));
    out.push(("idx", "valid-labels-to-gzip".into(), mode(3, &lab)));
    out
}

#[test]
fn seeds_written_by_fixnn_load() {
    let write = std::env::var_os("FIXNN_WRITE_SEEDS").is_some();
    for (target, name, bytes) in written_seeds() {
        let f = entry_point(target);
        let r = call(f, &bytes).expect("no panic");
        assert_eq!(r, Ok(()), "{target}/{name}");
        let half = &bytes[..bytes.len() / 2 + 1];
        let cut = call(f, half).expect("no panic");
        assert!(cut.is_err(), "{target}/{name} cut in half: accepted");
        if write {
            std::fs::create_dir_all(dir(target)).expect("mkdir");
            std::fs::write(dir(target).join(&name), &bytes).expect("write seed");
            let bad = name.replacen("valid-", "bad-half-", 1);
            std::fs::write(dir(target).join(bad), half).expect("write seed");
        }
    }
}

/// The YAML loader recurses once per level and copies the node an alias
/// names: a deep file overflowed the stack (`- - - ... 1`, found by
/// running a crafted input through the `host_config` fuzz target; the
/// 10-minute fuzz run had not reached it) and an alias bomb would exhaust
/// memory. Both are refused before the loader runs; a config that uses an
/// alias still loads.
#[test]
fn deep_and_alias_bomb_yaml_is_refused() {
    use fixnn_std::nics::{parse, ScaleForm};
    let kept = |name: &str| {
        let b = std::fs::read(dir("host_config").join(name)).expect("kept input");
        String::from_utf8(b[1..].to_vec()).expect("UTF-8")
    };
    for (name, want) in [
        ("yaml-deep-block-sequences", "nested deeper than 64"),
        ("yaml-deep-flow-mappings", "nested deeper than 64"),
        ("yaml-alias-deep", "nested deeper than 64"),
        ("yaml-alias-bomb", "more than 1000000 nodes"),
    ] {
        let e = call_yaml(&kept(name)).expect_err(name);
        assert!(e.contains(want), "{name}: {e}");
    }
    let aliased = "data:\n  fc:\n    weight: &w {bitwidth: 8, method: 1, scale: 1}\n    bias: *w\n";
    let c = parse(aliased, ScaleForm::Auto).expect("aliased config");
    assert_eq!(c.data.get("fc.weight"), c.data.get("fc.bias"));
    assert_eq!(c.data.len(), 2);

    fn call_yaml(text: &str) -> Result<(), String> {
        parse(text, ScaleForm::Auto).map(drop)
    }
}

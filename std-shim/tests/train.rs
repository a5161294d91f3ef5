//! `fixnn train`, `eval` and `export` as a user runs them, on a subset of
//! MNIST: bit-identical runs with 1, 2 and 3 threads, a crash while writing
//! a checkpoint, damaged checkpoints, exports that read back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fixnn"))
        .args(args)
        .output()
        .expect("run fixnn")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn data_dir() -> String {
    let d = root().join("../shared/datasets/mnist");
    assert!(d.is_dir(), "MNIST is expected at {}", d.display());
    d.to_string_lossy().into_owned()
}

fn model() -> String {
    root()
        .join("examples/mnist-mlp.json")
        .to_string_lossy()
        .into_owned()
}

#[path = "../../tests/common/tmp.rs"]
mod tmp;
use tmp::Tmp;

/// A fresh path for one test (not created).
fn tmp(name: &str) -> Tmp {
    Tmp::new("train", name, false)
}

fn train(out: &Path, extra: &[&str]) -> Output {
    train_model(&model(), out, extra)
}

fn train_model(m: &str, out: &Path, extra: &[&str]) -> Output {
    let data = data_dir();
    let out = out.to_string_lossy().into_owned();
    let mut args = vec![
        "train",
        m,
        "--data",
        &data,
        "--out",
        &out,
        "--train-samples",
        "640",
        "--test-samples",
        "200",
        "--no-report",
    ];
    args.extend_from_slice(extra);
    fixnn(&args)
}

/// `fixnn train` on the first `samples` training samples and 200 test
/// samples, one epoch, no report, with the environment variable `var`
/// set to `value`.
fn train_env(out: &Path, samples: &str, extra: &[&str], (var, value): (&str, &Path)) -> Output {
    let (m, data) = (model(), data_dir());
    let out = out.to_string_lossy().into_owned();
    let mut args = vec![
        "train",
        &m,
        "--data",
        &data,
        "--out",
        &out,
        "--train-samples",
        samples,
        "--test-samples",
        "200",
        "--no-report",
        "--epochs",
        "1",
    ];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_fixnn"))
        .args(&args)
        .env(var, value)
        .output()
        .expect("run fixnn")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// metrics.json without the `seconds` fields.
fn metrics_without_seconds(dir: &Path) -> serde_json::Value {
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    for e in m["epochs"].as_array_mut().unwrap() {
        let secs = e.as_object_mut().unwrap().remove("seconds").unwrap();
        assert!(secs.as_f64().unwrap() > 0.0);
    }
    m
}

#[test]
fn same_seed_same_bytes_with_1_2_and_3_threads() {
    let mut results = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = tmp(&format!("threads{threads}"));
        let o = train(
            &out,
            &["--threads", threads, "--epochs", "2", "--seed", "7"],
        );
        let (so, se) = text(&o);
        assert!(o.status.success(), "{so}{se}");
        assert!(
            so.trim_end()
                .lines()
                .last()
                .unwrap()
                .starts_with("test_accuracy="),
            "{so}"
        );
        results.push((
            std::fs::read(out.join("checkpoint.json")).unwrap(),
            metrics_without_seconds(&out),
        ));
    }
    assert_eq!(results[0].1["epochs"].as_array().unwrap().len(), 2);
    for r in &results[1..] {
        assert!(
            r.0 == results[0].0,
            "checkpoints differ between thread counts"
        );
        assert_eq!(r.1, results[0].1, "metrics differ between thread counts");
    }
    // A different seed gives a different run.
    let out = tmp("seed8");
    assert!(train(&out, &["--epochs", "1", "--seed", "8"])
        .status
        .success());
    assert!(std::fs::read(out.join("checkpoint.json")).unwrap() != results[0].0);
}

#[test]
fn paced_run_equals_one_thread() {
    // Without --threads, blocks of steps run on the pool or on one thread
    // (the third block always on one thread, to measure it): the bytes are
    // those of --threads 1.
    let run = |name: &str, threads: &[&str]| {
        let out = tmp(name);
        let o = train_env(&out, "6400", threads, ("RAYON_NUM_THREADS", Path::new("2")));
        let (so, se) = text(&o);
        assert!(o.status.success(), "{so}{se}");
        (
            so,
            std::fs::read(out.join("checkpoint.json")).unwrap(),
            metrics_without_seconds(&out),
        )
    };
    let (so, paced, paced_metrics) = run("paced", &[]);
    let one: u32 = so
        .lines()
        .find_map(|l| {
            l.split(", ")
                .find_map(|p| p.strip_suffix(" blocks on one thread"))
        })
        .and_then(|p| p.split(" of ").next()?.parse().ok())
        .unwrap_or_else(|| panic!("no block count in {so}"));
    assert!(one >= 1, "{so}");
    let (so, one, one_metrics) = run("paced-1", &["--threads", "1"]);
    assert!(!so.contains("blocks on one thread"), "{so}");
    assert!(
        paced == one,
        "checkpoints differ between a paced run and one thread"
    );
    assert_eq!(paced_metrics, one_metrics);
}

#[test]
fn a_traced_run_writes_every_step_on_a_timeline() {
    let out = tmp("traced");
    let file = tmp("trace.json");
    let o = train_env(&out, "640", &["--threads", "2"], ("FIXNN_TRACE", &file));
    let (so, se) = text(&o);
    assert!(o.status.success(), "{so}{se}");
    assert!(se.contains("trace written to"), "{se}");
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let events = t["traceEvents"].as_array().unwrap();
    let count = |name: &str| events.iter().filter(|e| e["name"] == name).count();
    // 10 steps of 64 samples, each with its phases; fc1's product split.
    for phase in ["batch", "forward", "loss", "backward", "sgd"] {
        assert_eq!(count(phase), 10, "{phase}");
    }
    assert!(count("linear forward") >= 20 && count("linear weight grad") >= 20);
    // A track per thread that recorded a span (whether the other pool
    // thread took a piece of work in 10 steps is up to the scheduler).
    assert!(count("thread_name") >= 1);
    for e in events.iter().filter(|e| e["ph"] == "X") {
        assert!(e["dur"].as_f64().unwrap() >= 0.0 && e["ts"].as_f64().unwrap() >= 0.0);
    }
    // Without the variable, nothing is written and nothing said.
    let o = train(&tmp("untraced"), &["--epochs", "1"]);
    assert!(!text(&o).1.contains("trace written"));
    // A trace that cannot be written is a warning; the run stands.
    let nowhere = tmp("no-such-dir").join("trace.json");
    let o = train_env(
        &tmp("traced-nowhere"),
        "640",
        &[],
        ("FIXNN_TRACE", &nowhere),
    );
    let (so, se) = text(&o);
    assert!(o.status.success(), "{so}{se}");
    assert!(se.contains("warning: cannot write the trace"), "{se}");
    assert!(
        so.trim_end().ends_with(|c: char| c.is_ascii_digit()),
        "{so}"
    );
}

#[test]
fn killed_while_writing_a_checkpoint_leaves_the_previous_one() {
    let out = tmp("crash");
    let o = train(&out, &["--epochs", "1"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let ckpt = out.join("checkpoint.json");
    let before = std::fs::read(&ckpt).unwrap();

    // Resume for a second epoch, dying half-way through the checkpoint write.
    let data = data_dir();
    let m = model();
    let outs = out.to_string_lossy().into_owned();
    let o = Command::new(env!("CARGO_BIN_EXE_fixnn"))
        .args([
            "train",
            &m,
            "--data",
            &data,
            "--out",
            &outs,
            "--train-samples",
            "640",
            "--test-samples",
            "200",
            "--no-report",
            "--epochs",
            "2",
            "--resume",
        ])
        .env("FIXNN_TEST_ABORT_MID_WRITE", "1")
        .output()
        .unwrap();
    assert!(!o.status.success(), "the crash hook did not fire");
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "the previous checkpoint was damaged"
    );
    let e = fixnn(&[
        "eval",
        ckpt.to_str().unwrap(),
        "--data",
        &data,
        "--test-samples",
        "200",
    ]);
    assert!(e.status.success(), "{:?}", text(&e));

    // Resuming again completes the second epoch.
    let o = train(&out, &["--epochs", "2", "--resume"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["epochs"].as_array().unwrap().len(), 2);
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let a = tmp("straight");
    assert!(train(&a, &["--epochs", "2"]).status.success());
    let b = tmp("resumed");
    assert!(train(&b, &["--epochs", "1"]).status.success());
    assert!(train(&b, &["--epochs", "2", "--resume"]).status.success());
    assert!(
        std::fs::read(a.join("checkpoint.json")).unwrap()
            == std::fs::read(b.join("checkpoint.json")).unwrap(),
        "resuming changed the result"
    );
}

/// A resumed run and an uninterrupted one of the MNIST MLP with every
/// config rule changed by `edit`.
struct Resumed {
    /// The 2-epoch run's directory and output.
    straight: Tmp,
    output: Output,
    /// The run stopped after epoch 1 and resumed.
    resumed: Tmp,
    /// The resumed run's checkpoint after epoch 1, and both runs' final one.
    one: String,
    two: String,
}

/// Train the edited model for 2 epochs straight, and for 1 then resumed to
/// 2; assert the final checkpoints are the same bytes.
fn resumed_equals_straight(name: &str, edit: impl Fn(&mut serde_json::Value)) -> Resumed {
    let dir = tmp(&format!("{name}-spec"));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = std::fs::read_to_string(model()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&spec).unwrap();
    for rule in v["configs"].as_array_mut().unwrap() {
        edit(rule);
    }
    let spec = dir.join(format!("mlp-{name}.json"));
    std::fs::write(&spec, v.to_string()).unwrap();
    let spec = spec.to_string_lossy().into_owned();
    let a = tmp(&format!("{name}-straight"));
    let o = train_model(&spec, &a, &["--epochs", "2"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let b = tmp(&format!("{name}-resumed"));
    assert!(train_model(&spec, &b, &["--epochs", "1"]).status.success());
    let one = std::fs::read_to_string(b.join("checkpoint.json")).unwrap();
    assert!(train_model(&spec, &b, &["--epochs", "2", "--resume"])
        .status
        .success());
    let two = std::fs::read_to_string(a.join("checkpoint.json")).unwrap();
    assert!(
        two == std::fs::read_to_string(b.join("checkpoint.json")).unwrap(),
        "{name}: resuming changed the result"
    );
    Resumed {
        straight: a,
        output: o,
        resumed: b,
        one,
        two,
    }
}

/// The MNIST MLP with the running range on every Auto config and 8-bit
/// running gradients: the moving averages live in the checkpoint, so a
/// resumed run continues them and ends with the same bytes.
#[test]
fn running_range_state_is_checkpointed_and_resumed() {
    let r = resumed_equals_straight("running", |rule| {
        rule["data"]["range"] = "running".into();
        rule["grad"] = serde_json::json!({
            "method": "auto", "bits": 8, "scale": 0, "range": "running", "rounding": "stochastic"
        });
    });
    let (one, two, b) = (r.one, r.two, r.resumed);
    // Every running data config carries a state (the first layer's
    // input gradient is never computed, so not every grad does), and the
    // states moved in epoch 2.
    let emas = |t: &str, part: &str| -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_str(t).unwrap();
        v["body"]["configs"]["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e[part]["range"] == "running")
            .map(|e| e[part]["ema"].as_u64().unwrap_or(0))
            .collect()
    };
    let (d1, d2) = (emas(&one, "data"), emas(&two, "data"));
    assert_eq!(d1.len(), 7, "{d1:?}");
    assert!(d1.iter().all(|&e| e != 0), "{d1:?}");
    assert_ne!(d1, d2);
    let (g1, g2) = (emas(&one, "grad"), emas(&two, "grad"));
    assert_eq!(g1.iter().filter(|&&e| e != 0).count(), 6, "{g1:?}");
    assert_ne!(g1, g2);
    let o = fixnn(&["inspect", b.join("checkpoint.json").to_str().unwrap()]);
    assert!(o.status.success());
    assert!(text(&o).0.contains("auto/running"), "{}", text(&o).0);
}

/// The MNIST MLP with per-output-channel weight and gradient scales
/// (real-valued for the weights) and per-feature activation scales: the
/// group scales live in the checkpoint, so a resumed run ends with the
/// same bytes and `eval` (Auto acting as Fixed with the stored per-channel
/// activation scales) reproduces the accuracy the run printed.
#[test]
fn grouped_scales_are_checkpointed_resumed_and_evaluated() {
    let r = resumed_equals_straight("groups", |rule| {
        rule["data"]["group"] = "channel".into();
        if rule["select"]["kind"] == "param" {
            rule["data"]["multiplier"] = (1u32 << 30).into();
            rule["grad"] = serde_json::json!({
                "method": "auto", "bits": 8, "scale": 0, "group": "channel", "rounding": "stochastic"
            });
        }
    });
    let (one, two, a, o) = (r.one, r.two, r.straight, r.output);
    // Every grouped data config (3 Quant outputs, 2 weights, 2 biases) and
    // the weight and bias gradients of both layers have stored scales,
    // one per channel, and they moved in epoch 2.
    let groups = |t: &str| -> Vec<(String, bool, usize, serde_json::Value)> {
        let v: serde_json::Value = serde_json::from_str(t).unwrap();
        v["body"]["state"]["groups"]
            .as_array()
            .unwrap_or_else(|| panic!("no groups in {}", &t[..t.len().min(300)]))
            .iter()
            .map(|e| {
                let n = e["scale"].as_array().unwrap().len();
                // Parameters keep a multiplier per group, activations none.
                let name = e["name"].as_str().unwrap();
                let param = name.ends_with(".weight") || name.ends_with(".bias");
                let m = e["multiplier"].as_array().unwrap().len();
                assert_eq!(m, if param { n } else { 0 }, "{name}");
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["grad"].as_bool().unwrap(),
                    n,
                    e["scale"].clone(),
                )
            })
            .collect()
    };
    let (g1, g2) = (groups(&one), groups(&two));
    let shape: Vec<_> = g1
        .iter()
        .map(|(n, g, len, _)| (n.clone(), *g, *len))
        .collect();
    assert!(
        shape.contains(&("fc1.weight".into(), false, 100)),
        "{shape:?}"
    );
    assert!(shape.contains(&("fc2.bias".into(), true, 10)), "{shape:?}");
    assert_eq!(g1.iter().filter(|e| !e.1).count(), 7, "{shape:?}");
    assert_eq!(g1.iter().filter(|e| e.1).count(), 4, "{shape:?}");
    assert_ne!(g1, g2);
    let printed = text(&o).0;
    let printed = printed.trim_end().lines().last().unwrap().to_string();
    let data = data_dir();
    let e = fixnn(&[
        "eval",
        a.join("checkpoint.json").to_str().unwrap(),
        "--data",
        &data,
        "--test-samples",
        "200",
    ]);
    assert!(e.status.success(), "{:?}", text(&e));
    assert_eq!(text(&e).0.trim_end().lines().last().unwrap(), printed);
}

#[test]
fn damaged_checkpoints_are_refused_and_exports_read_back() {
    let out = tmp("damage");
    let o = train(&out, &["--epochs", "1"]);
    let (so, _) = text(&o);
    assert!(o.status.success());
    let trained: f64 = so.trim_end().lines().last().unwrap()["test_accuracy=".len()..]
        .parse()
        .unwrap();
    let ckpt = out.join("checkpoint.json");
    let data = data_dir();

    // eval reproduces the accuracy the run printed.
    let e = fixnn(&[
        "eval",
        ckpt.to_str().unwrap(),
        "--data",
        &data,
        "--test-samples",
        "200",
    ]);
    let (es, ee) = text(&e);
    assert!(e.status.success(), "{ee}");
    assert_eq!(es.trim_end(), format!("test_accuracy={trained:.2}"));

    let good = std::fs::read(&ckpt).unwrap();
    let truncated = out.join("truncated.json");
    std::fs::write(&truncated, &good[..good.len() * 2 / 3]).unwrap();
    let mut altered = good.clone();
    let at = altered.len() / 2
        + altered[altered.len() / 2..]
            .iter()
            .position(|b| b.is_ascii_digit())
            .unwrap();
    altered[at] = if altered[at] == b'9' {
        b'8'
    } else {
        altered[at] + 1
    };
    let altered_path = out.join("altered.json");
    std::fs::write(&altered_path, &altered).unwrap();
    for (p, needle) in [
        (&truncated, "truncated checkpoint"),
        (&altered_path, "checksum mismatch"),
    ] {
        for cmd in ["eval", "export"] {
            let mut args = vec![cmd, p.to_str().unwrap()];
            if cmd == "export" {
                args.extend(["--format", "bin"]);
            }
            let o = fixnn(&args);
            let (_, err) = text(&o);
            assert_eq!(o.status.code(), Some(2), "{cmd} {}: {err}", p.display());
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
    }

    // Exports: the blob reads back to the checkpoint's codes; the Rust file declares them.
    let bin = out.join("model.bin");
    let o = fixnn(&[
        "export",
        ckpt.to_str().unwrap(),
        "--format",
        "bin",
        "--out",
        bin.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let tensors = fixnn_std::export::parse_bin(&std::fs::read(&bin).unwrap()).unwrap();
    let c = fixnn_std::checkpoint::load(&ckpt).unwrap();
    assert_eq!(tensors.len(), c.state.tensors.len());
    for (t, s) in tensors.iter().zip(&c.state.tensors) {
        assert_eq!(t.name, s.name);
        assert_eq!(Some(&t.codes), s.codes.as_ref(), "{}", t.name);
    }
    let rs = out.join("model.rs");
    let o = fixnn(&[
        "export",
        ckpt.to_str().unwrap(),
        "--format",
        "rust",
        "--out",
        rs.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let src = std::fs::read_to_string(&rs).unwrap();
    assert!(
        src.contains("pub static FC1_WEIGHT: [i8; 78400] = ["),
        "{}",
        &src[..300.min(src.len())]
    );
    assert!(src.contains("pub const FC1_WEIGHT_BITS: u8 = 8;"));
}

/// A 4-bit model exports packed: the blob holds fc1's 78,400 weights in
/// 39,200 bytes and reads back to the checkpoint's codes, the Rust file
/// declares packed byte arrays, and `inspect` shows the packing of the
/// checkpoint and of the blob.
#[test]
fn four_bit_model_exports_packed_codes() {
    let out = tmp("packed");
    let data = data_dir();
    let m = root()
        .join("examples/mnist-mlp-4bit.json")
        .to_string_lossy()
        .into_owned();
    let o = fixnn(&[
        "train",
        &m,
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
        "--train-samples",
        "128",
        "--test-samples",
        "64",
        "--no-report",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let ckpt = out.join("checkpoint.json");
    let bin = out.join("model.bin");
    let o = fixnn(&[
        "export",
        ckpt.to_str().unwrap(),
        "--format",
        "bin",
        "--out",
        bin.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let raw = std::fs::read(&bin).unwrap();
    assert_eq!(&raw[4..6], &[3, 0], "blob version 3");
    let tensors = fixnn_std::export::parse_bin(&raw).unwrap();
    let c = fixnn_std::checkpoint::load(&ckpt).unwrap();
    let mut packed = 0;
    for (t, s) in tensors.iter().zip(&c.state.tensors) {
        assert_eq!(Some(&t.codes), s.codes.as_ref(), "{}", t.name);
        if t.fmt.map(|f| f.0) == Some(4) {
            packed += t.codes.len();
        }
    }
    // fc1 and fc2 weights and biases: 78400 + 100 + 1000 + 10 codes.
    assert_eq!(packed, 79_510);
    // Header 8 + checksum 8; per tensor 1 + name + 9; codes packed two per
    // byte (fc1.bias 100 codes -> 50 bytes, fc2.bias 10 -> 5).
    let names: usize = tensors.iter().map(|t| 10 + t.name.len()).sum();
    assert_eq!(raw.len(), 16 + names + 39_200 + 50 + 500 + 5);
    let rs = out.join("model.rs");
    let o = fixnn(&[
        "export",
        ckpt.to_str().unwrap(),
        "--format",
        "rust",
        "--out",
        rs.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let src = std::fs::read_to_string(&rs).unwrap();
    assert!(src.contains("pub static FC1_WEIGHT: [u8; 39200] = ["));
    assert!(src.contains("pub const FC1_WEIGHT_LEN: usize = 78400;"));
    assert!(src.contains("pub const FC1_WEIGHT_BITS: u8 = 4;"));
    for file in [&bin, &ckpt] {
        let o = fixnn(&["inspect", file.to_str().unwrap()]);
        let (so, se) = text(&o);
        assert!(o.status.success(), "{se}");
        let row = so
            .lines()
            .find(|l| l.starts_with("fc1.weight") && l.contains("packed"))
            .unwrap_or_else(|| panic!("{so}"));
        assert!(
            row.contains("packed 2/byte") && row.ends_with(" 39200"),
            "{row}"
        );
    }
}

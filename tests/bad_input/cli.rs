//! The `fixnn` program, run in process: train, eval, export, inspect,
//! quantize; files that exist beforehand are compared byte for byte.

use super::*;
use crate::core_json::mlp_config_json;
use crate::files::{dataset, idx_images, idx_labels};

// -------------------------------------------------- the fixnn program

/// `fixnn train` with bad model files or options: one line each, naming
/// the file and the field; the output directory gets no files.
#[test]
fn cli_train_refuses_bad_model_files_and_options() {
    let d = tmp("train-bad");
    let data = mnist_dir();
    let data = data.to_str().unwrap();
    let out = d.join("out");
    let outs = out.to_str().unwrap();
    let write = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let model = write("good.json", &mlp_spec(|_| {}));
    for (name, text, needles) in [
        (
            "bits17.json",
            mlp_spec(|v| v["configs"][0]["data"]["bits"] = 17.into()),
            vec!["bits17.json", "configs[0].data", "bit width 17"],
        ),
        (
            "dup.json",
            mlp_spec(|_| {}).replacen(r#""batch":64"#, r#""batch":64,"batch":32"#, 1),
            vec!["dup.json", "duplicate key `batch`"],
        ),
        (
            "arch.json",
            mlp_spec(|v| v["architecture"] = "resnet".into()),
            vec!["architecture", "resnet"],
        ),
        (
            "batch.json",
            mlp_spec(|v| v["batch"] = 0.into()),
            vec!["batch: 0"],
        ),
        ("empty.json", String::new(), vec!["empty.json"]),
        ("deep.json", deep(100_000), vec!["nested deeper than 32"]),
        (
            "group-batch.json",
            mlp_spec(|v| v["configs"][0]["data"]["group"] = "batch".into()),
            vec!["configs[0].data", "fc1.weight", "no batch items"],
        ),
        (
            "group-real-act.json",
            mlp_spec(|v| {
                v["configs"][1]["data"]["group"] = "channel".into();
                v["configs"][1]["data"]["multiplier"] = (1u32 << 30).into();
            }),
            vec!["configs[1].data", "fix0.activation", "powers of two"],
        ),
        (
            "group-range.json",
            mlp_spec(|v| {
                v["configs"][0]["data"]["group"] = "channel".into();
                v["configs"][0]["data"]["range"] = "three_sigma".into();
            }),
            vec!["configs[0].data", "range"],
        ),
    ] {
        let p = write(name, &text);
        cli_refuses(
            &["train", &p, "--data", data, "--out", outs, "--no-report"],
            &needles,
        );
    }
    cli_refuses(
        &[
            "train",
            &model,
            "--threads",
            "0",
            "--data",
            data,
            "--out",
            outs,
        ],
        &["--threads"],
    );
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            data,
            "--out",
            outs,
            "--train-samples",
            "10",
            "--no-report",
        ],
        &["need at least 64 training samples, have 10"],
    );
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            data,
            "--out",
            outs,
            "--test-samples",
            "0",
            "--no-report",
        ],
        &["no test samples"],
    );
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            data,
            "--out",
            outs,
            "--epochs",
            "0",
            "--no-report",
        ],
        &["epochs must be at least 1"],
    );
    let missing = d.join("no-such-dir");
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            missing.to_str().unwrap(),
            "--out",
            outs,
        ],
        &["no-such-dir"],
    );
    let long = d.join("n".repeat(300)).join("model.json");
    cli_refuses(
        &["train", long.to_str().unwrap()],
        &["cannot read", "name too long"],
    );
    cli_refuses(&["train", &model, "--epochs", "-1"], &["-1"]);
    assert!(!out.join("checkpoint.json").exists());

    // Empty data sets: zero training samples, zero test samples.
    let empty = dataset(
        "empty-data",
        (idx_images(0, 28, 28, 0), idx_labels(0, 0)),
        (idx_images(0, 28, 28, 0), idx_labels(0, 0)),
    );
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            empty.to_str().unwrap(),
            "--out",
            outs,
            "--no-report",
        ],
        &["no test samples"],
    );
    let no_train = dataset(
        "no-train",
        (idx_images(0, 28, 28, 0), idx_labels(0, 0)),
        (idx_images(1, 28, 28, 784), idx_labels(1, 1)),
    );
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            no_train.to_str().unwrap(),
            "--out",
            outs,
            "--no-report",
        ],
        &["need at least 64 training samples, have 0"],
    );
    let wrong_size = dataset(
        "wrong-size",
        (idx_images(64, 14, 14, 64 * 196), idx_labels(64, 64)),
        (idx_images(1, 14, 14, 196), idx_labels(1, 1)),
    );
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            wrong_size.to_str().unwrap(),
            "--out",
            outs,
            "--no-report",
        ],
        &[
            "wrong-size",
            "training images are 14x14; the models take 28x28",
        ],
    );
}

/// `fixnn train` onto a directory that holds a run, without `--resume`:
/// refused, and every file there is unchanged byte for byte.
#[test]
fn cli_train_never_overwrites_an_existing_run() {
    let d = tmp("existing-run");
    let model = d.join("model.json");
    std::fs::write(&model, mlp_spec(|_| {})).unwrap();
    let run = d.join("run");
    std::fs::create_dir_all(run.join("report")).unwrap();
    std::fs::write(run.join("checkpoint.json"), b"precious checkpoint").unwrap();
    std::fs::write(run.join("metrics.json"), b"precious metrics").unwrap();
    std::fs::write(run.join("report/report.md"), b"precious report").unwrap();
    let before = snapshot(&run);
    let data = mnist_dir();
    cli_refuses(
        &[
            "train",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
        &[
            "checkpoint.json already holds a run",
            "--resume",
            "--overwrite",
        ],
    );
    assert_eq!(snapshot(&run), before);
    // --resume onto a damaged checkpoint: refused, nothing changed.
    cli_refuses(
        &[
            "train",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--resume",
        ],
        &["checkpoint.json", "not a checkpoint"],
    );
    assert_eq!(snapshot(&run), before);
    cli_refuses(
        &["train", "m.json", "--resume", "--overwrite"],
        &["--overwrite", "--resume"],
    );
}

/// A checkpoint write that fails (its temporary file cannot be created)
/// leaves the previous checkpoint and metrics byte for byte as they were,
/// and says which file could not be written.
#[test]
fn cli_failed_checkpoint_write_keeps_the_previous_files() {
    let d = tmp("failed-write");
    let model = d.join("model.json");
    std::fs::write(&model, mlp_spec(|_| {})).unwrap();
    let run = d.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("checkpoint.json"), fresh_checkpoint()).unwrap();
    std::fs::write(run.join("metrics.json"), br#"{"epochs":[]}"#).unwrap();
    // The atomic write's temporary file name, taken by a directory.
    let blocker = run.join(format!(".checkpoint.json.tmp-{}", std::process::id()));
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let before = snapshot(&run);
    let data = mnist_dir();
    cli_refuses(
        &[
            "train",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--resume",
            "--epochs",
            "1",
            "--train-samples",
            "64",
            "--test-samples",
            "64",
            "--no-report",
        ],
        &["cannot write", "checkpoint.json"],
    );
    assert_eq!(snapshot(&run), before);
}

/// `fixnn eval` and `fixnn export` on bad checkpoints; `export` over an
/// existing file whose write fails keeps that file; `export` to a missing
/// directory says so.
#[test]
fn cli_eval_and_export_refuse_bad_checkpoints_and_keep_existing_files() {
    let d = tmp("export");
    let good = fresh_checkpoint();
    let ckpt = d.join("checkpoint.json");
    std::fs::write(&ckpt, &good).unwrap();
    let cut = d.join("cut.json");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let empty = d.join("empty.json");
    std::fs::write(&empty, b"").unwrap();
    let data = mnist_dir();
    for (p, needle) in [
        (&cut, "truncated checkpoint"),
        (&empty, "truncated checkpoint"),
    ] {
        let ps = p.to_str().unwrap();
        cli_refuses(
            &["eval", ps, "--data", data.to_str().unwrap()],
            &[ps, needle],
        );
        cli_refuses(&["export", ps, "--format", "bin"], &[ps, needle]);
        cli_refuses(&["inspect", ps], &[ps]);
    }
    cli_refuses(
        &[
            "eval",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--test-samples",
            "0",
        ],
        &["no test samples"],
    );
    cli_refuses(
        &["export", ckpt.to_str().unwrap(), "--format", "onnx"],
        &["onnx", "rust", "bin"],
    );

    // Export over an existing file, with the write made to fail.
    let target = d.join("model.bin");
    std::fs::write(&target, b"an older export").unwrap();
    let blocker = d.join(format!(".model.bin.tmp-{}", std::process::id()));
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let before = snapshot(&d);
    cli_refuses(
        &[
            "export",
            ckpt.to_str().unwrap(),
            "--format",
            "bin",
            "--out",
            target.to_str().unwrap(),
        ],
        &["cannot write", "model.bin"],
    );
    assert_eq!(snapshot(&d), before);
    std::fs::remove_dir_all(&blocker).unwrap();
    // Without the blocker it replaces the file with a blob that reads back.
    let (code, _, err) = cli(&[
        "export",
        ckpt.to_str().unwrap(),
        "--format",
        "bin",
        "--out",
        target.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(fixnn_std::export::parse_bin(&std::fs::read(&target).unwrap()).is_ok());

    let nowhere = d.join("missing-dir").join("model.rs");
    cli_refuses(
        &[
            "export",
            ckpt.to_str().unwrap(),
            "--format",
            "rust",
            "--out",
            nowhere.to_str().unwrap(),
        ],
        &["cannot write", "missing-dir"],
    );
    // A damaged blob is refused by the blob reader.
    let blob = std::fs::read(&target).unwrap();
    for cut in [0, 4, blob.len() / 2, blob.len() - 1] {
        assert!(
            fixnn_std::export::parse_bin(&blob[..cut]).is_err(),
            "cut {cut}"
        );
    }
}

/// `fixnn inspect` and `fixnn quantize` on bad input.
#[test]
fn cli_inspect_and_quantize_refuse_bad_input() {
    let d = tmp("inspect");
    let dup = d.join("dup.json");
    std::fs::write(
        &dup,
        mlp_config_json().replacen(
            r#""layer":"Quant","#,
            r#""layer":"Quant","layer":"Linear","#,
            1,
        ),
    )
    .unwrap();
    cli_refuses(
        &["inspect", dup.to_str().unwrap()],
        &["dup.json", "duplicate key `layer`"],
    );
    let nested = d.join("nested.json");
    std::fs::write(&nested, deep(100_000)).unwrap();
    cli_refuses(
        &["inspect", nested.to_str().unwrap()],
        &["nested.json", "nested deeper than 32"],
    );
    let long = d.join("i".repeat(300));
    cli_refuses(
        &["inspect", long.to_str().unwrap()],
        &["cannot read", "name too long"],
    );
    let missing = d.join("missing.json");
    cli_refuses(
        &["inspect", missing.to_str().unwrap()],
        &["cannot read", "missing.json"],
    );

    for bits in BAD_BITS {
        cli_refuses(
            &["quantize", "--bits", &bits.to_string(), "--", "0.5"],
            &["--bits", &bits.to_string()],
        );
    }
    for v in ["nan", "NaN", "inf", "-inf", "1e39"] {
        let (code, out, err) = cli(&["quantize", "--bits", "8", "--", v]);
        assert_eq!(code, 2, "{v}: {out}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("value 1: '{v}' is not a finite f32")),
            "{v}: {err}"
        );
    }
    let input = d.join("values.json");
    std::fs::write(&input, r#"{"values":[1,2],"values":[3]}"#).unwrap();
    cli_refuses(
        &["quantize", "--input", input.to_str().unwrap()],
        &["duplicate key `values`"],
    );
    std::fs::write(&input, deep(50_000)).unwrap();
    cli_refuses(
        &["quantize", "--input", input.to_str().unwrap()],
        &["nested deeper than 32"],
    );
    std::fs::write(&input, "[]").unwrap();
    let (code, out, err) = cli(&["quantize", "--input", input.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("no values given"), "{err}");
    cli_refuses(&["frobnicate"], &["frobnicate"]);
}

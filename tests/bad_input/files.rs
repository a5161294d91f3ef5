//! fixnn-std's files: model files, config and state files, checkpoints,
//! IDX datasets and nics_fix_pt YAML.

use super::*;
use crate::core_json::mlp_config_json;

// ----------------------------------------------- fixnn-std: model files

fn spec_err(text: &str) -> String {
    fixnn_std::spec::ModelSpec::parse(text).unwrap_err()
}

/// Model files: duplicated keys (serde_json would keep the last), unknown
/// keys, bit widths 0/1/17/255, infinite or non-positive learning rates,
/// deep nesting, overlong names and empty text are each one error naming
/// the field.
#[test]
fn model_files_refuse_each_bad_field_by_name() {
    assert!(fixnn_std::spec::ModelSpec::parse(&mlp_spec(|_| {})).is_ok());
    let good = mlp_spec(|_| {});
    let dup = good.replacen(r#""lr":0.01"#, r#""lr":0.01,"lr":10.0"#, 1);
    assert_ne!(dup, good);
    assert!(
        spec_err(&dup).contains("duplicate key `lr`"),
        "{}",
        spec_err(&dup)
    );
    let dup_top = good.replacen(r#""seed":1"#, r#""seed":1,"seed":2"#, 1);
    assert!(spec_err(&dup_top).contains("duplicate key `seed`"));

    let unknown = mlp_spec(|v| v["optimizer"]["nesterov"] = true.into());
    assert!(
        spec_err(&unknown).contains("unknown field `nesterov`"),
        "{}",
        spec_err(&unknown)
    );
    for bits in BAD_BITS {
        let t = mlp_spec(|v| v["configs"][1]["data"]["bits"] = bits.into());
        let e = spec_err(&t);
        assert!(
            e.contains("configs[1].data") && e.contains(&format!("bit width {bits}")),
            "{e}"
        );
        let t = mlp_spec(|v| v["optimizer"]["fixed_master"] = serde_json::json!([bits, 8]));
        assert!(
            spec_err(&t).contains("optimizer.fixed_master"),
            "{}",
            spec_err(&t)
        );
    }
    // 1e39 is infinite as f32; JSON has no NaN literal (a parse error).
    for (field, value) in [
        ("lr", "1e39"),
        ("lr", "0"),
        ("lr", "-0.1"),
        ("momentum", "1e39"),
        ("weight_decay", "-1e39"),
    ] {
        let t = mlp_spec(|v| v["optimizer"][field] = serde_json::from_str(value).unwrap());
        let e = spec_err(&t);
        assert!(
            e.contains("lr must be positive and finite"),
            "{field}={value}: {e}"
        );
    }
    // nics_fix_pt's clamp: accepted up to 15 bits, 16 refused by name;
    // an unknown clamp name is a parse error naming the variants.
    let t = mlp_spec(|v| v["configs"][1]["data"]["clamp"] = "nics".into());
    let spec = fixnn_std::spec::ModelSpec::parse(&t).unwrap();
    let clamps = big(move || {
        let mut m = MnistMlp::build(1).unwrap();
        spec.apply_configs(&mut *m).unwrap();
        let mut c = Vec::new();
        fixnn::model::walk(&mut *m, &mut |_, t| c.push(t.quant.cfg.clamp));
        c
    });
    assert!(clamps.contains(&fixnn::Clamp::Nics), "{clamps:?}");
    let t = mlp_spec(|v| {
        v["configs"][1]["data"]["clamp"] = "nics".into();
        v["configs"][1]["data"]["bits"] = 16.into();
    });
    let e = spec_err(&t);
    assert!(
        e.contains("configs[1].data") && e.contains("bits <= 15"),
        "{e}"
    );
    let t = mlp_spec(|v| v["configs"][1]["data"]["clamp"] = "torch".into());
    let e = spec_err(&t);
    assert!(e.contains("unknown variant `torch`"), "{e}");
    let nan = good.replacen(r#""lr":0.01"#, r#""lr":NaN"#, 1);
    assert!(
        spec_err(&nan).contains("expected value"),
        "{}",
        spec_err(&nan)
    );
    let nested = good.replacen(r#""seed":1"#, &format!(r#""seed":{}"#, deep(1000)), 1);
    assert!(
        spec_err(&nested).contains("nested deeper than 32 levels"),
        "{}",
        spec_err(&nested)
    );
    assert!(spec_err("").contains("EOF"), "{}", spec_err(""));
    // An overlong selector name matches nothing: an error naming the rule.
    let long = "fc1.".repeat(2000);
    let t = mlp_spec(|v| v["configs"][0]["select"] = serde_json::json!({"name": long}));
    let spec = fixnn_std::spec::ModelSpec::parse(&t).unwrap();
    let e = big(move || {
        let mut m = MnistMlp::build(1).unwrap();
        spec.apply_configs(&mut *m).unwrap_err()
    });
    assert!(
        e.contains("configs[0].select") && e.contains("matches no tensor"),
        "{}",
        &e[..80]
    );
}

/// Config-tree and state files: duplicated keys and deep nesting are named;
/// an overlong tensor name is an unknown tensor, reported by its path.
#[test]
fn config_and_state_files_refuse_duplicates_depth_and_unknown_names() {
    let good = mlp_config_json();
    let dup = good.replacen(
        r#""kind":"activation","#,
        r#""kind":"activation","kind":"param","#,
        1,
    );
    assert_ne!(dup, good);
    let e = fixnn_std::configs::ConfigFile::parse(&dup).unwrap_err();
    assert!(e.contains("duplicate key `kind`"), "{e}");
    let e = fixnn_std::configs::ConfigFile::parse(&deep(5000)).unwrap_err();
    assert!(e.contains("nested deeper than 32"), "{e}");
    let long = "y".repeat(5000);
    let t = good.replacen(r#""name":"fc2.bias""#, &format!(r#""name":"{long}""#), 1);
    let cfg = fixnn_std::configs::ConfigFile::parse(&t).unwrap();
    let e = big(move || {
        let mut m = MnistMlp::build(1).unwrap();
        cfg.apply(&mut *m).unwrap_err()
    });
    assert!(e.contains("fc2.bias: missing"), "{e}");
    assert!(
        e.contains("unknown tensor") || e.contains("longer than"),
        "{e}"
    );

    let state = big(|| {
        let mut m = MnistMlp::build(1).unwrap();
        fixnn_std::configs::state_json(&mut *m)
    });
    let dup = state.replacen(r#""format":"#, r#""format":"fixnn-state","format":"#, 1);
    let e = fixnn_std::configs::StateFile::parse(&dup).unwrap_err();
    assert!(e.contains("duplicate key `format`"), "{e}");
}

// ------------------------------------------------------ checkpoints

/// Checkpoints cut at any point, with one byte changed, with a duplicated
/// key under a correct checksum, or empty are refused with one message
/// saying which; the good one loads.
#[test]
fn truncated_altered_and_forged_checkpoints_are_refused() {
    let good = fresh_checkpoint();
    assert!(fixnn_std::checkpoint::decode(&good).is_ok());
    for cut in [
        0,
        1,
        10,
        40,
        good.len() / 3,
        good.len() / 2,
        good.len() - 2,
        good.len() - 1,
    ] {
        let e = fixnn_std::checkpoint::decode(&good[..cut]).unwrap_err();
        assert!(
            e.contains("truncated checkpoint") || e.contains("checksum mismatch"),
            "cut at {cut}: {e}"
        );
    }
    // One byte changed, in the body: the checksum catches it.
    for at in [good.len() / 4, good.len() / 2, good.len() * 9 / 10] {
        let mut bad = good.clone();
        let i = at + bad[at..].iter().position(u8::is_ascii_digit).unwrap();
        bad[i] = if bad[i] == b'9' { b'0' } else { bad[i] + 1 };
        let e = fixnn_std::checkpoint::decode(&bad).unwrap_err();
        assert!(e.contains("checksum mismatch"), "{e}");
    }
    // Not UTF-8; not JSON.
    let mut bin = good.clone();
    bin[20] = 0xff;
    assert!(fixnn_std::checkpoint::decode(&bin)
        .unwrap_err()
        .contains("not UTF-8"));
    // A forged body with a duplicated key and a matching checksum.
    let text = String::from_utf8(good.clone()).unwrap();
    let body_at = text.find(r#""body":"#).unwrap() + 7;
    let body = &text[body_at..text.len() - 1];
    let forged = body.replacen(r#""epoch":0,"#, r#""epoch":0,"epoch":7,"#, 1);
    assert_ne!(forged, body);
    let file = format!(
        r#"{{"checksum":"fnv1a64:{:016x}","body":{forged}}}"#,
        fixnn_std::checkpoint::fnv1a64(forged.as_bytes())
    );
    let e = fixnn_std::checkpoint::decode(file.as_bytes()).unwrap_err();
    assert!(e.contains("duplicate key `epoch`"), "{e}");
    // Checksum right, but a state whose tensor is the wrong length.
    let short = body.replacen(r#""codes":[0,"#, r#""codes":["#, 1);
    let short = if short == body {
        body.replacen(r#""master":["#, r#""master":[0.5,"#, 1)
    } else {
        short
    };
    assert_ne!(short, body);
    let file = format!(
        r#"{{"checksum":"fnv1a64:{:016x}","body":{short}}}"#,
        fixnn_std::checkpoint::fnv1a64(short.as_bytes())
    );
    let c = fixnn_std::checkpoint::decode(file.as_bytes()).unwrap();
    let e = big(move || {
        let mut m = MnistMlp::build(1).unwrap();
        fixnn_std::train::restore(&mut *m, &c).unwrap_err()
    });
    assert!(e.contains("length") || e.contains("buffer"), "{e}");
}

// ------------------------------------------------------- IDX datasets

pub(crate) fn idx_images(count: u32, rows: u32, cols: u32, pixels: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for w in [0x0803u32, count, rows, cols] {
        b.extend_from_slice(&w.to_be_bytes());
    }
    b.resize(16 + pixels, 7);
    b
}

pub(crate) fn idx_labels(count: u32, n: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for w in [0x0801u32, count] {
        b.extend_from_slice(&w.to_be_bytes());
    }
    b.resize(8 + n, 3);
    b
}

/// A dataset directory with the four files given.
pub(crate) fn dataset(name: &str, train: (Vec<u8>, Vec<u8>), test: (Vec<u8>, Vec<u8>)) -> Tmp {
    let d = tmp(name);
    std::fs::write(d.join("train-images-idx3-ubyte"), train.0).unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte"), train.1).unwrap();
    std::fs::write(d.join("t10k-images-idx3-ubyte"), test.0).unwrap();
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), test.1).unwrap();
    d
}

/// IDX files: truncated, wrong magic, zero-sized images, counts that
/// disagree; each error names the file.
#[test]
fn idx_files_refuse_truncation_bad_magic_and_mismatched_counts() {
    use fixnn_std::data::{read_idx, IdxKind};
    let d = tmp("idx");
    let cases: [(&str, Vec<u8>, IdxKind, &str); 5] = [
        (
            "short-header",
            vec![0, 0, 8, 3, 0],
            IdxKind::Images,
            "header",
        ),
        (
            "truncated",
            idx_images(3, 28, 28, 2 * 784),
            IdxKind::Images,
            "3 images of 28x28",
        ),
        ("magic", idx_labels(2, 2), IdxKind::Images, "magic"),
        (
            "zero-rows",
            idx_images(1, 0, 28, 0),
            IdxKind::Images,
            "0x28",
        ),
        ("trailing", idx_labels(2, 5), IdxKind::Labels, "2 labels"),
    ];
    for (name, bytes, kind, needle) in cases {
        let p = d.join(name);
        std::fs::write(&p, &bytes).unwrap();
        let e = read_idx(&p, kind).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()), "{e}");
        assert!(e.contains(needle), "{name}: {e}");
    }
    let e = fixnn_std::data::Split::from_files(
        fixnn_std::data::Dataset::Mnist,
        &{
            let p = d.join("imgs");
            std::fs::write(&p, idx_images(3, 28, 28, 3 * 784)).unwrap();
            p
        },
        &{
            let p = d.join("labels");
            std::fs::write(&p, idx_labels(2, 2)).unwrap();
            p
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("3") && e.contains("2"), "{e}");
}

/// nics_fix_pt YAML configs: block nesting that used to overflow the stack
/// (200,000 levels of `- `) is refused at level 65, flow nesting by the
/// parser's own limit, duplicated keys by name.
#[test]
fn nics_yaml_refuses_deep_nesting_and_duplicated_keys() {
    use fixnn_std::nics::{parse, ScaleForm, MAX_YAML_DEPTH};
    let ok = "- ".repeat(MAX_YAML_DEPTH) + "x";
    let e = parse(&ok, ScaleForm::Auto).unwrap_err();
    assert!(
        e.contains("expected a mapping with `data` and `grad`"),
        "{e}"
    );
    let e = parse(&("- ".repeat(200_000) + "x"), ScaleForm::Auto).unwrap_err();
    assert!(
        e.contains(&format!("YAML nested deeper than {MAX_YAML_DEPTH} levels")),
        "{e}"
    );
    let e = parse(&("a: ".to_string() + &"[".repeat(200_000)), ScaleForm::Auto).unwrap_err();
    assert!(e.contains("recursion limit exceeded"), "{e}");
    let dup = "data:\n  fc1:\n    weight: {bitwidth: 8, scale: 1, method: 1}\n    weight: {bitwidth: 4, scale: 1, method: 1}\n";
    let e = parse(dup, ScaleForm::Auto).unwrap_err();
    assert!(
        e.contains("\"weight\"") && e.contains("duplicated key"),
        "{e}"
    );

    let d = tmp("yaml");
    let p = d.join("deep.yaml");
    std::fs::write(&p, "- ".repeat(200_000)).unwrap();
    cli_refuses(
        &["inspect", p.to_str().unwrap()],
        &["deep.yaml", "YAML nested deeper than 64 levels"],
    );
}

/// A tensor with nics_fix_pt's clamp (8 bits: code 128 needs 9) exports
/// to Rust as `i16` codes and is refused by the binary export, whose
/// layout stores 8-bit codes as `i8` (it would wrap 128 to -128).
#[test]
fn nics_clamped_tensors_export_wide_to_rust_and_not_to_bin() {
    let t = mlp_spec(|v| v["configs"][0]["data"]["clamp"] = "nics".into());
    let spec = fixnn_std::spec::ModelSpec::parse(&t).unwrap();
    let file = big(move || {
        let mut m = MnistMlp::build(1).unwrap();
        spec.apply_configs(&mut *m).unwrap();
        // A weight at the top of the range: code 128 only with the nics clamp.
        m.fc1.weight.master[0][0] = 1.0;
        m.fc1.weight.master[0][1] = 1.0;
        m.fc1.weight.refresh(&Ctx::train(1, 0)).unwrap();
        assert_eq!(m.fc1.weight.q.v[0][0], 1.0);
        let configs = fixnn_std::configs::ConfigFile::of(&mut *m);
        let state = fixnn_std::configs::state_json(&mut *m);
        fixnn_std::checkpoint::encode(0, 0, &spec, &configs, &state, &Default::default()).unwrap()
    });
    let ck = fixnn_std::checkpoint::decode(&file).unwrap();
    let e = fixnn_std::export::to_bin(&ck).unwrap_err();
    assert!(e.contains("fc1.weight") && e.contains("nics"), "{e}");
    let rs = fixnn_std::export::to_rust(&ck, "test").unwrap();
    assert!(
        rs.contains("pub static FC1_WEIGHT: [i16; 78400] = [\n    128, 128, "),
        "{}",
        &rs[..rs.len().min(2000)]
    );
}

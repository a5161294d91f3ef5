//! The `fixnn` binary as a user runs it: exit status, stdout, stderr.

use std::io::Write;
use std::process::{Command, Output, Stdio};

#[path = "../../tests/common/tmp.rs"]
mod tmp;
use tmp::Tmp;

fn fixnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fixnn"))
        .args(args)
        .output()
        .expect("run fixnn")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn issue_example_prints_codes_and_values() {
    let o = fixnn(&[
        "quantize", "--bits", "2", "--scale", "-1", "--method", "fixed", "--json", "--", "0.2513",
        "-0.5", "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "{\"bits\":2,\"scale\":-1,\"step\":0.25,\"codes\":[1,-2,0],\"values\":[0.25,-0.5,0.0],\"saturated\":0}\n"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["codes"], serde_json::json!([1, -2, 0]));
    assert_eq!(v["values"], serde_json::json!([0.25, -0.5, 0.0]));
}

#[test]
fn negative_values_work_with_and_without_double_dash() {
    for args in [
        &["quantize", "--bits", "4", "--json", "--", "-0.3", "-1"][..],
        &["quantize", "-0.3", "-1", "--bits", "4", "--json"][..],
    ] {
        let o = fixnn(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["scale"], 0, "auto: ceil(log2 1) = 0");
        assert_eq!(v["codes"], serde_json::json!([-2, -8]));
    }
}

#[test]
fn json_is_exactly_one_object_and_auto_reports_the_chosen_scale() {
    let o = fixnn(&[
        "quantize", "--bits", "8", "--method", "auto", "--json", "3.0", "-0.1",
    ]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["scale"], 2);
    assert_eq!(v["step"], 0.03125);
    assert_eq!(v.as_object().unwrap().len(), 6);
}

#[test]
fn table_marks_saturated_values() {
    let o = fixnn(&[
        "quantize", "--bits", "2", "--scale", "-1", "--", "0.2513", "0.6",
    ]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains("step 0.25"), "{text}");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(char::is_numeric))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        !rows[0].contains("yes") && rows[1].ends_with("yes"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("saturated: 1 of 2"), "{text}");
}

#[test]
fn input_file_and_stdin() {
    let dir = Tmp::new("cli", "input", true);
    let file = dir.join("values.json");
    std::fs::write(&file, "{\"values\": [0.25, -0.5]}").unwrap();
    let o = fixnn(&[
        "quantize",
        "--scale",
        "-1",
        "--bits",
        "2",
        "--json",
        "--input",
        file.to_str().unwrap(),
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["codes"], serde_json::json!([1, -2, 0]));

    let mut child = Command::new(env!("CARGO_BIN_EXE_fixnn"))
        .args([
            "quantize", "--json", "--bits", "4", "--scale", "0", "--input", "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"[0.5, -1]").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["codes"], serde_json::json!([4, -8]));
}

/// Each bad input: exit status 2, exactly one line on stderr naming the
/// problem, nothing on stdout, no panic.
#[test]
fn bad_input_is_one_line_and_status_2() {
    let dir = Tmp::new("cli", "bad", true);
    let malformed = dir.join("malformed.json");
    std::fs::write(&malformed, "[1, 2,").unwrap();
    let wrong_type = dir.join("strings.json");
    std::fs::write(&wrong_type, "[1, \"two\"]").unwrap();
    let missing = dir.join("missing.json");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["quantize", "abc"], "cannot parse 'abc'"),
        (vec!["quantize", "--", "1", "1.2.3"], "'1.2.3'"),
        (vec!["quantize", "nan"], "not a finite"),
        (vec!["quantize", "1e39"], "not a finite"),
        (vec!["quantize", "--bits", "1", "1"], "'1' for '--bits"),
        (vec!["quantize", "--bits", "17", "1"], "'17' for '--bits"),
        (vec!["quantize", "--bits", "x", "1"], "'x' for '--bits"),
        (
            vec!["quantize", "--scale", "128", "1"],
            "'128' for '--scale",
        ),
        (
            vec!["quantize", "--scale", "-129", "1"],
            "'-129' for '--scale",
        ),
        (
            vec!["quantize", "--method", "sometimes", "1"],
            "possible values: none, auto, fixed",
        ),
        (
            vec!["quantize", "--range", "min", "1"],
            "'min' for '--range",
        ),
        (
            vec!["quantize", "--rounding", "up", "1"],
            "'up' for '--rounding",
        ),
        (vec!["quantize"], "no values given"),
        (
            vec!["quantize", "--input", malformed.to_str().unwrap()],
            "malformed.json: expected a JSON array",
        ),
        (
            vec!["quantize", "--input", wrong_type.to_str().unwrap()],
            "element 1 is not a number",
        ),
        (
            vec!["quantize", "--input", missing.to_str().unwrap()],
            "cannot read --input",
        ),
        (vec!["quantise", "1"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let o = fixnn(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("fixnn: error: "), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err} lacks {needle}");
        assert!(stdout(&o).is_empty(), "{args:?}");
        assert!(!err.contains("panicked"));
    }
}

#[test]
fn help_and_version_exit_zero() {
    let o = fixnn(&["quantize", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("--rounding"));
    let o = fixnn(&["--version"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("fixnn "));
}

mod inspect {
    use super::*;
    use fixnn::layers::{Chain, Linear, Quant};
    use fixnn::tensor::S2;
    use fixnn::QuantConfig;
    use fixnn_std::configs;

    /// A fresh, empty directory for one test.
    fn dir(name: &str) -> Tmp {
        Tmp::new("inspect", name, true)
    }

    fn model() -> Chain<Quant<S2<1, 3>>, Linear<3, 2, 1>> {
        let mut m = Chain::new(Quant::new(0), Linear::new(1));
        m.b.weight.quant.cfg = QuantConfig::fixed(6, -2);
        m.b.weight.quant.grad_cfg = QuantConfig::auto(12);
        m
    }

    #[test]
    fn config_tree_table() {
        let tmp_dir = dir("cfg");
        let p = tmp_dir.join("cfg.json");
        configs::save_configs(&mut model(), &p).unwrap();
        let o = fixnn(&["inspect", p.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let t = stdout(&o);
        assert!(t.contains("config tree, 4 tensors"), "{t}");
        let row = t.lines().find(|l| l.starts_with("1.weight")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["1.weight", "Linear", "param", "6", "-2", "fixed", "12", "0", "auto"]
        );
    }

    #[test]
    fn state_table() {
        let tmp_dir = dir("state");
        let p = tmp_dir.join("state.json");
        std::fs::write(&p, configs::state_json(&mut model())).unwrap();
        let o = fixnn(&["inspect", p.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let t = stdout(&o);
        assert!(t.contains("model state, 2 tensors"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("1.weight") && l.trim_end().ends_with(" 6")),
            "{t}"
        );
    }

    #[test]
    fn tables_name_the_range_method_of_auto() {
        let tmp_dir = dir("running");
        let p = tmp_dir.join("running.json");
        let mut m = model();
        m.b.weight.quant.grad_cfg.range = fixnn::RangeMethod::Running;
        m.b.weight.quant.grad_cfg.ema = 0x80C0_0000;
        m.a.out.quant.cfg = QuantConfig {
            range: fixnn::RangeMethod::ThreeSigma,
            ..QuantConfig::auto(8)
        };
        configs::save_configs(&mut m, &p).unwrap();
        let o = fixnn(&["inspect", p.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let t = stdout(&o);
        let cells = |name: &str| -> Vec<String> {
            let row = t.lines().find(|l| l.starts_with(name)).unwrap();
            row.split_whitespace().map(str::to_string).collect()
        };
        assert_eq!(
            cells("1.weight"),
            [
                "1.weight",
                "Linear",
                "param",
                "6",
                "-2",
                "fixed",
                "12",
                "0",
                "auto/running"
            ]
        );
        assert_eq!(cells("0.activation")[5], "auto/3sigma");
        let yaml_dir = dir("running-yaml");
        let y = yaml_dir.join("running.yaml");
        std::fs::write(
            &y,
            "data:\n  fc1:\n    weight: {bitwidth: 8, method: 1, scale: 1, range_method: 4}\ngrad:\n  fc1: {}\n",
        )
        .unwrap();
        let o = fixnn(&["inspect", y.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o)
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == [
                        "fc1.weight",
                        "-",
                        "-",
                        "8",
                        "1",
                        "auto/running",
                        "-",
                        "-",
                        "-"
                    ]),
            "{}",
            stdout(&o)
        );
    }

    #[test]
    fn nics_yaml_table_says_which_scale_form_it_read() {
        let tmp_dir = dir("nics");
        let p = tmp_dir.join("nics.yaml");
        std::fs::write(
            &p,
            "data:\n  fc1:\n    weight: {bitwidth: 8, method: 1, scale: 0.5}\ngrad:\n  fc1: {}\n",
        )
        .unwrap();
        let o = fixnn(&["inspect", p.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let t = stdout(&o);
        assert!(t.contains("scale read as the value 2^k"), "{t}");
        assert!(
            t.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["fc1.weight", "-", "-", "8", "-1", "auto", "-", "-", "-"]),
            "{t}"
        );
        let o = fixnn(&["inspect", "--nics-scale", "exponent", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "0.5 is no exponent");
        assert!(stderr(&o).contains("fc1.weight.scale"), "{}", stderr(&o));
    }

    #[test]
    fn bad_files_are_one_line_and_status_2() {
        let d = dir("bad-files");
        let cases = [
            ("garbage.txt", "\u{0}\u{1}: [", "not a fixnn JSON file"),
            (
                "noformat.json",
                "{\"tensors\": []}",
                "without a `format` key",
            ),
            (
                "other.json",
                "{\"format\": \"x\"}",
                "unknown document format `x`",
            ),
            (
                "trunc.json",
                "{\"format\":\"fixnn-config\",\"version\":1,\"tensors\":[{\"name\":\"a\"",
                "not a fixnn JSON file",
            ),
        ];
        for (name, text, needle) in cases {
            let p = d.join(name);
            std::fs::write(&p, text).unwrap();
            let o = fixnn(&["inspect", p.to_str().unwrap()]);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{name}: {err}");
            assert_eq!(err.lines().count(), 1, "{name}: {err}");
            assert!(err.contains(needle), "{name}: {err} lacks {needle}");
        }
        let o = fixnn(&["inspect", d.join("missing.json").to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("cannot read"));
    }
}

#[test]
fn clamp_nics_keeps_the_top_code_as_nics_fix_pt() {
    // nics_fix_pt's gradient test values: with its clamp 0.5 stays 0.5
    // (code 2 of a 2-bit format), with the hardware clamp it becomes 0.25.
    let o = fixnn(&[
        "quantize", "--bits", "2", "--method", "auto", "--clamp", "nics", "--json", "0.5", "0.26",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "{\"bits\":2,\"scale\":-1,\"clamp\":\"nics\",\"step\":0.25,\"codes\":[2,1],\"values\":[0.5,0.25],\"saturated\":0}\n"
    );
    let o = fixnn(&[
        "quantize", "--bits", "2", "--method", "auto", "--json", "0.5", "0.26",
    ]);
    assert_eq!(
        stdout(&o),
        "{\"bits\":2,\"scale\":-1,\"step\":0.25,\"codes\":[1,1],\"values\":[0.25,0.25],\"saturated\":1}\n"
    );
    let o = fixnn(&[
        "quantize", "--bits", "4", "--scale", "0", "--clamp", "nics", "1",
    ]);
    assert!(
        stdout(&o)
            .contains("range [-1, 1]; method fixed, range max, rounding nearest-even, clamp nics"),
        "{}",
        stdout(&o)
    );
    // 16 bits cannot hold code 2^15: refused with the reason.
    let o = fixnn(&["quantize", "--bits", "16", "--clamp", "nics", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bits <= 15"), "{}", stderr(&o));
    let o = fixnn(&["quantize", "--clamp", "torch", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("'torch' for '--clamp"),
        "{}",
        stderr(&o)
    );
}

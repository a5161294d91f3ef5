//! Config trees and states: listing, JSON round trips without a heap,
//! loading with errors that name paths, selection by type and name, tables.

use fixnn::layers::{Chain, Linear, Quant, Relu};
use fixnn::model::{
    self, collect_configs, set_method, write_table, ConfigDoc, ConfigProblem, LoadEntry, Select,
    StateView, Which,
};
use fixnn::tensor::S2;
use fixnn::{Method, QuantConfig, RangeMethod, Rounding};

type Net = Chain<Chain<Chain<Quant<S2<2, 4>>, Linear<4, 3, 2>>, Relu<S2<2, 3>>>, Linear<3, 2, 2>>;

fn net() -> Net {
    let mut l1 = Linear::new(1);
    l1.weight.init_uniform(1, 0.5);
    let mut l2 = Linear::new(3);
    l2.weight.init_uniform(1, 0.5);
    l2.bias.quant.grad_cfg = QuantConfig {
        rounding: Rounding::Stochastic,
        range: RangeMethod::ThreeSigma,
        ..QuantConfig::auto(6)
    };
    Chain::new(Chain::new(Chain::new(Quant::new(0), l1), Relu::new(2)), l2)
}

fn paths(m: &mut Net) -> Vec<String> {
    let mut v = Vec::new();
    model::walk(m, &mut |name, _| v.push(name.to_string()));
    v
}

#[test]
fn sequence_paths_are_flat_indices() {
    let mut m = net();
    assert_eq!(
        paths(&mut m),
        [
            "0.activation",
            "1.weight",
            "1.bias",
            "1.output",
            "2.output",
            "3.weight",
            "3.bias",
            "3.output"
        ]
    );
}

#[test]
fn config_tree_json_round_trip_without_heap() {
    let mut m = net();
    let doc: ConfigDoc<16> = collect_configs(&mut m).unwrap();
    let mut buf = [0u8; 4096];
    let n = serde_json_core::to_slice(&doc, &mut buf).unwrap();
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    assert!(text.starts_with(r#"{"format":"fixnn-config","version":1,"tensors":[{"name":"0.activation","kind":"activation","layer":"Quant","data":{"method":"none""#));
    let mut scratch = [0u8; 128];
    let (back, used): (ConfigDoc<16>, usize) =
        serde_json_core::from_str_escaped(text, &mut scratch).unwrap();
    assert_eq!(used, n);
    assert_eq!(back, doc);
    // Load onto a fresh model: same tree again.
    let mut fresh = net();
    set_method(&mut fresh, Method::Fixed, Select::All, Which::Both);
    assert_eq!(back.apply(&mut fresh), Ok(8));
    assert_eq!(collect_configs::<Net, 16>(&mut fresh).unwrap(), doc);
}

#[test]
fn too_small_a_document_is_an_error() {
    let mut m = net();
    let e = collect_configs::<Net, 4>(&mut m).unwrap_err();
    assert_eq!(e.problem, ConfigProblem::TooMany);
}

fn snapshot(m: &mut Net) -> String {
    let mut s = String::new();
    write_table(m, &mut s).unwrap();
    s
}

#[test]
fn bad_trees_name_every_path_and_change_nothing() {
    let mut m = net();
    let before = snapshot(&mut m);
    let good = QuantConfig::auto(8);
    let bad_bits = QuantConfig { bits: 17, ..good };
    let entries = [
        LoadEntry {
            name: "0.activation",
            kind: None,
            data: Some(&good),
            grad: Some(&good),
        },
        LoadEntry {
            name: "1.weight",
            kind: None,
            data: Some(&bad_bits),
            grad: Some(&good),
        },
        LoadEntry {
            name: "1.bias",
            kind: Some(model::Kind::Activation),
            data: Some(&good),
            grad: None,
        },
        LoadEntry {
            name: "1.output",
            kind: None,
            data: Some(&good),
            grad: None,
        },
        LoadEntry {
            name: "1.output",
            kind: None,
            data: Some(&good),
            grad: None,
        },
        LoadEntry {
            name: "9.weight",
            kind: None,
            data: Some(&good),
            grad: None,
        },
    ];
    let report = model::apply_configs(&mut m, &entries, false).unwrap_err();
    let text = report.to_string();
    for needle in [
        "1.weight.data: bit width 17 is outside 2..=16",
        "1.output: listed more than once",
        "1.bias: kind differs",
        "2.output: missing",
        "9.weight: unknown tensor",
    ] {
        assert!(text.contains(needle), "{text} lacks {needle}");
    }
    assert_eq!(report.total, 8, "{text}");
    assert_eq!(snapshot(&mut m), before, "a failed load changed the model");
}

#[test]
fn set_method_by_type_name_and_kind() {
    let mut m = net();
    assert_eq!(
        set_method(&mut m, Method::Auto, Select::Type("Linear"), Which::Data),
        6
    );
    assert_eq!(
        set_method(&mut m, Method::Fixed, Select::Name("3"), Which::Grad),
        3
    );
    assert_eq!(
        set_method(&mut m, Method::Fixed, Select::Name("3.bias"), Which::Both),
        1
    );
    assert_eq!(
        set_method(
            &mut m,
            Method::Auto,
            Select::Kind(model::Kind::Activation),
            Which::Data
        ),
        4
    );
    assert_eq!(
        set_method(&mut m, Method::Auto, Select::Name("1.w"), Which::Data),
        0,
        "prefixes match whole segments"
    );
    let doc: ConfigDoc<16> = collect_configs(&mut m).unwrap();
    let get = |n: &str| doc.tensors.iter().find(|e| e.name == n).unwrap().clone();
    assert_eq!(get("1.weight").data.method, Method::Auto);
    assert_eq!(get("1.weight").grad.method, Method::None);
    assert_eq!(get("3.weight").grad.method, Method::Fixed);
    assert_eq!(get("3.bias").data.method, Method::Fixed);
    assert_eq!(get("2.output").data.method, Method::Auto);
}

#[test]
fn table_lists_every_tensor() {
    let mut m = net();
    let t = snapshot(&mut m);
    assert_eq!(t.lines().count(), 9);
    assert!(t.lines().any(|l| l.starts_with("3.bias")
        && l.contains("Linear")
        && l.contains("param")
        && l.contains("auto")));
}

#[test]
fn state_serializes_without_heap() {
    let mut m = net();
    let ctx = fixnn::tensor::Ctx::train(0, 0);
    m.a.a.b.weight.quant.cfg = QuantConfig::fixed(4, 0);
    m.a.a.b.weight.refresh(&ctx).unwrap();
    let mut buf = [0u8; 8192];
    let n = serde_json_core::to_slice(&StateView::new(&mut m), &mut buf).unwrap();
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    assert!(text.starts_with(r#"{"format":"fixnn-state","version":1,"tensors":[{"name":"1.weight","kind":"param","layer":"Linear","fmt":{"bits":4,"scale":0},"codes":["#), "{text}");
    assert!(text.contains(r#"{"name":"1.bias","kind":"param","layer":"Linear","fmt":null,"codes":null,"values":[0.0,0.0,0.0],"master":[0.0,0.0,0.0],"momentum":[0.0,0.0,0.0]}"#), "{text}");
    assert!(!text.contains("output"), "activations are not state");
}

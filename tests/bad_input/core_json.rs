//! The core's JSON: config trees and entries through fixnn's reader, the
//! structure check, states and config trees that list a tensor twice.

use super::*;

// ------------------------------------------------- core: config JSON

/// A config tree of the MLP, as the core writes it.
pub(crate) fn mlp_config_json() -> String {
    big(|| {
        let mut m = MnistMlp::build(1).unwrap();
        fixnn_std::configs::ConfigFile::of(&mut *m).to_json()
    })
}

/// The core's config-tree reader (fixnn's own, as on a device): a
/// duplicated key is an error naming the key, at any level; deep nesting is
/// an error at its first bracket, not a stack overflow (run on a 64 KiB
/// stack); unknown keys, numbers out of range, bad bit widths, overlong
/// names and too many tensors are errors; a good tree loads.
#[test]
fn core_config_doc_refuses_duplicates_depth_unknown_keys_and_overlong_names() {
    let good = mlp_config_json();
    type Doc = ConfigDoc<12>;
    let doc = Doc::from_json(good.as_bytes()).unwrap();
    assert_eq!(doc.tensors.len(), 10);
    let at = |pat: &str| good.find(pat).unwrap();

    // A duplicated key in an entry's data config, and at the top level.
    let dup = good.replacen(r#""bits":8,"#, r#""bits":8,"bits":4,"#, 1);
    assert_ne!(dup, good);
    let e = Doc::from_json(dup.as_bytes()).unwrap_err();
    assert_eq!(
        e,
        ReadError {
            problem: ReadProblem::DuplicateField,
            field: "bits",
            offset: at(r#""bits":8,"#) + 9
        }
    );
    assert!(e.to_string().contains("field given twice: `bits`"), "{e}");
    let dup_top = good.replacen(r#""version":1,"#, r#""version":1,"version":1,"#, 1);
    let e = Doc::from_json(dup_top.as_bytes()).unwrap_err();
    assert_eq!(
        (e.problem, e.field),
        (ReadProblem::DuplicateField, "version")
    );
    // serde-json-core (no longer used on the device) refuses it without
    // saying why.
    assert_eq!(
        serde_json_core::from_str::<Doc>(&dup).map(|_| ()),
        Err(serde_json_core::de::Error::CustomError)
    );

    // Nesting: ten thousand levels on a small stack, refused at the first.
    let nested = format!(r#"{{"format":{}}}"#, deep(10_000));
    let e = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || Doc::from_json(nested.as_bytes()).map(|_| ()).unwrap_err())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        e,
        ReadError {
            problem: ReadProblem::WrongType,
            field: "format",
            offset: 10
        }
    );

    // Unknown key, named by its offset and object.
    let unknown = good.replacen(r#""layer":"#, r#""colour":"red","layer":"#, 1);
    let e = Doc::from_json(unknown.as_bytes()).unwrap_err();
    assert_eq!(
        (e.problem, e.offset),
        (ReadProblem::UnknownField, at(r#""layer":"#))
    );
    // Numbers out of range for their field's type: never wrapped.
    for (field, value) in [
        ("bits", "256"),
        ("bits", "-1"),
        ("scale", "128"),
        ("scale", "-129"),
    ] {
        let from = format!(r#""{field}":"#);
        let t = good.replacen(
            &format!("{from}{}", if field == "bits" { "8" } else { "0" }),
            &format!("{from}{value}"),
            1,
        );
        assert_ne!(t, good);
        let e = Doc::from_json(t.as_bytes()).unwrap_err();
        assert_eq!(
            (e.problem, e.field, e.offset),
            (ReadProblem::OutOfRange, field, at(&from) + from.len())
        );
        assert!(
            e.to_string()
                .contains(&format!("number out of range: `{field}`")),
            "{e}"
        );
    }
    // Bit width 17 fits a u8: parsed, then refused on apply with its path.
    for bits in BAD_BITS {
        let t = good.replacen(r#""bits":8,"#, &format!(r#""bits":{bits},"#), 1);
        let doc = Doc::from_json(t.as_bytes()).unwrap();
        let r = big(move || {
            let mut m = MnistMlp::build(1).unwrap();
            doc.apply(&mut *m).unwrap_err().to_string()
        });
        assert!(
            r.contains(&format!("bit width {bits} is outside 2..=16")),
            "{r}"
        );
        assert!(r.contains(".data") || r.contains(".grad"), "{r}");
    }
    // A name longer than the path capacity; more tensors than the doc holds.
    let long = "x".repeat(model::MAX_PATH + 1);
    let first = format!(r#""name":"{}""#, doc.tensors[0].name);
    let t = good.replacen(&first, &format!(r#""name":"{long}""#), 1);
    assert_ne!(t, good);
    let e = Doc::from_json(t.as_bytes()).unwrap_err();
    assert_eq!(
        (e.problem, e.field, e.offset),
        (ReadProblem::TooLong, "name", at(&first) + 7)
    );
    let fits = good.replacen(&first, &format!(r#""name":"{}""#, &long[1..]), 1);
    assert!(Doc::from_json(fits.as_bytes()).is_ok());
    let e = ConfigDoc::<4>::from_json(good.as_bytes()).unwrap_err();
    assert_eq!((e.problem, e.field), (ReadProblem::TooLong, "tensors"));
    // An empty text, and a text cut short.
    assert_eq!(Doc::from_json(b"").unwrap_err().problem, ReadProblem::End);
    let half = &good.as_bytes()[..good.len() / 2];
    assert_eq!(Doc::from_json(half).unwrap_err().problem, ReadProblem::End);
}

/// One config entry as the device cases send it, read by the device's
/// reader (`ConfigEntry::from_json`, what the firmware calls): deep
/// nesting, duplicate keys, overlong names and keys, numbers out of range
/// are each one error naming the field and offset.
#[test]
fn device_config_entry_reader_names_the_bad_field() {
    let good = r#"{"name":"fc1.weight","kind":"param","layer":"Linear","data":{"method":"auto","bits":8,"scale":0},"grad":{"method":"none","bits":8,"scale":0}}"#;
    assert!(ConfigEntry::from_json(good.as_bytes()).is_ok());
    let err = |t: &str| {
        let e = ConfigEntry::from_json(t.as_bytes()).unwrap_err();
        (e.problem, e.field, e.offset)
    };
    let data = good.find(r#""data":"#).unwrap() + 7;
    let grad = good.find(r#""grad":"#).unwrap() + 7;
    // Deep nesting where the data config belongs, on a small stack.
    let nested = good.replacen(
        r#"{"method":"auto","bits":8,"scale":0}"#,
        &"[".repeat(100_000),
        1,
    );
    let e = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || err(&nested))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(e, (ReadProblem::WrongType, "data", data));
    // Duplicate keys: top level, inside a config.
    let t = good.replacen(
        r#""kind":"param","#,
        r#""kind":"param","kind":"buffer","#,
        1,
    );
    assert_eq!(err(&t).0, ReadProblem::DuplicateField);
    assert_eq!(err(&t).1, "kind");
    let t = good.replacen(r#""scale":0}}"#, r#""scale":0,"scale":1}}"#, 1);
    assert_eq!(err(&t).0, ReadProblem::DuplicateField);
    // Overlong name, overlong layer type, overlong key.
    let t = good.replacen("fc1.weight", &"n".repeat(model::MAX_PATH + 1), 1);
    assert_eq!(err(&t), (ReadProblem::TooLong, "name", 8));
    let t = good.replacen("Linear", &"L".repeat(model::MAX_TYPE + 1), 1);
    assert_eq!(err(&t).0, ReadProblem::TooLong);
    assert_eq!(err(&t).1, "layer");
    let key = "k".repeat(1000);
    let t = good.replacen(r#""kind""#, &format!(r#""{key}""#), 1);
    assert_eq!(err(&t).0, ReadProblem::UnknownField);
    // Numbers out of range in the grad config, and a 40-digit number.
    let t = good.replacen(r#""none","bits":8"#, r#""none","bits":300"#, 1);
    assert_eq!(err(&t), (ReadProblem::OutOfRange, "bits", grad + 24));
    let t = good.replacen(
        r#""scale":0}}"#,
        &format!(r#""scale":-{}}}}}"#, "9".repeat(40)),
        1,
    );
    assert_eq!(err(&t), (ReadProblem::OutOfRange, "scale", grad + 34));
    let t = good.replacen(r#""bits":8"#, r#""bits":8.5"#, 1);
    assert_eq!(err(&t), (ReadProblem::NotAnInteger, "bits", data + 24));
    // A missing required field, an unknown variant.
    let t = good.replacen(r#","layer":"Linear""#, "", 1);
    assert_eq!(err(&t).0, ReadProblem::MissingField);
    assert_eq!(err(&t).1, "layer");
    let t = good.replacen(r#""auto""#, r#""Auto""#, 1);
    assert_eq!(err(&t), (ReadProblem::UnknownVariant, "method", data + 10));
}

/// The core's structure check itself: the duplicate is named wherever it
/// is, and exactly MAX_DEPTH levels are allowed.
#[test]
fn json_structure_check_names_the_duplicate_and_limits_depth() {
    assert_eq!(
        check_json(r#"{"a":[{"b":1,"c":{"b":2},"b":3}]}"#),
        Err(JsonProblem::DuplicateKey {
            key: "b",
            offset: 25
        })
    );
    assert_eq!(check_json(&deep(MAX_DEPTH)), Ok(()));
    assert!(matches!(
        check_json(&deep(MAX_DEPTH + 1)),
        Err(JsonProblem::TooDeep { offset }) if offset == MAX_DEPTH
    ));
}

/// Model states: wrong lengths, codes outside their format, NaN masters,
/// bad bit widths are each refused by path, and the model is unchanged.
#[test]
fn core_state_loading_refuses_bad_tensors_and_leaves_the_model_alone() {
    let report = big(|| {
        let mut m = MnistMlp::build(1).unwrap();
        let fc1_before = m.fc1.weight.master;
        let state = fixnn_std::configs::state_json(&mut *m);
        let mut v: serde_json::Value = serde_json::from_str(&state).unwrap();
        let mut problems = Vec::new();
        let tensors = v["tensors"].as_array_mut().unwrap();
        for t in tensors.iter_mut() {
            let name = t["name"].as_str().unwrap().to_string();
            match name.as_str() {
                "fc1.weight" => {
                    t["master"].as_array_mut().unwrap().pop();
                }
                "fc1.bias" => t["master"][3] = serde_json::json!(1e39),
                "fc2.weight" => {
                    let n = t["values"].as_array().unwrap().len();
                    t["fmt"] = serde_json::json!({"bits": 17, "scale": 0});
                    t["codes"] = serde_json::json!(vec![0; n]);
                    t["values"] = serde_json::Value::Null;
                }
                "fc2.bias" => t["momentum"] = serde_json::json!(null),
                _ => continue,
            }
            problems.push(name);
        }
        let text = serde_json::to_string(&v).unwrap();
        let st = fixnn_std::configs::StateFile::parse(&text);
        // 1e39 does not fit f32: serde_json reads it as infinity.
        let msg = match st {
            Ok(st) => st.apply(&mut *m).unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(m.fc1.weight.master, fc1_before, "model changed");
        (msg, problems)
    });
    let (msg, problems) = report;
    assert!(!problems.is_empty());
    assert_eq!(
        problems,
        ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    );
    for want in [
        "fc1.weight: buffer length 78399 does not match input length 78400",
        "fc1.bias: element 3 is NaN or infinite",
        "fc2.weight: bit width 17 is outside 2..=16",
        "fc2.bias: shape error: a parameter needs master and momentum",
    ] {
        assert!(msg.contains(want), "{msg} lacks {want}");
    }
}

/// A config tree that lists one tensor twice (two entries, not two keys) is
/// refused by path in the core and in fixnn-std, and the model keeps its
/// configs.
#[test]
fn config_trees_listing_a_tensor_twice_are_refused_by_path() {
    let good = mlp_config_json();
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let mut twice = v.clone();
    let first = twice["tensors"][0].clone();
    let name = first["name"].as_str().unwrap().to_string();
    twice["tensors"].as_array_mut().unwrap().push(first);
    let text = serde_json::to_string(&twice).unwrap();
    let doc = ConfigDoc::<12>::from_json(text.as_bytes()).unwrap();
    let file = fixnn_std::configs::ConfigFile::parse(&text).unwrap();
    let (core_err, std_err, unchanged) = big(move || {
        let mut m = MnistMlp::build(1).unwrap();
        m.fc1.weight.quant.cfg = QuantConfig::fixed(5, 1);
        let c = doc.apply(&mut *m).unwrap_err().to_string();
        let s = file.apply(&mut *m).unwrap_err();
        (c, s, m.fc1.weight.quant.cfg == QuantConfig::fixed(5, 1))
    });
    for e in [&core_err, &std_err] {
        assert!(e.contains(&format!("{name}: listed more than once")), "{e}");
    }
    assert!(unchanged, "a refused tree changed the model");
}

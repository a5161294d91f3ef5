//! The core's JSON: config trees through serde-json-core, the structure
//! check, states and config trees that list a tensor twice.

use super::*;

// ------------------------------------------------- core: config JSON

/// A config tree of the MLP, as the core writes it.
pub(crate) fn mlp_config_json() -> String {
    big(|| {
        let mut m = MnistMlp::build(1).unwrap();
        fixnn_std::configs::ConfigFile::of(&mut *m).to_json()
    })
}

/// The core's config-tree reader: a duplicated key is an error naming the
/// key, at any level; deep nesting is an error, not a stack overflow (run
/// on a 64 KiB stack); unknown keys, bad bit widths, overlong names and
/// too many tensors are errors; a good tree loads.
#[test]
fn core_config_doc_refuses_duplicates_depth_unknown_keys_and_overlong_names() {
    let good = mlp_config_json();
    type Doc = ConfigDoc<12>;
    let mut buf = [0u8; 128];
    let doc = Doc::from_json(&good, &mut buf).unwrap();
    assert_eq!(doc.tensors.len(), 10);

    // A duplicated key in an entry's data config, and at the top level.
    let dup = good.replacen(r#""bits":8,"#, r#""bits":8,"bits":4,"#, 1);
    assert_ne!(dup, good);
    let e = Doc::from_json(&dup, &mut buf).unwrap_err();
    assert!(
        matches!(
            e,
            DocJsonError::Structure(JsonProblem::DuplicateKey { key: "bits", .. })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("duplicate key `bits`"), "{e}");
    let dup_top = good.replacen(r#""version":1,"#, r#""version":1,"version":1,"#, 1);
    let e = Doc::from_json(&dup_top, &mut buf).unwrap_err();
    assert!(e.to_string().contains("duplicate key `version`"), "{e}");
    // Without the check, serde-json-core refuses it without saying why.
    assert_eq!(
        serde_json_core::from_str::<Doc>(&dup).map(|_| ()),
        Err(serde_json_core::de::Error::CustomError)
    );

    // Nesting: ten thousand levels on a small stack.
    let nested = format!(r#"{{"format":{}}}"#, deep(10_000));
    let e = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || {
            let mut buf = [0u8; 64];
            Doc::from_json(&nested, &mut buf)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(
        e.contains(&format!("nested deeper than {MAX_DEPTH} levels")),
        "{e}"
    );

    // Unknown key; bit width 17 (parsed, then refused on apply with its path).
    let unknown = good.replacen(r#""layer":"#, r#""colour":"red","layer":"#, 1);
    assert!(matches!(
        Doc::from_json(&unknown, &mut buf),
        Err(DocJsonError::Parse(serde_json_core::de::Error::CustomError))
    ));
    for bits in BAD_BITS {
        let t = good.replacen(r#""bits":8,"#, &format!(r#""bits":{bits},"#), 1);
        let doc = Doc::from_json(&t, &mut buf).unwrap();
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
    assert!(matches!(
        Doc::from_json(&t, &mut buf),
        Err(DocJsonError::Parse(_))
    ));
    let fits = good.replacen(&first, &format!(r#""name":"{}""#, &long[1..]), 1);
    assert!(Doc::from_json(&fits, &mut buf).is_ok());
    assert!(ConfigDoc::<4>::from_json(&good, &mut buf).is_err());
    // An empty text, and a text cut short.
    assert!(Doc::from_json("", &mut buf).is_err());
    assert!(Doc::from_json(&good[..good.len() / 2], &mut buf).is_err());
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
    let mut buf = [0u8; 128];
    let doc = ConfigDoc::<12>::from_json(&text, &mut buf).unwrap();
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

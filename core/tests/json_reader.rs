//! fixnn's device JSON reader (`QuantConfig::from_json`,
//! `ConfigEntry::from_json`, `ConfigDoc::from_json`) against serde:
//!
//! * its tables hold every field and enum variant serde knows (a field or
//!   variant added to the types but not to the reader fails here);
//! * random valid values (every variant, edge numbers, names that need
//!   escapes) written by serde-json-core's `to_slice` read back identical;
//! * on a corpus of valid and broken texts, it accepts exactly what
//!   serde_json accepts, and reads the same values, except where it is
//!   deliberately stricter: a struct written as an array and an enum
//!   written as an object (`WrongType`). (A duplicate key is refused by
//!   both: serde's derived structs refuse a duplicate field too.)

use std::fmt::Debug;

use fixnn::model::{ConfigDoc, ConfigEntry, Kind, ReadError, ReadProblem, MAX_PATH, MAX_TYPE};
use fixnn::quant::{Clamp, Group, Method, RangeMethod, Rounding};
use fixnn::QuantConfig;
use heapless::String as HString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

mod common;
use common::Rng;

/// The names serde lists after "expected" in an error message.
fn listed(msg: &str) -> Vec<String> {
    let tail = &msg[msg.find("expected").expect(msg)..];
    tail.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Every variant of a unit enum, as serde names them.
fn variants<E: DeserializeOwned>() -> Vec<(String, E)> {
    let e = serde_json::from_str::<E>(r#""?unknown?""#)
        .err()
        .unwrap()
        .to_string();
    listed(&e)
        .into_iter()
        .map(|n| {
            let v = serde_json::from_str(&format!("\"{n}\"")).unwrap();
            (n, v)
        })
        .collect()
}

/// Every field of a struct, as serde names them.
fn fields<T: DeserializeOwned + Debug>() -> Vec<String> {
    let e = serde_json::from_str::<T>(r#"{"?unknown?":0}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field"), "{e}");
    listed(&e)
}

/// Serialize without a heap, as a device or the core writes.
fn write<T: Serialize>(v: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 1 << 16];
    let n = serde_json_core::to_slice(v, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

const U8_EDGES: [u8; 6] = [0, 1, 2, 16, 127, 255];
const I8_EDGES: [i8; 6] = [i8::MIN, -1, 0, 1, 7, i8::MAX];
const I32_EDGES: [i32; 5] = [i32::MIN, -1, 0, 1, i32::MAX];
const U32_EDGES: [u32; 4] = [0, 1, 1 << 31, u32::MAX];

/// Half the time one of the edge values, else any value of the type.
fn number<T: Copy>(r: &mut Rng, edges: &[T], any: fn(u64) -> T) -> T {
    if r.below(2) == 0 {
        r.pick(edges)
    } else {
        any(r.next())
    }
}

fn random_config(r: &mut Rng) -> QuantConfig {
    let m = variants::<Method>();
    let rm = variants::<RangeMethod>();
    let ro = variants::<Rounding>();
    let g = variants::<Group>();
    let cl = variants::<Clamp>();
    QuantConfig {
        method: m[r.below(m.len())].1,
        bits: number(r, &U8_EDGES, |x| x as u8),
        scale: number(r, &I8_EDGES, |x| x as i8),
        range: rm[r.below(rm.len())].1,
        rounding: ro[r.below(ro.len())].1,
        zero_point: number(r, &I32_EDGES, |x| x as i32),
        multiplier: number(r, &U32_EDGES, |x| x as u32),
        group: g[r.below(g.len())].1,
        ema: number(r, &U32_EDGES, |x| x as u32),
        clamp: cl[r.below(cl.len())].1,
    }
}

/// A string of up to `max` bytes with characters JSON must escape.
fn random_name<const N: usize>(r: &mut Rng, max: usize) -> HString<N> {
    const CHARS: [char; 12] = [
        'a', 'Z', '.', '0', '"', '\\', '/', '\n', '\u{1}', 'é', '€', '😀',
    ];
    let mut s = HString::new();
    let len = r.below(max + 1);
    while s.len() < len {
        if s.push(r.pick(&CHARS)).is_err() {
            break;
        }
    }
    s
}

fn random_entry(r: &mut Rng) -> ConfigEntry {
    let k = variants::<Kind>();
    ConfigEntry {
        name: random_name(r, MAX_PATH),
        kind: k[r.below(k.len())].1,
        layer: random_name(r, MAX_TYPE),
        data: random_config(r),
        grad: random_config(r),
    }
}

#[test]
fn tables_hold_every_field_and_variant_serde_knows() {
    // Every field serde lists is read (a table without it refuses the
    // key), and every variant by its serde name.
    // (`ema` and `clamp` are written only when not the default.)
    let full = write(&QuantConfig {
        ema: (128 << 24) | (1 << 23),
        clamp: Clamp::Nics,
        ..QuantConfig::fixed(8, 0)
    });
    let full: Value = serde_json::from_slice(&full).unwrap();
    let qf = fields::<QuantConfig>();
    assert_eq!(qf.len(), full.as_object().unwrap().len());
    for f in &qf {
        assert!(full.get(f).is_some(), "{f}");
    }
    assert_eq!(
        fields::<ConfigEntry>(),
        ["name", "kind", "layer", "data", "grad"]
    );
    assert_eq!(fields::<ConfigDoc<1>>(), ["format", "version", "tensors"]);
    fn each<E: DeserializeOwned + PartialEq + Debug + Copy>(field: &str) {
        let vs = variants::<E>();
        assert!(!vs.is_empty());
        for (name, v) in vs {
            let mut t: Value = serde_json::from_slice(&write(&QuantConfig::NONE)).unwrap();
            t[field] = Value::String(name.clone());
            let text = serde_json::to_vec(&t).unwrap();
            let ours = QuantConfig::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let theirs: QuantConfig = serde_json::from_slice(&text).unwrap();
            assert_eq!(ours, theirs, "{name}");
            let _ = v;
        }
    }
    each::<Method>("method");
    each::<RangeMethod>("range");
    each::<Rounding>("rounding");
    each::<Group>("group");
    each::<Clamp>("clamp");
    for (name, kind) in variants::<Kind>() {
        let mut e = ConfigEntry::from_json(&write(&random_entry(&mut Rng(1)))).unwrap();
        e.kind = kind;
        let text = String::from_utf8(write(&e)).unwrap();
        assert!(text.contains(&format!(r#""kind":"{name}""#)));
        assert_eq!(ConfigEntry::from_json(text.as_bytes()), Ok(e));
    }
}

#[test]
fn optional_fields_and_defaults_match_serde() {
    // Leave out each field of a config in turn: refused or defaulted as
    // serde_json does it.
    let mut r = Rng(7);
    for _ in 0..20 {
        let cfg = random_config(&mut r);
        let full: Value = serde_json::from_slice(&write(&cfg)).unwrap();
        for f in fields::<QuantConfig>() {
            let mut t = full.clone();
            t.as_object_mut().unwrap().remove(&f);
            let text = serde_json::to_vec(&t).unwrap();
            let ours = QuantConfig::from_json(&text);
            let theirs = serde_json::from_slice::<QuantConfig>(&text);
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "without {f}"),
                (Err(e), Err(_)) => {
                    assert_eq!((e.problem, e.field), (ReadProblem::MissingField, &*f))
                }
                _ => panic!("without {f}: ours {ours:?}, serde_json {theirs:?}"),
            }
        }
    }
}

#[test]
fn random_values_written_by_serde_read_back_identical() {
    let mut r = Rng(42);
    let n = if cfg!(miri) { 20 } else { 3000 };
    for _ in 0..n {
        let cfg = random_config(&mut r);
        assert_eq!(QuantConfig::from_json(&write(&cfg)), Ok(cfg));
        let e = random_entry(&mut r);
        let text = write(&e);
        assert_eq!(
            ConfigEntry::from_json(&text),
            Ok(e.clone()),
            "{}",
            String::from_utf8_lossy(&text)
        );
        // serde_json (escapes written its way, pretty-printed) too.
        let pretty = serde_json::to_vec_pretty(&e).unwrap();
        assert_eq!(ConfigEntry::from_json(&pretty), Ok(e));
    }
    for _ in 0..if cfg!(miri) { 2 } else { 200 } {
        let mut doc = ConfigDoc::<8> {
            format: random_name(&mut r, 16),
            version: r.next() as u32,
            tensors: heapless::Vec::new(),
        };
        for _ in 0..r.below(9) {
            doc.tensors.push(random_entry(&mut r)).unwrap();
        }
        assert_eq!(ConfigDoc::<8>::from_json(&write(&doc)), Ok(doc));
    }
}

/// How the two readers agreed on one text.
#[derive(Default, Debug)]
struct Tally {
    both_accept: usize,
    both_refuse: usize,
    /// Texts serde_json accepts and the reader refuses, with the reason.
    stricter: Vec<(String, ReadProblem)>,
}

fn compare<T>(text: &[u8], ours: Result<T, ReadError>, tally: &mut Tally)
where
    T: DeserializeOwned + PartialEq + Debug,
{
    let theirs = serde_json::from_slice::<T>(text);
    let shown = String::from_utf8_lossy(text);
    match (ours, theirs) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "{shown}");
            tally.both_accept += 1;
        }
        (Err(_), Err(_)) => tally.both_refuse += 1,
        (Ok(a), Err(e)) => panic!("accepted what serde_json refuses ({e}): {shown}\n{a:?}"),
        (Err(e), Ok(_)) => {
            assert!(
                e.problem == ReadProblem::WrongType,
                "refused what serde_json accepts ({e}): {shown}"
            );
            tally.stricter.push((shown.into_owned(), e.problem));
        }
    }
}

/// Hand-written texts: valid ones in unusual spellings, and broken ones.
const CONFIGS: &[&str] = &[
    r#"{"method":"auto","bits":8,"scale":0}"#,
    " \t\r\n{ \"method\" : \"auto\" , \"bits\" : 8 , \"scale\" : -0 } ",
    r#"{"method":"auto","bits":8,"scale":-128}"#,
    r#"{"method":"auto","bits":8,"scale":-129}"#,
    r#"{"method":"auto","bits":255,"scale":127,"zero_point":-2147483648,"multiplier":4294967295}"#,
    r#"{"method":"auto","bits":8,"scale":0,"zero_point":2147483648}"#,
    r#"{"method":"auto","bits":8,"scale":0,"multiplier":-1}"#,
    r#"{"method":"auto","bits":8,"scale":0,"multiplier":4294967296}"#,
    r#"{"method":"auto","bits":99999999999999999999999,"scale":0}"#,
    r#"{"method":"auto","bits":08,"scale":0}"#,
    r#"{"method":"auto","bits":8.0,"scale":0}"#,
    r#"{"method":"auto","bits":8e0,"scale":0}"#,
    r#"{"method":"auto","bits":-0,"scale":0}"#,
    r#"{"method":"auto","bits":+8,"scale":0}"#,
    r#"{"method":"auto","bits":8,"scale":- 1}"#,
    r#"{"method":"auto","bits":"8","scale":0}"#,
    r#"{"method":"auto","bits":null,"scale":0}"#,
    r#"{"method":"auto","bits":true,"scale":0}"#,
    r#"{"method":"auto","bits":[8],"scale":0}"#,
    r#"{"method":"auto","bits":8,"scale":0,}"#,
    r#"{"method":"auto","bits":8,,"scale":0}"#,
    r#"{"method":"auto","bits":8 "scale":0}"#,
    r#"{"method":"auto","bits"8,"scale":0}"#,
    r#"{method:"auto","bits":8,"scale":0}"#,
    r#"{'method':"auto","bits":8,"scale":0}"#,
    r#"{"method":"auto","bits":8,"scale":0}}"#,
    r#"{"method":"auto","bits":8,"scale":0} []"#,
    r#"{"method":"auto","bits":8,"scale":0"#,
    r#"{"method":"auto","bits":8,"scale":0,"range":"max","range":"max"}"#,
    r#"{"method":"auto","bits":8,"scale":0,"colour":1}"#,
    r#"{"method":"Auto","bits":8,"scale":0}"#,
    r#"{"method":"auto ","bits":8,"scale":0}"#,
    r#"{"method":"\u0061uto","bits":8,"scale":0}"#,
    r#"{"\u006dethod":"auto","bits":8,"scale":0}"#,
    r#"{"m\ethod":"auto","bits":8,"scale":0}"#,
    r#"{"method":{"auto":null},"bits":8,"scale":0}"#,
    r#"{"method":["auto"],"bits":8,"scale":0}"#,
    r#"["auto",8,0]"#,
    r#"{"method":"auto","bits":8,"scale":0,"group":"channel"}"#,
    "{\"method\":\"auto\",\"bits\":8,\"scale\":0,\"group\":\"tens\u{0}or\"}",
    "{}",
    "",
    "null",
    "[]",
    "\"x\"",
];

const ENTRIES: &[&str] = &[
    r#"{"name":"a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00","kind":"param","layer":"L","data":{"method":"none","bits":8,"scale":0},"grad":{"method":"none","bits":8,"scale":0}}"#,
    r#"{"name":"\ud83d","kind":"param","layer":"L","data":{"method":"none","bits":8,"scale":0},"grad":{"method":"none","bits":8,"scale":0}}"#,
    r#"{"name":"\udc00\ud83d","kind":"param","layer":"L","data":{"method":"none","bits":8,"scale":0},"grad":{"method":"none","bits":8,"scale":0}}"#,
    r#"{"name":"\u00","kind":"param","layer":"L","data":{"method":"none","bits":8,"scale":0},"grad":{"method":"none","bits":8,"scale":0}}"#,
    r#"{"name":"\U0041","kind":"param","layer":"L","data":{"method":"none","bits":8,"scale":0},"grad":{"method":"none","bits":8,"scale":0}}"#,
    "{\"name\":\"a\u{1}\",\"kind\":\"param\",\"layer\":\"L\",\"data\":{\"method\":\"none\",\"bits\":8,\"scale\":0},\"grad\":{\"method\":\"none\",\"bits\":8,\"scale\":0}}",
    r#"{"name":"x","kind":"param","layer":"L","data":{"method":"none","bits":8,"scale":0},"grad":{"method":"none","bits":8,"scale":0},"name":"y"}"#,
    r#"{"name":"x","kind":"weight","layer":"L","data":{"method":"none","bits":8,"scale":0},"grad":{"method":"none","bits":8,"scale":0}}"#,
    r#"{"name":"x","kind":"param","layer":"L","data":{"method":"none","bits":8,"scale":0}}"#,
    r#"{"name":"x","kind":"param","layer":"L","data":[[[[[[[[[[]]]]]]]]]],"grad":{"method":"none","bits":8,"scale":0}}"#,
];

/// Broken copies of `text`: bytes dropped, doubled, replaced by JSON's
/// special characters, cut short.
fn mutants(text: &[u8], r: &mut Rng, n: usize) -> Vec<Vec<u8>> {
    const SPECIAL: &[u8] = b"{}[]:,\"\\ -0123456789.eEtfnu\xff\x01";
    let mut out = Vec::new();
    for _ in 0..n {
        let mut t = text.to_vec();
        for _ in 0..1 + r.below(3) {
            if t.is_empty() {
                break;
            }
            let i = r.below(t.len());
            match r.below(4) {
                0 => {
                    t.remove(i);
                }
                1 => t.insert(i, t[i]),
                2 => t[i] = r.pick(SPECIAL),
                _ => t.truncate(i),
            }
        }
        out.push(t);
    }
    out
}

#[test]
fn accepts_exactly_what_serde_json_accepts_except_where_stricter() {
    let mut tally = Tally::default();
    for t in CONFIGS {
        compare(
            t.as_bytes(),
            QuantConfig::from_json(t.as_bytes()),
            &mut tally,
        );
    }
    for t in ENTRIES {
        compare(
            t.as_bytes(),
            ConfigEntry::from_json(t.as_bytes()),
            &mut tally,
        );
    }
    let hand = tally.both_accept;
    assert!(
        tally.both_accept >= 5 && tally.both_refuse >= 30,
        "{tally:?}"
    );
    // The deliberate differences, each seen: the object form of an enum,
    // the array form of a struct.
    let stricter: Vec<&str> = tally.stricter.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        stricter,
        [
            r#"{"method":{"auto":null},"bits":8,"scale":0}"#,
            r#"["auto",8,0]"#
        ],
        "{tally:#?}"
    );

    let mut r = Rng(3);
    let per = if cfg!(miri) { 2 } else { 300 };
    for _ in 0..if cfg!(miri) { 2 } else { 40 } {
        let e = random_entry(&mut r);
        let text = write(&e);
        for m in mutants(&text, &mut r, per) {
            compare(&m, ConfigEntry::from_json(&m), &mut tally);
        }
        let doc = ConfigDoc::<2> {
            format: HString::try_from("fixnn-config").unwrap(),
            version: 1,
            tensors: heapless::Vec::from_slice(&[e.clone(), e]).unwrap(),
        };
        let text = write(&doc);
        for m in mutants(&text, &mut r, per / 4) {
            compare(&m, ConfigDoc::<2>::from_json(&m), &mut tally);
        }
    }
    assert!(tally.both_accept > hand, "{tally:?}");
}

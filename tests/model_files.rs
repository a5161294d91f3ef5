//! Config trees and states across crates: the core (written with
//! serde-json-core, read with its own reader, no heap) and the desktop (serde_json, files) write the same JSON text; bad
//! files give one error naming every bad path and change nothing; a
//! nics_fix_pt MNIST config loads onto the equivalent fixnn model.

use fixnn::layers::{Layer, Linear, Quant, Relu};
use fixnn::model::{self, ConfigDoc, StateView};
use fixnn::tensor::{Ctx, S2};
use fixnn::{Clamp, Method, Model, QuantConfig, RangeMethod, Rounding};
use fixnn_std::configs::{self, ConfigFile, StateFile};
use fixnn_std::nics::{self, ScaleForm};

const B: usize = 4;

/// nics_fix_pt's MNIST model: fix0 -> fc1 -> fix1 -> relu -> fc2 -> fix2
/// (784-100-10).
#[derive(Model)]
struct Mnist {
    fix0: Quant<S2<B, 784>>,
    fc1: Linear<784, 100, B>,
    fix1: Quant<S2<B, 100>>,
    relu: Relu<S2<B, 100>>,
    fc2: Linear<100, 10, B>,
    fix2: Quant<S2<B, 10>>,
}

/// Run `f` on a thread with a 256 MiB stack: the MNIST model is a few MiB
/// of arrays, built on the stack before it is boxed in debug builds.
fn big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn mnist() -> Box<Mnist> {
    let mut m = Box::new(Mnist {
        fix0: Quant::new(0),
        fc1: Linear::new(1),
        fix1: Quant::new(2),
        relu: Relu::new(3),
        fc2: Linear::new(4),
        fix2: Quant::new(5),
    });
    m.fc1.weight.init_uniform(1, 0.05);
    m.fc2.weight.init_uniform(1, 0.1);
    m
}

/// A small model with varied configs, formats and a stepped optimizer state.
#[derive(Model)]
struct Small {
    q: Quant<S2<2, 3>>,
    fc: Linear<3, 2, 2>,
}

fn small() -> Small {
    let mut m = Small {
        q: Quant::new(0),
        fc: Linear::new(1),
    };
    // A running range with a state, as training leaves it.
    m.q.out.quant.cfg = QuantConfig {
        range: RangeMethod::Running,
        ..QuantConfig::auto(6)
    };
    m.q.out.quant.cfg.update_scale_f32(&[0.5, -1.5]).unwrap();
    m.q.out.quant.cfg.update_scale_f32(&[3.5]).unwrap();
    assert_eq!(m.q.out.quant.cfg.ema, 0x80D0_0000);
    m.fc.weight.quant.cfg = QuantConfig {
        rounding: Rounding::Stochastic,
        ..QuantConfig::fixed(5, -1)
    };
    m.fc.bias.quant.grad_cfg = QuantConfig {
        range: RangeMethod::Sweep,
        ..QuantConfig::auto(12)
    };
    m.fc.weight.init_uniform(3, 0.7);
    m.fc.bias.init_uniform(3, 0.7);
    for (i, v) in
        m.fc.weight
            .momentum
            .as_flattened_mut()
            .iter_mut()
            .enumerate()
    {
        *v = i as f32 * 0.125 - 0.3;
    }
    m.fc.weight.refresh(&Ctx::train(1, 0)).unwrap();
    m
}

#[test]
fn core_and_std_write_the_same_config_json() {
    big_stack(|| {
        let mut m = mnist();
        m.fc1.weight.quant.cfg = QuantConfig::auto(8);
        m.fix2.out.quant.grad_cfg = QuantConfig::fixed(8, -3);
        m.fix1.out.quant.cfg = QuantConfig {
            range: RangeMethod::Running,
            ema: 0x7FC0_0000, // 0.75
            ..QuantConfig::auto(8)
        };
        m.fc2.bias.quant.cfg = QuantConfig {
            clamp: Clamp::Nics,
            ..QuantConfig::auto(6)
        };
        let doc: ConfigDoc<32> = model::collect_configs(&mut *m).unwrap();
        let mut buf = vec![0u8; 16384];
        let n = serde_json_core::to_slice(&doc, &mut buf).unwrap();
        let core_text = std::str::from_utf8(&buf[..n]).unwrap();
        let std_text = ConfigFile::of(&mut *m).to_json();
        assert_eq!(core_text, std_text);
        assert!(core_text.contains(r#""range":"running","rounding":"nearest_even","zero_point":0,"multiplier":0,"group":"tensor","ema":2143289344}"#));
        assert_eq!(
            core_text.matches("\"ema\"").count(),
            1,
            "an empty state is not written"
        );
        // tree -> JSON -> tree is the identity, both ways.
        assert_eq!(
            ConfigFile::parse(core_text).unwrap(),
            ConfigFile::of(&mut *m)
        );
        // The desktop's text read back by the core's (device) reader.
        let back = ConfigDoc::<32>::from_json(std_text.as_bytes()).unwrap();
        assert_eq!(back, doc);
    });
}

#[test]
fn core_and_std_write_the_same_state_json_and_it_loads_back() {
    let mut m = small();
    let mut buf = vec![0u8; 8192];
    let n = serde_json_core::to_slice(&StateView::new(&mut m), &mut buf).unwrap();
    let core_text = std::str::from_utf8(&buf[..n]).unwrap().to_string();
    assert_eq!(core_text, configs::state_json(&mut m));
    let mut other = Small {
        q: Quant::new(0),
        fc: Linear::new(1),
    };
    let st = StateFile::parse(&core_text).unwrap();
    assert_eq!(st.apply(&mut other), Ok(2));
    assert_eq!(configs::state_json(&mut other), core_text);
    assert_eq!(other.fc.weight.q.fmt, m.fc.weight.q.fmt);
}

#[test]
fn nics_clamped_codes_survive_a_state_round_trip() {
    let mut m = small();
    // 5 bits, scale -1: step 2^-5; 0.5 is code 16, kept by nics_fix_pt's clamp.
    m.fc.weight.quant.cfg.clamp = Clamp::Nics;
    m.fc.weight.master[0][0] = 0.5;
    m.fc.weight.refresh(&Ctx::train(1, 0)).unwrap();
    assert_eq!(m.fc.weight.q.v[0][0], 0.5);
    let text = configs::state_json(&mut m);
    assert!(
        text.contains(r#""fmt":{"bits":5,"scale":-1,"clamp":"nics"},"codes":[16,"#),
        "{text}"
    );
    let mut buf = vec![0u8; 8192];
    let n = serde_json_core::to_slice(&StateView::new(&mut m), &mut buf).unwrap();
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), text);
    let mut other = small();
    StateFile::parse(&text).unwrap().apply(&mut other).unwrap();
    assert_eq!(other.fc.weight.q.fmt, m.fc.weight.q.fmt);
    assert_eq!(configs::state_json(&mut other), text);
    // Without the clamp, code 16 is outside a 5-bit format: refused.
    let hw = text.replace(r#","clamp":"nics""#, "");
    let err = StateFile::parse(&hw)
        .unwrap()
        .apply(&mut other)
        .unwrap_err();
    assert!(
        err.contains("fc.weight") && err.contains("outside"),
        "{err}"
    );
}

#[path = "common/tmp.rs"]
mod tmp;

/// A fresh file path for one test.
fn tmp(name: &str) -> tmp::Tmp {
    tmp::Tmp::new("model-files", name, false)
}

#[test]
fn config_files_round_trip_through_disk() {
    let mut m = small();
    let p = tmp("small.json");
    configs::save_configs(&mut m, &p).unwrap();
    let mut other = Small {
        q: Quant::new(0),
        fc: Linear::new(1),
    };
    assert_eq!(configs::load_configs(&mut other, &p), Ok(4));
    assert_eq!(ConfigFile::of(&mut other), ConfigFile::of(&mut m));
    assert_eq!(other.q.out.quant.cfg.ema, 0x80D0_0000);
    assert_eq!(other.q.out.quant.cfg.range, RangeMethod::Running);
}

/// Each bad file: one error naming the path, no panic, no change to the model.
#[test]
fn bad_config_files_name_the_path_and_change_nothing() {
    let mut m = small();
    let good = ConfigFile::of(&mut m).to_json();
    let edits: Vec<(String, &str)> = vec![
        // missing entry
        (
            {
                let mut f = ConfigFile::of(&mut m);
                f.tensors.retain(|e| e.name != "fc.bias");
                f.to_json()
            },
            "fc.bias: missing",
        ),
        // extra entry
        (
            {
                let mut f = ConfigFile::of(&mut m);
                let mut e = f.tensors[1].clone();
                e.name = "fc.mask".into();
                f.tensors.push(e);
                f.to_json()
            },
            "fc.mask: unknown tensor",
        ),
        // ill-typed value
        (
            good.replacen("\"bits\":5", "\"bits\":\"five\"", 1),
            "fc.weight.data: invalid type",
        ),
        // out-of-range value
        (
            good.replacen("\"bits\":5", "\"bits\":17", 1),
            "fc.weight.data: bit width 17 is outside 2..=16",
        ),
        (
            good.replacen("\"scale\":-1", "\"scale\":300", 1),
            "fc.weight.data: invalid value",
        ),
        // unknown key inside a config
        (
            good.replacen("\"bits\":5", "\"colour\":1,\"bits\":5", 1),
            "fc.weight.data: unknown field `colour`",
        ),
        // unknown method name
        (
            good.replacen("\"method\":\"fixed\"", "\"method\":\"sometimes\"", 1),
            "fc.weight.data: unknown variant `sometimes`",
        ),
        // wrong kind
        (
            good.replacen("\"kind\":\"param\"", "\"kind\":\"buffer\"", 1),
            "fc.weight: kind differs",
        ),
        // truncated file
        (good[..good.len() / 2].to_string(), "not JSON"),
        // wrong header
        (
            good.replacen("fixnn-config", "fixnn-other", 1),
            "not a fixnn-config version 1 document",
        ),
    ];
    let before = ConfigFile::of(&mut m);
    for (i, (text, needle)) in edits.iter().enumerate() {
        let p = tmp(&format!("bad{i}.json"));
        std::fs::write(&p, text).unwrap();
        let err = configs::load_configs(&mut m, &p).unwrap_err();
        assert!(err.contains(needle), "case {i}: {err} lacks {needle}");
        assert!(
            err.contains(&p.display().to_string()),
            "case {i}: {err} does not name the file"
        );
        assert!(!err.contains('\n'), "case {i}: one line");
        assert_eq!(ConfigFile::of(&mut m), before, "case {i} changed the model");
    }
}

const NICS_MNIST_YAML: &str = r#"data: !!python/object/apply:collections.OrderedDict
- - - fc1
    - bias:
        bitwidth: 4
        method: 1
        scale: 0
      weight:
        bitwidth: 4
        method: 1
        scale: 1
  - - fc2
    - bias:
        bitwidth: 4
        method: 1
        scale: -1
      weight:
        bitwidth: 4
        method: 1
        scale: 1
  - - fix0
    - activation:
        bitwidth: 4
        method: 1
        scale: 2
  - - fix1
    - activation:
        bitwidth: 4
        method: 1
        scale: 4
  - - fix2
    - activation:
        bitwidth: 4
        method: 1
        scale: 5
grad: !!python/object/apply:collections.OrderedDict
- - - fc1
    - {}
  - - fc2
    - {}
  - - fix0
    - {}
  - - fix1
    - {}
  - - fix2
    - {}
"#;

#[test]
fn nics_mnist_yaml_loads_onto_the_equivalent_model() {
    big_stack(|| {
        let cfg = nics::parse(NICS_MNIST_YAML, ScaleForm::Auto).unwrap();
        assert_eq!(cfg.scale_form, Some(ScaleForm::Exponent));
        let mut m = mnist();
        assert_eq!(cfg.apply(&mut *m), Ok(7));
        let f = ConfigFile::of(&mut *m);
        let get = |n: &str| f.tensors.iter().find(|e| e.name == n).unwrap().clone();
        assert_eq!(
            get("fc1.weight").data,
            QuantConfig {
                scale: 1,
                ..QuantConfig::auto(4)
            }
        );
        assert_eq!(
            get("fc2.bias").data,
            QuantConfig {
                scale: -1,
                ..QuantConfig::auto(4)
            }
        );
        assert_eq!(
            get("fix0.activation").data,
            QuantConfig {
                scale: 2,
                ..QuantConfig::auto(4)
            }
        );
        assert_eq!(get("fix2.activation").data.scale, 5);
        assert_eq!(
            get("fc1.weight").grad.method,
            Method::None,
            "empty grad configs keep fixnn's"
        );
        assert_eq!(
            get("fc1.output").data.method,
            Method::None,
            "tensors nics_fix_pt does not have keep theirs"
        );
        // The same file in nics_fix_pt 0.4's value form.
        let v04: String = NICS_MNIST_YAML
            .lines()
            .map(|l| match l.split_once("scale: ") {
                Some((head, k)) => format!("{head}scale: {:?}\n", 2f64.powi(k.parse().unwrap())),
                None => format!("{l}\n"),
            })
            .collect();
        let cfg04 = nics::parse(&v04, ScaleForm::Auto).unwrap();
        assert_eq!(cfg04.scale_form, Some(ScaleForm::Value));
        assert_eq!(cfg04.data, cfg.data);
        // With nics_fix_pt's own clamp, to reproduce its results exactly.
        let mut exact = cfg.clone();
        exact.set_clamp(Clamp::Nics).unwrap();
        let mut m = mnist();
        assert_eq!(exact.apply(&mut *m), Ok(7));
        let f = ConfigFile::of(&mut *m);
        let get = |n: &str| f.tensors.iter().find(|e| e.name == n).unwrap().clone();
        assert_eq!(
            get("fc1.weight").data,
            QuantConfig {
                scale: 1,
                clamp: Clamp::Nics,
                ..QuantConfig::auto(4)
            }
        );
        assert_eq!(get("fc1.output").data.clamp, Clamp::Hardware);
        // 16-bit quantized configs cannot take it: refused, nothing changed.
        let mut wide = cfg.clone();
        wide.data.get_mut("fc1.weight").unwrap().bits = 16;
        let before = wide.clone();
        let err = wide.set_clamp(Clamp::Nics).unwrap_err();
        assert!(
            err.contains("fc1.weight (data)") && err.contains("bits <= 15"),
            "{err}"
        );
        assert_eq!(wide, before);
    });
}

#[test]
fn nics_range_method_4_is_the_running_range() {
    let text = NICS_MNIST_YAML.replacen("method: 1\n", "method: 1\n        range_method: 4\n", 1);
    let cfg = nics::parse(&text, ScaleForm::Auto).unwrap();
    let bias = cfg.data["fc1.bias"];
    assert_eq!((bias.range, bias.ema), (RangeMethod::Running, 0));
    assert_eq!(cfg.data["fc1.weight"].range, RangeMethod::Max);
}

#[test]
fn bad_nics_files_name_the_path() {
    big_stack(|| {
        let mut m = mnist();
        let before = ConfigFile::of(&mut *m);
        for (text, needle) in [
            (
                NICS_MNIST_YAML.replace("- - fc2", "- - fc3"),
                "fc3.bias: unknown tensor",
            ),
            (
                NICS_MNIST_YAML.replacen("bitwidth: 4", "bitwidth: 40", 1),
                "fc1.bias.bitwidth: 40 is outside 2..=16",
            ),
            (
                NICS_MNIST_YAML.replacen("method: 1", "method: 7", 1),
                "fc1.bias.method: 7 is not",
            ),
            (
                NICS_MNIST_YAML.replacen("method: 1", "method: auto", 1),
                "fc1.bias.method: not a number",
            ),
            (
                NICS_MNIST_YAML.replacen("method: 1", "mehtod: 1", 1),
                "fc1.bias.mehtod: unknown key",
            ),
            (
                NICS_MNIST_YAML.replacen("method: 1\n", "method: 1\n        range_method: 5\n", 1),
                "fc1.bias.range_method: 5 is not",
            ),
        ] {
            let err = nics::parse(&text, ScaleForm::Auto)
                .and_then(|c| c.apply(&mut *m))
                .unwrap_err();
            assert!(err.contains(needle), "{err} lacks {needle}");
            assert_eq!(ConfigFile::of(&mut *m), before);
        }
    });
}

#[test]
fn trained_model_state_survives_a_round_trip() {
    let mut m = small();
    let bk = fixnn::backend::RefBackend;
    let mut x = fixnn::tensor::Tensor::<S2<2, 3>>::zeros();
    x.flat_mut()
        .copy_from_slice(&[0.1, -0.4, 0.3, 0.9, -0.2, 0.05]);
    m.forward(&bk, &Ctx::train(2, 0), &x).unwrap();
    let text = configs::state_json(&mut m);
    let mut other = small();
    other.fc.weight.init_uniform(99, 0.1);
    StateFile::parse(&text).unwrap().apply(&mut other).unwrap();
    assert_eq!(configs::state_json(&mut other), text);
}

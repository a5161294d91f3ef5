//! Grouped configs' stored scales through a state document: a model
//! loaded from the saved state evaluates to the same bits as the model
//! that was saved, and a state whose group entries do not fit the model is
//! refused with the path named, leaving the model unchanged.

use fixnn::backend::RefBackend;
use fixnn::layers::{Chain, Layer, Linear, Quant};
use fixnn::quant::Stream;
use fixnn::tensor::{Ctx, Tensor, S2};
use fixnn::{Group, QuantConfig};
use fixnn_std::configs::{state_json, StateFile};

type Net = Chain<Quant<S2<4, 6>>, Linear<6, 3, 4>>;

/// A change to one group entry of a state document.
type Damage = fn(&mut serde_json::Value);

fn grouped(mut c: QuantConfig, g: Group) -> QuantConfig {
    c.group = g;
    c
}

fn net() -> Net {
    let mut n: Net = Chain::new(Quant::new(0), Linear::new(1));
    n.a.out.quant.cfg = grouped(QuantConfig::auto(6), Group::Channel);
    n.b.weight.quant.cfg = grouped(QuantConfig::auto_real(8), Group::Channel);
    n.b.bias.quant.cfg = grouped(QuantConfig::auto(8), Group::Channel);
    n.b.out.quant.cfg = grouped(QuantConfig::auto(8), Group::Batch);
    n
}

fn input(seed: u64) -> Tensor<S2<4, 6>> {
    let s = Stream::new(seed, 7, 0);
    let mut x = Tensor::zeros();
    for (i, v) in x.flat_mut().iter_mut().enumerate() {
        let u = (s.draw(i as u32) >> 8) as f32 / (1 << 24) as f32;
        // Feature f spans about 2^f.
        *v = (2.0 * u - 1.0) * (1 << (i % 6)) as f32;
    }
    x
}

#[test]
fn loaded_group_scales_evaluate_to_the_same_bits() {
    let bk = RefBackend;
    let mut a = net();
    a.b.weight.init_uniform(3, 0.5);
    a.b.bias.init_uniform(4, 0.5);
    a.forward(&bk, &Ctx::train(1, 0), &input(1)).unwrap();
    let text = state_json(&mut a);
    assert!(
        text.contains(r#""groups":[{"name":"0.activation","grad":false,"scale":["#),
        "{text}"
    );
    let state = StateFile::parse(&text).unwrap();
    // Same configs, fresh storage: eval before loading uses the configs'
    // scales, after loading the stored ones.
    let mut b = net();
    (b.a.out.quant.cfg, b.b.weight.quant.cfg) = (a.a.out.quant.cfg, a.b.weight.quant.cfg);
    (b.b.bias.quant.cfg, b.b.out.quant.cfg) = (a.b.bias.quant.cfg, a.b.out.quant.cfg);
    let eval = Ctx::eval(1);
    let x = input(2);
    a.forward(&bk, &eval, &x).unwrap();
    b.forward(&bk, &eval, &x).unwrap();
    assert_ne!(a.output().v, b.output().v, "the stored scales matter");
    state.apply(&mut b).unwrap();
    b.forward(&bk, &eval, &x).unwrap();
    assert_eq!(a.output().v, b.output().v);
    assert_eq!(a.b.weight.groups.0[0], b.b.weight.groups.0[0]);
    assert_eq!(a.a.out.groups.channel[0], b.a.out.groups.channel[0]);
}

#[test]
fn group_entries_that_do_not_fit_are_refused() {
    let bk = RefBackend;
    let mut a = net();
    a.b.weight.init_uniform(3, 0.5);
    a.forward(&bk, &Ctx::train(1, 0), &input(1)).unwrap();
    let text = state_json(&mut a);
    let good: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases: [(&str, Damage); 4] = [
        ("1.weight.data", |g| {
            g["scale"].as_array_mut().unwrap().pop();
        }),
        ("1.weight.data", |g| g["multiplier"][0] = 5.into()),
        ("1.weight.grad", |g| g["grad"] = true.into()),
        ("1.nothing.data", |g| g["name"] = "1.nothing".into()),
    ];
    for (path, damage) in cases {
        let mut v = good.clone();
        let groups = v["groups"].as_array_mut().unwrap();
        let w = groups.iter_mut().find(|g| g["name"] == "1.weight").unwrap();
        damage(w);
        let state = StateFile::parse(&v.to_string()).unwrap();
        let mut b = net();
        let before = b.b.weight.groups.0[0];
        let e = state.apply(&mut b).unwrap_err();
        assert!(e.contains(path), "{path}: {e}");
        assert_eq!(b.b.weight.groups.0[0], before);
        assert_eq!(b.b.weight.master, [[0.0; 6]; 3]);
    }
}

#[test]
fn a_model_file_with_a_bad_group_rule_leaves_every_config_unchanged() {
    // Rule 0 is fine and would change every tensor; rule 1 asks a
    // parameter for one scale per batch item, which it cannot have.
    let mut spec: serde_json::Value =
        serde_json::from_str(include_str!("../../examples/mnist-mlp.json")).unwrap();
    spec["configs"] = serde_json::json!([
        {"select": {"all": true}, "data": {"method": "auto", "bits": 5, "scale": 0}},
        {"select": {"kind": "param"}, "data": {"method": "auto", "bits": 8, "scale": 0, "group": "batch"}}
    ]);
    let spec = fixnn_std::spec::ModelSpec::parse(&spec.to_string()).unwrap();
    let mut n = net();
    let e = spec.apply_configs(&mut n).unwrap_err();
    assert!(
        e.starts_with("configs[1].data: group Batch on 1.weight") && e.contains("no batch items"),
        "{e}"
    );
    let fresh = net();
    assert_eq!(n.a.out.quant.cfg, fresh.a.out.quant.cfg);
    assert_eq!(n.b.weight.quant.cfg, fresh.b.weight.quant.cfg);
    assert_eq!(n.b.bias.quant.cfg, fresh.b.bias.quant.cfg);
    assert_eq!(n.b.out.quant.cfg, fresh.b.out.quant.cfg);
    // Without the bad rule, rule 0 is applied to every tensor.
    let mut ok: serde_json::Value =
        serde_json::from_str(include_str!("../../examples/mnist-mlp.json")).unwrap();
    ok["configs"] = serde_json::json!([
        {"select": {"all": true}, "data": {"method": "auto", "bits": 5, "scale": 0}}
    ]);
    let ok = fixnn_std::spec::ModelSpec::parse(&ok.to_string()).unwrap();
    ok.apply_configs(&mut n).unwrap();
    assert_eq!(n.b.weight.quant.cfg.bits, 5);
    assert_eq!(n.a.out.quant.cfg.bits, 5);
}

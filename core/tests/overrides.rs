//! Per-call overrides (nics_fix_pt's `kwarg_cfg`): a pass with overridden
//! configs computes what the same pass computes with those configs stored,
//! bit for bit, and afterwards every stored config is exactly as before.

use fixnn::backend::RefBackend;
use fixnn::layers::{softmax_cross_entropy, Layer, Linear, Quant, Relu};
use fixnn::model::{
    apply_overrides, collect_configs, restore_configs, walk, with_overrides, ConfigDoc, Kind,
    Override, OverrideError, SavedConfigs, Select,
};
use fixnn::tensor::{Ctx, Tensor, S2};
use fixnn::{Clamp, Error, Method, Model, QuantConfig, RangeMethod, Rounding};

const B: usize = 2;

#[derive(Model)]
struct Net {
    q0: Quant<S2<B, 4>>,
    fc1: Linear<4, 5, B>,
    relu: Relu<S2<B, 5>>,
    fc2: Linear<5, 3, B>,
}

fn net() -> Net {
    let mut n = Net {
        q0: Quant::new(0),
        fc1: Linear::new(1),
        relu: Relu::new(2),
        fc2: Linear::new(3),
    };
    n.fc1.weight.init_uniform(5, 0.5);
    n.fc1.bias.init_uniform(6, 0.5);
    n.fc2.weight.init_uniform(7, 0.4);
    n.fc2.bias.init_uniform(8, 0.4);
    walk(&mut n, &mut |name, t| {
        t.quant.cfg = QuantConfig {
            scale: 3, // a stored scale Auto will replace in training mode
            ..QuantConfig::auto(8)
        };
        if t.kind == Kind::Param {
            t.quant.grad_cfg = QuantConfig {
                rounding: Rounding::Stochastic,
                ..QuantConfig::auto(8)
            };
        }
        if name == "relu.output" {
            t.quant.cfg = QuantConfig::NONE;
        }
    });
    n
}

fn input() -> Tensor<S2<B, 4>> {
    let mut x = Tensor::zeros();
    x.set_f32(&[0.9, -0.31, 0.47, 1.2, -0.66, 0.05, 0.8, -1.1])
        .unwrap();
    x
}

fn configs(n: &mut Net) -> ConfigDoc<16> {
    collect_configs(n).unwrap()
}

/// Every tensor's values, format, and (parameters) gradient, as bits.
fn snapshot(n: &mut Net) -> Vec<(String, Vec<u32>, String, Vec<u32>)> {
    let mut v = Vec::new();
    walk(n, &mut |name, t| {
        let grad = t
            .param
            .as_ref()
            .map(|p| p.grad.iter().map(|g| g.to_bits()).collect())
            .unwrap_or_default();
        v.push((
            name.to_string(),
            t.values.iter().map(|x| x.to_bits()).collect(),
            format!("{:?}", t.fmt),
            grad,
        ));
    });
    v
}

fn nics(method: Method, bits: u8, rounding: Rounding) -> QuantConfig {
    QuantConfig {
        method,
        bits,
        rounding,
        clamp: Clamp::Nics,
        ..QuantConfig::NONE
    }
}

/// One training step (forward, loss, backward).
fn step(n: &mut Net, ctx: &Ctx) -> fixnn::Result<f32> {
    let x = input();
    n.forward(&RefBackend, ctx, &x)?;
    let mut d = Tensor::zeros();
    let loss = softmax_cross_entropy(n.output(), &[2, 0], &mut d)?;
    n.backward(&RefBackend, ctx, &x, &mut d, false)?;
    Ok(loss.loss)
}

#[test]
fn overridden_step_equals_stored_configs_and_restores_them() {
    let overrides = [
        // By type: every Linear tensor's data at 4 bits, nics clamp, floor.
        Override::data(
            Select::Type("Linear"),
            nics(Method::Auto, 4, Rounding::Floor),
        ),
        // By name (a prefix): fc2's gradients at 6 bits, sweep.
        Override::grad(
            Select::Name("fc2"),
            QuantConfig {
                range: RangeMethod::Sweep,
                ..QuantConfig::auto(6)
            },
        ),
        // By name, exact: the input quantizer fixed at 3 bits, nics.
        Override::data(
            Select::Name("q0.activation"),
            QuantConfig {
                scale: 1,
                ..nics(Method::Fixed, 3, Rounding::NearestAway)
            },
        ),
    ];
    let ctx = Ctx::train(11, 4);

    // The reference: the same configs stored, one plain step.
    let mut want = net();
    for o in &overrides {
        walk(&mut want, &mut |name, t| {
            let hit = match o.select {
                Select::Type(ty) => t.layer_type == ty,
                Select::Name(p) => name == p || name.starts_with(&format!("{p}.")),
                _ => unreachable!(),
            };
            if hit {
                if let Some(d) = o.data {
                    t.quant.cfg = d;
                }
                if let Some(g) = o.grad {
                    t.quant.grad_cfg = g;
                }
            }
        });
    }
    let want_loss = step(&mut want, &ctx).unwrap();
    let want_snap = snapshot(&mut want);

    let mut n = net();
    let before = configs(&mut n);
    let mut saved = [SavedConfigs::default(); 8];
    let loss = with_overrides(&mut n, &overrides, &mut saved, |n| step(n, &ctx))
        .unwrap()
        .unwrap();
    assert_eq!(loss.to_bits(), want_loss.to_bits());
    assert_eq!(snapshot(&mut n), want_snap);
    // The overridden tensors' configs are exactly as before (Auto chose
    // scales during the call; they are gone again) ...
    let after = configs(&mut n);
    let changed: Vec<&str> = before
        .tensors
        .iter()
        .zip(&after.tensors)
        .filter(|(b, a)| b != a)
        .map(|(b, _)| b.name.as_str())
        .collect();
    // ... and the one tensor no override selects updated its Auto scale as
    // any training pass does (fc1.output, relu.output are overridden or None).
    let wanted_changed: Vec<&str> = vec![];
    assert_eq!(changed, wanted_changed);
    // The pass really chose other scales: the reference stored them.
    assert_ne!(configs(&mut want), after);
    // 7 tensors selected: 6 of the Linear layers (fc2 by type and by name
    // counted once) and q0.
    assert_eq!(
        saved
            .iter()
            .filter(|s| s.data.method != Method::None)
            .count(),
        7
    );
}

#[test]
fn tensors_without_override_update_auto_as_usual() {
    let mut n = net();
    let mut plain = net();
    let ctx = Ctx::train(3, 0);
    let over = [Override::data(
        Select::Name("fc2.weight"),
        nics(Method::Auto, 5, Rounding::NearestEven),
    )];
    let mut saved = [SavedConfigs::default(); 1];
    with_overrides(&mut n, &over, &mut saved, |n| {
        n.forward(&RefBackend, &ctx, &input())
    })
    .unwrap()
    .unwrap();
    plain.forward(&RefBackend, &ctx, &input()).unwrap();
    let (a, b) = (configs(&mut n), configs(&mut plain));
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        if x.name.as_str() == "fc2.weight" {
            assert_eq!(
                x.data,
                QuantConfig {
                    scale: 3,
                    ..QuantConfig::auto(8)
                }
            );
        } else if x.name.as_str() != "fc2.output" {
            // fc2.output sees other inputs; everything before it is the same.
            assert_eq!(x, y, "{}", x.name);
        }
    }
    // q0 chose its scale from the data: ceil(log2 1.2) = 1.
    assert_eq!(a.tensors[0].data.scale, 1);
}

#[test]
fn split_apply_and_restore() {
    let mut n = net();
    let before = configs(&mut n);
    let mut saved = [SavedConfigs::default(); 4];
    let over = [Override::data(
        Select::Kind(Kind::Activation),
        QuantConfig::fixed(6, 0),
    )];
    let used = apply_overrides(&mut n, &over, &mut saved).unwrap();
    assert_eq!(used, 4); // q0.activation, fc1.output, relu.output, fc2.output
    assert_eq!(
        saved.map(|s| s.index),
        [0, 3, 4, 7] // visit positions
    );
    assert_eq!(n.relu.out.quant.cfg, QuantConfig::fixed(6, 0));
    n.forward(&RefBackend, &Ctx::eval(1), &input()).unwrap();
    assert_eq!(restore_configs(&mut n, &saved[..used]), 4);
    assert_eq!(configs(&mut n), before);
}

#[test]
fn errors_leave_the_model_unchanged() {
    let mut n = net();
    let before = configs(&mut n);
    let mut saved = [SavedConfigs::default(); 3];
    let good = Override::data(Select::Name("fc1.weight"), QuantConfig::fixed(4, 0));
    let cases: [(&[Override<'_>], OverrideError); 5] = [
        (
            &[good, Override::data(Select::Name("fc3"), QuantConfig::fixed(4, 0))],
            OverrideError::NoMatch { index: 1 },
        ),
        (
            // "fc" is not a path prefix of "fc1.weight" (prefixes end at dots).
            &[Override::data(Select::Name("fc"), QuantConfig::fixed(4, 0))],
            OverrideError::NoMatch { index: 0 },
        ),
        (
            &[Override::grad(Select::Type("Conv2d"), QuantConfig::fixed(4, 0))],
            OverrideError::NoMatch { index: 0 },
        ),
        (
            &[good, Override::data(Select::Type("Linear"), QuantConfig::fixed(4, 0))],
            OverrideError::TooMany {
                needed: 6,
                capacity: 3,
            },
        ),
        (
            &[good, Override::grad(Select::All, nics(Method::Auto, 16, Rounding::Floor))],
            OverrideError::Invalid {
                index: 1,
                grad: true,
                error: Error::Invalid {
                    what: "clamp `nics` needs bits <= 15 (its top code 2^(bits-1) takes bits + 1 bits)",
                },
            },
        ),
    ];
    for (over, want) in cases {
        let mut ran = false;
        let r = with_overrides(&mut n, over, &mut saved, |_| ran = true);
        assert_eq!(r, Err(want));
        assert!(!ran);
        assert_eq!(configs(&mut n), before);
    }
    // A failing pass inside still restores.
    let over = [Override::data(Select::All, QuantConfig::fixed(4, 0))];
    let mut big = [SavedConfigs::default(); 8];
    let r = with_overrides(&mut n, &over, &mut big, |n| {
        n.fc1.weight.master[0][0] = f32::NAN;
        n.forward(&RefBackend, &Ctx::train(1, 0), &input())
    })
    .unwrap();
    assert_eq!(r, Err(Error::NonFinite { index: 0 }));
    assert_eq!(configs(&mut n), before);
}

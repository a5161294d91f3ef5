//! Small networks train on synthetic problems generated here.

#![allow(clippy::needless_range_loop)]

use fixnn::backend::RefBackend;
use fixnn::layers::{softmax_cross_entropy, Chain, Layer, Linear, Quant, Relu};
use fixnn::optim::{FixedMaster, Sgd};
use fixnn::tensor::{Ctx, Tensor, S2};
use fixnn::{QuantConfig, Stream};

const B: usize = 16;
const D: usize = 8;
const H: usize = 32;
const K: usize = 4;

type Mlp = Chain<
    Chain<Chain<Chain<Quant<S2<B, D>>, Linear<D, H, B>>, Relu<S2<B, H>>>, Quant<S2<B, H>>>,
    Linear<H, K, B>,
>;

fn uniform(s: &Stream, i: u32) -> f32 {
    (s.draw(i) >> 8) as f32 / (1u32 << 24) as f32
}

/// A problem no linear model solves: `x` uniform in `[-1, 1)^D`; the label
/// is `2 * [x0 * x1 > 0] + [x0^2 + x1^2 > 0.5]` (XOR of quadrants, and a
/// ring); the other coordinates are distractors. Deterministic.
fn sample(seed: u64, n: u32) -> ([f32; D], usize) {
    let s = Stream::new(seed, 999, n);
    let mut x = [0f32; D];
    for (d, v) in x.iter_mut().enumerate() {
        *v = uniform(&s, d as u32) * 2.0 - 1.0;
    }
    let label = 2 * (x[0] * x[1] > 0.0) as usize + (x[0] * x[0] + x[1] * x[1] > 0.5) as usize;
    (x, label)
}

fn mlp(bits: u8) -> Mlp {
    let mut l1 = Linear::<D, H, B>::new(1);
    let mut l2 = Linear::<H, K, B>::new(4);
    l1.weight.init_uniform(7, 1.0 / (D as f32).sqrt());
    l1.bias.init_uniform(7, 1.0 / (D as f32).sqrt());
    l2.weight.init_uniform(7, 1.0 / (H as f32).sqrt());
    l2.bias.init_uniform(7, 1.0 / (H as f32).sqrt());
    for q in [
        &mut l1.weight.quant,
        &mut l1.bias.quant,
        &mut l2.weight.quant,
        &mut l2.bias.quant,
    ] {
        q.cfg = QuantConfig::auto(bits);
    }
    let mut q0 = Quant::new(0);
    q0.out.quant.cfg = QuantConfig::auto(bits);
    let mut q3 = Quant::new(3);
    q3.out.quant.cfg = QuantConfig::auto(bits);
    Chain::new(
        Chain::new(Chain::new(Chain::new(q0, l1), Relu::new(2)), q3),
        l2,
    )
}

/// Train for `steps`; return the mean loss of the first 10 steps, of the
/// last 10 steps, and the training accuracy over the last 100 steps.
fn train(net: &mut Mlp, steps: u32, opt: Sgd) -> (f32, f32, f32) {
    let bk = RefBackend;
    let mut x = Tensor::<S2<B, D>>::zeros();
    let mut dlogits = Tensor::<S2<B, K>>::zeros();
    let mut labels = [0usize; B];
    let (mut first, mut last) = (0.0, 0.0);
    let mut correct = 0;
    for step in 0..steps {
        for b in 0..B {
            let (xs, l) = sample(1, step * B as u32 + b as u32);
            x.v[b] = xs;
            labels[b] = l;
        }
        x.fmt = None;
        let ctx = Ctx::train(3, step);
        net.forward(&bk, &ctx, &x).unwrap();
        let out = softmax_cross_entropy(net.output(), &labels, &mut dlogits).unwrap();
        net.backward(&bk, &ctx, &x, &mut dlogits, None).unwrap();
        // Step decay: a fifth of the learning rate for the last third.
        let o = if step < steps * 2 / 3 {
            opt
        } else {
            Sgd {
                lr: opt.lr / 5.0,
                ..opt
            }
        };
        o.step(&ctx, net).unwrap();
        if step < 10 {
            first += out.loss / 10.0;
        }
        if step >= steps - 10 {
            last += out.loss / 10.0;
        }
        if step >= steps - 100 {
            correct += out.correct;
        }
    }
    (first, last, correct as f32 / (100 * B) as f32)
}

#[test]
fn mlp_trains_at_8_bits() {
    let mut net = mlp(8);
    let (first, last, acc) = train(&mut net, 2000, Sgd::new(0.1, 0.5, 0.0));
    println!("8 bits: loss {first} -> {last}, accuracy {acc}");
    assert!(acc >= 0.95, "training accuracy {acc}");
    assert!(last < first);
}

#[test]
fn mlp_loss_falls_at_4_bits() {
    let mut net = mlp(4);
    let (first, last, acc) = train(&mut net, 2000, Sgd::new(0.1, 0.5, 0.0));
    println!("4 bits: loss {first} -> {last}, accuracy {acc}");
    assert!(last < 0.8 * first, "loss {first} -> {last}");
}

#[test]
fn mlp_trains_with_a_fixed_point_master() {
    let mut net = mlp(8);
    let opt = Sgd {
        fixed_master: Some(FixedMaster {
            bits: 12,
            momentum_bits: 10,
        }),
        ..Sgd::new(0.1, 0.5, 0.0)
    };
    let (first, last, acc) = train(&mut net, 2000, opt);
    println!("8 bits, 12-bit master: loss {first} -> {last}, accuracy {acc}");
    assert!(acc >= 0.95, "training accuracy {acc}");
    // Every master value is a 12-bit code of its tensor's Auto format.
    let w = net.b.weight.master.as_flattened();
    let big = w.iter().fold(0f32, |a, v| a.max(v.abs()));
    let mut cfg = fixnn::QuantConfig::auto(12);
    let f = cfg.update_scale_f32(w).unwrap().unwrap();
    assert!(big > 0.0);
    for &v in w {
        assert_eq!(f.to_f32(f.code_of(v)), v, "{v} is not a 12-bit code");
    }
}

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
        net.backward(&bk, &ctx, &x, &mut dlogits, false).unwrap();
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

// ---- A small CNN: Conv2d -> BatchNorm2d -> Relu -> MaxPool2d -> Flatten -> Linear ----

mod cnn {
    use super::*;
    use fixnn::layers::{BatchNorm2d, Conv2d, Flatten, MaxPool2d};
    use fixnn::tensor::S4;

    pub const B: usize = 8;
    const C: usize = 4;
    const K: usize = 4;

    pub type Net = Chain<
        Chain<
            Chain<
                Chain<
                    Chain<
                        Chain<Quant<S4<B, 1, 8, 8>>, Conv2d<1, C, 1, 3, 3, 8, 8, 8, 8, B>>,
                        BatchNorm2d<C, 8, 8, B>,
                    >,
                    Relu<S4<B, C, 8, 8>>,
                >,
                MaxPool2d<C, 8, 8, 4, 4, B>,
            >,
            Flatten<B, C, 4, 4, 64>,
        >,
        Linear<64, K, B>,
    >;

    /// An 8x8 image with one bar (horizontal, vertical, diagonal or
    /// anti-diagonal: the label) at a random offset, on uniform noise in
    /// [-0.8, 0.8).
    pub fn sample(n: u32) -> ([[[f32; 8]; 8]; 1], usize) {
        let s = Stream::new(5, 77, n);
        let label = (s.draw(0) % K as u32) as usize;
        let off = (s.draw(1) % 6) as usize + 1;
        let mut img = [[[0f32; 8]; 8]; 1];
        for y in 0..8 {
            for x in 0..8 {
                img[0][y][x] = 1.6 * (uniform(&s, 2 + (y * 8 + x) as u32) - 0.5);
            }
        }
        for t in 0..8 {
            let (y, x) = match label {
                0 => (off, t),
                1 => (t, off),
                2 => (t, t),
                _ => (t, 7 - t),
            };
            img[0][y][x] += 1.0;
        }
        (img, label)
    }

    pub fn net(bits: u8) -> Net {
        let auto = QuantConfig::auto(bits);
        let mut q0 = Quant::new(0);
        q0.out.quant.cfg = auto;
        let mut conv = Conv2d::new(1, (1, 1), (1, 1), (1, 1)).unwrap();
        conv.weight.init_uniform(11, 1.0 / 3.0);
        conv.bias.init_uniform(11, 1.0 / 3.0);
        conv.weight.quant.cfg = auto;
        conv.bias.quant.cfg = auto;
        let mut bn = BatchNorm2d::new(2);
        bn.weight.quant.cfg = auto;
        bn.bias.quant.cfg = auto;
        bn.running_mean.quant.cfg = auto;
        bn.running_var.quant.cfg = auto;
        bn.out.quant.cfg = auto;
        let pool = MaxPool2d::new(4, (2, 2), (2, 2), (0, 0)).unwrap();
        let mut fc = Linear::new(6);
        fc.weight.init_uniform(11, 1.0 / 8.0);
        fc.bias.init_uniform(11, 1.0 / 8.0);
        fc.weight.quant.cfg = auto;
        fc.bias.quant.cfg = auto;
        Chain::new(
            Chain::new(
                Chain::new(
                    Chain::new(Chain::new(Chain::new(q0, conv), bn), Relu::new(3)),
                    pool,
                ),
                Flatten::new(5),
            ),
            fc,
        )
    }

    /// Mean loss of the first and last 10 steps, training accuracy of the last 50.
    pub fn train(net: &mut Net, steps: u32) -> (f32, f32, f32) {
        let bk = RefBackend;
        let opt = Sgd::new(0.05, 0.5, 0.0);
        let mut x = Tensor::<S4<B, 1, 8, 8>>::zeros();
        let mut d = Tensor::<S2<B, K>>::zeros();
        let mut labels = [0usize; B];
        let (mut first, mut last, mut correct) = (0.0, 0.0, 0);
        for step in 0..steps {
            for b in 0..B {
                let (img, l) = sample(step * B as u32 + b as u32);
                x.v[b] = img;
                labels[b] = l;
            }
            let ctx = Ctx::train(9, step);
            net.forward(&bk, &ctx, &x).unwrap();
            let out = softmax_cross_entropy(net.output(), &labels, &mut d).unwrap();
            net.backward(&bk, &ctx, &x, &mut d, false).unwrap();
            opt.step(&ctx, net).unwrap();
            if step < 10 {
                first += out.loss / 10.0;
            }
            if step >= steps - 10 {
                last += out.loss / 10.0;
            }
            if step >= steps - 50 {
                correct += out.correct;
            }
        }
        (first, last, correct as f32 / (50 * B) as f32)
    }
}

#[test]
fn cnn_trains_at_8_bits() {
    let mut net = Box::new(cnn::net(8));
    let (first, last, acc) = cnn::train(&mut net, 300);
    println!("CNN 8 bits: loss {first} -> {last}, training accuracy {acc}");
    println!(
        "CNN RAM to train: {} bytes",
        core::mem::size_of::<cnn::Net>()
    );
    assert!(acc >= 0.95, "training accuracy {acc}");
}

#[test]
fn cnn_loss_falls_at_4_bits() {
    let mut net = Box::new(cnn::net(4));
    let (first, last, acc) = cnn::train(&mut net, 300);
    println!("CNN 4 bits: loss {first} -> {last}, training accuracy {acc}");
    assert!(last < 0.8 * first, "loss {first} -> {last}");
}

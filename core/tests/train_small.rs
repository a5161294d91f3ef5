//! Small networks train on synthetic problems generated here.

#![allow(clippy::needless_range_loop)]

use fixnn::backend::RefBackend;
use fixnn::layers::{softmax_cross_entropy, Chain, Layer, Linear, Quant, Relu};
use fixnn::optim::Sgd;
use fixnn::tensor::{Ctx, Tensor, S2};
use fixnn::{QuantConfig, Stream};

const B: usize = 16;
const D: usize = 8;
const H: usize = 16;
const K: usize = 4;

type Mlp = Chain<
    Chain<Chain<Chain<Quant<S2<B, D>>, Linear<D, H, B>>, Relu<S2<B, H>>>, Quant<S2<B, H>>>,
    Linear<H, K, B>,
>;

fn uniform(s: &Stream, i: u32) -> f32 {
    (s.draw(i) >> 8) as f32 / (1u32 << 24) as f32
}

/// K Gaussian-ish blobs in D dimensions (sum of uniforms), deterministic.
fn sample(seed: u64, n: u32) -> ([f32; D], usize) {
    let s = Stream::new(seed, 999, n);
    let label = (s.draw(0) % K as u32) as usize;
    let mut x = [0f32; D];
    for (d, v) in x.iter_mut().enumerate() {
        let centre = if d % K == label { 1.5 } else { -0.5 };
        let noise: f32 = (0..4)
            .map(|k| uniform(&s, 1 + (d * 4 + k) as u32))
            .sum::<f32>()
            - 2.0;
        *v = centre + 0.5 * noise;
    }
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

/// Train for `steps` and return (first-epoch mean loss, last mean loss, accuracy on a fresh pass).
fn train(net: &mut Mlp, steps: u32) -> (f32, f32, f32) {
    let bk = RefBackend;
    let opt = Sgd {
        lr: 0.1,
        momentum: 0.5,
        weight_decay: 0.0,
    };
    let mut x = Tensor::<S2<B, D>>::zeros();
    let mut dlogits = Tensor::<S2<B, K>>::zeros();
    let mut labels = [0usize; B];
    let (mut first, mut last) = (0.0, 0.0);
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
        opt.step(net);
        if step < 10 {
            first += out.loss / 10.0;
        }
        if step >= steps - 10 {
            last += out.loss / 10.0;
        }
    }
    let mut correct = 0;
    let evals = 20u32;
    for e in 0..evals {
        for b in 0..B {
            let (xs, l) = sample(1, e * B as u32 + b as u32);
            x.v[b] = xs;
            labels[b] = l;
        }
        net.forward(&bk, &Ctx::eval(3), &x).unwrap();
        correct += softmax_cross_entropy(net.output(), &labels, &mut dlogits)
            .unwrap()
            .correct;
    }
    (first, last, correct as f32 / (evals as usize * B) as f32)
}

#[test]
fn mlp_trains_at_8_bits() {
    let mut net = mlp(8);
    let (first, last, acc) = train(&mut net, 300);
    println!("8 bits: loss {first} -> {last}, accuracy {acc}");
    assert!(acc >= 0.95, "training accuracy {acc}");
    assert!(last < first);
}

#[test]
fn mlp_loss_falls_at_4_bits() {
    let mut net = mlp(4);
    let (first, last, acc) = train(&mut net, 300);
    println!("4 bits: loss {first} -> {last}, accuracy {acc}");
    assert!(last < 0.8 * first, "loss {first} -> {last}");
}

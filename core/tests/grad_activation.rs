//! Relu, Quant, Flatten and the softmax cross-entropy loss against float64
//! references; SGD against PyTorch's update formula.
//!
//! Bounds: Relu, Flatten and Quant's backward are exact (they move or zero
//! values); Quant's forward is within half a step (nearest) or one step
//! (floor, stochastic) of its input, clamped at the range; the loss and its
//! gradient are f32 computations (own `exp`/`ln` within a few ulp) and agree
//! with float64 to 1e-5 relative.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use fixnn::backend::RefBackend;
use fixnn::layers::{softmax_cross_entropy, Flatten, Layer, Quant, Relu};
use fixnn::optim::Sgd;
use fixnn::quant::Format;
use fixnn::tensor::{Ctx, Param, Tensor, S1, S2, S4};
use fixnn::{QuantConfig, Rounding};

#[test]
fn relu_forward_backward_exact_and_format_preserving() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    let f = Format::new(6, 1).unwrap();
    let mut x = Tensor::<S2<4, 9>>::zeros();
    for (i, v) in x.flat_mut().iter_mut().enumerate() {
        *v = f.to_f32(i as i32 - 18);
    }
    x.fmt = Some(f);
    let mut r = Relu::<S2<4, 9>>::new(0);
    r.forward(&bk, &ctx, &x).unwrap();
    for (y, &v) in r.output().flat().iter().zip(x.flat()) {
        assert_eq!(*y as f64, (v as f64).max(0.0));
    }
    assert_eq!(r.output().fmt, Some(f), "ReLU of codes keeps the format");
    let mut dy = Tensor::<S2<4, 9>>::zeros();
    dy.flat_mut().copy_from_slice(&uniform(3, 0, 36, 1.0));
    let want: Vec<f64> = dy
        .flat()
        .iter()
        .zip(x.flat())
        .map(|(&g, &v)| if v > 0.0 { g as f64 } else { 0.0 })
        .collect();
    r.backward(&bk, &ctx, &x, &mut dy, true).unwrap();
    let dx = r.input_grad();
    assert_within("relu dx", dx.flat(), &want, &vec![0.0; 36]);
}

#[test]
fn quant_forward_within_a_step_and_backward_is_masked_ste() {
    let bk = RefBackend;
    for rounding in [
        Rounding::NearestEven,
        Rounding::NearestAway,
        Rounding::Floor,
        Rounding::Stochastic,
    ] {
        for bits in [2u8, 3, 8, 16] {
            let ctx = Ctx::train(5, 2);
            let mut q = Quant::<S2<3, 20>>::new(1);
            q.out.quant.cfg = QuantConfig {
                rounding,
                ..QuantConfig::fixed(bits, 0)
            };
            q.out.quant.grad_cfg = QuantConfig {
                rounding,
                ..QuantConfig::auto(bits)
            };
            let mut x = Tensor::<S2<3, 20>>::zeros();
            x.flat_mut()
                .copy_from_slice(&uniform(bits as u64, 7, 60, 1.5));
            q.forward(&bk, &ctx, &x).unwrap();
            let f = q.output().fmt.unwrap();
            let (lo, hi) = (f.to_f32(f.min_code()) as f64, f.to_f32(f.max_code()) as f64);
            let step = f.step() as f64;
            let tolq = if matches!(rounding, Rounding::NearestEven | Rounding::NearestAway) {
                step / 2.0
            } else {
                step
            };
            let mut any_sat = false;
            for i in 0..60 {
                let v = x.flat()[i] as f64;
                let y = q.output().flat()[i] as f64;
                let sat = q.out.sat.as_flattened()[i];
                any_sat |= sat;
                if sat {
                    assert!(y == lo || y == hi, "saturated value {y} not at a rail");
                    assert!(v > hi || v < lo, "marked saturated but {v} in range");
                } else {
                    assert!((y - v).abs() <= tolq, "{v} -> {y} (step {step})");
                }
            }
            assert!(
                any_sat,
                "data in [-1.5, 1.5) must saturate a scale-0 format"
            );
            let mut dy = Tensor::<S2<3, 20>>::zeros();
            dy.flat_mut().copy_from_slice(&uniform(9, 9, 60, 0.3));
            let before: Vec<f32> = dy.flat().to_vec();
            q.backward(&bk, &ctx, &x, &mut dy, true).unwrap();
            let dx = q.input_grad();
            let g = dx.fmt.expect("quantized gradient");
            for i in 0..60 {
                let want = if q.out.sat.as_flattened()[i] {
                    0.0
                } else {
                    before[i] as f64
                };
                assert!(
                    (dx.flat()[i] as f64 - want).abs() <= g.step() as f64,
                    "dx[{i}]"
                );
            }
        }
    }
}

#[test]
fn flatten_moves_values_and_formats() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    let mut fl = Flatten::<2, 3, 2, 2, 12>::new(0);
    let mut x = Tensor::<S4<2, 3, 2, 2>>::zeros();
    x.flat_mut().copy_from_slice(&uniform(1, 1, 24, 1.0));
    fl.forward(&bk, &ctx, &x).unwrap();
    assert_eq!(fl.output().flat(), x.flat());
    let mut dy = Tensor::<S2<2, 12>>::zeros();
    dy.flat_mut().copy_from_slice(&uniform(1, 2, 24, 1.0));
    fl.backward(&bk, &ctx, &x, &mut dy, true).unwrap();
    let dx = fl.input_grad();
    assert_eq!(dx.flat(), dy.flat());
}

#[test]
fn softmax_cross_entropy_matches_float64() {
    const B: usize = 4;
    const N: usize = 6;
    for seed in 0..20u64 {
        let mut logits = Tensor::<S2<B, N>>::zeros();
        logits
            .flat_mut()
            .copy_from_slice(&uniform(seed, 3, B * N, 6.0));
        let labels = [0usize, 5, 2, (seed % 6) as usize];
        let mut d = Tensor::zeros();
        let out = softmax_cross_entropy(&logits, &labels, &mut d).unwrap();
        let mut loss = 0.0f64;
        let mut grad = vec![0.0f64; B * N];
        let mut correct = 0;
        for b in 0..B {
            let row: Vec<f64> = logits.v[b].iter().map(|&v| v as f64).collect();
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            loss += s.ln() - (row[labels[b]] - m);
            let arg = (0..N).fold(0, |a, i| if row[i] > row[a] { i } else { a });
            correct += (arg == labels[b]) as usize;
            for i in 0..N {
                let p = (row[i] - m).exp() / s;
                grad[b * N + i] = (p - if i == labels[b] { 1.0 } else { 0.0 }) / B as f64;
            }
        }
        loss /= B as f64;
        assert!(
            (out.loss as f64 - loss).abs() <= 1e-5 * loss.abs().max(1.0),
            "loss {} vs {loss}",
            out.loss
        );
        assert_eq!(out.correct, correct);
        let tol: Vec<f64> = grad.iter().map(|g| 1e-5 * g.abs() + 1e-7).collect();
        assert_within("dlogits", d.flat(), &grad, &tol);
    }
    let mut d = Tensor::<S2<1, 3>>::zeros();
    let logits = Tensor::<S2<1, 3>>::zeros();
    assert!(
        softmax_cross_entropy(&logits, &[3], &mut d).is_err(),
        "label out of range"
    );
}

#[test]
fn sgd_is_pytorch_sgd() {
    let opt = Sgd::new(0.05, 0.9, 0.01);
    let mut p = Param::<S1<5>>::new(0);
    p.master = [0.5, -0.25, 1.0, 0.0, -2.0];
    let mut w: Vec<f64> = p.master.iter().map(|&v| v as f64).collect();
    let mut m = [0.0f64; 5];
    for step in 0..4u64 {
        let g = uniform(step, 4, 5, 1.0);
        p.grad.v.copy_from_slice(&g);
        let id = p.quant.id;
        opt.update(
            &Ctx::train(0, step as u32),
            id,
            p.tensor_mut("T", "p").param.unwrap(),
        )
        .unwrap();
        for i in 0..5 {
            let d = g[i] as f64 + 0.01 * w[i];
            m[i] = if step == 0 { d } else { 0.9 * m[i] + d };
            w[i] -= 0.05 * m[i];
        }
        let tol: Vec<f64> = w.iter().map(|v| 1e-6 * (1.0 + v.abs())).collect();
        assert_within("sgd master", &p.master, &w, &tol);
    }
}

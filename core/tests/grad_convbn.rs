//! ConvBn: the fold, forward, backward and running statistics against a
//! float64 reference evaluated on the values the layer used (input, f32
//! master weights, quantized gamma, beta, the quantized folded weight and
//! bias, the saturation masks, the prepared `dy`).
//!
//! # Bounds
//!
//! As in `grad_batchnorm.rs`, the reference mirrors the layer's f32
//! operations with running error bounds (`errbound::E`), so each value has
//! a rigorous bound of its own:
//!
//! * `z = conv(x, w)` (f32 dot products of `CPG * KH * KW` terms), its
//!   two-pass statistics, `inv_std` and `s = gamma * inv_std`;
//! * folded weight `w * s` and bias `beta - mean * s`: their chains plus
//!   half a step (nearest) or a step (floor, stochastic) of the weight and
//!   bias formats; saturated elements are compared with the clamp;
//! * output: exact integer sums (converted once when the output is at full
//!   precision) or an f32 dot product, plus the output format's rounding;
//! * gradients: the chains of the folded-weight and folded-bias gradients,
//!   `ds`, the statistics paths `gz = a + c (z - mean)` and the two extra
//!   convolutions, plus each gradient format's rounding error.
//!
//! A finite-difference check confirms the reference's analytic gradients
//! (with the quantizations as identities), and an independent f64
//! `BatchNorm2d(conv(x, w))` confirms the folded forward pass.

#![allow(clippy::needless_range_loop)]

mod errbound;

use errbound::conv::*;
use errbound::*;
use fixnn::backend::{ConvGeom, RefBackend};
use fixnn::layers::{ConvBn, Layer};
use fixnn::quant::Format;
use fixnn::tensor::{Ctx, Tensor, S4};
use fixnn::{Error, Method, QuantConfig, Rounding};

/// Geometry A: groups 2, stride (2, 1), padding 1, dilation (1, 2), N = 24.
type LayerA = ConvBn<4, 4, 2, 3, 2, 5, 4, 3, 4, 2>;
const A: ((usize, usize), (usize, usize), (usize, usize)) = ((2, 1), (1, 1), (1, 2));
/// Geometry B: one group, stride 1, no padding, N = 27.
type LayerB = ConvBn<2, 3, 2, 2, 2, 4, 4, 3, 3, 3>;
const BG: ((usize, usize), (usize, usize), (usize, usize)) = ((1, 1), (0, 0), (1, 1));

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

#[derive(Clone, Copy)]
struct Case {
    x_fmt: Option<Format>,
    weight: QuantConfig,
    out: QuantConfig,
    grad: QuantConfig,
    out_grad: QuantConfig,
    buf: QuantConfig,
}

const FULL: Case = Case {
    x_fmt: None,
    weight: QuantConfig::NONE,
    out: QuantConfig::NONE,
    grad: QuantConfig::NONE,
    out_grad: QuantConfig::NONE,
    buf: QuantConfig::NONE,
};

fn cfg(method: Method, bits: u8, scale: i8, rounding: Rounding) -> QuantConfig {
    QuantConfig {
        method,
        bits,
        scale,
        rounding,
        ..QuantConfig::NONE
    }
}

macro_rules! layer_fns {
    ($make:ident, $run:ident, $ty:ty, $geom:expr, $b:expr, $cin:expr, $h:expr, $w:expr, $cout:expr, $oh:expr, $ow:expr) => {
        fn $make(case: &Case, seed: u64) -> Box<$ty> {
            let (s, p, d) = $geom;
            let mut l = Box::new(<$ty>::new(1, s, p, d).unwrap());
            l.weight.init_uniform(seed, 0.5);
            l.bn_weight.init_uniform(seed, 0.4);
            for g in l.bn_weight.master.iter_mut() {
                *g += 1.0;
            }
            l.bias.init_uniform(seed, 0.5);
            l.weight.quant.cfg = case.weight;
            l.bias.quant.cfg = case.weight;
            l.bn_weight.quant.cfg = case.weight;
            l.weight.quant.grad_cfg = case.grad;
            l.bias.quant.grad_cfg = case.grad;
            l.bn_weight.quant.grad_cfg = case.grad;
            l.out.quant.cfg = case.out;
            l.out.quant.grad_cfg = case.out_grad;
            l.running_mean.quant.cfg = case.buf;
            l.running_var.quant.cfg = case.buf;
            l
        }

        fn $run(l: &mut $ty, case: &Case, ctx: &Ctx, seed: u64) {
            let mut x = Box::new(Tensor::<S4<$b, $cin, $h, $w>>::zeros());
            x.flat_mut()
                .copy_from_slice(&data(seed, 100, $b * $cin * $h * $w, 1.5, 0.4));
            if let Some(f) = case.x_fmt {
                quantize_input(x.flat_mut(), f);
                x.fmt = Some(f);
            }
            let (old_m, old_v) = (l.running_mean.v, l.running_var.v);
            l.forward(&RefBackend, ctx, &x).unwrap();
            let mut dy = Box::new(Tensor::<S4<$b, $cout, $oh, $ow>>::zeros());
            dy.flat_mut()
                .copy_from_slice(&data(seed, 200, $b * $cout * $oh * $ow, 0.8, 0.0));
            l.backward(&RefBackend, ctx, &x, &mut dy, true).unwrap();
            let dx = l.input_grad();
            let batch = ctx.training && !l.freeze_bn;
            let (rm, rv) = (f64s(&l.running_mean.v), f64s(&l.running_var.v));
            let inputs = Inputs {
                x: &f64s(x.flat()),
                x_q: x.fmt.is_some(),
                w: &f64s(l.weight.master.as_flattened().as_flattened().as_flattened()),
                gamma: &f64s(&l.bn_weight.q.v),
                beta: &f64s(&l.bias.master),
                eps: l.eps as f64,
                running: (!batch).then_some((&rm[..], &rv[..])),
                w_hat: &f64s(l.weight.q.flat()),
                w_hat_q: l.weight.q.fmt.is_some(),
                b_hat: &f64s(l.bias.q.flat()),
                b_hat_q: l.bias.q.fmt.is_some(),
                out_q: l.out.t.fmt.is_some(),
                w_sat: l.weight.sat.as_flattened().as_flattened().as_flattened(),
                b_sat: &l.bias.sat,
                dy: &f64s(dy.flat()),
                dy_q: dy.fmt.is_some(),
            };
            let r = reference(G(l.geom()), &inputs);
            check(l.stats(), l.fold_scale(), &r, batch);
            let wr = case.weight.rounding;
            let q = |v: &[E], f: Option<Format>, rd: Rounding| -> Vec<E> {
                v.iter().map(|e| e.quantized(f, rd)).collect()
            };
            let fw = l.weight.q.fmt;
            assert_e("w_fold", l.weight.q.flat(), &q(&r.w_fold, fw, wr), fw);
            let fb = l.bias.q.fmt;
            assert_e("b_fold", l.bias.q.flat(), &q(&r.b_fold, fb, wr), fb);
            let fo = l.out.t.fmt;
            assert_e("y", l.out.t.flat(), &q(&r.y, fo, case.out.rounding), fo);
            let gr = case.grad.rounding;
            let fg = l.weight.grad.fmt;
            assert_e("dw", l.weight.grad.flat(), &q(&r.dw, fg, gr), fg);
            let mut dg = q(&r.dgamma, l.bn_weight.grad.fmt, gr);
            for (e, &s) in dg.iter_mut().zip(&l.bn_weight.sat) {
                if s {
                    *e = E::exact(0.0);
                }
            }
            assert_e("dgamma", l.bn_weight.grad.flat(), &dg, l.bn_weight.grad.fmt);
            let fb = l.bias.grad.fmt;
            assert_e("dbeta", l.bias.grad.flat(), &q(&r.dbeta, fb, gr), fb);
            assert_e("dx", dx.flat(), &r.dx, None);
            check_running(
                l.momentum,
                batch,
                (&old_m, &old_v),
                (&l.running_mean, &l.running_var),
                &r,
                case,
            );
        }
    };
}

layer_fns!(make_a, run_a, LayerA, A, 2, 4, 5, 4, 4, 3, 4);
layer_fns!(make_b, run_b, LayerB, BG, 3, 2, 4, 4, 3, 3, 3);

fn check<const C: usize>(st: &fixnn::layers::ChannelStats<C>, s: &[f32; C], r: &Ref, batch: bool) {
    assert_eq!(st.batch, batch);
    assert_e("mean", &st.mean, &r.mean, None);
    assert_e("var", &st.var, &r.var, None);
    assert_e("var_unbiased", &st.var_unbiased, &r.var_u, None);
    assert_e("s", s, &r.s, None);
}

fn check_running<const C: usize>(
    m: f32,
    batch: bool,
    old: (&[f32; C], &[f32; C]),
    new: (
        &fixnn::tensor::Buffer<fixnn::tensor::S1<C>>,
        &fixnn::tensor::Buffer<fixnn::tensor::S1<C>>,
    ),
    r: &Ref,
    case: &Case,
) {
    if !batch {
        assert_eq!((&new.0.v, &new.1.v), old, "running statistics unchanged");
        return;
    }
    let upd = |o: f32, stat: E, f: Option<Format>| {
        let one_m = E::exact(1.0).sub(E::exact(m as f64));
        one_m
            .mul(E::exact(o as f64))
            .add(E::exact(m as f64).mul(stat))
            .quantized(f, case.buf.rounding)
    };
    let rm: Vec<E> = (0..C)
        .map(|c| upd(old.0[c], r.mean[c], new.0.fmt))
        .collect();
    let rv: Vec<E> = (0..C)
        .map(|c| upd(old.1[c], r.var_u[c], new.1.fmt))
        .collect();
    assert_e("running_mean", &new.0.v, &rm, new.0.fmt);
    assert_e("running_var", &new.1.v, &rv, new.1.fmt);
}

/// Train `steps` steps, one eval pass, then train with `freeze_bn`.
fn both(case: &Case, seeds: u64, steps: u32) {
    for seed in 0..seeds {
        let (mut a, mut b) = (make_a(case, seed), make_b(case, seed));
        for step in 0..steps {
            let ctx = Ctx::train(seed, step);
            run_a(&mut a, case, &ctx, seed * 31 + step as u64);
            run_b(&mut b, case, &ctx, seed * 31 + step as u64);
        }
        run_a(&mut a, case, &Ctx::eval(seed), seed + 500);
        run_b(&mut b, case, &Ctx::eval(seed), seed + 500);
        a.freeze_bn = true;
        b.freeze_bn = true;
        run_a(&mut a, case, &Ctx::train(seed, steps), seed + 900);
        run_b(&mut b, case, &Ctx::train(seed, steps), seed + 900);
    }
}

#[test]
fn full_precision_agrees_to_f32_precision() {
    both(&FULL, 10, 3);
}

#[test]
fn quantized_everything_within_bounds() {
    for rounding in [
        Rounding::NearestEven,
        Rounding::NearestAway,
        Rounding::Floor,
        Rounding::Stochastic,
    ] {
        for bits in [4u8, 8] {
            let q = cfg(Method::Auto, bits, 0, rounding);
            let case = Case {
                x_fmt: Some(Format::new(bits, 2).unwrap()),
                weight: q,
                out: q,
                grad: q,
                out_grad: q,
                buf: q,
            };
            both(&case, 3, 2);
            // Integer products with full-precision output and gradients.
            let ints = Case {
                out: QuantConfig::NONE,
                grad: QuantConfig::NONE,
                ..case
            };
            both(&ints, 2, 2);
            // Quantized folded weight, full-precision bias.
            let mut a = make_a(
                &Case {
                    x_fmt: None,
                    ..case
                },
                9,
            );
            a.bias.quant.cfg = QuantConfig::NONE;
            run_a(
                &mut a,
                &Case {
                    x_fmt: Some(Format::new(bits, 2).unwrap()),
                    ..case
                },
                &Ctx::train(9, 0),
                9,
            );
        }
    }
}

#[test]
fn fixed_formats_saturate_and_mask() {
    let case = Case {
        x_fmt: Some(Format::new(6, 2).unwrap()),
        // |w * s| reaches about 0.25: scale -3 (range +-0.125) saturates some.
        weight: cfg(Method::Fixed, 6, -3, Rounding::NearestEven),
        out: cfg(Method::Fixed, 6, 0, Rounding::NearestEven),
        grad: cfg(Method::Fixed, 8, 0, Rounding::NearestEven),
        out_grad: cfg(Method::Fixed, 8, -1, Rounding::Floor),
        buf: cfg(Method::Fixed, 8, 1, Rounding::NearestEven),
    };
    let (mut some, mut all) = (0, 0);
    for seed in 0..5 {
        let mut a = make_a(&case, seed);
        a.bn_weight.quant.cfg = QuantConfig::NONE; // gamma near 1 would saturate
        run_a(&mut a, &case, &Ctx::train(seed, 0), seed);
        let sat = a.weight.sat.as_flattened().as_flattened().as_flattened();
        some += sat.iter().any(|&s| s) as u32;
        all += sat.iter().all(|&s| s) as u32;
    }
    assert!(some > 0 && all == 0, "folded weights saturate, but not all");
}

#[test]
fn frozen_training_equals_eval_and_keeps_running_statistics() {
    let mut a = make_a(&FULL, 4);
    for step in 0..3 {
        run_a(&mut a, &FULL, &Ctx::train(4, step), step as u64);
    }
    let mut x = Tensor::<S4<2, 4, 5, 4>>::zeros();
    x.flat_mut().copy_from_slice(&data(8, 1, 160, 1.0, 0.0));
    a.forward(&RefBackend, &Ctx::eval(4), &x).unwrap();
    let eval_out = a.output().v;
    a.freeze_bn = true;
    let before = (a.running_mean.v, a.running_var.v);
    a.forward(&RefBackend, &Ctx::train(4, 3), &x).unwrap();
    assert_eq!(a.output().v, eval_out);
    assert_eq!((a.running_mean.v, a.running_var.v), before);
    assert!(!a.stats().batch);
}

#[test]
fn unquantized_training_forward_is_conv_then_batchnorm() {
    for seed in 0..5 {
        let mut b = make_b(&FULL, seed);
        let mut x = Tensor::<S4<3, 2, 4, 4>>::zeros();
        x.flat_mut().copy_from_slice(&data(seed, 7, 96, 1.0, 0.5));
        b.forward(&RefBackend, &Ctx::train(seed, 0), &x).unwrap();
        let g = G(b.geom());
        let w = f64s(b.weight.master.as_flattened().as_flattened().as_flattened());
        let xs = f64s(x.flat());
        let mut z = vec![0.0; 81];
        for (y, xi, wi) in g.links() {
            z[y] += xs[xi] * w[wi];
        }
        for co in 0..3 {
            let idx: Vec<usize> = (0..81).filter(|k| (k / 9) % 3 == co).collect();
            let m = idx.iter().map(|&k| z[k]).sum::<f64>() / 27.0;
            let v = idx.iter().map(|&k| (z[k] - m).powi(2)).sum::<f64>() / 27.0;
            for &k in &idx {
                let gamma = b.bn_weight.master[co] as f64;
                let want =
                    gamma * (z[k] - m) / (v + 1e-5f32 as f64).sqrt() + b.bias.master[co] as f64;
                let got = b.out.t.flat()[k] as f64;
                assert!(
                    (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "y[{k}] {got} {want}"
                );
            }
        }
    }
}

#[test]
fn finite_differences_confirm_reference_gradients() {
    let g = G(ConvGeom {
        batch: 2,
        cin: 4,
        h: 5,
        w: 4,
        cout: 4,
        kh: 3,
        kw: 2,
        oh: 3,
        ow: 4,
        stride: A.0,
        pad: A.1,
        dil: A.2,
        groups: 2,
    });
    let (xl, wl, yl) = (160, 48, 96);
    for batch in [true, false] {
        let x = f64s(&data(1, 1, xl, 1.0, 0.3));
        let w = f64s(&data(1, 2, wl, 0.5, 0.0));
        let gamma = f64s(&data(1, 3, 4, 0.4, 1.0));
        let beta = f64s(&data(1, 4, 4, 0.5, 0.0));
        let dy = f64s(&data(1, 5, yl, 1.0, 0.0));
        let (rm, rv) = (vec![0.1, -0.2, 0.3, 0.0], vec![0.8, 1.2, 0.5, 2.0]);
        // y(p) with the quantizations as identities.
        let fwd = |p: &[f64]| -> (Ref, Vec<f64>) {
            let (x, rest) = p.split_at(xl);
            let (w, rest) = rest.split_at(wl);
            let (gamma, beta) = rest.split_at(4);
            let mut inp = Inputs {
                x,
                x_q: false,
                w,
                gamma,
                beta,
                eps: 1e-5f32 as f64,
                running: (!batch).then_some((&rm[..], &rv[..])),
                w_hat: w,
                w_hat_q: false,
                b_hat: beta,
                b_hat_q: false,
                out_q: false,
                w_sat: &[false; 48],
                b_sat: &[false; 4],
                dy: &dy,
                dy_q: false,
            };
            let r0 = reference(g, &inp);
            let wf: Vec<f64> = r0.w_fold.iter().map(|e| e.v).collect();
            let bf: Vec<f64> = r0.b_fold.iter().map(|e| e.v).collect();
            inp.w_hat = &wf;
            inp.b_hat = &bf;
            let r = reference(g, &inp);
            let y = r.y.iter().map(|e| e.v).collect();
            (r, y)
        };
        let p: Vec<f64> = x
            .iter()
            .chain(&w)
            .chain(&gamma)
            .chain(&beta)
            .copied()
            .collect();
        let (r, _) = fwd(&p);
        let grad: Vec<f64> = [&r.dx, &r.dw, &r.dgamma, &r.dbeta]
            .iter()
            .flat_map(|v| v.iter().map(|e| e.v))
            .collect();
        let loss = |p: &[f64]| fwd(p).1.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>();
        check_fd("convbn", &p, &grad, 1e-5, 2e-6, loss);
    }
}

#[test]
fn errors() {
    // CIN not a multiple of CPG, and an output size that does not fit.
    assert!(ConvBn::<3, 4, 2, 3, 3, 8, 8, 8, 8, 1>::new(0, (1, 1), (1, 1), (1, 1)).is_err());
    assert!(ConvBn::<4, 4, 2, 3, 3, 8, 8, 8, 8, 1>::new(0, (2, 1), (1, 1), (1, 1)).is_err());
    assert!(ConvBn::<4, 3, 2, 3, 3, 8, 8, 8, 8, 1>::new(0, (1, 1), (1, 1), (1, 1)).is_err());
    // Backward with batch statistics consumes z.
    let mut b = make_b(&FULL, 1);
    let x = Tensor::<S4<3, 2, 4, 4>>::zeros();
    let ctx = Ctx::train(1, 0);
    b.forward(&RefBackend, &ctx, &x).unwrap();
    let mut dy = Tensor::<S4<3, 3, 3, 3>>::zeros();
    b.backward(&RefBackend, &ctx, &x, &mut dy, false).unwrap();
    assert!(matches!(
        b.backward(&RefBackend, &ctx, &x, &mut dy, false),
        Err(Error::Shape { .. })
    ));
    let mut x = x;
    x.flat_mut()[3] = f32::INFINITY;
    assert_eq!(
        b.forward(&RefBackend, &ctx, &x).err(),
        Some(Error::NonFinite { index: 3 })
    );
}

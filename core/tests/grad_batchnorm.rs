//! BatchNorm1d / BatchNorm2d: forward, backward and running statistics
//! against a float64 reference evaluated on the dequantized values the
//! layer used (input, quantized gamma and beta, quantized running
//! statistics, the prepared `dy`).
//!
//! # Bounds
//!
//! The reference mirrors the layer's f32 operations one by one with
//! running error bounds (`errbound::E`: each f32 operation contributes
//! `u |result| + 2^-149`, operand errors propagate exactly, `u = 2^-24`),
//! so each compared value has its own rigorous bound:
//!
//! * quantized input: mean and both variances come from exact integer sums
//!   converted once, error `<= u |value|` (checked on their own);
//! * f32 input: the two-pass statistics carry the bound of their chain
//!   (about `(N + 3) u` relative for the variance, plus the effect of the
//!   computed mean, first order in `u`);
//! * `inv_std`: one addition, a correctly rounded square root, one division;
//! * output `y`: `(x - mean) * inv_std`, `gamma * xh + beta`: 4 roundings
//!   plus the propagated statistics error; a quantized output adds half a
//!   step (nearest) or one step (floor, stochastic) of its format, and
//!   saturated outputs are compared with the clamp of the reference (the
//!   clamp is 1-Lipschitz, so the bound still holds);
//! * gradients: their f32 chains (sums of `N` terms, then the `dx` formula)
//!   plus the propagated `xh` error; quantized gradients add their rounding
//!   error; gradients of saturated parameters are exactly 0;
//! * running statistics: PyTorch's `(1 - m) r + m stat` (unbiased variance)
//!   in exact arithmetic, error of 3 roundings plus `m` times the
//!   statistic's, plus the buffer format's rounding error.
//!
//! A finite-difference check confirms the reference's analytic gradients.

#![allow(clippy::needless_range_loop)]

mod errbound;

use errbound::bn::*;
use errbound::*;
use fixnn::backend::RefBackend;
use fixnn::layers::{BatchNorm, BatchNorm1d, BatchNorm2d, ChannelShape, Layer};
use fixnn::quant::Format;
use fixnn::tensor::{Ctx, Tensor, S2, S4};
use fixnn::{Error, Method, QuantConfig, Rounding};

#[derive(Clone, Copy)]
struct Case {
    x_fmt: Option<Format>,
    param: QuantConfig,
    out: QuantConfig,
    grad: QuantConfig,
    out_grad: QuantConfig,
    buf: QuantConfig,
}

const FULL: Case = Case {
    x_fmt: None,
    param: QuantConfig::NONE,
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

fn make<const C: usize, S: ChannelShape>(case: &Case, seed: u64) -> BatchNorm<C, S> {
    let mut l = BatchNorm::<C, S>::new(1);
    l.weight.init_uniform(seed, 0.5);
    for g in l.weight.master.iter_mut() {
        *g += 1.0;
    }
    l.bias.init_uniform(seed, 0.5);
    l.weight.quant.cfg = case.param;
    l.bias.quant.cfg = case.param;
    l.weight.quant.grad_cfg = case.grad;
    l.bias.quant.grad_cfg = case.grad;
    l.out.quant.cfg = case.out;
    l.out.quant.grad_cfg = case.out_grad;
    l.running_mean.quant.cfg = case.buf;
    l.running_var.quant.cfg = case.buf;
    l
}

/// Input with a different offset and spread per channel, quantized if asked.
fn input<S: ChannelShape>(case: &Case, seed: u64) -> Tensor<S> {
    let d = Dims::of::<S>();
    let mut x = Tensor::<S>::zeros();
    let u = data(seed, 100, S::LEN, 1.0, 0.0);
    for (i, v) in x.flat_mut().iter_mut().enumerate() {
        let c = d.chan_of(i) as f32;
        *v = (0.75 * c - 0.5) + u[i] * (1.0 + 0.5 * c);
    }
    if let Some(f) = case.x_fmt {
        quantize_input(x.flat_mut(), f);
        x.fmt = Some(f);
    }
    x
}

/// One forward and backward pass in `ctx`'s mode, every result checked.
fn run<const C: usize, S: ChannelShape>(
    l: &mut BatchNorm<C, S>,
    case: &Case,
    ctx: &Ctx,
    seed: u64,
) {
    let d = Dims::of::<S>();
    let x = input::<S>(case, seed);
    let (old_m, old_v) = (l.running_mean.v, l.running_var.v);
    l.forward(&RefBackend, ctx, &x).unwrap();
    let mut dy = Tensor::<S>::zeros();
    dy.flat_mut()
        .copy_from_slice(&data(seed, 200, S::LEN, 0.8, 0.0));
    l.backward(&RefBackend, ctx, &x, &mut dy, true).unwrap();
    let dx = l.input_grad();

    let running = (!ctx.training).then_some((&l.running_mean.v[..], &l.running_var.v[..]));
    let r = reference(
        d,
        x.flat(),
        x.fmt,
        &l.weight.q.v,
        &l.bias.q.v,
        l.eps,
        running,
        dy.flat(),
    );
    let st = l.stats();
    assert_eq!(st.batch, ctx.training);
    assert_e("mean", &st.mean, &r.mean, None);
    assert_e("var", &st.var, &r.var, None);
    assert_e("var_unbiased", &st.var_unbiased, &r.var_u, None);
    assert_e("inv_std", &st.inv_std, &r.inv, None);

    let out_fmt = l.out.t.fmt;
    let y: Vec<E> =
        r.y.iter()
            .map(|e| e.quantized(out_fmt, case.out.rounding))
            .collect();
    assert_e("y", l.out.t.flat(), &y, out_fmt);

    let gfmt = |f: Option<Format>, sat: &[bool], v: &[E]| -> Vec<E> {
        v.iter()
            .zip(sat)
            .map(|(e, &s)| {
                if s {
                    E::exact(0.0)
                } else {
                    e.quantized(f, case.grad.rounding)
                }
            })
            .collect()
    };
    let dg = gfmt(l.weight.grad.fmt, &l.weight.sat, &r.dgamma);
    assert_e("dgamma", l.weight.grad.flat(), &dg, l.weight.grad.fmt);
    let db = gfmt(l.bias.grad.fmt, &l.bias.sat, &r.dbeta);
    assert_e("dbeta", l.bias.grad.flat(), &db, l.bias.grad.fmt);
    assert_e("dx", dx.flat(), &r.dx, None);
    assert_eq!(dx.fmt, None);

    // Running statistics: PyTorch's update in training, untouched in eval
    // (apart from quantizing them by their configs, a no-op once trained).
    let m = l.momentum;
    let update = |old: f32, stat: E| {
        let one_m = E::exact(1.0).sub(E::exact(m as f64));
        one_m
            .mul(E::exact(old as f64))
            .add(E::exact(m as f64).mul(stat))
    };
    if ctx.training {
        let (fm, fv) = (l.running_mean.fmt, l.running_var.fmt);
        let rm: Vec<E> = (0..C)
            .map(|c| update(old_m[c], r.mean[c]).quantized(fm, case.buf.rounding))
            .collect();
        let rv: Vec<E> = (0..C)
            .map(|c| update(old_v[c], r.var_u[c]).quantized(fv, case.buf.rounding))
            .collect();
        assert_e("running_mean", &l.running_mean.v, &rm, fm);
        assert_e("running_var", &l.running_var.v, &rv, fv);
    } else {
        assert_eq!(l.running_mean.v, old_m, "eval must not update running_mean");
        assert_eq!(l.running_var.v, old_v, "eval must not update running_var");
    }
}

fn both_layouts(case: &Case, seeds: u64, steps: u32) {
    for seed in 0..seeds {
        let mut l1 = make::<3, S2<5, 3>>(case, seed);
        let mut l2 = make::<2, S4<2, 2, 3, 2>>(case, seed);
        for step in 0..steps {
            let ctx = Ctx::train(seed, step);
            run(&mut l1, case, &ctx, seed * 31 + step as u64);
            run(&mut l2, case, &ctx, seed * 31 + step as u64);
        }
        let ctx = Ctx::eval(seed);
        run(&mut l1, case, &ctx, seed + 1000);
        run(&mut l2, case, &ctx, seed + 1000);
    }
}

#[test]
fn full_precision_agrees_to_f32_precision() {
    both_layouts(&FULL, 20, 3);
}

#[test]
fn quantized_input_gives_correctly_rounded_statistics() {
    // The statistics bounds here are u |value|: exact sums, one rounding.
    for (bits, scale) in [(8u8, 2i8), (4, 2), (16, 3)] {
        let case = Case {
            x_fmt: Some(Format::new(bits, scale).unwrap()),
            ..FULL
        };
        both_layouts(&case, 10, 2);
    }
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
                param: q,
                out: q,
                grad: q,
                out_grad: q,
                buf: q,
            };
            both_layouts(&case, 4, 3);
            // Full-precision input, quantized everything else.
            both_layouts(
                &Case {
                    x_fmt: None,
                    ..case
                },
                2,
                2,
            );
        }
    }
}

#[test]
fn fixed_formats_saturate_and_mask() {
    // Scale -1: gamma around 1 saturates; outputs and gradients clamp.
    let case = Case {
        x_fmt: Some(Format::new(6, 2).unwrap()),
        param: cfg(Method::Fixed, 6, -1, Rounding::NearestEven),
        out: cfg(Method::Fixed, 6, -1, Rounding::NearestEven),
        grad: cfg(Method::Fixed, 8, -2, Rounding::NearestEven),
        out_grad: cfg(Method::Fixed, 8, -1, Rounding::Floor),
        buf: cfg(Method::Fixed, 8, 1, Rounding::NearestEven),
    };
    for seed in 0..6 {
        let mut l = make::<3, S2<5, 3>>(&case, seed);
        run(&mut l, &case, &Ctx::train(seed, 0), seed);
        assert!(l.weight.sat.iter().any(|&s| s), "some gamma saturates");
        assert!(
            l.out.sat.as_flattened().iter().any(|&s| s),
            "some outputs saturate"
        );
    }
}

#[test]
fn running_statistics_follow_pytorch_over_many_steps() {
    for momentum in [0.1f32, 0.3, 1.0] {
        for buf in [
            QuantConfig::NONE,
            cfg(Method::Auto, 8, 0, Rounding::Stochastic),
        ] {
            let case = Case { buf, ..FULL };
            let mut l = make::<3, S2<5, 3>>(&case, 5);
            l.momentum = momentum;
            for step in 0..12 {
                run(&mut l, &case, &Ctx::train(5, step), 70 + step as u64);
            }
        }
    }
    // The first update from the initial buffers, in closed form.
    let mut l = BatchNorm1d::<2, 4>::new(0);
    let mut x = Tensor::<S2<4, 2>>::zeros();
    x.set_f32(&[1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0])
        .unwrap();
    l.forward(&RefBackend, &Ctx::train(0, 0), &x).unwrap();
    // var = 1.25 and 125 (biased); unbiased * 4/3.
    assert_eq!(l.stats().var, [1.25, 125.0]);
    let want_v = [0.9 + 0.1 * (5.0 / 3.0), 0.9 + 0.1 * (500.0 / 3.0)];
    for c in 0..2 {
        let err = (l.running_var.v[c] as f64 - want_v[c]).abs();
        assert!(
            err < 4.0 * f32::EPSILON as f64 * want_v[c],
            "running_var[{c}]"
        );
    }
}

#[test]
fn eval_mode_uses_running_statistics_and_is_repeatable() {
    let q = cfg(Method::Auto, 8, 0, Rounding::NearestEven);
    for case in [
        FULL,
        Case {
            x_fmt: Some(Format::new(8, 2).unwrap()),
            param: q,
            out: q,
            grad: q,
            out_grad: q,
            buf: q,
        },
    ] {
        let mut l = make::<2, S4<2, 2, 3, 2>>(&case, 3);
        for step in 0..4 {
            run(&mut l, &case, &Ctx::train(3, step), step as u64);
        }
        let x = input::<S4<2, 2, 3, 2>>(&case, 77);
        l.forward(&RefBackend, &Ctx::eval(3), &x).unwrap();
        let first = l.output().v;
        run(&mut l, &case, &Ctx::eval(3), 77);
        assert_eq!(l.output().v, first, "eval is repeatable");
    }
    // Hand-set running statistics (not yet quantized) are used as given.
    let mut l = BatchNorm1d::<3, 5>::new(2);
    l.running_mean.v = [0.5, -1.0, 2.0];
    l.running_var.v = [0.25, 4.0, 1.5];
    run(&mut l, &FULL, &Ctx::eval(0), 9);
}

#[test]
fn finite_differences_confirm_reference_gradients() {
    for training in [true, false] {
        for seed in 0..3 {
            let d = Dims { b: 3, c: 2, sp: 4 };
            let len = d.b * d.c * d.sp;
            let x = data(seed, 1, len, 1.5, 0.3);
            let gamma = data(seed, 2, 2, 0.5, 1.0);
            let beta = data(seed, 3, 2, 0.5, 0.0);
            let dy = data(seed, 4, len, 1.0, 0.0);
            let (rm, rv) = ([0.2f32, -0.1], [0.7f32, 1.3]);
            let running = (!training).then_some((&rm[..], &rv[..]));
            let r = reference(d, &x, None, &gamma, &beta, 1e-5, running, &dy);
            let p: Vec<f64> = x
                .iter()
                .chain(&gamma)
                .chain(&beta)
                .map(|&v| v as f64)
                .collect();
            let grad: Vec<f64> =
                r.dx.iter()
                    .chain(&r.dgamma)
                    .chain(&r.dbeta)
                    .map(|e| e.v)
                    .collect();
            let (rm64, rv64) = (
                [0.2f32 as f64, -0.1f32 as f64],
                [0.7f32 as f64, 1.3f32 as f64],
            );
            let loss = |p: &[f64]| {
                let (xs, rest) = p.split_at(len);
                let (g, b) = rest.split_at(2);
                let run64 = (!training).then_some((&rm64[..], &rv64[..]));
                let y = bn_f64(d, xs, g, b, 1e-5f32 as f64, run64);
                y.iter().zip(&dy).map(|(y, &g)| y * g as f64).sum::<f64>()
            };
            check_fd("bn", &p, &grad, 1e-5, 1e-6, loss);
        }
    }
}

#[test]
fn errors_leave_running_statistics_unchanged() {
    // One value per channel: no batch statistics in training, fine in eval.
    let mut l = BatchNorm1d::<2, 1>::new(0);
    let x = Tensor::<S2<1, 2>>::zeros();
    assert!(matches!(
        l.forward(&RefBackend, &Ctx::train(0, 0), &x),
        Err(Error::Shape { .. })
    ));
    assert_eq!(l.running_var.v, [1.0, 1.0]);
    l.forward(&RefBackend, &Ctx::eval(0), &x).unwrap();
    // A NaN input is refused before anything changes.
    let mut l = BatchNorm2d::<2, 3, 2, 2>::new(0);
    let mut x = Tensor::<S4<2, 2, 3, 2>>::zeros();
    x.flat_mut()[7] = f32::NAN;
    assert_eq!(
        l.forward(&RefBackend, &Ctx::train(0, 0), &x).err(),
        Some(Error::NonFinite { index: 7 })
    );
    assert_eq!((l.running_mean.v, l.running_var.v), ([0.0; 2], [1.0; 2]));
}

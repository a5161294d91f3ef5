//! Linear: forward and backward against a float64 reference evaluated on the
//! dequantized values the layer used.
//!
//! Bounds (documented in `Linear`'s arithmetic):
//! * integer path, output or gradient at full precision: the exact `i64`
//!   sum converted to f32, error <= |ref| * 2^-24;
//! * f32 path: an f32 dot product, error <= gamma_{k+2} * sum |terms|;
//! * quantized output or gradient: half a step for nearest rounding, one
//!   step for floor and stochastic rounding; saturated elements are the
//!   clamp of the reference (checked separately).

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use fixnn::backend::RefBackend;
use fixnn::layers::{Layer, Linear};
use fixnn::quant::{Format, Method};
use fixnn::tensor::{Ctx, Tensor, S2};
use fixnn::{QuantConfig, Rounding};

const B: usize = 3;
const IN: usize = 7;
const OUT: usize = 5;

struct Refs {
    y: Vec<f64>,
    y_abs: Vec<f64>,
    dw: Vec<f64>,
    dw_abs: Vec<f64>,
    db: Vec<f64>,
    db_abs: Vec<f64>,
    dx: Vec<f64>,
    dx_abs: Vec<f64>,
}

fn reference(x: &[f32], w: &[f32], b: &[f32], dy: &[f32]) -> Refs {
    let mut r = Refs {
        y: vec![0.0; B * OUT],
        y_abs: vec![0.0; B * OUT],
        dw: vec![0.0; OUT * IN],
        dw_abs: vec![0.0; OUT * IN],
        db: vec![0.0; OUT],
        db_abs: vec![0.0; OUT],
        dx: vec![0.0; B * IN],
        dx_abs: vec![0.0; B * IN],
    };
    for bb in 0..B {
        for o in 0..OUT {
            let mut s = b[o] as f64;
            let mut a = (b[o] as f64).abs();
            for i in 0..IN {
                let t = x[bb * IN + i] as f64 * w[o * IN + i] as f64;
                s += t;
                a += t.abs();
            }
            r.y[bb * OUT + o] = s;
            r.y_abs[bb * OUT + o] = a;
            let g = dy[bb * OUT + o] as f64;
            r.db[o] += g;
            r.db_abs[o] += g.abs();
            for i in 0..IN {
                let t = g * x[bb * IN + i] as f64;
                r.dw[o * IN + i] += t;
                r.dw_abs[o * IN + i] += t.abs();
                let u = g * w[o * IN + i] as f64;
                r.dx[bb * IN + i] += u;
                r.dx_abs[bb * IN + i] += u.abs();
            }
        }
    }
    r
}

/// Tolerances for a result computed with `k` products, produced either in
/// integers (`int`), in f32, or quantized to `fmt` with `rounding`.
fn tol(
    want: &[f64],
    abs: &[f64],
    k: usize,
    int: bool,
    fmt: Option<Format>,
    rounding: Rounding,
) -> Vec<f64> {
    want.iter()
        .zip(abs)
        .map(|(&w, &a)| match fmt {
            Some(f) => {
                let step = f.step() as f64;
                let q = if rounding == Rounding::NearestEven || rounding == Rounding::NearestAway {
                    step / 2.0
                } else {
                    step
                };
                // Integer path: exact before rounding; f32 path adds its own error.
                q + if int { 0.0 } else { f32_dot_bound(k, a) }
            }
            None if int => w.abs() * U32 + f64::MIN_POSITIVE,
            None => f32_dot_bound(k, a),
        })
        .collect()
}

/// Clamp what the reference says to the format's range where the layer saturated.
fn clamp_to(v: &[f64], fmt: Option<Format>) -> Vec<f64> {
    match fmt {
        Some(f) => {
            let (lo, hi) = (f.to_f32(f.min_code()) as f64, f.to_f32(f.max_code()) as f64);
            v.iter().map(|&x| x.clamp(lo, hi)).collect()
        }
        None => v.to_vec(),
    }
}

struct Case {
    x_fmt: Option<Format>,
    param: QuantConfig,
    out: QuantConfig,
    grad: QuantConfig,
    out_grad: QuantConfig,
}

fn run(case: &Case, seed: u64) {
    let bk = RefBackend;
    let ctx = Ctx::train(seed, 1);
    let mut l = Linear::<IN, OUT, B>::new(1);
    l.weight.init_uniform(seed, 0.6);
    l.bias.init_uniform(seed, 0.6);
    l.weight.quant.cfg = case.param;
    l.bias.quant.cfg = case.param;
    l.weight.quant.grad_cfg = case.grad;
    l.bias.quant.grad_cfg = case.grad;
    l.out.quant.cfg = case.out;
    l.out.quant.grad_cfg = case.out_grad;

    let mut x = Tensor::<S2<B, IN>>::zeros();
    let xv = uniform(seed, 100, B * IN, 1.5);
    x.flat_mut().copy_from_slice(&xv);
    if let Some(f) = case.x_fmt {
        for v in x.flat_mut() {
            let (q, _) = fixnn::quant::requantize_one(
                fixnn::quant::decompose_f32(*v).unwrap().0,
                fixnn::quant::decompose_f32(*v).unwrap().1,
                f,
                Rounding::NearestEven,
                0,
            );
            *v = f.to_f32(q);
        }
        x.fmt = Some(f);
    }
    l.forward(&bk, &ctx, &x).unwrap();

    let mut dy = Tensor::<S2<B, OUT>>::zeros();
    dy.flat_mut()
        .copy_from_slice(&uniform(seed, 200, B * OUT, 0.8));
    l.backward(&bk, &ctx, &x, &mut dy, true).unwrap();
    let dx = l.input_grad();

    let r = reference(x.flat(), l.weight.q.flat(), l.bias.q.flat(), dy.flat());
    let int_fwd = x.fmt.is_some() && l.weight.q.fmt.is_some() && l.bias.q.fmt.is_some();
    let int_dw = dy.fmt.is_some() && x.fmt.is_some();
    let int_dx = dy.fmt.is_some() && l.weight.q.fmt.is_some();

    // Forward: saturated outputs are the clamp of the reference.
    let out_fmt = l.out.t.fmt;
    let y_want = clamp_to(&r.y, out_fmt);
    let mut y_tol = tol(&r.y, &r.y_abs, IN + 1, int_fwd, out_fmt, case.out.rounding);
    if out_fmt.is_some() {
        // With a quantized output the f32 sum before quantization may also round.
        for (t, &a) in y_tol.iter_mut().zip(&r.y_abs) {
            *t += if int_fwd {
                0.0
            } else {
                f32_dot_bound(IN + 1, a)
            };
        }
    }
    assert_within("y", l.out.t.flat(), &y_want, &y_tol);
    for (i, &s) in l.out.sat.as_flattened().iter().enumerate() {
        if let Some(f) = out_fmt {
            let hi = f.to_f32(f.max_code()) as f64 + f.step() as f64;
            let lo = f.to_f32(f.min_code()) as f64 - f.step() as f64;
            if r.y[i] > hi || r.y[i] < lo {
                assert!(
                    s,
                    "y[{i}] = {} is far outside the range but not marked saturated",
                    r.y[i]
                );
            }
        } else {
            assert!(!s);
        }
    }

    // Backward: the weight gradient is zero where the weight saturated.
    let g_fmt = l.weight.grad.fmt;
    let mut dw_want = clamp_to(&r.dw, g_fmt);
    for (w, &s) in dw_want.iter_mut().zip(l.weight.sat.as_flattened()) {
        if s {
            *w = 0.0;
        }
    }
    let dw_tol = tol(&r.dw, &r.dw_abs, B, int_dw, g_fmt, case.grad.rounding);
    assert_within("dw", l.weight.grad.flat(), &dw_want, &dw_tol);
    let db_want = clamp_to(&r.db, l.bias.grad.fmt);
    let db_tol = tol(
        &r.db,
        &r.db_abs,
        B,
        dy.fmt.is_some(),
        l.bias.grad.fmt,
        case.grad.rounding,
    );
    let mut db_want_masked = db_want.clone();
    for (w, &s) in db_want_masked.iter_mut().zip(l.bias.sat.iter()) {
        if s {
            *w = 0.0;
        }
    }
    assert_within("db", l.bias.grad.flat(), &db_want_masked, &db_tol);
    let dx_tol = tol(&r.dx, &r.dx_abs, OUT, int_dx, None, Rounding::NearestEven);
    assert_within("dx", dx.flat(), &r.dx, &dx_tol);
    assert_eq!(dx.fmt, None, "input gradients leave at full precision");
}

fn cfg(method: Method, bits: u8, scale: i8, rounding: Rounding) -> QuantConfig {
    QuantConfig {
        method,
        bits,
        scale,
        rounding,
        ..QuantConfig::NONE
    }
}

#[test]
fn full_precision_agrees_to_f32_precision() {
    for seed in 0..20 {
        run(
            &Case {
                x_fmt: None,
                param: QuantConfig::NONE,
                out: QuantConfig::NONE,
                grad: QuantConfig::NONE,
                out_grad: QuantConfig::NONE,
            },
            seed,
        );
    }
}

#[test]
fn integer_forward_is_exact_before_conversion() {
    for seed in 0..20 {
        run(
            &Case {
                x_fmt: Some(Format::new(8, 1).unwrap()),
                param: cfg(Method::Auto, 8, 0, Rounding::NearestEven),
                out: QuantConfig::NONE,
                grad: QuantConfig::NONE,
                out_grad: QuantConfig::NONE,
            },
            seed,
        );
    }
}

#[test]
fn quantized_everything_within_half_a_step() {
    for rounding in [
        Rounding::NearestEven,
        Rounding::NearestAway,
        Rounding::Floor,
        Rounding::Stochastic,
    ] {
        for bits in [2u8, 4, 8, 12, 16] {
            for seed in 0..8 {
                run(
                    &Case {
                        x_fmt: Some(Format::new(bits, 1).unwrap()),
                        param: cfg(Method::Auto, bits, 0, rounding),
                        out: cfg(Method::Auto, bits, 0, rounding),
                        grad: cfg(Method::Auto, bits, 0, rounding),
                        out_grad: cfg(Method::Auto, bits, 0, rounding),
                    },
                    seed,
                );
            }
        }
    }
}

#[test]
fn fixed_formats_saturate_and_mask() {
    // Fixed scale -2 (range [-0.25, 0.25)): most weights and outputs saturate.
    for seed in 0..10 {
        run(
            &Case {
                x_fmt: Some(Format::new(6, 0).unwrap()),
                param: cfg(Method::Fixed, 6, -2, Rounding::NearestEven),
                out: cfg(Method::Fixed, 6, -1, Rounding::NearestEven),
                grad: cfg(Method::Fixed, 8, -3, Rounding::NearestEven),
                out_grad: cfg(Method::Fixed, 8, -1, Rounding::Floor),
            },
            seed,
        );
    }
}

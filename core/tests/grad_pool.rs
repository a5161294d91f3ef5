//! MaxPool2d and AvgPool2d: forward and backward against a float64
//! reference evaluated on the values the layer used, over several windows
//! (overlapping, padded, rectangular).
//!
//! Bounds (documented in the layers), `d = KH * KW`:
//! * MaxPool forward: exact (the output is the first maximum of the window,
//!   bit for bit); with a quantizing output config, half a step for nearest
//!   rounding and one step for floor and stochastic. Backward: exact when
//!   `dy` is quantized, else an f32 sum, error <= gamma_{n+2} * sum |dy|.
//! * AvgPool, quantized input and output: the exact rational `sum / d`
//!   rounded with the config's rounding: the code is *equal* to the f64
//!   reference's nearest / floor (stochastic: floor or ceiling), saturated
//!   elements are the clamp; `Auto` with `Max` picks `ceil(log2 max |y|)`.
//! * AvgPool, quantized input, `None` output: error <= 2 u |ref|.
//! * AvgPool, full-precision input: error <= gamma_{d+2} * sum |x| / d
//!   (plus the output's rounding if quantized).
//! * AvgPool backward: error <= gamma_{d+2} * sum |dy| / d.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use fixnn::backend::RefBackend;
use fixnn::layers::{AvgPool2d, Layer, MaxPool2d};
use fixnn::quant::{Format, Method};
use fixnn::tensor::{Ctx, Tensor, S4};
use fixnn::{Error, QuantConfig, Rounding};

#[derive(Clone, Copy)]
struct Geo {
    n: usize, // B * C planes
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
}

impl Geo {
    /// In-plane indices of the window of `(oy, ox)` inside the input, row-major.
    fn window(&self, oy: usize, ox: usize) -> Vec<usize> {
        let mut v = Vec::new();
        for ky in 0..self.kernel.0 {
            for kx in 0..self.kernel.1 {
                let iy = (oy * self.stride.0 + ky).checked_sub(self.pad.0);
                let ix = (ox * self.stride.1 + kx).checked_sub(self.pad.1);
                if let (Some(iy), Some(ix)) = (iy, ix) {
                    if iy < self.h && ix < self.w {
                        v.push(iy * self.w + ix);
                    }
                }
            }
        }
        v
    }

    fn div(&self) -> f64 {
        (self.kernel.0 * self.kernel.1) as f64
    }

    /// `(plane, output index, window)` of every output, row-major.
    fn outputs(&self) -> Vec<(usize, usize, Vec<usize>)> {
        let mut v = Vec::new();
        for p in 0..self.n {
            for oy in 0..self.oh {
                for ox in 0..self.ow {
                    let o = (p * self.oh + oy) * self.ow + ox;
                    v.push((p, o, self.window(oy, ox)));
                }
            }
        }
        v
    }
}

#[derive(Clone, Copy)]
struct Case {
    x_fmt: Option<Format>,
    out: QuantConfig,
    out_grad: QuantConfig,
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

const ROUNDINGS: [Rounding; 4] = [
    Rounding::NearestEven,
    Rounding::NearestAway,
    Rounding::Floor,
    Rounding::Stochastic,
];

fn cases() -> Vec<Case> {
    let none = QuantConfig::NONE;
    let mut v = vec![
        Case {
            x_fmt: None,
            out: none,
            out_grad: none,
        },
        Case {
            x_fmt: Some(Format::new(8, 1).unwrap()),
            out: none,
            out_grad: none,
        },
        Case {
            x_fmt: None,
            out: cfg(Method::Auto, 8, 0, Rounding::NearestEven),
            out_grad: cfg(Method::Auto, 8, 0, Rounding::Stochastic),
        },
        // Fixed formats that saturate most outputs and gradients.
        Case {
            x_fmt: Some(Format::new(6, 1).unwrap()),
            out: cfg(Method::Fixed, 6, -2, Rounding::NearestEven),
            out_grad: cfg(Method::Fixed, 6, -3, Rounding::Floor),
        },
        Case {
            x_fmt: Some(Format::new(6, 1).unwrap()),
            out: cfg(Method::Fixed, 4, -1, Rounding::Stochastic),
            out_grad: none,
        },
    ];
    for r in ROUNDINGS {
        for bits in [2u8, 4, 8, 12, 16] {
            let c = cfg(Method::Auto, bits, 0, r);
            v.push(Case {
                x_fmt: Some(Format::new(bits, 1).unwrap()),
                out: c,
                out_grad: c,
            });
        }
    }
    v
}

fn rounding_tol(fmt: Option<Format>, r: Rounding) -> f64 {
    match fmt {
        Some(f) if matches!(r, Rounding::NearestEven | Rounding::NearestAway) => {
            f.step() as f64 / 2.0
        }
        Some(f) => f.step() as f64,
        None => 0.0,
    }
}

fn clamp(v: f64, fmt: Option<Format>) -> f64 {
    match fmt {
        Some(f) => v.clamp(f.to_f32(f.min_code()) as f64, f.to_f32(f.max_code()) as f64),
        None => v,
    }
}

fn quantize_slice(v: &mut [f32], f: Format) {
    for x in v.iter_mut() {
        let (m, e) = fixnn::quant::decompose_f32(*x).unwrap();
        *x = f.to_f32(fixnn::quant::requantize_one(m, e, f, Rounding::NearestEven, 0).0);
    }
}

fn input(seed: u64, case: &Case, n: usize) -> (Vec<f32>, Option<Format>) {
    let mut x = uniform(seed, 100, n, 1.5);
    if let Some(f) = case.x_fmt {
        quantize_slice(&mut x, f);
    }
    (x, case.x_fmt)
}

fn run_max<
    const C: usize,
    const H: usize,
    const W: usize,
    const OH: usize,
    const OW: usize,
    const B: usize,
>(
    case: &Case,
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    seed: u64,
) {
    let g = Geo {
        n: B * C,
        h: H,
        w: W,
        oh: OH,
        ow: OW,
        kernel,
        stride,
        pad,
    };
    let (bk, ctx) = (RefBackend, Ctx::train(seed, 2));
    let mut l = MaxPool2d::<C, H, W, OH, OW, B>::new(5, kernel, stride, pad).unwrap();
    assert_eq!((l.kernel(), l.stride(), l.pad()), (kernel, stride, pad));
    l.out.quant.cfg = case.out;
    l.out.quant.grad_cfg = case.out_grad;
    let mut x = Tensor::<S4<B, C, H, W>>::zeros();
    let (xv, xf) = input(seed, case, B * C * H * W);
    x.flat_mut().copy_from_slice(&xv);
    x.fmt = xf;
    l.forward(&bk, &ctx, &x).unwrap();

    let mut dy = Tensor::<S4<B, C, OH, OW>>::zeros();
    dy.flat_mut()
        .copy_from_slice(&uniform(seed, 200, B * C * OH * OW, 0.8));
    l.backward(&bk, &ctx, &x, &mut dy, true).unwrap();
    let dx = l.input_grad();

    let (xs, ys, gs, plane) = (x.flat(), l.out.t.flat(), dy.flat(), H * W);
    let out_fmt = l.out.t.fmt;
    if case.out.method == Method::None {
        assert_eq!(out_fmt, x.fmt, "max pooling keeps the input format");
    }
    let mut dx_ref = vec![0.0f64; xs.len()];
    let mut dx_abs = vec![0.0f64; xs.len()];
    let mut count = vec![0usize; xs.len()];
    for (p, o, win) in g.outputs() {
        // First maximum in row-major window order.
        let mut arg = win[0];
        for &i in &win[1..] {
            if xs[p * plane + i] > xs[p * plane + arg] {
                arg = i;
            }
        }
        let want = xs[p * plane + arg];
        if case.out.method == Method::None {
            assert_eq!(ys[o].to_bits(), want.to_bits(), "y[{o}]");
        } else {
            let t = rounding_tol(out_fmt, case.out.rounding);
            assert_within("y", &ys[o..=o], &[clamp(want as f64, out_fmt)], &[t]);
        }
        let a = p * plane + arg;
        dx_ref[a] += gs[o] as f64;
        dx_abs[a] += (gs[o] as f64).abs();
        count[a] += 1;
    }
    let tol: Vec<f64> = if dy.fmt.is_some() {
        vec![0.0; xs.len()] // sums of a few codes are exact in f32
    } else {
        count
            .iter()
            .zip(&dx_abs)
            .map(|(&n, &a)| f32_dot_bound(n, a))
            .collect()
    };
    assert_within("dx", dx.flat(), &dx_ref, &tol);
    let overlap = kernel.0 > stride.0 || kernel.1 > stride.1;
    if dy.fmt.is_some() && !overlap {
        assert_eq!(dx.fmt, dy.fmt, "dx keeps dy's format");
    }
    if dy.fmt.is_none() {
        assert_eq!(dx.fmt, None);
    }
    if let Some(f) = dx.fmt {
        for &v in dx.flat() {
            let q = f.code_of(v);
            assert!(f.to_f32(q) == v && (f.min_code()..=f.max_code()).contains(&q));
        }
    }
}

/// Smallest scale `n` with `|sum| <= d 2^n` for every window sum (exact in f64).
fn max_scale(sums: &[f64], d: f64) -> i8 {
    let m = sums.iter().fold(0.0f64, |a, &s| a.max(s.abs()));
    if m == 0.0 {
        return -16;
    }
    (-128..=127).find(|&n| m <= d * 2f64.powi(n)).unwrap_or(127) as i8
}

fn run_avg<
    const C: usize,
    const H: usize,
    const W: usize,
    const OH: usize,
    const OW: usize,
    const B: usize,
>(
    case: &Case,
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    seed: u64,
) {
    let g = Geo {
        n: B * C,
        h: H,
        w: W,
        oh: OH,
        ow: OW,
        kernel,
        stride,
        pad,
    };
    let (bk, ctx) = (RefBackend, Ctx::train(seed, 2));
    let mut l = AvgPool2d::<C, H, W, OH, OW, B>::new(6, kernel, stride, pad).unwrap();
    assert_eq!((l.kernel(), l.stride(), l.pad()), (kernel, stride, pad));
    l.out.quant.cfg = case.out;
    l.out.quant.grad_cfg = case.out_grad;
    let mut x = Tensor::<S4<B, C, H, W>>::zeros();
    let (xv, xf) = input(seed, case, B * C * H * W);
    x.flat_mut().copy_from_slice(&xv);
    x.fmt = xf;
    l.forward(&bk, &ctx, &x).unwrap();

    let mut dy = Tensor::<S4<B, C, OH, OW>>::zeros();
    dy.flat_mut()
        .copy_from_slice(&uniform(seed, 200, B * C * OH * OW, 0.8));
    l.backward(&bk, &ctx, &x, &mut dy, true).unwrap();
    let dx = l.input_grad();
    assert_eq!(dx.fmt, None, "input gradients leave at full precision");

    let (xs, ys, gs, plane, d) = (x.flat(), l.out.t.flat(), dy.flat(), H * W, g.div());
    let out_fmt = l.out.t.fmt;
    let outs = g.outputs();
    let sums: Vec<f64> = outs
        .iter()
        .map(|(p, _, win)| win.iter().map(|&i| xs[p * plane + i] as f64).sum())
        .collect();
    if case.out.method == Method::Auto && x.fmt.is_some() {
        let f = out_fmt.unwrap();
        assert_eq!(
            f.scale(),
            max_scale(&sums, d),
            "Auto/Max scale of the exact averages"
        );
    }
    let mut sat = 0;
    for ((p, o, win), &s) in outs.iter().zip(&sums) {
        let want = s / d;
        let abs: f64 = win
            .iter()
            .map(|&i| (xs[p * plane + i] as f64).abs())
            .sum::<f64>()
            / d;
        let got = ys[*o];
        match (x.fmt, out_fmt) {
            (Some(_), Some(f)) => {
                // Exact rational rounding: compare codes.
                let steps = want / f.step() as f64;
                let (lo, hi) = (f.min_code() as f64, f.max_code() as f64);
                let q = f.code_of(got) as f64;
                assert_eq!(f.to_f32(q as i32), got);
                let ok = match case.out.rounding {
                    Rounding::NearestEven => q == steps.round_ties_even().clamp(lo, hi),
                    Rounding::NearestAway | Rounding::Tflite => q == steps.round().clamp(lo, hi),
                    Rounding::Floor => q == steps.floor().clamp(lo, hi),
                    Rounding::Stochastic => {
                        q == steps.floor().clamp(lo, hi) || q == steps.ceil().clamp(lo, hi)
                    }
                };
                assert!(
                    ok,
                    "y[{o}]: code {q} for {steps} steps ({:?})",
                    case.out.rounding
                );
                let sat_here = l.out.sat.as_flattened().as_flattened().as_flattened()[*o];
                sat += sat_here as u64;
                if steps > hi + 1.0 || steps < lo - 1.0 {
                    assert!(sat_here, "y[{o}] far outside the range, not saturated");
                }
            }
            (Some(_), None) => {
                assert_within(
                    "y",
                    &[got],
                    &[want],
                    &[want.abs() * 2.0001 * U32 + f64::MIN_POSITIVE],
                );
            }
            (None, f) => {
                let t = f32_dot_bound(win.len(), abs) + rounding_tol(f, case.out.rounding);
                assert_within("y", &[got], &[clamp(want, f)], &[t]);
            }
        }
    }
    if x.fmt.is_some() && out_fmt.is_some() {
        let n = (B * C * OH * OW) as u64;
        assert_eq!(
            (l.out.quant.stats.data, l.out.quant.stats.data_total),
            (sat, n)
        );
    }

    let mut dx_ref = vec![0.0f64; xs.len()];
    let mut dx_abs = vec![0.0f64; xs.len()];
    for (p, o, win) in &outs {
        for &i in win {
            dx_ref[p * plane + i] += gs[*o] as f64 / d;
            dx_abs[p * plane + i] += (gs[*o] as f64 / d).abs();
        }
    }
    let n = kernel.0 * kernel.1;
    let tol: Vec<f64> = dx_abs.iter().map(|&a| f32_dot_bound(n, a)).collect();
    assert_within("dx", dx.flat(), &dx_ref, &tol);
}

macro_rules! geometries {
    ($run:ident, $case:expr, $seed:expr) => {{
        let (c, s) = ($case, $seed);
        // 2x2, stride 2 (d = 4, no overlap).
        $run::<2, 6, 4, 3, 2, 2>(c, (2, 2), (2, 2), (0, 0), s);
        // 3x3, stride 2, padding 1 (d = 9, overlapping, padded).
        $run::<2, 7, 6, 4, 3, 2>(c, (3, 3), (2, 2), (1, 1), s);
        // 3x2, stride (1, 2), padding (1, 1) (d = 6).
        $run::<3, 5, 6, 5, 4, 1>(c, (3, 2), (1, 2), (1, 1), s);
        // 3x3, stride 1, padding 1: every position in up to 9 windows.
        $run::<1, 4, 5, 4, 5, 2>(c, (3, 3), (1, 1), (1, 1), s);
        // 1x1, stride 1: the identity.
        $run::<2, 3, 3, 3, 3, 1>(c, (1, 1), (1, 1), (0, 0), s);
    }};
}

#[test]
fn max_pool_matches_reference() {
    for case in cases() {
        for seed in 0..4 {
            geometries!(run_max, &case, seed);
        }
    }
}

#[test]
fn avg_pool_matches_reference() {
    for case in cases() {
        for seed in 0..4 {
            geometries!(run_avg, &case, seed);
        }
    }
}

#[test]
fn avg_pool_eval_uses_the_stored_scale() {
    let mut l = AvgPool2d::<1, 4, 4, 2, 2, 1>::new(0, (2, 2), (2, 2), (0, 0)).unwrap();
    l.out.quant.cfg = cfg(Method::Auto, 8, 3, Rounding::NearestEven);
    let mut x = Tensor::<S4<1, 1, 4, 4>>::zeros();
    x.flat_mut().copy_from_slice(&uniform(1, 1, 16, 0.5));
    x.fmt = Some(Format::new(8, 0).unwrap());
    quantize_slice(x.flat_mut(), Format::new(8, 0).unwrap());
    l.forward(&RefBackend, &Ctx::eval(1), &x).unwrap();
    assert_eq!(l.out.t.fmt.map(|f| f.scale()), Some(3));
    assert_eq!(l.out.quant.cfg.scale, 3);
    l.forward(&RefBackend, &Ctx::train(1, 0), &x).unwrap();
    assert!(
        l.out.quant.cfg.scale < 0,
        "|y| < 0.5: Auto chose a new scale"
    );
}

#[test]
fn bad_geometry_is_an_error() {
    let shape = |r: Result<(), Error>| matches!(r, Err(Error::Shape { .. }));
    type M = MaxPool2d<2, 6, 4, 3, 2, 2>;
    type A = AvgPool2d<2, 6, 4, 3, 2, 2>;
    for (k, s, p) in [
        ((2, 2), (2, 2), (0, 0)), // valid
        ((2, 2), (1, 1), (0, 0)), // output 5x3, not 3x2
        ((3, 2), (2, 2), (0, 0)), // output 2x2
        ((2, 2), (2, 2), (2, 0)), // padding above half the kernel
        ((0, 2), (2, 2), (0, 0)), // zero kernel
        ((2, 2), (0, 2), (0, 0)), // zero stride
        ((9, 2), (2, 2), (0, 0)), // kernel larger than the input
        ((usize::MAX, 2), (2, 2), (usize::MAX / 2, 0)),
        ((usize::MAX, usize::MAX), (1, 1), (0, 0)),
    ] {
        let valid = (k, s, p) == ((2, 2), (2, 2), (0, 0));
        assert_eq!(
            shape(M::new(0, k, s, p).map(|_| ())),
            !valid,
            "max {k:?} {s:?} {p:?}"
        );
        assert_eq!(
            shape(A::new(0, k, s, p).map(|_| ())),
            !valid,
            "avg {k:?} {s:?} {p:?}"
        );
    }
    // Empty input planes are refused (a window would cover only padding).
    assert!(shape(
        MaxPool2d::<1, 0, 4, 1, 2, 1>::new(0, (2, 2), (2, 2), (1, 0)).map(|_| ())
    ));
}

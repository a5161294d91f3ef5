//! Conv2d: forward and backward against a float64 reference evaluated on the
//! dequantized values the layer used, over several geometries (stride,
//! padding, dilation, groups, depthwise).
//!
//! Bounds (documented in `Conv2d`'s arithmetic), with `K = CPG * KH * KW`
//! products per output, `B * OH * OW` per weight or bias gradient and
//! `(COUT / groups) * KH * KW` per input gradient:
//! * integer path, output or gradient at full precision: the exact `i64`
//!   sum converted to f32, error <= |ref| * 2^-24;
//! * f32 path: an f32 dot product, error <= gamma_{k+2} * sum |terms|;
//! * quantized output or gradient: half a step for nearest rounding, one
//!   step for floor and stochastic rounding (plus the f32 bound on the f32
//!   path); saturated elements are the clamp of the reference.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use fixnn::backend::RefBackend;
use fixnn::layers::{Conv2d, Layer};
use fixnn::quant::{Format, Method};
use fixnn::tensor::{Ctx, Tensor, S4};
use fixnn::{Error, QuantConfig, Rounding};

/// Runtime description of the geometry, for the reference.
#[derive(Clone, Copy)]
struct Geo {
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    cpg: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
}

impl Geo {
    fn input(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (oy * self.stride.0 + ky * self.dil.0).checked_sub(self.pad.0)?;
        let ix = (ox * self.stride.1 + kx * self.dil.1).checked_sub(self.pad.1)?;
        (iy < self.h && ix < self.w).then_some((iy, ix))
    }
}

#[derive(Default)]
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

fn reference(g: Geo, x: &[f32], w: &[f32], bias: Option<&[f32]>, dy: &[f32]) -> Refs {
    let opg = g.cout / (g.cin / g.cpg);
    let mut r = Refs {
        y: vec![0.0; g.b * g.cout * g.oh * g.ow],
        y_abs: vec![0.0; g.b * g.cout * g.oh * g.ow],
        dw: vec![0.0; w.len()],
        dw_abs: vec![0.0; w.len()],
        db: vec![0.0; g.cout],
        db_abs: vec![0.0; g.cout],
        dx: vec![0.0; x.len()],
        dx_abs: vec![0.0; x.len()],
    };
    for b in 0..g.b {
        for co in 0..g.cout {
            let c0 = (co / opg) * g.cpg;
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let yi = ((b * g.cout + co) * g.oh + oy) * g.ow + ox;
                    let bv = bias.map_or(0.0, |bs| bs[co] as f64);
                    let (mut s, mut a) = (bv, bv.abs());
                    let gy = dy[yi] as f64;
                    r.db[co] += gy;
                    r.db_abs[co] += gy.abs();
                    for ci in 0..g.cpg {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let Some((iy, ix)) = g.input(oy, ox, ky, kx) else {
                                    continue;
                                };
                                let xi = ((b * g.cin + c0 + ci) * g.h + iy) * g.w + ix;
                                let wi = ((co * g.cpg + ci) * g.kh + ky) * g.kw + kx;
                                let t = x[xi] as f64 * w[wi] as f64;
                                s += t;
                                a += t.abs();
                                let tw = gy * x[xi] as f64;
                                r.dw[wi] += tw;
                                r.dw_abs[wi] += tw.abs();
                                let tx = gy * w[wi] as f64;
                                r.dx[xi] += tx;
                                r.dx_abs[xi] += tx.abs();
                            }
                        }
                    }
                    r.y[yi] = s;
                    r.y_abs[yi] = a;
                }
            }
        }
    }
    r
}

/// Tolerances for results of `k` products, computed in integers (`int`) or
/// in f32, then quantized to `fmt` with `rounding` if given.
fn tol(
    abs: &[f64],
    want: &[f64],
    k: usize,
    int: bool,
    fmt: Option<Format>,
    r: Rounding,
) -> Vec<f64> {
    want.iter()
        .zip(abs)
        .map(|(&w, &a)| {
            let float = if int { 0.0 } else { f32_dot_bound(k, a) };
            match fmt {
                Some(f) => {
                    let step = f.step() as f64;
                    let nearest = matches!(r, Rounding::NearestEven | Rounding::NearestAway);
                    (if nearest { step / 2.0 } else { step }) + float
                }
                None if int => w.abs() * U32 + f64::MIN_POSITIVE,
                None => float,
            }
        })
        .collect()
}

/// The reference clamped to the format's range (what saturation gives).
fn clamp_to(v: &[f64], fmt: Option<Format>) -> Vec<f64> {
    match fmt {
        Some(f) => {
            let (lo, hi) = (f.to_f32(f.min_code()) as f64, f.to_f32(f.max_code()) as f64);
            v.iter().map(|&x| x.clamp(lo, hi)).collect()
        }
        None => v.to_vec(),
    }
}

fn masked(mut v: Vec<f64>, sat: &[bool]) -> Vec<f64> {
    for (x, &s) in v.iter_mut().zip(sat) {
        if s {
            *x = 0.0;
        }
    }
    v
}

#[derive(Clone, Copy)]
struct Case {
    x_fmt: Option<Format>,
    param: QuantConfig,
    out: QuantConfig,
    grad: QuantConfig,
    out_grad: QuantConfig,
    use_bias: bool,
    /// Leave the bias at full precision whatever `param` says.
    fp_bias: bool,
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

fn quantize_input(v: &mut [f32], f: Format) {
    for x in v {
        let (m, e) = fixnn::quant::decompose_f32(*x).unwrap();
        let (q, _) = fixnn::quant::requantize_one(m, e, f, Rounding::NearestEven, 0);
        *x = f.to_f32(q);
    }
}

fn run<
    const CIN: usize,
    const COUT: usize,
    const CPG: usize,
    const KH: usize,
    const KW: usize,
    const H: usize,
    const W: usize,
    const OH: usize,
    const OW: usize,
    const B: usize,
>(
    case: &Case,
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
    seed: u64,
) {
    let g = Geo {
        b: B,
        cin: CIN,
        h: H,
        w: W,
        cout: COUT,
        cpg: CPG,
        kh: KH,
        kw: KW,
        oh: OH,
        ow: OW,
        stride,
        pad,
        dil,
    };
    let bk = RefBackend;
    let ctx = Ctx::train(seed, 1);
    let mut l = Conv2d::<CIN, COUT, CPG, KH, KW, H, W, OH, OW, B>::new(3, stride, pad, dil)
        .expect("valid geometry");
    assert_eq!(l.geom().groups, CIN / CPG);
    l.use_bias = case.use_bias;
    l.weight.init_uniform(seed, 0.6);
    l.bias.init_uniform(seed, 0.6);
    l.weight.quant.cfg = case.param;
    l.bias.quant.cfg = if case.fp_bias {
        QuantConfig::NONE
    } else {
        case.param
    };
    l.weight.quant.grad_cfg = case.grad;
    l.bias.quant.grad_cfg = case.grad;
    l.out.quant.cfg = case.out;
    l.out.quant.grad_cfg = case.out_grad;

    let mut x = Tensor::<S4<B, CIN, H, W>>::zeros();
    x.flat_mut()
        .copy_from_slice(&uniform(seed, 100, B * CIN * H * W, 1.5));
    if let Some(f) = case.x_fmt {
        quantize_input(x.flat_mut(), f);
        x.fmt = Some(f);
    }
    l.forward(&bk, &ctx, &x).unwrap();

    let mut dy = Tensor::<S4<B, COUT, OH, OW>>::zeros();
    dy.flat_mut()
        .copy_from_slice(&uniform(seed, 200, B * COUT * OH * OW, 0.8));
    l.backward(&bk, &ctx, &x, &mut dy, true).unwrap();
    let dx = l.input_grad();

    let bias = case.use_bias.then(|| l.bias.q.flat());
    let r = reference(g, x.flat(), l.weight.q.flat(), bias, dy.flat());
    let bias_int = !case.use_bias || l.bias.q.fmt.is_some();
    let int_fwd = x.fmt.is_some() && l.weight.q.fmt.is_some() && bias_int;
    let int_dw = dy.fmt.is_some() && x.fmt.is_some();
    let int_dx = dy.fmt.is_some() && l.weight.q.fmt.is_some();
    let k = CPG * KH * KW + 1;

    // Forward: saturated outputs are the clamp of the reference.
    let out_fmt = l.out.t.fmt;
    let y_want = clamp_to(&r.y, out_fmt);
    let y_tol = tol(&r.y_abs, &r.y, k, int_fwd, out_fmt, case.out.rounding);
    assert_within("y", l.out.t.flat(), &y_want, &y_tol);
    for (i, &s) in l
        .out
        .sat
        .as_flattened()
        .as_flattened()
        .as_flattened()
        .iter()
        .enumerate()
    {
        match out_fmt {
            Some(f) => {
                let hi = f.to_f32(f.max_code()) as f64 + f.step() as f64;
                let lo = f.to_f32(f.min_code()) as f64 - f.step() as f64;
                if r.y[i] > hi || r.y[i] < lo {
                    assert!(
                        s,
                        "y[{i}] = {} far outside the range, not saturated",
                        r.y[i]
                    );
                }
            }
            None => assert!(!s),
        }
    }

    // Backward: parameter gradients are zero where the parameter saturated.
    let wsat = l.weight.sat.as_flattened().as_flattened().as_flattened();
    let g_fmt = l.weight.grad.fmt;
    let dw_want = masked(clamp_to(&r.dw, g_fmt), wsat);
    let dw_tol = tol(
        &r.dw_abs,
        &r.dw,
        B * OH * OW,
        int_dw,
        g_fmt,
        case.grad.rounding,
    );
    assert_within("dw", l.weight.grad.flat(), &dw_want, &dw_tol);
    if case.use_bias {
        let b_fmt = l.bias.grad.fmt;
        let db_want = masked(clamp_to(&r.db, b_fmt), &l.bias.sat);
        let db_tol = tol(
            &r.db_abs,
            &r.db,
            B * OH * OW,
            dy.fmt.is_some(),
            b_fmt,
            case.grad.rounding,
        );
        assert_within("db", l.bias.grad.flat(), &db_want, &db_tol);
    }
    let opg = COUT / (CIN / CPG);
    let dx_tol = tol(
        &r.dx_abs,
        &r.dx,
        opg * KH * KW,
        int_dx,
        None,
        Rounding::NearestEven,
    );
    assert_within("dx", dx.flat(), &r.dx, &dx_tol);
    assert_eq!(dx.fmt, None, "input gradients leave at full precision");
}

const ROUNDINGS: [Rounding; 4] = [
    Rounding::NearestEven,
    Rounding::NearestAway,
    Rounding::Floor,
    Rounding::Stochastic,
];

fn full_precision() -> Case {
    Case {
        x_fmt: None,
        param: QuantConfig::NONE,
        out: QuantConfig::NONE,
        grad: QuantConfig::NONE,
        out_grad: QuantConfig::NONE,
        use_bias: true,
        fp_bias: false,
    }
}

fn integer() -> Case {
    Case {
        x_fmt: Some(Format::new(8, 1).unwrap()),
        param: cfg(Method::Auto, 8, 0, Rounding::NearestEven),
        ..full_precision()
    }
}

fn integer_fp_bias() -> Case {
    Case {
        fp_bias: true,
        ..integer()
    }
}

fn quantized(bits: u8, rounding: Rounding) -> Case {
    let c = cfg(Method::Auto, bits, 0, rounding);
    Case {
        x_fmt: Some(Format::new(bits, 1).unwrap()),
        param: c,
        out: c,
        grad: c,
        out_grad: c,
        use_bias: true,
        fp_bias: false,
    }
}

fn saturating() -> Case {
    // Fixed scale -2 (range [-0.25, 0.25)): most weights and outputs saturate.
    Case {
        x_fmt: Some(Format::new(6, 0).unwrap()),
        param: cfg(Method::Fixed, 6, -2, Rounding::NearestEven),
        out: cfg(Method::Fixed, 6, -1, Rounding::NearestEven),
        grad: cfg(Method::Fixed, 8, -3, Rounding::NearestEven),
        out_grad: cfg(Method::Fixed, 8, -1, Rounding::Floor),
        use_bias: true,
        fp_bias: false,
    }
}

/// A representative set of cases for each geometry.
fn geometry_cases() -> Vec<Case> {
    let mut v = vec![full_precision(), integer(), integer_fp_bias(), saturating()];
    for r in ROUNDINGS {
        v.push(quantized(8, r));
    }
    v.push(quantized(4, Rounding::Stochastic));
    v.push(Case {
        use_bias: false,
        ..quantized(12, Rounding::NearestEven)
    });
    v
}

// Base geometry: 3 -> 4 channels, 3x2 kernel, 6x5 input, 4x4 output.
fn base(case: &Case, seed: u64) {
    run::<3, 4, 3, 3, 2, 6, 5, 4, 4, 2>(case, (1, 1), (0, 0), (1, 1), seed);
}

#[test]
fn full_precision_agrees_to_f32_precision() {
    for seed in 0..20 {
        base(&full_precision(), seed);
    }
}

#[test]
fn integer_forward_is_exact_before_conversion() {
    for seed in 0..20 {
        base(&integer(), seed);
    }
}

#[test]
fn quantized_everything_within_half_a_step() {
    for rounding in ROUNDINGS {
        for bits in [2u8, 4, 8, 12, 16] {
            for seed in 0..6 {
                base(&quantized(bits, rounding), seed);
            }
        }
    }
}

#[test]
fn fixed_formats_saturate_and_mask() {
    for seed in 0..10 {
        base(&saturating(), seed);
    }
}

#[test]
fn full_precision_bias_with_integer_products() {
    // Weights quantized, bias at full precision: the sum is finished in f32.
    for seed in 0..10 {
        base(&integer_fp_bias(), seed);
    }
}

fn each_case(f: impl Fn(&Case, u64)) {
    for case in geometry_cases() {
        for seed in 0..3 {
            f(&case, seed);
        }
    }
}

#[test]
fn stride_2() {
    each_case(|c, s| run::<2, 3, 2, 3, 3, 7, 6, 3, 2, 2>(c, (2, 2), (0, 0), (1, 1), s));
}

#[test]
fn padding_1() {
    each_case(|c, s| run::<2, 3, 2, 3, 3, 5, 4, 5, 4, 2>(c, (1, 1), (1, 1), (1, 1), s));
}

#[test]
fn dilation_2() {
    each_case(|c, s| run::<2, 2, 2, 3, 3, 7, 7, 3, 3, 2>(c, (1, 1), (0, 0), (2, 2), s));
}

#[test]
fn groups_2() {
    each_case(|c, s| run::<4, 6, 2, 3, 3, 5, 5, 3, 3, 2>(c, (1, 1), (0, 0), (1, 1), s));
}

#[test]
fn depthwise() {
    // CPG = 1, groups = CIN = 4, two output channels per input channel.
    each_case(|c, s| run::<4, 8, 1, 3, 3, 4, 4, 4, 4, 2>(c, (1, 1), (1, 1), (1, 1), s));
}

#[test]
fn mixed_stride_padding_dilation_groups() {
    // OH = (6 + 2 - 3) / 2 + 1 = 3; OW = (5 + 4 - 3) / 1 + 1 = 7.
    each_case(|c, s| run::<4, 4, 2, 3, 2, 6, 5, 3, 7, 1>(c, (2, 1), (1, 2), (1, 2), s));
}

#[test]
fn wrong_output_size_is_an_error() {
    let shape = |r: Result<_, Error>| matches!(r, Err(Error::Shape { .. }));
    // 6x5 input, 3x2 kernel: the output is 4x4, not 4x3 or 5x4.
    assert!(shape(
        Conv2d::<3, 4, 3, 3, 2, 6, 5, 4, 3, 2>::new(0, (1, 1), (0, 0), (1, 1)).map(|_| ())
    ));
    assert!(shape(
        Conv2d::<3, 4, 3, 3, 2, 6, 5, 5, 4, 2>::new(0, (1, 1), (0, 0), (1, 1)).map(|_| ())
    ));
    // Right sizes for stride 1, given stride 2.
    assert!(shape(
        Conv2d::<3, 4, 3, 3, 2, 6, 5, 4, 4, 2>::new(0, (2, 2), (0, 0), (1, 1)).map(|_| ())
    ));
    // Zero stride or dilation, a kernel larger than the input, absurd sizes.
    type C = Conv2d<3, 4, 3, 3, 2, 6, 5, 4, 4, 2>;
    assert!(shape(C::new(0, (0, 1), (0, 0), (1, 1)).map(|_| ())));
    assert!(shape(C::new(0, (1, 1), (0, 0), (1, 0)).map(|_| ())));
    assert!(shape(C::new(0, (1, 1), (0, 0), (9, 1)).map(|_| ())));
    assert!(shape(
        C::new(0, (1, 1), (usize::MAX, 0), (1, 1)).map(|_| ())
    ));
    assert!(shape(
        C::new(0, (1, 1), (0, 0), (usize::MAX, 1)).map(|_| ())
    ));
    assert!(shape(
        C::new(0, (usize::MAX, 1), (0, 0), (1, 1)).map(|_| ())
    ));
    assert!(C::new(0, (1, 1), (0, 0), (1, 1)).is_ok());
}

//! Zero points (asymmetric ranges): golden cases worked out by hand, and
//! real layers (Linear, Conv2d) forward and backward with zero points on
//! every tensor, compared with an exact f64 computation from the register
//! values `q` (real value `(q - z) * step`), as hardware with zero-point
//! correction computes.
//!
//! Every f64 reference here is exact (small integers times powers of two),
//! so results are compared with `==`, not within a bound.

#![allow(clippy::needless_range_loop)]

use fixnn::backend::{Backend, RefBackend};
use fixnn::kernels::DspBackend;
use fixnn::layers::{Conv2d, Layer, Linear};
use fixnn::model::{apply_state, FormatJson, StateEntry, StateView};
use fixnn::quant::range::{choose_min_max_codes, choose_min_max_f32};
use fixnn::quant::{self, Format, Method};
use fixnn::tensor::{Ctx, Tensor, S2, S4};
use fixnn::{Clamp, Error, QuantConfig, RangeMethod, Rounder, Rounding, Stream};

/// `Method::Fixed` with a zero point.
fn fixed_zp(bits: u8, scale: i8, z: i32) -> QuantConfig {
    QuantConfig {
        zero_point: z,
        ..QuantConfig::fixed(bits, scale)
    }
}

/// `Method::Auto` with `RangeMethod::MinMax`.
const fn auto_min_max(bits: u8) -> QuantConfig {
    QuantConfig {
        range: RangeMethod::MinMax,
        ..QuantConfig::auto(bits)
    }
}

fn fmt(bits: u8, scale: i8, z: i32) -> Format {
    Format::new(bits, scale)
        .and_then(|f| f.with_zero_point(z))
        .expect("valid format")
}

#[test]
fn format_bounds_codes_and_registers() {
    // 4 bits, scale 0 (step 1/8), z = 3: registers -8..=7, codes -11..=4.
    let f = fmt(4, 0, 3);
    assert_eq!((f.min_code(), f.max_code(), f.code_bits()), (-11, 4, 5));
    assert_eq!((f.to_f32(-11), f.to_f32(4)), (-1.375, 0.5));
    assert_eq!((f.stored_code(-11), f.stored_code(4)), (-8, 7));
    assert_eq!((f.code_of_stored(-8), f.code_of_stored(3)), (-11, 0));
    assert_eq!(f.zero_point(), 3);
    assert_eq!(f.saturate(5), (4, true));
    assert_eq!(f.saturate(4), (4, false));
    assert_eq!(f.saturate(-11), (-11, false));
    assert_eq!(f.saturate(-12), (-11, true));
    // z = -8: an unsigned range, values 0 .. 15/8.
    let u = fmt(4, 0, -8);
    assert_eq!((u.min_code(), u.max_code()), (0, 15));
    assert_eq!(u.to_f32(u.max_code()), 1.875);
    // Codes need bits + 1 bits: i8 storage holds 7-bit formats only.
    assert!(quant::check_storage::<i8>(fmt(7, 0, 1)).is_ok());
    assert_eq!(
        quant::check_storage::<i8>(fmt(8, 0, 1)),
        Err(Error::BitsExceedStorage {
            bits: 9,
            storage: 8
        })
    );
    // z = 0 is the symmetric format.
    assert_eq!(fmt(8, 2, 0), Format::new(8, 2).unwrap());
}

#[test]
fn bad_zero_points_are_refused_naming_the_field() {
    let f4 = Format::new(4, 0).unwrap();
    for z in [8, -9, i32::MAX, i32::MIN] {
        assert!(
            matches!(f4.with_zero_point(z), Err(Error::Invalid { what }) if what.contains("zero_point")),
            "{z}"
        );
    }
    assert!(f4.with_zero_point(7).is_ok() && f4.with_zero_point(-8).is_ok());
    let f16 = Format::new(16, 0).unwrap();
    assert!(
        matches!(f16.with_zero_point(1), Err(Error::Invalid { what }) if what.contains("zero_point"))
    );
    assert_eq!(f16.with_zero_point(0), Ok(f16));
    let nics = Format::with_clamp(8, 0, Clamp::Nics).unwrap();
    assert_eq!(
        nics.with_zero_point(1),
        Err(Error::Unsupported {
            field: "zero_point"
        })
    );
    // The same through configs.
    let mut cfg = fixed_zp(4, 0, 8);
    assert!(matches!(cfg.validate(), Err(Error::Invalid { .. })));
    cfg.zero_point = -8;
    assert_eq!(cfg.format(), Ok(Some(fmt(4, 0, -8))));
    cfg.clamp = Clamp::Nics;
    assert_eq!(
        cfg.format(),
        Err(Error::Unsupported {
            field: "zero_point"
        })
    );
    let mut mm = auto_min_max(16);
    assert!(matches!(mm.validate(), Err(Error::Invalid { what }) if what.contains("min_max")));
    mm.bits = 8;
    mm.clamp = Clamp::Nics;
    assert_eq!(
        mm.validate(),
        Err(Error::Unsupported {
            field: "zero_point"
        })
    );
    let mut real = QuantConfig::fixed_real(8, 0, 3 << 29);
    real.zero_point = 2;
    assert_eq!(
        real.update_real_f32(&[1.0]),
        Err(Error::Unsupported {
            field: "zero_point"
        })
    );
    // Method None ignores a valid zero point.
    let none = QuantConfig {
        zero_point: 5,
        ..QuantConfig::NONE
    };
    assert_eq!(none.format(), Ok(None));
}

/// Fixed 4 bits, scale 0, z = 3 (step 1/8, values -1.375 ..= 0.5), worked
/// out by hand: x * 8 rounded to nearest-even, clamped to codes -11..=4.
#[test]
fn fixed_quantization_saturates_at_the_shifted_bounds() {
    let mut cfg = fixed_zp(4, 0, 3);
    let mut x = [0.3f32, -1.2, 0.55, -2.0, 0.0, 0.5625, 0.6, -1.4];
    let mut mask = [0u32; 1];
    let r =
        quant::fake_quantize_f32(&mut cfg, &mut x, &Rounder::default(), Some(&mut mask)).unwrap();
    // 2.4 -> 2; -9.6 -> -10; 4.4 -> 4; -16 -> -11 (clamped); 0; 4.5 -> 4
    // (tie to even, in range); 4.8 -> 5 -> 4 (clamped); -11.2 -> -11 (in range).
    assert_eq!(x, [0.25, -1.25, 0.5, -1.375, 0.0, 0.5, 0.5, -1.375]);
    assert_eq!(r.format, Some(fmt(4, 0, 3)));
    assert_eq!(r.saturated, 2);
    assert_eq!(mask[0], 0b0100_1000);
}

#[test]
fn auto_min_max_golden_choices() {
    let c = |bits, x: &[f32]| choose_min_max_f32(bits, x).unwrap();
    // [0, 0.9], 8 bits: step 2^-8 needs codes 0..=231 (0.9 * 256 = 230.4),
    // which fit 256 registers; z = -104 is the nearest 0 that holds 231.
    assert_eq!(c(8, &[0.0, 0.9, 0.3]), (-1, -104));
    // Symmetric [-1, 1]: 64 + 64 codes at step 2^-6, z = 0; step 2^-7 would
    // need 128 + 128 = 256 > 255 (the code +128 does not exist).
    assert_eq!(c(8, &[-1.0, 1.0]), (1, 0));
    // Negative only: -0.7 * 16 = -11.2 -> 12 codes below 0, z = 12 - 8 = 4.
    assert_eq!(c(4, &[-0.1, -0.7]), (-1, 4));
    // Exactly full at step 2^-4: codes -8..=7 (15 + 1 registers), z = 0.
    assert_eq!(c(4, &[-0.5, 0.4375]), (-1, 0));
    // One code more (0.5 = 8/16) or a hair more needs the next scale.
    assert_eq!(c(4, &[-0.5, 0.5]), (0, 0));
    assert_eq!(c(4, &[-0.5, 0.437_500_03]), (0, 0));
    // The interval of zero points is a single value: codes -1..=14, z = -7.
    assert_eq!(c(4, &[-0.0625, 0.875]), (-1, -7));
    // All zero (either sign): scale -16, z = 0.
    assert_eq!(c(8, &[0.0, -0.0]), (-16, 0));
    // Too large for scale 127: 256 + 256 codes; z splits the overflow.
    assert_eq!(c(8, &[f32::MAX, -f32::MAX]), (127, -1));
    // Integer data, including wide accumulators.
    assert_eq!(choose_min_max_codes(4, -2, &[-1i32, 9, 1]), Ok((1, -2)));
    assert_eq!(choose_min_max_codes(4, -2, &[-3i8, 5]), Ok((1, 0)));
    // 2^40 - 1 at exponent -40 is a hair below 1: step 2^-8 would need
    // 256 codes 0..=256 (one too many), step 2^-7 needs 0..=128: z = -1.
    assert_eq!(
        choose_min_max_codes(8, -40, &[(1i64 << 40) - 1, 0]),
        Ok((0, -1))
    );
    assert_eq!(
        choose_min_max_codes(8, 0, &[i64::MIN, i64::MAX]),
        Ok((64, 0))
    );
    // Errors.
    assert_eq!(choose_min_max_f32(8, &[]), Err(Error::EmptyInput));
    assert_eq!(
        choose_min_max_f32(8, &[1.0, f32::NAN]),
        Err(Error::NonFinite { index: 1 })
    );
    assert_eq!(
        choose_min_max_f32(17, &[1.0]),
        Err(Error::BitsOutOfRange { bits: 17 })
    );
    assert_eq!(
        choose_min_max_codes::<i32>(8, 0, &[]),
        Err(Error::EmptyInput)
    );
}

/// The config writes scale and zero point with Auto MinMax, resets the
/// zero point to 0 with another range method, keeps both with Fixed.
#[test]
fn auto_min_max_writes_the_zero_point() {
    let mut cfg = auto_min_max(8);
    let f = cfg.update_scale_f32(&[0.0, 0.9, 0.3]).unwrap().unwrap();
    assert_eq!((cfg.scale, cfg.zero_point), (-1, -104));
    assert_eq!(f, fmt(8, -1, -104));
    // -1/4 ..= 9/4 in 8 bits: step 2^-6, codes -16..=144, z = 127 - 144.
    let f = cfg.update_scale_codes(-2, &[-1i32, 9]).unwrap().unwrap();
    assert_eq!((f.scale(), f.zero_point(), cfg.zero_point), (1, -17, -17));
    let mut fixed = QuantConfig {
        method: Method::Fixed,
        ..cfg
    };
    assert_eq!(fixed.update_scale_f32(&[100.0]), Ok(Some(fmt(8, 1, -17))));
    cfg.range = RangeMethod::Max;
    cfg.update_scale_f32(&[0.9]).unwrap();
    assert_eq!((cfg.scale, cfg.zero_point), (0, 0));
    // Errors leave the config unchanged.
    let mut cfg = auto_min_max(8);
    cfg.zero_point = 7;
    assert_eq!(cfg.update_scale_f32(&[]), Err(Error::EmptyInput));
    assert_eq!(cfg.zero_point, 7);
}

/// Deterministic pseudo-random f32 data on a power-of-two grid, with
/// varied signs and spans (all positive, all negative, mixed).
fn grid_data(seed: u64, n: usize, exp: i32) -> (Vec<i32>, Vec<f32>) {
    let s = Stream::new(seed, 7, 0);
    let span = 1 + (s.draw(1000) % 5000) as i32;
    let offset = (s.draw(1001) % (2 * span as u32 + 1)) as i32 - span;
    let q: Vec<i32> = (0..n as u32)
        .map(|i| offset + (s.draw(i) % (span as u32 + 1)) as i32 - span / 2)
        .collect();
    let step = quant::pow2_f32(exp);
    let x = q.iter().map(|&v| v as f32 * step).collect();
    (q, x)
}

/// The rule is the same on f32 and on integer data, and what it chooses
/// holds the data: quantizing them saturates nothing, for every rounding.
#[test]
fn min_max_covers_the_data_and_agrees_on_f32_and_codes() {
    let roundings = [
        Rounding::NearestEven,
        Rounding::NearestAway,
        Rounding::Floor,
        Rounding::Stochastic,
    ];
    for seed in 0..200u64 {
        let bits = 2 + (seed % 14) as u8;
        let exp = (seed % 23) as i32 - 15;
        let (q, x) = grid_data(seed, 1 + (seed % 17) as usize, exp);
        let (scale, z) = choose_min_max_f32(bits, &x).unwrap();
        assert_eq!(
            choose_min_max_codes(bits, exp, &q),
            Ok((scale, z)),
            "{seed}"
        );
        let f = fmt(bits, scale, z);
        for (k, &r) in roundings.iter().enumerate() {
            let rounder = Rounder::new(r, Stream::new(seed, k as u32, 0));
            let mut y = x.clone();
            let rep =
                quant::fake_quantize_f32(&mut auto_min_max(bits), &mut y, &rounder, None).unwrap();
            assert_eq!(rep.format, Some(f), "{seed} {r:?}");
            assert_eq!(rep.saturated, 0, "{seed} {r:?}: {x:?}");
        }
        // Least scale: one scale finer no longer fits (unless it is the
        // all-zero scale).
        if scale > -128 && x.iter().any(|&v| v != 0.0) {
            let t = scale as i32 - bits as i32; // step exponent of scale - 1
            let lo = x.iter().fold(0f64, |a, &v| a.min(v as f64));
            let hi = x.iter().fold(0f64, |a, &v| a.max(v as f64));
            let step = quant::pow2_f32(t) as f64;
            let need = (-lo / step).ceil() + (hi / step).ceil();
            assert!(need > ((1u32 << bits) - 1) as f64, "{seed}: {x:?}");
        }
    }
}

/// The register value of each element of a tensor in format `f`, checked
/// to lie in the `bits`-bit register range.
fn registers(v: &[f32], f: Format) -> Vec<i32> {
    let half = 1i32 << (f.bits() - 1);
    v.iter()
        .map(|&x| {
            let k = f.code_of(x);
            assert_eq!(f.to_f32(k), x, "{x} is not a code of {f:?}");
            let q = f.stored_code(k);
            assert!((-half..half).contains(&q), "register {q} of {f:?}");
            q
        })
        .collect()
}

/// `(q - z) * step` in f64 for each register.
fn dequantize_registers(q: &[i32], f: Format) -> Vec<f64> {
    let step = f.step() as f64;
    q.iter()
        .map(|&q| (q - f.zero_point()) as f64 * step)
        .collect()
}

/// The real values of `v` in format `f`, through the registers.
fn real(v: &[f32], f: Option<Format>) -> Vec<f64> {
    let f = f.expect("a quantized tensor");
    dequantize_registers(&registers(v, f), f)
}

/// What quantizing the exact `v` by `cfg` (Fixed, nearest-even) gives:
/// the value and whether it saturated.
fn expect_q(v: f64, cfg: &QuantConfig) -> (f64, bool) {
    let f = cfg.format().unwrap().unwrap();
    let step = f.step() as f64;
    let k = (v / step).round_ties_even();
    let (lo, hi) = (f.min_code() as f64, f.max_code() as f64);
    (k.clamp(lo, hi) * step, k < lo || k > hi)
}

/// Compare `got` with the exact `want`, quantized by `cfg` when it
/// quantizes (Fixed; Auto MinMax chooses from `want` first), then zero
/// where `mask` says (parameter gradients are masked after quantization).
fn check(
    what: &str,
    got: &Tensor<impl fixnn::tensor::Shape>,
    want: &[f64],
    mask: Option<&[bool]>,
    cfg: &QuantConfig,
) {
    let zero = |i: usize| mask.is_some_and(|m| m[i]);
    let g = got.flat();
    match cfg.method {
        Method::None => {
            assert_eq!(got.fmt, None, "{what}");
            let gv: Vec<f64> = g.iter().map(|&v| v as f64).collect();
            let want: Vec<f64> = (0..want.len())
                .map(|i| if zero(i) { 0.0 } else { want[i] })
                .collect();
            assert_eq!(gv, want, "{what}");
        }
        _ => {
            let mut c = *cfg;
            if c.method == Method::Auto {
                let w32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                assert!(w32.iter().zip(want).all(|(&a, &b)| a as f64 == b));
                c.update_scale_f32(&w32).unwrap();
                c.method = Method::Fixed;
            }
            assert_eq!(got.fmt, c.format().unwrap(), "{what}");
            let got = real(g, got.fmt);
            for (i, (&v, &w)) in got.iter().zip(want).enumerate() {
                let (e, sat) = expect_q(w, &c);
                let e = if zero(i) { 0.0 } else { e };
                assert_eq!(v, e, "{what}[{i}]: exact {w}");
                if cfg.method == Method::Auto {
                    assert!(!sat, "{what}[{i}]: Auto MinMax saturated {w}");
                }
            }
        }
    }
}

/// A parameter's quantized copy: the masters rounded (nearest-even) and
/// clamped to the shifted range; `sat` where clamped.
fn check_param<S: fixnn::tensor::Shape>(what: &str, p: &fixnn::tensor::Param<S>) {
    let cfg = p.quant.cfg;
    let got = real(p.q.flat(), p.q.fmt);
    for (i, (&m, &g)) in S::flat(&p.master).iter().zip(&got).enumerate() {
        let (e, sat) = expect_q(m as f64, &cfg);
        assert_eq!(g, e, "{what}[{i}]: master {m}");
        assert_eq!(S::flat(&p.sat)[i], sat, "{what}[{i}]: sat");
    }
    assert!(
        S::flat(&p.sat).iter().any(|&s| s),
        "{what}: no saturation tested"
    );
}

/// Configs of one layer run.
#[derive(Clone, Copy)]
struct Cfgs {
    out: QuantConfig,
    dy: QuantConfig,
    grad: QuantConfig,
}

const CASES: [Cfgs; 3] = [
    // Outputs and gradients at full precision: the exact integer sums.
    Cfgs {
        out: QuantConfig::NONE,
        dy: QuantConfig {
            zero_point: 5,
            ..QuantConfig::fixed(8, -1)
        },
        grad: QuantConfig::NONE,
    },
    // Everything with a zero point.
    Cfgs {
        out: QuantConfig {
            zero_point: 30,
            ..QuantConfig::fixed(8, 2)
        },
        dy: QuantConfig {
            zero_point: -3,
            ..QuantConfig::fixed(6, -1)
        },
        grad: QuantConfig {
            zero_point: 17,
            ..QuantConfig::fixed(9, 1)
        },
    },
    // Auto MinMax chooses output and gradient ranges from the accumulators.
    Cfgs {
        out: auto_min_max(6),
        dy: auto_min_max(7),
        grad: auto_min_max(5),
    },
];

const B: usize = 2;
const IN: usize = 5;
const OUT: usize = 3;

/// Input values from registers spread over the whole register range.
fn input(f: Format, n: usize, salt: usize) -> Vec<f32> {
    let half = 1i32 << (f.bits() - 1);
    (0..n)
        .map(|i| {
            let q = ((i * 37 + salt * 11) % (2 * half as usize)) as i32 - half;
            f.to_f32(f.code_of_stored(q))
        })
        .collect()
}

/// One Linear forward and backward pass with `case` on backend `bk`:
/// the layer, its input and the (prepared) output gradient.
fn run_linear<Bk: Backend>(
    bk: &Bk,
    case: &Cfgs,
    n: usize,
) -> (
    Linear<IN, OUT, B>,
    Tensor<S2<B, IN>>,
    Tensor<S2<B, OUT>>,
    Vec<f64>,
) {
    let ctx = Ctx::train(9, 1);
    let mut l = Linear::<IN, OUT, B>::new(1);
    l.weight.init_uniform(3 + n as u64, 1.3);
    l.bias.init_uniform(4 + n as u64, 3.0);
    l.weight.quant.cfg = fixed_zp(8, 0, 20);
    l.bias.quant.cfg = fixed_zp(6, 1, -10);
    l.weight.quant.grad_cfg = case.grad;
    l.bias.quant.grad_cfg = case.grad;
    l.out.quant.cfg = case.out;
    l.out.quant.grad_cfg = case.dy;

    let xf = fmt(8, 1, -64);
    let mut x = Tensor::<S2<B, IN>>::zeros();
    x.flat_mut().copy_from_slice(&input(xf, B * IN, n));
    x.fmt = Some(xf);
    l.forward(bk, &ctx, &x).unwrap();
    let mut dy = Tensor::<S2<B, OUT>>::zeros();
    let s = Stream::new(n as u64, 2, 0);
    for (i, v) in dy.flat_mut().iter_mut().enumerate() {
        *v = (s.draw(i as u32) % 2001) as f32 / 1000.0 - 1.0;
    }
    let dy_in: Vec<f64> = dy.flat().iter().map(|&v| v as f64).collect();
    l.backward(bk, &ctx, &x, &mut dy, true).unwrap();
    (l, x, dy, dy_in)
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn linear_forward_and_backward_with_zero_points_are_exact() {
    for (n, case) in CASES.iter().enumerate() {
        let (l, x, dy, dy_in) = run_linear(&RefBackend, case, n);
        check_param("weight", &l.weight);
        check_param("bias", &l.bias);

        let (xr, wr, br) = (
            real(x.flat(), x.fmt),
            real(l.weight.q.flat(), l.weight.q.fmt),
            real(l.bias.q.flat(), l.bias.q.fmt),
        );
        let mut y = vec![0f64; B * OUT];
        for b in 0..B {
            for o in 0..OUT {
                y[b * OUT + o] = br[o]
                    + (0..IN)
                        .map(|i| xr[b * IN + i] * wr[o * IN + i])
                        .sum::<f64>();
            }
        }
        check("y", &l.out.t, &y, None, &case.out);

        // dy: masked where y saturated, then quantized by its config.
        let masked: Vec<f64> = dy_in
            .iter()
            .zip(l.out.sat.as_flattened())
            .map(|(&g, &s)| if s { 0.0 } else { g })
            .collect();
        check("dy", &dy, &masked, None, &case.dy);
        let dyr = real(dy.flat(), dy.fmt);

        let mut dw = vec![0f64; OUT * IN];
        let mut db = vec![0f64; OUT];
        let mut dx = vec![0f64; B * IN];
        for o in 0..OUT {
            for b in 0..B {
                db[o] += dyr[b * OUT + o];
                for i in 0..IN {
                    dw[o * IN + i] += dyr[b * OUT + o] * xr[b * IN + i];
                    dx[b * IN + i] += dyr[b * OUT + o] * wr[o * IN + i];
                }
            }
        }
        // Straight-through: no gradient where the parameter saturated.
        let (ws, bs) = (l.weight.sat.as_flattened(), &l.bias.sat[..]);
        check("dw", &l.weight.grad, &dw, Some(ws), &case.grad);
        check("db", &l.bias.grad, &db, Some(bs), &case.grad);
        check("dx", l.input_grad(), &dx, None, &QuantConfig::NONE);

        // The packed-tile kernels (two codes of `bits + 1` bits per word)
        // run on zero-point codes and give the same bits.
        let mut scratch = [0u32; 256];
        let dsp = DspBackend::new(&mut scratch);
        let (d, _, ddy, _) = run_linear(&dsp, case, n);
        assert!(
            dsp.fast_calls() > 0,
            "the packed kernels declined every call"
        );
        assert_eq!(bits_of(d.out.t.flat()), bits_of(l.out.t.flat()));
        assert_eq!(bits_of(ddy.flat()), bits_of(dy.flat()));
        assert_eq!(bits_of(d.weight.grad.flat()), bits_of(l.weight.grad.flat()));
        assert_eq!(bits_of(d.bias.grad.flat()), bits_of(l.bias.grad.flat()));
        assert_eq!(
            bits_of(d.input_grad().flat()),
            bits_of(l.input_grad().flat())
        );
    }
}

#[test]
fn conv2d_forward_and_backward_with_zero_points_are_exact() {
    // 2 -> 2 channels, 2x2 kernel, 3x3 input, padding 1 (padded positions
    // are value 0: register z, code 0), stride 1: 4x4 output.
    const C: usize = 2;
    const H: usize = 3;
    const K: usize = 2;
    const O: usize = 4;
    for (n, case) in CASES.iter().enumerate() {
        let bk = RefBackend;
        let ctx = Ctx::train(9, 1);
        let mut l = Conv2d::<C, C, C, K, K, H, H, O, O, 1>::new(2, (1, 1), (1, 1), (1, 1)).unwrap();
        l.weight.init_uniform(5 + n as u64, 1.3);
        l.bias.init_uniform(6 + n as u64, 3.0);
        l.weight.quant.cfg = fixed_zp(7, 0, -9);
        l.bias.quant.cfg = fixed_zp(6, 1, 12);
        l.weight.quant.grad_cfg = case.grad;
        l.bias.quant.grad_cfg = case.grad;
        l.out.quant.cfg = case.out;
        l.out.quant.grad_cfg = case.dy;

        let xf = fmt(5, 1, 9);
        let mut x = Tensor::<S4<1, C, H, H>>::zeros();
        x.flat_mut().copy_from_slice(&input(xf, C * H * H, n));
        x.fmt = Some(xf);
        l.forward(&bk, &ctx, &x).unwrap();
        check_param("weight", &l.weight);

        let (xr, wr, br) = (
            real(x.flat(), x.fmt),
            real(l.weight.q.flat(), l.weight.q.fmt),
            real(l.bias.q.flat(), l.bias.q.fmt),
        );
        // Input position of output (oy, ox) and kernel tap (ky, kx).
        let at = |oy: usize, ox: usize, ky: usize, kx: usize| {
            let (iy, ix) = ((oy + ky).checked_sub(1)?, (ox + kx).checked_sub(1)?);
            (iy < H && ix < H).then_some((iy, ix))
        };
        let xi = |ci: usize, iy: usize, ix: usize| (ci * H + iy) * H + ix;
        let wi = |co: usize, ci: usize, ky: usize, kx: usize| ((co * C + ci) * K + ky) * K + kx;
        let yi = |co: usize, oy: usize, ox: usize| (co * O + oy) * O + ox;
        let taps = || {
            (0..C).flat_map(move |co| {
                (0..O).flat_map(move |oy| {
                    (0..O).flat_map(move |ox| {
                        (0..C).flat_map(move |ci| {
                            (0..K)
                                .flat_map(move |ky| (0..K).map(move |kx| (co, oy, ox, ci, ky, kx)))
                        })
                    })
                })
            })
        };
        let mut y = vec![0f64; C * O * O];
        for co in 0..C {
            for p in 0..O * O {
                y[co * O * O + p] = br[co];
            }
        }
        for (co, oy, ox, ci, ky, kx) in taps() {
            if let Some((iy, ix)) = at(oy, ox, ky, kx) {
                y[yi(co, oy, ox)] += xr[xi(ci, iy, ix)] * wr[wi(co, ci, ky, kx)];
            }
        }
        check("y", &l.out.t, &y, None, &case.out);

        let mut dy = Tensor::<S4<1, C, O, O>>::zeros();
        let s = Stream::new(n as u64, 3, 0);
        for (i, v) in dy.flat_mut().iter_mut().enumerate() {
            *v = (s.draw(i as u32) % 2001) as f32 / 1000.0 - 1.0;
        }
        let dy_in: Vec<f64> = dy.flat().iter().map(|&v| v as f64).collect();
        l.backward(&bk, &ctx, &x, &mut dy, true).unwrap();
        let sat: Vec<bool> = l
            .out
            .sat
            .as_flattened()
            .as_flattened()
            .as_flattened()
            .to_vec();
        let masked: Vec<f64> = dy_in
            .iter()
            .zip(&sat)
            .map(|(&g, &s)| if s { 0.0 } else { g })
            .collect();
        check("dy", &dy, &masked, None, &case.dy);
        let dyr = real(dy.flat(), dy.fmt);
        let mut dw = vec![0f64; C * C * K * K];
        let mut db = vec![0f64; C];
        let mut dx = vec![0f64; C * H * H];
        for co in 0..C {
            for p in 0..O * O {
                db[co] += dyr[co * O * O + p];
            }
        }
        for (co, oy, ox, ci, ky, kx) in taps() {
            if let Some((iy, ix)) = at(oy, ox, ky, kx) {
                let g = dyr[yi(co, oy, ox)];
                dw[wi(co, ci, ky, kx)] += g * xr[xi(ci, iy, ix)];
                dx[xi(ci, iy, ix)] += g * wr[wi(co, ci, ky, kx)];
            }
        }
        let ws = l.weight.sat.as_flattened().as_flattened().as_flattened();
        check("dw", &l.weight.grad, &dw, Some(ws), &case.grad);
        check("db", &l.bias.grad, &db, Some(&l.bias.sat[..]), &case.grad);
        check("dx", l.input_grad(), &dx, None, &QuantConfig::NONE);
    }
}

/// One parsed state entry: name, format, codes, master, momentum.
type Saved = (String, FormatJson, Vec<i32>, Vec<f32>, Vec<f32>);

/// The state document saves what hardware stores (registers `q` and the
/// zero point); loading it restores every value exactly. A format without
/// a zero point is written as before.
#[test]
fn state_saves_registers_and_loads_exactly() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 1);
    let mut l = Linear::<IN, OUT, B>::new(1);
    l.weight.init_uniform(3, 1.3);
    l.bias.init_uniform(4, 0.5);
    l.weight.quant.cfg = fixed_zp(8, 0, 20);
    l.bias.quant.cfg = QuantConfig::fixed(6, 1);
    let x = Tensor::<S2<B, IN>>::zeros();
    l.forward(&bk, &ctx, &x).unwrap();
    let text = serde_json::to_string(&StateView::new(&mut l)).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tensors = doc["tensors"].as_array().unwrap();
    let w = &tensors[0];
    assert_eq!(w["name"], "weight");
    assert_eq!(
        w["fmt"],
        serde_json::json!({"bits": 8, "scale": 0, "zero_point": 20})
    );
    let wf = l.weight.q.fmt.unwrap();
    let codes: Vec<i32> = serde_json::from_value(w["codes"].clone()).unwrap();
    assert_eq!(codes, registers(l.weight.q.flat(), wf));
    // The top register occurs (masters above the range saturate there).
    assert!(codes.contains(&127), "{codes:?}");
    assert_eq!(
        tensors[1]["fmt"],
        serde_json::json!({"bits": 6, "scale": 1})
    );

    let owned: Vec<Saved> = tensors
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                serde_json::from_value(t["fmt"].clone()).unwrap(),
                serde_json::from_value(t["codes"].clone()).unwrap(),
                serde_json::from_value(t["master"].clone()).unwrap(),
                serde_json::from_value(t["momentum"].clone()).unwrap(),
            )
        })
        .collect();
    let entries: Vec<StateEntry<'_>> = owned
        .iter()
        .map(|(name, f, c, m, mo)| StateEntry {
            name,
            kind: fixnn::model::Kind::Param,
            fmt: Some(*f),
            codes: Some(c),
            values: None,
            master: Some(m),
            momentum: Some(mo),
        })
        .collect();
    let mut back = Linear::<IN, OUT, B>::new(1);
    assert_eq!(
        apply_state(&mut back, &entries, &[]).map_err(|r| r.to_string()),
        Ok(2)
    );
    assert_eq!(back.weight.q.fmt, Some(wf));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(back.weight.q.flat()), bits(l.weight.q.flat()));
    assert_eq!(bits(back.bias.q.flat()), bits(l.bias.q.flat()));

    // A register outside [-128, 127] is refused, and nothing changes.
    let mut bad = owned[0].2.clone();
    bad[0] = 128;
    let mut entries2 = entries.clone();
    entries2[0].codes = Some(&bad);
    let mut other = Linear::<IN, OUT, B>::new(1);
    assert!(apply_state(&mut other, &entries2, &[]).is_err());
    assert_eq!(other.weight.q.fmt, None);
}

/// The config table shows a zero point after the method.
#[test]
fn config_table_shows_the_zero_point() {
    let mut l = Linear::<IN, OUT, B>::new(1);
    l.weight.quant.cfg = fixed_zp(8, 0, 20);
    l.bias.quant.cfg = auto_min_max(6);
    l.bias.quant.cfg.zero_point = -3;
    let mut t = String::new();
    fixnn::model::write_table(&mut l, &mut t).unwrap();
    let row = |name: &str| t.lines().find(|l| l.starts_with(name)).unwrap().to_string();
    assert!(row("weight").contains("    8     0 fixed z20     "), "{t}");
    assert!(row("bias").contains("    6     0 auto/minmax z-3"), "{t}");
    assert!(row("output").contains("    8     0 none         "), "{t}");
}

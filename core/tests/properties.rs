//! Property tests of the quantizer against independent references: big
//! integers for requantization, f64 for f32 quantization and scale
//! selection, counting statistics for stochastic rounding.

use fixnn::quant::{self, range, Format};
use fixnn::{Code, QuantConfig, RangeMethod, Rounder, Rounding, Stream};
use num_bigint::BigInt;
use num_integer::Integer;
use proptest::prelude::*;

/// The deterministic modes first (`ROUNDINGS[..4]`), then stochastic.
const ROUNDINGS: [Rounding; 5] = [
    Rounding::NearestEven,
    Rounding::NearestAway,
    Rounding::Floor,
    Rounding::Tflite,
    Rounding::Stochastic,
];

fn rounding() -> impl Strategy<Value = Rounding> {
    prop::sample::select(ROUNDINGS.to_vec())
}

fn format() -> impl Strategy<Value = Format> {
    (2u8..=16, any::<i8>()).prop_map(|(b, s)| Format::new(b, s).unwrap())
}

fn pow2(k: u32) -> BigInt {
    BigInt::from(1) << k as usize
}

/// Wide-integer reference of `round(v * 2^exp / step)`, then saturate.
fn reference(v: i64, exp: i32, f: Format, r: Rounding, draw: u32) -> (i32, bool) {
    let shift = f.step_exp() as i64 - exp as i64;
    let v = BigInt::from(v);
    let q: BigInt = if shift <= 0 {
        v << (-shift) as usize
    } else {
        let s = shift as u32;
        let d = pow2(s);
        match r {
            Rounding::Floor => v.div_floor(&d),
            Rounding::NearestEven => {
                // floor(v / d + 1/2), minus one on an exact tie with an odd result.
                let num: BigInt = &v * 2 + &d;
                let den: BigInt = &d * 2;
                let (t, rem) = num.div_mod_floor(&den);
                if rem == BigInt::from(0) && t.is_odd() {
                    t - 1
                } else {
                    t
                }
            }
            Rounding::NearestAway | Rounding::Tflite => {
                let mag = (v.magnitude().clone() * 2u32 + d.magnitude()) / (d.magnitude() * 2u32);
                let mag = BigInt::from(mag);
                if v < BigInt::from(0) {
                    -mag
                } else {
                    mag
                }
            }
            Rounding::Stochastic => {
                let add = if s <= 32 {
                    BigInt::from(draw >> (32 - s))
                } else {
                    BigInt::from(draw) << (s - 32) as usize
                };
                (v + add).div_floor(&d)
            }
        }
    };
    let lo = BigInt::from(f.min_code());
    let hi = BigInt::from(f.max_code());
    if q < lo {
        (f.min_code(), true)
    } else if q > hi {
        (f.max_code(), true)
    } else {
        (i32::try_from(q).unwrap(), false)
    }
}

/// f64 reference of quantizing an f32: x * 2^(bits-1-scale) is exact in f64.
fn f64_reference(x: f32, f: Format, r: Rounding) -> (i32, bool) {
    let y = x as f64 * 2f64.powi(-f.step_exp());
    let q = match r {
        Rounding::NearestEven => y.round_ties_even(),
        Rounding::NearestAway | Rounding::Tflite => y.round(),
        Rounding::Floor => y.floor(),
        Rounding::Stochastic => unreachable!(),
    };
    if q < f.min_code() as f64 {
        (f.min_code(), true)
    } else if q > f.max_code() as f64 {
        (f.max_code(), true)
    } else {
        (q as i32, false)
    }
}

/// Smallest `s` with `a <= 2^s`, for `a > 0`, by exact f64 powers of two.
fn ceil_log2_f64(a: f64) -> i32 {
    let mut s = a.log2().ceil() as i32 + 2;
    while 2f64.powi(s - 1) >= a {
        s -= 1;
    }
    while 2f64.powi(s) < a {
        s += 1;
    }
    s
}

fn finite_f32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("finite", |x| x.is_finite())
}

/// Moderate, mixed-magnitude data where the scale is never clamped.
fn data() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![(-1e6f32..1e6), (-2f32..2.0), (-1e-3f32..1e-3), Just(0.0f32),],
        1..200,
    )
}

fn codes_of<C: Code>(x: &[f32], f: Format, r: &Rounder) -> Vec<C> {
    let mut out = vec![C::default(); x.len()];
    quant::quantize_f32(x, f, r, &mut out, None).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn requantize_equals_wide_integer_reference(
        v in any::<i64>(),
        exp in -320i32..320,
        f in format(),
        r in rounding(),
        draw in any::<u32>(),
    ) {
        prop_assert_eq!(quant::requantize_one(v, exp, f, r, draw), reference(v, exp, f, r, draw));
    }

    #[test]
    fn requantize_small_values_every_shift(
        v in -100_000i64..100_000,
        shift in -40i32..140,
        bits in 2u8..=16,
        r in rounding(),
        draw in any::<u32>(),
    ) {
        let f = Format::new(bits, 0).unwrap();
        let exp = f.step_exp() - shift;
        prop_assert_eq!(quant::requantize_one(v, exp, f, r, draw), reference(v, exp, f, r, draw));
    }

    /// Exact ties and their neighbours, where the nearest modes differ.
    #[test]
    fn requantize_ties_and_neighbours(
        k in -3000i64..3000,
        shift in 1i32..70,
        delta in -1i64..=1,
        bits in 2u8..=16,
        r in rounding(),
        draw in any::<u32>(),
    ) {
        let f = Format::new(bits, 15).unwrap();
        let s = shift.min(61) as u32;
        let v = (k << s) + (1i64 << (s - 1)) + delta;
        let exp = f.step_exp() - s as i32;
        prop_assert_eq!(quant::requantize_one(v, exp, f, r, draw), reference(v, exp, f, r, draw));
    }

    /// f32 values exactly halfway between two codes.
    #[test]
    fn quantize_f32_ties(k in -40_000i32..40_000, f in format(), ri in 0usize..4) {
        let r = ROUNDINGS[ri];
        let x = (k as f64 + 0.5) * 2f64.powi(f.step_exp());
        let x32 = x as f32;
        prop_assume!(x32 as f64 == x && x32.is_finite());
        let mut out = [0i16];
        quant::quantize_f32(&[x32], f, &Rounder::new(r, Stream::default()), &mut out, None).unwrap();
        prop_assert_eq!(out[0] as i32, f64_reference(x32, f, r).0);
    }

    #[test]
    fn quantize_f32_equals_f64_reference(x in finite_f32(), f in format(), ri in 0usize..4) {
        let r = ROUNDINGS[ri];
        let mut out = [0i16];
        let sat = quant::quantize_f32(&[x], f, &Rounder::new(r, Stream::default()), &mut out, None).unwrap();
        let (q, s) = f64_reference(x, f, r);
        prop_assert_eq!((out[0] as i32, sat), (q, s as usize));
    }

    #[test]
    fn quantize_f32_stochastic_equals_integer_reference(x in finite_f32(), f in format(), seed in any::<u64>()) {
        let stream = Stream::new(seed, 3, 9);
        let mut out = [0i16];
        quant::quantize_f32(&[x], f, &Rounder::new(Rounding::Stochastic, stream), &mut out, None).unwrap();
        let (m, e) = quant::decompose_f32(x).unwrap();
        let (q, _) = reference(m, e, f, Rounding::Stochastic, stream.draw(0));
        prop_assert_eq!(out[0] as i32, q);
    }

    #[test]
    fn auto_max_leaves_the_largest_within_one_step(x in data(), bits in 2u8..=16, r in rounding()) {
        let mut cfg = QuantConfig::auto(bits);
        cfg.rounding = r;
        let f = cfg.update_scale_f32(&x).unwrap().unwrap();
        let big = x.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
        if big == 0.0 {
            prop_assert_eq!(f.scale(), range::ZERO_DATA_SCALE);
        } else {
            prop_assert_eq!(f.scale() as i32, ceil_log2_f64(big));
        }
        let codes: Vec<i16> = codes_of(&x, f, &Rounder::new(r, Stream::new(1, 2, 3)));
        for (&v, &c) in x.iter().zip(&codes) {
            if v.abs() as f64 == big {
                let err = (v as f64 - f.to_f32(c as i32) as f64).abs();
                prop_assert!(err <= f.step() as f64, "{} -> code {} err {} step {}", v, c, err, f.step());
            }
        }
    }

    #[test]
    fn any_processing_order_gives_the_same_bits(
        x in data(),
        f in format(),
        r in rounding(),
        seed in any::<u64>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let rounder = Rounder::new(r, Stream::new(seed, 11, 2));
        let whole: Vec<i16> = codes_of(&x, f, &rounder);
        // Chunks at random cut points, processed last to first.
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(x.len() + 1)).collect();
        points.extend([0, x.len()]);
        points.sort_unstable();
        points.dedup();
        let mut chunked = vec![0i16; x.len()];
        for w in points.windows(2).rev() {
            let (a, b) = (w[0], w[1]);
            let sub = rounder.at(a as u32);
            quant::quantize_f32(&x[a..b], f, &sub, &mut chunked[a..b], None).unwrap();
        }
        prop_assert_eq!(&whole, &chunked);
        // One element at a time, in reverse order.
        let mut single = vec![0i16; x.len()];
        for i in (0..x.len()).rev() {
            quant::quantize_f32(&x[i..=i], f, &rounder.at(i as u32), &mut single[i..=i], None).unwrap();
        }
        prop_assert_eq!(&whole, &single);
    }

    #[test]
    fn three_sigma_matches_f64(x in data()) {
        prop_assume!(x.len() >= 2);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let bound = 3.0 * var.sqrt() + mean.abs();
        prop_assume!(bound > 0.0);
        let s = ceil_log2_f64(bound);
        // Skip bounds within 1e-6 of a power of two: f64 itself is not exact there.
        prop_assume!((bound / 2f64.powi(s) - 1.0).abs() > 1e-6 && (bound / 2f64.powi(s - 1) - 1.0).abs() > 1e-6);
        let got = range::choose_scale_f32(RangeMethod::ThreeSigma, 8, Rounding::NearestEven, &x).unwrap();
        prop_assert_eq!(got as i32, s);
    }

    #[test]
    fn three_sigma_on_codes_equals_on_their_values(q in prop::collection::vec(-30000i16..30000, 1..100), exp in -20i32..5) {
        let x: Vec<f32> = q.iter().map(|&c| c as f32 * 2f32.powi(exp)).collect();
        let a = range::choose_scale_codes(RangeMethod::ThreeSigma, 8, Rounding::NearestEven, exp, &q);
        let b = range::choose_scale_f32(RangeMethod::ThreeSigma, 8, Rounding::NearestEven, &x);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn max_ten_percent_matches_sorting(x in data()) {
        let mut mags: Vec<f64> = x.iter().map(|v| v.abs() as f64).collect();
        mags.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let k = (x.len() / 10).max(1);
        let kth = mags[k - 1];
        let expected = if kth == 0.0 { range::ZERO_DATA_SCALE as i32 } else { ceil_log2_f64(kth) };
        let got = range::choose_scale_f32(RangeMethod::MaxTenPercent, 8, Rounding::NearestEven, &x).unwrap();
        prop_assert_eq!(got as i32, expected);
    }

    #[test]
    fn sweep_matches_f64_error_search(x in data(), bits in 2u8..=8, ri in 0usize..4) {
        let r = ROUNDINGS[ri];
        let big = x.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
        prop_assume!(big > 0.0);
        let top = ceil_log2_f64(big);
        let errs: Vec<(i32, f64)> = (0..3).map(|d| {
            let f = Format::new(bits, (top - d) as i8).unwrap();
            let e = x.iter().map(|&v| {
                let (q, _) = f64_reference(v, f, r);
                (v as f64 - q as f64 * 2f64.powi(f.step_exp())).abs()
            }).sum::<f64>();
            (top - d, e)
        }).collect();
        let mut sorted = errs.clone();
        sorted.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap().then(b.0.cmp(&a.0)));
        // Skip near-ties: the f64 sums are not exact.
        prop_assume!(sorted[1].1 - sorted[0].1 > 1e-6 * sorted[1].1.max(1e-30));
        let got = range::choose_scale_f32(RangeMethod::Sweep, bits, r, &x).unwrap();
        prop_assert_eq!(got as i32, sorted[0].0, "errors {:?}", errs);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The mean of stochastically rounded codes is the exact value, within
    /// six standard deviations of a Bernoulli mean over 20,000 draws.
    #[test]
    fn stochastic_rounding_is_unbiased(v in -4000i64..4000, shift in 1i32..12, seed in any::<u64>()) {
        let f = Format::new(16, 15).unwrap(); // step 1: codes are integers
        let n = 20_000u32;
        let s = Stream::new(seed, 5, 0);
        let exact = v as f64 / 2f64.powi(shift);
        let frac = exact - exact.floor();
        let sum: f64 = (0..n)
            .map(|i| quant::requantize_one(v, -shift, f, Rounding::Stochastic, s.draw(i)).0 as f64)
            .sum();
        let mean = sum / n as f64;
        let sigma = (frac * (1.0 - frac) / n as f64).sqrt();
        prop_assert!((mean - exact).abs() <= 6.0 * sigma + 1e-9, "mean {} exact {} sigma {}", mean, exact, sigma);
    }
}

#[test]
fn stochastic_rounding_is_reproducible_from_its_seed() {
    let x: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) * 0.013).collect();
    let f = Format::new(4, 1).unwrap();
    let run = |seed| {
        codes_of::<i8>(
            &x,
            f,
            &Rounder::new(Rounding::Stochastic, Stream::new(seed, 1, 0)),
        )
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    // Each code is the floor or the ceiling of the exact value.
    for (&v, &c) in x.iter().zip(&run(42)) {
        let y = v as f64 / f.step() as f64;
        assert!(
            c as f64 == y.floor()
                || c as f64 == y.ceil()
                || (c as i32 == f.max_code() || c as i32 == f.min_code())
        );
    }
}

#[test]
fn stochastic_rounding_at_the_u32_resolution_limit() {
    // 40 dropped bits: the 32-bit draw sets the top bits of the addend.
    let f = Format::new(16, 15).unwrap();
    let s = Stream::new(9, 0, 0);
    let half = 1i64 << 39; // exactly one half
    let ups = (0..10_000u32)
        .filter(|&i| quant::requantize_one(half, -40, f, Rounding::Stochastic, s.draw(i)).0 == 1)
        .count();
    assert!((4_700..=5_300).contains(&ups), "{ups} of 10000 rounded up");
}

#[test]
fn requantize_slices_match_the_scalar_function() {
    let acc: Vec<i32> = (0..1000).map(|i| (i * 7919 % 200_003) - 100_000).collect();
    let f = Format::new(8, 2).unwrap();
    for r in ROUNDINGS {
        let rounder = Rounder::new(r, Stream::new(5, 6, 7));
        let mut out = vec![0i8; acc.len()];
        let mut m = vec![0u32; quant::mask::words(acc.len())];
        let sat = quant::requantize(&acc, -10, f, &rounder, &mut out, Some(&mut m)).unwrap();
        let mut count = 0;
        for (i, (&a, &o)) in acc.iter().zip(&out).enumerate() {
            let (q, s) = quant::requantize_one(a as i64, -10, f, r, rounder.stream.draw(i as u32));
            assert_eq!((o as i32, s), (q, quant::mask::is_set(&m, i)));
            count += s as usize;
        }
        assert_eq!(sat, count);
        assert!(sat > 0, "the data should saturate some elements");
    }
}

#[test]
fn bad_buffers_are_errors_and_write_nothing() {
    let f = Format::new(8, 0).unwrap();
    let r = Rounder::default();
    let mut out = [7i8; 3];
    assert!(quant::quantize_f32(&[1.0, 2.0], f, &r, &mut out, None).is_err());
    assert!(quant::quantize_f32(&[1.0, f32::NAN, 2.0], f, &r, &mut out, None).is_err());
    let mut short: [u32; 0] = [];
    assert!(quant::quantize_f32(&[1.0, 2.0, 3.0], f, &r, &mut out, Some(&mut short)).is_err());
    let wide = Format::new(12, 0).unwrap();
    assert!(quant::quantize_f32(&[1.0, 2.0, 3.0], wide, &r, &mut out, None).is_err());
    assert!(quant::quantize_f32(&[1.0, 2.0, 3.0], f, &r.at(u32::MAX - 1), &mut out, None).is_err());
    assert_eq!(out, [7, 7, 7]);
}

//! `Rounding::Tflite`: TFLite's requantization (`MultiplyByQuantizedMultiplier`,
//! a double rounding) where an accumulator meets a real-valued format,
//! nearest-away everywhere else. Expected values are worked out by hand in
//! the comments, or computed independently: TFLite's `QuantizeMultiplier`
//! is emulated here in f64 from the real multiplier, as TFLite does it.

use fixnn::backend::RefBackend;
use fixnn::layers::{Layer, Linear, Quant};
use fixnn::quant::{
    multiply_by_quantized_multiplier as mbqm, requantize_one, requantize_ratio, round_f32,
    round_mul_shift, RealFormat,
};
use fixnn::tensor::{Ctx, Tensor, S2};
use fixnn::{Format, QuantConfig, Rounding};

mod common;
use common::Rng;

/// 0.75 as a Q31 multiplier.
const M075: u32 = 3 << 29;

/// `2^e` as an f64 from its bits (exact; `-1022 <= e <= 1023`).
fn two_to(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// TFLite's `QuantizeMultiplier(double)`: `frexp`, `round(q * 2^31)` (half
/// away), `2^31` renormalised, shifts below -31 flushed to `(0, 0)`.
fn quantize_multiplier(real: f64) -> (i32, i32) {
    assert!(real > 0.0 && real.is_normal());
    let bits = real.to_bits();
    // real = f * 2^shift with f in [0.5, 1).
    let mut shift = ((bits >> 52) & 0x7ff) as i32 - 1022;
    let f = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1022u64 << 52));
    let mut q = (f * two_to(31)).round() as i64;
    if q == 1i64 << 31 {
        q /= 2;
        shift += 1;
    }
    if shift < -31 {
        return (0, 0);
    }
    (q as i32, shift)
}

#[test]
fn double_rounding_differs_from_one_rounding() {
    // 8 bits, scale 0, M = 0.5: step 0.5 * 2^-7 = 2^-8. An accumulator at
    // 2^-10 is acc / 4 steps. mul_shift: M_eff = 2^61 / 2^30 = 2^31,
    // renormalised to 2^30 with shift 30 - 7 + 10 - 1 = 32; TFLite's shift
    // is 31 - 32 = -1: srdhm(acc, 2^30) = acc / 2 (ties up), then
    // rounding_divide_by_pot(.., 1) (ties away).
    let half = RealFormat::new(Format::new(8, 0).unwrap(), 1 << 30).unwrap();
    // (acc, exact acc / 4, Tflite, NearestAway, NearestEven)
    let cases = [
        // 0.25: srdhm 0.5 -> 1, then 0.5 -> 1; one rounding gives 0.
        (1, 1, 0, 0),
        // -0.25: srdhm -0.5 -> 0 (toward +inf), 0.
        (-1, 0, 0, 0),
        // 1.25: srdhm 2.5 -> 3, then 1.5 -> 2; one rounding gives 1.
        (5, 2, 1, 1),
        // -1.25: srdhm -2.5 -> -2, then -1.
        (-5, -1, -1, -1),
        // -1.75: srdhm -3.5 -> -3, then -1.5 -> -2.
        (-7, -2, -2, -2),
        // 2.5: srdhm 5, then 2.5 -> 3 (away); nearest even gives 2.
        (10, 3, 3, 2),
        // 0.75: srdhm 1.5 -> 2, then 1.
        (3, 1, 1, 1),
    ];
    for (acc, tfl, away, even) in cases {
        let got = [
            half.round_acc(acc, -10, Rounding::Tflite, 0).0,
            half.round_acc(acc, -10, Rounding::NearestAway, 0).0,
            half.round_acc(acc, -10, Rounding::NearestEven, 0).0,
        ];
        assert_eq!(got, [tfl, away, even], "acc {acc}");
    }

    // 8 bits, scale 0, M = 0.75: step 3 * 2^-9; an accumulator at 2^-14 is
    // acc / 96 steps. M_eff = round(2^61 / (3 * 2^29)) = round(2^32 / 3) =
    // 1431655765 (2^32 = 3 * 1431655765 + 1), shift 30 - 7 + 14 = 37,
    // TFLite shift -6. acc = 48 is exactly 0.5 step, but M_eff lies below
    // 2^32 / 3, so the one rounding of 48 * M_eff / 2^37 = 0.49999999997
    // gives 0 (NearestAway and NearestEven alike). TFLite:
    // srdhm(48, M_eff) = round(31.99999999925) = 32, then 32 / 2^6 = 0.5
    // -> 1 (away).
    let rf = RealFormat::new(Format::new(8, 0).unwrap(), M075).unwrap();
    let ms = rf.mul_shift(-14);
    assert_eq!((ms.multiplier, ms.shift), (1_431_655_765, 37));
    assert_eq!(rf.round_acc(48, -14, Rounding::Tflite, 0), (1, false));
    assert_eq!(rf.round_acc(48, -14, Rounding::NearestAway, 0), (0, false));
    assert_eq!(rf.round_acc(48, -14, Rounding::NearestEven, 0), (0, false));
    assert_eq!(rf.round_acc(-48, -14, Rounding::Tflite, 0), (-1, false));
    // The same through round_mul_shift directly.
    assert_eq!(
        round_mul_shift(48, 1_431_655_765, 37, Rounding::Tflite, 0),
        1
    );
}

#[test]
fn matches_multiply_by_quantized_multiplier_with_tflites_own_multiplier() {
    // Random formats, multipliers, accumulator exponents and i32
    // accumulators: round_acc with Tflite equals TFLite's
    // MultiplyByQuantizedMultiplier with the (multiplier, shift) TFLite's
    // QuantizeMultiplier makes of the real multiplier acc-scale /
    // out-scale = 2^exp / (M * 2^(step_exp - 31)), then saturation.
    let mut rng = Rng(7);
    let (mut got, mut want) = (Vec::new(), Vec::new());
    let mut shifts = [0u32; 3]; // right shifts, no shift, left shifts
    let mut single_differs = 0;
    for n in 0..20_000 {
        let bits = rng.range(2, 16) as u8;
        let scale = rng.range(-20, 20) as i8;
        let f = Format::new(bits, scale).unwrap();
        let m = rng.range(1 << 30, (1 << 31) - 1) as u32;
        let rf = RealFormat::new(f, m).unwrap();
        // With d = exp - step_exp the real multiplier 2^(d + 31) / M lies
        // in (2^d, 2^(d + 1)]: TFLite shifts from -39 (flushed) to 7.
        let d = rng.range(-40, 6) as i32;
        let exp = f.step_exp() + d;
        let acc = match n % 4 {
            0 => rng.range(-300, 300),
            1 => rng.range(-70_000, 70_000),
            _ => rng.range(i32::MIN as i64, i32::MAX as i64),
        };
        let real = two_to(exp - f.step_exp() + 31) / m as f64;
        let (qm, shift) = quantize_multiplier(real);
        shifts[(shift.signum() + 1) as usize] += 1;
        let (q, s) = f.saturate(mbqm(acc as i32, qm, shift) as i128);
        want.push((acc, exp, m, q, s));
        let (q, s) = rf.round_acc(acc, exp, Rounding::Tflite, 0);
        got.push((acc, exp, m, q, s));
        if rf.round_acc(acc, exp, Rounding::NearestAway, 0) != (q, s) {
            single_differs += 1;
        }
    }
    // The double rounding shows: one rounding differs on some inputs.
    assert!(single_differs > 0);
    assert!(shifts.iter().all(|&c| c > 100), "{shifts:?}");
    assert!(got == want, "some (acc, exp, M) differ");
}

#[test]
fn tiny_multipliers_flush_to_zero_as_tflite() {
    // TFLite's QuantizeMultiplier gives (0, 0) for a real multiplier below
    // about 2^-32 (shift < -31): every output is 0. 16 bits, scale 0,
    // M = 0.75: step_exp -15, code q worth q * 0.75 * 2^-15. exp = -48
    // makes the real multiplier 2^-48 / (0.75 * 2^-15) = (2/3) * 2^-32
    // (shift -32): flushed. exp = -47 gives (2/3) * 2^-31 (shift -31),
    // still computed: srdhm(i32::MAX, 1431655765) = 1431655764, then
    // / 2^31 = 0.667 -> 1.
    let f = Format::new(16, 0).unwrap();
    let rf = RealFormat::new(f, M075).unwrap();
    assert_eq!(quantize_multiplier(two_to(-33 + 31) / M075 as f64), (0, 0));
    assert_eq!(
        rf.round_acc(i32::MAX as i64, -48, Rounding::Tflite, 0),
        (0, false)
    );
    assert_eq!(
        rf.round_acc(i32::MAX as i64, -47, Rounding::Tflite, 0),
        (1, false)
    );
    assert_eq!(
        rf.round_acc(i32::MIN as i64, -47, Rounding::Tflite, 0),
        (-1, false)
    );
    // One rounding of the exact value 2^31 * 2^-48 * 2^15 / 0.75 = 0.67 also
    // gives 1 at -47, and 0.33 -> 0 at -48.
    assert_eq!(
        rf.round_acc(i32::MAX as i64, -47, Rounding::NearestAway, 0),
        (1, false)
    );
    assert_eq!(
        rf.round_acc(i32::MAX as i64, -48, Rounding::NearestAway, 0),
        (0, false)
    );
}

#[test]
fn accumulators_beyond_i32_are_clamped_first() {
    // 16 bits, scale 0, M = 0.5: step_exp -15, code q is worth
    // q * 0.5 * 2^-15 = q * 2^-16. An accumulator at exp = -32 is worth
    // acc * 2^-32, so q = acc / 2^16 exactly (TFLite: srdhm(x, 2^30) = x / 2,
    // then a right shift by 15).
    let f = Format::new(16, 0).unwrap();
    let rf = RealFormat::new(f, 1 << 30).unwrap();
    let exp = -32;
    // In range: 2^30 / 2^16 = 16384 either way.
    assert_eq!(
        rf.round_acc(1 << 30, exp, Rounding::Tflite, 0),
        (16384, false)
    );
    // 2^40 does not fit i32: clamped to i32::MAX, whose 32767.99998 steps
    // round to 32768 and saturate to 32767 (saturated: true). One rounding
    // of the exact value (2^24 steps) saturates too.
    assert_eq!(
        rf.round_acc(1 << 40, exp, Rounding::Tflite, 0),
        (32767, true)
    );
    assert_eq!(
        rf.round_acc(-(1 << 40), exp, Rounding::Tflite, 0),
        (-32768, true)
    );
    // A real multiplier small enough that the clamped accumulator lands
    // inside the range: exp = -40 gives q = acc / 2^24. 2^33 + 5 would be
    // 512 exactly; clamped to i32::MAX it is 127.99999994 -> 128, and the
    // clamp is reported as a saturation although 128 is a valid code.
    assert_eq!(
        rf.round_acc((1 << 33) + 5, -40, Rounding::Tflite, 0),
        (128, true)
    );
    assert_eq!(
        rf.round_acc((1 << 33) + 5, -40, Rounding::NearestAway, 0),
        (512, false)
    );
    assert_eq!(
        rf.round_acc(-(1 << 33), -40, Rounding::Tflite, 0),
        (-128, true)
    );
    // i32::MIN itself is in range: -2^31 / 2^24 = -128, not clamped.
    assert_eq!(
        rf.round_acc(i32::MIN as i64, -40, Rounding::Tflite, 0),
        (-128, false)
    );
}

#[test]
fn everything_else_rounds_as_nearest_away() {
    // Power-of-two requantization, f32 quantization, rational averages and
    // f32 -> real codes: Tflite and NearestAway agree on every input,
    // ties included.
    let f = Format::new(8, 0).unwrap();
    let rf = RealFormat::new(f, M075).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let six = core::num::NonZeroU32::new(6).unwrap();
    for v in -600i64..600 {
        let x = v as f32 / 512.0;
        for (r, out) in [(Rounding::Tflite, &mut a), (Rounding::NearestAway, &mut b)] {
            out.push(requantize_one(v, -9, f, r, 0));
            out.push(round_f32(x, f, r, 0));
            out.push(requantize_ratio(v, -7, six, f, r, 0));
            out.push(rf.round_f32(x, r, 0));
            out.push(rf.round_exact(v, -12, r, 0));
        }
    }
    assert_eq!(a, b);
    // The vectorised slice path (a Quant layer, power-of-two format) too,
    // on values with ties: equal to NearestAway, unlike NearestEven.
    let layer = |rounding: Rounding| {
        let mut q = Quant::<S2<1, 64>>::new(1);
        let mut cfg = QuantConfig::fixed(6, 0); // step 2^-5
        cfg.rounding = rounding;
        q.out.quant.cfg = cfg;
        let mut x = Tensor::<S2<1, 64>>::zeros();
        for (i, v) in x.flat_mut().iter_mut().enumerate() {
            *v = (i as f32 - 32.0) / 64.0; // half steps
        }
        q.forward(&RefBackend, &Ctx::train(1, 0), &x).unwrap();
        q.output().flat().to_vec()
    };
    assert_eq!(layer(Rounding::Tflite), layer(Rounding::NearestAway));
    assert_ne!(layer(Rounding::Tflite), layer(Rounding::NearestEven));
    // Ties away from zero, as C's round: 2.5 steps -> 3, -2.5 -> -3.
    assert_eq!(requantize_one(5, -8, f, Rounding::Tflite, 0), (3, false));
    assert_eq!(requantize_one(-5, -8, f, Rounding::Tflite, 0), (-3, false));
}

#[test]
fn linear_with_a_real_output_format_requantizes_as_tflite() {
    // Input and weights 8 bits, scale 0 (step 2^-7): the accumulator is at
    // 2^-14. Output 8 bits, range 0.75 * 2^-2 (step 0.1875 / 128). TFLite's
    // real multiplier is 2^-14 / (0.1875 / 128) = 1/24 = (2/3) * 2^-4:
    // quantized_multiplier round(2/3 * 2^31) = 1431655765, shift -4.
    let (qm, shift) = quantize_multiplier(two_to(-14) / (0.1875 / 128.0));
    assert_eq!((qm, shift), (1_431_655_765, -4));
    const B: usize = 2;
    const IN: usize = 4;
    const OUT: usize = 3;
    let xq: [[i64; IN]; B] = [[3, 0, 0, 0], [100, -37, 127, -128]];
    let wq: [[i64; IN]; OUT] = [[4, 0, 0, 0], [-90, 55, 13, 127], [12, -1, -128, 33]];
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    let run = |rounding: Rounding| {
        let mut l = Linear::<IN, OUT, B>::new(1);
        l.use_bias = false;
        for (o, row) in wq.iter().enumerate() {
            for (i, &w) in row.iter().enumerate() {
                l.weight.master[o][i] = w as f32 / 128.0;
            }
        }
        l.weight.quant.cfg = QuantConfig::fixed(8, 0);
        let mut cfg = QuantConfig::fixed_real(8, -2, M075);
        cfg.rounding = rounding;
        l.out.quant.cfg = cfg;
        let mut x = Tensor::<S2<B, IN>>::zeros();
        for (b, row) in xq.iter().enumerate() {
            for (i, &v) in row.iter().enumerate() {
                x.flat_mut()[b * IN + i] = v as f32 / 128.0;
            }
        }
        x.fmt = Some(Format::new(8, 0).unwrap());
        l.forward(&bk, &ctx, &x).unwrap();
        l.output().flat().to_vec()
    };
    // Expected: integer dot products, TFLite's requantization, saturation
    // to 8 bits, value code * 0.1875 / 128.
    let mut want = Vec::new();
    for row in &xq {
        for w in &wq {
            let acc: i64 = row.iter().zip(w).map(|(a, b)| a * b).sum();
            let q = mbqm(acc as i32, qm, shift).clamp(-128, 127);
            want.push(q as f32 * 0.1875 / 128.0);
        }
    }
    // acc = 3 * 4 = 12 is exactly half a step (12 / 24): TFLite gives
    // srdhm(12, qm) = 8 (7.99999999), then 8 / 2^4 = 0.5 -> 1.
    assert_eq!(want[0], 0.1875 / 128.0);
    let got = run(Rounding::Tflite);
    assert_eq!(got, want);
    // One rounding of 12 * M_eff / 2^35 (just below 0.5) gives 0 instead.
    let away = run(Rounding::NearestAway);
    assert_eq!(away[0], 0.0);
    assert_ne!(away, want);
}

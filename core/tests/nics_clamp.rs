//! nics_fix_pt's clamp (`Clamp::Nics`): golden values at the clamp edge,
//! worked out by hand, and nics_fix_pt's float formula written out in f64
//! for many random inputs.
//!
//! nics_fix_pt (`quant.py`) computes, for `FIX_FIXED` and `FIX_AUTO`:
//!
//! ```text
//! step = 2^(scale - (bits - 1))
//! out  = clamp(round(x / step) * step, -2^scale, +2^scale)
//! ```
//!
//! with `torch.round` (ties to even) and `scale = ceil(log2(max |x|))`
//! for `FIX_AUTO`; the gradient is that of `torch.clamp` after a
//! straight-through round: it passes where `round(x / step) * step` lies in
//! `[-2^scale, 2^scale]`, bounds included.

use fixnn::quant::{self, mask, requantize_one, Stream};
use fixnn::{Clamp, Error, Format, Method, QuantConfig, RangeMethod, Rounder, Rounding};

fn nics(bits: u8, scale: i8) -> Format {
    Format::with_clamp(bits, scale, Clamp::Nics).unwrap()
}

fn nics_cfg(method: Method, bits: u8, scale: i8, rounding: Rounding) -> QuantConfig {
    QuantConfig {
        method,
        bits,
        scale,
        rounding,
        clamp: Clamp::Nics,
        ..QuantConfig::NONE
    }
}

/// `(codes, saturated flags)` of `x` in `f` with `rounding`.
fn codes(x: &[f32], f: Format, rounding: Rounding) -> (Vec<i16>, Vec<bool>) {
    let mut out = vec![0i16; x.len()];
    let mut m = vec![0u32; mask::words(x.len())];
    let r = Rounder::new(rounding, Stream::new(7, 1, 0));
    let n = quant::quantize_f32(x, f, &r, &mut out, Some(&mut m)).unwrap();
    let sat: Vec<bool> = (0..x.len()).map(|i| mask::is_set(&m, i)).collect();
    assert_eq!(n, sat.iter().filter(|&&s| s).count());
    (out, sat)
}

#[test]
fn two_bits_scale_minus_one_edge() {
    // step 0.25, codes -2..=2 (values -0.5..=0.5); the hardware stops at 1.
    let x = [0.5, 0.6, 0.625, 0.63, -0.5, -0.6, -0.63, 0.26];
    let n = nics(2, -1);
    let (c, s) = codes(&x, n, Rounding::NearestEven);
    // 2, 2.4 -> 2, 2.5 -> 2 (tie to even), 2.52 -> 3 -> 2 clamped, ...
    assert_eq!(c, [2, 2, 2, 2, -2, -2, -2, 1]);
    assert_eq!(s, [false, false, false, true, false, false, true, false]);
    let (c, s) = codes(&x, n, Rounding::NearestAway);
    // 2.5 -> 3 -> 2 clamped; -2.4 -> -2; -2.52 -> -3 -> -2 clamped.
    assert_eq!(c, [2, 2, 2, 2, -2, -2, -2, 1]);
    assert_eq!(s, [false, false, true, true, false, false, true, false]);
    let (c, s) = codes(&x, n, Rounding::Floor);
    // Floor never goes above 2 from below 3; -2.4 -> -3 -> -2 clamped.
    assert_eq!(c, [2, 2, 2, 2, -2, -2, -2, 1]);
    assert_eq!(s, [false, false, false, false, false, true, true, false]);
    // The hardware clamp on the same values.
    let h = Format::new(2, -1).unwrap();
    let (c, s) = codes(&x, h, Rounding::NearestEven);
    assert_eq!(c, [1, 1, 1, 1, -2, -2, -2, 1]);
    assert_eq!(s, [true, true, true, true, false, false, true, false]);
}

#[test]
fn eight_bits_scale_zero_edge() {
    // step 2^-7, codes -128..=128 (values -1..=1): code 128 needs 9 bits.
    let n = nics(8, 0);
    let t = 1.0 / 128.0;
    let x = [
        1.0,
        1.0 + t / 2.0,
        1.0 + 0.75 * t,
        1.0 - t,
        -1.0,
        -1.0 - t / 2.0,
        3.0,
    ];
    let (c, s) = codes(&x, n, Rounding::NearestEven);
    assert_eq!(c, [128, 128, 128, 127, -128, -128, 128]);
    assert_eq!(s, [false, false, true, false, false, false, true]);
    let (c, s) = codes(&x, n, Rounding::NearestAway);
    assert_eq!(c, [128, 128, 128, 127, -128, -128, 128]);
    assert_eq!(s, [false, true, true, false, false, true, true]);
    let (c, s) = codes(&x, n, Rounding::Floor);
    assert_eq!(c, [128, 128, 128, 127, -128, -128, 128]);
    assert_eq!(s, [false, false, false, false, false, true, true]);
    // Code 128 does not fit i8: refused, nothing written.
    let mut out = [5i8; 7];
    let r = Rounder::default();
    assert_eq!(
        quant::quantize_f32(&x, n, &r, &mut out, None),
        Err(Error::BitsExceedStorage {
            bits: 9,
            storage: 8
        })
    );
    assert_eq!(out, [5; 7]);
    // Seven bits (codes -64..=64) fit i8.
    let mut out = [0i8; 2];
    quant::quantize_f32(&[1.0, -1.0], nics(7, 0), &r, &mut out, None).unwrap();
    assert_eq!(out, [64, -64]);
}

#[test]
fn four_and_fifteen_bits_edges() {
    // 4 bits, scale 2: step 0.5, codes -8..=8 (values -4..=4).
    let n = nics(4, 2);
    let x = [4.2, 4.25, -4.25, 4.5, -4.0];
    let (c, s) = codes(&x, n, Rounding::NearestEven);
    assert_eq!(c, [8, 8, -8, 8, -8]);
    assert_eq!(s, [false, false, false, true, false]); // 8.4, 8.5 -> 8, -8.5 -> -8, 9
    let (_, s) = codes(&x, n, Rounding::NearestAway);
    assert_eq!(s, [false, true, true, true, false]);
    let (_, s) = codes(&x, n, Rounding::Floor);
    assert_eq!(s, [false, false, true, true, false]);
    // 15 bits, scale 3: step 2^-11, top code 2^14 = 16384 is 8.0.
    let n = nics(15, 3);
    let (c, s) = codes(&[8.0, -8.0, 8.0 + 1.0 / 2048.0], n, Rounding::NearestEven);
    assert_eq!(c, [16384, -16384, 16384]);
    assert_eq!(s, [false, false, true]);
    assert_eq!(n.to_f32(16384), 8.0);
}

#[test]
fn stochastic_rounding_at_the_edge() {
    // 2.5 steps: floor(2.5 + r) is 2 or 3; 3 clamps to 2. The value is
    // always 0.5, and the element counts as saturated exactly when the
    // draw rounded it up, which it does for some of 64 elements.
    let n = nics(2, -1);
    let x = [0.625f32; 64];
    let (c, s) = codes(&x, n, Rounding::Stochastic);
    assert!(c.iter().all(|&c| c == 2));
    let ups = s.iter().filter(|&&s| s).count();
    assert!(ups > 0 && ups < 64, "{ups}");
    // Exactly on the edge never saturates, whatever the draw.
    let (c, s) = codes(&[0.5f32; 64], n, Rounding::Stochastic);
    assert!(c.iter().all(|&c| c == 2) && s.iter().all(|&s| !s));
    // The integer path: 2.5 steps as an accumulator, each draw.
    for draw in [0u32, 1 << 31, u32::MAX] {
        let (q, sat) = requantize_one(5, -3, n, Rounding::Stochastic, draw);
        assert_eq!((q, sat), (2, draw >= 1 << 31));
    }
}

#[test]
fn accumulators_requantize_to_the_nics_range() {
    // 5-bit, scale 0: step 2^-4, codes -16..=16. Accumulators at 2^-8.
    let n = nics(5, 0);
    let acc = [256i32, 256 + 8, 256 + 9, -256 - 8, -256 - 9, 4096];
    let mut out = [0i8; 6];
    let mut m = [0u32; 1];
    let r = Rounder::new(Rounding::NearestEven, Stream::default());
    let sat = quant::requantize(&acc, -8, n, &r, &mut out, Some(&mut m)).unwrap();
    // 16, 16.5 -> 16, 16.56 -> 17 -> 16 clamped, -16.5 -> -16, -16.56 -> -17 clamped, 256 clamped.
    assert_eq!(out, [16, 16, 16, -16, -16, 16]);
    assert_eq!((sat, m[0]), (3, 0b110100));
}

#[test]
fn nics_gradient_test_case() {
    // nics_fix_pt's own gradient test: [0.5, 0.26], Auto, 2 bits. With
    // its clamp the result is [0.5, 0.25], nothing saturated; the
    // hardware clamp gives [0.25, 0.25] with the first value clamped.
    let mut cfg = nics_cfg(Method::Auto, 2, 0, Rounding::NearestEven);
    let mut x = [0.5f32, 0.26];
    let mut m = [0u32; 1];
    let rep =
        quant::fake_quantize_f32(&mut cfg, &mut x, &Rounder::default(), Some(&mut m)).unwrap();
    assert_eq!((cfg.scale, x, rep.saturated, m[0]), (-1, [0.5, 0.25], 0, 0));
    let mut cfg = QuantConfig::auto(2);
    let mut x = [0.5f32, 0.26];
    let rep =
        quant::fake_quantize_f32(&mut cfg, &mut x, &Rounder::default(), Some(&mut m)).unwrap();
    assert_eq!(
        (cfg.scale, x, rep.saturated, m[0]),
        (-1, [0.25, 0.25], 1, 1)
    );
}

#[test]
fn config_validation_and_json() {
    let c = nics_cfg(Method::Fixed, 16, 0, Rounding::NearestEven);
    assert!(matches!(c.validate(), Err(Error::Invalid { .. })));
    assert!(matches!(c.format(), Err(Error::Invalid { .. })));
    let c = nics_cfg(Method::Fixed, 15, 2, Rounding::Floor);
    assert_eq!(c.format().unwrap(), Some(nics(15, 2)));
    // Written only when nics; old JSON without the field reads as hardware.
    let mut buf = [0u8; 256];
    let k = serde_json_core::to_slice(&c, &mut buf).unwrap();
    let text = std::str::from_utf8(&buf[..k]).unwrap();
    assert!(
        text.ends_with(r#","group":"tensor","clamp":"nics"}"#),
        "{text}"
    );
    let (back, _): (QuantConfig, usize) = serde_json_core::from_str(text).unwrap();
    assert_eq!(back, c);
    let k = serde_json_core::to_slice(&QuantConfig::fixed(8, 0), &mut buf).unwrap();
    let text = std::str::from_utf8(&buf[..k]).unwrap();
    assert!(!text.contains("clamp"), "{text}");
    let (old, _): (QuantConfig, usize) =
        serde_json_core::from_str(r#"{"method":"fixed","bits":8,"scale":0}"#).unwrap();
    assert_eq!(old.clamp, Clamp::Hardware);
    let (hw, _): (QuantConfig, usize) =
        serde_json_core::from_str(r#"{"method":"fixed","bits":8,"scale":0,"clamp":"hardware"}"#)
            .unwrap();
    assert_eq!(hw, old);
    assert!(serde_json_core::from_str::<QuantConfig>(
        r#"{"method":"fixed","bits":8,"scale":0,"clamp":"torch"}"#
    )
    .is_err());
}

/// A small deterministic generator for the random tests.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 32) as u32
    }
}

/// nics_fix_pt's formula in f64: `(value, gradient passes)` of `x`.
fn nics_f64(x: f32, bits: u8, scale: i32) -> (f64, bool) {
    let step = 2f64.powi(scale - (bits as i32 - 1));
    let bound = 2f64.powi(scale);
    let y = (x as f64 / step).round_ties_even() * step;
    (y.clamp(-bound, bound), (-bound..=bound).contains(&y))
}

/// A value near the clamp edges or anywhere in the range, or beyond it.
fn sample(g: &mut Lcg, bits: u8, scale: i32) -> f32 {
    let bound = 2f64.powi(scale);
    let step = 2f64.powi(scale - (bits as i32 - 1));
    let u = g.next() as f64 / 4_294_967_296.0;
    let v = match g.next() % 4 {
        // Within a few steps of either edge, on and between half steps.
        0 => bound + ((g.next() % 17) as f64 - 8.0) * step / 4.0,
        1 => -bound + ((g.next() % 17) as f64 - 8.0) * step / 4.0,
        2 => (2.0 * u - 1.0) * bound * 1.5,
        _ => (2.0 * u - 1.0) * bound,
    };
    v as f32
}

#[test]
fn fixed_matches_the_nics_formula_in_f64() {
    let mut g = Lcg(42);
    let n = if cfg!(miri) { 50 } else { 4000 };
    for case in 0..n {
        let bits = 2 + (g.next() % 14) as u8; // 2..=15
        let scale = (g.next() % 17) as i32 - 8;
        let mut cfg = nics_cfg(Method::Fixed, bits, scale as i8, Rounding::NearestEven);
        let x: Vec<f32> = (0..16).map(|_| sample(&mut g, bits, scale)).collect();
        let mut y = x.clone();
        let mut m = [0u32; 1];
        let rep =
            quant::fake_quantize_f32(&mut cfg, &mut y, &Rounder::default(), Some(&mut m)).unwrap();
        let mut clamped = 0;
        for (i, (&xi, &yi)) in x.iter().zip(&y).enumerate() {
            let (want, passes) = nics_f64(xi, bits, scale);
            assert_eq!(
                yi as f64, want,
                "case {case}: {xi} at {bits} bits scale {scale}"
            );
            assert_eq!(mask::is_set(&m, i), !passes, "case {case}: mask of {xi}");
            clamped += !passes as usize;
        }
        assert_eq!(rep.saturated, clamped);
    }
}

#[test]
fn auto_matches_the_nics_formula_in_f64() {
    let mut g = Lcg(7);
    let n = if cfg!(miri) { 50 } else { 3000 };
    for case in 0..n {
        let bits = 2 + (g.next() % 14) as u8;
        let e = (g.next() % 13) as i32 - 6;
        let x: Vec<f32> = (0..1 + g.next() % 24)
            .map(|_| sample(&mut g, bits, e))
            .filter(|v| *v != 0.0)
            .collect();
        if x.is_empty() {
            continue;
        }
        // FIX_AUTO: scale = ceil(log2(max |x|)), in f64.
        let max = x.iter().map(|v| (*v as f64).abs()).fold(0.0, f64::max);
        let scale = max.log2().ceil() as i32;
        let mut cfg = nics_cfg(Method::Auto, bits, 0, Rounding::NearestEven);
        let mut y = x.clone();
        quant::fake_quantize_f32(&mut cfg, &mut y, &Rounder::default(), None).unwrap();
        assert_eq!(cfg.scale as i32, scale, "case {case}: {x:?}");
        for (&xi, &yi) in x.iter().zip(&y) {
            assert_eq!(yi as f64, nics_f64(xi, bits, scale).0, "case {case}: {xi}");
        }
    }
}

#[test]
fn sweep_measures_error_with_the_nics_clamp() {
    // Brute force in f64: of s, s-1, s-2 the one with the least total
    // absolute error of nics_fix_pt's formula (ties keep the larger).
    let mut g = Lcg(99);
    let n = if cfg!(miri) { 20 } else { 1500 };
    let mut differs = 0;
    for case in 0..n {
        let bits = 2 + (g.next() % 6) as u8;
        let e = (g.next() % 5) as i32 - 2;
        let x: Vec<f32> = (0..1 + g.next() % 12)
            .map(|_| sample(&mut g, bits, e))
            .collect();
        let max = x.iter().map(|v| (*v as f64).abs()).fold(0.0, f64::max);
        if max == 0.0 {
            continue;
        }
        let top = max.log2().ceil() as i32;
        let err = |s: i32| -> f64 {
            x.iter()
                .map(|&v| (nics_f64(v, bits, s).0 - v as f64).abs())
                .sum()
        };
        let mut best = (top, err(top));
        for s in [top - 1, top - 2] {
            let e = err(s);
            if e < best.1 {
                best = (s, e);
            }
        }
        let mut cfg = nics_cfg(Method::Auto, bits, 0, Rounding::NearestEven);
        cfg.range = RangeMethod::Sweep;
        cfg.update_scale_f32(&x).unwrap();
        assert_eq!(
            cfg.scale as i32, best.0,
            "case {case}: {x:?} at {bits} bits"
        );
        let mut hw = QuantConfig::auto(bits);
        hw.range = RangeMethod::Sweep;
        hw.update_scale_f32(&x).unwrap();
        differs += (hw.scale != cfg.scale) as u32;
    }
    // The clamp changes the choice for some inputs.
    assert!(differs > 0);
}

//! Scalar requantization: an exact integer `v * 2^exp` to a code of a
//! [`Format`], with explicit rounding and saturation.
//!
//! This is the one place where bits are dropped. f32 input is first split
//! into its exact integer significand and exponent ([`decompose_f32`]), so
//! quantizing f32 and requantizing integers share this code and there is no
//! float rounding anywhere.

use core::num::NonZeroU32;

use super::config::Rounding;
use super::format::Format;

/// `true` only in builds with the feature `fault-ties-to-odd`: a
/// deliberately wrong `NearestEven` that rounds ties to the odd neighbour.
/// It exists so the device test suite can prove that it catches a changed
/// rounding rule; never enable it otherwise.
const TIES_TO_ODD: bool = cfg!(feature = "fault-ties-to-odd");

/// The tie rule of `NearestEven`: round a tie up iff the lower neighbour
/// (`floor`) is odd (inverted by the test-only fault feature).
#[inline(always)]
const fn tie_up(floor_is_odd: bool) -> bool {
    floor_is_odd != TIES_TO_ODD
}

/// The value of `v * 2^exp` rounded to a code of `format`.
///
/// * `shift = format.step_exp() - exp`. If `shift <= 0` the value is exact
///   (`v << -shift`); otherwise the low `shift` bits are dropped with `rounding`:
///   * `NearestEven`, `NearestAway`: to the nearest code, ties as named;
///   * `Floor`: toward minus infinity (arithmetic shift);
///   * `Stochastic`: `floor((v + r) / 2^shift)` with `r` uniform in
///     `[0, 2^shift)` made from `draw`: `r = draw >> (32 - shift)` for
///     `shift <= 32`, `r = draw << (shift - 32)` above (32 random bits are
///     the resolution of the probability).
/// * The result saturates to `[min_code, max_code]`.
///
/// Returns `(code, saturated)`. Never panics: every intermediate fits
/// `i128` (shifts above 96 give the same result as 96, and are clamped).
///
/// # Examples
///
/// ```
/// use fixnn::{Format, Rounding};
/// use fixnn::quant::requantize_one;
/// let f = Format::new(8, 0)?; // step 2^-7
/// // 2.5 steps, accumulated at exponent -8: 5 * 2^-8
/// assert_eq!(requantize_one(5, -8, f, Rounding::NearestEven, 0), (2, false));
/// assert_eq!(requantize_one(5, -8, f, Rounding::NearestAway, 0), (3, false));
/// assert_eq!(requantize_one(-5, -8, f, Rounding::Floor, 0), (-3, false));
/// assert_eq!(requantize_one(1000, -7, f, Rounding::Floor, 0), (127, true));
/// # Ok::<(), fixnn::Error>(())
/// ```
pub fn requantize_one(
    v: i64,
    exp: i32,
    format: Format,
    rounding: Rounding,
    draw: u32,
) -> (i32, bool) {
    let shift = format.step_exp() as i64 - exp as i64;
    if (1..=62).contains(&shift) {
        // The common case in 64-bit arithmetic (same results as the wide path).
        if let Some(q) = shift_right_round_i64(v, shift as u32, rounding, draw) {
            return format.saturate(q as i128);
        }
    }
    let v = v as i128;
    let q = if shift <= 0 {
        let left = -shift;
        if v == 0 {
            0
        } else if left >= 48 {
            // |v| >= 1, so |v| * 2^48 is far outside any 16-bit code range.
            if v < 0 {
                i128::MIN / 2
            } else {
                i128::MAX / 2
            }
        } else {
            v << left
        }
    } else {
        shift_right_round(v, shift.min(96) as u32, rounding, draw)
    };
    format.saturate(q)
}

/// The value of `v * 2^exp / div` rounded to a code of `format`: the
/// rational counterpart of [`requantize_one`] (an average of codes, for
/// example), every rounding applied to the exact quotient.
///
/// With `x = v * 2^(exp - format.step_exp()) / div` the exact value in steps:
/// * `NearestEven`, `NearestAway`: the nearest integer to `x`, ties as named;
/// * `Floor`: `floor(x)`;
/// * `Stochastic`: `floor((floor(x * 2^32) + draw) / 2^32)`: `x` truncated
///   to 32 fraction bits plus the 32-bit draw, then floor. It rounds up with
///   probability `floor(frac(x) * 2^32) / 2^32`, within `2^-32` of `frac(x)`.
///   For `div = 1` this is exactly [`requantize_one`]'s rule;
/// * the result saturates to `[min_code, max_code]`.
///
/// For `div = 2^j` the result equals `requantize_one(v, exp - j, ..)` for
/// every input and draw. Returns `(code, saturated)`. Never panics: every
/// intermediate fits `i128`/`u128` (a quotient below `2^-33` steps, or above
/// `2^30` steps, is decided by its sign alone, which gives the same result).
///
/// # Examples
///
/// ```
/// use core::num::NonZeroU32;
/// use fixnn::{Format, Rounding};
/// use fixnn::quant::requantize_ratio;
/// let f = Format::new(8, 7)?; // step 1
/// let nine = NonZeroU32::new(9).unwrap();
/// // 13 / 9 = 1.44..., -13 / 9 = -1.44...
/// assert_eq!(requantize_ratio(13, 0, nine, f, Rounding::NearestEven, 0), (1, false));
/// assert_eq!(requantize_ratio(-13, 0, nine, f, Rounding::Floor, 0), (-2, false));
/// // 27 / 18 = 1.5 exactly: a tie
/// let e18 = NonZeroU32::new(18).unwrap();
/// assert_eq!(requantize_ratio(27, 0, e18, f, Rounding::NearestEven, 0), (2, false));
/// assert_eq!(requantize_ratio(-27, 0, e18, f, Rounding::NearestAway, 0), (-2, false));
/// # Ok::<(), fixnn::Error>(())
/// ```
pub fn requantize_ratio(
    v: i64,
    exp: i32,
    div: NonZeroU32,
    format: Format,
    rounding: Rounding,
    draw: u32,
) -> (i32, bool) {
    if v == 0 {
        return (0, false);
    }
    let d = div.get() as i128;
    let left = exp as i64 - format.step_exp() as i64; // x = v * 2^left / d
    let (num, den) = if left >= 0 {
        // |x| >= 2^62 / 2^32 saturates whatever the shift above 62.
        ((v as i128) << left.min(62), d)
    } else {
        let right = -left;
        let d_bits = 128 - d.leading_zeros() as i64;
        if right + d_bits > 96 {
            // den >= 2^96: |x| < 2^63 / 2^96 = 2^-33.
            let q = match (rounding, v < 0) {
                (_, false)
                | (Rounding::NearestEven | Rounding::NearestAway | Rounding::Tflite, true) => 0,
                (Rounding::Floor, true) => -1,
                (Rounding::Stochastic, true) => -((draw == 0) as i128),
            };
            return format.saturate(q);
        }
        (v as i128, d << right)
    };
    // den < 2^96 and |num| < 2^125 from here on.
    // den >= 1, so neither division can fail; the checked forms leave no
    // panic path behind (an impossible failure would give 0). When both
    // fit `i64` (an f32's 24-bit significand over a real-valued scale's
    // multiplier, the common case) the `i64` division gives the same
    // floor and remainder at a fraction of the cost of the `i128` one.
    let (floor, rem) = match (i64::try_from(num), i64::try_from(den)) {
        (Ok(n), Ok(d)) => (
            n.checked_div_euclid(d).unwrap_or(0) as i128,
            n.checked_rem_euclid(d).unwrap_or(0) as i128,
        ),
        _ => (
            num.checked_div_euclid(den).unwrap_or(0),
            num.checked_rem_euclid(den).unwrap_or(0),
        ),
    }; // rem in [0, den)
    round_quotient(floor, rem, den, format, rounding, draw)
}

/// The code of the exact quotient `floor + rem / den` (`den >= 1`, `rem` in
/// `[0, den)`): [`requantize_ratio`]'s rounding and saturation, shared with
/// the division-free path of
/// [`RealFormat::round_f32`](super::RealFormat::round_f32).
#[inline]
pub(super) fn round_quotient(
    floor: i128,
    rem: i128,
    den: i128,
    format: Format,
    rounding: Rounding,
    draw: u32,
) -> (i32, bool) {
    let up = match rounding {
        Rounding::Floor => false,
        Rounding::NearestEven => 2 * rem > den || (2 * rem == den && tie_up(floor & 1 == 1)),
        // A tie is floor + 0.5: away from zero is up iff that is positive.
        Rounding::NearestAway | Rounding::Tflite => 2 * rem > den || (2 * rem == den && floor >= 0),
        Rounding::Stochastic => {
            let frac32 = ((rem as u128) << 32).checked_div(den as u128).unwrap_or(0); // < 2^32
            frac32 + draw as u128 >= 1 << 32
        }
    };
    format.saturate(floor + up as i128)
}

/// [`shift_right_round`] in `i64` for `1 <= shift <= 62`; `None` if the
/// stochastic addend would overflow (the caller then uses the wide path).
#[inline]
fn shift_right_round_i64(v: i64, shift: u32, rounding: Rounding, draw: u32) -> Option<i64> {
    let floor = v >> shift;
    let rem = v & ((1i64 << shift) - 1); // v - floor * 2^shift, in [0, 2^shift)
    let half = 1i64 << (shift - 1);
    Some(match rounding {
        Rounding::Floor => floor,
        Rounding::NearestEven => {
            floor + (rem > half || (rem == half && tie_up(floor & 1 == 1))) as i64
        }
        Rounding::NearestAway | Rounding::Tflite => {
            floor + (rem > half || (rem == half && floor >= 0)) as i64
        }
        Rounding::Stochastic => {
            let r = if shift <= 32 {
                (draw >> (32 - shift)) as i64
            } else {
                (draw as i64) << (shift - 32)
            };
            v.checked_add(r)? >> shift
        }
    })
}

/// Round the f32 `x` to a code of `format`: the same result as
/// [`requantize_one`] on `x`'s exact significand and exponent.
///
/// Fast path (nearest and floor rounding): `y = x * 2^(bits - 1 - scale)`
/// is exact when it is a normal f32 (or zero), and for `|y| < 2^16` its
/// integer and fractional parts are exact too, so rounding them is exact.
/// Everything else (stochastic rounding, subnormal or huge `y`, NaN) takes
/// the exact integer path; NaN and infinities round as 0.
#[inline]
pub fn round_f32(x: f32, format: Format, rounding: Rounding, draw: u32) -> (i32, bool) {
    let k = -format.step_exp();
    if rounding != Rounding::Stochastic && (-126..=127).contains(&k) {
        let y = x * super::format::pow2_f32(k);
        let a = y.abs();
        if a < 65536.0 && (a >= f32::MIN_POSITIVE || x == 0.0) {
            return format.saturate(round_exact_f32(y, rounding) as i128);
        }
    }
    let (m, e) = decompose_f32(x).unwrap_or((0, 0));
    requantize_one(m, e, format, rounding, draw)
}

/// Round `y` (a normal f32 or zero with `|y| < 2^16`, so that its integer
/// and fractional parts are exact) with a non-stochastic `rounding`.
#[inline]
pub(crate) fn round_exact_f32(y: f32, rounding: Rounding) -> i32 {
    let t = y as i32; // toward zero, exact
    let r = y - t as f32; // the exact fraction, in (-1, 1)
    match rounding {
        Rounding::Floor => t - (r < 0.0) as i32,
        Rounding::NearestAway | Rounding::Tflite => t + (r >= 0.5) as i32 - (r <= -0.5) as i32,
        Rounding::NearestEven | Rounding::Stochastic => {
            // Nearest, ties to even.
            if r > 0.5 || (r == 0.5 && tie_up(t & 1 == 1)) {
                t + 1
            } else if r < -0.5 || (r == -0.5 && tie_up(t & 1 == 1)) {
                t - 1
            } else {
                t
            }
        }
    }
}

/// `v / 2^shift` rounded to an integer; `1 <= shift <= 96`, `|v| < 2^126`
/// (so that the stochastic addend, below `2^96`, cannot overflow).
pub(crate) fn shift_right_round(v: i128, shift: u32, rounding: Rounding, draw: u32) -> i128 {
    let floor = v >> shift;
    let rem = v - (floor << shift); // in [0, 2^shift)
    let half = 1i128 << (shift - 1);
    match rounding {
        Rounding::Floor => floor,
        Rounding::NearestEven => {
            if rem > half || (rem == half && tie_up(floor & 1 == 1)) {
                floor + 1
            } else {
                floor
            }
        }
        Rounding::NearestAway | Rounding::Tflite => {
            // A tie is floor + 0.5: away from zero is up iff that is positive.
            if rem > half || (rem == half && floor >= 0) {
                floor + 1
            } else {
                floor
            }
        }
        Rounding::Stochastic => {
            let r = if shift <= 32 {
                (draw >> (32 - shift)) as i128
            } else {
                (draw as i128) << (shift - 32)
            };
            (v + r) >> shift
        }
    }
}

/// Split a finite f32 into `(m, e)` with `x == m * 2^e` exactly, `|m| < 2^24`.
///
/// Returns `None` for NaN and infinities. `±0.0` gives `(0, -149)`.
pub fn decompose_f32(x: f32) -> Option<(i64, i32)> {
    let bits = x.to_bits();
    let biased = ((bits >> 23) & 0xff) as i32;
    let frac = (bits & 0x7f_ffff) as i64;
    let (m, e) = match biased {
        0xff => return None,
        0 => (frac, -149),
        _ => (frac | 1 << 23, biased - 150),
    };
    Some((if bits >> 31 == 1 { -m } else { m }, e))
}

/// `ceil(log2(|m| * 2^e))` for `m != 0`; `None` for `m == 0`.
pub(crate) fn ceil_log2_abs(m: i64, e: i32) -> Option<i32> {
    let a = m.unsigned_abs();
    if a == 0 {
        return None;
    }
    let c = if a == 1 {
        0
    } else {
        64 - (a - 1).leading_zeros() as i32
    };
    Some(e + c)
}

/// `floor(m * 2^e / 2^grid)`: the value on the integer grid of step `2^grid`.
///
/// The caller guarantees the result fits (`|m * 2^(e - grid)| < 2^62`).
pub(crate) fn to_grid(m: i64, e: i32, grid: i32) -> i64 {
    let d = e as i64 - grid as i64;
    if d >= 0 {
        m << d.min(62)
    } else if d <= -63 {
        if m < 0 {
            -1
        } else {
            0
        }
    } else {
        m >> (-d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `2^e` as an f64 built from its bits (`-1022 <= e <= 1023`): exact
    /// everywhere, where `powi` is not required to be (and is not under Miri).
    fn two_to(e: i32) -> f64 {
        f64::from_bits(((e + 1023) as u64) << 52)
    }

    #[test]
    fn decompose_is_exact() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            -1.5,
            0.2513,
            f32::MIN_POSITIVE,
            1e-45,
            f32::MAX,
            -3e38,
        ] {
            let (m, e) = decompose_f32(x).unwrap();
            assert_eq!(m as f64 * two_to(e), x as f64, "{x}");
            assert!(m.unsigned_abs() < 1 << 24);
        }
        assert_eq!(decompose_f32(f32::NAN), None);
        assert_eq!(decompose_f32(f32::NEG_INFINITY), None);
    }

    #[test]
    fn ceil_log2_examples() {
        assert_eq!(ceil_log2_abs(1, 0), Some(0));
        assert_eq!(ceil_log2_abs(-3, 0), Some(2));
        assert_eq!(ceil_log2_abs(4, -3), Some(-1));
        assert_eq!(ceil_log2_abs(5, -3), Some(0));
        assert_eq!(ceil_log2_abs(i64::MIN, 0), Some(63));
        assert_eq!(ceil_log2_abs(0, 7), None);
    }

    #[test]
    fn f32_fast_path_equals_the_exact_path() {
        let s = crate::quant::Stream::new(3, 4, 5);
        let mut xs: std::vec::Vec<f32> =
            std::vec![0.0, -0.0, 0.5, -0.5, 1.5, -2.5, 1e-40, -1e-40, -1.6e-32, 65535.5, 3e38];
        // Miri interprets every operation: a sample of the sweep there.
        let n = if cfg!(miri) { 2_000 } else { 200_000u32 };
        for i in 0..n {
            let d = s.draw(i);
            xs.push(f32::from_bits(d));
            xs.push((d as i32 as f32) / 65536.0);
            xs.push(((d % 4096) as f32 - 2048.0) * 0.125);
        }
        for (j, &x) in xs.iter().enumerate() {
            if !x.is_finite() {
                continue;
            }
            let bits = 2 + (j % 15) as u8;
            let clamp = if bits < 16 && j % 3 == 0 {
                crate::quant::Clamp::Nics
            } else {
                crate::quant::Clamp::Hardware
            };
            let f = Format::with_clamp(bits, ((j * 7) % 256) as u8 as i8, clamp).unwrap();
            let (m, e) = decompose_f32(x).unwrap();
            for r in [
                Rounding::NearestEven,
                Rounding::NearestAway,
                Rounding::Floor,
                Rounding::Stochastic,
            ] {
                let d = s.draw(j as u32);
                assert_eq!(
                    round_f32(x, f, r, d),
                    requantize_one(m, e, f, r, d),
                    "{x} {f:?} {r:?}"
                );
            }
        }
    }

    #[test]
    fn halves_round_as_named() {
        // v / 2 for v = -5..=5: -2.5, -2, -1.5, ..., 2.5
        let f = Format::new(8, 7).unwrap(); // step 1
        let table = [
            (Rounding::NearestEven, [-2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2]),
            (
                Rounding::NearestAway,
                [-3, -2, -2, -1, -1, 0, 1, 1, 2, 2, 3],
            ),
            (Rounding::Floor, [-3, -2, -2, -1, -1, 0, 0, 1, 1, 2, 2]),
        ];
        for (r, want) in table {
            let got: std::vec::Vec<i32> =
                (-5..=5).map(|v| requantize_one(v, -1, f, r, 0).0).collect();
            assert_eq!(got, want, "{r:?}");
        }
        // Stochastic with the smallest and largest draw: floor and ceiling.
        for v in -5..=5i64 {
            let lo = requantize_one(v, -1, f, Rounding::Stochastic, 0).0;
            let hi = requantize_one(v, -1, f, Rounding::Stochastic, u32::MAX).0;
            assert_eq!(
                (lo, hi),
                (v.div_euclid(2) as i32, (v + 1).div_euclid(2) as i32)
            );
        }
    }

    #[test]
    fn extreme_shifts_do_not_panic() {
        let f = Format::new(16, 0).unwrap();
        for r in [
            Rounding::NearestEven,
            Rounding::NearestAway,
            Rounding::Floor,
            Rounding::Stochastic,
        ] {
            for v in [i64::MIN, -1, 0, 1, i64::MAX] {
                for exp in [i32::MIN, -10_000, -200, 0, 200, i32::MAX] {
                    let (q, _) = requantize_one(v, exp, f, r, u32::MAX);
                    assert!((-32768..=32767).contains(&q));
                }
            }
        }
        // Tiny negative values floor to -1, tiny positive ones to 0.
        assert_eq!(
            requantize_one(-1, -1000, f, Rounding::Floor, 0),
            (-1, false)
        );
        assert_eq!(requantize_one(1, -1000, f, Rounding::Floor, 0), (0, false));
        assert_eq!(
            requantize_one(1, 1000, f, Rounding::Floor, 0),
            (32767, true)
        );
    }

    const ALL: [Rounding; 4] = [
        Rounding::NearestEven,
        Rounding::NearestAway,
        Rounding::Floor,
        Rounding::Stochastic,
    ];

    fn nz(d: u32) -> NonZeroU32 {
        NonZeroU32::new(d).unwrap()
    }

    #[test]
    fn ratio_matches_an_f64_reference() {
        // |x| <= 2^24 and den < 2^17: f64 division cannot move x across an
        // integer or a half, so its floor and roundings are the exact ones.
        let f = Format::new(16, 15).unwrap(); // step 1
                                              // Miri interprets every operation: a sample of the grid there.
        let miri = cfg!(miri);
        for d in (1..=20u32).filter(|d| !miri || d % 7 == 1) {
            for exp in (-12..=12).filter(|e| !miri || e % 6 == 0) {
                let vs = (-300i64..=300).step_by(if miri { 37 } else { 1 });
                for v in vs.chain([4095, -4096, 1234, -777]) {
                    let x = v as f64 * two_to(exp) / d as f64;
                    for (r, want) in [
                        (Rounding::NearestEven, x.round_ties_even()),
                        (Rounding::NearestAway, x.round()),
                        (Rounding::Floor, x.floor()),
                    ] {
                        let got = requantize_ratio(v, exp, nz(d), f, r, 0);
                        assert_eq!(got, f.saturate(want as i128), "{v} 2^{exp} / {d} {r:?}");
                    }
                    // Stochastic: floor with draw 0, ceiling with the largest draw.
                    let lo = requantize_ratio(v, exp, nz(d), f, Rounding::Stochastic, 0);
                    let hi = requantize_ratio(v, exp, nz(d), f, Rounding::Stochastic, u32::MAX);
                    assert_eq!(lo, f.saturate(x.floor() as i128));
                    assert_eq!(hi, f.saturate(x.ceil() as i128));
                }
            }
        }
    }

    #[test]
    fn ratio_by_a_power_of_two_is_requantize_one() {
        let s = super::super::Stream::new(3, 4, 5);
        let f = Format::new(6, 0).unwrap();
        for j in 0..=31u32 {
            for (k, v) in [-1000i64, -33, -1, 1, 7, 64, 999, i64::MIN, i64::MAX]
                .into_iter()
                .enumerate()
            {
                for exp in [
                    i32::MIN,
                    -300,
                    -130,
                    -90,
                    -40,
                    -9,
                    -3,
                    0,
                    5,
                    60,
                    300,
                    i32::MAX,
                ] {
                    for r in ALL {
                        let draw = s.draw((j * 1000 + k as u32) ^ exp as u32);
                        let want = requantize_one(v, exp.saturating_sub(j as i32), f, r, draw);
                        let got = requantize_ratio(v, exp, nz(1 << j), f, r, draw);
                        assert_eq!(got, want, "{v} 2^{exp} / 2^{j} {r:?} draw {draw}");
                    }
                }
            }
        }
    }

    #[test]
    fn ratio_stochastic_rounds_up_with_the_fraction() {
        // 1/3 and 2/3 of a step: rounds up in about a third / two thirds of the draws.
        let f = Format::new(8, 7).unwrap();
        let s = super::super::Stream::new(9, 1, 0);
        // (Miri interprets every operation: fewer draws there.)
        let n = if cfg!(miri) { 3_000 } else { 30_000u32 };
        for (v, p) in [(1i64, 1.0 / 3.0), (2, 2.0 / 3.0), (-1, 2.0 / 3.0)] {
            let ups = (0..n)
                .filter(|&i| {
                    let (q, _) = requantize_ratio(v, 0, nz(3), f, Rounding::Stochastic, s.draw(i));
                    q == (v as f64 / 3.0).ceil() as i32
                })
                .count() as f64;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            assert!((ups - n as f64 * p).abs() < 6.0 * sigma, "{v}/3: {ups}");
        }
    }

    #[test]
    fn ratio_extremes_do_not_panic() {
        let f = Format::new(16, 0).unwrap();
        for r in ALL {
            for v in [i64::MIN, -1, 0, 1, i64::MAX] {
                for exp in [i32::MIN, -10_000, -200, 0, 200, i32::MAX] {
                    for d in [1, 3, 1 << 31, u32::MAX] {
                        for draw in [0, u32::MAX] {
                            let (q, _) = requantize_ratio(v, exp, nz(d), f, r, draw);
                            assert!((-32768..=32767).contains(&q));
                        }
                    }
                }
            }
        }
        assert_eq!(
            requantize_ratio(-1, -1000, nz(7), f, Rounding::Floor, 0),
            (-1, false)
        );
        assert_eq!(
            requantize_ratio(1, 1000, nz(u32::MAX), f, Rounding::Floor, 0),
            (32767, true)
        );
    }
}

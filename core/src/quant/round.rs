//! Scalar requantization: an exact integer `v * 2^exp` to a code of a
//! [`Format`], with explicit rounding and saturation.
//!
//! This is the one place where bits are dropped. f32 input is first split
//! into its exact integer significand and exponent ([`decompose_f32`]), so
//! quantizing f32 and requantizing integers share this code and there is no
//! float rounding anywhere.

use super::config::Rounding;
use super::format::Format;

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

/// `v / 2^shift` rounded to an integer; `1 <= shift <= 96`, `|v| < 2^63`.
fn shift_right_round(v: i128, shift: u32, rounding: Rounding, draw: u32) -> i128 {
    let floor = v >> shift;
    let rem = v - (floor << shift); // in [0, 2^shift)
    let half = 1i128 << (shift - 1);
    match rounding {
        Rounding::Floor => floor,
        Rounding::NearestEven => {
            if rem > half || (rem == half && floor & 1 == 1) {
                floor + 1
            } else {
                floor
            }
        }
        Rounding::NearestAway => {
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
            assert_eq!(m as f64 * 2f64.powi(e), x as f64, "{x}");
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
}

//! Requantizing slices of integer accumulators `acc * 2^exp` to the f32
//! values of codes of a power-of-two [`Format`] (the layers' outputs and
//! gradients computed from integer products).
//!
//! The result of every element is exactly [`Rounder::round`] followed by
//! [`Format::to_f32`] (the reference, element by element). The common case
//! takes a 32-bit path: when every accumulator lies in `[-2^30, 2^30)` and
//! the shift `s = step_exp - exp` is in `1..=30`, the rounding of `v / 2^s`
//! is done in 32-bit registers:
//!
//! * `Floor`: `v >> s`;
//! * `NearestEven`, `NearestAway`, `Tflite`: `(v + 2^(s-1) - 1 + t) >> s`,
//!   `t` the tie rule (the floor `v >> s` is odd, or non-negative): the
//!   sum reaches the next multiple of `2^s` exactly when the remainder is
//!   above half a step, or at half a step and the tie goes up;
//! * `Stochastic` (`s >= 2`): the reference's `floor((v + r) / 2^s)`,
//!   `r = draw >> (32 - s)`, as the high word of `v * 2^(32 - s) + draw`
//!   (one multiply-accumulate into 64 bits: adding the draw's `32 - s` low
//!   bits too cannot carry past a multiple of `2^32`, since `v * 2^(32 -
//!   s)` is one).
//!
//! With `|v| <= 2^30` and the addends below `2^30`, no sum leaves `i32`, so
//! these are the reference's integers, with the cheap operations of a
//! 32-bit core. Everything else (other shifts, larger accumulators) takes
//! the reference path.

use super::config::Rounding;
use super::format::{pow2_f32, Format};
use super::Rounder;

/// `true` only in builds with the test-only feature `fault-ties-to-odd`
/// (see `round.rs`): `NearestEven` rounds ties to the odd neighbour.
const TIES_TO_ODD: bool = cfg!(feature = "fault-ties-to-odd");

/// Whether every accumulator of `acc` lies in `[-2^30, 2^30)`.
#[inline]
pub(crate) fn fits_i31(acc: &[i64]) -> bool {
    // Bits 30 to 63 all equal the sign: the high word is the sign of the
    // low word, and so is bit 30 of the low word (no branch, vectorises).
    let mut bad = 0u32;
    for &a in acc {
        let (lo, hi) = (a as i32, (a >> 32) as i32);
        bad |= (hi ^ (lo >> 31)) as u32 | ((lo ^ (lo << 1)) as u32 >> 31);
    }
    bad == 0
}

/// `dst[i] = format.to_f32(code)` with `(code, clamped) = rounder.round(i,
/// acc[i], exp, format)`; records `clamped` in `sat` if given (same
/// length); returns the number clamped. `dst` and `acc` have the same
/// length (checked by the callers; the shorter one bounds the pass).
pub(crate) fn requantize_values_into(
    acc: &[i64],
    exp: i32,
    format: Format,
    rounder: &Rounder,
    dst: &mut [f32],
    sat: Option<&mut [bool]>,
) -> u64 {
    let shift = format.step_exp() as i64 - exp as i64;
    // (Stochastic rounding by one bit is left to the reference: the fast
    // path's factor `2^(32 - s)` must fit `i32`.)
    let lowest = if rounder.rounding == Rounding::Stochastic {
        2
    } else {
        1
    };
    if (lowest..=30).contains(&shift) && fits_i31(acc) {
        let sat: &mut [bool] = sat.unwrap_or_default();
        return fast(acc, shift as u32, format, rounder, dst, sat);
    }
    reference(acc, exp, format, rounder, dst, sat)
}

/// The element-by-element reference.
pub(crate) fn reference(
    acc: &[i64],
    exp: i32,
    format: Format,
    rounder: &Rounder,
    dst: &mut [f32],
    mut sat: Option<&mut [bool]>,
) -> u64 {
    let mut n = 0;
    for (i, (d, &a)) in dst.iter_mut().zip(acc).enumerate() {
        let (q, clamped) = rounder.round(i, a, exp, format);
        *d = format.to_f32(q);
        n += clamped as u64;
        if let Some(s) = sat.as_deref_mut().and_then(|s| s.get_mut(i)) {
            *s = clamped;
        }
    }
    n
}

/// The 32-bit path: every `acc` in `[-2^30, 2^30)`, `1 <= s <= 30`.
/// `sat` is empty (no flags) or as long as `acc`.
fn fast(
    acc: &[i64],
    s: u32,
    format: Format,
    rounder: &Rounder,
    dst: &mut [f32],
    sat: &mut [bool],
) -> u64 {
    let half_m1 = (1i32 << (s - 1)) - 1;
    let k = Consts {
        lo: format.min_code(),
        hi: format.max_code(),
        step: pow2_f32(format.step_exp()),
    };
    if sat.is_empty() {
        by_mode::<false>(acc, s, half_m1, k, rounder, dst, sat)
    } else {
        by_mode::<true>(acc, s, half_m1, k, rounder, dst, sat)
    }
}

/// [`fast`] for the rounding mode, with or without clamp flags.
#[inline(always)]
fn by_mode<const FLAGS: bool>(
    acc: &[i64],
    s: u32,
    half_m1: i32,
    k: Consts,
    rounder: &Rounder,
    dst: &mut [f32],
    sat: &mut [bool],
) -> u64 {
    match rounder.rounding {
        Rounding::Floor => map::<FLAGS>(acc, dst, sat, k, |_, v| v >> s),
        Rounding::NearestEven => map::<FLAGS>(acc, dst, sat, k, |_, v| {
            let t = ((v >> s) & 1) ^ TIES_TO_ODD as i32;
            v.wrapping_add(half_m1 + t) >> s
        }),
        Rounding::NearestAway | Rounding::Tflite => map::<FLAGS>(acc, dst, sat, k, |_, v| {
            let t = (v >= 0) as i32;
            v.wrapping_add(half_m1 + t) >> s
        }),
        Rounding::Stochastic => {
            let (stream, base) = (rounder.stream, rounder.base);
            // An opaque factor: told that it is a power of two, the
            // compiler shifts the 64-bit product piecewise (about eight
            // instructions on a 32-bit core) instead of one SMLAL.
            // (`s >= 2`, see `requantize_values_into`: `2^(32 - s)` fits.)
            let up = i64::from(core::hint::black_box(1i32 << (32 - s)));
            map::<FLAGS>(acc, dst, sat, k, |i, v| {
                let d = stream.draw(base.wrapping_add(i as u32));
                ((i64::from(v) * up + i64::from(d)) >> 32) as i32
            })
        }
    }
}

/// Saturation bounds and step of one pass.
#[derive(Clone, Copy)]
struct Consts {
    lo: i32,
    hi: i32,
    step: f32,
}

/// Round each `acc[i]` (an `i32`) with `round(i, v)`, saturate, store its
/// value and clamp flag; return the number clamped.
#[inline(always)]
fn map<const FLAGS: bool>(
    acc: &[i64],
    dst: &mut [f32],
    sat: &mut [bool],
    k: Consts,
    round: impl Fn(usize, i32) -> i32,
) -> u64 {
    // A slice holds at most `isize::MAX` elements: `usize` cannot wrap.
    let mut n = 0usize;
    for (i, (d, &a)) in dst.iter_mut().zip(acc).enumerate() {
        let q = round(i, a as i32);
        let code = if q < k.lo {
            k.lo
        } else if q > k.hi {
            k.hi
        } else {
            q
        };
        *d = code as f32 * k.step;
        let c = code != q;
        n += c as usize;
        if FLAGS {
            if let Some(s) = sat.get_mut(i) {
                *s = c;
            }
        }
    }
    n as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Clamp, Stream};
    use std::vec::Vec;

    /// Accumulators that probe every path: codes near the format's range
    /// with every remainder, ties, values near the `i32` limits, zeros,
    /// and (when `wide`) values beyond `i32`.
    fn samples(s: &Stream, len: usize, wide: bool, shift: i32, bits: u8) -> Vec<i64> {
        let sh = shift.clamp(0, 40) as u32;
        (0..len as u32)
            .map(|i| {
                let d = s.draw(i);
                let e = s.draw(i ^ 0x5555_5555);
                // A code a little beyond the range on either side.
                let k = (d >> 8) as i64 % (1i64 << (bits + 1)) - (1i64 << bits);
                let rem = if sh == 0 {
                    0
                } else {
                    e as i64 & ((1i64 << sh) - 1)
                };
                let half = if sh == 0 { 0 } else { 1i64 << (sh - 1) };
                let v = match d % 10 {
                    0 => 0,
                    1 => (1i64 << 30) - 1 - (e % 4) as i64,
                    2 => -(1i64 << 30) + (e % 4) as i64,
                    3 | 4 => (k << sh) + half + (e % 3) as i64 - 1,
                    5 if wide => ((d as i64) << 32) | e as i64,
                    6 => d as i32 as i64 >> 1,
                    7 if wide => d as i32 as i64,
                    _ => (k << sh) + rem,
                };
                v.clamp(i64::MIN / 4, i64::MAX / 4)
            })
            .collect()
    }

    #[test]
    fn fast_path_equals_the_reference() {
        let s = Stream::new(8, 9, 10);
        let miri = cfg!(miri);
        let mut case = 0u32;
        for bits in (2..=16u8).filter(|b| !miri || b % 5 == 1) {
            for clamp in [Clamp::Hardware, Clamp::Nics] {
                if clamp == Clamp::Nics && bits == 16 {
                    continue;
                }
                for scale in [-20i8, -3, 0, 5, 12, 40] {
                    for rounding in [
                        Rounding::NearestEven,
                        Rounding::NearestAway,
                        Rounding::Floor,
                        Rounding::Stochastic,
                        Rounding::Tflite,
                    ] {
                        case += 1;
                        let mut f = Format::with_clamp(bits, scale, clamp).unwrap();
                        if clamp == Clamp::Hardware && bits < 16 && case.is_multiple_of(3) {
                            f = f.with_zero_point(-(1 << (bits - 2))).unwrap();
                        }
                        let len = if miri { 40 } else { 300 };
                        // Shifts -2..=34 around the fast range.
                        let shift = case as i32 % 37 - 2;
                        let exp = f.step_exp() - shift;
                        let acc = samples(
                            &Stream::new(3, case, 0),
                            len,
                            case.is_multiple_of(4),
                            shift,
                            bits,
                        );
                        let r = Rounder::new(rounding, Stream::new(1, case, 2)).at(s.draw(case));
                        let mut want = std::vec![0f32; len];
                        let mut want_sat = std::vec![false; len];
                        let wn = reference(&acc, exp, f, &r, &mut want, Some(&mut want_sat));
                        let mut got = std::vec![f32::NAN; len];
                        let mut got_sat = std::vec![true; len];
                        let n =
                            requantize_values_into(&acc, exp, f, &r, &mut got, Some(&mut got_sat));
                        let bits_of = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            (bits_of(&got), got_sat, n),
                            (bits_of(&want), want_sat, wn),
                            "{f:?} {rounding:?} exp {exp}"
                        );
                        let mut got = std::vec![f32::NAN; len];
                        let n = requantize_values_into(&acc, exp, f, &r, &mut got, None);
                        assert_eq!((bits_of(&got), n), (bits_of(&want), wn));
                    }
                }
            }
        }
    }

    #[test]
    fn fits_i31_is_exact_at_the_limits() {
        let (lo, hi) = (-(1i64 << 30), (1i64 << 30) - 1);
        assert!(fits_i31(&[0, -1, lo, hi]));
        assert!(!fits_i31(&[hi + 1]));
        assert!(!fits_i31(&[0, lo - 1]));
        assert!(!fits_i31(&[1 << 40]));
        assert!(!fits_i31(&[(1 << 32) | (1 << 30)]));
        assert!(!fits_i31(&[(1 << 32) + 5]));
        assert!(!fits_i31(&[i64::MIN, 0]));
        assert!(fits_i31(&[]));
    }
}

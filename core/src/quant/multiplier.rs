//! Real-valued scales: an integer multiplier and a power-of-two shift (the
//! TFLite int8 scheme), so that quantization and requantization stay integer.
//!
//! # Representation
//!
//! A [`RealFormat`] is a [`Format`] (`bits`, power-of-two `scale`) plus a
//! `multiplier` `M` in `[2^30, 2^31)`, read as the Q31 fraction
//! `M / 2^31` in `[0.5, 1)`. The real value of code `q` is
//!
//! ```text
//! q * (M / 2^31) * 2^(scale + 1 - bits)  =  q * M * 2^(scale - bits - 30)
//! ```
//!
//! so codes cover `[-(M / 2^31) * 2^scale, (M / 2^31) * 2^scale - step]`
//! with `step = M * 2^(scale - bits - 30)`. `M = 0` in a
//! [`QuantConfig`](crate::QuantConfig) means "no multiplier" (the plain
//! power-of-two [`Format`], factor exactly 1); `M = 2^30` is the same range
//! as the power-of-two format of `scale - 1`.
//!
//! One multiplier and shift per tensor is a [`RealFormat`]; a later
//! per-channel group is an array of them (one `(scale, multiplier)` per
//! channel), and every function here works on one such pair.
//!
//! # Arithmetic
//!
//! * f32 to code ([`RealFormat::round_f32`]): `x = m * 2^e` exactly (its
//!   bits), and `q = round(m * 2^(e + 31 - step_exp) / M)` is decided by an
//!   exact integer division: no float multiply. The division is a
//!   multiplication by a stored reciprocal of `M` and one correction
//!   (`RealFormat::divide`), or [`requantize_ratio`]'s division for values
//!   far outside the range; both give the exact floor and remainder.
//! * Accumulator to code ([`RealFormat::mul_shift`], [`round_mul_shift`]):
//!   `acc * 2^exp` is multiplied by the integer reciprocal
//!   `M_eff ~ 2^61 / M` and shifted right, the TFLite requantization; one
//!   rounding by [`Rounding`] of the exact product `acc * M_eff`.
//! * TFLite's own double rounding ([`saturating_rounding_doubling_high_mul`]
//!   then [`rounding_divide_by_pot`]), for comparison with TFLite kernels,
//!   and selected for accumulators by [`Rounding::Tflite`]
//!   ([`round_mul_shift`] documents the mapping of `(M_eff, shift)` onto
//!   TFLite's `(quantized_multiplier, shift)`). Every other rounding site
//!   (f32 to code included) treats [`Rounding::Tflite`] as
//!   [`Rounding::NearestAway`].
//! * Code to f32 ([`RealFormat::to_f32`]): `q * M` exactly in `i64`, then
//!   [`acc_to_f32`](super::acc_to_f32) (one f32 rounding, nearest-even).

use core::num::NonZeroU32;

use super::config::{Clamp, Rounding};
use super::format::Format;
use super::round::{decompose_f32, requantize_ratio, round_quotient, shift_right_round};
use crate::error::{Error, Result};

/// Smallest valid multiplier, `2^30` (the fraction 0.5).
pub const MULTIPLIER_MIN: u32 = 1 << 30;
/// One past the largest valid multiplier, `2^31` (the fraction 1.0).
pub const MULTIPLIER_END: u32 = 1 << 31;

/// A real-valued format: `bits`-bit codes whose real value is
/// `q * M * 2^(scale - bits - 30)` with the multiplier `M` in
/// `[2^30, 2^31)` (see the [module docs](self)).
///
/// # Examples
///
/// ```
/// use fixnn::{Format, Rounding};
/// use fixnn::quant::RealFormat;
/// // 8 bits, range 0.75 * 2^1 = 1.5: step 1.5 / 128.
/// let rf = RealFormat::new(Format::new(8, 1)?, 3 << 29)?;
/// assert_eq!(rf.to_f32(128 - 1), 127.0 * 1.5 / 128.0);
/// assert_eq!(rf.round_f32(0.75, Rounding::NearestEven, 0), (64, false));
/// # Ok::<(), fixnn::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RealFormat {
    format: Format,
    multiplier: NonZeroU32,
    /// `floor((2^64 - 1) / M)`: divides by `M` with a multiplication
    /// ([`round_f32`](Self::round_f32)); a function of `M`, so comparing
    /// and hashing are unchanged.
    recip: u64,
}

/// [`RealFormat::round_f32`] for many values of one format, on x86-64
/// (SSE2 f64, no extended precision): `y = x * (2^(31 - step_exp) / M)` in f64, and
/// the code read from `y` when `y` is far enough from every rounding
/// decision that the f64 errors cannot move it; `None` otherwise (the
/// caller then takes [`RealFormat::round_f32`]). Built by
/// [`RealFormat::guarded`].
///
/// Exactness: `x` is exact in f64 and `2^(31 - step_exp)` and `M` are
/// exact, so the stored inverse and the product each carry one rounding
/// of relative error at most `2^-53`: `|y - y*| <= |y*| * 2^-51` for the
/// exact `y* = x * 2^(31 - step_exp) / M`, the quotient whose floor and
/// remainder the exact path computes. With `|y| < 2^20` that is below
/// `2^-31`. `y` is accepted only when its fraction `d` (`y - trunc(y)`,
/// exact for `|y| < 2^52`, plus 1 for a negative `y`, within `2^-53`: the
/// total error stays below `2^-30`) lies more than `2^-30` from 0, from 1
/// and from 1/2, so `y*` has the same floor, is no integer and no tie, and
/// lies on the same side of the half: nearest, away and TFLite rounding
/// (ties are the only place they differ) round up iff `d > 1/2`, floor
/// never. `x = ±0` gives `y = 0` exactly (a non-zero f32 times the inverse,
/// at least `2^-275`, cannot underflow in f64), code 0, as the exact path.
/// Stochastic rounding is not guarded (`None` from
/// [`RealFormat::guarded`]).
#[derive(Clone, Copy, Debug)]
pub struct Guarded {
    format: Format,
    inv: f64,
    nearest: bool,
}

impl Guarded {
    /// The code and clamp flag of `x`, or `None` if `x` is near a rounding
    /// decision, outside `|y| < 2^20`, or not finite.
    #[inline]
    pub fn round(self, x: f32) -> Option<(i32, bool)> {
        const G: f64 = 1.0 / (1u64 << 30) as f64;
        const BIG: f64 = (1u64 << 20) as f64;
        let y = x as f64 * self.inv;
        if y == 0.0 {
            return Some((0, false));
        }
        // NaN fails both comparisons.
        if !(y < BIG && y > -BIG) {
            return None;
        }
        let mut t = y as i64;
        let mut d = y - t as f64;
        if d < 0.0 {
            t -= 1;
            d += 1.0;
        }
        let half = d - 0.5;
        if d <= G || d >= 1.0 - G || (-G..=G).contains(&half) {
            return None;
        }
        Some(
            self.format
                .saturate((t + (self.nearest && half > 0.0) as i64) as i128),
        )
    }
}

/// An integer requantization `acc -> round(acc * multiplier / 2^shift)`:
/// what a device computes to move an accumulator into a [`RealFormat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MulShift {
    /// In `[2^30, 2^31)`.
    pub multiplier: u32,
    /// Right shift (negative: left shift, exact).
    pub shift: i32,
}

impl RealFormat {
    /// A real format of `format` and `multiplier`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] if `multiplier` is not in `[2^30, 2^31)`.
    pub const fn new(format: Format, multiplier: u32) -> Result<Self> {
        if multiplier < MULTIPLIER_MIN || multiplier >= MULTIPLIER_END {
            return Err(Error::Invalid {
                what: "multiplier must be 0 or in [2^30, 2^31)",
            });
        }
        match NonZeroU32::new(multiplier) {
            Some(m) => Ok(RealFormat {
                format,
                multiplier: m,
                // m >= 2^30, so the fallback is unreachable.
                recip: match u64::MAX.checked_div(multiplier as u64) {
                    Some(r) => r,
                    None => 0,
                },
            }),
            None => Err(Error::Invalid {
                what: "multiplier must be 0 or in [2^30, 2^31)",
            }),
        }
    }

    /// The power-of-two part: bits, scale, code range.
    pub const fn format(self) -> Format {
        self.format
    }

    /// The multiplier `M`, in `[2^30, 2^31)`.
    pub const fn multiplier(self) -> u32 {
        self.multiplier.get()
    }

    /// The exponent `e` with real value `q * M * 2^e`: `scale - bits - 30`.
    pub const fn value_exp(self) -> i32 {
        self.format.step_exp() - 31
    }

    /// The real value of `code`, `code * M * 2^(scale - bits - 30)`, as f32:
    /// the product `code * M` is exact in `i64`, then rounded once to f32
    /// (nearest-even; a result in the subnormal range may round twice).
    #[inline]
    pub fn to_f32(self, code: i32) -> f32 {
        super::acc_to_f32(code as i64 * self.multiplier.get() as i64, self.value_exp())
    }

    /// Round the f32 `x` to a code: `q = round(x / step)` for the exact
    /// quotient (the f32's exact significand and exponent, an integer
    /// division by `M`), with `rounding` as in [`requantize_ratio`]
    /// (stochastic: `draw` is the 32-bit random number), then saturated.
    /// NaN and infinities give 0. Returns `(code, saturated)`.
    ///
    /// The quotient comes from a division-free path (a stored reciprocal of
    /// `M`, exact after one correction) when it applies (an
    /// f32 whose code is not far outside the range), else from
    /// [`requantize_ratio`]'s division; both give the same floor and
    /// remainder, so the same code.
    #[inline]
    pub fn round_f32(self, x: f32, rounding: Rounding, draw: u32) -> (i32, bool) {
        let (m, e) = decompose_f32(x).unwrap_or((0, 0));
        let exp = e.saturating_add(31);
        match self.divide(m, exp) {
            Some((floor, rem, den)) => round_quotient(floor, rem, den, self.format, rounding, draw),
            None => requantize_ratio(m, exp, self.multiplier, self.format, rounding, draw),
        }
    }

    /// The f64 path for `rounding` ([`Guarded`]): `Some` for nearest, away,
    /// TFLite and floor rounding on x86-64 (the host it was tested on),
    /// `None` for stochastic rounding and on every other target (Cortex-M
    /// has no f64 hardware), which take [`round_f32`](Self::round_f32)'s
    /// integer path: the codes are the same.
    pub fn guarded(self, rounding: Rounding) -> Option<Guarded> {
        if !cfg!(target_arch = "x86_64") {
            return None;
        }
        let nearest = match rounding {
            Rounding::NearestEven | Rounding::NearestAway | Rounding::Tflite => true,
            Rounding::Floor => false,
            Rounding::Stochastic => return None,
        };
        // 31 - step_exp is in -95..=174: a normal f64 power of two.
        let k = 31 - self.format.step_exp() as i64;
        let p = f64::from_bits(((k + 1023) as u64) << 52);
        Some(Guarded {
            format: self.format,
            inv: p / self.multiplier.get() as f64,
            nearest,
        })
    }

    /// The exact quotient `v * 2^(exp - step_exp) / M` as
    /// `(floor, rem, den)` with `rem` in `[0, den)`, without a division:
    /// `None` for `v == 0`, `|v| >= M`, or a numerator or denominator of 63
    /// bits or more (the caller then divides).
    ///
    /// With the numerator `n < 2^63` a left shift of `|v|`, the estimate
    /// `q0 = floor(n * R / 2^64)`, `R = floor((2^64 - 1) / M)`, satisfies
    /// `n / M - 1 < q0 <= n / M` (`R` is below `2^64 / M` by less than 1,
    /// and `n / 2^64 < 1/2`), so `q0` is `floor(n / M)` or one less, and
    /// one comparison of the remainder with `M` corrects it. A right shift
    /// (`exp < step_exp`) makes the denominator `M * 2^k > |v|`: the
    /// quotient of `|v|` is 0, remainder `|v|`. A negative `v` turns
    /// `(q, r)` of `|v|` into the Euclidean `(-q, 0)` or `(-q - 1, den - r)`.
    #[inline]
    fn divide(self, v: i64, exp: i32) -> Option<(i128, i128, i128)> {
        let m = self.multiplier.get() as u64;
        let a = v.unsigned_abs();
        if a == 0 || a >= m {
            return None;
        }
        let left = exp as i64 - self.format.step_exp() as i64;
        let (q, r, den) = if left >= 0 {
            // a < 2^31, so left <= 31 keeps the numerator below 2^62.
            if left > 31 {
                return None;
            }
            let n = a << left;
            let mut q = ((n as u128 * self.recip as u128) >> 64) as u64;
            let mut r = n - q * m; // q <= n / M: no wrap
            if r >= m {
                q += 1;
                r -= m;
            }
            (q, r, m)
        } else {
            // M < 2^31: a shift below 32 keeps the denominator below 2^63.
            if left < -32 {
                return None;
            }
            (0, a, m << -left)
        };
        let (q, r, den) = (q as i128, r as i128, den as i128);
        Some(match (v < 0, r == 0) {
            (false, _) => (q, r, den),
            (true, true) => (-q, 0, den),
            (true, false) => (-q - 1, den - r, den),
        })
    }

    /// Round the exact value `v * 2^exp` to a code by exact division (the
    /// counterpart of [`round_f32`](Self::round_f32) for integers):
    /// `round(v * 2^(exp + 31 - step_exp) / M)`.
    pub fn round_exact(self, v: i64, exp: i32, rounding: Rounding, draw: u32) -> (i32, bool) {
        requantize_ratio(
            v,
            exp.saturating_add(31),
            self.multiplier,
            self.format,
            rounding,
            draw,
        )
    }

    /// The integer requantization from accumulators `acc * 2^exp` into this
    /// format: `q = round(acc * M_eff / 2^shift)` with
    /// `M_eff = round(2^61 / M)` (nearest; `2^61 / M` is never a tie) in
    /// `(2^30, 2^31]`, brought into `[2^30, 2^31)` (`2^31` becomes `2^30`
    /// with one less shift) and `shift = 30 + step_exp - exp`.
    ///
    /// `acc * 2^exp / (M * 2^(step_exp - 31))` and `acc * M_eff / 2^shift`
    /// differ by the relative error of `M_eff`, below `2^-31`.
    pub const fn mul_shift(self, exp: i32) -> MulShift {
        let m = self.multiplier.get() as u64;
        // m >= 2^30, so the division cannot fail (the fallback is unreachable).
        let eff = match ((1u64 << 61) + m / 2).checked_div(m) {
            Some(v) => v, // in (2^30, 2^31]
            None => MULTIPLIER_END as u64,
        };
        let shift = (30 + self.format.step_exp()).saturating_sub(exp);
        if eff >= MULTIPLIER_END as u64 {
            MulShift {
                multiplier: (eff >> 1) as u32,
                shift: shift.saturating_sub(1),
            }
        } else {
            MulShift {
                multiplier: eff as u32,
                shift,
            }
        }
    }

    /// Requantize the accumulator `acc * 2^exp` into this format with
    /// [`mul_shift`](Self::mul_shift) and [`round_mul_shift`], then
    /// saturate. Returns `(code, saturated)`.
    ///
    /// With [`Rounding::Tflite`] this is TFLite's requantization (see
    /// [`round_mul_shift`]) by the real multiplier
    /// `2^(exp - step_exp + 31) / M`: TFLite's `QuantizeMultiplier` of that
    /// exact value is `(M_eff, 31 - shift)` of [`mul_shift`](Self::mul_shift)
    /// (`2^61 / M` is never a tie, so its rounding rule does not matter; a
    /// TFLite build that first rounds the real multiplier to a `double`
    /// could differ in the last bit of the multiplier when `2^61 / M` lies
    /// within `2^-23` of a half-integer). `acc` outside `i32` is first
    /// clamped to `[i32::MIN, i32::MAX]` (TFLite's int32 accumulator
    /// cannot hold it; fixnn saturates where C++ would wrap), and such a
    /// clamp counts as saturated even when the resulting code is inside
    /// the range.
    pub fn round_acc(self, acc: i64, exp: i32, rounding: Rounding, draw: u32) -> (i32, bool) {
        let ms = self.mul_shift(exp);
        let (q, sat) = self.format.saturate(round_mul_shift(
            acc,
            ms.multiplier,
            ms.shift,
            rounding,
            draw,
        ));
        let clamped = rounding == Rounding::Tflite && acc as i32 as i64 != acc;
        (q, sat || clamped)
    }

    /// The format Auto chooses for data whose largest magnitude is the
    /// exact `max = m * 2^e`, for codes that saturate as `clamp` says:
    ///
    /// * [`Clamp::Nics`]: nics_fix_pt's `float_scale` exactly
    ///   ([`from_max`](Self::from_max)): range `max`, so `max` is code
    ///   `2^(bits-1)`, which nics_fix_pt's clamp keeps.
    /// * [`Clamp::Hardware`]: the range `max * 2^(bits-1) / (2^(bits-1) - 1)`
    ///   (rounded up to the multiplier's precision), so that `max` is the
    ///   top code `2^(bits-1) - 1` of the register instead of being clamped
    ///   to it (which would zero its gradient every step): TFLite's
    ///   symmetric scale `max / 127` at 8 bits. `-max` is code
    ///   `-(2^(bits-1) - 1)`.
    ///
    /// The returned format carries `clamp`. `m == 0` gives nics_fix_pt's
    /// `eps` (the f32 nearest `1e-5`) as the maximum.
    ///
    /// # Errors
    ///
    /// As [`Format::with_clamp`] (bits outside `2..=16`, 16 bits with the
    /// nics clamp).
    pub fn from_max_for(bits: u8, clamp: Clamp, m: u64, e: i32) -> Result<Self> {
        let f = Format::with_clamp(bits, 0, clamp)?;
        let rf = match clamp {
            Clamp::Nics => Self::from_max(bits, m, e)?,
            Clamp::Hardware => {
                let (m, e) = match m {
                    0 => {
                        let (m, e) = decompose_f32(1e-5).unwrap_or((1, -17));
                        (m as u64, e)
                    }
                    _ => (m, e),
                };
                // ceil(m * 2^(bits-1) * 2^40 / t) * 2^(e - 40), t = 2^(bits-1) - 1:
                // at most 64 + 15 + 40 bits, then rounded up to 63 bits.
                let t = ((1u128 << (f.bits() - 1)) - 1).max(1);
                let num = (m as u128) << (f.bits() as u32 - 1 + 40);
                let mut r = num.div_ceil(t);
                let mut e = e.saturating_sub(40);
                let n = 128 - r.leading_zeros() as i32;
                if n > 63 {
                    let s = (n - 63) as u32;
                    let up = (r & ((1u128 << s) - 1) != 0) as u128;
                    r = (r >> s) + up;
                    e = e.saturating_add(s as i32);
                }
                Self::from_max(bits, r as u64, e)?
            }
        };
        Self::new(
            Format::validated(bits, rf.format.scale(), clamp),
            rf.multiplier(),
        )
    }

    /// The format chosen for data whose largest magnitude is the exact
    /// `max = m * 2^e` (`m > 0`), as nics_fix_pt's `float_scale` with
    /// `RANGE_MAX`: the range `(M / 2^31) * 2^scale` equals `max` (exactly
    /// when `m` has at most 31 significant bits, else rounded up to 31 bits).
    /// `scale` is clamped to `-128..=127` (a clamped range is the nearest
    /// representable one: `M = 2^30` at the bottom, `2^31 - 1` at the top).
    /// `m == 0` gives nics_fix_pt's `eps`, the f32 nearest `1e-5`.
    pub fn from_max(bits: u8, m: u64, e: i32) -> Result<Self> {
        if m == 0 {
            // nics_fix_pt: max(max|x|, 1e-5).
            let (m, e) = decompose_f32(1e-5).unwrap_or((1, -17));
            return Self::from_max(bits, m as u64, e);
        }
        let n = 64 - m.leading_zeros() as i32; // m in [2^(n-1), 2^n)
        let scale = e.saturating_add(n);
        let (mut mult, mut scale) = if n <= 31 {
            (m << (31 - n), scale)
        } else {
            let s = n - 31;
            let up = (m & ((1u64 << s) - 1) != 0) as u64;
            ((m >> s) + up, scale)
        };
        if mult >= MULTIPLIER_END as u64 {
            mult >>= 1;
            scale = scale.saturating_add(1);
        }
        let (mult, scale) = if scale > 127 {
            (MULTIPLIER_END as u64 - 1, 127)
        } else if scale < -128 {
            (MULTIPLIER_MIN as u64, -128)
        } else {
            (mult, scale)
        };
        Self::new(Format::new(bits, scale as i8)?, mult as u32)
    }
}

/// `round(acc * multiplier / 2^shift)`, one rounding of the exact product
/// (an `i128`), by `rounding`: `NearestEven`, `NearestAway` (ties as
/// named), `Floor`, `Stochastic` (add `r` uniform in `[0, 2^shift)` made from
/// `draw` as in [`requantize_one`](super::requantize_one), then floor).
/// `shift <= 0` is an exact left shift (a result of `2^100` or more in
/// magnitude, far outside any code range, saturates to `±2^100`); shifts
/// above 96 act as 96.
///
/// # `Rounding::Tflite`
///
/// TFLite's `MultiplyByQuantizedMultiplier(x, quantized_multiplier,
/// tflite_shift)` with its two roundings, where the pair is what TFLite's
/// `QuantizeMultiplier` makes of the same real multiplier
/// `multiplier * 2^-shift`: `quantized_multiplier = multiplier` (a Q31
/// fraction, `multiplier * 2^-31`; values above `i32::MAX` act as
/// `i32::MAX`) and `tflite_shift = 31 - shift` (positive: a left shift).
/// Step by step:
///
/// 1. `x = acc` clamped to `[i32::MIN, i32::MAX]` (TFLite's accumulator is
///    an `i32`);
/// 2. if `tflite_shift < -31` the result is 0 (TFLite's `QuantizeMultiplier`
///    flushes such a multiplier to 0);
/// 3. otherwise [`multiply_by_quantized_multiplier`]`(x, multiplier,
///    tflite_shift)`: `x * 2^left` (saturated to `i32`),
///    [`saturating_rounding_doubling_high_mul`] (nearest, ties toward plus
///    infinity), then [`rounding_divide_by_pot`] by `right` (nearest, ties
///    away from zero).
///
/// The two roundings can differ from one rounding of the exact product:
/// `acc = 1`, `multiplier = 2^30`, `shift = 32` is exactly `0.25`, which
/// `NearestAway` rounds to 0, TFLite to 1 (`0.5 -> 1`, then `0.5 -> 1`).
/// `draw` is unused.
///
/// # Examples
///
/// ```
/// use fixnn::Rounding;
/// use fixnn::quant::round_mul_shift;
/// // 3 * 2^30 / 2^31 = 1.5: a tie.
/// assert_eq!(round_mul_shift(3, 1 << 30, 31, Rounding::NearestEven, 0), 2);
/// assert_eq!(round_mul_shift(-3, 1 << 30, 31, Rounding::NearestAway, 0), -2);
/// assert_eq!(round_mul_shift(-3, 1 << 30, 31, Rounding::Floor, 0), -2);
/// // 1 * 2^30 / 2^32 = 0.25: TFLite's two roundings give 1.
/// assert_eq!(round_mul_shift(1, 1 << 30, 32, Rounding::NearestAway, 0), 0);
/// assert_eq!(round_mul_shift(1, 1 << 30, 32, Rounding::Tflite, 0), 1);
/// ```
pub fn round_mul_shift(
    acc: i64,
    multiplier: u32,
    shift: i32,
    rounding: Rounding,
    draw: u32,
) -> i128 {
    if rounding == Rounding::Tflite {
        return tflite_mul_shift(acc, multiplier, shift) as i128;
    }
    let p = acc as i128 * multiplier as i128; // |p| < 2^95
    if p == 0 {
        return 0;
    }
    if shift <= 0 {
        let left = -(shift as i64);
        let len = 128 - p.unsigned_abs().leading_zeros() as i64; // |p| < 2^len
        if len + left > 100 {
            return if p < 0 { -(1i128 << 100) } else { 1i128 << 100 };
        }
        return p << left;
    }
    shift_right_round(p, shift.min(96) as u32, rounding, draw)
}

/// [`round_mul_shift`] with [`Rounding::Tflite`]: TFLite's requantization
/// of `acc` by the real multiplier `multiplier * 2^-shift`.
fn tflite_mul_shift(acc: i64, multiplier: u32, shift: i32) -> i32 {
    let x = if acc > i32::MAX as i64 {
        i32::MAX
    } else if acc < i32::MIN as i64 {
        i32::MIN
    } else {
        acc as i32
    };
    let m = if multiplier > i32::MAX as u32 {
        i32::MAX
    } else {
        multiplier as i32
    };
    let t = 31 - shift as i64; // TFLite's shift, positive to the left
    if t < -31 {
        return 0;
    }
    // In [-31, 2^31 + 31]; left shifts above 31 act as 31 (saturating).
    let t = if t > 31 { 31 } else { t as i32 };
    multiply_by_quantized_multiplier(x, m, t)
}

/// TFLite's `SaturatingRoundingDoublingHighMul(a, b)`: the high 32 bits of
/// `2 * a * b`, rounded: `(a * b + nudge) / 2^31` with division truncating
/// toward zero and `nudge = 2^30` if `a * b >= 0`, else `1 - 2^30`. The
/// result is therefore `a * b / 2^31` rounded to nearest with ties toward
/// plus infinity (`0.5 -> 1`, `-0.5 -> 0`, `-1.5 -> -1`). The one product
/// that does not fit, `i32::MIN * i32::MIN` (`+1.0`), saturates to
/// `i32::MAX`.
///
/// # Examples
///
/// ```
/// use fixnn::quant::saturating_rounding_doubling_high_mul as srdhm;
/// assert_eq!(srdhm(i32::MIN, i32::MIN), i32::MAX);
/// assert_eq!(srdhm(1 << 30, 1 << 30), 1 << 29); // 0.5 * 0.5 in Q31
/// assert_eq!(srdhm(3, 1 << 30), 2); // 1.5 -> 2
/// assert_eq!(srdhm(-3, 1 << 30), -1); // -1.5 -> -1
/// ```
pub const fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    // |ab + nudge| < 2^62: no overflow; `/` truncates toward zero.
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// TFLite's `RoundingDivideByPOT(x, exponent)`: `x / 2^exponent` rounded to
/// nearest, ties away from zero, for `exponent` in `0..=31` (larger
/// exponents act as 31).
///
/// # Examples
///
/// ```
/// use fixnn::quant::rounding_divide_by_pot as rdbpot;
/// assert_eq!((rdbpot(5, 1), rdbpot(-5, 1), rdbpot(-6, 2), rdbpot(7, 0)), (3, -3, -2, 7));
/// ```
pub const fn rounding_divide_by_pot(x: i32, exponent: u32) -> i32 {
    let exponent = if exponent > 31 { 31 } else { exponent };
    let mask: i64 = (1i64 << exponent) - 1;
    let x = x as i64;
    let remainder = x & mask;
    let threshold = (mask >> 1) + (x < 0) as i64;
    ((x >> exponent) + (remainder > threshold) as i64) as i32
}

/// TFLite's `MultiplyByQuantizedMultiplier(x, multiplier, shift)` with its
/// double rounding: `left = max(shift, 0)`, `right = max(-shift, 0)`,
/// `rounding_divide_by_pot(srdhm(x * 2^left, multiplier), right)`.
///
/// `multiplier` is TFLite's Q31 `quantized_multiplier` (in `[2^30, 2^31)`
/// for a normalised real multiplier), `shift > 0` a left shift. Where
/// TFLite's `x * 2^left` overflows `i32` (undefined in C++) this saturates.
///
/// # Examples
///
/// ```
/// use fixnn::quant::multiply_by_quantized_multiplier as mbqm;
/// // 0.75 (3 * 2^29 in Q31) times 2^-3: 100 * 0.09375 = 9.375 -> 9
/// assert_eq!(mbqm(100, 3 << 29, -3), 9);
/// ```
pub const fn multiply_by_quantized_multiplier(x: i32, multiplier: i32, shift: i32) -> i32 {
    let (left, right) = if shift > 0 {
        (shift as u32, 0)
    } else {
        (0, shift.unsigned_abs())
    };
    let left = if left > 31 { 31 } else { left };
    let wide = (x as i64) << left;
    let x = if wide > i32::MAX as i64 {
        i32::MAX
    } else if wide < i32::MIN as i64 {
        i32::MIN
    } else {
        wide as i32
    };
    rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, multiplier), right)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the hardware clamp the maximum is the top code, unclamped, and
    /// its negative the negated top code, for every width and a spread of
    /// magnitudes; the nics clamp keeps nics_fix_pt's rule (the maximum is
    /// code `2^(bits-1)`).
    #[test]
    fn from_max_for_puts_the_maximum_on_the_top_code() {
        let mut bits_pattern = 0x3f80_0001u32;
        for i in 0..600u32 {
            // Pseudo-random f32 magnitudes from 2^-40 to 2^40.
            bits_pattern = bits_pattern
                .wrapping_mul(1_664_525)
                .wrapping_add(1_013_904_223);
            let exp = 87 + (bits_pattern >> 24) % 80;
            let max = f32::from_bits(exp << 23 | (bits_pattern & 0x7f_ffff));
            let bits = 2 + (i % 14) as u8;
            let (m, e) = decompose_f32(max).unwrap();
            let top = (1i32 << (bits - 1)) - 1;
            let hw = RealFormat::from_max_for(bits, Clamp::Hardware, m as u64, e).unwrap();
            assert_eq!(hw.format().clamp(), Clamp::Hardware);
            for r in [
                Rounding::NearestEven,
                Rounding::Floor,
                Rounding::NearestAway,
            ] {
                let up = hw.round_f32(max, r, 0);
                let down = hw.round_f32(-max, r, 0);
                if r == Rounding::Floor {
                    // Floor may land one code lower (the range is rounded up).
                    assert!(up.0 >= top - 1 && !up.1, "{max} {bits} {up:?}");
                } else {
                    assert_eq!(up, (top, false), "{max} {bits}");
                    assert_eq!(down, (-top, false), "{max} {bits}");
                }
            }
            let nics = RealFormat::from_max_for(bits, Clamp::Nics, m as u64, e).unwrap();
            assert_eq!(nics.format().clamp(), Clamp::Nics);
            assert_eq!(
                nics.round_f32(max, Rounding::NearestEven, 0),
                (top + 1, false),
                "{max} {bits}"
            );
        }
    }

    /// `round_f32`'s division-free quotient gives the code of the dividing
    /// path (`requantize_ratio`) for every rounding, width and draw: f32s
    /// of every magnitude from far below a step to far beyond the range,
    /// both signs, subnormals, and exact ties (multipliers with few
    /// significant bits, values an odd number of half steps).
    #[test]
    fn round_f32_matches_the_exact_division() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let roundings = [
            Rounding::NearestEven,
            Rounding::NearestAway,
            Rounding::Floor,
            Rounding::Stochastic,
            Rounding::Tflite,
        ];
        let (mut used, mut guarded) = (0u32, 0u32);
        let n = if cfg!(miri) { 2_000 } else { 200_000u32 };
        for i in 0..n {
            let r = next();
            // Multipliers: random, or with only 1 to 8 significant bits
            // (those make exact half steps representable).
            let m = if i % 2 == 0 {
                MULTIPLIER_MIN | (r as u32 & (MULTIPLIER_MIN - 1))
            } else {
                let keep = 1 + (r >> 32) as u32 % 8;
                (MULTIPLIER_MIN | (r as u32 & (MULTIPLIER_MIN - 1))) >> (31 - keep) << (31 - keep)
            };
            let bits = 2 + (r >> 40) as u8 % 15;
            let scale = ((r >> 48) as u8 % 40) as i8 - 20;
            let Ok(f) = Format::new(bits, scale) else {
                continue;
            };
            let rf = RealFormat::new(f, m).unwrap();
            let step = rf.to_f32(1);
            let x = match i % 3 {
                // A multiple of half a step: ties when odd.
                0 => ((next() % 600) as f32 - 300.0) * 0.5 * step,
                // Any f32 from 2^-149 to about 2^40 times the step.
                1 => {
                    let b = next() as u32 & 0x807f_ffff | ((next() % 254) as u32) << 23;
                    f32::from_bits(b)
                }
                // Near the range: a few hundred steps around zero.
                _ => (next() % 1_000_000) as f32 / 1_000_000.0 * 600.0 * step - 300.0 * step,
            };
            let draw = next() as u32;
            let (mx, ex) = decompose_f32(x).unwrap();
            if rf.divide(mx, ex + 31).is_some() {
                used += 1;
            }
            for rounding in roundings {
                let want = requantize_ratio(mx, ex + 31, rf.multiplier, f, rounding, draw);
                assert_eq!(
                    rf.round_f32(x, rounding, draw),
                    want,
                    "x {x:e} M {m} bits {bits} scale {scale} {rounding:?} draw {draw}"
                );
                if let Some(got) = rf.guarded(rounding).and_then(|g| g.round(x)) {
                    guarded += 1;
                    assert_eq!(
                        got, want,
                        "guarded: x {x:e} M {m} bits {bits} scale {scale} {rounding:?}"
                    );
                }
            }
        }
        // Most values took the division-free path, and on 64-bit hosts
        // most non-stochastic roundings the f64 path.
        assert!(used > n / 2, "{used} of {n}");
        if cfg!(target_arch = "x86_64") {
            assert!(guarded > n * 3 / 2, "{guarded} of {n} * 5");
        }
    }

    #[test]
    fn srdhm_golden() {
        // Hand-computed from the definition: a * b / 2^31.
        let cases = [
            (i32::MIN, i32::MIN, i32::MAX),     // +1.0 does not fit
            (i32::MIN, i32::MAX, -i32::MAX),    // -(2^31 - 1) exactly
            (i32::MAX, i32::MAX, i32::MAX - 1), // (2^31-1)^2/2^31 = 2^31 - 2 + 2^-31
            (1 << 30, 1 << 30, 1 << 29),
            (1, 1 << 30, 1),            // 0.5 -> 1 (tie, up)
            (-1, 1 << 30, 0),           // -0.5 -> 0 (tie, toward +inf)
            (3, 1 << 30, 2),            // 1.5 -> 2
            (-3, 1 << 30, -1),          // -1.5 -> -1
            (5, 1 << 30, 3),            // 2.5 -> 3
            (-5, 1 << 30, -2),          // -2.5 -> -2
            (1, (1 << 30) - 1, 0),      // just below 0.5
            (-1, (1 << 30) + 1, -1),    // just beyond -0.5
            (1000, 1_717_986_918, 800), // 0.8 in Q31 (rounded): 799.99...
            (0, i32::MIN, 0),
        ];
        for (a, b, want) in cases {
            assert_eq!(
                saturating_rounding_doubling_high_mul(a, b),
                want,
                "{a} * {b}"
            );
            assert_eq!(
                saturating_rounding_doubling_high_mul(b, a),
                want,
                "{b} * {a}"
            );
        }
    }

    #[test]
    fn rdbpot_golden() {
        let cases = [
            (0, 3, 0),
            (4, 3, 1),   // 0.5 -> 1
            (-4, 3, -1), // -0.5 -> -1
            (3, 3, 0),
            (-3, 3, 0),
            (12, 3, 2),   // 1.5 -> 2
            (-12, 3, -2), // -1.5 -> -2
            (-13, 3, -2),
            (-11, 3, -1),
            (i32::MIN, 31, -1),
            (i32::MAX, 31, 1),
            (i32::MIN, 1, -(1 << 30)),
            (7, 0, 7),
            (-7, 0, -7),
        ];
        for (x, e, want) in cases {
            assert_eq!(rounding_divide_by_pot(x, e), want, "{x} / 2^{e}");
        }
    }

    #[test]
    fn tflite_double_rounding_differs_from_one_rounding() {
        // x * 0.75 * 2^-1 with x = 5: exact 1.875 -> 2 either way.
        assert_eq!(multiply_by_quantized_multiplier(5, 3 << 29, -1), 2);
        // x = 3, M = 2^30 + 1 (just above 0.5), shift -1: exact value
        // 3 * (0.5 + 2^-31) / 2 = 0.75 + tiny -> 1. TFLite: srdhm = 2 (1.5 -> 2),
        // then 2 / 2 = 1: same.
        assert_eq!(multiply_by_quantized_multiplier(3, (1 << 30) + 1, -1), 1);
        // x = 1, M = 2^30, shift -1: exact 0.25 -> 0. TFLite: srdhm rounds
        // 0.5 up to 1, then 1 / 2 = 0.5 rounds away to 1: double rounding.
        assert_eq!(multiply_by_quantized_multiplier(1, 1 << 30, -1), 1);
        assert_eq!(round_mul_shift(1, 1 << 30, 32, Rounding::NearestAway, 0), 0);
        // Left shift: 3 * 2 * 0.5 = 3.
        assert_eq!(multiply_by_quantized_multiplier(3, 1 << 30, 1), 3);
        // Saturating left shift instead of C++ overflow.
        assert_eq!(
            multiply_by_quantized_multiplier(i32::MAX, 1 << 30, 1),
            1 << 30
        );
    }

    #[test]
    fn round_mul_shift_modes() {
        use Rounding::*;
        // 5 * 2^30 / 2^32 = 1.25; 6 * 2^30 / 2^32 = 1.5; -6: -1.5; 10: 2.5
        let cases = [
            (5, NearestEven, 1),
            (6, NearestEven, 2),
            (-6, NearestEven, -2),
            (10, NearestEven, 2),
            (-10, NearestEven, -2),
            (10, NearestAway, 3),
            (-10, NearestAway, -3),
            (-5, Floor, -2),
            (5, Floor, 1),
        ];
        for (acc, r, want) in cases {
            assert_eq!(round_mul_shift(acc, 1 << 30, 32, r, 0), want, "{acc} {r:?}");
        }
        // Stochastic: 1.25 rounds up iff the top two draw bits add a carry.
        assert_eq!(round_mul_shift(5, 1 << 30, 32, Stochastic, 0xbfff_ffff), 1);
        assert_eq!(round_mul_shift(5, 1 << 30, 32, Stochastic, 0xc000_0000), 2);
        // Exact left shifts, and the wide product of an i64 accumulator.
        assert_eq!(round_mul_shift(3, 1 << 30, -2, Floor, 0), 3i128 << 32);
        assert_eq!(round_mul_shift(-1, 1, -99, Floor, 0), -(1i128 << 99));
        assert_eq!(round_mul_shift(1, 1, -100, Floor, 0), 1i128 << 100);
        assert_eq!(round_mul_shift(-5, 1, -100, Floor, 0), -(1i128 << 100));
        assert_eq!(
            round_mul_shift(i64::MIN, (1 << 31) - 1, 62, Floor, 0),
            -((1i128 << 32) - 2)
        );
    }

    #[test]
    fn nics_clamp_keeps_its_top_code_with_a_real_scale() {
        // 8 bits, scale 0, M = 0.75, nics_fix_pt's clamp: the range 0.75 is
        // code +128 itself (not saturated); beyond it saturates to 128.
        use crate::quant::Clamp;
        let f = Format::with_clamp(8, 0, Clamp::Nics).unwrap();
        let rf = RealFormat::new(f, 3 << 29).unwrap();
        assert_eq!(rf.round_f32(0.75, Rounding::NearestEven, 0), (128, false));
        assert_eq!(rf.round_f32(1.0, Rounding::NearestEven, 0), (128, true));
        assert_eq!(rf.round_f32(-0.75, Rounding::NearestEven, 0), (-128, false));
        assert_eq!(rf.round_f32(-1.0, Rounding::NearestEven, 0), (-128, true));
        assert_eq!(rf.to_f32(128), 0.75);
        // The same accumulator path: 0.75 as 3 * 2^-2.
        let hw = RealFormat::new(Format::new(8, 0).unwrap(), 3 << 29).unwrap();
        assert_eq!(rf.round_acc(3, -2, Rounding::NearestEven, 0), (128, false));
        assert_eq!(hw.round_acc(3, -2, Rounding::NearestEven, 0), (127, true));
    }

    #[test]
    fn f32_quantization_is_exact_division() {
        // 8 bits, scale 0, M = 0.75: step 0.75 / 128 = 3 * 2^-9.
        let rf = RealFormat::new(Format::new(8, 0).unwrap(), 3 << 29).unwrap();
        let step = 3.0 / 512.0; // 3 * 2^-9 (a literal: powi is inexact under Miri)
        assert_eq!(rf.value_exp(), -38);
        assert_eq!(rf.to_f32(1), step);
        assert_eq!(rf.to_f32(-128), -0.75);
        // 0.5 / step = 85.33 -> 85; 1.5 steps -> tie.
        assert_eq!(rf.round_f32(0.5, Rounding::NearestEven, 0), (85, false));
        assert_eq!(
            rf.round_f32(1.5 * step, Rounding::NearestEven, 0),
            (2, false)
        );
        assert_eq!(
            rf.round_f32(2.5 * step, Rounding::NearestEven, 0),
            (2, false)
        );
        assert_eq!(
            rf.round_f32(2.5 * step, Rounding::NearestAway, 0),
            (3, false)
        );
        assert_eq!(
            rf.round_f32(-2.5 * step, Rounding::NearestAway, 0),
            (-3, false)
        );
        assert_eq!(rf.round_f32(-2.5 * step, Rounding::Floor, 0), (-3, false));
        assert_eq!(rf.round_f32(0.75, Rounding::NearestEven, 0), (127, true));
        assert_eq!(rf.round_f32(-0.75, Rounding::NearestEven, 0), (-128, false));
        assert_eq!(rf.round_f32(-1.0, Rounding::NearestEven, 0), (-128, true));
        assert_eq!(rf.round_f32(f32::NAN, Rounding::NearestEven, 0), (0, false));
        // Every code round-trips through its f32 value.
        for q in -128..=127 {
            assert_eq!(
                rf.round_f32(rf.to_f32(q), Rounding::NearestEven, 0),
                (q, false)
            );
        }
    }

    #[test]
    fn accumulator_requantization() {
        // Output 8 bits, scale 0, M = 0.75 (step 3 * 2^-9). An accumulator at
        // exponent -14 (two Q0.7 codes): acc = 8192 is 0.5 -> 85.33 -> 85.
        let rf = RealFormat::new(Format::new(8, 0).unwrap(), 3 << 29).unwrap();
        let ms = rf.mul_shift(-14);
        // 2^61 / (3 * 2^29) = 2^32 / 3 = 1431655765.33 -> 1431655765, shift 30 - 7 + 14.
        assert_eq!(
            ms,
            MulShift {
                multiplier: 1_431_655_765,
                shift: 37
            }
        );
        assert_eq!(
            rf.round_acc(8192, -14, Rounding::NearestEven, 0),
            (85, false)
        );
        assert_eq!(rf.round_acc(-8192, -14, Rounding::Floor, 0), (-86, false));
        assert_eq!(rf.round_acc(1 << 20, -14, Rounding::Floor, 0), (127, true));
        // M = 2^30: M_eff = 2^31 is normalised to 2^30 with one less shift.
        let half = RealFormat::new(Format::new(8, 0).unwrap(), 1 << 30).unwrap();
        assert_eq!(
            half.mul_shift(-14),
            MulShift {
                multiplier: 1 << 30,
                shift: 36
            }
        );
        // Exact here: step 2^-8, 0.5 -> 128 saturates to 127; 0.25 -> 64.
        assert_eq!(
            half.round_acc(4096, -14, Rounding::NearestEven, 0),
            (64, false)
        );
        // Exact quotient acc / 96; M_eff is 2^32 / 3 rounded down, so the
        // product lies just below it. Multiply-and-shift equals the exact
        // division except where the exact quotient sits on a rounding
        // boundary (an integer for Floor, a half-integer for nearest).
        for acc in -3000i64..3000 {
            for r in [
                Rounding::Floor,
                Rounding::NearestEven,
                Rounding::NearestAway,
            ] {
                let (ms, exact) = (rf.round_acc(acc, -14, r, 0), rf.round_exact(acc, -14, r, 0));
                if acc % 48 != 0 {
                    assert_eq!(ms, exact, "{acc} {r:?}");
                }
            }
        }
        assert_eq!(
            rf.round_exact(144, -14, Rounding::NearestEven, 0),
            (2, false)
        ); // 1.5
        assert_eq!(rf.round_acc(144, -14, Rounding::NearestEven, 0), (1, false)); // 1.5 - 2^-35
        assert_eq!(rf.round_exact(96, -14, Rounding::Floor, 0), (1, false));
        assert_eq!(rf.round_acc(96, -14, Rounding::Floor, 0), (0, false));
    }

    #[test]
    fn from_max_reproduces_nics_float_scale() {
        // max = 1.5 = 3 * 2^-1: scale 1, M = 0.75 * 2^31.
        let rf = RealFormat::from_max(8, 3, -1).unwrap();
        assert_eq!((rf.format().scale(), rf.multiplier()), (1, 3 << 29));
        // A power of two: max = 1 -> scale 1, M = 2^30 (0.5 * 2 = 1).
        let rf = RealFormat::from_max(8, 1, 0).unwrap();
        assert_eq!((rf.format().scale(), rf.multiplier()), (1, 1 << 30));
        // nics: step = max / 2^(bits-1), so max is code 2^(bits-1) (saturates).
        let rf = RealFormat::from_max(4, 3, -1).unwrap();
        assert_eq!(rf.round_f32(1.5, Rounding::NearestEven, 0), (7, true));
        assert_eq!(rf.to_f32(4), 0.75);
        // More than 31 significant bits round the range up.
        let rf = RealFormat::from_max(8, (1u64 << 40) + 1, 0).unwrap();
        assert_eq!((rf.format().scale(), rf.multiplier()), (41, (1 << 30) + 1));
        let rf = RealFormat::from_max(8, (1u64 << 41) - 1, 0).unwrap();
        assert_eq!((rf.format().scale(), rf.multiplier()), (42, 1 << 30));
        // All zero: nics_fix_pt's eps 1e-5.
        let rf = RealFormat::from_max(8, 0, 0).unwrap();
        let (m, e) = decompose_f32(1e-5).unwrap();
        assert_eq!(rf.format().scale(), -16);
        assert_eq!(rf.multiplier() as i64, m << (e + 16 + 31));
        // Clamped scales.
        let rf = RealFormat::from_max(8, 1, 500).unwrap();
        assert_eq!((rf.format().scale(), rf.multiplier()), (127, (1 << 31) - 1));
        let rf = RealFormat::from_max(8, 1, -500).unwrap();
        assert_eq!((rf.format().scale(), rf.multiplier()), (-128, 1 << 30));
    }

    #[test]
    fn extreme_exponents_do_not_overflow() {
        let rf = RealFormat::new(Format::new(8, 0).unwrap(), 3 << 29).unwrap();
        assert_eq!(
            rf.round_acc(5, i32::MIN, Rounding::NearestEven, 0),
            (0, false)
        );
        assert_eq!(
            rf.round_acc(5, i32::MAX, Rounding::NearestEven, 0),
            (127, true)
        );
        assert_eq!(rf.round_acc(-5, i32::MIN, Rounding::Floor, 0), (-1, false));
        assert_eq!(
            rf.round_exact(5, i32::MAX, Rounding::NearestEven, 0),
            (127, true)
        );
        let top = RealFormat::from_max(8, u64::MAX, i32::MAX).unwrap();
        assert_eq!(top.format().scale(), 127);
        let bottom = RealFormat::from_max(8, 1, i32::MIN).unwrap();
        assert_eq!(bottom.format().scale(), -128);
    }

    #[test]
    fn new_checks_the_multiplier() {
        let f = Format::new(8, 0).unwrap();
        for m in [0, 1, (1 << 30) - 1, 1 << 31, u32::MAX] {
            assert!(
                matches!(RealFormat::new(f, m), Err(Error::Invalid { .. })),
                "{m}"
            );
        }
        assert!(RealFormat::new(f, 1 << 30).is_ok());
        assert!(RealFormat::new(f, (1 << 31) - 1).is_ok());
    }
}

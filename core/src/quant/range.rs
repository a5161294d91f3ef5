//! Automatic scale selection ([`Method::Auto`](crate::Method::Auto)) with the
//! [`RangeMethod`]s, computed with integers only.
//!
//! f32 input is read through its exact bits ([`decompose_f32`]); integer input
//! `q * 2^exp` is used as it is. No `log2`, `sqrt` or float sum is involved, so
//! every target chooses the same scale.
//!
//! * `Max`: `ceil(log2(max |x|))` from the exponent and significand bits.
//! * `MaxTenPercent`: the same of the `k`-th largest `|x|`, `k = max(n / 10, 1)`,
//!   found by a binary search over scales (nine counting passes, no buffer).
//! * `ThreeSigma`: the least `s` with `3 * std + |mean| <= 2^s`, decided exactly
//!   by squaring (`9 n D <= (n - 1) R^2` with `D = n S2 - S1^2`,
//!   `R = n 2^s - |S1|`, in 256-bit products). Values are read on the grid
//!   `2^(c - 31)`, `c = ceil(log2(max |x|))`, rounding toward minus infinity;
//!   integer input whose codes span at most 31 bits is read exactly.
//! * `Sweep`: total absolute error of `s`, `s - 1`, `s - 2` (`s` from `Max`),
//!   each summed exactly on the grid 24 bits below the finest step; the least
//!   error wins, ties keep the larger scale. Stochastic rounding is evaluated
//!   as nearest-even (its expectation).
//! * `MinMax` (asymmetric): the least scale whose `2^bits` codes, shifted
//!   by an integer zero point, cover `[min(x, 0), max(x, 0)]`, and the zero
//!   point nearest 0 that does; see [`choose_min_max_f32`].
//! * `Running` keeps a moving average in the config
//!   ([`QuantConfig::update_scale_f32`](crate::QuantConfig::update_scale_f32)
//!   and [`super::running`]); the stateless functions here give it Max's
//!   scale (what its first observation chooses).
//!
//! Results are clamped to the `i8` scale range `-128..=127`. When the
//! selected magnitude is zero (all-zero data) the scale is
//! [`ZERO_DATA_SCALE`] (`-16`, what nics_fix_pt's `eps = 1e-5` gives).
//! Unlike nics_fix_pt, a non-zero maximum below `1e-5` gets its exact scale.

use super::config::{RangeMethod, Rounding};
use super::format::Format;
use super::round::{ceil_log2_abs, decompose_f32, requantize_one, to_grid};
use crate::error::{Error, Result};

/// Scale chosen for data whose selected magnitude is zero.
pub const ZERO_DATA_SCALE: i8 = -16;

/// Data read as exact `(m, e)` pairs, value `m * 2^e`.
trait Samples {
    fn len(&self) -> usize;
    fn get(&self, i: usize) -> (i64, i32);
    /// A grid every element lies on, if there is one (integer input).
    fn native_exp(&self) -> Option<i32>;
    /// The smallest and the largest element, as `(m, e)` pairs.
    fn min_max(&self) -> ((i64, i32), (i64, i32));
    /// `ceil(log2(max |x|))`, `None` when every element is zero.
    fn max_ceil_log2(&self) -> Option<i32> {
        (0..self.len())
            .filter_map(|i| {
                let (m, e) = self.get(i);
                ceil_log2_abs(m, e)
            })
            .max()
    }
}

/// f32 data and the largest of its magnitudes' bit patterns (a finite
/// `|x|` orders as its bits do).
struct F32s<'a>(&'a [f32], u32);

/// The largest `bits & 0x7fff_ffff` of `x` (0 for empty `x`): at least
/// `0x7f80_0000` iff some value is NaN or infinite (`0x7fc0_0000` if
/// some value is NaN). Vectorises; large slices are split across threads
/// when a hook is installed ([`crate::accel`]: the maximum of the parts'
/// maxima is the same).
pub(crate) fn max_abs_bits(x: &[f32]) -> u32 {
    crate::accel::split_pass(x.len(), x, |x, _| crate::accel::max_abs_bits(x), u32::max)
}

/// The body of [`max_abs_bits`] on one part (compiled once per
/// instruction set, see [`crate::accel`]).
#[inline(always)]
pub(crate) fn max_abs_bits_of(x: &[f32]) -> u32 {
    if cfg!(target_arch = "arm") {
        return max_abs_bits_int(x);
    }
    max_abs_bits_lanes(x)
}

/// [`max_abs_bits_of`] as an integer maximum of the bits (Arm's 32-bit
/// cores: no vector lanes, and an integer compare-and-select is two
/// instructions where an f32 one is four). Any NaN has bits above
/// `0x7f80_0000` and makes the maximum so: then the answer is
/// `0x7fc0_0000`, as the lanes give.
#[inline(always)]
pub(crate) fn max_abs_bits_int(x: &[f32]) -> u32 {
    let big = x.iter().fold(0u32, |b, v| b.max(v.to_bits() & 0x7fff_ffff));
    if big > 0x7f80_0000 {
        return 0x7fc0_0000;
    }
    big
}

/// [`max_abs_bits_of`] in f32 lanes (vectorises on desktops).
#[inline(always)]
pub(crate) fn max_abs_bits_lanes(x: &[f32]) -> u32 {
    // Float maxima of |x| (a finite |x| orders as its bits do; infinity
    // is the largest) plus a NaN flag: cheaper lane operations than
    // unsigned integer maxima on baseline x86-64.
    const L: usize = 16;
    let (chunks, rest) = x.as_chunks::<L>();
    let mut m = [0f32; L];
    let mut nan = [false; L];
    for c in chunks {
        for l in 0..L {
            let a = c[l].abs();
            m[l] = if a > m[l] { a } else { m[l] };
            nan[l] |= a.is_nan();
        }
    }
    let big = m
        .iter()
        .chain(rest)
        .fold(0u32, |b, v| b.max(v.to_bits() & 0x7fff_ffff));
    // A NaN anywhere gives one answer, wherever the parts start.
    if nan.iter().chain(&[big > 0x7f80_0000]).any(|&n| n) {
        return 0x7fc0_0000;
    }
    big
}

/// The index of the first NaN or infinity in `x`, if any (one vectorised
/// pass when there is none).
pub(crate) fn first_non_finite(x: &[f32]) -> Option<usize> {
    if max_abs_bits(x) < 0x7f80_0000 {
        return None;
    }
    x.iter().position(|v| !v.is_finite())
}

impl Samples for F32s<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, i: usize) -> (i64, i32) {
        // Finiteness was checked on entry.
        // Indices come from `0..len()`; beyond, this reads 0 (no panic path).
        let x = self.0.get(i).copied().unwrap_or(0.0);
        decompose_f32(x).unwrap_or((0, 0))
    }
    fn native_exp(&self) -> Option<i32> {
        None
    }
    fn min_max(&self) -> ((i64, i32), (i64, i32)) {
        // Finite values (checked on entry) compare exactly as f32.
        let (lo, hi) = self.0.iter().fold((0f32, 0f32), |(lo, hi), &v| {
            (if v < lo { v } else { lo }, if v > hi { v } else { hi })
        });
        let d = |v: f32| decompose_f32(v).unwrap_or((0, 0));
        (d(lo), d(hi))
    }
    fn max_ceil_log2(&self) -> Option<i32> {
        // ceil(log2 |x|) is monotonic in |x|: the largest |x| (found from
        // the bits on entry), then its bits.
        let (m, e) = decompose_f32(f32::from_bits(self.1))?;
        ceil_log2_abs(m, e)
    }
}

struct Ints<'a, S> {
    q: &'a [S],
    exp: i32,
}

impl<S: Copy + Into<i64>> Samples for Ints<'_, S> {
    fn len(&self) -> usize {
        self.q.len()
    }
    fn get(&self, i: usize) -> (i64, i32) {
        // Indices come from `0..len()`; beyond, this reads 0 (no panic path).
        (self.q.get(i).map_or(0, |&q| q.into()), self.exp)
    }
    fn native_exp(&self) -> Option<i32> {
        Some(self.exp)
    }
    fn min_max(&self) -> ((i64, i32), (i64, i32)) {
        let (lo, hi) = self.q.iter().fold((0i64, 0i64), |(lo, hi), &v| {
            let v = v.into();
            (lo.min(v), hi.max(v))
        });
        ((lo, self.exp), (hi, self.exp))
    }
    fn max_ceil_log2(&self) -> Option<i32> {
        let big = self.q.iter().map(|&v| v.into().unsigned_abs()).max()?;
        match big {
            0 => None,
            1 => Some(self.exp),
            _ => Some(self.exp + 64 - (big - 1).leading_zeros() as i32),
        }
    }
}

/// Choose the scale of f32 data with `range` for a `bits`-bit format.
///
/// `rounding` matters only to [`RangeMethod::Sweep`].
///
/// # Errors
///
/// [`Error::EmptyInput`] for empty `x`, [`Error::NonFinite`] naming the first
/// NaN or infinity, [`Error::TooManyElements`] above `2^32` elements,
/// [`Error::BitsOutOfRange`] for `bits` outside `2..=16`.
///
/// # Examples
///
/// ```
/// use fixnn::{RangeMethod, Rounding};
/// use fixnn::quant::range::choose_scale_f32;
/// let x = [0.2513, -0.52, 0.0];
/// assert_eq!(choose_scale_f32(RangeMethod::Max, 2, Rounding::NearestEven, &x)?, 0);
/// # Ok::<(), fixnn::Error>(())
/// ```
pub fn choose_scale_f32(range: RangeMethod, bits: u8, rounding: Rounding, x: &[f32]) -> Result<i8> {
    let big = max_abs_bits(x);
    if big >= 0x7f80_0000 {
        let index = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(Error::NonFinite { index });
    }
    choose(range, Format::new(bits, 0)?, rounding, &F32s(x, big))
}

/// [`choose_scale_f32`] for formats like `like` (its bits and clamp; its
/// scale is ignored): [`RangeMethod::Sweep`] measures the error with
/// `like`'s clamp. The other range methods do not depend on the clamp.
///
/// # Errors
///
/// As [`choose_scale_f32`].
pub fn choose_scale_f32_for(
    range: RangeMethod,
    like: Format,
    rounding: Rounding,
    x: &[f32],
) -> Result<i8> {
    let big = max_abs_bits(x);
    if big >= 0x7f80_0000 {
        let index = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(Error::NonFinite { index });
    }
    choose(range, like, rounding, &F32s(x, big))
}

/// Choose the scale of integer data `q * 2^exp` with `range` for a
/// `bits`-bit format. Integer arithmetic only.
///
/// # Errors
///
/// [`Error::EmptyInput`], [`Error::TooManyElements`], [`Error::BitsOutOfRange`]
/// as for [`choose_scale_f32`].
pub fn choose_scale_codes<S: Copy + Into<i64>>(
    range: RangeMethod,
    bits: u8,
    rounding: Rounding,
    exp: i32,
    q: &[S],
) -> Result<i8> {
    choose(range, Format::new(bits, 0)?, rounding, &Ints { q, exp })
}

/// [`choose_scale_codes`] for formats like `like` (bits and clamp, as
/// [`choose_scale_f32_for`]).
///
/// # Errors
///
/// As [`choose_scale_codes`].
pub fn choose_scale_codes_for<S: Copy + Into<i64>>(
    range: RangeMethod,
    like: Format,
    rounding: Rounding,
    exp: i32,
    q: &[S],
) -> Result<i8> {
    choose(range, like, rounding, &Ints { q, exp })
}

fn choose<S: Samples>(range: RangeMethod, like: Format, rounding: Rounding, s: &S) -> Result<i8> {
    let n = s.len();
    if n == 0 {
        return Err(Error::EmptyInput);
    }
    if n as u64 > u32::MAX as u64 {
        return Err(Error::TooManyElements { len: n as u64 });
    }
    let Some(c) = max_ceil_log2(s) else {
        return Ok(ZERO_DATA_SCALE);
    };
    Ok(match range {
        // Without its state, Running chooses what a first observation does.
        RangeMethod::Max | RangeMethod::Running => clamp_scale(c),
        RangeMethod::MaxTenPercent => ten_percent(s),
        RangeMethod::ThreeSigma => three_sigma(s, c),
        RangeMethod::Sweep => sweep(s, c, like, rounding),
        RangeMethod::MinMax => min_max_rule(like.bits(), s.min_max()).0,
    })
}

/// Choose the scale and zero point of f32 data for a `bits`-bit format
/// with [`RangeMethod::MinMax`] (an asymmetric range). Integer arithmetic
/// on the f32 bits.
///
/// # Rule
///
/// With `lo = min(min x, 0)`, `hi = max(max x, 0)` (0 is always in the
/// range, so it is exactly representable) and a scale `s` (step
/// `2^t`, `t = s + 1 - bits`), let `L = ceil(-lo / 2^t)` and
/// `H = ceil(hi / 2^t)`: the codes the data need are `-L..=H`. They fit
/// the `2^bits` register values shifted by a zero point `z`
/// (codes `-2^(bits-1) - z ..= 2^(bits-1) - 1 - z`) iff
/// `L + H <= 2^bits - 1`, for every `z` in
/// `[L - 2^(bits-1), 2^(bits-1) - 1 - H]`.
///
/// * The scale is the least `s` for which the codes fit (it is one of
///   `c - 1`, `c`, `c + 1`, with `c = ceil(log2(max |x|))`), clamped to
///   `-128..=127`.
/// * The zero point is the one of that interval nearest 0 (0 itself when
///   the data fit the symmetric range at that step, as symmetric data do),
///   so there is no tie.
/// * All-zero data: `(`[`ZERO_DATA_SCALE`]`, 0)`.
/// * Data too large to fit even at scale 127 (`|x|` near `f32::MAX`):
///   scale 127 and `z = floor((L - 2^(bits-1) + 2^(bits-1) - 1 - H) / 2)`
///   clamped to the register range (the overflow is split between the two
///   ends; the data saturate).
///
/// Every value `x` then rounds (any [`Rounding`]) to a code in range:
/// nothing saturates unless the data are too large for scale 127.
///
/// # Errors
///
/// [`Error::EmptyInput`], [`Error::NonFinite`] naming the first NaN or
/// infinity, [`Error::BitsOutOfRange`] for `bits` outside `2..=16`,
/// [`Error::TooManyElements`] above `2^32` elements.
///
/// # Examples
///
/// ```
/// use fixnn::quant::range::choose_min_max_f32;
/// // ReLU-like data in [0, 0.9], 8 bits: step 2^-8, codes 0..=231 needed,
/// // zero point -104 (registers -128..=127 hold codes -24..=231).
/// assert_eq!(choose_min_max_f32(8, &[0.0, 0.9, 0.3])?, (-1, -104));
/// // Symmetric data keep z = 0.
/// assert_eq!(choose_min_max_f32(8, &[-1.0, 1.0])?, (1, 0));
/// # Ok::<(), fixnn::Error>(())
/// ```
pub fn choose_min_max_f32(bits: u8, x: &[f32]) -> Result<(i8, i32)> {
    Format::new(bits, 0)?;
    check_count(x.len())?;
    let big = max_abs_bits(x);
    if big >= 0x7f80_0000 {
        let index = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(Error::NonFinite { index });
    }
    Ok(min_max_rule(bits, F32s(x, big).min_max()))
}

/// [`choose_min_max_f32`] for integer data `q * 2^exp` (codes or wide
/// accumulators), by the same rule, on `min q` and `max q` exactly.
///
/// # Errors
///
/// [`Error::EmptyInput`], [`Error::BitsOutOfRange`],
/// [`Error::TooManyElements`] as for [`choose_min_max_f32`].
///
/// # Examples
///
/// ```
/// use fixnn::quant::range::choose_min_max_codes;
/// // Values -1/4 .. 9/4 (codes -1..=9 at 2^-2), 4 bits: scale 1 (step
/// // 2^-2; 11 of the 16 codes), z = -2 (registers -8..=7 hold codes -6..=9).
/// assert_eq!(choose_min_max_codes(4, -2, &[-1i32, 9, 1])?, (1, -2));
/// // Symmetric enough: -3/4 .. 5/4 fits -8..=7 at the same step, z = 0.
/// assert_eq!(choose_min_max_codes(4, -2, &[-3i32, 5])?, (1, 0));
/// # Ok::<(), fixnn::Error>(())
/// ```
pub fn choose_min_max_codes<S: Copy + Into<i64>>(bits: u8, exp: i32, q: &[S]) -> Result<(i8, i32)> {
    Format::new(bits, 0)?;
    check_count(q.len())?;
    Ok(min_max_rule(bits, Ints { q, exp }.min_max()))
}

fn check_count(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::EmptyInput);
    }
    if n as u64 > u32::MAX as u64 {
        return Err(Error::TooManyElements { len: n as u64 });
    }
    Ok(())
}

/// `ceil(a * 2^d)` for a magnitude `a`, saturating far above any code.
fn ceil_shift(a: u64, d: i32) -> i128 {
    if a == 0 {
        0
    } else if d >= 0 {
        if d > 62 {
            i128::MAX >> 2
        } else {
            (a as i128) << d
        }
    } else if d <= -64 {
        1
    } else {
        let s = -d;
        ((a as i128) + (1i128 << s) - 1) >> s
    }
}

/// The [`RangeMethod::MinMax`] rule of [`choose_min_max_f32`] on the
/// smallest and largest element `(m, e)` (value `m * 2^e`); `bits` valid.
///
/// Not inlined: its `i128` temporaries would otherwise enlarge the stack
/// frame of every caller of `update_scale_*`, MinMax or not (a real cost
/// on a 16 KB Cortex-M0).
#[inline(never)]
fn min_max_rule(bits: u8, (lo, hi): ((i64, i32), (i64, i32))) -> (i8, i32) {
    // Only the negative part of the minimum and the positive part of the
    // maximum count: 0 is always in the range.
    let lo = if lo.0 < 0 {
        (lo.0.unsigned_abs(), lo.1)
    } else {
        (0, 0)
    };
    let hi = if hi.0 > 0 {
        (hi.0.unsigned_abs(), hi.1)
    } else {
        (0, 0)
    };
    let c = match (
        ceil_log2_abs(lo.0 as i64, lo.1),
        ceil_log2_abs(hi.0 as i64, hi.1),
    ) {
        (None, None) => return (ZERO_DATA_SCALE, 0),
        (a, b) => a.max(b).unwrap_or(0),
    };
    let half = 1i128 << (bits - 1);
    let codes = |s: i32| {
        let t = s + 1 - bits as i32;
        (ceil_shift(lo.0, lo.1 - t), ceil_shift(hi.0, hi.1 - t))
    };
    let mut scale = clamp_scale(c + 1) as i32;
    for s in [c - 1, c] {
        let s = clamp_scale(s) as i32;
        let (l, h) = codes(s);
        if l + h < 2 * half {
            scale = s;
            break;
        }
    }
    let (l, h) = codes(scale);
    let (zlo, zhi) = (l - half, half - 1 - h);
    let z = if zlo <= zhi {
        0i128.clamp(zlo, zhi)
    } else {
        ((zlo + zhi) >> 1).clamp(-half, half - 1)
    };
    (scale as i8, z as i32)
}

fn clamp_scale(s: i32) -> i8 {
    s.clamp(i8::MIN as i32, i8::MAX as i32) as i8
}

fn max_ceil_log2<S: Samples>(s: &S) -> Option<i32> {
    s.max_ceil_log2()
}

/// Largest clamped scale `t` with at least `k` elements of scale `>= t`.
fn ten_percent<S: Samples>(s: &S) -> i8 {
    let n = s.len();
    let k = (n / 10).max(1);
    let count_at_least = |t: i32| {
        (0..n)
            .filter(|&i| {
                let (m, e) = s.get(i);
                matches!(ceil_log2_abs(m, e), Some(c) if c.clamp(-128, 127) >= t)
            })
            .count()
    };
    if count_at_least(-128) < k {
        return ZERO_DATA_SCALE; // the k-th largest |x| is zero
    }
    let (mut lo, mut hi) = (-128i32, 127i32); // count(lo) >= k
    while lo < hi {
        let mid = lo + (hi - lo + 1) / 2;
        if count_at_least(mid) >= k {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo as i8
}

fn three_sigma<S: Samples>(s: &S, c: i32) -> i8 {
    let grid = match s.native_exp() {
        Some(ne) if c - ne <= 31 => ne,
        _ => c - 31,
    };
    let n = s.len() as i128;
    let (mut s1, mut s2) = (0i128, 0i128);
    for i in 0..s.len() {
        let (m, e) = s.get(i);
        let v = to_grid(m, e, grid) as i128; // |v| <= 2^31
        s1 += v;
        s2 += v * v;
    }
    // n * (n - 1) * var = n * S2 - S1^2 >= 0; both terms < 2^127.
    let d = (n * s2 - s1 * s1).max(0) as u128;
    let fits = |s: i32| -> bool {
        let shift = s - grid;
        if shift < 0 {
            return false;
        }
        let r = n * (1i128 << shift.min(60)) - s1.abs();
        if r < 0 {
            return false;
        }
        if n == 1 {
            return true;
        }
        let lhs = mul_wide(9 * n as u128, d);
        let rhs = mul_wide((n as u128 - 1) * r as u128, r as u128);
        lhs <= rhs
    };
    let mut best = c + 3; // 3 std + |mean| < 3 sqrt(2) max + max < 2^(c+3)
    while best < 127 && !fits(best) {
        best += 1;
    }
    while best > -128 && best - 1 > grid && fits(best - 1) {
        best -= 1;
    }
    clamp_scale(best)
}

/// Full 256-bit product `a * b` as `(high, low)` 128-bit halves.
fn mul_wide(a: u128, b: u128) -> (u128, u128) {
    const LO: u128 = u64::MAX as u128;
    let (a1, a0) = (a >> 64, a & LO);
    let (b1, b0) = (b >> 64, b & LO);
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 64) + (p01 & LO) + (p10 & LO);
    let low = (p00 & LO) | (mid << 64);
    let high = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    (high, low)
}

fn sweep<S: Samples>(s: &S, c: i32, like: Format, rounding: Rounding) -> i8 {
    let bits = like.bits();
    let rounding = match rounding {
        Rounding::Stochastic => Rounding::NearestEven,
        // TFLite rounds single values half away from zero.
        Rounding::Tflite => Rounding::NearestAway,
        r => r,
    };
    let top = clamp_scale(c) as i32;
    let lowest = (top - 2).max(-128);
    let finest = lowest + 1 - bits as i32;
    let fine_grid = finest - 24;
    let grid = match s.native_exp() {
        Some(ne) if ne >= fine_grid => ne,
        _ => fine_grid,
    };
    let unit = grid.min(finest); // every value and every step is a multiple of 2^unit
    let mut best = (top, u128::MAX);
    for scale in (lowest..=top).rev() {
        let Ok(f) = Format::with_clamp(bits, scale as i8, like.clamp()) else {
            continue;
        };
        let mut err = 0u128;
        for i in 0..s.len() {
            let (m, e) = s.get(i);
            let v = to_grid(m, e, grid);
            let (q, _) = requantize_one(v, grid, f, rounding, 0);
            let exact = (v as i128) << (grid - unit);
            let back = (q as i128) << (f.step_exp() - unit);
            err += (exact - back).unsigned_abs();
        }
        if err < best.1 {
            best = (scale, err);
        }
    }
    best.0 as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_and_lane_maxima_agree() {
        let s = crate::quant::Stream::new(4, 5, 6);
        let n = if cfg!(miri) { 200 } else { 20_000u32 };
        let special = [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-45,
        ];
        for len in [0usize, 1, 15, 16, 17, 100] {
            for k in 0..(n / 100) {
                let x: std::vec::Vec<f32> = (0..len as u32)
                    .map(|i| {
                        let d = s.draw(k * 1000 + i);
                        if d.is_multiple_of(41) {
                            special[(d >> 8) as usize % special.len()]
                        } else if d.is_multiple_of(3) {
                            f32::from_bits(d)
                        } else {
                            f32::from_bits(d & 0x3fff_ffff)
                        }
                    })
                    .collect();
                assert_eq!(max_abs_bits_int(&x), max_abs_bits_lanes(&x), "{x:?}");
            }
        }
    }

    #[test]
    fn wide_product() {
        assert_eq!(mul_wide(u128::MAX, u128::MAX), (u128::MAX - 1, 1));
        assert_eq!(mul_wide(1 << 100, 1 << 100), (1 << 72, 0));
        assert_eq!(mul_wide(12345, 678), (0, 12345 * 678));
    }

    #[test]
    fn max_scale_is_exact_at_powers_of_two() {
        let m = |x: &[f32]| choose_scale_f32(RangeMethod::Max, 8, Rounding::NearestEven, x);
        assert_eq!(m(&[0.5]), Ok(-1));
        assert_eq!(m(&[0.5000001]), Ok(0));
        assert_eq!(m(&[-4.0, 1.0]), Ok(2));
        assert_eq!(m(&[0.0, -0.0]), Ok(ZERO_DATA_SCALE));
        assert_eq!(m(&[1e-45]), Ok(-128)); // 2^-149, clamped
        assert_eq!(m(&[f32::MAX]), Ok(127)); // 2^128 - ..., clamped
    }

    #[test]
    fn integer_input() {
        // codes 3 and -4 at exponent -2: max |x| = 1.0 -> scale 0
        let s = choose_scale_codes(RangeMethod::Max, 4, Rounding::NearestEven, -2, &[3i8, -4]);
        assert_eq!(s, Ok(0));
        let s = choose_scale_codes(RangeMethod::Max, 4, Rounding::NearestEven, 0, &[i64::MIN]);
        assert_eq!(s, Ok(63));
        let e = choose_scale_codes::<i32>(RangeMethod::Sweep, 4, Rounding::NearestEven, 0, &[]);
        assert_eq!(e, Err(Error::EmptyInput));
    }

    #[test]
    fn ten_percent_takes_the_kth_largest() {
        // 20 elements: k = 2, second largest |x| is 3.0 -> scale 2
        let mut x = [0.1f32; 20];
        x[0] = 100.0;
        x[7] = -3.0;
        let s = choose_scale_f32(RangeMethod::MaxTenPercent, 8, Rounding::NearestEven, &x);
        assert_eq!(s, Ok(2));
        // fewer than 10 elements: k = 1, the maximum
        let s = choose_scale_f32(RangeMethod::MaxTenPercent, 8, Rounding::NearestEven, &[5.0]);
        assert_eq!(s, Ok(3));
        let mut z = [0.0f32; 30];
        z[3] = 1.0;
        let s = choose_scale_f32(RangeMethod::MaxTenPercent, 8, Rounding::NearestEven, &z);
        assert_eq!(s, Ok(ZERO_DATA_SCALE)); // third largest is zero
    }

    #[test]
    fn ceil_shift_edges() {
        assert_eq!(ceil_shift(0, 100), 0);
        assert_eq!(ceil_shift(5, 2), 20);
        assert_eq!(ceil_shift(5, -1), 3);
        assert_eq!(ceil_shift(4, -2), 1);
        assert_eq!(ceil_shift(u64::MAX, -63), 2);
        assert_eq!(ceil_shift(u64::MAX, -64), 1);
        assert_eq!(ceil_shift(1, -1000), 1);
        assert!(ceil_shift(1, 1000) > 1 << 100);
    }

    #[test]
    fn min_max_scale_through_choose() {
        // choose_scale_* with MinMax gives the rule's scale.
        let x = [0.0f32, 0.9, 0.3];
        assert_eq!(
            choose_scale_f32(RangeMethod::MinMax, 8, Rounding::NearestEven, &x),
            Ok(choose_min_max_f32(8, &x).unwrap().0)
        );
        let s = choose_scale_codes(RangeMethod::MinMax, 4, Rounding::Floor, -2, &[-1i32, 9]);
        assert_eq!(s, Ok(1));
    }
}

//! The running range ([`RangeMethod::Running`](crate::RangeMethod::Running)):
//! an exponential moving average (EMA) of the observed range, and a
//! power-of-two scale chosen from it with hysteresis. Integer arithmetic
//! only, so every target computes the same state and scale.
//!
//! # State
//!
//! The EMA `r` lives in the tensor's config ([`QuantConfig::ema`]), so it is
//! saved and loaded with configs and checkpoints. It is a `u32`:
//!
//! * `0` ([`EMPTY`]): no observation yet (the default, also what a config
//!   written before this field existed loads as);
//! * otherwise `(e + 128) << 24 | m` with `m` in `[2^23, 2^24)` (bit 23
//!   set) and `e` in `-128..=127`: `r = m * 2^(e - 23)`, so
//!   `2^e <= r < 2^(e + 1)` with 24 significant bits. Any other value
//!   (non-zero with bit 23 clear) is invalid.
//!
//! Valid states compare as the ranges they encode (`a < b` as integers iff
//! `r(a) < r(b)`). `r` is kept in `[2^-128, (2^24 - 1) * 2^104]`; values
//! outside are clamped to these ends, which changes no scale (scales are
//! clamped to `-128..=127` anyway).
//!
//! # Observation
//!
//! `o = max |x|` of the batch, exact: from the f32 bits, or `max |q| * 2^exp`
//! for integer data. It is rounded up to 24 significant bits (this keeps
//! `ceil(log2 o)`) and clamped as above; all-zero data observes `o = 0`.
//!
//! # Update
//!
//! * Empty state: `r = o` (the first observation initialises the average;
//!   `o = 0` leaves the state empty).
//! * Otherwise `r' = r + (o - r) * 2^-k` with `k = `[`SHIFT`]` = 4`
//!   (momentum 1/16), computed exactly and rounded to 24 significant bits
//!   *toward `o`* (upward when `o > r`, downward when `o < r`). So `r'`
//!   lies between `r` and `o`, and moves by at least one unit in the last
//!   place whenever `o != r`: a constant observation is reached exactly, in
//!   a finite number of steps, from either side. Exactly,
//!   `r_n - o = (r_0 - o) (15/16)^n` up to that rounding: a step change is
//!   half tracked after 11 steps, 90% after 36.
//!
//! `k = 4` sits between PyTorch's momenta (0.1 for batch-norm statistics,
//! 0.01 for its moving-average observers): slow enough to smooth the range
//! of one batch against the next, fast enough that a short on-device run
//! sees it move. A power of two makes the update a shift.
//!
//! # Scale, with hysteresis
//!
//! `c = min(ceil(log2 r'), 127)`. With empty state before the update the
//! scale is `c` (Max's scale of the first batch; [`ZERO_DATA_SCALE`] for
//! all-zero data). Otherwise, with the config's current scale `s`:
//!
//! * `c > s` (the average left the range `2^s`): the scale goes up at once,
//!   to `c`, so a growing range costs no run of saturated steps;
//! * `r' < 3/4 * 2^(s - 1)`: the scale goes down, to `c`;
//! * otherwise it stays `s`.
//!
//! Without the margin, an average that wanders around a power of two
//! `2^(s-1)` flips the scale (and every code's meaning) each step. With it,
//! after going up past `2^(s-1)` the average must fall by more than a
//! quarter below it to come back: a dead band of `log2(4/3) = 0.415` bits,
//! far wider than the step-to-step change of a 1/16 average of batches of
//! similar range. The price is at most `log2(8/3) = 1.415` bits of unused
//! headroom at the top of the range (plain `ceil` wastes up to 1 bit).
//! A wider band (1/2) would waste up to 2 bits; a narrower one (7/8) would
//! be crossed by ordinary batch-to-batch noise.
//!
//! Without state ([`choose_scale_f32`](super::range::choose_scale_f32) and
//! friends) `Running` chooses what a first observation would: Max's scale.
//!
//! # Real-valued scales
//!
//! A config with a multiplier ([`QuantConfig::multiplier`]) keeps the same
//! state and update, and takes `r'` itself as the range, as range Max takes
//! `max |x|` ([`RealFormat::from_max_for`](super::RealFormat::from_max_for);
//! an empty state gives its `eps`). There is no hysteresis: the range moves
//! with the average, by at most 1/16 of the gap to the observation per
//! step, and has no power of two to flip across.
//!
//! [`QuantConfig::multiplier`]: crate::QuantConfig::multiplier
//!
//! [`QuantConfig::ema`]: crate::QuantConfig::ema
//!
//! # Examples
//!
//! ```
//! use fixnn::quant::running;
//! let s0 = running::observe_f32(&[0.5, -1.5])?; // o = 1.5 = 0xC00000 * 2^(0 - 23)
//! assert_eq!(s0, 128 << 24 | 0xC0_0000);
//! let s1 = running::update(s0, running::observe_f32(&[3.1])?);
//! // 1.5 + (3.1 - 1.5) / 16 = 1.599999994 (3.1 is 3.0999999 in f32),
//! // rounded up to 24 bits: 1.6 (1.60000002 in f32)
//! assert_eq!(running::to_f32(s1), 1.6);
//! assert_eq!(running::next_scale(s0, s1, 1), 1);
//! # Ok::<(), fixnn::Error>(())
//! ```

use super::range::{max_abs_bits, ZERO_DATA_SCALE};
use super::round::decompose_f32;
use crate::error::{Error, Result};

/// The shift `k` of the update `r += (o - r) * 2^-k` (momentum 1/16).
pub const SHIFT: u32 = 4;

/// The state before the first observation.
pub const EMPTY: u32 = 0;

const ONE: u32 = 1 << 23;
const MIN_E: i64 = -128;
const MAX_E: i64 = 127;

/// Whether `state` is [`EMPTY`] or a valid packed range (bit 23 set).
pub const fn is_valid(state: u32) -> bool {
    state == EMPTY || state & ONE != 0
}

/// The packed range as `(m, e)`, value `m * 2^(e - 23)` with `m` in
/// `[2^23, 2^24)`; `None` for [`EMPTY`] and invalid states.
pub const fn decode(state: u32) -> Option<(u32, i32)> {
    if state & ONE == 0 {
        return None;
    }
    Some((state & 0xff_ffff, (state >> 24) as i32 - 128))
}

/// Pack `(m, e)` (`m` in `[2^23, 2^24)`, `e` in `-128..=127`).
const fn encode(m: u32, e: i64) -> u32 {
    ((e + 128) as u32) << 24 | m
}

/// `n * 2^p` (`n > 0`) rounded to 24 significant bits (up or down),
/// clamped to the representable range.
fn normalize(n: u128, p: i64, up: bool) -> u32 {
    let len = 128 - n.leading_zeros() as i64;
    let (mut m, mut p) = if len > 24 {
        let shift = len - 24;
        let mut m = (n >> shift) as u32;
        if up && n & ((1u128 << shift) - 1) != 0 {
            m += 1;
        }
        (m, p + shift)
    } else {
        ((n << (24 - len)) as u32, p - (24 - len))
    };
    if m == 1 << 24 {
        m = ONE;
        p += 1;
    }
    let e = p + 23;
    if e < MIN_E {
        encode(ONE, MIN_E)
    } else if e > MAX_E {
        encode((1 << 24) - 1, MAX_E)
    } else {
        encode(m, e)
    }
}

/// The observed range `max |x|` of f32 data, rounded up and packed
/// (`0` for all-zero data).
///
/// # Errors
///
/// [`Error::EmptyInput`], [`Error::NonFinite`] naming the first NaN or
/// infinity, [`Error::TooManyElements`] above `2^32` elements.
pub fn observe_f32(x: &[f32]) -> Result<u32> {
    check_len(x.len())?;
    let big = max_abs_bits(x);
    if big >= 0x7f80_0000 {
        let index = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(Error::NonFinite { index });
    }
    match decompose_f32(f32::from_bits(big)) {
        Some((m, e)) if m != 0 => Ok(normalize(m.unsigned_abs() as u128, e as i64, true)),
        _ => Ok(EMPTY),
    }
}

/// The observed range `max |q| * 2^exp` of integer data, rounded up to 24
/// significant bits and packed (`0` for all-zero data).
///
/// # Errors
///
/// [`Error::EmptyInput`], [`Error::TooManyElements`].
pub fn observe_codes<S: Copy + Into<i64>>(exp: i32, q: &[S]) -> Result<u32> {
    check_len(q.len())?;
    let big = q
        .iter()
        .map(|&v| v.into().unsigned_abs())
        .max()
        .unwrap_or(0);
    if big == 0 {
        return Ok(EMPTY);
    }
    Ok(normalize(big as u128, exp as i64, true))
}

fn check_len(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::EmptyInput);
    }
    if n as u64 > u32::MAX as u64 {
        return Err(Error::TooManyElements { len: n as u64 });
    }
    Ok(())
}

/// One EMA step: the state after observing `obs` (a packed observation,
/// `0` for all-zero data) from `state`. See the module docs for the
/// rounding. An invalid `state` is treated as [`EMPTY`].
pub fn update(state: u32, obs: u32) -> u32 {
    let Some((mr, er)) = decode(state) else {
        return obs;
    };
    if state == obs {
        return state;
    }
    let up = obs > state;
    let k = SHIFT as i64;
    // v = (r * (2^k - 1) + o) * 2^-k, both terms on the grid of the
    // smaller exponent; a term more than 64 binades below the other only
    // decides the directed rounding, so it is replaced by a sticky 1.
    let a = (mr as u128) * ((1u128 << k) - 1); // r * (2^k - 1), exponent er - 23
    let (n, p) = match decode(obs) {
        None => (a, er as i64 - 23 - k),
        Some((mo, eo)) => {
            let (er, eo) = (er as i64, eo as i64);
            let b = mo as u128;
            let lo = er.min(eo);
            let hi = er.max(eo);
            if hi - lo > 64 {
                let big = if er > eo { a } else { b };
                ((big << 64) | 1, hi - 23 - 64 - k)
            } else {
                ((a << (er - lo)) + (b << (eo - lo)), lo - 23 - k)
            }
        }
    };
    normalize(n, p, up)
}

/// `ceil(log2 r)` of the state, clamped to `127`; `None` for [`EMPTY`]
/// (and invalid states).
pub const fn ceil_log2(state: u32) -> Option<i8> {
    match decode(state) {
        None => None,
        Some((m, e)) => {
            let c = if m == ONE { e } else { e + 1 };
            Some(if c > 127 { 127 } else { c as i8 })
        }
    }
}

/// The scale after the update `before -> after`, from the current `scale`,
/// with the hysteresis of the module docs.
pub const fn next_scale(before: u32, after: u32, scale: i8) -> i8 {
    let Some(c) = ceil_log2(after) else {
        return ZERO_DATA_SCALE;
    };
    let Some((m, e)) = decode(after) else {
        return ZERO_DATA_SCALE;
    };
    if decode(before).is_none() || c > scale {
        return c;
    }
    // r < 3/4 * 2^(s - 1) = 0xC00000 * 2^((s - 2) - 23)
    let t = scale as i32 - 2;
    if e < t || (e == t && m < 0xC0_0000) {
        c
    } else {
        scale
    }
}

/// The state's range as f32 (for display; `0.0` for [`EMPTY`]), rounded
/// to nearest-even where it is below the normal f32 range.
pub fn to_f32(state: u32) -> f32 {
    match decode(state) {
        None => 0.0,
        Some((m, e)) => crate::quant::acc_to_f32(m as i64, e - 23),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_orders_as_the_values() {
        let a = observe_f32(&[0.75]).unwrap();
        let b = observe_f32(&[1.0]).unwrap();
        let c = observe_f32(&[1.0000001]).unwrap();
        assert!(a < b && b < c);
        assert_eq!(decode(b), Some((ONE, 0)));
        assert_eq!(ceil_log2(b), Some(0));
        assert_eq!(ceil_log2(c), Some(1));
        assert_eq!(decode(EMPTY), None);
        assert!(!is_valid(5) && is_valid(EMPTY) && is_valid(b));
    }

    #[test]
    fn observations_round_up_and_clamp() {
        // 2^24 + 1 needs 25 bits: rounded up to (2^23 + 1) * 2^1.
        let s = observe_codes(0, &[(1i64 << 24) + 1, -3]).unwrap();
        assert_eq!(decode(s), Some((ONE + 1, 24)));
        assert_eq!(ceil_log2(s), Some(25));
        // (2^24 - 1) * 2^39 + 1 rounds up to 2^63.
        let s = observe_codes(0, &[((1i64 << 24) - 1) << 39 | 1]).unwrap();
        assert_eq!(decode(s), Some((ONE, 63)));
        // Below 2^-128 and above 2^128: clamped.
        assert_eq!(observe_f32(&[1e-45]).unwrap(), encode(ONE, -128));
        assert_eq!(observe_codes(200, &[1i8]).unwrap(), encode(0xff_ffff, 127));
        assert_eq!(observe_f32(&[0.0, -0.0]), Ok(EMPTY));
        assert_eq!(observe_f32(&[]), Err(Error::EmptyInput));
        assert_eq!(
            observe_f32(&[1.0, f32::INFINITY]),
            Err(Error::NonFinite { index: 1 })
        );
    }

    #[test]
    fn update_rounds_toward_the_observation_and_reaches_it() {
        let one = encode(ONE, 0);
        let two = encode(ONE, 1);
        // 1 + (2 - 1) / 16 = 1.0625 exactly.
        assert_eq!(update(one, two), encode(ONE + (ONE >> 4), 0));
        // 2 + (1 - 2) / 16 = 1.9375 exactly.
        assert_eq!(update(two, one), encode(0xF8_0000, 0));
        // Empty state takes the observation; zero keeps it empty.
        assert_eq!(update(EMPTY, two), two);
        assert_eq!(update(EMPTY, EMPTY), EMPTY);
        // Converges exactly from both sides.
        for start in [one, encode(0xAB_CDEF, 3)] {
            let target = encode(0x9F_1234, 1);
            let mut r = start;
            let mut n = 0;
            while r != target {
                let next = update(r, target);
                assert!((r < target && next > r && next <= target) || (next < r && next >= target));
                r = next;
                n += 1;
                assert!(n < 1000);
            }
        }
        // Far-apart exponents: a sticky bit decides the rounding.
        let tiny = encode(ONE, -120);
        let big = encode(ONE, 100);
        // 2^100 * 15/16 + tiny / 16, down -> exactly 15/16 * 2^100.
        assert_eq!(update(big, tiny), encode(0xF0_0000, 99));
        // tiny * 15/16 + 2^96, up -> one unit above 2^96.
        assert_eq!(update(tiny, big), encode(ONE + 1, 96));
        // Zero data decays toward 0 and stops at the smallest range.
        let mut r = encode(ONE, -127);
        for _ in 0..40 {
            r = update(r, EMPTY);
        }
        assert_eq!(r, encode(ONE, -128));
    }

    #[test]
    fn hysteresis() {
        let at = |v: f32| observe_f32(&[v]).unwrap();
        // First observation: Max's scale.
        assert_eq!(next_scale(EMPTY, at(0.3), 5), -1);
        assert_eq!(next_scale(EMPTY, EMPTY, 5), ZERO_DATA_SCALE);
        // Up at once.
        assert_eq!(next_scale(at(1.0), at(1.01), 0), 1);
        // Down only below 3/4 * 2^(s - 1).
        assert_eq!(next_scale(at(1.0), at(0.375), 0), 0);
        assert_eq!(next_scale(at(1.0), at(0.37499997), 0), -1);
        assert_eq!(next_scale(at(1.0), at(0.1), 0), -3);
    }
}

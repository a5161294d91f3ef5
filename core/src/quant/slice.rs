//! Quantizing f32 slices to their quantized values, 16 elements at a time.
//!
//! The result of every element is exactly [`Rounder::round_f32`] followed by
//! [`Format::to_f32`] (the reference, element by element). The common case
//! (nearest or floor rounding, a step exponent whose inverse is a normal
//! f32, data whose scaled values are normal or zero) is computed
//! branch-free on whole chunks so that the compiler vectorises it:
//!
//! * `y = x * 2^(bits - 1 - scale)` is exact (a normal result of a product
//!   by a power of two);
//! * `y` is clamped to `[-2^16, 2^16]` first. Rounding is monotonic and
//!   both bounds are integers outside every code range, so a clamped value
//!   rounds to a code that saturates exactly when the unclamped one does
//!   (an overflow to infinity included);
//! * the clamped `y` is rounded as `round_exact_f32` (the routine
//!   [`round_f32`](super::round_f32) uses on its fast path) rounds it, with
//!   lane operations only (integer conversions by the `1.5 * 2^23` trick).
//!
//! A chunk that holds an element whose scaled value is subnormal (or
//! underflowed to zero from a non-zero `x`) is done element by element with
//! [`Rounder::round_f32`]; so is everything under stochastic rounding or a
//! step exponent outside the normal range.

use super::config::Rounding;
use super::format::{pow2_f32, Format};
use super::multiplier::RealFormat;
use super::Rounder;
use crate::accel;

/// Elements per chunk.
const L: usize = 16;

/// Scaled values at least this large saturate every format (`bits <= 16`).
const BIG: f32 = 65536.0;

/// Replace each value of `v` by its quantized value in `format`; record
/// clamps in `sat` if given; return how many were clamped. The values must
/// be finite (checked by the callers).
///
/// Large slices are split across threads when a hook is installed (see
/// [`crate::accel`]): each part's rounder starts at the part's global
/// element index, so the result is the same.
pub(crate) fn quantize_values_in_place(
    v: &mut [f32],
    format: Format,
    rounder: &Rounder,
    sat: Option<&mut [bool]>,
) -> u64 {
    accel::split_pass(
        v.len(),
        (v, sat),
        |(v, sat), off| accel::quantize_in_place(v, format, &part(rounder, off), sat),
        |a, b| a + b,
    )
}

/// [`quantize_values_in_place`] reading from `src` and writing the
/// quantized values to `dst` (the same length; checked by the callers).
pub(crate) fn quantize_values_into(
    src: &[f32],
    dst: &mut [f32],
    format: Format,
    rounder: &Rounder,
    sat: Option<&mut [bool]>,
) -> u64 {
    accel::split_pass(
        src.len().min(dst.len()),
        (src, (dst, sat)),
        |(src, (dst, sat)), off| accel::quantize_into(src, dst, format, &part(rounder, off), sat),
        |a, b| a + b,
    )
}

/// `r` for the part of a slice that starts at element `off` (`round_f32`
/// draws number `base + i` for element `i`, modulo `2^32`).
#[inline(always)]
fn part(r: &Rounder, off: usize) -> Rounder {
    r.at(r.base.wrapping_add(off as u32))
}

/// The body of [`quantize_values_in_place`] on one part (compiled once
/// per instruction set, see [`crate::accel`]).
#[inline(always)]
pub(crate) fn in_place_body(
    v: &mut [f32],
    format: Format,
    rounder: &Rounder,
    sat: Option<&mut [bool]>,
) -> u64 {
    run(&mut InPlace(v), format, rounder, sat)
}

/// The body of [`quantize_values_into`] on one part.
#[inline(always)]
pub(crate) fn into_body(
    src: &[f32],
    dst: &mut [f32],
    format: Format,
    rounder: &Rounder,
    sat: Option<&mut [bool]>,
) -> u64 {
    run(&mut Into(src, dst), format, rounder, sat)
}

/// Where the values come from and go to.
trait Io {
    fn len(&self) -> usize;
    /// The source.
    fn src(&self) -> &[f32];
    /// The destination of elements `i..i + n` (empty if out of range,
    /// which the callers' loops never ask for).
    fn dst(&mut self, i: usize, n: usize) -> &mut [f32];
    /// The destination of elements `i..i + L`, if in range.
    fn dst_chunk(&mut self, i: usize) -> Option<&mut [f32; L]>;

    /// Apply `f` (a value to its quantized value and clamp flag) to every
    /// element, `L` at a time; return the number of clamps.
    #[inline(always)]
    fn map(&mut self, sat: Option<&mut [bool]>, f: impl Fn(f32) -> (f32, bool)) -> u64 {
        // No flags is an empty slice: the chunk and element checks below
        // then never write, and the loop keeps the slice in registers.
        let sat: &mut [bool] = sat.unwrap_or_default();
        let len = self.len();
        let mut n = 0u64;
        let mut i = 0;
        while let Some(x) = self.src().get(i..len).and_then(|s| s.first_chunk::<L>()) {
            let mut vals = [0.0; L];
            let mut flags = [0u8; L];
            for l in 0..L {
                let (v, c) = f(x[l]);
                vals[l] = v;
                flags[l] = c as u8;
            }
            if let Some(d) = self.dst_chunk(i) {
                *d = vals;
            }
            if let Some(s) = chunk_mut(sat, i) {
                for (s, &c) in s.iter_mut().zip(&flags) {
                    *s = c != 0;
                }
            }
            n += flags.iter().map(|&c| c as u32).sum::<u32>() as u64;
            i += L;
        }
        for j in i..len {
            let Some(&x) = self.src().get(j) else { break };
            let (v, c) = f(x);
            for d in self.dst(j, 1) {
                *d = v;
            }
            if let Some(s) = sat.get_mut(j) {
                *s = c;
            }
            n += c as u64;
        }
        n
    }

    /// [`Io::map`] element by element (for targets without vector lanes);
    /// `sat`, when given, is as long as the source (else nothing is done
    /// and `None` returned, for the caller to take another path).
    fn map_scalar(
        &mut self,
        sat: Option<&mut [bool]>,
        f: impl Fn(f32) -> (f32, bool),
    ) -> Option<u64>;
}

/// The loop of [`Io::map_scalar`] over `(value, destination)` pairs: a
/// slice holds at most `isize::MAX` elements, so the `usize` count cannot
/// wrap.
#[inline(always)]
fn each<'a>(
    pairs: impl Iterator<Item = (f32, &'a mut f32)>,
    sat: Option<&mut [bool]>,
    f: impl Fn(f32) -> (f32, bool),
) -> u64 {
    let mut n = 0usize;
    match sat {
        Some(sat) => {
            for ((x, d), s) in pairs.zip(sat) {
                let (v, c) = f(x);
                *d = v;
                *s = c;
                n += c as usize;
            }
        }
        None => {
            for (x, d) in pairs {
                let (v, c) = f(x);
                *d = v;
                n += c as usize;
            }
        }
    }
    n as u64
}

struct InPlace<'a>(&'a mut [f32]);
struct Into<'a>(&'a [f32], &'a mut [f32]);

impl Io for InPlace<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len()
    }
    #[inline(always)]
    fn map_scalar(
        &mut self,
        sat: Option<&mut [bool]>,
        f: impl Fn(f32) -> (f32, bool),
    ) -> Option<u64> {
        if sat.as_deref().is_some_and(|s| s.len() < self.0.len()) {
            return None;
        }
        Some(each(self.0.iter_mut().map(|d| (*d, d)), sat, f))
    }
    #[inline(always)]
    fn src(&self) -> &[f32] {
        self.0
    }
    #[inline(always)]
    fn dst(&mut self, i: usize, n: usize) -> &mut [f32] {
        range_mut(self.0, i, n)
    }
    #[inline(always)]
    fn dst_chunk(&mut self, i: usize) -> Option<&mut [f32; L]> {
        chunk_mut(self.0, i)
    }
}

impl Io for Into<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len().min(self.1.len())
    }
    #[inline(always)]
    fn map_scalar(
        &mut self,
        sat: Option<&mut [bool]>,
        f: impl Fn(f32) -> (f32, bool),
    ) -> Option<u64> {
        if sat.as_deref().is_some_and(|s| s.len() < self.len()) {
            return None;
        }
        Some(each(self.0.iter().copied().zip(self.1.iter_mut()), sat, f))
    }
    #[inline(always)]
    fn src(&self) -> &[f32] {
        self.0
    }
    #[inline(always)]
    fn dst(&mut self, i: usize, n: usize) -> &mut [f32] {
        range_mut(self.1, i, n)
    }
    #[inline(always)]
    fn dst_chunk(&mut self, i: usize) -> Option<&mut [f32; L]> {
        chunk_mut(self.1, i)
    }
}

/// Elements `i..i + n` of `s`, or an empty slice if out of range.
#[inline(always)]
fn range_mut<T>(s: &mut [T], i: usize, n: usize) -> &mut [T] {
    match i.checked_add(n) {
        Some(end) => s.get_mut(i..end).unwrap_or_default(),
        None => &mut [],
    }
}

/// Elements `i..i + L` of `s` as an array, if in range.
#[inline(always)]
fn chunk_mut<T>(s: &mut [T], i: usize) -> Option<&mut [T; L]> {
    s.get_mut(i..).and_then(|s| s.first_chunk_mut::<L>())
}

/// Constants of one call.
#[derive(Clone, Copy)]
struct K {
    up: f32,
    down: f32,
    lo: i32,
    hi: i32,
}

/// Whether this target quantizes `NearestEven` element by element with
/// integer rounding ([`nearest_even_int`]) instead of in f32 lanes
/// ([`nearest_even`]): Arm's 32-bit cores have no vector unit for the lanes,
/// and their f32 compare-and-selects cost four instructions each.
const SCALAR: bool = cfg!(target_arch = "arm");

#[inline(always)]
fn run<I: Io>(io: &mut I, format: Format, rounder: &Rounder, sat: Option<&mut [bool]>) -> u64 {
    run_as::<I, SCALAR>(io, format, rounder, sat)
}

/// [`run`] with the `NearestEven` pass of this target (`INT`: [`SCALAR`]).
#[inline(always)]
fn run_as<I: Io, const INT: bool>(
    io: &mut I,
    format: Format,
    rounder: &Rounder,
    sat: Option<&mut [bool]>,
) -> u64 {
    let k = -format.step_exp();
    let c = K {
        up: pow2_f32(k),
        down: pow2_f32(-k),
        lo: format.min_code(),
        hi: format.max_code(),
    };
    let fast = (-126..=127).contains(&k);
    match rounder.rounding {
        Rounding::NearestEven if fast && !TIES_TO_ODD && INT => {
            // 8-bit codes with constant bounds: one saturating instruction
            // (SSAT) instead of two compare-and-selects.
            let (sat, done) = match sat {
                Some(s) if s.len() < io.len() => (Some(s), None),
                sat if (c.lo, c.hi) == (-128, 127) => (
                    None,
                    io.map_scalar(sat, |x| nearest_even_code(x, c.up, c.down, -128, 127)),
                ),
                sat => (
                    None,
                    io.map_scalar(sat, |x| nearest_even_code(x, c.up, c.down, c.lo, c.hi)),
                ),
            };
            match done {
                Some(n) => n,
                None => io.map(sat, |x| nearest_even(x, c)),
            }
        }
        Rounding::NearestEven if fast && !TIES_TO_ODD => io.map(sat, |x| nearest_even(x, c)),
        Rounding::NearestEven if fast => chunks::<I, NEAREST_EVEN>(io, c, format, rounder, sat),
        Rounding::NearestAway | Rounding::Tflite if fast => {
            chunks::<I, NEAREST_AWAY>(io, c, format, rounder, sat)
        }
        Rounding::Floor if fast => chunks::<I, FLOOR>(io, c, format, rounder, sat),
        _ => {
            let mut n = 0;
            let mut sat = sat;
            let stochastic = rounder.rounding == Rounding::Stochastic;
            let (lo, hi) = (format.min_code(), format.max_code());
            for i in 0..io.len() {
                let Some(&x) = io.src().get(i) else { break };
                // Zero is code 0 in every rounding (a stochastic draw
                // added to it stays below one step): no draw needed.
                let fast = match stochastic {
                    true if x != 0.0 => stochastic_f32(x, format.step_exp(), || {
                        rounder.stream.draw(rounder.base.wrapping_add(i as u32))
                    }),
                    _ => None,
                };
                let (q, clamped) = if x == 0.0 {
                    (0, false)
                } else if let Some(q) = fast {
                    let code = q.max(lo).min(hi);
                    (code, code != q)
                } else {
                    rounder.round_f32(i, x, format)
                };
                for d in io.dst(i, 1) {
                    *d = format.to_f32(q);
                }
                n += clamped as u64;
                if let Some(s) = sat.as_deref_mut().and_then(|s| s.get_mut(i)) {
                    *s = clamped;
                }
            }
            n
        }
    }
}

const NEAREST_EVEN: u8 = 0;
const NEAREST_AWAY: u8 = 1;
const FLOOR: u8 = 2;

#[inline(always)]
fn chunks<I: Io, const M: u8>(
    io: &mut I,
    c: K,
    format: Format,
    rounder: &Rounder,
    mut sat: Option<&mut [bool]>,
) -> u64 {
    let len = io.len();
    let mut n = 0u64;
    let mut i = 0;
    while i < len {
        let used = L.min(len - i);
        let mut x = [0.0; L];
        let src = io.src().get(i..).unwrap_or_default();
        for (x, &v) in x.iter_mut().zip(src).take(used) {
            *x = v;
        }
        let (vals, flags, clamped) = match fast_chunk::<M>(&x, c) {
            Some(r) => r,
            None => slow_chunk(&x, format, rounder, i),
        };
        for (d, &v) in io.dst(i, used).iter_mut().zip(&vals) {
            *d = v;
        }
        if let Some(s) = sat.as_deref_mut() {
            for (s, &f) in range_mut(s, i, used).iter_mut().zip(&flags) {
                *s = f;
            }
        }
        // Padding lanes are zeros: never clamped.
        n += clamped as u64;
        i += L;
    }
    n
}

/// Stochastic rounding of a normal `x` to a step of `2^step_exp`, in
/// 32-bit integers, unsaturated: with `x = m 2^e` (`|m| < 2^24`) and the
/// shift `s = step_exp - e`, the reference's `(m + (draw >> (32 - s))) >> s`
/// for `1 <= s <= 30` (the sum stays below `2^31`), the exact `m << -s`
/// for `-6 <= s <= 0`. `None` for other shifts and for zero, subnormal or
/// non-finite `x` (the caller takes the exact path, and draws there).
#[inline(always)]
fn stochastic_f32(x: f32, step_exp: i32, draw: impl FnOnce() -> u32) -> Option<i32> {
    let b = x.to_bits();
    let field = ((b >> 23) & 0xff) as i32;
    if field == 0 || field == 0xff {
        return None;
    }
    let m = ((b & 0x7f_ffff) | 0x80_0000) as i32;
    let m = if b >> 31 == 1 { -m } else { m };
    let s = step_exp - (field - 150);
    if (1..=30).contains(&s) {
        let r = (draw() >> (32 - s)) as i32;
        Some((m + r) >> s)
    } else if (-6..=0).contains(&s) {
        Some(m << -s)
    } else {
        None
    }
}

/// `1.5 * 2^23`: added to an f32 of magnitude at most `2^22`, the sum's
/// low bits hold it rounded to an integer (nearest, ties to even).
const MAGIC: f32 = 12_582_912.0;

/// The integer an integral f32 of magnitude below `2^22` holds (a cast
/// that vectorises).
#[inline(always)]
fn int_of(v: f32) -> i32 {
    ((v + MAGIC).to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32)
}

/// `y` rounded toward zero, as `y as i32`, for `|y| <= 2^16`, as an f32
/// (branch-free; `-0.0` stays `-0.0`).
#[inline(always)]
fn trunc(y: f32) -> f32 {
    let a = f32::from_bits(y.to_bits() & 0x7fff_ffff);
    let r = (a + MAGIC) - MAGIC;
    let t = if r > a { r - 1.0 } else { r };
    f32::from_bits(t.to_bits() | (y.to_bits() & 0x8000_0000))
}

/// `true` only in builds with core's test-only feature `fault-ties-to-odd`,
/// under which `NearestEven` rounds ties to the odd neighbour everywhere
/// (see `round.rs`); the fast path follows it.
const TIES_TO_ODD: bool = cfg!(feature = "fault-ties-to-odd");

/// [`round_exact_f32`](super::round::round_exact_f32) (mode `M`) for a
/// normal or zero `y` with `|y| <= 2^16`, in branch-free lane operations.
#[inline(always)]
fn round_lane<const M: u8>(y: f32) -> i32 {
    let t = trunc(y);
    let ti = int_of(t);
    let r = y - t; // exact, in (-1, 1)
    match M {
        FLOOR => ti - (r < 0.0) as i32,
        NEAREST_AWAY => ti + (r >= 0.5) as i32 - (r <= -0.5) as i32,
        _ => {
            let tie = ((ti & 1) == 1) != TIES_TO_ODD;
            let up = (r > 0.5) | ((r == 0.5) & tie);
            let down = (r < -0.5) | ((r == -0.5) & tie);
            ti + up as i32 - down as i32
        }
    }
}

/// Nearest, ties to even, of one element (the common case, and the only
/// one without a check for subnormal scaled values: whatever a tiny `y`
/// is, exact or rounded, it rounds to 0 unclamped, as its exact value does).
///
/// `(y + 1.5 * 2^23) - 1.5 * 2^23` is `y` rounded to an integer, ties to
/// even, by the f32 addition itself (exact for `|y| <= 2^22`); the code is
/// clamped as an f32 (integers below `2^16` are exact), so no conversion
/// to integers is needed.
#[inline(always)]
fn nearest_even(x: f32, c: K) -> (f32, bool) {
    let y = x * c.up;
    let y = if y < -BIG { -BIG } else { y };
    let y = if y > BIG { BIG } else { y };
    let q = (y + MAGIC) - MAGIC;
    let code = if q < c.lo as f32 { c.lo as f32 } else { q };
    let code = if code > c.hi as f32 {
        c.hi as f32
    } else {
        code
    };
    (code * c.down, code != q)
}

/// `2^22` as f32 bits: below it in magnitude, adding [`MAGIC`] rounds to an
/// integer exactly.
const BELOW_MAGIC: u32 = 0x4a80_0000;

/// Nearest, ties to even, of `x * up` as an integer (the unsaturated code),
/// with the f32 addition of [`MAGIC`] and integer operations only: the
/// integer of `(y + 1.5 * 2^23)`'s bits (the rounded `y` while `|y| <
/// 2^22`); a larger `|y|` is beyond every code range and gives `+-(2^30 -
/// 1)`, which saturates exactly when `y` does. A tiny `y` (subnormal, or
/// an underflow) rounds to 0, as its exact value does.
#[inline(always)]
fn nearest_even_int(x: f32, up: f32) -> i32 {
    let y = x * up;
    let b = y.to_bits();
    if b & 0x7fff_ffff < BELOW_MAGIC {
        ((y + MAGIC).to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32)
    } else {
        (b as i32 >> 31) ^ 0x3fff_ffff
    }
}

/// The quantized value and clamp flag of `x` (nearest, ties to even):
/// [`nearest_even_int`] saturated to `[lo, hi]`, times the step `down`.
#[inline(always)]
fn nearest_even_code(x: f32, up: f32, down: f32, lo: i32, hi: i32) -> (f32, bool) {
    let q = nearest_even_int(x, up);
    let code = q.max(lo).min(hi);
    (code as f32 * down, code != q)
}

/// The chunk branch-free, or `None` if a scaled value is subnormal (or
/// underflowed from a non-zero value): then the exact path decides.
#[inline(always)]
fn fast_chunk<const M: u8>(x: &[f32; L], c: K) -> Option<([f32; L], [bool; L], u32)> {
    let mut tiny = 0u32;
    for &v in x {
        let a = (v * c.up).abs();
        tiny |= ((a < f32::MIN_POSITIVE) & (v != 0.0)) as u32;
    }
    if tiny != 0 {
        return None;
    }
    let mut vals = [0.0; L];
    let mut flags = [0u8; L];
    for l in 0..L {
        let y = x[l] * c.up;
        let y = if y < -BIG { -BIG } else { y };
        let y = if y > BIG { BIG } else { y };
        let q = round_lane::<M>(y);
        let code = q.max(c.lo).min(c.hi);
        vals[l] = code as f32 * c.down;
        flags[l] = (code != q) as u8;
    }
    let clamped = flags.iter().map(|&f| f as u32).sum();
    Some((vals, flags.map(|f| f != 0), clamped))
}

/// The chunk element by element with the exact rounding.
#[cold]
#[inline(never)]
fn slow_chunk(
    x: &[f32; L],
    format: Format,
    rounder: &Rounder,
    i: usize,
) -> ([f32; L], [bool; L], u32) {
    let mut vals = [0.0; L];
    let mut flags = [false; L];
    let mut clamped = 0u32;
    for l in 0..L {
        let (q, s) = rounder.round_f32(i + l, x[l], format);
        vals[l] = format.to_f32(q);
        flags[l] = s;
        clamped += s as u32;
    }
    (vals, flags, clamped)
}

/// Quantize `src` (or `dst` in place when `src` is `None`) to the
/// real-valued format `rf`, element `i` as [`Rounder::round_real_f32`] of
/// element `i`, writing [`RealFormat::to_f32`] of each code into `dst` and
/// each clamp into `sat`; returns how many were clamped. `src` and `sat`
/// must have `dst`'s length (checked by the callers; a shorter one leaves
/// the rest of `dst` as it is). The values must be finite.
///
/// Elements go through [`RealFormat::guarded`]'s f64 path where it
/// applies, else the integer path: the same codes (see [`Guarded`]).
/// Large slices are split across threads as in
/// [`quantize_values_in_place`] (each part's rounder starts at the part's
/// element index).
///
/// [`Guarded`]: super::Guarded
pub(crate) fn quantize_real_values(
    src: Option<&[f32]>,
    dst: &mut [f32],
    rf: RealFormat,
    rounder: &Rounder,
    sat: Option<&mut [bool]>,
) -> u64 {
    accel::split_pass(
        dst.len(),
        (src, (dst, sat)),
        |(src, (dst, sat)), off| real_values_body(src, dst, rf, &part(rounder, off), sat),
        |a, b| a + b,
    )
}

/// [`quantize_real_values`] on one part, on this thread.
pub(crate) fn real_values_body(
    src: Option<&[f32]>,
    dst: &mut [f32],
    rf: RealFormat,
    rounder: &Rounder,
    mut sat: Option<&mut [bool]>,
) -> u64 {
    let guarded = rf.guarded(rounder.rounding);
    let mut n = 0;
    for (i, d) in dst.iter_mut().enumerate() {
        let x = match src {
            Some(s) => match s.get(i) {
                Some(&x) => x,
                None => break,
            },
            None => *d,
        };
        let (q, clamped) = guarded
            .and_then(|g| g.round(x))
            .unwrap_or_else(|| rounder.round_real_f32(i, x, rf));
        *d = rf.to_f32(q);
        n += clamped as u64;
        if let Some(s) = sat.as_deref_mut().and_then(|s| s.get_mut(i)) {
            *s = clamped;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Stream;
    use std::vec::Vec;

    /// The reference: element by element, [`Rounder::round_f32`] then
    /// [`Format::to_f32`].
    fn reference(x: &[f32], f: Format, r: &Rounder) -> (Vec<u32>, Vec<bool>, u64) {
        let mut sat = Vec::new();
        let vals = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let (q, s) = r.round_f32(i, v, f);
                sat.push(s);
                f.to_f32(q).to_bits()
            })
            .collect();
        let n = sat.iter().filter(|&&s| s).count() as u64;
        (vals, sat, n)
    }

    /// Values that probe every path: ties, saturation, huge, subnormal,
    /// signed zeros, and random bit patterns.
    fn samples(s: &Stream, len: usize, f: Format) -> Vec<f32> {
        let step = f.step();
        (0..len as u32)
            .map(|i| {
                let d = s.draw(i);
                let v = match d % 11 {
                    0 => ((d >> 8) % 600) as f32 * 0.5 - 150.0, // halves of steps
                    1 => ((d >> 8) % 80_000) as f32 - 40_000.0,
                    2 => f32::from_bits(d >> 9), // subnormal or tiny, positive
                    3 => -f32::from_bits(d >> 9),
                    4 => 0.0,
                    5 => -0.0,
                    6 => (d as i32 as f32) * 1e30,
                    _ => {
                        let x = f32::from_bits(d);
                        if x.is_finite() {
                            return x;
                        }
                        1.0
                    }
                };
                if d % 11 <= 1 {
                    let y = v * step;
                    if y.is_finite() {
                        return y;
                    }
                }
                // The callers pass finite values only.
                if v.is_finite() {
                    v
                } else {
                    -3.0
                }
            })
            .collect()
    }

    #[test]
    fn stochastic_integer_path_equals_requantize_one() {
        let s = Stream::new(2, 3, 4);
        let n = if cfg!(miri) { 3_000 } else { 300_000u32 };
        let mut fast = 0;
        for i in 0..n {
            let (a, b, d) = (s.draw(i), s.draw(i ^ 0xabcd_ef01), s.draw(!i));
            let f = Format::new(16, (b % 60) as i8 - 30).unwrap();
            // Values from a tenth of a step to 2^20 steps, either sign.
            let steps =
                f32::from_bits(0x3f80_0000 | (a & 0x7f_ffff)) * pow2_f32((b >> 8) as i32 % 24 - 3);
            let x = if a >> 31 == 1 { -steps } else { steps } * f.step();
            let (m, e) = crate::quant::decompose_f32(x).unwrap();
            let want = crate::quant::requantize_one(m, e, f, Rounding::Stochastic, d);
            if let Some(q) = stochastic_f32(x, f.step_exp(), || d) {
                assert_eq!(f.saturate(q as i128), want, "{x:e} {f:?} draw {d:#x}");
                fast += 1;
            }
        }
        assert!(fast > n / 2, "{fast}");
    }

    #[test]
    fn slice_quantizer_equals_the_element_reference() {
        let s = Stream::new(11, 22, 33);
        let mut case = 0u32;
        // Miri interprets every operation: a sample of the grid there.
        let miri = cfg!(miri);
        let max_len = if miri { 40 } else { 300 };
        for bits in (2..=16u8).filter(|b| !miri || b % 4 == 2) {
            for scale in [-128i8, -127, -100, -20, -3, 0, 2, 7, 30, 100, 126, 127] {
                // Odd widths below 16 with nics_fix_pt's clamp.
                let clamp = if bits % 2 == 1 {
                    crate::quant::Clamp::Nics
                } else {
                    crate::quant::Clamp::Hardware
                };
                let f = Format::with_clamp(bits, scale, clamp).unwrap();
                for rounding in [
                    Rounding::NearestEven,
                    Rounding::NearestAway,
                    Rounding::Floor,
                    Rounding::Stochastic,
                    Rounding::Tflite,
                ] {
                    case += 1;
                    let len = (s.draw(case) % max_len) as usize;
                    let x = samples(&Stream::new(5, case, 0), len, f);
                    let r = Rounder::new(rounding, Stream::new(1, case, 2)).at(s.draw(case) % 999);
                    let (want, want_sat, want_n) = reference(&x, f, &r);
                    // This target's pass, and the other `NearestEven` pass.
                    let mut v = x.clone();
                    let mut sat = std::vec![true; len];
                    let n = run_as::<_, { !SCALAR }>(&mut InPlace(&mut v), f, &r, Some(&mut sat));
                    let got: Vec<u32> = v.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(
                        (got, sat, n),
                        (want.clone(), want_sat.clone(), want_n),
                        "{f:?} {rounding:?} (other pass)"
                    );
                    let mut v = x.clone();
                    let mut sat = std::vec![true; len];
                    let n = quantize_values_in_place(&mut v, f, &r, Some(&mut sat));
                    let got: Vec<u32> = v.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(
                        (got, sat, n),
                        (want.clone(), want_sat, want_n),
                        "{f:?} {rounding:?}"
                    );
                    let mut dst = std::vec![f32::NAN; len];
                    let n = quantize_values_into(&x, &mut dst, f, &r, None);
                    let got: Vec<u32> = dst.iter().map(|v| v.to_bits()).collect();
                    assert_eq!((got, n), (want, want_n), "{f:?} {rounding:?} (into)");
                }
            }
        }
    }
}

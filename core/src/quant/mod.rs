//! Quantization: f32 to codes, codes and wide accumulators to another
//! format, scale selection, stochastic rounding and the straight-through mask.
//!
//! The slice functions here are the reference the layers, kernels and
//! backends build on. Each writes into a caller-provided buffer, checks every
//! length first (nothing is written on error), counts saturations and can
//! record them in a [`mask`] for the backward pass.
//!
//! # Examples
//!
//! nics_fix_pt's first quantizer test: 2 bits, scale -1 (step 0.25).
//!
//! ```
//! use fixnn::{quant, Format, Rounder};
//! let fmt = Format::new(2, -1)?;
//! let mut codes = [0i8; 3];
//! let sat = quant::quantize_f32(&[0.2513, -0.5, 0.0], fmt, &Rounder::default(), &mut codes, None)?;
//! assert_eq!((codes, sat), ([1, -2, 0], 0));
//! let mut values = [0f32; 3];
//! quant::dequantize(&codes, fmt, &mut values)?;
//! assert_eq!(values, [0.25, -0.5, 0.0]);
//! # Ok::<(), fixnn::Error>(())
//! ```

mod config;
mod format;
pub mod group;
pub mod mask;
mod math;
pub mod multiplier;
pub mod packed;
pub mod range;
pub(crate) mod requant;
mod rng;
mod round;
pub mod running;
pub(crate) mod slice;

pub use config::{Clamp, Group, Method, QuantConfig, RangeMethod, Rounding};
pub use format::{check_storage, check_zero_point, pow2_f32, Code, Format, MAX_BITS, MIN_BITS};
pub use math::{ratio_to_f32, sqrt_f32};
pub use multiplier::{
    multiply_by_quantized_multiplier, round_mul_shift, rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul, Guarded, MulShift, RealFormat, MULTIPLIER_END,
    MULTIPLIER_MIN,
};
pub use rng::Stream;
pub use round::{decompose_f32, requantize_one, requantize_ratio, round_f32};

use crate::error::{Error, Result};

/// A rounding mode together with the random stream stochastic rounding
/// draws from, and the index of the first element of the slice being
/// processed (so a tensor processed in chunks, on any thread, gets the
/// draws of its global element indices).
///
/// For the deterministic modes the stream and base are ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Rounder {
    /// The rounding mode.
    pub rounding: Rounding,
    /// The stream of the tensor and step (used by `Rounding::Stochastic`).
    pub stream: Stream,
    /// Global index of element 0 of the slice.
    pub base: u32,
}

impl Rounder {
    /// `rounding` with `stream`, starting at element 0.
    pub const fn new(rounding: Rounding, stream: Stream) -> Self {
        Rounder {
            rounding,
            stream,
            base: 0,
        }
    }

    /// The same rounder for a chunk that starts at global element `base`.
    pub const fn at(self, base: u32) -> Self {
        Rounder { base, ..self }
    }

    fn check_len(&self, len: usize) -> Result<()> {
        let end = self.base as u64 + len as u64;
        if end > 1 << 32 {
            return Err(Error::TooManyElements { len: end });
        }
        Ok(())
    }

    /// Round `v * 2^exp` to a code of `format` as element `i` of the slice
    /// (global index `base + i`). Returns `(code, saturated)`.
    pub fn round(&self, i: usize, v: i64, exp: i32, format: Format) -> (i32, bool) {
        let draw = match self.rounding {
            Rounding::Stochastic => self.stream.draw(self.base.wrapping_add(i as u32)),
            _ => 0,
        };
        requantize_one(v, exp, format, self.rounding, draw)
    }

    /// Round the f32 `x` to a code of `format` as element `i` of the slice,
    /// exactly as [`Rounder::round`] on its significand and exponent
    /// ([`round_f32`], with a fast path). Returns `(code, saturated)`.
    pub fn round_f32(&self, i: usize, x: f32, format: Format) -> (i32, bool) {
        let draw = match self.rounding {
            Rounding::Stochastic => self.stream.draw(self.base.wrapping_add(i as u32)),
            _ => 0,
        };
        round_f32(x, format, self.rounding, draw)
    }

    /// Round the f32 `x` to a code of the real-valued format `rf` as element
    /// `i` ([`RealFormat::round_f32`], the draw as in [`Rounder::round`]).
    /// Returns `(code, saturated)`.
    #[inline]
    pub fn round_real_f32(&self, i: usize, x: f32, rf: RealFormat) -> (i32, bool) {
        rf.round_f32(x, self.rounding, self.draw(i))
    }

    /// Requantize the accumulator `acc * 2^exp` to a code of `rf` as element
    /// `i` by multiplier and shift ([`RealFormat::round_acc`]).
    /// Returns `(code, saturated)`.
    pub fn round_real_acc(&self, i: usize, acc: i64, exp: i32, rf: RealFormat) -> (i32, bool) {
        rf.round_acc(acc, exp, self.rounding, self.draw(i))
    }

    fn draw(&self, i: usize) -> u32 {
        match self.rounding {
            Rounding::Stochastic => self.stream.draw(self.base.wrapping_add(i as u32)),
            _ => 0,
        }
    }

    /// Round the rational `v * 2^exp / div` to a code of `format` as element
    /// `i` of the slice (global index `base + i`), with [`requantize_ratio`]
    /// (the same draw as [`Rounder::round`]). Returns `(code, saturated)`.
    pub fn round_ratio(
        &self,
        i: usize,
        v: i64,
        exp: i32,
        div: core::num::NonZeroU32,
        format: Format,
    ) -> (i32, bool) {
        let draw = match self.rounding {
            Rounding::Stochastic => self.stream.draw(self.base.wrapping_add(i as u32)),
            _ => 0,
        };
        requantize_ratio(v, exp, div, format, self.rounding, draw)
    }
}

/// What a config-driven quantization did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QuantReport {
    /// The format used (`None` for `Method::None`: data left as it was).
    pub format: Option<Format>,
    /// Number of elements clamped to the code range.
    pub saturated: usize,
}

fn check_buffers(input: usize, output: usize, mask: Option<&[u32]>) -> Result<()> {
    if input != output {
        return Err(Error::LengthMismatch {
            expected: input,
            found: output,
        });
    }
    match mask {
        Some(m) => mask::check(m, input),
        None => Ok(()),
    }
}

/// Run `f(i) -> saturated` for every element `i < len` (`f` stores the
/// result itself), count saturations and record them in `mask`.
fn fill(len: usize, mut mask: Option<&mut [u32]>, mut f: impl FnMut(usize) -> bool) -> usize {
    if let Some(m) = mask.as_deref_mut() {
        m.iter_mut().take(mask::words(len)).for_each(|w| *w = 0);
    }
    let mut saturated = 0;
    for i in 0..len {
        if f(i) {
            saturated += 1;
            if let Some(m) = mask.as_deref_mut() {
                m[i / 32] |= 1 << (i % 32);
            }
        }
    }
    saturated
}

/// Quantize f32 values to codes of `format`:
/// `q = saturate(round(x * 2^(bits - 1 - scale)))`.
///
/// The product is formed exactly (from the f32's integer significand and
/// exponent, never as a float multiplication that could underflow or
/// overflow), then rounded with `rounder` and saturated. Returns the number
/// of saturated elements; if `mask` is given its first `ceil(len / 32)` words
/// are overwritten with the saturation bits.
///
/// # Errors
///
/// Nothing is written on error.
/// * [`Error::LengthMismatch`] if `out.len() != x.len()`;
/// * [`Error::MaskTooShort`] if `mask` is too short;
/// * [`Error::BitsExceedStorage`] if `format` is wider than `C`;
/// * [`Error::NonFinite`] naming the first NaN or infinity;
/// * [`Error::TooManyElements`] if `rounder.base + len > 2^32`.
pub fn quantize_f32<C: Code>(
    x: &[f32],
    format: Format,
    rounder: &Rounder,
    out: &mut [C],
    mask: Option<&mut [u32]>,
) -> Result<usize> {
    check_buffers(x.len(), out.len(), mask.as_deref())?;
    check_storage::<C>(format)?;
    rounder.check_len(x.len())?;
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { index });
    }
    Ok(fill(x.len(), mask, |i| {
        let (q, sat) = rounder.round_f32(i, x[i], format);
        out[i] = C::from_code(q);
        sat
    }))
}

/// Requantize integers `src[i] * 2^exp` (codes of another format, or wide
/// accumulators) to codes of `format`, with `rounder`'s rounding and
/// saturation. Exact integer arithmetic for every shift and every value.
///
/// Returns the number of saturated elements; `mask` as in [`quantize_f32`].
///
/// # Errors
///
/// Nothing is written on error: [`Error::LengthMismatch`],
/// [`Error::MaskTooShort`], [`Error::BitsExceedStorage`],
/// [`Error::TooManyElements`] as for [`quantize_f32`].
///
/// # Examples
///
/// ```
/// use fixnn::{quant, Format, Rounder, Rounding, Stream};
/// // An i32 accumulator of products of two Q0.7 codes has exponent -14.
/// let acc = [16_384i32, -8_320, 100];
/// let fmt = Format::new(8, 1)?; // step 2^-6
/// let mut out = [0i8; 3];
/// let r = Rounder::new(Rounding::NearestEven, Stream::default());
/// let sat = quant::requantize(&acc, -14, fmt, &r, &mut out, None)?;
/// assert_eq!((out, sat), ([64, -32, 0], 0)); // 1.0, -0.5078 -> -0.5, 0.0061 -> 0
/// # Ok::<(), fixnn::Error>(())
/// ```
pub fn requantize<S: Copy + Into<i64>, C: Code>(
    src: &[S],
    exp: i32,
    format: Format,
    rounder: &Rounder,
    out: &mut [C],
    mask: Option<&mut [u32]>,
) -> Result<usize> {
    check_buffers(src.len(), out.len(), mask.as_deref())?;
    check_storage::<C>(format)?;
    rounder.check_len(src.len())?;
    Ok(fill(src.len(), mask, |i| {
        let (q, sat) = rounder.round(i, src[i].into(), exp, format);
        out[i] = C::from_code(q);
        sat
    }))
}

/// Real values of codes: `out[i] = codes[i] * 2^(scale + 1 - bits)`, exact.
///
/// # Errors
///
/// [`Error::LengthMismatch`] if `out.len() != codes.len()`.
pub fn dequantize<C: Code>(codes: &[C], format: Format, out: &mut [f32]) -> Result<()> {
    check_buffers(codes.len(), out.len(), None)?;
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = format.to_f32(c.to_i32());
    }
    Ok(())
}

/// nics_fix_pt's `quantitize` on f32 data, in place: apply `cfg`'s method
/// (Auto chooses and stores the scale), quantize with `rounder` and replace
/// each value by its dequantized code (exact). `Method::None` leaves `x`
/// unchanged and reports no format.
///
/// `mask`, if given, receives the straight-through mask.
///
/// # Errors
///
/// Those of [`QuantConfig::update_scale_f32`] and [`quantize_f32`]; nothing
/// (neither `x` nor `cfg`) changes on error.
///
/// # Examples
///
/// ```
/// use fixnn::{quant, QuantConfig, Rounder};
/// let mut cfg = QuantConfig::auto(2);
/// let mut x = [0.2513, -0.52, 0.0];
/// let report = quant::fake_quantize_f32(&mut cfg, &mut x, &Rounder::default(), None)?;
/// assert_eq!((cfg.scale, x), (0, [0.5, -0.5, 0.0]));
/// assert_eq!(report.saturated, 0);
/// # Ok::<(), fixnn::Error>(())
/// ```
pub fn fake_quantize_f32(
    cfg: &mut QuantConfig,
    x: &mut [f32],
    rounder: &Rounder,
    mask: Option<&mut [u32]>,
) -> Result<QuantReport> {
    check_buffers(x.len(), x.len(), mask.as_deref())?;
    rounder.check_len(x.len())?;
    let mut next = *cfg;
    let Some(format) = next.update_scale_f32(x)? else {
        return Ok(QuantReport {
            format: None,
            saturated: 0,
        });
    };
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { index });
    }
    *cfg = next;
    let saturated = fill(x.len(), mask, |i| {
        let (q, sat) = rounder.round_f32(i, x[i], format);
        x[i] = format.to_f32(q);
        sat
    });
    Ok(QuantReport {
        format: Some(format),
        saturated,
    })
}

/// Replace f32 values in place by their quantized values in `format`
/// (quantize with `rounder`, then dequantize; both exact). Returns the
/// number of saturated elements.
///
/// # Errors
///
/// [`Error::NonFinite`], [`Error::TooManyElements`]; nothing changes on error.
pub fn fake_quantize_in_place(x: &mut [f32], format: Format, rounder: &Rounder) -> Result<usize> {
    rounder.check_len(x.len())?;
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { index });
    }
    Ok(fill(x.len(), None, |i| {
        let (q, sat) = rounder.round_f32(i, x[i], format);
        x[i] = format.to_f32(q);
        sat
    }))
}

/// The value `acc * 2^exp` as f32: `acc` rounded to 24 significant bits
/// (nearest-even, exact when it fits), then scaled by the power of two
/// (exact unless the result leaves the f32 range).
pub fn acc_to_f32(acc: i64, exp: i32) -> f32 {
    // 0 for every exponent: without this, `exp >= 256` made `0 * inf`, a
    // NaN whose sign bit differs between x86 and Arm (tests/f32_identity.rs).
    if acc == 0 {
        return 0.0;
    }
    // Split the scaling so that neither factor overflows on its own.
    let half = exp / 2;
    acc as f32 * pow2_f32(half) * pow2_f32(exp - half)
}

/// [`acc_to_f32`] of each of `acc` into `dst` (up to the shorter length),
/// the powers of two computed once (compiled once per instruction set,
/// see [`crate::accel`]).
#[inline(always)]
pub(crate) fn accs_to_f32(dst: &mut [f32], acc: &[i64], exp: i32) {
    let half = exp / 2;
    let (p, q) = (pow2_f32(half), pow2_f32(exp - half));
    for (d, &a) in dst.iter_mut().zip(acc) {
        // As `acc_to_f32`: 0 stays 0 whatever the exponent.
        *d = if a == 0 { 0.0 } else { i64_to_f32(a) * p * q };
    }
}

/// `a as f32` (nearest, ties to even). On Arm's 32-bit cores a value that
/// fits `i32` is converted by the FPU (`a as i32 as f32` rounds the same
/// integer the same way) instead of the 64-bit library routine.
#[inline(always)]
pub(crate) fn i64_to_f32(a: i64) -> f32 {
    if cfg!(target_arch = "arm") {
        return i64_to_f32_split(a);
    }
    a as f32
}

/// [`i64_to_f32`]'s Arm form, on every target (tested on the host).
#[inline(always)]
pub(crate) fn i64_to_f32_split(a: i64) -> f32 {
    if a as i32 as i64 == a {
        return a as i32 as f32;
    }
    a as f32
}

pub(crate) use slice::{quantize_values_in_place, quantize_values_into};

#[cfg(test)]
mod tests {
    #[test]
    fn split_conversion_equals_the_64_bit_one() {
        let s = super::Stream::new(1, 2, 3);
        let n = if cfg!(miri) { 2_000 } else { 200_000u32 };
        let edges = [
            0i64,
            1,
            -1,
            i32::MAX as i64,
            i32::MIN as i64,
            1 << 31,
            -(1 << 31) - 1,
        ];
        for (i, a) in (0..n)
            .map(|i| {
                let v = ((s.draw(i) as i64) << 32) | s.draw(!i) as i64;
                v >> (s.draw(i ^ 0x1234) % 64)
            })
            .chain(edges)
            .enumerate()
        {
            let a = a.wrapping_add(i as i64 % 3 - 1);
            assert_eq!(
                super::i64_to_f32_split(a).to_bits(),
                (a as f32).to_bits(),
                "{a}"
            );
        }
    }
}

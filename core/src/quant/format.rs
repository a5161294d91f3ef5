//! [`Format`]: bit width and power-of-two scale of a tensor's integer codes,
//! and the [`Code`] storage types.

use super::config::Clamp;
use crate::error::{Error, Result};

/// Smallest supported bit width.
pub const MIN_BITS: u8 = 2;
/// Largest supported bit width.
pub const MAX_BITS: u8 = 16;

/// The format of a quantized tensor: `bits`-bit two's complement codes whose
/// real value is `code * 2^(scale + 1 - bits)`.
///
/// # Zero point
///
/// A format may carry an integer zero point `z` ([`Format::with_zero_point`],
/// TFLite's asymmetric scheme with a power-of-two step): the register holds
/// `q` in `[-2^(bits-1), 2^(bits-1) - 1]` and the real value is
/// `(q - z) * step`. fixnn's tensors and kernels work on `k = q - z`, the
/// value divided by the step, so that every layer's integer arithmetic is
/// the same with or without a zero point (`sum (q_x - z_x)(q_w - z_w) =
/// sum k_x k_w`, what hardware computes with zero-point correction). The
/// codes of this type ([`min_code`](Format::min_code), [`max_code`](Format::max_code),
/// [`to_f32`](Format::to_f32), [`code_of`](Format::code_of),
/// [`saturate`](Format::saturate)) are therefore `k`, in the shifted range
/// `[-2^(bits-1) - z, 2^(bits-1) - 1 - z]`, which needs `bits + 1` bits
/// ([`code_bits`](Format::code_bits)) when `z != 0`. The register value is
/// [`stored_code`](Format::stored_code)`(k) = k + z`.
///
/// `scale` is the exponent of the range: codes cover
/// `[-2^scale, 2^scale - step]` with `step = 2^(scale + 1 - bits)`, or
/// `[-2^scale, 2^scale]` with nics_fix_pt's clamp ([`Clamp::Nics`],
/// [`Format::with_clamp`]). A `Format` is always valid: `bits` is in
/// `2..=16`, and at most 15 with [`Clamp::Nics`] (checked by the constructors).
///
/// # Examples
///
/// ```
/// use fixnn::Format;
/// let f = Format::new(8, 0)?; // Q0.7: step 2^-7, range [-1, 1 - 2^-7]
/// assert_eq!(f.step_exp(), -7);
/// assert_eq!((f.min_code(), f.max_code()), (-128, 127));
/// assert_eq!(f.to_f32(64), 0.5);
/// # Ok::<(), fixnn::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Format {
    bits: u8,
    scale: i8,
    clamp: Clamp,
    /// Zero point, in `[-2^(bits-1), 2^(bits-1) - 1]`; 0 with [`Clamp::Nics`]
    /// and for 16 bits.
    zero: i16,
}

impl Format {
    /// A format of `bits` bits and range exponent `scale`.
    ///
    /// # Errors
    ///
    /// [`Error::BitsOutOfRange`] if `bits` is not in `2..=16`.
    pub const fn new(bits: u8, scale: i8) -> Result<Self> {
        if bits < MIN_BITS || bits > MAX_BITS {
            return Err(Error::BitsOutOfRange { bits });
        }
        Ok(Format {
            bits,
            scale,
            clamp: Clamp::Hardware,
            zero: 0,
        })
    }

    /// A format of `bits` bits and range exponent `scale` whose codes
    /// saturate as `clamp` says: [`Clamp::Hardware`] is [`Format::new`];
    /// [`Clamp::Nics`] adds the code `2^(bits-1)` (nics_fix_pt's `+2^scale`).
    ///
    /// # Errors
    ///
    /// [`Error::BitsOutOfRange`] if `bits` is not in `2..=16`;
    /// [`Error::Invalid`] for [`Clamp::Nics`] with `bits = 16` (code
    /// `2^15` needs 17 bits, more than any code storage or kernel holds).
    ///
    /// # Examples
    ///
    /// ```
    /// use fixnn::{Clamp, Format};
    /// let f = Format::with_clamp(8, 0, Clamp::Nics)?; // [-1, +1], step 2^-7
    /// assert_eq!((f.min_code(), f.max_code(), f.code_bits()), (-128, 128, 9));
    /// assert!(Format::with_clamp(16, 0, Clamp::Nics).is_err());
    /// # Ok::<(), fixnn::Error>(())
    /// ```
    pub const fn with_clamp(bits: u8, scale: i8, clamp: Clamp) -> Result<Self> {
        if bits < MIN_BITS || bits > MAX_BITS {
            return Err(Error::BitsOutOfRange { bits });
        }
        if matches!(clamp, Clamp::Nics) && bits >= MAX_BITS {
            return Err(NICS_TOO_WIDE);
        }
        Ok(Format {
            bits,
            scale,
            clamp,
            zero: 0,
        })
    }

    /// This format with the zero point `z`: codes `k` in
    /// `[-2^(bits-1) - z, 2^(bits-1) - 1 - z]`, register value `q = k + z`,
    /// real value `k * step = (q - z) * step` (see the type's docs).
    ///
    /// # Errors
    ///
    /// As [`check_zero_point`]: [`Error::Invalid`] if `z` is not in
    /// `[-2^(bits-1), 2^(bits-1) - 1]`, or if `z != 0` with 16 bits (the
    /// shifted codes need 17 bits); [`Error::Unsupported`] naming
    /// `zero_point` for `z != 0` with [`Clamp::Nics`].
    ///
    /// # Examples
    ///
    /// ```
    /// use fixnn::Format;
    /// // 8 bits, step 2^-7, zero point -64: registers -128..=127 hold
    /// // values (q + 64) / 128, from -0.5 to 1.4921875.
    /// let f = Format::new(8, 0)?.with_zero_point(-64)?;
    /// assert_eq!((f.min_code(), f.max_code(), f.code_bits()), (-64, 191, 9));
    /// assert_eq!((f.to_f32(f.min_code()), f.to_f32(f.max_code())), (-0.5, 1.4921875));
    /// assert_eq!((f.stored_code(-64), f.stored_code(191)), (-128, 127));
    /// assert!(Format::new(8, 0)?.with_zero_point(128).is_err());
    /// # Ok::<(), fixnn::Error>(())
    /// ```
    pub const fn with_zero_point(self, z: i32) -> Result<Self> {
        if let Err(e) = check_zero_point(self.bits, self.clamp, z) {
            return Err(e);
        }
        Ok(Format {
            zero: z as i16,
            ..self
        })
    }

    /// [`with_zero_point`](Self::with_zero_point) for a zero point the
    /// caller has validated ([`check_zero_point`]).
    pub(crate) const fn validated_zero(self, z: i32) -> Self {
        Format {
            zero: z as i16,
            ..self
        }
    }

    /// The zero point `z`: the register value of real value 0 (0 unless
    /// set with [`with_zero_point`](Self::with_zero_point)).
    pub const fn zero_point(self) -> i32 {
        self.zero as i32
    }

    /// The register value of code `k`: `k + z`, in
    /// `[-2^(bits-1), 2^(bits-1) - 1]` for every code in
    /// `min_code()..=max_code()` of a hardware-clamped format.
    pub const fn stored_code(self, k: i32) -> i32 {
        k + self.zero as i32
    }

    /// The code of register value `q`: `q - z` (inverse of
    /// [`stored_code`](Self::stored_code)).
    pub const fn code_of_stored(self, q: i32) -> i32 {
        q - self.zero as i32
    }

    /// A format the caller has validated ([`QuantConfig::validate`](super::QuantConfig::validate)):
    /// no checks, no `Result` on the stack.
    pub(crate) const fn validated(bits: u8, scale: i8, clamp: Clamp) -> Self {
        Format {
            bits,
            scale,
            clamp,
            zero: 0,
        }
    }

    /// Where the codes saturate.
    pub const fn clamp(self) -> Clamp {
        self.clamp
    }

    /// Width of the two's complement integers that hold every code:
    /// `bits`, or `bits + 1` with [`Clamp::Nics`] or a non-zero zero point
    /// (at most 16 either way).
    pub const fn code_bits(self) -> u8 {
        match self.clamp {
            Clamp::Hardware if self.zero == 0 => self.bits,
            Clamp::Hardware | Clamp::Nics => self.bits + 1,
        }
    }

    /// The bit width, in `2..=16`.
    pub const fn bits(self) -> u8 {
        self.bits
    }

    /// The range exponent: values lie in `[-2^scale, 2^scale - step]`.
    pub const fn scale(self) -> i8 {
        self.scale
    }

    /// The exponent of one step: `scale + 1 - bits`, in `-143..=126`.
    pub const fn step_exp(self) -> i32 {
        self.scale as i32 + 1 - self.bits as i32
    }

    /// The smallest code, `-2^(bits-1) - z` (`-2^(bits-1)` without a zero
    /// point).
    pub const fn min_code(self) -> i32 {
        -(1 << (self.bits - 1)) - self.zero as i32
    }

    /// The largest code: `2^(bits-1) - 1 - z`, or `2^(bits-1)` with
    /// [`Clamp::Nics`] (nics_fix_pt's `+2^scale`; no zero point there).
    pub const fn max_code(self) -> i32 {
        match self.clamp {
            Clamp::Hardware => (1 << (self.bits - 1)) - 1 - self.zero as i32,
            Clamp::Nics => 1 << (self.bits - 1),
        }
    }

    /// The step `2^(scale + 1 - bits)` as f32 (exact: every step of a valid
    /// format is a power of two that f32 represents, subnormals included).
    pub fn step(self) -> f32 {
        pow2_f32(self.step_exp())
    }

    /// The real value of `code`, `code * 2^(scale + 1 - bits)`, as f32.
    ///
    /// Exact for every code in `min_code()..=max_code()`: the result has at
    /// most 16 significant bits and magnitude at most `2^scale <= 2^127`.
    /// Codes outside the range are not an error (a wide accumulator may be
    /// passed); the result is then the correctly rounded product.
    pub fn to_f32(self, code: i32) -> f32 {
        code as f32 * pow2_f32(self.step_exp())
    }

    /// The code of a value that is exact in this format: `v / step`.
    ///
    /// Exact for every value produced by [`Format::to_f32`] of a code in
    /// range. Other values are truncated toward zero and saturated to the
    /// `i32` range (keeping their sign), and NaN/infinity give 0 (not an
    /// error: kernels call this only on tensors whose format says their
    /// values are exact).
    pub fn code_of(self, v: f32) -> i32 {
        let Some((m, e)) = super::round::decompose_f32(v) else {
            return 0;
        };
        let d = e - self.step_exp();
        let q = if d >= 0 {
            // |m| < 2^24: at most 2^63 - 2^39 after the shift, inside
            // i64, and beyond i32 whenever the shift was cut short.
            m << d.min(39)
        } else if d <= -40 {
            0
        } else {
            // Truncation toward zero (as `m / 2^-d`), by shifts: |m| < 2^24.
            let s = -d;
            if m >= 0 {
                m >> s
            } else {
                -((-m) >> s)
            }
        };
        q.clamp(i32::MIN as i64, i32::MAX as i64) as i32
    }

    /// Clamp a wide integer to the code range `[min_code, max_code]`.
    ///
    /// Returns the code and whether it was clamped (saturated): a value
    /// equal to a bound is not clamped (as `torch.clamp`, whose gradient
    /// passes at the bounds).
    pub const fn saturate(self, v: i128) -> (i32, bool) {
        let lo = self.min_code() as i128;
        let hi = self.max_code() as i128;
        if v < lo {
            (lo as i32, true)
        } else if v > hi {
            (hi as i32, true)
        } else {
            (v as i32, false)
        }
    }
}

/// Check a zero point `z` for a `bits`-bit format with `clamp` (`bits` in
/// `2..=16`).
///
/// # Errors
///
/// [`Error::Invalid`] if `z` is not in `[-2^(bits-1), 2^(bits-1) - 1]`, or
/// if `z != 0` with `bits = 16` (codes `q - z` need 17 bits, more than any
/// code storage or kernel holds); [`Error::Unsupported`] naming
/// `zero_point` for `z != 0` with [`Clamp::Nics`] (nics_fix_pt has no
/// zero point with its clamp).
pub const fn check_zero_point(bits: u8, clamp: Clamp, z: i32) -> Result<()> {
    if z == 0 {
        return Ok(());
    }
    if bits < MIN_BITS || bits > MAX_BITS {
        return Err(Error::BitsOutOfRange { bits });
    }
    let half = 1i32 << (bits - 1);
    if z < -half || z >= half {
        return Err(Error::Invalid {
            what: "zero_point must be in [-2^(bits-1), 2^(bits-1) - 1]",
        });
    }
    if bits >= MAX_BITS {
        return Err(Error::Invalid {
            what: "zero_point needs bits <= 15 (codes q - zero_point take bits + 1 bits)",
        });
    }
    if matches!(clamp, Clamp::Nics) {
        return Err(Error::Unsupported {
            field: "zero_point",
        });
    }
    Ok(())
}

/// The error of [`Clamp::Nics`] with 16 bits.
pub(crate) const NICS_TOO_WIDE: Error = Error::Invalid {
    what: "clamp `nics` needs bits <= 15 (its top code 2^(bits-1) takes bits + 1 bits)",
};

/// `2^e` as f32, built from its bit pattern (no `powi`, no approximation).
///
/// Exact for `e` in `-149..=127` (subnormals below `-126`); `0.0` below and
/// `+inf` above that range.
pub const fn pow2_f32(e: i32) -> f32 {
    if e > 127 {
        f32::INFINITY
    } else if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else if e >= -149 {
        f32::from_bits(1u32 << (e + 149))
    } else {
        0.0
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for i8 {}
    impl Sealed for i16 {}
}

/// Storage type of integer codes: `i8` (formats up to 8 bits) or `i16` (up to
/// 16); a [`Clamp::Nics`] format or one with a zero point needs one bit more
/// ([`Format::code_bits`]).
pub trait Code: Copy + Default + Into<i64> + sealed::Sealed {
    /// Width of the storage type in bits.
    const STORAGE_BITS: u8;

    /// Narrow a code that is known to lie in the storage range.
    ///
    /// Callers pass only values already saturated to a format that fits the
    /// storage type (checked with [`check_storage`]); other values wrap.
    fn from_code(code: i32) -> Self;

    /// Widen to `i32`.
    fn to_i32(self) -> i32;
}

impl Code for i8 {
    const STORAGE_BITS: u8 = 8;
    fn from_code(code: i32) -> Self {
        code as i8
    }
    fn to_i32(self) -> i32 {
        self as i32
    }
}

impl Code for i16 {
    const STORAGE_BITS: u8 = 16;
    fn from_code(code: i32) -> Self {
        code as i16
    }
    fn to_i32(self) -> i32 {
        self as i32
    }
}

/// Check that codes of `format` fit the storage type `C`.
///
/// # Errors
///
/// [`Error::BitsExceedStorage`] if `format.code_bits() > C::STORAGE_BITS`
/// (with [`Clamp::Nics`] an 8-bit format's code 128 does not fit `i8`).
pub const fn check_storage<C: Code>(format: Format) -> Result<()> {
    if format.code_bits() > C::STORAGE_BITS {
        return Err(Error::BitsExceedStorage {
            bits: format.code_bits(),
            storage: C::STORAGE_BITS,
        });
    }
    Ok(())
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
    fn code_of_saturates_far_values_with_their_sign() {
        // Values 2^k steps away for every k up to f32's range, both signs,
        // with every significand bit set or only the top one: truncated
        // toward zero, then saturated to i32 (an i64 shift by 40 used to
        // wrap from 2^40 steps on, flipping the sign).
        let f = Format::new(8, -100).unwrap();
        let step = two_to(f.step_exp());
        let want = |x: f32| {
            (x as f64 / step)
                .trunc()
                .clamp(i32::MIN as f64, i32::MAX as f64) as i32
        };
        let mut far = 0;
        for k in 0..=(127 - f.step_exp()) {
            for frac in [1.0f32, 1.999_999_9] {
                // frac * 2^(step_exp + k), built from exact powers of two.
                let v = frac * pow2_f32(f.step_exp() + k.min(127)) * pow2_f32(k - k.min(127));
                if !v.is_finite() {
                    continue;
                }
                assert_eq!(f.code_of(v), want(v), "{v:e} ({k})");
                assert_eq!(f.code_of(-v), want(-v), "-{v:e} ({k})");
                far += (k >= 40) as u32;
            }
        }
        assert!(far > 100, "{far}");
        assert_eq!(f.code_of(f32::MAX), i32::MAX);
        assert_eq!(f.code_of(-f32::MAX), i32::MIN);
    }

    #[test]
    fn pow2_is_exact_over_the_whole_range() {
        for e in -149..=127 {
            let v = pow2_f32(e) as f64;
            assert_eq!(v, two_to(e), "2^{e}");
        }
        assert_eq!(pow2_f32(-150), 0.0);
        assert_eq!(pow2_f32(128), f32::INFINITY);
    }

    #[test]
    fn format_ranges() {
        let f = Format::new(2, -1).unwrap();
        assert_eq!((f.min_code(), f.max_code(), f.step()), (-2, 1, 0.25));
        let f = Format::new(16, 127).unwrap();
        assert_eq!(f.to_f32(f.min_code()), -(two_to(127) as f32));
        let f = Format::new(16, -128).unwrap();
        assert_eq!(f.to_f32(1) as f64, two_to(-143));
        for bits in [0, 1, 17, 255] {
            assert_eq!(Format::new(bits, 0), Err(Error::BitsOutOfRange { bits }));
        }
    }

    #[test]
    fn storage_check() {
        let f9 = Format::new(9, 0).unwrap();
        assert!(check_storage::<i8>(f9).is_err());
        assert!(check_storage::<i16>(f9).is_ok());
        // nics_fix_pt's clamp needs one bit more: 7 bits fit i8, 8 do not.
        let n7 = Format::with_clamp(7, 0, Clamp::Nics).unwrap();
        let n8 = Format::with_clamp(8, 0, Clamp::Nics).unwrap();
        assert!(check_storage::<i8>(n7).is_ok());
        assert_eq!(
            check_storage::<i8>(n8),
            Err(Error::BitsExceedStorage {
                bits: 9,
                storage: 8
            })
        );
        assert!(check_storage::<i16>(n8).is_ok());
    }

    #[test]
    fn nics_clamp_ranges() {
        for bits in 2..=15u8 {
            let h = Format::new(bits, 0).unwrap();
            let n = Format::with_clamp(bits, 0, Clamp::Nics).unwrap();
            assert_eq!(n.min_code(), h.min_code());
            assert_eq!(n.max_code(), h.max_code() + 1);
            assert_eq!(n.code_bits(), bits + 1);
            // The top value is +2^scale, the bottom -2^scale.
            assert_eq!(n.to_f32(n.max_code()), 1.0);
            assert_eq!(n.to_f32(n.min_code()), -1.0);
            assert_eq!(n.saturate(n.max_code() as i128), (n.max_code(), false));
            assert_eq!(n.saturate(n.max_code() as i128 + 1), (n.max_code(), true));
        }
        assert!(matches!(
            Format::with_clamp(16, 0, Clamp::Nics),
            Err(Error::Invalid { .. })
        ));
        assert_eq!(
            Format::with_clamp(17, 0, Clamp::Nics),
            Err(Error::BitsOutOfRange { bits: 17 })
        );
        assert_eq!(
            Format::with_clamp(16, 3, Clamp::Hardware),
            Format::new(16, 3)
        );
    }

    #[test]
    fn zero_point_ranges() {
        for bits in 2..=15u8 {
            let half = 1i32 << (bits - 1);
            for z in [-half, -1, 1, half - 1] {
                let f = Format::new(bits, 0).unwrap().with_zero_point(z).unwrap();
                // Registers -2^(bits-1) ..= 2^(bits-1) - 1 are codes shifted by z.
                assert_eq!(f.stored_code(f.min_code()), -half);
                assert_eq!(f.stored_code(f.max_code()), half - 1);
                assert_eq!(f.code_bits(), bits + 1);
                // Every code fits bits + 1 bits, and code 0 (value 0) exists.
                assert!(f.min_code() >= -(1 << bits) && f.max_code() < (1 << bits));
                assert!(f.min_code() <= 0 && f.max_code() >= 0);
                assert_eq!(f.code_of_stored(f.stored_code(5)), 5);
            }
            for z in [-half - 1, half] {
                let e = Format::new(bits, 0).unwrap().with_zero_point(z);
                assert!(matches!(e, Err(Error::Invalid { .. })), "{bits} {z}");
            }
        }
        assert_eq!(check_zero_point(16, Clamp::Hardware, 0), Ok(()));
        assert!(check_zero_point(16, Clamp::Hardware, -1).is_err());
        assert_eq!(
            check_zero_point(1, Clamp::Hardware, 1),
            Err(Error::BitsOutOfRange { bits: 1 })
        );
        assert_eq!(
            check_zero_point(8, Clamp::Nics, -3),
            Err(Error::Unsupported {
                field: "zero_point"
            })
        );
    }
}

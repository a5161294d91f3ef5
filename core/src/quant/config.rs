//! [`QuantConfig`]: how one tensor (data or gradient) is quantized.

use serde::{Deserialize, Serialize};

use super::format::{Format, MAX_BITS, MIN_BITS};
use crate::error::{Error, Result};

/// How a tensor's scale is obtained (nics_fix_pt's `FIX_NONE`, `FIX_AUTO`, `FIX_FIXED`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Keep full precision: f32 data stays f32, integer accumulators keep all their bits.
    #[default]
    None,
    /// Choose the scale from the data with the config's [`RangeMethod`] and store it.
    Auto,
    /// Use the stored scale.
    Fixed,
}

/// How [`Method::Auto`] turns data into a scale. Every method is computed
/// with integer arithmetic (f32 input is read through its exact bits), so the
/// chosen scale is identical on every target. See [`crate::quant::range`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "snake_case")]
pub enum RangeMethod {
    /// `scale = ceil(log2(max |x|))`.
    #[default]
    Max,
    /// `scale = ceil(log2(3 * std + |mean|))`, std with `n - 1` (as `torch.std`).
    ThreeSigma,
    /// `scale = ceil(log2(k-th largest |x|))` with `k = max(n / 10, 1)`.
    MaxTenPercent,
    /// Try `s`, `s - 1`, `s - 2` (`s` from `Max`) and keep the one with the
    /// least total absolute quantization error (ties keep the larger scale).
    Sweep,
}

/// How a value between two codes becomes a code. Carried by every operation
/// that drops bits; never an implicit `as` cast.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Round to nearest, ties to even (`torch.round`, IEEE default).
    #[default]
    NearestEven,
    /// Round to nearest, ties away from zero (C's `round`).
    NearestAway,
    /// Round toward minus infinity (an arithmetic right shift).
    Floor,
    /// Add a uniform integer in `[0, 2^shift)` from the counter-based
    /// generator, then floor: rounds up with probability equal to the dropped
    /// fraction. Reproducible from `(seed, tensor id, step, element index)`.
    Stochastic,
}

/// Where codes saturate: the hardware's two's complement range (default)
/// or nics_fix_pt's range, one code wider at the top.
///
/// nics_fix_pt quantizes as `clamp(round(x / step) * step, -2^scale,
/// +2^scale)`: its largest value `+2^scale` is code `2^(bits-1)`, one above
/// what a `bits`-bit register holds. [`Clamp::Nics`] reproduces that clamp
/// exactly, so that an old nics_fix_pt result can be reproduced before
/// moving to the hardware-exact default.
///
/// # Storage
///
/// Code `2^(bits-1)` needs `bits + 1` bits: a [`Clamp::Nics`] format's codes
/// are stored in the type that holds `bits + 1` bits (`i8` up to 7 bits,
/// `i16` up to 15), its integer products are those of `(bits + 1)`-bit
/// codes, and `bits = 16` with [`Clamp::Nics`] is refused
/// ([`QuantConfig::validate`], [`Format::with_clamp`]: [`Error::Invalid`]),
/// because its top code 32768 does not fit 16 bits.
///
/// JSON: `"hardware"` or `"nics"`; the field may be omitted (it defaults to
/// `"hardware"`, and is written only when it is `"nics"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "snake_case")]
pub enum Clamp {
    /// Codes saturate to `[-2^(bits-1), 2^(bits-1) - 1]`: what a `bits`-bit
    /// two's complement register holds.
    #[default]
    Hardware,
    /// Codes saturate to `[-2^(bits-1), 2^(bits-1)]`: nics_fix_pt's
    /// `clamp(.., -2^scale, 2^scale)`. Needs `bits <= 15`.
    Nics,
}

impl Clamp {
    /// Whether this is [`Clamp::Hardware`] (the default, not written to JSON).
    pub const fn is_hardware(&self) -> bool {
        matches!(self, Clamp::Hardware)
    }
}

/// Which elements share one scale. Only [`Group::Tensor`] exists in this
/// version; per-channel and per-batch-item groups are reserved in the schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// One scale for the whole tensor.
    #[default]
    Tensor,
}

/// The quantization config of one tensor (its data or its gradient):
/// nics_fix_pt's `{bitwidth, scale, method}` plus range method and rounding.
///
/// JSON field names are the Rust names; `clamp` may be omitted (default
/// `"hardware"`; written only when `"nics"`); `zero_point`, `multiplier` and
/// `group` may be omitted (they default to the only values this version
/// supports) and are reserved for asymmetric ranges, real-valued scales
/// (integer multiplier and shift) and per-channel groups.
///
/// A config read from a file is checked with [`QuantConfig::validate`] (the
/// constructors build valid configs).
///
/// # Examples
///
/// ```
/// use fixnn::{Method, QuantConfig, Rounding};
/// let mut cfg = QuantConfig::auto(8);
/// cfg.rounding = Rounding::Floor;
/// let fmt = cfg.update_scale_f32(&[0.3, -1.7, 0.9])?.unwrap();
/// assert_eq!((cfg.scale, fmt.bits(), fmt.scale()), (1, 8, 1)); // ceil(log2 1.7) = 1
/// # Ok::<(), fixnn::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(deny_unknown_fields)]
pub struct QuantConfig {
    /// None, Auto or Fixed.
    pub method: Method,
    /// Bit width of the codes, `2..=16`.
    pub bits: u8,
    /// Range exponent: values lie in `[-2^scale, 2^scale - 2^(scale+1-bits)]`.
    /// Written by [`Method::Auto`], read by [`Method::Fixed`].
    pub scale: i8,
    /// How [`Method::Auto`] chooses the scale.
    #[serde(default)]
    pub range: RangeMethod,
    /// Rounding of every value that loses bits.
    #[serde(default)]
    pub rounding: Rounding,
    /// Reserved: integer zero point of an asymmetric range. Must be 0.
    #[serde(default)]
    pub zero_point: i32,
    /// Reserved: integer multiplier of a real-valued scale (`0` = a pure
    /// power of two, the only value this version supports).
    #[serde(default)]
    pub multiplier: u32,
    /// Reserved: which elements share a scale.
    #[serde(default)]
    pub group: Group,
    /// Where codes saturate: [`Clamp::Hardware`] (default) or nics_fix_pt's
    /// [`Clamp::Nics`] (one code more at the top; `bits <= 15`).
    #[serde(default, skip_serializing_if = "Clamp::is_hardware")]
    pub clamp: Clamp,
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self::NONE
    }
}

impl QuantConfig {
    /// Full precision (nics_fix_pt's default `FIX_NONE`), 8 bits and scale 0 on record.
    pub const NONE: QuantConfig = QuantConfig {
        method: Method::None,
        bits: 8,
        scale: 0,
        range: RangeMethod::Max,
        rounding: Rounding::NearestEven,
        zero_point: 0,
        multiplier: 0,
        group: Group::Tensor,
        clamp: Clamp::Hardware,
    };

    /// `Method::Fixed` with the given bits and scale, nearest-even rounding.
    pub const fn fixed(bits: u8, scale: i8) -> Self {
        QuantConfig {
            method: Method::Fixed,
            bits,
            scale,
            ..Self::NONE
        }
    }

    /// `Method::Auto` with `RangeMethod::Max`, nearest-even rounding; the
    /// scale starts at 0 and is replaced by the first quantization.
    pub const fn auto(bits: u8) -> Self {
        QuantConfig {
            method: Method::Auto,
            bits,
            ..Self::NONE
        }
    }

    /// Check every field against what this version supports.
    ///
    /// # Errors
    ///
    /// * [`Error::BitsOutOfRange`] if `bits` is not in `2..=16` (checked for
    ///   `Method::None` too, so a saved config is valid whatever its method).
    /// * [`Error::Unsupported`] naming `zero_point` or `multiplier` if either is not 0.
    /// * [`Error::Invalid`] for [`Clamp::Nics`] with `bits = 16` (its top
    ///   code `2^15` needs 17 bits).
    pub const fn validate(&self) -> Result<()> {
        if self.bits < MIN_BITS || self.bits > MAX_BITS {
            return Err(Error::BitsOutOfRange { bits: self.bits });
        }
        if matches!(self.clamp, Clamp::Nics) && self.bits >= MAX_BITS {
            return Err(super::format::NICS_TOO_WIDE);
        }
        if self.zero_point != 0 {
            return Err(Error::Unsupported {
                field: "zero_point",
            });
        }
        if self.multiplier != 0 {
            return Err(Error::Unsupported {
                field: "multiplier",
            });
        }
        Ok(())
    }

    /// The format the stored `bits` and `scale` describe, or `None` for
    /// [`Method::None`]. Does not look at data: for Auto, call
    /// [`update_scale_f32`](Self::update_scale_f32) or
    /// [`update_scale_codes`](Self::update_scale_codes) first.
    ///
    /// # Errors
    ///
    /// As [`validate`](Self::validate).
    pub const fn format(&self) -> Result<Option<Format>> {
        if let Err(e) = self.validate() {
            return Err(e);
        }
        match self.method {
            Method::None => Ok(None),
            // Validated above.
            Method::Auto | Method::Fixed => {
                Ok(Some(Format::validated(self.bits, self.scale, self.clamp)))
            }
        }
    }

    /// Apply the method to f32 data: Auto chooses the scale from `x` with
    /// the range method and stores it in `self.scale`; Fixed keeps the
    /// stored scale; None returns `Ok(None)`.
    ///
    /// # Errors
    ///
    /// As [`validate`](Self::validate); for Auto also
    /// [`Error::EmptyInput`], [`Error::NonFinite`] and
    /// [`Error::TooManyElements`] (more than `2^32` elements). `self` is
    /// unchanged on error.
    pub fn update_scale_f32(&mut self, x: &[f32]) -> Result<Option<Format>> {
        self.validate()?;
        if self.method == Method::Auto {
            let f = Format::validated(self.bits, 0, self.clamp);
            self.scale = super::range::choose_scale_f32_for(self.range, f, self.rounding, x)?;
        }
        self.format()
    }

    /// Apply the method to integer data `q * 2^exp` (codes or wide
    /// accumulators): as [`update_scale_f32`](Self::update_scale_f32), with
    /// the scale chosen by integer arithmetic on `q`.
    ///
    /// # Errors
    ///
    /// As [`validate`](Self::validate); for Auto also [`Error::EmptyInput`]
    /// and [`Error::TooManyElements`]. `self` is unchanged on error.
    pub fn update_scale_codes<S: Copy + Into<i64>>(
        &mut self,
        exp: i32,
        q: &[S],
    ) -> Result<Option<Format>> {
        self.validate()?;
        if self.method == Method::Auto {
            let f = Format::validated(self.bits, 0, self.clamp);
            self.scale =
                super::range::choose_scale_codes_for(self.range, f, self.rounding, exp, q)?;
        }
        self.format()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_without_heap() {
        let mut cfg = QuantConfig::fixed(6, -3);
        cfg.range = RangeMethod::ThreeSigma;
        cfg.rounding = Rounding::Stochastic;
        let mut buf = [0u8; 256];
        let n = serde_json_core::to_slice(&cfg, &mut buf).unwrap();
        let text = core::str::from_utf8(&buf[..n]).unwrap();
        assert_eq!(
            text,
            r#"{"method":"fixed","bits":6,"scale":-3,"range":"three_sigma","rounding":"stochastic","zero_point":0,"multiplier":0,"group":"tensor"}"#
        );
        let (back, used): (QuantConfig, usize) = serde_json_core::from_str(text).unwrap();
        assert_eq!((back, used), (cfg, n));
    }

    #[test]
    fn reserved_fields_default_and_unknown_fields_are_refused() {
        let (cfg, _): (QuantConfig, usize) =
            serde_json_core::from_str(r#"{"method":"auto","bits":4,"scale":0}"#).unwrap();
        assert_eq!(cfg, QuantConfig::auto(4));
        let bad = serde_json_core::from_str::<QuantConfig>(
            r#"{"method":"auto","bits":4,"scale":0,"colour":1}"#,
        );
        assert!(bad.is_err());
    }

    #[test]
    fn validate_names_the_problem() {
        assert_eq!(
            QuantConfig::fixed(1, 0).validate(),
            Err(Error::BitsOutOfRange { bits: 1 })
        );
        let mut cfg = QuantConfig::fixed(8, 0);
        cfg.zero_point = 3;
        assert_eq!(
            cfg.validate(),
            Err(Error::Unsupported {
                field: "zero_point"
            })
        );
        assert_eq!(QuantConfig::NONE.format(), Ok(None));
    }

    #[test]
    fn failed_auto_leaves_config_unchanged() {
        let mut cfg = QuantConfig::auto(8);
        cfg.scale = 5;
        assert_eq!(cfg.update_scale_f32(&[]), Err(Error::EmptyInput));
        assert_eq!(
            cfg.update_scale_f32(&[1.0, f32::NAN]),
            Err(Error::NonFinite { index: 1 })
        );
        assert_eq!(cfg.scale, 5);
    }
}

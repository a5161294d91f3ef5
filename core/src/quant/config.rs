//! [`QuantConfig`]: how one tensor (data or gradient) is quantized.

use serde::{Deserialize, Serialize};

use super::format::{Format, MAX_BITS, MIN_BITS};
use super::multiplier::{RealFormat, MULTIPLIER_END, MULTIPLIER_MIN};
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
    /// An exponential moving average of `max |x|` over the steps (momentum
    /// 1/16, kept in [`QuantConfig::ema`]), with a power-of-two scale that
    /// goes up at once and down only when the average falls below 3/4 of
    /// the next lower range. See [`crate::quant::running`]. With a
    /// real-valued scale ([`QuantConfig::multiplier`]) the average itself
    /// is the range, as `max |x|` is for Max (no hysteresis: there is no
    /// power of two to flip across, and the average moves by at most 1/16
    /// of the gap per step).
    Running,
    /// An asymmetric range: the smallest power-of-two step whose `2^bits`
    /// codes, shifted by an integer zero point, cover `[min(x, 0), max(x, 0)]`;
    /// Auto writes both `scale` and [`QuantConfig::zero_point`]. The exact
    /// integer rule (ties, all-zero data) is
    /// [`choose_min_max_f32`](crate::quant::range::choose_min_max_f32).
    /// JSON `"min_max"`.
    MinMax,
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
    /// TFLite's int8 arithmetic, bit for bit (JSON `"tflite"`).
    ///
    /// * Requantizing an integer accumulator into a real-valued format
    ///   ([`RealFormat::round_acc`](crate::quant::RealFormat::round_acc)):
    ///   TFLite's `MultiplyByQuantizedMultiplier` with its double rounding
    ///   (the accumulator clamped to `i32`, then
    ///   `SaturatingRoundingDoublingHighMul` and `RoundingDivideByPOT`); see
    ///   [`round_mul_shift`](crate::quant::round_mul_shift) for the exact
    ///   rule (multiplier, shifts, `i32` clamp of the accumulator).
    /// * Everywhere else (power-of-two requantization by shifts, f32 to
    ///   code, f32 to real-valued code, averages, the range methods'
    ///   error measure): exactly [`Rounding::NearestAway`], which is
    ///   TFLite's rounding there (`RoundingDivideByPOT`, `std::round`).
    Tflite,
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

/// Which elements share one scale (nics_fix_pt's `group`).
///
/// Groups follow the tensor's layout, NCHW for activations:
///
/// | group | parameter (`[OUT][IN]`, OIHW, bias `[OUT]`) | activation or its gradient (`[B][F]`, NCHW) |
/// |---|---|---|
/// | `tensor` | one scale | one scale |
/// | `channel` | one per output channel (first dimension) | one per feature or channel (second dimension, gathered across the batch) |
/// | `batch` | refused | one per batch item (first dimension) |
///
/// A parameter's gradient is grouped as the parameter. Grouped configs are
/// refused ([`Error::Unsupported`] naming `group`) where no per-group
/// storage exists (batch-norm buffers, [`Quantized`](crate::tensor::Quantized)'s
/// own methods) and for tensors without the dimension. The folded weights
/// and bias of [`ConvBn`](crate::layers::ConvBn) are parameters: per output
/// channel is the usual choice for them.
/// Auto with a group supports range `max` only. Real-valued grouped
/// configs (a `multiplier`) are for parameters; an activation's groups
/// are powers of two (refused naming `multiplier`). Arithmetic, storage of the
/// scales and the format a grouped tensor carries: [`crate::quant::group`].
///
/// JSON: `"tensor"` (the default), `"channel"`, `"batch"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// One scale for the whole tensor.
    #[default]
    Tensor,
    /// One scale per output channel (parameters) or channel (activations).
    Channel,
    /// One scale per batch item (activations and their gradients).
    Batch,
}

/// The quantization config of one tensor (its data or its gradient):
/// nics_fix_pt's `{bitwidth, scale, method}` plus range method and rounding.
///
/// JSON field names are the Rust names; `zero_point`, `multiplier`,
/// `group`, `ema` and `clamp` may be omitted (they default to 0, 0,
/// `"tensor"`, 0 and `"hardware"`; `ema` and `clamp` are written only when
/// not the default).
/// `group` selects per-channel or per-batch-item scales ([`Group`]).
///
/// # Zero points (asymmetric ranges)
///
/// `zero_point = z` (in `[-2^(bits-1), 2^(bits-1) - 1]`, default 0): the
/// TFLite asymmetric scheme with a power-of-two step. A register holds
/// `q` in `[-2^(bits-1), 2^(bits-1) - 1]`, real value `(q - z) * step`,
/// `step = 2^(scale + 1 - bits)`; 0 is exact (`q = z`). fixnn's tensors
/// carry `k = q - z` (the value over the step), so values lie in
/// `[(-2^(bits-1) - z) * step, (2^(bits-1) - 1 - z) * step]`, saturate
/// there (zero gradient outside, as any clamp), and every layer computes
/// on `k` in integers, forward and backward, exactly as with `z = 0`
/// (see [`Format`]'s zero point). `k` needs `bits + 1` bits, so a zero
/// point makes a format use the kernels and storage of `bits + 1`.
///
/// Method Fixed uses the stored `z`. Method Auto with
/// [`RangeMethod::MinMax`] chooses `scale` and `z` from the data; Auto with
/// any other range method writes `z = 0` (a symmetric range). Method None
/// ignores `z` (it is still validated).
///
/// Refused by [`validate`](QuantConfig::validate): `z` outside the range
/// above or `z != 0` with `bits = 16` ([`Error::Invalid`]); `z != 0` with
/// [`Clamp::Nics`], and a zero point (or [`RangeMethod::MinMax`]) with a
/// real-valued `multiplier` ([`Error::Unsupported`] naming `zero_point`).
///
/// # Real-valued scales
///
/// `multiplier = 0` (the default): the power-of-two format, real value of
/// code `q` is `q * 2^(scale + 1 - bits)`. `multiplier = M` in
/// `[2^30, 2^31)`: a real-valued scale, the TFLite scheme of an integer
/// multiplier and a shift; the real value of `q` is
/// `q * (M / 2^31) * 2^(scale + 1 - bits) = q * M * 2^(scale - bits - 30)`
/// and the range is `(M / 2^31) * 2^scale` (see [`RealFormat`]). Method
/// Auto then chooses `scale` and `M` together from `max |x|`
/// ([`RealFormat::from_max_for`]; range Max, as nics_fix_pt's `float_scale`,
/// or [`RangeMethod::Running`], whose moving average then stands for
/// `max |x|`, as PyTorch's moving-average observers do; no other range
/// method): with [`Clamp::Nics`] as
/// nics_fix_pt's `float_scale` with `RANGE_MAX` does (range = `max |x|`,
/// step = `max |x| / 2^(bits - 1)`: the maximum is code `2^(bits-1)`, which
/// that clamp keeps); with the hardware clamp the range is
/// `max |x| * 2^(bits-1) / (2^(bits-1) - 1)` (rounded up), so that the
/// maximum is the top code `2^(bits-1) - 1` (TFLite's symmetric scale
/// `max / 127` at 8 bits) instead of being clamped, which would zero its
/// gradient at every step. Fixed keeps both,
/// None ignores both. Any `M` in the range asks Auto for a real-valued scale
/// ([`QuantConfig::auto_real`] uses `2^30`).
///
/// A config read from a file is checked with [`QuantConfig::validate`] (the
/// constructors build valid configs).
///
/// Devices read it with [`QuantConfig::from_json`], fixnn's own reader, not
/// with serde: **a new field must also be added to the reader's table**
/// (`QUANT_CONFIG_FIELDS` in `core/src/model/read.rs`, one line; a new enum
/// type also needs a `JsonEnum` table there, and a new variant of an
/// existing enum one line in its table). `core/tests/json_reader.rs` fails
/// until it is.
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
    /// Integer zero point of an asymmetric range: register value `q` means
    /// `(q - zero_point) * step` (see the type's docs). Written by
    /// [`Method::Auto`] together with `scale` (0 unless the range method is
    /// [`RangeMethod::MinMax`]), read by [`Method::Fixed`].
    #[serde(default)]
    pub zero_point: i32,
    /// Integer multiplier of a real-valued scale, a Q31 fraction in
    /// `[2^30, 2^31)`; `0` = a pure power of two (see the type's docs).
    /// Written by [`Method::Auto`] together with `scale` when non-zero.
    #[serde(default)]
    pub multiplier: u32,
    /// Which elements share a scale ([`Group`]). A grouped config's
    /// per-group scales are stored beside the tensor; `scale` (and
    /// `multiplier`) then hold those of the group with the largest range.
    #[serde(default)]
    pub group: Group,
    /// State of [`RangeMethod::Running`]: the moving average of the
    /// observed range, packed as described in [`crate::quant::running`]
    /// (`0`: no observation yet). Written by `Auto` with `Running`, kept by
    /// every other method and range. Omitted from JSON when `0`, so files
    /// written before it existed load, and are written, unchanged.
    #[serde(default, skip_serializing_if = "ema_is_empty")]
    pub ema: u32,
    /// Where codes saturate: [`Clamp::Hardware`] (default) or nics_fix_pt's
    /// [`Clamp::Nics`] (one code more at the top; `bits <= 15`).
    #[serde(default, skip_serializing_if = "Clamp::is_hardware")]
    pub clamp: Clamp,
}

fn ema_is_empty(ema: &u32) -> bool {
    *ema == super::running::EMPTY
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
        ema: super::running::EMPTY,
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

    /// `Method::Auto` with a real-valued scale (`multiplier = 2^30` until
    /// the first quantization chooses it), `RangeMethod::Max`, nearest-even.
    pub const fn auto_real(bits: u8) -> Self {
        QuantConfig {
            method: Method::Auto,
            bits,
            multiplier: MULTIPLIER_MIN,
            ..Self::NONE
        }
    }

    /// `Method::Fixed` with a real-valued scale: range
    /// `(multiplier / 2^31) * 2^scale`, nearest-even rounding (checked by
    /// [`validate`](Self::validate) when used).
    pub const fn fixed_real(bits: u8, scale: i8, multiplier: u32) -> Self {
        QuantConfig {
            method: Method::Fixed,
            bits,
            scale,
            multiplier,
            ..Self::NONE
        }
    }

    /// Whether the config quantizes by groups: a [`Group`] other than
    /// `Tensor` and a method other than None.
    pub const fn is_grouped(&self) -> bool {
        !matches!(self.group, Group::Tensor) && !matches!(self.method, Method::None)
    }

    /// Whether the config has a real-valued scale (`multiplier != 0`) and
    /// quantizes (method not None).
    pub const fn is_real(&self) -> bool {
        self.multiplier != 0 && !matches!(self.method, Method::None)
    }

    /// Check every field against what this version supports.
    ///
    /// # Errors
    ///
    /// * [`Error::BitsOutOfRange`] if `bits` is not in `2..=16` (checked for
    ///   `Method::None` too, so a saved config is valid whatever its method).
    /// * [`Error::Invalid`] if `zero_point` is not in
    ///   `[-2^(bits-1), 2^(bits-1) - 1]`, or is not 0 with `bits = 16`
    ///   ([`check_zero_point`](super::check_zero_point)).
    /// * [`Error::Unsupported`] naming `zero_point` if it is not 0 with
    ///   [`Clamp::Nics`], or with a real-valued `multiplier` (method not
    ///   None); for Auto with [`RangeMethod::MinMax`] and [`Clamp::Nics`]
    ///   or a `multiplier`.
    /// * [`Error::Invalid`] for Auto with [`RangeMethod::MinMax`] and
    ///   `bits = 16`.
    /// * [`Error::Invalid`] if `multiplier` is neither 0 nor in `[2^30, 2^31)`.
    /// * [`Error::Unsupported`] naming `range` for Auto with a multiplier and
    ///   a range method other than Max or Running.
    /// * [`Error::Invalid`] if `ema` is not a packed running range
    ///   ([`running::is_valid`](super::running::is_valid)).
    /// * [`Error::Invalid`] for [`Clamp::Nics`] with `bits = 16` (its top
    ///   code `2^15` needs 17 bits).
    /// * [`Error::Unsupported`] naming `zero_point` for a zero point with a
    ///   [`Group`] other than `Tensor` (method not None).
    /// * [`Error::Unsupported`] naming `range` for Auto with a [`Group`]
    ///   other than `Tensor` and a range method other than Max.
    pub const fn validate(&self) -> Result<()> {
        if self.bits < MIN_BITS || self.bits > MAX_BITS {
            return Err(Error::BitsOutOfRange { bits: self.bits });
        }
        if matches!(self.clamp, Clamp::Nics) && self.bits >= MAX_BITS {
            return Err(super::format::NICS_TOO_WIDE);
        }
        if let Err(e) = super::format::check_zero_point(self.bits, self.clamp, self.zero_point) {
            return Err(e);
        }
        if matches!(self.method, Method::Auto) && matches!(self.range, RangeMethod::MinMax) {
            if matches!(self.clamp, Clamp::Nics) {
                return Err(Error::Unsupported {
                    field: "zero_point",
                });
            }
            if self.bits >= MAX_BITS {
                return Err(Error::Invalid {
                    what: "range min_max needs bits <= 15 (its zero point makes codes bits + 1 bits wide)",
                });
            }
        }
        if self.multiplier != 0
            && !matches!(self.method, Method::None)
            && (self.zero_point != 0
                || (matches!(self.method, Method::Auto)
                    && matches!(self.range, RangeMethod::MinMax)))
        {
            return Err(Error::Unsupported {
                field: "zero_point",
            });
        }
        if self.multiplier != 0
            && (self.multiplier < MULTIPLIER_MIN || self.multiplier >= MULTIPLIER_END)
        {
            return Err(Error::Invalid {
                what: "multiplier must be 0 or in [2^30, 2^31)",
            });
        }
        if self.multiplier != 0
            && matches!(self.method, Method::Auto)
            && !matches!(self.range, RangeMethod::Max | RangeMethod::Running)
        {
            return Err(Error::Unsupported { field: "range" });
        }
        if !matches!(self.group, Group::Tensor)
            && matches!(self.method, Method::Auto)
            && !matches!(self.range, RangeMethod::Max)
        {
            return Err(Error::Unsupported { field: "range" });
        }
        if !matches!(self.group, Group::Tensor)
            && !matches!(self.method, Method::None)
            && self.zero_point != 0
        {
            return Err(Error::Unsupported {
                field: "zero_point",
            });
        }
        if !super::running::is_valid(self.ema) {
            return Err(Error::Invalid {
                what: "ema must be 0 or a packed running range (bit 23 set)",
            });
        }
        Ok(())
    }

    /// Refuse a real-valued scale where only a power-of-two format can be used.
    const fn power_of_two_only(&self) -> Result<()> {
        if self.multiplier != 0 && !matches!(self.method, Method::None) {
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
    /// As [`validate`](Self::validate); [`Error::Unsupported`] naming
    /// `multiplier` for a real-valued scale (which has no power-of-two
    /// format: see [`real_format`](Self::real_format)), so that no caller
    /// can silently drop the multiplier.
    pub const fn format(&self) -> Result<Option<Format>> {
        if let Err(e) = self.validate() {
            return Err(e);
        }
        if let Err(e) = self.power_of_two_only() {
            return Err(e);
        }
        match self.method {
            Method::None => Ok(None),
            // Validated above.
            Method::Auto | Method::Fixed => Ok(Some(
                Format::validated(self.bits, self.scale, self.clamp)
                    .validated_zero(self.zero_point),
            )),
        }
    }

    /// Apply the method to f32 data: Auto chooses the scale from `x` with
    /// the range method and stores it in `self.scale` (and the zero point
    /// in `self.zero_point`: chosen by [`RangeMethod::MinMax`], 0 for the
    /// others); Fixed keeps the stored scale and zero point; None returns
    /// `Ok(None)`.
    ///
    /// # Errors
    ///
    /// As [`format`](Self::format); for Auto also
    /// [`Error::EmptyInput`], [`Error::NonFinite`] and
    /// [`Error::TooManyElements`] (more than `2^32` elements). `self` is
    /// unchanged on error.
    pub fn update_scale_f32(&mut self, x: &[f32]) -> Result<Option<Format>> {
        self.validate()?;
        self.power_of_two_only()?;
        if self.method == Method::Auto {
            if self.range == RangeMethod::Running {
                let obs = super::running::observe_f32(x)?;
                self.step_running(obs);
                self.zero_point = 0;
            } else if self.range == RangeMethod::MinMax {
                let (scale, z) = super::range::choose_min_max_f32(self.bits, x)?;
                self.scale = scale;
                self.zero_point = z;
            } else {
                let f = Format::validated(self.bits, 0, self.clamp);
                self.scale = super::range::choose_scale_f32_for(self.range, f, self.rounding, x)?;
                self.zero_point = 0;
            }
        }
        self.format()
    }

    /// Apply the method to integer data `q * 2^exp` (codes or wide
    /// accumulators): as [`update_scale_f32`](Self::update_scale_f32), with
    /// the scale chosen by integer arithmetic on `q`.
    ///
    /// # Errors
    ///
    /// As [`format`](Self::format); for Auto also [`Error::EmptyInput`]
    /// and [`Error::TooManyElements`]. `self` is unchanged on error.
    pub fn update_scale_codes<S: Copy + Into<i64>>(
        &mut self,
        exp: i32,
        q: &[S],
    ) -> Result<Option<Format>> {
        self.validate()?;
        self.power_of_two_only()?;
        if self.method == Method::Auto {
            if self.range == RangeMethod::Running {
                let obs = super::running::observe_codes(exp, q)?;
                self.step_running(obs);
                self.zero_point = 0;
            } else if self.range == RangeMethod::MinMax {
                let (scale, z) = super::range::choose_min_max_codes(self.bits, exp, q)?;
                self.scale = scale;
                self.zero_point = z;
            } else {
                let f = Format::validated(self.bits, 0, self.clamp);
                self.scale =
                    super::range::choose_scale_codes_for(self.range, f, self.rounding, exp, q)?;
                self.zero_point = 0;
            }
        }
        self.format()
    }

    /// One step of [`RangeMethod::Running`] with the packed observation `obs`.
    fn step_running(&mut self, obs: u32) {
        let ema = super::running::update(self.ema, obs);
        self.scale = super::running::next_scale(self.ema, ema, self.scale);
        self.ema = ema;
    }

    /// The real-valued format the stored `bits`, `scale` and `multiplier`
    /// describe, or `None` for [`Method::None`].
    ///
    /// # Errors
    ///
    /// As [`validate`](Self::validate); [`Error::Invalid`] if `multiplier`
    /// is 0 (a power-of-two config: use [`format`](Self::format)).
    pub const fn real_format(&self) -> Result<Option<RealFormat>> {
        if let Err(e) = self.validate() {
            return Err(e);
        }
        if matches!(self.method, Method::None) {
            return Ok(None);
        }
        // Validated above.
        let f = Format::validated(self.bits, self.scale, self.clamp);
        match RealFormat::new(f, self.multiplier) {
            Ok(rf) => Ok(Some(rf)),
            Err(e) => Err(e),
        }
    }

    /// [`update_scale_f32`](Self::update_scale_f32) for a real-valued
    /// scale: Auto sets `scale` and `multiplier` from `max |x|` with
    /// [`RealFormat::from_max_for`] (the config's clamp: `max |x|` is the top
    /// code; integer arithmetic on the f32 bits; all-zero
    /// data gives nics_fix_pt's `eps`, the f32 nearest `1e-5`), or with
    /// range [`RangeMethod::Running`] from the moving average after
    /// observing `max |x|` (kept in `ema`); Fixed keeps them; None returns
    /// `Ok(None)`.
    ///
    /// # Errors
    ///
    /// As [`real_format`](Self::real_format); for Auto also
    /// [`Error::EmptyInput`] and [`Error::NonFinite`], and with range
    /// Running [`Error::TooManyElements`] (more than `2^32` elements).
    /// `self` is unchanged on error.
    pub fn update_real_f32(&mut self, x: &[f32]) -> Result<Option<RealFormat>> {
        self.real_format()?;
        if self.method == Method::Auto {
            if self.range == RangeMethod::Running {
                // Refuses empty and non-finite data as below.
                let obs = super::running::observe_f32(x)?;
                self.step_running_real(obs)?;
            } else {
                if x.is_empty() {
                    return Err(Error::EmptyInput);
                }
                let big = super::range::max_abs_bits(x);
                if big >= 0x7f80_0000 {
                    let index = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
                    return Err(Error::NonFinite { index });
                }
                let (m, e) = super::round::decompose_f32(f32::from_bits(big)).unwrap_or((0, 0));
                self.set_real(RealFormat::from_max_for(
                    self.bits,
                    self.clamp,
                    m.unsigned_abs(),
                    e,
                )?);
            }
        }
        self.real_format()
    }

    /// [`update_real_f32`](Self::update_real_f32) for integer data
    /// `q * 2^exp`: Auto chooses from `max |q| * 2^exp` exactly (rounded up
    /// to a 31-bit multiplier when `max |q|` has more significant bits).
    ///
    /// # Errors
    ///
    /// As [`real_format`](Self::real_format); for Auto also
    /// [`Error::EmptyInput`], and with range Running
    /// [`Error::TooManyElements`]. `self` is unchanged on error.
    pub fn update_real_codes<S: Copy + Into<i64>>(
        &mut self,
        exp: i32,
        q: &[S],
    ) -> Result<Option<RealFormat>> {
        self.real_format()?;
        if self.method == Method::Auto {
            if self.range == RangeMethod::Running {
                // Refuses empty data as below.
                self.step_running_real(super::running::observe_codes(exp, q)?)?;
            } else {
                let Some(big) = q.iter().map(|&v| v.into().unsigned_abs()).max() else {
                    return Err(Error::EmptyInput);
                };
                self.set_real(RealFormat::from_max_for(self.bits, self.clamp, big, exp)?);
            }
        }
        self.real_format()
    }

    /// One step of [`RangeMethod::Running`] for a real-valued scale: the
    /// average after observing `obs` is the range, as `max |x|` is for
    /// range Max ([`RealFormat::from_max_for`]; an empty average, all-zero
    /// data so far, gives its `eps`). No hysteresis: the average moves by
    /// at most 1/16 of the gap per step, and a real-valued range has no
    /// power of two to flip across. `self` is unchanged on error.
    fn step_running_real(&mut self, obs: u32) -> Result<()> {
        let ema = super::running::update(self.ema, obs);
        let (m, e) = super::running::decode(ema).map_or((0, 0), |(m, e)| (m as u64, e - 23));
        self.set_real(RealFormat::from_max_for(self.bits, self.clamp, m, e)?);
        self.ema = ema;
        Ok(())
    }

    fn set_real(&mut self, rf: RealFormat) {
        self.scale = rf.format().scale();
        self.multiplier = rf.multiplier();
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
        assert_eq!(QuantConfig::from_json(text.as_bytes()), Ok(cfg));
    }

    #[test]
    fn reserved_fields_default_and_unknown_fields_are_refused() {
        let cfg = QuantConfig::from_json(br#"{"method":"auto","bits":4,"scale":0}"#);
        assert_eq!(cfg, Ok(QuantConfig::auto(4)));
        let bad = QuantConfig::from_json(br#"{"method":"auto","bits":4,"scale":0,"colour":1}"#);
        assert_eq!(
            bad.map_err(|e| (e.problem, e.offset)),
            Err((crate::model::ReadProblem::UnknownField, 36))
        );
    }

    #[test]
    fn validate_names_the_problem() {
        assert_eq!(
            QuantConfig::fixed(1, 0).validate(),
            Err(Error::BitsOutOfRange { bits: 1 })
        );
        let mut cfg = QuantConfig::fixed(8, 0);
        cfg.zero_point = 3;
        assert_eq!(cfg.validate(), Ok(()));
        for z in [128, -129, i32::MIN, i32::MAX] {
            cfg.zero_point = z;
            assert!(matches!(cfg.validate(), Err(Error::Invalid { .. })), "{z}");
        }
        cfg.zero_point = -128;
        assert_eq!(cfg.validate(), Ok(()));
        cfg.clamp = Clamp::Nics;
        assert_eq!(
            cfg.validate(),
            Err(Error::Unsupported {
                field: "zero_point"
            })
        );
        let mut wide = QuantConfig::fixed(16, 0);
        wide.zero_point = 1;
        assert!(matches!(wide.validate(), Err(Error::Invalid { .. })));
        let mut real = QuantConfig::fixed_real(8, 0, 3 << 29);
        real.zero_point = 1;
        assert_eq!(
            real.validate(),
            Err(Error::Unsupported {
                field: "zero_point"
            })
        );
        let mut real_min_max = QuantConfig::auto_real(8);
        real_min_max.range = RangeMethod::MinMax;
        assert_eq!(
            real_min_max.validate(),
            Err(Error::Unsupported {
                field: "zero_point"
            })
        );
        assert_eq!(QuantConfig::NONE.format(), Ok(None));
    }

    #[test]
    fn zero_point_json_reads_on_the_device_as_with_serde() {
        let text = br#"{"method":"auto","bits":8,"scale":-1,"range":"min_max","zero_point":-104}"#;
        let cfg = QuantConfig::from_json(text).unwrap();
        assert_eq!((cfg.range, cfg.zero_point), (RangeMethod::MinMax, -104));
        let (back, _): (QuantConfig, usize) =
            serde_json_core::from_slice(text).expect("serde reads it too");
        assert_eq!(back, cfg);
        assert_eq!(cfg.format().unwrap().unwrap().min_code(), -24);
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

    #[test]
    fn multiplier_validation() {
        let mut cfg = QuantConfig::fixed_real(8, 0, 3 << 29);
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(
            cfg.format(),
            Err(Error::Unsupported {
                field: "multiplier"
            })
        );
        assert_eq!(
            cfg.update_scale_f32(&[1.0]),
            Err(Error::Unsupported {
                field: "multiplier"
            })
        );
        let rf = cfg.real_format().unwrap().unwrap();
        assert_eq!((rf.multiplier(), rf.format().scale()), (3 << 29, 0));
        for m in [1, (1 << 30) - 1, 1 << 31, u32::MAX] {
            cfg.multiplier = m;
            assert!(matches!(cfg.validate(), Err(Error::Invalid { .. })), "{m}");
        }
        cfg.multiplier = 0;
        assert!(matches!(cfg.real_format(), Err(Error::Invalid { .. })));
        let mut auto = QuantConfig::auto_real(8);
        auto.range = RangeMethod::ThreeSigma;
        assert_eq!(auto.validate(), Err(Error::Unsupported { field: "range" }));
        // Method None ignores the multiplier.
        let none = QuantConfig {
            multiplier: 3 << 29,
            ..QuantConfig::NONE
        };
        assert_eq!((none.format(), none.real_format()), (Ok(None), Ok(None)));
    }

    #[test]
    fn auto_real_chooses_scale_and_multiplier() {
        // The hardware clamp: max |x| = 1.5 is the top code 127, -1.5 is
        // -127 (range 1.5 * 128 / 127, M = ceil(0.75 * 2^31 * 128 / 127)
        // = ceil(1623294726.05)).
        let mut hw = QuantConfig::auto_real(8);
        let rf = hw.update_real_f32(&[0.3, -1.5, 0.9]).unwrap().unwrap();
        assert_eq!((hw.scale, hw.multiplier), (1, 1_623_294_727));
        assert_eq!(rf.round_f32(1.5, Rounding::NearestEven, 0), (127, false));
        assert_eq!(rf.round_f32(-1.5, Rounding::NearestEven, 0), (-127, false));
        // At 2 bits the top code is 1: range 2 * max.
        let mut two = QuantConfig::auto_real(2);
        two.update_real_f32(&[0.75]).unwrap();
        assert_eq!((two.scale, two.multiplier), (1, 3 << 29));
        // nics_fix_pt's clamp: its float_scale exactly.
        let mut cfg = QuantConfig::auto_real(8);
        cfg.clamp = Clamp::Nics;
        // max |x| = 1.5: range 0.75 * 2^1, step 1.5 / 128.
        let rf = cfg.update_real_f32(&[0.3, -1.5, 0.9]).unwrap().unwrap();
        assert_eq!((cfg.scale, cfg.multiplier), (1, 3 << 29));
        assert_eq!(rf.to_f32(64), 0.75);
        // max |x| = 0.1 (f32 0x3dcccccd): 0.8 * 2^-3, M = significand << 7.
        cfg.update_real_f32(&[0.1, -0.05]).unwrap();
        assert_eq!((cfg.scale, cfg.multiplier), (-3, 0xcccccd << 7));
        // Integer data: max 3 * 2^-4 = 0.1875 = 0.75 * 2^-2.
        cfg.update_real_codes(-4, &[1i32, -3, 2]).unwrap();
        assert_eq!((cfg.scale, cfg.multiplier), (-2, 3 << 29));
        // Fixed keeps both.
        let mut fixed = QuantConfig {
            method: Method::Fixed,
            ..cfg
        };
        fixed.update_real_f32(&[100.0]).unwrap();
        assert_eq!((fixed.scale, fixed.multiplier), (-2, 3 << 29));
        // Errors leave the config unchanged.
        assert_eq!(cfg.update_real_f32(&[]), Err(Error::EmptyInput));
        assert_eq!(
            cfg.update_real_f32(&[1.0, f32::INFINITY]),
            Err(Error::NonFinite { index: 1 })
        );
        assert_eq!((cfg.scale, cfg.multiplier), (-2, 3 << 29));
    }

    #[test]
    fn real_config_json() {
        let cfg = QuantConfig::fixed_real(8, -3, 0x6666_6666);
        let mut buf = [0u8; 256];
        let n = serde_json_core::to_slice(&cfg, &mut buf).unwrap();
        let text = core::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.contains(r#""multiplier":1717986918"#), "{text}");
        let (back, _): (QuantConfig, usize) = serde_json_core::from_str(text).unwrap();
        assert_eq!(back, cfg);
    }
}

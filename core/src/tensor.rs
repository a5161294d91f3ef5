//! Statically sized tensors: shapes as types, value buffers with an
//! optional [`Format`], activations with their configs and saturation
//! masks, and trainable parameters with their master copies.
//!
//! # Representation
//!
//! Every tensor's values are stored as `f32`. When the tensor is quantized
//! (`fmt` is `Some`), each value is *exactly* `code * 2^(scale + 1 - bits)`
//! for an integer code in the format's range: f32 holds every such value
//! exactly (at most 16 significant bits), and kernels recover the code
//! exactly with [`Format::code_of`] and compute in integers. When `fmt` is
//! `None` the tensor is at full precision (nics_fix_pt's `FIX_NONE`) and
//! kernels that touch it compute in f32, in a fixed order.
//!
//! A tensor quantized with a real-valued scale (a config with a
//! `multiplier`, see [`quant::RealFormat`]) holds its codes' real values
//! `q * M * 2^(scale - bits - 30)` rounded to f32 (nearest-even; the code
//! is decided in integers, and the rounding is far below half a step, so the
//! code can be recovered), with `fmt = None`: layers that read it compute
//! in f32 as for full precision, on the quantized values.
//!
//! Shapes are types ([`S1`], [`S2`], [`S3`], [`S4`]) whose buffers are nested
//! arrays, so `size_of` of a layer is the RAM it needs and shape mismatches
//! between layers are compile errors.

use crate::error::{Error, Result};
use crate::model::{Kind, ParamState, TensorMut};
use crate::quant::{self, Format, QuantConfig, Rounder, Stream};

/// A tensor shape known at compile time, with buffers of any element type.
pub trait Shape: 'static {
    /// The buffer of this shape holding `T`s (a nested array).
    type Buf<T: Copy>: Copy;
    /// Number of elements.
    const LEN: usize;
    /// A buffer with every element `v`.
    fn filled<T: Copy>(v: T) -> Self::Buf<T>;
    /// The elements in row-major order.
    fn flat<T: Copy>(b: &Self::Buf<T>) -> &[T];
    /// The elements in row-major order, mutable.
    fn flat_mut<T: Copy>(b: &mut Self::Buf<T>) -> &mut [T];
}

/// Shape `[N]`.
pub struct S1<const N: usize>;
/// Shape `[A][B]`, row-major (e.g. `[batch][features]`, `[out][in]`).
pub struct S2<const A: usize, const B: usize>;
/// Shape `[A][B][C]`.
pub struct S3<const A: usize, const B: usize, const C: usize>;
/// Shape `[A][B][C][D]` (e.g. NCHW activations, OIHW convolution weights).
pub struct S4<const A: usize, const B: usize, const C: usize, const D: usize>;

impl<const N: usize> Shape for S1<N> {
    type Buf<T: Copy> = [T; N];
    const LEN: usize = N;
    fn filled<T: Copy>(v: T) -> [T; N] {
        [v; N]
    }
    fn flat<T: Copy>(b: &[T; N]) -> &[T] {
        b
    }
    fn flat_mut<T: Copy>(b: &mut [T; N]) -> &mut [T] {
        b
    }
}

impl<const A: usize, const B: usize> Shape for S2<A, B> {
    type Buf<T: Copy> = [[T; B]; A];
    const LEN: usize = A * B;
    fn filled<T: Copy>(v: T) -> Self::Buf<T> {
        [[v; B]; A]
    }
    fn flat<T: Copy>(b: &Self::Buf<T>) -> &[T] {
        b.as_flattened()
    }
    fn flat_mut<T: Copy>(b: &mut Self::Buf<T>) -> &mut [T] {
        b.as_flattened_mut()
    }
}

impl<const A: usize, const B: usize, const C: usize> Shape for S3<A, B, C> {
    type Buf<T: Copy> = [[[T; C]; B]; A];
    const LEN: usize = A * B * C;
    fn filled<T: Copy>(v: T) -> Self::Buf<T> {
        [[[v; C]; B]; A]
    }
    fn flat<T: Copy>(b: &Self::Buf<T>) -> &[T] {
        b.as_flattened().as_flattened()
    }
    fn flat_mut<T: Copy>(b: &mut Self::Buf<T>) -> &mut [T] {
        b.as_flattened_mut().as_flattened_mut()
    }
}

impl<const A: usize, const B: usize, const C: usize, const D: usize> Shape for S4<A, B, C, D> {
    type Buf<T: Copy> = [[[[T; D]; C]; B]; A];
    const LEN: usize = A * B * C * D;
    fn filled<T: Copy>(v: T) -> Self::Buf<T> {
        [[[[v; D]; C]; B]; A]
    }
    fn flat<T: Copy>(b: &Self::Buf<T>) -> &[T] {
        b.as_flattened().as_flattened().as_flattened()
    }
    fn flat_mut<T: Copy>(b: &mut Self::Buf<T>) -> &mut [T] {
        b.as_flattened_mut().as_flattened_mut().as_flattened_mut()
    }
}

/// Training-time context of one forward/backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ctx {
    /// The run's seed (stochastic rounding, initialisation).
    pub seed: u64,
    /// The training step: part of every stochastic-rounding key.
    pub step: u32,
    /// Training mode (batch statistics, Auto scales updated) or eval mode.
    pub training: bool,
}

impl Ctx {
    /// A training-mode context.
    pub const fn train(seed: u64, step: u32) -> Self {
        Ctx {
            seed,
            step,
            training: true,
        }
    }

    /// An eval-mode context.
    pub const fn eval(seed: u64) -> Self {
        Ctx {
            seed,
            step: 0,
            training: false,
        }
    }

    /// The rounder of tensor `id` with `rounding` at this step.
    pub const fn rounder(&self, id: u32, rounding: quant::Rounding) -> Rounder {
        Rounder::new(rounding, Stream::new(self.seed, id, self.step))
    }
}

/// Tensor ids: each layer gets a block of [`ID_STRIDE`] ids; gradients use
/// the id of their tensor with [`GRAD_ID`] set, so data and gradient
/// rounding draw from unrelated streams.
pub const ID_STRIDE: u32 = 16;
/// Bit set in the id of a gradient's stochastic-rounding stream.
pub const GRAD_ID: u32 = 1 << 31;

/// Values of one tensor plus the format they are exact in, if any.
#[derive(Clone, Copy)]
pub struct Tensor<S: Shape> {
    /// Values, row-major. Exact multiples of the format's step when `fmt` is `Some`.
    pub v: S::Buf<f32>,
    /// The format the values are codes of; `None` for full precision.
    pub fmt: Option<Format>,
}

impl<S: Shape> Tensor<S> {
    /// All zeros, full precision.
    pub fn zeros() -> Self {
        Tensor {
            v: S::filled(0.0),
            fmt: None,
        }
    }

    /// The values as a flat slice.
    pub fn flat(&self) -> &[f32] {
        S::flat(&self.v)
    }

    /// The values as a flat mutable slice. Writing values that are not
    /// exact codes of `fmt` breaks the representation: set `fmt` to `None`
    /// or requantize afterwards.
    pub fn flat_mut(&mut self) -> &mut [f32] {
        S::flat_mut(&mut self.v)
    }

    /// A kernel operand view.
    pub fn operand(&self) -> crate::backend::Operand<'_> {
        crate::backend::Operand {
            v: self.flat(),
            fmt: self.fmt,
        }
    }

    /// Full-precision values from a slice.
    ///
    /// # Errors
    ///
    /// [`Error::LengthMismatch`] if `src.len() != S::LEN`.
    pub fn set_f32(&mut self, src: &[f32]) -> Result<()> {
        if src.len() != S::LEN {
            return Err(Error::LengthMismatch {
                expected: S::LEN,
                found: src.len(),
            });
        }
        self.flat_mut().copy_from_slice(src);
        self.fmt = None;
        Ok(())
    }
}

/// Saturation counters of one tensor, cumulative since the last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SatStats {
    /// Data elements clamped by the data config.
    pub data: u64,
    /// Data elements quantized (the denominator of the saturation rate).
    pub data_total: u64,
    /// Gradient elements clamped by the grad config.
    pub grad: u64,
    /// Gradient elements quantized.
    pub grad_total: u64,
}

/// How one tensor's data and gradient are quantized, with its id and
/// saturation counters. Shared by activations and parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Quantized {
    /// Config of the data.
    pub cfg: QuantConfig,
    /// Config of the gradient with respect to the data.
    pub grad_cfg: QuantConfig,
    /// Tensor id (keys stochastic rounding).
    pub id: u32,
    /// Saturation counters.
    pub stats: SatStats,
}

impl Quantized {
    /// Full precision for data and gradient.
    pub const fn none(id: u32) -> Self {
        Quantized {
            cfg: QuantConfig::NONE,
            grad_cfg: QuantConfig::NONE,
            id,
            stats: SatStats {
                data: 0,
                data_total: 0,
                grad: 0,
                grad_total: 0,
            },
        }
    }

    /// Quantize data values in place by the data config. Auto updates the
    /// stored scale in training mode and acts as Fixed in eval mode (as
    /// nics_fix_pt trains with Auto and tests with Fixed). `sat[i]` records
    /// whether element `i` was clamped. Returns the format (`None`: left at
    /// full precision).
    ///
    /// # Errors
    ///
    /// Config and data errors of [`quant::quantize_f32`],
    /// [`Error::LengthMismatch`]. The config is unchanged on error.
    pub fn quantize_data(
        &mut self,
        ctx: &Ctx,
        v: &mut [f32],
        sat: &mut [bool],
    ) -> Result<Option<Format>> {
        let (fmt, n) = quantize_in_place(&mut self.cfg, ctx, self.id, v, Some(sat))?;
        if fmt.is_some() || self.cfg.is_real() {
            self.stats.data += n;
            self.stats.data_total += v.len() as u64;
        }
        Ok(fmt)
    }

    /// Requantize accumulators `acc * 2^exp` into `dst` by the data config;
    /// with `Method::None` the values are converted to f32 by
    /// [`quant::acc_to_f32`].
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_data`].
    pub fn quantize_data_acc(
        &mut self,
        ctx: &Ctx,
        acc: &[i64],
        exp: i32,
        dst: &mut [f32],
        sat: &mut [bool],
    ) -> Result<Option<Format>> {
        let (fmt, n) = requantize_into(&mut self.cfg, ctx, self.id, acc, exp, dst, Some(sat))?;
        if fmt.is_some() || self.cfg.is_real() {
            self.stats.data += n;
            self.stats.data_total += acc.len() as u64;
        }
        Ok(fmt)
    }

    /// Quantize a gradient in place by the grad config (stochastic stream:
    /// the tensor id with [`GRAD_ID`] set). Returns its format.
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_data`].
    pub fn quantize_grad(&mut self, ctx: &Ctx, g: &mut [f32]) -> Result<Option<Format>> {
        let (fmt, n) = quantize_in_place(&mut self.grad_cfg, ctx, self.id | GRAD_ID, g, None)?;
        if fmt.is_some() || self.grad_cfg.is_real() {
            self.stats.grad += n;
            self.stats.grad_total += g.len() as u64;
        }
        Ok(fmt)
    }

    /// Requantize gradient accumulators `acc * 2^exp` into `dst` by the
    /// grad config.
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_data`].
    pub fn quantize_grad_acc(
        &mut self,
        ctx: &Ctx,
        acc: &[i64],
        exp: i32,
        dst: &mut [f32],
    ) -> Result<Option<Format>> {
        let (fmt, n) = requantize_into(
            &mut self.grad_cfg,
            ctx,
            self.id | GRAD_ID,
            acc,
            exp,
            dst,
            None,
        )?;
        if fmt.is_some() || self.grad_cfg.is_real() {
            self.stats.grad += n;
            self.stats.grad_total += acc.len() as u64;
        }
        Ok(fmt)
    }
}

fn check_len(a: usize, b: usize) -> Result<()> {
    if a != b {
        return Err(Error::LengthMismatch {
            expected: a,
            found: b,
        });
    }
    Ok(())
}

/// The config's format for this pass: Auto acts as Fixed in eval mode
/// (nics_fix_pt trains with Auto and tests with Fixed).
fn pass_config(cfg: &QuantConfig, ctx: &Ctx) -> QuantConfig {
    let mut next = *cfg;
    if !ctx.training && next.method == quant::Method::Auto {
        next.method = quant::Method::Fixed;
    }
    next
}

/// Quantize `v` in place by `cfg` (stream `id`), recording clamps in `sat`.
/// Returns the format and the number of clamped elements.
fn quantize_in_place(
    cfg: &mut QuantConfig,
    ctx: &Ctx,
    id: u32,
    v: &mut [f32],
    sat: Option<&mut [bool]>,
) -> Result<(Option<Format>, u64)> {
    if let Some(s) = sat.as_deref() {
        check_len(v.len(), s.len())?;
    }
    let mut next = pass_config(cfg, ctx);
    if next.is_real() {
        return quantize_real(next, cfg, ctx, id, v, sat);
    }
    let Some(f) = next.update_scale_f32(v)? else {
        if let Some(s) = sat {
            s.fill(false);
        }
        return Ok((None, 0));
    };
    // Auto has refused non-finite data already.
    if next.method != quant::Method::Auto {
        if let Some(index) = quant::range::first_non_finite(v) {
            return Err(Error::NonFinite { index });
        }
    }
    cfg.scale = next.scale;
    cfg.zero_point = next.zero_point;
    cfg.ema = next.ema;
    let r = ctx.rounder(id, cfg.rounding);
    let n = quant::quantize_values_in_place(v, f, &r, sat);
    Ok((Some(f), n))
}

/// [`quantize_in_place`] for a real-valued scale (`next.is_real()`):
/// Auto chooses `scale` and `multiplier` from `v`, each value becomes the
/// f32 of its code's real value, and the format returned is `None` (the
/// values are not exact multiples of a power of two).
fn quantize_real(
    mut next: QuantConfig,
    cfg: &mut QuantConfig,
    ctx: &Ctx,
    id: u32,
    v: &mut [f32],
    mut sat: Option<&mut [bool]>,
) -> Result<(Option<Format>, u64)> {
    let Some(rf) = next.update_real_f32(v)? else {
        return Ok((None, 0));
    };
    if next.method != quant::Method::Auto {
        if let Some(index) = quant::range::first_non_finite(v) {
            return Err(Error::NonFinite { index });
        }
    }
    cfg.scale = next.scale;
    cfg.multiplier = next.multiplier;
    let r = ctx.rounder(id, cfg.rounding);
    let mut n = 0;
    for (i, x) in v.iter_mut().enumerate() {
        let (q, clamped) = r.round_real_f32(i, *x, rf);
        *x = rf.to_f32(q);
        n += clamped as u64;
        if let Some(s) = sat.as_deref_mut().and_then(|s| s.get_mut(i)) {
            *s = clamped;
        }
    }
    Ok((None, n))
}

/// [`quantize_in_place`] of a copy of `src` written into `dst` (same
/// length), in one pass; `dst` is written only on success.
fn quantize_into(
    cfg: &mut QuantConfig,
    ctx: &Ctx,
    id: u32,
    src: &[f32],
    dst: &mut [f32],
    sat: &mut [bool],
) -> Result<(Option<Format>, u64)> {
    check_len(src.len(), dst.len())?;
    check_len(src.len(), sat.len())?;
    let mut next = pass_config(cfg, ctx);
    if next.is_real() {
        // Validate and choose before writing: `dst` changes only on success.
        let mut probe = next;
        probe.update_real_f32(src)?;
        if probe.method != quant::Method::Auto {
            if let Some(index) = quant::range::first_non_finite(src) {
                return Err(Error::NonFinite { index });
            }
        }
        dst.copy_from_slice(src);
        return quantize_real(next, cfg, ctx, id, dst, Some(sat));
    }
    let Some(f) = next.update_scale_f32(src)? else {
        dst.copy_from_slice(src);
        sat.fill(false);
        return Ok((None, 0));
    };
    if next.method != quant::Method::Auto {
        if let Some(index) = quant::range::first_non_finite(src) {
            return Err(Error::NonFinite { index });
        }
    }
    cfg.scale = next.scale;
    cfg.zero_point = next.zero_point;
    cfg.ema = next.ema;
    let r = ctx.rounder(id, cfg.rounding);
    let n = quant::quantize_values_into(src, dst, f, &r, Some(sat));
    Ok((Some(f), n))
}

/// Requantize `acc * 2^exp` into `dst` by `cfg` (stream `id`); `Method::None`
/// converts to f32 with [`quant::acc_to_f32`].
/// Returns the format and the number of clamped elements.
fn requantize_into(
    cfg: &mut QuantConfig,
    ctx: &Ctx,
    id: u32,
    acc: &[i64],
    exp: i32,
    dst: &mut [f32],
    mut sat: Option<&mut [bool]>,
) -> Result<(Option<Format>, u64)> {
    check_len(acc.len(), dst.len())?;
    if let Some(s) = sat.as_deref() {
        check_len(acc.len(), s.len())?;
    }
    let mut next = pass_config(cfg, ctx);
    if next.is_real() {
        let Some(rf) = next.update_real_codes(exp, acc)? else {
            return Ok((None, 0));
        };
        cfg.scale = next.scale;
        cfg.multiplier = next.multiplier;
        let r = ctx.rounder(id, cfg.rounding);
        let mut n = 0;
        for (i, (d, &a)) in dst.iter_mut().zip(acc).enumerate() {
            let (q, clamped) = r.round_real_acc(i, a, exp, rf);
            *d = rf.to_f32(q);
            n += clamped as u64;
            if let Some(s) = sat.as_deref_mut().and_then(|s| s.get_mut(i)) {
                *s = clamped;
            }
        }
        return Ok((None, n));
    }
    let Some(f) = next.update_scale_codes(exp, acc)? else {
        for (d, &a) in dst.iter_mut().zip(acc) {
            *d = quant::acc_to_f32(a, exp);
        }
        if let Some(s) = sat {
            s.fill(false);
        }
        return Ok((None, 0));
    };
    cfg.scale = next.scale;
    cfg.zero_point = next.zero_point;
    cfg.ema = next.ema;
    let r = ctx.rounder(id, cfg.rounding);
    let mut n = 0;
    for (i, (d, &a)) in dst.iter_mut().zip(acc).enumerate() {
        let (q, clamped) = r.round(i, a, exp, f);
        *d = f.to_f32(q);
        n += clamped as u64;
        if let Some(s) = sat.as_deref_mut().and_then(|s| s.get_mut(i)) {
            *s = clamped;
        }
    }
    Ok((Some(f), n))
}

/// A layer's output: values kept for the backward pass, their configs, and
/// which elements saturated (the straight-through mask).
#[derive(Clone, Copy)]
pub struct Act<S: Shape> {
    /// The values and their format.
    pub t: Tensor<S>,
    /// Configs, id and counters.
    pub quant: Quantized,
    /// `sat[i]`: element `i` was clamped in the forward pass (zero gradient).
    pub sat: S::Buf<bool>,
}

impl<S: Shape> Act<S> {
    /// Zeros at full precision with tensor id `id`.
    pub fn new(id: u32) -> Self {
        Act {
            t: Tensor::zeros(),
            quant: Quantized::none(id),
            sat: S::filled(false),
        }
    }

    /// Quantize the values already written into `self.t.v` by the data
    /// config (their current `fmt` is ignored).
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_data`].
    pub fn quantize(&mut self, ctx: &Ctx) -> Result<()> {
        let fmt = self.quant.quantize_data(
            ctx,
            S::flat_mut(&mut self.t.v),
            S::flat_mut(&mut self.sat),
        )?;
        self.t.fmt = fmt;
        Ok(())
    }

    /// Set the output from accumulators `acc * 2^exp`, requantized by the data config.
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_data`].
    pub fn set_from_acc(&mut self, ctx: &Ctx, acc: &[i64], exp: i32) -> Result<()> {
        let fmt = self.quant.quantize_data_acc(
            ctx,
            acc,
            exp,
            S::flat_mut(&mut self.t.v),
            S::flat_mut(&mut self.sat),
        )?;
        self.t.fmt = fmt;
        Ok(())
    }

    /// Finish values written into `self.t.v` that are exact in `fmt` (ReLU,
    /// max-pooling, flatten of a quantized input): with a `None` data config
    /// they keep `fmt`; otherwise they are requantized by the config.
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_data`].
    pub fn finish_exact(&mut self, ctx: &Ctx, fmt: Option<Format>) -> Result<()> {
        if self.quant.cfg.method == quant::Method::None {
            S::flat_mut(&mut self.sat).fill(false);
            self.t.fmt = fmt;
            return Ok(());
        }
        self.quantize(ctx)
    }

    /// This output as a named tensor of a layer of type `layer_type`.
    pub fn tensor_mut(&mut self, layer_type: &'static str, name: &'static str) -> TensorMut<'_> {
        TensorMut {
            layer_type,
            name,
            kind: Kind::Activation,
            quant: &mut self.quant,
            values: S::flat_mut(&mut self.t.v),
            fmt: &mut self.t.fmt,
            param: None,
        }
    }

    /// Prepare an incoming gradient `dy` (with respect to this output) in
    /// place: zero it where the forward pass saturated (straight-through
    /// estimator), then quantize it by the grad config. A `dy` that is
    /// already exact codes and meets a `None` grad config keeps its format.
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_grad`].
    pub fn prepare_grad(&mut self, ctx: &Ctx, dy: &mut Tensor<S>) -> Result<()> {
        // A select, not a conditional store: vectorises.
        for (g, &s) in dy.flat_mut().iter_mut().zip(S::flat(&self.sat)) {
            *g = if s { 0.0 } else { *g };
        }
        if self.quant.grad_cfg.method == quant::Method::None {
            return Ok(());
        }
        dy.fmt = self.quant.quantize_grad(ctx, dy.flat_mut())?;
        Ok(())
    }
}

/// A trainable parameter: f32 master values, optimizer state, the
/// quantized copy used by forward and backward, its gradient and configs.
#[derive(Clone, Copy)]
pub struct Param<S: Shape> {
    /// Master values (f32; updated by the optimizer).
    pub master: S::Buf<f32>,
    /// Momentum buffer of SGD.
    pub momentum: S::Buf<f32>,
    /// Gradient with respect to the master values (after the STE mask).
    pub grad: Tensor<S>,
    /// The quantized copy used by the forward and backward passes.
    pub q: Tensor<S>,
    /// `sat[i]`: the master value was clamped when quantized.
    pub sat: S::Buf<bool>,
    /// Configs, id and counters.
    pub quant: Quantized,
}

impl<S: Shape> Param<S> {
    /// Zeros at full precision with tensor id `id`.
    pub fn new(id: u32) -> Self {
        Param {
            master: S::filled(0.0),
            momentum: S::filled(0.0),
            grad: Tensor::zeros(),
            q: Tensor::zeros(),
            sat: S::filled(false),
            quant: Quantized::none(id),
        }
    }

    /// Fill the master values with uniform values in `[-bound, bound)`
    /// drawn from the counter-based generator keyed by `(seed, id, 0)`
    /// (24-bit resolution, exact in f32), and clear the momentum. With
    /// `bound = 1 / sqrt(fan_in)` this is PyTorch's default initialisation
    /// of linear and convolution layers.
    pub fn init_uniform(&mut self, seed: u64, bound: f32) {
        let s = Stream::new(seed, self.quant.id, 0);
        for (i, w) in S::flat_mut(&mut self.master).iter_mut().enumerate() {
            let u = (s.draw(i as u32) >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
            *w = (2.0 * u - 1.0) * bound;
        }
        S::flat_mut(&mut self.momentum).fill(0.0);
    }

    /// Quantize the master values into the copy used by the passes.
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_data`]; the config is unchanged on error.
    pub fn refresh(&mut self, ctx: &Ctx) -> Result<()> {
        let (master, q) = (S::flat(&self.master), S::flat_mut(&mut self.q.v));
        let quant = &mut self.quant;
        let res = quantize_into(
            &mut quant.cfg,
            ctx,
            quant.id,
            master,
            q,
            S::flat_mut(&mut self.sat),
        );
        let (fmt, n) = match res {
            Ok(r) => r,
            Err(e) => {
                // As a copy followed by a failed in-place quantization.
                self.q.v = self.master;
                return Err(e);
            }
        };
        if fmt.is_some() || quant.cfg.is_real() {
            quant.stats.data += n;
            quant.stats.data_total += S::LEN as u64;
        }
        self.q.fmt = fmt;
        Ok(())
    }

    /// Store the gradient from accumulators `acc * 2^exp`: quantized by the
    /// grad config, then zeroed where the master value saturated.
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_grad_acc`].
    pub fn set_grad_acc(&mut self, ctx: &Ctx, acc: &[i64], exp: i32) -> Result<()> {
        let fmt = self
            .quant
            .quantize_grad_acc(ctx, acc, exp, S::flat_mut(&mut self.grad.v))?;
        self.grad.fmt = fmt;
        self.mask_grad();
        Ok(())
    }

    /// Finish an f32 gradient written into `self.grad.v`: quantized by the
    /// grad config, then zeroed where the master value saturated.
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_grad`].
    pub fn finish_grad(&mut self, ctx: &Ctx) -> Result<()> {
        self.grad.fmt = self
            .quant
            .quantize_grad(ctx, S::flat_mut(&mut self.grad.v))?;
        self.mask_grad();
        Ok(())
    }

    fn mask_grad(&mut self) {
        for (g, &s) in S::flat_mut(&mut self.grad.v)
            .iter_mut()
            .zip(S::flat(&self.sat))
        {
            *g = if s { 0.0 } else { *g };
        }
    }

    /// This parameter as a named tensor of a layer of type `layer_type`.
    pub fn tensor_mut(&mut self, layer_type: &'static str, name: &'static str) -> TensorMut<'_> {
        TensorMut {
            layer_type,
            name,
            kind: Kind::Param,
            quant: &mut self.quant,
            values: S::flat_mut(&mut self.q.v),
            fmt: &mut self.q.fmt,
            param: Some(ParamState {
                master: S::flat_mut(&mut self.master),
                momentum: S::flat_mut(&mut self.momentum),
                grad: S::flat(&self.grad.v),
            }),
        }
    }
}

/// A non-trainable tensor kept by a layer (batch-norm running statistics):
/// values, the format they are exact in, and a data config.
///
/// nics_fix_pt quantizes a module's buffers (`running_mean`,
/// `running_var`) by their own `nf_fix_params` entries; a `Buffer` does the
/// same with [`Buffer::quantize`]. Buffers receive no gradient: the grad
/// config in `quant` is unused.
pub struct Buffer<S: Shape> {
    /// Values, row-major. Exact multiples of the format's step when `fmt` is `Some`.
    pub v: S::Buf<f32>,
    /// The format the values are codes of (`Some` after quantizing by a
    /// non-`None` config); `None` for full precision.
    pub fmt: Option<Format>,
    /// Data config, tensor id (keys stochastic rounding) and counters.
    pub quant: Quantized,
}

impl<S: Shape> Clone for Buffer<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: Shape> Copy for Buffer<S> {}

impl<S: Shape> Buffer<S> {
    /// Every value `v`, full precision, all configs `None`, tensor id `id`.
    pub fn filled(id: u32, v: f32) -> Self {
        Buffer {
            v: S::filled(v),
            fmt: None,
            quant: Quantized::none(id),
        }
    }

    /// The values as a flat slice.
    pub fn flat(&self) -> &[f32] {
        S::flat(&self.v)
    }

    /// The values as a flat mutable slice. Writing values that are not
    /// exact codes of `fmt` breaks the representation: call
    /// [`Buffer::quantize`] afterwards (or set `fmt` to `None`).
    pub fn flat_mut(&mut self) -> &mut [f32] {
        S::flat_mut(&mut self.v)
    }

    /// Quantize the values in place by the data config, exactly as
    /// [`Quantized::quantize_data`] does (Auto chooses and stores the scale
    /// in training mode and acts as Fixed in eval mode; the config's
    /// rounding, stream `id` at `ctx.step`; saturations are counted in
    /// `quant.stats`). With `Method::None` the values are left as they are
    /// and `fmt` becomes `None`. Quantizing values that are already exact
    /// in the format leaves them unchanged, whatever the rounding.
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_data`]; nothing changes on error.
    pub fn quantize(&mut self, ctx: &Ctx) -> Result<()> {
        let v = S::flat_mut(&mut self.v);
        let (fmt, n) = quantize_in_place(&mut self.quant.cfg, ctx, self.quant.id, v, None)?;
        if fmt.is_some() {
            self.quant.stats.data += n;
            self.quant.stats.data_total += S::LEN as u64;
        }
        self.fmt = fmt;
        Ok(())
    }
}

impl<S: Shape> Buffer<S> {
    /// This buffer as a named tensor of a layer of type `layer_type`.
    pub fn tensor_mut(&mut self, layer_type: &'static str, name: &'static str) -> TensorMut<'_> {
        TensorMut {
            layer_type,
            name,
            kind: Kind::Buffer,
            quant: &mut self.quant,
            values: S::flat_mut(&mut self.v),
            fmt: &mut self.fmt,
            param: None,
        }
    }
}

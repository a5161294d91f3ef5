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
use crate::quant::group::{self, GroupLayout, Grouping, GroupsMut};
use crate::quant::{self, Format, Group, QuantConfig, Rounder, Stream};

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

    /// Length of the first dimension: batch items of an activation, output
    /// channels of a weight (`[OUT][IN]`, OIHW), elements of a vector.
    const DIM0: usize;
    /// Length of the second dimension: channels of an activation
    /// (`[B][F]`, NCHW); `0` for a one-dimensional shape.
    const DIM1: usize;
    /// One `T` per index of the first dimension (per-group scales).
    type Dim0<T: Copy>: Copy;
    /// One `T` per index of the second dimension.
    type Dim1<T: Copy>: Copy;
    /// A [`Shape::Dim0`] buffer with every element `v`.
    fn dim0_filled<T: Copy>(v: T) -> Self::Dim0<T>;
    /// A [`Shape::Dim1`] buffer with every element `v`.
    fn dim1_filled<T: Copy>(v: T) -> Self::Dim1<T>;
    /// The [`Shape::Dim0`] buffer as a slice.
    fn dim0_mut<T: Copy>(b: &mut Self::Dim0<T>) -> &mut [T];
    /// The [`Shape::Dim1`] buffer as a slice.
    fn dim1_mut<T: Copy>(b: &mut Self::Dim1<T>) -> &mut [T];
}

/// The per-dimension buffers of a shape whose dimensions are `$d0`, `$d1`.
macro_rules! dims {
    ($d0:ident, $d1:expr) => {
        const DIM0: usize = $d0;
        const DIM1: usize = $d1;
        type Dim0<T: Copy> = [T; $d0];
        type Dim1<T: Copy> = [T; $d1];
        fn dim0_filled<T: Copy>(v: T) -> [T; $d0] {
            [v; $d0]
        }
        fn dim1_filled<T: Copy>(v: T) -> [T; $d1] {
            [v; $d1]
        }
        fn dim0_mut<T: Copy>(b: &mut [T; $d0]) -> &mut [T] {
            b
        }
        fn dim1_mut<T: Copy>(b: &mut [T; $d1]) -> &mut [T] {
            b
        }
    };
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
    dims!(N, 0);
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
    dims!(A, B);
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
    dims!(A, B);
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
    dims!(A, B);
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
///
/// On x86-64 a tensor starts at a 64-byte boundary, so that the desktop
/// kernels' 64-byte vectors of its values do not span two cache lines
/// (the Cortex-M targets keep the natural alignment: no padding).
#[derive(Clone, Copy)]
#[cfg_attr(target_arch = "x86_64", repr(align(64)))]
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

/// The stored per-group scales of one config along one dimension of a
/// shape (`I` = one `i8` per index, `U` = one `u32` per index); see
/// [`quant::group`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupScales<I: Copy, U: Copy> {
    /// Scale of each group.
    pub scale: I,
    /// Multiplier of each group (real-valued scales), else 0.
    pub multiplier: U,
    /// Whether the scales were stored (by Auto or loaded); until then
    /// every group uses its config's scale.
    pub set: bool,
}

/// Group scales along the first dimension of `S`, with multipliers
/// (parameters: real-valued groups allowed).
pub type Dim0Scales<S> = GroupScales<<S as Shape>::Dim0<i8>, <S as Shape>::Dim0<u32>>;
/// Group scales along the first dimension of `S`, power of two only
/// (activations: one byte per group).
pub type Dim0Exps<S> = GroupScales<<S as Shape>::Dim0<i8>, [u32; 0]>;
/// Group scales along the second dimension of `S`, power of two only.
pub type Dim1Exps<S> = GroupScales<<S as Shape>::Dim1<i8>, [u32; 0]>;

fn dim0_scales<S: Shape>() -> Dim0Scales<S> {
    GroupScales {
        scale: S::dim0_filled(0),
        multiplier: S::dim0_filled(0),
        set: false,
    }
}

fn dim0_exps<S: Shape>() -> Dim0Exps<S> {
    GroupScales {
        scale: S::dim0_filled(0),
        multiplier: [],
        set: false,
    }
}

fn dim1_exps<S: Shape>() -> Dim1Exps<S> {
    GroupScales {
        scale: S::dim1_filled(0),
        multiplier: [],
        set: false,
    }
}

fn dim0_view<S: Shape>(b: &mut Dim0Scales<S>) -> GroupsMut<'_> {
    GroupsMut {
        scale: S::dim0_mut(&mut b.scale),
        multiplier: S::dim0_mut(&mut b.multiplier),
        set: &mut b.set,
    }
}

fn dim0_exps_view<S: Shape>(b: &mut Dim0Exps<S>) -> GroupsMut<'_> {
    GroupsMut {
        scale: S::dim0_mut(&mut b.scale),
        multiplier: &mut b.multiplier,
        set: &mut b.set,
    }
}

fn dim1_exps_view<S: Shape>(b: &mut Dim1Exps<S>) -> GroupsMut<'_> {
    GroupsMut {
        scale: S::dim1_mut(&mut b.scale),
        multiplier: &mut b.multiplier,
        set: &mut b.set,
    }
}

/// Where a tensor keeps the per-group scales of its grouped configs
/// ([`Group::Channel`], [`Group::Batch`]).
pub trait GroupStore {
    /// The layout and stored scales for config `which` (`0` data, `1`
    /// gradient) grouped by `group`; `Ok(None)` for [`Group::Tensor`].
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] naming `group` for a grouping this tensor
    /// does not have (see [`Group`]).
    fn grouping(&mut self, which: usize, group: Group) -> Result<Option<Grouping<'_>>>;

    /// Whether this tensor can hold the group scales of `cfg` as config
    /// `which`: its grouping exists, and a real-valued grouped config has
    /// room for one multiplier per group.
    ///
    /// # Errors
    ///
    /// As [`GroupStore::grouping`]; [`Error::Unsupported`] naming
    /// `multiplier` for a real-valued grouped config of a tensor that keeps
    /// power-of-two group scales only (an activation).
    fn check(&mut self, which: usize, cfg: &QuantConfig) -> Result<()> {
        if let Some(g) = self.grouping(which, cfg.group)? {
            group::check_capacity(cfg, &g)?;
        }
        Ok(())
    }

    /// Forget the stored scales of config `which` (each group then uses
    /// the config's scale until Auto stores new ones): called when that
    /// config is replaced by a different one.
    fn reset(&mut self, which: usize);
}

/// The group scales of a parameter: per output channel (the first
/// dimension), for its data (`[0]`) and gradient (`[1]`) configs.
pub struct ParamGroups<S: Shape>(pub [Dim0Scales<S>; 2]);

impl<S: Shape> Clone for ParamGroups<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: Shape> Copy for ParamGroups<S> {}

impl<S: Shape> ParamGroups<S> {
    /// Nothing stored.
    pub fn new() -> Self {
        ParamGroups([dim0_scales::<S>(); 2])
    }
}

impl<S: Shape> Default for ParamGroups<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Shape> GroupStore for ParamGroups<S> {
    fn grouping(&mut self, which: usize, group: Group) -> Result<Option<Grouping<'_>>> {
        match (group, self.0.get_mut(which)) {
            (Group::Tensor, _) => Ok(None),
            (Group::Channel, Some(b)) => Ok(Some(Grouping {
                layout: GroupLayout::new(S::LEN, 1, S::DIM0)?,
                store: dim0_view::<S>(b),
            })),
            _ => Err(Error::Unsupported { field: "group" }),
        }
    }

    fn reset(&mut self, which: usize) {
        if let Some(b) = self.0.get_mut(which) {
            b.set = false;
        }
    }
}

/// The group scales of an activation: per batch item (first dimension)
/// and per channel (second dimension), for its data (`[0]`) and gradient
/// (`[1]`) configs. Power-of-two scales only, one byte per group (a
/// real-valued grouped config is a parameter's: weights per output
/// channel, as TFLite does), so that the storage costs a 16 KB device
/// `2 * (batch + channels)` bytes per activation.
pub struct ActGroups<S: Shape> {
    /// Per batch item.
    pub batch: [Dim0Exps<S>; 2],
    /// Per channel.
    pub channel: [Dim1Exps<S>; 2],
}

impl<S: Shape> Clone for ActGroups<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: Shape> Copy for ActGroups<S> {}

impl<S: Shape> ActGroups<S> {
    /// Nothing stored.
    pub fn new() -> Self {
        ActGroups {
            batch: [dim0_exps::<S>(); 2],
            channel: [dim1_exps::<S>(); 2],
        }
    }
}

impl<S: Shape> Default for ActGroups<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Shape> GroupStore for ActGroups<S> {
    fn grouping(&mut self, which: usize, group: Group) -> Result<Option<Grouping<'_>>> {
        match group {
            Group::Tensor => Ok(None),
            Group::Batch => {
                let layout = GroupLayout::new(S::LEN, 1, S::DIM0)?;
                match self.batch.get_mut(which) {
                    Some(b) => Ok(Some(Grouping {
                        layout,
                        store: dim0_exps_view::<S>(b),
                    })),
                    None => Err(Error::Unsupported { field: "group" }),
                }
            }
            Group::Channel => {
                let layout = GroupLayout::new(S::LEN, S::DIM0, S::DIM1)?;
                match self.channel.get_mut(which) {
                    Some(b) => Ok(Some(Grouping {
                        layout,
                        store: dim1_exps_view::<S>(b),
                    })),
                    None => Err(Error::Unsupported { field: "group" }),
                }
            }
        }
    }

    fn reset(&mut self, which: usize) {
        if let Some(b) = self.batch.get_mut(which) {
            b.set = false;
        }
        if let Some(b) = self.channel.get_mut(which) {
            b.set = false;
        }
    }
}

/// Where a pass finds the group scales of its config: the tensor's
/// [`GroupStore`] and which config it quantizes (`0` data, `1` gradient).
type Store<'a> = Option<(&'a mut dyn GroupStore, usize)>;

/// The grouping of `store` for `cfg`.
fn grouping_of<'a>(cfg: &QuantConfig, store: Store<'a>) -> Result<Grouping<'a>> {
    match store {
        Some((s, which)) => match s.grouping(which, cfg.group)? {
            Some(g) => Ok(g),
            None => Err(Error::Unsupported { field: "group" }),
        },
        None => Err(Error::Unsupported { field: "group" }),
    }
}

/// A grouped pass (see [`group`]): `run` quantizes with the pass's
/// config (Auto acting as Fixed in eval mode), the tensor's grouping and
/// rounder; the chosen scales are stored. Not inlined: its frame is on the
/// stack only when a config is grouped (a 16 KB device counts it).
#[inline(never)]
fn grouped(
    cfg: &mut QuantConfig,
    ctx: &Ctx,
    id: u32,
    store: Store<'_>,
    run: impl FnOnce(&mut QuantConfig, &mut Grouping<'_>, &Rounder) -> Result<(Option<Format>, u64)>,
) -> Result<(Option<Format>, u64)> {
    let mut g = grouping_of(cfg, store)?;
    let mut next = pass_config(cfg, ctx);
    let out = run(&mut next, &mut g, &ctx.rounder(id, cfg.rounding))?;
    (cfg.scale, cfg.multiplier) = (next.scale, next.multiplier);
    Ok(out)
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
    /// full precision, or quantized with a real-valued scale).
    ///
    /// # Errors
    ///
    /// Config and data errors of [`quant::quantize_f32`],
    /// [`Error::LengthMismatch`]; [`Error::Unsupported`] naming `group` for
    /// a grouped config (it needs the tensor's [`GroupStore`]: [`Act`] and
    /// [`Param`] pass theirs). The config is unchanged on error.
    pub fn quantize_data(
        &mut self,
        ctx: &Ctx,
        v: &mut [f32],
        sat: &mut [bool],
    ) -> Result<Option<Format>> {
        self.data_in_place(ctx, v, sat, None)
    }

    pub(crate) fn data_in_place(
        &mut self,
        ctx: &Ctx,
        v: &mut [f32],
        sat: &mut [bool],
        store: Option<&mut dyn GroupStore>,
    ) -> Result<Option<Format>> {
        let store = store.map(|s| (s, 0));
        let (fmt, n) = quantize_in_place(&mut self.cfg, ctx, self.id, v, Some(sat), store)?;
        self.count(false, n, v.len());
        Ok(fmt)
    }

    /// [`Quantized::data_in_place`] reading `src` and writing the
    /// quantized values to `dst`; `dst` is unspecified on error.
    pub(crate) fn data_into(
        &mut self,
        ctx: &Ctx,
        src: &[f32],
        dst: &mut [f32],
        sat: &mut [bool],
        store: Option<&mut dyn GroupStore>,
    ) -> Result<Option<Format>> {
        let store = store.map(|s| (s, 0));
        let (fmt, n) = quantize_into(&mut self.cfg, ctx, self.id, src, dst, sat, store)?;
        self.count(false, n, dst.len());
        Ok(fmt)
    }

    /// Count `n` clamps of `len` quantized elements (when the config quantizes).
    fn count(&mut self, grad: bool, n: u64, len: usize) {
        let (cfg, clamped, total) = if grad {
            (
                &self.grad_cfg,
                &mut self.stats.grad,
                &mut self.stats.grad_total,
            )
        } else {
            (&self.cfg, &mut self.stats.data, &mut self.stats.data_total)
        };
        if cfg.method != quant::Method::None {
            *clamped += n;
            *total += len as u64;
        }
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
        self.data_acc(ctx, acc, exp, dst, sat, None)
    }

    fn data_acc(
        &mut self,
        ctx: &Ctx,
        acc: &[i64],
        exp: i32,
        dst: &mut [f32],
        sat: &mut [bool],
        store: Option<&mut dyn GroupStore>,
    ) -> Result<Option<Format>> {
        let store = store.map(|s| (s, 0));
        let src = (acc, exp);
        let (fmt, n) = requantize_into(&mut self.cfg, ctx, self.id, src, dst, Some(sat), store)?;
        self.count(false, n, acc.len());
        Ok(fmt)
    }

    /// Quantize a gradient in place by the grad config (stochastic stream:
    /// the tensor id with [`GRAD_ID`] set). Returns its format.
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_data`].
    pub fn quantize_grad(&mut self, ctx: &Ctx, g: &mut [f32]) -> Result<Option<Format>> {
        self.grad_in_place(ctx, g, None)
    }

    pub(crate) fn grad_in_place(
        &mut self,
        ctx: &Ctx,
        g: &mut [f32],
        store: Option<&mut dyn GroupStore>,
    ) -> Result<Option<Format>> {
        let store = store.map(|s| (s, 1));
        let id = self.id | GRAD_ID;
        let (fmt, n) = quantize_in_place(&mut self.grad_cfg, ctx, id, g, None, store)?;
        self.count(true, n, g.len());
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
        self.grad_acc(ctx, acc, exp, dst, None)
    }

    fn grad_acc(
        &mut self,
        ctx: &Ctx,
        acc: &[i64],
        exp: i32,
        dst: &mut [f32],
        store: Option<&mut dyn GroupStore>,
    ) -> Result<Option<Format>> {
        let store = store.map(|s| (s, 1));
        let id = self.id | GRAD_ID;
        let (fmt, n) = requantize_into(&mut self.grad_cfg, ctx, id, (acc, exp), dst, None, store)?;
        self.count(true, n, acc.len());
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
    store: Store<'_>,
) -> Result<(Option<Format>, u64)> {
    if let Some(s) = sat.as_deref() {
        check_len(v.len(), s.len())?;
    }
    if cfg.is_grouped() {
        return grouped(cfg, ctx, id, store, |c, g, r| {
            group::quantize_f32_grouped(c, g, r, None, v, sat)
        });
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
    sat: Option<&mut [bool]>,
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
    cfg.ema = next.ema;
    let r = ctx.rounder(id, cfg.rounding);
    let n = quant::slice::quantize_real_values(None, v, rf, &r, sat);
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
    store: Store<'_>,
) -> Result<(Option<Format>, u64)> {
    check_len(src.len(), dst.len())?;
    check_len(src.len(), sat.len())?;
    if cfg.is_grouped() {
        return grouped(cfg, ctx, id, store, |c, g, r| {
            group::quantize_f32_grouped(c, g, r, Some(src), dst, Some(sat))
        });
    }
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

/// Requantize `acc * 2^exp` (`src = (acc, exp)`) into `dst` by `cfg`
/// (stream `id`); `Method::None` converts to f32 with [`quant::acc_to_f32`].
/// Returns the format and the number of clamped elements.
fn requantize_into(
    cfg: &mut QuantConfig,
    ctx: &Ctx,
    id: u32,
    (acc, exp): (&[i64], i32),
    dst: &mut [f32],
    mut sat: Option<&mut [bool]>,
    store: Store<'_>,
) -> Result<(Option<Format>, u64)> {
    check_len(acc.len(), dst.len())?;
    if let Some(s) = sat.as_deref() {
        check_len(acc.len(), s.len())?;
    }
    if cfg.is_grouped() {
        return grouped(cfg, ctx, id, store, |c, g, r| {
            group::requantize_grouped(c, g, r, acc, exp, dst, sat)
        });
    }
    let mut next = pass_config(cfg, ctx);
    if next.is_real() {
        let Some(rf) = next.update_real_codes(exp, acc)? else {
            return Ok((None, 0));
        };
        cfg.scale = next.scale;
        cfg.multiplier = next.multiplier;
        cfg.ema = next.ema;
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
        crate::accel::accs_to_f32(dst, acc, exp);
        if let Some(s) = sat {
            s.fill(false);
        }
        return Ok((None, 0));
    };
    cfg.scale = next.scale;
    cfg.zero_point = next.zero_point;
    cfg.ema = next.ema;
    let r = ctx.rounder(id, cfg.rounding);
    let n = quant::requant::requantize_values_into(acc, exp, f, &r, dst, sat);
    Ok((Some(f), n))
}

/// Set `g[i]` to 0 where `sat[i]` (the straight-through mask), split
/// across threads when large (see [`crate::accel`]).
fn zero_clamped_pass(g: &mut [f32], sat: &[bool]) {
    crate::accel::split_pass(
        g.len(),
        (g, sat),
        |(g, sat), _| crate::accel::zero_clamped(g, sat),
        |(), ()| (),
    );
}

/// The body of [`zero_clamped_pass`] on one part (compiled once per
/// instruction set, see [`crate::accel`]).
#[inline(always)]
pub(crate) fn zero_clamped(g: &mut [f32], sat: &[bool]) {
    // Usually nothing was clamped: then reading the flags (a quarter of
    // the bytes) is all it takes, since the select leaves `g` unchanged.
    if !sat.iter().fold(false, |a, &s| a | s) {
        return;
    }
    // A select, not a conditional store: vectorises.
    for (g, &s) in g.iter_mut().zip(sat) {
        *g = if s { 0.0 } else { *g };
    }
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
    /// Per-group scales of grouped configs ([`Group::Batch`], [`Group::Channel`]).
    pub groups: ActGroups<S>,
}

impl<S: Shape> Act<S> {
    /// Zeros at full precision with tensor id `id`.
    pub fn new(id: u32) -> Self {
        Act {
            t: Tensor::zeros(),
            quant: Quantized::none(id),
            sat: S::filled(false),
            groups: ActGroups::new(),
        }
    }

    /// Quantize the values already written into `self.t.v` by the data
    /// config (their current `fmt` is ignored).
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_data`].
    pub fn quantize(&mut self, ctx: &Ctx) -> Result<()> {
        let fmt = self.quant.data_in_place(
            ctx,
            S::flat_mut(&mut self.t.v),
            S::flat_mut(&mut self.sat),
            Some(&mut self.groups),
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
        let fmt = self.quant.data_acc(
            ctx,
            acc,
            exp,
            S::flat_mut(&mut self.t.v),
            S::flat_mut(&mut self.sat),
            Some(&mut self.groups),
        )?;
        self.t.fmt = fmt;
        Ok(())
    }

    /// `self.t = x` followed by [`Act::finish_exact`] with `x`'s format, in
    /// one pass when the data config quantizes (read `x`, write the
    /// quantized values) instead of a copy and a pass over the copy: the
    /// same values, clamps, counts and config updates. On error the values
    /// are `x`'s, as after the copy.
    ///
    /// # Errors
    ///
    /// As [`Act::finish_exact`].
    pub(crate) fn set_exact(&mut self, ctx: &Ctx, x: &Tensor<S>) -> Result<()> {
        if self.quant.cfg.method == quant::Method::None {
            self.t.v = x.v;
            return self.finish_exact(ctx, x.fmt);
        }
        let res = self.quant.data_into(
            ctx,
            S::flat(&x.v),
            S::flat_mut(&mut self.t.v),
            S::flat_mut(&mut self.sat),
            Some(&mut self.groups),
        );
        match res {
            Ok(fmt) => {
                self.t.fmt = fmt;
                Ok(())
            }
            Err(e) => {
                // As the copy followed by a failed in-place quantization.
                self.t.v = x.v;
                Err(e)
            }
        }
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
            groups: Some(&mut self.groups),
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
        zero_clamped_pass(dy.flat_mut(), S::flat(&self.sat));
        if self.quant.grad_cfg.method == quant::Method::None {
            return Ok(());
        }
        dy.fmt = self
            .quant
            .grad_in_place(ctx, dy.flat_mut(), Some(&mut self.groups))?;
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
    /// Per-output-channel scales of grouped configs ([`Group::Channel`]).
    pub groups: ParamGroups<S>,
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
            groups: ParamGroups::new(),
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
        let res = self.quant.data_into(
            ctx,
            S::flat(&self.master),
            S::flat_mut(&mut self.q.v),
            S::flat_mut(&mut self.sat),
            Some(&mut self.groups),
        );
        match res {
            Ok(fmt) => {
                self.q.fmt = fmt;
                Ok(())
            }
            Err(e) => {
                // As a copy followed by a failed in-place quantization.
                self.q.v = self.master;
                Err(e)
            }
        }
    }

    /// Store the gradient from accumulators `acc * 2^exp`: quantized by the
    /// grad config, then zeroed where the master value saturated.
    ///
    /// # Errors
    ///
    /// As [`Quantized::quantize_grad_acc`].
    pub fn set_grad_acc(&mut self, ctx: &Ctx, acc: &[i64], exp: i32) -> Result<()> {
        let fmt = self.quant.grad_acc(
            ctx,
            acc,
            exp,
            S::flat_mut(&mut self.grad.v),
            Some(&mut self.groups),
        )?;
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
        self.grad.fmt =
            self.quant
                .grad_in_place(ctx, S::flat_mut(&mut self.grad.v), Some(&mut self.groups))?;
        self.mask_grad();
        Ok(())
    }

    fn mask_grad(&mut self) {
        zero_clamped_pass(S::flat_mut(&mut self.grad.v), S::flat(&self.sat));
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
            groups: Some(&mut self.groups),
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
        let (fmt, n) = quantize_in_place(&mut self.quant.cfg, ctx, self.quant.id, v, None, None)?;
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
            groups: None,
        }
    }
}

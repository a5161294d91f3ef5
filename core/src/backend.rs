//! The compute backend: one method per operation and per gradient, outputs
//! written into caller-provided buffers.
//!
//! [`RefBackend`] is the sequential reference: its loops *are* the
//! specification. Other backends (the rayon backend in `fixnn-std`, SIMD and
//! Cortex-M DSP kernels) must return the same bits; they may split work
//! across independent outputs but never reorder one reduction.
//!
//! # Arithmetic
//!
//! Each operation multiplies two [`Operand`]s and sums the products:
//!
//! * both operands quantized (`fmt` is `Some`): codes are multiplied as
//!   integers and summed in an `i64` accumulator ([`AccOut::Int`]); the
//!   result is exact, at exponent `step_exp(a) + step_exp(b)`
//!   ([`product_exp`]). Codes have at most 16 bits, so a product has at most
//!   31 bits and a sum of up to `2^32` products cannot overflow
//!   ([`MAX_REDUCTION`]: every geometry check refuses a longer sum, so no
//!   layer shape and no bit width can overflow an accumulator);
//! * otherwise (a full-precision operand) products and sums are f32
//!   ([`AccOut::Float`]), summed in the documented order of each method, so
//!   the result is the same on every target. Finite f32 operands can
//!   overflow such a sum to an infinity (and `inf - inf` then to NaN): the
//!   backend does not check, but every quantizing config refuses the value
//!   ([`Error::NonFinite`]) and so does the loss
//!   ([`softmax_cross_entropy`](crate::layers::softmax_cross_entropy)), so
//!   an overflow ends training with an error, never silently. The integer
//!   path cannot overflow ([`MAX_REDUCTION`]).

use crate::error::{Error, Result};
use crate::quant::{pow2_f32, Format};

/// The most products one `i64` accumulator sums. Codes have at most 16
/// bits, so a product of two codes is at most `2^30` in magnitude
/// (`(-2^15)^2`) and `2^32` of them sum to at most `2^62`: below `2^63`
/// with one bit to spare for the bias a layer adds to the sum. This holds
/// for every bit width (2 to 16), so it is a property of the shape alone:
/// [`LinearGeom::check`] and [`ConvGeom::check`] refuse a longer reduction
/// (each layer's forward, input-gradient and weight-gradient sums), and a
/// sum of `n <= 2^32` codes (a bias gradient, a pooling window) is at most
/// `2^47`.
pub const MAX_REDUCTION: u64 = 1 << 32;

/// Whether every length in `n` is at most [`MAX_REDUCTION`].
const fn reductions_fit(n: [u64; 3]) -> bool {
    n[0] <= MAX_REDUCTION && n[1] <= MAX_REDUCTION && n[2] <= MAX_REDUCTION
}

/// `a * b * c` in `u64`, saturating.
const fn mul3(a: usize, b: usize, c: usize) -> u64 {
    (a as u64).saturating_mul(b as u64).saturating_mul(c as u64)
}

/// A read-only operand: values, and the format they are exact codes of.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    /// Values, row-major.
    pub v: &'a [f32],
    /// `Some`: every value is an exact code of this format.
    pub fmt: Option<Format>,
}

/// Where an operation writes its sums.
#[derive(Debug)]
pub enum AccOut<'a> {
    /// Exact integer sums of code products (both operands quantized).
    Int(&'a mut [i64]),
    /// f32 sums (an operand at full precision).
    Float(&'a mut [f32]),
}

/// The exponent of integer products of `a` and `b`, or `None` if either is
/// at full precision (the operation then computes in f32).
pub fn product_exp(a: Operand<'_>, b: Operand<'_>) -> Option<i32> {
    match (a.fmt, b.fmt) {
        (Some(fa), Some(fb)) => Some(fa.step_exp() + fb.step_exp()),
        _ => None,
    }
}

/// Shape of a fully connected operation: `x[batch][inp]`, `w[out][inp]`,
/// `y[batch][out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinearGeom {
    /// Batch size.
    pub batch: usize,
    /// Input features.
    pub inp: usize,
    /// Output features.
    pub out: usize,
}

/// Shape of a 2-D convolution: `x[batch][cin][h][w]`,
/// `weight[cout][cin / groups][kh][kw]`, `y[batch][cout][oh][ow]`, with
/// `oh = (h + 2 pad_h - dil_h (kh - 1) - 1) / stride_h + 1` (likewise `ow`).
/// Output channel `co` reads input channels of group `co / (cout / groups)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConvGeom {
    /// Batch size.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Stride (rows, columns).
    pub stride: (usize, usize),
    /// Zero padding (rows, columns).
    pub pad: (usize, usize),
    /// Dilation (rows, columns).
    pub dil: (usize, usize),
    /// Groups: `cin` and `cout` are multiples of it (`groups == cin` is depthwise).
    pub groups: usize,
}

impl ConvGeom {
    /// Check that the sizes fit together (non-zero sizes, strides and
    /// dilations; channels divisible by groups; `oh`, `ow` as the formula says).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] naming the first rule broken.
    pub const fn check(&self) -> Result<()> {
        if self.batch == 0 || self.cin == 0 || self.cout == 0 || self.kh == 0 || self.kw == 0 {
            return Err(Error::Shape {
                what: "convolution sizes must be non-zero",
            });
        }
        if self.stride.0 == 0 || self.stride.1 == 0 || self.dil.0 == 0 || self.dil.1 == 0 {
            return Err(Error::Shape {
                what: "convolution stride and dilation must be non-zero",
            });
        }
        if self.groups == 0
            || !self.cin.is_multiple_of(self.groups)
            || !self.cout.is_multiple_of(self.groups)
        {
            return Err(Error::Shape {
                what: "convolution channels must be multiples of groups",
            });
        }
        // Checked arithmetic: absurd sizes are an error, never an overflow.
        let too_big = Err(Error::Shape {
            what: "convolution sizes overflow usize",
        });
        let (Some(dh), Some(dw)) = (
            self.dil.0.checked_mul(self.kh - 1),
            self.dil.1.checked_mul(self.kw - 1),
        ) else {
            return too_big;
        };
        let (Some(ph), Some(pw)) = (self.pad.0.checked_mul(2), self.pad.1.checked_mul(2)) else {
            return too_big;
        };
        let (Some(in_h), Some(in_w)) = (self.h.checked_add(ph), self.w.checked_add(pw)) else {
            return too_big;
        };
        let (Some(span_h), Some(span_w)) = (dh.checked_add(1), dw.checked_add(1)) else {
            return too_big;
        };
        if in_h < span_h || in_w < span_w {
            return Err(Error::Shape {
                what: "convolution kernel larger than the padded input",
            });
        }
        let oh = (in_h - span_h) / self.stride.0 + 1;
        let ow = (in_w - span_w) / self.stride.1 + 1;
        if oh != self.oh || ow != self.ow {
            return Err(Error::Shape {
                what: "convolution output size does not match stride, padding and dilation",
            });
        }
        let sums = [
            mul3(self.cpg(), self.kh, self.kw),
            mul3(self.opg(), self.kh, self.kw),
            mul3(self.batch, self.oh, self.ow),
        ];
        if !reductions_fit(sums) {
            return Err(Error::Shape {
                what: "convolution sums more than 2^32 products (cin/groups*kh*kw, cout/groups*kh*kw or batch*oh*ow): the i64 accumulator could overflow",
            });
        }
        Ok(())
    }

    /// Input channels per group (0 if `groups` is 0, a geometry that
    /// [`ConvGeom::check`] refuses).
    pub const fn cpg(&self) -> usize {
        match self.cin.checked_div(self.groups) {
            Some(n) => n,
            None => 0,
        }
    }

    /// Output channels per group (0 if `groups` is 0, a geometry that
    /// [`ConvGeom::check`] refuses).
    pub const fn opg(&self) -> usize {
        match self.cout.checked_div(self.groups) {
            Some(n) => n,
            None => 0,
        }
    }
}

/// Which of a layer's three products an operation computes; it decides
/// which buffer holds which tensor in [`LinearGeom::check_buffers`] and
/// [`ConvGeom::check_buffers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Pass {
    /// Operands `(x, w)`, output `y`.
    Forward,
    /// Operands `(dy, w)`, output `dx`.
    InputGrad,
    /// Operands `(dy, x)`, output `dw`.
    WeightGrad,
}

/// Check operand and output lengths against `[x, w, y]` element counts
/// (`None`: the counts overflow `usize`), naming the first that differs.
fn check_lens(
    lens: Option<[usize; 3]>,
    pass: Pass,
    a: usize,
    b: usize,
    out: usize,
    names: &[&'static str; 7],
) -> Result<()> {
    let Some([x, w, y]) = lens else {
        return Err(shape_err(names[6]));
    };
    // names: input, weight, output, output-gradient, input-gradient, weight-gradient.
    let want = match pass {
        Pass::Forward => [(x, names[0]), (w, names[1]), (y, names[2])],
        Pass::InputGrad => [(y, names[3]), (w, names[1]), (x, names[4])],
        Pass::WeightGrad => [(y, names[3]), (x, names[0]), (w, names[5])],
    };
    for (len, (expected, what)) in [a, b, out].into_iter().zip(want) {
        if len != expected {
            return Err(shape_err(what));
        }
    }
    Ok(())
}

impl LinearGeom {
    /// Check that no sum is longer than [`MAX_REDUCTION`] products: `inp`
    /// (forward), `out` (input gradient), `batch` (weight gradient).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] saying which sizes are too large.
    pub const fn check(&self) -> Result<()> {
        if reductions_fit([self.inp as u64, self.out as u64, self.batch as u64]) {
            Ok(())
        } else {
            Err(Error::Shape {
                what: "linear sums more than 2^32 products (inp, out or batch): the i64 accumulator could overflow",
            })
        }
    }

    /// Element counts of `[x, w, y]`, `None` if they overflow `usize`.
    pub const fn lens(&self) -> Option<[usize; 3]> {
        match (
            self.batch.checked_mul(self.inp),
            self.out.checked_mul(self.inp),
            self.batch.checked_mul(self.out),
        ) {
            (Some(x), Some(w), Some(y)) => Some([x, w, y]),
            _ => None,
        }
    }

    /// Check the sizes ([`LinearGeom::check`]) and the lengths of the
    /// operands `a`, `b` and the output of `pass`.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] naming the first rule broken or buffer that differs.
    pub fn check_buffers(&self, pass: Pass, a: usize, b: usize, out: usize) -> Result<()> {
        const NAMES: [&str; 7] = [
            "linear input length",
            "linear weight length",
            "linear output length",
            "linear output-gradient length",
            "linear input-gradient length",
            "linear weight-gradient length",
            "linear sizes overflow usize",
        ];
        self.check()?;
        check_lens(self.lens(), pass, a, b, out, &NAMES)
    }
}

impl ConvGeom {
    /// Element counts of `[x, weight, y]`, `None` if they overflow `usize`.
    pub fn lens(&self) -> Option<[usize; 3]> {
        let mul4 = |a: usize, b: usize, c: usize, d: usize| {
            a.checked_mul(b)?.checked_mul(c)?.checked_mul(d)
        };
        Some([
            mul4(self.batch, self.cin, self.h, self.w)?,
            mul4(self.cout, self.cpg(), self.kh, self.kw)?,
            mul4(self.batch, self.cout, self.oh, self.ow)?,
        ])
    }

    /// Check the geometry ([`ConvGeom::check`]) and the lengths of the
    /// operands `a`, `b` and the output of `pass`.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] naming the first rule broken or buffer that differs.
    pub fn check_buffers(&self, pass: Pass, a: usize, b: usize, out: usize) -> Result<()> {
        const NAMES: [&str; 7] = [
            "convolution input length",
            "convolution weight length",
            "convolution output length",
            "convolution output-gradient length",
            "convolution input-gradient length",
            "convolution weight-gradient length",
            "convolution sizes overflow usize",
        ];
        self.check()?;
        check_lens(self.lens(), pass, a, b, out, &NAMES)
    }
}

impl AccOut<'_> {
    /// Number of output elements.
    pub fn len(&self) -> usize {
        match self {
            AccOut::Int(o) => o.len(),
            AccOut::Float(o) => o.len(),
        }
    }

    /// Whether the output is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The compute operations every backend provides. Each checks buffer
/// lengths against the geometry and writes every output element.
///
/// The output variant must match the operands: [`AccOut::Int`] when both
/// are quantized, [`AccOut::Float`] otherwise ([`product_exp`] tells which).
///
/// # Errors
///
/// [`Error::Shape`] for lengths that do not match the geometry or an output
/// variant that does not match the operands.
pub trait Backend {
    /// `y[b][o] = sum_i x[b][i] * w[o][i]` (f32: `i` ascending).
    fn linear(&self, g: LinearGeom, x: Operand<'_>, w: Operand<'_>, y: AccOut<'_>) -> Result<()>;

    /// [`Backend::linear`] in a training step: the step's backward pass
    /// will call [`Backend::linear_weight_grad`] with this `x`, so a
    /// backend may start work for that gradient now (the desktop backend
    /// derives it from the codes it packs here, on a thread that would
    /// otherwise wait). A hint only: the result is `linear`'s, and a
    /// backend that keeps anything must give the weight gradient's bits
    /// whatever `x` holds by then. The default calls `linear`.
    ///
    /// # Errors
    ///
    /// As [`Backend::linear`].
    fn linear_train(
        &self,
        g: LinearGeom,
        x: Operand<'_>,
        w: Operand<'_>,
        y: AccOut<'_>,
    ) -> Result<()> {
        self.linear(g, x, w, y)
    }

    /// `dx[b][i] = sum_o dy[b][o] * w[o][i]` (f32: `o` ascending).
    fn linear_input_grad(
        &self,
        g: LinearGeom,
        dy: Operand<'_>,
        w: Operand<'_>,
        dx: AccOut<'_>,
    ) -> Result<()>;

    /// `dw[o][i] = sum_b dy[b][o] * x[b][i]` (f32: `b` ascending).
    fn linear_weight_grad(
        &self,
        g: LinearGeom,
        dy: Operand<'_>,
        x: Operand<'_>,
        dw: AccOut<'_>,
    ) -> Result<()>;

    /// `y[b][co][oy][ox] = sum_{ci, ky, kx} x[b][g cpg + ci][oy sh - ph + ky dh][ox sw - pw + kx dw] * w[co][ci][ky][kx]`,
    /// `g = co / opg`, out-of-range input positions read zero (f32: `ci`, `ky`, `kx` ascending).
    fn conv2d(&self, g: ConvGeom, x: Operand<'_>, w: Operand<'_>, y: AccOut<'_>) -> Result<()>;

    /// `dx[b][c][iy][ix]`: the sum of `dy[b][co][oy][ox] * w[co][c - g cpg][ky][kx]`
    /// over every `(co, ky, kx)` of the group of `c` whose output position
    /// `(oy, ox)` reads `(iy, ix)` (f32: `co`, `ky`, `kx` ascending).
    fn conv2d_input_grad(
        &self,
        g: ConvGeom,
        dy: Operand<'_>,
        w: Operand<'_>,
        dx: AccOut<'_>,
    ) -> Result<()>;

    /// `dw[co][ci][ky][kx] = sum_{b, oy, ox} dy[b][co][oy][ox] * x[b][g cpg + ci][..]`
    /// (f32: `b`, `oy`, `ox` ascending).
    fn conv2d_weight_grad(
        &self,
        g: ConvGeom,
        dy: Operand<'_>,
        x: Operand<'_>,
        dw: AccOut<'_>,
    ) -> Result<()>;
}

/// The sequential reference backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefBackend;

/// Reads operand elements as integer codes or as f32 values.
trait Path {
    type Acc: Copy;
    const ZERO: Self::Acc;
    /// `acc + a[i] * b[j]`.
    fn mac(acc: Self::Acc, a: &Reader<'_>, i: usize, b: &Reader<'_>, j: usize) -> Self::Acc;
}

struct IntPath;
struct FloatPath;

/// An operand prepared for reading: the factor `2^-step_exp` that turns a
/// value into its code, when f32 can hold it.
struct Reader<'a> {
    v: &'a [f32],
    fmt: Option<Format>,
    to_code: f32,
}

impl<'a> Reader<'a> {
    fn new(o: Operand<'a>) -> Self {
        let to_code = match o.fmt {
            Some(f) => pow2_f32(-f.step_exp()),
            None => 1.0,
        };
        Reader {
            v: o.v,
            fmt: o.fmt,
            to_code,
        }
    }

    #[inline]
    fn code(&self, i: usize) -> i64 {
        if self.to_code.is_finite() {
            // Exact: the value is code * 2^e and 2^-e is a normal f32.
            (self.at(i) * self.to_code) as i64
        } else {
            match self.fmt {
                Some(f) => f.code_of(self.at(i)) as i64,
                None => 0,
            }
        }
    }

    /// Element `i` (the kernels index only within the lengths the backend
    /// checked; 0 beyond them, so no index can panic).
    #[inline]
    fn at(&self, i: usize) -> f32 {
        self.v.get(i).copied().unwrap_or(0.0)
    }
}

/// Store `acc` at `out[i]` (the kernels write only within the lengths the
/// backend checked; nothing beyond them, so no index can panic).
#[inline]
fn put<T>(out: &mut [T], i: usize, acc: T) {
    if let Some(o) = out.get_mut(i) {
        *o = acc;
    }
}

impl Path for IntPath {
    type Acc = i64;
    const ZERO: i64 = 0;
    #[inline]
    fn mac(acc: i64, a: &Reader<'_>, i: usize, b: &Reader<'_>, j: usize) -> i64 {
        // Wrapping: identical to `+` and `*` for codes of at most 16 bits
        // in sums no longer than MAX_REDUCTION (they cannot overflow);
        // values that are not codes of their format cannot panic.
        acc.wrapping_add(a.code(i).wrapping_mul(b.code(j)))
    }
}

impl Path for FloatPath {
    type Acc = f32;
    const ZERO: f32 = 0.0;
    #[inline]
    fn mac(acc: f32, a: &Reader<'_>, i: usize, b: &Reader<'_>, j: usize) -> f32 {
        acc + a.at(i) * b.at(j)
    }
}

fn shape_err(what: &'static str) -> Error {
    Error::Shape { what }
}

/// Dispatch to the integer or f32 instance of a kernel, checking that the
/// output variant matches the operands.
fn dispatch(
    a: Operand<'_>,
    b: Operand<'_>,
    out: AccOut<'_>,
    int: impl FnOnce(&Reader<'_>, &Reader<'_>, &mut [i64]),
    float: impl FnOnce(&Reader<'_>, &Reader<'_>, &mut [f32]),
) -> Result<()> {
    let (ra, rb) = (Reader::new(a), Reader::new(b));
    match (product_exp(a, b), out) {
        (Some(_), AccOut::Int(o)) => int(&ra, &rb, o),
        (None, AccOut::Float(o)) => float(&ra, &rb, o),
        _ => {
            return Err(shape_err(
                "output variant does not match the operands' formats",
            ))
        }
    }
    Ok(())
}

fn linear_fwd<P: Path>(g: LinearGeom, x: &Reader<'_>, w: &Reader<'_>, y: &mut [P::Acc]) {
    linear_sums(g, P::ZERO, |acc, xi, wi| P::mac(acc, x, xi, w, wi), y);
}

/// The reference order of a fully connected forward product, shared by
/// [`RefBackend`] and the packed layers so that both sum the same terms in
/// the same order: `y[b][o] = mac(..mac(zero, x[b][0], w[o][0]).., x[b][inp-1], w[o][inp-1])`,
/// with `mac(acc, xi, wi)` given the flat indices of `x` and `w`.
/// Writes only within `y`'s length (the caller checked the lengths).
#[inline(always)]
pub(crate) fn linear_sums<A: Copy>(
    g: LinearGeom,
    zero: A,
    mut mac: impl FnMut(A, usize, usize) -> A,
    y: &mut [A],
) {
    for b in 0..g.batch {
        for o in 0..g.out {
            let mut acc = zero;
            for i in 0..g.inp {
                acc = mac(acc, b * g.inp + i, o * g.inp + i);
            }
            put(y, b * g.out + o, acc);
        }
    }
}

fn linear_dx<P: Path>(g: LinearGeom, dy: &Reader<'_>, w: &Reader<'_>, dx: &mut [P::Acc]) {
    for b in 0..g.batch {
        for i in 0..g.inp {
            let mut acc = P::ZERO;
            for o in 0..g.out {
                acc = P::mac(acc, dy, b * g.out + o, w, o * g.inp + i);
            }
            put(dx, b * g.inp + i, acc);
        }
    }
}

fn linear_dw<P: Path>(g: LinearGeom, dy: &Reader<'_>, x: &Reader<'_>, dw: &mut [P::Acc]) {
    for o in 0..g.out {
        for i in 0..g.inp {
            let mut acc = P::ZERO;
            for b in 0..g.batch {
                acc = P::mac(acc, dy, b * g.out + o, x, b * g.inp + i);
            }
            put(dw, o * g.inp + i, acc);
        }
    }
}

/// Input coordinate read by output coordinate `o` at kernel tap `k`, if inside.
#[inline]
fn tap(o: usize, k: usize, stride: usize, pad: usize, dil: usize, size: usize) -> Option<usize> {
    (o * stride + k * dil)
        .checked_sub(pad)
        .filter(|&i| i < size)
}

/// Output coordinate that reads input coordinate `i` at kernel tap `k`, if any.
#[inline]
fn tap_back(
    i: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    osize: usize,
) -> Option<usize> {
    let t = (i + pad).checked_sub(k * dil)?;
    if !t.is_multiple_of(stride) {
        return None;
    }
    t.checked_div(stride).filter(|&o| o < osize)
}

fn conv_fwd<P: Path>(g: ConvGeom, x: &Reader<'_>, w: &Reader<'_>, y: &mut [P::Acc]) {
    conv_sums(g, P::ZERO, |acc, xi, wi| P::mac(acc, x, xi, w, wi), y);
}

/// The reference order of a convolution's forward sums, shared by
/// [`RefBackend`] and the packed layers: for each output element (batch,
/// output channel, row, column) the terms of its group's input channels,
/// kernel rows and kernel columns in that order, taps outside the padded
/// input skipped; `mac(acc, xi, wi)` gets the flat indices of `x`
/// `[B][CIN][H][W]` and `w` `[COUT][CIN/groups][KH][KW]`. Writes only
/// within `y`'s length.
#[inline(always)]
pub(crate) fn conv_sums<A: Copy>(
    g: ConvGeom,
    zero: A,
    mut mac: impl FnMut(A, usize, usize) -> A,
    y: &mut [A],
) {
    let (cpg, opg) = (g.cpg(), g.opg());
    for b in 0..g.batch {
        for co in 0..g.cout {
            let c0 = co.checked_div(opg).unwrap_or(0) * cpg;
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut acc = zero;
                    for ci in 0..cpg {
                        for ky in 0..g.kh {
                            let Some(iy) = tap(oy, ky, g.stride.0, g.pad.0, g.dil.0, g.h) else {
                                continue;
                            };
                            for kx in 0..g.kw {
                                let Some(ix) = tap(ox, kx, g.stride.1, g.pad.1, g.dil.1, g.w)
                                else {
                                    continue;
                                };
                                let xi = ((b * g.cin + c0 + ci) * g.h + iy) * g.w + ix;
                                let wi = ((co * cpg + ci) * g.kh + ky) * g.kw + kx;
                                acc = mac(acc, xi, wi);
                            }
                        }
                    }
                    put(y, ((b * g.cout + co) * g.oh + oy) * g.ow + ox, acc);
                }
            }
        }
    }
}

fn conv_dx<P: Path>(g: ConvGeom, dy: &Reader<'_>, w: &Reader<'_>, dx: &mut [P::Acc]) {
    let (cpg, opg) = (g.cpg(), g.opg());
    for b in 0..g.batch {
        for c in 0..g.cin {
            let grp = c.checked_div(cpg).unwrap_or(0);
            let ci = c - grp * cpg;
            for iy in 0..g.h {
                for ix in 0..g.w {
                    let mut acc = P::ZERO;
                    for co in grp * opg..(grp + 1) * opg {
                        for ky in 0..g.kh {
                            let Some(oy) = tap_back(iy, ky, g.stride.0, g.pad.0, g.dil.0, g.oh)
                            else {
                                continue;
                            };
                            for kx in 0..g.kw {
                                let Some(ox) = tap_back(ix, kx, g.stride.1, g.pad.1, g.dil.1, g.ow)
                                else {
                                    continue;
                                };
                                let yi = ((b * g.cout + co) * g.oh + oy) * g.ow + ox;
                                let wi = ((co * cpg + ci) * g.kh + ky) * g.kw + kx;
                                acc = P::mac(acc, dy, yi, w, wi);
                            }
                        }
                    }
                    put(dx, ((b * g.cin + c) * g.h + iy) * g.w + ix, acc);
                }
            }
        }
    }
}

fn conv_dw<P: Path>(g: ConvGeom, dy: &Reader<'_>, x: &Reader<'_>, dw: &mut [P::Acc]) {
    let (cpg, opg) = (g.cpg(), g.opg());
    for co in 0..g.cout {
        let c0 = co.checked_div(opg).unwrap_or(0) * cpg;
        for ci in 0..cpg {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let mut acc = P::ZERO;
                    for b in 0..g.batch {
                        for oy in 0..g.oh {
                            let Some(iy) = tap(oy, ky, g.stride.0, g.pad.0, g.dil.0, g.h) else {
                                continue;
                            };
                            for ox in 0..g.ow {
                                let Some(ix) = tap(ox, kx, g.stride.1, g.pad.1, g.dil.1, g.w)
                                else {
                                    continue;
                                };
                                let yi = ((b * g.cout + co) * g.oh + oy) * g.ow + ox;
                                let xi = ((b * g.cin + c0 + ci) * g.h + iy) * g.w + ix;
                                acc = P::mac(acc, dy, yi, x, xi);
                            }
                        }
                    }
                    put(dw, ((co * cpg + ci) * g.kh + ky) * g.kw + kx, acc);
                }
            }
        }
    }
}

impl Backend for RefBackend {
    fn linear(&self, g: LinearGeom, x: Operand<'_>, w: Operand<'_>, y: AccOut<'_>) -> Result<()> {
        g.check_buffers(Pass::Forward, x.v.len(), w.v.len(), y.len())?;
        dispatch(
            x,
            w,
            y,
            |a, b, o| linear_fwd::<IntPath>(g, a, b, o),
            |a, b, o| linear_fwd::<FloatPath>(g, a, b, o),
        )
    }

    fn linear_input_grad(
        &self,
        g: LinearGeom,
        dy: Operand<'_>,
        w: Operand<'_>,
        dx: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::InputGrad, dy.v.len(), w.v.len(), dx.len())?;
        dispatch(
            dy,
            w,
            dx,
            |a, b, o| linear_dx::<IntPath>(g, a, b, o),
            |a, b, o| linear_dx::<FloatPath>(g, a, b, o),
        )
    }

    fn linear_weight_grad(
        &self,
        g: LinearGeom,
        dy: Operand<'_>,
        x: Operand<'_>,
        dw: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::WeightGrad, dy.v.len(), x.v.len(), dw.len())?;
        dispatch(
            dy,
            x,
            dw,
            |a, b, o| linear_dw::<IntPath>(g, a, b, o),
            |a, b, o| linear_dw::<FloatPath>(g, a, b, o),
        )
    }

    fn conv2d(&self, g: ConvGeom, x: Operand<'_>, w: Operand<'_>, y: AccOut<'_>) -> Result<()> {
        g.check_buffers(Pass::Forward, x.v.len(), w.v.len(), y.len())?;
        dispatch(
            x,
            w,
            y,
            |a, b, o| conv_fwd::<IntPath>(g, a, b, o),
            |a, b, o| conv_fwd::<FloatPath>(g, a, b, o),
        )
    }

    fn conv2d_input_grad(
        &self,
        g: ConvGeom,
        dy: Operand<'_>,
        w: Operand<'_>,
        dx: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::InputGrad, dy.v.len(), w.v.len(), dx.len())?;
        dispatch(
            dy,
            w,
            dx,
            |a, b, o| conv_dx::<IntPath>(g, a, b, o),
            |a, b, o| conv_dx::<FloatPath>(g, a, b, o),
        )
    }

    fn conv2d_weight_grad(
        &self,
        g: ConvGeom,
        dy: Operand<'_>,
        x: Operand<'_>,
        dw: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::WeightGrad, dy.v.len(), x.v.len(), dw.len())?;
        dispatch(
            dy,
            x,
            dw,
            |a, b, o| conv_dw::<IntPath>(g, a, b, o),
            |a, b, o| conv_dw::<FloatPath>(g, a, b, o),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom() -> ConvGeom {
        ConvGeom {
            batch: 1,
            cin: 2,
            h: 5,
            w: 5,
            cout: 2,
            kh: 3,
            kw: 3,
            oh: 3,
            ow: 3,
            stride: (1, 1),
            pad: (0, 0),
            dil: (1, 1),
            groups: 1,
        }
    }

    #[test]
    fn absurd_geometry_is_an_error_not_an_overflow() {
        assert!(geom().check().is_ok());
        for g in [
            ConvGeom {
                pad: (usize::MAX, 0),
                ..geom()
            },
            ConvGeom {
                dil: (usize::MAX, 1),
                ..geom()
            },
            ConvGeom {
                h: usize::MAX,
                pad: (1, 0),
                ..geom()
            },
            ConvGeom {
                kh: usize::MAX,
                dil: (usize::MAX, 1),
                ..geom()
            },
            ConvGeom {
                groups: 0,
                ..geom()
            },
            ConvGeom {
                stride: (0, 1),
                ..geom()
            },
            ConvGeom { oh: 4, ..geom() },
        ] {
            assert!(g.check().is_err(), "{g:?}");
        }
    }
}

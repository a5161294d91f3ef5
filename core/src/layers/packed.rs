//! Inference from packed weights: [`PackedLinear`] and [`PackedConv2d`]
//! read 2-, 3- or 4-bit weight codes straight from a packed byte array
//! ([`PackedCodes`], typically a `static` in flash), unpacking each code in
//! the inner loop, and compute the same bits as [`Linear`](super::Linear)
//! and [`Conv2d`](super::Conv2d) whose quantized weights are those codes.
//!
//! Only the forward pass exists (the weights are read-only); the layers
//! hold no master weights, gradients or weight copies, so their RAM is the
//! output, its saturation flags and the accumulators. [`linear_packed`]
//! and [`conv2d_packed`] are the kernels, usable on their own.
//!
//! # Arithmetic
//!
//! Exactly that of the reference backend ([`RefBackend`](crate::backend::RefBackend))
//! with the weight operand's values replaced by the packed codes of its
//! format: with a quantized input, exact `i64` sums of code products; with
//! a full-precision input, f32 sums of `x * code * 2^step_exp(w)` in the
//! same order (`i` ascending; `ci`, `ky`, `kx` ascending), then the bias and
//! the output requantization of [`Linear`](super::Linear).
//!
//! # Examples
//!
//! ```
//! use fixnn::backend::Operand;
//! use fixnn::layers::PackedLinear;
//! use fixnn::quant::packed::{pack, PackedCodes};
//! use fixnn::tensor::Ctx;
//! use fixnn::Format;
//! // 2 outputs, 3 inputs, batch 1; 2-bit weights (step 1/2 at scale 0).
//! let codes: [i8; 6] = [1, -2, 0, -1, 1, 1];
//! let mut bytes = [0u8; 2];
//! pack(&codes, 2, &mut bytes)?;
//! let w = PackedCodes::new(&bytes, Format::new(2, 0)?, 6)?;
//! let mut fc = PackedLinear::<3, 2, 1>::new(0, w)?;
//! fc.use_bias = false;
//! let x = [1.0f32, 0.5, 2.0]; // full precision
//! fc.forward(&Ctx::eval(1), Operand { v: &x, fmt: None })?;
//! assert_eq!(fc.output().flat(), &[0.5 * 1.0 - 1.0 * 0.5, -0.5 * 1.0 + 0.5 * 0.5 + 0.5 * 2.0]);
//! # Ok::<(), fixnn::Error>(())
//! ```

use super::product;
use crate::backend::{
    conv_sums, linear_sums, product_exp, AccOut, ConvGeom, LinearGeom, Operand, Pass,
};
use crate::error::{Error, Result};
use crate::quant::packed::PackedCodes;
use crate::quant::{pow2_f32, Format};
use crate::tensor::{Act, Ctx, Tensor, ID_STRIDE, S1, S2, S4};

/// Reads an operand's elements as codes the way the reference backend
/// does: `value * 2^-step_exp` when that factor is a finite f32, else
/// [`Format::code_of`].
struct XReader<'a> {
    v: &'a [f32],
    fmt: Option<Format>,
    to_code: f32,
}

impl<'a> XReader<'a> {
    fn new(o: Operand<'a>) -> Self {
        let to_code = o.fmt.map_or(1.0, |f| pow2_f32(-f.step_exp()));
        XReader {
            v: o.v,
            fmt: o.fmt,
            to_code,
        }
    }

    #[inline(always)]
    fn at(&self, i: usize) -> f32 {
        self.v.get(i).copied().unwrap_or(0.0)
    }

    #[inline(always)]
    fn code(&self, i: usize) -> i64 {
        if self.to_code.is_finite() {
            (self.at(i) * self.to_code) as i64
        } else {
            self.fmt.map_or(0, |f| f.code_of(self.at(i)) as i64)
        }
    }
}

/// One multiply-accumulate of input element `i` and weight code `j`.
trait Mac {
    type Acc: Copy;
    const ZERO: Self::Acc;
    fn mac(acc: Self::Acc, x: &XReader<'_>, i: usize, w: &PackedCodes<'_>, j: usize) -> Self::Acc;
}

struct IntMac;
/// f32 products: the weight value is `code * 2^step_exp`, exact.
struct FloatMac;

impl Mac for IntMac {
    type Acc = i64;
    const ZERO: i64 = 0;
    #[inline(always)]
    fn mac(acc: i64, x: &XReader<'_>, i: usize, w: &PackedCodes<'_>, j: usize) -> i64 {
        acc.wrapping_add(x.code(i).wrapping_mul(w.code_at(j) as i64))
    }
}

impl Mac for FloatMac {
    type Acc = f32;
    const ZERO: f32 = 0.0;
    #[inline(always)]
    fn mac(acc: f32, x: &XReader<'_>, i: usize, w: &PackedCodes<'_>, j: usize) -> f32 {
        acc + x.at(i) * w.format().to_f32(w.code_at(j))
    }
}

fn linear_loop<M: Mac>(g: LinearGeom, x: &XReader<'_>, w: &PackedCodes<'_>, y: &mut [M::Acc]) {
    linear_sums(g, M::ZERO, |acc, xi, wi| M::mac(acc, x, xi, w, wi), y);
}

fn conv_loop<M: Mac>(g: ConvGeom, x: &XReader<'_>, w: &PackedCodes<'_>, y: &mut [M::Acc]) {
    conv_sums(g, M::ZERO, |acc, xi, wi| M::mac(acc, x, xi, w, wi), y);
}

/// The operand view of packed weights: no values, only the format
/// (what [`product_exp`] and the accumulator bound look at).
fn w_operand(w: &PackedCodes<'_>) -> Operand<'static> {
    Operand {
        v: &[],
        fmt: Some(w.format()),
    }
}

fn dispatch(
    x: Operand<'_>,
    w: &PackedCodes<'_>,
    y: AccOut<'_>,
    int: impl FnOnce(&XReader<'_>, &mut [i64]),
    float: impl FnOnce(&XReader<'_>, &mut [f32]),
) -> Result<()> {
    let r = XReader::new(x);
    match (product_exp(x, w_operand(w)), y) {
        (Some(_), AccOut::Int(o)) => int(&r, o),
        (None, AccOut::Float(o)) => float(&r, o),
        _ => {
            return Err(Error::Shape {
                what: "output variant does not match the operands' formats",
            })
        }
    }
    Ok(())
}

/// [`Backend::linear`](crate::backend::Backend::linear) with packed weights
/// `w[out][inp]`: the same sums as the reference backend.
///
/// # Errors
///
/// [`Error::Shape`] for lengths that do not match `g` or an output variant
/// that does not match the operands (nothing written).
pub fn linear_packed(
    g: LinearGeom,
    x: Operand<'_>,
    w: &PackedCodes<'_>,
    y: AccOut<'_>,
) -> Result<()> {
    g.check_buffers(Pass::Forward, x.v.len(), w.len(), y.len())?;
    dispatch(
        x,
        w,
        y,
        |x, o| linear_loop::<IntMac>(g, x, w, o),
        |x, o| linear_loop::<FloatMac>(g, x, w, o),
    )
}

/// [`Backend::conv2d`](crate::backend::Backend::conv2d) with packed weights
/// `w[cout][cin / groups][kh][kw]`: the same sums as the reference backend.
///
/// # Errors
///
/// As [`linear_packed`], and a geometry [`ConvGeom::check`] refuses.
pub fn conv2d_packed(
    g: ConvGeom,
    x: Operand<'_>,
    w: &PackedCodes<'_>,
    y: AccOut<'_>,
) -> Result<()> {
    g.check_buffers(Pass::Forward, x.v.len(), w.len(), y.len())?;
    dispatch(
        x,
        w,
        y,
        |x, o| conv_loop::<IntMac>(g, x, w, o),
        |x, o| conv_loop::<FloatMac>(g, x, w, o),
    )
}

/// A fully connected layer for inference whose weights `[OUT][IN]` are
/// packed codes (2 to 4 bits), batch `B`: `y = x w^T + bias`, bit for bit
/// what [`Linear`](super::Linear) computes with the same weight codes,
/// bias and output config.
///
/// Tensor ids as [`Linear`](super::Linear): bias `id * 16 + 1`, output
/// `id * 16 + 2` (stochastic rounding of the output draws the same
/// numbers). RAM: the output (`5 B * OUT` bytes per item), the bias and
/// `8 B * OUT` bytes of accumulators; the weights stay where they are.
pub struct PackedLinear<'w, const IN: usize, const OUT: usize, const B: usize> {
    /// Weight codes `[OUT][IN]`.
    pub weight: PackedCodes<'w>,
    /// Bias `[OUT]`: values exact in `bias.fmt` (or full precision).
    pub bias: Tensor<S1<OUT>>,
    /// Whether the bias is added.
    pub use_bias: bool,
    /// Output `[B][OUT]` and its configs.
    pub out: Act<S2<B, OUT>>,
    acc: [[i64; OUT]; B],
}

impl<'w, const IN: usize, const OUT: usize, const B: usize> PackedLinear<'w, IN, OUT, B> {
    const GEOM: LinearGeom = LinearGeom {
        batch: B,
        inp: IN,
        out: OUT,
    };

    /// A layer reading `weight`, with a zero full-precision bias and a
    /// `None` output config.
    ///
    /// # Errors
    ///
    /// [`Error::LengthMismatch`] if `weight` does not hold `OUT * IN`
    /// codes; [`Error::Shape`] if a size exceeds
    /// [`MAX_REDUCTION`](crate::backend::MAX_REDUCTION).
    pub fn new(id: u32, weight: PackedCodes<'w>) -> Result<Self> {
        Self::GEOM.check()?;
        if weight.len() != OUT * IN {
            return Err(Error::LengthMismatch {
                expected: OUT * IN,
                found: weight.len(),
            });
        }
        let base = id.wrapping_mul(ID_STRIDE);
        Ok(PackedLinear {
            weight,
            bias: Tensor::zeros(),
            use_bias: true,
            out: Act::new(base + 2),
            acc: [[0; OUT]; B],
        })
    }

    /// Compute the output from `x` (`[B][IN]`, row-major).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `x` does not hold `B * IN` values; the output
    /// config's errors.
    pub fn forward(&mut self, ctx: &Ctx, x: Operand<'_>) -> Result<()> {
        let w = &self.weight;
        let bias = self.use_bias.then_some(&self.bias);
        let p = product::Products {
            x,
            w: w_operand(w),
            k: IN,
            spatial: 1,
        };
        let acc = self.acc.as_flattened_mut();
        product::forward(ctx, &mut self.out, acc, bias, p, |o| {
            linear_packed(Self::GEOM, x, w, o)
        })
    }

    /// The output of the last forward pass.
    pub fn output(&self) -> &Tensor<S2<B, OUT>> {
        &self.out.t
    }
}

/// A 2-D convolution for inference whose weights `[COUT][CIN / groups][KH][KW]`
/// are packed codes (2 to 4 bits): output `[B][COUT][OH][OW]`, bit for bit
/// what [`Conv2d`](super::Conv2d) computes with the same geometry, weight
/// codes, bias and output config. The rest of the geometry (input size,
/// kernel, stride, padding, dilation, groups) is a checked [`ConvGeom`].
///
/// Tensor ids as [`Conv2d`](super::Conv2d): output `id * 16 + 2`.
pub struct PackedConv2d<'w, const COUT: usize, const OH: usize, const OW: usize, const B: usize> {
    /// Weight codes.
    pub weight: PackedCodes<'w>,
    /// Bias `[COUT]`: values exact in `bias.fmt` (or full precision).
    pub bias: Tensor<S1<COUT>>,
    /// Whether the bias is added.
    pub use_bias: bool,
    /// Output `[B][COUT][OH][OW]` and its configs.
    pub out: Act<S4<B, COUT, OH, OW>>,
    geom: ConvGeom,
    acc: [[[[i64; OW]; OH]; COUT]; B],
}

impl<'w, const COUT: usize, const OH: usize, const OW: usize, const B: usize>
    PackedConv2d<'w, COUT, OH, OW, B>
{
    /// A convolution of geometry `geom` reading `weight`, with a zero
    /// full-precision bias and a `None` output config.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `geom` fails [`ConvGeom::check`] or its batch,
    /// output channels or output size are not `B`, `COUT`, `OH`, `OW`;
    /// [`Error::LengthMismatch`] if `weight` does not hold the weight's
    /// element count.
    pub fn new(id: u32, geom: ConvGeom, weight: PackedCodes<'w>) -> Result<Self> {
        geom.check()?;
        if (geom.batch, geom.cout, geom.oh, geom.ow) != (B, COUT, OH, OW) {
            return Err(Error::Shape {
                what:
                    "convolution geometry does not match the layer's batch, channels or output size",
            });
        }
        let need = geom.lens().map_or(usize::MAX, |l| l[1]);
        if weight.len() != need {
            return Err(Error::LengthMismatch {
                expected: need,
                found: weight.len(),
            });
        }
        let base = id.wrapping_mul(ID_STRIDE);
        Ok(PackedConv2d {
            weight,
            bias: Tensor::zeros(),
            use_bias: true,
            out: Act::new(base + 2),
            geom,
            acc: [[[[0; OW]; OH]; COUT]; B],
        })
    }

    /// The geometry.
    pub fn geom(&self) -> ConvGeom {
        self.geom
    }

    /// Compute the output from `x` (`[B][CIN][H][W]`, row-major).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `x` does not hold the input's element count;
    /// the output config's errors.
    pub fn forward(&mut self, ctx: &Ctx, x: Operand<'_>) -> Result<()> {
        let (g, w) = (self.geom, &self.weight);
        let bias = self.use_bias.then_some(&self.bias);
        let p = product::Products {
            x,
            w: w_operand(w),
            k: g.cpg() * g.kh * g.kw,
            spatial: OH * OW,
        };
        let acc = self.acc.as_flattened_mut().as_flattened_mut();
        let acc = acc.as_flattened_mut();
        product::forward(ctx, &mut self.out, acc, bias, p, |o| {
            conv2d_packed(g, x, w, o)
        })
    }

    /// The output of the last forward pass.
    pub fn output(&self) -> &Tensor<S4<B, COUT, OH, OW>> {
        &self.out.t
    }
}

//! [`Conv2d`]: a 2-D convolution with stride, padding, dilation and groups
//! (nics_fix_pt's `Conv2d_fix`).

use super::product;
use super::Layer;
use crate::backend::{Backend, ConvGeom};
use crate::error::{Error, Result};
use crate::model::Visitor;
use crate::tensor::{Act, Ctx, Param, Tensor, ID_STRIDE, S1, S4};

/// A 2-D convolution, batch `B`:
/// `y[b][co][oy][ox] = bias[co] + sum_{ci, ky, kx} w[co][ci][ky][kx] *
/// x[b][g CPG + ci][oy sh - ph + ky dh][ox sw - pw + kx dw]` with
/// `groups = CIN / CPG` and `g = co / (COUT / groups)`; positions outside
/// the input read zero (stride `(sh, sw)`, padding `(ph, pw)`, dilation
/// `(dh, dw)`).
///
/// Shapes: input `[B][CIN][H][W]`, output `[B][COUT][OH][OW]`, with
/// `OH = (H + 2 ph - dh (KH - 1) - 1) / sh + 1` (likewise `OW`), as in
/// PyTorch. `CPG` is the number of input channels per group: `CPG = CIN` is
/// an ordinary convolution, `CPG = 1` a depthwise one (each output channel
/// reads one input channel, `COUT / CIN` outputs per input channel).
/// `CIN % CPG == 0` and `COUT % (CIN / CPG) == 0` are checked at compile
/// time; stride, padding and dilation at run time by [`Conv2d::new`].
///
/// Tensors (ids `id * 16 + k`): `weight` `[COUT][CPG][KH][KW]` (k = 0),
/// `bias` `[COUT]` (k = 1), output `out` `[B][COUT][OH][OW]` (k = 2).
///
/// # Arithmetic
///
/// As [`Linear`](super::Linear), with `K = CPG * KH * KW` products per
/// output. With `x` and `weight` quantized, the sum is an exact `i64` sum
/// of code products at exponent `e = step_exp(x) + step_exp(w)`; a
/// quantized bias is added exactly (at the finer of the two exponents while
/// the shifted accumulator fits 62 bits, otherwise rounded to `e`,
/// nearest-even); the result is requantized by the output config with its
/// rounding and saturation (`Method::None`: the exact sum converted to f32,
/// error at most `|y| * 2^-24`). If `x` or `weight` is at full precision the
/// sum is f32 (`ci`, `ky`, `kx` ascending) and the bias is added last: error
/// at most `gamma_{K+2} * sum |terms|` (`gamma_n = n u / (1 - n u)`,
/// `u = 2^-24`) before the output's own rounding (half a step for nearest,
/// one step for floor and stochastic).
///
/// Backward: `dbias[co] = sum_{b, oy, ox} dy` (integer sum of codes when
/// `dy` is quantized; f32 in `b`, `oy`, `ox` order otherwise),
/// `dw` = sums over `b`, `oy`, `ox` of `dy * x`, `dx` = sums over the
/// `(co, ky, kx)` of the input channel's group of `dy * w`, each an exact
/// integer sum when both operands are quantized and an f32 sum in the
/// backend's documented order otherwise. `dx` leaves at full precision.
pub struct Conv2d<
    const CIN: usize,
    const COUT: usize,
    const CPG: usize,
    const KH: usize,
    const KW: usize,
    const H: usize,
    const W: usize,
    const OH: usize,
    const OW: usize,
    const B: usize,
> {
    /// Weight `[COUT][CPG][KH][KW]` (OIHW, input channels of one group).
    pub weight: Param<S4<COUT, CPG, KH, KW>>,
    /// Bias `[COUT]`.
    pub bias: Param<S1<COUT>>,
    /// Whether the bias is used (a layer without bias keeps it at zero).
    pub use_bias: bool,
    /// Output `[B][COUT][OH][OW]`, kept for the next layer's backward.
    pub out: Act<S4<B, COUT, OH, OW>>,
    /// Gradient with respect to the input (written by `backward` with `want_dx`).
    dx: Tensor<S4<B, CIN, H, W>>,
    geom: ConvGeom,
    acc: [[[[i64; OW]; OH]; COUT]; B],
    wacc: [[[[i64; KW]; KH]; CPG]; COUT],
    xacc: [[[[i64; W]; H]; CIN]; B],
}

impl<
        const CIN: usize,
        const COUT: usize,
        const CPG: usize,
        const KH: usize,
        const KW: usize,
        const H: usize,
        const W: usize,
        const OH: usize,
        const OW: usize,
        const B: usize,
    > Conv2d<CIN, COUT, CPG, KH, KW, H, W, OH, OW, B>
{
    /// A layer with zero weights and bias, all configs `None`; `id` numbers
    /// its tensors (`id * 16 + k`). `stride`, `pad` (zero padding) and
    /// `dil` (dilation) are `(rows, columns)`.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if a stride or dilation is zero, a size is zero, the
    /// dilated kernel is larger than the padded input, `OH`/`OW` are not
    /// what stride, padding and dilation give ([`ConvGeom::check`]), or the
    /// padded input or dilated kernel size overflows `usize`.
    ///
    /// # Examples
    ///
    /// ```
    /// use fixnn::layers::Conv2d;
    /// // 3x3 depthwise (CPG = 1) on 4 channels, stride 2, padding 1: 8x8 -> 4x4.
    /// let c = Conv2d::<4, 4, 1, 3, 3, 8, 8, 4, 4, 1>::new(0, (2, 2), (1, 1), (1, 1));
    /// assert!(c.is_ok());
    /// // 6x6 output is wrong for stride 2: an error, not a panic.
    /// let bad = Conv2d::<4, 4, 1, 3, 3, 8, 8, 6, 6, 1>::new(0, (2, 2), (1, 1), (1, 1));
    /// assert!(bad.is_err());
    /// ```
    pub fn new(
        id: u32,
        stride: (usize, usize),
        pad: (usize, usize),
        dil: (usize, usize),
    ) -> Result<Self> {
        const {
            assert!(
                CPG > 0 && CIN.is_multiple_of(CPG),
                "Conv2d: CIN must be a non-zero multiple of CPG"
            );
            assert!(
                COUT.is_multiple_of(CIN / CPG),
                "Conv2d: COUT must be a multiple of groups = CIN / CPG"
            );
        };
        let fits = |size: usize, p: usize, k: usize, d: usize| {
            let padded = p.checked_mul(2).and_then(|p2| p2.checked_add(size));
            let span = d.checked_mul(k.saturating_sub(1));
            padded.is_some() && span.and_then(|s| s.checked_add(1)).is_some()
        };
        if !fits(H, pad.0, KH, dil.0) || !fits(W, pad.1, KW, dil.1) {
            return Err(Error::Shape {
                what: "convolution padding or dilation overflows",
            });
        }
        let geom = ConvGeom {
            batch: B,
            cin: CIN,
            h: H,
            w: W,
            cout: COUT,
            kh: KH,
            kw: KW,
            oh: OH,
            ow: OW,
            stride,
            pad,
            dil,
            groups: CIN / CPG,
        };
        geom.check()?;
        let base = id.wrapping_mul(ID_STRIDE);
        Ok(Conv2d {
            weight: Param::new(base),
            bias: Param::new(base + 1),
            use_bias: true,
            out: Act::new(base + 2),
            dx: Tensor::zeros(),
            geom,
            acc: [[[[0; OW]; OH]; COUT]; B],
            wacc: [[[[0; KW]; KH]; CPG]; COUT],
            xacc: [[[[0; W]; H]; CIN]; B],
        })
    }

    /// The checked geometry (stride, padding, dilation, groups).
    pub fn geom(&self) -> ConvGeom {
        self.geom
    }
}

impl<
        const CIN: usize,
        const COUT: usize,
        const CPG: usize,
        const KH: usize,
        const KW: usize,
        const H: usize,
        const W: usize,
        const OH: usize,
        const OW: usize,
        const B: usize,
    > Layer for Conv2d<CIN, COUT, CPG, KH, KW, H, W, OH, OW, B>
{
    type In = S4<B, CIN, H, W>;
    type Out = S4<B, COUT, OH, OW>;
    const TYPE: &'static str = "Conv2d";

    fn forward<Bk: Backend>(
        &mut self,
        bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<S4<B, CIN, H, W>>,
    ) -> Result<()> {
        self.weight.refresh(ctx)?;
        if self.use_bias {
            self.bias.refresh(ctx)?;
        }
        let g = self.geom;
        let (xo, wo) = (x.operand(), self.weight.q.operand());
        let bias = self.use_bias.then_some(&self.bias.q);
        let acc = flat4_mut(&mut self.acc);
        let p = product::Products {
            x: xo,
            w: wo,
            k: CPG * KH * KW,
            spatial: OH * OW,
        };
        product::forward(ctx, &mut self.out, acc, bias, p, |o| {
            bk.conv2d(g, xo, wo, o)
        })
    }

    fn output(&self) -> &Tensor<S4<B, COUT, OH, OW>> {
        &self.out.t
    }

    fn backward<Bk: Backend>(
        &mut self,
        bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<S4<B, CIN, H, W>>,
        dy: &mut Tensor<S4<B, COUT, OH, OW>>,
        want_dx: bool,
    ) -> Result<()> {
        self.out.prepare_grad(ctx, dy)?;
        let g = self.geom;
        let (dyo, xo) = (dy.operand(), x.operand());
        if self.use_bias {
            product::bias_grad(ctx, &mut self.bias, dy, OH * OW)?;
        }
        let wacc = flat4_mut(&mut self.wacc);
        product::weight_grad(ctx, &mut self.weight, wacc, dyo, xo, |o| {
            bk.conv2d_weight_grad(g, dyo, xo, o)
        })?;
        if want_dx {
            let dx = &mut self.dx;
            let wo = self.weight.q.operand();
            let xacc = flat4_mut(&mut self.xacc);
            product::input_grad(dx.flat_mut(), xacc, dyo, wo, |o| {
                bk.conv2d_input_grad(g, dyo, wo, o)
            })?;
            dx.fmt = None;
        }
        Ok(())
    }

    fn input_grad(&self) -> &Tensor<S4<B, CIN, H, W>> {
        &self.dx
    }

    fn input_grad_mut(&mut self) -> &mut Tensor<S4<B, CIN, H, W>> {
        &mut self.dx
    }

    fn visit(&mut self, v: &mut dyn Visitor) {
        v.tensor(self.weight.tensor_mut(Self::TYPE, "weight"));
        if self.use_bias {
            v.tensor(self.bias.tensor_mut(Self::TYPE, "bias"));
        }
        v.tensor(self.out.tensor_mut(Self::TYPE, "output"));
    }
}

/// A four-dimensional array as a flat row-major slice.
pub(crate) fn flat4<T, const A: usize, const B: usize, const C: usize, const D: usize>(
    b: &[[[[T; D]; C]; B]; A],
) -> &[T] {
    b.as_flattened().as_flattened().as_flattened()
}

/// A four-dimensional array as a flat row-major mutable slice.
pub(crate) fn flat4_mut<T, const A: usize, const B: usize, const C: usize, const D: usize>(
    b: &mut [[[[T; D]; C]; B]; A],
) -> &mut [T] {
    b.as_flattened_mut().as_flattened_mut().as_flattened_mut()
}

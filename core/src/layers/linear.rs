//! [`Linear`]: a fully connected layer (nics_fix_pt's `Linear_fix`).

use super::product;
use super::Layer;
use crate::backend::{Backend, LinearGeom};
use crate::error::Result;
use crate::model::Visitor;
use crate::tensor::{Act, Ctx, Param, Tensor, ID_STRIDE, S1, S2};

/// `y[b][o] = sum_i x[b][i] * w[o][i] + bias[o]`, batch `B`.
///
/// Tensors (ids `id * 16 + k`): `weight` `[OUT][IN]` (k = 0), `bias` `[OUT]`
/// (k = 1), output `out` `[B][OUT]` (k = 2).
///
/// # Arithmetic
///
/// With `x` and `weight` quantized, `sum_i x * w` is an exact `i64` sum of
/// code products at exponent `e = step_exp(x) + step_exp(w)`. A quantized
/// bias is added exactly: at `e` when its step is coarser, and at the
/// bias's finer exponent otherwise, the accumulator shifted left (when that
/// could need more than 62 bits, the bias is instead rounded to `e`,
/// nearest-even, as hardware that adds it in the accumulator does). The sum
/// is requantized by the output config (`Method::None`: converted to f32). If `x` or
/// `weight` is at full precision the sum is f32 (`i` ascending) and the bias
/// is added last; a full-precision bias with integer products converts the
/// accumulator to f32 first.
///
/// Backward: `dbias[o] = sum_b dy[b][o]`, `dw = dy^T x` (sums over `b`
/// ascending), `dx = dy w` (sums over `o` ascending), each integer when both
/// operands are quantized.
pub struct Linear<const IN: usize, const OUT: usize, const B: usize> {
    /// Weight `[OUT][IN]`.
    pub weight: Param<S2<OUT, IN>>,
    /// Bias `[OUT]`.
    pub bias: Param<S1<OUT>>,
    /// Whether the bias is used (a layer without bias keeps it at zero).
    pub use_bias: bool,
    /// Output `[B][OUT]`, kept for the next layer's backward.
    pub out: Act<S2<B, OUT>>,
    acc: [[i64; OUT]; B],
    wacc: [[i64; IN]; OUT],
    xacc: [[i64; IN]; B],
    dx: Tensor<S2<B, IN>>,
}

impl<const IN: usize, const OUT: usize, const B: usize> Linear<IN, OUT, B> {
    /// A layer with zero weights and bias, all configs `None`; `id` numbers
    /// its tensors (`id * 16 + k`).
    ///
    /// # Accumulators
    ///
    /// Checked when `new` is compiled: `IN`, `OUT` and `B` (the lengths of
    /// the forward, input-gradient and weight-gradient sums) are at most
    /// [`MAX_REDUCTION`](crate::backend::MAX_REDUCTION) = `2^32`, so no
    /// `i64` accumulator can overflow at any bit width. A larger layer does
    /// not compile:
    ///
    /// ```compile_fail,E0080
    /// # use fixnn::layers::Linear;
    /// let l = Linear::<{ (1 << 32) + 1 }, 1, 1>::new(0);
    /// ```
    ///
    /// while the largest allowed one does (it is never run: it would need 96 GB):
    ///
    /// ```no_run
    /// # use fixnn::layers::Linear;
    /// let l = Linear::<{ 1 << 32 }, 1, 1>::new(0);
    /// ```
    pub fn new(id: u32) -> Self {
        const {
            assert!(
                Self::GEOM.check().is_ok(),
                "Linear: IN, OUT and B must be at most 2^32 (i64 accumulators)"
            );
        };
        let base = id.wrapping_mul(ID_STRIDE);
        Linear {
            weight: Param::new(base),
            bias: Param::new(base + 1),
            use_bias: true,
            out: Act::new(base + 2),
            acc: [[0; OUT]; B],
            wacc: [[0; IN]; OUT],
            xacc: [[0; IN]; B],
            dx: Tensor::zeros(),
        }
    }

    const GEOM: LinearGeom = LinearGeom {
        batch: B,
        inp: IN,
        out: OUT,
    };
}

impl<const IN: usize, const OUT: usize, const B: usize> Layer for Linear<IN, OUT, B> {
    type In = S2<B, IN>;
    type Out = S2<B, OUT>;
    const TYPE: &'static str = "Linear";

    fn forward<Bk: Backend>(&mut self, bk: &Bk, ctx: &Ctx, x: &Tensor<S2<B, IN>>) -> Result<()> {
        self.weight.refresh(ctx)?;
        if self.use_bias {
            self.bias.refresh(ctx)?;
        }
        let (xo, wo) = (x.operand(), self.weight.q.operand());
        let bias = self.use_bias.then_some(&self.bias.q);
        let acc = self.acc.as_flattened_mut();
        let p = product::Products {
            x: xo,
            w: wo,
            k: IN,
            spatial: 1,
        };
        product::forward(ctx, &mut self.out, acc, bias, p, |o| {
            if ctx.training {
                // The backward pass's weight gradient reads this `x`.
                bk.linear_train(Self::GEOM, xo, wo, o)
            } else {
                bk.linear(Self::GEOM, xo, wo, o)
            }
        })
    }

    fn output(&self) -> &Tensor<S2<B, OUT>> {
        &self.out.t
    }

    fn backward<Bk: Backend>(
        &mut self,
        bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<S2<B, IN>>,
        dy: &mut Tensor<S2<B, OUT>>,
        want_dx: bool,
    ) -> Result<()> {
        self.out.prepare_grad(ctx, dy)?;
        let (dyo, xo) = (dy.operand(), x.operand());
        if self.use_bias {
            product::bias_grad(ctx, &mut self.bias, dy, 1)?;
        }
        let wacc = self.wacc.as_flattened_mut();
        product::weight_grad(ctx, &mut self.weight, wacc, dyo, xo, |o| {
            bk.linear_weight_grad(Self::GEOM, dyo, xo, o)
        })?;
        if want_dx {
            let dx = &mut self.dx;
            let wo = self.weight.q.operand();
            let xacc = self.xacc.as_flattened_mut();
            product::input_grad(dx.flat_mut(), xacc, dyo, wo, |o| {
                bk.linear_input_grad(Self::GEOM, dyo, wo, o)
            })?;
            dx.fmt = None;
        }
        Ok(())
    }

    fn input_grad(&self) -> &Tensor<S2<B, IN>> {
        &self.dx
    }

    fn input_grad_mut(&mut self) -> &mut Tensor<S2<B, IN>> {
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

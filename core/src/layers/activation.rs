//! Shape-preserving layers: [`Relu`], [`Quant`] (nics_fix_pt's
//! `Activation_fix`) and [`Flatten`].

use super::Layer;
use crate::backend::Backend;
use crate::error::Result;
use crate::model::Visitor;
use crate::tensor::{Act, Ctx, Shape, Tensor, ID_STRIDE, S2, S4};

/// `y = max(x, 0)`, element-wise, on any shape.
///
/// Exact on codes: a quantized input gives a quantized output in the same
/// format (requantized only if the output's data config is not `None`).
/// Backward: `dx = dy` where `x > 0`, else 0 (`dx` keeps `dy`'s format).
pub struct Relu<S: Shape> {
    /// Output (tensor id `id * 16`).
    pub out: Act<S>,
    /// Gradient with respect to the input (written by `backward` with `want_dx`).
    dx: Tensor<S>,
}

impl<S: Shape> Relu<S> {
    /// A ReLU whose output has tensor id `id * 16`.
    pub fn new(id: u32) -> Self {
        Relu {
            out: Act::new(id.wrapping_mul(ID_STRIDE)),
            dx: Tensor::zeros(),
        }
    }
}

impl<S: Shape> Layer for Relu<S> {
    type In = S;
    type Out = S;
    const TYPE: &'static str = "Relu";
    const HAS_PARAMS: bool = false;

    fn forward<Bk: Backend>(&mut self, _bk: &Bk, ctx: &Ctx, x: &Tensor<S>) -> Result<()> {
        for (y, &v) in self.out.t.flat_mut().iter_mut().zip(x.flat()) {
            *y = if v > 0.0 { v } else { 0.0 };
        }
        self.out.finish_exact(ctx, x.fmt)
    }

    fn output(&self) -> &Tensor<S> {
        &self.out.t
    }

    fn backward<Bk: Backend>(
        &mut self,
        _bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<S>,
        dy: &mut Tensor<S>,
        want_dx: bool,
    ) -> Result<()> {
        self.out.prepare_grad(ctx, dy)?;
        if want_dx {
            let dx = &mut self.dx;
            for ((d, &g), &v) in dx.flat_mut().iter_mut().zip(dy.flat()).zip(x.flat()) {
                *d = if v > 0.0 { g } else { 0.0 };
            }
            dx.fmt = dy.fmt;
        }
        Ok(())
    }

    fn input_grad(&self) -> &Tensor<S> {
        &self.dx
    }

    fn input_grad_mut(&mut self) -> &mut Tensor<S> {
        &mut self.dx
    }

    fn visit(&mut self, v: &mut dyn Visitor) {
        v.tensor(self.out.tensor_mut(Self::TYPE, "output"));
    }
}

/// The activation quantizer: `y = Q(x)` by the output's data config, and
/// in backward `dx = Q_grad(STE(dy))` by its grad config.
pub struct Quant<S: Shape> {
    /// Output (tensor id `id * 16`): its configs are the quantizer's.
    pub out: Act<S>,
    /// Gradient with respect to the input (written by `backward` with `want_dx`).
    dx: Tensor<S>,
}

impl<S: Shape> Quant<S> {
    /// A quantizer whose tensor id is `id * 16`, configs `None`.
    pub fn new(id: u32) -> Self {
        Quant {
            out: Act::new(id.wrapping_mul(ID_STRIDE)),
            dx: Tensor::zeros(),
        }
    }
}

impl<S: Shape> Layer for Quant<S> {
    type In = S;
    type Out = S;
    const TYPE: &'static str = "Quant";
    const HAS_PARAMS: bool = false;

    fn forward<Bk: Backend>(&mut self, _bk: &Bk, ctx: &Ctx, x: &Tensor<S>) -> Result<()> {
        self.out.set_exact(ctx, x)
    }

    fn output(&self) -> &Tensor<S> {
        &self.out.t
    }

    fn backward<Bk: Backend>(
        &mut self,
        _bk: &Bk,
        ctx: &Ctx,
        _x: &Tensor<S>,
        dy: &mut Tensor<S>,
        want_dx: bool,
    ) -> Result<()> {
        self.out.prepare_grad(ctx, dy)?;
        if want_dx {
            let dx = &mut self.dx;
            dx.flat_mut().copy_from_slice(dy.flat());
            dx.fmt = dy.fmt;
        }
        Ok(())
    }

    fn input_grad(&self) -> &Tensor<S> {
        &self.dx
    }

    fn input_grad_mut(&mut self) -> &mut Tensor<S> {
        &mut self.dx
    }

    fn visit(&mut self, v: &mut dyn Visitor) {
        v.tensor(self.out.tensor_mut(Self::TYPE, "activation"));
    }
}

/// `[B][C][H][W]` to `[B][N]` with `N = C * H * W` (checked at compile time).
/// Values and formats pass through unchanged (unless the output has a data config).
pub struct Flatten<const B: usize, const C: usize, const H: usize, const W: usize, const N: usize> {
    /// Output (tensor id `id * 16`).
    pub out: Act<S2<B, N>>,
    /// Gradient with respect to the input (written by `backward` with `want_dx`).
    dx: Tensor<S4<B, C, H, W>>,
}

impl<const B: usize, const C: usize, const H: usize, const W: usize, const N: usize>
    Flatten<B, C, H, W, N>
{
    /// A flatten layer with tensor id `id * 16`.
    pub fn new(id: u32) -> Self {
        const { assert!(N == C * H * W, "Flatten: N must equal C * H * W") };
        Flatten {
            out: Act::new(id.wrapping_mul(ID_STRIDE)),
            dx: Tensor::zeros(),
        }
    }
}

impl<const B: usize, const C: usize, const H: usize, const W: usize, const N: usize> Layer
    for Flatten<B, C, H, W, N>
{
    type In = S4<B, C, H, W>;
    type Out = S2<B, N>;
    const TYPE: &'static str = "Flatten";
    const HAS_PARAMS: bool = false;

    fn forward<Bk: Backend>(
        &mut self,
        _bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<S4<B, C, H, W>>,
    ) -> Result<()> {
        self.out.t.flat_mut().copy_from_slice(x.flat());
        self.out.finish_exact(ctx, x.fmt)
    }

    fn output(&self) -> &Tensor<S2<B, N>> {
        &self.out.t
    }

    fn backward<Bk: Backend>(
        &mut self,
        _bk: &Bk,
        ctx: &Ctx,
        _x: &Tensor<S4<B, C, H, W>>,
        dy: &mut Tensor<S2<B, N>>,
        want_dx: bool,
    ) -> Result<()> {
        self.out.prepare_grad(ctx, dy)?;
        if want_dx {
            let dx = &mut self.dx;
            dx.flat_mut().copy_from_slice(dy.flat());
            dx.fmt = dy.fmt;
        }
        Ok(())
    }

    fn input_grad(&self) -> &Tensor<S4<B, C, H, W>> {
        &self.dx
    }

    fn input_grad_mut(&mut self) -> &mut Tensor<S4<B, C, H, W>> {
        &mut self.dx
    }

    fn visit(&mut self, v: &mut dyn Visitor) {
        v.tensor(self.out.tensor_mut(Self::TYPE, "output"));
    }
}

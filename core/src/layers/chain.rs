//! [`Chain`]: two layers in sequence, with shapes checked at compile time.

use super::Layer;
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::{Ctx, ParamMut, Tensor};

/// `a` then `b`. `b`'s input shape must be `a`'s output shape (a compile
/// error otherwise). Owns the gradient buffer between the two. Nest chains
/// for longer sequences (`Chain<Chain<A, B>, C>`).
///
/// # Examples
///
/// ```
/// use fixnn::layers::{Chain, Layer, Linear, Relu};
/// // 4 -> 8 -> 8 -> 3, batch 2
/// type Net = Chain<Chain<Linear<4, 8, 2>, Relu<fixnn::tensor::S2<2, 8>>>, Linear<8, 3, 2>>;
/// let net: Net = Chain::new(Chain::new(Linear::new(0), Relu::new(1)), Linear::new(2));
/// assert!(core::mem::size_of::<Net>() > 0);
/// ```
pub struct Chain<A: Layer, B: Layer<In = A::Out>> {
    /// The first layer.
    pub a: A,
    /// The second layer.
    pub b: B,
    /// Gradient with respect to `a`'s output.
    pub mid_grad: Tensor<A::Out>,
}

impl<A: Layer, B: Layer<In = A::Out>> Chain<A, B> {
    /// `a` then `b`.
    pub fn new(a: A, b: B) -> Self {
        Chain {
            a,
            b,
            mid_grad: Tensor::zeros(),
        }
    }
}

impl<A: Layer, B: Layer<In = A::Out>> Layer for Chain<A, B> {
    type In = A::In;
    type Out = B::Out;

    fn forward<Bk: Backend>(&mut self, bk: &Bk, ctx: &Ctx, x: &Tensor<A::In>) -> Result<()> {
        self.a.forward(bk, ctx, x)?;
        self.b.forward(bk, ctx, self.a.output())
    }

    fn output(&self) -> &Tensor<B::Out> {
        self.b.output()
    }

    fn backward<Bk: Backend>(
        &mut self,
        bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<A::In>,
        dy: &mut Tensor<B::Out>,
        dx: Option<&mut Tensor<A::In>>,
    ) -> Result<()> {
        self.b
            .backward(bk, ctx, self.a.output(), dy, Some(&mut self.mid_grad))?;
        self.a.backward(bk, ctx, x, &mut self.mid_grad, dx)
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(ParamMut<'_>)) {
        self.a.visit_params(f);
        self.b.visit_params(f);
    }
}

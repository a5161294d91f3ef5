//! [`Chain`]: two layers in sequence, with shapes checked at compile time.

use super::Layer;
use crate::backend::Backend;
use crate::error::Result;
use crate::model::Visitor;
use crate::tensor::{Ctx, Tensor};

/// `a` then `b`. `b`'s input shape must be `a`'s output shape (a compile
/// error otherwise). Nest chains for longer sequences
/// (`Chain<Chain<A, B>, C>`); tensors are named by their position in the
/// flattened sequence, as PyTorch's `Sequential` does: `0.weight`,
/// `1.output`, `2.bias`.
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
}

impl<A: Layer, B: Layer<In = A::Out>> Chain<A, B> {
    /// `a` then `b`.
    pub fn new(a: A, b: B) -> Self {
        Chain { a, b }
    }
}

impl<A: Layer, B: Layer<In = A::Out>> Layer for Chain<A, B> {
    type In = A::In;
    type Out = B::Out;
    const TYPE: &'static str = "Sequential";
    const HAS_PARAMS: bool = A::HAS_PARAMS || B::HAS_PARAMS;

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
        want_dx: bool,
    ) -> Result<()> {
        self.b.backward(bk, ctx, self.a.output(), dy, true)?;
        self.a
            .backward(bk, ctx, x, self.b.input_grad_mut(), want_dx)
    }

    fn input_grad(&self) -> &Tensor<A::In> {
        self.a.input_grad()
    }

    fn input_grad_mut(&mut self) -> &mut Tensor<A::In> {
        self.a.input_grad_mut()
    }

    fn visit(&mut self, v: &mut dyn Visitor) {
        let mut index = 0;
        self.visit_item(&mut index, v);
    }

    fn visit_item(&mut self, index: &mut usize, v: &mut dyn Visitor) {
        self.a.visit_item(index, v);
        self.b.visit_item(index, v);
    }
}

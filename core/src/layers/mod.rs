//! Fixed-point layers that train: forward and backward in integer
//! arithmetic wherever both operands are quantized, with static buffers.
//!
//! # Conventions shared by every layer
//!
//! * Sizes, including the batch size `B`, are const generics; every buffer
//!   (master weights, momentum, gradients, the quantized copies, the output
//!   kept for backward, accumulator scratch) is an array inside the layer,
//!   so `size_of::<Layer>()` is the RAM it needs to train.
//! * Every parameter and every output has a data config and a grad config
//!   ([`Quantized`](crate::tensor::Quantized)); all default to `Method::None`.
//! * Forward: parameters are quantized from their f32 masters
//!   ([`Param::refresh`](crate::tensor::Param::refresh)); the operation runs
//!   in integers when both operands are quantized (exact `i64` sums, see
//!   [`backend`](crate::backend)) and in f32 otherwise; the result is
//!   requantized by the output's data config, recording saturations.
//! * Backward receives `dy`, the gradient with respect to the output, and
//!   first prepares it ([`Act::prepare_grad`](crate::tensor::Act::prepare_grad)):
//!   zero where the forward output saturated (straight-through estimator),
//!   then quantized by the output's grad config. Parameter gradients are
//!   quantized by their grad configs and zeroed where the master value
//!   saturated. The input gradient `dx` is written at full precision: the
//!   layer that produced the input quantizes it by its own grad config.
//! * In eval mode ([`Ctx::eval`](crate::tensor::Ctx::eval)) Auto configs act
//!   as Fixed and batch norms use running statistics.

mod activation;
mod batchnorm;
mod chain;
mod conv;
mod convbn;
mod linear;
pub(crate) mod loss;
mod packed;
mod pool;
pub(crate) mod product;

pub use activation::{Flatten, Quant, Relu};
pub use batchnorm::{BatchNorm, BatchNorm1d, BatchNorm2d, ChannelShape, ChannelStats};
pub use chain::Chain;
pub use conv::Conv2d;
pub use convbn::ConvBn;
pub use linear::Linear;
pub use loss::{exp_f32, ln_f32, softmax_cross_entropy, LossOutput};
pub use packed::{conv2d_packed, linear_packed, PackedConv2d, PackedLinear};
pub use pool::{AvgPool2d, MaxPool2d};

use crate::backend::Backend;
use crate::error::Result;
use crate::model::Visitor;
use crate::tensor::{Ctx, Shape, Tensor};

/// A layer: forward and backward on statically shaped tensors, and a walk
/// over its named tensors.
pub trait Layer {
    /// Input shape, batch included.
    type In: Shape;
    /// Output shape, batch included.
    type Out: Shape;
    /// The layer's type name, used to select configs by type
    /// ([`set_method`](crate::model::set_method)) and in tables.
    const TYPE: &'static str;
    /// Whether the layer (or one of its children) has trainable
    /// parameters. Containers use it to skip input gradients nobody needs
    /// (a layer with no parameters before it never needs its `dx`).
    const HAS_PARAMS: bool = true;

    /// Compute the output from `x` and keep what backward needs.
    ///
    /// # Errors
    ///
    /// Config, data and shape errors; the layer's parameters are unchanged.
    fn forward<Bk: Backend>(&mut self, bk: &Bk, ctx: &Ctx, x: &Tensor<Self::In>) -> Result<()>;

    /// The output of the last forward pass.
    fn output(&self) -> &Tensor<Self::Out>;

    /// Backward pass. `x` is the input of the last forward pass, `dy` the
    /// gradient with respect to the output (prepared in place: masked and
    /// quantized by the output's grad config). Parameter gradients are
    /// stored in the layer; with `want_dx` the gradient with respect to the
    /// input is written to the layer's own buffer ([`Layer::input_grad`]).
    ///
    /// # Errors
    ///
    /// Config, data and shape errors.
    fn backward<Bk: Backend>(
        &mut self,
        bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<Self::In>,
        dy: &mut Tensor<Self::Out>,
        want_dx: bool,
    ) -> Result<()>;

    /// The gradient with respect to the input, from the last backward pass
    /// with `want_dx` (at full precision unless noted by the layer).
    fn input_grad(&self) -> &Tensor<Self::In>;

    /// The same, mutable: the previous layer prepares it in place.
    fn input_grad_mut(&mut self) -> &mut Tensor<Self::In>;

    /// Report every named tensor of this layer (and of its children, each
    /// between [`Visitor::enter`] and [`Visitor::leave`]) in a fixed order.
    fn visit(&mut self, v: &mut dyn Visitor);

    /// Report this layer as item `*index` of a sequence (named by its index)
    /// and advance the index. [`Chain`] overrides it to flatten nested
    /// chains into one sequence `0, 1, 2, ...`.
    fn visit_item(&mut self, index: &mut usize, v: &mut dyn Visitor) {
        let mut buf = [0u8; 20];
        v.enter(crate::model::index_str(*index, &mut buf));
        self.visit(v);
        v.leave();
        *index += 1;
    }
}

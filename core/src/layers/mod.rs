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
mod loss;
mod pool;
mod product;

pub use activation::{Flatten, Quant, Relu};
pub use batchnorm::{BatchNorm, BatchNorm1d, BatchNorm2d, ChannelShape, ChannelStats};
pub use chain::Chain;
pub use conv::Conv2d;
pub use convbn::ConvBn;
pub use linear::Linear;
pub use loss::{exp_f32, ln_f32, softmax_cross_entropy, LossOutput};
pub use pool::{AvgPool2d, MaxPool2d};

use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::{Ctx, ParamMut, Shape, Tensor};

/// A layer: forward and backward on statically shaped tensors.
pub trait Layer {
    /// Input shape, batch included.
    type In: Shape;
    /// Output shape, batch included.
    type Out: Shape;

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
    /// stored in the layer; the input gradient is written to `dx` if given.
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
        dx: Option<&mut Tensor<Self::In>>,
    ) -> Result<()>;

    /// Call `f` on every trainable parameter, in a fixed order.
    fn visit_params(&mut self, f: &mut dyn FnMut(ParamMut<'_>)) {
        let _ = f;
    }
}

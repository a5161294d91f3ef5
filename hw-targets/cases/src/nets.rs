//! The models of the device cases.
//!
//! * [`Cnn`] (`cnn`): the small CNN trained end to end on every board,
//!   the micro:bit's 16 KB of RAM included: `q0 (Quant) -> conv 3x3 (1->2)
//!   -> bn (BatchNorm2d) -> relu -> pool (MaxPool 2x2) -> flat -> fc (8->3)`
//!   on 1x6x6 images, batch 1 (4.8 KB of model, 13 KB of stack at the
//!   peak on the M0).
//! * [`MixConv`] (`mixconv`) and [`MixDense`] (`mixdense`): every other
//!   layer type and geometry feature, with configs rotated over every
//!   method, range method, rounding and bit width, batch 2, split in two
//!   so that each fits the micro:bit: `q0 -> conv (2->4, stride 2, pad 1,
//!   2 groups) -> relu -> pool (AvgPool 2x2) -> flat -> fc (4->3)` on 2x4x4
//!   inputs, and `q0 -> cbn (ConvBn 3x3 depthwise on 2 channels, pad 2,
//!   dilation 2) -> pool (MaxPool 2x2) -> flat -> fc1 (2->4) -> bn1
//!   (BatchNorm1d) -> relu -> q1 -> fc2 (4->3)` on 2x2x2 inputs. (Building
//!   a layer by value costs about three copies of it on the M0's stack,
//!   which is what bounds these sizes.)
//! * [`Mlp`] (`mlp`): nics_fix_pt's MNIST MLP, 784-100-10, batch 64, as in
//!   `examples/mnist-mlp.json` (M4 and M7 boards: it needs about 1.4 MB).
//!
//! Parameters start as PyTorch's defaults: uniform in
//! `[-1/sqrt(fan_in), 1/sqrt(fan_in))` drawn from the run's seed.

use fixnn::layers::{
    AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, ConvBn, Flatten, Layer, Linear, MaxPool2d, Quant,
    Relu,
};
use fixnn::quant::sqrt_f32;
use fixnn::tensor::{Param, Shape, S2, S4};
use fixnn::{Model, Result};

use core::mem::MaybeUninit;

use crate::run::{Case, GradFn};

/// Write a struct literal into `slot` (a `&mut MaybeUninit<T>`) one field
/// at a time and return `&mut T`. Each field's value is built on the stack
/// and copied into place, so building needs the slot plus the largest
/// field, not two whole models as `slot.write(T { .. })` would. The
/// literal must name every field: a never-called closure destructures the
/// type with the same field list and no `..`, so the compiler rejects a
/// missing field.
macro_rules! in_place {
    ($slot:expr, $ty:ident { $($field:ident: $value:expr),* $(,)? }) => {{
        let _every_field_is_named = |v: &$ty| {
            let $ty { $($field: _),* } = v;
        };
        let p = $slot.as_mut_ptr();
        $(
            // SAFETY: `p` points to writable memory for a `$ty`; the field
            // is written through a raw pointer, never read before. (The
            // value is written straight from the expression, so that the
            // constructor can build it in place.)
            #[allow(unsafe_code)]
            unsafe { core::ptr::addr_of_mut!((*p).$field).write($value) };
        )*
        // SAFETY: every field of `$ty` was written above (the closure
        // proves the list is complete) and `$ty` has no padding invariants.
        #[allow(unsafe_code)]
        unsafe { $slot.assume_init_mut() }
    }};
}

fn init<S: Shape>(p: &mut Param<S>, seed: u64, fan_in: usize) {
    // fixnn's correctly rounded sqrt: the same bits with or without std.
    p.init_uniform(seed, 1.0 / sqrt_f32(fan_in as f32));
}

/// Report `layer`'s input gradient as `name`.
fn dx<L: Layer>(f: &mut GradFn<'_>, name: &'static str, layer: &L) {
    let g = layer.input_grad();
    f(name, g.flat(), g.fmt);
}

/// Batch of [`Cnn`].
pub const CNN_B: usize = 1;
/// Classes of [`Cnn`], [`MixConv`] and [`MixDense`].
pub const CLASSES: usize = 3;

/// The small CNN of the `cnn` case.
#[derive(Model)]
pub struct Cnn {
    /// Input quantizer.
    pub q0: Quant<S4<CNN_B, 1, 6, 6>>,
    /// 3x3 convolution, 1 -> 2 channels.
    pub conv: Conv2d<1, 2, 1, 3, 3, 6, 6, 4, 4, CNN_B>,
    /// Batch norm over the 2 channels.
    pub bn: BatchNorm2d<2, 4, 4, CNN_B>,
    /// ReLU.
    pub relu: Relu<S4<CNN_B, 2, 4, 4>>,
    /// 2x2 max pooling, stride 2.
    pub pool: MaxPool2d<2, 4, 4, 2, 2, CNN_B>,
    /// To 8 features.
    pub flat: Flatten<CNN_B, 2, 2, 2, 8>,
    /// 8 -> 3.
    pub fc: Linear<8, CLASSES, CNN_B>,
}

impl Case<CNN_B, CLASSES> for Cnn {
    const NAME: &'static str = "cnn";

    #[inline(never)]
    fn build_in(slot: &mut MaybeUninit<Self>) -> Result<&mut Self> {
        let conv2d = Conv2d::new(1, (1, 1), (0, 0), (1, 1))?;
        let pooling = MaxPool2d::new(4, (2, 2), (2, 2), (0, 0))?;
        Ok(in_place!(
            slot,
            Cnn {
                q0: Quant::new(0),
                conv: conv2d,
                bn: BatchNorm2d::new(2),
                relu: Relu::new(3),
                pool: pooling,
                flat: Flatten::new(5),
                fc: Linear::new(6),
            }
        ))
    }

    fn init(&mut self, seed: u64) {
        let m = self;
        init(&mut m.conv.weight, seed, 9);
        init(&mut m.conv.bias, seed, 9);
        init(&mut m.fc.weight, seed, 8);
        init(&mut m.fc.bias, seed, 8);
    }

    fn input_grads(&self, f: &mut GradFn<'_>) {
        dx(f, "bn", &self.bn);
        dx(f, "relu", &self.relu);
        dx(f, "pool", &self.pool);
        dx(f, "flat", &self.flat);
        dx(f, "fc", &self.fc);
    }
}

/// Batch of the two `mix*` cases (two items, so that batch norms see a
/// variance).
pub const MIX_B: usize = 2;

/// The model of the `mixconv` case.
#[derive(Model)]
pub struct MixConv {
    /// Input quantizer.
    pub q0: Quant<S4<MIX_B, 2, 4, 4>>,
    /// 3x3, 2 -> 4 channels in 2 groups, stride 2, padding 1.
    pub conv: Conv2d<2, 4, 1, 3, 3, 4, 4, 2, 2, MIX_B>,
    /// ReLU.
    pub relu: Relu<S4<MIX_B, 4, 2, 2>>,
    /// 2x2 average pooling.
    pub pool: AvgPool2d<4, 2, 2, 1, 1, MIX_B>,
    /// To 4 features.
    pub flat: Flatten<MIX_B, 4, 1, 1, 4>,
    /// 4 -> 3.
    pub fc: Linear<4, CLASSES, MIX_B>,
}

impl Case<MIX_B, CLASSES> for MixConv {
    const NAME: &'static str = "mixconv";

    #[inline(never)]
    fn build_in(slot: &mut MaybeUninit<Self>) -> Result<&mut Self> {
        // Each fallible constructor runs inside the literal, so at most one
        // layer is on the stack besides the slot.
        Ok(in_place!(
            slot,
            MixConv {
                q0: Quant::new(0),
                conv: Conv2d::new(1, (2, 2), (1, 1), (1, 1))?,
                relu: Relu::new(2),
                pool: AvgPool2d::new(3, (2, 2), (1, 1), (0, 0))?,
                flat: Flatten::new(4),
                fc: Linear::new(5),
            }
        ))
    }

    fn init(&mut self, seed: u64) {
        let m = self;
        init(&mut m.conv.weight, seed, 9);
        init(&mut m.conv.bias, seed, 9);
        init(&mut m.fc.weight, seed, 4);
        init(&mut m.fc.bias, seed, 4);
    }

    fn input_grads(&self, f: &mut GradFn<'_>) {
        dx(f, "relu", &self.relu);
        dx(f, "pool", &self.pool);
        dx(f, "flat", &self.flat);
        dx(f, "fc", &self.fc);
    }
}

/// The model of the `mixdense` case.
#[derive(Model)]
pub struct MixDense {
    /// Input quantizer.
    pub q0: Quant<S4<MIX_B, 2, 2, 2>>,
    /// Fused conv + batch norm: 3x3 depthwise on 2 channels (2 groups),
    /// padding 2, dilation 2.
    pub cbn: ConvBn<2, 2, 1, 3, 3, 2, 2, 2, 2, MIX_B>,
    /// 2x2 max pooling.
    pub pool: MaxPool2d<2, 2, 2, 1, 1, MIX_B>,
    /// To 2 features.
    pub flat: Flatten<MIX_B, 2, 1, 1, 2>,
    /// 2 -> 4.
    pub fc1: Linear<2, 4, MIX_B>,
    /// Batch norm over 4 features.
    pub bn1: BatchNorm1d<4, MIX_B>,
    /// ReLU.
    pub relu: Relu<S2<MIX_B, 4>>,
    /// Activation quantizer.
    pub q1: Quant<S2<MIX_B, 4>>,
    /// 4 -> 3.
    pub fc2: Linear<4, CLASSES, MIX_B>,
}

impl Case<MIX_B, CLASSES> for MixDense {
    const NAME: &'static str = "mixdense";

    #[inline(never)]
    fn build_in(slot: &mut MaybeUninit<Self>) -> Result<&mut Self> {
        Ok(in_place!(
            slot,
            MixDense {
                q0: Quant::new(0),
                cbn: ConvBn::new(1, (1, 1), (2, 2), (2, 2))?,
                pool: MaxPool2d::new(2, (2, 2), (2, 2), (0, 0))?,
                flat: Flatten::new(3),
                fc1: Linear::new(4),
                bn1: BatchNorm1d::new(5),
                relu: Relu::new(6),
                q1: Quant::new(7),
                fc2: Linear::new(8),
            }
        ))
    }

    fn init(&mut self, seed: u64) {
        let m = self;
        init(&mut m.cbn.weight, seed, 9);
        init(&mut m.cbn.bias, seed, 9);
        init(&mut m.fc1.weight, seed, 2);
        init(&mut m.fc1.bias, seed, 2);
        init(&mut m.fc2.weight, seed, 4);
        init(&mut m.fc2.bias, seed, 4);
    }

    fn input_grads(&self, f: &mut GradFn<'_>) {
        dx(f, "cbn", &self.cbn);
        dx(f, "pool", &self.pool);
        dx(f, "flat", &self.flat);
        dx(f, "fc1", &self.fc1);
        dx(f, "bn1", &self.bn1);
        dx(f, "relu", &self.relu);
        dx(f, "q1", &self.q1);
        dx(f, "fc2", &self.fc2);
    }
}

/// Batch of [`Mlp`].
pub const MLP_B: usize = 64;

/// nics_fix_pt's MNIST MLP (the `mlp` case).
#[derive(Model)]
pub struct Mlp {
    /// Input quantizer.
    pub fix0: Quant<S2<MLP_B, 784>>,
    /// 784 -> 100.
    pub fc1: Linear<784, 100, MLP_B>,
    /// Hidden quantizer.
    pub fix1: Quant<S2<MLP_B, 100>>,
    /// ReLU.
    pub relu: Relu<S2<MLP_B, 100>>,
    /// 100 -> 10.
    pub fc2: Linear<100, 10, MLP_B>,
    /// Logit quantizer.
    pub fix2: Quant<S2<MLP_B, 10>>,
}

impl Case<MLP_B, 10> for Mlp {
    const NAME: &'static str = "mlp";

    #[inline(never)]
    fn build_in(slot: &mut MaybeUninit<Self>) -> Result<&mut Self> {
        Ok(in_place!(
            slot,
            Mlp {
                fix0: Quant::new(0),
                fc1: Linear::new(1),
                fix1: Quant::new(2),
                relu: Relu::new(3),
                fc2: Linear::new(4),
                fix2: Quant::new(5),
            }
        ))
    }

    fn init(&mut self, seed: u64) {
        let m = self;
        init(&mut m.fc1.weight, seed, 784);
        init(&mut m.fc1.bias, seed, 784);
        init(&mut m.fc2.weight, seed, 100);
        init(&mut m.fc2.bias, seed, 100);
    }

    fn input_grads(&self, f: &mut GradFn<'_>) {
        dx(f, "fix1", &self.fix1);
        dx(f, "relu", &self.relu);
        dx(f, "fc2", &self.fc2);
        dx(f, "fix2", &self.fix2);
    }
}

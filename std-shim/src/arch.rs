//! The architectures compiled into `fixnn` (sizes are const generics).
//!
//! * `mnist-mlp`: nics_fix_pt's MNIST example, 784-100-10:
//!   `fix0 (Quant) -> fc1 (Linear) -> fix1 (Quant) -> relu -> fc2 (Linear) -> fix2 (Quant)`.
//! * `lenet`: a LeNet-style CNN on 1x28x28:
//!   `conv1 5x5x6 -> bn1 -> relu1 -> pool1 2x2 -> conv2 5x5x16 -> bn2 -> relu2 -> pool2 2x2
//!    -> flat -> fc1 256-120 -> relu3 -> fc2 120-84 -> relu4 -> fc3 84-10`.
//!
//! Weights and biases start as PyTorch's defaults do: uniform in
//! `[-1/sqrt(fan_in), 1/sqrt(fan_in))`, drawn from the run's seed.

use fixnn::layers::{BatchNorm2d, Conv2d, Flatten, Layer, Linear, MaxPool2d, Quant, Relu};
use fixnn::quant::sqrt_f32;
use fixnn::tensor::{Param, Shape, S2, S4};
use fixnn::Model;

/// The compiled batch size.
pub const BATCH: usize = 64;
const B: usize = BATCH;

/// An architecture the trainer can build: 28x28 images in (784 values per
/// sample, whatever the input shape), 10 logits out.
pub trait Arch: Layer<Out = S2<BATCH, 10>> + Send + 'static {
    /// Its name in model files.
    const NAME: &'static str;
    /// A freshly initialised model on the heap. Call it on a thread with a
    /// large stack: the model is built before it is boxed.
    ///
    /// # Errors
    ///
    /// A layer geometry the core refuses (a bug in this file, reported).
    fn build(seed: u64) -> Result<Box<Self>, String>;
}

fn init<S: Shape>(p: &mut Param<S>, seed: u64, fan_in: usize) {
    // Core's sqrt, as the device cases use: one definition of the bound on
    // every build. (It equals std's correctly rounded `sqrt` on every
    // integer up to 2^24: tests/f32_identity.rs.)
    p.init_uniform(seed, 1.0 / sqrt_f32(fan_in as f32));
}

/// nics_fix_pt's MNIST MLP.
#[derive(Model)]
pub struct MnistMlp {
    /// Input quantizer.
    pub fix0: Quant<S2<B, 784>>,
    /// 784 -> 100.
    pub fc1: Linear<784, 100, B>,
    /// Hidden quantizer.
    pub fix1: Quant<S2<B, 100>>,
    /// ReLU.
    pub relu: Relu<S2<B, 100>>,
    /// 100 -> 10.
    pub fc2: Linear<100, 10, B>,
    /// Logit quantizer.
    pub fix2: Quant<S2<B, 10>>,
}

impl Arch for MnistMlp {
    const NAME: &'static str = "mnist-mlp";

    fn build(seed: u64) -> Result<Box<Self>, String> {
        let mut m = Box::new(MnistMlp {
            fix0: Quant::new(0),
            fc1: Linear::new(1),
            fix1: Quant::new(2),
            relu: Relu::new(3),
            fc2: Linear::new(4),
            fix2: Quant::new(5),
        });
        init(&mut m.fc1.weight, seed, 784);
        init(&mut m.fc1.bias, seed, 784);
        init(&mut m.fc2.weight, seed, 100);
        init(&mut m.fc2.bias, seed, 100);
        Ok(m)
    }
}

/// A LeNet-style CNN with batch norm.
#[derive(Model)]
pub struct LeNet {
    /// 1x28x28 -> 6x24x24.
    pub conv1: Conv2d<1, 6, 1, 5, 5, 28, 28, 24, 24, B>,
    /// Batch norm over 6 channels.
    pub bn1: BatchNorm2d<6, 24, 24, B>,
    /// ReLU.
    pub relu1: Relu<S4<B, 6, 24, 24>>,
    /// 2x2 max pooling -> 6x12x12.
    pub pool1: MaxPool2d<6, 24, 24, 12, 12, B>,
    /// 6x12x12 -> 16x8x8.
    pub conv2: Conv2d<6, 16, 6, 5, 5, 12, 12, 8, 8, B>,
    /// Batch norm over 16 channels.
    pub bn2: BatchNorm2d<16, 8, 8, B>,
    /// ReLU.
    pub relu2: Relu<S4<B, 16, 8, 8>>,
    /// 2x2 max pooling -> 16x4x4.
    pub pool2: MaxPool2d<16, 8, 8, 4, 4, B>,
    /// 16x4x4 -> 256.
    pub flat: Flatten<B, 16, 4, 4, 256>,
    /// 256 -> 120.
    pub fc1: Linear<256, 120, B>,
    /// ReLU.
    pub relu3: Relu<S2<B, 120>>,
    /// 120 -> 84.
    pub fc2: Linear<120, 84, B>,
    /// ReLU.
    pub relu4: Relu<S2<B, 84>>,
    /// 84 -> 10.
    pub fc3: Linear<84, 10, B>,
}

impl Arch for LeNet {
    const NAME: &'static str = "lenet";

    fn build(seed: u64) -> Result<Box<Self>, String> {
        let e = |e: fixnn::Error| format!("LeNet geometry: {e}");
        let conv1 = Conv2d::new(0, (1, 1), (0, 0), (1, 1)).map_err(e)?;
        let conv2 = Conv2d::new(4, (1, 1), (0, 0), (1, 1)).map_err(e)?;
        let pool1 = MaxPool2d::new(3, (2, 2), (2, 2), (0, 0)).map_err(e)?;
        let pool2 = MaxPool2d::new(7, (2, 2), (2, 2), (0, 0)).map_err(e)?;
        let mut m = Box::new(LeNet {
            conv1,
            bn1: BatchNorm2d::new(1),
            relu1: Relu::new(2),
            pool1,
            conv2,
            bn2: BatchNorm2d::new(5),
            relu2: Relu::new(6),
            pool2,
            flat: Flatten::new(8),
            fc1: Linear::new(9),
            relu3: Relu::new(10),
            fc2: Linear::new(11),
            relu4: Relu::new(12),
            fc3: Linear::new(13),
        });
        init(&mut m.conv1.weight, seed, 25);
        init(&mut m.conv1.bias, seed, 25);
        init(&mut m.conv2.weight, seed, 150);
        init(&mut m.conv2.bias, seed, 150);
        init(&mut m.fc1.weight, seed, 256);
        init(&mut m.fc1.bias, seed, 256);
        init(&mut m.fc2.weight, seed, 120);
        init(&mut m.fc2.bias, seed, 120);
        init(&mut m.fc3.weight, seed, 84);
        init(&mut m.fc3.bias, seed, 84);
        Ok(m)
    }
}

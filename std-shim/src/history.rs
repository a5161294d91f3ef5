//! What a training run records for its metrics file and its report.

use serde::{Deserialize, Serialize};

/// One epoch, as written to `metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: u32,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy over the epoch, in percent.
    pub train_accuracy: f64,
    /// Test accuracy after the epoch (Auto configs acting as Fixed), in percent.
    pub test_accuracy: f64,
    /// Training time of the epoch in seconds (excludes the test pass).
    pub seconds: f64,
}

/// `metrics.json`: `{"epochs":[{"epoch":1,"train_loss":F,...}, ...]}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Every epoch so far.
    pub epochs: Vec<EpochRecord>,
}

/// A point on the per-step curves.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Global step (batch) number, from 0.
    pub step: u64,
    /// Batch loss.
    pub loss: f32,
    /// Batch accuracy in percent.
    pub accuracy: f32,
}

/// A sample of one tensor's format and saturation over training.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorPoint {
    /// Global step when sampled.
    pub step: u64,
    /// The data scale at that step (`None`: full precision).
    pub scale: Option<i8>,
    /// Fraction of data elements clamped since the previous sample (0..=1).
    pub saturation: f32,
}

/// One tensor's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorSeries {
    /// Dotted path (`fc1.weight`).
    pub name: String,
    /// Type of the owning layer.
    pub layer: String,
    /// `param`, `buffer` or `activation`.
    pub kind: String,
    /// Samples in step order.
    pub points: Vec<TensorPoint>,
}

/// A weight tensor at the end of training, for a histogram against its grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightSnapshot {
    /// Dotted path.
    pub name: String,
    /// Bits of its format (`None`: full precision).
    pub bits: Option<u8>,
    /// Scale of its format.
    pub scale: Option<i8>,
    /// The f32 master values.
    pub master: Vec<f32>,
    /// The quantized values the passes used.
    pub quantized: Vec<f32>,
}

/// Everything a report plots.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Run name (the model file's `name`).
    pub name: String,
    /// Per-epoch metrics.
    pub epochs: Vec<EpochRecord>,
    /// Per-step loss and accuracy (every step, or a regular subsample).
    pub steps: Vec<StepRecord>,
    /// Per-tensor scale and saturation samples.
    pub tensors: Vec<TensorSeries>,
    /// Final weights.
    pub weights: Vec<WeightSnapshot>,
}

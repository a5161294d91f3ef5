//! Softmax cross-entropy loss.

use micromath::F32Ext;

use crate::error::{Error, Result};
use crate::tensor::{Tensor, S2};

/// Loss and accuracy of one batch.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LossOutput {
    /// Mean cross-entropy over the batch.
    pub loss: f32,
    /// Samples whose largest logit (first on ties) is the label.
    pub correct: usize,
}

/// Mean softmax cross-entropy of `logits` `[B][N]` against `labels`, and its
/// gradient `dlogits = (softmax(logits) - onehot(label)) / B` at full
/// precision.
///
/// f32 arithmetic in a fixed order, with micromath's `exp` and `ln` called
/// by name, so every target computes the same bits: per row, `m = max`,
/// `e_i = exp(x_i - m)`, `s = sum e_i` (`i` ascending), `p_i = e_i / s`,
/// `loss_b = ln(s) - (x_label - m)`; `loss = (sum_b loss_b) / B`.
/// micromath's `exp` and `ln` are approximations (relative error about
/// `1e-4`), which bounds how closely the loss matches a float64 reference.
///
/// # Errors
///
/// [`Error::Shape`] if a label is not below `N`; [`Error::NonFinite`] if a
/// logit is NaN or infinite. Nothing is written on error.
pub fn softmax_cross_entropy<const B: usize, const N: usize>(
    logits: &Tensor<S2<B, N>>,
    labels: &[usize; B],
    dlogits: &mut Tensor<S2<B, N>>,
) -> Result<LossOutput> {
    if labels.iter().any(|&l| l >= N) {
        return Err(Error::Shape {
            what: "label is not below the number of classes",
        });
    }
    if let Some(index) = logits.flat().iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { index });
    }
    let mut total = 0.0f32;
    let mut correct = 0;
    let inv_b = 1.0 / B as f32;
    for ((row, drow), &label) in logits.v.iter().zip(dlogits.v.iter_mut()).zip(labels) {
        let mut m = row[0];
        let mut arg = 0;
        for (i, &v) in row.iter().enumerate() {
            if v > m {
                m = v;
                arg = i;
            }
        }
        correct += (arg == label) as usize;
        let mut s = 0.0f32;
        for (d, &v) in drow.iter_mut().zip(row) {
            *d = F32Ext::exp(v - m);
            s += *d;
        }
        for (i, d) in drow.iter_mut().enumerate() {
            let p = *d / s;
            *d = (p - if i == label { 1.0 } else { 0.0 }) * inv_b;
        }
        total += F32Ext::ln(s) - (row[label] - m);
    }
    dlogits.fmt = None;
    Ok(LossOutput {
        loss: total * inv_b,
        correct,
    })
}

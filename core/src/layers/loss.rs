//! Softmax cross-entropy loss.

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
/// f32 arithmetic in a fixed order, so every target computes the same
/// bits: per row, `m = max`, `e_i = exp(x_i - m)`, `s = sum e_i`
/// (`i` ascending), `p_i = e_i / s`, `loss_b = ln(s) - (x_label - m)`;
/// `loss = (sum_b loss_b) / B`. `exp` and `ln` are [`exp_f32`] and
/// [`ln_f32`]: polynomial evaluations in plain f32 operations (no fused
/// multiply-add, no platform libm), within a few units in the last place.
///
/// # Errors
///
/// [`Error::Shape`] if a label is not below `N`; [`Error::NonFinite`] if a
/// logit is NaN or infinite. Nothing is written on error.
///
/// Finite logits never give a NaN: `x - m <= 0` (it may round to `-inf`
/// for logits more than `f32::MAX` apart, whose `exp` is 0), `s >= 1`, so
/// every `p` is in `[0, 1]`; the loss is finite or `+inf` (the true loss
/// exceeds `f32::MAX`).
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
    // Each row's maximum, spread over the row of `dlogits`, then
    // `e = exp(x - m)` in one pass over every element (it vectorises; a
    // row at a time it did not, rows being short).
    let mut maxima = [0.0f32; B];
    for (((row, drow), &label), max) in logits
        .v
        .iter()
        .zip(dlogits.v.iter_mut())
        .zip(labels)
        .zip(maxima.iter_mut())
    {
        let mut m = row[0];
        let mut arg = 0;
        for (i, &v) in row.iter().enumerate() {
            if v > m {
                m = v;
                arg = i;
            }
        }
        correct += (arg == label) as usize;
        drow.fill(m);
        *max = m;
    }
    crate::accel::exp_of_differences(dlogits.flat_mut(), logits.flat());
    for (((row, drow), &label), &m) in logits
        .v
        .iter()
        .zip(dlogits.v.iter_mut())
        .zip(labels)
        .zip(&maxima)
    {
        let mut s = 0.0f32;
        for &d in drow.iter() {
            s += d;
        }
        for (i, d) in drow.iter_mut().enumerate() {
            let p = *d / s;
            *d = (p - if i == label { 1.0 } else { 0.0 }) * inv_b;
        }
        // `label < N` was checked above: the fallback is never taken.
        let at_label = row.get(label).copied().unwrap_or(m);
        total += ln_f32(s) - (at_label - m);
    }
    dlogits.fmt = None;
    Ok(LossOutput {
        loss: total * inv_b,
        correct,
    })
}

const LN2_HI: f32 = 0.693_145_75; // 0x3f317200: k * LN2_HI is exact for |k| < 2^9
const LN2_LO: f32 = 1.428_606_8e-6;
const LOG2_E: f32 = core::f32::consts::LOG2_E;

/// `d[i] = exp_f32(x[i] - d[i])` for every element (up to the shorter
/// length; compiled once per instruction set, see [`crate::accel`]).
#[inline(always)]
pub(crate) fn exp_of_differences(d: &mut [f32], x: &[f32]) {
    for (d, &x) in d.iter_mut().zip(x) {
        *d = exp_body(x - *d);
    }
}

/// `2^k` for `k` in `-149..=127` (exact).
#[inline(always)]
fn pow2(k: i32) -> f32 {
    crate::quant::pow2_f32(k)
}

/// `e^x` in plain f32 arithmetic, identical on every target.
///
/// Range reduction `x = k ln 2 + r`, `|r| <= ln(2)/2`, with `ln 2` split in
/// two parts (Cody-Waite), a degree-7 Taylor polynomial for `e^r` (truncation
/// below `1e-8` relative) and an exact scaling by `2^k`. Returns 0 below
/// `-103.3`, `+inf` above `88.73`, NaN for NaN.
pub fn exp_f32(x: f32) -> f32 {
    exp_body(x)
}

/// [`exp_f32`], inlined into the passes that vectorise it.
#[inline(always)]
fn exp_body(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > 88.73 {
        return f32::INFINITY;
    }
    if x < -103.3 {
        return 0.0;
    }
    let t = x * LOG2_E;
    let k = if t >= 0.0 {
        (t + 0.5) as i32
    } else {
        (t - 0.5) as i32
    };
    let kf = k as f32;
    let r = (x - kf * LN2_HI) - kf * LN2_LO;
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // Scale in two steps so that neither factor leaves the f32 range.
    let k1 = k / 2;
    p * pow2(k1) * pow2(k - k1)
}

/// Natural logarithm in plain f32 arithmetic, identical on every target.
///
/// `x = m 2^e` with `m` in `[sqrt(1/2), sqrt(2))`, `ln m = 2 atanh(t)`,
/// `t = (m - 1) / (m + 1)`, `|t| < 0.172`, by its series to `t^9`.
/// Returns NaN for negative input and NaN, `-inf` for 0, `+inf` for `+inf`.
pub fn ln_f32(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    if x.is_infinite() {
        return x;
    }
    let Some((mant, exp)) = crate::quant::decompose_f32(x) else {
        return f32::NAN;
    };
    // Normalise the significand to [1, 2): mant has at most 24 bits.
    let lead = 63 - mant.leading_zeros() as i32;
    let mut e = exp + lead;
    let mut m = mant as f32 * pow2(-lead);
    if m > core::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let mut s = 1.0 / 9.0;
    s = s * t2 + 1.0 / 7.0;
    s = s * t2 + 1.0 / 5.0;
    s = s * t2 + 1.0 / 3.0;
    s = s * t2 + 1.0;
    let ef = e as f32;
    ef * LN2_HI + (ef * LN2_LO + 2.0 * t * s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_ln_are_accurate() {
        let mut x = -103.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            if want > 1e-37 {
                assert!(
                    ((got - want) / want).abs() < 4e-7,
                    "exp({x}) = {got}, want {want}"
                );
            }
            x += 0.0137;
        }
        for &v in &[
            1e-30f32, 1e-5, 0.5, 0.7072, 0.99, 1.0, 1.0001, 2.0, 3.5, 1e10, 3e38,
        ] {
            let got = ln_f32(v) as f64;
            let want = (v as f64).ln();
            assert!(
                (got - want).abs() <= 4e-7 * want.abs().max(1.0),
                "ln({v}) = {got}, want {want}"
            );
        }
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(ln_f32(1.0), 0.0);
    }
}

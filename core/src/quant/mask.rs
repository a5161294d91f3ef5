//! The straight-through mask: one bit per element, set where the forward
//! quantization saturated.
//!
//! The backward pass uses the straight-through estimator: rounding passes the
//! gradient unchanged, and elements whose value was clamped to the code
//! range get zero gradient. The mask is packed 32 elements to a `u32` word
//! (bit `i % 32` of word `i / 32`), so a 784-element activation needs 25
//! words (100 bytes) of RAM.

use crate::error::{Error, Result};

/// Number of `u32` words a mask of `len` elements needs: `ceil(len / 32)`.
pub const fn words(len: usize) -> usize {
    len.div_ceil(32)
}

/// Whether element `i` is marked saturated. Out-of-range `i` reads as `false`.
pub fn is_set(mask: &[u32], i: usize) -> bool {
    match mask.get(i / 32) {
        Some(w) => w >> (i % 32) & 1 == 1,
        None => false,
    }
}

/// Check that `mask` can hold `len` elements.
///
/// # Errors
///
/// [`Error::MaskTooShort`] if `mask.len() < words(len)`.
pub const fn check(mask: &[u32], len: usize) -> Result<()> {
    if mask.len() < words(len) {
        return Err(Error::MaskTooShort {
            needed: words(len),
            found: mask.len(),
        });
    }
    Ok(())
}

/// Straight-through estimator: zero every `grad[i]` whose mask bit is set.
///
/// Works for f32 gradients and integer gradient codes alike (`T::default()`
/// is zero).
///
/// # Errors
///
/// [`Error::MaskTooShort`] if `mask` has fewer than `words(grad.len())` words.
///
/// # Examples
///
/// ```
/// use fixnn::quant::mask;
/// let mut grad = [0.5f32, -1.0, 2.0];
/// mask::apply_ste(&mut grad, &[0b010])?;
/// assert_eq!(grad, [0.5, 0.0, 2.0]);
/// # Ok::<(), fixnn::Error>(())
/// ```
pub fn apply_ste<T: Copy + Default>(grad: &mut [T], mask: &[u32]) -> Result<()> {
    check(mask, grad.len())?;
    for (chunk, &word) in grad.chunks_mut(32).zip(mask) {
        if word == 0 {
            continue;
        }
        for (i, g) in chunk.iter_mut().enumerate() {
            if word >> i & 1 == 1 {
                *g = T::default();
            }
        }
    }
    Ok(())
}

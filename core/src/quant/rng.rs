//! A counter-based random generator for stochastic rounding.
//!
//! A draw is a pure function of `(seed, tensor id, step, element index)`:
//! no state advances, so the bits do not depend on the order or the thread in
//! which elements are processed, and a device reproduces the desktop's draws
//! exactly. Only 32-bit integer operations are used (cheap on a Cortex-M0).
//!
//! Construction: the key words are absorbed one by one through an invertible
//! 32-bit mixer (xor-shift / odd-multiply rounds) into two key words `k0`,
//! `k1`; a draw is `mix(mix(index ^ k0) + k1)`. For a fixed key the map from
//! index to draw is a bijection of `u32`, so over all `2^32` indices every
//! value appears exactly once.

/// The stream of draws of one tensor at one training step.
///
/// # Examples
///
/// ```
/// use fixnn::Stream;
/// let s = Stream::new(42, 7, 0);
/// assert_eq!(s.draw(3), Stream::new(42, 7, 0).draw(3)); // pure function
/// assert_ne!(s.draw(3), Stream::new(42, 7, 1).draw(3)); // the next step differs
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stream {
    k0: u32,
    k1: u32,
}

/// One invertible mixing round on 32 bits (each step is a bijection).
const fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

impl Stream {
    /// The stream keyed by `seed` (the run's seed), `tensor` (a tensor id,
    /// unique within a model) and `step` (the training step or call count).
    pub const fn new(seed: u64, tensor: u32, step: u32) -> Self {
        let words = [seed as u32, (seed >> 32) as u32, tensor, step];
        let mut h: u32 = 0x243f_6a88;
        let mut i = 0;
        while i < words.len() {
            h = mix(h ^ words[i]).wrapping_add(0x9e37_79b9);
            i += 1;
        }
        Stream {
            k0: h,
            k1: mix(h ^ 0x85eb_ca6b),
        }
    }

    /// The uniform 32-bit draw for element `index`.
    pub const fn draw(&self, index: u32) -> u32 {
        mix(mix(index ^ self.k0).wrapping_add(self.k1))
    }
}

impl Default for Stream {
    /// `Stream::new(0, 0, 0)`.
    fn default() -> Self {
        Stream::new(0, 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_word_matters() {
        let base = Stream::new(1, 2, 3);
        for other in [
            Stream::new(1 | 1 << 40, 2, 3),
            Stream::new(0, 2, 3),
            Stream::new(1, 3, 3),
            Stream::new(1, 2, 4),
        ] {
            let same = (0..64).filter(|&i| other.draw(i) == base.draw(i)).count();
            assert!(same <= 1, "streams should be unrelated, {same} equal draws");
        }
    }

    #[test]
    fn bits_are_balanced() {
        let s = Stream::new(7, 0, 0);
        // (Miri interprets every operation: fewer draws there.)
        let n = if cfg!(miri) { 1u32 << 10 } else { 1u32 << 16 };
        // 6 sigma of a fair coin: 768 over 65536 draws.
        let six_sigma = 6.0 * (n as f64).sqrt() / 2.0;
        for bit in 0..32 {
            let ones = (0..n).filter(|&i| s.draw(i) >> bit & 1 == 1).count() as f64;
            assert!(
                (ones - n as f64 / 2.0).abs() < six_sigma,
                "bit {bit}: {ones}"
            );
        }
    }
}

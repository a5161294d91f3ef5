//! Helpers shared by the layer tests: deterministic random data and the
//! float64 comparison with documented bounds.
#![allow(dead_code)]

use fixnn::Stream;

/// `n` uniform values in `[-scale, scale)`, deterministic in `(seed, id)`.
pub fn uniform(seed: u64, id: u32, n: usize, scale: f32) -> Vec<f32> {
    let s = Stream::new(seed, id, 0);
    (0..n)
        .map(|i| ((s.draw(i as u32) >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

/// Unit roundoff of f32.
pub const U32: f64 = 1.0 / (1u64 << 24) as f64;

/// Bound on the error of an f32 sum of `k` products whose absolute values
/// sum to `abs_sum` (Higham's gamma_k, one extra rounding for each product
/// and one for a final conversion): `(k + 2) u / (1 - (k + 2) u) * abs_sum`.
pub fn f32_dot_bound(k: usize, abs_sum: f64) -> f64 {
    let g = (k as f64 + 2.0) * U32;
    g / (1.0 - g) * abs_sum + f64::MIN_POSITIVE
}

/// Assert `|got[i] - want[i]| <= tol[i]` for every element, naming the
/// first element that fails.
pub fn assert_within(what: &str, got: &[f32], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_eq!(got.len(), tol.len(), "{what}: length");
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i]).abs();
        assert!(
            err <= tol[i],
            "{what}[{i}]: got {} want {} error {err:e} > bound {:e}",
            got[i],
            want[i],
            tol[i]
        );
    }
}

/// The values as f64.
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// splitmix64: a small deterministic generator for test inputs.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// One element of `v`.
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

//! Running error bounds for f32 computations, evaluated in f64.
//!
//! An [`E`] is the exact value `v` of a quantity (computed in f64 from the
//! exact inputs) together with a bound `e` on `|computed - v|`, where
//! *computed* is what a sequence of f32 operations produces. Mirroring a
//! layer's f32 operations one by one with `E` gives a rigorous bound
//! (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3: every
//! correctly rounded f32 operation on exact operands `a ∘ b` returns
//! `(a ∘ b)(1 + d)` with `|d| <= u = 2^-24`, plus at most `2^-150` absolute
//! in the subnormal range); the operand errors are propagated exactly:
//!
//! * `a ± b`: `e_a + e_b`;
//! * `a * b`: `|a| e_b + |b| e_a + e_a e_b`;
//! * `a / b`: `(e_a + |a / b| e_b) / (|b| - e_b)`;
//! * `sqrt(a)`: `min(e_a / (sqrt(a) + sqrt(max(a - e_a, 0))), sqrt(e_a))`;
//!
//! then the rounding of the result adds `u (|v| + e) + 2^-149`.
//! The f64 evaluation itself rounds at `2^-53`, 2^29 times finer than the
//! f32 roundings it bounds; [`assert_e`] widens each bound by `2^-20`
//! relative to absorb it.
#![allow(dead_code)]

pub mod bn;
pub mod conv;

use fixnn::quant::Format;
use fixnn::Rounding;

/// Unit roundoff of f32.
pub const U: f64 = 1.0 / (1u64 << 24) as f64;
/// Absolute rounding error allowance of one f32 operation in the subnormal range.
pub const TINY: f64 = 1.401298464324817e-45; // 2^-149

/// An exact value and a bound on the error of its f32 computation.
#[derive(Clone, Copy, Debug)]
pub struct E {
    /// The exact value.
    pub v: f64,
    /// Bound on `|computed - v|`.
    pub e: f64,
}

fn rounded(v: f64, e: f64) -> E {
    E {
        v,
        e: e + U * (v.abs() + e) + TINY,
    }
}

impl E {
    /// An input the f32 computation holds exactly.
    pub fn exact(v: f64) -> E {
        E { v, e: 0.0 }
    }

    /// An exact value converted to f32 with one correct rounding.
    pub fn rounded(v: f64) -> E {
        rounded(v, 0.0)
    }

    /// `self + o`, rounded.
    pub fn add(self, o: E) -> E {
        rounded(self.v + o.v, self.e + o.e)
    }

    /// `self - o`, rounded.
    pub fn sub(self, o: E) -> E {
        rounded(self.v - o.v, self.e + o.e)
    }

    /// `self * o`, rounded.
    pub fn mul(self, o: E) -> E {
        rounded(
            self.v * o.v,
            self.v.abs() * o.e + o.v.abs() * self.e + self.e * o.e,
        )
    }

    /// `self / o`, rounded (an infinite bound if `o` may be zero).
    pub fn div(self, o: E) -> E {
        let v = self.v / o.v;
        let den = o.v.abs() - o.e;
        let e = if den > 0.0 {
            (self.e + v.abs() * o.e) / den
        } else {
            f64::INFINITY
        };
        rounded(v, e)
    }

    /// `sqrt(self)`, correctly rounded.
    pub fn sqrt(self) -> E {
        let v = self.v.max(0.0).sqrt();
        let lo = (self.v - self.e).max(0.0).sqrt();
        let e = if v + lo > 0.0 {
            (self.e / (v + lo)).min(self.e.sqrt())
        } else {
            self.e.sqrt()
        };
        rounded(v, e)
    }

    /// `-self` (exact).
    pub fn neg(self) -> E {
        E {
            v: -self.v,
            e: self.e,
        }
    }

    /// The value after quantization to `fmt` (if any) with `rounding`:
    /// the bound grows by the rounding error `q`.
    pub fn quantized(self, fmt: Option<Format>, rounding: Rounding) -> E {
        E {
            v: self.v,
            e: self.e + rounding_error(fmt, rounding),
        }
    }
}

/// The largest error of rounding to `fmt`: half a step for the nearest
/// modes, a step for floor and stochastic rounding, 0 without a format.
pub fn rounding_error(fmt: Option<Format>, rounding: Rounding) -> f64 {
    match fmt {
        None => 0.0,
        Some(f) => match rounding {
            // Tflite rounds power-of-two formats as NearestAway.
            Rounding::NearestEven | Rounding::NearestAway | Rounding::Tflite => {
                f.step() as f64 / 2.0
            }
            Rounding::Floor | Rounding::Stochastic => f.step() as f64,
        },
    }
}

/// The exact values clamped to `fmt`'s range (what a saturating
/// quantization of them approaches); unchanged without a format.
pub fn clamp(v: f64, fmt: Option<Format>) -> f64 {
    match fmt {
        Some(f) => v.clamp(f.to_f32(f.min_code()) as f64, f.to_f32(f.max_code()) as f64),
        None => v,
    }
}

/// Assert `|got[i] - clamp(want[i].v)| <= want[i].e` (widened by 2^-20
/// relative for the f64 evaluation), naming the first element that fails.
pub fn assert_e(what: &str, got: &[f32], want: &[E], fmt: Option<Format>) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, w)) in got.iter().zip(want).enumerate() {
        let target = clamp(w.v, fmt);
        let err = (g as f64 - target).abs();
        let bound = w.e * (1.0 + 1e-6) + w.v.abs() * 1e-15 + TINY;
        assert!(
            err <= bound,
            "{what}[{i}]: got {g:e} want {target:e} (exact {:e}) error {err:e} > bound {bound:e}",
            w.v
        );
    }
}

/// Sum of `terms` left to right in f32 (starting from the first term).
pub fn sum(terms: impl IntoIterator<Item = E>) -> E {
    let mut it = terms.into_iter();
    let Some(first) = it.next() else {
        return E::exact(0.0);
    };
    it.fold(first, E::add)
}

/// An f32 dot product as the backend's float path computes it:
/// `acc = 0; acc = acc + a * b` for each pair in order.
pub fn dot(pairs: impl IntoIterator<Item = (E, E)>) -> E {
    pairs
        .into_iter()
        .fold(E::exact(0.0), |acc, (a, b)| acc.add(a.mul(b)))
}

/// An exact integer-path sum of exact products, converted to f32 once.
pub fn dot_exact(pairs: impl IntoIterator<Item = (f64, f64)>) -> E {
    E::rounded(pairs.into_iter().map(|(a, b)| a * b).sum())
}

/// `n` uniform values in `[-scale, scale)` plus `offset`, deterministic in `(seed, id)`.
pub fn data(seed: u64, id: u32, n: usize, scale: f32, offset: f32) -> Vec<f32> {
    let s = fixnn::Stream::new(seed, id, 0);
    (0..n)
        .map(|i| {
            let u = (s.draw(i as u32) >> 8) as f32 / (1u32 << 24) as f32;
            offset + (u * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Quantize values to `fmt` (nearest-even), as an upstream layer would.
pub fn quantize_input(v: &mut [f32], fmt: Format) {
    for x in v.iter_mut() {
        let (m, e) = fixnn::quant::decompose_f32(*x).unwrap();
        let (q, _) = fixnn::quant::requantize_one(m, e, fmt, Rounding::NearestEven, 0);
        *x = fmt.to_f32(q);
    }
}

/// Assert that an f64 analytic gradient matches central differences of `f`
/// at `p` (perturbing one coordinate at a time by `h`), within
/// `tol * (1 + |g|)`.
pub fn check_fd(what: &str, p: &[f64], grad: &[f64], h: f64, tol: f64, f: impl Fn(&[f64]) -> f64) {
    assert_eq!(p.len(), grad.len());
    let mut q = p.to_vec();
    for i in 0..p.len() {
        q[i] = p[i] + h;
        let up = f(&q);
        q[i] = p[i] - h;
        let down = f(&q);
        q[i] = p[i];
        let fd = (up - down) / (2.0 * h);
        assert!(
            (fd - grad[i]).abs() <= tol * (1.0 + grad[i].abs()),
            "{what}[{i}]: analytic {:e} finite difference {fd:e}",
            grad[i]
        );
    }
}

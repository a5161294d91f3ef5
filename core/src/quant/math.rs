//! Correctly rounded f32 functions computed with integer arithmetic only:
//! [`sqrt_f32`] and [`ratio_to_f32`].
//!
//! Both return the exact result rounded to the nearest f32 (ties to even),
//! as IEEE-754 requires of `sqrt` and division. They never use a float
//! operation that could round, so they give the same bits on every target,
//! with or without an FPU, whatever library is linked. (micromath's `sqrt`
//! is a fast approximation; std's is correctly rounded but not available in
//! `no_std`, and with std linked `x.sqrt()` would silently switch to it.)

/// The value `(mag + frac) * 2^exp` (`0 <= frac < 1`, and `frac > 0`
/// exactly when `sticky`) rounded to the nearest f32, ties to even, with
/// gradual underflow and overflow to infinity.
///
/// Callers give `mag` at least 26 significant bits, or `sticky == false`,
/// so the bits below the kept ones decide the rounding.
fn round_to_f32(neg: bool, mag: u128, sticky: bool, exp: i32) -> f32 {
    if mag == 0 {
        return if neg { -0.0 } else { 0.0 };
    }
    let len = 128 - mag.leading_zeros() as i64;
    // Exponent of the last kept bit: 24 significant bits, or fewer when the
    // result is subnormal (the last bit of a subnormal is 2^-149).
    let lsb = (exp as i64 + len - 24).max(-149);
    let drop = lsb - exp as i64;
    let q = if drop <= 0 {
        // Fewer than 24 bits: exact (the caller guarantees sticky is false).
        mag << (-drop).min(127) as u32
    } else if drop > 127 {
        // Less than 2^(lsb - 1): rounds to zero.
        0
    } else {
        let d = drop as u32;
        let floor = mag >> d;
        let rem = mag - (floor << d);
        let half = 1u128 << (d - 1);
        let up = rem > half || (rem == half && (sticky || floor & 1 == 1));
        floor + up as u128
    };
    // q <= 2^24; q * 2^lsb is representable unless it overflows.
    let v = if lsb > 104 {
        f32::INFINITY
    } else {
        q as f32 * super::pow2_f32(lsb as i32)
    };
    if neg {
        -v
    } else {
        v
    }
}

/// `floor(sqrt(n))` and the remainder `n - floor(sqrt(n))^2`, digit by digit.
fn isqrt_rem(n: u64) -> (u64, u64) {
    let mut rem = n;
    let mut root = 0u64;
    let mut bit = 1u64 << 62;
    while bit > n {
        bit >>= 2;
    }
    while bit != 0 {
        if rem >= root + bit {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    (root, rem)
}

/// The square root of `x`, correctly rounded (nearest, ties to even; a
/// square root is never exactly halfway), computed with integers only.
///
/// IEEE-754 special cases: `sqrt(+0) = +0`, `sqrt(-0) = -0`,
/// `sqrt(+inf) = +inf`, NaN for NaN and for every `x < 0`. Subnormal inputs
/// are exact inputs like any other; the result is always normal or zero.
///
/// Method: `x = m * 2^e` exactly ([`decompose_f32`](super::decompose_f32)),
/// `e` made even, `m` shifted left by an even amount to at least 53 bits;
/// the integer square root then has at least 27 bits and its remainder
/// says whether anything was dropped (sticky bit) for the final rounding.
///
/// # Examples
///
/// ```
/// use fixnn::quant::{pow2_f32, sqrt_f32};
/// assert_eq!(sqrt_f32(2.25), 1.5);
/// assert_eq!(sqrt_f32(2.0), core::f32::consts::SQRT_2);
/// // sqrt(2^-149) = 2^-75 * sqrt(2)
/// assert_eq!(sqrt_f32(f32::from_bits(1)), pow2_f32(-75) * core::f32::consts::SQRT_2);
/// assert!(sqrt_f32(-1.0).is_nan());
/// ```
pub fn sqrt_f32(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 || x == f32::INFINITY {
        return x; // keeps the sign of zero
    }
    let Some((m, mut e)) = super::decompose_f32(x) else {
        return f32::NAN;
    };
    let mut m = m as u64; // x > 0, so m >= 1
    if e & 1 != 0 {
        m <<= 1;
        e -= 1;
    }
    let len = 64 - m.leading_zeros() as i32; // 1..=25
    let s = (54 - len + 1) & !1; // even, so that m << s has 53 or 54 bits
    let (root, rem) = isqrt_rem(m << s);
    round_to_f32(false, root as u128, rem != 0, (e - s) / 2)
}

/// `num / den * 2^exp`, correctly rounded to f32 (nearest, ties to even),
/// computed with integers only: the exact value of a rational statistic
/// (a mean or variance of integer codes) converted with one rounding.
///
/// `den == 0` gives NaN for `num == 0` and a signed infinity otherwise (as
/// an IEEE division would). Results below the f32 range round to subnormals
/// or zero, above it to infinity.
///
/// Exact for `den < 2^100` (every quotient bit is computed); larger
/// denominators are first shifted right, which may lose correct rounding.
///
/// # Examples
///
/// ```
/// use fixnn::quant::ratio_to_f32;
/// assert_eq!(ratio_to_f32(1, 3, 0), 1.0f32 / 3.0);
/// assert_eq!(ratio_to_f32(-7, 2, -3), -0.4375);
/// assert_eq!(ratio_to_f32(5, 1, -160), 0.0); // below the smallest subnormal / 2
/// ```
pub fn ratio_to_f32(num: i128, den: u128, exp: i32) -> f32 {
    let neg = num < 0;
    let mut a = num.unsigned_abs();
    let mut den = den;
    if den == 0 {
        return match (a, neg) {
            (0, _) => f32::NAN,
            (_, true) => f32::NEG_INFINITY,
            _ => f32::INFINITY,
        };
    }
    if a == 0 {
        return if neg { -0.0 } else { 0.0 };
    }
    let mut exp = exp;
    // Keep the denominator below 2^100 so that a 28-bit quotient can be
    // formed by shifting the numerator without overflow.
    let dlen = 128 - den.leading_zeros() as i32;
    if dlen > 100 {
        let sh = (dlen - 100) as u32;
        den >>= sh;
        exp = exp.saturating_sub(sh as i32);
    }
    let alen = 128 - a.leading_zeros() as i32;
    let dlen = 128 - den.leading_zeros() as i32;
    // a * 2^k / den in (2^26, 2^28): 27 or 28 quotient bits.
    let k = 27 - (alen - dlen);
    let (n, d) = if k >= 0 {
        (a << k as u32, den) // alen + k = dlen + 27 <= 127 bits
    } else {
        (a, den << (-k) as u32) // dlen - k = alen - 27 <= 101 bits
    };
    // `d` is not zero (`den != 0` was handled above and the shifts keep its
    // top bit); the checked forms keep a division-by-zero panic path out of
    // the panic audit on targets where the compiler cannot see that.
    let (Some(q), Some(r)) = (n.checked_div(d), n.checked_rem(d)) else {
        return f32::NAN;
    };
    a = q;
    round_to_f32(neg, a, r != 0, exp.saturating_sub(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn check_sqrt(x: f32) {
        let got = sqrt_f32(x);
        let want = x.sqrt();
        if want.is_nan() {
            assert!(got.is_nan(), "sqrt({x:e}) = {got:e}, want NaN");
        } else {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "sqrt({x:e} = {:#010x}): got {got:e} want {want:e}",
                x.to_bits()
            );
        }
    }

    #[test]
    fn special_values() {
        for x in [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            -1.0,
            -f32::MIN_POSITIVE,
            -f32::from_bits(1),
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            1.0,
            4.0,
            f32::EPSILON,
        ] {
            check_sqrt(x);
        }
        assert_eq!(sqrt_f32(-0.0).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn strided_sweep_of_every_exponent_and_subnormals() {
        // Every 509th positive bit pattern: all exponents, subnormals included,
        // with varied significands.
        // (Miri interprets every operation: a sparser sweep there.)
        let (stride, ends) = if cfg!(miri) {
            (509 * 641, 2)
        } else {
            (509, 64)
        };
        let mut b = 0u32;
        while b < 0x7f80_0000 {
            check_sqrt(f32::from_bits(b));
            b += stride;
        }
        // The first and last significands of every binade and the subnormals.
        for e in 0..255u32 {
            for f in (0..ends).chain((1 << 23) - ends..1 << 23) {
                check_sqrt(f32::from_bits(e << 23 | f));
            }
        }
    }

    #[test]
    fn pseudo_random_bits() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        // Miri interprets every operation: a sample of the sweep there.
        for _ in 0..if cfg!(miri) { 2_000 } else { 200_000 } {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            check_sqrt(f32::from_bits((s >> 32) as u32 & 0x7fff_ffff));
        }
    }

    #[test]
    fn exact_squares_are_exact() {
        for k in 1u32..if cfg!(miri) { 256 } else { 4096 } {
            for p in [-70i32, -60, -20, -1, 0, 1, 7, 40, 52] {
                let r = k as f32 * crate::quant::pow2_f32(p);
                let x = r * r; // exact: at most 24 significant bits
                assert_eq!(sqrt_f32(x), r, "sqrt({x:e})");
            }
        }
        // Squares of subnormal-range roots land in the subnormals.
        for k in 1u32..64 {
            let r = k as f32 * crate::quant::pow2_f32(-74); // r * r = k^2 2^-148, exact
            assert_eq!(sqrt_f32(r * r), r);
        }
    }

    /// `num/den*2^exp` vs `r`: compares `|exact - r|` with the distance to
    /// r's neighbours using exact integer cross-multiplication (i128 with
    /// scaled operands), for small operands.
    fn is_correctly_rounded(num: i64, den: u64, exp: i32, r: f32) -> bool {
        // Work in f64 only where it is exact: candidates are f32 (exact in
        // f64), and num, den < 2^26 so num/den*2^exp vs a candidate c is
        // decided by num * 2^exp - c * den, formed exactly as a rational.
        let dist = |c: f32| -> (i128, i32) {
            // num * 2^exp - c * den = (num * 2^(exp - ce) - cm * den) * 2^ce
            let Some((cm, ce)) = crate::quant::decompose_f32(c) else {
                return (i128::MAX, 0);
            };
            let lo = exp.min(ce);
            let a = (num as i128) << (exp - lo) as u32;
            let b = ((cm as i128) * den as i128) << (ce - lo) as u32;
            ((a - b).abs(), lo)
        };
        let cmp = |x: (i128, i32), y: (i128, i32)| -> core::cmp::Ordering {
            let lo = x.1.min(y.1);
            (x.0 << (x.1 - lo) as u32).cmp(&(y.0 << (y.1 - lo) as u32))
        };
        let d = dist(r);
        let up = f32::from_bits(r.to_bits().wrapping_add(1));
        let down = if r.to_bits() & 0x7fff_ffff == 0 {
            -r
        } else {
            f32::from_bits(r.to_bits() - 1)
        };
        [up, down].iter().all(|&n| {
            let dn = dist(n);
            match cmp(d, dn) {
                core::cmp::Ordering::Less => true,
                core::cmp::Ordering::Equal => r.to_bits() & 1 == 0,
                core::cmp::Ordering::Greater => false,
            }
        })
    }

    #[test]
    fn ratios_are_correctly_rounded() {
        let mut s = 0x1234_5678u64;
        let mut cases: Vec<(i64, u64, i32)> = Vec::new();
        for _ in 0..if cfg!(miri) { 500 } else { 20_000 } {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let num = ((s >> 40) as i64) - (1 << 23);
            let den = ((s >> 8) & 0xff_ffff) + 1;
            let exp = ((s & 0x3f) as i32) - 32;
            cases.push((num, den, exp));
        }
        cases.extend([
            (1, 3, 0),
            (2, 3, 0),
            (1, 1, -149),
            (3, 2, -150),
            (1, 2, -149),
        ]);
        for (num, den, exp) in cases {
            let r = ratio_to_f32(num as i128, den as u128, exp);
            if num == 0 {
                assert_eq!(r, 0.0);
                continue;
            }
            assert!(
                is_correctly_rounded(num, den, exp, r),
                "{num}/{den}*2^{exp} -> {r:e}"
            );
        }
        // Ties to even at the subnormal boundary: 3/2 * 2^-149 -> 2 * 2^-149.
        assert_eq!(ratio_to_f32(3, 2, -149).to_bits(), 2);
        assert_eq!(ratio_to_f32(1, 2, -149).to_bits(), 0);
        assert_eq!(ratio_to_f32(1, 1, 128), f32::INFINITY);
        assert_eq!(ratio_to_f32(-1, 0, 0), f32::NEG_INFINITY);
        assert!(ratio_to_f32(0, 0, 0).is_nan());
        // Huge exact operands: (2^100 + 1) / 2^100 rounds to 1.
        assert_eq!(ratio_to_f32((1i128 << 100) + 1, 1u128 << 100, 0), 1.0);
        assert_eq!(ratio_to_f32(i128::MAX, 1, -127), 1.0);
    }
}

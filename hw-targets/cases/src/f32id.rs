//! The f32 identity sweep: every f32 function fixnn's results depend on,
//! run over one deterministic set of inputs, hashed per function.
//!
//! The desktop (a std build) and a device (a no_std build for Cortex-M,
//! hard-float or soft-float) run [`sweep`] and must print the same lines:
//! equal hashes mean every output has the same bits. A function whose
//! implementation changes with the build (std's float methods shadowing
//! micromath's, a soft-float library rounding differently from an FPU, an
//! FPU flushing subnormals) changes its hash.
//!
//! Functions: [`sqrt_f32`], [`exp_f32`], [`ln_f32`], the parameter
//! initialisation bound `1 / sqrt_f32(fan_in)`, [`acc_to_f32`],
//! [`ratio_to_f32`], [`pow2_f32`], [`round_f32`] (each rounding mode, on
//! the f32 inputs) and f32 -> code / code -> f32 of [`Format`]
//! ([`Format::code_of`], [`Format::to_f32`]).
//!
//! Inputs: every special value (zeros, infinities, NaNs, the smallest and
//! largest subnormals and normals), one value in each of the 2^18 blocks of
//! 2^14 consecutive bit patterns (so every sign, exponent and leading
//! significand bits, with pseudo-random low bits), every bit pattern
//! within 4096 of 1.0 (where `ln` cancels) and a 1/64 grid of `[-110, 100]`
//! (the whole range where `exp` is neither 0 nor infinite).

use fixnn::layers::{exp_f32, ln_f32};
use fixnn::quant::{acc_to_f32, pow2_f32, ratio_to_f32, round_f32, sqrt_f32};
use fixnn::{Format, Rounding};

/// FNV-1a, 64 bits, over little-endian words.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    const fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn f32(&mut self, v: f32) {
        self.bytes(&v.to_bits().to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.bytes(&v.to_le_bytes());
    }
}

/// Special f32 values.
const SPECIAL: [u32; 22] = [
    0x0000_0000, // +0
    0x8000_0000, // -0
    0x7f80_0000, // +inf
    0xff80_0000, // -inf
    0x7fc0_0000, // quiet NaN
    0xffc0_0000, // negative quiet NaN
    0x7f80_0001, // signalling NaN
    0x7fff_ffff, // NaN, all payload bits
    0x0000_0001, // smallest subnormal
    0x8000_0001,
    0x007f_ffff, // largest subnormal
    0x807f_ffff,
    0x0080_0000, // smallest normal
    0x8080_0000,
    0x7f7f_ffff, // largest finite
    0xff7f_ffff,
    0x3f80_0000, // 1
    0xbf80_0000, // -1
    0x3f00_0000, // 0.5
    0x42b1_7218, // ~88.72: exp's overflow edge
    0xc2ce_8ed0, // ~-103.28: exp's underflow edge
    0x3f7f_ffff, // just below 1
];

/// Step of the `exp` grid: 1/64.
const GRID: f32 = 0.015_625;

/// Calls `f` on every f32 input of the sweep, in a fixed order.
fn each_input(mut f: impl FnMut(f32)) {
    for b in SPECIAL {
        f(f32::from_bits(b));
    }
    // One value per block of 2^14 bit patterns.
    let mut s = 0x2545_f491_4f6c_dd1du64;
    for i in 0..1u32 << 18 {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        f(f32::from_bits(i << 14 | (s >> 50) as u32));
    }
    // Every bit pattern within 4096 of 1.0.
    let one = 1.0f32.to_bits();
    for b in one - 4096..=one + 4096 {
        f(f32::from_bits(b));
    }
    // exp's whole finite, non-zero range on a 1/64 grid (exact multiples).
    for k in -110 * 64..=100 * 64 {
        f(k as f32 * GRID);
    }
}

/// The integer-to-f32 conversions' inputs: `(acc, exp)` pairs from a fixed
/// generator, magnitudes from 1 to 2^63, exponents over -300..=300.
fn each_acc(mut f: impl FnMut(i64, i32)) {
    for (a, e) in [
        (0i64, 0i32),
        (1, -149),
        (1, -150),
        (-1, 127),
        (1, 128),
        (i64::MAX, 0),
        (i64::MIN, 0),
        (i64::MIN, -300),
        ((1 << 24) + 1, 0), // a tie at 24 bits
        (-((1 << 25) + 3), -10),
    ] {
        f(a, e);
    }
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..1u32 << 16 {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let shift = (s >> 58) as u32; // 0..64
        let acc = ((s >> 1) as i64) >> shift;
        let exp = ((s >> 20) % 601) as i32 - 300;
        f(acc, exp);
    }
}

/// Run the sweep; call `line(name, count, hash)` once per function, in a
/// fixed order.
pub fn sweep(mut line: impl FnMut(&'static str, u32, u64)) {
    let mut one = |name: &'static str, run: &mut dyn FnMut(&mut Fnv) -> u32| {
        let mut h = Fnv::new();
        let n = run(&mut h);
        line(name, n, h.0);
    };
    one("sqrt_f32", &mut |h| {
        let mut n = 0;
        each_input(|x| {
            h.f32(sqrt_f32(x));
            n += 1;
        });
        n
    });
    one("exp_f32", &mut |h| {
        let mut n = 0;
        each_input(|x| {
            h.f32(exp_f32(x));
            n += 1;
        });
        n
    });
    one("ln_f32", &mut |h| {
        let mut n = 0;
        each_input(|x| {
            h.f32(ln_f32(x));
            n += 1;
        });
        n
    });
    one("init_bound", &mut |h| {
        // 1 / sqrt(fan_in), as the models initialise their parameters.
        for fan_in in 1..=1u32 << 16 {
            h.f32(1.0 / sqrt_f32(fan_in as f32));
        }
        1 << 16
    });
    one("acc_to_f32", &mut |h| {
        let mut n = 0;
        each_acc(|a, e| {
            h.f32(acc_to_f32(a, e));
            n += 1;
        });
        n
    });
    one("ratio_to_f32", &mut |h| {
        let mut n = 0;
        each_acc(|a, e| {
            // Denominators 1 .. 2^40 from the accumulator's bits.
            let den = (a.unsigned_abs() >> 23 | 1) as u128;
            h.f32(ratio_to_f32(a as i128 * 977, den, e));
            n += 1;
        });
        n
    });
    one("pow2_f32", &mut |h| {
        for e in -300..=300 {
            h.f32(pow2_f32(e));
        }
        601
    });
    for (name, rounding) in [
        ("round_f32_nearest_even", Rounding::NearestEven),
        ("round_f32_nearest_away", Rounding::NearestAway),
        ("round_f32_floor", Rounding::Floor),
        ("round_f32_stochastic", Rounding::Stochastic),
    ] {
        one(name, &mut |h| {
            let mut n = 0u32;
            each_input(|x| {
                let Some(f) = format_for(n) else { return };
                let (q, sat) = round_f32(x, f, rounding, n.wrapping_mul(0x9e37_79b9));
                h.i32(q);
                h.bytes(&[sat as u8]);
                n += 1;
            });
            n
        });
    }
    one("format_code_of_to_f32", &mut |h| {
        let mut n = 0u32;
        each_input(|x| {
            let Some(f) = format_for(n) else { return };
            let q = f.code_of(x);
            h.i32(q);
            h.f32(f.to_f32(q));
            n += 1;
        });
        n
    });
}

/// The format used for input `n`: every bit width 2..=16, scales from -128
/// to 127.
/// (Every such format is valid: never `None`.)
fn format_for(n: u32) -> Option<Format> {
    let bits = 2 + (n % 15) as u8;
    let scale = (n.wrapping_mul(37) % 256) as u8 as i8;
    Format::new(bits, scale).ok()
}

//! The x86-64-v4 copies against the portable bodies, bit for bit, and
//! split passes against whole ones.

use super::*;
use crate::quant::{Clamp, Rounding, Stream};
use std::vec::Vec;

/// Whether this CPU runs the `v4` copies (else their checks are skipped).
fn v4_here() -> bool {
    let ok = std::is_x86_feature_detected!("avx")
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("bmi1")
        && std::is_x86_feature_detected!("bmi2")
        && std::is_x86_feature_detected!("f16c")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("lzcnt")
        && std::is_x86_feature_detected!("movbe")
        && std::is_x86_feature_detected!("popcnt")
        && std::is_x86_feature_detected!("sse3")
        && std::is_x86_feature_detected!("ssse3")
        && std::is_x86_feature_detected!("sse4.1")
        && std::is_x86_feature_detected!("sse4.2")
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512cd")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("avx512vl");
    if !ok {
        std::eprintln!("this CPU lacks x86-64-v4: the accelerated copies are not compared");
    }
    ok
}

/// Random f32 values of every kind: NaN, infinities, signed zeros,
/// subnormals, huge values, values near the steps of `step` (ties
/// included), and random bit patterns.
fn values(seed: u32, len: usize, step: f32) -> Vec<f32> {
    let s = Stream::new(77, seed, 1);
    (0..len as u32)
        .map(|i| {
            let d = s.draw(i);
            let e = s.draw(i ^ 0x8000_0000);
            match d % 13 {
                0 => f32::NAN,
                1 => f32::from_bits(0xffc0_0000 | (e & 0x3f_ffff)), // -NaN, payloads
                2 => [f32::INFINITY, f32::NEG_INFINITY][(e & 1) as usize],
                3 => [0.0, -0.0][(e & 1) as usize],
                4 => f32::from_bits(e & 0x807f_ffff), // subnormal, either sign
                5 => f32::from_bits((e & 0x8000_0000) | 0x7f00_0000 | (e & 0x7f_ffff)), // huge
                6 | 7 => ((e % 2000) as f32 * 0.5 - 500.0) * step, // halves of steps
                8 => ((e % 200_000) as f32 - 100_000.0) * step,
                9 => f32::from_bits(e & 0x80ff_ffff), // tiny normals
                _ => f32::from_bits(e),
            }
        })
        .collect()
}

/// Calls a `v4` copy: only after `v4_here()` said yes.
macro_rules! v4 {
    ($f:ident($($a:expr),*)) => {
        // SAFETY: every caller returned early unless the CPU has the
        // features (`v4_here`).
        unsafe { v4::$f($($a),*) }
    };
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const ROUNDINGS: [Rounding; 5] = [
    Rounding::NearestEven,
    Rounding::NearestAway,
    Rounding::Floor,
    Rounding::Stochastic,
    Rounding::Tflite,
];

#[test]
fn v4_quantize_equals_portable() {
    if !v4_here() {
        return;
    }
    let mut case = 0u32;
    for b in 2..=16u8 {
        for scale in [
            -128i8, -127, -126, -100, -20, -3, 0, 2, 7, 30, 100, 126, 127,
        ] {
            for clamp in [Clamp::Hardware, Clamp::Nics] {
                let Ok(f) = Format::with_clamp(b, scale, clamp) else {
                    continue;
                };
                for rounding in ROUNDINGS {
                    case += 1;
                    let len = (Stream::new(1, case, 0).draw(0) % 300) as usize;
                    let x = values(case, len, f.step());
                    let r = Rounder::new(rounding, Stream::new(3, case, 4)).at(case * 7919);
                    // In place, with and without a mask.
                    let (mut a, mut b2) = (x.clone(), x.clone());
                    let (mut sa, mut sb) = (std::vec![true; len], std::vec![false; len]);
                    let na = crate::quant::slice::in_place_body(&mut a, f, &r, Some(&mut sa));
                    let nb = v4!(quantize_in_place(&mut b2, f, &r, Some(&mut sb)));
                    let what = (f, rounding, len);
                    assert_eq!((bits(&a), &sa, na), (bits(&b2), &sb, nb), "{what:?}");
                    let (mut a, mut b2) = (x.clone(), x.clone());
                    let na = crate::quant::slice::in_place_body(&mut a, f, &r, None);
                    let nb = v4!(quantize_in_place(&mut b2, f, &r, None));
                    assert_eq!((bits(&a), na), (bits(&b2), nb), "{what:?}");
                    // Into.
                    let (mut a, mut b2) = (std::vec![1.0; len], std::vec![2.0; len]);
                    let (mut sa, mut sb) = (std::vec![true; len], std::vec![false; len]);
                    let na = crate::quant::slice::into_body(&x, &mut a, f, &r, Some(&mut sa));
                    let nb = v4!(quantize_into(&x, &mut b2, f, &r, Some(&mut sb)));
                    assert_eq!((bits(&a), &sa, na), (bits(&b2), &sb, nb), "{what:?}");
                }
            }
        }
    }
}

#[test]
fn v4_element_passes_equal_portable() {
    if !v4_here() {
        return;
    }
    for case in 0..400u32 {
        let s = Stream::new(9, case, 0);
        let len = (s.draw(0) % 700) as usize;
        let x = values(case, len, 1.0);
        let y = values(case + 10_000, len, 0.01);
        let z = values(case + 20_000, len, 1e-30);

        // Maxima of magnitudes: also over finite-only data.
        let finite: Vec<f32> = x
            .iter()
            .map(|&v| if v.is_finite() { v } else { 1.5 })
            .collect();
        for d in [&x, &finite] {
            assert_eq!(
                crate::quant::range::max_abs_bits_of(d),
                v4!(max_abs_bits(d))
            );
        }

        // SGD with hyper-parameters of every kind.
        // Hyper-parameters of every kind (`Sgd::update` refuses
        // non-finite ones, the pass does not).
        let h = values(case + 30_000, 3, 0.001);
        let hf: Vec<f32> = h
            .iter()
            .map(|&v| if v.is_finite() { v } else { 0.25 })
            .collect();
        for h in [
            [h[0], h[1], h[2]],
            [hf[0], hf[1], hf[2]],
            [0.01, 0.5, 0.0],
            [0.1, 0.9, 1e-4],
        ] {
            let (mut wa, mut ma) = (y.clone(), z.clone());
            let (mut wb, mut mb) = (y.clone(), z.clone());
            crate::optim::sgd_f32(&mut wa, &mut ma, &x, h);
            v4!(sgd(&mut wb, &mut mb, &x, h));
            assert_eq!((bits(&wa), bits(&ma)), (bits(&wb), bits(&mb)), "{h:?}");
        }

        // The straight-through mask.
        let some: Vec<bool> = (0..len as u32)
            .map(|i| s.draw(i + 1).is_multiple_of(97))
            .collect();
        let half: Vec<bool> = (0..len as u32).map(|i| s.draw(i + 1) & 1 == 1).collect();
        for sat in [some, half, std::vec![false; len]] {
            let (mut a, mut b) = (x.clone(), x.clone());
            crate::tensor::zero_clamped(&mut a, &sat);
            v4!(zero_clamped(&mut b, &sat));
            assert_eq!(bits(&a), bits(&b));
            let want: Vec<u32> = x
                .iter()
                .zip(&sat)
                .map(|(&v, &s)| if s { 0 } else { v.to_bits() })
                .collect();
            assert_eq!(bits(&a), want);
        }

        // exp of differences (the loss), against `exp_f32` element by element.
        let small: Vec<f32> = values(case + 40_000, len, 0.05);
        for d0 in [&y, &small] {
            let (mut a, mut b) = (d0.clone(), d0.clone());
            crate::layers::loss::exp_of_differences(&mut a, &x);
            v4!(exp_of_differences(&mut b, &x));
            assert_eq!(bits(&a), bits(&b));
            let want: Vec<u32> = x
                .iter()
                .zip(d0.iter())
                .map(|(&x, &d)| crate::layers::exp_f32(x - d).to_bits())
                .collect();
            assert_eq!(bits(&a), want);
        }

        // Accumulators to f32, every exponent range.
        let acc: Vec<i64> = (0..len as u32)
            .map(|i| {
                let d = ((s.draw(2 * i + 7) as u64) << 32 | s.draw(2 * i + 8) as u64) as i64;
                match d & 7 {
                    0 => 0,
                    1 => i64::MIN,
                    2 => i64::MAX,
                    3 => (d >> 40) & !0xff, // ties at 24 bits
                    4 => d >> 50,
                    _ => d >> (d & 63),
                }
            })
            .collect();
        let exp = (s.draw(1) % 700) as i32 - 350;
        for exp in [exp, 0, -20, 200, -200] {
            let (mut a, mut b) = (std::vec![1.0; len], std::vec![2.0; len]);
            crate::quant::accs_to_f32(&mut a, &acc, exp);
            v4!(accs_to_f32(&mut b, &acc, exp));
            assert_eq!(bits(&a), bits(&b), "exp {exp}");
            let want: Vec<u32> = acc
                .iter()
                .map(|&q| crate::quant::acc_to_f32(q, exp).to_bits())
                .collect();
            assert_eq!(bits(&a), want, "exp {exp}");
        }

        // Bias addition, saturating, for several layouts.
        let channels = 1 + (s.draw(3) % 12) as usize;
        let bias: Vec<i64> = acc.iter().rev().take(channels).map(|&b| b >> 2).collect();
        let spatial = (s.draw(4) % 5) as usize;
        let up = s.draw(5) % 40;
        let (mut a, mut b) = (acc.clone(), acc.clone());
        crate::layers::product::add_bias(&mut a, &bias, spatial, up);
        v4!(add_bias(&mut b, &bias, spatial, up));
        assert_eq!(a, b);
        // And the old loop, chunk `i` of channel `i % C`.
        let mut want = acc.clone();
        if bias.len() == channels {
            for (i, chunk) in want.chunks_mut(spatial.max(1)).enumerate() {
                for v in chunk {
                    *v = (*v << up).saturating_add(bias[i % channels]);
                }
            }
            assert_eq!(a, want);
        }
    }
}

/// Held by the tests that install hooks (they would remove each other's).
static HOOKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the jobs one after the other, last first (a stand-in for threads
/// that finish in any order).
fn backwards(jobs: &mut [&mut (dyn FnMut() + Send)]) {
    for j in jobs.iter_mut().rev() {
        j();
    }
}

#[test]
#[cfg_attr(miri, ignore = "hundreds of thousands of elements")]
fn split_passes_equal_whole_ones() {
    // Other tests running meanwhile get the hook and the x86-64-v4 copies
    // too: their results must not change either.
    let _hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner());
    set_parallel(|| 3, backwards);
    if v4_here() {
        // SAFETY: the CPU has every feature (checked just above).
        unsafe { enable_x86_64_v4() };
    }
    let len = 2 * MIN_PART + 1000;
    for (case, rounding) in ROUNDINGS.into_iter().enumerate() {
        let f = Format::new(8, -2).unwrap_or(Format::new(8, 0).unwrap());
        // Finite values (what the callers pass).
        let x: Vec<f32> = values(case as u32, len, f.step())
            .into_iter()
            .map(|v| if v.is_finite() { v } else { 0.75 })
            .collect();
        let r = Rounder::new(rounding, Stream::new(5, 6, 7)).at(u32::MAX - 5000);
        let mut want = x.clone();
        let mut want_sat = std::vec![false; len];
        let want_n = crate::quant::slice::in_place_body(&mut want, f, &r, Some(&mut want_sat));
        let mut got = x.clone();
        let mut sat = std::vec![true; len];
        let n = crate::quant::quantize_values_in_place(&mut got, f, &r, Some(&mut sat));
        assert_eq!((bits(&got), &sat, n), (bits(&want), &want_sat, want_n));
        let mut got = std::vec![0.0; len];
        let n = crate::quant::quantize_values_into(&x, &mut got, f, &r, None);
        assert_eq!((bits(&got), n), (bits(&want), want_n));

        let mut with_nan = x.clone();
        with_nan[len - 3] = f32::from_bits(0x7fff_ffff);
        for d in [&x, &with_nan] {
            let want = crate::quant::range::max_abs_bits_of(d);
            assert_eq!(crate::quant::range::max_abs_bits(d), want);
        }

        let (mut w, mut m) = (x.clone(), want.clone());
        let (mut w2, mut m2) = (x.clone(), want.clone());
        crate::optim::sgd_f32(&mut w, &mut m, &want, [0.01, 0.5, 1e-4]);
        split_pass(
            len,
            (&mut w2[..], (&mut m2[..], &want[..])),
            |(w, (m, g)), _| sgd(w, m, g, [0.01, 0.5, 1e-4]),
            |(), ()| (),
        );
        assert_eq!((bits(&w), bits(&m)), (bits(&w2), bits(&m2)));
    }
    clear_parallel();
    disable_x86_64_v4();
}

/// Runs only the first job: the pass must finish the others itself.
fn first_only(jobs: &mut [&mut (dyn FnMut() + Send)]) {
    if let Some(j) = jobs.first_mut() {
        j();
    }
}

#[test]
fn split_pass_runs_every_part_once() {
    // Small enough for Miri: two parts of the cheapest passes.
    let _hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner());
    let len = 2 * MIN_PART + 70;
    let x: Vec<f32> = (0..len).map(|i| i as f32 - 5000.0).collect();
    let sat: Vec<bool> = (0..len).map(|i| i % 3 == 0).collect();
    let mut want = x.clone();
    crate::tensor::zero_clamped(&mut want, &sat);
    for hook in [backwards as RunJobs, first_only] {
        set_parallel(|| 2, hook);
        let mut got = x.clone();
        let offsets = split_pass(
            len,
            (&mut got[..], &sat[..]),
            |(g, s), off| {
                crate::tensor::zero_clamped(g, s);
                // Which parts ran, as a bit per part start.
                1u64 << (off / (len / 2))
            },
            |a, b| a | b,
        );
        assert_eq!(offsets, 0b11);
        assert_eq!(bits(&got), bits(&want));
        let m = split_pass(
            len,
            &x[..],
            |x, _| crate::quant::range::max_abs_bits_of(x),
            u32::max,
        );
        assert_eq!(m, (len as f32 - 5001.0).to_bits());
    }
    clear_parallel();
}

//! `RangeMethod::Running`: golden EMA and scale sequences computed by hand,
//! the hysteresis against a range oscillating around a power of two, the
//! number of steps a step change takes, and the state kept by layers and
//! in config JSON.
//!
//! Packed state (see `fixnn::quant::running`): `(e + 128) << 24 | m`,
//! value `m * 2^(e - 23)`, `m` in `[2^23, 2^24)`. So `0x80xx_xxxx` is a
//! range in `[1, 2)` and `0x81xx_xxxx` one in `[2, 4)`.

use fixnn::backend::RefBackend;
use fixnn::layers::{Layer, Linear, Quant};
use fixnn::quant::range::{choose_scale_codes, choose_scale_f32};
use fixnn::quant::running;
use fixnn::tensor::{Ctx, Tensor, S2};
use fixnn::{Error, Method, QuantConfig, RangeMethod, Rounding};

fn running_cfg(bits: u8) -> QuantConfig {
    QuantConfig {
        range: RangeMethod::Running,
        ..QuantConfig::auto(bits)
    }
}

/// `(ema, scale)` after each batch of f32 data.
fn series_f32(batches: &[&[f32]]) -> Vec<(u32, i8)> {
    let mut cfg = running_cfg(8);
    batches
        .iter()
        .map(|x| {
            let f = cfg.update_scale_f32(x).unwrap().unwrap();
            assert_eq!(f.scale(), cfg.scale);
            (cfg.ema, cfg.scale)
        })
        .collect()
}

#[test]
fn golden_f32_sequence() {
    let got = series_f32(&[
        &[0.5, -1.5],
        &[3.5],
        &[-0.25, 0.125],
        &[0.0, -0.0],
        &[8.0],
        &[16.0],
        &[16.0],
    ]);
    let want = [
        // o = 1.5 initialises r: m = 1.5 * 2^23 = 0xC00000, e = 0; scale
        // ceil(log2 1.5) = 1.
        (0x80C0_0000, 1),
        // r = 1.5 + (3.5 - 1.5) / 16 = 1.625 = 0xD00000 * 2^-23; c = 1 = s.
        (0x80D0_0000, 1),
        // r = 1.625 + (0.25 - 1.625) / 16 = 1.5390625 = 197/128,
        // m = 197 * 2^16 = 0xC50000.
        (0x80C5_0000, 1),
        // All zero: o = 0, r = 197/128 * 15/16 = 2955/2048, m = 2955 * 2^12 = 0xB8B000.
        (0x80B8_B000, 1),
        // r = (15 * 2955/2048 + 8) / 16 = 60709/32768, m = 60709 * 2^8 = 0xED2500.
        (0x80ED_2500, 1),
        // r = (15 * 60709/32768 + 16) / 16 = 1434923/524288 = 2.7369 (e = 1),
        // m = 1434923 * 8 = 0xAF2958; c = 2 > 1: the scale goes up at once.
        (0x81AF_2958, 2),
        // r = (15 * 1434923/524288 + 16) / 16 = 29912453/8388608 (e = 1),
        // m = 29912453 / 2 = 14956226.5, rounded up (toward o) to 14956227 = 0xE436C3.
        (0x81E4_36C3, 2),
    ];
    assert_eq!(got, want);
}

/// A real-valued scale with range Running: the moving average stands for
/// `max |x|` (hardware clamp: the range is `r * 128 / 127` at 8 bits,
/// rounded up to a 31-bit multiplier), where range Max follows each batch.
/// The integer-data path keeps the same state, and eval (Fixed) keeps it.
#[test]
fn golden_real_valued_running_range() {
    let real = |range| QuantConfig {
        range,
        ..QuantConfig::auto_real(8)
    };
    let (mut run, mut max) = (real(RangeMethod::Running), real(RangeMethod::Max));
    // r = 1.5: range 1.5 * 128/127 = 2 * (96/127), M = ceil(96 * 2^31 / 127).
    run.update_real_f32(&[0.5, -1.5]).unwrap();
    assert_eq!(
        (run.ema, run.scale, run.multiplier),
        (0x80C0_0000, 1, 1_623_294_727)
    );
    // r = 1.5 + (3.5 - 1.5) / 16 = 1.625: M = ceil(104 * 2^31 / 127);
    // Max takes 3.5: range 4 * (112/127), M = ceil(112 * 2^31 / 127).
    let rf = run.update_real_f32(&[3.5]).unwrap().unwrap();
    assert_eq!(
        (run.ema, run.scale, run.multiplier),
        (0x80D0_0000, 1, 1_758_569_287)
    );
    assert_eq!((rf.format().scale(), rf.multiplier()), (1, 1_758_569_287));
    max.update_real_f32(&[3.5]).unwrap();
    assert_eq!((max.scale, max.multiplier), (2, 1_893_843_848));
    // The same data as codes (3.5 = 7 * 2^-1) takes the same step.
    let mut codes = real(RangeMethod::Running);
    codes.update_real_codes(-1, &[1i32, -3]).unwrap();
    codes.update_real_codes(-1, &[7i32]).unwrap();
    assert_eq!(codes, run);
    // Fixed keeps scale, multiplier and state.
    let mut fixed = QuantConfig {
        method: Method::Fixed,
        ..run
    };
    fixed.update_real_f32(&[100.0]).unwrap();
    assert_eq!(
        (fixed.scale, fixed.multiplier, fixed.ema),
        (run.scale, run.multiplier, run.ema)
    );
}

#[test]
fn golden_f32_rounding_toward_the_observation() {
    let got = series_f32(&[&[1.0], &[1.000_000_1], &[1.0], &[-1.0]]);
    let want = [
        (0x8080_0000, 0), // r = 1: m = 2^23
        // 1 + (2^-23) / 16 = 1 + 2^-27, rounded up to 1 + 2^-23; c = 1 > 0.
        (0x8080_0001, 1),
        // 1 + 2^-23 - 2^-27, rounded down to 1: not below 3/4 * 2^0, scale stays.
        (0x8080_0000, 1),
        // o = r: unchanged.
        (0x8080_0000, 1),
    ];
    assert_eq!(got, want);
}

#[test]
fn golden_codes_sequence() {
    let mut cfg = running_cfg(6);
    let mut step = |exp: i32, q: &[i32]| {
        let f = cfg.update_scale_codes(exp, q).unwrap().unwrap();
        assert_eq!(f.scale(), cfg.scale);
        (cfg.ema, cfg.scale)
    };
    let got = [
        step(-4, &[3, -40]),
        step(-4, &[20]),
        step(-24, &[(1 << 25) - 1, 5]),
        step(-4, &[0, 0]),
        step(-4, &[1]),
    ];
    let want = [
        // o = 40 / 16 = 2.5 = 1.25 * 2^1: m = 0xA00000, e = 1; scale 2.
        (0x81A0_0000, 2),
        // r = 2.5 + (1.25 - 2.5) / 16 = 2.421875 = 155/64, m = 155 * 2^16 = 0x9B0000.
        (0x819B_0000, 2),
        // o = (2^25 - 1) * 2^-24 has 25 significant bits: rounded up to 2.
        // r = 2.421875 + (2 - 2.421875) / 16 = 2453/1024, m = 2453 * 2^12 = 0x995000.
        (0x8199_5000, 2),
        // o = 0: r = 2453/1024 * 15/16 = 36795/16384, m = 36795 * 2^8 = 0x8FBB00.
        (0x818F_BB00, 2),
        // o = 1/16: r = (15 * 36795/16384 + 1/16) / 16 = 552949/262144,
        // m = 552949 * 16 = 0x86FF50; 2.109 is not below 3/4 * 2^1.
        (0x8186_FF50, 2),
    ];
    assert_eq!(got, want);
}

#[test]
fn first_observation_is_max_and_stateless_running_is_max() {
    let x = [0.3f32, -2.5, 1e-3];
    let rn = Rounding::NearestEven;
    let max = choose_scale_f32(RangeMethod::Max, 8, rn, &x).unwrap();
    assert_eq!(choose_scale_f32(RangeMethod::Running, 8, rn, &x), Ok(max));
    let mut cfg = running_cfg(8);
    cfg.scale = 9;
    cfg.update_scale_f32(&x).unwrap();
    assert_eq!(cfg.scale, max);
    let q = [7i16, -300, 2];
    let max = choose_scale_codes(RangeMethod::Max, 8, rn, -5, &q).unwrap();
    assert_eq!(
        choose_scale_codes(RangeMethod::Running, 8, rn, -5, &q),
        Ok(max)
    );
    // All-zero data before any observation: Max's -16, state still empty.
    let mut cfg = running_cfg(8);
    cfg.update_scale_f32(&[0.0; 4]).unwrap();
    assert_eq!((cfg.scale, cfg.ema), (-16, running::EMPTY));
}

/// Observations alternating 1.5 and 0.5 around 1 = 2^0 after a first 1.0:
/// the average settles to alternate 1.0161 and 0.9839 (31.5/31 and
/// 30.5/31), on both sides of 1 every step.
fn oscillating(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| match i {
            0 => 1.0,
            _ if i % 2 == 1 => 1.5,
            _ => 0.5,
        })
        .collect()
}

#[test]
fn hysteresis_stops_the_flipping_that_plain_ceil_shows() {
    let obs = oscillating(60);
    let mut cfg = running_cfg(8);
    let mut plain = Vec::new();
    let mut kept = Vec::new();
    for &o in &obs {
        cfg.update_scale_f32(&[o, -o / 2.0]).unwrap();
        plain.push(running::ceil_log2(cfg.ema).unwrap());
        kept.push(cfg.scale);
    }
    // Without hysteresis (the scale ceil(log2 r) of the same averages) the
    // scale changes at every step after the first.
    assert_eq!(plain[0], 0);
    for i in 1..obs.len() {
        assert_ne!(plain[i], plain[i - 1], "step {i}: {plain:?}");
        assert_eq!(plain[i], if i % 2 == 1 { 1 } else { 0 });
    }
    // With it: up once (step 1), never down.
    assert_eq!(kept[0], 0);
    assert!(kept[1..].iter().all(|&s| s == 1), "{kept:?}");
}

/// Steps until the exact (unrounded) average `o + (r0 - o) (15/16)^n`
/// satisfies `pred(num, den)` with `value = num / den`, from exact
/// integer fractions (`den = 16^n`).
fn exact_steps(r0: (u128, u128), o: (u128, u128), pred: impl Fn(i128, i128) -> bool) -> usize {
    // value_n = o + (r0 - o) * 15^n / 16^n, all over a common denominator.
    let den0 = r0.1 * o.1;
    let (r0n, on) = ((r0.0 * o.1) as i128, (o.0 * r0.1) as i128);
    let (mut p15, mut p16) = (1i128, 1i128);
    for n in 0..30 {
        let num = on * p16 + (r0n - on) * p15;
        if pred(num, den0 as i128 * p16) {
            return n;
        }
        p15 *= 15;
        p16 *= 16;
    }
    panic!("not reached in 30 steps");
}

#[test]
fn step_changes_are_tracked_in_the_expected_number_of_steps() {
    // Down: r from 1 (scale 0) toward o = 0.25. The scale may go down once
    // r < 3/4 * 2^-1 = 0.375: 0.25 + 0.75 (15/16)^n < 0.375 iff
    // 6 * 15^n < 16^n, first at n = 28 ((16/15)^27 = 5.71, (16/15)^28 = 6.09).
    let n_down = exact_steps((1, 1), (1, 4), |num, den| 8 * num < 3 * den);
    assert_eq!(n_down, 28);
    // Plain ceil(log2 r) would go down at r <= 0.5: 3 * 15^n <= 16^n, n = 18.
    let n_plain = exact_steps((1, 1), (1, 4), |num, den| 2 * num <= den);
    assert_eq!(n_plain, 18);
    let mut cfg = running_cfg(8);
    cfg.update_scale_f32(&[1.0]).unwrap();
    let mut scales = vec![cfg.scale];
    let mut plain = vec![0];
    for _ in 0..300 {
        cfg.update_scale_f32(&[0.25, -0.125]).unwrap();
        scales.push(cfg.scale);
        plain.push(running::ceil_log2(cfg.ema).unwrap());
    }
    let first = |v: &[i8], s: i8| v.iter().position(|&x| x == s);
    assert_eq!(first(&scales, -1), Some(28), "{scales:?}");
    assert_eq!(first(&plain, -1), Some(18), "{plain:?}");
    // The average reaches 0.25 exactly (rounding toward o; within 300
    // steps: 0.75 (15/16)^n is below 2^4 units of 2^-25 after 210) and
    // stops; the scale stays -1: 0.25 is not below 3/4 * 2^-2.
    assert_eq!(running::to_f32(cfg.ema), 0.25);
    assert!(scales[28..].iter().all(|&s| s == -1));
    assert_eq!(plain[300], -2);

    // Up: r from 1 toward o = 4. The scale goes up as soon as r > 2^s:
    // r > 1 at n = 1, r > 2 when 3 (15/16)^n < 2: 2 * 16^n > 3 * 15^n, n = 7.
    let n_up = exact_steps((1, 1), (4, 1), |num, den| num > 2 * den);
    assert_eq!(n_up, 7);
    let mut cfg = running_cfg(8);
    cfg.update_scale_f32(&[1.0]).unwrap();
    let mut scales = vec![cfg.scale];
    for _ in 0..300 {
        cfg.update_scale_f32(&[4.0]).unwrap();
        scales.push(cfg.scale);
    }
    assert_eq!(&scales[..9], &[0, 1, 1, 1, 1, 1, 1, 2, 2]);
    assert_eq!(running::to_f32(cfg.ema), 4.0, "reaches 4 exactly");
    assert!(scales[7..].iter().all(|&s| s == 2));
}

#[test]
fn state_round_trips_through_json_and_old_json_loads() {
    let mut cfg = running_cfg(8);
    cfg.update_scale_f32(&[0.5, -1.5]).unwrap();
    cfg.update_scale_f32(&[3.5]).unwrap();
    let mut buf = [0u8; 256];
    let n = serde_json_core::to_slice(&cfg, &mut buf).unwrap();
    let text = core::str::from_utf8(&buf[..n]).unwrap();
    assert_eq!(
        text,
        r#"{"method":"auto","bits":8,"scale":1,"range":"running","rounding":"nearest_even","zero_point":0,"multiplier":0,"group":"tensor","ema":2161115136}"#
    );
    assert_eq!(2161115136u32, 0x80D0_0000);
    let (back, _): (QuantConfig, usize) = serde_json_core::from_str(text).unwrap();
    assert_eq!(back, cfg);
    // Without the key: empty state; an empty state is not written.
    let (old, _): (QuantConfig, usize) =
        serde_json_core::from_str(r#"{"method":"auto","bits":8,"scale":1,"range":"running"}"#)
            .unwrap();
    assert_eq!(old.ema, running::EMPTY);
    let n = serde_json_core::to_slice(&QuantConfig::auto(8), &mut buf).unwrap();
    assert!(!core::str::from_utf8(&buf[..n]).unwrap().contains("ema"));
    // A state with bit 23 clear is refused.
    let bad = QuantConfig { ema: 5, ..cfg };
    assert!(matches!(bad.validate(), Err(Error::Invalid { .. })));
    assert!(matches!(
        QuantConfig { ema: 5, ..cfg }.update_scale_f32(&[1.0]),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn other_methods_keep_the_state() {
    let mut cfg = running_cfg(8);
    cfg.update_scale_f32(&[3.0]).unwrap();
    let ema = cfg.ema;
    cfg.method = Method::Fixed;
    cfg.update_scale_f32(&[100.0]).unwrap();
    assert_eq!((cfg.ema, cfg.scale), (ema, 2));
    cfg.method = Method::Auto;
    cfg.range = RangeMethod::Max;
    cfg.update_scale_f32(&[100.0]).unwrap();
    assert_eq!((cfg.ema, cfg.scale), (ema, 7));
}

#[test]
fn layers_carry_the_state_between_steps_and_eval_leaves_it() {
    let bk = RefBackend;
    // f32 path: a Quant layer's output.
    let mut q = Quant::<S2<1, 2>>::new(0);
    q.out.quant.cfg = running_cfg(8);
    let mut cfg = running_cfg(8);
    for (step, x) in [[0.5f32, -1.5], [3.5, 0.0], [0.25, 0.0]].iter().enumerate() {
        let mut t = Tensor::<S2<1, 2>>::zeros();
        t.flat_mut().copy_from_slice(x);
        q.forward(&bk, &Ctx::train(1, step as u32), &t).unwrap();
        cfg.update_scale_f32(x).unwrap();
        assert_eq!(q.out.quant.cfg, cfg, "step {step}");
    }
    assert_eq!(cfg.ema, 0x80C5_0000); // as in golden_f32_sequence
    let mut t = Tensor::<S2<1, 2>>::zeros();
    t.flat_mut().copy_from_slice(&[100.0, 0.0]);
    q.forward(&bk, &Ctx::eval(1), &t).unwrap();
    assert_eq!(q.out.quant.cfg, cfg, "eval mode changes no state");

    // Integer path: a Linear layer's accumulator output.
    let mut l = Linear::<2, 2, 1>::new(1);
    l.weight.quant.cfg = QuantConfig::fixed(8, 0);
    l.out.quant.cfg = running_cfg(8);
    l.weight.master = [[0.5, -0.25], [0.75, 0.125]];
    let mut x = Tensor::<S2<1, 2>>::zeros();
    x.fmt = Some(fixnn::Format::new(8, 2).unwrap());
    let mut states = Vec::new();
    for (step, v) in [[1.0f32, 1.0], [2.0, -1.0], [0.5, 0.5]].iter().enumerate() {
        x.flat_mut().copy_from_slice(v);
        l.forward(&bk, &Ctx::train(1, step as u32), &x).unwrap();
        states.push((l.out.quant.cfg.ema, l.out.quant.cfg.scale));
    }
    // Outputs: x W^T + 0 = (0.25, 0.875), (1.25, 1.375), (0.125, 0.4375).
    // r: 0.875; (15 * 0.875 + 1.375) / 16 = 0.90625; (15 * 0.90625 + 0.4375) / 16 = 0.876953125.
    let m = |r: f64| (0x7F << 24) | (r * 2f64.powi(24)) as u32; // r in [0.5, 1): e = -1
    assert_eq!(
        states,
        [(m(0.875), 0), (m(0.90625), 0), (m(0.876953125), 0)]
    );
}

/// The same with real-valued scales: a Quant layer (f32 path) and a Linear
/// layer's output (accumulator path) keep the moving average between
/// steps, and their configs equal one config stepped by hand.
#[test]
fn layers_carry_the_real_valued_state_between_steps() {
    let bk = RefBackend;
    let real_running = || QuantConfig {
        range: RangeMethod::Running,
        ..QuantConfig::auto_real(8)
    };
    let mut q = Quant::<S2<1, 2>>::new(0);
    q.out.quant.cfg = real_running();
    let mut cfg = real_running();
    for (step, x) in [[0.5f32, -1.5], [3.5, 0.0], [0.25, 0.0]].iter().enumerate() {
        let mut t = Tensor::<S2<1, 2>>::zeros();
        t.flat_mut().copy_from_slice(x);
        q.forward(&bk, &Ctx::train(1, step as u32), &t).unwrap();
        cfg.update_real_f32(x).unwrap();
        assert_eq!(q.out.quant.cfg, cfg, "step {step}");
    }
    assert_eq!(cfg.ema, 0x80C5_0000); // as in golden_f32_sequence

    let mut l = Linear::<2, 2, 1>::new(1);
    l.weight.quant.cfg = QuantConfig::fixed(8, 0);
    l.out.quant.cfg = real_running();
    l.weight.master = [[0.5, -0.25], [0.75, 0.125]];
    let mut x = Tensor::<S2<1, 2>>::zeros();
    x.fmt = Some(fixnn::Format::new(8, 2).unwrap());
    let mut cfg = real_running();
    for (step, v) in [[1.0f32, 1.0], [2.0, -1.0], [0.5, 0.5]].iter().enumerate() {
        x.flat_mut().copy_from_slice(v);
        l.forward(&bk, &Ctx::train(1, step as u32), &x).unwrap();
        // Outputs as in the power-of-two test: 0.875, 1.375, 0.4375 at most.
        let top = [0.875f32, 1.375, 0.4375][step];
        cfg.update_real_f32(&[top]).unwrap();
        assert_eq!(l.out.quant.cfg, cfg, "step {step}");
    }
    assert_ne!(cfg.ema, running::EMPTY);
}

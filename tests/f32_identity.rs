//! Every f32 function fixnn's results depend on gives the same bits in the
//! std build (this test, on the desktop) as in the no_std builds for
//! Cortex-M (soft-float M0 and M3, hard-float M4F, M7F, M33, M55), under
//! QEMU: both run `fixnn_cases::f32id::sweep` (about 290,000 inputs per
//! function, special values included) and print one FNV-1a hash of the
//! output bits per function. Also: core's `sqrt_f32` equals std's
//! correctly rounded `f32::sqrt` on every input of the sweep and on every
//! integer fan-in up to 2^24, so the desktop's parameter initialisation
//! and the device's agree whichever one a caller uses.
//!
//! Needs `qemu-system-arm` and the thumb targets, as the device suite.

use fixnn::quant::sqrt_f32;
use fixnn_cases::f32id::sweep;
use fixnn_tests::device::{build_firmware, hw_dir, run_qemu, BOARDS};

fn desktop_lines() -> Vec<String> {
    let mut lines = Vec::new();
    sweep(|name, n, h| lines.push(format!("F {name} {n} {h:016x}")));
    lines
}

#[test]
fn f32_functions_give_the_same_bits_on_every_board() {
    let want = desktop_lines();
    assert_eq!(want.len(), 12, "one line per function: {want:?}");
    // The device suite's target directories and blob directory: its builds
    // of the same boards are reused.
    let cases_dir = hw_dir().join("target/cases");
    std::fs::create_dir_all(&cases_dir).unwrap();
    let mut failures = Vec::new();
    for board in BOARDS {
        let dir = build_firmware(&board, &["f32id"], &[], "suite", &cases_dir).unwrap();
        let run = run_qemu(&dir.join("f32id"), &[]).unwrap();
        assert!(
            run.ok,
            "f32id failed on {}:\n{}\n{}",
            board.machine, run.stdout, run.stderr
        );
        let got: Vec<&str> = run
            .stdout
            .lines()
            .map(str::trim_end)
            .filter(|l| l.starts_with("F "))
            .collect();
        for (i, w) in want.iter().enumerate() {
            let g = got.get(i).copied().unwrap_or("(missing)");
            if g != w {
                failures.push(format!(
                    "{} ({}): desktop `{w}`, device `{g}`",
                    board.machine, board.cpu
                ));
            }
        }
        if got.len() != want.len() {
            failures.push(format!(
                "{}: {} lines, desktop {}",
                board.machine,
                got.len(),
                want.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `sqrt_f32` is std's `f32::sqrt` (IEEE 754 correctly rounded) on every
/// f32 the sweep uses and every integer up to 2^24, so `1 / sqrt(fan_in)`
/// is the same whether a model is initialised with std's `sqrt`
/// (`std-shim`) or with `sqrt_f32` (the device cases).
#[test]
fn sqrt_f32_is_std_sqrt() {
    let mut checked = 0u64;
    let mut check = |x: f32| {
        let (a, b) = (sqrt_f32(x), x.sqrt());
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "sqrt({x:e} = {:#010x}): fixnn {:#010x}, std {:#010x}",
            x.to_bits(),
            a.to_bits(),
            b.to_bits()
        );
        checked += 1;
    };
    for n in 1..=1u32 << 24 {
        check(n as f32);
    }
    // Every bit pattern from a stride through the whole space.
    let mut b = 0u32;
    while let Some(next) = b.checked_add(4099) {
        check(f32::from_bits(b));
        b = next;
    }
    assert!(checked > 17_000_000);
}

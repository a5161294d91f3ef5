//! Smoke test of the firmware skeleton: prints what it knows about the board,
//! a float result, stack use, a cycle count, a defmt log line and the command
//! line, then exits with success.
#![no_std]
#![no_main]

use core::fmt::Write;
use core::hint::black_box;

use cortex_m_rt::entry;
use embedded_hal::delay::DelayNs;
use fixnn_firmware::{self as fw, clock, Delay, Out};

#[entry]
fn main() -> ! {
    fw::init();
    let mut o = Out;
    let _ = writeln!(o, "board={}", fw::BOARD);
    let _ = writeln!(o, "target={}", fw::TARGET);
    // SAFETY: read-only access to CPUID.
    let cpuid = unsafe { (*cortex_m::peripheral::CPUID::PTR).base.read() };
    let _ = writeln!(o, "cpuid={cpuid:#010x}");
    #[cfg(not(target_abi = "eabihf"))]
    let _ = writeln!(o, "fpu=none");
    #[cfg(target_abi = "eabihf")]
    {
        // SAFETY: read-only access to SCB->CPACR.
        let cpacr = unsafe { (*cortex_m::peripheral::SCB::PTR).cpacr.read() };
        let _ = writeln!(o, "fpu cpacr={cpacr:#010x}");
    }

    let x = black_box(1.1f32);
    let y = black_box(3.0f32);
    let z = x * y + x / y;
    let _ = writeln!(o, "f32 1.1*3+1.1/3={z} bits={:#010x}", z.to_bits());

    let t0 = clock::ticks();
    let mut acc = 0u32;
    for i in 0..black_box(10_000u32) {
        acc = black_box(acc.wrapping_mul(31).wrapping_add(i));
    }
    let t1 = clock::ticks();
    let _ = writeln!(
        o,
        "loop acc={acc:#010x} systick_ticks={} cpu_hz={}",
        t1 - t0,
        clock::CPU_HZ
    );
    match clock::dwt_cycles() {
        Some(c) => {
            let _ = writeln!(o, "dwt_cyccnt={c}");
        }
        None => {
            let _ = writeln!(o, "dwt_cyccnt=n/a");
        }
    }

    let t0 = clock::ticks();
    Delay.delay_us(100);
    let _ = writeln!(
        o,
        "delay_us(100) took {} ns",
        clock::ticks_to_ns(clock::ticks() - t0)
    );

    defmt::info!("hello from {=str} ({=str})", fw::BOARD, fw::TARGET);

    let mut buf = [0u8; 128];
    let _ = writeln!(o, "cmdline=\"{}\"", fw::cmdline(&mut buf));
    for (n, a) in fw::args(&mut buf).enumerate() {
        let _ = writeln!(o, "arg{n}={a}");
    }
    let _ = writeln!(
        o,
        "stack_peak={} stack_size={}",
        fw::stack_peak(),
        fw::stack_size()
    );
    fw::stack_repaint();
    let _ = writeln!(o, "stack_peak after stack_repaint={}", fw::stack_peak());
    fw::exit(true)
}

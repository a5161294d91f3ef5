//! Failure paths of the skeleton, chosen by the first argument. Every mode
//! but `ok` must make the run exit nonzero:
//!
//! - `ok`: exit with success;
//! - `panic`: a panic (prints `PANIC: ...`);
//! - `fault`: a read from unmapped memory (prints `HARDFAULT ...`; QEMU's
//!   micro:bit maps the whole address space, there the read succeeds and the
//!   firmware exits with failure itself);
//! - `udf`: an undefined instruction (prints `HARDFAULT ...`);
//! - `overflow`: recursion until the stack pointer is 256 bytes below the
//!   bottom of the stack. With flip-link the stack's bottom is the bottom of
//!   RAM, so this faults (QEMU reports a lockup); without it the recursion
//!   overwrites the statics and returns, and the firmware reports that;
//! - `exit-fail`: exit with failure.
#![no_std]
#![no_main]

use core::hint::black_box;

use cortex_m_rt::entry;
use fixnn_firmware as fw;

extern "C" {
    static _stack_end: u32;
}

/// Recurses until the stack pointer is 256 bytes below `_stack_end`.
#[inline(never)]
fn recurse(depth: u32) -> u32 {
    let mut frame = [0u32; 16];
    frame[depth as usize % 16] = depth;
    black_box(&mut frame);
    let sp = frame.as_ptr() as usize;
    let limit = (core::ptr::addr_of!(_stack_end) as usize).wrapping_sub(256);
    if sp < limit {
        return depth;
    }
    recurse(depth + 1).wrapping_add(frame[3])
}

#[entry]
fn main() -> ! {
    fw::init();
    let mut buf = [0u8; 64];
    let mode = fw::args(&mut buf).next().unwrap_or("");
    match mode {
        "ok" => fw::exit(true),
        "panic" => panic!("deliberate panic, {} + {} = {}", 2, 2, 2 + 2),
        "overflow" => {
            let depth = recurse(black_box(0));
            fw::out("STACK OVERFLOW UNDETECTED: the recursion returned (depth ");
            let mut d = [0u8; 10];
            let mut n = depth;
            let mut i = d.len();
            loop {
                i -= 1;
                d[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            fw::out(core::str::from_utf8(&d[i..]).unwrap_or("?"));
            fw::out(")\n");
            fw::exit(false)
        }
        "fault" => {
            let p = black_box(0xF000_0000usize) as *const u32;
            // SAFETY: deliberately invalid, to take the fault path.
            let v = unsafe { core::ptr::read_volatile(p) };
            fw::out("read from unmapped memory did not fault\n");
            fw::exit(v == 0xdead_beef)
        }
        "udf" => cortex_m::asm::udf(),
        "exit-fail" => fw::exit(false),
        _ => {
            fw::out("usage: crash ok|panic|fault|udf|overflow|exit-fail\n");
            fw::exit(false)
        }
    }
}

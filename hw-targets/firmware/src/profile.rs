//! A sampling profiler (feature `profile`, ARMv7-M and later): SysTick
//! wraps every 1,024 ticks (40,960 instructions at 25 MHz under
//! `FIXNN_ICOUNT=1`, so the samples are deterministic), and each wrap
//! records the interrupted program counter with the current tag while
//! sampling is on. [`dump`] prints `P <tag> <pc>` per sample;
//! `scripts/profile-m4.sh` symbolizes and sums them.
//!
//! For measuring where instructions go only: the exception itself costs
//! instructions, so counts taken in a profile build are not the benchmark's.
#![allow(unsafe_code)]

use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

/// Samples kept (later ones are counted, not kept).
const MAX: usize = 48 * 1024;

static mut PCS: [u32; MAX] = [0; MAX];
static mut TAGS: [u8; MAX] = [0; MAX];
static N: AtomicUsize = AtomicUsize::new(0);
static LOST: AtomicU32 = AtomicU32::new(0);
static ON: AtomicBool = AtomicBool::new(false);
static TAG: AtomicU32 = AtomicU32::new(0);

// SysTick: hand the stacked exception frame (MSP or PSP, by EXC_RETURN
// bit 2) to `tick`.
core::arch::global_asm!(
    ".section .text.SysTick,\"ax\",%progbits",
    ".global SysTick",
    ".type SysTick,%function",
    ".thumb_func",
    "SysTick:",
    "tst lr, #4",
    "ite eq",
    "mrseq r0, msp",
    "mrsne r0, psp",
    "b {tick}",
    tick = sym tick,
);

/// The SysTick exception: count the wrap, record the sample.
extern "C" fn tick(frame: *const u32) {
    crate::clock::wrapped();
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: `frame` is the exception frame the core stacked (8 words:
    // r0-r3, r12, lr, pc, xpsr); word 6 is the interrupted pc.
    let pc = unsafe { frame.add(6).read_volatile() };
    let n = N.load(Ordering::Relaxed);
    if n < MAX {
        // SAFETY: only this exception writes the buffers while sampling
        // is on; `dump` reads them after turning it off.
        unsafe {
            (*core::ptr::addr_of_mut!(PCS))[n] = pc;
            (*core::ptr::addr_of_mut!(TAGS))[n] = TAG.load(Ordering::Relaxed) as u8;
        }
        N.store(n + 1, Ordering::Relaxed);
    } else {
        LOST.fetch_add(1, Ordering::Relaxed);
    }
}

/// Start or stop sampling.
pub fn set(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Tag the samples from now on (a phase number).
pub fn tag(t: u8) {
    TAG.store(u32::from(t), Ordering::Relaxed);
}

/// Stop sampling and print `P <tag> <pc hex>` per sample, then `PLOST <n>`.
pub fn dump() {
    set(false);
    let n = N.load(Ordering::Relaxed);
    for i in 0..n {
        // SAFETY: sampling is off, so nothing writes the buffers.
        let (pc, t) = unsafe {
            (
                (*core::ptr::addr_of!(PCS))[i],
                (*core::ptr::addr_of!(TAGS))[i],
            )
        };
        let _ = writeln!(crate::Out, "P {t} {pc:x}");
    }
    let _ = writeln!(crate::Out, "PLOST {}", LOST.load(Ordering::Relaxed));
    N.store(0, Ordering::Relaxed);
}

//! Firmware skeleton that runs fixnn on Cortex-M boards, under QEMU or on
//! real hardware.
//!
//! A firmware binary calls [`init`] first, writes its results as plain text
//! with [`Out`] / [`out`] (semihosting stdout), logs through `defmt`
//! (semihosting stderr, or RTT with the `rtt` feature), and ends with
//! [`exit`]. A panic prints `PANIC: <info>` and a HardFault prints
//! `HARDFAULT pc=...`; both exit with failure, so a crash never looks like
//! success.
//!
//! The board is chosen by exactly one `board-*` feature; `build.rs` writes its
//! `memory.x`. The ELF carries the tag `FIXNN_BOARD=<machine>` so the runner
//! (`hw-targets/qemu-run`) can pick the QEMU machine.
#![no_std]
#![deny(missing_docs)]

use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cortex_m_rt::{exception, ExceptionFrame};
use cortex_m_semihosting::{nr, syscall1};

pub use fixnn;
pub use fixnn_cases;

pub mod case;
#[cfg(feature = "profile")]
pub mod profile;

/// Words of [`dsp_scratch`]: 256 KB, enough for the MNIST MLP's 784 x 100
/// layer at batch 64 in one tile (`(64 + 100) * 392` words).
#[cfg(feature = "dsp-backend")]
pub const DSP_SCRATCH_WORDS: usize = 64 * 1024;

/// The packed-tile scratch of [`fixnn::kernels::DspBackend`] (feature
/// `dsp-backend`): a static buffer, handed out once; `None` after that.
#[cfg(feature = "dsp-backend")]
pub fn dsp_scratch() -> Option<&'static mut [u32]> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    static mut SCRATCH: [u32; DSP_SCRATCH_WORDS] = [0; DSP_SCRATCH_WORDS];
    if TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: TAKEN lets exactly one caller through, so this is the only
    // reference to SCRATCH ever made.
    Some(unsafe { &mut *core::ptr::addr_of_mut!(SCRATCH) })
}

#[cfg(not(any(
    feature = "board-microbit",
    feature = "board-an385",
    feature = "board-an386",
    feature = "board-an500",
    feature = "board-an505",
    feature = "board-an547"
)))]
compile_error!(
    "select a board: one of the features board-microbit, board-an385, board-an386, \
     board-an500, board-an505, board-an547"
);

#[cfg(any(
    all(feature = "board-microbit", feature = "board-an385"),
    all(feature = "board-microbit", feature = "board-an386"),
    all(feature = "board-microbit", feature = "board-an500"),
    all(feature = "board-microbit", feature = "board-an505"),
    all(feature = "board-microbit", feature = "board-an547"),
    all(feature = "board-an385", feature = "board-an386"),
    all(feature = "board-an385", feature = "board-an500"),
    all(feature = "board-an385", feature = "board-an505"),
    all(feature = "board-an385", feature = "board-an547"),
    all(feature = "board-an386", feature = "board-an500"),
    all(feature = "board-an386", feature = "board-an505"),
    all(feature = "board-an386", feature = "board-an547"),
    all(feature = "board-an500", feature = "board-an505"),
    all(feature = "board-an500", feature = "board-an547"),
    all(feature = "board-an505", feature = "board-an547"),
))]
compile_error!("select exactly one board-* feature");

macro_rules! board {
    ($name:literal, $hz:expr) => {
        /// QEMU machine name of the board this build is for: "microbit",
        /// "mps2-an385", "mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547".
        pub const BOARD: &str = $name;
        // NUL-terminated, so that the bytes the linker puts after it cannot
        // extend the name the runner reads.
        const TAG: &str = concat!("FIXNN_BOARD=", $name, "\0");
        const HZ: u32 = $hz;
    };
}

#[cfg(feature = "board-microbit")]
board!("microbit", 16_000_000);
#[cfg(feature = "board-an385")]
board!("mps2-an385", 25_000_000);
#[cfg(feature = "board-an386")]
board!("mps2-an386", 25_000_000);
#[cfg(feature = "board-an500")]
board!("mps2-an500", 25_000_000);
#[cfg(feature = "board-an505")]
board!("mps2-an505", 20_000_000);
#[cfg(feature = "board-an547")]
board!("mps3-an547", 32_000_000);

/// Rust target triple of this build.
pub const TARGET: &str = env!("FIXNN_TARGET");

const fn tag_bytes<const N: usize>() -> [u8; N] {
    let src = TAG.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = src[i];
        i += 1;
    }
    out
}

/// The board tag the runner greps for in the ELF. `touch_tag` reads it so the
/// linker's section garbage collection cannot drop it.
#[used]
#[unsafe(link_section = ".rodata.fixnn_board")]
static BOARD_TAG: [u8; TAG.len()] = tag_bytes();

fn touch_tag() {
    // SAFETY: a plain read of an initialized static.
    unsafe { core::ptr::read_volatile(BOARD_TAG.as_ptr()) };
}

// ---------------------------------------------------------------------------
// Semihosting I/O

/// Semihosting `SYS_OPEN` modes for ":tt": write = stdout, append = stderr.
const MODE_STDOUT: usize = nr::open::W_TRUNC;
#[cfg(all(feature = "defmt-semihosting", not(feature = "rtt")))]
const MODE_STDERR: usize = nr::open::W_APPEND;
const NO_HANDLE: usize = usize::MAX;

/// A host console handle, opened on first use and kept.
struct HostHandle {
    handle: AtomicUsize,
    mode: usize,
}

impl HostHandle {
    const fn new(mode: usize) -> Self {
        Self {
            handle: AtomicUsize::new(NO_HANDLE),
            mode,
        }
    }

    fn get(&self) -> Option<usize> {
        let h = self.handle.load(Ordering::Relaxed);
        if h != NO_HANDLE {
            return Some(h);
        }
        let name = b":tt\0";
        let block = [name.as_ptr() as usize, self.mode, name.len() - 1];
        // SAFETY: SYS_OPEN reads a 3-word block and the NUL-terminated name.
        let h = unsafe { syscall1(nr::OPEN, block.as_ptr() as usize) };
        if h as isize == -1 {
            return None;
        }
        self.handle.store(h, Ordering::Relaxed);
        Some(h)
    }

    /// Writes all of `bytes`; gives up silently if the host refuses.
    fn write(&self, mut bytes: &[u8]) {
        let Some(h) = self.get() else { return };
        while !bytes.is_empty() {
            let block = [h, bytes.as_ptr() as usize, bytes.len()];
            // SAFETY: SYS_WRITE reads a 3-word block and `bytes`; it returns
            // the number of bytes *not* written.
            let left = unsafe { syscall1(nr::WRITE, block.as_ptr() as usize) };
            if left == 0 || left >= bytes.len() {
                return;
            }
            bytes = &bytes[bytes.len() - left..];
        }
    }
}

static STDOUT: HostHandle = HostHandle::new(MODE_STDOUT);
#[cfg(all(feature = "defmt-semihosting", not(feature = "rtt")))]
static STDERR: HostHandle = HostHandle::new(MODE_STDERR);

/// Line buffer for [`Out`]: one semihosting call per line instead of one per
/// formatting fragment.
struct LineBuf {
    len: usize,
    buf: [u8; 256],
}

static OUT_BUF: critical_section::Mutex<core::cell::RefCell<LineBuf>> =
    critical_section::Mutex::new(core::cell::RefCell::new(LineBuf {
        len: 0,
        buf: [0; 256],
    }));

fn out_bytes(mut bytes: &[u8]) {
    critical_section::with(|cs| {
        let Ok(mut b) = OUT_BUF.borrow(cs).try_borrow_mut() else {
            // Re-entered (a fault while writing): write straight through.
            STDOUT.write(bytes);
            return;
        };
        while !bytes.is_empty() {
            let start = b.len;
            let n = bytes.len().min(b.buf.len() - start);
            b.buf[start..start + n].copy_from_slice(&bytes[..n]);
            b.len += n;
            let newline = bytes[..n].contains(&b'\n');
            bytes = &bytes[n..];
            if newline || b.len == b.buf.len() {
                let len = b.len;
                STDOUT.write(&b.buf[..len]);
                b.len = 0;
            }
        }
    });
}

fn flush_out() {
    critical_section::with(|cs| {
        if let Ok(mut b) = OUT_BUF.borrow(cs).try_borrow_mut() {
            let len = b.len;
            STDOUT.write(&b.buf[..len]);
            b.len = 0;
        }
    });
}

/// Results to the host: semihosting stdout. Implements [`core::fmt::Write`];
/// never panics and never returns an error (there is nothing a firmware could
/// do about a host that refuses output).
///
/// Output is line-buffered; [`exit`], the panic handler and the HardFault
/// handler flush it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Out;

impl fmt::Write for Out {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        out_bytes(s.as_bytes());
        Ok(())
    }
}

/// Write a str to the host (semihosting stdout).
pub fn out(s: &str) {
    out_bytes(s.as_bytes());
}

/// The semihosting command line (`SYS_GET_CMDLINE`) into `buf`; "" if none,
/// not UTF-8, or longer than `buf` (minus one byte for the terminating NUL).
///
/// Under `qemu-run ELF a b` it is `"hello a b"`: the program name (the ELF's
/// file name) first, then the arguments, joined by single spaces, like a C
/// `argv`. [`args`] skips the program name.
pub fn cmdline(buf: &mut [u8]) -> &str {
    if buf.is_empty() {
        return "";
    }
    let mut block = [buf.as_mut_ptr() as usize, buf.len()];
    // SAFETY: SYS_GET_CMDLINE writes at most block[1] bytes to block[0] and
    // the written length (without NUL) to block[1].
    let r = unsafe { syscall1(nr::GET_CMDLINE, block.as_mut_ptr() as usize) };
    let len = block[1];
    if r != 0 || len >= buf.len() {
        return "";
    }
    core::str::from_utf8(&buf[..len]).unwrap_or("")
}

/// The arguments after the program name in [`cmdline`], split at whitespace.
pub fn args(buf: &mut [u8]) -> core::iter::Skip<core::str::SplitAsciiWhitespace<'_>> {
    cmdline(buf).split_ascii_whitespace().skip(1)
}

/// End the run: semihosting exit with success or failure (QEMU exits with
/// 0 / 1). Flushes [`Out`] first.
pub fn exit(success: bool) -> ! {
    touch_tag();
    flush_out();
    cortex_m_semihosting::debug::exit(if success {
        cortex_m_semihosting::debug::EXIT_SUCCESS
    } else {
        cortex_m_semihosting::debug::EXIT_FAILURE
    });
    // Only reached when no host handles semihosting.
    loop {
        cortex_m::asm::wfi();
    }
}

// ---------------------------------------------------------------------------
// Start-up, stack and cycle measurement

/// Call first in main. Starts the SysTick tick counter ([`clock`]), enables
/// the DWT cycle counter where the core has one (not on QEMU: see
/// [`clock::dwt_cycles`]).
///
/// The stack needs no work here: cortex-m-rt (feature `paint-stack`) painted
/// it before `main`, and the FPU of `-eabihf` targets was enabled by
/// cortex-m-rt's reset handler too. On ARMv8-M Mainline cortex-m-rt also set
/// MSPLIM to the stack's lower end (feature `set-msplim`).
pub fn init() {
    touch_tag();
    clock::start();
    let _ = clock::dwt_cycles();
}

const STACK_PAINT: u32 = cortex_m_rt::STACK_PAINT_VALUE;

extern "C" {
    static _stack_start: u32;
    static _stack_end: u32;
}

fn stack_bounds() -> (usize, usize) {
    // Only the addresses of the linker symbols are taken.
    (
        core::ptr::addr_of!(_stack_end) as usize,
        core::ptr::addr_of!(_stack_start) as usize,
    )
}

/// Bytes of stack used so far (high-water mark found from the painted
/// pattern).
pub fn stack_peak() -> usize {
    let (bottom, top) = stack_bounds();
    let mut p = bottom;
    while p < top {
        // SAFETY: [bottom, top) is the stack region, word aligned.
        if unsafe { core::ptr::read_volatile(p as *const u32) } != STACK_PAINT {
            break;
        }
        p += 4;
    }
    top - p
}

/// Bytes of stack available in total (from the linker symbols `_stack_start`
/// and `_stack_end`).
pub fn stack_size() -> usize {
    let (bottom, top) = stack_bounds();
    top - bottom
}

/// Paints the unused stack again (below the current frame), so that a later
/// [`stack_peak`] reports the peak reached from now on (it never reports less
/// than the current depth).
pub fn stack_repaint() {
    let (bottom, _) = stack_bounds();
    let sp: usize;
    // SAFETY: reads the stack pointer.
    unsafe { core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack)) };
    // Keep a margin below sp for the loop itself and interrupt frames.
    let end = sp.saturating_sub(64) & !3;
    if end <= bottom {
        return;
    }
    // SAFETY: [bottom, end) is stack below the current frame, unused by
    // anything live; the loop uses registers only.
    //
    // Low registers, named: `stm` with one register has a valid encoding
    // only in its 16-bit form (r0-r7); with a high base register the
    // assembler emits the 32-bit form, whose one-register list is
    // UNPREDICTABLE (QEMU faults with UNDEFINSTR). That happened when a
    // change elsewhere in `run_case` moved the base to r8.
    unsafe {
        core::arch::asm!(
            "2:",
            "cmp r0, r1",
            "bhs 3f",
            "stm r0!, {{r2}}",
            "b 2b",
            "3:",
            inout("r0") bottom => _,
            in("r1") end,
            in("r2") STACK_PAINT,
            options(nostack),
        );
    }
}

pub mod clock {
    //! Cycle and tick counters.
    //!
    //! [`ticks`] counts SysTick ticks at the core clock ([`CPU_HZ`]) in 64
    //! bits (the SysTick exception counts the 24-bit wraps). QEMU is not a
    //! timing model: SysTick follows QEMU's virtual clock, so run with
    //! `FIXNN_ICOUNT=1` (`-icount shift=0`: one instruction = 1 ns) for a
    //! repeatable count; then `ticks * 1e9 / CPU_HZ` is the number of
    //! instructions executed, to within one tick (`1e9 / CPU_HZ`
    //! instructions, e.g. 40 on the MPS2 boards).

    use core::sync::atomic::{AtomicU32, Ordering};
    use cortex_m::peripheral::{SCB, SYST};
    #[cfg(not(feature = "profile"))]
    use cortex_m_rt::exception;

    /// Core clock of the board in Hz (as QEMU models it, and as on the real
    /// board): micro:bit 16 MHz, MPS2 AN385/AN386/AN500 25 MHz, AN505
    /// 20 MHz, AN547 32 MHz.
    pub const CPU_HZ: u32 = super::HZ;

    /// SysTick's reload value: 24 bits, or 1,024 ticks with the feature
    /// `profile` (a sample every 40,960 instructions at 25 MHz, see
    /// [`super::profile`]).
    const RELOAD: u32 = if cfg!(feature = "profile") {
        0x3ff
    } else {
        0x00ff_ffff
    };
    static WRAPS: AtomicU32 = AtomicU32::new(0);

    /// Starts SysTick on the core clock, free running, with the wrap
    /// exception enabled. [`super::init`] calls it.
    pub fn start() {
        const ENABLE: u32 = 1;
        const TICKINT: u32 = 1 << 1;
        const CLKSOURCE_CORE: u32 = 1 << 2;
        // SAFETY: SysTick is owned by this module; stopped, reloaded, then
        // started.
        unsafe {
            let syst = &*SYST::PTR;
            syst.csr.write(0);
            syst.rvr.write(RELOAD);
            syst.cvr.write(0);
            WRAPS.store(0, Ordering::Relaxed);
            syst.csr.write(CLKSOURCE_CORE | TICKINT | ENABLE);
        }
    }

    /// SysTick ticks (core clock cycles of virtual time) since [`start`].
    pub fn ticks() -> u64 {
        critical_section::with(|_| {
            // SAFETY: reads of SysTick and SCB registers.
            let (syst, scb) = unsafe { (&*SYST::PTR, &*SCB::PTR) };
            let mut wraps = WRAPS.load(Ordering::Relaxed) as u64;
            let mut cvr = syst.cvr.read();
            // A wrap whose exception is still pending (masked here).
            if scb.icsr.read() & (1 << 26) != 0 {
                wraps += 1;
                cvr = syst.cvr.read();
            }
            wraps * (u64::from(RELOAD) + 1) + u64::from(RELOAD - cvr)
        })
    }

    /// Nanoseconds of (virtual) time for `ticks` SysTick ticks; under
    /// `FIXNN_ICOUNT=1` (`-icount shift=0`) this is the number of instructions.
    pub const fn ticks_to_ns(ticks: u64) -> u64 {
        ticks * 1_000_000_000 / CPU_HZ as u64
    }

    #[cfg(not(feature = "profile"))]
    #[exception]
    fn SysTick() {
        wrapped();
    }

    /// Count one wrap (the SysTick exception).
    pub(crate) fn wrapped() {
        WRAPS.store(
            WRAPS.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    /// The DWT cycle counter, if the core has one and it counts: `None` on
    /// ARMv6-M (no CYCCNT) and under QEMU (DWT not modelled: its registers
    /// read as zero). Started by the first call.
    pub fn dwt_cycles() -> Option<u32> {
        #[cfg(fixnn_v6m)]
        {
            None
        }
        #[cfg(not(fixnn_v6m))]
        {
            use cortex_m::peripheral::{DCB, DWT};
            // SAFETY: DCB/DWT registers, used by nothing else here.
            let (dcb, dwt) = unsafe { (&*DCB::PTR, &*DWT::PTR) };
            const TRCENA: u32 = 1 << 24;
            const CYCCNTENA: u32 = 1;
            const NOCYCCNT: u32 = 1 << 25;
            if dwt.ctrl.read() & NOCYCCNT != 0 {
                return None;
            }
            if dwt.ctrl.read() & CYCCNTENA == 0 {
                // SAFETY: enables tracing and the cycle counter.
                unsafe {
                    dcb.demcr.modify(|r| r | TRCENA);
                    dwt.ctrl.modify(|r| r | CYCCNTENA);
                }
            }
            let a = dwt.cyccnt.read();
            cortex_m::asm::nop();
            cortex_m::asm::nop();
            let b = dwt.cyccnt.read();
            (a != b).then_some(b)
        }
    }
}

/// A delay that real board drivers accept (`embedded_hal::delay::DelayNs`),
/// busy-waiting on [`clock::ticks`]. Needs [`init`] (SysTick running).
#[derive(Clone, Copy, Debug, Default)]
pub struct Delay;

impl embedded_hal::delay::DelayNs for Delay {
    fn delay_ns(&mut self, ns: u32) {
        let wait = (u64::from(ns) * u64::from(clock::CPU_HZ)).div_ceil(1_000_000_000);
        let start = clock::ticks();
        while clock::ticks() - start < wait {}
    }
}

// ---------------------------------------------------------------------------
// Crash reporting

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // Single core, interrupts cannot panic into this half-way: load + store
    // (ARMv6-M has no atomic swap).
    if !PANICKING.load(Ordering::Relaxed) {
        PANICKING.store(true, Ordering::Relaxed);
        flush_out();
        let _ = writeln!(Out, "PANIC: {info}");
    }
    exit(false)
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    flush_out();
    let _ = write!(
        Out,
        "HARDFAULT pc={:#010x} lr={:#010x} xpsr={:#010x}",
        ef.pc(),
        ef.lr(),
        ef.xpsr()
    );
    #[cfg(not(fixnn_v6m))]
    {
        // SAFETY: reads of the fault status registers.
        let scb = unsafe { &*cortex_m::peripheral::SCB::PTR };
        let _ = write!(
            Out,
            " cfsr={:#010x} hfsr={:#010x} bfar={:#010x} mmfar={:#010x}",
            scb.cfsr.read(),
            scb.hfsr.read(),
            scb.bfar.read(),
            scb.mmfar.read()
        );
    }
    let _ = writeln!(Out);
    exit(false)
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    flush_out();
    let _ = writeln!(Out, "UNEXPECTED EXCEPTION irqn={irqn}");
    exit(false)
}

// ---------------------------------------------------------------------------
// defmt

#[cfg(feature = "rtt")]
use defmt_rtt as _;

#[cfg(all(feature = "defmt-semihosting", not(feature = "rtt")))]
mod defmt_semihosting {
    //! defmt's global logger: frames to semihosting stderr, one host write
    //! per 64 bytes or frame.

    use core::sync::atomic::{AtomicBool, Ordering};

    #[defmt::global_logger]
    struct Logger;

    static TAKEN: AtomicBool = AtomicBool::new(false);
    static mut RESTORE: critical_section::RestoreState = critical_section::RestoreState::invalid();
    static mut ENCODER: defmt::Encoder = defmt::Encoder::new();
    static mut BUF: [u8; 64] = [0; 64];
    static mut LEN: usize = 0;

    /// Appends encoded bytes, writing full buffers to the host.
    ///
    /// # Safety
    /// Only inside acquire/release (the critical section).
    unsafe fn push(mut bytes: &[u8]) {
        // SAFETY: exclusive inside the critical section.
        let (buf, len) = unsafe {
            (
                &mut *core::ptr::addr_of_mut!(BUF),
                &mut *core::ptr::addr_of_mut!(LEN),
            )
        };
        while !bytes.is_empty() {
            let n = bytes.len().min(buf.len() - *len);
            buf[*len..*len + n].copy_from_slice(&bytes[..n]);
            *len += n;
            bytes = &bytes[n..];
            if *len == buf.len() {
                super::STDERR.write(buf);
                *len = 0;
            }
        }
    }

    /// # Safety
    /// Only inside acquire/release.
    unsafe fn flush() {
        // SAFETY: exclusive inside the critical section.
        let (buf, len) = unsafe {
            (
                &mut *core::ptr::addr_of_mut!(BUF),
                &mut *core::ptr::addr_of_mut!(LEN),
            )
        };
        super::STDERR.write(&buf[..*len]);
        *len = 0;
    }

    // SAFETY: acquire/release bracket every frame in a critical section, and
    // TAKEN rejects re-entry from the same context.
    unsafe impl defmt::Logger for Logger {
        fn acquire() {
            // SAFETY: released in `release`.
            let restore = unsafe { critical_section::acquire() };
            if TAKEN.load(Ordering::Relaxed) {
                panic!("defmt logger taken reentrantly");
            }
            TAKEN.store(true, Ordering::Relaxed);
            // SAFETY: inside the critical section, logger taken.
            unsafe {
                RESTORE = restore;
                (*core::ptr::addr_of_mut!(ENCODER)).start_frame(|b| push(b));
            }
        }

        unsafe fn flush() {
            // SAFETY: the caller holds the logger.
            unsafe { flush() };
        }

        unsafe fn release() {
            // SAFETY: the caller holds the logger.
            unsafe {
                (*core::ptr::addr_of_mut!(ENCODER)).end_frame(|b| push(b));
                flush();
            }
            TAKEN.store(false, Ordering::Relaxed);
            // SAFETY: pairs with the acquire in `acquire`.
            unsafe { critical_section::release(RESTORE) };
        }

        unsafe fn write(bytes: &[u8]) {
            // SAFETY: the caller holds the logger.
            unsafe { (*core::ptr::addr_of_mut!(ENCODER)).write(bytes, |b| push(b)) };
        }
    }
}

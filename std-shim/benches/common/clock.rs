//! Timing shared by the benchmarks.

use std::time::{Duration, Instant};

/// `struct timespec` of Linux on 64-bit targets.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// Which clock [`now`] reads.
#[allow(dead_code)] // each bench uses some of them
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Wall-clock time.
    Wall,
    /// CPU time of the whole process, all threads (Linux; else wall).
    Process,
    /// CPU time of the calling thread (Linux; else wall).
    Thread,
}

/// The time on `clock`: on a shared machine, CPU time counts only the time
/// the work ran, not the time other programs ran.
pub fn now(clock: Clock) -> Duration {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    if clock != Clock::Wall {
        // CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID
        let id = if clock == Clock::Process { 2 } else { 3 };
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `ts` is a valid, writable `struct timespec`.
        #[allow(unsafe_code)]
        if unsafe { clock_gettime(id, &mut ts) } == 0 {
            return Duration::new(ts.sec as u64, ts.nsec as u32);
        }
    }
    EPOCH.get_or_init(Instant::now).elapsed()
}

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

//! Faster element passes for desktops: the same source compiled a second
//! time for newer x86-64 CPUs, chosen at run time, and an optional hook
//! that splits a pass across threads.
//!
//! Nothing here changes a result. Each accelerated pass is one
//! `#[inline(always)]` body (in the module that owns it) compiled twice:
//! once for the build's target, and on `x86_64` once more with the
//! x86-64-v4 features (AVX-512 F/BW/CD/DQ/VL, AVX2, BMI, ...), so that the
//! compiler vectorises it 16 lanes wide. Rust never fuses `a * b + c` into
//! a fused multiply-add and every f32 operation is IEEE-754 on both
//! copies, so both return the same bits (tested on random inputs,
//! non-finite and subnormal values included, in this module's tests).
//!
//! The second copy runs only after the program has told the core that the
//! CPU has those features ([`enable_x86_64_v4`], `unsafe`: the caller
//! detects them, as `fixnn-std` does with `is_x86_feature_detected!`).
//! Until then, and on every other target (Cortex-M builds compile exactly
//! the portable bodies), the portable copy runs.
//!
//! [`set_parallel`] installs a hook that runs independent parts of a pass
//! on several threads (`fixnn-std` installs one that uses rayon). Only
//! passes whose result cannot depend on the split use it: element-wise
//! maps (each part knows its global element offset, so stochastic
//! rounding draws the same numbers), counts of clamped elements (integer
//! sums) and maxima. Parts are large (at least [`MIN_PART`] elements) so
//! that a trip through the thread pool pays.
//!
//! This is the one module of the core with `unsafe` code: calling the
//! feature-enabled copies, and reading back the hook's function pointers.
// Every `unsafe` block below carries a `SAFETY:` comment.
#![allow(unsafe_code)]

use crate::quant::{Format, Rounder};

#[cfg(target_arch = "x86_64")]
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// Runs every job once, in any order, possibly several at once on other
/// threads, and returns when all have finished. A hook for
/// [`set_parallel`].
pub type RunJobs = fn(jobs: &mut [&mut (dyn FnMut() + Send)]);

/// How many threads a [`RunJobs`] hook can use now (1: do not split).
pub type Threads = fn() -> usize;

/// Fewest elements in one part of a split pass.
pub const MIN_PART: usize = 16 * 1024;

/// Most parts a pass is split into.
#[cfg(target_arch = "x86_64")]
const MAX_PARTS: usize = 8;

/// Parts start at multiples of this many elements (whole chunks of every
/// pass's inner loop).
#[cfg(target_arch = "x86_64")]
const PART_ALIGN: usize = 64;

#[cfg(target_arch = "x86_64")]
static X86_64_V4: AtomicBool = AtomicBool::new(false);

#[cfg(target_arch = "x86_64")]
static RUN_JOBS: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

#[cfg(target_arch = "x86_64")]
static THREADS: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Use the passes compiled for x86-64-v4 from now on, in every thread.
///
/// # Safety
///
/// The CPU running the program must support AVX, AVX2, BMI1, BMI2, F16C,
/// FMA, LZCNT, MOVBE, POPCNT, SSE3, SSSE3, SSE4.1, SSE4.2 and AVX-512 F,
/// BW, CD, DQ and VL (check each with `is_x86_feature_detected!`): the
/// accelerated passes execute those instructions.
#[cfg(target_arch = "x86_64")]
pub unsafe fn enable_x86_64_v4() {
    X86_64_V4.store(true, Ordering::Relaxed);
}

/// Go back to the portable passes (the results are the same; this exists
/// to compare speeds).
pub fn disable_x86_64_v4() {
    #[cfg(target_arch = "x86_64")]
    X86_64_V4.store(false, Ordering::Relaxed);
}

/// Whether the x86-64-v4 passes are in use.
#[inline(always)]
pub fn x86_64_v4() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        X86_64_V4.load(Ordering::Relaxed)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Install the hook that runs parts of large passes on several threads
/// (`run`), and the function that says how many threads it can use now
/// (`threads`). Results do not depend on it. On targets other than
/// `x86_64` this does nothing (the passes stay sequential).
pub fn set_parallel(threads: Threads, run: RunJobs) {
    #[cfg(target_arch = "x86_64")]
    {
        THREADS.store(threads as *mut (), Ordering::Release);
        RUN_JOBS.store(run as *mut (), Ordering::Release);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (threads, run);
}

/// Remove the hook of [`set_parallel`]: every pass runs on the calling
/// thread.
pub fn clear_parallel() {
    #[cfg(target_arch = "x86_64")]
    {
        RUN_JOBS.store(core::ptr::null_mut(), Ordering::Release);
        THREADS.store(core::ptr::null_mut(), Ordering::Release);
    }
}

/// The installed hook and its thread count, if there is one.
#[cfg(target_arch = "x86_64")]
fn hook() -> Option<(RunJobs, usize)> {
    let threads = THREADS.load(Ordering::Acquire);
    let run = RUN_JOBS.load(Ordering::Acquire);
    if threads.is_null() || run.is_null() {
        return None;
    }
    // SAFETY: non-null values of these two statics are only ever stored
    // by `set_parallel`, from function pointers of exactly these types.
    let (threads, run) = unsafe {
        (
            core::mem::transmute::<*mut (), Threads>(threads),
            core::mem::transmute::<*mut (), RunJobs>(run),
        )
    };
    Some((run, threads()))
}

/// Data that splits at an element index into two disjoint parts: a slice,
/// an optional slice, or a pair of them.
// Only `x86_64` builds split passes.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) trait Split: Sized {
    /// Elements `..at` and `at..` (everything in the first if `at` is
    /// beyond the end).
    fn split(self, at: usize) -> (Self, Self);
}

impl<T> Split for &[T] {
    fn split(self, at: usize) -> (Self, Self) {
        self.split_at(at.min(self.len()))
    }
}

impl<T> Split for &mut [T] {
    fn split(self, at: usize) -> (Self, Self) {
        let at = at.min(self.len());
        self.split_at_mut(at)
    }
}

impl<A: Split> Split for Option<A> {
    fn split(self, at: usize) -> (Self, Self) {
        match self {
            Some(a) => {
                let (x, y) = a.split(at);
                (Some(x), Some(y))
            }
            None => (None, None),
        }
    }
}

impl<A: Split, B: Split> Split for (A, B) {
    fn split(self, at: usize) -> (Self, Self) {
        let (a0, a1) = self.0.split(at);
        let (b0, b1) = self.1.split(at);
        ((a0, b0), (a1, b1))
    }
}

/// Run `f(part, offset)` over parts of `data` (`len` elements; `offset`
/// is the part's first element index) and combine the results with
/// `fold`, in part order. With a [`set_parallel`] hook, more than one
/// thread and at least `2 * MIN_PART` elements, the parts run on several
/// threads; otherwise `f(data, 0)` runs here. `f` must compute each
/// element independently of where the parts start, and `fold` must not
/// care how the elements were grouped (a sum of integers, a maximum).
#[inline]
pub(crate) fn split_pass<S, R>(
    len: usize,
    data: S,
    f: impl Fn(S, usize) -> R + Sync,
    fold: impl Fn(R, R) -> R,
) -> R
where
    S: Split + Send,
    R: Send + Default,
{
    #[cfg(target_arch = "x86_64")]
    if len >= 2 * MIN_PART {
        if let Some((run, threads)) = hook() {
            let parts = threads.min(MAX_PARTS).min(len / MIN_PART);
            if parts > 1 {
                return split_run(len, parts, data, run, &f, fold);
            }
        }
    }
    let _ = (len, &fold);
    f(data, 0)
}

#[cfg(target_arch = "x86_64")]
fn split_run<S, R, F>(
    len: usize,
    parts: usize,
    data: S,
    run: RunJobs,
    f: &F,
    fold: impl Fn(R, R) -> R,
) -> R
where
    S: Split + Send,
    R: Send + Default,
    F: Fn(S, usize) -> R + Sync,
{
    struct Job<'f, S, R, F> {
        data: Option<S>,
        offset: usize,
        out: R,
        f: &'f F,
    }
    impl<S, R, F: Fn(S, usize) -> R> Job<'_, S, R, F> {
        fn run(&mut self) {
            if let Some(d) = self.data.take() {
                self.out = (self.f)(d, self.offset);
            }
        }
    }
    let per = len.div_ceil(parts).next_multiple_of(PART_ALIGN);
    let mut rest = Some(data);
    let mut jobs: [Job<'_, S, R, F>; MAX_PARTS] = core::array::from_fn(|i| {
        let data = match rest.take() {
            Some(r) if i + 1 < parts => {
                let (a, b) = r.split(per);
                rest = Some(b);
                Some(a)
            }
            r => r,
        };
        Job {
            data,
            offset: i * per,
            out: R::default(),
            f,
        }
    });
    {
        let mut calls = jobs.each_mut().map(|j| move || j.run());
        let mut dyns = calls.each_mut().map(|c| c as &mut (dyn FnMut() + Send));
        run(dyns.get_mut(..parts).unwrap_or_default());
    }
    // Whatever a misbehaving hook left undone runs here.
    let mut out = R::default();
    for (i, j) in jobs.iter_mut().enumerate() {
        j.run();
        let r = core::mem::take(&mut j.out);
        out = if i == 0 { r } else { fold(out, r) };
    }
    out
}

/// Declares the accelerated passes: for each, a dispatching function
/// `name` in this module, and on `x86_64` a copy `v4::name` of the body
/// compiled with the x86-64-v4 features.
macro_rules! passes {
    ($(
        $(#[$m:meta])*
        fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? = $body:path;
    )*) => {
        /// The bodies compiled with the x86-64-v4 features.
        #[cfg(target_arch = "x86_64")]
        pub(crate) mod v4 {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[target_feature(enable = "avx,avx2,bmi1,bmi2,f16c,fma,lzcnt,movbe,popcnt,sse3,ssse3,sse4.1,sse4.2,avx512f,avx512bw,avx512cd,avx512dq,avx512vl")]
                pub(crate) fn $name($($a: $t),*) $(-> $r)? {
                    $body($($a),*)
                }
            )*
        }
        $(
            $(#[$m])*
            #[inline]
            pub(crate) fn $name($($a: $t),*) $(-> $r)? {
                #[cfg(target_arch = "x86_64")]
                if x86_64_v4() {
                    // SAFETY: `X86_64_V4` is set only by `enable_x86_64_v4`,
                    // whose caller asserts that the CPU has these features.
                    return unsafe { v4::$name($($a),*) };
                }
                $body($($a),*)
            }
        )*
    };
}

passes! {
    /// Quantize values in place (see `quant::slice`).
    fn quantize_in_place(
        v: &mut [f32],
        format: Format,
        rounder: &Rounder,
        sat: Option<&mut [bool]>,
    ) -> u64 = crate::quant::slice::in_place_body;
    /// Quantize values into another slice (see `quant::slice`).
    fn quantize_into(
        src: &[f32],
        dst: &mut [f32],
        format: Format,
        rounder: &Rounder,
        sat: Option<&mut [bool]>,
    ) -> u64 = crate::quant::slice::into_body;
    /// The largest `|x|` as bits, see `range::max_abs_bits`.
    fn max_abs_bits(x: &[f32]) -> u32 = crate::quant::range::max_abs_bits_of;
    /// One SGD step of f32 masters, see `optim`.
    fn sgd(w: &mut [f32], m: &mut [f32], g: &[f32], h: [f32; 3]) = crate::optim::sgd_f32;
    /// Zero the gradients of clamped elements.
    fn zero_clamped(g: &mut [f32], sat: &[bool]) = crate::tensor::zero_clamped;
    /// Accumulators to f32, see `quant::acc_to_f32`.
    fn accs_to_f32(dst: &mut [f32], acc: &[i64], exp: i32) = crate::quant::accs_to_f32;
    /// `d = exp(x - d)`, see `layers::loss`.
    fn exp_of_differences(d: &mut [f32], x: &[f32]) = crate::layers::loss::exp_of_differences;
    /// `a = (a << up) + bias[channel]`, saturating, see `layers::product`.
    fn add_bias(acc: &mut [i64], bias: &[i64], spatial: usize, up: u32) =
        crate::layers::product::add_bias;
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests;

//! Turns on the core's faster element passes ([`fixnn::accel`]): the
//! x86-64-v4 copies when this CPU has every feature they use, and a hook
//! that splits large passes across the threads of the rayon pool the pass
//! runs in (`fixnn train` trains inside its backend's pool).
//! The results are the same bits either way.

/// Detect the CPU and install the hooks (process-wide; calling it again
/// does no harm).
///
/// The environment variable `FIXNN_ACCEL` restricts them, to compare
/// speeds: `off` (neither), `simd` (the x86-64-v4 copies only), `threads`
/// (the thread hook only); unset or anything else, both.
pub fn install() {
    let which = std::env::var("FIXNN_ACCEL").unwrap_or_default();
    #[cfg(target_arch = "x86_64")]
    if !matches!(which.as_str(), "off" | "threads") && x86_64_v4() {
        // SAFETY: every feature the accelerated passes are compiled with
        // was detected on this CPU just above.
        unsafe { fixnn::accel::enable_x86_64_v4() };
    }
    if !matches!(which.as_str(), "off" | "simd") {
        fixnn::accel::set_parallel(threads, run_jobs);
    }
}

/// Whether this CPU has every feature of x86-64-v4.
#[cfg(target_arch = "x86_64")]
pub fn x86_64_v4() -> bool {
    is_x86_feature_detected!("avx")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("bmi1")
        && is_x86_feature_detected!("bmi2")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("lzcnt")
        && is_x86_feature_detected!("movbe")
        && is_x86_feature_detected!("popcnt")
        && is_x86_feature_detected!("sse3")
        && is_x86_feature_detected!("ssse3")
        && is_x86_feature_detected!("sse4.1")
        && is_x86_feature_detected!("sse4.2")
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512cd")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
}

/// The threads of the rayon pool the caller runs in; 1 outside every
/// pool (a pass there stays on its thread instead of starting rayon's
/// global pool behind `--threads`) and inside
/// [`serial`](crate::rayon_backend::serial).
fn threads() -> usize {
    match rayon::current_thread_index() {
        Some(_) if !crate::rayon_backend::is_serial() => rayon::current_num_threads(),
        _ => 1,
    }
}

/// Runs the jobs on the current rayon pool (halves by `rayon::join`).
fn run_jobs(jobs: &mut [&mut (dyn FnMut() + Send)]) {
    match jobs {
        [] => {}
        [one] => {
            let _span = crate::trace::span("core pass");
            one()
        }
        _ => {
            let (a, b) = jobs.split_at_mut(jobs.len() / 2);
            crate::rayon_backend::join(|| run_jobs(a), || run_jobs(b));
        }
    }
}

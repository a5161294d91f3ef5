//! Fork-join for the thread that runs [`RayonBackend::install_hot`]'s
//! closure: [`join`] hands the second half of a split to a polling thread
//! through one slot and waits for it by spinning.
//!
//! `rayon::join` pushes the second half on the caller's queue, where a
//! polling thread steals it; a caller that finishes its half first then
//! waits in rayon's idle loop, which calls `sched_yield` between its checks
//! (about nine times per MNIST MLP step, counted with `strace`), so it
//! notices the other half's end a system call late, and the steal itself
//! takes a round trip through the queue's bookkeeping. Here the polling
//! threads of `install_hot` check the slot on every turn of their loop and
//! the caller spins on a flag. Work split this way is the same work, so
//! the results are the same bits.
//!
//! [`RayonBackend::install_hot`]: super::RayonBackend::install_hot

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The slot between the thread that runs `install_hot`'s closure (the
/// owner) and the polling threads.
#[derive(Default)]
pub(super) struct Slot {
    job: AtomicPtr<Job>,
}

impl Slot {
    /// Runs the job in the slot, if any (on a polling thread).
    pub(super) fn run_one(&self) -> bool {
        if self.job.load(Ordering::Relaxed).is_null() {
            return false;
        }
        let job = self.job.swap(ptr::null_mut(), Ordering::Acquire);
        if job.is_null() {
            return false;
        }
        // SAFETY: a job in the slot lives on its owner's stack until its
        // `done` is set (or the owner took it back, which it cannot have:
        // the swap above removed it); `run` sets `done` last.
        unsafe { Job::run(job) };
        true
    }
}

thread_local! {
    /// The slot of the `install_hot` this thread runs the closure of.
    static OWNED: Cell<*const Slot> = const { Cell::new(ptr::null()) };
}

/// How long a polling thread finds no work before it returns and queues
/// itself again (see [`poll`]). Far longer than the sequential stretches
/// of a training step (tens of microseconds), so a step never sees it.
const IDLE: Duration = Duration::from_micros(200);

/// What the polling threads of one `install_hot` share with its owner.
#[derive(Default)]
struct Shared {
    /// The owner's closure has ended: polling threads return.
    done: AtomicBool,
    slot: Slot,
}

/// The polling of one `install_hot`: the pool's other threads poll for
/// work until this is dropped, which waits until none polls any more.
pub(super) struct Polling {
    shared: Arc<Shared>,
}

impl Polling {
    /// Starts a poller on every thread of the current pool but this one.
    pub(super) fn start() -> Polling {
        let shared = Arc::new(Shared::default());
        let me = rayon::current_thread_index();
        queue(&shared, move |i| Some(i) != me);
        Polling { shared }
    }

    /// Runs `f` with this thread as the owner of the slot ([`join`] hands
    /// second halves to the pollers).
    pub(super) fn own<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Slot);
        impl Drop for Restore {
            fn drop(&mut self) {
                OWNED.with(|o| o.set(self.0));
            }
        }
        let _restore = Restore(OWNED.with(|o| o.replace(&self.shared.slot)));
        f()
    }
}

impl Drop for Polling {
    /// Releases the pollers (also when the owner unwinds) and waits until
    /// every poller job has ended (each holds a clone of `shared`).
    fn drop(&mut self) {
        self.shared.done.store(true, Ordering::Release);
        while Arc::strong_count(&self.shared) > 1 {
            // Runs this thread's own queued poller jobs (which return).
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    }
}

/// Queues a poller on every thread `i` of the current pool for which
/// `on(i)` (a broadcast job on each thread; the others return at once).
fn queue(shared: &Arc<Shared>, on: impl Fn(usize) -> bool + Send + Sync + 'static) {
    let polled = Arc::clone(shared);
    rayon::spawn_broadcast(move |b| {
        if on(b.index()) {
            poll(b.index(), &polled);
        }
    });
}

/// The loop of a polling thread (pool thread `index`): second halves in
/// the slot first, then rayon's work, until the owner is done.
///
/// A poller that finds no work for [`IDLE`] returns and queues itself
/// again on its thread. It must not loop until the owner is done: rayon
/// can start it nested above work the owner waits for. A thread that is
/// descheduled between looking at its own queues (empty) and stealing can
/// steal the owner's first split before it runs its poller, and then pick
/// the poller up in that split's wait for its own second half; the owner
/// then waits for the split, the split for the poller, and the poller for
/// the owner. Returning lets the split finish; the queued poller runs at
/// the thread's next look at its queues.
fn poll(index: usize, shared: &Arc<Shared>) {
    let mut idle = 0u32;
    let mut since: Option<Instant> = None;
    while !shared.done.load(Ordering::Acquire) {
        if shared.slot.run_one() || rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle = 0;
            since = None;
            continue;
        }
        idle = idle.wrapping_add(1);
        if idle.is_multiple_of(64) {
            let now = Instant::now();
            match since {
                None => since = Some(now),
                Some(t) if now.duration_since(t) >= IDLE => {
                    queue(shared, move |i| i == index);
                    return;
                }
                Some(_) => {}
            }
        }
        std::hint::spin_loop();
    }
}

/// A type-erased second half: `call` runs it from `data` and stores its
/// result or panic there.
struct Job {
    call: unsafe fn(*mut ()),
    data: *mut (),
    done: AtomicBool,
}

impl Job {
    /// Runs the job and sets `done`.
    ///
    /// # Safety
    ///
    /// `job` points to a live `Job` whose `data` matches `call`, which no
    /// other thread runs.
    unsafe fn run(job: *mut Job) {
        let (call, data) = ((*job).call, (*job).data);
        call(data);
        // After this store the owner may free the job: no access after it.
        (*job).done.store(true, Ordering::Release);
    }
}

/// The closure of a second half, and where its outcome goes.
struct Half<B, RB> {
    f: Option<B>,
    out: Option<std::thread::Result<RB>>,
}

/// Runs the `Half<B, RB>` at `data`, catching a panic.
///
/// # Safety
///
/// `data` points to a live `Half<B, RB>` that no other thread accesses.
unsafe fn call_half<B: FnOnce() -> RB, RB>(data: *mut ()) {
    let half = &mut *data.cast::<Half<B, RB>>();
    if let Some(f) = half.f.take() {
        half.out = Some(catch_unwind(AssertUnwindSafe(f)));
    }
}

/// Spins until `done` is set by the thread running some work, yielding
/// now and then (that thread may have been descheduled).
pub(super) fn spin_until(done: &AtomicBool) {
    let mut spins = 0u32;
    while !done.load(Ordering::Acquire) {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1 << 16) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Whether this thread runs `install_hot`'s closure (outside
/// [`super::serial`]): a job it queues on the pool is picked up by a
/// polling thread.
pub(super) fn polling() -> bool {
    !OWNED.with(|o| o.get()).is_null() && !super::is_serial()
}

/// `(a(), b())`, `b` on a polling thread when this thread runs
/// `install_hot`'s closure and its slot is free, else by `rayon::join`.
/// Panics of either half are resumed here, after both have ended.
pub(crate) fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    let slot = OWNED.with(|o| o.get());
    // SAFETY: `OWNED` points to the slot of the `install_hot` running on
    // this thread (cleared when it ends), whose `Arc` outlives this call.
    let Some(slot) = (unsafe { slot.as_ref() }) else {
        return rayon::join(a, b);
    };
    if super::is_serial() || !slot.job.load(Ordering::Relaxed).is_null() {
        // Inside `serial`, or a nested join while the outer one's second
        // half still waits in the slot.
        return rayon::join(a, b);
    }
    let mut half = Half {
        f: Some(b),
        out: None,
    };
    let mut job = Job {
        call: call_half::<B, RB>,
        data: (&mut half as *mut Half<B, RB>).cast(),
        done: AtomicBool::new(false),
    };
    let jp: *mut Job = &mut job;
    slot.job.store(jp, Ordering::Release);
    let ra = catch_unwind(AssertUnwindSafe(a));
    // Take `b` back if no polling thread has started it, else wait for it:
    // `job` and `half` must outlive its run.
    if slot
        .job
        .compare_exchange(jp, ptr::null_mut(), Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        // SAFETY: taken back from the slot: only this thread has it.
        unsafe { Job::run(jp) };
    } else {
        // SAFETY: `jp` is `job`, alive on this stack.
        spin_until(unsafe { &(*jp).done });
    }
    let rb = half.out.take();
    match (ra, rb) {
        (Ok(ra), Some(Ok(rb))) => (ra, rb),
        (Err(p), _) | (_, Some(Err(p))) => resume_unwind(p),
        (Ok(_), None) => {
            resume_unwind(Box::new("the second half of a join did not run") as Box<dyn Any + Send>)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{join, poll, Polling};
    use crate::rayon_backend::RayonBackend;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::Arc;

    /// `sum(lo..hi)` by halves down to 64 elements, every split a `join`.
    fn sum(lo: u64, hi: u64) -> u64 {
        if hi - lo <= 64 {
            return (lo..hi).sum();
        }
        let mid = lo + (hi - lo) / 2;
        let (a, b) = join(|| sum(lo, mid), || sum(mid, hi));
        a + b
    }

    #[test]
    fn halves_run_and_nest_inside_install_hot_and_outside() {
        // Miri runs the polling loops an instruction at a time.
        let (rounds, n) = if cfg!(miri) { (2, 300) } else { (50, 10_000) };
        for threads in [2, 3] {
            let b = RayonBackend::with_threads(threads).expect("pool");
            for _ in 0..rounds {
                assert_eq!(b.install_hot(|| sum(0, n)), n * (n - 1) / 2);
            }
            // On the pool without polling, and outside every pool: rayon's
            // join.
            assert_eq!(b.install(|| sum(0, 1000)), 499_500);
        }
        assert_eq!(sum(0, 1000), 499_500);
    }

    #[test]
    fn the_second_half_runs_on_the_polling_thread() {
        let b = RayonBackend::with_threads(2).expect("pool");
        let other = b.install_hot(|| {
            let me = rayon::current_thread_index();
            // A first half long enough for the polling thread to take the
            // second from the slot.
            (0..100).any(|_| {
                let (_, there) = join(
                    || std::thread::sleep(std::time::Duration::from_millis(1)),
                    rayon::current_thread_index,
                );
                there != me
            })
        });
        assert!(other);
    }

    #[test]
    fn a_panic_in_either_half_comes_back_after_both_end() {
        let b = RayonBackend::with_threads(2).expect("pool");
        for which in [0, 1] {
            let done = std::sync::atomic::AtomicBool::new(false);
            let r = catch_unwind(AssertUnwindSafe(|| {
                b.install_hot(|| {
                    join(
                        || {
                            if which == 0 {
                                panic!("first half");
                            }
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            done.store(true, std::sync::atomic::Ordering::SeqCst);
                        },
                        || {
                            if which == 1 {
                                panic!("second half");
                            }
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            done.store(true, std::sync::atomic::Ordering::SeqCst);
                        },
                    )
                })
            }));
            let msg = r
                .expect_err("the panic")
                .downcast::<&str>()
                .expect("a &str");
            assert_eq!(*msg, ["first half", "second half"][which]);
            // The other half ran to its end before the panic came back.
            assert!(done.load(std::sync::atomic::Ordering::SeqCst));
            // The pool still works.
            assert_eq!(b.install_hot(|| sum(0, 1000)), 499_500);
        }
    }

    #[test]
    fn a_poller_nested_in_work_the_owner_waits_for_returns() {
        // What rayon does by chance (see `poll`), done on purpose: a
        // poller runs inside the second half of a split the owner waits
        // for. Before pollers returned when idle this never ended.
        let b = RayonBackend::with_threads(2).expect("pool");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = b.install(|| {
                let polling = Polling::start();
                let shared = Arc::clone(&polling.shared);
                polling.own(|| {
                    rayon::join(
                        || 1,
                        move || {
                            let here = rayon::current_thread_index().expect("a pool thread");
                            poll(here, &shared);
                            2
                        },
                    )
                })
            });
            let _ = tx.send(r);
        });
        // A minute is a verdict on a deadlock, not a speed limit.
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a nested poller blocked the owner");
        assert_eq!(r, (1, 2));
    }
}

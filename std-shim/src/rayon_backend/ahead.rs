//! A weight gradient's packed operand, derived ahead of its backward pass
//! on a thread that would otherwise wait.
//!
//! In an MNIST MLP step, fc1's f32 weight gradient first scans its `x`
//! for the columns that hold one value in every row and packs the others
//! ([`avx512::Columns`]): 12 to 13 us of the step, 5 of them a scan of
//! `x` on the training thread. Yet `x` is the forward pass's input, whose
//! codes the int8 product packed 60 us earlier, and between the two the
//! polling thread only waits (fc1's bias, ReLU, fc2, the loss and fc2's
//! gradients are too small to split).
//!
//! So when core marks a forward pass as a training step's
//! ([`Backend::linear_train`](fixnn::backend::Backend::linear_train)), the
//! int8 product also keeps `x`'s codes (a byte each, [`avx512::int8`]),
//! and a [`Job`] on the pool derives from them what the scan and the
//! packing would: the count of non-zeros, the constant lanes and the
//! packed columns. The weight gradient of the same slice takes it, and
//! uses it only if every value of `x` still has the bits of its code times
//! the step ([`avx512::same_values`], in halves on both threads): the
//! result is then what scanning and packing `x` gives, whatever the caller
//! did to `x` in between. (An MNIST MLP epoch on two threads: 149-162 ms
//! against 157-179 without; skipping the check gained no more than noise.
//! See BENCHMARKS.md, "Derived ahead".)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::avx512::{self, Columns};
use super::scratch::Buf;

/// What a weight gradient needs of its `x` beyond the values.
pub(super) struct Derived {
    /// Non-zero values of `x`.
    pub nz: usize,
    /// `x` packed ([`Columns::pack`]), or `None` where that does not pay.
    pub cols: Option<Columns>,
}

/// The slice a job was derived from: the weight gradient's `x` must be
/// this slice (and then still hold these values, which is checked).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    ptr: usize,
    len: usize,
    n: usize,
}

impl Key {
    fn of(x: &[f32], n: usize) -> Key {
        Key {
            ptr: x.as_ptr() as usize,
            len: x.len(),
            n,
        }
    }
}

/// The derivation from one forward pass's codes: run once, by the pool
/// thread that picks it up or by the weight gradient that needs it first.
struct Job {
    key: Key,
    /// `x`'s codes, `len` bytes in rows of `n`.
    codes: Buf<i8>,
    /// `x[i] == codes[i] * step`, `step` a finite non-zero power of two.
    step: f32,
    /// Room for the packed rows: the last job's ([`Ahead::recycle`]).
    xp: Mutex<Option<Buf<f32>>>,
    claimed: AtomicBool,
    done: AtomicBool,
    out: Mutex<Option<Derived>>,
}

impl Job {
    /// Runs the derivation unless another thread has claimed it. A panic
    /// in it leaves no derivation (the gradient then scans `x`) instead
    /// of reaching rayon, which would abort the process.
    fn run(&self) {
        if self.claimed.swap(true, Ordering::AcqRel) {
            return;
        }
        let derive = || {
            let _span = crate::trace::span("f32 ahead");
            let (nz, masks) = avx512::scan_codes(&self.codes, self.key.n);
            let xp = self
                .xp
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let xp = xp.unwrap_or_default();
            let cols = Columns::pack_codes(&self.codes, self.key.n, self.step, &masks, xp);
            Derived { nz, cols }
        };
        let d = std::panic::catch_unwind(std::panic::AssertUnwindSafe(derive)).ok();
        *self.out.lock().unwrap_or_else(PoisonError::into_inner) = d;
        self.done.store(true, Ordering::Release);
    }

    /// The derivation (run here if no thread has started it), if `x`
    /// still holds the values it was derived from.
    fn checked(&self, x: &[f32], par: bool) -> Option<Derived> {
        self.run();
        super::hot::spin_until(&self.done);
        if !avx512::same_values(x, &self.codes, self.step, par) {
            return None;
        }
        self.out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// The latest job, shared by a backend's clones.
#[derive(Default)]
pub(super) struct Ahead {
    job: Mutex<Option<Arc<Job>>>,
    /// The last packed rows, for the next job ([`Ahead::recycle`]).
    spare: Mutex<Option<Buf<f32>>>,
    /// Derivations a weight gradient used (for tests).
    pub(super) used: AtomicU64,
}

impl Ahead {
    /// [`Ahead::find`] and [`Job::checked`]: the derivation for this `x`,
    /// if one was started from it and `x` still holds those values.
    pub(super) fn take(&self, x: &[f32], n: usize, par: bool) -> Option<Derived> {
        let d = self.find(x, n)?.checked(x, par)?;
        self.used.fetch_add(1, Ordering::Relaxed);
        Some(d)
    }

    /// Queues a derivation from `codes` (the codes of `x`, `n` per row,
    /// values `code * step`) on the current pool, replacing any earlier
    /// one. The caller guarantees: `detect()` reported the AVX-512
    /// kernels, and runs on a pool thread with a polling thread beside it.
    pub(super) fn start(&self, x: &[f32], n: usize, codes: Buf<i8>, step: f32) {
        // Every `code * step` finite (codes lie in -128..=127).
        if n == 0 || !(step * 128.0).is_finite() || step == 0.0 || codes.len() != x.len() {
            return;
        }
        let job = Arc::new(Job {
            key: Key::of(x, n),
            xp: Mutex::new(
                self.spare
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            ),
            codes,
            step,
            claimed: AtomicBool::new(false),
            done: AtomicBool::new(false),
            out: Mutex::new(None),
        });
        *self.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&job));
        rayon::spawn(move || job.run());
    }

    /// Keeps a job's packed rows for the next (a buffer taken from the
    /// pool on the thread that runs the job would be freed on the one
    /// that drops it, and allocated again, with its page faults, every
    /// step).
    pub(super) fn recycle(&self, cols: Option<Columns>) {
        if let Some(c) = cols {
            *self.spare.lock().unwrap_or_else(PoisonError::into_inner) = Some(c.xp);
        }
    }

    /// The job derived from this `x` (`n` values per row), if the latest
    /// is (it is then removed; another stays for its own gradient).
    fn find(&self, x: &[f32], n: usize) -> Option<Arc<Job>> {
        let key = Key::of(x, n);
        let mut job = self.job.lock().unwrap_or_else(PoisonError::into_inner);
        if job.as_ref().is_some_and(|j| j.key == key) {
            job.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rayon_backend::RayonBackend;
    use fixnn::backend::{AccOut, Backend, LinearGeom, Operand, RefBackend};
    use fixnn::Format;
    use std::sync::atomic::Ordering;

    /// MNIST's fc1: a batch of 64 images of 784 pixels, 100 outputs.
    const G: LinearGeom = LinearGeom {
        batch: 64,
        inp: 784,
        out: 100,
    };

    /// A batch like quantized images: background (code -3) in most
    /// columns of every row, a few columns of one other code in every row,
    /// the rest varied; weights and a ReLU-like `dy` (a third zeros).
    fn operands(f: Format) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let x = (0..G.batch * G.inp)
            .map(|i| {
                let col = i % G.inp;
                let code = match col % 7 {
                    0..=3 => -3,
                    4 if col < 100 => 17,
                    5 if col < 200 => 0,
                    _ => (next() % 256) as i32 - 128,
                };
                f.to_f32(code)
            })
            .collect();
        let w = (0..G.out * G.inp)
            .map(|_| f.to_f32((next() % 256) as i32 - 128))
            .collect();
        let dy = (0..G.batch * G.out)
            .map(|_| match next() % 3 {
                0 => 0.0,
                _ => (next() % 2001) as f32 / 1000.0 - 1.0,
            })
            .collect();
        (x, w, dy)
    }

    /// Codes of `f`.
    fn q(v: &[f32], f: Format) -> Operand<'_> {
        Operand { v, fmt: Some(f) }
    }

    /// fc1's forward pass as a training step's, then, after `change` has
    /// done what it likes to `x`, its weight gradient: the reference's
    /// bits either way. Returns how many derivations the gradient used.
    fn step(b: &RayonBackend, change: impl Fn(&mut [f32]) + Sync) -> u64 {
        let f = Format::new(8, 2).expect("format");
        let (mut x, w, dy) = operands(f);
        let before = b.ahead.used.load(Ordering::Relaxed);
        let dw = b.install_hot(|| {
            let mut y = vec![0i64; G.batch * G.out];
            b.linear_train(G, q(&x, f), q(&w, f), AccOut::Int(&mut y))
                .expect("forward");
            change(&mut x);
            let mut dw = vec![0f32; G.out * G.inp];
            let dyo = Operand { v: &dy, fmt: None };
            b.linear_weight_grad(G, dyo, q(&x, f), AccOut::Float(&mut dw))
                .expect("weight gradient");
            dw
        });
        let mut want = vec![0f32; G.out * G.inp];
        RefBackend
            .linear_weight_grad(
                G,
                Operand { v: &dy, fmt: None },
                Operand {
                    v: &x,
                    fmt: Some(f),
                },
                AccOut::Float(&mut want),
            )
            .expect("reference");
        let same = dw
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "weight gradient differs from the reference");
        b.ahead.used.load(Ordering::Relaxed) - before
    }

    #[test]
    fn a_weight_gradient_uses_what_its_forward_pass_derived_only_for_the_same_values() {
        let b = RayonBackend::with_threads(2).expect("pool");
        if !b.avx512 {
            eprintln!("no AVX-512 here: the derivation is not used, nothing to test");
            return;
        }
        for _ in 0..20 {
            // Unchanged: derived during the forward pass, and used.
            assert_eq!(step(&b, |_| {}), 1);
            // A background value changed in one row, one zero made -0.0
            // (the same code), the first column broken in the last row:
            // scanned and packed from `x` instead.
            assert_eq!(step(&b, |x| x[5 * G.inp + 9] = x[5 * G.inp + 4]), 0);
            assert_eq!(step(&b, |x| x[G.inp + 5] = -0.0), 0);
            assert_eq!(step(&b, |x| x[63 * G.inp] = x[63 * G.inp + 5]), 0);
        }
        // Outside `install_hot` nothing is derived.
        let f = Format::new(8, 2).expect("format");
        let (x, w, _) = operands(f);
        let mut y = vec![0i64; G.batch * G.out];
        b.linear_train(G, q(&x, f), q(&w, f), AccOut::Int(&mut y))
            .expect("forward");
        assert!(b.ahead.find(&x, G.inp).is_none());
    }
}

//! [`RayonBackend`]: the compute backend for desktops, multi-threaded with
//! rayon and vectorised, returning the same bits as
//! [`RefBackend`](fixnn::backend::RefBackend) for every input and any
//! number of threads.
//!
//! # How it stays bit-exact
//!
//! Every operation is a matrix product (convolutions over padded images,
//! see `conv`), computed by one blocked kernel (see `kernel`):
//!
//! * work is split across threads only by independent outputs (batch items,
//!   output rows or channels, column panels), never across one reduction;
//! * the kernel vectorises across independent outputs: each f32 output is
//!   one chain of additions, starting from `+0.0`, in the reference's order
//!   (`a + b * c`, never a fused multiply-add, as in the reference);
//! * on the integer path (both operands quantized) the codes are read once
//!   per call exactly as the reference reads them and held in f32 when every
//!   partial sum of a block stays within `2^24` (in f64 otherwise), so every
//!   sum is exact and then added into the `i64` output;
//! * inputs the fast path cannot reproduce bit for bit — "codes" outside
//!   `i16` (values that are not codes of their format), non-finite values a
//!   padded zero would multiply, absurd padding or dilation — go to the
//!   reference backend itself.
//!
//! On CPUs with AVX-512 (F, BW, VNNI) the fully connected products have
//! their own kernels (see `avx512`): integer products of codes of at most
//! 8 bits by `vpdpbusd` (exact `i32` sums, used only where they cannot
//! overflow), and f32 input and weight gradients that skip the terms whose
//! gradient factor is zero (exactly a no-op when the other operand is
//! finite), keeping each output's chain of additions in the reference's
//! order.
//!
//! Operations of fewer than `2^17` products run on the calling thread (a
//! trip through the pool costs more than they do); larger ones are split
//! across the pool's threads.
//!
//! # Examples
//!
//! ```
//! use fixnn::backend::{AccOut, Backend, LinearGeom, Operand, RefBackend};
//! use fixnn_std::rayon_backend::RayonBackend;
//!
//! let g = LinearGeom { batch: 2, inp: 3, out: 2 };
//! let x = [0.5, -1.0, 2.0, 0.25, 0.0, -3.0];
//! let w = [1.0, 2.0, 3.0, -1.0, 0.5, 0.125];
//! let (x, w) = (Operand { v: &x, fmt: None }, Operand { v: &w, fmt: None });
//! let (mut y, mut want) = ([0.0f32; 4], [0.0f32; 4]);
//! RayonBackend::with_threads(2)?.linear(g, x, w, AccOut::Float(&mut y))?;
//! RefBackend.linear(g, x, w, AccOut::Float(&mut want))?;
//! assert_eq!(y.map(f32::to_bits), want.map(f32::to_bits));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fixnn::backend::{
    product_exp, AccOut, Backend, ConvGeom, LinearGeom, Operand, Pass, RefBackend,
};
use fixnn::{Error, Result};

#[cfg(target_arch = "x86_64")]
mod ahead;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod codes;
mod conv;
mod hot;
mod kernel;
mod linear;
mod scratch;

pub(crate) use hot::join;

use codes::{all_finite, scan, tier, Load, Tier, ToCode};
use kernel::{Ctx, Elem, Isa, Out, KC, NR, NRD, PAR_MIN_MACS};

/// The multi-threaded, vectorised backend. Cheap to clone (the pool is
/// shared).
#[derive(Clone)]
pub struct RayonBackend {
    pool: Option<Arc<rayon::ThreadPool>>,
    /// An [`RayonBackend::install_hot`] runs on the pool (shared by clones).
    hot: Arc<AtomicBool>,
    isa: Isa,
    /// The CPU runs the AVX-512 (F, BW, VL, VNNI) kernels of `avx512`.
    avx512: bool,
    /// A weight gradient's operand derived during the forward pass.
    #[cfg(target_arch = "x86_64")]
    ahead: Arc<ahead::Ahead>,
}

impl fmt::Debug for RayonBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RayonBackend")
            .field("threads", &self.threads())
            .field("own_pool", &self.pool.is_some())
            .field("kernels", &self.isa)
            .field("avx512", &self.avx512)
            .finish()
    }
}

impl Default for RayonBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl RayonBackend {
    /// A backend running on rayon's global pool, with the best kernels the
    /// CPU supports (AVX2 when present).
    pub fn new() -> Self {
        RayonBackend {
            pool: None,
            hot: Arc::default(),
            isa: Isa::detect(),
            avx512: avx512_detect(),
            #[cfg(target_arch = "x86_64")]
            ahead: Arc::default(),
        }
    }

    /// A backend with its own pool of `threads` threads; all its parallel
    /// work runs inside that pool (small operations run on the calling
    /// thread).
    ///
    /// # Errors
    ///
    /// `threads == 0`, or the pool could not be built.
    pub fn with_threads(threads: usize) -> std::result::Result<Self, String> {
        Self::with_threads_and_stack(threads, None)
    }

    /// [`RayonBackend::with_threads`] whose threads have stacks of `stack`
    /// bytes (rayon's default if `None`): for callers that run deep or
    /// large-framed code on them with [`RayonBackend::install`].
    ///
    /// # Errors
    ///
    /// As [`RayonBackend::with_threads`].
    pub fn with_threads_and_stack(
        threads: usize,
        stack: Option<usize>,
    ) -> std::result::Result<Self, String> {
        if threads == 0 {
            return Err("a rayon backend needs at least one thread".into());
        }
        let mut builder = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("fixnn-{i}"));
        if let Some(bytes) = stack {
            builder = builder.stack_size(bytes);
        }
        let pool = builder
            .build()
            .map_err(|e| format!("cannot build a pool of {threads} threads: {e}"))?;
        Ok(RayonBackend {
            pool: Some(Arc::new(pool)),
            hot: Arc::default(),
            isa: Isa::detect(),
            avx512: avx512_detect(),
            #[cfg(target_arch = "x86_64")]
            ahead: Arc::default(),
        })
    }

    /// The same backend using only the portable kernels (no run-time
    /// selection of AVX2). The results are the same; this exists to test
    /// and compare the kernels.
    pub fn with_portable_kernels(mut self) -> Self {
        self.isa = Isa::Generic;
        self.avx512 = false;
        self
    }

    /// The same backend restricted to one set of kernels (the results are
    /// the same with every set; this exists to test and compare them).
    ///
    /// # Errors
    ///
    /// The CPU lacks the instructions of `k` (see [`Kernels::available`]).
    pub fn with_kernels(mut self, k: Kernels) -> std::result::Result<Self, String> {
        if !k.available() {
            return Err(format!("this CPU cannot run the {k:?} kernels"));
        }
        match k {
            Kernels::Portable => return Ok(self.with_portable_kernels()),
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => (self.isa, self.avx512) = (Isa::Avx2, false),
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => (self.isa, self.avx512) = (Isa::Avx2, true),
            #[cfg(not(target_arch = "x86_64"))]
            Kernels::Avx2 | Kernels::Avx512 => {}
        }
        Ok(self)
    }

    /// The best set of kernels this backend uses.
    pub fn kernels(&self) -> Kernels {
        match (self.isa, self.avx512) {
            (_, true) => Kernels::Avx512,
            (Isa::Generic, false) => Kernels::Portable,
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, false) => Kernels::Avx2,
        }
    }

    /// Threads that share the work.
    pub fn threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// Runs `f` on a thread of the backend's own pool (on the calling
    /// thread if it uses rayon's global pool). The parallel operations `f`
    /// calls then split their work from inside the pool instead of handing
    /// it to the pool and sleeping until it is done, which saves waking the
    /// calling thread on every operation (it matters for small operations,
    /// such as the MNIST MLP's 5-million-product layers). The results are
    /// the same bits either way.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    /// [`RayonBackend::install`], with the pool's other threads kept
    /// polling for work (`rayon::yield_now`) until `f` returns instead of
    /// going to sleep between operations.
    ///
    /// A training step alternates short parallel products with sequential
    /// passes; a sleeping thread takes tens of microseconds to wake (more in
    /// a virtual machine), so the MNIST MLP's products, tens of microseconds
    /// each, finished before the second thread joined, and two threads were
    /// slower than one. Polling costs the other cores' time while `f` runs
    /// sequential code, nothing else; the results are the same bits. No
    /// thread polls any more when this returns (or unwinds). A thread that
    /// finds no work for 200 µs stops polling for a moment and queues its
    /// poller again: rayon can start a poller nested inside work `f` waits
    /// for, and a poller that only returned at `f`'s end would then never
    /// return (see `hot::poll`).
    ///
    /// One at a time per pool: while one runs, another (from a clone of
    /// the backend on another thread, or nested in `f`) runs as
    /// [`RayonBackend::install`]. Two sets of pollers on one pool could
    /// deadlock: a thread can pick up the second set's poller while it
    /// waits inside work the first `f` waits for, and that poller returns
    /// only when the second `f` has, which may be waiting under the first.
    pub fn install_hot<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let Some(pool) = &self.pool else { return f() };
        if pool.current_num_threads() < 2 {
            return pool.install(f);
        }
        if self
            .hot
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return pool.install(f);
        }
        // Cleared last, after the pollers have stopped (even on unwinding).
        struct Cold<'a>(&'a AtomicBool);
        impl Drop for Cold<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _cold = Cold(&self.hot);
        pool.install(|| {
            // Released (no thread polls any more) when `f` returns or
            // unwinds.
            let hot = hot::Polling::start();
            hot.own(f)
        })
    }

    /// Runs `f`, inside the own pool when the work is worth threads.
    fn run<R: Send>(&self, macs: u64, f: impl FnOnce(Ctx) -> R + Send) -> R {
        let threads = self.threads();
        let ctx = Ctx {
            isa: self.isa,
            par: threads > 1 && macs >= PAR_MIN_MACS && !is_serial(),
            threads,
        };
        match &self.pool {
            Some(pool) if ctx.par => pool.install(|| f(ctx)),
            _ => f(ctx),
        }
    }
}

thread_local! {
    /// [`serial`] runs on this thread.
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every operation it calls on this thread kept on this
/// thread: no backend product and no element pass of the core
/// ([`crate::accel`]) is split across a pool. The results are the same
/// bits (they are for any number of threads); this exists for when the
/// other cores are busy, where waiting for a pool thread that the
/// operating system has descheduled costs more than the split saves
/// (`fixnn train` chooses it block by block, see `train`).
///
/// ```
/// use fixnn_std::rayon_backend::{is_serial, serial};
///
/// assert!(!is_serial());
/// let inner = serial(|| (is_serial(), serial(is_serial)));
/// assert_eq!(inner, (true, true));
/// assert!(!is_serial());
/// // Restored when `f` panics, too.
/// assert!(std::panic::catch_unwind(|| serial(|| panic!("in f"))).is_err());
/// assert!(!is_serial());
/// ```
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    // Restored even when `f` unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

/// Whether [`serial`] runs on this thread.
pub fn is_serial() -> bool {
    SERIAL.with(|s| s.get())
}

/// A set of kernels the backend can be restricted to
/// ([`RayonBackend::with_kernels`]); each gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// The blocked kernels compiled for the baseline target (SSE2 on
    /// x86-64, NEON on aarch64).
    Portable,
    /// The blocked kernels compiled with AVX2 (x86-64 with AVX2 only).
    Avx2,
    /// AVX2 blocked kernels plus the AVX-512 (F, BW, VNNI) fully connected
    /// kernels (x86-64 with those extensions only).
    Avx512,
}

impl Kernels {
    /// Every set, from the most portable.
    pub const ALL: [Kernels; 3] = [Kernels::Portable, Kernels::Avx2, Kernels::Avx512];

    /// Whether this CPU runs this set.
    pub fn available(self) -> bool {
        match self {
            Kernels::Portable => true,
            Kernels::Avx2 => Isa::detect() != Isa::Generic,
            Kernels::Avx512 => Isa::detect() != Isa::Generic && avx512_detect(),
        }
    }
}

/// Whether the AVX-512 kernels can run here.
fn avx512_detect() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::detect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A sum of products computed by the packed kernels, for any element type
/// (`E`), output (`T`) and panel width (`N`).
trait Product: Sync {
    /// `out = A B`, reading operand values with `la` and `lb`, blocks of
    /// `kc` reduction steps.
    fn run<E: Elem, T: Out<E>, const N: usize>(
        &self,
        ctx: Ctx,
        la: Load,
        lb: Load,
        kc: usize,
        out: &mut [T],
    );
}

/// How a product is computed.
struct Plan<'a> {
    a: Operand<'a>,
    b: Operand<'a>,
    /// Values multiplied by padded zeros (must be finite on the f32 path).
    zero_partner: Option<&'a [f32]>,
    /// The fast path cannot reproduce this call: use the reference.
    reference_only: bool,
}

fn shape_err(what: &'static str) -> Error {
    Error::Shape { what }
}

fn macs(dims: &[usize]) -> u64 {
    dims.iter().fold(1u64, |m, &d| m.saturating_mul(d as u64))
}

/// Runs `p` on the path the operands and the output call for.
fn execute<P: Product>(
    ctx: Ctx,
    p: &P,
    plan: Plan<'_>,
    out: AccOut<'_>,
    reference: impl FnOnce(AccOut<'_>) -> Result<()>,
) -> Result<()> {
    let Plan {
        a,
        b,
        zero_partner,
        reference_only,
    } = plan;
    match (product_exp(a, b), a.fmt, b.fmt, out) {
        (None, _, _, AccOut::Float(o)) => {
            let finite = zero_partner.is_none_or(|v| all_finite(ctx, v));
            if reference_only || !finite {
                return reference(AccOut::Float(o));
            }
            p.run::<f32, f32, NR>(ctx, Load::Raw, Load::Raw, KC, o);
            Ok(())
        }
        (Some(_), Some(fa), Some(fb), AccOut::Int(o)) => {
            if reference_only {
                return reference(AccOut::Int(o));
            }
            let (ta, tb) = (ToCode::new(fa), ToCode::new(fb));
            let (la, lb) = (Load::Code(ta), Load::Code(tb));
            match tier(scan(ctx, a.v, ta), scan(ctx, b.v, tb)) {
                Tier::F32(kc) => p.run::<f32, i64, NR>(ctx, la, lb, kc, o),
                Tier::F64(kc) => p.run::<f64, i64, NRD>(ctx, la, lb, kc, o),
                Tier::Reference => return reference(AccOut::Int(o)),
            }
            Ok(())
        }
        _ => Err(shape_err(
            "output variant does not match the operands' formats",
        )),
    }
}

impl RayonBackend {
    /// `train`: a forward pass of a training step
    /// ([`Backend::linear_train`]).
    fn linear_op(
        &self,
        g: LinearGeom,
        kind: linear::Kind,
        (a, b): (Operand<'_>, Operand<'_>),
        out: AccOut<'_>,
        train: bool,
    ) -> Result<()> {
        let _span = crate::trace::span(match kind {
            linear::Kind::Forward => "linear forward",
            linear::Kind::InputGrad => "linear input grad",
            linear::Kind::WeightGrad => "linear weight grad",
        });
        #[cfg(target_arch = "x86_64")]
        let out = match self.linear_avx512(g, kind, (a, b), out, train) {
            Ok(done) => return done,
            Err(out) => out,
        };
        let op = linear::Linear {
            g,
            kind,
            a: a.v,
            b: b.v,
        };
        let plan = Plan {
            a,
            b,
            zero_partner: None,
            reference_only: false,
        };
        self.run(macs(&[g.batch, g.inp, g.out]), |ctx| {
            execute(ctx, &op, plan, out, |o| match kind {
                linear::Kind::Forward => RefBackend.linear(g, a, b, o),
                linear::Kind::InputGrad => RefBackend.linear_input_grad(g, a, b, o),
                linear::Kind::WeightGrad => RefBackend.linear_weight_grad(g, a, b, o),
            })
        })
    }

    /// The AVX-512 kernels, when the CPU has them and they apply:
    /// integer forward products of codes that fit `i8`, and f32 input and
    /// weight gradients with a finite `B` operand. `Err` gives the output
    /// back for the other paths. A split forward pass of a training step
    /// (`train`) also starts deriving its weight gradient's packed `x`
    /// ([`ahead`]), which that gradient takes instead of scanning `x`.
    #[cfg(target_arch = "x86_64")]
    fn linear_avx512<'o>(
        &self,
        g: LinearGeom,
        kind: linear::Kind,
        (a, b): (Operand<'_>, Operand<'_>),
        out: AccOut<'o>,
        train: bool,
    ) -> std::result::Result<Result<()>, AccOut<'o>> {
        if !self.avx512 {
            return Err(out);
        }
        let LinearGeom {
            batch,
            inp,
            out: n_out,
        } = g;
        let work = macs(&[batch, inp, n_out]);
        match (kind, a.fmt, b.fmt, out) {
            (linear::Kind::Forward, Some(fa), Some(fb), AccOut::Int(o)) => {
                if !avx512::int8_fits(inp) {
                    return Err(AccOut::Int(o));
                }
                let (ta, tb) = (ToCode::new(fa), ToCode::new(fb));
                self.run(work, |ctx| {
                    let p = avx512::Int8 {
                        a: a.v,
                        ta,
                        b: b.v,
                        tb,
                        m: batch,
                        n: n_out,
                        k: inp,
                    };
                    // Only where a polling thread can derive from them.
                    let step = fixnn::quant::pow2_f32(fa.step_exp());
                    let mut codes = (train && ctx.par && hot::polling())
                        .then(|| scratch::Buf::<i8>::with_len(batch * inp, 0));
                    if avx512::int8(&p, ctx.par, o, codes.as_deref_mut()) {
                        if let Some(codes) = codes {
                            self.ahead.start(a.v, inp, codes, step);
                        }
                        Ok(Ok(()))
                    } else {
                        Err(AccOut::Int(o))
                    }
                })
            }
            (linear::Kind::InputGrad | linear::Kind::WeightGrad, _, _, AccOut::Float(o))
                if a.fmt.is_none() || b.fmt.is_none() =>
            {
                self.run(work, |ctx| {
                    let scan_span = crate::trace::span("f32 scan");
                    // Derived during the forward pass, if `x` still holds
                    // the values it was derived from (see `ahead`).
                    let derived = match kind {
                        linear::Kind::WeightGrad => self.ahead.take(b.v, inp, ctx.par),
                        _ => None,
                    };
                    // Rows of `inp` values either way (x, or the weights);
                    // a weight gradient also uses the columns that hold one
                    // value in every row (see `avx512::Columns`).
                    // (Derived, `x` comes packed: no lanes to pack it by.)
                    let (b_finite, nz_b, masks, derived) = match derived {
                        Some(d) => (true, d.nz, Vec::new(), Some(d.cols)),
                        None => {
                            let (f, nz, m) = avx512::scan_columns(b.v, inp, ctx.par);
                            (f, nz, m, None)
                        }
                    };
                    // dw[o][i] = sum_b dy[b][o] x[b][i] with x mostly zeros
                    // (images): vectorised across o, skipping x's zeros.
                    // (`dy` is scanned only when the columns could pay with
                    // its every value non-zero.)
                    if kind == linear::Kind::WeightGrad
                        && avx512::columns_pay((batch * n_out, nz_b), (batch, inp, n_out))
                    {
                        let (a_finite, nz_a, _) = avx512::scan_columns(a.v, n_out, false);
                        if a_finite && avx512::columns_pay((nz_a, nz_b), (batch, inp, n_out)) {
                            avx512::f32_by_columns(a.v, b.v, (batch, inp, n_out), o);
                            return Ok(Ok(()));
                        }
                    }
                    drop(scan_span);
                    if !b_finite {
                        return Err(AccOut::Float(o));
                    }
                    let p = match kind {
                        // dx[b][i] = sum_o dy[b][o] w[o][i]
                        linear::Kind::InputGrad => avx512::F32Sparse {
                            a: a.v,
                            am: n_out,
                            ak: 1,
                            b: b.v,
                            ldb: inp,
                            m: batch,
                            n: inp,
                            k: n_out,
                        },
                        // dw[o][i] = sum_b dy[b][o] x[b][i]
                        _ => avx512::F32Sparse {
                            a: a.v,
                            am: 1,
                            ak: n_out,
                            b: b.v,
                            ldb: inp,
                            m: n_out,
                            n: inp,
                            k: batch,
                        },
                    };
                    let from_ahead = derived.is_some();
                    let cols = match (kind, derived) {
                        (linear::Kind::WeightGrad, Some(cols)) => cols,
                        (linear::Kind::WeightGrad, None) => {
                            avx512::Columns::pack(b.v, inp, &masks, ctx.par)
                        }
                        _ => None,
                    };
                    avx512::f32_sparse(&p, cols.as_ref(), ctx.par, o);
                    if from_ahead {
                        self.ahead.recycle(cols);
                    }
                    Ok(Ok(()))
                })
            }
            (_, _, _, out) => Err(out),
        }
    }

    fn conv_op(
        &self,
        g: ConvGeom,
        kind: conv::Kind,
        (a, b): (Operand<'_>, Operand<'_>),
        out: AccOut<'_>,
    ) -> Result<()> {
        let _span = crate::trace::span(match kind {
            conv::Kind::Forward => "conv forward",
            conv::Kind::InputGrad => "conv input grad",
            conv::Kind::WeightGrad => "conv weight grad",
        });
        let op = conv::Conv {
            g,
            kind,
            a: a.v,
            b: b.v,
        };
        let plan = Plan {
            a,
            b,
            zero_partner: Some(match kind {
                conv::Kind::WeightGrad => a.v,
                _ => b.v,
            }),
            reference_only: op.too_big(),
        };
        let work = macs(&[g.batch, g.cout, g.oh, g.ow, g.cpg(), g.kh, g.kw]);
        self.run(work, |ctx| {
            execute(ctx, &op, plan, out, |o| match kind {
                conv::Kind::Forward => RefBackend.conv2d(g, a, b, o),
                conv::Kind::InputGrad => RefBackend.conv2d_input_grad(g, a, b, o),
                conv::Kind::WeightGrad => RefBackend.conv2d_weight_grad(g, a, b, o),
            })
        })
    }
}

impl Backend for RayonBackend {
    fn linear(&self, g: LinearGeom, x: Operand<'_>, w: Operand<'_>, y: AccOut<'_>) -> Result<()> {
        g.check_buffers(Pass::Forward, x.v.len(), w.v.len(), y.len())?;
        self.linear_op(g, linear::Kind::Forward, (x, w), y, false)
    }

    fn linear_train(
        &self,
        g: LinearGeom,
        x: Operand<'_>,
        w: Operand<'_>,
        y: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::Forward, x.v.len(), w.v.len(), y.len())?;
        self.linear_op(g, linear::Kind::Forward, (x, w), y, true)
    }

    fn linear_input_grad(
        &self,
        g: LinearGeom,
        dy: Operand<'_>,
        w: Operand<'_>,
        dx: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::InputGrad, dy.v.len(), w.v.len(), dx.len())?;
        self.linear_op(g, linear::Kind::InputGrad, (dy, w), dx, false)
    }

    fn linear_weight_grad(
        &self,
        g: LinearGeom,
        dy: Operand<'_>,
        x: Operand<'_>,
        dw: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::WeightGrad, dy.v.len(), x.v.len(), dw.len())?;
        self.linear_op(g, linear::Kind::WeightGrad, (dy, x), dw, false)
    }

    fn conv2d(&self, g: ConvGeom, x: Operand<'_>, w: Operand<'_>, y: AccOut<'_>) -> Result<()> {
        g.check_buffers(Pass::Forward, x.v.len(), w.v.len(), y.len())?;
        self.conv_op(g, conv::Kind::Forward, (x, w), y)
    }

    fn conv2d_input_grad(
        &self,
        g: ConvGeom,
        dy: Operand<'_>,
        w: Operand<'_>,
        dx: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::InputGrad, dy.v.len(), w.v.len(), dx.len())?;
        self.conv_op(g, conv::Kind::InputGrad, (dy, w), dx)
    }

    fn conv2d_weight_grad(
        &self,
        g: ConvGeom,
        dy: Operand<'_>,
        x: Operand<'_>,
        dw: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::WeightGrad, dy.v.len(), x.v.len(), dw.len())?;
        self.conv_op(g, conv::Kind::WeightGrad, (dy, x), dw)
    }
}

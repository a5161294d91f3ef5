//! Instructions per multiply-accumulate of whole training steps on the
//! Cortex-M4 under QEMU with `-icount shift=0` (`FIXNN_ICOUNT=1`): the
//! device cases `cnn` (batch 1) and `mlp` (the MNIST MLP, batch 64), every
//! run and step, once with the reference backend and once with
//! `DspBackend`. `scripts/bench-m4.sh` runs it.
//!
//! A step is everything from loading its inputs to the end of the
//! optimizer update: forward, loss, backward, update (the records the run
//! loop hands to the sink are not hashed or printed here). The MACs are
//! those of the backend's linear and convolution calls in the step.
//!
//! Prints `S <case> <backend> <run> <step> <macs> <instructions>
//! <instructions in backend calls> <packed calls> <reference calls>` per
//! step, then `END`.
#![no_std]
#![no_main]

use core::cell::Cell;
use core::fmt::Write;

use fixnn_firmware::fixnn::backend::{AccOut, Backend, ConvGeom, LinearGeom, Operand, RefBackend};
use fixnn_firmware::fixnn::kernels::DspBackend;
use fixnn_firmware::fixnn::Result;
use fixnn_firmware::fixnn_cases::nets::{Cnn, Mlp, CLASSES, CNN_B, MLP_B};
use fixnn_firmware::fixnn_cases::{self as cases, Case, CaseError, Record, Sink, Want};
use fixnn_firmware::{self as fw, clock, Out};

static CNN: &[u8] = include_bytes!(concat!(env!("FIXNN_CASES_DIR"), "/cnn.case"));
static MLP: &[u8] = include_bytes!(concat!(env!("FIXNN_CASES_DIR"), "/mlp.case"));

const SCRATCH: usize = 64 * 1024;
static mut SCRATCH_BUF: [u32; SCRATCH] = [0; SCRATCH];

/// A backend that counts the multiply-accumulates it is asked for.
struct Counting<'a, B> {
    inner: &'a B,
    macs: Cell<u64>,
    /// SysTick ticks spent inside the backend.
    ticks: Cell<u64>,
}

impl<B> Counting<'_, B> {
    fn timed(&self, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let t0 = clock::ticks();
        let r = f();
        self.ticks.set(self.ticks.get() + (clock::ticks() - t0));
        r
    }
    fn lin(&self, g: LinearGeom) {
        let m = (g.batch * g.inp * g.out) as u64;
        self.macs.set(self.macs.get() + m);
    }
    fn conv(&self, g: ConvGeom) {
        let m = (g.batch * g.cout * g.oh * g.ow * g.cpg() * g.kh * g.kw) as u64;
        self.macs.set(self.macs.get() + m);
    }
}

impl<B: Backend> Backend for Counting<'_, B> {
    fn linear(&self, g: LinearGeom, a: Operand<'_>, b: Operand<'_>, o: AccOut<'_>) -> Result<()> {
        self.lin(g);
        self.timed(|| self.inner.linear(g, a, b, o))
    }
    fn linear_input_grad(
        &self,
        g: LinearGeom,
        a: Operand<'_>,
        b: Operand<'_>,
        o: AccOut<'_>,
    ) -> Result<()> {
        self.lin(g);
        self.timed(|| self.inner.linear_input_grad(g, a, b, o))
    }
    fn linear_weight_grad(
        &self,
        g: LinearGeom,
        a: Operand<'_>,
        b: Operand<'_>,
        o: AccOut<'_>,
    ) -> Result<()> {
        self.lin(g);
        self.timed(|| self.inner.linear_weight_grad(g, a, b, o))
    }
    fn conv2d(&self, g: ConvGeom, a: Operand<'_>, b: Operand<'_>, o: AccOut<'_>) -> Result<()> {
        self.conv(g);
        self.timed(|| self.inner.conv2d(g, a, b, o))
    }
    fn conv2d_input_grad(
        &self,
        g: ConvGeom,
        a: Operand<'_>,
        b: Operand<'_>,
        o: AccOut<'_>,
    ) -> Result<()> {
        self.conv(g);
        self.timed(|| self.inner.conv2d_input_grad(g, a, b, o))
    }
    fn conv2d_weight_grad(
        &self,
        g: ConvGeom,
        a: Operand<'_>,
        b: Operand<'_>,
        o: AccOut<'_>,
    ) -> Result<()> {
        self.conv(g);
        self.timed(|| self.inner.conv2d_weight_grad(g, a, b, o))
    }
}

/// Times steps between the run loop's marks.
struct StepSink<'a> {
    case: &'a str,
    backend: &'a str,
    macs: &'a Cell<u64>,
    in_backend: &'a Cell<u64>,
    counts: &'a dyn Fn() -> (u32, u32),
    run: u32,
    step: u32,
    t0: u64,
    m0: u64,
    b0: u64,
    c0: (u32, u32),
}

impl Sink for StepSink<'_> {
    fn record(&mut self, _r: &Record<'_>) {}

    fn error(&mut self, run: u32, step: u32, e: &CaseError) {
        let _ = cases::write_error_line(&mut Out, run, step, e);
    }

    fn mark(&mut self, what: &'static str) {
        let now = clock::ticks();
        match what {
            "start" => self.step = 0,
            "configs" => {}
            "update" => {
                let c = (self.counts)();
                let _ = writeln!(
                    Out,
                    "S {} {} {} {} {} {} {} {} {}",
                    self.case,
                    self.backend,
                    self.run,
                    self.step,
                    self.macs.get() - self.m0,
                    clock::ticks_to_ns(now - self.t0),
                    clock::ticks_to_ns(self.in_backend.get() - self.b0),
                    c.0 - self.c0.0,
                    c.1 - self.c0.1
                );
                self.step += 1;
            }
            _ => return,
        }
        if what == "start" {
            return;
        }
        // The next step starts here (after "configs" or an update).
        self.m0 = self.macs.get();
        self.b0 = self.in_backend.get();
        self.c0 = (self.counts)();
        self.t0 = clock::ticks();
    }
}

fn bench<C: Case<B, K>, const B: usize, const K: usize>(
    name: &str,
    blob: &[u8],
    scratch: &mut [u32],
) {
    let runs = 2;
    for run in 0..runs {
        {
            let c = Counting {
                inner: &RefBackend,
                macs: Cell::new(0),
                ticks: Cell::new(0),
            };
            let mut s = StepSink {
                case: name,
                backend: "reference",
                macs: &c.macs,
                in_backend: &c.ticks,
                counts: &|| (0, 0),
                run,
                step: 0,
                t0: 0,
                m0: 0,
                b0: 0,
                c0: (0, 0),
            };
            let _ = cases::run::<C, _, B, K>(&c, blob, Want::Run(run), &mut s);
        }
        {
            let d = DspBackend::new(&mut *scratch);
            let c = Counting {
                inner: &d,
                macs: Cell::new(0),
                ticks: Cell::new(0),
            };
            let counts = || (d.fast_calls(), d.fallback_calls());
            let mut s = StepSink {
                case: name,
                backend: "dsp",
                macs: &c.macs,
                in_backend: &c.ticks,
                counts: &counts,
                run,
                step: 0,
                t0: 0,
                m0: 0,
                b0: 0,
                c0: (0, 0),
            };
            let _ = cases::run::<C, _, B, K>(&c, blob, Want::Run(run), &mut s);
        }
    }
}

#[cortex_m_rt::entry]
fn main() -> ! {
    fw::init();
    // SAFETY: the only reference to SCRATCH_BUF, made once in main.
    #[allow(unsafe_code)]
    let scratch = unsafe { &mut *core::ptr::addr_of_mut!(SCRATCH_BUF) };
    bench::<Cnn, CNN_B, CLASSES>("cnn", CNN, scratch);
    bench::<Mlp, MLP_B, 10>("mlp", MLP, scratch);
    let _ = writeln!(Out, "END");
    fw::exit(true)
}

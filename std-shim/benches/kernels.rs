//! Kernel throughput in GMAC/s (10^9 multiply-accumulates per second) for
//! every operation of the `Backend` trait, on a range of shapes, for each
//! set of kernels this CPU runs: the reference (`RefBackend`), the portable
//! blocked kernels, AVX2 and AVX-512 (VNNI).
//!
//! Run: `cargo bench -p fixnn-std --bench kernels` (one thread: figures per
//! core). Options after `--`: `--threads N`, and words that keep only the
//! cases whose name contains one of them (e.g. `-- linear 1024`), or
//! `--linear BxIxO` for that fully connected shape only. `--peak` measures
//! the CPU's `vpdpbusd` throughput instead (24 independent register sums,
//! no memory operands): the ceiling for any int8 kernel on this machine.
//!
//! Operands: `int8` is both operands exact codes of 8-bit formats (integer
//! products, `AccOut::Int`); `f32xq8` is a full-precision first operand
//! (a gradient, 60% zeros as after a ReLU) times 8-bit codes (`AccOut::Float`),
//! which is what training with full-precision gradients runs;
//! `f32xq8-sparse-x` is that weight gradient with 80% zero inputs (images). Each figure is
//! the best of several timed calls (at least 3, or 0.5 s) after a warm-up
//! call; the reference is timed once for products over 2^28 MACs. With one
//! thread (the work then runs on the calling thread) calls are timed by the
//! thread's CPU time, so that a machine shared with other work still gives
//! per-core figures; with more threads, by wall-clock time.

use std::hint::black_box;
use std::time::{Duration, Instant};

use fixnn::backend::{AccOut, Backend, ConvGeom, LinearGeom, Operand, RefBackend};
use fixnn::Format;
use fixnn_std::rayon_backend::{Kernels, RayonBackend};

#[path = "common/clock.rs"]
mod clock;
use clock::{now, Clock};

/// Deterministic pseudo-random values (a 64-bit LCG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
    /// Exact codes of `f`, uniform.
    fn codes(&mut self, n: usize, f: Format) -> Vec<f32> {
        let (lo, hi) = (f.min_code() as i64, f.max_code() as i64);
        (0..n)
            .map(|_| f.to_f32((lo + self.next() as i64 % (hi - lo + 1)) as i32))
            .collect()
    }
    /// Exact codes of `f`, 80% zeros (an image's background).
    fn sparse_codes(&mut self, n: usize, f: Format) -> Vec<f32> {
        let mut v = self.codes(n, f);
        for v in &mut v {
            if !self.next().is_multiple_of(5) {
                *v = 0.0;
            }
        }
        v
    }
    /// Full-precision values, 60% exact zeros.
    fn grads(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let r = self.next();
                if r % 10 < 6 {
                    0.0
                } else {
                    (r as f32 / u32::MAX as f32 - 0.5) * 0.01
                }
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Forward,
    InputGrad,
    WeightGrad,
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    Linear(LinearGeom),
    Conv(ConvGeom),
}

impl Shape {
    fn macs(&self) -> u64 {
        match self {
            Shape::Linear(g) => (g.batch * g.inp * g.out) as u64,
            Shape::Conv(g) => (g.batch * g.cout * g.oh * g.ow * g.cpg() * g.kh * g.kw) as u64,
        }
    }
    /// Element counts of `[x, w, y]`.
    fn lens(&self) -> [usize; 3] {
        match self {
            Shape::Linear(g) => [g.batch * g.inp, g.out * g.inp, g.batch * g.out],
            Shape::Conv(g) => [
                g.batch * g.cin * g.h * g.w,
                g.cout * g.cpg() * g.kh * g.kw,
                g.batch * g.cout * g.oh * g.ow,
            ],
        }
    }
}

fn conv(
    batch: usize,
    (cin, cout): (usize, usize),
    (h, w): (usize, usize),
    k: usize,
    pad: usize,
) -> ConvGeom {
    let (oh, ow) = (h + 2 * pad - k + 1, w + 2 * pad - k + 1);
    ConvGeom {
        batch,
        cin,
        h,
        w,
        cout,
        kh: k,
        kw: k,
        oh,
        ow,
        stride: (1, 1),
        pad: (pad, pad),
        dil: (1, 1),
        groups: 1,
    }
}

fn shapes() -> Vec<(&'static str, Shape)> {
    let lin = |batch, inp, out| Shape::Linear(LinearGeom { batch, inp, out });
    vec![
        ("linear 64x784x100 (MLP fc1)", lin(64, 784, 100)),
        ("linear 64x100x10 (MLP fc2)", lin(64, 100, 10)),
        ("linear 256x512x512", lin(256, 512, 512)),
        ("linear 1024x1024x1024", lin(1024, 1024, 1024)),
        (
            "conv 64x1x28x28 5x5 -> 6 (LeNet conv1)",
            Shape::Conv(conv(64, (1, 6), (28, 28), 5, 0)),
        ),
        (
            "conv 64x6x12x12 5x5 -> 16 (LeNet conv2)",
            Shape::Conv(conv(64, (6, 16), (12, 12), 5, 0)),
        ),
        (
            "conv 16x32x32x32 3x3 pad 1 -> 64",
            Shape::Conv(conv(16, (32, 64), (32, 32), 3, 1)),
        ),
    ]
}

/// Runs `f` until it has run `min_runs` times and for `budget` (or once
/// if `once`), returning the fastest call, timed by [`now`].
fn time(once: bool, clock: Clock, mut f: impl FnMut()) -> Duration {
    f(); // warm-up: scratch buffers, pool threads, caches
    let (budget, min_runs) = (Duration::from_millis(500), 3);
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < min_runs || start.elapsed() < budget {
        let t = now(clock);
        f();
        best = best.min(now(clock).saturating_sub(t));
        runs += 1;
        if once {
            break;
        }
    }
    best
}

/// Best throughput of `vpdpbusd` on registers, in GMAC/s (64 per instruction).
#[cfg(target_arch = "x86_64")]
fn peak() -> Option<f64> {
    use std::arch::x86_64::*;
    #[allow(unsafe_code)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn run(n: usize, seed: i32) -> i32 {
        let mut acc = [_mm512_set1_epi32(seed); 24];
        let b = _mm512_set1_epi32(seed ^ 0x0102_0304);
        let c = _mm512_set1_epi32(seed ^ 0x0506_0708);
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm512_dpbusd_epi32(*a, b, c);
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_epi32(a)).sum()
    }
    if !(is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni"))
    {
        return None;
    }
    let n = 20_000;
    let mut best = Duration::MAX;
    for i in 0..3000 {
        let t = now(Clock::Thread);
        // SAFETY: the CPU has AVX-512 F, BW and VNNI (checked above).
        #[allow(unsafe_code)]
        black_box(unsafe { run(n, black_box(i)) });
        best = best.min(now(Clock::Thread).saturating_sub(t));
    }
    Some((n * 24 * 64) as f64 / best.as_secs_f64() / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn peak() -> Option<f64> {
    None
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--peak") {
        match peak() {
            Some(g) => println!("vpdpbusd peak, one thread: {g:.1} GMAC/s"),
            None => println!("this CPU has no AVX-512 VNNI"),
        }
        return;
    }
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .and_then(|t| t.parse().ok())
        .unwrap_or(1usize);
    // `--linear BxIxO`: that fully connected shape instead of the list.
    let custom = args
        .iter()
        .position(|a| a == "--linear")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| {
            let d: Vec<usize> = s.split('x').filter_map(|d| d.parse().ok()).collect();
            (d.len() == 3).then(|| {
                let g = LinearGeom {
                    batch: d[0],
                    inp: d[1],
                    out: d[2],
                };
                vec![("linear (custom)", Shape::Linear(g))]
            })
        });
    let words: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|&(i, a)| {
            !a.starts_with("--")
                && (i == 0 || !matches!(args[i - 1].as_str(), "--threads" | "--linear"))
        })
        .map(|(_, a)| a)
        .collect();
    let base = RayonBackend::with_threads(threads).expect("thread pool");
    let mut backends: Vec<(String, Box<dyn Backend>)> =
        vec![("reference".into(), Box::new(RefBackend))];
    for k in Kernels::ALL {
        match base.clone().with_kernels(k) {
            Ok(b) => backends.push((format!("{k:?}").to_lowercase(), Box::new(b))),
            Err(e) => println!("# {e}: not measured"),
        }
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let clock = if threads == 1 {
        Clock::Thread
    } else {
        Clock::Wall
    };
    println!("# {cpu}, {threads} thread(s); GMAC/s of the fastest call by {clock:?} time");
    let f8 = Format::new(8, 0).expect("8-bit format");
    let mut rng = Lcg(0x5eed);
    for (name, shape) in custom.unwrap_or_else(shapes) {
        let [xl, wl, yl] = shape.lens();
        let x = rng.codes(xl, f8);
        let w = rng.codes(wl, f8);
        let dy8 = rng.codes(yl, f8);
        let dyf = rng.grads(yl);
        let xs = rng.sparse_codes(xl, f8);
        for op in [Op::Forward, Op::InputGrad, Op::WeightGrad] {
            for (int, sparse_x) in [(true, false), (false, false), (false, true)] {
                if op == Op::Forward && !int {
                    continue; // training's forward products are integer
                }
                if sparse_x && op != Op::WeightGrad {
                    continue;
                }
                let case = format!(
                    "{name} {} {}",
                    match op {
                        Op::Forward => "forward",
                        Op::InputGrad => "input-grad",
                        Op::WeightGrad => "weight-grad",
                    },
                    match (int, sparse_x) {
                        (true, _) => "int8",
                        (false, false) => "f32xq8",
                        (false, true) => "f32xq8-sparse-x",
                    }
                );
                if !words.is_empty() && !words.iter().any(|w| case.contains(w.as_str())) {
                    continue;
                }
                let q = |v| Operand { v, fmt: Some(f8) };
                let dy = if int {
                    q(&dy8[..])
                } else {
                    Operand { v: &dyf, fmt: None }
                };
                let (a, b, out_len) = match op {
                    Op::Forward => (q(&x[..]), q(&w[..]), yl),
                    Op::InputGrad => (dy, q(&w[..]), xl),
                    Op::WeightGrad => (dy, q(if sparse_x { &xs[..] } else { &x[..] }), wl),
                };
                let mut yi = vec![0i64; out_len];
                let mut yf = vec![0f32; out_len];
                let mut line = format!("{case}:");
                for (bname, be) in &backends {
                    let once = bname == "reference" && shape.macs() > 1 << 28;
                    let t = time(once, clock, || {
                        let out = if int {
                            AccOut::Int(&mut yi)
                        } else {
                            AccOut::Float(&mut yf)
                        };
                        let r = match (shape, op) {
                            (Shape::Linear(g), Op::Forward) => be.linear(g, a, b, out),
                            (Shape::Linear(g), Op::InputGrad) => be.linear_input_grad(g, a, b, out),
                            (Shape::Linear(g), Op::WeightGrad) => {
                                be.linear_weight_grad(g, a, b, out)
                            }
                            (Shape::Conv(g), Op::Forward) => be.conv2d(g, a, b, out),
                            (Shape::Conv(g), Op::InputGrad) => be.conv2d_input_grad(g, a, b, out),
                            (Shape::Conv(g), Op::WeightGrad) => be.conv2d_weight_grad(g, a, b, out),
                        };
                        r.expect("benchmark call");
                        black_box((&yi, &yf));
                    });
                    let gmacs = shape.macs() as f64 / t.as_secs_f64() / 1e9;
                    line += &format!(" {bname} {gmacs:.2}");
                }
                println!("{line}");
            }
        }
    }
}

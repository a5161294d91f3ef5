//! The rayon backend returns the reference backend's bits: every method,
//! whole outputs, many shapes (batch 1, odd sizes, sizes that are not
//! multiples of the vector width or of the blocks, stride, padding,
//! dilation, groups, depthwise), bit widths 2..=16, full-precision and
//! quantized operands, with 1, 2 and 3 threads.
//!
//! One macro, [`bitexact_suite!`], instantiates every test for each set of
//! optimised kernels ([`Kernels`]: portable, AVX2, AVX-512 VNNI). A set
//! the CPU cannot run is reported and replaced by the portable kernels, so
//! every test still compares something.

use std::sync::OnceLock;

use fixnn::backend::{AccOut, Backend, ConvGeom, LinearGeom, Operand, RefBackend};
use fixnn::{Format, Result, Stream};
use fixnn_std::rayon_backend::{Kernels, RayonBackend};

// ---------------------------------------------------------------- data

/// How an operand's values are drawn.
#[derive(Clone, Copy, Debug)]
enum Data {
    /// Full precision, wide dynamic range (any reordering of a sum shows).
    Float,
    /// Full precision with some infinities.
    FloatInf,
    /// Full precision, mostly exact zeros (a gradient through a ReLU).
    Sparse,
    /// Exact codes of `Format::new(bits, scale)`, uniform.
    Quant(u8, i8),
    /// Exact codes, mostly zero (an image's background).
    SparseQuant(u8, i8),
    /// Exact codes, mostly the extreme codes (largest products).
    Extreme(u8, i8),
    /// Declared quantized, but values that are no codes of the format
    /// (fractions, beyond the range, beyond `i16`).
    Garbage(u8, i8),
    /// Exact codes of `Format::new(bits, scale)` with zero point `z`,
    /// mostly the extreme codes (shifted ranges, `bits + 1`-bit codes).
    ExtremeZp(u8, i8, i32),
}

impl Data {
    fn fmt(self) -> Option<Format> {
        match self {
            Data::Float | Data::FloatInf | Data::Sparse => None,
            Data::Quant(b, s)
            | Data::SparseQuant(b, s)
            | Data::Extreme(b, s)
            | Data::Garbage(b, s) => Some(Format::new(b, s).expect("valid test format")),
            Data::ExtremeZp(b, s, z) => Some(
                Format::new(b, s)
                    .and_then(|f| f.with_zero_point(z))
                    .expect("valid test format"),
            ),
        }
    }
}

/// Deterministic draws: `next()` gives successive values of one stream.
struct Draws {
    s: Stream,
    i: u32,
}

impl Draws {
    fn new(seed: u64, tensor: u32) -> Self {
        Draws {
            s: Stream::new(seed, tensor, 7),
            i: 0,
        }
    }
    fn next(&mut self) -> u32 {
        self.i += 1;
        self.s.draw(self.i)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() as i64).rem_euclid(hi - lo + 1)
    }
    fn usize(&mut self, lo: usize, hi: usize) -> usize {
        self.range(lo as i64, hi as i64) as usize
    }
}

fn values(d: &mut Draws, len: usize, data: Data) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let r = d.next();
            match data {
                Data::Sparse if r % 8 < 5 => {
                    if r & 256 == 0 {
                        0.0
                    } else {
                        -0.0
                    }
                }
                Data::Float | Data::FloatInf | Data::Sparse => {
                    if r.is_multiple_of(23) {
                        return if r & 64 == 0 { 0.0 } else { -0.0 };
                    }
                    if matches!(data, Data::FloatInf) && r % 97 == 1 {
                        return if r & 128 == 0 {
                            f32::INFINITY
                        } else {
                            f32::NEG_INFINITY
                        };
                    }
                    let mant = 1.0 + (r >> 9) as f32 / (1u32 << 23) as f32;
                    let exp = d.range(-12, 12) as i32;
                    let sign = if r & 1 == 0 { 1.0 } else { -1.0 };
                    sign * mant * 2f32.powi(exp)
                }
                Data::SparseQuant(..) if !r.is_multiple_of(5) => 0.0,
                Data::Quant(..)
                | Data::SparseQuant(..)
                | Data::Extreme(..)
                | Data::ExtremeZp(..) => {
                    let f = data.fmt().expect("quantized");
                    let (lo, hi) = (f.min_code() as i64, f.max_code() as i64);
                    let code = match data {
                        Data::Extreme(..) | Data::ExtremeZp(..) if !r.is_multiple_of(4) => {
                            if r % 8 < 6 {
                                lo
                            } else {
                                hi
                            }
                        }
                        _ => d.range(lo, hi),
                    };
                    f.to_f32(code as i32)
                }
                Data::Garbage(..) => {
                    let f = data.fmt().expect("quantized");
                    let step = f.step();
                    match r % 5 {
                        0 => (d.range(-40, 40) as f32 + 0.375) * step,
                        1 => d.range(-(1 << 20), 1 << 20) as f32 * step,
                        2 => f32::NAN,
                        _ => d.range(f.min_code() as i64, f.max_code() as i64) as f32 * step,
                    }
                }
            }
        })
        .collect()
}

// ---------------------------------------------------------------- backends

/// Backends running kernel set `k` (1, 2 and 3 threads, and rayon's
/// global pool), built once per set.
fn backends(k: Kernels) -> &'static [(&'static str, RayonBackend)] {
    static B: [OnceLock<Vec<(&'static str, RayonBackend)>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = Kernels::ALL
        .iter()
        .position(|&x| x == k)
        .expect("a kernel set");
    B[i].get_or_init(|| {
        let k = if k.available() {
            k
        } else {
            eprintln!("this CPU cannot run the {k:?} kernels: testing the portable ones");
            Kernels::Portable
        };
        let t = |n| {
            RayonBackend::with_threads(n)
                .expect("pool")
                .with_kernels(k)
                .expect("available kernels")
        };
        let global = RayonBackend::new()
            .with_kernels(k)
            .expect("available kernels");
        assert_eq!(global.kernels(), k);
        vec![
            ("1 thread", t(1)),
            ("2 threads", t(2)),
            ("3 threads", t(3)),
            ("global pool", global),
        ]
    })
}

thread_local! {
    /// The test on this thread also runs the products the training loop's
    /// way (see [`runs`]).
    static ALSO_HOT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Every backend of [`backends`] called from outside its pool; in the
/// tests of sizes that split across threads ([`ALSO_HOT`]), the 2-thread
/// one also from inside [`RayonBackend::install_hot`] (the training loop's
/// way: on a pool thread while the other threads poll):
/// `(name, backend, hot)`.
fn runs(k: Kernels) -> impl Iterator<Item = (String, &'static RayonBackend, bool)> {
    let all = backends(k);
    let cold = all.iter().map(|(n, b)| (n.to_string(), b, false));
    let also_hot = ALSO_HOT.with(|h| h.get());
    let hot = all
        .iter()
        .filter(move |(n, _)| also_hot && *n == "2 threads")
        .map(|(n, b)| (format!("{n}, install_hot"), b, true));
    cold.chain(hot)
}

/// `f()`, inside `b.install_hot` if `hot`.
fn in_pool<R: Send>(b: &RayonBackend, hot: bool, f: impl FnOnce() -> R + Send) -> R {
    if hot {
        b.install_hot(f)
    } else {
        f()
    }
}

/// Garbage that must be overwritten.
const POISON: u32 = 0x7fa5_5a5a;

/// Runs `call` on the reference and on every rayon backend and compares
/// the whole outputs bit for bit.
fn compare(
    k: Kernels,
    what: &str,
    len: usize,
    int: bool,
    call: impl Fn(&dyn Backend, AccOut<'_>) -> Result<()> + Sync,
) {
    if int {
        let mut want = vec![i64::MIN + 3; len];
        call(&RefBackend, AccOut::Int(&mut want)).expect("reference");
        for (name, b, hot) in runs(k) {
            let mut got = vec![0x5a5a_5a5a_i64; len];
            in_pool(b, hot, || call(b, AccOut::Int(&mut got))).expect("rayon backend");
            if let Some(i) = (0..len).find(|&i| got[i] != want[i]) {
                panic!(
                    "{what}, {k:?}, {name}: element {i} of {len}: {} != reference {}",
                    got[i], want[i]
                );
            }
        }
    } else {
        let mut want = vec![f32::from_bits(POISON); len];
        call(&RefBackend, AccOut::Float(&mut want)).expect("reference");
        for (name, b, hot) in runs(k) {
            let mut got = vec![f32::from_bits(POISON); len];
            in_pool(b, hot, || call(b, AccOut::Float(&mut got))).expect("rayon backend");
            if let Some(i) = (0..len).find(|&i| got[i].to_bits() != want[i].to_bits()) {
                panic!(
                    "{what}, {k:?}, {name}: element {i} of {len}: {:?} ({:#010x}) != reference {:?} ({:#010x})",
                    got[i],
                    got[i].to_bits(),
                    want[i],
                    want[i].to_bits()
                );
            }
        }
    }
}

/// Operand pairs tried on every shape: both quantized at widths 2..=16
/// (chosen by `seed`), mixed, full precision, and the special cases.
fn data_pairs(d: &mut Draws, extra: bool) -> Vec<(Data, Data)> {
    let mut bits = || d.range(2, 16) as u8;
    let (b1, b2, b3) = (bits(), bits(), bits());
    let scale = |b: u8| (b as i8 % 5) - 2;
    let mut v = vec![
        (Data::Float, Data::Float),
        (Data::Quant(b1, scale(b1)), Data::Quant(b2, scale(b2))),
        (Data::Quant(8, 0), Data::Quant(8, 1)),
        (Data::Float, Data::Quant(b3, 0)),
        (Data::Quant(b2, -1), Data::Float),
    ];
    if extra {
        v.extend([
            (Data::Extreme(16, 3), Data::Extreme(16, -3)),
            (Data::Extreme(10, 0), Data::Extreme(10, 0)),
            (Data::Quant(2, 0), Data::Extreme(2, 5)),
            (Data::Quant(16, -120), Data::Quant(5, 127)),
            (Data::Garbage(8, 0), Data::Quant(8, 0)),
            (Data::Quant(12, 2), Data::Garbage(6, -3)),
            (Data::FloatInf, Data::Float),
            (Data::Float, Data::FloatInf),
            // Zero points: codes up to +-(2^15 - 1) at 15 bits.
            (
                Data::ExtremeZp(15, 0, -16384),
                Data::ExtremeZp(15, 2, 16383),
            ),
            (Data::ExtremeZp(8, -1, -128), Data::ExtremeZp(7, 1, 63)),
            (Data::ExtremeZp(3, 0, 2), Data::Quant(4, 0)),
        ]);
    }
    v
}

// ---------------------------------------------------------------- linear

fn check_linear(k: Kernels, g: LinearGeom, seed: u64, extra: bool) {
    let mut d = Draws::new(seed, 1);
    for (da, db) in data_pairs(&mut d, extra) {
        let what = |m: &str| format!("{m} {g:?} {da:?} x {db:?} (seed {seed})");
        let int = da.fmt().is_some() && db.fmt().is_some();
        // forward: x (da), w (db)
        let x = values(&mut d, g.batch * g.inp, da);
        let w = values(&mut d, g.out * g.inp, db);
        let (xo, wo) = (
            Operand {
                v: &x,
                fmt: da.fmt(),
            },
            Operand {
                v: &w,
                fmt: db.fmt(),
            },
        );
        compare(k, &what("linear"), g.batch * g.out, int, |b, o| {
            b.linear(g, xo, wo, o)
        });
        // input gradient: dy (da), w (db)
        let dy = values(&mut d, g.batch * g.out, da);
        let dyo = Operand {
            v: &dy,
            fmt: da.fmt(),
        };
        compare(
            k,
            &what("linear_input_grad"),
            g.batch * g.inp,
            int,
            |b, o| b.linear_input_grad(g, dyo, wo, o),
        );
        // weight gradient: dy (da), x (db)
        let x2 = values(&mut d, g.batch * g.inp, db);
        let x2o = Operand {
            v: &x2,
            fmt: db.fmt(),
        };
        compare(
            k,
            &what("linear_weight_grad"),
            g.out * g.inp,
            int,
            |b, o| b.linear_weight_grad(g, dyo, x2o, o),
        );
    }
}

fn linear_random_shapes(k: Kernels) {
    let cases = if cfg!(debug_assertions) { 12 } else { 60 };
    for seed in 0..cases {
        let mut d = Draws::new(seed, 0);
        let g = LinearGeom {
            batch: d.usize(1, 70),
            inp: d.usize(1, 150),
            out: d.usize(1, 70),
        };
        check_linear(k, g, seed, seed % 3 == 0);
    }
}

fn linear_fixed_shapes(k: Kernels) {
    let shapes = [
        (1, 1, 1),
        (1, 784, 100),
        (64, 100, 10),
        (2, 3, 5),
        (3, 17, 33),
        (4, 16, 16),
        (5, 15, 17),
        (65, 9, 4),
        (7, 300, 1),
        (1, 1000, 3),
        (3, 0, 4),
        (0, 5, 4),
    ];
    for (i, &(batch, inp, out)) in shapes.iter().enumerate() {
        check_linear(k, LinearGeom { batch, inp, out }, 1000 + i as u64, true);
    }
}

fn linear_mnist_sizes(k: Kernels) {
    // Large enough to run on several threads, with long reductions.
    ALSO_HOT.with(|h| h.set(true));
    check_linear(
        k,
        LinearGeom {
            batch: 64,
            inp: 784,
            out: 100,
        },
        77,
        true,
    );
    check_linear(
        k,
        LinearGeom {
            batch: 2,
            inp: 700,
            out: 300,
        },
        78,
        false,
    );
    // The MLP's first layer with images for inputs: mostly zero codes.
    let g = LinearGeom {
        batch: 64,
        inp: 784,
        out: 100,
    };
    let mut d = Draws::new(79, 6);
    for pair in [
        (Data::Sparse, Data::SparseQuant(8, 0)),
        (Data::Float, Data::SparseQuant(8, 0)),
        (Data::SparseQuant(8, 2), Data::SparseQuant(8, 0)),
    ] {
        check_pair(k, g, &mut d, pair, 79);
    }
    // One non-finite input, in either half of x (scanned in halves on two
    // threads): the zero gradients times it are NaN in the reference, so
    // the kernels that skip zero terms must not run.
    let dy = values(&mut d, g.batch * g.out, Data::Sparse);
    for (at, bad) in [(100, f32::INFINITY), (g.batch * g.inp - 5, f32::NAN)] {
        let mut x = values(&mut d, g.batch * g.inp, Data::Float);
        x[at] = bad;
        let (dyo, xo) = (Operand { v: &dy, fmt: None }, Operand { v: &x, fmt: None });
        compare(
            k,
            &format!("weight grad, {bad} at {at}"),
            g.out * g.inp,
            false,
            |b, o| b.linear_weight_grad(g, dyo, xo, o),
        );
    }
}

fn linear_byte_codes_and_sparse_gradients(k: Kernels) {
    // The domain of the AVX-512 kernels (when the CPU has them): integer
    // products of codes of at most 8 bits, and f32 gradients with many
    // zeros; checked against the reference on random shapes, widths and
    // scales, with garbage codes, infinities and NaN mixed in.
    let cases = if cfg!(debug_assertions) { 10 } else { 40 };
    for seed in 0..cases {
        let mut d = Draws::new(seed, 5);
        let g = LinearGeom {
            batch: d.usize(1, 70),
            inp: d.usize(0, 300),
            out: d.usize(1, 110),
        };
        let mut bits = || d.range(2, 8) as u8;
        let (b1, b2) = (bits(), bits());
        let s = (d.range(-4, 4) as i8, d.range(-4, 4) as i8);
        let pairs = [
            (Data::Quant(b1, s.0), Data::Quant(b2, s.1)),
            (Data::Extreme(b1, s.1), Data::Extreme(b2, s.0)),
            (Data::Garbage(b1, 0), Data::Quant(b2, 0)),
            (Data::Quant(8, 0), Data::Garbage(8, 1)),
            (Data::Sparse, Data::Quant(b1, s.0)),
            (Data::Sparse, Data::Float),
            (Data::Sparse, Data::FloatInf),
            (Data::FloatInf, Data::Quant(b2, s.1)),
            (Data::Float, Data::SparseQuant(b2, s.1)),
            (Data::Sparse, Data::SparseQuant(b1, s.0)),
            (Data::FloatInf, Data::SparseQuant(b2, 0)),
            (Data::Float, Data::Sparse),
            (Data::SparseQuant(b1, 0), Data::SparseQuant(b2, 1)),
        ];
        for (da, db) in pairs {
            check_pair(k, g, &mut d, (da, db), seed);
        }
    }
    // Reductions at the limit of exact i32 sums of byte products, and one
    // past it (another path).
    let mut d = Draws::new(9, 5);
    for inp in [65_792, 65_793] {
        let g = LinearGeom {
            batch: 2,
            inp,
            out: 3,
        };
        check_pair(k, g, &mut d, (Data::Extreme(8, 0), Data::Extreme(8, 0)), 9);
    }
}

fn linear_constant_columns(k: Kernels) {
    // Weight gradients whose x has columns holding x[0][0] in every row
    // (an image's background): the AVX-512 kernel computes those once per
    // output row and packs the others. Images with a border of background,
    // columns constant at another value, zeros of both signs, widths that
    // are not a multiple of 16, a batch of one (every column constant) and
    // an x that is all background.
    let bg = -0.4375f32;
    for (case, &(batch, inp, out, border)) in [
        (64, 784, 100, 6),
        (64, 784, 100, 0),
        (17, 37, 20, 2),
        (1, 300, 9, 4),
        (3, 100, 5, 3),
        (64, 200, 13, 200),
    ]
    .iter()
    .enumerate()
    {
        let g = LinearGeom { batch, inp, out };
        let seed = 5000 + case as u64;
        let mut d = Draws::new(seed, 8);
        let side = inp.isqrt().max(1);
        for (first, other) in [(bg, 0.25f32), (0.0, -0.0), (-0.0, 0.0)] {
            let x: Vec<f32> = (0..batch * inp)
                .map(|i| {
                    let (row, col) = (i / inp, i % inp);
                    let (y, xx) = (col / side, col % side);
                    let r = d.next();
                    let edge = y < border || xx < border || y + border >= side;
                    if i == 0 || edge {
                        first
                    } else if col % 7 == 3 {
                        other
                    } else if r.is_multiple_of(3) && row > 0 {
                        d.range(-127, 127) as f32 / 32.0
                    } else {
                        first
                    }
                })
                .collect();
            for dd in [Data::Sparse, Data::Float] {
                let dy = values(&mut d, batch * out, dd);
                let (dyo, xo) = (Operand { v: &dy, fmt: None }, Operand { v: &x, fmt: None });
                compare(
                    k,
                    &format!("weight grad, constant columns {g:?} {first} {dd:?}"),
                    out * inp,
                    false,
                    |b, o| b.linear_weight_grad(g, dyo, xo, o),
                );
            }
        }
    }
}

fn linear_large_blocks(k: Kernels) {
    // Several tiles, groups of tiles and panels of the blocked kernels,
    // none of the sizes a multiple of a block, at widths 2..=16.
    let shapes = [(75, 300, 97), (130, 67, 49), (9, 1029, 145), (66, 17, 200)];
    for (i, &(batch, inp, out)) in shapes.iter().enumerate() {
        let g = LinearGeom { batch, inp, out };
        let seed = 4000 + i as u64;
        let mut d = Draws::new(seed, 6);
        let (b1, b2) = (d.range(2, 8) as u8, d.range(2, 16) as u8);
        for pair in [
            (Data::Quant(b1, 1), Data::Quant(8 - (b1 % 3), -2)),
            (Data::Extreme(8, 0), Data::Extreme(b1, 3)),
            (Data::Quant(b2, 0), Data::Quant(b1, 0)),
            (Data::Sparse, Data::Quant(b2, -1)),
            (Data::Float, Data::SparseQuant(b1, 0)),
            (Data::Sparse, Data::SparseQuant(8, 2)),
        ] {
            check_pair(k, g, &mut d, pair, seed);
        }
    }
}

/// The three products of `g` with operands drawn as `da`, `db`.
fn check_pair(k: Kernels, g: LinearGeom, d: &mut Draws, (da, db): (Data, Data), seed: u64) {
    let what = |m: &str| format!("{m} {g:?} {da:?} x {db:?} (seed {seed})");
    let int = da.fmt().is_some() && db.fmt().is_some();
    let x = values(d, g.batch * g.inp, da);
    let w = values(d, g.out * g.inp, db);
    let op = |v, data: Data| Operand { v, fmt: data.fmt() };
    let (xo, wo) = (op(&x, da), op(&w, db));
    compare(k, &what("linear"), g.batch * g.out, int, |b, o| {
        b.linear(g, xo, wo, o)
    });
    let dy = values(d, g.batch * g.out, da);
    let dyo = op(&dy, da);
    compare(
        k,
        &what("linear_input_grad"),
        g.batch * g.inp,
        int,
        |b, o| b.linear_input_grad(g, dyo, wo, o),
    );
    let x2 = values(d, g.batch * g.inp, db);
    let x2o = op(&x2, db);
    compare(
        k,
        &what("linear_weight_grad"),
        g.out * g.inp,
        int,
        |b, o| b.linear_weight_grad(g, dyo, x2o, o),
    );
}

// ---------------------------------------------------------------- conv

#[allow(clippy::too_many_arguments)]
fn geom(
    batch: usize,
    (cin, cout, groups): (usize, usize, usize),
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
) -> Option<ConvGeom> {
    let span = |k: usize, d: usize| d * (k - 1) + 1;
    let (ih, iw) = (h + 2 * pad.0, w + 2 * pad.1);
    if ih < span(kh, dil.0) || iw < span(kw, dil.1) {
        return None;
    }
    let g = ConvGeom {
        batch,
        cin,
        h,
        w,
        cout,
        kh,
        kw,
        oh: (ih - span(kh, dil.0)) / stride.0 + 1,
        ow: (iw - span(kw, dil.1)) / stride.1 + 1,
        stride,
        pad,
        dil,
        groups,
    };
    g.check().ok().map(|_| g)
}

fn check_conv(k: Kernels, g: ConvGeom, seed: u64, extra: bool) {
    let mut d = Draws::new(seed, 2);
    let xl = g.batch * g.cin * g.h * g.w;
    let wl = g.cout * g.cpg() * g.kh * g.kw;
    let yl = g.batch * g.cout * g.oh * g.ow;
    for (da, db) in data_pairs(&mut d, extra) {
        let what = |m: &str| format!("{m} {g:?} {da:?} x {db:?} (seed {seed})");
        let int = da.fmt().is_some() && db.fmt().is_some();
        let x = values(&mut d, xl, da);
        let w = values(&mut d, wl, db);
        let (xo, wo) = (
            Operand {
                v: &x,
                fmt: da.fmt(),
            },
            Operand {
                v: &w,
                fmt: db.fmt(),
            },
        );
        compare(k, &what("conv2d"), yl, int, |b, o| b.conv2d(g, xo, wo, o));
        let dy = values(&mut d, yl, da);
        let dyo = Operand {
            v: &dy,
            fmt: da.fmt(),
        };
        compare(k, &what("conv2d_input_grad"), xl, int, |b, o| {
            b.conv2d_input_grad(g, dyo, wo, o)
        });
        let x2 = values(&mut d, xl, db);
        let x2o = Operand {
            v: &x2,
            fmt: db.fmt(),
        };
        compare(k, &what("conv2d_weight_grad"), wl, int, |b, o| {
            b.conv2d_weight_grad(g, dyo, x2o, o)
        });
    }
}

fn random_conv(d: &mut Draws) -> Option<ConvGeom> {
    let groups = [1, 1, 1, 2, 3][d.usize(0, 4)];
    let (cpg, opg) = (d.usize(1, 4), d.usize(1, 5));
    let depthwise = d.usize(0, 5) == 0;
    let (cin, cout, groups) = if depthwise {
        let c = d.usize(1, 6);
        (c, c * d.usize(1, 2), c)
    } else {
        (groups * cpg, groups * opg, groups)
    };
    geom(
        d.usize(1, 4),
        (cin, cout, groups),
        (d.usize(1, 13), d.usize(1, 13)),
        (d.usize(1, 5), d.usize(1, 5)),
        (d.usize(1, 3), d.usize(1, 3)),
        (d.usize(0, 3), d.usize(0, 3)),
        (d.usize(1, 3), d.usize(1, 3)),
    )
}

fn conv_random_shapes(k: Kernels) {
    let cases = if cfg!(debug_assertions) { 15 } else { 80 };
    let mut done = 0;
    let mut seed = 0;
    while done < cases {
        seed += 1;
        let mut d = Draws::new(seed, 0);
        if let Some(g) = random_conv(&mut d) {
            check_conv(k, g, seed, seed % 3 == 0);
            done += 1;
        }
    }
}

fn conv_fixed_shapes(k: Kernels) {
    let shapes = [
        // LeNet-style: 1x28x28 -> 6 5x5 -> 12x12 pooled -> 16 5x5.
        geom(4, (1, 6, 1), (28, 28), (5, 5), (1, 1), (0, 0), (1, 1)),
        geom(4, (6, 16, 1), (12, 12), (5, 5), (1, 1), (0, 0), (1, 1)),
        geom(1, (1, 1, 1), (1, 1), (1, 1), (1, 1), (0, 0), (1, 1)),
        // padding larger than the image; the input may even be empty.
        geom(2, (2, 3, 1), (1, 2), (3, 3), (1, 1), (2, 2), (1, 1)),
        geom(1, (1, 2, 1), (0, 3), (1, 1), (1, 1), (1, 0), (1, 1)),
        // stride, dilation, groups, depthwise.
        geom(3, (4, 6, 2), (9, 11), (3, 2), (2, 3), (1, 2), (2, 1)),
        geom(2, (8, 8, 8), (10, 7), (3, 3), (1, 2), (1, 1), (1, 1)),
        geom(2, (3, 6, 3), (17, 17), (5, 5), (2, 2), (2, 2), (1, 1)),
        geom(1, (1, 1, 1), (5, 5), (5, 5), (1, 1), (4, 4), (1, 1)),
        geom(1, (2, 2, 1), (7, 7), (2, 2), (3, 3), (0, 0), (3, 3)),
    ];
    for (i, g) in shapes.iter().enumerate() {
        let g = g.expect("valid fixed geometry");
        check_conv(k, g, 2000 + i as u64, true);
    }
}

fn conv_parallel_sizes(k: Kernels) {
    // Large enough for threads: many items, one large item, a reduction
    // long enough to be cut into chunks, and images packed in slabs.
    ALSO_HOT.with(|h| h.set(true));
    let shapes = [
        geom(16, (3, 8, 1), (16, 16), (3, 3), (1, 1), (1, 1), (1, 1)),
        geom(1, (16, 16, 1), (20, 20), (3, 3), (1, 1), (1, 1), (1, 1)),
        geom(4, (1, 1, 1), (200, 200), (3, 3), (1, 1), (1, 1), (1, 1)),
        geom(2, (16, 8, 1), (32, 32), (3, 3), (1, 1), (1, 1), (1, 1)),
        geom(3, (4, 4, 4), (40, 40), (3, 3), (2, 2), (1, 1), (1, 1)),
        // Few output rows, many columns, a reduction cut into chunks.
        geom(2, (4, 4, 1), (100, 100), (5, 5), (1, 1), (2, 2), (1, 1)),
    ];
    for (i, g) in shapes.iter().enumerate() {
        let g = g.expect("valid fixed geometry");
        check_conv(k, g, 3000 + i as u64, i == 0);
    }
}

// ---------------------------------------------------------------- errors

fn same_error(k: Kernels, what: &str, call: impl Fn(&dyn Backend) -> Result<()>) {
    let want = call(&RefBackend);
    assert!(want.is_err(), "{what}: the reference accepted it");
    for (name, b) in backends(k) {
        assert_eq!(call(b), want, "{what}, {k:?}, {name}");
    }
}

fn bad_lengths_are_errors_like_the_reference(k: Kernels) {
    let f8 = Format::new(8, 0).ok();
    let v = vec![0.25f32; 64];
    let op = |n: usize, fmt| Operand { v: &v[..n], fmt };
    let g = LinearGeom {
        batch: 2,
        inp: 3,
        out: 4,
    };
    let yf = vec![0.0f32; 64];
    let yi = vec![0i64; 64];
    let cases: [(&str, usize, usize, usize, bool); 5] = [
        ("short input", 5, 12, 8, false),
        ("long weight", 6, 13, 8, false),
        ("short output", 6, 12, 7, false),
        ("int output for floats", 6, 12, 8, true),
        ("empty everything", 0, 0, 0, false),
    ];
    for (what, a, w, y, int) in cases {
        let fmt = if what.starts_with("int") { None } else { f8 };
        same_error(k, what, |b| {
            let out = if int {
                AccOut::Int(&mut yi.clone()[..y])
            } else {
                AccOut::Float(&mut yf.clone()[..y])
            };
            b.linear(g, op(a, fmt), op(w, fmt), out)
        });
    }
    // Float output for quantized operands.
    same_error(k, "float output for codes", |b| {
        b.linear(
            g,
            op(6, f8),
            op(12, f8),
            AccOut::Float(&mut yf.clone()[..8]),
        )
    });
    same_error(k, "input grad, short dy", |b| {
        b.linear_input_grad(
            g,
            op(7, None),
            op(12, None),
            AccOut::Float(&mut yf.clone()[..6]),
        )
    });
    same_error(k, "weight grad, short dw", |b| {
        b.linear_weight_grad(
            g,
            op(8, None),
            op(6, None),
            AccOut::Float(&mut yf.clone()[..11]),
        )
    });
    let cg = geom(1, (2, 2, 1), (3, 3), (2, 2), (1, 1), (0, 0), (1, 1)).expect("geometry");
    // x: 18, w: 16, y: 8
    same_error(k, "conv input", |b| {
        b.conv2d(
            cg,
            op(17, None),
            op(16, None),
            AccOut::Float(&mut yf.clone()[..8]),
        )
    });
    same_error(k, "conv output variant", |b| {
        b.conv2d(
            cg,
            op(18, f8),
            op(16, None),
            AccOut::Int(&mut yi.clone()[..8]),
        )
    });
    same_error(k, "conv input grad", |b| {
        b.conv2d_input_grad(
            cg,
            op(8, None),
            op(15, None),
            AccOut::Float(&mut yf.clone()[..18]),
        )
    });
    same_error(k, "conv weight grad", |b| {
        b.conv2d_weight_grad(
            cg,
            op(8, f8),
            op(18, f8),
            AccOut::Int(&mut yi.clone()[..17]),
        )
    });
    let bad = ConvGeom { oh: 3, ..cg };
    same_error(k, "conv geometry", |b| {
        b.conv2d(
            bad,
            op(18, None),
            op(16, None),
            AccOut::Float(&mut yf.clone()[..18]),
        )
    });
    let bad = ConvGeom { groups: 3, ..cg };
    same_error(k, "conv groups", |b| {
        b.conv2d_weight_grad(
            bad,
            op(8, None),
            op(18, None),
            AccOut::Float(&mut yf.clone()[..16]),
        )
    });
}

#[test]
fn install_hot_releases_the_pool_even_when_its_work_panics() {
    let b = RayonBackend::with_threads(2).expect("pool");
    for round in 0..3 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.install_hot(|| {
                if round == 1 {
                    panic!("work that fails");
                }
                round
            })
        }));
        // The panic comes back to the caller; the pool (its other thread
        // released from polling) takes the next round.
        assert_eq!(r.ok(), (round != 1).then_some(round));
    }
}

#[test]
fn install_hot_from_two_threads_at_once_finishes() {
    // Two callers share one pool, each running nested parallel work inside
    // install_hot: the second runs as a plain install while the first is
    // hot. (Two sets of pollers on one pool deadlocked here: a poller of
    // one call, picked up inside work of the other, waited for its own
    // call, which waited under the first.)
    use rayon::prelude::*;
    let b = RayonBackend::with_threads(2).expect("pool");
    let work = |seed: u64| -> u64 {
        (0..64u64)
            .into_par_iter()
            .map(|i| {
                (0..512u64)
                    .into_par_iter()
                    .map(|j| (i * j) ^ seed)
                    .sum::<u64>()
            })
            .sum()
    };
    let want: Vec<u64> = (0..200).map(work).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..2 {
        let (b, tx) = (b.clone(), tx.clone());
        std::thread::spawn(move || {
            let got: Vec<u64> = (0..200).map(|k| b.install_hot(|| work(k))).collect();
            let _ = tx.send(got);
        });
    }
    // A deadlock fails the test instead of hanging it (the calls take
    // milliseconds; a minute is a verdict, not a speed limit).
    for _ in 0..2 {
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("install_hot deadlocked: two callers on one pool");
        assert_eq!(got, want);
    }
}

#[test]
fn zero_threads_is_an_error() {
    assert!(RayonBackend::with_threads(0).is_err());
    assert_eq!(RayonBackend::with_threads(3).expect("pool").threads(), 3);
}

// ---------------------------------------------------------------- suites

/// Every bit-exactness test above, once per set of kernels: `module =>
/// kernel set`.
macro_rules! bitexact_suite {
    ($($m:ident => $k:expr),* $(,)?) => {$(
        mod $m {
            use super::*;
            const K: Kernels = $k;
            #[test]
            fn linear_random_shapes() {
                super::linear_random_shapes(K);
            }
            #[test]
            fn linear_fixed_shapes() {
                super::linear_fixed_shapes(K);
            }
            #[test]
            fn linear_mnist_sizes() {
                super::linear_mnist_sizes(K);
            }
            #[test]
            fn linear_byte_codes_and_sparse_gradients() {
                super::linear_byte_codes_and_sparse_gradients(K);
            }
            #[test]
            fn linear_constant_columns() {
                super::linear_constant_columns(K);
            }
            #[test]
            fn linear_large_blocks() {
                super::linear_large_blocks(K);
            }
            #[test]
            fn conv_random_shapes() {
                super::conv_random_shapes(K);
            }
            #[test]
            fn conv_fixed_shapes() {
                super::conv_fixed_shapes(K);
            }
            #[test]
            fn conv_parallel_sizes() {
                super::conv_parallel_sizes(K);
            }
            #[test]
            fn bad_lengths_are_errors_like_the_reference() {
                super::bad_lengths_are_errors_like_the_reference(K);
            }
        }
    )*};
}

bitexact_suite! {
    portable => Kernels::Portable,
    avx2 => Kernels::Avx2,
    avx512 => Kernels::Avx512,
}

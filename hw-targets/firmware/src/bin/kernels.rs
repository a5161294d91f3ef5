//! Device test of `fixnn::kernels`: on random shapes, bit widths, scales
//! and scratch sizes, every operation of `DspBackend` (SMLAD kernels on
//! Cortex-M4/M7) against `RefBackend`, whole outputs; and the `asm!` block
//! against its portable twin on random words.
//!
//! Then the six products of `fixnn::kernels` on `i8` and `i16` code
//! slices (the packers that read four codes per load, pairs of columns,
//! and the channel-pair convolution) against `RefBackend`, and the
//! row-pair `asm!` kernels (two and four words per iteration) against the
//! portable block.
//!
//! Prints `KERNELS <cases> <ops> <packed> <reference> <mismatches>`,
//! `SLICES <ops> <mismatches>`, `BLOCK <trials> <mismatches>` (and the
//! first mismatch of each kind), then `USES_DSP <bool>` and `END`; exits
//! with success iff nothing differs.
#![no_std]
#![no_main]

use core::fmt::Write;

use fixnn_firmware::fixnn::backend::{AccOut, Backend, ConvGeom, LinearGeom, Operand, RefBackend};
use fixnn_firmware::fixnn::kernels::{
    self as k, block2x2, block2x2_portable, row_pair, CodeSlice, Codes, DspBackend, USES_DSP,
};
use fixnn_firmware::fixnn::Format;
use fixnn_firmware::{self as fw, Out};

/// xorshift64*: deterministic test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const N: usize = 4096;

fn fmt(r: &mut Rng) -> Format {
    let bits = 2 + r.below(15) as u8;
    let scale = r.below(12) as i8 - 6;
    Format::new(bits, scale).unwrap()
}

/// Fill `v` with codes of `f`: random, or all the most negative code.
fn codes(r: &mut Rng, f: Format, v: &mut [f32], extreme: bool) {
    let (lo, hi) = (f.min_code(), f.max_code());
    for e in v {
        let c = if extreme {
            lo
        } else {
            lo + r.below((hi - lo + 1) as usize) as i32
        };
        *e = f.to_f32(c);
    }
}

struct Tally {
    ops: u32,
    bad: u32,
}

impl Tally {
    fn check(
        &mut self,
        what: &str,
        n: usize,
        want: &mut [i64],
        got: &mut [i64],
        d: &DspBackend<'_>,
        op: &dyn Fn(&dyn Backend, AccOut<'_>) -> bool,
    ) {
        self.ops += 1;
        got[..n].fill(i64::MIN);
        let ok = op(&RefBackend, AccOut::Int(&mut want[..n])) && op(d, AccOut::Int(&mut got[..n]));
        if !ok || want[..n] != got[..n] {
            if self.bad == 0 {
                let i = (0..n).find(|&i| want[i] != got[i]).unwrap_or(0);
                let _ = writeln!(
                    Out,
                    "MISMATCH {what} ok={ok} element {i}: reference {} dsp {}",
                    want[i], got[i]
                );
            }
            self.bad += 1;
        }
    }
}

/// Codes of `f` as `T` (the values of `v`, codes of `f`).
fn narrow<T: TryFrom<i32> + Copy + Default>(f: Format, v: &[f32], out: &mut [T]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o = T::try_from(f.code_of(x)).unwrap_or_default();
    }
}

/// The six products on `i8` (first operand) and `i8` or `i16` (second)
/// code slices against the reference; returns (products compared,
/// mismatches).
fn slices(r: &mut Rng) -> (u32, u32) {
    static mut BUF: SliceBufs = SliceBufs {
        a: [0.0; N],
        b: [0.0; N],
        a8: [0; N],
        b8: [0; N],
        b16: [0; N],
        want: [0; N],
        got: [0; N],
        scratch: [0; 4096],
    };
    // SAFETY: the only reference to BUF, made once.
    #[allow(unsafe_code)]
    let s = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    let (mut ops, mut bad) = (0u32, 0u32);
    for case in 0..160 {
        let f8 = |r: &mut Rng| Format::new(2 + r.below(7) as u8, r.below(12) as i8 - 6).unwrap();
        let (fa, fb) = (f8(r), if case % 3 == 0 { fmt(r) } else { f8(r) });
        let lin = case % 2 == 0;
        let lg = LinearGeom {
            batch: 1 + r.below(9),
            inp: 1 + r.below(40),
            out: 1 + r.below(9),
        };
        let groups = 1 + r.below(2);
        let (kh, kw) = (1 + r.below(3), 1 + r.below(3));
        let pad = (r.below(2), r.below(2));
        let (h, wd) = (kh + r.below(6), kw + r.below(6));
        let cg = ConvGeom {
            batch: 1 + r.below(2),
            cin: groups * (1 + r.below(4)),
            h,
            w: wd,
            cout: groups * (1 + r.below(3)),
            kh,
            kw,
            oh: h + 2 * pad.0 - kh + 1,
            ow: wd + 2 * pad.1 - kw + 1,
            stride: (1, 1),
            pad,
            dil: (1, 1),
            groups,
        };
        let [nx, nw, ny] = if lin { lg.lens() } else { cg.lens() }.unwrap();
        for pass in 0..3 {
            let (na, nb, no) = [(nx, nw, ny), (ny, nw, nx), (ny, nx, nw)][pass];
            codes(r, fa, &mut s.a[..na], case % 7 == 0);
            codes(r, fb, &mut s.b[..nb], case % 7 == 0);
            narrow(fa, &s.a[..na], &mut s.a8[..na]);
            let (oa, ob) = (
                Operand {
                    v: &s.a[..na],
                    fmt: Some(fa),
                },
                Operand {
                    v: &s.b[..nb],
                    fmt: Some(fb),
                },
            );
            let o = AccOut::Int(&mut s.want[..no]);
            let ok = match (lin, pass) {
                (true, 0) => RefBackend.linear(lg, oa, ob, o),
                (true, 1) => RefBackend.linear_input_grad(lg, oa, ob, o),
                (true, _) => RefBackend.linear_weight_grad(lg, oa, ob, o),
                (false, 0) => RefBackend.conv2d(cg, oa, ob, o),
                (false, 1) => RefBackend.conv2d_input_grad(cg, oa, ob, o),
                (false, _) => RefBackend.conv2d_weight_grad(cg, oa, ob, o),
            }
            .is_ok();
            let sa = CodeSlice {
                v: &s.a8[..na],
                bits: u32::from(fa.bits()),
            };
            let got = &mut s.got[..no];
            got.fill(i64::MIN);
            let sc = &mut s.scratch[..];
            let bits = u32::from(fb.bits());
            let op = (lin, pass, lg, cg);
            let done = if bits <= 8 {
                narrow(fb, &s.b[..nb], &mut s.b8[..nb]);
                let sb = CodeSlice {
                    v: &s.b8[..nb],
                    bits,
                };
                slice_product(sc, op, &sa, &sb, got)
            } else {
                narrow(fb, &s.b[..nb], &mut s.b16[..nb]);
                let sb = CodeSlice {
                    v: &s.b16[..nb],
                    bits,
                };
                slice_product(sc, op, &sa, &sb, got)
            };
            ops += 1;
            // Every width here fits 32-bit chunks and the scratch: the
            // kernels must not decline.
            if !ok || !done || s.want[..no] != s.got[..no] {
                if bad == 0 {
                    let _ = writeln!(
                        Out,
                        "SLICE MISMATCH lin={lin} pass={pass} ok={ok} done={done} {lg:?} {cg:?}"
                    );
                }
                bad += 1;
            }
        }
    }
    (ops, bad)
}

struct SliceBufs {
    a: [f32; N],
    b: [f32; N],
    a8: [i8; N],
    b8: [i8; N],
    b16: [i16; N],
    want: [i64; N],
    got: [i64; N],
    scratch: [u32; 4096],
}

/// Product `pass` (0 forward, 1 input gradient, 2 weight gradient) of a
/// linear layer (`lin`) or a convolution on code slices.
fn slice_product(
    sc: &mut [u32],
    (lin, pass, lg, cg): (bool, usize, LinearGeom, ConvGeom),
    a: &impl Codes,
    b: &impl Codes,
    y: &mut [i64],
) -> bool {
    match (lin, pass) {
        (true, 0) => k::linear(sc, lg, a, b, y),
        (true, 1) => k::linear_input_grad(sc, lg, a, b, y),
        (true, _) => k::linear_weight_grad(sc, lg, a, b, y),
        (false, 0) => k::conv2d(sc, cg, a, b, y),
        (false, 1) => k::conv2d_input_grad(sc, cg, a, b, y),
        (false, _) => k::conv2d_weight_grad(sc, cg, a, b, y),
    }
}

#[cortex_m_rt::entry]
fn main() -> ! {
    fw::init();
    let mut r = Rng(0x0ddb_1a5e_5bad_5eed);
    let (mut x, mut w, mut dy) = ([0f32; N], [0f32; N], [0f32; N]);
    let (mut want, mut got) = ([0i64; N], [0i64; N]);
    let mut t = Tally { ops: 0, bad: 0 };
    let (mut fast, mut slow) = (0, 0);
    let cases = 240;
    for case in 0..cases {
        let mut scratch = [0u32; 2048];
        let sl = [0, 12, 64, 300, 2048][r.below(5)];
        let d = DspBackend::new(&mut scratch[..sl]);
        let (fa, fb) = (fmt(&mut r), fmt(&mut r));
        let extreme = case % 5 == 0;
        if case % 2 == 0 {
            let g = LinearGeom {
                batch: 1 + r.below(7),
                inp: 1 + r.below(70),
                out: 1 + r.below(9),
            };
            let [nx, nw, ny] = g.lens().unwrap();
            codes(&mut r, fa, &mut x[..nx], extreme);
            codes(&mut r, fb, &mut w[..nw], extreme);
            codes(&mut r, fa, &mut dy[..ny], extreme);
            let ox = Operand {
                v: &x[..nx],
                fmt: Some(fa),
            };
            let ow = Operand {
                v: &w[..nw],
                fmt: Some(fb),
            };
            let od = Operand {
                v: &dy[..ny],
                fmt: Some(fa),
            };
            t.check("linear", ny, &mut want, &mut got, &d, &|b, o| {
                b.linear(g, ox, ow, o).is_ok()
            });
            t.check("linear_input_grad", nx, &mut want, &mut got, &d, &|b, o| {
                b.linear_input_grad(g, od, ow, o).is_ok()
            });
            t.check(
                "linear_weight_grad",
                nw,
                &mut want,
                &mut got,
                &d,
                &|b, o| b.linear_weight_grad(g, od, ox, o).is_ok(),
            );
        } else {
            let groups = 1 + r.below(3);
            let (cin, cout) = (groups * (1 + r.below(3)), groups * (1 + r.below(3)));
            let (kh, kw) = (1 + r.below(3), 1 + r.below(3));
            let stride = (1 + r.below(2), 1 + r.below(2));
            let pad = (r.below(2), r.below(2));
            let dil = (1 + r.below(2), 1 + r.below(2));
            let h = dil.0 * (kh - 1) + 1 + r.below(5);
            let wd = dil.1 * (kw - 1) + 1 + r.below(5);
            let g = ConvGeom {
                batch: 1 + r.below(3),
                cin,
                h,
                w: wd,
                cout,
                kh,
                kw,
                oh: (h + 2 * pad.0 - dil.0 * (kh - 1) - 1) / stride.0 + 1,
                ow: (wd + 2 * pad.1 - dil.1 * (kw - 1) - 1) / stride.1 + 1,
                stride,
                pad,
                dil,
                groups,
            };
            let [nx, nw, ny] = g.lens().unwrap();
            codes(&mut r, fa, &mut x[..nx], extreme);
            codes(&mut r, fb, &mut w[..nw], extreme);
            codes(&mut r, fa, &mut dy[..ny], extreme);
            let ox = Operand {
                v: &x[..nx],
                fmt: Some(fa),
            };
            let ow = Operand {
                v: &w[..nw],
                fmt: Some(fb),
            };
            let od = Operand {
                v: &dy[..ny],
                fmt: Some(fa),
            };
            t.check("conv2d", ny, &mut want, &mut got, &d, &|b, o| {
                b.conv2d(g, ox, ow, o).is_ok()
            });
            t.check("conv2d_input_grad", nx, &mut want, &mut got, &d, &|b, o| {
                b.conv2d_input_grad(g, od, ow, o).is_ok()
            });
            t.check(
                "conv2d_weight_grad",
                nw,
                &mut want,
                &mut got,
                &d,
                &|b, o| b.conv2d_weight_grad(g, od, ox, o).is_ok(),
            );
        }
        fast += d.fast_calls();
        slow += d.fallback_calls();
    }
    let _ = writeln!(Out, "KERNELS {cases} {} {fast} {slow} {}", t.ops, t.bad);
    let (slice_ops, slice_bad) = slices(&mut r);
    let _ = writeln!(Out, "SLICES {slice_ops} {slice_bad}");
    // The block itself: asm (on M4/M7) against portable, random words and
    // lengths, sums allowed to wrap (both must wrap alike).
    let mut a = [0u32; 2 * 64];
    let mut b = [0u32; 2 * 64];
    let (mut trials, mut bad_block) = (0u32, 0u32);
    for _ in 0..500 {
        let words = 2 * (1 + r.below(32));
        for v in a.iter_mut().chain(b.iter_mut()) {
            *v = r.next() as u32;
        }
        let acc = [
            r.next() as i32,
            r.next() as i32,
            r.next() as i32,
            r.next() as i32,
        ];
        let (p, q) = (
            block2x2(&a[..2 * words], &b[..2 * words], words, acc),
            block2x2_portable(&a[..2 * words], &b[..2 * words], words, acc),
        );
        trials += 1;
        if p != q {
            if bad_block == 0 {
                let _ = writeln!(Out, "BLOCK MISMATCH words {words}: {p:?} vs {q:?}");
            }
            bad_block += 1;
        }
    }
    // The row-pair kernels (2 or 4 words per iteration) against the
    // portable block, pair by pair.
    let mut res = [0i32; 4 * 4];
    for _ in 0..300 {
        // Up to 16 words per row and 4 pairs of B: within `b`'s 128 words.
        let words = 2 * (1 + r.below(8));
        let pairs = 1 + r.below(4);
        for v in a.iter_mut().chain(b.iter_mut()) {
            *v = r.next() as u32;
        }
        row_pair(
            &a[..2 * words],
            &b[..2 * words * pairs],
            words,
            &mut res[..4 * pairs],
        );
        for (q, got) in res.chunks_exact(4).take(pairs).enumerate() {
            let bq = &b[2 * q * words..2 * (q + 1) * words];
            let want = block2x2_portable(&a[..2 * words], bq, words, [0; 4]);
            trials += 1;
            if got != want {
                if bad_block == 0 {
                    let _ = writeln!(Out, "ROW PAIR MISMATCH words {words}: {got:?} vs {want:?}");
                }
                bad_block += 1;
            }
        }
    }
    let _ = writeln!(Out, "BLOCK {trials} {bad_block}");
    let _ = writeln!(Out, "USES_DSP {USES_DSP}");
    let _ = writeln!(Out, "END");
    fw::exit(t.bad == 0 && bad_block == 0 && slice_bad == 0 && slice_ops > 0 && fast > 0)
}

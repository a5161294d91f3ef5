//! Instruction counts per multiply-accumulate of fixnn's kernels, for the
//! Cortex-M4 under QEMU with `-icount shift=0` (`FIXNN_ICOUNT=1`: one
//! instruction = 1 ns of virtual time, read through SysTick; QEMU does not
//! model the DWT cycle counter). `scripts/bench-m4.sh` runs it.
//!
//! Prints `B <kernel> <variant> <macs> <instructions>` per measurement
//! (instructions net of the empty measurement's), a calibration line
//! `CAL <expected> <measured>` for an asm loop of known length, and `END`.
//! Every variant's outputs are checked against the reference backend; a
//! difference prints `WRONG` and fails the run.
#![no_std]
#![no_main]

use core::fmt::Write;
use core::hint::black_box;

use fixnn_firmware::fixnn::backend::{AccOut, Backend, ConvGeom, LinearGeom, Operand, RefBackend};
use fixnn_firmware::fixnn::kernels::{self, chunk_words, CodeSlice, DspBackend};
use fixnn_firmware::fixnn::Format;
use fixnn_firmware::{self as fw, clock, Out};

const LG: LinearGeom = LinearGeom {
    batch: 16,
    inp: 256,
    out: 64,
};
const CG: ConvGeom = ConvGeom {
    batch: 1,
    cin: 8,
    h: 16,
    w: 16,
    cout: 16,
    kh: 3,
    kw: 3,
    oh: 16,
    ow: 16,
    stride: (1, 1),
    pad: (1, 1),
    dil: (1, 1),
    groups: 1,
};
/// Largest tensor of either geometry.
const N: usize = 16 * 1024;
const SCRATCH: usize = 24 * 1024;

static mut BUFS: Bufs = Bufs {
    x: [0.0; N],
    w: [0.0; N],
    dy: [0.0; N],
    xc: [0; N],
    wc: [0; N],
    dyc: [0; N],
    want: [0; N],
    got: [0; N],
    scratch: [0; SCRATCH],
};

struct Bufs {
    x: [f32; N],
    w: [f32; N],
    dy: [f32; N],
    xc: [i8; N],
    wc: [i8; N],
    dyc: [i8; N],
    want: [i64; N],
    got: [i64; N],
    scratch: [u32; SCRATCH],
}

/// Instructions `f` takes (ticks under icount), net of an empty call's.
fn count(f: impl FnOnce()) -> u64 {
    let t0 = clock::ticks();
    f();
    let t1 = clock::ticks();
    clock::ticks_to_ns(t1 - t0)
}

struct Report {
    base: u64,
    wrong: u32,
}

impl Report {
    fn line(&mut self, kernel: &str, variant: &str, macs: usize, instr: u64, ok: bool) {
        let net = instr.saturating_sub(self.base);
        let _ = writeln!(Out, "B {kernel} {variant} {macs} {net}");
        if !ok {
            self.wrong += 1;
            let _ = writeln!(Out, "WRONG {kernel} {variant}");
        }
    }
}

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn code(&mut self) -> i8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as i8
    }
}

/// The naive loop: `y[b][o] = sum_i x[b][i] w[o][i]` on i8 codes, i32 sums.
#[inline(never)]
fn naive_linear(g: LinearGeom, x: &[i8], w: &[i8], y: &mut [i64]) {
    for b in 0..g.batch {
        for o in 0..g.out {
            let mut acc = 0i32;
            for (xi, wi) in x[b * g.inp..(b + 1) * g.inp]
                .iter()
                .zip(&w[o * g.inp..(o + 1) * g.inp])
            {
                acc += i32::from(*xi) * i32::from(*wi);
            }
            y[b * g.out + o] = i64::from(acc);
        }
    }
}

/// The naive direct convolution on i8 codes (stride 1, square padding).
#[inline(never)]
fn naive_conv(g: ConvGeom, x: &[i8], w: &[i8], y: &mut [i64]) {
    for co in 0..g.cout {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut acc = 0i32;
                for ci in 0..g.cin {
                    for ky in 0..g.kh {
                        let Some(iy) = (oy + ky).checked_sub(g.pad.0).filter(|&v| v < g.h) else {
                            continue;
                        };
                        for kx in 0..g.kw {
                            let Some(ix) = (ox + kx).checked_sub(g.pad.1).filter(|&v| v < g.w)
                            else {
                                continue;
                            };
                            acc += i32::from(x[(ci * g.h + iy) * g.w + ix])
                                * i32::from(w[((co * g.cin + ci) * g.kh + ky) * g.kw + kx]);
                        }
                    }
                }
                y[(co * g.oh + oy) * g.ow + ox] = i64::from(acc);
            }
        }
    }
}

#[cortex_m_rt::entry]
fn main() -> ! {
    fw::init();
    // SAFETY: the only reference to BUFS, made once in main.
    #[allow(unsafe_code)]
    let bufs = unsafe { &mut *core::ptr::addr_of_mut!(BUFS) };
    let f8 = Format::new(8, 0).unwrap();
    let mut rng = Rng(0x05ee_d0ff_1e1d);
    for i in 0..N {
        bufs.xc[i] = rng.code();
        bufs.wc[i] = rng.code();
        bufs.dyc[i] = rng.code();
        bufs.x[i] = f8.to_f32(i32::from(bufs.xc[i]));
        bufs.w[i] = f8.to_f32(i32::from(bufs.wc[i]));
        bufs.dy[i] = f8.to_f32(i32::from(bufs.dyc[i]));
    }
    // Calibration: 2 instructions per iteration, 10^6 iterations.
    let cal = count(|| {
        let n = black_box(1_000_000u32);
        // SAFETY: a register-only countdown loop.
        #[allow(unsafe_code)]
        unsafe {
            core::arch::asm!("2:", "subs {n}, {n}, #1", "bne 2b", n = inout(reg) n => _, options(nomem, nostack));
        }
    });
    let base = count(|| {});
    let _ = writeln!(Out, "CAL 2000000 {cal} BASE {base}");
    let mut rep = Report { base, wrong: 0 };
    let Bufs {
        x,
        w,
        dy,
        xc,
        wc,
        dyc,
        want,
        got,
        scratch,
    } = bufs;

    // ---- linear forward
    let g = LG;
    let [nx, nw, ny] = g.lens().unwrap();
    let macs = g.batch * g.inp * g.out;
    let (ox, ow, od) = (
        Operand {
            v: &x[..nx],
            fmt: Some(f8),
        },
        Operand {
            v: &w[..nw],
            fmt: Some(f8),
        },
        Operand {
            v: &dy[..ny],
            fmt: Some(f8),
        },
    );
    let (sx, sw, sd) = (
        CodeSlice {
            v: &xc[..nx],
            bits: 8,
        },
        CodeSlice {
            v: &wc[..nw],
            bits: 8,
        },
        CodeSlice {
            v: &dyc[..ny],
            bits: 8,
        },
    );
    let t = count(|| {
        RefBackend
            .linear(g, ox, ow, AccOut::Int(&mut want[..ny]))
            .unwrap()
    });
    rep.line("linear", "reference-backend", macs, t, true);
    let t = count(|| {
        naive_linear(
            g,
            black_box(&xc[..nx]),
            black_box(&wc[..nw]),
            &mut got[..ny],
        )
    });
    rep.line("linear", "naive-i8-loop", macs, t, got[..ny] == want[..ny]);
    let mut ok = false;
    let t = count(|| ok = kernels::linear(scratch, g, &sx, &sw, &mut got[..ny]));
    rep.line(
        "linear",
        "dsp-i8-pack+kernel",
        macs,
        t,
        ok && got[..ny] == want[..ny],
    );
    // Kernel alone, on the tiles just packed (one k tile: A rows then B rows).
    let words = g.inp.div_ceil(2).next_multiple_of(2);
    let (ta, tb) = scratch.split_at(g.batch.next_multiple_of(2) * words);
    let t = count(|| {
        ok = kernels::gemm_packed(
            ta,
            tb,
            (g.batch, g.out),
            words,
            words,
            chunk_words(8, 8),
            &mut got[..ny],
            (g.out, 1),
        )
    });
    // gemm_packed adds: the outputs hold twice the sums now.
    let doubled = got[..ny].iter().zip(&want[..ny]).all(|(g, w)| *g == 2 * w);
    rep.line("linear", "dsp-kernel-only", macs, t, ok && doubled);
    {
        let d = DspBackend::new(&mut scratch[..]);
        let t = count(|| d.linear(g, ox, ow, AccOut::Int(&mut got[..ny])).unwrap());
        rep.line(
            "linear",
            "dsp-backend-f32-operands",
            macs,
            t,
            got[..ny] == want[..ny],
        );
    }

    // ---- linear input gradient and weight gradient
    let t = count(|| {
        RefBackend
            .linear_input_grad(g, od, ow, AccOut::Int(&mut want[..nx]))
            .unwrap()
    });
    rep.line("linear-input-grad", "reference-backend", macs, t, true);
    let t = count(|| ok = kernels::linear_input_grad(scratch, g, &sd, &sw, &mut got[..nx]));
    rep.line(
        "linear-input-grad",
        "dsp-i8-pack+kernel",
        macs,
        t,
        ok && got[..nx] == want[..nx],
    );
    let t = count(|| {
        RefBackend
            .linear_weight_grad(g, od, ox, AccOut::Int(&mut want[..nw]))
            .unwrap()
    });
    rep.line("linear-weight-grad", "reference-backend", macs, t, true);
    let t = count(|| ok = kernels::linear_weight_grad(scratch, g, &sd, &sx, &mut got[..nw]));
    rep.line(
        "linear-weight-grad",
        "dsp-i8-pack+kernel",
        macs,
        t,
        ok && got[..nw] == want[..nw],
    );

    // ---- convolution
    let g = CG;
    let [nx, nw, ny] = g.lens().unwrap();
    let macs = g.batch * g.cout * g.oh * g.ow * g.cpg() * g.kh * g.kw;
    let (ox, ow, od) = (
        Operand {
            v: &x[..nx],
            fmt: Some(f8),
        },
        Operand {
            v: &w[..nw],
            fmt: Some(f8),
        },
        Operand {
            v: &dy[..ny],
            fmt: Some(f8),
        },
    );
    let (sx, sw, sd) = (
        CodeSlice {
            v: &xc[..nx],
            bits: 8,
        },
        CodeSlice {
            v: &wc[..nw],
            bits: 8,
        },
        CodeSlice {
            v: &dyc[..ny],
            bits: 8,
        },
    );
    let t = count(|| {
        RefBackend
            .conv2d(g, ox, ow, AccOut::Int(&mut want[..ny]))
            .unwrap()
    });
    rep.line("conv", "reference-backend", macs, t, true);
    let t = count(|| {
        naive_conv(
            g,
            black_box(&xc[..nx]),
            black_box(&wc[..nw]),
            &mut got[..ny],
        )
    });
    rep.line("conv", "naive-i8-loop", macs, t, got[..ny] == want[..ny]);
    let t = count(|| ok = kernels::conv2d(scratch, g, &sx, &sw, &mut got[..ny]));
    rep.line(
        "conv",
        "dsp-i8-im2col+kernel",
        macs,
        t,
        ok && got[..ny] == want[..ny],
    );
    let (m, n) = (g.cout, g.oh * g.ow);
    let words = (g.cpg() * g.kh * g.kw).div_ceil(2).next_multiple_of(2);
    let (ta, tb) = scratch.split_at(m.next_multiple_of(2) * words);
    let t = count(|| {
        ok = kernels::gemm_packed(
            ta,
            tb,
            (m, n),
            words,
            words,
            chunk_words(8, 8),
            &mut got[..ny],
            (n, 1),
        )
    });
    let doubled = got[..ny].iter().zip(&want[..ny]).all(|(g, w)| *g == 2 * w);
    rep.line("conv", "dsp-kernel-only", macs, t, ok && doubled);
    {
        let d = DspBackend::new(&mut scratch[..]);
        let t = count(|| d.conv2d(g, ox, ow, AccOut::Int(&mut got[..ny])).unwrap());
        rep.line(
            "conv",
            "dsp-backend-f32-operands",
            macs,
            t,
            got[..ny] == want[..ny],
        );
    }
    let t = count(|| {
        RefBackend
            .conv2d_input_grad(g, od, ow, AccOut::Int(&mut want[..nx]))
            .unwrap()
    });
    rep.line("conv-input-grad", "reference-backend", macs, t, true);
    let t = count(|| ok = kernels::conv2d_input_grad(scratch, g, &sd, &sw, &mut got[..nx]));
    rep.line(
        "conv-input-grad",
        "dsp-i8-pack+kernel",
        macs,
        t,
        ok && got[..nx] == want[..nx],
    );
    let t = count(|| {
        RefBackend
            .conv2d_weight_grad(g, od, ox, AccOut::Int(&mut want[..nw]))
            .unwrap()
    });
    rep.line("conv-weight-grad", "reference-backend", macs, t, true);
    let t = count(|| ok = kernels::conv2d_weight_grad(scratch, g, &sd, &sx, &mut got[..nw]));
    rep.line(
        "conv-weight-grad",
        "dsp-i8-pack+kernel",
        macs,
        t,
        ok && got[..nw] == want[..nw],
    );

    let _ = writeln!(Out, "END");
    fw::exit(rep.wrong == 0)
}

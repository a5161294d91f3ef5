//! `DspBackend` against `RefBackend`: whole outputs, bit for bit, over
//! random shapes, bit widths, scales and scratch sizes (small scratch forces
//! several `k` tiles; extreme codes fill every 32-bit chunk to its limit).

use fixnn::backend::{AccOut, Backend, ConvGeom, LinearGeom, Operand, RefBackend};
use fixnn::kernels::{block2x2, block2x2_portable, chunk_words, pack2, DspBackend};
use fixnn::{Clamp, Format};

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

/// Values that are codes of `f`: random, or (extreme) all at the most
/// negative code, the largest product.
fn codes(r: &mut Rng, f: Format, n: usize, extreme: bool) -> Vec<f32> {
    let (lo, hi) = (f.min_code(), f.max_code());
    (0..n)
        .map(|_| {
            let c = if extreme {
                lo
            } else {
                lo + r.below((hi - lo + 1) as usize) as i32
            };
            f.to_f32(c)
        })
        .collect()
}

/// A hardware-clamped format of up to `max_bits` bits.
fn fmt_hw(r: &mut Rng, max_bits: u8) -> Format {
    let bits = 2 + r.below(usize::from(max_bits) - 1) as u8;
    let scale = r.below(12) as i8 - 6;
    Format::new(bits, scale).unwrap()
}

fn fmt(r: &mut Rng, max_bits: u8) -> Format {
    let bits = 2 + r.below(usize::from(max_bits) - 1) as u8;
    let scale = r.below(12) as i8 - 6;
    // A third of the formats with nics_fix_pt's clamp: codes one wider
    // at the top (`code_bits = bits + 1`), up to 15 bits.
    let clamp = if bits <= 15 && r.below(3) == 0 {
        Clamp::Nics
    } else {
        Clamp::Hardware
    };
    Format::with_clamp(bits, scale, clamp).unwrap()
}

fn compare(
    op: &dyn Fn(&dyn Backend, AccOut<'_>) -> fixnn::Result<()>,
    n: usize,
    scratch: usize,
) -> (u32, u32) {
    let mut want = vec![0i64; n];
    op(&RefBackend, AccOut::Int(&mut want)).unwrap();
    let mut s = vec![0u32; scratch];
    let d = DspBackend::new(&mut s);
    let mut got = vec![i64::MIN; n];
    op(&d, AccOut::Int(&mut got)).unwrap();
    assert_eq!(got, want);
    (d.fast_calls(), d.fallback_calls())
}

#[test]
fn linear_all_passes_match_the_reference() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut fast = 0;
    for case in 0..300 {
        let g = LinearGeom {
            batch: 1 + r.below(7),
            inp: 1 + r.below(70),
            out: 1 + r.below(9),
        };
        let (fa, fb) = (fmt(&mut r, 16), fmt(&mut r, 16));
        let extreme = case % 5 == 0;
        let [nx, nw, ny] = g.lens().unwrap();
        let x = codes(&mut r, fa, nx, extreme);
        let w = codes(&mut r, fb, nw, extreme);
        let dy = codes(&mut r, fa, ny, extreme);
        let scratch = [0, 8, 40, 100, 4096][r.below(5)];
        let ox = Operand {
            v: &x,
            fmt: Some(fa),
        };
        let ow = Operand {
            v: &w,
            fmt: Some(fb),
        };
        let od = Operand {
            v: &dy,
            fmt: Some(fa),
        };
        let f1 = compare(&|b, o| b.linear(g, ox, ow, o), ny, scratch);
        let f2 = compare(&|b, o| b.linear_input_grad(g, od, ow, o), nx, scratch);
        let f3 = compare(&|b, o| b.linear_weight_grad(g, od, ox, o), nw, scratch);
        fast += f1.0 + f2.0 + f3.0;
        if fa.code_bits() + fb.code_bits() <= 30 && scratch >= 4096 {
            assert_eq!(f1, (1, 0), "{g:?} {fa:?} {fb:?}");
        }
    }
    assert!(fast > 300, "the packed kernels ran only {fast} times");
}

#[test]
fn conv_all_passes_match_the_reference() {
    let mut r = Rng(0x1234_5678_9abc_def1);
    let mut fast = 0;
    for case in 0..300 {
        let groups = 1 + r.below(3);
        let cin = groups * (1 + r.below(3));
        let cout = groups * (1 + r.below(3));
        let (kh, kw) = (1 + r.below(3), 1 + r.below(3));
        let stride = (1 + r.below(2), 1 + r.below(2));
        let pad = (r.below(2), r.below(2));
        let dil = (1 + r.below(2), 1 + r.below(2));
        let (h, w) = (
            dil.0 * (kh - 1) + 1 + r.below(5),
            dil.1 * (kw - 1) + 1 + r.below(5),
        );
        let g = ConvGeom {
            batch: 1 + r.below(3),
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            oh: (h + 2 * pad.0 - dil.0 * (kh - 1) - 1) / stride.0 + 1,
            ow: (w + 2 * pad.1 - dil.1 * (kw - 1) - 1) / stride.1 + 1,
            stride,
            pad,
            dil,
            groups,
        };
        g.check().unwrap();
        let (fa, fb) = (fmt(&mut r, 16), fmt(&mut r, 16));
        let extreme = case % 5 == 0;
        let [nx, nw, ny] = g.lens().unwrap();
        let x = codes(&mut r, fa, nx, extreme);
        let wt = codes(&mut r, fb, nw, extreme);
        let dy = codes(&mut r, fa, ny, extreme);
        let scratch = [0, 12, 64, 300, 8192][r.below(5)];
        let ox = Operand {
            v: &x,
            fmt: Some(fa),
        };
        let ow = Operand {
            v: &wt,
            fmt: Some(fb),
        };
        let od = Operand {
            v: &dy,
            fmt: Some(fa),
        };
        let f1 = compare(&|b, o| b.conv2d(g, ox, ow, o), ny, scratch);
        let f2 = compare(&|b, o| b.conv2d_input_grad(g, od, ow, o), nx, scratch);
        let f3 = compare(&|b, o| b.conv2d_weight_grad(g, od, ox, o), nw, scratch);
        fast += f1.0 + f2.0 + f3.0;
    }
    assert!(fast > 300, "the packed kernels ran only {fast} times");
}

#[test]
fn float_operands_and_non_codes_go_to_the_reference() {
    let g = LinearGeom {
        batch: 2,
        inp: 5,
        out: 3,
    };
    let f = Format::new(8, 0).unwrap();
    let x: Vec<f32> = (0..10).map(|i| f.to_f32(i - 4)).collect();
    let w: Vec<f32> = (0..15).map(|i| f.to_f32(7 - i)).collect();
    let mut s = vec![0u32; 256];
    let d = DspBackend::new(&mut s);
    // f32 operand: the reference's f32 sums.
    let (mut a, mut b) = (vec![0f32; 6], vec![1f32; 6]);
    let xf = Operand { v: &x, fmt: None };
    let wq = Operand {
        v: &w,
        fmt: Some(f),
    };
    RefBackend.linear(g, xf, wq, AccOut::Float(&mut a)).unwrap();
    d.linear(g, xf, wq, AccOut::Float(&mut b)).unwrap();
    assert_eq!(a, b);
    // A value above the format's range: not packed (it would not fit).
    let mut big = x.clone();
    big[3] = 1000.0;
    let xq = Operand {
        v: &big,
        fmt: Some(f),
    };
    let (mut a, mut b) = (vec![0i64; 6], vec![0i64; 6]);
    RefBackend.linear(g, xq, wq, AccOut::Int(&mut a)).unwrap();
    d.linear(g, xq, wq, AccOut::Int(&mut b)).unwrap();
    assert_eq!(a, b);
    assert_eq!((d.fast_calls(), d.fallback_calls()), (0, 2));
    // Wrong output variant: the same error as the reference.
    let xq = Operand {
        v: &x,
        fmt: Some(f),
    };
    assert_eq!(
        d.linear(g, xq, wq, AccOut::Float(&mut [0.0; 6])),
        RefBackend.linear(g, xq, wq, AccOut::Float(&mut [0.0; 6]))
    );
}

#[test]
fn chunks_are_as_long_as_32_bits_allow() {
    for ba in 2..=16u32 {
        for bb in 2..=16u32 {
            let c = chunk_words(ba, bb);
            if ba + bb > 30 {
                assert_eq!(c, 0);
                continue;
            }
            assert!(c >= 2 && c.is_multiple_of(2));
            // 2 c products of the largest magnitude fit in i32.
            let p = 1i64 << (ba + bb - 2);
            assert!(2 * c as i64 * p <= i64::from(i32::MAX), "{ba} {bb}");
            // The block computes them without wrapping (a full chunk when
            // it is short enough to test quickly).
            let c = c.min(1 << 12);
            let lo_a = -(1i32 << (ba - 1));
            let lo_b = -(1i32 << (bb - 1));
            let a = vec![pack2(lo_a, lo_a); 2 * c];
            let b = vec![pack2(lo_b, lo_b); 2 * c];
            let s = block2x2(&a, &b, c, [0; 4]);
            assert_eq!(s, [(2 * c as i64 * p) as i32; 4]);
            assert_eq!(s, block2x2_portable(&a, &b, c, [0; 4]));
        }
    }
}

#[test]
fn int8_and_int16_code_slices_give_the_reference_sums() {
    use fixnn::kernels::{conv2d, linear_weight_grad, CodeSlice};
    let mut r = Rng(77);
    let mut scratch = vec![0u32; 4096];
    for case in 0..100 {
        let (fa, fb) = (fmt_hw(&mut r, 8), fmt_hw(&mut r, 16));
        let g = LinearGeom {
            batch: 1 + r.below(9),
            inp: 1 + r.below(40),
            out: 1 + r.below(9),
        };
        let [nx, nw, ny] = g.lens().unwrap();
        let x = codes(&mut r, fa, nx, case % 7 == 0);
        let dy = codes(&mut r, fb, ny, case % 7 == 0);
        let xc: Vec<i8> = x.iter().map(|&v| fa.code_of(v) as i8).collect();
        let dc: Vec<i16> = dy.iter().map(|&v| fb.code_of(v) as i16).collect();
        let mut want = vec![0i64; nw];
        let (od, ox) = (
            Operand {
                v: &dy,
                fmt: Some(fb),
            },
            Operand {
                v: &x,
                fmt: Some(fa),
            },
        );
        RefBackend
            .linear_weight_grad(g, od, ox, AccOut::Int(&mut want))
            .unwrap();
        let mut got = vec![0i64; nw];
        let ok = linear_weight_grad(
            &mut scratch,
            g,
            &CodeSlice {
                v: &dc,
                bits: u32::from(fb.bits()),
            },
            &CodeSlice {
                v: &xc,
                bits: u32::from(fa.bits()),
            },
            &mut got,
        );
        assert_eq!(ok, fa.bits() + fb.bits() <= 30);
        if ok {
            assert_eq!(got, want);
        }
        // A code outside its declared width is refused, not wrapped.
        if fa.bits() < 8 {
            let mut bad = xc.clone();
            bad[0] = i8::MIN;
            let xs = CodeSlice {
                v: &bad,
                bits: u32::from(fa.bits()),
            };
            let ds = CodeSlice {
                v: &dc,
                bits: u32::from(fb.bits()),
            };
            assert!(!linear_weight_grad(&mut scratch, g, &ds, &xs, &mut got));
        }
    }
    // A convolution on i8 codes.
    let g = ConvGeom {
        batch: 2,
        cin: 4,
        h: 6,
        w: 5,
        cout: 6,
        kh: 3,
        kw: 3,
        oh: 6,
        ow: 5,
        stride: (1, 1),
        pad: (1, 1),
        dil: (1, 1),
        groups: 2,
    };
    let f = Format::new(8, 0).unwrap();
    let [nx, nw, ny] = g.lens().unwrap();
    let x = codes(&mut r, f, nx, false);
    let w = codes(&mut r, f, nw, false);
    let mut want = vec![0i64; ny];
    let (ox, ow) = (
        Operand {
            v: &x,
            fmt: Some(f),
        },
        Operand {
            v: &w,
            fmt: Some(f),
        },
    );
    RefBackend
        .conv2d(g, ox, ow, AccOut::Int(&mut want))
        .unwrap();
    let xc: Vec<i8> = x.iter().map(|&v| f.code_of(v) as i8).collect();
    let wc: Vec<i8> = w.iter().map(|&v| f.code_of(v) as i8).collect();
    let mut got = vec![0i64; ny];
    assert!(conv2d(
        &mut scratch,
        g,
        &CodeSlice { v: &xc, bits: 8 },
        &CodeSlice { v: &wc, bits: 8 },
        &mut got
    ));
    assert_eq!(got, want);
}

/// The six products on `i8` and `i16` code slices (the packers that read
/// runs of codes, several at a time, and pairs of rows side by side)
/// against the reference backend, whole outputs; a code outside its
/// declared width anywhere in an operand is refused, not wrapped.
#[test]
fn code_slices_of_every_width_give_the_reference_sums() {
    use fixnn::kernels::{self as k, CodeSlice, Codes};
    fn narrow<T: TryFrom<i32>>(f: Format, v: &[f32]) -> Vec<T> {
        v.iter()
            .map(|&x| T::try_from(f.code_of(x)).ok().unwrap())
            .collect()
    }
    let mut r = Rng(0x5eed_1e55);
    let mut scratch = vec![0u32; 8192];
    let mut ran = 0;
    for case in 0..400 {
        let (fa, fb) = (fmt_hw(&mut r, 8), fmt_hw(&mut r, 8));
        let wide = case % 3 == 0;
        let extreme = case % 9 == 0;
        let lin = case % 2 == 0;
        let (lg, cg) = (
            LinearGeom {
                batch: 1 + r.below(9),
                inp: 1 + r.below(40),
                out: 1 + r.below(9),
            },
            {
                let groups = 1 + r.below(2);
                let (kh, kw) = (1 + r.below(3), 1 + r.below(3));
                let pad = (r.below(2), r.below(2));
                let (h, w) = (kh + r.below(5), kw + r.below(5));
                ConvGeom {
                    batch: 1 + r.below(2),
                    cin: groups * (1 + r.below(4)),
                    h,
                    w,
                    cout: groups * (1 + r.below(3)),
                    kh,
                    kw,
                    oh: h + 2 * pad.0 - kh + 1,
                    ow: w + 2 * pad.1 - kw + 1,
                    stride: (1, 1),
                    pad,
                    dil: (1, 1),
                    groups,
                }
            },
        );
        let lens = if lin { lg.lens() } else { cg.lens() }.unwrap();
        let [nx, nw, ny] = lens;
        // For each pass: operands (a, b) and the output length.
        for pass in 0..3 {
            let (na, nb, no) = [(nx, nw, ny), (ny, nw, nx), (ny, nx, nw)][pass];
            let a = codes(&mut r, fa, na, extreme);
            let b = codes(&mut r, fb, nb, extreme);
            let (oa, ob) = (
                Operand {
                    v: &a,
                    fmt: Some(fa),
                },
                Operand {
                    v: &b,
                    fmt: Some(fb),
                },
            );
            let mut want = vec![0i64; no];
            let o = AccOut::Int(&mut want);
            match (lin, pass) {
                (true, 0) => RefBackend.linear(lg, oa, ob, o),
                (true, 1) => RefBackend.linear_input_grad(lg, oa, ob, o),
                (true, _) => RefBackend.linear_weight_grad(lg, oa, ob, o),
                (false, 0) => RefBackend.conv2d(cg, oa, ob, o),
                (false, 1) => RefBackend.conv2d_input_grad(cg, oa, ob, o),
                (false, _) => RefBackend.conv2d_weight_grad(cg, oa, ob, o),
            }
            .unwrap();
            // i8 or i16 slices of the same codes.
            macro_rules! with {
                ($ta:ty, $tb:ty) => {{
                    let ca: Vec<$ta> = narrow(fa, &a);
                    let cb: Vec<$tb> = narrow(fb, &b);
                    let sa = CodeSlice {
                        v: &ca,
                        bits: u32::from(fa.bits()),
                    };
                    let sb = CodeSlice {
                        v: &cb,
                        bits: u32::from(fb.bits()),
                    };
                    let op = |s: &mut [u32], sa: &CodeSlice<'_, $ta>, got: &mut [i64]| -> bool {
                        match (lin, pass) {
                            (true, 0) => k::linear(s, lg, sa, &sb, got),
                            (true, 1) => k::linear_input_grad(s, lg, sa, &sb, got),
                            (true, _) => k::linear_weight_grad(s, lg, sa, &sb, got),
                            (false, 0) => k::conv2d(s, cg, sa, &sb, got),
                            (false, 1) => k::conv2d_input_grad(s, cg, sa, &sb, got),
                            (false, _) => k::conv2d_weight_grad(s, cg, sa, &sb, got),
                        }
                    };
                    let mut got = vec![i64::MIN; no];
                    assert!(
                        op(&mut scratch, &sa, &mut got),
                        "{lin} {pass} {lg:?} {cg:?}"
                    );
                    assert_eq!(got, want, "{lin} {pass} {lg:?} {cg:?} {fa:?} {fb:?}");
                    ran += 1;
                    // One code just outside `fa`'s width, anywhere. (Not
                    // for a padded convolution's input gradient: output
                    // gradients that only reach the padding are never read.)
                    if fa.bits() < 8 && !ca.is_empty() && (lin || pass != 1) {
                        let mut bad = ca.clone();
                        let i = r.below(bad.len());
                        let top = 1i32 << (fa.bits() - 1);
                        bad[i] = <$ta>::try_from(if r.below(2) == 0 { top } else { -top - 1 })
                            .ok()
                            .unwrap();
                        let sbad = CodeSlice {
                            v: &bad,
                            bits: u32::from(fa.bits()),
                        };
                        assert_eq!(sbad.len(), ca.len());
                        assert!(
                            !op(&mut scratch, &sbad, &mut got),
                            "bad code at {i} accepted: {lin} {pass} {lg:?} {cg:?} {fa:?} {wide}"
                        );
                    }
                }};
            }
            if wide {
                with!(i16, i8);
            } else {
                with!(i8, i8);
            }
        }
    }
    assert_eq!(ran, 1200);
}

/// `CodeConv::code` (one multiply and a truncation) is `Format::code_of`
/// for every f32 below `2^31` steps, codes or not: the bias gradient
/// relies on it.
#[test]
fn code_conversion_equals_code_of_for_every_f32() {
    use fixnn::kernels::CodeConv;
    let mut r = Rng(0xc0de);
    let (mut seen, mut checked) = (0, 0);
    for case in 0..3000 {
        let bits = 2 + r.below(15) as u8;
        let scale = [-128, -127, -100, -20, -3, 0, 5, 30, 100, 120, 126, 127][case % 12];
        let f = Format::new(bits, scale).unwrap();
        let Some(conv) = CodeConv::new(f) else {
            continue;
        };
        seen += 1;
        for _ in 0..50 {
            let x = r.next();
            let v = match x % 6 {
                0 => f32::from_bits(x as u32),
                1 => f.to_f32((x >> 8) as i32 % 70_000),
                2 => f32::from_bits((x as u32) & 0x807f_ffff), // subnormal
                3 => [
                    0.0,
                    -0.0,
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    f32::MAX,
                ][(x >> 8) as usize % 6],
                _ => f.to_f32((x >> 8) as i32 % 300) * 1.000_001,
            };
            if conv.code_f32(v).abs() < 2_147_483_648.0 || v.is_nan() {
                assert_eq!(
                    conv.code(v),
                    f.code_of(v),
                    "{f:?} {v:e} ({:#x})",
                    v.to_bits()
                );
                checked += 1;
            }
        }
    }
    assert!(seen > 2000 && checked > 50_000, "{seen} {checked}");
}

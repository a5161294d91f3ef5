//! Inference from packed 2-, 3- and 4-bit weights computes the same bits
//! as the ordinary layers whose quantized weights are those codes: whole
//! outputs compared, with quantized and full-precision inputs, quantized,
//! full-precision and absent biases, and every output rounding; and the
//! DSP kernels read packed weights as they read `i8` codes.

use fixnn::backend::{AccOut, ConvGeom, LinearGeom, Operand, RefBackend};
use fixnn::kernels::{self, CodeSlice};
use fixnn::layers::{Conv2d, Layer, Linear, PackedConv2d, PackedLinear};
use fixnn::quant::packed::{pack, packed_len, PackedCodes};
use fixnn::quant::{QuantConfig, Rounding};
use fixnn::tensor::Ctx;
use fixnn::{Format, Stream};

fn draw(seed: u64, i: u32, n: u32) -> u32 {
    Stream::new(seed, 77, 0).draw(i) % n
}

/// `n` codes of `bits` bits, every code of the range used.
fn codes(seed: u64, bits: u8, n: usize) -> Vec<i8> {
    let span = 1u32 << bits;
    (0..n as u32)
        .map(|i| (draw(seed, i, span) as i32 - (span / 2) as i32) as i8)
        .collect()
}

fn packed(c: &[i8], bits: u8) -> Vec<u8> {
    let mut b = vec![0u8; packed_len(bits, c.len()).unwrap()];
    pack(c, bits, &mut b).unwrap();
    b
}

/// An input: codes of 8 bits at scale 1 (quantized) or f32 values (not).
fn input(seed: u64, n: usize, quantized: bool) -> (Vec<f32>, Option<Format>) {
    let f = Format::new(8, 1).unwrap();
    let v = (0..n as u32)
        .map(|i| {
            let c = draw(seed, 10_000 + i, 256) as i32 - 128;
            if quantized {
                f.to_f32(c)
            } else {
                c as f32 * 0.013_7
            }
        })
        .collect();
    (v, quantized.then_some(f))
}

const OUT_CFGS: [QuantConfig; 4] = [
    QuantConfig::NONE,
    QuantConfig {
        rounding: Rounding::Stochastic,
        ..QuantConfig::fixed(8, 2)
    },
    QuantConfig {
        rounding: Rounding::Floor,
        ..QuantConfig::fixed(6, 1)
    },
    QuantConfig {
        rounding: Rounding::NearestAway,
        ..QuantConfig::fixed(4, 0)
    },
];

/// Bias variants: 0 quantized (8 bits), 1 full precision, 2 none.
fn bias_values(seed: u64, n: usize, kind: u32) -> (Vec<f32>, QuantConfig) {
    let f = Format::new(8, -1).unwrap();
    let v = (0..n as u32)
        .map(|i| f.to_f32(draw(seed, 20_000 + i, 256) as i32 - 128))
        .collect();
    let cfg = if kind == 0 {
        QuantConfig::fixed(8, -1)
    } else {
        QuantConfig::NONE
    };
    (v, cfg)
}

#[test]
fn packed_linear_matches_linear() {
    const IN: usize = 13;
    const OUT: usize = 5;
    const B: usize = 3;
    let mut cases = 0;
    for bits in 2u8..=4 {
        for (ci, out_cfg) in OUT_CFGS.iter().enumerate() {
            for quantized in [true, false] {
                for bias_kind in 0..3 {
                    let seed = bits as u64 * 100 + ci as u64 * 10 + bias_kind as u64;
                    let wc = codes(seed, bits, IN * OUT);
                    let wf = Format::new(bits, -1).unwrap();
                    let bytes = packed(&wc, bits);
                    let (x, xf) = input(seed, B * IN, quantized);
                    let (bv, bcfg) = bias_values(seed, OUT, bias_kind);
                    let ctx = Ctx::eval(seed);

                    let mut lin = Box::new(Linear::<IN, OUT, B>::new(3));
                    for (m, &c) in lin.weight.master.as_flattened_mut().iter_mut().zip(&wc) {
                        *m = wf.to_f32(c as i32);
                    }
                    lin.weight.quant.cfg = QuantConfig::fixed(bits, -1);
                    lin.bias.master.copy_from_slice(&bv);
                    lin.bias.quant.cfg = bcfg;
                    lin.use_bias = bias_kind != 2;
                    lin.out.quant.cfg = *out_cfg;
                    let mut xt = fixnn::tensor::Tensor::zeros();
                    xt.flat_mut().copy_from_slice(&x);
                    xt.fmt = xf;
                    lin.forward(&RefBackend, &ctx, &xt).unwrap();

                    let view = PackedCodes::new(&bytes, wf, IN * OUT).unwrap();
                    let mut pl = PackedLinear::<IN, OUT, B>::new(3, view).unwrap();
                    pl.bias.flat_mut().copy_from_slice(&bv);
                    pl.bias.fmt = bcfg.format().unwrap();
                    pl.use_bias = bias_kind != 2;
                    pl.out.quant.cfg = *out_cfg;
                    pl.forward(&ctx, Operand { v: &x, fmt: xf }).unwrap();

                    let bits_of = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits_of(pl.output().flat()),
                        bits_of(lin.output().flat()),
                        "bits {bits} cfg {ci} quantized {quantized} bias {bias_kind}"
                    );
                    assert_eq!(pl.output().fmt, lin.output().fmt);
                    assert_eq!(pl.out.quant.stats, lin.out.quant.stats);
                    assert_eq!(pl.out.sat, lin.out.sat);
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 3 * 4 * 2 * 3);
}

#[test]
fn packed_conv2d_matches_conv2d() {
    // 4 -> 6 channels, 2 groups, 3x3, stride 2, padding 1, dilation 1 and
    // 2; 7x7 -> 4x4 (dilation 1) and 3x3 (dilation 2).
    fn run<const OH: usize, const OW: usize>(dil: usize) -> usize {
        let mut cases = 0;
        for bits in 2u8..=4 {
            for (ci, out_cfg) in OUT_CFGS.iter().enumerate() {
                for quantized in [true, false] {
                    for bias_kind in 0..3 {
                        let seed = 5000 + bits as u64 * 100 + ci as u64 * 10 + bias_kind as u64;
                        let mut conv = Box::new(
                            Conv2d::<4, 6, 2, 3, 3, 7, 7, OH, OW, 2>::new(
                                2,
                                (2, 2),
                                (1, 1),
                                (dil, dil),
                            )
                            .unwrap(),
                        );
                        let n = 6 * 2 * 9;
                        let wc = codes(seed, bits, n);
                        let wf = Format::new(bits, 0).unwrap();
                        let bytes = packed(&wc, bits);
                        let (x, xf) = input(seed, 2 * 4 * 49, quantized);
                        let (bv, bcfg) = bias_values(seed, 6, bias_kind);
                        let ctx = Ctx::eval(seed);
                        let wm = conv.weight.master.as_flattened_mut();
                        for (m, &c) in wm.as_flattened_mut().as_flattened_mut().iter_mut().zip(&wc)
                        {
                            *m = wf.to_f32(c as i32);
                        }
                        conv.weight.quant.cfg = QuantConfig::fixed(bits, 0);
                        conv.bias.master.copy_from_slice(&bv);
                        conv.bias.quant.cfg = bcfg;
                        conv.use_bias = bias_kind != 2;
                        conv.out.quant.cfg = *out_cfg;
                        let mut xt = fixnn::tensor::Tensor::zeros();
                        xt.flat_mut().copy_from_slice(&x);
                        xt.fmt = xf;
                        conv.forward(&RefBackend, &ctx, &xt).unwrap();

                        let view = PackedCodes::new(&bytes, wf, n).unwrap();
                        let mut pc =
                            PackedConv2d::<6, OH, OW, 2>::new(2, conv.geom(), view).unwrap();
                        pc.bias.flat_mut().copy_from_slice(&bv);
                        pc.bias.fmt = bcfg.format().unwrap();
                        pc.use_bias = bias_kind != 2;
                        pc.out.quant.cfg = *out_cfg;
                        pc.forward(&ctx, Operand { v: &x, fmt: xf }).unwrap();
                        let bits_of = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits_of(pc.output().flat()),
                            bits_of(conv.output().flat()),
                            "dil {dil} bits {bits} cfg {ci} quantized {quantized} bias {bias_kind}"
                        );
                        assert_eq!(pc.output().fmt, conv.output().fmt);
                        assert_eq!(pc.out.quant.stats, conv.out.quant.stats);
                        cases += 1;
                    }
                }
            }
        }
        cases
    }
    assert_eq!(run::<4, 4>(1) + run::<3, 3>(2), 2 * 3 * 4 * 2 * 3);
}

#[test]
fn packed_layers_refuse_wrong_sizes() {
    let bytes = [0u8; 3];
    let w = PackedCodes::new(&bytes, Format::new(2, 0).unwrap(), 12).unwrap();
    assert!(PackedLinear::<4, 3, 1>::new(0, w).is_ok());
    assert!(PackedLinear::<5, 3, 1>::new(0, w).is_err());
    let mut l = PackedLinear::<4, 3, 1>::new(0, w).unwrap();
    assert!(l
        .forward(
            &Ctx::eval(0),
            Operand {
                v: &[0.0; 5],
                fmt: None
            }
        )
        .is_err());
    let g = ConvGeom {
        batch: 1,
        cin: 1,
        h: 3,
        w: 3,
        cout: 3,
        kh: 2,
        kw: 2,
        oh: 2,
        ow: 2,
        stride: (1, 1),
        pad: (0, 0),
        dil: (1, 1),
        groups: 1,
    };
    assert!(PackedConv2d::<3, 2, 2, 1>::new(0, g, w).is_ok());
    assert!(PackedConv2d::<3, 3, 2, 1>::new(0, g, w).is_err());
    assert!(PackedConv2d::<3, 2, 2, 1>::new(0, ConvGeom { kh: 3, oh: 1, ..g }, w).is_err());
    // The kernel refuses an output variant that does not match the operands.
    let mut y = [0f32; 3];
    let lg = LinearGeom {
        batch: 1,
        inp: 4,
        out: 3,
    };
    let xf = Some(Format::new(8, 0).unwrap());
    let x = [0.0f32; 4];
    assert!(fixnn::layers::linear_packed(
        lg,
        Operand { v: &x, fmt: xf },
        &w,
        AccOut::Float(&mut y)
    )
    .is_err());
}

/// The packed-tile kernels (`fixnn::kernels`, SMLAD on Cortex-M4/M7) read
/// packed weights through `Codes` and give the sums they give for the same
/// codes as `i8`.
#[test]
fn dsp_kernels_read_packed_weights() {
    let g = LinearGeom {
        batch: 3,
        inp: 37,
        out: 9,
    };
    let xc = codes(9, 8, g.batch * g.inp);
    let mut scratch = vec![0u32; 4096];
    for bits in 2u8..=4 {
        let wc = codes(bits as u64, bits, g.out * g.inp);
        let bytes = packed(&wc, bits);
        let view = PackedCodes::new(&bytes, Format::new(bits, 0).unwrap(), wc.len()).unwrap();
        let x = CodeSlice {
            v: &xc[..],
            bits: 8,
        };
        let mut want = vec![0i64; g.batch * g.out];
        let mut got = vec![1i64; g.batch * g.out];
        assert!(kernels::linear(
            &mut scratch,
            g,
            &x,
            &CodeSlice {
                v: &wc[..],
                bits: bits as u32
            },
            &mut want
        ));
        assert!(kernels::linear(&mut scratch, g, &x, &view, &mut got));
        assert_eq!(got, want, "{bits} bits");
        // And both equal the plain sums.
        for b in 0..g.batch {
            for o in 0..g.out {
                let s: i64 = (0..g.inp)
                    .map(|i| xc[b * g.inp + i] as i64 * wc[o * g.inp + i] as i64)
                    .sum();
                assert_eq!(got[b * g.out + o], s);
            }
        }
    }
}

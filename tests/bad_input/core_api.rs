//! The core API: formats and bit widths, the quantizer, both backends
//! (buffer lengths, accumulator bounds, values that are not codes), layers,
//! the loss and the optimizer.

use super::*;

// ------------------------------------------------------- core: formats

/// Bit widths 0, 1, 17 and 255 are refused by every constructor and
/// validator with `BitsOutOfRange` naming the width; 2 and 16 are accepted.
#[test]
fn bit_widths_outside_2_to_16_are_refused_everywhere_in_core() {
    for bits in BAD_BITS {
        let want = Err(Error::BitsOutOfRange { bits });
        assert_eq!(Format::new(bits, 0).map(|_| ()), want);
        assert_eq!(QuantConfig::fixed(bits, 0).validate(), want);
        assert_eq!(QuantConfig::auto(bits).format().map(|_| ()), want);
        // Method::None too: a saved config is valid whatever its method.
        let none = QuantConfig {
            bits,
            ..QuantConfig::NONE
        };
        assert_eq!(none.validate(), want);
        let mut auto = QuantConfig::auto(bits);
        assert_eq!(auto.update_scale_f32(&[1.0]).map(|_| ()), want);
        assert!(Error::BitsOutOfRange { bits }
            .to_string()
            .contains(&format!("bit width {bits} is outside 2..=16")));
    }
    for bits in [2, 16] {
        assert!(Format::new(bits, 0).is_ok());
        assert!(QuantConfig::auto(bits).validate().is_ok());
    }
    // A 9-bit format does not fit i8 codes.
    let f9 = Format::new(9, 0).unwrap();
    let r = Rounder::new(Rounding::NearestEven, Stream::default());
    let mut codes = [0i8; 2];
    assert_eq!(
        quant::quantize_f32(&[0.5, 0.25], f9, &r, &mut codes, None),
        Err(Error::BitsExceedStorage {
            bits: 9,
            storage: 8
        })
    );
}

/// NaN and infinity in data: the quantizer and Auto's scale choice name the
/// first bad element and write nothing; empty data has no scale.
#[test]
fn nan_infinity_and_empty_data_in_the_quantizer() {
    let f = Format::new(8, 0).unwrap();
    let r = Rounder::new(Rounding::NearestEven, Stream::default());
    for (x, index) in [
        ([0.5, f32::NAN, 0.1], 1),
        ([f32::INFINITY, 0.0, 0.1], 0),
        ([0.5, 0.25, f32::NEG_INFINITY], 2),
    ] {
        let mut codes = [7i8; 3];
        assert_eq!(
            quant::quantize_f32(&x, f, &r, &mut codes, None),
            Err(Error::NonFinite { index })
        );
        assert_eq!(codes, [7; 3], "written on error");
        let mut cfg = QuantConfig::auto(8);
        assert_eq!(
            cfg.update_scale_f32(&x).map(|_| ()),
            Err(Error::NonFinite { index })
        );
        assert_eq!(cfg.scale, 0, "scale changed on error");
    }
    let mut cfg = QuantConfig::auto(8);
    assert_eq!(
        cfg.update_scale_f32(&[]).map(|_| ()),
        Err(Error::EmptyInput)
    );
    // Wrong buffer lengths.
    let mut short = [0i8; 2];
    assert_eq!(
        quant::quantize_f32(&[0.1, 0.2, 0.3], f, &r, &mut short, None),
        Err(Error::LengthMismatch {
            expected: 3,
            found: 2
        })
    );
    let mut codes = [0i8; 40];
    let mut mask = [0u32; 1];
    assert_eq!(
        quant::quantize_f32(&[0.0; 40], f, &r, &mut codes, Some(&mut mask)),
        Err(Error::MaskTooShort {
            needed: 2,
            found: 1
        })
    );
}

// ------------------------------------------------------- core: backends

fn lin(batch: usize, inp: usize, out: usize) -> LinearGeom {
    LinearGeom { batch, inp, out }
}

/// Wrong buffer lengths and mismatched output variants are `Shape` errors
/// naming the buffer, from both backends, and nothing is written.
#[test]
fn backends_name_the_buffer_of_the_wrong_length() {
    let f = Some(Format::new(8, 0).unwrap());
    let g = lin(2, 3, 4);
    let rayon = RayonBackend::with_threads(2).unwrap();
    let x = [0.5f32; 6];
    let w = [0.25f32; 12];
    for bk in [&RefBackend as &dyn LinearOnly, &rayon] {
        let mut y = [9i64; 8];
        let e = bk
            .fwd(
                g,
                Operand { v: &x[..5], fmt: f },
                Operand { v: &w, fmt: f },
                AccOut::Int(&mut y),
            )
            .unwrap_err();
        assert_eq!(
            e,
            Error::Shape {
                what: "linear input length"
            }
        );
        let e = bk
            .fwd(
                g,
                Operand { v: &x, fmt: f },
                Operand {
                    v: &w[..11],
                    fmt: f,
                },
                AccOut::Int(&mut y),
            )
            .unwrap_err();
        assert_eq!(
            e,
            Error::Shape {
                what: "linear weight length"
            }
        );
        let e = bk
            .fwd(
                g,
                Operand { v: &x, fmt: f },
                Operand { v: &w, fmt: f },
                AccOut::Int(&mut y[..7]),
            )
            .unwrap_err();
        assert_eq!(
            e,
            Error::Shape {
                what: "linear output length"
            }
        );
        // Integer operands with an f32 output.
        let mut yf = [9f32; 8];
        let e = bk
            .fwd(
                g,
                Operand { v: &x, fmt: f },
                Operand { v: &w, fmt: f },
                AccOut::Float(&mut yf),
            )
            .unwrap_err();
        assert!(matches!(e, Error::Shape { what } if what.contains("output variant")));
        assert_eq!(y, [9; 8]);
        assert_eq!(yf, [9.0; 8]);
    }
    // Convolution geometry that does not fit.
    let cg = ConvGeom {
        batch: 1,
        cin: 2,
        h: 5,
        w: 5,
        cout: 2,
        kh: 3,
        kw: 3,
        oh: 4,
        ow: 3,
        stride: (1, 1),
        pad: (0, 0),
        dil: (1, 1),
        groups: 1,
    };
    let e = RefBackend
        .conv2d(
            cg,
            Operand { v: &[], fmt: None },
            Operand { v: &[], fmt: None },
            AccOut::Float(&mut []),
        )
        .unwrap_err();
    assert!(e.to_string().contains("output size does not match"), "{e}");
}

/// Object-safe view of the forward linear product, to loop over backends.
trait LinearOnly {
    fn fwd(
        &self,
        g: LinearGeom,
        a: Operand<'_>,
        b: Operand<'_>,
        y: AccOut<'_>,
    ) -> fixnn::Result<()>;
}
impl<T: Backend> LinearOnly for T {
    fn fwd(
        &self,
        g: LinearGeom,
        a: Operand<'_>,
        b: Operand<'_>,
        y: AccOut<'_>,
    ) -> fixnn::Result<()> {
        self.linear(g, a, b, y)
    }
}

/// Accumulator overflow: a sum of more than 2^32 products is refused by
/// the geometry check of every operation (forward, both gradients) before
/// any buffer is read; 2^32 itself, and every real layer, is accepted.
#[test]
fn reductions_longer_than_2_pow_32_are_configuration_errors() {
    let big_n = (MAX_REDUCTION + 1) as usize;
    for g in [lin(1, big_n, 1), lin(1, 1, big_n), lin(big_n, 1, 1)] {
        let e = g.check().unwrap_err();
        assert!(
            e.to_string().contains("more than 2^32 products"),
            "{g:?}: {e}"
        );
        // Through the backends too, with empty buffers: an error, no read.
        for bk in [
            &RefBackend as &dyn LinearOnly,
            &RayonBackend::with_threads(1).unwrap(),
        ] {
            let o = Operand { v: &[], fmt: None };
            assert_eq!(bk.fwd(g, o, o, AccOut::Float(&mut [])), Err(e));
        }
    }
    let edge = MAX_REDUCTION as usize;
    for g in [
        lin(1, edge, 1),
        lin(1, 1, edge),
        lin(edge, 1, 1),
        lin(64, 784, 100),
    ] {
        assert_eq!(g.check(), Ok(()), "{g:?}");
    }
    // Convolutions: cin/groups*kh*kw, cout/groups*kh*kw, batch*oh*ow.
    let conv =
        |batch: usize, cin: usize, cout: usize, groups: usize, k: usize, hw: usize| ConvGeom {
            batch,
            cin,
            h: hw,
            w: hw,
            cout,
            kh: k,
            kw: k,
            oh: hw - k + 1,
            ow: hw - k + 1,
            stride: (1, 1),
            pad: (0, 0),
            dil: (1, 1),
            groups,
        };
    // 2^16 channels x 257 x 257 taps > 2^32 (forward).
    let fwd = conv(1, 1 << 16, 1, 1, 257, 257);
    // ... the same on the output side (input gradient).
    let dx = conv(1, 1, 1 << 16, 1, 257, 257);
    // batch 2^16 x 65537 x 1 outputs > 2^32 (weight gradient).
    let dw = ConvGeom {
        h: 65_537,
        oh: 65_537,
        w: 1,
        ow: 1,
        kh: 1,
        kw: 1,
        ..conv(1 << 16, 1, 1, 1, 1, 1)
    };
    for g in [fwd, dx, dw] {
        let e = g.check().unwrap_err();
        assert!(
            e.to_string().contains("more than 2^32 products"),
            "{g:?}: {e}"
        );
    }
    // Groups divide the reduction: 2^16 groups of one channel is fine.
    assert_eq!(conv(1, 1 << 16, 1 << 16, 1 << 16, 257, 257).check(), Ok(()));
    // Every compiled architecture builds (its layers pass the checks).
    big(|| {
        MnistMlp::build(1).unwrap();
        LeNet::build(1).unwrap();
    });
}

/// Values that are not codes of their operand's format (huge, NaN) do not
/// overflow or panic; both backends return the same bits.
#[test]
fn non_code_operands_do_not_panic_and_backends_agree() {
    let f = Some(Format::new(8, 0).unwrap());
    let g = lin(1, 4, 2);
    let x = [1e30f32, -1e30, f32::NAN, 3e38];
    let w = [1e30f32, 1e30, 1.0, 3e38, -2.0, 0.5, 1e20, f32::INFINITY];
    let (mut a, mut b) = ([0i64; 2], [0i64; 2]);
    let xo = Operand { v: &x, fmt: f };
    let wo = Operand { v: &w, fmt: f };
    RefBackend.linear(g, xo, wo, AccOut::Int(&mut a)).unwrap();
    RayonBackend::with_threads(2)
        .unwrap()
        .linear(g, xo, wo, AccOut::Int(&mut b))
        .unwrap();
    assert_eq!(a, b);
}

// --------------------------------------------------------- core: layers

/// NaN and infinity in a layer's input: a quantizing layer refuses it with
/// `NonFinite`; at full precision it reaches the loss, which refuses it.
#[test]
fn nan_and_infinity_in_layer_inputs_and_logits() {
    let ctx = Ctx::train(1, 0);
    let mut q = Quant::<S2<2, 3>>::new(0);
    q.out.quant.cfg = QuantConfig::auto(8);
    let mut x = Tensor::<S2<2, 3>>::zeros();
    x.set_f32(&[0.1, 0.2, f32::NAN, 0.0, 0.0, 0.0]).unwrap();
    assert_eq!(
        q.forward(&RefBackend, &ctx, &x),
        Err(Error::NonFinite { index: 2 })
    );
    x.set_f32(&[0.1, 0.2, 0.3, f32::INFINITY, 0.0, 0.0])
        .unwrap();
    assert_eq!(
        q.forward(&RefBackend, &ctx, &x),
        Err(Error::NonFinite { index: 3 })
    );
    // Wrong input length for a tensor.
    assert_eq!(
        x.set_f32(&[0.0; 5]),
        Err(Error::LengthMismatch {
            expected: 6,
            found: 5
        })
    );

    let mut fc = Linear::<3, 2, 2>::new(1);
    fc.weight.master = [[1.0; 3]; 2];
    x.set_f32(&[0.1, 0.2, 0.3, f32::NAN, 0.0, 0.0]).unwrap();
    fc.forward(&RefBackend, &ctx, &x).unwrap(); // full precision: NaN flows on
    let mut d = Tensor::<S2<2, 2>>::zeros();
    assert_eq!(
        softmax_cross_entropy(fc.output(), &[0, 1], &mut d),
        Err(Error::NonFinite { index: 2 })
    );
    // A label outside the classes.
    let logits = Tensor::<S2<2, 2>>::zeros();
    let e = softmax_cross_entropy(&logits, &[0, 2], &mut d).unwrap_err();
    assert!(e.to_string().contains("label"), "{e}");
    // Quantized weights with a NaN master: refused by the refresh.
    fc.weight.quant.cfg = QuantConfig::auto(8);
    fc.weight.master[1][2] = f32::NAN;
    x.set_f32(&[0.1; 6]).unwrap();
    assert_eq!(
        fc.forward(&RefBackend, &ctx, &x),
        Err(Error::NonFinite { index: 5 })
    );
}

/// f32 sums of finite values can overflow: the result is an infinity,
/// never a NaN that hides it, and the loss refuses it clearly; the loss of
/// finite logits that are far apart is finite or +inf, never NaN.
#[test]
fn f32_overflow_from_finite_inputs_is_caught_not_silent() {
    let ctx = Ctx::train(1, 0);
    let mut fc = Linear::<2, 2, 2>::new(1);
    fc.weight.master = [[3e38, 3e38], [1.0, 1.0]];
    let mut x = Tensor::<S2<2, 2>>::zeros();
    x.set_f32(&[1.0, 1.0, 0.5, 0.5]).unwrap();
    fc.forward(&RefBackend, &ctx, &x).unwrap();
    let y = fc.output().flat();
    assert_eq!(y[0], f32::INFINITY, "{y:?}");
    let mut d = Tensor::<S2<2, 2>>::zeros();
    assert_eq!(
        softmax_cross_entropy(fc.output(), &[0, 1], &mut d),
        Err(Error::NonFinite { index: 0 })
    );
    let mut far = Tensor::<S2<2, 2>>::zeros();
    far.set_f32(&[3e38, -3e38, -3e38, 3e38]).unwrap();
    let l = softmax_cross_entropy(&far, &[1, 1], &mut d).unwrap();
    assert!(!l.loss.is_nan(), "{l:?}");
    assert!(d.flat().iter().all(|v| v.is_finite()), "{:?}", d.flat());
}

/// NaN or infinite hyper-parameters are refused before any master value
/// changes.
#[test]
fn sgd_refuses_non_finite_hyper_parameters_without_touching_the_model() {
    let ctx = Ctx::train(1, 0);
    for (lr, mo, wd) in [
        (f32::NAN, 0.5, 0.0),
        (f32::INFINITY, 0.5, 0.0),
        (0.01, f32::NAN, 0.0),
        (0.01, 0.5, f32::NEG_INFINITY),
    ] {
        let mut fc = Linear::<2, 2, 1>::new(1);
        fc.weight.master = [[0.5, -0.5], [0.25, 1.0]];
        fc.weight.grad.v = [[1.0; 2]; 2];
        let before = fc.weight.master;
        let e = Sgd::new(lr, mo, wd).step(&ctx, &mut fc).unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
        assert!(e
            .to_string()
            .contains("lr, momentum and weight_decay must be finite"));
        assert_eq!(fc.weight.master, before);
    }
}

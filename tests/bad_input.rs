//! Bad input at every public entry point: the core API (formats, configs,
//! quantizers, backends, layers, the optimizer, config trees and states in
//! JSON), the desktop library (model files, config and state files,
//! checkpoints, IDX datasets) and the `fixnn` program (train, eval, export,
//! inspect, quantize).
//!
//! Each case asserts ONE clear error that names what is wrong (its kind or
//! the words of its message), that nothing panics (the CLI runs in process,
//! so a panic fails the test), and, where files exist beforehand, that
//! they are unchanged byte for byte after the failure.

use std::path::{Path, PathBuf};

use fixnn::backend::{AccOut, Backend, ConvGeom, LinearGeom, Operand, RefBackend, MAX_REDUCTION};
use fixnn::layers::{softmax_cross_entropy, Layer, Linear, Quant};
use fixnn::model::{self, check_json, ConfigDoc, DocJsonError, JsonProblem, MAX_DEPTH};
use fixnn::optim::Sgd;
use fixnn::quant::{self, Format};
use fixnn::tensor::{Ctx, Tensor, S2};
use fixnn::{Error, QuantConfig, Rounder, Rounding, Stream};
use fixnn_std::arch::{Arch, LeNet, MnistMlp};
use fixnn_std::rayon_backend::RayonBackend;

const BAD_BITS: [u8; 4] = [0, 1, 17, 255];

// ---------------------------------------------------------------- helpers

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn mnist_dir() -> PathBuf {
    let d = root().join("../shared/datasets/mnist");
    assert!(d.is_dir(), "MNIST is expected at {}", d.display());
    d
}

/// A fresh, empty directory for one test.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fixnn-bad-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run `fixnn` in process: (exit status, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv: Vec<String> = std::iter::once("fixnn")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let code = fixnn_std::cli::run(argv, &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// `fixnn ARGS` fails with status 2 and one line on stderr containing
/// every needle; returns that line.
fn cli_refuses(args: &[&str], needles: &[&str]) -> String {
    let (code, out, err) = cli(args);
    assert_eq!(code, 2, "{args:?}: stdout {out} stderr {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.starts_with("fixnn: error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{err}` does not name `{n}`");
    }
    err
}

/// Every file under `dir` (recursively) with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// Run `f` on a thread with a large stack (models are built by value).
fn big<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// The shipped MNIST MLP model file as JSON, edited by `f`.
fn mlp_spec(f: impl FnOnce(&mut serde_json::Value)) -> String {
    let text = std::fs::read_to_string(root().join("examples/mnist-mlp.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    f(&mut v);
    serde_json::to_string(&v).unwrap()
}

/// A valid checkpoint of a freshly initialised MNIST MLP (no training).
fn fresh_checkpoint() -> Vec<u8> {
    big(|| {
        let spec = fixnn_std::spec::ModelSpec::parse(&mlp_spec(|_| {})).unwrap();
        let mut m = MnistMlp::build(1).unwrap();
        spec.apply_configs(&mut *m).unwrap();
        let configs = fixnn_std::configs::ConfigFile::of(&mut *m);
        let state = fixnn_std::configs::state_json(&mut *m);
        fixnn_std::checkpoint::encode(0, 0, &spec, &configs, &state, &Default::default()).unwrap()
    })
}

fn deep(n: usize) -> String {
    "[".repeat(n) + &"]".repeat(n)
}

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

// ------------------------------------------------- core: config JSON

/// A config tree of the MLP, as the core writes it.
fn mlp_config_json() -> String {
    big(|| {
        let mut m = MnistMlp::build(1).unwrap();
        fixnn_std::configs::ConfigFile::of(&mut *m).to_json()
    })
}

/// The core's config-tree reader: a duplicated key is an error naming the
/// key, at any level; deep nesting is an error, not a stack overflow (run
/// on a 64 KiB stack); unknown keys, bad bit widths, overlong names and
/// too many tensors are errors; a good tree loads.
#[test]
fn core_config_doc_refuses_duplicates_depth_unknown_keys_and_overlong_names() {
    let good = mlp_config_json();
    type Doc = ConfigDoc<12>;
    let mut buf = [0u8; 128];
    let doc = Doc::from_json(&good, &mut buf).unwrap();
    assert_eq!(doc.tensors.len(), 10);

    // A duplicated key in an entry's data config, and at the top level.
    let dup = good.replacen(r#""bits":8,"#, r#""bits":8,"bits":4,"#, 1);
    assert_ne!(dup, good);
    let e = Doc::from_json(&dup, &mut buf).unwrap_err();
    assert!(
        matches!(
            e,
            DocJsonError::Structure(JsonProblem::DuplicateKey { key: "bits", .. })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("duplicate key `bits`"), "{e}");
    let dup_top = good.replacen(r#""version":1,"#, r#""version":1,"version":1,"#, 1);
    let e = Doc::from_json(&dup_top, &mut buf).unwrap_err();
    assert!(e.to_string().contains("duplicate key `version`"), "{e}");
    // Without the check, serde-json-core refuses it without saying why.
    assert_eq!(
        serde_json_core::from_str::<Doc>(&dup).map(|_| ()),
        Err(serde_json_core::de::Error::CustomError)
    );

    // Nesting: ten thousand levels on a small stack.
    let nested = format!(r#"{{"format":{}}}"#, deep(10_000));
    let e = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || {
            let mut buf = [0u8; 64];
            Doc::from_json(&nested, &mut buf)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(
        e.contains(&format!("nested deeper than {MAX_DEPTH} levels")),
        "{e}"
    );

    // Unknown key; bit width 17 (parsed, then refused on apply with its path).
    let unknown = good.replacen(r#""layer":"#, r#""colour":"red","layer":"#, 1);
    assert!(matches!(
        Doc::from_json(&unknown, &mut buf),
        Err(DocJsonError::Parse(serde_json_core::de::Error::CustomError))
    ));
    for bits in BAD_BITS {
        let t = good.replacen(r#""bits":8,"#, &format!(r#""bits":{bits},"#), 1);
        let doc = Doc::from_json(&t, &mut buf).unwrap();
        let r = big(move || {
            let mut m = MnistMlp::build(1).unwrap();
            doc.apply(&mut *m).unwrap_err().to_string()
        });
        assert!(
            r.contains(&format!("bit width {bits} is outside 2..=16")),
            "{r}"
        );
        assert!(r.contains(".data") || r.contains(".grad"), "{r}");
    }
    // A name longer than the path capacity; more tensors than the doc holds.
    let long = "x".repeat(model::MAX_PATH + 1);
    let first = format!(r#""name":"{}""#, doc.tensors[0].name);
    let t = good.replacen(&first, &format!(r#""name":"{long}""#), 1);
    assert_ne!(t, good);
    assert!(matches!(
        Doc::from_json(&t, &mut buf),
        Err(DocJsonError::Parse(_))
    ));
    let fits = good.replacen(&first, &format!(r#""name":"{}""#, &long[1..]), 1);
    assert!(Doc::from_json(&fits, &mut buf).is_ok());
    assert!(ConfigDoc::<4>::from_json(&good, &mut buf).is_err());
    // An empty text, and a text cut short.
    assert!(Doc::from_json("", &mut buf).is_err());
    assert!(Doc::from_json(&good[..good.len() / 2], &mut buf).is_err());
}

/// The core's structure check itself: the duplicate is named wherever it
/// is, and exactly MAX_DEPTH levels are allowed.
#[test]
fn json_structure_check_names_the_duplicate_and_limits_depth() {
    assert_eq!(
        check_json(r#"{"a":[{"b":1,"c":{"b":2},"b":3}]}"#),
        Err(JsonProblem::DuplicateKey {
            key: "b",
            offset: 25
        })
    );
    assert_eq!(check_json(&deep(MAX_DEPTH)), Ok(()));
    assert!(matches!(
        check_json(&deep(MAX_DEPTH + 1)),
        Err(JsonProblem::TooDeep { offset }) if offset == MAX_DEPTH
    ));
}

/// Model states: wrong lengths, codes outside their format, NaN masters,
/// bad bit widths are each refused by path, and the model is unchanged.
#[test]
fn core_state_loading_refuses_bad_tensors_and_leaves_the_model_alone() {
    let report = big(|| {
        let mut m = MnistMlp::build(1).unwrap();
        let fc1_before = m.fc1.weight.master;
        let state = fixnn_std::configs::state_json(&mut *m);
        let mut v: serde_json::Value = serde_json::from_str(&state).unwrap();
        let mut problems = Vec::new();
        let tensors = v["tensors"].as_array_mut().unwrap();
        for t in tensors.iter_mut() {
            let name = t["name"].as_str().unwrap().to_string();
            match name.as_str() {
                "fc1.weight" => {
                    t["master"].as_array_mut().unwrap().pop();
                }
                "fc1.bias" => t["master"][3] = serde_json::json!(1e39),
                "fc2.weight" => {
                    let n = t["values"].as_array().unwrap().len();
                    t["fmt"] = serde_json::json!({"bits": 17, "scale": 0});
                    t["codes"] = serde_json::json!(vec![0; n]);
                    t["values"] = serde_json::Value::Null;
                }
                "fc2.bias" => t["momentum"] = serde_json::json!(null),
                _ => continue,
            }
            problems.push(name);
        }
        let text = serde_json::to_string(&v).unwrap();
        let st = fixnn_std::configs::StateFile::parse(&text);
        // 1e39 does not fit f32: serde_json reads it as infinity.
        let msg = match st {
            Ok(st) => st.apply(&mut *m).unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(m.fc1.weight.master, fc1_before, "model changed");
        (msg, problems)
    });
    let (msg, problems) = report;
    assert!(!problems.is_empty());
    assert_eq!(
        problems,
        ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    );
    for want in [
        "fc1.weight: buffer length 78399 does not match input length 78400",
        "fc1.bias: element 3 is NaN or infinite",
        "fc2.weight: bit width 17 is outside 2..=16",
        "fc2.bias: shape error: a parameter needs master and momentum",
    ] {
        assert!(msg.contains(want), "{msg} lacks {want}");
    }
}

// ----------------------------------------------- fixnn-std: model files

fn spec_err(text: &str) -> String {
    fixnn_std::spec::ModelSpec::parse(text).unwrap_err()
}

/// Model files: duplicated keys (serde_json would keep the last), unknown
/// keys, bit widths 0/1/17/255, infinite or non-positive learning rates,
/// deep nesting, overlong names and empty text are each one error naming
/// the field.
#[test]
fn model_files_refuse_each_bad_field_by_name() {
    assert!(fixnn_std::spec::ModelSpec::parse(&mlp_spec(|_| {})).is_ok());
    let good = mlp_spec(|_| {});
    let dup = good.replacen(r#""lr":0.01"#, r#""lr":0.01,"lr":10.0"#, 1);
    assert_ne!(dup, good);
    assert!(
        spec_err(&dup).contains("duplicate key `lr`"),
        "{}",
        spec_err(&dup)
    );
    let dup_top = good.replacen(r#""seed":1"#, r#""seed":1,"seed":2"#, 1);
    assert!(spec_err(&dup_top).contains("duplicate key `seed`"));

    let unknown = mlp_spec(|v| v["optimizer"]["nesterov"] = true.into());
    assert!(
        spec_err(&unknown).contains("unknown field `nesterov`"),
        "{}",
        spec_err(&unknown)
    );
    for bits in BAD_BITS {
        let t = mlp_spec(|v| v["configs"][1]["data"]["bits"] = bits.into());
        let e = spec_err(&t);
        assert!(
            e.contains("configs[1].data") && e.contains(&format!("bit width {bits}")),
            "{e}"
        );
        let t = mlp_spec(|v| v["optimizer"]["fixed_master"] = serde_json::json!([bits, 8]));
        assert!(
            spec_err(&t).contains("optimizer.fixed_master"),
            "{}",
            spec_err(&t)
        );
    }
    // 1e39 is infinite as f32; JSON has no NaN literal (a parse error).
    for (field, value) in [
        ("lr", "1e39"),
        ("lr", "0"),
        ("lr", "-0.1"),
        ("momentum", "1e39"),
        ("weight_decay", "-1e39"),
    ] {
        let t = mlp_spec(|v| v["optimizer"][field] = serde_json::from_str(value).unwrap());
        let e = spec_err(&t);
        assert!(
            e.contains("lr must be positive and finite"),
            "{field}={value}: {e}"
        );
    }
    let nan = good.replacen(r#""lr":0.01"#, r#""lr":NaN"#, 1);
    assert!(
        spec_err(&nan).contains("expected value"),
        "{}",
        spec_err(&nan)
    );
    let nested = good.replacen(r#""seed":1"#, &format!(r#""seed":{}"#, deep(1000)), 1);
    assert!(
        spec_err(&nested).contains("nested deeper than 32 levels"),
        "{}",
        spec_err(&nested)
    );
    assert!(spec_err("").contains("EOF"), "{}", spec_err(""));
    // An overlong selector name matches nothing: an error naming the rule.
    let long = "fc1.".repeat(2000);
    let t = mlp_spec(|v| v["configs"][0]["select"] = serde_json::json!({"name": long}));
    let spec = fixnn_std::spec::ModelSpec::parse(&t).unwrap();
    let e = big(move || {
        let mut m = MnistMlp::build(1).unwrap();
        spec.apply_configs(&mut *m).unwrap_err()
    });
    assert!(
        e.contains("configs[0].select") && e.contains("matches no tensor"),
        "{}",
        &e[..80]
    );
}

/// Config-tree and state files: duplicated keys and deep nesting are named;
/// an overlong tensor name is an unknown tensor, reported by its path.
#[test]
fn config_and_state_files_refuse_duplicates_depth_and_unknown_names() {
    let good = mlp_config_json();
    let dup = good.replacen(
        r#""kind":"activation","#,
        r#""kind":"activation","kind":"param","#,
        1,
    );
    assert_ne!(dup, good);
    let e = fixnn_std::configs::ConfigFile::parse(&dup).unwrap_err();
    assert!(e.contains("duplicate key `kind`"), "{e}");
    let e = fixnn_std::configs::ConfigFile::parse(&deep(5000)).unwrap_err();
    assert!(e.contains("nested deeper than 32"), "{e}");
    let long = "y".repeat(5000);
    let t = good.replacen(r#""name":"fc2.bias""#, &format!(r#""name":"{long}""#), 1);
    let cfg = fixnn_std::configs::ConfigFile::parse(&t).unwrap();
    let e = big(move || {
        let mut m = MnistMlp::build(1).unwrap();
        cfg.apply(&mut *m).unwrap_err()
    });
    assert!(e.contains("fc2.bias: missing"), "{e}");
    assert!(
        e.contains("unknown tensor") || e.contains("longer than"),
        "{e}"
    );

    let state = big(|| {
        let mut m = MnistMlp::build(1).unwrap();
        fixnn_std::configs::state_json(&mut *m)
    });
    let dup = state.replacen(r#""format":"#, r#""format":"fixnn-state","format":"#, 1);
    let e = fixnn_std::configs::StateFile::parse(&dup).unwrap_err();
    assert!(e.contains("duplicate key `format`"), "{e}");
}

// ------------------------------------------------------ checkpoints

/// Checkpoints cut at any point, with one byte changed, with a duplicated
/// key under a correct checksum, or empty are refused with one message
/// saying which; the good one loads.
#[test]
fn truncated_altered_and_forged_checkpoints_are_refused() {
    let good = fresh_checkpoint();
    assert!(fixnn_std::checkpoint::decode(&good).is_ok());
    for cut in [
        0,
        1,
        10,
        40,
        good.len() / 3,
        good.len() / 2,
        good.len() - 2,
        good.len() - 1,
    ] {
        let e = fixnn_std::checkpoint::decode(&good[..cut]).unwrap_err();
        assert!(
            e.contains("truncated checkpoint") || e.contains("checksum mismatch"),
            "cut at {cut}: {e}"
        );
    }
    // One byte changed, in the body: the checksum catches it.
    for at in [good.len() / 4, good.len() / 2, good.len() * 9 / 10] {
        let mut bad = good.clone();
        let i = at + bad[at..].iter().position(u8::is_ascii_digit).unwrap();
        bad[i] = if bad[i] == b'9' { b'0' } else { bad[i] + 1 };
        let e = fixnn_std::checkpoint::decode(&bad).unwrap_err();
        assert!(e.contains("checksum mismatch"), "{e}");
    }
    // Not UTF-8; not JSON.
    let mut bin = good.clone();
    bin[20] = 0xff;
    assert!(fixnn_std::checkpoint::decode(&bin)
        .unwrap_err()
        .contains("not UTF-8"));
    // A forged body with a duplicated key and a matching checksum.
    let text = String::from_utf8(good.clone()).unwrap();
    let body_at = text.find(r#""body":"#).unwrap() + 7;
    let body = &text[body_at..text.len() - 1];
    let forged = body.replacen(r#""epoch":0,"#, r#""epoch":0,"epoch":7,"#, 1);
    assert_ne!(forged, body);
    let file = format!(
        r#"{{"checksum":"fnv1a64:{:016x}","body":{forged}}}"#,
        fixnn_std::checkpoint::fnv1a64(forged.as_bytes())
    );
    let e = fixnn_std::checkpoint::decode(file.as_bytes()).unwrap_err();
    assert!(e.contains("duplicate key `epoch`"), "{e}");
    // Checksum right, but a state whose tensor is the wrong length.
    let short = body.replacen(r#""codes":[0,"#, r#""codes":["#, 1);
    let short = if short == body {
        body.replacen(r#""master":["#, r#""master":[0.5,"#, 1)
    } else {
        short
    };
    assert_ne!(short, body);
    let file = format!(
        r#"{{"checksum":"fnv1a64:{:016x}","body":{short}}}"#,
        fixnn_std::checkpoint::fnv1a64(short.as_bytes())
    );
    let c = fixnn_std::checkpoint::decode(file.as_bytes()).unwrap();
    let e = big(move || {
        let mut m = MnistMlp::build(1).unwrap();
        fixnn_std::train::restore(&mut *m, &c).unwrap_err()
    });
    assert!(e.contains("length") || e.contains("buffer"), "{e}");
}

// ------------------------------------------------------- IDX datasets

fn idx_images(count: u32, rows: u32, cols: u32, pixels: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for w in [0x0803u32, count, rows, cols] {
        b.extend_from_slice(&w.to_be_bytes());
    }
    b.resize(16 + pixels, 7);
    b
}

fn idx_labels(count: u32, n: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for w in [0x0801u32, count] {
        b.extend_from_slice(&w.to_be_bytes());
    }
    b.resize(8 + n, 3);
    b
}

/// A dataset directory with the four files given.
fn dataset(name: &str, train: (Vec<u8>, Vec<u8>), test: (Vec<u8>, Vec<u8>)) -> PathBuf {
    let d = tmp(name);
    std::fs::write(d.join("train-images-idx3-ubyte"), train.0).unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte"), train.1).unwrap();
    std::fs::write(d.join("t10k-images-idx3-ubyte"), test.0).unwrap();
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), test.1).unwrap();
    d
}

/// IDX files: truncated, wrong magic, zero-sized images, counts that
/// disagree; each error names the file.
#[test]
fn idx_files_refuse_truncation_bad_magic_and_mismatched_counts() {
    use fixnn_std::data::{read_idx, IdxKind};
    let d = tmp("idx");
    let cases: [(&str, Vec<u8>, IdxKind, &str); 5] = [
        (
            "short-header",
            vec![0, 0, 8, 3, 0],
            IdxKind::Images,
            "header",
        ),
        (
            "truncated",
            idx_images(3, 28, 28, 2 * 784),
            IdxKind::Images,
            "3 images of 28x28",
        ),
        ("magic", idx_labels(2, 2), IdxKind::Images, "magic"),
        (
            "zero-rows",
            idx_images(1, 0, 28, 0),
            IdxKind::Images,
            "0x28",
        ),
        ("trailing", idx_labels(2, 5), IdxKind::Labels, "2 labels"),
    ];
    for (name, bytes, kind, needle) in cases {
        let p = d.join(name);
        std::fs::write(&p, &bytes).unwrap();
        let e = read_idx(&p, kind).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()), "{e}");
        assert!(e.contains(needle), "{name}: {e}");
    }
    let e = fixnn_std::data::Split::from_files(
        fixnn_std::data::Dataset::Mnist,
        &{
            let p = d.join("imgs");
            std::fs::write(&p, idx_images(3, 28, 28, 3 * 784)).unwrap();
            p
        },
        &{
            let p = d.join("labels");
            std::fs::write(&p, idx_labels(2, 2)).unwrap();
            p
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("3") && e.contains("2"), "{e}");
}

// -------------------------------------------------- the fixnn program

/// `fixnn train` with bad model files or options: one line each, naming
/// the file and the field; the output directory gets no files.
#[test]
fn cli_train_refuses_bad_model_files_and_options() {
    let d = tmp("train-bad");
    let data = mnist_dir();
    let data = data.to_str().unwrap();
    let out = d.join("out");
    let outs = out.to_str().unwrap();
    let write = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let model = write("good.json", &mlp_spec(|_| {}));
    for (name, text, needles) in [
        (
            "bits17.json",
            mlp_spec(|v| v["configs"][0]["data"]["bits"] = 17.into()),
            vec!["bits17.json", "configs[0].data", "bit width 17"],
        ),
        (
            "dup.json",
            mlp_spec(|_| {}).replacen(r#""batch":64"#, r#""batch":64,"batch":32"#, 1),
            vec!["dup.json", "duplicate key `batch`"],
        ),
        (
            "arch.json",
            mlp_spec(|v| v["architecture"] = "resnet".into()),
            vec!["architecture", "resnet"],
        ),
        (
            "batch.json",
            mlp_spec(|v| v["batch"] = 0.into()),
            vec!["batch: 0"],
        ),
        ("empty.json", String::new(), vec!["empty.json"]),
        ("deep.json", deep(100_000), vec!["nested deeper than 32"]),
    ] {
        let p = write(name, &text);
        cli_refuses(
            &["train", &p, "--data", data, "--out", outs, "--no-report"],
            &needles,
        );
    }
    cli_refuses(
        &[
            "train",
            &model,
            "--threads",
            "0",
            "--data",
            data,
            "--out",
            outs,
        ],
        &["--threads"],
    );
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            data,
            "--out",
            outs,
            "--train-samples",
            "10",
            "--no-report",
        ],
        &["need at least 64 training samples, have 10"],
    );
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            data,
            "--out",
            outs,
            "--test-samples",
            "0",
            "--no-report",
        ],
        &["no test samples"],
    );
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            data,
            "--out",
            outs,
            "--epochs",
            "0",
            "--no-report",
        ],
        &["epochs must be at least 1"],
    );
    let missing = d.join("no-such-dir");
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            missing.to_str().unwrap(),
            "--out",
            outs,
        ],
        &["no-such-dir"],
    );
    let long = d.join("n".repeat(300)).join("model.json");
    cli_refuses(
        &["train", long.to_str().unwrap()],
        &["cannot read", "name too long"],
    );
    cli_refuses(&["train", &model, "--epochs", "-1"], &["-1"]);
    assert!(!out.join("checkpoint.json").exists());

    // Empty data sets: zero training samples, zero test samples.
    let empty = dataset(
        "empty-data",
        (idx_images(0, 28, 28, 0), idx_labels(0, 0)),
        (idx_images(0, 28, 28, 0), idx_labels(0, 0)),
    );
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            empty.to_str().unwrap(),
            "--out",
            outs,
            "--no-report",
        ],
        &["no test samples"],
    );
    let no_train = dataset(
        "no-train",
        (idx_images(0, 28, 28, 0), idx_labels(0, 0)),
        (idx_images(1, 28, 28, 784), idx_labels(1, 1)),
    );
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            no_train.to_str().unwrap(),
            "--out",
            outs,
            "--no-report",
        ],
        &["need at least 64 training samples, have 0"],
    );
    let wrong_size = dataset(
        "wrong-size",
        (idx_images(64, 14, 14, 64 * 196), idx_labels(64, 64)),
        (idx_images(1, 14, 14, 196), idx_labels(1, 1)),
    );
    cli_refuses(
        &[
            "train",
            &model,
            "--data",
            wrong_size.to_str().unwrap(),
            "--out",
            outs,
            "--no-report",
        ],
        &[
            "wrong-size",
            "training images are 14x14; the models take 28x28",
        ],
    );
}

/// `fixnn train` onto a directory that holds a run, without `--resume`:
/// refused, and every file there is unchanged byte for byte.
#[test]
fn cli_train_never_overwrites_an_existing_run() {
    let d = tmp("existing-run");
    let model = d.join("model.json");
    std::fs::write(&model, mlp_spec(|_| {})).unwrap();
    let run = d.join("run");
    std::fs::create_dir_all(run.join("report")).unwrap();
    std::fs::write(run.join("checkpoint.json"), b"precious checkpoint").unwrap();
    std::fs::write(run.join("metrics.json"), b"precious metrics").unwrap();
    std::fs::write(run.join("report/report.md"), b"precious report").unwrap();
    let before = snapshot(&run);
    let data = mnist_dir();
    cli_refuses(
        &[
            "train",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
        &[
            "checkpoint.json already holds a run",
            "--resume",
            "--overwrite",
        ],
    );
    assert_eq!(snapshot(&run), before);
    // --resume onto a damaged checkpoint: refused, nothing changed.
    cli_refuses(
        &[
            "train",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--resume",
        ],
        &["checkpoint.json", "not a checkpoint"],
    );
    assert_eq!(snapshot(&run), before);
    cli_refuses(
        &["train", "m.json", "--resume", "--overwrite"],
        &["--overwrite", "--resume"],
    );
}

/// A checkpoint write that fails (its temporary file cannot be created)
/// leaves the previous checkpoint and metrics byte for byte as they were,
/// and says which file could not be written.
#[test]
fn cli_failed_checkpoint_write_keeps_the_previous_files() {
    let d = tmp("failed-write");
    let model = d.join("model.json");
    std::fs::write(&model, mlp_spec(|_| {})).unwrap();
    let run = d.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("checkpoint.json"), fresh_checkpoint()).unwrap();
    std::fs::write(run.join("metrics.json"), br#"{"epochs":[]}"#).unwrap();
    // The atomic write's temporary file name, taken by a directory.
    let blocker = run.join(format!(".checkpoint.json.tmp-{}", std::process::id()));
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let before = snapshot(&run);
    let data = mnist_dir();
    cli_refuses(
        &[
            "train",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--resume",
            "--epochs",
            "1",
            "--train-samples",
            "64",
            "--test-samples",
            "64",
            "--no-report",
        ],
        &["cannot write", "checkpoint.json"],
    );
    assert_eq!(snapshot(&run), before);
}

/// `fixnn eval` and `fixnn export` on bad checkpoints; `export` over an
/// existing file whose write fails keeps that file; `export` to a missing
/// directory says so.
#[test]
fn cli_eval_and_export_refuse_bad_checkpoints_and_keep_existing_files() {
    let d = tmp("export");
    let good = fresh_checkpoint();
    let ckpt = d.join("checkpoint.json");
    std::fs::write(&ckpt, &good).unwrap();
    let cut = d.join("cut.json");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let empty = d.join("empty.json");
    std::fs::write(&empty, b"").unwrap();
    let data = mnist_dir();
    for (p, needle) in [
        (&cut, "truncated checkpoint"),
        (&empty, "truncated checkpoint"),
    ] {
        let ps = p.to_str().unwrap();
        cli_refuses(
            &["eval", ps, "--data", data.to_str().unwrap()],
            &[ps, needle],
        );
        cli_refuses(&["export", ps, "--format", "bin"], &[ps, needle]);
        cli_refuses(&["inspect", ps], &[ps]);
    }
    cli_refuses(
        &[
            "eval",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--test-samples",
            "0",
        ],
        &["no test samples"],
    );
    cli_refuses(
        &["export", ckpt.to_str().unwrap(), "--format", "onnx"],
        &["onnx", "rust", "bin"],
    );

    // Export over an existing file, with the write made to fail.
    let target = d.join("model.bin");
    std::fs::write(&target, b"an older export").unwrap();
    let blocker = d.join(format!(".model.bin.tmp-{}", std::process::id()));
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let before = snapshot(&d);
    cli_refuses(
        &[
            "export",
            ckpt.to_str().unwrap(),
            "--format",
            "bin",
            "--out",
            target.to_str().unwrap(),
        ],
        &["cannot write", "model.bin"],
    );
    assert_eq!(snapshot(&d), before);
    std::fs::remove_dir_all(&blocker).unwrap();
    // Without the blocker it replaces the file with a blob that reads back.
    let (code, _, err) = cli(&[
        "export",
        ckpt.to_str().unwrap(),
        "--format",
        "bin",
        "--out",
        target.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(fixnn_std::export::parse_bin(&std::fs::read(&target).unwrap()).is_ok());

    let nowhere = d.join("missing-dir").join("model.rs");
    cli_refuses(
        &[
            "export",
            ckpt.to_str().unwrap(),
            "--format",
            "rust",
            "--out",
            nowhere.to_str().unwrap(),
        ],
        &["cannot write", "missing-dir"],
    );
    // A damaged blob is refused by the blob reader.
    let blob = std::fs::read(&target).unwrap();
    for cut in [0, 4, blob.len() / 2, blob.len() - 1] {
        assert!(
            fixnn_std::export::parse_bin(&blob[..cut]).is_err(),
            "cut {cut}"
        );
    }
}

/// `fixnn inspect` and `fixnn quantize` on bad input.
#[test]
fn cli_inspect_and_quantize_refuse_bad_input() {
    let d = tmp("inspect");
    let dup = d.join("dup.json");
    std::fs::write(
        &dup,
        mlp_config_json().replacen(
            r#""layer":"Quant","#,
            r#""layer":"Quant","layer":"Linear","#,
            1,
        ),
    )
    .unwrap();
    cli_refuses(
        &["inspect", dup.to_str().unwrap()],
        &["dup.json", "duplicate key `layer`"],
    );
    let nested = d.join("nested.json");
    std::fs::write(&nested, deep(100_000)).unwrap();
    cli_refuses(
        &["inspect", nested.to_str().unwrap()],
        &["nested.json", "nested deeper than 32"],
    );
    let long = d.join("i".repeat(300));
    cli_refuses(
        &["inspect", long.to_str().unwrap()],
        &["cannot read", "name too long"],
    );
    let missing = d.join("missing.json");
    cli_refuses(
        &["inspect", missing.to_str().unwrap()],
        &["cannot read", "missing.json"],
    );

    for bits in BAD_BITS {
        cli_refuses(
            &["quantize", "--bits", &bits.to_string(), "--", "0.5"],
            &["--bits", &bits.to_string()],
        );
    }
    for v in ["nan", "NaN", "inf", "-inf", "1e39"] {
        let (code, out, err) = cli(&["quantize", "--bits", "8", "--", v]);
        assert_eq!(code, 2, "{v}: {out}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("value 1: '{v}' is not a finite f32")),
            "{v}: {err}"
        );
    }
    let input = d.join("values.json");
    std::fs::write(&input, r#"{"values":[1,2],"values":[3]}"#).unwrap();
    cli_refuses(
        &["quantize", "--input", input.to_str().unwrap()],
        &["duplicate key `values`"],
    );
    std::fs::write(&input, deep(50_000)).unwrap();
    cli_refuses(
        &["quantize", "--input", input.to_str().unwrap()],
        &["nested deeper than 32"],
    );
    std::fs::write(&input, "[]").unwrap();
    let (code, out, err) = cli(&["quantize", "--input", input.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("no values given"), "{err}");
    cli_refuses(&["frobnicate"], &["frobnicate"]);
}

/// nics_fix_pt YAML configs: block nesting that used to overflow the stack
/// (200,000 levels of `- `) is refused at level 65, flow nesting by the
/// parser's own limit, duplicated keys by name.
#[test]
fn nics_yaml_refuses_deep_nesting_and_duplicated_keys() {
    use fixnn_std::nics::{parse, ScaleForm, MAX_YAML_DEPTH};
    let ok = "- ".repeat(MAX_YAML_DEPTH) + "x";
    let e = parse(&ok, ScaleForm::Auto).unwrap_err();
    assert!(
        e.contains("expected a mapping with `data` and `grad`"),
        "{e}"
    );
    let e = parse(&("- ".repeat(200_000) + "x"), ScaleForm::Auto).unwrap_err();
    assert!(
        e.contains(&format!("YAML nested deeper than {MAX_YAML_DEPTH} levels")),
        "{e}"
    );
    let e = parse(&("a: ".to_string() + &"[".repeat(200_000)), ScaleForm::Auto).unwrap_err();
    assert!(e.contains("recursion limit exceeded"), "{e}");
    let dup = "data:\n  fc1:\n    weight: {bitwidth: 8, scale: 1, method: 1}\n    weight: {bitwidth: 4, scale: 1, method: 1}\n";
    let e = parse(dup, ScaleForm::Auto).unwrap_err();
    assert!(
        e.contains("\"weight\"") && e.contains("duplicated key"),
        "{e}"
    );

    let d = tmp("yaml");
    let p = d.join("deep.yaml");
    std::fs::write(&p, "- ".repeat(200_000)).unwrap();
    cli_refuses(
        &["inspect", p.to_str().unwrap()],
        &["deep.yaml", "YAML nested deeper than 64 levels"],
    );
}

/// A config tree that lists one tensor twice (two entries, not two keys) is
/// refused by path in the core and in fixnn-std, and the model keeps its
/// configs.
#[test]
fn config_trees_listing_a_tensor_twice_are_refused_by_path() {
    let good = mlp_config_json();
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let mut twice = v.clone();
    let first = twice["tensors"][0].clone();
    let name = first["name"].as_str().unwrap().to_string();
    twice["tensors"].as_array_mut().unwrap().push(first);
    let text = serde_json::to_string(&twice).unwrap();
    let mut buf = [0u8; 128];
    let doc = ConfigDoc::<12>::from_json(&text, &mut buf).unwrap();
    let file = fixnn_std::configs::ConfigFile::parse(&text).unwrap();
    let (core_err, std_err, unchanged) = big(move || {
        let mut m = MnistMlp::build(1).unwrap();
        m.fc1.weight.quant.cfg = QuantConfig::fixed(5, 1);
        let c = doc.apply(&mut *m).unwrap_err().to_string();
        let s = file.apply(&mut *m).unwrap_err();
        (c, s, m.fc1.weight.quant.cfg == QuantConfig::fixed(5, 1))
    });
    for e in [&core_err, &std_err] {
        assert!(e.contains(&format!("{name}: listed more than once")), "{e}");
    }
    assert!(unchanged, "a refused tree changed the model");
}

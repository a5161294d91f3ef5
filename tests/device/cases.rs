//! The desktop half of the golden flow: write each case's blob and compute
//! what the device must report, with the rayon backend.

use std::collections::BTreeSet;
use std::mem::MaybeUninit;
use std::path::Path;

use fixnn::layers::Layer;
use fixnn::model::{collect_configs, walk, Kind};
use fixnn::optim::{FixedMaster, Sgd};
use fixnn::quant::{Clamp, Method, QuantConfig, RangeMethod, Rounding};
use fixnn::tensor::Shape;
use fixnn::Stream;
use fixnn_cases::blob::{write_header, write_run};
use fixnn_cases::nets::{Cnn, MixConv, MixDense, Mlp, CLASSES, CNN_B, MIX_B, MLP_B};
use fixnn_cases::{write_error_line, write_line, Case, CaseError, Record, Sink, Want};
use fixnn_std::data::{self, Dataset};
use fixnn_std::rayon_backend::RayonBackend;

/// One device case: its name (= firmware binary) and blob.
pub struct CaseBlob {
    /// Case name.
    pub name: &'static str,
    /// The blob the firmware includes.
    pub blob: Vec<u8>,
}

/// What one run of a case reports: the lines in order, and for each `R`
/// line the full values (f32 bits).
#[derive(Default)]
pub struct Report {
    /// `R ...` and `X ...` lines, in order, without newlines.
    pub lines: Vec<String>,
    /// Values of line `i` (empty for `X` lines).
    pub values: Vec<Vec<u32>>,
}

impl Sink for Report {
    fn record(&mut self, r: &Record<'_>) {
        let mut s = String::new();
        let _ = write_line(&mut s, r);
        self.lines.push(s.trim_end().to_string());
        self.values
            .push(r.values.iter().map(|v| v.to_bits()).collect());
    }

    fn error(&mut self, run: u32, step: u32, e: &CaseError) {
        let mut s = String::new();
        let _ = write_error_line(&mut s, run, step, e);
        self.lines.push(s.trim_end().to_string());
        self.values.push(Vec::new());
    }
}

/// Every case, in the order the suite runs them.
pub const CASES: [&str; 4] = ["cnn", "mixconv", "mixdense", "mlp"];

/// Whether `case` runs on `board`. The MNIST MLP (3.3 MB of model) runs
/// on the M4 and M7 boards, as the issue asks; every other case runs on
/// all six.
pub fn runs_on(case: &str, board: &str) -> bool {
    match case {
        "mlp" => matches!(board, "mps2-an386" | "mps2-an500"),
        _ => true,
    }
}

/// Run `f` on a thread with a 512 MiB stack (the MLP is built by value).
fn big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(512 << 20)
            .spawn_scoped(s, f)
            .expect("spawn a thread")
            .join()
            .expect("case thread panicked")
    })
}

/// The expected report of `case` on `blob`, computed with the rayon backend.
pub fn expected(case: &str, blob: &[u8]) -> Result<Report, CaseError> {
    big_stack(|| {
        let bk = RayonBackend::new();
        let mut r = Report::default();
        match case {
            "cnn" => fixnn_cases::run::<Cnn, _, CNN_B, CLASSES>(&bk, blob, Want::All, &mut r),
            "mixconv" => {
                fixnn_cases::run::<MixConv, _, MIX_B, CLASSES>(&bk, blob, Want::All, &mut r)
            }
            "mixdense" => {
                fixnn_cases::run::<MixDense, _, MIX_B, CLASSES>(&bk, blob, Want::All, &mut r)
            }
            "mlp" => fixnn_cases::run::<Mlp, _, MLP_B, 10>(&bk, blob, Want::All, &mut r),
            _ => Err(CaseError::Blob(fixnn_cases::blob::BlobError::WrongCase)),
        }?;
        Ok(r)
    })
}

/// A run of a case as the desktop describes it.
struct RunDesc {
    seed: u64,
    steps: u32,
    sgd: Sgd,
    /// JSON config entries, one per tensor.
    configs: Vec<Vec<u8>>,
    inputs: Vec<f32>,
    labels: Vec<u8>,
}

/// Set every tensor's configs with `f(index, kind, name)` and return the
/// config entries as JSON documents (fixnn's layout).
fn configs<L: Layer>(
    net: &mut L,
    mut f: impl FnMut(usize, Kind, &str) -> (QuantConfig, QuantConfig),
) -> Vec<Vec<u8>> {
    let mut i = 0;
    walk(net, &mut |name, t| {
        let (d, g) = f(i, t.kind, name);
        t.quant.cfg = d;
        t.quant.grad_cfg = g;
        i += 1;
    });
    let doc = collect_configs::<L, 64>(net).expect("configs fit");
    doc.tensors
        .iter()
        .map(|e| serde_json::to_vec(e).expect("serialize a config entry"))
        .collect()
}

fn blob(name: &str, runs: &[RunDesc], input_len: usize, batch: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = |b: &[u8]| out.extend_from_slice(b);
    write_header(name, runs.len() as u32, &mut w);
    for r in runs {
        let cfgs: Vec<&[u8]> = r.configs.iter().map(|c| c.as_slice()).collect();
        write_run(
            r.seed,
            r.steps,
            true,
            &r.sgd,
            &cfgs,
            input_len as u32,
            &r.inputs,
            batch as u32,
            &r.labels,
            &mut w,
        );
    }
    out
}

fn cfg(method: Method, bits: u8, scale: i8, range: RangeMethod, rounding: Rounding) -> QuantConfig {
    QuantConfig {
        method,
        bits,
        scale,
        range,
        rounding,
        ..QuantConfig::NONE
    }
}

fn uniform(s: &Stream, i: u32) -> f32 {
    (s.draw(i) >> 8) as f32 / (1u32 << 24) as f32
}

/// `cnn`: 6x6 images with one bar (horizontal, vertical or diagonal: the
/// label) on noise. Two runs: 8 bits with f32 masters for 24 steps, and
/// 6 bits with a 12-bit fixed-point master for 20 steps; every gradient
/// 8 bits with stochastic rounding.
fn cnn_blob() -> Vec<u8> {
    let images = |seed: u64, steps: u32| {
        let mut inputs = Vec::new();
        let mut labels = Vec::new();
        for n in 0..steps * CNN_B as u32 {
            let s = Stream::new(seed, 500, n);
            let label = s.draw(0) % 3;
            let off = (s.draw(1) % 6) as usize;
            let mut img = [0f32; 36];
            for (i, v) in img.iter_mut().enumerate() {
                *v = 1.2 * (uniform(&s, 2 + i as u32) - 0.5);
            }
            for t in 0..6 {
                let (y, x) = match label {
                    0 => (off, t),
                    1 => (t, off),
                    _ => (t, t),
                };
                img[y * 6 + x] += 1.0;
            }
            inputs.extend_from_slice(&img);
            labels.push(label as u8);
        }
        (inputs, labels)
    };
    let run = |seed, steps, bits, sgd| {
        let mut slot = MaybeUninit::uninit();
        let net = Cnn::build_in(&mut slot).expect("cnn geometry");
        net.init(seed);
        let configs = configs(net, |_, kind, name| {
            let data = match kind {
                Kind::Buffer => QuantConfig::NONE,
                _ if name.starts_with("conv.output") || name.starts_with("relu") => {
                    QuantConfig::NONE
                }
                _ => QuantConfig::auto(bits),
            };
            let grad = cfg(Method::Auto, 8, 0, RangeMethod::Max, Rounding::Stochastic);
            (data, grad)
        });
        let (inputs, labels) = images(seed, steps);
        RunDesc {
            seed,
            steps,
            sgd,
            configs,
            inputs,
            labels,
        }
    };
    let mut fixed = Sgd::new(0.05, 0.9, 0.0);
    fixed.fixed_master = Some(FixedMaster {
        bits: 12,
        momentum_bits: 10,
    });
    let runs = [
        run(1, 24, 8, Sgd::new(0.05, 0.9, 0.0)),
        run(2, 20, 6, fixed),
    ];
    blob("cnn", &runs, <<Cnn as Layer>::In as Shape>::LEN, CNN_B)
}

const METHODS: [Method; 4] = [Method::Auto, Method::Fixed, Method::Auto, Method::None];
const RANGES: [RangeMethod; 4] = [
    RangeMethod::Max,
    RangeMethod::ThreeSigma,
    RangeMethod::MaxTenPercent,
    RangeMethod::Sweep,
];
const ROUNDINGS: [Rounding; 4] = [
    Rounding::NearestEven,
    Rounding::NearestAway,
    Rounding::Floor,
    Rounding::Stochastic,
];

/// `mixconv` and `mixdense`: 6 runs of 3 steps each. Tensor `i` of run
/// `r` gets method, bit width, range method and rounding by rotating
/// tables with different strides, so that across the runs every tensor
/// meets each rounding, range method and method, the bit widths 2..=16
/// and both clamps (nics_fix_pt's only up to 15 bits) all occur for data
/// and for gradients (checked here: a blob that lost coverage is refused).
/// Runs 3-5 use a fixed-point master. Every run ends with an eval pass and
/// a pass with per-call overrides (`fixnn_cases`' `override_pass`).
fn mix_blob<C: Case<MIX_B, CLASSES>>() -> Vec<u8> {
    let mut seen: [BTreeSet<String>; 2] = Default::default();
    let runs: Vec<RunDesc> = (0..6u32)
        .map(|r| {
            let seed = 100 + r as u64;
            let mut slot = MaybeUninit::uninit();
            let net = C::build_in(&mut slot).expect("mix geometry");
            net.init(seed);
            let configs = configs(net, |i, kind, _| {
                let i = i as u32;
                let pick = |k: u32| {
                    let method = METHODS[((i + r) % 4) as usize];
                    let bits = 2 + ((i * 7 + r * 5 + k) % 15) as u8;
                    // Fixed scales near the data's range (activations ~1, grads ~2^-4).
                    let scale = if k == 0 { 1 } else { -3 };
                    let range = RANGES[((i + 3 * r + k) % 4) as usize];
                    let rounding = ROUNDINGS[((i + 2 * r + k) % 4) as usize];
                    let mut c = cfg(method, bits, scale, range, rounding);
                    if bits <= 15 && !(i + r + k).is_multiple_of(3) {
                        c.clamp = Clamp::Nics;
                    }
                    c
                };
                let data = pick(0);
                let grad = if kind == Kind::Buffer {
                    QuantConfig::NONE
                } else {
                    pick(1)
                };
                for (set, c) in seen.iter_mut().zip([data, grad]) {
                    if c.method != Method::None {
                        set.insert(format!("bits {}", c.bits));
                        set.insert(format!("{:?}", c.rounding));
                        set.insert(format!("{:?}", c.range));
                        set.insert(format!("{:?}", c.clamp));
                    }
                    set.insert(format!("{:?}", c.method));
                }
                (data, grad)
            });
            let s = Stream::new(seed, 600, 0);
            let n = 3 * <<C as Layer>::In as Shape>::LEN;
            let inputs = (0..n as u32)
                .map(|i| 4.0 * (uniform(&s, i) - 0.5))
                .collect();
            let labels = (0..3 * MIX_B as u32)
                .map(|i| (s.draw(1_000_000 + i) % 3) as u8)
                .collect();
            let mut sgd = Sgd::new(0.02, 0.5, 0.001);
            if r >= 3 {
                sgd.fixed_master = Some(FixedMaster {
                    bits: 10 + 3 * (r - 3) as u8,
                    momentum_bits: 8,
                });
            }
            RunDesc {
                seed,
                steps: 3,
                sgd,
                configs,
                inputs,
                labels,
            }
        })
        .collect();
    for (set, what) in seen.iter().zip(["data", "grad"]) {
        let mut want: Vec<String> = (2..=16).map(|b| format!("bits {b}")).collect();
        want.extend(METHODS.iter().map(|m| format!("{m:?}")));
        want.extend(RANGES.iter().map(|m| format!("{m:?}")));
        want.extend(ROUNDINGS.iter().map(|m| format!("{m:?}")));
        want.extend([Clamp::Hardware, Clamp::Nics].map(|c| format!("{c:?}")));
        let missing: Vec<&String> = want.iter().filter(|w| !set.contains(*w)).collect();
        assert!(
            missing.is_empty(),
            "{}: {what} configs never use {missing:?}",
            C::NAME
        );
    }
    blob(C::NAME, &runs, <<C as Layer>::In as Shape>::LEN, MIX_B)
}

/// `mlp`: nics_fix_pt's MNIST MLP as in examples/mnist-mlp.json (8-bit
/// Auto weights, biases and Quant outputs; gradients at full precision;
/// SGD lr 0.01 momentum 0.5), 3 steps on the first 192 MNIST training
/// images; then the same with 8-bit stochastic gradients
/// (examples/mnist-mlp-grad8.json).
fn mlp_blob(mnist: &Path) -> Result<Vec<u8>, String> {
    let (train, _) = data::load(mnist, Dataset::Mnist).map_err(|e| e.to_string())?;
    let steps = 3u32;
    let n = steps as usize * MLP_B;
    let mut inputs = Vec::with_capacity(n * 784);
    for i in 0..n {
        let img = train.image(i).ok_or("MNIST has fewer than 192 images")?;
        inputs.extend(img.iter().map(|&p| Dataset::Mnist.normalize(p)));
    }
    let labels = train.labels()[..n].to_vec();
    let runs: Vec<RunDesc> = [false, true]
        .into_iter()
        .enumerate()
        .map(|(r, grad8)| {
            let seed = 1 + r as u64;
            big_stack(|| {
                let mut slot = Box::new(MaybeUninit::uninit());
                let net = Mlp::build_in(&mut slot).expect("mlp geometry");
                net.init(seed);
                let configs = configs(net, |_, kind, name| {
                    let quantized = kind == Kind::Param || name.starts_with("fix");
                    let data = if quantized {
                        QuantConfig::auto(8)
                    } else {
                        QuantConfig::NONE
                    };
                    let grad = if grad8 && quantized {
                        cfg(Method::Auto, 8, 0, RangeMethod::Max, Rounding::Stochastic)
                    } else {
                        QuantConfig::NONE
                    };
                    (data, grad)
                });
                RunDesc {
                    seed,
                    steps,
                    sgd: Sgd::new(0.01, 0.5, 0.0),
                    configs,
                    inputs: inputs.clone(),
                    labels: labels.clone(),
                }
            })
        })
        .collect();
    Ok(blob(
        "mlp",
        &runs,
        <<Mlp as Layer>::In as Shape>::LEN,
        MLP_B,
    ))
}

/// Every case's blob. `mnist` is the MNIST directory (for the MLP case).
///
/// # Errors
///
/// MNIST missing or unreadable.
pub fn all_blobs(mnist: &Path) -> Result<Vec<CaseBlob>, String> {
    Ok(vec![
        CaseBlob {
            name: "cnn",
            blob: cnn_blob(),
        },
        CaseBlob {
            name: "mixconv",
            blob: mix_blob::<MixConv>(),
        },
        CaseBlob {
            name: "mixdense",
            blob: mix_blob::<MixDense>(),
        },
        CaseBlob {
            name: "mlp",
            blob: mlp_blob(mnist)?,
        },
    ])
}

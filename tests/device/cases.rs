//! The desktop half of the golden flow: write each case's blob and compute
//! what the device must report, with the rayon backend.

use std::collections::BTreeSet;
use std::mem::MaybeUninit;
use std::path::Path;

use fixnn::layers::Layer;
use fixnn::model::{collect_configs, walk, Kind};
use fixnn::optim::{FixedMaster, Sgd};
use fixnn::quant::{Clamp, Group, Method, QuantConfig, RangeMethod, Rounding};
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
pub const CASES: [&str; 5] = ["cnn", "mixconv", "mixdense", "mlp", "packed"];

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
            // The weights unpacked into the ordinary layers: the device
            // computes from the packed bytes.
            "packed" => fixnn_cases::packed::run_unpacked(&bk, blob, &mut r),
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

/// Multipliers of the real-valued Fixed configs: 0.5, 0.75, about 0.9.
const MULTIPLIERS: [u32; 3] = [1 << 30, 3 << 29, 0x7333_3333];
const METHODS: [Method; 4] = [Method::Auto, Method::Fixed, Method::Auto, Method::None];
const RANGES: [RangeMethod; 5] = [
    RangeMethod::Max,
    RangeMethod::ThreeSigma,
    RangeMethod::MaxTenPercent,
    RangeMethod::Sweep,
    RangeMethod::Running,
];

/// A running-range state near a config's scale `s`: `r = 1.5 * 2^(s - 1)`
/// (packed as in `fixnn::quant::running`), so that the first step is an
/// average update and the hysteresis starts from the given scale.
fn seeded_ema(scale: i8) -> u32 {
    ((scale as i32 - 1 + 128) as u32) << 24 | 0xC0_0000
}
const ROUNDINGS: [Rounding; 5] = [
    Rounding::NearestEven,
    Rounding::NearestAway,
    Rounding::Floor,
    Rounding::Stochastic,
    // TFLite's double rounding where an accumulator meets a real-valued
    // scale (coverage key "real Tflite"), nearest-away elsewhere.
    Rounding::Tflite,
];

/// Zero points (asymmetric ranges) on every fourth config by `turn`,
/// outside the running slot and without a multiplier, up to 15 bits
/// (hardware clamp: nics_fix_pt's has no zero point): Fixed gets one of
/// `-2^(bits-1)`, `-2^(bits-2)`, `2^(bits-2)`, `2^(bits-1) - 1`, Auto
/// chooses scale and zero point with `MinMax`.
fn zero_point(c: &mut QuantConfig, slot: RangeMethod, turn: u32) {
    if slot == RangeMethod::Running || c.is_real() || c.bits > 15 || turn % 4 != 1 {
        return;
    }
    let half = 1i32 << (c.bits - 1);
    match c.method {
        Method::Fixed => {
            c.clamp = Clamp::Hardware;
            c.zero_point = [-half, -half / 2, half / 2, half - 1][(turn / 4 % 4) as usize];
        }
        Method::Auto => {
            c.clamp = Clamp::Hardware;
            c.range = RangeMethod::MinMax;
        }
        Method::None => {}
    }
}

/// `mixconv` and `mixdense`: 6 runs of 3 steps each. Tensor `i` of run
/// `r` gets method, bit width, range method and rounding by rotating
/// tables with different strides, so that across the runs every tensor
/// meets each rounding, range method and method, the bit widths 2..=16
/// and both clamps (nics_fix_pt's only up to 15 bits) all occur for data
/// and for gradients, and every range method occurs with Auto (checked
/// here: a blob that lost coverage is refused). The running-range configs
/// of the odd runs start with a state (the device parses and continues
/// it), the others empty; their averages evolve over the 3 steps.
/// Real-valued scales go to every third config outside the running slot;
/// zero points to about a quarter of the others ([`zero_point`]);
/// per-channel and per-batch-item groups to every activation config that
/// may have them (alternating) and two of three such parameter configs.
/// Runs 3-5 use a fixed-point master. Every run ends with an eval pass and
/// a pass with per-call overrides (`fixnn_cases`' `override_pass`).
fn mix_blob<C: Case<MIX_B, CLASSES>>() -> Vec<u8> {
    mix_blob_with::<C>(RangeMethod::Running)
}

/// [`mix_blob`] with the rotation's `Running` slot replaced by `running`
/// (coverage is checked only for `Running` itself).
fn mix_blob_with<C: Case<MIX_B, CLASSES>>(running: RangeMethod) -> Vec<u8> {
    let mut seen: [BTreeSet<String>; 2] = Default::default();
    let (mut layers, mut real_layers) = (BTreeSet::new(), BTreeSet::new());
    // Activations' grouped configs alternate between channel and batch,
    // counted per data/grad and method.
    let mut act_groups = [[0u32; 3]; 2];
    let runs: Vec<RunDesc> = (0..6u32)
        .map(|r| {
            let seed = 100 + r as u64;
            let mut slot = MaybeUninit::uninit();
            let net = C::build_in(&mut slot).expect("mix geometry");
            net.init(seed);
            let configs = configs(net, |i, kind, name| {
                let i = i as u32;
                // Real-valued scales (multiplier and shift) on every layer's
                // tensors; the coverage check below names the layer types.
                let layer = name.split('.').next().unwrap_or(name).to_string();
                layers.insert(layer.clone());
                let mut pick = |k: u32| {
                    let method = METHODS[((i + r) % 4) as usize];
                    let bits = 2 + ((i * 7 + r * 5 + k) % 15) as u8;
                    // Fixed scales near the data's range (activations ~1, grads ~2^-4).
                    let scale = if k == 0 { 1 } else { -3 };
                    let slot = RANGES[((i + 3 * r + k) % 5) as usize];
                    let range = match slot {
                        RangeMethod::Running => running,
                        other => other,
                    };
                    let rounding = ROUNDINGS[((i + 2 * r + k) as usize) % ROUNDINGS.len()];
                    let mut c = cfg(method, bits, scale, range, rounding);
                    if slot == RangeMethod::Running {
                        if range == RangeMethod::Running && r % 2 == 1 {
                            c.ema = seeded_ema(scale);
                        }
                        // Real-valued scales with the running range too
                        // (the blob with Max in this slot has the same
                        // multipliers, so it still differs only in range).
                        if (i + r + k).is_multiple_of(3) {
                            c.multiplier = MULTIPLIERS[((i + r) % 3) as usize];
                        }
                    } else if (i + r + k).is_multiple_of(3) {
                        // Auto with a multiplier chooses it (range Max
                        // here, Running in the running slot); Fixed uses
                        // one of 0.5 .. 1.
                        c.multiplier = MULTIPLIERS[((i + r) % 3) as usize];
                        if method == Method::Auto {
                            c.range = RangeMethod::Max;
                        }
                    }
                    if bits <= 15 && !(i + r + k).is_multiple_of(3) {
                        c.clamp = Clamp::Nics;
                    }
                    zero_point(&mut c, slot, 2 * i + r + 3 * k);
                    // Per-group scales on configs that may have them
                    // (grouped Auto needs range Max; buffers have no group
                    // storage; never in the running slot, so that the
                    // Max-for-Running blob differs only there).
                    let auto_ok = c.method != Method::Auto || c.range == RangeMethod::Max;
                    // Activations keep power-of-two group scales only.
                    let real_ok = kind == Kind::Param || c.multiplier == 0;
                    // Groups and zero points do not combine.
                    let zp_ok = c.zero_point == 0;
                    if kind != Kind::Buffer
                        && real_ok
                        && zp_ok
                        && slot != RangeMethod::Running
                        && auto_ok
                        && (kind == Kind::Activation || (i + 2 * r + k) % 3 != 2)
                    {
                        c.group = Group::Channel;
                        if kind == Kind::Activation {
                            let n = &mut act_groups[k as usize][method as usize];
                            *n += 1;
                            if *n % 2 == 1 {
                                c.group = Group::Batch;
                            }
                        }
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
                    if c.group != Group::Tensor && c.method != Method::None {
                        set.insert(format!("group {:?} {:?}", c.group, c.method));
                        if c.is_real() {
                            set.insert("group real".to_string());
                        }
                    }
                    if c.is_real() {
                        set.insert(format!("real {:?}", c.method));
                        real_layers.insert(layer.clone());
                        if c.rounding == Rounding::Tflite {
                            set.insert("real Tflite".to_string());
                        }
                        if c.method == Method::Auto && c.range == RangeMethod::Running {
                            set.insert("real Auto Running".to_string());
                        }
                    }
                    if c.method != Method::None {
                        set.insert(format!("bits {}", c.bits));
                        set.insert(format!("{:?}", c.rounding));
                        set.insert(format!("{:?}", c.range));
                        set.insert(format!("{:?}", c.clamp));
                    }
                    if c.zero_point != 0 {
                        set.insert(format!("zero_point {:?}", c.method));
                    }
                    if c.method == Method::Auto {
                        set.insert(format!("Auto {:?}", c.range));
                        if c.range == RangeMethod::Running {
                            set.insert(format!("Auto Running ema {}", c.ema != 0));
                        }
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
        if running != RangeMethod::Running {
            break;
        }
        let mut want: Vec<String> = (2..=16).map(|b| format!("bits {b}")).collect();
        want.extend(METHODS.iter().map(|m| format!("{m:?}")));
        want.extend(RANGES.iter().map(|m| format!("{m:?}")));
        want.extend(RANGES.iter().map(|m| format!("Auto {m:?}")));
        want.extend([false, true].map(|e| format!("Auto Running ema {e}")));
        want.extend(ROUNDINGS.iter().map(|m| format!("{m:?}")));
        want.extend(["real Auto".to_string(), "real Fixed".to_string()]);
        want.push("real Tflite".to_string());
        want.push("real Auto Running".to_string());
        want.extend([Clamp::Hardware, Clamp::Nics].map(|c| format!("{c:?}")));
        for g in [Group::Channel, Group::Batch] {
            want.extend([Method::Auto, Method::Fixed].map(|m| format!("group {g:?} {m:?}")));
        }
        want.push("group real".to_string());
        want.extend(["zero_point Fixed", "Auto MinMax"].map(String::from));
        let missing: Vec<&String> = want.iter().filter(|w| !set.contains(*w)).collect();
        assert!(
            missing.is_empty(),
            "{}: {what} configs never use {missing:?}",
            C::NAME
        );
    }
    assert_eq!(
        real_layers,
        layers,
        "{}: layers never given a real-valued scale",
        C::NAME
    );
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

/// `packed`: a small CNN with 4-bit convolution weights, 2-bit fc1 and
/// 3-bit fc2 weights (every code of each width occurs), packed with
/// `fixnn::quant::packed::pack`; two runs cover both arithmetic paths of
/// each packed layer: run 0 a quantized input (integer convolution and
/// fc1), fc1's output at full precision (f32 fc2); run 1 an f32 input (f32
/// convolution), integer fc1 and fc2, every output rounding mode.
pub fn packed_blob() -> Vec<u8> {
    use fixnn::quant::packed::{pack, packed_len};
    use fixnn::Format;
    use fixnn_cases::packed::{write_blob, LayerSpec, RunSpec, B, BIASES, INPUT, WEIGHTS};
    let s = Stream::new(9, 700, 0);
    let mut at = 0u32;
    let mut next = |n: u32| {
        at += 1;
        s.draw(at) % n
    };
    let bits = [4u8, 2, 3];
    let wfmt = [(4, 0), (2, -1), (3, -1)].map(|(b, s)| Format::new(b, s).unwrap());
    let bfmt = [(8, 0), (8, 1), (8, 2)].map(|(b, s)| Format::new(b, s).unwrap());
    let mut packed = Vec::new();
    let mut biases = Vec::new();
    for i in 0..3 {
        let span = 1u32 << bits[i];
        // Every code of the width first, then random ones symmetric about
        // zero (the most negative code is rare: a mean of zero keeps the
        // ReLUs' outputs varied).
        let codes: Vec<i8> = (0..WEIGHTS[i] as u32)
            .map(|k| {
                if k < span {
                    (k as i32 - (span / 2) as i32) as i8
                } else {
                    (next(span - 1) as i32 - (span / 2 - 1) as i32) as i8
                }
            })
            .collect();
        for c in -(span as i32 / 2)..span as i32 / 2 {
            assert!(codes.contains(&(c as i8)), "layer {i}: code {c} unused");
        }
        let mut b = vec![0u8; packed_len(bits[i], codes.len()).unwrap()];
        pack(&codes, bits[i], &mut b).unwrap();
        packed.push(b);
        biases.push(
            (0..BIASES[i])
                .map(|_| (next(256) as i32 - 128) as i8)
                .collect::<Vec<i8>>(),
        );
    }
    let layers: [LayerSpec<'_>; 3] =
        std::array::from_fn(|i| (wfmt[i], &packed[i][..], bfmt[i], &biases[i][..]));
    let in_fmt = Format::new(8, 2).unwrap();
    let codes: Vec<u8> = (0..B * INPUT).map(|_| next(256) as u8).collect();
    let floats: Vec<u8> = (0..B * INPUT)
        .flat_map(|_| (4.0 * (uniform(&s, 10_000 + next(1 << 20)) - 0.5)).to_le_bytes())
        .collect();
    // (method, bits, scale, rounding): rounding 0 even, 1 away, 2 floor, 3 stochastic.
    let runs: [RunSpec<'_>; 2] = [
        (
            11,
            [[1, 8, 3, 0], [0, 0, 0, 0], [1, 8, 5, 3]],
            Some(in_fmt),
            &codes,
        ),
        (
            12,
            [[1, 6, 2, 1], [1, 8, 4, 2], [0, 0, 0, 0]],
            None,
            &floats,
        ),
    ];
    let mut out = Vec::new();
    write_blob(&layers, &runs, &mut |b: &[u8]| out.extend_from_slice(b));
    out
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
        CaseBlob {
            name: "packed",
            blob: packed_blob(),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device comparison sees the running state: the mix cases with
    /// the running range report other scales and values than the same
    /// cases with Max in its place.
    #[test]
    fn the_running_state_changes_what_the_mix_cases_report() {
        let cases = [
            (
                "mixconv",
                mix_blob::<MixConv>(),
                mix_blob_with::<MixConv>(RangeMethod::Max),
            ),
            (
                "mixdense",
                mix_blob::<MixDense>(),
                mix_blob_with::<MixDense>(RangeMethod::Max),
            ),
        ];
        for (name, running, max) in cases {
            let a = expected(name, &running).unwrap();
            let b = expected(name, &max).unwrap();
            assert_eq!(a.lines.len(), b.lines.len(), "{name}");
            let differ = a.lines.iter().zip(&b.lines).filter(|(x, y)| x != y).count();
            assert!(differ > 0, "{name}: the running range changed nothing");
            println!("{name}: {differ} of {} records differ", a.lines.len());
        }
    }

    /// The DSP kernels' backend (portable Rust; SMLAD on the M4/M7) run on
    /// the host reports every record of the mix cases as the rayon backend
    /// does: a fault in the tile kernels shows here with a Rust panic
    /// instead of a device hard fault.
    #[test]
    fn dsp_backend_on_the_host_matches_the_rayon_backend() {
        use fixnn::kernels::DspBackend;
        for name in ["mixconv", "mixdense"] {
            let blob = match name {
                "mixconv" => mix_blob::<MixConv>(),
                _ => mix_blob::<MixDense>(),
            };
            let want = expected(name, &blob).unwrap();
            let got = big_stack(|| {
                let mut scratch = vec![0u32; 64 * 1024];
                let bk = DspBackend::new(&mut scratch);
                let mut r = Report::default();
                let res = match name {
                    "mixconv" => fixnn_cases::run::<MixConv, _, MIX_B, CLASSES>(
                        &bk,
                        &blob,
                        Want::All,
                        &mut r,
                    ),
                    _ => fixnn_cases::run::<MixDense, _, MIX_B, CLASSES>(
                        &bk,
                        &blob,
                        Want::All,
                        &mut r,
                    ),
                };
                assert!(bk.fast_calls() > 0, "{name}: no packed-tile call");
                res.map(|()| r)
            })
            .unwrap();
            assert_eq!(got.lines, want.lines, "{name}");
            assert_eq!(got.values, want.values, "{name}");
        }
    }
}

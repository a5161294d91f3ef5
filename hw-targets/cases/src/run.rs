//! The run loop shared by desktop and device, and the records it reports.

use core::fmt::{self, Write};
use core::mem::MaybeUninit;

use core::hash::{Hash, Hasher};
use fixnn::backend::Backend;
use fixnn::layers::{softmax_cross_entropy, Layer};

use fixnn::model::{walk, with_overrides, ConfigEntry, Kind, Override, SavedConfigs, Select};
use fixnn::tensor::{Ctx, SatStats, Shape, Tensor, S2};
use fixnn::{Clamp, Format, Method, QuantConfig, RangeMethod, Rounding};

use crate::blob::{Blob, BlobError, RunSpec};

/// Receives a named input gradient: name, values, format.
pub type GradFn<'a> = dyn FnMut(&'static str, &[f32], Option<Format>) + 'a;

/// A model that can be a device case: `B` samples of `K` classes.
pub trait Case<const B: usize, const K: usize>: Layer<Out = S2<B, K>> + Sized {
    /// The case's name (also the firmware binary's name and the blob's name).
    const NAME: &'static str;

    /// Build a fresh model (zero parameters, every config `None`) in
    /// `slot`, one layer at a time, and return it. (Returning a model by
    /// value costs one or two copies of it on the stack, which the
    /// micro:bit cannot afford.)
    ///
    /// # Errors
    ///
    /// A layer geometry fixnn refuses (a bug in the case).
    fn build_in(slot: &mut MaybeUninit<Self>) -> fixnn::Result<&mut Self>;

    /// Initialise the parameters from `seed`, in place.
    fn init(&mut self, seed: u64);

    /// The gradients with respect to each layer's input that the backward
    /// pass computes (every layer after the first), with their names, in
    /// layer order.
    fn input_grads(&self, f: &mut GradFn<'_>);
}

/// Where in a step a record was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// After the forward pass and the loss: activations, quantized
    /// parameters, buffers, the loss.
    Forward,
    /// After the backward pass: parameter gradients, input gradients.
    Backward,
    /// After the optimizer step: master values and momentum.
    Update,
    /// After the eval-mode forward pass that ends a run.
    Eval,
    /// After the training-mode forward pass with per-call config overrides
    /// that follows it ([`override_pass`]).
    Override,
}

impl Phase {
    /// One-letter code used in lines.
    pub const fn code(self) -> char {
        match self {
            Phase::Forward => 'F',
            Phase::Backward => 'B',
            Phase::Update => 'U',
            Phase::Eval => 'E',
            Phase::Override => 'O',
        }
    }
}

/// Which values of a tensor a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The values the passes use: an activation, a parameter's quantized
    /// copy, a buffer. Carries the saturation counters.
    Value,
    /// A parameter's master values.
    Master,
    /// A parameter's momentum.
    Momentum,
    /// A parameter's gradient.
    Grad,
    /// A layer's input gradient.
    InputGrad,
    /// `[loss, correct]` of the step.
    Loss,
}

impl Part {
    /// Name used in lines.
    pub const fn name(self) -> &'static str {
        match self {
            Part::Value => "value",
            Part::Master => "master",
            Part::Momentum => "momentum",
            Part::Grad => "grad",
            Part::InputGrad => "dx",
            Part::Loss => "loss",
        }
    }
}

/// One reported tensor.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Run index in the blob.
    pub run: u32,
    /// Training step (the last step for [`Phase::Eval`], the number of
    /// steps for [`Phase::Override`]).
    pub step: u32,
    /// Phase of the step.
    pub phase: Phase,
    /// Dotted tensor path.
    pub name: &'a str,
    /// Which values.
    pub part: Part,
    /// The values.
    pub values: &'a [f32],
    /// Their format (`None`: full precision).
    pub fmt: Option<Format>,
    /// Saturation counters ([`Part::Value`] only; zero otherwise).
    pub sat: SatStats,
}

/// What a sink wants besides the records' lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Every record.
    All,
    /// Only run `n` (the others are skipped entirely).
    Run(u32),
}

/// Receives the records of a run, in a fixed order.
pub trait Sink {
    /// One record.
    fn record(&mut self, r: &Record<'_>);
    /// Run `run` stopped at `step` with this error (the next run follows).
    fn error(&mut self, run: u32, step: u32, e: &CaseError);
    /// The run reached point `what` (`"build"`, `"configs"`, `"forward"`,
    /// `"backward"`, `"update"`): a device measures its stack here.
    fn mark(&mut self, _what: &'static str) {}
}

/// Why a run stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseError {
    /// The blob is malformed or for another case.
    Blob(BlobError),
    /// A config entry is not valid JSON for a `ConfigEntry` (what the
    /// reader found wrong, with the field and byte offset).
    ConfigJson(fixnn::model::ReadError),
    /// A config entry names no tensor of the model.
    UnknownTensor,
    /// A config entry's kind differs from the model tensor's.
    KindMismatch,
    /// The config tree does not cover every tensor of the model.
    ConfigCount {
        /// Entries in the tree.
        entries: u16,
        /// Tensors in the model.
        tensors: u16,
    },
    /// fixnn refused a pass.
    Fixnn(fixnn::Error),
    /// fixnn refused the per-call overrides.
    Override(fixnn::model::OverrideError),
    /// A config differed after a pass with per-call overrides.
    NotRestored,
}

impl From<BlobError> for CaseError {
    fn from(e: BlobError) -> Self {
        CaseError::Blob(e)
    }
}

impl From<fixnn::Error> for CaseError {
    fn from(e: fixnn::Error) -> Self {
        CaseError::Fixnn(e)
    }
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The hash of a record's content: FNV-1a 64 over the length, the bits of
/// every value, the format and the saturation counters (little-endian).
pub fn hash_record(r: &Record<'_>) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.bytes(&(r.values.len() as u32).to_le_bytes());
    for v in r.values {
        h.bytes(&v.to_bits().to_le_bytes());
    }
    match r.fmt {
        Some(f) => h.bytes(&[1, f.bits(), f.scale() as u8]),
        None => h.bytes(&[0, 0, 0]),
    }
    // nics_fix_pt's clamp adds a byte (hashes of other records as before).
    if r.fmt.is_some_and(|f| f.clamp() == Clamp::Nics) {
        h.bytes(b"n");
    }
    // So does a zero point (formats without one hash as before).
    if let Some(f) = r.fmt.filter(|f| f.zero_point() != 0) {
        h.bytes(b"z");
        h.bytes(&f.zero_point().to_le_bytes());
    }
    for c in [r.sat.data, r.sat.data_total, r.sat.grad, r.sat.grad_total] {
        h.bytes(&c.to_le_bytes());
    }
    h.0
}

/// The line that stands for a record:
/// `R <run> <step> <phase> <name> <part> <len> <fmt> <hash>` with `fmt`
/// `b<bits>s<scale>` (`b<bits>s<scale>n` with nics_fix_pt's clamp,
/// `b<bits>s<scale>z<zero point>` with a zero point) or `none` and the
/// hash in 16 hex digits.
///
/// # Errors
///
/// Those of the writer.
pub fn write_line(w: &mut dyn Write, r: &Record<'_>) -> fmt::Result {
    write!(
        w,
        "R {} {} {} {} {} {} ",
        r.run,
        r.step,
        r.phase.code(),
        r.name,
        r.part.name(),
        r.values.len()
    )?;
    match r.fmt {
        Some(f) if f.clamp() == Clamp::Nics => write!(w, "b{}s{}n", f.bits(), f.scale())?,
        Some(f) if f.zero_point() != 0 => {
            write!(w, "b{}s{}z{}", f.bits(), f.scale(), f.zero_point())?
        }
        Some(f) => write!(w, "b{}s{}", f.bits(), f.scale())?,
        None => w.write_str("none")?,
    }
    writeln!(w, " {:016x}", hash_record(r))
}

/// The line that reports a run stopped by an error:
/// `X <run> <step> <error as Debug>`.
///
/// # Errors
///
/// Those of the writer.
pub fn write_error_line(w: &mut dyn Write, run: u32, step: u32, e: &CaseError) -> fmt::Result {
    writeln!(w, "X {run} {step} {e:?}")
}

/// Report every tensor of `net` for `phase`.
fn report<L: Layer>(net: &mut L, run: u32, step: u32, phase: Phase, sink: &mut dyn Sink) {
    walk(net, &mut |name, t| {
        let rec = |part, values, fmt, sat| Record {
            run,
            step,
            phase,
            name,
            part,
            values,
            fmt,
            sat,
        };
        let none = SatStats::default();
        match phase {
            Phase::Forward | Phase::Eval | Phase::Override => {
                if phase != Phase::Eval || t.kind != Kind::Param {
                    sink.record(&rec(Part::Value, t.values, *t.fmt, t.quant.stats));
                }
            }
            Phase::Backward => {
                if let Some(p) = &t.param {
                    sink.record(&rec(Part::Grad, p.grad, None, none));
                }
            }
            Phase::Update => {
                if let Some(p) = t.param {
                    sink.record(&rec(Part::Master, p.master, None, none));
                    sink.record(&rec(Part::Momentum, p.momentum, None, none));
                }
            }
        }
    });
}

/// Apply the run's config entries one at a time: each a small JSON
/// document parsed on the stack, validated, and set on the tensor it names.
/// The entries must cover every tensor of the model.
#[inline(never)]
fn apply_run_configs<L: Layer>(net: &mut L, spec: &RunSpec<'_>) -> Result<(), CaseError> {
    let mut tensors = 0u16;
    walk(net, &mut |_, _| tensors = tensors.saturating_add(1));
    if spec.entries != tensors {
        return Err(CaseError::ConfigCount {
            entries: spec.entries,
            tensors,
        });
    }
    for json in spec.config_entries() {
        let e = ConfigEntry::from_json(json?).map_err(CaseError::ConfigJson)?;
        e.data.validate()?;
        e.grad.validate()?;
        let (mut found, mut same_kind) = (false, false);
        walk(net, &mut |name, t| {
            if name == e.name.as_str() {
                found = true;
                same_kind = t.kind == e.kind;
                if same_kind {
                    t.quant.cfg = e.data;
                    t.quant.grad_cfg = e.grad;
                }
            }
        });
        match (found, same_kind) {
            (false, _) => return Err(CaseError::UnknownTensor),
            (true, false) => return Err(CaseError::KindMismatch),
            (true, true) => {}
        }
    }
    Ok(())
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.bytes(bytes);
    }
}

/// A hash of the data and grad configs of the tensors the override pass
/// selects (the others update their Auto scales as in any training pass).
fn config_hash<L: Layer>(net: &mut L) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    walk(net, &mut |name, t| {
        if t.layer_type == "Linear" || name == "relu.output" {
            name.hash(&mut h);
            t.quant.cfg.hash(&mut h);
            t.quant.grad_cfg.hash(&mut h);
        }
    });
    h.0
}

/// Slots for the configs the override pass saves: the Linear layers'
/// tensors (at most 6 in a case) and `relu.output`.
const OVERRIDE_SLOTS: usize = 8;

/// One training-mode forward pass (step `spec.steps`) with per-call
/// overrides (nics_fix_pt's `kwarg_cfg`), rotated by run `index`: every
/// tensor of the `Linear` layers (by type) gets an Auto data config (4 to
/// 14 bits, range method and rounding rotating, nics_fix_pt's clamp on even
/// runs), and `relu` (by name: `relu.output`) a Fixed 5-bit one with
/// nics_fix_pt's clamp. Auto chooses scales during the pass; afterwards
/// the configs of these tensors must be as before (else
/// [`CaseError::NotRestored`]), while the other tensors' Auto scales update
/// as in any training-mode pass.
/// Reported as [`Phase::Override`].
#[inline(never)]
fn override_pass<L: Layer, Bk: Backend>(
    bk: &Bk,
    net: &mut L,
    index: u32,
    spec: &RunSpec<'_>,
    x: &Tensor<L::In>,
    sink: &mut dyn Sink,
) -> Result<(), CaseError> {
    const RANGES: [RangeMethod; 4] = [
        RangeMethod::Sweep,
        RangeMethod::Max,
        RangeMethod::ThreeSigma,
        RangeMethod::MaxTenPercent,
    ];
    const ROUNDINGS: [Rounding; 4] = [
        Rounding::Stochastic,
        Rounding::NearestEven,
        Rounding::Floor,
        Rounding::NearestAway,
    ];
    let linear = QuantConfig {
        method: Method::Auto,
        bits: 4 + (index % 6) as u8 * 2,
        range: RANGES[(index % 4) as usize],
        rounding: ROUNDINGS[(index % 4) as usize],
        clamp: if index.is_multiple_of(2) {
            Clamp::Nics
        } else {
            Clamp::Hardware
        },
        ..QuantConfig::NONE
    };
    let relu = QuantConfig {
        rounding: Rounding::NearestAway,
        clamp: Clamp::Nics,
        ..QuantConfig::fixed(5, 1)
    };
    let overrides = [
        Override::data(Select::Type("Linear"), linear),
        Override::data(Select::Name("relu"), relu),
    ];
    let before = config_hash(net);
    let mut saved = [SavedConfigs::default(); OVERRIDE_SLOTS];
    let ctx = Ctx::train(spec.seed, spec.steps);
    with_overrides(net, &overrides, &mut saved, |net| net.forward(bk, &ctx, x))
        .map_err(CaseError::Override)??;
    sink.mark("override");
    report(net, index, spec.steps, Phase::Override, sink);
    if config_hash(net) != before {
        return Err(CaseError::NotRestored);
    }
    Ok(())
}

/// Copy step `step`'s input into `x` (full precision) and its labels.
fn load_step<S: Shape, const B: usize>(
    spec: &RunSpec<'_>,
    step: u32,
    x: &mut Tensor<S>,
    labels: &mut [usize; B],
) {
    let n = S::LEN;
    let base = step as usize * n * 4;
    for (i, v) in x.flat_mut().iter_mut().enumerate() {
        let o = base + i * 4;
        let mut b = [0u8; 4];
        b.copy_from_slice(&spec.inputs[o..o + 4]);
        *v = f32::from_le_bytes(b);
    }
    x.fmt = None;
    let lb = step as usize * B;
    for (l, &v) in labels.iter_mut().zip(&spec.labels[lb..lb + B]) {
        *l = v as usize;
    }
}

/// Train one run and report it.
fn one_run<C: Case<B, K>, Bk: Backend, const B: usize, const K: usize>(
    bk: &Bk,
    index: u32,
    spec: &RunSpec<'_>,
    sink: &mut dyn Sink,
) -> Result<(), (u32, CaseError)> {
    if spec.input_len as usize != <C::In as Shape>::LEN || spec.batch as usize != B {
        return Err((0, CaseError::Blob(BlobError::WrongShape)));
    }
    sink.mark("start");
    let mut slot = MaybeUninit::<C>::uninit();
    let net = C::build_in(&mut slot).map_err(|e| (0, CaseError::Fixnn(e)))?;
    net.init(spec.seed);
    sink.mark("build");
    apply_run_configs(net, spec).map_err(|e| (0, e))?;
    sink.mark("configs");
    train::<C, Bk, B, K>(bk, net, index, spec, sink)
}

/// The training steps, the eval pass and the override pass of one run.
/// (Not inlined, so that its buffers and temporaries are not on the stack
/// while the model is built: the micro:bit's peak.)
#[inline(never)]
fn train<C: Case<B, K>, Bk: Backend, const B: usize, const K: usize>(
    bk: &Bk,
    net: &mut C,
    index: u32,
    spec: &RunSpec<'_>,
    sink: &mut dyn Sink,
) -> Result<(), (u32, CaseError)> {
    let mut x = Tensor::<C::In>::zeros();
    let mut dlogits = Tensor::<S2<B, K>>::zeros();
    let mut labels = [0usize; B];
    for step in 0..spec.steps {
        let at = |e: fixnn::Error| (step, CaseError::Fixnn(e));
        load_step(spec, step, &mut x, &mut labels);
        let ctx = Ctx::train(spec.seed, step);
        net.forward(bk, &ctx, &x).map_err(at)?;
        let loss = softmax_cross_entropy(net.output(), &labels, &mut dlogits).map_err(at)?;
        sink.mark("forward");
        report(net, index, step, Phase::Forward, sink);
        let values = [loss.loss, loss.correct as f32];
        sink.record(&Record {
            run: index,
            step,
            phase: Phase::Forward,
            name: "loss",
            part: Part::Loss,
            values: &values,
            fmt: None,
            sat: SatStats::default(),
        });
        net.backward(bk, &ctx, &x, &mut dlogits, false)
            .map_err(at)?;
        sink.mark("backward");
        report(net, index, step, Phase::Backward, sink);
        net.input_grads(&mut |name, values, fmt| {
            sink.record(&Record {
                run: index,
                step,
                phase: Phase::Backward,
                name,
                part: Part::InputGrad,
                values,
                fmt,
                sat: SatStats::default(),
            })
        });
        spec.sgd.step(&ctx, net).map_err(at)?;
        sink.mark("update");
        report(net, index, step, Phase::Update, sink);
    }
    if spec.eval && spec.steps > 0 {
        let last = spec.steps - 1;
        net.forward(bk, &Ctx::eval(spec.seed), &x)
            .map_err(|e| (last, CaseError::Fixnn(e)))?;
        report(net, index, last, Phase::Eval, sink);
        override_pass(bk, net, index, spec, &x, sink).map_err(|e| (spec.steps, e))?;
    }
    Ok(())
}

/// Run the blob's runs on model `C` with backend `bk`, reporting to
/// `sink`. A run that fails is reported through [`Sink::error`] and the
/// next run follows.
///
/// # Errors
///
/// A blob that is malformed or names another case (nothing has run then,
/// or the runs before the malformed one have).
pub fn run<C: Case<B, K>, Bk: Backend, const B: usize, const K: usize>(
    bk: &Bk,
    blob: &[u8],
    want: Want,
    sink: &mut dyn Sink,
) -> Result<(), CaseError> {
    let mut b = Blob::parse(blob)?;
    if b.name != C::NAME {
        return Err(CaseError::Blob(BlobError::WrongCase));
    }
    let mut index = 0;
    while let Some(spec) = b.next_run()? {
        if want == Want::All || want == Want::Run(index) {
            if let Err((step, e)) = one_run::<C, Bk, B, K>(bk, index, &spec, sink) {
                sink.error(index, step, &e);
            }
        }
        index += 1;
    }
    Ok(())
}

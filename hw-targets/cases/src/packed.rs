//! Device case `packed`: inference from weights stored packed in flash.
//!
//! A small CNN, batch [`B`]: `[B][1][8][8]` input, a 3x3 convolution to 4
//! channels (stride 2, padding 1, **4-bit** weights), ReLU, flatten to 64,
//! a 64 -> 64 linear layer (**2-bit** weights), ReLU, a 64 -> 3 linear
//! layer (**3-bit** weights); 8-bit biases. The blob, written by the
//! desktop, holds the weights packed as `fixnn::quant::packed` lays them
//! out; the firmware `include_bytes!`-es it, so the packed weights stay in
//! flash and [`run_packed`] computes from them directly
//! ([`PackedConv2d`], [`PackedLinear`]). The desktop runs the same blob
//! through [`run_unpacked`]: the weights unpacked into ordinary
//! [`Conv2d`] and [`Linear`] layers (f32 codes, the training layers), on
//! any backend. Both report every layer's output as [`Phase::Eval`]
//! records of step 0, so the suite compares them bit for bit.
//!
//! # Blob (little-endian)
//!
//! ```text
//! magic "FXNNPACK"  version u32 (= VERSION)
//! 3 layers (conv, fc1, fc2), each:
//!   bits u8 (2..=4)  scale i8  count u32  packed weight bytes (ceil(count / per byte))
//!   bias bits u8 (2..=8)  bias scale i8  bias count u32  bias codes i8 * count
//! runs u32, per run:
//!   seed u64
//!   3 output configs (conv, fc1, fc2): method u8 (0 none, 1 fixed)  bits u8  scale i8
//!                                     rounding u8 (0 nearest-even, 1 nearest-away, 2 floor, 3 stochastic)
//!   input bits u8 (0: f32 values)  input scale i8
//!   B * 64 inputs: i8 codes, or f32 when input bits is 0
//! ```

use core::mem::MaybeUninit;

use fixnn::backend::{Backend, ConvGeom, Operand, RefBackend};
use fixnn::layers::{Conv2d, Flatten, Layer, Linear, PackedConv2d, PackedLinear, Relu};
use fixnn::quant::packed::{packed_len, unpack, PackedCodes};
use fixnn::quant::{QuantConfig, Rounding};
use fixnn::tensor::{Ctx, SatStats, Tensor, S2, S4};
use fixnn::Format;

use crate::blob::{BlobError, Reader};
use crate::run::{CaseError, Part, Phase, Record, Sink};

/// First 8 bytes of a packed-case blob.
pub const MAGIC: &[u8; 8] = b"FXNNPACK";
/// The layout version.
pub const VERSION: u32 = 1;
/// Batch size.
pub const B: usize = 2;
/// Input elements per sample (`1 x 8 x 8`).
pub const INPUT: usize = 64;
/// Hidden features (`4 x 4 x 4` after the convolution, and fc1's output).
pub const HIDDEN: usize = 64;
/// Classes.
pub const CLASSES: usize = 3;
/// Weight element counts of conv, fc1, fc2.
pub const WEIGHTS: [usize; 3] = [4 * 9, HIDDEN * HIDDEN, CLASSES * HIDDEN];
/// Bias element counts of conv, fc1, fc2.
pub const BIASES: [usize; 3] = [4, HIDDEN, CLASSES];

/// The convolution's geometry.
pub const CONV: ConvGeom = ConvGeom {
    batch: B,
    cin: 1,
    h: 8,
    w: 8,
    cout: 4,
    kh: 3,
    kw: 3,
    oh: 4,
    ow: 4,
    stride: (2, 2),
    pad: (1, 1),
    dil: (1, 1),
    groups: 1,
};

/// Names of the reported tensors, in order.
pub const NAMES: [&str; 5] = [
    "conv.output",
    "relu1.output",
    "fc1.output",
    "relu2.output",
    "fc2.output",
];

/// One layer's weights and bias as the blob holds them.
#[derive(Clone, Copy, Debug)]
pub struct LayerBlob<'a> {
    /// Packed weight codes (validated).
    pub weight: PackedCodes<'a>,
    /// Bias format.
    pub bias_fmt: Format,
    /// Bias codes, one `i8` each.
    pub bias: &'a [u8],
}

/// One run: a seed, the output configs and the input.
#[derive(Clone, Copy, Debug)]
pub struct RunBlob<'a> {
    /// Seed of the eval context (stochastic rounding).
    pub seed: u64,
    /// Output configs of conv, fc1, fc2.
    pub out: [QuantConfig; 3],
    /// Input format (`None`: f32 values).
    pub input_fmt: Option<Format>,
    /// Input bytes (`B * 64` i8 codes or f32 values).
    pub input: &'a [u8],
}

/// A parsed blob: the three layers, then the runs ([`PackedBlob::next_run`]).
pub struct PackedBlob<'a> {
    /// conv, fc1, fc2.
    pub layers: [LayerBlob<'a>; 3],
    runs: u32,
    r: Reader<'a>,
}

fn bad(_: fixnn::Error) -> CaseError {
    CaseError::Blob(BlobError::WrongShape)
}

impl<'a> PackedBlob<'a> {
    /// Parse the header and the layers, checking every length and packed field.
    ///
    /// # Errors
    ///
    /// [`CaseError::Blob`] for a malformed blob.
    pub fn parse(b: &'a [u8]) -> Result<Self, CaseError> {
        let mut r = Reader::new(b);
        if r.bytes(8)? != MAGIC || r.u32()? != VERSION {
            return Err(BlobError::BadHeader.into());
        }
        let mut layer = |i: usize| -> Result<LayerBlob<'a>, CaseError> {
            let (bits, scale) = (r.u8()?, r.u8()? as i8);
            let count = r.u32()? as usize;
            if count != WEIGHTS[i] {
                return Err(BlobError::WrongShape.into());
            }
            let fmt = Format::new(bits, scale).map_err(bad)?;
            let n = packed_len(bits, count).map_err(bad)?;
            let weight = PackedCodes::new(r.bytes(n)?, fmt, count).map_err(bad)?;
            let (bb, bs) = (r.u8()?, r.u8()? as i8);
            let bias_fmt = Format::new(bb, bs).map_err(bad)?;
            if bb > 8 || r.u32()? as usize != BIASES[i] {
                return Err(BlobError::WrongShape.into());
            }
            let bias = r.bytes(BIASES[i])?;
            Ok(LayerBlob {
                weight,
                bias_fmt,
                bias,
            })
        };
        let layers = [layer(0)?, layer(1)?, layer(2)?];
        let runs = r.u32()?;
        Ok(PackedBlob { layers, runs, r })
    }

    /// Bytes the weights take packed, and as one `i8` per code.
    pub fn weight_bytes(&self) -> (usize, usize) {
        let packed = self.layers.iter().map(|l| l.weight.bytes().len()).sum();
        (packed, WEIGHTS.iter().sum())
    }

    /// The next run, `None` after the last.
    ///
    /// # Errors
    ///
    /// [`CaseError::Blob`] for a malformed run or trailing bytes.
    pub fn next_run(&mut self) -> Result<Option<RunBlob<'a>>, CaseError> {
        if self.runs == 0 {
            if self.r.remaining() != 0 {
                return Err(BlobError::TrailingBytes.into());
            }
            return Ok(None);
        }
        self.runs -= 1;
        let r = &mut self.r;
        let seed = r.u64()?;
        let mut out = [QuantConfig::NONE; 3];
        for o in &mut out {
            let (method, bits, scale, rounding) = (r.u8()?, r.u8()?, r.u8()? as i8, r.u8()?);
            let rounding = match rounding {
                0 => Rounding::NearestEven,
                1 => Rounding::NearestAway,
                2 => Rounding::Floor,
                3 => Rounding::Stochastic,
                _ => return Err(BlobError::WrongShape.into()),
            };
            *o = match method {
                0 => QuantConfig::NONE,
                1 => QuantConfig {
                    rounding,
                    ..QuantConfig::fixed(bits, scale)
                },
                _ => return Err(BlobError::WrongShape.into()),
            };
            o.validate()?;
        }
        let (ib, is) = (r.u8()?, r.u8()? as i8);
        let input_fmt = match ib {
            0 => None,
            1..=8 => Some(Format::new(ib, is).map_err(bad)?),
            _ => return Err(BlobError::WrongShape.into()),
        };
        let per = if input_fmt.is_some() { 1 } else { 4 };
        let input = r.bytes(B * INPUT * per)?;
        Ok(Some(RunBlob {
            seed,
            out,
            input_fmt,
            input,
        }))
    }
}

/// One layer for [`write_blob`]: weight format, packed weight bytes, bias
/// format, bias codes.
pub type LayerSpec<'a> = (Format, &'a [u8], Format, &'a [i8]);

/// One run for [`write_blob`]: seed, output configs of conv, fc1 and fc2
/// as `[method, bits, scale, rounding]` bytes (as in the blob), input
/// format (`None`: f32), input bytes.
pub type RunSpec<'a> = (u64, [[u8; 4]; 3], Option<Format>, &'a [u8]);

/// Write a blob (layout in the module docs).
pub fn write_blob(layers: &[LayerSpec<'_>; 3], runs: &[RunSpec<'_>], w: &mut dyn FnMut(&[u8])) {
    w(MAGIC);
    w(&VERSION.to_le_bytes());
    for (i, (wf, bytes, bf, bias)) in layers.iter().enumerate() {
        w(&[wf.bits(), wf.scale() as u8]);
        w(&(WEIGHTS[i] as u32).to_le_bytes());
        w(bytes);
        w(&[bf.bits(), bf.scale() as u8]);
        w(&(bias.len() as u32).to_le_bytes());
        for &c in bias.iter() {
            w(&[c as u8]);
        }
    }
    w(&(runs.len() as u32).to_le_bytes());
    for (seed, cfgs, fmt, input) in runs {
        w(&seed.to_le_bytes());
        for c in cfgs {
            w(c);
        }
        match fmt {
            Some(f) => w(&[f.bits(), f.scale() as u8]),
            None => w(&[0, 0]),
        }
        w(input);
    }
}

/// The run's input as values (codes times the step, or f32).
fn load_input(run: &RunBlob<'_>, x: &mut [f32]) {
    match run.input_fmt {
        Some(f) => {
            for (v, &c) in x.iter_mut().zip(run.input) {
                *v = f.to_f32(c as i8 as i32);
            }
        }
        None => {
            for (v, c) in x.iter_mut().zip(run.input.chunks_exact(4)) {
                *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// Bias values of a layer.
fn load_bias(l: &LayerBlob<'_>, b: &mut [f32]) {
    for (v, &c) in b.iter_mut().zip(l.bias) {
        *v = l.bias_fmt.to_f32(c as i8 as i32);
    }
}

fn record(sink: &mut dyn Sink, run: u32, i: usize, t: (&[f32], Option<Format>), sat: SatStats) {
    sink.record(&Record {
        run,
        step: 0,
        phase: Phase::Eval,
        name: NAMES[i],
        part: Part::Value,
        values: t.0,
        fmt: t.1,
        sat,
    });
}

/// The packed layers of the case, built from a blob.
pub struct PackedNet<'w> {
    conv: PackedConv2d<'w, 4, 4, 4, B>,
    relu1: Relu<S4<B, 4, 4, 4>>,
    fc1: PackedLinear<'w, HIDDEN, HIDDEN, B>,
    relu2: Relu<S2<B, HIDDEN>>,
    fc2: PackedLinear<'w, HIDDEN, CLASSES, B>,
}

impl<'w> PackedNet<'w> {
    /// The layers reading the blob's packed weights (tensor ids 0 to 4),
    /// built in `slot` one layer at a time (a micro:bit cannot afford a
    /// second copy of the model on its stack).
    ///
    /// # Errors
    ///
    /// A layer refuses its weights (a bug in the case).
    pub fn build_in<'s>(
        slot: &'s mut MaybeUninit<Self>,
        p: &PackedBlob<'w>,
    ) -> fixnn::Result<&'s mut Self> {
        let [c, f1, f2] = &p.layers;
        let net = in_place!(
            slot,
            PackedNet {
                conv: PackedConv2d::new(0, CONV, c.weight)?,
                relu1: Relu::new(1),
                fc1: PackedLinear::new(2, f1.weight)?,
                relu2: Relu::new(3),
                fc2: PackedLinear::new(4, f2.weight)?,
            }
        );
        load_bias(c, net.conv.bias.flat_mut());
        net.conv.bias.fmt = Some(c.bias_fmt);
        load_bias(f1, net.fc1.bias.flat_mut());
        net.fc1.bias.fmt = Some(f1.bias_fmt);
        load_bias(f2, net.fc2.bias.flat_mut());
        net.fc2.bias.fmt = Some(f2.bias_fmt);
        Ok(net)
    }

    /// One eval-mode forward pass of `run`, reporting every output.
    ///
    /// # Errors
    ///
    /// fixnn refuses a pass.
    #[inline(never)]
    pub fn forward(
        &mut self,
        index: u32,
        run: &RunBlob<'_>,
        sink: &mut dyn Sink,
    ) -> fixnn::Result<()> {
        let ctx = Ctx::eval(run.seed);
        self.conv.out.quant.cfg = run.out[0];
        self.fc1.out.quant.cfg = run.out[1];
        self.fc2.out.quant.cfg = run.out[2];
        let mut x = [0f32; B * INPUT];
        load_input(run, &mut x);
        self.conv.forward(
            &ctx,
            Operand {
                v: &x,
                fmt: run.input_fmt,
            },
        )?;
        let t = self.conv.output();
        record(sink, index, 0, (t.flat(), t.fmt), self.conv.out.quant.stats);
        self.relu1.forward(&RefBackend, &ctx, self.conv.output())?;
        let t = self.relu1.output();
        record(
            sink,
            index,
            1,
            (t.flat(), t.fmt),
            self.relu1.out.quant.stats,
        );
        // Flatten is free: fc1 reads relu1's output in its memory order.
        self.fc1.forward(&ctx, self.relu1.output().operand())?;
        let t = self.fc1.output();
        record(sink, index, 2, (t.flat(), t.fmt), self.fc1.out.quant.stats);
        self.relu2.forward(&RefBackend, &ctx, self.fc1.output())?;
        let t = self.relu2.output();
        record(
            sink,
            index,
            3,
            (t.flat(), t.fmt),
            self.relu2.out.quant.stats,
        );
        self.fc2.forward(&ctx, self.relu2.output().operand())?;
        let t = self.fc2.output();
        record(sink, index, 4, (t.flat(), t.fmt), self.fc2.out.quant.stats);
        Ok(())
    }
}

/// Run every run of the blob from the packed weights (what the device does).
///
/// # Errors
///
/// A malformed blob; a run that fixnn refuses is reported through
/// [`Sink::error`].
pub fn run_packed(blob: &[u8], sink: &mut dyn Sink) -> Result<(), CaseError> {
    let mut p = PackedBlob::parse(blob)?;
    sink.mark("start");
    let mut slot = MaybeUninit::uninit();
    let net = PackedNet::build_in(&mut slot, &p)?;
    sink.mark("build");
    let mut index = 0;
    while let Some(run) = p.next_run()? {
        if let Err(e) = net.forward(index, &run, sink) {
            sink.error(index, 0, &CaseError::Fixnn(e));
        }
        sink.mark("forward");
        index += 1;
    }
    Ok(())
}

/// The ordinary training layers of the same network, weights unpacked.
pub struct UnpackedNet {
    conv: Conv2d<1, 4, 1, 3, 3, 8, 8, 4, 4, B>,
    relu1: Relu<S4<B, 4, 4, 4>>,
    flat: Flatten<B, 4, 4, 4, HIDDEN>,
    fc1: Linear<HIDDEN, HIDDEN, B>,
    relu2: Relu<S2<B, HIDDEN>>,
    fc2: Linear<HIDDEN, CLASSES, B>,
}

/// Set a parameter's master values to the codes `w` unpacks to and its
/// config to `Fixed` at their format, so that its quantized copy is
/// exactly those codes.
fn set_codes<const N: usize>(
    master: &mut [f32],
    cfg: &mut QuantConfig,
    fmt: Format,
    codes: &[i8; N],
) {
    for (m, &c) in master.iter_mut().zip(codes.iter()) {
        *m = fmt.to_f32(c as i32);
    }
    *cfg = QuantConfig::fixed(fmt.bits(), fmt.scale());
}

impl UnpackedNet {
    /// The layers with the blob's weights unpacked to `i8` codes and
    /// loaded as `Fixed`-config parameters (tensor ids as [`PackedNet`]).
    /// Built on the heap-free stack of the caller: about 170 KB, a desktop
    /// model.
    ///
    /// # Errors
    ///
    /// A malformed blob or a geometry fixnn refuses.
    pub fn new(p: &PackedBlob<'_>) -> Result<Self, CaseError> {
        let mut net = UnpackedNet {
            conv: Conv2d::new(0, CONV.stride, CONV.pad, CONV.dil)?,
            relu1: Relu::new(1),
            flat: Flatten::new(5),
            fc1: Linear::new(2),
            relu2: Relu::new(3),
            fc2: Linear::new(4),
        };
        let [c, f1, f2] = &p.layers;
        let mut cw = [0i8; 4 * 9];
        unpack(c.weight.bytes(), c.weight.format().bits(), &mut cw)?;
        let cm = net.conv.weight.master.as_flattened_mut();
        set_codes(
            cm.as_flattened_mut().as_flattened_mut(),
            &mut net.conv.weight.quant.cfg,
            c.weight.format(),
            &cw,
        );
        let mut w1 = [0i8; HIDDEN * HIDDEN];
        unpack(f1.weight.bytes(), f1.weight.format().bits(), &mut w1)?;
        set_codes(
            net.fc1.weight.master.as_flattened_mut(),
            &mut net.fc1.weight.quant.cfg,
            f1.weight.format(),
            &w1,
        );
        let mut w2 = [0i8; CLASSES * HIDDEN];
        unpack(f2.weight.bytes(), f2.weight.format().bits(), &mut w2)?;
        set_codes(
            net.fc2.weight.master.as_flattened_mut(),
            &mut net.fc2.weight.quant.cfg,
            f2.weight.format(),
            &w2,
        );
        for (l, (master, cfg)) in [c, f1, f2].into_iter().zip([
            (&mut net.conv.bias.master[..], &mut net.conv.bias.quant.cfg),
            (&mut net.fc1.bias.master[..], &mut net.fc1.bias.quant.cfg),
            (&mut net.fc2.bias.master[..], &mut net.fc2.bias.quant.cfg),
        ]) {
            load_bias(l, master);
            *cfg = QuantConfig::fixed(l.bias_fmt.bits(), l.bias_fmt.scale());
        }
        Ok(net)
    }

    /// One eval-mode forward pass of `run` on `bk`, reporting the records
    /// [`PackedNet::forward`] reports.
    ///
    /// # Errors
    ///
    /// fixnn refuses a pass.
    pub fn forward<Bk: Backend>(
        &mut self,
        bk: &Bk,
        index: u32,
        run: &RunBlob<'_>,
        sink: &mut dyn Sink,
    ) -> fixnn::Result<()> {
        let ctx = Ctx::eval(run.seed);
        self.conv.out.quant.cfg = run.out[0];
        self.fc1.out.quant.cfg = run.out[1];
        self.fc2.out.quant.cfg = run.out[2];
        let mut x = Tensor::<S4<B, 1, 8, 8>>::zeros();
        load_input(run, x.flat_mut());
        x.fmt = run.input_fmt;
        self.conv.forward(bk, &ctx, &x)?;
        let t = self.conv.output();
        record(sink, index, 0, (t.flat(), t.fmt), self.conv.out.quant.stats);
        self.relu1.forward(bk, &ctx, self.conv.output())?;
        let t = self.relu1.output();
        record(
            sink,
            index,
            1,
            (t.flat(), t.fmt),
            self.relu1.out.quant.stats,
        );
        self.flat.forward(bk, &ctx, self.relu1.output())?;
        self.fc1.forward(bk, &ctx, self.flat.output())?;
        let t = self.fc1.output();
        record(sink, index, 2, (t.flat(), t.fmt), self.fc1.out.quant.stats);
        self.relu2.forward(bk, &ctx, self.fc1.output())?;
        let t = self.relu2.output();
        record(
            sink,
            index,
            3,
            (t.flat(), t.fmt),
            self.relu2.out.quant.stats,
        );
        self.fc2.forward(bk, &ctx, self.relu2.output())?;
        let t = self.fc2.output();
        record(sink, index, 4, (t.flat(), t.fmt), self.fc2.out.quant.stats);
        Ok(())
    }
}

/// Run every run of the blob on the ordinary layers with the weights
/// unpacked (what the desktop compares the device with).
///
/// # Errors
///
/// As [`run_packed`].
pub fn run_unpacked<Bk: Backend>(
    bk: &Bk,
    blob: &[u8],
    sink: &mut dyn Sink,
) -> Result<(), CaseError> {
    let mut p = PackedBlob::parse(blob)?;
    let mut net = UnpackedNet::new(&p)?;
    let mut index = 0;
    while let Some(run) = p.next_run()? {
        if let Err(e) = net.forward(bk, index, &run, sink) {
            sink.error(index, 0, &CaseError::Fixnn(e));
        }
        index += 1;
    }
    Ok(())
}

/// Bytes of RAM the packed network's layers take (`size_of`).
pub const PACKED_NET_BYTES: usize = core::mem::size_of::<PackedNet<'static>>();
/// Bytes of RAM the ordinary training layers of the same network take.
pub const UNPACKED_NET_BYTES: usize = core::mem::size_of::<UnpackedNet>();

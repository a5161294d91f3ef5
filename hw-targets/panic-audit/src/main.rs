//! The panic audit: a firmware image that links fixnn's kernels, every
//! layer's forward and backward pass, the loss, an optimizer step and the
//! config reader with `panic-never`, whose panic handler calls a symbol
//! that does not exist. The image links only if no panic path is left in
//! any of that code after optimisation.
//!
//! Every input comes through [`black_box`] (sizes, geometries, seeds,
//! data, labels, JSON text), so the compiler cannot prove a bounds check
//! away with constants that a real caller would not have: what links here
//! has no panic path for *any* input of these types. Layer sizes are const
//! generics by design, so the layers are audited at the sizes of the device
//! cases' models ([`Cnn`], [`MixConv`] and [`MixDense`], which between them hold every
//! layer type of fixnn).
//!
//! The config JSON is read as a device reads it: a config entry (the device
//! cases' format) with [`ConfigEntry::from_json`] and a whole config tree
//! with [`ConfigDoc::from_json`], fixnn's own reader (serde-json-core, which
//! has panic paths of its own, is not linked).
//!
//! The image is not meant to be run; it is built by
//! `scripts/panic-audit.sh`.
#![no_std]
#![no_main]

use core::hint::black_box;
use core::mem::MaybeUninit;

use cortex_m_rt::entry;
#[cfg(feature = "panic-never")]
use panic_never as _;

/// Without `panic-never` (the report build): a handler that links, so that
/// the remaining panic paths can be listed.
#[cfg(not(feature = "panic-never"))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

use fixnn::backend::{AccOut, Backend, ConvGeom, LinearGeom, Operand, RefBackend};
use fixnn::layers::{softmax_cross_entropy, Layer};
use fixnn::model::{
    apply_configs, collect_configs, walk, with_overrides, ConfigDoc, ConfigEntry, Kind, LoadEntry,
    Override, SavedConfigs, Select,
};
use fixnn::optim::{FixedMaster, Sgd};
use fixnn::tensor::{Ctx, Shape, Tensor, S2};
use fixnn::{Clamp, Format, QuantConfig};
use fixnn_cases::nets::{Cnn, MixConv, MixDense, CLASSES, CNN_B, MIX_B};
use fixnn_cases::Case;

/// Room for any backend call of the audit.
const BUF: usize = 256;

/// A format from opaque bits (any `u8`, valid or not), clamp and zero
/// point (so the shifted code ranges are audited too).
fn format(bits: u8, scale: i8) -> Option<Format> {
    Format::with_clamp(black_box(bits), black_box(scale), black_box(Clamp::Nics))
        .and_then(|f| f.with_zero_point(black_box(0)))
        .ok()
}

/// Every backend operation, on opaque geometries, buffers and formats
/// (integer and f32 paths).
fn kernels() -> u32 {
    let bk = RefBackend;
    let a = black_box([0.5f32; BUF]);
    let b = black_box([0.25f32; BUF]);
    let mut yi = [0i64; BUF];
    let mut yf = [0f32; BUF];
    // Slices of lengths the compiler cannot know.
    let (fa, fb) = (format(8, 0), format(8, 1));
    let x = Operand {
        v: black_box(&a[..]),
        fmt: fa,
    };
    let w = Operand {
        v: black_box(&b[..]),
        fmt: fb,
    };
    let yi: &mut [i64] = black_box(&mut yi[..]);
    let yf: &mut [f32] = black_box(&mut yf[..]);
    let lg = black_box(LinearGeom {
        batch: 2,
        inp: 8,
        out: 4,
    });
    let cg = black_box(ConvGeom {
        batch: 1,
        cin: 2,
        h: 4,
        w: 4,
        cout: 2,
        kh: 3,
        kw: 3,
        oh: 2,
        ow: 2,
        stride: (1, 1),
        pad: (0, 0),
        dil: (1, 1),
        groups: 1,
    });
    let mut errs = 0u32;
    let mut count = |r: fixnn::Result<()>| errs += r.is_err() as u32;
    count(bk.linear(lg, x, w, AccOut::Int(yi)));
    count(bk.linear(lg, x, w, AccOut::Float(yf)));
    count(bk.linear_input_grad(lg, x, w, AccOut::Int(yi)));
    count(bk.linear_input_grad(lg, x, w, AccOut::Float(yf)));
    count(bk.linear_weight_grad(lg, x, w, AccOut::Int(yi)));
    count(bk.linear_weight_grad(lg, x, w, AccOut::Float(yf)));
    count(bk.conv2d(cg, x, w, AccOut::Int(yi)));
    count(bk.conv2d(cg, x, w, AccOut::Float(yf)));
    count(bk.conv2d_input_grad(cg, x, w, AccOut::Int(yi)));
    count(bk.conv2d_input_grad(cg, x, w, AccOut::Float(yf)));
    count(bk.conv2d_weight_grad(cg, x, w, AccOut::Int(yi)));
    count(bk.conv2d_weight_grad(cg, x, w, AccOut::Float(yf)));
    black_box((yi, yf));
    errs + packed(x, lg, cg)
}

/// Packed storage: packing, unpacking and validating opaque codes and
/// bytes, the packed kernels on opaque geometries (integer and f32 paths),
/// and the `packed` device case (blob parsing, the packed layers) on an
/// opaque blob.
fn packed(x: Operand<'_>, lg: LinearGeom, cg: ConvGeom) -> u32 {
    use fixnn::layers::{conv2d_packed, linear_packed};
    use fixnn::quant::packed::{pack, unpack, PackedCodes};
    struct Null;
    impl fixnn_cases::Sink for Null {
        fn record(&mut self, r: &fixnn_cases::Record<'_>) {
            black_box(r.values);
        }
        fn error(&mut self, _: u32, _: u32, _: &fixnn_cases::CaseError) {}
    }
    let mut errs = 0u32;
    let mut count = |r: fixnn::Result<()>| errs += r.is_err() as u32;
    // Opaque lengths: the slices are the caller's; pack and unpack check them.
    let codes: &[i16] = black_box(&[1i16; BUF / 2]);
    let bits = black_box(3u8);
    let mut bytes = black_box([0u8; BUF]);
    let out: &mut [u8] = black_box(&mut bytes[..BUF / 4]);
    count(pack(codes, bits, out));
    let mut back = [0i8; BUF / 2];
    let back_s: &mut [i8] = black_box(&mut back[..]);
    count(unpack(black_box(&bytes[..BUF / 4]), bits, back_s));
    black_box(&back);
    let w = format(bits, 0).map(|f| PackedCodes::new(black_box(&bytes[..]), f, black_box(2 * BUF)));
    if let Some(Ok(w)) = w {
        let (mut yi, mut yf) = ([0i64; BUF], [0f32; BUF]);
        let yi: &mut [i64] = black_box(&mut yi[..]);
        let yf: &mut [f32] = black_box(&mut yf[..]);
        count(linear_packed(lg, x, &w, AccOut::Int(yi)));
        count(linear_packed(lg, x, &w, AccOut::Float(yf)));
        count(conv2d_packed(cg, x, &w, AccOut::Int(yi)));
        count(conv2d_packed(cg, x, &w, AccOut::Float(yf)));
        black_box((yi, yf));
    }
    let blob = black_box(&bytes[..]);
    errs += fixnn_cases::packed::run_packed(blob, &mut Null).is_err() as u32;
    errs
}

/// Config trees applied to `net` and collected from it, and a config entry
/// (the device cases' format) and a whole config tree (core's format) read
/// from opaque JSON by fixnn's reader, then applied.
fn configs<L: Layer>(net: &mut L, entry: &[u8], doc: &[u8]) -> u32 {
    let mut errs = 0u32;
    let cfg = black_box(QuantConfig::auto(8));
    let names = black_box(["fc.weight", "conv.bias", "fc.weight"]);
    let entries = names.map(|name| LoadEntry {
        name,
        kind: black_box(Some(Kind::Param)),
        data: Some(&cfg),
        grad: black_box(None),
    });
    errs += apply_configs(net, black_box(&entries[..]), black_box(true)).is_err() as u32;
    match ConfigEntry::from_json(entry) {
        Ok(e) => {
            errs += e.data.validate().is_err() as u32;
            errs += e.grad.validate().is_err() as u32;
            walk(net, &mut |name, t| {
                if name == e.name.as_str() && t.kind == e.kind {
                    t.quant.cfg = e.data;
                    t.quant.grad_cfg = e.grad;
                }
            });
        }
        Err(e) => errs += e.offset as u32,
    }
    match ConfigDoc::<16>::from_json(doc) {
        Ok(d) => errs += d.apply(net).is_err() as u32,
        Err(e) => errs += e.offset as u32,
    }
    // Per-call overrides: opaque selections, configs and buffer.
    let nics = QuantConfig {
        clamp: black_box(Clamp::Nics),
        ..cfg
    };
    let over = black_box([
        Override::data(Select::Name(black_box("fc")), nics),
        Override::grad(Select::Type(black_box("Linear")), cfg),
    ]);
    let mut saved = [SavedConfigs::default(); 4];
    let saved: &mut [SavedConfigs] = black_box(&mut saved[..]);
    match with_overrides(net, &over, saved, |n| collect_configs::<L, 16>(n).is_ok()) {
        Ok(ok) => errs += !ok as u32,
        Err(_) => errs += 1,
    }
    match collect_configs::<L, 16>(net) {
        Ok(d) => black_box(&d).tensors.len() as u32 + errs,
        Err(_) => errs + 1,
    }
}

/// Build model `C`, load its configs, and train it for one step (forward,
/// loss, backward, SGD with fixed-point masters), then run it in eval mode.
fn train<C: Case<B, K>, const B: usize, const K: usize>(entry: &[u8], doc: &[u8]) -> u32 {
    let bk = RefBackend;
    let mut slot = MaybeUninit::<C>::uninit();
    let Ok(net) = C::build_in(&mut slot) else {
        return 1;
    };
    let seed = black_box(7u64);
    net.init(seed);
    let mut errs = configs(net, entry, doc);
    let mut x = Tensor::<C::In>::zeros();
    for (i, v) in x.flat_mut().iter_mut().enumerate() {
        *v = black_box(i as f32 * 0.125);
    }
    let labels: [usize; B] = black_box([1; B]);
    let mut dlogits = Tensor::<S2<B, K>>::zeros();
    let sgd = black_box(Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
        fixed_master: Some(FixedMaster {
            bits: 16,
            momentum_bits: 16,
        }),
    });
    let ctx = Ctx::train(seed, black_box(0));
    let step = (|| -> fixnn::Result<f32> {
        net.forward(&bk, &ctx, &x)?;
        let loss = softmax_cross_entropy(net.output(), &labels, &mut dlogits)?;
        net.backward(&bk, &ctx, &x, &mut dlogits, black_box(true))?;
        sgd.step(&ctx, net)?;
        net.forward(&bk, &Ctx::eval(seed), &x)?;
        Ok(loss.loss)
    })();
    match step {
        Ok(loss) => {
            black_box(loss);
        }
        Err(_) => errs += 1,
    }
    black_box(net.output().flat());
    black_box(<C::In as Shape>::LEN);
    errs
}

/// Opaque JSON text: what a device would receive.
static ENTRY_JSON: &[u8] = br#"{"name":"fc.weight","kind":"param","layer":"Linear","data":{"method":"auto","bits":8,"scale":0,"rounding":"nearest_even","range":"max"},"grad":{"method":"none","bits":8,"scale":0,"rounding":"nearest_even","range":"max"}}"#;
static DOC_JSON: &[u8] = br#"{"format":"fixnn-config","version":1,"tensors":[]}"#;

#[entry]
fn main() -> ! {
    let entry = black_box(ENTRY_JSON);
    let doc = black_box(DOC_JSON);
    let mut errs = kernels();
    errs += train::<Cnn, CNN_B, CLASSES>(entry, doc);
    errs += train::<MixConv, MIX_B, CLASSES>(entry, doc);
    errs += train::<MixDense, MIX_B, CLASSES>(entry, doc);
    black_box(errs);
    loop {
        core::hint::spin_loop();
    }
}

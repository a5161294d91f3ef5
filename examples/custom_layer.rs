//! A user-defined fixed-point layer, and a model built from it with
//! `#[derive(Model)]`.
//!
//! nics_fix_pt makes a user's module fixed-point with
//! `register_fix_module(MaskedConv2d)`. In fixnn there is no registry: a
//! type that implements [`Layer`] (forward, backward, and a walk over its
//! named tensors) *is* a fixed-point layer. Its tensors get paths, configs,
//! optimizer updates and tables like any built-in layer's.
//!
//! `MaskedConv2d` is a convolution whose weights are multiplied by a fixed
//! binary pruning mask before they are quantized: pruned weights are exact
//! zeros in the quantized copy (code 0 under every rounding), the Auto
//! scale is chosen from the kept weights only, and pruned weights get a zero
//! gradient. It reuses the backend's convolution kernels and fixnn's
//! [`Param`] and [`Act`] for quantization, saturation masks and gradients.
//!
//! The example trains `Quant -> MaskedConv2d -> Relu -> Flatten -> Linear`
//! on synthetic 8x8 images (one bar per image: horizontal, vertical,
//! diagonal or anti-diagonal), prints the loss per step and every tensor's
//! path and data config, and then checks that the mask held: the quantized
//! weights are exact codes of their format and exactly zero where the mask
//! is zero. It exits with status 1 if not.
//!
//! Run: `cargo run -p fixnn-examples --example custom_layer`
//! (`cargo test` runs the same training and checks as a test.)

use fixnn::backend::{product_exp, AccOut, Backend, ConvGeom, RefBackend};
use fixnn::layers::{softmax_cross_entropy, Flatten, Layer, Linear, Quant, Relu};
use fixnn::model::{Kind, PathBuf, TensorMut, Visitor, MAX_PATH};
use fixnn::optim::Sgd;
use fixnn::quant::acc_to_f32;
use fixnn::tensor::{Act, Ctx, Param, Shape, Tensor, ID_STRIDE, S2, S4};
use fixnn::{Method, Model, QuantConfig, Result, Stream};

// ---- The custom layer ----

/// A 2-D convolution (no bias, one group, no dilation) whose weights are
/// multiplied by a fixed binary `mask` before quantization.
///
/// Shapes: input `[B][CIN][H][W]`, weight and mask `[COUT][CIN][KH][KW]`,
/// output `[B][COUT][OH][OW]`. Tensors (ids `id * 16 + k`): `weight`
/// (k = 0) and `output` (k = 1). The mask is part of the layer's structure,
/// like its geometry, not a tensor: configs and optimizers never touch it.
struct MaskedConv2d<
    const CIN: usize,
    const COUT: usize,
    const KH: usize,
    const KW: usize,
    const H: usize,
    const W: usize,
    const OH: usize,
    const OW: usize,
    const B: usize,
> {
    /// f32 master weights (pruned ones included: the optimizer sees a zero
    /// gradient for them) and the masked, quantized copy used by the passes.
    weight: Param<S4<COUT, CIN, KH, KW>>,
    /// `true`: the weight is kept; `false`: pruned.
    mask: [[[[bool; KW]; KH]; CIN]; COUT],
    /// Output, kept for the next layer's backward.
    out: Act<S4<B, COUT, OH, OW>>,
    /// Gradient with respect to the input.
    dx: Tensor<S4<B, CIN, H, W>>,
    geom: ConvGeom,
    acc: [[[[i64; OW]; OH]; COUT]; B],
    wacc: [[[[i64; KW]; KH]; CIN]; COUT],
    xacc: [[[[i64; W]; H]; CIN]; B],
}

/// The weight shape of a `MaskedConv2d`.
type WShape<const COUT: usize, const CIN: usize, const KH: usize, const KW: usize> =
    S4<COUT, CIN, KH, KW>;

impl<
        const CIN: usize,
        const COUT: usize,
        const KH: usize,
        const KW: usize,
        const H: usize,
        const W: usize,
        const OH: usize,
        const OW: usize,
        const B: usize,
    > MaskedConv2d<CIN, COUT, KH, KW, H, W, OH, OW, B>
{
    /// A layer with zero weights, all configs `None`, the given mask.
    ///
    /// # Errors
    ///
    /// [`fixnn::Error::Shape`] if stride, padding and the sizes do not fit.
    fn new(
        id: u32,
        stride: (usize, usize),
        pad: (usize, usize),
        mask: [[[[bool; KW]; KH]; CIN]; COUT],
    ) -> Result<Self> {
        let geom = ConvGeom {
            batch: B,
            cin: CIN,
            h: H,
            w: W,
            cout: COUT,
            kh: KH,
            kw: KW,
            oh: OH,
            ow: OW,
            stride,
            pad,
            dil: (1, 1),
            groups: 1,
        };
        geom.check()?;
        let base = id.wrapping_mul(ID_STRIDE);
        Ok(MaskedConv2d {
            weight: Param::new(base),
            mask,
            out: Act::new(base + 1),
            dx: Tensor::zeros(),
            geom,
            acc: [[[[0; OW]; OH]; COUT]; B],
            wacc: [[[[0; KW]; KH]; CIN]; COUT],
            xacc: [[[[0; W]; H]; CIN]; B],
        })
    }

    /// The pruning mask, row-major `[COUT][CIN][KH][KW]`.
    fn mask(&self) -> &[bool] {
        WShape::<COUT, CIN, KH, KW>::flat(&self.mask)
    }
}

impl<
        const CIN: usize,
        const COUT: usize,
        const KH: usize,
        const KW: usize,
        const H: usize,
        const W: usize,
        const OH: usize,
        const OW: usize,
        const B: usize,
    > Layer for MaskedConv2d<CIN, COUT, KH, KW, H, W, OH, OW, B>
{
    type In = S4<B, CIN, H, W>;
    type Out = S4<B, COUT, OH, OW>;
    const TYPE: &'static str = "MaskedConv2d";

    fn forward<Bk: Backend>(&mut self, bk: &Bk, ctx: &Ctx, x: &Tensor<Self::In>) -> Result<()> {
        // The masked weights, then quantized by the weight's data config
        // (Auto picks the scale from the kept weights). A pruned weight is
        // an exact 0.0, which every rounding maps to code 0.
        let keep = WShape::<COUT, CIN, KH, KW>::flat(&self.mask);
        let w = &mut self.weight;
        let q = WShape::<COUT, CIN, KH, KW>::flat_mut(&mut w.q.v);
        for ((q, &m), &k) in q
            .iter_mut()
            .zip(WShape::<COUT, CIN, KH, KW>::flat(&w.master))
            .zip(keep)
        {
            *q = if k { m } else { 0.0 };
        }
        // Not exact codes until quantized (nor if quantizing fails).
        w.q.fmt = None;
        w.q.fmt = w.quant.quantize_data(
            ctx,
            WShape::<COUT, CIN, KH, KW>::flat_mut(&mut w.q.v),
            WShape::<COUT, CIN, KH, KW>::flat_mut(&mut w.sat),
        )?;

        // The backend's convolution: exact integer sums when input and
        // weights are quantized, f32 otherwise; then the output config.
        let g = self.geom;
        let (xo, wo) = (x.operand(), self.weight.q.operand());
        match product_exp(xo, wo) {
            Some(e) => {
                let acc = Self::Out::flat_mut(&mut self.acc);
                bk.conv2d(g, xo, wo, AccOut::Int(acc))?;
                self.out.set_from_acc(ctx, acc, e)
            }
            None => {
                bk.conv2d(g, xo, wo, AccOut::Float(self.out.t.flat_mut()))?;
                self.out.quantize(ctx)
            }
        }
    }

    fn output(&self) -> &Tensor<Self::Out> {
        &self.out.t
    }

    fn backward<Bk: Backend>(
        &mut self,
        bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<Self::In>,
        dy: &mut Tensor<Self::Out>,
        want_dx: bool,
    ) -> Result<()> {
        // Straight-through mask of the output, then its grad config.
        self.out.prepare_grad(ctx, dy)?;
        let g = self.geom;
        let (dyo, xo) = (dy.operand(), x.operand());
        let keep = WShape::<COUT, CIN, KH, KW>::flat(&self.mask);

        // dL/dmaster = mask * dL/dw: pruned weights get exactly zero,
        // before the grad config chooses its scale.
        match product_exp(dyo, xo) {
            Some(e) => {
                let wacc = WShape::<COUT, CIN, KH, KW>::flat_mut(&mut self.wacc);
                bk.conv2d_weight_grad(g, dyo, xo, AccOut::Int(wacc))?;
                for (a, &k) in wacc.iter_mut().zip(keep) {
                    if !k {
                        *a = 0;
                    }
                }
                self.weight.set_grad_acc(ctx, wacc, e)?;
            }
            None => {
                let grad = self.weight.grad.flat_mut();
                bk.conv2d_weight_grad(g, dyo, xo, AccOut::Float(grad))?;
                for (v, &k) in grad.iter_mut().zip(keep) {
                    if !k {
                        *v = 0.0;
                    }
                }
                self.weight.finish_grad(ctx)?;
            }
        }

        // dx through the masked, quantized weights, at full precision.
        if want_dx {
            let wo = self.weight.q.operand();
            match product_exp(dyo, wo) {
                Some(e) => {
                    let xacc = Self::In::flat_mut(&mut self.xacc);
                    bk.conv2d_input_grad(g, dyo, wo, AccOut::Int(xacc))?;
                    for (d, &a) in self.dx.flat_mut().iter_mut().zip(xacc.iter()) {
                        *d = acc_to_f32(a, e);
                    }
                }
                None => bk.conv2d_input_grad(g, dyo, wo, AccOut::Float(self.dx.flat_mut()))?,
            }
            self.dx.fmt = None;
        }
        Ok(())
    }

    fn input_grad(&self) -> &Tensor<Self::In> {
        &self.dx
    }

    fn input_grad_mut(&mut self) -> &mut Tensor<Self::In> {
        &mut self.dx
    }

    fn visit(&mut self, v: &mut dyn Visitor) {
        v.tensor(self.weight.tensor_mut(Self::TYPE, "weight"));
        v.tensor(self.out.tensor_mut(Self::TYPE, "output"));
    }
}

// ---- The model ----

const B: usize = 8;
const C: usize = 4;
const K: usize = 4;
const STEPS: u32 = 40;

type Conv = MaskedConv2d<1, C, 3, 3, 8, 8, 8, 8, B>;
type Mask = [[[[bool; 3]; 3]; 1]; C];

/// Quantize the input, masked 3x3 convolution (padding 1), ReLU, flatten,
/// linear classifier. Tensor paths: `input.activation`, `conv.weight`,
/// `conv.output`, `relu.output`, `flat.output`, `fc.weight`, ...
#[derive(Model)]
struct Net {
    input: Quant<S4<B, 1, 8, 8>>,
    conv: Conv,
    relu: Relu<S4<B, C, 8, 8>>,
    flat: Flatten<B, C, 8, 8, 256>,
    fc: Linear<256, K, B>,
}

/// The pruning mask: about half of the weights, chosen by a seeded
/// generator (the same mask on every run and every machine).
fn make_mask() -> Mask {
    let s = Stream::new(2024, 7, 0);
    let mut m = [[[[false; 3]; 3]; 1]; C];
    for (i, k) in m
        .as_flattened_mut()
        .as_flattened_mut()
        .as_flattened_mut()
        .iter_mut()
        .enumerate()
    {
        *k = s.draw(i as u32) & 1 == 0;
    }
    m
}

fn net(bits: u8) -> Result<Net> {
    let auto = QuantConfig::auto(bits);
    let mut input = Quant::new(0);
    input.out.quant.cfg = auto;

    let mut conv = Conv::new(1, (1, 1), (1, 1), make_mask())?;
    conv.weight.init_uniform(11, 1.0 / 3.0);
    conv.weight.quant.cfg = auto;
    conv.weight.quant.grad_cfg = auto;
    conv.out.quant.cfg = auto;
    conv.out.quant.grad_cfg = auto;

    let mut fc = Linear::new(4);
    fc.weight.init_uniform(11, 1.0 / 16.0);
    fc.bias.init_uniform(11, 1.0 / 16.0);
    fc.weight.quant.cfg = auto;
    fc.bias.quant.cfg = auto;
    fc.out.quant.cfg = auto;

    Ok(Net {
        input,
        conv,
        relu: Relu::new(2),
        flat: Flatten::new(3),
        fc,
    })
}

/// An 8x8 image with one bar (horizontal, vertical, diagonal or
/// anti-diagonal: the label) at a random offset, on uniform noise in
/// `[-0.8, 0.8)`. Deterministic in `n`.
fn sample(n: u32) -> ([[[f32; 8]; 8]; 1], usize) {
    let s = Stream::new(5, 77, n);
    let uniform = |i: u32| (s.draw(i) >> 8) as f32 / (1u32 << 24) as f32;
    let label = (s.draw(0) % K as u32) as usize;
    let off = (s.draw(1) % 6) as usize + 1;
    let mut img = [[[0f32; 8]; 8]; 1];
    for (i, v) in img[0].as_flattened_mut().iter_mut().enumerate() {
        *v = 1.6 * (uniform(2 + i as u32) - 0.5);
    }
    for t in 0..8 {
        let (y, x) = match label {
            0 => (off, t),
            1 => (t, off),
            2 => (t, t),
            _ => (t, 7 - t),
        };
        img[0][y][x] += 1.0;
    }
    (img, label)
}

/// Train for `steps` steps; `report(step, loss, correct)` after each.
fn train(net: &mut Net, steps: u32, mut report: impl FnMut(u32, f32, usize)) -> Result<()> {
    let bk = RefBackend;
    let opt = Sgd::new(0.05, 0.5, 0.0);
    let mut x = Tensor::<S4<B, 1, 8, 8>>::zeros();
    let mut d = Tensor::<S2<B, K>>::zeros();
    let mut labels = [0usize; B];
    for step in 0..steps {
        for (b, l) in labels.iter_mut().enumerate() {
            let (img, label) = sample(step * B as u32 + b as u32);
            x.v[b] = img;
            *l = label;
        }
        x.fmt = None;
        let ctx = Ctx::train(9, step);
        net.forward(&bk, &ctx, &x)?;
        let out = softmax_cross_entropy(net.output(), &labels, &mut d)?;
        net.backward(&bk, &ctx, &x, &mut d, false)?;
        opt.step(&ctx, net)?;
        report(step, out.loss, out.correct);
    }
    Ok(())
}

// ---- Listing tensors ----

/// Prints each tensor's path, kind and data config.
struct Print {
    path: PathBuf,
}

impl Visitor for Print {
    fn enter(&mut self, name: &str) {
        self.path.push(name);
    }
    fn leave(&mut self) {
        self.path.pop();
    }
    fn tensor(&mut self, t: TensorMut<'_>) {
        let mut buf = [0u8; MAX_PATH];
        let path = self.path.join(t.name, &mut buf);
        let kind = match t.kind {
            Kind::Param => "param",
            Kind::Buffer => "buffer",
            Kind::Activation => "activation",
        };
        let c = &t.quant.cfg;
        let cfg = match c.method {
            Method::None => "None".to_string(),
            m => format!(
                "{m:?}, {} bits, scale {}, {:?}",
                c.bits, c.scale, c.rounding
            ),
        };
        let fmt = match *t.fmt {
            Some(f) => format!("{} bits, scale {}", f.bits(), f.scale()),
            None => "full precision".to_string(),
        };
        println!(
            "  {path:<18} {:<12} {kind:<10} {cfg:<34} {fmt}",
            t.layer_type
        );
    }
}

// ---- Checking the mask ----

/// Check that the mask held after training: the mask is the one the model
/// was built with, the quantized weights are exact codes of their format,
/// and both the quantized weights and their gradients are exactly zero
/// where the mask is zero. Returns the number of pruned weights whose
/// master value is non-zero (they stay out of the quantized copy).
fn check_mask(conv: &Conv) -> std::result::Result<usize, String> {
    let mask = conv.mask();
    if conv.mask != make_mask() {
        return Err("the pruning mask changed during training".into());
    }
    let Some(f) = conv.weight.q.fmt else {
        return Err("conv.weight is not quantized (its format is None)".into());
    };
    let q = conv.weight.q.flat();
    let grad = conv.weight.grad.flat();
    let master = WShape::<C, 1, 3, 3>::flat(&conv.weight.master);
    let mut live_masters = 0;
    for (i, ((&v, &g), &k)) in q.iter().zip(grad).zip(mask).enumerate() {
        let code = f.code_of(v);
        if !(f.min_code()..=f.max_code()).contains(&code) || f.to_f32(code).to_bits() != v.to_bits()
        {
            return Err(format!(
                "conv.weight[{i}] = {v} is not an exact code of {} bits, scale {}",
                f.bits(),
                f.scale()
            ));
        }
        if !k {
            if v.to_bits() != 0 {
                return Err(format!(
                    "pruned conv.weight[{i}] is {v} in the quantized copy"
                ));
            }
            if g != 0.0 {
                return Err(format!("pruned conv.weight[{i}] has gradient {g}"));
            }
            live_masters += (master[i] != 0.0) as usize;
        }
    }
    Ok(live_masters)
}

fn run() -> std::result::Result<(), String> {
    let mut net = Box::new(net(8).map_err(|e| e.to_string())?);
    let pruned = net.conv.mask().iter().filter(|&&k| !k).count();
    println!(
        "MaskedConv2d: {pruned} of {} weights pruned; model RAM {} bytes",
        net.conv.mask().len(),
        core::mem::size_of::<Net>()
    );
    train(&mut net, STEPS, |step, loss, correct| {
        println!("step {step:2}: loss {loss:.4}, {correct}/{B} correct");
    })
    .map_err(|e| e.to_string())?;

    println!("tensors of {}:", <Net as Layer>::TYPE);
    println!(
        "  {:<18} {:<12} {:<10} {:<34} format now",
        "path", "layer", "kind", "data config"
    );
    net.visit(&mut Print {
        path: PathBuf::new(),
    });

    let live = check_mask(&net.conv)?;
    println!(
        "mask held: {pruned} pruned weights are exact zeros in the quantized copy \
         ({live} of their master values are non-zero), with zero gradients; \
         every quantized weight is an exact code of its format"
    );
    Ok(())
}

fn main() {
    if let Err(msg) = run() {
        eprintln!("custom_layer: FAILED: {msg}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_conv_trains_and_keeps_pruned_weights_zero() {
        let mut net = Box::new(net(8).unwrap());
        let mut losses = Vec::new();
        train(&mut net, STEPS, |_, loss, _| losses.push(loss)).unwrap();
        let live = check_mask(&net.conv).unwrap();
        // The test is meaningful: pruned masters are non-zero, yet their
        // quantized copies are zero.
        assert!(live > 0);
        let first: f32 = losses[..5].iter().sum();
        let last: f32 = losses[losses.len() - 5..].iter().sum();
        assert!(last < first, "loss {first} -> {last}");
    }

    #[test]
    fn the_check_catches_a_broken_mask() {
        let mut good = Box::new(net(8).unwrap());
        train(&mut good, 2, |_, _, _| {}).unwrap();
        assert!(check_mask(&good.conv).is_ok());
        let pruned = good.conv.mask().iter().position(|&k| !k).unwrap();
        let f = good.conv.weight.q.fmt.unwrap();

        // A pruned weight that leaked into the quantized copy.
        let mut leaked = Box::new(net(8).unwrap());
        train(&mut leaked, 2, |_, _, _| {}).unwrap();
        leaked.conv.weight.q.flat_mut()[pruned] = f.step();
        assert!(check_mask(&leaked.conv).unwrap_err().contains("pruned"));

        // A value that is not a code of the format.
        good.conv.weight.q.flat_mut()[0] += f.step() / 2.0;
        assert!(check_mask(&good.conv).unwrap_err().contains("exact code"));

        // Weights at full precision.
        good.conv.weight.q.fmt = None;
        assert!(check_mask(&good.conv)
            .unwrap_err()
            .contains("not quantized"));
    }

    #[test]
    fn pruned_weights_get_no_gradient_at_full_precision() {
        // All configs None: the f32 paths of forward and backward.
        let mut conv = Conv::new(0, (1, 1), (1, 1), make_mask()).unwrap();
        conv.weight.init_uniform(3, 1.0 / 3.0);
        let mut x = Tensor::<S4<B, 1, 8, 8>>::zeros();
        for b in 0..B {
            x.v[b] = sample(b as u32).0;
        }
        let (bk, ctx) = (RefBackend, Ctx::train(1, 0));
        conv.forward(&bk, &ctx, &x).unwrap();
        let mut dy = Tensor::zeros();
        dy.flat_mut().fill(1.0);
        conv.backward(&bk, &ctx, &x, &mut dy, true).unwrap();
        assert_eq!(conv.weight.q.fmt, None);
        for ((&g, &q), &k) in conv
            .weight
            .grad
            .flat()
            .iter()
            .zip(conv.weight.q.flat())
            .zip(conv.mask())
        {
            assert_eq!(k, g != 0.0);
            assert_eq!(k, q != 0.0);
        }
        assert!(conv.input_grad().flat().iter().any(|&g| g != 0.0));
    }
}

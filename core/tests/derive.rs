//! `#[derive(Model)]`: a struct of layers computes the same bits as the
//! equivalent `Chain`, names its tensors after its fields, nests, renames,
//! and works on generic structs.

use fixnn::backend::RefBackend;
use fixnn::layers::{softmax_cross_entropy, Chain, Conv2d, Flatten, Layer, Linear, Quant, Relu};
use fixnn::model::{Kind, TensorMut, Visitor};
use fixnn::optim::Sgd;
use fixnn::tensor::{Ctx, Shape, Tensor, S2, S4};
use fixnn::{Format, Model, QuantConfig, Rounding, Stream};

const B: usize = 4;
const D: usize = 6;
const H: usize = 10;
const K: usize = 3;

// ---- Collecting tensors with their paths ----

/// One named tensor, as bits.
#[derive(Debug, PartialEq)]
struct Record {
    path: String,
    layer_type: &'static str,
    kind: Kind,
    fmt: Option<Format>,
    values: Vec<u32>,
    master: Vec<u32>,
    grad: Vec<u32>,
}

/// Keeps a stack of entered names and records every tensor with its path.
#[derive(Default)]
struct Collect {
    stack: Vec<String>,
    out: Vec<Record>,
}

impl Visitor for Collect {
    fn enter(&mut self, name: &str) {
        self.stack.push(name.to_string());
    }
    fn leave(&mut self) {
        self.stack.pop();
    }
    fn tensor(&mut self, t: TensorMut<'_>) {
        let mut path = self.stack.join(".");
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(t.name);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (master, grad) = match &t.param {
            Some(p) => (bits(p.master), bits(p.grad)),
            None => (Vec::new(), Vec::new()),
        };
        self.out.push(Record {
            path,
            layer_type: t.layer_type,
            kind: t.kind,
            fmt: *t.fmt,
            values: bits(t.values),
            master,
            grad,
        });
    }
}

fn records<L: Layer>(l: &mut L) -> Vec<Record> {
    let mut c = Collect::default();
    l.visit(&mut c);
    assert!(c.stack.is_empty(), "unbalanced enter/leave");
    c.out
}

fn paths<L: Layer>(l: &mut L) -> Vec<String> {
    records(l).into_iter().map(|r| r.path).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---- Training two models side by side ----

fn fill<S: Shape>(t: &mut Tensor<S>, seed: u64, step: u32) {
    let s = Stream::new(seed, 4242, step);
    for (i, v) in t.flat_mut().iter_mut().enumerate() {
        *v = (s.draw(i as u32) >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
    }
    t.fmt = None;
}

/// Train `a` and `b` (same layers, same ids, same configs) for `steps`
/// steps and require the same bits everywhere: outputs, loss, input
/// gradients, and every tensor (values, format, masters, gradients) in
/// visiting order. Tensor names (the last path segment) must agree.
fn same_training<S, X, Y>(a: &mut X, b: &mut Y, steps: u32)
where
    S: Shape,
    X: Layer<In = S, Out = S2<B, K>>,
    Y: Layer<In = S, Out = S2<B, K>>,
{
    let bk = RefBackend;
    let opt = Sgd::new(0.1, 0.5, 0.001);
    let mut x = Tensor::<S>::zeros();
    let (mut da, mut db) = (Tensor::<S2<B, K>>::zeros(), Tensor::<S2<B, K>>::zeros());
    for step in 0..steps {
        fill(&mut x, 1, step);
        let labels: [usize; B] = core::array::from_fn(|i| (i + step as usize) % K);
        let ctx = Ctx::train(17, step);
        a.forward(&bk, &ctx, &x).unwrap();
        b.forward(&bk, &ctx, &x).unwrap();
        assert_eq!(
            bits(a.output().flat()),
            bits(b.output().flat()),
            "step {step}"
        );
        assert_eq!(a.output().fmt, b.output().fmt);
        let la = softmax_cross_entropy(a.output(), &labels, &mut da).unwrap();
        let lb = softmax_cross_entropy(b.output(), &labels, &mut db).unwrap();
        assert_eq!(la.loss.to_bits(), lb.loss.to_bits());
        a.backward(&bk, &ctx, &x, &mut da, true).unwrap();
        b.backward(&bk, &ctx, &x, &mut db, true).unwrap();
        assert_eq!(bits(a.input_grad().flat()), bits(b.input_grad().flat()));
        assert_eq!(a.input_grad().fmt, b.input_grad().fmt);
        assert!(a.input_grad().flat().iter().any(|&g| g != 0.0));
        let (ra, rb) = (records(a), records(b));
        assert_eq!(ra.len(), rb.len());
        for (ta, tb) in ra.iter().zip(&rb) {
            let name = |r: &Record| r.path.rsplit('.').next().unwrap().to_string();
            assert_eq!(name(ta), name(tb));
            assert_eq!(
                (
                    ta.layer_type,
                    ta.kind,
                    ta.fmt,
                    &ta.values,
                    &ta.master,
                    &ta.grad
                ),
                (
                    tb.layer_type,
                    tb.kind,
                    tb.fmt,
                    &tb.values,
                    &tb.master,
                    &tb.grad
                ),
                "{} vs {} at step {step}",
                ta.path,
                tb.path
            );
        }
        opt.step(&ctx, a).unwrap();
        opt.step(&ctx, b).unwrap();
    }
    // Training did something: some parameter has a non-zero gradient.
    assert!(records(a)
        .iter()
        .any(|r| r.kind == Kind::Param && r.grad.iter().any(|&g| f32::from_bits(g) != 0.0)));
}

// ---- An MLP: derived struct against Chain ----

#[derive(Model)]
struct Mlp {
    input: Quant<S2<B, D>>,
    fc1: Linear<D, H, B>,
    act: Relu<S2<B, H>>,
    fc2: Linear<H, K, B>,
}

type MlpChain =
    Chain<Chain<Chain<Quant<S2<B, D>>, Linear<D, H, B>>, Relu<S2<B, H>>>, Linear<H, K, B>>;

fn linear<const I: usize, const O: usize>(id: u32, bits: u8) -> Linear<I, O, B> {
    let mut l = Linear::new(id);
    let bound = 1.0 / (I as f32).sqrt();
    l.weight.init_uniform(5, bound);
    l.bias.init_uniform(5, bound);
    l.weight.quant.cfg = QuantConfig::auto(bits);
    l.bias.quant.cfg = QuantConfig::auto(bits);
    // Stochastic gradient rounding: keyed by the tensor id, so the two
    // models must agree on ids for the same bits.
    l.weight.quant.grad_cfg = QuantConfig {
        rounding: Rounding::Stochastic,
        ..QuantConfig::auto(bits)
    };
    l.out.quant.cfg = QuantConfig::auto(bits);
    l.out.quant.grad_cfg = QuantConfig::auto(bits);
    l
}

fn quant<S: Shape>(id: u32, bits: u8) -> Quant<S> {
    let mut q = Quant::new(id);
    q.out.quant.cfg = QuantConfig::auto(bits);
    q
}

fn mlp() -> Mlp {
    Mlp {
        input: quant(0, 8),
        fc1: linear(1, 8),
        act: Relu::new(2),
        fc2: linear(3, 8),
    }
}

fn mlp_chain() -> MlpChain {
    Chain::new(
        Chain::new(Chain::new(quant(0, 8), linear(1, 8)), Relu::new(2)),
        linear(3, 8),
    )
}

#[test]
fn derived_mlp_trains_like_the_chain_bit_for_bit() {
    let (mut a, mut b) = (mlp(), mlp_chain());
    same_training(&mut a, &mut b, 6);
}

#[test]
fn derived_mlp_names_tensors_after_fields() {
    assert_eq!(<Mlp as Layer>::TYPE, "Mlp");
    let expected = [
        "input.activation",
        "fc1.weight",
        "fc1.bias",
        "fc1.output",
        "act.output",
        "fc2.weight",
        "fc2.bias",
        "fc2.output",
    ];
    assert_eq!(paths(&mut mlp()), expected);
    // The chain names the same tensors by position.
    let chain: Vec<String> = paths(&mut mlp_chain());
    assert_eq!(chain[1], "1.weight");
    assert_eq!(chain[4], "2.output");
    // Leaf layers keep their own type names.
    let types: Vec<&str> = records(&mut mlp()).iter().map(|r| r.layer_type).collect();
    assert_eq!(types[1], "Linear");
}

#[test]
fn want_dx_false_leaves_the_input_gradient_alone() {
    let bk = RefBackend;
    let mut net = mlp();
    let mut x = Tensor::<S2<B, D>>::zeros();
    fill(&mut x, 2, 0);
    let ctx = Ctx::train(1, 0);
    net.forward(&bk, &ctx, &x).unwrap();
    let mut dy = Tensor::<S2<B, K>>::zeros();
    softmax_cross_entropy(net.output(), &[0, 1, 2, 0], &mut dy).unwrap();
    net.backward(&bk, &ctx, &x, &mut dy, false).unwrap();
    assert!(net.input_grad().flat().iter().all(|&g| g == 0.0));
    // Nothing before fc1 has parameters, so its input gradient is not
    // computed either (HAS_PARAMS) ...
    assert!(net.fc1.input_grad().flat().iter().all(|&g| g == 0.0));
    // ... while later fields still pass gradients down and fc1 trains.
    assert!(net.fc2.input_grad().flat().iter().any(|&g| g != 0.0));
    assert!(net.fc1.weight.grad.flat().iter().any(|&g| g != 0.0));
}

// ---- Nested structs, renamed fields, raw identifiers ----

const C: usize = 2;

#[derive(Model)]
struct Block {
    conv: Conv2d<1, C, 1, 3, 3, 4, 4, 4, 4, B>,
    act: Relu<S4<B, C, 4, 4>>,
}

#[derive(Model)]
struct Net {
    block: Block,
    flat: Flatten<B, C, 4, 4, 32>,
    #[model(rename = "head")]
    fc: Linear<32, K, B>,
}

fn conv(id: u32) -> Conv2d<1, C, 1, 3, 3, 4, 4, 4, 4, B> {
    let mut c = Conv2d::new(id, (1, 1), (1, 1), (1, 1)).unwrap();
    c.weight.init_uniform(3, 1.0 / 3.0);
    c.bias.init_uniform(3, 1.0 / 3.0);
    c.weight.quant.cfg = QuantConfig::auto(8);
    c.out.quant.cfg = QuantConfig::auto(8);
    c
}

fn net() -> Net {
    Net {
        block: Block {
            conv: conv(0),
            act: Relu::new(1),
        },
        flat: Flatten::new(2),
        fc: linear(3, 8),
    }
}

#[test]
fn nested_structs_give_dotted_paths() {
    assert_eq!(<Net as Layer>::TYPE, "Net");
    assert_eq!(<Block as Layer>::TYPE, "Block");
    let expected = [
        "block.conv.weight",
        "block.conv.bias",
        "block.conv.output",
        "block.act.output",
        "flat.output",
        "head.weight",
        "head.bias",
        "head.output",
    ];
    assert_eq!(paths(&mut net()), expected);
}

#[test]
fn a_derived_struct_is_one_item_of_a_chain() {
    let mut c = Chain::new(
        Chain::new(Quant::<S4<B, 1, 4, 4>>::new(9), net()),
        Relu::new(8),
    );
    let p = paths(&mut c);
    assert_eq!(p[0], "0.activation");
    assert_eq!(p[1], "1.block.conv.weight");
    assert_eq!(p[8], "1.head.output");
    assert_eq!(p[9], "2.output");
}

#[test]
fn nested_derived_cnn_trains_like_the_chain() {
    let mut a = net();
    let mut b = Chain::new(
        Chain::new(Chain::new(conv(0), Relu::new(1)), Flatten::new(2)),
        linear::<32, K>(3, 8),
    );
    same_training(&mut a, &mut b, 4);
}

#[derive(Model)]
struct Raw {
    r#type: Relu<S2<1, 2>>,
    #[model(rename = "0")]
    second: Relu<S2<1, 2>>,
    #[model(rename = "r#x")]
    third: Relu<S2<1, 2>>,
}

#[test]
fn raw_identifiers_and_renames() {
    let mut r = Raw {
        r#type: Relu::new(0),
        second: Relu::new(1),
        third: Relu::new(2),
    };
    assert_eq!(paths(&mut r), ["type.output", "0.output", "r#x.output"]);
}

// ---- Generic structs ----

#[derive(Model)]
struct Pair<A: Layer, Bl>
where
    Bl: Layer<In = A::Out>,
{
    first: A,
    second: Bl,
}

#[derive(Model)]
struct WithRelu<L: Layer> {
    inner: L,
    relu: Relu<L::Out>,
}

#[derive(Model)]
struct Batched<const N: usize, L = Linear<D, K, N>> {
    /// Doc comments and other attributes on fields are kept out of the way.
    #[allow(dead_code)]
    fc: L,
    act: Relu<S2<N, K>>,
}

#[derive(Model)]
struct One {
    fc: Linear<D, K, B>,
}

#[test]
fn generic_structs_derive() {
    assert_eq!(
        <Pair<Linear<D, K, B>, Relu<S2<B, K>>> as Layer>::TYPE,
        "Pair"
    );
    assert_eq!(<WithRelu<Linear<D, K, B>> as Layer>::TYPE, "WithRelu");
    assert_eq!(<Batched<B> as Layer>::TYPE, "Batched");

    let mut pair = Pair {
        first: Pair {
            first: quant::<S2<B, D>>(0, 8),
            second: linear::<D, K>(1, 8),
        },
        second: Relu::<S2<B, K>>::new(2),
    };
    let mut chain = Chain::new(Chain::new(quant(0, 8), linear::<D, K>(1, 8)), Relu::new(2));
    same_training(&mut pair, &mut chain, 3);
    assert_eq!(
        paths(&mut pair),
        [
            "first.first.activation",
            "first.second.weight",
            "first.second.bias",
            "first.second.output",
            "second.output"
        ]
    );

    let mut w = WithRelu {
        inner: linear::<D, K>(0, 8),
        relu: Relu::new(1),
    };
    let mut c = Chain::new(linear::<D, K>(0, 8), Relu::new(1));
    same_training(&mut w, &mut c, 3);

    let mut batched: Batched<B> = Batched {
        fc: linear(0, 8),
        act: Relu::new(1),
    };
    let mut c = Chain::new(linear::<D, K>(0, 8), Relu::new(1));
    same_training(&mut batched, &mut c, 3);

    // A single field: the struct is that layer, renamed.
    let mut one = One { fc: linear(0, 8) };
    let mut fc = linear::<D, K>(0, 8);
    same_training(&mut one, &mut fc, 3);
    assert_eq!(paths(&mut one), ["fc.weight", "fc.bias", "fc.output"]);
}

// A public model may hold private layer types between its first and last
// fields (the first and last name its `In` and `Out`, so they must be public).
#[derive(Model)]
struct Hidden {
    fc: Linear<D, K, B>,
}

/// A public derived model whose first field is a private type.
#[derive(Model)]
pub struct Public {
    act0: Relu<S2<B, D>>,
    hidden: Hidden,
    act: Relu<S2<B, K>>,
}

#[test]
fn public_model_with_private_fields() {
    let mut p = Public {
        act0: Relu::new(2),
        hidden: Hidden { fc: Linear::new(0) },
        act: Relu::new(1),
    };
    assert_eq!(paths(&mut p)[1], "hidden.fc.weight");
}

//! Real-valued quantization split across threads (`fixnn_std::accel`'s
//! hook, inside a 2-thread pool) gives the bits of the same pass on one
//! thread: a per-channel real-valued weight (groups cut by the parts'
//! boundaries) and a per-tensor real-valued activation, large enough to be
//! split, with stochastic rounding (every element's draw depends on its
//! index in the whole tensor) and with nearest rounding (the f64 path).

use fixnn::backend::RefBackend;
use fixnn::layers::{Layer, Linear, Quant};
use fixnn::quant::Stream;
use fixnn::tensor::{Ctx, Tensor, S2};
use fixnn::{Group, QuantConfig, Rounding};

const B: usize = 64;
const IN: usize = 784;
const OUT: usize = 100;

/// Values spread over about 2^-8 .. 2^3, both signs, seeded.
fn fill(v: &mut [f32], seed: u64) {
    let s = Stream::new(seed, 3, 0);
    for (i, x) in v.iter_mut().enumerate() {
        let d = s.draw(i as u32);
        let u = (d >> 8) as f32 / (1 << 24) as f32;
        *x = (2.0 * u - 1.0) * (1 << (d % 12)) as f32 / 256.0;
    }
}

/// The quantized weight, its clamps and config, and the quantized
/// activation with its clamps and config, after one training forward.
type Out = (
    Vec<f32>,
    Vec<bool>,
    QuantConfig,
    Vec<f32>,
    Vec<bool>,
    QuantConfig,
);

fn run(rounding: Rounding) -> Out {
    let mut l = Box::new(Linear::<IN, OUT, B>::new(1));
    l.weight.quant.cfg = QuantConfig {
        group: Group::Channel,
        rounding,
        ..QuantConfig::auto_real(8)
    };
    fill(l.weight.master.as_flattened_mut(), 1);
    let mut q = Box::new(Quant::<S2<B, IN>>::new(0));
    q.out.quant.cfg = QuantConfig {
        rounding,
        ..QuantConfig::auto_real(6)
    };
    let mut x = Box::new(Tensor::<S2<B, IN>>::zeros());
    fill(x.flat_mut(), 2);
    let ctx = Ctx::train(9, 3);
    q.forward(&RefBackend, &ctx, &x).unwrap();
    l.forward(&RefBackend, &ctx, &q.out.t).unwrap();
    (
        l.weight.q.flat().to_vec(),
        l.weight.sat.as_flattened().to_vec(),
        l.weight.quant.cfg,
        q.out.t.flat().to_vec(),
        q.out.sat.as_flattened().to_vec(),
        q.out.quant.cfg,
    )
}

/// Layers this size are built on the stack before they are boxed.
const STACK: usize = 256 << 20;

#[test]
fn split_real_valued_passes_give_the_one_thread_bits() {
    fixnn_std::accel::install();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .stack_size(STACK)
        .build()
        .unwrap();
    for rounding in [Rounding::Stochastic, Rounding::NearestEven] {
        // Outside every pool the hook sees one thread: no split.
        let one = std::thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || run(rounding))
            .unwrap()
            .join()
            .unwrap();
        let two = pool.install(|| run(rounding));
        assert!(one == two, "{rounding:?}: split and unsplit passes differ");
        // The configs were really quantized (a stub would leave values).
        assert_ne!(one.2.multiplier, 0);
        assert!(one.0.iter().any(|&v| v != 0.0));
    }
}

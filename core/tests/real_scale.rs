//! Real-valued scales (integer multiplier and shift) through the layers:
//! the Quant layer's data and gradient, Linear's output (an integer
//! accumulator requantized by multiplier and shift), weights and gradients.
//! Expected values are worked out by hand in the comments.

use fixnn::backend::RefBackend;
use fixnn::layers::{AvgPool2d, Conv2d, Layer, Linear, Quant};
use fixnn::quant::RealFormat;
use fixnn::tensor::{Ctx, Tensor, S2, S4};
use fixnn::{Clamp, Error, Format, QuantConfig};

/// 0.75 as a Q31 multiplier.
const M075: u32 = 3 << 29;

#[test]
fn quant_layer_real_scale_data_and_gradient() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    let mut q = Quant::<S2<1, 4>>::new(1);
    // 4 bits, range 0.75 * 2^0: step 0.75 / 8 = 0.09375, codes -8..=7.
    q.out.quant.cfg = QuantConfig::fixed_real(4, 0, M075);
    // Gradient: 4 bits, range 0.75 * 2^-2 = 0.1875, step 0.0234375.
    q.out.quant.grad_cfg = QuantConfig::fixed_real(4, -2, M075);
    let mut x = Tensor::<S2<1, 4>>::zeros();
    x.flat_mut().copy_from_slice(&[0.3, -1.5, 0.9, 0.0]);
    q.forward(&bk, &ctx, &x).unwrap();
    // 0.3 / 0.09375 = 3.2 -> 3; -16 -> -8 (clamped); 9.6 -> 7 (clamped); 0.
    assert_eq!(q.output().flat(), &[0.28125, -0.75, 0.65625, 0.0]);
    assert_eq!(q.output().fmt, None, "real-scale values are carried as f32");
    assert_eq!(q.out.sat, [[false, true, true, false]]);
    assert_eq!(q.out.quant.stats.data, 2);
    let mut dy = Tensor::<S2<1, 4>>::zeros();
    dy.flat_mut().copy_from_slice(&[0.1, -0.2, 0.05, 0.3]);
    q.backward(&bk, &ctx, &x, &mut dy, true).unwrap();
    // 0.1 / 0.0234375 = 4.27 -> 4; 0.3 -> 12.8 -> 7 (clamped); the clamped
    // forward elements pass no gradient.
    assert_eq!(q.input_grad().flat(), &[0.09375, 0.0, 0.0, 0.1640625]);
}

#[test]
fn quant_layer_auto_real_chooses_from_the_data() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    let mut q = Quant::<S2<1, 4>>::new(1);
    // nics_fix_pt's clamp: its float_scale exactly.
    q.out.quant.cfg = QuantConfig {
        clamp: Clamp::Nics,
        ..QuantConfig::auto_real(4)
    };
    let mut x = Tensor::<S2<1, 4>>::zeros();
    x.flat_mut().copy_from_slice(&[0.3, -1.5, 0.9, 0.0]);
    q.forward(&bk, &ctx, &x).unwrap();
    // max |x| = 1.5 = 0.75 * 2^1: step 1.5 / 8 = 0.1875 (nics_fix_pt's
    // float_scale: max / 2^(bits-1)); 1.6 -> 2, -8, 4.8 -> 5, 0.
    let cfg = q.out.quant.cfg;
    assert_eq!((cfg.scale, cfg.multiplier), (1, M075));
    assert_eq!(q.output().flat(), &[0.375, -1.5, 0.9375, 0.0]);
    assert_eq!(q.out.sat, [[false; 4]]);
    // Eval mode: Auto acts as Fixed and keeps the chosen scale.
    x.flat_mut()[1] = -3.0;
    q.forward(&bk, &Ctx::eval(1), &x).unwrap();
    assert_eq!(q.out.quant.cfg.multiplier, M075);
    assert_eq!(q.output().flat()[1], -1.5);
}

#[test]
fn hardware_clamp_auto_real_puts_the_maximum_on_the_top_code() {
    let bk = RefBackend;
    let mut q = Quant::<S2<1, 4>>::new(1);
    q.out.quant.cfg = QuantConfig::auto_real(4);
    let mut x = Tensor::<S2<1, 4>>::zeros();
    x.flat_mut().copy_from_slice(&[0.3, -1.5, 0.9, 0.0]);
    q.forward(&bk, &Ctx::train(1, 0), &x).unwrap();
    // Range 1.5 * 8 / 7, M = ceil(0.75 * 2^31 * 8 / 7) = ceil(1840700269.7):
    // step ~1.5 / 7, so 0.3 -> 1.4 -> 1, -1.5 -> -7 (not clamped), 0.9 -> 4.2 -> 4.
    let cfg = q.out.quant.cfg;
    assert_eq!((cfg.scale, cfg.multiplier), (1, 1_840_700_270));
    let rf = RealFormat::new(Format::new(4, 1).unwrap(), 1_840_700_270).unwrap();
    let want = [1, -7, 4, 0].map(|c| rf.to_f32(c));
    assert_eq!(q.output().flat(), &want);
    assert_eq!(q.out.sat, [[false; 4]]);
    assert_eq!(q.out.quant.stats.data, 0);
}

#[test]
fn linear_requantizes_its_accumulator_by_multiplier_and_shift() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    let mut l = Linear::<2, 1, 1>::new(1);
    l.use_bias = false;
    l.weight.master = [[0.5, -0.75]];
    l.weight.quant.cfg = QuantConfig::fixed(8, 0); // step 2^-7
                                                   // Output: 8 bits, range 0.75 * 2^-2 = 0.1875, step 0.1875 / 128.
    l.out.quant.cfg = QuantConfig::fixed_real(8, -2, M075);
    // Output gradient: range 0.75 * 2^-1 = 0.375, step 0.375 / 128.
    l.out.quant.grad_cfg = QuantConfig::fixed_real(8, -1, M075);
    // Weight gradient: Auto chooses from the data.
    l.weight.quant.grad_cfg = QuantConfig::auto_real(8);
    let mut x = Tensor::<S2<1, 2>>::zeros();
    x.flat_mut().copy_from_slice(&[0.5, 0.25]);
    x.fmt = Some(Format::new(8, 0).unwrap());
    l.forward(&bk, &ctx, &x).unwrap();
    // Codes 64 * 64 + 32 * (-96) = 1024 at 2^-14 (0.0625). M_eff =
    // round(2^61 / (3 * 2^29)) = 1431655765, shift 30 + (-9) + 14 = 35:
    // 1024 * 1431655765 / 2^35 = 42.67 -> 43, real 43 * 0.1875 / 128.
    assert_eq!(l.output().flat(), &[43.0 * 0.1875 / 128.0]);
    let mut dy = Tensor::<S2<1, 1>>::zeros();
    dy.flat_mut()[0] = 0.1;
    l.backward(&bk, &ctx, &x, &mut dy, true).unwrap();
    // dy: 0.1 / (0.375 / 128) = 34.13 -> 34, 34 * 0.375 / 128 = 0.099609375.
    let g = 34.0 * 0.375 / 128.0;
    // dx = dy * w (f32, exact here).
    assert_eq!(l.input_grad().flat(), &[g * 0.5, g * -0.75]);
    // dw = dy * x = [0.0498046875, 0.02490234375]; Auto: max = 0.0498046875
    // = 51 * 2^-10 = 0.796875 * 2^-4; with the hardware clamp the range is
    // max * 128 / 127, M = ceil(51 * 2^25 * 128 / 127) = ceil(1724750646.4),
    // so the step is just above max / 127: the codes are 127 (the maximum,
    // not clamped) and 63 (63.4999...).
    let wq = l.weight.quant.grad_cfg;
    assert_eq!((wq.scale, wq.multiplier), (-4, 1_724_750_647));
    let rf = RealFormat::new(Format::new(8, -4).unwrap(), 1_724_750_647).unwrap();
    assert_eq!(l.weight.grad.flat(), &[rf.to_f32(127), rf.to_f32(63)]);
    assert_eq!(l.weight.quant.stats.grad, 0);
}

#[test]
fn linear_with_real_scale_weights_and_input() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    let mut l = Linear::<2, 1, 1>::new(1);
    l.use_bias = false;
    l.weight.master = [[0.5, -0.75]];
    // 4 bits, range 0.75: step 0.09375: 0.5 -> 5.33 -> 5, -0.75 -> -8.
    l.weight.quant.cfg = QuantConfig::fixed_real(4, 0, M075);
    let mut x = Tensor::<S2<1, 2>>::zeros();
    x.flat_mut().copy_from_slice(&[0.5, 0.25]);
    l.forward(&bk, &ctx, &x).unwrap();
    assert_eq!(l.weight.q.flat(), &[0.46875, -0.75]);
    assert_eq!(l.output().flat(), &[0.46875 * 0.5 - 0.75 * 0.25]);
}

#[test]
fn conv2d_requantizes_its_accumulator_by_multiplier_and_shift() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    // 1x1 convolution of a 1x2 image, one channel.
    let mut c = Conv2d::<1, 1, 1, 1, 1, 1, 2, 1, 2, 1>::new(1, (1, 1), (0, 0), (1, 1)).unwrap();
    c.use_bias = false;
    c.weight.master = [[[[0.5]]]];
    c.weight.quant.cfg = QuantConfig::fixed(8, 0);
    // Output: range 0.75 * 2^-1 = 0.375, step 0.375 / 128.
    c.out.quant.cfg = QuantConfig::fixed_real(8, -1, M075);
    let mut x = Tensor::<S4<1, 1, 1, 2>>::zeros();
    x.flat_mut().copy_from_slice(&[0.5, 0.25]);
    x.fmt = Some(Format::new(8, 0).unwrap());
    c.forward(&bk, &ctx, &x).unwrap();
    // Codes 64 * 64 = 4096 and 32 * 64 = 2048 at 2^-14; M_eff = 1431655765,
    // shift 30 + (-8) + 14 = 36: 85.33 -> 85 and 42.67 -> 43.
    let step = 0.375 / 128.0;
    assert_eq!(c.output().flat(), &[85.0 * step, 43.0 * step]);
}

#[test]
fn average_pooling_of_codes_to_a_real_scale() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    let mut p = AvgPool2d::<1, 2, 2, 1, 1, 1>::new(0, (2, 2), (2, 2), (0, 0)).unwrap();
    // Range 0.75: step 0.75 / 128.
    p.out.quant.cfg = QuantConfig::fixed_real(8, 0, M075);
    let mut x = Tensor::<S4<1, 1, 2, 2>>::zeros();
    x.flat_mut().copy_from_slice(&[0.5, 0.25, -0.125, 0.0]);
    x.fmt = Some(Format::new(8, 0).unwrap());
    p.forward(&bk, &ctx, &x).unwrap();
    // Mean 0.15625 / (0.75 / 128) = 26.67 -> 27.
    assert_eq!(p.output().flat(), &[27.0 * 0.75 / 128.0]);
}

#[test]
fn power_of_two_only_paths_refuse_a_multiplier() {
    // Code that needs a power-of-two format refuses a multiplier by name
    // instead of dropping it.
    let mut cfg = QuantConfig::fixed_real(8, 0, M075);
    assert_eq!(
        cfg.update_scale_codes(0, &[1i32]),
        Err(Error::Unsupported {
            field: "multiplier"
        })
    );
    assert_eq!(cfg.scale, 0);
}

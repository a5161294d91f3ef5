//! Per-group scales (`Group::Channel`, `Group::Batch`) through the layers.
//! Expected values are worked out by hand in the comments; the random
//! cases compare whole outputs with an element-by-element reference.

use fixnn::backend::RefBackend;
use fixnn::layers::{Conv2d, Layer, Linear, Quant};
use fixnn::model::{
    apply_configs, with_overrides, LoadEntry, Override, OverrideError, SavedConfigs, Select,
};
use fixnn::quant::{RealFormat, Stream};
use fixnn::tensor::{Ctx, Tensor, S2, S4};
use fixnn::{Error, Format, Group, QuantConfig, RangeMethod, Rounding};

fn grouped(mut c: QuantConfig, g: Group) -> QuantConfig {
    c.group = g;
    c
}

#[test]
fn weight_rows_get_their_own_scales_and_carry_a_wider_format() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    let mut fc = Linear::<3, 2, 1>::new(0);
    fc.use_bias = false;
    // Row 0: max 0.3 -> scale ceil(log2 0.3) = -1, step 2^-4 at 4 bits.
    // Row 1: max 3.0 -> scale 2, step 2^-1.
    fc.weight.master = [[0.3, -0.1, 0.05], [3.0, -1.2, 0.4]];
    fc.weight.quant.cfg = grouped(QuantConfig::auto(4), Group::Channel);
    let mut x = Tensor::<S2<1, 3>>::zeros();
    x.set_f32(&[1.0, 2.0, -4.0]).unwrap();
    fc.forward(&bk, &ctx, &x).unwrap();
    // 0.3/2^-4 = 4.8 -> 5; -1.6 -> -2; 0.8 -> 1.  3.0/0.5 = 6; -2.4 -> -2; 0.8 -> 1.
    assert_eq!(fc.weight.q.v, [[0.3125, -0.125, 0.0625], [3.0, -1.0, 0.5]]);
    assert_eq!(fc.weight.groups.0[0].scale, [-1, 2]);
    assert!(fc.weight.groups.0[0].set);
    // The config shows the largest range.
    assert_eq!(fc.weight.quant.cfg.scale, 2);
    // Scales -1..=2 at 4 bits: codes of 4 + 3 = 7 bits, scale 2 (step 2^-4).
    assert_eq!(fc.weight.q.fmt, Some(Format::new(7, 2).unwrap()));
    // So the product ran in integers; exact: 0.3125 - 0.25 - 0.25, 3 - 2 - 2.
    assert_eq!(fc.out.t.v, [[-0.1875, -1.0]]);
}

#[test]
fn channel_groups_of_nchw_activations_gather_across_the_batch() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    // N = 2, C = 3, H = 1, W = 2.
    let mut q = Quant::<S4<2, 3, 1, 2>>::new(1);
    q.out.quant.cfg = grouped(QuantConfig::auto(4), Group::Channel);
    let mut x = Tensor::<S4<2, 3, 1, 2>>::zeros();
    // Channel 0 peaks at 0.5 (item 0), channel 1 at 7.0 (item 1),
    // channel 2 at 0.2 (item 1). A reshape of the buffer into 3 rows of 4
    // would mix channels (row 1 = item 0 channel 2 + item 1 channel 0).
    #[rustfmt::skip]
    let v = [
        0.5, 0.25,   1.0, -0.75,   0.125, 0.0625,   // item 0: c0, c1, c2
        -0.375, 0.1, -7.0, 2.0,    0.2, -0.1,       // item 1
    ];
    x.set_f32(&v).unwrap();
    q.forward(&bk, &ctx, &x).unwrap();
    // Scales: c0 ceil(log2 0.5) = -1 (step 2^-4), c1 3 (step 1), c2 -2 (step 2^-5).
    assert_eq!(q.out.groups.channel[0].scale, [-1, 3, -2]);
    #[rustfmt::skip]
    let want = [
        0.4375, 0.25,  1.0, -1.0,  0.125, 0.0625,   // 0.5 saturates at 7/16; -0.75 -> -1 (tie to even)
        -0.375, 0.125, -7.0, 2.0,  0.1875, -0.09375, // 0.1 -> 1.6/16 -> 2/16; 0.2 -> 6.4 -> 6/32; -3.2 -> -3/32
    ];
    assert_eq!(q.output().flat(), &want);
    assert_eq!(q.out.sat[0][0][0], [true, false]);
    // Scales -2..=3: 4 + 5 = 9 bits at scale 3.
    assert_eq!(q.output().fmt, Some(Format::new(9, 3).unwrap()));
}

#[test]
fn batch_groups_and_eval_mode() {
    let bk = RefBackend;
    let mut q = Quant::<S2<2, 3>>::new(1);
    q.out.quant.cfg = grouped(QuantConfig::auto(8), Group::Batch);
    let mut x = Tensor::<S2<2, 3>>::zeros();
    x.set_f32(&[0.1, -0.2, 0.05, 10.0, 3.0, -1.0]).unwrap();
    q.forward(&bk, &Ctx::train(1, 0), &x).unwrap();
    // Item 0: max 0.2 -> scale -2; item 1: max 10 -> scale 4.
    assert_eq!(q.out.groups.batch[0].scale, [-2, 4]);
    // Eval: Auto acts as Fixed with the stored scales, even on new data.
    x.set_f32(&[1.0, 0.0, 0.0, 100.0, 0.0, 0.0]).unwrap();
    q.forward(&bk, &Ctx::eval(1), &x).unwrap();
    // Item 0 saturates at 127 * 2^-9, item 1 at 127 * 2^-3.
    assert_eq!(q.output().flat()[0], 127.0 / 512.0);
    assert_eq!(q.output().flat()[3], 127.0 / 8.0);
    assert_eq!(q.out.groups.batch[0].scale, [-2, 4]);
}

#[test]
fn fixed_before_any_auto_uses_the_config_scale_for_every_group() {
    let bk = RefBackend;
    let mut q = Quant::<S2<2, 2>>::new(1);
    q.out.quant.cfg = grouped(QuantConfig::fixed(4, 0), Group::Batch);
    let mut x = Tensor::<S2<2, 2>>::zeros();
    x.set_f32(&[0.3, -0.6, 2.0, 0.01]).unwrap();
    q.forward(&bk, &Ctx::train(1, 0), &x).unwrap();
    // Step 2^-3 everywhere: 2.4 -> 2, -4.8 -> -5, 16 -> 7 (clamped), 0.08 -> 0.
    assert_eq!(q.output().flat(), &[0.25, -0.625, 0.875, 0.0]);
    assert_eq!(q.output().fmt, Some(Format::new(4, 0).unwrap()));
    assert!(!q.out.groups.batch[0].set);
}

#[test]
fn real_valued_channel_scales() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    let mut fc = Linear::<2, 2, 1>::new(0);
    fc.use_bias = false;
    // Row 0: max 1.5 = 0.75 * 2^1; row 1: max 0.1.
    fc.weight.master = [[1.5, 0.3], [0.1, -0.05]];
    fc.weight.quant.cfg = grouped(QuantConfig::auto_real(4), Group::Channel);
    let mut x = Tensor::<S2<1, 2>>::zeros();
    x.set_f32(&[1.0, 1.0]).unwrap();
    fc.forward(&bk, &ctx, &x).unwrap();
    let g = &fc.weight.groups.0[0];
    assert_eq!(g.scale, [1, -3]);
    // The hardware clamp puts each row's maximum on the top code 7: range
    // max * 8 / 7. Row 0: M = ceil(0.75 * 2^31 * 8 / 7) = ceil(1840700269.7);
    // row 1: 0.1 is f32 0x3dcccccd = 0.8 * 2^-3 (significand << 7 =
    // 1717986944), M = ceil(1717986944 * 8 / 7) = ceil(1963413650.3).
    assert_eq!(g.multiplier, [1_840_700_270, 1_963_413_651]);
    // Row 0 step ~1.5 / 7: 1.5 -> 7, 0.3 -> 1.4 -> 1. Row 1 step ~0.1 / 7:
    // 0.1 -> 7, -0.05 -> -3.4999... -> -3.
    let r0 = RealFormat::new(Format::new(4, 1).unwrap(), 1_840_700_270).unwrap();
    let r1 = RealFormat::new(Format::new(4, -3).unwrap(), 1_963_413_651).unwrap();
    assert_eq!(fc.weight.q.v[0], [r0.to_f32(7), r0.to_f32(1)]);
    assert_eq!(fc.weight.q.v[1], [r1.to_f32(7), r1.to_f32(-3)]);
    assert_eq!(fc.weight.quant.stats.data, 0, "no maximum is clamped");
    assert_eq!(
        fc.weight.q.fmt, None,
        "real-valued groups are carried as f32"
    );
    assert_eq!(
        fc.weight.quant.cfg.multiplier, 1_840_700_270,
        "largest range on record"
    );
}

/// Every element quantized as a tensor-wide config with its group's scale
/// would quantize it, with the stochastic draw of its global index.
#[test]
fn grouped_quantization_matches_the_element_reference() {
    let bk = RefBackend;
    let s = Stream::new(9, 1, 0);
    for (case, rounding) in [Rounding::NearestEven, Rounding::Floor, Rounding::Stochastic]
        .into_iter()
        .enumerate()
    {
        let ctx = Ctx::train(3, case as u32);
        let mut q = Quant::<S4<3, 4, 2, 3>>::new(2);
        let mut cfg = grouped(QuantConfig::auto(6), Group::Channel);
        cfg.rounding = rounding;
        q.out.quant.cfg = cfg;
        let mut x = Tensor::<S4<3, 4, 2, 3>>::zeros();
        for (i, v) in x.flat_mut().iter_mut().enumerate() {
            let c = (i / 6) % 4;
            let u = (s.draw(i as u32 + 100 * case as u32) >> 8) as f32 / (1 << 24) as f32;
            // Channel c spans about 2^(2c - 3).
            *v = (2.0 * u - 1.0) * (1 << (2 * c)) as f32 / 8.0;
        }
        q.forward(&bk, &ctx, &x).unwrap();
        let scales = q.out.groups.channel[0].scale;
        let r = ctx.rounder(q.out.quant.id, rounding);
        let mut want = [0f32; 72];
        for (i, w) in want.iter_mut().enumerate() {
            let c = (i / 6) % 4;
            let f = Format::new(6, scales[c]).unwrap();
            let (code, _) = r.round_f32(i, x.flat()[i], f);
            *w = f.to_f32(code);
        }
        assert_eq!(q.output().flat(), &want[..], "{rounding:?}");
        // Each channel's scale is Max's scale of that channel alone.
        for (c, &scale) in scales.iter().enumerate() {
            let vals: Vec<f32> = (0..72)
                .filter(|i| (i / 6) % 4 == c)
                .map(|i| x.flat()[i])
                .collect();
            let one = fixnn::quant::range::choose_scale_f32(RangeMethod::Max, 6, rounding, &vals);
            assert_eq!(one, Ok(scale));
        }
    }
}

#[test]
fn conv_weights_per_output_channel_in_integers() {
    let bk = RefBackend;
    let ctx = Ctx::train(1, 0);
    let mut conv = Conv2d::<1, 2, 1, 1, 1, 3, 3, 3, 3, 1>::new(0, (1, 1), (0, 0), (1, 1)).unwrap();
    conv.use_bias = false;
    conv.weight.master[0][0][0][0] = 0.75;
    conv.weight.master[1][0][0][0] = -0.09;
    conv.weight.quant.cfg = grouped(QuantConfig::auto(8), Group::Channel);
    let mut x = Tensor::<S4<1, 1, 3, 3>>::zeros();
    x.quantize_test_values();
    conv.forward(&bk, &ctx, &x).unwrap();
    // Channel 0: scale 0 (step 2^-7), 0.75 exact. Channel 1: scale
    // ceil(log2 0.09) = -3 (step 2^-10): -92.16 -> -92.
    assert_eq!(conv.weight.groups.0[0].scale, [0, -3]);
    assert_eq!(conv.weight.q.v[1][0][0][0], -92.0 / 1024.0);
    assert_eq!(conv.weight.q.fmt, Some(Format::new(11, 0).unwrap()));
    for (i, &v) in x.flat().iter().enumerate() {
        assert_eq!(conv.out.t.flat()[i], v * 0.75);
        assert_eq!(conv.out.t.flat()[9 + i], v * (-92.0 / 1024.0));
    }
}

trait TestValues {
    fn quantize_test_values(&mut self);
}

impl TestValues for Tensor<S4<1, 1, 3, 3>> {
    fn quantize_test_values(&mut self) {
        let v: Vec<f32> = (0..9).map(|i| (i as f32 - 4.0) / 4.0).collect();
        self.set_f32(&v).unwrap();
        self.fmt = Some(Format::new(8, 1).unwrap()); // exact: multiples of 2^-2
    }
}

#[test]
fn refusals_name_the_problem() {
    // Auto with a group supports range Max only.
    let mut c = grouped(QuantConfig::auto(8), Group::Channel);
    c.range = RangeMethod::ThreeSigma;
    assert_eq!(c.validate(), Err(Error::Unsupported { field: "range" }));
    // Groups and zero points do not combine (yet).
    let mut z = grouped(QuantConfig::fixed(8, 0), Group::Channel);
    z.zero_point = 3;
    assert_eq!(
        z.validate(),
        Err(Error::Unsupported {
            field: "zero_point"
        })
    );
    // A parameter has no batch dimension.
    let mut fc = Linear::<2, 2, 1>::new(0);
    let batch = grouped(QuantConfig::auto(8), Group::Batch);
    let entries = [LoadEntry {
        name: "weight",
        kind: None,
        data: Some(&batch),
        grad: None,
    }];
    let report = apply_configs(&mut fc, &entries, true).unwrap_err();
    assert_eq!(report.total, 1);
    let text = format!("{report}");
    assert!(
        text.contains("weight.data") && text.contains("group"),
        "{text}"
    );
    assert_eq!(fc.weight.quant.cfg, QuantConfig::NONE);
    // Set directly, the first pass refuses it.
    fc.weight.quant.cfg = batch;
    let x = Tensor::<S2<1, 2>>::zeros();
    assert_eq!(
        fc.forward(&RefBackend, &Ctx::train(1, 0), &x),
        Err(Error::Unsupported { field: "group" })
    );
    // Activations keep power-of-two group scales only (one byte per group).
    let mut q = Quant::<S2<2, 3>>::new(1);
    let real = grouped(QuantConfig::auto_real(8), Group::Channel);
    let entries = [LoadEntry {
        name: "activation",
        kind: None,
        data: Some(&real),
        grad: None,
    }];
    let text = format!("{}", apply_configs(&mut q, &entries, true).unwrap_err());
    assert!(
        text.contains("activation.data") && text.contains("multiplier"),
        "{text}"
    );
    q.out.quant.cfg = real;
    assert_eq!(
        q.forward(&RefBackend, &Ctx::train(1, 0), &Tensor::zeros()),
        Err(Error::Unsupported {
            field: "multiplier"
        })
    );
    // Grouped overrides are refused; nothing changes.
    fc.weight.quant.cfg = QuantConfig::auto(8);
    let over = [Override::data(
        Select::Name("weight"),
        grouped(QuantConfig::auto(8), Group::Channel),
    )];
    let mut saved = [SavedConfigs::default(); 2];
    let r = with_overrides(&mut fc, &over, &mut saved, |_| ());
    assert!(matches!(
        r,
        Err(OverrideError::Invalid {
            error: Error::Unsupported { field: "group" },
            ..
        })
    ));
    assert_eq!(fc.weight.quant.cfg, QuantConfig::auto(8));
}

#[test]
fn replacing_a_grouped_config_forgets_its_scales() {
    let bk = RefBackend;
    let mut fc = Linear::<2, 2, 1>::new(0);
    fc.weight.master = [[0.3, 0.1], [3.0, 0.1]];
    let auto = grouped(QuantConfig::auto(8), Group::Channel);
    fc.weight.quant.cfg = auto;
    let x = Tensor::<S2<1, 2>>::zeros();
    fc.forward(&bk, &Ctx::train(1, 0), &x).unwrap();
    assert!(fc.weight.groups.0[0].set);
    // The same config again keeps them (a resumed run reloads its configs).
    let cur = fc.weight.quant.cfg;
    let same = [LoadEntry {
        name: "weight",
        kind: None,
        data: Some(&cur),
        grad: None,
    }];
    apply_configs(&mut fc, &same, true).unwrap();
    assert!(fc.weight.groups.0[0].set);
    // A different one forgets them: Fixed scale 0 then quantizes every row at scale 0.
    let fixed = grouped(QuantConfig::fixed(8, 0), Group::Channel);
    let other = [LoadEntry {
        name: "weight",
        kind: None,
        data: Some(&fixed),
        grad: None,
    }];
    apply_configs(&mut fc, &other, true).unwrap();
    assert!(!fc.weight.groups.0[0].set);
    fc.forward(&bk, &Ctx::train(1, 1), &x).unwrap();
    assert_eq!(fc.weight.q.v[1][0], 127.0 / 128.0);
}

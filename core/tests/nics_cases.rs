//! The cases of nics_fix_pt's own quantizer tests (tests/test_quant.py), and
//! the one documented difference: fixnn saturates at the largest code a
//! `bits`-bit register holds, `2^scale - step`, where nics_fix_pt clamps at
//! `+2^scale`.

use fixnn::quant::{self, mask, range, Format};
use fixnn::{Method, QuantConfig, RangeMethod, Rounder, Rounding};

fn fake_quant(cfg: &mut QuantConfig, data: &[f32]) -> (Vec<f32>, usize) {
    let mut x = data.to_vec();
    let r = quant::fake_quantize_f32(cfg, &mut x, &Rounder::default(), None).unwrap();
    (x, r.saturated)
}

#[test]
fn fixed_2_bits_scale_minus_1() {
    let mut cfg = QuantConfig::fixed(2, -1);
    let (out, sat) = fake_quant(&mut cfg, &[0.2513, -0.5, 0.0]);
    assert_eq!(out, [0.25, -0.5, 0.0]);
    assert_eq!(sat, 0);
    assert_eq!(cfg.format().unwrap().unwrap().step(), 0.25);
}

#[test]
fn fixed_16_bits_scale_minus_1() {
    let mut cfg = QuantConfig::fixed(16, -1);
    let (out, _) = fake_quant(&mut cfg, &[0.2513, -0.5, 0.0]);
    // nics_fix_pt: round(0.2513 / 2^-16) * 2^-16, computed here in f64 from the f32 input.
    let expected = ((0.2513f32 as f64) * 65536.0).round_ties_even() / 65536.0;
    assert_eq!(out, [expected as f32, -0.5, 0.0]);
    assert_eq!(cfg.format().unwrap().unwrap().step() as f64, 2f64.powi(-16));
}

#[test]
fn auto_keeps_scale_minus_1() {
    let mut cfg = QuantConfig::auto(2);
    cfg.scale = -1;
    let (out, _) = fake_quant(&mut cfg, &[0.2513, -0.5, 0.0]);
    assert_eq!(out, [0.25, -0.5, 0.0]);
    assert_eq!(cfg.scale, -1);
}

#[test]
fn auto_raises_the_scale() {
    let mut cfg = QuantConfig::auto(2);
    cfg.scale = -1;
    let (out, _) = fake_quant(&mut cfg, &[0.2513, -0.52, 0.0]);
    assert_eq!(out, [0.5, -0.5, 0.0]);
    assert_eq!(cfg.scale, 0, "out_scale 0 as in nics_fix_pt");
}

/// nics_fix_pt's `test_quantitize_gradient`: gradient [0.5, 0.26] with Auto,
/// 2 bits. nics_fix_pt gives [0.5, 0.25] (0.5 = +2^scale, a code a 2-bit
/// register cannot hold); fixnn saturates 0.5 to the largest code, 0.25,
/// counts the saturation and sets its straight-through bit.
#[test]
fn gradient_case_shows_the_documented_clamp_difference() {
    let mut cfg = QuantConfig::auto(2);
    let mut g = [0.5f32, 0.26];
    let mut m = [0u32; 1];
    let r = quant::fake_quantize_f32(&mut cfg, &mut g, &Rounder::default(), Some(&mut m)).unwrap();
    assert_eq!(cfg.scale, -1, "scale -1 as in nics_fix_pt");
    assert_eq!(g, [0.25, 0.25], "nics_fix_pt: [0.5, 0.25]");
    assert_eq!(r.saturated, 1);
    assert!(mask::is_set(&m, 0) && !mask::is_set(&m, 1));
}

#[test]
fn method_none_leaves_data_alone() {
    let mut cfg = QuantConfig::NONE;
    let (out, sat) = fake_quant(&mut cfg, &[0.2513, -0.52, 0.0]);
    assert_eq!(
        (out.as_slice(), sat),
        ([0.2513f32, -0.52, 0.0].as_slice(), 0)
    );
    assert_eq!(cfg.method, Method::None);
}

/// nics_fix_pt's RANGE_3SIGMA: scale = ceil(log2(3 std + |mean|)), std with n - 1.
#[test]
fn three_sigma() {
    let rn = Rounding::NearestEven;
    // mean 0, std sqrt(4/3) = 1.1547: bound 3.46 -> 2, where Max gives 0.
    let x = [1.0f32, -1.0, 1.0, -1.0];
    assert_eq!(
        range::choose_scale_f32(RangeMethod::ThreeSigma, 8, rn, &x),
        Ok(2)
    );
    assert_eq!(range::choose_scale_f32(RangeMethod::Max, 8, rn, &x), Ok(0));
    // Constant data: std 0, bound = |mean| = 0.75 -> 0; exactly 0.5 -> -1.
    assert_eq!(
        range::choose_scale_f32(RangeMethod::ThreeSigma, 8, rn, &[0.75; 5]),
        Ok(0)
    );
    assert_eq!(
        range::choose_scale_f32(RangeMethod::ThreeSigma, 8, rn, &[-0.5; 5]),
        Ok(-1)
    );
    // [0, 0, 0, 4]: mean 1, std 2, bound exactly 7 -> 3.
    assert_eq!(
        range::choose_scale_f32(RangeMethod::ThreeSigma, 8, rn, &[0.0, 0.0, 0.0, 4.0]),
        Ok(3)
    );
    // [0, 4]: mean 2, std 2.828, bound 10.49 -> 4. As integer codes at exponent -3: same.
    assert_eq!(
        range::choose_scale_f32(RangeMethod::ThreeSigma, 8, rn, &[0.0, 4.0]),
        Ok(4)
    );
    assert_eq!(
        range::choose_scale_codes(RangeMethod::ThreeSigma, 8, rn, -3, &[0i16, 32]),
        Ok(4)
    );
    // [0, 1, 2]: mean 1, std 1, bound exactly 4 = 2^2 -> 2; a hair more -> 3.
    assert_eq!(
        range::choose_scale_f32(RangeMethod::ThreeSigma, 8, rn, &[0.0, 1.0, 2.0]),
        Ok(2)
    );
    let above = [0.0, 1.0, f32::from_bits(2.0f32.to_bits() + 1)];
    assert_eq!(
        range::choose_scale_f32(RangeMethod::ThreeSigma, 8, rn, &above),
        Ok(3)
    );
}

#[test]
fn code_range_is_the_hardware_range() {
    for bits in 2..=16u8 {
        let f = Format::new(bits, 0).unwrap();
        let top = 1i32 << (bits - 1);
        assert_eq!((f.min_code(), f.max_code()), (-top, top - 1));
        // +2^scale (= 1.0 here) is one step above the largest value.
        assert_eq!(f.to_f32(f.max_code()) + f.step(), 1.0);
    }
}

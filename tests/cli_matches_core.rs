//! The `fixnn quantize` program and the core quantizer compute the same
//! bits: for random values, formats, methods, range methods and roundings,
//! the codes, values, scale and saturation count the CLI prints equal what
//! `fixnn::quant` returns when called directly.

use fixnn::quant::{self, Format};
use fixnn::{Method, QuantConfig, RangeMethod, Rounder, Rounding, Stream};
use proptest::prelude::*;

fn cli_json(args: &[String]) -> serde_json::Value {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut argv = vec![
        "fixnn".to_string(),
        "quantize".to_string(),
        "--json".to_string(),
    ];
    argv.extend(args.iter().cloned());
    let code = fixnn_std::cli::run(argv, &mut out, &mut err);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    serde_json::from_slice(&out).unwrap()
}

const RANGES: [(RangeMethod, &str); 6] = [
    (RangeMethod::Max, "max"),
    (RangeMethod::ThreeSigma, "3sigma"),
    (RangeMethod::MaxTenPercent, "max10"),
    (RangeMethod::Sweep, "sweep"),
    (RangeMethod::Running, "running"),
    (RangeMethod::MinMax, "minmax"),
];
const ROUNDINGS: [(Rounding, &str); 5] = [
    (Rounding::NearestEven, "nearest-even"),
    (Rounding::NearestAway, "nearest-away"),
    (Rounding::Floor, "floor"),
    (Rounding::Stochastic, "stochastic"),
    (Rounding::Tflite, "tflite"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn cli_equals_core(
        values in prop::collection::vec(-1000f32..1000.0, 1..40),
        bits in 2u8..=16,
        scale in any::<i8>(),
        fixed in any::<bool>(),
        ri in 0usize..RANGES.len(),
        oi in 0usize..ROUNDINGS.len(),
        seed in any::<u64>(),
        zraw in any::<u32>(),
    ) {
        let (range, range_name) = RANGES[ri];
        // Auto MinMax needs bits <= 15 (its zero point widens the codes).
        let bits = if range == RangeMethod::MinMax && !fixed { bits.min(15) } else { bits };
        // Fixed: a zero point anywhere in the register range (0 at 16 bits).
        let zero_point = if fixed && bits <= 15 && zraw % 2 == 0 {
            (zraw >> 1).rem_euclid(1 << bits) as i32 - (1 << (bits - 1))
        } else {
            0
        };
        let (rounding, rounding_name) = ROUNDINGS[oi];
        let mut args: Vec<String> = vec![
            "--bits".into(), bits.to_string(),
            "--scale".into(), scale.to_string(),
            "--method".into(), if fixed { "fixed" } else { "auto" }.into(),
            "--range".into(), range_name.into(),
            "--rounding".into(), rounding_name.into(),
            "--seed".into(), seed.to_string(),
            "--zero-point".into(), zero_point.to_string(),
            "--".into(),
        ];
        // f32 Display is the shortest text that parses back to the same f32.
        args.extend(values.iter().map(|v| v.to_string()));
        let json = cli_json(&args);

        let mut cfg = QuantConfig {
            method: if fixed { Method::Fixed } else { Method::Auto },
            bits,
            scale,
            range,
            rounding,
            zero_point,
            ..QuantConfig::NONE
        };
        let fmt: Format = cfg.update_scale_f32(&values).unwrap().unwrap();
        let mut codes = vec![0i16; values.len()];
        let rounder = Rounder::new(rounding, Stream::new(seed, 0, 0));
        let sat = quant::quantize_f32(&values, fmt, &rounder, &mut codes, None).unwrap();

        prop_assert_eq!(json["bits"].as_u64(), Some(bits as u64));
        prop_assert_eq!(json["scale"].as_i64(), Some(fmt.scale() as i64));
        prop_assert_eq!(json["step"].as_f64().map(|s| s as f32), Some(fmt.step()));
        prop_assert_eq!(json["saturated"].as_u64(), Some(sat as u64));
        prop_assert_eq!(json["zero_point"].as_i64().unwrap_or(0), fmt.zero_point() as i64);
        // The CLI prints registers q = k + z; the core's codes are k.
        let cli_codes: Vec<i16> = serde_json::from_value(json["codes"].clone()).unwrap();
        let registers: Vec<i16> = codes.iter().map(|&k| fmt.stored_code(k as i32) as i16).collect();
        prop_assert_eq!(&cli_codes, &registers);
        let cli_values: Vec<f32> = json["values"].as_array().unwrap().iter()
            .map(|v| v.as_f64().unwrap() as f32).collect();
        let core_values: Vec<f32> = codes.iter().map(|&c| fmt.to_f32(c as i32)).collect();
        prop_assert_eq!(cli_values, core_values);
    }
}

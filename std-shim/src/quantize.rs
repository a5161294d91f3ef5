//! `fixnn quantize`: quantize numbers with one [`QuantConfig`] and show the
//! codes, the values they stand for and the saturations.

use std::io::{Read, Write};
use std::path::Path;

use fixnn::quant::{self, Format};
use fixnn::{Method, QuantConfig, Rounder, Stream};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::cli::{MethodArg, QuantizeArgs};
use clap::ValueEnum;

/// Why `fixnn quantize` failed.
#[derive(Debug)]
pub enum Failure {
    /// Bad input: the message names what is wrong (exit status 2).
    Input(String),
    /// Writing the output failed (exit status 1).
    Output(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Output(e)
    }
}

fn is_zero(z: &i32) -> bool {
    *z == 0
}

/// The result of quantizing a list of values, as printed with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quantized {
    /// Bit width.
    pub bits: u8,
    /// Scale after `auto` chose it.
    pub scale: i8,
    /// Where codes saturate (printed in JSON only when `nics`).
    #[serde(skip_serializing_if = "fixnn::Clamp::is_hardware")]
    pub clamp: fixnn::Clamp,
    /// Zero point (printed in JSON only when not 0): `codes` are register
    /// values `q`, real value `(q - zero_point) * step`.
    #[serde(skip_serializing_if = "is_zero")]
    pub zero_point: i32,
    /// `2^(scale + 1 - bits)`.
    pub step: f32,
    /// Integer codes as a register holds them (`k + zero_point` for the
    /// core's code `k`); `null` for method `none`.
    pub codes: Option<Vec<i16>>,
    /// Real values of the codes (the inputs for method `none`).
    pub values: Vec<f32>,
    /// Number of values clamped to the code range.
    pub saturated: usize,
    /// Which values were clamped (the straight-through mask), not printed in JSON.
    #[serde(skip)]
    pub clamped: Vec<bool>,
}

/// Quantize `values` with `cfg` (Auto updates `cfg.scale`); stochastic
/// rounding uses the stream `(seed, tensor 0, step 0)`.
///
/// # Errors
///
/// The core error, formatted, if `values` is empty or holds NaN/infinity or
/// `cfg` is invalid.
pub fn quantize_values(
    cfg: &mut QuantConfig,
    values: &[f32],
    seed: u64,
) -> Result<Quantized, String> {
    let format = cfg.update_scale_f32(values).map_err(|e| e.to_string())?;
    let step = fixnn::quant::pow2_f32(cfg.scale as i32 + 1 - cfg.bits as i32);
    let Some(format) = format else {
        return Ok(Quantized {
            bits: cfg.bits,
            scale: cfg.scale,
            clamp: cfg.clamp,
            zero_point: 0,
            step,
            codes: None,
            values: values.to_vec(),
            saturated: 0,
            clamped: vec![false; values.len()],
        });
    };
    let rounder = Rounder::new(cfg.rounding, Stream::new(seed, 0, 0));
    let mut codes = vec![0i16; values.len()];
    let mut mask = vec![0u32; quant::mask::words(values.len())];
    let saturated = quant::quantize_f32(values, format, &rounder, &mut codes, Some(&mut mask))
        .map_err(|e| e.to_string())?;
    let mut dequantized = vec![0f32; values.len()];
    quant::dequantize(&codes, format, &mut dequantized).map_err(|e| e.to_string())?;
    // Registers: k + z lies in the bits-wide range, so it fits i16.
    let registers = codes
        .iter()
        .map(|&k| format.stored_code(k as i32) as i16)
        .collect();
    Ok(Quantized {
        bits: format.bits(),
        scale: format.scale(),
        clamp: format.clamp(),
        zero_point: format.zero_point(),
        step,
        codes: Some(registers),
        values: dequantized,
        saturated,
        clamped: (0..values.len())
            .map(|i| quant::mask::is_set(&mask, i))
            .collect(),
    })
}

/// Run `fixnn quantize` with parsed arguments.
///
/// # Errors
///
/// [`Failure::Input`] for bad values or files, [`Failure::Output`] if `out`
/// cannot be written.
pub fn run(args: &QuantizeArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let mut values = Vec::new();
    if let Some(path) = &args.input {
        values.extend(read_input(path).map_err(Failure::Input)?);
    }
    for (i, text) in args.values.iter().enumerate() {
        values
            .push(parse_number(text).map_err(|m| Failure::Input(format!("value {}: {m}", i + 1)))?);
    }
    if values.is_empty() {
        return Err(Failure::Input(
            "no values given (pass VALUES or --input FILE)".into(),
        ));
    }
    let method = match (args.method, args.scale) {
        (Some(m), _) => m.into(),
        (None, Some(_)) => Method::Fixed,
        (None, None) => Method::Auto,
    };
    let mut cfg = QuantConfig {
        method,
        bits: args.bits,
        scale: args.scale.unwrap_or(0),
        range: args.range.into(),
        rounding: args.rounding.into(),
        clamp: args.clamp.into(),
        zero_point: args.zero_point,
        ..QuantConfig::NONE
    };
    let q = quantize_values(&mut cfg, &values, args.seed).map_err(Failure::Input)?;
    if args.json {
        serde_json::to_writer(&mut *out, &q).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        write_table(out, args, method, &values, &q)?;
    }
    Ok(())
}

/// Parse one number: any f32 literal Rust accepts (`0.25`, `-1e-3`); the
/// value is rounded to the nearest f32. NaN and infinities (including
/// literals too large for f32) are refused.
fn parse_number(text: &str) -> Result<f32, String> {
    let v: f32 = text
        .trim()
        .parse()
        .map_err(|_| format!("cannot parse '{text}' as a number"))?;
    if !v.is_finite() {
        return Err(format!("'{text}' is not a finite f32"));
    }
    Ok(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValuesObject<'a> {
    #[serde(borrow)]
    values: Vec<&'a RawValue>,
}

/// Read the values of `--input`: a JSON array of numbers, or an object with
/// one key `values` holding one. Numbers are parsed from their JSON text
/// straight to f32 (one rounding, as on the command line).
fn read_input(path: &Path) -> Result<Vec<f32>, String> {
    let shown = path.display();
    let mut text = String::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text))
    };
    read.map_err(|e| format!("cannot read --input {shown}: {e}"))?;
    crate::configs::check_json(&text).map_err(|e| format!("--input {shown}: {e}"))?;
    let raw: Vec<&RawValue> = match serde_json::from_str::<Vec<&RawValue>>(&text) {
        Ok(v) => v,
        Err(array_err) => match serde_json::from_str::<ValuesObject>(&text) {
            Ok(o) => o.values,
            Err(_) => {
                return Err(format!(
                    "--input {shown}: expected a JSON array of numbers or {{\"values\": [...]}}: {array_err}"
                ))
            }
        },
    };
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            let t = r.get();
            if !t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
                return Err(format!("--input {shown}: element {i} is not a number: {t}"));
            }
            parse_number(t).map_err(|m| format!("--input {shown}: element {i}: {m}"))
        })
        .collect()
}

/// The name of a `--method`, `--range` or `--rounding` value as typed.
fn arg_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

fn write_table(
    out: &mut dyn Write,
    args: &QuantizeArgs,
    method: Method,
    inputs: &[f32],
    q: &Quantized,
) -> std::io::Result<()> {
    let method = match method {
        Method::None => MethodArg::None,
        Method::Auto => MethodArg::Auto,
        Method::Fixed => MethodArg::Fixed,
    };
    let step_exp = q.scale as i32 + 1 - q.bits as i32;
    write!(
        out,
        "format: {} bits, scale {}, step {} (2^{step_exp})",
        q.bits, q.scale, q.step
    )?;
    if q.zero_point != 0 {
        write!(out, ", zero point {}", q.zero_point)?;
    }
    if let Ok(f) =
        Format::with_clamp(q.bits, q.scale, q.clamp).and_then(|f| f.with_zero_point(q.zero_point))
    {
        write!(
            out,
            ", range [{}, {}]",
            f.to_f32(f.min_code()),
            f.to_f32(f.max_code())
        )?;
    }
    writeln!(
        out,
        "; method {}, range {}, rounding {}, clamp {}",
        arg_name(method),
        arg_name(args.range),
        arg_name(args.rounding),
        arg_name(args.clamp)
    )?;
    writeln!(
        out,
        "{:>6} {:>16} {:>7} {:>16}  saturated",
        "index", "input", "code", "value"
    )?;
    for (i, (&x, &v)) in inputs.iter().zip(&q.values).enumerate() {
        let code = match &q.codes {
            Some(c) => c[i].to_string(),
            None => "-".into(),
        };
        let sat = q.clamped[i];
        writeln!(
            out,
            "{i:>6} {x:>16} {code:>7} {v:>16}  {}",
            if sat { "yes" } else { "" }
        )?;
    }
    writeln!(out, "saturated: {} of {}", q.saturated, inputs.len())
}

//! Quantize a small weight vector the way a layer does: choose the scale
//! with Auto, quantize to 8-bit codes with stochastic rounding, requantize a
//! wide accumulator, and read the straight-through mask.
//!
//! Run: `cargo run -p fixnn-examples --example quantize`

use fixnn::quant::{self, mask};
use fixnn::{QuantConfig, Result, Rounder, Rounding, Stream};

fn main() -> Result<()> {
    let weights = [0.31f32, -0.07, 0.002, -0.45, 0.12, 0.5];

    // Auto with the Max range method: scale = ceil(log2(max |w|)) = -1.
    let mut cfg = QuantConfig::auto(8);
    cfg.rounding = Rounding::Stochastic;
    let fmt = cfg
        .update_scale_f32(&weights)?
        .ok_or(fixnn::Error::NoFormat)?;
    println!(
        "format: {} bits, scale {}, step {}",
        fmt.bits(),
        fmt.scale(),
        fmt.step()
    );

    // Seeded stochastic rounding: (seed 42, tensor 0, step 0).
    let rounder = Rounder::new(cfg.rounding, Stream::new(42, 0, 0));
    let mut codes = [0i8; 6];
    let mut sat = [0u32; mask::words(6)];
    let n = quant::quantize_f32(&weights, fmt, &rounder, &mut codes, Some(&mut sat))?;
    let mut values = [0f32; 6];
    quant::dequantize(&codes, fmt, &mut values)?;
    for i in 0..weights.len() {
        println!(
            "  w[{i}] = {:>7} -> code {:>4} = {:>11}{}",
            weights[i],
            codes[i],
            values[i],
            if mask::is_set(&sat, i) {
                "  (saturated: zero gradient)"
            } else {
                ""
            }
        );
    }
    println!("saturated: {n}");

    // A dot product of the codes with themselves, accumulated in i32 at
    // exponent 2 * step_exp, requantized back to the weights' format.
    let acc: i32 = codes.iter().map(|&c| c as i32 * c as i32).sum();
    let mut out = [0i8; 1];
    let nearest = Rounder::new(Rounding::NearestEven, Stream::default());
    let clamped = quant::requantize(&[acc], 2 * fmt.step_exp(), fmt, &nearest, &mut out, None)?;
    println!(
        "sum of squares: accumulator {acc} (= {}) -> code {} = {}{}",
        acc as f32 * quant::pow2_f32(2 * fmt.step_exp()),
        out[0],
        fmt.to_f32(out[0] as i32),
        if clamped > 0 { " (saturated)" } else { "" }
    );
    Ok(())
}

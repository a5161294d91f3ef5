//! Arithmetic shared by the layers whose output is a sum of products plus
//! a per-channel bias ([`Linear`](super::Linear), [`Conv2d`](super::Conv2d),
//! [`ConvBn`](super::ConvBn)): choosing the integer or f32 path, adding the
//! bias exactly, and finishing gradients.
//!
//! Layouts are `[batch][channel][spatial]` flattened: a linear layer has
//! `spatial = 1`, a convolution `spatial = OH * OW`.

use crate::backend::{product_exp, AccOut, Operand};
use crate::error::Result;
use crate::kernels::CodeConv;
use crate::quant::{acc_to_f32, Format};
use crate::tensor::{Act, Ctx, Param, Shape, Tensor, S1};

/// Bits an accumulator of `k` products of codes of `a` and `b` can need,
/// sign included: `(bits_a - 1) + (bits_b - 1) + ceil(log2 k) + 1`, with
/// each format's [`code_bits`](Format::code_bits) (one more for nics_fix_pt's clamp).
pub(crate) fn acc_bits(a: Option<Format>, b: Option<Format>, k: usize) -> u32 {
    let bits = |f: Option<Format>| f.map_or(16, |f| f.code_bits() as u32);
    let log_k = usize::BITS - k.saturating_sub(1).leading_zeros();
    bits(a) - 1 + bits(b) - 1 + log_k + 1
}

/// The exponent at which products (exponent `e`, needing `acc_bits`) and a
/// bias (exponent `eb`) are summed: the finer of the two when the shifted
/// accumulator still fits 62 bits (the sum is then exact), else `e` (the
/// bias is rounded to it).
pub(crate) fn sum_exp(e: i32, eb: i32, acc_bits: u32) -> i32 {
    if eb < e && acc_bits as i64 + (e - eb) as i64 <= 62 {
        eb
    } else {
        e
    }
}

/// `code * 2^from` expressed at exponent `to`: an exact left shift when
/// `from >= to`, else rounded to nearest, ties to even.
pub(crate) fn align_to(code: i64, from: i32, to: i32) -> i64 {
    if from >= to {
        let s = (from - to).min(46) as u32;
        code << s
    } else {
        let s = (to - from).min(62) as u32;
        let floor = code >> s;
        let rem = code - (floor << s);
        let half = 1i64 << (s - 1);
        if rem > half || (rem == half && floor & 1 == 1) {
            floor + 1
        } else {
            floor
        }
    }
}

/// The operands of a product layer's forward pass.
#[derive(Clone, Copy)]
pub(crate) struct Products<'a> {
    /// The input.
    pub x: Operand<'a>,
    /// The weight.
    pub w: Operand<'a>,
    /// Products summed per output.
    pub k: usize,
    /// Output elements per channel and batch item.
    pub spatial: usize,
}

/// The forward pass of a product layer after its parameters are refreshed:
/// `compute` writes the sums of products of `p.x` and `p.w` into the
/// [`AccOut`] it is given; the bias (one value per channel, `None` without
/// bias) is added exactly as documented on [`Linear`](super::Linear), and
/// `out` is requantized by its data config. `acc` is the integer scratch
/// (`S::LEN` elements).
pub(crate) fn forward<S: Shape, const C: usize>(
    ctx: &Ctx,
    out: &mut Act<S>,
    acc: &mut [i64],
    bias: Option<&Tensor<S1<C>>>,
    p: Products<'_>,
    compute: impl FnOnce(AccOut<'_>) -> Result<()>,
) -> Result<()> {
    let (x, w, k) = (p.x, p.w, p.k);
    let spatial = p.spatial.max(1);
    match (product_exp(x, w), bias) {
        (Some(e), None) => {
            compute(AccOut::Int(acc))?;
            out.set_from_acc(ctx, acc, e)
        }
        (Some(e), Some(b)) => match b.fmt {
            Some(bf) => {
                compute(AccOut::Int(acc))?;
                let exp = sum_exp(e, bf.step_exp(), acc_bits(x.fmt, w.fmt, k));
                let up = (e - exp) as u32;
                // Each bias aligned once.
                let mut biases = [0i64; C];
                for (a, &bv) in biases.iter_mut().zip(b.v.iter()) {
                    *a = align_to(bf.code_of(bv) as i64, bf.step_exp(), exp);
                }
                crate::accel::add_bias(acc, &biases, spatial, up);
                out.set_from_acc(ctx, acc, exp)
            }
            None => {
                // Integer products, full-precision bias: finish in f32.
                compute(AccOut::Int(acc))?;
                // Element `k` is in chunk `k / spatial`, of channel
                // `(k / spatial) % C`. (Not `chunks_mut(spatial).zip(..)`:
                // on thumbv6m that left a division-by-zero panic path.)
                let ys = out.t.flat_mut();
                for (k, (y, &a)) in ys.iter_mut().zip(acc.iter()).enumerate() {
                    *y = acc_to_f32(a, e) + b.v[(k / spatial) % C];
                }
                out.quantize(ctx)
            }
        },
        (None, bias) => {
            compute(AccOut::Float(out.t.flat_mut()))?;
            if let Some(b) = bias {
                for (i, ys) in out.t.flat_mut().chunks_mut(spatial).enumerate() {
                    for y in ys {
                        *y += b.v[i % C];
                    }
                }
            }
            out.quantize(ctx)
        }
    }
}

/// `a = (a << up).saturating_add(bias[c])` for every accumulator `a` of
/// channel `c`: chunk `i` of `spatial` elements belongs to channel
/// `i % bias.len()` (compiled once per instruction set, see
/// [`crate::accel`]).
#[inline(always)]
pub(crate) fn add_bias(acc: &mut [i64], bias: &[i64], spatial: usize, up: u32) {
    // Batch item by batch item (`spatial * C` elements): each channel's
    // chunk in turn. Every element is computed on its own, so the order
    // does not matter; this one vectorises for `spatial == 1` (linear
    // layers), where chunk by chunk did not.
    let spatial = spatial.max(1);
    let item = spatial.saturating_mul(bias.len()).max(1);
    for row in acc.chunks_mut(item) {
        if spatial == 1 {
            for (a, &b) in row.iter_mut().zip(bias) {
                *a = (*a << up).saturating_add(b);
            }
        } else {
            for (chunk, &b) in row.chunks_mut(spatial).zip(bias) {
                for a in chunk {
                    *a = (*a << up).saturating_add(b);
                }
            }
        }
    }
}

/// `sum over batch and spatial positions of dy`, per channel: integer sums
/// of codes when `dy` is quantized, else f32 in index order; stored as the
/// bias gradient (quantized by its grad config, masked where it saturated).
pub(crate) fn bias_grad<S: Shape, const C: usize>(
    ctx: &Ctx,
    bias: &mut Param<S1<C>>,
    dy: &Tensor<S>,
    spatial: usize,
) -> Result<()> {
    let spatial = spatial.max(1);
    match dy.fmt {
        Some(f) => {
            let mut sums = [0i64; C];
            // Codes (every value below 2^31 steps, as the quantizers
            // write them): `v * 2^-step_exp` truncated is `code_of(v)` (see
            // `CodeConv`), one multiply instead of a split into significand
            // and exponent. Batch item by batch item, each channel's chunk
            // in turn: the sums take their terms in index order, as below.
            let big = f32::from_bits(crate::quant::range::max_abs_bits(dy.flat()));
            match CodeConv::new(f).filter(|c| c.code_f32(big) < 2_147_483_648.0) {
                Some(conv) => {
                    let item = spatial.saturating_mul(C).max(1);
                    for row in dy.flat().chunks(item) {
                        for (s, chunk) in sums.iter_mut().zip(row.chunks(spatial)) {
                            for &v in chunk {
                                *s += conv.code(v) as i64;
                            }
                        }
                    }
                }
                None => {
                    for (i, chunk) in dy.flat().chunks(spatial).enumerate() {
                        for &v in chunk {
                            sums[i % C] += f.code_of(v) as i64;
                        }
                    }
                }
            }
            bias.set_grad_acc(ctx, &sums, f.step_exp())
        }
        None => {
            let sums = &mut bias.grad.v;
            sums.fill(0.0);
            // Chunk `i` belongs to channel `i % C`: batch item by batch
            // item, each channel's sum takes its terms in index order (the
            // same order as chunk by chunk), and the loop over channels
            // vectorises.
            let item = spatial.saturating_mul(C).max(1);
            for row in dy.flat().chunks(item) {
                if spatial == 1 {
                    for (s, &v) in sums.iter_mut().zip(row) {
                        *s += v;
                    }
                } else {
                    for (s, chunk) in sums.iter_mut().zip(row.chunks(spatial)) {
                        for &v in chunk {
                            *s += v;
                        }
                    }
                }
            }
            bias.finish_grad(ctx)
        }
    }
}

/// The weight gradient: `compute` writes the sums of products of `dy` and
/// `x`; integer sums go through `wacc` and the grad config, f32 sums are
/// written in place and quantized.
pub(crate) fn weight_grad<S: Shape>(
    ctx: &Ctx,
    weight: &mut Param<S>,
    wacc: &mut [i64],
    dy: Operand<'_>,
    x: Operand<'_>,
    compute: impl FnOnce(AccOut<'_>) -> Result<()>,
) -> Result<()> {
    match product_exp(dy, x) {
        Some(e) => {
            compute(AccOut::Int(wacc))?;
            weight.set_grad_acc(ctx, wacc, e)
        }
        None => {
            compute(AccOut::Float(weight.grad.flat_mut()))?;
            weight.finish_grad(ctx)
        }
    }
}

/// The input gradient at full precision: `compute` writes the sums of
/// products of `dy` and `w`; integer sums (through `xacc`) are converted
/// with [`acc_to_f32`].
pub(crate) fn input_grad(
    dx: &mut [f32],
    xacc: &mut [i64],
    dy: Operand<'_>,
    w: Operand<'_>,
    compute: impl FnOnce(AccOut<'_>) -> Result<()>,
) -> Result<()> {
    match product_exp(dy, w) {
        Some(e) => {
            compute(AccOut::Int(xacc))?;
            crate::accel::accs_to_f32(dx, xacc, e);
            Ok(())
        }
        None => compute(AccOut::Float(dx)),
    }
}

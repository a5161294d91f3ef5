//! [`Linear`]: a fully connected layer (nics_fix_pt's `Linear_fix`).

use super::Layer;
use crate::backend::{product_exp, AccOut, Backend, LinearGeom};
use crate::error::Result;
use crate::tensor::{Act, Ctx, Param, ParamMut, Tensor, ID_STRIDE, S1, S2};

/// `y[b][o] = sum_i x[b][i] * w[o][i] + bias[o]`, batch `B`.
///
/// Tensors (ids `id * 16 + k`): `weight` `[OUT][IN]` (k = 0), `bias` `[OUT]`
/// (k = 1), output `out` `[B][OUT]` (k = 2).
///
/// # Arithmetic
///
/// With `x` and `weight` quantized, `sum_i x * w` is an exact `i64` sum of
/// code products at exponent `e = step_exp(x) + step_exp(w)`. A quantized
/// bias is added exactly: at `e` when its step is coarser, and at the
/// bias's finer exponent otherwise, the accumulator shifted left (when that
/// could need more than 62 bits, the bias is instead rounded to `e`,
/// nearest-even, as hardware that adds it in the accumulator does). The sum
/// is requantized by the output config (`Method::None`: converted to f32). If `x` or
/// `weight` is at full precision the sum is f32 (`i` ascending) and the bias
/// is added last; a full-precision bias with integer products converts the
/// accumulator to f32 first.
///
/// Backward: `dbias[o] = sum_b dy[b][o]`, `dw = dy^T x` (sums over `b`
/// ascending), `dx = dy w` (sums over `o` ascending), each integer when both
/// operands are quantized.
pub struct Linear<const IN: usize, const OUT: usize, const B: usize> {
    /// Weight `[OUT][IN]`.
    pub weight: Param<S2<OUT, IN>>,
    /// Bias `[OUT]`.
    pub bias: Param<S1<OUT>>,
    /// Whether the bias is used (a layer without bias keeps it at zero).
    pub use_bias: bool,
    /// Output `[B][OUT]`, kept for the next layer's backward.
    pub out: Act<S2<B, OUT>>,
    acc: [[i64; OUT]; B],
    wacc: [[i64; IN]; OUT],
    xacc: [[i64; IN]; B],
}

impl<const IN: usize, const OUT: usize, const B: usize> Linear<IN, OUT, B> {
    /// A layer with zero weights and bias, all configs `None`; `id` numbers
    /// its tensors (`id * 16 + k`).
    pub fn new(id: u32) -> Self {
        let base = id.wrapping_mul(ID_STRIDE);
        Linear {
            weight: Param::new(base),
            bias: Param::new(base + 1),
            use_bias: true,
            out: Act::new(base + 2),
            acc: [[0; OUT]; B],
            wacc: [[0; IN]; OUT],
            xacc: [[0; IN]; B],
        }
    }

    const GEOM: LinearGeom = LinearGeom {
        batch: B,
        inp: IN,
        out: OUT,
    };
}

/// Bits an accumulator of `k` products of codes of `a` and `b` can need,
/// sign included: `(bits_a - 1) + (bits_b - 1) + ceil(log2 k) + 1`.
pub(crate) fn acc_bits(
    a: Option<crate::quant::Format>,
    b: Option<crate::quant::Format>,
    k: usize,
) -> u32 {
    let bits = |f: Option<crate::quant::Format>| f.map_or(16, |f| f.bits() as u32);
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

/// `code * 2^from` expressed at exponent `to` (see [`Linear`]'s bias rule).
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

impl<const IN: usize, const OUT: usize, const B: usize> Layer for Linear<IN, OUT, B> {
    type In = S2<B, IN>;
    type Out = S2<B, OUT>;

    fn forward<Bk: Backend>(&mut self, bk: &Bk, ctx: &Ctx, x: &Tensor<S2<B, IN>>) -> Result<()> {
        self.weight.refresh(ctx)?;
        if self.use_bias {
            self.bias.refresh(ctx)?;
        }
        let (xo, wo) = (x.operand(), self.weight.q.operand());
        let bias_fmt = if self.use_bias { self.bias.q.fmt } else { None };
        match product_exp(xo, wo) {
            Some(e) if bias_fmt.is_some() || !self.use_bias => {
                bk.linear(Self::GEOM, xo, wo, AccOut::Int(self.acc.as_flattened_mut()))?;
                let mut exp = e;
                if let Some(bf) = bias_fmt {
                    let bits = acc_bits(xo.fmt, wo.fmt, IN);
                    exp = sum_exp(e, bf.step_exp(), bits);
                    let up = (e - exp) as u32;
                    for row in self.acc.iter_mut() {
                        for (a, &b) in row.iter_mut().zip(&self.bias.q.v) {
                            let bias = align_to(bf.code_of(b) as i64, bf.step_exp(), exp);
                            *a = (*a << up).saturating_add(bias);
                        }
                    }
                }
                self.out.set_from_acc(ctx, self.acc.as_flattened(), exp)
            }
            Some(e) => {
                // Integer products, full-precision bias: finish in f32.
                bk.linear(Self::GEOM, xo, wo, AccOut::Int(self.acc.as_flattened_mut()))?;
                for (row, arow) in self.out.t.v.iter_mut().zip(&self.acc) {
                    for ((y, &a), &b) in row.iter_mut().zip(arow).zip(&self.bias.q.v) {
                        *y = crate::quant::acc_to_f32(a, e) + b;
                    }
                }
                self.out.quantize(ctx)
            }
            None => {
                bk.linear(
                    Self::GEOM,
                    xo,
                    wo,
                    AccOut::Float(self.out.t.v.as_flattened_mut()),
                )?;
                if self.use_bias {
                    for row in self.out.t.v.iter_mut() {
                        for (y, &b) in row.iter_mut().zip(&self.bias.q.v) {
                            *y += b;
                        }
                    }
                }
                self.out.quantize(ctx)
            }
        }
    }

    fn output(&self) -> &Tensor<S2<B, OUT>> {
        &self.out.t
    }

    fn backward<Bk: Backend>(
        &mut self,
        bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<S2<B, IN>>,
        dy: &mut Tensor<S2<B, OUT>>,
        dx: Option<&mut Tensor<S2<B, IN>>>,
    ) -> Result<()> {
        self.out.prepare_grad(ctx, dy)?;
        let dyo = dy.operand();
        if self.use_bias {
            match dy.fmt {
                Some(f) => {
                    let mut sums = [0i64; OUT];
                    for row in dy.v.iter() {
                        for (s, &g) in sums.iter_mut().zip(row) {
                            *s += f.code_of(g) as i64;
                        }
                    }
                    self.bias.set_grad_acc(ctx, &sums, f.step_exp())?;
                }
                None => {
                    let g = &mut self.bias.grad.v;
                    g.fill(0.0);
                    for row in dy.v.iter() {
                        for (s, &v) in g.iter_mut().zip(row) {
                            *s += v;
                        }
                    }
                    self.bias.finish_grad(ctx)?;
                }
            }
        }
        match product_exp(dyo, x.operand()) {
            Some(e) => {
                bk.linear_weight_grad(
                    Self::GEOM,
                    dyo,
                    x.operand(),
                    AccOut::Int(self.wacc.as_flattened_mut()),
                )?;
                self.weight.set_grad_acc(ctx, self.wacc.as_flattened(), e)?;
            }
            None => {
                bk.linear_weight_grad(
                    Self::GEOM,
                    dyo,
                    x.operand(),
                    AccOut::Float(self.weight.grad.v.as_flattened_mut()),
                )?;
                self.weight.finish_grad(ctx)?;
            }
        }
        if let Some(dx) = dx {
            let wo = self.weight.q.operand();
            match product_exp(dyo, wo) {
                Some(e) => {
                    bk.linear_input_grad(
                        Self::GEOM,
                        dyo,
                        wo,
                        AccOut::Int(self.xacc.as_flattened_mut()),
                    )?;
                    for (d, &a) in dx.flat_mut().iter_mut().zip(self.xacc.as_flattened()) {
                        *d = crate::quant::acc_to_f32(a, e);
                    }
                }
                None => bk.linear_input_grad(Self::GEOM, dyo, wo, AccOut::Float(dx.flat_mut()))?,
            }
            dx.fmt = None;
        }
        Ok(())
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(ParamMut<'_>)) {
        f(self.weight.view());
        if self.use_bias {
            f(self.bias.view());
        }
    }
}

//! Optimizers that update master parameters.

use crate::error::Result;
use crate::layers::Layer;
use crate::model::{Kind, ParamState, TensorMut, Visitor};
use crate::quant::{self, QuantConfig, Rounding};
use crate::tensor::{Ctx, GRAD_ID};

/// Keep master values and momentum as fixed-point codes: after every
/// update each is requantized to `bits` bits with an Auto (Max) scale and
/// stochastic rounding, so updates much smaller than a step still move the
/// value in expectation. For devices without an FPU or with little RAM
/// (nics_fix_pt keeps f32 masters).
///
/// In this version the codes are still stored in the parameters' f32
/// buffers (as exact values), so the RAM saving is not yet realised; the
/// numbers are those of a fixed-point master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FixedMaster {
    /// Bits of the master codes (2..=16).
    pub bits: u8,
    /// Bits of the momentum codes (2..=16).
    pub momentum_bits: u8,
}

/// Stochastic gradient descent with momentum and weight decay, as
/// `torch.optim.SGD` (no dampening, no Nesterov):
///
/// `d = g + weight_decay * p; m = momentum * m + d; p = p - lr * m`,
///
/// element by element in f32 in that order (the momentum buffer starts at
/// zero, which equals PyTorch's first-step initialisation `m = d`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor (0 for plain SGD).
    pub momentum: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// `Some`: fixed-point master values and momentum.
    pub fixed_master: Option<FixedMaster>,
}

impl Sgd {
    /// Plain f32 masters with the given hyper-parameters.
    pub const fn new(lr: f32, momentum: f32, weight_decay: f32) -> Self {
        Sgd {
            lr,
            momentum,
            weight_decay,
            fixed_master: None,
        }
    }

    /// Update one parameter (master values, momentum, gradient; `id` keys
    /// the stochastic rounding of a fixed-point master). With a fixed-point
    /// master, master and momentum are then requantized with stochastic
    /// rounding keyed by `(ctx.seed, id | 0x4000_0000 (master) or
    /// id | 0x2000_0000 (momentum), ctx.step)`.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Invalid`] if `lr`, `momentum` or `weight_decay` is
    /// NaN or infinite (nothing is updated then); a fixed-point master with
    /// bits outside `2..=16`, or a non-finite master value
    /// ([`crate::Error::NonFinite`]); values are updated but not
    /// requantized then.
    ///
    /// Finite hyper-parameters can still overflow a master value to
    /// infinity (an `lr` near `f32::MAX`): f32 masters are not checked after
    /// the update (it would cost a pass per step); the next forward pass
    /// refuses the value ([`crate::Error::NonFinite`] from the quantizer or
    /// the loss).
    pub fn update(&self, ctx: &Ctx, id: u32, p: ParamState<'_>) -> Result<()> {
        if !(self.lr.is_finite() && self.momentum.is_finite() && self.weight_decay.is_finite()) {
            return Err(crate::Error::Invalid {
                what: "SGD lr, momentum and weight_decay must be finite",
            });
        }
        let h = [self.lr, self.momentum, self.weight_decay];
        crate::accel::split_pass(
            p.master.len(),
            (&mut *p.master, (&mut *p.momentum, p.grad)),
            |(w, (m, g)), _| crate::accel::sgd(w, m, g, h),
            |(), ()| (),
        );
        let Some(fm) = self.fixed_master else {
            return Ok(());
        };
        let id = id & !GRAD_ID;
        for (bits, tag, v) in [
            (fm.bits, 0x4000_0000, p.master),
            (fm.momentum_bits, 0x2000_0000, p.momentum),
        ] {
            let mut cfg = QuantConfig {
                rounding: Rounding::Stochastic,
                ..QuantConfig::auto(bits)
            };
            if let Some(f) = cfg.update_scale_f32(v)? {
                quant::fake_quantize_in_place(v, f, &ctx.rounder(id | tag, Rounding::Stochastic))?;
            }
        }
        Ok(())
    }

    /// Update every parameter of `model` (after its backward pass), in the
    /// order of [`Layer::visit`].
    ///
    /// # Errors
    ///
    /// The first error of [`Sgd::update`]; later parameters are still updated.
    pub fn step<L: Layer>(&self, ctx: &Ctx, model: &mut L) -> Result<()> {
        struct Step<'a> {
            opt: &'a Sgd,
            ctx: &'a Ctx,
            result: Result<()>,
        }
        impl Visitor for Step<'_> {
            fn enter(&mut self, _: &str) {}
            fn leave(&mut self) {}
            fn tensor(&mut self, t: TensorMut<'_>) {
                if let (Kind::Param, Some(p)) = (t.kind, t.param) {
                    let r = self.opt.update(self.ctx, t.quant.id, p);
                    if self.result.is_ok() {
                        self.result = r;
                    }
                }
            }
        }
        let mut s = Step {
            opt: self,
            ctx,
            result: Ok(()),
        };
        model.visit(&mut s);
        s.result
    }
}

/// The f32 SGD step of [`Sgd::update`] on (a part of) one parameter, with
/// `h = [lr, momentum, weight_decay]`: `d = g + weight_decay * w;
/// m = momentum * m + d; w = w - lr * m`, element by element (compiled
/// once per instruction set, see [`crate::accel`]).
///
/// A NaN result is stored as the quiet NaN `0x7fc0_0000`: which of two
/// NaN operands an addition passes on depends on the order the compiler
/// chose for its operands (it may commute them, differently for each
/// instruction set), so without this the bits of a NaN master or
/// momentum could differ between builds. Finite results are untouched.
#[inline(always)]
pub(crate) fn sgd_f32(w: &mut [f32], m: &mut [f32], g: &[f32], h: [f32; 3]) {
    let [lr, momentum, weight_decay] = h;
    let nan = f32::from_bits(0x7fc0_0000);
    for ((w, m), &g) in w.iter_mut().zip(m.iter_mut()).zip(g) {
        let d = g + weight_decay * *w;
        let m2 = momentum * *m + d;
        let m2 = if m2.is_nan() { nan } else { m2 };
        let w2 = *w - lr * m2;
        *m = m2;
        *w = if w2.is_nan() { nan } else { w2 };
    }
}

//! [`ConvBn`]: a 2-D convolution with batch norm folded into its weights
//! and bias before they are quantized (nics_fix_pt's `ConvBN_fix`), so that
//! training sees the quantized weights a deployed, folded layer uses.

use super::batchnorm::{update_running, ChannelStats};
use super::conv::{flat4, flat4_mut};
use super::product;
use super::Layer;
use crate::backend::{product_exp, AccOut, Backend, ConvGeom, Operand};
use crate::error::{Error, Result};
use crate::model::Visitor;
use crate::quant::acc_to_f32;
use crate::tensor::{Act, Buffer, Ctx, Param, Tensor, ID_STRIDE, S1, S4};

/// Convolution + batch norm, folded: `y = conv(x, Q(w * s)) + Q(beta - mean * s)`
/// with `s = gamma / sqrt(var + eps)` per output channel.
///
/// Const generics as a grouped convolution: `x[B][CIN][H][W]`,
/// `weight[COUT][CPG][KH][KW]` (`CPG = CIN / groups` input channels per
/// group), `y[B][COUT][OH][OW]`; stride, padding and dilation are run-time
/// values checked by [`ConvBn::new`]. There is no convolution bias: before
/// a batch norm it is cancelled by the mean, and beta plays its role (as
/// in nics_fix_pt, whose `ConvBN_fix` builds its convolution without bias).
///
/// Tensors (ids `id * 16 + k`): `weight` (k = 0; f32 master of the
/// convolution weight; its data config quantizes the *folded* weight, its
/// `q` and `sat` are the quantized folded weight and its saturations),
/// `bias` (k = 1; beta; likewise its config, `q` and `sat` are those of the
/// folded bias), output `out` (k = 2), `running_mean` (k = 3),
/// `running_var` (k = 4), `bn_weight` (k = 5; gamma, quantized by its own
/// config, `None` by default, before folding). These are nics_fix_pt's
/// names: `weight` and `bias` configs apply to the combined tensors.
/// The optimizer visits `weight`, `bn_weight`, `bias`, in that order.
///
/// # Forward
///
/// 1. gamma is refreshed from its master.
/// 2. Statistics. Training with `freeze_bn == false`: `z = conv(x, weight)`
///    with the f32 master weights (f32 sums, order of
///    [`Backend::conv2d`]), then per channel the batch mean and biased
///    variance of `z` over `N = B * OH * OW` values (two f32 passes,
///    [`ChannelStats`]); `z` is kept for backward. Eval, or `freeze_bn`:
///    the running statistics, quantized by their configs with the stored
///    scale (Auto acts as Fixed even when frozen in training: re-choosing
///    the scale of already quantized values could move them).
/// 3. Fold, f32 per channel: `inv_std = 1 / sqrt_f32(var + eps)`,
///    `s = gamma * inv_std`, `w_fold = w * s` per weight,
///    `b_fold = beta - mean * s` (product, then difference). `w_fold` is
///    quantized by `weight`'s data config, `b_fold` by `bias`'s
///    (saturations recorded in their `sat`).
/// 4. `y = conv(x, w_fold) + b_fold`, exactly as [`Linear`](super::Linear)
///    adds its bias: integer sums when `x` and `w_fold` are quantized (a
///    quantized `b_fold` added exactly), f32 otherwise; then quantized by
///    the output's data config.
/// 5. With batch statistics: the running statistics are updated as
///    PyTorch's (unbiased variance) and quantized by their configs.
///
/// The batch variance is the biased one, so that an unquantized `ConvBn`
/// computes what `Conv2d` followed by `BatchNorm2d` computes in training
/// (nics_fix_pt folds with `torch.var`, the unbiased one).
///
/// # Backward
///
/// The exact gradient of the function above, with the straight-through
/// estimator for each quantization (the folded weight and bias pass the
/// gradient where they did not saturate, zero where they did). With
/// `g_w`, `g_b` the gradients with respect to the quantized folded weight
/// and bias (`g_w = conv2d_weight_grad(dy, x)`, `g_b[c] = sum dy` over
/// batch items and positions ascending, f32), masked by the saturations,
/// per channel, f32 in this order:
///
/// * `ds = sum(g_w * w) - g_b * mean` (weights of the channel in memory order);
/// * `dgamma = ds * inv_std`; `dbeta = g_b`;
/// * direct weight gradient `g_w * s`;
/// * with batch statistics, the paths through the mean and the variance
///   of `z`: `gz = a + c * (z - mean)` per element with
///   `a = -(g_b * s) / N` and `c = -(ds * s * inv_std * inv_std) / N`
///   (products left to right); then `dw = g_w * s + conv2d_weight_grad(gz, x)`
///   and `dx = conv2d_input_grad(dy, Q(w_fold)) + conv2d_input_grad(gz, w)`;
/// * with running statistics they are constants: `dw = g_w * s`,
///   `dx = conv2d_input_grad(dy, Q(w_fold))`.
///
/// Parameter gradients are quantized by their grad configs (`weight`'s is
/// not masked again: the fold's mask applies to `g_w` only, not to the path
/// through the statistics). `dx` leaves at full precision. Backward with
/// batch statistics overwrites the kept `z` with `gz`: a second backward
/// needs a new forward pass (an [`Error::Shape`] otherwise).
pub struct ConvBn<
    const CIN: usize,
    const COUT: usize,
    const CPG: usize,
    const KH: usize,
    const KW: usize,
    const H: usize,
    const W: usize,
    const OH: usize,
    const OW: usize,
    const B: usize,
> {
    /// Convolution weight `[COUT][CPG][KH][KW]` (master); config, `q`, `sat`: the folded weight.
    pub weight: Param<S4<COUT, CPG, KH, KW>>,
    /// gamma `[COUT]`, initialised to 1.
    pub bn_weight: Param<S1<COUT>>,
    /// beta `[COUT]` (master), initialised to 0; config, `q`, `sat`: the folded bias.
    pub bias: Param<S1<COUT>>,
    /// Running mean `[COUT]`, initialised to 0.
    pub running_mean: Buffer<S1<COUT>>,
    /// Running (unbiased) variance `[COUT]`, initialised to 1.
    pub running_var: Buffer<S1<COUT>>,
    /// Added to the variance before the square root (default `1e-5`).
    pub eps: f32,
    /// Weight of the batch statistic in the running update (default `0.1`).
    pub momentum: f32,
    /// Fold with the running statistics in training too, and do not update
    /// them (PyTorch's `freeze_bn_stats`). Default `false`.
    pub freeze_bn: bool,
    /// Output `[B][COUT][OH][OW]`.
    pub out: Act<S4<B, COUT, OH, OW>>,
    /// Gradient with respect to the input (written by `backward` with `want_dx`).
    dx: Tensor<S4<B, CIN, H, W>>,
    geom: ConvGeom,
    stats: ChannelStats<COUT>,
    scale: [f32; COUT],
    z: [[[[f32; OW]; OH]; COUT]; B],
    z_fresh: bool,
    acc: [[[[i64; OW]; OH]; COUT]; B],
    wacc: [[[[i64; KW]; KH]; CPG]; COUT],
    wtmp: [[[[f32; KW]; KH]; CPG]; COUT],
    xacc: [[[[i64; W]; H]; CIN]; B],
    xtmp: [[[[f32; W]; H]; CIN]; B],
}

impl<
        const CIN: usize,
        const COUT: usize,
        const CPG: usize,
        const KH: usize,
        const KW: usize,
        const H: usize,
        const W: usize,
        const OH: usize,
        const OW: usize,
        const B: usize,
    > ConvBn<CIN, COUT, CPG, KH, KW, H, W, OH, OW, B>
{
    /// A folded convolution + batch norm with zero weights, gamma 1, beta 0,
    /// running mean 0 and variance 1, `eps = 1e-5`, `momentum = 0.1`, every
    /// config `None`; `id` numbers its tensors (`id * 16 + k`). `groups` is
    /// `CIN / CPG`; `stride`, `pad` and `dil` are (rows, columns).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `CIN` is not a multiple of `CPG` or
    /// [`ConvGeom::check`] refuses the geometry (sizes, strides, groups,
    /// `OH` and `OW`).
    ///
    /// # Examples
    ///
    /// ```
    /// use fixnn::layers::ConvBn;
    /// // 3 -> 4 channels, 3x3 kernel, 8x8 input, stride 1, padding 1, batch 2.
    /// let l = ConvBn::<3, 4, 3, 3, 3, 8, 8, 8, 8, 2>::new(0, (1, 1), (1, 1), (1, 1))?;
    /// assert_eq!(l.geom().groups, 1);
    /// assert!(ConvBn::<3, 4, 3, 3, 3, 8, 8, 7, 7, 2>::new(0, (1, 1), (1, 1), (1, 1)).is_err());
    /// # Ok::<(), fixnn::Error>(())
    /// ```
    pub fn new(
        id: u32,
        stride: (usize, usize),
        pad: (usize, usize),
        dil: (usize, usize),
    ) -> Result<Self> {
        if CPG == 0 || !CIN.is_multiple_of(CPG) {
            return Err(Error::Shape {
                what: "ConvBn: CIN must be a non-zero multiple of CPG",
            });
        }
        let geom = ConvGeom {
            batch: B,
            cin: CIN,
            h: H,
            w: W,
            cout: COUT,
            kh: KH,
            kw: KW,
            oh: OH,
            ow: OW,
            stride,
            pad,
            dil,
            groups: CIN / CPG,
        };
        geom.check()?;
        let base = id.wrapping_mul(ID_STRIDE);
        let mut bn_weight = Param::new(base + 5);
        bn_weight.master = [1.0; COUT];
        Ok(ConvBn {
            weight: Param::new(base),
            bn_weight,
            bias: Param::new(base + 1),
            running_mean: Buffer::filled(base + 3, 0.0),
            running_var: Buffer::filled(base + 4, 1.0),
            eps: 1e-5,
            momentum: 0.1,
            freeze_bn: false,
            out: Act::new(base + 2),
            dx: Tensor::zeros(),
            geom,
            stats: ChannelStats::new(),
            scale: [0.0; COUT],
            z: [[[[0.0; OW]; OH]; COUT]; B],
            z_fresh: false,
            acc: [[[[0; OW]; OH]; COUT]; B],
            wacc: [[[[0; KW]; KH]; CPG]; COUT],
            wtmp: [[[[0.0; KW]; KH]; CPG]; COUT],
            xacc: [[[[0; W]; H]; CIN]; B],
            xtmp: [[[[0.0; W]; H]; CIN]; B],
        })
    }

    /// The checked geometry.
    pub fn geom(&self) -> ConvGeom {
        self.geom
    }

    /// The statistics the last forward pass folded with.
    pub fn stats(&self) -> &ChannelStats<COUT> {
        &self.stats
    }

    /// The per-channel factor `s = gamma * inv_std` of the last fold.
    pub fn fold_scale(&self) -> &[f32; COUT] {
        &self.scale
    }

    /// Step 3 of the forward pass: fold and quantize weight and bias.
    fn fold(&mut self, ctx: &Ctx, st: &ChannelStats<COUT>) -> Result<()> {
        for ((s, &g), &inv) in self
            .scale
            .iter_mut()
            .zip(&self.bn_weight.q.v)
            .zip(&st.inv_std)
        {
            *s = g * inv;
        }
        for ((q, m), &s) in self
            .weight
            .q
            .v
            .iter_mut()
            .zip(&self.weight.master)
            .zip(&self.scale)
        {
            let qs = q.as_flattened_mut().as_flattened_mut();
            for (q, &w) in qs.iter_mut().zip(m.as_flattened().as_flattened()) {
                *q = w * s;
            }
        }
        let w = &mut self.weight;
        w.q.fmt = w.quant.data_in_place(
            ctx,
            flat4_mut(&mut w.q.v),
            flat4_mut(&mut w.sat),
            Some(&mut w.groups),
        )?;
        for (((q, &beta), &m), &s) in self
            .bias
            .q
            .v
            .iter_mut()
            .zip(&self.bias.master)
            .zip(&st.mean)
            .zip(&self.scale)
        {
            *q = beta - m * s;
        }
        let b = &mut self.bias;
        b.q.fmt = b
            .quant
            .data_in_place(ctx, &mut b.q.v, &mut b.sat, Some(&mut b.groups))?;
        Ok(())
    }

    /// Step 4 of the forward pass: the convolution with the folded weights.
    fn conv_folded<Bk: Backend>(
        &mut self,
        bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<S4<B, CIN, H, W>>,
    ) -> Result<()> {
        let (xo, wo) = (x.operand(), self.weight.q.operand());
        let g = self.geom;
        let acc = flat4_mut(&mut self.acc);
        let bias = Some(&self.bias.q);
        let p = product::Products {
            x: xo,
            w: wo,
            k: CPG * KH * KW,
            spatial: OH * OW,
        };
        product::forward(ctx, &mut self.out, acc, bias, p, |o| {
            bk.conv2d(g, xo, wo, o)
        })
    }
}

impl<
        const CIN: usize,
        const COUT: usize,
        const CPG: usize,
        const KH: usize,
        const KW: usize,
        const H: usize,
        const W: usize,
        const OH: usize,
        const OW: usize,
        const B: usize,
    > Layer for ConvBn<CIN, COUT, CPG, KH, KW, H, W, OH, OW, B>
{
    type In = S4<B, CIN, H, W>;
    type Out = S4<B, COUT, OH, OW>;
    const TYPE: &'static str = "ConvBn";

    fn forward<Bk: Backend>(
        &mut self,
        bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<S4<B, CIN, H, W>>,
    ) -> Result<()> {
        if let Some(index) = x.flat().iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { index });
        }
        self.bn_weight.refresh(ctx)?;
        let mut st = ChannelStats::<COUT>::new();
        let (mut rm, mut rv) = (self.running_mean, self.running_var);
        let batch = ctx.training && !self.freeze_bn;
        if batch {
            self.z_fresh = false;
            let w = Operand {
                v: flat4(&self.weight.master),
                fmt: None,
            };
            bk.conv2d(
                self.geom,
                x.operand(),
                w,
                AccOut::Float(flat4_mut(&mut self.z)),
            )?;
            let dims = (COUT, OH * OW, B * OH * OW);
            st.set_batch(flat4(&self.z), None, dims, self.eps)?;
        } else {
            // Read, not updated: quantized with the stored scale (Auto acts
            // as Fixed), so that frozen statistics stay as they are.
            let read = Ctx {
                training: false,
                ..*ctx
            };
            rm.quantize(&read)?;
            rv.quantize(&read)?;
            st.set_running(&rm.v, &rv.v, self.eps);
        }
        self.fold(ctx, &st)?;
        self.conv_folded(bk, ctx, x)?;
        if batch {
            update_running(
                ctx,
                self.momentum,
                &st,
                &mut self.running_mean,
                &mut self.running_var,
            )?;
            self.z_fresh = true;
        } else {
            (self.running_mean, self.running_var) = (rm, rv);
        }
        self.stats = st;
        Ok(())
    }

    fn output(&self) -> &Tensor<S4<B, COUT, OH, OW>> {
        &self.out.t
    }

    fn backward<Bk: Backend>(
        &mut self,
        bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<S4<B, CIN, H, W>>,
        dy: &mut Tensor<S4<B, COUT, OH, OW>>,
        want_dx: bool,
    ) -> Result<()> {
        let st = self.stats;
        if st.batch && !self.z_fresh {
            return Err(Error::Shape {
                what: "ConvBn: backward with batch statistics needs a new forward pass",
            });
        }
        self.out.prepare_grad(ctx, dy)?;
        let (g, dyo) = (self.geom, dy.operand());
        // Gradient of the folded bias, masked where it saturated.
        let mut gb = [0.0f32; COUT];
        for item in dy.v.iter() {
            for (s, ch) in gb.iter_mut().zip(item) {
                for &v in ch.as_flattened() {
                    *s += v;
                }
            }
        }
        for (s, &sat) in gb.iter_mut().zip(&self.bias.sat) {
            if sat {
                *s = 0.0;
            }
        }
        // Gradient of the folded weight, masked where it saturated.
        let gw = flat4_mut(&mut self.weight.grad.v);
        match product_exp(dyo, x.operand()) {
            Some(e) => {
                let wacc = flat4_mut(&mut self.wacc);
                bk.conv2d_weight_grad(g, dyo, x.operand(), AccOut::Int(wacc))?;
                for (d, &a) in gw.iter_mut().zip(flat4(&self.wacc)) {
                    *d = acc_to_f32(a, e);
                }
            }
            None => bk.conv2d_weight_grad(g, dyo, x.operand(), AccOut::Float(gw))?,
        }
        for (d, &sat) in flat4_mut(&mut self.weight.grad.v)
            .iter_mut()
            .zip(flat4(&self.weight.sat))
        {
            if sat {
                *d = 0.0;
            }
        }
        // ds per channel, then gamma and beta.
        let mut ds = [0.0f32; COUT];
        let rows = self.weight.grad.v.iter().zip(&self.weight.master);
        for (((d, (grow, wrow)), &gbc), &m) in ds.iter_mut().zip(rows).zip(&gb).zip(&st.mean) {
            let mut s = 0.0f32;
            let ws = wrow.as_flattened().as_flattened();
            for (&gw, &w) in grow.as_flattened().as_flattened().iter().zip(ws) {
                s += gw * w;
            }
            *d = s - gbc * m;
        }
        for ((d, &s), &inv) in self.bn_weight.grad.v.iter_mut().zip(&ds).zip(&st.inv_std) {
            *d = s * inv;
        }
        self.bn_weight.finish_grad(ctx)?;
        self.bias.grad.v = gb;
        self.bias.finish_grad(ctx)?;
        // Direct weight gradient g_w * s.
        for (row, &s) in self.weight.grad.v.iter_mut().zip(&self.scale) {
            for d in row.as_flattened_mut().as_flattened_mut() {
                *d *= s;
            }
        }
        if st.batch {
            // gz = a + c * (z - mean), in place of z.
            let n = (B * OH * OW) as f32;
            for item in self.z.iter_mut() {
                for (c, ch) in item.iter_mut().enumerate() {
                    let (s, inv, m) = (self.scale[c], st.inv_std[c], st.mean[c]);
                    let a = -(gb[c] * s) / n;
                    let k = -(ds[c] * s * inv * inv) / n;
                    for v in ch.as_flattened_mut() {
                        *v = a + k * (*v - m);
                    }
                }
            }
            self.z_fresh = false;
            let gz = Operand {
                v: flat4(&self.z),
                fmt: None,
            };
            bk.conv2d_weight_grad(g, gz, x.operand(), AccOut::Float(flat4_mut(&mut self.wtmp)))?;
            for (d, &t) in flat4_mut(&mut self.weight.grad.v)
                .iter_mut()
                .zip(flat4(&self.wtmp))
            {
                *d += t;
            }
        }
        let w = &mut self.weight;
        w.grad.fmt = w
            .quant
            .grad_in_place(ctx, flat4_mut(&mut w.grad.v), Some(&mut w.groups))?;
        if !want_dx {
            return Ok(());
        }
        let dx = &mut self.dx;
        let wo = self.weight.q.operand();
        let xacc = flat4_mut(&mut self.xacc);
        product::input_grad(dx.flat_mut(), xacc, dyo, wo, |o| {
            bk.conv2d_input_grad(g, dyo, wo, o)
        })?;
        if st.batch {
            let gz = Operand {
                v: flat4(&self.z),
                fmt: None,
            };
            let w = Operand {
                v: flat4(&self.weight.master),
                fmt: None,
            };
            bk.conv2d_input_grad(g, gz, w, AccOut::Float(flat4_mut(&mut self.xtmp)))?;
            for (d, &t) in dx.flat_mut().iter_mut().zip(flat4(&self.xtmp)) {
                *d += t;
            }
        }
        dx.fmt = None;
        Ok(())
    }

    fn input_grad(&self) -> &Tensor<S4<B, CIN, H, W>> {
        &self.dx
    }

    fn input_grad_mut(&mut self) -> &mut Tensor<S4<B, CIN, H, W>> {
        &mut self.dx
    }

    fn visit(&mut self, v: &mut dyn Visitor) {
        v.tensor(self.weight.tensor_mut(Self::TYPE, "weight"));
        v.tensor(self.bn_weight.tensor_mut(Self::TYPE, "bn_weight"));
        v.tensor(self.bias.tensor_mut(Self::TYPE, "bias"));
        v.tensor(self.running_mean.tensor_mut(Self::TYPE, "running_mean"));
        v.tensor(self.running_var.tensor_mut(Self::TYPE, "running_var"));
        v.tensor(self.out.tensor_mut(Self::TYPE, "output"));
    }
}

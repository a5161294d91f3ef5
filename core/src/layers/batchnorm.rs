//! Batch normalization: [`BatchNorm1d`] and [`BatchNorm2d`] (nics_fix_pt's
//! `BatchNorm1d_fix` and `BatchNorm2d_fix`), both the one generic layer
//! [`BatchNorm`] over "`N = batch * spatial` elements per channel". The
//! statistics helpers here are shared with [`ConvBn`](super::ConvBn).

use super::Layer;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Visitor;
use crate::quant::{ratio_to_f32, sqrt_f32, Format};
use crate::tensor::{Act, Buffer, Ctx, Param, Shape, Tensor, ID_STRIDE, S1, S2, S3, S4};

/// A shape laid out as `[batch][channel][spatial...]`: the layout batch
/// norm reduces over. Element `(b, c, p)` is at flat index
/// `(b * CHANNELS + c) * SPATIAL + p`.
pub trait ChannelShape: Shape {
    /// Batch size.
    const BATCH: usize;
    /// Channels (features).
    const CHANNELS: usize;
    /// Elements per batch item and channel (1 for `[B][C]`, `H * W` for `[B][C][H][W]`).
    const SPATIAL: usize;
}

impl<const B: usize, const C: usize> ChannelShape for S2<B, C> {
    const BATCH: usize = B;
    const CHANNELS: usize = C;
    const SPATIAL: usize = 1;
}

impl<const B: usize, const C: usize, const L: usize> ChannelShape for S3<B, C, L> {
    const BATCH: usize = B;
    const CHANNELS: usize = C;
    const SPATIAL: usize = L;
}

impl<const B: usize, const C: usize, const H: usize, const W: usize> ChannelShape
    for S4<B, C, H, W>
{
    const BATCH: usize = B;
    const CHANNELS: usize = C;
    const SPATIAL: usize = H * W;
}

/// The per-channel statistics a forward pass normalized (or folded) with,
/// kept for the backward pass.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ChannelStats<const C: usize> {
    /// Mean: of the batch in training, the running mean otherwise.
    pub mean: [f32; C],
    /// Variance: the biased (`/ N`) batch variance in training, the running
    /// variance otherwise.
    pub var: [f32; C],
    /// The unbiased (`/ (N - 1)`) batch variance that updates the running
    /// variance (equal to `var` when running statistics were used).
    pub var_unbiased: [f32; C],
    /// `1 / sqrt_f32(var + eps)`, f32 in that order.
    pub inv_std: [f32; C],
    /// `true`: batch statistics (backward differentiates through them);
    /// `false`: running statistics (constants in backward).
    pub batch: bool,
}

impl<const C: usize> ChannelStats<C> {
    /// Zero statistics (no forward pass yet).
    pub const fn new() -> Self {
        ChannelStats {
            mean: [0.0; C],
            var: [0.0; C],
            var_unbiased: [0.0; C],
            inv_std: [0.0; C],
            batch: false,
        }
    }

    /// Batch statistics of channel `c` of `v` (see [`batch_stats`]) and
    /// `inv_std`, stored at index `c`.
    pub(crate) fn set_batch(
        &mut self,
        v: &[f32],
        fmt: Option<Format>,
        (channels, spatial, n): (usize, usize, usize),
        eps: f32,
    ) -> Result<()> {
        for c in 0..C {
            let (m, var, var_u) = batch_stats(v, fmt, channels, spatial, n, c)?;
            self.mean[c] = m;
            self.var[c] = var;
            self.var_unbiased[c] = var_u;
            self.inv_std[c] = inv_std(var, eps);
        }
        self.batch = true;
        Ok(())
    }

    /// Running statistics (already quantized by their configs).
    pub(crate) fn set_running(&mut self, mean: &[f32; C], var: &[f32; C], eps: f32) {
        self.mean = *mean;
        self.var = *var;
        self.var_unbiased = *var;
        for (i, &v) in self.inv_std.iter_mut().zip(var) {
            *i = inv_std(v, eps);
        }
        self.batch = false;
    }
}

impl<const C: usize> Default for ChannelStats<C> {
    fn default() -> Self {
        Self::new()
    }
}

/// `1 / sqrt(var + eps)`: f32 addition, [`sqrt_f32`], f32 division, each
/// correctly rounded.
pub(crate) fn inv_std(var: f32, eps: f32) -> f32 {
    1.0 / sqrt_f32(var + eps)
}

/// The `[spatial]` blocks of channel `c`, batch items ascending.
fn blocks(v: &[f32], channels: usize, spatial: usize, c: usize) -> impl Iterator<Item = &[f32]> {
    v.chunks_exact(spatial.max(1))
        .skip(c)
        .step_by(channels.max(1))
}

/// Mean, biased variance and unbiased variance of channel `c` of `v`
/// (`n = batch * spatial` elements, `n >= 2`).
///
/// * Quantized `v` (`fmt` is `Some`): the sums `S1 = sum q` and
///   `S2 = sum q^2` of the codes are exact (`i128`); then
///   `mean = S1 / n * step`, `var = (n S2 - S1^2) / n^2 * step^2` and
///   `var_unbiased = (n S2 - S1^2) / (n (n - 1)) * step^2`, each converted
///   from the exact rational with one correct rounding ([`ratio_to_f32`]).
/// * Full precision: two passes in f32, elements in memory order (batch
///   items ascending, then spatial positions): `s = sum x`,
///   `mean = s / n`, `ss = sum (x - mean)^2` (each square rounded, then
///   added), `var = ss / n`, `var_unbiased = ss / (n - 1)`, with `n` and
///   `n - 1` converted to f32.
///
/// # Errors
///
/// [`Error::Shape`] if `n < 2` (no unbiased variance, as PyTorch refuses
/// one value per channel in training) or `n >= 2^40`.
pub(crate) fn batch_stats(
    v: &[f32],
    fmt: Option<Format>,
    channels: usize,
    spatial: usize,
    n: usize,
    c: usize,
) -> Result<(f32, f32, f32)> {
    if n < 2 {
        return Err(Error::Shape {
            what: "batch norm needs more than one value per channel in training",
        });
    }
    if n as u64 >= 1 << 40 {
        return Err(Error::Shape {
            what: "batch norm: more than 2^40 values per channel",
        });
    }
    if let Some(f) = fmt {
        let (mut s1, mut s2) = (0i128, 0i128);
        for blk in blocks(v, channels, spatial, c) {
            for &x in blk {
                let q = f.code_of(x) as i128;
                s1 += q;
                s2 += q * q;
            }
        }
        let (ni, e) = (n as i128, f.step_exp());
        let num = ni * s2 - s1 * s1; // >= 0, < 2^111
        let mean = ratio_to_f32(s1, n as u128, e);
        let var = ratio_to_f32(num, (ni * ni) as u128, 2 * e);
        let var_u = ratio_to_f32(num, (ni * (ni - 1)) as u128, 2 * e);
        return Ok((mean, var, var_u));
    }
    let mut s = 0.0f32;
    for blk in blocks(v, channels, spatial, c) {
        for &x in blk {
            s += x;
        }
    }
    let mean = s / n as f32;
    let mut ss = 0.0f32;
    for blk in blocks(v, channels, spatial, c) {
        for &x in blk {
            let d = x - mean;
            ss += d * d;
        }
    }
    Ok((mean, ss / n as f32, ss / (n - 1) as f32))
}

/// PyTorch's running-statistics update, then the buffers quantized by
/// their configs: `r = (1 - momentum) * r + momentum * batch` (f32: the two
/// products, then their sum), with the batch mean for `running_mean` and
/// the unbiased batch variance for `running_var`. Both buffers are
/// unchanged on error.
pub(crate) fn update_running<const C: usize>(
    ctx: &Ctx,
    momentum: f32,
    st: &ChannelStats<C>,
    mean: &mut Buffer<S1<C>>,
    var: &mut Buffer<S1<C>>,
) -> Result<()> {
    let (mut m, mut v) = (*mean, *var);
    for (r, &b) in m.v.iter_mut().zip(&st.mean) {
        *r = (1.0 - momentum) * *r + momentum * b;
    }
    for (r, &b) in v.v.iter_mut().zip(&st.var_unbiased) {
        *r = (1.0 - momentum) * *r + momentum * b;
    }
    m.quantize(ctx)?;
    v.quantize(ctx)?;
    (*mean, *var) = (m, v);
    Ok(())
}

/// Batch normalization over `[B][C][spatial]` (nics_fix_pt's
/// `BatchNorm{1,2}d_fix`): `y = gamma * (x - mean) / sqrt(var + eps) + beta`
/// per channel. Use the aliases [`BatchNorm1d`] (`[B][C]`; `S3<B, C, L>`
/// works too) and [`BatchNorm2d`] (`[B][C][H][W]`).
///
/// Tensors (ids `id * 16 + k`): `weight` (gamma, `[C]`, k = 0, starts at 1),
/// `bias` (beta, `[C]`, k = 1, starts at 0), output `out` (k = 2),
/// `running_mean` (k = 3, starts at 0), `running_var` (k = 4, starts at 1).
/// The optimizer visits `weight`, then `bias`.
///
/// # Forward
///
/// 1. gamma and beta are quantized from their masters by their configs.
/// 2. Statistics per channel. Training ([`Ctx::train`]): the batch mean and
///    biased variance over `N = B * spatial` values, exact from integer
///    sums when the input is quantized, two f32 passes otherwise (see
///    [`ChannelStats`] and the order below). Eval: the running statistics,
///    first quantized by their configs (a no-op for values a training step
///    stored).
/// 3. `inv_std = 1 / sqrt_f32(var + eps)` ([`sqrt_f32`] is correctly rounded).
/// 4. Per element, f32 in this order: `xh = (x - mean) * inv_std`,
///    `y = gamma * xh + beta` (a product, then a sum; never fused); then `y`
///    is quantized by the output's data config (saturations recorded).
/// 5. Training only: `running = (1 - momentum) * running + momentum * stat`
///    as PyTorch (the unbiased variance `N / (N - 1)` for `running_var`),
///    then both buffers are quantized by their configs. An update smaller
///    than half a step of a buffer's format is lost with nearest rounding
///    (nics_fix_pt notes the same); stochastic rounding or `Method::None`
///    keeps it in expectation or exactly.
///
/// # Backward
///
/// `dy` is prepared by the output (straight-through mask, grad config).
/// Per channel, f32 sums in memory order: `sum_dy = sum dy`,
/// `sum_dyxh = sum dy * xh` (`xh` recomputed bit for bit as in forward).
/// `dbeta = sum_dy`, `dgamma = sum_dyxh`, each quantized by its grad config
/// and zeroed where the parameter saturated. With batch statistics the
/// input gradient is the exact one through the mean and the variance:
/// `dx = (gamma * inv_std) * ((dy - sum_dy / N) - xh * (sum_dyxh / N))`,
/// f32 in that order (parenthesised terms first, left to right). With
/// running statistics (eval) they are constants: `dx = (gamma * inv_std) * dy`.
/// `dx` leaves at full precision.
///
/// # Errors
///
/// Forward: [`Error::NonFinite`] for a NaN or infinite input;
/// [`Error::Shape`] in training with fewer than two values per channel;
/// config errors. Running statistics are unchanged on error.
pub struct BatchNorm<const C: usize, S: ChannelShape> {
    /// gamma `[C]`, initialised to 1.
    pub weight: Param<S1<C>>,
    /// beta `[C]`, initialised to 0.
    pub bias: Param<S1<C>>,
    /// Running mean `[C]`, initialised to 0, with its own data config.
    pub running_mean: Buffer<S1<C>>,
    /// Running (unbiased) variance `[C]`, initialised to 1, with its own data config.
    pub running_var: Buffer<S1<C>>,
    /// Added to the variance before the square root (default `1e-5`).
    pub eps: f32,
    /// Weight of the batch statistic in the running update (default `0.1`).
    pub momentum: f32,
    /// Output, kept for the next layer's backward.
    pub out: Act<S>,
    /// Gradient with respect to the input (written by `backward` with `want_dx`).
    dx: Tensor<S>,
    stats: ChannelStats<C>,
}

/// Batch norm of `[B][C]` features (PyTorch's `BatchNorm1d(C)`).
///
/// # Examples
///
/// ```
/// use fixnn::backend::RefBackend;
/// use fixnn::layers::{BatchNorm1d, Layer};
/// use fixnn::tensor::{Ctx, Tensor, S2};
/// let mut bn = BatchNorm1d::<2, 4>::new(0);
/// let mut x = Tensor::<S2<4, 2>>::zeros();
/// x.set_f32(&[1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0])?;
/// bn.forward(&RefBackend, &Ctx::train(0, 0), &x)?;
/// assert_eq!(bn.stats().mean, [2.5, 25.0]);
/// assert_eq!(bn.running_mean.flat(), &[0.25, 2.5]);
/// # Ok::<(), fixnn::Error>(())
/// ```
pub type BatchNorm1d<const C: usize, const B: usize> = BatchNorm<C, S2<B, C>>;

/// Batch norm of `[B][C][H][W]` feature maps (PyTorch's `BatchNorm2d(C)`).
pub type BatchNorm2d<const C: usize, const H: usize, const W: usize, const B: usize> =
    BatchNorm<C, S4<B, C, H, W>>;

impl<const C: usize, S: ChannelShape> BatchNorm<C, S> {
    /// A batch norm with gamma 1, beta 0, running mean 0 and variance 1,
    /// `eps = 1e-5`, `momentum = 0.1`, every config `None`; `id` numbers its
    /// tensors (`id * 16 + k`).
    ///
    /// The shape must have `C` channels, no zero size and fewer than `2^40`
    /// values per channel (checked at compile time: the exact integer
    /// statistics cannot overflow their `i128` sums):
    ///
    /// ```compile_fail,E0080
    /// # use fixnn::layers::BatchNorm1d;
    /// let bn = BatchNorm1d::<1, { 1 << 40 }>::new(0);
    /// ```
    ///
    /// ```no_run
    /// # use fixnn::layers::BatchNorm1d;
    /// let bn = BatchNorm1d::<1, { (1 << 40) - 1 }>::new(0); // compiles (never run: 16 TB)
    /// ```
    pub fn new(id: u32) -> Self {
        const {
            assert!(
                S::CHANNELS == C,
                "BatchNorm: the shape must have C channels"
            );
            assert!(
                C > 0 && S::BATCH > 0 && S::SPATIAL > 0,
                "BatchNorm: sizes must be non-zero"
            );
            assert!(
                S::LEN == S::BATCH * C * S::SPATIAL,
                "BatchNorm: the shape must be [batch][channel][spatial]"
            );
            // The exact statistics sum codes and squared codes of
            // N = batch * spatial values in i128: below 2^40 values,
            // N * sum q^2 < 2^40 * 2^40 * 2^30 = 2^110 cannot overflow.
            assert!(
                (S::BATCH as u64).saturating_mul(S::SPATIAL as u64) < 1 << 40,
                "BatchNorm: more than 2^40 values per channel (i128 statistics)"
            );
        };
        let base = id.wrapping_mul(ID_STRIDE);
        let mut weight = Param::new(base);
        weight.master = [1.0; C];
        BatchNorm {
            weight,
            bias: Param::new(base + 1),
            running_mean: Buffer::filled(base + 3, 0.0),
            running_var: Buffer::filled(base + 4, 1.0),
            eps: 1e-5,
            momentum: 0.1,
            out: Act::new(base + 2),
            dx: Tensor::zeros(),
            stats: ChannelStats::new(),
        }
    }

    /// The statistics the last forward pass normalized with.
    pub fn stats(&self) -> &ChannelStats<C> {
        &self.stats
    }

    const DIMS: (usize, usize, usize) = (C, S::SPATIAL, S::BATCH * S::SPATIAL);
}

impl<const C: usize, S: ChannelShape> Layer for BatchNorm<C, S> {
    type In = S;
    type Out = S;
    const TYPE: &'static str = "BatchNorm";

    fn forward<Bk: Backend>(&mut self, _bk: &Bk, ctx: &Ctx, x: &Tensor<S>) -> Result<()> {
        if let Some(index) = x.flat().iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { index });
        }
        self.weight.refresh(ctx)?;
        self.bias.refresh(ctx)?;
        let mut st = ChannelStats::<C>::new();
        let (mut rm, mut rv) = (self.running_mean, self.running_var);
        if ctx.training {
            st.set_batch(x.flat(), x.fmt, Self::DIMS, self.eps)?;
        } else {
            rm.quantize(ctx)?;
            rv.quantize(ctx)?;
            st.set_running(&rm.v, &rv.v, self.eps);
        }
        let (gamma, beta) = (&self.weight.q.v, &self.bias.q.v);
        let blocks = self.out.t.flat_mut().chunks_exact_mut(S::SPATIAL);
        for (k, (yb, xb)) in blocks.zip(x.flat().chunks_exact(S::SPATIAL)).enumerate() {
            let c = k % C;
            let (m, inv, g, b) = (st.mean[c], st.inv_std[c], gamma[c], beta[c]);
            for (y, &xv) in yb.iter_mut().zip(xb) {
                let xh = (xv - m) * inv;
                *y = g * xh + b;
            }
        }
        self.out.quantize(ctx)?;
        if ctx.training {
            update_running(
                ctx,
                self.momentum,
                &st,
                &mut self.running_mean,
                &mut self.running_var,
            )?;
        } else {
            (self.running_mean, self.running_var) = (rm, rv);
        }
        self.stats = st;
        Ok(())
    }

    fn output(&self) -> &Tensor<S> {
        &self.out.t
    }

    fn backward<Bk: Backend>(
        &mut self,
        _bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<S>,
        dy: &mut Tensor<S>,
        want_dx: bool,
    ) -> Result<()> {
        self.out.prepare_grad(ctx, dy)?;
        let st = &self.stats;
        let mut sum_dy = [0.0f32; C];
        let mut sum_dyxh = [0.0f32; C];
        let pairs = dy.flat().chunks_exact(S::SPATIAL);
        for (k, (gb, xb)) in pairs.zip(x.flat().chunks_exact(S::SPATIAL)).enumerate() {
            let c = k % C;
            let (m, inv) = (st.mean[c], st.inv_std[c]);
            for (&g, &xv) in gb.iter().zip(xb) {
                let xh = (xv - m) * inv;
                sum_dy[c] += g;
                sum_dyxh[c] += g * xh;
            }
        }
        self.bias.grad.v = sum_dy;
        self.bias.finish_grad(ctx)?;
        self.weight.grad.v = sum_dyxh;
        self.weight.finish_grad(ctx)?;
        if !want_dx {
            return Ok(());
        }
        let dx = &mut self.dx;
        let n = (S::BATCH * S::SPATIAL) as f32;
        let mut k_c = [0.0f32; C];
        for ((k, &g), &inv) in k_c.iter_mut().zip(&self.weight.q.v).zip(&st.inv_std) {
            *k = g * inv;
        }
        let blocks = dx.flat_mut().chunks_exact_mut(S::SPATIAL);
        let pairs = dy.flat().chunks_exact(S::SPATIAL);
        for (k, (db, (gb, xb))) in blocks
            .zip(pairs.zip(x.flat().chunks_exact(S::SPATIAL)))
            .enumerate()
        {
            let c = k % C;
            if !st.batch {
                for (d, &g) in db.iter_mut().zip(gb) {
                    *d = k_c[c] * g;
                }
                continue;
            }
            let (m, inv) = (st.mean[c], st.inv_std[c]);
            let (m1, m2) = (sum_dy[c] / n, sum_dyxh[c] / n);
            for ((d, &g), &xv) in db.iter_mut().zip(gb).zip(xb) {
                let xh = (xv - m) * inv;
                *d = k_c[c] * ((g - m1) - xh * m2);
            }
        }
        dx.fmt = None;
        Ok(())
    }

    fn input_grad(&self) -> &Tensor<S> {
        &self.dx
    }

    fn input_grad_mut(&mut self) -> &mut Tensor<S> {
        &mut self.dx
    }

    fn visit(&mut self, v: &mut dyn Visitor) {
        v.tensor(self.weight.tensor_mut(Self::TYPE, "weight"));
        v.tensor(self.bias.tensor_mut(Self::TYPE, "bias"));
        v.tensor(self.running_mean.tensor_mut(Self::TYPE, "running_mean"));
        v.tensor(self.running_var.tensor_mut(Self::TYPE, "running_var"));
        v.tensor(self.out.tensor_mut(Self::TYPE, "output"));
    }
}

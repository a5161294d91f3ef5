//! Pooling: [`MaxPool2d`] and [`AvgPool2d`] (PyTorch semantics, floor mode).

use core::num::NonZeroU32;

use super::conv::{flat4, flat4_mut};
use super::Layer;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Visitor;
use crate::quant::{acc_to_f32, Format, Method};
use crate::tensor::{Act, Ctx, Tensor, ID_STRIDE, S4};

/// A checked pooling window: kernel, stride and zero padding, `(rows, columns)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
}

fn shape_err(what: &'static str) -> Error {
    Error::Shape { what }
}

/// Check one dimension: PyTorch's rules, floor mode.
fn check_dim(size: usize, k: usize, s: usize, p: usize, out: usize) -> Result<()> {
    if size == 0 {
        return Err(shape_err("pooling input must not be empty"));
    }
    if k == 0 || s == 0 {
        return Err(shape_err("pooling kernel and stride must be non-zero"));
    }
    if p > k / 2 {
        return Err(shape_err("pooling padding must be at most half the kernel"));
    }
    // p <= k / 2, so this only overflows for kernels near usize::MAX.
    let padded = p
        .checked_mul(2)
        .and_then(|p2| p2.checked_add(size))
        .ok_or(shape_err("pooling padding overflows"))?;
    if padded < k {
        return Err(shape_err("pooling kernel larger than the padded input"));
    }
    if (padded - k) / s + 1 != out {
        return Err(shape_err(
            "pooling output size does not match kernel, stride and padding",
        ));
    }
    Ok(())
}

impl Window {
    /// Check the window against input `h x w` and output `oh x ow`.
    fn new(
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
        (h, w, oh, ow): (usize, usize, usize, usize),
    ) -> Result<Self> {
        check_dim(h, kernel.0, stride.0, pad.0, oh)?;
        check_dim(w, kernel.1, stride.1, pad.1, ow)?;
        Ok(Window {
            kernel,
            stride,
            pad,
        })
    }

    /// Call `f(iy, ix)` on the input positions of output `(oy, ox)`'s window
    /// that lie inside the `h x w` input, in row-major window order (padded
    /// positions are skipped). A checked window always has at least one, and
    /// `oy * stride + ky` stays below `h + 2 pad`, so nothing overflows.
    #[inline]
    fn visit(&self, h: usize, w: usize, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
        for ky in 0..self.kernel.0 {
            let Some(iy) = (oy * self.stride.0 + ky)
                .checked_sub(self.pad.0)
                .filter(|&i| i < h)
            else {
                continue;
            };
            for kx in 0..self.kernel.1 {
                if let Some(ix) = (ox * self.stride.1 + kx)
                    .checked_sub(self.pad.1)
                    .filter(|&i| i < w)
                {
                    f(iy, ix);
                }
            }
        }
    }
}

/// `p[iy][ix]`. [`Window::visit`] passes only positions inside the
/// plane; outside it this reads 0, so no index can panic.
#[inline]
fn at<const H: usize, const W: usize>(p: &[[f32; W]; H], iy: usize, ix: usize) -> f32 {
    p.get(iy).and_then(|r| r.get(ix)).copied().unwrap_or(0.0)
}

/// The exact window sums of codes `s` of `x` (quantized in `f`), passed to
/// `each(i, s)` for every output `i` of an `oh x ow` output, row-major.
fn window_sums<const B: usize, const C: usize, const H: usize, const W: usize>(
    win: &Window,
    x: &Tensor<S4<B, C, H, W>>,
    (oh, ow): (usize, usize),
    f: Format,
    mut each: impl FnMut(usize, i64),
) {
    let mut i = 0;
    for xp in x.v.iter().flatten() {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = 0i64;
                win.visit(H, W, oy, ox, |iy, ix| s += f.code_of(at(xp, iy, ix)) as i64);
                each(i, s);
                i += 1;
            }
        }
    }
}

/// Max pooling over `KH x KW` windows (kernel, stride and padding set at
/// run time), batch `B`: input `[B][C][H][W]`, output `[B][C][OH][OW]` with
/// `OH = (H + 2 ph - KH) / sh + 1` (floor mode; likewise `OW`), as PyTorch's
/// `MaxPool2d` without dilation.
///
/// Padded positions never win (PyTorch pads with minus infinity). Ties go
/// to the first maximum in row-major window order; its position is kept
/// for backward.
///
/// Tensors: output `out` (id `id * 16`).
///
/// # Arithmetic
///
/// Exact: each output is one of the input values, so a quantized input
/// gives an output in the same format (requantized only when the output's
/// data config is not `None`: half a step for nearest rounding, one step for
/// floor and stochastic). Backward routes each `dy` to its window's maximum
/// and sums where windows overlap, in f32 in row-major output order (exact
/// while fewer than `2^9` windows overlap a position, as codes have at most
/// 16 bits); `dx` keeps `dy`'s format when every sum is a code of it (always
/// when windows do not overlap), and is at full precision otherwise.
pub struct MaxPool2d<
    const C: usize,
    const H: usize,
    const W: usize,
    const OH: usize,
    const OW: usize,
    const B: usize,
> {
    /// Output `[B][C][OH][OW]`, kept for the next layer's backward.
    pub out: Act<S4<B, C, OH, OW>>,
    /// Gradient with respect to the input (written by `backward` with `want_dx`).
    dx: Tensor<S4<B, C, H, W>>,
    win: Window,
    /// Position `iy * W + ix` of each output's maximum within its plane.
    arg: [[[[usize; OW]; OH]; C]; B],
}

impl<
        const C: usize,
        const H: usize,
        const W: usize,
        const OH: usize,
        const OW: usize,
        const B: usize,
    > MaxPool2d<C, H, W, OH, OW, B>
{
    /// Max pooling with output tensor id `id * 16`; `kernel`, `stride` and
    /// `pad` (rows, columns) as in PyTorch.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `H` or `W` is zero, a kernel size or stride is
    /// zero, a padding exceeds half its kernel size, the kernel is larger
    /// than the padded input, or `OH`/`OW` are not
    /// `(H + 2 pad - kernel) / stride + 1`.
    ///
    /// # Examples
    ///
    /// ```
    /// use fixnn::layers::MaxPool2d;
    /// // 3x3 windows, stride 2, padding 1: 8x8 -> 4x4.
    /// assert!(MaxPool2d::<2, 8, 8, 4, 4, 1>::new(0, (3, 3), (2, 2), (1, 1)).is_ok());
    /// assert!(MaxPool2d::<2, 8, 8, 3, 3, 1>::new(0, (3, 3), (2, 2), (1, 1)).is_err());
    /// ```
    pub fn new(
        id: u32,
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
    ) -> Result<Self> {
        Ok(MaxPool2d {
            out: Act::new(id.wrapping_mul(ID_STRIDE)),
            dx: Tensor::zeros(),
            win: Window::new(kernel, stride, pad, (H, W, OH, OW))?,
            arg: [[[[0; OW]; OH]; C]; B],
        })
    }

    /// Kernel size (rows, columns).
    pub fn kernel(&self) -> (usize, usize) {
        self.win.kernel
    }

    /// Stride (rows, columns).
    pub fn stride(&self) -> (usize, usize) {
        self.win.stride
    }

    /// Padding (rows, columns).
    pub fn pad(&self) -> (usize, usize) {
        self.win.pad
    }
}

impl<
        const C: usize,
        const H: usize,
        const W: usize,
        const OH: usize,
        const OW: usize,
        const B: usize,
    > Layer for MaxPool2d<C, H, W, OH, OW, B>
{
    type In = S4<B, C, H, W>;
    type Out = S4<B, C, OH, OW>;
    const TYPE: &'static str = "MaxPool2d";
    const HAS_PARAMS: bool = false;

    fn forward<Bk: Backend>(
        &mut self,
        _bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<S4<B, C, H, W>>,
    ) -> Result<()> {
        let win = self.win;
        let planes = self.out.t.v.iter_mut().flatten();
        let args = self.arg.iter_mut().flatten();
        for ((yp, ap), xp) in planes.zip(args).zip(x.v.iter().flatten()) {
            for (oy, (yr, ar)) in yp.iter_mut().zip(ap.iter_mut()).enumerate() {
                for (ox, (y, a)) in yr.iter_mut().zip(ar.iter_mut()).enumerate() {
                    let mut best: Option<(usize, f32)> = None;
                    win.visit(H, W, oy, ox, |iy, ix| {
                        let v = at(xp, iy, ix);
                        if best.is_none_or(|(_, m)| v > m) {
                            best = Some((iy * W + ix, v));
                        }
                    });
                    // A checked window always covers an input position.
                    (*a, *y) = best.unwrap_or((0, 0.0));
                }
            }
        }
        self.out.finish_exact(ctx, x.fmt)
    }

    fn output(&self) -> &Tensor<S4<B, C, OH, OW>> {
        &self.out.t
    }

    fn backward<Bk: Backend>(
        &mut self,
        _bk: &Bk,
        ctx: &Ctx,
        _x: &Tensor<S4<B, C, H, W>>,
        dy: &mut Tensor<S4<B, C, OH, OW>>,
        want_dx: bool,
    ) -> Result<()> {
        self.out.prepare_grad(ctx, dy)?;
        if !want_dx {
            return Ok(());
        }
        let dx = &mut self.dx;
        dx.flat_mut().fill(0.0);
        let planes = dx.v.iter_mut().flatten();
        let args = self.arg.iter().flatten();
        for ((dp, ap), gp) in planes.zip(args).zip(dy.v.iter().flatten()) {
            let dp = dp.as_flattened_mut();
            for (&i, &g) in ap.as_flattened().iter().zip(gp.as_flattened()) {
                if let Some(d) = dp.get_mut(i) {
                    *d += g;
                }
            }
        }
        dx.fmt = dy.fmt.filter(|&f| {
            dx.flat().iter().all(|&v| {
                let q = f.code_of(v);
                (f.min_code()..=f.max_code()).contains(&q) && f.to_f32(q) == v
            })
        });
        Ok(())
    }

    fn input_grad(&self) -> &Tensor<S4<B, C, H, W>> {
        &self.dx
    }

    fn input_grad_mut(&mut self) -> &mut Tensor<S4<B, C, H, W>> {
        &mut self.dx
    }

    fn visit(&mut self, v: &mut dyn Visitor) {
        v.tensor(self.out.tensor_mut(Self::TYPE, "output"));
    }
}

/// Average pooling over `KH x KW` windows (kernel, stride and padding set
/// at run time), batch `B`: input `[B][C][H][W]`, output `[B][C][OH][OW]`
/// with `OH = (H + 2 ph - KH) / sh + 1` (floor mode; likewise `OW`), as
/// PyTorch's `AvgPool2d` with `count_include_pad = true`: every window sum
/// is divided by `d = KH * KW`, padded positions counting as zeros.
///
/// Tensors: output `out` (id `id * 16`).
///
/// # Arithmetic
///
/// * Quantized input, output data config quantizing: the window sum of
///   codes `s` is exact, and the exact rational `s * step / d` is rounded to
///   the output format with the config's rounding and saturation
///   ([`requantize_ratio`](crate::quant::requantize_ratio)): within half a
///   step for nearest rounding, one step for floor and stochastic. `Auto`
///   chooses the scale from the averages truncated toward zero to
///   `2^-k` input steps, `k = ceil(log2 d) + 16`: exact for `Max` and
///   `MaxTenPercent` (which depend only on `ceil(log2 |y|)`). `MinMax`
///   covers the truncated extremes: an extreme less than `2^-k` input
///   steps beyond a code of the chosen range may saturate by one step.
/// * Quantized input, `None` output config: `s * step` converted to f32,
///   then divided by `d` in f32: error at most `2 u |y|` (`u = 2^-24`,
///   `d <= 2^24`).
/// * Full-precision input: f32 sum in row-major window order, divided by
///   `d`, then quantized by the output config: error at most
///   `gamma_{d+2} * sum |x| / d` (`gamma_n = n u / (1 - n u)`) before the
///   output's own rounding.
///
/// Backward: `dx` gets `dy / d` (f32) at every input position of the
/// window, summed where windows overlap in row-major output order; `dx`
/// leaves at full precision.
pub struct AvgPool2d<
    const C: usize,
    const H: usize,
    const W: usize,
    const OH: usize,
    const OW: usize,
    const B: usize,
> {
    /// Output `[B][C][OH][OW]`, kept for the next layer's backward.
    pub out: Act<S4<B, C, OH, OW>>,
    /// Gradient with respect to the input (written by `backward` with `want_dx`).
    dx: Tensor<S4<B, C, H, W>>,
    win: Window,
    div: NonZeroU32,
    acc: [[[[i64; OW]; OH]; C]; B],
}

impl<
        const C: usize,
        const H: usize,
        const W: usize,
        const OH: usize,
        const OW: usize,
        const B: usize,
    > AvgPool2d<C, H, W, OH, OW, B>
{
    /// Average pooling with output tensor id `id * 16`; `kernel`, `stride`
    /// and `pad` (rows, columns) as in PyTorch.
    ///
    /// # Errors
    ///
    /// As [`MaxPool2d::new`], and [`Error::Shape`] if the window has more
    /// than `u32::MAX` elements.
    ///
    /// # Examples
    ///
    /// ```
    /// use fixnn::layers::AvgPool2d;
    /// assert!(AvgPool2d::<3, 6, 6, 3, 3, 2>::new(0, (2, 2), (2, 2), (0, 0)).is_ok());
    /// // padding above half the kernel is refused, as in PyTorch
    /// assert!(AvgPool2d::<3, 6, 6, 4, 4, 2>::new(0, (2, 2), (2, 2), (2, 2)).is_err());
    /// ```
    pub fn new(
        id: u32,
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
    ) -> Result<Self> {
        let win = Window::new(kernel, stride, pad, (H, W, OH, OW))?;
        let div = kernel
            .0
            .checked_mul(kernel.1)
            .and_then(|d| u32::try_from(d).ok())
            .and_then(NonZeroU32::new)
            .ok_or(shape_err("pooling window has more than u32::MAX elements"))?;
        Ok(AvgPool2d {
            out: Act::new(id.wrapping_mul(ID_STRIDE)),
            dx: Tensor::zeros(),
            win,
            div,
            acc: [[[[0; OW]; OH]; C]; B],
        })
    }

    /// Kernel size (rows, columns).
    pub fn kernel(&self) -> (usize, usize) {
        self.win.kernel
    }

    /// Stride (rows, columns).
    pub fn stride(&self) -> (usize, usize) {
        self.win.stride
    }

    /// Padding (rows, columns).
    pub fn pad(&self) -> (usize, usize) {
        self.win.pad
    }

    /// Forward with a quantized input `x` (format `f`).
    fn forward_codes(&mut self, ctx: &Ctx, x: &Tensor<S4<B, C, H, W>>, f: Format) -> Result<()> {
        let (win, e, div) = (self.win, f.step_exp(), self.div);
        let mut next = self.out.quant.cfg;
        if !ctx.training && next.method == Method::Auto {
            next.method = Method::Fixed;
        }
        // A real-valued output scale takes the f32 path below: the f32
        // averages are quantized by `self.out.quantize` (multiplier and all).
        let real = next.is_real();
        if next.method == Method::Auto && !real {
            // Averages truncated toward zero to 2^-k steps; 2^k >= 2 d keeps
            // ceil(log2 |y|) of every element.
            let k = 16 + (u32::BITS - (div.get() - 1).leading_zeros());
            let acc = flat4_mut(&mut self.acc);
            window_sums(&win, x, (OH, OW), f, |i, s| {
                let t = ((s as i128) << k) / div.get() as i128;
                if let Some(a) = acc.get_mut(i) {
                    *a = t.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
                }
            });
            next.update_scale_codes(e - k as i32, flat4(&self.acc))?;
        }
        let of = if real { None } else { next.format()? };
        let Some(of) = of else {
            let d = div.get() as f32;
            let y = self.out.t.flat_mut();
            window_sums(&win, x, (OH, OW), f, |i, s| {
                if let Some(y) = y.get_mut(i) {
                    *y = acc_to_f32(s, e) / d;
                }
            });
            return self.out.quantize(ctx);
        };
        self.out.quant.cfg.scale = next.scale;
        self.out.quant.cfg.zero_point = next.zero_point;
        self.out.quant.cfg.ema = next.ema;
        let r = ctx.rounder(self.out.quant.id, next.rounding);
        let (y, sat) = (flat4_mut(&mut self.out.t.v), flat4_mut(&mut self.out.sat));
        let mut n = 0u64;
        window_sums(&win, x, (OH, OW), f, |i, s| {
            let (q, clamped) = r.round_ratio(i, s, e, div, of);
            if let (Some(y), Some(m)) = (y.get_mut(i), sat.get_mut(i)) {
                (*y, *m) = (of.to_f32(q), clamped);
            }
            n += clamped as u64;
        });
        self.out.t.fmt = Some(of);
        let stats = &mut self.out.quant.stats;
        stats.data += n;
        stats.data_total += (B * C * OH * OW) as u64;
        Ok(())
    }
}

impl<
        const C: usize,
        const H: usize,
        const W: usize,
        const OH: usize,
        const OW: usize,
        const B: usize,
    > Layer for AvgPool2d<C, H, W, OH, OW, B>
{
    type In = S4<B, C, H, W>;
    type Out = S4<B, C, OH, OW>;
    const TYPE: &'static str = "AvgPool2d";
    const HAS_PARAMS: bool = false;

    fn forward<Bk: Backend>(
        &mut self,
        _bk: &Bk,
        ctx: &Ctx,
        x: &Tensor<S4<B, C, H, W>>,
    ) -> Result<()> {
        if let Some(f) = x.fmt {
            return self.forward_codes(ctx, x, f);
        }
        let (win, d) = (self.win, self.div.get() as f32);
        for (yp, xp) in self.out.t.v.iter_mut().flatten().zip(x.v.iter().flatten()) {
            for (oy, yr) in yp.iter_mut().enumerate() {
                for (ox, y) in yr.iter_mut().enumerate() {
                    let mut s = 0.0f32;
                    win.visit(H, W, oy, ox, |iy, ix| s += at(xp, iy, ix));
                    *y = s / d;
                }
            }
        }
        self.out.quantize(ctx)
    }

    fn output(&self) -> &Tensor<S4<B, C, OH, OW>> {
        &self.out.t
    }

    fn backward<Bk: Backend>(
        &mut self,
        _bk: &Bk,
        ctx: &Ctx,
        _x: &Tensor<S4<B, C, H, W>>,
        dy: &mut Tensor<S4<B, C, OH, OW>>,
        want_dx: bool,
    ) -> Result<()> {
        self.out.prepare_grad(ctx, dy)?;
        if !want_dx {
            return Ok(());
        }
        let dx = &mut self.dx;
        dx.flat_mut().fill(0.0);
        let (win, d) = (self.win, self.div.get() as f32);
        for (dp, gp) in dx.v.iter_mut().flatten().zip(dy.v.iter().flatten()) {
            for (oy, gr) in gp.iter().enumerate() {
                for (ox, &g) in gr.iter().enumerate() {
                    let share = g / d;
                    win.visit(H, W, oy, ox, |iy, ix| {
                        if let Some(d) = dp.get_mut(iy).and_then(|r| r.get_mut(ix)) {
                            *d += share;
                        }
                    });
                }
            }
        }
        dx.fmt = None;
        Ok(())
    }

    fn input_grad(&self) -> &Tensor<S4<B, C, H, W>> {
        &self.dx
    }

    fn input_grad_mut(&mut self) -> &mut Tensor<S4<B, C, H, W>> {
        &mut self.dx
    }

    fn visit(&mut self, v: &mut dyn Visitor) {
        v.tensor(self.out.tensor_mut(Self::TYPE, "output"));
    }
}

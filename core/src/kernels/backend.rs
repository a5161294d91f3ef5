//! [`DspBackend`]: the backend operations on packed integer tiles.

use core::cell::{Cell, RefCell};

use super::gemm::{gemm, CodeConv};
use crate::backend::{AccOut, Backend, ConvGeom, LinearGeom, Operand, Pass, RefBackend};
use crate::error::Result;

/// A [`Backend`] that computes integer products (both operands quantized)
/// with the packed-tile kernels of this module ([`gemm`], `SMLAD` on
/// Cortex-M4/M7), and everything else with [`RefBackend`].
///
/// Same bits as [`RefBackend`] for every input: integer sums are exact
/// either way, and an operation it cannot run on tiles is handed to
/// [`RefBackend`] whole. That happens for f32 operands, codes wider than
/// the 32-bit chunks allow (`bits_a + bits_b > 30`), a value that is not a
/// code of its format, a `scratch` too small for four words per tile row,
/// and a re-entrant call while the scratch is in use.
///
/// `scratch` is the caller's: packed tiles of the operands live there (two
/// codes per word). A linear layer needs `(round_up_2(batch) +
/// round_up_2(out)) * 2` words at least and runs in one `k` tile with
/// `(round_up_2(batch) + round_up_2(out)) * round_up_4(inp) / 2` words; a
/// convolution's forward pass needs as much for `oh * ow` rows and `cout /
/// groups` rows of `cin / groups * kh * kw`.
#[derive(Debug)]
pub struct DspBackend<'s> {
    scratch: RefCell<&'s mut [u32]>,
    fast: Cell<u32>,
    fallback: Cell<u32>,
}

impl<'s> DspBackend<'s> {
    /// A backend that packs tiles into `scratch`.
    pub fn new(scratch: &'s mut [u32]) -> Self {
        DspBackend {
            scratch: RefCell::new(scratch),
            fast: Cell::new(0),
            fallback: Cell::new(0),
        }
    }

    /// Operations computed on packed tiles so far (saturating).
    pub fn fast_calls(&self) -> u32 {
        self.fast.get()
    }

    /// Operations handed to [`RefBackend`] so far (saturating).
    pub fn fallback_calls(&self) -> u32 {
        self.fallback.get()
    }

    /// Run `fast` on the scratch if both operands are quantized, the output
    /// is integer and the scratch is free; otherwise, or if `fast` declines,
    /// run `slow` (the reference) on the same buffers.
    fn run(
        &self,
        a: Operand<'_>,
        b: Operand<'_>,
        out: AccOut<'_>,
        fast: impl FnOnce(&mut [u32], CodeConv, CodeConv, &mut [i64]) -> bool,
        slow: impl FnOnce(AccOut<'_>) -> Result<()>,
    ) -> Result<()> {
        let convs = match (a.fmt, b.fmt) {
            (Some(fa), Some(fb)) => CodeConv::new(fa).zip(CodeConv::new(fb)),
            _ => None,
        };
        match (convs, out) {
            (Some((ca, cb)), AccOut::Int(o)) => {
                let done = match self.scratch.try_borrow_mut() {
                    Ok(mut s) => fast(&mut s[..], ca, cb, o),
                    Err(_) => false,
                };
                if done {
                    self.fast.set(self.fast.get().saturating_add(1));
                    Ok(())
                } else {
                    self.fallback.set(self.fallback.get().saturating_add(1));
                    slow(AccOut::Int(o))
                }
            }
            (_, out) => {
                self.fallback.set(self.fallback.get().saturating_add(1));
                slow(out)
            }
        }
    }
}

/// Input coordinate read by output coordinate `o` at kernel tap `k`, if inside.
#[inline(always)]
fn tap(o: usize, k: usize, stride: usize, pad: usize, dil: usize, size: usize) -> Option<usize> {
    (o * stride + k * dil)
        .checked_sub(pad)
        .filter(|&i| i < size)
}

/// Output coordinate that reads input coordinate `i` at kernel tap `k`, if any.
#[inline(always)]
fn tap_back(
    i: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    osize: usize,
) -> Option<usize> {
    let t = (i + pad).checked_sub(k * dil)?;
    if !t.is_multiple_of(stride) {
        return None;
    }
    Some(t / stride).filter(|&o| o < osize)
}

impl Backend for DspBackend<'_> {
    fn linear(&self, g: LinearGeom, x: Operand<'_>, w: Operand<'_>, y: AccOut<'_>) -> Result<()> {
        g.check_buffers(Pass::Forward, x.v.len(), w.v.len(), y.len())?;
        let (xv, wv) = (x.v, w.v);
        self.run(
            x,
            w,
            y,
            |s, cx, cw, y| {
                gemm(
                    s,
                    (g.batch, g.out, g.inp),
                    (cx, |b, i| xv[b * g.inp + i]),
                    (cw, |o, i| wv[o * g.inp + i]),
                    y,
                    (g.out, 1),
                )
            },
            |y| RefBackend.linear(g, x, w, y),
        )
    }

    fn linear_input_grad(
        &self,
        g: LinearGeom,
        dy: Operand<'_>,
        w: Operand<'_>,
        dx: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::InputGrad, dy.v.len(), w.v.len(), dx.len())?;
        let (dyv, wv) = (dy.v, w.v);
        self.run(
            dy,
            w,
            dx,
            |s, cd, cw, dx| {
                gemm(
                    s,
                    (g.batch, g.inp, g.out),
                    (cd, |b, o| dyv[b * g.out + o]),
                    (cw, |i, o| wv[o * g.inp + i]),
                    dx,
                    (g.inp, 1),
                )
            },
            |dx| RefBackend.linear_input_grad(g, dy, w, dx),
        )
    }

    fn linear_weight_grad(
        &self,
        g: LinearGeom,
        dy: Operand<'_>,
        x: Operand<'_>,
        dw: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::WeightGrad, dy.v.len(), x.v.len(), dw.len())?;
        let (dyv, xv) = (dy.v, x.v);
        self.run(
            dy,
            x,
            dw,
            |s, cd, cx, dw| {
                gemm(
                    s,
                    (g.out, g.inp, g.batch),
                    (cd, |o, b| dyv[b * g.out + o]),
                    (cx, |i, b| xv[b * g.inp + i]),
                    dw,
                    (g.inp, 1),
                )
            },
            |dw| RefBackend.linear_weight_grad(g, dy, x, dw),
        )
    }

    fn conv2d(&self, g: ConvGeom, x: Operand<'_>, w: Operand<'_>, y: AccOut<'_>) -> Result<()> {
        g.check_buffers(Pass::Forward, x.v.len(), w.v.len(), y.len())?;
        let (xv, wv) = (x.v, w.v);
        self.run(
            x,
            w,
            y,
            |s, cx, cw, y| {
                let (cpg, opg) = (g.cpg(), g.opg());
                let (khw, ohw) = (g.kh * g.kw, g.oh * g.ow);
                let kk = cpg * khw;
                for b in 0..g.batch {
                    for grp in 0..g.groups {
                        let xb = (b * g.cin + grp * cpg) * g.h * g.w;
                        let wb = grp * opg * kk;
                        let yb = (b * g.cout + grp * opg) * ohw;
                        let Some(yo) = y.get_mut(yb..) else {
                            return false;
                        };
                        // A: output pixels by (ci, ky, kx); B: weights.
                        let a = |p: usize, k: usize| {
                            let (oy, ox) = (p / g.ow, p % g.ow);
                            let (ci, t) = (k / khw, k % khw);
                            let (ky, kx) = (t / g.kw, t % g.kw);
                            match (
                                tap(oy, ky, g.stride.0, g.pad.0, g.dil.0, g.h),
                                tap(ox, kx, g.stride.1, g.pad.1, g.dil.1, g.w),
                            ) {
                                (Some(iy), Some(ix)) => xv[xb + (ci * g.h + iy) * g.w + ix],
                                _ => 0.0,
                            }
                        };
                        let bw = |j: usize, k: usize| wv[wb + j * kk + k];
                        if !gemm(s, (ohw, opg, kk), (cx, a), (cw, bw), yo, (1, ohw)) {
                            return false;
                        }
                    }
                }
                true
            },
            |y| RefBackend.conv2d(g, x, w, y),
        )
    }

    fn conv2d_input_grad(
        &self,
        g: ConvGeom,
        dy: Operand<'_>,
        w: Operand<'_>,
        dx: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::InputGrad, dy.v.len(), w.v.len(), dx.len())?;
        let (dyv, wv) = (dy.v, w.v);
        self.run(
            dy,
            w,
            dx,
            |s, cd, cw, dx| {
                let (cpg, opg) = (g.cpg(), g.opg());
                let (khw, hw) = (g.kh * g.kw, g.h * g.w);
                for b in 0..g.batch {
                    for grp in 0..g.groups {
                        let yb = (b * g.cout + grp * opg) * g.oh * g.ow;
                        let xb = (b * g.cin + grp * cpg) * hw;
                        let Some(xo) = dx.get_mut(xb..) else {
                            return false;
                        };
                        // A: input pixels by (co, ky, kx) of the group; B: weights
                        // rows ci, same columns.
                        let a = |p: usize, k: usize| {
                            let (iy, ix) = (p / g.w, p % g.w);
                            let (co, t) = (k / khw, k % khw);
                            let (ky, kx) = (t / g.kw, t % g.kw);
                            match (
                                tap_back(iy, ky, g.stride.0, g.pad.0, g.dil.0, g.oh),
                                tap_back(ix, kx, g.stride.1, g.pad.1, g.dil.1, g.ow),
                            ) {
                                (Some(oy), Some(ox)) => dyv[yb + (co * g.oh + oy) * g.ow + ox],
                                _ => 0.0,
                            }
                        };
                        let bw = |ci: usize, k: usize| {
                            let (co, t) = (k / khw, k % khw);
                            wv[((grp * opg + co) * cpg + ci) * khw + t]
                        };
                        if !gemm(s, (hw, cpg, opg * khw), (cd, a), (cw, bw), xo, (1, hw)) {
                            return false;
                        }
                    }
                }
                true
            },
            |dx| RefBackend.conv2d_input_grad(g, dy, w, dx),
        )
    }

    fn conv2d_weight_grad(
        &self,
        g: ConvGeom,
        dy: Operand<'_>,
        x: Operand<'_>,
        dw: AccOut<'_>,
    ) -> Result<()> {
        g.check_buffers(Pass::WeightGrad, dy.v.len(), x.v.len(), dw.len())?;
        let (dyv, xv) = (dy.v, x.v);
        self.run(
            dy,
            x,
            dw,
            |s, cd, cx, dw| {
                let (cpg, opg) = (g.cpg(), g.opg());
                let (khw, ohw) = (g.kh * g.kw, g.oh * g.ow);
                let kk = cpg * khw;
                for grp in 0..g.groups {
                    let Some(wo) = dw.get_mut(grp * opg * kk..) else {
                        return false;
                    };
                    // A: output channels of the group by (b, oy, ox); B:
                    // (ci, ky, kx) by (b, oy, ox), the input each reads.
                    let a = |co: usize, k: usize| {
                        let (b, p) = (k / ohw, k % ohw);
                        dyv[(b * g.cout + grp * opg + co) * ohw + p]
                    };
                    let bx = |j: usize, k: usize| {
                        let (b, p) = (k / ohw, k % ohw);
                        let (oy, ox) = (p / g.ow, p % g.ow);
                        let (ci, t) = (j / khw, j % khw);
                        let (ky, kx) = (t / g.kw, t % g.kw);
                        match (
                            tap(oy, ky, g.stride.0, g.pad.0, g.dil.0, g.h),
                            tap(ox, kx, g.stride.1, g.pad.1, g.dil.1, g.w),
                        ) {
                            (Some(iy), Some(ix)) => {
                                xv[((b * g.cin + grp * cpg + ci) * g.h + iy) * g.w + ix]
                            }
                            _ => 0.0,
                        }
                    };
                    if !gemm(s, (opg, kk, g.batch * ohw), (cd, a), (cx, bx), wo, (kk, 1)) {
                        return false;
                    }
                }
                true
            },
            |dw| RefBackend.conv2d_weight_grad(g, dy, x, dw),
        )
    }
}

//! The six products of [`Backend`](crate::backend::Backend) on integer code
//! slices, lowered to [`gemm`]. Same sums, same output layout as
//! [`RefBackend`](crate::backend::RefBackend)'s integer path.

use super::gemm::{gemm, CodeConv, Rows};
use crate::backend::{ConvGeom, LinearGeom, Pass};

/// A flat tensor of integer codes (row-major, as the backend's operands).
pub trait Codes {
    /// Number of elements.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Code width: every code must lie in `[-2^(bits-1), 2^(bits-1) - 1]`
    /// (the kernels check, and decline otherwise).
    fn bits(&self) -> u32;
    /// The code at `i`; any out-of-range number (e.g. `i32::MIN`) if `i` is
    /// past the end or the element is not a code.
    fn at(&self, i: usize) -> i32;

    /// Call `visit` with the codes at `start..start + len`, two at a time
    /// (an odd count ends with `(last, 0)`), as [`Codes::at`] reads them.
    #[inline(always)]
    fn run(&self, start: usize, len: usize, visit: &mut impl FnMut(i32, i32)) {
        let mut i = start;
        for _ in 0..len / 2 {
            visit(self.at(i), self.at(i + 1));
            i += 2;
        }
        if len % 2 == 1 {
            visit(self.at(i), 0);
        }
    }
}

/// [`Codes::run`] over a slice: pairs, then the odd last one; a range past
/// the end reports one out-of-range pair.
#[inline(always)]
fn run_slice<T: Copy>(
    v: &[T],
    start: usize,
    len: usize,
    code: impl Fn(T) -> i32,
    visit: &mut impl FnMut(i32, i32),
) {
    let Some(s) = start.checked_add(len).and_then(|end| v.get(start..end)) else {
        visit(i32::MIN, i32::MIN);
        return;
    };
    let pairs = s.chunks_exact(2);
    let rest = pairs.remainder();
    for p in pairs {
        visit(code(p[0]), code(p[1]));
    }
    if let [last] = rest {
        visit(code(*last), 0);
    }
}

/// Codes stored as `i8` (`bits <= 8`) or `i16` (`bits <= 16`).
#[derive(Clone, Copy, Debug)]
pub struct CodeSlice<'a, T> {
    /// The codes.
    pub v: &'a [T],
    /// Their width in bits.
    pub bits: u32,
}

impl Codes for CodeSlice<'_, i8> {
    fn len(&self) -> usize {
        self.v.len()
    }
    #[inline(always)]
    fn run(&self, start: usize, len: usize, visit: &mut impl FnMut(i32, i32)) {
        run_slice(self.v, start, len, i32::from, visit);
    }
    fn bits(&self) -> u32 {
        self.bits
    }
    #[inline(always)]
    fn at(&self, i: usize) -> i32 {
        self.v.get(i).map_or(i32::MIN, |&c| i32::from(c))
    }
}

impl Codes for CodeSlice<'_, i16> {
    fn len(&self) -> usize {
        self.v.len()
    }
    #[inline(always)]
    fn run(&self, start: usize, len: usize, visit: &mut impl FnMut(i32, i32)) {
        run_slice(self.v, start, len, i32::from, visit);
    }
    fn bits(&self) -> u32 {
        self.bits
    }
    #[inline(always)]
    fn at(&self, i: usize) -> i32 {
        self.v.get(i).map_or(i32::MIN, |&c| i32::from(c))
    }
}

/// f32 values that are codes of a format (a backend [`Operand`](crate::backend::Operand)),
/// converted as they are packed.
#[derive(Clone, Copy, Debug)]
pub struct F32Codes<'a> {
    /// The values.
    pub v: &'a [f32],
    /// Their format's conversion.
    pub conv: CodeConv,
}

impl Codes for F32Codes<'_> {
    fn len(&self) -> usize {
        self.v.len()
    }
    #[inline(always)]
    fn run(&self, start: usize, len: usize, visit: &mut impl FnMut(i32, i32)) {
        run_slice(self.v, start, len, |x| self.conv.code(x), visit);
    }
    fn bits(&self) -> u32 {
        self.conv.bits()
    }
    #[inline(always)]
    fn at(&self, i: usize) -> i32 {
        self.v.get(i).map_or(i32::MIN, |&x| self.conv.code(x))
    }
}

/// Rows at `base + r rs + k ks`.
struct Affine<'a, C> {
    c: &'a C,
    base: usize,
    rs: usize,
    ks: usize,
}

impl<C: Codes> Rows for Affine<'_, C> {
    fn bits(&self) -> u32 {
        self.c.bits()
    }
    #[inline(always)]
    fn row(&self, r: usize, k0: usize, k1: usize, visit: &mut impl FnMut(i32, i32)) {
        let i = self.base + r * self.rs + k0 * self.ks;
        if self.ks == 1 {
            self.c.run(i, k1 - k0, visit);
            return;
        }
        let mut i = i;
        for _ in 0..(k1 - k0) / 2 {
            visit(self.c.at(i), self.c.at(i + self.ks));
            i += 2 * self.ks;
        }
        if (k1 - k0) % 2 == 1 {
            visit(self.c.at(i), 0);
        }
    }
}

/// Rows whose element `(r, k)` is at `idx(r, k)`, zero where `None`.
struct Gather<'a, C, F> {
    c: &'a C,
    idx: F,
}

impl<C: Codes, F: Fn(usize, usize) -> Option<usize>> Rows for Gather<'_, C, F> {
    fn bits(&self) -> u32 {
        self.c.bits()
    }
    #[inline(always)]
    fn row(&self, r: usize, k0: usize, k1: usize, visit: &mut impl FnMut(i32, i32)) {
        let get = |k: usize| (self.idx)(r, k).map_or(0, |i| self.c.at(i));
        let mut k = k0;
        while k + 1 < k1 {
            visit(get(k), get(k + 1));
            k += 2;
        }
        if k < k1 {
            visit(get(k), 0);
        }
    }
}

/// im2col of one batch element and group: row = output pixel, `k = (ci,
/// ky, kx)`, the input each tap reads (zero in the padding).
struct Im2col<'a, C> {
    c: &'a C,
    g: ConvGeom,
    /// Index of `x[b][grp cpg][0][0]`.
    base: usize,
}

impl<C: Codes> Rows for Im2col<'_, C> {
    fn bits(&self) -> u32 {
        self.c.bits()
    }
    #[inline(always)]
    fn row(&self, p: usize, k0: usize, k1: usize, visit: &mut impl FnMut(i32, i32)) {
        let g = &self.g;
        let (oy, ox) = (p / g.ow, p % g.ow);
        let khw = g.kh * g.kw;
        // Input column of tap kx: x0 + kx dil (inside when 0 <= it < w).
        let x0 = (ox * g.stride.1) as isize - g.pad.1 as isize;
        let (lo_kx, hi_kx) = {
            // Taps inside the row: kx in [lo_kx, hi_kx).
            let d = g.dil.1 as isize;
            let lo = if x0 >= 0 { 0 } else { (-x0 + d - 1) / d };
            let hi = ((g.w as isize - x0 + d - 1) / d).clamp(0, g.kw as isize);
            (lo.min(hi) as usize, hi as usize)
        };
        let (mut lo, mut odd) = (0, false);
        let mut emit = |v: i32| {
            if odd {
                visit(lo, v);
            } else {
                lo = v;
            }
            odd = !odd;
        };
        let mut k = k0;
        let (mut ci, t) = (k0 / khw, k0 % khw);
        let (mut ky, mut kx0) = (t / g.kw, t % g.kw);
        while k < k1 {
            // One kernel row (ci, ky): taps kx0..kx1 of it lie in k0..k1.
            let kx1 = g.kw.min(kx0 + (k1 - k));
            match tap(oy, ky, g.stride.0, g.pad.0, g.dil.0, g.h) {
                Some(iy) => {
                    let row = self.base + (ci * g.h + iy) * g.w;
                    for kx in kx0..kx1 {
                        if kx >= lo_kx && kx < hi_kx {
                            let ix = (x0 + (kx * g.dil.1) as isize) as usize;
                            emit(self.c.at(row + ix));
                        } else {
                            emit(0);
                        }
                    }
                }
                None => (kx0..kx1).for_each(|_| emit(0)),
            }
            k += kx1 - kx0;
            kx0 = 0;
            ky += 1;
            if ky == g.kh {
                ky = 0;
                ci += 1;
            }
        }
        if odd {
            visit(lo, 0);
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

/// `y[b][o] = sum_i x[b][i] w[o][i]`, exact. `false` (output partly
/// written) if the lengths do not match `g`, a code is out of its range,
/// the widths are too large (`bits_x + bits_w > 30`) or `scratch` is too
/// small ([`gemm`]).
pub fn linear(
    scratch: &mut [u32],
    g: LinearGeom,
    x: &impl Codes,
    w: &impl Codes,
    y: &mut [i64],
) -> bool {
    if g.check_buffers(Pass::Forward, x.len(), w.len(), y.len())
        .is_err()
    {
        return false;
    }
    let a = Affine {
        c: x,
        base: 0,
        rs: g.inp,
        ks: 1,
    };
    let b = Affine {
        c: w,
        base: 0,
        rs: g.inp,
        ks: 1,
    };
    gemm(scratch, (g.batch, g.out, g.inp), &a, &b, y, (g.out, 1))
}

/// `dx[b][i] = sum_o dy[b][o] w[o][i]`, exact; `false` as for [`linear`].
pub fn linear_input_grad(
    scratch: &mut [u32],
    g: LinearGeom,
    dy: &impl Codes,
    w: &impl Codes,
    dx: &mut [i64],
) -> bool {
    if g.check_buffers(Pass::InputGrad, dy.len(), w.len(), dx.len())
        .is_err()
    {
        return false;
    }
    let a = Affine {
        c: dy,
        base: 0,
        rs: g.out,
        ks: 1,
    };
    let b = Affine {
        c: w,
        base: 0,
        rs: 1,
        ks: g.inp,
    };
    gemm(scratch, (g.batch, g.inp, g.out), &a, &b, dx, (g.inp, 1))
}

/// `dw[o][i] = sum_b dy[b][o] x[b][i]`, exact; `false` as for [`linear`].
pub fn linear_weight_grad(
    scratch: &mut [u32],
    g: LinearGeom,
    dy: &impl Codes,
    x: &impl Codes,
    dw: &mut [i64],
) -> bool {
    if g.check_buffers(Pass::WeightGrad, dy.len(), x.len(), dw.len())
        .is_err()
    {
        return false;
    }
    let a = Affine {
        c: dy,
        base: 0,
        rs: 1,
        ks: g.out,
    };
    let b = Affine {
        c: x,
        base: 0,
        rs: 1,
        ks: g.inp,
    };
    gemm(scratch, (g.out, g.inp, g.batch), &a, &b, dw, (g.inp, 1))
}

/// The convolution of [`Backend::conv2d`](crate::backend::Backend::conv2d),
/// exact: per batch element and group, im2col of the output pixels times
/// the group's weights. `false` as for [`linear`] (the geometry is checked
/// too).
pub fn conv2d(
    scratch: &mut [u32],
    g: ConvGeom,
    x: &impl Codes,
    w: &impl Codes,
    y: &mut [i64],
) -> bool {
    if g.check_buffers(Pass::Forward, x.len(), w.len(), y.len())
        .is_err()
    {
        return false;
    }
    let (cpg, opg) = (g.cpg(), g.opg());
    let (kk, ohw) = (cpg * g.kh * g.kw, g.oh * g.ow);
    for b in 0..g.batch {
        for grp in 0..g.groups {
            let a = Im2col {
                c: x,
                g,
                base: (b * g.cin + grp * cpg) * g.h * g.w,
            };
            let bw = Affine {
                c: w,
                base: grp * opg * kk,
                rs: kk,
                ks: 1,
            };
            let Some(yo) = y.get_mut((b * g.cout + grp * opg) * ohw..) else {
                return false;
            };
            // Weights as A: output rows (channels) are contiguous in `y`.
            if !gemm(scratch, (opg, ohw, kk), &bw, &a, yo, (ohw, 1)) {
                return false;
            }
        }
    }
    true
}

/// The input gradient of [`Backend::conv2d_input_grad`](crate::backend::Backend::conv2d_input_grad),
/// exact: per batch element and group, the output gradients each input
/// pixel received through each `(co, ky, kx)`, times the weights. `false`
/// as for [`conv2d`].
pub fn conv2d_input_grad(
    scratch: &mut [u32],
    g: ConvGeom,
    dy: &impl Codes,
    w: &impl Codes,
    dx: &mut [i64],
) -> bool {
    if g.check_buffers(Pass::InputGrad, dy.len(), w.len(), dx.len())
        .is_err()
    {
        return false;
    }
    let (cpg, opg) = (g.cpg(), g.opg());
    let (khw, hw) = (g.kh * g.kw, g.h * g.w);
    for b in 0..g.batch {
        for grp in 0..g.groups {
            let yb = (b * g.cout + grp * opg) * g.oh * g.ow;
            let a = Gather {
                c: dy,
                idx: |p: usize, k: usize| {
                    let (iy, ix) = (p / g.w, p % g.w);
                    let (co, t) = (k / khw, k % khw);
                    let (ky, kx) = (t / g.kw, t % g.kw);
                    let oy = tap_back(iy, ky, g.stride.0, g.pad.0, g.dil.0, g.oh)?;
                    let ox = tap_back(ix, kx, g.stride.1, g.pad.1, g.dil.1, g.ow)?;
                    Some(yb + (co * g.oh + oy) * g.ow + ox)
                },
            };
            let bw = Gather {
                c: w,
                idx: |ci: usize, k: usize| {
                    let (co, t) = (k / khw, k % khw);
                    Some(((grp * opg + co) * cpg + ci) * khw + t)
                },
            };
            let Some(xo) = dx.get_mut((b * g.cin + grp * cpg) * hw..) else {
                return false;
            };
            if !gemm(scratch, (cpg, hw, opg * khw), &bw, &a, xo, (hw, 1)) {
                return false;
            }
        }
    }
    true
}

/// The weight gradient of [`Backend::conv2d_weight_grad`](crate::backend::Backend::conv2d_weight_grad),
/// exact: per group, the output gradients of its channels times the
/// inputs each `(ci, ky, kx)` read, over `(b, oy, ox)`. `false` as for
/// [`conv2d`].
pub fn conv2d_weight_grad(
    scratch: &mut [u32],
    g: ConvGeom,
    dy: &impl Codes,
    x: &impl Codes,
    dw: &mut [i64],
) -> bool {
    if g.check_buffers(Pass::WeightGrad, dy.len(), x.len(), dw.len())
        .is_err()
    {
        return false;
    }
    let (cpg, opg) = (g.cpg(), g.opg());
    let (khw, ohw) = (g.kh * g.kw, g.oh * g.ow);
    let kk = cpg * khw;
    for grp in 0..g.groups {
        let a = Gather {
            c: dy,
            idx: |co: usize, k: usize| {
                let (b, p) = (k / ohw, k % ohw);
                Some((b * g.cout + grp * opg + co) * ohw + p)
            },
        };
        let bx = Gather {
            c: x,
            idx: |j: usize, k: usize| {
                let (b, p) = (k / ohw, k % ohw);
                let (oy, ox) = (p / g.ow, p % g.ow);
                let (ci, t) = (j / khw, j % khw);
                let (ky, kx) = (t / g.kw, t % g.kw);
                let iy = tap(oy, ky, g.stride.0, g.pad.0, g.dil.0, g.h)?;
                let ix = tap(ox, kx, g.stride.1, g.pad.1, g.dil.1, g.w)?;
                Some(((b * g.cin + grp * cpg + ci) * g.h + iy) * g.w + ix)
            },
        };
        let Some(wo) = dw.get_mut(grp * opg * kk..) else {
            return false;
        };
        if !gemm(scratch, (opg, kk, g.batch * ohw), &a, &bx, wo, (kk, 1)) {
            return false;
        }
    }
    true
}

/// Packed 2-, 3- and 4-bit codes ([`PackedCodes`](crate::quant::packed::PackedCodes)),
/// unpacked as the tiles are filled: the kernels compute directly from
/// packed weights.
impl Codes for crate::quant::packed::PackedCodes<'_> {
    fn len(&self) -> usize {
        crate::quant::packed::PackedCodes::len(self)
    }
    fn bits(&self) -> u32 {
        u32::from(self.format().bits())
    }
    #[inline(always)]
    fn at(&self, i: usize) -> i32 {
        if i < crate::quant::packed::PackedCodes::len(self) {
            self.code_at(i)
        } else {
            i32::MIN
        }
    }
}

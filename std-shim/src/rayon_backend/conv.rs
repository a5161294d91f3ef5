//! 2-D convolutions as matrix products over padded images.
//!
//! The image an operation reads is first copied into a padded image (zeros
//! where the reference skips a tap), so that the element for reduction step
//! `k` and output `i` sits at `koff[k] + ioff[i]`:
//!
//! * forward, per batch item and group: `y[co][oy, ox] = sum_{ci, ky, kx}
//!   w[co][ci, ky, kx] xp[ci][oy sh + ky dh][ox sw + kx dw]`, where `xp` is
//!   the input padded by `pad`;
//! * input gradient, per batch item and group: `dx[ci][iy, ix] = sum_{co, ky,
//!   kx} w[co][ci, ky, kx] dyp[co][iy + (kh - 1 - ky) dh][ix + (kw - 1 - kx) dw]`,
//!   where `dyp` holds `dy[oy][ox]` at row `oy sh + (kh - 1) dh - ph` (and
//!   likewise across) and zero elsewhere;
//! * weight gradient, per group: `dw[co][ci, ky, kx] = sum_{b, oy, ox}
//!   dy[b][co][oy, ox] xp[b][ci][oy sh + ky dh][ox sw + kx dw]`.
//!
//! The reduction steps run in the reference's order (`ci, ky, kx`;
//! `co, ky, kx`; `b, oy, ox`). A padded zero adds `0 * v` where the
//! reference adds nothing: that is `+-0`, and a sum that starts at `+0.0`
//! never is `-0.0`, so adding it changes nothing, provided `v` is finite
//! (the weights for the forward pass and the input gradient, `dy` for the
//! weight gradient; the caller checks, and otherwise uses the reference).
//! Integer sums are exact in any order.

use fixnn::backend::ConvGeom;
use rayon::prelude::*;

use super::codes::Load;
use super::kernel::{gemm, rows_per_tile, Ctx, Direct, Elem, Out, Packed};
use super::scratch::Buf;
use super::Product;

/// Elements of a packed image operand per matrix product (wider outputs
/// are cut into slabs of columns).
const SLAB: usize = 1 << 16;
/// Elements of both packed operands per chunk of a weight gradient's
/// reduction.
const CHUNK: usize = 1 << 21;

/// Which of the three products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Forward,
    InputGrad,
    WeightGrad,
}

/// One convolution product: `a` and `b` are the operands in the order of
/// the [`Backend`](fixnn::backend::Backend) method (`x, w`; `dy, w`; `dy, x`).
pub(super) struct Conv<'a> {
    pub g: ConvGeom,
    pub kind: Kind,
    pub a: &'a [f32],
    pub b: &'a [f32],
}

/// For every row (or column) of a padded image, the row of the source it
/// holds, or `None` for zero.
type Map = Vec<Option<usize>>;

/// `[start, start + step, ...]`, `n` entries.
fn strided(start: usize, n: usize, step: usize) -> Buf<usize> {
    Buf::collect((0..n).map(|i| start + i * step))
}

/// `a * i + b * j` for `i < n`, `j < m`, row-major.
fn grid(n: usize, a: usize, m: usize, b: usize) -> Buf<usize> {
    Buf::collect((0..n).flat_map(|i| (0..m).map(move |j| a * i + b * j)))
}

/// The padded-image size `(o - 1) s + (k - 1) d + 1` read by the forward
/// taps, or the size `i + (k - 1) d` of the input gradient's image.
fn span(kind: Kind, (i, o, k, s, d): (usize, usize, usize, usize, usize)) -> Option<usize> {
    let kd = (k - 1).checked_mul(d)?;
    match kind {
        Kind::InputGrad => i.checked_add(kd),
        _ => (o - 1).checked_mul(s)?.checked_add(kd)?.checked_add(1),
    }
}

fn dims(g: &ConvGeom) -> [(usize, usize, usize, usize, usize); 2] {
    [
        (g.h, g.oh, g.kh, g.stride.0, g.dil.0),
        (g.w, g.ow, g.kw, g.stride.1, g.dil.1),
    ]
}

/// Forward map: padded row `r` holds input row `r - pad`.
fn fwd_map(len: usize, pad: usize, size: usize) -> Map {
    (0..len)
        .map(|r| r.checked_sub(pad).filter(|&i| i < size))
        .collect()
}

/// Input-gradient map: row `r` holds `dy` row `t / s`, `t = r + pad - (k - 1) d`,
/// when `t` is a multiple of `s` and the row exists.
fn back_map(len: usize, (pad, k, s, d, osize): (usize, usize, usize, usize, usize)) -> Map {
    (0..len)
        .map(|r| {
            let t = (r + pad).checked_sub((k - 1) * d)?;
            if !t.is_multiple_of(s) {
                return None;
            }
            Some(t / s).filter(|&o| o < osize)
        })
        .collect()
}

/// `dst[c][r][q] = load(src[c][rows[r]][cols[q]])`, zero where a map is `None`.
fn pad_into<E: Elem>(
    src: &[f32],
    (h, w): (usize, usize),
    (rows, cols): (&Map, &Map),
    load: Load,
    dst: &mut [E],
) {
    let plane = rows.len() * cols.len();
    if plane == 0 || h * w == 0 {
        dst.fill(E::ZERO);
        return;
    }
    for (dc, sc) in dst.chunks_exact_mut(plane).zip(src.chunks_exact(h * w)) {
        for (drow, r) in dc.chunks_exact_mut(cols.len()).zip(rows) {
            match *r {
                None => drow.fill(E::ZERO),
                Some(r) => {
                    let srow = &sc[r * w..(r + 1) * w];
                    for (d, q) in drow.iter_mut().zip(cols) {
                        *d = match *q {
                            Some(q) => load.get(srow[q]),
                            None => E::ZERO,
                        };
                    }
                }
            }
        }
    }
}

/// `out[.., c] = A B[.., c]` for an `m x n` product with `ld = n`, the image
/// operand B packed a slab of columns at a time.
#[allow(clippy::too_many_arguments)]
fn slabs<E: Elem, T: Out<E>, const N: usize>(
    ctx: Ctx,
    kc: usize,
    a: &Packed<E>,
    src: &[E],
    koff: &[usize],
    noff: &[usize],
    m: usize,
    out: &mut [T],
) {
    let n = noff.len();
    let width = ((SLAB / koff.len().max(1)) / N).max(1) * N;
    for c0 in (0..n).step_by(width) {
        let c1 = n.min(c0 + width);
        let b = Packed::new(ctx.par, kc, N, (src, koff, &noff[c0..c1]), |v| v);
        gemm::<E, T, _, N>(ctx, a, &b, (m, c1 - c0, true), &mut out[c0..], n);
    }
}

/// `out = A B` where B's rows are image rows read in place: column `c` of
/// B is `src[koff[k] + c]`, and output `(oy, ox)` is column `oy wv + ox`
/// (the columns with `ox >= ow` are computed into `virt` and dropped).
#[allow(clippy::too_many_arguments)]
fn direct<E: Elem, T: Out<E>, const N: usize>(
    ctx: Ctx,
    a: &Packed<E>,
    src: &[E],
    koff: &[usize],
    m: usize,
    (oh, ow, wv): (usize, usize, usize),
    virt: &mut Buf<T>,
    out: &mut [T],
) {
    if oh * ow == 0 {
        return;
    }
    let nv = (oh - 1) * wv + ow;
    virt.refill(m * nv, T::ZERO);
    let b = Direct { src, koff };
    gemm::<E, T, _, N>(ctx, a, &b, (m, nv, true), virt, nv);
    for (orow, vrow) in out.chunks_exact_mut(oh * ow).zip(virt.chunks_exact(nv)) {
        for (o, v) in orow.chunks_exact_mut(ow).zip(vrow.chunks(wv)) {
            o.copy_from_slice(&v[..ow]);
        }
    }
}

/// Scratch of one batch item: its padded image and virtual output rows.
type Scratch<E, T> = (Buf<E>, Buf<T>);

/// Runs `f(ctx, b, out_b, scratch)` for every batch item: items in
/// parallel when there are enough of them, else one after the other with
/// the parallelism inside.
fn per_item<E: Elem, T: Out<E>>(
    ctx: Ctx,
    batch: usize,
    len: usize,
    out: &mut [T],
    f: impl Fn(Ctx, usize, &mut [T], &mut Scratch<E, T>) + Sync,
) {
    if len == 0 {
        return;
    }
    if ctx.par && batch >= 2 * ctx.threads {
        let inner = ctx.sequential();
        out.par_chunks_mut(len)
            .enumerate()
            .for_each_init(|| (Buf::new(), Buf::new()), |s, (b, ob)| f(inner, b, ob, s));
    } else {
        let mut s = (Buf::new(), Buf::new());
        for (b, ob) in out.chunks_mut(len).enumerate() {
            f(ctx, b, ob, &mut s);
        }
    }
}

impl Conv<'_> {
    /// Whether the padded images would be out of proportion with the
    /// operands (huge padding or dilation): the reference then computes.
    pub(super) fn too_big(&self) -> bool {
        let g = &self.g;
        let [dh, dw] = dims(g);
        let (Some(hp), Some(wp)) = (span(self.kind, dh), span(self.kind, dw)) else {
            return true;
        };
        let ch = if self.kind == Kind::InputGrad {
            g.cout
        } else {
            g.cin
        };
        let Some(img) = hp.checked_mul(wp).and_then(|p| p.checked_mul(ch)) else {
            return true;
        };
        let plain = (g.cin * g.h * g.w).saturating_add(g.cout * g.oh * g.ow);
        img > plain.saturating_mul(4).saturating_add(1 << 16)
    }

    fn fwd_maps(&self) -> (Map, Map) {
        let g = &self.g;
        let [dh, dw] = dims(g);
        let (hp, wp) = (
            span(Kind::Forward, dh).unwrap_or(0),
            span(Kind::Forward, dw).unwrap_or(0),
        );
        (fwd_map(hp, g.pad.0, g.h), fwd_map(wp, g.pad.1, g.w))
    }

    fn forward<E: Elem, T: Out<E>, const N: usize>(
        &self,
        ctx: Ctx,
        (lx, lw): (Load, Load),
        kc: usize,
        y: &mut [T],
    ) {
        let g = self.g;
        let (cpg, opg, taps) = (g.cpg(), g.opg(), g.kh * g.kw);
        let (kk, sp) = (cpg * taps, g.oh * g.ow);
        let (rows, cols) = self.fwd_maps();
        let wp = cols.len();
        let plane = rows.len() * wp;
        let k_w = strided(0, kk, 1);
        let wpk: Vec<Packed<E>> = (0..g.groups)
            .map(|gi| {
                lw.pack(
                    ctx.par,
                    kc,
                    rows_per_tile(opg),
                    (self.b, &k_w, &strided(gi * opg * kk, opg, kk)),
                )
            })
            .collect();
        // Tap (ci, ky, kx) of output (oy, ox) in a group's padded image is
        // at `k_x[tap] + oy sh wp + ox sw`.
        let taps_x = grid(g.kh, g.dil.0 * wp, g.kw, g.dil.1);
        let k_x = Buf::collect((0..cpg).flat_map(|ci| taps_x.iter().map(move |&o| ci * plane + o)));
        let in_place = g.stride == (1, 1);
        let n_x = if in_place {
            Buf::new()
        } else {
            grid(g.oh, g.stride.0 * wp, g.ow, g.stride.1)
        };
        let item_in = g.cin * g.h * g.w;
        per_item(ctx, g.batch, g.cout * sp, y, |ctx, b, yb, (img, virt)| {
            img.refill(g.cin * plane, E::ZERO);
            let x = &self.a[b * item_in..(b + 1) * item_in];
            pad_into(x, (g.h, g.w), (&rows, &cols), lx, img);
            for (gi, a) in wpk.iter().enumerate() {
                let src = &img[gi * cpg * plane..];
                let out = &mut yb[gi * opg * sp..(gi + 1) * opg * sp];
                if in_place {
                    direct::<E, T, N>(ctx, a, src, &k_x, opg, (g.oh, g.ow, wp), virt, out);
                } else {
                    slabs::<E, T, N>(ctx, kc, a, src, &k_x, &n_x, opg, out);
                }
            }
        });
    }

    fn input_grad<E: Elem, T: Out<E>, const N: usize>(
        &self,
        ctx: Ctx,
        (ldy, lw): (Load, Load),
        kc: usize,
        dx: &mut [T],
    ) {
        let g = self.g;
        let (cpg, opg, taps) = (g.cpg(), g.opg(), g.kh * g.kw);
        let (hw, sp) = (g.h * g.w, g.oh * g.ow);
        let [dh, dw] = dims(&g);
        let rows = back_map(
            span(Kind::InputGrad, dh).unwrap_or(0),
            (g.pad.0, g.kh, g.stride.0, g.dil.0, g.oh),
        );
        let cols = back_map(
            span(Kind::InputGrad, dw).unwrap_or(0),
            (g.pad.1, g.kw, g.stride.1, g.dil.1, g.ow),
        );
        let wr = cols.len();
        let plane = rows.len() * wr;
        // A: rows ci, reduction (co, ky, kx): w[((gi opg + co) cpg + ci) taps + ky kw + kx].
        let m_w = strided(0, cpg, taps);
        let wpk: Vec<Packed<E>> = (0..g.groups)
            .map(|gi| {
                let k_w = Buf::collect(
                    (0..opg)
                        .flat_map(|co| (0..taps).map(move |t| (gi * opg + co) * cpg * taps + t)),
                );
                lw.pack(ctx.par, kc, rows_per_tile(cpg), (self.b, &k_w, &m_w))
            })
            .collect();
        // B: step (co, ky, kx) of input position (iy, ix) is at
        // `k_y[step] + iy wr + ix` in a group's image.
        let flip = grid(g.kh, g.dil.0 * wr, g.kw, g.dil.1);
        let k_y =
            Buf::collect((0..opg).flat_map(|co| flip.iter().rev().map(move |&o| co * plane + o)));
        let item_dy = g.cout * sp;
        per_item(ctx, g.batch, g.cin * hw, dx, |ctx, b, dxb, (img, virt)| {
            img.refill(g.cout * plane, E::ZERO);
            let dy = &self.a[b * item_dy..(b + 1) * item_dy];
            pad_into(dy, (g.oh, g.ow), (&rows, &cols), ldy, img);
            for (gi, a) in wpk.iter().enumerate() {
                let src = &img[gi * opg * plane..];
                let out = &mut dxb[gi * cpg * hw..(gi + 1) * cpg * hw];
                direct::<E, T, N>(ctx, a, src, &k_y, cpg, (g.h, g.w, wr), virt, out);
            }
        });
    }

    fn weight_grad<E: Elem, T: Out<E>, const N: usize>(
        &self,
        ctx: Ctx,
        (ldy, lx): (Load, Load),
        kc: usize,
        dwt: &mut [T],
    ) {
        let g = self.g;
        let (cpg, opg, taps) = (g.cpg(), g.opg(), g.kh * g.kw);
        let (kk, sp) = (cpg * taps, g.oh * g.ow);
        let (rows, cols) = self.fwd_maps();
        let wp = cols.len();
        let plane = rows.len() * wp;
        let item = g.cin * plane;
        let item_in = g.cin * g.h * g.w;
        let mut img = Buf::filled(g.batch * item, E::ZERO);
        let fill = |(b, dst): (usize, &mut [E])| {
            let x = &self.b[b * item_in..(b + 1) * item_in];
            pad_into(x, (g.h, g.w), (&rows, &cols), lx, dst);
        };
        if item > 0 {
            if ctx.par {
                img.par_chunks_mut(item).enumerate().for_each(fill);
            } else {
                img.chunks_mut(item).enumerate().for_each(fill);
            }
        }
        let taps_x = grid(g.kh, g.dil.0 * wp, g.kw, g.dil.1);
        let total = g.batch * sp;
        let per_k = kk.next_multiple_of(N) + opg.next_multiple_of(4);
        let kc = kc.max(1);
        let chunk = ((CHUNK / per_k.max(1)) / kc).max(1) * kc;
        // Step (b, oy, ox) of the reduction reads dy at `k_dy` and the
        // padded images at `k_x` (plus the tap's offset).
        let k_dy =
            Buf::collect((0..g.batch).flat_map(|b| (0..sp).map(move |s| b * g.cout * sp + s)));
        let rows_x = grid(g.oh, g.stride.0 * wp, g.ow, g.stride.1);
        let k_x =
            Buf::collect((0..g.batch).flat_map(|b| rows_x.iter().map(move |&o| b * item + o)));
        for k0 in (0..total).step_by(chunk) {
            let k1 = total.min(k0 + chunk);
            let (k_dy, k_x) = (&k_dy[k0..k1], &k_x[k0..k1]);
            for gi in 0..g.groups {
                let m_dy = strided(gi * opg * sp, opg, sp);
                let n_x = Buf::collect(
                    (0..cpg)
                        .flat_map(|ci| taps_x.iter().map(move |&o| (gi * cpg + ci) * plane + o)),
                );
                let a = ldy.pack(ctx.par, kc, rows_per_tile(opg), (self.a, k_dy, &m_dy));
                let b = Packed::new(ctx.par, kc, N, (&img, k_x, &n_x), |v| v);
                let out = &mut dwt[gi * opg * kk..(gi + 1) * opg * kk];
                gemm::<E, T, _, N>(ctx, &a, &b, (opg, kk, k0 == 0), out, kk);
            }
        }
    }
}

impl Product for Conv<'_> {
    fn run<E: Elem, T: Out<E>, const N: usize>(
        &self,
        ctx: Ctx,
        la: Load,
        lb: Load,
        kc: usize,
        out: &mut [T],
    ) {
        match self.kind {
            Kind::Forward => self.forward::<E, T, N>(ctx, (la, lb), kc, out),
            Kind::InputGrad => self.input_grad::<E, T, N>(ctx, (la, lb), kc, out),
            Kind::WeightGrad => self.weight_grad::<E, T, N>(ctx, (la, lb), kc, out),
        }
    }
}

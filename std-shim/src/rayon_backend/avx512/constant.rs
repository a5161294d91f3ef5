//! A weight gradient's columns of `x` that hold one value in every row of
//! the batch, computed once per output row.
//!
//! In `dw[o][i] = sum_b dy[b][o] x[b][i]`, a column `i` whose `x[b][i]` is
//! the same value `c` for every `b` has, in every output row `o`, the same
//! chain of additions: `sum_b dy[b][o] c`, in ascending `b`, each term
//! rounded, then added. An image's background is such a column: about a
//! third of MNIST's 784 pixels in a batch of 64. [`Columns`] finds them
//! (bit for bit equal to `x[0][0]`), packs the other columns of `x`
//! together, and the kernel computes the packed columns as the plain one
//! computes all of them, then spreads each output vector back to its
//! columns (`vexpandps`) with the row's one chain in the constant lanes.
//! Every output is the chain the reference computes, so the bits are the
//! same.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::ops::Range;

use super::{LANES, RG};
use crate::rayon_backend::scratch::Buf;

/// Packed vectors per block of the kernel: at most `BV * 16` packed
/// columns, so that the rows of packed `x` a block reads stay in L1.
const BV: usize = 4;

/// The constant columns of one `x` (`rows x n`, row `b` at `x[b * n..]`),
/// the plan of the packed kernel and the packed other columns.
pub(in crate::rayon_backend) struct Columns {
    /// The value of every constant column.
    pub(super) c: f32,
    /// Blocks of packed vectors, in the kernel's order.
    pub(super) blocks: Vec<Block>,
    /// The vectors of `x` with a column that is not constant.
    pub(super) vecs: Vec<Vector>,
    /// The vectors of `x` whose every column is constant: first column,
    /// lanes inside the row.
    pub(super) whole: Vec<(usize, __mmask16)>,
    /// Packed `x`: row `b` at `xp[b * ld..]`.
    pub(in crate::rayon_backend) xp: Buf<f32>,
    /// Floats per packed row (the packed vectors, and one vector of slack
    /// for the stores that pack the last).
    pub(super) ld: usize,
}

/// Packed columns `start..start + 16 nv` of each packed row; the vectors
/// `vecs` of `x` are spread from them.
pub(super) struct Block {
    pub(super) start: usize,
    pub(super) nv: usize,
    pub(super) vecs: Range<usize>,
}

/// Columns `col..col + 16` of `x`: the lanes `keep` are not constant and
/// are packed, in order, from column `at` of their block; `valid` are the
/// lanes inside the row.
pub(super) struct Vector {
    pub(super) col: usize,
    pub(super) at: usize,
    pub(super) keep: __mmask16,
    pub(super) valid: __mmask16,
}

/// Lanes of vector `j` of a row of `n` columns that lie inside it.
fn valid(j: usize, n: usize) -> __mmask16 {
    let nl = LANES.min(n - j * LANES);
    if nl == LANES {
        !0
    } else {
        (1 << nl) - 1
    }
}

/// One pass over `x` (`rows x n`: a weight gradient's `x`, or the weights
/// of an input gradient): whether every value is finite, how many
/// are non-zero, and for each vector of 16 columns the lanes whose column
/// holds `x[0]`'s bits in every row. In two halves of the rows on two
/// threads when `par` and `x` is long enough for core's element passes to
/// have split it (they wrote it in the same halves).
pub(in crate::rayon_backend) fn scan(
    x: &[f32],
    n: usize,
    par: bool,
) -> (bool, usize, Vec<__mmask16>) {
    if n == 0 {
        // Rows of no columns: nothing to scan.
        return (true, 0, Vec::new());
    }
    let rows = x.len() / n;
    assert_eq!(rows * n, x.len());
    let nv = n.div_ceil(LANES);
    let c = x.first().map_or(0, |v| v.to_bits());
    let part = |r: Range<usize>| {
        let mut m: Vec<__mmask16> = (0..nv).map(|j| valid(j, n)).collect();
        // SAFETY: callers run this module's kernels only after `detect()`
        // reported AVX-512 F; the rows lie inside `x` (`rows * n` values).
        let (f, nz) = unsafe { scan_rows(&x[r.start * n..r.end * n], n, c, &mut m) };
        (f, nz, m)
    };
    if par && rows >= 2 && x.len() >= 2 * fixnn::accel::MIN_PART {
        let h = rows / 2;
        let ((fa, na, ma), (fb, nb, mb)) =
            crate::rayon_backend::join(|| part(0..h), || part(h..rows));
        let m = ma.iter().zip(&mb).map(|(a, b)| a & b).collect();
        (fa && fb, na + nb, m)
    } else {
        part(0..rows)
    }
}

#[target_feature(enable = "avx512f,popcnt")]
unsafe fn scan_rows(x: &[f32], n: usize, c: u32, m: &mut [__mmask16]) -> (bool, usize) {
    let abs = _mm512_set1_epi32(0x7fff_ffff);
    let inf = _mm512_set1_epi32(0x7f80_0000);
    let cv = _mm512_set1_epi32(c as i32);
    let (mut bad, mut nz) = (0u32, 0usize);
    for row in x.chunks_exact(n) {
        for (j, m) in m.iter_mut().enumerate() {
            let v = _mm512_maskz_loadu_epi32(valid(j, n), row.as_ptr().add(j * LANES).cast());
            let a = _mm512_and_epi32(v, abs);
            bad |= _mm512_cmpge_epu32_mask(a, inf) as u32;
            nz += _mm512_test_epi32_mask(a, a).count_ones() as usize;
            *m &= _mm512_cmpeq_epi32_mask(v, cv);
        }
    }
    (bad == 0, nz)
}

impl Columns {
    /// The plan for `x` (`rows x n`) with the constant lanes `masks` of
    /// [`scan`], and `x`'s other columns packed (in halves of the rows on
    /// two threads when `par`); `None` when packing would not save an
    /// eighth of the vectors. The caller guarantees what [`scan`] needs.
    pub(in crate::rayon_backend) fn pack(
        x: &[f32],
        n: usize,
        masks: &[__mmask16],
        par: bool,
    ) -> Option<Columns> {
        let rows = x.len().checked_div(n).unwrap_or(0);
        assert!(rows * n == x.len());
        let mut cols = Columns::plan(*x.first()?, rows, n, masks, |len| Buf::with_len(len, 0.0))?;
        let (blocks, vecs, ld) = (&cols.blocks, &cols.vecs, cols.ld);
        let part = |x: &[f32], xp: &mut [f32]| {
            let _span = crate::trace::span("f32 pack x");
            // SAFETY: `detect()` reported AVX-512 F (caller's contract);
            // `xp` holds `ld` floats per row of `x`.
            unsafe { pack_rows(blocks, vecs, ld, x, n, xp) }
        };
        if par && rows >= 2 && x.len() >= 2 * fixnn::accel::MIN_PART {
            let h = rows / 2;
            let (x0, x1) = x.split_at(h * n);
            let (p0, p1) = cols.xp.split_at_mut(h * ld);
            crate::rayon_backend::join(|| part(x0, p0), || part(x1, p1));
        } else {
            part(x, &mut cols.xp);
        }
        Some(cols)
    }

    /// [`Columns::pack`] of the `x` whose values are `codes[i] * step`
    /// (`rows x n` codes), from the codes, on this thread; `masks` from
    /// [`scan_codes`] of them; the packed rows in `xp` (any contents,
    /// lengthened if need be). The caller guarantees: `detect()` reported
    /// AVX-512 F, BW and VL.
    pub(in crate::rayon_backend) fn pack_codes(
        codes: &[i8],
        n: usize,
        step: f32,
        masks: &[__mmask16],
        xp: Buf<f32>,
    ) -> Option<Columns> {
        let rows = codes.len().checked_div(n).unwrap_or(0);
        assert!(rows * n == codes.len());
        let c = *codes.first()? as f32 * step;
        let mut cols = Columns::plan(c, rows, n, masks, |len| {
            let mut xp = xp;
            xp.set_len(len, 0.0);
            xp
        })?;
        let _span = crate::trace::span("f32 pack codes");
        // SAFETY: the caller's contract; `xp` holds `ld` floats per row.
        unsafe {
            pack_code_rows(
                &cols.blocks,
                &cols.vecs,
                cols.ld,
                codes,
                n,
                step,
                &mut cols.xp,
            )
        };
        Some(cols)
    }

    /// The plan of the packed kernel for `rows x n` values whose constant
    /// lanes (value `c`) are `masks`, with room for the packed rows from
    /// `xp(len)`; `None` when packing would not save an eighth of the
    /// vectors.
    fn plan(
        c: f32,
        rows: usize,
        n: usize,
        masks: &[__mmask16],
        xp: impl FnOnce(usize) -> Buf<f32>,
    ) -> Option<Columns> {
        let nv = n.div_ceil(LANES);
        assert!(masks.len() == nv);
        let (mut blocks, mut vecs, mut whole) = (Vec::new(), Vec::new(), Vec::new());
        let (mut start, mut first, mut at) = (0, 0, 0);
        for (j, &m) in masks.iter().enumerate() {
            let valid = valid(j, n);
            let keep = valid & !m;
            let cnt = keep.count_ones() as usize;
            if cnt == 0 {
                whole.push((j * LANES, valid));
                continue;
            }
            if at + cnt > BV * LANES {
                let nv = at.div_ceil(LANES);
                blocks.push(Block {
                    start,
                    nv,
                    vecs: first..vecs.len(),
                });
                (start, first, at) = (start + nv * LANES, vecs.len(), 0);
            }
            vecs.push(Vector {
                col: j * LANES,
                at,
                keep,
                valid,
            });
            at += cnt;
        }
        if at > 0 {
            let nv = at.div_ceil(LANES);
            blocks.push(Block {
                start,
                nv,
                vecs: first..vecs.len(),
            });
            start += nv * LANES;
        }
        let packed = start / LANES;
        if packed * 8 > nv * 7 {
            return None;
        }
        let ld = start + LANES;
        Some(Columns {
            c,
            blocks,
            vecs,
            whole,
            xp: xp(rows * ld),
            ld,
        })
    }
}

/// [`scan`] of the `x` whose values are `codes[i] * step` with a finite,
/// non-zero `step` (`rows x n` codes; every such value is finite): how many
/// are non-zero, and the constant lanes (codes equal to `codes[0]` in every
/// row, which for such values is the same as equal bits). The caller
/// guarantees: `detect()` reported AVX-512 F, BW and VL.
pub(in crate::rayon_backend) fn scan_codes(codes: &[i8], n: usize) -> (usize, Vec<__mmask16>) {
    if n == 0 {
        return (0, Vec::new());
    }
    let nv = n.div_ceil(LANES);
    let mut m: Vec<__mmask16> = (0..nv).map(|j| valid(j, n)).collect();
    let c = codes.first().copied().unwrap_or(0);
    // SAFETY: the caller's contract; whole rows of `n` codes.
    let nz = unsafe { scan_code_rows(codes, n, c, &mut m) };
    (nz, m)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,popcnt")]
unsafe fn scan_code_rows(codes: &[i8], n: usize, c: i8, m: &mut [__mmask16]) -> usize {
    let cv = _mm_set1_epi8(c);
    let rows = codes.len() / n;
    let mut nz = 0usize;
    // Column by column, the mask in a register (row by row, each vector's
    // mask went through memory on every row).
    for (j, m) in m.iter_mut().enumerate() {
        let valid = valid(j, n);
        let (mut acc, mut cnt) = (*m, 0u32);
        let p = codes.as_ptr().add(j * LANES);
        for r in 0..rows {
            let v = _mm_maskz_loadu_epi8(valid, p.add(r * n).cast());
            cnt += _mm_test_epi8_mask(v, v).count_ones();
            acc &= _mm_cmpeq_epi8_mask(v, cv);
        }
        *m = acc;
        nz += cnt as usize;
    }
    nz
}

/// Whether every value of `x` has the bits of `codes[i] * step` (`x` and
/// `codes` of one length; in two halves on two threads when `par` and `x`
/// is long enough for core's element passes to have split it, as
/// [`scan`]). The caller guarantees: `detect()` reported AVX-512 F, BW and
/// VL.
pub(in crate::rayon_backend) fn same_values(x: &[f32], codes: &[i8], step: f32, par: bool) -> bool {
    if x.len() != codes.len() {
        return false;
    }
    let _span = crate::trace::span("f32 check codes");
    // SAFETY: the caller's contract; equal lengths.
    let part = |x: &[f32], c: &[i8]| unsafe { same_rows(x, c, step) };
    if par && x.len() >= 2 * fixnn::accel::MIN_PART {
        // Halves at a multiple of 16 values.
        let h = (x.len() / 2).next_multiple_of(LANES).min(x.len());
        let (x0, x1) = x.split_at(h);
        let (c0, c1) = codes.split_at(h);
        let (a, b) = crate::rayon_backend::join(|| part(x0, c0), || part(x1, c1));
        a && b
    } else {
        part(x, codes)
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn same_rows(x: &[f32], codes: &[i8], step: f32) -> bool {
    let sv = _mm512_set1_ps(step);
    let mut bad: __mmask16 = 0;
    for i in (0..x.len()).step_by(LANES) {
        let nl = LANES.min(x.len() - i);
        let valid: __mmask16 = if nl == LANES { !0 } else { (1 << nl) - 1 };
        let c = _mm_maskz_loadu_epi8(valid, codes.as_ptr().add(i));
        let v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c)), sv);
        let xv = _mm512_maskz_loadu_ps(valid, x.as_ptr().add(i));
        bad |= _mm512_cmpneq_epi32_mask(_mm512_castps_si512(v), _mm512_castps_si512(xv)) & valid;
    }
    bad == 0
}

/// [`pack_rows`] from codes: the packed values are `code * step`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack_code_rows(
    blocks: &[Block],
    vecs: &[Vector],
    ld: usize,
    codes: &[i8],
    n: usize,
    step: f32,
    xp: &mut [f32],
) {
    let sv = _mm512_set1_ps(step);
    for (row, dst) in codes.chunks_exact(n).zip(xp.chunks_exact_mut(ld)) {
        let d = dst.as_mut_ptr();
        for b in blocks {
            // As in `pack_rows`.
            _mm512_storeu_ps(d.add(b.start + (b.nv - 1) * LANES), _mm512_setzero_ps());
            for v in &vecs[b.vecs.clone()] {
                let c = _mm_maskz_loadu_epi8(v.valid, row.as_ptr().add(v.col).cast());
                let x = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c)), sv);
                _mm512_storeu_ps(d.add(b.start + v.at), _mm512_maskz_compress_ps(v.keep, x));
            }
        }
    }
}

/// Packs the rows of `x` (`n` columns) into `xp` (`ld` floats per row):
/// each vector's kept lanes, in order, from its column of its block; lanes
/// of a block past its last packed column hold zeros.
#[target_feature(enable = "avx512f")]
unsafe fn pack_rows(
    blocks: &[Block],
    vecs: &[Vector],
    ld: usize,
    x: &[f32],
    n: usize,
    xp: &mut [f32],
) {
    for (row, dst) in x.chunks_exact(n).zip(xp.chunks_exact_mut(ld)) {
        let d = dst.as_mut_ptr();
        for b in blocks {
            // Zeros first in the block's last vector; the packing stores
            // below overwrite them up to the last packed column. Each store
            // writes 16 lanes, the packed ones then zeros, and the next
            // store starts at the first zero (inside the row: a store
            // starts at most at column `start + 16 nv - 1`, and `ld` has a
            // vector of slack).
            _mm512_storeu_ps(d.add(b.start + (b.nv - 1) * LANES), _mm512_setzero_ps());
            for v in &vecs[b.vecs.clone()] {
                let x = _mm512_maskz_loadu_ps(v.valid, row.as_ptr().add(v.col));
                _mm512_storeu_ps(d.add(b.start + v.at), _mm512_maskz_compress_ps(v.keep, x));
            }
        }
    }
}

/// Output rows `0..nr` of `dst` (`n` columns each) from the packed columns
/// of `cols`, in groups of `RG` (`terms(g)`: the entries of group `g`, as
/// [`super::f32_rows`] reads them); `s[i]`: row `i`'s chain for the
/// constant columns.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn rows<'t>(
    nr: usize,
    terms: impl Fn(usize) -> &'t [u32],
    s: &[f32],
    cols: &Columns,
    n: usize,
    dst: &mut [f32],
) {
    let full = nr / RG;
    for b in &cols.blocks {
        let vecs = &cols.vecs[b.vecs.clone()];
        for g in 0..nr.div_ceil(RG) {
            let rows = RG.min(nr - g * RG);
            let d = &mut dst[g * RG * n..(g * RG + rows) * n];
            let s = &s[g * RG..g * RG + rows];
            let t = terms(g);
            let k = Kernel {
                xp: cols.xp.as_ptr().add(b.start),
                ld: cols.ld,
                vecs,
                s,
                n,
            };
            match (b.nv, g < full) {
                (1, true) => k.block::<1, RG>(t, rows, d),
                (2, true) => k.block::<2, RG>(t, rows, d),
                (3, true) => k.block::<3, RG>(t, rows, d),
                (_, true) => k.block::<BV, RG>(t, rows, d),
                (1, false) => k.block::<1, 1>(t, rows, d),
                (2, false) => k.block::<2, 1>(t, rows, d),
                (3, false) => k.block::<3, 1>(t, rows, d),
                (_, false) => k.block::<BV, 1>(t, rows, d),
            }
        }
    }
    for (i, row) in dst.chunks_exact_mut(n).take(nr).enumerate() {
        let v = _mm512_set1_ps(s[i]);
        for &(col, valid) in &cols.whole {
            _mm512_mask_storeu_ps(row.as_mut_ptr().add(col), valid, v);
        }
    }
}

/// One block of packed columns for one group of rows.
struct Kernel<'a> {
    /// The block's first packed column of packed row 0.
    xp: *const f32,
    ld: usize,
    vecs: &'a [Vector],
    s: &'a [f32],
    n: usize,
}

impl Kernel<'_> {
    /// The block's `16 V` packed columns of `rows` output rows (`R` rows
    /// at a time from the group's entries; `R == 1` walks the group's rows
    /// one by one), by [`super::chains`] as the plain kernel, then spread
    /// to the block's vectors of `d`.
    #[inline(always)]
    unsafe fn block<const V: usize, const R: usize>(
        &self,
        terms: &[u32],
        rows: usize,
        d: &mut [f32],
    ) {
        let passes = if R == 1 { rows } else { 1 };
        for i0 in 0..passes {
            // Packed rows hold whole vectors (zeros past the last column).
            let acc = super::chains::<V, R>(terms, i0, self.xp, self.ld, !0);
            // The sums through memory: each vector of `x` takes its packed
            // columns from any offset of the block.
            // Only the first `16 V` of each row are written, and read.
            let mut t = [[MaybeUninit::<f32>::uninit(); BV * LANES]; R];
            for (t, acc) in t.iter_mut().zip(&acc) {
                for (j, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(t.as_mut_ptr().cast::<f32>().add(j * LANES), *a);
                }
            }
            for v in self.vecs {
                for (r, t) in t.iter().enumerate() {
                    let i = i0 + r;
                    let s = _mm512_set1_ps(self.s[i]);
                    // Reads `popcount(keep)` floats from `at`: inside the
                    // block's `16 V` sums, all written above.
                    let p = t.as_ptr().cast::<f32>().add(v.at);
                    let y = _mm512_mask_expandloadu_ps(s, v.keep, p);
                    _mm512_mask_storeu_ps(d.as_mut_ptr().add(i * self.n + v.col), v.valid, y);
                }
            }
        }
    }
}

//! AVX-512 kernels for fully connected products, used when the CPU has
//! AVX-512 F, BW, VL and VNNI (detected at run time, [`detect`]).
//!
//! * [`int8`]: integer products of codes that fit `i8` (formats of at most
//!   8 bits), by `vpdpbusd`. One operand is read as `code + 128` (unsigned
//!   bytes), the other as signed bytes; the `128 * sum(codes)` this adds is
//!   subtracted at the end. Used only when no partial sum can leave `i32`
//!   (`k * 255 * 128 < 2^31`), so every sum is the exact integer sum.
//! * [`f32_sparse`]: f32 products `C[r][c] = sum_k A(r, k) B[k][c]` where
//!   each output is one chain of additions in ascending `k`, as the
//!   reference computes it, vectorised across the columns `c` (independent
//!   outputs; a multiplication, then an addition, never fused). Terms with
//!   `A(r, k) == 0` are skipped: when `B` is finite such a product is `±0`,
//!   and adding `±0` to a sum that started at `+0.0` never changes it (in
//!   round-to-nearest such a sum is never `-0.0`), so skipping gives the
//!   same bits. Rows of `A` with many zeros (a gradient through a ReLU)
//!   cost that much less. For a weight gradient, the columns of `x` that
//!   hold one value in every row (an image's background) are computed once
//!   per output row and the others packed together ([`constant`]).

#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::ops::Range;

use rayon::prelude::*;

use super::codes::ToCode;
use super::scratch::Buf;

mod constant;

pub(super) use constant::{same_values, scan as scan_columns, scan_codes, Columns};

/// Whether this CPU runs the kernels of this module (AVX-512 F, BW, VL,
/// VNNI, and POPCNT, which every such CPU has).
pub(super) fn detect() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("popcnt")
}

/// Lanes of a zmm register of `i32` or `f32`.
const LANES: usize = 16;

/// The operands of [`int8`]: `a` is `m x k` (row `r` at `a[r * k..]`), `b`
/// is `n x k` (row `c` at `b[c * k..]`); values are read as codes with
/// their [`ToCode`], exactly as the reference reads them.
pub(super) struct Int8<'a> {
    pub a: &'a [f32],
    pub ta: ToCode,
    pub b: &'a [f32],
    pub tb: ToCode,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// Whether [`int8`] computes every sum of `k` products of codes in
/// `-128..=127` exactly in `i32` (at most `k * 255 * 128` in magnitude).
pub(super) fn int8_fits(k: usize) -> bool {
    (k as u64).saturating_mul(255 * 128) < 1 << 31
}

/// `out[r * n + c] = sum_i code(a[r][i]) * code(b[c][i])`, exactly, if
/// every code lies in `-128..=127`; otherwise `false` and `out` is not
/// written.
///
/// A cache-blocked product in the shape of `vpdpbusd`: A is packed in tiles
/// of [`MR`] rows as signed bytes, four reduction steps per 32-bit word
/// (`[word][row]`), each word broadcast to all lanes; B is packed in panels
/// of [`NP`] columns as unsigned bytes `code + 128` (`[word][column]`, three
/// registers per word). A tile of `MR x NP` sums (24 registers) takes one
/// `vpdpbusd` per register per word, so the panel (at most `NP * k` bytes)
/// is reused from cache by every tile of rows. The `128 * sum(codes of the
/// row of A)` the offset adds is subtracted at the end. Work is split across
/// threads by row tiles (independent outputs).
///
/// With `codes` (`m * k` bytes), A's codes are also stored there, row by
/// row as A (written only when this returns `true` with `n > 0`): what
/// [`crate::rayon_backend::ahead`] derives a weight gradient's operand
/// from.
///
/// The caller guarantees: [`detect`] returned `true`; `a.len() == m * k`,
/// `b.len() == n * k`, `out.len() == m * n`; [`int8_fits`]`(k)`.
pub(super) fn int8(p: &Int8<'_>, par: bool, out: &mut [i64], codes: Option<&mut [i8]>) -> bool {
    let Int8 { m, n, k, .. } = *p;
    assert!(p.a.len() == m * k && p.b.len() == n * k && out.len() == m * n);
    assert!(codes.as_ref().is_none_or(|c| c.len() == m * k));
    // Where A's codes go, as an address (the two halves below write
    // disjoint rows of it); 0: nowhere.
    let cp = codes.map_or(0, |c| c.as_mut_ptr() as usize);
    if k == 0 {
        out.fill(0);
        return true;
    }
    if m == 0 || n == 0 {
        return true;
    }
    // Words per packed row: whole chunks of 16 values (4 words each).
    let kw = k.div_ceil(LANES) * (LANES / 4);
    let (tiles, panels) = (m.div_ceil(MR), n.div_ceil(NP));
    let mut aq = Buf::<u32>::with_len(tiles * kw * MR, 0);
    let mut bq = Buf::<u32>::with_len(panels * kw * NP, 0);
    let mut asum = Buf::<i32>::with_len(tiles * MR, 0);
    let mut pack_a = || {
        let _span = crate::trace::span("int8 pack A");
        // SAFETY: `detect()` reported AVX-512 F, BW, VL and VNNI (caller's
        // contract); the buffers hold `kw` words per row of every tile.
        unsafe {
            pack_rows(
                p.a,
                p.ta,
                k,
                kw,
                MR,
                0,
                &mut aq,
                Some(&mut asum),
                cp as *mut i8,
            )
        }
    };
    let mut pack_b = || {
        let _span = crate::trace::span("int8 pack B");
        // SAFETY: as for A, every panel.
        unsafe { pack_panels(p.b, p.tb, (k, kw, n), 0..panels, &mut bq) }
    };
    // Both operands are packed on every call (the weights change every
    // step): on two threads when the product is split. Each thread packs
    // the first or second half of both operands' rows, the halves core's
    // element passes quantized on the same threads (the first here, the
    // second on the thread that takes the other job), so each reads codes
    // its own core wrote: in a trace of an MNIST MLP step, 11 and 16 us
    // against 20 us for one thread packing the weights while the other
    // packed the batch. With one tile or panel, one operand per thread.
    let fits = if par && tiles > 1 && panels > 1 {
        let (ta, pb) = (tiles / 2, panels / 2);
        let (a0, a1) = p.a.split_at(ta * MR * k);
        let (b0, b1) = p.b.split_at((pb * NP).min(n) * k);
        let (aq0, aq1) = aq.split_at_mut(ta * kw * MR);
        let (bq0, bq1) = bq.split_at_mut(pb * kw * NP);
        let (s0, s1) = asum.split_at_mut(ta * MR);
        // The second half's codes from row `ta MR` (inside: `ta MR < m`).
        let cp1 = if cp == 0 { 0 } else { cp + ta * MR * k };
        let half =
            |a: &[f32], aq: &mut [u32], s: &mut [i32], b: &[f32], pns, bq: &mut [u32], cp| {
                let _span = crate::trace::span("int8 pack halves");
                // SAFETY: as above; each half holds `kw` words per row of its
                // tiles and panels (split at tile and panel boundaries), and
                // `cp`, if not null, `k` bytes per row of its rows of A.
                unsafe {
                    let fa = pack_rows(a, p.ta, k, kw, MR, 0, aq, Some(s), cp as *mut i8);
                    let fb = pack_panels(b, p.tb, (k, kw, n), pns, bq);
                    fa && fb
                }
            };
        let (f0, f1) = super::join(
            || half(a0, aq0, s0, b0, 0..pb, bq0, cp),
            || half(a1, aq1, s1, b1, pb..panels, bq1, cp1),
        );
        f0 && f1
    } else if par {
        let (b, a) = super::join(pack_b, pack_a);
        a && b
    } else {
        pack_a() && pack_b()
    };
    if !fits {
        return false;
    }
    let rows = |t0: usize, dst: &mut [i64]| {
        let _span = crate::trace::span("int8 rows");
        let nt = (dst.len() / n).div_ceil(MR);
        // Tiles in groups of MC (whose packed rows stay in L2), each
        // panel passed over by every tile of the group; sums in registers
        // over the whole reduction.
        let mut s = [0i32; MR * NP];
        for g0 in (t0..t0 + nt).step_by(MC) {
            for pn in 0..panels {
                let (c0, nc) = (pn * NP, NP.min(n - pn * NP));
                let panel = &bq[pn * kw * NP..(pn + 1) * kw * NP];
                let stride = panel_stride(nc);
                for t in g0..(t0 + nt).min(g0 + MC) {
                    let tile = &aq[t * kw * MR..(t + 1) * kw * MR];
                    // SAFETY: as above; `tile` and `panel` hold `kw` words
                    // of `MR` rows and `NP` columns.
                    unsafe {
                        match nc.div_ceil(LANES) {
                            1 => int8_tile::<1>(tile, panel, stride, true, &mut s),
                            2 => int8_tile::<2>(tile, panel, stride, true, &mut s),
                            _ => int8_tile::<3>(tile, panel, stride, true, &mut s),
                        }
                    }
                    for i in 0..MR.min(m - t * MR) {
                        let row = (t - t0) * MR + i;
                        let corr = 128 * asum[t * MR + i] as i64;
                        let d = &mut dst[row * n + c0..row * n + c0 + nc];
                        for (d, &v) in d.iter_mut().zip(&s[i * NP..i * NP + nc]) {
                            *d = v as i64 - corr;
                        }
                    }
                }
            }
        }
    };
    let threads = if par {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    let per = tiles.div_ceil(threads);
    if threads == 2 && per < tiles {
        let (d0, d1) = out.split_at_mut(per * MR * n);
        super::join(|| rows(0, d0), || rows(per, d1));
    } else if threads > 1 && per < tiles {
        out.par_chunks_mut(per * MR * n)
            .enumerate()
            .for_each(|(i, d)| rows(i * per, d));
    } else {
        rows(0, out);
    }
    true
}

/// Rows of A per tile of the integer kernel.
const MR: usize = 8;
/// Columns of B per panel of the integer kernel (three registers).
const NP: usize = 3 * LANES;

/// Words per packed word step of a panel of `w` columns (`1..=NP`): `NP`
/// for a full panel; a narrower last panel only its columns, rounded up to
/// 16 (whole registers), or to 4 when it fits one register (one store of
/// four rows' words). A narrower layout writes fewer cache lines: MNIST's
/// 100 outputs leave a last panel of 4 columns, whose words at the full
/// stride took a line each; that thread's half of the packing took 12.7 us
/// against 8.4 for the other (a trace of the MLP).
fn panel_stride(w: usize) -> usize {
    if w <= LANES {
        w.next_multiple_of(4)
    } else {
        w.next_multiple_of(LANES)
    }
}

/// Packs rows of B into the panels `pns` (panel `p` holds rows
/// `p NP..(p + 1) NP` of B, at most `n`; `src` starts at panel
/// `pns.start`'s first row, `dst` at its words), each with its
/// [`panel_stride`], as [`pack_rows`] writes them (unsigned bytes).
///
/// Caller: as [`pack_rows`]; `src` holds the panels' rows; `dst` holds
/// `kw NP` words per panel.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack_panels(
    src: &[f32],
    t: ToCode,
    (k, kw, n): (usize, usize, usize),
    pns: Range<usize>,
    dst: &mut [u32],
) -> bool {
    let mut fits = true;
    for (i, pn) in pns.enumerate() {
        let w = NP.min(n - pn * NP);
        let rows = &src[i * NP * k..(i * NP + w) * k];
        let g = panel_stride(w);
        let d = &mut dst[i * kw * NP..i * kw * NP + kw * g];
        fits &= pack_rows(rows, t, k, kw, g, 128, d, None, std::ptr::null_mut());
    }
    fits
}
/// Tiles of A per group: a group's packed rows (`MC * MR * k` bytes) stay
/// in L2 while every panel of B passes over them.
const MC: usize = 8;

/// Packs the `rows x k` codes of `src` in groups of `g` rows, `kw` words
/// per row: word `w` of row `i` of group `t` at `dst[(t kw + w) g + i]`,
/// holding the codes of steps `4w..4w + 4` as bytes `code + offset`
/// (`offset` 0: signed, 128: unsigned). Steps past `k`, and rows past the
/// last in the last four rows that hold any, hold code 0; the padding
/// rows after those are not written (their words keep what the buffer
/// held: [`int8`] never stores the sums they enter, and skipping their
/// stores saved a microsecond per MNIST MLP step). With `sums`, each
/// row's sum of codes (padding rows 0). With `cp` not null, each row's
/// codes also at `cp[row * k..][..k]` (signed bytes, as `src`; a code
/// outside a byte is stored truncated, and the result is then `false`).
/// `false` if a code lies outside `-128..=127` (NaN reads 0, as in the
/// reference).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack_rows(
    src: &[f32],
    t: ToCode,
    k: usize,
    kw: usize,
    g: usize,
    offset: i32,
    dst: &mut [u32],
    mut sums: Option<&mut [i32]>,
    cp: *mut i8,
) -> bool {
    let rows = src.len() / k;
    let groups = rows.div_ceil(g);
    // Rows four at a time (`g` is a multiple of 4, so the four lie in one
    // group): each row's 16 codes of a chunk become four words, and the
    // 4 x 4 words are transposed so that word `w` of the four rows is one
    // 16-byte store.
    assert!(g.is_multiple_of(4) && kw.is_multiple_of(4) && dst.len() >= groups * kw * g);
    assert!(kw * 4 >= k);
    let mut range = (_mm512_setzero_si512(), _mm512_setzero_si512());
    let rows4 = Rows4 {
        src,
        t,
        k,
        kw,
        g,
        zero: _mm_set1_epi8(offset as u8 as i8),
        off: _mm512_set1_epi32(offset),
        dp: dst.as_mut_ptr(),
        cp,
    };
    for r0 in (0..groups * g).step_by(4) {
        // The row count a constant in each copy, so that the four sums
        // stay in registers (a count read at run time kept them on the
        // stack, every addition waiting on the store before it).
        let sum = match rows.saturating_sub(r0) {
            0 => [_mm512_setzero_si512(); 4],
            1 => rows4.pack::<1>(r0, &mut range),
            2 => rows4.pack::<2>(r0, &mut range),
            3 => rows4.pack::<3>(r0, &mut range),
            _ => rows4.pack::<4>(r0, &mut range),
        };
        if let Some(sums) = sums.as_deref_mut() {
            for (j, s) in sum.iter().enumerate() {
                if let Some(d) = sums.get_mut(r0 + j) {
                    // Rows past the last summed nothing: 0.
                    *d = _mm512_reduce_add_epi32(*s);
                }
            }
        }
    }
    let (lo, hi) = range;
    _mm512_reduce_min_epi32(lo) >= -128 && _mm512_reduce_max_epi32(hi) <= 127
}

/// The operands of [`pack_rows`]'s loop over four rows.
struct Rows4<'a> {
    src: &'a [f32],
    t: ToCode,
    k: usize,
    kw: usize,
    g: usize,
    /// A byte of code 0 (`offset` as a byte).
    zero: __m128i,
    off: __m512i,
    dp: *mut u32,
    /// Where each row's codes are copied (`k` bytes a row), or null.
    cp: *mut i8,
}

impl Rows4<'_> {
    /// Packs rows `r0..r0 + L` (of the four from `r0`, a multiple of 4;
    /// the others hold code 0) as [`pack_rows`] describes; returns the
    /// rows' sums of codes per lane (zeros past `L`) and widens `range`
    /// (lowest, highest code per lane).
    ///
    /// Caller: as [`pack_rows`], whose assertions hold; `r0 + L <= rows`.
    #[inline(always)]
    unsafe fn pack<const L: usize>(
        &self,
        r0: usize,
        range: &mut (__m512i, __m512i),
    ) -> [__m512i; 4] {
        let Rows4 {
            src,
            t,
            k,
            kw,
            g,
            zero,
            off,
            dp,
            cp,
        } = *self;
        let (tg, i) = (r0 / g, r0 % g);
        let base = tg * kw * g + i;
        let mut sum = [_mm512_setzero_si512(); 4];
        for c in 0..kw / 4 {
            let k0 = c * LANES;
            let nl = LANES.min(k.saturating_sub(k0));
            let mask: __mmask16 = if nl >= LANES { !0 } else { (1 << nl) - 1 };
            let mut b = [zero; 4];
            for j in 0..L {
                let s = &src[(r0 + j) * k..(r0 + j + 1) * k];
                let v = _mm512_maskz_loadu_ps(mask, s.as_ptr().add(k0.min(k)));
                let q = _mm512_maskz_mov_epi32(mask, codes16(v, t, &s[k0.min(k)..k0.min(k) + nl]));
                range.0 = _mm512_min_epi32(range.0, q);
                range.1 = _mm512_max_epi32(range.1, q);
                sum[j] = _mm512_add_epi32(sum[j], q);
                b[j] = _mm512_cvtepi32_epi8(_mm512_add_epi32(q, off));
                if !cp.is_null() {
                    // Inside the copy: row `r0 + j < rows`, lanes `< nl`.
                    let d = cp.add((r0 + j) * k + k0.min(k));
                    _mm_mask_storeu_epi8(d, mask, _mm512_cvtepi32_epi8(q));
                }
            }
            // 4 x 4 transpose of 32-bit words: t[w] = word w of rows 0..4.
            let x0 = _mm_unpacklo_epi32(b[0], b[1]);
            let x1 = _mm_unpackhi_epi32(b[0], b[1]);
            let x2 = _mm_unpacklo_epi32(b[2], b[3]);
            let x3 = _mm_unpackhi_epi32(b[2], b[3]);
            let t = [
                _mm_unpacklo_epi64(x0, x2),
                _mm_unpackhi_epi64(x0, x2),
                _mm_unpacklo_epi64(x1, x3),
                _mm_unpackhi_epi64(x1, x3),
            ];
            for (w, t) in t.iter().enumerate() {
                // Inside `dst`: base + (4c + w) g + 3 < groups kw g (asserted).
                _mm_storeu_si128(dp.add(base + (4 * c + w) * g).cast(), *t);
            }
        }
        sum
    }
}

/// The code of `v` per lane, as the reference reads it: `(v * 2^-step) as
/// i64` (truncation; NaN reads 0; values beyond `i32` give `i32::MIN`,
/// outside every byte range), or `Format::code_of`.
#[inline(always)]
unsafe fn codes16(v: __m512, t: ToCode, src: &[f32]) -> __m512i {
    match t {
        ToCode::Mul(m) => {
            let x = _mm512_mul_ps(v, _mm512_set1_ps(m));
            let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(x, x);
            _mm512_maskz_cvttps_epi32(ordered, x)
        }
        ToCode::CodeOf(f) => {
            let mut c = [0i32; LANES];
            for (c, &v) in c.iter_mut().zip(src) {
                *c = f.code_of(v);
            }
            _mm512_loadu_si512(c.as_ptr().cast())
        }
    }
}

/// The `MR x 16 V` sums of a tile of A (`[word][row]`, signed) by the
/// first `V` registers of a panel of B (`[word][column]`, unsigned,
/// `stride` words per word step: [`panel_stride`]), over
/// the words the slices hold, added to `s` (`[row][column]`, `NP` columns;
/// set instead when `first`; columns past `16 V` untouched).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn int8_tile<const V: usize>(
    tile: &[u32],
    panel: &[u32],
    stride: usize,
    first: bool,
    s: &mut [i32],
) {
    let kw = tile.len() / MR;
    assert!((4..=NP).contains(&stride) && (stride >= V * LANES || V == 1));
    assert!(panel.len() >= kw * stride && s.len() >= MR * NP);
    // A panel of fewer than 16 columns: its words, zeros in the other lanes.
    let lanes: __mmask16 = if stride >= LANES {
        !0
    } else {
        (1 << stride) - 1
    };
    // (Plain loops: closures would not inherit the target features.)
    let (ap, bp, sp) = (tile.as_ptr(), panel.as_ptr(), s.as_mut_ptr());
    let mut acc = [[_mm512_setzero_si512(); V]; MR];
    if !first {
        for (i, acc) in acc.iter_mut().enumerate() {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_loadu_si512(sp.add(i * NP + j * LANES).cast());
            }
        }
    }
    for w in 0..kw {
        let mut b = [_mm512_setzero_si512(); V];
        for (j, b) in b.iter_mut().enumerate() {
            *b = _mm512_maskz_loadu_epi32(lanes, bp.add(w * stride + j * LANES).cast());
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_epi32(*ap.add(w * MR + i) as i32);
            for (acc, &b) in acc.iter_mut().zip(&b) {
                *acc = _mm512_dpbusd_epi32(*acc, b, a);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (j, a) in acc.iter().enumerate() {
            _mm512_storeu_si512(sp.add(i * NP + j * LANES).cast(), *a);
        }
    }
}

/// The operands of [`f32_sparse`]: `A(r, k) = a[r * am + k * ak]`, row `k`
/// of `B` at `b[k * ldb..][..n]`.
pub(super) struct F32Sparse<'a> {
    pub a: &'a [f32],
    pub am: usize,
    pub ak: usize,
    pub b: &'a [f32],
    pub ldb: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// Columns per block (8 vectors): the rows of `B` a block reads stay in L1.
const CB: usize = VB * LANES;
/// Vectors per column block.
const VB: usize = 4;

/// `out[r * n + c] = sum_k A(r, k) B[k][c]`, `k` ascending from `+0.0`,
/// each term `a * b` rounded, then added (the reference's f32 order).
///
/// With `cols` (a weight gradient's `B`, packed by [`Columns::pack`]), the
/// columns of `B` constant in every row are computed once per row and the
/// others from the packed `B` (see [`constant`]): the same bits.
///
/// The caller guarantees: [`detect`] returned `true`; every value of `B`
/// is finite; every index of `A` and `B` above lies inside the slices;
/// `out.len() == m * n`; `cols` was packed from this `B`.
pub(super) fn f32_sparse(p: &F32Sparse<'_>, cols: Option<&Columns>, par: bool, out: &mut [f32]) {
    let F32Sparse { m, n, k, .. } = *p;
    if m == 0 || n == 0 {
        return;
    }
    if k > 0 {
        assert!((m - 1) * p.am + (k - 1) * p.ak < p.a.len());
        assert!((k - 1) * p.ldb + n <= p.b.len());
    }
    assert_eq!(out.len(), m * n);
    // Rows in groups of RG (the last group may be smaller, padded with
    // zeros that are never stored): for each group, the terms `k` where
    // any row of the group has `A(r, k) != 0`, ascending, as `RG + 1`
    // words: `k`, then the group's values. (A zero value that comes along
    // is a `±0` product: no change, as a skipped one.)
    let terms_span = crate::trace::span("f32 terms");
    let groups = m.div_ceil(RG);
    let mut terms = Buf::<u32>::with_len(groups * k * (RG + 1), 0);
    let mut counts = Buf::<usize>::with_len(groups, 0);
    for g in 0..groups {
        let list = &mut terms[g * k * (RG + 1)..(g + 1) * k * (RG + 1)];
        if p.am == 1 && (g + 1) * RG <= m {
            // The group's rows are adjacent in `a` (a weight gradient's
            // `dy`): four values per step in one SSE register.
            // SAFETY: `(g + 1) RG <= m`, so `A(g RG + 3, k - 1)` is inside
            // `a` (asserted above); `list` holds `k` entries.
            counts[g] = unsafe { adjacent_terms(p.a, g * RG, p.ak, k, list) };
            continue;
        }
        let mut c = 0;
        for kk in 0..k {
            // Branch-free: written always, kept if any value is non-zero.
            let entry = &mut list[c * (RG + 1)..(c + 1) * (RG + 1)];
            entry[0] = kk as u32;
            let mut any = false;
            for (i, e) in entry[1..].iter_mut().enumerate() {
                let r = g * RG + i;
                let v = if r < m {
                    p.a[r * p.am + kk * p.ak]
                } else {
                    0.0
                };
                *e = v.to_bits();
                any |= v != 0.0;
            }
            c += any as usize;
        }
        counts[g] = c;
    }
    // Each row's chain for the constant columns (their value `c` times the
    // row's values), from the same entries as the kernel's.
    let mut chains = Buf::<f32>::with_len(if cols.is_some() { groups * RG } else { 0 }, 0.0);
    if let Some(cols) = cols {
        for (g, s) in chains.chunks_exact_mut(RG).enumerate() {
            let list = &terms[g * k * (RG + 1)..(g * k + counts[g]) * (RG + 1)];
            // SAFETY: `detect()` reported AVX-512 F (so SSE); `s` holds RG.
            unsafe { constant_chains(list, cols.c, s) };
        }
    }
    drop(terms_span);
    // Rows `r0..` (a multiple of RG) into `dst`.
    let rows = |r0: usize, dst: &mut [f32]| {
        let _span = crate::trace::span("f32 rows");
        let nr = dst.len() / n;
        let g0 = r0 / RG;
        let terms = |g: usize| {
            let g = g0 + g;
            &terms[g * k * (RG + 1)..(g * k + counts[g]) * (RG + 1)]
        };
        match cols {
            // SAFETY: `detect()` reported AVX-512 F; `cols` packed the
            // rows of `B` (caller's contract), `k` of them.
            Some(cols) => unsafe { constant::rows(nr, terms, &chains[r0..], cols, n, dst) },
            // SAFETY: `detect()` reported AVX-512 F; every row `k` of a
            // term satisfies `k * ldb + n <= b.len()` (checked above).
            None => unsafe { f32_rows(nr, terms, p.b, p.ldb, n, dst) },
        }
    };
    let threads = if par {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    if threads > 1 && groups > 1 {
        // One piece per thread, of about equal work: a group costs its
        // number of terms (dead outputs have none), so equal row counts
        // left one thread waiting for the other.
        let total: usize = counts.iter().map(|&c| c.max(1)).sum();
        let mut pieces = Vec::with_capacity(threads);
        let (mut rest, mut g0, mut acc) = (&mut out[..], 0, 0);
        for (g, &c) in counts.iter().enumerate() {
            acc += c.max(1);
            let last = g + 1 == groups;
            if last || acc * threads >= total * (pieces.len() + 1) {
                let r1 = ((g + 1) * RG).min(m);
                let (head, tail) = std::mem::take(&mut rest).split_at_mut((r1 - g0 * RG) * n);
                pieces.push((g0 * RG, head));
                (rest, g0) = (tail, g + 1);
            }
        }
        if let [(r0, d0), (r1, d1)] = &mut pieces[..] {
            super::join(|| rows(*r0, d0), || rows(*r1, d1));
        } else {
            pieces.into_par_iter().for_each(|(r0, d)| rows(r0, d));
        }
    } else {
        rows(0, out);
    }
}

/// Rows of `A` per group of the f32 kernel.
const RG: usize = 4;

/// The term entries of the group of rows `r0..r0 + 4` whose values for step
/// `kk` are adjacent, `a[r0 + kk * ak..][..4]`: `[kk, four values]` for
/// each `kk < k` with a non-zero value, ascending, into `list`; returns
/// how many (as [`f32_sparse`]'s scalar loop writes them).
///
/// Caller: `r0 + 3 + (k - 1) * ak < a.len()` when `k > 0`;
/// `list.len() >= 5 k`.
unsafe fn adjacent_terms(a: &[f32], r0: usize, ak: usize, k: usize, list: &mut [u32]) -> usize {
    debug_assert!(k == 0 || r0 + 3 + (k - 1) * ak < a.len());
    debug_assert!(list.len() >= (RG + 1) * k);
    let (src, dst) = (a.as_ptr().add(r0), list.as_mut_ptr());
    let mut c = 0;
    for kk in 0..k {
        // Branch-free: written always, kept if any value is non-zero.
        let v = _mm_loadu_ps(src.add(kk * ak));
        let e = dst.add(c * (RG + 1));
        *e = kk as u32;
        _mm_storeu_ps(e.add(1).cast(), v);
        let zero = _mm_cmpeq_ps(v, _mm_setzero_ps());
        c += (_mm_movemask_ps(zero) != 0b1111) as usize;
    }
    c
}

/// `s[i] = sum over the entries of v_i * c` (`i < RG`), `+0.0` first, each
/// product rounded, then added: the chain [`f32_block`] computes for a
/// column of `B` that holds `c` in every row.
#[target_feature(enable = "sse")]
unsafe fn constant_chains(list: &[u32], c: f32, s: &mut [f32]) {
    debug_assert!(s.len() >= RG);
    let (cv, mut acc) = (_mm_set1_ps(c), _mm_setzero_ps());
    for e in list.chunks_exact(RG + 1) {
        let v = _mm_loadu_ps(e.as_ptr().add(1).cast());
        acc = _mm_add_ps(acc, _mm_mul_ps(v, cv));
    }
    _mm_storeu_ps(s.as_mut_ptr(), acc);
}

/// Output rows `0..nr` of `dst` (`n` columns each), in groups of `RG`
/// (`terms(g)`: the entries of group `g`): `dst[i][c] = sum over entries
/// of `v_i * b[k * ldb + c]`. Column blocks outside, rows inside, so that
/// the rows of `B` one block reads stay in L1.
#[target_feature(enable = "avx512f")]
unsafe fn f32_rows<'t>(
    nr: usize,
    terms: impl Fn(usize) -> &'t [u32],
    b: &[f32],
    ldb: usize,
    n: usize,
    dst: &mut [f32],
) {
    let mut c = 0;
    let full = nr / RG;
    let mut block = |c: usize, mask: __mmask16, wide: bool| {
        for g in 0..nr.div_ceil(RG) {
            let rows = RG.min(nr - g * RG);
            let d = &mut dst[g * RG * n..(g * RG + rows) * n];
            match (wide, g < full) {
                (true, true) => f32_block::<VB, RG>(terms(g), b, ldb, n, c, mask, rows, d),
                (true, false) => f32_block::<VB, 1>(terms(g), b, ldb, n, c, mask, rows, d),
                (false, true) => f32_block::<1, RG>(terms(g), b, ldb, n, c, mask, rows, d),
                (false, false) => f32_block::<1, 1>(terms(g), b, ldb, n, c, mask, rows, d),
            }
        }
    };
    while c + CB <= n {
        block(c, !0, true);
        c += CB;
    }
    while c < n {
        let nl = LANES.min(n - c);
        let mask: __mmask16 = if nl == LANES { !0 } else { (1 << nl) - 1 };
        block(c, mask, false);
        c += LANES;
    }
}

/// The sums of one pass of a group over `16 V` columns: for rows `i0..i0 +
/// R` of the group, `acc[r][j] = sum over the entries of v_(i0 + r) *
/// x(k)[j]`, where `x(k)` is the `V` vectors at `base + k ld` (the last
/// masked by `last`, other lanes 0): `+0.0` first, in the entries' order,
/// each product rounded, then added (the reference's f32 order). Shared by
/// the plain kernel and the packed one ([`constant`]), so both compute
/// the same chains.
///
/// Caller: every entry's `V` vectors lie inside the operand; `i0 + R <=
/// RG`.
#[inline(always)]
pub(super) unsafe fn chains<const V: usize, const R: usize>(
    terms: &[u32],
    i0: usize,
    base: *const f32,
    ld: usize,
    last: __mmask16,
) -> [[__m512; V]; R] {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for e in terms.chunks_exact(RG + 1) {
        let row = base.add(e[0] as usize * ld);
        let mut x = [_mm512_setzero_ps(); V];
        for (j, x) in x.iter_mut().enumerate() {
            *x = if j + 1 == V {
                _mm512_maskz_loadu_ps(last, row.add(j * LANES))
            } else {
                _mm512_loadu_ps(row.add(j * LANES))
            };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let v = _mm512_set1_ps(f32::from_bits(e[1 + i0 + r]));
            for (a, &x) in acc.iter_mut().zip(&x) {
                *a = _mm512_add_ps(*a, _mm512_mul_ps(v, x));
            }
        }
    }
    acc
}

/// Columns `c0..c0 + 16 V` of `rows` output rows (`R` rows at a time from
/// the group's entries; `R == 1` walks the group's rows one by one), the
/// last vector masked.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn f32_block<const V: usize, const R: usize>(
    terms: &[u32],
    b: &[f32],
    ldb: usize,
    n: usize,
    c0: usize,
    last: __mmask16,
    rows: usize,
    d: &mut [f32],
) {
    let bp = b.as_ptr().add(c0);
    let passes = if R == 1 { rows } else { 1 };
    for i0 in 0..passes {
        let acc = chains::<V, R>(terms, i0, bp, ldb, last);
        for (r, acc) in acc.iter().enumerate() {
            for (j, a) in acc.iter().enumerate() {
                let dst = d.as_mut_ptr().add((i0 + r) * n + c0 + j * LANES);
                if j + 1 == V {
                    _mm512_mask_storeu_ps(dst, last, *a);
                } else {
                    _mm512_storeu_ps(dst, *a);
                }
            }
        }
    }
}

/// Whether [`f32_by_columns`] is expected to beat [`f32_sparse`] for the
/// weight gradient `dw[o][i] = sum_b dy[b][o] x[b][i]` (`batch x out` by
/// `batch x inp`), given the non-zeros of `dy` and `x` ([`scan_columns`]):
/// work counted in vector operations.
pub(super) fn columns_pay(
    (nz_dy, nz_x): (usize, usize),
    (batch, inp, out): (usize, usize, usize),
) -> bool {
    // f32_sparse: a term per non-zero of a group of RG rows of dy (at
    // least the non-zeros divided by RG), across inp / 16 vectors.
    let rows = (nz_dy / RG).max(nz_dy.div_ceil(batch.max(1)));
    let sparse = rows * inp.div_ceil(LANES) * RG;
    // By columns: a term per non-zero of x across out / 16 vectors (and
    // about two for listing it), a scan of x and a transposing store.
    let columns = nz_x * (out.div_ceil(LANES) + 2)
        + out.next_multiple_of(LANES) * inp.div_ceil(LANES) * 2
        + batch * inp.div_ceil(LANES);
    columns < sparse
}

/// `dw[o][i] = sum_b dy[b][o] x[b][i]` (`dy` is `batch x out`, `x` is
/// `batch x inp`, `dw` is `out x inp`), each output one chain of additions
/// in ascending `b` from `+0.0`, each term `dy * x` rounded, then added
/// (the reference's f32 order). Vectorised across `o`; the terms with
/// `x[b][i] == 0` are skipped, which gives the same bits when `dy` is
/// finite (see the module's documentation). A block of 16 columns `i` is
/// computed into a scratch block, then stored transposed.
///
/// The caller guarantees: [`detect`] returned `true`; every value of `dy`
/// is finite.
pub(super) fn f32_by_columns(
    dy: &[f32],
    x: &[f32],
    (batch, inp, out): (usize, usize, usize),
    dw: &mut [f32],
) {
    assert!(dy.len() == batch * out && x.len() == batch * inp && dw.len() == out * inp);
    if out == 0 || inp == 0 {
        return;
    }
    let ov = out.div_ceil(LANES);
    let ld = ov * LANES;
    // dy with rows padded to whole registers.
    let mut dyp = Buf::<f32>::filled(batch * ld, 0.0);
    for (d, s) in dyp.chunks_exact_mut(ld).zip(dy.chunks_exact(out)) {
        d[..out].copy_from_slice(s);
    }
    // For each column i, the rows b with x[b][i] != 0, ascending: rows
    // scanned in order, appended to their columns' lists.
    let mut lists = Buf::<u32>::with_len(inp * batch, 0);
    let mut counts = Buf::<u32>::filled(inp, 0);
    for (b, row) in x.chunks_exact(inp).enumerate() {
        // SAFETY: `detect()` reported AVX-512 F; `lists` holds `batch`
        // entries per column and each column gets at most one per row.
        unsafe { append_nonzeros(row, b as u32, batch, &mut lists, &mut counts) };
    }
    let mut block = Buf::<f32>::with_len(LANES * ld, 0.0);
    for i0 in (0..inp).step_by(LANES) {
        let ni = LANES.min(inp - i0);
        for j in 0..ni {
            let i = i0 + j;
            let rows = &lists[i * batch..i * batch + counts[i] as usize];
            let col = &mut block[j * ld..(j + 1) * ld];
            // SAFETY: `detect()` reported AVX-512 F; rows of `dyp` hold
            // `ov` registers; `col` holds `ld` values.
            unsafe { column(&dyp, ld, x, inp, i, rows, col) };
        }
        // SAFETY: as above; `block` holds `ni` columns of `ld` values.
        unsafe { store_transposed(&block, ld, ni, out, &mut dw[i0..], inp) };
    }
}

/// Appends `b` to the list of every column `i` with `row[i] != 0`
/// (`lists[i * cap + counts[i]]`, then the count grows).
#[target_feature(enable = "avx512f")]
unsafe fn append_nonzeros(row: &[f32], b: u32, cap: usize, lists: &mut [u32], counts: &mut [u32]) {
    let n = row.len();
    let mut i0 = 0;
    while i0 < n {
        let nl = LANES.min(n - i0);
        let mask: __mmask16 = if nl == LANES { !0 } else { (1 << nl) - 1 };
        let v = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(i0));
        let mut nz = _mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(mask, v, _mm512_setzero_ps());
        while nz != 0 {
            let i = i0 + nz.trailing_zeros() as usize;
            let c = &mut counts[i];
            lists[i * cap + *c as usize] = b;
            *c += 1;
            nz &= nz - 1;
        }
        i0 += LANES;
    }
}

/// `col[o] = sum over b in rows: dyp[b][o] * x[b][i]` for `o < 16 ov`.
#[target_feature(enable = "avx512f")]
unsafe fn column(
    dyp: &[f32],
    ld: usize,
    x: &[f32],
    inp: usize,
    i: usize,
    rows: &[u32],
    col: &mut [f32],
) {
    let ov = ld / LANES;
    let mut o = 0;
    // Registers of outputs in groups of up to 8.
    while o < ov {
        let nv = 8.min(ov - o);
        let mut acc = [_mm512_setzero_ps(); 8];
        for &b in rows {
            let b = b as usize;
            let xv = _mm512_set1_ps(x[b * inp + i]);
            let row = &dyp[b * ld + o * LANES..b * ld + (o + nv) * LANES];
            for (v, acc) in acc.iter_mut().enumerate().take(nv) {
                let d = _mm512_loadu_ps(row.as_ptr().add(v * LANES));
                *acc = _mm512_add_ps(*acc, _mm512_mul_ps(d, xv));
            }
        }
        for (v, acc) in acc.iter().enumerate().take(nv) {
            _mm512_storeu_ps(col[(o + v) * LANES..].as_mut_ptr(), *acc);
        }
        o += nv;
    }
}

/// `dst[o * ld_dst + j] = block[j * ld + o]` for `j < ni`, `o < out`:
/// 16 x 16 squares transposed in registers.
#[target_feature(enable = "avx512f")]
unsafe fn store_transposed(
    block: &[f32],
    ld: usize,
    ni: usize,
    out: usize,
    dst: &mut [f32],
    ld_dst: usize,
) {
    assert!(block.len() >= ni * ld && out <= ld && ld.is_multiple_of(LANES));
    assert!(out == 0 || (out - 1) * ld_dst + ni <= dst.len());
    let mask: __mmask16 = if ni == LANES { !0 } else { (1 << ni) - 1 };
    let mut o0 = 0;
    while o0 < out {
        // Rows j of the square: block[j][o0..o0 + 16] (rows past ni: zero).
        let mut r = [_mm512_setzero_ps(); LANES];
        for (j, r) in r.iter_mut().enumerate().take(ni) {
            *r = _mm512_loadu_ps(block.as_ptr().add(j * ld + o0));
        }
        let t = transpose16(r);
        for (o, t) in t.iter().enumerate().take(out - o0) {
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add((o0 + o) * ld_dst), mask, *t);
        }
        o0 += LANES;
    }
}

/// The transpose of a 16 x 16 square (`r[i]` lane `j` to result `[j]` lane `i`).
#[inline(always)]
unsafe fn transpose16(r: [__m512; LANES]) -> [__m512; LANES] {
    // (Plain loops: closures would not inherit the target features.)
    let mut a = [_mm512_setzero_ps(); LANES];
    let mut b = [_mm512_setzero_ps(); LANES];
    // 32-bit interleave of pairs of rows.
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // 64-bit interleave.
    for i in 0..4 {
        for h in 0..2 {
            let (x, y) = (
                _mm512_castps_pd(a[4 * i + h]),
                _mm512_castps_pd(a[4 * i + 2 + h]),
            );
            b[4 * i + h] = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
            b[4 * i + 2 + h] = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
        }
    }
    // 128-bit blocks: rows 4 apart, then 8 apart.
    for i in 0..2 {
        for h in 0..4 {
            let (x, y) = (b[8 * i + h], b[8 * i + 4 + h]);
            a[8 * i + h] = _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y);
            a[8 * i + 4 + h] = _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y);
        }
    }
    for h in 0..8 {
        let (x, y) = (a[h], a[8 + h]);
        b[h] = _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y);
        b[8 + h] = _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y);
    }
    // b[k] now holds column c(k) of r; put columns in order.
    let mut out = [_mm512_setzero_ps(); LANES];
    for (k, b) in b.iter().enumerate() {
        out[COL[k]] = *b;
    }
    out
}

/// The column of the square that register `k` holds after the shuffles of
/// [`transpose16`] (pairs of columns come out swapped).
const COL: [usize; LANES] = [0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15];

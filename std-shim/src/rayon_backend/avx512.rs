//! AVX-512 kernels for fully connected products, used when the CPU has
//! AVX-512 F, BW and VNNI (detected at run time, [`detect`]).
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
//!   cost that much less.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::codes::ToCode;
use super::scratch::Buf;

/// Whether this CPU runs the kernels of this module.
pub(super) fn detect() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Lanes of a zmm register of `i32` or `f32`.
const LANES: usize = 16;
/// Bytes of a zmm register.
const BYTES: usize = 64;
/// Rows of `A` and of `B` per tile of the integer kernel (a 4 x 4 tile of
/// sums, 16 registers).
const T8: usize = 4;

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
/// Rows of both operands are converted to bytes (A as `code + 128`, B as
/// `code`), zero-padded to whole registers; a tile of 4 rows of A by 4 rows
/// of B keeps 16 registers of partial sums (`vpdpbusd`), reduced at the end.
///
/// The caller guarantees: [`detect`] returned `true`; `a.len() == m * k`,
/// `b.len() == n * k`, `out.len() == m * n`; [`int8_fits`]`(k)`.
pub(super) fn int8(p: &Int8<'_>, par: bool, out: &mut [i64]) -> bool {
    let Int8 { m, n, k, .. } = *p;
    assert!(p.a.len() == m * k && p.b.len() == n * k && out.len() == m * n);
    if k == 0 {
        out.fill(0);
        return true;
    }
    let kw = k.div_ceil(BYTES) * (BYTES / 4); // words per packed row
    let mut aq = Buf::<u32>::with_len(m * kw, 0);
    let mut bq = Buf::<u32>::with_len(n * kw, 0);
    let mut bsum = Buf::<i32>::with_len(n, 0);
    // SAFETY: `detect()` reported AVX-512 F, BW and VNNI (caller's contract);
    // the buffers hold `kw` words per row.
    let fits = unsafe {
        pack8(p.a, p.ta, k, kw, 128, &mut aq, None)
            && pack8(p.b, p.tb, k, kw, 0, &mut bq, Some(&mut bsum))
    };
    if !fits {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    let tiles_m = m.div_ceil(T8);
    let rows = |t0: usize, dst: &mut [i64]| {
        let nt = (dst.len() / n).div_ceil(T8);
        for t in t0..t0 + nt {
            let mut c0 = 0;
            while c0 < n {
                // SAFETY: as above; rows are clamped to `m - 1`, `n - 1`.
                let s = unsafe { int8_tile(&aq, &bq, kw, (t * T8, m), (c0, n)) };
                for i in 0..T8.min(m - t * T8) {
                    let row = (t - t0) * T8 + i;
                    for j in 0..T8.min(n - c0) {
                        let c = c0 + j;
                        dst[row * n + c] = s[i * T8 + j] as i64 - 128 * bsum[c] as i64;
                    }
                }
                c0 += T8;
            }
        }
    };
    let threads = if par {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    let per = tiles_m.div_ceil(threads);
    if threads > 1 && per < tiles_m {
        out.par_chunks_mut(per * T8 * n)
            .enumerate()
            .for_each(|(i, d)| rows(i * per, d));
    } else {
        rows(0, out);
    }
    true
}

/// Codes of `rows x k` values as bytes `code + offset` (`offset` 128: as
/// unsigned bytes; 0: signed), `kw` words per row padded with `offset`;
/// with `sums`, each row's sum of codes. `false` if a code lies outside
/// `-128..=127` (NaN reads 0, as in the reference).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack8(
    src: &[f32],
    t: ToCode,
    k: usize,
    kw: usize,
    offset: i32,
    dst: &mut [u32],
    mut sums: Option<&mut [i32]>,
) -> bool {
    let rows = src.len() / k.max(1);
    let pad = u32::from_le_bytes([offset as u8; 4]);
    let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    for r in 0..rows {
        let s = &src[r * k..(r + 1) * k];
        let d = &mut dst[r * kw..(r + 1) * kw];
        d[k / 4..].fill(pad);
        let bytes: *mut i8 = d.as_mut_ptr().cast();
        let mut sum = _mm512_setzero_si512();
        let mut i = 0;
        while i < k {
            let nl = LANES.min(k - i);
            let mask: __mmask16 = if nl == LANES { !0 } else { (1 << nl) - 1 };
            let v = _mm512_maskz_loadu_ps(mask, s.as_ptr().add(i));
            let q = _mm512_maskz_mov_epi32(mask, codes16(v, t, &s[i..i + nl]));
            lo = _mm512_min_epi32(lo, q);
            hi = _mm512_max_epi32(hi, q);
            sum = _mm512_add_epi32(sum, q);
            let u = _mm512_cvtepi32_epi8(_mm512_add_epi32(q, _mm512_set1_epi32(offset)));
            if nl == LANES {
                _mm_storeu_si128(bytes.add(i).cast(), u);
            } else {
                _mm_mask_storeu_epi8(bytes.add(i), mask, u);
            }
            i += LANES;
        }
        if let Some(sums) = sums.as_deref_mut() {
            sums[r] = _mm512_reduce_add_epi32(sum);
        }
    }
    _mm512_reduce_min_epi32(lo) >= -128 && _mm512_reduce_max_epi32(hi) <= 127
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

/// The 4 x 4 sums of rows `r0..r0 + 4` of A by rows `c0..c0 + 4` of B
/// (rows past `m`, `n` repeat the last one), `[i][j]` at `i * 4 + j`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn int8_tile(
    aq: &[u32],
    bq: &[u32],
    kw: usize,
    (r0, m): (usize, usize),
    (c0, n): (usize, usize),
) -> [i32; T8 * T8] {
    // (Plain loops: closures would not inherit the target features.)
    let mut ar = [aq.as_ptr(); T8];
    let mut br = [bq.as_ptr(); T8];
    for i in 0..T8 {
        let r = (r0 + i).min(m - 1);
        ar[i] = aq[r * kw..(r + 1) * kw].as_ptr();
        let c = (c0 + i).min(n - 1);
        br[i] = bq[c * kw..(c + 1) * kw].as_ptr();
    }
    let mut acc = [_mm512_setzero_si512(); T8 * T8];
    let mut w = 0;
    while w < kw {
        let mut a = [_mm512_setzero_si512(); T8];
        let mut b = [_mm512_setzero_si512(); T8];
        for i in 0..T8 {
            a[i] = _mm512_loadu_si512(ar[i].add(w).cast());
            b[i] = _mm512_loadu_si512(br[i].add(w).cast());
        }
        for i in 0..T8 {
            for j in 0..T8 {
                acc[i * T8 + j] = _mm512_dpbusd_epi32(acc[i * T8 + j], a[i], b[j]);
            }
        }
        w += BYTES / 4;
    }
    let mut s = [0i32; T8 * T8];
    _mm512_storeu_si512(s.as_mut_ptr().cast(), reduce16(&acc));
    s
}

/// Lane `i` of the result: the sum of the lanes of `v[i]` (a transposing
/// tree of shuffles and additions).
#[inline(always)]
unsafe fn reduce16(v: &[__m512i; 16]) -> __m512i {
    // (Plain loops: closures would not inherit the target features.)
    // Within 128-bit lanes: pairs, then quadruples.
    let mut a = [_mm512_setzero_si512(); 8];
    for j in 0..8 {
        let (x, y) = (v[2 * j], v[2 * j + 1]);
        a[j] = _mm512_add_epi32(_mm512_unpacklo_epi32(x, y), _mm512_unpackhi_epi32(x, y));
    }
    let mut b = [_mm512_setzero_si512(); 4];
    for j in 0..4 {
        let (x, y) = (a[2 * j], a[2 * j + 1]);
        b[j] = _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
    }
    // b[j], 128-bit lane L: the lane-L sums of v[4j..4j + 4]. Across lanes:
    let mut d = [_mm512_setzero_si512(); 2];
    for j in 0..2 {
        let (x, y) = (b[2 * j], b[2 * j + 1]);
        d[j] = _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(x, y),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(x, y),
        );
    }
    _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(d[0], d[1]),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(d[0], d[1]),
    )
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
/// The caller guarantees: [`detect`] returned `true`; every value of `B`
/// is finite; every index of `A` and `B` above lies inside the slices;
/// `out.len() == m * n`.
pub(super) fn f32_sparse(p: &F32Sparse<'_>, par: bool, out: &mut [f32]) {
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
    let groups = m.div_ceil(RG);
    let mut terms = Buf::<u32>::with_len(groups * k * (RG + 1), 0);
    let mut counts = Buf::<usize>::with_len(groups, 0);
    for g in 0..groups {
        let list = &mut terms[g * k * (RG + 1)..(g + 1) * k * (RG + 1)];
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
    // Rows `r0..` (a multiple of RG) into `dst`.
    let rows = |r0: usize, dst: &mut [f32]| {
        let nr = dst.len() / n;
        let g0 = r0 / RG;
        let terms = |g: usize| {
            let g = g0 + g;
            &terms[g * k * (RG + 1)..(g * k + counts[g]) * (RG + 1)]
        };
        // SAFETY: `detect()` reported AVX-512 F; every row `k` of a term
        // satisfies `k * ldb + n <= b.len()` (checked above).
        unsafe { f32_rows(nr, terms, p.b, p.ldb, n, dst) }
    };
    let per = if par {
        m.div_ceil(rayon::current_num_threads().max(1) * 2)
            .next_multiple_of(RG)
    } else {
        m
    };
    if par && per < m {
        out.par_chunks_mut(per * n)
            .enumerate()
            .for_each(|(i, d)| rows(i * per, d));
    } else {
        rows(0, out);
    }
}

/// Rows of `A` per group of the f32 kernel.
const RG: usize = 4;

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
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for e in terms.chunks_exact(RG + 1) {
            let row = bp.add(e[0] as usize * ldb);
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

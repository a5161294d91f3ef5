//! Packed-tile integer matrix product with chunked 32-bit accumulation.

use super::block::{block2x2, row_pair};
use crate::quant::{pow2_f32, Format};

/// Turns values that are exact codes of a [`Format`] into those codes, the
/// way the reference backend reads them (`value * 2^-step_exp`, truncated
/// toward zero; the packer refuses codes outside the format's range).
///
/// For every f32 `v` below `2^31` steps in magnitude (codes or not) this
/// is [`Format::code_of`]`(v)`: `v`'s significand times a power of two is
/// exact whenever it is at least 1 in magnitude, and below that both give
/// 0. NaN gives 0 in both.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CodeConv {
    to_code: f32,
    bits: u32,
}

impl CodeConv {
    /// The conversion for `fmt`; `None` when `2^-step_exp` is not a finite
    /// f32 (the reference backend then decodes value by value: use it).
    pub fn new(fmt: Format) -> Option<Self> {
        let to_code = pow2_f32(-fmt.step_exp());
        to_code.is_finite().then_some(CodeConv {
            to_code,
            bits: u32::from(fmt.code_bits()),
        })
    }

    /// `v * 2^-step_exp` truncated to `i32` (saturating; NaN gives 0): the
    /// code of `v` if `v` is a code of the format.
    #[inline(always)]
    pub fn code(&self, v: f32) -> i32 {
        (v * self.to_code) as i32
    }

    /// `v * 2^-step_exp` as an f32 (exact when it is at least 1 in
    /// magnitude and finite): the value in steps.
    #[inline(always)]
    pub fn code_f32(&self, v: f32) -> f32 {
        v * self.to_code
    }

    /// Code width in bits ([`Format::code_bits`]: one more than the
    /// format's bits with nics_fix_pt's clamp).
    pub const fn bits(&self) -> u32 {
        self.bits
    }
}

/// Two codes in one word: `lo` in bits 0..16, `hi` in bits 16..32 (both
/// as 16-bit two's complement).
#[inline(always)]
pub const fn pack2(lo: i32, hi: i32) -> u32 {
    (lo as u16 as u32) | ((hi as u16 as u32) << 16)
}

/// The most words (pairs of products) one 32-bit accumulator may sum for
/// codes of `ba` and `bb` bits: even, and at most `(2^(33 - ba - bb) - 1) /
/// 2`, so that no partial sum leaves `i32`. 0 when `ba + bb > 30` (not
/// even two words fit: use the reference kernels).
pub const fn chunk_words(ba: u32, bb: u32) -> usize {
    if ba + bb > 30 || ba == 0 || bb == 0 {
        return 0;
    }
    let products = (1usize << (33 - ba - bb)) - 1;
    (products / 2) & !1
}

/// A matrix of integer codes, read row by row: one operand of [`gemm`].
pub trait Rows {
    /// Every code lies in `[-2^(bits-1), 2^(bits-1) - 1]` (the packer checks).
    fn bits(&self) -> u32;

    /// Call `visit` with the codes of row `r` at `k0..k1`, two at a time, in
    /// order (an odd count ends with the pair `(last, 0)`). A value that is
    /// not a code may be reported as any out-of-range number.
    fn row(&self, r: usize, k0: usize, k1: usize, visit: &mut impl FnMut(i32, i32));

    /// Pack rows `r` and `r + 1` at `k0..k1` into `dst`, the pair's `2 *
    /// used` words of a tile ([module layout](super): word `w` of row `r`
    /// at `2 w`, of row `r + 1` at `2 w + 1`), zeros past `k1`; a row at
    /// or past `rows` is all zeros. `false` if a code is outside
    /// [`Rows::bits`] (or `dst` is too short).
    ///
    /// The default packs row by row through [`Rows::row`]; layouts that
    /// can read runs of codes override it.
    #[inline(always)]
    fn pack_pair(
        &self,
        r: usize,
        rows: usize,
        k: (usize, usize),
        used: usize,
        dst: &mut [u32],
    ) -> bool {
        pack_pair_by_rows(self, r, rows, k, used, dst)
    }
}

/// The default [`Rows::pack_pair`]: each row through [`Rows::row`].
#[inline(always)]
pub(crate) fn pack_pair_by_rows<R: Rows + ?Sized>(
    src: &R,
    r: usize,
    rows: usize,
    (k0, k1): (usize, usize),
    used: usize,
    dst: &mut [u32],
) -> bool {
    let half = 1i32 << (src.bits().clamp(1, 16) - 1);
    let span = 2 * half as u32;
    for (row, lane) in [(r, 0), (r + 1, 1)] {
        let Some(d) = dst.get_mut(lane..) else {
            return false;
        };
        let mut words_out = d.iter_mut().step_by(2).take(used);
        if row >= rows {
            words_out.for_each(|w| *w = 0);
            continue;
        }
        // Codes arrive two by two; bits outside the range flag an error.
        let (mut n, mut bad) = (0usize, 0u32);
        src.row(row, k0, k1, &mut |lo, hi| {
            bad |= u32::from((lo + half) as u32 >= span) | u32::from((hi + half) as u32 >= span);
            if let Some(w) = words_out.next() {
                *w = pack2(lo, hi);
            }
            n += 2;
        });
        if bad != 0 || n != (k1 - k0).next_multiple_of(2) {
            return false;
        }
        words_out.for_each(|w| *w = 0);
    }
    true
}

/// Zero words `words..used` of both rows of a packed pair (`dst` holds
/// `2 * used` words, interleaved).
#[inline(always)]
pub(crate) fn zero_tail(dst: &mut [u32], words: usize, used: usize) {
    if let Some(t) = dst.get_mut(2 * words..2 * used) {
        t.fill(0);
    }
}

/// `out[i rs + j cs] = sum over k < k_len of A(i, k) B(j, k)` for
/// `i < m`, `j < n`, exactly (i64).
///
/// Packs `A` and `B` into `scratch` ([module layout](super)) in tiles of as
/// many `k` as fit (rows rounded up to even with zero rows, `k` rounded up
/// to a multiple of 4 with zeros), multiplies them with [`block2x2`] in
/// chunks of at most [`chunk_words`] words and adds each chunk's 32-bit sums
/// to the `i64` outputs. Writes every `out[i rs + j cs]`, nothing else.
///
/// Returns `false`, with `out` partly written, when it cannot compute the
/// result: a code outside its `bits`, formats too wide for 32-bit chunks,
/// `scratch` smaller than four words per (rounded) row of `A` and `B`, or
/// `out` too short. The caller then uses the reference kernels.
pub fn gemm(
    scratch: &mut [u32],
    (m, n, k_len): (usize, usize, usize),
    a: &impl Rows,
    b: &impl Rows,
    out: &mut [i64],
    (rs, cs): (usize, usize),
) -> bool {
    let chunk = chunk_words(a.bits(), b.bits());
    let (mp, np) = (m.next_multiple_of(2), n.next_multiple_of(2));
    let rows = mp + np;
    if chunk == 0 {
        return false;
    }
    if k_len == 0 || rows == 0 {
        return zero_out(out, (m, n), (rs, cs));
    }
    let want = k_len.div_ceil(2).next_multiple_of(2);
    let fit = (scratch.len() / rows) & !1;
    let words = want.min(fit);
    if words < 2 {
        return false;
    }
    // In one `k` tile every output is stored once; in several, the tiles'
    // sums are added to zeroed outputs.
    let single = words == want;
    if !single && !zero_out(out, (m, n), (rs, cs)) {
        return false;
    }
    let (ta, tb) = scratch.split_at_mut(mp * words);
    let tb = &mut tb[..np * words];
    let mut k0 = 0;
    while k0 < k_len {
        let k1 = k_len.min(k0 + 2 * words);
        // Rows `used` words apart (the last tile may be shorter).
        let used = (k1 - k0).div_ceil(2).next_multiple_of(2);
        if !pack(ta, m, mp, used, k0, k1, a) || !pack(tb, n, np, used, k0, k1, b) {
            return false;
        }
        let done = if single {
            packed::<true>(ta, tb, (m, n), (used, used, chunk), out, (rs, cs))
        } else {
            gemm_packed(ta, tb, (m, n), used, used, chunk, out, (rs, cs))
        };
        if !done {
            return false;
        }
        k0 = k1;
    }
    true
}

/// Zero `out[i rs + j cs]` for `i < m`, `j < n`; `false` if one is past
/// the end.
fn zero_out(out: &mut [i64], (m, n): (usize, usize), (rs, cs): (usize, usize)) -> bool {
    for i in 0..m {
        if cs == 1 {
            // A row of the output is contiguous: one fill.
            match out.get_mut(i * rs..i * rs + n) {
                Some(row) => row.fill(0),
                None => return false,
            }
            continue;
        }
        for j in 0..n {
            match out.get_mut(i * rs + j * cs) {
                Some(o) => *o = 0,
                None => return false,
            }
        }
    }
    true
}

/// The multiply of [`gemm`] on tiles packed already: adds `sum over the
/// first `used` words of A row i . B row j` to `out[i rs + j cs]` for
/// `i < m`, `j < n`, where `ta` holds `round_up_2(m)` rows and `tb`
/// `round_up_2(n)` rows of `words` words each, pairs interleaved. `used`
/// must be even and at most `words`; `chunk` even, non-zero and at most
/// [`chunk_words`] of the codes' widths (the codes must be within them).
/// `false` (nothing or part added) if a slice is too short or `used`,
/// `chunk` are not as required.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed(
    ta: &[u32],
    tb: &[u32],
    (m, n): (usize, usize),
    words: usize,
    used: usize,
    chunk: usize,
    out: &mut [i64],
    (rs, cs): (usize, usize),
) -> bool {
    packed::<false>(ta, tb, (m, n), (words, used, chunk), out, (rs, cs))
}

/// [`gemm_packed`] that stores the sums (`SET`) instead of adding them:
/// for a product in one `k` tile, whose outputs need no zeroing first.
/// Every `out[i rs + j cs]` (`i < m`, `j < n`) is written exactly once.
#[inline(always)]
pub(crate) fn packed<const SET: bool>(
    ta: &[u32],
    tb: &[u32],
    (m, n): (usize, usize),
    (words, used, chunk): (usize, usize, usize),
    out: &mut [i64],
    (rs, cs): (usize, usize),
) -> bool {
    let (mp, np) = (m.next_multiple_of(2), n.next_multiple_of(2));
    if chunk == 0 || !chunk.is_multiple_of(2) || !used.is_multiple_of(2) || used > words {
        return false;
    }
    if ta.len() < mp * words || tb.len() < np * words {
        return false;
    }
    // Pairs of B per call of the row-pair kernel (its i32 results on the stack).
    const GROUP: usize = 16;
    let mut buf = [0i32; 4 * GROUP];
    for p in 0..mp / 2 {
        let rows_a = &ta[2 * p * words..2 * p * words + 2 * used];
        let (i0, i1) = (2 * p, 2 * p + 1);
        let mut q0 = 0;
        while q0 < np / 2 {
            let q1 = (np / 2).min(q0 + GROUP);
            if used <= chunk && used == words {
                // One chunk (8-bit codes: up to 2^17 products), pairs of B
                // back to back: one kernel call for the whole group.
                let res = &mut buf[..4 * (q1 - q0)];
                row_pair(rows_a, &tb[2 * q0 * words..2 * q1 * words], used, res);
                if cs == 1 {
                    // Rows of the output are contiguous: both rows of the
                    // block in one pass when both exist and the columns
                    // pair up, else slice by slice.
                    let (j0, j1) = (2 * q0, (2 * q1).min(n));
                    let (res4, _) = res.as_chunks::<4>();
                    if i1 < m && j1 == 2 * q1 && rs >= j1 - j0 {
                        let Some(rows) = out.get_mut(i0 * rs + j0..i1 * rs + j1) else {
                            return false;
                        };
                        let (row0, rest) = rows.split_at_mut(j1 - j0);
                        let row1 = rest.get_mut(rs - (j1 - j0)..).unwrap_or_default();
                        let (p0, _) = row0.as_chunks_mut::<2>();
                        let (p1, _) = row1.as_chunks_mut::<2>();
                        for ((o0, o1), r) in p0.iter_mut().zip(p1).zip(res4) {
                            let v = r.map(i64::from);
                            if SET {
                                *o0 = [v[0], v[1]];
                                *o1 = [v[2], v[3]];
                            } else {
                                *o0 = [o0[0] + v[0], o0[1] + v[1]];
                                *o1 = [o1[0] + v[2], o1[1] + v[3]];
                            }
                        }
                        q0 = q1;
                        continue;
                    }
                    for (i, e) in [(i0, 0), (i1, 2)] {
                        if i >= m {
                            continue;
                        }
                        let Some(row) = out.get_mut(i * rs + j0..i * rs + j1) else {
                            return false;
                        };
                        let (pairs, last) = row.as_chunks_mut::<2>();
                        let mut res = res4.iter();
                        for (o, r) in pairs.iter_mut().zip(&mut res) {
                            let v = [r[e], r[e + 1]].map(i64::from);
                            if SET {
                                *o = v;
                            } else {
                                o[0] += v[0];
                                o[1] += v[1];
                            }
                        }
                        if let (Some(o), Some(r)) = (last.first_mut(), res.next()) {
                            *o = i64::from(r[e]) + if SET { 0 } else { *o };
                        }
                    }
                    q0 = q1;
                    continue;
                }
                for (q, r) in (q0..q1).zip(res.chunks_exact(4)) {
                    if !add::<SET>(
                        out,
                        (m, n),
                        (rs, cs),
                        (i0, q),
                        [r[0], r[1], r[2], r[3]].map(i64::from),
                    ) {
                        return false;
                    }
                }
            } else {
                for q in q0..q1 {
                    let rows_b = &tb[2 * q * words..2 * q * words + 2 * used];
                    let sum = sum_chunks(rows_a, rows_b, used, chunk);
                    if !add::<SET>(out, (m, n), (rs, cs), (i0, q), sum) {
                        return false;
                    }
                }
            }
            q0 = q1;
        }
    }
    true
}

/// Add (or store, `SET`) the block of rows `i0, i0 + 1` and columns `2 q,
/// 2 q + 1` (those inside `m x n`) to `out`; `false` if an index is past
/// its end.
#[inline(always)]
fn add<const SET: bool>(
    out: &mut [i64],
    (m, n): (usize, usize),
    (rs, cs): (usize, usize),
    (i0, q): (usize, usize),
    s: [i64; 4],
) -> bool {
    let (i1, j0, j1) = (i0 + 1, 2 * q, 2 * q + 1);
    for (i, j, v) in [
        (i0, j0, s[0]),
        (i0, j1, s[1]),
        (i1, j0, s[2]),
        (i1, j1, s[3]),
    ] {
        if i < m && j < n {
            match out.get_mut(i * rs + j * cs) {
                Some(o) => *o = v + if SET { 0 } else { *o },
                None => return false,
            }
        }
    }
    true
}

/// The 2 x 2 block over `used` words in chunks of `chunk` words, each
/// chunk's 32-bit sums widened and added in `i64`.
#[inline(never)]
fn sum_chunks(rows_a: &[u32], rows_b: &[u32], used: usize, chunk: usize) -> [i64; 4] {
    let mut s = [0i64; 4];
    let mut w0 = 0;
    while w0 < used {
        let w1 = used.min(w0 + chunk);
        let (a, b) = (rows_a.get(2 * w0..2 * w1), rows_b.get(2 * w0..2 * w1));
        if let (Some(a), Some(b)) = (a, b) {
            let c = block2x2(a, b, w1 - w0, [0; 4]);
            for (s, c) in s.iter_mut().zip(c) {
                *s += i64::from(c);
            }
        }
        w0 = w1;
    }
    s
}

/// Pack rows `0..rows` (then zero rows up to `padded`) of `k0..k1` into
/// `tile`, pairs of rows interleaved, `words` words per row, zeros past
/// `k1` up to a multiple of 4. `false` if a code is out of range.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pack(
    tile: &mut [u32],
    rows: usize,
    padded: usize,
    words: usize,
    k0: usize,
    k1: usize,
    src: &impl Rows,
) -> bool {
    let used = (k1 - k0).div_ceil(2).next_multiple_of(2);
    for p in 0..padded / 2 {
        let base = 2 * p * words;
        let Some(dst) = tile.get_mut(base..base + 2 * used) else {
            return false;
        };
        if !src.pack_pair(2 * p, rows, (k0, k1), used, dst) {
            return false;
        }
    }
    true
}

//! Packed-tile integer matrix product with chunked 32-bit accumulation.

use super::block::block2x2;
use crate::quant::{pow2_f32, Format};

/// Turns values that are exact codes of a [`Format`] into those codes, the
/// way the reference backend reads them (`value * 2^-step_exp`, truncated),
/// and refuses any code outside the format's range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CodeConv {
    to_code: f32,
    lo: i32,
    hi: i32,
    bits: u32,
}

impl CodeConv {
    /// The conversion for `fmt`; `None` when `2^-step_exp` is not a finite
    /// f32 (the reference backend then decodes value by value: use it).
    pub fn new(fmt: Format) -> Option<Self> {
        let to_code = pow2_f32(-fmt.step_exp());
        to_code.is_finite().then_some(CodeConv {
            to_code,
            lo: fmt.min_code(),
            hi: fmt.max_code(),
            bits: u32::from(fmt.bits()),
        })
    }

    /// The code of `v`, `None` if it lies outside `[min_code, max_code]`
    /// (then the value was not a code of the format).
    #[inline(always)]
    pub fn code(&self, v: f32) -> Option<i32> {
        let c = (v * self.to_code) as i32;
        (c >= self.lo && c <= self.hi).then_some(c)
    }

    /// Code width in bits.
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

/// `out[i rs + j cs] = sum over k < k_len of A(i, k) B(j, k)` for
/// `i < m`, `j < n`, exactly (i64), where `A(i, k) = a(i, k)` is read
/// through `ca` and `B(j, k) = b(j, k)` through `cb`.
///
/// Packs `A` and `B` into `scratch` in tiles of as many `k` as fit
/// (rows rounded up to even with zero rows, `k` rounded up to a multiple of
/// 4 with zeros), multiplies them with [`block2x2`] in chunks of at most
/// [`chunk_words`] words and adds each chunk's 32-bit sums to the `i64`
/// outputs. Writes every `out[i rs + j cs]`, nothing else.
///
/// Returns `false`, with `out` partly written, when it cannot compute the
/// result: a value that is not a code of its format, formats too wide for
/// 32-bit chunks, `scratch` smaller than four words per (rounded) row of `A`
/// and `B`, or `out` too short. The caller then uses the reference kernels.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    scratch: &mut [u32],
    (m, n, k_len): (usize, usize, usize),
    (ca, a): (CodeConv, impl Fn(usize, usize) -> f32),
    (cb, b): (CodeConv, impl Fn(usize, usize) -> f32),
    out: &mut [i64],
    (rs, cs): (usize, usize),
) -> bool {
    let chunk = chunk_words(ca.bits, cb.bits);
    let (mp, np) = (m.next_multiple_of(2), n.next_multiple_of(2));
    let rows = mp + np;
    if chunk == 0 || rows == 0 {
        return chunk != 0;
    }
    // Output cells first: zero them (and check the buffer once).
    for i in 0..m {
        for j in 0..n {
            match out.get_mut(i * rs + j * cs) {
                Some(o) => *o = 0,
                None => return false,
            }
        }
    }
    if k_len == 0 {
        return true;
    }
    let want = k_len.div_ceil(2).next_multiple_of(2);
    let fit = (scratch.len() / rows) & !1;
    let words = want.min(fit);
    if words < 2 {
        return false;
    }
    let (ta, tb) = scratch.split_at_mut(mp * words);
    let tb = &mut tb[..np * words];
    let mut k0 = 0;
    while k0 < k_len {
        let k1 = k_len.min(k0 + 2 * words);
        if !pack(ta, m, mp, words, k0, k1, ca, &a) || !pack(tb, n, np, words, k0, k1, cb, &b) {
            return false;
        }
        // Words holding codes of this tile (even, padded with zeros).
        let used = (k1 - k0).div_ceil(2).next_multiple_of(2);
        for p in 0..mp / 2 {
            let rows_a = &ta[2 * p * words..2 * p * words + 2 * used];
            for q in 0..np / 2 {
                let rows_b = &tb[2 * q * words..2 * q * words + 2 * used];
                let mut s = [0i64; 4];
                let mut w0 = 0;
                while w0 < used {
                    let w1 = used.min(w0 + chunk);
                    let c = block2x2(
                        &rows_a[2 * w0..2 * w1],
                        &rows_b[2 * w0..2 * w1],
                        w1 - w0,
                        [0; 4],
                    );
                    for (s, c) in s.iter_mut().zip(c) {
                        *s += i64::from(c);
                    }
                    w0 = w1;
                }
                for (t, s) in s.into_iter().enumerate() {
                    let (i, j) = (2 * p + t / 2, 2 * q + t % 2);
                    if i < m && j < n {
                        if let Some(o) = out.get_mut(i * rs + j * cs) {
                            *o += s;
                        }
                    }
                }
            }
        }
        k0 = k1;
    }
    true
}

/// Pack rows `0..rows` (then zero rows up to `padded`) of `k0..k1` into
/// `tile`, pairs of rows interleaved, `words` words per row, zeros past
/// `k1`. `false` if a value is not a code.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pack(
    tile: &mut [u32],
    rows: usize,
    padded: usize,
    words: usize,
    k0: usize,
    k1: usize,
    conv: CodeConv,
    get: &impl Fn(usize, usize) -> f32,
) -> bool {
    let used = (k1 - k0).div_ceil(2).next_multiple_of(2);
    for r in 0..padded {
        let base = (r / 2) * 2 * words + r % 2;
        for w in 0..used {
            let k = k0 + 2 * w;
            let word = if r >= rows {
                0
            } else {
                let lo = if k < k1 {
                    conv.code(get(r, k))
                } else {
                    Some(0)
                };
                let hi = if k + 1 < k1 {
                    conv.code(get(r, k + 1))
                } else {
                    Some(0)
                };
                match (lo, hi) {
                    (Some(lo), Some(hi)) => pack2(lo, hi),
                    _ => return false,
                }
            };
            if let Some(t) = tile.get_mut(base + 2 * w) {
                *t = word;
            } else {
                return false;
            }
        }
    }
    true
}

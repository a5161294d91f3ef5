//! The six products of [`Backend`](crate::backend::Backend) on integer code
//! slices, lowered to [`gemm`]. Same sums, same output layout as
//! [`RefBackend`](crate::backend::RefBackend)'s integer path.

use super::gemm::{gemm, pack2, pack_pair_by_rows, zero_tail, CodeConv, Rows};
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

    /// The codes at `i` and `i + 1`, as [`Codes::at`] reads them.
    #[inline(always)]
    fn pair(&self, i: usize) -> (i32, i32) {
        (self.at(i), self.at(i.wrapping_add(1)))
    }

    /// Pack the codes at `a..a + len` with those at `b..b + len`, one word
    /// per position: `dst[i * step] = pack2(code(a + i), code(b + i))`
    /// (words past `dst`'s end are not written). Returns the OR of the
    /// codes' [`magnitude`]s (`u32::MAX` if a range is past the end).
    ///
    /// The default reads through [`Codes::at`].
    #[inline(always)]
    fn pack_zip(&self, a: usize, b: usize, len: usize, dst: &mut [u32], step: usize) -> u32 {
        let mut m = 0u32;
        for (i, d) in (0..len).zip(dst.iter_mut().step_by(step.max(1))) {
            let (lo, hi) = (self.at(a.wrapping_add(i)), self.at(b.wrapping_add(i)));
            m |= magnitude(lo) | magnitude(hi);
            *d = pack2(lo, hi);
        }
        m
    }

    /// Pack two columns of a strided matrix into a row pair of a tile:
    /// with `(j, k)` the code at `start + j + k * stride`, word `w` of
    /// `dst` is `pack2((0, 2w), (0, 2w + 1))` at `dst[2 w]` and `pack2((1,
    /// 2w), (1, 2w + 1))` at `dst[2 w + 1]`, for `k < count` (an odd count
    /// ends with zeros); words past `dst`'s end are not written. Returns
    /// the OR of the codes' [`magnitude`]s (`u32::MAX` if a code is past
    /// the end).
    ///
    /// The default reads through [`Codes::pair`].
    #[inline(always)]
    fn pack_cols(&self, start: usize, stride: usize, count: usize, dst: &mut [u32]) -> u32 {
        let mut m = 0u32;
        let mut i = start;
        let mut out = dst.chunks_mut(2);
        for _ in 0..count / 2 {
            let (p0, p1) = self.pair(i);
            let (q0, q1) = self.pair(i.wrapping_add(stride));
            m |= magnitude(p0) | magnitude(p1) | magnitude(q0) | magnitude(q1);
            if let Some(d) = out.next() {
                d[0] = pack2(p0, q0);
                if let Some(w) = d.get_mut(1) {
                    *w = pack2(p1, q1);
                }
            }
            i = i.wrapping_add(2 * stride);
        }
        if count % 2 == 1 {
            let (p0, p1) = self.pair(i);
            m |= magnitude(p0) | magnitude(p1);
            if let Some(d) = out.next() {
                d[0] = pack2(p0, 0);
                if let Some(w) = d.get_mut(1) {
                    *w = pack2(p1, 0);
                }
            }
        }
        m
    }

    /// Pack the codes at `start..start + len` two per word ([`pack2`]: even
    /// position low) into every other word of `dst` (`dst[0]`, `dst[2]`,
    /// ...), an odd count ending with the pair `(last, 0)`; words past
    /// `dst`'s end are not written. Returns the OR over the codes of
    /// [`magnitude`]: every code lies in `[-2^(b-1), 2^(b-1) - 1]` iff it
    /// is below `2^(b-1)`. A range past the end gives `u32::MAX`.
    ///
    /// The default goes through [`Codes::run`]; slices of codes override it
    /// with loops that read several codes at once.
    #[inline(always)]
    fn pack_run(&self, start: usize, len: usize, dst: &mut [u32]) -> u32 {
        let mut m = 0u32;
        let mut words = dst.iter_mut().step_by(2);
        self.run(start, len, &mut |lo, hi| {
            m |= magnitude(lo) | magnitude(hi);
            if let Some(d) = words.next() {
                *d = pack2(lo, hi);
            }
        });
        m
    }
}

/// `c` for `c >= 0`, `-c - 1` for `c < 0` (as `u32`): a code lies in
/// `[-2^(b-1), 2^(b-1) - 1]` iff its magnitude is below `2^(b-1)`, so one
/// OR over many codes checks them all.
#[inline(always)]
pub const fn magnitude(c: i32) -> u32 {
    (c ^ (c >> 31)) as u32
}

/// [`Codes::pack_run`] of `i8` codes four at a time: one 32-bit load, the
/// four bytes sign-extended into two packed words (what `SXTB16` and
/// `PKHBT` do). With `CHECK` (codes narrower than 8 bits) the magnitudes
/// are or-ed byte-wise; 8-bit codes cannot be out of range (0 returned).
#[inline(always)]
fn pack_run_i8<const CHECK: bool>(v: &[i8], start: usize, len: usize, dst: &mut [u32]) -> u32 {
    let Some(src) = start.checked_add(len).and_then(|end| v.get(start..end)) else {
        return u32::MAX;
    };
    let (quads, _) = src.as_chunks::<4>();
    let mut bytes = 0u32;
    // Quads of words (two of this row's, interleaved with the other
    // row's) while they fit in `dst`; the rest code by code.
    let full = quads.len().min(dst.len() / 4);
    let (body, tail) = dst.split_at_mut(4 * full);
    let (words, _) = body.as_chunks_mut::<4>();
    for (q, d) in quads.iter().zip(words) {
        let x = u32::from_le_bytes(q.map(|c| c as u8));
        if CHECK {
            // Each byte xor its sign spread over the byte: its magnitude.
            bytes |= x ^ (((x >> 7) & 0x0101_0101) * 0xff);
        }
        let (b0, b1, b2, b3) = (
            (x << 24) as i32 >> 24,
            (x << 16) as i32 >> 24,
            (x << 8) as i32 >> 24,
            x as i32 >> 24,
        );
        d[0] = pack2(b0, b1);
        d[2] = pack2(b2, b3);
    }
    let m = pack_rest(src.get(4 * full..).unwrap_or_default(), i32::from, tail);
    if !CHECK {
        return 0;
    }
    m | ((bytes | bytes >> 8 | bytes >> 16 | bytes >> 24) & 0xff)
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

/// [`Codes::pack_run`] over a slice, pair by pair.
#[inline(always)]
fn pack_run_slice<T: Copy>(
    v: &[T],
    start: usize,
    len: usize,
    code: impl Fn(T) -> i32,
    dst: &mut [u32],
) -> u32 {
    let Some(s) = start.checked_add(len).and_then(|end| v.get(start..end)) else {
        return u32::MAX;
    };
    let (pairs, _) = s.as_chunks::<2>();
    // Pairs of words (this row's word, then the other row's) while both
    // fit in `dst`; the rest of the run word by word.
    let full = pairs.len().min(dst.len() / 2);
    let (body, tail) = dst.split_at_mut(2 * full);
    let (words, _) = body.as_chunks_mut::<2>();
    let mut m = 0u32;
    for (p, d) in pairs.iter().zip(words) {
        let (lo, hi) = (code(p[0]), code(p[1]));
        m |= magnitude(lo) | magnitude(hi);
        d[0] = pack2(lo, hi);
    }
    m | pack_rest(s.get(2 * full..).unwrap_or_default(), code, tail)
}

/// Pack `s` two codes per word into `dst[0]`, `dst[2]`, ... (an odd count
/// ending with `(last, 0)`; words past `dst`'s end are not written) and
/// return the OR of the codes' magnitudes.
#[inline(always)]
fn pack_rest<T: Copy>(s: &[T], code: impl Fn(T) -> i32, dst: &mut [u32]) -> u32 {
    let mut m = 0u32;
    let mut words = dst.iter_mut().step_by(2);
    for p in s.chunks(2) {
        let lo = code(p[0]);
        let hi = p.get(1).map_or(0, |&c| code(c));
        m |= magnitude(lo) | magnitude(hi);
        if let Some(w) = words.next() {
            *w = pack2(lo, hi);
        }
    }
    m
}

/// [`Codes::pack_zip`] of `i8` codes four at a time from each run (as
/// [`pack_run_i8`]: byte-wise sign extension, magnitudes or-ed byte-wise
/// when `CHECK`).
#[inline(always)]
fn pack_zip_i8<const CHECK: bool>(
    v: &[i8],
    (a, b): (usize, usize),
    len: usize,
    dst: &mut [u32],
    step: usize,
) -> u32 {
    let run = |s: usize| s.checked_add(len).and_then(|e| v.get(s..e));
    let (Some(sa), Some(sb)) = (run(a), run(b)) else {
        return u32::MAX;
    };
    let step = step.max(1);
    let (qa, _) = sa.as_chunks::<4>();
    let (qb, _) = sb.as_chunks::<4>();
    // Whole quads while their four words fit in `dst`.
    let full = qa.len().min(dst.len().saturating_add(step - 1) / step / 4);
    let mut bytes = 0u32;
    for (i, (x, y)) in qa.iter().zip(qb).take(full).enumerate() {
        let (x, y) = (
            u32::from_le_bytes(x.map(|c| c as u8)),
            u32::from_le_bytes(y.map(|c| c as u8)),
        );
        if CHECK {
            bytes |= x ^ (((x >> 7) & 0x0101_0101) * 0xff);
            bytes |= y ^ (((y >> 7) & 0x0101_0101) * 0xff);
        }
        let base = 4 * i * step;
        for (j, sh) in [24u32, 16, 8, 0].into_iter().enumerate() {
            let (lo, hi) = ((x << sh) as i32 >> 24, (y << sh) as i32 >> 24);
            if let Some(d) = dst.get_mut(base + j * step) {
                *d = pack2(lo, hi);
            }
        }
    }
    let rest = 4 * full;
    let tail = dst.get_mut(rest * step..).unwrap_or_default();
    let (ra, rb) = (
        sa.get(rest..).unwrap_or_default(),
        sb.get(rest..).unwrap_or_default(),
    );
    let mut m = 0u32;
    for ((&x, &y), d) in ra.iter().zip(rb).zip(tail.iter_mut().step_by(step)) {
        let (lo, hi) = (i32::from(x), i32::from(y));
        m |= magnitude(lo) | magnitude(hi);
        *d = pack2(lo, hi);
    }
    if !CHECK {
        return 0;
    }
    m | ((bytes | bytes >> 8 | bytes >> 16 | bytes >> 24) & 0xff)
}

/// [`Codes::pack_zip`] over a slice.
#[inline(always)]
fn pack_zip_slice<T: Copy>(
    v: &[T],
    (a, b): (usize, usize),
    len: usize,
    code: impl Fn(T) -> i32,
    dst: &mut [u32],
    step: usize,
) -> u32 {
    let run = |s: usize| s.checked_add(len).and_then(|e| v.get(s..e));
    let (Some(sa), Some(sb)) = (run(a), run(b)) else {
        return u32::MAX;
    };
    let mut m = 0u32;
    for ((&x, &y), d) in sa.iter().zip(sb).zip(dst.iter_mut().step_by(step.max(1))) {
        let (lo, hi) = (code(x), code(y));
        m |= magnitude(lo) | magnitude(hi);
        *d = pack2(lo, hi);
    }
    m
}

/// [`Codes::pack_cols`] over a slice: rows `k`, `k + 1` of the two
/// columns read as one chunk of `2 stride` codes per word pair.
#[inline(always)]
fn pack_cols_slice<T: Copy>(
    v: &[T],
    start: usize,
    stride: usize,
    count: usize,
    code: impl Fn(T) -> i32,
    dst: &mut [u32],
) -> u32 {
    if count == 0 {
        return 0;
    }
    // The last code read is at `start + 1 + (count - 1) stride`.
    let end = count
        .checked_sub(1)
        .and_then(|c| c.checked_mul(stride))
        .and_then(|e| e.checked_add(start + 2));
    let Some(s) = end.and_then(|e| v.get(start..e.max(start))) else {
        return u32::MAX;
    };
    if stride < 2 {
        // Overlapping columns: the generic reading.
        return CodeFn(s, &code).pack_cols(0, stride, count, dst);
    }
    let full = (count / 2).min(dst.len() / 2);
    let (body, tail) = dst.split_at_mut(2 * full);
    let (words, _) = body.as_chunks_mut::<2>();
    let mut m = 0u32;
    for (c, d) in s.chunks(2 * stride).zip(words) {
        let (Some(p), Some(q)) = (
            c.first_chunk::<2>(),
            c.get(stride..).and_then(|c| c.first_chunk::<2>()),
        ) else {
            return u32::MAX;
        };
        let (p0, p1, q0, q1) = (code(p[0]), code(p[1]), code(q[0]), code(q[1]));
        m |= magnitude(p0) | magnitude(p1) | magnitude(q0) | magnitude(q1);
        d[0] = pack2(p0, q0);
        d[1] = pack2(p1, q1);
    }
    // The rest (an odd last row, or words beyond `dst`) code pair by pair.
    let rest = s.get(2 * full * stride..).unwrap_or_default();
    m | CodeFn(rest, &code).pack_cols(0, stride, count - 2 * full, tail)
}

/// A slice read through a code conversion (for the generic paths).
struct CodeFn<'a, T, F>(&'a [T], &'a F);

impl<T: Copy, F: Fn(T) -> i32> Codes for CodeFn<'_, T, F> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn bits(&self) -> u32 {
        16
    }
    #[inline(always)]
    fn at(&self, i: usize) -> i32 {
        self.0.get(i).map_or(i32::MIN, |&c| (self.1)(c))
    }
    #[inline(always)]
    fn pair(&self, i: usize) -> (i32, i32) {
        pair_of(self.0, i, self.1)
    }
}

/// The codes at `i` and `i + 1` of a slice; `(i32::MIN, i32::MIN)` past
/// the end.
#[inline(always)]
fn pair_of<T: Copy>(v: &[T], i: usize, code: impl Fn(T) -> i32) -> (i32, i32) {
    match v.get(i..).and_then(|s| s.first_chunk::<2>()) {
        Some(p) => (code(p[0]), code(p[1])),
        None => (i32::MIN, i32::MIN),
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
    #[inline(always)]
    fn pack_run(&self, start: usize, len: usize, dst: &mut [u32]) -> u32 {
        if self.bits >= 8 {
            pack_run_i8::<false>(self.v, start, len, dst)
        } else {
            pack_run_i8::<true>(self.v, start, len, dst)
        }
    }
    #[inline(always)]
    fn pair(&self, i: usize) -> (i32, i32) {
        pair_of(self.v, i, i32::from)
    }
    #[inline(always)]
    fn pack_cols(&self, start: usize, stride: usize, count: usize, dst: &mut [u32]) -> u32 {
        pack_cols_slice(self.v, start, stride, count, i32::from, dst)
    }
    #[inline(always)]
    fn pack_zip(&self, a: usize, b: usize, len: usize, dst: &mut [u32], step: usize) -> u32 {
        if self.bits >= 8 {
            pack_zip_i8::<false>(self.v, (a, b), len, dst, step)
        } else {
            pack_zip_i8::<true>(self.v, (a, b), len, dst, step)
        }
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
    #[inline(always)]
    fn pack_run(&self, start: usize, len: usize, dst: &mut [u32]) -> u32 {
        pack_run_slice(self.v, start, len, i32::from, dst)
    }
    #[inline(always)]
    fn pair(&self, i: usize) -> (i32, i32) {
        pair_of(self.v, i, i32::from)
    }
    #[inline(always)]
    fn pack_cols(&self, start: usize, stride: usize, count: usize, dst: &mut [u32]) -> u32 {
        pack_cols_slice(self.v, start, stride, count, i32::from, dst)
    }
    #[inline(always)]
    fn pack_zip(&self, a: usize, b: usize, len: usize, dst: &mut [u32], step: usize) -> u32 {
        pack_zip_slice(self.v, (a, b), len, i32::from, dst, step)
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
    #[inline(always)]
    fn pack_run(&self, start: usize, len: usize, dst: &mut [u32]) -> u32 {
        // A copy: the stores into `dst` cannot change it, so its factor
        // stays in a register.
        let conv = self.conv;
        pack_run_slice(self.v, start, len, move |x| conv.code(x), dst)
    }
    #[inline(always)]
    fn pair(&self, i: usize) -> (i32, i32) {
        let conv = self.conv;
        pair_of(self.v, i, move |x| conv.code(x))
    }
    #[inline(always)]
    fn pack_cols(&self, start: usize, stride: usize, count: usize, dst: &mut [u32]) -> u32 {
        let conv = self.conv;
        pack_cols_slice(self.v, start, stride, count, move |x| conv.code(x), dst)
    }
    #[inline(always)]
    fn pack_zip(&self, a: usize, b: usize, len: usize, dst: &mut [u32], step: usize) -> u32 {
        let conv = self.conv;
        pack_zip_slice(self.v, (a, b), len, move |x| conv.code(x), dst, step)
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
    fn pack_pair(
        &self,
        r: usize,
        rows: usize,
        (k0, k1): (usize, usize),
        used: usize,
        dst: &mut [u32],
    ) -> bool {
        let half = 1u32 << (self.bits().clamp(1, 16) - 1);
        let words = (k1 - k0).div_ceil(2);
        if self.ks == 1 {
            // Rows are runs of codes.
            let mut m = 0u32;
            for (row, lane) in [(r, 0), (r + 1, 1)] {
                let Some(d) = dst.get_mut(lane..) else {
                    return false;
                };
                if row < rows {
                    m |= self.c.pack_run(self.base + row * self.rs + k0, k1 - k0, d);
                } else {
                    d.iter_mut().step_by(2).take(words).for_each(|w| *w = 0);
                }
            }
            zero_tail(dst, words, used);
            return m < half;
        }
        if self.rs == 1 && r + 1 < rows {
            // Rows `r` and `r + 1` side by side in memory, `k` strided:
            // the codes at `k` and `k + 1` of both give one word of each.
            let start = self.base + r + k0 * self.ks;
            let m = self.c.pack_cols(start, self.ks, k1 - k0, dst);
            zero_tail(dst, words, used);
            return m < half;
        }
        pack_pair_by_rows(self, r, rows, (k0, k1), used, dst)
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
    // Even channels per group: whole words of channel pairs.
    if let Some(done) = super::im2col::conv2d_pairs(scratch, g, x, w, y) {
        return done;
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

//! The blocked matrix product behind every operation of the rayon backend.
//!
//! `C[m][n] = sum_k A[m][k] B[k][n]`. A is packed ([`Packed`]) in tiles of
//! `R` rows (4, 2 or 1: [`rows_per_tile`]); B is packed in panels of `N`
//! columns, or read in place when its rows are contiguous ([`Direct`]).
//! The reduction is cut into blocks of `kc` steps. The micro-kernel keeps
//! an `R x (P N)` tile of sums in registers (`R P = 4`, so 64 f32 sums) and,
//! for each `k` in ascending order, adds `a[r] * b[j]` to sum `(r, j)`:
//! vectorised across columns (independent outputs), never across `k`.
//!
//! So every output is one chain of additions in the order `k` ascending,
//! starting from `+0.0`, exactly as the reference loops (f32 path; a tile's
//! sums go back to the output between blocks and continue from there). On
//! the integer path the elements are integer codes held exactly in f32 or
//! f64 and every partial sum of a block is an exactly representable integer
//! (see `codes::Tier`), so each block's sum is exact and is added to the
//! `i64` output. Rust never fuses `a + b * c` into a fused multiply-add, so
//! the same operations run whatever the target.

use std::ops::{Add, Mul, Range};

use rayon::prelude::*;

use super::scratch::{Buf, Pooled};

/// Rows of the tallest A tile.
pub(super) const MR: usize = 4;
/// Columns of a B panel for `f32` elements (two AVX2 registers).
pub(super) const NR: usize = 16;
/// Columns of a B panel for `f64` elements.
pub(super) const NRD: usize = 8;
/// Reduction steps per block (before the tile of sums goes back to memory).
pub(super) const KC: usize = 256;
/// Products below which an operation runs on the calling thread.
pub(super) const PAR_MIN_MACS: u64 = 1 << 17;
/// Tasks per thread a product is split into (each task reads all of the
/// other operand, so more tasks cost memory traffic).
const TASKS: usize = 1;
/// Elements below which packing runs on the calling thread.
const PAR_MIN_PACK: usize = 1 << 14;

/// Which compiled copy of the kernels runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    /// Portable code (SSE2 on x86-64, NEON on aarch64).
    Generic,
    /// The same code compiled with AVX2 enabled; only produced by
    /// [`Isa::detect`] after the CPU reported AVX2.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    /// The best kernels this CPU runs.
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
        }
        Isa::Generic
    }
}

/// How one call runs: kernels, whether to split work across threads, and
/// how many threads the pool has.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ctx {
    pub isa: Isa,
    pub par: bool,
    pub threads: usize,
}

impl Ctx {
    /// The same call, on the calling thread only.
    pub(super) fn sequential(self) -> Self {
        Ctx { par: false, ..self }
    }
}

/// Element type of packed operands and of the sums in registers.
pub(super) trait Elem: Pooled + Sync + Add<Output = Self> + Mul<Output = Self> {
    const ZERO: Self;
    /// An operand value as is (f32 path).
    fn from_f32(v: f32) -> Self;
    /// An integer code (|code| <= 2^15, exact).
    fn from_code(c: i32) -> Self;
    /// An integral sum of magnitude below `2^51`, exactly.
    fn to_i64(self) -> i64;
    /// Operand values as elements without a copy, if `Self` is `f32`.
    fn raw(v: &[f32]) -> Option<&[Self]>;
}

/// `1.5 * 2^52`: added to an integer-valued f64 of magnitude below `2^51`,
/// it leaves that integer in the low bits of the result.
const MAGIC52: f64 = 6_755_399_441_055_744.0;

/// The integer an integral f64 of magnitude below `2^51` holds, with integer
/// and float operations that vectorise (a float-to-integer cast does not).
#[inline(always)]
fn int_of(v: f64) -> i64 {
    ((v + MAGIC52).to_bits() as i64).wrapping_sub(MAGIC52.to_bits() as i64)
}

impl Elem for f32 {
    const ZERO: f32 = 0.0;
    #[inline(always)]
    fn from_f32(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn from_code(c: i32) -> f32 {
        c as f32
    }
    #[inline(always)]
    fn to_i64(self) -> i64 {
        int_of(self as f64)
    }
    fn raw(v: &[f32]) -> Option<&[f32]> {
        Some(v)
    }
}

impl Elem for f64 {
    const ZERO: f64 = 0.0;
    #[inline(always)]
    fn from_f32(v: f32) -> f64 {
        v as f64
    }
    #[inline(always)]
    fn from_code(c: i32) -> f64 {
        c as f64
    }
    #[inline(always)]
    fn to_i64(self) -> i64 {
        int_of(self)
    }
    fn raw(_: &[f32]) -> Option<&[f64]> {
        None
    }
}

/// Element type of an output buffer fed by sums of `E`.
pub(super) trait Out<E>: Pooled + Sync {
    const ZERO: Self;
    /// Whether a tile's sums continue from the stored value (f32: a chain
    /// of additions cut into blocks) or start at zero and are added (exact
    /// integer blocks).
    const CARRY: bool;
    fn load(self) -> E;
    fn store(&mut self, first: bool, v: E);
}

impl Out<f32> for f32 {
    const ZERO: f32 = 0.0;
    const CARRY: bool = true;
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
    #[inline(always)]
    fn store(&mut self, _first: bool, v: f32) {
        *self = v;
    }
}

impl<E: Elem> Out<E> for i64 {
    const ZERO: i64 = 0;
    const CARRY: bool = false;
    #[inline(always)]
    fn load(self) -> E {
        E::ZERO
    }
    #[inline(always)]
    fn store(&mut self, first: bool, v: E) {
        let v = v.to_i64();
        *self = if first { v } else { self.wrapping_add(v) };
    }
}

/// One operand packed for the micro-kernel: `count` groups of `lanes` rows
/// (A) or columns (B), laid out `[k block][group][k][lane]`, zero beyond the
/// operand's size.
pub(super) struct Packed<E: Elem> {
    data: Buf<E>,
    lanes: usize,
    count: usize,
    k: usize,
    kc: usize,
}

impl<E: Elem> Packed<E> {
    /// Packs a `k x len` operand whose element `(k, i)` is
    /// `load(src[koff[k] + ioff[i]])` (`k = koff.len()`, `len = ioff.len()`).
    /// The caller guarantees every such index is inside `src`.
    pub(super) fn new<S: Copy + Sync>(
        par: bool,
        kc: usize,
        lanes: usize,
        (src, koff, ioff): (&[S], &[usize], &[usize]),
        load: impl Fn(S) -> E + Sync,
    ) -> Self {
        let (k, len) = (koff.len(), ioff.len());
        let kc = kc.max(1);
        let count = len.div_ceil(lanes);
        // Every element is written below (padding lanes with zero), so the
        // buffer need not be cleared first.
        let mut data = Buf::with_len(k * count * lanes, E::ZERO);
        let par = par && data.len() >= PAR_MIN_PACK;
        // Consecutive reduction steps at consecutive offsets: read each
        // lane's run in order (the transposing packs of row-major operands).
        let runs = koff.windows(2).all(|w| w[1] == w[0] + 1);
        let fill_group = |k0: usize, kl: usize, t: usize, group: &mut [E]| {
            let i0 = t * lanes;
            let offs = &ioff[i0..len.min(i0 + lanes)];
            let used = offs.len();
            if runs {
                for (l, &o) in offs.iter().enumerate() {
                    let run = &src[koff[k0] + o..koff[k0] + o + kl];
                    for (d, &v) in group[l..].iter_mut().step_by(lanes).zip(run) {
                        *d = load(v);
                    }
                }
                for row in group.chunks_exact_mut(lanes) {
                    row[used..].fill(E::ZERO);
                }
            } else {
                // One bounds check per row: offsets are clamped to the span
                // they are known to lie in.
                let span = offs.iter().max().map_or(0, |&m| m + 1);
                for (row, &base) in group.chunks_exact_mut(lanes).zip(&koff[k0..k0 + kl]) {
                    let (row, pad) = row.split_at_mut(used);
                    if let Some(last) = span.checked_sub(1) {
                        let src = &src[base..base + span];
                        for (d, &o) in row.iter_mut().zip(offs) {
                            *d = load(src[o.min(last)]);
                        }
                    }
                    pad.fill(E::ZERO);
                }
            }
        };
        let block = kc * count * lanes;
        if block > 0 {
            let fill_block = |kb: usize, chunk: &mut [E]| {
                let kl = chunk.len() / (count * lanes);
                let k0 = kb * kc;
                if par {
                    chunk
                        .par_chunks_mut(kl * lanes)
                        .enumerate()
                        .for_each(|(t, g)| fill_group(k0, kl, t, g));
                } else {
                    for (t, g) in chunk.chunks_mut(kl * lanes).enumerate() {
                        fill_group(k0, kl, t, g);
                    }
                }
            };
            if par {
                data.par_chunks_mut(block)
                    .enumerate()
                    .for_each(|(kb, c)| fill_block(kb, c));
            } else {
                for (kb, c) in data.chunks_mut(block).enumerate() {
                    fill_block(kb, c);
                }
            }
        }
        Packed {
            data,
            lanes,
            count,
            k,
            kc,
        }
    }

    /// Group `idx` of block `kb`.
    #[inline(always)]
    fn block(&self, kb: usize, idx: usize) -> &[E] {
        let k0 = kb * self.kc;
        let kl = self.kc.min(self.k - k0);
        let start = k0 * self.count * self.lanes + idx * kl * self.lanes;
        &self.data[start..start + kl * self.lanes]
    }
}

/// Rows of an A tile for a product with `m` rows: 4, or 2 or 1 when that
/// pads fewer rows (a tile is always 4 rows by 1 panel, 2 by 2 or 1 by 4;
/// the narrower shapes load more per product, hence the weights).
pub(super) fn rows_per_tile(m: usize) -> usize {
    [(4, 100), (2, 105), (1, 112)]
        .into_iter()
        .min_by_key(|&(r, w)| m.next_multiple_of(r) * w)
        .map_or(MR, |(r, _)| r)
}

/// The B operand of a product: packed panels, or rows read in place.
pub(super) trait BOperand<E: Elem, const N: usize>: Sync {
    /// `acc[r][q][j] += a[k][r] * B[k][(p + q) N + j]` over the steps `k`
    /// of block `kb`, ascending.
    fn micro<const R: usize, const P: usize>(
        &self,
        a: &[E],
        kb: usize,
        kc: usize,
        p: usize,
        acc: &mut [[[E; N]; P]; R],
    );
}

impl<E: Elem, const N: usize> BOperand<E, N> for Packed<E> {
    #[inline(always)]
    fn micro<const R: usize, const P: usize>(
        &self,
        a: &[E],
        kb: usize,
        _kc: usize,
        p: usize,
        acc: &mut [[[E; N]; P]; R],
    ) {
        // Panels past the last one repeat it (their sums are dropped).
        let last = self.count.saturating_sub(1);
        let (a, _) = a.as_chunks::<R>();
        let len = a.len();
        let bs: [&[[E; N]]; P] = std::array::from_fn(|q| {
            let (b, _) = self.block(kb, (p + q).min(last)).as_chunks::<N>();
            &b[..len]
        });
        let mut c = *acc;
        for (kk, ak) in a.iter().enumerate() {
            let bk: [&[E; N]; P] = std::array::from_fn(|q| &bs[q][kk]);
            for r in 0..R {
                for q in 0..P {
                    for j in 0..N {
                        c[r][q][j] = c[r][q][j] + ak[r] * bk[q][j];
                    }
                }
            }
        }
        *acc = c;
    }
}

/// A B operand whose columns are contiguous: element `(k, c)` is
/// `src[koff[k] + c]`. Columns past the end of `src` read zero; columns past
/// the product's width may read anything (their sums are dropped).
pub(super) struct Direct<'a, E> {
    pub src: &'a [E],
    pub koff: &'a [usize],
}

impl<E: Elem, const N: usize> BOperand<E, N> for Direct<'_, E> {
    #[inline(always)]
    fn micro<const R: usize, const P: usize>(
        &self,
        a: &[E],
        kb: usize,
        kc: usize,
        p: usize,
        acc: &mut [[[E; N]; P]; R],
    ) {
        let k0 = kb * kc;
        let (a, _) = a.as_chunks::<R>();
        let koff = &self.koff[k0..k0 + a.len()];
        let mut c = *acc;
        for (ak, &o) in a.iter().zip(koff) {
            let start = o + p * N;
            let tail;
            let run = self
                .src
                .get(start..start + P * N)
                .and_then(|r| r.as_chunks::<N>().0.first_chunk::<P>());
            let bk: &[[E; N]; P] = match run {
                Some(b) => b,
                None => {
                    let mut t = [[E::ZERO; N]; P];
                    let rest = self.src.get(start..).unwrap_or(&[]);
                    for (d, &v) in t.as_flattened_mut().iter_mut().zip(rest) {
                        *d = v;
                    }
                    tail = t;
                    &tail
                }
            };
            for r in 0..R {
                for q in 0..P {
                    for j in 0..N {
                        c[r][q][j] = c[r][q][j] + ak[r] * bk[q][j];
                    }
                }
            }
        }
        *acc = c;
    }
}

/// Where a tile of sums goes: rows `r0..` and columns `c0..` of C are
/// `out[(r - r0) * ld + (c - c0)]`.
pub(super) struct Dst<'a, T> {
    pub out: &'a mut [T],
    pub ld: usize,
    pub r0: usize,
    pub c0: usize,
}

/// One micro-kernel call, compiled for the CPU's kernels. Not inlined:
/// the sums are stored through `acc`, which keeps the vectoriser's view of
/// the kernel the same whatever the caller does with them.
#[inline(never)]
fn micro_generic<E: Elem, B: BOperand<E, N>, const R: usize, const P: usize, const N: usize>(
    b: &B,
    a: &[E],
    (kb, kc, p): (usize, usize, usize),
    acc: &mut [[[E; N]; P]; R],
) {
    b.micro::<R, P>(a, kb, kc, p, acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline(never)]
fn micro_avx2<E: Elem, B: BOperand<E, N>, const R: usize, const P: usize, const N: usize>(
    b: &B,
    a: &[E],
    (kb, kc, p): (usize, usize, usize),
    acc: &mut [[[E; N]; P]; R],
) {
    b.micro::<R, P>(a, kb, kc, p, acc);
}

#[inline(always)]
fn micro_isa<E: Elem, B: BOperand<E, N>, const R: usize, const P: usize, const N: usize>(
    isa: Isa,
    b: &B,
    a: &[E],
    at: (usize, usize, usize),
    acc: &mut [[[E; N]; P]; R],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only produced by `Isa::detect`, after
        // `is_x86_feature_detected!("avx2")` reported that this CPU has AVX2.
        Isa::Avx2 => unsafe { micro_avx2::<E, B, R, P, N>(b, a, at, acc) },
        Isa::Generic => micro_generic::<E, B, R, P, N>(b, a, at, acc),
    }
}

/// The tiles `tiles` (of `R` rows) by the panels `panels` (stepping by `P`,
/// the last group cut at `panels.end`), block by block, on this thread.
#[allow(clippy::too_many_arguments)]
fn compute<
    E: Elem,
    T: Out<E>,
    B: BOperand<E, N>,
    const R: usize,
    const P: usize,
    const N: usize,
>(
    isa: Isa,
    a: &Packed<E>,
    b: &B,
    tiles: Range<usize>,
    panels: Range<usize>,
    (m, n, fresh): (usize, usize, bool),
    dst: &mut Dst<'_, T>,
) {
    let blocks = a.k.div_ceil(a.kc.max(1));
    let n_end = n.min(panels.end * N);
    for kb in 0..blocks {
        let first = fresh && kb == 0;
        for p in panels.clone().step_by(P) {
            let c = p * N;
            let nc = (P * N).min(n_end - c);
            for t in tiles.clone() {
                let ab = a.block(kb, t);
                let r = t * R;
                let nr = R.min(m - r);
                let mut acc = [[[E::ZERO; N]; P]; R];
                if T::CARRY && !first {
                    for (i, accr) in acc.iter_mut().enumerate().take(nr) {
                        let start = (r + i - dst.r0) * dst.ld + c - dst.c0;
                        let accr = accr.as_flattened_mut();
                        for (s, v) in accr.iter_mut().zip(&dst.out[start..start + nc]) {
                            *s = v.load();
                        }
                    }
                }
                micro_isa::<E, B, R, P, N>(isa, b, ab, (kb, a.kc, p), &mut acc);
                for (i, accr) in acc.iter().enumerate().take(nr) {
                    let start = (r + i - dst.r0) * dst.ld + c - dst.c0;
                    let accr = accr.as_flattened();
                    for (v, &s) in dst.out[start..start + nc].iter_mut().zip(accr) {
                        v.store(first, s);
                    }
                }
            }
        }
    }
}

/// `C = A B` for an `m x n` product whose row `r` is `out[r * ld..][..n]`;
/// `fresh`: the sums start at zero, else they continue from (f32) or add to
/// (integers) what `out` holds. A's tile height (`rows_per_tile`) picks the
/// tile shape. Split across threads by row tiles, or by row tiles and column
/// panels when there are few rows; each output is computed by one thread.
pub(super) fn gemm<E: Elem, T: Out<E>, B: BOperand<E, N>, const N: usize>(
    ctx: Ctx,
    a: &Packed<E>,
    b: &B,
    mn: (usize, usize, bool),
    out: &mut [T],
    ld: usize,
) {
    match a.lanes {
        1 => gemm_shaped::<E, T, B, 1, 4, N>(ctx, a, b, mn, out, ld),
        2 => gemm_shaped::<E, T, B, 2, 2, N>(ctx, a, b, mn, out, ld),
        _ => gemm_shaped::<E, T, B, MR, 1, N>(ctx, a, b, mn, out, ld),
    }
}

fn gemm_shaped<
    E: Elem,
    T: Out<E>,
    B: BOperand<E, N>,
    const R: usize,
    const P: usize,
    const N: usize,
>(
    ctx: Ctx,
    a: &Packed<E>,
    b: &B,
    (m, n, fresh): (usize, usize, bool),
    out: &mut [T],
    ld: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if a.k == 0 {
        if fresh {
            for r in 0..m {
                out[r * ld..r * ld + n].fill(T::ZERO);
            }
        }
        return;
    }
    let mn = (m, n, fresh);
    let tiles = m.div_ceil(R);
    let panels = n.div_ceil(N);
    let groups = panels.div_ceil(P);
    let th = ctx.threads.max(1);
    if !ctx.par || tiles * groups < 2 {
        let mut dst = Dst {
            out,
            ld,
            r0: 0,
            c0: 0,
        };
        compute::<E, T, B, R, P, N>(ctx.isa, a, b, 0..tiles, 0..panels, mn, &mut dst);
    } else if tiles >= 2 * th {
        let per = tiles.div_ceil(TASKS * th).max(1);
        out.par_chunks_mut(per * R * ld)
            .enumerate()
            .for_each(|(i, rows)| {
                let t0 = i * per;
                let mut dst = Dst {
                    out: rows,
                    ld,
                    r0: t0 * R,
                    c0: 0,
                };
                let t1 = tiles.min(t0 + per);
                compute::<E, T, B, R, P, N>(ctx.isa, a, b, t0..t1, 0..panels, mn, &mut dst);
            });
    } else {
        // Few row tiles: each task takes one tile and a run of panels and
        // works in its own buffer, copied into `out` afterwards.
        let want = (TASKS * th).div_ceil(tiles);
        let per = groups.div_ceil(want).max(1) * P;
        let jobs: Vec<(usize, Range<usize>)> = (0..tiles)
            .flat_map(|t| {
                (0..panels)
                    .step_by(per)
                    .map(move |p| (t, p..panels.min(p + per)))
            })
            .collect();
        let parts: Vec<Buf<T>> = jobs
            .par_iter()
            .map(|(t, ps)| {
                let (r, c) = (t * R, ps.start * N);
                let (nr, nc) = (R.min(m - r), (ps.end * N).min(n) - c);
                let mut buf = Buf::filled(nr * nc, T::ZERO);
                if !fresh {
                    for (i, row) in buf.chunks_exact_mut(nc).enumerate() {
                        let start = (r + i) * ld + c;
                        row.copy_from_slice(&out[start..start + nc]);
                    }
                }
                let mut dst = Dst {
                    out: &mut buf,
                    ld: nc,
                    r0: r,
                    c0: c,
                };
                compute::<E, T, B, R, P, N>(ctx.isa, a, b, *t..t + 1, ps.clone(), mn, &mut dst);
                buf
            })
            .collect();
        for ((t, ps), buf) in jobs.iter().zip(&parts) {
            let (r, c) = (t * R, ps.start * N);
            let nc = (ps.end * N).min(n) - c;
            for (i, row) in buf.chunks_exact(nc).enumerate() {
                let start = (r + i) * ld + c;
                out[start..start + nc].copy_from_slice(row);
            }
        }
    }
}

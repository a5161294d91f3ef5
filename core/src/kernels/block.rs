//! The inner block: a 2 x 2 tile of dot products of packed codes.
//!
//! This file holds the crate's only `unsafe` code: the `asm!` loop of the
//! DSP build.
#![allow(unsafe_code)]

/// The 2 x 2 block of dot products of two row pairs, added to `acc` with the
/// 32-bit wrapping arithmetic of `SMLAD`.
///
/// `a` and `b` each hold two rows of `words` packed words, interleaved (word
/// `w` of row `r` at index `2 w + r`; see the [module](super) layout).
/// Returns `[c00, c01, c10, c11]`, `cij = acc[2 i + j] + sum over k of
/// a_i[k] * b_j[k]`, each sum wrapped to 32 bits as `SMLAD` does (the caller
/// keeps it from wrapping, [`chunk_words`](super::chunk_words)).
///
/// On `thumbv7em` targets this is an `LDRD`/`SMLAD` loop when `words` is
/// even and non-zero and both slices hold `2 * words` words; otherwise, and
/// on every other target, it is [`block2x2_portable`]. Both give the same
/// result.
#[inline]
pub fn block2x2(a: &[u32], b: &[u32], words: usize, acc: [i32; 4]) -> [i32; 4] {
    #[cfg(fixnn_dsp)]
    {
        if words != 0 && words.is_multiple_of(2) && words <= a.len() / 2 && words <= b.len() / 2 {
            return dsp::block2x2(a, b, words, acc);
        }
    }
    block2x2_portable(a, b, words, acc)
}

/// `SMLAD`: `acc + lo(x) lo(y) + hi(x) hi(y)`, wrapped to 32 bits.
#[inline(always)]
fn smlad(x: u32, y: u32, acc: i32) -> i32 {
    let p = i64::from(x as u16 as i16) * i64::from(y as u16 as i16)
        + i64::from((x >> 16) as u16 as i16) * i64::from((y >> 16) as u16 as i16);
    (i64::from(acc) + p) as i32
}

/// Portable [`block2x2`]: plain Rust with `SMLAD`'s semantics, on every
/// target. Reads `min(words, a.len() / 2, b.len() / 2)` words of each row.
pub fn block2x2_portable(a: &[u32], b: &[u32], words: usize, acc: [i32; 4]) -> [i32; 4] {
    let [mut c00, mut c01, mut c10, mut c11] = acc;
    for (pa, pb) in a.chunks_exact(2).zip(b.chunks_exact(2)).take(words) {
        let (a0, a1, b0, b1) = (pa[0], pa[1], pb[0], pb[1]);
        c00 = smlad(a0, b0, c00);
        c01 = smlad(a0, b1, c01);
        c10 = smlad(a1, b0, c10);
        c11 = smlad(a1, b1, c11);
    }
    [c00, c01, c10, c11]
}

/// One row pair of `A` against consecutive row pairs of `B`: for each pair
/// `q < out.len() / 4`, `out[4 q..4 q + 4] = block2x2(a, b pair q, words,
/// [0; 4])`, where `b` holds the pairs back to back (`2 words` words each).
///
/// On `thumbv7em` targets one `asm!` loop runs every pair (when `words` is
/// even and non-zero and the slices are long enough); otherwise
/// [`block2x2`] per pair. Same results either way.
#[inline]
pub fn row_pair(a: &[u32], b: &[u32], words: usize, out: &mut [i32]) {
    let pairs = out.len() / 4;
    #[cfg(fixnn_dsp)]
    {
        if pairs != 0
            && words != 0
            && words.is_multiple_of(2)
            && words <= a.len() / 2
            && pairs <= b.len() / (2 * words)
        {
            if words.is_multiple_of(4) {
                dsp::row_pair4(a, b, words, pairs, out);
            } else {
                dsp::row_pair(a, b, words, pairs, out);
            }
            return;
        }
    }
    for (q, o) in out.chunks_exact_mut(4).enumerate().take(pairs) {
        let r = match b.get(2 * q * words..2 * (q + 1) * words) {
            Some(bq) => block2x2(a, bq, words, [0; 4]),
            None => [0; 4],
        };
        o.copy_from_slice(&r);
    }
}

#[cfg(fixnn_dsp)]
mod dsp {
    /// [`super::row_pair`] in one loop: 10 instructions per pair of `B`
    /// around the 2 x 2 block's inner loop.
    ///
    /// Caller: `words` even and non-zero, `a.len() >= 2 words`,
    /// `b.len() >= 2 words pairs`, `out.len() >= 4 pairs`, `pairs > 0`.
    #[inline]
    pub(super) fn row_pair(a: &[u32], b: &[u32], words: usize, pairs: usize, out: &mut [i32]) {
        let bytes = 8 * words;
        // SAFETY: reads 2 words u32 of `a` per pair (rewound by `bytes`
        // after each) and the `pairs` consecutive pairs of `b`, 2 words
        // words each: all within the slices (checked by the caller); LDRD
        // needs word alignment, which u32 slices have. Writes 4 i32 per
        // pair to `out` (within it). Pushes one word (`bytes`) at the start
        // and pops it at the end; calls nothing.
        unsafe {
            let pa = a.as_ptr();
            let aend = pa.add(2 * words);
            let pb = b.as_ptr();
            let pbend = pb.add(2 * words * pairs);
            core::arch::asm!(
                "push {{{t0}}}",
                "3:",
                "movs {c00}, #0",
                "movs {c01}, #0",
                "movs {c10}, #0",
                "movs {c11}, #0",
                "2:",
                "ldrd {t0}, {t1}, [{pa}], #8",
                "ldrd {b0}, {b1}, [{pb}], #8",
                "smlad {c00}, {t0}, {b0}, {c00}",
                "smlad {c01}, {t0}, {b1}, {c01}",
                "smlad {c10}, {t1}, {b0}, {c10}",
                "smlad {c11}, {t1}, {b1}, {c11}",
                "ldrd {t0}, {t1}, [{pa}], #8",
                "ldrd {b0}, {b1}, [{pb}], #8",
                "smlad {c00}, {t0}, {b0}, {c00}",
                "smlad {c01}, {t0}, {b1}, {c01}",
                "smlad {c10}, {t1}, {b0}, {c10}",
                "smlad {c11}, {t1}, {b1}, {c11}",
                "cmp {pa}, {aend}",
                "bne 2b",
                "strd {c00}, {c01}, [{out}], #8",
                "strd {c10}, {c11}, [{out}], #8",
                "ldr {t0}, [sp]",
                "subs {pa}, {pa}, {t0}",
                "cmp {pb}, {pbend}",
                "bne 3b",
                "pop {{{t0}}}",
                pa = inout(reg) pa => _,
                aend = in(reg) aend,
                pb = inout(reg) pb => _,
                pbend = in(reg) pbend,
                out = inout(reg) out.as_mut_ptr() => _,
                t0 = inout(reg) bytes => _,
                t1 = out(reg) _,
                b0 = out(reg) _,
                b1 = out(reg) _,
                c00 = out(reg) _,
                c01 = out(reg) _,
                c10 = out(reg) _,
                c11 = out(reg) _,
            );
        }
    }

    /// [`row_pair`] with four words per row per iteration (`words` a
    /// multiple of 4): 8 `LDRD`, 16 `SMLAD`, `CMP`, `BNE` for 32
    /// multiply-accumulates (0.81 instructions per MAC, against 0.875).
    ///
    /// Caller: as [`row_pair`], and `words` a multiple of 4.
    #[inline]
    pub(super) fn row_pair4(a: &[u32], b: &[u32], words: usize, pairs: usize, out: &mut [i32]) {
        let bytes = 8 * words;
        // SAFETY: as `row_pair`: reads 2 words u32 of `a` per pair (rewound
        // by `bytes` after each) and the `pairs` consecutive pairs of `b`,
        // 2 words words each, four words of each row per iteration (words
        // is a multiple of 4, so the loop ends exactly at `aend`): all
        // within the slices (checked by the caller); LDRD needs word
        // alignment, which u32 slices have. Writes 4 i32 per pair to `out`
        // (within it). Pushes one word (`bytes`) at the start and pops it
        // at the end; calls nothing.
        unsafe {
            let pa = a.as_ptr();
            let aend = pa.add(2 * words);
            let pb = b.as_ptr();
            let pbend = pb.add(2 * words * pairs);
            core::arch::asm!(
                "push {{{t0}}}",
                "3:",
                "movs {c00}, #0",
                "movs {c01}, #0",
                "movs {c10}, #0",
                "movs {c11}, #0",
                "2:",
                "ldrd {t0}, {t1}, [{pa}], #8",
                "ldrd {b0}, {b1}, [{pb}], #8",
                "smlad {c00}, {t0}, {b0}, {c00}",
                "smlad {c01}, {t0}, {b1}, {c01}",
                "smlad {c10}, {t1}, {b0}, {c10}",
                "smlad {c11}, {t1}, {b1}, {c11}",
                "ldrd {t0}, {t1}, [{pa}], #8",
                "ldrd {b0}, {b1}, [{pb}], #8",
                "smlad {c00}, {t0}, {b0}, {c00}",
                "smlad {c01}, {t0}, {b1}, {c01}",
                "smlad {c10}, {t1}, {b0}, {c10}",
                "smlad {c11}, {t1}, {b1}, {c11}",
                "ldrd {t0}, {t1}, [{pa}], #8",
                "ldrd {b0}, {b1}, [{pb}], #8",
                "smlad {c00}, {t0}, {b0}, {c00}",
                "smlad {c01}, {t0}, {b1}, {c01}",
                "smlad {c10}, {t1}, {b0}, {c10}",
                "smlad {c11}, {t1}, {b1}, {c11}",
                "ldrd {t0}, {t1}, [{pa}], #8",
                "ldrd {b0}, {b1}, [{pb}], #8",
                "smlad {c00}, {t0}, {b0}, {c00}",
                "smlad {c01}, {t0}, {b1}, {c01}",
                "smlad {c10}, {t1}, {b0}, {c10}",
                "smlad {c11}, {t1}, {b1}, {c11}",
                "cmp {pa}, {aend}",
                "bne 2b",
                "strd {c00}, {c01}, [{out}], #8",
                "strd {c10}, {c11}, [{out}], #8",
                "ldr {t0}, [sp]",
                "subs {pa}, {pa}, {t0}",
                "cmp {pb}, {pbend}",
                "bne 3b",
                "pop {{{t0}}}",
                pa = inout(reg) pa => _,
                aend = in(reg) aend,
                pb = inout(reg) pb => _,
                pbend = in(reg) pbend,
                out = inout(reg) out.as_mut_ptr() => _,
                t0 = inout(reg) bytes => _,
                t1 = out(reg) _,
                b0 = out(reg) _,
                b1 = out(reg) _,
                c00 = out(reg) _,
                c01 = out(reg) _,
                c10 = out(reg) _,
                c11 = out(reg) _,
            );
        }
    }

    /// `LDRD`/`SMLAD` loop, two words per row per iteration: 4 `LDRD`,
    /// 8 `SMLAD`, `CMP`, `BNE` for 16 multiply-accumulates.
    ///
    /// Caller: `words` even and non-zero, `a.len() >= 2 words`,
    /// `b.len() >= 2 words`.
    #[inline]
    pub(super) fn block2x2(a: &[u32], b: &[u32], words: usize, acc: [i32; 4]) -> [i32; 4] {
        let [mut c00, mut c01, mut c10, mut c11] = acc;
        let pa = a.as_ptr();
        let pb = b.as_ptr();
        // SAFETY: the loop reads 2 * words u32 from `pa` and from `pb`
        // (words even, non-zero, within both slices: checked by the caller,
        // `block2x2` above), word-aligned as LDRD needs, and stops when `pa`
        // reaches `end` exactly (it advances 16 bytes per iteration and
        // `end - pa = 8 words` bytes with `words` even). It writes only the
        // registers it names, touches no stack and no memory.
        unsafe {
            let end = pa.add(2 * words);
            core::arch::asm!(
                "2:",
                "ldrd {a0}, {a1}, [{pa}], #8",
                "ldrd {b0}, {b1}, [{pb}], #8",
                "smlad {c00}, {a0}, {b0}, {c00}",
                "smlad {c01}, {a0}, {b1}, {c01}",
                "smlad {c10}, {a1}, {b0}, {c10}",
                "smlad {c11}, {a1}, {b1}, {c11}",
                "ldrd {a0}, {a1}, [{pa}], #8",
                "ldrd {b0}, {b1}, [{pb}], #8",
                "smlad {c00}, {a0}, {b0}, {c00}",
                "smlad {c01}, {a0}, {b1}, {c01}",
                "smlad {c10}, {a1}, {b0}, {c10}",
                "smlad {c11}, {a1}, {b1}, {c11}",
                "cmp {pa}, {end}",
                "bne 2b",
                pa = inout(reg) pa => _,
                pb = inout(reg) pb => _,
                end = in(reg) end,
                a0 = out(reg) _,
                a1 = out(reg) _,
                b0 = out(reg) _,
                b1 = out(reg) _,
                c00 = inout(reg) c00,
                c01 = inout(reg) c01,
                c10 = inout(reg) c10,
                c11 = inout(reg) c11,
                options(nostack, readonly),
            );
        }
        [c00, c01, c10, c11]
    }
}

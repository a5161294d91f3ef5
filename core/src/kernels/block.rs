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

#[cfg(fixnn_dsp)]
mod dsp {
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

//! The forward convolution lowered with input channels in pairs, for
//! layers whose channels per group are even.
//!
//! The product sums over `k = (ci, ky, kx)`; any order of `k` gives the same
//! exact sums, as long as both operands use it. This lowering takes `k` in
//! the order `(ky, kx, ci)`, so that the two codes of a packed word are two
//! channels of one tap:
//!
//! 1. The input of one batch item and group is packed once into words of
//!    channel pairs in pixel order ("HWC": word `(iy * wp + ix) * cpg / 2
//!    + cp` holds channels `2 cp` and `2 cp + 1` of pixel `(iy, ix)`),
//!    each code read once, with the convolution's zero padding around it
//!    (rows of `wp = w + 2 pad_w` pixels, `h + 2 pad_h` rows).
//! 2. A row of the im2col tile (an output pixel) is then a copy of whole
//!    words: for each kernel row `ky`, the `kw` taps (dilation 1) are `kw *
//!    cpg / 2` consecutive words of the padded input. Two output pixels
//!    are copied together into their interleaved rows.
//! 3. The weights are packed in the same `k` order, and the tiles
//!    multiplied with [`gemm_packed`](super::gemm_packed)'s kernel, the
//!    sums stored into the outputs.
//!
//! The generic lowering ([`super::ops::conv2d`]) packs the im2col tile code
//! by code; both give the reference sums.
//!
//! On `thumbv7em` targets the word copy into interleaved rows is an `asm!`
//! loop (`LDRD`/`STRD`), the only `unsafe` code of this file; elsewhere it
//! is plain Rust with the same result.
#![allow(unsafe_code)]

use super::gemm::{chunk_words, packed};
use super::ops::Codes;
use crate::backend::ConvGeom;

/// Where the channel-pair lowering puts its tiles in the scratch.
struct Layout {
    /// Words of products summed in `i32` before they are moved to `i64`.
    chunk: usize,
    /// Words per pixel: channel pairs per group.
    cpw: usize,
    /// Words per tile row (taps times `cpw`, rounded up to even).
    words: usize,
    /// Words of the weight tile, the im2col tile and the padded input.
    ta_len: usize,
    tb_len: usize,
    x2_len: usize,
}

impl Layout {
    /// The layout for `g` with codes of `x_bits` and `w_bits` bits; `None`
    /// when the lowering does not apply: odd or zero channels per group,
    /// dilation along the width, codes too wide for 32-bit chunks, sizes
    /// that overflow (and every product the lowering forms fits `usize`).
    #[inline(always)]
    fn of(g: ConvGeom, x_bits: u32, w_bits: u32) -> Option<Layout> {
        let (cpg, opg) = (g.cpg(), g.opg());
        if cpg == 0 || !cpg.is_multiple_of(2) || g.dil.1 != 1 {
            return None;
        }
        let chunk = chunk_words(w_bits, x_bits);
        if chunk == 0 {
            return None;
        }
        let cpw = cpg / 2;
        let tap_words = g.kh.checked_mul(g.kw)?.checked_mul(cpw)?;
        // Rows of an even number of words (the kernel takes two at a time).
        let words = tap_words.checked_next_multiple_of(2)?;
        g.h.checked_mul(g.w)?;
        let ohw = g.oh.checked_mul(g.ow)?;
        let (mp, np) = (
            opg.checked_next_multiple_of(2)?,
            ohw.checked_next_multiple_of(2)?,
        );
        let ta_len = mp.checked_mul(words)?;
        let tb_len = np.checked_mul(words)?;
        // The padded input (dilation 1 in width: contiguous taps).
        let hp = g.h.checked_add(g.pad.0.checked_mul(2)?)?;
        let wp = g.w.checked_add(g.pad.1.checked_mul(2)?)?;
        let x2_len = hp.checked_mul(wp)?.checked_mul(cpw)?;
        ta_len.checked_add(tb_len)?.checked_add(x2_len)?;
        Some(Layout {
            chunk,
            cpw,
            words,
            ta_len,
            tb_len,
            x2_len,
        })
    }
}

/// The scratch, in 32-bit words, that [`DspBackend`](super::DspBackend)
/// needs to run the forward convolution `g` with input channels in pairs
/// (the faster lowering; on a Cortex-M4, 1.15 instructions per
/// multiply-accumulate in the repository's benchmark), for input codes of
/// `x_bits` and weight codes of `w_bits` bits (formats of 2 to 16 bits).
/// `None` when `g` cannot take that lowering: an odd number of input
/// channels per group (or none), dilation along the width, codes too wide
/// for the 32-bit chunks (`x_bits + w_bits > 30`), or sizes that overflow
/// `usize`. With less scratch than this, or `None`, the backend packs the
/// convolution code by code instead: the same results, more instructions
/// (a firmware can size its scratch with this, or check in a test that a
/// layer takes the faster path).
///
/// ```
/// use fixnn::backend::ConvGeom;
/// use fixnn::kernels::conv2d_pairs_scratch;
///
/// // LeNet's second convolution: 6 -> 16 channels, 5 x 5, on 12 x 12.
/// let g = ConvGeom {
///     batch: 1, cin: 6, h: 12, w: 12, cout: 16, kh: 5, kw: 5, oh: 8, ow: 8,
///     stride: (1, 1), pad: (0, 0), dil: (1, 1), groups: 1,
/// };
/// // 16 rows of 5 x 5 x 3 words (76 with padding), 64 of them, and the
/// // 12 x 12 pixels of three channel pairs.
/// assert_eq!(conv2d_pairs_scratch(g, 8, 8), Some(16 * 76 + 64 * 76 + 144 * 3));
/// // An odd number of input channels: packed code by code.
/// assert_eq!(conv2d_pairs_scratch(ConvGeom { cin: 3, ..g }, 8, 8), None);
/// // Dilation along the width: code by code too.
/// let dilated = ConvGeom { dil: (1, 2), ow: 4, ..g };
/// assert_eq!(conv2d_pairs_scratch(dilated, 8, 8), None);
/// // Codes too wide for 32-bit chunks.
/// assert_eq!(conv2d_pairs_scratch(g, 16, 16), None);
/// ```
pub fn conv2d_pairs_scratch(g: ConvGeom, x_bits: u8, w_bits: u8) -> Option<usize> {
    let l = Layout::of(g, u32::from(x_bits), u32::from(w_bits))?;
    l.ta_len.checked_add(l.tb_len)?.checked_add(l.x2_len)
}

/// The forward convolution of [`super::ops::conv2d`] with channel pairs:
/// `None` when it does not apply (odd or zero channels per group, formats
/// too wide for 32-bit chunks, `scratch` too small for both tiles and the
/// packed input in one piece, sizes that overflow); else `Some(true)` with
/// every output written, or `Some(false)` (output partly written) for a
/// code outside its width. The caller has checked the lengths.
pub(crate) fn conv2d_pairs(
    scratch: &mut [u32],
    g: ConvGeom,
    x: &impl Codes,
    w: &impl Codes,
    y: &mut [i64],
) -> Option<bool> {
    let l = Layout::of(g, x.bits(), w.bits())?;
    let (chunk, cpw, words) = (l.chunk, l.cpw, l.words);
    let (ta_len, tb_len, x2_len) = (l.ta_len, l.tb_len, l.x2_len);
    let (cpg, opg) = (g.cpg(), g.opg());
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    let wp = g.w + 2 * g.pad.1;
    if scratch.len() < ta_len + tb_len + x2_len {
        return None;
    }
    let (ta, rest) = scratch.split_at_mut(ta_len);
    let (tb, rest) = rest.split_at_mut(tb_len);
    let x2 = rest.get_mut(..x2_len)?;
    let half = |bits: u32| 1u32 << (bits.clamp(1, 16) - 1);
    let (hx, hwt) = (half(x.bits()), half(w.bits()));
    for grp in 0..g.groups {
        if pack_weights(ta, g, w, grp, words) >= hwt {
            return Some(false);
        }
        for b in 0..g.batch {
            // 1. The input, channel pairs per pixel, zeros around.
            x2.fill(0);
            let mut m = 0u32;
            for cp in 0..cpw {
                let a = (b * g.cin + grp * cpg + 2 * cp) * hw;
                for iy in 0..g.h {
                    let at = ((iy + g.pad.0) * wp + g.pad.1) * cpw + cp;
                    let Some(d) = x2.get_mut(at..) else {
                        return Some(false);
                    };
                    let r = a + iy * g.w;
                    m |= x.pack_zip(r, r + hw, g.w, d, cpw);
                }
            }
            if m >= hx {
                return Some(false);
            }
            // 2. The im2col tile, word by word from the packed input.
            im2col(tb, g, x2, words);
            // 3. The product into this item's and group's outputs.
            let start = (b * g.cout + grp * opg) * ohw;
            let Some(yo) = y.get_mut(start..start + opg * ohw) else {
                return Some(false);
            };
            let (dims, sizes) = ((opg, ohw), (words, words, chunk));
            if !packed::<true>(ta, tb, dims, sizes, yo, (ohw, 1)) {
                return Some(false);
            }
        }
    }
    Some(true)
}

/// Pack the weights of group `grp` as rows `co` of `(ky, kx, ci)` (pairs
/// of rows interleaved, `words` words per row, zeros after the taps and in
/// the padding row); returns the OR of the codes' magnitudes.
fn pack_weights(ta: &mut [u32], g: ConvGeom, w: &impl Codes, grp: usize, words: usize) -> u32 {
    let (cpg, opg) = (g.cpg(), g.opg());
    let (cpw, khw) = (cpg / 2, g.kh * g.kw);
    let tap_words = khw * cpw;
    let mut m = 0u32;
    for co in 0..opg.next_multiple_of(2) {
        let row = 2 * (co / 2) * words + co % 2;
        let Some(dst) = ta.get_mut(row..) else {
            return u32::MAX;
        };
        if co >= opg {
            dst.iter_mut().step_by(2).take(words).for_each(|d| *d = 0);
            continue;
        }
        for cp in 0..cpw {
            // Channels 2 cp and 2 cp + 1 over the taps: one word every
            // `cpw` words of the row (two tile slots per word).
            let a = ((grp * opg + co) * cpg + 2 * cp) * khw;
            if let Some(d) = dst.get_mut(2 * cp..) {
                m |= w.pack_zip(a, a + khw, khw, d, 2 * cpw);
            }
        }
        dst.iter_mut()
            .step_by(2)
            .take(words)
            .skip(tap_words)
            .for_each(|d| *d = 0);
    }
    m
}

/// Fill the im2col tile `tb` (rows = output pixels, pairs interleaved,
/// `words` words per row) from the padded packed input `x2` (dilation 1
/// in width).
fn im2col(tb: &mut [u32], g: ConvGeom, x2: &[u32], words: usize) {
    let ohw = g.oh * g.ow;
    let cpw = g.cpg() / 2;
    let run = g.kw * cpw;
    let wp = g.w + 2 * g.pad.1;
    // Word of the padded input where kernel row 0 of pixel `p` starts;
    // kernel row `ky` is `ky * dil_h` rows further.
    let start = |p: usize| {
        let (oy, ox) = (p / g.ow, p % g.ow);
        (oy * g.stride.0 * wp + ox * g.stride.1) * cpw
    };
    let row_step = g.dil.0 * wp * cpw;
    for (q, pair) in tb.chunks_exact_mut(2 * words).enumerate() {
        let (p0, p1) = (2 * q, 2 * q + 1);
        let (words2, _) = pair.as_chunks_mut::<2>();
        let (taps, tail) = words2.split_at_mut((g.kh * run).min(words2.len()));
        tail.fill([0, 0]);
        if p1 < ohw {
            let (mut s0, mut s1) = (start(p0), start(p1));
            for dst in taps.chunks_exact_mut(run.max(1)) {
                let a = x2.get(s0..s0 + run).unwrap_or_default();
                let b = x2.get(s1..s1 + run).unwrap_or_default();
                interleave(dst, a, b);
                (s0, s1) = (s0 + row_step, s1 + row_step);
            }
        } else {
            // The last pixel of an odd count: the other row is padding.
            let mut s0 = if p0 < ohw { start(p0) } else { usize::MAX };
            for dst in taps.chunks_exact_mut(run.max(1)) {
                let mut a = x2
                    .get(s0..s0.saturating_add(run))
                    .unwrap_or_default()
                    .iter();
                for d in dst {
                    *d = [a.next().copied().unwrap_or(0), 0];
                }
                s0 = s0.saturating_add(row_step);
            }
        }
    }
}

/// `dst[i] = [a[i], b[i]]` for `i` below the shortest length, two at a
/// time.
#[inline(always)]
fn interleave(dst: &mut [[u32; 2]], a: &[u32], b: &[u32]) {
    let n = dst.len().min(a.len()).min(b.len());
    let (Some(dst), Some(a), Some(b)) = (dst.get_mut(..n), a.get(..n), b.get(..n)) else {
        return;
    };
    let (d2, dr) = dst.as_chunks_mut::<2>();
    let (a2, ar) = a.as_chunks::<2>();
    let (b2, br) = b.as_chunks::<2>();
    #[cfg(fixnn_dsp)]
    dsp::interleave(d2, a2, b2);
    #[cfg(not(fixnn_dsp))]
    for ((d, a), b) in d2.iter_mut().zip(a2).zip(b2) {
        *d = [[a[0], b[0]], [a[1], b[1]]];
    }
    if let (Some(d), Some(&a), Some(&b)) = (dr.first_mut(), ar.first(), br.first()) {
        *d = [a, b];
    }
}

#[cfg(fixnn_dsp)]
mod dsp {
    /// `dst[i] = [[a[i][0], b[i][0]], [a[i][1], b[i][1]]]` for every `i`
    /// (the three have the same length): two `LDRD` and two `STRD` per
    /// four words, six instructions with the loop.
    #[inline(always)]
    pub(super) fn interleave(dst: &mut [[[u32; 2]; 2]], a: &[[u32; 2]], b: &[[u32; 2]]) {
        let n = dst.len().min(a.len()).min(b.len());
        if n == 0 {
            return;
        }
        // SAFETY: reads `n` pairs of words from `a` and from `b` and
        // writes `n` quads of words to `dst`, all within the slices
        // (`n` is the shortest length); `u32` data is word aligned, as
        // LDRD/STRD need. Touches no other memory and no stack.
        unsafe {
            core::arch::asm!(
                "2:",
                "ldrd {a0}, {a1}, [{pa}], #8",
                "ldrd {b0}, {b1}, [{pb}], #8",
                "strd {a0}, {b0}, [{pd}], #8",
                "strd {a1}, {b1}, [{pd}], #8",
                "subs {n}, {n}, #1",
                "bne 2b",
                pa = inout(reg) a.as_ptr() => _,
                pb = inout(reg) b.as_ptr() => _,
                pd = inout(reg) dst.as_mut_ptr() => _,
                n = inout(reg) n => _,
                a0 = out(reg) _,
                a1 = out(reg) _,
                b0 = out(reg) _,
                b1 = out(reg) _,
                options(nostack),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{conv2d_pairs, conv2d_pairs_scratch};
    use crate::backend::ConvGeom;
    use crate::kernels::ops::{self, CodeSlice};

    #[test]
    fn the_scratch_it_names_is_exactly_what_the_lowering_takes() {
        // Odd sizes, padding, stride and groups (4 channels per group).
        let g = ConvGeom {
            batch: 2,
            cin: 8,
            h: 7,
            w: 9,
            cout: 6,
            kh: 3,
            kw: 2,
            oh: 3,
            ow: 5,
            stride: (2, 2),
            pad: (1, 1),
            dil: (2, 1),
            groups: 2,
        };
        g.check().unwrap();
        let codes = |n: usize, seed: i32| -> [i8; 1024] {
            core::array::from_fn(|i| {
                if i < n {
                    ((i as i32 * seed + 3) % 17 - 8) as i8
                } else {
                    0
                }
            })
        };
        let [xl, wl, yl] = g.lens().unwrap();
        let (xv, wv) = (codes(xl, 7), codes(wl, 5));
        let x = CodeSlice {
            v: &xv[..xl],
            bits: 8,
        };
        let w = CodeSlice {
            v: &wv[..wl],
            bits: 8,
        };
        let need = conv2d_pairs_scratch(g, 8, 8).unwrap();
        let mut want = [0i64; 256];
        let mut scratch = [0u32; 4096];
        assert!(ops::conv2d(&mut scratch, g, &x, &w, &mut want[..yl]));
        let mut y = [0i64; 256];
        assert_eq!(
            conv2d_pairs(&mut scratch[..need], g, &x, &w, &mut y[..yl]),
            Some(true)
        );
        assert_eq!(y[..yl], want[..yl]);
        assert_eq!(
            conv2d_pairs(&mut scratch[..need - 1], g, &x, &w, &mut y[..yl]),
            None
        );
    }
}

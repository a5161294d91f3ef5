//! Reading operand values as integer codes, and choosing an element type in
//! which every integer sum of a product is exact.

use fixnn::quant::pow2_f32;
use fixnn::Format;
use rayon::prelude::*;

use super::kernel::{Ctx, Elem, Packed, KC};
use super::scratch::Buf;

/// Elements per task when scanning an operand in parallel.
const SCAN_CHUNK: usize = 1 << 14;

/// Turns a value of a quantized operand into its code, exactly as the
/// reference backend reads it: `(v * 2^-step_exp) as i64` when that factor is
/// a finite f32, else `Format::code_of`.
#[derive(Clone, Copy, Debug)]
pub(super) enum ToCode {
    Mul(f32),
    CodeOf(Format),
}

impl ToCode {
    pub(super) fn new(f: Format) -> Self {
        let m = pow2_f32(-f.step_exp());
        if m.is_finite() {
            ToCode::Mul(m)
        } else {
            ToCode::CodeOf(f)
        }
    }

    /// The code, saturated to `i32` (equal to the reference's `i64` code
    /// whenever that lies in the `i32` range).
    #[inline(always)]
    fn code32(self, v: f32) -> i32 {
        match self {
            ToCode::Mul(m) => (v * m) as i32,
            ToCode::CodeOf(f) => f.code_of(v),
        }
    }
}

/// How packing reads an operand value.
#[derive(Clone, Copy, Debug)]
pub(super) enum Load {
    /// As is (f32 path).
    Raw,
    /// As its integer code (integer path; codes were checked to fit `i16`).
    Code(ToCode),
}

impl Load {
    /// The element for value `v` (its code must fit `i16`).
    #[inline(always)]
    pub(super) fn get<E: Elem>(self, v: f32) -> E {
        match self {
            Load::Raw => E::from_f32(v),
            Load::Code(ToCode::Mul(m)) => E::from_f32(trunc_small(v * m)),
            Load::Code(ToCode::CodeOf(f)) => E::from_code(f.code_of(v)),
        }
    }

    /// `Packed::new` reading f32 operand values through this load, one
    /// compiled loop per kind of load.
    pub(super) fn pack<E: Elem>(
        self,
        par: bool,
        kc: usize,
        lanes: usize,
        at: (&[f32], &[usize], &[usize]),
    ) -> Packed<E> {
        match self {
            Load::Raw => Packed::new(par, kc, lanes, at, E::from_f32),
            Load::Code(ToCode::Mul(m)) => {
                Packed::new(par, kc, lanes, at, move |v| E::from_f32(trunc_small(v * m)))
            }
            Load::Code(ToCode::CodeOf(f)) => {
                Packed::new(par, kc, lanes, at, move |v| E::from_code(f.code_of(v)))
            }
        }
    }
}

/// `t` rounded toward zero, as `(t as i32) as f32` would give, for
/// `|t| < 2^22`, and zero for NaN; with branch-free float operations only,
/// so that loops vectorise (a saturating float-to-integer cast does not).
#[inline(always)]
fn trunc_small(t: f32) -> f32 {
    // Adding and subtracting 1.5 * 2^23 rounds |t| to the nearest integer
    // (exact for |t| < 2^22); one less if that rounded up.
    const MAGIC: f32 = 12_582_912.0;
    let a = t.abs();
    let r = (a + MAGIC) - MAGIC;
    let r = r - f32::from(u8::from(r > a));
    let r = if t.is_nan() { 0.0 } else { r };
    r.copysign(t)
}

/// Smallest and largest code of an operand.
#[derive(Clone, Copy, Debug)]
pub(super) struct Range16 {
    lo: i32,
    hi: i32,
}

impl Range16 {
    /// `max |code|`, or `None` if a code lies outside `i16`.
    fn max_abs(self) -> Option<u64> {
        (self.lo >= i16::MIN as i32 && self.hi <= i16::MAX as i32)
            .then(|| self.lo.unsigned_abs().max(self.hi.unsigned_abs()) as u64)
    }
}

/// Lanes of the min/max scan.
const LANES: usize = 16;

/// Smallest and largest value, NaN ignored; `(+0.0, +0.0)` included.
fn min_max(v: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([0.0f32; LANES], [0.0f32; LANES]);
    let (chunks, rest) = v.as_chunks::<LANES>();
    for c in chunks {
        for l in 0..LANES {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
        }
    }
    let fold = |acc: (f32, f32), &x: &f32| {
        (
            if x < acc.0 { x } else { acc.0 },
            if x > acc.1 { x } else { acc.1 },
        )
    };
    let lanes = lo.iter().zip(&hi).fold((0.0, 0.0), |acc, (&l, &h)| {
        (fold(acc, &l).0, fold(acc, &h).1)
    });
    rest.iter().fold(lanes, fold)
}

/// The range of an operand's codes (zero included). A code is a
/// non-decreasing function of the value and NaN reads as code 0, so the
/// extreme codes are the codes of the extreme values.
pub(super) fn scan(ctx: Ctx, v: &[f32], t: ToCode) -> Range16 {
    let (lo, hi) = if ctx.par && v.len() > SCAN_CHUNK {
        v.par_chunks(SCAN_CHUNK)
            .map(min_max)
            .reduce(|| (0.0, 0.0), |a, b| (a.0.min(b.0), a.1.max(b.1)))
    } else {
        min_max(v)
    };
    Range16 {
        lo: t.code32(lo).min(0),
        hi: t.code32(hi).max(0),
    }
}

fn convert_seq<E: Elem>(v: &[f32], t: ToCode, out: &mut [E]) {
    match t {
        ToCode::Mul(m) => {
            for (o, &x) in out.iter_mut().zip(v) {
                *o = E::from_f32(trunc_small(x * m));
            }
        }
        ToCode::CodeOf(f) => {
            for (o, &x) in out.iter_mut().zip(v) {
                *o = E::from_code(f.code_of(x));
            }
        }
    }
}

/// An operand's values as elements, borrowed or converted.
pub(super) enum Vals<'a, E: Elem> {
    Borrowed(&'a [E]),
    Owned(Buf<E>),
}

impl<E: Elem> std::ops::Deref for Vals<'_, E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        match self {
            Vals::Borrowed(v) => v,
            Vals::Owned(b) => b,
        }
    }
}

/// An operand's values as elements: as they are (`Load::Raw`), or their
/// codes (codes checked to fit `i16`).
pub(super) fn elements<E: Elem>(ctx: Ctx, v: &[f32], load: Load) -> Vals<'_, E> {
    let t = match load {
        Load::Raw => {
            return match E::raw(v) {
                Some(r) => Vals::Borrowed(r),
                None => Vals::Owned(Buf::collect(v.iter().map(|&x| E::from_f32(x)))),
            }
        }
        Load::Code(t) => t,
    };
    let mut out = Buf::filled(v.len(), E::ZERO);
    if ctx.par && v.len() > SCAN_CHUNK {
        out.par_chunks_mut(SCAN_CHUNK)
            .zip(v.par_chunks(SCAN_CHUNK))
            .for_each(|(o, c)| convert_seq(c, t, o));
    } else {
        convert_seq(v, t, &mut out);
    }
    Vals::Owned(out)
}

/// Whether every value is finite.
pub(super) fn all_finite(ctx: Ctx, v: &[f32]) -> bool {
    let seq =
        |c: &[f32]| c.iter().fold(0u32, |m, x| m.max(x.to_bits() & 0x7fff_ffff)) < 0x7f80_0000;
    if ctx.par && v.len() > SCAN_CHUNK {
        v.par_chunks(SCAN_CHUNK).all(seq)
    } else {
        seq(v)
    }
}

/// Element type and block length for an integer product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tier {
    /// Codes in f32, `kc` products per block: every partial sum of a block
    /// is an integer of magnitude at most `kc * max|a| * max|b| <= 2^24`, so
    /// every f32 operation is exact (and `2^24 < 2^51` for `Elem::to_i64`).
    F32(usize),
    /// Codes in f64, partial sums below `2^51` (exact, and converted to
    /// integers exactly by `Elem::to_i64`).
    F64(usize),
    /// Codes outside `i16` (values that are not codes of their format):
    /// computed by the reference backend.
    Reference,
}

/// Fewest products per block worth the f32 kernels.
const MIN_F32_BLOCK: u64 = 16;

/// The tier for operands whose codes lie in `a` and `b`.
pub(super) fn tier(a: Range16, b: Range16) -> Tier {
    let (Some(ma), Some(mb)) = (a.max_abs(), b.max_abs()) else {
        return Tier::Reference;
    };
    let p = ma * mb; // at most 2^30
    if p == 0 {
        return Tier::F32(KC);
    }
    let f32_block = (1u64 << 24) / p;
    if f32_block >= MIN_F32_BLOCK {
        Tier::F32(f32_block.min(KC as u64) as usize)
    } else {
        Tier::F64((((1u64 << 51) - 1) / p).min(KC as u64) as usize)
    }
}

//! Per-group scales: [`Group::Channel`](super::Group::Channel) and
//! [`Group::Batch`](super::Group::Batch).
//!
//! A grouped config quantizes each group of elements with its own scale
//! (and, with a real-valued scale, its own multiplier). Which elements form
//! a group depends on the tensor (see [`Group`](super::Group)); this module
//! works on a [`GroupLayout`]: group `g` of a row-major buffer is the
//! element ranges `[(o * groups + g) * inner, (o * groups + g + 1) * inner)`
//! for `o` in `0..outer`. The groups along the first dimension have `outer = 1`, the
//! channels of an NCHW tensor have `outer = N`, `inner = H * W`, so a
//! channel is gathered across the batch (not a reshape of the buffer into
//! rows, which mixes channels).
//!
//! Parameters keep a scale and a multiplier per group, so their groups may
//! be real-valued (weights per output channel, the TFLite scheme);
//! activations and their gradients keep one byte per group, power-of-two
//! scales only ([`check_capacity`]).
//!
//! # Arithmetic
//!
//! * Auto (training) chooses each group's scale from the group's largest
//!   magnitude, as [`RangeMethod::Max`] does for a whole tensor (the
//!   real-valued scale as [`RealFormat::from_max_for`]); an all-zero group gets
//!   [`ZERO_DATA_SCALE`](super::range::ZERO_DATA_SCALE) (power of two) or
//!   nics_fix_pt's `eps` (real). Grouped Auto supports range `Max` only
//!   ([`QuantConfig::validate`]). The config's own `scale` (and
//!   `multiplier`) become those of the group with the largest range, for
//!   tables and reports.
//! * Fixed, and Auto in eval mode, use the stored group scales
//!   ([`GroupsMut::set`]); before any were stored, every group uses the
//!   config's `scale` and `multiplier`.
//! * Each element is rounded exactly as a tensor-wide config with its
//!   group's format would round it, with the stochastic draw of its global
//!   element index.
//!
//! # The format of a grouped tensor
//!
//! Power-of-two groups with scales `s_min..=s_max` are exact multiples of
//! `2^(s_min + 1 - bits)` and lie within `±2^s_max`: they are codes of the
//! *carrying format* of `bits + (s_max - s_min)` bits and scale `s_max`
//! (same clamp). When that fits 16 bits (15 with nics_fix_pt's clamp) the
//! tensor carries it and every product that reads the tensor stays in
//! integers, with the wider codes; otherwise, and always for real-valued
//! groups, the tensor carries no format and its readers compute in f32 on
//! the exact quantized values (as for a tensor-wide real-valued scale).

use core::ops::Range;

use super::config::{Method, QuantConfig, RangeMethod};
use super::format::{Format, MAX_BITS};
use super::multiplier::RealFormat;
use super::range::{choose_scale_codes_for, choose_scale_f32_for, first_non_finite, max_abs_bits};
use super::round::decompose_f32;
use super::slice::{
    quantize_real_values, quantize_values_in_place, quantize_values_into, real_values_body,
};
use super::Rounder;
use crate::accel::{self, Split};
use crate::error::{Error, Result};

/// Where the groups of a tensor lie in its row-major buffer (see the
/// module docs): `outer * groups * inner` elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GroupLayout {
    /// Repetitions of the group pattern (batch items for channel groups).
    pub outer: usize,
    /// Number of groups.
    pub groups: usize,
    /// Contiguous elements of one group per repetition.
    pub inner: usize,
}

impl GroupLayout {
    /// The layout of `len` elements split along a dimension of `groups`
    /// indices that follows `outer` indices of the dimensions before it.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] naming `group` when `groups` or `outer` is 0
    /// or does not divide `len` (a shape without that dimension).
    pub const fn new(len: usize, outer: usize, groups: usize) -> Result<Self> {
        let per = outer.saturating_mul(groups);
        if per == 0 || !len.is_multiple_of(per) {
            return Err(Error::Unsupported { field: "group" });
        }
        Ok(GroupLayout {
            outer,
            groups,
            inner: len / per,
        })
    }

    /// Number of elements.
    pub const fn len(&self) -> usize {
        self.outer * self.groups * self.inner
    }

    /// Whether the layout holds no element.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element ranges of group `g`, in index order.
    pub fn ranges(&self, g: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        (0..self.outer).map(move |o| {
            let start = (o * self.groups + g) * self.inner;
            start..start + self.inner
        })
    }
}

/// The stored scales of one grouped config (data or gradient) of a tensor:
/// one `scale` and one `multiplier` (`0` for power-of-two groups) per group.
pub struct GroupsMut<'a> {
    /// Scale of each group.
    pub scale: &'a mut [i8],
    /// Multiplier of each group (real-valued scales), else 0.
    pub multiplier: &'a mut [u32],
    /// Whether the scales were stored (by Auto or loaded): until then every
    /// group uses the config's own scale.
    pub set: &'a mut bool,
}

/// A grouped tensor: its layout and the stored scales of the config.
pub struct Grouping<'a> {
    /// Where the groups lie.
    pub layout: GroupLayout,
    /// Their scales.
    pub store: GroupsMut<'a>,
}

/// The scale and multiplier group `g` uses: the stored ones once set,
/// else the config's.
fn group_scale(cfg: &QuantConfig, store: &GroupsMut<'_>, g: usize) -> (i8, u32) {
    if *store.set {
        (
            store.scale.get(g).copied().unwrap_or(cfg.scale),
            store.multiplier.get(g).copied().unwrap_or(cfg.multiplier),
        )
    } else {
        (cfg.scale, cfg.multiplier)
    }
}

/// Whether `grouping` has room for the scales of `cfg`: one scale per
/// group, and one multiplier per group if `cfg` is real-valued.
///
/// # Errors
///
/// [`Error::Unsupported`] naming `multiplier` for a real-valued config
/// whose storage keeps no multipliers (an activation's);
/// [`Error::LengthMismatch`] for storage of another number of groups.
pub fn check_capacity(cfg: &QuantConfig, grouping: &Grouping<'_>) -> Result<()> {
    let (l, s) = (grouping.layout, &grouping.store);
    if cfg.multiplier != 0 && s.multiplier.is_empty() {
        return Err(Error::Unsupported {
            field: "multiplier",
        });
    }
    let mult_ok = s.multiplier.is_empty() || s.multiplier.len() == l.groups;
    if s.scale.len() != l.groups || !mult_ok {
        return Err(Error::LengthMismatch {
            expected: l.groups,
            found: s.scale.len(),
        });
    }
    Ok(())
}

/// Checks shared by every grouped pass: a valid grouped config that
/// quantizes, storage for every group, and `len` elements.
fn check(cfg: &QuantConfig, grouping: &Grouping<'_>, len: usize) -> Result<()> {
    cfg.validate()?;
    let l = grouping.layout;
    if l.len() != len {
        return Err(Error::LengthMismatch {
            expected: l.len(),
            found: len,
        });
    }
    check_capacity(cfg, grouping)?;
    if len == 0 {
        return Err(Error::EmptyInput);
    }
    Ok(())
}

/// Store the scales Auto chose (`choose(g)` per group) and make the
/// config's own scale that of the largest range.
fn store_auto(
    cfg: &mut QuantConfig,
    store: &mut GroupsMut<'_>,
    groups: usize,
    mut choose: impl FnMut(usize) -> Result<(i8, u32)>,
) -> Result<()> {
    // A choice fails only for a bad config, never for one group's data
    // (non-finite input was refused before): trying the first group is
    // enough for nothing to be stored on error.
    if groups > 0 {
        choose(0)?;
    }
    let mut top: Option<(i8, u32)> = None;
    for g in 0..groups {
        let (s, m) = choose(g)?;
        if let Some(x) = store.scale.get_mut(g) {
            *x = s;
        }
        if let Some(y) = store.multiplier.get_mut(g) {
            *y = m;
        }
        if top.is_none_or(|t| (s, m) > t) {
            top = Some((s, m));
        }
    }
    if let Some((s, m)) = top {
        cfg.scale = s;
        cfg.multiplier = m;
    }
    *store.set = true;
    Ok(())
}

/// The format of group `g` and, for a real-valued config, its real format.
fn group_format(
    cfg: &QuantConfig,
    store: &GroupsMut<'_>,
    g: usize,
) -> Result<(Format, Option<RealFormat>)> {
    let (s, m) = group_scale(cfg, store, g);
    let f = Format::with_clamp(cfg.bits, s, cfg.clamp)?;
    if cfg.multiplier == 0 {
        return Ok((f, None));
    }
    Ok((f, Some(RealFormat::new(f, m)?)))
}

/// The format a grouped power-of-two tensor carries (see the module docs),
/// or `None` when its codes would need more than 16 bits, and always for
/// real-valued groups.
fn carrying_format(cfg: &QuantConfig, store: &GroupsMut<'_>, groups: usize) -> Option<Format> {
    if cfg.multiplier != 0 {
        return None;
    }
    let mut lo = i32::MAX;
    let mut hi = i32::MIN;
    for g in 0..groups {
        let s = group_scale(cfg, store, g).0 as i32;
        lo = lo.min(s);
        hi = hi.max(s);
    }
    let bits = cfg.bits as i32 + (hi - lo);
    if bits > MAX_BITS as i32 {
        return None;
    }
    Format::with_clamp(bits as u8, hi as i8, cfg.clamp).ok()
}

/// The largest magnitude of group `g` of f32 data, as f32 bits.
fn group_max_f32(x: &[f32], layout: &GroupLayout, g: usize) -> u32 {
    layout
        .ranges(g)
        .filter_map(|r| x.get(r))
        .map(max_abs_bits)
        .max()
        .unwrap_or(0)
}

/// The largest magnitude of group `g` of integers.
fn group_max_int(q: &[i64], layout: &GroupLayout, g: usize) -> u64 {
    layout
        .ranges(g)
        .filter_map(|r| q.get(r))
        .flat_map(|c| c.iter().map(|v| v.unsigned_abs()))
        .max()
        .unwrap_or(0)
}

/// Quantize f32 data by a grouped config (`cfg.method` is Auto or Fixed;
/// the caller turns Auto into Fixed in eval mode): from `src` into `dst`
/// (or in place in `dst` when `src` is `None`), recording clamps in `sat`.
/// Returns the carrying format (see the module docs) and the number of
/// clamped elements.
///
/// # Errors
///
/// As [`QuantConfig::validate`]; [`Error::LengthMismatch`] if the
/// lengths disagree with the layout, [`Error::EmptyInput`],
/// [`Error::NonFinite`] naming the first NaN or infinity. Nothing is
/// written on error.
pub fn quantize_f32_grouped(
    cfg: &mut QuantConfig,
    grouping: &mut Grouping<'_>,
    rounder: &Rounder,
    src: Option<&[f32]>,
    dst: &mut [f32],
    mut sat: Option<&mut [bool]>,
) -> Result<(Option<Format>, u64)> {
    check(cfg, grouping, dst.len())?;
    if let Some(s) = src {
        if s.len() != dst.len() {
            return Err(Error::LengthMismatch {
                expected: dst.len(),
                found: s.len(),
            });
        }
    }
    if let Some(s) = sat.as_deref() {
        if s.len() != dst.len() {
            return Err(Error::LengthMismatch {
                expected: dst.len(),
                found: s.len(),
            });
        }
    }
    let x = src.unwrap_or(&*dst);
    if let Some(index) = first_non_finite(x) {
        return Err(Error::NonFinite { index });
    }
    let layout = grouping.layout;
    let real = cfg.multiplier != 0;
    if cfg.method == Method::Auto {
        let like = Format::with_clamp(cfg.bits, 0, cfg.clamp)?;
        let (bits, rounding, clamp) = (cfg.bits, cfg.rounding, cfg.clamp);
        store_auto(cfg, &mut grouping.store, layout.groups, |g| {
            let big = group_max_f32(x, &layout, g);
            if real {
                let (m, e) = decompose_f32(f32::from_bits(big)).unwrap_or((0, 0));
                let rf = RealFormat::from_max_for(bits, clamp, m.unsigned_abs(), e)?;
                Ok((rf.format().scale(), rf.multiplier()))
            } else {
                let s =
                    choose_scale_f32_for(RangeMethod::Max, like, rounding, &[f32::from_bits(big)])?;
                Ok((s, 0))
            }
        })?;
    }
    let store = &grouping.store;
    if real && layout.outer == 1 {
        let n = real_contiguous(cfg, store, layout.inner, rounder, src, dst, sat)?;
        return Ok((carrying_format(cfg, store, layout.groups), n));
    }
    let mut n = 0;
    for g in 0..layout.groups {
        let (f, rf) = group_format(cfg, store, g)?;
        for r in layout.ranges(g) {
            let at = rounder.at(rounder.base.wrapping_add(r.start as u32));
            let sat_r = sat.as_deref_mut().and_then(|s| s.get_mut(r.clone()));
            n += match (rf, src) {
                (Some(rf), _) => match dst.get_mut(r.clone()) {
                    Some(b) => {
                        let a = src.and_then(|s| s.get(r.clone()));
                        quantize_real_values(a, b, rf, &at, sat_r)
                    }
                    None => 0,
                },
                (None, Some(src)) => match (src.get(r.clone()), dst.get_mut(r.clone())) {
                    (Some(a), Some(b)) => quantize_values_into(a, b, f, &at, sat_r),
                    _ => 0,
                },
                (None, None) => match dst.get_mut(r.clone()) {
                    Some(b) => quantize_values_in_place(b, f, &at, sat_r),
                    None => 0,
                },
            };
        }
    }
    Ok((carrying_format(cfg, store, layout.groups), n))
}

/// The real-valued pass of [`quantize_f32_grouped`] when each group is one
/// contiguous run of `inner` elements (`outer == 1`: a parameter's output
/// channels), as one [`accel::split_pass`]: a part of the buffer may start
/// or end inside a group, and each element draws as element `base + i` of
/// the whole tensor, so the result is that of the group-by-group loop.
/// Every group's format is checked first, so the pass itself cannot fail.
fn real_contiguous(
    cfg: &QuantConfig,
    store: &GroupsMut<'_>,
    inner: usize,
    rounder: &Rounder,
    src: Option<&[f32]>,
    dst: &mut [f32],
    sat: Option<&mut [bool]>,
) -> Result<u64> {
    let inner = inner.max(1);
    for g in 0..dst.len().div_ceil(inner) {
        group_format(cfg, store, g)?;
    }
    let len = dst.len();
    Ok(accel::split_pass(
        len,
        (src, (dst, sat)),
        |mut rest, off| {
            // Element `at` of the tensor is the part's first one left.
            let (mut n, mut at, end) = (0, off, off + rest.1 .0.len());
            while at < end {
                let g = at / inner;
                let next = (g + 1) * inner;
                let ((s, (d, st)), tail) = rest.split(next - at);
                if let Ok((_, Some(rf))) = group_format(cfg, store, g) {
                    let r = rounder.at(rounder.base.wrapping_add(at as u32));
                    n += real_values_body(s, d, rf, &r, st);
                }
                at = next;
                rest = tail;
            }
            n
        },
        |a, b| a + b,
    ))
}

/// Requantize accumulators `acc * 2^exp` into `dst` by a grouped config
/// (as [`quantize_f32_grouped`], Auto choosing each group's scale from its
/// largest accumulator).
///
/// # Errors
///
/// As [`quantize_f32_grouped`] (no non-finite input here).
pub fn requantize_grouped(
    cfg: &mut QuantConfig,
    grouping: &mut Grouping<'_>,
    rounder: &Rounder,
    acc: &[i64],
    exp: i32,
    dst: &mut [f32],
    mut sat: Option<&mut [bool]>,
) -> Result<(Option<Format>, u64)> {
    check(cfg, grouping, acc.len())?;
    if dst.len() != acc.len() || sat.as_deref().is_some_and(|s| s.len() != acc.len()) {
        return Err(Error::LengthMismatch {
            expected: acc.len(),
            found: dst.len(),
        });
    }
    let layout = grouping.layout;
    let real = cfg.multiplier != 0;
    if cfg.method == Method::Auto {
        let like = Format::with_clamp(cfg.bits, 0, cfg.clamp)?;
        let (bits, rounding, clamp) = (cfg.bits, cfg.rounding, cfg.clamp);
        store_auto(cfg, &mut grouping.store, layout.groups, |g| {
            let big = group_max_int(acc, &layout, g);
            if real {
                let rf = RealFormat::from_max_for(bits, clamp, big, exp)?;
                Ok((rf.format().scale(), rf.multiplier()))
            } else {
                // 2^63 and 2^63 - 1 have the same ceil(log2).
                let big = big.min(i64::MAX as u64) as i64;
                let s = choose_scale_codes_for(RangeMethod::Max, like, rounding, exp, &[big])?;
                Ok((s, 0))
            }
        })?;
    }
    let store = &grouping.store;
    let mut n = 0;
    for g in 0..layout.groups {
        let (f, rf) = group_format(cfg, store, g)?;
        for r in layout.ranges(g) {
            let at = rounder.at(rounder.base.wrapping_add(r.start as u32));
            for i in r.clone() {
                let a = acc.get(i).copied().unwrap_or(0);
                let (q, clamped) = match rf {
                    Some(rf) => at.round_real_acc(i - r.start, a, exp, rf),
                    None => at.round(i - r.start, a, exp, f),
                };
                if let Some(d) = dst.get_mut(i) {
                    *d = match rf {
                        Some(rf) => rf.to_f32(q),
                        None => f.to_f32(q),
                    };
                }
                if let Some(s) = sat.as_deref_mut().and_then(|s| s.get_mut(i)) {
                    *s = clamped;
                }
                n += clamped as u64;
            }
        }
    }
    Ok((carrying_format(cfg, store, layout.groups), n))
}

//! Model state: what the hardware holds (integer codes and formats) and
//! the f32 master state (nics_fix_pt's `fix_state_dict` and `state_dict`).
//!
//! # JSON
//!
//! ```json
//! {"format":"fixnn-state","version":1,"tensors":[
//!   {"name":"fc1.weight","kind":"param","layer":"Linear",
//!    "fmt":{"bits":8,"scale":-1},"codes":[12,-3,...],"values":null,
//!    "master":[0.0468,...],"momentum":[0.0,...]}, ...]}
//! ```
//!
//! Parameters and buffers are saved, activations are not. A tensor with a
//! format has `codes` (and `values` null); a full-precision one has
//! `values` (and `fmt`, `codes` null). Parameters add their f32 `master`
//! values and SGD `momentum`, so training resumes exactly.
//!
//! When some grouped config ([`Group`](crate::Group)) has stored group
//! scales, a fourth field lists them, for every kind of tensor (an
//! activation's per-channel scales are what its Auto config uses in eval
//! mode): `"groups":[{"name":"fc1.weight","grad":false,"scale":[-1,2],
//! "multiplier":[0,0]}]` (activations keep power-of-two group scales only:
//! their `multiplier` list is empty). Documents without it read as before. [`StateView`]
//! serializes a model without a heap (serde-json-core, or serde_json on the
//! desktop: the same text, as both print f32 with the shortest
//! round-trip representation).

use core::cell::RefCell;

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use super::configs::{walk, LoadReport};
use super::{ConfigProblem, Kind};
use crate::error::Error;
use crate::layers::Layer;
use crate::quant::{Clamp, Format, QuantConfig, MULTIPLIER_END, MULTIPLIER_MIN};
use crate::tensor::GroupStore;

/// The `format` field of a state document.
pub const STATE_FORMAT: &str = "fixnn-state";
/// The version of the state document written by this crate.
pub const STATE_VERSION: u32 = 1;

/// A format as saved: `{"bits":B,"scale":S}`, plus `"clamp":"nics"` for
/// nics_fix_pt's clamp (omitted for the default `"hardware"`, so states
/// without it read as before) and `"zero_point":Z` for an asymmetric
/// range (omitted when 0, likewise).
///
/// With a zero point, the saved `codes` are what hardware stores: the
/// register values `q = k + Z` in `[-2^(B-1), 2^(B-1) - 1]`, real value
/// `(q - Z) * 2^(S + 1 - B)`; loading subtracts `Z` again (exact).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatJson {
    /// Bit width.
    pub bits: u8,
    /// Scale exponent.
    pub scale: i8,
    /// Where the codes saturate.
    #[serde(default, skip_serializing_if = "Clamp::is_hardware")]
    pub clamp: Clamp,
    /// Zero point of an asymmetric range (0: symmetric, not written).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub zero_point: i32,
}

fn is_zero(z: &i32) -> bool {
    *z == 0
}

impl FormatJson {
    /// The format this describes.
    ///
    /// # Errors
    ///
    /// As [`Format::with_clamp`] and [`Format::with_zero_point`].
    pub const fn format(&self) -> Result<Format, Error> {
        match Format::with_clamp(self.bits, self.scale, self.clamp) {
            Ok(f) => f.with_zero_point(self.zero_point),
            Err(e) => Err(e),
        }
    }
}

impl From<Format> for FormatJson {
    fn from(f: Format) -> Self {
        FormatJson {
            bits: f.bits(),
            scale: f.scale(),
            clamp: f.clamp(),
            zero_point: f.zero_point(),
        }
    }
}

/// Serializes the state of a model (see the module docs) as it walks it.
pub struct StateView<'a, L: Layer>(RefCell<&'a mut L>);

impl<'a, L: Layer> StateView<'a, L> {
    /// A view of `model` for one serialization.
    pub fn new(model: &'a mut L) -> Self {
        StateView(RefCell::new(model))
    }
}

struct Codes<'a>(&'a [f32], Format);

impl Serialize for Codes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for &v in self.0 {
            seq.serialize_element(&self.1.stored_code(self.1.code_of(v)))?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct Entry<'a> {
    name: &'a str,
    kind: Kind,
    layer: &'a str,
    fmt: Option<FormatJson>,
    codes: Option<Codes<'a>>,
    values: Option<&'a [f32]>,
    master: Option<&'a [f32]>,
    momentum: Option<&'a [f32]>,
}

struct Tensors<'b, 'a, L: Layer>(&'b RefCell<&'a mut L>);

impl<L: Layer> Serialize for Tensors<'_, '_, L> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        let mut err = None;
        let mut model = self.0.borrow_mut();
        walk(&mut **model, &mut |name, t| {
            if err.is_some() || t.kind == Kind::Activation {
                return;
            }
            let fmt = *t.fmt;
            let (master, momentum) = match &t.param {
                Some(p) => (Some(&*p.master), Some(&*p.momentum)),
                None => (None, None),
            };
            let e = Entry {
                name,
                kind: t.kind,
                layer: t.layer_type,
                fmt: fmt.map(FormatJson::from),
                codes: fmt.map(|f| Codes(t.values, f)),
                values: if fmt.is_none() { Some(t.values) } else { None },
                master,
                momentum,
            };
            if let Err(e) = seq.serialize_element(&e) {
                err = Some(e);
            }
        });
        match err {
            Some(e) => Err(e),
            None => seq.end(),
        }
    }
}

/// The stored group scales of config `which` of a tensor, if its config
/// is grouped, quantizes, and has stored scales.
fn stored_groups<'t>(
    cfg: &QuantConfig,
    store: Option<&'t mut (dyn GroupStore + '_)>,
    which: usize,
) -> Option<(&'t [i8], &'t [u32])> {
    if !cfg.is_grouped() {
        return None;
    }
    let g = store?.grouping(which, cfg.group).ok()??;
    let s = g.store;
    if !*s.set {
        return None;
    }
    Some((&*s.scale, &*s.multiplier))
}

#[derive(Serialize)]
struct GroupJson<'a> {
    name: &'a str,
    grad: bool,
    scale: &'a [i8],
    multiplier: &'a [u32],
}

struct Groups<'b, 'a, L: Layer>(&'b RefCell<&'a mut L>);

impl<L: Layer> Groups<'_, '_, L> {
    /// Call `f` with every stored grouped config's entry.
    fn each(&self, f: &mut dyn FnMut(GroupJson<'_>)) {
        let mut model = self.0.borrow_mut();
        walk(&mut **model, &mut |name, t| {
            let (cfgs, mut store) = ([t.quant.cfg, t.quant.grad_cfg], t.groups);
            for (which, cfg) in cfgs.iter().enumerate() {
                if let Some((scale, multiplier)) = stored_groups(cfg, store.as_deref_mut(), which) {
                    f(GroupJson {
                        name,
                        grad: which == 1,
                        scale,
                        multiplier,
                    });
                }
            }
        });
    }
}

impl<L: Layer> Serialize for Groups<'_, '_, L> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        let mut err = None;
        self.each(&mut |e| {
            if err.is_none() {
                if let Err(e) = seq.serialize_element(&e) {
                    err = Some(e);
                }
            }
        });
        match err {
            Some(e) => Err(e),
            None => seq.end(),
        }
    }
}

impl<L: Layer> Serialize for StateView<'_, L> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let groups = Groups(&self.0);
        let mut any = false;
        groups.each(&mut |_| any = true);
        let mut st = s.serialize_struct("State", 3 + any as usize)?;
        st.serialize_field("format", STATE_FORMAT)?;
        st.serialize_field("version", &STATE_VERSION)?;
        st.serialize_field("tensors", &Tensors(&self.0))?;
        if any {
            st.serialize_field("groups", &groups)?;
        }
        st.end()
    }
}

/// The stored scales of one grouped config to load back (the `groups`
/// field of a state document, parsed by the caller).
#[derive(Clone, Copy, Debug)]
pub struct GroupEntry<'a> {
    /// Dotted path of the tensor (any kind).
    pub name: &'a str,
    /// The gradient's config (`true`) or the data's.
    pub grad: bool,
    /// Scale of each group.
    pub scale: &'a [i8],
    /// Multiplier of each group: all 0 for a power-of-two config, each in
    /// `[2^30, 2^31)` for a real-valued one.
    pub multiplier: &'a [u32],
}

/// Check one group entry against the tensor's config and storage.
fn check_group(
    cfg: &QuantConfig,
    store: Option<&mut (dyn GroupStore + '_)>,
    e: &GroupEntry<'_>,
) -> Result<(), Error> {
    if !cfg.is_grouped() {
        return Err(Error::Invalid {
            what: "group scales for a config that is not grouped",
        });
    }
    let Some(store) = store else {
        return Err(Error::Unsupported { field: "group" });
    };
    let Some(g) = store.grouping(e.grad as usize, cfg.group)? else {
        return Err(Error::Unsupported { field: "group" });
    };
    crate::quant::group::check_capacity(cfg, &g)?;
    // One scale per group; one multiplier per group where the tensor keeps
    // them (parameters), none where it does not (activations).
    let n = g.layout.groups;
    let m = g.store.multiplier.len();
    for (len, want) in [(e.scale.len(), n), (e.multiplier.len(), m)] {
        if len != want {
            return Err(Error::LengthMismatch {
                expected: want,
                found: len,
            });
        }
    }
    let real = cfg.multiplier != 0;
    if e.multiplier
        .iter()
        .any(|&m| (m != 0) != real || (real && !(MULTIPLIER_MIN..MULTIPLIER_END).contains(&m)))
    {
        return Err(Error::Invalid {
            what: "group multipliers must be 0 for a power-of-two config and in [2^30, 2^31) for a real-valued one",
        });
    }
    Ok(())
}

/// One saved tensor to load back (parsed by the caller).
#[derive(Clone, Copy, Debug)]
pub struct StateEntry<'a> {
    /// Dotted path.
    pub name: &'a str,
    /// Kind recorded in the file.
    pub kind: Kind,
    /// Format of `codes`.
    pub fmt: Option<FormatJson>,
    /// Codes (with `fmt`).
    pub codes: Option<&'a [i32]>,
    /// Full-precision values (without `fmt`).
    pub values: Option<&'a [f32]>,
    /// Master values (parameters).
    pub master: Option<&'a [f32]>,
    /// Momentum (parameters).
    pub momentum: Option<&'a [f32]>,
}

fn check_entry(e: &StateEntry<'_>, len: usize, is_param: bool) -> Result<(), Error> {
    let count = |n: usize| {
        if n != len {
            Err(Error::LengthMismatch {
                expected: len,
                found: n,
            })
        } else {
            Ok(())
        }
    };
    match (e.fmt, e.codes, e.values) {
        (Some(f), Some(c), None) => {
            let f = f.format()?;
            count(c.len())?;
            // Saved codes are register values `k + z` (see `FormatJson`).
            let z = f.zero_point() as i64;
            let (lo, hi) = (f.min_code() as i64 + z, f.max_code() as i64 + z);
            if c.iter().any(|&q| (q as i64) < lo || (q as i64) > hi) {
                return Err(Error::Shape {
                    what: "a code is outside its format's range",
                });
            }
        }
        (None, None, Some(v)) => {
            count(v.len())?;
            if let Some(index) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::NonFinite { index });
            }
        }
        _ => {
            return Err(Error::Shape {
                what: "a tensor needs either fmt and codes or values",
            })
        }
    }
    for m in [e.master, e.momentum] {
        match (m, is_param) {
            (Some(m), true) => {
                count(m.len())?;
                if let Some(index) = m.iter().position(|x| !x.is_finite()) {
                    return Err(Error::NonFinite { index });
                }
            }
            (None, true) => {
                return Err(Error::Shape {
                    what: "a parameter needs master and momentum",
                })
            }
            (Some(_), false) => {
                return Err(Error::Shape {
                    what: "only parameters have master and momentum",
                })
            }
            (None, false) => {}
        }
    }
    Ok(())
}

/// Load a saved state onto `model`: every parameter and buffer must be
/// present once, with the right kind and length, codes inside their
/// format and finite values; every group entry must name a tensor whose
/// config (as loaded before the state) is grouped, once, with one scale
/// and one valid multiplier per group. Everything is checked first; on any
/// problem the model is unchanged and the report names each path. Loaded
/// group scales are marked stored.
///
/// # Errors
///
/// The [`LoadReport`] of every problem found.
// The report is the product of a failed load: it is returned by value
// because core has no heap to box it in (about 1.9 KB).
#[allow(clippy::result_large_err)]
pub fn apply_state<L: Layer>(
    model: &mut L,
    entries: &[StateEntry<'_>],
    groups: &[GroupEntry<'_>],
) -> Result<usize, LoadReport> {
    let mut report = LoadReport::default();
    let part = |e: &GroupEntry<'_>| if e.grad { ".grad" } else { ".data" };
    for (i, e) in groups.iter().enumerate() {
        if groups[..i]
            .iter()
            .any(|p| p.name == e.name && p.grad == e.grad)
        {
            report.push_problem(e.name, part(e), ConfigProblem::Duplicate);
        }
        let mut hit = false;
        walk(model, &mut |name, mut t| {
            if name == e.name {
                hit = true;
                let cfg = if e.grad {
                    t.quant.grad_cfg
                } else {
                    t.quant.cfg
                };
                if let Err(err) = check_group(&cfg, t.groups.as_deref_mut(), e) {
                    report.push_problem(name, part(e), ConfigProblem::Invalid(err));
                }
            }
        });
        if !hit {
            report.push_problem(e.name, part(e), ConfigProblem::Unknown);
        }
    }
    for (i, e) in entries.iter().enumerate() {
        if entries[..i].iter().any(|p| p.name == e.name) {
            report.push_problem(e.name, "", ConfigProblem::Duplicate);
        }
    }
    let mut known = 0usize;
    walk(model, &mut |name, t| {
        if t.kind == Kind::Activation {
            return;
        }
        match entries.iter().find(|e| e.name == name) {
            None => report.push_problem(name, "", ConfigProblem::Missing),
            Some(e) if e.kind != t.kind => {
                report.push_problem(name, "", ConfigProblem::KindMismatch)
            }
            Some(e) => {
                known += 1;
                if let Err(err) = check_entry(e, t.values.len(), t.kind == Kind::Param) {
                    report.push_problem(name, "", ConfigProblem::Invalid(err));
                }
            }
        }
    });
    for e in entries {
        let mut hit = false;
        walk(model, &mut |name, t| {
            hit |= t.kind != Kind::Activation && name == e.name
        });
        if !hit {
            report.push_problem(e.name, "", ConfigProblem::Unknown);
        }
    }
    if report.total > 0 {
        return Err(report);
    }
    walk(model, &mut |name, t| {
        let Some(e) = entries.iter().find(|e| e.name == name) else {
            return;
        };
        match (e.fmt.and_then(|f| f.format().ok()), e.codes, e.values) {
            (Some(f), Some(c), _) => {
                for (v, &q) in t.values.iter_mut().zip(c) {
                    // Checked in range above: `q - z` does not overflow.
                    *v = f.to_f32(f.code_of_stored(q));
                }
                *t.fmt = Some(f);
            }
            (_, _, Some(v)) => {
                t.values.copy_from_slice(v);
                *t.fmt = None;
            }
            _ => {}
        }
        if let (Some(p), Some(m), Some(mo)) = (t.param, e.master, e.momentum) {
            p.master.copy_from_slice(m);
            p.momentum.copy_from_slice(mo);
        }
    });
    walk(model, &mut |name, t| {
        let (cfgs, Some(store)) = ([t.quant.cfg, t.quant.grad_cfg], t.groups) else {
            return;
        };
        for e in groups.iter().filter(|e| e.name == name) {
            let cfg = if e.grad { cfgs[1] } else { cfgs[0] };
            if let Ok(Some(g)) = store.grouping(e.grad as usize, cfg.group) {
                g.store.scale.copy_from_slice(e.scale);
                g.store.multiplier.copy_from_slice(e.multiplier);
                *g.store.set = true;
            }
        }
    });
    Ok(known)
}

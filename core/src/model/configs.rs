//! Config trees: list, load, select and print every tensor's data and grad
//! configs (nics_fix_pt's `get_fix_configs`, `load_fix_configs`,
//! `set_fix_method`, `print_fix_configs`).
//!
//! # JSON
//!
//! A config tree is saved as one object, keys in this order, entries in the
//! order of [`Layer::visit`]:
//!
//! ```json
//! {"format":"fixnn-config","version":1,"tensors":[
//!   {"name":"fc1.weight","kind":"param","layer":"Linear",
//!    "data":{"method":"auto","bits":8,"scale":0,"range":"max","rounding":"nearest_even",
//!            "zero_point":0,"multiplier":0,"group":"tensor"},
//!    "grad":{...}}, ...]}
//! ```
//!
//! [`ConfigDoc::from_json`] reads it with fixnn's own reader (no heap, no
//! recursion, no panic path; see [`ReadError`](super::ReadError)); it is
//! written with serde (serde-json-core's `to_slice` without a heap, or
//! serde_json on the desktop, the same text).

use core::fmt;

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use super::path::{PathBuf, MAX_PATH};
use super::{Kind, TensorMut, Visitor};
use crate::error::Error;
use crate::layers::Layer;
use crate::quant::{Group, Method, QuantConfig, RangeMethod};

/// The `format` field of a config document.
pub const CONFIG_FORMAT: &str = "fixnn-config";
/// The version of the config document written by this crate.
pub const CONFIG_VERSION: u32 = 1;
/// Longest layer type name kept in a document.
pub const MAX_TYPE: usize = 32;

/// Walk every tensor of `model`, calling `f` with its dotted path.
/// Returns `false` if some path was longer than [`MAX_PATH`] (then `f` saw
/// a truncated path).
pub fn walk<L: Layer>(model: &mut L, f: &mut dyn FnMut(&str, TensorMut<'_>)) -> bool {
    struct W<'a> {
        path: PathBuf,
        f: &'a mut dyn FnMut(&str, TensorMut<'_>),
        overflow: bool,
    }
    impl Visitor for W<'_> {
        fn enter(&mut self, name: &str) {
            self.path.push(name);
        }
        fn leave(&mut self) {
            self.path.pop();
        }
        fn tensor(&mut self, t: TensorMut<'_>) {
            let mut buf = [0u8; MAX_PATH];
            let mut p = self.path;
            p.push(t.name);
            self.overflow |= p.overflowed();
            let name = self.path.join(t.name, &mut buf);
            (self.f)(name, t);
        }
    }
    let mut w = W {
        path: PathBuf::new(),
        f,
        overflow: false,
    };
    model.visit(&mut w);
    !w.overflow
}

/// One tensor's configs, as saved. Read with [`ConfigEntry::from_json`]
/// (a new field must be added to the reader's table too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigEntry {
    /// Dotted path (`fc1.weight`).
    pub name: String<MAX_PATH>,
    /// Parameter, buffer or activation.
    pub kind: Kind,
    /// Type of the layer that owns it.
    pub layer: String<MAX_TYPE>,
    /// Data config.
    pub data: QuantConfig,
    /// Grad config.
    pub grad: QuantConfig,
}

/// A config tree with room for `N` tensors, in the JSON layout of the
/// module docs. Read with [`ConfigDoc::from_json`] (a new field must be
/// added to the reader's table too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDoc<const N: usize> {
    /// Always [`CONFIG_FORMAT`].
    pub format: String<16>,
    /// [`CONFIG_VERSION`].
    pub version: u32,
    /// Every tensor, in visit order.
    pub tensors: Vec<ConfigEntry, N>,
}

/// What is wrong with one entry of a config tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConfigProblem {
    /// The model has this tensor; the tree does not.
    Missing,
    /// The tree has this tensor; the model does not.
    Unknown,
    /// The tree names this tensor twice.
    Duplicate,
    /// The entry's kind differs from the model's tensor.
    KindMismatch,
    /// A config value is out of range or unsupported.
    Invalid(Error),
    /// A path longer than [`MAX_PATH`] bytes.
    PathTooLong,
    /// More tensors than the document can hold.
    TooMany,
    /// The document's `format` or `version` is not one this crate reads.
    BadHeader,
}

/// One problem, with the path (and `.data`/`.grad` part) it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The tensor's path, with `.data` or `.grad` for a bad config value.
    pub path: String<{ MAX_PATH + 8 }>,
    /// What is wrong.
    pub problem: ConfigProblem,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.path;
        match self.problem {
            ConfigProblem::Missing => write!(f, "{p}: missing from the config (the model has it)"),
            ConfigProblem::Unknown => {
                write!(f, "{p}: unknown tensor (the model has no such tensor)")
            }
            ConfigProblem::Duplicate => write!(f, "{p}: listed more than once"),
            ConfigProblem::KindMismatch => write!(f, "{p}: kind differs from the model's tensor"),
            ConfigProblem::Invalid(e) => write!(f, "{p}: {e}"),
            ConfigProblem::PathTooLong => write!(f, "{p}: path longer than {MAX_PATH} bytes"),
            ConfigProblem::TooMany => write!(f, "more tensors than the document can hold (at {p})"),
            ConfigProblem::BadHeader => {
                write!(f, "not a {CONFIG_FORMAT} version {CONFIG_VERSION} document")
            }
        }
    }
}

/// Every problem found (up to 16 kept, all counted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The first problems, in model order then tree order.
    pub errors: Vec<ConfigError, 16>,
    /// How many problems there were in all.
    pub total: usize,
}

impl LoadReport {
    pub(crate) fn push_problem(&mut self, path: &str, suffix: &str, problem: ConfigProblem) {
        self.total += 1;
        let mut p = String::new();
        for part in [path, suffix] {
            for c in part.chars() {
                if p.push(c).is_err() {
                    break;
                }
            }
        }
        let _ = self.errors.push(ConfigError { path: p, problem });
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        if self.total > self.errors.len() {
            write!(f, "; and {} more", self.total - self.errors.len())?;
        }
        Ok(())
    }
}

fn copy_str<const M: usize>(s: &str) -> Option<String<M>> {
    let mut out = String::new();
    out.push_str(s).ok()?;
    Some(out)
}

/// The config tree of `model` (nics_fix_pt's `get_fix_configs`, data and
/// grad together).
///
/// # Errors
///
/// [`ConfigProblem::TooMany`] if the model has more than `N` tensors,
/// [`ConfigProblem::PathTooLong`] for a path longer than [`MAX_PATH`].
// The report is the product of a failed load: it is returned by value
// because core has no heap to box it in (about 1.9 KB).
#[allow(clippy::result_large_err)]
pub fn collect_configs<L: Layer, const N: usize>(
    model: &mut L,
) -> Result<ConfigDoc<N>, ConfigError> {
    let mut doc = ConfigDoc {
        format: copy_str(CONFIG_FORMAT).unwrap_or_default(),
        version: CONFIG_VERSION,
        tensors: Vec::new(),
    };
    let mut report = LoadReport::default();
    let ok = walk(model, &mut |name, t| {
        let entry = ConfigEntry {
            name: copy_str(name).unwrap_or_default(),
            kind: t.kind,
            layer: copy_str(t.layer_type).unwrap_or_default(),
            data: t.quant.cfg,
            grad: t.quant.grad_cfg,
        };
        if doc.tensors.push(entry).is_err() && report.total == 0 {
            report.push_problem(name, "", ConfigProblem::TooMany);
        }
    });
    if !ok {
        report.push_problem("", "", ConfigProblem::PathTooLong);
    }
    match report.errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(doc),
    }
}

/// One entry of a tree to load: path, kind (if known) and configs.
#[derive(Clone, Copy, Debug)]
pub struct LoadEntry<'a> {
    /// Dotted path.
    pub name: &'a str,
    /// Kind recorded in the tree, checked against the model if `Some`.
    pub kind: Option<Kind>,
    /// Data config (`None`: keep the model's).
    pub data: Option<&'a QuantConfig>,
    /// Grad config (`None`: keep the model's).
    pub grad: Option<&'a QuantConfig>,
}

/// Load a config tree onto `model` (nics_fix_pt's `load_fix_configs`).
///
/// Every model tensor must appear once (unless `allow_missing`), every
/// entry must name a model tensor of the same kind, every config must
/// pass [`QuantConfig::validate`], and a grouped config must name a
/// grouping its tensor has ([`Group`]). All of that is checked first: on any
/// problem the model is left exactly as it was and the report lists them
/// (paths with `.data`/`.grad` for bad values).
///
/// # Errors
///
/// The [`LoadReport`] of every problem found.
// The report is the product of a failed load: it is returned by value
// because core has no heap to box it in (about 1.9 KB).
#[allow(clippy::result_large_err)]
pub fn apply_configs<L: Layer>(
    model: &mut L,
    entries: &[LoadEntry<'_>],
    allow_missing: bool,
) -> Result<usize, LoadReport> {
    let mut report = LoadReport::default();
    // Entries: valid values, no duplicates.
    for (i, e) in entries.iter().enumerate() {
        if entries.iter().take(i).any(|p| p.name == e.name) {
            report.push_problem(e.name, "", ConfigProblem::Duplicate);
        }
        for (cfg, part) in [(e.data, ".data"), (e.grad, ".grad")] {
            if let Some(Err(err)) = cfg.map(QuantConfig::validate) {
                report.push_problem(e.name, part, ConfigProblem::Invalid(err));
            }
        }
    }
    // Model tensors: present, same kind.
    let mut seen = [false; 512];
    let mut count = 0usize;
    let ok = walk(model, &mut |name, mut t| {
        match entries.iter().enumerate().find(|(_, e)| e.name == name) {
            Some((i, first)) => {
                for (s, e) in seen.iter_mut().zip(entries).skip(i) {
                    if e.name == name {
                        *s = true;
                    }
                }
                if matches!(first.kind, Some(k) if k != t.kind) {
                    report.push_problem(name, "", ConfigProblem::KindMismatch);
                }
                // A grouping the tensor does not have (see `Group`).
                for (which, cfg, part) in [(0, first.data, ".data"), (1, first.grad, ".grad")] {
                    if let Some(Err(err)) = cfg.map(|c| t.check_group(which, c)) {
                        report.push_problem(name, part, ConfigProblem::Invalid(err));
                    }
                }
            }
            None if !allow_missing => report.push_problem(name, "", ConfigProblem::Missing),
            None => {}
        }
        count += 1;
    });
    if !ok {
        report.push_problem("", "", ConfigProblem::PathTooLong);
    }
    for (i, e) in entries.iter().enumerate() {
        let found = if let Some(&s) = seen.get(i) {
            s
        } else {
            // Beyond the bitmap: look the name up again (rare, slow path).
            let mut hit = false;
            walk(model, &mut |name, _| hit |= name == e.name);
            hit
        };
        if !found {
            report.push_problem(e.name, "", ConfigProblem::Unknown);
        }
    }
    if report.total > 0 {
        return Err(report);
    }
    let mut applied = 0;
    walk(model, &mut |name, mut t| {
        if let Some(e) = entries.iter().find(|e| e.name == name) {
            for (which, new) in [(0, e.data), (1, e.grad)] {
                let Some(&new) = new else { continue };
                let cfg = if which == 0 {
                    &mut t.quant.cfg
                } else {
                    &mut t.quant.grad_cfg
                };
                if *cfg != new {
                    // Scales stored for the old config do not belong to the new one.
                    if let Some(g) = t.groups.as_deref_mut() {
                        g.reset(which);
                    }
                }
                *cfg = new;
            }
            applied += 1;
        }
    });
    let _ = count;
    Ok(applied)
}

impl<const N: usize> ConfigDoc<N> {
    /// Load this tree onto `model`; see [`apply_configs`]. The header must
    /// be [`CONFIG_FORMAT`] version [`CONFIG_VERSION`].
    ///
    /// # Errors
    ///
    /// The [`LoadReport`] of every problem; the model is unchanged then.
    // The report is the product of a failed load: it is returned by value
    // because core has no heap to box it in (about 1.9 KB).
    #[allow(clippy::result_large_err)]
    pub fn apply<L: Layer>(&self, model: &mut L) -> Result<usize, LoadReport> {
        if self.format.as_str() != CONFIG_FORMAT || self.version != CONFIG_VERSION {
            let mut r = LoadReport::default();
            r.push_problem("", "", ConfigProblem::BadHeader);
            return Err(r);
        }
        let mut entries: Vec<LoadEntry<'_>, N> = Vec::new();
        for e in &self.tensors {
            let _ = entries.push(LoadEntry {
                name: e.name.as_str(),
                kind: Some(e.kind),
                data: Some(&e.data),
                grad: Some(&e.grad),
            });
        }
        apply_configs(model, &entries, false)
    }
}

/// Which tensors [`set_method`] changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select<'a> {
    /// Every tensor.
    All,
    /// Tensors of layers of this type (`"Linear"`, `"Conv2d"`, ...).
    Type(&'a str),
    /// The tensor with this path, or every tensor under this prefix
    /// (`"fc1"` selects `fc1.weight`, `fc1.bias`, `fc1.output`).
    Name(&'a str),
    /// Tensors of this kind.
    Kind(Kind),
}

/// Which config [`set_method`] changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The data config.
    Data,
    /// The grad config.
    Grad,
    /// Both.
    Both,
}

/// Set the method of the selected tensors' configs (nics_fix_pt's
/// `set_fix_method`, with selection by type or name). Returns how many
/// tensors matched.
pub fn set_method<L: Layer>(
    model: &mut L,
    method: Method,
    select: Select<'_>,
    which: Which,
) -> usize {
    let mut n = 0;
    walk(model, &mut |name, t| {
        if selects(select, name, &t) {
            if which != Which::Grad {
                t.quant.cfg.method = method;
            }
            if which != Which::Data {
                t.quant.grad_cfg.method = method;
            }
            n += 1;
        }
    });
    n
}

/// The method of `cfg` as config tables print it: `none`, `fixed`, `auto`
/// (with the default range method, Max) or `auto/<range>` with the range
/// named as `fixnn quantize --range` names it: `auto/3sigma`,
/// `auto/max10`, `auto/sweep`, `auto/running`, `auto/minmax`.
pub const fn method_label(cfg: &QuantConfig) -> &'static str {
    match (cfg.method, cfg.range) {
        (Method::None, _) => "none",
        (Method::Fixed, _) => "fixed",
        (Method::Auto, RangeMethod::Max) => "auto",
        (Method::Auto, RangeMethod::ThreeSigma) => "auto/3sigma",
        (Method::Auto, RangeMethod::MaxTenPercent) => "auto/max10",
        (Method::Auto, RangeMethod::Sweep) => "auto/sweep",
        (Method::Auto, RangeMethod::Running) => "auto/running",
        (Method::Auto, RangeMethod::MinMax) => "auto/minmax",
    }
}

/// A config's method as the tables print it: [`method_label`], then
/// ` real` for a real-valued scale, ` ch` or ` batch` for a group
/// (`auto real ch`: Auto with one real-valued scale per channel) and
/// ` z<Z>` for a zero point. Pads to the formatter's width.
pub struct ConfigLabel<'a>(pub &'a QuantConfig);

impl fmt::Display for ConfigLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        let mut s: String<40> = String::new();
        let mut parts = [method_label(c), "", ""];
        if c.method != Method::None {
            if c.multiplier != 0 {
                parts[1] = " real";
            }
            parts[2] = match c.group {
                Group::Tensor => "",
                Group::Channel => " ch",
                Group::Batch => " batch",
            };
        }
        for p in parts {
            // At most 12 + 5 + 6 bytes: fits.
            let _ = s.push_str(p);
        }
        if c.zero_point != 0 && c.method != Method::None {
            use fmt::Write as _;
            // " z-32768" at most (validated configs): fits.
            let _ = write!(s, " z{}", c.zero_point);
        }
        f.pad(&s)
    }
}

/// Whether `select` picks the tensor `t` at path `name`.
pub(crate) fn selects(select: Select<'_>, name: &str, t: &TensorMut<'_>) -> bool {
    match select {
        Select::All => true,
        Select::Type(ty) => t.layer_type == ty,
        Select::Kind(k) => t.kind == k,
        Select::Name(p) => {
            name == p
                || (name.len() > p.len()
                    && name.starts_with(p)
                    && name.as_bytes().get(p.len()) == Some(&b'.'))
        }
    }
}

fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::Param => "param",
        Kind::Buffer => "buffer",
        Kind::Activation => "activation",
    }
}

/// Print the config table of `model` (nics_fix_pt's `print_fix_configs`):
/// one row per tensor with its path, layer type, kind, data bits, scale and
/// method ([`method_label`]: Auto names its range method unless it is Max;
/// ` z<Z>` follows for a zero point), grad bits, scale and method, and the
/// data saturation rate.
///
/// # Errors
///
/// Errors of the writer.
pub fn write_table<L: Layer>(model: &mut L, w: &mut dyn fmt::Write) -> fmt::Result {
    writeln!(
        w,
        "{:<28} {:<11} {:<10} {:>5} {:>5} {:<12} {:>5} {:>5} {:<12} {:>7}",
        "name", "layer", "kind", "bits", "scale", "data", "bits", "scale", "grad", "sat%"
    )?;
    let mut result = Ok(());
    walk(model, &mut |name, t| {
        if result.is_err() {
            return;
        }
        let (d, g, s) = (t.quant.cfg, t.quant.grad_cfg, t.quant.stats);
        let rate = if s.data_total > 0 {
            100.0 * s.data as f32 / s.data_total as f32
        } else {
            0.0
        };
        result = writeln!(
            w,
            "{:<28} {:<11} {:<10} {:>5} {:>5} {:<12} {:>5} {:>5} {:<12} {:>7.3}",
            name,
            t.layer_type,
            kind_str(t.kind),
            d.bits,
            d.scale,
            ConfigLabel(&d),
            g.bits,
            g.scale,
            ConfigLabel(&g),
            rate
        );
    });
    result
}

//! Import of nics_fix_pt configuration files: the YAML its MNIST example
//! writes with `yaml.dump({"data": get_fix_configs(data_only=True), "grad":
//! get_fix_configs(grad=True, data_only=True)})`.
//!
//! Layout: `data` and `grad` each map module names to either a map of
//! tensor names to `{bitwidth, method, scale}` (a fixed-point module or
//! `Activation_fix`, whose tensor is `activation`) or, for a nested
//! `FixTopModule`, another such map. PyYAML writes `OrderedDict`s as
//! `!!python/object/apply:collections.OrderedDict` with a list of
//! `[key, value]` pairs; plain mappings are accepted too.
//!
//! `method` is nics_fix_pt's integer (0 none, 1 auto, 2 fixed). `scale` is
//! the exponent `k` in nics_fix_pt before 0.4 and the value `2^k` from 0.4
//! on; [`ScaleForm::Auto`] reads floats that are not whole numbers, or any
//! value written with a decimal point, as `2^k`, and integers as `k`, and
//! the import reports which form it read. Optional `range_method`
//! (0 max, 1 3-sigma, 2 max-10%, 3 sweep) and `stochastic` (bool) keys of
//! later versions are read too, and `range_method: 4` selects fixnn's
//! running range ([`RangeMethod::Running`], not a nics_fix_pt constant;
//! its moving average starts empty).
//!
//! The configs come with fixnn's hardware clamp; to reproduce a
//! nics_fix_pt result exactly, give them nics_fix_pt's own clamp with
//! [`NicsConfigs::set_clamp`] (`fixnn inspect --nics-clamp nics`).

use std::collections::BTreeMap;

use fixnn::layers::Layer;
use fixnn::model::{self, LoadEntry};
use fixnn::{Clamp, Method, QuantConfig, RangeMethod, Rounding};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::{Yaml, YamlLoader};

/// How `scale` values are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleForm {
    /// Decide from the file (see the module docs).
    Auto,
    /// `scale` is the exponent `k` (nics_fix_pt before 0.4).
    Exponent,
    /// `scale` is the value `2^k` (nics_fix_pt 0.4).
    Value,
}

/// The configs of a nics_fix_pt file, by fixnn path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NicsConfigs {
    /// Data configs (`fc1.weight` -> config).
    pub data: BTreeMap<String, QuantConfig>,
    /// Grad configs.
    pub grad: BTreeMap<String, QuantConfig>,
    /// The scale form that was read (`Exponent` or `Value`).
    pub scale_form: Option<ScaleForm>,
}

/// A scalar as read: the number and whether it was written as a float.
fn number(y: &Yaml) -> Option<(f64, bool)> {
    match y {
        Yaml::Integer(i) => Some((*i as f64, false)),
        Yaml::Real(s) => s.parse::<f64>().ok().map(|v| (v, true)),
        _ => None,
    }
}

/// Key/value pairs of a mapping or of PyYAML's OrderedDict form.
fn pairs(y: &Yaml) -> Option<Vec<(String, &Yaml)>> {
    match y {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| k.as_str().map(|k| (k.to_string(), v)))
            .collect(),
        // OrderedDict: [[ [key, value], [key, value], ... ]] (the constructor's argument list).
        Yaml::Array(outer) if outer.len() == 1 => match &outer[0] {
            Yaml::Array(list) => list
                .iter()
                .map(|p| match p {
                    Yaml::Array(kv) if kv.len() == 2 => {
                        kv[0].as_str().map(|k| (k.to_string(), &kv[1]))
                    }
                    _ => None,
                })
                .collect(),
            _ => None,
        },
        Yaml::Array(a) if a.is_empty() => Some(Vec::new()),
        _ => None,
    }
}

/// Whether `y` looks like one tensor's config (`{bitwidth, method, scale, ...}`).
fn is_leaf(y: &Yaml) -> bool {
    pairs(y).is_some_and(|p| {
        p.iter()
            .any(|(k, _)| k == "bitwidth" || k == "method" || k == "scale")
    })
}

struct Raw {
    bits: Option<f64>,
    method: Option<f64>,
    scale: Option<(f64, bool)>,
    range: Option<f64>,
    stochastic: Option<bool>,
}

fn raw_leaf(path: &str, y: &Yaml, errors: &mut Vec<String>) -> Option<Raw> {
    let mut r = Raw {
        bits: None,
        method: None,
        scale: None,
        range: None,
        stochastic: None,
    };
    for (k, v) in pairs(y)? {
        if !matches!(v, Yaml::Integer(_) | Yaml::Real(_) | Yaml::Boolean(_)) {
            errors.push(format!("{path}.{k}: not a number"));
            return None;
        }
        let num = || number(v);
        match k.as_str() {
            "bitwidth" => r.bits = num().map(|n| n.0),
            "method" => r.method = num().map(|n| n.0),
            "scale" => r.scale = num(),
            "range_method" => r.range = num().map(|n| n.0),
            "stochastic" => r.stochastic = v.as_bool(),
            other => {
                errors.push(format!("{path}.{other}: unknown key"));
                return None;
            }
        }
    }
    Some(r)
}

/// Collect the leaves of one tree (`data` or `grad`) under `prefix`.
fn walk(prefix: &str, y: &Yaml, out: &mut Vec<(String, Raw)>, errors: &mut Vec<String>) {
    let Some(children) = pairs(y) else {
        errors.push(format!("{prefix}: expected a mapping"));
        return;
    };
    for (k, v) in children {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if is_leaf(v) {
            if let Some(r) = raw_leaf(&path, v, errors) {
                out.push((path, r));
            }
        } else {
            walk(&path, v, out, errors);
        }
    }
}

fn to_config(
    path: &str,
    r: &Raw,
    form: ScaleForm,
    errors: &mut Vec<String>,
) -> Option<QuantConfig> {
    let bits = match r.bits {
        Some(b) if b.fract() == 0.0 && (2.0..=16.0).contains(&b) => b as u8,
        Some(b) => {
            errors.push(format!("{path}.bitwidth: {b} is outside 2..=16"));
            return None;
        }
        None => 8,
    };
    let method = match r.method.map(|m| m as i64) {
        None | Some(0) => Method::None,
        Some(1) => Method::Auto,
        Some(2) => Method::Fixed,
        Some(m) => {
            errors.push(format!(
                "{path}.method: {m} is not 0 (none), 1 (auto) or 2 (fixed)"
            ));
            return None;
        }
    };
    let scale = match r.scale {
        None => 0.0,
        Some((v, _)) if form == ScaleForm::Value => {
            if v <= 0.0 {
                errors.push(format!("{path}.scale: {v} is not a power of two"));
                return None;
            }
            let k = v.log2();
            if (k - k.round()).abs() > 1e-9 {
                errors.push(format!("{path}.scale: {v} is not a power of two"));
                return None;
            }
            k.round()
        }
        Some((v, _)) => v,
    };
    if scale.fract() != 0.0 || !(-128.0..=127.0).contains(&scale) {
        errors.push(format!(
            "{path}.scale: {scale} is not an exponent in -128..=127"
        ));
        return None;
    }
    let range = match r.range.map(|m| m as i64) {
        None | Some(0) => RangeMethod::Max,
        Some(1) => RangeMethod::ThreeSigma,
        Some(2) => RangeMethod::MaxTenPercent,
        Some(3) => RangeMethod::Sweep,
        Some(4) => RangeMethod::Running,
        Some(m) => {
            errors.push(format!(
                "{path}.range_method: {m} is not 0 (max), 1 (3-sigma), 2 (max-10%), 3 (sweep) or 4 (running)"
            ));
            return None;
        }
    };
    Some(QuantConfig {
        method,
        bits,
        scale: scale as i8,
        range,
        rounding: if r.stochastic == Some(true) {
            Rounding::Stochastic
        } else {
            Rounding::NearestEven
        },
        ..QuantConfig::NONE
    })
}

/// Deepest nesting of mappings and sequences a config may have
/// (nics_fix_pt configs nest 3 or 4 levels).
pub const MAX_YAML_DEPTH: usize = 64;
/// Most nodes a config may have once its aliases are expanded.
pub const MAX_NODES: u64 = 1_000_000;

/// Check the nesting depth and the size with aliases expanded, reading
/// the YAML's events one at a time (without recursion), before the YAML
/// loader builds a tree: the loader recurses once per level and copies
/// the node an alias names, so a deep or alias-bomb file would overflow
/// the stack or exhaust memory.
fn check_shape(text: &str) -> Result<(), String> {
    // Per anchor: (nodes, depth) of the node it names.
    let mut anchors: BTreeMap<usize, (u64, usize)> = BTreeMap::new();
    // Open collections: (anchor, nodes before it, deepest level inside).
    let mut open: Vec<(usize, u64, usize)> = Vec::new();
    let mut nodes: u64 = 0;
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, _) = parser.next_token().map_err(|e| format!("not YAML: {e}"))?;
        let depth = open.len();
        let (add, reach) = match event {
            Event::StreamEnd => return Ok(()),
            Event::Scalar(_, _, aid, _) => {
                if aid != 0 {
                    anchors.insert(aid, (1, 0));
                }
                (1, depth)
            }
            Event::Alias(aid) => {
                let (n, d) = anchors.get(&aid).copied().unwrap_or((1, 0));
                (n, depth + d)
            }
            Event::SequenceStart(aid, _) | Event::MappingStart(aid, _) => {
                open.push((aid, nodes, depth + 1));
                (1, depth + 1)
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((aid, start, deepest)) = open.pop() {
                    if aid != 0 {
                        anchors.insert(aid, (nodes - start, deepest - depth + 1));
                    }
                    if let Some(outer) = open.last_mut() {
                        outer.2 = outer.2.max(deepest);
                    }
                }
                (0, 0)
            }
            _ => (0, 0),
        };
        nodes = nodes.saturating_add(add);
        if let Some(outer) = open.last_mut() {
            outer.2 = outer.2.max(reach);
        }
        if reach > MAX_YAML_DEPTH {
            return Err(format!("YAML nested deeper than {MAX_YAML_DEPTH} levels"));
        }
        if nodes > MAX_NODES {
            return Err(format!(
                "YAML has more than {MAX_NODES} nodes (with its aliases expanded)"
            ));
        }
    }
}

/// Parse a nics_fix_pt YAML config.
///
/// # Errors
///
/// One message listing every bad path; nesting deeper than
/// [`MAX_YAML_DEPTH`] and duplicated keys are errors.
pub fn parse(text: &str, form: ScaleForm) -> Result<NicsConfigs, String> {
    check_shape(text)?;
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let Some(doc) = docs.first() else {
        return Err("empty YAML document".into());
    };
    let Some(top) = pairs(doc) else {
        return Err("expected a mapping with `data` and `grad`".into());
    };
    let mut errors = Vec::new();
    let mut trees: [Vec<(String, Raw)>; 2] = [Vec::new(), Vec::new()];
    for (k, v) in &top {
        match k.as_str() {
            "data" => walk("", v, &mut trees[0], &mut errors),
            "grad" => walk("", v, &mut trees[1], &mut errors),
            other => errors.push(format!("{other}: unknown key (expected data and grad)")),
        }
    }
    let form = match form {
        ScaleForm::Auto => {
            let any_value = trees.iter().flatten().any(
                |(_, r)| matches!(r.scale, Some((v, is_float)) if is_float || v.fract() != 0.0),
            );
            if any_value {
                ScaleForm::Value
            } else {
                ScaleForm::Exponent
            }
        }
        f => f,
    };
    let mut out = NicsConfigs {
        scale_form: Some(form),
        ..Default::default()
    };
    for (tree, map) in trees.iter().zip([&mut out.data, &mut out.grad]) {
        for (path, raw) in tree {
            if let Some(c) = to_config(path, raw, form, &mut errors) {
                map.insert(path.clone(), c);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("; "))
    }
}

impl NicsConfigs {
    /// Give every config the clamp `clamp`: [`Clamp::Nics`] reproduces
    /// nics_fix_pt's `clamp(.., -2^scale, 2^scale)` exactly (code
    /// `2^(bits-1)` included), [`Clamp::Hardware`] is fixnn's default.
    /// Full-precision configs (`method` 0) at 16 bits keep the hardware
    /// clamp (it does not apply to them, and `nics` needs `bits <= 15`).
    ///
    /// # Errors
    ///
    /// With [`Clamp::Nics`], one message naming every quantized config of
    /// 16 bits (code `2^15` does not fit 16 bits); nothing changes then.
    pub fn set_clamp(&mut self, clamp: Clamp) -> Result<(), String> {
        let mut errors = Vec::new();
        for (part, map) in [("data", &self.data), ("grad", &self.grad)] {
            for (path, c) in map {
                let mut next = *c;
                next.clamp = clamp;
                if c.method != Method::None {
                    if let Err(e) = next.validate() {
                        errors.push(format!("{path} ({part}): {e}"));
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        for map in [&mut self.data, &mut self.grad] {
            for c in map.values_mut() {
                let mut next = *c;
                next.clamp = clamp;
                if next.validate().is_ok() {
                    *c = next;
                }
            }
        }
        Ok(())
    }

    /// Load onto `model`: each nics_fix_pt tensor must exist in the model
    /// (`fc1.weight`, `fix0.activation`); model tensors the file does not
    /// mention keep their configs. Nothing changes on error.
    ///
    /// # Errors
    ///
    /// One message naming every bad path.
    pub fn apply<L: Layer>(&self, model: &mut L) -> Result<usize, String> {
        let mut names: Vec<&String> = self.data.keys().chain(self.grad.keys()).collect();
        names.sort();
        names.dedup();
        let entries: Vec<LoadEntry<'_>> = names
            .iter()
            .map(|n| LoadEntry {
                name: n,
                kind: None,
                data: self.data.get(*n),
                grad: self.grad.get(*n),
            })
            .collect();
        model::apply_configs(model, &entries, true).map_err(|r| r.to_string())
    }
}

//! Per-call config overrides (nics_fix_pt's `kwarg_cfg`): run one pass with
//! some tensors' configs replaced, then put the stored configs back.
//!
//! nics_fix_pt lets a caller pass `forward(x, **kwarg_cfg)` with configs
//! for some of the module's tensors; they are used for that call only, and
//! the module's own configs are untouched. [`with_overrides`] does the same
//! without a heap: the configs of every tensor an [`Override`] selects are
//! saved into a caller-provided buffer of [`SavedConfigs`], the overrides
//! are applied, the closure runs, and the saved configs are written back,
//! so afterwards every config is exactly as before the call, including
//! the scale of an overridden tensor that [`Method::Auto`](crate::Method::Auto)
//! chose during the call. Tensors no override selects behave as in any other
//! pass (an Auto scale chosen during the call stays, as it would without
//! overrides).
//!
//! Only configs are restored: the values a pass computes (outputs, a
//! parameter's quantized copy, batch-norm running statistics updated in a
//! training-mode pass) and the saturation counters stay as the pass left
//! them, as in nics_fix_pt.
//!
//! Grouped override configs ([`Group::Channel`], [`Group::Batch`]) are
//! refused: the pass would store its group scales where the tensor's own
//! grouped config keeps them. An override may replace a grouped config by
//! a tensor-wide one (the stored group scales are then untouched).
//!
//! The two halves are also available on their own, for a pass that is not
//! one closure: [`apply_overrides`] then [`restore_configs`].
//!
//! # Examples
//!
//! ```
//! use fixnn::backend::RefBackend;
//! use fixnn::layers::{Layer, Linear};
//! use fixnn::model::{with_overrides, Override, SavedConfigs, Select};
//! use fixnn::tensor::{Ctx, Tensor, S2};
//! use fixnn::{Clamp, QuantConfig};
//!
//! let mut fc = Linear::<2, 1, 1>::new(0);
//! fc.weight.master = [[0.75, -0.5]];
//! fc.weight.quant.cfg = QuantConfig::auto(8);
//! let mut x = Tensor::<S2<1, 2>>::zeros();
//! x.set_f32(&[1.0, 1.0])?;
//! let ctx = Ctx::train(1, 0);
//!
//! // This call only: the weight at 2 bits with nics_fix_pt's clamp.
//! let mut w2 = QuantConfig::auto(2);
//! w2.clamp = Clamp::Nics;
//! let over = [Override::data(Select::Name("weight"), w2)];
//! let mut saved = [SavedConfigs::default(); 4];
//! let y = with_overrides(&mut fc, &over, &mut saved, |fc| {
//!     fc.forward(&RefBackend, &ctx, &x).map(|()| fc.output().v[0][0])
//! })??;
//! assert_eq!(y, 0.5); // codes 2 and -1 of step 0.5 (scale 0): 1.0 - 0.5
//! assert_eq!(fc.weight.quant.cfg, QuantConfig::auto(8)); // scale 0 as before
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;

use super::configs::{selects, walk, Select};
use crate::error::Error;
use crate::layers::Layer;
use crate::quant::{Group, QuantConfig};

/// Configs to use for one call instead of the stored ones, for the tensors
/// `select` picks (by name or prefix, layer type, kind, or all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override<'a> {
    /// Which tensors.
    pub select: Select<'a>,
    /// Their data config for the call (`None`: keep the stored one).
    pub data: Option<QuantConfig>,
    /// Their grad config for the call (`None`: keep the stored one).
    pub grad: Option<QuantConfig>,
}

impl<'a> Override<'a> {
    /// Override the data config of the selected tensors.
    pub const fn data(select: Select<'a>, cfg: QuantConfig) -> Self {
        Override {
            select,
            data: Some(cfg),
            grad: None,
        }
    }

    /// Override the grad config of the selected tensors.
    pub const fn grad(select: Select<'a>, cfg: QuantConfig) -> Self {
        Override {
            select,
            data: None,
            grad: Some(cfg),
        }
    }
}

/// The stored configs of one tensor, saved by [`apply_overrides`] (a slot
/// of the caller's buffer; 36 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SavedConfigs {
    /// Position of the tensor in [`Layer::visit`] order.
    pub index: u32,
    /// Its stored data config.
    pub data: QuantConfig,
    /// Its stored grad config.
    pub grad: QuantConfig,
}

/// Why overrides were refused. Nothing was changed then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OverrideError {
    /// Override `index` selects no tensor of the model (an unknown name or
    /// type).
    NoMatch {
        /// Position of the override in the slice.
        index: usize,
    },
    /// The overrides select more tensors than the save buffer holds.
    TooMany {
        /// Tensors selected.
        needed: usize,
        /// Slots in the buffer.
        capacity: usize,
    },
    /// A config of override `index` is not valid ([`QuantConfig::validate`]).
    Invalid {
        /// Position of the override in the slice.
        index: usize,
        /// `true` for its grad config, `false` for its data config.
        grad: bool,
        /// What is wrong.
        error: Error,
    },
}

impl fmt::Display for OverrideError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            OverrideError::NoMatch { index } => {
                write!(f, "override {index} selects no tensor of the model")
            }
            OverrideError::TooMany { needed, capacity } => write!(
                f,
                "overrides select {needed} tensors, the save buffer holds {capacity}"
            ),
            OverrideError::Invalid { index, grad, error } => {
                let which = if grad { "grad" } else { "data" };
                write!(f, "override {index}: {which} config: {error}")
            }
        }
    }
}

impl core::error::Error for OverrideError {}

/// Apply `overrides` to `model` (later overrides win where two select the
/// same tensor), saving the stored configs of every selected tensor into
/// `saved` in visit order. Returns how many slots were used: pass
/// `&saved[..n]` to [`restore_configs`] after the pass.
///
/// # Errors
///
/// [`OverrideError::Invalid`] for a config that fails
/// [`QuantConfig::validate`] or is grouped (`Unsupported` naming `group`),
/// [`OverrideError::NoMatch`] for an override that selects no tensor,
/// [`OverrideError::TooMany`] if more tensors are
/// selected than `saved` holds. Everything is checked first: on error the
/// model is unchanged.
pub fn apply_overrides<L: Layer>(
    model: &mut L,
    overrides: &[Override<'_>],
    saved: &mut [SavedConfigs],
) -> Result<usize, OverrideError> {
    for (index, o) in overrides.iter().enumerate() {
        for (cfg, grad) in [(o.data, false), (o.grad, true)] {
            if let Some(Err(error)) = cfg.as_ref().map(QuantConfig::validate) {
                return Err(OverrideError::Invalid { index, grad, error });
            }
            // The pass would store its group scales where the tensor's own
            // grouped config keeps them.
            if cfg.is_some_and(|c| c.group != Group::Tensor) {
                let error = Error::Unsupported { field: "group" };
                return Err(OverrideError::Invalid { index, grad, error });
            }
        }
    }
    // Every override must select something: one walk per override, so
    // that any number of overrides is checked without a bitmap.
    for (index, o) in overrides.iter().enumerate() {
        let mut hit = false;
        walk(model, &mut |name, t| hit |= selects(o.select, name, &t));
        if !hit {
            return Err(OverrideError::NoMatch { index });
        }
    }
    // Save, counting what would not fit.
    let (mut used, mut needed, mut i) = (0usize, 0usize, 0u32);
    walk(model, &mut |name, t| {
        if overrides.iter().any(|o| selects(o.select, name, &t)) {
            needed += 1;
            if let Some(slot) = saved.get_mut(used) {
                *slot = SavedConfigs {
                    index: i,
                    data: t.quant.cfg,
                    grad: t.quant.grad_cfg,
                };
                used += 1;
            }
        }
        i = i.wrapping_add(1);
    });
    if needed > used {
        return Err(OverrideError::TooMany {
            needed,
            capacity: saved.len(),
        });
    }
    walk(model, &mut |name, t| {
        for o in overrides {
            if selects(o.select, name, &t) {
                if let Some(d) = o.data {
                    t.quant.cfg = d;
                }
                if let Some(g) = o.grad {
                    t.quant.grad_cfg = g;
                }
            }
        }
    });
    Ok(used)
}

/// Write configs saved by [`apply_overrides`] back onto the tensors they
/// came from (by visit position). Returns how many tensors were restored.
pub fn restore_configs<L: Layer>(model: &mut L, saved: &[SavedConfigs]) -> usize {
    let (mut i, mut n) = (0u32, 0usize);
    walk(model, &mut |_, t| {
        if let Some(s) = saved.iter().find(|s| s.index == i) {
            t.quant.cfg = s.data;
            t.quant.grad_cfg = s.grad;
            n += 1;
        }
        i = i.wrapping_add(1);
    });
    n
}

/// Run `f` on `model` with `overrides` applied, then restore every
/// overridden tensor's configs exactly (nics_fix_pt's `kwarg_cfg`; see the
/// [`model`](crate::model) docs). `saved` holds one slot per selected tensor.
///
/// Returns what `f` returns (a pass's own `Result` comes back inside:
/// the configs are restored whether the pass failed or not).
///
/// # Errors
///
/// As [`apply_overrides`]; `f` does not run and nothing changes then.
pub fn with_overrides<L: Layer, R>(
    model: &mut L,
    overrides: &[Override<'_>],
    saved: &mut [SavedConfigs],
    f: impl FnOnce(&mut L) -> R,
) -> Result<R, OverrideError> {
    let n = apply_overrides(model, overrides, saved)?;
    let r = f(model);
    restore_configs(model, saved.get(..n).unwrap_or_default());
    Ok(r)
}

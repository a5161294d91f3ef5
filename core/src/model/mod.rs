//! Models as trees of named tensors: what nics_fix_pt's `FixTopModule`
//! does (`get_fix_configs`, `load_fix_configs`, `print_fix_configs`,
//! `set_fix_method`, `fix_state_dict`, and `forward(x, **kwarg_cfg)`:
//! [`with_overrides`]), without a heap.
//!
//! Every layer walks its tensors with [`Layer::visit`](crate::layers::Layer::visit):
//! a leaf layer reports each of its tensors ([`TensorMut`]); a container
//! ([`Chain`](crate::layers::Chain), a struct with `#[derive(Model)]`)
//! reports each child between [`Visitor::enter`] and [`Visitor::leave`].
//! The path of a tensor is the names entered, then the tensor's name,
//! joined by dots: `fc1.weight`, `block.conv.bias`, `0.output`.

mod configs;
mod json;
mod overrides;
mod path;
mod read;
mod state;

pub use configs::{
    apply_configs, collect_configs, method_label, set_method, walk, write_table, ConfigDoc,
    ConfigEntry, ConfigError, ConfigLabel, ConfigProblem, LoadEntry, LoadReport, Select, Which,
    CONFIG_FORMAT, CONFIG_VERSION, MAX_TYPE,
};
pub use json::{check_json, check_json_with, JsonProblem, KeyMemory, MAX_DEPTH};
pub use overrides::{
    apply_overrides, restore_configs, with_overrides, Override, OverrideError, SavedConfigs,
};
pub(crate) use path::index_str;
pub use path::{PathBuf, MAX_PATH};
pub use read::{ReadError, ReadProblem, ReadResult, MAX_NAME};
pub use state::{
    apply_state, FormatJson, GroupEntry, StateEntry, StateView, STATE_FORMAT, STATE_VERSION,
};

use crate::error::Error;
use crate::quant::{Format, Group, QuantConfig};
use crate::tensor::{GroupStore, Quantized};

/// What a named tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A trainable parameter (weight, bias, gamma, beta).
    Param,
    /// A persistent buffer without gradient (running mean and variance).
    Buffer,
    /// A layer's output (an activation), recomputed by every forward pass.
    Activation,
}

/// The optimizer's view of a parameter.
pub struct ParamState<'a> {
    /// f32 master values.
    pub master: &'a mut [f32],
    /// Optimizer state (SGD momentum).
    pub momentum: &'a mut [f32],
    /// Gradient with respect to the master values (after the last backward).
    pub grad: &'a [f32],
}

/// Mutable access to one named tensor during a walk.
pub struct TensorMut<'a> {
    /// Type name of the layer that owns the tensor (`"Linear"`, ...).
    pub layer_type: &'static str,
    /// The tensor's name within its layer (`"weight"`, `"running_mean"`, `"output"`).
    pub name: &'static str,
    /// Parameter, buffer or activation.
    pub kind: Kind,
    /// Data and grad configs, id and saturation counters.
    pub quant: &'a mut Quantized,
    /// The values the passes use (exact codes of `fmt` when it is `Some`).
    pub values: &'a mut [f32],
    /// The format of `values`.
    pub fmt: &'a mut Option<Format>,
    /// Master values, momentum and gradient (parameters only).
    pub param: Option<ParamState<'a>>,
    /// Where the per-group scales of grouped configs are kept (`None`: the
    /// tensor refuses grouped configs, e.g. a batch-norm buffer).
    pub groups: Option<&'a mut dyn GroupStore>,
}

impl TensorMut<'_> {
    /// Whether this tensor can take `cfg` as its config `which` (`0` data,
    /// `1` gradient) as far as groups go: a tensor-wide config always, a
    /// grouped one when the tensor has that grouping
    /// ([`GroupStore::check`]).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] naming `group` (a grouping the tensor does not
    /// have, or no group storage at all) or `multiplier` (real-valued
    /// groups on a tensor that keeps power-of-two group scales only).
    pub fn check_group(&mut self, which: usize, cfg: &QuantConfig) -> Result<(), Error> {
        if cfg.group == Group::Tensor {
            return Ok(());
        }
        match self.groups.as_deref_mut() {
            Some(g) => g.check(which, cfg),
            None => Err(Error::Unsupported { field: "group" }),
        }
    }
}

/// Receives the tensors of a model, in a fixed order.
pub trait Visitor {
    /// A child layer called `name` begins (a struct field, a sequence index).
    fn enter(&mut self, name: &str);
    /// The child layer entered last ends.
    fn leave(&mut self);
    /// A tensor of the current layer.
    fn tensor(&mut self, t: TensorMut<'_>);
}

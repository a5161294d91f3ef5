//! `MODEL.json`: the architecture, every tensor's configs (defaults, then
//! overrides by kind, layer type or name), the optimizer and the schedule.
//!
//! ```json
//! {
//!   "name": "mnist-mlp",
//!   "architecture": "mnist-mlp",
//!   "dataset": "mnist",
//!   "batch": 64,
//!   "configs": [
//!     {"select": {"kind": "param"}, "data": {"method": "auto", "bits": 8, "scale": 0}},
//!     {"select": {"type": "Quant"}, "data": {"method": "auto", "bits": 8, "scale": 0}},
//!     {"select": {"name": "fc2.output"}, "grad": {"method": "auto", "bits": 8, "scale": 0}}
//!   ],
//!   "optimizer": {"lr": 0.01, "momentum": 0.5, "weight_decay": 0.0},
//!   "schedule": {"epochs": 1},
//!   "seed": 1
//! }
//! ```
//!
//! `configs` rules apply in order, each to the tensors its `select` picks
//! (`{"all": true}`, `{"kind": "param"|"buffer"|"activation"}`,
//! `{"type": "Linear"}`, `{"name": "fc1"}` for a path or a prefix), setting
//! the data and/or grad config; tensors no rule picks stay at full
//! precision. Training uses the configs as written (Auto chooses scales from
//! the data); the test pass after each epoch runs in eval mode, where Auto
//! acts as Fixed with the scales training chose, as nics_fix_pt's MNIST
//! example tests with `FIX_FIXED`.

use std::path::Path;

use fixnn::layers::Layer;
use fixnn::model::{self, Kind};
use fixnn::optim::{FixedMaster, Sgd};
use fixnn::QuantConfig;
use serde::{Deserialize, Serialize};

/// The architectures this build of `fixnn` has compiled in (layer sizes
/// are const generics, so a JSON file selects one of these).
pub const ARCHITECTURES: &[&str] = &["mnist-mlp", "lenet"];

/// Which tensors a config rule applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Selector {
    /// Every tensor (`{"all": true}`).
    All(bool),
    /// Tensors of this kind.
    Kind(Kind),
    /// Tensors of layers of this type.
    Type(String),
    /// The tensor with this path or every tensor under this prefix.
    Name(String),
}

/// One config rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The tensors it applies to.
    pub select: Selector,
    /// Data config to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<QuantConfig>,
    /// Grad config to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad: Option<QuantConfig>,
}

/// SGD settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    /// Learning rate.
    pub lr: f32,
    /// Momentum.
    #[serde(default)]
    pub momentum: f32,
    /// Weight decay.
    #[serde(default)]
    pub weight_decay: f32,
    /// Fixed-point master: bits of master values and momentum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_master: Option<[u8; 2]>,
}

/// Training schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Epochs (the command line's `--epochs` overrides it).
    pub epochs: u32,
    /// Multiply the learning rate by `gamma` every `step_epochs` epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_step: Option<(u32, f32)>,
}

/// A model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Run name (default output directory `runs/<name>`).
    pub name: String,
    /// One of [`ARCHITECTURES`].
    pub architecture: String,
    /// `mnist` or `fashion-mnist`.
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// Batch size (must be the compiled one, 64).
    pub batch: usize,
    /// Config rules, applied in order.
    #[serde(default)]
    pub configs: Vec<Rule>,
    /// The optimizer.
    pub optimizer: OptimizerSpec,
    /// The schedule.
    pub schedule: ScheduleSpec,
    /// Seed of initialisation, shuffling and stochastic rounding (the
    /// command line's `--seed` overrides it).
    #[serde(default)]
    pub seed: u64,
}

fn default_dataset() -> String {
    "mnist".into()
}

impl ModelSpec {
    /// Parse and check a model file.
    ///
    /// # Errors
    ///
    /// A message naming the file and the field that is wrong.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse and check model JSON.
    ///
    /// # Errors
    ///
    /// A message naming the field that is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        crate::configs::check_json(text)?;
        let spec: ModelSpec = serde_json::from_str(text).map_err(|e| e.to_string())?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        if !ARCHITECTURES.contains(&self.architecture.as_str()) {
            return Err(format!(
                "architecture: `{}` is not compiled in (available: {})",
                self.architecture,
                ARCHITECTURES.join(", ")
            ));
        }
        if !["mnist", "fashion-mnist"].contains(&self.dataset.as_str()) {
            return Err(format!(
                "dataset: `{}` is not mnist or fashion-mnist",
                self.dataset
            ));
        }
        if self.batch != crate::arch::BATCH {
            return Err(format!(
                "batch: {} is not the compiled batch size {}",
                self.batch,
                crate::arch::BATCH
            ));
        }
        for (i, r) in self.configs.iter().enumerate() {
            for (c, part) in [(&r.data, "data"), (&r.grad, "grad")] {
                if let Some((c, Err(e))) = c.as_ref().map(|c| (c, c.validate())) {
                    let e = crate::configs::invalid(c, e);
                    return Err(format!("configs[{i}].{part}: {e}"));
                }
            }
            if r.data.is_none() && r.grad.is_none() {
                return Err(format!("configs[{i}]: sets neither data nor grad"));
            }
        }
        let o = &self.optimizer;
        let finite = o.lr.is_finite() && o.momentum.is_finite() && o.weight_decay.is_finite();
        if !(finite && o.lr > 0.0) {
            return Err(
                "optimizer: lr must be positive and finite, momentum and weight_decay finite"
                    .into(),
            );
        }
        if let Some([a, b]) = o.fixed_master {
            if !(2..=16).contains(&a) || !(2..=16).contains(&b) {
                return Err("optimizer.fixed_master: bits must be in 2..=16".into());
            }
        }
        Ok(())
    }

    /// The SGD optimizer of this spec at `epoch` (0-based; step decay applied).
    pub fn sgd(&self, epoch: u32) -> Sgd {
        let o = &self.optimizer;
        let mut lr = o.lr;
        if let Some((every, gamma)) = self.schedule.lr_step {
            for _ in 0..epoch.checked_div(every).unwrap_or(0) {
                lr *= gamma;
            }
        }
        Sgd {
            fixed_master: o.fixed_master.map(|[bits, momentum_bits]| FixedMaster {
                bits,
                momentum_bits,
            }),
            ..Sgd::new(lr, o.momentum, o.weight_decay)
        }
    }

    /// Apply the config rules to `model`.
    ///
    /// Every rule is checked before any is applied, so on error the model
    /// keeps the configs it had.
    ///
    /// # Errors
    ///
    /// A rule that selects nothing (a misspelt name or type), or that
    /// gives a tensor a grouping it cannot have (naming the rule, the
    /// tensor and why).
    pub fn apply_configs<L: Layer>(&self, model: &mut L) -> Result<(), String> {
        for (i, r) in self.configs.iter().enumerate() {
            let mut hits = 0;
            let mut bad = None;
            model::walk(model, &mut |name, mut t| {
                if !r.select.selects(name, &t) {
                    return;
                }
                hits += 1;
                // A grouping the tensor does not have (a parameter per
                // batch item, a buffer, real-valued activation groups).
                for (which, part, c) in [(0, "data", r.data), (1, "grad", r.grad)] {
                    let Some(c) = c else { continue };
                    if let (Err(e), None) = (t.check_group(which, &c), &bad) {
                        let why = match (t.kind, c.group, e) {
                            (model::Kind::Param, fixnn::Group::Batch, _) => {
                                "a parameter has no batch items (\"channel\" gives one scale per output channel)".to_string()
                            }
                            (model::Kind::Buffer, _, _) => {
                                "a buffer keeps no group scales (use group \"tensor\")".to_string()
                            }
                            (_, _, fixnn::Error::Unsupported { field: "multiplier" }) => {
                                "an activation's group scales are powers of two (real-valued groups, a multiplier, are for parameters)".to_string()
                            }
                            (_, _, e) => e.to_string(),
                        };
                        bad = Some(format!(
                            "configs[{i}].{part}: group {:?} on {name} ({} of {}): {why}",
                            c.group,
                            kind_name(t.kind),
                            t.layer_type
                        ));
                    }
                }
            });
            if let Some(e) = bad {
                return Err(e);
            }
            if hits == 0 {
                return Err(format!(
                    "configs[{i}].select: {:?} matches no tensor of {}",
                    r.select, self.architecture
                ));
            }
        }
        for r in &self.configs {
            model::walk(model, &mut |name, t| {
                if r.select.selects(name, &t) {
                    if let Some(d) = r.data {
                        t.quant.cfg = d;
                    }
                    if let Some(g) = r.grad {
                        t.quant.grad_cfg = g;
                    }
                }
            });
        }
        Ok(())
    }
}

impl Selector {
    /// Whether the rule selects tensor `t`, called `name`.
    fn selects(&self, name: &str, t: &model::TensorMut<'_>) -> bool {
        match self {
            Selector::All(all) => *all,
            Selector::Kind(k) => t.kind == *k,
            Selector::Type(ty) => t.layer_type == ty,
            Selector::Name(p) => {
                name == p
                    || (name.starts_with(p.as_str()) && name.as_bytes().get(p.len()) == Some(&b'.'))
            }
        }
    }
}

fn kind_name(k: model::Kind) -> &'static str {
    match k {
        model::Kind::Param => "a parameter",
        model::Kind::Buffer => "a buffer",
        model::Kind::Activation => "an activation",
    }
}

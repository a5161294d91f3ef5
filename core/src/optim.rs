//! Optimizers that update f32 master parameters.

use crate::layers::Layer;
use crate::tensor::ParamMut;

/// Stochastic gradient descent with momentum and weight decay, as
/// `torch.optim.SGD` (no dampening, no Nesterov):
///
/// `d = g + weight_decay * p; m = momentum * m + d; p = p - lr * m`,
///
/// element by element in f32 in that order (the momentum buffer starts at
/// zero, which equals PyTorch's first-step initialisation `m = d`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor (0 for plain SGD).
    pub momentum: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
}

impl Sgd {
    /// Update one parameter from its gradient.
    pub fn update(&self, p: ParamMut<'_>) {
        for ((w, m), &g) in p.master.iter_mut().zip(p.momentum.iter_mut()).zip(p.grad) {
            let d = g + self.weight_decay * *w;
            *m = self.momentum * *m + d;
            *w -= self.lr * *m;
        }
    }

    /// Update every parameter of `layer` (after its backward pass).
    pub fn step<L: Layer>(&self, layer: &mut L) {
        layer.visit_params(&mut |p| self.update(p));
    }
}

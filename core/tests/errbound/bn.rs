//! The float64 reference of `BatchNorm` with running error bounds (see
//! `grad_batchnorm.rs` for what is compared and the bounds).

use super::*;
use fixnn::layers::ChannelShape;

#[derive(Clone, Copy)]
pub struct Dims {
    pub b: usize,
    pub c: usize,
    pub sp: usize,
}

impl Dims {
    pub fn of<S: ChannelShape>() -> Self {
        Dims {
            b: S::BATCH,
            c: S::CHANNELS,
            sp: S::SPATIAL,
        }
    }
    pub fn n(&self) -> usize {
        self.b * self.sp
    }
    /// Flat indices of channel `c`, in the layer's summation order.
    pub fn channel(&self, c: usize) -> Vec<usize> {
        (0..self.b)
            .flat_map(|bi| (0..self.sp).map(move |p| (bi * self.c + c) * self.sp + p))
            .collect()
    }
    pub fn chan_of(&self, i: usize) -> usize {
        (i / self.sp) % self.c
    }
}

pub struct Ref {
    pub mean: Vec<E>,
    pub var: Vec<E>,
    pub var_u: Vec<E>,
    pub inv: Vec<E>,
    pub y: Vec<E>,
    pub dgamma: Vec<E>,
    pub dbeta: Vec<E>,
    pub dx: Vec<E>,
}

/// Exact statistics of quantized values (integer codes of `step`).
pub fn exact_stats(xs: &[f64], step: f64) -> (f64, f64, f64) {
    let codes: Vec<i128> = xs.iter().map(|&x| (x / step) as i128).collect();
    let n = codes.len() as i128;
    let s1: i128 = codes.iter().sum();
    let s2: i128 = codes.iter().map(|q| q * q).sum();
    let num = (n * s2 - s1 * s1) as f64;
    let nf = n as f64;
    (
        s1 as f64 / nf * step,
        num / (nf * nf) * step * step,
        num / (nf * (nf - 1.0)) * step * step,
    )
}

/// The layer's computation in exact arithmetic with error bounds.
/// `running`: eval-mode statistics; otherwise batch statistics, exact when
/// the input has a format.
#[allow(clippy::too_many_arguments)]
pub fn reference(
    d: Dims,
    x: &[f32],
    x_fmt: Option<Format>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    running: Option<(&[f32], &[f32])>,
    dy: &[f32],
) -> Ref {
    let n = E::exact(d.n() as f64);
    let mut r = Ref {
        mean: vec![],
        var: vec![],
        var_u: vec![],
        inv: vec![],
        y: vec![E::exact(0.0); x.len()],
        dgamma: vec![],
        dbeta: vec![],
        dx: vec![E::exact(0.0); x.len()],
    };
    for c in 0..d.c {
        let idx = d.channel(c);
        let xs: Vec<f64> = idx.iter().map(|&i| x[i] as f64).collect();
        let (mean, var, var_u) = match (running, x_fmt) {
            (Some((rm, rv)), _) => (
                E::exact(rm[c] as f64),
                E::exact(rv[c] as f64),
                E::exact(rv[c] as f64),
            ),
            (None, Some(f)) => {
                let (m, v, vu) = exact_stats(&xs, f.step() as f64);
                (E::rounded(m), E::rounded(v), E::rounded(vu))
            }
            (None, None) => {
                let mean = sum(xs.iter().map(|&x| E::exact(x))).div(n);
                let ss = xs.iter().fold(E::exact(0.0), |acc, &x| {
                    let dd = E::exact(x).sub(mean);
                    acc.add(dd.mul(dd))
                });
                let nm1 = E::exact(d.n() as f64 - 1.0);
                (mean, ss.div(n), ss.div(nm1))
            }
        };
        let inv = E::exact(1.0).div(var.add(E::exact(eps as f64)).sqrt());
        let (g, b) = (E::exact(gamma[c] as f64), E::exact(beta[c] as f64));
        let xh: Vec<E> = xs.iter().map(|&x| E::exact(x).sub(mean).mul(inv)).collect();
        for (&i, &h) in idx.iter().zip(&xh) {
            r.y[i] = g.mul(h).add(b);
        }
        // Backward.
        let mut sum_dy = E::exact(0.0);
        let mut sum_dyxh = E::exact(0.0);
        for (&i, &h) in idx.iter().zip(&xh) {
            let gi = E::exact(dy[i] as f64);
            sum_dy = sum_dy.add(gi);
            sum_dyxh = sum_dyxh.add(gi.mul(h));
        }
        let k = g.mul(inv);
        let (m1, m2) = (sum_dy.div(n), sum_dyxh.div(n));
        for (&i, &h) in idx.iter().zip(&xh) {
            let gi = E::exact(dy[i] as f64);
            r.dx[i] = if running.is_some() {
                k.mul(gi)
            } else {
                k.mul(gi.sub(m1).sub(h.mul(m2)))
            };
        }
        r.mean.push(mean);
        r.var.push(var);
        r.var_u.push(var_u);
        r.inv.push(inv);
        r.dgamma.push(sum_dyxh);
        r.dbeta.push(sum_dy);
    }
    r
}

/// Plain f64 batch norm (for finite differences).
pub fn bn_f64(
    d: Dims,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
    running: Option<(&[f64], &[f64])>,
) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for c in 0..d.c {
        let idx = d.channel(c);
        let n = idx.len() as f64;
        let (mean, var) = match running {
            Some((m, v)) => (m[c], v[c]),
            None => {
                let m = idx.iter().map(|&i| x[i]).sum::<f64>() / n;
                (m, idx.iter().map(|&i| (x[i] - m).powi(2)).sum::<f64>() / n)
            }
        };
        for &i in &idx {
            y[i] = gamma[c] * (x[i] - mean) / (var + eps).sqrt() + beta[c];
        }
    }
    y
}

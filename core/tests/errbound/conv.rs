//! The float64 reference of `ConvBn` with running error bounds (see
//! `grad_convbn.rs` for what is compared and the bounds).

use super::*;
use fixnn::backend::ConvGeom;

#[derive(Clone, Copy)]
pub struct G(pub ConvGeom);

impl G {
    pub fn cpg(&self) -> usize {
        self.0.cin / self.0.groups
    }
    pub fn opg(&self) -> usize {
        self.0.cout / self.0.groups
    }
    pub fn n(&self) -> usize {
        self.0.batch * self.0.oh * self.0.ow
    }
    pub fn yi(&self, b: usize, co: usize, oy: usize, ox: usize) -> usize {
        ((b * self.0.cout + co) * self.0.oh + oy) * self.0.ow + ox
    }
    pub fn xi(&self, b: usize, c: usize, iy: usize, ix: usize) -> usize {
        ((b * self.0.cin + c) * self.0.h + iy) * self.0.w + ix
    }
    pub fn wi(&self, co: usize, ci: usize, ky: usize, kx: usize) -> usize {
        ((co * self.cpg() + ci) * self.0.kh + ky) * self.0.kw + kx
    }
    /// Input row/column read by output `o` at tap `k` (axis 0 rows, 1 columns).
    pub fn at(&self, o: usize, k: usize, axis: usize) -> Option<usize> {
        let g = &self.0;
        let (s, p, d, size) = if axis == 0 {
            (g.stride.0, g.pad.0, g.dil.0, g.h)
        } else {
            (g.stride.1, g.pad.1, g.dil.1, g.w)
        };
        (o * s + k * d).checked_sub(p).filter(|&i| i < size)
    }
    /// Every (output, input, weight) index triple, in the order
    /// `b, co, oy, ox, ci, ky, kx`.
    pub fn links(&self) -> Vec<(usize, usize, usize)> {
        let g = &self.0;
        let mut v = vec![];
        for b in 0..g.batch {
            for co in 0..g.cout {
                let c0 = co / self.opg() * self.cpg();
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        for ci in 0..self.cpg() {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let (Some(iy), Some(ix)) =
                                        (self.at(oy, ky, 0), self.at(ox, kx, 1))
                                    else {
                                        continue;
                                    };
                                    v.push((
                                        self.yi(b, co, oy, ox),
                                        self.xi(b, c0 + ci, iy, ix),
                                        self.wi(co, ci, ky, kx),
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        v
    }
}

/// Group links by `key`, keeping the given order within each group; links
/// sorted by `order` first (a stable sort), as the backend's loops visit them.
pub fn groups_by(
    links: &[(usize, usize, usize)],
    len: usize,
    key: impl Fn(&(usize, usize, usize)) -> usize,
    order: impl Fn(&(usize, usize, usize)) -> usize,
) -> Vec<Vec<(usize, usize, usize)>> {
    let mut sorted = links.to_vec();
    sorted.sort_by_key(|l| order(l));
    let mut out = vec![vec![]; len];
    for l in sorted {
        out[key(&l)].push(l);
    }
    out
}

pub struct Inputs<'a> {
    pub x: &'a [f64],
    pub x_q: bool,
    pub w: &'a [f64],
    pub gamma: &'a [f64],
    pub beta: &'a [f64],
    pub eps: f64,
    pub running: Option<(&'a [f64], &'a [f64])>,
    pub w_hat: &'a [f64],
    pub w_hat_q: bool,
    pub b_hat: &'a [f64],
    pub b_hat_q: bool,
    pub out_q: bool,
    pub w_sat: &'a [bool],
    pub b_sat: &'a [bool],
    pub dy: &'a [f64],
    pub dy_q: bool,
}

#[derive(Default)]
pub struct Ref {
    pub mean: Vec<E>,
    pub var: Vec<E>,
    pub var_u: Vec<E>,
    pub inv: Vec<E>,
    pub s: Vec<E>,
    pub w_fold: Vec<E>,
    pub b_fold: Vec<E>,
    pub y: Vec<E>,
    pub dgamma: Vec<E>,
    pub dbeta: Vec<E>,
    pub dw: Vec<E>,
    pub dx: Vec<E>,
}

pub fn reference(g: G, i: &Inputs<'_>) -> Ref {
    let c = g.0;
    let ex = |v: &[f64]| -> Vec<E> { v.iter().map(|&a| E::exact(a)).collect() };
    let (x, w, w_hat, dy) = (ex(i.x), ex(i.w), ex(i.w_hat), ex(i.dy));
    let links = g.links();
    let ylen = c.batch * c.cout * c.oh * c.ow;
    let by_y = groups_by(&links, ylen, |l| l.0, |_| 0);
    // Weight gradient: sums over b, oy, ox ascending = output index order.
    let by_w = groups_by(&links, w.len(), |l| l.2, |l| l.0);
    // Input gradient: sums over co, ky, kx ascending = weight index order.
    let by_x = groups_by(&links, x.len(), |l| l.1, |l| l.2);
    let chan = |yi: usize| (yi / (c.oh * c.ow)) % c.cout;
    let wchan = |wi: usize| wi / (g.cpg() * c.kh * c.kw);
    let n = E::exact(g.n() as f64);
    let z: Vec<E> = by_y
        .iter()
        .map(|l| dot(l.iter().map(|&(_, a, b)| (x[a], w[b]))))
        .collect();
    let mut r = Ref::default();
    for co in 0..c.cout {
        let (mean, var, var_u) = match i.running {
            Some((m, v)) => (E::exact(m[co]), E::exact(v[co]), E::exact(v[co])),
            None => {
                let zc: Vec<E> = (0..ylen).filter(|&k| chan(k) == co).map(|k| z[k]).collect();
                let mean = zc.iter().fold(E::exact(0.0), |a, &b| a.add(b)).div(n);
                let ss = zc.iter().fold(E::exact(0.0), |a, &b| {
                    let d = b.sub(mean);
                    a.add(d.mul(d))
                });
                (mean, ss.div(n), ss.div(E::exact(g.n() as f64 - 1.0)))
            }
        };
        let inv = E::exact(1.0).div(var.add(E::exact(i.eps)).sqrt());
        r.inv.push(inv);
        r.s.push(E::exact(i.gamma[co]).mul(inv));
        r.b_fold.push(E::exact(i.beta[co]).sub(mean.mul(r.s[co])));
        r.mean.push(mean);
        r.var.push(var);
        r.var_u.push(var_u);
    }
    r.w_fold = (0..w.len()).map(|k| w[k].mul(r.s[wchan(k)])).collect();
    // Output with the weights and bias the layer used.
    let int_fwd = i.x_q && i.w_hat_q;
    r.y = (0..ylen)
        .map(|k| {
            let b = E::exact(i.b_hat[chan(k)]);
            let pairs = by_y[k].iter().map(|&(_, a, wi)| (i.x[a], i.w_hat[wi]));
            match (int_fwd, i.b_hat_q) {
                (true, true) => {
                    let v = pairs.map(|(a, b)| a * b).sum::<f64>() + b.v;
                    if i.out_q {
                        E::exact(v)
                    } else {
                        E::rounded(v)
                    }
                }
                (true, false) => dot_exact(pairs).add(b),
                _ => dot(by_y[k].iter().map(|&(_, a, wi)| (x[a], w_hat[wi]))).add(b),
            }
        })
        .collect();
    // Backward.
    let mut gb = vec![E::exact(0.0); c.cout];
    for k in 0..ylen {
        gb[chan(k)] = gb[chan(k)].add(dy[k]);
    }
    for co in 0..c.cout {
        if i.b_sat[co] {
            gb[co] = E::exact(0.0);
        }
    }
    let gw: Vec<E> = (0..w.len())
        .map(|k| {
            if i.w_sat[k] {
                E::exact(0.0)
            } else if i.dy_q && i.x_q {
                dot_exact(by_w[k].iter().map(|&(y, a, _)| (i.dy[y], i.x[a])))
            } else {
                dot(by_w[k].iter().map(|&(y, a, _)| (dy[y], x[a])))
            }
        })
        .collect();
    let per = g.cpg() * c.kh * c.kw;
    let ds: Vec<E> = (0..c.cout)
        .map(|co| {
            let s = (co * per..(co + 1) * per).fold(E::exact(0.0), |a, k| a.add(gw[k].mul(w[k])));
            s.sub(gb[co].mul(r.mean[co]))
        })
        .collect();
    r.dgamma = (0..c.cout).map(|co| ds[co].mul(r.inv[co])).collect();
    r.dbeta = gb.clone();
    r.dw = (0..w.len()).map(|k| gw[k].mul(r.s[wchan(k)])).collect();
    r.dx = (0..x.len())
        .map(|k| {
            if i.dy_q && i.w_hat_q {
                dot_exact(by_x[k].iter().map(|&(y, _, wi)| (i.dy[y], i.w_hat[wi])))
            } else {
                dot(by_x[k].iter().map(|&(y, _, wi)| (dy[y], w_hat[wi])))
            }
        })
        .collect();
    if i.running.is_none() {
        let gz: Vec<E> = (0..ylen)
            .map(|k| {
                let co = chan(k);
                let (s, inv) = (r.s[co], r.inv[co]);
                let a = gb[co].mul(s).neg().div(n);
                let kk = ds[co].mul(s).mul(inv).mul(inv).neg().div(n);
                a.add(kk.mul(z[k].sub(r.mean[co])))
            })
            .collect();
        for k in 0..w.len() {
            let t = dot(by_w[k].iter().map(|&(y, a, _)| (gz[y], x[a])));
            r.dw[k] = r.dw[k].add(t);
        }
        for k in 0..x.len() {
            let t = dot(by_x[k].iter().map(|&(y, _, wi)| (gz[y], w[wi])));
            r.dx[k] = r.dx[k].add(t);
        }
    }
    r
}

//! Fully connected operations as matrix products.
//!
//! * forward: `y[b][o] = sum_i x[b][i] w[o][i]`: `A = x`, `B = w^T`, reduction over `i`;
//! * input gradient: `dx[b][i] = sum_o dy[b][o] w[o][i]`: `A = dy`, `B = w`, over `o`;
//! * weight gradient: `dw[o][i] = sum_b dy[b][o] x[b][i]`: `A = dy^T`, `B = x`, over `b`.
//!
//! Each reduction runs in the reference's order (ascending), so the f32 sums
//! are the reference's bit for bit.

use fixnn::backend::LinearGeom;

use super::codes::{elements, Load};
use super::kernel::{gemm, rows_per_tile, Ctx, Direct, Elem, Out, Packed};
use super::scratch::Buf;
use super::Product;

/// Which of the three products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Forward,
    InputGrad,
    WeightGrad,
}

/// One fully connected product: `a` and `b` are the operands in the order
/// of the [`Backend`](fixnn::backend::Backend) method.
pub(super) struct Linear<'a> {
    pub g: LinearGeom,
    pub kind: Kind,
    pub a: &'a [f32],
    pub b: &'a [f32],
}

fn offsets(n: usize, stride: usize) -> Buf<usize> {
    Buf::collect((0..n).map(|i| i * stride))
}

impl Product for Linear<'_> {
    fn run<E: Elem, T: Out<E>, const N: usize>(
        &self,
        ctx: Ctx,
        la: Load,
        lb: Load,
        kc: usize,
        out: &mut [T],
    ) {
        let LinearGeom { batch, inp, out: o } = self.g;
        // Rows, columns, reduction length; element (k, r) of A is at
        // `k * ak + r * am`.
        let (m, n, k, ak, am) = match self.kind {
            Kind::Forward => (batch, o, inp, 1, inp),
            Kind::InputGrad => (batch, inp, o, 1, o),
            Kind::WeightGrad => (o, inp, batch, o, 1),
        };
        // Operand values converted to elements once (a vectorised pass),
        // then packed.
        let (av, bv) = (
            elements::<E>(ctx, self.a, la),
            elements::<E>(ctx, self.b, lb),
        );
        let (ka, ma) = (offsets(k, ak), offsets(m, am));
        let a = Packed::new(ctx.par, kc, rows_per_tile(m), (&av, &ka, &ma), |v| v);
        match self.kind {
            // B = w^T: element (i, o) at `o * inp + i`, packed.
            Kind::Forward => {
                let (kb, nb) = (offsets(k, 1), offsets(n, inp));
                let b = Packed::new(ctx.par, kc, N, (&bv, &kb, &nb), |v| v);
                gemm::<E, T, _, N>(ctx, &a, &b, (m, n, true), out, n);
            }
            // B = w (rows o) or x (rows b): row k at `k * inp`, read in place.
            Kind::InputGrad | Kind::WeightGrad => {
                let koff = offsets(k, inp);
                let b = Direct {
                    src: &bv,
                    koff: &koff,
                };
                gemm::<E, T, _, N>(ctx, &a, &b, (m, n, true), out, n);
            }
        }
    }
}

//! [`DspBackend`]: the backend operations on packed integer tiles.

use core::cell::{Cell, RefCell};

use super::gemm::CodeConv;
use super::ops::{self, F32Codes};
use crate::backend::{AccOut, Backend, ConvGeom, LinearGeom, Operand, Pass, RefBackend};
use crate::error::Result;

/// A [`Backend`] that computes integer products (both operands quantized)
/// with the packed-tile kernels of this module ([`gemm`](super::gemm), `SMLAD` on
/// Cortex-M4/M7), and everything else with [`RefBackend`].
///
/// Same bits as [`RefBackend`] for every input: integer sums are exact
/// either way, and an operation it cannot run on tiles is handed to
/// [`RefBackend`] whole. That happens for f32 operands, codes wider than
/// the 32-bit chunks allow (`bits_a + bits_b > 30`), a value that is not a
/// code of its format, a `scratch` too small for four words per tile row,
/// and a re-entrant call while the scratch is in use.
///
/// `scratch` is the caller's: packed tiles of the operands live there (two
/// codes per word). A linear layer needs `(round_up_2(batch) +
/// round_up_2(out)) * 2` words at least and runs in one `k` tile with
/// `(round_up_2(batch) + round_up_2(out)) * round_up_4(inp) / 2` words; a
/// convolution's forward pass needs as much for `oh * ow` rows and `cout /
/// groups` rows of `cin / groups * kh * kw`; with an even `cin / groups`
/// (the channel-pair lowering) also `(h + 2 pad_h) (w + 2 pad_w) cin /
/// groups / 2` words for the padded input, else it packs code by code
/// ([`conv2d_pairs_scratch`](super::conv2d_pairs_scratch) gives the total
/// for a geometry).
#[derive(Debug)]
pub struct DspBackend<'s> {
    scratch: RefCell<&'s mut [u32]>,
    fast: Cell<u32>,
    fallback: Cell<u32>,
}

impl<'s> DspBackend<'s> {
    /// A backend that packs tiles into `scratch`.
    pub fn new(scratch: &'s mut [u32]) -> Self {
        DspBackend {
            scratch: RefCell::new(scratch),
            fast: Cell::new(0),
            fallback: Cell::new(0),
        }
    }

    /// Operations computed on packed tiles so far (saturating).
    pub fn fast_calls(&self) -> u32 {
        self.fast.get()
    }

    /// Operations handed to [`RefBackend`] so far (saturating).
    pub fn fallback_calls(&self) -> u32 {
        self.fallback.get()
    }

    /// Run `fast` on the scratch if both operands are quantized, the output
    /// is integer and the scratch is free; otherwise, or if `fast` declines,
    /// run `slow` (the reference) on the same buffers.
    fn run(
        &self,
        a: Operand<'_>,
        b: Operand<'_>,
        out: AccOut<'_>,
        fast: impl FnOnce(&mut [u32], CodeConv, CodeConv, &mut [i64]) -> bool,
        slow: impl FnOnce(AccOut<'_>) -> Result<()>,
    ) -> Result<()> {
        let convs = match (a.fmt, b.fmt) {
            (Some(fa), Some(fb)) => CodeConv::new(fa).zip(CodeConv::new(fb)),
            _ => None,
        };
        match (convs, out) {
            (Some((ca, cb)), AccOut::Int(o)) => {
                let done = match self.scratch.try_borrow_mut() {
                    Ok(mut s) => fast(&mut s[..], ca, cb, o),
                    Err(_) => false,
                };
                if done {
                    self.fast.set(self.fast.get().saturating_add(1));
                    Ok(())
                } else {
                    self.fallback.set(self.fallback.get().saturating_add(1));
                    slow(AccOut::Int(o))
                }
            }
            (_, out) => {
                self.fallback.set(self.fallback.get().saturating_add(1));
                slow(out)
            }
        }
    }
}

macro_rules! op {
    ($name:ident, $geom:ty, $pass:expr, $a:ident, $b:ident, $out:ident, $doc:literal) => {
        #[doc = $doc]
        fn $name(
            &self,
            g: $geom,
            $a: Operand<'_>,
            $b: Operand<'_>,
            $out: AccOut<'_>,
        ) -> Result<()> {
            g.check_buffers($pass, $a.v.len(), $b.v.len(), $out.len())?;
            self.run(
                $a,
                $b,
                $out,
                |s, ca, cb, o| {
                    let fa = F32Codes { v: $a.v, conv: ca };
                    let fb = F32Codes { v: $b.v, conv: cb };
                    ops::$name(s, g, &fa, &fb, o)
                },
                |o| RefBackend.$name(g, $a, $b, o),
            )
        }
    };
}

impl Backend for DspBackend<'_> {
    op!(
        linear,
        LinearGeom,
        Pass::Forward,
        x,
        w,
        y,
        "[`ops::linear`] on packed tiles."
    );
    op!(
        linear_input_grad,
        LinearGeom,
        Pass::InputGrad,
        dy,
        w,
        dx,
        "[`ops::linear_input_grad`] on packed tiles."
    );
    op!(
        linear_weight_grad,
        LinearGeom,
        Pass::WeightGrad,
        dy,
        x,
        dw,
        "[`ops::linear_weight_grad`] on packed tiles."
    );
    op!(
        conv2d,
        ConvGeom,
        Pass::Forward,
        x,
        w,
        y,
        "[`ops::conv2d`] on packed tiles."
    );
    op!(
        conv2d_input_grad,
        ConvGeom,
        Pass::InputGrad,
        dy,
        w,
        dx,
        "[`ops::conv2d_input_grad`] on packed tiles."
    );
    op!(
        conv2d_weight_grad,
        ConvGeom,
        Pass::WeightGrad,
        dy,
        x,
        dw,
        "[`ops::conv2d_weight_grad`] on packed tiles."
    );
}

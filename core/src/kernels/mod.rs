//! Integer kernels for the Cortex-M DSP extension (Cortex-M4 and M7), with
//! a portable twin of every kernel for other targets, and [`DspBackend`],
//! a [`Backend`](crate::backend::Backend) built on them.
//!
//! # Data layout
//!
//! Every product of the backend (linear and convolution, forward and both
//! backward passes) is computed as a matrix product `C[i][j] = sum_k A[i][k]
//! B[j][k]` over *packed tiles* ([`gemm`]): integer codes of at most 16 bits,
//! two per `u32` word (even `k` in the low half, odd `k` in the high half),
//! and two rows interleaved word by word: word `w` of rows `2p` and `2p + 1`
//! are the words `2 (p * words + w)` and `2 (p * words + w) + 1` of the tile.
//! So one `LDRD` loads the same two codes of two rows, and one `SMLAD`
//! multiplies two codes of a row of `A` by two codes of a row of `B` and adds
//! both products to a 32-bit accumulator. Convolutions are lowered to this
//! product by gathering their windows into the tile (im2col), with zeros for
//! the padding.
//!
//! # Exactness
//!
//! A 32-bit accumulator only ever sums as many products as cannot overflow
//! it ([`chunk_words`]): with codes of `ba` and `bb` bits a product is at
//! most `2^(ba + bb - 2)` in magnitude, so at most `2^(33 - ba - bb) - 1`
//! products are summed before the accumulator is added, exactly, to the
//! `i64` result. The sums are therefore the exact integer sums the
//! reference backend computes, whatever the order. Formats whose product
//! needs more than 30 bits (`ba + bb > 30`, e.g. 16 by 16 bits) have no
//! room for even two products per chunk: [`gemm`] declines them and
//! [`DspBackend`] uses the reference kernels.
//!
//! On `thumbv7em` targets (Cortex-M4, M7; the build script sets the cfg
//! `fixnn_dsp`) the inner block is `asm!` with `LDRD` and `SMLAD`; everywhere
//! else it is plain Rust that computes the same 32-bit wrapping sums, so the
//! chunking is tested on the host too.

mod backend;
mod block;
mod gemm;
mod im2col;
mod ops;

pub use backend::DspBackend;
pub use block::{block2x2, block2x2_portable, row_pair};
pub use gemm::{chunk_words, gemm, gemm_packed, pack2, CodeConv, Rows};
pub use im2col::conv2d_pairs_scratch;
pub use ops::{
    conv2d, conv2d_input_grad, conv2d_weight_grad, linear, linear_input_grad, linear_weight_grad,
    magnitude, CodeSlice, Codes, F32Codes,
};

/// Whether this build uses the DSP-instruction inner block (`thumbv7em`
/// targets: Cortex-M4 and M7) rather than the portable one.
pub const USES_DSP: bool = cfg!(fixnn_dsp);

//! Derive macros of [fixnn](https://docs.rs/fixnn).
//!
//! Use them through `fixnn` (feature `derive`, on by default):
//! `use fixnn::Model;`. The generated code names only `::fixnn::...`
//! and `core` items, so it builds in `#![no_std]` crates without a heap.
//!
//! [`Model`](derive@Model) turns a struct whose fields are layers into one
//! layer that runs them in sequence and names their tensors after the
//! fields, as nics_fix_pt's `FixTopModule` names `fc1.weight`:
//!
//! ```
//! use fixnn::layers::{Layer, Linear, Relu};
//! use fixnn::tensor::S2;
//! use fixnn::Model;
//!
//! #[derive(Model)]
//! struct Mlp {
//!     fc1: Linear<4, 8, 2>,
//!     act: Relu<S2<2, 8>>,
//!     fc2: Linear<8, 3, 2>,
//! }
//!
//! let net = Mlp { fc1: Linear::new(0), act: Relu::new(1), fc2: Linear::new(2) };
//! assert_eq!(<Mlp as Layer>::TYPE, "Mlp");
//! # let _ = net;
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod expand;

use proc_macro::TokenStream;

/// Implement `fixnn::layers::Layer` for a struct of layers, run in field
/// order: the derived layer is a named `Sequential`.
///
/// Every field is a layer, and each field's input shape is the previous
/// field's output shape (a compile error otherwise, pointing at the field).
/// The generated impl:
///
/// * `In` is the first field's `In`, `Out` the last field's `Out`, `TYPE`
///   the struct's name (`"Mlp"`), used to select configs by type;
/// * `forward` runs each field on the previous field's output, and
///   `output` is the last field's output;
/// * `backward` runs from the last field to the first: the last field gets
///   the caller's `dy`, every other field gets the input-gradient buffer of
///   the field after it (which that field's backward just wrote, so every
///   field but the first is asked for its input gradient); the first field
///   gets the caller's `want_dx`. This is exactly what
///   [`Chain`](../fixnn/layers/struct.Chain.html) does, so a derived struct
///   and the equivalent chain compute the same bits;
/// * `input_grad` and `input_grad_mut` are the first field's;
/// * `visit` reports each field's tensors between `enter("<field>")` and
///   `leave()`, in field order, so tensor paths are `fc1.weight`,
///   `block.conv.bias` (a field that is itself a derived struct nests), and
///   inside a `Chain` the struct is one item (`0.fc1.weight`).
///
/// Generic structs work: the struct's generics and where-clauses are kept,
/// and the impl adds the bounds `F1: Layer`, `F2: Layer<In = <F1 as
/// Layer>::Out>`, ... for the field types `F1, F2, ...`.
///
/// The generated code names `::fixnn::...` paths, so the crate using the
/// derive must depend on `fixnn` under that name.
///
/// The first and last fields' types appear in the public impl (`In` and
/// `Out` name them), so a `pub` struct needs those two types to be public
/// (`error[E0446]` otherwise, as for any public interface); the fields in
/// between may have private types.
///
/// # Attributes
///
/// `#[model(rename = "name")]` on a field sets its path segment (default:
/// the field's name, without `r#`). Segments must be non-empty, must not
/// contain `.`, and must differ between fields.
///
/// # Errors
///
/// A compile error, pointing at the offending item, for enums, unions, tuple
/// and unit structs, structs without fields, `#[model(..)]` on the struct,
/// unknown or malformed field attributes, and repeated path segments.
///
/// # Examples
///
/// Nested models, a renamed field and a generic struct:
///
/// ```
/// use fixnn::layers::{Conv2d, Flatten, Layer, Linear, Relu};
/// use fixnn::tensor::S4;
/// use fixnn::Model;
///
/// #[derive(Model)]
/// struct Block<L: Layer> {
///     conv: L,
///     act: Relu<L::Out>,
/// }
///
/// #[derive(Model)]
/// struct Net {
///     block: Block<Conv2d<1, 2, 1, 3, 3, 4, 4, 4, 4, 1>>,
///     flat: Flatten<1, 2, 4, 4, 32>,
///     #[model(rename = "head")]
///     fc: Linear<32, 3, 1>,
/// }
///
/// let net = Net {
///     block: Block { conv: Conv2d::new(0, (1, 1), (1, 1), (1, 1))?, act: Relu::new(1) },
///     flat: Flatten::new(2),
///     fc: Linear::new(3),
/// };
/// // Tensor paths: block.conv.weight, block.conv.bias, block.conv.output,
/// // block.act.output, flat.output, head.weight, head.bias, head.output.
/// assert_eq!(<Net as Layer>::TYPE, "Net");
/// # let _ = net;
/// # Ok::<(), fixnn::Error>(())
/// ```
///
/// Consecutive fields must fit: a layer with 8 outputs cannot feed one
/// with 5 inputs.
///
/// ```compile_fail
/// use fixnn::layers::{Layer, Linear};
/// use fixnn::Model;
///
/// #[derive(Model)]
/// struct Broken {
///     fc1: Linear<4, 8, 2>,
///     fc2: Linear<5, 3, 2>,
/// }
/// ```
///
/// Tuple structs are rejected (tensors are named after fields):
///
/// ```compile_fail
/// use fixnn::layers::Linear;
/// use fixnn::Model;
///
/// #[derive(Model)]
/// struct Tuple(Linear<4, 8, 2>);
/// ```
#[proc_macro_derive(Model, attributes(model))]
pub fn derive_model(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    match expand::expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

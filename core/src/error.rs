//! The error type of every fallible fixnn operation.

use core::fmt;

/// What went wrong. Small and `Copy`, so it costs nothing to return on a
/// microcontroller; [`Display`](fmt::Display) names the offending value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// A bit width outside `2..=16`.
    BitsOutOfRange {
        /// The bit width that was asked for.
        bits: u8,
    },
    /// A format wider than the code storage type (`i8` holds at most 8 bits).
    BitsExceedStorage {
        /// The format's bit width.
        bits: u8,
        /// The width of the storage type.
        storage: u8,
    },
    /// Two buffers that must have the same length do not.
    LengthMismatch {
        /// The length required (the length of the input).
        expected: usize,
        /// The length found (the length of the output).
        found: usize,
    },
    /// A saturation mask buffer holds fewer `u32` words than the data needs.
    MaskTooShort {
        /// Words needed: `ceil(len / 32)`.
        needed: usize,
        /// Words given.
        found: usize,
    },
    /// NaN or infinity in input data.
    NonFinite {
        /// Index of the first non-finite element.
        index: usize,
    },
    /// A scale had to be chosen from no data at all.
    EmptyInput,
    /// More elements than the counter-based generator can index
    /// (element indices are `u32`: `base + len` must not exceed `2^32`).
    TooManyElements {
        /// Number of elements (including the base offset).
        len: u64,
    },
    /// [`Method::None`](crate::Method::None) keeps full precision, so there is
    /// no integer format to quantize to.
    NoFormat,
    /// Tensor shapes or layer geometry that do not fit together.
    Shape {
        /// What does not fit.
        what: &'static str,
    },
    /// A hyper-parameter or setting with a value that cannot work (NaN,
    /// infinity, out of range).
    Invalid {
        /// Which value, and what it must be.
        what: &'static str,
    },
    /// A bit width that has no packed layout (only 2, 3 and 4 bits pack:
    /// see [`quant::packed`](crate::quant::packed)).
    NotPackable {
        /// The bit width.
        bits: u8,
    },
    /// A code outside the range of its bit width (packing), or a packed
    /// field that is not a code of its width.
    CodeOutOfRange {
        /// Index of the first such element.
        index: usize,
        /// The code found.
        code: i64,
    },
    /// A config field that is reserved for a later version holds a value this
    /// version does not implement.
    Unsupported {
        /// The field name, as in the JSON schema.
        field: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::BitsOutOfRange { bits } => {
                write!(f, "bit width {bits} is outside 2..=16")
            }
            Error::BitsExceedStorage { bits, storage } => {
                write!(
                    f,
                    "a {bits}-bit format does not fit {storage}-bit code storage"
                )
            }
            Error::LengthMismatch { expected, found } => {
                write!(
                    f,
                    "buffer length {found} does not match input length {expected}"
                )
            }
            Error::MaskTooShort { needed, found } => {
                write!(f, "saturation mask has {found} words, {needed} needed")
            }
            Error::NonFinite { index } => write!(f, "element {index} is NaN or infinite"),
            Error::EmptyInput => write!(f, "cannot choose a scale from empty data"),
            Error::TooManyElements { len } => {
                write!(
                    f,
                    "{len} elements exceed the 2^32 element indices of a tensor"
                )
            }
            Error::Shape { what } => write!(f, "shape error: {what}"),
            Error::Invalid { what } => write!(f, "invalid value: {what}"),
            Error::NoFormat => write!(f, "method `none` has no integer format"),
            Error::NotPackable { bits } => {
                write!(f, "{bits}-bit codes have no packed layout (2, 3 or 4 bits)")
            }
            Error::CodeOutOfRange { index, code } => {
                write!(f, "element {index}: code {code} is outside its bit width")
            }
            Error::Unsupported { field } => {
                write!(
                    f,
                    "config field `{field}` holds a value this version does not support"
                )
            }
        }
    }
}

impl core::error::Error for Error {}

/// `Result` with fixnn's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

//! fixnn's own JSON reader for the documents a device parses: a
//! [`QuantConfig`], a [`ConfigEntry`] (one tensor's configs, as the device
//! cases send them) and a whole [`ConfigDoc`] (a config tree).
//!
//! It reads the same text serde would read for these types, without serde's
//! deserializer: no recursion (every type's fields are listed in a table, so
//! the call depth is the depth of the schema, at most 4), no heap, no panic
//! path (`scripts/panic-audit.sh` links it with `panic-never`), and every
//! refusal is a small [`ReadError`] naming the problem, the field and the
//! byte offset. Writing stays with serde (`serde_json_core::to_slice`).
//!
//! # Accepted language
//!
//! * An object per struct, keys in any order, JSON whitespace anywhere
//!   between tokens. A key that is not a field ([`ReadProblem::UnknownField`],
//!   as serde's `deny_unknown_fields`), a key given twice
//!   ([`ReadProblem::DuplicateField`]) and a required field left out
//!   ([`ReadProblem::MissingField`]) are errors. Optional fields (`range`,
//!   `rounding`, `zero_point`, `multiplier`, `group` of a [`QuantConfig`])
//!   default as their `#[serde(default)]` says.
//! * Enum values are their snake_case names as strings (`"auto"`,
//!   `"three_sigma"`); any other string is [`ReadProblem::UnknownVariant`].
//! * Integers are `-?(0|[1-9][0-9]*)`; a fraction, an exponent, a leading
//!   zero or `-0` is [`ReadProblem::NotAnInteger`]; a value outside the
//!   field's type (`bits` is a `u8`, `scale` an `i8`, ...) is
//!   [`ReadProblem::OutOfRange`], never wrapped.
//! * Strings decode every JSON escape (`\" \\ \/ \b \f \n \r \t \uXXXX`,
//!   surrogate pairs included); an unknown escape or a lone surrogate is
//!   [`ReadProblem::BadEscape`], a raw control character (below 0x20)
//!   [`ReadProblem::ControlCharacter`], bytes that are not UTF-8
//!   [`ReadProblem::InvalidUtf8`], a string longer than its field's capacity
//!   (decoded bytes) [`ReadProblem::TooLong`].
//! * Keys and enum names are decoded the same way; one longer than
//!   [`MAX_NAME`] bytes is unknown.
//! * Nothing but whitespace may follow the document ([`ReadProblem::Trailing`]).
//!
//! Compared with serde_json reading the same types (`core/tests/json_reader.rs`
//! checks this): the same texts are accepted, with the same values, except
//! that a struct written as an array (`["auto",8,0]`) and an enum written as
//! an object (`{"auto":null}`) are refused here, deliberately. A duplicate
//! key is refused by both (serde names it too). Compared with
//! serde-json-core 0.7, which devices used before: stricter on `-0` for a
//! signed field and on raw control characters in strings; escapes in
//! strings are decoded (its `from_slice` kept them undecoded, as written).
//!
//! # Examples
//!
//! ```
//! use fixnn::model::{ReadError, ReadProblem};
//! use fixnn::QuantConfig;
//!
//! let cfg = QuantConfig::from_json(br#"{"method":"auto","bits":4,"scale":0}"#)?;
//! assert_eq!(cfg, QuantConfig::auto(4));
//! assert_eq!(
//!     QuantConfig::from_json(br#"{"method":"auto","bits":300,"scale":0}"#),
//!     Err(ReadError { problem: ReadProblem::OutOfRange, field: "bits", offset: 24 })
//! );
//! # Ok::<(), ReadError>(())
//! ```
//!
//! # Adding a field or a variant
//!
//! A field is one line in its type's table of fields (`QUANT_CONFIG_FIELDS`
//! and its neighbours in `core/src/model/read.rs`); an enum's variant is one
//! line in its `JsonEnum` table of names (a new enum type needs a new table). The tests compare the
//! tables with serde's list of fields and variants, so a forgotten one fails.

use core::fmt;

use heapless::{String, Vec};

use super::configs::{ConfigDoc, ConfigEntry};
use super::Kind;
use crate::quant::{Clamp, Group, Method, QuantConfig, RangeMethod, Rounding};

/// The longest key or enum name (in decoded bytes) the reader compares; a
/// longer one is an unknown field or variant.
pub const MAX_NAME: usize = 32;

/// What is wrong with a text, in a [`ReadError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReadProblem {
    /// A character that cannot stand here (not the `:`, `,`, `}`, `]` or
    /// value the grammar needs).
    Syntax,
    /// The text ends inside the document.
    End,
    /// Something other than whitespace follows the document.
    Trailing,
    /// A value of the wrong JSON type (a string for a number, an array for
    /// an object, `null`, `true`, ...).
    WrongType,
    /// A key that is not a field of the object (or longer than [`MAX_NAME`]).
    UnknownField,
    /// A key the object already had.
    DuplicateField,
    /// A required field is not in the object.
    MissingField,
    /// A number with a fraction, an exponent, a leading zero, or `-0`.
    NotAnInteger,
    /// An integer outside the field's type.
    OutOfRange,
    /// A string that names no variant of the field's enum.
    UnknownVariant,
    /// A string longer than the field holds, or more array elements.
    TooLong,
    /// An unknown escape, a bad `\u` hex digit or a lone surrogate.
    BadEscape,
    /// A raw control character (below 0x20) inside a string.
    ControlCharacter,
    /// A string's bytes are not UTF-8.
    InvalidUtf8,
}

impl ReadProblem {
    /// A short description, for messages.
    pub const fn describe(self) -> &'static str {
        match self {
            ReadProblem::Syntax => "unexpected character",
            ReadProblem::End => "text ends early",
            ReadProblem::Trailing => "text after the document",
            ReadProblem::WrongType => "value of the wrong type",
            ReadProblem::UnknownField => "unknown field",
            ReadProblem::DuplicateField => "field given twice",
            ReadProblem::MissingField => "missing field",
            ReadProblem::NotAnInteger => "not an integer",
            ReadProblem::OutOfRange => "number out of range",
            ReadProblem::UnknownVariant => "unknown variant",
            ReadProblem::TooLong => "too long",
            ReadProblem::BadEscape => "bad escape",
            ReadProblem::ControlCharacter => "control character in a string",
            ReadProblem::InvalidUtf8 => "string is not UTF-8",
        }
    }
}

/// Why the reader refused a text: the problem, the field it concerns and
/// where.
///
/// `field` is the field whose value (or key) is wrong; for
/// [`ReadProblem::MissingField`] the missing one; for
/// [`ReadProblem::UnknownField`] the object holding the unknown key; `""`
/// at the top level. `offset` is the byte offset of the offending value,
/// key or character (of the closing `}` for a missing field, of the
/// opening quote for a bad string).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReadError {
    /// What is wrong.
    pub problem: ReadProblem,
    /// The field concerned (`""` at the top level).
    pub field: &'static str,
    /// Byte offset in the text.
    pub offset: usize,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = self.problem.describe();
        match (self.problem, self.field) {
            (_, "") => write!(f, "config JSON: {what} (byte {})", self.offset),
            (ReadProblem::UnknownField, obj) => {
                write!(f, "config JSON: {what} in `{obj}` (byte {})", self.offset)
            }
            (_, field) => write!(f, "config JSON: {what}: `{field}` (byte {})", self.offset),
        }
    }
}

impl core::error::Error for ReadError {}

/// Result of the reader.
pub type ReadResult<T> = core::result::Result<T, ReadError>;

/// A cursor over the text; `field` is the field being read, for errors.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    i: usize,
    field: &'static str,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, problem: ReadProblem, offset: usize) -> ReadResult<T> {
        Err(ReadError {
            problem,
            field: self.field,
            offset,
        })
    }

    /// Skip whitespace; the next byte, if any.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    /// The next byte (no whitespace skipped), consumed.
    fn bump(&mut self) -> ReadResult<u8> {
        match self.b.get(self.i) {
            Some(&c) => {
                self.i += 1;
                Ok(c)
            }
            None => self.fail(ReadProblem::End, self.i),
        }
    }

    /// Consume `c` after whitespace.
    fn eat(&mut self, c: u8) -> ReadResult<()> {
        match self.peek() {
            Some(x) if x == c => {
                self.i += 1;
                Ok(())
            }
            Some(_) => self.fail(ReadProblem::Syntax, self.i),
            None => self.fail(ReadProblem::End, self.i),
        }
    }

    /// The problem of a value that is not of the wanted type, starting with
    /// `c`: a JSON value of another type, or not a value at all.
    fn not_a(&self, c: Option<u8>) -> ReadResult<()> {
        match c {
            None => self.fail(ReadProblem::End, self.i),
            Some(b'"' | b'{' | b'[' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
                self.fail(ReadProblem::WrongType, self.i)
            }
            Some(_) => self.fail(ReadProblem::Syntax, self.i),
        }
    }

    /// Four hex digits of a `\u` escape.
    fn hex4(&mut self, at: usize) -> ReadResult<u32> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.bump()? {
                c @ b'0'..=b'9' => c - b'0',
                c @ b'a'..=b'f' => c - b'a' + 10,
                c @ b'A'..=b'F' => c - b'A' + 10,
                _ => return self.fail(ReadProblem::BadEscape, at),
            };
            v = (v << 4) | u32::from(d);
        }
        Ok(v)
    }

    /// The code point of the escape after a backslash at `at`.
    fn escape(&mut self, at: usize) -> ReadResult<u32> {
        Ok(match self.bump()? {
            b'"' => 0x22,
            b'\\' => 0x5c,
            b'/' => 0x2f,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => 0x0a,
            b'r' => 0x0d,
            b't' => 0x09,
            b'u' => {
                let hi = self.hex4(at)?;
                match hi {
                    0xd800..=0xdbff => {
                        if self.bump()? != b'\\' || self.bump()? != b'u' {
                            return self.fail(ReadProblem::BadEscape, at);
                        }
                        let lo = self.hex4(at)?;
                        if !(0xdc00..=0xdfff).contains(&lo) {
                            return self.fail(ReadProblem::BadEscape, at);
                        }
                        0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                    }
                    0xdc00..=0xdfff => return self.fail(ReadProblem::BadEscape, at),
                    _ => hi,
                }
            }
            _ => return self.fail(ReadProblem::BadEscape, at),
        })
    }

    /// A string value, decoded into `out`; returns it. Errors: not a string
    /// ([`ReadProblem::WrongType`]), longer than `out`
    /// ([`ReadProblem::TooLong`]), bad escapes, control characters,
    /// not UTF-8.
    fn string<'o>(&mut self, out: &'o mut [u8]) -> ReadResult<&'o str> {
        let c = self.peek();
        if c != Some(b'"') {
            self.not_a(c)?;
        }
        let start = self.i;
        self.i += 1;
        let mut n = 0usize;
        loop {
            let at = self.i;
            let mut utf8 = [0u8; 4];
            let len = match self.bump()? {
                b'"' => break,
                b'\\' => encode_utf8(self.escape(at)?, &mut utf8),
                0..=0x1f => return self.fail(ReadProblem::ControlCharacter, at),
                c => {
                    utf8[0] = c;
                    1
                }
            };
            let Some(dst) = out.get_mut(n..) else {
                return self.fail(ReadProblem::TooLong, start);
            };
            if dst.len() < len {
                return self.fail(ReadProblem::TooLong, start);
            }
            for (d, s) in dst.iter_mut().zip(utf8.iter().take(len)) {
                *d = *s;
            }
            n += len;
        }
        let bytes = out.get(..n).unwrap_or_default();
        match core::str::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(_) => self.fail(ReadProblem::InvalidUtf8, start),
        }
    }

    /// An integer value, `-?(0|[1-9][0-9]*)`, as `i64`.
    fn integer(&mut self) -> ReadResult<i64> {
        let c = self.peek();
        let start = self.i;
        let neg = c == Some(b'-');
        if neg {
            self.i += 1;
        } else if !matches!(c, Some(b'0'..=b'9')) {
            self.not_a(c)?;
        }
        let mut mag = 0u64;
        let mut digits = 0usize;
        let mut overflow = false;
        while let Some(&d @ b'0'..=b'9') = self.b.get(self.i) {
            if digits == 1 && mag == 0 {
                return self.fail(ReadProblem::NotAnInteger, start);
            }
            match mag
                .checked_mul(10)
                .and_then(|m| m.checked_add(u64::from(d - b'0')))
            {
                Some(m) => mag = m,
                None => overflow = true,
            }
            digits += 1;
            self.i += 1;
        }
        if digits == 0 {
            return self.fail(ReadProblem::Syntax, self.i);
        }
        if matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) || (neg && mag == 0) {
            return self.fail(ReadProblem::NotAnInteger, start);
        }
        let v = if neg {
            0i64.checked_sub_unsigned(mag)
        } else {
            i64::try_from(mag).ok()
        };
        match v {
            Some(v) if !overflow => Ok(v),
            _ => self.fail(ReadProblem::OutOfRange, start),
        }
    }

    /// An array of values, each read by `each`.
    fn array(&mut self, mut each: impl FnMut(&mut Self) -> ReadResult<()>) -> ReadResult<()> {
        let c = self.peek();
        if c != Some(b'[') {
            self.not_a(c)?;
        }
        self.i += 1;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            each(self)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(_) => return self.fail(ReadProblem::Syntax, self.i),
                None => return self.fail(ReadProblem::End, self.i),
            }
        }
    }

    /// An object whose keys are the `fields` of `out`: each value read by its
    /// field's setter, keys at most once, required fields present. Fields
    /// left out keep the value `out` had (their default).
    fn object<T>(&mut self, fields: &[Field<T>], out: &mut T) -> ReadResult<()> {
        let outer = self.field;
        let c = self.peek();
        if c != Some(b'{') {
            self.not_a(c)?;
        }
        self.i += 1;
        // Bit k: field k seen. Tables have at most 32 fields (checked by
        // the tests; a longer table's extra fields are never "seen" twice).
        let mut seen = 0u32;
        let mut first = true;
        loop {
            match self.peek() {
                Some(b'}') if first => break,
                Some(b'"') => {}
                Some(_) => return self.fail(ReadProblem::Syntax, self.i),
                None => return self.fail(ReadProblem::End, self.i),
            }
            let at = self.i;
            let mut buf = [0u8; MAX_NAME];
            self.field = outer;
            let key = match self.string(&mut buf) {
                Err(ReadError {
                    problem: ReadProblem::TooLong,
                    ..
                }) => "",
                r => r?,
            };
            let Some((k, f)) = fields.iter().enumerate().find(|(_, f)| f.name == key) else {
                return self.fail(ReadProblem::UnknownField, at);
            };
            self.field = f.name;
            let bit = 1u32.checked_shl(k as u32).unwrap_or(0);
            if seen & bit != 0 {
                return self.fail(ReadProblem::DuplicateField, at);
            }
            seen |= bit;
            self.eat(b':')?;
            (f.read)(self, out)?;
            self.field = outer;
            first = false;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => break,
                Some(_) => return self.fail(ReadProblem::Syntax, self.i),
                None => return self.fail(ReadProblem::End, self.i),
            }
        }
        let end = self.i;
        self.i += 1;
        for (k, f) in fields.iter().enumerate() {
            let bit = 1u32.checked_shl(k as u32).unwrap_or(0);
            if !f.optional && seen & bit == 0 {
                return Err(ReadError {
                    problem: ReadProblem::MissingField,
                    field: f.name,
                    offset: end,
                });
            }
        }
        self.field = outer;
        Ok(())
    }

    /// Read one value of type `T` into `out`.
    fn value<T: ReadValue>(&mut self, out: &mut T) -> ReadResult<()> {
        T::read(self, out)
    }
}

/// `c` (a Unicode scalar value) as UTF-8 into `out`; the length. Values
/// that are not scalars never come here (surrogates are refused first).
fn encode_utf8(c: u32, out: &mut [u8; 4]) -> usize {
    // The `as u8` casts keep the low bits on purpose: every value is masked
    // or shifted to fit first.
    match c {
        0..=0x7f => {
            out[0] = c as u8;
            1
        }
        0x80..=0x7ff => {
            out[0] = 0xc0 | (c >> 6) as u8;
            out[1] = 0x80 | (c & 0x3f) as u8;
            2
        }
        0x800..=0xffff => {
            out[0] = 0xe0 | (c >> 12) as u8;
            out[1] = 0x80 | ((c >> 6) & 0x3f) as u8;
            out[2] = 0x80 | (c & 0x3f) as u8;
            3
        }
        _ => {
            out[0] = 0xf0 | ((c >> 18) & 0x07) as u8;
            out[1] = 0x80 | ((c >> 12) & 0x3f) as u8;
            out[2] = 0x80 | ((c >> 6) & 0x3f) as u8;
            out[3] = 0x80 | (c & 0x3f) as u8;
            4
        }
    }
}

/// A whole document: one value of type `T`, whitespace around it, nothing
/// after it. `start` is the value of the fields a text may leave out.
fn document<T: ReadValue>(text: &[u8], mut start: T) -> ReadResult<T> {
    let mut r = Reader {
        b: text,
        i: 0,
        field: "",
    };
    r.value(&mut start)?;
    if r.peek().is_some() {
        return r.fail(ReadProblem::Trailing, r.i);
    }
    Ok(start)
}

/// One field of an object type: its JSON key, whether it may be left out
/// (`#[serde(default)]`), and how its value is read into the object.
pub(crate) struct Field<T> {
    /// The key (the Rust field name, as serde writes it).
    name: &'static str,
    /// The field may be left out and then keeps its default.
    optional: bool,
    /// Reads the value (after the `:`) into the object.
    read: for<'r, 'a> fn(&'r mut Reader<'a>, &mut T) -> ReadResult<()>,
}

/// A field that must be present.
const fn req<T>(
    name: &'static str,
    read: fn(&mut Reader<'_>, &mut T) -> ReadResult<()>,
) -> Field<T> {
    Field {
        name,
        optional: false,
        read,
    }
}

/// A field that may be left out (serde's `#[serde(default)]`).
const fn opt<T>(
    name: &'static str,
    read: fn(&mut Reader<'_>, &mut T) -> ReadResult<()>,
) -> Field<T> {
    Field {
        name,
        optional: true,
        read,
    }
}

/// A type the reader can read a JSON value into.
pub(crate) trait ReadValue {
    /// Read one value (whitespace before it skipped) into `out`.
    ///
    /// # Errors
    ///
    /// A [`ReadError`] naming the problem, the field and the byte offset.
    fn read(r: &mut Reader<'_>, out: &mut Self) -> ReadResult<()>;
}

macro_rules! read_int {
    ($($t:ty),*) => {$(
        /// A JSON integer within the type's range.
        impl ReadValue for $t {
            fn read(r: &mut Reader<'_>, out: &mut Self) -> ReadResult<()> {
                r.peek();
                let at = r.i;
                let v = r.integer()?;
                match <$t>::try_from(v) {
                    Ok(v) => {
                        *out = v;
                        Ok(())
                    }
                    Err(_) => r.fail(ReadProblem::OutOfRange, at),
                }
            }
        }
    )*};
}
read_int!(u8, i8, u16, i16, u32, i32);

/// A JSON string of at most `N` bytes (decoded).
impl<const N: usize> ReadValue for String<N> {
    fn read(r: &mut Reader<'_>, out: &mut Self) -> ReadResult<()> {
        let mut buf = [0u8; N];
        let s = r.string(&mut buf)?;
        out.clear();
        match out.push_str(s) {
            Ok(()) => Ok(()),
            Err(_) => r.fail(ReadProblem::TooLong, r.i),
        }
    }
}

/// A JSON array of at most `N` elements.
impl<T: ReadValue + Default, const N: usize> ReadValue for Vec<T, N> {
    fn read(r: &mut Reader<'_>, out: &mut Self) -> ReadResult<()> {
        out.clear();
        r.array(|r| {
            let at = r.i;
            let mut v = T::default();
            r.value(&mut v)?;
            out.push(v).map_err(|_| ReadError {
                problem: ReadProblem::TooLong,
                field: r.field,
                offset: at,
            })
        })
    }
}

/// An enum written as the snake_case name of a unit variant (serde's
/// `rename_all = "snake_case"`).
pub(crate) trait JsonEnum: Copy + 'static {
    /// Every variant with its JSON name.
    const NAMES: &'static [(&'static str, Self)];
}

impl<E: JsonEnum> ReadValue for E {
    fn read(r: &mut Reader<'_>, out: &mut Self) -> ReadResult<()> {
        r.peek();
        let at = r.i;
        let mut buf = [0u8; MAX_NAME];
        let name = match r.string(&mut buf) {
            Err(ReadError {
                problem: ReadProblem::TooLong,
                ..
            }) => "",
            s => s?,
        };
        match E::NAMES.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                *out = *v;
                Ok(())
            }
            None => r.fail(ReadProblem::UnknownVariant, at),
        }
    }
}

// ---------------------------------------------------------------------
// The tables. A new variant is one line in its enum's NAMES; a new field
// one line in its struct's FIELDS (`opt` if it has `#[serde(default)]`,
// and then the start value in `from_json` must hold that default).

impl JsonEnum for Method {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("none", Method::None),
        ("auto", Method::Auto),
        ("fixed", Method::Fixed),
    ];
}

impl JsonEnum for RangeMethod {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("max", RangeMethod::Max),
        ("three_sigma", RangeMethod::ThreeSigma),
        ("max_ten_percent", RangeMethod::MaxTenPercent),
        ("sweep", RangeMethod::Sweep),
        ("running", RangeMethod::Running),
        ("min_max", RangeMethod::MinMax),
    ];
}

impl JsonEnum for Rounding {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("nearest_even", Rounding::NearestEven),
        ("nearest_away", Rounding::NearestAway),
        ("floor", Rounding::Floor),
        ("stochastic", Rounding::Stochastic),
        ("tflite", Rounding::Tflite),
    ];
}

impl JsonEnum for Clamp {
    const NAMES: &'static [(&'static str, Self)] =
        &[("hardware", Clamp::Hardware), ("nics", Clamp::Nics)];
}

impl JsonEnum for Group {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("tensor", Group::Tensor),
        ("channel", Group::Channel),
        ("batch", Group::Batch),
    ];
}

impl JsonEnum for Kind {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("param", Kind::Param),
        ("buffer", Kind::Buffer),
        ("activation", Kind::Activation),
    ];
}

/// The fields of a [`QuantConfig`] (keep in step with the struct).
const QUANT_CONFIG_FIELDS: &[Field<QuantConfig>] = &[
    req("method", |r, c| r.value(&mut c.method)),
    req("bits", |r, c| r.value(&mut c.bits)),
    req("scale", |r, c| r.value(&mut c.scale)),
    opt("range", |r, c| r.value(&mut c.range)),
    opt("rounding", |r, c| r.value(&mut c.rounding)),
    opt("zero_point", |r, c| r.value(&mut c.zero_point)),
    opt("multiplier", |r, c| r.value(&mut c.multiplier)),
    opt("group", |r, c| r.value(&mut c.group)),
    opt("ema", |r, c| r.value(&mut c.ema)),
    opt("clamp", |r, c| r.value(&mut c.clamp)),
];

/// The fields of a [`ConfigEntry`].
const CONFIG_ENTRY_FIELDS: &[Field<ConfigEntry>] = &[
    req("name", |r, e| r.value(&mut e.name)),
    req("kind", |r, e| r.value(&mut e.kind)),
    req("layer", |r, e| r.value(&mut e.layer)),
    req("data", |r, e| r.value(&mut e.data)),
    req("grad", |r, e| r.value(&mut e.grad)),
];

impl ReadValue for QuantConfig {
    fn read(r: &mut Reader<'_>, out: &mut Self) -> ReadResult<()> {
        r.object(QUANT_CONFIG_FIELDS, out)
    }
}

impl ReadValue for ConfigEntry {
    fn read(r: &mut Reader<'_>, out: &mut Self) -> ReadResult<()> {
        r.object(CONFIG_ENTRY_FIELDS, out)
    }
}

impl<const N: usize> ConfigDoc<N> {
    /// The fields of a config tree.
    const FIELDS: &'static [Field<Self>] = &[
        req("format", |r, d| r.value(&mut d.format)),
        req("version", |r, d| r.value(&mut d.version)),
        req("tensors", |r, d| r.value(&mut d.tensors)),
    ];
}

impl<const N: usize> ReadValue for ConfigDoc<N> {
    fn read(r: &mut Reader<'_>, out: &mut Self) -> ReadResult<()> {
        r.object(Self::FIELDS, out)
    }
}

impl Default for ConfigEntry {
    /// An empty name and layer, [`Kind::Param`], [`QuantConfig::NONE`] for
    /// both configs (the start value of the reader).
    fn default() -> Self {
        ConfigEntry {
            name: String::new(),
            kind: Kind::Param,
            layer: String::new(),
            data: QuantConfig::NONE,
            grad: QuantConfig::NONE,
        }
    }
}

impl QuantConfig {
    /// Read a config from JSON text (see [the reader](crate::model::ReadError)
    /// for the language): `method`, `bits` and `scale` required, the other
    /// fields default as in [`QuantConfig::NONE`]. The values are not
    /// validated: call [`validate`](Self::validate).
    ///
    /// # Errors
    ///
    /// A [`ReadError`] naming the problem, the field and the byte offset.
    pub fn from_json(text: &[u8]) -> ReadResult<Self> {
        // The start value holds the defaults of the optional fields:
        // `RangeMethod::Max`, `Rounding::NearestEven`, 0, 0, `Group::Tensor`,
        // ema 0, `Clamp::Hardware` (their types' `Default`, as
        // `#[serde(default)]` says).
        document(text, QuantConfig::NONE)
    }
}

impl ConfigEntry {
    /// Read one tensor's configs from JSON text (every field required).
    /// The configs are not validated.
    ///
    /// # Errors
    ///
    /// A [`ReadError`] naming the problem, the field and the byte offset;
    /// a name longer than [`MAX_PATH`](super::MAX_PATH) or a layer longer
    /// than [`MAX_TYPE`](super::MAX_TYPE) bytes is [`ReadProblem::TooLong`].
    pub fn from_json(text: &[u8]) -> ReadResult<Self> {
        document(text, ConfigEntry::default())
    }
}

impl<const N: usize> ConfigDoc<N> {
    /// Read a config tree from JSON text (every field required; the header
    /// is checked by [`apply`](Self::apply), the configs too). Duplicate
    /// keys are refused; nesting is bounded by the schema (an array or
    /// object where another value belongs is [`ReadProblem::WrongType`]),
    /// so no text runs the stack deeper.
    ///
    /// # Errors
    ///
    /// A [`ReadError`] naming the problem, the field and the byte offset;
    /// more than `N` tensors is [`ReadProblem::TooLong`] on `tensors`.
    pub fn from_json(text: &[u8]) -> ReadResult<Self> {
        let start = ConfigDoc {
            format: String::new(),
            version: 0,
            tensors: Vec::new(),
        };
        document(text, start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(problem: ReadProblem, field: &'static str, offset: usize) -> ReadError {
        ReadError {
            problem,
            field,
            offset,
        }
    }

    #[test]
    fn reads_a_full_config_in_any_key_order() {
        let t = br#" { "group" : "tensor", "multiplier":0,"zero_point":0,
            "rounding":"stochastic","range":"three_sigma","scale":-3,"bits":6,"method":"fixed" } "#;
        let mut want = QuantConfig::fixed(6, -3);
        want.range = RangeMethod::ThreeSigma;
        want.rounding = Rounding::Stochastic;
        assert_eq!(QuantConfig::from_json(t), Ok(want));
    }

    #[test]
    fn names_the_field_and_offset() {
        let q = |t: &str| QuantConfig::from_json(t.as_bytes());
        assert_eq!(
            q(r#"{"method":"auto","bits":8}"#),
            Err(err(ReadProblem::MissingField, "scale", 25))
        );
        assert_eq!(
            q(r#"{"method":"auto","bits":8,"bits":8,"scale":0}"#),
            Err(err(ReadProblem::DuplicateField, "bits", 26))
        );
        assert_eq!(
            q(r#"{"method":"auto","colour":8}"#),
            Err(err(ReadProblem::UnknownField, "", 17))
        );
        assert_eq!(
            q(r#"{"method":"auto","bits":8,"scale":128}"#),
            Err(err(ReadProblem::OutOfRange, "scale", 34))
        );
        assert_eq!(
            q(r#"{"method":"auto","bits":8,"scale":-129}"#),
            Err(err(ReadProblem::OutOfRange, "scale", 34))
        );
        assert_eq!(
            q(r#"{"method":"auto","bits":-1,"scale":0}"#),
            Err(err(ReadProblem::OutOfRange, "bits", 24))
        );
        for bad in ["08", "8.0", "8e0", "-0", "1E2"] {
            let t = [r#"{"method":"auto","bits":"#, bad, r#","scale":0}"#].concat();
            assert_eq!(q(&t), Err(err(ReadProblem::NotAnInteger, "bits", 24)));
        }
        assert_eq!(
            q(r#"{"method":"automatic","bits":8,"scale":0}"#),
            Err(err(ReadProblem::UnknownVariant, "method", 10))
        );
        assert_eq!(
            q(r#"{"method":"auto","bits":"8","scale":0}"#),
            Err(err(ReadProblem::WrongType, "bits", 24))
        );
        assert_eq!(
            q(r#"{"method":"auto","bits":8,"scale":0} x"#),
            Err(err(ReadProblem::Trailing, "", 37))
        );
        assert_eq!(q(r#"{"method":"auto""#), Err(err(ReadProblem::End, "", 16)));
    }

    #[test]
    fn decodes_escapes_in_keys_values_and_names() {
        let t = br#"{"name":"a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00","kind":"par\u0061m","layer":"L",
            "d\u0061ta":{"method":"none","bits":8,"scale":0},"grad":{"method":"none","bits":8,"scale":0}}"#;
        let e = ConfigEntry::from_json(t).unwrap();
        assert_eq!(e.name.as_str(), "a\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{1f600}");
        assert_eq!(e.kind, Kind::Param);
        for (bad, problem) in [
            (r#""\x""#, ReadProblem::BadEscape),
            (r#""\ud83d""#, ReadProblem::BadEscape),
            (r#""\ude00""#, ReadProblem::BadEscape),
            (r#""\ud83d\u0041""#, ReadProblem::BadEscape),
            (r#""\u12g4""#, ReadProblem::BadEscape),
            ("\"a\tb\"", ReadProblem::ControlCharacter),
        ] {
            let t = [r#"{"name":"#, bad, "}"].concat();
            let e = ConfigEntry::from_json(t.as_bytes()).unwrap_err();
            assert_eq!((e.problem, e.field), (problem, "name"), "{bad}");
        }
        let t = b"{\"name\":\"\xff\"}";
        let e = ConfigEntry::from_json(t).unwrap_err();
        assert_eq!(e, err(ReadProblem::InvalidUtf8, "name", 8));
    }

    #[test]
    fn capacities_and_nesting_are_errors() {
        let long = [r#"{"format":""#, &"x".repeat(17), r#""}"#].concat();
        assert_eq!(
            ConfigDoc::<1>::from_json(long.as_bytes()),
            Err(err(ReadProblem::TooLong, "format", 10))
        );
        let key = [r#"{""#, &"k".repeat(MAX_NAME + 1), r#"":1}"#].concat();
        assert_eq!(
            ConfigDoc::<1>::from_json(key.as_bytes()),
            Err(err(ReadProblem::UnknownField, "", 1))
        );
        let deep = [r#"{"format":"#, &"[".repeat(4096)].concat();
        assert_eq!(
            ConfigDoc::<1>::from_json(deep.as_bytes()),
            Err(err(ReadProblem::WrongType, "format", 10))
        );
        let e = r#"{"name":"a","kind":"param","layer":"L","data":{"method":"none","bits":8,"scale":0},"grad":{"method":"none","bits":8,"scale":0}}"#;
        let two = [r#"{"format":"f","version":1,"tensors":["#, e, ",", e, "]}"].concat();
        assert_eq!(
            ConfigDoc::<2>::from_json(two.as_bytes()).map(|d| d.tensors.len()),
            Ok(2)
        );
        assert_eq!(
            ConfigDoc::<1>::from_json(two.as_bytes()),
            Err(err(ReadProblem::TooLong, "tensors", 37 + e.len() + 1))
        );
    }
}

//! A structure check of JSON text, run before a JSON parser: every key at
//! most once per object, nesting at most [`MAX_DEPTH`] deep.
//!
//! serde-json-core and serde_json both accept an object that names a key
//! twice (a derived struct refuses it only with a message serde-json-core
//! throws away; a map keeps the last value), and a parser that recurses
//! once per level runs out of a microcontroller's stack on text like
//! `[[[[...]]]]`. [`check_json`] finds both with one loop and no recursion,
//! no heap and a fixed `MAX_DEPTH`-entry stack, and names the key or the
//! byte offset. It does not check the rest of the syntax: the parser that
//! runs next does.
//!
//! It serves the desktop's serde readers. The device configs are read by
//! fixnn's own reader ([`ReadError`](super::ReadError)), which needs no
//! such pass: it refuses a duplicate key with a bit per field of the
//! object, and its nesting is bounded by the schema it reads.
//!
//! Keys are compared as written, escapes included (`"a"` and `"\u0061"`
//! count as different keys here; a typed parser that decodes escapes then
//! refuses the second as a duplicate field).
//!
//! ```
//! use fixnn::model::{check_json, JsonProblem};
//!
//! assert_eq!(check_json(r#"{"a":1,"b":{"a":2}}"#), Ok(()));
//! assert_eq!(
//!     check_json(r#"{"a":1,"b":2,"a":3}"#),
//!     Err(JsonProblem::DuplicateKey { key: "a", offset: 13 })
//! );
//! let deep = "[".repeat(1000);
//! assert!(matches!(check_json(&deep), Err(JsonProblem::TooDeep { .. })));
//! ```

use core::fmt;

/// The deepest nesting of arrays and objects [`check_json`] accepts.
/// fixnn's own documents (config trees, states, checkpoints) nest at most
/// 6 levels.
pub const MAX_DEPTH: usize = 32;

/// What [`check_json`] found wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonProblem<'a> {
    /// An object names `key` a second time, at byte `offset` (of the key's
    /// opening quote).
    DuplicateKey {
        /// The key as written (escapes not decoded).
        key: &'a str,
        /// Byte offset of its second occurrence.
        offset: usize,
    },
    /// An array or object opens at byte `offset` inside [`MAX_DEPTH`] others.
    TooDeep {
        /// Byte offset of the `[` or `{` one level too deep.
        offset: usize,
    },
}

impl fmt::Display for JsonProblem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            JsonProblem::DuplicateKey { key, offset } => {
                write!(f, "duplicate key `{key}` (byte {offset})")
            }
            JsonProblem::TooDeep { offset } => write!(
                f,
                "JSON nested deeper than {MAX_DEPTH} levels (byte {offset})"
            ),
        }
    }
}

impl core::error::Error for JsonProblem<'_> {}

/// A structural token.
#[derive(Clone, Copy)]
enum Tok {
    /// `{` (true) or `[` (false) at this offset.
    Open(bool, usize),
    /// `}` or `]`.
    Close,
    /// `,`.
    Comma,
    /// A string: offsets of its first byte after the quote and of the
    /// closing quote.
    Str(usize, usize),
}

/// The next structural token of `b` at or after `*i`, advancing `*i`
/// past it; `None` at the end (an unterminated string ends the text).
fn next(b: &[u8], i: &mut usize) -> Option<Tok> {
    while let Some(&c) = b.get(*i) {
        let at = *i;
        *i += 1;
        match c {
            b'{' => return Some(Tok::Open(true, at)),
            b'[' => return Some(Tok::Open(false, at)),
            b'}' | b']' => return Some(Tok::Close),
            b',' => return Some(Tok::Comma),
            b'"' => {
                let start = *i;
                while let Some(&s) = b.get(*i) {
                    *i += 1;
                    match s {
                        b'\\' => *i += 1,
                        b'"' => return Some(Tok::Str(start, *i - 1)),
                        _ => {}
                    }
                }
                return None;
            }
            _ => {}
        }
    }
    None
}

/// Whether the object whose `{` is at `open` names `key` before byte `end`.
fn key_before(b: &[u8], open: usize, end: usize, key: &[u8]) -> bool {
    let body = b.get(..end).unwrap_or(b);
    let mut i = open + 1;
    let (mut depth, mut expect_key) = (0usize, true);
    while let Some(t) = next(body, &mut i) {
        match t {
            Tok::Open(_, _) => {
                depth += 1;
                expect_key = false;
            }
            Tok::Close => depth = depth.saturating_sub(1),
            Tok::Comma => expect_key = depth == 0,
            Tok::Str(s, e) => {
                if expect_key && body.get(s..e) == Some(key) {
                    return true;
                }
                expect_key = false;
            }
        }
    }
    false
}

/// Remembers the keys of the open objects for [`check_json_with`].
///
/// [`check_json`] uses one that keeps nothing and rescans the object's
/// text for each key (no heap; time grows with the keys of an object times
/// its length). A program with a heap can keep the keys of each open
/// object in a hash set, so that a check takes time linear in the text
/// (`fixnn-std` does).
pub trait KeyMemory {
    /// An object opens at nesting level `depth` (0: the outermost; arrays
    /// count as levels): forget every key recorded at `depth`.
    fn open(&mut self, depth: usize);
    /// Record the key `text[key]` of the object at level `depth`, whose `{`
    /// is at byte `object`; `true` if that object already had it (keys are
    /// compared as written, escapes included).
    fn seen(
        &mut self,
        text: &[u8],
        depth: usize,
        object: usize,
        key: core::ops::Range<usize>,
    ) -> bool;
}

/// The [`KeyMemory`] of [`check_json`]: keeps nothing, rescans the object.
struct Rescan;

impl KeyMemory for Rescan {
    fn open(&mut self, _depth: usize) {}

    fn seen(
        &mut self,
        text: &[u8],
        _depth: usize,
        object: usize,
        key: core::ops::Range<usize>,
    ) -> bool {
        let end = key.start.saturating_sub(1);
        key_before(text, object, end, text.get(key).unwrap_or_default())
    }
}

/// Check that no object of `text` names a key twice and that arrays and
/// objects nest at most [`MAX_DEPTH`] deep. Runs in a loop (no recursion,
/// no heap); time is linear in the text plus, per key, a rescan of its
/// object up to that key ([`check_json_with`] can do without the rescan).
///
/// # Errors
///
/// The first [`JsonProblem`] in text order. Malformed JSON is not an
/// error here (the parser reports it).
pub fn check_json(text: &str) -> Result<(), JsonProblem<'_>> {
    check_json_with(text, &mut Rescan)
}

/// [`check_json`], with `keys` remembering the keys of the open objects
/// (see [`KeyMemory`]). Gives the same result as [`check_json`] for every
/// text when `keys` keeps what it is told.
///
/// # Errors
///
/// As [`check_json`].
pub fn check_json_with<'t>(
    text: &'t str,
    keys: &mut impl KeyMemory,
) -> Result<(), JsonProblem<'t>> {
    let b = text.as_bytes();
    // For each open level: the offset of its `{`, or None for `[`.
    let mut stack: [Option<usize>; MAX_DEPTH] = [None; MAX_DEPTH];
    let (mut depth, mut expect_key, mut i) = (0usize, false, 0usize);
    while let Some(t) = next(b, &mut i) {
        match t {
            Tok::Open(obj, at) => {
                let Some(slot) = stack.get_mut(depth) else {
                    return Err(JsonProblem::TooDeep { offset: at });
                };
                *slot = obj.then_some(at);
                if obj {
                    keys.open(depth);
                }
                depth += 1;
                expect_key = obj;
            }
            Tok::Close => {
                depth = depth.saturating_sub(1);
                expect_key = false;
            }
            Tok::Comma => {
                expect_key = depth
                    .checked_sub(1)
                    .and_then(|d| stack.get(d))
                    .is_some_and(|s| s.is_some());
            }
            Tok::Str(s, e) => {
                if expect_key {
                    let object = depth
                        .checked_sub(1)
                        .and_then(|d| Some((d, stack.get(d).copied().flatten()?)));
                    if let Some((level, open)) = object {
                        if keys.seen(b, level, open, s..e) {
                            return Err(JsonProblem::DuplicateKey {
                                key: text.get(s..e).unwrap_or_default(),
                                offset: s.saturating_sub(1),
                            });
                        }
                    }
                }
                expect_key = false;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_duplicates_at_any_level_and_only_within_one_object() {
        assert_eq!(check_json(r#"{"a":{"x":1},"b":{"x":2}}"#), Ok(()));
        assert_eq!(check_json(r#"[{"a":1},{"a":2}]"#), Ok(()));
        assert_eq!(check_json(r#"{"a":"a","b":["a","a"]}"#), Ok(()));
        assert_eq!(check_json(r#"{"k":"\"","\"":1}"#), Ok(()));
        assert_eq!(
            check_json(r#"{"t":[{"n":1,"m":{"n":2},"n":3}]}"#),
            Err(JsonProblem::DuplicateKey {
                key: "n",
                offset: 25
            })
        );
        assert_eq!(
            check_json(r#"{"a\"b":1,"a\"b":2}"#),
            Err(JsonProblem::DuplicateKey {
                key: r#"a\"b"#,
                offset: 10
            })
        );
    }

    #[test]
    fn depth_limit_is_exact() {
        let ok = [&"[".repeat(MAX_DEPTH), "1", &"]".repeat(MAX_DEPTH)].concat();
        assert_eq!(check_json(&ok), Ok(()));
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(
            check_json(&deep),
            Err(JsonProblem::TooDeep { offset: MAX_DEPTH })
        );
        let deep_obj = r#"{"a":"#.repeat(MAX_DEPTH + 1);
        assert_eq!(
            check_json(&deep_obj),
            Err(JsonProblem::TooDeep {
                offset: 5 * MAX_DEPTH
            })
        );
    }

    #[test]
    fn malformed_text_is_left_to_the_parser() {
        for t in ["", "\"", "}}]]", "{\"a", "{\"a\":1,\"a", "[\"\\"] {
            assert_eq!(check_json(t), Ok(()), "{t}");
        }
    }
}

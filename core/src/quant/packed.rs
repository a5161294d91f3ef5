//! Packed storage of 2-, 3- and 4-bit codes: four or two codes per byte.
//!
//! # Bit layout (what a memory image holds)
//!
//! A packed tensor is its codes in flat (row-major) element order, with no
//! gap or alignment between rows, in consecutive bytes at increasing
//! addresses. Bytes are independent, so there is no byte order to choose.
//!
//! | bits | codes per byte | element `i` is in byte | at bits of that byte |
//! | --- | --- | --- | --- |
//! | 2 | 4 | `i / 4` | `2 (i % 4) ..= 2 (i % 4) + 1` |
//! | 3 | 2 | `i / 2` | `4 (i % 2) ..= 4 (i % 2) + 3` |
//! | 4 | 2 | `i / 2` | `4 (i % 2) ..= 4 (i % 2) + 3` |
//!
//! * The first element of a byte is in its least significant bits: byte
//!   `b7..b0` of a 2-bit tensor holds elements `[b1b0, b3b2, b5b4, b7b6]`;
//!   of a 4-bit tensor `[b3..b0, b7..b4]`.
//! * Each field is the code in two's complement of the field's width: a
//!   2-bit field holds `-2..=1`, a 4-bit field `-8..=7`.
//! * A 3-bit code is stored in a 4-bit field (a nibble), sign-extended: bit
//!   3 of the nibble equals bit 2. So `-4..=3` are the nibbles `0xC..=0xF,
//!   0x0..=0x3`, and a reader sign-extends every nibble the same way for 3
//!   and 4 bits. The nibbles `0x4..=0xB` are not 3-bit codes
//!   ([`PackedCodes::new`] refuses them).
//! * The tensor takes `ceil(n / per_byte)` bytes ([`packed_len`]); the
//!   unused fields of the last byte are zero (the writer writes zeros, the
//!   reader checks).
//!
//! Example: the 2-bit codes `[1, -2, 0, -1, 1]` are the bytes `0xC9, 0x01`
//! (`0b11_00_10_01`, then `0b00_00_00_01`); the 4-bit codes `[-8, 7, 3]`
//! are `0x78, 0x03`; the 3-bit codes `[-4, 3, -1]` are `0x3C, 0x0F`.
//!
//! # Examples
//!
//! ```
//! use fixnn::quant::packed::{pack, packed_len, unpack, PackedCodes};
//! use fixnn::Format;
//! let codes: [i8; 5] = [1, -2, 0, -1, 1];
//! let mut bytes = [0u8; 2];
//! assert_eq!(packed_len(2, codes.len())?, 2);
//! pack(&codes, 2, &mut bytes)?;
//! assert_eq!(bytes, [0xC9, 0x01]);
//! let view = PackedCodes::new(&bytes, Format::new(2, 0)?, 5)?;
//! assert_eq!(view.get(1), Some(-2));
//! let mut back = [0i8; 5];
//! unpack(&bytes, 2, &mut back)?;
//! assert_eq!(back, codes);
//! # Ok::<(), fixnn::Error>(())
//! ```

use super::format::Format;
use crate::error::{Error, Result};

/// Codes per byte for `bits`: 4 for 2 bits, 2 for 3 and 4 bits.
///
/// # Errors
///
/// [`Error::NotPackable`] for any other width.
pub const fn codes_per_byte(bits: u8) -> Result<usize> {
    match bits {
        2 => Ok(4),
        3 | 4 => Ok(2),
        _ => Err(Error::NotPackable { bits }),
    }
}

/// Width of the field one code takes: 2 for 2 bits, 4 for 3 and 4 bits.
const fn field_bits(bits: u8) -> u32 {
    if bits == 2 {
        2
    } else {
        4
    }
}

/// Bytes that `n` packed codes of `bits` bits take: `ceil(n / per_byte)`.
///
/// # Errors
///
/// [`Error::NotPackable`] if `bits` is not 2, 3 or 4.
pub const fn packed_len(bits: u8, n: usize) -> Result<usize> {
    match codes_per_byte(bits) {
        Ok(per) => Ok(n.div_ceil(per)),
        Err(e) => Err(e),
    }
}

/// Field `slot` of `byte` (fields of `field` bits), sign-extended.
#[inline(always)]
const fn field(byte: u8, field: u32, slot: u32) -> i8 {
    let shift = slot * field;
    ((byte << (8 - field - shift)) as i8) >> (8 - field)
}

/// Pack `codes` (any integer type: `i8`, `i16`, `i32`) of `bits` bits into
/// `out`, in the [layout](self) above; the unused fields of the last byte
/// are zero.
///
/// # Errors
///
/// Checked before anything is written:
/// [`Error::NotPackable`] if `bits` is not 2, 3 or 4;
/// [`Error::LengthMismatch`] if `out.len()` is not [`packed_len`]`(bits, codes.len())`
/// (`expected` is that length);
/// [`Error::CodeOutOfRange`] for the first code outside `[-2^(bits-1), 2^(bits-1) - 1]`.
pub fn pack<T: Copy + Into<i64>>(codes: &[T], bits: u8, out: &mut [u8]) -> Result<()> {
    let need = packed_len(bits, codes.len())?;
    if out.len() != need {
        return Err(Error::LengthMismatch {
            expected: need,
            found: out.len(),
        });
    }
    let (lo, hi) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
    if let Some((index, code)) = codes
        .iter()
        .map(|&c| c.into())
        .enumerate()
        .find(|&(_, c)| c < lo || c > hi)
    {
        return Err(Error::CodeOutOfRange { index, code });
    }
    let f = field_bits(bits);
    let per = (8 / f) as usize;
    let mask = (1u8 << f) - 1;
    for (byte, chunk) in out.iter_mut().zip(codes.chunks(per)) {
        let mut b = 0u8;
        for (slot, &c) in chunk.iter().enumerate() {
            let c: i64 = c.into();
            b |= ((c as u8) & mask) << (slot as u32 * f);
        }
        *byte = b;
    }
    Ok(())
}

/// Unpack `out.len()` codes of `bits` bits from `packed` (checked as
/// [`PackedCodes::new`] checks).
///
/// # Errors
///
/// As [`PackedCodes::new`]; nothing is written on error.
pub fn unpack<C: super::Code>(packed: &[u8], bits: u8, out: &mut [C]) -> Result<()> {
    let fmt = Format::new(bits, 0)?;
    let view = PackedCodes::new(packed, fmt, out.len())?;
    view.unpack_range(0, out)
}

/// A validated, read-only view of `len` packed codes of format `fmt`
/// (typically a `static` byte array in flash).
///
/// Built by [`PackedCodes::new`], which checks the length, every field
/// and the padding once; the accessors then cannot fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PackedCodes<'a> {
    bytes: &'a [u8],
    fmt: Format,
    len: usize,
}

impl<'a> PackedCodes<'a> {
    /// A view of `len` codes of `fmt` packed in `bytes`.
    ///
    /// # Errors
    ///
    /// [`Error::NotPackable`] if `fmt.bits()` is not 2, 3 or 4;
    /// [`Error::LengthMismatch`] if `bytes.len()` is not
    /// [`packed_len`]`(bits, len)` (`expected` is that length);
    /// [`Error::CodeOutOfRange`] for the first 3-bit nibble that is not a
    /// sign-extended 3-bit code (`code` is the nibble read as 4 bits);
    /// [`Error::Invalid`] if an unused field of the last byte is not zero;
    /// [`Error::Unsupported`] naming `zero_point` if `fmt` has a zero point
    /// (packed fields hold `bits`-bit codes of a symmetric range only).
    pub fn new(bytes: &'a [u8], fmt: Format, len: usize) -> Result<Self> {
        if fmt.zero_point() != 0 {
            return Err(Error::Unsupported {
                field: "zero_point",
            });
        }
        let bits = fmt.bits();
        let need = packed_len(bits, len)?;
        if bytes.len() != need {
            return Err(Error::LengthMismatch {
                expected: need,
                found: bytes.len(),
            });
        }
        let f = field_bits(bits);
        let per = (8 / f) as usize;
        let used = len % per;
        if used != 0 {
            if let Some(&last) = bytes.last() {
                if last >> (used as u32 * f) != 0 {
                    return Err(Error::Invalid {
                        what: "unused fields of the last packed byte must be zero",
                    });
                }
            }
        }
        let view = PackedCodes { bytes, fmt, len };
        if bits == 3 {
            for i in 0..len {
                let c = view.code_at(i);
                if !(-4..=3).contains(&c) {
                    return Err(Error::CodeOutOfRange {
                        index: i,
                        code: c as i64,
                    });
                }
            }
        }
        Ok(view)
    }

    /// The packed bytes.
    pub const fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The codes' format.
    pub const fn format(&self) -> Format {
        self.fmt
    }

    /// The number of codes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no codes.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Code `i`, `None` past the end.
    pub fn get(&self, i: usize) -> Option<i8> {
        (i < self.len).then(|| self.code_at(i) as i8)
    }

    /// Code `i` as `i32`, for inner loops: 0 past the end (callers index
    /// within [`PackedCodes::len`]; nothing can panic).
    #[inline(always)]
    pub fn code_at(&self, i: usize) -> i32 {
        let f = field_bits(self.fmt.bits());
        let (byte, slot) = if f == 2 {
            (i >> 2, i & 3)
        } else {
            (i >> 1, i & 1)
        };
        match self.bytes.get(byte) {
            Some(&b) => field(b, f, slot as u32) as i32,
            None => 0,
        }
    }

    /// Unpack codes `start..start + out.len()` into `out` (a row into a
    /// small scratch buffer, say).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if the range goes past the end (nothing written).
    pub fn unpack_range<C: super::Code>(&self, start: usize, out: &mut [C]) -> Result<()> {
        if start
            .checked_add(out.len())
            .is_none_or(|end| end > self.len)
        {
            return Err(Error::Shape {
                what: "packed code range past the end of the tensor",
            });
        }
        for (k, o) in out.iter_mut().enumerate() {
            *o = C::from_code(self.code_at(start + k));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// Golden bytes worked out by hand from the layout table.
    #[test]
    fn golden_bytes_for_2_3_and_4_bits() {
        let cases: [(u8, &[i8], &[u8]); 3] = [
            (2, &[1, -2, 0, -1, 1], &[0xC9, 0x01]),
            (3, &[-4, 3, -1], &[0x3C, 0x0F]),
            (4, &[-8, 7, 3, -1], &[0x78, 0xF3]),
        ];
        for (bits, codes, bytes) in cases {
            let mut out = vec![0u8; packed_len(bits, codes.len()).unwrap()];
            pack(codes, bits, &mut out).unwrap();
            assert_eq!(out, bytes, "{bits} bits");
            let mut back = vec![0i8; codes.len()];
            unpack(bytes, bits, &mut back).unwrap();
            assert_eq!(back, codes, "{bits} bits");
        }
    }

    #[test]
    fn every_code_round_trips_at_every_length() {
        for bits in 2u8..=4 {
            let (lo, hi) = (-(1i16 << (bits - 1)), (1i16 << (bits - 1)) - 1);
            for n in 0..19usize {
                let codes: Vec<i16> = (0..n)
                    .map(|i| lo + ((i * 5 + n) % (hi - lo + 1) as usize) as i16)
                    .collect();
                let mut bytes = vec![0u8; packed_len(bits, n).unwrap()];
                pack(&codes, bits, &mut bytes).unwrap();
                let view = PackedCodes::new(&bytes, Format::new(bits, -2).unwrap(), n).unwrap();
                let got: Vec<i16> = (0..n).map(|i| view.get(i).unwrap() as i16).collect();
                assert_eq!(got, codes);
                assert_eq!(view.get(n), None);
                let mut part = vec![0i16; n / 2];
                view.unpack_range(n - n / 2, &mut part).unwrap();
                assert_eq!(part, &codes[n - n / 2..]);
            }
        }
    }

    #[test]
    fn errors_name_the_problem_and_write_nothing() {
        let mut out = [0xAAu8; 2];
        assert_eq!(
            pack(&[0i8; 5], 5, &mut out),
            Err(Error::NotPackable { bits: 5 })
        );
        assert_eq!(
            pack(&[0i8; 5], 2, &mut out[..1]),
            Err(Error::LengthMismatch {
                expected: 2,
                found: 1
            })
        );
        assert_eq!(
            pack(&[0i32, 1, 4, 0], 3, &mut out),
            Err(Error::CodeOutOfRange { index: 2, code: 4 })
        );
        assert_eq!(
            pack(&[0i8, -3], 2, &mut out[..1]),
            Err(Error::CodeOutOfRange { index: 1, code: -3 })
        );
        assert_eq!(out, [0xAA, 0xAA]);
        let f3 = Format::new(3, 0).unwrap();
        // Nibble 0x4 is 4-bit 4, not a 3-bit code.
        assert_eq!(
            PackedCodes::new(&[0x40], f3, 2),
            Err(Error::CodeOutOfRange { index: 1, code: 4 })
        );
        assert!(matches!(
            PackedCodes::new(&[0x10], f3, 1),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            PackedCodes::new(&[0x40], Format::new(2, 0).unwrap(), 3),
            Err(Error::Invalid { .. })
        ));
        assert!(PackedCodes::new(&[0x40], Format::new(2, 0).unwrap(), 4).is_ok());
        assert_eq!(
            PackedCodes::new(&[0; 3], Format::new(4, 0).unwrap(), 4),
            Err(Error::LengthMismatch {
                expected: 2,
                found: 3
            })
        );
        let v = PackedCodes::new(&[0x21], Format::new(4, 0).unwrap(), 2).unwrap();
        let mut o = [0i8; 2];
        assert!(v.unpack_range(1, &mut o).is_err());
        assert_eq!(o, [0, 0]);
        assert_eq!(v.code_at(7), 0);
    }
}

//! Scratch buffers reused across calls, per thread.
//!
//! Packed operands and padded images are large (hundreds of kilobytes) and
//! needed on every call; allocating them afresh each time costs page faults
//! that dwarf the arithmetic. Each thread keeps a few freed buffers of each
//! element type and hands them out again.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

/// Buffers kept per thread and element type.
const KEEP: usize = 8;
/// Buffers larger than this (in elements) are freed, not kept.
const KEEP_MAX: usize = 1 << 24;

type Pool<T> = RefCell<Vec<Vec<T>>>;

/// An element type with a per-thread pool of buffers.
pub(super) trait Pooled: Copy + Send + 'static {
    fn pool() -> &'static LocalKey<Pool<Self>>;
}

macro_rules! pooled {
    ($($t:ty => $name:ident),*) => {
        thread_local! {
            $(static $name: Pool<$t> = const { RefCell::new(Vec::new()) };)*
        }
        $(impl Pooled for $t {
            fn pool() -> &'static LocalKey<Pool<$t>> {
                &$name
            }
        })*
    };
}

pooled!(f32 => F32, f64 => F64, i64 => I64, usize => USIZE, u32 => U32, i32 => I32, u64 => U64, i8 => I8);

/// A vector that goes back to its thread's pool when dropped. The buffer
/// is `len` elements from `off`, the first element of the vector at a
/// 64-byte boundary (so that a kernel's 64-byte vectors do not span two
/// cache lines: the packed operands of an MNIST MLP step started 32 bytes
/// into a line, and aligning them gained about 6% of an epoch); the vector
/// may hold more, initialised by an earlier use, so that a later, longer
/// request need not fill them.
pub(super) struct Buf<T: Pooled> {
    v: Vec<T>,
    off: usize,
    len: usize,
}

/// Elements a buffer may skip to start at a 64-byte boundary.
const fn slack<T>() -> usize {
    64 / std::mem::size_of::<T>()
}

impl<T: Pooled> Buf<T> {
    /// An empty buffer (with the capacity of a pooled one, if any).
    pub(super) fn new() -> Self {
        let v = T::pool()
            .try_with(|p| p.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut b = Buf { v, off: 0, len: 0 };
        b.v.clear();
        b
    }

    /// Makes the buffer `len` elements from the vector's first 64-byte
    /// boundary, lengthening the vector with `fill` if need be.
    fn place(&mut self, len: usize, fill: T) {
        let need = len + slack::<T>();
        if self.v.len() < need {
            self.v.resize(need, fill);
        }
        // At most `slack` (`align_offset` may decline: usize::MAX).
        self.off = self.v.as_ptr().align_offset(64).min(slack::<T>());
        self.len = len;
    }

    /// `len` copies of `fill`.
    pub(super) fn filled(len: usize, fill: T) -> Self {
        let mut b = Self::new();
        b.refill(len, fill);
        b
    }

    /// Makes this buffer `len` copies of `fill`.
    pub(super) fn refill(&mut self, len: usize, fill: T) {
        self.v.clear();
        self.place(len, fill);
    }

    /// A buffer of `len` elements whose contents are unspecified (left
    /// from an earlier use, or `fill`): for callers that write every element.
    pub(super) fn with_len(len: usize, fill: T) -> Self {
        // The kept buffer whose length fits best (the shortest at least
        // `len` long, else the longest), so that the common case, a call
        // of the same shape as an earlier one, writes no fill at all.
        let v = T::pool()
            .try_with(|p| {
                let mut p = p.borrow_mut();
                let best = (0..p.len()).min_by_key(|&i| {
                    let l = p[i].len();
                    if l >= len + slack::<T>() {
                        (0, l)
                    } else {
                        (1, usize::MAX - l)
                    }
                })?;
                Some(p.swap_remove(best))
            })
            .ok()
            .flatten()
            .unwrap_or_default();
        // Elements past `len` are kept (not truncated), so the buffer goes
        // back to the pool as long as it was: a buffer that served a short
        // request and then a long one would otherwise fill the difference
        // on every call (in an MNIST MLP step, 150 KB of the int8 product's
        // packed operands, written on the training thread alone).
        let mut b = Buf { v, off: 0, len: 0 };
        b.place(len, fill);
        b
    }

    /// Makes this buffer `len` elements long, its contents unspecified
    /// (as [`Buf::with_len`]: elements past the old length are `fill`).
    pub(super) fn set_len(&mut self, len: usize, fill: T) {
        self.place(len, fill);
    }

    /// The elements of `it`.
    pub(super) fn collect(it: impl IntoIterator<Item = T>) -> Self {
        let mut b = Self::new();
        b.v.extend(it);
        (b.off, b.len) = (0, b.v.len());
        b
    }
}

impl<T: Pooled> Default for Buf<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Pooled> Drop for Buf<T> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.v);
        if v.capacity() == 0 || v.capacity() > KEEP_MAX {
            return;
        }
        // A thread being torn down drops the buffer instead.
        let _ = T::pool().try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                if p.len() < KEEP {
                    p.push(v);
                }
            }
        });
    }
}

impl<T: Pooled> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.v[self.off..self.off + self.len]
    }
}

impl<T: Pooled> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let (a, b) = (self.off, self.off + self.len);
        &mut self.v[a..b]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_request_keeps_the_buffer_long() {
        // On a thread of its own, so the pool starts empty.
        std::thread::spawn(|| {
            let mut long = Buf::<u64>::with_len(1000, 0);
            long.iter_mut().enumerate().for_each(|(i, v)| *v = i as u64);
            drop(long);
            let short = Buf::<u64>::with_len(10, 7);
            assert_eq!(short.len(), 10);
            drop(short);
            // The same vector again, long, with the values written first:
            // nothing was filled in between.
            let again = Buf::<u64>::with_len(1000, 7);
            assert_eq!(again.len(), 1000);
            assert!(again.iter().enumerate().all(|(i, &v)| v == i as u64));
            // `filled` still fills.
            drop(again);
            let filled = Buf::<u64>::filled(5, 3);
            assert_eq!(&filled[..], &[3; 5]);
        })
        .join()
        .unwrap();
    }
}

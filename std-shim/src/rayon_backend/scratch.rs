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

pooled!(f32 => F32, f64 => F64, i64 => I64, usize => USIZE, u32 => U32, i32 => I32, u64 => U64);

/// A vector that goes back to its thread's pool when dropped.
pub(super) struct Buf<T: Pooled> {
    v: Vec<T>,
}

impl<T: Pooled> Buf<T> {
    /// An empty buffer (with the capacity of a pooled one, if any).
    pub(super) fn new() -> Self {
        let v = T::pool()
            .try_with(|p| p.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut b = Buf { v };
        b.v.clear();
        b
    }

    /// `len` copies of `fill`.
    pub(super) fn filled(len: usize, fill: T) -> Self {
        let mut b = Self::new();
        b.v.resize(len, fill);
        b
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
                    if l >= len {
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
        let mut b = Buf { v };
        b.v.truncate(len);
        b.v.resize(len, fill);
        b
    }

    /// The elements of `it`.
    pub(super) fn collect(it: impl IntoIterator<Item = T>) -> Self {
        let mut b = Self::new();
        b.v.extend(it);
        b
    }

    /// The underlying vector (to resize it).
    pub(super) fn vec(&mut self) -> &mut Vec<T> {
        &mut self.v
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
        &self.v
    }
}

impl<T: Pooled> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.v
    }
}

//! [`PathBuf`]: the dotted path of a tensor, built without a heap.

use core::fmt;

/// Longest path, in bytes, that a model may have (`block.conv.running_mean`
/// is 23). Longer paths are truncated and flagged ([`PathBuf::overflowed`]).
pub const MAX_PATH: usize = 96;

/// A dotted path in a fixed buffer: segments are pushed when a visitor
/// enters a child and popped when it leaves.
#[derive(Clone, Copy)]
pub struct PathBuf {
    buf: [u8; MAX_PATH],
    len: usize,
    /// Length before each pushed segment (for [`PathBuf::pop`]).
    marks: [u8; 16],
    depth: usize,
    overflowed: bool,
}

impl Default for PathBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl PathBuf {
    /// The empty path.
    pub const fn new() -> Self {
        PathBuf {
            buf: [0; MAX_PATH],
            len: 0,
            marks: [0; 16],
            depth: 0,
            overflowed: false,
        }
    }

    /// Append `.segment` (or `segment` to an empty path). Nesting deeper
    /// than 16 levels or longer than [`MAX_PATH`] bytes sets
    /// [`overflowed`](Self::overflowed).
    pub fn push(&mut self, segment: &str) {
        match self.marks.get_mut(self.depth) {
            Some(m) => *m = self.len as u8,
            None => self.overflowed = true,
        }
        self.depth += 1;
        if self.len > 0 {
            self.push_bytes(b".");
        }
        self.push_bytes(segment.as_bytes());
    }

    /// Remove the last segment.
    pub fn pop(&mut self) {
        if self.depth == 0 {
            return;
        }
        self.depth -= 1;
        if let Some(&m) = self.marks.get(self.depth) {
            self.len = m as usize;
        }
    }

    fn push_bytes(&mut self, b: &[u8]) {
        let free = self.buf.get_mut(self.len..).unwrap_or_default();
        let n = b.len().min(free.len());
        if n < b.len() {
            self.overflowed = true;
        }
        for (d, &c) in free.iter_mut().zip(b) {
            *d = c;
        }
        self.len += n;
    }

    /// The path so far. Segments are `&str`, so this is valid UTF-8 unless
    /// truncation cut a character (then the cut is dropped).
    pub fn as_str(&self) -> &str {
        valid_prefix(self.as_bytes())
    }

    /// The bytes of the path so far.
    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// The path with `name` appended, written into `out`, as a `&str`.
    pub fn join<'a>(&self, name: &str, out: &'a mut [u8; MAX_PATH]) -> &'a str {
        let mut p = *self;
        p.push(name);
        for (d, &c) in out.iter_mut().zip(p.as_bytes()) {
            *d = c;
        }
        valid_prefix(out.get(..p.len).unwrap_or_default())
    }

    /// Whether a segment was dropped or cut (the path is not the real one).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

/// The longest prefix of `b` that is valid UTF-8.
fn valid_prefix(b: &[u8]) -> &str {
    match core::str::from_utf8(b) {
        Ok(s) => s,
        Err(e) => b
            .get(..e.valid_up_to())
            .and_then(|v| core::str::from_utf8(v).ok())
            .unwrap_or(""),
    }
}

impl fmt::Display for PathBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decimal digits of `n` without a heap (for sequence indices).
pub(crate) fn index_str(n: usize, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    core::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_pop_join() {
        let mut p = PathBuf::new();
        p.push("block");
        p.push("conv");
        assert_eq!(p.as_str(), "block.conv");
        let mut out = [0u8; MAX_PATH];
        assert_eq!(p.join("bias", &mut out), "block.conv.bias");
        p.pop();
        p.push("1");
        assert_eq!(p.as_str(), "block.1");
        p.pop();
        p.pop();
        assert_eq!(p.as_str(), "");
        assert!(!p.overflowed());
        let mut b = [0u8; 20];
        assert_eq!(index_str(0, &mut b), "0");
        assert_eq!(index_str(1234, &mut b), "1234");
    }

    #[test]
    fn overlong_paths_are_flagged_not_panics() {
        let mut p = PathBuf::new();
        let long = "x".repeat(200);
        p.push(&long);
        assert!(p.overflowed());
        assert_eq!(p.as_str().len(), MAX_PATH);
        for _ in 0..40 {
            p.push("y");
        }
        for _ in 0..41 {
            p.pop();
        }
        assert_eq!(p.as_str(), "");
    }
}

//! The case blob: what the desktop writes and the firmware includes.
//!
//! All integers and floats little-endian:
//!
//! ```text
//! magic "FXNNCASE"  version u32 (= VERSION)
//! name_len u8  name (the case's Case::NAME)
//! runs u32, then per run:
//!   seed u64  steps u32  eval u8 (1: one eval-mode forward pass after training)
//!   lr f32  momentum f32  weight_decay f32
//!   master_bits u8  momentum_bits u8   (0 0: f32 master; else a fixed-point master)
//!   entries u16, per entry: len u16 + one ConfigEntry as JSON (fixnn's config layout)
//!   input_len u32 (f32 values per step)  inputs: steps * input_len f32
//!   batch u32  labels: steps * batch u8
//! ```
//!
//! Config entries are separate small JSON documents so that a device with
//! little RAM parses one at a time.

use fixnn::optim::{FixedMaster, Sgd};

/// First 8 bytes of every blob.
pub const MAGIC: &[u8; 8] = b"FXNNCASE";
/// The layout version this crate reads and writes.
pub const VERSION: u32 = 1;

/// What is wrong with a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobError {
    /// The blob ends before a field it needs.
    Truncated,
    /// Not a case blob, or another version.
    BadHeader,
    /// The blob names another case than the firmware runs.
    WrongCase,
    /// Inputs or labels do not match the model's shapes.
    WrongShape,
    /// Bytes left after the last run.
    TrailingBytes,
}

/// Reads fields in order; every read checks the length.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `b`.
    pub const fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    ///
    /// [`BlobError::Truncated`].
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], BlobError> {
        if n > self.b.len() {
            return Err(BlobError::Truncated);
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BlobError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// A `u8`.
    ///
    /// # Errors
    ///
    /// [`BlobError::Truncated`].
    pub fn u8(&mut self) -> Result<u8, BlobError> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian `u16`.
    ///
    /// # Errors
    ///
    /// [`BlobError::Truncated`].
    pub fn u16(&mut self) -> Result<u16, BlobError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian `u32`.
    ///
    /// # Errors
    ///
    /// [`BlobError::Truncated`].
    pub fn u32(&mut self) -> Result<u32, BlobError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian `u64`.
    ///
    /// # Errors
    ///
    /// [`BlobError::Truncated`].
    pub fn u64(&mut self) -> Result<u64, BlobError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A little-endian `f32`.
    ///
    /// # Errors
    ///
    /// [`BlobError::Truncated`].
    pub fn f32(&mut self) -> Result<f32, BlobError> {
        Ok(f32::from_le_bytes(self.array()?))
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.b.len()
    }
}

/// One run of a case, borrowed from a blob.
#[derive(Clone, Copy)]
pub struct RunSpec<'a> {
    /// Seed of initialisation and stochastic rounding.
    pub seed: u64,
    /// Training steps.
    pub steps: u32,
    /// One eval-mode forward pass on the last step's input after training.
    pub eval: bool,
    /// The optimizer.
    pub sgd: Sgd,
    /// Number of config entries.
    pub entries: u16,
    /// The config entries: `entries` times (len u16, JSON).
    pub configs: &'a [u8],
    /// f32 values per step's input.
    pub input_len: u32,
    /// `steps * input_len` little-endian f32.
    pub inputs: &'a [u8],
    /// Labels per step.
    pub batch: u32,
    /// `steps * batch` labels.
    pub labels: &'a [u8],
}

impl RunSpec<'_> {
    /// The config entries as JSON documents, in order. An entry that runs
    /// past the end gives `Err(BlobError::Truncated)`.
    pub fn config_entries(&self) -> impl Iterator<Item = Result<&[u8], BlobError>> {
        let mut r = Reader::new(self.configs);
        (0..self.entries).map(move |_| {
            let n = r.u16()? as usize;
            r.bytes(n)
        })
    }
}

/// The header of a blob: its case name and a reader positioned at the first run.
pub struct Blob<'a> {
    /// The case name.
    pub name: &'a str,
    /// Number of runs.
    pub runs: u32,
    rest: Reader<'a>,
}

impl<'a> Blob<'a> {
    /// Parse the header.
    ///
    /// # Errors
    ///
    /// [`BlobError::BadHeader`], [`BlobError::Truncated`].
    pub fn parse(b: &'a [u8]) -> Result<Self, BlobError> {
        let mut r = Reader::new(b);
        if r.bytes(8).map_err(|_| BlobError::BadHeader)? != MAGIC || r.u32()? != VERSION {
            return Err(BlobError::BadHeader);
        }
        let n = r.u8()? as usize;
        let name = core::str::from_utf8(r.bytes(n)?).map_err(|_| BlobError::BadHeader)?;
        let runs = r.u32()?;
        Ok(Blob {
            name,
            runs,
            rest: r,
        })
    }

    /// The next run (`None` after the last; then the blob must be used up).
    ///
    /// # Errors
    ///
    /// [`BlobError::Truncated`], [`BlobError::TrailingBytes`].
    pub fn next_run(&mut self) -> Result<Option<RunSpec<'a>>, BlobError> {
        if self.runs == 0 {
            return if self.rest.remaining() == 0 {
                Ok(None)
            } else {
                Err(BlobError::TrailingBytes)
            };
        }
        self.runs -= 1;
        let r = &mut self.rest;
        let seed = r.u64()?;
        let steps = r.u32()?;
        let eval = r.u8()? != 0;
        let (lr, momentum, weight_decay) = (r.f32()?, r.f32()?, r.f32()?);
        let (mb, mmb) = (r.u8()?, r.u8()?);
        let mut sgd = Sgd::new(lr, momentum, weight_decay);
        if mb != 0 {
            sgd.fixed_master = Some(FixedMaster {
                bits: mb,
                momentum_bits: mmb,
            });
        }
        let entries = r.u16()?;
        let start = *r;
        for _ in 0..entries {
            let n = r.u16()? as usize;
            r.bytes(n)?;
        }
        let configs = &start.b[..start.b.len() - r.remaining()];
        let input_len = r.u32()?;
        let n_in = (steps as usize)
            .checked_mul(input_len as usize)
            .and_then(|n| n.checked_mul(4))
            .ok_or(BlobError::WrongShape)?;
        let inputs = r.bytes(n_in)?;
        let batch = r.u32()?;
        let n_lab = (steps as usize)
            .checked_mul(batch as usize)
            .ok_or(BlobError::WrongShape)?;
        let labels = r.bytes(n_lab)?;
        Ok(Some(RunSpec {
            seed,
            steps,
            eval,
            sgd,
            entries,
            configs,
            input_len,
            inputs,
            batch,
            labels,
        }))
    }
}

/// Write a blob header for `runs` runs of case `name` (at most 255 bytes).
pub fn write_header(name: &str, runs: u32, w: &mut dyn FnMut(&[u8])) {
    w(MAGIC);
    w(&VERSION.to_le_bytes());
    let n = name.len().min(255);
    w(&[n as u8]);
    w(&name.as_bytes()[..n]);
    w(&runs.to_le_bytes());
}

/// Write one run. `configs` are the JSON entries (each at most 65535
/// bytes), `inputs` `steps * input_len` values, `labels` `steps * batch`.
#[allow(clippy::too_many_arguments)]
pub fn write_run(
    seed: u64,
    steps: u32,
    eval: bool,
    sgd: &Sgd,
    configs: &[&[u8]],
    input_len: u32,
    inputs: &[f32],
    batch: u32,
    labels: &[u8],
    w: &mut dyn FnMut(&[u8]),
) {
    w(&seed.to_le_bytes());
    w(&steps.to_le_bytes());
    w(&[eval as u8]);
    for v in [sgd.lr, sgd.momentum, sgd.weight_decay] {
        w(&v.to_le_bytes());
    }
    match sgd.fixed_master {
        Some(f) => w(&[f.bits, f.momentum_bits]),
        None => w(&[0, 0]),
    }
    w(&(configs.len() as u16).to_le_bytes());
    for c in configs {
        w(&(c.len() as u16).to_le_bytes());
        w(c);
    }
    w(&input_len.to_le_bytes());
    for v in inputs {
        w(&v.to_le_bytes());
    }
    w(&batch.to_le_bytes());
    w(labels);
}

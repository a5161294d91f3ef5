//! Datasets: MNIST and Fashion-MNIST from IDX files, normalised batches and
//! seeded epoch orders.
//!
//! The four standard files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`) are read raw or
//! gzip-compressed (detected by the gzip magic bytes, whatever the name);
//! each may be present as `name` or `name.gz`, and the raw file wins when both
//! are. Every header is checked before anything is allocated, and every
//! problem is a [`DataError`] naming the file and what was expected: no
//! input makes this module panic.
//!
//! Pixels are normalised as `((p as f32 / 255.0) - mean) / std`, in f32 and
//! in that order, so a batch has the same bits on every machine; the epoch
//! order is a Fisher-Yates shuffle driven by [`fixnn::Stream`], so it is the
//! same on every machine too.

use std::env;
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use fixnn::Stream;
use flate2::read::MultiGzDecoder;

/// Training images file name (without `.gz`).
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
/// Training labels file name (without `.gz`).
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
/// Test images file name (without `.gz`).
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
/// Test labels file name (without `.gz`).
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// IDX magic of an unsigned-byte, 3-dimensional file (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic of an unsigned-byte, 1-dimensional file (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The largest IDX file (header + data, uncompressed) or gzip file accepted,
/// in bytes. Headers claiming more are refused before anything is allocated.
pub const MAX_FILE_BYTES: u64 = 100_000_000;

/// Number of classes; a label must be below it.
pub const CLASSES: usize = 10;

/// The tensor id under which [`epoch_order`] draws from [`Stream`].
pub const SHUFFLE_TENSOR: u32 = 0xDA7A;
/// The tensor id of the (rare) redraws of [`epoch_order`] after a rejection.
pub const SHUFFLE_RETRY_TENSOR: u32 = 0xDA7A_0001;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Which dataset the files hold. Both have the same file names and format;
/// the kind only selects the normalisation constants (and names the files in
/// messages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dataset {
    /// Handwritten digits: mean 0.1307, std 0.3081.
    #[default]
    Mnist,
    /// Zalando's clothing images: mean 0.2860, std 0.3530.
    FashionMnist,
}

impl Dataset {
    /// Mean of the training pixels scaled to `[0, 1]`.
    pub const fn mean(self) -> f32 {
        match self {
            Dataset::Mnist => 0.1307,
            Dataset::FashionMnist => 0.2860,
        }
    }

    /// Standard deviation of the training pixels scaled to `[0, 1]`.
    pub const fn std(self) -> f32 {
        match self {
            Dataset::Mnist => 0.3081,
            Dataset::FashionMnist => 0.3530,
        }
    }

    /// The display name: `MNIST` or `Fashion-MNIST`.
    pub const fn name(self) -> &'static str {
        match self {
            Dataset::Mnist => "MNIST",
            Dataset::FashionMnist => "Fashion-MNIST",
        }
    }

    /// The normalised value of pixel `p`: `((p as f32 / 255.0) - mean) / std`,
    /// each operation an IEEE-754 f32 operation in that order (round to
    /// nearest even), so the bits are the same on every machine.
    ///
    /// # Examples
    ///
    /// ```
    /// use fixnn_std::data::Dataset;
    /// let m = Dataset::Mnist;
    /// assert_eq!(m.normalize(0), (0.0 - 0.1307f32) / 0.3081);
    /// assert_eq!(m.normalize(255), (1.0 - 0.1307f32) / 0.3081);
    /// ```
    pub fn normalize(self, p: u8) -> f32 {
        ((p as f32 / 255.0) - self.mean()) / self.std()
    }

    /// [`Dataset::normalize`] of every byte value.
    fn table(self) -> [f32; 256] {
        let mut t = [0.0; 256];
        for (p, v) in (0..=u8::MAX).zip(t.iter_mut()) {
            *v = self.normalize(p);
        }
        t
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = String;

    /// `mnist` or `fashion-mnist` (also `fashion`, `fashion_mnist`), any case.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "mnist" => Ok(Dataset::Mnist),
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" | "fashion" => {
                Ok(Dataset::FashionMnist)
            }
            _ => Err(format!(
                "unknown dataset {s:?} (expected mnist or fashion-mnist)"
            )),
        }
    }
}

/// What an IDX header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// `count` images of `rows` x `cols` unsigned bytes (magic 0x00000803).
    Images {
        /// Number of images.
        count: u32,
        /// Rows per image.
        rows: u32,
        /// Columns per image.
        cols: u32,
    },
    /// `count` unsigned-byte labels (magic 0x00000801).
    Labels {
        /// Number of labels.
        count: u32,
    },
}

impl Header {
    /// Header length in bytes: 16 for images, 8 for labels.
    pub const fn header_len(&self) -> u64 {
        match self {
            Header::Images { .. } => 16,
            Header::Labels { .. } => 8,
        }
    }

    /// The size of the whole uncompressed file the header describes (header
    /// included), exact (no overflow: at most about 2^96).
    pub fn file_bytes(&self) -> u128 {
        match *self {
            Header::Images { count, rows, cols } => {
                16 + u128::from(count) * u128::from(rows) * u128::from(cols)
            }
            Header::Labels { count } => 8 + u128::from(count),
        }
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Header::Images { count, rows, cols } => write!(f, "{count} images of {rows}x{cols}"),
            Header::Labels { count } => write!(f, "{count} labels"),
        }
    }
}

/// Which of the two IDX file kinds is expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxKind {
    /// Images (magic 0x00000803, 16-byte header).
    Images,
    /// Labels (magic 0x00000801, 8-byte header).
    Labels,
}

impl IdxKind {
    /// The expected magic number.
    pub const fn magic(self) -> u32 {
        match self {
            IdxKind::Images => IMAGES_MAGIC,
            IdxKind::Labels => LABELS_MAGIC,
        }
    }

    /// The header length in bytes.
    pub const fn header_len(self) -> usize {
        match self {
            IdxKind::Images => 16,
            IdxKind::Labels => 8,
        }
    }

    const fn noun(self) -> &'static str {
        match self {
            IdxKind::Images => "image",
            IdxKind::Labels => "label",
        }
    }
}

/// Everything that can go wrong finding, reading and using a dataset. The
/// message of every file error starts with the file's path.
#[derive(Debug)]
#[non_exhaustive]
pub enum DataError {
    /// Neither `name` nor `name.gz` exists in the directory (`path` is
    /// `dir/name`).
    NotFound {
        /// `dir/name`, without `.gz`.
        path: PathBuf,
        /// Standard file name expected.
        name: String,
        /// The dataset the file belongs to.
        dataset: Dataset,
    },
    /// A directory given explicitly (by `--data` or `$FIXNN_DATA`) does not
    /// exist or is not a directory.
    DirNotFound {
        /// The directory.
        path: PathBuf,
        /// `--data` or `$FIXNN_DATA`.
        given_by: &'static str,
    },
    /// No default dataset directory exists.
    NoDataDir {
        /// Every directory tried, in order.
        tried: Vec<PathBuf>,
    },
    /// The file could not be opened or read.
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// The file starts with the gzip magic bytes but does not decompress
    /// (bad header, corrupt deflate data, bad checksum, cut short).
    Gzip {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        error: io::Error,
    },
    /// The file does not start with the expected IDX magic number.
    BadMagic {
        /// The file.
        path: PathBuf,
        /// What was expected.
        kind: IdxKind,
        /// The first four bytes, big-endian.
        found: u32,
    },
    /// The file is shorter than an IDX header.
    TruncatedHeader {
        /// The file.
        path: PathBuf,
        /// What was expected.
        kind: IdxKind,
        /// Bytes found (after decompression).
        found: u64,
    },
    /// The file is shorter than its header says.
    Truncated {
        /// The file.
        path: PathBuf,
        /// The header.
        header: Header,
        /// Bytes found (after decompression, header included).
        found: u64,
    },
    /// The file is longer than its header says.
    TrailingData {
        /// The file.
        path: PathBuf,
        /// The header.
        header: Header,
        /// Bytes found (after decompression, header included); counting
        /// stops a little past [`MAX_FILE_BYTES`].
        found: u64,
    },
    /// An image header with zero rows or columns.
    BadDimensions {
        /// The file.
        path: PathBuf,
        /// The header.
        header: Header,
    },
    /// The header (or the gzip file) is larger than [`MAX_FILE_BYTES`].
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The header, or `None` for a gzip file too large to read.
        header: Option<Header>,
        /// Size claimed by the header (or of the gzip file), in bytes.
        bytes: u128,
    },
    /// The images and labels files hold different numbers of samples.
    CountMismatch {
        /// The images file.
        images: PathBuf,
        /// The labels file.
        labels: PathBuf,
        /// Number of images.
        n_images: usize,
        /// Number of labels.
        n_labels: usize,
    },
    /// A label is not a class number below [`CLASSES`].
    BadLabel {
        /// The labels file (empty for an in-memory split).
        path: PathBuf,
        /// The sample index.
        index: usize,
        /// The label found.
        label: u8,
    },
    /// A sample index past the end of a split.
    IndexOutOfRange {
        /// The index.
        index: u32,
        /// The split's length.
        len: usize,
    },
    /// A buffer of the wrong length.
    BufferSize {
        /// Which buffer.
        buffer: &'static str,
        /// The length required.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// Images of zero rows or columns (or too many pixels to address).
    EmptyImages {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::NotFound {
                path,
                name,
                dataset,
            } => write!(
                f,
                "{}: not found (expected the {dataset} file {name}[.gz])",
                path.display()
            ),
            DataError::DirNotFound { path, given_by } => write!(
                f,
                "{}: dataset directory not found (given by {given_by})",
                path.display()
            ),
            DataError::NoDataDir { tried } => {
                f.write_str("no dataset directory found; tried ")?;
                for (i, p) in tried.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", p.display())?;
                }
                f.write_str(" (use --data DIR or set $FIXNN_DATA)")
            }
            DataError::Io { path, error } => {
                write!(f, "{}: cannot read: {error}", path.display())
            }
            DataError::Gzip { path, error } => {
                write!(f, "{}: corrupt gzip stream: {error}", path.display())
            }
            DataError::BadMagic { path, kind, found } => write!(
                f,
                "{}: not an IDX {} file (magic 0x{found:08x}, expected 0x{:08x})",
                path.display(),
                kind.noun(),
                kind.magic()
            ),
            DataError::TruncatedHeader { path, kind, found } => write!(
                f,
                "{}: truncated: an IDX {} file starts with a {}-byte header, found {found} bytes",
                path.display(),
                kind.noun(),
                kind.header_len()
            ),
            DataError::Truncated {
                path,
                header,
                found,
            } => write!(
                f,
                "{}: truncated: header says {header} ({} bytes), found {found}",
                path.display(),
                header.file_bytes()
            ),
            DataError::TrailingData {
                path,
                header,
                found,
            } => write!(
                f,
                "{}: trailing data: header says {header} ({} bytes), found {found}",
                path.display(),
                header.file_bytes()
            ),
            DataError::BadDimensions { path, header } => write!(
                f,
                "{}: bad dimensions: header says {header} (an image needs at least 1x1)",
                path.display()
            ),
            DataError::TooLarge {
                path,
                header: Some(header),
                bytes,
            } => write!(
                f,
                "{}: too large: header says {header} ({bytes} bytes), more than the \
                 {MAX_FILE_BYTES}-byte limit",
                path.display()
            ),
            DataError::TooLarge {
                path,
                header: None,
                bytes,
            } => write!(
                f,
                "{}: too large: gzip file of {bytes} bytes, more than the {MAX_FILE_BYTES}-byte limit",
                path.display()
            ),
            DataError::CountMismatch {
                images,
                labels,
                n_images,
                n_labels,
            } => write!(
                f,
                "{}: {n_labels} labels, but {} has {n_images} images",
                labels.display(),
                images.display()
            ),
            DataError::BadLabel { path, index, label } => write!(
                f,
                "{}: label {label} at index {index} is not a class 0-{}",
                path.display(),
                CLASSES - 1
            ),
            DataError::IndexOutOfRange { index, len } => {
                write!(f, "sample index {index} out of range (the split has {len})")
            }
            DataError::BufferSize {
                buffer,
                expected,
                found,
            } => write!(f, "{buffer}: length {found}, expected {expected}"),
            DataError::EmptyImages { rows, cols } => {
                write!(f, "images of {rows}x{cols}: need at least 1x1 pixels")
            }
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataError::Io { error, .. } | DataError::Gzip { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// `Result` with a [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Reads into `buf` until it is full or the reader ends; returns the count.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let Some(rest) = buf.get_mut(n..) else { break };
        match r.read(rest) {
            Ok(0) => break,
            Ok(k) => n = n.saturating_add(k).min(buf.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads one IDX file of `kind`, raw or gzipped: its header and its data
/// (the bytes after the header).
///
/// # Errors
///
/// [`DataError::Io`], [`DataError::Gzip`], [`DataError::BadMagic`],
/// [`DataError::TruncatedHeader`], [`DataError::BadDimensions`],
/// [`DataError::TooLarge`], [`DataError::Truncated`],
/// [`DataError::TrailingData`], each naming `path`.
pub fn read_idx(path: &Path, kind: IdxKind) -> Result<(Header, Vec<u8>)> {
    let mut file = File::open(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let len = file.metadata().map_or(0, |m| m.len());
    read_idx_from(path, kind, &mut file, len)
}

/// Reads one IDX file of `kind` held in memory, raw or gzipped, exactly
/// as [`read_idx`] reads a file (errors name `path`, which is not opened).
///
/// # Errors
///
/// As [`read_idx`].
pub fn read_idx_bytes(path: &Path, kind: IdxKind, bytes: &[u8]) -> Result<(Header, Vec<u8>)> {
    let mut src = bytes;
    read_idx_from(path, kind, &mut src, bytes.len() as u64)
}

/// [`read_idx`] on the stream `file` of `len` bytes (used in messages only).
fn read_idx_from(
    path: &Path,
    kind: IdxKind,
    mut file: &mut dyn Read,
    len: u64,
) -> Result<(Header, Vec<u8>)> {
    let io_err = |error| DataError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut start = [0u8; 2];
    let n = read_up_to(&mut file, &mut start).map_err(io_err)?;
    if n == 2 && start == GZIP_MAGIC {
        // Read the compressed bytes first, so that every decoder error is a
        // gzip error and not an I/O error of the file.
        let mut compressed = start.to_vec();
        (&mut file)
            .take(MAX_FILE_BYTES - 1)
            .read_to_end(&mut compressed)
            .map_err(io_err)?;
        if compressed.len() as u64 > MAX_FILE_BYTES {
            return Err(DataError::TooLarge {
                path: path.to_path_buf(),
                header: None,
                bytes: u128::from(len.max(compressed.len() as u64)),
            });
        }
        let mut dec = MultiGzDecoder::new(compressed.as_slice());
        parse_idx(path, kind, &mut dec, true)
    } else {
        let head = start.get(..n).unwrap_or(&[]);
        let mut r = head.chain(file);
        parse_idx(path, kind, &mut r, false)
    }
}

/// Parses the (decompressed) stream `r` of the IDX file at `path`.
fn parse_idx(path: &Path, kind: IdxKind, r: &mut dyn Read, gz: bool) -> Result<(Header, Vec<u8>)> {
    let err = |error| {
        let path = path.to_path_buf();
        if gz {
            DataError::Gzip { path, error }
        } else {
            DataError::Io { path, error }
        }
    };
    let mut head = [0u8; 16];
    let hlen = kind.header_len();
    let got = read_up_to(r, head.get_mut(..hlen).unwrap_or(&mut [])).map_err(err)?;
    let word = |i: usize| {
        u32::from_be_bytes([
            head[4 * i],
            head[4 * i + 1],
            head[4 * i + 2],
            head[4 * i + 3],
        ])
    };
    if got >= 4 && word(0) != kind.magic() {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            kind,
            found: word(0),
        });
    }
    if got < hlen {
        return Err(DataError::TruncatedHeader {
            path: path.to_path_buf(),
            kind,
            found: got as u64,
        });
    }
    let header = match kind {
        IdxKind::Images => Header::Images {
            count: word(1),
            rows: word(2),
            cols: word(3),
        },
        IdxKind::Labels => Header::Labels { count: word(1) },
    };
    if let Header::Images { rows, cols, .. } = header {
        if rows == 0 || cols == 0 {
            return Err(DataError::BadDimensions {
                path: path.to_path_buf(),
                header,
            });
        }
    }
    let total = header.file_bytes();
    let too_large = || DataError::TooLarge {
        path: path.to_path_buf(),
        header: Some(header),
        bytes: total,
    };
    if total > u128::from(MAX_FILE_BYTES) {
        return Err(too_large());
    }
    let data_len = total as u64 - header.header_len();
    let mut data = Vec::new();
    data.try_reserve_exact(data_len as usize)
        .map_err(|_| too_large())?;
    r.take(data_len).read_to_end(&mut data).map_err(err)?;
    if (data.len() as u64) < data_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            header,
            found: header.header_len() + data.len() as u64,
        });
    }
    // Read to the end: anything more is an error, and a gzip stream's
    // checksum is verified only at its end.
    let extra = io::copy(&mut r.take(MAX_FILE_BYTES), &mut io::sink()).map_err(err)?;
    if extra > 0 {
        return Err(DataError::TrailingData {
            path: path.to_path_buf(),
            header,
            found: total as u64 + extra,
        });
    }
    Ok((header, data))
}

/// The images of an IDX image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    /// `count * rows * cols` pixels, image after image, row-major.
    pub pixels: Vec<u8>,
    /// Number of images.
    pub count: usize,
    /// Rows per image (at least 1).
    pub rows: usize,
    /// Columns per image (at least 1).
    pub cols: usize,
}

/// Reads an IDX image file (magic 0x00000803), raw or gzipped.
///
/// # Errors
///
/// As [`read_idx`].
pub fn read_images(path: &Path) -> Result<Images> {
    images_of(path, read_idx(path, IdxKind::Images)?)
}

/// [`read_images`] on the bytes of a file held in memory (errors name
/// `path`, which is not opened).
///
/// # Errors
///
/// As [`read_idx`].
pub fn images_from_bytes(path: &Path, bytes: &[u8]) -> Result<Images> {
    images_of(path, read_idx_bytes(path, IdxKind::Images, bytes)?)
}

fn images_of(path: &Path, (header, pixels): (Header, Vec<u8>)) -> Result<Images> {
    let Header::Images { count, rows, cols } = header else {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            kind: IdxKind::Images,
            found: LABELS_MAGIC,
        });
    };
    Ok(Images {
        pixels,
        count: count as usize,
        rows: rows as usize,
        cols: cols as usize,
    })
}

/// Reads an IDX label file (magic 0x00000801), raw or gzipped, and checks
/// that every label is below [`CLASSES`].
///
/// # Errors
///
/// As [`read_idx`], and [`DataError::BadLabel`] for the first label above 9.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let (_, labels) = read_idx(path, IdxKind::Labels)?;
    check_labels(path, &labels)?;
    Ok(labels)
}

/// [`read_labels`] on the bytes of a file held in memory (errors name
/// `path`, which is not opened).
///
/// # Errors
///
/// As [`read_labels`].
pub fn labels_from_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let (_, labels) = read_idx_bytes(path, IdxKind::Labels, bytes)?;
    check_labels(path, &labels)?;
    Ok(labels)
}

fn check_labels(path: &Path, labels: &[u8]) -> Result<()> {
    match labels.iter().position(|&l| usize::from(l) >= CLASSES) {
        Some(index) => Err(DataError::BadLabel {
            path: path.to_path_buf(),
            index,
            label: labels.get(index).copied().unwrap_or(0),
        }),
        None => Ok(()),
    }
}

/// The file `name` in `dir`: `dir/name` if it exists, else `dir/name.gz`.
///
/// # Errors
///
/// [`DataError::NotFound`] (naming `dir/name` and `dataset`) when neither exists.
pub fn find_file(dir: &Path, name: &str, dataset: Dataset) -> Result<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::NotFound {
        path: raw,
        name: name.to_string(),
        dataset,
    })
}

/// One split (train or test): images and their labels, checked consistent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    dataset: Dataset,
    images: Vec<u8>,
    labels: Vec<u8>,
    rows: usize,
    cols: usize,
}

impl Split {
    /// A split from memory: `labels.len()` images of `rows` x `cols` pixels
    /// in `images`, image after image, row-major.
    ///
    /// # Errors
    ///
    /// [`DataError::EmptyImages`] if `rows` or `cols` is 0,
    /// [`DataError::BufferSize`] if `images.len() != labels.len() * rows * cols`,
    /// [`DataError::BadLabel`] (with an empty path) for a label above 9.
    pub fn new(
        dataset: Dataset,
        images: Vec<u8>,
        labels: Vec<u8>,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        let pixels = rows
            .checked_mul(cols)
            .filter(|&p| p > 0)
            .ok_or(DataError::EmptyImages { rows, cols })?;
        let expected = labels
            .len()
            .checked_mul(pixels)
            .ok_or(DataError::EmptyImages { rows, cols })?;
        if images.len() != expected {
            return Err(DataError::BufferSize {
                buffer: "images",
                expected,
                found: images.len(),
            });
        }
        check_labels(Path::new(""), &labels)?;
        Ok(Split {
            dataset,
            images,
            labels,
            rows,
            cols,
        })
    }

    /// Reads a split from an images file and a labels file (raw or gzipped).
    ///
    /// # Errors
    ///
    /// As [`read_images`] and [`read_labels`], and
    /// [`DataError::CountMismatch`] if their counts differ.
    pub fn from_files(dataset: Dataset, images: &Path, labels: &Path) -> Result<Self> {
        let im = read_images(images)?;
        let lab = read_labels(labels)?;
        if im.count != lab.len() {
            return Err(DataError::CountMismatch {
                images: images.to_path_buf(),
                labels: labels.to_path_buf(),
                n_images: im.count,
                n_labels: lab.len(),
            });
        }
        Split::new(dataset, im.pixels, lab, im.rows, im.cols)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True if the split has no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The dataset (normalisation constants) of this split.
    pub fn dataset(&self) -> Dataset {
        self.dataset
    }

    /// Rows per image.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns per image.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Pixels per image, `rows * cols`.
    pub fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    /// Every pixel, image after image, row-major.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// Every label (0-9).
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The raw pixels of sample `i`, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let px = self.pixels();
        let start = i.checked_mul(px)?;
        self.images.get(start..start.checked_add(px)?)
    }

    /// Asks the CPU to start loading the images of `indices` into its
    /// caches (no effect on results; indices past the end are ignored).
    /// The trainer calls it for the next batch, whose images are scattered
    /// over a dataset larger than the caches.
    pub fn prefetch(&self, indices: &[u32]) {
        for &i in indices {
            let Some(img) = self.image(i as usize) else {
                continue;
            };
            for line in img.chunks(64) {
                prefetch(line.as_ptr());
            }
        }
    }

    /// The label of sample `i`, or `None` past the end.
    pub fn label(&self, i: usize) -> Option<u8> {
        self.labels.get(i).copied()
    }

    /// Writes the samples `indices` into a batch: `images[b * pixels + k]` is
    /// pixel `k` (row-major) of sample `indices[b]`, normalised by
    /// [`Dataset::normalize`]; `labels[b]` is its label. Nothing is written
    /// unless every check passes.
    ///
    /// # Errors
    ///
    /// [`DataError::BufferSize`] if `images.len() != indices.len() * pixels`
    /// or `labels.len() != indices.len()`, [`DataError::IndexOutOfRange`] for
    /// an index `>= len()`.
    pub fn write_batch(
        &self,
        indices: &[u32],
        images: &mut [f32],
        labels: &mut [usize],
    ) -> Result<()> {
        let px = self.pixels();
        let expected = indices.len().saturating_mul(px);
        if images.len() != expected {
            return Err(DataError::BufferSize {
                buffer: "batch images",
                expected,
                found: images.len(),
            });
        }
        if labels.len() != indices.len() {
            return Err(DataError::BufferSize {
                buffer: "batch labels",
                expected: indices.len(),
                found: labels.len(),
            });
        }
        if let Some(&index) = indices.iter().find(|&&i| i as usize >= self.len()) {
            return Err(DataError::IndexOutOfRange {
                index,
                len: self.len(),
            });
        }
        if px == 0 {
            return Ok(());
        }
        let table = self.dataset.table();
        let simd = Normalizer::new(&table);
        for ((&i, out), lab) in indices
            .iter()
            .zip(images.chunks_exact_mut(px))
            .zip(labels.iter_mut())
        {
            let i = i as usize;
            let pixels = self.image(i).unwrap_or(&[]);
            let done = simd.as_ref().map_or(0, |n| n.run(pixels, out));
            for (o, &p) in out.iter_mut().zip(pixels).skip(done) {
                *o = table[usize::from(p)];
            }
            *lab = usize::from(self.label(i).unwrap_or(0));
        }
        Ok(())
    }
}

/// [`Dataset::normalize`] 16 pixels at a time with AVX-512: a look-up in
/// the table of all 256 byte values held in registers (eight two-register
/// permutes pick a candidate by the low five bits, three blends by the
/// high three), so the values are the table's bits by construction. Two
/// vector divisions per 16 pixels, which the arithmetic would need, cost
/// about four times as much.
struct Normalizer<'t> {
    table: &'t [f32; 256],
}

impl<'t> Normalizer<'t> {
    /// `Some` if the CPU has AVX-512 F.
    fn new(table: &'t [f32; 256]) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Normalizer { table });
        }
        let _ = table;
        None
    }

    /// Writes the first multiple of 16 of the pixels that fit `out`;
    /// returns how many.
    fn run(&self, pixels: &[u8], out: &mut [f32]) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: a `Normalizer` exists only where `new` saw AVX-512 F.
            unsafe { self.run_avx512(pixels, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (pixels, out);
            0
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, pixels: &[u8], out: &mut [f32]) -> usize {
        use std::arch::x86_64::*;
        let n = pixels.len().min(out.len()) / 16 * 16;
        // t[j]: table entries 16 j .. 16 j + 16 (in bounds: 16 x 16 = 256).
        let t: [__m512; 16] =
            std::array::from_fn(|j| _mm512_loadu_ps(self.table.as_ptr().add(16 * j)));
        let (b5, b6, b7) = (
            _mm512_set1_epi32(32),
            _mm512_set1_epi32(64),
            _mm512_set1_epi32(128),
        );
        // Sixteen zero bytes (an image's background: in MNIST most runs of
        // 16 pixels) are the table's first entry, without the look-up.
        let zero = _mm512_set1_ps(self.table[0]);
        let mut k = 0;
        while k < n {
            // In bounds: k + 16 <= n <= both lengths.
            let bytes = _mm_loadu_si128(pixels.as_ptr().add(k).cast());
            if _mm_testz_si128(bytes, bytes) != 0 {
                _mm512_storeu_ps(out.as_mut_ptr().add(k), zero);
                k += 16;
                continue;
            }
            let p = _mm512_cvtepu8_epi32(bytes);
            // c[h]: entry 32 h + (p & 31) (permutex2var reads the low five
            // bits of each index).
            let c: [__m512; 8] =
                std::array::from_fn(|h| _mm512_permutex2var_ps(t[2 * h], p, t[2 * h + 1]));
            let (m5, m6, m7) = (
                _mm512_test_epi32_mask(p, b5),
                _mm512_test_epi32_mask(p, b6),
                _mm512_test_epi32_mask(p, b7),
            );
            let s = [
                _mm512_mask_blend_ps(m5, c[0], c[1]),
                _mm512_mask_blend_ps(m5, c[2], c[3]),
                _mm512_mask_blend_ps(m5, c[4], c[5]),
                _mm512_mask_blend_ps(m5, c[6], c[7]),
            ];
            let lo = _mm512_mask_blend_ps(m6, s[0], s[1]);
            let hi = _mm512_mask_blend_ps(m6, s[2], s[3]);
            _mm512_storeu_ps(out.as_mut_ptr().add(k), _mm512_mask_blend_ps(m7, lo, hi));
            k += 16;
        }
        n
    }
}

/// A hint to load the cache line holding `p`.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and has no visible effect, whatever
    // the address; `p` points into a live slice anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Loads the four standard files from `dir` (each `name` or `name.gz`):
/// `(train, test)`, the two splits read in parallel.
///
/// # Errors
///
/// [`DataError::NotFound`] for a missing file (checked for all four before
/// reading any), then as [`Split::from_files`] (train first).
pub fn load(dir: &Path, dataset: Dataset) -> Result<(Split, Split)> {
    let train_images = find_file(dir, TRAIN_IMAGES, dataset)?;
    let train_labels = find_file(dir, TRAIN_LABELS, dataset)?;
    let test_images = find_file(dir, TEST_IMAGES, dataset)?;
    let test_labels = find_file(dir, TEST_LABELS, dataset)?;
    let (train, test) = std::thread::scope(|s| {
        let test = s.spawn(|| Split::from_files(dataset, &test_images, &test_labels));
        let train = Split::from_files(dataset, &train_images, &train_labels);
        let test = test
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (train, test)
    });
    Ok((train?, test?))
}

/// A uniform integer in `[0, range)` from `x`, or `None` if `x` must be
/// rejected (Lemire's multiply-shift, exactly unbiased). `range` in `1..=2^32`.
fn bounded(x: u32, range: u64) -> Option<u32> {
    let m = u64::from(x) * range;
    let low = m & 0xffff_ffff;
    if low < range {
        // 2^32 mod range: the number of low values that would bias the result.
        let threshold = (1u64 << 32) % range;
        if low < threshold {
            return None;
        }
    }
    Some((m >> 32) as u32)
}

/// The order in which epoch `epoch` visits `n` samples: a permutation of
/// `0..n`, the same on every machine for the same `(n, seed, epoch)`.
///
/// Fisher-Yates from the end: for `i` from `n - 1` down to 1, swap element
/// `i` with element `j`, uniform in `0..=i`, taken from
/// `Stream::new(seed, SHUFFLE_TENSOR, epoch).draw(i)` by Lemire's
/// multiply-shift with rejection (exactly unbiased). A rejected draw (rare:
/// probability below `(i + 1) / 2^32`) is replaced by the next draw of
/// `Stream::new(seed, SHUFFLE_RETRY_TENSOR, epoch)`, whose index counts the
/// rejections of the whole shuffle from 0.
///
/// # Panics
///
/// If `n > 2^32` (the indices would not fit in `u32`; such a vector would
/// need 16 GiB).
///
/// # Examples
///
/// ```
/// use fixnn_std::data::epoch_order;
/// let order = epoch_order(10, 42, 0);
/// let mut sorted = order.clone();
/// sorted.sort();
/// assert_eq!(sorted, (0..10).collect::<Vec<u32>>());
/// assert_eq!(order, epoch_order(10, 42, 0));
/// assert_ne!(order, epoch_order(10, 42, 1));
/// ```
pub fn epoch_order(n: usize, seed: u64, epoch: u32) -> Vec<u32> {
    assert!(
        n as u64 <= 1 << 32,
        "epoch_order: {n} samples do not fit u32 indices"
    );
    let mut order: Vec<u32> = (0..n).map(|i| i as u32).collect();
    let stream = Stream::new(seed, SHUFFLE_TENSOR, epoch);
    let retry = Stream::new(seed, SHUFFLE_RETRY_TENSOR, epoch);
    let mut retries: u32 = 0;
    for i in (1..n).rev() {
        let range = i as u64 + 1;
        let mut pick = bounded(stream.draw(i as u32), range);
        while pick.is_none() {
            pick = bounded(retry.draw(retries), range);
            retries = retries.wrapping_add(1);
        }
        let j = pick.unwrap_or(0) as usize;
        order.swap(i, j);
    }
    order
}

/// Where the dataset directory is, given `--data` (`cli`): see
/// [`resolve_data_dir_with`], with `$FIXNN_DATA` from the environment and
/// the defaults relative to the current directory.
///
/// # Errors
///
/// As [`resolve_data_dir_with`].
pub fn resolve_data_dir(cli: Option<&Path>) -> Result<PathBuf> {
    resolve_data_dir_with(cli, env::var_os("FIXNN_DATA"), Path::new(""))
}

/// The first directory that exists among: `cli` (`--data DIR`), else `env`
/// (`$FIXNN_DATA`; an empty value counts as unset), else
/// `base/../shared/datasets/mnist`, else `base/data/mnist`. Relative paths
/// are taken relative to `base` (`""` means the current directory).
///
/// # Errors
///
/// [`DataError::DirNotFound`] if `cli` or `env` is given and is not a
/// directory (the search does not go on past an explicit choice);
/// [`DataError::NoDataDir`] listing both defaults if neither exists.
pub fn resolve_data_dir_with(
    cli: Option<&Path>,
    env: Option<OsString>,
    base: &Path,
) -> Result<PathBuf> {
    let explicit = match (cli, env) {
        (Some(dir), _) => Some((dir.to_path_buf(), "--data")),
        (None, Some(dir)) if !dir.is_empty() => Some((PathBuf::from(dir), "$FIXNN_DATA")),
        _ => None,
    };
    if let Some((dir, given_by)) = explicit {
        let dir = base.join(dir);
        return if dir.is_dir() {
            Ok(dir)
        } else {
            Err(DataError::DirNotFound {
                path: dir,
                given_by,
            })
        };
    }
    let tried = vec![
        base.join("../shared/datasets/mnist"),
        base.join("data/mnist"),
    ];
    match tried.iter().find(|d| d.is_dir()) {
        Some(dir) => Ok(dir.clone()),
        None => Err(DataError::NoDataDir { tried }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_is_exact_for_small_ranges() {
        // Range 3: 2^32 mod 3 = 1, so exactly one x is rejected and each
        // result is hit by the same number of accepted x (checked on the
        // structure of the map: result = floor(x * 3 / 2^32)).
        assert_eq!(bounded(0, 3), None);
        assert_eq!(bounded(1, 3), Some(0));
        assert_eq!(bounded(u32::MAX, 3), Some(2));
        assert_eq!(bounded(u32::MAX, 1 << 32), Some(u32::MAX));
        assert_eq!(bounded(0, 1 << 32), Some(0));
        assert_eq!(bounded(12345, 1), Some(0));
        // Powers of two never reject.
        for x in [0u32, 1, 7, u32::MAX] {
            assert!(bounded(x, 8).is_some());
        }
    }

    #[test]
    fn header_sizes() {
        let h = Header::Images {
            count: 60000,
            rows: 28,
            cols: 28,
        };
        assert_eq!(h.file_bytes(), 47_040_016);
        assert_eq!(h.to_string(), "60000 images of 28x28");
        let big = Header::Images {
            count: u32::MAX,
            rows: u32::MAX,
            cols: u32::MAX,
        };
        assert!(big.file_bytes() > u128::from(u64::MAX));
        assert_eq!(Header::Labels { count: 10000 }.file_bytes(), 10_008);
    }
}

//! The dataset module: real MNIST, normalisation, epoch orders, every kind
//! of bad file, raw vs gzip, and where the data directory is found.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use fixnn_std::data::{
    self, epoch_order, find_file, load, read_images, read_labels, resolve_data_dir,
    resolve_data_dir_with, DataError, Dataset, Split, MAX_FILE_BYTES, TEST_IMAGES, TEST_LABELS,
    TRAIN_IMAGES, TRAIN_LABELS,
};
use flate2::write::GzEncoder;
use flate2::Compression;

// ---------------------------------------------------------------- helpers

/// The shared MNIST directory; a missing directory fails the test.
fn mnist_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/mnist");
    assert!(
        dir.is_dir(),
        "MNIST not found at {} (expected the four gzipped IDX files of the shared dataset \
         directory, ../shared/datasets/mnist relative to the workspace root)",
        dir.display()
    );
    dir
}

/// Real MNIST, loaded once for all tests of this file, with the load time.
fn mnist() -> &'static (Split, Split, f64) {
    static DATA: OnceLock<(Split, Split, f64)> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = mnist_dir();
        let t0 = Instant::now();
        let (train, test) = load(&dir, Dataset::Mnist).unwrap_or_else(|e| panic!("{e}"));
        (train, test, t0.elapsed().as_secs_f64())
    })
}

/// A fresh, empty scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fixnn-data-tests")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn images_header(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [0x0000_0803u32, count, rows, cols] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

fn labels_header(count: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [0x0000_0801u32, count] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

/// A valid image file: `count` images of `rows` x `cols`, pixel values a
/// simple function of their position.
fn images_file(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut v = images_header(count, rows, cols);
    let n = (count * rows * cols) as usize;
    v.extend((0..n).map(|i| (i * 37 % 256) as u8));
    v
}

fn labels_file(labels: &[u8]) -> Vec<u8> {
    let mut v = labels_header(labels.len() as u32);
    v.extend_from_slice(labels);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// The error's message, checked to start with the path and to contain `what`.
fn expect_err<T: std::fmt::Debug>(r: Result<T, DataError>, path: &Path, what: &str) -> String {
    let msg = match r {
        Ok(v) => panic!(
            "expected an error about {what:?} for {}, got {v:?}",
            path.display()
        ),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.starts_with(&format!("{}: ", path.display())),
        "message does not name {}: {msg}",
        path.display()
    );
    assert!(msg.contains(what), "message lacks {what:?}: {msg}");
    msg
}

// ---------------------------------------------------------------- real MNIST

#[test]
fn mnist_sizes_and_labels() {
    let (train, test, secs) = mnist();
    eprintln!("MNIST loaded in {secs:.3} s");
    assert_eq!(train.len(), 60_000);
    assert_eq!(test.len(), 10_000);
    for s in [train, test] {
        assert_eq!((s.rows(), s.cols(), s.pixels()), (28, 28, 784));
        assert_eq!(s.images().len(), s.len() * 784);
        assert_eq!(s.dataset(), Dataset::Mnist);
    }
    assert_eq!(train.label(0), Some(5));
    assert_eq!(&train.labels()[..8], &[5, 0, 4, 1, 9, 2, 1, 3]);
    assert_eq!(&test.labels()[..8], &[7, 2, 1, 0, 4, 1, 4, 9]);

    let histogram = |s: &Split| {
        let mut h = [0usize; 10];
        for &l in s.labels() {
            h[l as usize] += 1;
        }
        h
    };
    let h_train = histogram(train);
    let h_test = histogram(test);
    assert_eq!(h_train.iter().sum::<usize>(), 60_000);
    assert_eq!(h_test.iter().sum::<usize>(), 10_000);
    // The well-known class counts of MNIST.
    assert_eq!(
        h_train,
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        h_test,
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
}

#[test]
fn mnist_pixel_statistics() {
    let (train, test, _) = mnist();
    // The normalisation constants are the mean and std of the training
    // pixels scaled to [0, 1]: 0.1307 and 0.3081.
    let n = train.images().len() as f64;
    let sum: u64 = train.images().iter().map(|&p| u64::from(p)).sum();
    let sum_sq: u64 = train.images().iter().map(|&p| u64::from(p).pow(2)).sum();
    let mean = sum as f64 / n / 255.0;
    let var = sum_sq as f64 / n / 65025.0 - mean * mean;
    assert!((mean - 0.1307).abs() < 5e-5, "mean {mean}");
    assert!((var.sqrt() - 0.3081).abs() < 5e-5, "std {}", var.sqrt());
    // Exact integer statistics (also computed with Python's gzip module on
    // the files whose md5 sums the dataset README lists).
    assert_eq!(sum, 1_567_298_545, "sum of the training pixels");
    let test_sum: u64 = test.images().iter().map(|&p| u64::from(p)).sum();
    assert_eq!(test_sum, 264_923_200, "sum of the test pixels");
    // Every image has a border of background and some ink.
    let first = train.image(0).unwrap();
    assert_eq!(first[0], 0);
    assert_eq!(first.iter().copied().max(), Some(255));
    assert!(train.image(60_000).is_none());
}

#[test]
fn mnist_resolves_from_cli() {
    let dir = mnist_dir();
    assert_eq!(resolve_data_dir(Some(&dir)).unwrap(), dir);
    assert_eq!(
        find_file(&dir, TRAIN_IMAGES, Dataset::Mnist).unwrap(),
        dir.join("train-images-idx3-ubyte.gz")
    );
}

// ---------------------------------------------------------------- normalisation

#[test]
fn normalisation_formula_is_exact() {
    for kind in [Dataset::Mnist, Dataset::FashionMnist] {
        for p in 0..=255u8 {
            let want = ((p as f32 / 255.0) - kind.mean()) / kind.std();
            assert_eq!(kind.normalize(p).to_bits(), want.to_bits(), "{kind} {p}");
        }
    }
    assert_eq!(Dataset::Mnist.mean(), 0.1307);
    assert_eq!(Dataset::Mnist.std(), 0.3081);
    assert_eq!(Dataset::FashionMnist.mean(), 0.2860);
    assert_eq!(Dataset::FashionMnist.std(), 0.3530);
    // Pinned bits (computed by the formula in f32).
    assert_eq!(Dataset::Mnist.normalize(0), -0.42421296);
    assert_eq!(Dataset::Mnist.normalize(255), 2.8214867);
    assert_eq!("mnist".parse::<Dataset>(), Ok(Dataset::Mnist));
    assert_eq!(
        "Fashion-MNIST".parse::<Dataset>(),
        Ok(Dataset::FashionMnist)
    );
    assert!("cifar".parse::<Dataset>().is_err());
}

#[test]
fn batches_from_real_mnist() {
    let (train, _, _) = mnist();
    let idx = [3u32, 0, 59_999, 3];
    let mut x = vec![f32::NAN; idx.len() * 784];
    let mut y = vec![99usize; idx.len()];
    train.write_batch(&idx, &mut x, &mut y).unwrap();
    for (b, &i) in idx.iter().enumerate() {
        assert_eq!(y[b], train.label(i as usize).unwrap() as usize);
        let img = train.image(i as usize).unwrap();
        for (k, &p) in img.iter().enumerate() {
            let want = ((p as f32 / 255.0) - 0.1307f32) / 0.3081f32;
            assert_eq!(x[b * 784 + k].to_bits(), want.to_bits());
        }
    }
    assert_eq!(y[1], 5);
    // Same split, Fashion-MNIST constants: only the normalisation changes.
    let fashion = Split::new(
        Dataset::FashionMnist,
        train.images()[..784].to_vec(),
        vec![train.labels()[0]],
        28,
        28,
    )
    .unwrap();
    let mut xf = vec![0.0; 784];
    let mut yf = [0usize];
    fashion.write_batch(&[0], &mut xf, &mut yf).unwrap();
    assert_eq!(yf[0], 5);
    for (k, &p) in train.image(0).unwrap().iter().enumerate() {
        assert_eq!(xf[k], ((p as f32 / 255.0) - 0.2860f32) / 0.3530f32);
    }
}

#[test]
fn every_byte_value_normalises_exactly() {
    // All 256 byte values, then 7 more: whole vectors of 16 and a tail
    // (the vectorised path and the table each write some of the pixels).
    // Then every value again in a scrambled order (167 is odd, so
    // `167 i + 13` runs over all 256), so that the lanes of one vector come
    // from every part of the table.
    let pixels: Vec<u8> = (0..=255u8)
        .chain(0..7)
        .chain((0..256u32).map(|i| (167 * i + 13) as u8))
        .collect();
    for d in [Dataset::Mnist, Dataset::FashionMnist] {
        let s = Split::new(d, pixels.clone(), vec![1], 1, pixels.len()).unwrap();
        let mut x = vec![f32::NAN; pixels.len()];
        s.write_batch(&[0], &mut x, &mut [0]).unwrap();
        for (&v, &p) in x.iter().zip(&pixels) {
            let want = ((p as f32 / 255.0) - d.mean()) / d.std();
            assert_eq!(v.to_bits(), want.to_bits(), "{d} byte {p}");
        }
    }
}

#[test]
fn batch_errors_write_nothing() {
    let s = Split::new(Dataset::Mnist, vec![0, 255, 128, 1], vec![3, 4], 1, 2).unwrap();
    let mut x = vec![7.0f32; 4];
    let mut y = vec![7usize; 2];
    let e = s.write_batch(&[0, 2], &mut x, &mut y).unwrap_err();
    assert!(matches!(e, DataError::IndexOutOfRange { index: 2, len: 2 }));
    assert_eq!(
        e.to_string(),
        "sample index 2 out of range (the split has 2)"
    );
    assert_eq!(x, vec![7.0; 4]);
    assert_eq!(y, vec![7; 2]);
    let e = s.write_batch(&[0, 1], &mut x[..3], &mut y).unwrap_err();
    assert_eq!(e.to_string(), "batch images: length 3, expected 4");
    let e = s.write_batch(&[0, 1], &mut x, &mut y[..1]).unwrap_err();
    assert_eq!(e.to_string(), "batch labels: length 1, expected 2");
    s.write_batch(&[1, 0], &mut x, &mut y).unwrap();
    assert_eq!(y, vec![4, 3]);
    assert_eq!(x[0], Dataset::Mnist.normalize(128));
    assert_eq!(x[3], Dataset::Mnist.normalize(255));
    s.write_batch(&[], &mut [], &mut []).unwrap();
    // Inconsistent in-memory splits are refused.
    assert!(Split::new(Dataset::Mnist, vec![0; 3], vec![1, 2], 1, 2).is_err());
    assert!(Split::new(Dataset::Mnist, vec![], vec![], 0, 28).is_err());
    assert!(Split::new(Dataset::Mnist, vec![0; 2], vec![10], 1, 2).is_err());
    assert!(Split::new(Dataset::Mnist, vec![], vec![1], usize::MAX, 2).is_err());
}

// ---------------------------------------------------------------- shuffling

fn is_permutation(order: &[u32], n: usize) -> bool {
    let mut seen = vec![false; n];
    order.len() == n
        && order.iter().all(|&i| {
            let i = i as usize;
            i < n && !std::mem::replace(&mut seen[i], true)
        })
}

#[test]
fn epoch_order_is_a_reproducible_permutation() {
    for n in [0usize, 1, 2, 3, 10, 1000, 60_000] {
        let o = epoch_order(n, 7, 0);
        assert!(is_permutation(&o, n), "n = {n}");
        assert_eq!(o, epoch_order(n, 7, 0), "n = {n}");
    }
    assert_eq!(epoch_order(0, 1, 1), Vec::<u32>::new());
    assert_eq!(epoch_order(1, 1, 1), vec![0]);
    let a = epoch_order(60_000, 1, 0);
    assert_ne!(a, epoch_order(60_000, 1, 1), "epochs differ");
    assert_ne!(a, epoch_order(60_000, 2, 0), "seeds differ");
    assert_ne!(a, epoch_order(60_000, 1 << 32, 0), "high seed bits count");
    assert_ne!(a, (0..60_000).collect::<Vec<u32>>(), "shuffled");
    // Pinned: the order must never change between versions or machines.
    assert_eq!(epoch_order(10, 42, 0), PINNED_10_42_0);
    assert_eq!(&epoch_order(60_000, 1, 3)[..6], &PINNED_60000_1_3);
}

/// Also computed by an independent Python implementation of `Stream` and
/// the shuffle as documented.
const PINNED_10_42_0: [u32; 10] = [3, 2, 0, 6, 1, 9, 8, 4, 5, 7];
const PINNED_60000_1_3: [u32; 6] = [50105, 31180, 16085, 43000, 23776, 13720];

#[test]
fn epoch_order_is_uniform() {
    // All 6 orders of 3 elements, over 60,000 epochs: each about 10,000.
    let mut counts = std::collections::HashMap::new();
    for epoch in 0..60_000 {
        *counts.entry(epoch_order(3, 5, epoch)).or_insert(0usize) += 1;
    }
    assert_eq!(counts.len(), 6);
    let chi2: f64 = counts
        .values()
        .map(|&c| (c as f64 - 10_000.0).powi(2) / 10_000.0)
        .sum();
    // 5 degrees of freedom: P(chi2 > 25) < 0.0002.
    assert!(chi2 < 25.0, "chi2 {chi2}: {counts:?}");
    // Where element 0 lands among 10, over 20,000 seeds.
    let mut pos = [0usize; 10];
    for seed in 0..20_000 {
        let o = epoch_order(10, seed, 0);
        pos[o.iter().position(|&i| i == 0).unwrap()] += 1;
    }
    let chi2: f64 = pos
        .iter()
        .map(|&c| (c as f64 - 2000.0).powi(2) / 2000.0)
        .sum();
    // 9 degrees of freedom: P(chi2 > 33) < 0.0002.
    assert!(chi2 < 33.0, "chi2 {chi2}: {pos:?}");
}

// ---------------------------------------------------------------- bad files

#[test]
fn missing_files_are_named() {
    let dir = scratch("missing");
    let e = load(&dir, Dataset::Mnist).unwrap_err();
    let path = dir.join(TRAIN_IMAGES);
    assert_eq!(
        e.to_string(),
        format!(
            "{}: not found (expected the MNIST file train-images-idx3-ubyte[.gz])",
            path.display()
        )
    );
    write(&dir, TRAIN_IMAGES, &images_file(2, 2, 2));
    write(
        &dir,
        "train-labels-idx1-ubyte.gz",
        &gzip(&labels_file(&[1, 2])),
    );
    let e = load(&dir, Dataset::FashionMnist).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: not found (expected the Fashion-MNIST file t10k-images-idx3-ubyte[.gz])",
            dir.join(TEST_IMAGES).display()
        )
    );
    let nowhere = dir.join("nothing-here");
    expect_err(read_images(&nowhere), &nowhere, "cannot read");
}

#[test]
fn truncated_header() {
    let dir = scratch("truncated-header");
    let p = write(&dir, "img", &images_header(1, 1, 1)[..7]);
    let msg = expect_err(read_images(&p), &p, "truncated");
    assert!(
        msg.ends_with("an IDX image file starts with a 16-byte header, found 7 bytes"),
        "{msg}"
    );
    let p = write(&dir, "empty", &[]);
    expect_err(
        read_images(&p),
        &p,
        "truncated: an IDX image file starts with a 16-byte header, found 0 bytes",
    );
    expect_err(
        read_labels(&p),
        &p,
        "truncated: an IDX label file starts with a 8-byte header, found 0 bytes",
    );
    let p = write(&dir, "one", &[0]);
    expect_err(read_labels(&p), &p, "found 1 bytes");
    let p = write(&dir, "lab", &labels_header(3)[..5]);
    expect_err(read_labels(&p), &p, "found 5 bytes");
    // The same in a gzip stream.
    let p = write(&dir, "img.gz", &gzip(&images_header(1, 1, 1)[..10]));
    expect_err(read_images(&p), &p, "16-byte header, found 10 bytes");
}

#[test]
fn truncated_data() {
    let dir = scratch("truncated-data");
    let mut bytes = images_header(60_000, 28, 28);
    bytes.resize(1234, 0);
    let p = write(&dir, TRAIN_IMAGES, &bytes);
    let e = read_images(&p).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: truncated: header says 60000 images of 28x28 (47040016 bytes), found 1234",
            p.display()
        )
    );
    let p = write(&dir, "img.gz", &gzip(&bytes));
    expect_err(
        read_images(&p),
        &p,
        "truncated: header says 60000 images of 28x28 (47040016 bytes), found 1234",
    );
    let mut lab = labels_file(&[1, 2, 3]);
    lab.pop();
    let p = write(&dir, "lab", &lab);
    expect_err(
        read_labels(&p),
        &p,
        "truncated: header says 3 labels (11 bytes), found 10",
    );
}

#[test]
fn trailing_data() {
    let dir = scratch("trailing");
    let mut bytes = images_file(2, 2, 2);
    bytes.push(9);
    let p = write(&dir, "img", &bytes);
    expect_err(
        read_images(&p),
        &p,
        "trailing data: header says 2 images of 2x2 (24 bytes), found 25",
    );
    let p = write(&dir, "img.gz", &gzip(&bytes));
    expect_err(read_images(&p), &p, "found 25");
}

#[test]
fn wrong_magic() {
    let dir = scratch("magic");
    let p = write(&dir, "labels-as-images", &labels_file(&[1, 2]));
    expect_err(
        read_images(&p),
        &p,
        "not an IDX image file (magic 0x00000801, expected 0x00000803)",
    );
    let p = write(&dir, "images-as-labels", &images_file(1, 1, 1));
    expect_err(
        read_labels(&p),
        &p,
        "not an IDX label file (magic 0x00000803, expected 0x00000801)",
    );
    let p = write(&dir, "text", b"hello, world, this is not IDX");
    expect_err(
        read_images(&p),
        &p,
        "(magic 0x68656c6c, expected 0x00000803)",
    );
    // A short file with a wrong magic: the magic is the problem named.
    let p = write(&dir, "short", b"PK\x03\x04\x05");
    expect_err(
        read_labels(&p),
        &p,
        "not an IDX label file (magic 0x504b0304",
    );
}

#[test]
fn corrupt_gzip() {
    let dir = scratch("gzip");
    let p = write(
        &dir,
        "garbage.gz",
        b"\x1f\x8b\x08\x00garbage that is not deflate at all",
    );
    expect_err(read_images(&p), &p, "corrupt gzip stream: ");
    let p = write(&dir, "magic-only.gz", b"\x1f\x8b");
    expect_err(read_images(&p), &p, "corrupt gzip stream: ");
    let good = gzip(&images_file(20, 8, 8));
    // Cut short.
    let p = write(&dir, "cut.gz", &good[..good.len() / 2]);
    expect_err(read_images(&p), &p, "corrupt gzip stream: ");
    // Checksum damaged (the CRC32 is the trailer's first 4 bytes).
    let mut bad_crc = good.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff;
    let p = write(&dir, "crc.gz", &bad_crc);
    expect_err(read_images(&p), &p, "corrupt gzip stream: ");
    // A flipped byte in the deflate data.
    let mut flipped = good.clone();
    flipped[20] ^= 0x55;
    let p = write(&dir, "flipped.gz", &flipped);
    expect_err(read_images(&p), &p, "");
}

#[test]
fn mismatched_counts() {
    let dir = scratch("counts");
    let im = write(&dir, "img", &images_file(3, 2, 2));
    let lab = write(&dir, "lab", &labels_file(&[1, 2]));
    let e = Split::from_files(Dataset::Mnist, &im, &lab).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: 2 labels, but {} has 3 images",
            lab.display(),
            im.display()
        )
    );
}

#[test]
fn label_out_of_range() {
    let dir = scratch("label");
    let p = write(&dir, "lab", &labels_file(&[1, 9, 0, 12, 3]));
    expect_err(
        read_labels(&p),
        &p,
        "label 12 at index 3 is not a class 0-9",
    );
    let im = write(&dir, "img", &images_file(5, 1, 1));
    expect_err(Split::from_files(Dataset::Mnist, &im, &p), &p, "label 12");
}

#[test]
fn absurd_headers_are_refused_before_allocating() {
    let dir = scratch("absurd");
    let mut bytes = images_header(1 << 31, 28, 28);
    bytes.extend_from_slice(&[0; 100]);
    let p = write(&dir, "huge", &bytes);
    let msg = expect_err(
        read_images(&p),
        &p,
        "too large: header says 2147483648 images of 28x28 (1683627180048 bytes)",
    );
    assert!(msg.contains(&MAX_FILE_BYTES.to_string()), "{msg}");
    let p = write(&dir, "huge.gz", &gzip(&bytes));
    expect_err(read_images(&p), &p, "too large");
    let p = write(&dir, "max", &images_header(u32::MAX, u32::MAX, u32::MAX));
    expect_err(read_images(&p), &p, "too large");
    let p = write(&dir, "labels", &labels_header(u32::MAX));
    expect_err(
        read_labels(&p),
        &p,
        "too large: header says 4294967295 labels (4294967303 bytes)",
    );
    let p = write(&dir, "zero-rows", &images_header(5, 0, 28));
    expect_err(
        read_images(&p),
        &p,
        "bad dimensions: header says 5 images of 0x28",
    );
    // Just under the limit is accepted by the header check (the file is
    // then too short).
    let p = write(&dir, "big-but-ok", &images_header(1, 9_999, 10_000));
    expect_err(read_images(&p), &p, "truncated");
}

#[test]
fn no_input_panics() {
    // Every prefix and many single-byte corruptions of a small valid file,
    // raw and gzipped: each read returns, Ok or Err, without panicking.
    let dir = scratch("fuzz");
    let raw = images_file(3, 4, 5);
    let gz = gzip(&raw);
    let labels = labels_file(&[0, 5, 9]);
    let mut case = 0;
    let mut check = |bytes: &[u8]| {
        case += 1;
        let p = write(&dir, &format!("case{}", case % 8), bytes);
        let _ = read_images(&p);
        let _ = read_labels(&p);
    };
    for file in [&raw, &gz, &labels] {
        for len in 0..=file.len() {
            check(&file[..len]);
        }
        for i in 0..file.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut b = file.clone();
                b[i] ^= x;
                check(&b);
            }
        }
    }
}

// ---------------------------------------------------------------- raw vs gzip

#[test]
fn raw_and_gzip_give_identical_data() {
    let dir = scratch("raw-gz");
    let img = images_file(7, 3, 4);
    let lab = labels_file(&[0, 1, 2, 3, 9, 8, 7]);
    let a = read_images(&write(&dir, "img", &img)).unwrap();
    let b = read_images(&write(&dir, "img.gz", &gzip(&img))).unwrap();
    assert_eq!(a, b);
    assert_eq!((a.count, a.rows, a.cols), (7, 3, 4));
    assert_eq!(a.pixels, img[16..]);
    let la = read_labels(&write(&dir, "lab", &lab)).unwrap();
    let lb = read_labels(&write(&dir, "lab.gz", &gzip(&lab))).unwrap();
    assert_eq!(la, lb);
    // A gzipped file under a raw name is detected by its magic bytes.
    let lc = read_labels(&write(&dir, "lab-no-suffix", &gzip(&lab))).unwrap();
    assert_eq!(la, lc);
    // Two gzip members one after the other are one stream.
    let mut two = gzip(&lab[..5]);
    two.extend(gzip(&lab[5..]));
    assert_eq!(read_labels(&write(&dir, "two.gz", &two)).unwrap(), la);
}

#[test]
fn load_mixes_raw_and_gzip_and_prefers_raw() {
    let raw_dir = scratch("all-raw");
    let gz_dir = scratch("all-gz");
    let files = [
        (TRAIN_IMAGES, images_file(4, 2, 3)),
        (TRAIN_LABELS, labels_file(&[1, 2, 3, 4])),
        (TEST_IMAGES, images_file(2, 2, 3)),
        (TEST_LABELS, labels_file(&[5, 6])),
    ];
    for (name, bytes) in &files {
        write(&raw_dir, name, bytes);
        write(&gz_dir, &format!("{name}.gz"), &gzip(bytes));
    }
    let a = load(&raw_dir, Dataset::Mnist).unwrap();
    let b = load(&gz_dir, Dataset::Mnist).unwrap();
    assert_eq!(a, b);
    assert_eq!((a.0.len(), a.1.len()), (4, 2));
    assert_eq!(a.1.labels(), &[5, 6]);
    // Both present: the raw file is used (here it differs from the .gz).
    write(&gz_dir, TEST_LABELS, &labels_file(&[7, 8]));
    assert_eq!(
        find_file(&gz_dir, TEST_LABELS, Dataset::Mnist).unwrap(),
        gz_dir.join(TEST_LABELS)
    );
    let c = load(&gz_dir, Dataset::Mnist).unwrap();
    assert_eq!(c.1.labels(), &[7, 8]);
    // An error in the test split is reported with its path.
    write(&gz_dir, TEST_LABELS, &labels_file(&[7, 80]));
    let p = gz_dir.join(TEST_LABELS);
    expect_err(load(&gz_dir, Dataset::Mnist), &p, "label 80 at index 1");
}

// ---------------------------------------------------------------- data directory

#[test]
fn data_dir_resolution_order() {
    let root = scratch("resolve");
    let base = root.join("work");
    let shared = root.join("shared/datasets/mnist");
    let local = base.join("data/mnist");
    let env_dir = root.join("env");
    let cli_dir = root.join("cli");
    fs::create_dir_all(&base).unwrap();

    // Nothing exists: every default is listed.
    let e = resolve_data_dir_with(None, None, &base).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataError::NoDataDir { ref tried } if tried.len() == 2));
    for p in [
        base.join("../shared/datasets/mnist"),
        base.join("data/mnist"),
    ] {
        assert!(msg.contains(&p.display().to_string()), "{msg}");
    }
    assert!(
        msg.contains("--data") && msg.contains("FIXNN_DATA"),
        "{msg}"
    );

    // data/mnist, then ../shared/datasets/mnist before it.
    fs::create_dir_all(&local).unwrap();
    assert_eq!(resolve_data_dir_with(None, None, &base).unwrap(), local);
    fs::create_dir_all(&shared).unwrap();
    let got = resolve_data_dir_with(None, None, &base).unwrap();
    assert_eq!(got, base.join("../shared/datasets/mnist"));
    assert_eq!(got.canonicalize().unwrap(), shared.canonicalize().unwrap());
    // An empty $FIXNN_DATA counts as unset.
    assert_eq!(
        resolve_data_dir_with(None, Some("".into()), &base).unwrap(),
        got
    );

    // $FIXNN_DATA before the defaults; a missing one is an error naming it.
    let e = resolve_data_dir_with(None, Some(env_dir.clone().into()), &base).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: dataset directory not found (given by $FIXNN_DATA)",
            env_dir.display()
        )
    );
    fs::create_dir_all(&env_dir).unwrap();
    assert_eq!(
        resolve_data_dir_with(None, Some(env_dir.clone().into()), &base).unwrap(),
        env_dir
    );

    // --data before everything; a missing one is an error naming it.
    let e = resolve_data_dir_with(Some(&cli_dir), Some(env_dir.clone().into()), &base).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: dataset directory not found (given by --data)",
            cli_dir.display()
        )
    );
    fs::create_dir_all(&cli_dir).unwrap();
    assert_eq!(
        resolve_data_dir_with(Some(&cli_dir), Some(env_dir.clone().into()), &base).unwrap(),
        cli_dir
    );
    // Relative paths are relative to the base.
    assert_eq!(
        resolve_data_dir_with(Some(Path::new("../cli")), None, &base).unwrap(),
        base.join("../cli")
    );
    // A file is not a directory.
    let file = write(&root, "a-file", b"x");
    assert!(resolve_data_dir_with(Some(&file), None, &base).is_err());
    assert!(data::resolve_data_dir(Some(&root.join("absent"))).is_err());
}

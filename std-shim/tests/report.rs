//! `fixnn_std::report::write_report` on synthetic histories.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use fixnn_std::history::{
    EpochRecord, History, StepRecord, TensorPoint, TensorSeries, WeightSnapshot,
};
use fixnn_std::report::{write_report, HEIGHT, WIDTH};

/// A fresh, empty directory path under the system temp dir (not created).
fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "fixnn-report-test-{}-{tag}-{n}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// Deterministic values in [0, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal: sum of four uniforms, centred, standard deviation `sd`.
    fn normal(&mut self, sd: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.next()).sum();
        (s - 2.0) * sd * 1.732
    }
}

fn snapshot(name: &str, bits: Option<u8>, scale: Option<i8>, master: Vec<f32>) -> WeightSnapshot {
    let quantized = master.clone();
    WeightSnapshot {
        name: name.into(),
        bits,
        scale,
        master,
        quantized,
    }
}

/// Four epochs of 100 steps, two tensors sampled every 10 steps, weight
/// snapshots at 8 and 4 bits.
fn synthetic() -> History {
    let mut rng = Lcg(7);
    let epochs = (1..=4)
        .map(|e| EpochRecord {
            epoch: e,
            train_loss: 2.0 / f64::from(e),
            train_accuracy: 60.0 + 8.0 * f64::from(e),
            test_accuracy: 58.0 + 7.5 * f64::from(e),
            seconds: 1.5,
        })
        .collect();
    let mut steps: Vec<StepRecord> = (0..400u64)
        .map(|s| StepRecord {
            step: s,
            loss: 2.3 * (-(s as f32) / 150.0).exp() + 0.3 * rng.next(),
            accuracy: 100.0 * (1.0 - (-(s as f32) / 100.0).exp()) * (0.9 + 0.1 * rng.next()),
        })
        .collect();
    steps[17].loss = f32::NAN; // skipped, not plotted
    let weight_points = (0..40u64)
        .map(|k| TensorPoint {
            step: k * 10,
            scale: Some(if k < 12 {
                1
            } else if k < 25 {
                0
            } else {
                -1
            }),
            saturation: if k < 12 { 0.02 } else { 0.004 * (k % 3) as f32 },
        })
        .collect();
    let act_points = (0..40u64)
        .map(|k| TensorPoint {
            step: k * 10,
            scale: if k < 3 {
                None
            } else {
                Some(2 + (k / 20) as i8)
            },
            saturation: 0.05 / (1.0 + k as f32),
        })
        .collect();
    let tensors = vec![
        TensorSeries {
            name: "fc1.weight".into(),
            layer: "Linear".into(),
            kind: "param".into(),
            points: weight_points,
        },
        TensorSeries {
            name: "fc1.output".into(),
            layer: "Linear".into(),
            kind: "activation".into(),
            points: act_points,
        },
    ];
    let mut w8: Vec<f32> = (0..2000).map(|_| rng.normal(0.3)).collect();
    w8[5] = f32::NAN;
    w8[6] = 1.7; // beyond the clamp limit 1 - 2^-7
    let w4: Vec<f32> = (0..500).map(|_| rng.normal(0.15)).collect();
    History {
        name: "mlp-test".into(),
        epochs,
        steps,
        tensors,
        weights: vec![
            snapshot("fc1.weight", Some(8), Some(0), w8),
            snapshot("fc2.weight", Some(4), Some(-1), w4),
        ],
    }
}

/// Checks the PNG signature and decodes the file to its dimensions.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = fs::read(path).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} lacks the PNG signature",
        path.display()
    );
    let mut reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    (frame.width, frame.height)
}

/// Checks every written file and returns the file names.
fn check_files(written: &[PathBuf], dir: &Path) -> Vec<String> {
    for p in written {
        assert!(p.is_file(), "{} missing", p.display());
        assert_eq!(p.parent(), Some(dir));
        match p.extension().and_then(|e| e.to_str()) {
            Some("png") => assert_eq!(png_size(p), (WIDTH, HEIGHT), "{}", p.display()),
            Some("svg") => {
                let text = fs::read_to_string(p).unwrap();
                assert!(text.contains("<svg"), "{} is not an SVG", p.display());
            }
            Some("md") => {}
            other => panic!("unexpected file kind {other:?}"),
        }
    }
    written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn full_history_writes_every_figure_as_png_and_svg() {
    let dir = temp_dir("full");
    let h = synthetic();
    let written = write_report(&h, &dir).unwrap();
    let names = check_files(&written, &dir);
    let expected = [
        "loss.png",
        "loss.svg",
        "scales.png",
        "scales.svg",
        "saturation.png",
        "saturation.svg",
        "weights_00_fc1_weight.png",
        "weights_00_fc1_weight.svg",
        "weights_01_fc2_weight.png",
        "weights_01_fc2_weight.svg",
        "report.md",
    ];
    assert_eq!(names, expected);

    let md = fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.starts_with("# Training report: mlp-test"));
    for name in &expected[..expected.len() - 1] {
        assert!(
            md.contains(&format!("]({name})")),
            "report.md does not link {name}"
        );
    }
    assert!(md.contains("| 4 | 0.5000 | 92.00 | 88.00 | 1.5 |"), "{md}");
    assert!(md.contains("8-bit grid of scale 0 (step 2^-7"), "{md}");
    assert!(md.contains("4-bit grid of scale -1 (step 2^-4"), "{md}");

    // Text is rendered: the SVG carries the labels as text.
    let svg = fs::read_to_string(dir.join("scales.svg")).unwrap();
    assert!(svg.contains("fc1.output"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn empty_history_gives_empty_charts() {
    let dir = temp_dir("empty");
    let written = write_report(&History::default(), &dir).unwrap();
    let names = check_files(&written, &dir);
    assert_eq!(names.len(), 7);
    let md = fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("No epochs recorded."));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn single_points_and_odd_formats_are_drawn() {
    let dir = temp_dir("single");
    let h = History {
        name: String::new(),
        epochs: vec![EpochRecord {
            epoch: 1,
            train_loss: 0.5,
            train_accuracy: 80.0,
            test_accuracy: f64::NAN,
            seconds: 0.1,
        }],
        steps: vec![StepRecord {
            step: 0,
            loss: 1.0,
            accuracy: 50.0,
        }],
        tensors: vec![
            TensorSeries {
                name: "x".into(),
                layer: "Input".into(),
                kind: "activation".into(),
                points: vec![TensorPoint {
                    step: 0,
                    scale: Some(3),
                    saturation: f32::INFINITY,
                }],
            },
            TensorSeries {
                name: "y".into(),
                layer: "Linear".into(),
                kind: "activation".into(),
                points: vec![],
            },
        ],
        weights: vec![
            snapshot("one", Some(8), Some(0), vec![0.25]),
            snapshot("empty", Some(4), Some(0), vec![]),
            snapshot("nan only", Some(4), Some(0), vec![f32::NAN, f32::INFINITY]),
            snapshot("float", None, None, vec![0.1, -0.2, 0.3]),
            snapshot("dense/16bit", Some(16), Some(2), vec![0.1, -3.0, 2.5]),
            snapshot("zero bits", Some(0), Some(0), vec![1.0]),
        ],
    };
    let written = write_report(&h, &dir).unwrap();
    let names = check_files(&written, &dir);
    assert_eq!(names.len(), 2 * (3 + 6) + 1);
    assert!(names.contains(&"weights_04_dense_16bit.png".to_string()));
    let md = fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.starts_with("# Training report: unnamed run"));
    assert!(md.contains("full precision, no grid"));
    assert!(md.contains("| 1 | 0.5000 | 80.00 | n/a | 0.1 |"), "{md}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn uncreatable_dir_is_an_error_naming_it() {
    let base = temp_dir("blocked");
    fs::create_dir_all(&base).unwrap();
    let file = base.join("a-file");
    fs::write(&file, b"not a directory").unwrap();
    let dir = file.join("report");
    let err = write_report(&History::default(), &dir).unwrap_err();
    assert!(err.contains(&dir.display().to_string()), "{err}");
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn rewriting_into_the_same_dir_overwrites() {
    let dir = temp_dir("again");
    let h = synthetic();
    let first = write_report(&h, &dir).unwrap();
    let second = write_report(&h, &dir).unwrap();
    assert_eq!(first, second);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), first.len());
    fs::remove_dir_all(&dir).unwrap();
}

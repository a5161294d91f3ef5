//! `fixnn train` and `fixnn eval`: desktop training of a compiled
//! architecture on MNIST or Fashion-MNIST, with checkpoints, metrics and a
//! report.
//!
//! Reproducibility: the initial weights, the sample order of every epoch and
//! every stochastic rounding are functions of the seed; the rayon backend
//! returns the reference backend's bits with any thread count. So the same
//! seed gives the same checkpoint bytes and the same metrics (timings aside).
//!
//! Batches: the batch size is compiled in (64); each training epoch uses
//! `floor(n / 64)` full batches of a fresh shuffle (the last `n mod 64`
//! samples of the shuffle sit the epoch out). The test pass covers every
//! test sample (the last batch is padded and the padding ignored).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fixnn::backend::Backend;
use fixnn::layers::{softmax_cross_entropy, Layer};
use fixnn::model::{self, Kind};
use fixnn::tensor::{Ctx, Shape, Tensor, S2};

use crate::arch::{Arch, LeNet, MnistMlp, BATCH};
use crate::checkpoint::{self, Checkpoint};
use crate::configs::{self, write_atomic, ConfigFile};
use crate::data::{self, Dataset, Split};
use crate::history::{
    EpochRecord, History, Metrics, StepRecord, TensorPoint, TensorSeries, WeightSnapshot,
};
use crate::rayon_backend::RayonBackend;
use crate::spec::ModelSpec;
use crate::trace;

mod pace;
use pace::{Mode, Pace};

/// Options of `fixnn train`.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// The model file.
    pub model: PathBuf,
    /// Epochs in all (overrides the model file's schedule).
    pub epochs: Option<u32>,
    /// Worker threads (default: all cores, each block of steps on the
    /// pool or on one thread, whichever was faster lately; with a count,
    /// always on the pool).
    pub threads: Option<usize>,
    /// Seed (overrides the model file's).
    pub seed: Option<u64>,
    /// Dataset directory.
    pub data: Option<PathBuf>,
    /// Output directory (default `runs/<name>`, or the first free
    /// `runs/<name>-N` when that holds a run).
    pub out: Option<PathBuf>,
    /// Continue from the checkpoint in the output directory.
    pub resume: bool,
    /// Start afresh even if the output directory holds a run (without
    /// `resume` or this, an existing checkpoint is an error, not replaced).
    pub overwrite: bool,
    /// Use only the first N training samples (quick runs, tests).
    pub train_samples: Option<usize>,
    /// Use only the first N test samples.
    pub test_samples: Option<usize>,
    /// Draw a progress bar on standard error.
    pub progress: bool,
    /// Write the report (plots) at the end.
    pub report: bool,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Test accuracy after the last epoch, percent.
    pub test_accuracy: f64,
    /// Output directory.
    pub out: PathBuf,
    /// Every epoch.
    pub epochs: Vec<EpochRecord>,
}

/// Steps between two samples of the per-tensor scale and saturation.
const SAMPLE_EVERY: u64 = 20;

/// Writes the samples `idx` into `x` and `labels` and asks for the
/// images of `next` (the next batch) to be loaded into the caches. On the
/// pool, in two halves on two threads: the first half of the batch here,
/// the second on the thread that takes the other job, as core's element
/// passes and the int8 product split it next, so that each thread reads
/// the rows its own core wrote.
fn write_batch(
    train: &Split,
    idx: &[u32],
    next: Option<&[u32]>,
    x: &mut [f32],
    labels: &mut [usize],
    mode: Mode,
) -> Result<(), String> {
    let one = |idx: &[u32], next: Option<&[u32]>, x: &mut [f32], labels: &mut [usize]| {
        let _span = trace::span("batch half");
        let r = train.write_batch(idx, x, labels).map_err(|e| e.to_string());
        if let Some(next) = next {
            train.prefetch(next);
        }
        r
    };
    let half = idx.len() / 2;
    if mode == Mode::One || half == 0 || x.len() != idx.len() * train.pixels() {
        return one(idx, next, x, labels);
    }
    let (i0, i1) = idx.split_at(half);
    let (n0, n1) = match next {
        Some(n) if n.len() == idx.len() => {
            let (a, b) = n.split_at(half);
            (Some(a), Some(b))
        }
        n => (n, None),
    };
    let (x0, x1) = x.split_at_mut(half * train.pixels());
    let (l0, l1) = labels.split_at_mut(half);
    let (r0, r1) = crate::rayon_backend::join(|| one(i0, n0, x0, l0), || one(i1, n1, x1, l1));
    r0.and(r1)
}

/// Run `f` on a thread with a 1 GiB stack: models are built as values
/// before they are boxed.
fn big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    std::thread::Builder::new()
        .name("fixnn-train".into())
        .stack_size(STACK)
        .spawn(f)
        .map_err(|e| format!("cannot start the training thread: {e}"))?
        .join()
        .map_err(|_| "the training thread panicked".to_string())
}

/// Stack of the thread that trains (the models are built on the stack
/// before they are boxed).
const STACK: usize = 1 << 30;

fn backend(threads: Option<usize>) -> Result<RayonBackend, String> {
    crate::accel::install();
    match threads {
        Some(0) => Err("--threads must be at least 1".into()),
        // Training runs on a thread of this pool (`RayonBackend::install`).
        Some(n) => RayonBackend::with_threads_and_stack(n, Some(STACK)),
        // As many threads as rayon's global pool has (every core, or
        // RAYON_NUM_THREADS), in a pool of our own for the same reason.
        None => RayonBackend::with_threads_and_stack(rayon::current_num_threads(), Some(STACK)),
    }
}

fn load_data(spec: &ModelSpec, dir: Option<&Path>) -> Result<(Split, Split), String> {
    let kind = if spec.dataset == "fashion-mnist" {
        Dataset::FashionMnist
    } else {
        Dataset::Mnist
    };
    let dir = data::resolve_data_dir(dir).map_err(|e| e.to_string())?;
    let (train, test) = data::load(&dir, kind).map_err(|e| e.to_string())?;
    for (split, name) in [(&train, "training"), (&test, "test")] {
        // Both architectures take 28x28 images (784 values per sample).
        if (split.rows(), split.cols()) != (28, 28) {
            return Err(format!(
                "{}: the {name} images are {}x{}; the models take 28x28",
                dir.display(),
                split.rows(),
                split.cols()
            ));
        }
    }
    Ok((train, test))
}

/// The output directory when `--out` is not given: `<root>/<name>`; when
/// that already holds a run (and `reuse` is off), the first of
/// `<root>/<name>-2`, `<root>/<name>-3`, ... that does not, so running the
/// same command twice keeps both runs.
fn default_out(root: &Path, name: &str, reuse: bool) -> PathBuf {
    let base = root.join(name);
    if reuse || !base.join("checkpoint.json").exists() {
        return base;
    }
    (2u32..)
        .map(|n| root.join(format!("{name}-{n}")))
        .find(|d| !d.join("checkpoint.json").exists())
        .unwrap_or(base)
}

/// `fixnn train`.
///
/// # Errors
///
/// A one-line message naming what went wrong (model file, data, output).
pub fn train(opts: TrainOptions) -> Result<Summary, String> {
    let spec = ModelSpec::load(&opts.model)?;
    let out = match &opts.out {
        Some(dir) => dir.clone(),
        None => default_out(Path::new("runs"), &spec.name, opts.resume || opts.overwrite),
    };
    let existing = out.join("checkpoint.json");
    if !opts.resume && !opts.overwrite && existing.exists() {
        return Err(format!(
            "{} already holds a run: --resume continues it, --overwrite replaces it, or choose another --out",
            existing.display()
        ));
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let (train, test) = load_data(&spec, opts.data.as_deref())?;
    let bk = backend(opts.threads)?;
    // On a thread of the backend's own pool, when it has one (its
    // threads have the same large stack), else on a thread of our own.
    let summary = big_stack(move || {
        bk.clone().install(|| match spec.architecture.as_str() {
            "lenet" => run::<LeNet>(spec, opts, out, train, test, bk),
            _ => run::<MnistMlp>(spec, opts, out, train, test, bk),
        })
    })??;
    // The run itself succeeded: a trace that cannot be written is said,
    // not an error.
    match trace::write_if_enabled() {
        Ok(Some(path)) => eprintln!("trace written to {}", path.display()),
        Ok(None) => {}
        Err(e) => eprintln!("fixnn: warning: {e}"),
    }
    Ok(summary)
}

fn limit(n: usize, l: Option<usize>) -> usize {
    l.map_or(n, |l| l.min(n))
}

fn run<M: Arch>(
    spec: ModelSpec,
    opts: TrainOptions,
    out: PathBuf,
    train: Split,
    test: Split,
    bk: RayonBackend,
) -> Result<Summary, String>
where
    Tensor<M::In>: Send,
{
    if <M::In as Shape>::LEN != BATCH * 784 {
        return Err(format!("{}: input is not 784 values per sample", M::NAME));
    }
    let seed = opts.seed.unwrap_or(spec.seed);
    let epochs = opts.epochs.unwrap_or(spec.schedule.epochs);
    let ckpt_path = out.join("checkpoint.json");
    let metrics_path = out.join("metrics.json");

    let mut model = M::build(seed)?;
    spec.apply_configs(&mut *model)?;
    let (mut start, mut step, mut history) = (
        0u32,
        0u64,
        History {
            name: spec.name.clone(),
            ..History::default()
        },
    );
    if opts.resume && ckpt_path.exists() {
        let c = checkpoint::load(&ckpt_path)?;
        if c.spec.architecture != spec.architecture {
            return Err(format!(
                "{}: checkpoint of `{}`, model file says `{}`",
                ckpt_path.display(),
                c.spec.architecture,
                spec.architecture
            ));
        }
        restore(&mut *model, &c).map_err(|e| format!("{}: {e}", ckpt_path.display()))?;
        (start, step, history) = (c.epoch, c.step, c.history);
        // Timings live in metrics.json, not in the checkpoint.
        if let Ok(m) = std::fs::read_to_string(&metrics_path)
            .and_then(|t| serde_json::from_str::<Metrics>(&t).map_err(std::io::Error::other))
        {
            for (h, m) in history.epochs.iter_mut().zip(m.epochs) {
                h.seconds = m.seconds;
            }
        }
    }

    let n_train = limit(train.len(), opts.train_samples);
    let n_test = limit(test.len(), opts.test_samples);
    if n_test == 0 {
        return Err("no test samples (an empty test set or --test-samples 0)".into());
    }
    if epochs == 0 {
        return Err("epochs must be at least 1 (--epochs or the model file's schedule)".into());
    }
    let batches = n_train / BATCH;
    if batches == 0 {
        return Err(format!(
            "need at least {BATCH} training samples, have {n_train}"
        ));
    }
    let mut x = Box::new(Tensor::<M::In>::zeros());
    let mut dlogits = Box::new(Tensor::<S2<BATCH, 10>>::zeros());
    let mut labels = [0usize; BATCH];
    let mut prev: HashMap<String, (u64, u64)> = HashMap::new();
    let mut stdout = std::io::stdout();
    let mut test_accuracy = history.epochs.last().map_or(0.0, |e| e.test_accuracy);

    // Without --threads, each block of steps runs on the pool or on one
    // thread, whichever was faster lately (the bits are the same).
    let mut pace = Pace::new(opts.threads.is_none() && bk.threads() > 1);
    for epoch in start..epochs {
        let opt = spec.sgd(epoch);
        let order = data::epoch_order(n_train, seed, epoch);
        let bar = progress_bar(opts.progress, batches as u64, epoch + 1);
        let t0 = Instant::now();
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        let mut b0 = 0;
        while b0 < batches {
            let mode = pace.next();
            let b1 = (b0 + pace.steps(mode)).min(batches);
            let tb = Instant::now();
            mode.run(&bk, || -> Result<(), String> {
                let _block = trace::span(match mode {
                    Mode::Pool => "block pool",
                    Mode::One => "block one",
                });
                for b in b0..b1 {
                    let idx = &order[b * BATCH..(b + 1) * BATCH];
                    let phase = trace::span("batch");
                    let next = order.get((b + 1) * BATCH..(b + 2) * BATCH);
                    write_batch(&train, idx, next, x.flat_mut(), &mut labels, mode)?;
                    x.fmt = None;
                    drop(phase);
                    let ctx = Ctx::train(seed, step as u32);
                    let phase = trace::span("forward");
                    model
                        .forward(&bk, &ctx, &x)
                        .map_err(|e| format!("step {step}: {e}"))?;
                    drop(phase);
                    let phase = trace::span("loss");
                    let l = softmax_cross_entropy(model.output(), &labels, &mut dlogits)
                        .map_err(|e| format!("step {step}: {e}"))?;
                    drop(phase);
                    let phase = trace::span("backward");
                    model
                        .backward(&bk, &ctx, &x, &mut dlogits, false)
                        .map_err(|e| format!("step {step}: {e}"))?;
                    drop(phase);
                    let phase = trace::span("sgd");
                    opt.step(&ctx, &mut *model)
                        .map_err(|e| format!("step {step}: {e}"))?;
                    drop(phase);
                    loss_sum += l.loss as f64;
                    correct += l.correct;
                    history.steps.push(StepRecord {
                        step,
                        loss: l.loss,
                        accuracy: 100.0 * l.correct as f32 / BATCH as f32,
                    });
                    if step % SAMPLE_EVERY == 0 {
                        sample_tensors(&mut *model, step, &mut prev, &mut history);
                    }
                    step += 1;
                    if let Some(bar) = &bar {
                        let done = (b + 1) * BATCH;
                        let secs = t0.elapsed().as_secs_f64().max(1e-9);
                        bar.set_position(b as u64 + 1);
                        bar.set_message(format!(
                            "loss {:.4} acc {:.2}% {:.0} samples/s",
                            loss_sum / (b + 1) as f64,
                            100.0 * correct as f64 / done as f64,
                            done as f64 / secs
                        ));
                    }
                }
                Ok(())
            })?;
            pace.record(mode, tb.elapsed().as_secs_f64() / (b1 - b0) as f64);
            b0 = b1;
        }
        let seconds = t0.elapsed().as_secs_f64();
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        test_accuracy = pace
            .best()
            .run(&bk, || evaluate(&mut *model, &bk, &test, n_test, seed))?;
        let rec = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / batches as f64,
            train_accuracy: 100.0 * correct as f64 / (batches * BATCH) as f64,
            test_accuracy,
            seconds,
        };
        let _ = writeln!(
            stdout,
            "epoch {}: train loss {:.4}, train accuracy {:.2}%, test accuracy {:.2}%, {:.3} s ({:.0} samples/s){}",
            rec.epoch,
            rec.train_loss,
            rec.train_accuracy,
            rec.test_accuracy,
            seconds,
            (batches * BATCH) as f64 / seconds.max(1e-9),
            pace.summary()
        );
        pace.new_epoch();
        history.epochs.push(rec);
        let bytes = checkpoint::encode(
            epoch + 1,
            step,
            &spec,
            &ConfigFile::of(&mut *model),
            &configs::state_json(&mut *model),
            &history,
        )?;
        checkpoint::save(&ckpt_path, &bytes)?;
        let metrics = Metrics {
            epochs: history.epochs.clone(),
        };
        let text = serde_json::to_string(&metrics).map_err(|e| e.to_string())?;
        write_atomic(&metrics_path, text.as_bytes())?;
    }
    history.weights = weight_snapshots(&mut *model);
    if opts.report {
        crate::report::write_report(&history, &out.join("report"))?;
    }
    Ok(Summary {
        test_accuracy,
        out,
        epochs: history.epochs,
    })
}

fn progress_bar(on: bool, len: u64, epoch: u32) -> Option<indicatif::ProgressBar> {
    if !on {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    let style =
        indicatif::ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(epoch.to_string());
    Some(bar)
}

/// Load a checkpoint's configs and state onto a model.
///
/// # Errors
///
/// The first problem, naming its path.
pub fn restore<L: Layer>(model: &mut L, c: &Checkpoint) -> Result<(), String> {
    c.configs.apply(model)?;
    c.state.apply(model)?;
    Ok(())
}

/// Test accuracy (percent) over the first `n` samples of `test`, in eval
/// mode (Auto configs act as Fixed, batch norms use running statistics).
///
/// # Errors
///
/// Errors of the forward pass or the data.
pub fn evaluate<M: Layer<Out = S2<BATCH, 10>>, Bk: Backend>(
    model: &mut M,
    bk: &Bk,
    test: &Split,
    n: usize,
    seed: u64,
) -> Result<f64, String> {
    let mut x = Box::new(Tensor::<M::In>::zeros());
    let mut labels = [0usize; BATCH];
    let ctx = Ctx::eval(seed);
    let mut correct = 0usize;
    let mut start = 0;
    while start < n {
        let valid = (n - start).min(BATCH);
        let mut idx: Vec<u32> = (start..start + valid).map(|i| i as u32).collect();
        idx.resize(BATCH, start as u32); // padding, ignored below
        test.write_batch(&idx, x.flat_mut(), &mut labels)
            .map_err(|e| e.to_string())?;
        x.fmt = None;
        model
            .forward(bk, &ctx, &x)
            .map_err(|e| format!("test pass: {e}"))?;
        for (row, &label) in model.output().v.iter().zip(&labels).take(valid) {
            let mut arg = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[arg] {
                    arg = i;
                }
            }
            correct += (arg == label) as usize;
        }
        start += valid;
    }
    Ok(100.0 * correct as f64 / n.max(1) as f64)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Param => "param",
        Kind::Buffer => "buffer",
        Kind::Activation => "activation",
    }
}

fn sample_tensors<L: Layer>(
    model: &mut L,
    step: u64,
    prev: &mut HashMap<String, (u64, u64)>,
    h: &mut History,
) {
    let mut i = 0;
    model::walk(model, &mut |name, t| {
        if t.quant.cfg.method == fixnn::Method::None {
            return;
        }
        let s = t.quant.stats;
        let (pd, pt) = prev.get(name).copied().unwrap_or((0, 0));
        let total = s.data_total.saturating_sub(pt);
        let sat = if total > 0 {
            s.data.saturating_sub(pd) as f32 / total as f32
        } else {
            0.0
        };
        prev.insert(name.to_string(), (s.data, s.data_total));
        let point = TensorPoint {
            step,
            scale: t.fmt.map(|f| f.scale()),
            saturation: sat,
        };
        match h.tensors.iter_mut().find(|s| s.name == name) {
            Some(series) => series.points.push(point),
            None => h.tensors.push(TensorSeries {
                name: name.to_string(),
                layer: t.layer_type.to_string(),
                kind: kind_name(t.kind).to_string(),
                points: vec![point],
            }),
        }
        i += 1;
    });
}

fn weight_snapshots<L: Layer>(model: &mut L) -> Vec<WeightSnapshot> {
    let mut v = Vec::new();
    model::walk(model, &mut |name, t| {
        if let (Kind::Param, "weight", Some(p)) = (t.kind, t.name, &t.param) {
            v.push(WeightSnapshot {
                name: name.to_string(),
                bits: t.fmt.map(|f| f.bits()),
                scale: t.fmt.map(|f| f.scale()),
                master: p.master.to_vec(),
                quantized: t.values.to_vec(),
            });
        }
    });
    v
}

/// `fixnn eval CHECKPOINT`: test accuracy of a checkpoint.
///
/// # Errors
///
/// A one-line message naming what went wrong.
pub fn eval(
    path: &Path,
    data_dir: Option<&Path>,
    threads: Option<usize>,
    test_samples: Option<usize>,
) -> Result<f64, String> {
    let c = checkpoint::load(path)?;
    let (_, test) = load_data(&c.spec, data_dir)?;
    let bk = backend(threads)?;
    let n = limit(test.len(), test_samples);
    if n == 0 {
        return Err("no test samples (an empty test set or --test-samples 0)".into());
    }
    let path = path.to_path_buf();
    big_stack(move || {
        let seed = c.spec.seed;
        match c.spec.architecture.as_str() {
            "lenet" => {
                let mut m = LeNet::build(seed)?;
                restore(&mut *m, &c).map_err(|e| format!("{}: {e}", path.display()))?;
                evaluate(&mut *m, &bk, &test, n, seed)
            }
            _ => {
                let mut m = MnistMlp::build(seed)?;
                restore(&mut *m, &c).map_err(|e| format!("{}: {e}", path.display()))?;
                evaluate(&mut *m, &bk, &test, n, seed)
            }
        }
    })?
}

#[cfg(test)]
mod tests {
    use super::default_out;

    #[test]
    fn the_default_output_directory_never_holds_an_earlier_run() {
        let root = std::env::temp_dir().join(format!("fixnn-default-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(default_out(&root, "m", false), root.join("m"));
        for (n, want) in [("m", "m-2"), ("m-2", "m-3")] {
            std::fs::create_dir_all(root.join(n)).unwrap();
            std::fs::write(root.join(n).join("checkpoint.json"), b"{}").unwrap();
            assert_eq!(default_out(&root, "m", false), root.join(want));
        }
        // --resume and --overwrite mean the run at runs/<name>.
        assert_eq!(default_out(&root, "m", true), root.join("m"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}

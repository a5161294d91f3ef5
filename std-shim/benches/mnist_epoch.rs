//! Training time of one MNIST epoch (the `seconds` a run reports: the
//! training loop only, without data loading or the test pass), for the
//! MNIST MLP at 8 bits and LeNet at 8 bits.
//!
//! Run: `cargo bench -p fixnn-std --bench mnist_epoch` (add `-- lenet` for
//! LeNet too, `-- --threads N` to pin the thread count; without it,
//! `fixnn train`'s default: every core, blocks of steps on one thread when
//! that was faster).
//!
//! With `--threads 1` all work runs on one thread, and the bench also
//! prints the process's CPU time for the whole run (data loading,
//! the training epoch, the test pass and writing the outputs): on a shared,
//! busy machine the wall-clock epoch time counts the time other programs
//! ran, while this CPU time is an upper bound of the epoch's own work. It
//! then also runs the same model on the first 640 training samples (10
//! steps) and prints the difference of the two CPU times: the CPU time of
//! the other 928 steps of the epoch (both runs load the data, test and
//! write the same way). The load average at the start is printed for
//! context.

use std::path::PathBuf;

use fixnn_std::train::{train, TrainOptions};

#[path = "common/clock.rs"]
mod clock;
use clock::{now, Clock};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .and_then(|t| t.parse().ok());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = root.join("../shared/datasets/mnist");
    let mut models = vec!["mnist-mlp"];
    if args.iter().any(|a| a == "lenet") {
        models.push("lenet");
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# load average: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let cpu_clock = threads == Some(1);
    let clock = if cpu_clock {
        Clock::Process
    } else {
        Clock::Wall
    };
    let timed = |name: &str, train_samples: Option<usize>| {
        let out = std::env::temp_dir().join(format!("fixnn-bench-{name}-{}", std::process::id()));
        let c0 = now(clock);
        let s = train(TrainOptions {
            model: root.join(format!("examples/{name}.json")),
            epochs: Some(1),
            threads,
            data: Some(data.clone()),
            out: Some(out.clone()),
            train_samples,
            ..TrainOptions::default()
        });
        let cpu = now(clock).saturating_sub(c0).as_secs_f64();
        let _ = std::fs::remove_dir_all(&out);
        (s, cpu)
    };
    for name in models {
        let mut best = f64::INFINITY;
        let mut best_cpu = f64::INFINITY;
        let mut steps_cpu = Vec::new();
        let runs = if name == "lenet" { 1 } else { 3 };
        for run in 0..runs {
            let (s, cpu) = timed(name, None);
            match s {
                Ok(s) => {
                    let secs = s.epochs[0].seconds;
                    let whole = if cpu_clock {
                        let short = match timed(name, Some(640)) {
                            (Ok(_), c) => c,
                            (Err(e), _) => {
                                eprintln!("{name}: {e}");
                                std::process::exit(1);
                            }
                        };
                        steps_cpu.push(cpu - short);
                        format!(
                            ", whole run {:.1} ms of process CPU time, of which steps 11-938 {:.1} ms",
                            cpu * 1e3,
                            (cpu - short) * 1e3
                        )
                    } else {
                        String::new()
                    };
                    println!(
                        "{name} run {run}: epoch training time {:.1} ms{whole}, test accuracy {:.2}%",
                        secs * 1e3,
                        s.test_accuracy
                    );
                    best = best.min(secs);
                    best_cpu = best_cpu.min(cpu);
                }
                Err(e) => {
                    eprintln!("{name}: {e}");
                    std::process::exit(1);
                }
            }
        }
        println!("{name}: best epoch training time {:.1} ms", best * 1e3);
        if cpu_clock {
            println!(
                "{name}: best whole run {:.1} ms of process CPU time",
                best_cpu * 1e3
            );
            steps_cpu.sort_by(f64::total_cmp);
            if let (Some(lo), Some(mid)) = (steps_cpu.first(), steps_cpu.get(steps_cpu.len() / 2)) {
                println!(
                    "{name}: CPU time of steps 11-938 (full run minus a 10-step run): min {:.1} ms, median {:.1} ms",
                    lo * 1e3,
                    mid * 1e3
                );
            }
        }
    }
}

//! Training time of one MNIST epoch (the `seconds` a run reports: the
//! training loop only, without data loading or the test pass), for the
//! MNIST MLP at 8 bits and LeNet at 8 bits.
//!
//! Run: `cargo bench -p fixnn-std --bench mnist_epoch` (add `-- lenet` for
//! LeNet too, `-- --threads N` to pin the thread count).

use std::path::PathBuf;

use fixnn_std::train::{train, TrainOptions};

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
    for name in models {
        let mut best = f64::INFINITY;
        let runs = if name == "lenet" { 1 } else { 3 };
        for run in 0..runs {
            let out =
                std::env::temp_dir().join(format!("fixnn-bench-{name}-{}", std::process::id()));
            let s = train(TrainOptions {
                model: root.join(format!("examples/{name}.json")),
                epochs: Some(1),
                threads,
                data: Some(data.clone()),
                out: Some(out.clone()),
                ..TrainOptions::default()
            });
            let _ = std::fs::remove_dir_all(&out);
            match s {
                Ok(s) => {
                    let secs = s.epochs[0].seconds;
                    println!(
                        "{name} run {run}: epoch training time {:.1} ms, test accuracy {:.2}%",
                        secs * 1e3,
                        s.test_accuracy
                    );
                    best = best.min(secs);
                }
                Err(e) => {
                    eprintln!("{name}: {e}");
                    std::process::exit(1);
                }
            }
        }
        println!("{name}: best epoch training time {:.1} ms", best * 1e3);
    }
}

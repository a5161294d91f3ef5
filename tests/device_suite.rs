//! Desktop against device: every case on every board under QEMU reports
//! the same bits as the desktop's rayon backend, and a firmware with a
//! deliberately altered rounding rule is caught, with the first differing
//! element named.
//!
//! Needs `qemu-system-arm` and the thumb targets (`.ci/run` installs both).
//! Prints a table of every case's flash, static RAM and stack use per
//! board and writes it to `hw-targets/target/device-report.md`.

use std::sync::Mutex;

use fixnn_tests::device::cases::{runs_on, CASES};
use fixnn_tests::device::{
    build_firmware, compare, elf_sizes, first_difference, hw_dir, prepare, run_qemu, stat, Board,
    BOARDS,
};

fn need_qemu() {
    let ok = std::process::Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "qemu-system-arm is not installed: `apt-get install -y qemu-system-arm` (.ci/run does it)"
    );
}

/// One (board, case) result.
struct Outcome {
    board: Board,
    case: &'static str,
    flash: u64,
    ram: u64,
    stack: Option<u64>,
    model: Option<u64>,
    lines: usize,
    problem: Option<String>,
}

#[test]
fn every_case_on_every_board_matches_the_desktop() {
    need_qemu();
    let p = prepare().unwrap();
    for (case, r) in &p.expected {
        let errors: Vec<_> = r.lines.iter().filter(|l| l.starts_with('X')).collect();
        assert!(
            errors.is_empty(),
            "the desktop refuses case {case}: {errors:?}"
        );
        assert!(!r.lines.is_empty(), "case {case} reports nothing");
    }
    // Builds one board at a time (cargo uses every core), then runs.
    let mut jobs = Vec::new();
    for board in BOARDS {
        let bins: Vec<&str> = CASES
            .iter()
            .copied()
            .filter(|c| runs_on(c, board.machine))
            .collect();
        let dir = build_firmware(&board, &bins, &[], "suite", &p.cases_dir).unwrap();
        for case in bins {
            jobs.push((board, case, dir.join(case)));
        }
    }
    let queue = Mutex::new(jobs.into_iter());
    let results = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some((board, case, elf)) = queue.lock().unwrap().next() else {
                    break;
                };
                let expected = &p.expected.iter().find(|(c, _)| *c == case).unwrap().1;
                let (flash, ram) = elf_sizes(&elf).unwrap();
                let run = run_qemu(&elf, &[]).unwrap();
                let mut problem = None;
                if let Some(m) = compare(expected, &run.stdout) {
                    let element = first_difference(&elf, expected, &m).unwrap();
                    problem = Some(format!(
                        "line {}: desktop {:?}, device {:?}; {}",
                        m.index,
                        m.expected,
                        m.device,
                        element.map_or("no element differs".into(), |e| e.to_string())
                    ));
                } else if !run.ok || !run.stdout.lines().any(|l| l == "END") {
                    problem = Some(format!(
                        "did not finish cleanly:\n{}\n{}",
                        run.stdout
                            .lines()
                            .rev()
                            .take(5)
                            .collect::<Vec<_>>()
                            .join("\n"),
                        run.stderr
                    ));
                }
                results.lock().unwrap().push(Outcome {
                    board,
                    case,
                    flash,
                    ram,
                    stack: stat(&run.stdout, "STACK").and_then(|v| v.first().copied()),
                    model: stat(&run.stdout, "MODEL").and_then(|v| v.first().copied()),
                    lines: expected.lines.len(),
                    problem,
                });
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    let order = |o: &Outcome| {
        let b = BOARDS.iter().position(|b| b.machine == o.board.machine);
        (CASES.iter().position(|c| *c == o.case), b)
    };
    results.sort_by_key(order);
    let mut table = String::from(
        "| case | board | CPU | records | flash (B) | static RAM (B) | stack peak (B) | model (B) | result |\n\
         | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    for o in &results {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.case,
            o.board.machine,
            o.board.cpu,
            o.lines,
            o.flash,
            o.ram,
            opt(o.stack),
            opt(o.model),
            if o.problem.is_some() {
                "MISMATCH"
            } else {
                "bit-exact"
            }
        ));
    }
    println!("{table}");
    let _ = std::fs::write(hw_dir().join("target/device-report.md"), &table);
    let failures: Vec<String> = results
        .iter()
        .filter_map(|o| {
            o.problem
                .as_ref()
                .map(|p| format!("{} on {}: {p}", o.case, o.board.machine))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let expected_jobs: usize = BOARDS
        .iter()
        .map(|b| CASES.iter().filter(|c| runs_on(c, b.machine)).count())
        .sum();
    assert_eq!(results.len(), expected_jobs);
}

#[test]
fn an_altered_rounding_rule_is_caught_and_the_element_named() {
    need_qemu();
    let p = prepare().unwrap();
    let board = BOARDS[2]; // mps2-an386, Cortex-M4F
    let dir = build_firmware(
        &board,
        &["cnn"],
        &["fault-ties-to-odd"],
        "fault",
        &p.cases_dir,
    )
    .unwrap();
    let elf = dir.join("cnn");
    let expected = &p.expected.iter().find(|(c, _)| *c == "cnn").unwrap().1;
    let run = run_qemu(&elf, &[]).unwrap();
    let m = compare(expected, &run.stdout)
        .expect("a firmware whose NearestEven rounds ties to odd must not match the desktop");
    let element = first_difference(&elf, expected, &m)
        .unwrap()
        .expect("the first differing record must have a differing element");
    println!(
        "caught: line {} desktop {:?} device {:?}\n{element}",
        m.index, m.expected, m.device
    );
    assert_ne!(element.expected, element.device);
    assert!(element.expected.is_some() && element.device.is_some());
}

/// The cases again on the Cortex-M4F and M7F with the firmware feature
/// `dsp-backend` (`fixnn::kernels::DspBackend`, SMLAD kernels): every record
/// bit-exact with the desktop, the packed kernels really used; and the
/// `kernels` firmware (DspBackend against RefBackend on random shapes and
/// bit widths, whole outputs; the asm! block against its portable twin)
/// finds no difference.
#[test]
fn dsp_kernels_on_m4_and_m7_match_the_desktop() {
    need_qemu();
    let p = prepare().unwrap();
    let mut jobs = Vec::new();
    for board in [BOARDS[2], BOARDS[3]] {
        // `packed` computes from packed weights with its own kernels
        // (`fixnn::layers::PackedLinear`), not through a backend.
        let mut bins: Vec<&str> = CASES
            .iter()
            .copied()
            .filter(|c| runs_on(c, board.machine) && *c != "packed")
            .collect();
        bins.push("kernels");
        let dir = build_firmware(&board, &bins, &["dsp-backend"], "dsp", &p.cases_dir).unwrap();
        for b in bins {
            jobs.push((board, b, dir.join(b)));
        }
    }
    let queue = Mutex::new(jobs.into_iter());
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some((board, bin, elf)) = queue.lock().unwrap().next() else {
                    break;
                };
                let run = run_qemu(&elf, &[]).unwrap();
                let last = || {
                    run.stdout
                        .lines()
                        .rev()
                        .take(5)
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                let problem = if bin == "kernels" {
                    let k = stat(&run.stdout, "KERNELS").unwrap_or_default();
                    // cases, ops, packed, reference, mismatches
                    (!run.ok || k.len() != 5 || k[2] == 0 || k[4] != 0)
                        .then(|| format!("kernel test failed:\n{}\n{}", run.stdout, run.stderr))
                } else {
                    let expected = &p.expected.iter().find(|(c, _)| *c == bin).unwrap().1;
                    let packed = stat(&run.stdout, "DSP").and_then(|v| v.first().copied());
                    if let Some(m) = compare(expected, &run.stdout) {
                        let element = first_difference(&elf, expected, &m).unwrap();
                        Some(format!(
                            "line {}: desktop {:?}, device {:?}; {}",
                            m.index,
                            m.expected,
                            m.device,
                            element.map_or("no element differs".into(), |e| e.to_string())
                        ))
                    } else if !run.ok || !run.stdout.lines().any(|l| l == "END") {
                        Some(format!(
                            "did not finish cleanly:\n{}\n{}",
                            last(),
                            run.stderr
                        ))
                    } else if packed.unwrap_or(0) == 0 {
                        Some(format!("the packed kernels never ran:\n{}", last()))
                    } else {
                        None
                    }
                };
                println!(
                    "dsp: {bin} on {}: {}",
                    board.machine,
                    match &problem {
                        None => "bit-exact",
                        Some(_) => "MISMATCH",
                    }
                );
                if let Some(pr) = problem {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{bin} on {}: {pr}", board.machine));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

//! The device suite's host side: boards, firmware builds, QEMU runs, and
//! the comparison of what a device reports with what the desktop computed.
//!
//! Flow: [`cases::all_blobs`] writes each case's blob; [`cases::expected`]
//! computes the records with the rayon backend; [`build_firmware`] builds
//! the case binaries for a board (the blobs are `include_bytes!`-ed);
//! [`run_qemu`] runs one; [`compare`] checks every line and, on the first
//! difference, [`first_difference`] asks the device for the whole tensor
//! and names the first element that differs.

pub mod cases;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cases::Report;

/// A QEMU machine the suite runs on.
#[derive(Clone, Copy, Debug)]
pub struct Board {
    /// QEMU machine name (also the firmware's `BOARD`).
    pub machine: &'static str,
    /// The firmware feature selecting its memory map.
    pub feature: &'static str,
    /// Rust target.
    pub target: &'static str,
    /// CPU, for reports.
    pub cpu: &'static str,
}

/// The six boards.
pub const BOARDS: [Board; 6] = [
    Board {
        machine: "microbit",
        feature: "board-microbit",
        target: "thumbv6m-none-eabi",
        cpu: "Cortex-M0",
    },
    Board {
        machine: "mps2-an385",
        feature: "board-an385",
        target: "thumbv7m-none-eabi",
        cpu: "Cortex-M3",
    },
    Board {
        machine: "mps2-an386",
        feature: "board-an386",
        target: "thumbv7em-none-eabihf",
        cpu: "Cortex-M4F",
    },
    Board {
        machine: "mps2-an500",
        feature: "board-an500",
        target: "thumbv7em-none-eabihf",
        cpu: "Cortex-M7F",
    },
    Board {
        machine: "mps2-an505",
        feature: "board-an505",
        target: "thumbv8m.main-none-eabihf",
        cpu: "Cortex-M33",
    },
    Board {
        machine: "mps3-an547",
        feature: "board-an547",
        target: "thumbv8m.main-none-eabihf",
        cpu: "Cortex-M55",
    },
];

/// The board with QEMU machine name `machine`.
pub fn board(machine: &str) -> Option<Board> {
    BOARDS.iter().copied().find(|b| b.machine == machine)
}

/// `hw-targets/`.
pub fn hw_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hw-targets")
}

/// The MNIST directory: `$FIXNN_DATA`, else `../shared/datasets/mnist`
/// beside the repository.
pub fn mnist_dir() -> PathBuf {
    match std::env::var_os("FIXNN_DATA") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/mnist"),
    }
}

/// Write every case blob into `dir` as `<case>.case`; return the blobs.
///
/// # Errors
///
/// MNIST unreadable, or `dir` not writable.
pub fn write_blobs(dir: &Path) -> Result<Vec<cases::CaseBlob>, String> {
    let blobs = cases::all_blobs(&mnist_dir())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for b in &blobs {
        let path = dir.join(format!("{}.case", b.name));
        // Rewrite only on change, so cargo does not rebuild the firmware for nothing.
        if std::fs::read(&path).ok().as_deref() != Some(&b.blob[..]) {
            std::fs::write(&path, &b.blob).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(blobs)
}

/// Build the case binaries `bins` for `board` with extra firmware
/// `features`, in target directory `hw-targets/target/<variant>`, and copy
/// the ELFs to `hw-targets/target/elf/<variant>/<machine>/`. Returns that
/// directory.
///
/// # Errors
///
/// The build failed (its stderr is included).
pub fn build_firmware(
    board: &Board,
    bins: &[&str],
    features: &[&str],
    variant: &str,
    cases_dir: &Path,
) -> Result<PathBuf, String> {
    let hw = hw_dir();
    let target_dir = hw.join("target").join(variant);
    let mut feats = vec![board.feature];
    feats.extend_from_slice(features);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&hw)
        .args(["build", "--release", "-p", "fixnn-firmware", "--target"])
        .arg(board.target)
        .arg("--features")
        .arg(feats.join(","));
    for b in bins {
        cmd.args(["--bin", b]);
    }
    // The outer cargo's settings are for the host build, not this one.
    for v in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("CARGO_TARGET_DIR", &target_dir)
        .env("FIXNN_CASES_DIR", cases_dir);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo for {}: {e}", board.machine))?;
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| !l.trim_start().starts_with("Compiling"))
            .collect();
        return Err(format!(
            "firmware build for {} failed:\n{}",
            board.machine,
            errors.join("\n")
        ));
    }
    let dest = hw.join("target/elf").join(variant).join(board.machine);
    std::fs::create_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    for b in bins {
        let from = target_dir.join(board.target).join("release").join(b);
        std::fs::copy(&from, dest.join(b)).map_err(|e| format!("{}: {e}", from.display()))?;
    }
    Ok(dest)
}

/// What one QEMU run printed.
pub struct DeviceRun {
    /// Semihosting stdout.
    pub stdout: String,
    /// QEMU's stderr (defmt frames, QEMU messages).
    pub stderr: String,
    /// The firmware exited with success.
    pub ok: bool,
}

/// Run `elf` under QEMU through `hw-targets/qemu-run` with `args` on the
/// semihosting command line.
///
/// # Errors
///
/// QEMU could not be started.
pub fn run_qemu(elf: &Path, args: &[&str]) -> Result<DeviceRun, String> {
    let out = Command::new(hw_dir().join("qemu-run"))
        .arg(elf)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run qemu-run for {}: {e}", elf.display()))?;
    Ok(DeviceRun {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ok: out.status.success(),
    })
}

/// The record and error lines of a device's output.
pub fn device_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with("R ") || l.starts_with("X "))
        .collect()
}

/// The first line where the device differs from the desktop.
#[derive(Debug)]
pub struct LineMismatch {
    /// Index of the line.
    pub index: usize,
    /// The desktop's line (`None`: the device printed more).
    pub expected: Option<String>,
    /// The device's line (`None`: the device stopped early).
    pub device: Option<String>,
}

/// Compare the device's lines with the desktop's, in order.
pub fn compare(expected: &Report, stdout: &str) -> Option<LineMismatch> {
    let dev = device_lines(stdout);
    let n = expected.lines.len().max(dev.len());
    (0..n).find_map(|i| {
        let e = expected.lines.get(i).map(String::as_str);
        let d = dev.get(i).copied();
        (e != d).then(|| LineMismatch {
            index: i,
            expected: e.map(str::to_string),
            device: d.map(str::to_string),
        })
    })
}

/// The first element of a tensor that differs, with both values.
#[derive(Debug)]
pub struct ElementMismatch {
    /// `run step phase name part` of the record.
    pub record: String,
    /// Element index (row-major).
    pub index: usize,
    /// Desktop value bits.
    pub expected: Option<u32>,
    /// Device value bits.
    pub device: Option<u32>,
}

impl fmt::Display for ElementMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<u32>| match v {
            Some(b) => format!("{:e} (0x{b:08x})", f32::from_bits(b)),
            None => "absent".to_string(),
        };
        write!(
            f,
            "record [{}] element {}: desktop {}, device {}",
            self.record,
            self.index,
            show(self.expected),
            show(self.device)
        )
    }
}

/// Parse the `D <start> <hex>...` lines of a dump.
pub fn parse_dump(stdout: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for l in stdout.lines().filter(|l| l.starts_with("D ")) {
        for w in l.split_whitespace().skip(2) {
            if let Ok(b) = u32::from_str_radix(w, 16) {
                v.push(b);
            }
        }
    }
    v
}

/// For a mismatch on an `R` line, ask the device for the whole tensor
/// (`dump run step phase name part` on its command line) and find the
/// first element that differs. `None` if the line is not a record or the
/// device's values equal the desktop's (then the format or counters differ).
///
/// # Errors
///
/// QEMU could not be started.
pub fn first_difference(
    elf: &Path,
    expected: &Report,
    m: &LineMismatch,
) -> Result<Option<ElementMismatch>, String> {
    let Some(line) = m.expected.as_deref().or(m.device.as_deref()) else {
        return Ok(None);
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 6 || f[0] != "R" {
        return Ok(None);
    }
    let key = &f[1..6];
    let mut args = vec!["dump"];
    args.extend_from_slice(key);
    let run = run_qemu(elf, &args)?;
    let dev = parse_dump(&run.stdout);
    let want: &[u32] = match m.expected.as_deref() {
        Some(_) => &expected.values[m.index],
        None => &[],
    };
    let n = want.len().max(dev.len());
    Ok((0..n)
        .find(|&i| want.get(i) != dev.get(i))
        .map(|i| ElementMismatch {
            record: key.join(" "),
            index: i,
            expected: want.get(i).copied(),
            device: dev.get(i).copied(),
        }))
}

/// Flash and static RAM of an ELF32 image: flash is every allocated
/// section with contents (code, read-only data, the initial values of
/// `.data`), static RAM every allocated writable section (`.data`,
/// `.bss`, `.uninit`).
///
/// # Errors
///
/// Not a little-endian ELF32 file.
pub fn elf_sizes(path: &Path) -> Result<(u64, u64), String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    if b.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 1, 1][..]) {
        return Err(format!(
            "{}: not a little-endian ELF32 file",
            path.display()
        ));
    }
    let bad = || format!("{}: malformed section table", path.display());
    let shoff = u32_at(0x20).ok_or_else(bad)?;
    let shentsize = u16_at(0x2e).ok_or_else(bad)?;
    let shnum = u16_at(0x30).ok_or_else(bad)?;
    let (mut flash, mut ram) = (0u64, 0u64);
    for i in 0..shnum {
        let h = shoff + i * shentsize;
        let ty = u32_at(h + 4).ok_or_else(bad)?;
        let flags = u32_at(h + 8).ok_or_else(bad)?;
        let size = u32_at(h + 0x14).ok_or_else(bad)? as u64;
        const WRITE: usize = 1;
        const ALLOC: usize = 2;
        const NOBITS: usize = 8;
        if flags & ALLOC == 0 {
            continue;
        }
        if ty != NOBITS {
            flash += size;
        }
        if flags & WRITE != 0 {
            ram += size;
        }
    }
    Ok((flash, ram))
}

/// A `KEY v1 v2` line of the device's output, parsed as numbers.
pub fn stat(stdout: &str, key: &str) -> Option<Vec<u64>> {
    stdout.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(key)).then(|| w.filter_map(|x| x.parse().ok()).collect())
    })
}

/// The blobs and the desktop's reports, computed once per test process.
pub struct Prepared {
    /// Where the blobs are (the firmware's `FIXNN_CASES_DIR`).
    pub cases_dir: PathBuf,
    /// `(case, desktop report)` in [`cases::CASES`] order.
    pub expected: Vec<(&'static str, Report)>,
}

/// Write the blobs and compute the desktop's reports (once).
///
/// # Errors
///
/// MNIST unreadable, a blob not writable, or a case the desktop refuses.
pub fn prepare() -> Result<&'static Prepared, String> {
    static P: std::sync::OnceLock<Result<Prepared, String>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let cases_dir = hw_dir().join("target/cases");
        let blobs = write_blobs(&cases_dir)?;
        let mut expected = Vec::new();
        for b in &blobs {
            let r = cases::expected(b.name, &b.blob).map_err(|e| format!("{}: {e:?}", b.name))?;
            expected.push((b.name, r));
        }
        Ok(Prepared {
            cases_dir,
            expected,
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

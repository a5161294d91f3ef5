//! Argument parsing and dispatch of the `fixnn` program.
//!
//! [`run`] is the whole program minus the process exit, so tests call it in
//! process. Exit status: 0 on success, 2 for bad input (one line on stderr
//! naming what is wrong), 1 when writing the output fails.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use fixnn::{Method, RangeMethod, Rounding};

/// Exit status for bad input.
pub const EXIT_USAGE: i32 = 2;
/// Exit status when the output cannot be written.
pub const EXIT_IO: i32 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "fixnn",
    version,
    about = "Fixed-point neural-network simulation, bit-exact with Cortex-M devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Quantize numbers to a fixed-point format and show codes and values.
    Quantize(QuantizeArgs),
    /// Print the config table of a config tree, a model state, a checkpoint
    /// or a nics_fix_pt YAML config.
    Inspect(InspectArgs),
    /// Train a model file on MNIST or Fashion-MNIST; writes checkpoint,
    /// metrics and report to the output directory.
    Train(TrainArgs),
    /// Test accuracy of a checkpoint.
    Eval(EvalArgs),
    /// Export a checkpoint's quantized model as Rust source or a binary blob.
    Export(ExportArgs),
}

/// Arguments of `fixnn train`.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// The model file (architecture, configs, optimizer, schedule).
    #[arg(value_name = "MODEL.json")]
    pub model: PathBuf,
    /// Epochs in all (default: the model file's schedule).
    #[arg(long, value_name = "N")]
    pub epochs: Option<u32>,
    /// Worker threads (default: every core, with blocks of steps on one
    /// thread when that is faster, as when other programs keep the cores
    /// busy). Any count gives the same bits.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Seed of initialisation, shuffling and stochastic rounding (default: the model file's).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Dataset directory (else $FIXNN_DATA, ../shared/datasets/mnist, data/mnist).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Output directory (default runs/<name>; if that holds a run, the
    /// first free runs/<name>-2, -3, ...).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue from the checkpoint in the output directory.
    #[arg(long)]
    pub resume: bool,
    /// Start afresh in an output directory that already holds a run,
    /// replacing its checkpoint and metrics (without it, that is an error).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Train on the first N samples only (quick runs).
    #[arg(long, value_name = "N")]
    pub train_samples: Option<usize>,
    /// Test on the first N samples only.
    #[arg(long, value_name = "N")]
    pub test_samples: Option<usize>,
    /// Skip the plots.
    #[arg(long)]
    pub no_report: bool,
}

/// Arguments of `fixnn eval`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// A checkpoint written by `fixnn train`.
    #[arg(value_name = "CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// Dataset directory.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Worker threads.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Test on the first N samples only.
    #[arg(long, value_name = "N")]
    pub test_samples: Option<usize>,
}

/// `--format` of `fixnn export`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ExportFormat {
    /// A Rust source file with one static array per tensor.
    Rust,
    /// A binary blob for `include_bytes!`.
    Bin,
}

/// Arguments of `fixnn export`.
#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// A checkpoint written by `fixnn train`.
    #[arg(value_name = "CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output file (default: model.rs or model.bin beside the checkpoint).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Arguments of `fixnn inspect`.
#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    /// A fixnn config tree or state (JSON), or a nics_fix_pt config (YAML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// How to read `scale` in a nics_fix_pt file: the exponent k (before
    /// 0.4), the value 2^k (0.4), or decide from the file.
    #[arg(long, value_name = "FORM", value_enum, default_value = "auto")]
    pub nics_scale: ScaleArg,
    /// The clamp of the configs read from a nics_fix_pt file: hardware
    /// (fixnn's default) or nics (nics_fix_pt's own, to reproduce its results).
    #[arg(long, value_name = "C", value_enum, default_value = "hardware")]
    pub nics_clamp: ClampArg,
}

/// `--clamp` names.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClampArg {
    /// Codes in [-2^(bits-1), 2^(bits-1) - 1], as a bits-bit register.
    Hardware,
    /// Codes in [-2^(bits-1), 2^(bits-1)], as nics_fix_pt (bits <= 15).
    Nics,
}

impl From<ClampArg> for fixnn::Clamp {
    fn from(c: ClampArg) -> Self {
        match c {
            ClampArg::Hardware => fixnn::Clamp::Hardware,
            ClampArg::Nics => fixnn::Clamp::Nics,
        }
    }
}

/// `--nics-scale` names.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ScaleArg {
    /// Floats that are not whole numbers mean 2^k, integers mean k.
    Auto,
    /// scale is the exponent k.
    Exponent,
    /// scale is the value 2^k.
    Value,
}

/// Arguments of `fixnn quantize`.
#[derive(Args, Debug, Clone)]
pub struct QuantizeArgs {
    /// Bit width of the codes (2..=16).
    #[arg(long, value_name = "B", default_value_t = 8,
          value_parser = clap::value_parser!(u8).range(2..=16))]
    pub bits: u8,
    /// Range exponent: values lie in [-2^S, 2^S - step], step = 2^(S + 1 - B).
    /// The starting scale for `auto`, the scale used by `fixed`.
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub scale: Option<i8>,
    /// none: keep the values; auto: choose the scale from the data;
    /// fixed: use --scale. Default: fixed if --scale is given, else auto.
    #[arg(long, value_name = "M", value_enum)]
    pub method: Option<MethodArg>,
    /// How `auto` chooses the scale.
    #[arg(long, value_name = "R", value_enum, default_value = "max")]
    pub range: RangeArg,
    /// Rounding of values between two codes.
    #[arg(long, value_name = "MODE", value_enum, default_value = "nearest-even")]
    pub rounding: RoundingArg,
    /// Where codes saturate: hardware [-2^(B-1), 2^(B-1) - 1], or nics
    /// (nics_fix_pt's clamp at +2^S: codes up to 2^(B-1); B <= 15).
    #[arg(long, value_name = "C", value_enum, default_value = "hardware")]
    pub clamp: ClampArg,
    /// Zero point Z of an asymmetric range, in [-2^(B-1), 2^(B-1) - 1]:
    /// register value q means (q - Z) * step. Used by `fixed`; `auto`
    /// chooses it with `--range minmax` (and uses 0 with the others).
    #[arg(
        long,
        value_name = "Z",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub zero_point: i32,
    /// Seed of stochastic rounding (tensor id 0, step 0).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Print exactly one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Read values from a JSON file (`[1.5, -2]` or `{"values": [...]}`; `-` is
    /// standard input). They come before the VALUES on the command line.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// The numbers to quantize (negative numbers work, with or without `--`).
    #[arg(value_name = "VALUES", allow_negative_numbers = true)]
    pub values: Vec<String>,
}

/// `--method` names.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum MethodArg {
    /// Keep full precision.
    None,
    /// Choose the scale from the data.
    Auto,
    /// Use the given scale.
    Fixed,
}

/// `--range` names.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum RangeArg {
    /// ceil(log2(max |x|)).
    Max,
    /// ceil(log2(3 std + |mean|)).
    #[value(name = "3sigma")]
    ThreeSigma,
    /// ceil(log2(k-th largest |x|)), k = max(n/10, 1).
    #[value(name = "max10")]
    MaxTenPercent,
    /// The best of s, s-1, s-2 by total absolute error.
    Sweep,
    /// Moving average of max |x| over steps with hysteresis; one call is
    /// its first observation, so the scale is max's.
    Running,
    /// Asymmetric: the least scale whose 2^B codes, shifted by a zero
    /// point, cover [min(x, 0), max(x, 0)]; chooses the zero point too.
    #[value(name = "minmax")]
    MinMax,
}

/// `--rounding` names.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum RoundingArg {
    /// Nearest, ties to even.
    NearestEven,
    /// Nearest, ties away from zero.
    NearestAway,
    /// Toward minus infinity.
    Floor,
    /// Stochastic, seeded.
    Stochastic,
    /// TFLite's arithmetic: its double rounding when an accumulator is
    /// requantized by a real-valued scale, nearest-away everywhere else.
    Tflite,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::None => Method::None,
            MethodArg::Auto => Method::Auto,
            MethodArg::Fixed => Method::Fixed,
        }
    }
}

impl From<RangeArg> for RangeMethod {
    fn from(r: RangeArg) -> Self {
        match r {
            RangeArg::Max => RangeMethod::Max,
            RangeArg::ThreeSigma => RangeMethod::ThreeSigma,
            RangeArg::MaxTenPercent => RangeMethod::MaxTenPercent,
            RangeArg::Sweep => RangeMethod::Sweep,
            RangeArg::Running => RangeMethod::Running,
            RangeArg::MinMax => RangeMethod::MinMax,
        }
    }
}

impl From<RoundingArg> for Rounding {
    fn from(r: RoundingArg) -> Self {
        match r {
            RoundingArg::NearestEven => Rounding::NearestEven,
            RoundingArg::NearestAway => Rounding::NearestAway,
            RoundingArg::Floor => Rounding::Floor,
            RoundingArg::Stochastic => Rounding::Stochastic,
            RoundingArg::Tflite => Rounding::Tflite,
        }
    }
}

/// Run the program on `args` (including the program name), writing normal
/// output to `out` and errors to `err`. Returns the exit status.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return clap_error(e, out, err),
    };
    let result = match cli.command {
        Command::Quantize(args) => crate::quantize::run(&args, out),
        Command::Inspect(args) => {
            let form = match args.nics_scale {
                ScaleArg::Auto => crate::nics::ScaleForm::Auto,
                ScaleArg::Exponent => crate::nics::ScaleForm::Exponent,
                ScaleArg::Value => crate::nics::ScaleForm::Value,
            };
            match crate::inspect::inspect_with(&args.file, form, args.nics_clamp.into()) {
                Ok(table) => out
                    .write_all(table.as_bytes())
                    .map_err(crate::quantize::Failure::Output),
                Err(e) => Err(crate::quantize::Failure::Input(e)),
            }
        }
        Command::Train(a) => {
            let opts = crate::train::TrainOptions {
                model: a.model,
                epochs: a.epochs,
                threads: a.threads,
                seed: a.seed,
                data: a.data,
                out: a.out,
                resume: a.resume,
                overwrite: a.overwrite,
                train_samples: a.train_samples,
                test_samples: a.test_samples,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                report: !a.no_report,
            };
            match crate::train::train(opts) {
                Ok(s) => writeln!(
                    out,
                    "wrote {}\ntest_accuracy={:.2}",
                    s.out.display(),
                    s.test_accuracy
                )
                .map_err(crate::quantize::Failure::Output),
                Err(e) => Err(crate::quantize::Failure::Input(e)),
            }
        }
        Command::Eval(a) => {
            match crate::train::eval(&a.checkpoint, a.data.as_deref(), a.threads, a.test_samples) {
                Ok(acc) => writeln!(out, "test_accuracy={acc:.2}")
                    .map_err(crate::quantize::Failure::Output),
                Err(e) => Err(crate::quantize::Failure::Input(e)),
            }
        }
        Command::Export(a) => export(&a, out),
    };
    match result {
        Ok(()) => 0,
        Err(crate::quantize::Failure::Input(msg)) => {
            let _ = writeln!(err, "fixnn: error: {msg}");
            EXIT_USAGE
        }
        Err(crate::quantize::Failure::Output(e)) => {
            let _ = writeln!(err, "fixnn: error: cannot write output: {e}");
            EXIT_IO
        }
    }
}

/// Help and version go to `out` with status 0; a usage error becomes one
/// line on `err` with status 2.
fn clap_error(e: clap::Error, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = write!(out, "{}", e.render());
            0
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = write!(err, "{}", e.render());
            EXIT_USAGE
        }
        _ => {
            let text = e.render().to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let first = lines.next().unwrap_or("invalid arguments");
            let first = first.trim_start_matches("error: ");
            // clap puts the accepted names on a line of their own: keep them.
            match lines.find(|l| l.starts_with("[possible values:")) {
                Some(possible) => {
                    let _ = writeln!(err, "fixnn: error: {first} {possible}");
                }
                None => {
                    let _ = writeln!(err, "fixnn: error: {first}");
                }
            }
            EXIT_USAGE
        }
    }
}

fn export(a: &ExportArgs, out: &mut dyn Write) -> Result<(), crate::quantize::Failure> {
    use crate::quantize::Failure;
    let c = crate::checkpoint::load(&a.checkpoint).map_err(Failure::Input)?;
    let (bytes, default_name) = match a.format {
        ExportFormat::Rust => (
            crate::export::to_rust(&c, &a.checkpoint.display().to_string())
                .map_err(Failure::Input)?
                .into_bytes(),
            "model.rs",
        ),
        ExportFormat::Bin => (
            crate::export::to_bin(&c).map_err(Failure::Input)?,
            "model.bin",
        ),
    };
    let dest = a.out.clone().unwrap_or_else(|| {
        a.checkpoint
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(default_name)
    });
    crate::configs::write_atomic(&dest, &bytes).map_err(Failure::Input)?;
    writeln!(out, "wrote {} ({} bytes)", dest.display(), bytes.len()).map_err(Failure::Output)
}

//! The device half of the golden flow: run a case blob with the reference
//! backend and print one line per record (see `fixnn_cases::write_line`).
//!
//! Output on semihosting stdout:
//!
//! ```text
//! CASE <name> BOARD <machine> TARGET <triple>
//! R <run> <step> <phase> <tensor> <part> <len> <fmt> <hash>     one per record
//! X <run> <step> <error>                                          a run that stopped
//! P <point> <bytes>                                              stack peak up to each point of the first run
//! STACK <peak bytes> <stack bytes>
//! MODEL <bytes of the model>
//! END
//! ```
//!
//! With `dump <run> <step> <phase> <tensor> <part>` on the command line only
//! that run executes and the matching record's values are printed as
//! `D <first index> <hex f32 bits>...` lines, eight per line.

use core::fmt::Write;

#[cfg(not(feature = "dsp-backend"))]
use fixnn::backend::RefBackend;
use fixnn_cases::{write_error_line, write_line, Case, CaseError, Record, Sink, Want};

use crate::{stack_peak, stack_size, Out, BOARD, TARGET};

/// A record to print in full.
struct Dump<'a> {
    run: u32,
    step: u32,
    phase: &'a str,
    name: &'a str,
    part: &'a str,
}

impl Dump<'_> {
    fn matches(&self, r: &Record<'_>) -> bool {
        let mut c = [0u8; 4];
        r.run == self.run
            && r.step == self.step
            && r.phase.code().encode_utf8(&mut c) == self.phase
            && r.name == self.name
            && r.part.name() == self.part
    }
}

/// Parse `dump <run> <step> <phase> <tensor> <part>` anywhere in the
/// command line's words.
fn parse_dump<'a>(mut words: impl Iterator<Item = &'a str>) -> Option<Dump<'a>> {
    words.find(|w| *w == "dump")?;
    Some(Dump {
        run: words.next()?.parse().ok()?,
        step: words.next()?.parse().ok()?,
        phase: words.next()?,
        name: words.next()?,
        part: words.next()?,
    })
}

struct DeviceSink<'a> {
    dump: Option<Dump<'a>>,
    marks: u32,
}

impl Sink for DeviceSink<'_> {
    fn record(&mut self, r: &Record<'_>) {
        let mut w = Out;

        match &self.dump {
            None => {
                let _ = write_line(&mut w, r);
            }
            Some(d) if d.matches(r) => {
                for (i, chunk) in r.values.chunks(8).enumerate() {
                    let _ = write!(w, "D {}", i * 8);
                    for v in chunk {
                        let _ = write!(w, " {:08x}", v.to_bits());
                    }
                    let _ = writeln!(w);
                }
            }
            Some(_) => {}
        }
    }

    fn mark(&mut self, what: &'static str) {
        if self.marks < 8 {
            self.marks += 1;
            let _ = writeln!(Out, "P {what} {}", stack_peak());
            crate::stack_repaint();
        }
    }

    fn error(&mut self, run: u32, step: u32, e: &CaseError) {
        let _ = write_error_line(&mut Out, run, step, e);
    }
}

/// Run the case with the reference backend (the default) or, with the
/// feature `dsp-backend`, with [`fixnn::kernels::DspBackend`] on
/// [`crate::dsp_scratch`], then print `DSP <packed calls> <reference calls>`.
fn run_with_backend<C: Case<B, K>, const B: usize, const K: usize>(
    blob: &[u8],
    want: Want,
    sink: &mut DeviceSink<'_>,
) -> Result<(), CaseError> {
    #[cfg(feature = "dsp-backend")]
    {
        // Taken twice (never: one case per firmware): no scratch, every
        // operation then runs on the reference kernels.
        let scratch = crate::dsp_scratch().unwrap_or(&mut []);
        let bk = fixnn::kernels::DspBackend::new(scratch);
        let r = fixnn_cases::run::<C, _, B, K>(&bk, blob, want, sink);
        let _ = writeln!(Out, "DSP {} {}", bk.fast_calls(), bk.fallback_calls());
        r
    }
    #[cfg(not(feature = "dsp-backend"))]
    {
        fixnn_cases::run::<C, RefBackend, B, K>(&RefBackend, blob, want, sink)
    }
}

/// Run case `C` on `blob` with the reference backend (or the DSP backend,
/// feature `dsp-backend`), print its records
/// (or the requested dump) and the stack and model sizes. Returns `false`
/// if the blob is unusable.
pub fn run_case<C: Case<B, K>, const B: usize, const K: usize>(blob: &[u8]) -> bool {
    let mut buf = [0u8; 192];
    let dump = parse_dump(crate::cmdline(&mut buf).split_ascii_whitespace());
    let mut w = Out;
    let _ = writeln!(w, "CASE {} BOARD {} TARGET {}", C::NAME, BOARD, TARGET);
    let want = dump.as_ref().map_or(Want::All, |d| Want::Run(d.run));
    let mut sink = DeviceSink { dump, marks: 0 };
    let ok = match run_with_backend::<C, B, K>(blob, want, &mut sink) {
        Ok(()) => true,
        Err(e) => {
            let _ = writeln!(w, "BLOB {e:?}");
            false
        }
    };
    let _ = writeln!(w, "STACK {} {}", stack_peak(), stack_size());
    let _ = writeln!(w, "MODEL {}", core::mem::size_of::<C>());
    let _ = writeln!(w, "END");
    ok
}

/// Run the `packed` case (`fixnn_cases::packed`) on `blob`: inference
/// from the packed weights in the blob, which stays in flash. Prints the
/// records (or the requested dump), `WEIGHTS <packed bytes> <bytes as
/// i8>`, the stack and the RAM of the packed layers. Returns `false` if the
/// blob is unusable.
pub fn run_packed_case(blob: &[u8]) -> bool {
    use fixnn_cases::packed;
    let mut buf = [0u8; 192];
    let dump = parse_dump(crate::cmdline(&mut buf).split_ascii_whitespace());
    let mut w = Out;
    let _ = writeln!(w, "CASE packed BOARD {} TARGET {}", BOARD, TARGET);
    let mut sink = DeviceSink { dump, marks: 0 };
    let ok = match packed::run_packed(blob, &mut sink) {
        Ok(()) => true,
        Err(e) => {
            let _ = writeln!(w, "BLOB {e:?}");
            false
        }
    };
    if let Ok(p) = packed::PackedBlob::parse(blob) {
        let (bytes, as_i8) = p.weight_bytes();
        let _ = writeln!(w, "WEIGHTS {bytes} {as_i8}");
    }
    let _ = writeln!(w, "STACK {} {}", stack_peak(), stack_size());
    let _ = writeln!(w, "MODEL {}", packed::PACKED_NET_BYTES);
    let _ = writeln!(w, "END");
    ok
}

/// Define a firmware whose `main` runs case `$net` (batch `$b`, `$k`
/// classes) on the blob `$FIXNN_CASES_DIR/<binary name>.case`.
#[macro_export]
macro_rules! case_main {
    ($net:ty, $b:expr, $k:expr) => {
        static BLOB: &[u8] = include_bytes!(concat!(
            env!("FIXNN_CASES_DIR"),
            "/",
            env!("CARGO_BIN_NAME"),
            ".case"
        ));

        #[cortex_m_rt::entry]
        fn main() -> ! {
            $crate::init();
            let ok = $crate::case::run_case::<$net, $b, $k>(BLOB);
            $crate::exit(ok)
        }
    };
}

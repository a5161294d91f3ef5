//! Where the instructions of a training step go: runs one run of a device
//! case (`mlp` or `cnn`, argument `<case> <run>`) on `DspBackend` with the
//! sampling profiler of the feature `profile` on during the steps, tagged
//! by phase (1 forward and loss, 2 backward, 3 optimizer update, the input
//! load of a step counted with its forward). `scripts/profile-m4.sh` runs
//! it and prints the table.
#![no_std]
#![no_main]

use core::fmt::Write;

use fixnn_firmware::fixnn::kernels::DspBackend;
use fixnn_firmware::fixnn_cases::nets::{Cnn, Mlp, CLASSES, CNN_B, MLP_B};
use fixnn_firmware::fixnn_cases::{self as cases, Case, CaseError, Record, Sink, Want};
use fixnn_firmware::{self as fw, profile, Out};

static CNN: &[u8] = include_bytes!(concat!(env!("FIXNN_CASES_DIR"), "/cnn.case"));
static MLP: &[u8] = include_bytes!(concat!(env!("FIXNN_CASES_DIR"), "/mlp.case"));

const SCRATCH: usize = 64 * 1024;
static mut SCRATCH_BUF: [u32; SCRATCH] = [0; SCRATCH];

struct Tags;

impl Sink for Tags {
    fn record(&mut self, _r: &Record<'_>) {}

    fn error(&mut self, run: u32, step: u32, e: &CaseError) {
        let _ = cases::write_error_line(&mut Out, run, step, e);
    }

    fn mark(&mut self, what: &'static str) {
        match what {
            "configs" | "update" => {
                profile::tag(1);
                profile::set(what == "configs" || profile_more());
            }
            "forward" => profile::tag(2),
            "backward" => profile::tag(3),
            _ => profile::set(false),
        }
    }
}

/// Steps left to sample (set per run).
static mut LEFT: u32 = 0;

fn profile_more() -> bool {
    // SAFETY: single-threaded; no exception touches LEFT.
    #[allow(unsafe_code)]
    unsafe {
        LEFT = LEFT.saturating_sub(1);
        LEFT > 0
    }
}

fn run<C: Case<B, K>, const B: usize, const K: usize>(
    blob: &[u8],
    run: u32,
    steps: u32,
    scratch: &mut [u32],
) {
    #[allow(unsafe_code)]
    // SAFETY: single-threaded.
    unsafe {
        LEFT = steps
    };
    let d = DspBackend::new(scratch);
    let _ = cases::run::<C, _, B, K>(&d, blob, Want::Run(run), &mut Tags);
    profile::dump();
}

/// `times` forward convolutions of the kernel benchmark's shape (`1 x 8 x
/// 16 x 16`, 16 output channels, 3x3, padding 1) on `i8` codes.
fn conv(times: u32, scratch: &mut [u32]) {
    use fixnn_firmware::fixnn::backend::ConvGeom;
    use fixnn_firmware::fixnn::kernels::{self, CodeSlice};
    static mut X: [i8; 2048] = [0; 2048];
    static mut W: [i8; 1152] = [0; 1152];
    static mut Y: [i64; 4096] = [0; 4096];
    // SAFETY: the only references to these statics, made once.
    #[allow(unsafe_code)]
    let (x, w, y) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(X),
            &mut *core::ptr::addr_of_mut!(W),
            &mut *core::ptr::addr_of_mut!(Y),
        )
    };
    for (i, v) in x.iter_mut().chain(w.iter_mut()).enumerate() {
        *v = (i as u32).wrapping_mul(2_654_435_761).wrapping_shr(24) as u8 as i8;
    }
    let g = ConvGeom {
        batch: 1,
        cin: 8,
        h: 16,
        w: 16,
        cout: 16,
        kh: 3,
        kw: 3,
        oh: 16,
        ow: 16,
        stride: (1, 1),
        pad: (1, 1),
        dil: (1, 1),
        groups: 1,
    };
    profile::tag(1);
    profile::set(true);
    for _ in 0..times {
        let ok = kernels::conv2d(
            scratch,
            g,
            &CodeSlice { v: &x[..], bits: 8 },
            &CodeSlice { v: &w[..], bits: 8 },
            &mut y[..],
        );
        core::hint::black_box(ok);
    }
    profile::dump();
}

#[cortex_m_rt::entry]
fn main() -> ! {
    fw::init();
    // SAFETY: the only reference to SCRATCH_BUF, made once in main.
    #[allow(unsafe_code)]
    let scratch = unsafe { &mut *core::ptr::addr_of_mut!(SCRATCH_BUF) };
    let mut buf = [0u8; 64];
    let mut a = fw::args(&mut buf);
    let case = a.next().unwrap_or("mlp");
    let r: u32 = a.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    match case {
        "cnn" => run::<Cnn, CNN_B, CLASSES>(CNN, r, 20, scratch),
        "conv" => conv(r.max(1), scratch),
        _ => run::<Mlp, MLP_B, 10>(MLP, r, 3, scratch),
    }
    let _ = writeln!(Out, "END");
    fw::exit(true)
}

//! Writes the selected board's `memory.x` into OUT_DIR and puts OUT_DIR on
//! the linker search path, so cortex-m-rt's `link.x` picks it up.
//!
//! A `memory.x` in the package root or the workspace root would be found
//! first by the linker (it searches its working directory before `-L`
//! paths) and silently override this one, so the build refuses to run when
//! one exists.

use std::env;
use std::fs;
use std::path::PathBuf;

/// (feature, QEMU machine, recommended target, memory.x body)
const BOARDS: &[(&str, &str, &str, &str)] = &[
    (
        "BOARD_MICROBIT",
        "microbit",
        "thumbv6m-none-eabi",
        "/* BBC micro:bit v1, nRF51822 (Cortex-M0): 256 KB flash, 16 KB RAM. */
MEMORY
{
  FLASH : ORIGIN = 0x00000000, LENGTH = 256K
  RAM : ORIGIN = 0x20000000, LENGTH = 16K
}
",
    ),
    (
        "BOARD_AN385",
        "mps2-an385",
        "thumbv7m-none-eabi",
        MPS2_MEMORY,
    ),
    (
        "BOARD_AN386",
        "mps2-an386",
        "thumbv7em-none-eabihf",
        "/* MPS2 AN386 (Cortex-M4F).
   FLASH: ZBT SSRAM1 (4 MB at 0, mirrored at 0x00400000).
   RAM: the 16 MB PSRAM at 0x21000000, so that the MNIST MLP case (3.3 MB of
   model, built in place with ~2 MB of stack) fits.
   Not used: ZBT SSRAM2 + SSRAM3 (4 MB at 0x20000000). */
MEMORY
{
  FLASH : ORIGIN = 0x00000000, LENGTH = 4M
  RAM : ORIGIN = 0x21000000, LENGTH = 16M
}
",
    ),
    (
        "BOARD_AN500",
        "mps2-an500",
        "thumbv7em-none-eabihf",
        "/* MPS2 AN500 (Cortex-M7F).
   FLASH: ZBT SSRAM1 (4 MB at 0, mirrored at 0x00400000).
   RAM: the 16 MB PSRAM at 0x60000000, so that the MNIST MLP case (3.3 MB of
   model, built in place with ~2 MB of stack) fits.
   Not used: ZBT SSRAM2 + SSRAM3 (4 MB at 0x20000000). */
MEMORY
{
  FLASH : ORIGIN = 0x00000000, LENGTH = 4M
  RAM : ORIGIN = 0x60000000, LENGTH = 16M
}
",
    ),
    (
        "BOARD_AN505",
        "mps2-an505",
        "thumbv8m.main-none-eabihf",
        "/* MPS2+ AN505 (Cortex-M33, SSE-200), runs in Secure state (VTOR 0x10000000).
   FLASH: ZBT SSRAM1 (4 MB, Secure alias of 0x00000000).
   RAM: ZBT SSRAM2 + SSRAM3 (2 x 2 MB, contiguous, Secure alias of 0x28000000).
   Not used: SSE-200 internal SRAM 0x30000000 (32 KB here), PSRAM 0x80000000 (16 MB). */
MEMORY
{
  FLASH : ORIGIN = 0x10000000, LENGTH = 4M
  RAM : ORIGIN = 0x38000000, LENGTH = 4M
}
",
    ),
    (
        "BOARD_AN547",
        "mps3-an547",
        "thumbv8m.main-none-eabihf",
        "/* MPS3 AN547 (Cortex-M55, SSE-300), runs in Secure state; QEMU's init-svtor
   for this board is 0x00000000, so the vector table must be in the ITCM at 0.
   FLASH: ITCM (512 KB, also at 0x10000000).
   RAM: ISRAM0 + ISRAM1 (2 x 2 MB, contiguous, Secure alias of 0x21000000).
   Not used: DTCM 0x20000000 (512 KB), SRAM 0x01000000 (2 MB),
   QSPI 0x28000000 (8 MB, ROM), DDR 0x60000000. */
MEMORY
{
  FLASH : ORIGIN = 0x00000000, LENGTH = 512K
  RAM : ORIGIN = 0x31000000, LENGTH = 4M
}
",
    ),
];

const MPS2_MEMORY: &str = "/* MPS2 AN385 (Cortex-M3).
   FLASH: ZBT SSRAM1 (4 MB at 0, mirrored at 0x00400000).
   RAM: ZBT SSRAM2 + SSRAM3 (4 MB, mirrored at 0x20400000).
   Not used: PSRAM (16 MB at 0x21000000). */
MEMORY
{
  FLASH : ORIGIN = 0x00000000, LENGTH = 4M
  RAM : ORIGIN = 0x20000000, LENGTH = 4M
}
";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(fixnn_v6m)");
    println!("cargo::rustc-check-cfg=cfg(fixnn_v8m)");

    let target = env::var("TARGET").unwrap_or_default();
    println!("cargo::rustc-env=FIXNN_TARGET={target}");
    if target.starts_with("thumbv6m") {
        println!("cargo::rustc-cfg=fixnn_v6m");
    }
    if target.starts_with("thumbv8m") {
        println!("cargo::rustc-cfg=fixnn_v8m");
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    for dir in [Some(manifest_dir.as_path()), manifest_dir.parent()]
        .into_iter()
        .flatten()
    {
        let stray = dir.join("memory.x");
        println!("cargo::rerun-if-changed={}", stray.display());
        if stray.exists() {
            panic!(
                "{} exists and would override the board's memory.x written by build.rs; remove it",
                stray.display()
            );
        }
    }

    let selected: Vec<_> = BOARDS
        .iter()
        .filter(|(feature, ..)| env::var_os(format!("CARGO_FEATURE_{feature}")).is_some())
        .collect();
    // None or several boards: the library's compile_error! says so.
    let [(_, machine, recommended, memory)] = selected.as_slice() else {
        return;
    };
    if target != *recommended {
        println!(
            "cargo::warning=board {machine} is meant for target {recommended}, building for {target}"
        );
    }

    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    fs::write(out.join("memory.x"), memory).unwrap();
    println!("cargo::rustc-link-search={}", out.display());
}

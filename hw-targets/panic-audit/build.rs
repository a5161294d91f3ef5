//! Writes a `memory.x` (the MPS2 AN386 map: 4 MB of flash at 0, 16 MB of
//! RAM at 0x21000000) and an empty `defmt.x` into OUT_DIR and puts OUT_DIR
//! on the linker search path. hw-targets/.cargo/config.toml links every
//! Cortex-M binary with `-Tlink.x -Tdefmt.x`; this binary has no defmt
//! (nothing logs), so its `defmt.x` is empty.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(
        out.join("memory.x"),
        "MEMORY\n{\n  FLASH : ORIGIN = 0x00000000, LENGTH = 4M\n  RAM : ORIGIN = 0x21000000, LENGTH = 16M\n}\n",
    )
    .expect("write memory.x");
    fs::write(out.join("defmt.x"), "/* no defmt in the panic audit */\n").expect("write defmt.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=build.rs");
}

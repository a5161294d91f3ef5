//! Sets the cfg `fixnn_dsp` on targets with the Cortex-M DSP extension
//! (`thumbv7em`: Cortex-M4 and M7), where `kernels` uses `SMLAD` through
//! `asm!`. (`target_feature = "dsp"` is not visible to `cfg` on stable Rust.)
fn main() {
    println!("cargo::rustc-check-cfg=cfg(fixnn_dsp)");
    println!("cargo::rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("thumbv7em") {
        println!("cargo::rustc-cfg=fixnn_dsp");
    }
}

#![no_std]
#![no_main]
#[cortex_m_rt::entry]
fn main() -> ! {
    fixnn_firmware::init();
    fixnn_firmware::exit(true)
}

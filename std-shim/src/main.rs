//! The `fixnn` command-line program. All logic is in [`fixnn_std::cli`].

fn main() {
    let code = fixnn_std::cli::run(
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    std::process::exit(code);
}

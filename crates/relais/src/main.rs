//! The `relais` binary: parse the command line and run it.

fn main() -> std::process::ExitCode {
    relais::cli::main()
}

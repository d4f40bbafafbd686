//! The `relais` binary: parse the command line and run it.

// mimalloc: the ingest path allocates many small, short-lived values, where it
// is measurably faster than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    relais::cli::main()
}

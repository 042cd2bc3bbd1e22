//! The `flowhost` command line, built in this package so that the end-to-end tests get a binary cargo builds
//! before they run and keeps up to date (`CARGO_BIN_EXE_flowhost-e2e`): the same `flowhost_cli::main` as the
//! product's `flowhost` binary.

fn main() -> std::process::ExitCode {
    flowhost_cli::main()
}

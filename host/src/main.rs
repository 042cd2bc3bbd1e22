/// mimalloc rather than glibc's malloc: under load the service allocates and frees on many threads, and glibc's
/// arenas (`_int_malloc`, `_int_free`, `malloc_consolidate`) took about a fifth of its CPU (BENCHMARKS.md,
/// "Sixth round"). A platform embedding the library chooses its own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    flowhost::cli::main()
}

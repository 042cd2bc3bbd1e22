/// mimalloc rather than glibc's malloc: under load the service allocates and frees on many threads, and glibc's
/// arenas (`_int_malloc`, `_int_free`, `malloc_consolidate`) took about a fifth of its CPU (BENCHMARKS.md,
/// "Sixth round"). SQLite allocates through it too (see `main`). A platform embedding the library chooses its own
/// allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    // SAFETY: nothing has used SQLite yet, and no other thread is running.
    if let Err(error) = unsafe { flowhost::store::use_the_global_allocator_for_sqlite() } {
        eprintln!("warning: SQLite keeps the C library's allocator: {error}");
    }
    flowhost_cli::main()
}

/// mimalloc asks for transparent huge pages for its arenas. It gives memory it has not used for a while back to
/// the kernel, and the next allocation there then faults in a whole 2 MiB page, zeroed: that was 4 % of the
/// machine's CPU under load, and delivery rose by 3 to 13 % without it (BENCHMARKS.md, "Tenth round"). This is
/// what mimalloc's own `MIMALLOC_ALLOW_THP=0` does; it applies to this process only.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and touches no memory of ours; a kernel without it
    // answers EINVAL, which changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

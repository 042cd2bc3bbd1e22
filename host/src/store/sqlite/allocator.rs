//! SQLite's allocations through Rust's global allocator. SQLite calls the C library's `malloc` and `free` by
//! itself: glibc's, whatever allocator the binary chose. Under load that was 6 % of the service's CPU, most of it
//! on SQLite's threads (statements, page cache, the copy of every returned value) and some on the runtime threads
//! that free returned rows (BENCHMARKS.md, "Twelfth round"). The `flowhost` binary routes SQLite to mimalloc, its
//! global allocator, this way; a platform embedding the library may do the same at the start of its `main`.

use libsqlite3_sys::{SQLITE_CONFIG_MALLOC, SQLITE_OK, sqlite3_config, sqlite3_mem_methods};
use std::alloc::{Layout, alloc, dealloc, realloc};
use std::ffi::{c_int, c_void};

/// Each block starts with its size, since SQLite frees and resizes by pointer alone and asks for sizes. Eight
/// bytes keep the block 8-aligned, which is all SQLite needs.
const HEADER: usize = 8;
const ALIGN: usize = 8;

/// Makes SQLite allocate through Rust's global allocator, for the whole process.
///
/// # Safety
///
/// Call it before anything uses SQLite, while no other thread can: SQLite's configuration is not thread-safe, and
/// SQLite refuses it once initialised (the error then says so, and SQLite keeps its own allocator). The start of
/// `main` is the place.
pub unsafe fn use_the_global_allocator_for_sqlite() -> Result<(), String> {
    let methods = sqlite3_mem_methods {
        xMalloc: Some(sqlite_malloc),
        xFree: Some(sqlite_free),
        xRealloc: Some(sqlite_realloc),
        xSize: Some(sqlite_size),
        xRoundup: Some(sqlite_roundup),
        xInit: Some(sqlite_init),
        xShutdown: Some(sqlite_shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to the methods, which SQLite copies; the caller guarantees that
    // no other thread uses SQLite meanwhile.
    let code = unsafe { sqlite3_config(SQLITE_CONFIG_MALLOC, &methods as *const sqlite3_mem_methods) };
    if code == SQLITE_OK { Ok(()) } else { Err(format!("SQLite refused the allocator (code {code}): already in use")) }
}

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, ALIGN).ok()
}

/// The block's start and the size stored there, from the pointer SQLite holds.
///
/// # Safety
///
/// `p` came from [`sqlite_malloc`] or [`sqlite_realloc`] and was not freed.
unsafe fn block(p: *mut c_void) -> (*mut u8, usize) {
    // SAFETY: per the contract, the header sits right before `p`, in the same allocation.
    unsafe {
        let start = p.cast::<u8>().sub(HEADER);
        (start, start.cast::<usize>().read())
    }
}

/// Stores `size` in the header at `start` and returns the pointer SQLite gets.
///
/// # Safety
///
/// `start` is a live allocation of at least `HEADER + size` bytes, 8-aligned.
unsafe fn hand_out(start: *mut u8, size: usize) -> *mut c_void {
    if start.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: per the contract.
    unsafe {
        start.cast::<usize>().write(size);
        start.add(HEADER).cast()
    }
}

unsafe extern "C" fn sqlite_malloc(size: c_int) -> *mut c_void {
    let Some(layout) = usize::try_from(size).ok().and_then(layout) else { return std::ptr::null_mut() };
    // SAFETY: the layout is never zero-sized (it holds the header); the block holds the header and `size` bytes.
    unsafe { hand_out(alloc(layout), layout.size() - HEADER) }
}

unsafe extern "C" fn sqlite_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: SQLite frees only what it allocated here, once; the layout is the one the block was made with.
    unsafe {
        let (start, size) = block(p);
        dealloc(start, Layout::from_size_align_unchecked(size + HEADER, ALIGN));
    }
}

unsafe extern "C" fn sqlite_realloc(p: *mut c_void, size: c_int) -> *mut c_void {
    if p.is_null() {
        // SAFETY: as `malloc`.
        return unsafe { sqlite_malloc(size) };
    }
    let Some(new_layout) = usize::try_from(size).ok().and_then(layout) else { return std::ptr::null_mut() };
    // SAFETY: `p` is a live block of ours, with the layout its header gives; on failure it is left as it was.
    unsafe {
        let (start, old) = block(p);
        let moved = realloc(start, Layout::from_size_align_unchecked(old + HEADER, ALIGN), new_layout.size());
        hand_out(moved, new_layout.size() - HEADER)
    }
}

unsafe extern "C" fn sqlite_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: `p` is a live block of ours; its size came from a `c_int`.
    unsafe { block(p).1 as c_int }
}

unsafe extern "C" fn sqlite_roundup(size: c_int) -> c_int {
    size.checked_add(7).map_or(size, |size| size & !7)
}

unsafe extern "C" fn sqlite_init(_: *mut c_void) -> c_int {
    SQLITE_OK
}

unsafe extern "C" fn sqlite_shutdown(_: *mut c_void) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_size_and_contents_through_a_resize() {
        // SAFETY: the methods are called as SQLite calls them: each block freed once, sizes positive.
        unsafe {
            let p = sqlite_malloc(13).cast::<u8>();
            assert!(!p.is_null());
            assert_eq!(p as usize % 8, 0, "8-aligned");
            assert_eq!(sqlite_size(p.cast()), 13);
            for i in 0..13 {
                p.add(i).write(i as u8);
            }
            let grown = sqlite_realloc(p.cast(), 5000).cast::<u8>();
            assert_eq!(sqlite_size(grown.cast()), 5000);
            assert!((0..13).all(|i| grown.add(i).read() == i as u8), "the contents move with the block");
            let shrunk = sqlite_realloc(grown.cast(), 4).cast::<u8>();
            assert_eq!(sqlite_size(shrunk.cast()), 4);
            assert!((0..4).all(|i| shrunk.add(i).read() == i as u8));
            sqlite_free(shrunk.cast());
            sqlite_free(std::ptr::null_mut());
            assert_eq!(sqlite_size(std::ptr::null_mut()), 0);
            assert!(sqlite_malloc(-1).is_null(), "a negative size is refused, not allocated");
            assert_eq!(sqlite_roundup(13), 16);
            assert_eq!(sqlite_roundup(16), 16);
            assert_eq!(sqlite_roundup(c_int::MAX), c_int::MAX);
        }
    }
}

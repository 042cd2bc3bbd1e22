//! An allocator for connectors whose instances live for one invocation, as flowhost's do.
//!
//! The host gives every invocation (and every `invoke-batch`) a fresh instance and resets its memory afterwards,
//! so a general-purpose allocator's bookkeeping is wasted: nothing freed would be reused for long. The arena
//! hands out memory by moving a pointer forward, takes back only the newest allocation (so a growing `Vec` or
//! `String` at the top is extended in place), and never reuses anything else. An invocation therefore uses
//! more memory than with the default allocator (every temporary stays until the instance is dropped), in
//! exchange for fewer instructions per allocation; the instance's memory limit still applies, and a call that
//! reaches it fails with the host's `memory-limit` error.
//!
//! Opt in from the component crate (not from a library that is also built natively):
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: flowhost_connector_sdk::InvocationArena = flowhost_connector_sdk::InvocationArena::new();
//! ```

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::ptr;

const PAGE: usize = 65_536;
/// Memory is taken from the host this much at a time (unless an allocation needs more), so that a call does
/// not cross into the host's limiter for every few kilobytes. Pages grown but never touched cost nothing.
const GROW_PAGES: usize = 16;

/// A bump allocator over memory taken with `memory.grow`; see the module documentation.
pub struct InvocationArena {
    /// The next free byte and the end of the current chunk (0 and 0 until the first allocation).
    next: Cell<usize>,
    end: Cell<usize>,
    /// Adds pages to the memory: the address of the first new page, or None when refused.
    grow: fn(pages: usize) -> Option<usize>,
}

// Components built for wasm32-wasip2 have one thread: the arena is never touched by two at once.
#[cfg(not(target_feature = "atomics"))]
unsafe impl Sync for InvocationArena {}

impl InvocationArena {
    /// The arena over the component's linear memory.
    #[cfg(target_arch = "wasm32")]
    pub const fn new() -> Self {
        fn memory_grow(pages: usize) -> Option<usize> {
            let old = core::arch::wasm32::memory_grow(0, pages);
            (old != usize::MAX).then(|| old * PAGE)
        }
        InvocationArena { next: Cell::new(0), end: Cell::new(0), grow: memory_grow }
    }

    /// Takes at least `size` bytes aligned to `align` from the current chunk, growing the memory if needed.
    fn take(&self, size: usize, align: usize) -> *mut u8 {
        if let Some(start) = fit(self.next.get(), self.end.get(), size, align) {
            self.next.set(start + size);
            return start as *mut u8;
        }
        // Pages beyond the current end: more than needed when possible, exactly what is needed otherwise.
        let Some(needed) = size.checked_add(align).map(|bytes| bytes.div_ceil(PAGE)) else {
            return ptr::null_mut();
        };
        let grown = [needed.max(GROW_PAGES), needed]
            .into_iter()
            .find_map(|pages| (self.grow)(pages).map(|base| (base, pages * PAGE)));
        let Some((base, bytes)) = grown else {
            return ptr::null_mut();
        };
        // Another user of `memory.grow` (wasi-libc's own malloc) may have grown the memory since: start over at
        // the new pages unless they follow the current chunk.
        if base != self.end.get() {
            self.next.set(base);
        }
        self.end.set(base + bytes);
        match fit(self.next.get(), self.end.get(), size, align) {
            Some(start) => {
                self.next.set(start + size);
                start as *mut u8
            }
            None => ptr::null_mut(),
        }
    }
}

#[cfg(target_arch = "wasm32")]
impl Default for InvocationArena {
    fn default() -> Self {
        Self::new()
    }
}

/// Where `size` bytes aligned to `align` start between `next` and `end`, if they fit.
fn fit(next: usize, end: usize, size: usize, align: usize) -> Option<usize> {
    let start = next.checked_next_multiple_of(align)?;
    (start.checked_add(size)? <= end && next != 0).then_some(start)
}

unsafe impl GlobalAlloc for InvocationArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.take(layout.size(), layout.align())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Only the newest allocation can be given back.
        if ptr as usize + layout.size() == self.next.get() {
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let start = ptr as usize;
        let old_end = start + layout.size();
        if new_size <= layout.size() {
            if old_end == self.next.get() {
                self.next.set(start + new_size);
            }
            return ptr;
        }
        // The newest allocation grows in place while the chunk has room.
        if old_end == self.next.get() && start.checked_add(new_size).is_some_and(|end| end <= self.end.get()) {
            self.next.set(start + new_size);
            return ptr;
        }
        let new = self.take(new_size, layout.align());
        if !new.is_null() {
            // SAFETY: both blocks are valid for `layout.size()` bytes and distinct: `new` lies past `ptr`'s block.
            unsafe { ptr::copy_nonoverlapping(ptr, new, layout.size()) };
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A fake linear memory per test thread: a leaked buffer handed out page by page, up to a limit.
    struct FakeMemory {
        base: usize,
        used_pages: usize,
        limit_pages: usize,
    }

    thread_local! {
        static MEMORY: RefCell<FakeMemory> = RefCell::new(FakeMemory {
            base: Box::leak(vec![0u8; 64 * PAGE].into_boxed_slice()).as_mut_ptr() as usize,
            used_pages: 0,
            limit_pages: 64,
        });
    }

    fn fake_grow(pages: usize) -> Option<usize> {
        MEMORY.with_borrow_mut(|memory| {
            (memory.used_pages + pages <= memory.limit_pages).then(|| {
                memory.used_pages += pages;
                memory.base + (memory.used_pages - pages) * PAGE
            })
        })
    }

    /// An arena over a fresh fake memory that grants at most `limit_pages`.
    fn arena(limit_pages: usize) -> InvocationArena {
        MEMORY.with_borrow_mut(|memory| (memory.used_pages, memory.limit_pages) = (0, limit_pages));
        InvocationArena { next: Cell::new(0), end: Cell::new(0), grow: fake_grow }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn allocations_are_aligned_distinct_and_keep_their_contents() {
        let arena = arena(64);
        let mut blocks = Vec::new();
        for (i, (size, align)) in
            [(1, 1), (3, 2), (24, 8), (100, 16), (7, 4096), (70_000, 8), (5, 1)].into_iter().enumerate()
        {
            let block = unsafe { arena.alloc(layout(size, align)) };
            assert!(!block.is_null());
            assert_eq!(block as usize % align, 0, "allocation {i} is misaligned");
            unsafe { ptr::write_bytes(block, i as u8 + 1, size) };
            blocks.push((block as usize, size, i as u8 + 1));
        }
        for &(start, size, fill) in &blocks {
            let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, size) };
            assert!(bytes.iter().all(|&b| b == fill), "a later allocation overwrote the one filled with {fill}");
            for &(other, other_size, other_fill) in &blocks {
                assert!(fill == other_fill || start + size <= other || other + other_size <= start);
            }
        }
    }

    #[test]
    fn the_newest_allocation_is_given_back_and_grows_in_place() {
        let arena = arena(64);
        let first = unsafe { arena.alloc(layout(100, 8)) };
        unsafe { arena.dealloc(first, layout(100, 8)) };
        let again = unsafe { arena.alloc(layout(100, 8)) };
        assert_eq!(again, first, "the newest allocation was not taken back");

        unsafe { ptr::write_bytes(again, 7, 100) };
        let grown = unsafe { arena.realloc(again, layout(100, 8), 5_000) };
        assert_eq!(grown, again, "the newest allocation did not grow in place");
        let shrunk = unsafe { arena.realloc(grown, layout(5_000, 8), 50) };
        assert_eq!(shrunk, grown);
        let next = unsafe { arena.alloc(layout(1, 1)) };
        assert_eq!(next as usize, shrunk as usize + 50, "shrinking the newest allocation did not free its tail");

        // An older allocation moves, with its contents.
        let moved = unsafe { arena.realloc(shrunk, layout(50, 8), 200) };
        assert_ne!(moved, shrunk);
        assert!(unsafe { std::slice::from_raw_parts(moved, 50) }.iter().all(|&b| b == 7));
        // Freeing an older allocation changes nothing.
        unsafe { arena.dealloc(next, layout(1, 1)) };
        let after = unsafe { arena.alloc(layout(1, 1)) };
        assert_eq!(after as usize, moved as usize + 200);
    }

    #[test]
    fn memory_is_grown_in_chunks_then_exactly_then_refused() {
        // 16-page chunks, but the host grants 24 pages in all.
        let arena = arena(24);
        let first = unsafe { arena.alloc(layout(15 * PAGE, 8)) } as usize;
        assert_eq!(MEMORY.with_borrow(|m| m.used_pages), GROW_PAGES);
        // One page left in the chunk, 6 more needed: 16 pages are refused, 6 are granted and extend the chunk.
        let big = unsafe { arena.alloc(layout(5 * PAGE + 100, 8)) } as usize;
        assert_ne!(big, 0);
        assert_eq!(MEMORY.with_borrow(|m| m.used_pages), 22);
        assert_eq!(big, first + 15 * PAGE, "contiguous pages extend the chunk instead of starting a new one");
        // Nothing left to grant: null, which Rust turns into an allocation error (the host's memory-limit).
        assert!(unsafe { arena.alloc(layout(3 * PAGE, 8)) }.is_null());
        // What is still inside the chunk can be had.
        assert!(!unsafe { arena.alloc(layout(1_000, 8)) }.is_null());
    }

    #[test]
    fn pages_grown_by_another_allocator_are_skipped() {
        let arena = arena(64);
        unsafe { arena.alloc(layout(GROW_PAGES * PAGE - 64, 1)) };
        // wasi-libc's own malloc grows the memory by two pages.
        let foreign = fake_grow(2).unwrap();
        let next = unsafe { arena.alloc(layout(1_000, 8)) } as usize;
        assert!(next >= foreign + 2 * PAGE, "the arena handed out pages another allocator owns");
    }

    #[test]
    fn sizes_that_overflow_are_refused() {
        let arena = arena(64);
        assert!(arena.take(usize::MAX - 8, 16).is_null());
        let block = unsafe { arena.alloc(layout(16, 8)) };
        assert!(unsafe { arena.realloc(block, layout(16, 8), isize::MAX as usize - 64) }.is_null());
    }
}

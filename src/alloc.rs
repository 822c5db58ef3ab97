//! The daemon's heap: mimalloc instead of the C library's malloc.
//!
//! Why: the static musl build links zig's libc, whose malloc keeps freed
//! memory in per-CPU free lists and never returns it. With the live heap the
//! same size (every malloc and free counted: 1.49 MB in 12,757 blocks from
//! 1,000 to 6,000 ephemeral publish+unpublish cycles), the daemon's RSS grew
//! by about 0.3 kB a cycle without end; musl's own mallocng did the same.
//! mimalloc reuses freed pages across threads and gives back what it no
//! longer needs: `benches/ephemeral.sh` shows +500 kB over 15,000 cycles
//! against +5,172 kB with the libc malloc (README, "Memory").
//!
//! Only Rust allocations come here; the gRPC C core keeps the libc malloc
//! (with Rust's moved to mimalloc, the growth left is within the goal).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_int, c_long};

use libmimalloc_sys::{mi_free, mi_malloc_aligned, mi_realloc_aligned, mi_zalloc_aligned};

/// `mi_option_e` values of the bundled mimalloc v3 (include/mimalloc.h;
/// checked by a test).
const MI_OPTION_ARENA_EAGER_COMMIT: c_int = 4;
const MI_OPTION_PURGE_DELAY: c_int = 15;

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
}

/// The global allocator of the `bindery` binary.
pub struct Mimalloc;

// SAFETY: every method hands mimalloc a size and an alignment taken from a
// valid `Layout` (alignment a power of two, size not overflowing when rounded
// up), and frees/reallocates only pointers this allocator returned, as
// GlobalAlloc's contract guarantees for its callers.
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { mi_malloc_aligned(layout.size(), layout.align()).cast() }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { mi_zalloc_aligned(layout.size(), layout.align()).cast() }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`'s alignment,
        // which the new block keeps.
        unsafe { mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast() }
    }
}

/// Tune mimalloc for a small, long-running daemon; first thing in `main`.
/// Arenas are committed as they are used, not up front (eager commit of
/// the 1 GiB arena made the idle daemon 21 MB instead of 8 MB, with
/// transparent huge pages), and freed pages go back to the OS at once.
pub fn configure() {
    // SAFETY: plain setters of mimalloc's option table; any value is valid.
    unsafe {
        mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_the_ones_meant() {
        // SAFETY: a plain getter of mimalloc's option table.
        let get = || unsafe {
            (
                mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT),
                mi_option_get(MI_OPTION_PURGE_DELAY),
            )
        };
        // The bundled version's defaults for these two slots: another
        // version with a shifted enum fails here rather than tune the wrong
        // options.
        assert_eq!(get(), (2, 1000));
        configure();
        assert_eq!(get(), (0, 0));
    }

    #[test]
    fn allocations_of_every_alignment_round_trip() {
        for align in [1usize, 8, 16, 64, 4096] {
            let layout = Layout::from_size_align(100, align).unwrap();
            // SAFETY: a non-zero-size layout; the block is freed with it.
            unsafe {
                let p = Mimalloc.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                assert!(std::slice::from_raw_parts(p, 100).iter().all(|&b| b == 0));
                let q = Mimalloc.realloc(p, layout, 10_000);
                assert_eq!(q as usize % align, 0);
                Mimalloc.dealloc(q, Layout::from_size_align(10_000, align).unwrap());
            }
        }
    }
}

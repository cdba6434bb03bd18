//! Heap accounting per thread, for tests that bound what the client holds. The client of an
//! `actix_rt::test` runs on the test's thread, and the scripted servers on threads of their own,
//! so what this thread holds is the client's (and the test's) memory.
//!
//! A test binary that uses it installs the allocator itself:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: support::CountingAllocator = support::CountingAllocator;
//! ```

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

/// The system allocator, counting the bytes each thread holds.
pub struct CountingAllocator;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn account(delta: i64) {
    // `try_with`: allocations made while the thread's locals are torn down are not counted.
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

/// Bytes allocated and not yet freed by this thread, since it started (frees of memory other
/// threads allocated count against it).
pub fn live_bytes() -> i64 {
    LIVE.with(Cell::get)
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            account(layout.size() as i64);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            account(layout.size() as i64);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            account(new_size as i64 - layout.size() as i64);
        }
        new
    }
}

//! A counting global allocator for the zero-allocation tests: it counts
//! the allocations a thread makes between its `arm()` and `disarm()`.
//! Per thread, so tests in one binary running beside each other (and the
//! harness's own threads) never count for each other.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // `const` and without Drop: reading them never allocates, which an
    // allocator's own bookkeeping must not.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

/// Starts counting this thread's allocations, from 0.
pub fn arm() {
    ALLOCS.with(|n| n.set(0));
    ARMED.with(|a| a.set(true));
}

/// Stops counting; the allocations this thread made since `arm()`.
pub fn disarm() -> usize {
    ARMED.with(|a| a.set(false));
    ALLOCS.with(|n| n.get())
}

fn count() {
    // try_with: a thread being torn down may still free and allocate.
    if ARMED.try_with(|a| a.get()).unwrap_or(false) {
        let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
    }
}

struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

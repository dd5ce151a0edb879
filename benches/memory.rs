//! Bytes per key with 1 000 000 live keys, for tollgate, the `governor`
//! pair and the Mutex<HashMap> baseline. Each system runs in its own child
//! process (this program re-executes itself) so the resident-set figures
//! do not mix; a counting global allocator gives the requested bytes.
//!
//!     cargo bench --bench memory

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tollgate::{region_size, Limiter};

mod common;
use common::*;

const KEYS: usize = 1_000_000;
const SLOTS: u32 = 1_250_000;

struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);
/// Region bytes mapped with mmap rather than allocated.
static MAPPED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(l.size(), Relaxed);
        LIVE_BLOCKS.fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(l.size(), Relaxed);
        LIVE_BLOCKS.fetch_add(1, Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE_BYTES.fetch_sub(l.size(), Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new, Relaxed);
        LIVE_BYTES.fetch_sub(l.size(), Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Builds one system holding KEYS live keys and prints
/// `system requested_bytes blocks rss_bytes`.
fn child(system: &str) {
    let accts = accounts(KEYS, "org");
    let keys = joined(&accts);
    let (b0, n0, r0) = (
        LIVE_BYTES.load(Relaxed),
        LIVE_BLOCKS.load(Relaxed),
        rss_bytes(),
    );
    // Keep the system alive until measured.
    let keep: Box<dyn std::any::Any> = match system {
        "tollgate" => {
            let lim = Limiter::new(&huge_policy(), SLOTS).unwrap();
            let mut refused = 0;
            for a in &accts {
                match lim.check(&request(a), NOW_MS) {
                    Ok(d) => assert!(d.allowed),
                    Err(tollgate::Error::TableFull) => refused += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            eprintln!("tollgate: {refused} keys refused TABLE_FULL");
            // Big regions are mapped (for huge pages), not allocated: count
            // the mapping as requested bytes too.
            MAPPED.store(lim.stats(NOW_MS).bytes, Relaxed);
            Box::new(lim)
        }
        "governor" => {
            let gov = GovernorPair::new(HUGE, HUGE);
            for k in &keys {
                assert!(gov.check(k).is_ok());
            }
            Box::new(gov)
        }
        "mutex_hashmap" => {
            let map = MutexMap::new(HUGE, HUGE);
            for k in &keys {
                assert!(map.check(k, NOW_MS).allowed);
            }
            Box::new(map)
        }
        other => panic!("unknown system {other}"),
    };
    let (b1, n1, r1) = (
        LIVE_BYTES.load(Relaxed),
        LIVE_BLOCKS.load(Relaxed),
        rss_bytes(),
    );
    let requested = b1 - b0 + MAPPED.load(Relaxed);
    println!("{system} {requested} {} {}", n1 - n0, r1.saturating_sub(r0));
    drop(keep);
}

fn main() {
    if let Ok(system) = std::env::var("TOLLGATE_MEMORY_CHILD") {
        child(&system);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    println!("{KEYS} live keys (account 24 bytes; governor/map key = account:model, 38 bytes)");
    println!(
        "{:<14} {:>14} {:>10} {:>14} {:>10} {:>10}",
        "system", "requested B", "B/key", "RSS delta B", "RSS B/key", "blocks"
    );
    for system in ["tollgate", "governor", "mutex_hashmap"] {
        let out = Command::new(&exe)
            .env("TOLLGATE_MEMORY_CHILD", system)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8(out.stdout).unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        let (req, blocks, rss): (usize, usize, usize) = (
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
        );
        println!(
            "{:<14} {:>14} {:>10.1} {:>14} {:>10.1} {:>10}",
            system,
            req,
            req as f64 / KEYS as f64,
            rss,
            rss as f64 / KEYS as f64,
            blocks
        );
    }
    println!(
        "tollgate region_size({SLOTS}) = {} B = {:.1} B/key",
        region_size(SLOTS).unwrap(),
        region_size(SLOTS).unwrap() as f64 / KEYS as f64
    );
}

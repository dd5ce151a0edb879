//! Decisions per second on one shared file region (/dev/shm): two processes
//! versus two threads of one process, on distinct keys and on one key, and
//! one thread for scale; then one and two threads of the `governor` pair and
//! the Mutex<HashMap> baseline, measured the same way. The program
//! re-executes itself for the child processes.
//!
//!     cargo bench --bench procs
//!
//! Method (made for a shared, busy machine): workers stay up and run many
//! short rounds of K decisions each. A round starts when the parent bumps a
//! counter in a small shared control page that every worker spins on, so
//! threads and processes start alike, within a fraction of a microsecond.
//! Each worker stamps CLOCK_MONOTONIC (system-wide) around its K decisions;
//! a round's time is last end - first start, so throughput counts only time
//! when the workers overlapped. Reported: the best round (what the code does
//! when it has the cores) and the median round (what this machine gave it).

use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::time::Duration;

use tollgate::Limiter;

mod common;
use common::*;

const K: u64 = 100_000;
const ROUNDS: usize = 100;
const PASSES: usize = 3;
const SLOTS: u32 = 1 << 16;
const WORKERS_MAX: usize = 4;

/// The control page: the round counter and one line per worker.
#[repr(C, align(64))]
struct Line {
    done: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
    /// Thread CPU time the worker spent on the round's decisions.
    cpu: AtomicU64,
}

#[repr(C)]
struct Control {
    round: Line,
    workers: [Line; WORKERS_MAX],
}

const STOP: u64 = u64::MAX;
const NOT_READY: u64 = u64::MAX - 1;

/// Maps the control file (created by the parent) shared.
fn control(path: &str) -> &'static Control {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.set_len(4096).unwrap();
    // SAFETY: a fresh shared mapping of a 4096-byte file; Control is atomics
    // only and fits; the mapping is never unmapped (the program is short).
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        &*(p as *const Control)
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn run(lim: &Limiter, account: &str, n: u64) {
    let req = request(account);
    for _ in 0..n {
        black_box(lim.check(black_box(&req), NOW_MS).unwrap());
    }
}

/// `n` decisions for one worker's key(s).
type Work<'a> = &'a (dyn Fn(u64) + Sync);

/// One worker: a round per bump of the counter, until STOP.
fn worker(ctl: &Control, w: usize, work: Work) {
    work(K); // warm: bind the key, fault the pages in
    let me = &ctl.workers[w];
    let mut seen = ctl.round.done.load(Acquire);
    me.done.store(seen, Release);
    loop {
        let r = loop {
            let r = ctl.round.done.load(Acquire);
            if r != seen {
                break r;
            }
            std::hint::spin_loop();
        };
        if r == STOP {
            return;
        }
        seen = r;
        let s = clock_ns(libc::CLOCK_MONOTONIC);
        let c = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
        work(K);
        let c = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - c;
        let e = clock_ns(libc::CLOCK_MONOTONIC);
        me.start.store(s, Relaxed);
        me.end.store(e, Relaxed);
        me.cpu.store(c, Relaxed);
        me.done.store(r, Release);
    }
}

/// Runs ROUNDS rounds with `n` workers already up; per round, the
/// aggregate decisions/s and the CPU time per decision.
fn rounds(ctl: &Control, n: usize) -> Vec<(f64, f64)> {
    let wait = |r: u64| {
        while (0..n).any(|w| ctl.workers[w].done.load(Acquire) != r) {
            std::thread::sleep(Duration::from_micros(50));
        }
    };
    let base = ctl.round.done.load(Acquire);
    wait(base);
    let mut out = Vec::with_capacity(ROUNDS);
    for k in 1..=ROUNDS as u64 {
        // A pause between rounds leaves the cores to the rest of the machine.
        std::thread::sleep(Duration::from_millis(1));
        ctl.round.done.store(base + k, Release);
        wait(base + k);
        let first = (0..n)
            .map(|w| ctl.workers[w].start.load(Relaxed))
            .min()
            .unwrap();
        let last = (0..n)
            .map(|w| ctl.workers[w].end.load(Relaxed))
            .max()
            .unwrap();
        let cpu: u64 = (0..n).map(|w| ctl.workers[w].cpu.load(Relaxed)).sum();
        out.push((
            (n as u64 * K) as f64 / ((last - first) as f64 / 1e9),
            cpu as f64 / (n as u64 * K) as f64,
        ));
    }
    ctl.round.done.store(STOP, Release);
    out
}

/// Resets the control page for a new set of workers: round 0, and every
/// worker "not ready" until it has warmed up and says so.
fn reset(ctl: &Control) {
    ctl.round.done.store(0, Release);
    for w in &ctl.workers {
        w.done.store(NOT_READY, Release);
    }
}

fn threads(ctl: &Control, works: &[Work]) -> Vec<(f64, f64)> {
    reset(ctl);
    std::thread::scope(|s| {
        for (w, work) in works.iter().enumerate() {
            s.spawn(move || worker(ctl, w, *work));
        }
        rounds(ctl, works.len())
    })
}

fn processes(ctl: &Control, region: &str, ctl_path: &str, accounts: &[&str]) -> Vec<(f64, f64)> {
    reset(ctl);
    let exe = std::env::current_exe().unwrap();
    let kids: Vec<_> = accounts
        .iter()
        .enumerate()
        .map(|(w, a)| {
            Command::new(&exe)
                .env(
                    "TOLLGATE_PROCS_CHILD",
                    format!("{region}|{ctl_path}|{w}|{a}"),
                )
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let out = rounds(ctl, accounts.len());
    for mut k in kids {
        let mut line = String::new();
        BufReader::new(k.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ok");
        assert!(k.wait().unwrap().success());
    }
    out
}

fn child(spec: &str) {
    let f: Vec<&str> = spec.split('|').collect();
    let lim = Limiter::open(&huge_policy(), f[0], 0, false).unwrap();
    let account = f[3];
    worker(control(f[1]), f[2].parse().unwrap(), &|n| {
        run(&lim, account, n)
    });
    println!("ok");
}

/// Throughput of the best, 90th-percentile and median rounds, and the
/// median CPU time per decision.
fn summary(v: Vec<(f64, f64)>) -> (f64, f64, f64, f64) {
    let mut t: Vec<f64> = v.iter().map(|r| r.0).collect();
    let mut c: Vec<f64> = v.iter().map(|r| r.1).collect();
    t.sort_by(|a, b| b.partial_cmp(a).unwrap());
    c.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[0], t[t.len() / 10], t[t.len() / 2], c[c.len() / 2])
}

fn main() {
    if let Ok(spec) = std::env::var("TOLLGATE_PROCS_CHILD") {
        child(&spec);
        return;
    }
    let pid = std::process::id();
    let region = format!("/dev/shm/tollgate-bench-procs-{pid}");
    let ctl_path = format!("/dev/shm/tollgate-bench-ctl-{pid}");
    let _ = std::fs::remove_file(&region);
    let lim = Limiter::open(&huge_policy(), &region, SLOTS, true).unwrap();
    let ctl = control(&ctl_path);

    let distinct = ["org-procs-a", "org-procs-b"];
    let same = ["org-procs-s", "org-procs-s"];
    let lim = &lim;
    let tg = |a: &'static str| move |n| run(lim, a, n);
    let (tg_a, tg_b, tg_s) = (tg(distinct[0]), tg(distinct[1]), tg(same[0]));

    // The same in-process comparison for the other two systems (threads only).
    let keys = joined(&[distinct[0].to_string(), distinct[1].to_string()]);
    let gov = GovernorPair::new(HUGE, HUGE);
    let gv = |k: usize| {
        let (gov, key) = (&gov, &keys[k]);
        move |n| {
            for _ in 0..n {
                let _ = black_box(gov.check(black_box(key)));
            }
        }
    };
    let (gv_a, gv_b) = (gv(0), gv(1));
    let map = MutexMap::new(HUGE, HUGE);
    let mx = |k: usize| {
        let (map, key) = (&map, &keys[k]);
        move |n| {
            for _ in 0..n {
                black_box(map.check(black_box(key), NOW_MS));
            }
        }
    };
    let (mx_a, mx_b) = (mx(0), mx(1));

    let names = [
        "tollgate 1 thread",
        "tollgate 2 threads, distinct keys",
        "tollgate 2 processes, distinct keys",
        "tollgate 2 threads, one key",
        "tollgate 2 processes, one key",
        "governor 1 thread",
        "governor 2 threads, distinct keys",
        "governor 2 threads, one key",
        "mutex_hashmap 1 thread",
        "mutex_hashmap 2 threads, distinct keys",
        "mutex_hashmap 2 threads, one key",
    ];
    // Passes interleave the configurations, so a busy spell on the machine
    // does not land on one of them only.
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); names.len()];
    for _ in 0..PASSES {
        results[0].extend(threads(ctl, &[&tg_a]));
        results[1].extend(threads(ctl, &[&tg_a, &tg_b]));
        results[2].extend(processes(ctl, &region, &ctl_path, &distinct));
        results[3].extend(threads(ctl, &[&tg_s, &tg_s]));
        results[4].extend(processes(ctl, &region, &ctl_path, &same));
        results[5].extend(threads(ctl, &[&gv_a]));
        results[6].extend(threads(ctl, &[&gv_a, &gv_b]));
        results[7].extend(threads(ctl, &[&gv_a, &gv_a]));
        results[8].extend(threads(ctl, &[&mx_a]));
        results[9].extend(threads(ctl, &[&mx_a, &mx_b]));
        results[10].extend(threads(ctl, &[&mx_a, &mx_a]));
    }
    let results = names.into_iter().zip(results);
    let _ = std::fs::remove_file(&region);
    let _ = std::fs::remove_file(&ctl_path);

    println!("file region {region} ({SLOTS} slots); {PASSES} x {ROUNDS} rounds of {K} decisions per worker");
    println!(
        "decisions/s (aggregate ns per decision) {:<4} {:>20} {:>20} {:>20} {:>9}",
        "", "best round", "90th pct round", "median round", "CPU ns"
    );
    let mut s = Vec::new();
    for (name, r) in results {
        let v = summary(r);
        s.push(v);
        let f = |x: f64| format!("{:>7.1} M/s {:>5.1} ns", x / 1e6, 1e9 / x);
        println!("  {name:<40} {} {} {} {:>7.1}", f(v.0), f(v.1), f(v.2), v.3);
    }
    for (what, a, b) in [
        ("tollgate 2 processes / 2 threads, distinct keys", 2, 1),
        ("tollgate 2 processes / 2 threads, one key", 4, 3),
        ("tollgate 2 threads / 1 thread, distinct keys", 1, 0),
        ("tollgate 2 threads / 1 thread, one key", 3, 0),
        ("tollgate 2 processes / 1 thread, distinct keys", 2, 0),
        ("governor 2 threads / 1 thread, distinct keys", 6, 5),
        ("governor 2 threads / 1 thread, one key", 7, 5),
        ("mutex_hashmap 2 threads / 1 thread, distinct keys", 9, 8),
        ("mutex_hashmap 2 threads / 1 thread, one key", 10, 8),
    ] {
        println!(
            "{what:<50} best {:.2}  90th pct {:.2}  median {:.2}",
            s[a].0 / s[b].0,
            s[a].1 / s[b].1,
            s[a].2 / s[b].2
        );
    }
}

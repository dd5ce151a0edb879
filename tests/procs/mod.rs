//! Helpers shared by the multi-process tests: the `tollgate` binary, the
//! test-only worker process (`tollgate-test-worker`, tests/worker/worker.rs),
//! scratch directories that clean up after themselves, and a fixed clock.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use tollgate::{Limiter, Policy, Request, Tier};

/// 2026-11-27T10:00:00Z: every worker is handed this (or a later) time, so
/// no window rolls over while a test runs.
pub const NOW: u64 = 1_795_773_600_000;
pub const DAY: u64 = 86_400_000;
pub const MODEL: &str = "DeepSeek-V3.1";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

pub fn tollgate(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).stdin(Stdio::null());
    c
}

/// Runs `tollgate args` to completion.
pub fn run(args: &[&str]) -> Output {
    tollgate(args).output().expect("run tollgate")
}

/// The worker process: decides requests on a shared file and reports what
/// it admitted (see tests/worker/worker.rs for its arguments).
pub fn worker(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate-test-worker"));
    c.args(args).stdin(Stdio::null());
    c
}

/// Runs a worker to completion.
pub fn run_worker(args: &[&str]) -> Output {
    worker(args).output().expect("run worker")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tollgate-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn file(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates an empty region file of `slots` slots.
pub fn create(path: &Path, slots: u32) {
    Limiter::open(&Policy::builtin(), path, slots, true).expect("create region");
}

/// Parses a worker's "admitted A denied D errors E" line.
pub fn tally(o: &Output) -> (u64, u64, u64) {
    assert!(
        o.status.success(),
        "worker failed: {:?}\n{}",
        o.status,
        stderr(o)
    );
    let s = stdout(o);
    let w: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(w.len(), 6, "unexpected worker output {s:?}");
    (
        w[1].parse().unwrap(),
        w[3].parse().unwrap(),
        w[5].parse().unwrap(),
    )
}

/// Spawns `n` workers with the same arguments and sums their
/// admissions once all have exited.
pub fn hammer_all(n: usize, args: &[&str]) -> (u64, u64) {
    let children: Vec<_> = (0..n)
        .map(|_| {
            worker(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let mut admitted = 0;
    let mut denied = 0;
    for c in children {
        let o = c.wait_with_output().unwrap();
        let (a, d, e) = tally(&o);
        assert_eq!(e, 0, "worker errors: {}", stderr(&o));
        admitted += a;
        denied += d;
    }
    (admitted, denied)
}

/// (minute count, day count) of a key at `now`, read with a peek (cost 0)
/// under explicit limits, so it works for any model and counts nothing.
pub fn counts(l: &Limiter, account: &str, model: &str, rpm: u32, rpd: u32, now: u64) -> (u32, u32) {
    let r = Request::new(account.as_bytes(), model.as_bytes(), Tier::Developer)
        .limits(rpm, rpd)
        .cost(0);
    let d = l.check(&r, now).expect("peek");
    (
        d.minute.limit - d.minute.remaining,
        d.day.limit - d.day.remaining,
    )
}

//! In-flight units held by processes SIGKILLed at random moments (200
//! kills): six workers share one key whose `max_in_flight` is 3, each
//! holding its requests for up to 20 ms. Every admitted request takes one
//! of three lock files as the upstream's witness of what runs at once (the
//! kernel drops a killed worker's locks when it dies, as an upstream sees
//! its connection close); a worker admitted with all three held exits 3,
//! so more than 3 running at once, at any moment, fails the test. Killed
//! workers' units come back by the sweeps (a respawned worker sweeps when
//! it registers, a refused one at most once a second): afterwards a new
//! process admits exactly 3, the fourth is refused, and `verify` finds
//! nothing wrong.

use crate::procs;

use std::process::{Child, Stdio};
use std::time::Duration;

use procs::*;
use tollgate::{Limiter, Policy, Request, Tier};

const WORKERS: usize = 6;
const LIMIT: u32 = 3;
const KILLS: usize = 200;

const POLICY: &str = r#"
[models]
"m" = { region = "EU" }
[tiers.developer]
"m" = { rpm = 10000000, rpd = 100000000, max_in_flight = 3 }
"#;

fn spawn(file: &str, policy: &str, locks: &str, seed: u64) -> Child {
    worker(&[
        file,
        "--policy",
        policy,
        "--account",
        "fly",
        "--model",
        "m",
        "--hold-ms",
        "20",
        "--locks",
        locks,
        "--settle-seed",
        &seed.to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn worker")
}

/// Fails the test if `c` has exited (a worker runs until killed): exit 3
/// is the witness seeing more than the limit run.
fn still_running(c: &mut Child) {
    if let Some(st) = c.try_wait().unwrap() {
        let mut err = String::new();
        if let Some(mut e) = c.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        }
        panic!("a worker exited on its own ({st}): {err}");
    }
}

fn kill(c: &mut Child) {
    still_running(c);
    c.kill().unwrap();
    c.wait().unwrap();
}

#[test]
fn killed_holders_leak_nothing_and_never_let_more_run() {
    let dir = Scratch::new("in-flight-kill");
    let file = dir.file("t.tg");
    let policy_path = dir.file("p.toml");
    std::fs::write(&policy_path, POLICY).unwrap();
    let locks = dir.file("locks");
    std::fs::create_dir(&locks).unwrap();
    let policy = Policy::parse(POLICY, "p.toml").unwrap();
    drop(Limiter::open(&policy, &file, 256, true).unwrap());
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut workers: Vec<Child> = (0..WORKERS)
        .map(|i| spawn(&file, &policy_path, &locks, i as u64 + 1))
        .collect();
    for k in 0..KILLS {
        std::thread::sleep(Duration::from_millis(next() % 30));
        let i = (next() % WORKERS as u64) as usize;
        kill(&mut workers[i]);
        workers[i] = spawn(&file, &policy_path, &locks, (k + WORKERS) as u64 + 1);
    }
    std::thread::sleep(Duration::from_millis(200));
    workers.iter_mut().for_each(kill);

    // Every worker is dead, some holding units. A new process's first
    // admission registers it, which sweeps them all back.
    let l = Limiter::open(&policy, &file, 0, false).unwrap();
    let req = Request::new(b"fly", b"m", Tier::Developer);
    let now = tollgate::now_ms();
    let mut held = Vec::new();
    for n in 1..=LIMIT {
        let d = l.check(&req, now).unwrap();
        let f = d.in_flight.unwrap();
        assert!(d.allowed, "admission {n} of {LIMIT} refused: units leaked");
        assert_eq!(f.in_use, n, "in use after admission {n}");
        held.push(f.admission.unwrap());
    }
    let d = l.check(&req, now).unwrap();
    assert!(!d.allowed, "a fourth admitted");
    assert_eq!(d.limited_by, tollgate::LimitedBy::InFlight);
    let s = l.stats(now).in_flight.unwrap();
    assert_eq!(s.in_use, LIMIT as u64);
    assert!(s.reclaimed > 0, "no kill landed while holding: {s:?}");
    let report = l.verify(now);
    assert!(report.ok(), "{:?}", report.problems);
    for a in held {
        l.release(a, tollgate::Ending::Complete).unwrap();
    }
    assert_eq!(l.stats(now).in_flight.unwrap().in_use, 0);
    eprintln!(
        "{KILLS} kills: {} requests completed, {} reclaimed from killed workers, {} refusals",
        s.completed, s.reclaimed, s.refused
    );
}

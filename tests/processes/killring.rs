//! Workers that are refused on nearly every decision (so they write the
//! refusal ring all the time) are SIGKILLed at random moments. A killed
//! writer may lose its entry; it must never leave an entry that is not a
//! real refusal, nor damage the table.

use crate::procs;

use std::process::Stdio;
use std::time::Duration;

use procs::*;
use tollgate::{LimitedBy, Limiter, Policy};

const KEYS: usize = 50;
const KILLS: usize = 60;

#[test]
fn killed_ring_writers_leave_only_whole_entries() {
    let dir = Scratch::new("killring");
    let file = dir.file("t.tg");
    create(dir.path("t.tg").as_path(), 256);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    println!("kill ring seed {seed}");
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let keys = KEYS.to_string();
    for k in 0..KILLS {
        // Every key allows 1 a day: after its first request, each decision
        // is a refusal of a key other than the last one, so it is recorded.
        // Each worker gets its own second, so the once-a-second rule never
        // hides a refusal.
        let now = (NOW + k as u64 * 1_000).to_string();
        let mut child = worker(&[
            &file,
            "--account",
            "ring",
            "--accounts",
            &keys,
            "--count",
            "1000",
            "--forever",
            "--rpm",
            "1",
            "--rpd",
            "1",
            "--now-ms",
            &now,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker");
        std::thread::sleep(Duration::from_micros(2_000 + next() % 20_000));
        child.kill().expect("SIGKILL");
        assert!(!child.wait().unwrap().success(), "worker exited by itself");
    }
    let l = Limiter::open(&Policy::builtin(), &file, 0, false).unwrap();
    let report = l.verify(NOW + KILLS as u64 * 1_000);
    assert!(report.ok(), "{:?} (seed {seed})", report.problems);
    let ring = l.refusals();
    assert!(!ring.is_empty(), "no refusal recorded (seed {seed})");
    for r in &ring {
        let account = String::from_utf8(r.account.clone()).expect("an account written whole");
        let n: usize = account
            .strip_prefix("ring-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a worker's account: {account:?} (seed {seed})"));
        assert!(n < KEYS, "{account}");
        assert_eq!(r.model.as_deref(), Some(MODEL));
        assert_eq!(r.limited_by, LimitedBy::Day, "{r:?}");
        assert_eq!((r.minute_limit, r.day_limit), (1, 1), "{r:?}");
        assert_eq!(r.day_count, 1, "{r:?}");
        assert!(r.minute_count <= 1, "{r:?}");
        assert!(
            r.at_ms >= NOW && r.at_ms < NOW + KILLS as u64 * 1_000 && r.at_ms % 1_000 == 0,
            "{r:?}"
        );
    }
    // Oldest first, and the table still decides.
    assert!(ring.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    let (_, day) = counts(&l, "ring-0", MODEL, 1, 1, NOW);
    assert_eq!(day, 1);
}

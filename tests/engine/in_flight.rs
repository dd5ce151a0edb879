//! In-flight limits through the Rust API (issue 18, branch `in-flight`): a
//! unit taken at admission, all or nothing with the windows, released once,
//! and given back when its holder dies.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use tollgate::{Error, LimitedBy, Limiter, Policy, Request, Tier};

use super::T0;

fn policy() -> Policy {
    Policy::parse(
        "[models]\nm = { region = \"EU\" }\n[tiers.developer]\nm = { rpm = 100, rpd = 1000, max_in_flight = 2 }\n",
        "p",
    )
    .unwrap()
}

fn req(account: &str) -> Request<'_> {
    Request::new(account.as_bytes(), b"m", Tier::Developer)
}

#[test]
fn the_third_at_once_is_refused_and_a_release_lets_the_next_in() {
    let l = Limiter::new(&policy(), 64).unwrap();
    let a = l.check(&req("k"), T0).unwrap();
    let b = l.check(&req("k"), T0).unwrap();
    assert!(a.allowed && b.allowed);
    assert_eq!(b.in_flight.unwrap().in_use, 2);
    let c = l.check(&req("k"), T0).unwrap();
    assert!(!c.allowed);
    assert_eq!(c.limited_by, LimitedBy::InFlight);
    assert_eq!(c.retry_after, 0, "no window reset to name");
    let f = c.in_flight.unwrap();
    assert_eq!((f.limit, f.in_use, f.admission), (2, 2, None));
    assert_eq!(
        c.minute.remaining, 98,
        "the refused request was not counted"
    );
    let first = a.in_flight.unwrap().admission.unwrap();
    assert_eq!(l.release(first, tollgate::Ending::Complete).unwrap(), 1);
    assert!(
        matches!(
            l.release(first, tollgate::Ending::Cut),
            Err(Error::Invalid(_))
        ),
        "once"
    );
    let d = l.check(&req("k"), T0).unwrap();
    assert!(d.allowed);
    assert_eq!(d.in_flight.unwrap().in_use, 2);
    // A peek shows the count and takes nothing.
    let p = l.check(&req("k").cost(0), T0).unwrap();
    assert_eq!(p.in_flight.unwrap().in_use, 2);
    // Another key has its own.
    assert!(l.check(&req("other"), T0).unwrap().allowed);
}

#[test]
fn a_window_refusal_takes_no_unit() {
    let l = Limiter::new(&policy(), 64).unwrap();
    let r = req("w").limits(1, 10);
    let a = l.check(&r, T0).unwrap();
    assert!(a.allowed);
    let b = l.check(&r, T0).unwrap();
    assert_eq!(b.limited_by, LimitedBy::Minute);
    assert_eq!(
        b.in_flight.unwrap().in_use,
        1,
        "the refused one gave its unit back"
    );
    assert_eq!(b.in_flight.unwrap().admission, None);
}

#[test]
fn racing_threads_never_run_more_than_the_limit() {
    let l = Limiter::new(&policy(), 64).unwrap();
    let running = AtomicUsize::new(0);
    let over = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for i in 0..5_000u64 {
                    let d = l
                        .check(&req("race").limits(100_000, 1_000_000), T0 + i % 50)
                        .unwrap();
                    if let Some(a) = d.in_flight.and_then(|f| f.admission) {
                        if running.fetch_add(1, SeqCst) >= 2 {
                            over.store(true, SeqCst);
                        }
                        running.fetch_sub(1, SeqCst);
                        l.release(a, tollgate::Ending::Complete).unwrap();
                    }
                }
            });
        }
    });
    assert!(!over.load(SeqCst));
    let p = l.check(&req("race").cost(0), T0).unwrap();
    assert_eq!(p.in_flight.unwrap().in_use, 0);
}

#[test]
fn a_holder_that_dies_gives_its_units_back() {
    let dir = std::env::temp_dir().join(format!("tollgate-inflight-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("t.tg");
    let _ = std::fs::remove_file(&path);
    drop(Limiter::open(&policy(), &path, 64, true).unwrap());
    // A child process takes both units and dies holding them.
    // SAFETY: the child opens the table, decides, and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = Limiter::open(&policy(), &path, 0, false)
            .is_ok_and(|l| (0..2).all(|_| l.check(&req("dies"), T0).is_ok_and(|d| d.allowed)));
        // SAFETY: ends the child at once, as a kill would.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let l = Limiter::open(&policy(), &path, 0, false).unwrap();
    // The first request finds the key full of a dead process's units: it
    // sweeps them back and is admitted.
    let d = l.check(&req("dies"), T0).unwrap();
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.in_flight.unwrap().in_use, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_answers_name_the_in_flight_limit_and_no_retry_time() {
    let l = Limiter::new(&policy(), 64).unwrap();
    let a = l.check(&req("ans"), T0).unwrap();
    let names: Vec<_> = a.all_header_pairs().collect();
    assert!(
        names.contains(&("x-ratelimit-limit-in-flight", 2)),
        "{names:?}"
    );
    assert!(names.contains(&("x-ratelimit-in-flight", 1)), "{names:?}");
    l.check(&req("ans"), T0).unwrap();
    let c = l.check(&req("ans"), T0).unwrap();
    let pairs: Vec<_> = c.all_header_pairs().collect();
    assert!(pairs.iter().all(|(n, _)| *n != "retry-after"), "{pairs:?}");
    let mut body = String::new();
    c.write_error_body(b"m", &mut body).unwrap();
    assert!(
        body.contains("\"code\":\"in_flight_limit_exceeded\""),
        "{body}"
    );
    assert!(body.contains("limit 2, in flight 2"), "{body}");
}

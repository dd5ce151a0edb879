//! Wrong clocks: a host or caller whose `now` was wrong and is corrected
//! must not lock a key out until the wrong time comes round, and small
//! steps back (NTP) must give no quota back. And the day rolls over at
//! 00:00:00.000 UTC exactly.

use tollgate::{LimitedBy, Limiter, Policy, Request, Tier};

/// 2026-12-01T12:00:00Z
const NOW: u64 = 1_796_126_400_000;
const SECOND: u64 = 1_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;
const YEARS_5: u64 = 5 * 365 * DAY;

fn policy(extra: &str) -> Policy {
    Policy::parse(
        &format!("{extra}[models]\n\"m\" = {{ region = \"EU\" }}\n[tiers.developer]\n\"m\" = {{ rpm = 30, rpd = 1000 }}\n"),
        "clock",
    )
    .unwrap()
}

fn req(account: &str) -> Request<'_> {
    Request::new(account.as_bytes(), b"m", Tier::Developer)
}

/// Spends the whole minute at `t`.
fn fill_minute(l: &Limiter, account: &str, t: u64) {
    for _ in 0..30 {
        assert!(l.check(&req(account), t).unwrap().allowed);
    }
    assert!(!l.check(&req(account), t).unwrap().allowed);
}

#[test]
fn one_request_far_in_the_future_does_not_lock_the_key_out() {
    for ahead in [HOUR, YEARS_5] {
        let l = Limiter::new(&policy(""), 64).unwrap();
        // One request from a clock `ahead` too fast, then the real time.
        assert!(l.check(&req("a"), NOW + ahead).unwrap().allowed);
        let d = l.check(&req("a"), NOW).unwrap();
        assert!(
            d.allowed,
            "ahead {ahead}: refused, retry after {}",
            d.retry_after
        );
        // The faulty count is taken as this window's: 2 of 30, 2 of 1000.
        assert_eq!(d.minute.remaining, 28);
        assert_eq!(d.day.remaining, 998);
        assert_eq!(d.minute.reset, (NOW / 60_000 + 1) * 60);
        assert_eq!(l.stats(NOW).clock_faults, 1, "counted once");
        // From then on the key lives in real time, and the limit holds.
        for _ in 0..28 {
            assert!(l.check(&req("a"), NOW).unwrap().allowed);
        }
        assert!(!l.check(&req("a"), NOW).unwrap().allowed);
        assert_eq!(l.stats(NOW).clock_faults, 1);
    }
}

#[test]
fn a_full_minute_far_ahead_gives_back_at_most_one_window() {
    let l = Limiter::new(&policy(""), 64).unwrap();
    fill_minute(&l, "a", NOW);
    // The clock jumps an hour ahead; the key gets a fresh minute there.
    fill_minute(&l, "a", NOW + HOUR);
    // Back to real time: those 30 are taken as this minute's, so the key
    // stays refused in this minute (nothing given back beyond the bound)...
    let d = l.check(&req("a"), NOW).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.limited_by, LimitedBy::Minute);
    assert!(d.retry_after <= 60, "retry after {}", d.retry_after);
    // ...and the next real minute is open again, not an hour later.
    assert!(l.check(&req("a"), NOW + 60 * SECOND).unwrap().allowed);
    // The day counts every admitted request: 60 + 1.
    let d = l.check(&req("a").cost(0), NOW + 60 * SECOND).unwrap();
    assert_eq!(d.day.remaining, 1000 - 61);
    assert_eq!(l.stats(NOW).clock_faults, 1, "a refusal repairs it once");
}

#[test]
fn small_steps_back_give_no_quota_back() {
    let l = Limiter::new(&policy(""), 64).unwrap();
    // 12:00:59.5, then the clock steps back one second into the same
    // minute, and a step back across the minute boundary.
    let t = NOW + 59_500;
    fill_minute(&l, "a", t);
    assert!(!l.check(&req("a"), t - SECOND).unwrap().allowed);
    fill_minute(&l, "b", NOW + 60 * SECOND);
    let d = l.check(&req("b"), NOW + 59 * SECOND).unwrap();
    assert!(!d.allowed, "one second back gave the minute back");
    assert_eq!(d.minute.reset, (NOW + 120 * SECOND) / 1000);
    assert_eq!(l.stats(NOW).clock_faults, 0);
}

#[test]
fn steps_forward_and_back() {
    for step in [SECOND, HOUR, YEARS_5] {
        let l = Limiter::new(&policy(""), 64).unwrap();
        fill_minute(&l, "a", NOW);
        // Forward: a later minute (or day) is a fresh window.
        assert!(
            l.check(&req("a"), NOW + step.max(60 * SECOND))
                .unwrap()
                .allowed
        );
        // And back to now.
        let d = l.check(&req("a"), NOW).unwrap();
        if step <= 60 * SECOND {
            // Within the bound: the later window stands, 1 of 30 used.
            assert!(d.allowed);
            assert_eq!(d.minute.remaining, 28);
            assert_eq!(l.stats(NOW).clock_faults, 0);
        } else {
            // Beyond it: re-dated to now with the count it had (1).
            assert!(d.allowed);
            assert_eq!(d.minute.remaining, 28);
            assert_eq!(d.minute.reset, (NOW / 60_000 + 1) * 60);
            assert_eq!(l.stats(NOW).clock_faults, 1);
        }
    }
}

#[test]
fn the_bound_is_set_by_the_policy_and_the_api() {
    // An hour of tolerance: an hour-ahead window stands.
    let mut l = Limiter::new(&policy("[clock]\nmax_skew_seconds = 7200\n"), 64).unwrap();
    assert_eq!(l.policy().max_skew_seconds(), 7200);
    fill_minute(&l, "a", NOW + HOUR);
    assert!(!l.check(&req("a"), NOW).unwrap().allowed);
    assert_eq!(l.stats(NOW).clock_faults, 0);
    // Tightened through the API: now it is a fault.
    l.set_max_skew(0).unwrap();
    assert!(!l.check(&req("a"), NOW).unwrap().allowed);
    assert_eq!(l.stats(NOW).clock_faults, 1);
    assert!(l.set_max_skew(86_401).is_err());
    // Bad values in the policy name the field.
    for bad in ["-1", "86401", "\"x\""] {
        let e = Policy::parse(
            &format!(
                "[clock]\nmax_skew_seconds = {bad}\n[models]\n\"m\" = {{ region = \"EU\" }}\n"
            ),
            "p.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("p.toml:2"), "{e}");
    }
    assert_eq!(policy("").max_skew_seconds(), 60);
}

#[test]
fn the_day_rolls_over_at_midnight_utc_to_the_millisecond() {
    let midnight = (NOW / DAY + 1) * DAY; // 2026-12-02T00:00:00.000Z
    let l = Limiter::new(&policy(""), 64).unwrap();
    let last = midnight - 1; // 23:59:59.999
    for _ in 0..30 {
        assert!(l.check(&req("a"), last).unwrap().allowed);
    }
    let d = l.check(&req("a"), last).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, 1);
    assert_eq!(d.minute.reset, midnight / 1000);
    assert_eq!(d.day.reset, midnight / 1000);
    let d = l.check(&req("a"), midnight).unwrap();
    assert!(d.allowed);
    assert_eq!((d.minute.remaining, d.day.remaining), (29, 999));
    assert_eq!(d.day.reset, midnight / 1000 + 86_400);
    // The day limit: exhausted at 23:59, open at 00:00:00.000.
    let p = Policy::parse(
        "[models]\n\"m\" = { region = \"EU\" }\n[tiers.developer]\n\"m\" = { rpm = 2, rpd = 2 }\n",
        "d",
    )
    .unwrap();
    let l = Limiter::new(&p, 64).unwrap();
    assert!(l.check(&req("b"), last - HOUR).unwrap().allowed);
    assert!(l.check(&req("b"), last).unwrap().allowed);
    let d = l.check(&req("b"), last).unwrap();
    assert_eq!(d.limited_by, LimitedBy::Day);
    assert_eq!(d.retry_after, 1);
    assert!(l.check(&req("b"), midnight).unwrap().allowed);
    assert_eq!(l.stats(midnight).clock_faults, 0);
}

#[test]
fn refusals_are_recorded_for_operators() {
    let l = Limiter::new(&policy(""), 64).unwrap();
    fill_minute(&l, "alice", NOW);
    for _ in 0..100 {
        l.check(&req("alice"), NOW + 500).unwrap();
    }
    let r = l.refusals();
    assert_eq!(r.len(), 1, "one second, one key: one entry");
    assert_eq!(r[0].account, b"alice");
    assert_eq!(r[0].model.as_deref(), Some("m"));
    assert_eq!(r[0].limited_by, LimitedBy::Minute);
    assert_eq!((r[0].minute_count, r[0].minute_limit), (30, 30));
    assert_eq!((r[0].day_count, r[0].day_limit), (30, 1000));
    assert_eq!(r[0].at_ms, NOW);
    l.check(&req("alice"), NOW + 1_000).unwrap();
    assert_eq!(l.refusals().len(), 2);
    // Allowed requests record nothing.
    assert!(l.check(&req("bob"), NOW).unwrap().allowed);
    assert_eq!(l.refusals().len(), 2);
}

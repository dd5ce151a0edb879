//! The lease layer over the memory store: hosts sharing one quota, the
//! down policies, pushes, recoveries, the breaker and the refusal cache,
//! each through a real limiter and its lease thread, without a network.
//! Fast here, and run by miri (sized down), so the lease slot operations
//! and the layer's threads are checked there too. The same properties
//! against real redis-server processes are in tests/leases.rs.

use std::sync::Arc;
use std::time::Duration;

use super::{DownPolicy, LeaseMode, LeaseOptions, Level};
use crate::store::{Fault, MemoryStore, QuotaStore, StoreOptions, Tag};
use crate::window::Instant;
use crate::{Error, Limiter, LimiterOptions, Policy, Request, Tier};

const MODEL: &str = "DeepSeek-V3.1";

fn policy() -> Policy {
    Policy::parse(
        "[models]\n\"DeepSeek-V3.1\" = { region = \"EU\" }\n[tiers.developer]\n\"DeepSeek-V3.1\" = { rpm = 30, rpd = 15000 }\n",
        "t",
    )
    .unwrap()
}

/// A breaker that probes again within milliseconds, so recoveries are
/// seen at once.
fn store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(StoreOptions {
        cooldown: Duration::from_millis(5),
        max_cooldown: Duration::from_millis(20),
        ..StoreOptions::default()
    }))
}

fn opts(hosts: u32, down: DownPolicy) -> LeaseOptions {
    LeaseOptions {
        hosts,
        down,
        refill_interval: Duration::from_millis(100),
        store: StoreOptions {
            cooldown: Duration::from_millis(5),
            max_cooldown: Duration::from_millis(20),
            ..StoreOptions::default()
        },
        ..LeaseOptions::default()
    }
}

/// A table of its own (a host) joined to `store`.
fn host(store: &Arc<MemoryStore>, opts: LeaseOptions) -> Limiter {
    let mut l = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 64)
        .unwrap();
    let dyn_store: Arc<dyn QuotaStore> = store.clone();
    l.connect_store(dyn_store, opts).unwrap();
    l
}

fn req(account: &str) -> Request<'_> {
    Request::new(account.as_bytes(), MODEL.as_bytes(), Tier::Developer)
}

fn tag(account: &str) -> Tag {
    Tag::for_key(account.as_bytes(), MODEL)
}

/// Now, at least 15 s before the minute ends (waiting for the next one
/// if need be): the lease thread dates units by the system clock, and a
/// test's minute must not end under it.
fn now() -> u64 {
    let t = crate::now_ms();
    let into = t % 60_000;
    if into <= 45_000 {
        return t;
    }
    std::thread::sleep(Duration::from_millis(60_000 - into + 10));
    crate::now_ms()
}

fn at(t: u64) -> Instant {
    Instant::from_ms(t).unwrap()
}

fn admitted(l: &Limiter, account: &str, n: u32, t: u64) -> u32 {
    (0..n)
        .filter(|_| l.check(&req(account), t).unwrap().allowed)
        .count() as u32
}

/// Waits (up to 20 s) until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(20), "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn events(l: &Limiter) -> Vec<(Level, String)> {
    let mut seq = 0;
    let mut out = Vec::new();
    while let Some(e) = l.lease_event(seq) {
        seq = e.seq;
        out.push((e.level, e.text));
    }
    out
}

#[test]
fn hosts_sharing_a_quota_admit_exactly_the_limit() {
    let s = store();
    let (a, b) = (
        host(&s, opts(2, DownPolicy::Local)),
        host(&s, opts(2, DownPolicy::Local)),
    );
    let t = now();
    let mut n = 0;
    for i in 0..80 {
        let l = if i % 3 == 0 { &a } else { &b };
        n += l.check(&req("acct"), t).unwrap().allowed as u32;
    }
    assert_eq!(n, 30);
    assert_eq!(s.peek(&tag("acct"), at(t)).unwrap().minute_count, 30);
    // Most decisions spent units held, without a call.
    let st = b.lease_stats().unwrap();
    assert!(
        st.from_leases > 0 && st.store.calls < st.decisions,
        "{st:?}"
    );
}

#[test]
fn units_not_spent_go_back_when_a_host_leaves() {
    let s = store();
    let mut a = host(&s, opts(1, DownPolicy::Local));
    let t = now();
    assert_eq!(admitted(&a, "k", 3, t), 3);
    // Leased beyond its cost: Redis counts more than was spent...
    assert!(s.peek(&tag("k"), at(t)).unwrap().minute_count > 3);
    a.disconnect();
    // ... until the host leaves and gives the rest back.
    assert_eq!(s.peek(&tag("k"), at(t)).unwrap().minute_count, 3);
    assert!(matches!(a.check(&req("k"), t), Err(Error::NotJoined)));
}

#[test]
fn a_store_down_gives_each_host_its_share_and_the_spends_are_pushed() {
    let s = store();
    s.fail(Fault::Down);
    // Joining a store that is down is not an error.
    let a = host(&s, opts(2, DownPolicy::Local));
    let t = now();
    assert_eq!(admitted(&a, "k", 40, t), 15);
    let st = a.lease_stats().unwrap();
    assert!(st.redis_down && st.degraded_admitted == 15, "{st:?}");
    s.heal();
    eventually("the spends pushed", || {
        s.peek(&tag("k"), at(t)).unwrap().minute_count == 15
    });
    eventually("Redis answering again", || {
        !a.lease_stats().unwrap().redis_down
    });
    let said = events(&a);
    assert!(
        said.iter()
            .any(|(l, e)| *l == Level::Warn && e.contains("unavailable")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|(l, e)| *l == Level::Info && e.contains("answers again")),
        "{said:?}"
    );
    // Back on the store's count: 15 left for the minute.
    assert_eq!(admitted(&a, "k", 40, t), 15);
}

#[test]
fn a_refusing_store_is_unavailable_and_says_why() {
    let s = store();
    s.fail(Fault::Refuse("BUSY Redis is busy running a script".into()));
    let a = host(&s, opts(1, DownPolicy::Open));
    let t = now();
    // The open policy: every request admitted, counted for the push.
    assert_eq!(admitted(&a, "k", 10, t), 10);
    eventually("the breaker open", || {
        a.lease_stats().unwrap().store.trips >= 1
    });
    let said = events(&a);
    assert!(said.iter().any(|(_, e)| e.contains("BUSY")), "{said:?}");
    s.heal();
    eventually("the spends pushed", || {
        s.peek(&tag("k"), at(t)).unwrap().minute_count == 10
    });
}

#[test]
fn the_closed_policy_refuses_and_charges_nothing() {
    let s = store();
    s.fail(Fault::Down);
    let a = host(&s, opts(1, DownPolicy::Closed));
    let t = now();
    let d = a.check(&req("k"), t).unwrap();
    assert!(!d.allowed && d.minute.remaining == 0, "{d:?}");
    s.heal();
    eventually("Redis answering again", || {
        a.check(&req("k"), t).unwrap().allowed
    });
}

#[test]
fn a_grant_whose_reply_was_lost_is_recovered_and_given_back() {
    let s = store();
    let a = host(
        &s,
        LeaseOptions {
            mode: LeaseMode::Exact,
            ..opts(1, DownPolicy::Closed)
        },
    );
    let t = now();
    // The store charged the grant; its reply never came.
    s.fail(Fault::Timeout { applied: true });
    assert!(!a.check(&req("k"), t).unwrap().allowed);
    assert_eq!(s.peek(&tag("k"), at(t)).unwrap().minute_count, 1);
    s.heal();
    // Asked again under its id, the grant answers what it charged, and
    // that goes back: nothing is lost to a late reply.
    eventually("the late grant given back", || {
        s.peek(&tag("k"), at(t)).unwrap().minute_count == 0
    });
    assert!(s.stats().replays >= 1);
}

#[test]
fn a_key_at_its_limit_asks_the_store_at_most_once_a_second() {
    let s = store();
    let t = now();
    s.set_counts(&tag("full"), at(t), 30, 30).unwrap();
    let a = host(&s, opts(1, DownPolicy::Local));
    let before = s.stats().calls;
    let started = std::time::Instant::now();
    let n = if cfg!(miri) { 20 } else { 500 };
    assert_eq!(admitted(&a, "full", n, t), 0);
    let calls = s.stats().calls - before;
    let seconds = started.elapsed().as_secs() + 1;
    // The lease thread's own calls (give-backs, looks) come on top: none
    // for this key, which holds nothing.
    assert!(calls <= seconds + 1, "{calls} calls in {seconds} s");
    let st = a.lease_stats().unwrap();
    assert!(st.refused_locally >= n as u64 - seconds - 1, "{st:?}");
}

#[test]
fn units_granted_before_a_store_lost_its_counts_are_dropped_not_given_back() {
    let s = store();
    let mut a = host(&s, opts(1, DownPolicy::Local));
    let t = now();
    assert_eq!(admitted(&a, "k", 2, t), 2);
    // The store goes away and comes back empty (a restart without
    // persistence): the units this host holds were granted by a store
    // that no longer counts them.
    s.fail(Fault::Down);
    let _ = a.check(&req("other"), t);
    let held = a.lease_stats().unwrap();
    s.forget();
    s.heal();
    // Another host's grants since.
    s.set_counts(&tag("k"), at(t), 5, 5).unwrap();
    a.disconnect();
    // Nothing was given back into counts made since.
    assert_eq!(s.peek(&tag("k"), at(t)).unwrap().minute_count, 5);
    assert!(held.granted_units > 2, "{held:?}");
}

#[test]
fn an_evicting_store_is_told_at_join() {
    let s = store();
    s.set_eviction("allkeys-lru", 1 << 30);
    let a = host(&s, opts(1, DownPolicy::Local));
    // The stats flag is set a moment before the event is said (miri's
    // threads show it): wait for what the operator is told.
    eventually("the eviction risk told", || {
        events(&a)
            .iter()
            .any(|(l, e)| *l == Level::Warn && e.contains("allkeys-lru"))
    });
    assert!(a.lease_stats().unwrap().eviction_risk);
}

#[test]
fn hosts_counted_by_the_store_size_the_down_share() {
    let s = store();
    // Hosts left to the store: three beat, a stray entry far ahead does
    // not count.
    s.add_host("stray", 3_600_000);
    let a = host(&s, opts(0, DownPolicy::Local));
    let _b = host(&s, opts(0, DownPolicy::Local));
    let _c = host(&s, opts(0, DownPolicy::Local));
    eventually("three hosts counted", || {
        a.lease_stats().unwrap().hosts == 3
    });
    s.fail(Fault::Down);
    let t = now();
    assert_eq!(admitted(&a, "k", 40, t), 10);
}

/// Issue 16: the operator views of a leased table agree with what was
/// decided. A refusal by the `Local` share records the host's own count
/// against its share (it recorded 7 515 of 15 000 for 15 requests), and
/// `inspect`'s one key reads as `top`'s list does.
#[test]
fn operator_views_of_a_leased_table_agree() {
    let s = store();
    let t = now();
    let a = host(&s, opts(2, DownPolicy::Local));
    // Far from the limit while the store answers: 10 admitted.
    assert_eq!(admitted(&a, "ops", 10, t), 10);
    let listed = a.usage(t).unwrap();
    let one = a.key_usage(b"ops", MODEL.as_bytes(), t).unwrap().unwrap();
    let row = listed
        .iter()
        .find(|u| u.account.as_deref() == Some(&b"ops"[..]))
        .unwrap();
    assert_eq!((one.minute, one.day), (row.minute, row.day));
    assert_eq!((one.minute, one.day), (10, 10));
    // Down: a fresh key's share is 15 a minute; the 16th is refused.
    s.fail(Fault::Down);
    assert_eq!(admitted(&a, "down", 16, t), 15);
    let r = a
        .refusals()
        .into_iter()
        .find(|r| r.account == b"down")
        .expect("the refusal is recorded");
    assert_eq!((r.minute_count, r.minute_limit), (15, 15), "{r:?}");
    assert_eq!((r.day_count, r.day_limit), (15, 7_500), "{r:?}");
}

// Tokens (`lease::tokens`): each reservation granted by the store, the
// requests from the lease, both or neither; settling corrects the store
// through the lease thread.

const TPM: u32 = 10_000;

fn token_policy() -> Policy {
    Policy::parse(
        "[models]\n\"DeepSeek-V3.1\" = { region = \"EU\" }\n[tiers.developer]\n\"DeepSeek-V3.1\" = { rpm = 30, rpd = 15000, tpm = 10000, tpd = 100000 }\n",
        "t",
    )
    .unwrap()
}

fn token_host(store: &Arc<MemoryStore>, opts: LeaseOptions) -> Limiter {
    let mut l = LimiterOptions::new()
        .leases(true)
        .build(&token_policy(), 64)
        .unwrap();
    let dyn_store: Arc<dyn QuotaStore> = store.clone();
    l.connect_store(dyn_store, opts).unwrap();
    l
}

fn token_tag(account: &str) -> Tag {
    crate::store::Tag::for_unit(account.as_bytes(), MODEL, crate::store::Unit::Tokens)
}

fn tokens_counted(s: &MemoryStore, account: &str, t: u64) -> u64 {
    s.peek(&token_tag(account), at(t)).unwrap().minute_count
}

#[test]
// Three hosts' lease threads: long under miri, which the two-host tests
// above and the token slot tests already take through the same code.
#[cfg_attr(miri, ignore)]
fn hosts_sharing_a_token_quota_reserve_exactly_the_limit() {
    let s = store();
    let hosts: Vec<Limiter> = (0..3)
        .map(|_| token_host(&s, opts(3, DownPolicy::Local)))
        .collect();
    let t = now();
    let mut admitted = 0;
    let mut refused = None;
    for i in 0..20 {
        let d = hosts[i % 3].check(&req("k").tokens(700), t).unwrap();
        if d.allowed {
            admitted += 1;
            assert_eq!(d.tokens.unwrap().reserved, 700);
        } else {
            refused = Some(d);
        }
    }
    // 14 reservations of 700 fit in 10 000; the requests (30) never refuse.
    assert_eq!(admitted, TPM / 700);
    assert_eq!(tokens_counted(&s, "k", t), (TPM / 700 * 700) as u64);
    let d = refused.unwrap();
    assert_eq!(d.limited_by, crate::LimitedBy::TokensMinute);
    assert!(d.retry_after > 0);
    let w = d.tokens.unwrap();
    assert_eq!(
        (w.minute.remaining, w.reserved, w.ticket),
        (TPM % 700, 0, None)
    );
    // Refused on tokens, the requests were only looked at: once the
    // hosts give their leases back, the store counts the 14 admitted.
    for mut h in hosts {
        h.disconnect();
    }
    assert_eq!(s.peek(&tag("k"), at(t)).unwrap().minute_count, 14);
}

#[test]
fn settling_on_a_leased_table_corrects_the_store() {
    let s = store();
    let l = token_host(&s, opts(1, DownPolicy::Local));
    let t = now();
    let reserve = |n| {
        let d = l.check(&req("k").tokens(n), t).unwrap();
        assert!(d.allowed);
        d.tokens.unwrap().ticket.unwrap()
    };
    let (a, b, c) = (reserve(1_000), reserve(1_000), reserve(1_000));
    assert_eq!(tokens_counted(&s, "k", t), 3_000);
    assert_eq!(l.settle(a, crate::Ending::Usage(300), t).unwrap(), 300);
    assert_eq!(l.settle(b, crate::Ending::Usage(1_500), t).unwrap(), 1_500);
    // A failed response without usage gives its reservation back.
    assert_eq!(l.settle(c, crate::Ending::Failed, t).unwrap(), 0);
    eventually("the store counts what was used", || {
        tokens_counted(&s, "k", t) == 1_800
    });
    let st = l.lease_stats().unwrap();
    assert_eq!(
        (st.token_grants, st.token_refusals, st.token_settles),
        (3, 0, 3)
    );
    // The next decision's headers show it.
    let d = l.check(&req("k").tokens(100), t).unwrap();
    assert_eq!(d.tokens.unwrap().minute.remaining, TPM - 1_800 - 100);
}

#[test]
fn a_refusal_by_the_requests_gives_the_tokens_back() {
    let s = store();
    let l = token_host(&s, opts(1, DownPolicy::Local));
    let t = now();
    let r = req("k").tokens(100).limits(2, 100);
    assert!(l.check(&r, t).unwrap().allowed);
    assert!(l.check(&r, t).unwrap().allowed);
    let d = l.check(&r, t).unwrap();
    assert_eq!(d.limited_by, crate::LimitedBy::Minute);
    let w = d.tokens.unwrap();
    assert_eq!(
        (w.reserved, w.ticket, w.minute.remaining),
        (0, None, TPM - 200)
    );
    eventually("the refused reservation given back", || {
        tokens_counted(&s, "k", t) == 200
    });
}

#[test]
// Three hosts' lease threads: long under miri, which the two-host tests
// above and the token slot tests already take through the same code.
#[cfg_attr(miri, ignore)]
fn tokens_follow_the_down_policy_and_are_pushed() {
    let s = store();
    s.fail(Fault::Down);
    let local = token_host(&s, opts(2, DownPolicy::Local));
    let t = now();
    // The host's share: 5 000 of 10 000 tokens.
    let tickets: Vec<_> = (0..8)
        .filter_map(|_| {
            let d = local.check(&req("k").tokens(1_000), t).unwrap();
            d.tokens.unwrap().ticket
        })
        .collect();
    assert_eq!(tickets.len(), 5);
    assert!(tickets.iter().all(|k| k.local));
    // Settled while down: the share's count and the backlog both shrink.
    local
        .settle(tickets[0], crate::Ending::Usage(200), t)
        .unwrap();
    assert!(local.check(&req("k").tokens(800), t).unwrap().allowed);
    assert!(!local.check(&req("k").tokens(1), t).unwrap().allowed);

    let closed = token_host(&s, opts(1, DownPolicy::Closed));
    let d = closed.check(&req("c").tokens(10), t).unwrap();
    assert_eq!(d.limited_by, crate::LimitedBy::TokensMinute);
    let open = token_host(&s, opts(1, DownPolicy::Open));
    assert!(open.check(&req("o").tokens(10_000), t).unwrap().allowed);

    s.heal();
    eventually("what was admitted pushed, as settled", || {
        tokens_counted(&s, "k", t) == 5_000 && tokens_counted(&s, "o", t) == 10_000
    });
    assert_eq!(tokens_counted(&s, "c", t), 0);
}

#[test]
fn a_token_grant_whose_reply_was_lost_is_given_back() {
    let s = store();
    let l = token_host(&s, opts(1, DownPolicy::Closed));
    let t = now();
    s.fail(Fault::Timeout { applied: true });
    let d = l.check(&req("k").tokens(500), t).unwrap();
    assert!(!d.allowed, "closed: refused for want of the store");
    s.heal();
    eventually("the lost grant recovered and given back", || {
        tokens_counted(&s, "k", t) == 0 && l.lease_stats().unwrap().pending == 0
    });
    assert!(l.check(&req("k").tokens(500), t).unwrap().allowed);
}

#[test]
fn a_leased_ticket_keeps_its_flag_through_the_c_words() {
    let s = store();
    s.fail(Fault::Down);
    let l = token_host(&s, opts(1, DownPolicy::Local));
    let t = now();
    let k = l
        .check(&req("k").tokens(10), t)
        .unwrap()
        .tokens
        .unwrap()
        .ticket
        .unwrap();
    assert!(k.local);
    assert_eq!(crate::Ticket::from_raw(k.to_raw()), Some(k));
}

#[test]
fn a_token_peek_and_the_operator_views_show_the_last_grants_counts() {
    let s = store();
    let l = token_host(&s, opts(1, DownPolicy::Closed));
    let t = now();
    assert!(l.check(&req("k").tokens(1_200), t).unwrap().allowed);
    let calls = l.lease_stats().unwrap().store.calls;
    // A peek: the store's count as of the grant, no round trip.
    let peek = l.check(&req("k").tokens(100).cost(0), t).unwrap();
    let w = peek.tokens.unwrap();
    assert_eq!(
        (w.minute.remaining, w.reserved, w.ticket),
        (TPM - 1_200, 0, None)
    );
    assert_eq!(l.lease_stats().unwrap().store.calls, calls);
    let u = l.key_usage(b"k", MODEL.as_bytes(), t).unwrap().unwrap();
    assert_eq!((u.tokens_minute, u.tokens_day), (1_200, 1_200));
}

// In-flight limits across hosts (`lease::in_flight`): the store's set of
// admissions, shared by hosts, renewed by each, and the down policies.

fn in_flight_policy(rpm: u32, rpd: u32) -> Policy {
    Policy::parse(
        &format!("[models]\n\"DeepSeek-V3.1\" = {{ region = \"EU\" }}\n[tiers.developer]\n\"DeepSeek-V3.1\" = {{ rpm = {rpm}, rpd = {rpd}, max_in_flight = 4 }}\n"),
        "t",
    )
    .unwrap()
}

fn in_flight_host(store: &Arc<MemoryStore>, opts: LeaseOptions) -> Limiter {
    in_flight_host_of(store, opts, in_flight_policy(30, 15_000))
}

fn in_flight_host_of(store: &Arc<MemoryStore>, opts: LeaseOptions, policy: Policy) -> Limiter {
    let mut l = LimiterOptions::new()
        .leases(true)
        .build(&policy, 64)
        .unwrap();
    let dyn_store: Arc<dyn QuotaStore> = store.clone();
    l.connect_store(dyn_store, opts).unwrap();
    l
}

fn in_flight_tag(account: &str) -> Tag {
    crate::store::Tag::for_unit(account.as_bytes(), MODEL, crate::store::Unit::InFlight)
}

fn members(s: &MemoryStore, account: &str) -> u32 {
    s.in_flight_peek(&in_flight_tag(account))
}

/// Admits up to `n`; the admissions held.
fn hold(l: &Limiter, account: &str, n: u32, t: u64) -> Vec<crate::Admission> {
    (0..n)
        .filter_map(|_| {
            let d = l.check(&req(account), t).unwrap();
            let f = d.in_flight.unwrap();
            assert_eq!(d.allowed, f.admission.is_some());
            if !d.allowed {
                assert_eq!(d.limited_by, crate::LimitedBy::InFlight, "{d:?}");
            }
            f.admission
        })
        .collect()
}

#[test]
fn hosts_sharing_an_in_flight_limit_admit_exactly_the_limit() {
    let s = store();
    let a = in_flight_host(&s, opts(2, DownPolicy::Local));
    let b = in_flight_host(&s, opts(2, DownPolicy::Local));
    let t = now();
    let held_a = hold(&a, "k", 3, t);
    let held_b = hold(&b, "k", 3, t);
    assert_eq!((held_a.len(), held_b.len()), (3, 1));
    assert_eq!(members(&s, "k"), 4);
    let d = b.check(&req("k"), t).unwrap();
    assert_eq!(d.in_flight.unwrap().in_use, 4);
    // A release is queued to the lease thread; then the unit is anyone's.
    a.release(held_a[0], crate::Ending::Complete).unwrap();
    assert!(a.release(held_a[0], crate::Ending::Complete).is_err());
    eventually("the release applied", || members(&s, "k") == 3);
    assert_eq!(hold(&b, "k", 2, t).len(), 1);
    // The windows charged only the admitted: 4 + 1 (the day's count: the
    // minute may close under a slow run, miri's, and keep what it was
    // leased).
    drop((a, b));
    assert_eq!(s.peek(&tag("k"), at(t)).unwrap().day_count, 5);
}

#[test]
fn a_window_refusal_gives_the_in_flight_unit_back() {
    let s = store();
    // A day of 3 (a minute could end under a slow run, miri's).
    let a = in_flight_host_of(&s, opts(1, DownPolicy::Local), in_flight_policy(3, 3));
    let t = now();
    // The day's 3 spent by requests that ended at once.
    for _ in 0..3 {
        let h = hold(&a, "k", 1, t);
        a.release(h[0], crate::Ending::Complete).unwrap();
        // Released in the store by the lease thread, at once.
        eventually("the release applied", || members(&s, "k") == 0);
    }
    let d = a.check(&req("k"), t).unwrap();
    assert!(!d.allowed && d.limited_by == crate::LimitedBy::Day, "{d:?}");
    eventually("every member removed", || members(&s, "k") == 0);
}

#[test]
fn a_host_that_stops_renewing_loses_its_units_within_the_bound() {
    let s = store();
    let t = now();
    s.set_now(crate::now_ms());
    let a = in_flight_host(&s, opts(2, DownPolicy::Local));
    let b = in_flight_host(&s, opts(2, DownPolicy::Local));
    assert_eq!(hold(&a, "k", 3, t).len(), 3);
    let kept = hold(&b, "k", 1, t);
    assert_eq!(hold(&b, "k", 1, t).len(), 0);
    // Host a killed: nothing releases or renews its members.
    drop(a);
    // The store's clock a whole life (HOST_LIVES beats) later: a's
    // members are gone; b's come back with its next renewal.
    s.set_now(crate::now_ms() + 3_001);
    eventually("b's member renewed, a's expired", || members(&s, "k") == 1);
    assert_eq!(hold(&b, "k", 4, t).len(), 3);
    b.release(kept[0], crate::Ending::Cut).unwrap();
}

#[test]
fn in_flight_follows_the_down_policy_and_is_pushed() {
    let s = store();
    s.fail(Fault::Down);
    // Two hosts: this one's share is 4 / 2.
    let local = in_flight_host(&s, opts(2, DownPolicy::Local));
    let t = now();
    let held = hold(&local, "k", 5, t);
    assert_eq!(held.len(), 2);
    let open = in_flight_host(&s, opts(2, DownPolicy::Open));
    assert_eq!(hold(&open, "o", 6, t).len(), 6);
    let closed = in_flight_host(&s, opts(2, DownPolicy::Closed));
    let d = closed.check(&req("c"), t).unwrap();
    assert!(
        !d.allowed && d.limited_by == crate::LimitedBy::InFlight,
        "{d:?}"
    );
    assert_eq!(closed.stats(t).in_flight.unwrap().in_use, 0);
    // Back: what was admitted meanwhile is pushed by the renewals.
    s.heal();
    eventually("the admissions pushed", || {
        members(&s, "k") == 2 && members(&s, "o") == 6
    });
    // Exact again: 2 more for "k", none for "o" (6 over its 4).
    assert_eq!(hold(&local, "k", 4, t).len(), 2);
    assert_eq!(hold(&open, "o", 1, t).len(), 0);
}

#[test]
fn an_admission_whose_reply_was_lost_counts_once_or_goes_back() {
    let s = store();
    let t = now();
    // Closed: refused, and the member that went in is taken out again.
    let closed = in_flight_host(&s, opts(1, DownPolicy::Closed));
    s.fail(Fault::Timeout { applied: true });
    assert!(!closed.check(&req("c"), t).unwrap().allowed);
    // Local: admitted in its share, kept in the store, counted once.
    let local = in_flight_host(&s, opts(1, DownPolicy::Local));
    assert_eq!(hold(&local, "k", 1, t).len(), 1);
    s.heal();
    eventually("the refused member removed, the admitted kept", || {
        members(&s, "c") == 0 && members(&s, "k") == 1
    });
    std::thread::sleep(Duration::from_millis(1_200));
    assert_eq!(members(&s, "k"), 1);
}

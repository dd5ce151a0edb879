//! The global quota store against real `redis-server` processes: a single
//! server and a 3-master Cluster (tests/redis_servers). No mock of Redis.
//!
//! Most tests count in a day ahead of today, so that both windows are open
//! by Redis's clock whatever the time of the run; the TTL and the
//! closed-window tests use today and yesterday on purpose.

mod redis_servers;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant as Clock};

use redis_servers::{Cluster, Server};
use tollgate::store::{
    key_names, ApplyCall, Ask, BreakerState, GrantCall, Instant, OpId, QuotaStore, Store,
    StoreError, StoreOptions, Tag, DAY_GRACE, MINUTE_GRACE,
};
use tollgate::Limits;

/// A deadline long enough that a loaded test machine never trips it: the
/// tests of the deadline itself use the 50 ms default.
fn roomy() -> StoreOptions {
    StoreOptions {
        deadline: Duration::from_secs(2),
        ..StoreOptions::default()
    }
}

fn today() -> u32 {
    (tollgate::now_ms() / 86_400_000) as u32
}

/// Minute `minute` of tomorrow: open by any clock for a day.
fn ahead(minute: u32) -> Instant {
    Instant {
        day: today() + 1,
        minute,
    }
}

fn text(k: &[u8]) -> String {
    String::from_utf8(k.to_vec()).unwrap()
}

fn get(c: &mut redis::Connection, key: &[u8]) -> Option<u64> {
    redis::cmd("GET").arg(key).query(c).unwrap()
}

fn pttl(c: &mut redis::Connection, key: &[u8]) -> i64 {
    redis::cmd("PTTL").arg(key).query(c).unwrap()
}

/// A tiny deterministic generator for costs and thread choices.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as u32
    }
}

#[test]
fn a_grant_is_all_or_nothing_across_both_windows() {
    let server = Server::start();
    let store = Store::connect(&server.url(), roomy()).unwrap();
    let tag = Tag::for_key(b"acct-42", "DeepSeek-V3.1");
    let limits = Limits { rpm: 5, rpd: 8 };
    let (m1, m2, m3) = (ahead(100), ahead(101), ahead(102));
    let mut c = server.conn();

    let g = store.grant(&tag, 5, 5, limits, m1).unwrap();
    assert_eq!(g.units, 5);
    assert_eq!((g.counts.minute_count, g.counts.day_count), (5, 5));

    // The minute is full: refused, and neither window charged.
    let g = store.grant(&tag, 1, 1, limits, m1).unwrap();
    assert_eq!(g.units, 0);
    assert_eq!((g.counts.minute_count, g.counts.day_count), (5, 5));

    // Next minute: the day has 3 left; a grant of 4 does not fit and
    // charges nothing, not even the minute that had room.
    let g = store.grant(&tag, 4, 4, limits, m2).unwrap();
    assert_eq!(g.units, 0);
    assert_eq!((g.counts.minute_count, g.counts.day_count), (0, 5));
    let (minute_key, _) = key_names(&tag, m2).unwrap();
    assert_eq!(
        get(&mut c, &minute_key),
        None,
        "the refused grant made no key"
    );
    let g = store.grant(&tag, 3, 3, limits, m2).unwrap();
    assert_eq!(g.units, 3);
    assert_eq!((g.counts.minute_count, g.counts.day_count), (3, 8));

    // The day is full: refused in a fresh minute, which stays uncharged.
    let g = store.grant(&tag, 1, 1, limits, m3).unwrap();
    assert_eq!(g.units, 0);
    assert_eq!((g.counts.minute_count, g.counts.day_count), (0, 8));
    let (minute_key, day_key) = key_names(&tag, m3).unwrap();
    assert_eq!(get(&mut c, &minute_key), None);
    assert_eq!(get(&mut c, &day_key), Some(8));
    let s = store.stats();
    assert_eq!(s.failures, 0);
    assert!(s.answered >= 6);
}

#[test]
fn a_partial_grant_takes_what_fits_down_to_min() {
    let server = Server::start();
    let store = Store::connect(&server.url(), roomy()).unwrap();
    let tag = Tag::for_key(b"acct-partial", "m");
    let limits = Limits { rpm: 10, rpd: 100 };
    let at = ahead(7);
    assert_eq!(store.grant(&tag, 4, 1, limits, at).unwrap().units, 4);
    assert_eq!(store.grant(&tag, 4, 1, limits, at).unwrap().units, 4);
    // 2 left: want 4, min 3 does not fit; want 4, min 1 gets the 2.
    assert_eq!(store.grant(&tag, 4, 3, limits, at).unwrap().units, 0);
    let g = store.grant(&tag, 4, 1, limits, at).unwrap();
    assert_eq!(g.units, 2);
    assert_eq!((g.counts.minute_count, g.counts.day_count), (10, 10));
    assert_eq!(store.grant(&tag, 4, 1, limits, at).unwrap().units, 0);
    // The day limit bounds a partial grant the same way.
    let tight = Limits { rpm: 10, rpd: 12 };
    let g = store.grant(&tag, 9, 1, tight, ahead(8)).unwrap();
    assert_eq!(g.units, 2);
    assert_eq!((g.counts.minute_count, g.counts.day_count), (2, 12));
}

#[test]
fn concurrent_grants_never_pass_either_limit_and_sum_to_the_counts() {
    let server = Server::start();
    let store = Arc::new(Store::connect(&server.url(), roomy()).unwrap());
    let tag = Tag::for_key(b"acct-hot", "DeepSeek-V3.1");
    let limits = Limits { rpm: 300, rpd: 500 };
    let minutes = [ahead(600), ahead(601)];
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = Arc::clone(&store);
            let tag = tag.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                let mut granted = [0u64; 2];
                for (i, at) in minutes.iter().enumerate() {
                    // Random leases until one is refused, then single units
                    // until a 1-unit grant is refused too: the window is full.
                    loop {
                        let want = 1 + rng.below(7);
                        let min = 1 + rng.below(want);
                        let n = store.grant(&tag, want, min, limits, *at).unwrap().units;
                        assert!(n == 0 || (min..=want).contains(&n));
                        granted[i] += n as u64;
                        if n == 0 {
                            let one = store.grant(&tag, 1, 1, limits, *at).unwrap().units;
                            granted[i] += one as u64;
                            if one == 0 {
                                break;
                            }
                        }
                    }
                }
                granted
            })
        })
        .collect();
    let mut total = [0u64; 2];
    for t in threads {
        let g = t.join().unwrap();
        total[0] += g[0];
        total[1] += g[1];
    }
    let first = store.counts(&tag, minutes[0]).unwrap();
    let second = store.counts(&tag, minutes[1]).unwrap();
    assert_eq!(first.minute_count, total[0]);
    assert_eq!(second.minute_count, total[1]);
    assert_eq!(second.day_count, total[0] + total[1]);
    // Full, never over: the first minute by its own limit, the second by
    // what the day had left.
    assert_eq!(total[0], 300);
    assert_eq!(total[1], 200);
    assert_eq!(store.stats().failures, 0);
}

#[test]
fn give_back_is_idempotent_and_never_goes_below_zero() {
    let server = Server::start();
    let store = Store::connect(&server.url(), roomy()).unwrap();
    let tag = Tag::for_key(b"acct-back", "m");
    let limits = Limits { rpm: 10, rpd: 100 };
    let at = ahead(30);
    store.grant(&tag, 5, 5, limits, at).unwrap();

    let id = OpId::new();
    let r = store.give_back(&tag, &id, 2, 2, at).unwrap();
    assert!(!r.replayed);
    assert_eq!((r.minute_units, r.day_units), (2, 2));
    assert_eq!((r.counts.minute_count, r.counts.day_count), (3, 3));
    // A retry (say after a timeout) returns nothing more.
    let r = store.give_back(&tag, &id, 2, 2, at).unwrap();
    assert!(r.replayed);
    assert_eq!((r.minute_units, r.day_units), (0, 0));
    assert_eq!((r.counts.minute_count, r.counts.day_count), (3, 3));

    // More than was charged: stops at zero.
    let r = store.give_back(&tag, &OpId::new(), 10, 1, at).unwrap();
    assert_eq!((r.minute_units, r.day_units), (3, 1));
    assert_eq!((r.counts.minute_count, r.counts.day_count), (0, 2));
    // A window with no key is skipped and gets none.
    let empty = Tag::for_key(b"acct-never", "m");
    let r = store.give_back(&empty, &OpId::new(), 4, 4, at).unwrap();
    assert_eq!((r.minute_units, r.day_units), (0, 0));
    let (m, d) = key_names(&empty, at).unwrap();
    let mut c = server.conn();
    assert_eq!((get(&mut c, &m), get(&mut c, &d)), (None, None));
    // The units given back can be granted again.
    assert_eq!(store.grant(&tag, 10, 10, limits, at).unwrap().units, 10);
    assert_eq!(store.stats().replays, 1);
}

#[test]
fn give_back_skips_a_window_that_has_closed() {
    let server = Server::start();
    let store = Store::connect(&server.url(), roomy()).unwrap();
    let tag = Tag::for_key(b"acct-late", "m");
    let limits = Limits { rpm: 10, rpd: 100 };
    let mut c = server.conn();

    // Yesterday: both windows closed. A grant there still counts (a host
    // with a lagging clock stays limited), and its keys live for the grace
    // from now, not from the window's end (which is past).
    let past = Instant {
        day: today() - 1,
        minute: 5,
    };
    assert_eq!(store.grant(&tag, 3, 3, limits, past).unwrap().units, 3);
    let (m, d) = key_names(&tag, past).unwrap();
    let ttl = pttl(&mut c, &m);
    assert!(ttl > 0 && ttl <= MINUTE_GRACE.as_millis() as i64, "{ttl}");
    let ttl = pttl(&mut c, &d);
    assert!(ttl > 0 && ttl <= DAY_GRACE.as_millis() as i64, "{ttl}");
    let r = store.give_back(&tag, &OpId::new(), 3, 3, past).unwrap();
    assert_eq!((r.minute_units, r.day_units), (0, 0));
    assert_eq!((r.counts.minute_count, r.counts.day_count), (3, 3));

    // Two minutes ago, today: the minute is closed, the day open.
    let now = Instant::from_ms(tollgate::now_ms()).unwrap();
    if now.minute >= 2 {
        let earlier = Instant {
            day: now.day,
            minute: now.minute - 2,
        };
        assert_eq!(store.grant(&tag, 3, 3, limits, earlier).unwrap().units, 3);
        let r = store.give_back(&tag, &OpId::new(), 3, 3, earlier).unwrap();
        assert_eq!((r.minute_units, r.day_units), (0, 3));
        assert_eq!((r.counts.minute_count, r.counts.day_count), (3, 0));
    }
}

#[test]
fn push_adds_past_the_limit_and_is_idempotent() {
    let server = Server::start();
    let store = Store::connect(&server.url(), roomy()).unwrap();
    let tag = Tag::for_key(b"acct-push", "m");
    let limits = Limits { rpm: 5, rpd: 50 };
    let at = ahead(40);
    assert_eq!(store.grant(&tag, 5, 5, limits, at).unwrap().units, 5);
    let id = OpId::from_bytes(b"host-1:lease-7").unwrap();
    let p = store.push(&tag, &id, 3, 4, at).unwrap();
    assert!(!p.replayed);
    assert_eq!((p.minute_units, p.day_units), (3, 4));
    assert_eq!((p.counts.minute_count, p.counts.day_count), (8, 9));
    let p = store.push(&tag, &id, 3, 4, at).unwrap();
    assert!(p.replayed);
    assert_eq!((p.counts.minute_count, p.counts.day_count), (8, 9));
    // Over the limit now: nothing more is granted in that minute.
    assert_eq!(store.grant(&tag, 1, 1, limits, at).unwrap().units, 0);
    // A push into a window with no key yet makes it, with its expiry.
    let other = ahead(41);
    let p = store.push(&tag, &OpId::new(), 2, 0, other).unwrap();
    assert_eq!((p.counts.minute_count, p.counts.day_count), (2, 9));
    assert!(p.counts.minute_ttl_ms.is_some());
    // The same id for a give-back is a different operation.
    let r = store.give_back(&tag, &id, 1, 1, at).unwrap();
    assert!(!r.replayed);
    assert_eq!((r.counts.minute_count, r.counts.day_count), (7, 8));
}

#[test]
fn grant_once_answers_a_retry_with_the_first_grant() {
    let server = Server::start();
    let store = Store::connect(&server.url(), roomy()).unwrap();
    let tag = Tag::for_key(b"acct-once", "m");
    let limits = Limits { rpm: 10, rpd: 100 };
    let at = ahead(50);
    let id = OpId::new();
    let g = store.grant_once(&tag, &id, 6, 1, limits, at).unwrap();
    assert_eq!((g.units, g.replayed), (6, false));
    let g = store.grant_once(&tag, &id, 6, 1, limits, at).unwrap();
    assert_eq!((g.units, g.replayed), (6, true));
    assert_eq!(g.counts.minute_count, 6, "charged once");
    let g = store
        .grant_once(&tag, &OpId::new(), 6, 1, limits, at)
        .unwrap();
    assert_eq!((g.units, g.replayed), (4, false));
}

#[test]
fn keys_expire_at_their_windows_end_plus_grace() {
    let server = Server::start();
    let store = Store::connect(&server.url(), roomy()).unwrap();
    let tag = Tag::for_key(b"acct-ttl", "DeepSeek-V3.1");
    let limits = Limits { rpm: 10, rpd: 100 };
    let mut c = server.conn();
    for at in [Instant::from_ms(tollgate::now_ms()).unwrap(), ahead(1_439)] {
        let g = store.grant(&tag, 1, 1, limits, at).unwrap();
        assert_eq!(g.units, 1);
        let (m, d) = key_names(&tag, at).unwrap();
        let epoch_minute = at.day as u64 * 1_440 + at.minute as u64;
        assert_eq!(
            text(&m),
            format!("tg:{{{}}}:m:{epoch_minute}", text(tag.as_bytes()))
        );
        assert_eq!(
            text(&d),
            format!("tg:{{{}}}:d:{}", text(tag.as_bytes()), at.day)
        );
        let now = tollgate::now_ms() as i64;
        let minute_end = (epoch_minute as i64 + 1) * 60_000 + MINUTE_GRACE.as_millis() as i64;
        let day_end = (at.day as i64 + 1) * 86_400_000 + DAY_GRACE.as_millis() as i64;
        for (key, end, reported) in [
            (&m, minute_end, g.counts.minute_ttl_ms),
            (&d, day_end, g.counts.day_ttl_ms),
        ] {
            let left = pttl(&mut c, key);
            let want = end - now;
            // Redis counts down from the same clock; allow for the time
            // between the grant and this look.
            assert!(
                (want - 2_000..=want + 1_000).contains(&left),
                "{left} vs {want}"
            );
            let reported = reported.unwrap() as i64;
            assert!((want - 2_000..=want + 2_000).contains(&reported));
        }
    }
}

fn script_exists(c: &mut redis::Connection, sha: &str) -> u8 {
    let v: Vec<u8> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(sha)
        .query(c)
        .unwrap();
    v[0]
}

/// How many SCRIPT LOADs the server has run (INFO commandstats).
fn script_loads(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_script|load:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn evalsha_calls(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn each_operation_is_one_evalsha() {
    let server = Server::start();
    let store = Store::connect(&server.url(), roomy()).unwrap();
    let tag = Tag::for_key(b"acct-count", "m");
    let limits = Limits {
        rpm: 100,
        rpd: 1_000,
    };
    let at = ahead(65);
    let mut c = server.conn();
    let before = evalsha_calls(&mut c);
    let loads = script_loads(&mut c);
    for _ in 0..10 {
        store.grant(&tag, 2, 1, limits, at).unwrap();
    }
    store.give_back(&tag, &OpId::new(), 1, 1, at).unwrap();
    store.push(&tag, &OpId::new(), 1, 1, at).unwrap();
    store
        .grant_once(&tag, &OpId::new(), 1, 1, limits, at)
        .unwrap();
    store.counts(&tag, at).unwrap();
    assert_eq!(evalsha_calls(&mut c) - before, 14);
    assert_eq!(
        script_loads(&mut c),
        loads,
        "the script was loaded once, by connect"
    );
}

/// Issue 15 (cold keys at scale): a batch of grants, then of give-backs
/// and pushes, for 600 keys goes in pipelines of at most 256 (3 round
/// trips each), each call answered as its own would be, and a pipeline
/// sent again after NOSCRIPT charges nothing twice.
#[test]
fn batches_are_pipelined_and_each_call_answered_as_alone() {
    let server = Server::start();
    let store = Store::connect(&server.url(), roomy()).unwrap();
    let at = ahead(70);
    let limits = Limits { rpm: 10, rpd: 100 };
    let tags: Vec<Tag> = (0..600)
        .map(|i| Tag::for_key(format!("batch-{i}").as_bytes(), "m"))
        .collect();
    let grants = |want: u32| -> Vec<GrantCall> {
        tags.iter()
            .map(|t| GrantCall {
                tag: t.clone(),
                id: OpId::new(),
                ask: Ask {
                    want,
                    min: 1,
                    limits: limits.into(),
                    hosts: 1,
                },
                at,
            })
            .collect()
    };
    let mut c = server.conn();
    let calls_before = evalsha_calls(&mut c);
    let stats_before = store.stats().calls;
    // The script flushed first: the first pipeline meets NOSCRIPT, loads
    // the script and is sent again.
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut c).unwrap();
    let first = store.grant_many(&grants(6));
    assert!(
        first.iter().all(|r| r.as_ref().unwrap().units == 6),
        "{:?}",
        &first[..2]
    );
    // 4 left of 10 each: a want of 6 gets 4, and one more gets nothing.
    let second = store.grant_many(&grants(6));
    assert!(second.iter().all(|r| r.as_ref().unwrap().units == 4));
    let third = store.grant_many(&grants(1));
    assert!(third.iter().all(|r| r.as_ref().unwrap().units == 0));
    for t in &tags {
        assert_eq!(store.counts(t, at).unwrap().minute_count, 10);
    }
    // Three batches of 600: 3 pipelines each (one gate call per pipeline),
    // and 600 counts alone.
    assert_eq!(store.stats().calls - stats_before, 9 + 600);
    // Every EVALSHA the server ran: 600 x 3, the 256 NOSCRIPT replies of
    // the first pipeline, and the 600 counts.
    assert_eq!(evalsha_calls(&mut c) - calls_before, 1800 + 256 + 600);
    let applies: Vec<ApplyCall> = tags
        .iter()
        .enumerate()
        .map(|(i, t)| ApplyCall {
            push: i % 2 == 1,
            tag: t.clone(),
            id: OpId::new(),
            minute_units: 3,
            day_units: 3,
            at,
        })
        .collect();
    let applied = store.apply_many(&applies);
    let again = store.apply_many(&applies);
    for (i, (a, b)) in applied.iter().zip(&again).enumerate() {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(a.minute_units, 3);
        assert!(!a.replayed && b.replayed);
        let want = if i % 2 == 1 { 13 } else { 7 };
        assert_eq!(a.counts.minute_count, want);
    }
    // A batch with a bad call: that one is an error, the others answer.
    let mut bad = grants(1);
    bad[1].ask.min = 0;
    let r = store.grant_many(&bad);
    assert!(matches!(r[1], Err(StoreError::Invalid(_))));
    assert!(r[0].is_ok() && r[2].is_ok());
}

/// A batch to a Redis that is gone fails each call as unavailable, at
/// once once the breaker opens, and never panics.
#[test]
fn a_batch_to_a_dead_redis_fails_each_call_as_unavailable() {
    let store = Store::new("redis://127.0.0.1:1/0", StoreOptions::default()).unwrap();
    let at = ahead(71);
    let calls: Vec<GrantCall> = (0..300)
        .map(|i| GrantCall {
            tag: Tag::for_key(format!("dead-{i}").as_bytes(), "m"),
            id: OpId::new(),
            ask: Ask {
                want: 5,
                min: 1,
                limits: Limits { rpm: 10, rpd: 100 }.into(),
                hosts: 1,
            },
            at,
        })
        .collect();
    for _ in 0..3 {
        let r = store.grant_many(&calls);
        assert_eq!(r.len(), 300);
        assert!(r.iter().all(|r| r.as_ref().unwrap_err().is_unavailable()));
    }
    assert!(store.stats().trips >= 1);
}

#[test]
fn a_flushed_script_is_loaded_again() {
    let server = Server::start();
    let store = Store::connect(&server.url(), roomy()).unwrap();
    let tag = Tag::for_key(b"acct-flush", "m");
    let limits = Limits { rpm: 10, rpd: 100 };
    let at = ahead(60);
    let mut c = server.conn();
    assert_eq!(store.grant(&tag, 2, 2, limits, at).unwrap().units, 2);
    let loads_before = script_loads(&mut c);
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut c).unwrap();
    assert_eq!(script_exists(&mut c, store.script_hash()), 0);
    // EVALSHA now meets NOSCRIPT; the client loads the script and retries.
    assert_eq!(store.grant(&tag, 2, 2, limits, at).unwrap().units, 2);
    assert_eq!(store.counts(&tag, at).unwrap().minute_count, 4);
    assert_eq!(script_exists(&mut c, store.script_hash()), 1);
    assert_eq!(
        script_loads(&mut c),
        loads_before + 1,
        "loaded once, then EVALSHA"
    );
    assert_eq!(store.stats().failures, 0);
}

#[test]
fn a_key_that_holds_no_count_is_a_script_error_not_a_panic() {
    let server = Server::start();
    let store = Store::connect(&server.url(), roomy()).unwrap();
    let tag = Tag::for_key(b"acct-bad", "m");
    let limits = Limits { rpm: 10, rpd: 100 };
    let at = ahead(70);
    let (m, d) = key_names(&tag, at).unwrap();
    let mut c = server.conn();
    redis::cmd("SET").arg(&m).arg("lots").exec(&mut c).unwrap();
    let e = store.grant(&tag, 1, 1, limits, at).unwrap_err();
    assert!(matches!(e, StoreError::Script(_)), "{e}");
    redis::cmd("DEL").arg(&m).exec(&mut c).unwrap();
    redis::cmd("RPUSH").arg(&d).arg("x").exec(&mut c).unwrap();
    let e = store.counts(&tag, at).unwrap_err();
    assert!(matches!(e, StoreError::Script(_)), "{e}");
    // Redis answered each time: no breaker failure, and the store works on.
    let s = store.stats();
    assert_eq!((s.trips, s.breaker), (0, BreakerState::Closed));
    let ok = Tag::for_key(b"acct-good", "m");
    assert_eq!(store.grant(&ok, 1, 1, limits, at).unwrap().units, 1);
}

/// One call, timed.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = Clock::now();
    let r = f();
    (r, t0.elapsed())
}

/// The bound a 50 ms deadline must keep: generous, so a loaded machine
/// passes, and far below the 2 s stall a missing deadline would show.
const BOUND: Duration = Duration::from_secs(1);

#[test]
fn the_deadline_holds_while_the_server_sleeps() {
    let server = Server::start();
    let no_trip = StoreOptions {
        trip_after: 1_000,
        ..StoreOptions::default()
    };
    let store = Store::connect(&server.url(), no_trip).unwrap();
    let tripping = Store::connect(&server.url(), StoreOptions::default()).unwrap();
    let tag = Tag::for_key(b"acct-stall", "m");
    let limits = Limits { rpm: 10, rpd: 100 };
    let at = ahead(80);
    assert_eq!(store.grant(&tag, 1, 1, limits, at).unwrap().units, 1);

    let mut admin = server.conn();
    let sleeper = thread::spawn(move || {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(2)
            .exec(&mut admin)
            .unwrap();
    });
    // Until the server is asleep, a call still answers; from then on each
    // call must come back with Timeout within the bound.
    let t0 = Clock::now();
    let mut timeouts = 0;
    while timeouts < 3 {
        let (r, took) = timed(|| store.grant(&tag, 1, 1, limits, at));
        match r {
            Err(StoreError::Timeout { .. }) => {
                assert!(took < BOUND, "a 50 ms deadline took {took:?}");
                timeouts += 1;
            }
            Ok(_) => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("{e}"),
        }
        assert!(
            t0.elapsed() < Duration::from_millis(1_500),
            "no timeout seen"
        );
    }
    // The breaker of the other store opens after 3 and then fails at once.
    let mut open = false;
    for _ in 0..4 {
        let (r, took) = timed(|| tripping.counts(&tag, at));
        assert!(took < BOUND, "{took:?}");
        open |= matches!(r, Err(StoreError::CircuitOpen { .. }));
    }
    assert!(open, "{:?}", tripping.stats());
    assert!(tripping.stats().trips >= 1);
    sleeper.join().unwrap();
    // Awake again: the same store answers (a new connection; the timed-out
    // one was dropped), and none of the timed-out grants was lost or
    // doubled beyond what Redis ran.
    let counts = store.counts(&tag, at).unwrap();
    assert!(counts.minute_count >= 1);
    let s = store.stats();
    assert!(s.timeouts >= 3 && s.connects >= 2, "{s:?}");
    assert_eq!(s.breaker, BreakerState::Closed);
}

#[test]
fn a_new_connection_to_a_sleeping_server_keeps_the_deadline() {
    // The client's connection set-up used to send two commands of its own,
    // each read with the whole timeout: a call that opened a connection
    // during a stall took two deadlines. A 1 s deadline tells them apart.
    let server = Server::start();
    let opts = StoreOptions {
        deadline: Duration::from_secs(1),
        ..StoreOptions::default()
    };
    let store = Store::new(&server.url(), opts).unwrap();
    let mut admin = server.conn();
    let sleeper = thread::spawn(move || {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(3)
            .exec(&mut admin)
            .unwrap();
    });
    // DEBUG SLEEP holds the server once its command is read: wait for that.
    thread::sleep(Duration::from_millis(200));
    let tag = Tag::for_key(b"acct-new-conn", "m");
    let (r, took) = timed(|| store.counts(&tag, ahead(95)));
    assert!(matches!(r, Err(StoreError::Timeout { .. })), "{r:?}");
    assert!(
        took < Duration::from_millis(1_600),
        "a 1 s deadline took {took:?}"
    );
    sleeper.join().unwrap();
}

#[test]
fn the_deadline_holds_while_clients_are_paused() {
    let server = Server::start();
    let store = Store::connect(&server.url(), StoreOptions::default()).unwrap();
    let tag = Tag::for_key(b"acct-pause", "m");
    let limits = Limits { rpm: 10, rpd: 100 };
    let at = ahead(90);
    assert_eq!(store.grant(&tag, 1, 1, limits, at).unwrap().units, 1);
    let mut admin = server.conn();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3_000)
        .arg("ALL")
        .exec(&mut admin)
        .unwrap();
    let (r, took) = timed(|| store.grant(&tag, 1, 1, limits, at));
    assert!(matches!(r, Err(StoreError::Timeout { .. })), "{r:?}");
    assert!(took < BOUND, "a 50 ms deadline took {took:?}");
    // A new connection meets the pause too, and is bounded the same way.
    let fresh = Store::new(&server.url(), StoreOptions::default()).unwrap();
    let (r, took) = timed(|| fresh.counts(&tag, at));
    assert!(matches!(r, Err(StoreError::Timeout { .. })), "{r:?}");
    assert!(took < BOUND, "{took:?}");
    redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .exec(&mut admin)
        .unwrap();
    let t0 = Clock::now();
    let counts = loop {
        match store.counts(&tag, at) {
            Ok(c) => break c,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(5), "{e}");
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert!(counts.minute_count >= 1);
}

#[test]
fn a_killed_server_fails_fast_then_a_restarted_one_serves_again() {
    let mut server = Server::start();
    let opts = StoreOptions {
        cooldown: Duration::from_millis(100),
        max_cooldown: Duration::from_millis(400),
        ..StoreOptions::default()
    };
    let store = Store::connect(&server.url(), opts).unwrap();
    let tag = Tag::for_key(b"acct-crash", "m");
    let limits = Limits { rpm: 10, rpd: 100 };
    let at = ahead(95);
    assert_eq!(store.grant(&tag, 4, 4, limits, at).unwrap().units, 4);

    server.kill();
    let (results, took) = timed(|| {
        (0..100)
            .map(|_| store.grant(&tag, 1, 1, limits, at))
            .collect::<Vec<_>>()
    });
    assert!(results.iter().all(|r| r.is_err()));
    assert!(
        matches!(
            results[0],
            Err(StoreError::Down(_)) | Err(StoreError::Timeout { .. })
        ),
        "{:?}",
        results[0]
    );
    let fast = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::CircuitOpen { .. })))
        .count();
    assert!(fast >= 90, "{fast} of 100 failed fast");
    assert!(took < BOUND, "100 calls on a dead server took {took:?}");
    let s = store.stats();
    assert!(s.trips >= 1 && s.circuit_open >= 90, "{s:?}");

    // Same port, no data (no persistence): once the cool-down lets a probe
    // through, calls succeed again.
    server.restart();
    let t0 = Clock::now();
    let g = loop {
        match store.grant(&tag, 1, 1, limits, at) {
            Ok(g) => break g,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(10), "{e}");
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(g.units, 1);
    assert_eq!(
        g.counts.minute_count, 1,
        "a restart without persistence lost the 4"
    );
    assert_eq!(store.stats().breaker, BreakerState::Closed);
}

#[test]
fn on_a_cluster_each_tag_stays_on_one_slot_and_the_script_runs_on_every_shard() {
    let cluster = Cluster::start();
    let store = Arc::new(Store::connect(&cluster.url(), roomy()).unwrap());
    let limits = Limits { rpm: 10, rpd: 100 };
    let at = ahead(120);
    let mut admin = cluster.nodes[0].conn();
    let slot = |c: &mut redis::Connection, key: &[u8]| -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(c)
            .unwrap()
    };
    let mut per_node = [0usize; 3];
    let tags: Vec<Tag> = (0..120)
        .map(|i| Tag::for_key(format!("acct-{i}").as_bytes(), "DeepSeek-V3.1"))
        .collect();
    for tag in &tags {
        let (m, d) = key_names(tag, at).unwrap();
        let s = slot(&mut admin, &m);
        assert_eq!(s, slot(&mut admin, &d));
        let record = format!("tg:{{{}}}:r:{}", text(tag.as_bytes()), OpId::new().as_str());
        assert_eq!(s, slot(&mut admin, record.as_bytes()));
        let owner = cluster.owner_of(s);
        per_node[owner] += 1;

        let g = store.grant(tag, 3, 1, limits, at).unwrap();
        assert_eq!(g.units, 3);
        let r = store.give_back(tag, &OpId::new(), 1, 1, at).unwrap();
        assert_eq!((r.counts.minute_count, r.counts.day_count), (2, 2));
        let p = store.push(tag, &OpId::new(), 0, 5, at).unwrap();
        assert_eq!(p.counts.day_count, 7);
        // The counts live on the node that owns the slot.
        let mut c = cluster.nodes[owner].conn();
        assert_eq!((get(&mut c, &m), get(&mut c, &d)), (Some(2), Some(7)));
    }
    assert!(
        per_node.iter().all(|&n| n > 10),
        "tags per node: {per_node:?}"
    );

    // NOSCRIPT on every shard: the client loads the script where needed.
    for node in &cluster.nodes {
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .exec(&mut node.conn())
            .unwrap();
    }
    for tag in &tags {
        let g = store.grant(tag, 1, 1, limits, at).unwrap();
        assert_eq!((g.units, g.counts.minute_count), (1, 3));
    }
    for node in &cluster.nodes {
        assert_eq!(script_exists(&mut node.conn(), store.script_hash()), 1);
    }

    // Threads on a few hot tags, through the Cluster client.
    let hot: Vec<Tag> = tags[..4].to_vec();
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let store = Arc::clone(&store);
            let hot = hot.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x51_7cc1_b727_220a ^ (t + 1));
                let mut got = [0u64; 4];
                for _ in 0..40 {
                    let i = rng.below(4) as usize;
                    let g = store.grant(&hot[i], 2, 1, limits, at).unwrap();
                    got[i] += g.units as u64;
                }
                got
            })
        })
        .collect();
    let mut got = [0u64; 4];
    for t in threads {
        for (sum, n) in got.iter_mut().zip(t.join().unwrap()) {
            *sum += n;
        }
    }
    for (tag, n) in hot.iter().zip(got) {
        let c = store.counts(tag, at).unwrap();
        assert_eq!(c.minute_count, 3 + n);
        assert!(c.minute_count <= limits.rpm as u64);
    }
    assert_eq!(store.stats().failures, 0);
}

#[test]
fn on_a_cluster_the_deadline_holds_while_a_shard_sleeps() {
    let cluster = Cluster::start();
    let store = Store::connect(&cluster.url(), StoreOptions::default()).unwrap();
    let limits = Limits { rpm: 10, rpd: 100 };
    let at = ahead(130);
    let mut admin = cluster.nodes[0].conn();
    // A tag on each node.
    let mut on: [Option<Tag>; 3] = [None, None, None];
    for i in 0.. {
        let tag = Tag::for_key(format!("acct-{i}").as_bytes(), "m");
        let (m, _) = key_names(&tag, at).unwrap();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&m)
            .query(&mut admin)
            .unwrap();
        let owner = cluster.owner_of(slot);
        on[owner].get_or_insert(tag);
        if on.iter().all(Option::is_some) {
            break;
        }
    }
    let on: Vec<Tag> = on.into_iter().map(Option::unwrap).collect();
    for tag in &on {
        assert_eq!(store.grant(tag, 1, 1, limits, at).unwrap().units, 1);
    }
    let mut sleepy = cluster.nodes[2].conn();
    let sleeper = thread::spawn(move || {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(2)
            .exec(&mut sleepy)
            .unwrap();
    });
    let t0 = Clock::now();
    let mut timed_out = false;
    let mut calls = 0;
    while !timed_out {
        calls += 1;
        let (r, took) = timed(|| store.grant(&on[2], 1, 1, limits, at));
        match r {
            Err(StoreError::Timeout { .. }) | Err(StoreError::Down(_)) => {
                assert!(took < BOUND, "a 50 ms deadline took {took:?} on a Cluster");
                timed_out = true;
            }
            Ok(_) => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("{e}"),
        }
        assert!(
            t0.elapsed() < Duration::from_millis(1_500),
            "no timeout seen"
        );
    }
    // The other shards answer meanwhile: the Cluster connection is kept
    // after a timeout, so they are not reconnected through the sleeper.
    for tag in &on[..2] {
        let (r, took) = timed(|| store.counts(tag, at));
        assert!(took < BOUND, "{took:?}");
        assert_eq!(r.unwrap().minute_count, 1);
    }
    sleeper.join().unwrap();
    // The timed-out grant was sent twice by the client (its one retry) but
    // charged at most once: a grant on a Cluster carries an id.
    let t0 = Clock::now();
    let after = loop {
        match store.counts(&on[2], at) {
            Ok(c) => break c,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(5), "{e}");
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert!(
        after.minute_count <= 1 + calls,
        "{after:?} after {calls} grants"
    );
    let t0 = Clock::now();
    for tag in &on {
        loop {
            match store.counts(tag, at) {
                Ok(c) => {
                    assert!(c.minute_count >= 1);
                    break;
                }
                Err(e) => {
                    assert!(t0.elapsed() < Duration::from_secs(5), "{e}");
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// Issue 11: a Cluster has a breaker per hash slot. One master killed
/// trips the breakers of its own tags' slots; the other masters' tags keep
/// being answered, before, between and after the dead ones' calls (with
/// one store-wide breaker they failed fast too, and the healthy answers in
/// between kept the dead master's calls from ever failing fast).
#[test]
fn on_a_cluster_a_dead_master_trips_only_its_own_slots_breakers() {
    let mut cluster = Cluster::start();
    // Each master serves its own slots while one is failed (Redis's
    // default answers CLUSTERDOWN everywhere once the dead node is marked
    // failed, which is not what this test is about).
    cluster.serve_partial_coverage();
    let opts = StoreOptions {
        // Long enough that no probe comes during the test: every call of
        // a tripped slot fails fast, whatever the machine's speed.
        cooldown: Duration::from_secs(120),
        max_cooldown: Duration::from_secs(120),
        ..roomy()
    };
    let store = Store::connect(&cluster.url(), opts).unwrap();
    let limits = Limits {
        rpm: 1_000,
        rpd: 10_000,
    };
    let at = ahead(140);
    let victim = 1;
    // Four tags on each master, each on a slot of its own.
    let mut on: [Vec<Tag>; 3] = [vec![], vec![], vec![]];
    let mut slots = std::collections::HashSet::new();
    for i in 0.. {
        let tag = Tag::for_key(format!("acct-{i}").as_bytes(), "m");
        let (m, _) = key_names(&tag, at).unwrap();
        let slot = cluster.slot_of(&m);
        let owner = cluster.owner_of(slot);
        if on[owner].len() < 4 && slots.insert(slot) {
            on[owner].push(tag);
        }
        if on.iter().all(|t| t.len() == 4) {
            break;
        }
    }
    let dead = on[victim].clone();
    let healthy: Vec<Tag> = (0..3)
        .filter(|&n| n != victim)
        .flat_map(|n| on[n].clone())
        .collect();
    for tag in dead.iter().chain(&healthy) {
        assert_eq!(store.grant(tag, 1, 1, limits, at).unwrap().units, 1);
    }

    cluster.nodes[victim].kill();
    let trip_after = store.options().trip_after as usize;
    // Each dead tag: `trip_after` calls reach for the dead master and
    // fail, then its slot's breaker is open and the rest fail at once.
    for tag in &dead {
        for n in 0..trip_after + 3 {
            let r = store.grant(tag, 1, 1, limits, at);
            if n < trip_after {
                assert!(
                    matches!(
                        r,
                        Err(StoreError::Down(_)) | Err(StoreError::Timeout { .. })
                    ),
                    "{r:?}"
                );
            } else {
                assert!(matches!(r, Err(StoreError::CircuitOpen { .. })), "{r:?}");
            }
        }
        assert!(store.fails_fast(tag));
        assert_eq!(store.breaker_of(tag), BreakerState::Open);
    }
    let s = store.stats();
    assert_eq!((s.trips, s.open_slots), (4, 4), "{s:?}");
    assert_eq!(s.breaker, BreakerState::Open, "the worst slot's");

    // The other masters' tags are answered, interleaved with the dead
    // ones' calls (which keep failing fast).
    for round in 0..5u64 {
        for (d, h) in dead.iter().cycle().zip(&healthy) {
            assert!(!store.fails_fast(h));
            let g = store.grant(h, 1, 1, limits, at).unwrap();
            assert_eq!((g.units, g.counts.minute_count), (1, 2 + round));
            assert!(matches!(
                store.grant(d, 1, 1, limits, at),
                Err(StoreError::CircuitOpen { .. })
            ));
        }
    }
    for h in &healthy {
        assert_eq!(store.breaker_of(h), BreakerState::Closed);
        assert_eq!(store.counts(h, at).unwrap().minute_count, 6);
    }
    let s = store.stats();
    assert_eq!((s.trips, s.open_slots), (4, 4), "{s:?}");
}

#[test]
fn a_shared_grant_is_at_most_its_hosts_share_of_the_room_now() {
    let server = Server::start();
    let store = Store::connect(&server.url(), StoreOptions::default()).unwrap();
    let tag = Tag::for_key(b"acct-share", "m");
    let limits = Limits {
        rpm: 30,
        rpd: 1_000,
    };
    let at = ahead(97);
    let grant = |want, min| {
        store
            .grant_share(&tag, &OpId::new(), want, min, limits, at, 3)
            .unwrap()
            .units
    };
    // Room 30 among 3 hosts: 10, then 20 / 3 = 6, then 14 / 3 = 4.
    assert_eq!(grant(100, 1), 10);
    assert_eq!(grant(100, 1), 6);
    assert_eq!(grant(3, 1), 3);
    // Below the share, the minimum still fits while the room allows it.
    assert_eq!(grant(5, 5), 5);
    // Room 6: share 2, and min 4 is granted whole; then nothing fits 3.
    assert_eq!(grant(4, 4), 4);
    assert_eq!(grant(3, 3), 0);
    assert_eq!(grant(2, 1), 1);
    assert_eq!(grant(1, 1), 1);
    assert_eq!(store.counts(&tag, at).unwrap().minute_count, 30);
}

/// The in-flight script (`in_flight.lua`) on one server and on a Cluster:
/// admitted to the limit once per member, released once, renewed (and
/// re-added), expired by Redis's clock when not renewed; one key per tag,
/// expiring with its newest member.
fn in_flight_sets(store: &Store, mut c: impl redis::ConnectionLike) {
    use tollgate::store::Unit;
    let tag = Tag::for_unit(b"acct-42", "DeepSeek-V3.1", Unit::InFlight);
    let key = format!("tg:{{{}}}:f", text(tag.as_bytes()));
    // Members live 3 beats of 100 ms.
    let every = Duration::from_millis(100);
    let a = store.in_flight_admit(&tag, "h1:1:1", 2, every).unwrap();
    assert!(a.admitted && !a.replayed && a.count == 1, "{a:?}");
    let a = store.in_flight_admit(&tag, "h1:1:1", 2, every).unwrap();
    assert!(a.admitted && a.replayed && a.count == 1, "{a:?}");
    assert!(
        store
            .in_flight_admit(&tag, "h2:1:1", 2, every)
            .unwrap()
            .admitted
    );
    let a = store.in_flight_admit(&tag, "h2:2:1", 2, every).unwrap();
    assert!(!a.admitted && a.count == 2, "{a:?}");
    assert_eq!(store.in_flight_release(&tag, "h1:1:1").unwrap(), 1);
    assert_eq!(store.in_flight_release(&tag, "h1:1:1").unwrap(), 1);
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut c).unwrap();
    assert!(ttl > 0 && ttl <= 300, "{ttl}");
    // h2:1:1 renewed past its first life, h3 re-added; h2:... not renewed
    // otherwise expires.
    let renew = ["h2:1:1".to_string(), "h3:1:1".to_string()];
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(100));
        assert_eq!(store.in_flight_renew(&tag, &renew, every).unwrap(), 2);
    }
    assert_eq!(store.in_flight_count(&tag).unwrap(), 2);
    thread::sleep(Duration::from_millis(350));
    assert_eq!(store.in_flight_count(&tag).unwrap(), 0);
    let exists: i64 = redis::cmd("EXISTS").arg(&key).query(&mut c).unwrap();
    assert_eq!(exists, 0, "the set expires with its newest member");
}

#[test]
fn in_flight_sets_admit_release_renew_and_expire() {
    let server = Server::start();
    let store = Store::connect(&server.url(), roomy()).unwrap();
    in_flight_sets(&store, server.conn());
}

#[test]
fn in_flight_sets_on_a_cluster() {
    use tollgate::store::Unit;
    let cluster = Cluster::start();
    let store = Store::connect(&cluster.url(), roomy()).unwrap();
    // The node that serves the set's slot, for PTTL and EXISTS.
    let tag = Tag::for_unit(b"acct-42", "DeepSeek-V3.1", Unit::InFlight);
    let key = format!("tg:{{{}}}:f", text(tag.as_bytes()));
    let node = cluster.owner_of(cluster.slot_of(key.as_bytes()));
    in_flight_sets(&store, cluster.nodes[node].conn());
}

//! Faults an attacker found in the multi-host mode (issue 15), each through
//! the Rust API against real `redis-server` processes: a Redis that answers
//! "not now" (BUSY, OOM, NOAUTH), the down share and the headers of keys
//! that share a home slot, and the password in error texts.

use std::thread;
use std::time::{Duration, Instant as Clock};

use super::redis_servers::{free_port, Server};
use super::{policy, tight, tomorrow};
use tollgate::lease::{DownPolicy, LeaseMode, LeaseOptions, Level};
use tollgate::store::StoreOptions;
use tollgate::{Limiter, LimiterOptions, Request, Tier};

/// Waits until `f` holds, or panics after `within` saying `what`.
fn wait_for(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Clock::now();
    while !f() {
        assert!(t0.elapsed() < within, "not within {within:?}: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The lease layer's events so far, as text.
fn events(l: &Limiter) -> Vec<(Level, String)> {
    let mut seq = 0;
    let mut out = Vec::new();
    while let Some(e) = l.lease_event(seq) {
        seq = e.seq;
        out.push((e.level, e.text));
    }
    out
}

/// A Redis busy in another client's endless script (BUSY to everyone
/// else after 100 ms), until `kill` is called.
struct Busy {
    server_conn: redis::Connection,
    runner: Option<thread::JoinHandle<()>>,
}

impl Busy {
    fn start(server: &Server) -> Busy {
        let mut c = server.conn();
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("busy-reply-threshold")
            .arg("100")
            .exec(&mut c)
            .unwrap();
        let mut runner_conn = server.conn();
        let runner = thread::spawn(move || {
            // Ends with an error when SCRIPT KILL stops it.
            let _ = redis::cmd("EVAL")
                .arg("while true do end")
                .arg(0)
                .exec(&mut runner_conn);
        });
        // Until the script has run past the threshold, others still get
        // answers: wait for the first BUSY.
        wait_for(Duration::from_secs(5), "Redis answers BUSY", || {
            let mut probe = server.conn();
            match redis::cmd("GET")
                .arg("x")
                .query::<Option<String>>(&mut probe)
            {
                Err(e) => e.code() == Some("BUSY"),
                Ok(_) => false,
            }
        });
        Busy {
            server_conn: c,
            runner: Some(runner),
        }
    }

    fn kill(&mut self) {
        let _ = redis::cmd("SCRIPT").arg("KILL").exec(&mut self.server_conn);
        if let Some(r) = self.runner.take() {
            r.join().unwrap();
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.kill();
    }
}

fn one_host(down: DownPolicy) -> LeaseOptions {
    LeaseOptions {
        store: StoreOptions {
            deadline: Duration::from_millis(200),
            cooldown: Duration::from_millis(50),
            max_cooldown: Duration::from_millis(200),
            ..StoreOptions::default()
        },
        hosts: 1,
        down,
        ..LeaseOptions::default()
    }
}

#[test]
fn joining_a_busy_redis_succeeds_and_recovers_by_itself() {
    let server = Server::start();
    let mut busy = Busy::start(&server);
    let mut l = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 1024)
        .unwrap();
    // Before: Err(Store(Script("BUSY Redis is busy running a script..."))).
    l.connect(&server.url(), one_host(DownPolicy::Local))
        .expect("a Redis that cannot serve now is not a configuration error");
    let (ms, _) = tomorrow(7);
    let req = Request::new(b"acct", b"m", Tier::Developer);
    for _ in 0..5 {
        let d = l.check(&req, ms).expect("BUSY follows the down policy");
        assert!(d.allowed, "within the local share of 30");
    }
    let s = l.lease_stats().unwrap();
    assert!(s.redis_down, "{s:?}");
    assert!(s.degraded >= 5, "{s:?}");
    let said = events(&l);
    assert!(
        said.iter()
            .any(|(lvl, t)| *lvl == Level::Warn && t.contains("BUSY")),
        "the log line carries Redis's own message: {said:?}"
    );
    busy.kill();
    wait_for(Duration::from_secs(10), "leases from Redis again", || {
        let _ = l.check(&req, ms);
        !l.lease_stats().unwrap().redis_down
    });
    assert!(events(&l).iter().any(|(lvl, _)| *lvl == Level::Info));
    // What was admitted meanwhile reaches Redis.
    wait_for(Duration::from_secs(10), "the backlog pushed", || {
        l.lease_stats().unwrap().pushed_units >= 5
    });
}

#[test]
fn busy_oom_and_noauth_at_decision_time_open_the_breaker_and_follow_the_down_policy() {
    let server = Server::start();
    let mut admin = server.conn();
    let mut l = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 1024)
        .unwrap();
    let mut opts = one_host(DownPolicy::Local);
    opts.mode = LeaseMode::Exact; // every decision asks Redis
    l.connect(&server.url(), opts).unwrap();
    let (ms, _) = tomorrow(8);
    let mut n = 0u32;
    let mut key = || {
        n += 1;
        format!("acct-{n}").into_bytes()
    };
    let a = key();
    assert!(
        l.check(&Request::new(&a, b"m", Tier::Developer), ms)
            .unwrap()
            .allowed
    );
    assert!(!l.lease_stats().unwrap().redis_down);

    // OOM: maxmemory far below what the server uses, nothing evictable.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .exec(&mut admin)
        .unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .exec(&mut admin)
        .unwrap();
    let trips = l.lease_stats().unwrap().store.trips;
    for _ in 0..10 {
        let k = key();
        let d = l.check(&Request::new(&k, b"m", Tier::Developer), ms);
        assert!(d.expect("OOM follows the down policy").allowed);
    }
    let s = l.lease_stats().unwrap();
    assert!(s.redis_down && s.store.trips > trips, "{s:?}");
    assert!(
        s.store.circuit_open > 0,
        "the breaker spares Redis the round trips: {s:?}"
    );
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .exec(&mut admin)
        .unwrap();
    wait_for(Duration::from_secs(10), "Redis serves again", || {
        let k = key();
        let _ = l.check(&Request::new(&k, b"m", Tier::Developer), ms);
        !l.lease_stats().unwrap().redis_down
    });

    // BUSY at decision time.
    let mut busy = Busy::start(&server);
    for _ in 0..5 {
        let k = key();
        let d = l.check(&Request::new(&k, b"m", Tier::Developer), ms);
        assert!(d.expect("BUSY follows the down policy").allowed);
    }
    assert!(l.lease_stats().unwrap().redis_down);
    busy.kill();
    drop(busy);
    wait_for(Duration::from_secs(10), "Redis serves again", || {
        let k = key();
        let _ = l.check(&Request::new(&k, b"m", Tier::Developer), ms);
        !l.lease_stats().unwrap().redis_down
    });

    // NOAUTH: the password changed under a running gateway; its next
    // connections are refused.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret-now")
        .exec(&mut admin)
        .unwrap();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("SKIPME")
        .arg("yes")
        .exec(&mut admin)
        .unwrap();
    for _ in 0..5 {
        let k = key();
        let d = l.check(&Request::new(&k, b"m", Tier::Developer), ms);
        assert!(d.expect("NOAUTH follows the down policy").allowed);
    }
    assert!(l.lease_stats().unwrap().redis_down);
    let said = events(&l);
    assert!(
        said.iter().any(|(_, t)| t.contains("OOM")),
        "Redis's own reason: {said:?}"
    );
}

#[test]
fn joining_with_a_wrong_password_succeeds_and_never_shows_it() {
    let server = Server::start();
    let mut admin = server.conn();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("right")
        .exec(&mut admin)
        .unwrap();
    let url = format!("redis://default:wr0ng-pa55@127.0.0.1:{}/0", server.port);
    let mut l = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 1024)
        .unwrap();
    l.connect(&url, one_host(DownPolicy::Closed))
        .expect("a refused password is Redis refusing, not a bad URL");
    let (ms, _) = tomorrow(9);
    let d = l
        .check(&Request::new(b"a", b"m", Tier::Developer), ms)
        .unwrap();
    assert!(!d.allowed, "down closed refuses");
    assert!(l.lease_stats().unwrap().redis_down);
    let said = events(&l);
    assert!(!said.is_empty());
    for (_, t) in &said {
        assert!(!t.contains("wr0ng-pa55"), "{t}");
    }
    // A bad URL still fails at once, without the password.
    let e = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 16)
        .unwrap()
        .connect(
            "redis://u:wr0ng-pa55@127.0.0.1:notaport/0",
            LeaseOptions::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(!e.contains("wr0ng-pa55") && e.contains("u:***@"), "{e}");
    let e = tollgate::lease::check("redis://u:wr0ng-pa55@/x?bad", &LeaseOptions::default())
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string());
    assert!(!e.contains("wr0ng-pa55"), "{e}");
}

/// Keys of one table that share home slots, each asking `asks` times with
/// Redis unreachable: every key gets its own share, none another's.
#[test]
fn each_key_has_its_own_down_share() {
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    let mut l = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 4096)
        .unwrap();
    l.connect(&dead, tight(1, DownPolicy::Local)).unwrap();
    let (ms, _) = tomorrow(10);
    let mut refused = 0;
    let mut keys_refused = 0;
    for k in 0..2048 {
        let acct = format!("acct-{k}");
        let req = Request::new(acct.as_bytes(), b"m", Tier::Developer);
        let mut mine = 0;
        for n in 0..20u32 {
            let d = l.check(&req, ms).unwrap();
            if !d.allowed {
                mine += 1;
            } else {
                // Its own count: 30 - (n + 1) left of its share.
                assert_eq!(d.minute.remaining, 30 - (n + 1), "key {k} ask {n}");
            }
        }
        if mine > 0 {
            keys_refused += 1;
            refused += mine;
        }
    }
    // Before: 4 940 refusals on 799 keys.
    assert_eq!((refused, keys_refused), (0, 0));
    let s = l.lease_stats().unwrap();
    assert_eq!(s.degraded_admitted, 2048 * 20);
}

/// In exact mode nothing is held in a key's slot; each key's headers show
/// its own count, not that of a key that took its slot.
#[test]
fn exact_mode_headers_are_each_keys_own() {
    let server = Server::start();
    let mut l = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 1024)
        .unwrap();
    let mut opts = super::roomy(1);
    opts.mode = LeaseMode::Exact;
    l.connect(&server.url(), opts).unwrap();
    let (ms, _) = tomorrow(11);
    let mut wrong = 0;
    for round in 0..3u32 {
        for k in 0..600u32 {
            let acct = format!("acct-{k}");
            let asks = 1 + k % 4;
            for a in 0..asks {
                let d = l
                    .check(&Request::new(acct.as_bytes(), b"m", Tier::Developer), ms)
                    .unwrap();
                assert!(d.allowed);
                let used = round * asks + a + 1;
                if d.minute.remaining != 30 - used {
                    wrong += 1;
                }
            }
        }
    }
    // Before: 128 of 600 keys showed another key's remaining.
    assert_eq!(wrong, 0);
}

/// A client looping on 429s of a full key: Redis is asked at most about
/// once a second for it (per process), whatever the loop's rate, in both
/// modes; and once a give-back frees room, the key is admitted again
/// within that second.
#[test]
fn a_refusal_loop_costs_redis_one_call_per_second() {
    for mode in [LeaseMode::Leases, LeaseMode::Exact] {
        let server = Server::start();
        let mut l = LimiterOptions::new()
            .leases(true)
            .build(&policy(), 1024)
            .unwrap();
        let mut opts = super::roomy(1);
        opts.mode = mode;
        l.connect(&server.url(), opts).unwrap();
        let (ms, _) = tomorrow(12);
        let req = Request::new(b"looper", b"m", Tier::Developer);
        let mut admitted = 0;
        for _ in 0..30 {
            admitted += l.check(&req, ms).unwrap().allowed as u32;
        }
        assert_eq!(admitted, 30, "{mode:?}");
        let before = super::commandstat(&server, "evalsha") + super::commandstat(&server, "eval");
        let t0 = Clock::now();
        let mut refused = 0u64;
        while refused < 2_000 {
            let d = l.check(&req, ms).unwrap();
            assert!(!d.allowed, "{mode:?}");
            assert_eq!(d.minute.remaining, 0);
            assert!(d.retry_after > 0);
            refused += 1;
        }
        let secs = t0.elapsed().as_secs() + 1;
        let calls =
            super::commandstat(&server, "evalsha") + super::commandstat(&server, "eval") - before;
        // Before: 2 000 calls (one per refusal).
        assert!(
            calls <= secs + 1,
            "{mode:?}: {calls} calls for {refused} refusals in {secs} s"
        );
        let s = l.lease_stats().unwrap();
        assert!(s.refused_locally >= refused - calls, "{s:?}");
        // Room freed in Redis (as a host's give-back would): asked again
        // within the re-check interval, admitted.
        let (_, at) = tomorrow(12);
        let store =
            tollgate::store::Store::connect(&server.url(), StoreOptions::default()).unwrap();
        let tag = tollgate::store::Tag::for_key(b"looper", "m");
        store
            .give_back(&tag, &tollgate::store::OpId::new(), 5, 5, at)
            .unwrap();
        wait_for(
            Duration::from_secs(3),
            "admitted after the give-back",
            || l.check(&req, ms).unwrap().allowed,
        );
    }
}

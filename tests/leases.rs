//! Quota leases across hosts against real `redis-server` processes (a
//! single server and a 3-master Cluster, tests/redis_servers). No mock.
//!
//! A "host" is one table (a file, or a heap table) with its own joined
//! limiters, used by several threads. Decisions are dated in a minute of
//! tomorrow, so both windows are open by Redis's clock whatever the time of
//! the run (give-backs only return units to open windows).

#[path = "leases/faults.rs"]
mod faults;
#[path = "leases/hosts.rs"]
mod hosts;
#[path = "leases/in_flight.rs"]
mod in_flight;
mod redis_servers;
#[path = "leases/tokens.rs"]
mod tokens;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant as Clock};

use redis_servers::{Cluster, Server};
use tollgate::lease::{DownPolicy, LeaseMode, LeaseOptions};
use tollgate::store::{Instant, Store, StoreOptions, Tag};
use tollgate::{Error, LimitedBy, Limiter, LimiterOptions, Policy, Request, Tier};

const HOSTS: usize = 3;

fn policy() -> Policy {
    Policy::parse(
        "[models]\n\"m\" = { region = \"EU\" }\n[tiers.developer]\n\"m\" = { rpm = 30, rpd = 1000 }\n",
        "t",
    )
    .unwrap()
}

/// Minute `minute` of tomorrow, in epoch ms, and as the store's instant.
fn tomorrow(minute: u32) -> (u64, Instant) {
    let day = tollgate::now_ms() / 86_400_000 + 1;
    let ms = day * 86_400_000 + minute as u64 * 60_000 + 1_500;
    (ms, Instant::from_ms(ms).unwrap())
}

/// A deadline no loaded test machine trips: these tests count exactly, so
/// no decision may fall to the down policy.
fn roomy(hosts: u32) -> LeaseOptions {
    LeaseOptions {
        store: StoreOptions {
            deadline: Duration::from_secs(2),
            ..StoreOptions::default()
        },
        hosts,
        ..LeaseOptions::default()
    }
}

/// A tight deadline for the fault tests.
fn tight(hosts: u32, down: DownPolicy) -> LeaseOptions {
    LeaseOptions {
        store: StoreOptions {
            deadline: Duration::from_millis(50),
            ..StoreOptions::default()
        },
        hosts,
        down,
        ..LeaseOptions::default()
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as u32
    }
}

/// Three hosts as table files in one directory, each with two joined
/// handles (as two processes of the host would have).
fn file_hosts(dir: &std::path::Path, url: &str, opts: &LeaseOptions) -> Vec<Vec<Limiter>> {
    (0..HOSTS)
        .map(|h| {
            let path = dir.join(format!("host{h}.tollgate"));
            (0..2)
                .map(|_| {
                    let mut l = LimiterOptions::new()
                        .leases(true)
                        .create(true)
                        .open(&policy(), &path, 4096)
                        .unwrap();
                    l.connect(url, opts.clone()).unwrap();
                    l
                })
                .collect()
        })
        .collect()
}

fn heap_hosts(url: &str, opts: &LeaseOptions, n: usize) -> Vec<Vec<Limiter>> {
    (0..n)
        .map(|_| {
            let mut l = LimiterOptions::new()
                .leases(true)
                .build(&policy(), 4096)
                .unwrap();
            l.connect(url, opts.clone()).unwrap();
            vec![l]
        })
        .collect()
}

fn temp_dir(what: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tollgate-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every handle's threads decide `attempts` requests each on random keys
/// with random costs (1 to 4); returns the units admitted per key.
fn hammer(
    hosts: &[Vec<Limiter>],
    keys: &[String],
    limits: (u32, u32),
    now_ms: u64,
    attempts: u32,
    threads_per_handle: usize,
) -> Vec<u64> {
    let admitted: Vec<AtomicU64> = keys.iter().map(|_| AtomicU64::new(0)).collect();
    thread::scope(|s| {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for host in hosts {
            for l in host {
                for _ in 0..threads_per_handle {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let admitted = &admitted;
                    s.spawn(move || {
                        let mut rng = Rng(seed | 1);
                        for _ in 0..attempts {
                            let k = rng.below(keys.len() as u32) as usize;
                            let cost = 1 + rng.below(4);
                            let r = Request::new(keys[k].as_bytes(), b"m", Tier::Developer)
                                .cost(cost)
                                .limits(limits.0, limits.1);
                            let d = l.check(&r, now_ms).unwrap();
                            assert!(d.minute.remaining <= limits.0 && d.day.remaining <= limits.1);
                            if d.allowed {
                                admitted[k].fetch_add(cost as u64, Relaxed);
                            }
                        }
                    });
                }
            }
        }
    });
    admitted.into_iter().map(|a| a.into_inner()).collect()
}

fn disconnect_all(hosts: &mut [Vec<Limiter>]) {
    for h in hosts.iter_mut() {
        for l in h.iter_mut() {
            let st = l.lease_stats().unwrap();
            assert_eq!(st.degraded, 0, "no decision fell to the down policy");
            l.disconnect();
        }
    }
}

fn counts(store: &Store, key: &str, at: Instant) -> (u64, u64) {
    let c = store
        .counts(&Tag::for_key(key.as_bytes(), "m"), at)
        .unwrap();
    (c.minute_count, c.day_count)
}

fn commandstat(server: &Server, name: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// Under-admission at the end of a hammer that ran every key into its
/// limit: each host holds fewer units than the costliest request (4), and
/// so does the room nobody holds.
const TAIL: u64 = (HOSTS as u64 + 1) * 3;

#[test]
fn a_leased_table_never_decides_locally() {
    let dir = temp_dir("leases-flag");
    let path = dir.join("t.tollgate");
    let l = LimiterOptions::new()
        .leases(true)
        .create(true)
        .open(&policy(), &path, 64)
        .unwrap();
    assert!(l.is_leased());
    let r = Request::new(b"a", b"m", Tier::Developer);
    assert!(matches!(
        l.check(&r, 1_764_288_000_000),
        Err(Error::NotJoined)
    ));
    // Another process opening the file with the plain call sees the flag.
    let other = Limiter::open(&policy(), &path, 0, false).unwrap();
    assert!(other.is_leased());
    assert!(matches!(
        other.check(&r, 1_764_288_000_000),
        Err(Error::NotJoined)
    ));
    // A local table cannot join, nor be opened as a leased one.
    let mut local = Limiter::new(&policy(), 64).unwrap();
    assert!(matches!(
        local.connect("redis://127.0.0.1:1/0", LeaseOptions::default()),
        Err(Error::NotLeased)
    ));
    let lp = dir.join("local.tollgate");
    drop(Limiter::open(&policy(), &lp, 64, true).unwrap());
    assert!(matches!(
        LimiterOptions::new()
            .leases(true)
            .create(false)
            .open(&policy(), &lp, 0),
        Err(Error::NotLeased)
    ));
    assert!(tollgate::region_size(64).unwrap() < l.stats(0).bytes);
    // Bad options are errors with reasons, and Redis down is not one.
    let mut j = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 64)
        .unwrap();
    let zero = LeaseOptions {
        max_lease: 0,
        ..LeaseOptions::default()
    };
    assert!(matches!(
        j.connect("redis://127.0.0.1:1/0", zero),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        j.connect("http://x", LeaseOptions::default()),
        Err(Error::Store(_))
    ));
    j.connect("redis://127.0.0.1:1/0", tight(1, DownPolicy::Closed))
        .unwrap();
    assert!(j.lease_stats().unwrap().redis_down);
    // Closed: refused from the minute, which shows nothing left.
    let d = j.check(&r, 1_764_288_000_000).unwrap();
    assert!(!d.allowed && d.limited_by == LimitedBy::Minute, "{d:?}");
    assert_eq!(d.minute.remaining, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn headers_show_the_global_count_within_the_outstanding_leases() {
    let server = Server::start();
    let opts = roomy(2);
    let hosts = heap_hosts(&server.url(), &opts, 2);
    let (ms, _) = tomorrow(5);
    let r = Request::new(b"shown", b"m", Tier::Developer).limits(100, 1_000);
    for _ in 0..10 {
        assert!(hosts[0][0].check(&r, ms).unwrap().allowed);
    }
    let a = hosts[0][0].lease_stats().unwrap();
    let outstanding = a.granted_units - 10;
    // Host B has seen nothing of host A but what Redis says: the count it
    // shows covers A's 10 spends, and at most A's unspent lease beyond.
    let d = hosts[1][0].check(&r, ms).unwrap();
    assert!(d.allowed);
    let admitted = 11;
    assert!(d.minute.remaining <= 100 - admitted, "{d:?}");
    assert!(
        d.minute.remaining >= 100 - admitted - outstanding as u32,
        "{d:?}"
    );
    assert!(d.day.remaining <= 1_000 - admitted);
}

#[test]
fn idle_keys_give_their_units_back() {
    let server = Server::start();
    let opts = LeaseOptions {
        idle_after: Duration::from_millis(200),
        ..roomy(1)
    };
    let mut l = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 64)
        .unwrap();
    l.connect(&server.url(), opts.clone()).unwrap();
    let (ms, at) = tomorrow(6);
    let r = Request::new(b"idle", b"m", Tier::Developer).limits(1_000, 10_000);
    for _ in 0..40 {
        assert!(l.check(&r, ms).unwrap().allowed);
    }
    let store = Store::new(&server.url(), opts.store.clone()).unwrap();
    let t0 = Clock::now();
    // Leases of 1, 16 and 256 units were taken for 40 decisions; once idle
    // the unspent ones go back while the limiter stays joined. The lease
    // thread counts a give-back after Redis has taken it, so wait for both.
    let given_back = |l: &Limiter| {
        let s = l.lease_stats().unwrap();
        s.give_backs >= 1 && s.given_back_units == s.granted_units - 40
    };
    while counts(&store, "idle", at) != (40, 40) || !given_back(&l) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{:?} {:?}",
            counts(&store, "idle", at),
            l.lease_stats()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // And the key keeps deciding (a new lease).
    assert!(l.check(&r, ms).unwrap().allowed);
    l.disconnect();
    assert_eq!(counts(&store, "idle", at), (41, 41));
}

#[test]
fn the_lease_thread_tops_up_a_hot_key() {
    let server = Server::start();
    let opts = LeaseOptions {
        refill_interval: Duration::from_millis(200),
        ..roomy(1)
    };
    let mut l = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 64)
        .unwrap();
    l.connect(&server.url(), opts.clone()).unwrap();
    let (ms, at) = tomorrow(7);
    let r = Request::new(b"paced", b"m", Tier::Developer).limits(1_000_000, 10_000_000);
    let mut admitted = 0u64;
    let t0 = Clock::now();
    // A steady few thousand decisions a second for a second and a half:
    // the thread sees the lease fall below half and brings the next one.
    while t0.elapsed() < Duration::from_millis(1_500) {
        for _ in 0..20 {
            admitted += l.check(&r, ms).unwrap().allowed as u64;
        }
        thread::sleep(Duration::from_millis(2));
    }
    let s = l.lease_stats().unwrap();
    println!(
        "paced: {} decisions, {} refills, {} top-ups",
        s.decisions, s.refills, s.top_ups
    );
    assert!(s.top_ups >= 1, "{s:?}");
    assert_eq!(s.from_leases + s.refills, s.decisions);
    assert_eq!(admitted, s.decisions);
    l.disconnect();
    let store = Store::new(&server.url(), opts.store.clone()).unwrap();
    assert_eq!(counts(&store, "paced", at), (admitted, admitted));
}

#[test]
fn three_hosts_one_key_hold_both_windows() {
    let server = Server::start();
    let dir = temp_dir("leases-one");
    let opts = roomy(HOSTS as u32);
    let mut hosts = file_hosts(&dir, &server.url(), &opts);
    let store = Store::new(&server.url(), opts.store.clone()).unwrap();
    let keys = vec!["one-key".to_string()];
    let (rpm, rpd) = (400u32, 600u32);

    // Minute A: the minute's limit binds.
    let (a_ms, a) = tomorrow(10);
    let got_a = hammer(&hosts, &keys, (rpm, rpd), a_ms, 1_500, 2)[0];
    assert!(got_a <= rpm as u64, "admitted {got_a} > rpm {rpm}");
    assert!(got_a >= rpm as u64 - TAIL, "admitted {got_a}, rpm {rpm}");
    disconnect_all(&mut hosts);
    assert_eq!(counts(&store, &keys[0], a), (got_a, got_a));

    // Minute B: the day's limit binds.
    for h in hosts.iter_mut() {
        for l in h.iter_mut() {
            l.connect(&server.url(), opts.clone()).unwrap();
        }
    }
    let (b_ms, b) = tomorrow(11);
    let got_b = hammer(&hosts, &keys, (rpm, rpd), b_ms, 1_500, 2)[0];
    let day = got_a + got_b;
    assert!(day <= rpd as u64, "day admitted {day} > rpd {rpd}");
    assert!(day >= rpd as u64 - TAIL, "day admitted {day}, rpd {rpd}");
    let r = Request::new(b"one-key", b"m", Tier::Developer)
        .cost(4)
        .limits(rpm, rpd);
    let last = hosts[0][0].check(&r, b_ms).unwrap();
    assert!(!last.allowed);
    assert_eq!(last.limited_by, LimitedBy::Day);
    assert!(last.day.remaining < 4);
    disconnect_all(&mut hosts);
    assert_eq!(counts(&store, &keys[0], b), (got_b, day));
    let _ = std::fs::remove_dir_all(&dir);
}

fn many_keys(url: &str, hosts: &mut [Vec<Limiter>], store: &Store) {
    let keys: Vec<String> = (0..40).map(|i| format!("acct-{i}")).collect();
    let (rpm, rpd) = (30u32, 1_000u32);
    let (ms, at) = tomorrow(20);
    let got = hammer(hosts, &keys, (rpm, rpd), ms, 1_200, 2);
    disconnect_all(hosts);
    for (k, &n) in keys.iter().zip(&got) {
        assert!(n <= rpm as u64, "{k}: admitted {n} > rpm {rpm}");
        assert!(n >= rpm as u64 - TAIL, "{k}: admitted {n}, rpm {rpm}");
        assert_eq!(counts(store, k, at), (n, n), "{k}: Redis counts");
    }
    let _ = url;
}

#[test]
fn three_hosts_many_keys() {
    let server = Server::start();
    let dir = temp_dir("leases-many");
    let opts = roomy(HOSTS as u32);
    let mut hosts = file_hosts(&dir, &server.url(), &opts);
    let store = Store::new(&server.url(), opts.store.clone()).unwrap();
    many_keys(&server.url(), &mut hosts, &store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn three_hosts_many_keys_on_a_cluster() {
    let cluster = Cluster::start();
    let opts = roomy(HOSTS as u32);
    let mut hosts = heap_hosts(&cluster.url(), &opts, HOSTS);
    let store = Store::new(&cluster.url(), opts.store.clone()).unwrap();
    many_keys(&cluster.url(), &mut hosts, &store);
}

#[test]
fn far_from_the_limit_redis_sees_few_commands() {
    let server = Server::start();
    let opts = roomy(HOSTS as u32);
    let mut hosts = heap_hosts(&server.url(), &opts, HOSTS);
    let keys: Vec<String> = (0..4).map(|i| format!("busy-{i}")).collect();
    let (ms, at) = tomorrow(30);
    let before = commandstat(&server, "evalsha") + commandstat(&server, "eval");
    let threads = 2;
    let attempts = 10_000;
    let got: u64 = hammer(
        &hosts,
        &keys,
        (1_000_000, 10_000_000),
        ms,
        attempts,
        threads,
    )
    .iter()
    .sum();
    let decisions = (HOSTS * threads) as u64 * attempts as u64;
    // A top-up may still be in flight on a lease thread: Redis counts its
    // command before the thread counts it, so read both until they agree.
    let t0 = Clock::now();
    let (commands, stats) = loop {
        let stats: Vec<_> = hosts.iter().map(|h| h[0].lease_stats().unwrap()).collect();
        let after = commandstat(&server, "evalsha") + commandstat(&server, "eval");
        let again: Vec<_> = hosts.iter().map(|h| h[0].lease_stats().unwrap()).collect();
        let sent: u64 = again.iter().map(|s| s.refills + s.top_ups).sum();
        if format!("{stats:?}") == format!("{again:?}") && sent == after - before {
            break (after - before, again);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{} commands, not all refills: {stats:?}",
            after - before
        );
        thread::sleep(Duration::from_millis(20));
    };
    let refills: u64 = stats.iter().map(|s| s.refills).sum();
    let top_ups: u64 = stats.iter().map(|s| s.top_ups).sum();
    let from_leases: u64 = stats.iter().map(|s| s.from_leases).sum();
    println!(
        "leases: {decisions} decisions, {commands} EVALSHA ({:.5} per decision), {refills} refills, {top_ups} top-ups, {from_leases} from leases",
        commands as f64 / decisions as f64
    );
    assert!(
        commands as f64 <= 0.05 * decisions as f64,
        "{commands} commands for {decisions} decisions"
    );
    assert_eq!(refills + top_ups, commands, "every command was a refill");
    assert_eq!(from_leases + refills, decisions);
    disconnect_all(&mut hosts);
    // Far from the limit everything was admitted, and after the give-backs
    // Redis holds exactly that.
    let store = Store::new(&server.url(), opts.store.clone()).unwrap();
    let mut total = 0;
    for k in &keys {
        let (m, d) = counts(&store, k, at);
        assert_eq!(m, d);
        total += m;
    }
    assert_eq!(total, got);

    // Exact mode: one command per decision, nothing held.
    let exact = LeaseOptions {
        mode: LeaseMode::Exact,
        ..roomy(1)
    };
    let mut one = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 64)
        .unwrap();
    one.connect(&server.url(), exact).unwrap();
    let before = commandstat(&server, "evalsha") + commandstat(&server, "eval");
    let mut admitted = 0u64;
    for i in 0..300u32 {
        let cost = 1 + i % 3;
        let r = Request::new(b"exact", b"m", Tier::Developer)
            .cost(cost)
            .limits(500, 10_000);
        let d = one.check(&r, ms).unwrap();
        if d.allowed {
            admitted += cost as u64;
            // The headers show Redis's count after this decision.
            assert_eq!(d.minute.remaining as u64, 500 - admitted);
        }
    }
    let after = commandstat(&server, "evalsha") + commandstat(&server, "eval");
    // One command per decision, but for refusals of a cost Redis had just
    // refused (the window full for it): those are refused locally.
    let local = one.lease_stats().unwrap().refused_locally;
    assert_eq!(after - before + local, 300);
    assert!(local < 300 - 166, "{local}");
    // Costs 1, 2, 3 in turn ask for 600: exact refuses only what cannot fit.
    assert!((498..=500).contains(&admitted), "{admitted}");
    one.disconnect();
    assert_eq!(counts(&store, "exact", at), (admitted, admitted));
}

/// Runs decisions on `keys` from every host's threads until `stop`,
/// returning the longest decision (no decision may hang).
fn background_load(
    hosts: &Arc<Vec<Vec<Limiter>>>,
    keys: &'static [&'static str],
    now_ms: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Duration>> {
    (0..hosts.len())
        .map(|h| {
            let hosts = hosts.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut longest = Duration::ZERO;
                let mut rng = Rng(h as u64 * 7919 + 13);
                while !stop.load(Relaxed) {
                    let k = keys[rng.below(keys.len() as u32) as usize];
                    let r = Request::new(k.as_bytes(), b"m", Tier::Developer)
                        .cost(1 + rng.below(2))
                        .limits(100_000, 1_000_000);
                    let t = Clock::now();
                    hosts[h][0].check(&r, now_ms).unwrap();
                    longest = longest.max(t.elapsed());
                }
                longest
            })
        })
        .collect()
}

fn wait_recovered(hosts: &[Vec<Limiter>]) {
    let t0 = Clock::now();
    loop {
        let done = hosts.iter().all(|h| {
            let s = h[0].lease_stats().unwrap();
            !s.redis_down && s.pending == 0
        });
        if done {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "pushes not done 20 s after Redis came back: {:?}",
            hosts[0][0].lease_stats()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A generous bound on one decision: the deadline is 50 ms; a loaded
/// two-core machine adds scheduling delays, never seconds.
const DECISION_BOUND: Duration = Duration::from_secs(1);

#[test]
fn redis_killed_and_restarted_under_load() {
    let mut server = Server::start();
    let hosts = Arc::new(heap_hosts(
        &server.url(),
        &tight(HOSTS as u32, DownPolicy::Local),
        HOSTS,
    ));
    let (ms, at) = tomorrow(40);
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(&hosts, &["warm-a", "warm-b", "warm-c"], ms, &stop);
    thread::sleep(Duration::from_millis(300));
    server.kill();

    // While Redis is down, each host admits its share (rpm / hosts) of a
    // key it holds no lease for, counted across its threads.
    let (rpm, rpd) = (300u32, 3_000u32);
    let share = (rpm / HOSTS as u32) as u64;
    let mut down_admitted = 0;
    thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|h| {
                s.spawn(move || {
                    let mut n = 0u64;
                    for _ in 0..2 * share {
                        let r = Request::new(b"while-down", b"m", Tier::Developer).limits(rpm, rpd);
                        let t = Clock::now();
                        let d = h[0].check(&r, ms).unwrap();
                        assert!(t.elapsed() < DECISION_BOUND, "{:?}", t.elapsed());
                        n += d.allowed as u64;
                    }
                    n
                })
            })
            .collect();
        for h in handles {
            let n = h.join().unwrap();
            assert_eq!(n, share, "a host admits its share while Redis is down");
            down_admitted += n;
        }
    });
    for h in hosts.iter() {
        let s = h[0].lease_stats().unwrap();
        assert!(s.redis_down && s.degraded >= 2 * share && s.degraded_admitted >= share);
    }

    // Back, empty (no persistence): what was admitted while it was down is
    // pushed, exactly once.
    server.restart();
    wait_recovered(&hosts);
    let store = Store::new(&server.url(), StoreOptions::default()).unwrap();
    assert_eq!(
        counts(&store, "while-down", at),
        (down_admitted, down_admitted)
    );
    stop.store(true, Relaxed);
    for l in load {
        let longest = l.join().unwrap();
        assert!(longest < DECISION_BOUND, "a decision took {longest:?}");
    }
    let s = hosts[0][0].lease_stats().unwrap();
    assert!(s.pushes >= 1 && s.pushed_units >= share);
}

#[test]
fn a_stalled_redis_leaves_held_leases_flowing() {
    let server = Server::start();
    let mut l = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 1024)
        .unwrap();
    l.connect(&server.url(), tight(1, DownPolicy::Local))
        .unwrap();
    let (ms, at) = tomorrow(50);
    let hot = Request::new(b"hot", b"m", Tier::Developer).limits(1_000_000, 10_000_000);
    let mut hot_admitted = 0u64;
    for _ in 0..5_000 {
        hot_admitted += l.check(&hot, ms).unwrap().allowed as u64;
    }
    let before = l.lease_stats().unwrap();

    let addr = server.url();
    let sleeper = thread::spawn(move || {
        let mut c = redis::Client::open(addr).unwrap().get_connection().unwrap();
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(1)
            .query::<()>(&mut c)
            .unwrap();
    });
    thread::sleep(Duration::from_millis(150));
    // Held units keep deciding with no round trip.
    let t = Clock::now();
    for _ in 0..2_000 {
        hot_admitted += l.check(&hot, ms).unwrap().allowed as u64;
    }
    assert!(t.elapsed() < DECISION_BOUND);
    let during = l.lease_stats().unwrap();
    assert_eq!(during.from_leases - before.from_leases, 2_000);
    // Keys with nothing held wait at most the deadline, then the policy.
    let mut cold_admitted: HashMap<String, u64> = HashMap::new();
    for i in 0..6 {
        let k = format!("cold-{i}");
        let r = Request::new(k.as_bytes(), b"m", Tier::Developer).limits(100, 1_000);
        let t = Clock::now();
        let d = l.check(&r, ms).unwrap();
        assert!(t.elapsed() < DECISION_BOUND, "{:?}", t.elapsed());
        *cold_admitted.entry(k).or_default() += d.allowed as u64;
    }
    let s = l.lease_stats().unwrap();
    assert!(s.degraded >= 1 && s.redis_down);
    sleeper.join().unwrap();

    // After the stall: the timed-out grants are recovered and given back,
    // the decisions made by the policy pushed.
    let hosts = vec![vec![l]];
    wait_recovered(&hosts);
    let mut l = hosts.into_iter().next().unwrap().pop().unwrap();
    l.disconnect();
    let store = Store::new(&server.url(), StoreOptions::default()).unwrap();
    for (k, n) in &cold_admitted {
        assert_eq!(counts(&store, k, at), (*n, *n), "{k}");
    }
    // The hot key's units held across the stall are not given back (Redis
    // may have restarted empty): Redis counts at least what was admitted.
    let (m, d) = counts(&store, "hot", at);
    assert!(m >= hot_admitted && d >= hot_admitted);
}

/// A key of a fault test and its limits.
struct FaultKey {
    name: String,
    rpm: u32,
    rpd: u32,
}

impl FaultKey {
    fn new(name: String, rpm: u32, rpd: u32) -> FaultKey {
        FaultKey { name, rpm, rpd }
    }

    /// What `DownPolicy::Local` lets the hosts admit beyond the limit in
    /// one window: each host's share, `floor(L / H)`.
    fn down_bound(&self) -> u64 {
        self.rpm as u64 + HOSTS as u64 * (self.rpm / HOSTS as u32) as u64
    }
}

/// What a fault load saw: units admitted per key, decisions made, and the
/// longest decision.
struct Load {
    admitted: Vec<u64>,
    longest: Duration,
}

/// Decides random keys (costs 1 or 2) on handle `handle` of every host,
/// `threads` threads each, until `stop`; `decided` counts decisions as
/// they return, so the test can see them keep coming during a fault.
fn fault_load(
    hosts: &[Vec<Limiter>],
    handle: usize,
    keys: &[FaultKey],
    now_ms: u64,
    threads: usize,
    stop: &AtomicBool,
    decided: &AtomicU64,
) -> Load {
    let admitted: Vec<AtomicU64> = keys.iter().map(|_| AtomicU64::new(0)).collect();
    let longest = thread::scope(|s| {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut handles = Vec::new();
        for host in hosts {
            let l = &host[handle];
            for _ in 0..threads {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let admitted = &admitted;
                handles.push(s.spawn(move || {
                    let mut rng = Rng(seed | 1);
                    let mut longest = Duration::ZERO;
                    while !stop.load(Relaxed) {
                        let k = rng.below(keys.len() as u32) as usize;
                        let cost = 1 + rng.below(2);
                        let r = Request::new(keys[k].name.as_bytes(), b"m", Tier::Developer)
                            .cost(cost)
                            .limits(keys[k].rpm, keys[k].rpd);
                        let t = Clock::now();
                        let d = l.check(&r, now_ms).unwrap();
                        longest = longest.max(t.elapsed());
                        decided.fetch_add(1, Relaxed);
                        if d.allowed {
                            admitted[k].fetch_add(cost as u64, Relaxed);
                        }
                    }
                    longest
                }));
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap_or_default()
    });
    Load {
        admitted: admitted.into_iter().map(|a| a.into_inner()).collect(),
        longest,
    }
}

/// Waits until every handle of every host has answered Redis since the
/// fault and has no work left for it (pushes, give-backs, recoveries).
fn wait_all_recovered(hosts: &[Vec<Limiter>], within: Duration) {
    let t0 = Clock::now();
    loop {
        let done = hosts.iter().flatten().all(|l| {
            let s = l.lease_stats().unwrap();
            !s.redis_down && s.pending == 0
        });
        if done {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "not recovered {within:?} after the fault: {:?}",
            hosts
                .iter()
                .flatten()
                .map(|l| l.lease_stats().unwrap())
                .collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Units every handle dropped rather than gave back after an outage (they
/// stay counted in Redis, or Redis lost them).
fn dropped(hosts: &[Vec<Limiter>]) -> u64 {
    hosts
        .iter()
        .flatten()
        .map(|l| l.lease_stats().unwrap().dropped_units)
        .sum()
}

/// Whether a PING on a new connection goes unanswered for 200 ms (the
/// server is paused for every command).
fn still_paused(server: &Server) -> bool {
    let quick = Duration::from_millis(200);
    let Ok(client) = redis::Client::open(server.url()) else {
        return false;
    };
    match client.get_connection_with_timeout(quick) {
        Err(e) => e.is_timeout(),
        Ok(mut c) => {
            c.set_read_timeout(Some(quick)).unwrap();
            matches!(redis::cmd("PING").exec(&mut c), Err(e) if e.is_timeout())
        }
    }
}

/// `CLIENT PAUSE <mode>` while three hosts (two handles each) hammer keys
/// near their limit and far from it: held leases keep deciding, keys that
/// need Redis wait at most the deadline and follow `DownPolicy::Local`, and
/// once the pause ends every unit is accounted for: Redis counts exactly
/// what was admitted plus what was dropped (held across the outage, so not
/// given back), in both windows.
fn client_pause_under_load(mode: &str, minute: u32) {
    let server = Server::start();
    let dir = temp_dir(&format!("leases-pause-{mode}"));
    // Idle keys give their units back while the hosts stay joined (their
    // stats, which count the dropped units, end with the link); the held
    // keys stay busy for much less than this.
    let opts = LeaseOptions {
        idle_after: Duration::from_secs(2),
        ..tight(HOSTS as u32, DownPolicy::Local)
    };
    let mut hosts = file_hosts(&dir, &server.url(), &opts);
    let (ms, at) = tomorrow(minute);
    // Handle 0 of each host runs the load; handle 1 (the host's other
    // process) decides the held and the cold key, so its stats are theirs.
    let mut keys: Vec<FaultKey> = (0..6)
        .map(|i| FaultKey::new(format!("near-{i}"), 240, 100_000))
        .collect();
    keys.extend((0..6).map(|i| FaultKey::new(format!("far-{i}"), 1_000_000, 10_000_000)));
    let held = |h: usize| format!("held-{h}");
    let held_limits = (1_000_000u32, 10_000_000u32);
    let (cold_rpm, cold_rpd) = (300u32, 3_000u32);
    let share = (cold_rpm / HOSTS as u32) as u64;
    let stop = AtomicBool::new(false);
    let decided = AtomicU64::new(0);
    let mut held_admitted = [0u64; HOSTS];
    let mut cold_admitted = [0u64; HOSTS];
    let mut admin = server.conn();

    let load = thread::scope(|s| {
        let load = s.spawn(|| fault_load(&hosts, 0, &keys, ms, 2, &stop, &decided));
        // Each host's second process takes a large lease of its held key.
        for (h, host) in hosts.iter().enumerate() {
            let name = held(h);
            let r = Request::new(name.as_bytes(), b"m", Tier::Developer)
                .limits(held_limits.0, held_limits.1);
            for _ in 0..5_000 {
                held_admitted[h] += host[1].check(&r, ms).unwrap().allowed as u64;
            }
        }
        thread::sleep(Duration::from_millis(200));
        let before: Vec<_> = hosts.iter().map(|h| h[1].lease_stats().unwrap()).collect();
        // WRITE: long enough that what follows happens inside it on any
        // machine, and ended by CLIENT UNPAUSE (not a write). ALL pauses
        // UNPAUSE too, so it ends by itself; the phase below is checked to
        // have run inside it.
        let pause_ms = if mode == "ALL" { 2_000 } else { 10_000 };
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(pause_ms)
            .arg(mode)
            .exec(&mut admin)
            .unwrap();
        let paused_at = decided.load(Relaxed);
        let pause_t0 = Clock::now();
        thread::scope(|s2| {
            let per_host: Vec<_> = hosts
                .iter()
                .enumerate()
                .map(|(h, host)| {
                    s2.spawn(move || {
                        let name = held(h);
                        let r = Request::new(name.as_bytes(), b"m", Tier::Developer)
                            .limits(held_limits.0, held_limits.1);
                        let mut got = (0u64, 0u64);
                        for _ in 0..2_000 {
                            let t = Clock::now();
                            got.0 += host[1].check(&r, ms).unwrap().allowed as u64;
                            assert!(t.elapsed() < DECISION_BOUND, "{:?}", t.elapsed());
                        }
                        for _ in 0..2 * share {
                            let r = Request::new(b"cold", b"m", Tier::Developer)
                                .limits(cold_rpm, cold_rpd);
                            let t = Clock::now();
                            got.1 += host[1].check(&r, ms).unwrap().allowed as u64;
                            assert!(t.elapsed() < DECISION_BOUND, "{:?}", t.elapsed());
                        }
                        got
                    })
                })
                .collect();
            for (h, j) in per_host.into_iter().enumerate() {
                let (held_n, cold_n) = j.join().unwrap();
                held_admitted[h] += held_n;
                cold_admitted[h] = cold_n;
            }
        });
        let phase = pause_t0.elapsed();
        if mode == "ALL" {
            assert!(
                still_paused(&server),
                "this machine took {phase:?} for the paused phase: longer than the pause"
            );
        }
        for (h, host) in hosts.iter().enumerate() {
            let s = host[1].lease_stats().unwrap();
            // The held key decided from its lease, no round trip.
            assert_eq!(s.from_leases - before[h].from_leases, 2_000, "host {h}");
            assert_eq!(held_admitted[h], 7_000, "host {h}");
            // The cold key needed Redis: each of its decisions followed the
            // down policy, which admits the host's share and no more.
            assert_eq!(
                s.degraded - before[h].degraded,
                2 * share,
                "host {h}: {s:?}"
            );
            assert_eq!(s.degraded_admitted - before[h].degraded_admitted, share);
            assert_eq!(cold_admitted[h], share, "host {h}");
            assert!(s.redis_down, "host {h}: {s:?}");
        }
        // The load meets the pause a while longer (breaker trips, probes):
        // WRITE is ended after 1.5 s, ALL ends by itself.
        thread::sleep(Duration::from_millis(1_500).saturating_sub(pause_t0.elapsed()));
        // By now the load has met the pause too: its keys held at their
        // limit ask Redis again after the re-check interval (1 s), which
        // the paused phase above may end before.
        for (h, host) in hosts.iter().enumerate() {
            let s0 = host[0].lease_stats().unwrap();
            assert!(
                s0.degraded >= 1 && s0.store.failures >= 1,
                "host {h}: {s0:?}"
            );
        }
        let during = decided.load(Relaxed) - paused_at;
        if mode == "ALL" {
            // Answered once the pause is over.
            redis::cmd("PING").exec(&mut admin).unwrap();
        } else {
            redis::cmd("CLIENT")
                .arg("UNPAUSE")
                .exec(&mut admin)
                .unwrap();
        }
        let unpaused = Clock::now();
        let paused_for = unpaused - pause_t0;
        wait_all_recovered(&hosts, Duration::from_secs(15));
        let recovered = unpaused.elapsed();
        stop.store(true, Relaxed);
        let load = load.join().unwrap();
        println!(
            "CLIENT PAUSE {mode}: paused {paused_for:?} (phase {phase:?}), {} decisions under load, {during} while paused, longest {:?}, every handle back on Redis {recovered:?} after the pause",
            decided.load(Relaxed),
            load.longest
        );
        load
    });
    assert!(
        load.longest < DECISION_BOUND,
        "a decision took {:?}",
        load.longest
    );
    // The test's own reads: a deadline no loaded machine trips.
    let store = Store::new(&server.url(), roomy(1).store).unwrap();
    let mut names: Vec<(String, u64, u64)> = keys
        .iter()
        .zip(&load.admitted)
        .map(|(k, &n)| (k.name.clone(), n, k.down_bound()))
        .collect();
    names.extend((0..HOSTS).map(|h| (held(h), held_admitted[h], held_limits.0 as u64)));
    let cold: u64 = cold_admitted.iter().sum();
    names.push(("cold".to_string(), cold, cold));
    let (redis_total, admitted_total, dropped) =
        settle(&hosts, &store, at, &names, Duration::from_secs(15));
    let degraded: u64 = hosts
        .iter()
        .map(|h| h[0].lease_stats().unwrap().degraded)
        .sum();
    println!(
        "CLIENT PAUSE {mode}: {degraded} load decisions by the down policy; Redis {redis_total} = admitted {admitted_total} + dropped {dropped}"
    );
    assert_eq!(
        counts(&store, "cold", at),
        (cold, cold),
        "cold: pushed exactly"
    );
    for h in hosts.iter_mut() {
        for l in h.iter_mut() {
            l.disconnect();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until the hosts hold no units (idle keys give theirs back while
/// joined: the stats that count dropped units live as long as the link),
/// that is until Redis counts exactly what was admitted plus what the
/// hosts dropped; on the way checks each key: both windows equal, Redis at
/// least what was admitted, admitted within `bound`. Returns (Redis,
/// admitted, dropped) summed over the keys.
fn settle(
    hosts: &[Vec<Limiter>],
    store: &Store,
    at: Instant,
    keys: &[(String, u64, u64)],
    within: Duration,
) -> (u64, u64, u64) {
    let admitted: u64 = keys.iter().map(|k| k.1).sum();
    let t0 = Clock::now();
    loop {
        let pending: u64 = hosts
            .iter()
            .flatten()
            .map(|l| l.lease_stats().unwrap().pending)
            .sum();
        let dropped = dropped(hosts);
        let now: Vec<(u64, u64)> = keys.iter().map(|k| counts(store, &k.0, at)).collect();
        let redis: u64 = now.iter().map(|c| c.0).sum();
        if pending == 0 && redis == admitted + dropped {
            for ((name, n, bound), (m, d)) in keys.iter().zip(now) {
                assert_eq!(m, d, "{name}: both windows");
                assert!(m >= *n, "{name}: Redis {m} < admitted {n}");
                assert!(*n <= *bound, "{name}: admitted {n} > {bound}");
            }
            return (redis, admitted, dropped);
        }
        assert!(
            t0.elapsed() < within,
            "Redis counts {redis}, admitted {admitted} + dropped {dropped}, {pending} pending"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn client_pause_write_under_load() {
    client_pause_under_load("WRITE", 60);
}

#[test]
fn client_pause_all_under_load() {
    client_pause_under_load("ALL", 61);
}

/// Sums of what every handle's lease layer reports.
fn total(hosts: &[Vec<Limiter>], f: impl Fn(&tollgate::lease::LeaseStats) -> u64) -> u64 {
    hosts
        .iter()
        .flatten()
        .map(|l| f(&l.lease_stats().unwrap()))
        .sum()
}

/// A master of a Cluster with replicas is SIGKILLed while three hosts
/// hammer keys on every shard; its replica is promoted. No decision waits
/// longer than the bound, decisions keep coming all along (the other shards
/// answer, the failed shard's keys follow the down policy until the
/// promotion and Redis after it), and the counts after recovery are what
/// asynchronous replication allows: on the shards that stayed up Redis
/// counts at least what was admitted; on the failed one the replica may
/// lack the grants the dead master answered in its last moments (measured
/// and printed; the docs state the figure).
#[test]
fn a_cluster_master_killed_fails_over_to_its_replica() {
    let mut cluster = Cluster::start_with_replicas();
    // The healthy masters serve their own slots while the dead one is
    // failed: with Redis's default (`yes`) every node answers CLUSTERDOWN
    // from the dead master being marked failed until the promotion, and
    // every shard's keys fall to the down policy whatever the breakers.
    cluster.serve_partial_coverage();
    // A deadline a loaded machine does not miss on the healthy shards: a
    // missed one rightly sends a healthy key to the down policy too (its
    // share on top of the limit), which is not what this test is about.
    // The dead master's calls fail at once (connection refused), whatever
    // the deadline.
    let mut opts = LeaseOptions {
        idle_after: Duration::from_secs(2),
        ..tight(HOSTS as u32, DownPolicy::Local)
    };
    opts.store.deadline = Duration::from_millis(400);
    let hosts = heap_hosts(&cluster.url(), &opts, HOSTS);
    let (ms, at) = tomorrow(70);
    // Keys near their limit (every decision a round trip once there) and
    // far from it (leases), on every shard.
    let keys: Vec<FaultKey> = (0..36)
        .map(|i| match i % 2 {
            0 => FaultKey::new(format!("fo-near-{i}"), 240, 100_000),
            _ => FaultKey::new(format!("fo-far-{i}"), 1_000_000, 10_000_000),
        })
        .collect();
    let owner_of = |cluster: &Cluster, name: &str| {
        let (m, _) = tollgate::store::key_names(&Tag::for_key(name.as_bytes(), "m"), at).unwrap();
        cluster.owner_of(cluster.slot_of(&m))
    };
    let owner: Vec<usize> = keys.iter().map(|k| owner_of(&cluster, &k.name)).collect();
    let victim = owner[0];
    let on_victim: Vec<bool> = owner.iter().map(|&o| o == victim).collect();
    assert!(on_victim.iter().filter(|&&v| v).count() >= 4, "{owner:?}");
    assert!(on_victim.iter().filter(|&&v| !v).count() >= 4, "{owner:?}");
    let replicas = cluster.replicas_of(victim);
    assert!(!replicas.is_empty());

    let stop = AtomicBool::new(false);
    let decided = AtomicU64::new(0);
    let (load, failover, promoted, during, answered_during) = thread::scope(|s| {
        let load = s.spawn(|| fault_load(&hosts, 0, &keys, ms, 2, &stop, &decided));
        thread::sleep(Duration::from_millis(500));
        let answered = || total(&hosts, |s| s.store.answered);
        let (decided_before, answered_before) = (decided.load(Relaxed), answered());
        let t_kill = Clock::now();
        cluster.nodes[victim].kill();
        let promoted = cluster.wait_failover(&replicas, Duration::from_secs(15));
        let failover = t_kill.elapsed();
        let during = decided.load(Relaxed) - decided_before;
        let answered_during = answered() - answered_before;
        // Keep deciding on the new topology a while, then let the hosts
        // finish their pushes and recoveries.
        thread::sleep(Duration::from_millis(500));
        wait_all_recovered(&hosts, Duration::from_secs(15));
        stop.store(true, Relaxed);
        (
            load.join().unwrap(),
            failover,
            promoted,
            during,
            answered_during,
        )
    });
    assert!(
        load.longest < DECISION_BOUND,
        "a decision took {:?}",
        load.longest
    );
    // Decisions kept coming between the kill and the promotion, and some
    // of them were answered by Redis (the shards that stayed up).
    assert!(
        during > 0 && answered_during > 0,
        "{during} {answered_during}"
    );
    assert!(
        total(&hosts, |s| s.degraded) > 0,
        "the failed shard's keys fell to the down policy"
    );

    // The failed shard's keys are decided by Redis again: a key never seen
    // before gets its lease from the promoted master.
    let fresh = (0..)
        .map(|i| format!("fo-after-{i}"))
        .find(|k| owner_of(&cluster, k) == promoted)
        .unwrap();
    let store = Store::new(&cluster.url(), roomy(1).store).unwrap();
    let r = Request::new(fresh.as_bytes(), b"m", Tier::Developer).limits(1_000, 10_000);
    let t0 = Clock::now();
    loop {
        let before = hosts[0][0].lease_stats().unwrap();
        let d = hosts[0][0].check(&r, ms).unwrap();
        let after = hosts[0][0].lease_stats().unwrap();
        if after.degraded == before.degraded {
            assert!(
                d.allowed && after.refills == before.refills + 1,
                "{after:?}"
            );
            break;
        }
        // A 50 ms deadline missed on a loaded machine: try again.
        assert!(t0.elapsed() < Duration::from_secs(10), "{after:?}");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(counts(&store, &fresh, at).0 >= 1);

    // Quiet: every key's units go back once idle (2 s), while the hosts
    // are still joined, so their stats still count what they dropped.
    thread::sleep(opts.idle_after + opts.idle_after / 2);
    let t0 = Clock::now();
    while total(&hosts, |s| s.pending) > 0 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        thread::sleep(Duration::from_millis(50));
    }
    let dropped = dropped(&hosts);
    let degraded = total(&hosts, |s| s.degraded);
    let (mut redis_total, mut admitted_total) = (0u64, 0u64);
    let (mut short_keys, mut short_units) = (0, 0u64);
    // Units admitted beyond the limit (the down share) on the failed shard
    // and on the others.
    let mut over = [0u64; 2];
    for ((k, &n), &v) in keys.iter().zip(&load.admitted).zip(&on_victim) {
        let (m, d) = counts(&store, &k.name, at);
        assert_eq!(m, d, "{}: both windows", k.name);
        redis_total += m;
        admitted_total += n;
        if v {
            if m < n {
                short_keys += 1;
                short_units += n - m;
            }
        } else {
            // A shard that stayed up lost nothing.
            assert!(m >= n, "{}: Redis {m} < admitted {n}", k.name);
        }
        over[v as usize] += n.saturating_sub(k.rpm as u64);
        if !v {
            // Issue 11: a healthy shard's keys kept deciding from Redis
            // (a breaker per slot): none was admitted past its limit by
            // the down policy.
            assert!(
                n <= k.rpm as u64,
                "{}: admitted {n} > rpm {}",
                k.name,
                k.rpm
            );
        }
        // Within the limit plus the down policy's share, and what the
        // replica lacked of this key, which Redis then granted again.
        assert!(
            n <= k.down_bound() + n.saturating_sub(m),
            "{}: admitted {n}, Redis {m}",
            k.name
        );
    }
    println!(
        "failover: promoted node {promoted} {failover:?} after the kill; {during} decisions meanwhile, {answered_during} answered by Redis; longest decision {:?}; {degraded} by the down policy in all",
        load.longest
    );
    println!(
        "failover: Redis {redis_total}, admitted {admitted_total}, dropped {dropped}: {} units unaccounted (+ charged and never admitted, - lost by the replica); failed shard keys short of admitted: {short_keys} ({short_units} units); admitted over rpm (the down share) on the other shards {}, on the failed one {}",
        redis_total as i64 - (admitted_total + dropped) as i64,
        over[0],
        over[1]
    );
}

/// `lease_stats` while Redis is down and the lease thread moves the
/// down-mode admissions to its queue: reading the stats took the queue's
/// lock and then the admissions' lock, the thread takes them the other way
/// round, and the two deadlocked (then every decision that needed either
/// lock hung: found by the failover test). Stats are read in a loop from
/// two threads while two others decide; all must finish.
#[test]
fn reading_lease_stats_while_redis_is_down_never_deadlocks() {
    let url = format!("redis://127.0.0.1:{}/0", redis_servers::free_port());
    let opts = LeaseOptions {
        // The thread's tick is a quarter of this: 10 ms.
        refill_interval: Duration::from_millis(40),
        ..tight(1, DownPolicy::Open)
    };
    let mut l = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 4096)
        .unwrap();
    l.connect(&url, opts).unwrap();
    let l = Arc::new(l);
    let (ms, _) = tomorrow(80);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for t in 0..4u64 {
        let (l, stop, done) = (l.clone(), stop.clone(), done_tx.clone());
        workers.push(thread::spawn(move || {
            let mut rng = Rng(t * 7919 + 1);
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                if t < 2 {
                    let k = format!("down-{}", rng.below(64));
                    let r = Request::new(k.as_bytes(), b"m", Tier::Developer).limits(1_000, 10_000);
                    assert!(l.check(&r, ms).unwrap().allowed);
                } else {
                    let _ = l.lease_stats().unwrap();
                }
                n += 1;
            }
            done.send(n).unwrap();
        }));
    }
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Relaxed);
    for _ in 0..4 {
        // Far more than any scheduling delay: a thread that does not
        // finish is stuck on a lock.
        let n = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a thread is stuck: lease_stats and the lease thread deadlocked");
        assert!(n > 0);
    }
    for w in workers {
        w.join().unwrap();
    }
    let s = l.lease_stats().unwrap();
    assert!(s.redis_down && s.degraded_admitted == s.decisions, "{s:?}");
}

#[test]
fn hosts_left_to_redis_are_the_live_tables() {
    let server = Server::start();
    let dir = temp_dir("leases-hosts");
    let auto = LeaseOptions {
        hosts: 0,
        ..roomy(1)
    };
    let wait_for = |l: &Limiter, n: u32| {
        let t0 = Clock::now();
        while l.lease_stats().unwrap().hosts != n {
            assert!(
                t0.elapsed() < Duration::from_secs(8),
                "hosts stayed {} (want {n})",
                l.lease_stats().unwrap().hosts
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    let (fa, fb) = (dir.join("a.tollgate"), dir.join("b.tollgate"));
    let mut a = LimiterOptions::new()
        .leases(true)
        .create(true)
        .open(&policy(), &fa, 64)
        .unwrap();
    a.connect(&server.url(), auto.clone()).unwrap();
    assert_eq!(a.lease_stats().unwrap().hosts, 1);
    // A second process on host A's table is host A again, not a new host.
    let mut a2 = LimiterOptions::new()
        .leases(true)
        .create(false)
        .open(&policy(), &fa, 0)
        .unwrap();
    a2.connect(&server.url(), auto.clone()).unwrap();
    assert_eq!(a2.lease_stats().unwrap().hosts, 1);
    // Host B counts both at its first beat; A learns it at its next.
    let mut b = LimiterOptions::new()
        .leases(true)
        .create(true)
        .open(&policy(), &fb, 64)
        .unwrap();
    b.connect(&server.url(), auto.clone()).unwrap();
    assert_eq!(b.lease_stats().unwrap().hosts, 2);
    wait_for(&a, 2);
    // A configured count is used as given.
    let mut fixed = LimiterOptions::new()
        .leases(true)
        .build(&policy(), 64)
        .unwrap();
    fixed.connect(&server.url(), roomy(5)).unwrap();
    assert_eq!(fixed.lease_stats().unwrap().hosts, 5);
    wait_for(&a, 2);
    // B leaves: A is alone again.
    b.disconnect();
    wait_for(&a, 1);
    // With Redis gone, the Local share divides by the count last seen.
    b.connect(&server.url(), auto.clone()).unwrap();
    wait_for(&a, 2);
    drop(server);
    let (ms, _) = tomorrow(70);
    let r = Request::new(b"hosts-down", b"m", Tier::Developer).limits(100, 1_000);
    let admitted = (0..200)
        .filter(|_| a.check(&r, ms).unwrap().allowed)
        .count();
    assert_eq!(admitted, 50, "the Local share of 2 hosts");
    a.disconnect();
    a2.disconnect();
    b.disconnect();
    let _ = std::fs::remove_dir_all(&dir);
}

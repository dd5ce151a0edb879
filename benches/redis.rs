//! One quota across hosts, measured (issue 11): tollgate's local table,
//! its quota leases and its exact mode, an Envoy-ratelimit-style pipeline
//! and Python `limits` over Redis, against one real `redis-server`, on the
//! same keys and thread counts, in one run.
//!
//!     cargo bench --features redis --bench redis
//!     RBENCH_SECONDS=0.2 RBENCH_WARM=0.1 RBENCH_WARM_MAX=0.3 cargo bench --features redis --bench redis
//!
//! The second line is a quick check that it works, not a measurement;
//! `RBENCH_CASES=<text>` keeps only the loads whose name contains it,
//! `RBENCH_SYSTEMS=<text>` only the systems (the others show "skipped").
//! The program starts its own `redis-server` (127.0.0.1, a free port, no
//! persistence; killed at the end, tests/redis_servers) and runs `limits`
//! through benches/redis_limits.py with `$TOLLGATE_PYTHON`, else the
//! checkout's .venv, else `python3` (it needs `limits` and `redis` from
//! tests/requirements.txt).
//!
//! Method. Every case starts from an empty Redis (`FLUSHALL`; scripts stay
//! loaded) and the same account names. Its threads warm up for
//! `RBENCH_WARM` seconds (default 1: keys bound, connections made; leases
//! far from the limit go on until their grants per decision settle, at
//! most `RBENCH_WARM_MAX`, default 30: see `measure`),
//! then all start together and decide for `RBENCH_SECONDS` (default 3),
//! cycling through the keys from their own offsets. Decisions/s = all
//! threads' decisions / (last end - first start). Latency:
//! `std::time::Instant` around single decisions, every decision for the
//! systems that make a round trip each time (leases near the limit too),
//! every 64th for the local table, leases far from the limit and the
//! tollgate systems in the refusal loop (timing each would cost more than
//! the decision); each
//! figure includes about one clock read, printed in the header. Commands
//! per decision, from `INFO commandstats` after the timed phase less
//! before: "sent" is what the clients sent, "run" all Redis ran, the
//! scripts' own calls included (see `spent`); the leases' give-backs at
//! disconnect come after and are noted apart. Tollgate decisions are dated
//! in one minute of tomorrow (so no window ends during a case and
//! give-backs find their window open), the Envoy keys are that minute's
//! and day's; `limits` reads its own clock (its windows start at the first
//! hit) and warms up for `RBENCH_WARM` only.
//!
//! The near-limit case gives each of 10 000 keys a minute limit of
//! 2 x `HOSTS` with leases sized for `HOSTS` hosts: the room per host is
//! below 2 from the start, so every lease is 1 unit, one round trip per
//! decision. Each thread stops at its share of the limit (nothing is
//! refused) or at the time, whichever is first, and there is no warm-up.
//!
//! The refusal loop is a client retrying on 429s: one key, minute limit
//! `NEAR_RPM`, used up first by the system's own admissions (the warm-up
//! decides on the key until the first refusal), then one thread decides
//! on it for the timed phase and every decision is refused. Leases and
//! exact mode refuse it locally for up to a second after Redis last
//! showed the window full (src/lease/decide.rs `known_full`), so they
//! should send about one command per second; the Envoy-style pipeline
//! still charges each refused request (4 commands), and `limits` stops
//! at the minute's `hit` (1 script). The note gives commands per second.

use std::collections::HashMap;
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use tollgate::lease::{LeaseMode, LeaseOptions, LeaseStats};
use tollgate::store::StoreOptions;
use tollgate::{Limiter, LimiterOptions, Request};

mod common;
use common::*;

#[path = "../tests/redis_servers/mod.rs"]
mod redis_servers;
use redis_servers::Server;

/// Hosts the leases are sized for (`LeaseOptions::hosts`): a lease is at
/// most the room left divided by them.
const HOSTS: u32 = 8;
/// The near-limit case's minute limit: room per host below 2.
const NEAR_RPM: u32 = 2 * HOSTS;
const SLOTS: u32 = 1 << 16;
/// Decisions between two looks at the stop flag.
const BATCH: u64 = 256;
/// The in-memory systems time every this many decisions.
const SPARSE: u64 = 64;
/// One round of the leases' warm-up, in seconds: about a refill interval.
const WARM_ROUND: f64 = 1.0;

/// Where a load's keys stand against their limits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Limits far above the load: nothing is refused.
    Far,
    /// Room per host below 2, each thread stopping at its share.
    Near,
    /// The limit used up before the timed phase: everything is refused.
    Full,
}

/// One load: threads, keys and the limits every system is given.
struct Config {
    name: &'static str,
    threads: usize,
    keys: usize,
    rpm: u32,
    rpd: u32,
    load: Load,
}

/// The most decisions the refusal loop's warm-up makes before it gives
/// up waiting for a refusal (more than any system admits of `NEAR_RPM`).
const FILL_MAX: u64 = 100 * NEAR_RPM as u64;

/// What one case measured.
struct Measured {
    decisions: u64,
    refused: u64,
    secs: f64,
    /// p50, p99 and p99.9 of the timed decisions, in ns.
    pcts: [u64; 3],
    /// Redis commands the clients sent, and all Redis ran (scripts' own
    /// calls included), in the timed phase.
    sent: u64,
    run: u64,
    /// Seconds of warm-up before the timed phase, and whether the leases
    /// settled in it.
    warmed: f64,
    settled: bool,
    /// The lease layer's counters at the start of the timed phase.
    stats: Option<LeaseStats>,
    note: String,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.decisions as f64 / self.secs
    }
}

/// Nearest-rank percentiles of sorted `v` (0 if empty).
fn percentiles(v: &[u64]) -> [u64; 3] {
    [0.50, 0.99, 0.999].map(|p| {
        if v.is_empty() {
            return 0;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len());
        v[i - 1]
    })
}

/// A thread's decider: its own connection, if the system has one.
trait Worker {
    /// Decides one request for key `k`; true if admitted.
    fn decide(&mut self, k: usize) -> bool;
}

/// A system under test, shared by the threads.
trait System: Sync {
    type W<'a>: Worker
    where
        Self: 'a;
    fn worker(&self) -> Self::W<'_>;
}

/// Tollgate, any kind of table: the same call for all three.
struct Tollgate<'a> {
    lim: Limiter,
    reqs: Vec<Request<'a>>,
    ms: u64,
}

struct TollgateWorker<'s, 'a> {
    sys: &'s Tollgate<'a>,
}

impl Worker for TollgateWorker<'_, '_> {
    #[inline]
    fn decide(&mut self, k: usize) -> bool {
        let s = self.sys;
        s.lim
            .check(black_box(&s.reqs[k]), s.ms)
            .expect("a decision")
            .allowed
    }
}

impl<'a> System for Tollgate<'a> {
    type W<'s>
        = TollgateWorker<'s, 'a>
    where
        Self: 's;
    fn worker(&self) -> TollgateWorker<'_, 'a> {
        TollgateWorker { sys: self }
    }
}

/// What Envoy's ratelimit service does per request and descriptor
/// (src/redis/fixed_cache_impl.go), both windows in one pipeline:
/// `INCRBY key:minute cost; EXPIRE key:minute 60; INCRBY key:day cost;
/// EXPIRE key:day 86400`, then the counts are compared with the limits.
/// It charges before it compares, so a refused request still counts in
/// both windows (and a request the day refuses has used a minute unit):
/// neither all or nothing nor free to refuse. Keys are window-aligned and
/// built up front (Envoy formats them per request); one connection per
/// thread, no pool to wait for.
struct Envoy {
    client: redis::Client,
    keys: Vec<(String, String)>,
    rpm: u64,
    rpd: u64,
}

struct EnvoyWorker<'s> {
    sys: &'s Envoy,
    conn: redis::Connection,
    pipe: redis::Pipeline,
}

impl Worker for EnvoyWorker<'_> {
    fn decide(&mut self, k: usize) -> bool {
        let (m, d) = &self.sys.keys[k];
        self.pipe.clear();
        self.pipe
            .cmd("INCRBY")
            .arg(m)
            .arg(1)
            .cmd("EXPIRE")
            .arg(m)
            .arg(60)
            .ignore()
            .cmd("INCRBY")
            .arg(d)
            .arg(1)
            .cmd("EXPIRE")
            .arg(d)
            .arg(86_400)
            .ignore();
        let (minute, day): (u64, u64) = self.pipe.query(&mut self.conn).expect("Envoy pipeline");
        minute <= self.sys.rpm && day <= self.sys.rpd
    }
}

impl System for Envoy {
    type W<'s> = EnvoyWorker<'s>;
    fn worker(&self) -> EnvoyWorker<'_> {
        EnvoyWorker {
            sys: self,
            conn: self
                .client
                .get_connection()
                .expect("connect to redis-server"),
            pipe: redis::pipe(),
        }
    }
}

/// `threads` threads decide on `keys` keys for `secs` seconds, or until
/// each has made `max` decisions, timing every `every`-th decision
/// (`every` 0: none).
fn phase<S: System>(
    sys: &S,
    keys: usize,
    threads: usize,
    secs: f64,
    max: u64,
    every: u64,
) -> Measured {
    let stop = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    let barrier = Barrier::new(threads + 1);
    let per: Vec<(u64, u64, Instant, Instant, Vec<u64>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, done, barrier) = (&stop, &done, &barrier);
                s.spawn(move || {
                    let mut w = sys.worker();
                    let mut lat = Vec::with_capacity(if every == 0 { 0 } else { 1 << 20 });
                    let (mut k, mut n, mut refused) = (t * keys / threads, 0u64, 0u64);
                    barrier.wait();
                    let start = Instant::now();
                    while n < max {
                        for _ in 0..BATCH.min(max - n) {
                            let ok = if every != 0 && n % every == 0 {
                                let t0 = Instant::now();
                                let ok = w.decide(k);
                                lat.push(t0.elapsed().as_nanos() as u64);
                                ok
                            } else {
                                w.decide(k)
                            };
                            refused += !ok as u64;
                            k = if k + 1 == keys { 0 } else { k + 1 };
                            n += 1;
                        }
                        if stop.load(Relaxed) {
                            break;
                        }
                    }
                    let end = Instant::now();
                    done.fetch_add(1, Relaxed);
                    drop(w);
                    (n, refused, start, end, lat)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < secs && done.load(Relaxed) < threads {
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Relaxed);
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = per.iter().map(|p| p.2).min().unwrap();
    let last = per.iter().map(|p| p.3).max().unwrap();
    let mut lat: Vec<u64> = per.iter().flat_map(|p| p.4.iter().copied()).collect();
    lat.sort_unstable();
    Measured {
        decisions: per.iter().map(|p| p.0).sum(),
        refused: per.iter().map(|p| p.1).sum(),
        secs: (last - first).as_secs_f64(),
        pcts: percentiles(&lat),
        sent: 0,
        run: 0,
        warmed: 0.0,
        settled: true,
        stats: None,
        note: String::new(),
    }
}

/// Calls so far per command, from `INFO commandstats`, INFO itself left
/// out (this program sends it to count).
fn calls(conn: &mut redis::Connection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            let n = rest.split(',').next()?.parse::<u64>().ok()?;
            (name != "info").then(|| (name.to_string(), n))
        })
        .collect()
}

/// Commands between two readings of [`calls`]: (sent by the clients, run
/// by Redis). Redis counts the commands a script runs among the calls too.
/// Each system here either runs scripts or sends plain commands, never
/// both, so when scripts ran, what the clients sent is EVALSHA, EVAL and
/// SCRIPT.
fn spent(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> (u64, u64) {
    let d =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    let run: u64 = after.keys().map(|k| d(k)).sum();
    let scripted = d("evalsha") + d("eval");
    let sent = if scripted > 0 {
        scripted + d("script")
    } else {
        run
    };
    (sent, run)
}

fn flush(conn: &mut redis::Connection) {
    let _: () = redis::cmd("FLUSHALL").query(conn).expect("FLUSHALL");
}

/// The run's settings, from the environment.
struct Run {
    secs: f64,
    warm: f64,
    warm_max: f64,
    ms: u64,
    url: String,
    python: String,
}

fn env_secs(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or_else(|| panic!("{name}={v}: want seconds, a number >= 0")),
        Err(_) => default,
    }
}

/// Warm-up, then the timed phase with commands counted around it;
/// `stats` (the lease layer's counters, if any) is read at its start.
///
/// Warm-up: `run.warm` seconds (keys bound, connections made). Leases far
/// from the limit also grow to each key's rate, over several refills about
/// `refill_interval` apart (10 000 keys at full speed: about 10 s here):
/// they warm up in rounds of `WARM_ROUND` until, twice in a row, a round's
/// grants per decision fell by less than a fifth from the round before,
/// for at least `run.warm` and at most `run.warm_max` seconds. The
/// refusal loop's warm-up is `fill`.
fn measure<S: System>(
    run: &Run,
    cfg: &Config,
    sys: &S,
    every: u64,
    conn: &mut redis::Connection,
    stats: impl Fn(&S) -> Option<LeaseStats>,
) -> Measured {
    let max = if cfg.load == Load::Near {
        cfg.keys as u64 * (cfg.rpm as usize / cfg.threads) as u64
    } else {
        u64::MAX
    };
    let grants = |s: &S| stats(s).map(|s| s.refills + s.top_ups);
    let leased = stats(sys).is_some_and(|s| s.mode == LeaseMode::Leases);
    let t0 = Instant::now();
    let mut settled = true;
    if cfg.load == Load::Near {
        // No warm-up: it would spend the keys' room.
    } else if cfg.load == Load::Full {
        fill(sys);
    } else if !leased {
        if run.warm > 0.0 {
            phase(sys, cfg.keys, cfg.threads, run.warm, max, 0);
        }
    } else if run.warm_max > 0.0 {
        let round = WARM_ROUND.min(run.warm_max);
        let (mut prev, mut flat) = (f64::INFINITY, 0);
        loop {
            let g0 = grants(sys).unwrap();
            let n = phase(sys, cfg.keys, cfg.threads, round, max, 0).decisions;
            let g = (grants(sys).unwrap() - g0) as f64 / n.max(1) as f64;
            flat = if g >= 0.8 * prev { flat + 1 } else { 0 };
            let spent = t0.elapsed().as_secs_f64();
            if spent >= run.warm && flat >= 2 {
                break;
            }
            if spent >= run.warm_max {
                settled = false;
                break;
            }
            prev = g;
        }
    }
    let warmed = t0.elapsed().as_secs_f64();
    let s0 = stats(sys);
    let before = calls(conn);
    let mut m = phase(sys, cfg.keys, cfg.threads, run.secs, max, every);
    (m.sent, m.run) = spent(&before, &calls(conn));
    m.stats = s0;
    m.warmed = warmed;
    m.settled = settled;
    m
}

/// The refusal loop's warm-up: one thread decides on key 0 until the
/// first refusal, so its limit is used up by the system's own admissions
/// (and leases and exact mode have seen Redis refuse it), at most
/// `FILL_MAX` times.
fn fill<S: System>(sys: &S) {
    let mut w = sys.worker();
    for _ in 0..FILL_MAX {
        if !w.decide(0) {
            return;
        }
    }
}

fn tollgate_case(
    run: &Run,
    cfg: &Config,
    accts: &[String],
    mode: Option<LeaseMode>,
    conn: &mut redis::Connection,
) -> Measured {
    let policy = huge_policy();
    let lim = match mode {
        None => Limiter::new(&policy, SLOTS).unwrap(),
        Some(mode) => {
            let mut l = LimiterOptions::new()
                .leases(true)
                .build(&policy, SLOTS)
                .unwrap();
            let opts = LeaseOptions {
                // A deadline a loaded machine does not trip: a decision
                // left to the down policy is a local one and would flatter
                // the figures (the note counts them).
                store: StoreOptions {
                    deadline: Duration::from_secs(2),
                    ..StoreOptions::default()
                },
                mode,
                hosts: HOSTS,
                ..LeaseOptions::default()
            };
            l.connect(&run.url, opts).expect("connect to redis-server");
            l
        }
    };
    // Caller-given limits (no tier lookup) in every tollgate case alike,
    // as the other systems are handed theirs.
    let reqs = accts
        .iter()
        .map(|a| request(a).limits(cfg.rpm, cfg.rpd))
        .collect();
    let sys = Tollgate {
        lim,
        reqs,
        ms: run.ms,
    };
    // Near the limit a leased decision is a round trip too; in the
    // refusal loop no tollgate decision is, but about one a second.
    let every = match mode {
        _ if cfg.load == Load::Full => SPARSE,
        Some(LeaseMode::Exact) => 1,
        Some(LeaseMode::Leases) if cfg.load == Load::Near => 1,
        _ => SPARSE,
    };
    let mut m = measure(run, cfg, &sys, every, conn, |s| s.lim.lease_stats());
    let Tollgate { mut lim, .. } = sys;
    if let (Some(s0), Some(s1)) = (m.stats, lim.lease_stats()) {
        let before = calls(conn);
        lim.disconnect();
        let back = spent(&before, &calls(conn)).0;
        m.note = lease_note(&s0, &s1, back);
    }
    m
}

/// What the lease layer did in the timed phase.
fn lease_note(s0: &LeaseStats, s1: &LeaseStats, at_disconnect: u64) -> String {
    let d = |f: fn(&LeaseStats) -> u64| f(s1) - f(s0);
    let decisions = d(|s| s.decisions);
    let grants = d(|s| s.refills) + d(|s| s.top_ups);
    let mut note = format!(
        "{:.4}% decided from held units; {} grants asked by decisions, {} top-ups by the lease thread, {:.1} units per grant; {} commands at disconnect (give-backs)",
        100.0 * d(|s| s.from_leases) as f64 / decisions.max(1) as f64,
        d(|s| s.refills),
        d(|s| s.top_ups),
        d(|s| s.granted_units) as f64 / grants.max(1) as f64,
        at_disconnect,
    );
    let degraded = d(|s| s.degraded);
    if degraded > 0 {
        note.push_str(&format!(
            "; WARNING: {degraded} decisions fell to the down policy (Redis did not answer in time): the figures flatter the case"
        ));
    }
    note
}

fn envoy_case(run: &Run, cfg: &Config, accts: &[String], conn: &mut redis::Connection) -> Measured {
    let (minute, day) = (run.ms / 60_000 * 60, run.ms / 86_400_000 * 86_400);
    let keys = accts
        .iter()
        .map(|a| {
            (
                format!("ratelimit_{a}_{MODEL}_{minute}"),
                format!("ratelimit_{a}_{MODEL}_{day}"),
            )
        })
        .collect();
    let sys = Envoy {
        client: redis::Client::open(run.url.as_str()).unwrap(),
        keys,
        rpm: cfg.rpm as u64,
        rpd: cfg.rpd as u64,
    };
    measure(run, cfg, &sys, 1, conn, |_| None)
}

/// `limits` in its own Python process (benches/redis_limits.py), which
/// runs the same phases and counts its commands the same way.
fn limits_case(run: &Run, cfg: &Config) -> Result<Measured, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/redis_limits.py");
    let (warm, max, fill) = match cfg.load {
        Load::Near => (0.0, (cfg.keys * (cfg.rpm as usize / cfg.threads)) as u64, 0),
        // The script's own fill stands for the warm-up, as `fill` here.
        Load::Full => (0.0, 0, FILL_MAX),
        Load::Far => (run.warm, 0, 0),
    };
    let out = Command::new(&run.python)
        .arg(script)
        .args(["--url", &run.url])
        .args(["--threads", &cfg.threads.to_string()])
        .args(["--keys", &cfg.keys.to_string()])
        .args(["--prefix", PREFIX, "--model", MODEL])
        .args(["--rpm", &cfg.rpm.to_string(), "--rpd", &cfg.rpd.to_string()])
        .args(["--seconds", &run.secs.to_string()])
        .args(["--warm", &warm.to_string(), "--max", &max.to_string()])
        .args(["--fill", &fill.to_string()])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", run.python))?;
    if !out.status.success() {
        return Err(format!(
            "{} {script}: {}\n{}",
            run.python,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("redis_limits.py printed no JSON ({e}): {text}"))?;
    let int = |k: &str| {
        v[k].as_u64()
            .ok_or_else(|| format!("redis_limits.py: no {k} in {v}"))
    };
    Ok(Measured {
        decisions: int("decisions")?,
        refused: int("refused")?,
        secs: v["seconds"]
            .as_f64()
            .ok_or_else(|| format!("redis_limits.py: no seconds in {v}"))?,
        pcts: [int("p50_ns")?, int("p99_ns")?, int("p999_ns")?],
        sent: int("sent")?,
        run: int("run")?,
        warmed: warm,
        settled: true,
        stats: None,
        note: format!(
            "limits {}, redis-py {}, CPython {}",
            v["limits"].as_str().unwrap_or("?"),
            v["redis_py"].as_str().unwrap_or("?"),
            v["python"].as_str().unwrap_or("?")
        ),
    })
}

const PREFIX: &str = "acct";

/// Where `limits` runs: `$TOLLGATE_PYTHON`, the checkout's venv, python3.
fn python() -> String {
    if let Ok(p) = std::env::var("TOLLGATE_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    if std::path::Path::new(venv).exists() {
        venv.to_string()
    } else {
        "python3".to_string()
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Median cost of timing nothing: two `Instant::now()` reads.
fn timer_overhead() -> u64 {
    let mut v: Vec<u64> = (0..10_001)
        .map(|_| {
            let t = Instant::now();
            t.elapsed().as_nanos() as u64
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

/// Minute 30 of tomorrow (UTC), plus 1.5 s, in epoch ms.
fn tomorrow_ms() -> u64 {
    let day = tollgate::now_ms() / 86_400_000 + 1;
    day * 86_400_000 + 30 * 60_000 + 1_500
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.0} /s")
    }
}

fn ns(v: u64) -> String {
    if v >= 10_000_000 {
        format!("{:.1} ms", v as f64 / 1e6)
    } else if v >= 10_000 {
        format!("{:.1} us", v as f64 / 1e3)
    } else {
        format!("{v} ns")
    }
}

/// Commands per decision (5 decimals below 1, two digits below 1e-5:
/// the refusal loop's one call a second among millions of decisions).
fn per(n: u64, decisions: u64) -> String {
    let r = n as f64 / decisions.max(1) as f64;
    if r == 0.0 || r >= 1.0 {
        format!("{r:.2}")
    } else if r < 1e-5 {
        format!("{r:.1e}")
    } else {
        format!("{r:.5}")
    }
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => {
            let r = a / b;
            if r >= 10.0 {
                format!("{r:.0}x")
            } else {
                format!("{r:.2}x")
            }
        }
        _ => "-".into(),
    }
}

const SYSTEMS: [&str; 5] = [
    "tollgate local table",
    "tollgate leases",
    "tollgate exact",
    "Envoy-style INCRBY+EXPIRE pipeline",
    "limits FixedWindow on RedisStorage",
];

fn main() {
    let load_start = loadavg();
    let run_start = Instant::now();
    let server = Server::start();
    let mut conn = server.conn();
    let version: String = redis::cmd("INFO")
        .arg("server")
        .query::<String>(&mut conn)
        .ok()
        .and_then(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix("redis_version:").map(str::to_string))
        })
        .unwrap_or_else(|| "?".into());
    let run = Run {
        secs: env_secs("RBENCH_SECONDS", 3.0),
        warm: env_secs("RBENCH_WARM", 1.0),
        warm_max: env_secs("RBENCH_WARM_MAX", 30.0),
        ms: tomorrow_ms(),
        url: server.url(),
        python: python(),
    };
    assert!(run.secs > 0.0, "RBENCH_SECONDS must be above 0");
    println!(
        "redis-server {version} on {} (no persistence), started by this run; leases sized for {HOSTS} hosts",
        server.addr()
    );
    println!(
        "per case: {} s warm-up (leases: until settled, at most {} s), {} s timed; latency of every decision for round-trip systems, every {SPARSE}th for local, leases far from the limit and tollgate in the 429 loop; timing costs ~{} ns per sample (included)",
        run.warm,
        run.warm_max,
        run.secs,
        timer_overhead()
    );
    println!("load average at start: {load_start}");

    let far = |name, threads, keys| Config {
        name,
        threads,
        keys,
        rpm: HUGE,
        rpd: HUGE,
        load: Load::Far,
    };
    let near = |name, threads| Config {
        name,
        threads,
        keys: 10_000,
        rpm: NEAR_RPM,
        rpd: HUGE,
        load: Load::Near,
    };
    let configs = [
        far("1 thread, hot key", 1, 1),
        far("1 thread, 10 000 keys", 1, 10_000),
        near("1 thread, 10 000 keys near the limit", 1),
        far("2 threads, hot key", 2, 1),
        far("2 threads, 10 000 keys", 2, 10_000),
        near("2 threads, 10 000 keys near the limit", 2),
        Config {
            name: "1 thread, one key held at its limit (a 429 loop)",
            threads: 1,
            keys: 1,
            rpm: NEAR_RPM,
            rpd: HUGE,
            load: Load::Full,
        },
    ];
    // RBENCH_CASES=<text>: only the loads whose name contains it.
    let only = std::env::var("RBENCH_CASES").unwrap_or_default();
    let configs: Vec<Config> = configs
        .into_iter()
        .filter(|c| c.name.contains(only.as_str()))
        .collect();
    let systems = std::env::var("RBENCH_SYSTEMS").unwrap_or_default();
    let mut results: Vec<Vec<Result<Measured, String>>> = Vec::new();
    for cfg in &configs {
        let accts = accounts(cfg.keys, PREFIX);
        let mut row = Vec::new();
        for (i, name) in SYSTEMS.iter().enumerate() {
            if !name.contains(systems.as_str()) {
                row.push(Err("not in RBENCH_SYSTEMS".into()));
                continue;
            }
            eprintln!("{}: {name} (load {})", cfg.name, loadavg());
            flush(&mut conn);
            row.push(match i {
                0 => Ok(tollgate_case(&run, cfg, &accts, None, &mut conn)),
                1 => Ok(tollgate_case(
                    &run,
                    cfg,
                    &accts,
                    Some(LeaseMode::Leases),
                    &mut conn,
                )),
                2 => Ok(tollgate_case(
                    &run,
                    cfg,
                    &accts,
                    Some(LeaseMode::Exact),
                    &mut conn,
                )),
                3 => Ok(envoy_case(&run, cfg, &accts, &mut conn)),
                _ => limits_case(&run, cfg),
            });
        }
        results.push(row);
    }

    println!();
    println!(
        "{:<38} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}",
        "case",
        "decisions/s",
        "p50",
        "p99",
        "p99.9",
        "sent/dec",
        "run/dec",
        "vs limits",
        "vs local"
    );
    let mut notes = Vec::new();
    for (cfg, row) in configs.iter().zip(&results) {
        let limit = |l: u32| {
            if l == HUGE {
                "huge".to_string()
            } else {
                l.to_string()
            }
        };
        println!(
            "{} (limits rpm {}, rpd {})",
            cfg.name,
            limit(cfg.rpm),
            limit(cfg.rpd)
        );
        let rate_of = |i: usize| row[i].as_ref().ok().map(Measured::rate);
        let (local, limits) = (rate_of(0), rate_of(4));
        for (name, r) in SYSTEMS.iter().zip(row) {
            match r {
                Ok(m) => {
                    println!(
                        "  {:<36} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}",
                        name,
                        rate(m.rate()),
                        ns(m.pcts[0]),
                        ns(m.pcts[1]),
                        ns(m.pcts[2]),
                        per(m.sent, m.decisions),
                        per(m.run, m.decisions),
                        ratio(m.rate(), limits),
                        ratio(m.rate(), local)
                    );
                    let mut note = format!(
                        "{} decisions in {:.2} s after {:.1} s of warm-up",
                        m.decisions, m.secs, m.warmed
                    );
                    if !m.note.is_empty() {
                        note = format!("{note}; {}", m.note);
                    }
                    if cfg.load == Load::Full {
                        note.push_str(&format!(
                            "; {} commands sent, {:.2} per second",
                            m.sent,
                            m.sent as f64 / m.secs
                        ));
                        let admitted = m.decisions - m.refused;
                        if admitted > 0 {
                            note.push_str(&format!("; WARNING: {admitted} admitted"));
                        }
                    } else if m.refused > 0 {
                        note.push_str(&format!("; WARNING: {} refused", m.refused));
                    }
                    if !m.settled {
                        note.push_str("; WARNING: RBENCH_WARM_MAX ended the warm-up before the leases settled");
                    }
                    notes.push(format!("{}, {name}: {note}", cfg.name));
                }
                Err(e) => {
                    println!("  {name:<36} skipped (see below)");
                    notes.push(format!("{}, {name}: skipped: {e}", cfg.name));
                }
            }
        }
    }
    println!();
    // The goals, for the loads far from the limit and the refusal
    // loop (about one Redis call per second, not one per decision).
    for (cfg, row) in configs.iter().zip(&results) {
        if cfg.load == Load::Full {
            let sent: Vec<String> = SYSTEMS
                .iter()
                .zip(row)
                .filter_map(|(name, r)| {
                    let m = r.as_ref().ok()?;
                    Some(format!(
                        "{name} {} ({:.2}/s)",
                        per(m.sent, m.decisions),
                        m.sent as f64 / m.secs
                    ))
                })
                .collect();
            println!("{}: sent per decision: {}", cfg.name, sent.join(", "));
            continue;
        }
        if cfg.load != Load::Far {
            continue;
        }
        let rate_of = |i: usize| row[i].as_ref().ok().map(Measured::rate);
        let goal = |what: &str, r: Option<f64>, want: f64| match r {
            Some(r) => println!(
                "{}: {what} {} (goal >= {want}x): {}",
                cfg.name,
                if r >= 10.0 {
                    format!("{r:.0}x")
                } else {
                    format!("{r:.2}x")
                },
                if r >= want { "MET" } else { "MISSED" }
            ),
            None => println!("{}: {what}: not measured", cfg.name),
        };
        let div = |a: usize, b: usize| Some(rate_of(a)? / rate_of(b)?);
        goal("leases / limits-Redis", div(1, 4), 50.0);
        goal("leases / local table", div(1, 0), 0.5);
        goal("exact / limits-Redis", div(2, 4), 2.0);
    }
    println!(
        "load average at end: {} (start: {load_start}); {:.0} s in all",
        loadavg(),
        run_start.elapsed().as_secs_f64()
    );
    println!("\ndetails:");
    for n in &notes {
        println!("{n}");
    }
}

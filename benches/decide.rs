//! The decision path, side by side: tollgate, the `governor` pair and a
//! Mutex<HashMap> baseline, on the same keys, in one run.
//!
//!     cargo bench --bench decide             # everything (~4-5 min)
//!     cargo bench --bench decide -- hot      # one group
//!
//! Every decision starts from string keys (hashing included) and a `now`
//! passed in (fixed: the limits are too large to exhaust). Results and the
//! goals they are held to: BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tollgate::{region_size, Limiter, Policy};

mod common;
use common::*;

const TEN_K: usize = 10_000;
const ONE_M: usize = 1_000_000;
const ONE_M_SLOTS: u32 = 1_250_000;

fn hot_key(c: &mut Criterion<Cpu>) {
    let mut g = c.benchmark_group("hot_key");
    let acct = accounts(1, "org").pop().unwrap();
    let key = joined(std::slice::from_ref(&acct)).pop().unwrap();

    let lim = Limiter::new(&huge_policy(), 1 << 16).unwrap();
    let req = request(&acct);
    g.bench_function("tollgate", |b| {
        b.iter(|| lim.check(black_box(&req), black_box(NOW_MS)).unwrap())
    });
    // The bare CAS path, limits given by the caller: no tier lookup.
    let req_lim = request(&acct).limits(HUGE, HUGE);
    g.bench_function("tollgate_explicit_limits", |b| {
        b.iter(|| lim.check(black_box(&req_lim), black_box(NOW_MS)).unwrap())
    });

    let gov = GovernorPair::new(HUGE, HUGE);
    g.bench_function("governor", |b| b.iter(|| gov.check(black_box(&key))));

    let map = MutexMap::new(HUGE, HUGE);
    g.bench_function("mutex_hashmap", |b| {
        b.iter(|| map.check(black_box(&key), black_box(NOW_MS)))
    });
    g.finish();
}

/// Cycles through `keys.len()` pre-built keys, one decision per iteration.
fn many_keys(c: &mut Criterion<Cpu>, group: &str, n: usize, slots: u32) {
    let mut g = c.benchmark_group(group);
    let accts = accounts(n, "org");
    let keys = joined(&accts);
    // The index steps through the keys in order; their slots (and map
    // buckets) are scattered by the hash, so beyond the caches every
    // decision is a miss.
    {
        let lim = Limiter::new(&huge_policy(), slots).unwrap();
        let refused = populate(&lim, &accts);
        eprintln!("{group}: tollgate {slots} slots: {refused} of {n} keys refused TABLE_FULL");
        let mut i = 0usize;
        g.bench_function("tollgate", |b| {
            b.iter(|| {
                // Not unwrapped: keys the table refused stay in the cycle.
                let d = lim.check(&request(black_box(&accts[i])), NOW_MS);
                i = if i + 1 == n { 0 } else { i + 1 };
                d
            })
        });
    }
    {
        let gov = GovernorPair::new(HUGE, HUGE);
        for k in &keys {
            assert!(gov.check(k).is_ok());
        }
        let mut i = 0usize;
        g.bench_function("governor", |b| {
            b.iter(|| {
                let d = gov.check(black_box(&keys[i]));
                i = if i + 1 == n { 0 } else { i + 1 };
                d
            })
        });
    }
    {
        let map = MutexMap::new(HUGE, HUGE);
        for k in &keys {
            assert!(map.check(k, NOW_MS).allowed);
        }
        let mut i = 0usize;
        g.bench_function("mutex_hashmap", |b| {
            b.iter(|| {
                let d = map.check(black_box(&keys[i]), NOW_MS);
                i = if i + 1 == n { 0 } else { i + 1 };
                d
            })
        });
    }
    g.finish();
}

/// Gives every account its first decision; returns how many the table
/// refused for want of a free slot in the key's probe chain.
fn populate(lim: &Limiter, accts: &[String]) -> usize {
    let mut refused = 0;
    for a in accts {
        match lim.check(&request(a), NOW_MS) {
            Ok(d) => assert!(d.allowed),
            Err(tollgate::Error::TableFull) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    refused
}

fn ten_k_keys(c: &mut Criterion<Cpu>) {
    many_keys(c, "keys_10k", TEN_K, 1 << 14);
}

fn one_m_keys(c: &mut Criterion<Cpu>) {
    eprintln!(
        "tollgate region for {ONE_M} keys in {ONE_M_SLOTS} slots: {} bytes = {:.1} bytes/key",
        region_size(ONE_M_SLOTS).unwrap(),
        region_size(ONE_M_SLOTS).unwrap() as f64 / ONE_M as f64
    );
    many_keys(c, "keys_1m", ONE_M, ONE_M_SLOTS);
}

/// Runs `per_thread` decisions on each of `threads` threads, released
/// together; returns (last end - first start) divided by the thread count,
/// so criterion's time per iteration is the aggregate time per decision
/// (1 / throughput). Each thread stamps its own start and end: the main
/// thread may well be descheduled while the workers run.
fn parallel(threads: usize, per_thread: u64, work: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    let go = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let go = &go;
                s.spawn(move || {
                    go.wait();
                    let t0 = Instant::now();
                    work(t, per_thread);
                    (t0, Instant::now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = spans.iter().map(|s| s.0).min().unwrap();
    let last = spans.iter().map(|s| s.1).max().unwrap();
    (last - first) / threads as u32
}

fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("threads");
    // Distinct keys: thread t uses account t; "one key": all use account 0.
    let accts = accounts(2, "org");
    let keys = joined(&accts);
    let cases: [(&str, usize, bool); 3] = [
        ("1thread", 1, true),
        ("2threads_distinct", 2, true),
        ("2threads_one_key", 2, false),
    ];

    for (name, n, distinct) in cases {
        let pick = move |t: usize| if distinct { t } else { 0 };
        let lim = Limiter::new(&huge_policy(), 1 << 20).unwrap();
        let work = |t: usize, iters: u64| {
            let req = request(&accts[pick(t)]);
            for _ in 0..iters {
                black_box(lim.check(black_box(&req), NOW_MS).unwrap());
            }
        };
        g.bench_function(BenchmarkId::new("tollgate", name), |b| {
            b.iter_custom(|iters| parallel(n, iters, &work))
        });

        let gov = GovernorPair::new(HUGE, HUGE);
        let work = |t: usize, iters: u64| {
            let key = &keys[pick(t)];
            for _ in 0..iters {
                let _ = black_box(gov.check(black_box(key)));
            }
        };
        g.bench_function(BenchmarkId::new("governor", name), |b| {
            b.iter_custom(|iters| parallel(n, iters, &work))
        });

        let map = MutexMap::new(HUGE, HUGE);
        let work = |t: usize, iters: u64| {
            let key = &keys[pick(t)];
            for _ in 0..iters {
                black_box(map.check(black_box(key), NOW_MS));
            }
        };
        g.bench_function(BenchmarkId::new("mutex_hashmap", name), |b| {
            b.iter_custom(|iters| parallel(n, iters, &work))
        });
    }
    g.finish();
}

/// A hot key over its limit: the built-in 30 RPM for DeepSeek-V3.1, spent.
/// An in-flight admission and its release on one key, against a count in
/// a Mutex<HashMap> (governor has no in-flight limit).
fn in_flight(c: &mut Criterion<Cpu>) {
    let mut g = c.benchmark_group("in_flight_admit_release");
    let acct = accounts(1, "org").pop().unwrap();
    let key = joined(std::slice::from_ref(&acct)).pop().unwrap();
    let lim = Limiter::new(&in_flight_policy(60_000), 1 << 16).unwrap();
    let req = request(&acct);
    g.bench_function("tollgate", |b| {
        b.iter(|| {
            let d = lim.check(black_box(&req), black_box(NOW_MS)).unwrap();
            let a = d.in_flight.and_then(|f| f.admission).unwrap();
            lim.release(a, tollgate::Ending::Complete).unwrap()
        })
    });
    let map = MutexInFlight::new(60_000);
    g.bench_function("mutex_hashmap", |b| {
        b.iter(|| {
            assert!(map.acquire(black_box(&key)));
            map.release(black_box(&key))
        })
    });
    g.finish();
}

fn deny(c: &mut Criterion<Cpu>) {
    let mut g = c.benchmark_group("deny_hot_key");
    let acct = accounts(1, "org").pop().unwrap();
    let key = joined(std::slice::from_ref(&acct)).pop().unwrap();

    let lim = Limiter::new(&Policy::builtin(), 1 << 16).unwrap();
    let req = request(&acct);
    for _ in 0..30 {
        assert!(lim.check(&req, NOW_MS).unwrap().allowed);
    }
    assert!(!lim.check(&req, NOW_MS).unwrap().allowed);
    g.bench_function("tollgate", |b| {
        b.iter(|| lim.check(black_box(&req), black_box(NOW_MS)).unwrap())
    });

    let gov = GovernorPair::new(30, 15_000);
    for _ in 0..30 {
        assert!(gov.check(&key).is_ok());
    }
    assert!(gov.check(&key).is_err());
    g.bench_function("governor", |b| b.iter(|| gov.check(black_box(&key))));

    let map = MutexMap::new(30, 15_000);
    for _ in 0..30 {
        assert!(map.check(&key, NOW_MS).allowed);
    }
    assert!(!map.check(&key, NOW_MS).allowed);
    g.bench_function("mutex_hashmap", |b| {
        b.iter(|| map.check(black_box(&key), black_box(NOW_MS)))
    });
    g.finish();
}

/// Limiter::stats walks every slot, as the operator's `tollgate top` will:
/// the proxy for "walking the table".
fn walk(c: &mut Criterion<Cpu>) {
    let mut g = c.benchmark_group("walk_stats");
    // ~60 ms a walk: 10 samples of linear sampling need 55 walks.
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    // 1 000 000 slots at the recommended 80% load, and the 1M-key table of
    // keys_1m (1 250 000 slots).
    for (slots, live) in [(1_000_000u32, 800_000usize), (ONE_M_SLOTS, ONE_M)] {
        let lim = Limiter::new(&huge_policy(), slots).unwrap();
        let refused = populate(&lim, &accounts(live, "org"));
        assert_eq!(lim.stats(NOW_MS).used as usize, live - refused);
        eprintln!(
            "walk_stats: {slots} slots, {} live keys ({refused} refused)",
            live - refused
        );
        g.bench_function(
            BenchmarkId::new("tollgate", format!("{slots}slots_{live}live")),
            |b| b.iter(|| lim.stats(black_box(NOW_MS))),
        );
    }
    g.finish();
}

/// Thread CPU time (CLOCK_THREAD_CPUTIME_ID) for the one-thread groups:
/// this machine is shared, and time spent preempted is not the decision's.
/// TOLLGATE_BENCH_WALL=1 measures wall time instead.
pub struct Cpu {
    wall: bool,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for Cpu {
    type Intermediate = (u64, Instant);
    type Value = Duration;
    fn start(&self) -> Self::Intermediate {
        (thread_cpu_ns(), Instant::now())
    }
    fn end(&self, (cpu, wall): Self::Intermediate) -> Duration {
        if self.wall {
            wall.elapsed()
        } else {
            Duration::from_nanos(thread_cpu_ns() - cpu)
        }
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WallTime.formatter()
    }
}

fn config<M: Measurement>(m: M) -> Criterion<M> {
    Criterion::default()
        .with_measurement(m)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args()
}

fn cpu() -> Cpu {
    Cpu {
        wall: std::env::var_os("TOLLGATE_BENCH_WALL").is_some_and(|v| v == "1"),
    }
}

criterion_group! {
    name = one_thread;
    config = config(cpu());
    targets = hot_key, ten_k_keys, one_m_keys, deny, in_flight, walk
}
criterion_group! {
    name = two_threads;
    config = config(WallTime);
    targets = threads
}
criterion_main!(one_thread, two_threads);

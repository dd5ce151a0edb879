//! Exactness under threads: admitted requests equal the limit, never more,
//! never fewer, and racing first requests of a key bind one slot.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};

use tollgate::{Limiter, Policy, Request, Tier};

const T0: u64 = 1_764_237_600_000;
const THREADS: usize = 8;

fn hammer(
    l: &Arc<Limiter>,
    accounts: Arc<Vec<String>>,
    per_thread: usize,
    rpm: u32,
    rpd: u32,
) -> u32 {
    let admitted = Arc::new(AtomicU32::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (l, admitted, start, accounts) =
                (l.clone(), admitted.clone(), start.clone(), accounts.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 0..per_thread {
                    let a = &accounts[(i + t) % accounts.len()];
                    let r = Request::new(a.as_bytes(), b"DeepSeek-V3.1", Tier::Developer)
                        .limits(rpm, rpd);
                    if l.check(&r, T0).unwrap().allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

#[test]
fn threads_on_one_key_admit_exactly_the_minute_limit() {
    for round in 0..20 {
        let l = Arc::new(Limiter::new(&Policy::builtin(), 1024).unwrap());
        let accounts = Arc::new(vec![format!("hot-{round}")]);
        let admitted = hammer(&l, accounts, 2_000, 5_000, 1_000_000);
        assert_eq!(admitted, 5_000, "round {round}");
        assert_eq!(l.stats(T0).used, 1, "one key, one slot");
    }
}

#[test]
fn threads_on_one_key_admit_exactly_the_day_limit() {
    let l = Arc::new(Limiter::new(&Policy::builtin(), 1024).unwrap());
    let admitted = hammer(&l, Arc::new(vec!["daily".into()]), 2_000, 1_000_000, 3_333);
    assert_eq!(admitted, 3_333);
}

#[test]
fn threads_over_many_keys_admit_exactly_each_limit() {
    let l = Arc::new(Limiter::new(&Policy::builtin(), 4096).unwrap());
    let accounts: Vec<String> = (0..500).map(|i| format!("k{i}")).collect();
    // Every thread sweeps all 500 keys 8 times: 64 tries per key, 20 allowed.
    let admitted = hammer(&l, Arc::new(accounts), 4_000, 20, 1_000);
    assert_eq!(admitted, 500 * 20);
    assert_eq!(l.stats(T0).used, 500);
}

#[test]
fn racing_first_requests_bind_one_slot() {
    // Many rounds of THREADS threads released at once on a brand-new key,
    // in a small table so chains collide.
    let l = Arc::new(Limiter::new(&Policy::builtin(), 256).unwrap());
    for round in 0..150 {
        let key = format!("fresh-{round}");
        let admitted = hammer(&l, Arc::new(vec![key.clone()]), 3, 30, 15_000);
        assert_eq!(admitted, (THREADS * 3).min(30) as u32, "round {round}");
        let peek = l
            .check(
                &Request::new(key.as_bytes(), b"DeepSeek-V3.1", Tier::Developer)
                    .limits(30, 15_000)
                    .cost(0),
                T0,
            )
            .unwrap();
        assert_eq!(
            peek.minute.remaining,
            30 - admitted,
            "round {round}: counts split over two slots"
        );
    }
    assert_eq!(l.stats(T0).used, 150);
}

/// Threads race through the last minutes of one day and the first of the
/// next (a barrier between minutes), with costs of 1 to 3: each minute's
/// admitted cost is what the table counts, never over the minute limit,
/// the day stops at its limit, and the new day starts from zero. The first
/// decision of each minute takes the slow path (a new window) while the
/// others race it on the packed fast path.
#[test]
fn threads_across_minute_and_day_boundaries_charge_each_window_exactly() {
    const T: usize = 4;
    let (rpm, rpd) = (50u32, 260u32);
    let l = Arc::new(Limiter::new(&Policy::builtin(), 1024).unwrap());
    let day_end = (T0 / 86_400_000 + 1) * 86_400_000;
    let minutes: Arc<Vec<u64>> = Arc::new(
        (0..12)
            .map(|k| day_end - 6 * 60_000 + k * 60_000 + 17_000)
            .collect(),
    );
    let admitted: Arc<Vec<AtomicU32>> = Arc::new((0..12).map(|_| AtomicU32::new(0)).collect());
    let start = Arc::new(Barrier::new(T + 1));
    let done = Arc::new(Barrier::new(T + 1));
    let handles: Vec<_> = (0..T)
        .map(|t| {
            let (l, minutes, admitted, start, done) = (
                l.clone(),
                minutes.clone(),
                admitted.clone(),
                start.clone(),
                done.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = 0x9E37_79B9u32.wrapping_mul(t as u32 + 1);
                for (m, &now) in minutes.iter().enumerate() {
                    start.wait();
                    for _ in 0..300 {
                        rng ^= rng << 13;
                        rng ^= rng >> 17;
                        rng ^= rng << 5;
                        let cost = 1 + rng % 3;
                        let r = Request::new(b"edge", b"DeepSeek-V3.1", Tier::Developer)
                            .limits(rpm, rpd)
                            .cost(cost);
                        if l.check(&r, now).unwrap().allowed {
                            admitted[m].fetch_add(cost, Ordering::Relaxed);
                        }
                    }
                    done.wait();
                }
            })
        })
        .collect();
    let mut day_total = [0u32; 2];
    for (m, &now) in minutes.iter().enumerate() {
        start.wait();
        done.wait();
        let got = admitted[m].load(Ordering::Relaxed);
        let peek = Request::new(b"edge", b"DeepSeek-V3.1", Tier::Developer)
            .limits(rpm, rpd)
            .cost(0);
        let d = l.check(&peek, now).unwrap();
        let day = m / 6;
        day_total[day] += got;
        assert_eq!(
            rpm - d.minute.remaining,
            got,
            "minute {m}: counted = admitted"
        );
        assert_eq!(
            rpd - d.day.remaining,
            day_total[day],
            "minute {m}: day count"
        );
        assert!(got <= rpm, "minute {m}: {got} over {rpm}");
        if day_total[day] + 3 <= rpd {
            // 1200 attempts: the minute is filled to within one request.
            assert!(got + 2 >= rpm, "minute {m}: only {got}");
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    assert!(
        day_total[0] <= rpd && day_total[0] + 2 >= rpd,
        "day 0: {}",
        day_total[0]
    );
    assert!(
        day_total[1] <= rpd && day_total[1] + 2 >= rpd,
        "day 1: {}",
        day_total[1]
    );
}

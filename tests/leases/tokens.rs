//! Tokens across hosts: three hosts on one Redis reserve, use a random
//! share of (or more than) each reservation, and settle; Redis ends with
//! exactly what the upstream reported, and never more than the limit plus
//! what the under-estimates added.

use super::*;
use tollgate::store::Unit;
use tollgate::Ending;

fn token_counts(store: &Store, key: &str, at: Instant) -> (u64, u64) {
    let c = store
        .counts(&Tag::for_unit(key.as_bytes(), "m", Unit::Tokens), at)
        .unwrap();
    (c.minute_count, c.day_count)
}

/// What the threads of every host did: tokens the upstream reported, and
/// the part of them beyond the reservations (the under-estimates).
#[derive(Default)]
struct Totals {
    used: AtomicU64,
    excess: AtomicU64,
    admitted: AtomicU64,
    refused: AtomicU64,
}

fn reserve_and_settle(
    hosts: &[Vec<Limiter>],
    key: &str,
    tpm: u32,
    now_ms: u64,
    attempts: u32,
) -> Totals {
    let totals = Totals::default();
    thread::scope(|s| {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for host in hosts {
            for l in host {
                for _ in 0..2 {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let totals = &totals;
                    s.spawn(move || {
                        let mut rng = Rng(seed | 1);
                        for _ in 0..attempts {
                            let reserve = 200 + rng.below(1_800);
                            let r = Request::new(key.as_bytes(), b"m", Tier::Developer)
                                .limits(100_000, 1_000_000)
                                .token_limits(tpm, 10 * tpm)
                                .tokens(reserve);
                            let d = l.check(&r, now_ms).unwrap();
                            let w = d.tokens.unwrap();
                            assert!(w.minute.remaining <= tpm);
                            if !d.allowed {
                                assert_eq!(d.limited_by, LimitedBy::TokensMinute);
                                totals.refused.fetch_add(1, Relaxed);
                                continue;
                            }
                            totals.admitted.fetch_add(1, Relaxed);
                            // Usage from half the reservation to a quarter
                            // beyond it; one in ten responses is cut before
                            // its usage (kept: charged as reserved).
                            let ticket = w.ticket.unwrap();
                            let (ending, used) = if rng.below(10) == 0 {
                                (Ending::Cut, reserve)
                            } else {
                                let u = reserve / 2 + rng.below(reserve * 3 / 4 + 1);
                                (Ending::Usage(u as u64), u)
                            };
                            assert_eq!(l.settle(ticket, ending, now_ms).unwrap(), used as u64);
                            totals.used.fetch_add(used as u64, Relaxed);
                            totals
                                .excess
                                .fetch_add(used.saturating_sub(reserve) as u64, Relaxed);
                        }
                    });
                }
            }
        }
    });
    totals
}

/// Three hosts (two handles, two threads each) on one key: Redis ends with
/// exactly the usage reported, within the bound.
fn one_token_key(hosts: &mut [Vec<Limiter>], store: &Store, key: &str) {
    let tpm = 200_000u32;
    let (ms, at) = tomorrow(20);
    let t = reserve_and_settle(hosts, key, tpm, ms, 150);
    let (admitted, refused) = (t.admitted.into_inner(), t.refused.into_inner());
    let (used, excess) = (t.used.into_inner(), t.excess.into_inner());
    eprintln!(
        "{admitted} admitted, {refused} refused; {used} tokens used, {excess} beyond reservations"
    );
    assert!(
        admitted > 100 && refused > 0,
        "{admitted} admitted, {refused} refused: the limit was reached"
    );
    // Leaving gives back what the lease thread had not applied yet.
    disconnect_all(hosts);
    let (minute, day) = token_counts(store, key, at);
    assert_eq!(
        (minute, day),
        (used, used),
        "Redis counts what the upstream reported"
    );
    assert!(
        used <= tpm as u64 + excess,
        "{used} > {tpm} + the under-estimates {excess}"
    );
    // The requests were charged once per admission, on their own tag.
    assert_eq!(counts(store, key, at), (admitted, admitted));
}

#[test]
fn three_hosts_one_key_hold_the_token_windows() {
    let server = Server::start();
    let dir = temp_dir("leases-tokens");
    let opts = roomy(HOSTS as u32);
    let mut hosts = file_hosts(&dir, &server.url(), &opts);
    let store = Store::new(&server.url(), opts.store.clone()).unwrap();
    one_token_key(&mut hosts, &store, "token-key");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn three_hosts_one_key_hold_the_token_windows_on_a_cluster() {
    // The key's token counts sit in another hash slot than its requests'.
    let cluster = Cluster::start();
    let opts = roomy(HOSTS as u32);
    let mut hosts: Vec<Vec<Limiter>> = (0..HOSTS)
        .map(|_| {
            (0..2)
                .map(|_| {
                    let mut l = LimiterOptions::new()
                        .leases(true)
                        .build(&policy(), 4096)
                        .unwrap();
                    l.connect(&cluster.url(), opts.clone()).unwrap();
                    l
                })
                .collect()
        })
        .collect();
    let store = Store::new(&cluster.url(), opts.store.clone()).unwrap();
    one_token_key(&mut hosts, &store, "token-key-cluster");
}

#[test]
fn a_token_key_on_a_redis_that_is_gone_follows_the_down_policy() {
    let mut server = Server::start();
    let dir = temp_dir("leases-tokens-down");
    let opts = tight(2, DownPolicy::Local);
    let hosts = file_hosts(&dir, &server.url(), &opts);
    let (ms, at) = tomorrow(21);
    let r = |n| {
        Request::new(b"k", b"m", Tier::Developer)
            .token_limits(10_000, 100_000)
            .tokens(n)
    };
    let l = &hosts[0][0];
    let first = l.check(&r(1_000), ms).unwrap();
    assert!(first.allowed);
    server.kill();
    // This host's share: 5 000 of the 10 000, counted in its own table.
    let admitted: Vec<_> = (0..8)
        .filter_map(|_| l.check(&r(1_000), ms).unwrap().tokens.unwrap().ticket)
        .collect();
    assert_eq!(admitted.len(), 5);
    // The sibling handle of the same host sees the same share used.
    assert!(!hosts[0][1].check(&r(1_000), ms).unwrap().allowed);
    for k in &admitted {
        l.settle(*k, Ending::Usage(500), ms).unwrap();
    }
    l.settle(
        first.tokens.unwrap().ticket.unwrap(),
        Ending::Usage(1_000),
        ms,
    )
    .unwrap();
    server.restart();
    let store = Store::new(&server.url(), opts.store.clone()).unwrap();
    // A restarted Redis without persistence lost the first grant; what
    // was admitted while it was away is pushed as settled.
    let deadline = Clock::now() + Duration::from_secs(20);
    loop {
        let (m, _) = token_counts(&store, "k", at);
        if m == 5 * 500 {
            break;
        }
        assert!(Clock::now() < deadline, "pushed {m}, want 2500");
        thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

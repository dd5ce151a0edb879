//! What a joined limiter did, for operators: the counters the lease layer
//! keeps as it decides, and the store's own.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::{lock, DownPolicy, Joined, LeaseMode};
use crate::store::StoreStats;

/// What a joined limiter did since it joined (all handles sharing it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseStats {
    /// The mode joined with.
    pub mode: LeaseMode,
    /// The down policy joined with.
    pub down_policy: DownPolicy,
    /// The hosts each quota is shared by now: as configured, or the live
    /// count Redis last gave (`hosts` auto; 1 before the first).
    pub hosts: u32,
    /// The last store call failed for want of Redis (timeout, refused,
    /// breaker open): decisions beyond held units follow the down policy.
    pub redis_down: bool,
    /// Decisions made (every mode, every outcome).
    pub decisions: u64,
    /// Of those: decided from units held, without a round trip.
    pub from_leases: u64,
    /// Grants asked of the store by decisions (each one round trip).
    pub refills: u64,
    /// Grants asked by the lease thread for hot keys before they ran out
    /// (no decision waited for them).
    pub top_ups: u64,
    /// Units those grants gave.
    pub granted_units: u64,
    /// Grants that gave nothing: the key was at its global limit.
    pub refused_by_store: u64,
    /// Decisions refused without a round trip: Redis had refused the key
    /// less than a second before and its window was still full.
    pub refused_locally: u64,
    /// Redis has a memory limit and a `maxmemory-policy` that can evict
    /// the limiter's counts (all but `noeviction`): they may be lost and
    /// admitted again. Looked at on joining and every 10 s.
    pub eviction_risk: bool,
    /// Keys Redis evicted since this limiter first looked (any keys: the
    /// limiter's counts may be among them).
    pub evicted_keys: u64,
    /// Decisions made by the down policy (Redis not answering).
    pub degraded: u64,
    /// Of those: admitted within the host's share (`Local`) or open.
    pub degraded_admitted: u64,
    /// Give-backs done: unspent units returned to Redis.
    pub give_backs: u64,
    /// The units those give-backs returned.
    pub given_back_units: u64,
    /// Pushes done: units admitted by the down policy, charged to Redis
    /// once it answered again.
    pub pushes: u64,
    /// The units those pushes charged.
    pub pushed_units: u64,
    /// Units dropped after an outage rather than given back (they may have
    /// been granted by a Redis that restarted without its data).
    pub dropped_units: u64,
    /// Give-backs, pushes and grant recoveries waiting for Redis.
    pub pending: u64,
    /// Requests that asked not to wait ([`Request::no_wait`](crate::Request::no_wait)) and were
    /// handed back as [`Error::Pending`](crate::Error::Pending) (not counted as decisions: each
    /// is decided again by a call that waits).
    pub deferred: u64,
    /// Microseconds the last answered store call took.
    pub last_latency_us: u64,
    /// Token reservations Redis granted (each one exact grant).
    pub token_grants: u64,
    /// Token reservations Redis refused: the key's token window was full.
    pub token_refusals: u64,
    /// Settles that corrected Redis (a give-back or an excess, queued to
    /// the lease thread).
    pub token_settles: u64,
    /// The store's own counters (every round trip, failures, breaker).
    pub store: StoreStats,
}

#[derive(Default)]
pub(super) struct Counters {
    /// Decisions not made from held units (with `from_leases`, all of them).
    pub(super) slow_decisions: AtomicU64,
    pub(super) from_leases: AtomicU64,
    pub(super) refills: AtomicU64,
    pub(super) top_ups: AtomicU64,
    pub(super) granted_units: AtomicU64,
    pub(super) refused_by_store: AtomicU64,
    pub(super) refused_locally: AtomicU64,
    pub(super) degraded: AtomicU64,
    pub(super) degraded_admitted: AtomicU64,
    pub(super) give_backs: AtomicU64,
    pub(super) given_back_units: AtomicU64,
    pub(super) pushes: AtomicU64,
    pub(super) pushed_units: AtomicU64,
    pub(super) dropped_units: AtomicU64,
    pub(super) deferred: AtomicU64,
    pub(super) token_grants: AtomicU64,
    pub(super) token_refusals: AtomicU64,
    pub(super) token_settles: AtomicU64,
}

impl Joined {
    pub(crate) fn stats(&self) -> LeaseStats {
        let i = &self.inner;
        let c = &i.c;
        let store = i.store.stats();
        // One lock at a time: `flush` holds `unpushed` while it takes
        // `jobs`, so holding `jobs` while taking `unpushed` deadlocks.
        let jobs = lock(&i.jobs).len();
        let unpushed = lock(&i.unpushed).len();
        let pending = jobs + unpushed;
        LeaseStats {
            mode: i.opts.mode,
            down_policy: i.opts.down,
            hosts: i.hosts(),
            redis_down: i.down.load(Relaxed),
            decisions: c.from_leases.load(Relaxed) + c.slow_decisions.load(Relaxed),
            from_leases: c.from_leases.load(Relaxed),
            refills: c.refills.load(Relaxed),
            top_ups: c.top_ups.load(Relaxed),
            granted_units: c.granted_units.load(Relaxed),
            refused_by_store: c.refused_by_store.load(Relaxed),
            refused_locally: c.refused_locally.load(Relaxed),
            eviction_risk: i.eviction_risk.load(Relaxed),
            evicted_keys: i.evicted_since.load(Relaxed),
            degraded: c.degraded.load(Relaxed),
            degraded_admitted: c.degraded_admitted.load(Relaxed),
            give_backs: c.give_backs.load(Relaxed),
            given_back_units: c.given_back_units.load(Relaxed),
            pushes: c.pushes.load(Relaxed),
            pushed_units: c.pushed_units.load(Relaxed),
            dropped_units: c.dropped_units.load(Relaxed),
            pending: pending as u64,
            deferred: c.deferred.load(Relaxed),
            last_latency_us: store.last_latency_us,
            token_grants: c.token_grants.load(Relaxed),
            token_refusals: c.token_refusals.load(Relaxed),
            token_settles: c.token_settles.load(Relaxed),
            store,
        }
    }
}

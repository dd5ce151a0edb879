//! The gate every call of a store goes through: the breaker of the call's
//! scope (one for a single server, one per hash slot on a Cluster) and the
//! counters [`StoreStats`] reports. Both stores use it, so the breaker the
//! lease layer meets in tests is the one it meets in production.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use super::breaker::{Breakers, Scope};
use super::{BreakerState, StoreError, StoreOptions, StoreStats, Tag};

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    answered: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    circuit_open: AtomicU64,
    trips: AtomicU64,
    connects: AtomicU64,
    replays: AtomicU64,
    last_latency_us: AtomicU64,
}

pub(crate) struct Gate {
    breakers: Mutex<Breakers>,
    counters: Counters,
    /// A breaker per Cluster hash slot, rather than one.
    per_slot: bool,
}

impl Gate {
    pub(crate) fn new(opts: &StoreOptions, per_slot: bool) -> Gate {
        Gate {
            breakers: Mutex::new(Breakers::new(
                opts.trip_after,
                opts.cooldown,
                opts.max_cooldown,
            )),
            counters: Counters::default(),
            per_slot,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Breakers> {
        // Each breaker's state is a plain value, whole at every step.
        self.breakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scope(&self, tag: &Tag) -> Scope {
        #[cfg(feature = "redis")]
        if self.per_slot {
            return Scope::slot_of(tag.as_bytes());
        }
        let _ = (tag, self.per_slot);
        Scope::Whole
    }

    /// Makes `call` through the breaker of `tag`'s scope, counting it:
    /// refused at once while the breaker is open, and a transport failure
    /// ([`StoreError::is_transport`]) counted towards tripping it.
    /// `replayed` says whether an answer was a retry recognised.
    pub(crate) fn call<R>(
        &self,
        tag: &Tag,
        replayed: impl Fn(&R) -> bool,
        call: impl FnOnce() -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let c = &self.counters;
        c.calls.fetch_add(1, Relaxed);
        let scope = self.scope(tag);
        let start = std::time::Instant::now();
        let admit = self.lock().admit(scope, start);
        let admit = match admit {
            Ok(a) => a,
            Err(retry_in) => {
                c.failures.fetch_add(1, Relaxed);
                c.circuit_open.fetch_add(1, Relaxed);
                return Err(StoreError::CircuitOpen { retry_in });
            }
        };
        let result = call();
        match &result {
            Ok(r) => {
                if replayed(r) {
                    c.replays.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                c.failures.fetch_add(1, Relaxed);
                if matches!(e, StoreError::Timeout { .. }) {
                    c.timeouts.fetch_add(1, Relaxed);
                }
            }
        }
        let mut breakers = self.lock();
        match &result {
            Err(e) if e.is_transport() => {
                if breakers.failure(scope, std::time::Instant::now(), admit) {
                    c.trips.fetch_add(1, Relaxed);
                }
            }
            _ => {
                breakers.success(scope);
                c.answered.fetch_add(1, Relaxed);
                c.last_latency_us
                    .store(start.elapsed().as_micros() as u64, Relaxed);
            }
        }
        result
    }

    /// A call for `tag` made now would fail at once.
    pub(crate) fn fails_fast(&self, tag: &Tag) -> bool {
        let scope = self.scope(tag);
        self.lock().fails_fast(scope, std::time::Instant::now())
    }

    /// The state of the breaker calls for `tag` go through.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn state_of(&self, tag: &Tag) -> BreakerState {
        let scope = self.scope(tag);
        self.lock().state_of(scope)
    }

    /// A connection was opened (for the stats).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn connected(&self) {
        self.counters.connects.fetch_add(1, Relaxed);
    }

    /// The stats, with `connections` open now.
    pub(crate) fn stats(&self, connections: usize) -> StoreStats {
        let c = &self.counters;
        let (breaker, open_slots) = {
            let b = self.lock();
            (b.state(), b.open_slots())
        };
        StoreStats {
            calls: c.calls.load(Relaxed),
            answered: c.answered.load(Relaxed),
            failures: c.failures.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            circuit_open: c.circuit_open.load(Relaxed),
            trips: c.trips.load(Relaxed),
            connects: c.connects.load(Relaxed),
            replays: c.replays.load(Relaxed),
            last_latency_us: c.last_latency_us.load(Relaxed),
            breaker,
            open_slots,
            connections,
        }
    }
}

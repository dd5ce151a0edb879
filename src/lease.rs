//! Quota leases (feature `redis`): one quota per (account, model) across
//! every host joined to one store, decided locally.
//!
//! A table formatted for leases keeps, in each slot's state word, the units
//! this host still holds of its minute lease and its day lease (both granted
//! together by the store's script, all or nothing). A decision spends both
//! with the same one CAS as a local table; only when too few are left does
//! it ask the store for more (one `grant_once` round trip under the store's
//! deadline) and spend its own cost out of the grant in the CAS that adds
//! it. Every unit admitted anywhere was so granted by the script: admitted
//! never exceeds a limit in any window while Redis answers.
//!
//! Lease size adapts to the key: about its recent rate times the refill
//! interval, at least the cost, at most the global room left (as of the
//! last exchange) divided by the hosts, so near the limit every decision is
//! one exact grant. Unspent units go back (`give_back`, idempotent) when a
//! key goes idle, when day units outlive their minute, and when the limiter
//! leaves the store. Redis unreachable: decisions keep spending what is
//! held, then follow the [`DownPolicy`]; what is admitted meanwhile is
//! pushed (`push`, idempotent) when Redis answers again.
//!
//! A background thread per joined limiter does the give-backs, the pushes
//! and the recovery of grants whose reply timed out; the decision path
//! never waits for it.

mod decide;
mod events;
mod eviction;
mod hosts;
mod in_flight;
mod options;
mod sizing;
mod stats;
mod tokens;
mod worker;

#[cfg(test)]
mod tests;

use decide::Full;
pub use events::{Event, Level};
pub(crate) use in_flight::InFlightAnswer;
pub use options::{DownPolicy, LeaseMode, LeaseOptions, DEFAULT_MAX_HOSTS, OPTION_NAMES};
use sizing::KeyInfo;
use stats::Counters;
pub use stats::LeaseStats;
use worker::Job;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::error::Error;
use crate::limiter::Backing;
use crate::region::Region;
#[cfg(feature = "redis")]
use crate::store::Store;
use crate::store::{QuotaStore, StoreError, Tag};
use crate::window::Instant;

struct Inner {
    store: Arc<dyn QuotaStore>,
    opts: LeaseOptions,
    region: Region,
    skew: u32,
    keys: Mutex<HashMap<(usize, u16), KeyInfo>>,
    /// Keys Redis refused lately, by (slot, generation): refused again
    /// locally for a while (see `Inner::known_full`).
    full: Mutex<HashMap<(usize, u16), Full>>,
    /// Down-mode admissions not yet pushed, summed by key and minute.
    unpushed: Mutex<HashMap<(Tag, Instant), u32>>,
    jobs: Mutex<Vec<Job>>,
    /// In-flight admissions this process made, by store member: renewed
    /// every beat while their ledger entry is held (`in_flight`).
    held: Mutex<HashMap<String, in_flight::Held>>,
    down: AtomicBool,
    /// The live hosts Redis last counted (0: none yet), for `hosts` auto.
    live_hosts: AtomicU32,
    /// This table's id among the hosts (see `hosts`).
    host_id: String,
    /// Times Redis went from answering to not answering.
    epoch: AtomicU64,
    /// Microseconds between the lease thread's last two looks at the keys
    /// (see `lease_size`).
    round_us: AtomicU64,
    /// What operators must hear, once per change.
    events: events::Events,
    /// The store's breaker trips already seen, and whether this outage's
    /// first was told.
    seen_trips: AtomicU64,
    breaker_told: AtomicBool,
    /// Redis has a memory limit and a policy that evicts our keys.
    eviction_risk: AtomicBool,
    /// `evicted_keys` at the first look (u64::MAX: not looked yet), and
    /// the rise since.
    evicted_base: AtomicU64,
    evicted_since: AtomicU64,
    c: Counters,
    stop: Mutex<bool>,
    wake: Condvar,
    // Keeps the table's memory alive until the last give-back is done.
    _backing: Arc<Backing>,
}

/// Checks `url` and `opts` as [`Limiter::connect`](crate::Limiter::connect)
/// does, without contacting Redis or starting a thread: for a
/// configuration check in a process that must not join (nginx's master,
/// `nginx -t`).
#[cfg(feature = "redis")]
pub fn check(url: &str, opts: &LeaseOptions) -> Result<(), Error> {
    store_for(url, opts).map(drop)
}

/// The store `url` names, for these options; no connection is made.
#[cfg(feature = "redis")]
pub(crate) fn store_for(url: &str, opts: &LeaseOptions) -> Result<Store, Error> {
    check_options(opts)?;
    Store::new(url, opts.store.clone()).map_err(Error::Store)
}

/// The options' own errors, whatever the store.
fn check_options(opts: &LeaseOptions) -> Result<(), Error> {
    if opts.refill_interval.is_zero() || opts.idle_after.is_zero() {
        return Err(Error::Invalid(
            "refill_interval and idle_after must be above zero",
        ));
    }
    if opts.max_lease == 0 {
        return Err(Error::Invalid("max_lease must be at least 1"));
    }
    Ok(())
}

/// A limiter's link to the store: the lease layer's state and its thread.
pub(crate) struct Joined {
    inner: Arc<Inner>,
    worker: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every value behind these locks is whole at every step.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Joined {
    pub(crate) fn start(
        store: Arc<dyn QuotaStore>,
        opts: LeaseOptions,
        region: Region,
        backing: Arc<Backing>,
    ) -> Result<Joined, Error> {
        check_options(&opts)?;
        // One call to learn whether Redis answers (and to load the script).
        // Only the URL and options can fail a join (above): a Redis that
        // is unreachable, or answers that it cannot serve (BUSY, LOADING,
        // OOM, NOAUTH, ...), or answers an error of any other kind, is
        // joined all the same. Decisions follow the down policy until it
        // serves, and every later call tries again through the breaker's
        // backoff: a worker that starts during a Redis hiccup recovers by
        // itself, without a reload.
        let probe = Tag::new(b"tollgate-connect-check").expect("a valid tag");
        let first = store.counts(&probe, Instant { day: 0, minute: 0 }).err();
        let down = first.as_ref().is_some_and(StoreError::is_unavailable);
        // With hosts left to Redis, the first count before the first
        // decision (one more call under the deadline), so early leases are
        // not sized for a lone host.
        let host_id = hosts::id(region.seed());
        let live = if opts.hosts == 0 && !down {
            store.beat(&host_id, hosts::EVERY).unwrap_or(0)
        } else {
            0
        };
        let inner = Arc::new(Inner {
            store,
            opts,
            region,
            // The background thread dates nothing itself: it takes units in
            // whatever windows the slot holds them (see `collect`).
            skew: u32::MAX,
            keys: Mutex::new(HashMap::new()),
            full: Mutex::new(HashMap::new()),
            unpushed: Mutex::new(HashMap::new()),
            jobs: Mutex::new(Vec::new()),
            held: Mutex::new(HashMap::new()),
            down: AtomicBool::new(down),
            live_hosts: AtomicU32::new(live),
            host_id,
            epoch: AtomicU64::new(0),
            round_us: AtomicU64::new(0),
            events: events::Events::default(),
            seen_trips: AtomicU64::new(0),
            breaker_told: AtomicBool::new(false),
            eviction_risk: AtomicBool::new(false),
            evicted_base: AtomicU64::new(u64::MAX),
            evicted_since: AtomicU64::new(0),
            c: Counters::default(),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            _backing: backing,
        });
        match &first {
            None => {}
            Some(e) if down => inner.went_down(e),
            Some(e) => inner.events.say(
                Level::Error,
                format!("joined the quota store, but its first call failed: {e}"),
            ),
        }
        let bg = inner.clone();
        let worker = std::thread::Builder::new()
            .name("tollgate-leases".into())
            .spawn(move || bg.run())
            .map_err(|_| Error::Invalid("cannot start the lease thread"))?;
        Ok(Joined {
            inner,
            worker: Some(worker),
        })
    }

    /// The first event kept after number `seq` (see [`Event`]).
    pub(crate) fn event_after(&self, seq: u64) -> Option<Event> {
        self.inner.events.after(seq)
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        *lock(&self.inner.stop) = true;
        self.inner.wake.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        self.inner.release_all();
    }
}

impl Inner {}

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

mod events;
mod eviction;
mod hosts;

pub use events::{Event, Level};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::decision::Decision;
use crate::error::Error;
use crate::limiter::{Backing, Limiter, Prepared, Request};
use crate::policy::Limits;
use crate::region::Region;
use crate::slot::{self, Clock, Held, LimitedBy, Outcome};
use crate::store::{Counts, OpId, Store, StoreError, StoreOptions, StoreStats, Tag};
use crate::window::Instant;

/// How decisions get their quota from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseMode {
    /// Hold leases and spend them locally (the default): far from a limit
    /// most decisions make no network call.
    Leases,
    /// One grant of exactly the cost per decision, nothing held: every
    /// decision is a round trip. The baseline, and for callers that want
    /// no units parked on any host.
    Exact,
}

/// What a decision does when it needs the store and the store does not
/// answer (timeout, refused, breaker open), beyond the units already held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownPolicy {
    /// Admit up to this host's share, limit / hosts in each window, counted
    /// in the table (shared by the host's processes) and pushed to Redis
    /// when it answers again. The default.
    Local,
    /// Admit everything (counted and pushed like `Local`).
    Open,
    /// Refuse (a 429 from the minute window).
    Closed,
}

/// Settings of a joined limiter; `LeaseOptions::default()` for the
/// documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseOptions {
    /// The store's own settings; its `deadline` (default 50 ms) bounds every
    /// round trip a decision makes.
    pub store: StoreOptions,
    pub mode: LeaseMode,
    pub down: DownPolicy,
    /// Gateway hosts sharing each quota: a lease is at most the room left
    /// divided by them, and `DownPolicy::Local` admits limit / hosts per
    /// host. 0 (the default, "auto"): the live hosts Redis last counted
    /// (every joined table beats a heartbeat every second; see
    /// `lease::hosts`), 1 until the first count.
    pub hosts: u32,
    /// The most hosts the auto count (`hosts` 0) takes, whatever Redis
    /// holds: a writer other than the hosts that keeps entries in the
    /// heartbeat set shrinks a lease to no less than the room / `max_hosts`
    /// and each host's `Local` down share to no less than limit /
    /// `max_hosts`. Default 64 ([`DEFAULT_MAX_HOSTS`]; 0 is taken as the
    /// default). A configured `hosts` is used as given.
    pub max_hosts: u32,
    /// A lease is sized to last about this long at the key's recent rate.
    /// Default 1 s.
    pub refill_interval: Duration,
    /// A key whose lease was not refilled for this long gives its unspent
    /// units back. Default 5 s.
    pub idle_after: Duration,
    /// Largest lease, in units. Default 100 000.
    pub max_lease: u32,
}

/// `LeaseOptions::max_hosts` by default: several times the gateway fleets
/// one Redis serves in practice (a few to a few dozen hosts), so a real
/// count is not cut, while stray entries in the heartbeat set can shrink
/// a lease to no less than 1/64 of the room (1 000 of them made it 1/1001,
/// at 42 times the round trips) and leave every key of a limit of 64 or
/// more per window a `Local` down share. A larger fleet raises it or
/// configures `hosts`; one whose Redis others write to and whose limits
/// are small lowers it to its size.
pub const DEFAULT_MAX_HOSTS: u32 = 64;

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            store: StoreOptions::default(),
            mode: LeaseMode::Leases,
            down: DownPolicy::Local,
            hosts: 0,
            max_hosts: DEFAULT_MAX_HOSTS,
            refill_interval: Duration::from_secs(1),
            idle_after: Duration::from_secs(5),
            max_lease: 100_000,
        }
    }
}

/// The option names [`LeaseOptions::set`] takes, as the C ABI
/// (`tg_redis_options_set`), nginx's `tollgate_redis` and the docs list
/// them.
pub const OPTION_NAMES: &[&str] = &[
    "mode",
    "down",
    "hosts",
    "max_hosts",
    "deadline",
    "refill_interval",
    "idle_after",
    "max_lease",
    "max_connections",
    "trip_after",
    "cooldown",
    "max_cooldown",
];

impl LeaseOptions {
    /// Sets one option from its name and text, the one parser of these
    /// settings for every binding: `mode=leases|exact`,
    /// `down=local|open|closed`, `hosts=N|auto`, `max_hosts=N`,
    /// `max_lease=N`, `max_connections=N`, `trip_after=N`, and durations
    /// `deadline`, `refill_interval`, `idle_after`, `cooldown`,
    /// `max_cooldown` as a number with a unit (`50ms`, `2s`, `1m`; a bare
    /// number is milliseconds). An unknown name or a bad value is an error that
    /// says which and what is allowed.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let count = |min: u64| -> Result<u64, String> {
            match value.parse::<u64>() {
                Ok(n) if n >= min && n <= u32::MAX as u64 => Ok(n),
                _ => Err(format!(
                    "{name}: \"{value}\" is not a whole number from {min} to {}",
                    u32::MAX
                )),
            }
        };
        let duration = || -> Result<Duration, String> {
            parse_duration(value).ok_or_else(|| {
                format!("{name}: \"{value}\" is not a duration above zero (such as 50ms, 2s, 1m)")
            })
        };
        match name {
            "mode" => {
                self.mode = match value {
                    "leases" => LeaseMode::Leases,
                    "exact" => LeaseMode::Exact,
                    _ => return Err(format!("mode: \"{value}\" is not leases or exact")),
                }
            }
            "down" => {
                self.down = match value {
                    "local" => DownPolicy::Local,
                    "open" => DownPolicy::Open,
                    "closed" => DownPolicy::Closed,
                    _ => return Err(format!("down: \"{value}\" is not local, open or closed")),
                }
            }
            "hosts" if value == "auto" => self.hosts = 0,
            "hosts" => self.hosts = count(1)? as u32,
            "max_hosts" => self.max_hosts = count(1)? as u32,
            "max_lease" => self.max_lease = count(1)? as u32,
            "max_connections" => self.store.max_connections = count(1)? as usize,
            "trip_after" => self.store.trip_after = count(1)? as u32,
            "deadline" => self.store.deadline = duration()?,
            "refill_interval" => self.refill_interval = duration()?,
            "idle_after" => self.idle_after = duration()?,
            "cooldown" => self.store.cooldown = duration()?,
            "max_cooldown" => self.store.max_cooldown = duration()?,
            _ => {
                return Err(format!(
                    "unknown option \"{name}\" (known: {})",
                    OPTION_NAMES.join(", ")
                ))
            }
        }
        Ok(())
    }
}

/// `50ms`, `2s`, `1m`, or a bare number of milliseconds; above zero and
/// at most a day.
fn parse_duration(text: &str) -> Option<Duration> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = text[..digits].parse().ok()?;
    let ms = match &text[digits..] {
        "" | "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        _ => return None,
    };
    (ms > 0 && ms <= 86_400_000).then(|| Duration::from_millis(ms))
}

/// What a joined limiter did since it joined (all handles sharing it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseStats {
    pub mode: LeaseMode,
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
    /// Give-backs and pushes done, and the units they carried.
    pub give_backs: u64,
    pub given_back_units: u64,
    pub pushes: u64,
    pub pushed_units: u64,
    /// Units dropped after an outage rather than given back (they may have
    /// been granted by a Redis that restarted without its data).
    pub dropped_units: u64,
    /// Give-backs, pushes and grant recoveries waiting for Redis.
    pub pending: u64,
    /// Requests that asked not to wait ([`Request::no_wait`]) and were
    /// handed back as [`Error::Pending`] (not counted as decisions: each
    /// is decided again by a call that waits).
    pub deferred: u64,
    /// Microseconds the last answered store call took.
    pub last_latency_us: u64,
    /// The store's own counters (every round trip, failures, breaker).
    pub store: StoreStats,
}

#[derive(Default)]
struct Counters {
    /// Decisions not made from held units (with `from_leases`, all of them).
    slow_decisions: AtomicU64,
    from_leases: AtomicU64,
    refills: AtomicU64,
    top_ups: AtomicU64,
    granted_units: AtomicU64,
    refused_by_store: AtomicU64,
    refused_locally: AtomicU64,
    degraded: AtomicU64,
    degraded_admitted: AtomicU64,
    give_backs: AtomicU64,
    given_back_units: AtomicU64,
    pushes: AtomicU64,
    pushed_units: AtomicU64,
    dropped_units: AtomicU64,
    deferred: AtomicU64,
}

/// What this process knows of a key it took leases for (the slot's units
/// themselves are in the shared table).
struct KeyInfo {
    tag: Tag,
    /// The limits of the key's last refill (for the lease thread's top-ups).
    limits: Limits,
    last_refill: std::time::Instant,
    last_grant: u32,
    /// The outage count (`Inner::epoch`) when Redis last proved it still
    /// counts this key's units: units older than an outage may have been
    /// granted by a Redis that restarted empty, and are never given back.
    epoch: u64,
    /// A thread of this process is asking for this key's next lease; others
    /// meanwhile ask only for their own cost, so a burst does not park one
    /// lease per thread on the host.
    refilling: bool,
}

/// Work for the background thread, retried while Redis is away.
enum Job {
    GiveBack {
        tag: Tag,
        id: OpId,
        minute: u32,
        day: u32,
        at: Instant,
        /// The outage count when the units were known to Redis.
        epoch: u64,
    },
    Push {
        tag: Tag,
        id: OpId,
        units: u32,
        at: Instant,
    },
    /// A grant whose reply did not come: asked again under its id, it
    /// answers what it charged (or charges now), and that goes back.
    Recover {
        tag: Tag,
        id: OpId,
        want: u32,
        min: u32,
        limits: Limits,
        at: Instant,
    },
}

struct Inner {
    store: Store,
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
    down: AtomicBool,
    /// The live hosts Redis last counted (0: none yet), for `hosts` auto.
    live_hosts: AtomicU32,
    /// What the heartbeat is (the table's id) and its connection.
    heartbeat: Mutex<hosts::Heartbeat>,
    /// Times Redis went from answering to not answering.
    epoch: AtomicU64,
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
    /// The lease thread's connection for those looks.
    eviction_conn: Mutex<Option<crate::store::Conn>>,
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
pub fn check(url: &str, opts: &LeaseOptions) -> Result<(), Error> {
    store_for(url, opts).map(drop)
}

/// The store `url` names, for these options; no connection is made.
fn store_for(url: &str, opts: &LeaseOptions) -> Result<Store, Error> {
    if opts.refill_interval.is_zero() || opts.idle_after.is_zero() {
        return Err(Error::Invalid(
            "refill_interval and idle_after must be above zero",
        ));
    }
    if opts.max_lease == 0 {
        return Err(Error::Invalid("max_lease must be at least 1"));
    }
    Store::new(url, opts.store.clone()).map_err(Error::Store)
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
        url: &str,
        opts: LeaseOptions,
        region: Region,
        backing: Arc<Backing>,
    ) -> Result<Joined, Error> {
        let store = store_for(url, &opts)?;
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
        let mut heartbeat = hosts::Heartbeat::new(region.seed());
        let live = if opts.hosts == 0 && !down {
            heartbeat.beat(&store, HEARTBEAT).unwrap_or(0)
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
            down: AtomicBool::new(down),
            live_hosts: AtomicU32::new(live),
            heartbeat: Mutex::new(heartbeat),
            epoch: AtomicU64::new(0),
            events: events::Events::default(),
            seen_trips: AtomicU64::new(0),
            breaker_told: AtomicBool::new(false),
            eviction_risk: AtomicBool::new(false),
            evicted_base: AtomicU64::new(u64::MAX),
            evicted_since: AtomicU64::new(0),
            eviction_conn: Mutex::new(None),
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
            store,
        }
    }

    /// One decision of a joined limiter (see the module's comment).
    pub(crate) fn check(
        &self,
        l: &Limiter,
        req: &Request<'_>,
        p: &Prepared,
        now_ms: u64,
    ) -> Result<Decision, Error> {
        let i = &*self.inner;
        let clock = Clock {
            now: p.now,
            skew: l.skew_minutes(),
        };
        let located =
            slot::locate(&i.region, &p.key, req.account, p.now, req.cost > 0).map_err(|_| {
                i.c.slow_decisions.fetch_add(1, Relaxed);
                Error::TableFull
            })?;
        let Some((slot_i, gen)) = located else {
            i.c.slow_decisions.fetch_add(1, Relaxed);
            // A peek at a key this host never saw: what the last exchange
            // (none) says, fresh windows.
            let o = slot::judge(slot::State::default(), p.limits, 0, clock).0;
            return Ok(Decision::new(o, p.limits, now_ms));
        };
        // The key keeps its slot for the day even when nothing is held in
        // it (exact mode, the down policy): else a key probing past would
        // take the slot, and with it this key's down count.
        slot::keep(&i.region, slot_i, gen, p.now);
        let model = l.policy().models()[p.model].name.as_str();
        let outcome = match i.opts.mode {
            LeaseMode::Leases => i.decide_leased(slot_i, gen, req, p, model, clock),
            LeaseMode::Exact => i.exact(slot_i, gen, req, p, model, clock).map(Spent::Other),
        };
        // A decision from held units counted itself (`from_leases`): the
        // common case pays for one shared counter, not two.
        let outcome = match outcome {
            Ok(Spent::FromLease(o)) => o,
            Ok(Spent::Other(o)) => {
                i.c.slow_decisions.fetch_add(1, Relaxed);
                o
            }
            Err(Error::Pending) => {
                // Not a decision: it is made again by a call that waits.
                i.c.deferred.fetch_add(1, Relaxed);
                return Err(Error::Pending);
            }
            Err(e) => {
                i.c.slow_decisions.fetch_add(1, Relaxed);
                return Err(e);
            }
        };
        if !outcome.allowed {
            crate::refusals::record(
                &i.region,
                p.key.id as u32,
                req.account,
                p.model_id,
                &outcome,
                p.limits,
                now_ms,
            );
        }
        Ok(Decision::new(outcome, p.limits, now_ms))
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

/// How long a key that Redis refused (its window full) is refused without
/// asking again (see `Inner::known_full`).
const RECHECK: Duration = Duration::from_secs(1);

/// What the last refused grant of a key said of its windows' room.
struct Full {
    at: Instant,
    minute_room: u32,
    day_room: u32,
    checked: std::time::Instant,
}

/// The smallest lease asked for while the room left allows it.
const LEASE_FLOOR: u32 = 16;

/// How often a table joined with `hosts` auto renews its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How a decision was made, for the counters.
enum Spent {
    /// From units held, no round trip (counted as it is made).
    FromLease(Outcome),
    Other(Outcome),
}

/// Outcome of a decision rendered from global counts: `minute`/`day` are
/// the counts to show (global as of the last exchange plus this host's
/// spends since).
fn outcome(allowed: bool, limited_by: LimitedBy, at: Instant, minute: u32, day: u32) -> Outcome {
    Outcome {
        allowed,
        limited_by,
        at,
        minute_count: minute,
        day_count: day,
        clock_fault: false,
    }
}

fn refused_by(counts: &Counts, limits: Limits, cost: u32) -> LimitedBy {
    if counts.day_count + cost.max(1) as u64 > limits.rpd as u64 {
        LimitedBy::Day
    } else {
        LimitedBy::Minute
    }
}

fn clamp32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

impl Inner {
    /// The counts to show at `at` for a host holding `held`: the global
    /// counts of the last exchange (which include every unit leased to this
    /// host) less what this host still holds unspent.
    fn shown(&self, slot_i: usize, gen: u16, at: Instant, held: Option<Held>) -> (u32, u32) {
        let (gm, gd) = slot::read_word(&self.region.side(slot_i).global, gen, at);
        let (hm, hd) = match held {
            Some(h) if h.at == at => (h.minute_left, h.day_left),
            Some(h) if h.at.day == at.day => (0, h.day_left),
            _ => (0, 0),
        };
        (gm.saturating_sub(hm), gd.saturating_sub(hd))
    }

    fn note_counts(&self, slot_i: usize, gen: u16, at: Instant, counts: &Counts) {
        slot::raise_word(
            &self.region.side(slot_i).global,
            gen,
            at,
            clamp32(counts.minute_count),
            clamp32(counts.day_count),
        );
    }

    fn answered(&self) {
        if self.down.load(Relaxed) && self.down.swap(false, Relaxed) {
            self.breaker_told.store(false, Relaxed);
            self.events.say(
                Level::Info,
                "redis store answers again: decisions take leases from it; what was admitted meanwhile is being pushed".into(),
            );
            self.wake.notify_all();
        }
    }

    /// A call failed for want of Redis: from answering to not, the outage
    /// is counted and told (once), with Redis's own reason.
    fn failed(&self, e: &StoreError) {
        if !self.down.swap(true, Relaxed) {
            self.epoch.fetch_add(1, Relaxed);
            self.went_down(e);
        }
    }

    fn went_down(&self, e: &StoreError) {
        let policy = match self.opts.down {
            DownPolicy::Local => "local (this host's share of each limit)",
            DownPolicy::Open => "open (admit all, counted)",
            DownPolicy::Closed => "closed (refuse)",
        };
        self.events.say(
            Level::Warn,
            format!("redis store unavailable: {e}; decisions beyond the units held follow the down policy {policy}"),
        );
    }

    /// Looks at Redis's memory limit, eviction policy and evictions, and
    /// tells an operator once when they can drop counts, and each time
    /// keys were evicted (see `lease::eviction`).
    fn look_at_eviction(&self) {
        let deadline = self.opts.store.deadline;
        let mut conn = lock(&self.eviction_conn);
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match self.store.open_conn(deadline) {
                Ok(c) => conn.insert(c),
                Err(_) => return,
            },
        };
        let seen = c
            .set_timeouts(deadline)
            .and_then(|_| eviction::look(c.as_connection_like()));
        let Ok(seen) = seen else {
            *conn = None;
            return;
        };
        let risk = seen.at_risk();
        if risk && !self.eviction_risk.swap(true, Relaxed) {
            self.events.say(
                Level::Warn,
                format!(
                    "redis maxmemory-policy is {} with maxmemory {} bytes: Redis may evict the limiter's counts (they carry TTLs) and over-admit; set maxmemory-policy noeviction or give the limiter a Redis of its own",
                    seen.policy.as_deref().unwrap_or("?"),
                    seen.maxmemory
                ),
            );
        } else if !risk && self.eviction_risk.swap(false, Relaxed) {
            self.events.say(
                Level::Info,
                "redis no longer evicts keys with a TTL (noeviction, or no memory limit)".into(),
            );
        }
        let base = self.evicted_base.load(Relaxed);
        if base == u64::MAX || seen.evicted < base {
            // The first look, or a restarted server.
            self.evicted_base.store(seen.evicted, Relaxed);
            return;
        }
        let since = seen.evicted - base;
        let told = self.evicted_since.swap(since, Relaxed);
        if since > told {
            self.events.say(
                Level::Error,
                format!(
                    "redis evicted {} keys in the last {} s ({since} since joined): counts of the limiter may be among them, and admitted again",
                    since - told,
                    eviction::EVERY.as_secs()
                ),
            );
        }
    }

    /// Tells a breaker trip since the last look (the lease thread looks
    /// every tick).
    fn note_trips(&self) {
        let trips = self.store.stats().trips;
        let seen = self.seen_trips.swap(trips, Relaxed);
        // Once an outage: each failed probe trips it again.
        if trips > seen && !self.breaker_told.swap(true, Relaxed) {
            self.events.say(
                Level::Warn,
                format!(
                    "redis store breaker opened after {} failed calls in a row: calls fail fast, then probe with backoff (from {} ms to {} ms)",
                    self.opts.store.trip_after,
                    self.opts.store.cooldown.as_millis(),
                    self.opts.store.max_cooldown.as_millis()
                ),
            );
        }
    }

    /// Remembers that Redis refused a grant for the key of `(slot_i, gen)`
    /// at `at`: the room each window had then.
    fn note_full(&self, slot_i: usize, gen: u16, at: Instant, counts: &Counts, limits: Limits) {
        let room = |limit: u32, count: u64| {
            (limit as u64).saturating_sub(count).min(u32::MAX as u64) as u32
        };
        lock(&self.full).insert(
            (slot_i, gen),
            Full {
                at,
                minute_room: room(limits.rpm, counts.minute_count),
                day_room: room(limits.rpd, counts.day_count),
                checked: std::time::Instant::now(),
            },
        );
    }

    /// Whether a decision of `cost` at `at` is refused without asking
    /// Redis: its last exchange, less than [`RECHECK`] ago, showed a window
    /// without room for it, and that window is still the current one. The
    /// window that refuses then (the day first, as Redis's script does).
    ///
    /// Refused locally until the window ends would be exact only if no
    /// host ever gave units back; give-backs (an idle host, a leaving one)
    /// can free room within the window, so the key asks again at most once
    /// per `RECHECK` per process, whatever the rate of its refused
    /// requests.
    fn known_full(&self, slot_i: usize, gen: u16, at: Instant, cost: u32) -> Option<LimitedBy> {
        let full = lock(&self.full);
        let f = full.get(&(slot_i, gen))?;
        if f.checked.elapsed() >= RECHECK {
            return None;
        }
        if f.at.day == at.day && cost > f.day_room {
            Some(LimitedBy::Day)
        } else if f.at == at && cost > f.minute_room {
            Some(LimitedBy::Minute)
        } else {
            None
        }
        .inspect(|_| {
            self.c.refused_locally.fetch_add(1, Relaxed);
        })
    }

    fn decide_leased(
        &self,
        slot_i: usize,
        gen: u16,
        req: &Request<'_>,
        p: &Prepared,
        model: &str,
        clock: Clock,
    ) -> Result<Spent, Error> {
        let cost = req.cost;
        let held = match slot::spend(&self.region, slot_i, gen, cost, clock) {
            Some(Ok(h)) => {
                self.c.from_leases.fetch_add(1, Relaxed);
                let (m, d) = self.shown(slot_i, gen, h.at, Some(h));
                return Ok(Spent::FromLease(outcome(true, LimitedBy::None, h.at, m, d)));
            }
            Some(Err(h)) => h,
            // Rebound between the lookup and the spend (a new day reused
            // the slot): this key is new again.
            None => Held {
                at: clock.now,
                minute_left: 0,
                day_left: 0,
            },
        };
        self.refill(slot_i, gen, held, req, p, model, clock)
            .map(Spent::Other)
    }

    /// A leased decision the units held do not cover: a peek, or a grant
    /// from the store (one round trip), or the down policy.
    #[allow(clippy::too_many_arguments)]
    fn refill(
        &self,
        slot_i: usize,
        gen: u16,
        held: Held,
        req: &Request<'_>,
        p: &Prepared,
        model: &str,
        clock: Clock,
    ) -> Result<Outcome, Error> {
        let cost = req.cost;
        let at = held.at;
        if cost == 0 {
            // A peek: one more would pass if held, or if the last exchange
            // left room (no round trip for a look).
            let (m, d) = self.shown(slot_i, gen, at, Some(held));
            let o = slot::judge(
                slot::State {
                    gen: 0,
                    minute: at.minute as u16,
                    day: at.day,
                    minute_count: m,
                    day_count: d,
                },
                p.limits,
                0,
                Clock { now: at, ..clock },
            )
            .0;
            return Ok(o);
        }
        if let Some(by) = self.known_full(slot_i, gen, at, cost) {
            let h =
                slot::spend(&self.region, slot_i, gen, 0, clock).map(|r| r.unwrap_or_else(|h| h));
            let (m, d) = self.shown(slot_i, gen, at, h);
            return Ok(outcome(false, by, at, m, d));
        }
        if req.no_wait && !self.store.fails_fast(&Tag::for_key(req.account, model)) {
            // Nothing changed yet: the caller decides again, waiting.
            return Err(Error::Pending);
        }
        let (want, tag, epoch) = self.want(slot_i, gen, req, p, model, at);
        // Day units left over from earlier minutes cannot be spent without
        // new minute units, and a grant charges both windows: they go back.
        if held.day_left > held.minute_left {
            if let Some((t_at, m, d)) = slot::take(&self.region, slot_i, gen, clock, true) {
                self.queue(Job::GiveBack {
                    tag: tag.clone(),
                    id: OpId::new(),
                    minute: m,
                    day: d,
                    at: t_at,
                    epoch,
                });
            }
        }
        let id = OpId::new();
        self.c.refills.fetch_add(1, Relaxed);
        let hosts = self.hosts();
        let result = self
            .store
            .grant_share(&tag, &id, want, cost, p.limits, at, hosts);
        match result {
            Ok(g) => {
                self.answered();
                self.note_counts(slot_i, gen, at, &g.counts);
                if g.units == 0 {
                    self.c.refused_by_store.fetch_add(1, Relaxed);
                    self.note_full(slot_i, gen, at, &g.counts, p.limits);
                    let by = refused_by(&g.counts, p.limits, cost);
                    let h = slot::spend(&self.region, slot_i, gen, 0, clock)
                        .map(|r| r.unwrap_or_else(|h| h));
                    self.refilled(slot_i, gen, 0, &g.counts, h, clock);
                    let (m, d) = self.shown(slot_i, gen, at, h);
                    return Ok(outcome(false, by, at, m, d));
                }
                self.c.granted_units.fetch_add(g.units as u64, Relaxed);
                let after = slot::add(&self.region, slot_i, gen, at, g.units, cost, clock.skew);
                self.refilled(slot_i, gen, g.units, &g.counts, after, clock);
                if after.is_none() && g.units > cost {
                    // Rebound meanwhile: this decision spent its cost, the
                    // rest has nowhere to live.
                    self.queue(Job::GiveBack {
                        tag,
                        id: OpId::new(),
                        minute: g.units - cost,
                        day: g.units - cost,
                        at,
                        epoch: self.epoch.load(Relaxed),
                    });
                }
                let (m, d) = self.shown(slot_i, gen, at, after);
                Ok(outcome(true, LimitedBy::None, at, m, d))
            }
            Err(e) => {
                self.refilled(slot_i, gen, 0, &Counts::default(), None, clock);
                self.unanswered(e, slot_i, gen, req, p, tag, id, want, at, clock)
            }
        }
    }

    fn exact(
        &self,
        slot_i: usize,
        gen: u16,
        req: &Request<'_>,
        p: &Prepared,
        model: &str,
        clock: Clock,
    ) -> Result<Outcome, Error> {
        let (cost, at) = (req.cost, clock.now);
        if cost == 0 {
            let (m, d) = self.shown(slot_i, gen, at, None);
            let s = slot::State {
                gen: 0,
                minute: at.minute as u16,
                day: at.day,
                minute_count: m,
                day_count: d,
            };
            return Ok(slot::judge(s, p.limits, 0, clock).0);
        }
        if let Some(by) = self.known_full(slot_i, gen, at, cost) {
            let (m, d) = self.shown(slot_i, gen, at, None);
            return Ok(outcome(false, by, at, m, d));
        }
        let tag = Tag::for_key(req.account, model);
        if req.no_wait && !self.store.fails_fast(&tag) {
            return Err(Error::Pending);
        }
        let id = OpId::new();
        self.c.refills.fetch_add(1, Relaxed);
        match self.store.grant_once(&tag, &id, cost, cost, p.limits, at) {
            Ok(g) => {
                self.answered();
                self.note_counts(slot_i, gen, at, &g.counts);
                let allowed = g.units > 0;
                if allowed {
                    self.c.granted_units.fetch_add(g.units as u64, Relaxed);
                } else {
                    self.c.refused_by_store.fetch_add(1, Relaxed);
                    self.note_full(slot_i, gen, at, &g.counts, p.limits);
                }
                let by = if allowed {
                    LimitedBy::None
                } else {
                    refused_by(&g.counts, p.limits, cost)
                };
                let (m, d) = self.shown(slot_i, gen, at, None);
                Ok(outcome(allowed, by, at, m, d))
            }
            Err(e) => self.unanswered(e, slot_i, gen, req, p, tag, id, cost, at, clock),
        }
    }

    /// A grant that got no answer: recover it later if it may have been
    /// charged, and decide by the down policy now.
    #[allow(clippy::too_many_arguments)]
    fn unanswered(
        &self,
        e: StoreError,
        slot_i: usize,
        gen: u16,
        req: &Request<'_>,
        p: &Prepared,
        tag: Tag,
        id: OpId,
        want: u32,
        at: Instant,
        clock: Clock,
    ) -> Result<Outcome, Error> {
        match e {
            StoreError::Timeout { .. } => {
                self.failed(&e);
                self.queue(Job::Recover {
                    tag: tag.clone(),
                    id,
                    want,
                    min: req.cost,
                    limits: p.limits,
                    at,
                });
            }
            ref e if e.is_unavailable() => self.failed(e),
            other => return Err(Error::Store(other)),
        }
        self.c.degraded.fetch_add(1, Relaxed);
        let cost = req.cost;
        let (allowed, o) = match self.opts.down {
            DownPolicy::Closed => {
                // Refused for want of Redis, not of quota: the minute shows
                // none left (a 429 saying "29 remaining" would read as a
                // bug), the day what the last exchange said.
                let (_, d) = self.shown(slot_i, gen, at, None);
                (
                    false,
                    outcome(false, LimitedBy::Minute, at, p.limits.rpm, d),
                )
            }
            DownPolicy::Open => {
                let (m, d) = self.shown(slot_i, gen, at, None);
                (true, outcome(true, LimitedBy::None, at, m, d))
            }
            DownPolicy::Local => {
                let hosts = self.hosts();
                let share = Limits {
                    rpm: p.limits.rpm / hosts,
                    rpd: p.limits.rpd / hosts,
                };
                let o = if share.rpm == 0 || share.rpd == 0 || cost > share.rpm.min(share.rpd) {
                    outcome(false, LimitedBy::Minute, at, share.rpm, share.rpd)
                } else {
                    slot::charge_word(&self.region.side(slot_i).down, gen, share, cost, clock)
                };
                // Shown against the whole limit: what is left of the share.
                let m = o.minute_count + (p.limits.rpm - share.rpm);
                let d = o.day_count + (p.limits.rpd - share.rpd);
                (
                    o.allowed,
                    Outcome {
                        minute_count: m,
                        day_count: d,
                        ..o
                    },
                )
            }
        };
        if allowed {
            self.c.degraded_admitted.fetch_add(1, Relaxed);
            *lock(&self.unpushed).entry((tag, o.at)).or_insert(0) += cost;
        }
        Ok(o)
    }

    /// The size of the next lease for a key, and its tag: about the key's
    /// rate over the last lease times the refill interval (growing at most
    /// 16-fold per refill), at least the cost, at most the room left as of
    /// the last exchange divided among the hosts.
    fn want(
        &self,
        slot_i: usize,
        gen: u16,
        req: &Request<'_>,
        p: &Prepared,
        model: &str,
        at: Instant,
    ) -> (u32, Tag, u64) {
        let cost = req.cost;
        let now = std::time::Instant::now();
        let mut keys = lock(&self.keys);
        let info = keys.entry((slot_i, gen)).or_insert_with(|| KeyInfo {
            tag: Tag::for_key(req.account, model),
            limits: p.limits,
            last_refill: now,
            last_grant: 0,
            epoch: self.epoch.load(Relaxed),
            refilling: false,
        });
        let tag = info.tag.clone();
        if info.refilling {
            return (cost, tag, info.epoch);
        }
        info.refilling = true;
        info.limits = p.limits;
        let want = self.lease_size(info, slot_i, gen, at, now).max(cost);
        (want, tag, info.epoch)
    }

    /// A key's next lease before the floor of the cost: its rate over the
    /// last lease times the refill interval, at most 16 times the last
    /// lease, the room left per host as of the last exchange and
    /// `max_lease`.
    fn lease_size(
        &self,
        info: &KeyInfo,
        slot_i: usize,
        gen: u16,
        at: Instant,
        now: std::time::Instant,
    ) -> u32 {
        let elapsed = now.duration_since(info.last_refill).as_secs_f64().max(1e-6);
        let rate = info.last_grant as f64 / elapsed;
        let by_rate = (rate * self.opts.refill_interval.as_secs_f64()).ceil();
        let grown = (info.last_grant as f64 * 16.0).max(16.0);
        let est = by_rate.min(grown).min(u32::MAX as f64) as u32;
        let (gm, gd) = slot::read_word(&self.region.side(slot_i).global, gen, at);
        let room = info
            .limits
            .rpm
            .saturating_sub(gm)
            .min(info.limits.rpd.saturating_sub(gd));
        let share = room / self.hosts();
        // A floor: a key's rate is measured between its refills, which a
        // lease of one or two units makes slow, so sized by rate alone a
        // cold table of many keys stays near one round trip per decision.
        // At most a quarter of the share, so small limits stay fine-grained
        // (fresh headers, little parked on one host).
        let est = est.max(LEASE_FLOOR.min(share / 4));
        est.min(share).min(self.opts.max_lease)
    }

    /// Hot keys whose units fell below half their last lease get the next
    /// one from this thread, so their decisions do not wait for it. Keys
    /// near their limit (a lease below 16 units) are left to the decisions,
    /// which then take exactly what they need.
    fn top_up(&self) {
        if self.opts.mode != LeaseMode::Leases || self.down.load(Relaxed) {
            return;
        }
        let now = std::time::Instant::now();
        let clock = Clock {
            now: Instant::from_ms(crate::now_ms()).unwrap_or(Instant { day: 0, minute: 0 }),
            skew: self.skew,
        };
        let mut due = Vec::new();
        {
            let mut keys = lock(&self.keys);
            for (&(i, gen), info) in keys.iter_mut() {
                if info.refilling
                    || info.last_grant < 16
                    || info.last_refill.elapsed() >= self.opts.idle_after
                {
                    continue;
                }
                let s = slot::State::unpack(self.region.slot(i).state());
                if s.gen != gen {
                    continue;
                }
                let h = s.held(clock.now, clock.skew);
                if h.minute_left.min(h.day_left) > info.last_grant / 2 {
                    continue;
                }
                let want = self.lease_size(info, i, gen, h.at, now);
                if want < 16 {
                    continue;
                }
                info.refilling = true;
                due.push((i, gen, info.tag.clone(), info.limits, want, h.at));
            }
        }
        for (i, gen, tag, limits, want, at) in due {
            let id = OpId::new();
            self.c.top_ups.fetch_add(1, Relaxed);
            let result = self
                .store
                .grant_share(&tag, &id, want, 1, limits, at, self.hosts());
            let clock = Clock {
                now: at,
                skew: self.skew,
            };
            match result {
                Ok(g) => {
                    self.answered();
                    self.note_counts(i, gen, at, &g.counts);
                    self.c.granted_units.fetch_add(g.units as u64, Relaxed);
                    let after = if g.units > 0 {
                        slot::add(&self.region, i, gen, at, g.units, 0, self.skew)
                    } else {
                        None
                    };
                    self.refilled(i, gen, g.units, &g.counts, after, clock);
                    if after.is_none() && g.units > 0 {
                        self.queue(Job::GiveBack {
                            tag,
                            id: OpId::new(),
                            minute: g.units,
                            day: g.units,
                            at,
                            epoch: self.epoch.load(Relaxed),
                        });
                    }
                }
                Err(e) => {
                    self.refilled(i, gen, 0, &Counts::default(), None, clock);
                    if e.is_unavailable() {
                        self.failed(&e);
                        if matches!(e, StoreError::Timeout { .. }) {
                            self.queue(Job::Recover {
                                tag,
                                id,
                                want,
                                min: 1,
                                limits,
                                at,
                            });
                        }
                        return;
                    }
                }
            }
        }
    }

    /// Notes a refill's end: the key's rate, and (when Redis answered,
    /// `held` being what the host holds after it) whether Redis still
    /// counts the units held. Its counts include every unit leased to this
    /// host in the window, so counts below the units held mean Redis lost
    /// them (a restart without persistence): those units are dropped, not
    /// spent further nor given back.
    fn refilled(
        &self,
        slot_i: usize,
        gen: u16,
        units: u32,
        counts: &Counts,
        held: Option<Held>,
        clock: Clock,
    ) {
        let mut keys = lock(&self.keys);
        let Some(info) = keys.get_mut(&(slot_i, gen)) else {
            return;
        };
        if info.refilling {
            info.refilling = false;
            info.last_refill = std::time::Instant::now();
            info.last_grant = units;
        }
        let Some(h) = held else {
            return;
        };
        let epoch = self.epoch.load(Relaxed);
        if info.epoch == epoch || self.down.load(Relaxed) {
            return;
        }
        if counts.day_count < h.day_left as u64 || counts.minute_count < h.minute_left as u64 {
            if let Some((_, m, d)) = slot::take(&self.region, slot_i, gen, clock, false) {
                self.c.dropped_units.fetch_add(m.max(d) as u64, Relaxed);
            }
        }
        info.epoch = epoch;
    }

    fn queue(&self, job: Job) {
        lock(&self.jobs).push(job);
        self.wake.notify_all();
    }

    /// The background thread: pending work every tick, idle keys' units
    /// back every few ticks, until told to stop.
    fn run(&self) {
        let tick = (self.opts.refill_interval / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut last_scan = std::time::Instant::now();
        // The first look at Redis's eviction settings on the first tick.
        let mut last_eviction_look: Option<std::time::Instant> = None;
        let mut last_beat = std::time::Instant::now();
        loop {
            {
                let stop = lock(&self.stop);
                if *stop {
                    return;
                }
                let (stop, _) = self
                    .wake
                    .wait_timeout(stop, tick)
                    .unwrap_or_else(|p| p.into_inner());
                if *stop {
                    return;
                }
            }
            self.note_trips();
            if last_eviction_look.is_none_or(|t| t.elapsed() >= eviction::EVERY)
                && !self.down.load(Relaxed)
            {
                last_eviction_look = Some(std::time::Instant::now());
                self.look_at_eviction();
            }
            self.flush();
            if self.opts.hosts == 0 && last_beat.elapsed() >= HEARTBEAT {
                last_beat = std::time::Instant::now();
                self.beat();
            }
            self.top_up();
            if last_scan.elapsed() >= self.opts.idle_after / 4 {
                last_scan = std::time::Instant::now();
                self.give_back_idle();
            }
        }
    }

    /// Renews this table's heartbeat and takes the live count. Redis not
    /// answering keeps the count last seen (the `Local` share divides by
    /// it); the store's own calls notice the outage.
    fn beat(&self) {
        let tag = Tag::new(hosts::TAG).expect("a valid tag");
        if self.store.fails_fast(&tag) {
            return;
        }
        if let Ok(n) = lock(&self.heartbeat).beat(&self.store, HEARTBEAT) {
            self.live_hosts.store(n, Relaxed);
        }
    }

    /// The hosts sharing each quota: as configured, or as Redis last
    /// counted them (at least 1, at most `max_hosts`: entries a stray
    /// writer keeps in the set cannot shrink leases and down shares
    /// further).
    fn hosts(&self) -> u32 {
        match self.opts.hosts {
            0 => {
                let most = match self.opts.max_hosts {
                    0 => DEFAULT_MAX_HOSTS,
                    n => n,
                };
                self.live_hosts.load(Relaxed).clamp(1, most)
            }
            n => n,
        }
    }

    /// Takes the units of keys not refilled within `idle_after` (all keys
    /// with `all`) and queues them to go back.
    fn collect(&self, all: bool) {
        let clock = Clock {
            now: Instant::from_ms(crate::now_ms()).unwrap_or(Instant { day: 0, minute: 0 }),
            skew: self.skew,
        };
        let idle: Vec<((usize, u16), Tag, u64)> = {
            let mut keys = lock(&self.keys);
            let cut = self.opts.idle_after;
            let gone: Vec<(usize, u16)> = keys
                .iter()
                .filter(|(_, k)| all || (!k.refilling && k.last_refill.elapsed() >= cut))
                .map(|(&k, _)| k)
                .collect();
            gone.into_iter()
                .filter_map(|k| keys.remove(&k).map(|info| (k, info.tag, info.epoch)))
                .collect()
        };
        for ((i, gen), tag, epoch) in idle {
            if let Some((at, minute, day)) = slot::take(&self.region, i, gen, clock, false) {
                self.queue(Job::GiveBack {
                    tag,
                    id: OpId::new(),
                    minute,
                    day,
                    at,
                    epoch,
                });
            }
        }
    }

    fn give_back_idle(&self) {
        lock(&self.full).retain(|_, f| f.checked.elapsed() < RECHECK);
        self.collect(false);
        self.flush();
    }

    /// Runs the pending work in order; stops at the first transport
    /// failure (Redis still away) and keeps the rest for the next tick.
    fn flush(&self) {
        {
            let mut unpushed = lock(&self.unpushed);
            if !unpushed.is_empty() {
                let mut jobs = lock(&self.jobs);
                for ((tag, at), units) in unpushed.drain() {
                    jobs.push(Job::Push {
                        tag,
                        id: OpId::new(),
                        units,
                        at,
                    });
                }
            }
        }
        let (mut pushes, mut units) = (0u64, 0u64);
        loop {
            let job = {
                let mut jobs = lock(&self.jobs);
                if jobs.is_empty() {
                    if pushes > 0 {
                        self.events.say(
                            Level::Info,
                            format!("redis store: pushed the {units} unit(s) admitted while it was unavailable ({pushes} key-minutes); the backlog is empty"),
                        );
                    }
                    return;
                }
                jobs.remove(0)
            };
            match self.run_job(&job) {
                Ok(()) => {
                    if let Job::Push { units: u, .. } = &job {
                        pushes += 1;
                        units += *u as u64;
                    }
                }
                Err(e) if e.is_unavailable() => {
                    self.failed(&e);
                    lock(&self.jobs).insert(0, job);
                    return;
                }
                // Redis answered with an error: retrying will not help.
                Err(_) => {}
            }
        }
    }

    fn run_job(&self, job: &Job) -> Result<(), StoreError> {
        match job {
            Job::GiveBack {
                tag,
                id,
                minute,
                day,
                at,
                epoch,
            } => {
                if *epoch != self.epoch.load(Relaxed) {
                    // Granted before an outage: the Redis that answers now
                    // may not be the one that counted them (a restart
                    // without persistence), and giving them back would
                    // take them from counts made since. Kept counted.
                    self.c
                        .dropped_units
                        .fetch_add((*minute).max(*day) as u64, Relaxed);
                    return Ok(());
                }
                let a = self.store.give_back(tag, id, *minute, *day, *at)?;
                self.answered();
                if !a.replayed {
                    self.c.give_backs.fetch_add(1, Relaxed);
                    self.c
                        .given_back_units
                        .fetch_add(a.minute_units.max(a.day_units), Relaxed);
                }
            }
            Job::Push { tag, id, units, at } => {
                let a = self.store.push(tag, id, *units, *units, *at)?;
                self.answered();
                if !a.replayed {
                    self.c.pushes.fetch_add(1, Relaxed);
                    self.c.pushed_units.fetch_add(*units as u64, Relaxed);
                }
            }
            Job::Recover {
                tag,
                id,
                want,
                min,
                limits,
                at,
            } => {
                let g = self
                    .store
                    .grant_share(tag, id, *want, *min, *limits, *at, self.hosts())?;
                // Before queueing its give-back: a recovery drops queued ones.
                self.answered();
                if g.units > 0 {
                    // Pushed in its place so the flush goes on in order.
                    lock(&self.jobs).insert(
                        0,
                        Job::GiveBack {
                            tag: tag.clone(),
                            id: OpId::new(),
                            minute: g.units,
                            day: g.units,
                            at: *at,
                            epoch: self.epoch.load(Relaxed),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Leaving the store: every key's unspent units go back, then the
    /// pending work is tried once more (each call under the deadline; the
    /// breaker makes the rest fail fast if Redis is away).
    fn release_all(&self) {
        self.collect(true);
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_set_by_name() {
        let mut o = LeaseOptions::default();
        for (n, v) in [
            ("mode", "exact"),
            ("down", "closed"),
            ("hosts", "3"),
            ("max_hosts", "16"),
            ("deadline", "20ms"),
            ("refill_interval", "2s"),
            ("idle_after", "1m"),
            ("max_lease", "500"),
            ("max_connections", "8"),
            ("trip_after", "5"),
            ("cooldown", "100"),
            ("max_cooldown", "10s"),
        ] {
            o.set(n, v).unwrap();
        }
        assert_eq!(o.mode, LeaseMode::Exact);
        assert_eq!(o.down, DownPolicy::Closed);
        assert_eq!(o.hosts, 3);
        assert_eq!(o.max_hosts, 16);
        assert_eq!(o.store.deadline, Duration::from_millis(20));
        assert_eq!(o.refill_interval, Duration::from_secs(2));
        assert_eq!(o.idle_after, Duration::from_secs(60));
        assert_eq!(o.max_lease, 500);
        assert_eq!(o.store.max_connections, 8);
        assert_eq!(o.store.trip_after, 5);
        assert_eq!(o.store.cooldown, Duration::from_millis(100));
        assert_eq!(o.store.max_cooldown, Duration::from_secs(10));
    }

    #[test]
    fn bad_options_say_what_is_wrong_and_change_nothing() {
        let mut o = LeaseOptions::default();
        for (n, v, says) in [
            ("mode", "fast", "leases or exact"),
            ("down", "", "local, open or closed"),
            ("hosts", "0", "from 1"),
            ("hosts", "-1", "whole number"),
            ("hosts", "99999999999", "whole number"),
            ("max_hosts", "0", "from 1"),
            ("max_hosts", "auto", "whole number"),
            ("max_hosts", "-5", "whole number"),
            ("max_hosts", "4294967296", "whole number"),
            ("deadline", "0ms", "above zero"),
            ("deadline", "5h", "duration"),
            ("deadline", "ms", "duration"),
            ("deadline", "2d", "duration"),
            ("deadlines", "5", "unknown option"),
        ] {
            let e = o.set(n, v).unwrap_err();
            assert!(e.contains(says), "{n}={v}: {e}");
        }
        assert_eq!(o, LeaseOptions::default());
    }
}

//! The global quota store (feature `redis`): both windows' counts of every
//! (account, model) in Redis, so that several gateway hosts share one quota.
//!
//! This is the first layer of the multi-host design (docs/multi-host.md):
//! the calls a host makes to Redis. A host takes a lease of n units of both
//! windows at once ([`Store::grant`]), spends it locally, gives back what it
//! did not spend while the window is open ([`Store::give_back`]), and after
//! Redis was away adds what it spent meanwhile ([`Store::push`]). Each call
//! is one run of one Lua script (`store/lease.lua`) over both windows' keys,
//! atomic in Redis; the calls that change counts by a caller's id are
//! idempotent, so a retry after a timeout does not count twice.
//!
//! Client crate: `redis` (redis-rs), its blocking API and its Cluster
//! client. It is the maintained, most used Rust client, speaks to Redis,
//! Valkey and Cluster, loads a script on NOSCRIPT by itself, and needs no
//! async runtime: this layer runs off the decision path (a refiller, or a
//! decision that chose to wait), where a blocking call under a deadline is
//! the simplest correct thing. `fred` is async-first (tokio) and would
//! bring a runtime into a C library that has none.
//!
//! Threads: a [`Store`] is `Send + Sync`; calls take a connection from a
//! small pool ([`StoreOptions::max_connections`]) and wait for one no longer
//! than their deadline.

mod breaker;
mod conn;
mod script;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;

pub use self::breaker::BreakerState;
use self::breaker::{Breakers, Scope};
pub use self::conn::redact;
pub(crate) use self::conn::Conn;
use self::conn::{Pool, Target};
use self::script::{Call, Op, Times};
use crate::policy::Limits;
pub use crate::window::Instant;

/// How long a call may take by default, connecting included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(50);
/// A minute key lives this long past its minute's end: a host whose clock
/// is a little behind, or a give-back in flight at the boundary, still
/// finds the count.
pub const MINUTE_GRACE: Duration = Duration::from_secs(60);
/// A day key lives this long past its day's end, for the same reasons.
pub const DAY_GRACE: Duration = Duration::from_secs(3_600);
/// How long a grant's record (see [`Store::grant_once`]) is kept: a retry
/// of the same grant within this time gets the first answer back.
pub const GRANT_RECORD_TTL: Duration = Duration::from_secs(10);
/// Longest tag [`Tag::new`] accepts.
pub const TAG_MAX: usize = 128;

/// Settings of a [`Store`]; `StoreOptions::default()` for the documented
/// defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Longest a call takes (waiting for a pooled connection, connecting
    /// and the reply), then it is a [`StoreError::Timeout`]. Default 50 ms.
    /// On a Cluster the client may follow one redirect within the call,
    /// each step bounded by this deadline.
    pub deadline: Duration,
    /// Consecutive transport failures (timeouts, refused or dropped
    /// connections) that open the breaker. Default 3.
    pub trip_after: u32,
    /// How long an open breaker fails calls at once before letting one
    /// probe through. Each failed probe doubles it, up to `max_cooldown`.
    /// Default 250 ms.
    pub cooldown: Duration,
    /// Default 5 s.
    pub max_cooldown: Duration,
    /// Connections the store keeps at most. Default 4.
    pub max_connections: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            deadline: DEFAULT_DEADLINE,
            trip_after: 3,
            cooldown: Duration::from_millis(250),
            max_cooldown: Duration::from_secs(5),
            max_connections: 4,
        }
    }
}

/// Why a store call did not happen. No Redis reply makes the store panic:
/// an unexpected one is `Protocol`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The URL or options are unusable; the text says why.
    Config(String),
    /// An argument out of range; the text says which.
    Invalid(&'static str),
    /// The deadline passed before Redis answered (`during` says at which
    /// step). The call may or may not have taken effect in Redis: retry a
    /// `grant_once`, `give_back` or `push` with the same id to find out.
    Timeout {
        after: Duration,
        during: &'static str,
    },
    /// Redis could not be reached (connection refused or dropped, no
    /// route); the text is the client's.
    Down(String),
    /// Redis answered, but with an error reply that means it cannot serve
    /// now: BUSY (another client's long script), OOM (maxmemory with
    /// noeviction), LOADING, READONLY or MASTERDOWN (a failover),
    /// CLUSTERDOWN, TRYAGAIN, MISCONF, NOREPLICAS, "max number of clients
    /// reached", NOAUTH or WRONGPASS (a password changed under a running
    /// gateway). Like `Down` it opens the breaker and decisions follow the
    /// down policy: retrying later can help, failing the caller cannot.
    /// The text is Redis's own reply.
    Refused(String),
    /// The breaker is open after repeated failures: no call was made.
    /// `retry_in` is the rest of the cool-down (zero while a probe runs).
    CircuitOpen { retry_in: Duration },
    /// Redis ran the script and it failed (for example a key of ours holds
    /// something that is not a count).
    Script(String),
    /// A reply of a shape the store does not expect.
    Protocol(String),
}

impl StoreError {
    /// A failure of Redis to serve the call, for want of Redis (what the
    /// breaker counts): no answer in time, unreachable, or an error reply
    /// that means "not now" ([`StoreError::Refused`]); as against an error
    /// in the call or in the data, which retrying does not mend.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout { .. } | StoreError::Down(_) | StoreError::Refused(_)
        )
    }

    /// Redis is unavailable to this call: a transport failure, or the
    /// breaker refused the call without making it. What the down policy
    /// covers.
    pub fn is_unavailable(&self) -> bool {
        self.is_transport() || matches!(self, StoreError::CircuitOpen { .. })
    }
}

impl StoreError {
    /// The same error with the password of `url` blotted out of its text.
    fn scrubbed(self, url: &str) -> StoreError {
        let s = |t: String| conn::scrub(&t, url);
        match self {
            StoreError::Config(t) => StoreError::Config(s(t)),
            StoreError::Down(t) => StoreError::Down(s(t)),
            StoreError::Refused(t) => StoreError::Refused(s(t)),
            StoreError::Script(t) => StoreError::Script(s(t)),
            StoreError::Protocol(t) => StoreError::Protocol(s(t)),
            other => other,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Config(why) => write!(f, "redis store configuration: {why}"),
            StoreError::Invalid(what) => write!(f, "invalid argument: {what}"),
            StoreError::Timeout { after, during } => write!(
                f,
                "redis store: no answer within the deadline ({} ms) {during}",
                after.as_millis()
            ),
            StoreError::Down(why) => write!(f, "redis store unreachable: {why}"),
            StoreError::Refused(why) => write!(f, "redis store cannot serve now: {why}"),
            StoreError::CircuitOpen { retry_in } => write!(
                f,
                "redis store: circuit open after repeated failures, next try in {} ms",
                retry_in.as_millis()
            ),
            StoreError::Script(why) => write!(f, "redis store script failed: {why}"),
            StoreError::Protocol(why) => write!(f, "redis store: unexpected reply: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// The hash tag that names one (account, model) in Redis: all its keys are
/// `tg:{<tag>}:...`, so a Cluster keeps them in one slot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tag(Vec<u8>);

impl Tag {
    /// A tag used as given: 1 to [`TAG_MAX`] bytes without `}` (Redis ends
    /// the hash tag at the first `}`, so one inside would split the keys of
    /// a tag over slots, or merge tags). Any byte string fits through
    /// [`Tag::hex`].
    pub fn new(bytes: &[u8]) -> Result<Tag, StoreError> {
        if bytes.is_empty() || bytes.len() > TAG_MAX {
            return Err(StoreError::Invalid("tag must be 1 to 128 bytes"));
        }
        if bytes.contains(&b'}') {
            return Err(StoreError::Invalid(
                "tag must not contain '}' (it would end the hash tag)",
            ));
        }
        Ok(Tag(bytes.to_vec()))
    }

    /// The lower-case hex of any bytes (a key digest, say): always a valid
    /// tag; up to 64 bytes.
    pub fn hex(bytes: &[u8]) -> Result<Tag, StoreError> {
        if bytes.is_empty() || bytes.len() * 2 > TAG_MAX {
            return Err(StoreError::Invalid("tag bytes must be 1 to 64 bytes"));
        }
        Ok(Tag(hex(bytes).into_bytes()))
    }

    /// The tag of one (account, model): 32 hex digits of BLAKE2b-128 over
    /// the account's length, the account and the model. Hostile account
    /// bytes cannot reach the key, and (a, bc) and (ab, c) differ.
    pub fn for_key(account: &[u8], model: &str) -> Tag {
        let mut h = Blake2bVar::new(16).expect("16 is a valid BLAKE2b digest size");
        h.update(b"tollgate-store-tag\0");
        h.update(&(account.len() as u64).to_le_bytes());
        h.update(account);
        h.update(model.as_bytes());
        let mut out = [0u8; 16];
        h.finalize_variable(&mut out)
            .expect("the buffer is the digest size");
        Tag(hex(&out).into_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The names of the minute key and the day key of `tag` at `at`
/// (`tg:{<tag>}:m:<epoch minute>`, `tg:{<tag>}:d:<epoch day>`), for
/// operators and tests that look into Redis.
pub fn key_names(tag: &Tag, at: Instant) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    script::window_keys(tag, at)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Names one give-back, push or grant so that a retry of it is recognised:
/// the first run records the id in Redis (`tg:{tag}:<r|p|g>:<id>`) in the
/// same script, and a second run with the same id changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OpId(String);

impl OpId {
    /// A fresh id, unique across processes and hosts in practice: 64 bits
    /// seeded from the OS's randomness once per process, then a counter.
    pub fn new() -> OpId {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::OnceLock;
        static SEED: OnceLock<u64> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let seed = *SEED.get_or_init(|| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.write_u64(crate::now_ms());
            h.finish()
        });
        let n = NEXT.fetch_add(1, Relaxed);
        OpId(format!("{seed:016x}{n:016x}"))
    }

    /// An id from the caller's own bytes (1 to 32), hex-encoded.
    pub fn from_bytes(bytes: &[u8]) -> Result<OpId, StoreError> {
        if bytes.is_empty() || bytes.len() > 32 {
            return Err(StoreError::Invalid("operation id must be 1 to 32 bytes"));
        }
        Ok(OpId(hex(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for OpId {
    fn default() -> Self {
        OpId::new()
    }
}

/// Both windows' global counts as Redis holds them, and the time each key
/// has left (`None`: no key, that is a count of 0, or a key without expiry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub minute_count: u64,
    pub day_count: u64,
    pub minute_ttl_ms: Option<u64>,
    pub day_ttl_ms: Option<u64>,
}

/// The answer to a grant: `units` charged to both windows (0: nothing
/// charged anywhere), and the counts after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub units: u32,
    /// The same id was granted before (within [`GRANT_RECORD_TTL`]):
    /// `units` is that first answer and nothing was charged now.
    pub replayed: bool,
    pub counts: Counts,
}

/// The answer to a give-back or a push: the units applied to each window
/// now (a give-back skips a closed window and never goes below 0), and the
/// counts after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub minute_units: u64,
    pub day_units: u64,
    /// The id was applied before: nothing changed now.
    pub replayed: bool,
    pub counts: Counts,
}

/// What the store did since it was made (for `tollgate stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreStats {
    /// Calls asked of the store (every operation, failed or not).
    pub calls: u64,
    /// Calls Redis answered (the script ran, or refused with a script error).
    pub answered: u64,
    /// Calls that failed for any reason, fast-failed ones included.
    pub failures: u64,
    /// Of the failures: deadline passed.
    pub timeouts: u64,
    /// Of the failures: refused by the open breaker without a call.
    pub circuit_open: u64,
    /// Times the breaker opened.
    pub trips: u64,
    /// Connections opened (the first ones and every reconnection).
    pub connects: u64,
    /// Give-backs, pushes and grants recognised as retries.
    pub replays: u64,
    /// Microseconds the last answered call took.
    pub last_latency_us: u64,
    /// On one server, its breaker's state. On a Cluster, which has a
    /// breaker per hash slot, the worst of them: `Open` if any slot's is
    /// open, else `HalfOpen` if any slot's probe is in flight.
    pub breaker: BreakerState,
    /// Cluster hash slots whose breaker is open or probing now (0 on one
    /// server: see `breaker`).
    pub open_slots: usize,
    /// Connections open now.
    pub connections: usize,
}

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

/// A connection (pool) to the Redis that holds the global counts.
pub struct Store {
    target: Target,
    opts: StoreOptions,
    pool: Pool,
    /// One breaker for a single server, one per hash slot for a Cluster.
    breakers: Mutex<Breakers>,
    script: redis::Script,
    times: Times,
    counters: Counters,
    /// The URL, kept only to blot its password out of the client's error
    /// texts.
    url: String,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("cluster", &self.target.is_cluster())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store for `url`, without contacting Redis yet (so a host can start
    /// while Redis is down): `redis://host:port/db` (or `valkey://`) for
    /// one server, Redis or Valkey; `redis+cluster://host:port,host:port`
    /// (or `valkey+cluster://`) for a Cluster by its seed nodes
    /// (`user:pass@` before the first host applies to all).
    pub fn new(url: &str, opts: StoreOptions) -> Result<Store, StoreError> {
        if opts.deadline.is_zero() {
            return Err(StoreError::Config("deadline must be above zero".into()));
        }
        if opts.max_connections == 0 {
            return Err(StoreError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        let target = Target::from_url(url, opts.deadline)?;
        Ok(Store {
            target,
            pool: Pool::new(opts.max_connections),
            breakers: Mutex::new(Breakers::new(
                opts.trip_after,
                opts.cooldown,
                opts.max_cooldown,
            )),
            script: script::script(),
            times: Times {
                minute_grace_ms: MINUTE_GRACE.as_millis() as u64,
                day_grace_ms: DAY_GRACE.as_millis() as u64,
                grant_record_ms: GRANT_RECORD_TTL.as_millis() as u64,
            },
            counters: Counters::default(),
            opts,
            url: url.to_string(),
        })
    }

    /// [`Store::new`], then one call to check that Redis answers.
    pub fn connect(url: &str, opts: StoreOptions) -> Result<Store, StoreError> {
        let store = Store::new(url, opts)?;
        // A read of a tag no key uses: it also loads the script.
        let tag = Tag(b"tollgate-connect-check".to_vec());
        store.counts(&tag, Instant { day: 0, minute: 0 })?;
        Ok(store)
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// The SHA1 the script is called by (`EVALSHA`), for `SCRIPT EXISTS`.
    pub fn script_hash(&self) -> &str {
        self.script.get_hash()
    }

    /// Grants the largest n with `min <= n <= want` that fits under both
    /// limits, charging both windows of `at` by n; n = 0 (nothing charged)
    /// if even `min` does not fit. `want = min = cost` is the exact mode:
    /// one call per decision, all or nothing.
    ///
    /// A timeout leaves it unknown whether units were charged; use
    /// [`Store::grant_once`] to be able to ask again. (On a Cluster every
    /// grant carries an id of its own, so the client's internal retry never
    /// charges twice.)
    pub fn grant(
        &self,
        tag: &Tag,
        want: u32,
        min: u32,
        limits: Limits,
        at: Instant,
    ) -> Result<Grant, StoreError> {
        self.grant_inner(tag, None, want, min, limits, at, 1)
    }

    /// [`Store::grant`] under an id: a second call with the same id within
    /// [`GRANT_RECORD_TTL`] charges nothing and returns the first answer
    /// (`replayed`), so a grant whose reply timed out can be recovered
    /// rather than leaked.
    pub fn grant_once(
        &self,
        tag: &Tag,
        id: &OpId,
        want: u32,
        min: u32,
        limits: Limits,
        at: Instant,
    ) -> Result<Grant, StoreError> {
        self.grant_inner(tag, Some(id), want, min, limits, at, 1)
    }

    /// [`Store::grant_once`] for a lease among `hosts` hosts: at most
    /// `max(min, floor(room / hosts))` units, the room as Redis has it at
    /// the grant (a host's own view of it may be stale), so near a limit no
    /// host is leased more than its share of what is left.
    #[allow(clippy::too_many_arguments)]
    pub fn grant_share(
        &self,
        tag: &Tag,
        id: &OpId,
        want: u32,
        min: u32,
        limits: Limits,
        at: Instant,
        hosts: u32,
    ) -> Result<Grant, StoreError> {
        self.grant_inner(tag, Some(id), want, min, limits, at, hosts.max(1))
    }

    #[allow(clippy::too_many_arguments)]
    fn grant_inner(
        &self,
        tag: &Tag,
        id: Option<&OpId>,
        want: u32,
        min: u32,
        limits: Limits,
        at: Instant,
        hosts: u32,
    ) -> Result<Grant, StoreError> {
        if min == 0 || min > want {
            return Err(StoreError::Invalid("grant needs 1 <= min <= want"));
        }
        if min > limits.rpm || min > limits.rpd {
            return Err(StoreError::Invalid(
                "grant: min exceeds a limit, so it could never be granted",
            ));
        }
        let args = [
            want as u64,
            min as u64,
            limits.rpm as u64,
            limits.rpd as u64,
            hosts as u64,
        ];
        // The Cluster client may send a call twice (a retry after a
        // timeout): a grant there always carries an id, so a second run
        // answers with the first instead of charging again.
        let auto;
        let id = match id {
            None if self.target.is_cluster() => {
                auto = OpId::new();
                Some(&auto)
            }
            id => id,
        };
        let call = Call::new(Op::Grant, tag, id, at, &self.times, &args)?;
        let r = self.run(tag, &call)?;
        Ok(Grant {
            units: u32::try_from(r.a)
                .map_err(|_| StoreError::Protocol(format!("grant of {} units", r.a)))?,
            replayed: r.replayed,
            counts: r.counts,
        })
    }

    /// Returns unspent units of a lease to the windows of `at`, while each
    /// window is open by Redis's clock (a window whose end has passed, or
    /// whose key is gone, is skipped), never below 0. Idempotent by `id`:
    /// a retry does not return twice.
    pub fn give_back(
        &self,
        tag: &Tag,
        id: &OpId,
        minute_units: u32,
        day_units: u32,
        at: Instant,
    ) -> Result<Applied, StoreError> {
        self.apply(Op::GiveBack, tag, id, minute_units, day_units, at)
    }

    /// Adds units spent while Redis was away to the windows of `at`. It
    /// never refuses (the spends happened; the counts may pass the limit)
    /// and is idempotent by `id`.
    pub fn push(
        &self,
        tag: &Tag,
        id: &OpId,
        minute_units: u32,
        day_units: u32,
        at: Instant,
    ) -> Result<Applied, StoreError> {
        self.apply(Op::Push, tag, id, minute_units, day_units, at)
    }

    fn apply(
        &self,
        op: Op,
        tag: &Tag,
        id: &OpId,
        minute_units: u32,
        day_units: u32,
        at: Instant,
    ) -> Result<Applied, StoreError> {
        let args = [minute_units as u64, day_units as u64];
        let call = Call::new(op, tag, Some(id), at, &self.times, &args)?;
        let r = self.run(tag, &call)?;
        Ok(Applied {
            minute_units: r.a,
            day_units: r.b,
            replayed: r.replayed,
            counts: r.counts,
        })
    }

    /// Both windows' counts and TTLs, changing nothing.
    pub fn counts(&self, tag: &Tag, at: Instant) -> Result<Counts, StoreError> {
        let call = Call::new(Op::Counts, tag, None, at, &self.times, &[])?;
        Ok(self.run(tag, &call)?.counts)
    }

    /// Whether a call for `tag` made now would fail at once (its breaker
    /// is open and cooling down, or its probe is in flight) rather than
    /// reach for Redis and perhaps wait up to the deadline. On a Cluster
    /// that is the breaker of the tag's hash slot: a dead master does not
    /// make the other shards' tags fail fast.
    pub fn fails_fast(&self, tag: &Tag) -> bool {
        let scope = self.scope(tag);
        self.lock_breakers()
            .fails_fast(scope, std::time::Instant::now())
    }

    /// The state of the breaker calls for `tag` go through (on a Cluster,
    /// its hash slot's).
    pub fn breaker_of(&self, tag: &Tag) -> BreakerState {
        let scope = self.scope(tag);
        self.lock_breakers().state_of(scope)
    }

    /// A connection outside the pool, for the lease thread's own commands
    /// (the host heartbeat): opened within `timeout` or an error.
    pub(crate) fn open_conn(&self, timeout: Duration) -> Result<Conn, redis::RedisError> {
        self.target.connect(timeout)
    }

    /// What the store did so far.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        // One lock at a time: the breakers' is released before the pool's.
        let (breaker, open_slots) = {
            let b = self.lock_breakers();
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
            connections: self.pool.open(),
        }
    }

    fn lock_breakers(&self) -> std::sync::MutexGuard<'_, Breakers> {
        // Each breaker's state is a plain value, whole at every step.
        self.breakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scope(&self, tag: &Tag) -> Scope {
        if self.target.is_cluster() {
            Scope::slot_of(tag.as_bytes())
        } else {
            Scope::Whole
        }
    }

    /// One script call through the breaker, the pool and the deadline.
    fn run(&self, tag: &Tag, call: &Call) -> Result<script::Reply, StoreError> {
        let c = &self.counters;
        c.calls.fetch_add(1, Relaxed);
        let scope = self.scope(tag);
        let start = std::time::Instant::now();
        let admit = self.lock_breakers().admit(scope, start);
        let admit = match admit {
            Ok(a) => a,
            Err(retry_in) => {
                c.failures.fetch_add(1, Relaxed);
                c.circuit_open.fetch_add(1, Relaxed);
                return Err(StoreError::CircuitOpen { retry_in });
            }
        };
        let result = self.attempt(call, start).map_err(|e| e.scrubbed(&self.url));
        match &result {
            Ok(r) => {
                if r.replayed {
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
        let mut breakers = self.lock_breakers();
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

    fn attempt(&self, call: &Call, start: std::time::Instant) -> Result<script::Reply, StoreError> {
        let deadline = start + self.opts.deadline;
        let timeout = |during| StoreError::Timeout {
            after: self.opts.deadline,
            during,
        };
        let mut slot = self
            .pool
            .checkout(deadline)
            .ok_or_else(|| timeout("waiting for a free connection"))?;
        let mut conn = match slot.conn.take() {
            Some(conn) => conn,
            None => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(timeout("before connecting"));
                }
                self.counters.connects.fetch_add(1, Relaxed);
                self.target
                    .connect(left)
                    .map_err(|e| classify(e, "connecting", self.opts.deadline))?
            }
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(timeout("before sending"));
        }
        conn.set_timeouts(left)
            .map_err(|e| classify(e, "setting the timeout", self.opts.deadline))?;
        let reply: Result<redis::Value, _> = call.invocation(&self.script).invoke(conn.as_dyn());
        match reply {
            Ok(v) => {
                let parsed = script::parse(&v);
                // Redis answered: the connection is in step, keep it.
                slot.conn = Some(conn);
                slot.keep();
                parsed
            }
            Err(e) => {
                let err = classify(e, "waiting for the reply", self.opts.deadline);
                if conn.survives(&err) {
                    slot.conn = Some(conn);
                    slot.keep();
                }
                Err(err)
            }
        }
    }
}

/// Error replies by which Redis says it cannot serve now, by their code
/// (the reply's first word): retrying later helps, so they count as the
/// store being unavailable (see [`StoreError::Refused`]).
const NOT_NOW: [&str; 11] = [
    "BUSY",
    "OOM",
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MISCONF",
    "NOREPLICAS",
    "NOAUTH",
    "WRONGPASS",
];

/// Whether `e` is an error reply meaning "cannot serve now".
fn refused_now(e: &redis::RedisError) -> bool {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        // The password in the URL no longer works (changed on the server):
        // nothing the gateway can mend, but Redis may be fixed under it.
        return true;
    }
    match e.code() {
        Some(code) if NOT_NOW.contains(&code) => true,
        // `-ERR max number of clients reached`, and a connection that
        // lost its authentication (a script sent in full to a server that
        // now wants a password: `-ERR Protocol error: unauthenticated bulk
        // length`): refused with the generic code.
        Some("ERR") => e
            .detail()
            .is_some_and(|d| d.contains("max number of clients") || d.contains("unauthenticated")),
        _ => false,
    }
}

/// Sorts a client error into the store's kinds.
fn classify(e: redis::RedisError, during: &'static str, deadline: Duration) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    if e.is_timeout() {
        return StoreError::Timeout {
            after: deadline,
            during,
        };
    }
    if refused_now(&e) {
        return StoreError::Refused(e.to_string());
    }
    match e.kind() {
        ErrorKind::InvalidClientConfig => StoreError::Config(e.to_string()),
        ErrorKind::Server(ServerErrorKind::ResponseError)
        | ErrorKind::Server(ServerErrorKind::NoScript)
        | ErrorKind::Server(ServerErrorKind::ExecAbort)
        | ErrorKind::Server(ServerErrorKind::CrossSlot)
        | ErrorKind::Server(ServerErrorKind::NoPerm)
        | ErrorKind::Extension => StoreError::Script(e.to_string()),
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType | ErrorKind::RESP3NotSupported => {
            StoreError::Protocol(e.to_string())
        }
        // Io, ClusterConnectionNotFound, Client, and the server's
        // not-serving kinds (LOADING, CLUSTERDOWN, TRYAGAIN, MOVED and ASK
        // left after the client's own retry, READONLY after a failover).
        _ => StoreError::Down(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_keep_the_key_format() {
        assert!(Tag::new(b"").is_err());
        assert!(Tag::new(b"a}b").is_err());
        assert!(Tag::new(&[b'a'; 129]).is_err());
        assert_eq!(Tag::new(b"a:{b").unwrap().as_bytes(), b"a:{b");
        let hostile = Tag::for_key(b"}{\r\n:m:1 \0", "DeepSeek-V3.1");
        assert_eq!(hostile.as_bytes().len(), 32);
        assert!(hostile
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(Tag::for_key(b"a", "bc"), Tag::for_key(b"ab", "c"));
        assert_eq!(Tag::for_key(b"a", "m"), Tag::for_key(b"a", "m"));
        assert_eq!(Tag::hex(b"}}").unwrap().as_bytes(), b"7d7d");
        assert!(Tag::hex(&[0; 65]).is_err());
    }

    #[test]
    fn a_store_is_shared_by_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Store>();
    }

    #[test]
    fn op_ids_are_distinct() {
        let a = OpId::new();
        let b = OpId::new();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(OpId::from_bytes(b"\x01}").unwrap().as_str(), "017d");
        assert!(OpId::from_bytes(b"").is_err());
    }

    #[test]
    fn options_and_urls_are_checked_without_a_server() {
        let zero = StoreOptions {
            deadline: Duration::ZERO,
            ..StoreOptions::default()
        };
        assert!(matches!(
            Store::new("redis://127.0.0.1:1/0", zero),
            Err(StoreError::Config(_))
        ));
        assert!(matches!(
            Store::new("http://x", StoreOptions::default()),
            Err(StoreError::Config(_))
        ));
        assert!(matches!(
            Store::new("redis+cluster://", StoreOptions::default()),
            Err(StoreError::Config(_))
        ));
        for url in [
            "redis+cluster://127.0.0.1:1",
            "valkey+cluster://127.0.0.1:1,[::1]:2",
        ] {
            let s = Store::new(url, StoreOptions::default()).unwrap();
            assert!(format!("{s:?}").contains("cluster: true"));
        }
        let s = Store::new("valkey://127.0.0.1:1/0", StoreOptions::default()).unwrap();
        assert!(format!("{s:?}").contains("cluster: false"));
        let tag = Tag::new(b"t").unwrap();
        let at = Instant { day: 1, minute: 0 };
        let l = Limits { rpm: 10, rpd: 100 };
        assert!(matches!(
            s.grant(&tag, 1, 0, l, at),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            s.grant(&tag, 1, 2, l, at),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            s.grant(&tag, 20, 11, l, at),
            Err(StoreError::Invalid(_))
        ));
        let bad_at = Instant {
            day: 1,
            minute: 1440,
        };
        assert!(matches!(
            s.counts(&tag, bad_at),
            Err(StoreError::Invalid(_))
        ));
        // No call was made for any of these.
        assert_eq!(s.stats().calls, 0);
    }
}

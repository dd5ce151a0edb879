//! Where quota comes from when one quota is shared by several hosts: the
//! global counts of both windows of every (account, model), and the calls
//! the lease layer (`lease`) makes on them. [`QuotaStore`] is that seam:
//! the lease layer holds one as a trait object and knows nothing else of
//! the store behind it.
//!
//! - [`Store`] (feature `redis`) is the production store: the counts in
//!   Redis or a Redis Cluster, each call one run of one Lua script
//!   (`store/lease.lua`) over both windows' keys, atomic in Redis.
//! - [`MemoryStore`] keeps the same counts in this process, by the same
//!   rules, for tests: it fails, stalls, refuses and forgets on command,
//!   so the lease layer's sizing, down policies, give-backs, pushes and
//!   breaker are tested without a network, and under miri.
//!
//! A host takes a lease of n units of both windows at once
//! ([`QuotaStore::grant`]), spends it locally, gives back what it did not
//! spend while the window is open ([`QuotaStore::give_back`]), and after
//! the store was away adds what it spent meanwhile ([`QuotaStore::push`]).
//! The calls that change counts by a caller's id are idempotent, so a
//! retry after a timeout does not count twice.
//!
//! A unit is whatever the caller counts: the store charges units against
//! two window limits ([`WindowLimits`]) under a [`Tag`], and never asks
//! what a unit is. Requests are the first unit; tokens and in-flight
//! streams are further tags drawn from the same store.
//!
//! Every call of either store goes through the same breaker and counters
//! (`store::gate`), so what the lease layer meets in tests is the real
//! breaker.

mod breaker;
mod gate;
mod memory;
#[cfg(feature = "redis")]
mod redis_store;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;

pub use self::breaker::BreakerState;
pub use self::memory::{Fault, MemoryStore};
#[cfg(feature = "redis")]
pub use self::redis_store::{key_names, redact, Store};
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
/// How long a grant's record (see [`QuotaStore::grant`]) is kept: a retry
/// of the same grant within this time gets the first answer back.
pub const GRANT_RECORD_TTL: Duration = Duration::from_secs(10);
/// Beats a host's entry lives (see [`QuotaStore::beat`]): two missed
/// beats (a stall, a slow restart) do not drop it from the count.
pub const HOST_LIVES: u32 = 3;
/// Longest tag [`Tag::new`] accepts.
pub const TAG_MAX: usize = 128;

/// Settings of a store (its deadline, breaker and pool);
/// `StoreOptions::default()` for the documented
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
#[non_exhaustive]
pub enum StoreError {
    /// The URL or options are unusable; the text says why.
    Config(String),
    /// An argument out of range; the text says which.
    Invalid(&'static str),
    /// The deadline passed before Redis answered (`during` says at which
    /// step). The call may or may not have taken effect in Redis: retry a
    /// `grant_once`, `give_back` or `push` with the same id to find out.
    Timeout {
        /// The deadline that passed.
        after: Duration,
        /// The step it passed in (connecting, the script call, ...).
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
    CircuitOpen {
        /// The rest of the cool-down.
        retry_in: Duration,
    },
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

    /// The tag of one (account, model)'s requests: 32 hex digits of
    /// BLAKE2b-128 over the account's length, the account and the model.
    /// Hostile account bytes cannot reach the key, and (a, bc) and (ab, c)
    /// differ.
    pub fn for_key(account: &[u8], model: &str) -> Tag {
        Tag::for_unit(account, model, Unit::Requests)
    }

    /// The tag of one unit of one (account, model): each unit's windows
    /// are counts of their own in the store (on a Cluster, perhaps in
    /// another hash slot), charged and given back by the same calls.
    /// Requests keep the tag [`Tag::for_key`] always gave them.
    pub fn for_unit(account: &[u8], model: &str, unit: Unit) -> Tag {
        let mut h = Blake2bVar::new(16).expect("16 is a valid BLAKE2b digest size");
        h.update(match unit {
            Unit::Requests => &b"tollgate-store-tag\0"[..],
            Unit::Tokens => &b"tollgate-store-tag-tokens\0"[..],
            Unit::InFlight => &b"tollgate-store-tag-in-flight\0"[..],
        });
        h.update(&(account.len() as u64).to_le_bytes());
        h.update(account);
        h.update(model.as_bytes());
        let mut out = [0u8; 16];
        h.finalize_variable(&mut out)
            .expect("the buffer is the digest size");
        Tag(hex(&out).into_bytes())
    }

    /// The tag as it goes between the braces of the key names.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a key's windows count in the store: the store charges units and
/// never asks which, so each is a [`Tag`] of its own ([`Tag::for_unit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unit {
    /// Requests (RPM, RPD).
    Requests,
    /// Tokens (TPM, TPD): reservations granted at admission, settled from
    /// the response's usage.
    Tokens,
    /// Requests in flight (`max_in_flight`): not windows but a set of
    /// admissions ([`QuotaStore::in_flight_admit`]).
    InFlight,
}

/// The answer to an in-flight admission ([`QuotaStore::in_flight_admit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlightAdmit {
    /// The member is in the set (admitted now, or before: `replayed`).
    pub admitted: bool,
    /// The same member was in the set already (a retried admission): it
    /// counted once.
    pub replayed: bool,
    /// Members in the set after the call (live ones only), this one
    /// included if admitted.
    pub count: u32,
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

    /// The id as it goes into the record's key name (hex).
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
    /// Units counted in the minute window.
    pub minute_count: u64,
    /// Units counted in the day window.
    pub day_count: u64,
    /// Milliseconds the minute's key has left.
    pub minute_ttl_ms: Option<u64>,
    /// Milliseconds the day's key has left.
    pub day_ttl_ms: Option<u64>,
}

/// The answer to a grant: `units` charged to both windows (0: nothing
/// charged anywhere), and the counts after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Units charged to both windows (0: refused, nothing charged).
    pub units: u32,
    /// The same id was granted before (within [`GRANT_RECORD_TTL`]):
    /// `units` is that first answer and nothing was charged now.
    pub replayed: bool,
    /// Both windows' counts after the grant.
    pub counts: Counts,
}

/// The answer to a give-back or a push: the units applied to each window
/// now (a give-back skips a closed window and never goes below 0), and the
/// counts after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Units applied to the minute window (0 if it had closed).
    pub minute_units: u64,
    /// Units applied to the day window.
    pub day_units: u64,
    /// The id was applied before: nothing changed now.
    pub replayed: bool,
    /// Both windows' counts after it.
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

/// A unit's limits in each window, as the store enforces them: requests
/// per minute and per day, or any later unit's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowLimits {
    /// Units per minute window.
    pub minute: u64,
    /// Units per day window.
    pub day: u64,
}

impl From<Limits> for WindowLimits {
    fn from(l: Limits) -> Self {
        WindowLimits {
            minute: l.rpm as u64,
            day: l.rpd as u64,
        }
    }
}

/// What a grant asks for: the largest n with `min <= n <= want` that fits
/// under both limits, and at most `max(min, floor(room / hosts))` (the
/// room as the store has it at the grant: near a limit no host is leased
/// more than its share of what is left). `want = min = cost`, `hosts = 1`
/// is the exact mode: all or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The most units wanted.
    pub want: u32,
    /// The fewest worth having (the request's cost); fewer is a refusal.
    pub min: u32,
    /// The limits the grant must stay under.
    pub limits: WindowLimits,
    /// The hosts sharing the quota (at least 1).
    pub hosts: u32,
}

impl Ask {
    /// The argument errors every store refuses before any call.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        if self.min == 0 || self.min > self.want {
            return Err(StoreError::Invalid("grant needs 1 <= min <= want"));
        }
        if self.min as u64 > self.limits.minute || self.min as u64 > self.limits.day {
            return Err(StoreError::Invalid(
                "grant: min exceeds a limit, so it could never be granted",
            ));
        }
        Ok(())
    }
}

/// What the store's server says of dropping keys: a memory limit with a
/// policy that evicts keys with a TTL (the counts carry TTLs) can drop
/// counts, and a dropped count admits again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Eviction {
    /// `maxmemory-policy`, if the server told it.
    pub policy: Option<String>,
    /// `maxmemory` in bytes (0: no limit, nothing is ever evicted).
    pub maxmemory: u64,
    /// Keys evicted since the server started.
    pub evicted: u64,
}

impl Eviction {
    /// A memory limit with a policy that may evict the counts.
    pub fn at_risk(&self) -> bool {
        self.maxmemory > 0 && self.policy.as_deref().is_some_and(|p| p != "noeviction")
    }
}

/// One grant of a batch ([`QuotaStore::grant_many`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantCall {
    /// The key's tag.
    pub tag: Tag,
    /// The grant's id, for its replay.
    pub id: OpId,
    /// What it asks.
    pub ask: Ask,
    /// The windows it is dated in.
    pub at: Instant,
}

/// One give-back or push of a batch ([`QuotaStore::apply_many`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyCall {
    /// A push ([`QuotaStore::push`]), else a give-back.
    pub push: bool,
    /// The key's tag.
    pub tag: Tag,
    /// The call's id: applied once however often it is sent.
    pub id: OpId,
    /// Units for the minute window.
    pub minute_units: u32,
    /// Units for the day window.
    pub day_units: u32,
    /// The windows it is dated in.
    pub at: Instant,
}

/// Where the global counts live: what the lease layer asks of a store.
/// Every call is atomic over both windows of one tag; the calls that take
/// an [`OpId`] are idempotent by it. A call that fails for want of the
/// store says so with an error whose [`StoreError::is_unavailable`] is
/// true, and the lease layer then follows its down policy.
pub trait QuotaStore: Send + Sync {
    /// Grants units of both windows of `at` as `ask` says (0: nothing
    /// charged anywhere). Under an id: a second call with the same id
    /// within [`GRANT_RECORD_TTL`] charges nothing and answers the first
    /// grant (`replayed`), so a grant whose reply timed out is recovered,
    /// not leaked.
    fn grant(&self, tag: &Tag, id: &OpId, ask: Ask, at: Instant) -> Result<Grant, StoreError>;

    /// Returns unspent units to the windows of `at`, while each window is
    /// open by the store's clock (a closed window, or a count gone, is
    /// skipped), never below 0.
    fn give_back(
        &self,
        tag: &Tag,
        id: &OpId,
        minute_units: u32,
        day_units: u32,
        at: Instant,
    ) -> Result<Applied, StoreError>;

    /// Adds units spent while the store was away to the windows of `at`.
    /// It never refuses (the spends happened; the counts may pass the
    /// limit).
    fn push(
        &self,
        tag: &Tag,
        id: &OpId,
        minute_units: u32,
        day_units: u32,
        at: Instant,
    ) -> Result<Applied, StoreError>;

    /// Both windows' counts and the time each has left, changing nothing.
    fn counts(&self, tag: &Tag, at: Instant) -> Result<Counts, StoreError>;

    /// Whether a call for `tag` made now would fail at once (its breaker
    /// is open) rather than perhaps wait up to the deadline.
    fn fails_fast(&self, tag: &Tag) -> bool;

    /// What the store did so far.
    fn stats(&self) -> StoreStats;

    /// Renews host `host`'s entry among the live hosts, a host that beats
    /// every `every`: the entry lives [`HOST_LIVES`] beats, dated by the
    /// store's clock; entries expired, or dated further ahead than a life
    /// and a slack (no host's), are dropped; the live ones are counted
    /// (this one included).
    fn beat(&self, host: &str, every: Duration) -> Result<u32, StoreError>;

    /// The server's eviction settings and evictions so far.
    fn eviction(&self) -> Result<Eviction, StoreError>;

    /// Admits `member` (one admission, unique across hosts) into the
    /// in-flight set of `tag` if fewer than `max` live members are in it,
    /// in one atomic step: members whose expiry has passed (by the store's
    /// clock) are dropped first, and the member is dated to expire
    /// [`HOST_LIVES`] × `every` from now unless renewed
    /// ([`QuotaStore::in_flight_renew`]). A member already in the set is
    /// admitted again without counting twice (`replayed`; its expiry is
    /// renewed), so a retry after a timeout is safe.
    fn in_flight_admit(
        &self,
        tag: &Tag,
        member: &str,
        max: u32,
        every: Duration,
    ) -> Result<InFlightAdmit, StoreError> {
        let _ = (tag, member, max, every);
        Err(StoreError::Invalid("this store holds no in-flight sets"))
    }

    /// Removes `member` from the in-flight set of `tag` (idempotent: a
    /// member not there changes nothing). Returns the live members left.
    fn in_flight_release(&self, tag: &Tag, member: &str) -> Result<u32, StoreError> {
        let _ = (tag, member);
        Err(StoreError::Invalid("this store holds no in-flight sets"))
    }

    /// Dates every one of `members` to expire [`HOST_LIVES`] × `every`
    /// from now, adding those not in the set (an admission made while the
    /// store was away, or one whose entry expired during a stall: its
    /// request runs, so it counts, even beyond the limit), and drops
    /// expired members. Returns the live members.
    fn in_flight_renew(
        &self,
        tag: &Tag,
        members: &[String],
        every: Duration,
    ) -> Result<u32, StoreError> {
        let _ = (tag, members, every);
        Err(StoreError::Invalid("this store holds no in-flight sets"))
    }

    /// The live members of the in-flight set of `tag`, changing nothing.
    fn in_flight_count(&self, tag: &Tag) -> Result<u32, StoreError> {
        let _ = tag;
        Err(StoreError::Invalid("this store holds no in-flight sets"))
    }

    /// Several grants, each answered as [`QuotaStore::grant`] would, in as
    /// few round trips as the store allows (one pipeline per batch on a
    /// single Redis server): the lease thread tops up thousands of keys
    /// in a few round trips, not one each. A store that cannot batch
    /// makes them one by one, which is what this default does.
    fn grant_many(&self, calls: &[GrantCall]) -> Vec<Result<Grant, StoreError>> {
        calls
            .iter()
            .map(|c| self.grant(&c.tag, &c.id, c.ask, c.at))
            .collect()
    }

    /// Several give-backs and pushes, as [`QuotaStore::grant_many`].
    fn apply_many(&self, calls: &[ApplyCall]) -> Vec<Result<Applied, StoreError>> {
        calls
            .iter()
            .map(|c| {
                if c.push {
                    self.push(&c.tag, &c.id, c.minute_units, c.day_units, c.at)
                } else {
                    self.give_back(&c.tag, &c.id, c.minute_units, c.day_units, c.at)
                }
            })
            .collect()
    }
}

/// Epoch minute and epoch day of `at`, or an error for a minute past the
/// day's end (the fields of `Instant` are public, so it can be built bad).
pub(crate) fn windows(at: Instant) -> Result<(u64, u64), StoreError> {
    if at.minute >= crate::window::MINUTES_PER_DAY || at.day > crate::window::MAX_DAY {
        return Err(StoreError::Invalid(
            "at: minute must be below 1440 and day at most window::MAX_DAY",
        ));
    }
    let day = at.day as u64;
    Ok((
        day * crate::window::MINUTES_PER_DAY as u64 + at.minute as u64,
        day,
    ))
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
        let tokens = Tag::for_unit(b"a", "m", Unit::Tokens);
        assert_ne!(tokens, Tag::for_key(b"a", "m"));
        assert_eq!(tokens.as_bytes().len(), 32);
        assert_eq!(Tag::hex(b"}}").unwrap().as_bytes(), b"7d7d");
        assert!(Tag::hex(&[0; 65]).is_err());
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
    fn only_a_memory_limit_with_an_evicting_policy_is_a_risk() {
        let seen = |p: &str, m| Eviction {
            policy: Some(p.into()),
            maxmemory: m,
            evicted: 0,
        };
        assert!(!seen("noeviction", 1 << 30).at_risk());
        assert!(!seen("allkeys-lru", 0).at_risk());
        assert!(seen("allkeys-lru", 1 << 30).at_risk());
        assert!(seen("volatile-ttl", 1).at_risk());
    }
}

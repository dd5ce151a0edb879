//! The production [`QuotaStore`]: the counts in Redis (or Valkey, or a
//! Redis Cluster), each call one run of one Lua script (`store/lease.lua`)
//! over both windows' keys, atomic in Redis.
//!
//! Client crate: `redis` (redis-rs), its blocking API and its Cluster
//! client. It is the maintained, most used Rust client, speaks to Redis,
//! Valkey and Cluster, loads a script on NOSCRIPT by itself, and needs no
//! async runtime: the lease layer calls it off the decision path (its
//! thread, or a decision that chose to wait), where a blocking call under
//! a deadline is the simplest correct thing. `fred` is async-first (tokio)
//! and would bring a runtime into a C library that has none.
//!
//! Threads: a [`Store`] is `Send + Sync`; calls take a connection from a
//! small pool ([`StoreOptions::max_connections`]) and wait for one no longer
//! than their deadline.

mod conn;
mod script;

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

pub use self::conn::redact;
use self::conn::{Conn, Pool, Target};
use self::script::{Call, Op, Times};
use super::gate::Gate;
use super::{
    Applied, ApplyCall, Ask, BreakerState, Counts, Eviction, Grant, GrantCall, InFlightAdmit,
    Instant, OpId, QuotaStore, StoreError, StoreOptions, StoreStats, Tag, DAY_GRACE,
    GRANT_RECORD_TTL, HOST_LIVES, MINUTE_GRACE,
};
use crate::policy::Limits;

/// A connection (pool) to the Redis that holds the global counts.
pub struct Store {
    target: Target,
    opts: StoreOptions,
    pool: Pool,
    /// The breakers (one for a single server, one per hash slot for a
    /// Cluster) and the counters.
    gate: Gate,
    script: redis::Script,
    beat_script: redis::Script,
    in_flight_script: redis::Script,
    times: Times,
    /// The lease thread's own connection, outside the pool, for the host
    /// heartbeat and the eviction looks: never on a decision's path.
    side: Mutex<Option<Conn>>,
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
            gate: Gate::new(&opts, target.is_cluster()),
            target,
            pool: Pool::new(opts.max_connections),
            script: script::script(),
            beat_script: redis::Script::new(include_str!("redis_store/beat.lua")),
            in_flight_script: redis::Script::new(include_str!("redis_store/in_flight.lua")),
            side: Mutex::new(None),
            times: Times {
                minute_grace_ms: MINUTE_GRACE.as_millis() as u64,
                day_grace_ms: DAY_GRACE.as_millis() as u64,
                grant_record_ms: GRANT_RECORD_TTL.as_millis() as u64,
            },
            opts,
            url: url.to_string(),
        })
    }

    /// [`Store::new`], then one call to check that Redis answers.
    pub fn connect(url: &str, opts: StoreOptions) -> Result<Store, StoreError> {
        let store = Store::new(url, opts)?;
        // A read of a tag no key uses: it also loads the script.
        let tag = Tag::new(b"tollgate-connect-check").expect("a valid tag");
        store.counts(&tag, Instant { day: 0, minute: 0 })?;
        Ok(store)
    }

    /// The options the store was made with.
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
        let ask = Ask {
            want,
            min,
            limits: limits.into(),
            hosts,
        };
        ask.check()?;
        self.grant_asked(tag, id, ask, at)
    }

    /// A checked grant (see [`Ask`]), under `id` or none.
    fn grant_asked(
        &self,
        tag: &Tag,
        id: Option<&OpId>,
        ask: Ask,
        at: Instant,
    ) -> Result<Grant, StoreError> {
        let args = [
            ask.want as u64,
            ask.min as u64,
            ask.limits.minute,
            ask.limits.day,
            ask.hosts.max(1) as u64,
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
        self.gate.fails_fast(tag)
    }

    /// The state of the breaker calls for `tag` go through (on a Cluster,
    /// its hash slot's).
    pub fn breaker_of(&self, tag: &Tag) -> BreakerState {
        self.gate.state_of(tag)
    }

    /// What the store did so far.
    pub fn stats(&self) -> StoreStats {
        self.gate.stats(self.pool.open())
    }

    /// Runs `f` on the lease thread's own connection (opened within the
    /// deadline), under the deadline; a failed connection is dropped, so
    /// the next call opens a fresh one (this one may hold a late reply).
    fn on_side<R>(
        &self,
        during: &'static str,
        f: impl FnOnce(&mut dyn redis::ConnectionLike) -> redis::RedisResult<R>,
    ) -> Result<R, StoreError> {
        let deadline = self.opts.deadline;
        let mut side = self.side.lock().unwrap_or_else(|p| p.into_inner());
        let conn = match side.as_mut() {
            Some(c) => c,
            None => {
                self.gate.connected();
                let c = self
                    .target
                    .connect(deadline)
                    .map_err(|e| classify(e, "connecting", deadline).scrubbed(&self.url))?;
                side.insert(c)
            }
        };
        let result = conn
            .set_timeouts(deadline)
            .and_then(|_| f(conn.as_connection_like()));
        result.map_err(|e| {
            *side = None;
            classify(e, during, deadline).scrubbed(&self.url)
        })
    }

    /// One run of `store/in_flight.lua` on `tag`'s set (one key, so one
    /// Cluster slot), through the breaker, the pool and the deadline, as
    /// every count-changing call.
    fn in_flight<R: redis::FromRedisValue>(
        &self,
        tag: &Tag,
        during: &'static str,
        args: &[&[u8]],
    ) -> Result<R, StoreError> {
        let mut key = Vec::with_capacity(8 + tag.as_bytes().len());
        key.extend_from_slice(b"tg:{");
        key.extend_from_slice(tag.as_bytes());
        key.extend_from_slice(b"}:f");
        self.gate.call(
            tag,
            |_| false,
            || {
                let start = std::time::Instant::now();
                self.on_pooled(start, self.opts.deadline, |c| {
                    let mut inv = self.in_flight_script.key(&key[..]);
                    for a in args {
                        inv.arg(*a);
                    }
                    inv.invoke(c)
                })
                .map_err(|e| match e {
                    StoreError::Timeout { after, .. } => StoreError::Timeout { after, during },
                    e => e.scrubbed(&self.url),
                })
            },
        )
    }

    /// One script call through the breaker, the pool and the deadline.
    fn run(&self, tag: &Tag, call: &Call) -> Result<script::Reply, StoreError> {
        self.gate.call(
            tag,
            |r: &script::Reply| r.replayed,
            || {
                self.attempt(call, std::time::Instant::now())
                    .map_err(|e| e.scrubbed(&self.url))
            },
        )
    }

    fn attempt(&self, call: &Call, start: std::time::Instant) -> Result<script::Reply, StoreError> {
        let reply: redis::Value = self.on_pooled(start, self.opts.deadline, |c| {
            call.invocation(&self.script).invoke(c)
        })?;
        script::parse(&reply)
    }

    /// Runs `f` on a pooled connection within `budget` from `start`
    /// (waiting for a connection and connecting included), keeping the
    /// connection if Redis answered in step.
    fn on_pooled<R>(
        &self,
        start: std::time::Instant,
        budget: Duration,
        f: impl FnOnce(&mut dyn redis::ConnectionLike) -> redis::RedisResult<R>,
    ) -> Result<R, StoreError> {
        let deadline = start + budget;
        let timeout = |during| StoreError::Timeout {
            after: budget,
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
                self.gate.connected();
                self.target
                    .connect(left)
                    .map_err(|e| classify(e, "connecting", budget))?
            }
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(timeout("before sending"));
        }
        conn.set_timeouts(left)
            .map_err(|e| classify(e, "setting the timeout", budget))?;
        match f(conn.as_dyn()) {
            Ok(v) => {
                // Redis answered: the connection is in step, keep it.
                slot.conn = Some(conn);
                slot.keep();
                Ok(v)
            }
            Err(e) => {
                let err = classify(e, "waiting for the reply", budget);
                if conn.survives(&err) {
                    slot.conn = Some(conn);
                    slot.keep();
                }
                Err(err)
            }
        }
    }

    /// Script calls in pipelines of at most [`BATCH`] on one server, each
    /// answered as its own call would be: one gate call per pipeline, so
    /// an unreachable Redis is one failure, not one per call. A Cluster
    /// spreads a batch over its shards: there each call goes alone. Every
    /// call that changes counts carries an id, so sending a pipeline again
    /// (after NOSCRIPT, or by the caller after a timeout) changes nothing
    /// twice.
    fn run_many(
        &self,
        calls: &[(Tag, Result<Call, StoreError>)],
    ) -> Vec<Result<script::Reply, StoreError>> {
        if self.target.is_cluster() {
            return calls
                .iter()
                .map(|(tag, call)| match call {
                    Ok(c) => self.run(tag, c),
                    Err(e) => Err(e.clone()),
                })
                .collect();
        }
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(BATCH) {
            let valid: Vec<&Call> = chunk.iter().filter_map(|(_, c)| c.as_ref().ok()).collect();
            let replies = if valid.is_empty() {
                Ok(Vec::new())
            } else {
                self.gate.call(
                    &chunk[0].0,
                    |_: &Vec<Result<script::Reply, StoreError>>| false,
                    || {
                        self.pipeline(&valid, std::time::Instant::now())
                            .map_err(|e| e.scrubbed(&self.url))
                    },
                )
            };
            let mut replies = match replies {
                Ok(r) => r.into_iter(),
                Err(e) => {
                    out.extend(chunk.iter().map(|(_, c)| match c {
                        Ok(_) => Err(e.clone()),
                        Err(bad) => Err(bad.clone()),
                    }));
                    continue;
                }
            };
            for (_, c) in chunk {
                out.push(match c {
                    Ok(_) => replies.next().unwrap_or_else(|| {
                        Err(StoreError::Protocol(
                            "a pipeline answered too few calls".into(),
                        ))
                    }),
                    Err(bad) => Err(bad.clone()),
                });
            }
        }
        out
    }

    /// One pipeline of script calls: its own replies, or the error that
    /// failed it whole. The budget is the deadline plus 100 us a call (a
    /// script runs in some 20 us; a batch of 256 within 26 ms more).
    fn pipeline(
        &self,
        calls: &[&Call],
        start: std::time::Instant,
    ) -> Result<Vec<Result<script::Reply, StoreError>>, StoreError> {
        let budget = self.opts.deadline + Duration::from_micros(100) * calls.len() as u32;
        let hash = self.script.get_hash();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for c in calls {
            pipe.add_command(c.evalsha(hash));
        }
        let send = |c: &mut dyn redis::ConnectionLike| {
            let first: Vec<redis::RedisResult<redis::Value>> = pipe.query(c)?;
            let unloaded = first.iter().any(|r| {
                r.as_ref().err().is_some_and(|e| {
                    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                })
            });
            if !unloaded {
                return Ok(first);
            }
            // A server that lost its scripts (a restart, SCRIPT FLUSH):
            // load it and send the pipeline again; the calls that ran the
            // first time answer by their ids.
            self.script.load(c)?;
            pipe.query(c)
        };
        let replies = self.on_pooled(start, budget, send)?;
        let replies: Vec<Result<script::Reply, StoreError>> = replies
            .into_iter()
            .map(|r| {
                r.map_err(|e| classify(e, "in a pipeline", budget).scrubbed(&self.url))
                    .and_then(|v| script::parse(&v))
            })
            .collect();
        // Every call refused for want of Redis (OOM, BUSY...): the
        // pipeline failed as a whole, for the breaker to count.
        if let Some(Err(e)) = replies.first() {
            if e.is_transport()
                && replies
                    .iter()
                    .all(|r| r.as_ref().is_err_and(StoreError::is_transport))
            {
                return Err(e.clone());
            }
        }
        Ok(replies)
    }
}

/// The most calls in one pipeline: a few milliseconds of Redis's time, so
/// other clients' commands wait no longer behind it.
const BATCH: usize = 256;

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

impl QuotaStore for Store {
    fn grant(&self, tag: &Tag, id: &OpId, ask: Ask, at: Instant) -> Result<Grant, StoreError> {
        ask.check()?;
        self.grant_asked(tag, Some(id), ask, at)
    }

    fn give_back(
        &self,
        tag: &Tag,
        id: &OpId,
        minute_units: u32,
        day_units: u32,
        at: Instant,
    ) -> Result<Applied, StoreError> {
        Store::give_back(self, tag, id, minute_units, day_units, at)
    }

    fn push(
        &self,
        tag: &Tag,
        id: &OpId,
        minute_units: u32,
        day_units: u32,
        at: Instant,
    ) -> Result<Applied, StoreError> {
        Store::push(self, tag, id, minute_units, day_units, at)
    }

    fn counts(&self, tag: &Tag, at: Instant) -> Result<Counts, StoreError> {
        Store::counts(self, tag, at)
    }

    fn fails_fast(&self, tag: &Tag) -> bool {
        Store::fails_fast(self, tag)
    }

    fn stats(&self) -> StoreStats {
        Store::stats(self)
    }

    fn grant_many(&self, calls: &[GrantCall]) -> Vec<Result<Grant, StoreError>> {
        let prepared: Vec<(Tag, Result<Call, StoreError>)> = calls
            .iter()
            .map(|c| {
                let call = c.ask.check().and_then(|_| {
                    let args = [
                        c.ask.want as u64,
                        c.ask.min as u64,
                        c.ask.limits.minute,
                        c.ask.limits.day,
                        c.ask.hosts.max(1) as u64,
                    ];
                    Call::new(Op::Grant, &c.tag, Some(&c.id), c.at, &self.times, &args)
                });
                (c.tag.clone(), call)
            })
            .collect();
        self.run_many(&prepared)
            .into_iter()
            .map(|r| {
                r.and_then(|r| {
                    Ok(Grant {
                        units: u32::try_from(r.a)
                            .map_err(|_| StoreError::Protocol(format!("grant of {} units", r.a)))?,
                        replayed: r.replayed,
                        counts: r.counts,
                    })
                })
            })
            .collect()
    }

    fn apply_many(&self, calls: &[ApplyCall]) -> Vec<Result<Applied, StoreError>> {
        let prepared: Vec<(Tag, Result<Call, StoreError>)> = calls
            .iter()
            .map(|c| {
                let op = if c.push { Op::Push } else { Op::GiveBack };
                let args = [c.minute_units as u64, c.day_units as u64];
                let call = Call::new(op, &c.tag, Some(&c.id), c.at, &self.times, &args);
                (c.tag.clone(), call)
            })
            .collect();
        self.run_many(&prepared)
            .into_iter()
            .map(|r| {
                r.map(|r| Applied {
                    minute_units: r.a,
                    day_units: r.b,
                    replayed: r.replayed,
                    counts: r.counts,
                })
            })
            .collect()
    }

    /// One script (`store/beat.lua`) on the side connection: Redis's own
    /// `TIME` dates every entry, so hosts whose clocks disagree count each
    /// other; the hosts set is one hash tag, so one Cluster slot.
    fn beat(&self, host: &str, every: Duration) -> Result<u32, StoreError> {
        let ms = |d: Duration| d.as_millis() as u64;
        let life = every * HOST_LIVES;
        let n: u32 = self.on_side("beating the host heartbeat", |c| {
            self.beat_script
                .key(HOSTS_KEY)
                .arg(host)
                .arg(ms(life))
                // The slack: as far again as a beat dates itself.
                .arg(ms(life))
                // The set itself outlives its newest member by a beat,
                // so an idle fleet leaves nothing behind.
                .arg(ms(every))
                .invoke(c)
        })?;
        Ok(n.max(1))
    }

    fn in_flight_admit(
        &self,
        tag: &Tag,
        member: &str,
        max: u32,
        every: Duration,
    ) -> Result<InFlightAdmit, StoreError> {
        let life = (every * HOST_LIVES).as_millis().to_string();
        let max = max.to_string();
        let r: Vec<i64> = self.in_flight(
            tag,
            "admitting in flight",
            &[b"a", life.as_bytes(), max.as_bytes(), member.as_bytes()],
        )?;
        match r[..] {
            [a, p, n] => Ok(InFlightAdmit {
                admitted: a == 1,
                replayed: p == 1,
                count: n.clamp(0, u32::MAX as i64) as u32,
            }),
            _ => Err(StoreError::Protocol(format!(
                "in-flight admission: {} values",
                r.len()
            ))),
        }
    }

    fn in_flight_release(&self, tag: &Tag, member: &str) -> Result<u32, StoreError> {
        self.in_flight(tag, "releasing in flight", &[b"r", member.as_bytes()])
    }

    fn in_flight_renew(
        &self,
        tag: &Tag,
        members: &[String],
        every: Duration,
    ) -> Result<u32, StoreError> {
        let life = (every * HOST_LIVES).as_millis().to_string();
        let mut args: Vec<&[u8]> = vec![b"n", life.as_bytes()];
        args.extend(members.iter().map(|m| m.as_bytes()));
        self.in_flight(tag, "renewing in flight", &args)
    }

    fn in_flight_count(&self, tag: &Tag) -> Result<u32, StoreError> {
        self.in_flight(tag, "counting in flight", &[b"c"])
    }

    /// `INFO memory` and `INFO stats` (and `CONFIG GET` where INFO lacks
    /// the policy and an ACL allows it), on the side connection. On a
    /// Cluster the commands go to the node the client picks.
    fn eviction(&self) -> Result<Eviction, StoreError> {
        self.on_side("reading INFO", |c| {
            let memory: String = redis::cmd("INFO").arg("memory").query(c)?;
            let stats: String = redis::cmd("INFO").arg("stats").query(c)?;
            let mut policy = info_field(&memory, "maxmemory_policy").map(str::to_string);
            if policy.is_none() {
                if let Ok(v) = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query::<Vec<String>>(c)
                {
                    policy = v.get(1).cloned();
                }
            }
            let number = |text: &str, f| {
                info_field(text, f)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            Ok(Eviction {
                policy,
                maxmemory: number(&memory, "maxmemory"),
                evicted: number(&stats, "evicted_keys"),
            })
        })
    }
}

/// The sorted set of live hosts (one hash tag: one Cluster slot).
pub(crate) const HOSTS_KEY: &str = "tg:{hosts}";

/// The `field:value` of an INFO reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
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

/// The names of the minute key and the day key of `tag` at `at`
/// (`tg:{<tag>}:m:<epoch minute>`, `tg:{<tag>}:d:<epoch day>`), for
/// operators and tests that look into Redis.
pub fn key_names(tag: &Tag, at: Instant) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    script::window_keys(tag, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read_by_name() {
        let info =
            "# Memory\r\nused_memory:1\r\nmaxmemory:100\r\nmaxmemory_policy:volatile-lru\r\n";
        assert_eq!(info_field(info, "maxmemory"), Some("100"));
        assert_eq!(info_field(info, "maxmemory_policy"), Some("volatile-lru"));
        assert_eq!(info_field(info, "evicted_keys"), None);
    }

    #[test]
    fn a_store_is_shared_by_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Store>();
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

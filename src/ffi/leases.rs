//! Joining a quota store shared across hosts (Redis, through the lease
//! layer): its options, connect and disconnect, and its counters. Built
//! with the cargo feature `redis` (on by default); without it every call
//! here is TG_E_UNSUPPORTED and says so in tg_last_error().

use std::ffi::{c_char, CStr};

use super::*;

/// tg_redis_options.mode: hold leases and spend them locally (default).
pub const TG_REDIS_LEASES: u32 = 0;
/// tg_redis_options.mode: one round trip per decision, nothing held.
pub const TG_REDIS_EXACT: u32 = 1;
/// tg_redis_options.down, Redis not answering: each host admits its share,
/// limit / hosts per window (default).
pub const TG_DOWN_LOCAL: u32 = 0;
/// tg_redis_options.down: admit everything (counted, pushed on recovery).
pub const TG_DOWN_OPEN: u32 = 1;
/// tg_redis_options.down: refuse (a 429 from the minute window).
pub const TG_DOWN_CLOSED: u32 = 2;

/// tg_lease_stats.breaker values.
pub const TG_BREAKER_CLOSED: u32 = 0;
/// Calls fail at once until the cool-down ends.
pub const TG_BREAKER_OPEN: u32 = 1;
/// One probe call is let through to test Redis.
pub const TG_BREAKER_HALF_OPEN: u32 = 2;

/// How a limiter joins a quota store. Every field 0 means its default, so a
/// zero-initialised struct (or NULL) gives the documented defaults. Set
/// `size` to sizeof(tg_redis_options) or 0.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct tg_redis_options {
    /// sizeof(tg_redis_options) as the caller's header has it, or 0.
    pub size: u32,
    /// TG_REDIS_LEASES or TG_REDIS_EXACT.
    pub mode: u32,
    /// TG_DOWN_LOCAL, TG_DOWN_OPEN or TG_DOWN_CLOSED.
    pub down: u32,
    /// Gateway hosts sharing each quota (lease sizes, the local down share);
    /// 0 = auto: the live hosts Redis counts (every joined table beats a
    /// heartbeat each second), 1 until the first count.
    pub hosts: u32,
    /// Longest a round trip takes, then the down policy; 0 = 50 ms.
    pub deadline_ms: u32,
    /// A lease lasts about this long at the key's rate; 0 = 1000 ms.
    pub refill_interval_ms: u32,
    /// A key not refilled for this long gives its units back; 0 = 5000 ms.
    pub idle_after_ms: u32,
    /// Largest lease in units; 0 = 100000.
    pub max_lease: u32,
    /// Connections to Redis at most; 0 = 4.
    pub max_connections: u32,
    /// Consecutive failures that open the breaker; 0 = 3.
    pub trip_after: u32,
    /// How long an open breaker fails calls at once; 0 = 250 ms.
    pub cooldown_ms: u32,
    /// Longest cool-down after failed probes; 0 = 5000 ms.
    pub max_cooldown_ms: u32,
    /// With hosts 0 (auto), the most hosts the live count is taken as,
    /// whatever Redis holds (a bound on what stray entries in the
    /// heartbeat set can do); 0 = 64.
    pub max_hosts: u32,
}

/// What a joined limiter did since it joined (every handle sharing the
/// link). Set `size` to sizeof(tg_lease_stats) or 0 before the call.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct tg_lease_stats {
    /// sizeof(tg_lease_stats) as the caller's header has it, or 0.
    pub size: u32,
    /// TG_REDIS_LEASES or TG_REDIS_EXACT.
    pub mode: u32,
    /// TG_DOWN_* in force.
    pub down_policy: u32,
    /// 1 when the last store call failed for want of Redis: decisions
    /// beyond the units held follow the down policy.
    pub redis_down: u32,
    /// TG_BREAKER_*: on a Cluster, where each hash slot has a breaker of
    /// its own, the worst slot's (open if any is open).
    pub breaker: u32,
    /// Connections to Redis open now.
    pub connections: u32,
    /// Decisions made (every outcome).
    pub decisions: u64,
    /// Of those: made from units held, with no round trip.
    pub from_leases: u64,
    /// Grants asked by decisions (one round trip each).
    pub refills: u64,
    /// Grants asked ahead by the lease thread for hot keys.
    pub top_ups: u64,
    /// Units those grants gave.
    pub granted_units: u64,
    /// Grants of nothing: the key was at its global limit.
    pub refused_by_store: u64,
    /// Decisions made by the down policy, and of those, admitted.
    pub degraded: u64,
    /// See `degraded`.
    pub degraded_admitted: u64,
    /// Unspent units given back to the store (idle keys, closing), and how many.
    pub give_backs: u64,
    /// See `give_backs`.
    pub given_back_units: u64,
    /// Spends made while Redis was away, pushed when it came back.
    pub pushes: u64,
    /// See `pushes`.
    pub pushed_units: u64,
    /// Units dropped after an outage rather than given back.
    pub dropped_units: u64,
    /// Give-backs, pushes and recoveries waiting for Redis.
    pub pending: u64,
    /// Calls answered TG_PENDING (not counted as decisions).
    pub deferred: u64,
    /// Microseconds the last answered store call took.
    pub last_latency_us: u64,
    /// Store calls made, failed, timed out, failed fast by the breaker;
    /// breaker trips; connections opened.
    pub store_calls: u64,
    /// See `store_calls`.
    pub store_failures: u64,
    /// See `store_calls`.
    pub store_timeouts: u64,
    /// See `store_calls`.
    pub store_circuit_open: u64,
    /// See `store_calls`.
    pub store_trips: u64,
    /// See `store_calls`.
    pub store_connects: u64,
    /// The hosts each quota is shared by now: as configured, or as Redis
    /// last counted them (hosts 0, auto).
    pub hosts: u32,
    /// 1 when Redis has a memory limit and a maxmemory-policy that can
    /// evict the limiter's counts (all but noeviction). Since 0.4.
    pub eviction_risk: u32,
    /// Decisions refused without a round trip: Redis refused the key less
    /// than a second before and its window was still full. Since 0.4.
    pub refused_locally: u64,
    /// Keys Redis evicted since this limiter joined (any keys). Since 0.4.
    pub evicted_keys: u64,
    /// Token reservations Redis granted. Since 0.4.
    pub token_grants: u64,
    /// Token reservations Redis refused (the token window full). Since 0.4.
    pub token_refusals: u64,
    /// Settles that corrected Redis (a give-back or an excess). Since 0.4.
    pub token_settles: u64,
}

/// sizeof(tg_redis_options) in 0.3, before `max_hosts`: still accepted
/// (the fields added since take their defaults).
const REDIS_OPTIONS_SIZE_0_3: u32 = std::mem::offset_of!(tg_redis_options, max_hosts) as u32;
/// sizeof(tg_lease_stats) in 0.3 (the struct ended with `hosts` and its
/// padding): still accepted, and written up to there.
const LEASE_STATS_SIZE_0_3: u32 = std::mem::offset_of!(tg_lease_stats, refused_locally) as u32;

/// The caller's options at `p` (non-null), of the size its header gives:
/// the current one (or 0), or 0.3's, the rest defaulted. `None` for any
/// other size, with the reason in tg_last_error().
fn read_options(p: *const tg_redis_options) -> Option<tg_redis_options> {
    // SAFETY: non-null, the caller's struct, whose first field (`size`)
    // every version has.
    let size = unsafe { (*p).size };
    let full = std::mem::size_of::<tg_redis_options>() as u32;
    let n = match size {
        0 => full,
        n if n >= full => full,
        REDIS_OPTIONS_SIZE_0_3 => REDIS_OPTIONS_SIZE_0_3,
        _ => {
            limiter::set_last_error(
                "tg_redis_options.size is neither 0 nor sizeof(tg_redis_options) of this or an earlier version",
            );
            return None;
        }
    };
    let mut o = tg_redis_options::default();
    // SAFETY: the caller's struct holds `n` readable bytes (its `size`, or
    // the whole current struct); `o` is a plain-old-data struct of at least
    // `n` bytes, every bit pattern of whose fields is valid.
    unsafe {
        std::ptr::copy_nonoverlapping(
            p.cast::<u8>(),
            (&mut o as *mut tg_redis_options).cast::<u8>(),
            n as usize,
        )
    };
    o.size = size;
    Some(o)
}

/// Writes the first `size` bytes of `v` to `p` (at most all of `T`).
///
/// # Safety
/// `p` is non-null and writable for `size` bytes.
unsafe fn write_sized<T: Copy>(p: *mut T, v: &T, size: u32) {
    let n = (size as usize).min(std::mem::size_of::<T>());
    // SAFETY: by the caller's contract; `v` is a live `T` of at least `n`
    // bytes, and the two do not overlap (`v` is our copy).
    unsafe { std::ptr::copy_nonoverlapping((v as *const T).cast::<u8>(), p.cast::<u8>(), n) };
}

/// Sets one option by name from text, as nginx's `tollgate_redis` and
/// configuration files give them: `mode` (leases, exact), `down` (local,
/// open, closed), `hosts` (a number, or auto), `max_hosts`, `max_lease`,
/// `max_connections`, `trip_after`, and the durations `deadline`,
/// `refill_interval`, `idle_after`, `cooldown`, `max_cooldown` (`50ms`,
/// `2s`, `1m`; a bare number is milliseconds). TG_E_INVALID for an
/// unknown name or a bad value, with tg_last_error() saying which and what
/// is allowed; `*opts` is then unchanged.
#[no_mangle]
pub extern "C" fn tg_redis_options_set(
    opts: *mut tg_redis_options,
    name: *const c_char,
    name_len: usize,
    value: *const c_char,
    value_len: usize,
) -> tg_status {
    guard(|| {
        limiter::set_last_error("");
        if opts.is_null() {
            return TG_E_NULL;
        }
        let Some(mut o) = read_options(opts) else {
            return TG_E_INVALID;
        };
        let (name, value) = match (any_bytes(name, name_len), any_bytes(value, value_len)) {
            (Ok(n), Ok(v)) => (n, v),
            _ => return TG_E_NULL,
        };
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            limiter::set_last_error("option names and values are ASCII text");
            return TG_E_INVALID;
        };
        let st = imp::set(&mut o, name, value);
        if st == TG_OK {
            let size = match o.size {
                0 => std::mem::size_of::<tg_redis_options>() as u32,
                n => n,
            };
            // SAFETY: non-null, the caller's writable struct of `o.size`
            // bytes (checked by `read_options`).
            unsafe { write_sized(opts, &o, size) };
        }
        st
    })
}

/// Joins the limiter to the quota store at `url` (NUL-terminated):
/// `redis://host:port/db` (or `valkey://`) for one server,
/// `redis+cluster://host:port,host:port,...` for a Cluster by its seeds.
/// `opts` may be NULL for the defaults. The table must be formatted for
/// leases (TG_E_NOT_LEASED otherwise). Redis down is not an error: the
/// limiter decides by the down policy until it answers, and
/// tg_limiter_lease_stats says so. Starts one background thread per joined
/// limiter; in a process that forks (nginx), connect in each child after
/// the fork. Safe while other threads decide on the handle: a decision
/// already under way finishes on the link it started with; one that starts
/// while the handle is between links is TG_E_NOT_JOINED. Connecting again
/// replaces the link (which gives its units back once no decision holds
/// it). Handles made by tg_limiter_share afterwards share the link.
/// Failures: TG_E_NULL, TG_E_INVALID (options), TG_E_NOT_LEASED,
/// TG_E_READ_ONLY, TG_E_STORE (the URL), each with tg_last_error()'s
/// words. Redis unreachable or answering an error is not a failure here
/// (since 0.4): the limiter joins, decides by the down policy, and takes
/// leases as soon as Redis serves; tg_limiter_lease_event tells it.
#[no_mangle]
pub extern "C" fn tg_limiter_connect(
    limiter: *mut tg_limiter,
    url: *const c_char,
    opts: *const tg_redis_options,
) -> tg_status {
    guard(|| {
        limiter::set_last_error("");
        // SAFETY: NULL or a live limiter from this library. Shared, not
        // unique: other threads may be deciding on it, and the link is
        // replaced through `&self` (see `Limiter::connect_shared`).
        let (Some(l), false) = (unsafe { limiter.as_ref() }, url.is_null()) else {
            return TG_E_NULL;
        };
        let o = if opts.is_null() {
            tg_redis_options::default()
        } else {
            match read_options(opts) {
                Some(o) => o,
                None => return TG_E_INVALID,
            }
        };
        // SAFETY: non-null and NUL-terminated by contract.
        let Ok(url) = unsafe { CStr::from_ptr(url) }.to_str() else {
            limiter::set_last_error("the store's URL is not UTF-8");
            return TG_E_INVALID;
        };
        imp::connect(l, url, &o)
    })
}

/// Checks `url` (NUL-terminated) and `opts` (NULL for the defaults) as
/// tg_limiter_connect would take them, without contacting Redis or
/// starting a thread: for configuration checks in a process that must not
/// join the store itself (nginx's master at `nginx -t` and reload). TG_OK,
/// or TG_E_NULL, TG_E_INVALID (options), TG_E_STORE (the URL), with
/// tg_last_error()'s words.
#[no_mangle]
pub extern "C" fn tg_redis_check(url: *const c_char, opts: *const tg_redis_options) -> tg_status {
    guard(|| {
        limiter::set_last_error("");
        if url.is_null() {
            return TG_E_NULL;
        }
        let o = if opts.is_null() {
            tg_redis_options::default()
        } else {
            match read_options(opts) {
                Some(o) => o,
                None => return TG_E_INVALID,
            }
        };
        // SAFETY: non-null and NUL-terminated by contract.
        let Ok(url) = unsafe { CStr::from_ptr(url) }.to_str() else {
            limiter::set_last_error("the store's URL is not UTF-8");
            return TG_E_INVALID;
        };
        imp::check(url, &o)
    })
}

/// Leaves the store: once the last handle sharing the link lets go, unspent
/// units go back to Redis (each call under the deadline) and the lease
/// thread stops. Decisions are then TG_E_NOT_JOINED. A limiter that is not
/// joined is left as it is (TG_OK). tg_limiter_free does this too. Safe
/// while other threads decide on the handle (a graceful shutdown): a
/// decision already under way finishes on the link, and the last such
/// decision to finish gives the units back on its own thread before it
/// returns; this call does not wait for it.
#[no_mangle]
pub extern "C" fn tg_limiter_disconnect(limiter: *mut tg_limiter) -> tg_status {
    guard(|| {
        // SAFETY: as tg_limiter_connect: a shared reference, beside
        // decisions on other threads.
        let Some(l) = (unsafe { limiter.as_ref() }) else {
            return TG_E_NULL;
        };
        imp::disconnect(l)
    })
}

/// The lease layer's counters: mode, Redis up or down, latency, refills,
/// fallbacks. TG_E_NOT_JOINED when the limiter is not joined to a store.
#[no_mangle]
pub extern "C" fn tg_limiter_lease_stats(
    limiter: *const tg_limiter,
    out: *mut tg_lease_stats,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a live limiter from this library.
        let (Some(l), false) = (unsafe { limiter.as_ref() }, out.is_null()) else {
            return TG_E_NULL;
        };
        // SAFETY: non-null, the caller's struct, whose first field every
        // version has.
        let size = unsafe { (*out).size };
        let size = match size {
            0 => std::mem::size_of::<tg_lease_stats>() as u32,
            n if n as usize >= std::mem::size_of::<tg_lease_stats>() => n,
            LEASE_STATS_SIZE_0_3 => LEASE_STATS_SIZE_0_3,
            _ => return TG_E_INVALID,
        };
        match imp::stats(l) {
            Ok(s) => {
                let s = tg_lease_stats { size, ..s };
                // SAFETY: non-null and writable for `size` bytes by
                // contract (a 0.3 caller's struct ends before the fields
                // added since).
                unsafe { write_sized(out, &s, size) };
                TG_OK
            }
            Err(status) => status,
        }
    })
}

#[cfg(feature = "redis")]
mod imp {
    use std::time::Duration;

    use super::*;
    use crate::lease::{DownPolicy, LeaseMode, LeaseOptions, LeaseStats};
    use crate::store::BreakerState;

    fn ms(field: u32, default: Duration) -> Duration {
        match field {
            0 => default,
            n => Duration::from_millis(n as u64),
        }
    }

    fn or(field: u32, default: u32) -> u32 {
        if field == 0 {
            default
        } else {
            field
        }
    }

    /// Whether a struct of `size` bytes (0: the caller's header is this
    /// one) holds the u32 field at `offset`.
    fn covers(size: u32, offset: usize) -> bool {
        size == 0 || size as usize >= offset + std::mem::size_of::<u32>()
    }

    /// The C struct as the Rust options (0 = the default).
    pub(super) fn options(o: &tg_redis_options) -> Result<LeaseOptions, &'static str> {
        let d = LeaseOptions::default();
        Ok(LeaseOptions {
            mode: match o.mode {
                TG_REDIS_LEASES => LeaseMode::Leases,
                TG_REDIS_EXACT => LeaseMode::Exact,
                _ => return Err("mode is not TG_REDIS_LEASES or TG_REDIS_EXACT"),
            },
            down: match o.down {
                TG_DOWN_LOCAL => DownPolicy::Local,
                TG_DOWN_OPEN => DownPolicy::Open,
                TG_DOWN_CLOSED => DownPolicy::Closed,
                _ => return Err("down is not TG_DOWN_LOCAL, TG_DOWN_OPEN or TG_DOWN_CLOSED"),
            },
            hosts: or(o.hosts, d.hosts),
            // Read only if the caller's struct reaches it: one from a
            // header before the field ends short of it.
            max_hosts: if covers(o.size, std::mem::offset_of!(tg_redis_options, max_hosts)) {
                or(o.max_hosts, d.max_hosts)
            } else {
                d.max_hosts
            },
            refill_interval: ms(o.refill_interval_ms, d.refill_interval),
            idle_after: ms(o.idle_after_ms, d.idle_after),
            max_lease: or(o.max_lease, d.max_lease),
            store: crate::store::StoreOptions {
                deadline: ms(o.deadline_ms, d.store.deadline),
                trip_after: or(o.trip_after, d.store.trip_after),
                cooldown: ms(o.cooldown_ms, d.store.cooldown),
                max_cooldown: ms(o.max_cooldown_ms, d.store.max_cooldown),
                max_connections: or(o.max_connections, d.store.max_connections as u32) as usize,
            },
        })
    }

    /// The Rust options back in the C struct (for `set`, which edits one).
    fn to_c(l: &LeaseOptions, size: u32) -> tg_redis_options {
        let ms = |d: Duration| d.as_millis().min(u32::MAX as u128) as u32;
        tg_redis_options {
            size,
            mode: match l.mode {
                LeaseMode::Leases => TG_REDIS_LEASES,
                LeaseMode::Exact => TG_REDIS_EXACT,
            },
            down: match l.down {
                DownPolicy::Local => TG_DOWN_LOCAL,
                DownPolicy::Open => TG_DOWN_OPEN,
                DownPolicy::Closed => TG_DOWN_CLOSED,
            },
            hosts: l.hosts,
            deadline_ms: ms(l.store.deadline),
            refill_interval_ms: ms(l.refill_interval),
            idle_after_ms: ms(l.idle_after),
            max_lease: l.max_lease,
            max_connections: l.store.max_connections.min(u32::MAX as usize) as u32,
            trip_after: l.store.trip_after,
            cooldown_ms: ms(l.store.cooldown),
            max_cooldown_ms: ms(l.store.max_cooldown),
            max_hosts: l.max_hosts,
        }
    }

    pub(super) fn set(o: &mut tg_redis_options, name: &str, value: &str) -> tg_status {
        let mut rust = match options(o) {
            Ok(r) => r,
            Err(e) => {
                limiter::set_last_error(e);
                return TG_E_INVALID;
            }
        };
        match rust.set(name, value) {
            Ok(()) => {
                *o = to_c(&rust, o.size);
                TG_OK
            }
            Err(e) => {
                limiter::set_last_error(&e);
                TG_E_INVALID
            }
        }
    }

    pub(super) fn connect(l: &tg_limiter, url: &str, o: &tg_redis_options) -> tg_status {
        let opts = match options(o) {
            Ok(r) => r,
            Err(e) => {
                limiter::set_last_error(e);
                return TG_E_INVALID;
            }
        };
        match l.inner.connect_shared(url, opts) {
            Ok(()) => TG_OK,
            Err(e) => {
                limiter::set_last_error(&e.to_string());
                status_of(&e)
            }
        }
    }

    pub(super) fn disconnect(l: &tg_limiter) -> tg_status {
        l.inner.disconnect_shared();
        TG_OK
    }

    pub(super) fn check(url: &str, o: &tg_redis_options) -> tg_status {
        let opts = match options(o) {
            Ok(r) => r,
            Err(e) => {
                limiter::set_last_error(e);
                return TG_E_INVALID;
            }
        };
        match crate::lease::check(url, &opts) {
            Ok(()) => TG_OK,
            Err(e) => {
                limiter::set_last_error(&e.to_string());
                status_of(&e)
            }
        }
    }

    pub(super) fn stats(l: &tg_limiter) -> Result<tg_lease_stats, tg_status> {
        let s: LeaseStats = l.inner.lease_stats().ok_or(TG_E_NOT_JOINED)?;
        Ok(tg_lease_stats {
            size: std::mem::size_of::<tg_lease_stats>() as u32,
            mode: match s.mode {
                LeaseMode::Leases => TG_REDIS_LEASES,
                LeaseMode::Exact => TG_REDIS_EXACT,
            },
            down_policy: match s.down_policy {
                DownPolicy::Local => TG_DOWN_LOCAL,
                DownPolicy::Open => TG_DOWN_OPEN,
                DownPolicy::Closed => TG_DOWN_CLOSED,
            },
            redis_down: s.redis_down as u32,
            breaker: match s.store.breaker {
                BreakerState::Closed => TG_BREAKER_CLOSED,
                BreakerState::Open => TG_BREAKER_OPEN,
                BreakerState::HalfOpen => TG_BREAKER_HALF_OPEN,
            },
            connections: s.store.connections.min(u32::MAX as usize) as u32,
            decisions: s.decisions,
            from_leases: s.from_leases,
            refills: s.refills,
            top_ups: s.top_ups,
            granted_units: s.granted_units,
            refused_by_store: s.refused_by_store,
            degraded: s.degraded,
            degraded_admitted: s.degraded_admitted,
            give_backs: s.give_backs,
            given_back_units: s.given_back_units,
            pushes: s.pushes,
            pushed_units: s.pushed_units,
            dropped_units: s.dropped_units,
            pending: s.pending,
            deferred: s.deferred,
            last_latency_us: s.last_latency_us,
            store_calls: s.store.calls,
            store_failures: s.store.failures,
            store_timeouts: s.store.timeouts,
            store_circuit_open: s.store.circuit_open,
            store_trips: s.store.trips,
            store_connects: s.store.connects,
            hosts: s.hosts,
            eviction_risk: s.eviction_risk as u32,
            refused_locally: s.refused_locally,
            evicted_keys: s.evicted_keys,
            token_grants: s.token_grants,
            token_refusals: s.token_refusals,
            token_settles: s.token_settles,
        })
    }
}

#[cfg(not(feature = "redis"))]
mod imp {
    use super::*;

    fn unsupported() -> tg_status {
        limiter::set_last_error("this library was built without the `redis` feature");
        TG_E_UNSUPPORTED
    }

    pub(super) fn set(_: &mut tg_redis_options, _: &str, _: &str) -> tg_status {
        unsupported()
    }

    pub(super) fn connect(_: &tg_limiter, _: &str, _: &tg_redis_options) -> tg_status {
        unsupported()
    }

    pub(super) fn disconnect(_: &tg_limiter) -> tg_status {
        TG_OK
    }

    pub(super) fn check(_: &str, _: &tg_redis_options) -> tg_status {
        unsupported()
    }

    pub(super) fn stats(_: &tg_limiter) -> Result<tg_lease_stats, tg_status> {
        Err(TG_E_NOT_JOINED)
    }
}

/// tg_limiter_lease_event levels (stable values).
pub const TG_LOG_ERROR: u32 = 1;
/// Worth a look (Redis slow, the breaker open, evictions).
pub const TG_LOG_WARN: u32 = 2;
/// For the record (Redis back, the breaker closed).
pub const TG_LOG_INFO: u32 = 3;

/// The lease layer's next event after number `*seq` (start from 0): Redis
/// unavailable (with Redis's own reason; never the URL's password), Redis
/// answering again, the breaker opened, the backlog pushed, an eviction
/// policy that can drop counts. Each change is one event; the library
/// keeps the latest 64. For a binding's own logger, polled from its own
/// thread or timer, so no callback runs on the library's threads:
///
/// ```c
/// uint64_t seq = 0; uint32_t level; char text[512];
/// while (tg_limiter_lease_event(l, &seq, &level, text, sizeof text) == TG_OK
///        && level != 0)
///     log_at(level, text);
/// ```
///
/// On TG_OK with an event: `*seq` is its number, `*level` its TG_LOG_*
/// level and `text` its NUL-terminated text (cut to fit `len`, which must
/// be at least 1). On TG_OK with none newer: `*level` is 0 and `*seq` is
/// unchanged. TG_E_NOT_JOINED if the limiter is not joined to a store.
/// Safe from any thread, beside decisions.
#[no_mangle]
pub extern "C" fn tg_limiter_lease_event(
    limiter: *const tg_limiter,
    seq: *mut u64,
    level: *mut u32,
    text: *mut c_char,
    len: usize,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a live limiter from this library.
        let Some(l) = (unsafe { limiter.as_ref() }) else {
            return TG_E_NULL;
        };
        if seq.is_null() || level.is_null() || text.is_null() {
            return TG_E_NULL;
        }
        if len == 0 {
            return TG_E_INVALID;
        }
        #[cfg(feature = "redis")]
        {
            use crate::lease::Level;
            if l.inner.lease_stats().is_none() {
                return TG_E_NOT_JOINED;
            }
            // SAFETY: non-null, the caller's u64.
            let after = unsafe { *seq };
            let Some(e) = l.inner.lease_event(after) else {
                // SAFETY: non-null, the caller's u32 and at least one byte.
                unsafe {
                    *level = 0;
                    *text = 0;
                }
                return TG_OK;
            };
            // SAFETY: non-null and writable by contract.
            unsafe {
                *seq = e.seq;
                *level = match e.level {
                    Level::Error => TG_LOG_ERROR,
                    Level::Warn => TG_LOG_WARN,
                    _ => TG_LOG_INFO,
                };
            }
            write_err(text, len, &e.text);
            TG_OK
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = (l, seq, level, text);
            TG_E_NOT_JOINED
        }
    })
}

//! Shared by the bench programs: the policy, the keys, and the two
//! comparison systems (the `governor` pair and a Mutex<HashMap> baseline),
//! so every program measures exactly the same three things.
#![allow(dead_code)]

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tollgate::{Policy, Request, Tier};

/// The model every bench decides for (it is in the built-in policy).
pub const MODEL: &str = "DeepSeek-V3.1";
/// Limits so large that no bench run exhausts a window (u32 counts hold it).
pub const HUGE: u32 = 4_000_000_000;
/// A fixed decision time: 2025-11-28T00:00:00Z plus a bit, mid-minute.
pub const NOW_MS: u64 = 1_764_288_030_000;

/// The built-in models with every developer limit raised to [`HUGE`], so the
/// allow path runs through the real model and tier lookups.
/// [`huge_policy`]'s text.
pub fn policy_text_huge() -> String {
    let builtin = tollgate::policy::BUILTIN_TOML;
    let models = builtin
        .split("[tiers.developer]")
        .next()
        .expect("built-in policy has a models section");
    let mut text = String::from(models);
    text.push_str("[tiers.developer]\n");
    for m in Policy::builtin().models() {
        text.push_str(&format!(
            "{:?} = {{ rpm = {HUGE}, rpd = {HUGE} }}\n",
            m.name
        ));
    }
    text
}

pub fn huge_policy() -> Policy {
    let text = policy_text_huge();
    Policy::parse(&text, "<bench policy>").expect("bench policy parses")
}

/// Account ids as an API gateway would see them: 24 bytes, distinct.
pub fn accounts(n: usize, prefix: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}-{i:0w$}", w = 23 - prefix.len()))
        .collect()
}

/// The key the comparison systems use for (account, model): one String,
/// built up front so no bench allocates on the decision path.
pub fn joined(accounts: &[String]) -> Vec<String> {
    accounts.iter().map(|a| format!("{a}:{MODEL}")).collect()
}

pub fn request(account: &str) -> Request<'_> {
    Request::new(account.as_bytes(), MODEL.as_bytes(), Tier::Developer)
}

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, FakeRelativeClock, NoOpMiddleware<Nanos>>;

/// `governor` doing the same job: one keyed GCRA limiter per window
/// (per-minute, per-day), checked in turn, on the default keyed store
/// (DashMap, std RandomState) and a FakeRelativeClock that the bench never
/// advances (the analogue of passing `now` in; no clock read is measured).
/// Unlike tollgate the pair is not all-or-nothing: a request the day limiter
/// refuses has already been charged to the minute limiter.
pub struct GovernorPair {
    pub minute: Keyed,
    pub day: Keyed,
    pub clock: FakeRelativeClock,
}

impl GovernorPair {
    pub fn new(rpm: u32, rpd: u32) -> GovernorPair {
        let clock = FakeRelativeClock::default();
        let rpm = NonZeroU32::new(rpm).unwrap();
        let rpd_nz = NonZeroU32::new(rpd).unwrap();
        let day_period = Duration::from_nanos(86_400_000_000_000 / rpd as u64);
        GovernorPair {
            minute: RateLimiter::dashmap_with_clock(Quota::per_minute(rpm), clock.clone()),
            day: RateLimiter::dashmap_with_clock(
                Quota::with_period(day_period).unwrap().allow_burst(rpd_nz),
                clock.clone(),
            ),
            clock,
        }
    }

    /// Allowed, or the wait until the refusing limiter would admit one
    /// (what a server needs for Retry-After).
    #[inline]
    pub fn check(&self, key: &String) -> Result<(), Duration> {
        use governor::clock::Clock;
        if let Err(e) = self.minute.check_key(key) {
            return Err(e.wait_time_from(self.clock.now()));
        }
        if let Err(e) = self.day.check_key(key) {
            return Err(e.wait_time_from(self.clock.now()));
        }
        Ok(())
    }
}

/// The obvious baseline for an in-flight limit: a count per key in a
/// Mutex<HashMap>, raised on admission and lowered on release (what an
/// in-process gateway keeps; it forgets nothing a crashed process held,
/// as it shares nothing).
pub struct MutexInFlight {
    map: Mutex<HashMap<String, u32>>,
    pub max: u32,
}

impl MutexInFlight {
    pub fn new(max: u32) -> MutexInFlight {
        MutexInFlight {
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    #[inline]
    pub fn acquire(&self, key: &str) -> bool {
        let mut map = self.map.lock().unwrap();
        let n = match map.get_mut(key) {
            Some(n) => n,
            None => map.entry(key.to_owned()).or_insert(0),
        };
        let ok = *n < self.max;
        *n += ok as u32;
        ok
    }

    #[inline]
    pub fn release(&self, key: &str) {
        if let Some(n) = self.map.lock().unwrap().get_mut(key) {
            *n -= 1;
        }
    }
}

/// `policy_text_huge` with `max_in_flight = max` on every model.
pub fn in_flight_policy(max: u32) -> Policy {
    let text = policy_text_huge().replace(
        &format!("rpd = {HUGE} }}"),
        &format!("rpd = {HUGE}, max_in_flight = {max} }}"),
    );
    Policy::parse(&text, "<bench policy>").expect("bench policy parses")
}

/// The obvious baseline: fixed windows in a Mutex<HashMap<String, ...>>
/// (std RandomState). Value = (minute index, minute count, day index, day count).
pub struct MutexMap {
    map: Mutex<HashMap<String, (u64, u32, u64, u32)>>,
    pub rpm: u32,
    pub rpd: u32,
}

/// What the baseline answers: allowed, and the counts after the decision.
#[derive(Debug, Clone, Copy)]
pub struct MapDecision {
    pub allowed: bool,
    pub minute_count: u32,
    pub day_count: u32,
}

impl MutexMap {
    pub fn new(rpm: u32, rpd: u32) -> MutexMap {
        MutexMap {
            map: Mutex::new(HashMap::new()),
            rpm,
            rpd,
        }
    }

    #[inline]
    pub fn check(&self, key: &str, now_ms: u64) -> MapDecision {
        let minute = now_ms / 60_000;
        let day = now_ms / 86_400_000;
        let mut map = self.map.lock().unwrap();
        // Look up by &str first so only a key's first request allocates.
        let e = match map.get_mut(key) {
            Some(e) => e,
            None => map.entry(key.to_owned()).or_insert((minute, 0, day, 0)),
        };
        if e.2 != day {
            *e = (minute, 0, day, 0);
        } else if e.0 != minute {
            e.0 = minute;
            e.1 = 0;
        }
        let allowed = e.1 < self.rpm && e.3 < self.rpd;
        if allowed {
            e.1 += 1;
            e.3 += 1;
        }
        MapDecision {
            allowed,
            minute_count: e.1,
            day_count: e.3,
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

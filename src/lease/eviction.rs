//! Whether the store may drop the limiter's counts. Every count carries a
//! TTL (its window's end plus a grace), so a Redis with a memory limit
//! evicts them first under `volatile-lru`/`volatile-ttl`/..., and under
//! `allkeys-*` too: an evicted count restarts at zero and the key is
//! admitted again (60 in one 30/min window, measured). Only `noeviction`
//! (or no memory limit) keeps them; docs/multi-host.md asks for it, or for
//! a Redis of the limiter's own.
//!
//! The lease thread asks the store ([`QuotaStore::eviction`]) at join and
//! then every [`EVERY`], and tells an operator once when the settings can
//! drop counts, and each time keys were evicted.

use std::time::Duration;

use std::sync::atomic::Ordering::Relaxed;

use super::events::Level;
use super::Inner;
#[cfg(doc)]
use crate::store::QuotaStore;

/// How often the lease thread looks again.
pub(crate) const EVERY: Duration = Duration::from_secs(10);

impl Inner {
    /// Looks at Redis's memory limit, eviction policy and evictions, and
    /// tells an operator once when they can drop counts, and each time
    /// keys were evicted (see `lease::eviction`).
    pub(super) fn look_at_eviction(&self) {
        let Ok(seen) = self.store.eviction() else {
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
                    EVERY.as_secs()
                ),
            );
        }
    }
}

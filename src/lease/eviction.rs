//! Whether Redis may drop the limiter's counts. Every count key carries a
//! TTL (its window's end plus a grace), so a Redis with a memory limit
//! evicts them first under `volatile-lru`/`volatile-ttl`/..., and under
//! `allkeys-*` too: an evicted count restarts at zero and the key is
//! admitted again (60 in one 30/min window, measured). Only `noeviction`
//! (or no memory limit) keeps them; docs/multi-host.md asks for it, or for
//! a Redis of the limiter's own.
//!
//! The lease thread looks at join and then every [`EVERY`]: the policy by
//! `CONFIG GET` (an ACL may forbid it; `INFO memory` says the same), and
//! `evicted_keys` from `INFO stats`, whose rise means keys were dropped.
//! On a Cluster the commands go to the node the client picks.

use std::time::Duration;

/// How often the lease thread looks again.
pub(crate) const EVERY: Duration = Duration::from_secs(10);

/// What one look found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    /// `maxmemory-policy`, if Redis told it.
    pub policy: Option<String>,
    /// `maxmemory` in bytes (0: no limit, nothing is ever evicted).
    pub maxmemory: u64,
    /// `evicted_keys` since the server started.
    pub evicted: u64,
}

impl Seen {
    /// A memory limit with a policy that evicts keys with a TTL: ours.
    pub(crate) fn at_risk(&self) -> bool {
        self.maxmemory > 0 && self.policy.as_deref().is_some_and(|p| p != "noeviction")
    }
}

/// The `field:value` of an INFO reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Asks Redis, on `conn`, within its read timeout.
pub(crate) fn look(conn: &mut dyn redis::ConnectionLike) -> Result<Seen, redis::RedisError> {
    let memory: String = redis::cmd("INFO").arg("memory").query(conn)?;
    let stats: String = redis::cmd("INFO").arg("stats").query(conn)?;
    let mut policy = info_field(&memory, "maxmemory_policy").map(str::to_string);
    if policy.is_none() {
        // Servers whose INFO lacks it: CONFIG GET, where an ACL allows.
        if let Ok(v) = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query::<Vec<String>>(conn)
        {
            policy = v.get(1).cloned();
        }
    }
    let number = |text: &str, f| {
        info_field(text, f)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Seen {
        policy,
        maxmemory: number(&memory, "maxmemory"),
        evicted: number(&stats, "evicted_keys"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_memory_limit_with_an_evicting_policy_is_a_risk() {
        let seen = |p: &str, m| Seen {
            policy: Some(p.into()),
            maxmemory: m,
            evicted: 0,
        };
        assert!(!seen("noeviction", 1 << 30).at_risk());
        assert!(!seen("allkeys-lru", 0).at_risk());
        assert!(seen("allkeys-lru", 1 << 30).at_risk());
        assert!(seen("volatile-ttl", 1).at_risk());
        let info =
            "# Memory\r\nused_memory:1\r\nmaxmemory:100\r\nmaxmemory_policy:volatile-lru\r\n";
        assert_eq!(info_field(info, "maxmemory"), Some("100"));
        assert_eq!(info_field(info, "maxmemory_policy"), Some("volatile-lru"));
        assert_eq!(info_field(info, "evicted_keys"), None);
    }
}

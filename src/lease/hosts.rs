//! How many gateway hosts share the quotas, when the options leave it to
//! Redis (`hosts = 0`, "auto"): every joined table beats a heartbeat into
//! one sorted set, `tg:{hosts}` (one hash tag, so one Cluster slot), with
//! its expiry as the score; the live hosts are the members not expired.
//!
//! Every date in the set is Redis's: a beat is one script
//! (`store/redis_store/beat.lua`, behind [`QuotaStore::beat`]) that reads
//! Redis's `TIME`, scores this host's member at that now plus its
//! lifetime, removes the members expired by that now, and counts the
//! rest. Nothing here reads the host's clock, so hosts whose clocks
//! disagree count each other, by any amount (the rest of the design
//! allows `max_skew_seconds`, 60 s by default); when each scored its
//! entry by its own clock, a host a few seconds ahead removed all the
//! others and believed itself alone, and one behind was removed by them.
//! No beat dates its member further ahead than its lifetime, so a member beyond that (and a slack, for Redis's clock
//! stepping back or a Cluster failover to a node a little behind) is no
//! host's: a stray writer's, removed and not counted. What such a writer
//! keeps within the horizon does count; the lease layer takes at most
//! `LeaseOptions::max_hosts` of it.
//!
//! A host is a table, not a process: its id is the machine's name and the
//! table's random seed, so every process and nginx worker attached to one
//! table beats as one host, and two tables on one machine are two. One
//! script call (EVALSHA; the client loads it again on NOSCRIPT) on a
//! connection of the lease thread's own, under the store's deadline:
//! nothing on a decision's path. A table that leaves is not removed: its
//! entry expires, so another process still on the same table is never
//! left uncounted meanwhile (a count too low would enlarge every host's
//! down share).

use std::time::Duration;

use std::sync::atomic::Ordering::Relaxed;

use super::options::DEFAULT_MAX_HOSTS;
use super::Inner;
#[cfg(doc)]
use crate::store::QuotaStore;
use crate::store::Tag;

/// The hosts set's hash tag (its breaker, its Cluster slot).
pub(crate) const TAG: &[u8] = b"hosts";

/// How often a table joined with `hosts` auto beats.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// This table's id among the hosts: the machine's name and the table's
/// random seed.
pub(crate) fn id(seed: &[u64; 4]) -> String {
    format!("{}:{:016x}{:016x}", hostname(), seed[0], seed[1])
}

impl Inner {
    /// Renews this table's heartbeat and takes the live count. Redis not
    /// answering keeps the count last seen (the `Local` share divides by
    /// it); the store's own calls notice the outage.
    pub(super) fn beat(&self) {
        let tag = Tag::new(TAG).expect("a valid tag");
        if self.store.fails_fast(&tag) {
            return;
        }
        if let Ok(n) = self.store.beat(&self.host_id, EVERY) {
            self.live_hosts.store(n, Relaxed);
        }
    }

    /// The hosts sharing each quota: as configured, or as Redis last
    /// counted them (at least 1, at most `max_hosts`: entries a stray
    /// writer keeps in the set cannot shrink leases and down shares
    /// further).
    pub(super) fn hosts(&self) -> u32 {
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
}

fn hostname() -> String {
    if cfg!(miri) {
        // The interpreter runs no foreign calls; a table's seed names it.
        return "miri".into();
    }
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length; gethostname NUL-terminates
    // within it or truncates (then the last byte is set below).
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if r != 0 {
        return "unknown-host".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len() - 1);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

//! How many gateway hosts share the quotas, when the options leave it to
//! Redis (`hosts = 0`, "auto"): every joined table beats a heartbeat into
//! one sorted set, `tg:{hosts}` (one hash tag, so one Cluster slot), with
//! its expiry as the score; the live hosts are the members not expired.
//!
//! Every date in the set is Redis's: a beat is one script (`BEAT`) that
//! reads Redis's `TIME`, scores this host's member at that now plus its
//! lifetime, removes the members expired by that now, and counts the
//! rest. Nothing here reads the host's clock, so hosts whose clocks
//! disagree count each other, by any amount (the rest of the design
//! allows `max_skew_seconds`, 60 s by default); when each scored its
//! entry by its own clock, a host a few seconds ahead removed all the
//! others and believed itself alone, and one behind was removed by them. No beat dates its member further ahead than its
//! lifetime, so a member beyond that (and a slack, for Redis's clock
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

use crate::store::Store;

/// The sorted set of live hosts, and its hash tag (its Cluster slot).
pub(crate) const KEY: &str = "tg:{hosts}";
pub(crate) const TAG: &[u8] = b"hosts";

/// A host's beat lives this many beat intervals: two missed beats (a
/// stall, a slow restart) do not drop it from the count.
const LIVES: u32 = 3;

/// One beat, atomically. Before Redis 5 a script that reads TIME and then
/// writes must ask for effects replication (later versions always do).
const BEAT: &str = r"
-- KEYS[1]  tg:{hosts}
-- ARGV[1]  this host's id
-- ARGV[2]  ms its entry lives
-- ARGV[3]  ms beyond that an entry may be dated and still be a host's
-- ARGV[4]  ms the set outlives its newest entry by
-- Reply: the live entries, this host's included.
if redis.replicate_commands then
  redis.replicate_commands()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local life = tonumber(ARGV[2])
local horizon = now + life + tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
redis.call('ZREMRANGEBYSCORE', KEYS[1], string.format('(%.0f', horizon), '+inf')
redis.call('ZADD', KEYS[1], string.format('%.0f', now + life), ARGV[1])
redis.call('PEXPIRE', KEYS[1], life + tonumber(ARGV[4]))
return redis.call('ZCARD', KEYS[1])
";

pub(crate) struct Heartbeat {
    id: String,
    conn: Option<crate::store::Conn>,
    script: redis::Script,
}

impl Heartbeat {
    pub(crate) fn new(seed: &[u64; 4]) -> Heartbeat {
        Heartbeat {
            id: format!("{}:{:016x}{:016x}", hostname(), seed[0], seed[1]),
            conn: None,
            script: redis::Script::new(BEAT),
        }
    }

    /// Renews this host's entry and counts the live ones (this one
    /// included; what Redis holds, uncapped), or says why Redis did not
    /// answer.
    pub(crate) fn beat(&mut self, store: &Store, every: Duration) -> Result<u32, String> {
        let deadline = store.options().deadline;
        let ms = |d: Duration| d.as_millis() as u64;
        let life = every * LIVES;
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => self
                .conn
                .insert(store.open_conn(deadline).map_err(|e| e.to_string())?),
        };
        let result = (|| -> redis::RedisResult<u32> {
            conn.set_timeouts(deadline)?;
            self.script
                .key(KEY)
                .arg(&self.id)
                .arg(ms(life))
                // The slack: as far again as a beat dates itself.
                .arg(ms(life))
                // The set itself outlives every member by a beat, so an
                // idle fleet leaves nothing behind.
                .arg(ms(every))
                .invoke(conn.as_connection_like())
        })();
        match result {
            Ok(n) => Ok(n.max(1)),
            Err(e) => {
                // A fresh connection next time: this one may hold a late reply.
                self.conn = None;
                Err(e.to_string())
            }
        }
    }
}

fn hostname() -> String {
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

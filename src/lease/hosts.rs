//! How many gateway hosts share the quotas, when the options leave it to
//! Redis (`hosts = 0`, "auto"): every joined table beats a heartbeat into
//! one sorted set, `tg:{hosts}` (one hash tag, so one Cluster slot), with
//! its expiry as the score; the live hosts are the members not expired.
//!
//! A host is a table, not a process: its id is the machine's name and the
//! table's random seed, so every process and nginx worker attached to one
//! table beats as one host, and two tables on one machine are two. Plain
//! commands (ZADD, ZREMRANGEBYSCORE, ZCARD) on a connection of the lease
//! thread's own, under the store's deadline: nothing on a decision's path.
//! A table that leaves is not removed: its entry expires, so another
//! process still on the same table is never left uncounted meanwhile (a
//! count too low would enlarge every host's down share).

use std::time::Duration;

use crate::store::Store;

/// The sorted set of live hosts, and its hash tag (its Cluster slot).
pub(crate) const KEY: &str = "tg:{hosts}";
pub(crate) const TAG: &[u8] = b"hosts";

/// A host's beat lives this many beat intervals: two missed beats (a
/// stall, a slow restart) do not drop it from the count.
const LIVES: u32 = 3;

pub(crate) struct Heartbeat {
    id: String,
    conn: Option<crate::store::Conn>,
}

impl Heartbeat {
    pub(crate) fn new(seed: &[u64; 4]) -> Heartbeat {
        Heartbeat {
            id: format!("{}:{:016x}{:016x}", hostname(), seed[0], seed[1]),
            conn: None,
        }
    }

    /// Renews this host's entry and counts the live ones (this one
    /// included), or says why Redis did not answer.
    pub(crate) fn beat(&mut self, store: &Store, every: Duration) -> Result<u32, String> {
        let deadline = store.options().deadline;
        let now = crate::now_ms();
        let expiry = now + (every * LIVES).as_millis() as u64;
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => self
                .conn
                .insert(store.open_conn(deadline).map_err(|e| e.to_string())?),
        };
        let result = (|| -> redis::RedisResult<u32> {
            conn.set_timeouts(deadline)?;
            let c = conn.as_connection_like();
            redis::cmd("ZADD")
                .arg(KEY)
                .arg(expiry)
                .arg(&self.id)
                .exec(c)?;
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(KEY)
                .arg("-inf")
                .arg(now)
                .exec(c)?;
            // The set itself outlives every member by a beat, so an idle
            // fleet leaves nothing behind.
            redis::cmd("PEXPIRE")
                .arg(KEY)
                .arg((every * (LIVES + 1)).as_millis() as u64)
                .exec(c)?;
            redis::cmd("ZCARD").arg(KEY).query(c)
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

//! Where the store connects (one server or a Cluster, from the URL) and the
//! small pool of connections calls take turns on. A connection that failed
//! is dropped, never reused: after a timeout its socket may still hold the
//! late reply, and a fresh connection is cheaper than reasoning about it.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::ConnectionLike;
use redis::IntoConnectionInfo;

use super::StoreError;

/// `redis+cluster://[user:pass@]host:port[,host:port...]` (or
/// `valkey+cluster://`) names a Cluster by its seed nodes; anything else
/// goes to the crate's single-server parser (`redis://host:port/db`,
/// `valkey://`, `redis+unix:///path`).
const CLUSTER_SCHEMES: [&str; 2] = ["redis+cluster://", "valkey+cluster://"];

pub(crate) enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// The seed URLs of a `redis+cluster://` URL, one `redis://` URL each.
pub(crate) fn cluster_seeds(rest: &str) -> Result<Vec<String>, StoreError> {
    let (auth, hosts) = match rest.rfind('@') {
        Some(i) => (&rest[..=i], &rest[i + 1..]),
        None => ("", rest),
    };
    let hosts = hosts.trim_end_matches('/');
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    if seeds.is_empty() {
        return Err(StoreError::Config(
            "redis+cluster:// URL names no seed node (want host:port[,host:port...])".into(),
        ));
    }
    if seeds.iter().any(|s| s[8..].contains('/')) {
        return Err(StoreError::Config(
            "redis+cluster:// URL: a Cluster has no database number; give host:port only".into(),
        ));
    }
    Ok(seeds)
}

/// The connection settings of `url`, without the `CLIENT SETINFO` calls the
/// client otherwise makes on every new connection: it reads each of their
/// replies with the whole socket timeout, so a stalled server held a
/// decision that opened a connection for twice the deadline.
fn quiet(url: &str) -> Result<redis::ConnectionInfo, redis::RedisError> {
    let info = url.into_connection_info()?;
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    Ok(info.set_redis_settings(settings))
}

/// The userinfo of every `scheme://user:pass@` in `url` (a Cluster URL's
/// one, before its first host), as `user:***@`, or `***@` without a user:
/// the URL as it may be shown.
pub fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    // The userinfo ends at the last '@' before the path (a password may
    // hold '@', as the Cluster seed parser allows).
    let authority = rest.find('/').map_or(rest, |i| &rest[..i]);
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let shown = match authority[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{}{shown}{}", &url[..start], &rest[at..])
}

/// `text` with the password (and a userinfo without one) of `url` blotted
/// out wherever the client quoted it.
pub(crate) fn scrub(text: &str, url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return text.to_string();
    };
    let rest = &url[start..];
    let authority = rest.find('/').map_or(rest, |i| &rest[..i]);
    let Some(at) = authority.rfind('@') else {
        return text.to_string();
    };
    let secret = match authority[..at].split_once(':') {
        Some((_, pass)) => pass,
        None => &authority[..at],
    };
    if secret.is_empty() {
        return text.to_string();
    }
    text.replace(secret, "***")
}

impl Target {
    pub(crate) fn from_url(url: &str, deadline: Duration) -> Result<Target, StoreError> {
        // Never the password: these messages reach logs, `nginx -t` and
        // exceptions.
        let config = |e: redis::RedisError| {
            StoreError::Config(format!("{:?}: {}", redact(url), scrub(&e.to_string(), url)))
        };
        let cluster = CLUSTER_SCHEMES.iter().find_map(|s| url.strip_prefix(s));
        if let Some(rest) = cluster {
            let seeds = cluster_seeds(rest)?;
            // One retry inside the crate: enough to follow a MOVED or ASK
            // redirect (it refreshes the slot map first), few enough that a
            // stalled node costs about two deadlines, not seventeen.
            let wait_ms = (deadline.as_millis() as u64 / 4).max(1);
            let seeds = seeds
                .into_iter()
                .map(|s| quiet(s.as_str()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(config)?;
            let client = ClusterClient::builder(seeds)
                .connection_timeout(deadline)
                .response_timeout(deadline)
                .retries(1)
                .min_retry_wait(0)
                .max_retry_wait(wait_ms)
                .build()
                .map_err(config)?;
            Ok(Target::Cluster(client))
        } else {
            redis::Client::open(quiet(url).map_err(config)?)
                .map(Target::Single)
                .map_err(config)
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// A new connection, ready within `timeout` or an error.
    pub(crate) fn connect(&self, timeout: Duration) -> Result<Conn, redis::RedisError> {
        match self {
            Target::Single(c) => c.get_connection_with_timeout(timeout).map(Conn::Single),
            // The cluster client bounds each node connection and each reply
            // by the deadline it was built with.
            Target::Cluster(c) => c.get_connection().map(|c| Conn::Cluster(Box::new(c))),
        }
    }
}

pub(crate) enum Conn {
    Single(redis::Connection),
    // Boxed: a cluster connection is several times a single one's size.
    Cluster(Box<ClusterConnection>),
}

impl Conn {
    /// The connection for commands of our own (the host heartbeat).
    pub(crate) fn as_connection_like(&mut self) -> &mut dyn redis::ConnectionLike {
        match self {
            Conn::Single(c) => c,
            Conn::Cluster(c) => &mut **c,
        }
    }

    /// Bound the next reply (and write) by what is left of the deadline.
    /// The Cluster client may send a command twice (one retry, to follow a
    /// redirect or after a timeout), so each of its attempts gets half.
    pub(crate) fn set_timeouts(&mut self, left: Duration) -> Result<(), redis::RedisError> {
        let floor = Duration::from_millis(1);
        match self {
            Conn::Single(c) => {
                let left = Some(left.max(floor));
                c.set_read_timeout(left)?;
                c.set_write_timeout(left)
            }
            Conn::Cluster(c) => {
                let half = Some((left / 2).max(floor));
                c.set_read_timeout(half)?;
                c.set_write_timeout(half)
            }
        }
    }

    /// Whether to keep this connection after `err`. An error reply from
    /// the server (`Script`, `Config`) leaves the stream in step: kept. A
    /// reply the client could not parse may leave it out of step: dropped.
    /// After a transport failure a single server's connection is dropped
    /// (its socket may still hold the late reply). A Cluster connection
    /// holds one connection per node and reconnects a node by itself; it
    /// is kept after a timeout (the client skips the late reply), so that
    /// one stalled shard does not cost the others a full reconnection, and
    /// dropped when a node was unreachable, so the next call starts from
    /// the seeds and a fresh slot map.
    pub(crate) fn survives(&self, err: &StoreError) -> bool {
        matches!(
            (self, err),
            (_, StoreError::Script(_) | StoreError::Config(_))
                | (Conn::Cluster(_), StoreError::Timeout { .. })
        )
    }

    pub(crate) fn as_dyn(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(c) => c,
            Conn::Cluster(c) => c.as_mut(),
        }
    }
}

/// Idle connections and how many exist (idle or in use), at most `max`.
pub(crate) struct Pool {
    state: Mutex<PoolState>,
    freed: Condvar,
    max: usize,
}

struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

/// What a call got from the pool: an idle connection, or the right to open
/// one. Dropped without `keep`, it frees its place (the connection, if
/// any, is closed).
pub(crate) struct Checkout<'a> {
    pool: &'a Pool,
    pub(crate) conn: Option<Conn>,
}

impl Pool {
    pub(crate) fn new(max: usize) -> Pool {
        Pool {
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic while holding this lock leaves only a Vec and a count,
        // both consistent at every step: the data is still good.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits at most until `deadline` for a place; `None` if none came.
    pub(crate) fn checkout(&self, deadline: Instant) -> Option<Checkout<'_>> {
        let mut st = self.lock();
        loop {
            if let Some(conn) = st.idle.pop() {
                return Some(Checkout {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if st.open < self.max {
                st.open += 1;
                return Some(Checkout {
                    pool: self,
                    conn: None,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self
                .freed
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Connections open now, idle or in use (for stats).
    pub(crate) fn open(&self) -> usize {
        self.lock().open
    }
}

impl Checkout<'_> {
    /// The call got an answer: keep the connection for the next one.
    pub(crate) fn keep(mut self) {
        if let Some(conn) = self.conn.take() {
            let mut st = self.pool.lock();
            st.idle.push(conn);
            drop(st);
            self.pool.freed.notify_one();
            std::mem::forget(self);
        }
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        self.conn = None;
        let mut st = self.pool.lock();
        st.open -= 1;
        drop(st);
        self.pool.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            ("redis://u:s3cret@h:1/0", "redis://u:***@h:1/0"),
            ("redis://:s3cret@h:1", "redis://:***@h:1"),
            ("redis://tok@h:1", "redis://***@h:1"),
            (
                "redis+cluster://u:p@w@h:1,h:2",
                "redis+cluster://u:***@h:1,h:2",
            ),
            ("redis://h:1/0", "redis://h:1/0"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact(url), shown);
        }
        assert_eq!(
            scrub("bad \"redis://u:s3cret@h\": s3cret", "redis://u:s3cret@h"),
            "bad \"redis://u:***@h\": ***"
        );
        let e = Target::from_url("redis://u:s3cret@h:notaport/0", Duration::from_millis(5));
        let text = e.err().expect("a bad port").to_string();
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn cluster_urls_name_seed_nodes() {
        assert_eq!(
            cluster_seeds("127.0.0.1:7000, 127.0.0.1:7001,").unwrap(),
            vec!["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        assert_eq!(
            cluster_seeds("u:p@w@h:1,h:2/").unwrap(),
            vec!["redis://u:p@w@h:1", "redis://u:p@w@h:2"]
        );
        assert!(cluster_seeds("").is_err());
        assert!(cluster_seeds(",,").is_err());
        assert!(cluster_seeds("h:1/3").is_err());
    }

    #[test]
    fn the_pool_bounds_connections_and_waits_no_longer_than_the_deadline() {
        let pool = Pool::new(2);
        let far = Instant::now() + Duration::from_secs(10);
        let a = pool.checkout(far).unwrap();
        let b = pool.checkout(far).unwrap();
        assert!(a.conn.is_none() && b.conn.is_none());
        assert_eq!(pool.open(), 2);
        assert!(pool.checkout(Instant::now()).is_none());
        drop(a);
        assert_eq!(pool.open(), 1);
        let _c = pool.checkout(Instant::now()).unwrap();
        assert_eq!(pool.open(), 2);
    }
}

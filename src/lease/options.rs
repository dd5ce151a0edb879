//! The lease layer's options: how decisions draw on the store, what they
//! do while it is away, and the store's own settings, each settable by
//! name (as the C ABI, nginx and Python pass them).

use std::time::Duration;

use crate::store::StoreOptions;

/// How decisions get their quota from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseMode {
    /// Hold leases and spend them locally (the default): far from a limit
    /// most decisions make no network call.
    Leases,
    /// One grant of exactly the cost per decision, nothing held: every
    /// decision is a round trip. The baseline, and for callers that want
    /// no units parked on any host.
    Exact,
}

/// What a decision does when it needs the store and the store does not
/// answer (timeout, refused, breaker open), beyond the units already held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DownPolicy {
    /// Admit up to this host's share, limit / hosts in each window, counted
    /// in the table (shared by the host's processes) and pushed to Redis
    /// when it answers again. The default.
    Local,
    /// Admit everything (counted and pushed like `Local`).
    Open,
    /// Refuse (a 429 from the minute window).
    Closed,
}

/// Settings of a joined limiter; `LeaseOptions::default()` for the
/// documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseOptions {
    /// The store's own settings; its `deadline` (default 50 ms) bounds every
    /// round trip a decision makes.
    pub store: StoreOptions,
    /// Leases (the default) or a round trip per decision (`Exact`).
    pub mode: LeaseMode,
    /// What a decision does when Redis does not answer (default `Local`).
    pub down: DownPolicy,
    /// Gateway hosts sharing each quota: a lease is at most the room left
    /// divided by them, and `DownPolicy::Local` admits limit / hosts per
    /// host. 0 (the default, "auto"): the live hosts Redis last counted
    /// (every joined table beats a heartbeat every second; see
    /// `lease::hosts`), 1 until the first count.
    pub hosts: u32,
    /// The most hosts the auto count (`hosts` 0) takes, whatever Redis
    /// holds: a writer other than the hosts that keeps entries in the
    /// heartbeat set shrinks a lease to no less than the room / `max_hosts`
    /// and each host's `Local` down share to no less than limit /
    /// `max_hosts`. Default 64 ([`DEFAULT_MAX_HOSTS`]; 0 is taken as the
    /// default). A configured `hosts` is used as given.
    pub max_hosts: u32,
    /// A lease is sized to last about this long at the key's recent rate.
    /// Default 1 s.
    pub refill_interval: Duration,
    /// A key whose lease was not refilled for this long gives its unspent
    /// units back. Default 5 s.
    pub idle_after: Duration,
    /// Largest lease, in units. Default 100 000.
    pub max_lease: u32,
}

/// `LeaseOptions::max_hosts` by default: several times the gateway fleets
/// one Redis serves in practice (a few to a few dozen hosts), so a real
/// count is not cut, while stray entries in the heartbeat set can shrink
/// a lease to no less than 1/64 of the room (1 000 of them made it 1/1001,
/// at 42 times the round trips) and leave every key of a limit of 64 or
/// more per window a `Local` down share. A larger fleet raises it or
/// configures `hosts`; one whose Redis others write to and whose limits
/// are small lowers it to its size.
pub const DEFAULT_MAX_HOSTS: u32 = 64;

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            store: StoreOptions::default(),
            mode: LeaseMode::Leases,
            down: DownPolicy::Local,
            hosts: 0,
            max_hosts: DEFAULT_MAX_HOSTS,
            refill_interval: Duration::from_secs(1),
            idle_after: Duration::from_secs(5),
            max_lease: 100_000,
        }
    }
}

/// The option names [`LeaseOptions::set`] takes, as the C ABI
/// (`tg_redis_options_set`), nginx's `tollgate_redis` and the docs list
/// them.
pub const OPTION_NAMES: &[&str] = &[
    "mode",
    "down",
    "hosts",
    "max_hosts",
    "deadline",
    "refill_interval",
    "idle_after",
    "max_lease",
    "max_connections",
    "trip_after",
    "cooldown",
    "max_cooldown",
];

impl LeaseOptions {
    /// Sets one option from its name and text, the one parser of these
    /// settings for every binding: `mode=leases|exact`,
    /// `down=local|open|closed`, `hosts=N|auto`, `max_hosts=N`,
    /// `max_lease=N`, `max_connections=N`, `trip_after=N`, and durations
    /// `deadline`, `refill_interval`, `idle_after`, `cooldown`,
    /// `max_cooldown` as a number with a unit (`50ms`, `2s`, `1m`; a bare
    /// number is milliseconds). An unknown name or a bad value is an error that
    /// says which and what is allowed.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let count = |min: u64| -> Result<u64, String> {
            match value.parse::<u64>() {
                Ok(n) if n >= min && n <= u32::MAX as u64 => Ok(n),
                _ => Err(format!(
                    "{name}: \"{value}\" is not a whole number from {min} to {}",
                    u32::MAX
                )),
            }
        };
        let duration = || -> Result<Duration, String> {
            parse_duration(value).ok_or_else(|| {
                format!("{name}: \"{value}\" is not a duration above zero (such as 50ms, 2s, 1m)")
            })
        };
        match name {
            "mode" => {
                self.mode = match value {
                    "leases" => LeaseMode::Leases,
                    "exact" => LeaseMode::Exact,
                    _ => return Err(format!("mode: \"{value}\" is not leases or exact")),
                }
            }
            "down" => {
                self.down = match value {
                    "local" => DownPolicy::Local,
                    "open" => DownPolicy::Open,
                    "closed" => DownPolicy::Closed,
                    _ => return Err(format!("down: \"{value}\" is not local, open or closed")),
                }
            }
            "hosts" if value == "auto" => self.hosts = 0,
            "hosts" => self.hosts = count(1)? as u32,
            "max_hosts" => self.max_hosts = count(1)? as u32,
            "max_lease" => self.max_lease = count(1)? as u32,
            "max_connections" => self.store.max_connections = count(1)? as usize,
            "trip_after" => self.store.trip_after = count(1)? as u32,
            "deadline" => self.store.deadline = duration()?,
            "refill_interval" => self.refill_interval = duration()?,
            "idle_after" => self.idle_after = duration()?,
            "cooldown" => self.store.cooldown = duration()?,
            "max_cooldown" => self.store.max_cooldown = duration()?,
            _ => {
                return Err(format!(
                    "unknown option \"{name}\" (known: {})",
                    OPTION_NAMES.join(", ")
                ))
            }
        }
        Ok(())
    }
}

/// `50ms`, `2s`, `1m`, or a bare number of milliseconds; above zero and
/// at most a day.
fn parse_duration(text: &str) -> Option<Duration> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = text[..digits].parse().ok()?;
    let ms = match &text[digits..] {
        "" | "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        _ => return None,
    };
    (ms > 0 && ms <= 86_400_000).then(|| Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_set_by_name() {
        let mut o = LeaseOptions::default();
        for (n, v) in [
            ("mode", "exact"),
            ("down", "closed"),
            ("hosts", "3"),
            ("max_hosts", "16"),
            ("deadline", "20ms"),
            ("refill_interval", "2s"),
            ("idle_after", "1m"),
            ("max_lease", "500"),
            ("max_connections", "8"),
            ("trip_after", "5"),
            ("cooldown", "100"),
            ("max_cooldown", "10s"),
        ] {
            o.set(n, v).unwrap();
        }
        assert_eq!(o.mode, LeaseMode::Exact);
        assert_eq!(o.down, DownPolicy::Closed);
        assert_eq!(o.hosts, 3);
        assert_eq!(o.max_hosts, 16);
        assert_eq!(o.store.deadline, Duration::from_millis(20));
        assert_eq!(o.refill_interval, Duration::from_secs(2));
        assert_eq!(o.idle_after, Duration::from_secs(60));
        assert_eq!(o.max_lease, 500);
        assert_eq!(o.store.max_connections, 8);
        assert_eq!(o.store.trip_after, 5);
        assert_eq!(o.store.cooldown, Duration::from_millis(100));
        assert_eq!(o.store.max_cooldown, Duration::from_secs(10));
    }

    #[test]
    fn bad_options_say_what_is_wrong_and_change_nothing() {
        let mut o = LeaseOptions::default();
        for (n, v, says) in [
            ("mode", "fast", "leases or exact"),
            ("down", "", "local, open or closed"),
            ("hosts", "0", "from 1"),
            ("hosts", "-1", "whole number"),
            ("hosts", "99999999999", "whole number"),
            ("max_hosts", "0", "from 1"),
            ("max_hosts", "auto", "whole number"),
            ("max_hosts", "-5", "whole number"),
            ("max_hosts", "4294967296", "whole number"),
            ("deadline", "0ms", "above zero"),
            ("deadline", "5h", "duration"),
            ("deadline", "ms", "duration"),
            ("deadline", "2d", "duration"),
            ("deadlines", "5", "unknown option"),
        ] {
            let e = o.set(n, v).unwrap_err();
            assert!(e.contains(says), "{n}={v}: {e}");
        }
        assert_eq!(o, LeaseOptions::default());
    }
}

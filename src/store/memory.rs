//! A [`QuotaStore`] in this process's memory, for tests: the rules of
//! `redis_store/lease.lua` (all-or-nothing grants sized by the hosts'
//! share, give-backs only into open windows and never below zero, pushes
//! that never refuse, idempotent ids, counts that expire a grace after
//! their window) and of the host heartbeat, on a clock the test sets, with
//! the same breaker and counters as the Redis store.
//!
//! It fails on command ([`Fault`]): unreachable, refusing with Redis's own
//! words, timing out before or after the call took effect, stalling,
//! answering a script error; and it forgets (a restart without
//! persistence) and evicts. So the lease layer's sizing, down policies,
//! give-backs, pushes, recoveries and breaker are tested without a
//! network, and under miri. It is not a store to run a fleet on: its
//! counts live and die with the process.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::gate::Gate;
use super::{
    windows, Applied, Ask, Counts, Eviction, Grant, InFlightAdmit, Instant, OpId, QuotaStore,
    StoreError, StoreOptions, StoreStats, Tag, DAY_GRACE, GRANT_RECORD_TTL, HOST_LIVES,
    MINUTE_GRACE,
};
use crate::window::{MS_PER_DAY, MS_PER_MINUTE};

/// How the next calls fail, until [`MemoryStore::heal`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Unreachable: [`StoreError::Down`].
    Down,
    /// Answers an error reply that means "cannot serve now" (`BUSY ...`,
    /// `OOM ...`, `NOAUTH ...`): [`StoreError::Refused`] with this text.
    Refuse(String),
    /// The reply is lost after the deadline: [`StoreError::Timeout`].
    /// With `applied`, the call took effect first (as when Redis ran the
    /// script and the reply was late), else it never arrived.
    Timeout {
        /// The call took effect before its reply was lost.
        applied: bool,
    },
    /// Every call takes this long before it is made (a slow network, a
    /// long script of another client); one that would pass the deadline
    /// is a timeout that never took effect, after the deadline.
    Stall(Duration),
    /// The script failed (a key of ours holds no count):
    /// [`StoreError::Script`], which retrying does not mend.
    Script(String),
}

/// Which window a count is of: its epoch minute or epoch day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Window {
    Minute(u64),
    Day(u64),
}

#[derive(Clone, Copy, Debug)]
struct Count {
    n: u64,
    expires_ms: u64,
}

#[derive(Default)]
struct Data {
    counts: HashMap<(Tag, Window), Count>,
    /// Operation records: (tag, kind, id) to the value and its expiry.
    records: HashMap<(Tag, u8, OpId), (u64, u64)>,
    /// Live hosts: id to expiry.
    hosts: HashMap<String, u64>,
    /// In-flight sets: tag to member to expiry.
    in_flight: HashMap<Tag, HashMap<String, u64>>,
    eviction: Eviction,
    fault: Option<Fault>,
    /// Fixed by the test (`set_now`), else the system clock.
    now_ms: Option<u64>,
}

/// See the module's comment.
pub struct MemoryStore {
    data: Mutex<Data>,
    gate: Gate,
    opts: StoreOptions,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(StoreOptions::default())
    }
}

impl MemoryStore {
    /// An empty store, answering, on the system clock.
    pub fn new(opts: StoreOptions) -> MemoryStore {
        MemoryStore {
            data: Mutex::new(Data::default()),
            gate: Gate::new(&opts, false),
            opts,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        // Every value is whole at every step.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next calls fail as `fault` says.
    pub fn fail(&self, fault: Fault) {
        self.lock().fault = Some(fault);
    }

    /// Calls succeed again.
    pub fn heal(&self) {
        self.lock().fault = None;
    }

    /// The store's clock, in epoch ms, from now on (windows close, counts
    /// and records expire by it); the system clock until this is called.
    pub fn set_now(&self, ms: u64) {
        self.lock().now_ms = Some(ms);
    }

    /// Forgets every count and record: a restart without persistence.
    /// Hosts stay (they beat again within a second anyway).
    pub fn forget(&self) {
        let mut d = self.lock();
        d.counts.clear();
        d.records.clear();
        d.in_flight.clear();
    }

    /// Drops `tag`'s counts, as an eviction would, and counts them evicted.
    pub fn evict(&self, tag: &Tag) {
        let mut d = self.lock();
        let before = d.counts.len();
        d.counts.retain(|(t, _), _| t != tag);
        d.eviction.evicted += (before - d.counts.len()) as u64;
    }

    /// What [`QuotaStore::eviction`] answers from now on.
    pub fn set_eviction(&self, policy: &str, maxmemory: u64) {
        let mut d = self.lock();
        d.eviction.policy = Some(policy.to_string());
        d.eviction.maxmemory = maxmemory;
    }

    /// Sets the counts of `tag` at `at` as another host's grants would
    /// have (for a key near or at its limit).
    pub fn set_counts(
        &self,
        tag: &Tag,
        at: Instant,
        minute: u64,
        day: u64,
    ) -> Result<(), StoreError> {
        let (m, dw) = windows(at)?;
        let mut d = self.lock();
        let now = d.now();
        for (w, n) in [(Window::Minute(m), minute), (Window::Day(dw), day)] {
            let expires_ms = expiry(w, now);
            d.counts.insert((tag.clone(), w), Count { n, expires_ms });
        }
        Ok(())
    }

    /// The live members of `tag`'s in-flight set, whatever the fault.
    pub fn in_flight_peek(&self, tag: &Tag) -> u32 {
        let d = self.lock();
        let now = d.now();
        d.in_flight
            .get(tag)
            .map_or(0, |s| s.values().filter(|&&e| e > now).count() as u32)
    }

    /// The counts of `tag` at `at` as they stand, whatever the fault.
    pub fn peek(&self, tag: &Tag, at: Instant) -> Result<Counts, StoreError> {
        let (m, day) = windows(at)?;
        Ok(self.lock().counts_of(tag, m, day))
    }

    /// Applies the fault to a call: `Ok(true)` to make it and then fail
    /// it as a late reply, `Ok(false)` to make it, or the error.
    fn fault(&self) -> Result<bool, StoreError> {
        let fault = self.lock().fault.clone();
        let deadline = self.opts.deadline;
        let timeout = StoreError::Timeout {
            after: deadline,
            during: "waiting for the reply",
        };
        match fault {
            None => Ok(false),
            Some(Fault::Down) => Err(StoreError::Down(
                "memory store: down (on command)".to_string(),
            )),
            Some(Fault::Refuse(text)) => Err(StoreError::Refused(text)),
            Some(Fault::Timeout { applied: true }) => Ok(true),
            Some(Fault::Timeout { applied: false }) => Err(timeout),
            Some(Fault::Stall(d)) => {
                std::thread::sleep(d.min(deadline));
                if d >= deadline {
                    Err(timeout)
                } else {
                    Ok(false)
                }
            }
            Some(Fault::Script(text)) => Err(StoreError::Script(text)),
        }
    }

    /// One call through the gate and the fault.
    fn call<R>(
        &self,
        tag: &Tag,
        replayed: impl Fn(&R) -> bool,
        op: impl FnOnce(&mut Data) -> R,
    ) -> Result<R, StoreError> {
        self.gate.call(tag, replayed, || {
            let late = self.fault()?;
            let r = op(&mut self.lock());
            if late {
                return Err(StoreError::Timeout {
                    after: self.opts.deadline,
                    during: "waiting for the reply",
                });
            }
            Ok(r)
        })
    }

    fn apply(
        &self,
        push: bool,
        tag: &Tag,
        id: &OpId,
        minute_units: u32,
        day_units: u32,
        at: Instant,
    ) -> Result<Applied, StoreError> {
        let (m, day) = windows(at)?;
        let kind = if push { b'p' } else { b'r' };
        self.call(
            tag,
            |a: &Applied| a.replayed,
            |d| {
                let now = d.now();
                d.expire(now);
                let record = (tag.clone(), kind, id.clone());
                if d.records.contains_key(&record) {
                    return Applied {
                        minute_units: 0,
                        day_units: 0,
                        replayed: true,
                        counts: d.counts_of(tag, m, day),
                    };
                }
                let mut done = [0u64; 2];
                let mut keep = now + MINUTE_GRACE.as_millis() as u64;
                let windows = [Window::Minute(m), Window::Day(day)];
                for (i, (w, units)) in windows
                    .into_iter()
                    .zip([minute_units, day_units])
                    .enumerate()
                {
                    let units = units as u64;
                    if units == 0 {
                        continue;
                    }
                    keep = keep.max(expiry(w, now));
                    let key = (tag.clone(), w);
                    if push {
                        let c = d.counts.entry(key).or_insert(Count {
                            n: 0,
                            expires_ms: 0,
                        });
                        c.n += units;
                        c.expires_ms = expiry(w, now);
                        done[i] = units;
                    } else if now < window_end(w) {
                        if let Some(c) = d.counts.get_mut(&key) {
                            let back = units.min(c.n);
                            c.n -= back;
                            done[i] = back;
                        }
                    }
                }
                d.records.insert(record, (1, keep));
                Applied {
                    minute_units: done[0],
                    day_units: done[1],
                    replayed: false,
                    counts: d.counts_of(tag, m, day),
                }
            },
        )
    }
}

impl Data {
    fn now(&self) -> u64 {
        self.now_ms.unwrap_or_else(crate::now_ms)
    }

    /// Drops what expired by `now`, as Redis does.
    fn expire(&mut self, now: u64) {
        self.counts.retain(|_, c| c.expires_ms > now);
        self.records.retain(|_, (_, e)| *e > now);
        self.hosts.retain(|_, e| *e > now);
        for set in self.in_flight.values_mut() {
            set.retain(|_, e| *e > now);
        }
        self.in_flight.retain(|_, set| !set.is_empty());
    }

    fn counts_of(&self, tag: &Tag, minute: u64, day: u64) -> Counts {
        let now = self.now();
        let get = |w| {
            self.counts
                .get(&(tag.clone(), w))
                .filter(|c| c.expires_ms > now)
                .map(|c| (c.n, c.expires_ms - now))
        };
        let (m, d) = (get(Window::Minute(minute)), get(Window::Day(day)));
        Counts {
            minute_count: m.map_or(0, |c| c.0),
            day_count: d.map_or(0, |c| c.0),
            minute_ttl_ms: m.map(|c| c.1),
            day_ttl_ms: d.map(|c| c.1),
        }
    }
}

fn window_end(w: Window) -> u64 {
    match w {
        Window::Minute(m) => (m + 1) * MS_PER_MINUTE,
        Window::Day(d) => (d + 1) * MS_PER_DAY,
    }
}

/// The window's end plus its grace, and never sooner than now plus the
/// grace (as the script's `expiry`).
fn expiry(w: Window, now: u64) -> u64 {
    let grace = match w {
        Window::Minute(_) => MINUTE_GRACE,
        Window::Day(_) => DAY_GRACE,
    };
    window_end(w).max(now) + grace.as_millis() as u64
}

impl QuotaStore for MemoryStore {
    fn grant(&self, tag: &Tag, id: &OpId, ask: Ask, at: Instant) -> Result<Grant, StoreError> {
        ask.check()?;
        let (m, day) = windows(at)?;
        self.call(
            tag,
            |g: &Grant| g.replayed,
            |d| {
                let now = d.now();
                d.expire(now);
                let record = (tag.clone(), b'g', id.clone());
                if let Some(&(units, _)) = d.records.get(&record) {
                    return Grant {
                        units: units as u32,
                        replayed: true,
                        counts: d.counts_of(tag, m, day),
                    };
                }
                let c = d.counts_of(tag, m, day);
                let room = (ask.limits.minute as i128 - c.minute_count as i128)
                    .min(ask.limits.day as i128 - c.day_count as i128);
                let share = (room / ask.hosts.max(1) as i128).max(ask.min as i128);
                let mut n = (ask.want as i128).min(share).min(room);
                if n < ask.min as i128 {
                    n = 0;
                }
                if n > 0 {
                    for w in [Window::Minute(m), Window::Day(day)] {
                        let e = d.counts.entry((tag.clone(), w)).or_insert(Count {
                            n: 0,
                            expires_ms: 0,
                        });
                        e.n += n as u64;
                        e.expires_ms = expiry(w, now);
                    }
                }
                let keep = now + GRANT_RECORD_TTL.as_millis() as u64;
                d.records.insert(record, (n as u64, keep));
                Grant {
                    units: n as u32,
                    replayed: false,
                    counts: d.counts_of(tag, m, day),
                }
            },
        )
    }

    fn give_back(
        &self,
        tag: &Tag,
        id: &OpId,
        minute_units: u32,
        day_units: u32,
        at: Instant,
    ) -> Result<Applied, StoreError> {
        self.apply(false, tag, id, minute_units, day_units, at)
    }

    fn push(
        &self,
        tag: &Tag,
        id: &OpId,
        minute_units: u32,
        day_units: u32,
        at: Instant,
    ) -> Result<Applied, StoreError> {
        self.apply(true, tag, id, minute_units, day_units, at)
    }

    fn counts(&self, tag: &Tag, at: Instant) -> Result<Counts, StoreError> {
        let (m, day) = windows(at)?;
        self.call(tag, |_| false, |d| d.counts_of(tag, m, day))
    }

    fn fails_fast(&self, tag: &Tag) -> bool {
        self.gate.fails_fast(tag)
    }

    fn stats(&self) -> StoreStats {
        self.gate.stats(0)
    }

    fn beat(&self, host: &str, every: Duration) -> Result<u32, StoreError> {
        let tag = Tag::new(b"hosts").expect("a valid tag");
        let life = (every * HOST_LIVES).as_millis() as u64;
        self.call(
            &tag,
            |_| false,
            |d| {
                let now = d.now();
                d.expire(now);
                // Entries dated beyond a life and a slack are no host's.
                d.hosts.retain(|_, e| *e <= now + 2 * life);
                d.hosts.insert(host.to_string(), now + life);
                d.hosts.len().max(1) as u32
            },
        )
    }

    fn in_flight_admit(
        &self,
        tag: &Tag,
        member: &str,
        max: u32,
        every: Duration,
    ) -> Result<InFlightAdmit, StoreError> {
        let life = (every * HOST_LIVES).as_millis() as u64;
        self.call(
            tag,
            |a: &InFlightAdmit| a.replayed,
            |d| {
                let now = d.now();
                d.expire(now);
                let set = d.in_flight.entry(tag.clone()).or_default();
                let replayed = set.contains_key(member);
                let admitted = replayed || (set.len() as u64) < max as u64;
                if admitted {
                    set.insert(member.to_string(), now + life);
                }
                let count = set.len() as u32;
                if set.is_empty() {
                    d.in_flight.remove(tag);
                }
                InFlightAdmit {
                    admitted,
                    replayed,
                    count,
                }
            },
        )
    }

    fn in_flight_release(&self, tag: &Tag, member: &str) -> Result<u32, StoreError> {
        self.call(
            tag,
            |_| false,
            |d| {
                let now = d.now();
                d.expire(now);
                let Some(set) = d.in_flight.get_mut(tag) else {
                    return 0;
                };
                set.remove(member);
                let n = set.len() as u32;
                if n == 0 {
                    d.in_flight.remove(tag);
                }
                n
            },
        )
    }

    fn in_flight_renew(
        &self,
        tag: &Tag,
        members: &[String],
        every: Duration,
    ) -> Result<u32, StoreError> {
        let life = (every * HOST_LIVES).as_millis() as u64;
        self.call(
            tag,
            |_| false,
            |d| {
                let now = d.now();
                d.expire(now);
                if members.is_empty() {
                    return d.in_flight.get(tag).map_or(0, |s| s.len() as u32);
                }
                let set = d.in_flight.entry(tag.clone()).or_default();
                for m in members {
                    set.insert(m.clone(), now + life);
                }
                set.len() as u32
            },
        )
    }

    fn in_flight_count(&self, tag: &Tag) -> Result<u32, StoreError> {
        self.call(
            tag,
            |_| false,
            |d| {
                let now = d.now();
                d.in_flight
                    .get(tag)
                    .map_or(0, |s| s.values().filter(|&&e| e > now).count() as u32)
            },
        )
    }

    fn eviction(&self) -> Result<Eviction, StoreError> {
        let tag = Tag::new(b"eviction").expect("a valid tag");
        self.call(&tag, |_| false, |d| d.eviction.clone())
    }
}

impl MemoryStore {
    /// Adds a host entry dated `ahead_ms` beyond the store's now, as a
    /// stray writer (or a host) could.
    pub fn add_host(&self, host: &str, ahead_ms: u64) {
        let mut d = self.lock();
        let now = d.now();
        d.hosts.insert(host.to_string(), now + ahead_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WindowLimits;

    const AT: Instant = Instant {
        day: 20_000,
        minute: 600,
    };
    const NOW: u64 = 20_000 * MS_PER_DAY + 600 * MS_PER_MINUTE + 1_000;

    fn store() -> MemoryStore {
        let s = MemoryStore::default();
        s.set_now(NOW);
        s
    }

    fn ask(want: u32, min: u32, hosts: u32) -> Ask {
        Ask {
            want,
            min,
            limits: WindowLimits {
                minute: 30,
                day: 100,
            },
            hosts,
        }
    }

    #[test]
    fn in_flight_sets_admit_to_the_limit_once_per_member_and_expire() {
        let s = store();
        let t = Tag::new(b"f").unwrap();
        let every = Duration::from_secs(1);
        let a = s.in_flight_admit(&t, "h1:1", 2, every).unwrap();
        assert_eq!((a.admitted, a.replayed, a.count), (true, false, 1));
        // A retried admission counts once.
        let a = s.in_flight_admit(&t, "h1:1", 2, every).unwrap();
        assert_eq!((a.admitted, a.replayed, a.count), (true, true, 1));
        assert!(s.in_flight_admit(&t, "h2:1", 2, every).unwrap().admitted);
        let a = s.in_flight_admit(&t, "h2:2", 2, every).unwrap();
        assert_eq!((a.admitted, a.count), (false, 2));
        // Released twice: once.
        assert_eq!(s.in_flight_release(&t, "h1:1").unwrap(), 1);
        assert_eq!(s.in_flight_release(&t, "h1:1").unwrap(), 1);
        assert!(s.in_flight_admit(&t, "h2:2", 2, every).unwrap().admitted);
        // h2 renews; "h2:1" is not renewed and expires after 3 beats.
        s.set_now(NOW + 2_500);
        assert_eq!(s.in_flight_renew(&t, &["h2:2".into()], every).unwrap(), 2);
        s.set_now(NOW + 3_000);
        assert_eq!(s.in_flight_count(&t).unwrap(), 1);
        // A renewal adds what is missing (pushed after an outage).
        assert_eq!(s.in_flight_renew(&t, &["h3:1".into()], every).unwrap(), 2);
        s.set_now(NOW + 5_499);
        assert_eq!(s.in_flight_count(&t).unwrap(), 2);
        s.set_now(NOW + 6_000);
        assert_eq!(s.in_flight_count(&t).unwrap(), 0);
    }

    #[test]
    fn grants_are_all_or_nothing_and_sized_by_the_hosts_share() {
        let s = store();
        let t = Tag::new(b"k").unwrap();
        let g = s.grant(&t, &OpId::new(), ask(20, 1, 1), AT).unwrap();
        assert_eq!(
            (g.units, g.counts.minute_count, g.counts.day_count),
            (20, 20, 20)
        );
        // 10 left, 2 hosts: at most 5 to this one.
        let g = s.grant(&t, &OpId::new(), ask(20, 1, 2), AT).unwrap();
        assert_eq!(g.units, 5);
        // min above the room: nothing, nothing charged.
        let g = s.grant(&t, &OpId::new(), ask(9, 6, 1), AT).unwrap();
        assert_eq!((g.units, g.counts.minute_count), (0, 25));
        // The same id answers the first grant and charges nothing.
        let id = OpId::new();
        assert_eq!(s.grant(&t, &id, ask(3, 3, 1), AT).unwrap().units, 3);
        let again = s.grant(&t, &id, ask(3, 3, 1), AT).unwrap();
        assert!(again.replayed && again.units == 3 && again.counts.minute_count == 28);
        assert!(s.grant(&t, &id, ask(3, 0, 1), AT).is_err());
        assert_eq!(s.stats().replays, 1);
    }

    #[test]
    fn give_backs_skip_closed_windows_and_never_go_below_zero() {
        let s = store();
        let t = Tag::new(b"k").unwrap();
        s.grant(&t, &OpId::new(), ask(10, 1, 1), AT).unwrap();
        let a = s.give_back(&t, &OpId::new(), 15, 4, AT).unwrap();
        assert_eq!((a.minute_units, a.day_units), (10, 4));
        assert_eq!((a.counts.minute_count, a.counts.day_count), (0, 6));
        // The minute closed: only the day gets units back.
        s.set_now(NOW + MS_PER_MINUTE);
        let a = s.give_back(&t, &OpId::new(), 1, 1, AT).unwrap();
        assert_eq!((a.minute_units, a.day_units), (0, 1));
        // A push never refuses; the same id twice adds once.
        let id = OpId::new();
        s.push(&t, &id, 200, 200, AT).unwrap();
        assert!(s.push(&t, &id, 200, 200, AT).unwrap().replayed);
        assert_eq!(s.peek(&t, AT).unwrap().day_count, 205);
    }

    #[test]
    fn faults_are_errors_of_their_kind_and_open_the_breaker() {
        let s = MemoryStore::new(StoreOptions {
            trip_after: 2,
            cooldown: Duration::from_secs(60),
            ..StoreOptions::default()
        });
        s.set_now(NOW);
        let t = Tag::new(b"k").unwrap();
        s.fail(Fault::Refuse("BUSY Redis is busy running a script".into()));
        let e = s.counts(&t, AT).unwrap_err();
        assert!(matches!(e, StoreError::Refused(_)) && e.is_unavailable());
        s.fail(Fault::Timeout { applied: true });
        let id = OpId::new();
        assert!(matches!(
            s.grant(&t, &id, ask(4, 1, 1), AT),
            Err(StoreError::Timeout { .. })
        ));
        // Tripped after two: calls fail fast, and make no call.
        assert!(s.fails_fast(&t));
        s.heal();
        assert!(matches!(
            s.counts(&t, AT),
            Err(StoreError::CircuitOpen { .. })
        ));
        // The late grant took effect: asked again under its id (once the
        // breaker lets a call through), it answers what it charged.
        assert_eq!(s.peek(&t, AT).unwrap().minute_count, 4);
        let st = s.stats();
        assert_eq!(
            (st.calls, st.failures, st.trips, st.circuit_open),
            (3, 3, 1, 1)
        );
        s.fail(Fault::Script("ERR tollgate: holds no count".into()));
        let fresh = MemoryStore::default();
        fresh.fail(Fault::Script("ERR x".into()));
        let e = fresh.counts(&t, AT).unwrap_err();
        assert!(!e.is_unavailable());
    }

    #[test]
    fn hosts_beyond_the_horizon_are_not_counted() {
        let s = store();
        let life = Duration::from_secs(1);
        assert_eq!(s.beat("a", life).unwrap(), 1);
        assert_eq!(s.beat("b", life).unwrap(), 2);
        s.add_host("stray", 3_600_000);
        assert_eq!(s.beat("a", life).unwrap(), 2);
        // b stops beating: gone after its life.
        s.set_now(NOW + 3_001);
        assert_eq!(s.beat("a", life).unwrap(), 1);
    }

    #[test]
    fn forgetting_and_evicting_lose_counts() {
        let s = store();
        let t = Tag::new(b"k").unwrap();
        s.grant(&t, &OpId::new(), ask(10, 1, 1), AT).unwrap();
        s.evict(&t);
        assert_eq!(s.peek(&t, AT).unwrap().minute_count, 0);
        assert_eq!(s.eviction().unwrap().evicted, 2);
        s.set_counts(&t, AT, 30, 30).unwrap();
        s.forget();
        assert_eq!(s.peek(&t, AT).unwrap(), Counts::default());
    }
}

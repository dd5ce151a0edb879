//! The circuit breakers: after `trip_after` consecutive transport failures
//! the store stops calling Redis for a cool-down and answers at once, then
//! lets one probe through. A failed probe doubles the cool-down (up to a
//! cap): that is the reconnection backoff, so a dead server costs one
//! connection attempt per cool-down, not one per call.
//!
//! One server has one breaker. A Cluster has one per hash slot (every key
//! of a call shares one hash tag, so a call touches one slot): a dead
//! master trips the breakers of its own slots only, and the healthy
//! shards' calls go on. The slot is the redis crate's own
//! (`cluster_routing::Slot::for_key`, CRC16 of the tag modulo 16384, as
//! the Cluster spec says), so it is the slot the client routes the call
//! to. Only slots with failures have an entry: a success removes it, so a
//! healthy Cluster holds none and the worst case (every slot failing) is
//! 16384 entries of 40 bytes, about 1.3 MB of table.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[cfg(feature = "redis")]
use redis::cluster_routing::Slot;
/// Without the Redis client there is no Cluster, and no slot is ever made:
/// the memory store's calls all go through the one breaker.
#[cfg(not(feature = "redis"))]
type Slot = u16;

/// Where the breaker stands, for stats. On a Cluster, the worst of the
/// slots' breakers: `Open` if any slot's is open, else `HalfOpen` if any
/// slot's probe is in flight, else `Closed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go to Redis.
    Closed,
    /// Calls fail fast until the cool-down ends.
    Open,
    /// One probe call is in flight; the others fail fast.
    HalfOpen,
}

/// One breaker's state; its settings are shared (see [`Breakers`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum State {
    Closed { failures: u32 },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { cooldown: Duration },
}

const CLOSED: State = State::Closed { failures: 0 };

/// Which breaker a call goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The one breaker of a single server.
    Whole,
    /// The breaker of one Cluster hash slot.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Slot(Slot),
}

impl Scope {
    /// The slot of the keys `tg:{<tag>}:...`. A tag holds no `}`, so the
    /// hash tag of every such key is the whole tag, and the crate's
    /// `for_key` on the bare tag (no braces in it to cut at) hashes the
    /// same bytes.
    #[cfg(feature = "redis")]
    pub(crate) fn slot_of(tag: &[u8]) -> Scope {
        Scope::Slot(Slot::for_key(tag))
    }
}

#[derive(Clone, Copy, Debug)]
struct Settings {
    trip_after: u32,
    cooldown: Duration,
    max_cooldown: Duration,
}

#[derive(Debug)]
pub(crate) struct Breakers {
    settings: Settings,
    whole: State,
    /// Slots with a failure since their last success; absent = closed.
    slots: HashMap<Slot, State>,
}

/// What `admit` lets a call do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Call,
    /// The one call after a cool-down; its result closes or reopens.
    Probe,
}

impl Breakers {
    pub(crate) fn new(trip_after: u32, cooldown: Duration, max_cooldown: Duration) -> Breakers {
        Breakers {
            settings: Settings {
                trip_after: trip_after.max(1),
                cooldown,
                max_cooldown: max_cooldown.max(cooldown),
            },
            whole: CLOSED,
            slots: HashMap::new(),
        }
    }

    fn get(&self, scope: Scope) -> State {
        match scope {
            Scope::Whole => self.whole,
            Scope::Slot(s) => self.slots.get(&s).copied().unwrap_or(CLOSED),
        }
    }

    /// The state of `scope`, made on first use (a failure is all that
    /// allocates).
    fn get_mut(&mut self, scope: Scope) -> &mut State {
        match scope {
            Scope::Whole => &mut self.whole,
            Scope::Slot(s) => self.slots.entry(s).or_insert(CLOSED),
        }
    }

    /// The worst state of all (see [`BreakerState`]).
    pub(crate) fn state(&self) -> BreakerState {
        std::iter::once(&self.whole)
            .chain(self.slots.values())
            .map(|s| match s {
                State::Closed { .. } => BreakerState::Closed,
                State::Open { .. } => BreakerState::Open,
                State::HalfOpen { .. } => BreakerState::HalfOpen,
            })
            .max_by_key(|s| match s {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            })
            .unwrap_or(BreakerState::Closed)
    }

    /// The state of one scope's breaker.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn state_of(&self, scope: Scope) -> BreakerState {
        match self.get(scope) {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Slots whose breaker is open or probing (0 on a single server).
    pub(crate) fn open_slots(&self) -> usize {
        self.slots
            .values()
            .filter(|s| !matches!(s, State::Closed { .. }))
            .count()
    }

    /// `Err(wait)`: fail fast; `wait` is how long the cool-down has left
    /// (zero while a probe is in flight).
    pub(crate) fn admit(&mut self, scope: Scope, now: Instant) -> Result<Admit, Duration> {
        match self.get(scope) {
            State::Closed { .. } => Ok(Admit::Call),
            State::Open { until, cooldown } => {
                if now >= until {
                    *self.get_mut(scope) = State::HalfOpen { cooldown };
                    Ok(Admit::Probe)
                } else {
                    Err(until - now)
                }
            }
            State::HalfOpen { .. } => Err(Duration::ZERO),
        }
    }

    /// Whether a call now would fail at once, without reaching for Redis
    /// (the cool-down is running, or a probe is in flight): such a call
    /// never waits.
    pub(crate) fn fails_fast(&self, scope: Scope, now: Instant) -> bool {
        match self.get(scope) {
            State::Closed { .. } => false,
            State::Open { until, .. } => now < until,
            State::HalfOpen { .. } => true,
        }
    }

    /// Redis answered (whatever it said).
    pub(crate) fn success(&mut self, scope: Scope) {
        match scope {
            Scope::Whole => self.whole = CLOSED,
            Scope::Slot(s) => {
                if self.slots.remove(&s).is_some() && self.slots.is_empty() {
                    // The outage is over: give its table back.
                    self.slots.shrink_to_fit();
                }
            }
        }
    }

    /// A call that reached for Redis and did not get an answer. True when
    /// this failure opened the breaker (a trip).
    pub(crate) fn failure(&mut self, scope: Scope, now: Instant, admit: Admit) -> bool {
        let set = self.settings;
        let state = self.get_mut(scope);
        match (*state, admit) {
            (State::HalfOpen { cooldown }, Admit::Probe) => {
                let cooldown = (cooldown * 2).min(set.max_cooldown);
                *state = State::Open {
                    until: now + cooldown,
                    cooldown,
                };
                true
            }
            (State::Closed { failures }, _) => {
                let failures = failures + 1;
                if failures >= set.trip_after {
                    *state = State::Open {
                        until: now + set.cooldown,
                        cooldown: set.cooldown,
                    };
                    true
                } else {
                    *state = State::Closed { failures };
                    false
                }
            }
            // A call admitted before the trip that fails afterwards: the
            // breaker is already open (or probing); it changes nothing.
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const W: Scope = Scope::Whole;

    #[test]
    fn trips_after_consecutive_failures_and_probes_after_cooldown() {
        let t0 = Instant::now();
        let mut b = Breakers::new(3, 100 * MS, 400 * MS);
        for _ in 0..2 {
            assert_eq!(b.admit(W, t0), Ok(Admit::Call));
            assert!(!b.failure(W, t0, Admit::Call));
        }
        // A success in between starts the count again.
        b.success(W);
        for _ in 0..2 {
            assert!(!b.failure(W, t0, Admit::Call));
        }
        assert!(b.failure(W, t0, Admit::Call));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(W, t0 + 40 * MS), Err(60 * MS));
        // After the cool-down: one probe, the others still fail fast.
        assert_eq!(b.admit(W, t0 + 100 * MS), Ok(Admit::Probe));
        assert_eq!(b.admit(W, t0 + 100 * MS), Err(Duration::ZERO));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // A failed probe doubles the cool-down, up to the cap.
        let t1 = t0 + 100 * MS;
        assert!(b.failure(W, t1, Admit::Probe));
        assert_eq!(b.admit(W, t1 + 199 * MS), Err(MS));
        assert_eq!(b.admit(W, t1 + 200 * MS), Ok(Admit::Probe));
        let t2 = t1 + 200 * MS;
        assert!(b.failure(W, t2, Admit::Probe));
        assert_eq!(b.admit(W, t2 + 399 * MS), Err(MS));
        assert_eq!(b.admit(W, t2 + 400 * MS), Ok(Admit::Probe));
        let t3 = t2 + 400 * MS;
        assert!(b.failure(W, t3, Admit::Probe));
        assert_eq!(b.admit(W, t3 + 399 * MS), Err(MS), "capped at 400 ms");
        // A successful probe closes it.
        assert_eq!(b.admit(W, t3 + 400 * MS), Ok(Admit::Probe));
        b.success(W);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(W, t3 + 400 * MS), Ok(Admit::Call));
    }

    #[test]
    fn a_late_failure_of_an_earlier_call_changes_nothing() {
        let t0 = Instant::now();
        let mut b = Breakers::new(1, 100 * MS, 100 * MS);
        assert!(b.failure(W, t0, Admit::Call));
        assert!(!b.failure(W, t0, Admit::Call));
        assert_eq!(b.admit(W, t0 + 100 * MS), Ok(Admit::Probe));
        assert!(!b.failure(W, t0 + 100 * MS, Admit::Call));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    #[cfg(feature = "redis")]
    fn each_slot_trips_alone_and_a_closed_slot_holds_nothing() {
        let t0 = Instant::now();
        let mut b = Breakers::new(2, 100 * MS, 400 * MS);
        let (dead, alive) = (Scope::slot_of(b"dead"), Scope::slot_of(b"alive"));
        assert_ne!(dead, alive);
        assert!(!b.failure(dead, t0, Admit::Call));
        assert!(b.failure(dead, t0, Admit::Call));
        assert!(b.fails_fast(dead, t0));
        assert_eq!(b.admit(dead, t0), Err(100 * MS));
        // The other slot and the whole-store breaker are untouched.
        assert!(!b.fails_fast(alive, t0));
        assert_eq!(b.admit(alive, t0), Ok(Admit::Call));
        assert_eq!(b.state_of(alive), BreakerState::Closed);
        assert_eq!(b.state_of(W), BreakerState::Closed);
        // Stats show the worst slot.
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.open_slots(), 1);
        // A success on a closed slot allocates nothing; a probe that
        // succeeds removes the slot's entry.
        b.success(alive);
        assert_eq!(b.slots.len(), 1);
        assert_eq!(b.admit(dead, t0 + 100 * MS), Ok(Admit::Probe));
        b.success(dead);
        assert!(b.slots.is_empty() && b.slots.capacity() == 0);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    #[cfg(feature = "redis")]
    fn the_slot_is_the_one_redis_computes_for_our_keys() {
        // Known CLUSTER KEYSLOT answers (Redis Cluster spec: CRC16/XMODEM
        // of the hash tag modulo 16384): "foo" is 12182, "123456789" 12739.
        for (tag, slot) in [(&b"foo"[..], 12182u16), (b"123456789", 12739)] {
            assert_eq!(Scope::slot_of(tag), Scope::Slot(Slot::new(slot).unwrap()));
        }
        // A tag with a '{' in it: the key's hash tag is still the whole tag.
        for tag in [&b"a:{b"[..], b"{", b"x{"] {
            let mut key = b"tg:{".to_vec();
            key.extend_from_slice(tag);
            key.extend_from_slice(b"}:m:29000000");
            assert_eq!(Scope::slot_of(tag), Scope::Slot(Slot::for_key(&key)));
        }
    }

    #[test]
    fn a_slot_entry_is_small() {
        // The worst case, every slot failing: 16384 entries in 32768
        // buckets of an entry and a control byte each, about 1.3 MB.
        let entry = std::mem::size_of::<(Slot, State)>();
        assert!(entry <= 40, "{entry} bytes");
    }
}

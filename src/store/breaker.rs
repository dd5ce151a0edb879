//! The circuit breaker: after `trip_after` consecutive transport failures
//! the store stops calling Redis for a cool-down and answers at once, then
//! lets one probe through. A failed probe doubles the cool-down (up to a
//! cap): that is the reconnection backoff, so a dead server costs one
//! connection attempt per cool-down, not one per call.

use std::time::{Duration, Instant};

/// Where the breaker stands, for stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go to Redis.
    Closed,
    /// Calls fail fast until the cool-down ends.
    Open,
    /// One probe call is in flight; the others fail fast.
    HalfOpen,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { cooldown: Duration },
}

#[derive(Debug)]
pub(crate) struct Breaker {
    state: State,
    trip_after: u32,
    cooldown: Duration,
    max_cooldown: Duration,
}

/// What `admit` lets a call do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Call,
    /// The one call after a cool-down; its result closes or reopens.
    Probe,
}

impl Breaker {
    pub(crate) fn new(trip_after: u32, cooldown: Duration, max_cooldown: Duration) -> Breaker {
        Breaker {
            state: State::Closed { failures: 0 },
            trip_after: trip_after.max(1),
            cooldown,
            max_cooldown: max_cooldown.max(cooldown),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// `Err(wait)`: fail fast; `wait` is how long the cool-down has left
    /// (zero while a probe is in flight).
    pub(crate) fn admit(&mut self, now: Instant) -> Result<Admit, Duration> {
        match self.state {
            State::Closed { .. } => Ok(Admit::Call),
            State::Open { until, cooldown } => {
                if now >= until {
                    self.state = State::HalfOpen { cooldown };
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
    pub(crate) fn fails_fast(&self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => false,
            State::Open { until, .. } => now < until,
            State::HalfOpen { .. } => true,
        }
    }

    /// Redis answered (whatever it said).
    pub(crate) fn success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// A call that reached for Redis and did not get an answer. True when
    /// this failure opened the breaker (a trip).
    pub(crate) fn failure(&mut self, now: Instant, admit: Admit) -> bool {
        match (self.state, admit) {
            (State::HalfOpen { cooldown }, Admit::Probe) => {
                let cooldown = (cooldown * 2).min(self.max_cooldown);
                self.state = State::Open {
                    until: now + cooldown,
                    cooldown,
                };
                true
            }
            (State::Closed { failures }, _) => {
                let failures = failures + 1;
                if failures >= self.trip_after {
                    self.state = State::Open {
                        until: now + self.cooldown,
                        cooldown: self.cooldown,
                    };
                    true
                } else {
                    self.state = State::Closed { failures };
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

    #[test]
    fn trips_after_consecutive_failures_and_probes_after_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, 100 * MS, 400 * MS);
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Ok(Admit::Call));
            assert!(!b.failure(t0, Admit::Call));
        }
        // A success in between starts the count again.
        b.success();
        for _ in 0..2 {
            assert!(!b.failure(t0, Admit::Call));
        }
        assert!(b.failure(t0, Admit::Call));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(t0 + 40 * MS), Err(60 * MS));
        // After the cool-down: one probe, the others still fail fast.
        assert_eq!(b.admit(t0 + 100 * MS), Ok(Admit::Probe));
        assert_eq!(b.admit(t0 + 100 * MS), Err(Duration::ZERO));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // A failed probe doubles the cool-down, up to the cap.
        let t1 = t0 + 100 * MS;
        assert!(b.failure(t1, Admit::Probe));
        assert_eq!(b.admit(t1 + 199 * MS), Err(MS));
        assert_eq!(b.admit(t1 + 200 * MS), Ok(Admit::Probe));
        let t2 = t1 + 200 * MS;
        assert!(b.failure(t2, Admit::Probe));
        assert_eq!(b.admit(t2 + 399 * MS), Err(MS));
        assert_eq!(b.admit(t2 + 400 * MS), Ok(Admit::Probe));
        let t3 = t2 + 400 * MS;
        assert!(b.failure(t3, Admit::Probe));
        assert_eq!(b.admit(t3 + 399 * MS), Err(MS), "capped at 400 ms");
        // A successful probe closes it.
        assert_eq!(b.admit(t3 + 400 * MS), Ok(Admit::Probe));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(t3 + 400 * MS), Ok(Admit::Call));
    }

    #[test]
    fn a_late_failure_of_an_earlier_call_changes_nothing() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, 100 * MS, 100 * MS);
        assert!(b.failure(t0, Admit::Call));
        assert!(!b.failure(t0, Admit::Call));
        assert_eq!(b.admit(t0 + 100 * MS), Ok(Admit::Probe));
        assert!(!b.failure(t0 + 100 * MS, Admit::Call));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }
}

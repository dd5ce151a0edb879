//! What an operator must hear of a joined limiter, once per change: Redis
//! became unavailable (with Redis's own reason, never the URL's password),
//! answered again, the breaker opened, an outage's backlog was pushed, an
//! eviction policy or evictions that can drop counts.
//!
//! Each event goes two ways. To the `log` crate (target `tollgate::lease`),
//! for Rust services with a logger. And into a small ring that bindings
//! read at their own pace ([`Events::after`]; C `tg_limiter_lease_event`):
//! nginx from a timer of each worker, Python from a thread of its own, so
//! no binding's code is ever called from the lease thread.

use std::collections::VecDeque;
use std::sync::Mutex;

/// How loud an event is. Numbered as the C ABI gives them
/// (`TG_LOG_ERROR`, ...), so bindings map them to their levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Level {
    /// The limiter cannot keep its promise (counts may be lost).
    Error = 1,
    /// Decisions follow the down policy, or something an operator should
    /// fix (an eviction policy that can drop counts).
    Warn = 2,
    /// Back to normal.
    Info = 3,
}

/// One event: its number (from 1, in order), level and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Its number: 1 for the first, each next one more, so a reader sees
    /// what it missed.
    pub seq: u64,
    /// How loudly to log it.
    pub level: Level,
    /// What happened, for the operator (never a password).
    pub text: String,
}

/// Events kept for readers that fell behind; older ones are dropped (the
/// `log` crate got them all).
const KEPT: usize = 64;

#[derive(Default)]
pub(crate) struct Events {
    ring: Mutex<(u64, VecDeque<Event>)>,
}

impl Events {
    pub(crate) fn say(&self, level: Level, text: String) {
        match level {
            Level::Error => log::error!(target: "tollgate::lease", "{text}"),
            Level::Warn => log::warn!(target: "tollgate::lease", "{text}"),
            Level::Info => log::info!(target: "tollgate::lease", "{text}"),
        }
        let mut g = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let seq = g.0;
        if g.1.len() == KEPT {
            g.1.pop_front();
        }
        g.1.push_back(Event { seq, level, text });
    }

    /// The first event kept with a number above `seq` (0: the oldest kept).
    pub(crate) fn after(&self, seq: u64) -> Option<Event> {
        let g = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        g.1.iter().find(|e| e.seq > seq).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_take_events_in_order_and_the_ring_forgets_the_oldest() {
        let ev = Events::default();
        assert_eq!(ev.after(0), None);
        for i in 0..(KEPT as u64 + 10) {
            ev.say(Level::Warn, format!("event {i}"));
        }
        let first = ev.after(0).unwrap();
        assert_eq!(first.seq, 11);
        assert_eq!(first.text, "event 10");
        let next = ev.after(first.seq).unwrap();
        assert_eq!(next.seq, 12);
        assert_eq!(ev.after(KEPT as u64 + 10), None);
    }
}

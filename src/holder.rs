//! Who holds in-flight units (issue 18): a process, known by its pid and
//! its start time, so that a pid the kernel has since given to another
//! process is not taken for the holder; the table's list of holders, whose
//! index each ledger entry carries (`slot::in_flight`); and whether a
//! holder still lives.
//!
//! Liveness is asked of the kernel, never of the holder's memory: `kill(pid,
//! 0)` says whether the pid exists, and `/proc/<pid>/stat` its start time.
//! Processes that share a table must share a pid namespace (the same host
//! or container); one whose start time cannot be read (another user's,
//! under `hidepid`) counts as alive, which keeps its units (the safe
//! direction) until it is seen gone.

use portable_atomic::AtomicU128;
use std::sync::atomic::Ordering::{AcqRel, Acquire};

/// A process as the table knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub pid: u32,
    /// Clock ticks after boot at which it started (`/proc/<pid>/stat`,
    /// field 22).
    pub start: u64,
}

/// What the kernel says of a holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    Alive,
    /// No such process, or its pid now names a younger one.
    Dead,
}

/// The start time in a `/proc/<pid>/stat` line: field 22, counted after
/// the command name, which is in parentheses and may hold anything.
fn start_of(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields from the third (state) on: the 22nd is the 20th of them.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

impl Identity {
    /// This process.
    pub(crate) fn current() -> Option<Identity> {
        Identity::of(std::process::id())
    }

    /// Process `pid` as it is now; `None` if it is gone or cannot be read.
    pub(crate) fn of(pid: u32) -> Option<Identity> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Identity {
            pid,
            start: start_of(&stat)?,
        })
    }

    /// Whether the process this identity names still runs.
    pub(crate) fn liveness(&self) -> Liveness {
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return Liveness::Dead;
        };
        if pid <= 0 {
            return Liveness::Dead;
        }
        // Miri, which runs the limiter's tests, sends no signals: there the
        // start time below tells alone.
        #[cfg(not(miri))]
        {
            // SAFETY: signal 0 sends nothing; it only asks whether `pid` exists.
            let r = unsafe { libc::kill(pid, 0) };
            if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
                return Liveness::Dead;
            }
        }
        match Identity::of(self.pid) {
            Some(now) if now.start != self.start => Liveness::Dead,
            // The same process, or one whose start cannot be read: alive.
            _ => Liveness::Alive,
        }
    }

    pub(crate) fn pack(self) -> u128 {
        // The top bit marks a used entry, so pid 0 at boot tick 0 is not
        // mistaken for a free one.
        1 << 127 | (self.pid as u128) << 64 | self.start as u128
    }

    pub(crate) fn unpack(w: u128) -> Option<Identity> {
        (w >> 127 == 1).then_some(Identity {
            pid: (w >> 64) as u32,
            start: w as u64,
        })
    }
}

/// The table's holders, one word each: a free one is 0.
#[derive(Clone, Copy)]
pub(crate) struct Holders<'a> {
    words: &'a [AtomicU128],
}

impl<'a> Holders<'a> {
    pub(crate) fn new(words: &'a [AtomicU128]) -> Holders<'a> {
        Holders { words }
    }

    /// The index of `me` in the list, registering it in a free entry if it
    /// is not there; `None` if the list is full (of live holders: sweep
    /// the dead first).
    pub(crate) fn register(&self, me: Identity) -> Option<u16> {
        let w = me.pack();
        if let Some(i) = self.words.iter().position(|x| x.load(Acquire) == w) {
            return Some(i as u16);
        }
        self.words.iter().enumerate().find_map(|(i, x)| {
            x.compare_exchange(0, w, AcqRel, Acquire)
                .is_ok()
                .then_some(i as u16)
        })
    }

    /// The holder at `i`, if the entry is used.
    pub(crate) fn get(&self, i: u16) -> Option<Identity> {
        Identity::unpack(self.words.get(i as usize)?.load(Acquire))
    }

    /// The holders the kernel says are dead, with the identity each entry
    /// named when it was read (what `forget` must find there still).
    pub(crate) fn dead(&self) -> Vec<(u16, Identity)> {
        (0..self.words.len() as u16)
            .filter_map(|i| {
                let h = self.get(i)?;
                (h.liveness() == Liveness::Dead).then_some((i, h))
            })
            .collect()
    }

    /// Frees entry `i` if it still names `who`: only once the ledger holds
    /// nothing of it (its entries reclaimed), or a new holder registered
    /// there would be charged the dead one's units.
    pub(crate) fn forget(&self, i: u16, who: Identity) -> bool {
        self.words
            .get(i as usize)
            .is_some_and(|x| x.compare_exchange(who.pack(), 0, AcqRel, Acquire).is_ok())
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_read_past_any_command_name() {
        let line = "4242 (a ) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21";
        assert_eq!(start_of(line), Some(987654));
        assert_eq!(start_of("garbage"), None);
    }

    #[test]
    fn this_process_lives_and_a_reaped_child_does_not() {
        let me = Identity::current().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.liveness(), Liveness::Alive);
        // The same pid with another start time: a reused pid.
        let other = Identity {
            start: me.start + 1,
            ..me
        };
        assert_eq!(other.liveness(), Liveness::Dead);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let id = Identity::of(pid);
        child.wait().unwrap();
        if let Some(id) = id {
            assert_eq!(id.liveness(), Liveness::Dead);
        }
        assert_eq!(
            Identity { pid: 0, start: 0 }.liveness(),
            Liveness::Dead,
            "pid 0 is nobody's"
        );
    }

    #[test]
    fn holders_register_once_and_are_forgotten_only_as_themselves() {
        let words: Vec<AtomicU128> = (0..3).map(|_| AtomicU128::new(0)).collect();
        let h = Holders::new(&words);
        let me = Identity::current().unwrap();
        let gone = Identity {
            pid: me.pid,
            start: me.start + 1,
        };
        assert_eq!(h.register(me), Some(0));
        assert_eq!(h.register(me), Some(0), "once");
        assert_eq!(h.register(gone), Some(1));
        assert_eq!(h.dead(), vec![(1, gone)]);
        assert!(!h.forget(1, me), "not the holder there");
        assert!(h.forget(1, gone));
        assert_eq!(h.get(1), None);
        assert_eq!(h.register(gone), Some(1));
    }
}

//! A process's place among a table's in-flight holders (issue 18, not yet
//! wired into `Limiter::check`): registered once per table and process,
//! again in a fork's child (which is another process), and the sweeps that
//! give back what dead holders held.
//!
//! Registration sweeps first: an nginx worker respawned after a crash, the
//! first time it admits, gives back the units its dead predecessor held.
//! A refusal for in-flight sweeps too, at most once a second per process
//! ([`SWEEP_EVERY`]), so a key that dead holders fill comes back within
//! that bound of its next request.

use std::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed},
};
use std::sync::Once;
use std::time::Duration;

use crate::holder::{Holders, Identity, Liveness};
use crate::region::Region;
use crate::slot::in_flight::{Ledger, Reclaimed};

/// Least time between two sweeps a refusal starts, per process.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Forks this process has gone through (counted in the child): a holder
/// index registered before the last one is the parent's, not ours.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked() {
    FORKS.fetch_add(1, Relaxed);
}

fn watch_forks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Under miri, which runs the limiter's unit tests and cannot fork
        // (nor register a fork handler), there is no child to tell apart.
        #[cfg(not(miri))]
        // SAFETY: `forked` only increments an atomic, which is
        // async-signal-safe as a fork child handler must be.
        unsafe {
            libc::pthread_atfork(None, None, Some(forked))
        };
    });
}

const NONE: u32 = u32::MAX;

/// This process's holder index in one table, once registered.
pub(crate) struct Place {
    idx: AtomicU32,
    /// `FORKS` when `idx` was registered.
    forks: AtomicU64,
    /// Milliseconds (of `crate::now_ms`) of the last sweep a refusal
    /// started.
    last_sweep: AtomicU64,
}

/// Why this process cannot hold units in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlaceError {
    /// `/proc/self/stat` could not be read: no identity to register.
    NoIdentity,
    /// Every holder entry names a live process.
    HoldersFull,
}

impl Default for Place {
    fn default() -> Self {
        Place {
            idx: AtomicU32::new(NONE),
            forks: AtomicU64::new(0),
            last_sweep: AtomicU64::new(0),
        }
    }
}

impl Place {
    /// This process's holder index in `region`, registering it (after a
    /// sweep) the first time, and again after a fork. No syscall once
    /// registered.
    pub(crate) fn get(&self, region: &Region) -> Result<u16, PlaceError> {
        let forks = FORKS.load(Relaxed);
        let idx = self.idx.load(Relaxed);
        if idx != NONE && self.forks.load(Relaxed) == forks {
            return Ok(idx as u16);
        }
        watch_forks();
        let me = Identity::current().ok_or(PlaceError::NoIdentity)?;
        sweep(region);
        let idx = Holders::new(region.holders())
            .register(me)
            .ok_or(PlaceError::HoldersFull)?;
        self.forks.store(forks, Relaxed);
        self.idx.store(idx as u32, Relaxed);
        Ok(idx)
    }

    /// A sweep for a refused admission, unless this process swept less
    /// than [`SWEEP_EVERY`] ago; what it gave back.
    pub(crate) fn sweep_after_refusal(&self, region: &Region, now_ms: u64) -> Reclaimed {
        let last = self.last_sweep.load(Relaxed);
        if now_ms.saturating_sub(last) < SWEEP_EVERY.as_millis() as u64
            || self
                .last_sweep
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_err()
        {
            return Reclaimed::default();
        }
        sweep(region)
    }
}

/// Gives back every admission of every holder the kernel says is dead,
/// then forgets those holders (only then: a holder entry reused while the
/// ledger still names it would charge the dead one's units to a live
/// process).
///
/// One sweep at a time per table: two sweeps racing would let one forget
/// a dead holder, a new process register in its entry and admit, and the
/// other then reclaim that live process's admissions by the entry's index
/// (seen by the kill test). A sweep that finds another running leaves the
/// dead to it; a sweeper that died holding the turn loses it to the next.
pub(crate) fn sweep(region: &Region) -> Reclaimed {
    let Some(me) = Identity::current() else {
        return Reclaimed::default();
    };
    let turn = &region.in_flight_counters().sweeper;
    if !take_turn(turn, me.pack()) {
        return Reclaimed::default();
    }
    // Handed back however the sweep ends (an unwinding panic too).
    struct Turn<'a>(&'a portable_atomic::AtomicU128, u128);
    impl Drop for Turn<'_> {
        fn drop(&mut self) {
            let _ = self.0.compare_exchange(self.1, 0, AcqRel, Acquire);
        }
    }
    let _held = Turn(turn, me.pack());
    sweep_now(region)
}

/// Takes the sweeping turn for `me`: free, ours already, or held by a
/// process the kernel says is dead.
fn take_turn(turn: &portable_atomic::AtomicU128, me: u128) -> bool {
    loop {
        let cur = turn.load(Acquire);
        if cur == me {
            return true;
        }
        let free = cur == 0 || Identity::unpack(cur).is_none_or(|h| h.liveness() == Liveness::Dead);
        if !free {
            return false;
        }
        if turn.compare_exchange(cur, me, AcqRel, Acquire).is_ok() {
            return true;
        }
    }
}

/// [`sweep`]'s work, with the turn held.
fn sweep_now(region: &Region) -> Reclaimed {
    let holders = Holders::new(region.holders());
    let dead = holders.dead();
    if dead.is_empty() {
        return Reclaimed::default();
    }
    let ledger = Ledger::new(region.ledger());
    let out = ledger.reclaim(
        |slot| region.in_flight(slot as usize),
        |h| dead.iter().any(|&(i, _)| i == h),
    );
    for (i, who) in dead {
        holders.forget(i, who);
    }
    region
        .in_flight_counters()
        .reclaimed
        .fetch_add(out.units as u64, Relaxed);
    out
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use crate::region::{size_for, HeapMem};
    use std::sync::atomic::Ordering::Release;

    fn region(slots: u32) -> (HeapMem, Region) {
        let m = HeapMem::new(size_for(slots).unwrap()).unwrap();
        // SAFETY: fresh exclusive allocation of the right size.
        let r = unsafe { Region::format(m.as_ptr(), m.len(), 1, true) }.unwrap();
        (m, r)
    }

    #[test]
    fn a_process_registers_once_and_sweeps_the_dead_first() {
        let (_m, r) = region(8);
        // A holder that is gone (this pid, another start time) holds two
        // units of slot 3.
        let me = Identity::current().unwrap();
        let gone = Identity {
            start: me.start + 1,
            ..me
        };
        let g = Holders::new(r.holders()).register(gone).unwrap();
        let l = Ledger::new(r.ledger());
        for _ in 0..2 {
            l.acquire(r.in_flight(3), 3, 1, 2, g).unwrap();
        }
        assert!(l.acquire(r.in_flight(3), 3, 1, 2, g).is_err());
        let p = Place::default();
        let mine = p.get(&r).unwrap();
        assert_eq!(p.get(&r), Ok(mine), "once");
        // Registering swept the dead holder: its units and its entry.
        let (_, n) = l.acquire(r.in_flight(3), 3, 1, 2, mine).unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            Holders::new(r.holders()).get(g).filter(|h| *h == gone),
            None
        );
    }

    #[test]
    fn a_refusal_sweeps_at_most_once_a_second() {
        let (_m, r) = region(8);
        let p = Place::default();
        let me = p.get(&r).unwrap();
        let gone = Identity {
            start: Identity::current().unwrap().start + 1,
            pid: std::process::id(),
        };
        let g = Holders::new(r.holders()).register(gone).unwrap();
        let l = Ledger::new(r.ledger());
        l.acquire(r.in_flight(0), 0, 1, 1, g).unwrap();
        assert_eq!(p.sweep_after_refusal(&r, 10_000).units, 1);
        let g = Holders::new(r.holders()).register(gone).unwrap();
        l.acquire(r.in_flight(0), 0, 1, 1, g).unwrap();
        assert_eq!(
            p.sweep_after_refusal(&r, 10_500).units,
            0,
            "within a second"
        );
        assert_eq!(p.sweep_after_refusal(&r, 11_000).units, 1);
        assert!(l.acquire(r.in_flight(0), 0, 1, 1, me).is_ok());
    }

    #[test]
    fn one_sweep_at_a_time_and_a_dead_sweepers_turn_is_taken() {
        let (_m, r) = region(8);
        let me = Identity::current().unwrap();
        let gone = Identity {
            start: me.start + 1,
            ..me
        };
        let g = Holders::new(r.holders()).register(gone).unwrap();
        Ledger::new(r.ledger())
            .acquire(r.in_flight(2), 2, 1, 4, g)
            .unwrap();
        // Another live process sweeping (pid 1, as it is now): this sweep
        // leaves the dead to it.
        let turn = &r.in_flight_counters().sweeper;
        let other = Identity::of(1).expect("pid 1 runs");
        turn.store(other.pack(), Release);
        assert_eq!(sweep(&r).units, 0);
        assert_eq!(turn.load(Acquire), other.pack(), "its turn kept");
        // That sweeper died mid-sweep: its turn is taken, the dead swept,
        // and the turn handed back.
        turn.store(gone.pack(), Release);
        assert_eq!(sweep(&r).units, 1);
        assert_eq!(turn.load(Acquire), 0);
    }

    #[test]
    fn a_forked_child_registers_as_itself() {
        let (_m, r) = region(8);
        let p = Place::default();
        let parent = p.get(&r).unwrap();
        // SAFETY: the child only reads memory, registers, and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let child = p.get(&r);
            let code = match child {
                Ok(c) if c != parent => 0,
                _ => 1,
            };
            // SAFETY: ends the child without running the test harness's
            // atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(p.get(&r), Ok(parent), "the parent keeps its own");
    }
}

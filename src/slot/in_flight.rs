//! In-flight units: how many of a key's requests run now, counted so that
//! the units of a holder that dies (kill -9, an OOM kill, a segfault) come
//! back without anyone trusting what its memory held.
//!
//! Two kinds of words, both in shared memory:
//! - the key's in-flight word ([`Word`]): the binding's generation, the
//!   count, and the ledger entries of the last raise and the last lowering;
//! - one ledger entry per admission ([`Entry`]): the holder (an index among
//!   the table's holders), the slot and generation, a sequence number that
//!   makes each use of the entry unique, and a state: `FREE`, `PENDING`
//!   (claimed; the count perhaps raised), `HELD`, `RELEASING` (the count
//!   perhaps lowered).
//!
//! An admission claims a free entry (`PENDING`), raises the count with one
//! CAS that also names the entry as the word's last raise, then marks it
//! `HELD`. A release marks it `RELEASING`, lowers the count with one CAS
//! that names it as the last lowering, then frees it. Whoever changes the
//! word next first finishes the marks of the two entries it names
//! (`PENDING` to `HELD`, `RELEASING` to `FREE`). So an entry still
//! `PENDING` whose count was raised is the word's last raise, and one
//! still `RELEASING` whose count was lowered is its last lowering: for an
//! entry of a dead holder, a reclaimer can tell whether its step happened,
//! and finishes it or undoes it, once.
//!
//! No lock and no syscall: an admission is two CASes on the entry and one
//! on the word, as is a release. Who is dead is the caller's to say
//! (`holder`); this module only keeps the counts right whatever the moment
//! a holder stopped.

use portable_atomic::AtomicU128;
use std::sync::atomic::Ordering::{AcqRel, Acquire};

use super::{replace, Then};

const FREE: u8 = 0;
const PENDING: u8 = 1;
const HELD: u8 = 2;
const RELEASING: u8 = 3;

/// Most ledger entries (entry indexes are 24 bits).
pub(crate) const ENTRIES_MAX: usize = 1 << 24;
/// Most holders (holder indexes are 14 bits).
pub(crate) const HOLDERS_MAX: u16 = 1 << 14;
const SEQ_MASK: u32 = (1 << 24) - 1;

/// One use of one ledger entry: its index and its sequence number (never
/// 0, so a ref of 0 names nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct EntryRef {
    pub idx: u32,
    pub seq: u32,
}

impl EntryRef {
    fn pack(self) -> u64 {
        (self.idx as u64 & 0xff_ffff) | (self.seq as u64 & 0xff_ffff) << 24
    }

    fn unpack(v: u64) -> Option<EntryRef> {
        let r = EntryRef {
            idx: (v & 0xff_ffff) as u32,
            seq: (v >> 24 & 0xff_ffff) as u32,
        };
        (r.seq != 0).then_some(r)
    }
}

/// A ledger entry as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub state: u8,
    pub holder: u16,
    pub seq: u32,
    pub gen: u16,
    pub slot: u32,
}

impl Entry {
    fn pack(self) -> u128 {
        self.state as u128 & 3
            | (self.holder as u128 & 0x3fff) << 2
            | (self.seq as u128 & 0xff_ffff) << 16
            | (self.gen as u128) << 40
            | (self.slot as u128) << 56
    }

    fn unpack(w: u128) -> Entry {
        Entry {
            state: (w & 3) as u8,
            holder: (w >> 2 & 0x3fff) as u16,
            seq: (w >> 16 & 0xff_ffff) as u32,
            gen: (w >> 40) as u16,
            slot: (w >> 56) as u32,
        }
    }
}

/// A key's in-flight word as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Word {
    pub gen: u16,
    pub count: u16,
    /// The entry of the last raise (packed [`EntryRef`], 0: none).
    raised: u64,
    /// The entry of the last lowering.
    lowered: u64,
}

impl Word {
    fn pack(self) -> u128 {
        self.gen as u128
            | (self.count as u128) << 16
            | (self.raised as u128 & 0xffff_ffff_ffff) << 32
            | (self.lowered as u128 & 0xffff_ffff_ffff) << 80
    }

    pub(crate) fn unpack(w: u128) -> Word {
        Word {
            gen: w as u16,
            count: (w >> 16) as u16,
            raised: (w >> 32) as u64 & 0xffff_ffff_ffff,
            lowered: (w >> 80) as u64 & 0xffff_ffff_ffff,
        }
    }
}

/// The table's ledger of admissions in flight.
#[derive(Clone, Copy)]
pub(crate) struct Ledger<'a> {
    entries: &'a [AtomicU128],
}

/// Why an admission was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The key has `count` in flight already, its limit.
    Full { count: u16 },
    /// Every ledger entry is in use: the table holds as many admissions in
    /// flight as it was sized for.
    LedgerFull,
}

/// What a sweep gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reclaimed {
    /// Entries of dead holders freed.
    pub entries: u32,
    /// Of them, units that were counted and are lowered now.
    pub units: u32,
}

fn load(a: &AtomicU128) -> u128 {
    a.load(Acquire)
}

impl<'a> Ledger<'a> {
    /// The ledger over `entries`; past [`ENTRIES_MAX`] (a table of more
    /// than 16 M slots) the rest are not used, as a ref cannot name them.
    pub(crate) fn new(entries: &'a [AtomicU128]) -> Ledger<'a> {
        Ledger {
            entries: &entries[..entries.len().min(ENTRIES_MAX)],
        }
    }

    fn entry(&self, idx: u32) -> &AtomicU128 {
        &self.entries[idx as usize]
    }

    /// Moves entry `r` from `from` to `to` if it is still that use of it in
    /// state `from`; whether it did.
    fn mark(&self, r: EntryRef, from: u8, to: u8) -> bool {
        let cell = self.entry(r.idx);
        let w = load(cell);
        let e = Entry::unpack(w);
        if e.state != from || e.seq != r.seq {
            return false;
        }
        let next = Entry { state: to, ..e };
        cell.compare_exchange(w, next.pack(), AcqRel, Acquire)
            .is_ok()
    }

    /// Finishes the marks of the entries `w` names (module docs): the
    /// step every change of the word takes first.
    fn help(&self, w: Word) {
        if let Some(r) = EntryRef::unpack(w.raised) {
            self.mark(r, PENDING, HELD);
        }
        if let Some(r) = EntryRef::unpack(w.lowered) {
            self.mark(r, RELEASING, FREE);
        }
    }

    /// Claims a free entry for `holder`'s admission on (`slot`, `gen`),
    /// searching from `hint` (a holder's own start spreads the claims).
    fn claim(&self, holder: u16, slot: u32, gen: u16, hint: usize) -> Option<EntryRef> {
        let n = self.entries.len();
        for k in 0..n {
            let idx = (hint + k) % n;
            let cell = &self.entries[idx];
            let w = load(cell);
            let e = Entry::unpack(w);
            if e.state != FREE {
                continue;
            }
            let seq = match (e.seq + 1) & SEQ_MASK {
                0 => 1,
                s => s,
            };
            let next = Entry {
                state: PENDING,
                holder,
                seq,
                gen,
                slot,
            };
            if cell
                .compare_exchange(w, next.pack(), AcqRel, Acquire)
                .is_ok()
            {
                return Some(EntryRef {
                    idx: idx as u32,
                    seq,
                });
            }
        }
        None
    }

    /// Admits one unit on the key whose in-flight word is `cell` (slot
    /// `slot`, bound as `gen`) for `holder`, if fewer than `max` are in
    /// flight. A word of another generation is an earlier binding's: the
    /// key starts at 0 (the caller has checked the slot is still its own).
    /// Returns the entry to release and the count with it.
    pub(crate) fn acquire(
        &self,
        cell: &AtomicU128,
        slot: u32,
        gen: u16,
        max: u16,
        holder: u16,
    ) -> Result<(EntryRef, u16), Refused> {
        let hint = (holder as usize).wrapping_mul(0x9E37_79B9) ^ slot as usize;
        let e = self
            .claim(holder, slot, gen, hint)
            .ok_or(Refused::LedgerFull)?;
        let raised = replace(cell, load(cell), |word| {
            let mut w = Word::unpack(word);
            self.help(w);
            if w.gen != gen {
                w = Word {
                    gen,
                    ..Word::default()
                };
            }
            if w.count >= max {
                return Then::Answer(Err(w.count));
            }
            let next = Word {
                count: w.count + 1,
                raised: e.pack(),
                ..w
            };
            Then::Store(next.pack(), Ok(next.count))
        });
        match raised {
            Ok(count) => {
                // Done already if a later change of the word helped.
                self.mark(e, PENDING, HELD);
                Ok((e, count))
            }
            Err(count) => {
                // Never named by the word: nobody else touches it.
                self.mark(e, PENDING, FREE);
                Err(Refused::Full { count })
            }
        }
    }

    /// Releases the admission of entry `r`, lowering its key's count in
    /// the word `cell_of` gives for its slot. `None` if `r` is not held
    /// (released already, or never admitted): a second release changes
    /// nothing. Else the key's count after it (0 if the key's slot has
    /// moved on to another binding meanwhile).
    pub(crate) fn release<'c>(
        &self,
        r: EntryRef,
        cell_of: impl Fn(u32) -> &'c AtomicU128,
    ) -> Option<u16> {
        if !self.mark(r, HELD, RELEASING) {
            return None;
        }
        let e = Entry::unpack(load(self.entry(r.idx)));
        let count = self.lower(r, e, cell_of(e.slot));
        self.mark(r, RELEASING, FREE);
        Some(count)
    }

    /// Lowers the count of entry `r` (state `RELEASING`, as `e`) in `cell`,
    /// naming it as the last lowering.
    fn lower(&self, r: EntryRef, e: Entry, cell: &AtomicU128) -> u16 {
        replace(cell, load(cell), |word| {
            let w = Word::unpack(word);
            self.help(w);
            if w.gen != e.gen {
                return Then::Answer(0);
            }
            let next = Word {
                count: w.count.saturating_sub(1),
                lowered: r.pack(),
                ..w
            };
            Then::Store(next.pack(), next.count)
        })
    }

    /// Gives back every admission held by a holder `dead` says is dead:
    /// each entry's count step finished or undone (module docs), the entry
    /// freed. Any process may sweep, and several at once.
    pub(crate) fn reclaim<'c>(
        &self,
        cell_of: impl Fn(u32) -> &'c AtomicU128,
        dead: impl Fn(u16) -> bool,
    ) -> Reclaimed {
        let mut out = Reclaimed::default();
        for idx in 0..self.entries.len() {
            let e = Entry::unpack(load(&self.entries[idx]));
            if e.state == FREE || !dead(e.holder) {
                continue;
            }
            let r = EntryRef {
                idx: idx as u32,
                seq: e.seq,
            };
            if let Some(lowered) = self.reclaim_entry(r, &cell_of) {
                out.entries += 1;
                out.units += lowered as u32;
            }
        }
        out
    }

    /// Reclaims one use of an entry of a dead holder; `None` if it was no
    /// longer that use (freed or taken meanwhile), else whether a counted
    /// unit was lowered.
    fn reclaim_entry<'c>(
        &self,
        r: EntryRef,
        cell_of: &impl Fn(u32) -> &'c AtomicU128,
    ) -> Option<bool> {
        loop {
            let cell = self.entry(r.idx);
            let w0 = load(cell);
            let e = Entry::unpack(w0);
            if e.seq != r.seq || e.state == FREE {
                return None;
            }
            let word_cell = cell_of(e.slot);
            match e.state {
                PENDING => {
                    let w = Word::unpack(load(word_cell));
                    if w.gen == e.gen && EntryRef::unpack(w.raised) == Some(r) {
                        // Raised: finish it, then release it as held.
                        self.mark(r, PENDING, HELD);
                        continue;
                    }
                    // Not raised, and only its (dead) owner would raise it:
                    // freed, if it is still this very use.
                    let free = Entry { state: FREE, ..e };
                    if cell
                        .compare_exchange(w0, free.pack(), AcqRel, Acquire)
                        .is_ok()
                    {
                        return Some(false);
                    }
                }
                HELD => {
                    self.mark(r, HELD, RELEASING);
                }
                _ => {
                    // RELEASING: lowered already if the word names it;
                    // else lowered now, with one CAS on the very word read
                    // (the entry re-read after it: still this use, so no
                    // change of the word since freed it).
                    let word = load(word_cell);
                    let w = Word::unpack(word);
                    if w.gen != e.gen || EntryRef::unpack(w.lowered) == Some(r) {
                        self.mark(r, RELEASING, FREE);
                        return Some(false);
                    }
                    self.help(w);
                    if load(cell) != w0 {
                        continue;
                    }
                    let next = Word {
                        count: w.count.saturating_sub(1),
                        lowered: r.pack(),
                        ..w
                    };
                    if word_cell
                        .compare_exchange(word, next.pack(), AcqRel, Acquire)
                        .is_ok()
                    {
                        self.mark(r, RELEASING, FREE);
                        return Some(true);
                    }
                }
            }
        }
    }

    /// Whether `r` is admitted and not released (nor being released).
    #[cfg_attr(not(feature = "leases"), allow(dead_code))]
    pub(crate) fn holds(&self, r: EntryRef) -> bool {
        let e = self.read(r.idx);
        e.state == HELD && e.seq == r.seq
    }

    /// The entry at `idx` as stored (for operator views: who holds what).
    pub(crate) fn read(&self, idx: u32) -> Entry {
        Entry::unpack(load(self.entry(idx)))
    }

    /// Every entry in use (admitted, or between the steps of an admission
    /// or a release), as stored at the moment each was read.
    pub(crate) fn in_use(&self) -> impl Iterator<Item = Entry> + '_ {
        (0..self.entries.len() as u32)
            .map(|i| self.read(i))
            .filter(|e| e.state != FREE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    fn cells(n: usize) -> Vec<AtomicU128> {
        (0..n).map(|_| AtomicU128::new(0)).collect()
    }

    fn count(cell: &AtomicU128) -> u16 {
        Word::unpack(load(cell)).count
    }

    fn all_free(l: &Ledger<'_>, n: usize) -> bool {
        (0..n as u32).all(|i| l.read(i).state == FREE)
    }

    #[test]
    fn words_and_entries_round_trip() {
        let e = Entry {
            state: RELEASING,
            holder: HOLDERS_MAX - 1,
            seq: SEQ_MASK,
            gen: u16::MAX,
            slot: u32::MAX,
        };
        assert_eq!(Entry::unpack(e.pack()), e);
        let r = EntryRef {
            idx: (ENTRIES_MAX - 1) as u32,
            seq: SEQ_MASK,
        };
        assert_eq!(EntryRef::unpack(r.pack()), Some(r));
        assert_eq!(EntryRef::unpack(0), None);
        let w = Word {
            gen: 7,
            count: u16::MAX,
            raised: r.pack(),
            lowered: r.pack(),
        };
        assert_eq!(Word::unpack(w.pack()), w);
    }

    #[test]
    fn admits_up_to_the_limit_and_releases_once() {
        let (entries, words) = (cells(8), cells(1));
        let l = Ledger::new(&entries);
        let w = &words[0];
        let a = l.acquire(w, 0, 1, 2, 3).unwrap();
        let b = l.acquire(w, 0, 1, 2, 3).unwrap();
        assert_eq!((a.1, b.1), (1, 2));
        assert_eq!(l.acquire(w, 0, 1, 2, 3), Err(Refused::Full { count: 2 }));
        assert_eq!(l.release(a.0, |_| w), Some(1));
        assert_eq!(l.release(a.0, |_| w), None, "a second release is nothing");
        assert_eq!(l.acquire(w, 0, 1, 2, 3).unwrap().1, 2);
        assert_eq!(count(w), 2);
        assert_eq!(
            (0..8).filter(|&i| l.read(i).state == HELD).count(),
            2,
            "the refused admission took no entry"
        );
    }

    #[test]
    fn a_full_ledger_refuses_and_a_new_binding_starts_at_zero() {
        let (entries, words) = (cells(2), cells(1));
        let l = Ledger::new(&entries);
        let w = &words[0];
        let a = l.acquire(w, 0, 1, 9, 0).unwrap();
        l.acquire(w, 0, 1, 9, 0).unwrap();
        assert_eq!(l.acquire(w, 0, 1, 9, 0), Err(Refused::LedgerFull));
        // The slot rebound as generation 2: its key starts from nothing,
        // and a release of the old binding leaves it alone.
        l.release(a.0, |_| w).unwrap();
        let c = l.acquire(w, 0, 2, 9, 0).unwrap();
        assert_eq!(c.1, 1);
        assert_eq!(Word::unpack(load(w)).gen, 2);
    }

    /// The steps of an admission and a release, to stop a holder between
    /// any two of them as a kill -9 would.
    #[derive(Clone, Copy, Debug)]
    enum Stop {
        Claimed,
        Raised,
        Held,
        Releasing,
        Lowered,
    }

    /// Holder 1 runs its admission (and release) up to `stop` on a key
    /// holding one unit of holder 2's; with `later`, holder 2 then admits
    /// and releases once more (helping the dead entry's marks); then a sweep
    /// of holder 1. The key must hold exactly holder 2's unit, and every
    /// entry of holder 1 be free.
    fn dies(stop: Stop, later: bool) {
        let (entries, words) = (cells(4), cells(1));
        let l = Ledger::new(&entries);
        let w = &words[0];
        let (slot, gen, max) = (0, 1, 5);
        l.acquire(w, slot, gen, max, 2).unwrap();
        let e = l.claim(1, slot, gen, 3).unwrap();
        let raise = |e: EntryRef| {
            let mut x = Word::unpack(load(w));
            l.help(x);
            x.count += 1;
            x.raised = e.pack();
            w.store(x.pack(), SeqCst);
        };
        match stop {
            Stop::Claimed => {}
            Stop::Raised => raise(e),
            _ => {
                raise(e);
                assert!(l.mark(e, PENDING, HELD));
                if !matches!(stop, Stop::Held) {
                    assert!(l.mark(e, HELD, RELEASING));
                    if matches!(stop, Stop::Lowered) {
                        let x = Entry::unpack(load(l.entry(e.idx)));
                        l.lower(e, x, w);
                    }
                }
            }
        }
        if later {
            let b = l.acquire(w, slot, gen, max, 2).unwrap();
            l.release(b.0, |_| w).unwrap();
        }
        let r = l.reclaim(|_| w, |h| h == 1);
        assert_eq!(count(w), 1, "{stop:?} later={later}: {r:?}");
        assert_eq!(
            (0..4).filter(|&i| l.read(i).state != FREE).count(),
            1,
            "{stop:?} later={later}"
        );
        // A second sweep finds nothing.
        assert_eq!(l.reclaim(|_| w, |h| h == 1), Reclaimed::default());
    }

    #[test]
    fn a_holder_killed_between_any_two_steps_is_reclaimed_exactly() {
        for stop in [
            Stop::Claimed,
            Stop::Raised,
            Stop::Held,
            Stop::Releasing,
            Stop::Lowered,
        ] {
            for later in [false, true] {
                dies(stop, later);
            }
        }
    }

    #[test]
    fn racing_holders_never_exceed_the_limit() {
        let n = if cfg!(miri) { 20 } else { 20_000 };
        let (entries, words) = (cells(16), cells(1));
        let l = Ledger::new(&entries);
        let w = &words[0];
        let running = AtomicUsize::new(0);
        let over = AtomicBool::new(false);
        std::thread::scope(|s| {
            for h in 0..4u16 {
                let (l, running, over) = (&l, &running, &over);
                s.spawn(move || {
                    for _ in 0..n {
                        if let Ok((e, _)) = l.acquire(w, 0, 1, 3, h) {
                            if running.fetch_add(1, SeqCst) >= 3 {
                                over.store(true, SeqCst);
                            }
                            running.fetch_sub(1, SeqCst);
                            assert!(l.release(e, |_| w).is_some());
                        }
                    }
                });
            }
        });
        assert!(!over.load(SeqCst), "more than 3 in flight at once");
        assert_eq!(count(w), 0);
        assert!(all_free(&l, 16));
    }

    #[test]
    fn sweeps_racing_live_holders_reclaim_only_the_dead() {
        let n = if cfg!(miri) { 10 } else { 5_000 };
        let (entries, words) = (cells(32), cells(2));
        let l = Ledger::new(&entries);
        // Holder 9 "dies" holding two units of key 0 and one of key 1.
        for slot in [0u32, 0, 1] {
            l.acquire(&words[slot as usize], slot, 1, 4, 9).unwrap();
        }
        let cell_of = |s: u32| &words[s as usize];
        let reclaimed = std::thread::scope(|s| {
            for h in 0..2u16 {
                let l = &l;
                s.spawn(move || {
                    for k in 0..n {
                        let slot = (k % 2) as u32;
                        if let Ok((e, _)) = l.acquire(cell_of(slot), slot, 1, 4, h) {
                            assert!(l.release(e, cell_of).is_some());
                        }
                    }
                });
            }
            let sweeps: Vec<_> = (0..2)
                .map(|_| s.spawn(|| l.reclaim(cell_of, |h| h == 9)))
                .collect();
            sweeps
                .into_iter()
                .map(|t| t.join().unwrap().units)
                .sum::<u32>()
        });
        assert_eq!(reclaimed, 3, "each dead unit lowered once");
        assert_eq!((count(&words[0]), count(&words[1])), (0, 0));
        assert!(all_free(&l, 32));
    }
}

//! Quota leases (a table formatted for leases, see `lease`): the same slot
//! and state word, but the two counts are the units this host still holds
//! of its minute lease and its day lease, both granted by Redis. A decision
//! spends both with one CAS; a grant adds to both and a give-back takes
//! them with a CAS on the same word, so none of them can race past another.
//! Each is an update function for [`replace`], like the local rule.
//!
//! Core, not behind the `redis` feature: the lease layer is, but these
//! updates are plain slot arithmetic, tested (under miri too) without it.

use portable_atomic::AtomicU128;

use super::{judge, minutes, replace, Clock, Outcome, State, Then};
use crate::policy::Limits;
use crate::region::Region;
use crate::window::Instant;

/// A leased slot's units as one decision sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    /// The windows the leases belong to (never earlier than `now`'s).
    pub at: Instant,
    pub minute_left: u32,
    pub day_left: u32,
}

impl State {
    /// The units held at `now`: a new minute voids the minute lease (its
    /// Redis key expires, nothing to give back), a new day voids both.
    /// Leases dated beyond the skew bound were taken by a wrong clock: they
    /// are void too (that only ever admits less).
    #[inline]
    pub(crate) fn held(self, now: Instant, skew: u32) -> Held {
        let stored = self.at();
        if stored > now && minutes(stored) - minutes(now) > skew as u64 {
            return Held {
                at: now,
                minute_left: 0,
                day_left: 0,
            };
        }
        let at = stored.max(now);
        Held {
            at,
            minute_left: if stored == at { self.minute_count } else { 0 },
            day_left: if self.day == at.day {
                self.day_count
            } else {
                0
            },
        }
    }
}

fn held_state(gen: u16, h: Held) -> u128 {
    State {
        gen,
        minute: h.at.minute as u16,
        day: h.at.day,
        minute_count: h.minute_left,
        day_count: h.day_left,
    }
    .pack()
}

/// Spends `cost` of both leases of slot `i` at `now` (0: looks only).
/// `None`: the slot is no longer generation `gen`. `Some(Ok(held))`: spent,
/// `held` is what is left; `Some(Err(held))`: too few units, nothing spent.
#[inline]
pub(crate) fn spend(
    region: &Region,
    i: usize,
    gen: u16,
    cost: u32,
    clock: Clock,
) -> Option<Result<Held, Held>> {
    let slot = region.slot(i);
    replace(&slot.state, slot.state(), |word| {
        let s = State::unpack(word);
        if s.gen != gen {
            return Then::Answer(None);
        }
        let h = s.held(clock.now, clock.skew);
        let need = cost.max(1);
        if h.minute_left < need || h.day_left < need {
            return Then::Answer(Some(Err(h)));
        }
        if cost == 0 {
            return Then::Answer(Some(Ok(h)));
        }
        let left = Held {
            at: h.at,
            minute_left: h.minute_left - cost,
            day_left: h.day_left - cost,
        };
        Then::Store(held_state(gen, left), Some(Ok(left)))
    })
}

/// Adds a grant of `units` (both windows, dated `at`) to slot `i`, less
/// `cost` that the granting decision spends at once. If the slot moved on
/// to a later minute meanwhile, only the day's units are kept (the minute
/// lease of `at` is void); a later day keeps nothing. `None`: rebound
/// (the caller gives the units back). Returns the units held after.
pub(crate) fn add(
    region: &Region,
    i: usize,
    gen: u16,
    at: Instant,
    units: u32,
    cost: u32,
    skew: u32,
) -> Option<Held> {
    let slot = region.slot(i);
    let extra = units.saturating_sub(cost);
    replace(&slot.state, slot.state(), |word| {
        let s = State::unpack(word);
        if s.gen != gen {
            return Then::Answer(None);
        }
        let h = s.held(at, skew);
        let next = if h.at == at {
            Held {
                at,
                minute_left: h.minute_left.saturating_add(extra),
                day_left: h.day_left.saturating_add(extra),
            }
        } else if h.at.day == at.day {
            Held {
                day_left: h.day_left.saturating_add(extra),
                ..h
            }
        } else {
            h
        };
        // Nothing added, and the word already says so: no store.
        if next == h && word == held_state(gen, h) {
            return Then::Answer(Some(h));
        }
        Then::Store(held_state(gen, next), Some(next))
    })
}

/// Takes units out of slot `i` to give them back: all of both leases, or
/// with `excess_only` the day units beyond the minute's (left over from
/// earlier minutes, which no decision can spend without new minute units).
/// `None`: rebound or nothing to take; else the window and the units taken
/// (minute, day).
pub(crate) fn take(
    region: &Region,
    i: usize,
    gen: u16,
    clock: Clock,
    excess_only: bool,
) -> Option<(Instant, u32, u32)> {
    let slot = region.slot(i);
    replace(&slot.state, slot.state(), |word| {
        let s = State::unpack(word);
        if s.gen != gen {
            return Then::Answer(None);
        }
        let h = s.held(clock.now, clock.skew);
        let (m, d) = if excess_only {
            (0, h.day_left.saturating_sub(h.minute_left))
        } else {
            (h.minute_left, h.day_left)
        };
        if m == 0 && d == 0 {
            return Then::Answer(None);
        }
        let next = Held {
            at: h.at,
            minute_left: h.minute_left - m,
            day_left: h.day_left - d,
        };
        Then::Store(held_state(gen, next), Some((h.at, m, d)))
    })
}

// A side word (a leased slot's `global` and `down` words, see
// `region::Side`) belongs to the binding of the slot's generation it
// carries: a word of another generation was left by a key that held the
// slot before, and reads as nothing counted. So a key's down-mode count
// and the global counts its headers show are its own, whatever key held
// the slot earlier.

/// The side word `word` as generation `gen` sees it: its own, or empty.
fn side_state(word: u128, gen: u16) -> State {
    let s = State::unpack(word);
    if s.gen == gen {
        s
    } else {
        State {
            gen,
            ..State::default()
        }
    }
}

/// Judges `cost` against `limits` on the side word `word_ref` of the key
/// bound as generation `gen` (a side area's down-mode counts), charging it
/// if allowed: the local rule of [`judge`] on a word of its own.
pub(crate) fn charge_word(
    word_ref: &AtomicU128,
    gen: u16,
    limits: Limits,
    cost: u32,
    clock: Clock,
) -> Outcome {
    replace(word_ref, load(word_ref), |word| {
        let (outcome, next) = judge(side_state(word, gen), limits, cost, clock);
        if cost == 0 || !outcome.allowed {
            return Then::Answer(outcome);
        }
        Then::Store(next.pack(), outcome)
    })
}

/// Raises the global counts kept in `word_ref` for the key of generation
/// `gen` to `(at, minute, day)`: a later window replaces them, the same
/// window keeps the larger of each (replies of concurrent exchanges may
/// arrive in any order); another generation's counts are replaced.
pub(crate) fn raise_word(word_ref: &AtomicU128, gen: u16, at: Instant, minute: u32, day: u32) {
    replace(word_ref, load(word_ref), |word| {
        let s = side_state(word, gen);
        let next = if s.at() > at {
            if s.day != at.day {
                return Then::Answer(());
            }
            State {
                day_count: s.day_count.max(day),
                ..s
            }
        } else if s.at() == at {
            State {
                minute_count: s.minute_count.max(minute),
                day_count: s.day_count.max(day),
                ..s
            }
        } else {
            State {
                gen,
                minute: at.minute as u16,
                day: at.day,
                minute_count: minute,
                day_count: if s.day == at.day {
                    s.day_count.max(day)
                } else {
                    day
                },
            }
        };
        if next.pack() == word {
            return Then::Answer(());
        }
        Then::Store(next.pack(), ())
    })
}

/// A side word of the key of generation `gen` as `(minute count, day
/// count)` seen at `at`: the minute count if dated `at`'s minute, the day
/// count if `at`'s day, else 0; another generation's word reads 0.
pub(crate) fn read_word(word_ref: &AtomicU128, gen: u16, at: Instant) -> (u32, u32) {
    let s = side_state(load(word_ref), gen);
    let minute = if s.at() == at { s.minute_count } else { 0 };
    let day = if s.day == at.day { s.day_count } else { 0 };
    (minute, day)
}

fn load(a: &AtomicU128) -> u128 {
    a.load(std::sync::atomic::Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key;
    use crate::region::{size_with, HeapMem};
    use crate::slot::{locate, update};

    const SKEW: u32 = 1;

    /// A leased table of `slots` slots on the heap (keep the memory alive).
    fn leased(slots: u32) -> (HeapMem, Region) {
        let m = HeapMem::new(size_with(slots, true).unwrap()).unwrap();
        // SAFETY: a fresh exclusive allocation of the region's size, which
        // the caller keeps beside the region.
        let r = unsafe { Region::format_as(m.as_ptr(), m.len(), 1, true, true) }.unwrap();
        (m, r)
    }

    fn at(day: u32, minute: u32) -> Instant {
        Instant { day, minute }
    }

    fn clock(now: Instant) -> Clock {
        Clock { now, skew: SKEW }
    }

    fn held(h: Instant, minute_left: u32, day_left: u32) -> Held {
        Held {
            at: h,
            minute_left,
            day_left,
        }
    }

    /// Binds `account`'s key at `now`: its slot and generation.
    fn bind(r: &Region, account: &[u8], now: Instant) -> (usize, u16) {
        let k = key::hash(r.seed(), account, 1);
        locate(r, &k, account, now, true).unwrap().unwrap()
    }

    fn held_now(r: &Region, i: usize, now: Instant) -> Held {
        State::unpack(r.slot(i).state()).held(now, SKEW)
    }

    #[test]
    fn spend_takes_both_leases_or_nothing() {
        let (_m, r) = leased(4);
        let now = at(10, 5);
        let (i, g) = bind(&r, b"acct", now);
        assert_eq!(add(&r, i, g, now, 5, 0, SKEW), Some(held(now, 5, 5)));
        assert_eq!(spend(&r, i, g, 2, clock(now)), Some(Ok(held(now, 3, 3))));
        assert_eq!(spend(&r, i, g, 4, clock(now)), Some(Err(held(now, 3, 3))));
        assert_eq!(spend(&r, i, g, 0, clock(now)), Some(Ok(held(now, 3, 3))));
        // A grant less the cost its decision spends at once.
        assert_eq!(add(&r, i, g, now, 4, 1, SKEW), Some(held(now, 6, 6)));
        assert_eq!(take(&r, i, g, clock(now), true), None, "no excess");
        assert_eq!(take(&r, i, g, clock(now), false), Some((now, 6, 6)));
        assert_eq!(take(&r, i, g, clock(now), false), None);
        assert_eq!(held_now(&r, i, now), held(now, 0, 0));
    }

    #[test]
    fn windows_roll_over() {
        let (_m, r) = leased(4);
        let (t5, t6) = (at(10, 5), at(10, 6));
        let (i, g) = bind(&r, b"acct", t5);
        add(&r, i, g, t5, 5, 0, SKEW).unwrap();
        // A new minute voids the minute lease, the day's stands.
        assert_eq!(spend(&r, i, g, 1, clock(t6)), Some(Err(held(t6, 0, 5))));
        assert_eq!(add(&r, i, g, t6, 3, 0, SKEW), Some(held(t6, 3, 8)));
        assert_eq!(spend(&r, i, g, 1, clock(t6)), Some(Ok(held(t6, 2, 7))));
        // A grant of the earlier minute arriving late: its day units only.
        assert_eq!(add(&r, i, g, t5, 4, 0, SKEW), Some(held(t6, 2, 11)));
        // A clock a minute behind still sees the later window.
        assert_eq!(spend(&r, i, g, 0, clock(t5)), Some(Ok(held(t6, 2, 11))));
        assert_eq!(take(&r, i, g, clock(t6), true), Some((t6, 0, 9)));
        assert_eq!(held_now(&r, i, t6), held(t6, 2, 2));
        // A new day voids both; a grant of the day before keeps nothing.
        let next = at(11, 0);
        assert_eq!(spend(&r, i, g, 1, clock(next)), Some(Err(held(next, 0, 0))));
        assert_eq!(take(&r, i, g, clock(next), false), None);
        add(&r, i, g, next, 3, 0, SKEW).unwrap();
        assert_eq!(
            add(&r, i, g, at(10, 1439), 4, 0, SKEW),
            Some(held(next, 3, 3))
        );
    }

    #[test]
    fn leases_beyond_the_skew_are_void() {
        let (_m, r) = leased(4);
        let now = at(10, 5);
        let (i, g) = bind(&r, b"acct", now);
        let dated = |day, minute| {
            assert!(update(&r, i, g, |s| State {
                minute,
                day,
                minute_count: 7,
                day_count: 7,
                ..s
            }))
        };
        // Within the skew: the later window's units stand.
        dated(10, 6);
        assert_eq!(
            spend(&r, i, g, 1, clock(now)),
            Some(Ok(held(at(10, 6), 6, 6)))
        );
        // Beyond it: taken by a wrong clock, nothing held, nothing to give back.
        dated(20, 5);
        assert_eq!(spend(&r, i, g, 1, clock(now)), Some(Err(held(now, 0, 0))));
        assert_eq!(take(&r, i, g, clock(now), false), None);
        // A grant replaces them, dated now.
        assert_eq!(add(&r, i, g, now, 3, 0, SKEW), Some(held(now, 3, 3)));
        assert_eq!(held_now(&r, i, now), held(now, 3, 3));
    }

    #[test]
    fn a_rebound_slot_is_left_alone() {
        // One slot: the next day's new key rebinds it.
        let (_m, r) = leased(1);
        let (day10, day11) = (at(10, 5), at(11, 5));
        let (i, g) = bind(&r, b"first", day10);
        add(&r, i, g, day10, 5, 0, SKEW).unwrap();
        let (j, g2) = bind(&r, b"second", day11);
        assert_eq!(j, i);
        assert_ne!(g2, g);
        assert_eq!(spend(&r, i, g, 0, clock(day11)), None);
        assert_eq!(spend(&r, i, g, 1, clock(day11)), None);
        assert_eq!(add(&r, i, g, day11, 5, 0, SKEW), None);
        assert_eq!(take(&r, i, g, clock(day11), false), None);
        // None of it reached the new key.
        assert_eq!(
            spend(&r, i, g2, 0, clock(day11)),
            Some(Err(held(day11, 0, 0)))
        );
    }

    #[test]
    fn racing_spends_grants_and_give_backs_conserve_units() {
        let rounds: u64 = if cfg!(miri) { 12 } else { 20_000 };
        let (_m, r) = leased(4);
        let now = at(10, 5);
        let (i, g) = bind(&r, b"acct", now);
        // More day units than minute units, so excess give-backs find some.
        let (start_m, start_d) = (50u64, 80u64);
        assert!(update(&r, i, g, |s| State {
            minute_count: start_m as u32,
            day_count: start_d as u32,
            ..s
        }));
        let c = clock(now);
        let (spent, taken) = std::thread::scope(|t| {
            let spenders: Vec<_> = (0..2)
                .map(|_| {
                    t.spawn(move || {
                        (0..rounds)
                            .filter(|_| matches!(spend(&r, i, g, 1, c), Some(Ok(_))))
                            .count() as u64
                    })
                })
                .collect();
            let adder = t.spawn(move || {
                for _ in 0..rounds {
                    assert!(add(&r, i, g, now, 3, 0, SKEW).is_some());
                }
            });
            let taker = t.spawn(move || {
                let (mut m, mut d) = (0u64, 0u64);
                for k in 0..rounds {
                    if let Some((_, tm, td)) = take(&r, i, g, c, k % 2 == 0) {
                        m += tm as u64;
                        d += td as u64;
                    }
                }
                (m, d)
            });
            adder.join().unwrap();
            let spent: u64 = spenders.into_iter().map(|h| h.join().unwrap()).sum();
            (spent, taker.join().unwrap())
        });
        let added = 3 * rounds;
        let left = held_now(&r, i, now);
        assert_eq!(start_m + added - spent - taken.0, left.minute_left as u64);
        assert_eq!(start_d + added - spent - taken.1, left.day_left as u64);
    }

    #[test]
    fn side_words_of_another_generation_read_as_nothing() {
        let (_m, r) = leased(4);
        let now = at(10, 5);
        let (i, g) = bind(&r, b"acct", now);
        let side = r.side(i);
        let earlier = State {
            gen: g.wrapping_sub(1),
            minute: 5,
            day: 10,
            minute_count: 9,
            day_count: 9,
        }
        .pack();
        let limits = Limits { rpm: 10, rpd: 10 };
        side.down
            .store(earlier, std::sync::atomic::Ordering::Release);
        assert_eq!(read_word(&side.down, g, now), (0, 0));
        let o = charge_word(&side.down, g, limits, 1, clock(now));
        assert!(o.allowed);
        assert_eq!((o.minute_count, o.day_count), (1, 1));
        assert_eq!(read_word(&side.down, g, now), (1, 1));
        // A peek and a refusal store nothing.
        let o = charge_word(&side.down, g, limits, 10, clock(now));
        assert!(!o.allowed);
        assert!(charge_word(&side.down, g, limits, 0, clock(now)).allowed);
        assert_eq!(read_word(&side.down, g, now), (1, 1));

        // Global counts: another generation's are replaced, not kept.
        side.global
            .store(earlier, std::sync::atomic::Ordering::Release);
        raise_word(&side.global, g, now, 2, 3);
        assert_eq!(read_word(&side.global, g, now), (2, 3));
        // The same window keeps the larger of each.
        raise_word(&side.global, g, now, 1, 5);
        assert_eq!(read_word(&side.global, g, now), (2, 5));
        // A later minute replaces the minute's, the day's only grows.
        let later = at(10, 6);
        raise_word(&side.global, g, later, 4, 4);
        assert_eq!(read_word(&side.global, g, later), (4, 5));
        // A reply of an earlier window arriving late: the day's only.
        raise_word(&side.global, g, now, 9, 7);
        assert_eq!(read_word(&side.global, g, later), (4, 7));
        assert_eq!(read_word(&side.global, g.wrapping_add(1), later), (0, 0));
    }
}

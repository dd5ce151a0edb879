//! The decision path: find (or bind) a key's slot and charge both windows
//! with one 128-bit compare-and-swap. No allocation, no lock, no syscall.
//!
//! Each slot holds two atomic words:
//! - `ident`: key id (112 bits: fingerprint, model id, account length) and
//!   the generation (16 bits) of the binding. 0 = never used.
//! - `state`: the generation again, the UTC day and minute-of-day the counts
//!   belong to, and the minute and day counts.
//!
//! `state.gen == ident.gen` means the slot is bound to the key in `ident`;
//! `state.gen == ident.gen + 1` means it is open (released, any key may bind
//! it). Binding is: (1) if bound-but-stale, CAS `state` to the next
//! generation with zero counts (opening it); (2) CAS `ident` to the new key
//! with that generation. Every step is one CAS from a state any process can
//! recognise and continue from, so a process killed anywhere leaves nothing
//! locked: an open slot is simply free.
//!
//! Charging CASes `state` only if its generation is the one read beside the
//! key's ident, so counts can never land on a slot that was rebound meanwhile
//! (a rebind first moves `state` to a new generation).
//!
//! Every read-modify-write of a state word (and of a leased slot's side
//! words) is one CAS loop, [`replace`], applying an update function to the
//! word read: decisions and operator writes here ([`charge`], [`update`]),
//! the leased updates in [`leased`]. Binding's steps and [`keep`] are
//! single CASes that restart the probe or give up instead.
//!
//! Probing is linear from the key's home, at most [`PROBE_MAX`] slots, and
//! stops at a never-used slot: keys are only ever bound at the first free
//! slot of their chain, so none lies beyond one. A new key takes the first
//! free slot it saw (never-used, open, or bound to a key with no counts for
//! the current day); racing first requests of one key all aim at that same
//! slot, the CAS lets one bind it and the others find it bound on retry.

use std::sync::atomic::Ordering::{AcqRel, Acquire};

use portable_atomic::AtomicU128;

use crate::key::KeyHash;
use crate::policy::Limits;
use crate::region::{Region, Slot};
use crate::window::{Instant, MINUTES_PER_DAY};

// The leased updates: units held instead of counts, and the side words.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
mod leased;
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use leased::{add, charge_word, raise_word, read_word, spend, take, Held};
// The token windows beside the request windows.
pub(crate) mod in_flight;
pub(crate) mod tokens;

/// Longest probe chain; a key that finds no free slot within it is refused
/// with TABLE_FULL. At the recommended load (<= 80%) chains are short (a
/// dozen slots on average), but with a million keys a few chains pass 256,
/// which refused 3 keys in a million at 1.25 slots per key; at 1024 none
/// (`cargo bench --bench memory`). Only a key whose chain is that long
/// walks that far: lookups stop at the first never-used slot.
pub const PROBE_MAX: usize = 1024;

/// Unpacked `state` word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct State {
    pub gen: u16,
    /// Minute of the day (0..1440) the minute count belongs to.
    pub minute: u16,
    /// Epoch day the counts belong to; 0 = never counted.
    pub day: u32,
    pub minute_count: u32,
    pub day_count: u32,
}

impl State {
    /// Fields sit on 16- and 32-bit boundaries (gen 0..16, minute 16..32,
    /// day 32..64, minute count 64..96, day count 96..128), so packing and
    /// unpacking are register moves and shifts, not masks across halves.
    /// Bits 27..32 (above the minute's 11) are reserved for the lease state
    /// of a table shared across hosts (docs/multi-host.md) and stored as 0.
    #[inline(always)]
    pub fn pack(self) -> u128 {
        let lo = self.gen as u64 | (self.minute as u64) << 16 | (self.day as u64) << 32;
        let hi = self.minute_count as u64 | (self.day_count as u64) << 32;
        lo as u128 | (hi as u128) << 64
    }

    #[inline(always)]
    pub fn unpack(w: u128) -> State {
        let (lo, hi) = (w as u64, (w >> 64) as u64);
        State {
            gen: lo as u16,
            minute: (lo >> 16) as u16 & 0x7FF,
            day: (lo >> 32) as u32,
            minute_count: hi as u32,
            day_count: (hi >> 32) as u32,
        }
    }

    /// A state word of a layout version 2 region (gen 16, minute 11, day
    /// 24, minute count 32, day count 32, packed without gaps), for
    /// carrying such a region's counts over.
    pub(crate) fn unpack_v2(w: u128) -> State {
        State {
            gen: w as u16,
            minute: ((w >> 16) & 0x7FF) as u16,
            day: ((w >> 27) & 0xFF_FFFF) as u32,
            minute_count: (w >> 51) as u32,
            day_count: (w >> 83) as u32,
        }
    }

    #[inline]
    pub(crate) fn at(self) -> Instant {
        Instant {
            day: self.day,
            minute: self.minute as u32,
        }
    }

    /// Counts as seen at `now`: the window they count in, the minute and
    /// day counts, and whether they were a clock fault.
    ///
    /// Windows never move backwards, so a clock that steps back gives no
    /// quota back, but only within `skew` minutes: counts dated further
    /// ahead than that were made by a wrong clock (a host's or a caller's
    /// `now`), and trusting them would refuse the key until that time comes
    /// round, for years perhaps. They are taken as the current window's
    /// counts instead: at most one window's quota is given back, and the
    /// fault is counted. A window that has passed counts zero.
    #[inline]
    pub fn view(self, now: Instant, skew: u32) -> View {
        let stored = self.at();
        if stored > now && minutes(stored) - minutes(now) > skew as u64 {
            return View {
                at: now,
                minute_count: self.minute_count,
                day_count: self.day_count,
                clock_fault: true,
            };
        }
        let at = stored.max(now);
        let day_count = if self.day == at.day {
            self.day_count
        } else {
            0
        };
        let minute_count = if stored == at { self.minute_count } else { 0 };
        View {
            at,
            minute_count,
            day_count,
            clock_fault: false,
        }
    }

    /// Counts from a day that has passed (or none ever): nothing useful.
    /// Only the passing of a day makes a slot stale, never anything within
    /// one, which is what keeps racing first requests of a key on one slot.
    #[inline]
    pub fn stale(self, now: Instant) -> bool {
        self.day < now.day
    }
}

/// Minutes since the epoch: the distance between two instants.
#[inline]
fn minutes(i: Instant) -> u64 {
    i.day as u64 * MINUTES_PER_DAY as u64 + i.minute as u64
}

/// A slot's counts as one decision sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// The windows the counts belong to (never earlier than `now`'s).
    pub at: Instant,
    pub minute_count: u32,
    pub day_count: u32,
    /// The stored windows lay beyond the skew bound and were re-dated.
    pub clock_fault: bool,
}

/// Which window refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum LimitedBy {
    /// Admitted: no window refused.
    None = 0,
    /// The minute window (RPM) refused.
    Minute = 1,
    /// The day window (RPD) refused; named whenever the day is
    /// exhausted, as waiting for the minute would not help.
    Day = 2,
    /// The token minute window (TPM) refused.
    TokensMinute = 3,
    /// The token day window (TPD) refused; named whenever the token day is
    /// exhausted (and the request day is not).
    TokensDay = 4,
    /// The key had its `max_in_flight` requests running (no window: any
    /// of them ending frees a unit).
    InFlight = 5,
}

impl LimitedBy {
    /// The window's name in logs, JSON and the operator command.
    pub fn name(self) -> &'static str {
        match self {
            LimitedBy::None => "none",
            LimitedBy::Minute => "minute",
            LimitedBy::Day => "day",
            LimitedBy::TokensMinute => "tokens_minute",
            LimitedBy::TokensDay => "tokens_day",
            LimitedBy::InFlight => "in_flight",
        }
    }
}

/// What one decision saw and did, before rendering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    pub limited_by: LimitedBy,
    /// The windows the counts belong to (never earlier than the stored ones).
    pub at: Instant,
    /// Counts after this decision (charged only if allowed and cost > 0).
    pub minute_count: u32,
    pub day_count: u32,
    /// This decision re-dated counts a wrong clock had put in the future.
    pub clock_fault: bool,
}

/// The table had no free slot in the key's probe chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFull;

/// Decides one request of cost `cost` (0 = peek) for `key`, charging both
/// windows together or neither.
#[inline(always)]
pub(crate) fn decide(
    region: &Region,
    key: &KeyHash,
    account: &[u8],
    limits: Limits,
    cost: u32,
    now: Instant,
    skew: u32,
) -> Result<Outcome, TableFull> {
    let clock = Clock { now, skew };
    let home = home(region, key);
    // Fast path, inlined into the caller: most keys sit in their home slot.
    let slot = region.slot(home);
    let ident = slot.ident();
    if ident >> 16 == key.id {
        let state = slot.state();
        if state as u16 == ident as u16 {
            if let Some(o) = charge(region, slot, ident as u16, state, limits, cost, clock) {
                return Ok(o);
            }
        }
    }
    probe(region, key, account, limits, cost, clock)
}

/// [`decide`] at slot `i`, bound to `key` as `gen`, which the caller
/// located already (the in-flight path, to count the request in flight
/// there): no second walk. Rebound since, it decides as [`decide`] does.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn decide_at(
    region: &Region,
    (i, gen): (usize, u16),
    key: &KeyHash,
    account: &[u8],
    limits: Limits,
    cost: u32,
    now: Instant,
    skew: u32,
) -> Result<Outcome, TableFull> {
    let clock = Clock { now, skew };
    let slot = region.slot(i);
    match charge(region, slot, gen, slot.state(), limits, cost, clock) {
        Some(o) => Ok(o),
        None => probe(region, key, account, limits, cost, clock),
    }
}

/// [`decide`] for a key not bound in its home slot: the probe walk, and
/// binding a free slot. Out of line: it is the rarer and the longer path.
#[inline(never)]
fn probe(
    region: &Region,
    key: &KeyHash,
    account: &[u8],
    limits: Limits,
    cost: u32,
    clock: Clock,
) -> Result<Outcome, TableFull> {
    loop {
        let Some((i, gen)) = locate(region, key, account, clock.now, cost > 0)? else {
            // A peek at an absent key: fresh windows, and no slot taken.
            return Ok(judge(State::default(), limits, 0, clock).0);
        };
        let slot = region.slot(i);
        if let Some(o) = charge(region, slot, gen, slot.state(), limits, cost, clock) {
            return Ok(o);
        }
        // Rebound between the walk and the charge: look again.
    }
}

/// What a decision with tokens saw and did: the request windows' outcome
/// (refused when the tokens refused: see `limited_by_tokens`), the token
/// windows', and where the reservation lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Both {
    pub requests: Outcome,
    pub tokens: Outcome,
    /// The slot and generation charged; `None` for a peek at an absent key.
    pub at: Option<(usize, u16)>,
}

/// [`decide`] for a key with token limits: reserves `tokens` under
/// `token_limits` and charges `cost` requests under `limits`, both or
/// neither (see [`tokens`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decide_tokens(
    region: &Region,
    key: &KeyHash,
    account: &[u8],
    limits: Limits,
    cost: u32,
    token_limits: Limits,
    tokens: u32,
    clock: Clock,
) -> Result<Both, TableFull> {
    let store = cost > 0;
    let mut first = true;
    loop {
        let found = if first {
            first = false;
            locate_from_home(region, key, account, clock.now, store)?
        } else {
            locate(region, key, account, clock.now, store)?
        };
        let Some((i, gen)) = found else {
            let requests = judge(State::default(), limits, 0, clock).0;
            let mut t = judge(State::default(), token_limits, tokens, clock).0;
            if t.allowed {
                (t.minute_count, t.day_count) = (0, 0);
            }
            return Ok(Both {
                requests: Outcome {
                    allowed: requests.allowed && t.allowed,
                    ..requests
                },
                tokens: t,
                at: None,
            });
        };
        let Some(t) = tokens::reserve(region, i, gen, token_limits, tokens, store, clock) else {
            continue;
        };
        let slot = region.slot(i);
        let requests = if t.allowed {
            charge(region, slot, gen, slot.state(), limits, cost, clock)
        } else {
            // Refused on tokens: the requests are only looked at.
            charge(region, slot, gen, slot.state(), limits, 0, clock)
        };
        let Some(requests) = requests else {
            if t.allowed && store {
                tokens::unreserve(region, i, gen, t.at, tokens);
            }
            continue;
        };
        if t.allowed && store && !requests.allowed {
            tokens::unreserve(region, i, gen, t.at, tokens);
            let given_back = Outcome {
                minute_count: t.minute_count.saturating_sub(tokens),
                day_count: t.day_count.saturating_sub(tokens),
                ..t
            };
            return Ok(Both {
                requests,
                tokens: given_back,
                at: Some((i, gen)),
            });
        }
        return Ok(Both {
            requests: Outcome {
                allowed: requests.allowed && t.allowed,
                ..requests
            },
            tokens: t,
            at: Some((i, gen)),
        });
    }
}

/// The time a decision is made at, and how far ahead of it stored counts
/// may be dated (minutes) before they are a clock fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub now: Instant,
    pub skew: u32,
}

/// Where a key's probe chain starts: a multiply-shift of the key's home
/// hash onto the slot count.
pub(crate) fn home(region: &Region, key: &KeyHash) -> usize {
    ((key.home as u128 * region.slot_count() as u128) >> 64) as usize
}

/// The slot bound to `key` and its generation, if any: the probe walk of
/// a decision without binding, for operator views (reset, inspect).
pub(crate) fn find(region: &Region, key: &KeyHash) -> Option<(usize, u16)> {
    // Without binding, `now` (which only tells stale slots for reuse) and
    // the account (written only on binding) are not read.
    let never = Instant { day: 0, minute: 0 };
    locate(region, key, &[], never, false).ok().flatten()
}

/// What an update function makes of the word it read: an answer with
/// nothing to store, or a word to store and the answer once it is stored.
enum Then<R> {
    Answer(R),
    Store(u128, R),
}

/// The one CAS loop every read-modify-write of a state or side word runs:
/// `f` decides on `word` (the cell's value as last read); what it asks to
/// store is stored only if the cell still holds that word, else `f` decides
/// again on the word found there. `f` is pure but for its answer, so a
/// retry loses nothing.
#[inline(always)]
fn replace<R>(cell: &AtomicU128, mut word: u128, mut f: impl FnMut(u128) -> Then<R>) -> R {
    loop {
        match f(word) {
            Then::Answer(r) => return r,
            Then::Store(next, r) => match cell.compare_exchange_weak(word, next, AcqRel, Acquire) {
                Ok(_) => return r,
                Err(cur) => word = cur,
            },
        }
    }
}

/// Stores `f(state)` into slot `i` while it stays generation `gen`; `false`
/// if the slot was rebound first (then the key no longer lives there).
pub(crate) fn update(region: &Region, i: usize, gen: u16, f: impl Fn(State) -> State) -> bool {
    let slot = region.slot(i);
    replace(&slot.state, slot.state(), |word| {
        let s = State::unpack(word);
        if s.gen != gen {
            return Then::Answer(false);
        }
        Then::Store(State { gen, ..f(s) }.pack(), true)
    })
}

/// The one CAS: charge both windows of a bound slot, or refuse. `None` if
/// the slot stopped being generation `gen` (rebound): look the key up again.
#[inline(always)]
fn charge(
    region: &Region,
    slot: &Slot,
    gen: u16,
    word: u128,
    limits: Limits,
    cost: u32,
    clock: Clock,
) -> Option<Outcome> {
    // Counts already dated `now`'s minute: the common case, decided on the
    // packed word (bits 16..64 are day and minute, in that order). Any
    // other word goes to the general rule, which also tells a rebound slot.
    let window = (clock.now.day as u64) << 16 | clock.now.minute as u64;
    let step = Step::new(cost, cost);
    let fast = replace(
        &slot.state,
        word,
        // Forced: `charge` is inlined twice, and a closure called from two
        // places is otherwise left out of line.
        #[inline(always)]
        |word| match judge_packed(word, gen, window, limits, step, clock.now) {
            None => Then::Answer(Err(word)),
            Some((outcome, None)) => Then::Answer(Ok(outcome)),
            Some((outcome, Some(next))) => Then::Store(next, Ok(outcome)),
        },
    );
    match fast {
        Ok(outcome) => Some(outcome),
        Err(word) => charge_slow(region, slot, gen, word, limits, cost, clock),
    }
}

/// [`charge`] when the stored counts are not dated `now`'s minute (a new
/// minute or day, a clock fault, a clock that stepped back): the general
/// rule of [`judge`] as the update, out of line so the common case stays
/// small. Its own loop, not a branch of `charge`'s update: sharing one CAS
/// kept the fast outcome in memory across it, 15 more instructions per
/// decision (479 against 464, the vs-governor bench's icount).
#[inline(never)]
fn charge_slow(
    region: &Region,
    slot: &Slot,
    gen: u16,
    word: u128,
    limits: Limits,
    cost: u32,
    clock: Clock,
) -> Option<Outcome> {
    let outcome = replace(&slot.state, word, |word| {
        let s = State::unpack(word);
        if s.gen != gen {
            return Then::Answer(None);
        }
        let (outcome, next) = judge(s, limits, cost, clock);
        // A refusal or a peek stores nothing, except that a refusal stores
        // re-dated counts once, so a clock fault is repaired and counted
        // once, not on every request.
        if cost == 0 || (!outcome.allowed && !outcome.clock_fault) {
            return Then::Answer(Some(Outcome {
                clock_fault: false,
                ..outcome
            }));
        }
        Then::Store(next.pack(), Some(outcome))
    })?;
    // Counted once stored: only the decision whose store re-dated the
    // counts reports the fault.
    if outcome.clock_fault {
        region
            .header()
            .clock_faults
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Some(outcome)
}

/// What one decision asks of a word: `need` units must fit (at least one,
/// so a peek says whether one more would), `add` are charged if they do.
#[derive(Clone, Copy)]
pub(crate) struct Step {
    need: u64,
    add: u32,
    /// `add` in both count fields of a packed word.
    both: u128,
}

impl Step {
    #[inline(always)]
    pub(crate) fn new(need: u32, add: u32) -> Step {
        Step {
            need: need.max(1) as u64,
            add,
            both: (add as u128) << 64 | (add as u128) << 96,
        }
    }
}

/// The common case of a state word (requests) and a token word alike,
/// decided on the packed word: counts of binding `gen` dated `window`
/// (now's day and minute). `None` for any other word, which the general
/// rule ([`judge`]) decides. The outcome, and the word to store when
/// units were charged.
#[inline(always)]
pub(crate) fn judge_packed(
    word: u128,
    gen: u16,
    window: u64,
    limits: Limits,
    step: Step,
    now: Instant,
) -> Option<(Outcome, Option<u128>)> {
    let (lo, hi) = (word as u64, (word >> 64) as u64);
    if lo as u16 != gen || lo >> 16 != window {
        return None;
    }
    let (minute_count, day_count) = (hi as u32, (hi >> 32) as u32);
    let limited_by = if day_count as u64 + step.need > limits.rpd as u64 {
        LimitedBy::Day
    } else if minute_count as u64 + step.need > limits.rpm as u64 {
        LimitedBy::Minute
    } else {
        LimitedBy::None
    };
    let allowed = limited_by == LimitedBy::None;
    let charged = if allowed { step.add } else { 0 };
    let outcome = Outcome {
        allowed,
        limited_by,
        at: now,
        minute_count: minute_count + charged,
        day_count: day_count + charged,
        clock_fault: false,
    };
    // Both counts stay within their u32 limits, so one add charges both
    // fields without a carry between them.
    Some((outcome, (charged != 0).then(|| word + step.both)))
}

/// Pure decision on a state: the outcome and the state to store if allowed.
/// A peek (cost 0) reports whether one more request would pass.
#[inline]
pub fn judge(s: State, limits: Limits, cost: u32, clock: Clock) -> (Outcome, State) {
    let View {
        at,
        minute_count,
        day_count,
        clock_fault,
    } = s.view(clock.now, clock.skew);
    let need = cost.max(1) as u64;
    let day_room = day_count as u64 + need <= limits.rpd as u64;
    let minute_room = minute_count as u64 + need <= limits.rpm as u64;
    let limited_by = if !day_room {
        LimitedBy::Day
    } else if !minute_room {
        LimitedBy::Minute
    } else {
        LimitedBy::None
    };
    let allowed = limited_by == LimitedBy::None;
    let charged = if allowed { cost } else { 0 };
    let next = State {
        gen: s.gen,
        minute: at.minute as u16,
        day: at.day,
        minute_count: minute_count + charged,
        day_count: day_count + charged,
    };
    let outcome = Outcome {
        allowed,
        limited_by,
        at,
        minute_count: next.minute_count,
        day_count: next.day_count,
        clock_fault,
    };
    (outcome, next)
}

/// The slot bound to `key` (binding the first free one of its chain when
/// `bind`): its index and generation. `Ok(None)`: not bound and not asked
/// to bind. The probe walk and the bind shared by decisions, leases and
/// operator views; charging is the caller's.
pub(crate) fn locate(
    region: &Region,
    key: &KeyHash,
    account: &[u8],
    now: Instant,
    bind: bool,
) -> Result<Option<(usize, u16)>, TableFull> {
    let n = region.slot_count() as usize;
    let probes = PROBE_MAX.min(n);
    'retry: loop {
        let mut free: Option<(usize, u128, u128)> = None;
        let mut i = home(region, key);
        for _ in 0..probes {
            let slot = region.slot(i);
            let ident = slot.ident();
            let state = slot.state();
            if ident == 0 {
                // Never used: the key is not further along.
                free.get_or_insert((i, ident, state));
                break;
            }
            let bound = state as u16 == ident as u16;
            if bound && ident >> 16 == key.id {
                return Ok(Some((i, ident as u16)));
            }
            // A stale slot whose key still has requests running stays the
            // key's: its count must meet their releases.
            if free.is_none()
                && (!bound
                    || (State::unpack(state).stale(now) && !running(region, i, ident as u16)))
            {
                free = Some((i, ident, state));
            }
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        if !bind {
            return Ok(None);
        }
        let Some((i, ident, state)) = free else {
            region
                .header()
                .table_full
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(TableFull);
        };
        let slot = region.slot(i);
        let mut gen = state as u16;
        if gen == ident as u16 {
            // Bound to a key with nothing current (or never used): open it,
            // dated now with nothing counted, so that once bound it is the
            // key's for the day even before anything is charged to it (a
            // key of a leased table decided by the down policy, or in
            // exact mode, holds nothing in its state word).
            gen = gen.wrapping_add(1);
            let open = State {
                gen,
                minute: now.minute as u16,
                day: now.day,
                ..State::default()
            }
            .pack();
            if slot
                .state
                .compare_exchange(state, open, AcqRel, Acquire)
                .is_err()
            {
                continue 'retry;
            }
            // A stale slot's counts (or lease units) were of a day gone:
            // nothing is lost.
        }
        let mine = key.id << 16 | gen as u128;
        if slot
            .ident
            .compare_exchange(ident, mine, AcqRel, Acquire)
            .is_err()
        {
            continue 'retry;
        }
        region.write_name(i, account);
        // A slot opened earlier (an operator's reset) may hold an old date.
        keep(region, i, gen, now);
        return Ok(Some((i, gen)));
    }
}

/// [`locate`], with the home slot tried first: most keys sit bound there,
/// and are found without the walk.
#[inline(always)]
pub(crate) fn locate_from_home(
    region: &Region,
    key: &KeyHash,
    account: &[u8],
    now: Instant,
    bind: bool,
) -> Result<Option<(usize, u16)>, TableFull> {
    let i = home(region, key);
    let slot = region.slot(i);
    let ident = slot.ident();
    if ident >> 16 == key.id && slot.state() as u16 == ident as u16 {
        return Ok(Some((i, ident as u16)));
    }
    locate(region, key, account, now, bind)
}

/// Whether the key bound to slot `i` as `gen` has requests in flight.
fn running(region: &Region, i: usize, gen: u16) -> bool {
    region.has_in_flight() && {
        let w = in_flight::Word::unpack(region.in_flight(i).load(Acquire));
        w.gen == gen && w.count > 0
    }
}

/// Dates slot `i`'s state word `now`, with nothing counted, if it holds
/// nothing of `now`'s day, so the key bound to it keeps it for the day:
/// the probe walk takes a slot of a past day for a new key. Counts (or
/// lease units) of a past day are void, so nothing is lost. A slot charged
/// meanwhile, or rebound, is left as it is (one CAS, not retried).
pub(crate) fn keep(region: &Region, i: usize, gen: u16, now: Instant) {
    let slot = region.slot(i);
    let word = slot.state();
    let s = State::unpack(word);
    if s.gen != gen || !s.stale(now) {
        return;
    }
    let dated = State {
        gen,
        minute: now.minute as u16,
        day: now.day,
        minute_count: 0,
        day_count: 0,
    };
    let _ = slot
        .state
        .compare_exchange(word, dated.pack(), AcqRel, Acquire);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(now: Instant) -> Clock {
        Clock { now, skew: 1 }
    }

    #[test]
    fn state_packs_losslessly() {
        let s = State {
            gen: 0xBEEF,
            minute: 1439,
            day: 0xFF_FFFF,
            minute_count: u32::MAX,
            day_count: u32::MAX - 1,
        };
        assert_eq!(State::unpack(s.pack()), s);
        let z = State {
            gen: 1,
            minute: 0,
            day: 20_419,
            minute_count: 0,
            day_count: 7,
        };
        assert_eq!(State::unpack(z.pack()), z);
    }

    #[test]
    fn judge_all_or_nothing() {
        let lim = Limits { rpm: 3, rpd: 5 };
        let now = Instant { day: 10, minute: 5 };
        let s = State {
            gen: 1,
            minute: 5,
            day: 10,
            minute_count: 2,
            day_count: 4,
        };
        // cost 2: minute has room for 1 only, day for 1 only -> day wins.
        let (o, n) = judge(s, lim, 2, c(now));
        assert!(!o.allowed);
        assert_eq!(o.limited_by, LimitedBy::Day);
        assert_eq!(
            (n.minute_count, n.day_count),
            (2, 4),
            "refused charges nothing"
        );
        let (o, _) = judge(s, Limits { rpm: 3, rpd: 10 }, 2, c(now));
        assert_eq!(o.limited_by, LimitedBy::Minute);
        let (o, n) = judge(s, lim, 1, c(now));
        assert!(o.allowed);
        assert_eq!((n.minute_count, n.day_count), (3, 5));
    }

    #[test]
    fn windows_roll_and_never_go_back() {
        let lim = Limits { rpm: 3, rpd: 100 };
        let s = State {
            gen: 1,
            minute: 5,
            day: 10,
            minute_count: 3,
            day_count: 50,
        };
        let (o, _) = judge(s, lim, 1, c(Instant { day: 10, minute: 6 }));
        assert!(o.allowed);
        assert_eq!((o.minute_count, o.day_count), (1, 51));
        let (o, _) = judge(s, lim, 1, c(Instant { day: 11, minute: 5 }));
        assert_eq!((o.minute_count, o.day_count), (1, 1));
        // Clock stepped back a minute: still the stored (later) window.
        let (o, _) = judge(s, lim, 1, c(Instant { day: 10, minute: 4 }));
        assert!(!o.allowed);
        assert_eq!(o.at, Instant { day: 10, minute: 5 });
    }

    #[test]
    fn peek_counts_nothing() {
        let lim = Limits { rpm: 3, rpd: 100 };
        let s = State {
            gen: 1,
            minute: 5,
            day: 10,
            minute_count: 2,
            day_count: 2,
        };
        let (o, n) = judge(s, lim, 0, c(Instant { day: 10, minute: 5 }));
        assert!(o.allowed);
        assert_eq!(n.minute_count, 2);
        let full = State {
            minute_count: 3,
            ..s
        };
        assert!(
            !judge(full, lim, 0, c(Instant { day: 10, minute: 5 }))
                .0
                .allowed
        );
    }

    #[test]
    fn counts_beyond_the_skew_are_a_clock_fault() {
        let lim = Limits { rpm: 30, rpd: 100 };
        let now = Instant { day: 10, minute: 5 };
        let counted = |day, minute| State {
            gen: 1,
            minute,
            day,
            minute_count: 30,
            day_count: 40,
        };
        // A step of one minute (within the skew): the later window stands.
        let (o, _) = judge(counted(10, 6), lim, 1, c(now));
        assert!(!o.allowed && !o.clock_fault);
        assert_eq!(o.at, Instant { day: 10, minute: 6 });
        // An hour ahead: the counts are taken as this minute's.
        let (o, n) = judge(counted(10, 65), lim, 1, c(now));
        assert!(o.clock_fault && !o.allowed);
        assert_eq!(o.at, now);
        assert_eq!(
            (n.minute, n.day, n.minute_count, n.day_count),
            (5, 10, 30, 40)
        );
        // Five years ahead, minute not full: admitted in the current window.
        let years = State {
            minute_count: 1,
            day_count: 1,
            ..counted(10 + 5 * 365, 5)
        };
        let (o, n) = judge(years, lim, 1, c(now));
        assert!(o.allowed && o.clock_fault);
        assert_eq!((n.day, n.minute_count, n.day_count), (10, 2, 2));
        // Skew 0: any future window is a fault.
        let strict = Clock { now, skew: 0 };
        assert!(judge(counted(10, 6), lim, 1, strict).0.clock_fault);
        // The past is never a fault.
        assert!(!judge(counted(9, 1439), lim, 1, c(now)).0.clock_fault);
    }
}

//! A slot's token windows, charged together with its request windows.
//!
//! The token word has the state word's layout ([`State`]): the generation
//! of the binding its counts belong to, the day and minute, and the minute
//! and day counts, here of tokens. Its counts are the key's only while its
//! generation is the slot's: binding never touches the word, so a key that
//! takes a slot over finds a word of an older generation and starts it
//! from zero with its first charge.
//!
//! A decision with tokens is all or nothing across the two words without a
//! lock: it reserves the tokens with one CAS, then charges the requests
//! with another, and gives the tokens back if the requests refuse (or the
//! slot was rebound meanwhile). Between the two a racing decision may see
//! tokens that end up given back and refuse: only ever the safe direction.
//!
//! A reservation is settled later, when the response's usage is known
//! ([`settle`]): the difference between what was used and what was
//! reserved is applied to each window the reservation was charged in while
//! that window is open; an excess over the reservation whose window has
//! closed is charged to the current one (the tokens were used now), and an
//! unspent part whose window has closed is gone with it.

use super::{judge, judge_packed, replace, Clock, Outcome, State, Step, Then};
use crate::policy::Limits;
use crate::region::Region;
use crate::window::Instant;

/// Reserves `tokens` in the token windows of slot `i`, bound as generation
/// `gen`, under `limits` (`rpm` and `rpd` read as tokens per minute and per
/// day); with `store` off, only looks. A key is refused when its reservation
/// does not fit, or when a window is already full (a reservation of 0
/// still needs a token left). `None` if the slot is no longer generation
/// `gen`: the key must be looked up again.
pub(crate) fn reserve(
    region: &Region,
    i: usize,
    gen: u16,
    limits: Limits,
    tokens: u32,
    store: bool,
    clock: Clock,
) -> Option<Outcome> {
    let cell = region.tokens(i);
    // Counts of this binding dated `now`'s minute: decided on the packed
    // word, as `charge` does for requests; anything else takes the
    // general rule.
    let window = (clock.now.day as u64) << 16 | clock.now.minute as u64;
    let step = Step::new(tokens, if store { tokens } else { 0 });
    replace(cell, load(cell), |word| {
        match judge_packed(word, gen, window, limits, step, clock.now) {
            Some((outcome, None)) => return Then::Answer(Some(outcome)),
            Some((outcome, Some(next))) => return Then::Store(next, Some(outcome)),
            None => {}
        }
        let mut s = State::unpack(word);
        if s.gen != gen {
            // Another binding's counts, or none yet: ours start at zero,
            // but only while the slot is still ours (a stale decision must
            // not wipe a newer binding's counts).
            if region.slot(i).state() as u16 != gen {
                return Then::Answer(None);
            }
            s = State {
                gen,
                ..State::default()
            };
        }
        let (mut outcome, next) = judge(s, limits, tokens, clock);
        if !store && outcome.allowed {
            // A peek says whether the reservation would fit, and shows the
            // counts as they are.
            outcome.minute_count -= tokens;
            outcome.day_count -= tokens;
        }
        if !store || !outcome.allowed || tokens == 0 {
            return Then::Answer(Some(outcome));
        }
        Then::Store(State { gen, ..next }.pack(), Some(outcome))
    })
}

/// Gives back `tokens` reserved at `at` (a decision the requests refused,
/// or a response with nothing to charge), in each window still open.
pub(crate) fn unreserve(region: &Region, i: usize, gen: u16, at: Instant, tokens: u32) {
    apply(region, i, gen, at, tokens, 0, None);
}

/// Settles a reservation of `reserved` tokens made at `at` to `used`
/// tokens (module docs). `clock` dates an excess whose window has closed.
/// Returns the token windows after it, or `None` if the key no longer holds
/// the slot (its day has passed: nothing of it is left to settle).
pub(crate) fn settle(
    region: &Region,
    i: usize,
    gen: u16,
    at: Instant,
    reserved: u32,
    used: u32,
    clock: Clock,
) -> Option<State> {
    apply(region, i, gen, at, reserved, used, Some(clock))
}

fn apply(
    region: &Region,
    i: usize,
    gen: u16,
    at: Instant,
    reserved: u32,
    used: u32,
    clock: Option<Clock>,
) -> Option<State> {
    let cell = region.tokens(i);
    replace(cell, load(cell), |word| {
        let mut s = State::unpack(word);
        if s.gen != gen {
            // A reservation of 0 stores nothing, so the word may still be
            // an earlier binding's: while the slot is this key's, its
            // counts start at zero here too (an excess is then charged).
            if region.slot(i).state() as u16 != gen {
                return Then::Answer(None);
            }
            s = State {
                gen,
                ..State::default()
            };
        }
        let next = settled(s, at, reserved, used, clock);
        if next == s {
            return Then::Answer(Some(s));
        }
        Then::Store(next.pack(), Some(next))
    })
}

/// The pure rule of [`settle`] on one word.
fn settled(s: State, at: Instant, reserved: u32, used: u32, clock: Option<Clock>) -> State {
    let minute_open = s.day == at.day && s.minute as u32 == at.minute;
    let day_open = s.day == at.day;
    let (minute_count, day_count) = (s.minute_count, s.day_count);
    let mut next = s;
    if used >= reserved {
        let extra = used - reserved;
        let Some(clock) = clock.filter(|_| extra > 0) else {
            return s;
        };
        // Charged in the windows current now: the reservation's while they
        // are open, else the ones the tokens were used in.
        let v = s.view(clock.now, clock.skew);
        next.minute = v.at.minute as u16;
        next.day = v.at.day;
        next.minute_count = v.minute_count.saturating_add(extra);
        next.day_count = v.day_count.saturating_add(extra);
        return next;
    }
    let back = reserved - used;
    if minute_open {
        next.minute_count = minute_count.saturating_sub(back);
    }
    if day_open {
        next.day_count = day_count.saturating_sub(back);
    }
    next
}

/// The token windows of slot `i` as `clock` sees them, if bound as `gen`.
pub(crate) fn view(region: &Region, i: usize, gen: u16) -> State {
    let s = State::unpack(load(region.tokens(i)));
    if s.gen == gen {
        s
    } else {
        State::default()
    }
}

#[inline(always)]
fn load(cell: &portable_atomic::AtomicU128) -> u128 {
    cell.load(std::sync::atomic::Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: u32, minute: u32) -> Instant {
        Instant { day, minute }
    }

    fn word(day: u32, minute: u32, m: u32, d: u32) -> State {
        State {
            gen: 3,
            minute: minute as u16,
            day,
            minute_count: m,
            day_count: d,
        }
    }

    #[test]
    fn settling_gives_back_while_the_window_is_open() {
        let s = word(10, 5, 700, 900);
        assert_eq!(settled(s, at(10, 5), 500, 200, None), word(10, 5, 400, 600));
        // The minute has passed: only the day gets its part back.
        let s = word(10, 6, 0, 900);
        assert_eq!(settled(s, at(10, 5), 500, 200, None), word(10, 6, 0, 600));
        // The day has passed: nothing comes back.
        let s = word(11, 0, 0, 0);
        assert_eq!(settled(s, at(10, 5), 500, 200, None), s);
    }

    #[test]
    fn an_excess_is_charged_on_top() {
        let clock = Clock {
            now: at(10, 5),
            skew: 1,
        };
        let s = word(10, 5, 700, 900);
        assert_eq!(
            settled(s, at(10, 5), 500, 800, Some(clock)),
            word(10, 5, 1000, 1200)
        );
        // Its minute has closed: charged to the current minute and day.
        let later = Clock {
            now: at(10, 7),
            skew: 1,
        };
        assert_eq!(
            settled(s, at(10, 5), 500, 800, Some(later)),
            word(10, 7, 300, 1200)
        );
        // Saturates rather than wraps.
        let s = word(10, 5, u32::MAX - 1, u32::MAX - 1);
        assert_eq!(
            settled(s, at(10, 5), 0, 10, Some(clock)),
            word(10, 5, u32::MAX, u32::MAX)
        );
    }

    #[test]
    fn an_unspent_reservation_never_goes_below_zero() {
        let s = word(10, 5, 100, 100);
        assert_eq!(settled(s, at(10, 5), 500, 0, None), word(10, 5, 0, 0));
    }
}

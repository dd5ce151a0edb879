//! The refusal ring: the latest refusals, kept in the region so an operator
//! can answer "why was this customer refused at 3 a.m." from any process,
//! after the fact (`tollgate refusals`).
//!
//! Written on the refuse path only; the allow path never touches it. Each
//! writer takes a ticket from the header and fills the entry the ticket
//! names under a sequence lock, with a check word over the fields, so a
//! writer killed (or stalled and overtaken) mid-entry costs that entry and
//! nothing else: readers skip entries that are odd, changed under them, or
//! fail their check. A key refused again within the same second is not
//! recorded again, so one client hammering a limit cannot flush the ring.

use std::sync::atomic::{fence, Ordering};

use crate::key::ACCOUNT_MAX;
use crate::policy::Limits;
use crate::region::{word_at, Region, RingEntry, RING_ENTRIES};
use crate::slot::{LimitedBy, Outcome};

/// One refusal as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// When, epoch milliseconds (the `now` the decision was made at).
    pub at_ms: u64,
    /// The account id.
    pub account: Vec<u8>,
    /// The model's name, if the region still knows its id.
    pub model: Option<String>,
    /// The window that refused.
    pub limited_by: LimitedBy,
    /// Counts when refused (nothing was charged) and the limits in force,
    /// in the unit of the window that refused: requests, or for a refusal
    /// on tokens ([`LimitedBy::TokensMinute`], [`LimitedBy::TokensDay`])
    /// tokens charged and the key's `tpm` and `tpd`.
    pub minute_count: u32,
    /// See `minute_count`.
    pub minute_limit: u32,
    /// See `minute_count`.
    pub day_count: u32,
    /// See `minute_count`.
    pub day_limit: u32,
    /// For a refusal on tokens, the tokens the request asked to reserve
    /// (it did not fit in the window's room); 0 otherwise.
    pub reserved: u32,
    /// For a refusal for in-flight ([`LimitedBy::InFlight`]), the key's
    /// requests running and its `max_in_flight`; 0 otherwise (the minute
    /// and day fields then hold the request windows as they stood).
    pub in_flight: u32,
    /// See `in_flight`.
    pub max_in_flight: u32,
}

/// The ring's spare word for a refusal for in-flight: the key's count
/// (high half) and its limit.
pub(crate) fn in_flight_extra(count: u32, limit: u32) -> u64 {
    (count as u64) << 32 | limit as u64
}

/// Records a refusal. `fingerprint` tells keys apart for the once-a-second
/// rule (the key id's low bits suffice). For a refusal on tokens, `o` and
/// `limits` are the token windows' counts and limits, and `reserved` the
/// tokens asked for (0 for a refusal on requests); for a refusal for
/// in-flight, `extra` is the count and the limit (`in_flight_extra`).
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    region: &Region,
    fingerprint: u32,
    account: &[u8],
    model_id: u16,
    o: &Outcome,
    limits: Limits,
    extra: u64,
    now_ms: u64,
) {
    let h = region.header();
    let mark = (fingerprint as u64) << 32 | (now_ms / 1000) as u32 as u64;
    if h.ring_last.load(Ordering::Relaxed) == mark {
        return;
    }
    write(region, mark, account, model_id, o, limits, extra, now_ms);
}

/// [`record`] past its once-a-second check: the entry's write, out of line
/// so the refuse path of a key refused again and again stays short.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn write(
    region: &Region,
    mark: u64,
    account: &[u8],
    model_id: u16,
    o: &Outcome,
    limits: Limits,
    extra: u64,
    now_ms: u64,
) {
    let h = region.header();
    h.ring_last.store(mark, Ordering::Relaxed);
    let ticket = h.ring_head.fetch_add(1, Ordering::Relaxed);
    let e = region.ring_entry((ticket % RING_ENTRIES as u64) as usize);
    let cur = e.seq.load(Ordering::Relaxed);
    // An odd seq is an earlier ticket's writer that is still at it (or was
    // killed at it): take the entry over only from a writer a whole ring
    // behind, whose entry is lost either way.
    if cur & 1 == 1 && (cur >> 1) + RING_ENTRIES as u64 > ticket {
        return;
    }
    let writing = ticket << 1 | 1;
    if e.seq
        .compare_exchange(cur, writing, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    fence(Ordering::Release);
    let len = account.len().min(ACCOUNT_MAX);
    let fields = Fields {
        at_ms: now_ms,
        what: (model_id as u32) << 16 | (o.limited_by as u32) << 8 | len as u32,
        minute_count: o.minute_count,
        minute_limit: limits.rpm,
        day_count: o.day_count,
        day_limit: limits.rpd,
        account: std::array::from_fn(|k| word_at(&account[..len], k * 8)),
        reserved: extra,
    };
    fields.store(e);
    let _ = e.seq.compare_exchange(
        writing,
        (ticket + 1) << 1,
        Ordering::Release,
        Ordering::Relaxed,
    );
}

/// Every whole entry, oldest first.
pub(crate) fn read(region: &Region) -> Vec<Refusal> {
    let mut out: Vec<(u64, Refusal)> = Vec::with_capacity(RING_ENTRIES);
    for i in 0..RING_ENTRIES {
        let e = region.ring_entry(i);
        let before = e.seq.load(Ordering::Acquire);
        if before == 0 || before & 1 == 1 {
            continue;
        }
        let f = Fields::load(e);
        fence(Ordering::Acquire);
        if e.seq.load(Ordering::Relaxed) != before || !f.checks(e) {
            continue;
        }
        let len = (f.what & 0xFF) as usize;
        let mut account = Vec::with_capacity(ACCOUNT_MAX);
        for w in f.account {
            account.extend_from_slice(&w.to_le_bytes());
        }
        account.truncate(len.min(ACCOUNT_MAX));
        let limited_by = match (f.what >> 8) & 0xFF {
            1 => LimitedBy::Minute,
            2 => LimitedBy::Day,
            3 => LimitedBy::TokensMinute,
            4 => LimitedBy::TokensDay,
            5 => LimitedBy::InFlight,
            _ => LimitedBy::None,
        };
        let model = region
            .model_name((f.what >> 16) as u16)
            .map(|n| String::from_utf8_lossy(&n).into_owned());
        out.push((
            (before >> 1) - 1,
            Refusal {
                at_ms: f.at_ms,
                account,
                model,
                limited_by,
                minute_count: f.minute_count,
                minute_limit: f.minute_limit,
                day_count: f.day_count,
                day_limit: f.day_limit,
                reserved: if limited_by == LimitedBy::InFlight {
                    0
                } else {
                    f.reserved as u32
                },
                in_flight: if limited_by == LimitedBy::InFlight {
                    (f.reserved >> 32) as u32
                } else {
                    0
                },
                max_in_flight: if limited_by == LimitedBy::InFlight {
                    f.reserved as u32
                } else {
                    0
                },
            },
        ));
    }
    out.sort_by_key(|(ticket, _)| *ticket);
    out.into_iter().map(|(_, r)| r).collect()
}

/// An entry's fields, as plain values.
struct Fields {
    at_ms: u64,
    what: u32,
    minute_count: u32,
    minute_limit: u32,
    day_count: u32,
    day_limit: u32,
    account: [u64; 8],
    /// Tokens asked for; in the check only for a refusal on tokens, so an
    /// entry written before 0.4 (this word zero, not checked) still checks.
    reserved: u64,
}

impl Fields {
    /// A mix of every field, stored beside them: two overlapping writers
    /// (one stalled a whole ring behind) cannot leave a mixed entry that
    /// passes for a real one.
    fn check(&self) -> u32 {
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ self.at_ms;
        let mut mix = |v: u64| {
            x = (x ^ v).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 31;
        };
        mix(self.what as u64 | (self.minute_count as u64) << 32);
        mix(self.minute_limit as u64 | (self.day_count as u64) << 32);
        mix(self.day_limit as u64);
        for w in self.account {
            mix(w);
        }
        if (self.what >> 8) & 0xFF >= LimitedBy::TokensMinute as u32 {
            mix(self.reserved);
        }
        (x >> 32) as u32 | 1
    }

    fn store(&self, e: &RingEntry) {
        let r = Ordering::Relaxed;
        e.at_ms.store(self.at_ms, r);
        e.what.store(self.what, r);
        e.minute_count.store(self.minute_count, r);
        e.minute_limit.store(self.minute_limit, r);
        e.day_count.store(self.day_count, r);
        e.day_limit.store(self.day_limit, r);
        for (slot, w) in e.account.iter().zip(self.account) {
            slot.store(w, r);
        }
        e.reserved.store(self.reserved, r);
        e.check.store(self.check(), r);
    }

    fn load(e: &RingEntry) -> Fields {
        let r = Ordering::Relaxed;
        Fields {
            at_ms: e.at_ms.load(r),
            what: e.what.load(r),
            minute_count: e.minute_count.load(r),
            minute_limit: e.minute_limit.load(r),
            day_count: e.day_count.load(r),
            day_limit: e.day_limit.load(r),
            account: std::array::from_fn(|k| e.account[k].load(r)),
            reserved: e.reserved.load(r),
        }
    }

    fn checks(&self, e: &RingEntry) -> bool {
        e.check.load(Ordering::Relaxed) == self.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{size_for, HeapMem};
    use crate::window::Instant;

    fn refused(minute_count: u32) -> Outcome {
        Outcome {
            allowed: false,
            limited_by: LimitedBy::Minute,
            at: Instant { day: 1, minute: 0 },
            minute_count,
            day_count: 7,
            clock_fault: false,
        }
    }

    #[test]
    fn keeps_the_latest_once_a_second_per_key() {
        let m = HeapMem::new(size_for(4).unwrap()).unwrap();
        // SAFETY: fresh exclusive allocation of the right size.
        let r = unsafe { Region::format(m.as_ptr(), m.len(), 1, true) }.unwrap();
        let lim = Limits { rpm: 3, rpd: 10 };
        let id = r.model_id(b"m").unwrap();
        assert!(read(&r).is_empty());
        record(&r, 1, b"alice", id, &refused(3), lim, 0, 5_000);
        record(&r, 1, b"alice", id, &refused(3), lim, 0, 5_999); // same second
        record(&r, 2, b"bob", id, &refused(3), lim, 0, 5_999);
        let got = read(&r);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].account, b"alice");
        assert_eq!(got[0].model.as_deref(), Some("m"));
        assert_eq!(got[0].limited_by, LimitedBy::Minute);
        assert_eq!((got[0].minute_count, got[0].minute_limit), (3, 3));
        assert_eq!((got[0].day_count, got[0].day_limit), (7, 10));
        assert_eq!(got[1].account, b"bob");
        // Wrapping: only the latest RING_ENTRIES stay, oldest first.
        let n = if cfg!(miri) {
            RING_ENTRIES + 3
        } else {
            3 * RING_ENTRIES
        };
        for i in 0..n {
            record(
                &r,
                10 + i as u32,
                b"k",
                id,
                &refused(i as u32),
                lim,
                0,
                9_000,
            );
        }
        let got = read(&r);
        assert_eq!(got.len(), RING_ENTRIES);
        assert_eq!(got[0].minute_count as usize, n - RING_ENTRIES);
        assert_eq!(got[RING_ENTRIES - 1].minute_count as usize, n - 1);
    }

    #[test]
    fn a_refusal_on_tokens_keeps_its_unit_and_reservation() {
        let m = HeapMem::new(size_for(4).unwrap()).unwrap();
        // SAFETY: fresh exclusive allocation of the right size.
        let r = unsafe { Region::format(m.as_ptr(), m.len(), 1, true) }.unwrap();
        let tl = Limits {
            rpm: 200_000,
            rpd: 5_000_000,
        };
        let o = Outcome {
            limited_by: LimitedBy::TokensMinute,
            minute_count: 150_000,
            day_count: 150_000,
            ..refused(0)
        };
        record(&r, 1, b"alice", 0, &o, tl, 60_000, 1_000);
        let got = read(&r);
        assert_eq!(got[0].limited_by, LimitedBy::TokensMinute);
        assert_eq!(
            (got[0].minute_count, got[0].minute_limit),
            (150_000, 200_000)
        );
        assert_eq!(got[0].reserved, 60_000);
        // The reservation is in the check word of a refusal on tokens: a
        // torn one is skipped like any torn field.
        r.ring_entry(0).reserved.store(1, Ordering::Relaxed);
        assert!(read(&r).is_empty());
        // A refusal on requests (as every 0.3 entry) leaves the word out of
        // its check, so entries written before it existed still read.
        record(&r, 2, b"bob", 0, &refused(3), tl, 0, 2_000);
        r.ring_entry(1).reserved.store(0, Ordering::Relaxed);
        assert_eq!(read(&r).len(), 1);
    }

    #[test]
    fn torn_entries_are_skipped() {
        let m = HeapMem::new(size_for(4).unwrap()).unwrap();
        // SAFETY: fresh exclusive allocation of the right size.
        let r = unsafe { Region::format(m.as_ptr(), m.len(), 1, true) }.unwrap();
        let lim = Limits { rpm: 3, rpd: 10 };
        record(&r, 1, b"alice", 0, &refused(3), lim, 0, 1_000);
        record(&r, 2, b"bob", 0, &refused(3), lim, 0, 1_000);
        // A writer killed mid-entry: odd seq.
        r.ring_entry(0).seq.store(1, Ordering::Relaxed);
        // Two writers overlapping: fields of one, check of the other.
        r.ring_entry(1).minute_count.store(99, Ordering::Relaxed);
        assert!(read(&r).is_empty());
        // The killed writer's entry is taken over a ring later.
        for i in 0..RING_ENTRIES as u32 {
            record(&r, 100 + i, b"carol", 0, &refused(1), lim, 0, 2_000);
        }
        assert_eq!(read(&r).len(), RING_ENTRIES);
    }
}

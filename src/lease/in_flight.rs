//! In-flight limits on a table of quota leases: at most N of a key's
//! requests running at once across every host joined to the store.
//!
//! Per key one set in the store under its own tag ([`Unit::InFlight`]):
//! member an admission (this table's host id and its ledger entry), dated
//! to expire [`HOST_LIVES`] beats from the store's now. An admission takes
//! the local ledger entry first (so a process that dies holding it is
//! reclaimed by the table's sweep, as on a local table), then admits the
//! member in the store in one atomic script (expired members dropped,
//! admitted iff fewer than N, idempotent by member), then the windows; a
//! refusal by the store or the windows gives the entry back and, for the
//! windows, queues the member's removal. A release frees the entry and
//! queues the removal to the lease thread: no round trip on the release.
//!
//! Liveness: each process's lease thread renews, once a beat, the members
//! it admitted whose ledger entry is still held (the same entry and
//! sequence number). So nothing has to remove an orphan: a process killed
//! with its host alive leaves members nobody renews (the sweep frees its
//! ledger entries, which were the only thing naming them), and a host
//! killed leaves members nobody renews; either way they leave the count
//! within `HOST_LIVES × hosts::EVERY` (3 s) of the last renewal. The
//! renewal re-adds a member missing from the set, so what a host admitted
//! by its down policy is pushed when the store answers again, and a
//! member dropped while its host could not reach the store counts again.
//!
//! Store away: the down policy decides. `local` admits against this
//! host's share, `N / hosts`, counted in the key's in-flight word of the
//! table (every process of the host together); `open` admits; `closed`
//! refuses (as an in-flight refusal showing the limit reached, as the
//! request windows refuse with their minute shown full).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use super::worker::Job;
use super::{hosts, lock, DownPolicy, Inner, Joined};
use crate::error::Error;
use crate::slot::in_flight::{EntryRef, Ledger};
use crate::store::{StoreError, Tag};
#[cfg(doc)]
use crate::store::{Unit, HOST_LIVES};

/// One admission this process made and renews.
pub(super) struct Held {
    tag: Tag,
    entry: EntryRef,
}

/// What the store (or the down policy) said of an admission.
pub(crate) enum InFlightAnswer {
    /// Admitted; the key's count to show (the store's, or the host's
    /// share's as used).
    Admitted(u32),
    /// Refused; the count to show.
    Refused(u32),
}

impl Joined {
    /// Whether an in-flight admission on `tag` would wait for the store
    /// (a caller that must not wait then gets [`Error::Pending`]).
    pub(crate) fn in_flight_waits(&self, tag: &Tag) -> bool {
        let i = &*self.inner;
        if i.store.fails_fast(tag) {
            return false;
        }
        i.c.deferred.fetch_add(1, Relaxed);
        true
    }

    /// Admits in the store the admission whose local ledger entry is
    /// `entry` (the key's count on this host `local`, this one included),
    /// under the limit `max`. A refusal leaves the entry to the caller to
    /// free; an error too.
    pub(crate) fn admit_in_flight(
        &self,
        tag: &Tag,
        entry: EntryRef,
        local: u16,
        max: u16,
    ) -> Result<InFlightAnswer, Error> {
        let i = &*self.inner;
        let member = i.member(entry);
        let answer = match i
            .store
            .in_flight_admit(tag, &member, max.into(), hosts::EVERY)
        {
            Ok(a) => {
                i.answered();
                if !a.admitted {
                    return Ok(InFlightAnswer::Refused(a.count));
                }
                InFlightAnswer::Admitted(a.count)
            }
            Err(e) => {
                let timed_out = matches!(e, StoreError::Timeout { .. });
                if !e.is_unavailable() {
                    return Err(Error::Store(e));
                }
                i.failed(&e);
                i.c.degraded.fetch_add(1, Relaxed);
                let answer = i.in_flight_down(local, max);
                if let InFlightAnswer::Refused(_) = answer {
                    // The reply may have been lost after the member went
                    // in: taken out again (idempotent).
                    if timed_out {
                        i.queue(Job::Unhold {
                            tag: tag.clone(),
                            member,
                        });
                    }
                    return Ok(answer);
                }
                i.c.degraded_admitted.fetch_add(1, Relaxed);
                answer
            }
        };
        lock(&i.held).insert(
            member,
            Held {
                tag: tag.clone(),
                entry,
            },
        );
        Ok(answer)
    }

    /// The admission of `entry` on `tag` is over (released, or refused by
    /// the windows after the store admitted it): out of the renewals, and
    /// its member's removal queued.
    pub(crate) fn unhold_in_flight(&self, tag: Option<Tag>, entry: EntryRef) {
        let i = &*self.inner;
        let member = i.member(entry);
        let held = lock(&i.held).remove(&member);
        // Admitted by another process of the host: the tag from the slot.
        if let Some(tag) = held.map(|h| h.tag).or(tag) {
            i.queue(Job::Unhold { tag, member });
        }
    }
}

impl Inner {
    /// The store's member for a ledger entry: unique across hosts (the
    /// host id) and across uses of the entry (its sequence number).
    fn member(&self, entry: EntryRef) -> String {
        format!("{}:{}:{}", self.host_id, entry.idx, entry.seq)
    }

    /// The down policy's answer for an admission the store did not
    /// answer; `local` is the host's count with this admission in it.
    fn in_flight_down(&self, local: u16, max: u16) -> InFlightAnswer {
        match self.opts.down {
            DownPolicy::Closed => InFlightAnswer::Refused(max.into()),
            DownPolicy::Open => InFlightAnswer::Admitted(local.into()),
            DownPolicy::Local => {
                let share = (u32::from(max) / self.hosts()) as u16;
                // Shown against the whole limit: what is left of the share.
                let shown = |n: u16| u32::from(n) + u32::from(max - share);
                if local <= share {
                    InFlightAnswer::Admitted(shown(local))
                } else {
                    InFlightAnswer::Refused(shown(share))
                }
            }
        }
    }

    /// Once a beat: every admission of this process still held in the
    /// ledger is dated again in the store (re-added if missing); the rest
    /// are forgotten, so they expire there (module docs).
    pub(super) fn renew_in_flight(&self) {
        let ledger = Ledger::new(self.region.ledger());
        let mut by_tag: HashMap<Tag, Vec<String>> = HashMap::new();
        lock(&self.held).retain(|member, h| {
            let keep = ledger.holds(h.entry);
            if keep {
                by_tag
                    .entry(h.tag.clone())
                    .or_default()
                    .push(member.clone());
            }
            keep
        });
        for (tag, members) in by_tag {
            if self.store.fails_fast(&tag) {
                continue;
            }
            match self.store.in_flight_renew(&tag, &members, hosts::EVERY) {
                Ok(_) => self.answered(),
                Err(e) if e.is_unavailable() => self.failed(&e),
                Err(_) => {}
            }
        }
    }
}

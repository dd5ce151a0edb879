//! How large a key's next lease is: about its rate times the refill
//! interval (or the lease thread's rounds, when longer), at least its cost
//! and a floor, at most the hosts' share of the room left; and what a
//! refill teaches about the key.

use std::sync::atomic::Ordering::Relaxed;

use super::{lock, Inner};
use crate::limiter::{Prepared, Request};
use crate::policy::Limits;
use crate::slot::{self, Clock, Held};
use crate::store::{Counts, Tag};
use crate::window::Instant;

/// The smallest lease asked for while the room left allows it.
const LEASE_FLOOR: u32 = 16;

/// What this process knows of a key it took leases for (the slot's units
/// themselves are in the shared table).
pub(super) struct KeyInfo {
    pub(super) tag: Tag,
    /// The limits of the key's last refill (for the lease thread's top-ups).
    pub(super) limits: Limits,
    pub(super) last_refill: std::time::Instant,
    pub(super) last_grant: u32,
    /// The outage count (`Inner::epoch`) when Redis last proved it still
    /// counts this key's units: units older than an outage may have been
    /// granted by a Redis that restarted empty, and are never given back.
    pub(super) epoch: u64,
    /// A thread of this process is asking for this key's next lease; others
    /// meanwhile ask only for their own cost, so a burst does not park one
    /// lease per thread on the host.
    pub(super) refilling: bool,
}

impl Inner {
    /// The size of the next lease for a key, and its tag: about the key's
    /// rate over the last lease times the refill interval (growing at most
    /// 16-fold per refill), at least the cost, at most the room left as of
    /// the last exchange divided among the hosts. `owner`: this call took
    /// the key's refill (else another is under way and this asks only the
    /// cost); only the owner's grant is passed to `refilled`.
    pub(super) fn want(
        &self,
        slot_i: usize,
        gen: u16,
        req: &Request<'_>,
        p: &Prepared,
        model: &str,
        at: Instant,
    ) -> (u32, Tag, u64, bool) {
        let cost = req.cost;
        let now = std::time::Instant::now();
        let mut keys = lock(&self.keys);
        let info = keys.entry((slot_i, gen)).or_insert_with(|| KeyInfo {
            tag: Tag::for_key(req.account, model),
            limits: p.limits,
            last_refill: now,
            last_grant: 0,
            epoch: self.epoch.load(Relaxed),
            refilling: false,
        });
        let tag = info.tag.clone();
        if info.refilling {
            return (cost, tag, info.epoch, false);
        }
        info.refilling = true;
        info.limits = p.limits;
        let want = self.lease_size(info, slot_i, gen, at, now).max(cost);
        (want, tag, info.epoch, true)
    }

    /// A key's next lease before the floor of the cost: its rate over the
    /// last lease times the refill interval, at most 16 times the last
    /// lease, the room left per host as of the last exchange and
    /// `max_lease`.
    pub(super) fn lease_size(
        &self,
        info: &KeyInfo,
        slot_i: usize,
        gen: u16,
        at: Instant,
        now: std::time::Instant,
    ) -> u32 {
        let elapsed = now.duration_since(info.last_refill).as_secs_f64().max(1e-6);
        let rate = info.last_grant as f64 / elapsed;
        // At least four of the lease thread's rounds: it tops a key up at
        // half its lease, and the grant must land before the other half is
        // spent, a round until its next look and up to one for the batch.
        // With thousands of hot keys on a busy Redis a round can outlast
        // the refill interval; longer leases then also mean fewer grants.
        // Below half of `idle_after`, so a hot key is never taken for idle.
        let round = self.round_us.load(Relaxed) as f64 / 1e6;
        let rounds = (4.0 * round).min(self.opts.idle_after.as_secs_f64() / 2.0);
        let span = self.opts.refill_interval.as_secs_f64().max(rounds);
        let by_rate = (rate * span).ceil();
        let grown = (info.last_grant as f64 * 16.0).max(16.0);
        let est = by_rate.min(grown).min(u32::MAX as f64) as u32;
        let (gm, gd) = slot::read_word(&self.region.side(slot_i).global, gen, at);
        let room = info
            .limits
            .rpm
            .saturating_sub(gm)
            .min(info.limits.rpd.saturating_sub(gd));
        let share = room / self.hosts();
        // A floor: a key's rate is measured between its refills, which a
        // lease of one or two units makes slow, so sized by rate alone a
        // cold table of many keys stays near one round trip per decision.
        // At most a quarter of the share, so small limits stay fine-grained
        // (fresh headers, little parked on one host).
        let est = est.max(LEASE_FLOOR.min(share / 4));
        est.min(share).min(self.opts.max_lease)
    }

    /// Notes a refill's end: with `owned` (the units the refill's owner got,
    /// see `want`) the key's rate, and (when Redis answered,
    /// `held` being what the host holds after it) whether Redis still
    /// counts the units held. Its counts include every unit leased to this
    /// host in the window, so counts below the units held mean Redis lost
    /// them (a restart without persistence): those units are dropped, not
    /// spent further nor given back.
    pub(super) fn refilled(
        &self,
        slot_i: usize,
        gen: u16,
        owned: Option<u32>,
        counts: &Counts,
        held: Option<Held>,
        clock: Clock,
    ) {
        let mut keys = lock(&self.keys);
        let Some(info) = keys.get_mut(&(slot_i, gen)) else {
            return;
        };
        // A decision's grant of its own cost, made while the owner's was
        // under way, must not end the owner's refill: the owner's large
        // grant would then go unrecorded and the key restart from one unit.
        if let (Some(units), true) = (owned, info.refilling) {
            info.refilling = false;
            info.last_refill = std::time::Instant::now();
            info.last_grant = units;
        }
        let Some(h) = held else {
            return;
        };
        let epoch = self.epoch.load(Relaxed);
        if info.epoch == epoch || self.down.load(Relaxed) {
            return;
        }
        if counts.day_count < h.day_left as u64 || counts.minute_count < h.minute_left as u64 {
            if let Some((_, m, d)) = slot::take(&self.region, slot_i, gen, clock, false) {
                self.c.dropped_units.fetch_add(m.max(d) as u64, Relaxed);
            }
        }
        info.epoch = epoch;
    }
}

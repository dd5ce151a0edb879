//! The decision path of a joined limiter: spend the units the host holds
//! (one CAS, no round trip), or take a lease from the store (one round
//! trip), or, with the store away, the down policy. Exact mode asks the
//! store for the cost of every decision.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::worker::Job;
use super::{lock, DownPolicy, Inner, Joined, LeaseMode};
use crate::decision::Decision;
use crate::error::Error;
use crate::limiter::{Limiter, Prepared, Request};
use crate::policy::Limits;
use crate::slot::{self, Clock, Held, LimitedBy, Outcome};
use crate::store::{Ask, Counts, OpId, StoreError, Tag};
use crate::window::Instant;

/// How long a key that Redis refused (its window full) is refused without
/// asking again (see `Inner::known_full`).
pub(super) const RECHECK: Duration = Duration::from_secs(1);

/// What the last refused grant of a key said of its windows' room.
pub(super) struct Full {
    pub(super) at: Instant,
    pub(super) minute_room: u32,
    pub(super) day_room: u32,
    pub(super) checked: std::time::Instant,
}

/// How a decision was made, for the counters.
enum Spent {
    /// From units held, no round trip (counted as it is made).
    FromLease(Outcome),
    Other(Outcome),
    /// By the `Local` down policy: `shown` against the whole limit (what
    /// is left of the host's share, for the headers), `judged` the host's
    /// own count against its `share` (for the refusal record, which an
    /// operator reads as counts: "7 515 of 15 000" for 15 requests was
    /// the share's offset, not requests).
    Shared {
        shown: Outcome,
        judged: Outcome,
        share: Limits,
    },
}

/// Outcome of a decision rendered from global counts: `minute`/`day` are
/// the counts to show (global as of the last exchange plus this host's
/// spends since).
fn outcome(allowed: bool, limited_by: LimitedBy, at: Instant, minute: u32, day: u32) -> Outcome {
    Outcome {
        allowed,
        limited_by,
        at,
        minute_count: minute,
        day_count: day,
        clock_fault: false,
    }
}

fn refused_by(counts: &Counts, limits: Limits, cost: u32) -> LimitedBy {
    if counts.day_count + cost.max(1) as u64 > limits.rpd as u64 {
        LimitedBy::Day
    } else {
        LimitedBy::Minute
    }
}

fn clamp32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

impl Joined {
    /// One decision of a joined limiter (see the module's comment).
    pub(crate) fn check(
        &self,
        l: &Limiter,
        req: &Request<'_>,
        p: &Prepared,
        now_ms: u64,
    ) -> Result<Decision, Error> {
        let (outcome, _) = self.decide(l, req, p, now_ms)?;
        Ok(Decision::new(outcome, p.limits, now_ms))
    }

    /// [`Joined::check`]'s outcome, and the slot and generation of the key
    /// (`None` for a peek at a key this host never saw). A refusal is
    /// recorded.
    pub(super) fn decide(
        &self,
        l: &Limiter,
        req: &Request<'_>,
        p: &Prepared,
        now_ms: u64,
    ) -> Result<(Outcome, Option<(usize, u16)>), Error> {
        let i = &*self.inner;
        let clock = Clock {
            now: p.now,
            skew: l.skew_minutes(),
        };
        let located =
            slot::locate(&i.region, &p.key, req.account, p.now, req.cost > 0).map_err(|_| {
                i.c.slow_decisions.fetch_add(1, Relaxed);
                Error::TableFull
            })?;
        let Some((slot_i, gen)) = located else {
            i.c.slow_decisions.fetch_add(1, Relaxed);
            // A peek at a key this host never saw: what the last exchange
            // (none) says, fresh windows.
            let o = slot::judge(slot::State::default(), p.limits, 0, clock).0;
            return Ok((o, None));
        };
        // The key keeps its slot for the day even when nothing is held in
        // it (exact mode, the down policy): else a key probing past would
        // take the slot, and with it this key's down count.
        slot::keep(&i.region, slot_i, gen, p.now);
        let model = l.policy().models()[p.model].name.as_str();
        let outcome = match i.opts.mode {
            LeaseMode::Leases => i.decide_leased(slot_i, gen, req, p, model, clock),
            LeaseMode::Exact => i.exact(slot_i, gen, req, p, model, clock),
        };
        // A decision from held units counted itself (`from_leases`): the
        // common case pays for one shared counter, not two.
        let (outcome, recorded) = match outcome {
            Ok(Spent::FromLease(o)) => (o, None),
            Ok(Spent::Other(o)) => {
                i.c.slow_decisions.fetch_add(1, Relaxed);
                (o, None)
            }
            Ok(Spent::Shared {
                shown,
                judged,
                share,
            }) => {
                i.c.slow_decisions.fetch_add(1, Relaxed);
                (shown, Some((judged, share)))
            }
            Err(Error::Pending) => {
                // Not a decision: it is made again by a call that waits.
                i.c.deferred.fetch_add(1, Relaxed);
                return Err(Error::Pending);
            }
            Err(e) => {
                i.c.slow_decisions.fetch_add(1, Relaxed);
                return Err(e);
            }
        };
        if !outcome.allowed {
            let (judged, limits) = recorded.unwrap_or((outcome, p.limits));
            crate::refusals::record(
                &i.region,
                p.key.id as u32,
                req.account,
                p.model_id,
                &judged,
                limits,
                0,
                now_ms,
            );
        }
        Ok((outcome, Some((slot_i, gen))))
    }
}

impl Inner {
    /// The counts to show at `at` for a host holding `held`: the global
    /// counts of the last exchange (which include every unit leased to this
    /// host) less what this host still holds unspent.
    pub(super) fn shown(
        &self,
        slot_i: usize,
        gen: u16,
        at: Instant,
        held: Option<Held>,
    ) -> (u32, u32) {
        let (gm, gd) = slot::read_word(&self.region.side(slot_i).global, gen, at);
        let (hm, hd) = match held {
            Some(h) if h.at == at => (h.minute_left, h.day_left),
            Some(h) if h.at.day == at.day => (0, h.day_left),
            _ => (0, 0),
        };
        (gm.saturating_sub(hm), gd.saturating_sub(hd))
    }

    pub(super) fn note_counts(&self, slot_i: usize, gen: u16, at: Instant, counts: &Counts) {
        slot::raise_word(
            &self.region.side(slot_i).global,
            gen,
            at,
            clamp32(counts.minute_count),
            clamp32(counts.day_count),
        );
    }

    /// Remembers that Redis refused a grant for the key of `(slot_i, gen)`
    /// at `at`: the room each window had then.
    pub(super) fn note_full(
        &self,
        slot_i: usize,
        gen: u16,
        at: Instant,
        counts: &Counts,
        limits: Limits,
    ) {
        let room = |limit: u32, count: u64| {
            (limit as u64).saturating_sub(count).min(u32::MAX as u64) as u32
        };
        lock(&self.full).insert(
            (slot_i, gen),
            Full {
                at,
                minute_room: room(limits.rpm, counts.minute_count),
                day_room: room(limits.rpd, counts.day_count),
                checked: std::time::Instant::now(),
            },
        );
    }

    /// Whether a decision of `cost` at `at` is refused without asking
    /// Redis: its last exchange, less than [`RECHECK`] ago, showed a window
    /// without room for it, and that window is still the current one. The
    /// window that refuses then (the day first, as Redis's script does).
    ///
    /// Refused locally until the window ends would be exact only if no
    /// host ever gave units back; give-backs (an idle host, a leaving one)
    /// can free room within the window, so the key asks again at most once
    /// per `RECHECK` per process, whatever the rate of its refused
    /// requests.
    pub(super) fn known_full(
        &self,
        slot_i: usize,
        gen: u16,
        at: Instant,
        cost: u32,
    ) -> Option<LimitedBy> {
        let full = lock(&self.full);
        let f = full.get(&(slot_i, gen))?;
        if f.checked.elapsed() >= RECHECK {
            return None;
        }
        if f.at.day == at.day && cost > f.day_room {
            Some(LimitedBy::Day)
        } else if f.at == at && cost > f.minute_room {
            Some(LimitedBy::Minute)
        } else {
            None
        }
        .inspect(|_| {
            self.c.refused_locally.fetch_add(1, Relaxed);
        })
    }

    fn decide_leased(
        &self,
        slot_i: usize,
        gen: u16,
        req: &Request<'_>,
        p: &Prepared,
        model: &str,
        clock: Clock,
    ) -> Result<Spent, Error> {
        let cost = req.cost;
        let held = match slot::spend(&self.region, slot_i, gen, cost, clock) {
            Some(Ok(h)) => {
                self.c.from_leases.fetch_add(1, Relaxed);
                let (m, d) = self.shown(slot_i, gen, h.at, Some(h));
                return Ok(Spent::FromLease(outcome(true, LimitedBy::None, h.at, m, d)));
            }
            Some(Err(h)) => h,
            // Rebound between the lookup and the spend (a new day reused
            // the slot): this key is new again.
            None => Held {
                at: clock.now,
                minute_left: 0,
                day_left: 0,
            },
        };
        self.refill(slot_i, gen, held, req, p, model, clock)
    }

    /// A leased decision the units held do not cover: a peek, or a grant
    /// from the store (one round trip), or the down policy.
    #[allow(clippy::too_many_arguments)]
    fn refill(
        &self,
        slot_i: usize,
        gen: u16,
        held: Held,
        req: &Request<'_>,
        p: &Prepared,
        model: &str,
        clock: Clock,
    ) -> Result<Spent, Error> {
        let cost = req.cost;
        let at = held.at;
        if cost == 0 {
            // A peek: one more would pass if held, or if the last exchange
            // left room (no round trip for a look).
            let (m, d) = self.shown(slot_i, gen, at, Some(held));
            let o = slot::judge(
                slot::State {
                    gen: 0,
                    minute: at.minute as u16,
                    day: at.day,
                    minute_count: m,
                    day_count: d,
                },
                p.limits,
                0,
                Clock { now: at, ..clock },
            )
            .0;
            return Ok(Spent::Other(o));
        }
        if let Some(by) = self.known_full(slot_i, gen, at, cost) {
            let h =
                slot::spend(&self.region, slot_i, gen, 0, clock).map(|r| r.unwrap_or_else(|h| h));
            let (m, d) = self.shown(slot_i, gen, at, h);
            return Ok(Spent::Other(outcome(false, by, at, m, d)));
        }
        if req.no_wait && !self.store.fails_fast(&Tag::for_key(req.account, model)) {
            // Nothing changed yet: the caller decides again, waiting.
            return Err(Error::Pending);
        }
        let (want, tag, epoch, owner) = self.want(slot_i, gen, req, p, model, at);
        let owned = |units: u32| owner.then_some(units);
        // Day units left over from earlier minutes cannot be spent without
        // new minute units, and a grant charges both windows: they go back.
        if held.day_left > held.minute_left {
            if let Some((t_at, m, d)) = slot::take(&self.region, slot_i, gen, clock, true) {
                self.queue(Job::GiveBack {
                    tag: tag.clone(),
                    id: OpId::new(),
                    minute: m,
                    day: d,
                    at: t_at,
                    epoch,
                });
            }
        }
        let id = OpId::new();
        self.c.refills.fetch_add(1, Relaxed);
        let hosts = self.hosts();
        let ask = Ask {
            want,
            min: cost,
            limits: p.limits.into(),
            hosts,
        };
        let result = self.store.grant(&tag, &id, ask, at);
        match result {
            Ok(g) => {
                self.answered();
                self.note_counts(slot_i, gen, at, &g.counts);
                if g.units == 0 {
                    self.c.refused_by_store.fetch_add(1, Relaxed);
                    self.note_full(slot_i, gen, at, &g.counts, p.limits);
                    let by = refused_by(&g.counts, p.limits, cost);
                    let h = slot::spend(&self.region, slot_i, gen, 0, clock)
                        .map(|r| r.unwrap_or_else(|h| h));
                    self.refilled(slot_i, gen, owned(0), &g.counts, h, clock);
                    let (m, d) = self.shown(slot_i, gen, at, h);
                    return Ok(Spent::Other(outcome(false, by, at, m, d)));
                }
                self.c.granted_units.fetch_add(g.units as u64, Relaxed);
                let after = slot::add(&self.region, slot_i, gen, at, g.units, cost, clock.skew);
                self.refilled(slot_i, gen, owned(g.units), &g.counts, after, clock);
                if after.is_none() && g.units > cost {
                    // Rebound meanwhile: this decision spent its cost, the
                    // rest has nowhere to live.
                    self.queue(Job::GiveBack {
                        tag,
                        id: OpId::new(),
                        minute: g.units - cost,
                        day: g.units - cost,
                        at,
                        epoch: self.epoch.load(Relaxed),
                    });
                }
                let (m, d) = self.shown(slot_i, gen, at, after);
                Ok(Spent::Other(outcome(true, LimitedBy::None, at, m, d)))
            }
            Err(e) => {
                self.refilled(slot_i, gen, owned(0), &Counts::default(), None, clock);
                self.unanswered(e, slot_i, gen, req, p, tag, id, want, at, clock)
            }
        }
    }

    fn exact(
        &self,
        slot_i: usize,
        gen: u16,
        req: &Request<'_>,
        p: &Prepared,
        model: &str,
        clock: Clock,
    ) -> Result<Spent, Error> {
        let (cost, at) = (req.cost, clock.now);
        if cost == 0 {
            let (m, d) = self.shown(slot_i, gen, at, None);
            let s = slot::State {
                gen: 0,
                minute: at.minute as u16,
                day: at.day,
                minute_count: m,
                day_count: d,
            };
            return Ok(Spent::Other(slot::judge(s, p.limits, 0, clock).0));
        }
        if let Some(by) = self.known_full(slot_i, gen, at, cost) {
            let (m, d) = self.shown(slot_i, gen, at, None);
            return Ok(Spent::Other(outcome(false, by, at, m, d)));
        }
        let tag = Tag::for_key(req.account, model);
        if req.no_wait && !self.store.fails_fast(&tag) {
            return Err(Error::Pending);
        }
        let id = OpId::new();
        self.c.refills.fetch_add(1, Relaxed);
        let ask = Ask {
            want: cost,
            min: cost,
            limits: p.limits.into(),
            hosts: 1,
        };
        match self.store.grant(&tag, &id, ask, at) {
            Ok(g) => {
                self.answered();
                self.note_counts(slot_i, gen, at, &g.counts);
                let allowed = g.units > 0;
                if allowed {
                    self.c.granted_units.fetch_add(g.units as u64, Relaxed);
                } else {
                    self.c.refused_by_store.fetch_add(1, Relaxed);
                    self.note_full(slot_i, gen, at, &g.counts, p.limits);
                }
                let by = if allowed {
                    LimitedBy::None
                } else {
                    refused_by(&g.counts, p.limits, cost)
                };
                let (m, d) = self.shown(slot_i, gen, at, None);
                Ok(Spent::Other(outcome(allowed, by, at, m, d)))
            }
            Err(e) => self.unanswered(e, slot_i, gen, req, p, tag, id, cost, at, clock),
        }
    }

    /// A grant that got no answer: recover it later if it may have been
    /// charged, and decide by the down policy now.
    #[allow(clippy::too_many_arguments)]
    fn unanswered(
        &self,
        e: StoreError,
        slot_i: usize,
        gen: u16,
        req: &Request<'_>,
        p: &Prepared,
        tag: Tag,
        id: OpId,
        want: u32,
        at: Instant,
        clock: Clock,
    ) -> Result<Spent, Error> {
        match e {
            StoreError::Timeout { .. } => {
                self.failed(&e);
                self.queue(Job::Recover {
                    tag: tag.clone(),
                    id,
                    want,
                    min: req.cost,
                    limits: p.limits,
                    at,
                });
            }
            ref e if e.is_unavailable() => self.failed(e),
            other => return Err(Error::Store(other)),
        }
        self.c.degraded.fetch_add(1, Relaxed);
        let cost = req.cost;
        let (allowed, spent) = match self.opts.down {
            DownPolicy::Closed => {
                // Refused for want of Redis, not of quota: the minute shows
                // none left (a 429 saying "29 remaining" would read as a
                // bug), the day what the last exchange said.
                let (_, d) = self.shown(slot_i, gen, at, None);
                (
                    false,
                    Spent::Other(outcome(false, LimitedBy::Minute, at, p.limits.rpm, d)),
                )
            }
            DownPolicy::Open => {
                let (m, d) = self.shown(slot_i, gen, at, None);
                (true, Spent::Other(outcome(true, LimitedBy::None, at, m, d)))
            }
            DownPolicy::Local => {
                let hosts = self.hosts();
                let share = Limits {
                    rpm: p.limits.rpm / hosts,
                    rpd: p.limits.rpd / hosts,
                };
                let o = if share.rpm == 0 || share.rpd == 0 || cost > share.rpm.min(share.rpd) {
                    outcome(false, LimitedBy::Minute, at, share.rpm, share.rpd)
                } else {
                    slot::charge_word(&self.region.side(slot_i).down, gen, share, cost, clock)
                };
                // Shown against the whole limit: what is left of the share.
                let m = o.minute_count + (p.limits.rpm - share.rpm);
                let d = o.day_count + (p.limits.rpd - share.rpd);
                (
                    o.allowed,
                    Spent::Shared {
                        shown: Outcome {
                            minute_count: m,
                            day_count: d,
                            ..o
                        },
                        judged: o,
                        share,
                    },
                )
            }
        };
        if allowed {
            self.c.degraded_admitted.fetch_add(1, Relaxed);
            let when = match &spent {
                Spent::Shared { shown, .. } => shown.at,
                Spent::Other(o) | Spent::FromLease(o) => o.at,
            };
            *lock(&self.unpushed).entry((tag, when)).or_insert(0) += cost;
        }
        Ok(spent)
    }
}

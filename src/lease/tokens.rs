//! Tokens on a table of quota leases: one token quota per (account, model)
//! across every host joined to the store, under its own tag
//! ([`Unit::Tokens`]), by the same store calls as requests.
//!
//! A reservation is granted by the store exactly, at admission (the exact
//! mode's rule, whatever the lease mode), then the requests are decided as
//! any leased decision, and a refusal by the requests gives the tokens back.
//! Why not leased: a reservation is thousands of tokens against a limit of
//! hundreds of thousands a minute, so a lease worth having would park a
//! good part of the limit on one host and refuse the others, and a lease
//! small enough not to would cover a request or two. A generation takes
//! seconds; one store round trip at its admission does not show.
//!
//! Settling corrects the store off the decision path: the unspent part
//! goes back (skipped by the store for a window that has closed), an
//! excess over the reservation is pushed in the current windows, each by
//! the lease thread under an id of its own, so a retry after a timeout
//! applies once.
//!
//! Never over a token limit in any window while the store answers, except
//! by what settling adds: each response whose usage exceeds its reservation
//! adds the excess on top. The reservation holds the body's output cap, so
//! the excess is only the prompt's under-estimate (see docs/tokens.md for
//! the bound). With the store away, the down policy decides as it does for
//! requests, and what it admits is pushed when the store answers again.

use std::sync::atomic::Ordering::Relaxed;

use super::worker::Job;
use super::{lock, DownPolicy, Inner, Joined};
use crate::decision::{Decision, Ticket};
use crate::error::Error;
use crate::limiter::{Limiter, Prepared, Request};
use crate::policy::{Limits, TokenLimits};
use crate::slot::{self, Both, Clock, LimitedBy, Outcome, State};
use crate::store::{Ask, Counts, OpId, StoreError, Tag, Unit};
use crate::window::Instant;

/// Where a reservation's tokens were counted, so that a refusal by the
/// requests takes them back from there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Granted by the store.
    Store,
    /// Admitted by the down policy `open`: waiting to be pushed.
    Unpushed,
    /// Admitted by the down policy `local`: in this host's share (the
    /// slot's token word) and waiting to be pushed.
    Local,
}

fn clamp32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

/// The token outcome the store's `counts` show at `at` (after a grant of
/// `tokens`, or before a refused one).
fn from_counts(
    counts: &Counts,
    limits: Limits,
    tokens: u32,
    allowed: bool,
    at: Instant,
) -> Outcome {
    let limited_by = if allowed {
        LimitedBy::None
    } else if counts.day_count + tokens.max(1) as u64 > limits.rpd as u64 {
        LimitedBy::Day
    } else {
        LimitedBy::Minute
    };
    Outcome {
        allowed,
        limited_by,
        at,
        minute_count: clamp32(counts.minute_count),
        day_count: clamp32(counts.day_count),
        clock_fault: false,
    }
}

impl Joined {
    /// A decision on a key with token limits (module docs): the
    /// reservation from the store, then the requests, both or neither.
    pub(crate) fn check_tokens(
        &self,
        l: &Limiter,
        req: &Request<'_>,
        p: &Prepared,
        tl: TokenLimits,
        now_ms: u64,
    ) -> Result<Decision, Error> {
        let i = &*self.inner;
        let model = l.policy().models()[p.model].name.as_str();
        let tag = Tag::for_unit(req.account, model, Unit::Tokens);
        let limits = tl.windows();
        let clock = Clock {
            now: p.now,
            skew: l.skew_minutes(),
        };
        if req.cost == 0 || req.tokens == 0 {
            return self.look(l, req, p, tl, clock, now_ms);
        }
        // Every reservation asks the store: a caller that must not wait
        // makes it again on a thread that may.
        if req.no_wait && !i.store.fails_fast(&tag) {
            i.c.deferred.fetch_add(1, Relaxed);
            return Err(Error::Pending);
        }
        // The slot first: the ticket names it, and the down policy `local`
        // counts the host's share in it.
        let Some((slot_i, gen)) = slot::locate(&i.region, &p.key, req.account, p.now, true)
            .map_err(|_| Error::TableFull)?
        else {
            return Err(Error::TableFull);
        };
        let tokens = req.tokens;
        let at = p.now;
        let id = OpId::new();
        let ask = Ask {
            want: tokens,
            min: tokens,
            limits: limits.into(),
            hosts: 1,
        };
        let (t, held) = match i.store.grant(&tag, &id, ask, at) {
            Ok(g) => {
                i.answered();
                let (m, d) = (clamp32(g.counts.minute_count), clamp32(g.counts.day_count));
                slot::raise_word(i.region.tokens_seen(slot_i), gen, at, m, d);
                let counter = if g.units > 0 {
                    &i.c.token_grants
                } else {
                    &i.c.token_refusals
                };
                counter.fetch_add(1, Relaxed);
                let o = from_counts(&g.counts, limits, tokens, g.units > 0, at);
                (o, Held::Store)
            }
            Err(e) => i.tokens_down(e, slot_i, gen, &tag, id, tokens, limits, clock)?,
        };
        if !t.allowed {
            let look = Request { cost: 0, ..*req };
            let (r, _) = self.decide(l, &look, p, now_ms)?;
            let both = Both {
                requests: Outcome {
                    allowed: false,
                    ..r
                },
                tokens: t,
                at: Some((slot_i, gen)),
            };
            let d = Decision::with_tokens(&both, p.limits, tl, tokens, true, now_ms);
            // Recorded in tokens, against tpm and tpd (as a local table's).
            let refused = Outcome {
                limited_by: d.limited_by,
                ..t
            };
            crate::refusals::record(
                &i.region,
                p.key.id as u32,
                req.account,
                p.model_id,
                &refused,
                limits,
                u64::from(tokens),
                now_ms,
            );
            return Ok(d);
        }
        let (r, _) = match self.decide(l, req, p, now_ms) {
            Ok((r, found)) if r.allowed => (r, found),
            other => {
                i.unreserve(held, &tag, slot_i, gen, at, tokens);
                let (r, _) = other?;
                let given_back = Outcome {
                    minute_count: t.minute_count.saturating_sub(tokens),
                    day_count: t.day_count.saturating_sub(tokens),
                    ..t
                };
                let both = Both {
                    requests: r,
                    tokens: given_back,
                    at: Some((slot_i, gen)),
                };
                return Ok(Decision::with_tokens(
                    &both, p.limits, tl, tokens, true, now_ms,
                ));
            }
        };
        let both = Both {
            requests: r,
            tokens: t,
            at: Some((slot_i, gen)),
        };
        let mut d = Decision::with_tokens(&both, p.limits, tl, tokens, true, now_ms);
        if held == Held::Local {
            if let Some(ticket) = d.tokens.as_mut().and_then(|w| w.ticket.as_mut()) {
                ticket.local = true;
            }
        }
        Ok(d)
    }

    /// A decision that reserves nothing (a peek, or a reservation of 0):
    /// the token windows as the store counted them at this host's last
    /// exchange (no round trip, as a peek at requests), one token needed.
    fn look(
        &self,
        l: &Limiter,
        req: &Request<'_>,
        p: &Prepared,
        tl: TokenLimits,
        clock: Clock,
        now_ms: u64,
    ) -> Result<Decision, Error> {
        let i = &*self.inner;
        let at = clock.now;
        let seen = slot::locate(&i.region, &p.key, req.account, p.now, false)
            .ok()
            .flatten()
            .map_or((0, 0), |(slot_i, gen)| {
                slot::read_word(i.region.tokens_seen(slot_i), gen, at)
            });
        let s = State {
            gen: 0,
            minute: at.minute as u16,
            day: at.day,
            minute_count: seen.0,
            day_count: seen.1,
        };
        let mut t = slot::judge(s, tl.windows(), req.tokens, clock).0;
        if t.allowed {
            t.minute_count -= req.tokens;
            t.day_count -= req.tokens;
        }
        let look = Request { cost: 0, ..*req };
        let (r, found) = self.decide(l, if t.allowed { req } else { &look }, p, now_ms)?;
        let both = Both {
            requests: Outcome {
                allowed: r.allowed && t.allowed,
                ..r
            },
            tokens: t,
            at: found,
        };
        Ok(Decision::with_tokens(
            &both,
            p.limits,
            tl,
            0,
            req.cost > 0,
            now_ms,
        ))
    }

    /// Settles a reservation made on this table (see
    /// [`Limiter::settle`]): `used` tokens instead of the reserved ones.
    /// The store is corrected by the lease thread; this only queues.
    pub(crate) fn settle(&self, l: &Limiter, ticket: Ticket, used: u32, now: Instant) {
        let i = &*self.inner;
        let at = ticket.at();
        let (slot_i, reserved) = (ticket.slot as usize, ticket.reserved);
        if ticket.local {
            let clock = Clock {
                now,
                skew: l.skew_minutes(),
            };
            slot::tokens::settle(&i.region, slot_i, ticket.gen, at, reserved, used, clock);
        }
        // The key's name from its slot: a slot rebound since (its day is
        // over) leaves nothing of the reservation's windows to correct.
        let Some(tag) = i.tokens_tag(slot_i, ticket.gen) else {
            return;
        };
        if used != reserved {
            i.c.token_settles.fetch_add(1, Relaxed);
        }
        if used < reserved {
            let back = reserved - used;
            // Not pushed yet (admitted while the store was away): taken
            // from what will be pushed, the same in the end.
            let rest = back - i.unpush(&tag, at, back);
            if rest > 0 {
                i.queue(Job::GiveBack {
                    tag,
                    id: OpId::new(),
                    minute: rest,
                    day: rest,
                    at,
                    epoch: i.epoch.load(Relaxed),
                });
            }
        } else if used > reserved {
            i.queue(Job::Excess {
                tag,
                id: OpId::new(),
                units: used - reserved,
                at: now,
            });
        }
    }
}

impl Inner {
    /// A token grant that got no answer: recovered later if it may have
    /// been charged, and decided now by the down policy, as requests are.
    #[allow(clippy::too_many_arguments)]
    fn tokens_down(
        &self,
        e: StoreError,
        slot_i: usize,
        gen: u16,
        tag: &Tag,
        id: OpId,
        tokens: u32,
        limits: Limits,
        clock: Clock,
    ) -> Result<(Outcome, Held), Error> {
        let at = clock.now;
        match e {
            StoreError::Timeout { .. } => {
                self.failed(&e);
                self.queue(Job::Recover {
                    tag: tag.clone(),
                    id,
                    want: tokens,
                    min: tokens,
                    limits,
                    at,
                });
            }
            ref e if e.is_unavailable() => self.failed(e),
            other => return Err(Error::Store(other)),
        }
        let refused = |minute: u32, day: u32| Outcome {
            allowed: false,
            limited_by: LimitedBy::Minute,
            at,
            minute_count: minute,
            day_count: day,
            clock_fault: false,
        };
        let (o, held) = match self.opts.down {
            // Refused for want of the store: the minute shows none left.
            DownPolicy::Closed => (refused(limits.rpm, 0), Held::Store),
            DownPolicy::Open => {
                let o = Outcome {
                    allowed: true,
                    limited_by: LimitedBy::None,
                    ..refused(tokens, tokens)
                };
                (o, Held::Unpushed)
            }
            DownPolicy::Local => {
                let hosts = self.hosts();
                let share = Limits {
                    rpm: limits.rpm / hosts,
                    rpd: limits.rpd / hosts,
                };
                let o = if tokens > share.rpm.min(share.rpd) {
                    refused(share.rpm, share.rpd)
                } else {
                    slot::tokens::reserve(&self.region, slot_i, gen, share, tokens, true, clock)
                        .ok_or(Error::TableFull)?
                };
                // Shown against the whole limit: what is left of the share.
                let o = Outcome {
                    minute_count: o.minute_count + (limits.rpm - share.rpm),
                    day_count: o.day_count + (limits.rpd - share.rpd),
                    ..o
                };
                (o, Held::Local)
            }
        };
        if o.allowed {
            *lock(&self.unpushed).entry((tag.clone(), at)).or_insert(0) += tokens;
        }
        Ok((o, held))
    }

    /// Takes back a reservation the requests refused, from where it was
    /// counted.
    fn unreserve(&self, held: Held, tag: &Tag, slot_i: usize, gen: u16, at: Instant, tokens: u32) {
        match held {
            Held::Store => self.queue(Job::GiveBack {
                tag: tag.clone(),
                id: OpId::new(),
                minute: tokens,
                day: tokens,
                at,
                epoch: self.epoch.load(Relaxed),
            }),
            Held::Unpushed => {
                self.unpush(tag, at, tokens);
            }
            Held::Local => {
                slot::tokens::unreserve(&self.region, slot_i, gen, at, tokens);
                self.unpush(tag, at, tokens);
            }
        }
    }

    /// Takes up to `units` out of what waits to be pushed for `tag` at
    /// `at`; returns what it took.
    fn unpush(&self, tag: &Tag, at: Instant, units: u32) -> u32 {
        let mut unpushed = lock(&self.unpushed);
        let key = (tag.clone(), at);
        let Some(n) = unpushed.get_mut(&key) else {
            return 0;
        };
        let took = (*n).min(units);
        *n -= took;
        if *n == 0 {
            unpushed.remove(&key);
        }
        took
    }

    /// The token tag of the key bound to slot `i` as generation `gen`, from
    /// the name stored in the slot; `None` if the slot is another key's.
    fn tokens_tag(&self, i: usize, gen: u16) -> Option<Tag> {
        if i >= self.region.slot_count() as usize {
            return None;
        }
        let e = crate::operator::entry_at(&self.region, i).filter(|e| e.state.gen == gen)?;
        let account = e.account?;
        let model = self.region.model_name(e.model_id)?;
        let model = std::str::from_utf8(&model).ok()?;
        Some(Tag::for_unit(&account, model, Unit::Tokens))
    }
}

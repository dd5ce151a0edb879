//! The lease thread: top-ups of hot keys, give-backs of idle ones, pushes
//! of what was admitted while the store was away, recoveries of grants
//! whose reply was lost, and the store's state changes told once each.
//! Nothing here is on a decision's path.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::events::Level;
use super::{eviction, hosts, lock, DownPolicy, Inner, LeaseMode};

/// The most queued jobs one batch of calls settles.
const FLUSH_BATCH: usize = 1024;
/// Top-ups sent and applied at a time: a quarter of the store's pipeline,
/// because a decision's own grant waits behind a whole pipeline in Redis
/// (some 4 ms of scripts at 64 on a busy 2-core host, 16 at 256).
const TOP_UP_CHUNK: usize = 64;
use crate::policy::Limits;
use crate::slot::{self, Clock};
use crate::store::{ApplyCall, Ask, Counts, Grant, GrantCall, OpId, StoreError, Tag};
use crate::window::Instant;

/// Work for the background thread, retried while Redis is away.
pub(super) enum Job {
    GiveBack {
        tag: Tag,
        id: OpId,
        minute: u32,
        day: u32,
        at: Instant,
        /// The outage count when the units were known to Redis.
        epoch: u64,
    },
    Push {
        tag: Tag,
        id: OpId,
        units: u32,
        at: Instant,
    },
    /// Tokens used beyond a reservation, found when it was settled:
    /// added as a push is, but not a down-mode admission (not counted as
    /// one, nor told).
    Excess {
        tag: Tag,
        id: OpId,
        units: u32,
        at: Instant,
    },
    /// An in-flight admission that ended (or was refused after the store
    /// admitted it): its member out of the key's set. Idempotent.
    Unhold { tag: Tag, member: String },
    /// A grant whose reply did not come: asked again under its id, it
    /// answers what it charged (or charges now), and that goes back.
    Recover {
        tag: Tag,
        id: OpId,
        want: u32,
        min: u32,
        limits: Limits,
        at: Instant,
    },
}

impl Inner {
    pub(super) fn answered(&self) {
        if self.down.load(Relaxed) && self.down.swap(false, Relaxed) {
            self.breaker_told.store(false, Relaxed);
            self.events.say(
                Level::Info,
                "redis store answers again: decisions take leases from it; what was admitted meanwhile is being pushed".into(),
            );
            self.wake.notify_all();
        }
    }

    /// A call failed for want of Redis: from answering to not, the outage
    /// is counted and told (once), with Redis's own reason.
    pub(super) fn failed(&self, e: &StoreError) {
        if !self.down.swap(true, Relaxed) {
            self.epoch.fetch_add(1, Relaxed);
            self.went_down(e);
        }
    }

    pub(super) fn went_down(&self, e: &StoreError) {
        let policy = match self.opts.down {
            DownPolicy::Local => "local (this host's share of each limit)",
            DownPolicy::Open => "open (admit all, counted)",
            DownPolicy::Closed => "closed (refuse)",
        };
        self.events.say(
            Level::Warn,
            format!("redis store unavailable: {e}; decisions beyond the units held follow the down policy {policy}"),
        );
    }

    /// Tells a breaker trip since the last look (the lease thread looks
    /// every tick).
    pub(super) fn note_trips(&self) {
        let trips = self.store.stats().trips;
        let seen = self.seen_trips.swap(trips, Relaxed);
        // Once an outage: each failed probe trips it again.
        if trips > seen && !self.breaker_told.swap(true, Relaxed) {
            self.events.say(
                Level::Warn,
                format!(
                    "redis store breaker opened after {} failed calls in a row: calls fail fast, then probe with backoff (from {} ms to {} ms)",
                    self.opts.store.trip_after,
                    self.opts.store.cooldown.as_millis(),
                    self.opts.store.max_cooldown.as_millis()
                ),
            );
        }
    }

    /// Hot keys whose units fell below half their last lease get the next
    /// one from this thread, so their decisions do not wait for it. Keys
    /// near their limit (a lease below 16 units) are left to the decisions,
    /// which then take exactly what they need.
    pub(super) fn top_up(&self) {
        if self.opts.mode != LeaseMode::Leases || self.down.load(Relaxed) {
            return;
        }
        let now = std::time::Instant::now();
        let clock = Clock {
            now: Instant::from_ms(crate::now_ms()).unwrap_or(Instant { day: 0, minute: 0 }),
            skew: self.skew,
        };
        let mut due = Vec::new();
        {
            let mut keys = lock(&self.keys);
            for (&(i, gen), info) in keys.iter_mut() {
                if info.refilling
                    || info.last_grant < 16
                    || info.last_refill.elapsed() >= self.opts.idle_after
                {
                    continue;
                }
                let s = slot::State::unpack(self.region.slot(i).state());
                if s.gen != gen {
                    continue;
                }
                let h = s.held(clock.now, clock.skew);
                if h.minute_left.min(h.day_left) > info.last_grant / 2 {
                    continue;
                }
                let want = self.lease_size(info, i, gen, h.at, now);
                if want < 16 {
                    continue;
                }
                info.refilling = true;
                // The share of its lease left (a lease lasts about as long
                // for every key): the nearest to running out asked first.
                let left = h.minute_left.min(h.day_left) as f64 / info.last_grant as f64;
                due.push((left, (i, gen, info.tag.clone(), info.limits, want, h.at)));
            }
        }
        if due.is_empty() {
            return;
        }
        due.sort_by(|a, b| a.0.total_cmp(&b.0));
        // A pipeline at a time, each answer applied before the next is
        // sent: thousands of due keys take a busy Redis hundreds of ms, and
        // a key whose grant waited for the whole batch would run out (its
        // decisions then each make a round trip for their own cost).
        let hosts = self.hosts();
        for chunk in due.chunks(TOP_UP_CHUNK) {
            let calls: Vec<GrantCall> = chunk
                .iter()
                .map(|(_, (_, _, tag, limits, want, at))| GrantCall {
                    tag: tag.clone(),
                    id: OpId::new(),
                    ask: Ask {
                        want: *want,
                        min: 1,
                        limits: (*limits).into(),
                        hosts,
                    },
                    at: *at,
                })
                .collect();
            self.c.top_ups.fetch_add(calls.len() as u64, Relaxed);
            let results = self.store.grant_many(&calls);
            for ((_, key), (call, result)) in
                chunk.iter().cloned().zip(calls.into_iter().zip(results))
            {
                self.topped_up(key, call, result);
            }
        }
    }

    /// Applies one top-up's answer: the units into the slot (or back, if
    /// the slot was rebound meanwhile), the key's refill ended either way.
    fn topped_up(
        &self,
        (i, gen, tag, limits, want, at): (usize, u16, Tag, Limits, u32, Instant),
        call: GrantCall,
        result: Result<Grant, StoreError>,
    ) {
        let clock = Clock {
            now: at,
            skew: self.skew,
        };
        match result {
            Ok(g) => {
                self.answered();
                self.note_counts(i, gen, at, &g.counts);
                self.c.granted_units.fetch_add(g.units as u64, Relaxed);
                let after = if g.units > 0 {
                    slot::add(&self.region, i, gen, at, g.units, 0, self.skew)
                } else {
                    None
                };
                self.refilled(i, gen, Some(g.units), &g.counts, after, clock);
                if after.is_none() && g.units > 0 {
                    self.queue(Job::GiveBack {
                        tag,
                        id: OpId::new(),
                        minute: g.units,
                        day: g.units,
                        at,
                        epoch: self.epoch.load(Relaxed),
                    });
                }
            }
            Err(e) => {
                // Every key of the batch is done refilling, answered or
                // not: one left marked would never be topped up.
                self.refilled(i, gen, Some(0), &Counts::default(), None, clock);
                if e.is_unavailable() {
                    self.failed(&e);
                    if matches!(e, StoreError::Timeout { .. }) {
                        self.queue(Job::Recover {
                            tag,
                            id: call.id,
                            want,
                            min: 1,
                            limits,
                            at,
                        });
                    }
                }
            }
        }
    }

    pub(super) fn queue(&self, job: Job) {
        lock(&self.jobs).push(job);
        self.wake.notify_all();
    }

    /// The background thread: pending work every tick, idle keys' units
    /// back every few ticks, until told to stop.
    pub(super) fn run(&self) {
        let tick = (self.opts.refill_interval / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut last_scan = std::time::Instant::now();
        // The first look at Redis's eviction settings on the first tick.
        let mut last_eviction_look: Option<std::time::Instant> = None;
        let mut last_beat = std::time::Instant::now();
        let mut last_top_up = std::time::Instant::now();
        loop {
            {
                let stop = lock(&self.stop);
                if *stop {
                    return;
                }
                let (stop, _) = self
                    .wake
                    .wait_timeout(stop, tick)
                    .unwrap_or_else(|p| p.into_inner());
                if *stop {
                    return;
                }
            }
            self.note_trips();
            if last_eviction_look.is_none_or(|t| t.elapsed() >= eviction::EVERY)
                && !self.down.load(Relaxed)
            {
                last_eviction_look = Some(std::time::Instant::now());
                self.look_at_eviction();
            }
            self.flush();
            if last_beat.elapsed() >= hosts::EVERY {
                last_beat = std::time::Instant::now();
                if self.opts.hosts == 0 {
                    self.beat();
                }
                // In-flight members live HOST_LIVES beats unless renewed.
                self.renew_in_flight();
            }
            // The time between two looks at the keys, for `lease_size`.
            let round = last_top_up.elapsed().max(tick);
            last_top_up = std::time::Instant::now();
            self.round_us.store(round.as_micros() as u64, Relaxed);
            self.top_up();
            if last_scan.elapsed() >= self.opts.idle_after / 4 {
                last_scan = std::time::Instant::now();
                self.give_back_idle();
            }
        }
    }

    /// Takes the units of keys not refilled within `idle_after` (all keys
    /// with `all`) and queues them to go back.
    pub(super) fn collect(&self, all: bool) {
        let clock = Clock {
            now: Instant::from_ms(crate::now_ms()).unwrap_or(Instant { day: 0, minute: 0 }),
            skew: self.skew,
        };
        let idle: Vec<((usize, u16), Tag, u64)> = {
            let mut keys = lock(&self.keys);
            let cut = self.opts.idle_after;
            let gone: Vec<(usize, u16)> = keys
                .iter()
                .filter(|(_, k)| all || (!k.refilling && k.last_refill.elapsed() >= cut))
                .map(|(&k, _)| k)
                .collect();
            gone.into_iter()
                .filter_map(|k| keys.remove(&k).map(|info| (k, info.tag, info.epoch)))
                .collect()
        };
        for ((i, gen), tag, epoch) in idle {
            if let Some((at, minute, day)) = slot::take(&self.region, i, gen, clock, false) {
                self.queue(Job::GiveBack {
                    tag,
                    id: OpId::new(),
                    minute,
                    day,
                    at,
                    epoch,
                });
            }
        }
    }

    pub(super) fn give_back_idle(&self) {
        lock(&self.full).retain(|_, f| f.checked.elapsed() < super::decide::RECHECK);
        self.collect(false);
        self.flush();
    }

    /// Runs the pending work in order; stops at the first transport
    /// failure (Redis still away) and keeps the rest for the next tick.
    pub(super) fn flush(&self) {
        {
            let mut unpushed = lock(&self.unpushed);
            if !unpushed.is_empty() {
                let mut jobs = lock(&self.jobs);
                for ((tag, at), units) in unpushed.drain() {
                    jobs.push(Job::Push {
                        tag,
                        id: OpId::new(),
                        units,
                        at,
                    });
                }
            }
        }
        let (mut pushes, mut units) = (0u64, 0u64);
        loop {
            let batch: Vec<Job> = {
                let mut jobs = lock(&self.jobs);
                if jobs.is_empty() {
                    if pushes > 0 {
                        self.events.say(
                            Level::Info,
                            format!("redis store: pushed the {units} unit(s) admitted while it was unavailable ({pushes} key-minutes); the backlog is empty"),
                        );
                    }
                    return;
                }
                let n = jobs.len().min(FLUSH_BATCH);
                jobs.drain(..n).collect()
            };
            let (left, pushed) = self.settle(batch);
            pushes += pushed.0;
            units += pushed.1;
            if !left.is_empty() {
                // Redis still away: the rest waits, in order, for the next
                // tick.
                let mut jobs = lock(&self.jobs);
                jobs.splice(0..0, left);
                return;
            }
        }
    }

    /// Runs `batch` in one batch of calls (a few pipelined round trips):
    /// recoveries first (their give-backs go to the queue's front), then
    /// the give-backs and pushes. Returns the jobs to try again because
    /// Redis was unavailable to them, in their order, and the pushes done
    /// and their units.
    fn settle(&self, batch: Vec<Job>) -> (Vec<Job>, (u64, u64)) {
        let mut left = Vec::new();
        let mut recovers = Vec::new();
        let mut applies = Vec::new();
        for job in batch {
            match job {
                Job::GiveBack {
                    minute, day, epoch, ..
                } if epoch != self.epoch.load(Relaxed) => {
                    // Granted before an outage: the Redis that answers now
                    // may not be the one that counted them (a restart
                    // without persistence), and giving them back would
                    // take them from counts made since. Kept counted.
                    self.c
                        .dropped_units
                        .fetch_add(minute.max(day) as u64, Relaxed);
                }
                Job::Recover { .. } => recovers.push(job),
                Job::Unhold { tag, member } => match self.store.in_flight_release(&tag, &member) {
                    Ok(_) => self.answered(),
                    Err(e) if e.is_unavailable() => {
                        self.failed(&e);
                        left.push(Job::Unhold { tag, member });
                    }
                    // Redis answered with an error: retrying will not help.
                    Err(_) => {}
                },
                _ => applies.push(job),
            }
        }
        let hosts = self.hosts();
        let grants: Vec<GrantCall> = recovers
            .iter()
            .filter_map(|j| match j {
                Job::Recover {
                    tag,
                    id,
                    want,
                    min,
                    limits,
                    at,
                } => Some(GrantCall {
                    tag: tag.clone(),
                    id: id.clone(),
                    ask: Ask {
                        want: *want,
                        min: *min,
                        limits: (*limits).into(),
                        hosts,
                    },
                    at: *at,
                }),
                _ => None,
            })
            .collect();
        let mut given = Vec::new();
        if !grants.is_empty() {
            for (call, result) in grants.iter().zip(self.store.grant_many(&grants)) {
                match result {
                    Ok(g) => {
                        // Before queueing its give-back: a recovery drops
                        // queued ones of an earlier epoch.
                        self.answered();
                        if g.units > 0 {
                            given.push(Job::GiveBack {
                                tag: call.tag.clone(),
                                id: OpId::new(),
                                minute: g.units,
                                day: g.units,
                                at: call.at,
                                epoch: self.epoch.load(Relaxed),
                            });
                        }
                    }
                    Err(e) if e.is_unavailable() => {
                        self.failed(&e);
                        left.push(Job::Recover {
                            tag: call.tag.clone(),
                            id: call.id.clone(),
                            want: call.ask.want,
                            min: call.ask.min,
                            limits: Limits {
                                rpm: call.ask.limits.minute as u32,
                                rpd: call.ask.limits.day as u32,
                            },
                            at: call.at,
                        });
                    }
                    // Redis answered with an error: retrying will not help.
                    Err(_) => {}
                }
            }
        }
        // The recovered units go back with this batch, first.
        applies.splice(0..0, given);
        let calls: Vec<ApplyCall> = applies
            .iter()
            .filter_map(|j| match j {
                Job::GiveBack {
                    tag,
                    id,
                    minute,
                    day,
                    at,
                    ..
                } => Some(ApplyCall {
                    push: false,
                    tag: tag.clone(),
                    id: id.clone(),
                    minute_units: *minute,
                    day_units: *day,
                    at: *at,
                }),
                Job::Push { tag, id, units, at } | Job::Excess { tag, id, units, at } => {
                    Some(ApplyCall {
                        push: true,
                        tag: tag.clone(),
                        id: id.clone(),
                        minute_units: *units,
                        day_units: *units,
                        at: *at,
                    })
                }
                Job::Recover { .. } | Job::Unhold { .. } => None,
            })
            .collect();
        let mut pushed = (0, 0);
        if calls.is_empty() {
            return (left, pushed);
        }
        for (job, result) in applies.into_iter().zip(self.store.apply_many(&calls)) {
            match result {
                Ok(a) => {
                    self.answered();
                    if a.replayed {
                        continue;
                    }
                    match &job {
                        Job::Push { units: u, .. } => {
                            self.c.pushes.fetch_add(1, Relaxed);
                            self.c.pushed_units.fetch_add(*u as u64, Relaxed);
                            pushed.0 += 1;
                            pushed.1 += *u as u64;
                        }
                        Job::Excess { .. } => {}
                        _ => {
                            self.c.give_backs.fetch_add(1, Relaxed);
                            self.c
                                .given_back_units
                                .fetch_add(a.minute_units.max(a.day_units), Relaxed);
                        }
                    }
                }
                Err(e) if e.is_unavailable() => {
                    self.failed(&e);
                    left.push(job);
                }
                Err(_) => {}
            }
        }
        (left, pushed)
    }

    /// Leaving the store: every key's unspent units go back, then the
    /// pending work is tried once more (each call under the deadline; the
    /// breaker makes the rest fail fast if Redis is away).
    pub(super) fn release_all(&self) {
        self.collect(true);
        self.flush();
    }
}

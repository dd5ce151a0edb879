//! Operator views of a region: walk the bound slots, verify invariants,
//! reset one key, carry live counters into a bigger (or smaller) table.
//! None of this is on the decision path; all of it is safe to run while
//! other threads and processes decide on the same region.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering::Acquire;

use crate::error::Error;
use crate::key::{self, id_parts, KeyHash, ACCOUNT_MAX};
use crate::limiter::Limiter;
use crate::policy::{Limits, MODELS_MAX, MODEL_NAME_MAX};
use crate::region::Region;
use crate::slot::{self, State, PROBE_MAX};
use crate::window::{Instant, MINUTES_PER_DAY};

/// One bound slot as read at one moment.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub index: usize,
    pub state: State,
    pub model_id: u16,
    /// The account id, if its stored bytes hash back to the key (a binder
    /// killed before writing them leaves the key unnamed).
    pub account: Option<Vec<u8>>,
}

/// Reads a slot's two words as one consistent pair: `ident` is read on both
/// sides of `state`, and only an unchanged `ident` vouches for the pair
/// (every rebind changes `ident`'s generation, so an unchanged one means the
/// state read belongs to that binding or its opening). `None` if the slot
/// kept changing under us (a busy rebind storm; callers skip it).
fn read_pair(region: &Region, i: usize) -> Option<(u128, u128)> {
    let slot = region.slot(i);
    for _ in 0..64 {
        let ident = slot.ident.load(Acquire);
        let state = slot.state.load(Acquire);
        if slot.ident.load(Acquire) == ident {
            return Some((ident, state));
        }
        std::hint::spin_loop();
    }
    None
}

pub(crate) fn entry_at(region: &Region, i: usize) -> Option<Entry> {
    let (ident, state) = read_pair(region, i)?;
    let state = if region.is_legacy() {
        State::unpack_v2(state)
    } else {
        State::unpack(state)
    };
    if ident == 0 || state.gen != ident as u16 {
        return None;
    }
    let (model_id, _) = id_parts(ident >> 16);
    let account = verified_name(region, i, ident);
    Some(Entry {
        index: i,
        state,
        model_id,
        account,
    })
}

/// The stored account id of slot `i`, if it hashes back to the key in
/// `ident` (so a torn or missing name never passes for a real one).
fn verified_name(region: &Region, i: usize, ident: u128) -> Option<Vec<u8>> {
    let (model_id, len) = id_parts(ident >> 16);
    if len == 0 || len > ACCOUNT_MAX {
        return None;
    }
    let (buf, n) = region.read_name(i, len);
    let id = if region.is_legacy() {
        key::hash_v2(region.seed(), &buf[..n], model_id).id
    } else {
        key::hash(region.seed(), &buf[..n], model_id).id
    };
    (id == ident >> 16).then(|| buf[..n].to_vec())
}

/// The requests in flight of `e`'s key (0 in a table without the
/// in-flight areas, or when the word is an earlier binding's).
pub(crate) fn in_flight_of(region: &Region, e: &Entry) -> u32 {
    if !region.has_in_flight() {
        return 0;
    }
    let w = crate::slot::in_flight::Word::unpack(region.in_flight(e.index).load(Acquire));
    if w.gen == e.state.gen {
        u32::from(w.count)
    } else {
        0
    }
}

/// `verify`'s look at the in-flight areas: every unit a key's word counts
/// has a ledger entry (else it could never be released or reclaimed), and
/// every entry in use names a registered holder. Counts and entries
/// differ for an instant while an admission or a release is between its
/// steps: a mismatch is read twice before it is reported.
fn verify_in_flight(region: &Region, r: &mut VerifyReport) {
    use crate::slot::in_flight::{Ledger, Word};
    let ledger = Ledger::new(region.ledger());
    let holders = crate::holder::Holders::new(region.holders());
    let look = || {
        let mut per_key: HashMap<(u32, u16), u32> = HashMap::new();
        let mut orphans = Vec::new();
        let mut dead: HashMap<u16, u32> = HashMap::new();
        for e in ledger.in_use() {
            *per_key.entry((e.slot, e.gen)).or_default() += 1;
            match holders.get(e.holder) {
                None => orphans.push(e),
                Some(id) if id.liveness() == crate::holder::Liveness::Dead => {
                    *dead.entry(e.holder).or_default() += 1
                }
                Some(_) => {}
            }
        }
        let over: Vec<(u32, u16, u32)> = (0..region.slot_count())
            .filter_map(|i| {
                let w = Word::unpack(region.in_flight(i as usize).load(Acquire));
                let n = per_key.get(&(i, w.gen)).copied().unwrap_or(0);
                // `then`, not `then_some`: the difference exists only
                // past the test (a damaged table may count fewer).
                (u32::from(w.count) > n).then(|| (i, w.gen, u32::from(w.count) - n))
            })
            .collect();
        (over, orphans, dead)
    };
    let (over, orphans, _) = look();
    let (over2, orphans2, dead) = if over.is_empty() && orphans.is_empty() {
        (over, orphans, look().2)
    } else {
        std::thread::sleep(std::time::Duration::from_millis(50));
        look()
    };
    for (slot, _, n) in over2 {
        r.problems.push(Problem {
            slot: Some(slot),
            message: format!(
                "{n} request{} in flight that no ledger entry holds: never released or reclaimed",
                if n == 1 { "" } else { "s" }
            ),
        });
    }
    for e in orphans2 {
        r.problems.push(Problem {
            slot: Some(e.slot),
            message: format!(
                "a ledger entry names holder {}, which the holder list does not hold: its unit cannot be reclaimed",
                e.holder
            ),
        });
    }
    if !dead.is_empty() {
        let units: u32 = dead.values().sum();
        r.notes.push(format!(
            "{units} request{} in flight held by {} process{} that died: given back at the next sweep (a process's first admission, or a refusal for in-flight)",
            if units == 1 { "" } else { "s" },
            dead.len(),
            if dead.len() == 1 { "" } else { "es" }
        ));
    }
}

/// Every slot bound to a key (counts current or not), in slot order.
pub(crate) fn entries(region: &Region) -> impl Iterator<Item = Entry> + '_ {
    (0..region.slot_count() as usize).filter_map(move |i| entry_at(region, i))
}

/// Why slot `i`, bound to `key`, could not be found by a decision for it
/// (then the key's counts are ignored and it would be bound a second time):
/// too far from its home, or past a never-used slot, where probing stops.
fn unreachable(region: &Region, i: usize, key: &KeyHash) -> Option<String> {
    let n = region.slot_count() as usize;
    let home = slot::home(region, key);
    let dist = (i + n - home) % n;
    if dist >= PROBE_MAX.min(n) {
        return Some(format!(
            "key sits {dist} slots past its home slot {home}, beyond the probe limit {PROBE_MAX}: decisions cannot find it"
        ));
    }
    (0..dist)
        .map(|d| (home + d) % n)
        .find(|&j| region.slot(j).ident.load(Acquire) == 0)
        .map(|j| {
            format!("never-used slot {j} lies between the key's home slot {home} and it: decisions stop there and cannot find it")
        })
}

fn instant(now_ms: u64) -> Result<Instant, Error> {
    Instant::from_ms(now_ms).ok_or(Error::Invalid("now_ms is past the year 47000"))
}

/// One (account, model) key with its counts as seen at some moment.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyUsage {
    /// Slot index in the table.
    pub slot: u32,
    /// The account id, or `None` if the slot's stored name does not hash
    /// back to its key (its binder was killed before writing it).
    pub account: Option<Vec<u8>>,
    /// The model's name in the region's model table (`None` only if the
    /// table is damaged; `verify` reports it).
    pub model: Option<String>,
    /// Requests counted in the current UTC minute.
    pub minute: u32,
    /// Requests counted in the current UTC day.
    pub day: u32,
    /// Tokens charged in the current UTC minute (reservations not yet
    /// settled count as reserved); 0 for a key never token-limited.
    pub tokens_minute: u32,
    /// Tokens charged in the current UTC day.
    pub tokens_day: u32,
    /// Requests of the key running now (0 in a table without the
    /// in-flight areas).
    pub in_flight: u32,
    /// The processes holding them, by pid, as the table's ledger names
    /// them now.
    pub holders: Vec<InFlightHolder>,
}

/// A process holding some of a key's requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InFlightHolder {
    /// Its pid.
    pub pid: u32,
    /// The key's requests it holds.
    pub units: u32,
    /// Whether the kernel says it still runs (a dead holder's units come
    /// back at the next sweep).
    pub alive: bool,
}

/// Who holds each key's requests in flight: by (slot, generation), the
/// holders with their unit counts, pid order.
fn holders_by_key(region: &Region) -> HashMap<(u32, u16), Vec<InFlightHolder>> {
    let mut out: HashMap<(u32, u16), Vec<InFlightHolder>> = HashMap::new();
    if !region.has_in_flight() {
        return out;
    }
    let holders = crate::holder::Holders::new(region.holders());
    let mut who: HashMap<u16, Option<(u32, bool)>> = HashMap::new();
    for e in crate::slot::in_flight::Ledger::new(region.ledger()).in_use() {
        let Some((pid, alive)) = *who.entry(e.holder).or_insert_with(|| {
            holders.get(e.holder).map(|id| {
                let alive = id.liveness() == crate::holder::Liveness::Alive;
                (id.pid, alive)
            })
        }) else {
            continue;
        };
        let list = out.entry((e.slot, e.gen)).or_default();
        match list.iter_mut().find(|h| h.pid == pid) {
            Some(h) => h.units += 1,
            None => list.push(InFlightHolder {
                pid,
                units: 1,
                alive,
            }),
        }
    }
    out.values_mut().for_each(|l| l.sort_by_key(|h| h.pid));
    out
}

/// A slot's token counts at `now` (0 on a table without token windows).
fn token_counts(region: &Region, i: usize, gen: u16, now: Instant, skew: u32) -> (u32, u32) {
    if !region.units() {
        return (0, 0);
    }
    if region.leases() {
        // The store holds them: its counts as of this host's last grant.
        return slot::read_word(region.tokens_seen(i), gen, now);
    }
    let v = slot::tokens::view(region, i, gen).view(now, skew);
    (v.minute_count, v.day_count)
}

impl KeyUsage {
    /// The account id for display (invalid UTF-8 shown as U+FFFD).
    pub fn account_lossy(&self) -> Option<String> {
        self.account
            .as_deref()
            .map(|a| String::from_utf8_lossy(a).into_owned())
    }
}

/// The counts a leased slot shows, as its decisions' headers do while the
/// store answers: the global counts of the host's last exchange with it
/// (which include every unit leased to any host) less the units this host
/// still holds.
fn leased_counts(region: &Region, i: usize, at: Instant, held_m: u32, held_d: u32) -> (u32, u32) {
    // Side words of another generation are a former key's: nothing.
    let gen = State::unpack(region.slot(i).state()).gen;
    let g = State::unpack(region.side(i).global.load(Acquire));
    let mine = g.gen == gen;
    let gm = if mine && g.at() == at {
        g.minute_count
    } else {
        0
    };
    let gd = if mine && g.day == at.day {
        g.day_count
    } else {
        0
    };
    (gm.saturating_sub(held_m), gd.saturating_sub(held_d))
}

/// What a table of quota leases holds now, for `tollgate stats`: the
/// per-process counters (refills, Redis latency, fallbacks) live in each
/// joined process and are read through it (`Limiter::lease_stats`,
/// `tg_limiter_lease_stats`, nginx's metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseTableStats {
    /// Keys holding unspent units of a lease now.
    pub keys_holding: u32,
    /// Units held, summed over keys, per window.
    pub minute_units_held: u64,
    /// See `minute_units_held`.
    pub day_units_held: u64,
    /// Keys the down policy admitted requests for today (Redis was away),
    /// and those requests.
    pub keys_down: u32,
    /// See `keys_down`.
    pub down_admitted_today: u64,
}

/// The token windows a table holds now, summed over its keys, for
/// `tollgate stats` (a table formatted since 0.4, which has them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenTableStats {
    /// Keys with tokens charged in the current UTC day.
    pub keys: u32,
    /// Tokens charged (reserved, then settled) in the current UTC minute,
    /// summed over keys.
    pub minute: u64,
    /// Tokens charged in the current UTC day, summed over keys.
    pub day: u64,
}

/// What [`Limiter::verify`] found. Counts above the policy's limits are not
/// problems (the policy may have changed since they were made).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Slots in the region.
    pub slots: u32,
    /// Slots bound to a key (with or without counts for today).
    pub bound: u32,
    /// Bound slots with counts for the current day.
    pub live: u32,
    /// Slots released by an earlier key, free for any key.
    pub open: u32,
    /// Slots no key has ever bound.
    pub never_used: u32,
    /// Bound slots whose account name is missing (a binder killed between
    /// binding and writing the name). The counts still work; only the
    /// operator views cannot name the key, and `resize` cannot carry it.
    pub unnamed: u32,
    /// Models registered in the region's model table.
    pub models: u32,
    /// Broken invariants: any entry here means the table is damaged.
    pub problems: Vec<Problem>,
    /// Worth knowing, not damage (unnamed slots, an interrupted model
    /// registration).
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// Whether no invariant is broken (`problems` is empty).
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The slot concerned, if it is about one slot.
    pub slot: Option<u32>,
    /// What is wrong, in words.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.slot {
            Some(s) => write!(f, "slot {s}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// What [`Limiter::resize`] carried over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResizeReport {
    /// Live keys whose counts now sit in the new table.
    pub carried: u32,
    /// Live keys left behind because their account name was never written
    /// (their binder was killed mid-bind): the new table starts them at 0.
    pub unnamed: u32,
    /// Live keys left behind because their model id has no name.
    pub unknown_model: u32,
    /// Bound keys with nothing counted for the current day (nothing to
    /// carry).
    pub stale: u32,
}

impl Limiter {
    /// Every bound key with its counts as seen at `now_ms` (counts of past
    /// windows read as 0), in slot order. Walks the whole table.
    pub fn usage(&self, now_ms: u64) -> Result<Vec<KeyUsage>, Error> {
        let now = instant(now_ms)?;
        let region = self.region();
        let mut names: HashMap<u16, Option<String>> = HashMap::new();
        let mut holders = holders_by_key(region);
        Ok(entries(region)
            .map(|e| {
                let v = e.state.view(now, self.skew_minutes());
                let (minute, day) = if region.leases() {
                    leased_counts(region, e.index, v.at, v.minute_count, v.day_count)
                } else {
                    (v.minute_count, v.day_count)
                };
                let model = names
                    .entry(e.model_id)
                    .or_insert_with(|| {
                        region
                            .model_name(e.model_id)
                            .map(|n| String::from_utf8_lossy(&n).into_owned())
                    })
                    .clone();
                let (tokens_minute, tokens_day) =
                    token_counts(region, e.index, e.state.gen, now, self.skew_minutes());
                let in_flight = in_flight_of(region, &e);
                KeyUsage {
                    slot: e.index as u32,
                    account: e.account,
                    model,
                    minute,
                    day,
                    tokens_minute,
                    tokens_day,
                    in_flight,
                    holders: holders
                        .remove(&(e.index as u32, e.state.gen))
                        .unwrap_or_default(),
                }
            })
            .collect())
    }

    /// Model names registered in the region (by any process, under any
    /// policy), by region model id.
    /// What a table of quota leases holds now (`None` for a local table).
    pub fn lease_table_stats(&self, now_ms: u64) -> Result<Option<LeaseTableStats>, Error> {
        let now = instant(now_ms)?;
        let region = self.region();
        if !region.leases() {
            return Ok(None);
        }
        let mut t = LeaseTableStats::default();
        for e in entries(region) {
            let v = e.state.view(now, self.skew_minutes());
            if v.minute_count > 0 || v.day_count > 0 {
                t.keys_holding += 1;
                t.minute_units_held += v.minute_count as u64;
                t.day_units_held += v.day_count as u64;
            }
            let down = State::unpack(region.side(e.index).down.load(Acquire));
            if down.gen == e.state.gen && down.day == now.day && down.day_count > 0 {
                t.keys_down += 1;
                t.down_admitted_today += down.day_count as u64;
            }
        }
        Ok(Some(t))
    }

    /// The token windows' totals at `now_ms` (`None` for a table formatted
    /// before 0.4, which has no token windows). Walks the whole table.
    pub fn token_table_stats(&self, now_ms: u64) -> Result<Option<TokenTableStats>, Error> {
        let now = instant(now_ms)?;
        let region = self.region();
        if !region.units() {
            return Ok(None);
        }
        let mut t = TokenTableStats::default();
        for e in entries(region) {
            let (m, d) = token_counts(region, e.index, e.state.gen, now, self.skew_minutes());
            if d > 0 || m > 0 {
                t.keys += 1;
                t.minute += m as u64;
                t.day += d as u64;
            }
        }
        Ok(Some(t))
    }

    /// The models the region has registered, by id, whatever the policy.
    pub fn region_models(&self) -> Vec<(u16, String)> {
        (0..MODELS_MAX as u16)
            .filter_map(|id| {
                self.region()
                    .model_name(id)
                    .map(|n| (id, String::from_utf8_lossy(&n).into_owned()))
            })
            .collect()
    }

    /// When the region was formatted, epoch milliseconds.
    pub fn created_ms(&self) -> u64 {
        self.region().created_ms()
    }

    /// Walks every slot and checks the slot protocol's invariants at
    /// `now_ms`. Exact on a quiet table; on a busy one each slot is read
    /// consistently (see `read_pair`) and a suspected duplicate is re-read
    /// before it is reported, so live traffic does not raise false alarms.
    pub fn verify(&self, now_ms: u64) -> VerifyReport {
        let region = self.region();
        let now = Instant::from_ms(now_ms);
        let mut r = VerifyReport {
            slots: region.slot_count(),
            ..VerifyReport::default()
        };
        let mut models = [false; MODELS_MAX];
        for (id, seen) in models.iter_mut().enumerate() {
            *seen = region.model_name(id as u16).is_some();
        }
        r.models = models.iter().filter(|&&m| m).count() as u32;
        let mut seen: HashMap<u128, u32> = HashMap::new();
        let mut dups: Vec<(u128, u32, u32)> = Vec::new();
        for i in 0..region.slot_count() as usize {
            let bad = |r: &mut VerifyReport, m: String| {
                r.problems.push(Problem {
                    slot: Some(i as u32),
                    message: m,
                })
            };
            let Some((ident, word)) = read_pair(region, i) else {
                // Changed 64 times in a row while we looked: alive, not broken.
                continue;
            };
            let s = State::unpack(word);
            if ident == 0 {
                r.never_used += 1;
                // A binder killed after opening a never-used slot leaves it
                // at generation 1 with no counts: still free for anyone.
                // (dated the moment it was opened).
                let opened = s.gen == 1 && s.minute_count == 0 && s.day_count == 0;
                if s != State::default() && !opened {
                    bad(
                        &mut r,
                        format!("never bound, yet its state word is not empty ({s:?})"),
                    );
                }
                continue;
            }
            let gen = ident as u16;
            let id = ident >> 16;
            let (model_id, len) = id_parts(id);
            if id == 0 || len == 0 || len > ACCOUNT_MAX {
                bad(
                    &mut r,
                    format!("ident word holds no valid key (account length {len})"),
                );
                continue;
            }
            if (model_id as usize) >= MODELS_MAX || !models[model_id as usize] {
                bad(
                    &mut r,
                    format!("key's model id {model_id} is not registered in the model table"),
                );
            }
            if s.gen == gen.wrapping_add(1) {
                r.open += 1;
                // Opened slots are dated when opened (slot::locate), but
                // hold no counts until bound.
                if s.minute_count != 0 || s.day_count != 0 {
                    bad(&mut r, format!("open slot holds counts ({s:?})"));
                }
                continue;
            }
            if s.gen != gen {
                bad(
                    &mut r,
                    format!(
                        "state generation {} is neither the binding's ({gen}) nor the next",
                        s.gen
                    ),
                );
                continue;
            }
            r.bound += 1;
            if s.minute as u32 >= MINUTES_PER_DAY {
                bad(
                    &mut r,
                    format!("minute of day {} is not below 1440", s.minute),
                );
            }
            if let Some(now) = now {
                if s.day > now.day.saturating_add(1) {
                    bad(
                        &mut r,
                        format!(
                            "counts dated day {} but today is day {} (a clock far ahead, or damage)",
                            s.day, now.day
                        ),
                    );
                }
                if !s.stale(now) {
                    r.live += 1;
                }
            }
            if s.minute_count > s.day_count && s.day != 0 {
                bad(
                    &mut r,
                    format!(
                        "minute count {} exceeds its day count {}",
                        s.minute_count, s.day_count
                    ),
                );
            }
            match verified_name(region, i, ident) {
                None => r.unnamed += 1,
                Some(name) => {
                    if let Some(m) =
                        unreachable(region, i, &key::hash(region.seed(), &name, model_id))
                    {
                        bad(&mut r, m);
                    }
                }
            }
            if let Some(&j) = seen.get(&id) {
                dups.push((id, j, i as u32));
            } else {
                seen.insert(id, i as u32);
            }
        }
        for (id, a, b) in dups {
            // Re-read both: a key whose old slot was rebound while we walked
            // can look doubled for an instant; a real duplicate stays.
            let still = |k: u32| {
                read_pair(region, k as usize)
                    .is_some_and(|(ident, word)| ident >> 16 == id && word as u16 == ident as u16)
            };
            if still(a) && still(b) {
                r.problems.push(Problem {
                    slot: Some(b),
                    message: format!(
                        "duplicate: the key bound here is also bound in slot {a} (its counts are split)"
                    ),
                });
            }
        }
        if region.has_in_flight() {
            verify_in_flight(region, &mut r);
        }
        if r.unnamed > 0 {
            r.notes.push(format!(
                "{} bound slot{} without an account name (binder stopped before writing it): counts work, but operator views cannot name {} and resize cannot carry {}",
                r.unnamed,
                if r.unnamed == 1 { "" } else { "s" },
                if r.unnamed == 1 { "it" } else { "them" },
                if r.unnamed == 1 { "it" } else { "them" },
            ));
        }
        r
    }

    /// Zeroes the minute and day counts of `account` on `model` (or on every
    /// model the region knows, if `None`), keeping each slot's binding and
    /// generation. Safe while other processes decide: one CAS per key, and
    /// requests landing meanwhile are counted after it. Returns how many
    /// keys had a slot.
    pub fn reset(&self, account: &[u8], model: Option<&[u8]>) -> Result<u32, Error> {
        self.writable()?;
        if account.is_empty() || account.len() > ACCOUNT_MAX {
            return Err(Error::Account);
        }
        let region = self.region();
        let ids: Vec<u16> = match model {
            Some(m) => region.find_model(m).into_iter().collect(),
            None => (0..MODELS_MAX as u16)
                .filter(|&id| region.model_name(id).is_some())
                .collect(),
        };
        let mut n = 0;
        for id in ids {
            let key = key::hash(region.seed(), account, id);
            if let Some((i, gen)) = slot::find(region, &key) {
                let zeroed = slot::update(region, i, gen, |s| State {
                    minute_count: 0,
                    day_count: 0,
                    ..s
                });
                n += zeroed as u32;
            }
        }
        Ok(n)
    }

    /// Creates a new region file at `new_path` with `slots` slots and the
    /// same policy, and carries every live (current-day) counter into it.
    /// See [`Limiter::resize_with_progress`].
    pub fn resize(
        &self,
        new_path: impl AsRef<Path>,
        slots: u32,
        now_ms: u64,
    ) -> Result<(Limiter, ResizeReport), Error> {
        self.resize_with_progress(new_path, slots, now_ms, |_, _| {})
    }

    /// As [`Limiter::resize`], calling `progress(slots_done, slots_total)`
    /// now and then while it walks the old table.
    ///
    /// The new table is built under a temporary name beside `new_path` and
    /// linked into place only when complete, so nobody can open it half
    /// filled, and an existing `new_path` is never overwritten. Keys are
    /// re-hashed with the new region's seed; each is bound through the
    /// ordinary decision path and then given its old counts with one CAS.
    /// The carried counts are a snapshot: requests the old table admits
    /// after its key was copied are not carried, so switch proxies over
    /// promptly (or stop them) for an exact hand-over.
    pub fn resize_with_progress(
        &self,
        new_path: impl AsRef<Path>,
        slots: u32,
        now_ms: u64,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(Limiter, ResizeReport), Error> {
        let now = instant(now_ms)?;
        let new_path = new_path.as_ref();
        let shown = new_path.display().to_string();
        if new_path.symlink_metadata().is_ok() {
            return Err(Error::Io {
                path: shown,
                op: "create",
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists; resize never overwrites a region",
                ),
            });
        }
        let tmp = crate::file::temp_beside(new_path, "resize")?;
        let _ = std::fs::remove_file(&tmp);
        let new = Limiter::open(self.policy(), &tmp, slots, true)?;
        let result = self.carry_into(&new, now, &mut progress);
        let result = result.and_then(|report| {
            let (ctmp, cnew) = (crate::file::cpath(&tmp)?, crate::file::cpath(new_path)?);
            if !crate::file::publish(&ctmp, &cnew, new_path)? {
                return Err(Error::Io {
                    path: shown.clone(),
                    op: "link",
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "appeared while resizing; resize never overwrites a region",
                    ),
                });
            }
            Ok(report)
        });
        let _ = std::fs::remove_file(&tmp);
        result.map(|report| (new, report))
    }

    fn carry_into(
        &self,
        new: &Limiter,
        now: Instant,
        progress: &mut impl FnMut(u64, u64),
    ) -> Result<ResizeReport, Error> {
        let old = self.region();
        let dst = new.region();
        let total = old.slot_count() as u64;
        let mut report = ResizeReport::default();
        let mut ids: HashMap<u16, Option<u16>> = HashMap::new();
        let big = Limits {
            rpm: u32::MAX,
            rpd: u32::MAX,
        };
        for i in 0..old.slot_count() as usize {
            if i % 65_536 == 0 {
                progress(i as u64, total);
            }
            let Some(e) = entry_at(old, i) else {
                continue;
            };
            let v = e.state.view(now, self.skew_minutes());
            let (minute, day) = (v.minute_count, v.day_count);
            if e.state.stale(now) || (minute == 0 && day == 0) {
                report.stale += 1;
                continue;
            }
            let Some(account) = e.account else {
                report.unnamed += 1;
                continue;
            };
            let new_id = *ids.entry(e.model_id).or_insert_with(|| {
                old.model_name(e.model_id)
                    .filter(|name| !name.is_empty() && name.len() <= MODEL_NAME_MAX)
                    .and_then(|name| dst.model_id(&name))
            });
            let Some(new_id) = new_id else {
                report.unknown_model += 1;
                continue;
            };
            let key = key::hash(dst.seed(), &account, new_id);
            // Bind through the decision path itself (one request of cost 1),
            // then replace that state with the carried one.
            slot::decide(dst, &key, &account, big, 1, now, self.skew_minutes()).map_err(|_| {
                Error::Invalid("the new table is too small for the live keys: nothing was created")
            })?;
            let (j, gen) = slot::find(dst, &key).ok_or(Error::Invalid(
                "a key bound in the new table could not be found again",
            ))?;
            let carried = e.state;
            slot::update(dst, j, gen, |_| carried);
            report.carried += 1;
        }
        progress(total, total);
        Ok(report)
    }
}

/// Read-side views for the operator command's `inspect`.
impl Limiter {
    /// The counts of one (account, model) key as stored, at `now_ms`
    /// (past windows read as 0), without binding or registering anything:
    /// `None` if the key has no slot (never seen, or its slot was since
    /// reused) or no process registered the model. Unlike a peek through
    /// [`Limiter::check`], counts are not capped at any limit, and any
    /// model the region knows can be asked about, whatever the policy.
    pub fn key_usage(
        &self,
        account: &[u8],
        model: &[u8],
        now_ms: u64,
    ) -> Result<Option<KeyUsage>, Error> {
        if account.is_empty() || account.len() > ACCOUNT_MAX {
            return Err(Error::Account);
        }
        let now = instant(now_ms)?;
        let region = self.region();
        let Some(id) = region.find_model(model) else {
            return Ok(None);
        };
        let key = key::hash(region.seed(), account, id);
        let Some((i, _)) = slot::find(region, &key) else {
            return Ok(None);
        };
        // Re-read as one consistent pair; a slot rebound since `find` is no
        // longer this key's.
        let Some(e) = entry_at(region, i).filter(|e| e.model_id == id) else {
            return Ok(None);
        };
        let v = e.state.view(now, self.skew_minutes());
        // As `usage` (`top`) reads it: a leased slot holds units, not
        // counts (inspect once showed "day 0" where top showed 30).
        let (minute, day) = if region.leases() {
            leased_counts(region, i, v.at, v.minute_count, v.day_count)
        } else {
            (v.minute_count, v.day_count)
        };
        let (tokens_minute, tokens_day) =
            token_counts(region, i, e.state.gen, now, self.skew_minutes());
        let in_flight = in_flight_of(region, &e);
        let holders = if in_flight > 0 {
            holders_by_key(region)
                .remove(&(i as u32, e.state.gen))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Some(KeyUsage {
            slot: i as u32,
            account: Some(account.to_vec()),
            model: Some(String::from_utf8_lossy(model).into_owned()),
            minute,
            day,
            tokens_minute,
            tokens_day,
            in_flight,
            holders,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, Tier};
    use crate::Request;
    use std::sync::atomic::Ordering::Relaxed;

    const NOW: u64 = 1_795_773_600_000; // 2026-11-27T10:00:00Z

    fn limiter() -> Limiter {
        Limiter::new(&Policy::builtin(), 256).unwrap()
    }

    #[test]
    fn usage_names_keys_and_counts() {
        let l = limiter();
        let r = Request::new(b"acct-1", b"DeepSeek-V3.1", Tier::Developer);
        for _ in 0..5 {
            assert!(l.check(&r, NOW).unwrap().allowed);
        }
        let u = l.usage(NOW).unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].account.as_deref(), Some(&b"acct-1"[..]));
        assert_eq!(u[0].model.as_deref(), Some("DeepSeek-V3.1"));
        assert_eq!((u[0].minute, u[0].day), (5, 5));
        let later = l.usage(NOW + 60_000).unwrap();
        assert_eq!((later[0].minute, later[0].day), (0, 5));
        let v = l.verify(NOW);
        assert!(v.ok(), "{:?}", v.problems);
        assert_eq!((v.bound, v.live, v.slots), (1, 1, 256));
        assert_eq!(v.never_used, 255);
    }

    #[test]
    fn key_usage_reads_uncapped_counts_without_binding() {
        let l = limiter();
        let r = Request::new(b"acct-1", b"DeepSeek-V3.1", Tier::Developer).limits(35, 100);
        for _ in 0..31 {
            assert!(l.check(&r, NOW).unwrap().allowed);
        }
        let u = l
            .key_usage(b"acct-1", b"DeepSeek-V3.1", NOW)
            .unwrap()
            .unwrap();
        assert_eq!((u.minute, u.day), (31, 31), "not capped at the policy's 30");
        let later = l.key_usage(b"acct-1", b"DeepSeek-V3.1", NOW + 60_000);
        assert_eq!(later.unwrap().map(|u| (u.minute, u.day)), Some((0, 31)));
        assert!(l
            .key_usage(b"acct-2", b"DeepSeek-V3.1", NOW)
            .unwrap()
            .is_none());
        assert!(l.key_usage(b"acct-1", b"gpt-5", NOW).unwrap().is_none());
        assert!(matches!(l.key_usage(b"", b"x", NOW), Err(Error::Account)));
        assert_eq!(l.usage(NOW).unwrap().len(), 1, "nothing was bound");
    }

    #[test]
    fn reset_zeroes_counts_and_keeps_binding() {
        let l = limiter();
        let a = Request::new(b"acct-1", b"DeepSeek-V3.1", Tier::Developer);
        let b = Request::new(b"acct-1", b"Qwen3-32B", Tier::Developer);
        for _ in 0..30 {
            l.check(&a, NOW).unwrap();
            l.check(&b, NOW).unwrap();
        }
        assert!(!l.check(&a, NOW).unwrap().allowed);
        assert_eq!(l.reset(b"acct-1", Some(b"DeepSeek-V3.1")).unwrap(), 1);
        assert!(l.check(&a, NOW).unwrap().allowed);
        assert!(!l.check(&b, NOW).unwrap().allowed);
        assert_eq!(l.reset(b"acct-1", None).unwrap(), 2);
        assert!(l.check(&b, NOW).unwrap().allowed);
        assert_eq!(l.reset(b"nobody", None).unwrap(), 0);
        assert_eq!(l.reset(b"acct-1", Some(b"gpt-5")).unwrap(), 0);
        assert!(matches!(l.reset(b"", None), Err(Error::Account)));
        assert_eq!(l.usage(NOW).unwrap().len(), 2);
        assert!(l.verify(NOW).ok());
    }

    #[test]
    fn verify_finds_damage() {
        let l = limiter();
        let r = Request::new(b"acct-1", b"DeepSeek-V3.1", Tier::Developer);
        l.check(&r, NOW).unwrap();
        let region = l.region();
        let i = entries(region).next().unwrap().index;
        let slot = region.slot(i);
        let ident = slot.ident.load(Acquire);
        let state = slot.state.load(Acquire);
        // Duplicate the binding into another slot.
        let j = (i + 7) % 256;
        region.slot(j).ident.store(ident, Relaxed);
        region.slot(j).state.store(state, Relaxed);
        let v = l.verify(NOW);
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert!(v.problems[0].message.contains("duplicate"));
        // Break the generation relation there instead.
        let mut s = State::unpack(state);
        s.gen = s.gen.wrapping_add(5);
        region.slot(j).state.store(s.pack(), Relaxed);
        let v = l.verify(NOW);
        assert!(
            v.problems[0].message.contains("generation"),
            "{:?}",
            v.problems
        );
        // Minute out of range.
        let mut s = State::unpack(state);
        s.minute = 1500;
        region.slot(j).state.store(s.pack(), Relaxed);
        region.slot(j).ident.store(ident ^ (1 << 40), Relaxed);
        let v = l.verify(NOW);
        assert!(
            v.problems.iter().any(|p| p.message.contains("1440")),
            "{:?}",
            v.problems
        );
        // The name of that copy does not hash to its (altered) key: a note.
        assert_eq!(v.unnamed, 1);
        region.slot(j).ident.store(0, Relaxed);
        region.slot(j).state.store(0, Relaxed);
        assert!(l.verify(NOW).ok());
    }

    #[test]
    fn verify_accepts_a_dated_open_slot_but_not_counts_in_one() {
        // A binder killed between opening a slot (dated now, nothing
        // counted: slot::locate) and writing its ident leaves this behind.
        let l = limiter();
        let r = Request::new(b"acct-1", b"DeepSeek-V3.1", Tier::Developer);
        l.check(&r, NOW).unwrap();
        let region = l.region();
        let i = entries(region).next().unwrap().index;
        let slot = region.slot(i);
        let bound = State::unpack(slot.state.load(Acquire));
        let open = State {
            gen: bound.gen.wrapping_add(1),
            minute: bound.minute,
            day: bound.day,
            ..State::default()
        };
        slot.state.store(open.pack(), Relaxed);
        let v = l.verify(NOW);
        assert!(v.ok(), "{:?}", v.problems);
        assert_eq!(v.open, 1);
        // A never-used slot opened the same way.
        let j = (i + 1) % 256;
        let fresh = State { gen: 1, ..open };
        region.slot(j).state.store(fresh.pack(), Relaxed);
        assert!(l.verify(NOW).ok());
        // Counts in an open slot are damage.
        slot.state.store(
            State {
                day_count: 3,
                ..open
            }
            .pack(),
            Relaxed,
        );
        let v = l.verify(NOW);
        assert!(
            v.problems
                .iter()
                .any(|p| p.message.contains("open slot holds counts")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn verify_finds_unreachable_keys() {
        const N: usize = 2 * PROBE_MAX; // longer than a probe chain
        let l = Limiter::new(&Policy::builtin(), N as u32).unwrap();
        let r = Request::new(b"acct-1", b"DeepSeek-V3.1", Tier::Developer);
        l.check(&r, NOW).unwrap();
        let region = l.region();
        let i = entries(region).next().unwrap().index;
        let (ident, state) = read_pair(region, i).unwrap();
        let move_to = |j: usize| {
            region.slot(i).ident.store(0, Relaxed);
            region.slot(i).state.store(0, Relaxed);
            region.slot(j).ident.store(ident, Relaxed);
            region.slot(j).state.store(state, Relaxed);
            region.write_name(j, b"acct-1");
        };
        // Two slots on, with never-used slots between: probing stops short.
        move_to((i + 2) % N);
        let v = l.verify(NOW);
        assert!(
            v.problems[0].message.contains("never-used"),
            "{:?}",
            v.problems
        );
        region.slot((i + 2) % N).ident.store(0, Relaxed);
        region.slot((i + 2) % N).state.store(0, Relaxed);
        move_to((i + PROBE_MAX + 10) % N);
        let v = l.verify(NOW);
        assert!(
            v.problems[0].message.contains("probe limit"),
            "{:?}",
            v.problems
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri has no file-backed mmap")]
    fn resize_carries_live_counts() {
        let dir = std::env::temp_dir().join(format!("tg-ops-resize-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let l = limiter();
        for k in 0..40 {
            let acct = format!("acct-{k}");
            let r = Request::new(acct.as_bytes(), b"DeepSeek-V3.1", Tier::Developer);
            for _ in 0..=(k % 7) {
                l.check(&r, NOW).unwrap();
            }
        }
        // Yesterday's key: not carried.
        let r = Request::new(b"old", b"Qwen3-32B", Tier::Developer);
        l.check(&r, NOW - 86_400_000).unwrap();
        let path = dir.join("new.tg");
        let (n, rep) = l.resize(&path, 100, NOW).unwrap();
        assert_eq!(rep.carried, 40);
        assert_eq!(rep.stale, 1);
        let n2 = Limiter::open(&Policy::builtin(), &path, 0, false).unwrap();
        for k in 0..40 {
            let acct = format!("acct-{k}");
            let r = Request::new(acct.as_bytes(), b"DeepSeek-V3.1", Tier::Developer).cost(0);
            let d = n2.check(&r, NOW).unwrap();
            assert_eq!(d.day.remaining, 15_000 - (k % 7 + 1), "{acct}");
        }
        assert!(n.verify(NOW).ok());
        assert_eq!(n.stats(NOW).slots, 100);
        // Never overwrites, and a too-small table creates nothing.
        assert!(matches!(l.resize(&path, 100, NOW), Err(Error::Io { .. })));
        let small = dir.join("small.tg");
        assert!(l.resize(&small, 10, NOW).is_err());
        assert!(!small.exists());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp files left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

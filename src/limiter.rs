//! The limiter: a policy bound to a region. This is the Rust API; the C ABI
//! in `ffi` is a thin layer over it.

use std::path::Path;
use std::sync::Arc;

use crate::decision::{Decision, Ticket};
use crate::error::Error;
use crate::file::{Access, Mapping};
use crate::key::{self, ACCOUNT_MAX};
use crate::policy::{Limits, NoUsage, Policy, Tier, TokenLimits};
use crate::refusals;
use crate::region::{self, HeapMem, Region};
use crate::slot;
use crate::window::Instant;

/// One request to decide.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Account id, 1 to 64 bytes.
    pub account: &'a [u8],
    /// Model id, exactly as in the policy.
    pub model: &'a [u8],
    /// The account's tier, which picks the limits in the policy.
    pub tier: Tier,
    /// Requests this call counts for; 0 = look without counting.
    pub cost: u32,
    /// Explicit requests-per-minute limit; 0 = from the policy.
    pub rpm: u32,
    /// Explicit requests-per-day limit; 0 = from the policy.
    pub rpd: u32,
    /// Tokens this request reserves, on a key with a token limit: its
    /// estimate ([`Policy::estimate_tokens`]). Settled later with
    /// [`Limiter::settle`]. Ignored for keys without a token limit.
    pub tokens: u32,
    /// Explicit tokens-per-minute limit; with `tpd`, a token limit for
    /// this key whatever the policy says. 0 = from the policy.
    pub tpm: u32,
    /// Explicit tokens-per-day limit; 0 = from the policy.
    pub tpd: u32,
    /// The model resolved once by [`Limiter::model`]: when set, it is the
    /// request's model and `model` is not read (no lookup by name).
    pub handle: Option<ModelHandle>,
    /// On a limiter joined to the quota store: rather than wait for a
    /// round trip, fail with [`Error::Pending`] (nothing charged). For an
    /// event loop, which then decides again off the loop. Ignored by local
    /// tables, which never wait.
    pub no_wait: bool,
}

/// A policy model resolved once ([`Limiter::model`]), so that requests for
/// it skip the lookup by name. Valid for the limiter that made it until its
/// policy is replaced (a [`Limiter::share`] sibling makes its own); another
/// limiter's or a stale handle is refused as [`Error::UnknownModel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelHandle(u32);

impl ModelHandle {
    /// The handle as one nonzero number (the C ABI's `model_handle`).
    pub fn raw(self) -> u32 {
        self.0
    }

    /// A handle from [`ModelHandle::raw`]; `None` for 0.
    pub fn from_raw(raw: u32) -> Option<ModelHandle> {
        (raw != 0).then_some(ModelHandle(raw))
    }

    fn new(serial: u16, index: usize) -> ModelHandle {
        ModelHandle((serial as u32) << 16 | (index as u32 + 1))
    }
}

/// Each policy a limiter takes on gets a new serial, so handles made under
/// one policy are told apart from another's.
fn next_serial() -> u16 {
    static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as u16
}

impl<'a> Request<'a> {
    /// A request of cost 1 with the policy's limits.
    pub fn new(account: &'a [u8], model: &'a [u8], tier: Tier) -> Request<'a> {
        Request {
            account,
            model,
            tier,
            cost: 1,
            rpm: 0,
            rpd: 0,
            tokens: 0,
            tpm: 0,
            tpd: 0,
            handle: None,
            no_wait: false,
        }
    }

    /// Tokens this request reserves (see [`Request::tokens`](Request#structfield.tokens)).
    pub fn tokens(mut self, tokens: u32) -> Self {
        self.tokens = tokens;
        self
    }

    /// Token limits from the caller instead of the policy; 0 leaves that
    /// one to the policy.
    pub fn token_limits(mut self, tpm: u32, tpd: u32) -> Self {
        self.tpm = tpm;
        self.tpd = tpd;
        self
    }

    /// The model as a handle from [`Limiter::model`] (`model` is then not
    /// read).
    pub fn handle(mut self, handle: ModelHandle) -> Self {
        self.handle = Some(handle);
        self
    }

    /// Requests this call counts for (default 1; 0 looks without counting).
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    /// Limits from the caller (say, its billing database) instead of the
    /// policy; 0 leaves that one to the policy.
    pub fn limits(mut self, rpm: u32, rpd: u32) -> Self {
        self.rpm = rpm;
        self.rpd = rpd;
        self
    }

    /// Never wait for the quota store: see [`Request::no_wait`](Request#structfield.no_wait).
    pub fn no_wait(mut self) -> Self {
        self.no_wait = true;
        self
    }
}

/// What keeps the region's memory alive; shared by sibling handles (and by
/// the lease layer, which gives units back after the last handle is gone).
pub(crate) enum Backing {
    Heap(#[allow(dead_code)] HeapMem),
    /// The caller's memory: never resized or freed by us.
    Caller,
    File(#[allow(dead_code)] Mapping),
}

/// A value shared by a handle and replaced through `&self` while other
/// threads read it: the limiter's link to the lease layer
/// ([`Limiter::connect`]), which decisions read and tg_limiter_connect and
/// tg_limiter_disconnect replace beside them.
///
/// An [`arc_swap::ArcSwapOption`]: a read is lock-free and, on its fast
/// path, touches no counter shared between threads (a decision pays for no
/// contended `Arc` clone); a replacement never frees what a reader still
/// holds. The replaced value lives until the last reader lets go of it, so
/// its `Drop` runs on whichever thread that is: for the lease layer's
/// `Joined`, a deciding thread may then stop the lease thread and give the
/// units back (each store call under the deadline) before its decision
/// returns. That is the price of a disconnect that never waits for
/// decisions in flight, and it is paid once per link.
#[cfg(any(feature = "leases", test))]
pub(crate) struct Link<T>(arc_swap::ArcSwapOption<T>);

#[cfg(any(feature = "leases", test))]
impl<T> Link<T> {
    pub(crate) fn empty() -> Link<T> {
        Link(arc_swap::ArcSwapOption::empty())
    }

    /// The current value, held for as long as the guard lives (one
    /// decision: a guard is meant to be short-lived).
    #[inline]
    pub(crate) fn load(&self) -> arc_swap::Guard<Option<Arc<T>>> {
        self.0.load()
    }

    /// A new link to the current value, for a sibling handle: replacing
    /// either link later leaves the other as it is.
    pub(crate) fn share(&self) -> Link<T> {
        Link(arc_swap::ArcSwapOption::new(self.0.load_full()))
    }

    /// Puts `value` in place and hands back the one it replaces, which
    /// readers may still hold (see the type's comment).
    pub(crate) fn replace(&self, value: Option<Arc<T>>) -> Option<Arc<T>> {
        self.0.swap(value)
    }
}

/// A rate limiter: a policy over one region. `Send + Sync`: share it by
/// reference or `Arc` between threads; processes share the region itself.
///
/// The decision path reads the policy without any synchronisation, which
/// is why [`Limiter::set_policy`] takes `&mut self`. To change the policy
/// while other threads keep deciding, make a sibling with
/// [`Limiter::share`] (same table, new policy) and switch over to it.
pub struct Limiter {
    region: Region,
    policy: Policy,
    /// The region's id for each of the policy's models, by policy index.
    model_ids: Vec<u16>,
    /// The ids the local decision path reads: `model_ids` on a local table,
    /// empty on a table of quota leases, so that the bounds check every
    /// decision makes anyway sends a leased table's decisions to the lease
    /// layer at no cost to a local table's.
    local_ids: Vec<u16>,
    /// Tells this policy's model handles from others' (see [`ModelHandle`]).
    serial: u16,
    /// Opened with [`Limiter::open_read_only`]: operator writes are refused.
    read_only: bool,
    /// The clock-fault bound in whole minutes, rounded up (see
    /// [`Limiter::set_max_skew`]).
    skew_minutes: u32,
    /// The table is formatted for quota leases (a header flag, fixed at
    /// formatting): decisions go to the lease layer, never the local path.
    leased: bool,
    /// The lease layer, once joined to the store ([`Limiter::connect`]);
    /// shared by sibling handles. Replaced through `&self` (the C ABI's
    /// tg_limiter_connect and tg_limiter_disconnect run beside decisions on
    /// the same handle), so it is a [`Link`], never a plain field.
    #[cfg(feature = "leases")]
    joined: Link<crate::lease::Joined>,
    /// This process's holder index in the table, for in-flight units.
    place: crate::in_flight::Place,
    // Declared last so the region view is dropped before its memory.
    _backing: Arc<Backing>,
}

/// Table usage, for operators and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Slots in the region.
    pub slots: u32,
    /// Slots holding counts for the current day.
    pub used: u32,
    /// Decisions refused for want of a free slot, since formatting.
    pub table_full: u64,
    /// Decisions that found counts dated beyond the clock-fault bound (a
    /// wrong clock, since corrected) and re-dated them, since formatting.
    pub clock_faults: u64,
    /// Bytes the region occupies.
    pub bytes: usize,
    /// The region's layout version ([`LAYOUT_VERSION`](crate::LAYOUT_VERSION)).
    pub layout_version: u32,
    /// Bytes each slot takes, as this table was formatted (older tables
    /// lack the areas added since).
    pub bytes_per_slot: usize,
    /// Requests in flight and their releases, in a table with the
    /// in-flight areas.
    pub in_flight: Option<InFlightStats>,
}

/// A table's requests in flight now, and its releases by cause since
/// formatting (every process on the table counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlightStats {
    /// Admitted and not yet released, over every key.
    pub in_use: u64,
    /// Released by requests that ran to their end.
    pub completed: u64,
    /// Released by requests that ended otherwise (client gone, upstream
    /// error, a cancelled task, a dropped future).
    pub aborted: u64,
    /// Given back from processes found dead.
    pub reclaimed: u64,
    /// Admissions refused for in-flight.
    pub refused: u64,
}

impl Limiter {
    /// A limiter whose region is one heap allocation of
    /// [`region_size`](crate::region_size)`(slots)` bytes: a local table.
    /// [`LimiterOptions`](crate::LimiterOptions) makes the other formats.
    pub fn new(policy: &Policy, slots: u32) -> Result<Limiter, Error> {
        Limiter::new_as(policy, slots, false)
    }

    /// [`Limiter::new`], formatted for quota leases when `leases`.
    pub(crate) fn new_as(policy: &Policy, slots: u32, leases: bool) -> Result<Limiter, Error> {
        let len = region::size_with(slots, leases)
            .ok_or(Error::Invalid("slot count must be 1 to 2^30"))?;
        let mem = HeapMem::new(len).ok_or(Error::Invalid("cannot allocate the region"))?;
        // SAFETY: `mem` is a fresh, zeroed, exclusively owned allocation of
        // `len` bytes, kept alive by the limiter's backing.
        let region =
            unsafe { Region::format_as(mem.as_ptr(), mem.len(), crate::now_ms(), true, leases) }?;
        Limiter::with(policy, region, Backing::Heap(mem))
    }

    /// As [`Limiter::new`], formatted for quota leases shared across hosts:
    /// the table has the lease side area (64 bytes more per slot) and its
    /// decisions need [`Limiter::connect`] first (until then they are
    /// [`Error::NotJoined`]).
    #[deprecated(
        since = "0.4.0",
        note = "use `LimiterOptions::new().leases(true).build(policy, slots)`"
    )]
    pub fn new_for_leases(policy: &Policy, slots: u32) -> Result<Limiter, Error> {
        Limiter::new_as(policy, slots, true)
    }

    /// As [`Limiter::open`], for a table of quota leases: a file it creates
    /// is formatted for leases; an existing file must be one
    /// ([`Error::NotLeased`] otherwise).
    #[deprecated(
        since = "0.4.0",
        note = "use `LimiterOptions::new().leases(true).create(create).open(policy, path, slots)`"
    )]
    pub fn open_for_leases(
        policy: &Policy,
        path: impl AsRef<Path>,
        slots: u32,
        create: bool,
    ) -> Result<Limiter, Error> {
        Limiter::open_as(policy, path.as_ref(), slots, create, true)
    }

    /// [`Limiter::open`]; with `leases`, a file it creates is formatted for
    /// quota leases and an existing file must be one ([`Error::NotLeased`]
    /// otherwise). Every process that opens the file sees the header's flag
    /// and decides through the lease layer only.
    pub(crate) fn open_as(
        policy: &Policy,
        path: &Path,
        slots: u32,
        create: bool,
        leases: bool,
    ) -> Result<Limiter, Error> {
        let access = Access::Write { create };
        let (mapping, region) = crate::file::open_as(path, slots, access, leases)?;
        if leases && !region.leases() {
            return Err(Error::NotLeased);
        }
        Limiter::with(policy, region, Backing::File(mapping))
    }

    /// Whether the table is formatted for quota leases (see
    /// [`LimiterOptions::leases`](crate::LimiterOptions::leases)): fixed
    /// when it was formatted, read from its header by every later handle.
    pub fn is_leased(&self) -> bool {
        self.leased
    }

    /// Formats caller memory as an empty region holding as many slots as
    /// fit ([`slots_for`](crate::region_slots_for)). The memory stays the
    /// caller's: we never resize or free it.
    ///
    /// # Safety
    /// `mem` must be valid for reads and writes of `len` bytes, aligned to
    /// [`REGION_ALIGN`](crate::REGION_ALIGN), not in use by another limiter
    /// while this formats it, and must outlive the limiter. Other processes
    /// may map the same memory (MAP_SHARED) and attach to it.
    pub unsafe fn init_in(policy: &Policy, mem: *mut u8, len: usize) -> Result<Limiter, Error> {
        // SAFETY: forwarded from this function's contract.
        unsafe { Limiter::init_in_as(policy, mem, len, false) }
    }

    /// [`Limiter::init_in`], formatted for quota leases when `leases`: as
    /// many slots as fit with their side area
    /// ([`region_size_for_leases`](crate::region_size_for_leases)).
    ///
    /// # Safety
    /// As for [`Limiter::init_in`].
    pub(crate) unsafe fn init_in_as(
        policy: &Policy,
        mem: *mut u8,
        len: usize,
        leases: bool,
    ) -> Result<Limiter, Error> {
        // SAFETY: forwarded from this function's contract.
        let region = unsafe { Region::format_as(mem, len, crate::now_ms(), false, leases) }?;
        Limiter::with(policy, region, Backing::Caller)
    }

    /// As [`Limiter::init_in`], formatted for quota leases (see
    /// [`Limiter::new_for_leases`]).
    ///
    /// # Safety
    /// As for [`Limiter::init_in`].
    #[deprecated(
        since = "0.4.0",
        note = "use `LimiterOptions::new().leases(true).init_in(policy, mem, len)`"
    )]
    pub unsafe fn init_in_for_leases(
        policy: &Policy,
        mem: *mut u8,
        len: usize,
    ) -> Result<Limiter, Error> {
        // SAFETY: forwarded from this function's contract.
        unsafe { Limiter::init_in_as(policy, mem, len, true) }
    }

    /// Uses memory already formatted by [`Limiter::init_in`] (in this
    /// process or another), after validating magic, version and size.
    /// The format (local or quota leases) is the header's.
    ///
    /// # Safety
    /// As for [`Limiter::init_in`], except that other limiters may be using
    /// the region at the same time (that is the point).
    pub unsafe fn attach(policy: &Policy, mem: *mut u8, len: usize) -> Result<Limiter, Error> {
        // SAFETY: forwarded from this function's contract.
        let region = unsafe { Region::attach(mem, len) }?;
        Limiter::with(policy, region, Backing::Caller)
    }

    /// Maps a region file shared by every process that opens the same path
    /// (under /dev/shm for speed, or on disk to survive reboots). With
    /// `create`, a missing file is created with `slots` slots, race-free:
    /// concurrent openers all end up on one formatted region. `slots` = 0
    /// accepts whatever size the file has.
    pub fn open(
        policy: &Policy,
        path: impl AsRef<Path>,
        slots: u32,
        create: bool,
    ) -> Result<Limiter, Error> {
        Limiter::open_as(policy, path.as_ref(), slots, create, false)
    }

    /// Maps an existing region file for reading only, for operator views:
    /// the descriptor is read-only and the mapping private, so nothing done
    /// through this handle (not even a decision) reaches the file, and the
    /// policy's model names are looked up, never registered. Counts read
    /// are the live ones at the moment each page is first read.
    /// [`Limiter::reset`] through it is [`Error::ReadOnly`].
    pub fn open_read_only(policy: &Policy, path: impl AsRef<Path>) -> Result<Limiter, Error> {
        let (mapping, region) = crate::file::open(path.as_ref(), 0, Access::ReadOnly)?;
        Ok(Limiter {
            region,
            policy: policy.clone(),
            model_ids: found_ids(&region, policy),
            local_ids: local_ids(&region, policy, found_ids(&region, policy)),
            serial: next_serial(),
            read_only: true,
            skew_minutes: skew_minutes(policy.max_skew_seconds()),
            leased: region.leases(),
            #[cfg(feature = "leases")]
            joined: Link::empty(),
            place: Default::default(),
            _backing: Arc::new(Backing::File(mapping)),
        })
    }

    /// Opens the region file at `path` as [`Limiter::open_read_only`] does,
    /// and carries its live counts into a new region file (see
    /// [`Limiter::resize_with_progress`]). Unlike every other open, this one
    /// also reads a region of the previous layout version (2), which is how a
    /// table made by an older library is moved to this one without losing
    /// the day's counts.
    pub fn resize_file(
        policy: &Policy,
        path: impl AsRef<Path>,
        new_path: impl AsRef<Path>,
        slots: u32,
        now_ms: u64,
        progress: impl FnMut(u64, u64),
    ) -> Result<(Limiter, crate::ResizeReport), Error> {
        let (mapping, region) = crate::file::open(path.as_ref(), 0, Access::Migrate)?;
        if region.leases() {
            // Its counts are lease units, which only the store can settle.
            return Err(Error::Invalid(
                "a table of quota leases cannot be resized: make a new one and connect it",
            ));
        }
        // Never decides: only the operator walk reads it, which knows both
        // layouts. The policy supplies the skew bound and nothing else.
        let old = Limiter {
            region,
            policy: policy.clone(),
            model_ids: found_ids(&region, policy),
            local_ids: local_ids(&region, policy, found_ids(&region, policy)),
            serial: next_serial(),
            read_only: true,
            skew_minutes: skew_minutes(policy.max_skew_seconds()),
            leased: region.leases(),
            #[cfg(feature = "leases")]
            joined: Link::empty(),
            place: Default::default(),
            _backing: Arc::new(Backing::File(mapping)),
        };
        old.resize_with_progress(new_path, slots, now_ms, progress)
    }

    /// Whether this handle was opened with [`Limiter::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn with(policy: &Policy, region: Region, backing: Backing) -> Result<Limiter, Error> {
        let model_ids = model_ids(&region, policy)?;
        Ok(Limiter {
            region,
            policy: policy.clone(),
            local_ids: local_ids(&region, policy, model_ids.clone()),
            model_ids,
            serial: next_serial(),
            read_only: false,
            skew_minutes: skew_minutes(policy.max_skew_seconds()),
            leased: region.leases(),
            #[cfg(feature = "leases")]
            joined: Link::empty(),
            place: Default::default(),
            _backing: Arc::new(backing),
        })
    }

    /// A second handle on the same table with another policy: counters are
    /// shared, limits are the new policy's. The table's memory lives until
    /// the last handle is dropped.
    pub fn share(&self, policy: &Policy) -> Result<Limiter, Error> {
        Ok(Limiter {
            region: self.region,
            policy: policy.clone(),
            model_ids: self.ids_for(policy)?,
            local_ids: local_ids(&self.region, policy, self.ids_for(policy)?),
            serial: next_serial(),
            read_only: self.read_only,
            skew_minutes: skew_minutes(policy.max_skew_seconds()),
            leased: self.leased,
            #[cfg(feature = "leases")]
            joined: self.joined.share(),
            place: Default::default(),
            _backing: self._backing.clone(),
        })
    }

    /// Replaces the policy. Counters are kept: they are counts, compared
    /// against whatever limits are in force.
    pub fn set_policy(&mut self, policy: &Policy) -> Result<(), Error> {
        self.model_ids = self.ids_for(policy)?;
        self.local_ids = local_ids(&self.region, policy, self.model_ids.clone());
        self.policy = policy.clone();
        self.serial = next_serial();
        self.skew_minutes = skew_minutes(policy.max_skew_seconds());
        Ok(())
    }

    /// Sets the clock-fault bound, overriding the policy's
    /// `[clock] max_skew_seconds` (default 60): counts dated further than
    /// `seconds` ahead of a decision's `now` are taken as the current
    /// window's, and counted in [`Stats::clock_faults`]. Windows are whole
    /// minutes, so the bound is rounded up to one. At most a day.
    pub fn set_max_skew(&mut self, seconds: u32) -> Result<(), Error> {
        if seconds > crate::policy::MAX_SKEW_SECONDS_MAX {
            return Err(Error::Invalid("max skew is at most 86400 seconds"));
        }
        self.skew_minutes = skew_minutes(seconds);
        Ok(())
    }

    /// The latest refusals recorded in the table (by any process), oldest
    /// first; a key refused again within one second is recorded once.
    pub fn refusals(&self) -> Vec<crate::Refusal> {
        refusals::read(&self.region)
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Decides one request at `now_ms` (epoch milliseconds). `Ok` either
    /// way; [`Decision::allowed`] says which. Allocates nothing, takes no
    /// lock, makes no syscall.
    // Inlined into tg_check and callers' loops: the call and the moves of
    // its large result cost more than the decision's own arithmetic.
    #[inline(always)]
    // Lazily built errors: an eager one would be built and dropped on every
    // successful decision.
    #[allow(clippy::unnecessary_lazy_evaluations)]
    pub fn check(&self, req: &Request<'_>, now_ms: u64) -> Result<Decision, Error> {
        self.check_as(req, now_ms, true)
    }

    /// [`Limiter::check`]; unless `admits`, a key with an in-flight limit
    /// is [`Error::NoInFlight`], decided nothing: for callers that would
    /// drop the admission (the C ABI's tg_check, which has nowhere to put
    /// it).
    #[inline(always)]
    #[allow(clippy::unnecessary_lazy_evaluations)]
    pub(crate) fn check_as(
        &self,
        req: &Request<'_>,
        now_ms: u64,
        admits: bool,
    ) -> Result<Decision, Error> {
        if req.account.is_empty() || req.account.len() > ACCOUNT_MAX {
            return Err(Error::Account);
        }
        let now = Instant::from_ms(now_ms)
            .ok_or_else(|| Error::Invalid("now_ms is past the year 47000"))?;
        let model = match req.handle {
            None => self.policy.model_index(req.model),
            Some(h) => self.handle_index(h),
        }
        .ok_or_else(|| Error::UnknownModel)?;
        let limits = resolve(&self.policy, req, model)?;
        if req.cost > limits.rpm.min(limits.rpd) {
            return Err(Error::CostTooLarge);
        }
        // A key with token limits takes the slow path below: with the
        // policy's, `local_ids` is empty (as on a table of quota leases),
        // so the bounds check every decision makes anyway sends it there;
        // with the caller's, this one test does.
        let Some(&model_id) = self.local_ids.get(model).filter(|_| req.tpm == 0) else {
            // By value: a reference would keep the request in memory on
            // the fast path too, only for this call.
            return self.check_slow(*req, now_ms, now, model, limits, admits);
        };
        self.check_local(req, now_ms, now, model_id, limits)
    }

    /// A request-only decision on a local table: one CAS.
    #[inline(always)]
    fn check_local(
        &self,
        req: &Request<'_>,
        now_ms: u64,
        now: Instant,
        model_id: u16,
        limits: Limits,
    ) -> Result<Decision, Error> {
        let key = key::hash(self.region.seed(), req.account, model_id);
        let outcome = slot::decide(
            &self.region,
            &key,
            req.account,
            limits,
            req.cost,
            now,
            self.skew_minutes,
        )
        .map_err(|_| Error::TableFull)?;
        Ok(self.local_decision(req, &key, model_id, outcome, limits, now_ms))
    }

    /// A local request-only decision's answer, its refusal recorded.
    #[inline(always)]
    fn local_decision(
        &self,
        req: &Request<'_>,
        key: &key::KeyHash,
        model_id: u16,
        outcome: slot::Outcome,
        limits: Limits,
        now_ms: u64,
    ) -> Decision {
        if !outcome.allowed {
            let fingerprint = key.id as u32;
            refusals::record(
                &self.region,
                fingerprint,
                req.account,
                model_id,
                &outcome,
                limits,
                0,
                now_ms,
            );
        }
        Decision::new(outcome, limits, now_ms)
    }

    /// Every decision but a request-only one on a local table: a key with
    /// token limits, a table of quota leases, or a local key without
    /// token limits under a policy that has some.
    #[cold]
    #[inline(never)]
    fn check_slow(
        &self,
        req: Request<'_>,
        now_ms: u64,
        now: Instant,
        model: usize,
        limits: Limits,
        admits: bool,
    ) -> Result<Decision, Error> {
        if let Some(max) = self.policy.max_in_flight(req.tier, model, req.account) {
            if !admits {
                return Err(Error::NoInFlight(
                    "the key has an in-flight limit: decide it with a call that hands out the admission to release (tg_check_units, tg_answer_request)",
                ));
            }
            return self.check_in_flight(&req, now_ms, now, model, limits, max);
        }
        self.check_windows(&req, now_ms, now, model, limits)
    }

    /// A decision on the windows alone (requests, and tokens if the key
    /// has token limits).
    fn check_windows(
        &self,
        req: &Request<'_>,
        now_ms: u64,
        now: Instant,
        model: usize,
        limits: Limits,
    ) -> Result<Decision, Error> {
        let req = *req;
        if let Some(tl) = resolve_tokens(&self.policy, &req, model) {
            return self.check_tokens(&req, now_ms, now, model, limits, tl);
        }
        if !self.leased {
            let model_id = self.model_ids[model];
            return self.check_local(&req, now_ms, now, model_id, limits);
        }
        self.check_leased(&req, now_ms, now, model, limits, None)
    }

    /// A decision on a key with an in-flight limit of `max`: a unit taken
    /// first (refused: nothing charged anywhere), then the windows, and
    /// the unit given back if they refuse. A peek takes nothing and shows
    /// the count (on a leased table, this host's). On a leased table the
    /// unit is also the store's (`lease::in_flight`).
    fn check_in_flight(
        &self,
        req: &Request<'_>,
        now_ms: u64,
        now: Instant,
        model: usize,
        limits: Limits,
        max: u16,
    ) -> Result<Decision, Error> {
        use crate::slot::in_flight::{Ledger, Refused, Word};
        if !self.region.has_in_flight() {
            return Err(Error::NoInFlight(
                "the table has no in-flight areas (formatted before them): carry it over with `tollgate resize`",
            ));
        }
        // On a table of quota leases the store holds the key's count
        // across hosts (`lease::in_flight`); the table's ledger counts
        // this host's admissions, so that a process that dies holding one
        // is reclaimed by the sweep, and sizes the down policy's share.
        #[cfg(feature = "leases")]
        let link = self.joined.load();
        #[cfg(feature = "leases")]
        let across = if self.leased {
            let Some(j) = link.as_ref() else {
                return Err(Error::NotJoined);
            };
            let name = self.policy.models()[model].name.as_str();
            let tag = crate::store::Tag::for_unit(req.account, name, crate::store::Unit::InFlight);
            // Every admission asks the store: a caller that must not wait
            // makes it again on a thread that may.
            if req.no_wait && req.cost > 0 && j.in_flight_waits(&tag) {
                return Err(Error::Pending);
            }
            Some((j.clone(), tag))
        } else {
            None
        };
        #[cfg(not(feature = "leases"))]
        if self.leased {
            return Err(Error::NotJoined);
        }
        let model_id = self.model_ids[model];
        let key = key::hash(self.region.seed(), req.account, model_id);
        let shown = |d: &mut Decision, in_use: u16, admission| {
            d.in_flight = Some(crate::decision::InFlight {
                limit: max as u32,
                in_use: in_use as u32,
                admission,
            });
        };
        let found = slot::locate_from_home(&self.region, &key, req.account, now, req.cost > 0)
            .map_err(|_| Error::TableFull)?;
        let Some((i, gen)) = found.filter(|_| req.cost > 0) else {
            // A peek (or a key never seen): the count as it stands.
            let in_use = found.map_or(0, |(i, gen)| {
                let w = Word::unpack(
                    self.region
                        .in_flight(i)
                        .load(std::sync::atomic::Ordering::Acquire),
                );
                if w.gen == gen {
                    w.count
                } else {
                    0
                }
            });
            let mut d = self.check_windows(req, now_ms, now, model, limits)?;
            shown(&mut d, in_use, None);
            return Ok(d);
        };
        let holder = self.place.get(&self.region).map_err(|e| match e {
            crate::in_flight::PlaceError::NoIdentity => Error::NoInFlight(
                "this process cannot read /proc/self/stat, which names it as a holder",
            ),
            crate::in_flight::PlaceError::HoldersFull => {
                Error::NoInFlight("every holder entry of the table names a live process")
            }
        })?;
        let ledger = Ledger::new(self.region.ledger());
        let cell = self.region.in_flight(i);
        #[cfg(feature = "leases")]
        let local_max = if across.is_some() { u16::MAX } else { max };
        #[cfg(not(feature = "leases"))]
        let local_max = max;
        let mut acquired = ledger.acquire(cell, i as u32, gen, local_max, holder);
        if matches!(acquired, Err(Refused::Full { .. }))
            && self.place.sweep_after_refusal(&self.region, now_ms).units > 0
        {
            acquired = ledger.acquire(cell, i as u32, gen, local_max, holder);
        }
        #[cfg(feature = "leases")]
        if let (Some((j, tag)), Ok((entry, local))) = (&across, acquired) {
            use crate::lease::InFlightAnswer;
            let answer = j.admit_in_flight(tag, entry, local, max);
            let shown = |n: u32| n.min(u16::MAX as u32) as u16;
            acquired = match answer {
                Ok(InFlightAnswer::Admitted(n)) => Ok((entry, shown(n))),
                Ok(InFlightAnswer::Refused(n)) => {
                    ledger.release(entry, |s| self.region.in_flight(s as usize));
                    Err(Refused::Full { count: shown(n) })
                }
                Err(e) => {
                    ledger.release(entry, |s| self.region.in_flight(s as usize));
                    return Err(e);
                }
            };
        }
        let (entry, in_use) = match acquired {
            Ok(a) => a,
            Err(Refused::Full { count }) => {
                self.region
                    .in_flight_counters()
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Refused for in-flight: the windows only looked at.
                let look = Request { cost: 0, ..*req };
                let mut d = self.check_windows(&look, now_ms, now, model, limits)?;
                d.allowed = false;
                d.limited_by = slot::LimitedBy::InFlight;
                // No window resets: any request that ends frees a unit.
                d.retry_after = 0;
                if let Some(t) = d.tokens.as_mut() {
                    t.reserved = 0;
                    t.ticket = None;
                }
                shown(&mut d, count, None);
                let used = |w: &crate::decision::Window| w.limit.saturating_sub(w.remaining);
                let seen = slot::Outcome {
                    allowed: false,
                    limited_by: slot::LimitedBy::InFlight,
                    at: now,
                    minute_count: used(&d.minute),
                    day_count: used(&d.day),
                    clock_fault: false,
                };
                refusals::record(
                    &self.region,
                    key.id as u32,
                    req.account,
                    model_id,
                    &seen,
                    limits,
                    refusals::in_flight_extra(count.into(), max.into()),
                    now_ms,
                );
                return Ok(d);
            }
            Err(Refused::LedgerFull) => {
                return Err(Error::NoInFlight(
                    "every ledger entry is in use: the table holds as many requests in flight as it has slots",
                ))
            }
        };
        let admission = crate::decision::Admission {
            idx: entry.idx,
            seq: entry.seq,
        };
        // A local request-only key is decided at the slot just located
        // (its unit held there keeps it bound): no second walk.
        let windows = if !self.leased && resolve_tokens(&self.policy, req, model).is_none() {
            slot::decide_at(
                &self.region,
                (i, gen),
                &key,
                req.account,
                limits,
                req.cost,
                now,
                self.skew_minutes,
            )
            .map_err(|_| Error::TableFull)
            .map(|o| self.local_decision(req, &key, model_id, o, limits, now_ms))
        } else {
            self.check_windows(req, now_ms, now, model, limits)
        };
        match windows {
            Ok(mut d) if d.allowed => {
                shown(&mut d, in_use, Some(admission));
                Ok(d)
            }
            other => {
                // Refused by a window (or failed): the unit goes back.
                ledger.release(entry, |s| self.region.in_flight(s as usize));
                #[cfg(feature = "leases")]
                if let Some((j, tag)) = across {
                    j.unhold_in_flight(Some(tag), entry);
                }
                let mut d = other?;
                shown(&mut d, in_use - 1, None);
                Ok(d)
            }
        }
    }

    /// Releases an admission's in-flight unit, once its request has ended,
    /// whatever ended it. Returns the key's requests still in flight. A
    /// second release of the same admission changes nothing and is
    /// [`Error::Invalid`]. `how` it ended is counted ([`Stats::in_flight`]):
    /// [`Ending::Cut`] as aborted, the others as completed; pass the
    /// ending a token settle gets.
    pub fn release(
        &self,
        admission: crate::decision::Admission,
        how: Ending,
    ) -> Result<u32, Error> {
        use crate::slot::in_flight::{EntryRef, Ledger};
        if !self.region.has_in_flight() || admission.idx >= self.region.slot_count() {
            return Err(Error::Invalid("the admission is not one of this table's"));
        }
        let r = EntryRef {
            idx: admission.idx,
            seq: admission.seq,
        };
        let ledger = Ledger::new(self.region.ledger());
        // The key it counted in, read while the entry is still held.
        #[cfg(feature = "leases")]
        let held = self.leased.then(|| ledger.read(r.idx));
        let left = ledger
            .release(r, |s| self.region.in_flight(s as usize))
            .ok_or(Error::Invalid("the admission was released already"))?;
        // Across hosts: the member leaves the store's set by the lease
        // thread (no round trip here). Not joined: nothing renews it, so
        // it expires there.
        #[cfg(feature = "leases")]
        if let (Some(e), Some(j)) = (held, &*self.joined.load()) {
            let tag = crate::operator::entry_at(&self.region, e.slot as usize)
                .filter(|s| s.state.gen == e.gen)
                .and_then(|s| {
                    let model = self.region.model_name(s.model_id)?;
                    let model = std::str::from_utf8(&model).ok()?.to_string();
                    Some(crate::store::Tag::for_unit(
                        &s.account?,
                        &model,
                        crate::store::Unit::InFlight,
                    ))
                });
            j.unhold_in_flight(tag, r);
        }
        let c = self.region.in_flight_counters();
        match how {
            Ending::Cut => &c.aborted,
            _ => &c.completed,
        }
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(u32::from(left))
    }

    /// A decision on a key with a token limit: its reservation and its
    /// requests charged together or not at all (`slot::decide_tokens`).
    /// Inlined into the slow path: one call fewer per token decision.
    #[inline(always)]
    fn check_tokens(
        &self,
        req: &Request<'_>,
        now_ms: u64,
        now: Instant,
        model: usize,
        limits: Limits,
        tl: TokenLimits,
    ) -> Result<Decision, Error> {
        if req.tokens > tl.tpm.min(tl.tpd) {
            return Err(Error::TokensTooLarge {
                reserved: req.tokens as u64,
                limit: tl.tpm.min(tl.tpd),
            });
        }
        if !self.region.units() {
            return Err(Error::NoTokenWindows);
        }
        if self.leased {
            return self.check_leased(req, now_ms, now, model, limits, Some(tl));
        }
        let model_id = self.model_ids[model];
        let key = key::hash(self.region.seed(), req.account, model_id);
        let clock = slot::Clock {
            now,
            skew: self.skew_minutes,
        };
        let both = slot::decide_tokens(
            &self.region,
            &key,
            req.account,
            limits,
            req.cost,
            tl.windows(),
            req.tokens,
            clock,
        )
        .map_err(|_| Error::TableFull)?;
        let d = Decision::with_tokens(&both, limits, tl, req.tokens, req.cost > 0, now_ms);
        if !d.allowed {
            // Recorded in the unit of the window that refused: a refusal
            // on tokens shows tokens against tpm/tpd, not request counts.
            let on_tokens = matches!(
                d.limited_by,
                slot::LimitedBy::TokensMinute | slot::LimitedBy::TokensDay
            );
            let (counts, lim, reserved) = if on_tokens {
                (both.tokens, tl.windows(), req.tokens)
            } else {
                (both.requests, limits, 0)
            };
            let outcome = slot::Outcome {
                limited_by: d.limited_by,
                ..counts
            };
            refusals::record(
                &self.region,
                key.id as u32,
                req.account,
                model_id,
                &outcome,
                lim,
                u64::from(reserved),
                now_ms,
            );
        }
        Ok(d)
    }

    /// Settles a reservation once its response has ended: charges what
    /// the usage says instead of what was reserved, or applies the policy's
    /// rule for a response without usage (`[tokens] on_failed`, `on_cut`).
    /// Returns the tokens the key is charged in the end. Settle each
    /// ticket once; `now_ms` dates an excess over the reservation whose
    /// window has closed. A ticket whose key has since lost its slot (its
    /// day is over) settles to nothing and is `Ok`. On a table of quota
    /// leases the store holds the token windows: the correction is queued
    /// to the lease thread (it makes no round trip here), and a limiter
    /// that is not joined fails with [`Error::NotJoined`].
    pub fn settle(&self, ticket: Ticket, ending: Ending, now_ms: u64) -> Result<u64, Error> {
        let now =
            Instant::from_ms(now_ms).ok_or(Error::Invalid("now_ms is past the year 47000"))?;
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if !self.region.units() || ticket.slot >= self.region.slot_count() {
            return Err(Error::Invalid("the ticket is not one of this table's"));
        }
        let settings = self.policy.token_settings();
        let keep = ticket.reserved as u64;
        let used = match ending {
            Ending::Usage(n) => n,
            Ending::Complete => keep,
            Ending::Failed | Ending::Cut => {
                let rule = if ending == Ending::Failed {
                    settings.on_failed
                } else {
                    settings.on_cut
                };
                match rule {
                    NoUsage::Keep => keep,
                    NoUsage::Release => 0,
                }
            }
        };
        let used = used.min(u32::MAX as u64) as u32;
        if self.leased {
            // The store holds the key's token windows: corrected through
            // the lease layer, which must be joined.
            #[cfg(feature = "leases")]
            if let Some(j) = &*self.joined.load() {
                j.settle(self, ticket, used, now);
                return Ok(used as u64);
            }
            return Err(Error::NotJoined);
        }
        let clock = slot::Clock {
            now,
            skew: self.skew_minutes,
        };
        slot::tokens::settle(
            &self.region,
            ticket.slot as usize,
            ticket.gen,
            ticket.at(),
            ticket.reserved,
            used,
            clock,
        );
        Ok(used as u64)
    }

    /// A decision on a table of quota leases: the lease layer's, if joined.
    /// Takes what [`Limiter::check`] has already checked and resolved;
    /// with token limits `tokens`, the lease layer's token decision
    /// (`lease::tokens`).
    #[cold]
    #[inline(never)]
    fn check_leased(
        &self,
        req: &Request<'_>,
        now_ms: u64,
        now: Instant,
        model: usize,
        limits: Limits,
        tokens: Option<TokenLimits>,
    ) -> Result<Decision, Error> {
        // The guard keeps this link alive for the decision, however
        // `connect` and `disconnect` replace it meanwhile.
        #[cfg(feature = "leases")]
        let link = self.joined.load();
        #[cfg(feature = "leases")]
        if let Some(j) = &*link {
            let model_id = self.model_ids[model];
            let p = Prepared {
                now,
                limits,
                model,
                model_id,
                key: key::hash(self.region.seed(), req.account, model_id),
            };
            return match tokens {
                Some(tl) => j.check_tokens(self, req, &p, tl, now_ms),
                None => j.check(self, req, &p, now_ms),
            };
        }
        let _ = (req, now_ms, now, model, limits, tokens);
        Err(Error::NotJoined)
    }

    /// Joins this limiter to the store at `url` (`redis://host:port/db`,
    /// `redis+cluster://host:port,...`; see `store::Store::new`), so that
    /// its decisions hold one quota per (account, model) across every host
    /// joined to the same store. The table must be formatted for leases
    /// ([`Limiter::new_for_leases`], [`Limiter::open_for_leases`]). Redis
    /// down is not an error here: the limiter starts deciding by the down
    /// policy and [`Limiter::lease_stats`] says so. Joining again replaces
    /// the earlier link (which gives its units back first). Sibling handles
    /// made by [`Limiter::share`] after this share the link.
    #[cfg(feature = "redis")]
    pub fn connect(&mut self, url: &str, opts: crate::lease::LeaseOptions) -> Result<(), Error> {
        self.connect_shared(url, opts)
    }

    /// [`Limiter::connect`] through a shared reference, for the C ABI: safe
    /// beside decisions on this handle, which finish on the link they
    /// loaded, or find none ([`Error::NotJoined`]) between the old link and
    /// the new. Concurrent connects each install a link; the last stays.
    #[cfg(feature = "redis")]
    pub(crate) fn connect_shared(
        &self,
        url: &str,
        opts: crate::lease::LeaseOptions,
    ) -> Result<(), Error> {
        self.may_join()?;
        let store = crate::lease::store_for(url, &opts)?;
        self.join_shared(Arc::new(store), opts)
    }

    /// [`Limiter::connect`] to a store of the caller's: any
    /// [`QuotaStore`](crate::store::QuotaStore), such as the
    /// [`MemoryStore`](crate::store::MemoryStore) tests drive through
    /// outages, refusals and restarts without a network.
    #[cfg(feature = "leases")]
    pub fn connect_store(
        &mut self,
        store: Arc<dyn crate::store::QuotaStore>,
        opts: crate::lease::LeaseOptions,
    ) -> Result<(), Error> {
        self.may_join()?;
        self.join_shared(store, opts)
    }

    /// Whether this handle may join a store at all.
    #[cfg(feature = "leases")]
    fn may_join(&self) -> Result<(), Error> {
        self.writable()?;
        if !self.leased {
            return Err(Error::NotLeased);
        }
        Ok(())
    }

    #[cfg(feature = "leases")]
    fn join_shared(
        &self,
        store: Arc<dyn crate::store::QuotaStore>,
        opts: crate::lease::LeaseOptions,
    ) -> Result<(), Error> {
        drop(self.joined.replace(None));
        let j = crate::lease::Joined::start(store, opts, self.region, self._backing.clone())?;
        // Another connect may have installed its link meanwhile: this one
        // replaces it, as a later call would.
        drop(self.joined.replace(Some(Arc::new(j))));
        Ok(())
    }

    /// Leaves the store: once the last handle sharing the link lets go,
    /// unspent units go back to Redis (each call under the deadline) and
    /// pending pushes are tried once more. Decisions are then
    /// [`Error::NotJoined`] until [`Limiter::connect`].
    #[cfg(feature = "leases")]
    pub fn disconnect(&mut self) {
        self.disconnect_shared();
    }

    /// [`Limiter::disconnect`] through a shared reference, for the C ABI:
    /// safe beside decisions on this handle (see
    /// [`Limiter::connect_shared`]). When a decision still holds the link,
    /// its thread lets go last and gives the units back (see [`Link`]).
    #[cfg(feature = "leases")]
    pub(crate) fn disconnect_shared(&self) {
        drop(self.joined.replace(None));
    }

    /// What the lease layer did, if joined.
    #[cfg(feature = "leases")]
    pub fn lease_stats(&self) -> Option<crate::lease::LeaseStats> {
        self.joined.load().as_ref().map(|j| j.stats())
    }

    /// The lease layer's first event kept after number `seq` (0: the oldest
    /// kept): Redis unavailable and back, the breaker, the backlog pushed,
    /// evictions. For bindings that log them at their own pace; Rust
    /// services get the same through the `log` crate. `None`: nothing newer,
    /// or not joined.
    #[cfg(feature = "leases")]
    pub fn lease_event(&self, seq: u64) -> Option<crate::lease::Event> {
        self.joined.load().as_ref().and_then(|j| j.event_after(seq))
    }

    /// The policy model named `name`, resolved once: requests that carry
    /// the handle ([`Request::handle`]) skip the lookup by name. `None` if
    /// the policy has no such model.
    pub fn model(&self, name: &[u8]) -> Option<ModelHandle> {
        let index = self.policy.model_index(name)?;
        Some(ModelHandle::new(self.serial, index))
    }

    /// The policy index a handle names, if it is one of this policy's.
    #[inline]
    fn handle_index(&self, h: ModelHandle) -> Option<usize> {
        let index = (h.0 & 0xFFFF) as usize;
        if (h.0 >> 16) as u16 != self.serial || index == 0 || index > self.model_ids.len() {
            return None;
        }
        Some(index - 1)
    }

    /// [`Limiter::check`] at the real-time clock.
    pub fn check_now(&self, req: &Request<'_>) -> Result<Decision, Error> {
        self.check(req, crate::now_ms())
    }

    /// Table usage at `now_ms` (walks every slot: for operators, not for
    /// the request path).
    pub fn stats(&self, now_ms: u64) -> Stats {
        let now = Instant::from_ms(now_ms).unwrap_or(Instant {
            day: u32::MAX,
            minute: 0,
        });
        let (mut used, mut in_use) = (0u32, 0u64);
        for e in crate::operator::entries(&self.region) {
            used += u32::from(!e.state.stale(now));
            in_use += u64::from(crate::operator::in_flight_of(&self.region, &e));
        }
        let h = self.region.header();
        let in_flight = self.region.has_in_flight().then(|| {
            let c = self.region.in_flight_counters();
            let get =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            InFlightStats {
                in_use,
                completed: get(&c.completed),
                aborted: get(&c.aborted),
                reclaimed: get(&c.reclaimed),
                refused: get(&c.refused),
            }
        });
        Stats {
            slots: self.region.slot_count(),
            used,
            table_full: h.table_full.load(std::sync::atomic::Ordering::Relaxed),
            clock_faults: h.clock_faults.load(std::sync::atomic::Ordering::Relaxed),
            bytes: self.region.bytes(),
            layout_version: region::LAYOUT_VERSION,
            bytes_per_slot: self.region.bytes_per_slot(),
            in_flight,
        }
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    fn ids_for(&self, policy: &Policy) -> Result<Vec<u16>, Error> {
        if self.read_only {
            return Ok(found_ids(&self.region, policy));
        }
        model_ids(&self.region, policy)
    }

    pub(crate) fn skew_minutes(&self) -> u32 {
        self.skew_minutes
    }

    /// `Err(ReadOnly)` on a read-only handle: for operations that write.
    pub(crate) fn writable(&self) -> Result<(), Error> {
        if self.read_only {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("slots", &self.region.slot_count())
            .finish_non_exhaustive()
    }
}

fn model_ids(region: &Region, policy: &Policy) -> Result<Vec<u16>, Error> {
    policy
        .models()
        .iter()
        .map(|m| {
            region
                .model_id(m.name.as_bytes())
                .ok_or(Error::ModelTableFull)
        })
        .collect()
}

/// The ids the local decision path may use (see `Limiter::local_ids`):
/// none on a table of quota leases or under a policy with token limits,
/// whose decisions take the slow path.
fn local_ids(region: &Region, policy: &Policy, ids: Vec<u16>) -> Vec<u16> {
    if region.leases() || policy.has_token_limits() || policy.has_in_flight_limits() {
        Vec::new()
    } else {
        ids
    }
}

fn skew_minutes(seconds: u32) -> u32 {
    seconds.div_ceil(60)
}

/// As [`model_ids`] without registering: a model no process registered has
/// no slots, and an id no region hands out (ids are below MODELS_MAX) finds
/// none.
fn found_ids(region: &Region, policy: &Policy) -> Vec<u16> {
    policy
        .models()
        .iter()
        .map(|m| region.find_model(m.name.as_bytes()).unwrap_or(u16::MAX))
        .collect()
}

/// How a response ended, for settling its reservation
/// ([`Limiter::settle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ending {
    /// The response reported its usage: total tokens (prompt and output).
    Usage(u64),
    /// A 2xx response that ended without usage: the reservation is kept.
    Complete,
    /// A completed non-2xx response without usage: `[tokens] on_failed`
    /// (default: given back).
    Failed,
    /// Cut before its usage arrived (client gone, upstream reset,
    /// timeout): `[tokens] on_cut` (default: kept, the tokens may have
    /// been generated).
    Cut,
}

impl Ending {
    /// How a response that reported no usage ended: [`Ending::Cut`] when
    /// `cut`, [`Ending::Failed`] for a non-2xx `status`, else
    /// [`Ending::Complete`].
    pub fn without_usage(status: u16, cut: bool) -> Ending {
        if cut {
            Ending::Cut
        } else if !(200..300).contains(&status) {
            Ending::Failed
        } else {
            Ending::Complete
        }
    }
}

/// The key's token limits, if it has any: the caller's, else the policy's.
#[inline]
fn resolve_tokens(policy: &Policy, req: &Request<'_>, model: usize) -> Option<TokenLimits> {
    if req.tpm != 0 && req.tpd != 0 {
        return Some(TokenLimits {
            tpm: req.tpm,
            tpd: req.tpd,
        });
    }
    let from = policy.token_limits(req.tier, model, req.account);
    if req.tpm == 0 && req.tpd == 0 {
        return from;
    }
    // One explicit, the other from the policy (which must have one).
    from.map(|f| TokenLimits {
        tpm: if req.tpm != 0 { req.tpm } else { f.tpm },
        tpd: if req.tpd != 0 { req.tpd } else { f.tpd },
    })
}

/// A request resolved against the policy and the table's seed.
#[cfg(feature = "leases")]
pub(crate) struct Prepared {
    pub now: Instant,
    pub limits: Limits,
    /// Index of the model in the policy.
    pub model: usize,
    pub model_id: u16,
    pub key: key::KeyHash,
}

#[inline(always)]
#[allow(clippy::unnecessary_lazy_evaluations)]
fn resolve(policy: &Policy, req: &Request<'_>, model: usize) -> Result<Limits, Error> {
    if req.rpm != 0 && req.rpd != 0 {
        return Ok(Limits {
            rpm: req.rpm,
            rpd: req.rpd,
        });
    }
    let from = policy
        .limits(req.tier, model, req.account)
        .ok_or_else(|| Error::NoLimit)?;
    Ok(Limits {
        rpm: if req.rpm != 0 { req.rpm } else { from.rpm },
        rpd: if req.rpd != 0 { req.rpd } else { from.rpd },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const T0: u64 = 1_764_237_600_000;

    /// One model: parsing is slow under miri, the built-in policy's twelve
    /// add nothing here.
    fn one_model() -> Policy {
        Policy::parse("[models]\n\"DeepSeek-V3.1\" = { region = \"EU\" }\n[tiers.developer]\n\"DeepSeek-V3.1\" = { rpm = 30, rpd = 15000 }\n", "t").unwrap()
    }

    /// Small enough for miri, which checks the atomics' orderings and
    /// explores thread interleavings: racing first requests on one key in
    /// a tiny table bind one slot and admit exactly the limit.
    #[test]
    fn racing_threads_admit_exactly_the_limit() {
        let rounds = if cfg!(miri) { 2 } else { 200 };
        for round in 0..rounds {
            let l = Limiter::new(&one_model(), 4).unwrap();
            let admitted = AtomicU32::new(0);
            let account = format!("k{round}");
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        for _ in 0..3 {
                            let r =
                                Request::new(account.as_bytes(), b"DeepSeek-V3.1", Tier::Developer)
                                    .limits(5, 100);
                            if l.check(&r, T0).unwrap().allowed {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(admitted.load(Ordering::Relaxed), 5);
            assert_eq!(l.stats(T0).used, 1);
        }
    }

    /// Racing admissions on a key with an in-flight limit, each held a
    /// moment and released: never more than the limit held at once, and
    /// the windows charged exactly what was admitted (a refusal for
    /// in-flight takes nothing; one by a window gives its unit back). The
    /// admission's windows are decided at the slot its unit located
    /// (`slot::decide_at`). Small enough for miri.
    #[test]
    fn racing_admissions_hold_at_most_the_in_flight_limit() {
        use std::sync::atomic::Ordering::SeqCst;
        let policy = Policy::parse(
            "[models]\nm = { region = \"EU\" }\n[tiers.developer]\nm = { rpm = 5, rpd = 100, max_in_flight = 2 }\n",
            "t",
        )
        .unwrap();
        let rounds = if cfg!(miri) { 1 } else { 100 };
        for round in 0..rounds {
            let l = Limiter::new(&policy, 4).unwrap();
            let (held, admitted) = (AtomicU32::new(0), AtomicU32::new(0));
            let account = format!("f{round}");
            let req = || Request::new(account.as_bytes(), b"m", Tier::Developer);
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        for _ in 0..3 {
                            let d = l.check(&req(), T0).unwrap();
                            let Some(adm) = d.in_flight.and_then(|f| f.admission) else {
                                assert!(!d.allowed);
                                continue;
                            };
                            assert!(d.allowed);
                            assert!(held.fetch_add(1, SeqCst) < 2, "more than 2 at once");
                            admitted.fetch_add(1, SeqCst);
                            held.fetch_sub(1, SeqCst);
                            l.release(adm, Ending::Complete).unwrap();
                        }
                    });
                }
            });
            let a = admitted.load(SeqCst);
            assert!((1..=5).contains(&a), "{a} admitted");
            let peek = l.check(&req().cost(0), T0).unwrap();
            assert_eq!(peek.minute.remaining, 5 - a, "windows charged = admitted");
            assert_eq!(peek.in_flight.unwrap().in_use, 0);
            let st = l.stats(T0).in_flight.unwrap();
            assert_eq!((st.in_use, st.completed), (0, u64::from(a)));
        }
    }

    /// Racing reservations on one key, some refused by the request windows
    /// (their tokens given back): exactly the token limit is admitted,
    /// and no refused request leaves tokens behind. Small enough for miri.
    #[test]
    fn racing_reservations_admit_exactly_the_token_limit() {
        let rounds = if cfg!(miri) { 1 } else { 200 };
        for round in 0..rounds {
            let l = Limiter::new(&one_model(), 4).unwrap();
            let admitted = AtomicU32::new(0);
            let account = format!("t{round}");
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        for _ in 0..3 {
                            let r =
                                Request::new(account.as_bytes(), b"DeepSeek-V3.1", Tier::Developer)
                                    .limits(4, 100)
                                    .token_limits(50, 1_000)
                                    .tokens(10);
                            if l.check(&r, T0).unwrap().allowed {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            // 4 requests fit the request minute, 5 the tokens: 4 admitted,
            // and the tokens of every refused request given back.
            assert_eq!(admitted.load(Ordering::Relaxed), 4);
            let peek = Request::new(account.as_bytes(), b"DeepSeek-V3.1", Tier::Developer)
                .limits(4, 100)
                .token_limits(50, 1_000)
                .cost(0);
            let t = l.check(&peek, T0).unwrap().tokens.unwrap();
            assert_eq!(t.minute.remaining, 10);
        }
    }

    /// A table formatted before token windows existed keeps deciding
    /// requests, and a key with token limits on it is a clear error.
    #[test]
    fn a_table_without_token_windows_limits_requests_and_refuses_tokens() {
        let len = crate::region::size_for(16).unwrap();
        let mem = HeapMem::new(len).unwrap();
        // SAFETY: `mem` is ours, zeroed, aligned and at least `len` bytes.
        let l = unsafe { Limiter::init_in(&one_model(), mem.as_ptr(), len) }.unwrap();
        drop(l);
        crate::region::strip_units_for_test(mem.as_ptr());
        // SAFETY: as above; the region was formatted there.
        let l = unsafe { Limiter::attach(&one_model(), mem.as_ptr(), len) }.unwrap();
        assert!(!l.region.units());
        let r = Request::new(b"old", b"DeepSeek-V3.1", Tier::Developer);
        assert!(l.check(&r, T0).unwrap().allowed);
        let t = r.token_limits(100, 1_000).tokens(10);
        assert!(matches!(l.check(&t, T0), Err(Error::NoTokenWindows)));
        // The operator views: no token totals (`tollgate stats` prints
        // none), and keys read as having no tokens.
        assert_eq!(l.token_table_stats(T0).unwrap(), None);
        let u = l.usage(T0).unwrap();
        assert_eq!((u[0].tokens_minute, u[0].tokens_day), (0, 0));
    }

    /// Two keys racing for the same stale slot on a new day: each ends
    /// with its own counts, neither lost nor shared.
    #[test]
    fn racing_rebinds_keep_keys_apart() {
        let rounds = if cfg!(miri) { 1 } else { 200 };
        for _ in 0..rounds {
            let l = Limiter::new(&one_model(), 2).unwrap();
            for a in [&b"old-a"[..], b"old-b"] {
                l.check(&Request::new(a, b"DeepSeek-V3.1", Tier::Developer), T0)
                    .unwrap();
            }
            let next_day = T0 + 86_400_000;
            std::thread::scope(|s| {
                for a in [&b"new-a"[..], b"new-b"] {
                    let l = &l;
                    s.spawn(move || {
                        for _ in 0..2 {
                            let r = Request::new(a, b"DeepSeek-V3.1", Tier::Developer);
                            assert!(l.check(&r, next_day).unwrap().allowed);
                        }
                    });
                }
            });
            for a in [&b"new-a"[..], b"new-b"] {
                let peek = l
                    .check(
                        &Request::new(a, b"DeepSeek-V3.1", Tier::Developer).cost(0),
                        next_day,
                    )
                    .unwrap();
                assert_eq!(peek.minute.remaining, 28);
            }
        }
    }

    /// What connect and disconnect do to the link while decisions read it,
    /// on a stand-in value (miri builds leave the lease layer out): readers
    /// never see a value after it is freed, each value is dropped exactly
    /// once, by whichever thread lets go last, and a sibling's link is its
    /// own.
    #[test]
    fn a_link_replaced_while_read_frees_nothing_in_use() {
        use std::sync::atomic::AtomicBool;

        /// A value readers check whole: `words` all equal `serial`.
        struct Value {
            serial: u32,
            words: Vec<u32>,
            dropped: Arc<AtomicU32>,
        }
        impl Drop for Value {
            fn drop(&mut self) {
                self.words.fill(0);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }

        // Under miri (slow, its own scheduler) a few replacements and reads;
        // otherwise replacements go on until the readers have seen plenty.
        let (readers, min_replacements, min_seen) = if cfg!(miri) {
            (2, 12, 0)
        } else {
            (3, 2_000, 20_000)
        };
        let dropped = Arc::new(AtomicU32::new(0));
        let value = |serial: u32| {
            Some(Arc::new(Value {
                serial,
                words: vec![serial; 4],
                dropped: dropped.clone(),
            }))
        };
        let link: Link<Value> = Link::empty();
        let stop = AtomicBool::new(false);
        let seen = AtomicU32::new(0);
        let mut made = 0;
        std::thread::scope(|s| {
            for _ in 0..readers {
                s.spawn(|| {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) || (cfg!(miri) && n < 20) {
                        let held = link.load();
                        if let Some(v) = &*held {
                            assert!(v.serial > 0);
                            assert!(v.words.iter().all(|&w| w == v.serial));
                            seen.fetch_add(1, Ordering::Relaxed);
                            // A sibling made now shares the value current
                            // then (or none, if it was just replaced).
                            if n % 8 == 0 {
                                let sibling = link.share();
                                if let Some(w) = &*sibling.load() {
                                    assert!(w.words.iter().all(|&x| x == w.serial));
                                }
                            }
                        }
                        n += 1;
                    }
                });
            }
            let started = std::time::Instant::now();
            while made < min_replacements || seen.load(Ordering::Relaxed) < min_seen {
                assert!(started.elapsed().as_secs() < 60, "readers made no progress");
                made += 1;
                // connect: out with the old, in with the new; disconnect
                drop(link.replace(None));
                drop(link.replace(value(made)));
                if made % 3 == 0 {
                    drop(link.replace(None));
                }
                if cfg!(miri) {
                    // Let readers in between (a real scheduler does).
                    std::thread::yield_now();
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        drop(link.replace(None));
        assert_eq!(dropped.load(Ordering::Relaxed), made);
        // A sibling keeps its value when the original link is emptied.
        let link = Link::empty();
        drop(link.replace(value(7)));
        let sibling = link.share();
        drop(link.replace(None));
        assert_eq!(dropped.load(Ordering::Relaxed), made);
        assert_eq!(sibling.load().as_ref().map(|v| v.words[3]), Some(7));
        drop(sibling);
        assert_eq!(dropped.load(Ordering::Relaxed), made + 1);
    }

    /// Issue 15 in Rust: a leased limiter connected and disconnected (to a
    /// closed port: Redis down, decisions by the down policy) while threads
    /// decide on it and on a sibling. Every decision is made or
    /// `NotJoined`; nothing crashes or is freed in use.
    #[cfg(feature = "redis")]
    #[test]
    fn connect_and_disconnect_beside_decisions() {
        use crate::lease::{DownPolicy, LeaseOptions};
        use std::sync::atomic::{AtomicBool, AtomicU64};

        let opts = LeaseOptions {
            down: DownPolicy::Open,
            hosts: 1,
            ..LeaseOptions::default()
        };
        let url = "redis://127.0.0.1:1/0";
        let l = Limiter::new_as(&one_model(), 256, true).unwrap();
        let stop = AtomicBool::new(false);
        let (made, not_joined) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            for t in 0..3 {
                let (l, stop, made, not_joined) = (&l, &stop, &made, &not_joined);
                s.spawn(move || {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let account = format!("race-{t}-{}", n % 8);
                        let r = Request::new(account.as_bytes(), b"DeepSeek-V3.1", Tier::Developer);
                        let sibling;
                        let on = if n % 64 == 0 {
                            sibling = l.share(&one_model()).unwrap();
                            &sibling
                        } else {
                            l
                        };
                        match on.check(&r, T0) {
                            Ok(_) => made.fetch_add(1, Ordering::Relaxed),
                            Err(Error::NotJoined) => not_joined.fetch_add(1, Ordering::Relaxed),
                            Err(e) => panic!("unexpected {e:?}"),
                        };
                        let _ = on.lease_stats();
                        n += 1;
                    }
                });
            }
            for i in 0..200 {
                l.connect_shared(url, opts.clone()).unwrap();
                if i % 2 == 0 {
                    l.connect_shared(url, opts.clone()).unwrap();
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
                l.disconnect_shared();
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(made.load(Ordering::Relaxed) > 0);
        assert!(not_joined.load(Ordering::Relaxed) > 0);
        let r = Request::new(b"after", b"DeepSeek-V3.1", Tier::Developer);
        assert!(matches!(l.check(&r, T0), Err(Error::NotJoined)));
    }
}

//! The region: one flat block of memory holding the whole table, with no
//! pointers inside, so the same bytes work wherever each process maps them.
//!
//! ```text
//! offset 0       Header (128 B): magic, layout version, sizes, seed, checksum,
//!                table-full and clock-fault counters, refusal ring cursor
//! offset 128     model table: 256 x 64 B (name of each model id)
//! offset 16 512  refusal ring: 64 x 128 B (the latest refusals, for operators)
//! offset 24 704  hot slots: N x 32 B  (what a decision reads and CASes)
//! then           cold names: N x 64 B (account id bytes, for operators only)
//! then           lease side area: N x 32 B, only in a table formatted for
//!                quota leases (header flag `LEASES`): per slot, the global
//!                counts as of the last exchange with Redis and the host's
//!                own counts while Redis is away (see `lease`)
//! then           unit area: N x 32 B, in every table formatted since 0.4
//!                (header flag `UNITS`): per slot, the token windows' state
//!                word (`slot::State`'s layout; see `slot::tokens`) and a
//!                word kept zero for in-flight counts; in a table formatted
//!                for leases N x 64 B, the second half the token windows'
//!                global counts as of the last exchange with Redis (as the
//!                side area's for requests) and a word kept zero
//! ```
//! A slot's ident and state share one 32-byte half of a cache line; account
//! names sit apart so decisions never pull them in.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use portable_atomic::AtomicU128;

use crate::key::{self, ACCOUNT_MAX};
use crate::policy::{MODELS_MAX, MODEL_NAME_MAX};

pub const MAGIC: [u8; 8] = *b"TOLLGATE";
/// Bumped whenever the meaning of any byte of the region changes.
/// 2: the refusal ring and the clock-fault counter.
/// 3: the slot state on 16/32-bit field boundaries (see `slot::State`).
pub const LAYOUT_VERSION: u32 = 3;
/// The one earlier layout a region file may still have: read only to carry
/// its counts into a current region (`tollgate resize`); version 3 changed
/// only the slot state's bit positions and the key hash, so everything else
/// reads as it is.
pub const LEGACY_VERSION: u32 = 2;
/// Alignment a caller's memory must have.
pub const REGION_ALIGN: usize = 64;
pub const HEADER_SIZE: usize = 128;
pub const MODEL_ENTRY_SIZE: usize = 64;
pub const RING_OFFSET: usize = HEADER_SIZE + MODELS_MAX * MODEL_ENTRY_SIZE;
pub const SLOTS_OFFSET: usize = RING_OFFSET + RING_ENTRIES * RING_ENTRY_SIZE;
pub const SLOT_SIZE: usize = 32;
pub const NAME_SIZE: usize = 64;
/// Refusals the ring keeps (the latest ones).
pub const RING_ENTRIES: usize = 64;
pub const RING_ENTRY_SIZE: usize = 128;
/// Bytes per slot of the hot state and account name together: the
/// part every table has, before the side and unit areas.
const BASE_PER_SLOT: usize = SLOT_SIZE + NAME_SIZE;
/// Bytes each slot takes in a table this library formats (hot state,
/// account name and the unit area; a leased table adds the side area).
pub const BYTES_PER_SLOT: usize = BASE_PER_SLOT + UNIT_SIZE + LEDGER_PER_SLOT;
/// Largest slot count (keeps sizes and indexes comfortably in range).
pub const SLOTS_MAX: u32 = 1 << 30;
/// Bytes per slot of the lease side area (tables formatted for leases only).
pub const SIDE_SIZE: usize = 32;
/// Header flag: the table holds quota leases (its two counts are units left
/// of leases granted by Redis, not counts) and has the side area. Set when
/// formatting and never changed, so every process attached knows it.
pub const FLAG_LEASES: u64 = 1;

/// Header flag: the table has the unit area (token windows). Set when
/// formatting; a table formatted before it keeps working for requests, and
/// `tollgate resize` carries it into one that has it.
pub const FLAG_UNITS: u64 = 2;
/// Bytes per slot of the unit area.
pub const UNIT_SIZE: usize = 32;
/// Bytes per slot of the unit area of a table formatted for leases: the
/// store's token counts as of the last exchange beside the local words.
pub const LEASED_UNIT_SIZE: usize = 64;

/// Bytes per slot of a table's unit area.
const fn unit_size(leases: bool) -> usize {
    if leases {
        LEASED_UNIT_SIZE
    } else {
        UNIT_SIZE
    }
}
/// Header flag: the table has the in-flight areas (issue 18): a holder
/// list and a ledger of one entry per slot, after the unit area (whose
/// second word per slot is the key's in-flight word). Only with the unit
/// area.
pub const FLAG_IN_FLIGHT: u64 = 4;
/// Holders (processes that hold or held in-flight units) a table keeps.
pub const HOLDERS: usize = 1024;
/// Bytes of the in-flight counters ([`InFlightCounters`]), before the
/// holder list.
const COUNTERS_SIZE: usize = 64;
/// Bytes of the in-flight counters and the holder list: the part of a
/// table's size that neither precedes the slots nor grows with them.
pub const HOLDERS_BYTES: usize = COUNTERS_SIZE + HOLDERS * 16;
const HOLDERS_SIZE: usize = HOLDERS_BYTES;
// Every holder index fits the ledger's entries.
const _: () = assert!(HOLDERS <= crate::slot::in_flight::HOLDERS_MAX as usize);
/// Bytes per slot of the in-flight ledger: one 16-byte entry per slot, so
/// a table holds as many admissions in flight as it has slots.
const LEDGER_PER_SLOT: usize = 16;
/// The flags this library knows.
const FLAGS_KNOWN: u64 = FLAG_LEASES | FLAG_UNITS | FLAG_IN_FLIGHT;

const READY: u32 = 0x5245_4459; // "READY": written last when formatting

/// Bytes a region of `slots` slots occupies; `None` for 0 or over the max.
pub fn size_for(slots: u32) -> Option<usize> {
    size_with(slots, false)
}

/// Most slots a region of `len` bytes can hold (0 if too small).
pub fn slots_for(len: usize) -> u32 {
    slots_with(len, false)
}

/// Bytes a region of `slots` slots occupies, with the lease side area when
/// `leases`; `None` for 0 or over the max.
pub fn size_with(slots: u32, leases: bool) -> Option<usize> {
    size_as(slots, leases, true, true)
}

/// Bytes per slot of a table so formatted.
const fn per_slot(leases: bool, units: bool, in_flight: bool) -> usize {
    BASE_PER_SLOT
        + if leases { SIDE_SIZE } else { 0 }
        + if units { unit_size(leases) } else { 0 }
        + if in_flight { LEDGER_PER_SLOT } else { 0 }
}

/// Bytes before the slots and after them that do not grow with the slots.
const fn fixed(in_flight: bool) -> usize {
    SLOTS_OFFSET + if in_flight { HOLDERS_SIZE } else { 0 }
}

/// As [`size_with`], for a table with or without the unit and in-flight
/// areas (tables formatted before them have none).
pub(crate) fn size_as(slots: u32, leases: bool, units: bool, in_flight: bool) -> Option<usize> {
    if slots == 0 || slots > SLOTS_MAX {
        return None;
    }
    let per = per_slot(leases, units, in_flight);
    fixed(in_flight).checked_add((slots as usize).checked_mul(per)?)
}

/// As [`slots_for`], for a table with the lease side area when `leases`.
pub fn slots_with(len: usize, leases: bool) -> u32 {
    let (per, fixed) = (per_slot(leases, true, true), fixed(true));
    if len < fixed + per {
        return 0;
    }
    ((len - fixed) / per).min(SLOTS_MAX as usize) as u32
}

#[repr(C)]
pub(crate) struct Header {
    magic: [u8; 8],
    layout_version: u32,
    header_size: u32,
    slot_count: u32,
    slot_size: u32,
    name_size: u32,
    ready: AtomicU32,
    seed: [u64; 4],
    created_ms: u64,
    checksum: u64,
    pub(crate) table_full: AtomicU64,
    /// Decisions that re-dated counts a wrong clock had put in the future.
    pub(crate) clock_faults: AtomicU64,
    /// Refusals recorded in the ring, ever (the next entry's ticket).
    pub(crate) ring_head: AtomicU64,
    /// Key fingerprint and second of the last refusal recorded, so that a
    /// key refused many times a second takes one entry, not the whole ring.
    pub(crate) ring_last: AtomicU64,
    /// `FLAG_LEASES` or 0; fixed at formatting, covered by the checksum.
    flags: u64,
    _reserved: u64,
}

/// A table's in-flight releases by cause and its refusals for in-flight,
/// since formatting, shared by every process on the table.
#[repr(C)]
pub(crate) struct InFlightCounters {
    /// Released by a request that ran to its end.
    pub(crate) completed: AtomicU64,
    /// Released by a request that ended otherwise: the client gone, an
    /// upstream error or timeout, a handler's exception, a dropped future.
    pub(crate) aborted: AtomicU64,
    /// Given back from holders found dead by a sweep.
    pub(crate) reclaimed: AtomicU64,
    /// Admissions refused for in-flight.
    pub(crate) refused: AtomicU64,
    /// The process sweeping now (a packed `holder::Identity`), 0 if none:
    /// sweeps run one at a time (`in_flight::sweep`).
    pub(crate) sweeper: AtomicU128,
    _spare: [u64; 2],
}

/// One model id: its name, registered on first use by any attached process.
#[repr(C)]
pub(crate) struct ModelEntry {
    /// hash (48) | name length (8) | state (8): 0 empty, 1 writing, 2 ready.
    word: AtomicU64,
    name: [AtomicU64; 7],
}

/// One recorded refusal. `seq` is a sequence lock: odd while its writer
/// fills the entry, `2 * (ticket + 1)` once it is whole, so a reader keeps
/// an entry only if it read the same even `seq` before and after.
#[repr(C, align(64))]
pub(crate) struct RingEntry {
    pub(crate) seq: AtomicU64,
    pub(crate) at_ms: AtomicU64,
    /// model id (16) | limited_by (8) | account length (8). A refusal on
    /// tokens (limited_by 3 or 4, since 0.4) holds token counts and token
    /// limits in the four count fields, and its reservation in `reserved`.
    pub(crate) what: AtomicU32,
    pub(crate) minute_count: AtomicU32,
    pub(crate) minute_limit: AtomicU32,
    pub(crate) day_count: AtomicU32,
    pub(crate) day_limit: AtomicU32,
    /// A mix of the fields above and the account, written with them.
    pub(crate) check: AtomicU32,
    pub(crate) account: [AtomicU64; 8],
    /// The tokens a refused request asked to reserve (a refusal on tokens;
    /// 0.4 took this word from what was spare tail, zero in older tables).
    pub(crate) reserved: AtomicU64,
    _tail: [u64; 2],
}

/// The hot half of a key's state. `ident` names the key and the generation
/// of its binding; `state` holds the generation and the windows' counts.
#[repr(C, align(32))]
pub(crate) struct Slot {
    pub(crate) ident: AtomicU128,
    pub(crate) state: AtomicU128,
}

impl Slot {
    /// `ident`, read atomically with acquire ordering.
    #[inline(always)]
    pub(crate) fn ident(&self) -> u128 {
        load_acquire(&self.ident)
    }

    /// `state`, read atomically with acquire ordering.
    #[inline(always)]
    pub(crate) fn state(&self) -> u128 {
        load_acquire(&self.state)
    }
}

/// An atomic 128-bit acquire load. On x86-64 CPUs with AVX an aligned
/// 16-byte VMOVDQA is atomic (Intel SDM vol. 3A 9.1.1, AMD APM vol. 2
/// 7.3.2), and is what portable-atomic uses too, but it picks it through a
/// function pointer on every load; here the (cached) CPU check is a test
/// and a branch and the load is inlined into the decision path. Other CPUs,
/// and miri (which runs no inline assembly), take portable-atomic's load.
#[inline(always)]
fn load_acquire(a: &AtomicU128) -> u128 {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if std::arch::is_x86_feature_detected!("avx") {
        let (lo, hi): (u64, u64);
        // SAFETY: `a` is a live AtomicU128, which portable-atomic aligns to
        // 16 bytes, so VMOVDQA neither faults nor tears (see above), and
        // AVX is present (checked). The block reads memory only through
        // `a`; it is not `readonly`/`nomem`, so the compiler keeps later
        // memory accesses after it, and x86 loads are not reordered with
        // later loads or stores by the CPU: the load is an acquire.
        unsafe {
            std::arch::asm!(
                "vmovdqa {x}, xmmword ptr [{p}]",
                "vmovq {lo}, {x}",
                "vpextrq {hi}, {x}, 1",
                p = in(reg) a.as_ptr(),
                x = out(xmm_reg) _,
                lo = out(reg) lo,
                hi = out(reg) hi,
                options(nostack, preserves_flags),
            );
        }
        return lo as u128 | (hi as u128) << 64;
    }
    a.load(std::sync::atomic::Ordering::Acquire)
}

/// The account id bytes of a slot's key (length is in the key id).
#[repr(C)]
pub(crate) struct Name {
    bytes: [AtomicU64; 8],
}

const _: () = {
    assert!(std::mem::offset_of!(Header, ready) == 28);
    assert!(std::mem::offset_of!(Header, checksum) == 72);
    assert!(std::mem::offset_of!(Header, flags) == 112);
    assert!(std::mem::size_of::<Header>() == HEADER_SIZE);
    assert!(std::mem::size_of::<ModelEntry>() == MODEL_ENTRY_SIZE);
    assert!(std::mem::size_of::<Slot>() == SLOT_SIZE);
    assert!(std::mem::size_of::<Side>() == SIDE_SIZE);
    assert!(std::mem::size_of::<RingEntry>() == RING_ENTRY_SIZE);
    assert!(RING_OFFSET % REGION_ALIGN == 0);
    assert!(std::mem::size_of::<Name>() == NAME_SIZE);
    assert!(std::mem::size_of::<InFlightCounters>() == COUNTERS_SIZE);
    assert!(NAME_SIZE >= ACCOUNT_MAX);
    assert!(7 * 8 >= MODEL_NAME_MAX);
    assert!(SLOTS_OFFSET % REGION_ALIGN == 0);
};

/// Why memory is not a usable region. More reasons may come (match with
/// a `_` arm), as the C ABI's statuses may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegionError {
    /// Pointer not aligned to [`REGION_ALIGN`].
    Alignment,
    /// Too small, or not the size its header's slot count needs.
    Size {
        /// Bytes given.
        len: usize,
        /// Bytes the table needs.
        needed: usize,
    },
    /// The file holds `found` slots but `asked` were requested.
    SlotCount {
        /// Slots the file holds.
        found: u32,
        /// Slots the caller asked for.
        asked: u32,
    },
    /// Not a tollgate region (or never finished formatting).
    Magic,
    /// Formatted by a different layout version.
    Version {
        /// The region's layout version.
        found: u32,
    },
    /// Header fields disagree with each other or with their checksum.
    Corrupt,
    /// The CPU has no lock-free 128-bit compare-and-swap; sharing counters
    /// through a lock would not hold across processes, so we refuse.
    Unsupported,
}

impl std::fmt::Display for RegionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            RegionError::Alignment => write!(f, "region memory is not aligned to {REGION_ALIGN} bytes"),
            RegionError::Size { len, needed } => write!(
                f,
                "region is {len} bytes but its table needs {needed}; recreate it, or carry the counters over with `tollgate resize`"
            ),
            RegionError::SlotCount { found, asked } => write!(
                f,
                "region holds {found} slots, not the {asked} asked for; open it with 0 slots to take it as it is, or grow it with `tollgate resize`"
            ),
            RegionError::Magic => write!(f, "not a tollgate region (bad magic or never finished formatting)"),
            RegionError::Version { found } if found == LEGACY_VERSION => write!(
                f,
                "region layout version {found}, this library reads {LAYOUT_VERSION}; carry its counts into a new table with `tollgate resize OLD NEW --slots N` (it reads version {found}), or use a matching library"
            ),
            RegionError::Version { found } => write!(
                f,
                "region layout version {found}, this library reads {LAYOUT_VERSION}; use a matching library or recreate the region"
            ),
            RegionError::Corrupt => write!(f, "region header is corrupt (checksum or sizes disagree); recreate the region"),
            RegionError::Unsupported => write!(f, "this CPU has no lock-free 128-bit compare-and-swap"),
        }
    }
}

impl std::error::Error for RegionError {}

/// A view of a formatted region. It does not own the memory; whoever made
/// it (heap, caller, file mapping) keeps the memory alive for as long as
/// the view is used.
#[derive(Clone, Copy)]
pub(crate) struct Region {
    base: NonNull<u8>,
    slots: u32,
    /// A [`LEGACY_VERSION`] region, open only to be carried over.
    legacy: bool,
    /// Formatted for quota leases ([`FLAG_LEASES`]): has the side area.
    leases: bool,
    /// Where the unit area ([`FLAG_UNITS`]: token windows) starts, from
    /// `base`; 0 for a table without one.
    units_at: usize,
    /// Where the in-flight areas ([`FLAG_IN_FLIGHT`]) start: the counters,
    /// the holder list, the ledger; 0 for a table without them.
    in_flight_at: usize,
}

/// Where a table's in-flight areas start, from its base: after the unit
/// area.
fn in_flight_at(slots: u32, leases: bool) -> usize {
    units_at(slots, leases) + slots as usize * unit_size(leases)
}

/// Where a table's unit area starts, from its base.
fn units_at(slots: u32, leases: bool) -> usize {
    let side = if leases { SIDE_SIZE } else { 0 };
    SLOTS_OFFSET + slots as usize * (BASE_PER_SLOT + side)
}

/// One slot's lease side area: two state words in the slot's own layout
/// (`slot::State`, generation unused): `global` holds both windows' global
/// counts as of the last exchange with Redis, `down` the host's own counts
/// of decisions made while Redis was away.
#[repr(C, align(32))]
pub(crate) struct Side {
    pub(crate) global: AtomicU128,
    pub(crate) down: AtomicU128,
}

// SAFETY: every byte a Region exposes is reached through atomics (or header
// fields that are immutable after formatting), so sharing it between threads
// is as safe as sharing the atomics themselves.
unsafe impl Send for Region {}
// SAFETY: as above; no method hands out `&mut` to region memory.
unsafe impl Sync for Region {}

fn checksum(h: &Header) -> u64 {
    let mut x = 0xA076_1D64_78BD_642Fu64;
    let mut mix = |v: u64| {
        let p = (x ^ v) as u128 * 0xE703_7ED1_A0B4_28DB_u128;
        x = (p as u64) ^ ((p >> 64) as u64);
    };
    mix(u64::from_le_bytes(h.magic));
    mix(h.layout_version as u64 | (h.header_size as u64) << 32);
    mix(h.slot_count as u64 | (h.slot_size as u64) << 32);
    mix(h.name_size as u64);
    for s in h.seed {
        mix(s);
    }
    mix(h.created_ms);
    // Only a flagged table mixes its flags in, so the checksums of tables
    // formatted before the flag existed still hold.
    if h.flags != 0 {
        mix(h.flags);
    }
    x
}

fn check_cpu() -> Result<(), RegionError> {
    if AtomicU128::is_lock_free() {
        Ok(())
    } else {
        Err(RegionError::Unsupported)
    }
}

fn check_mem(mem: *mut u8, len: usize) -> Result<NonNull<u8>, RegionError> {
    let base = NonNull::new(mem).ok_or(RegionError::Alignment)?;
    if (mem as usize) % REGION_ALIGN != 0 {
        return Err(RegionError::Alignment);
    }
    if len < SLOTS_OFFSET + BASE_PER_SLOT {
        return Err(RegionError::Size {
            len,
            needed: size_for(1).expect("one slot fits"),
        });
    }
    Ok(base)
}

impl Region {
    /// Formats `len` bytes at `mem` as an empty region of `slots_for(len)`
    /// slots with a fresh random seed. `zeroed` says the memory is known to
    /// be zero already (fresh heap or file pages), which spares touching it.
    ///
    /// # Safety
    /// `mem` must be valid for reads and writes of `len` bytes, not used by
    /// anyone else while this runs, and outlive every use of the result.
    // The constructors pass the format (format_as); tests use this one.
    #[cfg(test)]
    pub(crate) unsafe fn format(
        mem: *mut u8,
        len: usize,
        now_ms: u64,
        zeroed: bool,
    ) -> Result<Region, RegionError> {
        // SAFETY: forwarded from this function's contract.
        unsafe { Region::format_as(mem, len, now_ms, zeroed, false) }
    }

    /// As [`Region::format`]; with `leases`, formatted for quota leases
    /// (the flag and the side area).
    ///
    /// # Safety
    /// As for [`Region::format`].
    pub(crate) unsafe fn format_as(
        mem: *mut u8,
        len: usize,
        now_ms: u64,
        zeroed: bool,
        leases: bool,
    ) -> Result<Region, RegionError> {
        check_cpu()?;
        let base = check_mem(mem, len)?;
        let slots = slots_with(len, leases);
        if slots == 0 {
            return Err(RegionError::Size {
                len,
                needed: size_with(1, leases).expect("one slot fits"),
            });
        }
        let used = size_with(slots, leases).expect("slots_with gives a valid count");
        if !zeroed {
            // SAFETY: the caller grants exclusive access to `len` >= `used` bytes.
            unsafe { std::ptr::write_bytes(mem, 0, used) };
        }
        let mut h = Header {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            header_size: SLOTS_OFFSET as u32,
            slot_count: slots,
            slot_size: SLOT_SIZE as u32,
            name_size: NAME_SIZE as u32,
            ready: AtomicU32::new(0),
            seed: key::random_seed(),
            created_ms: now_ms,
            checksum: 0,
            table_full: AtomicU64::new(0),
            clock_faults: AtomicU64::new(0),
            ring_head: AtomicU64::new(0),
            ring_last: AtomicU64::new(0),
            flags: FLAG_UNITS | FLAG_IN_FLIGHT | if leases { FLAG_LEASES } else { 0 },
            _reserved: 0,
        };
        h.checksum = checksum(&h);
        let ready = READY;
        // SAFETY: `mem` is aligned to 64 and holds at least HEADER_SIZE bytes;
        // nobody else reads it until `ready` is published below.
        unsafe { std::ptr::write(mem.cast::<Header>(), h) };
        let r = Region {
            base,
            slots,
            legacy: false,
            leases,
            units_at: units_at(slots, leases),
            in_flight_at: in_flight_at(slots, leases),
        };
        r.header().ready.store(ready, Ordering::Release);
        Ok(r)
    }

    /// Validates an already formatted region: magic, version, sizes and the
    /// header checksum. Reads only the header before trusting the sizes.
    ///
    /// # Safety
    /// `mem` must be valid for reads and writes of `len` bytes and outlive
    /// every use of the result.
    pub(crate) unsafe fn attach(mem: *mut u8, len: usize) -> Result<Region, RegionError> {
        // SAFETY: forwarded from this function's contract.
        unsafe { Region::attach_as(mem, len, false) }
    }

    /// As [`Region::attach`]; with `legacy`, a [`LEGACY_VERSION`] region is
    /// accepted too (for carrying its counts over, never for decisions).
    ///
    /// # Safety
    /// As for [`Region::attach`].
    pub(crate) unsafe fn attach_as(
        mem: *mut u8,
        len: usize,
        legacy: bool,
    ) -> Result<Region, RegionError> {
        check_cpu()?;
        let base = check_mem(mem, len)?;
        // SAFETY: check_mem proved `len` covers the header and `mem` is aligned.
        let h = unsafe { &*mem.cast::<Header>() };
        if h.magic != MAGIC {
            return Err(RegionError::Magic);
        }
        let old = legacy && h.layout_version == LEGACY_VERSION;
        if h.layout_version != LAYOUT_VERSION && !old {
            return Err(RegionError::Version {
                found: h.layout_version,
            });
        }
        if h.ready.load(Ordering::Acquire) != READY {
            return Err(RegionError::Magic);
        }
        if h.header_size as usize != SLOTS_OFFSET
            || h.slot_size as usize != SLOT_SIZE
            || h.name_size as usize != NAME_SIZE
            || h.checksum != checksum(h)
        {
            return Err(RegionError::Corrupt);
        }
        if h.flags & !FLAGS_KNOWN != 0 {
            return Err(RegionError::Corrupt);
        }
        let leases = h.flags & FLAG_LEASES != 0;
        let units = h.flags & FLAG_UNITS != 0;
        let in_flight = h.flags & FLAG_IN_FLIGHT != 0;
        if in_flight && !units {
            return Err(RegionError::Corrupt);
        }
        let needed = size_as(h.slot_count, leases, units, in_flight).ok_or(RegionError::Corrupt)?;
        if needed > len {
            return Err(RegionError::Size { len, needed });
        }
        Ok(Region {
            base,
            slots: h.slot_count,
            legacy: old,
            leases,
            units_at: if units {
                units_at(h.slot_count, leases)
            } else {
                0
            },
            in_flight_at: if in_flight {
                in_flight_at(h.slot_count, leases)
            } else {
                0
            },
        })
    }

    /// Checks a copy of a header read from a file, before anything is
    /// mapped, and returns the slot count it describes and the bytes the
    /// table so formatted occupies.
    pub(crate) fn check_header_bytes(
        bytes: &[u8; HEADER_SIZE],
        legacy: bool,
    ) -> Result<(u32, usize), RegionError> {
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        if bytes[..8] != MAGIC {
            return Err(RegionError::Magic);
        }
        let version = u32_at(8);
        if version != LAYOUT_VERSION && !(legacy && version == LEGACY_VERSION) {
            return Err(RegionError::Version { found: version });
        }
        if u32_at(28) != READY {
            return Err(RegionError::Magic);
        }
        let h = Header {
            magic: MAGIC,
            layout_version: version,
            header_size: u32_at(12),
            slot_count: u32_at(16),
            slot_size: u32_at(20),
            name_size: u32_at(24),
            ready: AtomicU32::new(READY),
            seed: [u64_at(32), u64_at(40), u64_at(48), u64_at(56)],
            created_ms: u64_at(64),
            checksum: u64_at(72),
            table_full: AtomicU64::new(0),
            clock_faults: AtomicU64::new(0),
            ring_head: AtomicU64::new(0),
            ring_last: AtomicU64::new(0),
            flags: u64_at(112),
            _reserved: 0,
        };
        if h.header_size as usize != SLOTS_OFFSET
            || h.slot_size as usize != SLOT_SIZE
            || h.name_size as usize != NAME_SIZE
            || h.checksum != checksum(&h)
            || h.flags & !FLAGS_KNOWN != 0
        {
            return Err(RegionError::Corrupt);
        }
        let in_flight = h.flags & FLAG_IN_FLIGHT != 0;
        if in_flight && h.flags & FLAG_UNITS == 0 {
            return Err(RegionError::Corrupt);
        }
        let needed = size_as(
            h.slot_count,
            h.flags & FLAG_LEASES != 0,
            h.flags & FLAG_UNITS != 0,
            in_flight,
        )
        .ok_or(RegionError::Corrupt)?;
        Ok((h.slot_count, needed))
    }

    /// Whether this is a [`LEGACY_VERSION`] region (see `attach_as`).
    pub(crate) fn is_legacy(&self) -> bool {
        self.legacy
    }

    #[inline]
    pub(crate) fn slot_count(&self) -> u32 {
        self.slots
    }

    #[inline]
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: construction checked size and alignment; the header's
        // mutable fields are atomics.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    #[inline]
    pub(crate) fn seed(&self) -> &[u64; 4] {
        &self.header().seed
    }

    /// Bytes each slot takes in this table's format.
    pub(crate) fn bytes_per_slot(&self) -> usize {
        per_slot(self.leases, self.units(), self.has_in_flight())
    }

    pub(crate) fn bytes(&self) -> usize {
        size_as(self.slots, self.leases, self.units(), self.has_in_flight())
            .expect("valid slot count")
    }

    /// Whether the table has the unit area ([`FLAG_UNITS`]): token windows.
    #[inline]
    pub(crate) fn units(&self) -> bool {
        self.units_at != 0
    }

    /// Slot `i`'s token state word; only in a table with the unit area.
    #[inline]
    pub(crate) fn tokens(&self, i: usize) -> &AtomicU128 {
        assert!(self.units_at != 0 && i < self.slots as usize);
        let off = self.units_at + i * unit_size(self.leases);
        // SAFETY: i < slots; a region with the unit area has its size cover
        // it, after the names and the side area (checked at format and
        // attach); SLOTS_OFFSET is a multiple of 64 and every per-slot size
        // a multiple of 32, so the word is 16-aligned as AtomicU128 wants.
        unsafe { &*self.base.as_ptr().add(off).cast::<AtomicU128>() }
    }

    /// Slot `i`'s token windows' global counts as of the last exchange
    /// with the store; only in a table formatted for leases with the unit
    /// area.
    #[inline]
    pub(crate) fn tokens_seen(&self, i: usize) -> &AtomicU128 {
        assert!(self.leases && self.units_at != 0 && i < self.slots as usize);
        let off = self.units_at + i * LEASED_UNIT_SIZE + 32;
        // SAFETY: as in `tokens`: the leased unit area's 64 bytes per slot
        // cover this word, 16-aligned at 32 bytes into the slot's entry.
        unsafe { &*self.base.as_ptr().add(off).cast::<AtomicU128>() }
    }

    /// Whether the table has the in-flight areas ([`FLAG_IN_FLIGHT`]).
    #[inline]
    pub(crate) fn has_in_flight(&self) -> bool {
        self.in_flight_at != 0
    }

    /// Slot `i`'s in-flight word (`slot::in_flight::Word`): the unit
    /// area's second word; only in a table with the in-flight areas.
    #[inline]
    pub(crate) fn in_flight(&self, i: usize) -> &AtomicU128 {
        assert!(self.in_flight_at != 0 && i < self.slots as usize);
        let off = self.units_at + i * unit_size(self.leases) + 16;
        // SAFETY: as in `tokens`: the unit entry's second 16 bytes, inside
        // the unit area and 16-aligned.
        unsafe { &*self.base.as_ptr().add(off).cast::<AtomicU128>() }
    }

    /// The in-flight counters; only with the in-flight areas.
    pub(crate) fn in_flight_counters(&self) -> &InFlightCounters {
        assert!(self.in_flight_at != 0);
        // SAFETY: the region's size covers the counters, the first 64
        // bytes after the unit area (checked at format and attach);
        // 16-aligned as their AtomicU128 wants (every area's size is a
        // multiple of 16 from a 64-aligned start); all atomics, any bits
        // valid.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(self.in_flight_at)
                .cast::<InFlightCounters>()
        }
    }

    /// The holder list ([`HOLDERS`] words, after the counters); only with
    /// the in-flight areas.
    pub(crate) fn holders(&self) -> &[AtomicU128] {
        assert!(self.in_flight_at != 0);
        // SAFETY: the region's size covers the holder list after the
        // counters (checked at format and attach); 16-aligned (every
        // area's size is a multiple of 16 from a 64-aligned start).
        unsafe {
            std::slice::from_raw_parts(
                self.base
                    .as_ptr()
                    .add(self.in_flight_at + COUNTERS_SIZE)
                    .cast::<AtomicU128>(),
                HOLDERS,
            )
        }
    }

    /// The in-flight ledger: one entry per slot, after the holder list;
    /// only with the in-flight areas.
    pub(crate) fn ledger(&self) -> &[AtomicU128] {
        assert!(self.in_flight_at != 0);
        // SAFETY: as `holders`: the ledger follows the list, `slots`
        // entries of 16 bytes, covered by the region's checked size.
        unsafe {
            std::slice::from_raw_parts(
                self.base
                    .as_ptr()
                    .add(self.in_flight_at + HOLDERS_SIZE)
                    .cast::<AtomicU128>(),
                self.slots as usize,
            )
        }
    }

    /// Whether the table is formatted for quota leases ([`FLAG_LEASES`]).
    #[inline]
    pub(crate) fn leases(&self) -> bool {
        self.leases
    }

    /// Slot `i`'s lease side area; only in a table formatted for leases.
    #[inline]
    pub(crate) fn side(&self, i: usize) -> &Side {
        assert!(self.leases && i < self.slots as usize);
        let off = SLOTS_OFFSET + self.slots as usize * BASE_PER_SLOT + i * SIDE_SIZE;
        // SAFETY: i < slots; a leased region's size covers the side area
        // after the names (checked at format and attach); SLOTS_OFFSET is a
        // multiple of 64 and BASE_PER_SLOT and SIDE_SIZE of 32, so each
        // entry is 32-aligned.
        unsafe { &*self.base.as_ptr().add(off).cast::<Side>() }
    }

    pub(crate) fn created_ms(&self) -> u64 {
        self.header().created_ms
    }

    #[inline]
    pub(crate) fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.slots as usize);
        // SAFETY: i < slots, and the region holds `slots` Slots from
        // SLOTS_OFFSET (a multiple of 64, so each Slot is 32-aligned).
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(SLOTS_OFFSET + i * SLOT_SIZE)
                .cast::<Slot>()
        }
    }

    #[inline]
    fn name(&self, i: usize) -> &Name {
        assert!(i < self.slots as usize);
        let off = SLOTS_OFFSET + self.slots as usize * SLOT_SIZE + i * NAME_SIZE;
        // SAFETY: i < slots; the name array follows the slot array and the
        // region's size covers it; offsets are multiples of 8.
        unsafe { &*self.base.as_ptr().add(off).cast::<Name>() }
    }

    #[inline]
    pub(crate) fn ring_entry(&self, i: usize) -> &RingEntry {
        assert!(i < RING_ENTRIES);
        // SAFETY: the ring has RING_ENTRIES entries at RING_OFFSET, a
        // multiple of 64, inside every region (SLOTS_OFFSET lies past it).
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(RING_OFFSET + i * RING_ENTRY_SIZE)
                .cast::<RingEntry>()
        }
    }

    fn model_entry(&self, i: usize) -> &ModelEntry {
        assert!(i < MODELS_MAX);
        // SAFETY: the model table has MODELS_MAX entries after the header.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(HEADER_SIZE + i * MODEL_ENTRY_SIZE)
                .cast::<ModelEntry>()
        }
    }

    /// Writes the account id of slot `i`. Done once, by the process that
    /// binds the slot, after the bind; readers check it against the key's
    /// fingerprint, so a half-written name is seen as unnamed, not as wrong.
    pub(crate) fn write_name(&self, i: usize, account: &[u8]) {
        let n = self.name(i);
        for (k, w) in n.bytes.iter().enumerate() {
            w.store(word_at(account, k * 8), Ordering::Relaxed);
        }
    }

    /// The account id stored for slot `i`, `len` bytes.
    pub(crate) fn read_name(&self, i: usize, len: usize) -> ([u8; ACCOUNT_MAX], usize) {
        let mut out = [0u8; ACCOUNT_MAX];
        for (k, w) in self.name(i).bytes.iter().enumerate() {
            out[k * 8..k * 8 + 8].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        (out, len.min(ACCOUNT_MAX))
    }

    /// The region's id for model `name`, registering it if this region has
    /// not seen it. Ids are stable for the region's life, whatever policy
    /// each process loads, so keys keep their slots across policy changes.
    /// Lock-free: a registrant that dies mid-write is finished by the next
    /// one with the same name (the bytes it writes are the same).
    pub(crate) fn model_id(&self, name: &[u8]) -> Option<u16> {
        self.model_lookup(name, true)
    }

    /// The region's id for model `name` if some process registered it;
    /// registers nothing (read-only handles, operator views).
    pub(crate) fn find_model(&self, name: &[u8]) -> Option<u16> {
        self.model_lookup(name, false)
    }

    fn model_lookup(&self, name: &[u8], register: bool) -> Option<u16> {
        debug_assert!(!name.is_empty() && name.len() <= MODEL_NAME_MAX);
        let h = key::hash(self.seed(), name, u16::MAX).home >> 16;
        let want = h << 16 | (name.len() as u64) << 8;
        for i in 0..MODELS_MAX {
            let e = self.model_entry(i);
            let mut w = e.word.load(Ordering::Acquire);
            if w == 0 && !register {
                // Entries are taken in order: the name is in none further on.
                return None;
            }
            if w == 0 {
                match e
                    .word
                    .compare_exchange(0, want | 1, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => w = want | 1,
                    Err(cur) => w = cur,
                }
            }
            if w & !0xFF != want {
                continue;
            }
            if w & 0xFF == 1 && register {
                for (k, slot) in e.name.iter().enumerate() {
                    slot.store(word_at(name, k * 8), Ordering::Relaxed);
                }
                let _ = e.word.compare_exchange(
                    want | 1,
                    want | 2,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            if self.model_name(i as u16).as_deref() == Some(name) {
                return Some(i as u16);
            }
        }
        None
    }

    /// The name registered for model id `id`, if any.
    pub(crate) fn model_name(&self, id: u16) -> Option<Vec<u8>> {
        if id as usize >= MODELS_MAX {
            return None;
        }
        let e = self.model_entry(id as usize);
        let w = e.word.load(Ordering::Acquire);
        if w & 0xFF != 2 {
            return None;
        }
        let len = ((w >> 8) & 0xFF) as usize;
        let mut out = Vec::with_capacity(56);
        for s in &e.name {
            out.extend_from_slice(&s.load(Ordering::Relaxed).to_le_bytes());
        }
        out.truncate(len.min(MODEL_NAME_MAX));
        Some(out)
    }
}

pub(crate) fn word_at(b: &[u8], i: usize) -> u64 {
    let mut t = [0u8; 8];
    if i < b.len() {
        let n = (b.len() - i).min(8);
        t[..n].copy_from_slice(&b[i..i + n]);
    }
    u64::from_le_bytes(t)
}

/// Heap memory for a region owned by one limiter.
pub(crate) struct HeapMem {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
    /// Mapped with mmap (and offered huge pages), not from the allocator.
    mapped: bool,
}

/// Regions at least this large are mapped, not allocated, so they can be
/// backed by transparent huge pages: at a million keys a decision's slot is
/// a random access into tens of megabytes, and 2 MiB pages take the TLB
/// miss off most of them.
const HUGE_MIN: usize = 4 << 20;

impl HeapMem {
    pub(crate) fn new(len: usize) -> Option<HeapMem> {
        let layout = std::alloc::Layout::from_size_align(len, REGION_ALIGN).ok()?;
        #[cfg(all(target_os = "linux", not(miri)))]
        if len >= HUGE_MIN {
            // SAFETY: a fresh private anonymous mapping (zero-filled, page
            // aligned); the kernel chooses the address.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                // SAFETY: advice on the mapping just made; failure (THP
                // off, old kernel) leaves ordinary pages, which is fine.
                unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
                return Some(HeapMem {
                    ptr: NonNull::new(p.cast())?,
                    layout,
                    mapped: true,
                });
            }
        }
        // SAFETY: len > 0 (callers pass a region size), layout is valid.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        Some(HeapMem {
            ptr: NonNull::new(ptr)?,
            layout,
            mapped: false,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for HeapMem {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: mapped in `new` with exactly this length.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.layout.size()) };
            return;
        }
        // SAFETY: allocated in `new` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: HeapMem is a uniquely owned allocation; the region view over it
// only reaches it through atomics.
unsafe impl Send for HeapMem {}
// SAFETY: as above.
unsafe impl Sync for HeapMem {}

/// Rewrites a formatted region's header as a table formatted before the
/// unit area existed (no `UNITS` flag), for tests of such tables.
#[cfg(test)]
pub(crate) fn strip_units_for_test(mem: *mut u8) {
    // SAFETY: a test's own formatted region, used by nobody else yet.
    let h = unsafe { &mut *mem.cast::<Header>() };
    h.flags &= !(FLAG_UNITS | FLAG_IN_FLIGHT);
    h.checksum = checksum(h);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_flight_areas_hold_a_ledger_entry_per_slot() {
        use crate::holder::{Holders, Identity};
        use crate::slot::in_flight::Ledger;
        let slots = 8;
        let m = HeapMem::new(size_for(slots).unwrap()).unwrap();
        // SAFETY: fresh exclusive allocation of the right size.
        let r = unsafe { Region::format(m.as_ptr(), m.len(), 1, true) }.unwrap();
        assert!(r.has_in_flight());
        assert_eq!((r.holders().len(), r.ledger().len()), (HOLDERS, 8));
        assert_eq!(r.bytes(), m.len());
        let me = Identity { pid: 7, start: 9 };
        let h = Holders::new(r.holders()).register(me).unwrap();
        let l = Ledger::new(r.ledger());
        // Every slot's word and every entry are the table's own memory:
        // fill the ledger, one admission per slot.
        for i in 0..slots {
            assert!(l.acquire(r.in_flight(i as usize), i, 1, 1, h).is_ok());
        }
        assert!(l.acquire(r.in_flight(0), 0, 1, 9, h).is_err());
        // Attached again, a table keeps its areas.
        // SAFETY: the same memory, formatted above.
        let again = unsafe { Region::attach(m.as_ptr(), m.len()) }.unwrap();
        assert!(again.has_in_flight());
        assert_eq!(
            crate::slot::in_flight::Word::unpack(again.in_flight(3).load(Ordering::Acquire)).count,
            1
        );
    }

    fn heap(slots: u32) -> (HeapMem, Region) {
        let m = HeapMem::new(size_for(slots).unwrap()).unwrap();
        // SAFETY: fresh exclusive allocation of the right size.
        let r = unsafe { Region::format(m.as_ptr(), m.len(), 1, true) }.unwrap();
        (m, r)
    }

    #[test]
    fn sizes() {
        assert_eq!(size_for(0), None);
        assert_eq!(size_for(SLOTS_MAX + 1), None);
        assert_eq!(size_for(1), Some(SLOTS_OFFSET + HOLDERS_SIZE + 144));
        assert_eq!(size_as(1, false, true, false), Some(SLOTS_OFFSET + 128));
        assert_eq!(size_as(1, false, false, false), Some(SLOTS_OFFSET + 96));
        assert_eq!(slots_for(size_for(1000).unwrap()), 1000);
        assert_eq!(slots_for(size_for(1000).unwrap() + 143), 1000);
        assert_eq!(slots_for(100), 0);
    }

    #[test]
    fn attach_validates() {
        let (m, r) = heap(10);
        // SAFETY: `m` is live and sized for the region, and every call
        // below reads inside it (`at + len` never passes its end).
        let attach = |at: usize, len: usize| unsafe { Region::attach(m.as_ptr().add(at), len) };
        let a = attach(0, m.len()).unwrap();
        assert_eq!(a.slot_count(), 10);
        assert_eq!(a.seed(), r.seed());
        assert_eq!(
            attach(0, m.len() - 1).err(),
            Some(RegionError::Size {
                len: m.len() - 1,
                needed: m.len()
            })
        );
        assert_eq!(attach(8, m.len() - 64).err(), Some(RegionError::Alignment));
        assert_eq!(
            attach(0, 10)
                .err()
                .map(|e| matches!(e, RegionError::Size { .. })),
            Some(true)
        );
        // SAFETY: writes to header bytes of the live region `m`, which no
        // other handle uses.
        unsafe {
            *m.as_ptr().add(8) = 9; // layout version byte
            assert_eq!(
                Region::attach(m.as_ptr(), m.len()).err(),
                Some(RegionError::Version { found: 9 })
            );
            *m.as_ptr().add(8) = LAYOUT_VERSION as u8;
            *m.as_ptr().add(16) ^= 1; // slot count
            assert_eq!(
                Region::attach(m.as_ptr(), m.len()).err(),
                Some(RegionError::Corrupt)
            );
            *m.as_ptr().add(16) ^= 1;
            *m.as_ptr() = b'X';
            assert_eq!(
                Region::attach(m.as_ptr(), m.len()).err(),
                Some(RegionError::Magic)
            );
        }
    }

    #[test]
    fn model_ids_are_stable_and_named() {
        let (_m, r) = heap(4);
        let a = r.model_id(b"DeepSeek-V3.1").unwrap();
        let b = r.model_id(b"gpt-oss-120b").unwrap();
        assert_ne!(a, b);
        assert_eq!(r.model_id(b"DeepSeek-V3.1"), Some(a));
        assert_eq!(r.model_name(a).unwrap(), b"DeepSeek-V3.1");
        assert_eq!(r.model_name(200), None);
    }

    #[test]
    #[cfg_attr(miri, ignore = "256 x 256 probes: slow under miri")]
    fn model_table_fills_up() {
        let (_m, r) = heap(4);
        for i in 0..MODELS_MAX {
            assert!(r.model_id(format!("m{i}").as_bytes()).is_some());
        }
        assert_eq!(r.model_id(b"one-too-many"), None);
        assert!(r.model_id(b"m7").is_some());
    }

    #[test]
    fn names_round_trip() {
        let (_m, r) = heap(4);
        let name = [b'a'; ACCOUNT_MAX];
        r.write_name(3, &name);
        let (buf, n) = r.read_name(3, ACCOUNT_MAX);
        assert_eq!(&buf[..n], &name[..]);
        r.write_name(2, b"short");
        let (buf, n) = r.read_name(2, 5);
        assert_eq!(&buf[..n], b"short");
    }
}

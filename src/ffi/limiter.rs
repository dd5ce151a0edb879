//! The limiter object: its region in heap, caller or file memory, its
//! policy, its counters, and the one error channel of its constructors.

use std::ffi::{c_char, c_void, CStr};

use super::*;
use crate::error::Error;
use crate::limiter::Limiter;
use crate::options::LimiterOptions;

/// tg_limiter_open flag: create and format the file if it does not exist.
pub const TG_OPEN_CREATE: u32 = 1;
/// tg_limiter_open flag: map an existing file for reading only (operator
/// views), with `slots` 0. Nothing done through the handle reaches the
/// file, model names are not registered, and writing calls give
/// TG_E_READ_ONLY. Not with TG_OPEN_CREATE.
pub const TG_OPEN_READ_ONLY: u32 = 2;
/// tg_limiter_open and tg_limiter_make flag: the table holds quota leases,
/// one quota per (account, model) across every host joined to one Redis
/// (64 bytes more per slot: tg_region_size_for_leases). A table this call
/// formats is formatted for them, and an existing one (a file, attached
/// memory) must be one (TG_E_NOT_LEASED otherwise). A leased table, opened
/// with or without the flag, decides only once tg_limiter_connect joined
/// it (TG_E_NOT_JOINED until then).
pub const TG_OPEN_LEASES: u32 = 4;
/// tg_limiter_make flag, with `mem`: use the table already formatted there
/// (here or by another process), as tg_limiter_attach, instead of
/// formatting it. Since 0.4.
pub const TG_OPEN_ATTACH: u32 = 8;

/// How tg_limiter_make makes a limiter: where its table lives, its format,
/// and the options later versions add at the end. Zero-initialise it (every
/// field 0 is its default) and set `size` to sizeof(tg_limiter_options), or
/// leave it 0. Where the table lives: in `mem` if it is set (caller memory,
/// as tg_limiter_init_in, or tg_limiter_attach with TG_OPEN_ATTACH), else
/// in the file `path` if it is set (as tg_limiter_open), else on the heap
/// (as tg_limiter_new). Since 0.4.
#[repr(C)]
pub struct tg_limiter_options {
    /// sizeof(tg_limiter_options) as the caller's header has it, or 0.
    pub size: u32,
    /// TG_OPEN_* bits: TG_OPEN_LEASES (the format), TG_OPEN_CREATE and
    /// TG_OPEN_READ_ONLY (files), TG_OPEN_ATTACH (caller memory). A bit this
    /// library does not know is TG_E_INVALID, so a program asking for an
    /// option learns when the library lacks it.
    pub flags: u32,
    /// Slots of a table on the heap, or of a file TG_OPEN_CREATE makes (0:
    /// take an existing file as it is); 0 with `mem`.
    pub slots: u32,
    /// Caller memory (aligned to TG_REGION_ALIGN), `len` bytes of it, which
    /// must outlive the handle; or NULL.
    pub mem: *mut c_void,
    /// Bytes at `mem`; 0 without `mem`.
    pub len: usize,
    /// The region file (NUL-terminated), or NULL.
    pub path: *const c_char,
}

/// A limiter over one region (opaque). Many threads may call tg_check on
/// one handle at once; only tg_limiter_set_policy needs the handle alone.
pub struct tg_limiter {
    pub(super) inner: Limiter,
}

/// What tg_limiter_verify found walking every slot. Set `size` (or 0)
/// before the call.
#[repr(C)]
pub struct tg_verify_report {
    /// sizeof(tg_verify_report) as the caller's header has it, or 0.
    pub size: u32,
    /// Slots in the region.
    pub slots: u32,
    /// Slots bound to a key (with or without counts for today).
    pub bound: u32,
    /// Bound slots with counts for the current day.
    pub live: u32,
    /// Slots released and free for any key.
    pub open: u32,
    /// Slots never used.
    pub never_used: u32,
    /// Bound slots without an account name (a binder stopped before writing
    /// it): counts work, operator views cannot name the key.
    pub unnamed: u32,
    /// Models registered in the region.
    pub models: u32,
    /// Broken invariants found; 0 means the table is sound.
    pub problems: u32,
}

/// Table usage. Set `size` (or 0) before the call.
#[repr(C)]
pub struct tg_stats {
    /// sizeof(tg_stats) as the caller's header has it, or 0.
    pub size: u32,
    /// Slots in the region.
    pub slots: u32,
    /// Slots holding counts for the current day.
    pub used: u32,
    /// Requests refused with TG_E_TABLE_FULL since the region was formatted.
    pub table_full: u64,
    /// Bytes the region occupies.
    pub region_bytes: u64,
    /// The region's layout version (TG_LAYOUT_VERSION).
    pub layout_version: u32,
    /// Decisions that met counts dated beyond the clock-fault bound (a
    /// wrong clock, since corrected) and re-dated them to the current
    /// window, since the region was formatted: a metric to alert on.
    pub clock_faults: u64,
    /// Since 0.4 (written only when `size` covers it): 1 if the table has
    /// the in-flight areas and the fields below are its, else 0.
    pub has_in_flight: u32,
    /// Requests admitted and not yet released, over every key.
    pub in_flight: u64,
    /// Releases of requests that ran to their end (tg_release with any
    /// TG_END_* but TG_END_CUT), since formatting.
    pub released_completed: u64,
    /// Releases of requests cut short (TG_END_CUT: client gone, upstream
    /// error, a cancelled handler).
    pub released_aborted: u64,
    /// Units given back from processes found dead.
    pub reclaimed: u64,
    /// Admissions refused for in-flight (TG_LIMIT_IN_FLIGHT).
    pub refused_in_flight: u64,
}

/// sizeof(tg_stats) before the in-flight counters (0.3, and 0: the first
/// layout).
const STATS_SIZE_0_3: usize = std::mem::offset_of!(tg_stats, has_in_flight);

/// Bytes a region of `slots` slots needs; 0 for an invalid count (0 or more
/// than 2^30).
#[no_mangle]
pub extern "C" fn tg_region_size(slots: u32) -> usize {
    crate::region_size(slots).unwrap_or(0)
}

/// Most slots a region of `len` bytes holds; 0 if it is too small.
#[no_mangle]
pub extern "C" fn tg_region_slots_for(len: usize) -> u32 {
    crate::region_slots_for(len)
}

pub(super) fn make(out: *mut *mut tg_limiter, r: Result<Limiter, Error>) -> tg_status {
    make_at(out, r, "")
}

/// As [`make`], for a limiter over the file `path`: every message names the
/// file (a region error alone, "not a tollgate region", does not say which).
fn make_at(out: *mut *mut tg_limiter, r: Result<Limiter, Error>, path: &str) -> tg_status {
    match r {
        Ok(l) => {
            set_last_error("");
            give(out, tg_limiter { inner: l })
        }
        Err(e) => {
            let msg = e.to_string();
            if msg.contains(path) {
                set_last_error(&msg);
            } else {
                set_last_error(&format!("{path}: {msg}"));
            }
            status_of(&e)
        }
    }
}

thread_local! {
    /// The message of this thread's last failed constructor call.
    static LAST_ERROR: std::cell::RefCell<std::ffi::CString> =
        std::cell::RefCell::new(std::ffi::CString::default());
}

/// The start of every constructor: no handle in `*out` and no message in
/// tg_last_error() until this call says otherwise.
fn begin(out: *mut *mut tg_limiter) {
    set_last_error("");
    clear(out);
}

pub(super) fn set_last_error(msg: &str) {
    // A message never holds a NUL (paths are refused with one); strip any.
    let c = std::ffi::CString::new(msg.replace('\0', "")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// What went wrong, in words, in this thread's last call that made (or
/// failed to make) a limiter: tg_limiter_make, tg_limiter_new, _init_in,
/// _attach, _open, _share, their _for_leases forms, tg_limiter_connect and
/// tg_redis_options_set, tg_redis_check. Names the path, the OS's reason, the sizes and what to do
/// ("... grow it with `tollgate resize`"); "" after a success. The string
/// belongs to the thread and stays valid until its next such call.
#[no_mangle]
pub extern "C" fn tg_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A limiter whose region (tg_region_size(slots) bytes) the library
/// allocates and frees. On TG_OK `*out` owns it: release with
/// tg_limiter_free. The policy is copied.
#[no_mangle]
pub extern "C" fn tg_limiter_new(
    policy: *const tg_policy,
    slots: u32,
    out: *mut *mut tg_limiter,
) -> tg_status {
    guard(|| {
        begin(out);
        let (Some(p), false) = (policy_ref(policy), out.is_null()) else {
            return TG_E_NULL;
        };
        make(out, Limiter::new(p, slots))
    })
}

/// Formats `len` bytes at `mem` (aligned to TG_REGION_ALIGN) as an empty
/// region of tg_region_slots_for(len) slots. The memory stays the caller's:
/// the library never resizes or frees it, and it must outlive the handle.
/// Memory shared with other processes (MAP_SHARED, an nginx zone) may then
/// be attached by them with tg_limiter_attach.
#[no_mangle]
pub extern "C" fn tg_limiter_init_in(
    policy: *const tg_policy,
    mem: *mut c_void,
    len: usize,
    out: *mut *mut tg_limiter,
) -> tg_status {
    guard(|| {
        begin(out);
        let (Some(p), false, false) = (policy_ref(policy), mem.is_null(), out.is_null()) else {
            return TG_E_NULL;
        };
        // SAFETY: the caller grants `len` bytes at `mem` for the handle's life.
        make(out, unsafe { Limiter::init_in(p, mem.cast(), len) })
    })
}

/// Bytes a table of quota leases of `slots` slots needs (the region and 64
/// bytes more per slot: lease state, and the store's token counts as of the
/// last exchange); 0 for an invalid count.
#[no_mangle]
pub extern "C" fn tg_region_size_for_leases(slots: u32) -> usize {
    crate::region_size_for_leases(slots).unwrap_or(0)
}

/// Most slots a table of quota leases of `len` bytes holds (what
/// tg_limiter_make with TG_OPEN_LEASES formats in `len` bytes of caller
/// memory); 0 if it is too small. Since 0.4.
#[no_mangle]
pub extern "C" fn tg_region_slots_for_leases(len: usize) -> u32 {
    crate::region_slots_for_leases(len)
}

/// As tg_limiter_new, formatted for quota leases: one quota per (account,
/// model) across every host joined to one Redis. Its decisions are
/// TG_E_NOT_JOINED until tg_limiter_connect.
///
/// Deprecated since 0.4: tg_limiter_make with TG_OPEN_LEASES. Kept, as
/// every C name is.
#[no_mangle]
pub extern "C" fn tg_limiter_new_for_leases(
    policy: *const tg_policy,
    slots: u32,
    out: *mut *mut tg_limiter,
) -> tg_status {
    guard(|| {
        begin(out);
        let (Some(p), false) = (policy_ref(policy), out.is_null()) else {
            return TG_E_NULL;
        };
        make(out, LimiterOptions::new().leases(true).build(p, slots))
    })
}

/// As tg_limiter_init_in, formatted for quota leases: as many slots as fit
/// with their lease state (tg_region_size_for_leases). Other processes
/// attach with tg_limiter_attach, which reads the format from the header.
///
/// Deprecated since 0.4: tg_limiter_make with `mem` and TG_OPEN_LEASES.
/// Kept, as every C name is.
#[no_mangle]
pub extern "C" fn tg_limiter_init_in_for_leases(
    policy: *const tg_policy,
    mem: *mut c_void,
    len: usize,
    out: *mut *mut tg_limiter,
) -> tg_status {
    guard(|| {
        begin(out);
        let (Some(p), false, false) = (policy_ref(policy), mem.is_null(), out.is_null()) else {
            return TG_E_NULL;
        };
        // SAFETY: the caller grants `len` bytes at `mem` for the handle's life.
        make(out, unsafe {
            LimiterOptions::new()
                .leases(true)
                .init_in(p, mem.cast(), len)
        })
    })
}

/// Makes a limiter as `opts` says (see tg_limiter_options): the one
/// constructor that grows by options, where tg_limiter_new, _init_in,
/// _attach and _open are its common cases. On TG_OK `*out` owns the handle
/// (release with tg_limiter_free); otherwise tg_last_error() says why.
/// TG_E_INVALID for `mem` and `path` both set, flags that do not fit where
/// the table lives, or an unknown flag or `size`. Since 0.4.
#[no_mangle]
pub extern "C" fn tg_limiter_make(
    policy: *const tg_policy,
    opts: *const tg_limiter_options,
    out: *mut *mut tg_limiter,
) -> tg_status {
    guard(|| {
        begin(out);
        let (Some(p), false, false) = (policy_ref(policy), opts.is_null(), out.is_null()) else {
            return TG_E_NULL;
        };
        // SAFETY: non-null, the caller's struct, whose first field (`size`)
        // every version has.
        if !sized::<tg_limiter_options>(unsafe { (*opts).size }) {
            set_last_error("tg_limiter_options.size is neither 0 nor sizeof(tg_limiter_options)");
            return TG_E_INVALID;
        }
        // SAFETY: non-null and as large as this layout (checked).
        let o = unsafe { &*opts };
        let known = TG_OPEN_CREATE | TG_OPEN_READ_ONLY | TG_OPEN_LEASES | TG_OPEN_ATTACH;
        if o.flags & !known != 0 {
            set_last_error("tg_limiter_options.flags has a bit this library does not know");
            return TG_E_INVALID;
        }
        let mut with = LimiterOptions::new();
        with.leases(o.flags & TG_OPEN_LEASES != 0);
        let file_flags = TG_OPEN_CREATE | TG_OPEN_READ_ONLY;
        if !o.mem.is_null() {
            if !o.path.is_null() || o.slots != 0 || o.flags & file_flags != 0 {
                set_last_error(
                    "tg_limiter_options: caller memory (mem) takes no path, slots, TG_OPEN_CREATE or TG_OPEN_READ_ONLY",
                );
                return TG_E_INVALID;
            }
            let (mem, len) = (o.mem.cast::<u8>(), o.len);
            // SAFETY: the caller grants `len` bytes at `mem` for the
            // handle's life (the struct's contract).
            let r = unsafe {
                if o.flags & TG_OPEN_ATTACH != 0 {
                    with.attach(p, mem, len)
                } else {
                    with.init_in(p, mem, len)
                }
            };
            return make(out, r);
        }
        if o.len != 0 || o.flags & TG_OPEN_ATTACH != 0 {
            set_last_error("tg_limiter_options: len and TG_OPEN_ATTACH need mem");
            return TG_E_INVALID;
        }
        if !o.path.is_null() {
            // The file flags keep tg_limiter_open's meaning: one function
            // checks them for both.
            return tg_limiter_open(policy, o.path, o.slots, o.flags, out);
        }
        if o.flags & file_flags != 0 {
            set_last_error("tg_limiter_options: TG_OPEN_CREATE and TG_OPEN_READ_ONLY need a path");
            return TG_E_INVALID;
        }
        make(out, with.build(p, o.slots))
    })
}

/// 1 if the limiter's table is formatted for quota leases (decisions need
/// tg_limiter_connect), 0 for a local table or NULL. Fixed when the table
/// was formatted and read from its header by every handle, so a process
/// that attached shared memory or opened a file learns the format here.
/// Since 0.4.
#[no_mangle]
pub extern "C" fn tg_limiter_is_leased(limiter: *const tg_limiter) -> u32 {
    // SAFETY: NULL or a live limiter from this library.
    match unsafe { limiter.as_ref() } {
        Some(l) => l.inner.is_leased() as u32,
        None => 0,
    }
}

/// Uses `len` bytes at `mem` that tg_limiter_init_in (here or in another
/// process) already formatted, after checking magic, layout version, header
/// checksum and size. Never reads outside `len` bytes. Memory ownership as
/// tg_limiter_init_in.
#[no_mangle]
pub extern "C" fn tg_limiter_attach(
    policy: *const tg_policy,
    mem: *mut c_void,
    len: usize,
    out: *mut *mut tg_limiter,
) -> tg_status {
    guard(|| {
        begin(out);
        let (Some(p), false, false) = (policy_ref(policy), mem.is_null(), out.is_null()) else {
            return TG_E_NULL;
        };
        // SAFETY: the caller grants `len` bytes at `mem` for the handle's life.
        make(out, unsafe { Limiter::attach(p, mem.cast(), len) })
    })
}

/// Maps the region file at `path` (NUL-terminated), shared by every process
/// that opens it. With TG_OPEN_CREATE a missing file is created with
/// `slots` slots, race-free. `slots` = 0 takes an existing file as it is;
/// otherwise a file of another slot count is TG_E_REGION_SIZE. On TG_OK
/// `*out` owns the handle (tg_limiter_free unmaps; the file stays).
#[no_mangle]
pub extern "C" fn tg_limiter_open(
    policy: *const tg_policy,
    path: *const c_char,
    slots: u32,
    flags: u32,
    out: *mut *mut tg_limiter,
) -> tg_status {
    guard(|| {
        begin(out);
        let (Some(p), false, false) = (policy_ref(policy), path.is_null(), out.is_null()) else {
            return TG_E_NULL;
        };
        let read_only = flags & TG_OPEN_READ_ONLY != 0;
        if flags & !(TG_OPEN_CREATE | TG_OPEN_READ_ONLY | TG_OPEN_LEASES) != 0
            || (read_only && flags != TG_OPEN_READ_ONLY)
        {
            return TG_E_INVALID;
        }
        // SAFETY: non-null and NUL-terminated by contract.
        let path = unsafe { CStr::from_ptr(path) };
        let path = std::path::Path::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()),
        );
        let create = flags & TG_OPEN_CREATE != 0;
        let r = if read_only {
            if slots != 0 {
                return TG_E_INVALID;
            }
            Limiter::open_read_only(p, path)
        } else {
            LimiterOptions::new()
                .leases(flags & TG_OPEN_LEASES != 0)
                .create(create)
                .open(p, path, slots)
        };
        make_at(out, r, &path.display().to_string())
    })
}

/// Replaces the limiter's policy (copied); counters are kept and compared
/// against the new limits. The decision path reads the policy without
/// synchronisation, so this call must not overlap any other call on the
/// same handle. To change limits while other threads keep deciding, use
/// tg_limiter_share and move the threads to the new handle.
#[no_mangle]
pub extern "C" fn tg_limiter_set_policy(
    limiter: *mut tg_limiter,
    policy: *const tg_policy,
) -> tg_status {
    guard(|| {
        let Some(p) = policy_ref(policy) else {
            return TG_E_NULL;
        };
        // SAFETY: NULL or a live limiter from this library, used by no other
        // call while this one runs (the function's contract).
        let Some(l) = (unsafe { limiter.as_mut() }) else {
            return TG_E_NULL;
        };
        match l.inner.set_policy(p) {
            Ok(()) => TG_OK,
            Err(e) => status_of(&e),
        }
    })
}

/// A second handle on the same table with another policy (copied): counters
/// are shared, limits are the new policy's. On TG_OK `*out` owns it (release
/// with tg_limiter_free); the table stays alive until its last handle is
/// freed. Safe while other threads use `limiter`.
#[no_mangle]
pub extern "C" fn tg_limiter_share(
    limiter: *const tg_limiter,
    policy: *const tg_policy,
    out: *mut *mut tg_limiter,
) -> tg_status {
    guard(|| {
        begin(out);
        // SAFETY: NULL or a live limiter from this library.
        let (Some(l), Some(p), false) = (
            unsafe { limiter.as_ref() },
            policy_ref(policy),
            out.is_null(),
        ) else {
            return TG_E_NULL;
        };
        make(out, l.inner.share(p))
    })
}

/// Table usage at `now_ms`. Walks every slot: for metrics and operators,
/// not for each request.
#[no_mangle]
pub extern "C" fn tg_limiter_stats(
    limiter: *const tg_limiter,
    now_ms: u64,
    out: *mut tg_stats,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a live limiter from this library.
        let (Some(l), false) = (unsafe { limiter.as_ref() }, out.is_null()) else {
            return TG_E_NULL;
        };
        // SAFETY: non-null, readable by contract.
        let bytes = match unsafe { (*out).size } as usize {
            0 | STATS_SIZE_0_3 => STATS_SIZE_0_3,
            n if n >= std::mem::size_of::<tg_stats>() => std::mem::size_of::<tg_stats>(),
            _ => return TG_E_INVALID,
        };
        let s = l.inner.stats(now_ms);
        let f = s.in_flight.unwrap_or_default();
        let all = tg_stats {
            size: bytes as u32,
            clock_faults: s.clock_faults,
            slots: s.slots,
            used: s.used,
            table_full: s.table_full,
            region_bytes: s.bytes as u64,
            layout_version: s.layout_version,
            has_in_flight: u32::from(s.in_flight.is_some()),
            in_flight: f.in_use,
            released_completed: f.completed,
            released_aborted: f.aborted,
            reclaimed: f.reclaimed,
            refused_in_flight: f.refused,
        };
        // SAFETY: non-null, writable for `bytes` (the caller's layout, at
        // most ours: checked); a byte copy of plain data, no overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&all as *const tg_stats).cast::<u8>(),
                out.cast::<u8>(),
                bytes,
            )
        };
        TG_OK
    })
}

/// Sets the clock-fault bound in seconds (default: the policy's
/// `[clock] max_skew_seconds`, itself 60 by default; at most 86400, rounded
/// up to whole minutes). Counts dated further than this ahead of a
/// decision's now_ms are taken as counts of the current window, so a clock
/// that was wrong and is corrected locks no key out; within the bound a
/// clock stepping back gives no quota back. Like tg_limiter_set_policy, it
/// must not overlap any other call on the same handle; tg_limiter_share
/// and tg_limiter_set_policy reset it to the policy's value.
#[no_mangle]
pub extern "C" fn tg_limiter_set_max_skew(limiter: *mut tg_limiter, seconds: u32) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a live limiter from this library, not in use by
        // any other call meanwhile (documented).
        let Some(l) = (unsafe { limiter.as_mut() }) else {
            return TG_E_NULL;
        };
        match l.inner.set_max_skew(seconds) {
            Ok(()) => TG_OK,
            Err(e) => status_of(&e),
        }
    })
}

/// Walks every slot and checks the table's invariants (generations, windows,
/// no key bound twice, every key reachable by its probe chain). Safe while
/// other processes decide. The first problem, if any, is written to `text`
/// (`cap` bytes, NUL-terminated, truncated; `text` may be NULL with cap 0).
/// TG_OK whether or not problems were found: `out->problems` says.
#[no_mangle]
pub extern "C" fn tg_limiter_verify(
    limiter: *const tg_limiter,
    now_ms: u64,
    out: *mut tg_verify_report,
    text: *mut c_char,
    cap: usize,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a live limiter from this library.
        let (Some(l), false) = (unsafe { limiter.as_ref() }, out.is_null()) else {
            return TG_E_NULL;
        };
        if text.is_null() && cap != 0 {
            return TG_E_NULL;
        }
        // SAFETY: non-null, readable by contract.
        if !sized::<tg_verify_report>(unsafe { (*out).size }) {
            return TG_E_INVALID;
        }
        let r = l.inner.verify(now_ms);
        if let Some(p) = r.problems.first() {
            write_err(text, cap, &p.to_string());
        } else {
            write_err(text, cap, "");
        }
        // SAFETY: non-null, writable by contract.
        unsafe {
            *out = tg_verify_report {
                size: std::mem::size_of::<tg_verify_report>() as u32,
                slots: r.slots,
                bound: r.bound,
                live: r.live,
                open: r.open,
                never_used: r.never_used,
                unnamed: r.unnamed,
                models: r.models,
                problems: r.problems.len() as u32,
            }
        };
        TG_OK
    })
}

/// Releases a limiter. NULL is a no-op. Memory given to tg_limiter_init_in
/// or _attach is not freed; a file region is unmapped and the file kept.
#[no_mangle]
pub extern "C" fn tg_limiter_free(limiter: *mut tg_limiter) {
    guard_free(|| {
        if !limiter.is_null() {
            // SAFETY: made by Box::into_raw in this library and not yet freed.
            drop(unsafe { Box::from_raw(limiter) });
        }
    });
}

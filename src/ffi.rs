//! The C ABI. A thin layer over the Rust API: it checks pointers and
//! lengths, converts types, and catches any panic so none unwinds into C.
//! cbindgen reads this file (from build.rs) to write include/tollgate.h.
#![allow(non_camel_case_types)]
// C callers cannot see a Rust `unsafe`: each function checks its pointers
// for NULL and documents what else it trusts the caller for.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::body::BodyError;
use crate::decision::{Decision, Sink, Window};
use crate::error::Error;
use crate::limiter::{Limiter, Request};
use crate::policy::{Policy, Tier, MODEL_NAME_MAX};
use crate::region::{RegionError, LAYOUT_VERSION};
use crate::slot::LimitedBy;

mod answer;
mod body;
pub use answer::*;
pub use body::*;

/// Result code of every function: TG_OK (0) or one of the TG_E_* values.
pub type tg_status = i32;

/// Success.
pub const TG_OK: tg_status = 0;
/// A required pointer argument was NULL.
pub const TG_E_NULL: tg_status = 1;
/// An argument is out of range (tier, slot count, now_ms, length, flags).
pub const TG_E_INVALID: tg_status = 2;
/// Account id empty or longer than TG_ACCOUNT_MAX bytes.
pub const TG_E_ACCOUNT: tg_status = 3;
/// The model is not in the policy: answer 404 (or 400), not 429.
pub const TG_E_UNKNOWN_MODEL: tg_status = 4;
/// No limit configured for this tier and model (or enterprise account).
pub const TG_E_NO_LIMIT: tg_status = 5;
/// The cost exceeds the limit itself: it could never be admitted.
pub const TG_E_COST_TOO_LARGE: tg_status = 6;
/// No free slot for a new key; the caller decides to fail open or closed.
pub const TG_E_TABLE_FULL: tg_status = 7;
/// The output buffer is too small; *written holds the bytes needed.
pub const TG_E_BUFFER_TOO_SMALL: tg_status = 8;
/// The policy is invalid; the err buffer says "file:line: field: reason".
pub const TG_E_POLICY: tg_status = 9;
/// A file could not be opened, created, read or mapped.
pub const TG_E_IO: tg_status = 10;
/// The memory is not a tollgate region (or was never fully formatted).
pub const TG_E_REGION_MAGIC: tg_status = 11;
/// The region was formatted with another layout version.
pub const TG_E_REGION_VERSION: tg_status = 12;
/// The region's length does not match its slot count (truncated, resized,
/// too small), or holds another slot count than asked for.
pub const TG_E_REGION_SIZE: tg_status = 13;
/// The region's header is corrupt (checksum or sizes disagree).
pub const TG_E_REGION_CORRUPT: tg_status = 14;
/// The memory is not aligned to TG_REGION_ALIGN (a region) or
/// TG_BODY_SCAN_ALIGN (a body scanner).
pub const TG_E_ALIGNMENT: tg_status = 15;
/// The CPU has no lock-free 128-bit compare-and-swap.
pub const TG_E_UNSUPPORTED: tg_status = 16;
/// The region's table of model names (256) is full.
pub const TG_E_MODEL_TABLE_FULL: tg_status = 17;
/// The file system has no room to reserve the region file; nothing was
/// left behind (tg_limiter_open's detail names the bytes needed and free).
pub const TG_E_NO_SPACE: tg_status = 18;
/// The handle was opened with TG_OPEN_READ_ONLY and the call would write.
pub const TG_E_READ_ONLY: tg_status = 19;
/// The request body is not a JSON object: a syntax error, invalid UTF-8 or
/// a lone surrogate in a string, bytes after the value, an empty body, or a
/// top-level value that is not an object (answer 400, invalid_json).
pub const TG_E_BODY_NOT_JSON: tg_status = 20;
/// The body has no top-level "model" key, or its value is not a string.
pub const TG_E_BODY_NO_MODEL: tg_status = 21;
/// More than one top-level key names the model: equal to "model" after
/// unescaping and ASCII case folding ("model", "Model", "\u006dodel"...).
/// Refused because upstream parsers disagree on which one wins.
pub const TG_E_BODY_AMBIGUOUS_MODEL: tg_status = 22;
/// The body nests deeper than TG_BODY_DEPTH_MAX levels.
pub const TG_E_BODY_TOO_DEEP: tg_status = 23;
/// Not returned by the scanner (it has no size cap): passed to
/// tg_answer_for by a binding whose own cap on the bytes it buffers was
/// exceeded (answer 413, request_too_large).
pub const TG_E_BODY_TOO_LARGE: tg_status = 24;
/// An internal error was caught at the boundary (a bug: please report it).
pub const TG_E_PANIC: tg_status = 99;

/// The version this header describes: major * 1000000 + minor * 1000 + patch.
pub const TG_VERSION_NUMBER: u32 = 1000;
/// The region layout version this header describes.
pub const TG_LAYOUT_VERSION: u32 = 2;
/// Alignment caller memory must have for tg_limiter_init_in / _attach.
pub const TG_REGION_ALIGN: u32 = 64;
/// Longest account id, in bytes.
pub const TG_ACCOUNT_MAX: u32 = 64;
/// Longest model id, in bytes.
pub const TG_MODEL_NAME_MAX: u32 = 56;
/// Bytes each slot takes in a region (hot state and account name).
pub const TG_BYTES_PER_SLOT: u32 = 96;

/// Free tier: accounts with no payment method.
pub const TG_TIER_FREE: u32 = 0;
/// Developer tier: accounts with a payment method.
pub const TG_TIER_DEVELOPER: u32 = 1;
/// Enterprise tier: per-account plans from the policy file.
pub const TG_TIER_ENTERPRISE: u32 = 2;

/// Nothing refused (the request was allowed).
pub const TG_LIMIT_NONE: u32 = 0;
/// The minute window refused.
pub const TG_LIMIT_MINUTE: u32 = 1;
/// The day window refused (reported whenever the day is exhausted).
pub const TG_LIMIT_DAY: u32 = 2;

/// tg_limiter_open flag: create and format the file if it does not exist.
pub const TG_OPEN_CREATE: u32 = 1;
/// tg_limiter_open flag: map an existing file for reading only (operator
/// views), with `slots` 0. Nothing done through the handle reaches the
/// file, model names are not registered, and writing calls give
/// TG_E_READ_ONLY. Not with TG_OPEN_CREATE.
pub const TG_OPEN_READ_ONLY: u32 = 2;

/// A loaded policy (opaque). Immutable; may be shared between threads.
pub struct tg_policy {
    inner: Policy,
}

/// A limiter over one region (opaque). Many threads may call tg_check on
/// one handle at once; only tg_limiter_set_policy needs the handle alone.
pub struct tg_limiter {
    inner: Limiter,
}

/// One request. Strings are bytes with a length, not NUL-terminated.
#[repr(C)]
pub struct tg_request {
    /// Account id, 1 to TG_ACCOUNT_MAX bytes.
    pub account: *const c_char,
    pub account_len: usize,
    /// Model id as in the policy.
    pub model: *const c_char,
    pub model_len: usize,
    /// TG_TIER_FREE, TG_TIER_DEVELOPER or TG_TIER_ENTERPRISE.
    pub tier: u32,
    /// Requests this call counts for; 0 = look without counting (a peek:
    /// `allowed` then says whether one more request would pass).
    pub cost: u32,
    /// Explicit requests-per-minute limit; 0 = from the policy.
    pub rpm: u32,
    /// Explicit requests-per-day limit; 0 = from the policy.
    pub rpd: u32,
}

/// The answer for one request: everything a proxy needs for its headers.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tg_decision {
    /// 1 if admitted (and counted), 0 if refused (and nothing counted).
    pub allowed: u32,
    /// TG_LIMIT_NONE, TG_LIMIT_MINUTE or TG_LIMIT_DAY.
    pub limited_by: u32,
    pub minute_limit: u32,
    pub minute_remaining: u32,
    /// Epoch second at which the minute window resets.
    pub minute_reset: u64,
    pub day_limit: u32,
    pub day_remaining: u32,
    /// Epoch second at which the day window resets.
    pub day_reset: u64,
    /// Whole seconds, rounded up, until the refusing window resets; 0 when
    /// allowed.
    pub retry_after: u32,
}

/// What tg_limiter_verify found walking every slot.
#[repr(C)]
pub struct tg_verify_report {
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

/// Table usage.
#[repr(C)]
pub struct tg_stats {
    /// Slots in the region.
    pub slots: u32,
    /// Slots holding counts for the current day.
    pub used: u32,
    /// Requests refused with TG_E_TABLE_FULL since the region was formatted.
    pub table_full: u64,
    /// Bytes the region occupies.
    pub region_bytes: u64,
    pub layout_version: u32,
}

fn guard(f: impl FnOnce() -> tg_status) -> tg_status {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(TG_E_PANIC)
}

fn status_of(e: &Error) -> tg_status {
    match e {
        Error::Invalid(_) => TG_E_INVALID,
        Error::Account => TG_E_ACCOUNT,
        Error::UnknownModel => TG_E_UNKNOWN_MODEL,
        Error::NoLimit => TG_E_NO_LIMIT,
        Error::CostTooLarge => TG_E_COST_TOO_LARGE,
        Error::TableFull => TG_E_TABLE_FULL,
        Error::ModelTableFull => TG_E_MODEL_TABLE_FULL,
        Error::NoSpace { .. } => TG_E_NO_SPACE,
        Error::ReadOnly => TG_E_READ_ONLY,
        Error::Policy(_) => TG_E_POLICY,
        Error::Io { .. } => TG_E_IO,
        Error::Body(b) => body_status(*b),
        Error::Region(r) => match r {
            RegionError::Alignment => TG_E_ALIGNMENT,
            RegionError::Size { .. } | RegionError::SlotCount { .. } => TG_E_REGION_SIZE,
            RegionError::Magic => TG_E_REGION_MAGIC,
            RegionError::Version { .. } => TG_E_REGION_VERSION,
            RegionError::Corrupt => TG_E_REGION_CORRUPT,
            RegionError::Unsupported => TG_E_UNSUPPORTED,
        },
    }
}

fn body_status(e: BodyError) -> tg_status {
    match e {
        BodyError::NotJson => TG_E_BODY_NOT_JSON,
        BodyError::NoModel => TG_E_BODY_NO_MODEL,
        BodyError::AmbiguousModel => TG_E_BODY_AMBIGUOUS_MODEL,
        BodyError::TooDeep => TG_E_BODY_TOO_DEEP,
        BodyError::TooLarge => TG_E_BODY_TOO_LARGE,
    }
}

/// Copies `msg` into a caller's error buffer, truncated, NUL-terminated.
fn write_err(err: *mut c_char, cap: usize, msg: &str) {
    if err.is_null() || cap == 0 {
        return;
    }
    let n = msg.len().min(cap - 1);
    // SAFETY: the caller promises `err` holds `cap` bytes; we write n < cap
    // bytes and a NUL.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

/// Puts a new handle in `*out` (which the caller checked is not NULL).
fn give<T>(out: *mut *mut T, value: T) -> tg_status {
    // SAFETY: the caller checked `out` is non-null; it points to writable
    // storage for one pointer by the function's contract.
    unsafe { *out = Box::into_raw(Box::new(value)) };
    TG_OK
}

fn clear<T>(out: *mut *mut T) {
    if !out.is_null() {
        // SAFETY: non-null, writable by contract.
        unsafe { *out = std::ptr::null_mut() };
    }
}

/// The library's version number, to compare against TG_VERSION_NUMBER.
#[no_mangle]
pub extern "C" fn tg_version_number() -> u32 {
    TG_VERSION_NUMBER
}

/// The library's version as a static string ("0.1.0"); never free it.
#[no_mangle]
pub extern "C" fn tg_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The region layout version this library reads and writes.
#[no_mangle]
pub extern "C" fn tg_layout_version() -> u32 {
    LAYOUT_VERSION
}

/// A static English description of `status` ("unknown status" for values
/// that are not a tg_status); never free it.
#[no_mangle]
pub extern "C" fn tg_status_str(status: tg_status) -> *const c_char {
    let s: &'static CStr = match status {
        TG_OK => c"ok",
        TG_E_NULL => c"a required pointer argument is NULL",
        TG_E_INVALID => c"an argument is out of range",
        TG_E_ACCOUNT => c"account id must be 1 to 64 bytes",
        TG_E_UNKNOWN_MODEL => c"unknown model",
        TG_E_NO_LIMIT => c"no limit configured for this tier and model",
        TG_E_COST_TOO_LARGE => c"cost exceeds the limit itself",
        TG_E_TABLE_FULL => c"table full: no free slot for a new key",
        TG_E_BUFFER_TOO_SMALL => c"buffer too small",
        TG_E_POLICY => c"invalid policy",
        TG_E_IO => c"file could not be opened, created or mapped",
        TG_E_REGION_MAGIC => c"not a tollgate region",
        TG_E_REGION_VERSION => c"region has another layout version",
        TG_E_REGION_SIZE => c"region size does not match its slot count",
        TG_E_REGION_CORRUPT => c"region header is corrupt",
        TG_E_ALIGNMENT => c"memory is not aligned (64 bytes for a region, 8 for a body scanner)",
        TG_E_UNSUPPORTED => c"no lock-free 128-bit compare-and-swap on this CPU",
        TG_E_MODEL_TABLE_FULL => c"the region's model table is full",
        TG_E_NO_SPACE => c"no space to reserve the region file",
        TG_E_READ_ONLY => c"the handle was opened read-only",
        TG_E_BODY_NOT_JSON => c"the request body is not a JSON object",
        TG_E_BODY_NO_MODEL => c"the request body has no top-level \"model\" string",
        TG_E_BODY_AMBIGUOUS_MODEL => c"the request body names the model more than once",
        TG_E_BODY_TOO_DEEP => c"the request body nests deeper than 1024 levels",
        TG_E_BODY_TOO_LARGE => c"the request body is larger than the gateway reads",
        TG_E_NO_ACCOUNT => c"the request carries no account id",
        TG_E_NOT_LIMITED => c"the request's method is not limited",
        TG_E_ABORTED => c"a callback asked to stop",
        TG_E_PANIC => c"internal error (caught panic)",
        _ => c"unknown status",
    };
    s.as_ptr()
}

/// The built-in policy (Developer tier of the published Infercom table).
/// On TG_OK `*out` owns a policy: release it with tg_policy_free.
#[no_mangle]
pub extern "C" fn tg_policy_default(out: *mut *mut tg_policy) -> tg_status {
    guard(|| {
        if out.is_null() {
            return TG_E_NULL;
        }
        give(
            out,
            tg_policy {
                inner: Policy::builtin(),
            },
        )
    })
}

/// Loads a TOML policy file (`path` NUL-terminated). On TG_OK `*out` owns a
/// policy (release with tg_policy_free). On TG_E_POLICY (invalid) or
/// TG_E_IO (unreadable) `err` (if not NULL, `err_cap` bytes) receives
/// "file:line: field: reason", NUL-terminated, and `*out` is set to NULL.
#[no_mangle]
pub extern "C" fn tg_policy_load(
    path: *const c_char,
    out: *mut *mut tg_policy,
    err: *mut c_char,
    err_cap: usize,
) -> tg_status {
    guard(|| {
        clear(out);
        if path.is_null() || out.is_null() {
            return TG_E_NULL;
        }
        // SAFETY: non-null and NUL-terminated by contract.
        let path = unsafe { CStr::from_ptr(path) };
        let path = std::path::Path::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()),
        );
        match Policy::load(path) {
            Ok(p) => give(out, tg_policy { inner: p }),
            Err(e) => {
                write_err(err, err_cap, &e.to_string());
                if e.io.is_some() {
                    TG_E_IO
                } else {
                    TG_E_POLICY
                }
            }
        }
    })
}

/// Parses policy TOML from `len` bytes at `text` (need not be
/// NUL-terminated). Ownership and errors as tg_policy_load.
#[no_mangle]
pub extern "C" fn tg_policy_parse(
    text: *const c_char,
    len: usize,
    out: *mut *mut tg_policy,
    err: *mut c_char,
    err_cap: usize,
) -> tg_status {
    guard(|| {
        clear(out);
        if out.is_null() {
            return TG_E_NULL;
        }
        let bytes = match any_bytes(text, len) {
            Ok(b) => b,
            Err(s) => return s,
        };
        let Ok(text) = std::str::from_utf8(bytes) else {
            write_err(err, err_cap, "<policy text>: the policy is not valid UTF-8");
            return TG_E_POLICY;
        };
        match Policy::parse(text, "<policy text>") {
            Ok(p) => give(out, tg_policy { inner: p }),
            Err(e) => {
                write_err(err, err_cap, &e.to_string());
                TG_E_POLICY
            }
        }
    })
}

/// Releases a policy. NULL is a no-op. Limiters made from it keep their own
/// copy, so it may be freed as soon as they are made.
#[no_mangle]
pub extern "C" fn tg_policy_free(policy: *mut tg_policy) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !policy.is_null() {
            // SAFETY: made by Box::into_raw in this library and not yet freed.
            drop(unsafe { Box::from_raw(policy) });
        }
    }));
}

/// The number of models the policy names.
#[no_mangle]
pub extern "C" fn tg_policy_model_count(policy: *const tg_policy, count: *mut u32) -> tg_status {
    guard(|| {
        if policy.is_null() || count.is_null() {
            return TG_E_NULL;
        }
        // SAFETY: non-null pointers to a live policy and a writable u32.
        unsafe { *count = (*policy).inner.models().len() as u32 };
        TG_OK
    })
}

/// The id of model `index` (0 .. count-1): `*name` points into the policy
/// (valid until tg_policy_free, not NUL-terminated), `*name_len` its bytes.
#[no_mangle]
pub extern "C" fn tg_policy_model_name(
    policy: *const tg_policy,
    index: u32,
    name: *mut *const c_char,
    name_len: *mut usize,
) -> tg_status {
    guard(|| {
        if policy.is_null() || name.is_null() || name_len.is_null() {
            return TG_E_NULL;
        }
        // SAFETY: non-null pointer to a live policy.
        let p = unsafe { &(*policy).inner };
        let Some(m) = p.models().get(index as usize) else {
            return TG_E_INVALID;
        };
        // SAFETY: non-null, writable by contract.
        unsafe {
            *name = m.name.as_ptr().cast();
            *name_len = m.name.len();
        }
        TG_OK
    })
}

/// The limits the policy sets for `tier` on `model` (for enterprise, the
/// plan of `account`, which may otherwise be NULL with length 0).
#[no_mangle]
pub extern "C" fn tg_policy_limits(
    policy: *const tg_policy,
    tier: u32,
    model: *const c_char,
    model_len: usize,
    account: *const c_char,
    account_len: usize,
    rpm: *mut u32,
    rpd: *mut u32,
) -> tg_status {
    guard(|| {
        if policy.is_null() || rpm.is_null() || rpd.is_null() {
            return TG_E_NULL;
        }
        let Some(tier) = Tier::from_u32(tier) else {
            return TG_E_INVALID;
        };
        let model = match bytes_arg(model, model_len, MODEL_NAME_MAX, TG_E_UNKNOWN_MODEL) {
            Ok(m) => m,
            Err(s) => return s,
        };
        let account = if account_len == 0 {
            &[][..]
        } else {
            match bytes_arg(account, account_len, crate::ACCOUNT_MAX, TG_E_ACCOUNT) {
                Ok(a) => a,
                Err(s) => return s,
            }
        };
        // SAFETY: non-null pointer to a live policy.
        let p = unsafe { &(*policy).inner };
        let Some(i) = p.model_index(model) else {
            return TG_E_UNKNOWN_MODEL;
        };
        match p.limits(tier, i, account) {
            Some(l) => {
                // SAFETY: non-null, writable by contract.
                unsafe {
                    *rpm = l.rpm;
                    *rpd = l.rpd;
                }
                TG_OK
            }
            None => TG_E_NO_LIMIT,
        }
    })
}

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

fn policy_ref<'a>(policy: *const tg_policy) -> Option<&'a Policy> {
    // SAFETY: callers pass either NULL or a live policy from this library.
    unsafe { policy.as_ref() }.map(|p| &p.inner)
}

fn make(out: *mut *mut tg_limiter, r: Result<Limiter, Error>) -> tg_status {
    match r {
        Ok(l) => give(out, tg_limiter { inner: l }),
        Err(e) => status_of(&e),
    }
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
        clear(out);
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
        clear(out);
        let (Some(p), false, false) = (policy_ref(policy), mem.is_null(), out.is_null()) else {
            return TG_E_NULL;
        };
        // SAFETY: the caller grants `len` bytes at `mem` for the handle's life.
        make(out, unsafe { Limiter::init_in(p, mem.cast(), len) })
    })
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
        clear(out);
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
        clear(out);
        let (Some(p), false, false) = (policy_ref(policy), path.is_null(), out.is_null()) else {
            return TG_E_NULL;
        };
        if flags & !(TG_OPEN_CREATE | TG_OPEN_READ_ONLY) != 0
            || flags == TG_OPEN_CREATE | TG_OPEN_READ_ONLY
        {
            return TG_E_INVALID;
        }
        // SAFETY: non-null and NUL-terminated by contract.
        let path = unsafe { CStr::from_ptr(path) };
        let path = std::path::Path::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()),
        );
        if flags & TG_OPEN_READ_ONLY != 0 {
            if slots != 0 {
                return TG_E_INVALID;
            }
            return make(out, Limiter::open_read_only(p, path));
        }
        make(
            out,
            Limiter::open(p, path, slots, flags & TG_OPEN_CREATE != 0),
        )
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
        clear(out);
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
        let s = l.inner.stats(now_ms);
        // SAFETY: non-null, writable by contract.
        unsafe {
            *out = tg_stats {
                slots: s.slots,
                used: s.used,
                table_full: s.table_full,
                region_bytes: s.bytes as u64,
                layout_version: s.layout_version,
            }
        };
        TG_OK
    })
}

/// Decisions that met counts dated beyond the clock-fault bound (a wrong
/// clock, since corrected) and re-dated them to the current window, since
/// the region was formatted: a metric to alert on. (A separate call because
/// tg_stats has no room to grow.)
#[no_mangle]
pub extern "C" fn tg_limiter_clock_faults(limiter: *const tg_limiter, out: *mut u64) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a live limiter from this library.
        let (Some(l), false) = (unsafe { limiter.as_ref() }, out.is_null()) else {
            return TG_E_NULL;
        };
        // SAFETY: non-null, writable by contract.
        unsafe { *out = l.inner.stats_counters().1 };
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
        let r = l.inner.verify(now_ms);
        if let Some(p) = r.problems.first() {
            write_err(text, cap, &p.to_string());
        } else {
            write_err(text, cap, "");
        }
        // SAFETY: non-null, writable by contract.
        unsafe {
            *out = tg_verify_report {
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
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !limiter.is_null() {
            // SAFETY: made by Box::into_raw in this library and not yet freed.
            drop(unsafe { Box::from_raw(limiter) });
        }
    }));
}

/// `len` bytes at `ptr` as a slice, or `err` when empty / longer than
/// `max`; TG_E_NULL for a NULL pointer with a length.
fn bytes_arg<'a>(
    ptr: *const c_char,
    len: usize,
    max: usize,
    err: tg_status,
) -> Result<&'a [u8], tg_status> {
    if ptr.is_null() {
        return Err(if len == 0 { err } else { TG_E_NULL });
    }
    if len == 0 || len > max {
        return Err(err);
    }
    // SAFETY: non-null, and the caller promises `len` readable bytes; len is
    // small, so within isize.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

fn to_c(d: &Decision) -> tg_decision {
    tg_decision {
        allowed: d.allowed as u32,
        limited_by: d.limited_by as u32,
        minute_limit: d.minute.limit,
        minute_remaining: d.minute.remaining,
        minute_reset: d.minute.reset,
        day_limit: d.day.limit,
        day_remaining: d.day.remaining,
        day_reset: d.day.reset,
        retry_after: d.retry_after,
    }
}

/// The caller's decision, checked: TG_E_NULL for NULL, TG_E_INVALID for a
/// `limited_by` that is not a TG_LIMIT_* value.
fn decision_arg(decision: *const tg_decision) -> Result<Decision, tg_status> {
    // SAFETY: NULL or a readable tg_decision by contract.
    let d = unsafe { decision.as_ref() }.ok_or(TG_E_NULL)?;
    from_c(d).ok_or(TG_E_INVALID)
}

/// `len` bytes at `ptr` (which may be NULL when `len` is 0), any length.
fn any_bytes<'a>(ptr: *const c_char, len: usize) -> Result<&'a [u8], tg_status> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(TG_E_NULL);
    }
    if len > isize::MAX as usize {
        return Err(TG_E_INVALID);
    }
    // SAFETY: non-null with `len` readable bytes by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

fn from_c(d: &tg_decision) -> Option<Decision> {
    let limited_by = match d.limited_by {
        TG_LIMIT_NONE => LimitedBy::None,
        TG_LIMIT_MINUTE => LimitedBy::Minute,
        TG_LIMIT_DAY => LimitedBy::Day,
        _ => return None,
    };
    Some(Decision {
        allowed: d.allowed != 0,
        limited_by,
        minute: Window {
            limit: d.minute_limit,
            remaining: d.minute_remaining,
            reset: d.minute_reset,
        },
        day: Window {
            limit: d.day_limit,
            remaining: d.day_remaining,
            reset: d.day_reset,
        },
        retry_after: d.retry_after,
    })
}

/// Decides one request at `now_ms` (epoch milliseconds) and fills `*out`.
/// TG_OK means a decision was made either way: `out->allowed` says which.
/// Other statuses leave `*out` untouched. No allocation, lock or syscall.
#[no_mangle]
pub extern "C" fn tg_check(
    limiter: *mut tg_limiter,
    req: *const tg_request,
    now_ms: u64,
    out: *mut tg_decision,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or live objects by contract.
        let (Some(l), Some(r), false) = (
            unsafe { limiter.as_ref() },
            unsafe { req.as_ref() },
            out.is_null(),
        ) else {
            return TG_E_NULL;
        };
        let account = match bytes_arg(r.account, r.account_len, crate::ACCOUNT_MAX, TG_E_ACCOUNT) {
            Ok(a) => a,
            Err(s) => return s,
        };
        let model = match bytes_arg(r.model, r.model_len, MODEL_NAME_MAX, TG_E_UNKNOWN_MODEL) {
            Ok(m) => m,
            Err(s) => return s,
        };
        let Some(tier) = Tier::from_u32(r.tier) else {
            return TG_E_INVALID;
        };
        let request = Request {
            account,
            model,
            tier,
            cost: r.cost,
            rpm: r.rpm,
            rpd: r.rpd,
        };
        match l.inner.check(&request, now_ms) {
            Ok(d) => {
                // SAFETY: non-null, writable by contract.
                unsafe { *out = to_c(&d) };
                TG_OK
            }
            Err(e) => status_of(&e),
        }
    })
}

/// tg_check at the real-time clock (CLOCK_REALTIME). The one syscall-free
/// path stays tg_check; this reads the clock (a vDSO call on Linux).
#[no_mangle]
pub extern "C" fn tg_check_now(
    limiter: *mut tg_limiter,
    req: *const tg_request,
    out: *mut tg_decision,
) -> tg_status {
    tg_check(limiter, req, crate::now_ms(), out)
}

/// The real-time clock in epoch milliseconds.
#[no_mangle]
pub extern "C" fn tg_now_ms() -> u64 {
    crate::now_ms()
}

/// Renders through `f` into `cap` bytes at `buf`: TG_OK with `*written` =
/// bytes written (plus a NUL when room remains, not counted), or
/// TG_E_BUFFER_TOO_SMALL with `*written` = bytes needed.
fn render(
    buf: *mut c_char,
    cap: usize,
    written: *mut usize,
    f: impl FnOnce(&mut Sink<'_>) -> std::fmt::Result,
) -> tg_status {
    if written.is_null() || (buf.is_null() && cap != 0) {
        return TG_E_NULL;
    }
    let mut empty = [0u8; 0];
    let out: &mut [u8] = if buf.is_null() {
        &mut empty
    } else {
        // SAFETY: the caller promises `cap` writable bytes at `buf`.
        unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), cap) }
    };
    let mut sink = Sink::new(out);
    if f(&mut sink).is_err() {
        return TG_E_PANIC;
    }
    let needed = sink.needed();
    // SAFETY: non-null, writable by contract.
    unsafe { *written = needed };
    if needed > cap {
        return TG_E_BUFFER_TOO_SMALL;
    }
    if needed < cap {
        // SAFETY: needed < cap, inside the caller's buffer.
        unsafe { *buf.add(needed) = 0 };
    }
    TG_OK
}

/// The six x-ratelimit-* headers, plus retry-after when refused, as
/// "name: value\r\n" lines.
#[no_mangle]
pub extern "C" fn tg_decision_headers(
    decision: *const tg_decision,
    buf: *mut c_char,
    cap: usize,
    written: *mut usize,
) -> tg_status {
    guard(|| {
        let d = match decision_arg(decision) {
            Ok(d) => d,
            Err(s) => return s,
        };
        render(buf, cap, written, |s| d.write_headers(s))
    })
}

/// The same decision as the IETF draft's RateLimit-Policy and RateLimit
/// fields (draft-ietf-httpapi-ratelimit-headers-10), one line each; `t` is
/// counted from `now_ms`.
#[no_mangle]
pub extern "C" fn tg_decision_ietf_headers(
    decision: *const tg_decision,
    now_ms: u64,
    buf: *mut c_char,
    cap: usize,
    written: *mut usize,
) -> tg_status {
    guard(|| {
        let d = match decision_arg(decision) {
            Ok(d) => d,
            Err(s) => return s,
        };
        render(buf, cap, written, |s| d.write_ietf_headers(now_ms, s))
    })
}

/// The OpenAI-shaped JSON body of a 429 for `model` (`model_len` bytes,
/// JSON-escaped in the output): {"error":{"message":...,"type":
/// "rate_limit_exceeded","param":null,"code":"rate_limit_exceeded"}}.
#[no_mangle]
pub extern "C" fn tg_decision_error_body(
    decision: *const tg_decision,
    model: *const c_char,
    model_len: usize,
    buf: *mut c_char,
    cap: usize,
    written: *mut usize,
) -> tg_status {
    guard(|| {
        let d = match decision_arg(decision) {
            Ok(d) => d,
            Err(s) => return s,
        };
        let model = match any_bytes(model, model_len) {
            Ok(m) => m,
            Err(s) => return s,
        };
        render(buf, cap, written, |s| d.write_error_body(model, s))
    })
}

/// The OpenAI-shaped JSON body for a request naming a model the policy does
/// not have (TG_E_UNKNOWN_MODEL), to send with a 404:
/// {"error":{"message":...,"type":"invalid_request_error","param":"model",
/// "code":"model_not_found"}}. Buffer protocol as tg_decision_headers.
#[no_mangle]
pub extern "C" fn tg_unknown_model_body(
    model: *const c_char,
    model_len: usize,
    buf: *mut c_char,
    cap: usize,
    written: *mut usize,
) -> tg_status {
    guard(|| {
        let model = match any_bytes(model, model_len) {
            Ok(m) => m,
            Err(s) => return s,
        };
        render(buf, cap, written, |s| {
            crate::decision::write_unknown_model_body(model, s)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_number_matches_the_crate() {
        let v: Vec<u32> = env!("CARGO_PKG_VERSION")
            .split('.')
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(TG_VERSION_NUMBER, v[0] * 1_000_000 + v[1] * 1000 + v[2]);
        assert_eq!(TG_LAYOUT_VERSION, LAYOUT_VERSION);
        assert_eq!(TG_REGION_ALIGN as usize, crate::REGION_ALIGN);
        assert_eq!(TG_ACCOUNT_MAX as usize, crate::ACCOUNT_MAX);
        assert_eq!(TG_MODEL_NAME_MAX as usize, MODEL_NAME_MAX);
        assert_eq!(TG_BYTES_PER_SLOT as usize, crate::BYTES_PER_SLOT);
    }
}

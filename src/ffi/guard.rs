//! What every C entry point shares: the panic guard, the status of each
//! error, checks of pointers, lengths and struct sizes, and the buffer
//! protocol of the renderers.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::*;
use crate::body::BodyError;
use crate::decision::Sink;
use crate::error::Error;
use crate::region::RegionError;

/// Runs the body of a C entry point: a panic becomes TG_E_PANIC instead of
/// unwinding into C (undefined behaviour).
pub(super) fn guard(f: impl FnOnce() -> tg_status) -> tg_status {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(TG_E_PANIC)
}

/// As [`guard`] for the `_free` functions, which return nothing: a panic
/// while dropping is swallowed rather than unwound into C.
pub(super) fn guard_free(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

pub(super) fn status_of(e: &Error) -> tg_status {
    match e {
        Error::Invalid(_) => TG_E_INVALID,
        Error::Account => TG_E_ACCOUNT,
        Error::UnknownModel => TG_E_UNKNOWN_MODEL,
        Error::NoLimit => TG_E_NO_LIMIT,
        Error::CostTooLarge => TG_E_COST_TOO_LARGE,
        Error::TokensTooLarge { .. } => TG_E_TOKENS_TOO_LARGE,
        Error::NoTokenWindows => TG_E_NO_TOKEN_WINDOWS,
        Error::NoInFlight(_) => TG_E_NO_IN_FLIGHT,
        Error::TableFull => TG_E_TABLE_FULL,
        Error::ModelTableFull => TG_E_MODEL_TABLE_FULL,
        Error::NoSpace { .. } => TG_E_NO_SPACE,
        Error::ReadOnly => TG_E_READ_ONLY,
        Error::NotJoined => TG_E_NOT_JOINED,
        Error::NotLeased => TG_E_NOT_LEASED,
        Error::Pending => TG_PENDING,
        #[cfg(feature = "leases")]
        Error::Store(_) => TG_E_STORE,
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

pub(super) fn body_status(e: BodyError) -> tg_status {
    match e {
        BodyError::NotJson => TG_E_BODY_NOT_JSON,
        BodyError::NoModel => TG_E_BODY_NO_MODEL,
        BodyError::AmbiguousModel => TG_E_BODY_AMBIGUOUS_MODEL,
        BodyError::TooDeep => TG_E_BODY_TOO_DEEP,
        BodyError::TooLarge => TG_E_BODY_TOO_LARGE,
    }
}

/// Whether a caller's struct `size` covers this library's layout of `T`: 0
/// stands for the first sized layout (this one), so zero-initialised
/// structs work. When a struct grows, the sizes of its earlier layouts are
/// accepted here too and only their fields are read and written.
#[inline]
pub(super) fn sized<T>(size: u32) -> bool {
    size == 0 || size as usize >= std::mem::size_of::<T>()
}

/// Starts an object of plain data in caller memory (`len` bytes at `mem`),
/// as the streaming scans do: `*out` is NULL until it is placed, then
/// `mem`. TG_E_NULL for NULL pointers, `make`'s own status, TG_E_INVALID
/// when `len` is too small, TG_E_ALIGNMENT when `mem` is not aligned for
/// `T`. `T` must own nothing (the old contents are never dropped).
pub(super) fn place<T>(
    mem: *mut c_void,
    len: usize,
    out: *mut *mut T,
    make: impl FnOnce() -> Result<T, tg_status>,
) -> tg_status {
    if out.is_null() {
        return TG_E_NULL;
    }
    // SAFETY: non-null, writable by contract.
    unsafe { *out = std::ptr::null_mut() };
    if mem.is_null() {
        return TG_E_NULL;
    }
    let value = match make() {
        Ok(v) => v,
        Err(s) => return s,
    };
    if len < std::mem::size_of::<T>() {
        return TG_E_INVALID;
    }
    let p = mem.cast::<T>();
    if !p.is_aligned() {
        return TG_E_ALIGNMENT;
    }
    // SAFETY: `mem` is non-null, aligned for T, and holds `len` >= the
    // struct's size writable bytes (the caller's contract); the old
    // contents need no drop (T owns nothing).
    unsafe {
        p.write(value);
        *out = p;
    }
    TG_OK
}

/// Copies `msg` into a caller's error buffer, truncated, NUL-terminated.
pub(super) fn write_err(err: *mut c_char, cap: usize, msg: &str) {
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
pub(super) fn give<T>(out: *mut *mut T, value: T) -> tg_status {
    // SAFETY: the caller checked `out` is non-null; it points to writable
    // storage for one pointer by the function's contract.
    unsafe { *out = Box::into_raw(Box::new(value)) };
    TG_OK
}

pub(super) fn clear<T>(out: *mut *mut T) {
    if !out.is_null() {
        // SAFETY: non-null, writable by contract.
        unsafe { *out = std::ptr::null_mut() };
    }
}

/// `len` bytes at `ptr` as a slice, or `err` when empty / longer than
/// `max`; TG_E_NULL for a NULL pointer with a length.
pub(super) fn bytes_arg<'a>(
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

/// `len` bytes at `ptr` (which may be NULL when `len` is 0), any length.
pub(super) fn any_bytes<'a>(ptr: *const c_char, len: usize) -> Result<&'a [u8], tg_status> {
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

/// Renders through `f` into `cap` bytes at `buf`: TG_OK with `*written` =
/// bytes written (plus a NUL when room remains, not counted), or
/// TG_E_BUFFER_TOO_SMALL with `*written` = bytes needed.
pub(super) fn render(
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

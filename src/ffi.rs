//! The C ABI. A thin layer over the Rust API: it checks pointers and
//! lengths, converts types, and catches any panic so none unwinds into C.
//! cbindgen reads this file (from build.rs) to write include/tollgate.h.
#![allow(non_camel_case_types)]
// C callers cannot see a Rust `unsafe`: each function checks its pointers
// for NULL and documents what else it trusts the caller for.
#![allow(clippy::not_unsafe_ptr_arg_deref)]
//!
//! One file per object, as the header's sections: `guard` (the panic guard
//! and argument checks every function shares), `policy`, `limiter`,
//! `check` (requests and decisions), `leases` (joining a quota store
//! shared across hosts), `render`, `body` (the request body scanner),
//! `answer` (the whole HTTP answer).

use std::ffi::{c_char, CStr};

use crate::region::LAYOUT_VERSION;

mod answer;
mod body;
mod check;
mod guard;
mod in_flight;
mod leases;
mod limiter;
mod policy;
mod render;
mod tokens;
pub use answer::*;
pub use body::*;
pub use check::*;
use guard::*;
pub use in_flight::*;
pub use leases::*;
pub use limiter::*;
pub use policy::*;
pub use render::*;
pub use tokens::*;

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
/// The table holds quota leases (it was formatted for one quota across
/// hosts) and this handle is not joined to the store: tg_limiter_connect
/// it first.
pub const TG_E_NOT_JOINED: tg_status = 33;
/// tg_limiter_connect needs a table formatted for quota leases
/// (tg_limiter_make or tg_limiter_open with TG_OPEN_LEASES); this one is a
/// local table. Also a table that exists already and is not one, opened or
/// attached with TG_OPEN_LEASES.
pub const TG_E_NOT_LEASED: tg_status = 34;
/// The quota store's URL or options are unusable, or Redis answered with an
/// error (not a transport failure: those follow the down policy);
/// tg_last_error() says which.
pub const TG_E_STORE: tg_status = 35;
/// Not an error: the decision needs a round trip to the quota store and the
/// call asked not to wait (TG_REQUEST_NO_WAIT, TG_ANSWER_NO_WAIT). Nothing
/// was charged and `*out` is untouched; decide the same request again
/// without the flag on a thread that may block.
pub const TG_PENDING: tg_status = 36;
/// The request's token reservation is more than the key's token limit
/// allows at all (answer 400: ask for fewer output tokens or send less).
pub const TG_E_TOKENS_TOO_LARGE: tg_status = 37;
/// The key has a token limit and the table has no token windows (formatted
/// before 0.4): carry it into a new one with `tollgate resize`.
pub const TG_E_NO_TOKEN_WINDOWS: tg_status = 38;
/// A response's usage could not be read (not JSON, or a usage that is not
/// token counts): settle it as a response without usage.
pub const TG_E_USAGE: tg_status = 39;
/// The key has an in-flight limit the table cannot hold: formatted
/// without the in-flight areas, or every ledger entry or holder in use.
pub const TG_E_NO_IN_FLIGHT: tg_status = 40;
/// An internal error was caught at the boundary (a bug: please report it).
pub const TG_E_PANIC: tg_status = 99;

/// The version this header describes. A program built against this header
/// runs with a library of the same major version and at least its minor
/// version; before 1.0, of the same minor version (tg_version_number()
/// says which the library is; its SONAME is libtollgate.so.0).
pub const TG_VERSION_MAJOR: u32 = 0;
/// See TG_VERSION_MAJOR.
pub const TG_VERSION_MINOR: u32 = 3;
/// See TG_VERSION_MAJOR.
pub const TG_VERSION_PATCH: u32 = 0;
/// major * 1000000 + minor * 1000 + patch.
pub const TG_VERSION_NUMBER: u32 = 3000;
// TG_VERSION_STRING, the version as text, is written into the header by
// build.rs from the crate's version (cbindgen emits no string constants).
/// The region layout version this header describes.
pub const TG_LAYOUT_VERSION: u32 = 3;
/// Alignment caller memory must have for tg_limiter_init_in / _attach.
pub const TG_REGION_ALIGN: u32 = 64;
/// Longest account id, in bytes.
pub const TG_ACCOUNT_MAX: u32 = 64;
/// Longest model id, in bytes.
pub const TG_MODEL_NAME_MAX: u32 = 56;
/// Bytes each slot takes in a region (hot state, account name and, since
/// 0.4, the unit area of token windows and the in-flight ledger's entry;
/// 96 before), after a fixed part (tg_region_size_for(1) less this).
pub const TG_BYTES_PER_SLOT: u32 = 144;

/// The library's version number, to compare against TG_VERSION_NUMBER.
#[no_mangle]
pub extern "C" fn tg_version_number() -> u32 {
    TG_VERSION_NUMBER
}

/// The library's version as a static string ("0.2.0"); never free it.
#[no_mangle]
pub extern "C" fn tg_version_string() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Same as tg_version_string() (the older name).
#[no_mangle]
pub extern "C" fn tg_version() -> *const c_char {
    tg_version_string()
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
        TG_E_NOT_JOINED => {
            c"the table holds quota leases and this handle is not joined to the store"
        }
        TG_E_NOT_LEASED => c"joining a store needs a table formatted for quota leases",
        TG_E_STORE => c"the quota store refused the configuration or answered an error",
        TG_PENDING => c"pending: the decision needs a round trip to the quota store",
        TG_E_TOKENS_TOO_LARGE => {
            c"the request's token reservation exceeds the key's token limit itself"
        }
        TG_E_NO_TOKEN_WINDOWS => {
            c"the table has no token windows (formatted before 0.4): carry it over with tollgate resize"
        }
        TG_E_USAGE => c"the response's usage could not be read",
        TG_E_NO_IN_FLIGHT => c"the table cannot hold the key's in-flight limit",
        TG_E_PANIC => c"internal error (caught panic)",
        _ => c"unknown status",
    };
    s.as_ptr()
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
        assert_eq!(
            [TG_VERSION_MAJOR, TG_VERSION_MINOR, TG_VERSION_PATCH],
            [v[0], v[1], v[2]]
        );
        let header = include_str!("../include/tollgate.h");
        let line = format!(
            "#define TG_VERSION_STRING \"{}\"",
            env!("CARGO_PKG_VERSION")
        );
        assert!(header.contains(&line), "{line}");
        assert_eq!(TG_LAYOUT_VERSION, LAYOUT_VERSION);
        assert_eq!(TG_REGION_ALIGN as usize, crate::REGION_ALIGN);
        assert_eq!(TG_ACCOUNT_MAX as usize, crate::ACCOUNT_MAX);
        assert_eq!(TG_MODEL_NAME_MAX as usize, crate::policy::MODEL_NAME_MAX);
        assert_eq!(TG_BYTES_PER_SLOT as usize, crate::BYTES_PER_SLOT);
    }
}

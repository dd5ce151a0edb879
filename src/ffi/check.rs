//! Deciding: a request in, a decision out (the decision path's C face).

use std::ffi::c_char;

use super::*;
use crate::decision::{Decision, Window};
use crate::limiter::{ModelHandle, Request};
use crate::policy::{Tier, MODEL_NAME_MAX};
use crate::slot::LimitedBy;

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

/// One request. Strings are bytes with a length, not NUL-terminated.
#[repr(C)]
pub struct tg_request {
    /// sizeof(tg_request) as the caller's header has it, or 0 (this first
    /// layout: zero-initialised requests work). Also says which layout of
    /// tg_decision the caller has.
    pub size: u32,
    /// Account id, 1 to TG_ACCOUNT_MAX bytes.
    pub account: *const c_char,
    /// Bytes at `account`.
    pub account_len: usize,
    /// Model id as in the policy.
    pub model: *const c_char,
    /// Bytes at `model`.
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
    /// Since 0.3 (read only when `size` covers it): a handle from
    /// tg_model_find on this limiter, or 0 to look `model` up by name.
    /// With a handle, `model` is not read (it may be NULL).
    pub model_handle: u32,
    /// Since 0.3, read with `model_handle`: TG_REQUEST_* bits, or 0.
    pub flags: u32,
    /// Since 0.4 (read only when `size` covers it): tokens this request
    /// reserves on a key with a token limit (its estimate: tg_body_facts
    /// and tg_policy_estimate_tokens). Settle it with tg_settle, through
    /// the ticket tg_check_tokens gives.
    pub tokens: u32,
    /// Since 0.4: explicit tokens-per-minute limit; 0 = from the policy.
    pub tpm: u32,
    /// Since 0.4: explicit tokens-per-day limit; 0 = from the policy.
    pub tpd: u32,
    /// Since 0.4: 0.
    pub _reserved: u32,
}

/// tg_request.flags: on a limiter joined to a quota store
/// (tg_limiter_connect), never wait for a round trip: a decision that needs
/// one returns TG_PENDING and charges nothing. For event loops (nginx): the
/// same request is then decided by tg_check without the flag on a thread
/// that may block (a thread pool), for at most the store's deadline. Local
/// tables never wait and ignore it.
pub const TG_REQUEST_NO_WAIT: u32 = 1;

/// sizeof(tg_request) before `model_handle` (0.2): accepted, and read
/// without it.
const REQUEST_SIZE_0_2: u32 = std::mem::offset_of!(tg_request, model_handle)
    .next_multiple_of(std::mem::align_of::<tg_request>()) as u32;
/// sizeof(tg_request) before `tokens` (0.3): accepted, and read without
/// the token fields.
const REQUEST_SIZE_0_3: u32 = std::mem::offset_of!(tg_request, tokens) as u32;

/// The answer for one request: everything a proxy needs for its headers.
/// Written by tg_check, which sets `size` to the bytes it wrote (the
/// layout of the request's `size`); renderers read no more than `size`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tg_decision {
    /// Bytes of this struct in use (see "Structs that grow"); 0 = this
    /// first layout.
    pub size: u32,
    /// 1 if admitted (and counted), 0 if refused (and nothing counted).
    pub allowed: u32,
    /// TG_LIMIT_NONE, TG_LIMIT_MINUTE, TG_LIMIT_DAY, or (a key with a
    /// token limit, since 0.4) TG_LIMIT_TOKENS_MINUTE or
    /// TG_LIMIT_TOKENS_DAY.
    pub limited_by: u32,
    /// Requests the minute window allows.
    pub minute_limit: u32,
    /// Requests left in the minute window after this decision.
    pub minute_remaining: u32,
    /// Epoch second at which the minute window resets.
    pub minute_reset: u64,
    /// Requests the day window allows.
    pub day_limit: u32,
    /// Requests left in the day window after this decision.
    pub day_remaining: u32,
    /// Epoch second at which the day window resets.
    pub day_reset: u64,
    /// Whole seconds, rounded up, until the refusing window resets; 0 when
    /// allowed.
    pub retry_after: u32,
}

pub(super) fn to_c(d: &Decision) -> tg_decision {
    tg_decision {
        size: std::mem::size_of::<tg_decision>() as u32,
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
pub(super) fn decision_arg(decision: *const tg_decision) -> Result<Decision, tg_status> {
    // SAFETY: NULL or a readable tg_decision by contract.
    let d = unsafe { decision.as_ref() }.ok_or(TG_E_NULL)?;
    if !sized::<tg_decision>(d.size) {
        return Err(TG_E_INVALID);
    }
    from_c(d).ok_or(TG_E_INVALID)
}

pub(super) fn from_c(d: &tg_decision) -> Option<Decision> {
    let limited_by = match d.limited_by {
        TG_LIMIT_NONE => LimitedBy::None,
        TG_LIMIT_MINUTE => LimitedBy::Minute,
        TG_LIMIT_DAY => LimitedBy::Day,
        super::TG_LIMIT_TOKENS_MINUTE => LimitedBy::TokensMinute,
        super::TG_LIMIT_TOKENS_DAY => LimitedBy::TokensDay,
        super::TG_LIMIT_IN_FLIGHT => LimitedBy::InFlight,
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
        tokens: None,
        in_flight: None,
    })
}

/// Decides one request at `now_ms` (epoch milliseconds) and fills `*out`.
/// TG_OK means a decision was made either way: `out->allowed` says which.
/// Other statuses leave `*out` untouched. No allocation, lock or syscall on
/// a local table. On a limiter joined to a quota store (tg_limiter_connect)
/// most decisions are the same, and one that needs more quota makes a round
/// trip to Redis (at most the store's deadline), or returns TG_PENDING with
/// TG_REQUEST_NO_WAIT. A key with a token limit reserves `req->tokens`;
/// tg_check_tokens also gives the ticket that settles it. A key with an
/// in-flight limit is TG_E_NO_IN_FLIGHT, decided nothing: tg_check_units
/// decides it and hands out the admission to release.
#[no_mangle]
pub extern "C" fn tg_check(
    limiter: *const tg_limiter,
    req: *const tg_request,
    now_ms: u64,
    out: *mut tg_decision,
) -> tg_status {
    guard(|| {
        decide(limiter, req, now_ms, out, false, |d| {
            // SAFETY: `decide` checked `out` non-null; writable by contract.
            unsafe { *out = to_c(d) }
        })
    })
}

/// tg_check's work: decides, and hands the decision to `put` (which
/// stores it where the caller wants it) without moving it.
#[inline(always)]
pub(super) fn decide(
    limiter: *const tg_limiter,
    req: *const tg_request,
    now_ms: u64,
    out: *mut tg_decision,
    admits: bool,
    put: impl FnOnce(&Decision),
) -> tg_status {
    // SAFETY: NULL or live objects by contract.
    let (Some(l), Some(r), false) = (
        unsafe { limiter.as_ref() },
        unsafe { req.as_ref() },
        out.is_null(),
    ) else {
        return TG_E_NULL;
    };
    // The layouts: this one, 0 and 0.2 (no handle, no flags), and 0.3
    // (no token fields), tested in the order of the old code for 0 and 0.2.
    let (handle, flags, tokens) = if r.size as usize >= std::mem::size_of::<tg_request>() {
        let t = (r.tokens, r.tpm, r.tpd);
        (ModelHandle::from_raw(r.model_handle), r.flags, t)
    } else if r.size == 0 || r.size == REQUEST_SIZE_0_2 {
        (None, 0, (0, 0, 0))
    } else if r.size == REQUEST_SIZE_0_3 {
        (ModelHandle::from_raw(r.model_handle), r.flags, (0, 0, 0))
    } else {
        return TG_E_INVALID;
    };
    if flags & !TG_REQUEST_NO_WAIT != 0 {
        return TG_E_INVALID;
    }
    let account = match bytes_arg(r.account, r.account_len, crate::ACCOUNT_MAX, TG_E_ACCOUNT) {
        Ok(a) => a,
        Err(s) => return s,
    };
    let model = match handle {
        Some(_) => &[][..],
        None => match bytes_arg(r.model, r.model_len, MODEL_NAME_MAX, TG_E_UNKNOWN_MODEL) {
            Ok(m) => m,
            Err(s) => return s,
        },
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
        tokens: tokens.0,
        tpm: tokens.1,
        tpd: tokens.2,
        handle,
        no_wait: flags & TG_REQUEST_NO_WAIT != 0,
    };
    match l.inner.check_as(&request, now_ms, admits) {
        Ok(d) => {
            put(&d);
            TG_OK
        }
        Err(e) => status_of(&e),
    }
}

/// Resolves a policy model once: `*handle` gets a nonzero number to put in
/// tg_request.model_handle (with `size` = sizeof(tg_request)), so that
/// decisions skip the lookup by name. A handle is valid for this limiter
/// until tg_limiter_set_policy; a stale one is TG_E_UNKNOWN_MODEL.
/// TG_E_UNKNOWN_MODEL if the policy has no such model.
#[no_mangle]
pub extern "C" fn tg_model_find(
    limiter: *const tg_limiter,
    model: *const c_char,
    model_len: usize,
    handle: *mut u32,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a live limiter by contract.
        let (Some(l), false) = (unsafe { limiter.as_ref() }, handle.is_null()) else {
            return TG_E_NULL;
        };
        let name = match bytes_arg(model, model_len, MODEL_NAME_MAX, TG_E_UNKNOWN_MODEL) {
            Ok(m) => m,
            Err(s) => return s,
        };
        match l.inner.model(name) {
            Some(h) => {
                // SAFETY: non-null, writable by contract.
                unsafe { *handle = h.raw() };
                TG_OK
            }
            None => TG_E_UNKNOWN_MODEL,
        }
    })
}

/// tg_check at the real-time clock (CLOCK_REALTIME). The one syscall-free
/// path stays tg_check; this reads the clock (a vDSO call on Linux).
#[no_mangle]
pub extern "C" fn tg_check_now(
    limiter: *const tg_limiter,
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

/// Bytes of an account id made from an API key (tg_account_digest,
/// tg_bearer_digest): 32 lower-case hex digits.
pub const TG_ACCOUNT_DIGEST_LEN: u32 = 32;

/// The account id for an API key: BLAKE2b with a 16-byte digest of the
/// `key_len` bytes at `key`, as TG_ACCOUNT_DIGEST_LEN lower-case hex
/// digits, whatever the key's length, so keys longer than TG_ACCOUNT_MAX
/// bytes make usable accounts and raw keys never reach the table. Every
/// binding and the `tollgate digest` command give the same id for the same
/// key, so hosts sharing a table or a quota store count a key once. Written
/// as the renderers write (a NUL follows when `cap` has room for it):
/// TG_E_BUFFER_TOO_SMALL with `*written` = TG_ACCOUNT_DIGEST_LEN when `cap`
/// is smaller.
#[no_mangle]
pub extern "C" fn tg_account_digest(
    key: *const c_char,
    key_len: usize,
    out: *mut c_char,
    cap: usize,
    written: *mut usize,
) -> tg_status {
    guard(|| {
        let key = match any_bytes(key, key_len) {
            Ok(k) => k,
            Err(s) => return s,
        };
        write_digest(key, out, cap, written)
    })
}

/// The API key of an `Authorization` header's value (`len` bytes at
/// `value`), as every binding reads it: `Bearer <key>`, the scheme in any
/// case, the value and the key trimmed of ASCII whitespace. TG_OK: the key
/// is the `*key_len` bytes at `value + *key_start`; TG_E_NO_ACCOUNT for
/// another scheme or no key (answer it with tg_answer_for).
#[no_mangle]
pub extern "C" fn tg_bearer_key(
    value: *const c_char,
    len: usize,
    key_start: *mut usize,
    key_len: *mut usize,
) -> tg_status {
    guard(|| {
        if key_start.is_null() || key_len.is_null() {
            return TG_E_NULL;
        }
        let v = match any_bytes(value, len) {
            Ok(v) => v,
            Err(s) => return s,
        };
        let Some(key) = crate::bearer_key(v) else {
            return TG_E_NO_ACCOUNT;
        };
        // SAFETY: non-null, writable by contract; `key` is a part of `v`.
        unsafe {
            *key_start = key.as_ptr().offset_from(v.as_ptr()) as usize;
            *key_len = key.len();
        }
        TG_OK
    })
}

/// tg_account_digest of the key tg_bearer_key finds in an `Authorization`
/// header's value: the account id of the caller's API key, or
/// TG_E_NO_ACCOUNT (`*written` = 0) when the value carries none.
#[no_mangle]
pub extern "C" fn tg_bearer_digest(
    value: *const c_char,
    len: usize,
    out: *mut c_char,
    cap: usize,
    written: *mut usize,
) -> tg_status {
    guard(|| {
        if written.is_null() || (out.is_null() && cap != 0) {
            return TG_E_NULL;
        }
        let v = match any_bytes(value, len) {
            Ok(v) => v,
            Err(s) => return s,
        };
        let Some(key) = crate::bearer_key(v) else {
            // SAFETY: non-null, writable by contract.
            unsafe { *written = 0 };
            return TG_E_NO_ACCOUNT;
        };
        write_digest(key, out, cap, written)
    })
}

fn write_digest(key: &[u8], out: *mut c_char, cap: usize, written: *mut usize) -> tg_status {
    let hex = crate::digest::digest_hex(key);
    let hex = std::str::from_utf8(&hex).expect("hex digits are ASCII");
    render(out, cap, written, |sink| {
        std::fmt::Write::write_str(sink, hex)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_of_keys_and_headers() {
        let mut out = [b'Z'; 40];
        let mut n = 0usize;
        let key = b"sk-test";
        assert_eq!(
            tg_account_digest(
                key.as_ptr().cast(),
                key.len(),
                out.as_mut_ptr().cast(),
                40,
                &mut n
            ),
            TG_OK
        );
        assert_eq!(&out[..n], b"c341dda362e14f03d05c78a3a7c7a93a");
        assert_eq!((n, out[n]), (TG_ACCOUNT_DIGEST_LEN as usize, 0));
        // a key no account id could hold: the same 32 digits as the core's
        let long = [b'k'; 200];
        assert_eq!(
            tg_account_digest(
                long.as_ptr().cast(),
                200,
                out.as_mut_ptr().cast(),
                32,
                &mut n
            ),
            TG_OK
        );
        assert_eq!(&out[..n], crate::account_digest(&long).as_bytes());
        assert_eq!(
            tg_account_digest(
                key.as_ptr().cast(),
                key.len(),
                out.as_mut_ptr().cast(),
                31,
                &mut n
            ),
            TG_E_BUFFER_TOO_SMALL
        );
        assert_eq!(n, 32);

        let auth = b"  bearer   sk-test ";
        let (mut start, mut len) = (0usize, 0usize);
        assert_eq!(
            tg_bearer_key(auth.as_ptr().cast(), auth.len(), &mut start, &mut len),
            TG_OK
        );
        assert_eq!(&auth[start..start + len], b"sk-test");
        assert_eq!(
            tg_bearer_digest(
                auth.as_ptr().cast(),
                auth.len(),
                out.as_mut_ptr().cast(),
                33,
                &mut n
            ),
            TG_OK
        );
        assert_eq!(&out[..n], b"c341dda362e14f03d05c78a3a7c7a93a");
        for none in [&b"Basic abc"[..], b"Bearer ", b""] {
            assert_eq!(
                tg_bearer_key(none.as_ptr().cast(), none.len(), &mut start, &mut len),
                TG_E_NO_ACCOUNT
            );
            assert_eq!(
                tg_bearer_digest(
                    none.as_ptr().cast(),
                    none.len(),
                    out.as_mut_ptr().cast(),
                    33,
                    &mut n
                ),
                TG_E_NO_ACCOUNT
            );
            assert_eq!(n, 0);
        }
        let null = std::ptr::null();
        assert_eq!(
            tg_bearer_key(null, 0, &mut start, &mut len),
            TG_E_NO_ACCOUNT
        );
        assert_eq!(tg_bearer_key(null, 3, &mut start, &mut len), TG_E_NULL);
        assert_eq!(
            tg_bearer_key(auth.as_ptr().cast(), 3, std::ptr::null_mut(), &mut len),
            TG_E_NULL
        );
        assert_eq!(
            tg_account_digest(null, 1, out.as_mut_ptr().cast(), 33, &mut n),
            TG_E_NULL
        );
        assert_eq!(
            tg_bearer_digest(
                auth.as_ptr().cast(),
                auth.len(),
                out.as_mut_ptr().cast(),
                33,
                std::ptr::null_mut()
            ),
            TG_E_NULL
        );
    }
}

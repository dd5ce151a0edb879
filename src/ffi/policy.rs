//! The policy object: load, parse, inspect, free.

use std::ffi::{c_char, CStr};

use super::*;
use crate::policy::{Policy, Tier, MODEL_NAME_MAX};

/// A loaded policy (opaque). Immutable; may be shared between threads.
pub struct tg_policy {
    pub(super) inner: Policy,
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
    guard_free(|| {
        if !policy.is_null() {
            // SAFETY: made by Box::into_raw in this library and not yet freed.
            drop(unsafe { Box::from_raw(policy) });
        }
    });
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

pub(super) fn policy_ref<'a>(policy: *const tg_policy) -> Option<&'a Policy> {
    // SAFETY: callers pass either NULL or a live policy from this library.
    unsafe { policy.as_ref() }.map(|p| &p.inner)
}

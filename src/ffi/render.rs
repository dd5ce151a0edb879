//! Rendering a decision: the six headers, the IETF draft fields, the 429
//! body, the unknown-model body.

use std::ffi::c_char;

use super::*;

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

//! Rendering a decision: the six headers, the IETF draft fields, the 429
//! body, the unknown-model body.

use std::ffi::{c_char, c_int, c_void};

use super::*;
use crate::answer::HeaderValue;
use crate::decision::Sink;

/// Called once per header: name and value, not NUL-terminated. Return 0 to
/// go on, anything else to stop (tg_answer_headers then returns
/// TG_E_ABORTED).
pub type tg_header_fn = Option<
    extern "C" fn(
        ctx: *mut c_void,
        name: *const c_char,
        name_len: usize,
        value: *const c_char,
        value_len: usize,
    ) -> c_int,
>;

/// Hands one header to the caller's callback; false if it asked to stop.
pub(super) fn emit(
    f: extern "C" fn(*mut c_void, *const c_char, usize, *const c_char, usize) -> c_int,
    ctx: *mut c_void,
    name: &str,
    value: &[u8],
) -> bool {
    f(
        ctx,
        name.as_ptr().cast(),
        name.len(),
        value.as_ptr().cast(),
        value.len(),
    ) == 0
}

/// The six x-ratelimit-* headers, plus retry-after when refused, as
/// name/value pairs through `f` (names lower case): what
/// tg_decision_headers writes as text, for bindings that set headers one
/// by one. TG_E_ABORTED if `f` asked to stop.
#[no_mangle]
pub extern "C" fn tg_decision_header_pairs(
    decision: *const tg_decision,
    f: tg_header_fn,
    ctx: *mut c_void,
) -> tg_status {
    guard(|| match decision_arg(decision) {
        Ok(d) => emit_pairs(&d, f, ctx),
        Err(s) => s,
    })
}

/// The IETF draft's RateLimit-Policy and RateLimit fields as name/value
/// pairs through `f` (what tg_decision_ietf_headers writes as text).
#[no_mangle]
pub extern "C" fn tg_decision_ietf_header_pairs(
    decision: *const tg_decision,
    now_ms: u64,
    f: tg_header_fn,
    ctx: *mut c_void,
) -> tg_status {
    guard(|| match decision_arg(decision) {
        Ok(d) => emit_ietf(&d, now_ms, f, ctx),
        Err(s) => s,
    })
}

pub(super) fn emit_pairs(d: &crate::Decision, f: tg_header_fn, ctx: *mut c_void) -> tg_status {
    let Some(f) = f else {
        return TG_E_NULL;
    };
    let mut buf = [0u8; 20];
    for (name, v) in d.all_header_pairs() {
        if !emit(f, ctx, name, HeaderValue::Num(v).as_bytes(&mut buf)) {
            return TG_E_ABORTED;
        }
    }
    TG_OK
}

pub(super) fn emit_ietf(
    d: &crate::Decision,
    now_ms: u64,
    f: tg_header_fn,
    ctx: *mut c_void,
) -> tg_status {
    let Some(f) = f else {
        return TG_E_NULL;
    };
    // Each value rendered into a small buffer, then handed over.
    let field = |name: &str, write: &dyn Fn(&mut Sink<'_>) -> std::fmt::Result| {
        let mut buf = [0u8; 256];
        let mut sink = Sink::new(&mut buf);
        if write(&mut sink).is_err() || !sink.fits() {
            return TG_E_PANIC;
        }
        let n = sink.needed();
        if emit(f, ctx, name, &buf[..n]) {
            TG_OK
        } else {
            TG_E_ABORTED
        }
    };
    let st = field("RateLimit-Policy", &|s| d.write_ietf_policy(s));
    if st != TG_OK {
        return st;
    }
    field("RateLimit", &|s| d.write_ietf_state(now_ms, s))
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
    super::tg_decision_units_error_body(
        decision,
        std::ptr::null(),
        std::ptr::null(),
        model,
        model_len,
        buf,
        cap,
        written,
    )
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

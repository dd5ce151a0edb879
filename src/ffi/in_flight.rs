//! In-flight limits through the C ABI (issue 18): the admission a
//! decision hands out, and its release.

use super::*;
use crate::decision::{Admission, InFlight};
use crate::Ending;
use std::ffi::c_void;

/// A decision's requests in flight, when the key has an in-flight limit.
/// Carried in tg_answer (since 0.4).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct tg_in_flight {
    /// sizeof(tg_in_flight) as the caller's header has it, or 0.
    pub size: u32,
    /// 1 if the key has an in-flight limit and the fields below are its;
    /// 0 if it has none (the other fields are then 0).
    pub has_in_flight: u32,
    /// The most of the key's requests that may run at once.
    pub limit: u32,
    /// Running now, this request included when admitted.
    pub in_use: u32,
    /// What to give tg_release once the request has ended, whatever ended
    /// it; 0 when not admitted (refused, or a peek).
    pub admission: u64,
}

pub(super) fn in_flight_to_c(f: Option<&InFlight>) -> tg_in_flight {
    let size = std::mem::size_of::<tg_in_flight>() as u32;
    let Some(f) = f else {
        return tg_in_flight {
            size,
            ..tg_in_flight::default()
        };
    };
    tg_in_flight {
        size,
        has_in_flight: 1,
        limit: f.limit,
        in_use: f.in_use,
        admission: f.admission.map_or(0, Admission::to_raw),
    }
}

pub(super) fn in_flight_from_c(f: &tg_in_flight) -> Option<InFlight> {
    (f.has_in_flight != 0).then(|| InFlight {
        limit: f.limit,
        in_use: f.in_use,
        admission: Admission::from_raw(f.admission),
    })
}

/// tg_check_tokens for a key that may also have an in-flight limit:
/// `*in_flight` (a tg_in_flight of this version's size, or size 0) gets the
/// key's limit, its requests running and, when admitted, the admission to
/// give tg_release once the request has ended; `has_in_flight` 0 for a key
/// without an in-flight limit. `tokens` may be NULL (not wanted).
/// `in_flight` NULL: as tg_check_tokens (TG_E_NO_IN_FLIGHT for a key with
/// a limit). Refused for in-flight, `out->limited_by` is
/// TG_LIMIT_IN_FLIGHT, `out->retry_after` 0 and nothing is charged. Answer
/// it with tg_answer_for_units.
#[no_mangle]
pub extern "C" fn tg_check_units(
    limiter: *const tg_limiter,
    req: *const tg_request,
    now_ms: u64,
    out: *mut tg_decision,
    tokens: *mut tg_tokens,
    in_flight: *mut tg_in_flight,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or writable by contract.
        let (t, f) = unsafe { (tokens.as_mut(), in_flight.as_mut()) };
        if t.as_ref().is_some_and(|t| !sized::<tg_tokens>(t.size))
            || f.as_ref().is_some_and(|f| !sized::<tg_in_flight>(f.size))
        {
            return TG_E_INVALID;
        }
        let admits = f.is_some();
        super::check::decide(limiter, req, now_ms, out, admits, |d| {
            // SAFETY: `decide` checked `out` non-null; writable by contract.
            unsafe { *out = super::check::to_c(d) };
            if let Some(t) = t {
                *t = super::tokens_to_c(d.tokens.as_ref());
            }
            if let Some(f) = f {
                *f = in_flight_to_c(d.in_flight.as_ref());
            }
        })
    })
}

/// Releases the in-flight unit of `admission` (from a decision's
/// tg_in_flight) once its request has ended, whatever ended it: completed,
/// client gone, upstream error, a cancelled handler. `ending` (TG_END_*, as
/// tg_settle takes) is counted in tg_stats: TG_END_CUT as aborted, the
/// others as completed. Release each admission exactly once, on the
/// limiter (or a sibling on the same table) that admitted it. `*in_use`
/// (NULL: not wanted) gets the key's requests still running. TG_E_INVALID
/// for 0, an admission not of this table's, one released already (a
/// second release changes nothing), or an unknown `ending`.
#[no_mangle]
pub extern "C" fn tg_release(
    limiter: *const tg_limiter,
    admission: u64,
    ending: u32,
    in_use: *mut u32,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a live limiter from this library.
        let Some(l) = (unsafe { limiter.as_ref() }) else {
            return TG_E_NULL;
        };
        let Some(a) = Admission::from_raw(admission) else {
            return TG_E_INVALID;
        };
        let ending = match ending {
            TG_END_USAGE => Ending::Usage(0),
            TG_END_COMPLETE => Ending::Complete,
            TG_END_FAILED => Ending::Failed,
            TG_END_CUT => Ending::Cut,
            _ => return TG_E_INVALID,
        };
        match l.inner.release(a, ending) {
            Ok(n) => {
                // SAFETY: NULL or writable by contract.
                if let Some(out) = unsafe { in_use.as_mut() } {
                    *out = n;
                }
                TG_OK
            }
            Err(e) => status_of(&e),
        }
    })
}

/// A decision with its token windows and its requests in flight, if any.
fn with_units(
    decision: *const tg_decision,
    tokens: *const tg_tokens,
    in_flight: *const tg_in_flight,
) -> Result<crate::Decision, tg_status> {
    let mut d = super::check::decision_arg(decision)?;
    // SAFETY: NULL or readable by contract.
    let (t, f) = unsafe { (tokens.as_ref(), in_flight.as_ref()) };
    if t.is_some_and(|t| !sized::<tg_tokens>(t.size))
        || f.is_some_and(|f| !sized::<tg_in_flight>(f.size))
    {
        return Err(TG_E_INVALID);
    }
    d.tokens = t.and_then(super::tokens_from_c);
    d.in_flight = f.and_then(in_flight_from_c);
    Ok(d)
}

/// As tg_decision_tokens_header_pairs, with the key's requests in flight
/// (`in_flight` as tg_check_units wrote it; NULL, or `has_in_flight` 0,
/// for none): the request headers, the token headers, then
/// x-ratelimit-limit-in-flight and x-ratelimit-in-flight, then retry-after
/// when refused by a window: the order every binding answers in.
#[no_mangle]
pub extern "C" fn tg_decision_units_header_pairs(
    decision: *const tg_decision,
    tokens: *const tg_tokens,
    in_flight: *const tg_in_flight,
    f: tg_header_fn,
    ctx: *mut c_void,
) -> tg_status {
    guard(|| match with_units(decision, tokens, in_flight) {
        Ok(d) => super::render::emit_pairs(&d, f, ctx),
        Err(s) => s,
    })
}

/// As tg_decision_tokens_ietf_header_pairs, with the requests in flight:
/// the fields then carry an "in-flight" item too, `q` the limit in
/// RateLimit-Policy and `r` the room left in RateLimit, with no `w` or `t`
/// (a quota of requests at once has no window).
#[no_mangle]
pub extern "C" fn tg_decision_units_ietf_header_pairs(
    decision: *const tg_decision,
    tokens: *const tg_tokens,
    in_flight: *const tg_in_flight,
    now_ms: u64,
    f: tg_header_fn,
    ctx: *mut c_void,
) -> tg_status {
    guard(|| match with_units(decision, tokens, in_flight) {
        Ok(d) => super::render::emit_ietf(&d, now_ms, f, ctx),
        Err(s) => s,
    })
}

/// As tg_decision_error_body, with the decision's token windows and
/// requests in flight (NULL: none), so that a refusal on tokens or for
/// in-flight gets its own message and code (`in_flight_limit_exceeded`).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn tg_decision_units_error_body(
    decision: *const tg_decision,
    tokens: *const tg_tokens,
    in_flight: *const tg_in_flight,
    model: *const c_char,
    model_len: usize,
    buf: *mut c_char,
    cap: usize,
    written: *mut usize,
) -> tg_status {
    guard(|| {
        let d = match with_units(decision, tokens, in_flight) {
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

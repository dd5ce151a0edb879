//! The C ABI of `answer`: the whole HTTP answer for every outcome, so a
//! binding renders no answer text of its own. Also the one tier parser and
//! the one rule of which methods are limited.

use std::ffi::{c_char, c_void};

use super::{
    any_bytes, decision_arg, emit, guard, render, tg_decision, tg_header_fn, tg_status, to_c,
    TG_E_ACCOUNT, TG_E_BODY_AMBIGUOUS_MODEL, TG_E_BODY_NOT_JSON, TG_E_BODY_NO_MODEL,
    TG_E_BODY_TOO_DEEP, TG_E_BODY_TOO_LARGE, TG_E_BUFFER_TOO_SMALL, TG_E_COST_TOO_LARGE,
    TG_E_INVALID, TG_E_NO_LIMIT, TG_E_NULL, TG_E_TABLE_FULL, TG_E_UNKNOWN_MODEL, TG_OK,
};
use crate::answer::{
    self, Answer, Event, HeaderValue, HttpRequest, Options, Outcome, Parts, MODEL_ECHO_MAX,
};
use crate::body::BodyError;
use crate::error::Error;
use crate::policy::Tier;

/// Not returned by any call: passed to tg_answer_for when the request
/// carries no account id at all (no API key).
pub const TG_E_NO_ACCOUNT: tg_status = 30;
/// Not returned by any call: passed to tg_answer_for when the request's
/// method is not limited (tg_method_limited() said 0).
pub const TG_E_NOT_LIMITED: tg_status = 31;
/// A callback asked to stop (tg_answer_headers).
pub const TG_E_ABORTED: tg_status = 32;

/// tg_answer_for flag: decide and report, never refuse (every refusal
/// passes upstream; `would_status` keeps what was not sent).
pub const TG_ANSWER_DRY_RUN: u32 = 1;
/// tg_answer_for flag: no limit configured for the tier: pass, not 403.
pub const TG_ANSWER_NO_LIMIT_PASS: u32 = 2;
/// tg_answer_for flag: table full: pass (fail open), not 503.
pub const TG_ANSWER_TABLE_FULL_OPEN: u32 = 4;
/// tg_answer_for flag: no account id: pass unlimited, not 401.
pub const TG_ANSWER_NO_ACCOUNT_PASS: u32 = 8;
/// tg_answer_request flag: on a limiter joined to a quota store, never wait
/// for a round trip: return TG_PENDING (nothing charged, `*out` untouched)
/// instead, and answer the same request again without the flag on a thread
/// that may block (asyncio's executor, a thread pool). See
/// TG_REQUEST_NO_WAIT.
pub const TG_ANSWER_NO_WAIT: u32 = 16;

/// tg_answer.outcome values (stable): how the request went, for logs,
/// metrics and variables; tg_outcome_name() names them.
///
/// Admitted by every window: passed, with the rate-limit headers.
pub const TG_OUTCOME_PASSED: u32 = 0;
/// Refused by a window: 429 (or the configured refuse status).
pub const TG_OUTCOME_REJECTED: u32 = 1;
/// Would have been refused, passed because of the dry run.
pub const TG_OUTCOME_DRY_RUN: u32 = 2;
/// No free slot for a new key: 503, or passed when failing open.
pub const TG_OUTCOME_TABLE_FULL: u32 = 3;
/// The model is not in the policy: 404.
pub const TG_OUTCOME_UNKNOWN_MODEL: u32 = 4;
/// The request is unusable (its body, tier or cost): 400, or 413 for a
/// body over the binding's cap.
pub const TG_OUTCOME_BAD_REQUEST: u32 = 5;
/// No limit configured for this tier and model: 403, or passed.
pub const TG_OUTCOME_NO_LIMIT: u32 = 6;
/// The request carries no account id: 401, or passed.
pub const TG_OUTCOME_NO_ACCOUNT: u32 = 7;
/// Any other error (the quota store's, a bug): 500; or 503
/// `rate_limiter_busy` when a decision could not wait for the store.
pub const TG_OUTCOME_ERROR: u32 = 8;
/// The method is not limited: passed without headers.
pub const TG_OUTCOME_NOT_LIMITED: u32 = 9;
/// Number of TG_OUTCOME_* values.
pub const TG_OUTCOMES: u32 = 10;

/// Most model bytes an answer echoes.
pub const TG_ANSWER_MODEL_MAX: u32 = 64;

const _: () = assert!(TG_ANSWER_MODEL_MAX as usize == MODEL_ECHO_MAX);
const _: () = assert!(TG_OUTCOMES as usize == Outcome::ALL.len());

/// The answer to one request, in the caller's memory. Set `size` to
/// sizeof(tg_answer), or 0, before calling tg_answer_for (see "Structs that
/// grow"). Read the public fields; leave the rest to the library.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tg_answer {
    /// sizeof(tg_answer) as the caller's header has it, or 0.
    pub size: u32,
    /// The HTTP status to answer with, or 0: pass the request upstream and
    /// add the headers (tg_answer_headers) to the upstream's response.
    pub http_status: u32,
    /// In a dry run, the status that was not sent; 0 otherwise.
    pub would_status: u32,
    /// TG_OUTCOME_*.
    pub outcome: u32,
    /// 1 if `decision` holds the limiter's decision.
    pub has_decision: u32,
    /// The decision, when `has_decision` is 1.
    pub decision: tg_decision,
    /// Library-private: which body the answer carries.
    pub body_kind: u32,
    /// The model bytes echoed in the body (at most TG_ANSWER_MODEL_MAX).
    pub model_len: u32,
    /// The echoed model bytes (`model_len` of them, not NUL-terminated).
    pub model: [u8; 64],
    /// Since 0.4 (written and read only when `size` covers it): the
    /// decision's token windows and reservation; `has_tokens` 0 when the
    /// key has no token limit or there was no decision. Settle
    /// `tokens.ticket` with tg_settle once the response has ended.
    pub tokens: super::tg_tokens,
    /// Since 0.4: the decision's requests in flight; `has_in_flight` 0
    /// when the key has no in-flight limit. Release `in_flight.admission`
    /// with tg_release once the request has ended, whatever ended it.
    pub in_flight: super::tg_in_flight,
}

/// sizeof(tg_answer) before `tokens` (0.3, and 0: the first layout).
const ANSWER_SIZE_0_3: usize = std::mem::offset_of!(tg_answer, tokens);

/// Bytes of a caller's tg_answer the library may touch: `None` for a size
/// that is no layout's.
fn answer_bytes(size: u32) -> Option<usize> {
    match size as usize {
        0 => Some(ANSWER_SIZE_0_3),
        n if n >= std::mem::size_of::<tg_answer>() => Some(std::mem::size_of::<tg_answer>()),
        n if n == ANSWER_SIZE_0_3 => Some(n),
        _ => None,
    }
}

fn event_error(status: tg_status) -> Error {
    match status {
        TG_E_UNKNOWN_MODEL => Error::UnknownModel,
        TG_E_NO_LIMIT => Error::NoLimit,
        TG_E_TABLE_FULL => Error::TableFull,
        TG_E_ACCOUNT => Error::Account,
        TG_E_COST_TOO_LARGE => Error::CostTooLarge,
        TG_E_BODY_NOT_JSON => Error::Body(BodyError::NotJson),
        TG_E_BODY_NO_MODEL => Error::Body(BodyError::NoModel),
        TG_E_BODY_AMBIGUOUS_MODEL => Error::Body(BodyError::AmbiguousModel),
        TG_E_BODY_TOO_DEEP => Error::Body(BodyError::TooDeep),
        TG_E_BODY_TOO_LARGE => Error::Body(BodyError::TooLarge),
        super::TG_E_TOKENS_TOO_LARGE => Error::TokensTooLarge {
            reserved: 0,
            limit: 0,
        },
        // a decision the caller could not hand to a thread that may wait
        super::TG_PENDING => Error::Pending,
        _ => Error::Invalid("the limiter failed"),
    }
}

/// Decides the whole answer to a request. `status` is what happened: TG_OK
/// with the `decision` tg_check gave; the status of a failed tg_check or
/// tg_body_scan_*; TG_E_NO_ACCOUNT when the request has no account id;
/// TG_E_NOT_LIMITED for a method that is not limited; TG_PENDING for a
/// decision the caller could not hand to a thread that may wait (503, a
/// retry helps). Any other status is answered as the limiter's own failure
/// (500). `model` (may be NULL with length 0) is the client's model string,
/// echoed in the body, cut to TG_ANSWER_MODEL_MAX bytes. `flags`:
/// TG_ANSWER_*; `refuse_status` is the status of a refusal over a limit, 0
/// for 429. `decision` may be NULL unless `status` is TG_OK.
#[no_mangle]
pub extern "C" fn tg_answer_for(
    status: tg_status,
    decision: *const tg_decision,
    model: *const c_char,
    model_len: usize,
    flags: u32,
    refuse_status: u32,
    out: *mut tg_answer,
) -> tg_status {
    tg_answer_for_tokens(
        status,
        decision,
        std::ptr::null(),
        model,
        model_len,
        flags,
        refuse_status,
        out,
    )
}

/// tg_answer_for with the decision's token windows (`tokens`, from
/// tg_check_tokens; NULL or `has_tokens` 0: none), so that the answer
/// carries the six token headers, names a refusal on tokens, and holds the
/// reservation's ticket in `out->tokens` (a tg_answer of this version's
/// size). TG_E_TOKENS_TOO_LARGE as `status` is its 400 answer.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn tg_answer_for_tokens(
    status: tg_status,
    decision: *const tg_decision,
    tokens: *const super::tg_tokens,
    model: *const c_char,
    model_len: usize,
    flags: u32,
    refuse_status: u32,
    out: *mut tg_answer,
) -> tg_status {
    tg_answer_for_units(
        status,
        decision,
        tokens,
        std::ptr::null(),
        model,
        model_len,
        flags,
        refuse_status,
        out,
    )
}

/// tg_answer_for_tokens with the decision's requests in flight too
/// (`in_flight`, from tg_check_units; NULL or `has_in_flight` 0: none), so
/// that the answer carries x-ratelimit-limit-in-flight and
/// x-ratelimit-in-flight, answers a refusal for in-flight, and holds the
/// admission in `out->in_flight`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn tg_answer_for_units(
    status: tg_status,
    decision: *const tg_decision,
    tokens: *const super::tg_tokens,
    in_flight: *const super::tg_in_flight,
    model: *const c_char,
    model_len: usize,
    flags: u32,
    refuse_status: u32,
    out: *mut tg_answer,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a readable tg_tokens by contract.
        let tokens = match unsafe { tokens.as_ref() } {
            None => None,
            Some(t) if !super::sized::<super::tg_tokens>(t.size) => return TG_E_INVALID,
            Some(t) => super::tokens_from_c(t),
        };
        // SAFETY: NULL or a readable tg_in_flight by contract.
        let in_flight = match unsafe { in_flight.as_ref() } {
            None => None,
            Some(f) if !super::sized::<super::tg_in_flight>(f.size) => return TG_E_INVALID,
            Some(f) => super::in_flight_from_c(f),
        };
        let opts = match options(flags, refuse_status) {
            Ok(o) => o,
            Err(s) => return s,
        };
        let model = match any_bytes(model, model_len) {
            Ok(m) => m,
            Err(s) => return s,
        };
        let d;
        let err;
        let event = match status {
            TG_OK => {
                d = match decision_arg(decision) {
                    Ok(d) => crate::Decision {
                        tokens,
                        in_flight,
                        ..d
                    },
                    Err(s) => return s,
                };
                Event::Decided(&d)
            }
            TG_E_NO_ACCOUNT => Event::NoAccount,
            TG_E_NOT_LIMITED => Event::MethodNotLimited,
            s => {
                err = event_error(s);
                Event::Failed(&err)
            }
        };
        write_answer(&Answer::new(event, model, &opts), out)
    })
}

fn options(flags: u32, refuse_status: u32) -> Result<Options, tg_status> {
    if flags & !0x1F != 0 || refuse_status > 999 || (refuse_status != 0 && refuse_status < 100) {
        return Err(TG_E_INVALID);
    }
    Ok(Options {
        refuse_status: if refuse_status == 0 {
            429
        } else {
            refuse_status as u16
        },
        dry_run: flags & TG_ANSWER_DRY_RUN != 0,
        no_limit_pass: flags & TG_ANSWER_NO_LIMIT_PASS != 0,
        table_full_open: flags & TG_ANSWER_TABLE_FULL_OPEN != 0,
        no_account_pass: flags & TG_ANSWER_NO_ACCOUNT_PASS != 0,
    })
}

/// Stores `a` in the caller's tg_answer, whose `size` must cover this
/// version's struct.
fn write_answer(a: &Answer, out: *mut tg_answer) -> tg_status {
    // SAFETY: NULL or a writable tg_answer of at least `size` bytes.
    if out.is_null() {
        return TG_E_NULL;
    }
    // SAFETY: non-null; `size` is the first field of every layout.
    let size = unsafe { (*out).size };
    let Some(n) = answer_bytes(size) else {
        return TG_E_INVALID;
    };
    let p = a.parts();
    let echoed = a.model();
    let mut m = [0u8; MODEL_ECHO_MAX];
    m[..echoed.len()].copy_from_slice(echoed);
    let full = tg_answer {
        size,
        http_status: p.status as u32,
        would_status: p.would as u32,
        outcome: p.outcome,
        has_decision: a.decision().is_some() as u32,
        decision: a.decision().map(to_c).unwrap_or(to_c(&EMPTY)),
        body_kind: p.body,
        model_len: echoed.len() as u32,
        model: m,
        tokens: super::tokens_to_c(a.decision().and_then(|d| d.tokens.as_ref())),
        in_flight: super::in_flight_to_c(a.decision().and_then(|d| d.in_flight.as_ref())),
    };
    // SAFETY: the caller's struct holds `n` writable bytes (its `size`
    // says which layout it is), and `full` is a whole tg_answer.
    unsafe {
        std::ptr::copy_nonoverlapping((&full as *const tg_answer).cast::<u8>(), out.cast(), n)
    };
    TG_OK
}

/// A decision with nothing in it, for renderers of one part.
pub(super) const fn answer_empty_decision() -> crate::Decision {
    EMPTY
}

const EMPTY: crate::Decision = crate::Decision {
    allowed: false,
    limited_by: crate::LimitedBy::None,
    minute: crate::Window {
        limit: 0,
        remaining: 0,
        reset: 0,
    },
    day: crate::Window {
        limit: 0,
        remaining: 0,
        reset: 0,
    },
    retry_after: 0,
    tokens: None,
    in_flight: None,
};

/// A request as an HTTP binding holding the whole body sees it, for
/// tg_answer_request. Set `size` to sizeof(tg_http_request), or 0 (see
/// "Structs that grow").
#[repr(C)]
pub struct tg_http_request {
    /// sizeof(tg_http_request) as the caller's header has it, or 0.
    pub size: u32,
    /// Requests this call counts for (1 for most calls; 0 to look only).
    pub cost: u32,
    /// The HTTP method ("POST"); only limited methods are counted.
    pub method: *const c_char,
    /// Bytes at `method`.
    pub method_len: usize,
    /// The account id; NULL when the request carries none (no API key).
    pub account: *const c_char,
    /// Bytes at `account`.
    pub account_len: usize,
    /// The tier's name: "free", "developer" or "enterprise" (any case).
    pub tier: *const c_char,
    /// Bytes at `tier`.
    pub tier_len: usize,
    /// The whole body (may be NULL with length 0).
    pub body: *const c_char,
    /// Bytes at `body`.
    pub body_len: usize,
}

/// The whole answer to one HTTP request at `now_ms`, every step in the
/// order all bindings share: the method (only POST is limited), the
/// account (NULL: TG_E_NO_ACCOUNT's answer), the body's model (the core's
/// scanner), the tier (tg_tier_parse), then tg_check. `flags` and
/// `refuse_status` as tg_answer_for, and TG_ANSWER_NO_WAIT. TG_OK whenever
/// `*out` holds an answer (including refusals); TG_PENDING with
/// TG_ANSWER_NO_WAIT only; TG_E_NULL / TG_E_INVALID for bad arguments only.
#[no_mangle]
pub extern "C" fn tg_answer_request(
    limiter: *const super::tg_limiter,
    request: *const tg_http_request,
    now_ms: u64,
    flags: u32,
    refuse_status: u32,
    out: *mut tg_answer,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or live objects of this library / the caller's.
        let (Some(l), Some(req)) = (unsafe { limiter.as_ref() }, unsafe { request.as_ref() })
        else {
            return TG_E_NULL;
        };
        if !super::sized::<tg_http_request>(req.size) {
            return TG_E_INVALID;
        }
        let opts = match options(flags, refuse_status) {
            Ok(o) => o,
            Err(s) => return s,
        };
        let bytes = |p, n| any_bytes(p, n);
        let (method, tier, body) = match (
            bytes(req.method, req.method_len),
            bytes(req.tier, req.tier_len),
            bytes(req.body, req.body_len),
        ) {
            (Ok(m), Ok(t), Ok(b)) => (m, t, b),
            _ => return TG_E_NULL,
        };
        let account = if req.account.is_null() {
            None
        } else {
            match bytes(req.account, req.account_len) {
                Ok(a) => Some(a),
                Err(s) => return s,
            }
        };
        let http = HttpRequest {
            method,
            account,
            tier,
            body,
            cost: req.cost,
        };
        if flags & TG_ANSWER_NO_WAIT != 0 {
            return match l.inner.try_answer(&http, now_ms, &opts) {
                Some(a) => write_answer(&a, out),
                None => super::TG_PENDING,
            };
        }
        let a = l.inner.answer(&http, now_ms, &opts);
        write_answer(&a, out)
    })
}

/// The caller's answer, checked.
fn answer_arg(answer: *const tg_answer) -> Result<Answer, tg_status> {
    // SAFETY: NULL or a readable tg_answer by contract.
    if answer.is_null() {
        return Err(TG_E_NULL);
    }
    // SAFETY: non-null; `size` is the first field of every layout.
    let n = answer_bytes(unsafe { (*answer).size }).ok_or(TG_E_INVALID)?;
    // SAFETY: the caller's struct holds `n` readable bytes; the rest of
    // the copy keeps its zeroes (no tokens).
    let a = unsafe {
        let mut a: tg_answer = std::mem::zeroed();
        std::ptr::copy_nonoverlapping(answer.cast::<u8>(), (&mut a as *mut tg_answer).cast(), n);
        a
    };
    if a.model_len as usize > MODEL_ECHO_MAX {
        return Err(TG_E_INVALID);
    }
    let decision = match a.has_decision {
        0 => None,
        _ => {
            let mut d = decision_arg(&a.decision)?;
            d.tokens = super::tokens_from_c(&a.tokens);
            d.in_flight = super::in_flight_from_c(&a.in_flight);
            Some(d)
        }
    };
    let parts = Parts {
        status: u16::try_from(a.http_status).map_err(|_| TG_E_INVALID)?,
        would: u16::try_from(a.would_status).map_err(|_| TG_E_INVALID)?,
        outcome: a.outcome,
        body: a.body_kind,
    };
    Answer::from_parts(parts, decision, &a.model[..a.model_len as usize]).ok_or(TG_E_INVALID)
}

/// Calls `fn` for each header of the answer, in order: the six
/// x-ratelimit-* when there was a decision, retry-after when it refused,
/// x-should-retry ("true" or "false": whether a client's SDK should retry
/// by itself) when it refused over a limit or failed with a 5xx,
/// content-type when the answer has a body. Names are lower case. For an
/// answer that passes (http_status 0) these go on the upstream's response.
#[no_mangle]
pub extern "C" fn tg_answer_headers(
    answer: *const tg_answer,
    f: tg_header_fn,
    ctx: *mut c_void,
) -> tg_status {
    guard(|| {
        let Some(f) = f else {
            return TG_E_NULL;
        };
        let a = match answer_arg(answer) {
            Ok(a) => a,
            Err(s) => return s,
        };
        let mut buf = [0u8; 20];
        for (name, value) in a.headers() {
            if !emit(f, ctx, name, value.as_bytes(&mut buf)) {
                return TG_E_ABORTED;
            }
        }
        TG_OK
    })
}

/// One header of an answer, as tg_answer_header_fields hands it: `name` is
/// the library's own lower-case text (static: valid while the library is
/// loaded), `value` points into the caller's buffer or at static text. Not
/// NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tg_header_field {
    /// The header's name (lower case).
    pub name: *const c_char,
    /// Bytes at `name`.
    pub name_len: usize,
    /// The header's value.
    pub value: *const c_char,
    /// Bytes at `value`.
    pub value_len: usize,
}

/// Most headers an answer has (six x-ratelimit-*, since 0.4 six more for
/// tokens and two for in-flight, retry-after, x-should-retry,
/// content-type): a `fields` array this long always suffices. An answer
/// without token or in-flight headers has at most 9 (this constant before
/// 0.4).
pub const TG_ANSWER_HEADERS_MAX: u32 = 17;
/// Bytes of buffer tg_answer_header_fields needs at most (20 per number:
/// a buffer this big always suffices; 160 without token headers).
pub const TG_ANSWER_HEADER_BYTES: u32 = 300;

/// Bytes of `buf` each number takes (u64::MAX has 20 digits).
const NUMBER_SLOT: usize = 20;
/// Numbers among an answer's headers: the six, the six for tokens, the
/// two for in-flight and retry-after (the other two are the library's
/// static text).
const NUMBERS_MAX: usize = 15;
const _: () = assert!(TG_ANSWER_HEADERS_MAX as usize == crate::answer::HEADERS_MAX);
const _: () = assert!(TG_ANSWER_HEADER_BYTES as usize >= NUMBER_SLOT * NUMBERS_MAX);

/// The same headers as tg_answer_headers, in the same order, in one call
/// and without a callback: for bindings that keep the values themselves
/// (nginx points its header list at them). Fills `fields[0..*count]`; the
/// numbers are written into `buf` (`cap` bytes, 20 per number), which must
/// stay alive and unchanged while the values are used.
/// TG_E_BUFFER_TOO_SMALL (with `*count` the headers the answer has) when
/// `max` or `cap` is too small: TG_ANSWER_HEADERS_MAX and
/// TG_ANSWER_HEADER_BYTES always suffice.
#[no_mangle]
pub extern "C" fn tg_answer_header_fields(
    answer: *const tg_answer,
    fields: *mut tg_header_field,
    max: usize,
    buf: *mut c_char,
    cap: usize,
    count: *mut usize,
) -> tg_status {
    guard(|| {
        if count.is_null() || (fields.is_null() && max != 0) || (buf.is_null() && cap != 0) {
            return TG_E_NULL;
        }
        let a = match answer_arg(answer) {
            Ok(a) => a,
            Err(s) => return s,
        };
        let (list, len) = a.header_list();
        let out: &mut [u8] = if cap == 0 {
            &mut []
        } else {
            // SAFETY: `buf` holds `cap` writable bytes by contract.
            unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), cap) }
        };
        // each number in a slot of its own, right-aligned: no copy
        let mut slots = out.chunks_exact_mut(NUMBER_SLOT);
        let mut fits = len <= max;
        for (n, (name, value)) in list[..len].iter().enumerate() {
            if !fits {
                break;
            }
            // numbers go into `buf`, texts are the library's static ones
            let v: &[u8] = match value {
                HeaderValue::Text(t) => t.as_bytes(),
                HeaderValue::Num(_) => match slots.next().map(<&mut [u8; NUMBER_SLOT]>::try_from) {
                    Some(Ok(slot)) => value.as_bytes(slot),
                    _ => {
                        fits = false;
                        break;
                    }
                },
            };
            // SAFETY: `fields` holds `max` writable entries; n < len <= max.
            unsafe {
                *fields.add(n) = tg_header_field {
                    name: name.as_ptr().cast(),
                    name_len: name.len(),
                    value: v.as_ptr().cast(),
                    value_len: v.len(),
                };
            }
        }
        let n = len;
        // SAFETY: non-null, writable by contract.
        unsafe { *count = n };
        if fits {
            TG_OK
        } else {
            TG_E_BUFFER_TOO_SMALL
        }
    })
}

/// The answer's JSON body (empty for an answer that passes). Buffer
/// protocol as tg_decision_headers: `*written` is the length needed, and
/// TG_E_BUFFER_TOO_SMALL when it exceeds `cap`; a body is at most
/// TG_ANSWER_BODY_MAX bytes.
#[no_mangle]
pub extern "C" fn tg_answer_body(
    answer: *const tg_answer,
    buf: *mut c_char,
    cap: usize,
    written: *mut usize,
) -> tg_status {
    guard(|| {
        let a = match answer_arg(answer) {
            Ok(a) => a,
            Err(s) => return s,
        };
        render(buf, cap, written, |s| a.write_body(s))
    })
}

/// Largest body tg_answer_body writes (a buffer this big always suffices).
pub const TG_ANSWER_BODY_MAX: u32 = 1024;

/// The name of a TG_OUTCOME_* value ("PASSED", "REJECTED", ...), a static
/// string; "" for a value that is not one.
#[no_mangle]
pub extern "C" fn tg_outcome_name(outcome: u32) -> *const c_char {
    const NAMES: [&std::ffi::CStr; 10] = [
        c"PASSED",
        c"REJECTED",
        c"DRY_RUN",
        c"TABLE_FULL",
        c"UNKNOWN_MODEL",
        c"BAD_REQUEST",
        c"NO_LIMIT",
        c"NO_ACCOUNT",
        c"ERROR",
        c"NOT_LIMITED",
    ];
    NAMES.get(outcome as usize).copied().unwrap_or(c"").as_ptr()
}

/// Parses a tier name ("free", "developer", "enterprise", any case) into
/// TG_TIER_*: the one tier parser every binding uses. TG_E_INVALID for
/// anything else.
#[no_mangle]
pub extern "C" fn tg_tier_parse(name: *const c_char, len: usize, tier: *mut u32) -> tg_status {
    guard(|| {
        if tier.is_null() {
            return TG_E_NULL;
        }
        let name = match any_bytes(name, len) {
            Ok(n) => n,
            Err(s) => return s,
        };
        let Some(t) = std::str::from_utf8(name).ok().and_then(Tier::parse) else {
            return TG_E_INVALID;
        };
        // SAFETY: non-null, writable by contract.
        unsafe { *tier = t as u32 };
        TG_OK
    })
}

/// 1 if requests with this method are limited (POST), 0 if they pass
/// unlimited and unread (answer them with TG_E_NOT_LIMITED).
#[no_mangle]
pub extern "C" fn tg_method_limited(method: *const c_char, len: usize) -> u32 {
    match any_bytes(method, len) {
        Ok(m) => answer::method_is_limited(m) as u32,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::tokens_to_c;
    use std::ffi::c_int;

    fn blank() -> tg_answer {
        tg_answer {
            size: std::mem::size_of::<tg_answer>() as u32,
            http_status: 0,
            would_status: 0,
            outcome: 0,
            has_decision: 0,
            decision: to_c(&EMPTY),
            body_kind: 0,
            model_len: 0,
            model: [0; 64],
            tokens: tokens_to_c(None),
            in_flight: crate::ffi::in_flight_to_c(None),
        }
    }

    extern "C" fn collect(
        ctx: *mut c_void,
        name: *const c_char,
        name_len: usize,
        value: *const c_char,
        value_len: usize,
    ) -> c_int {
        // SAFETY: ctx is the test's String; name/value point at len bytes.
        unsafe {
            let out = &mut *ctx.cast::<String>();
            let n = std::slice::from_raw_parts(name.cast::<u8>(), name_len);
            let v = std::slice::from_raw_parts(value.cast::<u8>(), value_len);
            out.push_str(std::str::from_utf8(n).unwrap());
            out.push_str(": ");
            out.push_str(std::str::from_utf8(v).unwrap());
            out.push('\n');
        }
        0
    }

    #[test]
    fn unknown_model_round_trips_through_c() {
        let mut a = blank();
        let m = b"nope";
        assert_eq!(
            tg_answer_for(
                TG_E_UNKNOWN_MODEL,
                std::ptr::null(),
                m.as_ptr().cast(),
                4,
                0,
                0,
                &mut a
            ),
            TG_OK
        );
        assert_eq!((a.http_status, a.outcome), (404, TG_OUTCOME_UNKNOWN_MODEL));
        let mut h = String::new();
        assert_eq!(
            tg_answer_headers(&a, Some(collect), (&mut h as *mut String).cast()),
            TG_OK
        );
        assert_eq!(h, "content-type: application/json\n");
        let mut buf = [0u8; 1024];
        let mut n = 0;
        assert_eq!(
            tg_answer_body(&a, buf.as_mut_ptr().cast(), buf.len(), &mut n),
            TG_OK
        );
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("model_not_found"));
        // Tampered parts are refused, not trusted.
        a.body_kind = 99;
        assert_eq!(
            tg_answer_body(&a, buf.as_mut_ptr().cast(), buf.len(), &mut n),
            TG_E_INVALID
        );
        let mut small = blank();
        small.size = 8;
        assert_eq!(
            tg_answer_for(
                TG_E_NO_ACCOUNT,
                std::ptr::null(),
                std::ptr::null(),
                0,
                0,
                0,
                &mut small
            ),
            TG_E_INVALID
        );
        assert_eq!(
            tg_answer_for(
                TG_OK,
                std::ptr::null(),
                std::ptr::null(),
                0,
                0,
                0,
                &mut blank()
            ),
            TG_E_NULL
        );
    }

    fn fields_text(a: &tg_answer, max: usize, cap: usize) -> (tg_status, usize, String) {
        let mut fields = [tg_header_field {
            name: std::ptr::null(),
            name_len: 0,
            value: std::ptr::null(),
            value_len: 0,
        }; TG_ANSWER_HEADERS_MAX as usize];
        let mut buf = [0u8; TG_ANSWER_HEADER_BYTES as usize];
        assert!(max <= fields.len() && cap <= buf.len());
        let mut n = 99;
        let st = tg_answer_header_fields(
            a,
            fields.as_mut_ptr(),
            max,
            buf.as_mut_ptr().cast(),
            cap,
            &mut n,
        );
        let mut out = String::new();
        for f in &fields[..if st == TG_OK { n } else { 0 }] {
            // SAFETY: the fields point at static names and into `buf`.
            unsafe {
                let name = std::slice::from_raw_parts(f.name.cast::<u8>(), f.name_len);
                let value = std::slice::from_raw_parts(f.value.cast::<u8>(), f.value_len);
                out.push_str(std::str::from_utf8(name).unwrap());
                out.push_str(": ");
                out.push_str(std::str::from_utf8(value).unwrap());
                out.push('\n');
            }
        }
        (st, n, out)
    }

    #[test]
    fn header_fields_are_the_headers_in_one_call() {
        const MAX: usize = TG_ANSWER_HEADERS_MAX as usize;
        let refused = crate::Decision {
            allowed: false,
            limited_by: crate::LimitedBy::Minute,
            minute: crate::Window {
                limit: u32::MAX,
                remaining: 0,
                reset: u64::MAX,
            },
            day: crate::Window {
                limit: u32::MAX,
                remaining: u32::MAX,
                reset: u64::MAX,
            },
            retry_after: u32::MAX,
            tokens: Some(crate::TokenWindows {
                minute: crate::Window {
                    limit: u32::MAX,
                    remaining: u32::MAX,
                    reset: u64::MAX,
                },
                day: crate::Window {
                    limit: u32::MAX,
                    remaining: u32::MAX,
                    reset: u64::MAX,
                },
                reserved: u32::MAX,
                ticket: None,
            }),
            in_flight: Some(crate::InFlight {
                limit: u32::MAX,
                in_use: u32::MAX,
                admission: None,
            }),
        };
        let allowed = crate::Decision {
            allowed: true,
            ..refused
        };
        let mut answers = Vec::new();
        for d in [refused, allowed] {
            for flags in [0, TG_ANSWER_DRY_RUN] {
                let mut a = blank();
                let c = to_c(&d);
                let t = crate::ffi::tokens_to_c(d.tokens.as_ref());
                assert_eq!(
                    tg_answer_for_tokens(TG_OK, &c, &t, c"m".as_ptr(), 1, flags, 0, &mut a),
                    TG_OK
                );
                // (no answer call takes a tg_in_flight yet: set as a
                // decision with one would leave it)
                a.in_flight = crate::ffi::in_flight_to_c(d.in_flight.as_ref());
                answers.push(a);
            }
        }
        for st in [
            TG_E_UNKNOWN_MODEL,
            TG_E_NOT_LIMITED,
            TG_E_BODY_NOT_JSON,
            TG_E_TABLE_FULL,
            crate::ffi::TG_PENDING,
        ] {
            let mut a = blank();
            assert_eq!(
                tg_answer_for(st, std::ptr::null(), std::ptr::null(), 0, 0, 0, &mut a),
                TG_OK
            );
            answers.push(a);
        }
        // a decision that could not be parked: busy, retry (not the 500 of
        // a failure that a retry does not mend)
        let busy = answers.last().unwrap();
        assert_eq!(busy.http_status, 503);
        const BYTES: usize = TG_ANSWER_HEADER_BYTES as usize;
        assert!(fields_text(busy, MAX, BYTES)
            .2
            .contains("x-should-retry: true\n"));
        for a in &answers {
            let mut h = String::new();
            assert_eq!(
                tg_answer_headers(a, Some(collect), (&mut h as *mut String).cast()),
                TG_OK
            );
            let (st, n, text) = fields_text(a, MAX, BYTES);
            assert_eq!((st, n), (TG_OK, h.lines().count()));
            assert_eq!(text, h);
            if n > 0 {
                // one field short, or one byte short of the values: refused
                // with the count, never written past
                assert_eq!(fields_text(a, n - 1, BYTES).0, TG_E_BUFFER_TOO_SMALL);
                assert_eq!(fields_text(a, n - 1, BYTES).1, n);
            }
        }
        // the refusal: fifteen numbers of the widest kind in fifteen
        // slots of 20 bytes, then x-should-retry and the type, static text
        let (st, n, text) = fields_text(&answers[0], MAX, BYTES);
        assert_eq!((st, n), (TG_OK, MAX));
        assert!(text.contains("x-ratelimit-remaining-tokens-day: 4294967295\n"));
        assert!(text.contains("x-ratelimit-reset-requests: 18446744073709551615\n"));
        assert!(text.contains("retry-after: 4294967295\n"));
        // a wait of 136 years is no retry
        assert!(text.ends_with("x-should-retry: false\ncontent-type: application/json\n"));
        assert_eq!(fields_text(&answers[0], MAX, 299).0, TG_E_BUFFER_TOO_SMALL);
        assert_eq!(fields_text(&answers[0], MAX, 300).0, TG_OK);
        let mut n = 0;
        assert_eq!(
            tg_answer_header_fields(
                &answers[0],
                std::ptr::null_mut(),
                MAX,
                std::ptr::null_mut(),
                0,
                &mut n
            ),
            TG_E_NULL
        );
        assert_eq!(
            tg_answer_header_fields(
                std::ptr::null(),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                0,
                &mut n
            ),
            TG_E_NULL
        );
    }

    #[test]
    fn tiers_and_methods() {
        let mut t = 9;
        assert_eq!(tg_tier_parse(c"Developer".as_ptr(), 9, &mut t), TG_OK);
        assert_eq!(t, 1);
        assert_eq!(tg_tier_parse(c"gold".as_ptr(), 4, &mut t), TG_E_INVALID);
        assert_eq!(tg_tier_parse(std::ptr::null(), 0, &mut t), TG_E_INVALID);
        assert_eq!(tg_method_limited(c"POST".as_ptr(), 4), 1);
        assert_eq!(tg_method_limited(c"GET".as_ptr(), 3), 0);
        // SAFETY: static NUL-terminated strings.
        let name = unsafe { std::ffi::CStr::from_ptr(tg_outcome_name(TG_OUTCOME_DRY_RUN)) };
        assert_eq!(name.to_bytes(), b"DRY_RUN");
        // SAFETY: as above.
        assert!(unsafe { std::ffi::CStr::from_ptr(tg_outcome_name(77)) }
            .to_bytes()
            .is_empty());
    }
}

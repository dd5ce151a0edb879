//! Tokens across the C ABI: a decision's token windows and reservation
//! (tg_check_tokens), settling it (tg_settle), and reading a response's
//! usage (tg_usage_scan_*, in caller memory like the body scan).

use std::ffi::c_void;

use super::*;
use crate::decision::{Ticket, TokenWindows, Window};
use crate::limiter::Ending;
use crate::usage::{Framing, Usage, UsageScanner};

/// The token minute window (TPM) refused.
pub const TG_LIMIT_TOKENS_MINUTE: u32 = 3;
/// The token day window (TPD) refused (reported whenever the token day is
/// exhausted and the request day is not).
pub const TG_LIMIT_TOKENS_DAY: u32 = 4;
/// The key had its max_in_flight requests running (no window: no
/// retry-after; since 0.4).
pub const TG_LIMIT_IN_FLIGHT: u32 = 5;

/// A reservation of tokens to settle once (tg_settle). Plain data: copy it
/// anywhere; all zero is "no reservation".
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct tg_ticket {
    /// Library-private.
    pub words: [u64; 2],
}

/// A decision's token windows, when the key has a token limit. Written by
/// tg_check_tokens and carried in tg_answer (since 0.4).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct tg_tokens {
    /// sizeof(tg_tokens) as the caller's header has it, or 0 (see "Structs
    /// that grow").
    pub size: u32,
    /// 1 if the key has a token limit and the fields below are its
    /// windows; 0 if it has none (the other fields are then 0).
    pub has_tokens: u32,
    /// Tokens per minute allowed.
    pub minute_limit: u32,
    /// Tokens left in the minute window after this decision's reservation.
    pub minute_remaining: u32,
    /// Epoch second at which the token minute window resets.
    pub minute_reset: u64,
    /// Tokens per day allowed.
    pub day_limit: u32,
    /// Tokens left in the day window after this decision's reservation.
    pub day_remaining: u32,
    /// Epoch second at which the token day window resets.
    pub day_reset: u64,
    /// Tokens this decision reserved (0 if refused or a peek).
    pub reserved: u32,
    /// Padding, written as 0.
    pub _reserved: u32,
    /// What to give tg_settle once the response has ended; all zero when
    /// nothing was reserved.
    pub ticket: tg_ticket,
}

pub(super) fn tokens_to_c(t: Option<&TokenWindows>) -> tg_tokens {
    let Some(t) = t else {
        return tg_tokens {
            size: std::mem::size_of::<tg_tokens>() as u32,
            ..tg_tokens::default()
        };
    };
    tg_tokens {
        size: std::mem::size_of::<tg_tokens>() as u32,
        has_tokens: 1,
        minute_limit: t.minute.limit,
        minute_remaining: t.minute.remaining,
        minute_reset: t.minute.reset,
        day_limit: t.day.limit,
        day_remaining: t.day.remaining,
        day_reset: t.day.reset,
        reserved: t.reserved,
        _reserved: 0,
        ticket: tg_ticket {
            words: t.ticket.map(Ticket::to_raw).unwrap_or_default(),
        },
    }
}

pub(super) fn tokens_from_c(t: &tg_tokens) -> Option<TokenWindows> {
    if t.has_tokens == 0 {
        return None;
    }
    Some(TokenWindows {
        minute: Window {
            limit: t.minute_limit,
            remaining: t.minute_remaining,
            reset: t.minute_reset,
        },
        day: Window {
            limit: t.day_limit,
            remaining: t.day_remaining,
            reset: t.day_reset,
        },
        reserved: t.reserved,
        ticket: Ticket::from_raw(t.ticket.words),
    })
}

/// tg_check for a key that may have a token limit: the request reserves
/// `req->tokens` (a tg_request of this version's size), and `*tokens`
/// (NULL: not wanted) gets the token windows and the reservation's ticket,
/// `has_tokens` 0 for a key without a token limit. Refused on tokens,
/// `out->limited_by` is TG_LIMIT_TOKENS_MINUTE or TG_LIMIT_TOKENS_DAY and
/// nothing is charged anywhere. TG_E_TOKENS_TOO_LARGE when the reservation
/// exceeds the key's smaller token limit (never admissible: answer 400);
/// TG_E_NO_TOKEN_WINDOWS on a table formatted before 0.4. A key with an
/// in-flight limit is TG_E_NO_IN_FLIGHT, as with tg_check.
#[no_mangle]
pub extern "C" fn tg_check_tokens(
    limiter: *const tg_limiter,
    req: *const tg_request,
    now_ms: u64,
    out: *mut tg_decision,
    tokens: *mut tg_tokens,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or writable by contract.
        let t = unsafe { tokens.as_mut() };
        if t.as_ref().is_some_and(|t| !sized::<tg_tokens>(t.size)) {
            return TG_E_INVALID;
        }
        super::check::decide(limiter, req, now_ms, out, false, |d| {
            // SAFETY: `decide` checked `out` non-null; writable by contract.
            unsafe { *out = to_c(d) };
            if let Some(t) = t {
                *t = tokens_to_c(d.tokens.as_ref());
            }
        })
    })
}

/// The six x-ratelimit-*-tokens headers of a decision's token windows, as
/// name/value pairs through `f` (names lower case), for bindings that set
/// headers one by one beside tg_decision_header_pairs; nothing when
/// `has_tokens` is 0. TG_E_ABORTED if `f` asked to stop.
#[no_mangle]
pub extern "C" fn tg_tokens_header_pairs(
    tokens: *const tg_tokens,
    f: tg_header_fn,
    ctx: *mut c_void,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a readable tg_tokens by contract.
        let (Some(f), Some(t)) = (f, unsafe { tokens.as_ref() }) else {
            return TG_E_NULL;
        };
        if !sized::<tg_tokens>(t.size) {
            return TG_E_INVALID;
        }
        let d = crate::Decision {
            tokens: tokens_from_c(t),
            ..super::answer::answer_empty_decision()
        };
        let mut buf = [0u8; 20];
        for (name, v) in d.token_header_pairs().into_iter().flatten() {
            let value = crate::answer::HeaderValue::Num(v);
            if !super::render::emit(f, ctx, name, value.as_bytes(&mut buf)) {
                return TG_E_ABORTED;
            }
        }
        TG_OK
    })
}

/// As tg_decision_header_pairs, with the key's token windows (`tokens` as
/// tg_check_tokens wrote them; NULL, or `has_tokens` 0, for none): the six
/// request headers, the six token headers, then retry-after when refused,
/// the order every binding answers in (since 0.4).
#[no_mangle]
pub extern "C" fn tg_decision_tokens_header_pairs(
    decision: *const tg_decision,
    tokens: *const tg_tokens,
    f: tg_header_fn,
    ctx: *mut c_void,
) -> tg_status {
    super::tg_decision_units_header_pairs(decision, tokens, std::ptr::null(), f, ctx)
}

/// As tg_decision_ietf_header_pairs, with the key's token windows
/// (`tokens` as tg_tokens_header_pairs takes them): the fields then carry
/// the "tokens-minute" and "tokens-day" items too (since 0.4).
#[no_mangle]
pub extern "C" fn tg_decision_tokens_ietf_header_pairs(
    decision: *const tg_decision,
    tokens: *const tg_tokens,
    now_ms: u64,
    f: tg_header_fn,
    ctx: *mut c_void,
) -> tg_status {
    super::tg_decision_units_ietf_header_pairs(decision, tokens, std::ptr::null(), now_ms, f, ctx)
}

/// The tokens a request whose body the scan read reserves (`*tokens`):
/// the limiter's policy's estimate from the facts tg_body_facts gave
/// (docs/tokens.md), to put in tg_request.tokens. The same number every
/// binding reserves for the same body.
#[no_mangle]
pub extern "C" fn tg_limiter_estimate_tokens(
    limiter: *const tg_limiter,
    facts: *const super::tg_body_scan_facts,
    tokens: *mut u32,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or live objects by contract.
        let (Some(l), Some(f), false) = (
            unsafe { limiter.as_ref() },
            unsafe { facts.as_ref() },
            tokens.is_null(),
        ) else {
            return TG_E_NULL;
        };
        if !sized::<super::tg_body_scan_facts>(f.size) {
            return TG_E_INVALID;
        }
        let facts = crate::body::BodyFacts {
            bytes: f.bytes,
            media_bytes: f.media_bytes,
            media_items: f.media_items,
            max_output: (f.has_max_output != 0).then_some(f.max_output),
        };
        let n = l.inner.policy().estimate_tokens(&facts);
        // SAFETY: non-null, writable by contract.
        unsafe { *tokens = n };
        TG_OK
    })
}

/// The response carried its usage: `used` is its total tokens.
pub const TG_END_USAGE: u32 = 0;
/// A 2xx response ended without usage: the reservation stays charged.
pub const TG_END_COMPLETE: u32 = 1;
/// A completed non-2xx response without usage: the policy's
/// `[tokens] on_failed` (default: given back).
pub const TG_END_FAILED: u32 = 2;
/// The response was cut before its usage (client gone, upstream reset,
/// timeout): the policy's `[tokens] on_cut` (default: kept).
pub const TG_END_CUT: u32 = 3;

/// Settles a reservation once its response has ended (`ending`, one of
/// TG_END_*; `used` is read for TG_END_USAGE only): the key is charged
/// what was used instead of what was reserved, the unspent part given
/// back while its window is open, an excess charged on top. `*charged`
/// (NULL: not wanted) gets the tokens charged in the end. Settle each
/// ticket exactly once, on the limiter (or a sibling on the same table)
/// whose decision made it. TG_E_INVALID for an all-zero ticket or one not
/// of this table, an unknown `ending`; TG_E_READ_ONLY on a read-only handle.
/// On a table of quota leases the key's token windows are in Redis: the
/// correction is queued to the lease thread (no round trip here), and a
/// limiter not joined to the store gets TG_E_NOT_JOINED.
#[no_mangle]
pub extern "C" fn tg_settle(
    limiter: *const tg_limiter,
    ticket: *const tg_ticket,
    ending: u32,
    used: u64,
    now_ms: u64,
    charged: *mut u64,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or live objects by contract.
        let (Some(l), Some(t)) = (unsafe { limiter.as_ref() }, unsafe { ticket.as_ref() }) else {
            return TG_E_NULL;
        };
        let Some(ticket) = Ticket::from_raw(t.words) else {
            return TG_E_INVALID;
        };
        let ending = match ending {
            TG_END_USAGE => Ending::Usage(used),
            TG_END_COMPLETE => Ending::Complete,
            TG_END_FAILED => Ending::Failed,
            TG_END_CUT => Ending::Cut,
            _ => return TG_E_INVALID,
        };
        match l.inner.settle(ticket, ending, now_ms) {
            Ok(n) => {
                // SAFETY: NULL or writable by contract.
                if let Some(c) = unsafe { charged.as_mut() } {
                    *c = n;
                }
                TG_OK
            }
            Err(e) => status_of(&e),
        }
    })
}

/// Alignment the memory given to tg_usage_scan_init must have.
pub const TG_USAGE_SCAN_ALIGN: u32 = 8;

/// A streaming read of one response's token usage (opaque), in caller
/// memory of tg_usage_scan_size() bytes: no allocation whatever the
/// response. One thread at a time.
pub struct tg_usage_scan {
    inner: UsageScanner,
}

const _: () = assert!(std::mem::align_of::<tg_usage_scan>() <= TG_USAGE_SCAN_ALIGN as usize);

/// A response's usage and how it ended, from tg_usage_scan_finish.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct tg_usage {
    /// sizeof(tg_usage) as the caller's header has it, or 0.
    pub size: u32,
    /// TG_END_*: what to give tg_settle, with `total`.
    pub ending: u32,
    /// Prompt (input) tokens reported (0 if none).
    pub input: u64,
    /// Output tokens reported (0 for embeddings, or if none).
    pub output: u64,
    /// Total tokens reported: tg_settle's `used`.
    pub total: u64,
}

/// Bytes of memory tg_usage_scan_init needs (aligned to
/// TG_USAGE_SCAN_ALIGN).
#[no_mangle]
pub extern "C" fn tg_usage_scan_size() -> usize {
    std::mem::size_of::<tg_usage_scan>()
}

/// Starts reading a response's usage in `len` bytes at `mem` (at least
/// tg_usage_scan_size(), aligned to TG_USAGE_SCAN_ALIGN); `*out` is set to
/// it. The framing comes from the response's Content-Type value
/// (`content_type`, `ct_len` bytes): JSON (`application/json`,
/// `application/<type>+json`) or server-sent events (`text/event-stream`).
/// TG_E_UNSUPPORTED when it is neither (no usage to read: settle with
/// TG_END_COMPLETE or TG_END_FAILED by the status); TG_E_NULL,
/// TG_E_INVALID (too small) or TG_E_ALIGNMENT otherwise, `*out` NULL.
/// The memory stays the caller's: nothing to free.
#[no_mangle]
pub extern "C" fn tg_usage_scan_init(
    mem: *mut c_void,
    len: usize,
    content_type: *const c_char,
    ct_len: usize,
    out: *mut *mut tg_usage_scan,
) -> tg_status {
    guard(|| {
        super::place(mem, len, out, || {
            let ct = any_bytes(content_type, ct_len)?;
            let framing = Framing::from_content_type(ct).ok_or(TG_E_UNSUPPORTED)?;
            Ok(tg_usage_scan {
                inner: UsageScanner::new(framing),
            })
        })
    })
}

/// Reads the next `len` bytes of the response body (`chunk` may be NULL
/// when `len` is 0), exactly as sent (after any content decoding: feed
/// what a client would parse). TG_OK: keep feeding. TG_E_USAGE: the
/// response cannot be read (not JSON, a usage that is not token counts);
/// final, and tg_usage_scan_finish then ends it as a response without
/// usage.
#[no_mangle]
pub extern "C" fn tg_usage_scan_feed(
    scan: *mut tg_usage_scan,
    chunk: *const u8,
    len: usize,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a scan made by tg_usage_scan_init, used by no
        // other call while this one runs.
        let Some(s) = (unsafe { scan.as_mut() }) else {
            return TG_E_NULL;
        };
        let bytes = match any_bytes(chunk.cast(), len) {
            Ok(b) => b,
            Err(st) => return st,
        };
        match s.inner.feed(bytes) {
            Ok(()) => TG_OK,
            // Every reason is one status: the response is not read.
            Err(_) => TG_E_USAGE,
        }
    })
}

/// The response has ended, with HTTP status `http_status`; `cut` is
/// nonzero when it did not end normally (client gone, upstream reset,
/// timeout). `*out` gets how it ended, by the one rule every binding
/// uses (docs/tokens.md): TG_END_USAGE and the counts when it reported
/// usage; else TG_END_CUT when cut, or an SSE stream that ended without
/// `data: [DONE]`; else TG_END_FAILED for a non-2xx status; else
/// TG_END_COMPLETE. A response that could not be read (TG_E_USAGE from a
/// feed) ends as if it reported nothing. Always TG_OK for valid arguments.
#[no_mangle]
pub extern "C" fn tg_usage_scan_finish(
    scan: *mut tg_usage_scan,
    http_status: u32,
    cut: u32,
    out: *mut tg_usage,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a live scan / writable tg_usage by contract.
        let (Some(s), Some(o)) = (unsafe { scan.as_mut() }, unsafe { out.as_mut() }) else {
            return TG_E_NULL;
        };
        if !sized::<tg_usage>(o.size) {
            return TG_E_INVALID;
        }
        let usage = s.inner.finish().ok().flatten().unwrap_or_default();
        let ending = s.inner.ending(http_status.min(999) as u16, cut != 0);
        *o = usage_to_c(ending, usage);
        TG_OK
    })
}

/// How a response whose body is not read for usage (no usage scan: its
/// Content-Type is neither JSON nor SSE) ended: TG_END_CUT when `cut`,
/// TG_END_FAILED for a non-2xx `http_status`, else TG_END_COMPLETE.
#[no_mangle]
pub extern "C" fn tg_usage_ending(http_status: u32, cut: u32) -> u32 {
    ending_to_c(Ending::without_usage(http_status.min(999) as u16, cut != 0))
}

fn ending_to_c(e: Ending) -> u32 {
    match e {
        Ending::Usage(_) => TG_END_USAGE,
        Ending::Complete => TG_END_COMPLETE,
        Ending::Failed => TG_END_FAILED,
        Ending::Cut => TG_END_CUT,
    }
}

fn usage_to_c(e: Ending, u: Usage) -> tg_usage {
    let total = match e {
        Ending::Usage(n) => n,
        _ => 0,
    };
    tg_usage {
        size: std::mem::size_of::<tg_usage>() as u32,
        ending: ending_to_c(e),
        input: u.input,
        output: u.output,
        total,
    }
}

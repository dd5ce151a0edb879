//! The whole HTTP answer to a limited request, for every way it can go:
//! the status (or "pass it upstream"), the headers, and the OpenAI-shaped
//! body, each in one wording. nginx, the ASGI middleware, the C++ header
//! and the tower layer all answer through this, so a request gets the same
//! answer whichever binding sees it; `tests/conformance.json` holds them
//! to it.
//!
//! A binding that holds the whole body hands the request to
//! [`Limiter::answer`], which takes every step in the one order all
//! bindings share: the method (only POST is limited), the account (none is
//! a 401), the body's model, the tier, then the decision. A binding that
//! streams the body (nginx) takes the same steps itself and reports what
//! happened ([`Event`]) to [`Answer::new`].

use std::fmt::{self, Write};

use crate::body::BodyError;
use crate::decision::{decimal, write_json_escaped, write_u64, write_unknown_model_body, Decision};
use crate::error::Error;
use crate::limiter::{Limiter, Request};
use crate::policy::Tier;
use crate::slot::LimitedBy;

/// Most bytes of a client's model string an answer echoes.
pub const MODEL_ECHO_MAX: usize = 64;

/// What happened to a request, as far as its answer goes.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The limiter decided: admitted, or refused over a limit.
    Decided(&'a Decision),
    /// The request carries no account id (no API key at all).
    NoAccount,
    /// Reading the model or deciding failed: a body error, an unknown
    /// model, no limit for the tier, a full table, an unusable account id,
    /// or anything else (answered as the limiter's own failure).
    Failed(&'a Error),
    /// The method is not one that is limited ([`method_is_limited`]).
    MethodNotLimited,
}

/// What the gateway's operator chose where the answer is a choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The status of a refusal over a limit (nginx `tollgate_status`).
    pub refuse_status: u16,
    /// Decide and report, never refuse: every refusal passes upstream.
    pub dry_run: bool,
    /// No limit configured for the tier and model: pass unlimited instead
    /// of 403.
    pub no_limit_pass: bool,
    /// Table full: pass unlimited (fail open) instead of 503.
    pub table_full_open: bool,
    /// No account id: pass unlimited instead of 401.
    pub no_account_pass: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            refuse_status: 429,
            dry_run: false,
            no_limit_pass: false,
            table_full_open: false,
            no_account_pass: false,
        }
    }
}

/// How a request went, named for logs, metrics and `$tollgate_status`.
/// Values are stable (they cross the C ABI as TG_OUTCOME_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum Outcome {
    /// Admitted by every window: passed, with the rate-limit headers.
    Passed = 0,
    /// Refused by a window: 429 (or the configured refuse status).
    Rejected = 1,
    /// Would have been refused; passed because of the dry run.
    DryRun = 2,
    /// No free slot for a new key: 503, or passed when failing open.
    TableFull = 3,
    /// The model is not in the policy: 404.
    UnknownModel = 4,
    /// The request is unusable (its body, tier or cost): 400, or 413 for
    /// a body over the binding's cap.
    BadRequest = 5,
    /// No limit configured for this tier and model: 403, or passed.
    NoLimit = 6,
    /// The request carries no account id: 401, or passed.
    NoAccount = 7,
    /// Any other error (the quota store's, a bug): 500; or 503
    /// `rate_limiter_busy` when a decision could not wait for the store.
    Error = 8,
    /// The method is not limited: passed without headers.
    NotLimited = 9,
}

impl Outcome {
    /// Every outcome, in the order of their values.
    pub const ALL: [Outcome; 10] = [
        Outcome::Passed,
        Outcome::Rejected,
        Outcome::DryRun,
        Outcome::TableFull,
        Outcome::UnknownModel,
        Outcome::BadRequest,
        Outcome::NoLimit,
        Outcome::NoAccount,
        Outcome::Error,
        Outcome::NotLimited,
    ];

    /// Upper-case name: `PASSED`, `REJECTED`, ...
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Passed => "PASSED",
            Outcome::Rejected => "REJECTED",
            Outcome::DryRun => "DRY_RUN",
            Outcome::TableFull => "TABLE_FULL",
            Outcome::UnknownModel => "UNKNOWN_MODEL",
            Outcome::BadRequest => "BAD_REQUEST",
            Outcome::NoLimit => "NO_LIMIT",
            Outcome::NoAccount => "NO_ACCOUNT",
            Outcome::Error => "ERROR",
            Outcome::NotLimited => "NOT_LIMITED",
        }
    }

    /// The outcome of a TG_OUTCOME_* value; `None` for any other number.
    pub fn from_u32(v: u32) -> Option<Outcome> {
        Outcome::ALL.get(v as usize).copied()
    }
}

/// Which body an answer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    None,
    RateLimited,
    UnknownModel,
    NoLimit,
    TableFull,
    NoAccount,
    Request(BodyError),
    CostTooLarge,
    /// The request's token reservation exceeds the key's token limit.
    TokensTooLarge,
    Failed,
    /// A decision that could not be handed to a thread that may wait for
    /// the quota store (nginx's thread pool queue full).
    Busy,
}

/// The answer to one request. Small and `Copy`: it holds the decision and
/// at most [`MODEL_ECHO_MAX`] bytes of the model, not references.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    status: u16,
    would: u16,
    outcome: Outcome,
    decision: Option<Decision>,
    body: Kind,
    model: [u8; MODEL_ECHO_MAX],
    model_len: u8,
}

/// One header value: a number or a fixed text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    /// A count, a limit, a time in seconds.
    Num(u64),
    /// A fixed text (`true`, `false`).
    Text(&'static str),
}

impl fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HeaderValue::Num(n) => write_u64(f, n),
            HeaderValue::Text(t) => f.write_str(t),
        }
    }
}

impl HeaderValue {
    /// The value's bytes, formatted into `buf` when it is a number.
    pub fn as_bytes<'b>(&'b self, buf: &'b mut [u8; 20]) -> &'b [u8] {
        match *self {
            HeaderValue::Text(t) => t.as_bytes(),
            HeaderValue::Num(n) => digits(n, buf),
        }
    }
}

/// "00".."99": header numbers are formatted two digits a step, on every
/// response a gateway sends.
const PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// The decimal digits of `v` at the end of `buf` (as `decimal`, faster:
/// 32-bit steps for the values headers carry, two digits each).
fn digits(v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let Ok(mut v) = u32::try_from(v) else {
        return decimal(v, buf);
    };
    let mut i = buf.len();
    while v >= 100 {
        let r = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[r..r + 2]);
    }
    if v >= 10 {
        let r = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[r..r + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    &buf[i..]
}

/// Most headers an answer has: the six `x-ratelimit-*` (six more when the
/// key has a token limit, two more with an in-flight limit),
/// `retry-after`, `x-should-retry` and `content-type`.
pub const HEADERS_MAX: usize = 17;

/// The longest `retry-after` a refusal asks a client to sleep through by
/// itself (`x-should-retry: true`): the OpenAI SDKs' own bounds are 60 s
/// (Node 7) and 120 s (Python), and Node 6 has none and sleeps whatever the
/// header says. A refusal of the minute window never waits longer.
pub const RETRY_WAIT_MAX: u32 = 60;

/// Only POST requests are limited: the inference endpoints take their
/// model from a POST body; a GET (model listings, health checks) is passed
/// through unlimited and unread, whichever binding sees it.
pub fn method_is_limited(method: &[u8]) -> bool {
    method == b"POST"
}

/// A request as an HTTP binding sees it.
#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    /// The HTTP method as sent (only `POST` is limited:
    /// [`method_is_limited`]).
    pub method: &'a [u8],
    /// The account id; `None` when the request carries none (no API key).
    pub account: Option<&'a [u8]>,
    /// The tier's name ("free", "developer", "enterprise", any case).
    pub tier: &'a [u8],
    /// The whole request body.
    pub body: &'a [u8],
    /// Requests this call counts for (1 for most calls).
    pub cost: u32,
}

impl Limiter {
    /// The whole answer to one HTTP request at `now_ms`: every step a
    /// binding would take, in the order every binding takes them.
    pub fn answer(&self, req: &HttpRequest<'_>, now_ms: u64, opts: &Options) -> Answer {
        match self.answer_with(req, now_ms, opts, false) {
            Some(a) => a,
            None => unreachable!("only a no-wait decision is pending"),
        }
    }

    /// As [`Limiter::answer`], for an event loop: `None` when the decision
    /// needs a round trip to the quota store ([`Error::Pending`]; nothing
    /// was charged), to be answered again by [`Limiter::answer`] on a
    /// thread that may block. Always `Some` on a local table.
    pub fn try_answer(&self, req: &HttpRequest<'_>, now_ms: u64, opts: &Options) -> Option<Answer> {
        self.answer_with(req, now_ms, opts, true)
    }

    fn answer_with(
        &self,
        req: &HttpRequest<'_>,
        now_ms: u64,
        opts: &Options,
        no_wait: bool,
    ) -> Option<Answer> {
        if !method_is_limited(req.method) {
            return Some(Answer::new(Event::MethodNotLimited, b"", opts));
        }
        let Some(account) = req.account else {
            return Some(Answer::new(Event::NoAccount, b"", opts));
        };
        let (model, facts) = match crate::body::facts_of(req.body) {
            Ok(m) => m,
            Err(e) => return Some(Answer::new(Event::Failed(&Error::Body(e)), b"", opts)),
        };
        let model = model.as_bytes();
        let Some(tier) = std::str::from_utf8(req.tier).ok().and_then(Tier::parse) else {
            let e = Error::Invalid("unknown tier");
            return Some(Answer::new(Event::Failed(&e), model, opts));
        };
        let mut r = Request::new(account, model, tier).cost(req.cost);
        // Reserved only on a key with a token limit (docs/tokens.md).
        r.tokens = self.policy().estimate_tokens(&facts);
        r.no_wait = no_wait;
        match self.check(&r, now_ms) {
            Ok(d) => Some(Answer::new(Event::Decided(&d), model, opts)),
            Err(Error::Pending) => None,
            Err(e) => Some(Answer::new(Event::Failed(&e), model, opts)),
        }
    }
}

impl Answer {
    /// Decides the answer to `event` for a request on `model` (the bytes
    /// the client sent, if any; only echoed, cut to [`MODEL_ECHO_MAX`]).
    pub fn new(event: Event<'_>, model: &[u8], opts: &Options) -> Answer {
        use Outcome as O;
        let (status, outcome, body, decision) = match event {
            Event::Decided(d) if d.allowed => (0, O::Passed, Kind::None, Some(*d)),
            Event::Decided(d) => (opts.refuse_status, O::Rejected, Kind::RateLimited, Some(*d)),
            Event::MethodNotLimited => (0, O::NotLimited, Kind::None, None),
            Event::NoAccount if opts.no_account_pass => (0, O::NoAccount, Kind::None, None),
            Event::NoAccount => (401, O::NoAccount, Kind::NoAccount, None),
            Event::Failed(e) => match e {
                Error::UnknownModel => (404, O::UnknownModel, Kind::UnknownModel, None),
                Error::NoLimit if opts.no_limit_pass => (0, O::NoLimit, Kind::None, None),
                Error::NoLimit => (403, O::NoLimit, Kind::NoLimit, None),
                Error::TableFull if opts.table_full_open => (0, O::TableFull, Kind::None, None),
                Error::TableFull => (503, O::TableFull, Kind::TableFull, None),
                Error::Account => (401, O::NoAccount, Kind::NoAccount, None),
                Error::Body(BodyError::TooLarge) => {
                    (413, O::BadRequest, Kind::Request(BodyError::TooLarge), None)
                }
                Error::Body(b) => (400, O::BadRequest, Kind::Request(*b), None),
                Error::CostTooLarge => (400, O::BadRequest, Kind::CostTooLarge, None),
                Error::TokensTooLarge { .. } => (400, O::BadRequest, Kind::TokensTooLarge, None),
                // Only the C ABI answers a pending decision: one it could
                // not park on a thread that may wait (tg_answer_for).
                Error::Pending => (503, O::Error, Kind::Busy, None),
                _ => (500, O::Error, Kind::Failed, None),
            },
        };
        let mut a = Answer {
            status,
            would: 0,
            outcome,
            decision,
            body,
            model: [0; MODEL_ECHO_MAX],
            model_len: 0,
        };
        let n = model.len().min(MODEL_ECHO_MAX);
        a.model[..n].copy_from_slice(&model[..n]);
        a.model_len = n as u8;
        // A body over the binding's cap is answered even in a dry run: the
        // binding stopped reading it, so it has no whole body to pass on.
        if opts.dry_run && a.status != 0 && a.body != Kind::Request(BodyError::TooLarge) {
            a.would = a.status;
            a.status = 0;
            if a.outcome == O::Rejected {
                a.outcome = O::DryRun;
            }
        }
        a
    }

    /// The HTTP status to answer with; 0 means pass the request upstream
    /// and add [`Answer::headers`] to the upstream's response.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// In a dry run, the status that was not sent (0 otherwise).
    pub fn would_status(&self) -> u16 {
        self.would
    }

    /// The request goes on upstream (admitted, dry run, or passed by the
    /// operator's choice); the binding adds [`Answer::headers`].
    pub fn passes(&self) -> bool {
        self.status == 0
    }

    /// How the request went, for logs and metrics.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The limiter's decision, when there was one.
    pub fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// The model bytes echoed (at most [`MODEL_ECHO_MAX`]).
    pub fn model(&self) -> &[u8] {
        &self.model[..self.model_len as usize]
    }

    /// The headers of the answer, in order: the six `x-ratelimit-*` when
    /// there was a decision, `retry-after` when it refused,
    /// `x-should-retry` when it is sent ([`Answer::should_retry`]), and
    /// `content-type` when the answer has a body. A passing answer's
    /// headers go on the upstream's response.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, HeaderValue)> {
        let (list, n) = self.header_list();
        list.into_iter().take(n)
    }

    /// [`Answer::headers`] as a fixed list and its length: what the C ABI
    /// hands over in one call (tg_answer_header_fields).
    pub fn header_list(&self) -> ([(&'static str, HeaderValue); HEADERS_MAX], usize) {
        let mut list = [("", HeaderValue::Num(0)); HEADERS_MAX];
        let mut n = 0;
        // retry-after goes with a refusal that is sent, not with a dry
        // run's pass.
        let refused = self.status != 0;
        if let Some(d) = &self.decision {
            let [requests @ .., retry] = d.header_pairs();
            let tokens = d.token_header_pairs().into_iter().flatten();
            let in_flight = d.in_flight_header_pairs().into_iter().flatten();
            let more = tokens.chain(in_flight).map(|(name, v)| (name, Some(v)));
            let retry = retry.1.filter(|_| refused).map(|v| (retry.0, Some(v)));
            for (name, value) in requests.into_iter().chain(more).chain(retry) {
                if let Some(v) = value {
                    list[n] = (name, HeaderValue::Num(v));
                    n += 1;
                }
            }
        }
        if let Some(retry) = self.should_retry() {
            list[n] = (
                "x-should-retry",
                HeaderValue::Text(if retry { "true" } else { "false" }),
            );
            n += 1;
        }
        if refused && self.body != Kind::None {
            list[n] = ("content-type", HeaderValue::Text("application/json"));
            n += 1;
        }
        (list, n)
    }

    /// What `x-should-retry` says, for the answers a client's SDK would
    /// otherwise judge by status alone: the OpenAI SDKs read it before the
    /// status and retry every 429 and 5xx without it (Node 6 sleeping
    /// through any `retry-after`, hours on a day limit). `None` (no header)
    /// for a pass and for the 4xx the SDKs never retry.
    ///
    /// - A refusal over a limit: `true` when its window clears within
    ///   [`RETRY_WAIT_MAX`] (the minute: a retry after `retry-after` gets
    ///   through), `false` for the day (until midnight UTC: the caller, not
    ///   its SDK, decides what to do; even in the day's last minute, so
    ///   the answer does not turn on the clock). `retry-after` stays the
    ///   true wait either way.
    /// - Table full (503): `false`. Slots free as days pass or the operator
    ///   grows the table, not within an SDK's seconds of backoff.
    /// - Busy (503): `true`. The gateway's queue was full for a moment.
    /// - Failed (500): `false`. Every cause is in the configuration or the
    ///   data (unknown tier, a full model table, a store's script or reply
    ///   error), which a retry does not mend.
    pub fn should_retry(&self) -> Option<bool> {
        if self.status == 0 {
            return None;
        }
        match self.body {
            Kind::RateLimited => self.decision.map(|d| {
                // In flight: one of the key's running requests ends soon
                // enough for an SDK's backoff to meet it.
                d.limited_by == LimitedBy::InFlight
                    || matches!(d.limited_by, LimitedBy::Minute | LimitedBy::TokensMinute)
                        && d.retry_after <= RETRY_WAIT_MAX
            }),
            Kind::TableFull | Kind::Failed => Some(false),
            Kind::Busy => Some(true),
            _ => None,
        }
    }

    /// The JSON body; nothing for an answer that passes.
    pub fn write_body(&self, out: &mut impl Write) -> fmt::Result {
        if self.status == 0 {
            return Ok(());
        }
        let model = self.model();
        let error = |out: &mut dyn Write,
                     message: &str,
                     kind: &str,
                     param: Option<&str>,
                     code: Option<&str>|
         -> fmt::Result {
            out.write_str("{\"error\":{\"message\":\"")?;
            out.write_str(message)?;
            out.write_str("\",\"type\":\"")?;
            out.write_str(kind)?;
            out.write_str("\",\"param\":")?;
            json_opt(out, param)?;
            out.write_str(",\"code\":")?;
            json_opt(out, code)?;
            out.write_str("}}")
        };
        let invalid = "invalid_request_error";
        match self.body {
            Kind::None => Ok(()),
            Kind::RateLimited => match &self.decision {
                Some(d) => d.write_error_body(model, out),
                None => Ok(()),
            },
            Kind::UnknownModel => write_unknown_model_body(model, out),
            Kind::NoLimit => {
                out.write_str("{\"error\":{\"message\":\"No rate limit is configured for the model `")?;
                write_json_escaped(out, model)?;
                out.write_str(
                    "` on your tier, so it is not available to you.\",\"type\":\"invalid_request_error\",\"param\":\"model\",\"code\":\"no_limit_configured\"}}",
                )
            }
            Kind::TableFull => error(
                out,
                "The rate limiter has no room to track this request; please try again later.",
                "server_error",
                None,
                Some("rate_limiter_full"),
            ),
            Kind::NoAccount => error(
                out,
                "You didn't provide a usable API key. Provide your API key in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY).",
                invalid,
                None,
                Some("invalid_api_key"),
            ),
            Kind::Request(BodyError::NotJson) => error(
                out,
                "We could not parse the JSON body of your request. The API expects a JSON object with a 'model' field.",
                invalid,
                None,
                Some("invalid_json"),
            ),
            Kind::Request(BodyError::NoModel) => error(
                out,
                "you must provide a model parameter",
                invalid,
                Some("model"),
                None,
            ),
            Kind::Request(BodyError::AmbiguousModel) => error(
                out,
                "The request body names the model more than once (keys equal to \\\"model\\\" ignoring case or escapes); send exactly one \\\"model\\\" key.",
                invalid,
                Some("model"),
                Some("ambiguous_model"),
            ),
            Kind::Request(BodyError::TooDeep) => {
                out.write_str("{\"error\":{\"message\":\"The request body nests deeper than ")?;
                write_u64(out, crate::body::DEPTH_MAX as u64)?;
                out.write_str(
                    " levels.\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"invalid_json\"}}",
                )
            }
            Kind::Request(BodyError::TooLarge) => error(
                out,
                "The request body is larger than this API accepts.",
                invalid,
                None,
                Some("request_too_large"),
            ),
            Kind::CostTooLarge => error(
                out,
                "This request counts for more requests than a whole window of your limit allows.",
                invalid,
                None,
                Some("cost_too_large"),
            ),
            Kind::TokensTooLarge => error(
                out,
                "This request would use more tokens (its prompt estimate plus max_tokens, or the default output cap when it sets none) than a whole window of your token limit allows; lower max_tokens or send a shorter prompt.",
                invalid,
                Some("max_tokens"),
                Some("tokens_too_large"),
            ),
            Kind::Failed => error(
                out,
                "The rate limiter failed on this request.",
                "server_error",
                None,
                None,
            ),
            Kind::Busy => error(
                out,
                "The rate limiter is too busy to decide this request right now; please retry shortly.",
                "server_error",
                None,
                Some("rate_limiter_busy"),
            ),
        }
    }
}

/// The parts of an answer as plain numbers, for callers that keep it in
/// their own memory (the C ABI's `tg_answer`), and back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// [`Answer::status`]: the status to answer, 0 to pass.
    pub status: u16,
    /// [`Answer::would_status`].
    pub would: u16,
    /// The [`Outcome`] as its TG_OUTCOME_* value.
    pub outcome: u32,
    /// Which body: a private code, checked on the way back.
    pub body: u32,
}

const BODIES: [Kind; 15] = [
    Kind::None,
    Kind::RateLimited,
    Kind::UnknownModel,
    Kind::NoLimit,
    Kind::TableFull,
    Kind::NoAccount,
    Kind::Request(BodyError::NotJson),
    Kind::Request(BodyError::NoModel),
    Kind::Request(BodyError::AmbiguousModel),
    Kind::Request(BodyError::TooDeep),
    Kind::CostTooLarge,
    Kind::Failed,
    Kind::Request(BodyError::TooLarge),
    Kind::Busy,
    Kind::TokensTooLarge,
];

impl Answer {
    /// The answer as plain numbers ([`Answer::from_parts`] reads them back).
    pub fn parts(&self) -> Parts {
        Parts {
            status: self.status,
            would: self.would,
            outcome: self.outcome as u32,
            body: BODIES.iter().position(|b| *b == self.body).unwrap_or(0) as u32,
        }
    }

    /// Rebuilds an answer from its parts; `None` if they are not parts of
    /// any answer (a body needing a decision without one, unknown codes).
    pub fn from_parts(p: Parts, decision: Option<Decision>, model: &[u8]) -> Option<Answer> {
        let outcome = Outcome::from_u32(p.outcome)?;
        let body = *BODIES.get(p.body as usize)?;
        if body == Kind::RateLimited && decision.is_none() {
            return None;
        }
        let n = model.len().min(MODEL_ECHO_MAX);
        let mut a = Answer {
            status: p.status,
            would: p.would,
            outcome,
            decision,
            body,
            model: [0; MODEL_ECHO_MAX],
            model_len: n as u8,
        };
        a.model[..n].copy_from_slice(&model[..n]);
        Some(a)
    }
}

fn json_opt(out: &mut dyn Write, v: Option<&str>) -> fmt::Result {
    match v {
        Some(s) => {
            out.write_char('"')?;
            out.write_str(s)?;
            out.write_char('"')
        }
        None => out.write_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Window;

    fn refused() -> Decision {
        Decision {
            allowed: false,
            limited_by: LimitedBy::Minute,
            minute: Window {
                limit: 30,
                remaining: 0,
                reset: 120,
            },
            day: Window {
                limit: 100,
                remaining: 70,
                reset: 86_400,
            },
            retry_after: 7,
            tokens: None,
            in_flight: None,
        }
    }

    fn body(a: &Answer) -> String {
        let mut s = String::new();
        a.write_body(&mut s).unwrap();
        s
    }

    #[test]
    fn every_body_is_json_with_an_error_object() {
        let d = refused();
        let events = [
            Event::Decided(&d),
            Event::NoAccount,
            Event::Failed(&Error::UnknownModel),
            Event::Failed(&Error::NoLimit),
            Event::Failed(&Error::TableFull),
            Event::Failed(&Error::Account),
            Event::Failed(&Error::Body(BodyError::NotJson)),
            Event::Failed(&Error::Body(BodyError::NoModel)),
            Event::Failed(&Error::Body(BodyError::AmbiguousModel)),
            Event::Failed(&Error::Body(BodyError::TooDeep)),
            Event::Failed(&Error::CostTooLarge),
            Event::Failed(&Error::Body(BodyError::TooLarge)),
            Event::Failed(&Error::ModelTableFull),
            Event::Failed(&Error::Pending),
        ];
        for e in events {
            let a = Answer::new(e, b"m\"\n\x1b", &Options::default());
            assert_ne!(a.status(), 0, "{e:?}");
            let b = body(&a);
            let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_else(|_| panic!("{b}"));
            assert!(v["error"]["message"].is_string(), "{b}");
            assert!(v["error"]["type"].is_string(), "{b}");
            assert_eq!(
                a.headers().last(),
                Some(("content-type", HeaderValue::Text("application/json")))
            );
        }
    }

    #[test]
    fn options_turn_refusals_into_passes() {
        let d = refused();
        let dry = Options {
            dry_run: true,
            ..Options::default()
        };
        let a = Answer::new(Event::Decided(&d), b"m", &dry);
        assert!(a.passes());
        assert_eq!((a.would_status(), a.outcome()), (429, Outcome::DryRun));
        assert_eq!(
            a.headers().count(),
            6,
            "the six, no retry-after, no body type"
        );
        assert_eq!(body(&a), "");
        let open = Options {
            table_full_open: true,
            no_limit_pass: true,
            no_account_pass: true,
            ..Options::default()
        };
        for e in [
            Event::Failed(&Error::TableFull),
            Event::Failed(&Error::NoLimit),
            Event::NoAccount,
            Event::MethodNotLimited,
        ] {
            let a = Answer::new(e, b"m", &open);
            assert!(a.passes() && a.headers().count() == 0, "{e:?}");
        }
        let teapot = Options {
            refuse_status: 503,
            ..Options::default()
        };
        assert_eq!(Answer::new(Event::Decided(&d), b"m", &teapot).status(), 503);
    }

    #[test]
    fn a_body_over_the_cap_is_413_even_in_a_dry_run() {
        let e = Error::Body(BodyError::TooLarge);
        let dry = Options {
            dry_run: true,
            ..Options::default()
        };
        for opts in [Options::default(), dry] {
            let a = Answer::new(Event::Failed(&e), b"", &opts);
            assert_eq!((a.status(), a.outcome()), (413, Outcome::BadRequest));
            assert!(body(&a).contains("\"code\":\"request_too_large\""));
            let p = a.parts();
            let back = Answer::from_parts(p, None, b"").unwrap();
            assert_eq!(body(&back), body(&a));
        }
    }

    #[test]
    fn the_echo_is_bounded() {
        let long = vec![b'x'; 10_000];
        let a = Answer::new(
            Event::Failed(&Error::UnknownModel),
            &long,
            &Options::default(),
        );
        assert_eq!(a.model().len(), MODEL_ECHO_MAX);
        assert!(body(&a).len() < 300);
    }

    #[test]
    fn header_values_format() {
        let mut buf = [0u8; 20];
        assert_eq!(HeaderValue::Num(0).as_bytes(&mut buf), b"0");
        assert_eq!(
            HeaderValue::Num(u64::MAX).as_bytes(&mut buf),
            b"18446744073709551615"
        );
        assert_eq!(HeaderValue::Text("a/b").as_bytes(&mut buf), b"a/b");
        // two digits a step, against the one-digit loop
        let mut one = [0u8; 20];
        // Every value of up to five digits natively; under miri (some
        // hundred times slower) the first thousand, and the edges below.
        let dense = if cfg!(miri) { 1_000 } else { 100_000u64 };
        for v in (0..dense)
            .chain([u32::MAX as u64 - 1, u32::MAX as u64, u32::MAX as u64 + 1])
            .chain((0..64).map(|b| 1u64 << b))
            .chain((1..20).map(|e| 10u64.pow(e) - 1))
        {
            assert_eq!(HeaderValue::Num(v).as_bytes(&mut buf), decimal(v, &mut one));
        }
        assert!(method_is_limited(b"POST"));
        assert!(!method_is_limited(b"GET") && !method_is_limited(b"post"));
    }

    fn header(a: &Answer, name: &str) -> Option<String> {
        a.headers()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    }

    #[test]
    fn a_minute_refusal_says_retry_and_a_day_refusal_says_not() {
        let minute = refused();
        let a = Answer::new(Event::Decided(&minute), b"m", &Options::default());
        let names: Vec<_> = a.headers().map(|(n, _)| n).collect();
        // every header an answer without token or in-flight limits can have
        assert_eq!(names.len(), HEADERS_MAX - 8);
        assert_eq!(
            names[6..],
            ["retry-after", "x-should-retry", "content-type"]
        );
        assert_eq!(header(&a, "x-should-retry").as_deref(), Some("true"));
        assert_eq!(header(&a, "retry-after").as_deref(), Some("7"));

        // The day: midnight UTC is hours away, and retry-after says so.
        let day = Decision {
            limited_by: LimitedBy::Day,
            retry_after: 40_000,
            ..minute
        };
        let a = Answer::new(Event::Decided(&day), b"m", &Options::default());
        assert_eq!(header(&a, "x-should-retry").as_deref(), Some("false"));
        assert_eq!(header(&a, "retry-after").as_deref(), Some("40000"));
        // ... and in the day's last seconds too: it does not turn on the clock.
        let late = Decision {
            retry_after: 5,
            ..day
        };
        let a = Answer::new(Event::Decided(&late), b"m", &Options::default());
        assert_eq!(a.should_retry(), Some(false));
        // A wait past what a client should sleep is never a retry.
        let long = Decision {
            retry_after: RETRY_WAIT_MAX + 1,
            ..minute
        };
        let a = Answer::new(Event::Decided(&long), b"m", &Options::default());
        assert_eq!(a.should_retry(), Some(false));
        // The operator's status for refusals changes nothing of it.
        let other = Options {
            refuse_status: 503,
            ..Options::default()
        };
        let a = Answer::new(Event::Decided(&minute), b"m", &other);
        assert_eq!(a.should_retry(), Some(true));
        // A dry run's pass is no error: nothing to retry.
        let dry = Options {
            dry_run: true,
            ..Options::default()
        };
        let a = Answer::new(Event::Decided(&day), b"m", &dry);
        assert_eq!(
            (a.should_retry(), header(&a, "x-should-retry")),
            (None, None)
        );
    }

    #[test]
    fn server_errors_say_whether_a_retry_helps_and_4xx_say_nothing() {
        let opts = Options::default();
        let cases = [
            (Event::Failed(&Error::TableFull), 503, Some("false")),
            (Event::Failed(&Error::Pending), 503, Some("true")),
            (
                Event::Failed(&Error::Invalid("unknown tier")),
                500,
                Some("false"),
            ),
            (Event::Failed(&Error::ModelTableFull), 500, Some("false")),
            (Event::Failed(&Error::NotJoined), 500, Some("false")),
            (Event::Failed(&Error::UnknownModel), 404, None),
            (Event::Failed(&Error::NoLimit), 403, None),
            (Event::NoAccount, 401, None),
            (Event::Failed(&Error::Body(BodyError::NotJson)), 400, None),
            (Event::Failed(&Error::CostTooLarge), 400, None),
            (Event::Failed(&Error::Body(BodyError::TooLarge)), 413, None),
        ];
        for (e, status, retry) in cases {
            let a = Answer::new(e, b"m", &opts);
            assert_eq!(a.status(), status, "{e:?}");
            assert_eq!(header(&a, "x-should-retry").as_deref(), retry, "{e:?}");
            // The C ABI's parts carry it: the same headers come back.
            let back = Answer::from_parts(a.parts(), None, b"m").unwrap();
            assert!(back.headers().eq(a.headers()), "{e:?}");
            assert_eq!(body(&back), body(&a));
        }
        let busy = Answer::new(Event::Failed(&Error::Pending), b"", &opts);
        assert_eq!(busy.outcome(), Outcome::Error);
        assert!(body(&busy).contains("\"code\":\"rate_limiter_busy\""));
        let full = Answer::new(Event::Failed(&Error::TableFull), b"", &opts);
        assert!(!body(&full).contains("retry shortly"), "{}", body(&full));
    }
}

//! A `tower` layer for Rust gateways (axum, hyper, anything built on
//! `tower::Service`): the limiter in front of an OpenAI-shaped API, with
//! the answers every other binding gives (`tests/conformance.json`).
//!
//! For each request the layer takes the steps of [`Limiter::answer`] in
//! its order, and holds no answer text or limiting of its own:
//!
//! 1. A method that is not limited
//!    ([`method_is_limited`](crate::answer::method_is_limited): only POST)
//!    is passed on untouched and unread, so model listings, health checks
//!    and streamed uploads keep streaming.
//! 2. The account comes from the caller's function of the request head
//!    ([`bearer_token`], [`bearer_digest`], or your own). None is the
//!    core's 401 (or an unlimited pass with
//!    [`Options::no_account_pass`]), again without reading the body.
//! 3. The body is read whole, up to [`RateLimitLayer::max_body_bytes`]
//!    (default [`MAX_BODY_BYTES`], 4 MiB). The model is in the JSON body
//!    and the core's scanner must see all of it (it validates the whole
//!    document, so the model it limits is the one the upstream reads), so
//!    a limited request is buffered. More than the cap is answered 413
//!    (`request_too_large`, the core's answer for
//!    [`BodyError::TooLarge`](crate::BodyError::TooLarge)) as soon as the
//!    declared length or the bytes read pass it: the cap is what bounds the
//!    memory a client can make the gateway hold. A body that fails to arrive (client gone, broken
//!    framing) gets the core's 400 `invalid_json`.
//! 4. The tier (fixed, or from the request head) and the cost (fixed, or
//!    from the head and body bytes) go with the body to the core, which
//!    scans for the model, decides and answers: [`Limiter::try_answer`]
//!    on the runtime, and [`Limiter::answer`] off it for a decision that
//!    must wait for the quota store (below).
//! 5. A refusal is answered with the core's status, headers (with
//!    `retry-after` and `x-should-retry` over a limit) and JSON body.
//!    An admitted request goes to the inner service with its body bytes
//!    re-attached unchanged (as `B::from(Bytes)`, which axum's `Body` and
//!    `Full<Bytes>` implement; trailers are not kept; with hyper alone,
//!    whose `Incoming` has no such conversion, map the request body into
//!    axum's `Body` or your own first), the
//!    [`Answer`](crate::answer::Answer) and its [`Decision`](crate::Decision)
//!    in the request's extensions for the handler, and the core's headers
//!    (the six `x-ratelimit-*`, in a dry run too) set on the
//!    inner service's response, replacing any of the same name. Response
//!    bodies are never buffered, so streamed (SSE) answers keep streaming:
//!    the response's body is a [`ResponseBody`], which passes the inner
//!    body's frames on as they come and, when the request reserved tokens
//!    or took an in-flight unit, settles and releases them when the
//!    response ends (below).
//!
//! On a key with token limits (`tpm`, `tpd`: docs/tokens.md) the core's
//! answer reserves the request's estimated tokens, and its headers include
//! the six `x-ratelimit-*-tokens`. The layer settles that reservation
//! itself, exactly once, with [`Limiter::settle`] at the layer's clock:
//! the [`ResponseBody`] reads the usage from the data frames as they pass
//! ([`UsageScanner`](crate::usage::UsageScanner), for a JSON or SSE
//! response without `Content-Encoding`; an encoded body is not read and
//! ends as one without usage), without holding or delaying any of them,
//! and settles when the inner body ends: to its usage, else by the core's
//! rule for a response without one ([`Ending`](crate::Ending)). An inner
//! body that fails, a response body dropped before its end (the client
//! went away), or an inner service that fails or whose response never
//! comes settles as cut (`[tokens] on_cut`, by default kept). So the next
//! request of the key sees the usage as soon as the response has been
//! sent. A request without a reservation pays for none of this.
//!
//! On a key with an in-flight limit (`max_in_flight = N`:
//! docs/in-flight.md) the core admits a request only while fewer than N of
//! the key's requests are running; a refusal is its 429
//! (`in_flight_limit_exceeded`, no `retry-after`), and every answer of the
//! key carries `x-ratelimit-limit-in-flight` and `x-ratelimit-in-flight`.
//! The layer releases each admission itself, exactly once, with
//! [`Limiter::release`], at the moment the request ends, whichever way:
//!
//! - when the response body ends (its last frame passed, or it is dropped
//!   having said it ended or having passed the length it declared, as
//!   hyper drops a body it has written whole; a response without a body
//!   too): completed, with the [`Ending`](crate::Ending) a token settle
//!   gets (complete or failed by status, or the usage);
//! - when the response body fails, or is dropped before its end (the
//!   client went away and the server dropped it): cut, counted aborted;
//! - when the inner service fails, or the response future is dropped
//!   before the response came (a client gone while the inner service
//!   worked: hyper drops the request's future): cut, counted aborted.
//!
//! The reservation and the admission are one guard's, made with the
//! decision, settled and released together (the tokens first, so the
//! request the unit admits next sees the usage). A release never waits
//! (a few atomics on the table), so it is done on the runtime, in `Drop`
//! too. The admission is in the [`Decision`](crate::Decision) the handler
//! finds: it must not release it itself (a second release is refused, and
//! the first would free the unit while the response still runs). A
//! table of quota leases (a limiter joined to Redis) holds no in-flight
//! limits yet: the core answers such a key 500.
//!
//! Every response the layer returns carries the request's
//! [`Answer`](crate::answer::Answer) in its extensions, for an outer layer
//! that logs or counts outcomes.
//!
//! On a limiter joined to Redis ([`Limiter::connect`]) the layer never
//! blocks the async runtime. Every decision is first asked for without
//! waiting ([`Request::no_wait`](crate::Request#structfield.no_wait)): one
//! the units this host holds settle, or the down policy once the breaker is
//! open, is made at once on the runtime, as on a local table (which never
//! waits). One that needs a round trip to the store comes back pending
//! ([`Error::Pending`](crate::Error::Pending), nothing charged) and is made
//! again on a thread of the layer's own blocking pool, waiting at most the
//! store's deadline, while the runtime serves other requests; a request
//! whose client goes away meanwhile is still decided (and counted). The
//! pool starts a thread when all of its threads are busy and lets one go
//! after 10 s without work; it needs no particular async runtime.
//!
//! The README's example:
//!
//! ```
//! # fn main() -> Result<(), tollgate::Error> {
//! use std::sync::Arc;
//! use axum::{extract::Extension, routing::post, Router};
//! use tollgate::tower::{bearer_digest, Options, RateLimitLayer};
//! use tollgate::{Decision, Limiter, Policy, Tier};
//!
//! async fn chat(Extension(d): Extension<Decision>) -> String {
//!     format!("{} left this minute", d.minute.remaining)
//! }
//!
//! let limiter = Arc::new(Limiter::new(&Policy::builtin(), 125_000)?); // or Limiter::open(.., path, ..)
//! let app: Router = Router::new()
//!     .route("/v1/chat/completions", post(chat))
//!     .layer(
//!         RateLimitLayer::new(limiter, bearer_digest) // account: digest of the bearer key
//!             .tier(Tier::Developer)                  // or .tier_by(|head| ...)
//!             .cost(1)                                // or .cost_by(|head, body| ...)
//!             .options(Options { table_full_open: true, ..Options::default() })
//!             .max_body_bytes(4 << 20),               // 413 above (the default)
//!     );
//! # drop(app);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use http::header;
use http::request::Parts;

pub use crate::answer::Options;
use crate::{Limiter, Tier};

mod blocking;
mod service;
mod settle;

pub use service::{RateLimit, ResponseBody};

/// The default cap on a limited request's body: 4 MiB, well above a long
/// chat prompt, well below what would let clients exhaust memory.
pub const MAX_BODY_BYTES: usize = 4 << 20;

type AccountFn = dyn Fn(&Parts) -> Option<Vec<u8>> + Send + Sync;
type TierFn = dyn Fn(&Parts) -> Option<Vec<u8>> + Send + Sync;
type CostFn = dyn Fn(&Parts, &[u8]) -> u32 + Send + Sync;
type ClockFn = dyn Fn() -> u64 + Send + Sync;

#[derive(Clone)]
enum TierOf {
    Fixed(Tier),
    By(Arc<TierFn>),
}

#[derive(Clone)]
enum CostOf {
    Fixed(u32),
    By(Arc<CostFn>),
}

#[derive(Clone)]
struct Config {
    limiter: Arc<Limiter>,
    account: Arc<AccountFn>,
    tier: TierOf,
    cost: CostOf,
    options: Options,
    max_body: usize,
    clock: Arc<ClockFn>,
}

impl fmt::Debug for TierOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TierOf::Fixed(t) => f.debug_tuple("Fixed").field(t).finish(),
            TierOf::By(_) => f.write_str("By(..)"),
        }
    }
}

impl fmt::Debug for CostOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CostOf::Fixed(c) => f.debug_tuple("Fixed").field(c).finish(),
            CostOf::By(_) => f.write_str("By(..)"),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The account function and the clock are closures: not shown.
        f.debug_struct("Config")
            .field("limiter", &self.limiter)
            .field("tier", &self.tier)
            .field("cost", &self.cost)
            .field("options", &self.options)
            .field("max_body_bytes", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// Limits the requests of the service it wraps ([`RateLimit`]). Cheap to
/// clone: the settings and the limiter are shared by `Arc`.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    cfg: Arc<Config>,
}

impl RateLimitLayer {
    /// A layer over `limiter` taking each request's account id from
    /// `account` (1 to 64 bytes; `None` or empty when the request has no
    /// API key).
    /// Defaults: the Developer tier, cost 1, [`Options::default`], a body
    /// cap of [`MAX_BODY_BYTES`], the real-time clock.
    pub fn new<F>(limiter: Arc<Limiter>, account: F) -> RateLimitLayer
    where
        F: Fn(&Parts) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
        RateLimitLayer {
            cfg: Arc::new(Config {
                limiter,
                account: Arc::new(account),
                tier: TierOf::Fixed(Tier::Developer),
                cost: CostOf::Fixed(1),
                options: Options::default(),
                max_body: MAX_BODY_BYTES,
                clock: Arc::new(crate::now_ms),
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Config)) -> RateLimitLayer {
        // A layer already cloned (or serving) keeps its settings: the
        // change makes a new one.
        let mut cfg = Arc::unwrap_or_clone(self.cfg);
        f(&mut cfg);
        RateLimitLayer { cfg: Arc::new(cfg) }
    }

    /// Every request is of this tier.
    pub fn tier(self, tier: Tier) -> RateLimitLayer {
        self.with(|c| c.tier = TierOf::Fixed(tier))
    }

    /// Each request's tier name from its head ("free", "developer",
    /// "enterprise", any case), parsed by the core: a name it does not
    /// know, or `None`, is answered as the limiter's failure (500).
    pub fn tier_by<F>(self, tier: F) -> RateLimitLayer
    where
        F: Fn(&Parts) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
        self.with(|c| c.tier = TierOf::By(Arc::new(tier)))
    }

    /// Every request counts for `cost` requests (0 peeks: counts nothing).
    pub fn cost(self, cost: u32) -> RateLimitLayer {
        self.with(|c| c.cost = CostOf::Fixed(cost))
    }

    /// Each request's cost from its head and body bytes (e.g. the size of
    /// a batch). The layer parses nothing: parse the body here if the cost
    /// is in it.
    pub fn cost_by<F>(self, cost: F) -> RateLimitLayer
    where
        F: Fn(&Parts, &[u8]) -> u32 + Send + Sync + 'static,
    {
        self.with(|c| c.cost = CostOf::By(Arc::new(cost)))
    }

    /// The operator's choices: refusal status, dry run, and passing
    /// instead of refusing on no limit, a full table or no account.
    pub fn options(self, options: Options) -> RateLimitLayer {
        self.with(|c| c.options = options)
    }

    /// The most body bytes read from a limited request (413 above).
    pub fn max_body_bytes(self, max: usize) -> RateLimitLayer {
        self.with(|c| c.max_body = max)
    }

    /// The clock decisions are taken at, in epoch milliseconds (default
    /// [`crate::now_ms`]); tests and replays drive time with it.
    pub fn clock<F>(self, now_ms: F) -> RateLimitLayer
    where
        F: Fn() -> u64 + Send + Sync + 'static,
    {
        self.with(|c| c.clock = Arc::new(now_ms))
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit::new(inner, self.cfg.clone())
    }
}

/// The key of an `Authorization: Bearer <key>` header (scheme in any case,
/// whitespace trimmed), or `None`. Keys longer than 64 bytes are refused
/// as accounts (401): use [`bearer_digest`] for those.
pub fn bearer_token(parts: &Parts) -> Option<Vec<u8>> {
    bearer(parts).map(<[u8]>::to_vec)
}

/// The account id of a bearer key: [`crate::account_digest`] of it, 32
/// hex digits whatever the key's length (nginx's `$tollgate_bearer_digest`
/// and the Python middleware's `bearer_token_digest` give the same), so
/// raw keys never reach the table; `None` without a bearer key.
pub fn bearer_digest(parts: &Parts) -> Option<Vec<u8>> {
    bearer(parts).map(|k| crate::account_digest(k).into_bytes())
}

/// The core's reading of the header ([`crate::bearer_key`]), as every
/// binding's.
fn bearer(parts: &Parts) -> Option<&[u8]> {
    crate::bearer_key(parts.headers.get(header::AUTHORIZATION)?.as_bytes())
}

/// A tier function reading the request header `name` (e.g.
/// `x-tollgate-tier`, as the conformance table's requests carry it), for
/// [`RateLimitLayer::tier_by`]. Only for headers your own gateway sets: a
/// client must not choose its tier.
pub fn tier_header(name: &'static str) -> impl Fn(&Parts) -> Option<Vec<u8>> + Send + Sync {
    move |p: &Parts| p.headers.get(name).map(|v| v.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Request};

    fn head(auth: Option<&[u8]>) -> Parts {
        let mut b = Request::builder()
            .method("POST")
            .uri("/v1/chat/completions");
        if let Some(a) = auth {
            b = b.header("authorization", HeaderValue::from_bytes(a).unwrap());
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn bearer_keys() {
        type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);
        let cases: [Case; 8] = [
            (Some(b"Bearer sk-test"), Some(b"sk-test")),
            (Some(b"bearer   sk-test  "), Some(b"sk-test")),
            (Some(b"BEARER sk-test"), Some(b"sk-test")),
            (Some(b"Basic dXNlcjpwYXNz"), None),
            (Some(b"Bearer"), None),
            (Some(b"Bearer    "), None),
            (Some(b"sk-test"), None),
            (None, None),
        ];
        for (auth, want) in cases {
            assert_eq!(bearer_token(&head(auth)).as_deref(), want, "{auth:?}");
        }
        // hashlib.blake2b(b"sk-test", digest_size=16).hexdigest(), as the
        // Python middleware's bearer_token_digest gives it.
        assert_eq!(
            bearer_digest(&head(Some(b"Bearer sk-test"))).unwrap(),
            b"c341dda362e14f03d05c78a3a7c7a93a"
        );
        assert_eq!(bearer_digest(&head(None)), None);
    }

    #[test]
    fn tier_from_a_header() {
        let p = Request::builder()
            .header("x-tollgate-tier", "Enterprise")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(tier_header("x-tollgate-tier")(&p).unwrap(), b"Enterprise");
        assert_eq!(tier_header("x-other")(&p), None);
    }

    #[test]
    fn the_layer_and_its_service_show_themselves() {
        use tower::Layer;
        let limiter = Arc::new(Limiter::new(&crate::Policy::builtin(), 16).unwrap());
        let layer = RateLimitLayer::new(limiter, bearer_digest)
            .tier_by(tier_header("x-tollgate-tier"))
            .cost(2);
        let shown = format!("{layer:?}");
        for want in [
            "Limiter {",
            "tier: By(..)",
            "cost: Fixed(2)",
            "max_body_bytes: 4194304",
        ] {
            assert!(shown.contains(want), "{want}: {shown}");
        }
        let mut svc = layer.layer("inner");
        assert_eq!(*svc.get_ref(), "inner");
        *svc.get_mut() = "other";
        let shown = format!("{svc:?}");
        assert!(
            shown.starts_with("RateLimit { inner: \"other\", config: Config {"),
            "{shown}"
        );
        assert_eq!(svc.into_inner(), "other");
    }
}

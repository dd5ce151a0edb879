//! A `tower` layer for Rust gateways (axum, hyper, anything built on
//! `tower::Service`): the limiter in front of an OpenAI-shaped API, with
//! the answers every other binding gives (`tests/conformance.json`).
//!
//! For each request the layer takes the steps of [`Limiter::answer`] in
//! its order, and holds no answer text or limiting of its own:
//!
//! 1. A method that is not limited ([`method_is_limited`]: only POST) is
//!    passed on untouched and unread, so model listings, health checks
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
//!    [`BodyError::TooLarge`]) as soon as the declared length or the bytes
//!    read pass it: the cap is what bounds the memory a client can make the
//!    gateway hold. A body that fails to arrive (client gone, broken
//!    framing) gets the core's 400 `invalid_json`.
//! 4. The tier (fixed, or from the request head) and the cost (fixed, or
//!    from the head and body bytes) go with the body to
//!    [`Limiter::answer`], which scans for the model, decides and answers.
//! 5. A refusal is answered with the core's status, headers and JSON body.
//!    An admitted request goes to the inner service with its body bytes
//!    re-attached unchanged (as `B::from(Bytes)`, which axum's `Body` and
//!    `Full<Bytes>` implement; trailers are not kept; with hyper alone,
//!    whose `Incoming` has no such conversion, map the request body into
//!    axum's `Body` or your own first), the [`Answer`] and
//!    its [`Decision`] in the request's extensions for the handler, and the
//!    core's headers (the six `x-ratelimit-*`, and `retry-after` in a dry
//!    run) set on the inner service's response, replacing any of the same
//!    name. Response bodies are never buffered, so streamed (SSE) answers
//!    keep streaming.
//!
//! Every response the layer returns carries the request's [`Answer`] in
//! its extensions, for an outer layer that logs or counts outcomes.
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

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};

pub use crate::answer::Options;
use crate::answer::{method_is_limited, Answer, Event, HttpRequest};
use crate::{BodyError, Decision, Error, Limiter, Tier};

/// The default cap on a limited request's body: 4 MiB, well above a long
/// chat prompt, well below what would let clients exhaust memory.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// The body of a response through the layer: the inner service's, or the
/// core's answer.
pub type ResponseBody<B> = Either<B, Full<Bytes>>;

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

/// Limits the requests of the service it wraps ([`RateLimit`]). Cheap to
/// clone: the settings and the limiter are shared by `Arc`.
#[derive(Clone)]
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
        RateLimit {
            inner,
            cfg: self.cfg.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] wraps around `S`.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    cfg: Arc<Config>,
}

impl<S, B, R> tower::Service<Request<B>> for RateLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    R: Body<Data = Bytes> + 'static,
{
    type Response = Response<ResponseBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(limit(self.cfg.clone(), inner, req))
    }
}

async fn limit<S, B, R>(
    cfg: Arc<Config>,
    inner: S,
    req: Request<B>,
) -> Result<Response<ResponseBody<R>>, S::Error>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    B: Body + From<Bytes>,
    R: Body<Data = Bytes>,
{
    let (parts, body) = req.into_parts();
    let limited = method_is_limited(parts.method.as_str().as_bytes());
    let account = if limited { (cfg.account)(&parts) } else { None };
    // An empty id is no API key, as the ASGI middleware takes it.
    let Some(account) = account.filter(|a| !a.is_empty()) else {
        // The core's first two steps (method, account) need no body: its
        // answer comes before one is read, so a pass keeps it streaming.
        let early = HttpRequest {
            method: parts.method.as_str().as_bytes(),
            account: None,
            tier: b"",
            body: b"",
            cost: 0,
        };
        let a = cfg.limiter.answer(&early, (cfg.clock)(), &cfg.options);
        return pass_or_answer(inner, parts, body, a).await;
    };
    let bytes = match read(body, cfg.max_body).await {
        Ok(b) => b,
        Err(e) => {
            // No whole body to pass on, so answered even in a dry run.
            let opts = Options {
                dry_run: false,
                ..cfg.options
            };
            return Ok(answer(Answer::new(
                Event::Failed(&Error::Body(e)),
                b"",
                &opts,
            )));
        }
    };
    let tier: Cow<'_, [u8]> = match &cfg.tier {
        TierOf::Fixed(t) => Cow::Borrowed(t.name().as_bytes()),
        TierOf::By(f) => Cow::Owned(f(&parts).unwrap_or_default()),
    };
    let cost = match &cfg.cost {
        CostOf::Fixed(c) => *c,
        CostOf::By(f) => f(&parts, &bytes),
    };
    let req = HttpRequest {
        method: parts.method.as_str().as_bytes(),
        account: Some(&account),
        tier: &tier,
        body: &bytes,
        cost,
    };
    let a = cfg.limiter.answer(&req, (cfg.clock)(), &cfg.options);
    if !a.passes() {
        return Ok(answer(a));
    }
    pass_or_answer(inner, parts, B::from(bytes), a).await
}

async fn pass_or_answer<S, B, R>(
    mut inner: S,
    mut parts: Parts,
    body: B,
    a: Answer,
) -> Result<Response<ResponseBody<R>>, S::Error>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    R: Body<Data = Bytes>,
{
    if !a.passes() {
        return Ok(answer(a));
    }
    parts.extensions.insert(a);
    if let Some(d) = a.decision() {
        parts.extensions.insert::<Decision>(*d);
    }
    let mut res = inner.call(Request::from_parts(parts, body)).await?;
    set_headers(res.headers_mut(), &a);
    res.extensions_mut().insert(a);
    Ok(res.map(Either::Left))
}

/// The core's answer as a response: its status, headers and JSON body.
fn answer<R>(a: Answer) -> Response<ResponseBody<R>> {
    let mut text = String::with_capacity(320);
    // Writing to a String cannot fail.
    let _ = a.write_body(&mut text);
    let mut res = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *res.status_mut() =
        StatusCode::from_u16(a.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    set_headers(res.headers_mut(), &a);
    res.extensions_mut().insert(a);
    res
}

fn set_headers(h: &mut http::HeaderMap, a: &Answer) {
    let mut buf = [0u8; 20];
    for (name, value) in a.headers() {
        // The core's names are lower-case ASCII and its values digits or
        // fixed text, so neither conversion fails.
        if let Ok(v) = HeaderValue::from_bytes(value.as_bytes(&mut buf)) {
            h.insert(HeaderName::from_static(name), v);
        }
    }
}

/// The whole body, or why not: more than `max` bytes (declared or read),
/// or a body that failed to arrive.
async fn read<B: Body>(body: B, max: usize) -> Result<Bytes, BodyError> {
    if body.size_hint().lower() > max as u64 {
        return Err(BodyError::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(BodyError::NotJson);
        };
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers
        };
        len = len.saturating_add(data.remaining());
        if len > max {
            return Err(BodyError::TooLarge);
        }
        let chunk = data.copy_to_bytes(data.remaining());
        // One chunk (the usual case for a small body) is kept as is.
        match &first {
            None if rest.is_empty() => first = Some(chunk),
            _ => {
                if let Some(f) = first.take() {
                    rest.extend_from_slice(&f);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

/// The key of an `Authorization: Bearer <key>` header (scheme in any case,
/// whitespace trimmed), or `None`. Keys longer than 64 bytes are refused
/// as accounts (401): use [`bearer_digest`] for those.
pub fn bearer_token(parts: &Parts) -> Option<Vec<u8>> {
    bearer(parts).map(<[u8]>::to_vec)
}

/// The account id of a bearer key: [`crate::account_digest`] of it, 32
/// hex digits whatever the key's length (the Python middleware's
/// `bearer_token_digest` gives the same), so raw keys never reach the
/// table; `None` without a bearer key.
pub fn bearer_digest(parts: &Parts) -> Option<Vec<u8>> {
    bearer(parts).map(|k| crate::account_digest(k).into_bytes())
}

fn bearer(parts: &Parts) -> Option<&[u8]> {
    let v = parts
        .headers
        .get(header::AUTHORIZATION)?
        .as_bytes()
        .trim_ascii();
    let sp = v.iter().position(|&c| c == b' ')?;
    let (scheme, key) = (&v[..sp], v[sp + 1..].trim_ascii());
    (scheme.eq_ignore_ascii_case(b"bearer") && !key.is_empty()).then_some(key)
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
    fn bodies_are_read_whole_or_refused() {
        let rt = |f: std::pin::Pin<Box<dyn Future<Output = ()>>>| {
            // A body of ready frames needs no runtime: one poll finishes it.
            let w = std::task::Waker::noop();
            let mut cx = Context::from_waker(w);
            let mut f = f;
            assert!(f.as_mut().poll(&mut cx).is_ready());
        };
        rt(Box::pin(async {
            let b = Full::new(Bytes::from_static(b"{\"model\":\"m\"}"));
            assert_eq!(read(b, 13).await.unwrap(), &b"{\"model\":\"m\"}"[..]);
            let b = Full::new(Bytes::from_static(b"{\"model\":\"m\"}"));
            assert_eq!(read(b, 12).await, Err(BodyError::TooLarge));
            let b = Full::new(Bytes::new());
            assert_eq!(read(b, 0).await.unwrap(), &b""[..]);
        }));
    }
}

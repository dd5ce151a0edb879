//! The service [`RateLimitLayer`](super::RateLimitLayer) wraps around the
//! inner one: each request's steps, in the core's order.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;

use super::settle::OnEnd;
use super::{blocking, Config, CostOf, TierOf};
use crate::answer::{method_is_limited, Answer, Event, HttpRequest, Options};
use crate::{BodyError, Decision, Error};

pub use super::settle::ResponseBody;

/// The service [`RateLimitLayer`](super::RateLimitLayer) wraps around `S`.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    cfg: Arc<Config>,
}

impl<S> RateLimit<S> {
    pub(super) fn new(inner: S, cfg: Arc<Config>) -> RateLimit<S> {
        RateLimit { inner, cfg }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, without the limiting.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("config", &self.cfg)
            .finish()
    }
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

/// A request for the core, owning its bytes, so that a decision that waits
/// can be moved to a thread of its own.
struct Owned {
    method: Method,
    account: Option<Vec<u8>>,
    tier: Cow<'static, [u8]>,
    body: Bytes,
    cost: u32,
}

impl Owned {
    fn as_http(&self) -> HttpRequest<'_> {
        HttpRequest {
            method: self.method.as_str().as_bytes(),
            account: self.account.as_deref(),
            tier: &self.tier,
            body: &self.body,
            cost: self.cost,
        }
    }
}

/// The core's answer to `req`, and the guard of what it took (a token
/// reservation, an in-flight unit), made with the decision so that nothing
/// taken is lost however the request goes on. Decided on the caller's
/// thread when it needs no wait: always on a local table, and on a limiter
/// joined to the quota store whenever the units it holds (or an open
/// breaker) settle it. A decision that needs a round trip to the store is
/// pending there, charging nothing, and is made again on a thread that may
/// block (for at most the store's deadline), so the async runtime never
/// waits for Redis; its guard is made on that thread too, so a request
/// whose client went away meanwhile ends as cut when the unread result is
/// dropped.
async fn decide(cfg: &Arc<Config>, req: Owned, now_ms: u64) -> (Answer, Option<Box<OnEnd>>) {
    if let Some(a) = cfg.limiter.try_answer(&req.as_http(), now_ms, &cfg.options) {
        return (a, OnEnd::of(cfg, a.decision()));
    }
    let c = cfg.clone();
    let waited = blocking::run(move || {
        let a = c.limiter.answer(&req.as_http(), now_ms, &c.options);
        (a, OnEnd::of(&c, a.decision()))
    })
    .await;
    waited.unwrap_or_else(|| {
        // Only if the limiter panicked: answered as its failure (500).
        let e = Error::Invalid("the decision panicked");
        (Answer::new(Event::Failed(&e), b"", &cfg.options), None)
    })
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
        let early = Owned {
            method: parts.method.clone(),
            account: None,
            tier: Cow::Borrowed(b""),
            body: Bytes::new(),
            cost: 0,
        };
        let (a, end) = decide(&cfg, early, (cfg.clock)()).await;
        return pass_or_answer(inner, parts, body, a, end).await;
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
    let tier = match &cfg.tier {
        TierOf::Fixed(t) => Cow::Borrowed(t.name().as_bytes()),
        TierOf::By(f) => Cow::Owned(f(&parts).unwrap_or_default()),
    };
    let cost = match &cfg.cost {
        CostOf::Fixed(c) => *c,
        CostOf::By(f) => f(&parts, &bytes),
    };
    let req = Owned {
        method: parts.method.clone(),
        account: Some(account),
        tier,
        // Shared, not copied: the same bytes go on to the inner service.
        body: bytes.clone(),
        cost,
    };
    // Decided at the time the whole body is in (a pending decision too).
    let (a, end) = decide(&cfg, req, (cfg.clock)()).await;
    pass_or_answer(inner, parts, B::from(bytes), a, end).await
}

/// Calls the inner service with an answer that passes, else answers. `end`
/// goes with the response: its body settles and releases when it ends.
/// Until there is one, dropping `end` does it, as cut: the inner service
/// failed (`?` below), or this future was dropped (the client went away
/// first, and hyper dropped the request).
async fn pass_or_answer<S, B, R>(
    mut inner: S,
    mut parts: Parts,
    body: B,
    a: Answer,
    end: Option<Box<OnEnd>>,
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
    Ok(match end {
        None => res.map(ResponseBody::inner),
        Some(mut e) => {
            e.head(res.status(), res.headers());
            res.map(|b| ResponseBody::guarded(b, e))
        }
    })
}

/// The core's answer as a response: its status, headers and JSON body.
fn answer<R>(a: Answer) -> Response<ResponseBody<R>> {
    let mut text = String::with_capacity(320);
    // Writing to a String cannot fail.
    let _ = a.write_body(&mut text);
    let mut res = Response::new(ResponseBody::answer(Bytes::from(text)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

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

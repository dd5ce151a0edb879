//! The response body through the layer, and the settling of a request's
//! token reservation as that body passes.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use super::Config;
use crate::usage::{Framing, UsageScanner};
use crate::{Ending, Ticket};

/// The body of a response through [`RateLimit`](super::RateLimit): the
/// inner service's body, passed on frame by frame as it comes (never
/// buffered, so SSE keeps streaming), or the core's answer (a refusal's
/// JSON).
///
/// When the request reserved tokens (a key with token limits), this body
/// also settles the reservation, once, with
/// [`Limiter::settle`](crate::Limiter::settle): it reads the usage from
/// the data frames as they pass ([`UsageScanner`], for an
/// `application/json` or `text/event-stream` response without
/// `Content-Encoding`), and settles when the inner body ends (its usage;
/// else by [`Ending::without_usage`]), or as cut when the inner body fails
/// or this body is dropped before its end (client gone): docs/tokens.md.
pub struct ResponseBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    /// No reservation: the inner body as it is.
    Inner(B),
    /// The inner body, and the reservation it settles.
    Settling {
        body: B,
        settle: Box<Settle>,
        /// `B::is_end_stream`, for `Drop` (which cannot bound `B`).
        ended: fn(&B) -> bool,
    },
    /// The core's answer.
    Answer(Full<Bytes>),
}

impl<B> ResponseBody<B> {
    pub(super) fn inner(body: B) -> ResponseBody<B> {
        ResponseBody {
            kind: Kind::Inner(body),
        }
    }

    pub(super) fn answer(text: Bytes) -> ResponseBody<B> {
        ResponseBody {
            kind: Kind::Answer(Full::new(text)),
        }
    }

    pub(super) fn settling(body: B, settle: Box<Settle>) -> ResponseBody<B>
    where
        B: Body,
    {
        ResponseBody {
            kind: Kind::Settling {
                body,
                settle,
                ended: <B as Body>::is_end_stream,
            },
        }
    }

    /// Whether this body settles a token reservation (one still unsettled
    /// or already settled).
    pub fn settles_tokens(&self) -> bool {
        matches!(self.kind, Kind::Settling { .. })
    }
}

enum Proj<'a, B> {
    Inner(Pin<&'a mut B>),
    Settling(Pin<&'a mut B>, &'a mut Settle),
    Answer(Pin<&'a mut Full<Bytes>>),
}

impl<B> ResponseBody<B> {
    fn project(self: Pin<&mut Self>) -> Proj<'_, B> {
        // SAFETY: the inner bodies are structurally pinned: they are never
        // moved out of a pinned `ResponseBody` (nothing here replaces
        // `kind`, and `Drop` only reads the body through `&`), the type
        // has no `Unpin` impl of its own (it is `Unpin` only when `B` is)
        // and is not `repr(packed)`. `Settle` is not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        match &mut this.kind {
            // SAFETY: as above.
            Kind::Inner(b) => Proj::Inner(unsafe { Pin::new_unchecked(b) }),
            Kind::Settling { body, settle, .. } => {
                // SAFETY: as above.
                Proj::Settling(unsafe { Pin::new_unchecked(body) }, settle)
            }
            // SAFETY: as above.
            Kind::Answer(b) => Proj::Answer(unsafe { Pin::new_unchecked(b) }),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            Proj::Inner(b) => b.poll_frame(cx),
            Proj::Answer(b) => match b.poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                // Full never fails.
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Proj::Settling(mut b, settle) => {
                let polled = b.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            settle.feed(data);
                        }
                        // A body that knows it is done may not be polled
                        // again: settled now, as complete.
                        if b.is_end_stream() {
                            settle.finish(false);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => settle.finish(true),
                    Poll::Ready(None) => settle.finish(false),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner(b) | Kind::Settling { body: b, .. } => b.is_end_stream(),
            Kind::Answer(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner(b) | Kind::Settling { body: b, .. } => b.size_hint(),
            Kind::Answer(b) => b.size_hint(),
        }
    }
}

impl<B> Drop for ResponseBody<B> {
    fn drop(&mut self) {
        if let Kind::Settling {
            body,
            settle,
            ended,
        } = &mut self.kind
        {
            // A server may drop a body that says it has ended without
            // polling it to `None`: that is its end, not a cut.
            let cut = !ended(body);
            settle.finish(cut);
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner(_) => "Inner",
            Kind::Settling { .. } => "Settling",
            Kind::Answer(_) => "Answer",
        };
        f.debug_struct("ResponseBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// A reservation to settle once, and how its response went so far. Made
/// before the inner service is called, so a response that never comes
/// (the service failed, or the request's future was dropped) settles as
/// cut when this is dropped.
pub(super) struct Settle {
    cfg: Arc<Config>,
    ticket: Option<Ticket>,
    status: u16,
    scanner: Option<UsageScanner>,
}

impl Settle {
    pub(super) fn new(cfg: Arc<Config>, ticket: Ticket) -> Box<Settle> {
        Box::new(Settle {
            cfg,
            ticket: Some(ticket),
            status: 0,
            scanner: None,
        })
    }

    /// The response head has come: its status, and a scanner when its
    /// body is one to read usage from (JSON or SSE, not encoded).
    pub(super) fn head(&mut self, status: StatusCode, headers: &HeaderMap) {
        self.status = status.as_u16();
        let encoded = headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        self.scanner = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| Framing::from_content_type(v.as_bytes()))
            .filter(|_| !encoded)
            .map(UsageScanner::new);
    }

    fn feed(&mut self, data: &[u8]) {
        if self.ticket.is_none() {
            return;
        }
        if let Some(s) = &mut self.scanner {
            // An error is sticky in the scanner: the response then ends
            // as one without usage.
            let _ = s.feed(data);
        }
    }

    /// Settles, the first time only; `cut` when the response did not end.
    pub(super) fn finish(&mut self, cut: bool) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let ending = match &mut self.scanner {
            Some(s) => s.ending(self.status, cut),
            None => Ending::without_usage(self.status, cut),
        };
        // It cannot fail for a ticket of this limiter, and a failure must
        // not break the response: ignored.
        let _ = self.cfg.limiter.settle(ticket, ending, (self.cfg.clock)());
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.finish(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limiter, Policy, Request, Tier};
    use http::HeaderValue;
    use http_body_util::BodyExt;
    use std::future::Future;

    const NOW: u64 = 1_796_126_400_000;
    const POLICY: &str = "[models]\nm = { region = \"EU\" }\n[tiers.developer]\n\
                          m = { rpm = 100, rpd = 1000, tpm = 5000, tpd = 50000 }\n";

    fn setup() -> (Arc<Config>, Arc<Limiter>) {
        setup_with("")
    }

    fn setup_with(tokens: &str) -> (Arc<Config>, Arc<Limiter>) {
        let policy = Policy::parse(&format!("{POLICY}{tokens}"), "p").unwrap();
        let limiter = Arc::new(Limiter::new(&policy, 16).unwrap());
        let layer = super::super::RateLimitLayer::new(limiter.clone(), super::super::bearer_token)
            .clock(|| NOW);
        (layer.cfg, limiter)
    }

    fn reserve(l: &Limiter, tokens: u32) -> Ticket {
        let r = Request::new(b"acct", b"m", Tier::Developer).tokens(tokens);
        l.check(&r, NOW).unwrap().tokens.unwrap().ticket.unwrap()
    }

    fn charged(l: &Limiter) -> u64 {
        let peek = Request::new(b"acct", b"m", Tier::Developer).cost(0);
        5000 - l
            .check(&peek, NOW)
            .unwrap()
            .tokens
            .unwrap()
            .minute
            .remaining as u64
    }

    fn head(status: u16, pairs: &[(&'static str, &'static str)]) -> (StatusCode, HeaderMap) {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_static(v));
        }
        (StatusCode::from_u16(status).unwrap(), h)
    }

    fn body(
        cfg: &Arc<Config>,
        ticket: Ticket,
        status: u16,
        headers: &[(&'static str, &'static str)],
        text: &'static str,
    ) -> ResponseBody<Full<Bytes>> {
        let mut s = Settle::new(cfg.clone(), ticket);
        let (st, h) = head(status, headers);
        s.head(st, &h);
        ResponseBody::settling(Full::new(Bytes::from_static(text.as_bytes())), s)
    }

    /// Polls `b` to its end, as a server does (ready frames need no
    /// runtime).
    fn drain(b: ResponseBody<Full<Bytes>>) -> Bytes {
        let mut f = std::pin::pin!(b.collect());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(c)) => c.to_bytes(),
            _ => panic!("a full body is ready"),
        }
    }

    const JSON: &[(&str, &str)] = &[("content-type", "application/json")];
    const USAGE: &str = r#"{"usage":{"prompt_tokens":1,"completion_tokens":9,"total_tokens":10}}"#;

    #[test]
    fn a_body_read_to_its_end_settles_to_its_usage_once() {
        let (cfg, l) = setup();
        let b = body(&cfg, reserve(&l, 300), 200, JSON, USAGE);
        assert!(b.settles_tokens());
        assert_eq!(charged(&l), 300);
        assert_eq!(drain(b), USAGE.as_bytes());
        // Settled when its last frame passed, and not again when dropped.
        assert_eq!(charged(&l), 10);
    }

    #[test]
    fn an_encoded_or_unknown_body_is_not_read() {
        let (cfg, l) = setup();
        let gz = &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ];
        drain(body(&cfg, reserve(&l, 300), 200, gz, USAGE));
        assert_eq!(charged(&l), 300, "a 2xx without usage keeps it");
        drain(body(&cfg, reserve(&l, 200), 200, &[], USAGE));
        assert_eq!(charged(&l), 500, "no content-type: not read");
        drain(body(&cfg, reserve(&l, 100), 500, gz, USAGE));
        assert_eq!(charged(&l), 500, "a failure without usage gives it back");
    }

    #[test]
    fn a_body_dropped_unread_is_cut_unless_it_had_ended() {
        let (cfg, l) = setup();
        // A 500 with bytes left: cut (kept), not failed (given back).
        drop(body(&cfg, reserve(&l, 300), 500, JSON, USAGE));
        assert_eq!(charged(&l), 300);
        // A 500 whose empty body had ended (a server need not poll it):
        // failed, given back.
        drop(body(&cfg, reserve(&l, 200), 500, JSON, ""));
        assert_eq!(charged(&l), 300);
    }

    #[test]
    fn a_response_that_never_came_is_cut() {
        let (cfg, l) = setup_with("[tokens]\non_cut = \"release\"\n");
        drop(Settle::new(cfg, reserve(&l, 300)));
        assert_eq!(charged(&l), 0, "cut, released by on_cut");
        let (cfg, l) = setup();
        drop(Settle::new(cfg, reserve(&l, 300)));
        assert_eq!(charged(&l), 300, "cut, kept by default");
    }

    #[test]
    fn bodies_without_a_reservation_pass_as_they_are() {
        let b: ResponseBody<Full<Bytes>> = ResponseBody::inner(Full::new(Bytes::from_static(b"x")));
        assert!(!b.settles_tokens());
        assert_eq!(format!("{b:?}"), "ResponseBody { kind: \"Inner\", .. }");
        assert_eq!(drain(b), &b"x"[..]);
        let a: ResponseBody<Full<Bytes>> = ResponseBody::answer(Bytes::from_static(b"{}"));
        assert_eq!(a.size_hint().exact(), Some(2));
        assert_eq!(drain(a), &b"{}"[..]);
    }
}

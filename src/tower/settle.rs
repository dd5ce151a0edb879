//! The response body through the layer, and what is done once when the
//! response ends, however it ends: its token reservation settled, its
//! in-flight unit released ([`OnEnd`]).

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
use crate::{Admission, Decision, Ending, Ticket};

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
///
/// When the request took an in-flight unit (a key with `max_in_flight`),
/// this body releases it, once, with
/// [`Limiter::release`](crate::Limiter::release), at the same moment and
/// with the same [`Ending`]: when the inner body ends (completed), or
/// fails or is dropped before its end (cut, counted aborted).
pub struct ResponseBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    /// No reservation: the inner body as it is.
    Inner(B),
    /// The inner body, and what its end settles and releases.
    Guarded {
        body: B,
        end: Box<OnEnd>,
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

    pub(super) fn guarded(body: B, mut end: Box<OnEnd>) -> ResponseBody<B>
    where
        B: Body,
    {
        // hyper writes a body of known size and stops there: what it sends
        // as the length is its size hint's, else the content-length's.
        end.length = body.size_hint().exact().or(end.length);
        ResponseBody {
            kind: Kind::Guarded {
                body,
                end,
                ended: <B as Body>::is_end_stream,
            },
        }
    }

    /// Whether this body settles a token reservation (one still unsettled
    /// or already settled).
    pub fn settles_tokens(&self) -> bool {
        matches!(&self.kind, Kind::Guarded { end, .. } if end.tokens)
    }
}

enum Proj<'a, B> {
    Inner(Pin<&'a mut B>),
    Guarded(Pin<&'a mut B>, &'a mut OnEnd),
    Answer(Pin<&'a mut Full<Bytes>>),
}

impl<B> ResponseBody<B> {
    fn project(self: Pin<&mut Self>) -> Proj<'_, B> {
        // SAFETY: the inner bodies are structurally pinned: they are never
        // moved out of a pinned `ResponseBody` (nothing here replaces
        // `kind`, and `Drop` only reads the body through `&`), the type
        // has no `Unpin` impl of its own (it is `Unpin` only when `B` is)
        // and is not `repr(packed)`. `OnEnd` is not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        match &mut this.kind {
            // SAFETY: as above.
            Kind::Inner(b) => Proj::Inner(unsafe { Pin::new_unchecked(b) }),
            Kind::Guarded { body, end, .. } => {
                // SAFETY: as above.
                Proj::Guarded(unsafe { Pin::new_unchecked(body) }, end)
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
            Proj::Guarded(mut b, end) => {
                let polled = b.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            end.feed(data);
                        }
                        // A body that knows it is done, or has passed the
                        // length its head declared, may not be polled
                        // again: ended now, not cut.
                        if b.is_end_stream() || end.passed_whole() {
                            end.finish(false);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => end.finish(true),
                    Poll::Ready(None) => end.finish(false),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner(b) | Kind::Guarded { body: b, .. } => b.is_end_stream(),
            Kind::Answer(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner(b) | Kind::Guarded { body: b, .. } => b.size_hint(),
            Kind::Answer(b) => b.size_hint(),
        }
    }
}

impl<B> Drop for ResponseBody<B> {
    fn drop(&mut self) {
        if let Kind::Guarded { body, end, ended } = &mut self.kind {
            // A server may drop a body that says it has ended, or whose
            // declared length it has sent, without polling it to `None`:
            // that is its end, not a cut.
            let cut = !ended(body) && !end.passed_whole();
            end.finish(cut);
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner(_) => "Inner",
            Kind::Guarded { .. } => "Guarded",
            Kind::Answer(_) => "Answer",
        };
        f.debug_struct("ResponseBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// What is done once when a request's response ends: its token
/// reservation settled and its in-flight unit released, with the one
/// [`Ending`] the response had, whichever way it ended. Made as soon as the
/// decision is (before the inner service is called), so a response that
/// never comes (the service failed, or the request's future was dropped:
/// the client went away) ends as cut when this is dropped.
pub(super) struct OnEnd {
    cfg: Arc<Config>,
    ticket: Option<Ticket>,
    admission: Option<Admission>,
    /// It had a ticket (settled or not): [`ResponseBody::settles_tokens`].
    tokens: bool,
    status: u16,
    scanner: Option<UsageScanner>,
    /// The body's declared length, if any, and the data bytes passed.
    length: Option<u64>,
    passed: u64,
}

impl OnEnd {
    pub(super) fn new(
        cfg: Arc<Config>,
        ticket: Option<Ticket>,
        admission: Option<Admission>,
    ) -> Box<OnEnd> {
        Box::new(OnEnd {
            cfg,
            ticket,
            admission,
            tokens: ticket.is_some(),
            status: 0,
            scanner: None,
            length: None,
            passed: 0,
        })
    }

    /// The guard of what an admitted decision took (a reservation, an
    /// in-flight unit), or `None` when it took neither: such a request
    /// pays for no guard.
    pub(super) fn of(cfg: &Arc<Config>, d: Option<&Decision>) -> Option<Box<OnEnd>> {
        let d = d?;
        let ticket = d.tokens.and_then(|t| t.ticket);
        let admission = d.in_flight.and_then(|f| f.admission);
        (ticket.is_some() || admission.is_some())
            .then(|| OnEnd::new(cfg.clone(), ticket, admission))
    }

    /// The response head has come: its status, and, to settle tokens, a
    /// scanner when its body is one to read usage from (JSON or SSE, not
    /// encoded).
    pub(super) fn head(&mut self, status: StatusCode, headers: &HeaderMap) {
        self.status = status.as_u16();
        self.length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        if self.ticket.is_none() {
            return;
        }
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
        self.passed += data.len() as u64;
        if self.ticket.is_none() {
            return;
        }
        if let Some(s) = &mut self.scanner {
            // An error is sticky in the scanner: the response then ends
            // as one without usage.
            let _ = s.feed(data);
        }
    }

    /// Every byte of the body's declared length has passed.
    fn passed_whole(&self) -> bool {
        self.length.is_some_and(|n| self.passed >= n)
    }

    /// Settles and releases, the first time only; `cut` when the response
    /// did not end. Neither waits (a release is a few atomics on the
    /// table), so this may run on the async runtime, in `Drop` too.
    pub(super) fn finish(&mut self, cut: bool) {
        if self.ticket.is_none() && self.admission.is_none() {
            return;
        }
        let ending = match &mut self.scanner {
            Some(s) => s.ending(self.status, cut),
            None => Ending::without_usage(self.status, cut),
        };
        let limiter = &self.cfg.limiter;
        // Neither can fail for what this limiter gave, and a failure must
        // not break the response: ignored. Settled first, so the request
        // the released unit admits already sees the usage.
        if let Some(ticket) = self.ticket.take() {
            let _ = limiter.settle(ticket, ending, (self.cfg.clock)());
        }
        if let Some(admission) = self.admission.take() {
            let _ = limiter.release(admission, ending);
        }
    }
}

impl Drop for OnEnd {
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
    // `g` has an in-flight limit, `f` tokens too: one guard for both.
    const POLICY: &str = "[models]\nm = { region = \"EU\" }\nf = { region = \"EU\" }\n\
                          g = { region = \"EU\" }\n[tiers.developer]\n\
                          m = { rpm = 100, rpd = 1000, tpm = 5000, tpd = 50000 }\n\
                          f = { rpm = 100, rpd = 1000, tpm = 5000, tpd = 50000, max_in_flight = 2 }\n\
                          g = { rpm = 100, rpd = 1000, max_in_flight = 2 }\n";

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
        charged_on(l, b"m")
    }

    fn charged_on(l: &Limiter, model: &[u8]) -> u64 {
        let peek = Request::new(b"acct", model, Tier::Developer).cost(0);
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
        let mut s = OnEnd::new(cfg.clone(), Some(ticket), None);
        let (st, h) = head(status, headers);
        s.head(st, &h);
        ResponseBody::guarded(Full::new(Bytes::from_static(text.as_bytes())), s)
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
        drop(OnEnd::new(cfg, Some(reserve(&l, 300)), None));
        assert_eq!(charged(&l), 0, "cut, released by on_cut");
        let (cfg, l) = setup();
        drop(OnEnd::new(cfg, Some(reserve(&l, 300)), None));
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

    /// An admission on `f` (reserving 300 tokens) or `g`, as the layer's
    /// decision hands it over.
    fn admit(cfg: &Arc<Config>, l: &Limiter, model: &[u8]) -> Box<OnEnd> {
        let mut r = Request::new(b"acct", model, Tier::Developer);
        if model == b"f" {
            r = r.tokens(300);
        }
        let d = l.check(&r, NOW).unwrap();
        assert!(d.allowed);
        OnEnd::of(cfg, Some(&d)).expect("it took a unit")
    }

    /// Requests running, and the releases counted (completed,
    /// aborted).
    fn units(l: &Limiter) -> (u64, u64, u64) {
        let s = l.stats(NOW).in_flight.unwrap();
        (s.in_use, s.completed, s.aborted)
    }

    fn response(mut end: Box<OnEnd>, status: u16, text: &'static str) -> ResponseBody<Full<Bytes>> {
        let (st, h) = head(status, JSON);
        end.head(st, &h);
        ResponseBody::guarded(Full::new(Bytes::from_static(text.as_bytes())), end)
    }

    #[test]
    fn an_admission_is_released_once_however_its_response_ends() {
        let (cfg, l) = setup();
        let (a, b) = (admit(&cfg, &l, b"g"), admit(&cfg, &l, b"g"));
        assert_eq!(units(&l), (2, 0, 0));
        // Read to its end: completed, when its last frame passed; the drop
        // after it releases nothing more.
        let body = response(a, 200, "{}");
        assert!(!body.settles_tokens(), "no reservation here");
        drain(body);
        assert_eq!(units(&l), (1, 1, 0));
        // A failure read to its end is completed too (it ended).
        drain(response(b, 500, "{}"));
        assert_eq!(units(&l), (0, 2, 0));
        // Dropped with bytes left (the client went away): aborted.
        drop(response(admit(&cfg, &l, b"g"), 200, USAGE));
        assert_eq!(units(&l), (0, 2, 1));
        // An empty body that had ended, dropped unpolled: its end.
        drop(response(admit(&cfg, &l, b"g"), 204, ""));
        assert_eq!(units(&l), (0, 3, 1));
        // No response at all (the service failed, the future dropped).
        drop(admit(&cfg, &l, b"g"));
        assert_eq!(units(&l), (0, 3, 2));
    }

    #[test]
    fn one_guard_settles_the_tokens_and_releases_the_unit() {
        let (cfg, l) = setup();
        let body = response(admit(&cfg, &l, b"f"), 200, USAGE);
        assert!(body.settles_tokens());
        assert_eq!((charged_on(&l, b"f"), units(&l)), (300, (1, 0, 0)));
        drain(body);
        assert_eq!((charged_on(&l, b"f"), units(&l)), (10, (0, 1, 0)));
        drop(admit(&cfg, &l, b"f"));
        assert_eq!((charged_on(&l, b"f"), units(&l)), (310, (0, 1, 1)));
    }

    #[test]
    fn a_decision_that_took_nothing_has_no_guard() {
        let (cfg, l) = setup();
        let peek = Request::new(b"acct", b"g", Tier::Developer).cost(0);
        assert!(OnEnd::of(&cfg, Some(&l.check(&peek, NOW).unwrap())).is_none());
        assert!(OnEnd::of(&cfg, None).is_none());
    }

    /// A body of known size that never says it has ended (`is_end_stream`
    /// left at its default), as hyper stops writing at its length.
    struct Sized(Option<Bytes>);

    impl Body for Sized {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(2)
        }
    }

    #[test]
    fn a_body_dropped_once_its_declared_length_passed_has_ended() {
        let (cfg, l) = setup();
        let sized =
            |end: Box<OnEnd>| ResponseBody::guarded(Sized(Some(Bytes::from_static(b"{}"))), end);
        // Dropped unread: cut.
        drop(sized(admit(&cfg, &l, b"g")));
        assert_eq!(units(&l), (0, 0, 1));
        // Its two bytes passed, then dropped unpolled, as hyper does:
        // ended (released as they passed).
        let mut b = std::pin::pin!(sized(admit(&cfg, &l, b"g")));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            b.as_mut().poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert_eq!(units(&l), (0, 1, 1));
    }
}

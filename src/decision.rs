//! What a caller tells its client: the six `x-ratelimit-*` headers, a 429's
//! `Retry-After` and OpenAI-shaped error body, or the IETF draft fields.
//! Rendering writes into a caller's buffer and allocates nothing.

use std::fmt::{self, Write};

use crate::policy::{Limits, TokenLimits};
use crate::slot::{Both, LimitedBy, Outcome};
use crate::window::{seconds_until, Instant};

/// One window as a client sees it, in its unit (requests or tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The most units the window allows.
    pub limit: u32,
    /// Units left in it after this decision.
    pub remaining: u32,
    /// Epoch second at which it resets.
    pub reset: u64,
}

/// The answer for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request was admitted (and counted).
    pub allowed: bool,
    /// The window that refused (the day, whenever the day is exhausted).
    pub limited_by: LimitedBy,
    /// The minute window after this decision.
    pub minute: Window,
    /// The day window after this decision.
    pub day: Window,
    /// Whole seconds (rounded up) until the refusing window resets; 0 when
    /// allowed.
    pub retry_after: u32,
    /// The token windows, when the key has a token limit.
    pub tokens: Option<TokenWindows>,
    /// The key's requests in flight, when it has an in-flight limit.
    pub in_flight: Option<InFlight>,
}

/// A key's requests running at once, as one decision left them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// The most that may run at once (`max_in_flight`).
    pub limit: u32,
    /// Running now, this request included when admitted.
    pub in_use: u32,
    /// What to release once the request has ended, whatever ended it
    /// ([`Limiter::release`](crate::Limiter::release)); `None` when not
    /// admitted, or a peek.
    pub admission: Option<Admission>,
}

/// One admitted request's in-flight unit, released exactly once with
/// [`Limiter::release`](crate::Limiter::release); a second release changes
/// nothing and is an error. Plain data (one word: [`Admission::to_raw`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Admission {
    pub(crate) idx: u32,
    pub(crate) seq: u32,
}

impl Admission {
    /// The admission as one word.
    pub fn to_raw(self) -> u64 {
        self.idx as u64 | (self.seq as u64) << 32
    }

    /// An admission from [`Admission::to_raw`]'s word; `None` for 0.
    pub fn from_raw(w: u64) -> Option<Admission> {
        let a = Admission {
            idx: w as u32,
            seq: (w >> 32) as u32,
        };
        (a.seq != 0).then_some(a)
    }
}

/// A key's token windows as one decision left them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenWindows {
    /// Tokens per minute (TPM): limit, left after this decision's
    /// reservation, reset.
    pub minute: Window,
    /// Tokens per day (TPD).
    pub day: Window,
    /// Tokens this decision reserved (0 when refused or a peek).
    pub reserved: u32,
    /// What to settle once the response's usage is known
    /// ([`Limiter::settle`](crate::Limiter::settle)); `None` when nothing
    /// was reserved (refused, or a peek).
    pub ticket: Option<Ticket>,
}

/// A reservation of tokens in one key's windows, to settle exactly once
/// with [`Limiter::settle`](crate::Limiter::settle) on the limiter (or a
/// sibling sharing its table) that made it. Plain data, so it crosses
/// threads, the C ABI (two words: [`Ticket::to_raw`]) and async tasks;
/// settling it twice gives its tokens back twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub(crate) slot: u32,
    pub(crate) gen: u16,
    pub(crate) minute: u16,
    pub(crate) day: u32,
    pub(crate) reserved: u32,
    /// On a table of quota leases: reserved in this host's own share while
    /// the store was away (the down policy `local`), so settling also
    /// corrects that share's count. Bit 63 of the first word.
    pub(crate) local: bool,
}

impl Ticket {
    /// Tokens reserved.
    pub fn reserved(&self) -> u32 {
        self.reserved
    }

    /// The windows the reservation was charged in.
    pub(crate) fn at(&self) -> Instant {
        Instant {
            day: self.day,
            minute: self.minute as u32,
        }
    }

    /// The ticket as two words (the C ABI's `tg_ticket`).
    pub fn to_raw(self) -> [u64; 2] {
        [
            self.slot as u64
                | (self.gen as u64) << 32
                | (self.minute as u64) << 48
                | (self.local as u64) << 63,
            self.day as u64 | (self.reserved as u64) << 32,
        ]
    }

    /// A ticket from [`Ticket::to_raw`]'s words; `None` if they cannot be
    /// one (an all-zero pair, as a zero-initialised C struct has, is none).
    pub fn from_raw(w: [u64; 2]) -> Option<Ticket> {
        let t = Ticket {
            slot: w[0] as u32,
            gen: (w[0] >> 32) as u16,
            minute: (w[0] >> 48) as u16 & 0x7fff,
            day: w[1] as u32,
            reserved: (w[1] >> 32) as u32,
            local: w[0] >> 63 == 1,
        };
        (t.day != 0 && (t.minute as u32) < crate::window::MINUTES_PER_DAY).then_some(t)
    }
}

impl Decision {
    #[inline(always)]
    pub(crate) fn new(o: Outcome, limits: Limits, now_ms: u64) -> Decision {
        let minute = Window {
            limit: limits.rpm,
            remaining: limits.rpm.saturating_sub(o.minute_count),
            reset: o.at.minute_reset(),
        };
        let day = Window {
            limit: limits.rpd,
            remaining: limits.rpd.saturating_sub(o.day_count),
            reset: o.at.day_reset(),
        };
        let retry_after = match o.limited_by {
            LimitedBy::None => 0,
            LimitedBy::Day => seconds_until(now_ms, day.reset),
            _ => seconds_until(now_ms, minute.reset),
        };
        Decision {
            allowed: o.allowed,
            limited_by: o.limited_by,
            minute,
            day,
            retry_after,
            tokens: None,
            in_flight: None,
        }
    }

    /// A decision on a key with token limits (`slot::decide_tokens`).
    pub(crate) fn with_tokens(
        both: &Both,
        limits: Limits,
        token_limits: TokenLimits,
        reserved: u32,
        charged: bool,
        now_ms: u64,
    ) -> Decision {
        let t = &both.tokens;
        let mut d = Decision::new(both.requests, limits, now_ms);
        // Both units' windows are nearly always dated alike: their resets
        // are then the requests' own.
        let (minute_reset, day_reset) = if t.at == both.requests.at {
            (d.minute.reset, d.day.reset)
        } else {
            (t.at.minute_reset(), t.at.day_reset())
        };
        let minute = Window {
            limit: token_limits.tpm,
            remaining: token_limits.tpm.saturating_sub(t.minute_count),
            reset: minute_reset,
        };
        let day = Window {
            limit: token_limits.tpd,
            remaining: token_limits.tpd.saturating_sub(t.day_count),
            reset: day_reset,
        };
        // A day refusal names the day whichever unit it is in (waiting
        // for a minute would not help); between equals, requests first.
        let r = both.requests.limited_by;
        let limited_by = if d.allowed {
            LimitedBy::None
        } else {
            match (r, t.limited_by) {
                (LimitedBy::Day, _) => LimitedBy::Day,
                (_, LimitedBy::Day) => LimitedBy::TokensDay,
                (LimitedBy::Minute, _) => LimitedBy::Minute,
                (_, LimitedBy::Minute) => LimitedBy::TokensMinute,
                _ => LimitedBy::None,
            }
        };
        d.limited_by = limited_by;
        d.retry_after = match limited_by {
            LimitedBy::TokensDay => seconds_until(now_ms, day.reset),
            LimitedBy::TokensMinute => seconds_until(now_ms, minute.reset),
            _ => d.retry_after,
        };
        let ticket = match both.at {
            Some((slot, gen)) if d.allowed && charged => Some(Ticket {
                slot: slot as u32,
                gen,
                minute: t.at.minute as u16,
                day: t.at.day,
                reserved,
                local: false,
            }),
            _ => None,
        };
        d.tokens = Some(TokenWindows {
            minute,
            day,
            reserved: if ticket.is_some() { reserved } else { 0 },
            ticket,
        });
        d
    }

    /// The six policy headers (the six token headers too when the key has
    /// a token limit, and `retry-after` when refused), one
    /// `name: value\r\n` line each.
    pub fn write_headers(&self, out: &mut impl Write) -> fmt::Result {
        for (name, v) in self.all_header_pairs() {
            out.write_str(name)?;
            out.write_str(": ")?;
            write_u64(out, v)?;
            out.write_str("\r\n")?;
        }
        Ok(())
    }

    /// Every header of the decision, in the order every binding answers
    /// in: the six request headers, the six token headers when the key has
    /// a token limit, then `retry-after` when refused.
    pub fn all_header_pairs(&self) -> impl Iterator<Item = (&'static str, u64)> {
        let [requests @ .., retry] = self.header_pairs();
        let tokens = self.token_header_pairs().into_iter().flatten();
        let in_flight = self.in_flight_header_pairs().into_iter().flatten();
        let more = tokens.chain(in_flight).map(|(n, v)| (n, Some(v)));
        requests
            .into_iter()
            .chain(more)
            .chain([retry])
            .filter_map(|(n, v)| Some((n, v?)))
    }

    /// `x-ratelimit-limit-in-flight` and `x-ratelimit-in-flight` (running
    /// now, this request included when admitted), when the key has an
    /// in-flight limit.
    pub fn in_flight_header_pairs(&self) -> Option<[(&'static str, u64); 2]> {
        let f = self.in_flight.as_ref()?;
        Some([
            ("x-ratelimit-limit-in-flight", f.limit as u64),
            ("x-ratelimit-in-flight", f.in_use as u64),
        ])
    }

    /// Header names and values without formatting, for bindings that set
    /// headers one by one. The last (`retry-after`) is `None` when allowed.
    pub fn header_pairs(&self) -> [(&'static str, Option<u64>); 7] {
        [
            ("x-ratelimit-limit-requests", Some(self.minute.limit as u64)),
            (
                "x-ratelimit-remaining-requests",
                Some(self.minute.remaining as u64),
            ),
            ("x-ratelimit-reset-requests", Some(self.minute.reset)),
            (
                "x-ratelimit-limit-requests-day",
                Some(self.day.limit as u64),
            ),
            (
                "x-ratelimit-remaining-requests-day",
                Some(self.day.remaining as u64),
            ),
            ("x-ratelimit-reset-requests-day", Some(self.day.reset)),
            (
                "retry-after",
                // An in-flight refusal names no time: any running request
                // that ends frees a unit, and none can say when.
                (!self.allowed && self.limited_by != LimitedBy::InFlight)
                    .then_some(self.retry_after as u64),
            ),
        ]
    }

    /// The six token headers, when the key has a token limit: the request
    /// headers' names with `tokens` for `requests`, remaining counted
    /// after this request's reservation.
    pub fn token_header_pairs(&self) -> Option<[(&'static str, u64); 6]> {
        let t = self.tokens.as_ref()?;
        Some([
            ("x-ratelimit-limit-tokens", t.minute.limit as u64),
            ("x-ratelimit-remaining-tokens", t.minute.remaining as u64),
            ("x-ratelimit-reset-tokens", t.minute.reset),
            ("x-ratelimit-limit-tokens-day", t.day.limit as u64),
            ("x-ratelimit-remaining-tokens-day", t.day.remaining as u64),
            ("x-ratelimit-reset-tokens-day", t.day.reset),
        ])
    }

    /// `RateLimit-Policy` and `RateLimit` fields of
    /// draft-ietf-httpapi-ratelimit-headers (revision 10): one policy per
    /// window; `t` is the seconds until that window's quota returns.
    pub fn write_ietf_headers(&self, now_ms: u64, out: &mut impl Write) -> fmt::Result {
        out.write_str("RateLimit-Policy: ")?;
        self.write_ietf_policy(out)?;
        out.write_str("\r\nRateLimit: ")?;
        self.write_ietf_state(now_ms, out)?;
        out.write_str("\r\n")
    }

    /// The `RateLimit-Policy` field's value.
    pub fn write_ietf_policy(&self, out: &mut impl Write) -> fmt::Result {
        write!(
            out,
            "\"minute\";q={};w=60, \"day\";q={};w=86400",
            self.minute.limit, self.day.limit
        )?;
        if let Some(t) = &self.tokens {
            write!(
                out,
                ", \"tokens-minute\";q={};w=60, \"tokens-day\";q={};w=86400",
                t.minute.limit, t.day.limit
            )?;
        }
        // A quota of requests at once: no window (`w`), none resets.
        if let Some(f) = &self.in_flight {
            write!(out, ", \"in-flight\";q={}", f.limit)?;
        }
        Ok(())
    }

    /// The `RateLimit` field's value at `now_ms`.
    pub fn write_ietf_state(&self, now_ms: u64, out: &mut impl Write) -> fmt::Result {
        write!(
            out,
            "\"minute\";r={};t={}, \"day\";r={};t={}",
            self.minute.remaining,
            seconds_until(now_ms, self.minute.reset),
            self.day.remaining,
            seconds_until(now_ms, self.day.reset),
        )?;
        if let Some(t) = &self.tokens {
            write!(
                out,
                ", \"tokens-minute\";r={};t={}, \"tokens-day\";r={};t={}",
                t.minute.remaining,
                seconds_until(now_ms, t.minute.reset),
                t.day.remaining,
                seconds_until(now_ms, t.day.reset),
            )?;
        }
        // Units come back when requests end, which no `t` can date.
        if let Some(f) = &self.in_flight {
            write!(
                out,
                ", \"in-flight\";r={}",
                f.limit.saturating_sub(f.in_use)
            )?;
        }
        Ok(())
    }

    /// The OpenAI-shaped error body for a refused request on `model`.
    pub fn write_error_body(&self, model: &[u8], out: &mut impl Write) -> fmt::Result {
        if let (Some(f), LimitedBy::InFlight) = (&self.in_flight, self.limited_by) {
            out.write_str("{\"error\":{\"message\":\"Too many requests in flight on model ")?;
            write_json_escaped(out, model)?;
            return write!(
                out,
                ": limit {}, in flight {}. Retry once one of them has finished.\",\"type\":\"requests\",\"param\":null,\"code\":\"in_flight_limit_exceeded\"}}}}",
                f.limit, f.in_use
            );
        }
        if let (Some(t), LimitedBy::TokensMinute | LimitedBy::TokensDay) =
            (&self.tokens, self.limited_by)
        {
            let (what, w) = match self.limited_by {
                LimitedBy::TokensDay => ("tokens per day (TPD)", t.day),
                _ => ("tokens per minute (TPM)", t.minute),
            };
            out.write_str("{\"error\":{\"message\":\"Rate limit reached for ")?;
            out.write_str(what)?;
            out.write_str(" on model ")?;
            write_json_escaped(out, model)?;
            return write!(
                out,
                ": limit {}, remaining {}. Please try again in {}s.\",\"type\":\"tokens\",\"param\":null,\"code\":\"tokens_rate_limit_exceeded\"}}}}",
                w.limit, w.remaining, self.retry_after
            );
        }
        let (what, w) = match self.limited_by {
            LimitedBy::Day => ("requests per day (RPD)", self.day),
            _ => ("requests per minute (RPM)", self.minute),
        };
        out.write_str("{\"error\":{\"message\":\"Rate limit reached for ")?;
        out.write_str(what)?;
        out.write_str(" on model ")?;
        write_json_escaped(out, model)?;
        write!(
            out,
            ": limit {}, remaining {}. Please try again in {}s.\",\"type\":\"rate_limit_exceeded\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}}}",
            w.limit, w.remaining, self.retry_after
        )
    }
}

/// The OpenAI-shaped body for a request naming a model the policy does not
/// have (answered with 404, as OpenAI does).
pub fn write_unknown_model_body(model: &[u8], out: &mut impl Write) -> fmt::Result {
    out.write_str("{\"error\":{\"message\":\"The model `")?;
    write_json_escaped(out, model)?;
    out.write_str(
        "` does not exist or you do not have access to it.\",\"type\":\"invalid_request_error\",\"param\":\"model\",\"code\":\"model_not_found\"}}",
    )
}

/// Decimal digits of `v`, without `core::fmt`'s machinery: headers go out
/// on every response, and this is most of their cost.
pub(crate) fn write_u64(out: &mut impl Write, v: u64) -> fmt::Result {
    let mut buf = [0u8; 20];
    out.write_str(std::str::from_utf8(decimal(v, &mut buf)).map_err(|_| fmt::Error)?)
}

/// The decimal digits of `v`, written at the end of `buf`.
pub(crate) fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// JSON string contents for arbitrary bytes: escapes quotes, backslashes and
/// control characters; invalid UTF-8 becomes U+FFFD.
pub(crate) fn write_json_escaped(out: &mut impl Write, bytes: &[u8]) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.write_str("\\\"")?,
                '\\' => out.write_str("\\\\")?,
                c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32)?,
                c => out.write_char(c)?,
            }
        }
        if !chunk.invalid().is_empty() {
            out.write_char('\u{FFFD}')?;
        }
    }
    Ok(())
}

/// A `fmt::Write` into a fixed byte buffer that keeps counting past the end,
/// so a caller whose buffer was too small learns the size it needs.
pub struct Sink<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Sink<'a> {
    /// A sink writing into `buf`.
    pub fn new(buf: &'a mut [u8]) -> Sink<'a> {
        Sink { buf, len: 0 }
    }

    /// Bytes the whole output needs.
    pub fn needed(&self) -> usize {
        self.len
    }

    /// Whether everything fit.
    pub fn fits(&self) -> bool {
        self.len <= self.buf.len()
    }
}

impl Write for Sink<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let start = self.len.min(self.buf.len());
        let end = (self.len + s.len()).min(self.buf.len());
        self.buf[start..end].copy_from_slice(&s.as_bytes()[..end - start]);
        self.len += s.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Instant;

    fn denied_minute() -> Decision {
        let o = Outcome {
            allowed: false,
            limited_by: LimitedBy::Minute,
            at: Instant {
                day: 20_419,
                minute: 600,
            },
            minute_count: 30,
            day_count: 30,
            clock_fault: false,
        };
        Decision::new(
            o,
            Limits {
                rpm: 30,
                rpd: 15_000,
            },
            20_419 * 86_400_000 + 600 * 60_000 + 43_200,
        )
    }

    #[test]
    fn headers_exact() {
        let d = denied_minute();
        let mut s = String::new();
        d.write_headers(&mut s).unwrap();
        let m_reset = (20_419u64 * 1440 + 601) * 60;
        let d_reset = 20_420u64 * 86_400;
        assert_eq!(
            s,
            format!(
                "x-ratelimit-limit-requests: 30\r\nx-ratelimit-remaining-requests: 0\r\nx-ratelimit-reset-requests: {m_reset}\r\n\
                 x-ratelimit-limit-requests-day: 15000\r\nx-ratelimit-remaining-requests-day: 14970\r\nx-ratelimit-reset-requests-day: {d_reset}\r\n\
                 retry-after: 17\r\n"
            )
        );
    }

    #[test]
    fn error_body_is_json_and_escaped() {
        let d = denied_minute();
        let mut s = String::new();
        d.write_error_body(b"we\"ird\\\n\xff", &mut s).unwrap();
        assert!(s.starts_with("{\"error\":{\"message\":\"Rate limit reached for requests per minute (RPM) on model we\\\"ird\\\\\\u000a\u{FFFD}: limit 30"), "{s}");
        assert!(s.ends_with(
            "\"type\":\"rate_limit_exceeded\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}"
        ));
    }

    #[test]
    fn unknown_model_body() {
        let mut s = String::new();
        write_unknown_model_body(b"gpt-\"5", &mut s).unwrap();
        assert_eq!(
            s,
            "{\"error\":{\"message\":\"The model `gpt-\\\"5` does not exist or you do not have access to it.\",\"type\":\"invalid_request_error\",\"param\":\"model\",\"code\":\"model_not_found\"}}"
        );
    }

    #[test]
    fn ietf_fields() {
        let d = denied_minute();
        let mut s = String::new();
        d.write_ietf_headers(20_419 * 86_400_000 + 600 * 60_000 + 43_200, &mut s)
            .unwrap();
        assert!(s.starts_with("RateLimit-Policy: \"minute\";q=30;w=60, \"day\";q=15000;w=86400\r\nRateLimit: \"minute\";r=0;t=17, \"day\";r=14970;t="));
    }

    #[test]
    fn integers_format_like_display() {
        for v in [0u64, 1, 9, 10, 99, 100, 12_345, u32::MAX as u64, u64::MAX] {
            let mut s = String::new();
            write_u64(&mut s, v).unwrap();
            assert_eq!(s, v.to_string());
        }
    }

    #[test]
    fn sink_counts_past_the_end() {
        let mut buf = [0u8; 4];
        let mut s = Sink::new(&mut buf);
        s.write_str("hello").unwrap();
        assert_eq!(s.needed(), 5);
        assert!(!s.fits());
        assert_eq!(&buf, b"hell");
    }
}

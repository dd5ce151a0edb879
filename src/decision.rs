//! What a caller tells its client: the six `x-ratelimit-*` headers, a 429's
//! `Retry-After` and OpenAI-shaped error body, or the IETF draft fields.
//! Rendering writes into a caller's buffer and allocates nothing.

use std::fmt::{self, Write};

use crate::policy::Limits;
use crate::slot::{LimitedBy, Outcome};
use crate::window::seconds_until;

/// One window as a client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The most requests the window allows.
    pub limit: u32,
    /// Requests left in it after this decision.
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
            LimitedBy::Minute => seconds_until(now_ms, minute.reset),
            LimitedBy::Day => seconds_until(now_ms, day.reset),
        };
        Decision {
            allowed: o.allowed,
            limited_by: o.limited_by,
            minute,
            day,
            retry_after,
        }
    }

    /// The six policy headers (and `retry-after` when refused), one
    /// `name: value\r\n` line each.
    pub fn write_headers(&self, out: &mut impl Write) -> fmt::Result {
        for (name, value) in self.header_pairs() {
            if let Some(v) = value {
                out.write_str(name)?;
                out.write_str(": ")?;
                write_u64(out, v)?;
                out.write_str("\r\n")?;
            }
        }
        Ok(())
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
                (!self.allowed).then_some(self.retry_after as u64),
            ),
        ]
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
        )
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
        )
    }

    /// The OpenAI-shaped error body for a refused request on `model`.
    pub fn write_error_body(&self, model: &[u8], out: &mut impl Write) -> fmt::Result {
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

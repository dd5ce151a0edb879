//! Arbitrary bytes as an upstream response, JSON or SSE as the first byte
//! picks, fed in a chunking the second byte picks: no panic, and chunked
//! must answer as one shot (the usage, the error, and whether `[DONE]`
//! was seen). serde_json's agreement is checked by
//! tests/checks/usage_differential.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::usage::{Framing, UsageScanner};

fuzz_target!(|data: &[u8]| {
    let [f, c, body @ ..] = data else { return };
    let framing = if f & 1 == 0 { Framing::Json } else { Framing::Sse };
    let mut one = UsageScanner::new(framing);
    let _ = one.feed(body);
    let want = (one.finish(), one.done_seen());

    let mut s = UsageScanner::new(framing);
    let sizes = [1 + (c & 7) as usize, 1 + (c >> 3) as usize];
    let mut rest = body;
    let mut k = 0;
    while !rest.is_empty() {
        let n = sizes[k % 2].min(rest.len());
        k += 1;
        if s.feed(&rest[..n]).is_err() {
            break;
        }
        rest = &rest[n..];
    }
    assert_eq!((s.finish(), s.done_seen()), want);
});

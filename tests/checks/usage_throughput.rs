//! Throughput of the response usage read (`tollgate::usage`) on what an
//! inference gateway passes on: a long SSE stream of chat completion
//! chunks, fed as a proxy sees it (4 KiB reads) and in one piece, beside
//! what a gateway that parses every event does (each `data:` line through
//! serde_json). Prints, asserts nothing about time:
//! `cargo test --release --test checks -- --ignored usage_throughput --nocapture`.

use std::time::Instant;

use tollgate::usage::{Framing, UsageScanner};

/// About `n` bytes of an OpenAI-style chat completion stream: chunks of a
/// few words each, then the usage chunk and `[DONE]`.
fn sse_stream(n: usize) -> Vec<u8> {
    let words = [
        "The", " limiter", " counts", " tokens", " per", " minute", ",", " exactly", ".",
    ];
    let mut out = String::new();
    let mut i = 0usize;
    while out.len() < n {
        let content = words[i % words.len()];
        out.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1764288030,\"model\":\"DeepSeek-V3.1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ));
        i += 1;
    }
    out.push_str("data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1764288030,\"model\":\"DeepSeek-V3.1\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":");
    out.push_str(&i.to_string());
    out.push_str(&format!(
        ",\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
        1200 + i
    ));
    out.into_bytes()
}

/// A gateway that parses every event: split on lines, serde_json each
/// `data:` payload, keep the last usage.
fn per_event_json(body: &[u8]) -> Option<u64> {
    let mut total = None;
    for line in body.split(|&b| b == b'\n') {
        let Some(data) = line.strip_prefix(b"data: ") else {
            continue;
        };
        if data == b"[DONE]" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(data).ok()?;
        if let Some(t) = v["usage"]["total_tokens"].as_u64() {
            total = Some(t);
        }
    }
    total
}

fn rate(label: &str, body: &[u8], f: impl Fn(&[u8]) -> Option<u64>) -> f64 {
    let want = f(body);
    assert!(want.is_some(), "{label}: no usage read");
    let reps = ((512 << 20) / body.len().max(1)).max(1);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            assert_eq!(f(std::hint::black_box(body)), want);
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    let gbs = body.len() as f64 / best / 1e9;
    println!(
        "{label}: {} bytes, {:.0} us per stream, {gbs:.2} GB/s",
        body.len(),
        best * 1e6
    );
    gbs
}

fn scan(body: &[u8], chunk: usize) -> Option<u64> {
    let mut s = UsageScanner::new(Framing::Sse);
    for c in body.chunks(chunk) {
        s.feed(c).ok()?;
    }
    s.finish().ok()?.map(|u| u.total)
}

#[test]
#[ignore = "timing, run by hand"]
fn usage_throughput() {
    let body = sse_stream(4 << 20);
    rate("tollgate::usage, SSE, 4 KiB reads", &body, |b| {
        scan(b, 4096)
    });
    rate("tollgate::usage, SSE, one piece", &body, |b| {
        scan(b, b.len())
    });
    rate("serde_json per event (split lines)", &body, per_event_json);
    // OpenAI's stream_options.include_usage form (vLLM's too): every chunk
    // carries "usage":null, so no event can be skipped unparsed
    let nulls = String::from_utf8(body)
        .unwrap()
        .replace(
            "\"finish_reason\":null}]}",
            "\"finish_reason\":null}],\"usage\":null}",
        )
        .into_bytes();
    rate(
        "tollgate::usage, SSE with usage:null chunks, 4 KiB reads",
        &nulls,
        |b| scan(b, 4096),
    );
    rate(
        "serde_json per event, usage:null chunks",
        &nulls,
        per_event_json,
    );
}

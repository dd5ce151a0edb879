//! The usage scan allocates nothing, whatever the response: a counting
//! global allocator sees no allocation across JSON bodies and SSE streams,
//! valid, refused, deep, long and chunked.

use crate::counting;

use tollgate::usage::{usage_of, Framing, UsageScanner};

#[test]
fn scanning_usage_allocates_nothing() {
    let long = format!(
        "{{\"choices\":[{{\"message\":{{\"content\":\"{}\"}}}}],\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":4}}}}",
        "caf\u{e9} \\n \\ud83d\\ude00 usage ".repeat(20_000)
    );
    let sse = format!(
        "{}data: {{\"usage\":{{\"prompt_tokens\":1,\"total_tokens\":1}}}}\r\n\r\ndata: [DONE]\r\n\r\n",
        "event: x\r\n: ping\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\r\ndata: \"usage\":null}\r\n\r\n"
            .repeat(5_000)
    );
    let mut deep = b"{\"a\":".to_vec();
    deep.extend(std::iter::repeat_n(b'[', 50_000));
    let bodies: Vec<(Framing, &[u8])> = vec![
        (
            Framing::Json,
            br#"{"usage":{"prompt_tokens":12,"total_tokens":12}}"#,
        ),
        (Framing::Json, br#"{"usage":{"prompt_tokens":1.5}}"#),
        (Framing::Json, b"{\"a\":\"\xff\"}"),
        (Framing::Json, b""),
        (Framing::Json, long.as_bytes()),
        (Framing::Json, &deep),
        (Framing::Sse, sse.as_bytes()),
        (Framing::Sse, b"data: [DONE\n\n"),
        (Framing::Sse, &deep),
    ];

    counting::arm();
    let mut answers = 0u64;
    for (f, body) in &bodies {
        answers += usage_of(*f, body).map_or(0, |u| u.map_or(1, |u| u.total));
        for size in [1, 7, 4096] {
            let mut s = UsageScanner::new(*f);
            for part in body.chunks(size) {
                if s.feed(part).is_err() {
                    break;
                }
            }
            answers += s.finish().map_or(0, |u| u.map_or(1, |u| u.total)) + s.done_seen() as u64;
        }
        let _ = Framing::from_content_type(b"Application/JSON; charset=utf-8");
    }
    assert_eq!(counting::disarm(), 0);
    assert!(answers > 0);
}

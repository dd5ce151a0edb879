//! One-shot throughput of the body scan, for comparison with other
//! parsers (Python's json.loads in the report). Prints, asserts nothing
//! about time: `cargo test --release --test checks -- --ignored body_throughput
//! --nocapture`.

use std::time::Instant;

/// A chat request whose one message is `n` bytes of ASCII prose (with a
/// `\n` escape every 17 words when `lines`).
fn prompt_body(n: usize, lines: bool) -> Vec<u8> {
    let words = [
        "the",
        "limiter",
        "counts",
        "requests,",
        "per",
        "minute",
        "and",
        "day.",
        "Tokens:",
        "42;",
    ];
    let mut text = String::new();
    let mut i = 0usize;
    while text.len() < n {
        text.push_str(words[i % words.len()]);
        text.push(if lines && i % 17 == 16 { '\n' } else { ' ' });
        i = i.wrapping_mul(7).wrapping_add(3) % 1009;
    }
    let text = serde_json::to_string(&text).unwrap(); // \n escaped
    format!(
        r#"{{"model":"Qwen3-32B","messages":[{{"role":"user","content":{text}}}],"stream":false}}"#
    )
    .into_bytes()
}

/// About `n` bytes of an object with many short keys and mixed values.
fn many_keys_body(n: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"model":"DeepSeek-V3.1""#);
    let mut k = 0;
    while s.len() < n {
        let v = match k % 6 {
            0 => format!("{}", k * 37),
            1 => format!("\"value-{k}\""),
            2 => "true".to_string(),
            3 => format!("[{k},{},-{}.5e-3]", k + 1, k),
            4 => "null".to_string(),
            _ => format!("{{\"id\":{k},\"tag\":\"t{k}\"}}"),
        };
        s.push_str(&format!(",\"key_{k}\":{v}"));
        k += 1;
    }
    s.push('}');
    s.into_bytes()
}

/// A vision request: a short prompt and a `data:` URL of `n` bytes of
/// base64 (an image as clients send it).
fn image_body(n: usize) -> Vec<u8> {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = 0x2545_f491u32;
    let data: String = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            B64[(x % 64) as usize] as char
        })
        .collect();
    format!(
        r#"{{"model":"Qwen2.5-VL-72B","messages":[{{"role":"user","content":[{{"type":"text","text":"What is in this picture?"}},{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{data}"}}}}]}}],"max_tokens":300}}"#
    )
    .into_bytes()
}

fn rate(label: &str, body: &[u8], f: impl Fn(&[u8]) -> bool) {
    assert!(f(body));
    let reps = (256 << 20) / body.len().max(1); // ~256 MB per round
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            assert!(f(std::hint::black_box(body)));
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    println!(
        "{label}: {} bytes, {:.1} us per body, {:.0} MB/s",
        body.len(),
        best * 1e6,
        body.len() as f64 / best / 1e6
    );
}

#[test]
#[ignore = "timing, run by hand"]
fn body_scan_throughput() {
    let prompt = prompt_body(1 << 20, true);
    let flat = prompt_body(1 << 20, false);
    let keys = many_keys_body(64 << 10);
    let image = image_body(1 << 20);
    for (name, body) in [
        ("1 MB prompt", &prompt),
        ("1 MB prompt, one line", &flat),
        ("64 KB many keys", &keys),
        ("1 MB base64 image", &image),
    ] {
        rate(&format!("tollgate::body::model_of, {name}"), body, |b| {
            tollgate::body::model_of(b).is_ok()
        });
        rate(
            &format!("serde_json::from_slice::<Value>, {name}"),
            body,
            |b| serde_json::from_slice::<serde_json::Value>(b).is_ok(),
        );
    }
    if let Ok(dir) = std::env::var("BODY_THROUGHPUT_DUMP") {
        // For timing other parsers on the same bytes.
        std::fs::write(format!("{dir}/prompt.json"), &prompt).unwrap();
        std::fs::write(format!("{dir}/keys.json"), &keys).unwrap();
    }
}

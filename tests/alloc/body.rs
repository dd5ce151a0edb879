//! The body scan allocates nothing, whatever the body: a counting global
//! allocator sees no allocation across valid, refused, deep, long and
//! chunked bodies, through the Rust API and the C ABI.

use crate::counting;

use tollgate::body::{model_of, ModelScanner};
use tollgate::ffi::*;

#[repr(C, align(8))]
struct Mem([u8; 512]);

#[test]
fn scanning_allocates_nothing() {
    let long = format!(
        "{{\"messages\":[{{\"content\":\"{}\"}}],\"model\":\"{}\"}}",
        "caf\u{e9} \\n \\ud83d\\ude00 ".repeat(20_000),
        "m".repeat(1000)
    );
    let mut deep = b"{\"a\":".to_vec();
    deep.extend(std::iter::repeat_n(b'[', 50_000));
    let bodies: Vec<&[u8]> = vec![
        br#"{"model":"Qwen3-32B"}"#,
        br#"{"model":"a","Model":"b"}"#,
        br#"{"model":1}"#,
        b"{\"model\":\"\xff\"}",
        b"[1,2]",
        b"",
        long.as_bytes(),
        &deep,
    ];
    let mut mem = Mem([0; 512]);
    let base: *mut std::ffi::c_void = mem.0.as_mut_ptr().cast();

    counting::arm();
    let mut answers = 0usize;
    for body in &bodies {
        answers += model_of(body).map_or(0, |m| m.len());
        let mut s = ModelScanner::new();
        for part in body.chunks(7) {
            if s.feed(part).is_err() {
                break;
            }
        }
        answers += s.finish().map_or(0, |m| m.len());

        let mut scan: *mut tg_body_scan = std::ptr::null_mut();
        assert_eq!(tg_body_scan_init(base, 512, &mut scan), TG_OK);
        for part in body.chunks(4096) {
            if tg_body_scan_feed(scan, part.as_ptr(), part.len()) != TG_OK {
                break;
            }
        }
        let (mut m, mut n) = (std::ptr::null(), 0usize);
        let _ = tg_body_scan_finish(scan, &mut m, &mut n);
        let mut out = [0u8; 64];
        let _ = tg_body_model(body.as_ptr(), body.len(), out.as_mut_ptr(), 64, &mut n);
        answers += n;
    }
    assert_eq!(counting::disarm(), 0);
    assert!(answers > 0);
}

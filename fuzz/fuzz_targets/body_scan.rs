//! Arbitrary bytes as a request body, fed in a chunking the first byte
//! picks: chunked must answer as one shot, with the same facts()
//! (BodyFacts: size, base64 media, output cap) when the body is accepted,
//! and the answer must be serde_json's reading under the ambiguity rule. The check lives in
//! tests/bodycheck so plain `cargo test` runs it too (tests/checks/body_fuzz.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/bodycheck/mod.rs"]
mod bodycheck;

fuzz_target!(|data: &[u8]| {
    let _ = bodycheck::check(data);
});

//! Random bytes as a region: attach must refuse what is not one, and on
//! what is one (or a damaged one) verify, usage, reset and decisions must
//! never panic or read out of bounds. The check itself lives in
//! tests/fuzzcheck so plain `cargo test` runs it too (tests/checks/region_fuzz.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzzcheck/mod.rs"]
mod fuzzcheck;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzcheck::check(data);
});

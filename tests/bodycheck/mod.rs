//! The body-scan check, shared by the cargo-fuzz target
//! (fuzz/fuzz_targets/body_scan.rs), the seeded corpus test that runs it in
//! plain `cargo test` (tests/checks/body_fuzz.rs) and the differential test
//! (tests/checks/body_differential.rs).
//!
//! For any bytes: fed in any chunking the scanner answers as in one call,
//! with the same token estimate facts (`BodyFacts`) when it accepts the
//! body, and the answer is serde_json's reading of the same bytes under the
//! ambiguity rule (docs/bodies.md). (The facts against a reference:
//! tests/checks/body_differential.rs.) serde_json is the oracle: it parses the
//! whole body into a `Value` (every string UTF-8- and surrogate-checked),
//! and a second pass lists the top-level entries in order, duplicates
//! included, which a `Value` map cannot keep.
//!
//! Deliberate differences, each checked rather than skipped:
//! - Nesting: serde_json (recursion limit lifted here) reads any depth; we
//!   refuse past DEPTH_MAX (fixed memory). When we say TooDeep, serde_json
//!   with its own limit of 128 must report that limit.
//! - Numbers beyond f64 (`1e400`): RFC 8259 grammar allows them, Python's
//!   json reads them (as inf) and Go skips them in unknown fields;
//!   serde_json refuses ("number out of range"). We only validate the
//!   grammar and never need the value, so we accept them: for such a body
//!   only the chunking check applies.
#![allow(dead_code)]

use serde::de::{MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use tollgate::body::{
    facts_of, model_of, BodyError, BodyFacts, ModelScanner, DEPTH_MAX, MODEL_MAX,
};

/// What a body is, by our rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    Model(Vec<u8>),
    Refused(BodyError),
}

/// serde_json's reading, where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Oracle {
    Is(Verdict),
    /// serde_json refuses a number out of f64 range (see above).
    NumberOutOfRange,
}

pub fn ours(body: &[u8]) -> Verdict {
    match model_of(body) {
        Ok(m) => Verdict::Model(m.to_vec()),
        Err(e) => Verdict::Refused(e),
    }
}

/// The verdict of feeding `body` in chunks of the sizes `sizes` yields
/// (a 0 feeds an empty chunk, never twice in a row).
pub fn chunked(body: &[u8], sizes: &mut impl Iterator<Item = usize>) -> Verdict {
    chunked_facts(body, sizes).0
}

/// `chunked`, and the facts when the body is accepted.
pub fn chunked_facts(
    body: &[u8],
    sizes: &mut impl Iterator<Item = usize>,
) -> (Verdict, Option<BodyFacts>) {
    let mut s = ModelScanner::new();
    let mut at = 0;
    let mut empty = false;
    loop {
        let mut n = sizes.next().unwrap_or(1).min(body.len() - at);
        // An empty feed now and then, but always progress.
        if n == 0 && empty && at < body.len() {
            n = 1;
        }
        empty = n == 0;
        if let Err(e) = s.feed(&body[at..at + n]) {
            // Sticky, and the finish says the same.
            assert_eq!(s.feed(b"{"), Err(e));
            assert_eq!(s.finish(), Err(e));
            return (Verdict::Refused(e), None);
        }
        at += n;
        if at == body.len() {
            break;
        }
    }
    let v = s.finish().map(|m| m.to_vec());
    match v {
        Ok(m) => (Verdict::Model(m), Some(s.facts())),
        Err(e) => (Verdict::Refused(e), None),
    }
}

/// The top-level entries of an object, in order, duplicates kept.
pub struct Entries(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, Value>()? {
                    v.push(e);
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], unbounded: bool) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    if unbounded {
        de.disable_recursion_limit();
    }
    let v = T::deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// `s` cut to MODEL_MAX bytes on a character boundary.
pub fn cut(s: &str) -> Vec<u8> {
    let mut n = s.len().min(MODEL_MAX);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s.as_bytes()[..n].to_vec()
}

/// serde_json's verdict under our rule. Call it only for bodies we did not
/// find too deep (serde_json recurses; see `check`).
pub fn oracle(body: &[u8]) -> Oracle {
    let v: Value = match parse(body, true) {
        Ok(v) => v,
        Err(e) if e.to_string().starts_with("number out of range") => {
            return Oracle::NumberOutOfRange
        }
        Err(_) => return Oracle::Is(Verdict::Refused(BodyError::NotJson)),
    };
    let Value::Object(map) = &v else {
        return Oracle::Is(Verdict::Refused(BodyError::NotJson));
    };
    let Entries(entries) = parse(body, true).expect("an object parses twice");
    let named: Vec<&(String, Value)> = entries
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("model"))
        .collect();
    Oracle::Is(match named[..] {
        [] => Verdict::Refused(BodyError::NoModel),
        [(key, Value::String(s))] => {
            if key == "model" {
                assert_eq!(map.get("model"), Some(&Value::String(s.clone())));
            }
            Verdict::Model(cut(s))
        }
        [_] => Verdict::Refused(BodyError::NoModel),
        _ => Verdict::Refused(BodyError::AmbiguousModel),
    })
}

/// The input's first byte picks the chunk sizes, the rest is the body.
pub fn sizes_for(seed: u8) -> impl Iterator<Item = usize> {
    let mut x = seed as u32 | 0x100;
    std::iter::from_fn(move || {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        Some(match seed % 4 {
            0 => 1,
            1 => (x >> 16) as usize % 4,
            2 => (x >> 16) as usize % 64,
            _ => 1 + (x >> 16) as usize % 4096,
        })
    })
}

/// The whole check on one fuzz input; returns our verdict.
pub fn check(data: &[u8]) -> Verdict {
    let Some((&seed, body)) = data.split_first() else {
        return ours(data);
    };
    check_body(body, &mut sizes_for(seed))
}

/// The check on one body fed in the given chunk sizes.
pub fn check_body(body: &[u8], sizes: &mut impl Iterator<Item = usize>) -> Verdict {
    let one = ours(body);
    let (v, facts) = chunked_facts(body, sizes);
    assert_eq!(
        v,
        one,
        "chunked != one shot: {:?}",
        String::from_utf8_lossy(body)
    );
    if let Some(f) = facts {
        assert_eq!(
            Some(f),
            facts_of(body).ok().map(|(_, f)| f),
            "chunked facts != one shot: {:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(f.bytes, body.len() as u64);
    }
    if one == Verdict::Refused(BodyError::TooDeep) {
        // We stopped at level DEPTH_MAX + 1 with no syntax error before it:
        // serde_json, at its own limit of 128, must stop on depth too.
        let e = parse::<Value>(body, false).unwrap_err();
        assert!(
            e.to_string().starts_with("recursion limit exceeded"),
            "{e}: {:?}",
            String::from_utf8_lossy(body)
        );
        const { assert!(DEPTH_MAX > 128) };
        return one;
    }
    match oracle(body) {
        Oracle::Is(want) => assert_eq!(one, want, "body {:?}", String::from_utf8_lossy(body)),
        Oracle::NumberOutOfRange => {}
    }
    one
}

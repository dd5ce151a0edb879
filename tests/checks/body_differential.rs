//! The body scan against serde_json (tests/bodycheck has the oracle and
//! the deliberate differences): a hand-written corpus in the spirit of
//! JSONTestSuite (y_ must parse, n_ must not, i_ is where parsers may
//! differ and we say which way we go), proptest-generated JSON documents
//! with model keys in every spelling, and mutated bytes. Each body is fed
//! one-shot, byte by byte and split at every position (short ones).
//!
//! The token estimate facts (docs/bodies.md, "Token estimate facts") of
//! every accepted body, fed at the generated split points, against a
//! reference written plainly over serde_json's tree and raw value texts
//! (`reference_facts`); the generated bodies carry output caps in every
//! spelling and media strings with and without a flaw.

use crate::bodycheck;

use bodycheck::{check_body, oracle, ours, Oracle, Verdict};
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;
use tollgate::BodyError::{self, *};

fn sizes(v: &[usize]) -> impl Iterator<Item = usize> + '_ {
    v.iter().copied().cycle()
}

/// The full check under several chunkings; our verdict.
fn all_chunkings(body: &[u8]) -> Verdict {
    let one = check_body(body, &mut std::iter::repeat(usize::MAX));
    assert_eq!(check_body(body, &mut std::iter::repeat(1)), one);
    assert_eq!(check_body(body, &mut sizes(&[0, 3, 1, 7])), one);
    if body.len() <= 300 {
        for cut in 0..=body.len() {
            let rest = body.len() - cut;
            assert_eq!(
                bodycheck::chunked(body, &mut [cut, rest].into_iter()),
                one,
                "cut {cut}"
            );
        }
    }
    one
}

/// JSONTestSuite-style values that RFC 8259 and serde_json accept.
const Y: &[&[u8]] = &[
    b"0",
    b"-0",
    b"1",
    b"-1",
    b"12345",
    b"1.5",
    b"-0.0e-0",
    b"1e5",
    b"1E5",
    b"1e+5",
    b"1e-5",
    b"1.7976931348623157e308",
    b"5e-324",
    b"1e-400",
    b"123456789012345678901234567890",
    b"-9223372036854775809",
    b"\"\"",
    b"\" \"",
    b"\"\\u0000\"",
    b"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"",
    b"\"\\ud83d\\ude00\"",
    b"\"\\uD83D\\uDE00\"",
    b"\"\\u00e9\\u00E9\"",
    b"\"\\uffff\"",
    b"\"\\ufdd0\"",
    b"\"\\u2028\\u2029\"",
    b"\"\xe2\x80\xa8\"",
    b"\"\x7f\"",
    b"\"\xc2\x80\"",
    b"\"\xdf\xbf\"",
    b"\"\xe0\xa0\x80\"",
    b"\"\xef\xbf\xbf\"",
    b"\"\xf0\x90\x80\x80\"",
    b"\"\xf4\x8f\xbf\xbf\"",
    b"\"\xed\x9f\xbf\"",
    b"\"\xee\x80\x80\"",
    b"\"/*\"",
    b"\"//\"",
    b"[]",
    b"[[]]",
    b"[1,2,3]",
    b"[ 1 , 2 ]",
    b"[\"a\",{}]",
    b"{}",
    b"{\"\":0}",
    b"{\"a\":{\"b\":[1,{\"c\":null}]}}",
    b"{\"a\":1,\"a\":2}",
    b"true",
    b"false",
    b"null",
    b" \t\n\r1\r\n\t ",
    b"[-1.0E-10,0.1e1,-0e0]",
];

/// Values that must be refused (NotJson).
const N: &[&[u8]] = &[
    b"",
    b" ",
    b"01",
    b"-01",
    b"00",
    b"1.",
    b".1",
    b"-",
    b"+1",
    b"1e",
    b"1e+",
    b"1.e1",
    b"0x10",
    b"Infinity",
    b"-Infinity",
    b"NaN",
    b"1_000",
    b"1 000",
    b"2.",
    b"-.5",
    b"0e",
    b"--1",
    b"'a'",
    b"\"a",
    b"\"\\x\"",
    b"\"\\u12\"",
    b"\"\\u12G4\"",
    b"\"\\U0041\"",
    b"\"\\ud800\"",
    b"\"\\udc00\"",
    b"\"\\ud800\\u0041\"",
    b"\"\\ud800x\"",
    b"\"\\ud83d\\ud83d\"",
    b"\"\\ud800\\\"",
    b"\"\\ude00\\ud83d\"",
    b"\"\t\"",
    b"\"\x00\"",
    b"\"\x1f\"",
    b"\"\n\"",
    b"\"\xff\"",
    b"\"\xfe\"",
    b"\"\x80\"",
    b"\"\xbf\"",
    b"\"\xc0\x80\"",
    b"\"\xc1\xbf\"",
    b"\"\xe0\x80\x80\"",
    b"\"\xe0\x9f\xbf\"",
    b"\"\xed\xa0\x80\"",
    b"\"\xed\xbf\xbf\"",
    b"\"\xf0\x80\x80\x80\"",
    b"\"\xf0\x8f\xbf\xbf\"",
    b"\"\xf4\x90\x80\x80\"",
    b"\"\xf5\x80\x80\x80\"",
    b"\"\xf8\x88\x80\x80\x80\"",
    b"\"\xe2\x82\"",
    b"\"\xc3a\"",
    b"\"\xf0\x9f\x98\"",
    b"[1,]",
    b"[,1]",
    b"[1 2]",
    b"[1,,2]",
    b"[",
    b"]",
    b"[}",
    b"{]",
    b"{\"a\":1,}",
    b"{\"a\"}",
    b"{\"a\" 1}",
    b"{\"a\"::1}",
    b"{1:1}",
    b"{a:1}",
    b"{'a':1}",
    b"{\"a\":1\"b\":2}",
    b"{",
    b"}",
    b"tru",
    b"True",
    b"nul",
    b"truefalse",
    b"nulll",
    b"/**/1",
    b"1//",
    b"[1]x",
    b"[1]]",
    b"1 2",
    b"\x0c1",
    b"\xc2\xa01",
    b"\xef\xbb\xbf1",
    b"\x00",
    b"[1]\x00",
    b"\"a\"\"b\"",
];

#[test]
fn corpus_values_bare_and_inside_a_body() {
    for &v in Y {
        let bare = all_chunkings(v);
        let object = v.first() == Some(&b'{');
        assert_eq!(
            bare == Verdict::Refused(NotJson),
            !object,
            "{}",
            String::from_utf8_lossy(v)
        );
        let body = [br#"{"model":"m","v":"#.as_slice(), v, b"}"].concat();
        assert_eq!(
            all_chunkings(&body),
            Verdict::Model(b"m".to_vec()),
            "y {:?}",
            String::from_utf8_lossy(v)
        );
        let inside = [br#"{"v":["#.as_slice(), v, br#"],"model":"m"}"#].concat();
        assert_eq!(all_chunkings(&inside), Verdict::Model(b"m".to_vec()));
        if v.first() == Some(&b'"') {
            // As the model itself: the decoded string, as serde_json has it.
            let body = [br#"{"model":"#.as_slice(), v, b"}"].concat();
            let Verdict::Model(_) = all_chunkings(&body) else {
                panic!("{:?}", String::from_utf8_lossy(v))
            };
        }
    }
    for &v in N {
        assert_eq!(
            all_chunkings(v),
            Verdict::Refused(NotJson),
            "n {:?}",
            String::from_utf8_lossy(v)
        );
        for body in [
            [br#"{"model":"m","v":"#.as_slice(), v, b"}"].concat(),
            [br#"{"model":"#.as_slice(), v, b"}"].concat(),
            [br#"{"v":["#.as_slice(), v, br#"],"model":"m"}"#].concat(),
        ] {
            if v.iter().all(|b| b.is_ascii_whitespace()) && body.starts_with(br#"{"v":["#) {
                continue; // `[ ]` is an empty array
            }
            assert_eq!(
                all_chunkings(&body),
                Verdict::Refused(NotJson),
                "n {:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}

#[test]
fn corpus_bodies() {
    let cases: &[(&[u8], Result<&str, BodyError>)] = &[
        (
            br#"{"model":"Qwen3-32B","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
            Ok("Qwen3-32B"),
        ),
        (b"{\n  \"model\" : \"a\" ,\n  \"n\" : 1\n}\n", Ok("a")),
        (br#"{"MODEL":"a"}"#, Ok("a")),
        (br#"{"\u006dodel":"a"}"#, Ok("a")),
        (
            br#"{"model":"\u0041\u00e9\ud83d\ude00"}"#,
            Ok("A\u{e9}\u{1F600}"),
        ),
        (
            br#"{"a":{"model":"x","model":"y"},"b":[{"Model":1}],"model":"m"}"#,
            Ok("m"),
        ),
        (br#"{"model":"a","model":"a"}"#, Err(AmbiguousModel)),
        (br#"{"model":"a","Model":"b"}"#, Err(AmbiguousModel)),
        (br#"{"model":"a","\u004dodel":"b"}"#, Err(AmbiguousModel)),
        (br#"{"mOdEl":null,"model":"b"}"#, Err(AmbiguousModel)),
        (br#"{"mOdEl":7}"#, Err(NoModel)),
        (br#"{"model":{"name":"x"}}"#, Err(NoModel)),
        (br#"{"modelx":"a","mode":"b"}"#, Err(NoModel)),
        (br#"{}"#, Err(NoModel)),
        (br#"[{"model":"a"}]"#, Err(NotJson)),
        (br#""model""#, Err(NotJson)),
        (b"\xef\xbb\xbf{\"model\":\"a\"}", Err(NotJson)),
        (br#"{"model":"a"} {"model":"b"}"#, Err(NotJson)),
        (br#"{"model":"a","model":"b",}"#, Err(NotJson)),
    ];
    for (body, want) in cases {
        let want = match want {
            Ok(m) => Verdict::Model(m.as_bytes().to_vec()),
            Err(e) => Verdict::Refused(*e),
        };
        assert_eq!(
            all_chunkings(body),
            want,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn implementation_defined_cases() {
    // i_ numbers beyond f64: grammatical JSON (RFC 8259 section 6 lets
    // implementations limit range); serde_json refuses, Python reads inf.
    // We accept: the number is never read.
    for n in [&b"1e400"[..], b"-1e400", b"123e999999999999"] {
        let body = [br#"{"model":"m","n":"#.as_slice(), n, b"}"].concat();
        assert_eq!(oracle(&body), Oracle::NumberOutOfRange);
        assert_eq!(all_chunkings(&body), Verdict::Model(b"m".to_vec()));
    }
    // i_ a UTF-8 BOM: RFC 8259 lets parsers ignore it; serde_json refuses
    // and so do we (a BOM is not JSON text, and no API client sends one).
    let bom = b"\xef\xbb\xbf{\"model\":\"m\"}";
    assert_eq!(oracle(bom), Oracle::Is(Verdict::Refused(NotJson)));
    assert_eq!(ours(bom), Verdict::Refused(NotJson));
    // i_ nesting: 1024 levels pass, 1025 are TooDeep (serde_json, its
    // recursion limit lifted, reads any depth).
    for (levels, want) in [
        (1024, Verdict::Model(b"m".to_vec())),
        (1025, Verdict::Refused(TooDeep)),
    ] {
        let body = [
            br#"{"model":"m","x":"#.as_slice(),
            &b"[".repeat(levels - 1),
            &b"]".repeat(levels - 1),
            b"}",
        ]
        .concat();
        assert_eq!(all_chunkings(&body), want, "{levels}");
    }
    // i_ a NUL in the model: valid JSON; the model then names no policy.
    assert_eq!(
        ours(br#"{"model":"a\u0000"}"#),
        Verdict::Model(b"a\0".to_vec())
    );
    // i_ 1 MB of model: cut to 64 bytes on a character boundary.
    let long = format!("{{\"model\":\"{}\"}}", "\u{e9}".repeat(1 << 19));
    assert_eq!(
        ours(long.as_bytes()),
        Verdict::Model("\u{e9}".repeat(32).into_bytes())
    );
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-zA-Z0-9.-]{0,70}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z]{0,6}|model|Model", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A top-level key's JSON text: the model in some spelling, or another key.
fn key_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"model\"".to_string()),
        Just("\"Model\"".to_string()),
        Just("\"MODEL\"".to_string()),
        Just("\"\\u006dodel\"".to_string()),
        Just("\"mod\\u0045L\"".to_string()),
        Just("\"models\"".to_string()),
        Just("\"max_tokens\"".to_string()),
        Just("\"MAX_Completion_TOKENS\"".to_string()),
        Just("\"max\\u005foutput_tokens\"".to_string()),
        Just("\"max_tokens_\"".to_string()),
        any::<String>().prop_map(|k| serde_json::to_string(&k).unwrap()),
    ]
}

/// A value's JSON text a `Value` cannot give: integer literals beyond
/// u64, numbers written as floats, base64 media strings (data URLs, raw)
/// around the size bounds, with or without one flaw (a byte or escape that
/// makes them text, or `\/`, allowed in a data URL only), some nested.
fn extra_text() -> impl Strategy<Value = String> {
    let alpha: Vec<char> = "ABCXYZabcxyz0189+/=-_".chars().collect();
    // Lengths at the bounds: 256 raw bytes for a data URL (its head is
    // 22), 1024 for raw base64.
    let run = move |lens: &[usize]| {
        let alpha = alpha.clone();
        prop::sample::select(lens.to_vec()).prop_flat_map(move |n| {
            prop::collection::vec(prop::sample::select(alpha.clone()), n..=n)
                .prop_map(|v| v.into_iter().collect::<String>())
        })
    };
    let flaw = || {
        prop_oneof![
            3 => Just(""),
            1 => Just(" "),
            1 => Just("\\/"),
            1 => Just("\\n"),
            1 => Just("\u{e9}"),
            1 => Just(","),
            1 => Just("\\u0041"),
        ]
    };
    let put = |p: String, f: &str, at: prop::sample::Index| {
        let i = at.index(p.len() + 1);
        format!("{}{f}{}", &p[..i], &p[i..])
    };
    prop_oneof![
        Just("18446744073709551616".to_string()),
        Just("18446744073709551615".to_string()),
        Just("99999999999999999999999999".to_string()),
        Just("0".to_string()),
        Just("-0".to_string()),
        Just("12.0".to_string()),
        Just("1e3".to_string()),
        (
            run(&[232, 233, 234, 235, 300]),
            flaw(),
            any::<prop::sample::Index>()
        )
            .prop_map(move |(p, f, at)| format!("\"data:image/png;base64,{}\"", put(p, f, at))),
        (
            run(&[1022, 1023, 1024, 1025, 1100]),
            flaw(),
            any::<prop::sample::Index>()
        )
            .prop_map(move |(p, f, at)| format!("\"{}\"", put(p, f, at))),
        (run(&[242, 243, 300]), prop::bool::ANY).prop_map(|(p, k)| if k {
            format!("[{{\"url\":\"data:;base64,{p}\"}},\"{p}\"]")
        } else {
            format!("{{\"data:;base64,{p}\":1}}")
        }),
    ]
}

/// Object text built by hand, so keys may repeat (a `Value` map cannot).
fn body_text() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        3 => json_value().prop_map(Ok),
        1 => extra_text().prop_map(Err),
    ];
    (
        prop::collection::vec((key_text(), value), 0..6),
        any::<bool>(),
    )
        .prop_map(|(kv, pretty)| {
            let mut s = String::from("{");
            for (i, (k, v)) in kv.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(if pretty { "\n  " } else { "" });
                s.push_str(k);
                s.push_str(if pretty { ": " } else { ":" });
                s.push_str(&match v {
                    Ok(v) if pretty => serde_json::to_string_pretty(v).unwrap(),
                    Ok(v) => serde_json::to_string(v).unwrap(),
                    Err(text) => text.clone(),
                });
            }
            s.push('}');
            s.into_bytes()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn generated_bodies(body in body_text(), chunks in prop::collection::vec(0usize..40, 1..8)) {
        let v = check_body(&body, &mut sizes(&chunks));
        // Everything generated is JSON: only the model keys decide.
        prop_assert!(v != Verdict::Refused(NotJson), "{:?}", String::from_utf8_lossy(&body));
        check_facts(&body, &mut sizes(&chunks));
    }

    #[test]
    fn generated_values_as_bodies(v in json_value(), chunks in prop::collection::vec(1usize..40, 1..8)) {
        let body = serde_json::to_vec(&v).unwrap();
        check_body(&body, &mut sizes(&chunks));
        check_facts(&body, &mut sizes(&chunks));
    }

    #[test]
    fn mutated_bodies(
        body in body_text(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
        chunks in prop::collection::vec(0usize..20, 1..6),
    ) {
        let mut body = body;
        for (at, byte, op) in edits {
            let i = at.index(body.len() + 1);
            match op {
                0 if i < body.len() => body[i] = byte,
                1 => body.insert(i, byte),
                _ if i < body.len() => { body.remove(i); }
                _ => body.push(byte),
            }
        }
        check_body(&body, &mut sizes(&chunks));
        check_facts(&body, &mut sizes(&chunks));
    }
}

// ---- Token estimate facts (docs/bodies.md, "Token estimate facts") ----

/// The facts by the rule, computed plainly: serde_json reads the tree and
/// gives every value's raw text (`RawValue`), the rule is applied to that.
/// `None` when serde_json refuses the body (see bodycheck's differences).
#[derive(Debug, PartialEq, Eq)]
struct RefFacts {
    bytes: u64,
    media_bytes: u64,
    media_items: u32,
    max_output: Option<u64>,
}

/// Entries of an object as raw values, in order, duplicates kept.
struct RawEntries(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for RawEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<RawEntries, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, Box<RawValue>>()? {
                    v.push(e);
                }
                Ok(RawEntries(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn is_b64(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"+/=-_".contains(&c)
}

/// Whether a string value, as written between its quotes, is media.
fn media_rule(raw: &str) -> bool {
    if let Some(rest) = raw.strip_prefix("data:") {
        // (a) data:[^,]*;base64, then alphabet and `\/` only, 256 bytes.
        let Some(comma) = rest.find(',') else {
            return false;
        };
        if !rest[..comma].ends_with(";base64") || raw.len() < 256 {
            return false;
        }
        let p = &rest.as_bytes()[comma + 1..];
        let mut i = 0;
        while i < p.len() {
            if p[i] == b'\\' && p.get(i + 1) == Some(&b'/') {
                i += 2;
            } else if is_b64(p[i]) {
                i += 1;
            } else {
                return false;
            }
        }
        true
    } else {
        // (b) raw base64, 1024 bytes.
        raw.len() >= 1024 && raw.bytes().all(is_b64)
    }
}

/// Every string value under `raw` (a value's text), at any depth.
fn walk(raw: &str, items: &mut u32, bytes: &mut u64) {
    match raw.as_bytes()[0] {
        b'"' => {
            let inner = &raw[1..raw.len() - 1];
            if media_rule(inner) {
                *items += 1;
                *bytes += inner.len() as u64;
            }
        }
        b'{' => {
            let RawEntries(e) = bodycheck::parse(raw.as_bytes(), true).unwrap();
            for (_, v) in e {
                walk(v.get(), items, bytes);
            }
        }
        b'[' => {
            let a: Vec<Box<RawValue>> = bodycheck::parse(raw.as_bytes(), true).unwrap();
            for v in a {
                walk(v.get(), items, bytes);
            }
        }
        _ => {}
    }
}

fn reference_facts(body: &[u8]) -> Option<RefFacts> {
    let RawEntries(top) = bodycheck::parse(body, true).ok()?;
    let mut max_output: Option<u64> = None;
    let (mut items, mut bytes) = (0, 0);
    for (k, v) in &top {
        let cap_key = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .any(|n| k.eq_ignore_ascii_case(n));
        let t = v.get();
        if cap_key && t.bytes().all(|b| b.is_ascii_digit()) {
            // Digits only (JSON has no empty number): fails by overflow only.
            let n = t.parse::<u64>().unwrap_or(u64::MAX);
            max_output = Some(max_output.map_or(n, |m| m.max(n)));
        }
        walk(t, &mut items, &mut bytes);
    }
    Some(RefFacts {
        bytes: body.len() as u64,
        media_bytes: bytes,
        media_items: items,
        max_output,
    })
}

/// For an accepted body: the facts fed in the chunk sizes given equal the
/// reference's.
fn check_facts(body: &[u8], sizes: &mut impl Iterator<Item = usize>) {
    let (v, facts) = bodycheck::chunked_facts(body, sizes);
    let (Verdict::Model(_), Some(f)) = (v, facts) else {
        return;
    };
    let Some(want) = reference_facts(body) else {
        return; // serde_json refuses 1e400: no reference
    };
    let got = RefFacts {
        bytes: f.bytes,
        media_bytes: f.media_bytes,
        media_items: f.media_items,
        max_output: f.max_output,
    };
    assert_eq!(got, want, "{:?}", String::from_utf8_lossy(body));
}

#[test]
fn facts_against_the_reference_corpus() {
    let b64 = |n: usize| -> String {
        (0..n)
            .map(|i| b"AZaz09+/=-_Qx"[i * 5 % 13] as char)
            .collect()
    };
    let url = |n: usize| format!("data:image/png;base64,{}", b64(n));
    let bodies = [
        format!(r#"{{"model":"m","max_tokens":512,"i":"{}"}}"#, url(300)),
        format!(
            r#"{{"model":"m","MAX_TOKENS":5,"max_tokens":50,"a":["{}"]}}"#,
            b64(1024)
        ),
        format!(
            r#"{{"model":"m","a":{{"max_tokens":7,"x":"{}"}}}}"#,
            b64(1023)
        ),
        format!(
            r#"{{"model":"m","max_output_tokens":99999999999999999999999,"u":"{}\/x"}}"#,
            url(300)
        ),
        format!(
            r#"{{"model":"m","max_completion_tokens":1.0,"u":"{}\n"}}"#,
            url(300)
        ),
        format!(
            r#"{{"model":"m","max\u005ftokens":-1,"max_tokens":3,"u":"data:a\u002cb;base64,{}"}}"#,
            b64(300)
        ),
        format!(r#"{{"model":"m","{}":1,"max_tokens":"9"}}"#, b64(1100)),
    ];
    let mut media = 0;
    for body in &bodies {
        let body = body.as_bytes();
        assert_eq!(all_chunkings(body), Verdict::Model(b"m".to_vec()));
        check_facts(body, &mut std::iter::repeat(usize::MAX));
        check_facts(body, &mut sizes(&[1, 7, 0, 64, 3]));
        media += reference_facts(body).unwrap().media_items;
    }
    assert_eq!(media, 4);
}

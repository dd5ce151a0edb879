//! The body-scan fuzz check (tests/bodycheck) on a few thousand generated
//! inputs, so plain `cargo test` exercises it without cargo-fuzz: JSON-ish
//! bodies assembled from tokens, then mutated (bytes flipped, inserted,
//! deleted, spliced), fed in the chunking the first byte picks.

use crate::bodycheck;

use std::collections::HashMap;

use bodycheck::Verdict;
use tollgate::BodyError;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const KEYS: &[&str] = &[
    "\"model\"",
    "\"Model\"",
    "\"MODEL\"",
    "\"\\u006dodel\"",
    "\"mode\"",
    "\"models\"",
    "\"messages\"",
    "\"n\"",
    "\"\"",
    "\"\\u00e9\"",
    "\"mod\\u0065l\"",
];

const SCALARS: &[&str] = &[
    "\"Qwen3-32B\"",
    "\"\"",
    "\"a\\\"b\\\\c\\/\\n\"",
    "\"\\ud83d\\ude00\"",
    "\"\\u4e2d\"",
    "\"caf\u{e9} \u{1F600}\"",
    "0",
    "-0",
    "12",
    "-3.25e+8",
    "1E-2",
    "0.5",
    "true",
    "false",
    "null",
    "1e400",
];

/// Scalars that are not JSON, now and then.
const BAD: &[&str] = &[
    "\"\\ud800\"",
    "\"\\udc00x\"",
    "01",
    "1.",
    "-",
    "\"\x01\"",
    "\"\\x\"",
    "+1",
];

fn value(rng: &mut Rng, depth: u32, out: &mut String) {
    match if depth > 4 { 0 } else { rng.below(5) } {
        0 | 1 if rng.below(40) == 0 => out.push_str(rng.pick(BAD)),
        0 | 1 => out.push_str(rng.pick(SCALARS)),
        2 => {
            out.push('[');
            for i in 0..rng.below(4) {
                if i > 0 {
                    out.push(',');
                }
                value(rng, depth + 1, out);
            }
            out.push(']');
        }
        _ => object(rng, depth + 1, out),
    }
}

fn object(rng: &mut Rng, depth: u32, out: &mut String) {
    out.push('{');
    for i in 0..rng.below(5) {
        if i > 0 {
            out.push(',');
        }
        out.push_str(rng.pick(&[" ", "", "\n  "]));
        out.push_str(rng.pick(KEYS));
        out.push(':');
        value(rng, depth, out);
    }
    out.push('}');
}

fn mutate(rng: &mut Rng, body: &mut Vec<u8>) {
    const BYTES: &[u8] = b"{}[]:,\"\\ 0-.eE+uUd\x00\x1f\x7f\x80\xbf\xc3\xe0\xed\xf0\xf4\xff";
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(body.len() + 1);
        match rng.below(4) {
            0 if at < body.len() => body[at] = BYTES[rng.below(BYTES.len())],
            1 => body.insert(at, BYTES[rng.below(BYTES.len())]),
            2 if at < body.len() => {
                body.remove(at);
            }
            _ => {
                let from = rng.below(body.len() + 1);
                let len = rng.below(8).min(body.len() - from);
                let piece = body[from..from + len].to_vec();
                body.splice(at..at, piece);
            }
        }
    }
}

#[test]
fn generated_and_mutated_bodies() {
    // Fixed seed: a failure reproduces exactly.
    let mut rng = Rng(0x7011_6a7e_b0d1_0001);
    let mut seen: HashMap<&'static str, u32> = HashMap::new();
    for case in 0..20_000u32 {
        let mut s = String::new();
        object(&mut rng, 0, &mut s);
        let mut body = s.into_bytes();
        if case % 4 == 0 {
            mutate(&mut rng, &mut body);
        }
        let mut input = vec![rng.next() as u8];
        input.extend_from_slice(&body);
        let kind = match bodycheck::check(&input) {
            Verdict::Model(_) => "model",
            Verdict::Refused(BodyError::NotJson) => "not_json",
            Verdict::Refused(BodyError::NoModel) => "no_model",
            Verdict::Refused(BodyError::AmbiguousModel) => "ambiguous",
            Verdict::Refused(BodyError::TooDeep) => "too_deep",
            // TooLarge (the scanner has no cap), and any reason added later.
            Verdict::Refused(other) => unreachable!("not a scanner verdict: {other:?}"),
        };
        *seen.entry(kind).or_default() += 1;
    }
    // Every verdict but depth is reached often, so the check compared
    // something for each.
    for k in ["model", "not_json", "no_model", "ambiguous"] {
        assert!(seen.get(k).copied().unwrap_or(0) > 100, "{seen:?}");
    }
}

#[test]
fn random_bytes_and_deep_bodies() {
    let mut rng = Rng(0x7011_6a7e_b0d1_0002);
    for case in 0..1000usize {
        let n = rng.below(300);
        let mut input: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        if case % 2 == 0 && !input.is_empty() {
            // Mostly structural bytes, so some get past the first one.
            for b in input.iter_mut().skip(1) {
                *b = b"{}[]\":,1 a\\"[(*b % 11) as usize];
            }
            input[1] = b'{';
        }
        bodycheck::check(&input);
    }
    // Depth around the bound, with and without a syntax error before it.
    for levels in [1000usize, 1023, 1024, 1025, 3000] {
        let mut b = vec![7u8];
        b.extend_from_slice(b"{\"model\":\"m\",\"x\":");
        b.extend(std::iter::repeat_n(b'[', levels));
        b.extend(std::iter::repeat_n(b']', levels));
        b.push(b'}');
        let v = bodycheck::check(&b);
        let too_deep = levels + 1 > tollgate::body::DEPTH_MAX;
        assert_eq!(
            v == Verdict::Refused(BodyError::TooDeep),
            too_deep,
            "{levels}"
        );
        b[20] = b'}';
        bodycheck::check(&b);
    }
}

//! The conformance table's reading and matching, shared by every Rust
//! suite that runs it (tests/checks/conformance.rs: the Rust API and the C ABI;
//! tests/tower.rs: the tower layer over real HTTP).

use serde_json::Value;
use tollgate::Policy;

/// The clock every run of the table decides at.
pub const NOW: u64 = 1_796_126_400_000;

pub fn table() -> (Policy, Vec<Value>) {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/tests/conformance.json")).unwrap(),
    )
    .unwrap();
    let policy = Policy::load(format!("{root}/{}", doc["policy"].as_str().unwrap())).unwrap();
    (policy, doc["cases"].as_array().unwrap().clone())
}

/// A received answer: status (200 = passed upstream), outcome, headers,
/// body.
pub struct Got {
    pub status: u16,
    pub outcome: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

fn matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(w), Value::String(g)) => match w.strip_prefix("re:") {
            Some(re) => regex_lite_match(re, g),
            None => w == g,
        },
        (Value::Object(w), Value::Object(g)) => {
            w.len() == g.len()
                && w.iter()
                    .all(|(k, v)| g.get(k).is_some_and(|gv| matches(v, gv)))
        }
        _ => want == got,
    }
}

/// The few regular expressions the table uses: `^`, `$`, literal text with
/// `\` escapes, and `[0-9]+`. Enough, and no dependency.
fn regex_lite_match(re: &str, s: &str) -> bool {
    fn go(re: &[u8], s: &[u8], anchored_end: bool) -> bool {
        if re.is_empty() {
            return !anchored_end || s.is_empty();
        }
        if re == b"$" {
            return s.is_empty();
        }
        if let Some(rest) = re.strip_prefix(b"[0-9]+") {
            let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
            return (1..=n).rev().any(|k| go(rest, &s[k..], anchored_end));
        }
        let (lit, rest) = if re[0] == b'\\' && re.len() > 1 {
            (re[1], &re[2..])
        } else {
            (re[0], &re[1..])
        };
        !s.is_empty() && s[0] == lit && go(rest, &s[1..], anchored_end)
    }
    let re = re.strip_prefix('^').expect("patterns are anchored");
    go(re.as_bytes(), s.as_bytes(), false)
}

pub fn check(case: &Value, got: &Got) {
    let name = case["name"].as_str().unwrap();
    let want = &case["expect"];
    assert_eq!(
        got.status as u64,
        want["status"].as_u64().unwrap(),
        "{name}: status"
    );
    assert_eq!(
        got.outcome,
        want["outcome"].as_str().unwrap(),
        "{name}: outcome"
    );
    for (h, v) in want["headers"].as_object().unwrap() {
        let g = got.headers.iter().find(|(n, _)| n == h);
        let g = g.unwrap_or_else(|| panic!("{name}: no header {h} in {:?}", got.headers));
        assert!(
            matches(v, &Value::String(g.1.clone())),
            "{name}: {h}: {} vs {v}",
            g.1
        );
    }
    for h in want["absent"].as_array().into_iter().flatten() {
        let h = h.as_str().unwrap();
        assert!(
            !got.headers.iter().any(|(n, _)| n == h),
            "{name}: header {h} sent"
        );
    }
    match (&want["body"], &got.body) {
        (Value::Null, None) => {}
        (w, Some(b)) => {
            let g: Value = serde_json::from_str(b).unwrap_or_else(|e| panic!("{name}: {e}: {b}"));
            assert!(matches(w, &g), "{name}: body {b}\nwant {w}");
        }
        (w, None) => panic!("{name}: passed upstream, expected body {w}"),
    }
}

/// The case's method, account, tier and body.
pub fn request(case: &Value) -> (String, Option<String>, String, String) {
    let r = &case["request"];
    (
        r["method"].as_str().unwrap().into(),
        r["account"].as_str().map(String::from),
        r["tier"].as_str().unwrap().into(),
        r["body"].as_str().unwrap().into(),
    )
}

//! Shared output: the JSON writer for `--json`, aligned tables, indented
//! blocks and English plurals. Client-supplied strings are escaped by the
//! caller (see `escape`) before they get here.

use std::fmt::Write as _;

use serde::Serialize;

/// Prints `value` as one line of JSON on stdout.
pub fn json(value: &impl Serialize) {
    // Our output types hold only strings, numbers, options and vectors:
    // serialising them cannot fail.
    println!(
        "{}",
        serde_json::to_string(value).expect("output serialises to JSON")
    );
}

/// Left-aligned columns under a header row; the last column is not padded.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let n = cells.len();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                write!(out, "{c:<width$}  ", width = w[i]).unwrap();
            }
        }
        out.push('\n');
    };
    line(head);
    for r in rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// Every non-blank line of `text` prefixed with `by`.
pub fn indent(text: &str, by: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim().is_empty() {
                "\n".to_string()
            } else {
                format!("{by}{l}\n")
            }
        })
        .collect()
}

/// "" for one, "s" otherwise.
pub fn s(n: impl Into<u64>) -> &'static str {
    if n.into() == 1 {
        ""
    } else {
        "s"
    }
}

//! One way to show a client-supplied string (account ids, model names):
//! whatever bytes a client sent, what reaches the operator's terminal or a
//! script is plain text that cannot move the cursor, clear the screen or
//! pass for another name.
//!
//! Escapes: `\\` for a backslash; `\xHH` for control bytes, DEL and every
//! byte that is not UTF-8; `\u{HHHH}` for C1 controls and, on a terminal,
//! for code points that print nothing (format characters, separators,
//! default-ignorable and private-use code points, noncharacters). Every
//! other character is itself, so ordinary names read unchanged and the
//! escaped form maps back to exactly one byte string.

use std::fmt::Write as _;

/// Where the text goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    /// A terminal (or a log read in one): invisible code points escaped too.
    Terminal,
    /// A JSON string: invisible code points kept (JSON carries them intact),
    /// control bytes and non-UTF-8 bytes escaped as on a terminal.
    Json,
}

/// `bytes` for display on a terminal.
pub fn term(bytes: &[u8]) -> String {
    escape(bytes, To::Terminal)
}

/// `bytes` as the value of a JSON string.
pub fn json(bytes: &[u8]) -> String {
    escape(bytes, To::Json)
}

pub fn escape(bytes: &[u8], to: To) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\0'..='\x1f' | '\x7f' => write!(out, "\\x{:02x}", c as u32).unwrap(),
                '\u{80}'..='\u{9f}' => write!(out, "\\u{{{:x}}}", c as u32).unwrap(),
                c if to == To::Terminal && invisible(c) => {
                    write!(out, "\\u{{{:x}}}", c as u32).unwrap()
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            write!(out, "\\x{b:02x}").unwrap();
        }
    }
    out
}

/// Code points a terminal shows as nothing, or as blank space that looks
/// like another character: Unicode's format characters (Cf), line and
/// paragraph separators, spaces other than U+0020, default-ignorable code
/// points, private use and noncharacters. Sorted, inclusive ranges.
const INVISIBLE: &[(u32, u32)] = &[
    (0x00A0, 0x00A0),
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x115F, 0x1160),
    (0x1680, 0x1680),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x2000, 0x200F),
    (0x2028, 0x202F),
    (0x205F, 0x206F),
    (0x3000, 0x3000),
    (0x3164, 0x3164),
    (0xD800, 0xF8FF), // surrogates (never a char) and private use
    (0xFDD0, 0xFDEF),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFFB),
    (0xFFFE, 0xFFFF),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
    (0xF0000, 0x10FFFF),
];

fn invisible(c: char) -> bool {
    let c = c as u32;
    // Every plane's last two code points are noncharacters.
    if c & 0xFFFE == 0xFFFE {
        return true;
    }
    INVISIBLE
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_unchanged() {
        for s in ["alice", "acct-42", "Qwen3-32B", "ünïcödé", "日本語", "a b"] {
            assert_eq!(term(s.as_bytes()), s);
            assert_eq!(json(s.as_bytes()), s);
        }
    }

    #[test]
    fn controls_and_bad_bytes_are_escaped() {
        assert_eq!(term(b"x\x1b[2J\ny"), "x\\x1b[2J\\x0ay");
        assert_eq!(term(b"a\x7f\\b"), "a\\x7f\\\\b");
        assert_eq!(term(b"\xff\xc3("), "\\xff\\xc3(");
        assert_eq!(json(b"\x00\xff"), "\\x00\\xff");
        assert_eq!(term("\u{9b}2J".as_bytes()), "\\u{9b}2J");
        assert_eq!(json("\u{85}".as_bytes()), "\\u{85}");
    }

    #[test]
    fn invisible_code_points_are_escaped_on_terminals() {
        let s = "ad\u{200b}min\u{202e}\u{feff}\u{e000}\u{1fffe}";
        assert_eq!(
            term(s.as_bytes()),
            "ad\\u{200b}min\\u{202e}\\u{feff}\\u{e000}\\u{1fffe}"
        );
        assert_eq!(json(s.as_bytes()), s);
        assert_eq!(term("\u{a0}\u{3000}".as_bytes()), "\\u{a0}\\u{3000}");
    }
}

//! Request bodies: one streaming pass over a JSON request body that
//! validates all of it, as strictly as serde_json does (RFC 8259: no
//! trailing commas, comments, NaN, leading zeros, BOM, invalid UTF-8 or
//! lone surrogates; only whitespace after the value), and picks out the
//! top-level `"model"` string.
//!
//! The rule (docs/bodies.md): the model is the value of the one top-level
//! key that equals `model` after JSON unescaping and ASCII case folding.
//! Two or more such keys are [`BodyError::AmbiguousModel`], because
//! upstream parsers disagree on which one wins (Go's encoding/json: last,
//! case-insensitive; Python json and serde_json: last exact match;
//! cJSON/simdjson: first). Keys inside other values are not the model.
//!
//! Fixed memory (nesting is a bit stack of [`DEPTH_MAX`] levels), no heap,
//! no recursion; chunks of any size, a token may straddle them. Strings,
//! which are most of a prompt-laden body, are skipped 16 bytes at a time.

use core::fmt;

/// Bytes of the decoded model value kept; longer values are cut there (on
/// a character boundary). Longer than any policy model name, so a cut
/// value is an unknown model, and the echo in the answer stays bounded.
pub const MODEL_MAX: usize = 64;

/// Most nesting levels accepted (the top-level object is level 1).
pub const DEPTH_MAX: usize = 1024;

/// Why a body was refused. The text never echoes client bytes. More
/// reasons may come (match with a `_` arm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BodyError {
    /// Not a JSON object: a syntax error, invalid UTF-8 in a string, bytes
    /// after the value, an empty body, or a top-level value that is valid
    /// JSON but not an object.
    NotJson,
    /// The object has no top-level `"model"` key, or its value is not a
    /// string.
    NoModel,
    /// More than one top-level key names the model (equal to `model`
    /// ignoring ASCII case and escapes).
    AmbiguousModel,
    /// Nesting deeper than [`DEPTH_MAX`] levels.
    TooDeep,
    /// Longer than the binding holds to find the model (its own cap, e.g.
    /// the tower layer's `max_body_bytes`): the scanner itself has none,
    /// so only a binding that buffers reports this, before scanning.
    TooLarge,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::NotJson => f.write_str(
                "the request body is not a JSON object (invalid JSON, or a top-level value that is not an object)",
            ),
            BodyError::NoModel => {
                f.write_str("the request body has no top-level \"model\" key with a string value")
            }
            BodyError::AmbiguousModel => f.write_str(
                "the request body names the model more than once (keys equal to \"model\" ignoring case or escapes)",
            ),
            BodyError::TooDeep => {
                write!(f, "the request body nests deeper than {DEPTH_MAX} levels")
            }
            BodyError::TooLarge => f.write_str("the request body is larger than the gateway reads"),
        }
    }
}

impl std::error::Error for BodyError {}

/// A decoded model value: at most [`MODEL_MAX`] bytes of UTF-8.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ModelBuf {
    len: u8,
    bytes: [u8; MODEL_MAX],
}

impl ModelBuf {
    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The value as text (always valid UTF-8: JSON strings are, and a cut
    /// falls on a character boundary).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl core::ops::Deref for ModelBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for ModelBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for ModelBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The model of a whole body in one call.
pub fn model_of(body: &[u8]) -> Result<ModelBuf, BodyError> {
    let mut s = ModelScanner::new();
    s.feed(body)?;
    let m = s.finish()?;
    let mut out = ModelBuf {
        len: m.len() as u8,
        bytes: [0; MODEL_MAX],
    };
    out.bytes[..m.len()].copy_from_slice(m);
    Ok(out)
}

/// Where the scanner is. The states that skip whitespace come first, so
/// one comparison tells them apart.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u8)]
enum St {
    /// Before the top-level value.
    Start,
    /// After `{`: a key or `}`.
    ObjFirst,
    /// After `,` in an object: a key.
    ObjKey,
    /// After a key.
    Colon,
    /// After `:`, or `,` in an array: a value.
    Value,
    /// After `[`: a value or `]`.
    ArrFirst,
    /// After a value inside a container: `,` or its closing bracket.
    After,
    /// After the top-level value: only whitespace may follow.
    End,
    /// Inside a string.
    Str,
    /// After a backslash.
    Esc,
    /// In the hex digits of `\uXXXX`.
    Hex,
    /// After a high surrogate escape: its `\` of the low half is due...
    SurEsc,
    /// ...then its `u`.
    SurU,
    /// Inside a multi-byte UTF-8 sequence cut by a chunk boundary.
    Utf,
    NumMinus,
    NumZero,
    NumInt,
    NumDot,
    NumFrac,
    NumE,
    NumESign,
    NumExp,
    /// Inside `true`, `false` or `null`.
    Lit,
    /// Refused: `err` says why.
    Failed,
}

/// What the current string is to us.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// A value nobody needs.
    Value,
    /// A key below the top level.
    Key,
    /// A top-level key: compared against "model".
    TopKey,
    /// The value of the (first) top-level model key: kept.
    Model,
}

/// What the model key's value turned out to be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    None,
    Str,
    Other,
}

/// `key_match` once the key can no longer be "model".
const KEY_NO: u8 = 0xff;

/// The streaming scanner. Feed it the body in chunks of any size, then
/// call [`finish`](ModelScanner::finish). About 240 bytes, no heap.
///
/// Syntax errors and [`BodyError::TooDeep`] are found by `feed` at the
/// byte where they occur; [`BodyError::NoModel`] and
/// [`BodyError::AmbiguousModel`] only by `finish`, once the whole body is
/// known to be JSON (so an invalid body is always `NotJson`, whatever keys
/// it has). Errors are sticky: once one is returned, every later call
/// returns it again.
#[derive(Clone, Debug)]
pub struct ModelScanner {
    st: St,
    err: Option<BodyError>,
    role: Role,
    /// Open containers; bit `d` of `kinds` is set when level `d` is an
    /// array.
    depth: u32,
    kinds: [u64; DEPTH_MAX / 64],
    /// `\uXXXX`: digits still due, the code so far, and a high surrogate
    /// waiting for its low half (0: none).
    hex_left: u8,
    code: u32,
    high: u32,
    /// A UTF-8 sequence cut by a chunk boundary: continuation bytes still
    /// due, and the range the next one must be in.
    utf_need: u8,
    utf_lo: u8,
    utf_hi: u8,
    /// `true`, `false` or `null`, and how much of it has been read.
    lit: &'static [u8],
    lit_pos: u8,
    /// How many bytes of the top-level key being read matched "model"
    /// (ASCII case folded), or KEY_NO.
    key_match: u8,
    /// The next value is the first model key's.
    model_next: bool,
    /// Top-level model keys seen, saturating at 2.
    models: u8,
    model_kind: Kind,
    model_cut: bool,
    model_len: u8,
    model: [u8; MODEL_MAX],
}

impl Default for ModelScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelScanner {
    /// A scanner at the start of a body.
    pub const fn new() -> ModelScanner {
        ModelScanner {
            st: St::Start,
            err: None,
            role: Role::Value,
            depth: 0,
            kinds: [0; DEPTH_MAX / 64],
            hex_left: 0,
            code: 0,
            high: 0,
            utf_need: 0,
            utf_lo: 0,
            utf_hi: 0,
            lit: b"",
            lit_pos: 0,
            key_match: KEY_NO,
            model_next: false,
            models: 0,
            model_kind: Kind::None,
            model_cut: false,
            model_len: 0,
            model: [0; MODEL_MAX],
        }
    }

    /// Scans the next `chunk` of the body. `Err` is final: the body is
    /// refused whatever follows.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        if let Some(e) = self.err {
            return Err(e);
        }
        self.run(chunk).map_err(|e| self.fail(e))
    }

    /// The body has ended: the decoded model (UTF-8, at most
    /// [`MODEL_MAX`] bytes), or why the body is refused.
    pub fn finish(&mut self) -> Result<&[u8], BodyError> {
        if let Some(e) = self.err {
            return Err(e);
        }
        let verdict = if self.st != St::End {
            Err(BodyError::NotJson)
        } else if self.models >= 2 {
            Err(BodyError::AmbiguousModel)
        } else if self.model_kind != Kind::Str {
            Err(BodyError::NoModel)
        } else {
            Ok(())
        };
        if let Err(e) = verdict {
            return Err(self.fail(e));
        }
        if self.model_cut {
            // The whole value is valid UTF-8, so the only fault a prefix
            // can have is a sequence cut at its end: drop it.
            if let Err(e) = core::str::from_utf8(&self.model[..self.model_len as usize]) {
                self.model_len = e.valid_up_to() as u8;
            }
        }
        Ok(&self.model[..self.model_len as usize])
    }

    fn fail(&mut self, e: BodyError) -> BodyError {
        self.err = Some(e);
        self.st = St::Failed;
        e
    }

    fn run(&mut self, buf: &[u8]) -> Result<(), BodyError> {
        use BodyError::NotJson;
        let n = buf.len();
        let mut i = 0;
        while i < n {
            let c = buf[i];
            if self.st <= St::End && is_ws(c) {
                i += 1;
                while i < n && is_ws(buf[i]) {
                    i += 1;
                }
                continue;
            }
            match self.st {
                St::Start => {
                    if c != b'{' {
                        return Err(NotJson);
                    }
                    self.push(false)?;
                    self.st = St::ObjFirst;
                }
                St::ObjFirst | St::ObjKey => match c {
                    b'"' => self.key_start(),
                    b'}' if self.st == St::ObjFirst => self.close(),
                    _ => return Err(NotJson),
                },
                St::Colon => {
                    if c != b':' {
                        return Err(NotJson);
                    }
                    self.st = St::Value;
                }
                St::Value => self.value_start(c)?,
                St::ArrFirst => {
                    if c == b']' {
                        self.close();
                    } else {
                        self.value_start(c)?;
                    }
                }
                St::After => {
                    let array = self.top_is_array();
                    match c {
                        b',' if array => self.st = St::Value,
                        b',' => {
                            // `,"` in an object: start the key now (one
                            // dispatch less per entry).
                            if buf.get(i + 1) == Some(&b'"') {
                                i += 1;
                                self.key_start();
                            } else {
                                self.st = St::ObjKey;
                            }
                        }
                        b']' if array => self.close(),
                        b'}' if !array => self.close(),
                        _ => return Err(NotJson),
                    }
                }
                St::End | St::Failed => return Err(NotJson),
                St::Str => {
                    let j = i + plain_run(&buf[i..]);
                    if j > i {
                        self.take(&buf[i..j]);
                        i = j;
                        if i == n {
                            break;
                        }
                    }
                    match buf[i] {
                        b'"' => {
                            self.string_end();
                            // `":` after a key: take the colon now.
                            if self.st == St::Colon && buf.get(i + 1) == Some(&b':') {
                                i += 1;
                                self.st = St::Value;
                            }
                        }
                        b'\\' => match buf.get(i + 1).and_then(|&e| simple_escape(e)) {
                            // `\n` and the like: decoded in place, still
                            // in the string.
                            Some(b) => {
                                i += 1;
                                self.take(&[b]);
                            }
                            None => self.st = St::Esc,
                        },
                        0x80.. => {
                            // Non-ASCII text: validate the run up to the
                            // next quote, backslash or control byte at once.
                            let end = i + text_run(&buf[i..]);
                            match core::str::from_utf8(&buf[i..end]) {
                                Ok(_) => self.take(&buf[i..end]),
                                // A sequence cut by the end of the chunk
                                // continues in the next one.
                                Err(e) if e.error_len().is_none() && end == n => {
                                    let ok = i + e.valid_up_to();
                                    self.take(&buf[i..ok]);
                                    for &b in &buf[ok..n] {
                                        self.utf8_byte(b)?;
                                    }
                                }
                                Err(_) => return Err(NotJson),
                            }
                            i = end;
                            continue;
                        }
                        _ => return Err(NotJson),
                    }
                }
                St::Utf => self.utf8_byte(c)?,
                St::Esc => {
                    if c == b'u' {
                        self.hex_start();
                    } else {
                        let b = simple_escape(c).ok_or(NotJson)?;
                        self.take(&[b]);
                        self.st = St::Str;
                    }
                }
                St::Hex => {
                    let d = match c {
                        b'0'..=b'9' => c - b'0',
                        b'a'..=b'f' => c - b'a' + 10,
                        b'A'..=b'F' => c - b'A' + 10,
                        _ => return Err(NotJson),
                    };
                    self.code = self.code << 4 | d as u32;
                    self.hex_left -= 1;
                    if self.hex_left == 0 {
                        self.hex_end()?;
                    }
                }
                St::SurEsc => {
                    if c != b'\\' {
                        return Err(NotJson);
                    }
                    self.st = St::SurU;
                }
                St::SurU => {
                    if c != b'u' {
                        return Err(NotJson);
                    }
                    self.hex_start();
                }
                St::NumMinus => {
                    self.st = match c {
                        b'0' => St::NumZero,
                        b'1'..=b'9' => St::NumInt,
                        _ => return Err(NotJson),
                    }
                }
                St::NumInt | St::NumFrac | St::NumExp if c.is_ascii_digit() => {
                    i += 1;
                    while i < n && buf[i].is_ascii_digit() {
                        i += 1;
                    }
                    continue;
                }
                St::NumZero | St::NumInt if c == b'.' => self.st = St::NumDot,
                St::NumZero | St::NumInt | St::NumFrac if c == b'e' || c == b'E' => {
                    self.st = St::NumE
                }
                St::NumDot => {
                    if !c.is_ascii_digit() {
                        return Err(NotJson);
                    }
                    self.st = St::NumFrac;
                }
                St::NumE if c == b'+' || c == b'-' => self.st = St::NumESign,
                St::NumE | St::NumESign => {
                    if !c.is_ascii_digit() {
                        return Err(NotJson);
                    }
                    self.st = St::NumExp;
                }
                St::NumZero | St::NumInt | St::NumFrac | St::NumExp => {
                    // The number ended before `c`: read `c` as what follows.
                    self.value_end();
                    continue;
                }
                St::Lit => {
                    if c != self.lit[self.lit_pos as usize] {
                        return Err(NotJson);
                    }
                    self.lit_pos += 1;
                    if self.lit_pos as usize == self.lit.len() {
                        self.value_end();
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }

    fn push(&mut self, array: bool) -> Result<(), BodyError> {
        let d = self.depth as usize;
        if d == DEPTH_MAX {
            return Err(BodyError::TooDeep);
        }
        let bit = 1u64 << (d % 64);
        if array {
            self.kinds[d / 64] |= bit;
        } else {
            self.kinds[d / 64] &= !bit;
        }
        self.depth += 1;
        Ok(())
    }

    fn top_is_array(&self) -> bool {
        let d = self.depth as usize - 1;
        self.kinds[d / 64] >> (d % 64) & 1 == 1
    }

    /// A closing bracket that matches the open container.
    fn close(&mut self) {
        self.depth -= 1;
        self.value_end();
    }

    fn value_end(&mut self) {
        self.st = if self.depth == 0 { St::End } else { St::After };
    }

    fn key_start(&mut self) {
        if self.depth == 1 {
            self.role = Role::TopKey;
            self.key_match = 0;
        } else {
            self.role = Role::Key;
        }
        self.st = St::Str;
    }

    fn value_start(&mut self, c: u8) -> Result<(), BodyError> {
        self.role = Role::Value;
        if self.model_next {
            self.model_next = false;
            if c == b'"' {
                self.model_kind = Kind::Str;
                self.role = Role::Model;
            } else {
                self.model_kind = Kind::Other;
            }
        }
        self.st = match c {
            b'{' => {
                self.push(false)?;
                St::ObjFirst
            }
            b'[' => {
                self.push(true)?;
                St::ArrFirst
            }
            b'"' => St::Str,
            b'-' => St::NumMinus,
            b'0' => St::NumZero,
            b'1'..=b'9' => St::NumInt,
            b't' | b'f' | b'n' => {
                self.lit = match c {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                self.lit_pos = 1;
                St::Lit
            }
            _ => return Err(BodyError::NotJson),
        };
        Ok(())
    }

    fn string_end(&mut self) {
        match self.role {
            Role::TopKey => {
                if self.key_match == 5 {
                    self.models = (self.models + 1).min(2);
                    self.model_next = self.models == 1;
                }
                self.st = St::Colon;
            }
            Role::Key => self.st = St::Colon,
            Role::Value | Role::Model => self.value_end(),
        }
        self.role = Role::Value;
    }

    /// Decoded string bytes: compared if a top-level key, kept if the
    /// model. ASCII folding matches Go's too: its only non-ASCII folds onto
    /// ASCII are to i, k and s, none of them in "model".
    fn take(&mut self, bytes: &[u8]) {
        match self.role {
            Role::TopKey => {
                for &b in bytes {
                    let k = self.key_match as usize;
                    if k >= 5 || b.to_ascii_lowercase() != b"model"[k] {
                        self.key_match = KEY_NO;
                        return;
                    }
                    self.key_match += 1;
                }
            }
            Role::Model => {
                let len = self.model_len as usize;
                let k = bytes.len().min(MODEL_MAX - len);
                self.model[len..len + k].copy_from_slice(&bytes[..k]);
                self.model_len += k as u8;
                self.model_cut |= k < bytes.len();
            }
            Role::Value | Role::Key => {}
        }
    }

    fn hex_start(&mut self) {
        self.hex_left = 4;
        self.code = 0;
        self.st = St::Hex;
    }

    /// The fourth hex digit of `\uXXXX`: a character, a high surrogate
    /// that needs its low half next, or a lone surrogate (refused, as
    /// serde_json does: it is not a character).
    fn hex_end(&mut self) -> Result<(), BodyError> {
        let code = self.code;
        let cp = if self.high != 0 {
            if !(0xdc00..=0xdfff).contains(&code) {
                return Err(BodyError::NotJson);
            }
            let cp = 0x10000 + ((self.high - 0xd800) << 10) + (code - 0xdc00);
            self.high = 0;
            cp
        } else if (0xd800..=0xdbff).contains(&code) {
            self.high = code;
            self.st = St::SurEsc;
            return Ok(());
        } else if (0xdc00..=0xdfff).contains(&code) {
            return Err(BodyError::NotJson);
        } else {
            code
        };
        let ch = char::from_u32(cp).ok_or(BodyError::NotJson)?;
        let mut utf8 = [0u8; 4];
        self.take(ch.encode_utf8(&mut utf8).as_bytes());
        self.st = St::Str;
        Ok(())
    }

    /// One byte of a UTF-8 sequence that a chunk boundary cut: a lead byte
    /// (from St::Str) or a continuation (in St::Utf). The ranges are the
    /// Unicode standard's well-formed sequences (table 3-7): no overlong
    /// forms, no surrogates, nothing above U+10FFFF.
    fn utf8_byte(&mut self, b: u8) -> Result<(), BodyError> {
        if self.st == St::Utf {
            if b < self.utf_lo || b > self.utf_hi {
                return Err(BodyError::NotJson);
            }
            self.utf_lo = 0x80;
            self.utf_hi = 0xbf;
            self.utf_need -= 1;
            if self.utf_need == 0 {
                self.st = St::Str;
            }
        } else {
            let (need, lo, hi) = utf8_lead(b).ok_or(BodyError::NotJson)?;
            self.utf_need = need;
            self.utf_lo = lo;
            self.utf_hi = hi;
            self.st = St::Utf;
        }
        self.take(&[b]);
        Ok(())
    }
}

/// A UTF-8 lead byte: how many continuation bytes follow, and the range
/// the first of them must be in (the Unicode standard's well-formed
/// sequences, table 3-7); `None` for a byte that cannot lead.
pub(crate) fn utf8_lead(b: u8) -> Option<(u8, u8, u8)> {
    Some(match b {
        0xc2..=0xdf => (1, 0x80, 0xbf),
        0xe0 => (2, 0xa0, 0xbf),
        0xe1..=0xec | 0xee..=0xef => (2, 0x80, 0xbf),
        0xed => (2, 0x80, 0x9f),
        0xf0 => (3, 0x90, 0xbf),
        0xf1..=0xf3 => (3, 0x80, 0xbf),
        0xf4 => (3, 0x80, 0x8f),
        _ => return None,
    })
}

/// The byte a one-letter escape (`\n`, `\"`...) stands for.
pub(crate) fn simple_escape(c: u8) -> Option<u8> {
    Some(match c {
        b'"' | b'\\' | b'/' => c,
        b'b' => 0x08,
        b'f' => 0x0c,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        _ => return None,
    })
}

pub(crate) fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `x` that is zero (exact: no carries cross
/// bytes).
#[inline]
fn zero_bytes(x: u64) -> u64 {
    !(((x & !HI) + !HI) | x) & HI
}

/// High bit set in each byte of `x` below 0x20, high bytes excluded.
#[inline]
fn ctrl_bytes(x: u64) -> u64 {
    !((x & !HI) + 0x60 * LO) & !x & HI
}

/// Bytes that end a run of plain string text: `"`, `\`, control bytes,
/// and (when `ascii`) bytes >= 0x80.
#[inline]
fn stops(x: u64, ascii: bool) -> u64 {
    let mut m = zero_bytes(x ^ (b'"' as u64 * LO)) | zero_bytes(x ^ (b'\\' as u64 * LO));
    m |= ctrl_bytes(x);
    if ascii {
        m |= x & HI;
    }
    m
}

/// Length of the run of bytes at the start of `s` that are not a stop
/// (see `stops`), eight at a time.
#[inline]
fn run_swar(s: &[u8], ascii: bool) -> usize {
    let mut i = 0;
    while i + 8 <= s.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[i..i + 8]);
        let m = stops(u64::from_le_bytes(w), ascii);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < s.len() {
        let c = s[i];
        if c == b'"' || c == b'\\' || c < 0x20 || (ascii && c >= 0x80) {
            break;
        }
        i += 1;
    }
    i
}

/// Length of the run of plain ASCII string bytes (not `"`, `\`, control or
/// >= 0x80) at the start of `s`: the loop that skips a prompt.
#[inline]
pub(crate) fn plain_run(s: &[u8]) -> usize {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        use core::arch::x86_64::*;
        // SAFETY (all of this block): SSE2 is part of x86_64; every load
        // reads 16 bytes inside the slice (the loops check i + 64 or
        // i + 16 <= len before reading).
        #[inline(always)]
        unsafe fn stops16(p: *const u8) -> __m128i {
            let v = _mm_loadu_si128(p.cast());
            // Signed compare: below 0x20 or at least 0x80, in one.
            _mm_or_si128(
                _mm_or_si128(
                    _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8)),
                    _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8)),
                ),
                _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)),
            )
        }
        let mut i = 0;
        // SAFETY: as above: SSE2 is baseline on x86_64, and each load is
        // bounds-checked by its loop condition.
        unsafe {
            while i + 64 <= s.len() {
                let p = s.as_ptr().add(i);
                let (a, b) = (stops16(p), stops16(p.add(16)));
                let (c, d) = (stops16(p.add(32)), stops16(p.add(48)));
                if _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d))) != 0 {
                    let bits = _mm_movemask_epi8(a) as u32 as u64
                        | (_mm_movemask_epi8(b) as u32 as u64) << 16
                        | (_mm_movemask_epi8(c) as u32 as u64) << 32
                        | (_mm_movemask_epi8(d) as u32 as u64) << 48;
                    return i + bits.trailing_zeros() as usize;
                }
                i += 64;
            }
            while i + 16 <= s.len() {
                let bits = _mm_movemask_epi8(stops16(s.as_ptr().add(i))) as u32;
                if bits != 0 {
                    return i + bits.trailing_zeros() as usize;
                }
                i += 16;
            }
        }
        i + run_swar(&s[i..], true)
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    {
        run_swar(s, true)
    }
}

/// Length of the run of string bytes, non-ASCII included, before the next
/// `"`, `\` or control byte.
#[inline]
pub(crate) fn text_run(s: &[u8]) -> usize {
    run_swar(s, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use BodyError::*;

    fn one(body: &[u8]) -> Result<Vec<u8>, BodyError> {
        model_of(body).map(|m| m.to_vec())
    }

    /// The verdict of feeding `body` in the pieces `cuts` marks.
    fn chunked(body: &[u8], cuts: &[usize]) -> Result<Vec<u8>, BodyError> {
        let mut s = ModelScanner::new();
        let mut at = 0;
        for &c in cuts.iter().chain([body.len()].iter()) {
            if s.feed(&body[at..c]).is_err() {
                break;
            }
            at = c;
        }
        s.finish().map(|m| m.to_vec())
    }

    fn ok(body: &str, model: &str) {
        assert_eq!(
            one(body.as_bytes()),
            Ok(model.as_bytes().to_vec()),
            "{body}"
        );
    }

    fn err(body: &[u8], e: BodyError) {
        assert_eq!(one(body), Err(e), "{}", String::from_utf8_lossy(body));
    }

    /// Bodies whose every chunking must give the one-shot answer.
    const BODIES: &[&[u8]] = &[
        br#"{"model":"Qwen3-32B","messages":[{"role":"user","content":"hi"}]}"#,
        b" {\"model\" : \"\\u00e9\\ud83d\\ude00\\n\\\"x\" } \r\n",
        "{\"a\":[1,-0.5e+3,true,null,{}],\"model\":\"\u{1F600}\u{e9}z\"}".as_bytes(),
        br#"{"model":"a","MODEL":"b"}"#,
        br#"{"model":1}"#,
        br#"{"x":"\ud800"}"#,
        b"{\"model\":\"\xe0\x80\xaf\"}",
        br#"{"model":"a",}"#,
        br#"{"m":12,"model":"x"} x"#,
    ];

    #[test]
    fn every_chunking_gives_the_one_shot_answer() {
        for body in BODIES {
            let want = one(body);
            for cut in 0..=body.len() {
                assert_eq!(chunked(body, &[cut]), want, "{body:?} cut at {cut}");
            }
            let bytes: Vec<usize> = (1..body.len()).collect();
            assert_eq!(chunked(body, &bytes), want, "{body:?} byte by byte");
        }
    }

    #[test]
    fn finds_the_model() {
        ok(r#"{"model":"DeepSeek-V3.1"}"#, "DeepSeek-V3.1");
        ok(r#"{"stream":true,"model":"","n":[[]]}"#, "");
        ok(r#"{"a":{"model":"inner"},"model":"outer"}"#, "outer");
        ok(r#"{"a":[{"model":"x"},{"Model":"y"}],"model":"m"}"#, "m");
        ok(r#"{"model":"m","b":{"model":"x","model":"y"}}"#, "m");
        ok(r#"{"models":"a","mode":"b","model ":"c","model":"d"}"#, "d");
        ok(
            r#"{"model":"a\/b\\c\"d\b\f\n\r\t"}"#,
            "a/b\\c\"d\u{8}\u{c}\n\r\t",
        );
        ok(
            r#"{"model":"\u00e9\u4E2D\ud83d\ude00"}"#,
            "\u{e9}\u{4e2d}\u{1F600}",
        );
        ok(r#"{"\u006dodel":"esc"}"#, "esc");
        ok(r#"{"MODEL":"upper"}"#, "upper");
    }

    #[test]
    fn ambiguity() {
        err(br#"{"model":"a","model":"a"}"#, AmbiguousModel);
        err(br#"{"model":"a","Model":"b"}"#, AmbiguousModel);
        err(br#"{"MODEL":"a","model":"b"}"#, AmbiguousModel);
        err(br#"{"model":"a","\u006dodel":"b"}"#, AmbiguousModel);
        err(br#"{"model":"a","\u004Dodel":"b"}"#, AmbiguousModel);
        err(br#"{"model":"a","mOdEl":null}"#, AmbiguousModel);
        err(br#"{"mOdEl":{},"model":"a"}"#, AmbiguousModel);
        err(br#"{"model":1,"model":2,"model":"x"}"#, AmbiguousModel);
        // One model key whose value is not a string.
        err(br#"{"mOdEl":7}"#, NoModel);
        err(br#"{"model":null}"#, NoModel);
        err(br#"{"model":["a"]}"#, NoModel);
        err(br#"{"a":{"model":"x"}}"#, NoModel);
        err(b"{}", NoModel);
        // An invalid body is not JSON, whatever keys it has.
        err(br#"{"model":"a","model":"b""#, NotJson);
        err(br#"{"model":"a","model":"b",}"#, NotJson);
    }

    #[test]
    fn strictness() {
        for bad in [
            &b""[..],
            b"   \n\t ",
            b"\xef\xbb\xbf{\"model\":\"a\"}",
            b"[]",
            b"\"model\"",
            b"1",
            b"null",
            b"{\"model\":\"a\"}x",
            b"{\"model\":\"a\"}{}",
            b"{\"model\":\"a\",}",
            b"{,\"model\":\"a\"}",
            b"{\"model\":\"a\" /* c */}",
            b"{\"n\":NaN,\"model\":\"a\"}",
            b"{\"n\":01,\"model\":\"a\"}",
            b"{\"n\":-,\"model\":\"a\"}",
            b"{\"n\":1.,\"model\":\"a\"}",
            b"{\"n\":.5,\"model\":\"a\"}",
            b"{\"n\":1e,\"model\":\"a\"}",
            b"{\"n\":+1,\"model\":\"a\"}",
            b"{\"n\":tru,\"model\":\"a\"}",
            b"{\"n\":truex,\"model\":\"a\"}",
            b"{\"n\":[1,],\"model\":\"a\"}",
            b"{\"n\":[1 2],\"model\":\"a\"}",
            b"{\"n\":]\"model\":\"a\"}",
            b"{\"model\":'a'}",
            b"{model:\"a\"}",
            b"{\"model\":\"a\tb\"}",
            b"{\"model\":\"a\\x\"}",
            b"{\"model\":\"\\u12\"}",
            b"{\"model\":\"\\ud800\"}",
            b"{\"model\":\"\\udc00\"}",
            b"{\"model\":\"\\ud800\\u0041\"}",
            b"{\"model\":\"\\ud83d\\ud83d\"}",
            b"{\"model\":\"\xff\"}",
            b"{\"model\":\"\xc0\xaf\"}",
            b"{\"model\":\"\xed\xa0\x80\"}",
            b"{\"model\":\"\xf4\x90\x80\x80\"}",
            b"{\"model\":\"\xe2\x82\"}",
            b"{\"model\":\"a\"}\x0c",
            b"{\"model\":\"a\"",
            b"{\"model\"}",
            b"{\"a\":{\"b\":1]}",
        ] {
            err(bad, NotJson);
        }
        ok(
            "\t{\"n\":[-0,0.0e-0,1E+9,12.5,true,false,null],\"model\":\"a\"} \r\n",
            "a",
        );
    }

    #[test]
    fn depth_bound() {
        let nest = |levels: usize| {
            let mut b = b"{\"model\":\"m\",\"x\":".to_vec();
            b.extend(std::iter::repeat_n(b'[', levels - 1));
            b.extend(std::iter::repeat_n(b']', levels - 1));
            b.push(b'}');
            b
        };
        assert_eq!(one(&nest(DEPTH_MAX)), Ok(b"m".to_vec()));
        err(&nest(DEPTH_MAX + 1), TooDeep);
        // Far deeper: refused at the bound, no recursion to overflow.
        let mut deep = b"{\"a\":".to_vec();
        deep.extend(std::iter::repeat_n(b'[', 100_000));
        err(&deep, TooDeep);
    }

    #[test]
    fn long_model_is_cut_on_a_character_boundary() {
        let long = "x".repeat(if cfg!(miri) { 300 } else { 1 << 20 });
        ok(&format!("{{\"model\":\"{long}\"}}"), &long[..MODEL_MAX]);
        // 63 ASCII bytes then a 2-byte character: cut before it.
        let v = format!("{}\u{e9}tail", "y".repeat(63));
        ok(&format!("{{\"model\":\"{v}\"}}"), &v[..63]);
        let v = "\u{1F600}".repeat(20);
        ok(&format!("{{\"model\":\"{v}\"}}"), &v[..MODEL_MAX]);
    }

    #[test]
    fn errors_are_sticky() {
        let mut s = ModelScanner::new();
        assert_eq!(s.feed(b"{\"model\":\"a\"}}"), Err(NotJson));
        assert_eq!(s.feed(b""), Err(NotJson));
        assert_eq!(s.finish(), Err(NotJson));
        let mut s = ModelScanner::default();
        s.feed(br#"{"model":"a","Model":"b"}"#).unwrap();
        assert_eq!(s.finish(), Err(AmbiguousModel));
        assert_eq!(s.feed(b" "), Err(AmbiguousModel));
        assert_eq!(s.finish(), Err(AmbiguousModel));
        let mut s = ModelScanner::new();
        s.feed(br#"{"model":"a"}"#).unwrap();
        assert_eq!(s.finish(), Ok(&b"a"[..]));
        assert_eq!(s.finish(), Ok(&b"a"[..]));
    }

    #[test]
    fn display_never_echoes() {
        for e in [NotJson, NoModel, AmbiguousModel, TooDeep, TooLarge] {
            let t = e.to_string();
            assert!(t.starts_with("the request body"), "{t}");
        }
        assert!(NotJson.to_string().contains("not an object"));
        assert!(TooDeep.to_string().contains("1024"));
    }

    #[test]
    fn fast_runs_match_a_plain_loop() {
        let mut s: Vec<u8> = Vec::new();
        for i in 0..if cfg!(miri) { 80u32 } else { 200 } {
            s.push((i.wrapping_mul(2654435761) >> 24) as u8);
        }
        for start in 0..s.len() {
            for ascii in [true, false] {
                let want = s[start..]
                    .iter()
                    .position(|&c| c == b'"' || c == b'\\' || c < 0x20 || (ascii && c >= 0x80))
                    .unwrap_or(s.len() - start);
                assert_eq!(run_swar(&s[start..], ascii), want);
                if ascii {
                    assert_eq!(plain_run(&s[start..]), want);
                }
            }
        }
        let plain = [b'a'; 100];
        assert_eq!(plain_run(&plain), 100);
        // Every position of every block size (64, 16, 8, 1 at a time).
        let n = if cfg!(miri) { 72 } else { 200 };
        for stop in [b'"', b'\\', 0x00, 0x1f, 0x80, 0xff] {
            for at in 0..n {
                let mut p = vec![b'a'; n];
                p[at] = stop;
                assert_eq!(plain_run(&p), at);
                assert_eq!(text_run(&p), if stop >= 0x80 { n } else { at });
                if at + 1 < n {
                    p[n - 1] = b'"';
                    assert_eq!(plain_run(&p[at + 1..]), n - at - 2);
                }
            }
        }
    }
}

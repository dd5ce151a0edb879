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
//! The same pass gathers what the token estimate needs ([`BodyFacts`]):
//! the body's size, the base64 media in it (data URLs and raw base64
//! strings), and the output cap the client asked for (`max_tokens` and its
//! spellings). docs/bodies.md, "Token estimate facts", has the rules.
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

/// What the token estimate needs from a request body (docs/bodies.md,
/// "Token estimate facts"), gathered by the scan that finds the model:
/// [`ModelScanner::facts`], [`facts_of`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BodyFacts {
    /// Bytes of the whole body fed.
    pub bytes: u64,
    /// Raw bytes (between the quotes, escapes as written) of the string
    /// values judged to be base64 media: a `data:` URL whose payload is
    /// base64, of at least 256 raw bytes, or at least 1024 raw bytes of
    /// nothing but base64 alphabet.
    pub media_bytes: u64,
    /// How many such strings (saturating).
    pub media_items: u32,
    /// The output cap the client asked for: the largest value of any
    /// top-level key equal to `max_tokens`, `max_completion_tokens` or
    /// `max_output_tokens` (after JSON unescaping and ASCII case folding,
    /// the same key rule as the model's), whose value is a non-negative
    /// integer literal (no fraction, no exponent), saturating at
    /// `u64::MAX`. `None` if no such key has such a value (null, strings,
    /// floats and negatives are ignored: the upstream rejects or ignores
    /// them).
    pub max_output: Option<u64>,
}

/// The model of a whole body in one call.
pub fn model_of(body: &[u8]) -> Result<ModelBuf, BodyError> {
    facts_of(body).map(|(m, _)| m)
}

/// The model of a whole body and its [`BodyFacts`], in one call (one
/// pass).
pub fn facts_of(body: &[u8]) -> Result<(ModelBuf, BodyFacts), BodyError> {
    let mut s = ModelScanner::new();
    s.feed(body)?;
    let m = s.finish()?;
    let mut out = ModelBuf {
        len: m.len() as u8,
        bytes: [0; MODEL_MAX],
    };
    out.bytes[..m.len()].copy_from_slice(m);
    Ok((out, s.facts()))
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

/// The top-level keys we look for (lower case): the model, then the output
/// caps. `key_id` indexes it.
const KEYS: [&[u8]; 4] = [
    b"model",
    b"max_tokens",
    b"max_completion_tokens",
    b"max_output_tokens",
];

/// `key_match` once the key can no longer be any of `KEYS`.
const KEY_NO: u8 = 0xff;

/// Where a string value is in the media check (docs/bodies.md, "Token
/// estimate facts"), over its raw bytes as written between the quotes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Med {
    /// Not media: a key, not a string, or a string that showed a byte
    /// media cannot have.
    Off,
    /// The first `k` bytes are the first `k` of `data:` (so also all
    /// base64 alphabet so far).
    Head(u8),
    /// Base64 alphabet only, and not `data:`: raw base64 (rule b).
    Raw,
    /// After `data:`, before the first `,`: how many bytes of `;base64`
    /// end the bytes so far.
    Type(u8),
    /// After `data:...;base64,`: base64 alphabet and `\/` only (rule a).
    Data,
}

/// The suffix `Med::Type` must see just before the first `,`.
const BASE64_TAG: &[u8; 7] = b";base64";

/// Raw bytes a string needs to be media: a data URL (rule a), raw base64
/// (rule b).
const MEDIA_DATA_MIN: u64 = 256;
const MEDIA_RAW_MIN: u64 = 1024;

/// The streaming scanner. Feed it the body in chunks of any size, then
/// call [`finish`](ModelScanner::finish). About 300 bytes, no heap.
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
    /// Which of `KEYS` the top-level key being read may be, and how many
    /// of its bytes matched (ASCII case folded), or KEY_NO.
    key_id: u8,
    key_match: u8,
    /// The next value is the first model key's.
    model_next: bool,
    /// Top-level model keys seen, saturating at 2.
    models: u8,
    model_kind: Kind,
    model_cut: bool,
    model_len: u8,
    model: [u8; MODEL_MAX],
    /// Bytes fed so far (the offset of the next chunk's first byte).
    bytes: u64,
    /// The media check of the string value being read, and the offset of
    /// its first raw byte.
    med: Med,
    str_start: u64,
    media_bytes: u64,
    media_items: u32,
    /// The next value is a cap key's; the number being read is one (while
    /// its digits are integer digits), and its value so far.
    cap_next: bool,
    cap_on: bool,
    cap_val: u64,
    max_output: Option<u64>,
    /// `finish` returned Ok.
    done: bool,
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
            key_id: 0,
            key_match: KEY_NO,
            model_next: false,
            models: 0,
            model_kind: Kind::None,
            model_cut: false,
            model_len: 0,
            model: [0; MODEL_MAX],
            bytes: 0,
            med: Med::Off,
            str_start: 0,
            media_bytes: 0,
            media_items: 0,
            cap_next: false,
            cap_on: false,
            cap_val: 0,
            max_output: None,
            done: false,
        }
    }

    /// Scans the next `chunk` of the body. `Err` is final: the body is
    /// refused whatever follows.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        if let Some(e) = self.err {
            return Err(e);
        }
        let base = self.bytes;
        self.bytes = base.saturating_add(chunk.len() as u64);
        self.run(chunk, base).map_err(|e| self.fail(e))
    }

    /// What the token estimate needs from the body (docs/bodies.md, "Token
    /// estimate facts"). The whole body's once [`finish`](Self::finish)
    /// has returned Ok. Before that, or after a refusal, it gives what the
    /// bytes scanned so far showed (a string or number still open is not
    /// counted), which is no basis for an estimate; it never panics.
    pub fn facts(&self) -> BodyFacts {
        BodyFacts {
            bytes: self.bytes,
            media_bytes: self.media_bytes,
            media_items: self.media_items,
            max_output: self.max_output,
        }
    }

    /// Whether [`finish`](Self::finish) has returned Ok (the facts are the
    /// whole body's).
    pub(crate) fn finished(&self) -> bool {
        self.done
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
        self.done = true;
        Ok(&self.model[..self.model_len as usize])
    }

    fn fail(&mut self, e: BodyError) -> BodyError {
        self.err = Some(e);
        self.st = St::Failed;
        e
    }

    /// Scans `buf`, whose first byte is at offset `base` of the body.
    fn run(&mut self, buf: &[u8], base: u64) -> Result<(), BodyError> {
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
                St::Value => self.value_start(c, base + i as u64)?,
                St::ArrFirst => {
                    if c == b']' {
                        self.close();
                    } else {
                        self.value_start(c, base + i as u64)?;
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
                    if self.med != Med::Off
                        && (j == n
                            || buf[j] != b'"'
                            || base + j as u64 - self.str_start >= MEDIA_DATA_MIN)
                    {
                        // A value that may be media, unless it ends here
                        // shorter than any media: the run through the
                        // media check (a second pass over bytes just read),
                        // and the escape that may end it.
                        self.media_step(&buf[i..j], true);
                        if buf.get(j) == Some(&b'\\') {
                            self.media_escape(buf.get(j + 1).copied());
                        }
                    }
                    if j > i {
                        self.take(&buf[i..j]);
                        i = j;
                        if i == n {
                            break;
                        }
                    }
                    match buf[i] {
                        b'"' => {
                            if self.med != Med::Off {
                                self.media_end(base + i as u64);
                            }
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
                                Ok(_) => {
                                    if self.med != Med::Off {
                                        self.media_step(&buf[i..end], false);
                                    }
                                    self.take(&buf[i..end])
                                }
                                // A sequence cut by the end of the chunk
                                // continues in the next one.
                                Err(e) if e.error_len().is_none() && end == n => {
                                    let ok = i + e.valid_up_to();
                                    if self.med != Med::Off {
                                        self.media_step(&buf[i..ok], false);
                                        // The cut lead byte: text, but no
                                        // `,` or `;` in a media type.
                                        self.med = match self.med {
                                            Med::Type(_) => Med::Type(0),
                                            _ => Med::Off,
                                        };
                                    }
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
                    if self.med == Med::Data && c != b'/' {
                        self.med = Med::Off;
                    }
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
                    let from = i;
                    i += 1;
                    while i < n && buf[i].is_ascii_digit() {
                        i += 1;
                    }
                    if self.cap_on && self.st == St::NumInt {
                        for &d in &buf[from..i] {
                            self.cap_val = self
                                .cap_val
                                .saturating_mul(10)
                                .saturating_add((d - b'0') as u64);
                        }
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
                    if self.cap_on {
                        self.cap_on = false;
                        if matches!(self.st, St::NumZero | St::NumInt) {
                            self.max_output = Some(
                                self.max_output
                                    .map_or(self.cap_val, |m| m.max(self.cap_val)),
                            );
                        }
                    }
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
            self.key_id = 0;
            self.key_match = 0;
        } else {
            self.role = Role::Key;
        }
        self.st = St::Str;
    }

    /// The first byte `c` of a value, at offset `at` of the body.
    fn value_start(&mut self, c: u8, at: u64) -> Result<(), BodyError> {
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
        if self.cap_next {
            // A cap key's value: read it if it is a non-negative integer
            // (`-` and the rest are not caps).
            self.cap_next = false;
            if c.is_ascii_digit() {
                self.cap_on = true;
                self.cap_val = (c - b'0') as u64;
            }
        }
        if c == b'"' {
            self.med = Med::Head(0);
            self.str_start = at + 1;
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
                if self.key_match != KEY_NO
                    && self.key_match as usize == KEYS[self.key_id as usize].len()
                {
                    if self.key_id == 0 {
                        self.models = (self.models + 1).min(2);
                        self.model_next = self.models == 1;
                    } else {
                        self.cap_next = true;
                    }
                }
                self.st = St::Colon;
            }
            Role::Key => self.st = St::Colon,
            Role::Value | Role::Model => self.value_end(),
        }
        self.role = Role::Value;
    }

    /// Decoded string bytes: compared if a top-level key, kept if the
    /// model. ASCII folding matches Go's too for "model": Go's only
    /// non-ASCII folds onto ASCII are to i, k and s, none of them in it
    /// (the cap keys have k and s: docs/bodies.md says why that is safe).
    #[inline(always)]
    fn take(&mut self, bytes: &[u8]) {
        match self.role {
            Role::TopKey => self.key_bytes(bytes),
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

    /// Decoded bytes of a top-level key, matched against KEYS (out of line:
    /// `take` is inlined in the string loop).
    #[inline(never)]
    fn key_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            let k = self.key_match as usize;
            if k == KEY_NO as usize {
                return;
            }
            let b = b.to_ascii_lowercase();
            if k == 0 && b != b'm' {
                // Most keys: none of KEYS.
                self.key_match = KEY_NO;
                return;
            }
            let name = KEYS[self.key_id as usize];
            if name.get(k) != Some(&b) {
                // Another key with the same first k bytes and b
                // next ("m" of "model" vs "max_...", and the caps
                // after "max_"), or none.
                match KEYS
                    .iter()
                    .position(|o| o.get(k) == Some(&b) && o[..k] == name[..k])
                {
                    Some(id) => self.key_id = id as u8,
                    None => {
                        self.key_match = KEY_NO;
                        return;
                    }
                }
            }
            self.key_match += 1;
        }
    }

    /// Runs the media check over raw string bytes `s`, from where the
    /// string value is: consumes bytes while it may still be media and
    /// returns how many. Stops at the end of `s`; at a byte that ends plain
    /// text (`"`, `\\`, a control byte, and a byte >= 0x80 when `ascii`),
    /// for the caller, the state as it is; or at the first byte that makes
    /// the string text (then `Med::Off`), not consumed. With `ascii` false,
    /// `s` is a validated run of text (no `"`, `\\` or control byte), and
    /// all of it is consumed unless the string turns out text.
    #[inline(never)]
    fn media_step(&mut self, s: &[u8], ascii: bool) -> usize {
        let stop = |b: u8| b == b'"' || b == b'\\' || b < 0x20 || (ascii && b >= 0x80);
        let mut n = 0;
        loop {
            match self.med {
                Med::Off => return n,
                Med::Raw | Med::Data => {
                    n += b64_run(&s[n..]);
                    if n < s.len() && !stop(s[n]) {
                        self.med = Med::Off;
                    }
                    return n;
                }
                Med::Head(k) => {
                    let Some(&b) = s.get(n) else { return n };
                    if b == b"data:"[k as usize] {
                        n += 1;
                        self.med = if k == 4 {
                            Med::Type(0)
                        } else {
                            Med::Head(k + 1)
                        };
                    } else if is_b64(b) {
                        // "data" is base64 alphabet: raw base64 so far.
                        self.med = Med::Raw;
                    } else {
                        if !stop(b) {
                            self.med = Med::Off;
                        }
                        return n;
                    }
                }
                Med::Type(m) => {
                    let r = if ascii {
                        plain_run(&s[n..])
                    } else {
                        s.len() - n
                    };
                    let run = &s[n..n + r];
                    match run.iter().position(|&b| b == b',') {
                        Some(p) => {
                            n += p + 1;
                            self.med = if tag_match(m, &run[..p]) == BASE64_TAG.len() as u8 {
                                Med::Data
                            } else {
                                Med::Off
                            };
                        }
                        None => {
                            self.med = Med::Type(tag_match(m, run));
                            return n + r;
                        }
                    }
                }
            }
        }
    }

    /// A backslash in a string value that may be media, `next` the byte
    /// after it if this chunk has it: only `\/` may be in a data URL's
    /// payload (St::Esc checks the byte when the chunk ends at the
    /// backslash); any escape may be in its media type.
    #[cold]
    fn media_escape(&mut self, next: Option<u8>) {
        self.med = match self.med {
            Med::Data if next.is_none_or(|e| e == b'/') => Med::Data,
            Med::Type(_) => Med::Type(0),
            _ => Med::Off,
        };
    }

    /// The closing quote of a string value at offset `at`: counts it if it
    /// is media.
    #[inline(never)]
    fn media_end(&mut self, at: u64) {
        let len = at - self.str_start;
        let media = match self.med {
            Med::Data => len >= MEDIA_DATA_MIN,
            Med::Raw | Med::Head(_) => len >= MEDIA_RAW_MIN,
            Med::Off | Med::Type(_) => false,
        };
        if media {
            self.media_bytes = self.media_bytes.saturating_add(len);
            self.media_items = self.media_items.saturating_add(1);
        }
        self.med = Med::Off;
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

/// How many bytes of `;base64` end the bytes that matched `m` of it and
/// then `s` (the tag's only `;` is its first byte, so a mismatch restarts
/// at a `;` or at nothing).
fn tag_match(m: u8, s: &[u8]) -> u8 {
    let (mut m, s) = if s.len() >= BASE64_TAG.len() {
        (0, &s[s.len() - BASE64_TAG.len()..])
    } else {
        (m as usize, s)
    };
    for &b in s {
        m = if BASE64_TAG.get(m) == Some(&b) {
            m + 1
        } else {
            (b == b';') as usize
        };
    }
    m as u8
}

/// The base64 alphabet (both kinds): `A-Z a-z 0-9 + / =` and the
/// URL-safe `-` and `_`.
#[inline]
fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
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

/// High bit set in each byte of `x` in the base64 alphabet (`is_b64`).
#[inline]
fn b64_bytes(x: u64) -> u64 {
    // High bit set where the byte's low seven bits are at least `n` (no
    // carry crosses bytes: at most 0x7f + 0x80).
    let ge = |y: u64, n: u8| ((y & !HI) + (0x80 - n as u64) * LO) & HI;
    let y = x | (0x20 * LO); // A-Z onto a-z
    let letter = ge(y, b'a') & !ge(y, b'z' + 1);
    let digit = ge(x, b'0') & !ge(x, b'9' + 1);
    let eq = |c: u8| zero_bytes(x ^ (c as u64 * LO));
    (letter | digit | eq(b'+') | eq(b'/') | eq(b'=') | eq(b'-') | eq(b'_')) & !x & HI
}

/// `b64_run`, eight bytes at a time.
#[inline]
fn b64_swar(s: &[u8]) -> usize {
    let mut i = 0;
    while i + 8 <= s.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[i..i + 8]);
        let bad = !b64_bytes(u64::from_le_bytes(w)) & HI;
        if bad != 0 {
            return i + (bad.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < s.len() && is_b64(s[i]) {
        i += 1;
    }
    i
}

/// Length of the run of base64 alphabet bytes at the start of `s`: the
/// loop that reads an image. SSSE3 where the CPU has it (two nibble
/// lookups per 16 bytes), else SSE2 range compares, else SWAR.
#[inline]
pub(crate) fn b64_run(s: &[u8]) -> usize {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        if std::is_x86_feature_detected!("ssse3") {
            // SAFETY: the CPU has SSSE3 (checked just above).
            return unsafe { b64_run_ssse3(s) };
        }
        b64_run_sse2(s)
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    {
        b64_swar(s)
    }
}

/// The 16-byte blocks of a base64 run: `$bad(p)` is a mask of the bytes at
/// `p` outside the alphabet; 64 bytes at a time, then 16, then SWAR.
#[cfg(all(target_arch = "x86_64", not(miri)))]
macro_rules! b64_blocks {
    ($s:expr, $bad:ident) => {{
        use core::arch::x86_64::*;
        let s: &[u8] = $s;
        let mut i = 0;
        // SAFETY: every load reads 16 bytes inside the slice (the loops
        // check i + 64 or i + 16 <= len before reading); the caller has
        // the instructions `$bad` uses.
        unsafe {
            while i + 64 <= s.len() {
                let p = s.as_ptr().add(i);
                let (a, b) = ($bad(p), $bad(p.add(16)));
                let (c, d) = ($bad(p.add(32)), $bad(p.add(48)));
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
                let bits = _mm_movemask_epi8($bad(s.as_ptr().add(i))) as u32;
                if bits != 0 {
                    return i + bits.trailing_zeros() as usize;
                }
                i += 16;
            }
        }
        i + b64_swar(&s[i..])
    }};
}

/// `b64_run` with SSE2 (part of x86_64): range compares.
#[cfg(all(target_arch = "x86_64", not(miri)))]
fn b64_run_sse2(s: &[u8]) -> usize {
    use core::arch::x86_64::*;
    /// Bytes at `p` outside the alphabet.
    ///
    /// # Safety
    /// 16 readable bytes at `p`.
    #[inline(always)]
    unsafe fn bad16(p: *const u8) -> __m128i {
        // SAFETY: by the caller's contract; SSE2 is baseline.
        let v = unsafe { _mm_loadu_si128(p.cast()) };
        // Signed compares: bytes >= 0x80 are below every bound.
        let within = |v: __m128i, lo: u8, hi: u8| {
            _mm_and_si128(
                _mm_cmpgt_epi8(v, _mm_set1_epi8(lo as i8 - 1)),
                _mm_cmplt_epi8(v, _mm_set1_epi8(hi as i8 + 1)),
            )
        };
        let eq = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
        let letter = within(_mm_or_si128(v, _mm_set1_epi8(0x20)), b'a', b'z');
        let digit = within(v, b'0', b'9');
        let ok = _mm_or_si128(
            _mm_or_si128(
                _mm_or_si128(letter, digit),
                _mm_or_si128(eq(b'+'), eq(b'/')),
            ),
            _mm_or_si128(eq(b'='), _mm_or_si128(eq(b'-'), eq(b'_'))),
        );
        _mm_xor_si128(ok, _mm_set1_epi8(-1))
    }
    b64_blocks!(s, bad16)
}

/// `b64_run` with SSSE3: a byte is in the alphabet when the class bits
/// its low nibble allows meet the class of its high nibble (2: `+ - /`,
/// 3: digits and `=`, 4 and 6: letters from 1, 5: `P-Z` and `_`, 7: `p-z`).
///
/// # Safety
/// The CPU has SSSE3.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[target_feature(enable = "ssse3")]
unsafe fn b64_run_ssse3(s: &[u8]) -> usize {
    use core::arch::x86_64::*;
    /// Bytes at `p` outside the alphabet.
    ///
    /// # Safety
    /// 16 readable bytes at `p`, and SSSE3.
    #[target_feature(enable = "ssse3")]
    #[inline]
    unsafe fn bad16(p: *const u8) -> __m128i {
        // Class bits: 1 high nibble 2, 2 high 3, 4 high 4 or 6, 8 high 5,
        // 0x10 high 7; by low nibble, the classes that allow it.
        let lo = _mm_setr_epi8(
            0x1a, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1c, 0x05, 0x04, 0x07,
            0x04, 0x0d,
        );
        let hi = _mm_setr_epi8(
            0, 0, 0x01, 0x02, 0x04, 0x08, 0x04, 0x10, 0, 0, 0, 0, 0, 0, 0, 0,
        );
        let nib = _mm_set1_epi8(0x0f);
        // SAFETY: by the caller's contract.
        let v = unsafe { _mm_loadu_si128(p.cast()) };
        let l = _mm_shuffle_epi8(lo, _mm_and_si128(v, nib));
        let h = _mm_shuffle_epi8(hi, _mm_and_si128(_mm_srli_epi16(v, 4), nib));
        _mm_cmpeq_epi8(_mm_and_si128(l, h), _mm_setzero_si128())
    }
    b64_blocks!(s, bad16)
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

    fn facts(body: &str) -> BodyFacts {
        match facts_of(body.as_bytes()) {
            Ok((_, f)) => {
                assert_eq!(f.bytes, body.len() as u64);
                f
            }
            Err(e) => panic!("{e:?}: {body}"),
        }
    }

    fn cap(body: &str) -> Option<u64> {
        facts(body).max_output
    }

    /// (items, bytes) of media in a body.
    fn media(body: &str) -> (u32, u64) {
        let f = facts(body);
        (f.media_items, f.media_bytes)
    }

    /// `n` bytes of base64 alphabet, every symbol in turn.
    fn b64(n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=";
        (0..n).map(|i| A[i * 7 % A.len()] as char).collect()
    }

    /// A data URL of `n` raw bytes in all.
    fn data_url(n: usize) -> String {
        let head = "data:image/png;base64,";
        format!("{head}{}", b64(n - head.len()))
    }

    /// Bodies whose facts every chunking must give as one shot.
    fn fact_bodies() -> Vec<String> {
        let small = cfg!(miri);
        let mut v = vec![
            format!(
                r#"{{"model":"m","max_tokens":123,"MAX_COMPLETION_TOKENS":18446744073709551616,"messages":[{{"content":[{{"image_url":{{"url":"{}"}}}}, "{}"]}}]}}"#,
                data_url(300),
                b64(if small { 40 } else { 1100 }),
            ),
            format!(
                r#"{{"max\u005fOutput_tokens" : 7 , "model":"m","a":"{}","b":"data:x;base64,{}\/{}","c":"data:;base64,{}\n"}}"#,
                b64(257),
                b64(200),
                b64(60),
                b64(300),
            ),
            "{\"model\":\"m\",\"x\":\"data:\u{e9}\\\"t;base64,AAAA\",\"max_tokens\":0.5,\"max_tokens\":-1}"
                .to_string(),
        ];
        if !small {
            v.push(format!(
                "{{\"model\":\"m\",\"x\":\"data:\u{1F600};base64,{}\"}}",
                b64(400)
            ));
        }
        v
    }

    fn chunked_facts(body: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, BodyFacts), BodyError> {
        let mut s = ModelScanner::new();
        let mut at = 0;
        for &c in cuts.iter().chain([body.len()].iter()) {
            s.feed(&body[at..c])?;
            at = c;
        }
        let m = s.finish()?.to_vec();
        assert!(s.finished());
        Ok((m, s.facts()))
    }

    #[test]
    fn every_chunking_gives_the_one_shot_facts() {
        for body in fact_bodies() {
            let body = body.as_bytes();
            let (m, f) = facts_of(body).unwrap();
            let want = Ok((m.to_vec(), f));
            // Under miri every 37th cut only (each one is a whole scan).
            let step = if cfg!(miri) { 37 } else { 1 };
            for cut in (0..=body.len()).step_by(step) {
                assert_eq!(chunked_facts(body, &[cut]), want, "cut at {cut}");
            }
            let bytes: Vec<usize> = (1..body.len()).collect();
            assert_eq!(chunked_facts(body, &bytes), want, "byte by byte");
            let odd: Vec<usize> = (1..body.len())
                .filter(|i| i % 7 == 3 || i % 11 == 0)
                .collect();
            assert_eq!(chunked_facts(body, &odd), want, "uneven");
        }
        let f = facts(&fact_bodies()[0]);
        assert_eq!(f.max_output, Some(u64::MAX));
        assert_eq!(f.media_items, if cfg!(miri) { 1 } else { 2 });
        let f = facts(&fact_bodies()[1]);
        // "a" is too short for raw base64, "c" has an escape but `\/`.
        assert_eq!((f.max_output, f.media_items), (Some(7), 1));
        assert_eq!(f.media_bytes, ("data:x;base64,".len() + 262) as u64);
        let f = facts(&fact_bodies()[2]);
        assert_eq!((f.max_output, f.media_items), (None, 0));
    }

    #[test]
    fn output_caps() {
        let m = r#""model":"m""#;
        assert_eq!(cap(&format!("{{{m}}}")), None);
        for key in [
            "max_tokens",
            "max_completion_tokens",
            "max_output_tokens",
            "MAX_TOKENS",
            "Max_Completion_Tokens",
            "max_OUTPUT_tokens",
            r"max\u005ftokens",
            r"\u006Dax_completion_tokens",
            r"max_output_toke\u006es",
            r"max\u005F\u0054OKENS",
        ] {
            assert_eq!(
                cap(&format!(r#"{{{m},"{key}":4096}}"#)),
                Some(4096),
                "{key}"
            );
            assert_eq!(cap(&format!(r#"{{"{key}": 17 ,{m}}}"#)), Some(17), "{key}");
        }
        // Not caps: other keys, nested keys, values that are not
        // non-negative integer literals.
        for body in [
            r#"{"model":"m","max_token":5}"#,
            r#"{"model":"m","max_tokens_":5}"#,
            r#"{"model":"m","max_tokenss":5}"#,
            r#"{"model":"m","max_":5}"#,
            r#"{"model":"m","max tokens":5}"#,
            r#"{"model":"m","maxtokens":5}"#,
            r#"{"model":"m","max_input_tokens":5}"#,
            r#"{"model":"m","model_max_tokens":5}"#,
            r#"{"model":"m","a":{"max_tokens":5}}"#,
            r#"{"model":"m","a":[{"max_tokens":5}]}"#,
            r#"{"model":"m","max_tokens":-5}"#,
            r#"{"model":"m","max_tokens":-0}"#,
            r#"{"model":"m","max_tokens":5.0}"#,
            r#"{"model":"m","max_tokens":5e2}"#,
            r#"{"model":"m","max_tokens":0E0}"#,
            r#"{"model":"m","max_tokens":"5"}"#,
            r#"{"model":"m","max_tokens":null}"#,
            r#"{"model":"m","max_tokens":true}"#,
            r#"{"model":"m","max_tokens":[5]}"#,
            r#"{"model":"m","max_tokens":{"n":5}}"#,
            r#"{"model":"m","n":5,"max_tokens":{}}"#,
        ] {
            assert_eq!(cap(body), None, "{body}");
        }
        assert_eq!(cap(r#"{"model":"m","max_tokens":0}"#), Some(0));
        // Duplicates, in any spelling: the largest.
        assert_eq!(
            cap(r#"{"max_tokens":10,"model":"m","MAX_TOKENS":300,"max_output_tokens":20}"#),
            Some(300)
        );
        assert_eq!(
            cap(r#"{"max_tokens":1.5e9,"model":"m","max_completion_tokens":8,"max_tokens":null}"#),
            Some(8)
        );
        assert_eq!(
            cap(r#"{"model":"m","max_tokens":5,"max_tokens":-900}"#),
            Some(5)
        );
        // Huge values saturate.
        assert_eq!(
            cap(r#"{"model":"m","max_tokens":18446744073709551615}"#),
            Some(u64::MAX)
        );
        assert_eq!(
            cap(r#"{"model":"m","max_tokens":18446744073709551614}"#),
            Some(u64::MAX - 1)
        );
        for big in [
            "18446744073709551616",
            "99999999999999999999",
            "1844674407370955161500000000",
        ] {
            assert_eq!(
                cap(&format!(r#"{{"model":"m","max_tokens":{big}}}"#)),
                Some(u64::MAX)
            );
        }
        // The model key still works beside the caps.
        assert_eq!(
            one(br#"{"max_tokens":1,"MODEL":"x","max_completion_tokens":2}"#),
            Ok(b"x".to_vec())
        );
        err(
            br#"{"max_tokens":1,"model":"x","Model":"y"}"#,
            AmbiguousModel,
        );
        err(br#"{"max_tokens":1}"#, NoModel);
        err(br#"{"mo":1,"ma":2,"max_tokens":3}"#, NoModel);
    }

    #[test]
    fn base64_media() {
        let body = |v: &str| format!(r#"{{"model":"m","v":"{v}"}}"#);
        // (a) data URLs: 256 raw bytes and more.
        assert_eq!(media(&body(&data_url(256))), (1, 256));
        assert_eq!(media(&body(&data_url(255))), (0, 0));
        assert_eq!(media(&body(&data_url(5000))), (1, 5000));
        let url = format!("data:;base64,{}", b64(300));
        assert_eq!(media(&body(&url)), (1, url.len() as u64));
        // `\/` in the payload, counted as written (two bytes).
        let url = format!(r"data:image/jpeg;base64,{}\/{}\/", b64(150), b64(150));
        assert_eq!(media(&body(&url)), (1, url.len() as u64));
        // Any bytes but `,` in the media type, escapes and non-ASCII too.
        for ty in [
            r"image/p\u006eg",
            "x;name=\\\"\u{e9}\\\"",
            "a b;c=d",
            ";base64;base64",
        ] {
            let url = format!("data:{ty};base64,{}", b64(300));
            assert_eq!(media(&body(&url)), (1, url.len() as u64), "{ty}");
        }
        // Not data URLs with a base64 payload.
        for v in [
            format!("data:text/plain,{}", b64(300)),
            format!("data:text/plain,x;base64,{}", b64(300)),
            format!("data:image/png;base64;x,{}", b64(300)),
            format!("data:image/png;BASE64,{}", b64(300)),
            format!("data:image/png;base6,{}", b64(300)),
            format!("data:image/png;base64\\u002c{}", b64(300)),
            format!("DATA:image/png;base64,{}", b64(300)),
            format!(" data:image/png;base64,{}", b64(300)),
            format!("data:image/png;base64,{} ", b64(300)),
            format!("data:image/png;base64,{}\\n", b64(300)),
            format!("data:image/png;base64,{}\\u0041", b64(300)),
            format!("data:image/png;base64,{}.{}", b64(150), b64(150)),
            format!("data:image/png;base64,{}\u{e9}", b64(300)),
            format!("data:image/png;base64,{},", b64(300)),
        ] {
            assert_eq!(media(&body(&v)), (0, 0), "{v}");
        }
        // (b) raw base64: 1024 raw bytes and more, alphabet only.
        let n = if cfg!(miri) { 1024 } else { 100_000 };
        assert_eq!(media(&body(&b64(1024))), (1, 1024));
        assert_eq!(media(&body(&b64(n))), (1, n as u64));
        assert_eq!(media(&body(&b64(1023))), (0, 0));
        assert_eq!(media(&body(&"d".repeat(1024))), (1, 1024));
        assert_eq!(media(&body(&format!("data{}", b64(1100)))), (1, 1104));
        for v in [
            format!("{} {}", b64(600), b64(600)),
            format!(r"{}\/{}", b64(600), b64(600)),
            format!(r"{}\n", b64(1100)),
            format!("{}.", b64(1100)),
            format!("\u{e9}{}", b64(1100)),
            format!("{}\u{e9}", b64(1100)),
            format!("data:{}", b64(1100)),
        ] {
            assert_eq!(media(&body(&v)), (0, 0), "{v}");
        }
        // Keys are never media; values are at any depth, the model's too.
        let k = b64(1100);
        assert_eq!(
            media(&format!(r#"{{"model":"m","{k}":1,"a":{{"{k}":"x"}}}}"#)),
            (0, 0)
        );
        let deep = format!(
            r#"{{"model":"{k}","a":[[{{"b":["{k}",{{"c":"{}"}}]}}]]}}"#,
            data_url(300)
        );
        assert_eq!(media(&deep), (3, 2 * 1100 + 300));
    }

    #[test]
    fn facts_before_finish_and_after_refusal() {
        let mut s = ModelScanner::new();
        assert_eq!(s.facts(), BodyFacts::default());
        assert!(!s.finished());
        s.feed(br#"{"model":"m","max_tokens":12"#).unwrap();
        // The number is still open: not counted yet.
        assert_eq!(s.facts().max_output, None);
        assert_eq!(s.facts().bytes, 28);
        s.feed(b"}").unwrap();
        assert_eq!(s.facts().max_output, Some(12));
        assert!(!s.finished());
        s.finish().unwrap();
        assert!(s.finished());
        let mut s = ModelScanner::new();
        assert!(s.feed(br#"{"max_tokens":3,"model":"m"}x"#).is_err());
        assert!(s.finish().is_err());
        assert!(!s.finished());
        let _ = s.facts();
        let mut s = ModelScanner::new();
        s.feed(br#"{"max_tokens":3}"#).unwrap();
        assert_eq!(s.finish(), Err(NoModel));
        assert!(!s.finished());
        assert_eq!(s.facts().max_output, Some(3));
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
        // The base64 run: every byte that ends it, at every offset of every
        // block size; every byte value repeated.
        assert_eq!((0..=255u8).filter(|&b| is_b64(b)).count(), 67);
        let n = if cfg!(miri) { 72 } else { 200 };
        let step = if cfg!(miri) { 13 } else { 1 };
        for bad in (0..=255u8).filter(|&b| !is_b64(b)) {
            for at in (0..n).step_by(step) {
                let mut p: Vec<u8> = (0..n).map(|i| b"Az09+/=-_"[i % 9]).collect();
                p[at] = bad;
                assert_eq!(b64_run(&p), at, "{bad:#x} at {at}");
                assert_eq!(b64_swar(&p), at, "{bad:#x} at {at}");
                #[cfg(all(target_arch = "x86_64", not(miri)))]
                assert_eq!(b64_run_sse2(&p), at, "{bad:#x} at {at}");
            }
        }
        for b in 0..=255u8 {
            let p = [b; 70];
            let want = if is_b64(b) { 70 } else { 0 };
            assert_eq!((b64_run(&p), b64_swar(&p)), (want, want), "{b:#x}");
            #[cfg(all(target_arch = "x86_64", not(miri)))]
            assert_eq!(b64_run_sse2(&p), want, "{b:#x}");
        }
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

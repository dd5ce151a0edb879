//! Response usage: one streaming pass over an upstream's response, a JSON
//! body or a server-sent-event stream, that validates its JSON as strictly
//! as serde_json does and picks out the token counts the upstream reports,
//! so tokens reserved before a request can be settled after it
//! (docs/usage.md).
//!
//! What counts: the top-level `"usage"` object of a JSON body or of an SSE
//! event's JSON, and in an SSE event also `"response"."usage"` (the
//! Responses API's `response.completed`). Its token fields:
//! `prompt_tokens` or `input_tokens` (input; `prompt_tokens` first when
//! both are there), `completion_tokens` or `output_tokens` (output, 0 when
//! absent, as for embeddings), `total_tokens` (total; input + output,
//! saturating, when absent). `"usage": null` (or absent) is no usage.
//! `usage` keys anywhere else (inside messages, tool arguments,
//! `output_tokens_details`) are not looked at. A token field whose value is
//! not an integer from 0 to `u64::MAX` (`12.0`, `1e3`, `-1`, `"12"`,
//! `null`), a usage that is neither an object nor null, or a usage object
//! with none of the five fields is [`UsageError::BadUsage`], never a
//! silent 0. Duplicate keys: the last wins, as in serde_json's `Value`.
//!
//! Fixed memory, no heap, no recursion; chunks of any size, a token, a
//! line ending or a `data:` prefix may straddle them. The JSON lexing
//! follows [`crate::body`]'s (its string skipping and UTF-8 rules) without
//! its model-key logic.

use core::fmt;

use crate::body::{is_ws, plain_run, simple_escape, text_run, utf8_lead};
use crate::limiter::Ending;

/// Most nesting levels accepted in one JSON document (the top-level value
/// is level 1), as for request bodies.
pub const DEPTH_MAX: usize = crate::body::DEPTH_MAX;

/// How the response is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// One JSON document (`application/json`).
    Json,
    /// Server-sent events (`text/event-stream`) whose `data:` is JSON or
    /// `[DONE]`.
    Sse,
}

impl Framing {
    /// The framing a response's `Content-Type` value names:
    /// `application/json` or any `application/*+json` is [`Framing::Json`],
    /// `text/event-stream` is [`Framing::Sse`] (parameters such as
    /// `; charset=utf-8` ignored, ASCII case ignored); anything else is
    /// `None` (not a response to read usage from).
    pub fn from_content_type(value: &[u8]) -> Option<Framing> {
        let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
        let mut t = &value[..end];
        while let [b, rest @ ..] = t {
            if !is_ws(*b) {
                break;
            }
            t = rest;
        }
        while let [rest @ .., b] = t {
            if !is_ws(*b) {
                break;
            }
            t = rest;
        }
        if t.eq_ignore_ascii_case(b"application/json") {
            return Some(Framing::Json);
        }
        if t.eq_ignore_ascii_case(b"text/event-stream") {
            return Some(Framing::Sse);
        }
        const APP: &[u8] = b"application/";
        const JSON: &[u8] = b"+json";
        if t.len() > APP.len() + JSON.len()
            && t[..APP.len()].eq_ignore_ascii_case(APP)
            && t[t.len() - JSON.len()..].eq_ignore_ascii_case(JSON)
        {
            return Some(Framing::Json);
        }
        None
    }
}

/// Token counts an upstream reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Usage {
    /// Prompt (input) tokens: `prompt_tokens` or `input_tokens`.
    pub input: u64,
    /// Completion (output) tokens: `completion_tokens` or
    /// `output_tokens`; 0 when absent (embeddings).
    pub output: u64,
    /// `total_tokens`, or `input + output` (saturating) when absent.
    pub total: u64,
}

impl Usage {
    /// Token counts from their parts.
    pub const fn new(input: u64, output: u64, total: u64) -> Usage {
        Usage {
            input,
            output,
            total,
        }
    }
}

/// Why a response's usage could not be read. The text never echoes the
/// response's bytes. More reasons may come (match with a `_` arm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UsageError {
    /// Not JSON: a JSON body, or an SSE event's data that is neither JSON
    /// nor `[DONE]`, with a syntax error, invalid UTF-8 in a string, bytes
    /// after the value, or an empty JSON body.
    NotJson,
    /// Nesting deeper than [`DEPTH_MAX`] levels.
    TooDeep,
    /// A usage that is not an object of token counts: not an object (nor
    /// null), none of the token fields, or a token field that is not an
    /// integer from 0 to `u64::MAX`.
    BadUsage,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::NotJson => f.write_str(
                "the response is not valid JSON (its body, or the data of one of its events)",
            ),
            UsageError::TooDeep => {
                write!(
                    f,
                    "the response's JSON nests deeper than {DEPTH_MAX} levels"
                )
            }
            UsageError::BadUsage => f.write_str(
                "the response's usage is not an object of token counts (non-negative integers)",
            ),
        }
    }
}

impl std::error::Error for UsageError {}

/// The usage of a whole response in one call: [`UsageScanner::finish`]
/// after one [`UsageScanner::feed`].
pub fn usage_of(framing: Framing, body: &[u8]) -> Result<Option<Usage>, UsageError> {
    let mut s = UsageScanner::new(framing);
    s.feed(body)?;
    s.finish()
}

/// JSON lexer states, as in [`crate::body`]: those that skip whitespace
/// first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u8)]
enum St {
    Start,
    ObjFirst,
    ObjKey,
    Colon,
    Value,
    ArrFirst,
    After,
    End,
    Str,
    Esc,
    Hex,
    SurEsc,
    SurU,
    Utf,
    NumMinus,
    NumZero,
    NumInt,
    NumDot,
    NumFrac,
    NumE,
    NumESign,
    NumExp,
    Lit,
}

/// SSE line states.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Line {
    /// At the start of a line.
    Start,
    /// In a field name.
    Name,
    /// After `data:`: an optional space.
    DataSpace,
    /// In a `data:` value.
    Data,
    /// In a comment or a field we ignore, up to the end of the line.
    Skip,
}

/// What the value after the current key fills.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Slot {
    None,
    /// The top-level `usage`.
    TopUsage,
    /// The top-level `response` (SSE only).
    Response,
    /// `response.usage`.
    RespUsage,
    /// A token field of the open usage object.
    Field(u8),
}

/// A token field's value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Val {
    Absent,
    Num(u64),
    Bad,
}

/// A usage value as read so far.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Absent,
    Null,
    Bad,
    Obj,
}

/// The token fields, in the order of `Rec::fields`.
const FIELDS: [&[u8]; 5] = [
    b"prompt_tokens",
    b"input_tokens",
    b"completion_tokens",
    b"output_tokens",
    b"total_tokens",
];

/// Bytes of a key kept to compare: the longest name looked for.
const KEY_MAX: usize = 17;

#[derive(Clone, Copy, Debug)]
struct Rec {
    kind: Kind,
    fields: [Val; 5],
}

impl Rec {
    const NONE: Rec = Rec {
        kind: Kind::Absent,
        fields: [Val::Absent; 5],
    };

    fn usage(&self) -> Result<Option<Usage>, UsageError> {
        match self.kind {
            Kind::Absent | Kind::Null => return Ok(None),
            Kind::Bad => return Err(UsageError::BadUsage),
            Kind::Obj => {}
        }
        let mut n = [None; 5];
        for (v, f) in n.iter_mut().zip(self.fields) {
            *v = match f {
                Val::Absent => None,
                Val::Num(x) => Some(x),
                Val::Bad => return Err(UsageError::BadUsage),
            };
        }
        if n.iter().all(Option::is_none) {
            return Err(UsageError::BadUsage);
        }
        let input = n[0].or(n[1]).unwrap_or(0);
        let output = n[2].or(n[3]).unwrap_or(0);
        let total = n[4].unwrap_or(input.saturating_add(output));
        Ok(Some(Usage::new(input, output, total)))
    }
}

/// The streaming scanner. Construct it for the response's [`Framing`],
/// feed it the response in chunks of any size, then call
/// [`finish`](UsageScanner::finish). About 2.5 KB (an SSE event held: [`EVENT_HOLD`]), no heap.
///
/// Errors are returned by `feed` when found: in a JSON body at the byte
/// where they occur, in an SSE stream at the blank line that ends the
/// event (an event the stream cuts is dropped whatever it holds). They are
/// sticky: once one is returned, every later call returns it again.
///
/// For SSE, [`done_seen`](UsageScanner::done_seen) tells a stream that
/// ended with `data: [DONE]` from one that was cut: a cut stream has no
/// usage to settle with (keep the reservation), a finished stream without
/// usage is an upstream that was not asked for it
/// (`stream_options.include_usage`).
#[derive(Clone, Debug)]
pub struct UsageScanner {
    framing: Framing,
    err: Option<UsageError>,
    // The JSON lexer.
    st: St,
    depth: u32,
    kinds: [u64; DEPTH_MAX / 64],
    hex_left: u8,
    code: u32,
    high: u32,
    utf_need: u8,
    utf_lo: u8,
    utf_hi: u8,
    lit: &'static [u8],
    lit_pos: u8,
    // Where the document's usage is.
    /// The string being read is a key, and one to compare.
    is_key: bool,
    capture: bool,
    key_len: u8,
    key: [u8; KEY_MAX + 1],
    slot: Slot,
    /// Inside the top-level `response` object (SSE).
    in_response: bool,
    /// The level of the open usage object (0: none), and whose it is.
    usage_depth: u32,
    usage_resp: bool,
    /// The token field the number being read fills, its value so far and
    /// whether it is still a u64 integer.
    num_field: Option<u8>,
    num: u64,
    num_ok: bool,
    top: Rec,
    resp: Rec,
    // SSE framing.
    line: Line,
    /// Bytes of the field name that matched "data" (5: no match).
    name_match: u8,
    after_cr: bool,
    /// The event has data; its data so far is the first `pending` bytes
    /// of `[DONE]`, or (`flushed`) went to the lexer.
    ev_data: bool,
    pending: u8,
    flushed: bool,
    /// Why the event's data is not JSON, told at its blank line.
    ev_err: Option<UsageError>,
    /// The event's data is held (not lexed) while it fits: an event that
    /// cannot carry a usage key is then skipped unparsed.
    hold: Hold,
    done: bool,
    // The answer so far.
    found: Option<Usage>,
}

impl Default for UsageScanner {
    fn default() -> Self {
        Self::new(Framing::Json)
    }
}

impl UsageScanner {
    /// A scanner at the start of a response framed as `framing`.
    pub const fn new(framing: Framing) -> UsageScanner {
        UsageScanner {
            framing,
            err: None,
            st: St::Start,
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
            is_key: false,
            capture: false,
            key_len: 0,
            key: [0; KEY_MAX + 1],
            slot: Slot::None,
            in_response: false,
            usage_depth: 0,
            usage_resp: false,
            num_field: None,
            num: 0,
            num_ok: false,
            top: Rec::NONE,
            resp: Rec::NONE,
            line: Line::Start,
            name_match: 0,
            after_cr: false,
            ev_data: false,
            pending: 0,
            flushed: false,
            ev_err: None,
            hold: Hold::new(),
            done: false,
            found: None,
        }
    }

    /// The framing this scanner reads.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Whether an SSE stream's `data: [DONE]` event has been read (always
    /// false for a JSON body).
    pub fn done_seen(&self) -> bool {
        self.done
    }

    /// Scans the next `chunk` of the response. `Err` is final.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), UsageError> {
        if let Some(e) = self.err {
            return Err(e);
        }
        let r = match self.framing {
            Framing::Json => self.lex(chunk),
            Framing::Sse => self.sse(chunk),
        };
        r.map_err(|e| self.fail(e))
    }

    /// The response has ended: the usage of the last document (JSON body
    /// or SSE event) that carried one, `Ok(None)` when none did, or why
    /// the response could not be read. A JSON body must be complete; an
    /// SSE event not ended by a blank line is dropped, as the SSE standard
    /// says (a cut stream: see [`done_seen`](UsageScanner::done_seen)).
    pub fn finish(&mut self) -> Result<Option<Usage>, UsageError> {
        if let Some(e) = self.err {
            return Err(e);
        }
        if self.framing == Framing::Json {
            if let Err(e) = self.doc_end(false) {
                return Err(self.fail(e));
            }
        }
        Ok(self.found)
    }

    /// How the response ended, for [`Limiter::settle`](crate::Limiter::settle),
    /// once it has (or was cut: `cut`), with HTTP status `status`: its
    /// usage if it reported one; else as [`Ending::without_usage`], an SSE
    /// stream that ended without `data: [DONE]` counting as cut. A response
    /// that could not be read ends as if it reported nothing.
    pub fn ending(&mut self, status: u16, cut: bool) -> Ending {
        if let Ok(Some(u)) = self.finish() {
            return Ending::Usage(u.total);
        }
        let unfinished = self.framing == Framing::Sse && !self.done;
        Ending::without_usage(status, cut || unfinished)
    }

    fn fail(&mut self, e: UsageError) -> UsageError {
        self.err = Some(e);
        e
    }

    /// A new JSON document (an SSE event's data).
    fn doc_reset(&mut self) {
        self.st = St::Start;
        self.depth = 0;
        self.high = 0;
        self.capture = false;
        self.is_key = false;
        self.slot = Slot::None;
        self.in_response = false;
        self.usage_depth = 0;
        self.num_field = None;
        self.top = Rec::NONE;
        self.resp = Rec::NONE;
    }

    /// The document has ended: a top-level number ends with it. Empty
    /// (only whitespace) is no document when `empty_ok`.
    fn doc_end(&mut self, empty_ok: bool) -> Result<(), UsageError> {
        if matches!(self.st, St::NumZero | St::NumInt | St::NumFrac | St::NumExp) {
            self.value_end();
        }
        if self.st == St::Start && empty_ok {
            return Ok(());
        }
        if self.st != St::End {
            return Err(UsageError::NotJson);
        }
        let u = match self.top.kind {
            Kind::Obj | Kind::Bad => self.top.usage()?,
            Kind::Absent | Kind::Null => self.resp.usage()?,
        };
        if u.is_some() {
            self.found = u;
        }
        Ok(())
    }

    fn sse(&mut self, buf: &[u8]) -> Result<(), UsageError> {
        let n = buf.len();
        let mut i = 0;
        while i < n {
            let c = buf[i];
            if self.after_cr {
                self.after_cr = false;
                if c == b'\n' {
                    i += 1;
                    continue;
                }
            }
            let eol = c == b'\n' || c == b'\r';
            match self.line {
                Line::Start => {
                    if eol {
                        self.event_end()?;
                    } else if c == b':' {
                        self.line = Line::Skip;
                    } else {
                        self.line = Line::Name;
                        self.name_match = 0;
                        self.name_byte(c);
                    }
                }
                Line::Name => {
                    if c == b':' {
                        if self.name_match == 4 {
                            self.data_start()?;
                            self.line = Line::DataSpace;
                        } else {
                            self.line = Line::Skip;
                        }
                    } else if eol {
                        // A field with no colon: `data` alone is an empty
                        // data line.
                        if self.name_match == 4 {
                            self.data_start()?;
                        }
                        self.line = Line::Start;
                    } else {
                        self.name_byte(c);
                    }
                }
                Line::DataSpace | Line::Data => {
                    if eol {
                        self.line = Line::Start;
                    } else {
                        if self.line == Line::DataSpace {
                            self.line = Line::Data;
                            if c == b' ' {
                                i += 1;
                                continue;
                            }
                        }
                        let end = memchr::memchr2(b'\n', b'\r', &buf[i..]).map_or(n, |p| i + p);
                        self.data(&buf[i..end])?;
                        i = end;
                        continue;
                    }
                }
                Line::Skip => {
                    if eol {
                        self.line = Line::Start;
                    } else {
                        i = memchr::memchr2(b'\n', b'\r', &buf[i..]).map_or(n, |p| i + p);
                        continue;
                    }
                }
            }
            self.after_cr = c == b'\r';
            i += 1;
        }
        Ok(())
    }

    fn name_byte(&mut self, c: u8) {
        let k = self.name_match as usize;
        self.name_match = if k < 4 && c == b"data"[k] {
            k as u8 + 1
        } else {
            5
        };
    }

    /// A `data` field starts: the event's first (a new document), or a
    /// later one (joined to the data before by a line feed).
    fn data_start(&mut self) -> Result<(), UsageError> {
        if self.ev_data {
            self.data(b"\n")
        } else {
            self.ev_data = true;
            self.pending = 0;
            self.flushed = false;
            self.ev_err = None;
            self.hold.start();
            self.doc_reset();
            Ok(())
        }
    }

    /// Event data bytes: held back while they may be `[DONE]`, then
    /// lexed as JSON.
    fn data(&mut self, mut d: &[u8]) -> Result<(), UsageError> {
        const DONE: &[u8] = b"[DONE]";
        while !self.flushed {
            let Some((&b, rest)) = d.split_first() else {
                return Ok(());
            };
            let k = self.pending as usize;
            if k < DONE.len() && b == DONE[k] {
                self.pending += 1;
                d = rest;
            } else {
                self.flush();
            }
        }
        self.lex_event(d);
        Ok(())
    }

    fn flush(&mut self) {
        self.flushed = true;
        self.lex_event(&b"[DONE]"[..self.pending as usize]);
    }

    /// Event data past its `[DONE]` check: held while it fits, else lexed
    /// (what was held first).
    fn lex_event(&mut self, d: &[u8]) {
        if self.hold.on {
            if self.hold.take(d) {
                return;
            }
            self.hold.on = false;
            let held = self.hold.len;
            let buf = self.hold.buf;
            self.lex_now(&buf[..held]);
        }
        self.lex_now(d);
    }

    /// Lexes event data. An error waits for the event's blank line: an
    /// event the stream cuts is dropped, bad JSON and all.
    fn lex_now(&mut self, d: &[u8]) {
        if self.ev_err.is_none() {
            if let Err(e) = self.lex(d) {
                self.ev_err = Some(e);
            }
        }
    }

    /// A blank line: the event is dispatched.
    fn event_end(&mut self) -> Result<(), UsageError> {
        if !self.ev_data {
            return Ok(());
        }
        self.ev_data = false;
        if !self.flushed && self.pending == 6 {
            self.done = true;
            return Ok(());
        }
        if !self.flushed {
            self.flush();
        }
        if self.hold.on {
            // The whole event was held: read only if it may carry usage.
            self.hold.on = false;
            if !self.hold.may_carry_usage() {
                return Ok(());
            }
            let held = self.hold.len;
            let buf = self.hold.buf;
            self.lex_now(&buf[..held]);
        }
        if let Some(e) = self.ev_err.take() {
            return Err(e);
        }
        self.doc_end(true)
    }

    fn lex(&mut self, buf: &[u8]) -> Result<(), UsageError> {
        use UsageError::NotJson;
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
                St::Start | St::Value => self.value_start(c)?,
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
                        b',' => self.st = St::ObjKey,
                        b']' if array => self.close(),
                        b'}' if !array => self.close(),
                        _ => return Err(NotJson),
                    }
                }
                St::End => return Err(NotJson),
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
                        b'"' => self.string_end(),
                        b'\\' => self.st = St::Esc,
                        0x80.. => {
                            let end = i + text_run(&buf[i..]);
                            match core::str::from_utf8(&buf[i..end]) {
                                Ok(_) => self.take(&buf[i..end]),
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
                St::NumInt if c.is_ascii_digit() => {
                    if self.num_field.is_some() {
                        self.digit(c);
                    }
                }
                St::NumFrac | St::NumExp if c.is_ascii_digit() => {}
                St::NumZero | St::NumInt if c == b'.' => {
                    self.num_ok = false;
                    self.st = St::NumDot;
                }
                St::NumZero | St::NumInt | St::NumFrac if c == b'e' || c == b'E' => {
                    self.num_ok = false;
                    self.st = St::NumE;
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

    fn digit(&mut self, c: u8) {
        match self
            .num
            .checked_mul(10)
            .and_then(|x| x.checked_add((c - b'0') as u64))
        {
            Some(x) => self.num = x,
            None => self.num_ok = false,
        }
    }

    fn push(&mut self, array: bool) -> Result<(), UsageError> {
        let d = self.depth as usize;
        if d == DEPTH_MAX {
            return Err(UsageError::TooDeep);
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

    fn close(&mut self) {
        if self.depth == self.usage_depth {
            self.usage_depth = 0;
        }
        if self.depth == 2 && self.in_response {
            self.in_response = false;
        }
        self.depth -= 1;
        self.value_end();
    }

    /// A value has ended: a token field's number is stored.
    fn value_end(&mut self) {
        if let Some(k) = self.num_field.take() {
            let v = if self.num_ok {
                Val::Num(self.num)
            } else {
                Val::Bad
            };
            self.rec().fields[k as usize] = v;
        }
        self.st = if self.depth == 0 { St::End } else { St::After };
    }

    fn rec(&mut self) -> &mut Rec {
        if self.usage_resp {
            &mut self.resp
        } else {
            &mut self.top
        }
    }

    fn key_start(&mut self) {
        let d = self.depth;
        self.capture = (self.usage_depth != 0 && d == self.usage_depth)
            || d == 1
            || (self.in_response && d == 2);
        self.key_len = 0;
        self.is_key = true;
        self.st = St::Str;
    }

    fn value_start(&mut self, c: u8) -> Result<(), UsageError> {
        let slot = core::mem::replace(&mut self.slot, Slot::None);
        self.is_key = false;
        let obj = c == b'{';
        match slot {
            Slot::None => {}
            Slot::TopUsage | Slot::RespUsage => {
                let resp = slot == Slot::RespUsage;
                let kind = match c {
                    b'{' => Kind::Obj,
                    b'n' => Kind::Null,
                    _ => Kind::Bad,
                };
                *(if resp { &mut self.resp } else { &mut self.top }) = Rec {
                    kind,
                    fields: [Val::Absent; 5],
                };
                if obj {
                    self.usage_depth = self.depth + 1;
                    self.usage_resp = resp;
                }
            }
            Slot::Response => {
                self.resp = Rec::NONE;
                self.in_response = obj;
            }
            Slot::Field(k) => {
                if c.is_ascii_digit() {
                    self.num_field = Some(k);
                    self.num = (c - b'0') as u64;
                    self.num_ok = true;
                } else {
                    self.rec().fields[k as usize] = Val::Bad;
                }
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
            _ => return Err(UsageError::NotJson),
        };
        Ok(())
    }

    fn string_end(&mut self) {
        if !self.is_key {
            self.value_end();
            return;
        }
        self.st = St::Colon;
        if !self.capture {
            return;
        }
        self.capture = false;
        let key = &self.key[..self.key_len as usize];
        let d = self.depth;
        self.slot = if self.usage_depth != 0 && d == self.usage_depth {
            FIELDS
                .iter()
                .position(|f| *f == key)
                .map_or(Slot::None, |k| Slot::Field(k as u8))
        } else if d == 1 && key == b"usage" {
            Slot::TopUsage
        } else if d == 1 && key == b"response" && self.framing == Framing::Sse {
            Slot::Response
        } else if d == 2 && self.in_response && key == b"usage" {
            Slot::RespUsage
        } else {
            Slot::None
        };
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.capture {
            let len = self.key_len as usize;
            let k = bytes.len().min(KEY_MAX + 1 - len);
            self.key[len..len + k].copy_from_slice(&bytes[..k]);
            self.key_len += k as u8;
        }
    }

    fn hex_start(&mut self) {
        self.hex_left = 4;
        self.code = 0;
        self.st = St::Hex;
    }

    /// The fourth hex digit of `\uXXXX`, as in [`crate::body`]: lone
    /// surrogates are refused.
    fn hex_end(&mut self) -> Result<(), UsageError> {
        let code = self.code;
        let cp = if self.high != 0 {
            if !(0xdc00..=0xdfff).contains(&code) {
                return Err(UsageError::NotJson);
            }
            let cp = 0x10000 + ((self.high - 0xd800) << 10) + (code - 0xdc00);
            self.high = 0;
            cp
        } else if (0xd800..=0xdbff).contains(&code) {
            self.high = code;
            self.st = St::SurEsc;
            return Ok(());
        } else if (0xdc00..=0xdfff).contains(&code) {
            return Err(UsageError::NotJson);
        } else {
            code
        };
        let ch = char::from_u32(cp).ok_or(UsageError::NotJson)?;
        let mut utf8 = [0u8; 4];
        self.take(ch.encode_utf8(&mut utf8).as_bytes());
        self.st = St::Str;
        Ok(())
    }

    /// One byte of a UTF-8 sequence that a chunk boundary cut.
    fn utf8_byte(&mut self, b: u8) -> Result<(), UsageError> {
        if self.st == St::Utf {
            if b < self.utf_lo || b > self.utf_hi {
                return Err(UsageError::NotJson);
            }
            self.utf_lo = 0x80;
            self.utf_hi = 0xbf;
            self.utf_need -= 1;
            if self.utf_need == 0 {
                self.st = St::Str;
            }
        } else {
            let (need, lo, hi) = utf8_lead(b).ok_or(UsageError::NotJson)?;
            self.utf_need = need;
            self.utf_lo = lo;
            self.utf_hi = hi;
            self.st = St::Utf;
        }
        self.take(&[b]);
        Ok(())
    }
}

/// Bytes of an SSE event's data held before it is lexed. LLM streams'
/// chunks are a few hundred bytes; a longer event (a Responses API
/// `response.completed` carrying the whole output) is lexed as it comes.
pub const EVENT_HOLD: usize = 2048;

/// An SSE event's data, held so that one that cannot carry usage is
/// skipped unparsed (and not checked to be JSON): the key `usage` is in an
/// event's data either as those five bytes or with a `\u` escape in it,
/// and a key followed by `":` and `null` (blanks allowed) has no value.
/// So an event without a `\u` whose every `usage` reads `usage" : null`
/// has none; that is every chunk but the last of a stream asked for with
/// `include_usage` (OpenAI and vLLM send `"usage":null` in each), and what
/// keeps reading a stream of many small chunks near memory speed.
#[derive(Clone)]
struct Hold {
    on: bool,
    len: usize,
    buf: [u8; EVENT_HOLD],
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("on", &self.on)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Hold {
    const fn new() -> Hold {
        Hold {
            on: false,
            len: 0,
            buf: [0; EVENT_HOLD],
        }
    }

    fn start(&mut self) {
        self.on = true;
        self.len = 0;
    }

    /// Holds `d` if it fits (false: it does not; nothing is taken).
    fn take(&mut self, d: &[u8]) -> bool {
        let end = self.len + d.len();
        if end > EVENT_HOLD {
            return false;
        }
        self.buf[self.len..end].copy_from_slice(d);
        self.len = end;
        true
    }

    /// Whether the held event may carry usage (see [`Hold`]).
    fn may_carry_usage(&self) -> bool {
        let hay = &self.buf[..self.len];
        memchr::memchr_iter(b'\\', hay).any(|k| hay.get(k + 1) == Some(&b'u'))
            || memchr::memmem::find_iter(hay, b"usage").any(|k| !null_follows(&hay[k + 5..]))
    }
}

/// `rest` (what follows `usage`) reads `"`, `:` and `null`, blanks allowed
/// around the colon: a key whose value is null.
fn null_follows(rest: &[u8]) -> bool {
    fn blanks(b: &[u8]) -> &[u8] {
        let n = b.iter().take_while(|c| is_ws(**c)).count();
        &b[n..]
    }
    let Some(rest) = rest.strip_prefix(b"\"") else {
        return false;
    };
    let Some(rest) = blanks(rest).strip_prefix(b":") else {
        return false;
    };
    blanks(rest).starts_with(b"null")
}

#[cfg(test)]
mod tests {
    use super::*;
    use Framing::{Json, Sse};
    use UsageError::*;

    fn u(input: u64, output: u64, total: u64) -> Option<Usage> {
        Some(Usage::new(input, output, total))
    }

    /// The answer and `done_seen` of `body` fed in the pieces `cuts` marks.
    fn chunked(
        f: Framing,
        body: &[u8],
        cuts: &[usize],
    ) -> (Result<Option<Usage>, UsageError>, bool) {
        let mut s = UsageScanner::new(f);
        let mut at = 0;
        for &c in cuts.iter().chain([body.len()].iter()) {
            if s.feed(&body[at..c]).is_err() {
                break;
            }
            at = c;
        }
        (s.finish(), s.done_seen())
    }

    /// Every split point and byte by byte give the one-shot answer.
    fn all_chunkings(f: Framing, body: &[u8]) -> (Result<Option<Usage>, UsageError>, bool) {
        let want = chunked(f, body, &[]);
        // Miri: every seventh cut (tests/checks has them all).
        let step = if cfg!(miri) { 7 } else { 1 };
        for cut in (0..=body.len()).step_by(step) {
            assert_eq!(chunked(f, body, &[cut]), want, "{body:?} cut at {cut}");
        }
        let bytes: Vec<usize> = (1..body.len()).collect();
        assert_eq!(chunked(f, body, &bytes), want, "{body:?} byte by byte");
        want
    }

    fn json(body: &str) -> Result<Option<Usage>, UsageError> {
        usage_of(Json, body.as_bytes())
    }

    #[test]
    fn content_types() {
        for (v, f) in [
            (&b"application/json"[..], Some(Json)),
            (b"Application/JSON; charset=utf-8", Some(Json)),
            (b" application/vnd.api+json ", Some(Json)),
            (b"text/event-stream", Some(Sse)),
            (b"TEXT/Event-Stream;charset=UTF-8", Some(Sse)),
            (b"text/plain", None),
            (b"application/+json", None),
            (b"application/jsonx", None),
            (b"", None),
        ] {
            assert_eq!(Framing::from_content_type(v), f, "{v:?}");
        }
    }

    #[test]
    fn json_bodies() {
        let chat = br#"{"id":"c","choices":[{"message":{"content":"{\"usage\":{\"prompt_tokens\":1}}"}}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"completion_tokens_details":{"reasoning_tokens":7}}}"#;
        assert_eq!(all_chunkings(Json, chat), (Ok(u(12, 30, 42)), false));
        let resp = br#"{"object":"response","usage":{"input_tokens":5,"input_tokens_details":{"cached_tokens":0},"output_tokens":9,"output_tokens_details":{"usage":1},"total_tokens":14}}"#;
        assert_eq!(all_chunkings(Json, resp), (Ok(u(5, 9, 14)), false));
        assert_eq!(
            json(r#"{"usage":{"prompt_tokens":8,"total_tokens":8}}"#),
            Ok(u(8, 0, 8))
        );
        assert_eq!(
            json(r#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#),
            Ok(u(3, 4, 7))
        );
        assert_eq!(
            json(r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1}}"#),
            Ok(u(u64::MAX, 1, u64::MAX))
        );
        // Elsewhere is not the usage; the last duplicate wins.
        assert_eq!(json(r#"{"a":{"usage":{"prompt_tokens":1}}}"#), Ok(None));
        assert_eq!(json(r#"[{"usage":{"prompt_tokens":1}}]"#), Ok(None));
        assert_eq!(
            json(r#"{"response":{"usage":{"input_tokens":1}}}"#),
            Ok(None)
        );
        assert_eq!(json(r#"{"usage":null}"#), Ok(None));
        assert_eq!(
            json(r#"{"usage":{"prompt_tokens":1},"usage":null}"#),
            Ok(None)
        );
        assert_eq!(
            json(r#"{"usage":7,"usage":{"input_tokens":2}}"#),
            Ok(u(2, 0, 2))
        );
        assert_eq!(
            json(r#"{"usage":{"prompt_tokens":1.5,"prompt_tokens":2}}"#),
            Ok(u(2, 0, 2))
        );
        assert_eq!(
            json(r#"{"\u0075sage":{"prompt_tokens":1}}"#),
            Ok(u(1, 0, 1))
        );
        assert_eq!(
            json(r#"{"usage":{"input_tokens":1,"prompt_tokens":2}}"#),
            Ok(u(2, 0, 2))
        );
        assert_eq!(json("12"), Ok(None));
    }

    #[test]
    fn bad_usage_and_bad_json() {
        for bad in [
            r#"{"usage":{"prompt_tokens":12.0}}"#,
            r#"{"usage":{"prompt_tokens":1e3}}"#,
            r#"{"usage":{"prompt_tokens":-1}}"#,
            r#"{"usage":{"prompt_tokens":-0}}"#,
            r#"{"usage":{"prompt_tokens":"12"}}"#,
            r#"{"usage":{"prompt_tokens":null}}"#,
            r#"{"usage":{"total_tokens":18446744073709551616}}"#,
            r#"{"usage":{}}"#,
            r#"{"usage":{"cached":1}}"#,
            r#"{"usage":[1]}"#,
            r#"{"usage":"x"}"#,
        ] {
            assert_eq!(json(bad), Err(BadUsage), "{bad}");
        }
        for bad in [
            "",
            " ",
            "{",
            r#"{"usage":{"prompt_tokens":01}}"#,
            "{} x",
            "{\"a\":\"\\ud800\"}",
            "[1,]",
        ] {
            assert_eq!(json(bad), Err(NotJson), "{bad}");
        }
        assert_eq!(usage_of(Json, b"{\"a\":\"\xff\"}"), Err(NotJson));
        let mut deep = b"{\"a\":".to_vec();
        deep.extend(std::iter::repeat_n(b'[', DEPTH_MAX + 10));
        assert_eq!(usage_of(Json, &deep), Err(TooDeep));
    }

    #[test]
    fn sse_streams() {
        let chat = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6}}\n\ndata: [DONE]\n\n";
        assert_eq!(all_chunkings(Sse, chat), (Ok(u(4, 2, 6)), true));
        let crlf = b": keep-alive\r\nevent: response.completed\r\nid: 3\r\ndata:{\"type\":\"response.completed\",\r\ndata: \"response\":{\"usage\":{\"input_tokens\":1,\"output_tokens\":2,\"total_tokens\":3}}}\r\n\r\n";
        assert_eq!(all_chunkings(Sse, crlf), (Ok(u(1, 2, 3)), false));
        let cr = b"data: {\"usage\":{\"prompt_tokens\":1}}\r\rdata: {\"usage\":{\"prompt_tokens\":2}}\r\r";
        assert_eq!(all_chunkings(Sse, cr), (Ok(u(2, 0, 2)), false));
        // Cut: the last event has no blank line after it.
        let cut = b"data: {\"usage\":null}\n\ndata: {\"usage\":{\"prompt_tokens\":1}}\n";
        assert_eq!(all_chunkings(Sse, cut), (Ok(None), false));
        let no_usage = b"data: {\"x\":1}\n\ndata: [DONE]\n\n";
        assert_eq!(all_chunkings(Sse, no_usage), (Ok(None), true));
        // An event that cannot carry a usage key is skipped unparsed, bad
        // JSON and all; one that may is read, and its bad JSON is an error.
        let not_done = b"data: [DONE] \n\n";
        assert_eq!(chunked(Sse, not_done, &[]), (Ok(None), false));
        let bad_usage = b"data: {\"usage\":\n\n";
        assert_eq!(all_chunkings(Sse, bad_usage), (Err(NotJson), false));
        let escaped = b"data: {\"\\u0075sage\":{\"total_tokens\":7}}\n\n";
        assert_eq!(all_chunkings(Sse, escaped), (Ok(u(0, 0, 7)), false));
        // Longer than the hold: read as it comes, and checked.
        let mut long = b"data: {\"pad\":\"".to_vec();
        long.extend(std::iter::repeat_n(b'x', EVENT_HOLD));
        long.extend_from_slice(b"\",]\n\n");
        assert_eq!(chunked(Sse, &long, &[]), (Err(NotJson), false));
        let bad = b"data: {\"usage\":{\"prompt_tokens\":-1}}\n\n";
        assert_eq!(chunked(Sse, bad, &[]), (Err(BadUsage), false));
        // Empty data, a bare `data` field, other fields: no event.
        let empty = b"data:\n\ndata\n\nretry: 5\n\n";
        assert_eq!(chunked(Sse, empty, &[]), (Ok(None), false));
        // `datax:` is not data.
        assert_eq!(chunked(Sse, b"datax: [\n\n", &[]), (Ok(None), false));
    }

    #[test]
    fn fixed_size() {
        // What a C caller would provide for one (docs/usage.md).
        let n = core::mem::size_of::<UsageScanner>();
        assert!(n <= EVENT_HOLD + 512, "{n}");
    }

    #[test]
    fn errors_are_sticky_and_never_echo() {
        let mut s = UsageScanner::default();
        assert_eq!(s.framing(), Json);
        assert_eq!(s.feed(b"{x"), Err(NotJson));
        assert_eq!(s.feed(b"}"), Err(NotJson));
        assert_eq!(s.finish(), Err(NotJson));
        for e in [NotJson, TooDeep, BadUsage] {
            assert!(e.to_string().starts_with("the response"), "{e}");
        }
    }
}

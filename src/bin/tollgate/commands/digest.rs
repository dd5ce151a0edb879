//! `tollgate digest`: the account id a gateway that keys accounts by API
//! key (nginx's `$tollgate_bearer_digest`, the Python middleware's
//! `bearer_token_digest`, the tower layer's `bearer_digest`, the C ABI's
//! `tg_account_digest`) uses for a key, so an operator holding a
//! customer's key can find their counts. The key is
//! read from stdin, never from the command line, where `ps` and shell
//! history would show it.

use std::ffi::OsString;
use std::io::{BufRead, Read};

use serde::Serialize;

use super::{fail, Res};
use crate::output;

/// Longest key read (API keys are far shorter; this bounds the read).
const KEY_MAX: usize = 64 * 1024;

/// Account id for an API key read from stdin, as every binding's bearer
/// digest computes it
///
/// nginx's $tollgate_bearer_digest, Python's bearer_token_digest, the tower
/// layer's bearer_digest and the C ABI's tg_bearer_digest give the same id
/// for a key: BLAKE2b with a 16-byte digest, as 32 hex digits. The key is all of
/// stdin less one trailing newline (on a terminal: one line, not echoed),
/// never an argument: `tollgate digest < key.txt`.
#[derive(clap::Args)]
pub struct Args {
    /// Machine-readable output
    #[arg(long)]
    json: bool,
    /// Refused: a key on the command line would show in `ps` and shell history
    #[arg(hide = true, value_name = "KEY")]
    key: Option<OsString>,
}

#[derive(Serialize)]
struct Json {
    digest: String,
}

pub fn run(a: Args) -> Res<u8> {
    if a.key.is_some() {
        eprintln!(
            "tollgate: digest reads the key from stdin, never from the command line (it would show in `ps` and shell history): tollgate digest < key.txt\nRun `tollgate digest --help` for usage."
        );
        return Ok(2);
    }
    let key = read_key()?;
    let digest = tollgate::account_digest(&key);
    if a.json {
        output::json(&Json { digest });
    } else {
        println!("{digest}");
    }
    Ok(0)
}

/// The key: all of stdin less one trailing newline, or on a terminal one
/// line typed without echo.
fn read_key() -> Res<Vec<u8>> {
    let stdin = std::io::stdin();
    // SAFETY: isatty only inspects the descriptor.
    let mut key = if unsafe { libc::isatty(0) } == 1 {
        eprint!("API key (not echoed), then Enter: ");
        let _echo = EchoOff::new();
        let mut line = Vec::new();
        stdin
            .lock()
            .take(KEY_MAX as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| fail(format!("reading the key from stdin: {e}")))?;
        eprintln!();
        line
    } else {
        let mut all = Vec::new();
        stdin
            .lock()
            .take(KEY_MAX as u64 + 1)
            .read_to_end(&mut all)
            .map_err(|e| fail(format!("reading the key from stdin: {e}")))?;
        all
    };
    if key.len() > KEY_MAX {
        return Err(fail(format!(
            "the key on stdin is longer than {KEY_MAX} bytes"
        )));
    }
    if key.last() == Some(&b'\n') {
        key.pop();
    }
    if key.is_empty() {
        return Err(fail(
            "no key on stdin: pipe it in, e.g. tollgate digest < key.txt",
        ));
    }
    Ok(key)
}

/// Terminal echo off for as long as it lives (restored on drop).
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is open (a terminal); `t` is writable.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return EchoOff(None);
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        // SAFETY: `t` is a termios read from this terminal, one flag changed.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } != 0 {
            return EchoOff(None);
        }
        EchoOff(Some(saved))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read from this terminal.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

//! One module per subcommand, each with its arguments (`Args`, parsed by
//! clap) and `run`; here, what several of them share: the exit-1 failure,
//! the options every table command takes, opening a table, and the
//! decision helpers.

pub mod demo;
pub mod digest;
pub mod inspect;
pub mod policy;
pub mod refusals;
pub mod reset;
pub mod resize;
pub mod stats;
pub mod top;
pub mod verify;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tollgate::decision::Decision;
use tollgate::{Error, Limiter, Policy, Tier};

use crate::escape;

/// A command that ran and failed (exit 1). Usage mistakes never get here:
/// clap reports them (exit 2) before a command starts.
pub struct Fail(pub String);

pub type Res<T = ()> = Result<T, Fail>;

pub fn fail(m: impl Into<String>) -> Fail {
    Fail(m.into())
}

/// `--policy`: the policy the proxies run. Limits, verdicts and headers are
/// shown only from a policy named here; without one, commands show counts.
#[derive(clap::Args, Debug)]
pub struct PolicyOpt {
    /// Policy file the proxies run (limits and verdicts come only from it)
    #[arg(long, value_name = "POLICY.toml")]
    pub policy: Option<PathBuf>,
}

/// A policy the operator named, with where it came from.
pub struct Named {
    pub policy: Policy,
    pub path: PathBuf,
}

impl PolicyOpt {
    pub fn load(&self) -> Res<Option<Named>> {
        self.policy
            .as_ref()
            .map(|p| {
                Policy::load(p)
                    .map(|policy| Named {
                        policy,
                        path: p.clone(),
                    })
                    .map_err(|e| fail(e.to_string()))
            })
            .transpose()
    }
}

/// `--now-ms`: the clock, pinned by scripts and tests.
#[derive(clap::Args, Debug)]
pub struct Clock {
    /// Judge at this epoch-millisecond time instead of the clock
    #[arg(long = "now-ms", value_name = "MS")]
    pub now_ms: Option<u64>,
}

impl Clock {
    pub fn now(&self) -> u64 {
        self.now_ms.unwrap_or_else(tollgate::now_ms)
    }
}

/// `--tier`, for commands that show limits.
#[derive(clap::Args, Debug)]
pub struct TierOpt {
    /// Tier whose limits to show (with --policy): free, developer or enterprise
    #[arg(
        long,
        value_name = "TIER",
        default_value = "developer",
        value_parser = parse_tier,
        requires = "policy"
    )]
    pub tier: Tier,
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    Tier::parse(s).ok_or_else(|| "not free, developer or enterprise".to_string())
}

/// Opens a table for reading only: nothing this process does reaches the
/// file, and no model name is registered in it. The policy (if any) only
/// names models; without one, none are looked up.
pub fn open_read_only(policy: Option<&Policy>, path: &Path) -> Res<Limiter> {
    let none;
    let policy = match policy {
        Some(p) => p,
        None => {
            none = Policy::builtin();
            &none
        }
    };
    Limiter::open_read_only(policy, path).map_err(|e| fail(describe(&e, path)))
}

/// Opens a table to change it (`reset`).
pub fn open_write(policy: &Policy, path: &Path) -> Res<Limiter> {
    Limiter::open(policy, path, 0, false).map_err(|e| fail(describe(&e, path)))
}

/// An error with the file named when the library's message does not.
pub fn describe(e: &Error, path: &Path) -> String {
    match e {
        Error::Io { .. } | Error::NoSpace { .. } => e.to_string(),
        _ => format!("{}: {e}", shown(path)),
    }
}

/// A path for a terminal.
pub fn shown(path: &Path) -> String {
    escape::term(path.as_os_str().as_bytes())
}

/// A path for JSON.
pub fn json_path(path: &Path) -> String {
    escape::json(path.as_os_str().as_bytes())
}

/// The rate-limit headers of a decision, `name: value\r\n` each.
pub fn headers(d: &Decision) -> String {
    let mut s = String::new();
    d.write_headers(&mut s).expect("writing to a String");
    s
}

/// The 429 body a client would get.
pub fn error_body(d: &Decision, model: &str) -> String {
    let mut s = String::new();
    d.write_error_body(model.as_bytes(), &mut s)
        .expect("writing to a String");
    s
}

/// "25/30", or "25/-" when the policy sets no limit.
pub fn of(n: u32, limit: Option<u32>) -> String {
    match limit {
        Some(l) => format!("{n}/{l}"),
        None => format!("{n}/-"),
    }
}

//! The worker process of the multi-process tests (`tollgate-test-worker`,
//! a test-only binary: not the operator's command, not installed). Decides
//! requests against a shared region file and reports what was admitted:
//! `admitted A denied D errors E` (or that as JSON with `--json`).
//!
//! With `--stream`, writes `R` once the table is open, then the key index
//! (two bytes, little-endian, in one atomic pipe write) the moment each
//! request is admitted, so a parent that SIGKILLs it knows every admission
//! but the one in flight.
//!
//! With `--hold-ms`, runs requests of a key with an in-flight limit: each
//! admitted request takes one of the lock files `--locks DIR/0..N-1` (N the
//! key's limit) as the upstream's witness of what runs at once, holds it,
//! then unlocks and releases. No free lock file means the limiter let more
//! than N run: the worker says so and exits 3. The kernel drops a killed
//! worker's locks at its death, before anyone can reclaim its units.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use tollgate::{Limiter, Policy, Request, Tier};

#[derive(Parser)]
#[command(name = "tollgate-test-worker", args_override_self = true)]
struct Args {
    /// Region file
    file: PathBuf,
    /// Account id (with --accounts K: ACCOUNT-0 .. ACCOUNT-(K-1))
    #[arg(long)]
    account: OsString,
    #[arg(long, default_value = "DeepSeek-V3.1")]
    model: String,
    #[arg(long, default_value = "developer", value_parser = parse_tier)]
    tier: Tier,
    /// Requests per minute simulated (cycling over the accounts)
    #[arg(long, default_value_t = 1)]
    count: u64,
    #[arg(long, default_value_t = 1)]
    accounts: u32,
    /// Explicit limits (0: the policy's)
    #[arg(long, default_value_t = 0)]
    rpm: u32,
    #[arg(long, default_value_t = 0)]
    rpd: u32,
    /// Tokens each request reserves (never settled: held until killed),
    /// under explicit token limits --tpm and --tpd
    #[arg(long, default_value_t = 0)]
    tokens: u32,
    /// Settle each admitted reservation at once, with a usage from half
    /// of it to 1.75 times it drawn from this seed (0: never settle); the
    /// JSON output then also gives the tokens used and those beyond the
    /// reservations
    #[arg(long, default_value_t = 0)]
    settle_seed: u64,
    #[arg(long, default_value_t = 0)]
    tpm: u32,
    #[arg(long, default_value_t = 0)]
    tpd: u32,
    #[arg(long = "now-ms")]
    now_ms: Option<u64>,
    /// Consecutive minutes to send `count` requests in
    #[arg(long, default_value_t = 1)]
    minutes: u64,
    /// Create the file with this many slots if it is missing
    #[arg(long = "create-slots", default_value_t = 0)]
    create_slots: u32,
    /// Start only once this path exists (lines racing workers up)
    #[arg(long = "wait-for")]
    wait_for: Option<PathBuf>,
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    stream: bool,
    /// Repeat until killed
    #[arg(long)]
    forever: bool,
    /// Every request a new key, each a day after the last
    #[arg(long)]
    churn: bool,
    /// With --churn: the days wrap after this many, so a churning worker
    /// that runs long never reaches a later day's keys (whose slots it
    /// would then see as stale, and take)
    #[arg(long, default_value_t = u64::MAX)]
    churn_days: u64,
    /// In-flight mode: hold each admitted request for up to this many
    /// milliseconds (random, from --settle-seed), forever
    #[arg(long = "hold-ms")]
    hold_ms: Option<u64>,
    /// In-flight mode: hold each request exactly --hold-ms
    #[arg(long = "hold-exact")]
    hold_exact: bool,
    /// In-flight mode: the directory of the witness lock files
    #[arg(long)]
    locks: Option<PathBuf>,
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    Tier::parse(s).ok_or_else(|| "not free, developer or enterprise".into())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(m) => {
            eprintln!("tollgate-test-worker: {m}");
            ExitCode::from(1)
        }
    }
}

/// Unbuffered on purpose: each admission must leave before the next
/// decision.
fn put(b: &[u8]) {
    // SAFETY: writes from a live slice to stdout.
    unsafe { libc::write(1, b.as_ptr().cast(), b.len()) };
}

fn run(a: Args) -> Result<u8, String> {
    let now = a.now_ms.unwrap_or_else(tollgate::now_ms);
    let keys = a.accounts.max(1);
    let minutes = a.minutes.max(1);
    if a.stream && keys > u16::MAX as u32 {
        return Err("--stream handles at most 65535 accounts".into());
    }
    if let Some(w) = &a.wait_for {
        let until = Instant::now() + Duration::from_secs(30);
        while !w.exists() {
            if Instant::now() > until {
                return Err(format!("{} did not appear within 30 s", w.display()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let policy = match &a.policy {
        Some(p) => Policy::load(p).map_err(|e| e.to_string())?,
        None => Policy::builtin(),
    };
    let create = a.create_slots;
    let l = Limiter::open(&policy, &a.file, create, create > 0)
        .map_err(|e| format!("{}: {e}", a.file.display()))?;
    if a.stream {
        put(b"R");
    }
    if let Some(hold) = a.hold_ms {
        return hold_forever(&a, &l, hold);
    }
    let (mut admitted, mut denied, mut errors) = (0u64, 0u64, 0u64);
    let mut tally = |r: Result<tollgate::Decision, tollgate::Error>| match r {
        Ok(d) if d.allowed => {
            admitted += 1;
            true
        }
        Ok(_) => {
            denied += 1;
            false
        }
        Err(_) => {
            errors += 1;
            false
        }
    };
    let (mut used, mut excess, mut rng) = (0u64, 0u64, a.settle_seed | 1);
    let model = a.model.as_bytes();
    let account = a.account.as_bytes();
    // `ACCOUNT-suffix`, byte for byte (accounts need not be UTF-8).
    let named = |suffix: String| [account, b"-", suffix.as_bytes()].concat();
    if a.churn {
        // Every decision binds a slot, mostly one left stale by an earlier key.
        let mut j = 0u64;
        while a.forever || j < a.count {
            let name = named(j.to_string());
            let req = Request::new(&name, model, a.tier).limits(a.rpm, a.rpd);
            tally(l.check(&req, now + j % a.churn_days.max(1) * 86_400_000));
            j += 1;
        }
    } else {
        let names: Vec<Vec<u8>> = (0..keys)
            .map(|k| {
                if keys == 1 {
                    account.to_vec()
                } else {
                    named(k.to_string())
                }
            })
            .collect();
        loop {
            for m in 0..minutes {
                let t = now + m * 60_000;
                for i in 0..a.count {
                    let k = (i % keys as u64) as usize;
                    let req = Request::new(&names[k], model, a.tier)
                        .limits(a.rpm, a.rpd)
                        .tokens(a.tokens)
                        .token_limits(a.tpm, a.tpd);
                    let r = l.check(&req, t);
                    let ticket = r.as_ref().ok().and_then(|d| d.tokens?.ticket);
                    if tally(r) && a.stream {
                        put(&(k as u16).to_le_bytes());
                    }
                    if let (true, Some(ticket)) = (a.settle_seed != 0, ticket) {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let reserved = ticket.reserved() as u64;
                        let u = reserved / 2 + rng % (reserved * 5 / 4 + 1);
                        l.settle(ticket, tollgate::Ending::Usage(u), t)
                            .map_err(|e| format!("settle: {e}"))?;
                        used += u;
                        excess += u.saturating_sub(reserved);
                    }
                }
            }
            if !a.forever {
                break;
            }
        }
    }
    if !a.stream {
        if a.json {
            println!("{{\"admitted\":{admitted},\"denied\":{denied},\"errors\":{errors},\"used\":{used},\"excess\":{excess}}}");
        } else {
            println!("admitted {admitted} denied {denied} errors {errors}");
        }
    }
    Ok(if errors > 0 { 1 } else { 0 })
}

/// In-flight mode (`--hold-ms`): admit, take a witness lock, hold, unlock,
/// release; a refusal waits a little and asks again. Writes `A` per
/// admission. Runs until killed, or exits 3 when the witness finds more
/// than the limit running.
fn hold_forever(a: &Args, l: &Limiter, hold: u64) -> Result<u8, String> {
    let dir = a.locks.as_ref().ok_or("--hold-ms needs --locks DIR")?;
    let mut rng = a.settle_seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let req = Request::new(a.account.as_bytes(), a.model.as_bytes(), a.tier);
    loop {
        let now = a.now_ms.unwrap_or_else(tollgate::now_ms);
        let d = l.check(&req, now).map_err(|e| format!("check: {e}"))?;
        let Some(f) = d.in_flight else {
            return Err("the key has no in-flight limit".into());
        };
        let Some(admission) = f.admission else {
            std::thread::sleep(Duration::from_millis(1 + next() % 5));
            continue;
        };
        let lock = (0..f.limit).find_map(|i| {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(i.to_string()))
                .ok()?;
            // SAFETY: flock on a live descriptor this closure owns.
            let got = unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    libc::LOCK_EX | libc::LOCK_NB,
                )
            };
            (got == 0).then_some(file)
        });
        let Some(lock) = lock else {
            eprintln!(
                "tollgate-test-worker: admitted with all {} witness locks held: more than the limit running",
                f.limit
            );
            return Ok(3);
        };
        put(b"A");
        let ms = if a.hold_exact {
            hold
        } else {
            next() % (hold + 1)
        };
        std::thread::sleep(Duration::from_millis(ms));
        drop(lock);
        l.release(admission, tollgate::Ending::Complete)
            .map_err(|e| format!("release: {e}"))?;
    }
}

//! `tollgate resize OLD NEW --slots N`: a new table with the live counters
//! carried over. OLD is only read; NEW never overwrites a file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{describe, fail, json_path, shown, Clock, PolicyOpt, Res};
use crate::output;

/// New table of N slots with the live counters carried over (OLD is only read)
#[derive(clap::Args)]
pub struct Args {
    /// Region file the proxies use now
    #[arg(value_name = "OLD")]
    old: PathBuf,
    /// Region file to create (never overwritten)
    #[arg(value_name = "NEW")]
    new: PathBuf,
    /// Slots in the new table (1 to 2^30)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1 << 30))]
    slots: u32,
    #[command(flatten)]
    policy: PolicyOpt,
    #[command(flatten)]
    clock: Clock,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Json {
    old: String,
    new: String,
    slots: u32,
    bytes: u64,
    carried: u32,
    unnamed: u32,
    unknown_model: u32,
    stale: u32,
}

pub fn run(a: Args) -> Res<u8> {
    let now = a.clock.now();
    let named = a.policy.load()?;
    let builtin;
    let policy = match &named {
        Some(n) => &n.policy,
        None => {
            builtin = tollgate::Policy::builtin();
            &builtin
        }
    };
    let began = Instant::now();
    let mut last: Option<Instant> = None;
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(2) } == 1;
    // Reads a table of this layout version or the one before (carrying a
    // table made by an older library over to this one).
    let result =
        tollgate::Limiter::resize_file(policy, &a.old, &a.new, a.slots, now, |done, total| {
            // Only copies that take over a second earn progress, twice a second
            // at most; a terminal gets one line rewritten in place.
            let due = match last {
                None => began.elapsed() > Duration::from_secs(1),
                Some(t) => t.elapsed() > Duration::from_millis(500) || done == total,
            };
            if due {
                let pct = done * 100 / total.max(1);
                let (start, end) = if tty { ("\r", "") } else { ("", "\n") };
                eprint!("{start}resize: {pct:3}% ({done} of {total} slots read){end}");
                last = Some(Instant::now());
            }
        });
    if last.is_some() && tty {
        eprintln!();
    }
    // The new file is made fresh: a region error can only be the old one's.
    let (nl, rep) = result.map_err(|e| match e {
        tollgate::Error::Region(_) => fail(describe(&e, &a.old)),
        _ => fail(describe(&e, &a.new)),
    })?;
    let st = nl.stats(now);
    if a.json {
        output::json(&Json {
            old: json_path(&a.old),
            new: json_path(&a.new),
            slots: st.slots,
            bytes: st.bytes as u64,
            carried: rep.carried,
            unnamed: rep.unnamed,
            unknown_model: rep.unknown_model,
            stale: rep.stale,
        });
        return Ok(0);
    }
    let (old, new) = (shown(&a.old), shown(&a.new));
    println!("created {new}: {} slots, {} bytes", st.slots, st.bytes);
    println!(
        "carried {} live key{} from {old}",
        rep.carried,
        output::s(rep.carried)
    );
    if rep.stale > 0 {
        println!(
            "skipped {} key{} with no counts today",
            rep.stale,
            output::s(rep.stale)
        );
    }
    let lost = rep.unnamed + rep.unknown_model;
    if lost > 0 {
        println!(
            "could not carry {lost} live key{} (no account name: their binder stopped mid-bind; or no model name): they start again at 0",
            output::s(lost)
        );
    }
    println!("point the proxies at {new}; requests the old table admits meanwhile are not carried");
    Ok(0)
}

//! `tollgate verify FILE`: checks every slot's invariants; exit 1 on damage.

use std::path::PathBuf;

use serde::Serialize;

use super::{json_path, open_read_only, shown, Clock, PolicyOpt, Res};
use crate::output;

/// Check every slot (reads the table; exit 1 on damage)
#[derive(clap::Args)]
pub struct Args {
    /// Region file
    #[arg(value_name = "FILE")]
    file: PathBuf,
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
    path: String,
    ok: bool,
    slots: u32,
    bound: u32,
    live: u32,
    open: u32,
    never_used: u32,
    unnamed: u32,
    models: u32,
    problems: Vec<ProblemJson>,
    notes: Vec<String>,
}

#[derive(Serialize)]
struct ProblemJson {
    slot: Option<u32>,
    message: String,
}

pub fn run(a: Args) -> Res<u8> {
    let now = a.clock.now();
    let named = a.policy.load()?;
    let l = open_read_only(named.as_ref().map(|n| &n.policy), &a.file)?;
    let r = l.verify(now);
    let code = if r.ok() { 0 } else { 1 };
    if a.json {
        output::json(&Json {
            path: json_path(&a.file),
            ok: r.ok(),
            slots: r.slots,
            bound: r.bound,
            live: r.live,
            open: r.open,
            never_used: r.never_used,
            unnamed: r.unnamed,
            models: r.models,
            problems: r
                .problems
                .iter()
                .map(|p| ProblemJson {
                    slot: p.slot,
                    message: p.message.clone(),
                })
                .collect(),
            notes: r.notes.clone(),
        });
        return Ok(code);
    }
    let n = r.problems.len();
    let verdict = if r.ok() {
        "OK".to_string()
    } else {
        format!("{n} PROBLEM{}", if n == 1 { "" } else { "S" })
    };
    println!("{}: {verdict}", shown(&a.file));
    println!(
        "slots   {}: {} bound ({} with counts today), {} open, {} never used",
        r.slots, r.bound, r.live, r.open, r.never_used
    );
    println!("models  {} registered", r.models);
    for p in r.problems.iter().take(50) {
        println!("problem {p}");
    }
    if n > 50 {
        println!("problem ... and {} more (--json lists all)", n - 50);
    }
    for note in &r.notes {
        println!("note    {note}");
    }
    Ok(code)
}

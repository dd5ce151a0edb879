//! `tollgate stats FILE`: how full the table is, what it refused for want
//! of a slot, how often it met counts from a wrong clock, its layout and
//! size, the models registered in it.

use std::path::PathBuf;

use serde::Serialize;

use super::{json_path, open_read_only, shown, Clock, PolicyOpt, Res};
use crate::escape;
use crate::output;
use crate::time::utc;

/// Table usage, size and layout (reads the table; changes nothing)
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
    layout_version: u32,
    created_ms: u64,
    bytes: u64,
    header_bytes: u64,
    bytes_per_slot: u64,
    slots: u32,
    used: u32,
    free: u32,
    table_full: u64,
    clock_faults: u64,
    models: Vec<String>,
}

pub fn run(a: Args) -> Res<u8> {
    let now = a.clock.now();
    let named = a.policy.load()?;
    let l = open_read_only(named.as_ref().map(|n| &n.policy), &a.file)?;
    let s = l.stats(now);
    let models = l.region_models();
    let header = s.bytes - s.slots as usize * tollgate::BYTES_PER_SLOT;
    let free = s.slots - s.used;
    if a.json {
        output::json(&Json {
            path: json_path(&a.file),
            layout_version: s.layout_version,
            created_ms: l.created_ms(),
            bytes: s.bytes as u64,
            header_bytes: header as u64,
            bytes_per_slot: tollgate::BYTES_PER_SLOT as u64,
            slots: s.slots,
            used: s.used,
            free,
            table_full: s.table_full,
            clock_faults: s.clock_faults,
            models: models
                .iter()
                .map(|(_, m)| escape::json(m.as_bytes()))
                .collect(),
        });
        return Ok(0);
    }
    let pct = s.used as f64 * 100.0 / s.slots as f64;
    println!("region      {}", shown(&a.file));
    println!(
        "layout      version {}, created {}",
        s.layout_version,
        utc(l.created_ms())
    );
    println!(
        "size        {} bytes: {header} header + {} per slot x {} slots",
        s.bytes,
        tollgate::BYTES_PER_SLOT,
        s.slots
    );
    println!("slots       {} used today ({pct:.1}%), {free} free", s.used);
    println!(
        "table full  {} refusal{} since the region was created (a new key found no free slot)",
        s.table_full,
        output::s(s.table_full)
    );
    println!(
        "clock       {} fault{} since the region was created (counts dated ahead of the clock, re-dated)",
        s.clock_faults,
        output::s(s.clock_faults)
    );
    let names: Vec<String> = models
        .iter()
        .map(|(_, m)| escape::term(m.as_bytes()))
        .collect();
    const SHOWN: usize = 20;
    let list = match names.len() {
        0 => String::new(),
        n if n <= SHOWN => format!(": {}", names.join(", ")),
        n => format!(
            ": {}, ... and {} more (--json lists all)",
            names[..SHOWN].join(", "),
            n - SHOWN
        ),
    };
    println!("models      {} registered{list}", names.len());
    if pct > 80.0 {
        println!("note        over 80% used: probe chains grow; grow it with `tollgate resize`");
    }
    Ok(0)
}

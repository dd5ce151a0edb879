//! `tollgate stats FILE`: how full the table is, what it refused for want
//! of a slot, how often it met counts from a wrong clock, its layout and
//! size, the models registered in it, and (a table with token windows)
//! the tokens charged now, and (a table with in-flight limits) the requests
//! running and their releases by cause.

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
    /// Present for a table of quota leases (one quota across hosts).
    #[serde(skip_serializing_if = "Option::is_none")]
    leases: Option<LeasesJson>,
    /// Present for a table with token windows (formatted since 0.4).
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<TokensJson>,
    /// Present for a table with the in-flight areas (formatted since 0.4).
    #[serde(skip_serializing_if = "Option::is_none")]
    in_flight: Option<InFlightJson>,
}

#[derive(Serialize)]
struct InFlightJson {
    running: u64,
    released_completed: u64,
    released_aborted: u64,
    reclaimed: u64,
    refused: u64,
}

#[derive(Serialize)]
struct TokensJson {
    keys: u32,
    minute: u64,
    day: u64,
}

#[derive(Serialize)]
struct LeasesJson {
    keys_holding: u32,
    minute_units_held: u64,
    day_units_held: u64,
    keys_down: u32,
    down_admitted_today: u64,
}

pub fn run(a: Args) -> Res<u8> {
    let now = a.clock.now();
    let named = a.policy.load()?;
    let l = open_read_only(named.as_ref().map(|n| &n.policy), &a.file)?;
    let s = l.stats(now);
    let models = l.region_models();
    let leases = l
        .lease_table_stats(now)
        .map_err(|e| super::fail(e.to_string()))?;
    let tokens = l
        .token_table_stats(now)
        .map_err(|e| super::fail(e.to_string()))?;
    let per_slot = bytes_per_slot(&s);
    let header = s.bytes - s.slots as usize * per_slot;
    let free = s.slots - s.used;
    if a.json {
        output::json(&Json {
            path: json_path(&a.file),
            layout_version: s.layout_version,
            created_ms: l.created_ms(),
            bytes: s.bytes as u64,
            header_bytes: header as u64,
            bytes_per_slot: per_slot as u64,
            slots: s.slots,
            used: s.used,
            free,
            table_full: s.table_full,
            clock_faults: s.clock_faults,
            models: models
                .iter()
                .map(|(_, m)| escape::json(m.as_bytes()))
                .collect(),
            leases: leases.map(|t| LeasesJson {
                keys_holding: t.keys_holding,
                minute_units_held: t.minute_units_held,
                day_units_held: t.day_units_held,
                keys_down: t.keys_down,
                down_admitted_today: t.down_admitted_today,
            }),
            tokens: tokens.map(|t| TokensJson {
                keys: t.keys,
                minute: t.minute,
                day: t.day,
            }),
            in_flight: s.in_flight.map(|f| InFlightJson {
                running: f.in_use,
                released_completed: f.completed,
                released_aborted: f.aborted,
                reclaimed: f.reclaimed,
                refused: f.refused,
            }),
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
        "size        {} bytes: {header} header + {per_slot} per slot x {} slots",
        s.bytes, s.slots
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
    if let Some(t) = tokens {
        println!(
            "tokens      {} key{} with tokens today: {} charged this UTC minute, {} this UTC day (reserved and settled)",
            t.keys,
            output::s(t.keys as u64),
            t.minute,
            t.day
        );
    }
    if let Some(f) = s.in_flight {
        println!(
            "in flight   {} request{} running now; released since created: {} completed, {} aborted, {} reclaimed from dead processes; {} refused for in-flight",
            f.in_use,
            output::s(f.in_use),
            f.completed,
            f.aborted,
            f.reclaimed,
            f.refused
        );
    }
    if let Some(t) = leases {
        println!(
            "leases      one quota across hosts: {} key{} hold {} minute / {} day unit{} of leases now",
            t.keys_holding,
            output::s(t.keys_holding as u64),
            t.minute_units_held,
            t.day_units_held,
            output::s(t.day_units_held)
        );
        println!(
            "down        {} request{} for {} key{} admitted today by the down policy (Redis away), pushed to Redis when it answered",
            t.down_admitted_today,
            output::s(t.down_admitted_today),
            t.keys_down,
            output::s(t.keys_down as u64)
        );
        println!(
            "note        refills, Redis latency and fallbacks are counted by each joined process: nginx `tollgate_metrics`, tg_limiter_lease_stats, Python Limiter.lease_stats()"
        );
    }
    if pct > 80.0 {
        println!("note        over 80% used: probe chains grow; grow it with `tollgate resize`");
    }
    Ok(0)
}

/// Bytes each slot takes, as this table was formatted (the library says).
fn bytes_per_slot(s: &tollgate::Stats) -> usize {
    s.bytes_per_slot
}

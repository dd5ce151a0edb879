//! `tollgate top FILE`: the busiest (account, model) keys now, with their
//! limits when the operator names the policy.

use std::path::PathBuf;

use serde::Serialize;
use tollgate::{KeyUsage, Limits, Policy, Tier};

use super::{json_path, of, open_read_only, shown, Clock, PolicyOpt, Res, TierOpt};
use crate::escape;
use crate::output::{self, table};
use crate::time::utc;

/// Busiest (account, model) keys now (reads the table; changes nothing)
#[derive(clap::Args)]
pub struct Args {
    /// Region file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Rank by this window's count
    #[arg(long, value_enum, default_value = "minute")]
    by: By,
    /// How many keys to show
    #[arg(short = 'n', value_name = "N", default_value_t = 20)]
    n: usize,
    #[command(flatten)]
    tier: TierOpt,
    #[command(flatten)]
    policy: PolicyOpt,
    #[command(flatten)]
    clock: Clock,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum By {
    Minute,
    Day,
}

#[derive(Serialize)]
struct Json {
    now_ms: u64,
    /// The policy limits come from; `null`: none named, counts only.
    policy: Option<String>,
    tier: &'static str,
    by: &'static str,
    keys: usize,
    top: Vec<Row>,
}

#[derive(Serialize)]
struct Row {
    account: Option<String>,
    slot: u32,
    model: Option<String>,
    minute: u32,
    day: u32,
    rpm: Option<u32>,
    rpd: Option<u32>,
}

fn limits_of(policy: &Policy, tier: Tier, u: &KeyUsage) -> Option<Limits> {
    let m = policy.model_index(u.model.as_deref()?.as_bytes())?;
    policy.limits(tier, m, u.account.as_deref()?)
}

pub fn run(a: Args) -> Res<u8> {
    let tier = a.tier.tier;
    let now = a.clock.now();
    let named = a.policy.load()?;
    let l = open_read_only(named.as_ref().map(|n| &n.policy), &a.file)?;
    let mut rows = l.usage(now).map_err(|e| super::fail(e.to_string()))?;
    rows.retain(|u| u.day > 0);
    rows.sort_by(|x, y| {
        let key = |u: &KeyUsage| match a.by {
            By::Day => (u.day, u.minute),
            By::Minute => (u.minute, u.day),
        };
        key(y)
            .cmp(&key(x))
            .then_with(|| x.account.cmp(&y.account))
            .then_with(|| x.model.cmp(&y.model))
    });
    let keys = rows.len();
    rows.truncate(a.n);
    let by = if a.by == By::Day { "day" } else { "minute" };
    let lim = |u: &KeyUsage| named.as_ref().and_then(|n| limits_of(&n.policy, tier, u));
    if a.json {
        output::json(&Json {
            now_ms: now,
            policy: named.as_ref().map(|n| json_path(&n.path)),
            tier: tier.name(),
            by,
            keys,
            top: rows
                .iter()
                .map(|u| Row {
                    account: u.account.as_deref().map(escape::json),
                    slot: u.slot,
                    model: u.model.as_deref().map(|m| escape::json(m.as_bytes())),
                    minute: u.minute,
                    day: u.day,
                    rpm: lim(u).map(|l| l.rpm),
                    rpd: lim(u).map(|l| l.rpd),
                })
                .collect(),
        });
        return Ok(0);
    }
    if keys == 0 {
        println!("no counts today in {} (at {})", shown(&a.file), utc(now));
        return Ok(0);
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|u| {
            let name = match &u.account {
                Some(acct) => escape::term(acct),
                None => format!("(unnamed, slot {})", u.slot),
            };
            let model = u
                .model
                .as_deref()
                .map_or("(unknown)".into(), |m| escape::term(m.as_bytes()));
            let (minute, day) = match &named {
                Some(_) => {
                    let l = lim(u);
                    (of(u.minute, l.map(|l| l.rpm)), of(u.day, l.map(|l| l.rpd)))
                }
                None => (u.minute.to_string(), u.day.to_string()),
            };
            vec![name, model, minute, day]
        })
        .collect();
    let limits = match &named {
        Some(n) => format!("limits: {} tier of {}", tier.name(), shown(&n.path)),
        None => "counts only: --policy FILE adds the limits".to_string(),
    };
    println!(
        "top {} of {keys} key{} by {by} at {} ({limits})",
        rows.len(),
        output::s(keys as u64),
        utc(now),
    );
    print!("{}", table(&["ACCOUNT", "MODEL", "MINUTE", "DAY"], &body));
    Ok(0)
}

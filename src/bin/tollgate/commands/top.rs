//! `tollgate top FILE`: the busiest (account, model) keys now, with their
//! limits when the operator names the policy, and their token windows when
//! any key listed has tokens charged (or the policy has token limits), and
//! their requests in flight with the pids holding them when any key listed
//! has some running (or the policy has in-flight limits).

use std::path::PathBuf;

use serde::Serialize;
use tollgate::{KeyUsage, Limits, Policy, Tier, TokenLimits};

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
    /// Rank by this window's count (requests, or tokens charged), or by
    /// requests running now
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
    TokensMinute,
    TokensDay,
    InFlight,
}

impl By {
    fn name(self) -> &'static str {
        match self {
            By::Minute => "minute",
            By::Day => "day",
            By::TokensMinute => "tokens-minute",
            By::TokensDay => "tokens-day",
            By::InFlight => "in-flight",
        }
    }
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
    /// Tokens charged (reserved, then settled) this UTC minute and day.
    tokens_minute: u32,
    tokens_day: u32,
    /// The key's token limits under `policy`; `null` without one, or for
    /// a key without token limits.
    tpm: Option<u32>,
    tpd: Option<u32>,
    /// Requests running now, the key's `max_in_flight` under `policy`,
    /// and the pids holding them.
    in_flight: u32,
    max_in_flight: Option<u32>,
    holders: Vec<u32>,
}

fn limits_of(policy: &Policy, tier: Tier, u: &KeyUsage) -> Option<Limits> {
    let m = policy.model_index(u.model.as_deref()?.as_bytes())?;
    policy.limits(tier, m, u.account.as_deref()?)
}

fn token_limits_of(policy: &Policy, tier: Tier, u: &KeyUsage) -> Option<TokenLimits> {
    let m = policy.model_index(u.model.as_deref()?.as_bytes())?;
    policy.token_limits(tier, m, u.account.as_deref()?)
}

fn max_in_flight_of(policy: &Policy, tier: Tier, u: &KeyUsage) -> Option<u32> {
    let m = policy.model_index(u.model.as_deref()?.as_bytes())?;
    policy
        .max_in_flight(tier, m, u.account.as_deref()?)
        .map(u32::from)
}

/// "41x2 57" : the pids holding a key's requests, with counts over one.
fn holders(u: &KeyUsage) -> String {
    u.holders
        .iter()
        .map(|h| match (h.units, h.alive) {
            (1, true) => h.pid.to_string(),
            (n, true) => format!("{}x{n}", h.pid),
            (n, false) => format!("{}x{n}(dead)", h.pid),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(a: Args) -> Res<u8> {
    let tier = a.tier.tier;
    let now = a.clock.now();
    let named = a.policy.load()?;
    let l = open_read_only(named.as_ref().map(|n| &n.policy), &a.file)?;
    let mut rows = l.usage(now).map_err(|e| super::fail(e.to_string()))?;
    rows.retain(|u| u.day > 0 || u.tokens_day > 0 || u.in_flight > 0);
    rows.sort_by(|x, y| {
        let key = |u: &KeyUsage| match a.by {
            By::Day => (u.day, u.minute),
            By::Minute => (u.minute, u.day),
            By::TokensMinute => (u.tokens_minute, u.tokens_day),
            By::TokensDay => (u.tokens_day, u.tokens_minute),
            By::InFlight => (u.in_flight, u.minute),
        };
        key(y)
            .cmp(&key(x))
            .then_with(|| x.account.cmp(&y.account))
            .then_with(|| x.model.cmp(&y.model))
    });
    let keys = rows.len();
    rows.truncate(a.n);
    let by = a.by.name();
    let lim = |u: &KeyUsage| named.as_ref().and_then(|n| limits_of(&n.policy, tier, u));
    let tlim = |u: &KeyUsage| {
        named
            .as_ref()
            .and_then(|n| token_limits_of(&n.policy, tier, u))
    };
    // Token columns only where tokens are in play: a table without them
    // prints as it did before 0.4.
    let tokens = rows.iter().any(|u| u.tokens_day > 0)
        || named.as_ref().is_some_and(|n| n.policy.has_token_limits())
        || matches!(a.by, By::TokensMinute | By::TokensDay);
    let flight = |u: &KeyUsage| {
        named
            .as_ref()
            .and_then(|n| max_in_flight_of(&n.policy, tier, u))
    };
    let in_flight = rows.iter().any(|u| u.in_flight > 0)
        || named
            .as_ref()
            .is_some_and(|n| n.policy.has_in_flight_limits())
        || a.by == By::InFlight;
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
                    tokens_minute: u.tokens_minute,
                    tokens_day: u.tokens_day,
                    tpm: tlim(u).map(|t| t.tpm),
                    tpd: tlim(u).map(|t| t.tpd),
                    in_flight: u.in_flight,
                    max_in_flight: flight(u),
                    holders: u.holders.iter().map(|h| h.pid).collect(),
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
            let mut row = vec![name, model, minute, day];
            if tokens {
                match &named {
                    Some(_) => {
                        let t = tlim(u);
                        row.push(of(u.tokens_minute, t.map(|t| t.tpm)));
                        row.push(of(u.tokens_day, t.map(|t| t.tpd)));
                    }
                    None => {
                        row.push(u.tokens_minute.to_string());
                        row.push(u.tokens_day.to_string());
                    }
                }
            }
            if in_flight {
                row.push(match &named {
                    Some(_) => of(u.in_flight, flight(u)),
                    None => u.in_flight.to_string(),
                });
                row.push(holders(u));
            }
            row
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
    let mut head = vec!["ACCOUNT", "MODEL", "MINUTE", "DAY"];
    if tokens {
        head.extend(["TOKENS MINUTE", "TOKENS DAY"]);
    }
    if in_flight {
        head.extend(["IN FLIGHT", "HELD BY (PID)"]);
    }
    print!("{}", table(&head, &body));
    Ok(0)
}

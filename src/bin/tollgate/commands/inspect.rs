//! `tollgate inspect FILE --account A`: where one account stands. Counts
//! are shown as stored; limits, the verdict for its next request and the
//! headers it would get come only from the policy the operator names.
//! A peek: nothing is counted, and the table is opened read-only.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::ser::{Serialize, SerializeMap, Serializer};
use tollgate::decision::Decision;
use tollgate::{Error, KeyUsage, Limiter, Request, ACCOUNT_MAX};

use super::{
    fail, headers, json_path, of, open_read_only, shown, Clock, Named, PolicyOpt, Res, TierOpt,
};
use crate::output::{self, indent, table};
use crate::time::utc;
use crate::{escape, suggest};

/// Where an account stands: its counts, and with --policy its limits and
/// headers (reads the table; counts nothing)
#[derive(clap::Args)]
pub struct Args {
    /// Region file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Account id, exactly as the proxies key it (see `tollgate digest`)
    #[arg(long, value_name = "A")]
    account: OsString,
    /// Only this model (default: every model of the policy, or without
    /// --policy every model the account has counts on)
    #[arg(long, value_name = "M")]
    model: Option<OsString>,
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

/// One model's line: the stored counts, and the policy's view if named.
struct Seen {
    model: Vec<u8>,
    usage: Option<KeyUsage>,
    verdict: Option<Result<Decision, Error>>,
}

impl Seen {
    fn minute(&self) -> u32 {
        self.usage.as_ref().map_or(0, |u| u.minute)
    }

    fn day(&self) -> u32 {
        self.usage.as_ref().map_or(0, |u| u.day)
    }

    fn in_flight(&self) -> u32 {
        self.usage.as_ref().map_or(0, |u| u.in_flight)
    }

    /// "pid 41 (2), pid 57 (1, dead)": who holds the key's requests.
    fn holders(&self) -> String {
        let hs = self.usage.as_ref().map_or(&[][..], |u| &u.holders[..]);
        hs.iter()
            .map(|h| {
                let dead = if h.alive {
                    ""
                } else {
                    ", dead: reclaimed at the next sweep"
                };
                format!("pid {} ({}{dead})", h.pid, h.units)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn tokens(&self) -> (u32, u32) {
        self.usage
            .as_ref()
            .map_or((0, 0), |u| (u.tokens_minute, u.tokens_day))
    }
}

pub fn run(a: Args) -> Res<u8> {
    let account = a.account.as_bytes();
    if account.is_empty() || account.len() > ACCOUNT_MAX {
        return Err(fail(format!("account: {}", Error::Account)));
    }
    let tier = a.tier.tier;
    let now = a.clock.now();
    let named = a.policy.load()?;
    let l = open_read_only(named.as_ref().map(|n| &n.policy), &a.file)?;
    let models: Vec<Vec<u8>> = match (&a.model, &named) {
        (Some(m), Some(n)) => {
            let m = m.as_bytes();
            if n.policy.model_index(m).is_none() {
                let names: Vec<&[u8]> = n
                    .policy
                    .models()
                    .iter()
                    .map(|m| m.name.as_bytes())
                    .collect();
                return Err(fail(format!(
                    "unknown model `{}`: not in {}{}",
                    escape::term(m),
                    shown(&n.path),
                    did_you_mean(m, names)
                )));
            }
            vec![m.to_vec()]
        }
        (Some(m), None) => vec![m.as_bytes().to_vec()],
        (None, Some(n)) => n
            .policy
            .models()
            .iter()
            .map(|m| m.name.as_bytes().to_vec())
            .collect(),
        (None, None) => l
            .region_models()
            .into_iter()
            .map(|(_, m)| m.into_bytes())
            .collect(),
    };
    let mut seen = Vec::with_capacity(models.len());
    for model in models {
        let usage = l
            .key_usage(account, &model, now)
            .map_err(|e| fail(e.to_string()))?;
        // A peek (cost 0) through the read-only handle: the engine's own
        // verdict and headers, with nothing counted or bound in the file.
        let verdict = named
            .as_ref()
            .map(|_| l.check(&Request::new(account, &model, tier).cost(0), now));
        seen.push(Seen {
            model,
            usage,
            verdict,
        });
    }
    if a.model.is_none() && named.is_none() {
        // No policy to list: the models this key has counts on.
        seen.retain(|s| s.usage.is_some());
    }
    let counted = seen.iter().any(|s| s.usage.is_some());
    // Only for a key with no counts anywhere: likely a typo or a never-seen
    // account, and the walk over the table is worth it.
    let close = if counted {
        Vec::new()
    } else {
        closest_accounts(&l, account, now)?
    };
    if a.json {
        print_json(&a, account, &named, &seen, counted, &close, now);
    } else {
        print_text(&a, account, &named, &seen, counted, &close, now);
    }
    Ok(0)
}

fn closest_accounts(l: &Limiter, account: &[u8], now: u64) -> Res<Vec<Vec<u8>>> {
    let usage = l.usage(now).map_err(|e| fail(e.to_string()))?;
    Ok(suggest::closest(
        account,
        usage.iter().filter_map(|u| u.account.as_deref()),
        3,
    ))
}

fn did_you_mean<'a>(want: &[u8], names: impl IntoIterator<Item = &'a [u8]>) -> String {
    let close = suggest::closest(want, names, 3);
    if close.is_empty() {
        return String::new();
    }
    let close: Vec<String> = close.iter().map(|n| escape::term(n)).collect();
    format!(" (closest: {})", close.join(", "))
}

/// Headers in HTTP order, as a JSON object.
struct Headers<'a>(&'a Decision);

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let [requests @ .., retry] = self.0.header_pairs();
        let tokens = self.0.token_header_pairs().into_iter().flatten();
        let tokens = tokens.map(|(n, v)| (n, Some(v)));
        let mut map = s.serialize_map(None)?;
        for (name, value) in requests.into_iter().chain(tokens).chain([retry]) {
            if let Some(v) = value {
                map.serialize_entry(name, &v)?;
            }
        }
        map.end()
    }
}

#[derive(serde::Serialize)]
struct Json<'a> {
    account: String,
    tier: &'static str,
    now_ms: u64,
    /// The policy limits come from; `null`: none named, counts only.
    policy: Option<String>,
    /// Whether the key has a slot for any model shown.
    counted: bool,
    /// Closest account ids with counts, when `counted` is false.
    suggestions: Vec<String>,
    models: Vec<ModelJson<'a>>,
}

#[derive(serde::Serialize)]
struct ModelJson<'a> {
    model: String,
    /// Whether the key has a slot: false is "no counts for this key".
    counted: bool,
    minute_used: u32,
    day_used: u32,
    /// Tokens charged (settled, or reserved and not yet settled).
    tokens_minute_used: u32,
    tokens_day_used: u32,
    /// Requests running now, and the processes holding them.
    in_flight: u32,
    holders: Vec<HolderJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rpm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tpm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tpd: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rpd: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limited_by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<Headers<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(serde::Serialize)]
struct HolderJson {
    pid: u32,
    units: u32,
    alive: bool,
}

fn print_json(
    a: &Args,
    account: &[u8],
    named: &Option<Named>,
    seen: &[Seen],
    counted: bool,
    close: &[Vec<u8>],
    now: u64,
) {
    let models = seen
        .iter()
        .map(|s| {
            let d = match &s.verdict {
                Some(Ok(d)) => Some(d),
                _ => None,
            };
            ModelJson {
                model: escape::json(&s.model),
                counted: s.usage.is_some(),
                minute_used: s.minute(),
                day_used: s.day(),
                tokens_minute_used: s.tokens().0,
                tokens_day_used: s.tokens().1,
                in_flight: s.in_flight(),
                holders: s
                    .usage
                    .iter()
                    .flat_map(|u| &u.holders)
                    .map(|h| HolderJson {
                        pid: h.pid,
                        units: h.units,
                        alive: h.alive,
                    })
                    .collect(),
                max_in_flight: d.and_then(|d| d.in_flight).map(|f| f.limit),
                rpm: d.map(|d| d.minute.limit),
                tpm: d.and_then(|d| d.tokens).map(|t| t.minute.limit),
                tpd: d.and_then(|d| d.tokens).map(|t| t.day.limit),
                rpd: d.map(|d| d.day.limit),
                allowed: d.map(|d| d.allowed),
                limited_by: d.map(|d| d.limited_by.name()),
                retry_after: d.map(|d| d.retry_after),
                headers: d.map(Headers),
                error: match &s.verdict {
                    Some(Err(e)) => Some(e.to_string()),
                    _ => None,
                },
            }
        })
        .collect();
    output::json(&Json {
        account: escape::json(account),
        tier: a.tier.tier.name(),
        now_ms: now,
        policy: named.as_ref().map(|n| json_path(&n.path)),
        counted,
        suggestions: close.iter().map(|n| escape::json(n)).collect(),
        models,
    });
}

fn print_text(
    a: &Args,
    account: &[u8],
    named: &Option<Named>,
    seen: &[Seen],
    counted: bool,
    close: &[Vec<u8>],
    now: u64,
) {
    let who = format!("account \"{}\"", escape::term(account));
    match named {
        Some(n) => {
            println!(
                "{who}, {} tier, at {} (a peek: nothing is counted)",
                a.tier.tier.name(),
                utc(now)
            );
            println!("policy  {}", shown(&n.path));
        }
        None => println!("{who} at {} (a peek: nothing is counted)", utc(now)),
    }
    if !counted {
        let on = match seen {
            [one] => format!("on {}", escape::term(&one.model)),
            _ => "on any model".to_string(),
        };
        println!(
            "no counts for this key: it has no slot {on} in {} (never seen, or not since its slot was reused)",
            shown(&a.file)
        );
        if !close.is_empty() {
            let close: Vec<String> = close.iter().map(|n| escape::term(n)).collect();
            println!("closest accounts with counts: {}", close.join(", "));
        }
    }
    if let [s] = seen {
        if counted {
            print_one(s);
        } else if let Some(Ok(d)) = &s.verdict {
            println!(
                "next request: {}; the headers it would see now:",
                if d.allowed { "allowed" } else { "refused" }
            );
            print!("{}", indent(&headers(d).replace('\r', ""), "    "));
        } else if let Some(Err(e)) = &s.verdict {
            println!("next request: {e}");
        }
    } else if counted {
        print_table(seen);
    }
    if named.is_none() && counted {
        println!(
            "limits and verdicts: counts only; add --policy FILE (the policy the proxies run)"
        );
    }
}

fn print_one(s: &Seen) {
    println!("model   {}", escape::term(&s.model));
    let running = s.in_flight();
    let holders = match s.holders() {
        h if h.is_empty() => String::new(),
        h => format!(", held by {h}"),
    };
    match s.verdict.as_ref().and_then(|v| v.as_ref().ok()?.in_flight) {
        Some(f) => println!("flight  {running} of {} running now{holders}", f.limit),
        None if running > 0 => println!("flight  {running} running now{holders}"),
        None => {}
    }
    let (tm, td) = s.tokens();
    match s.verdict.as_ref().and_then(|v| v.as_ref().ok()?.tokens) {
        Some(t) => {
            println!(
                "tokens  {tm} of {} this minute, {td} of {} today (reserved and settled)",
                t.minute.limit, t.day.limit
            );
        }
        None if tm > 0 || td > 0 => {
            println!("tokens  {tm} this UTC minute, {td} this UTC day (reserved and settled)");
        }
        None => {}
    }
    match &s.verdict {
        None => {
            println!("minute  {} counted this UTC minute", s.minute());
            println!("day     {} counted this UTC day", s.day());
        }
        Some(Err(e)) => {
            println!("minute  {} counted this UTC minute", s.minute());
            println!("day     {} counted this UTC day", s.day());
            println!("next request: {e}");
        }
        Some(Ok(d)) => {
            println!(
                "minute  {} of {} used, {} left, resets {}",
                s.minute(),
                d.minute.limit,
                d.minute.remaining,
                utc(d.minute.reset * 1000)
            );
            println!(
                "day     {} of {} used, {} left, resets {}",
                s.day(),
                d.day.limit,
                d.day.remaining,
                utc(d.day.reset * 1000)
            );
            if d.allowed {
                println!("next request: allowed; the headers it would see now:");
            } else {
                println!(
                    "next request: refused (limited_by={}, retry-after {}); the headers now:",
                    d.limited_by.name(),
                    d.retry_after
                );
            }
            print!("{}", indent(&headers(d).replace('\r', ""), "    "));
        }
    }
}

fn print_table(seen: &[Seen]) {
    let with_policy = seen.iter().any(|s| s.verdict.is_some());
    let rows: Vec<Vec<String>> = seen
        .iter()
        .map(|s| {
            let model = escape::term(&s.model);
            let (minute, day) = if s.usage.is_none() {
                ("-".to_string(), "-".to_string())
            } else {
                (s.minute().to_string(), s.day().to_string())
            };
            match &s.verdict {
                None => vec![
                    model,
                    minute,
                    day,
                    if s.usage.is_some() {
                        String::new()
                    } else {
                        "no counts".into()
                    },
                ],
                Some(Ok(d)) => vec![
                    model,
                    of(s.minute(), Some(d.minute.limit)),
                    of(s.day(), Some(d.day.limit)),
                    if d.allowed {
                        "allowed".into()
                    } else {
                        format!(
                            "refused ({}, retry-after {})",
                            d.limited_by.name(),
                            d.retry_after
                        )
                    },
                ],
                Some(Err(e)) => vec![model, minute, day, e.to_string()],
            }
        })
        .collect();
    let last = if with_policy { "NEXT REQUEST" } else { "" };
    print!("{}", table(&["MODEL", "MINUTE", "DAY", last], &rows));
    if with_policy {
        println!("(--model M shows the exact headers for one model)");
    }
}

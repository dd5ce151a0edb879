//! `tollgate refusals FILE [--account A]`: the latest refusals, kept in the
//! table's ring by whichever process refused, so "why was this customer
//! refused at 3 a.m." has an answer after the fact: when (UTC), which
//! window, and the counts and limits at that moment (in tokens for a
//! refusal on tokens).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::Serialize;
use tollgate::{LimitedBy, Refusal};

use super::{json_path, of, open_read_only, shown, Res};
use crate::escape;
use crate::output::{self, table};
use crate::time::utc;

/// The latest refusals recorded in the table, oldest first (reads the
/// table; changes nothing)
///
/// The table keeps a small fixed ring of the most recent refusals; a key
/// refused again within the same second is recorded once.
#[derive(clap::Args)]
pub struct Args {
    /// Region file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Only this account's refusals
    #[arg(long, value_name = "A")]
    account: Option<OsString>,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Json {
    path: String,
    /// The filter, if any.
    account: Option<String>,
    /// Refusals in the ring, before filtering.
    recorded: usize,
    refusals: Vec<Row>,
}

#[derive(Serialize)]
struct Row {
    at_ms: u64,
    /// `at_ms` as ISO 8601 UTC.
    at: String,
    account: String,
    model: Option<String>,
    limited_by: &'static str,
    /// What the counts and limits count: "requests", or "tokens" for a
    /// refusal on tokens (`tokens_minute`, `tokens_day`).
    unit: &'static str,
    minute_count: u32,
    minute_limit: u32,
    day_count: u32,
    day_limit: u32,
    /// Tokens the refused request asked to reserve (0 unless on tokens).
    reserved: u32,
    /// A refusal for in-flight: the key's requests running, and its
    /// `max_in_flight` (absent for other refusals).
    #[serde(skip_serializing_if = "Option::is_none")]
    in_flight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<u32>,
}

fn in_flight(r: &Refusal) -> bool {
    r.limited_by == LimitedBy::InFlight
}

fn on_tokens(r: &Refusal) -> bool {
    matches!(r.limited_by, LimitedBy::TokensMinute | LimitedBy::TokensDay)
}

pub fn run(a: Args) -> Res<u8> {
    let l = open_read_only(None, &a.file)?;
    let all = l.refusals();
    let recorded = all.len();
    let want = a.account.as_ref().map(|w| w.as_bytes());
    let rows: Vec<_> = all
        .into_iter()
        .filter(|r| want.is_none_or(|w| r.account == w))
        .collect();
    if a.json {
        output::json(&Json {
            path: json_path(&a.file),
            account: want.map(escape::json),
            recorded,
            refusals: rows
                .iter()
                .map(|r| Row {
                    at_ms: r.at_ms,
                    at: utc(r.at_ms),
                    account: escape::json(&r.account),
                    model: r.model.as_deref().map(|m| escape::json(m.as_bytes())),
                    limited_by: r.limited_by.name(),
                    unit: if on_tokens(r) { "tokens" } else { "requests" },
                    minute_count: r.minute_count,
                    minute_limit: r.minute_limit,
                    day_count: r.day_count,
                    day_limit: r.day_limit,
                    reserved: r.reserved,
                    in_flight: in_flight(r).then_some(r.in_flight),
                    max_in_flight: in_flight(r).then_some(r.max_in_flight),
                })
                .collect(),
        });
        return Ok(0);
    }
    let file = shown(&a.file);
    if rows.is_empty() {
        match want {
            Some(w) => println!(
                "no refusals recorded for account \"{}\" in {file} ({recorded} for other accounts)",
                escape::term(w)
            ),
            None => println!("no refusals recorded in {file}"),
        }
        return Ok(0);
    }
    println!(
        "{} refusal{} recorded in {file}{}, oldest first (the ring keeps only the latest; a key refused again within a second is recorded once)",
        rows.len(),
        output::s(rows.len() as u64),
        match want {
            Some(w) => format!(" for account \"{}\"", escape::term(w)),
            None => String::new(),
        }
    );
    // A refusal on tokens shows tokens against tpm/tpd, and what it asked
    // to reserve; a ring without one prints as before 0.4.
    let tokens = rows.iter().any(on_tokens);
    let flight = rows.iter().any(in_flight);
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let unit = if on_tokens(r) { " tokens" } else { "" };
            let mut row = vec![
                utc(r.at_ms),
                escape::term(&r.account),
                r.model
                    .as_deref()
                    .map_or("(unknown)".into(), |m| escape::term(m.as_bytes())),
                r.limited_by.name().to_string(),
                format!("{}{unit}", of(r.minute_count, Some(r.minute_limit))),
                format!("{}{unit}", of(r.day_count, Some(r.day_limit))),
            ];
            if tokens {
                row.push(if on_tokens(r) {
                    r.reserved.to_string()
                } else {
                    "-".into()
                });
            }
            if flight {
                row.push(if in_flight(r) {
                    of(r.in_flight, Some(r.max_in_flight))
                } else {
                    "-".into()
                });
            }
            row
        })
        .collect();
    let mut head = vec!["TIME (UTC)", "ACCOUNT", "MODEL", "WINDOW", "MINUTE", "DAY"];
    if tokens {
        head.push("RESERVE");
    }
    if flight {
        head.push("IN FLIGHT");
    }
    print!("{}", table(&head, &body));
    println!("MINUTE and DAY: counts when refused (nothing was charged) / the limits in force");
    if tokens {
        println!(
            "on tokens (tokens_minute, tokens_day): tokens charged / tpm and tpd; RESERVE: the tokens the request asked to reserve"
        );
    }
    if flight {
        println!(
            "in_flight: refused while the key had its max_in_flight requests running (IN FLIGHT: running / max_in_flight); no window was charged"
        );
    }
    Ok(0)
}

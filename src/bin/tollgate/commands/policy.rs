//! `tollgate policy check POLICY.toml`: validates a policy file and prints
//! its limits (models x tiers, enterprise plans).

use std::path::PathBuf;

use serde::Serialize;
use tollgate::{Limits, Policy, Tier};

use super::{fail, json_path, shown, Res};
use crate::escape;
use crate::output::{self, table};

/// Policy files
#[derive(clap::Subcommand)]
pub enum Command {
    /// Validate a policy and print its limits
    Check(CheckArgs),
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Policy file
    #[arg(value_name = "POLICY.toml")]
    file: PathBuf,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Json {
    path: String,
    ok: bool,
    models: Vec<ModelJson>,
    accounts: Vec<AccountJson>,
}

#[derive(Serialize)]
struct ModelJson {
    model: String,
    region: String,
    free: Option<LimitsJson>,
    developer: Option<LimitsJson>,
    enterprise: Option<LimitsJson>,
}

#[derive(Serialize)]
struct LimitsJson {
    rpm: u32,
    rpd: u32,
}

#[derive(Serialize)]
struct AccountJson {
    account: String,
    plan: Vec<PlanJson>,
}

#[derive(Serialize)]
struct PlanJson {
    model: String,
    rpm: u32,
    rpd: u32,
}

fn lim(l: Option<Limits>) -> Option<LimitsJson> {
    l.map(|l| LimitsJson {
        rpm: l.rpm,
        rpd: l.rpd,
    })
}

/// The empty account id has no plan, so it reads the tier's own table.
const NO_PLAN: &[u8] = b"";

/// An enterprise account's own limits on model `i`, where they differ
/// from the enterprise tier's.
fn plan(p: &Policy, acct: &[u8], i: usize) -> Option<Limits> {
    let own = p.limits(Tier::Enterprise, i, acct);
    (own != p.limits(Tier::Enterprise, i, NO_PLAN))
        .then_some(own)
        .flatten()
}

pub fn check(a: CheckArgs) -> Res<u8> {
    let p = Policy::load(&a.file).map_err(|e| fail(e.to_string()))?;
    let accounts = p.accounts();
    if a.json {
        output::json(&Json {
            path: json_path(&a.file),
            ok: true,
            models: p
                .models()
                .iter()
                .enumerate()
                .map(|(i, m)| ModelJson {
                    model: escape::json(m.name.as_bytes()),
                    region: escape::json(m.region.as_bytes()),
                    free: lim(p.limits(Tier::Free, i, NO_PLAN)),
                    developer: lim(p.limits(Tier::Developer, i, NO_PLAN)),
                    enterprise: lim(p.limits(Tier::Enterprise, i, NO_PLAN)),
                })
                .collect(),
            accounts: accounts
                .iter()
                .map(|acct| AccountJson {
                    account: escape::json(acct),
                    plan: p
                        .models()
                        .iter()
                        .enumerate()
                        .filter_map(|(i, m)| {
                            plan(&p, acct, i).map(|l| PlanJson {
                                model: escape::json(m.name.as_bytes()),
                                rpm: l.rpm,
                                rpd: l.rpd,
                            })
                        })
                        .collect(),
                })
                .collect(),
        });
        return Ok(0);
    }
    let n = p.models().len();
    println!(
        "{}: OK, {n} model{}, {} enterprise account{}",
        shown(&a.file),
        output::s(n as u64),
        accounts.len(),
        output::s(accounts.len() as u64)
    );
    let cell = |l: Option<Limits>| l.map_or("-".to_string(), |l| format!("{}/{}", l.rpm, l.rpd));
    let rows: Vec<Vec<String>> = p
        .models()
        .iter()
        .enumerate()
        .map(|(i, m)| {
            vec![
                escape::term(m.name.as_bytes()),
                escape::term(m.region.as_bytes()),
                cell(p.limits(Tier::Free, i, NO_PLAN)),
                cell(p.limits(Tier::Developer, i, NO_PLAN)),
                cell(p.limits(Tier::Enterprise, i, NO_PLAN)),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["MODEL", "REGION", "FREE", "DEVELOPER", "ENTERPRISE"],
            &rows
        )
    );
    println!("limits are RPM/RPD; - = no limit configured (such requests get a \"no limit configured\" error)");
    if !accounts.is_empty() {
        println!(
            "enterprise accounts (their plans; other models fall back to the enterprise column):"
        );
        for acct in accounts {
            let plans: Vec<String> = p
                .models()
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    plan(&p, acct, i)
                        .map(|l| format!("{} {}/{}", escape::term(m.name.as_bytes()), l.rpm, l.rpd))
                })
                .collect();
            println!(
                "    {}: {}",
                escape::term(acct),
                if plans.is_empty() {
                    "-".into()
                } else {
                    plans.join(", ")
                }
            );
        }
    }
    Ok(0)
}

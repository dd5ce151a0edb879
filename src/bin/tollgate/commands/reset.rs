//! `tollgate reset FILE --account A [--model M]`: zeroes an account's
//! counts while the proxies run (one CAS per key; bindings kept).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::Serialize;
use tollgate::Policy;

use super::{fail, json_path, open_write, shown, PolicyOpt, Res};
use crate::escape;
use crate::output;

/// Zero an account's minute and day counts (all models, or one)
#[derive(clap::Args)]
pub struct Args {
    /// Region file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Account id, exactly as the proxies key it
    #[arg(long, value_name = "A")]
    account: OsString,
    /// Only this model
    #[arg(long, value_name = "M")]
    model: Option<OsString>,
    #[command(flatten)]
    policy: PolicyOpt,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Json {
    path: String,
    account: String,
    model: Option<String>,
    reset: u32,
}

pub fn run(a: Args) -> Res<u8> {
    let account = a.account.as_bytes();
    let model = a.model.as_ref().map(|m| m.as_bytes());
    let policy = match a.policy.load()? {
        Some(n) => n.policy,
        None => Policy::builtin(),
    };
    let l = open_write(&policy, &a.file)?;
    let n = l
        .reset(account, model)
        .map_err(|e| fail(format!("account: {e}")))?;
    if a.json {
        output::json(&Json {
            path: json_path(&a.file),
            account: escape::json(account),
            model: model.map(escape::json),
            reset: n,
        });
        return Ok(0);
    }
    let who = escape::term(account);
    let on = model.map_or("any model".to_string(), escape::term);
    if n == 0 {
        println!(
            "nothing to reset: \"{who}\" has no counts on {on} in {}",
            shown(&a.file)
        );
    } else {
        println!(
            "reset \"{who}\" on {on}: {n} key{} zeroed (bindings kept; proxies need no restart)",
            output::s(n)
        );
    }
    Ok(0)
}

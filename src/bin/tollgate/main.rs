//! `tollgate`: the operator's command. Shows the limiter at work (`demo`),
//! and reads, resets, verifies and resizes a region file that proxies
//! share. Human-readable output by default, `--json` for scripts; errors on
//! stderr, exit 2 for usage mistakes (reported by clap) and 1 for failures.
//!
//! Layout: `commands/` has one module per subcommand; `escape` shows
//! client-supplied names safely, `output` writes JSON and tables, `time`
//! formats UTC instants.

mod commands;
mod escape;
mod output;
mod suggest;
mod time;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::*;

const AFTER_HELP: &str = "\
Examples:
    tollgate demo
    tollgate stats /dev/shm/tollgate
    tollgate top /dev/shm/tollgate --policy policy.toml -n 20
    tollgate inspect /dev/shm/tollgate --account acct-42 --policy policy.toml
    tollgate refusals /dev/shm/tollgate --account acct-42
    tollgate digest < key.txt
    tollgate policy check policy.toml

FILE is a region file mapped by every proxy process (e.g. /dev/shm/tollgate).
stats, top, inspect, refusals and verify only read it: they change no byte.
Counts are shown as stored; limits and verdicts only with --policy FILE, the
policy the proxies run. Every command takes --json for machine-readable
output. Account and model names are shown escaped (\\\\, \\xHH, \\u{...}).
Exit status: 0 ok, 1 failure (or problems found by verify), 2 usage error.";

/// tollgate: per-(account, model) RPM/RPD limits in a table shared by processes
#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    after_help = AFTER_HELP,
    subcommand_required = true,
    arg_required_else_help = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Demo(demo::Args),
    Stats(stats::Args),
    Top(top::Args),
    Inspect(inspect::Args),
    Refusals(refusals::Args),
    Digest(digest::Args),
    Reset(reset::Args),
    Resize(resize::Args),
    Verify(verify::Args),
    #[command(subcommand)]
    Policy(policy::Command),
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`tollgate top FILE | head`), as other
    // Unix tools do, instead of panicking in println!.
    // SAFETY: restores the default disposition of one signal before any
    // other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Stats(a) => stats::run(a),
        Command::Top(a) => top::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Refusals(a) => refusals::run(a),
        Command::Digest(a) => digest::run(a),
        Command::Reset(a) => reset::run(a),
        Command::Resize(a) => resize::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Policy(policy::Command::Check(a)) => policy::check(a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Fail(m)) => {
            eprintln!("tollgate: {m}");
            ExitCode::from(1)
        }
    }
}

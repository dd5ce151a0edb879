//! `tollgate`: the operator's command. Shows the limiter at work (`demo`),
//! and inspects, resets, verifies and resizes a region file that proxies
//! share. Human-readable tables by default, `--json` for scripts; errors on
//! stderr, exit 2 for usage mistakes and 1 for failures.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tollgate::decision::Decision;
use tollgate::{Error, LimitedBy, Limiter, Policy, Request, Tier};

const HELP: &str = "\
tollgate: per-(account, model) RPM/RPD limits in a table shared by processes

USAGE:
    tollgate demo                          replay traffic on the built-in policy
    tollgate stats FILE                    table usage, size and layout
    tollgate top FILE [--by minute|day] [-n 20] [--tier TIER]
                                           busiest (account, model) keys now
    tollgate inspect FILE --account A [--model M] [--tier TIER]
                                           where an account stands, and the
                                           headers it would get (counts nothing)
    tollgate reset FILE --account A [--model M]
                                           zero an account's counts
    tollgate resize OLD NEW --slots N      new table, live counters carried over
    tollgate verify FILE                   check every slot (exit 1 on damage)
    tollgate policy check POLICY.toml      validate a policy, print its limits

OPTIONS:
    --policy FILE   policy to apply (default: the built-in Developer-tier table)
    --tier TIER     free, developer (default) or enterprise
    --json          machine-readable output on stdout
    --now-ms MS     judge at this epoch-ms time instead of the clock
                    (stats, top, inspect, resize, verify)
    -h, --help      this text

FILE is a region file mapped by every proxy process (e.g. /dev/shm/tollgate).
Exit status: 0 ok, 1 failure (or problems found by verify), 2 usage error.
";

/// Why a command stopped: a usage mistake (exit 2) or a failure (exit 1).
enum Fail {
    Usage(String),
    Failed(String),
}

type Res<T = ()> = Result<T, Fail>;

fn usage(m: impl Into<String>) -> Fail {
    Fail::Usage(m.into())
}

fn failed(m: impl Into<String>) -> Fail {
    Fail::Failed(m.into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(Fail::Usage(m)) => {
            eprintln!("tollgate: {m}\nRun `tollgate --help` for usage.");
            ExitCode::from(2)
        }
        Err(Fail::Failed(m)) => {
            eprintln!("tollgate: {m}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Vec<String>) -> Result<u8, Fail> {
    let Some(cmd) = args.first().map(String::as_str) else {
        print!("{HELP}");
        return Err(usage("no command given"));
    };
    let rest = &args[1..];
    match cmd {
        "-h" | "--help" | "help" => {
            print!("{HELP}");
            Ok(0)
        }
        "-V" | "--version" => {
            println!("tollgate {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        "demo" => demo(Cli::parse(rest, &[], &[])?),
        "stats" => stats(Cli::parse(rest, &["--policy", "--now-ms"], &["--json"])?),
        "top" => top(Cli::parse(
            rest,
            &["--policy", "--now-ms", "--by", "-n", "--tier"],
            &["--json"],
        )?),
        "inspect" => inspect(Cli::parse(
            rest,
            &["--policy", "--now-ms", "--account", "--model", "--tier"],
            &["--json"],
        )?),
        "reset" => reset(Cli::parse(
            rest,
            &["--policy", "--account", "--model"],
            &["--json"],
        )?),
        "resize" => resize(Cli::parse(
            rest,
            &["--policy", "--now-ms", "--slots"],
            &["--json"],
        )?),
        "verify" => verify(Cli::parse(rest, &["--policy", "--now-ms"], &["--json"])?),
        "policy" => match rest.first().map(String::as_str) {
            Some("check") => policy_check(Cli::parse(&rest[1..], &[], &["--json"])?),
            Some(other) => Err(usage(format!(
                "unknown policy command `{other}` (try `policy check`)"
            ))),
            None => Err(usage(
                "`policy` needs a command: `tollgate policy check POLICY.toml`",
            )),
        },
        // Worker for the multi-process tests; not part of the interface.
        "__hammer" => hammer(Cli::parse(
            rest,
            &[
                "--policy",
                "--account",
                "--model",
                "--tier",
                "--count",
                "--accounts",
                "--rpm",
                "--rpd",
                "--now-ms",
                "--minutes",
                "--create-slots",
                "--wait-for",
            ],
            &["--json", "--stream", "--forever", "--churn"],
        )?),
        other => Err(usage(format!("unknown command `{other}`"))),
    }
}

// ---------------------------------------------------------------------------
// Arguments

/// Parsed arguments of one subcommand: positionals, `--opt value` pairs and
/// flags. Options not listed by the subcommand are usage errors.
struct Cli {
    pos: Vec<String>,
    vals: Vec<(String, String)>,
    flags: Vec<String>,
}

impl Cli {
    fn parse(args: &[String], with_value: &[&str], flags: &[&str]) -> Res<Cli> {
        let mut cli = Cli {
            pos: Vec::new(),
            vals: Vec::new(),
            flags: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "-h" || a == "--help" {
                print!("{HELP}");
                std::process::exit(0);
            }
            if a == "--" {
                cli.pos.extend(it.by_ref().cloned());
                break;
            }
            if !a.starts_with('-') || a == "-" {
                cli.pos.push(a.clone());
                continue;
            }
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (a.as_str(), None),
            };
            if flags.contains(&name) && inline.is_none() {
                cli.flags.push(name.to_string());
            } else if with_value.contains(&name) {
                let v = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| usage(format!("{name} needs a value")))?,
                };
                cli.vals.push((name.to_string(), v));
            } else {
                return Err(usage(format!("unknown option {name}")));
            }
        }
        Ok(cli)
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vals
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn need(&self, name: &str) -> Res<&str> {
        self.get(name)
            .ok_or_else(|| usage(format!("{name} is required")))
    }

    fn num<T: std::str::FromStr>(&self, name: &str) -> Res<Option<T>> {
        self.get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| usage(format!("{name}: `{v}` is not a valid number")))
            })
            .transpose()
    }

    /// Exactly `n` positionals, named for the error message.
    fn positionals(&self, names: &[&str]) -> Res<&[String]> {
        if self.pos.len() != names.len() {
            let want = names.join(" ");
            return Err(usage(if self.pos.len() < names.len() {
                format!("missing {}: expected {want}", names[self.pos.len()])
            } else {
                format!(
                    "unexpected argument `{}`: expected {want}",
                    self.pos[names.len()]
                )
            }));
        }
        Ok(&self.pos)
    }

    fn policy(&self) -> Res<Policy> {
        match self.get("--policy") {
            Some(p) => Policy::load(p).map_err(|e| failed(e.to_string())),
            None => Ok(Policy::builtin()),
        }
    }

    fn tier(&self) -> Res<Tier> {
        match self.get("--tier") {
            None => Ok(Tier::Developer),
            Some(t) => Tier::parse(t).ok_or_else(|| {
                usage(format!(
                    "--tier: `{t}` is not free, developer or enterprise"
                ))
            }),
        }
    }

    /// The clock: real time unless a test pins it.
    fn now_ms(&self) -> Res<u64> {
        Ok(self.num("--now-ms")?.unwrap_or_else(tollgate::now_ms))
    }
}

fn open(policy: &Policy, path: &str) -> Res<Limiter> {
    Limiter::open(policy, path, 0, false).map_err(|e| failed(describe(&e, path)))
}

/// An error with the file named when the library's message does not.
fn describe(e: &Error, path: &str) -> String {
    match e {
        Error::Io { .. } => e.to_string(),
        _ => format!("{path}: {e}"),
    }
}

// ---------------------------------------------------------------------------
// JSON output (a small writer: the output is a few flat objects)

enum J {
    Null,
    Bool(bool),
    Num(u64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

impl J {
    fn str(s: impl Into<String>) -> J {
        J::Str(s.into())
    }

    fn opt_str(s: Option<impl Into<String>>) -> J {
        s.map_or(J::Null, J::str)
    }

    fn write(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => write!(out, "{n}").unwrap(),
            J::Str(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            J::Arr(v) => {
                out.push('[');
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    x.write(out);
                }
                out.push(']');
            }
            J::Obj(v) => {
                out.push('{');
                for (i, (k, x)) in v.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    J::str(*k).write(out);
                    out.push(':');
                    x.write(out);
                }
                out.push('}');
            }
        }
    }

    fn print(&self) {
        let mut s = String::new();
        self.write(&mut s);
        println!("{s}");
    }
}

// ---------------------------------------------------------------------------
// Time and number formatting

/// (year, month, day) of an epoch day, proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    // Shift to 0000-03-01 so leap days end each 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + (m <= 2) as i64;
    (y, m, d)
}

fn utc(ms: u64) -> String {
    let s = ms / 1000;
    let (y, mo, d) = civil((s / 86_400) as i64);
    let t = s % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

fn hms(ms: u64) -> String {
    let t = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
}

fn hm(ms: u64) -> String {
    hms(ms)[..5].to_string()
}

/// "5h40m" style, for waits.
fn span(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

fn limited_by(d: &Decision) -> &'static str {
    match d.limited_by {
        LimitedBy::None => "none",
        LimitedBy::Minute => "minute",
        LimitedBy::Day => "day",
    }
}

fn headers(d: &Decision) -> String {
    let mut s = String::new();
    d.write_headers(&mut s).expect("writing to a String");
    s
}

fn body(d: &Decision, model: &str) -> String {
    let mut s = String::new();
    d.write_error_body(model.as_bytes(), &mut s)
        .expect("writing to a String");
    s
}

fn indent(text: &str, by: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim().is_empty() {
                "\n".to_string()
            } else {
                format!("{by}{l}\n")
            }
        })
        .collect()
}

/// Simple left-aligned table with a header row.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                write!(out, "{c:<width$}  ", width = w[i]).unwrap();
            }
        }
        out.push('\n');
    };
    line(head.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

// ---------------------------------------------------------------------------
// demo

/// The OpenAI-shaped answer for a model the policy does not know. Not a rate
/// limit: a 404 like the API's own for a model that does not exist.
fn unknown_model_body(model: &str) -> String {
    let mut s = String::new();
    tollgate::decision::write_unknown_model_body(model.as_bytes(), &mut s)
        .expect("String never fails");
    s
}

fn demo(cli: Cli) -> Res<u8> {
    cli.positionals(&[])?;
    let policy = Policy::builtin();
    let limiter = Limiter::new(&policy, 1024).map_err(|e| failed(e.to_string()))?;
    const ACCOUNT: &str = "acct-demo";
    const MODEL: &str = "DeepSeek-V3.1";
    let start: u64 = 1_795_773_600_000; // 2026-11-27T10:00:00Z
    let req = Request::new(ACCOUNT.as_bytes(), MODEL.as_bytes(), Tier::Developer);
    let check = |t: u64| -> Res<Decision> {
        limiter
            .check(&req, t)
            .map_err(|e| failed(format!("demo: {e}")))
    };
    let broken = |what: &str| {
        failed(format!(
            "demo: the engine did not behave as expected: {what}"
        ))
    };

    let first = check(start)?;
    let (rpm, rpd) = (first.minute.limit, first.day.limit);
    let mut o = String::new();
    writeln!(
        o,
        "Tollgate demo: the built-in policy (Developer tier), an in-memory table, and"
    )
    .unwrap();
    writeln!(
        o,
        "a simulated clock from {}. Every number below comes from the engine.",
        utc(start)
    )
    .unwrap();
    writeln!(o).unwrap();
    writeln!(
        o,
        "Account {ACCOUNT:?} on {MODEL}: {rpm} requests per minute, {rpd} per day."
    )
    .unwrap();
    writeln!(o).unwrap();
    writeln!(
        o,
        "[{}] request 1 -> {}; it carries:",
        hms(start),
        if first.allowed { "200 OK" } else { "refused" }
    )
    .unwrap();
    o += &indent(&headers(&first), "    ");
    if !first.allowed {
        return Err(broken("the first request was refused"));
    }

    // Requests 2..=rpm, one a second: all allowed.
    let mut sent = 1u64;
    let mut last = first;
    for i in 1..rpm as u64 {
        last = check(start + i * 1000)?;
        sent += 1;
        if !last.allowed {
            return Err(broken("a request within the minute's limit was refused"));
        }
    }
    writeln!(
        o,
        "[{}-{}] requests 1-{sent}: all allowed (left this minute: {}, today: {})",
        hms(start),
        hms(start + (sent - 1) * 1000),
        last.minute.remaining,
        last.day.remaining
    )
    .unwrap();
    writeln!(o).unwrap();

    let t = start + sent * 1000;
    let over = check(t)?;
    sent += 1;
    if over.allowed {
        return Err(broken("the request over the minute's limit was allowed"));
    }
    writeln!(
        o,
        "[{}] request {sent} -> refused (limited_by={}); the whole response:",
        hms(t),
        limited_by(&over)
    )
    .unwrap();
    let mut resp =
        String::from("HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n");
    resp += &headers(&over);
    resp += "\r\n";
    resp += &body(&over, MODEL);
    o += &indent(&resp, "    ");
    writeln!(o).unwrap();

    // The next minute admits again.
    let minute = 60_000u64;
    let next_minute = start - start % minute + minute;
    let again = check(next_minute)?;
    sent += 1;
    if !again.allowed {
        return Err(broken("the next minute did not admit"));
    }
    writeln!(
        o,
        "[{}] a new minute: request {sent} -> allowed (left this minute: {}, today: {})",
        hms(next_minute),
        again.minute.remaining,
        again.day.remaining
    )
    .unwrap();
    writeln!(o).unwrap();

    // The day: keep sending a full minute's worth every minute (and one over,
    // refused by the minute) until the day's quota is gone.
    let mut allowed = (rpm + 1) as u64; // requests 1..=rpm, then the next minute's first
    let mut minute_refusals = 1u64; // request rpm + 1, above
    let mut t = next_minute;
    let mut in_minute = 1u64;
    loop {
        while in_minute < rpm as u64 {
            let d = check(t + in_minute * 1000)?;
            if !d.allowed {
                break;
            }
            allowed += 1;
            in_minute += 1;
        }
        if allowed >= rpd as u64 {
            break;
        }
        let d = check(t + in_minute * 1000)?;
        if d.allowed || d.limited_by != LimitedBy::Minute {
            return Err(broken(
                "a minute's extra request was not refused by the minute",
            ));
        }
        minute_refusals += 1;
        t += minute;
        in_minute = 0;
    }
    let total_minutes = (t - start) / minute + 1;
    writeln!(
        o,
        "The day limit: {rpm} requests every minute until the day's {rpd} are used."
    )
    .unwrap();
    writeln!(
        o,
        "[{}-{}] {} allowed in {total_minutes} minutes; each minute's extra request was refused",
        hm(start),
        hm(t),
        allowed,
    )
    .unwrap();
    writeln!(
        o,
        "    by the minute window ({minute_refusals} times), none by the day."
    )
    .unwrap();
    let t = t + minute;
    let day_over = check(t)?;
    if day_over.allowed {
        return Err(broken("the request over the day's limit was allowed"));
    }
    writeln!(
        o,
        "[{}] request {} of the day -> refused (limited_by={}), though a new minute began:",
        hms(t),
        allowed + 1,
        limited_by(&day_over)
    )
    .unwrap();
    let mut resp =
        String::from("HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n");
    resp += &headers(&day_over);
    resp += "\r\n";
    resp += &body(&day_over, MODEL);
    o += &indent(&resp, "    ");
    writeln!(
        o,
        "    (retry-after is {}: until midnight UTC, when the day window resets at {})",
        span(day_over.retry_after as u64),
        utc(day_over.day.reset * 1000)
    )
    .unwrap();
    writeln!(o).unwrap();

    // Not rate limits: an unknown model, and a tier with no numbers.
    let unknown = Request::new(ACCOUNT.as_bytes(), b"gpt-5", Tier::Developer);
    match limiter.check(&unknown, t) {
        Err(Error::UnknownModel) => {
            writeln!(o, "Unknown model \"gpt-5\" -> not a rate limit: answer 404").unwrap();
            o += &indent(
                &format!(
                    "HTTP/1.1 404 Not Found\ncontent-type: application/json\n\n{}",
                    unknown_model_body("gpt-5")
                ),
                "    ",
            );
            writeln!(o).unwrap();
        }
        other => return Err(broken(&format!("gpt-5 gave {other:?}"))),
    }
    let free = Request::new(b"acct-free", MODEL.as_bytes(), Tier::Free);
    match limiter.check(&free, t) {
        Err(e @ Error::NoLimit) => {
            writeln!(o, "Free tier on {MODEL} -> {e}:").unwrap();
            writeln!(
                o,
                "    the published policy gives no Free-tier numbers; an operator sets them in a"
            )
            .unwrap();
            writeln!(
                o,
                "    policy file ([tiers.free]) and checks it with `tollgate policy check FILE`."
            )
            .unwrap();
        }
        other => return Err(broken(&format!("free tier gave {other:?}"))),
    }
    // Lines end in "\r\n" in HTTP; show them plainly on a terminal.
    print!("{}", o.replace('\r', ""));
    Ok(0)
}

// ---------------------------------------------------------------------------
// stats

fn stats(cli: Cli) -> Res<u8> {
    let path = cli.positionals(&["FILE"])?[0].clone();
    let now = cli.now_ms()?;
    let l = open(&cli.policy()?, &path)?;
    let s = l.stats(now);
    let models = l.region_models();
    let header = s.bytes - s.slots as usize * tollgate::BYTES_PER_SLOT;
    let free = s.slots - s.used;
    if cli.flag("--json") {
        J::Obj(vec![
            ("path", J::str(&path)),
            ("layout_version", J::Num(s.layout_version as u64)),
            ("created_ms", J::Num(l.created_ms())),
            ("bytes", J::Num(s.bytes as u64)),
            ("header_bytes", J::Num(header as u64)),
            ("bytes_per_slot", J::Num(tollgate::BYTES_PER_SLOT as u64)),
            ("slots", J::Num(s.slots as u64)),
            ("used", J::Num(s.used as u64)),
            ("free", J::Num(free as u64)),
            ("table_full", J::Num(s.table_full)),
            (
                "models",
                J::Arr(models.iter().map(|(_, m)| J::str(m)).collect()),
            ),
        ])
        .print();
        return Ok(0);
    }
    let pct = s.used as f64 * 100.0 / s.slots as f64;
    println!("region      {path}");
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
        "table full  {} refusals since the region was created",
        s.table_full
    );
    println!("models      {} registered", models.len());
    if pct > 80.0 {
        println!("note        over 80% used: probe chains grow; grow it with `tollgate resize`");
    }
    Ok(0)
}

// ---------------------------------------------------------------------------
// top

fn limits_of(
    policy: &Policy,
    tier: Tier,
    model: Option<&str>,
    account: &[u8],
) -> Option<tollgate::Limits> {
    let m = policy.model_index(model?.as_bytes())?;
    policy.limits(tier, m, account)
}

fn of(n: u32, limit: Option<u32>) -> String {
    match limit {
        Some(l) => format!("{n}/{l}"),
        None => format!("{n}/-"),
    }
}

fn top(cli: Cli) -> Res<u8> {
    let path = cli.positionals(&["FILE"])?[0].clone();
    let by_day = match cli.get("--by").unwrap_or("minute") {
        "minute" => false,
        "day" => true,
        o => return Err(usage(format!("--by: `{o}` is not minute or day"))),
    };
    let n: usize = cli.num("-n")?.unwrap_or(20);
    let tier = cli.tier()?;
    let now = cli.now_ms()?;
    let policy = cli.policy()?;
    let l = open(&policy, &path)?;
    let mut rows = l.usage(now).map_err(|e| failed(e.to_string()))?;
    rows.retain(|u| u.day > 0);
    rows.sort_by(|a, b| {
        let key = |u: &tollgate::KeyUsage| {
            if by_day {
                (u.day, u.minute)
            } else {
                (u.minute, u.day)
            }
        };
        key(b)
            .cmp(&key(a))
            .then_with(|| a.account.cmp(&b.account))
            .then_with(|| a.model.cmp(&b.model))
    });
    let keys = rows.len();
    rows.truncate(n);
    let name = |u: &tollgate::KeyUsage| {
        u.account_lossy()
            .unwrap_or_else(|| format!("(unnamed, slot {})", u.slot))
    };
    if cli.flag("--json") {
        J::Obj(vec![
            ("now_ms", J::Num(now)),
            ("tier", J::str(tier.name())),
            ("by", J::str(if by_day { "day" } else { "minute" })),
            ("keys", J::Num(keys as u64)),
            (
                "top",
                J::Arr(
                    rows.iter()
                        .map(|u| {
                            let lim = u
                                .account
                                .as_deref()
                                .and_then(|a| limits_of(&policy, tier, u.model.as_deref(), a));
                            J::Obj(vec![
                                ("account", J::opt_str(u.account_lossy())),
                                ("slot", J::Num(u.slot as u64)),
                                ("model", J::opt_str(u.model.clone())),
                                ("minute", J::Num(u.minute as u64)),
                                ("day", J::Num(u.day as u64)),
                                ("rpm", lim.map_or(J::Null, |l| J::Num(l.rpm as u64))),
                                ("rpd", lim.map_or(J::Null, |l| J::Num(l.rpd as u64))),
                            ])
                        })
                        .collect(),
                ),
            ),
        ])
        .print();
        return Ok(0);
    }
    if keys == 0 {
        println!("no counts today in {path} (at {})", utc(now));
        return Ok(0);
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|u| {
            let lim = u
                .account
                .as_deref()
                .and_then(|a| limits_of(&policy, tier, u.model.as_deref(), a));
            vec![
                name(u),
                u.model.clone().unwrap_or_else(|| "(unknown)".into()),
                of(u.minute, lim.map(|l| l.rpm)),
                of(u.day, lim.map(|l| l.rpd)),
            ]
        })
        .collect();
    println!(
        "top {} of {keys} keys by {} at {} (limits: {} tier)",
        rows.len(),
        if by_day { "day" } else { "minute" },
        utc(now),
        tier.name()
    );
    print!("{}", table(&["ACCOUNT", "MODEL", "MINUTE", "DAY"], &body));
    Ok(0)
}

// ---------------------------------------------------------------------------
// inspect

fn inspect(cli: Cli) -> Res<u8> {
    let path = cli.positionals(&["FILE"])?[0].clone();
    let account = cli.need("--account")?.to_string();
    let tier = cli.tier()?;
    let now = cli.now_ms()?;
    let policy = cli.policy()?;
    let models: Vec<String> = match cli.get("--model") {
        Some(m) => {
            if policy.model_index(m.as_bytes()).is_none() {
                return Err(failed(format!("unknown model `{m}`: not in the policy")));
            }
            vec![m.to_string()]
        }
        None => policy.models().iter().map(|m| m.name.clone()).collect(),
    };
    let l = open(&policy, &path)?;
    let mut out: Vec<(String, Result<Decision, Error>)> = Vec::new();
    for m in &models {
        // A peek: cost 0 reads the windows and counts nothing.
        let req = Request::new(account.as_bytes(), m.as_bytes(), tier).cost(0);
        match l.check(&req, now) {
            Err(Error::Account) => return Err(failed(format!("account: {}", Error::Account))),
            r => out.push((m.clone(), r)),
        }
    }
    if cli.flag("--json") {
        let items = out
            .iter()
            .map(|(m, r)| match r {
                Ok(d) => {
                    let mut hs = Vec::new();
                    for (name, v) in d.header_pairs() {
                        if let Some(v) = v {
                            hs.push((name, J::Num(v)));
                        }
                    }
                    J::Obj(vec![
                        ("model", J::str(m)),
                        ("allowed", J::Bool(d.allowed)),
                        ("limited_by", J::str(limited_by(d))),
                        (
                            "minute_used",
                            J::Num((d.minute.limit - d.minute.remaining) as u64),
                        ),
                        ("day_used", J::Num((d.day.limit - d.day.remaining) as u64)),
                        ("retry_after", J::Num(d.retry_after as u64)),
                        ("headers", J::Obj(hs)),
                    ])
                }
                Err(e) => J::Obj(vec![("model", J::str(m)), ("error", J::str(e.to_string()))]),
            })
            .collect();
        J::Obj(vec![
            ("account", J::str(&account)),
            ("tier", J::str(tier.name())),
            ("now_ms", J::Num(now)),
            ("models", J::Arr(items)),
        ])
        .print();
        return Ok(0);
    }
    println!(
        "account {account:?}, {} tier, at {} (a peek: nothing is counted)",
        tier.name(),
        utc(now)
    );
    if let [(m, r)] = &out[..] {
        match r {
            Ok(d) => {
                println!("model   {m}");
                println!(
                    "minute  {} of {} used, {} left, resets {}",
                    d.minute.limit - d.minute.remaining,
                    d.minute.limit,
                    d.minute.remaining,
                    utc(d.minute.reset * 1000)
                );
                println!(
                    "day     {} of {} used, {} left, resets {}",
                    d.day.limit - d.day.remaining,
                    d.day.limit,
                    d.day.remaining,
                    utc(d.day.reset * 1000)
                );
                if d.allowed {
                    println!("next request: allowed; the headers it would see now:");
                } else {
                    println!(
                        "next request: refused (limited_by={}, retry-after {}); the headers now:",
                        limited_by(d),
                        d.retry_after
                    );
                }
                print!("{}", indent(&headers(d).replace('\r', ""), "    "));
            }
            Err(e) => println!("model   {m}: {e}"),
        }
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|(m, r)| match r {
            Ok(d) => vec![
                m.clone(),
                of(d.minute.limit - d.minute.remaining, Some(d.minute.limit)),
                of(d.day.limit - d.day.remaining, Some(d.day.limit)),
                if d.allowed {
                    "allowed".into()
                } else {
                    format!("refused ({}, retry-after {})", limited_by(d), d.retry_after)
                },
            ],
            Err(e) => vec![m.clone(), "-".into(), "-".into(), e.to_string()],
        })
        .collect();
    print!(
        "{}",
        table(&["MODEL", "MINUTE", "DAY", "NEXT REQUEST"], &rows)
    );
    println!("(--model M shows the exact headers for one model)");
    Ok(0)
}

// ---------------------------------------------------------------------------
// reset

fn reset(cli: Cli) -> Res<u8> {
    let path = cli.positionals(&["FILE"])?[0].clone();
    let account = cli.need("--account")?.to_string();
    let model = cli.get("--model");
    let l = open(&cli.policy()?, &path)?;
    let n = l
        .reset(account.as_bytes(), model.map(str::as_bytes))
        .map_err(|e| failed(format!("account: {e}")))?;
    if cli.flag("--json") {
        J::Obj(vec![
            ("account", J::str(&account)),
            ("model", J::opt_str(model)),
            ("reset", J::Num(n as u64)),
        ])
        .print();
        return Ok(0);
    }
    let on = model.map_or("any model".to_string(), |m| m.to_string());
    if n == 0 {
        println!("nothing to reset: {account:?} has no counts on {on} in {path}");
    } else {
        println!(
            "reset {account:?} on {on}: {n} key{} zeroed (bindings kept; proxies need no restart)",
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(0)
}

// ---------------------------------------------------------------------------
// resize

fn resize(cli: Cli) -> Res<u8> {
    let p = cli.positionals(&["OLD", "NEW"])?;
    let (old, new) = (p[0].clone(), p[1].clone());
    let slots: u32 = cli
        .num("--slots")?
        .ok_or_else(|| usage("--slots N is required"))?;
    if tollgate::region_size(slots).is_none() {
        return Err(usage("--slots must be 1 to 2^30"));
    }
    let now = cli.now_ms()?;
    let l = open(&cli.policy()?, &old)?;
    let began = Instant::now();
    let mut last: Option<Instant> = None;
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(2) } == 1;
    let result = l.resize_with_progress(&new, slots, now, |done, total| {
        // Only copies that take over a second earn progress, twice a second
        // at most; a terminal gets one line rewritten in place.
        let due = match last {
            None => began.elapsed() > Duration::from_secs(1),
            Some(t) => t.elapsed() > Duration::from_millis(500) || done == total,
        };
        if due {
            let pct = done * 100 / total.max(1);
            let (start, end) = if tty { ("\r", "") } else { ("", "\n") };
            eprint!("{start}resize: {pct:3}% ({done} of {total} slots read){end}");
            last = Some(Instant::now());
        }
    });
    if last.is_some() && tty {
        eprintln!();
    }
    let (nl, rep) = result.map_err(|e| failed(describe(&e, &new)))?;
    let st = nl.stats(now);
    if cli.flag("--json") {
        J::Obj(vec![
            ("old", J::str(&old)),
            ("new", J::str(&new)),
            ("slots", J::Num(st.slots as u64)),
            ("bytes", J::Num(st.bytes as u64)),
            ("carried", J::Num(rep.carried as u64)),
            ("unnamed", J::Num(rep.unnamed as u64)),
            ("unknown_model", J::Num(rep.unknown_model as u64)),
            ("stale", J::Num(rep.stale as u64)),
        ])
        .print();
    } else {
        println!("created {new}: {} slots, {} bytes", st.slots, st.bytes);
        println!(
            "carried {} live key{} from {old}",
            rep.carried,
            if rep.carried == 1 { "" } else { "s" }
        );
        if rep.stale > 0 {
            println!(
                "skipped {} key{} with no counts today",
                rep.stale,
                if rep.stale == 1 { "" } else { "s" }
            );
        }
        if rep.unnamed + rep.unknown_model > 0 {
            println!(
                "could not carry {} live key{} (no account name: their binder stopped mid-bind; or no model name): they start again at 0",
                rep.unnamed + rep.unknown_model,
                if rep.unnamed + rep.unknown_model == 1 { "" } else { "s" }
            );
        }
        println!(
            "point the proxies at {new}; requests the old table admits meanwhile are not carried"
        );
    }
    Ok(0)
}

// ---------------------------------------------------------------------------
// verify

fn verify(cli: Cli) -> Res<u8> {
    let path = cli.positionals(&["FILE"])?[0].clone();
    let now = cli.now_ms()?;
    let l = open(&cli.policy()?, &path)?;
    let r = l.verify(now);
    if cli.flag("--json") {
        J::Obj(vec![
            ("path", J::str(&path)),
            ("ok", J::Bool(r.ok())),
            ("slots", J::Num(r.slots as u64)),
            ("bound", J::Num(r.bound as u64)),
            ("live", J::Num(r.live as u64)),
            ("open", J::Num(r.open as u64)),
            ("never_used", J::Num(r.never_used as u64)),
            ("unnamed", J::Num(r.unnamed as u64)),
            ("models", J::Num(r.models as u64)),
            (
                "problems",
                J::Arr(
                    r.problems
                        .iter()
                        .map(|p| {
                            J::Obj(vec![
                                ("slot", p.slot.map_or(J::Null, |s| J::Num(s as u64))),
                                ("message", J::str(&p.message)),
                            ])
                        })
                        .collect(),
                ),
            ),
            ("notes", J::Arr(r.notes.iter().map(J::str).collect())),
        ])
        .print();
    } else {
        println!(
            "{path}: {}",
            if r.ok() {
                "OK".to_string()
            } else {
                format!(
                    "{} PROBLEM{}",
                    r.problems.len(),
                    if r.problems.len() == 1 { "" } else { "S" }
                )
            }
        );
        println!(
            "slots   {}: {} bound ({} with counts today), {} open, {} never used",
            r.slots, r.bound, r.live, r.open, r.never_used
        );
        println!("models  {} registered", r.models);
        for p in r.problems.iter().take(50) {
            println!("problem {p}");
        }
        if r.problems.len() > 50 {
            println!(
                "problem ... and {} more (--json lists all)",
                r.problems.len() - 50
            );
        }
        for n in &r.notes {
            println!("note    {n}");
        }
    }
    Ok(if r.ok() { 0 } else { 1 })
}

// ---------------------------------------------------------------------------
// policy check

fn policy_check(cli: Cli) -> Res<u8> {
    let path = cli.positionals(&["POLICY.toml"])?[0].clone();
    let p = Policy::load(&path).map_err(|e| failed(e.to_string()))?;
    let cell =
        |l: Option<tollgate::Limits>| l.map_or("-".to_string(), |l| format!("{}/{}", l.rpm, l.rpd));
    // The empty account id has no plan, so it reads the tier's own table.
    let no_plan: &[u8] = b"";
    let accounts = p.accounts();
    let plan = |acct: &[u8], i: usize| {
        let own = p.limits(Tier::Enterprise, i, acct);
        (own != p.limits(Tier::Enterprise, i, no_plan))
            .then_some(own)
            .flatten()
    };
    if cli.flag("--json") {
        let lim = |l: Option<tollgate::Limits>| {
            l.map_or(J::Null, |l| {
                J::Obj(vec![
                    ("rpm", J::Num(l.rpm as u64)),
                    ("rpd", J::Num(l.rpd as u64)),
                ])
            })
        };
        J::Obj(vec![
            ("path", J::str(&path)),
            ("ok", J::Bool(true)),
            (
                "models",
                J::Arr(
                    p.models()
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            J::Obj(vec![
                                ("model", J::str(&m.name)),
                                ("region", J::str(&m.region)),
                                ("free", lim(p.limits(Tier::Free, i, no_plan))),
                                ("developer", lim(p.limits(Tier::Developer, i, no_plan))),
                                ("enterprise", lim(p.limits(Tier::Enterprise, i, no_plan))),
                            ])
                        })
                        .collect(),
                ),
            ),
            (
                "accounts",
                J::Arr(
                    accounts
                        .iter()
                        .map(|a| {
                            let plans = p
                                .models()
                                .iter()
                                .enumerate()
                                .filter_map(|(i, m)| plan(a, i).map(|l| (m.name.clone(), l)))
                                .map(|(m, l)| {
                                    J::Obj(vec![
                                        ("model", J::str(m)),
                                        ("rpm", J::Num(l.rpm as u64)),
                                        ("rpd", J::Num(l.rpd as u64)),
                                    ])
                                })
                                .collect();
                            J::Obj(vec![
                                ("account", J::str(String::from_utf8_lossy(a))),
                                ("plan", J::Arr(plans)),
                            ])
                        })
                        .collect(),
                ),
            ),
        ])
        .print();
        return Ok(0);
    }
    println!(
        "{path}: OK, {} model{}, {} enterprise account{}",
        p.models().len(),
        if p.models().len() == 1 { "" } else { "s" },
        accounts.len(),
        if accounts.len() == 1 { "" } else { "s" }
    );
    let rows: Vec<Vec<String>> = p
        .models()
        .iter()
        .enumerate()
        .map(|(i, m)| {
            vec![
                m.name.clone(),
                m.region.clone(),
                cell(p.limits(Tier::Free, i, no_plan)),
                cell(p.limits(Tier::Developer, i, no_plan)),
                cell(p.limits(Tier::Enterprise, i, no_plan)),
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
        for a in accounts {
            let plans: Vec<String> = p
                .models()
                .iter()
                .enumerate()
                .filter_map(|(i, m)| plan(a, i).map(|l| format!("{} {}/{}", m.name, l.rpm, l.rpd)))
                .collect();
            println!(
                "    {}: {}",
                String::from_utf8_lossy(a),
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

// ---------------------------------------------------------------------------
// __hammer: a worker process for the multi-process tests

/// Decides requests against a shared file and reports what was admitted.
/// With `--stream`, writes 'R' once the table is open, then the key index
/// (two bytes, little-endian, in one atomic pipe write) the moment each
/// request is admitted, so a parent that SIGKILLs it knows every admission
/// but the one in flight.
fn hammer(cli: Cli) -> Res<u8> {
    let path = cli.positionals(&["FILE"])?[0].clone();
    let account = cli.need("--account")?.to_string();
    let model = cli.get("--model").unwrap_or("DeepSeek-V3.1").to_string();
    let tier = cli.tier()?;
    let count: u64 = cli.num("--count")?.unwrap_or(1);
    let keys: u32 = cli.num("--accounts")?.unwrap_or(1).max(1);
    let rpm: u32 = cli.num("--rpm")?.unwrap_or(0);
    let rpd: u32 = cli.num("--rpd")?.unwrap_or(0);
    let minutes: u64 = cli.num("--minutes")?.unwrap_or(1).max(1);
    let create: u32 = cli.num("--create-slots")?.unwrap_or(0);
    let now = cli.now_ms()?;
    let stream = cli.flag("--stream");
    if stream && keys > u16::MAX as u32 {
        return Err(usage("--stream handles at most 65535 accounts"));
    }
    if let Some(w) = cli.get("--wait-for") {
        let until = Instant::now() + Duration::from_secs(30);
        while !std::path::Path::new(w).exists() {
            if Instant::now() > until {
                return Err(failed(format!("{w} did not appear within 30 s")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let policy = cli.policy()?;
    let l = Limiter::open(&policy, &path, create, create > 0)
        .map_err(|e| failed(describe(&e, &path)))?;
    let put = |b: &[u8]| {
        // Unbuffered on purpose: it must leave before the next decision.
        // SAFETY: writes from a live slice to stdout.
        unsafe { libc::write(1, b.as_ptr().cast(), b.len()) };
    };
    if stream {
        put(b"R");
    }
    let names: Vec<String> = (0..keys)
        .map(|k| {
            if keys == 1 {
                account.clone()
            } else {
                format!("{account}-{k}")
            }
        })
        .collect();
    let (mut admitted, mut denied, mut errors) = (0u64, 0u64, 0u64);
    if cli.flag("--churn") {
        // Every request a new key, each a day after the last: every decision
        // binds a slot, mostly one left stale by an earlier key.
        let mut j = 0u64;
        while cli.flag("--forever") || j < count {
            let name = format!("{account}-{j}");
            let req = Request::new(name.as_bytes(), model.as_bytes(), tier).limits(rpm, rpd);
            match l.check(&req, now + j * 86_400_000) {
                Ok(d) if d.allowed => admitted += 1,
                Ok(_) => denied += 1,
                Err(_) => errors += 1,
            }
            j += 1;
        }
        if !stream {
            println!("admitted {admitted} denied {denied} errors {errors}");
        }
        return Ok(if errors > 0 { 1 } else { 0 });
    }
    loop {
        for m in 0..minutes {
            let t = now + m * 60_000;
            for i in 0..count {
                let k = (i % keys as u64) as usize;
                let req =
                    Request::new(names[k].as_bytes(), model.as_bytes(), tier).limits(rpm, rpd);
                match l.check(&req, t) {
                    Ok(d) if d.allowed => {
                        admitted += 1;
                        if stream {
                            put(&(k as u16).to_le_bytes());
                        }
                    }
                    Ok(_) => denied += 1,
                    Err(_) => errors += 1,
                }
            }
        }
        if !cli.flag("--forever") {
            break;
        }
    }
    if !stream {
        let mut out = std::io::stdout().lock();
        if cli.flag("--json") {
            let _ = writeln!(
                out,
                "{{\"admitted\":{admitted},\"denied\":{denied},\"errors\":{errors}}}"
            );
        } else {
            let _ = writeln!(out, "admitted {admitted} denied {denied} errors {errors}");
        }
    }
    Ok(if errors > 0 { 1 } else { 0 })
}

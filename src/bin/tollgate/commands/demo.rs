//! `tollgate demo`: the README's first command. Replays a minute and a day
//! of one account's traffic on the built-in policy with a simulated clock,
//! in an in-memory table, and prints what a client would see; every number
//! comes from the engine, and the demo fails if the engine disagrees with
//! the story it tells.

use std::fmt::Write as _;

use tollgate::decision::Decision;
use tollgate::{Error, LimitedBy, Limiter, Policy, Request, Tier};

use super::{error_body, fail, headers, Res};
use crate::output::indent;
use crate::time::{hm, hms, span, utc};

/// Replay traffic on the built-in policy with a simulated clock
#[derive(clap::Args)]
pub struct Args {}

/// The OpenAI-shaped answer for a model the policy does not know. Not a rate
/// limit: a 404 like the API's own for a model that does not exist.
fn unknown_model_body(model: &str) -> String {
    let mut s = String::new();
    tollgate::decision::write_unknown_model_body(model.as_bytes(), &mut s)
        .expect("String never fails");
    s
}

pub fn run(_: Args) -> Res<u8> {
    let policy = Policy::builtin();
    let limiter = Limiter::new(&policy, 1024).map_err(|e| fail(e.to_string()))?;
    const ACCOUNT: &str = "acct-demo";
    const MODEL: &str = "DeepSeek-V3.1";
    let start: u64 = 1_795_773_600_000; // 2026-11-27T10:00:00Z
    let req = Request::new(ACCOUNT.as_bytes(), MODEL.as_bytes(), Tier::Developer);
    let check = |t: u64| -> Res<Decision> {
        limiter
            .check(&req, t)
            .map_err(|e| fail(format!("demo: {e}")))
    };
    let broken = |what: &str| {
        fail(format!(
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
        over.limited_by.name()
    )
    .unwrap();
    let mut resp =
        String::from("HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n");
    resp += &headers(&over);
    resp += "\r\n";
    resp += &error_body(&over, MODEL);
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
        day_over.limited_by.name()
    )
    .unwrap();
    let mut resp =
        String::from("HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n");
    resp += &headers(&day_over);
    resp += "\r\n";
    resp += &error_body(&day_over, MODEL);
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

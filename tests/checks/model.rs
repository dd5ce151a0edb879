//! Property test: random request streams with random clock steps, replayed
//! against the limiter and against a plain reference model written from the
//! policy's words. Every decision and every header must agree.

use std::collections::HashMap;

use proptest::prelude::*;
use tollgate::{LimitedBy, Limiter, Policy, Request, Tier};

const DAY: u64 = 86_400_000;
const MIN: u64 = 60_000;

/// The reference: per key, the latest window it was charged in and its
/// minute and day counts. Fixed UTC windows; a clock going back never
/// reopens a window; refused or peeked requests change nothing.
#[derive(Default, Clone, Copy)]
struct RefKey {
    at: (u64, u64), // (day, minute of day)
    minute: u64,
    day: u64,
}

struct Expect {
    allowed: bool,
    limited_by: LimitedBy,
    minute_remaining: u64,
    day_remaining: u64,
    minute_reset: u64,
    day_reset: u64,
    retry_after: u64,
}

fn reference(k: &mut RefKey, rpm: u64, rpd: u64, cost: u64, now_ms: u64) -> Expect {
    let now = (now_ms / DAY, now_ms % DAY / MIN);
    // Counts dated more than the clock-fault bound (60 s: one minute) ahead
    // are taken as the current window's; a refusal stores them re-dated.
    let minutes = |(d, m): (u64, u64)| d * 1440 + m;
    let fault = k.at > now && minutes(k.at) - minutes(now) > 1;
    if fault && cost > 0 {
        k.at = now;
    }
    let at = if fault { now } else { k.at.max(now) };
    let day_used = if fault || k.at.0 == at.0 { k.day } else { 0 };
    let minute_used = if fault || k.at == at { k.minute } else { 0 };
    let want = cost.max(1);
    let limited_by = if day_used + want > rpd {
        LimitedBy::Day
    } else if minute_used + want > rpm {
        LimitedBy::Minute
    } else {
        LimitedBy::None
    };
    let allowed = limited_by == LimitedBy::None;
    let (mut m, mut d) = (minute_used, day_used);
    if allowed && cost > 0 {
        m += cost;
        d += cost;
        *k = RefKey {
            at,
            minute: m,
            day: d,
        };
    }
    let minute_reset = (at.0 * 1440 + at.1 + 1) * 60;
    let day_reset = (at.0 + 1) * 86_400;
    let until = |reset_s: u64| {
        ((reset_s * 1000).saturating_sub(now_ms))
            .div_ceil(1000)
            .max(1)
    };
    let retry_after = match limited_by {
        LimitedBy::None => 0,
        LimitedBy::Minute => until(minute_reset),
        LimitedBy::Day => until(day_reset),
        other => unreachable!("the model knows request windows only: {other:?}"),
    };
    Expect {
        allowed,
        limited_by,
        minute_remaining: rpm.saturating_sub(m),
        day_remaining: rpd.saturating_sub(d),
        minute_reset,
        day_reset,
        retry_after,
    }
}

#[derive(Debug, Clone)]
enum Step {
    Same,
    Ms(u64),
    Minutes(u64),
    Days(u64),
    BackMs(u64),
    BackMinutes(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Same),
        4 => (1u64..2_000).prop_map(Step::Ms),
        3 => (1u64..4).prop_map(Step::Minutes),
        1 => (1u64..3).prop_map(Step::Days),
        1 => (1u64..5_000).prop_map(Step::BackMs),
        1 => (1u64..3).prop_map(Step::BackMinutes),
    ]
}

const MODELS: [&str; 3] = ["DeepSeek-V3.1", "Qwen3-32B", "gpt-oss-120b"];
const POLICY: &str = r#"
[models]
"DeepSeek-V3.1" = { region = "EU" }
"Qwen3-32B" = { region = "Global" }
"gpt-oss-120b" = { region = "EU" }
[tiers.developer]
"DeepSeek-V3.1" = { rpm = 3, rpd = 7 }
"Qwen3-32B" = { rpm = 5, rpd = 11 }
"gpt-oss-120b" = { rpm = 2, rpd = 40 }
"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn limiter_agrees_with_the_reference(
        ops in prop::collection::vec((0usize..4, 0usize..3, 0u32..4, any::<bool>(), step()), 1..300),
        // 4 accounts x 3 models x 2 limit kinds = 24 keys at most: never full.
        slots in 24u32..64,
    ) {
        let policy = Policy::parse(POLICY, "model.toml").unwrap();
        let limits: HashMap<&str, (u64, u64)> =
            [("DeepSeek-V3.1", (3, 7)), ("Qwen3-32B", (5, 11)), ("gpt-oss-120b", (2, 40))].into();
        let l = Limiter::new(&policy, slots).unwrap();
        let mut refs: HashMap<(usize, usize, bool), RefKey> = HashMap::new();
        let mut now: u64 = 1_764_237_600_000 + 59_000;
        for (acct, model, cost, explicit, st) in ops {
            now = match st {
                Step::Same => now,
                Step::Ms(d) => now + d,
                Step::Minutes(m) => now + m * MIN,
                Step::Days(d) => now + d * DAY,
                Step::BackMs(d) => now - d,
                Step::BackMinutes(m) => now - m * MIN,
            };
            let name = MODELS[model];
            // Explicit limits use their own accounts so each key keeps one
            // pair of limits (counts are compared against limits in force).
            let account = format!("{}acct-{acct}", if explicit { "x-" } else { "" });
            let (rpm, rpd) = if explicit { (4, 9) } else { limits[name] };
            let mut req = Request::new(account.as_bytes(), name.as_bytes(), Tier::Developer).cost(cost);
            if explicit {
                req = req.limits(4, 9);
            }
            let got = l.check(&req, now);
            if cost as u64 > rpm.min(rpd) {
                prop_assert!(matches!(got, Err(tollgate::Error::CostTooLarge)));
                continue;
            }
            let d = got.unwrap();
            let e = reference(refs.entry((acct, model, explicit)).or_default(), rpm, rpd, cost as u64, now);
            prop_assert_eq!(d.allowed, e.allowed);
            prop_assert_eq!(d.limited_by, e.limited_by);
            prop_assert_eq!(d.minute.remaining as u64, e.minute_remaining);
            prop_assert_eq!(d.day.remaining as u64, e.day_remaining);
            prop_assert_eq!(d.minute.reset, e.minute_reset);
            prop_assert_eq!(d.day.reset, e.day_reset);
            prop_assert_eq!(d.retry_after as u64, e.retry_after);
            prop_assert_eq!((d.minute.limit as u64, d.day.limit as u64), (rpm, rpd));
            let mut headers = String::new();
            d.write_headers(&mut headers).unwrap();
            let mut want = format!(
                "x-ratelimit-limit-requests: {rpm}\r\nx-ratelimit-remaining-requests: {}\r\nx-ratelimit-reset-requests: {}\r\n\
                 x-ratelimit-limit-requests-day: {rpd}\r\nx-ratelimit-remaining-requests-day: {}\r\nx-ratelimit-reset-requests-day: {}\r\n",
                e.minute_remaining, e.minute_reset, e.day_remaining, e.day_reset
            );
            if !e.allowed {
                want += &format!("retry-after: {}\r\n", e.retry_after);
            }
            prop_assert_eq!(headers, want);
        }
    }
}

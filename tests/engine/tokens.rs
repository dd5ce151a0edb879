//! Token limits through the Rust API: reserved at admission together with
//! the request counts, settled from usage (docs/tokens.md).

use std::sync::atomic::{AtomicU64, Ordering};

use tollgate::{Ending, Error, LimitedBy, Limiter, Policy, Request, Tier};

use super::{DAY, MIN, T0};

const POLICY: &str = include_str!("../../policy/infercom-tokens.toml");

fn policy() -> Policy {
    Policy::parse(POLICY, "infercom-tokens.toml").unwrap()
}

fn limiter() -> Limiter {
    Limiter::new(&policy(), 256).unwrap()
}

fn dev<'a>(account: &'a str, tokens: u32) -> Request<'a> {
    Request::new(account.as_bytes(), b"DeepSeek-V3.1", Tier::Developer).tokens(tokens)
}

#[test]
fn the_example_policy_has_token_limits_and_the_builtin_none() {
    let p = policy();
    let m = p.model_index(b"DeepSeek-V3.1").unwrap();
    let t = p.token_limits(Tier::Developer, m, b"x").unwrap();
    assert_eq!((t.tpm, t.tpd), (200_000, 5_000_000));
    assert_eq!(
        p.token_limits(Tier::Enterprise, m, b"acme-corp")
            .unwrap()
            .tpm,
        4_000_000
    );
    let q = p.model_index(b"Qwen3-32B").unwrap();
    assert!(p.token_limits(Tier::Developer, q, b"x").is_none());
    assert!(!Policy::builtin().has_token_limits());
}

#[test]
fn a_reservation_is_charged_and_shown_after_it() {
    let l = limiter();
    let d = l.check(&dev("a", 150_000), T0).unwrap();
    assert!(d.allowed);
    let t = d.tokens.unwrap();
    assert_eq!((t.minute.limit, t.minute.remaining), (200_000, 50_000));
    assert_eq!((t.day.limit, t.day.remaining), (5_000_000, 4_850_000));
    assert_eq!(t.reserved, 150_000);
    assert_eq!(t.ticket.unwrap().reserved(), 150_000);
    // The six request headers are there too, as before.
    assert_eq!(d.minute.remaining, 29);
}

#[test]
fn a_refusal_on_tokens_charges_nothing_anywhere() {
    let l = limiter();
    assert!(l.check(&dev("a", 150_000), T0).unwrap().allowed);
    let d = l.check(&dev("a", 60_000), T0 + 1).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.limited_by, LimitedBy::TokensMinute);
    assert_eq!(
        d.minute.remaining, 29,
        "the refused request was not counted"
    );
    let t = d.tokens.unwrap();
    assert_eq!(t.minute.remaining, 50_000);
    assert!(t.ticket.is_none() && t.reserved == 0);
    assert!(d.retry_after >= 1 && d.retry_after <= 60);
    // What is left still fits.
    assert!(l.check(&dev("a", 50_000), T0 + 2).unwrap().allowed);
    // The next minute has room again.
    assert!(l.check(&dev("a", 60_000), T0 + MIN).unwrap().allowed);
}

#[test]
fn a_refusal_on_requests_gives_the_tokens_back() {
    let l = limiter();
    for i in 0..30 {
        assert!(l.check(&dev("a", 100), T0 + i).unwrap().allowed);
    }
    let d = l.check(&dev("a", 100), T0 + 40).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.limited_by, LimitedBy::Minute);
    let t = d.tokens.unwrap();
    assert_eq!(t.minute.remaining, 200_000 - 3_000);
    let peek = l.check(&dev("a", 0).cost(0), T0 + 41).unwrap();
    assert_eq!(peek.tokens.unwrap().minute.remaining, 200_000 - 3_000);
}

#[test]
fn the_day_is_named_whichever_unit_ran_out() {
    let l = limiter();
    let r = |n| dev("a", n).token_limits(1_000, 1_500);
    assert!(l.check(&r(1_000), T0).unwrap().allowed);
    assert!(l.check(&r(500), T0 + MIN).unwrap().allowed);
    let d = l.check(&r(1), T0 + 2 * MIN).unwrap();
    assert_eq!(d.limited_by, LimitedBy::TokensDay);
    assert!(
        d.retry_after as u64 > 3_000,
        "waits for the day, not the minute"
    );
    assert!(l.check(&r(1_000), T0 + DAY).unwrap().allowed);
}

/// The refusal ring (`tollgate refusals`) records a refusal in the unit of
/// the window that refused: tokens against tpm/tpd, with the reservation.
#[test]
fn refusals_on_tokens_are_recorded_in_tokens() {
    let l = limiter();
    assert!(l.check(&dev("a", 150_000), T0).unwrap().allowed);
    assert!(!l.check(&dev("a", 60_000), T0 + 1).unwrap().allowed);
    // Tokens per day, a second later (the ring records a key once a second).
    let r = |n| dev("b", n).token_limits(1_000, 1_500);
    assert!(l.check(&r(1_000), T0).unwrap().allowed);
    assert!(l.check(&r(500), T0 + MIN).unwrap().allowed);
    assert!(!l.check(&r(7), T0 + MIN + 1_000).unwrap().allowed);
    // And on requests, as before: request counts, nothing reserved.
    for i in 0..30 {
        assert!(l.check(&dev("c", 10), T0 + i).unwrap().allowed);
    }
    assert!(!l.check(&dev("c", 10), T0 + 2_000).unwrap().allowed);
    let got = l.refusals();
    assert_eq!(got.len(), 3, "{got:?}");
    let a = &got[0];
    assert_eq!(a.account, b"a");
    assert_eq!(a.limited_by, LimitedBy::TokensMinute);
    assert_eq!((a.minute_count, a.minute_limit), (150_000, 200_000));
    assert_eq!((a.day_count, a.day_limit), (150_000, 5_000_000));
    assert_eq!(a.reserved, 60_000);
    let b = &got[1];
    assert_eq!(b.limited_by, LimitedBy::TokensDay);
    assert_eq!((b.minute_count, b.minute_limit), (500, 1_000));
    assert_eq!((b.day_count, b.day_limit), (1_500, 1_500));
    assert_eq!(b.reserved, 7);
    let c = &got[2];
    assert_eq!(c.limited_by, LimitedBy::Minute);
    assert_eq!((c.minute_count, c.minute_limit), (30, 30));
    assert_eq!(c.reserved, 0);
}

/// `tollgate stats`: the tokens a table holds now, summed over its keys.
#[test]
fn token_table_stats_sum_the_keys() {
    let l = limiter();
    let t = l.token_table_stats(T0).unwrap().unwrap();
    assert_eq!((t.keys, t.minute, t.day), (0, 0, 0));
    assert!(l.check(&dev("a", 1_000), T0).unwrap().allowed);
    assert!(l.check(&dev("b", 250), T0 + MIN).unwrap().allowed);
    let q = Request::new(b"c", b"Qwen3-32B", Tier::Developer);
    assert!(l.check(&q, T0).unwrap().allowed);
    let t = l.token_table_stats(T0 + MIN).unwrap().unwrap();
    assert_eq!((t.keys, t.minute, t.day), (2, 250, 1_250));
    let t = l.token_table_stats(T0 + DAY).unwrap().unwrap();
    assert_eq!((t.keys, t.minute, t.day), (0, 0, 0));
}

#[test]
fn a_reservation_larger_than_the_limit_is_an_error_not_a_refusal() {
    let l = limiter();
    match l.check(&dev("a", 200_001), T0) {
        Err(Error::TokensTooLarge { reserved, limit }) => {
            assert_eq!((reserved, limit), (200_001, 200_000))
        }
        other => panic!("{other:?}"),
    }
    assert!(l.check(&dev("a", 200_000), T0).unwrap().allowed);
}

#[test]
fn settling_charges_the_usage_instead_of_the_reservation() {
    let l = limiter();
    let d = l.check(&dev("a", 10_000), T0).unwrap();
    let ticket = d.tokens.unwrap().ticket.unwrap();
    assert_eq!(
        l.settle(ticket, Ending::Usage(2_500), T0 + 5).unwrap(),
        2_500
    );
    let peek = l.check(&dev("a", 0).cost(0), T0 + 6).unwrap();
    assert_eq!(peek.tokens.unwrap().minute.remaining, 200_000 - 2_500);
    assert_eq!(peek.tokens.unwrap().day.remaining, 5_000_000 - 2_500);
    // An under-estimate is charged on top.
    let d = l.check(&dev("a", 1_000), T0 + 7).unwrap();
    l.settle(
        d.tokens.unwrap().ticket.unwrap(),
        Ending::Usage(4_000),
        T0 + 8,
    )
    .unwrap();
    let peek = l.check(&dev("a", 0).cost(0), T0 + 9).unwrap();
    assert_eq!(peek.tokens.unwrap().minute.remaining, 200_000 - 6_500);
}

#[test]
fn a_first_reservation_of_nothing_is_still_charged_its_usage() {
    // Counting after the response (a reservation of 0, `default_max_output
    // = 0` and the model from a header): the key's first request stores
    // nothing in the token word, and its usage must still be charged.
    let l = limiter();
    let d = l.check(&dev("zero", 0), T0).unwrap();
    assert!(d.allowed);
    let ticket = d.tokens.unwrap().ticket.unwrap();
    assert_eq!(l.settle(ticket, Ending::Usage(33), T0 + 1).unwrap(), 33);
    let peek = l.check(&dev("zero", 0).cost(0), T0 + 2).unwrap();
    assert_eq!(peek.tokens.unwrap().minute.remaining, 200_000 - 33);
}

#[test]
fn an_unspent_part_comes_back_only_while_its_window_is_open() {
    let l = limiter();
    let d = l.check(&dev("a", 10_000), T0).unwrap();
    let ticket = d.tokens.unwrap().ticket.unwrap();
    // Settled in the next minute: the minute's part is gone with it, the
    // day gets it back.
    l.settle(ticket, Ending::Usage(1_000), T0 + MIN).unwrap();
    let peek = l.check(&dev("a", 0).cost(0), T0 + MIN).unwrap();
    assert_eq!(peek.tokens.unwrap().minute.remaining, 200_000);
    assert_eq!(peek.tokens.unwrap().day.remaining, 5_000_000 - 1_000);
}

#[test]
fn responses_without_usage_follow_the_policy() {
    let l = limiter();
    let reserve = |at| {
        l.check(&dev("a", 1_000), at)
            .unwrap()
            .tokens
            .unwrap()
            .ticket
            .unwrap()
    };
    let left = |at| {
        l.check(&dev("a", 0).cost(0), at)
            .unwrap()
            .tokens
            .unwrap()
            .minute
            .remaining
    };
    // A failed response gives it back; a cut or complete one keeps it.
    assert_eq!(l.settle(reserve(T0), Ending::Failed, T0).unwrap(), 0);
    assert_eq!(left(T0), 200_000);
    assert_eq!(l.settle(reserve(T0), Ending::Cut, T0).unwrap(), 1_000);
    assert_eq!(l.settle(reserve(T0), Ending::Complete, T0).unwrap(), 1_000);
    assert_eq!(left(T0), 198_000);
    // The policy can turn both around.
    let text = POLICY.replace("on_failed = \"release\"", "on_failed = \"keep\"");
    let text = text.replace("on_cut = \"keep\"", "on_cut = \"release\"");
    let l = Limiter::new(&Policy::parse(&text, "t").unwrap(), 64).unwrap();
    let t = l
        .check(&dev("b", 1_000), T0)
        .unwrap()
        .tokens
        .unwrap()
        .ticket
        .unwrap();
    assert_eq!(l.settle(t, Ending::Failed, T0).unwrap(), 1_000);
    let t = l
        .check(&dev("b", 1_000), T0)
        .unwrap()
        .tokens
        .unwrap()
        .ticket
        .unwrap();
    assert_eq!(l.settle(t, Ending::Cut, T0).unwrap(), 0);
}

#[test]
fn keys_without_a_token_limit_show_no_token_windows() {
    let l = limiter();
    let r = Request::new(b"a", b"Qwen3-32B", Tier::Developer).tokens(5_000_000);
    let d = l.check(&r, T0).unwrap();
    assert!(d.allowed && d.tokens.is_none());
    assert!(d.token_header_pairs().is_none());
    let mut h = String::new();
    d.write_headers(&mut h).unwrap();
    assert!(!h.contains("tokens"));
}

#[test]
fn token_headers_and_the_429_body() {
    let l = limiter();
    let d = l.check(&dev("a", 150_000), T0).unwrap();
    let mut h = String::new();
    d.write_headers(&mut h).unwrap();
    assert!(h.contains("x-ratelimit-limit-tokens: 200000\r\n"), "{h}");
    assert!(h.contains("x-ratelimit-remaining-tokens: 50000\r\n"), "{h}");
    assert!(
        h.contains("x-ratelimit-remaining-tokens-day: 4850000\r\n"),
        "{h}"
    );
    assert!(h.contains("x-ratelimit-reset-tokens-day: "), "{h}");
    let d = l.check(&dev("a", 60_000), T0 + 1).unwrap();
    let mut body = String::new();
    d.write_error_body(b"DeepSeek-V3.1", &mut body).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "tokens_rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "tokens");
    let mut ietf = String::new();
    d.write_ietf_policy(&mut ietf).unwrap();
    assert!(ietf.contains("\"tokens-minute\";q=200000;w=60"), "{ietf}");
}

#[test]
fn a_policy_names_both_token_windows_or_neither() {
    let base = "[models]\nm = { region = \"EU\" }\n[tiers.developer]\n";
    let bad = [
        ("m = { rpm = 1, rpd = 2, tpm = 5 }", "tpm without tpd"),
        ("m = { rpm = 1, rpd = 2, tpd = 5 }", "tpd without tpm"),
        (
            "m = { rpm = 1, rpd = 2, tpm = 50, tpd = 5 }",
            "more than tpd",
        ),
        ("m = { rpm = 1, rpd = 2, tpm = 0, tpd = 5 }", "from 1"),
    ];
    for (line, want) in bad {
        let e = Policy::parse(&format!("{base}{line}\n"), "p").unwrap_err();
        assert!(e.to_string().contains(want), "{line}: {e}");
    }
    let tokens = [
        ("bytes_per_token = 0", "tokens.bytes_per_token"),
        ("on_cut = \"maybe\"", "tokens.on_cut"),
        ("nonsense = 1", "unknown field"),
    ];
    for (line, want) in tokens {
        let text = format!("{base}m = {{ rpm = 1, rpd = 2 }}\n[tokens]\n{line}\n");
        let e = Policy::parse(&text, "p").unwrap_err();
        assert!(e.to_string().contains(want), "{line}: {e}");
    }
}

/// Threads race on one key with random reservations and usages: at every
/// moment the minute's charged tokens stay within the limit plus what
/// settling under-estimates added, and at the end the windows hold exactly
/// what was settled.
#[test]
fn racing_threads_settle_to_exactly_the_usage() {
    let l = limiter();
    let tpm = 200_000u64;
    let settled = AtomicU64::new(0);
    let excess = AtomicU64::new(0);
    let admitted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (l, settled, excess, admitted) = (&l, &settled, &excess, &admitted);
            s.spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                for i in 0..2_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let reserve = (x % 3_000) as u32;
                    let used = (x >> 20) % 3_500;
                    let r = dev("race", reserve).limits(1_000_000, 10_000_000);
                    let d = l.check(&r, T0 + i % 50).unwrap();
                    if !d.allowed {
                        continue;
                    }
                    admitted.fetch_add(1, Ordering::Relaxed);
                    let ticket = d.tokens.unwrap().ticket.unwrap();
                    l.settle(ticket, Ending::Usage(used), T0 + i % 50).unwrap();
                    settled.fetch_add(used, Ordering::Relaxed);
                    excess.fetch_add(used.saturating_sub(reserve as u64), Ordering::Relaxed);
                }
            });
        }
    });
    let peek = l
        .check(
            &dev("race", 0).cost(0).limits(1_000_000, 10_000_000),
            T0 + 50,
        )
        .unwrap();
    let charged = tpm - peek.tokens.unwrap().minute.remaining as u64;
    let settled = settled.load(Ordering::Relaxed);
    assert!(admitted.load(Ordering::Relaxed) > 100);
    assert_eq!(charged, settled.min(tpm));
    assert!(settled <= tpm + excess.load(Ordering::Relaxed));
}

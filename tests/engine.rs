//! The engine's behaviour through the Rust API, on the built-in policy.

#[path = "engine/clock.rs"]
mod clock;
#[path = "engine/file_faults.rs"]
mod file_faults;
#[path = "engine/in_flight.rs"]
mod in_flight;
#[path = "engine/tokens.rs"]
mod tokens;

use tollgate::{Error, LimitedBy, Limiter, Policy, Request, Tier};

/// 2025-11-27T10:00:00Z
const T0: u64 = 1_764_237_600_000;
const MIN: u64 = 60_000;
const DAY: u64 = 86_400_000;

fn dev<'a>(account: &'a str, model: &'a str) -> Request<'a> {
    Request::new(account.as_bytes(), model.as_bytes(), Tier::Developer)
}

fn limiter(slots: u32) -> Limiter {
    Limiter::new(&Policy::builtin(), slots).unwrap()
}

#[test]
fn thirty_first_request_in_a_minute_is_refused_with_headers() {
    let l = limiter(64);
    let r = dev("acct", "DeepSeek-V3.1");
    let start = T0 + 17_250; // 17.25 s into the minute
    for i in 1..=30u32 {
        let d = l.check(&r, start + i as u64).unwrap();
        assert!(d.allowed, "request {i}");
        assert_eq!(d.minute.remaining, 30 - i);
        assert_eq!(d.day.remaining, 15_000 - i);
        assert_eq!(d.retry_after, 0);
        assert_eq!(d.limited_by, LimitedBy::None);
    }
    let d = l.check(&r, start + 31).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.limited_by, LimitedBy::Minute);
    assert_eq!(d.minute.limit, 30);
    assert_eq!(d.minute.remaining, 0);
    assert_eq!(d.minute.reset, T0 / 1000 + 60);
    assert_eq!(d.day.limit, 15_000);
    assert_eq!(
        d.day.remaining, 14_970,
        "the refused request charged nothing"
    );
    assert_eq!(d.day.reset, (T0 / DAY + 1) * 86_400);
    assert_eq!(d.retry_after, 43, "42.719 s rounds up");
    let mut h = String::new();
    d.write_headers(&mut h).unwrap();
    assert!(h.contains("x-ratelimit-remaining-requests: 0\r\n"));
    assert!(h.ends_with("retry-after: 43\r\n"));

    // The next minute admits again, counted against the same day.
    let d = l.check(&r, T0 + MIN).unwrap();
    assert!(d.allowed);
    assert_eq!((d.minute.remaining, d.day.remaining), (29, 14_969));
}

#[test]
fn day_limit_blocks_until_midnight_whatever_the_minute_says() {
    let l = limiter(64);
    let r = dev("acct", "Qwen3-32B"); // 30 RPM, 6000 RPD
    let day_start = T0 / DAY * DAY;
    let mut t = day_start;
    for _ in 0..200 {
        for _ in 0..30 {
            assert!(l.check(&r, t).unwrap().allowed);
        }
        t += MIN;
    }
    let d = l.check(&r, t).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.limited_by, LimitedBy::Day);
    assert_eq!(
        d.minute.remaining, 30,
        "a fresh minute, yet the day refuses"
    );
    assert_eq!(d.day.remaining, 0);
    assert_eq!(d.retry_after as u64, (day_start + DAY - t) / 1000);
    // Next UTC day: fresh.
    let d = l.check(&r, day_start + DAY).unwrap();
    assert!(d.allowed);
    assert_eq!(d.day.remaining, 5_999);
}

#[test]
fn refused_requests_charge_neither_window() {
    let l = limiter(64);
    let r = dev("a", "DeepSeek-V3.1").limits(5, 7);
    for _ in 0..5 {
        assert!(l.check(&r, T0).unwrap().allowed);
    }
    for _ in 0..100 {
        assert!(!l.check(&r, T0).unwrap().allowed);
    }
    let d = l.check(&r, T0 + MIN).unwrap();
    assert!(d.allowed);
    assert_eq!(d.day.remaining, 1);
    // Cost 2 does not fit the one left: day refuses, nothing charged.
    let d = l.check(&r.cost(2), T0 + MIN).unwrap();
    assert_eq!(
        (d.allowed, d.limited_by, d.day.remaining),
        (false, LimitedBy::Day, 1)
    );
    assert!(l.check(&r, T0 + MIN).unwrap().allowed);
}

#[test]
fn cost_peek_and_too_large() {
    let l = limiter(64);
    let r = dev("a", "DeepSeek-V3.1");
    let d = l.check(&r.cost(10), T0).unwrap();
    assert_eq!(d.minute.remaining, 20);
    let p = l.check(&r.cost(0), T0).unwrap();
    assert!(p.allowed);
    assert_eq!(p.minute.remaining, 20, "a peek counts nothing");
    assert!(matches!(l.check(&r.cost(31), T0), Err(Error::CostTooLarge)));
    assert!(l.check(&r.cost(20), T0).unwrap().allowed);
    let p = l.check(&r.cost(0), T0).unwrap();
    assert!(!p.allowed, "a peek says whether one more would pass");
    assert_eq!(p.limited_by, LimitedBy::Minute);
    // A peek at an unseen key takes no slot.
    let p = l
        .check(&dev("never-seen", "DeepSeek-V3.1").cost(0), T0)
        .unwrap();
    assert!(p.allowed);
    assert_eq!(p.minute.remaining, 30);
    assert_eq!(l.stats(T0).used, 1);
}

#[test]
fn clock_stepping_back_gives_nothing_back() {
    let l = limiter(64);
    let r = dev("a", "DeepSeek-V3.1");
    for _ in 0..30 {
        assert!(l.check(&r, T0 + 5 * MIN).unwrap().allowed);
    }
    // Half a minute earlier (within the clock-fault bound): still the later
    // window, still refused.
    let d = l.check(&r, T0 + 5 * MIN - 30_000).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.minute.reset, (T0 + 6 * MIN) / 1000);
    // An hour earlier is past the bound: the later counts were a clock
    // fault and are taken as this minute's: still refused, but only until
    // this minute ends, not for the hour.
    let back = T0 + 5 * MIN - 3_600_000;
    let d = l.check(&r, back).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.minute.reset, (back / MIN + 1) * 60);
    assert!(d.retry_after <= 60);
    // A day earlier: the day count stays too.
    let d = l.check(&r, T0 - DAY).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.day.remaining, 14_970);
}

#[test]
fn errors_are_distinct_and_take_no_slot() {
    let l = limiter(64);
    assert!(matches!(
        l.check(&dev("a", "gpt-5"), T0),
        Err(Error::UnknownModel)
    ));
    assert!(matches!(
        l.check(&dev("a", ""), T0),
        Err(Error::UnknownModel)
    ));
    let free = Request::new(b"a", b"DeepSeek-V3.1", Tier::Free);
    assert!(matches!(l.check(&free, T0), Err(Error::NoLimit)));
    let ent = Request::new(b"a", b"DeepSeek-V3.1", Tier::Enterprise);
    assert!(matches!(l.check(&ent, T0), Err(Error::NoLimit)));
    assert!(matches!(
        l.check(&dev("", "DeepSeek-V3.1"), T0),
        Err(Error::Account)
    ));
    let long = "x".repeat(65);
    assert!(matches!(
        l.check(&dev(&long, "DeepSeek-V3.1"), T0),
        Err(Error::Account)
    ));
    assert!(matches!(
        l.check(&dev("a", "DeepSeek-V3.1"), u64::MAX),
        Err(Error::Invalid(_))
    ));
    for i in 0..1000 {
        let _ = l.check(&dev(&format!("acct{i}"), &format!("model-{i}")), T0);
    }
    assert_eq!(l.stats(T0).used, 0, "random model names fill nothing");
    // Explicit limits work where the policy has none.
    let d = l.check(&free.limits(2, 10), T0).unwrap();
    assert_eq!((d.minute.limit, d.day.limit), (2, 10));
    // 64-byte accounts work.
    let max = "y".repeat(64);
    assert!(l.check(&dev(&max, "DeepSeek-V3.1"), T0).unwrap().allowed);
}

#[test]
fn enterprise_plans_and_live_policy_change_keep_counters() {
    let text = r#"
[models]
"m" = { region = "EU" }
[tiers.developer]
"m" = { rpm = 10, rpd = 100 }
[accounts."acme"]
"m" = { rpm = 50, rpd = 1000 }
"#;
    let p = Policy::parse(text, "p.toml").unwrap();
    let mut l = Limiter::new(&p, 64).unwrap();
    let ent = Request::new(b"acme", b"m", Tier::Enterprise);
    assert_eq!(l.check(&ent, T0).unwrap().minute.limit, 50);
    let r = Request::new(b"dev", b"m", Tier::Developer);
    for _ in 0..8 {
        assert!(l.check(&r, T0).unwrap().allowed);
    }
    // Lower the limit to 5: the 8 already counted stay counted.
    let lower = Policy::parse(&text.replace("rpm = 10", "rpm = 5"), "p2.toml").unwrap();
    l.set_policy(&lower).unwrap();
    let d = l.check(&r, T0).unwrap();
    assert!(!d.allowed);
    assert_eq!((d.minute.limit, d.minute.remaining), (5, 0));
    // Raise it to 20: room for 12 more, not 20.
    let higher = Policy::parse(&text.replace("rpm = 10", "rpm = 20"), "p3.toml").unwrap();
    l.set_policy(&higher).unwrap();
    let d = l.check(&r, T0).unwrap();
    assert_eq!(d.minute.remaining, 11);
    // A sibling handle shares the table under its own policy, and outlives
    // the handle it came from.
    let sibling = l.share(&lower).unwrap();
    drop(l);
    let d = sibling.check(&r, T0).unwrap();
    assert!(!d.allowed);
    assert_eq!((d.minute.limit, d.minute.remaining), (5, 0));
}

#[test]
fn a_policy_that_reorders_models_keeps_each_models_counters() {
    let a = Policy::parse(
        "[models]\n\"a\" = { region = \"EU\" }\n\"b\" = { region = \"EU\" }\n[tiers.developer]\n\"a\" = { rpm = 5, rpd = 50 }\n\"b\" = { rpm = 5, rpd = 50 }\n",
        "a",
    )
    .unwrap();
    // "0-new" sorts first and shifts the others' indexes.
    let b = Policy::parse(
        "[models]\n\"0-new\" = { region = \"EU\" }\n\"a\" = { region = \"EU\" }\n\"b\" = { region = \"EU\" }\n[tiers.developer]\n\"a\" = { rpm = 5, rpd = 50 }\n\"b\" = { rpm = 5, rpd = 50 }\n",
        "b",
    )
    .unwrap();
    let mut l = Limiter::new(&a, 64).unwrap();
    for _ in 0..5 {
        l.check(&Request::new(b"u", b"b", Tier::Developer), T0)
            .unwrap();
    }
    l.set_policy(&b).unwrap();
    assert!(
        !l.check(&Request::new(b"u", b"b", Tier::Developer), T0)
            .unwrap()
            .allowed
    );
    assert!(
        l.check(&Request::new(b"u", b"a", Tier::Developer), T0)
            .unwrap()
            .allowed
    );
}

#[test]
fn table_full_is_counted_and_stale_slots_are_reused() {
    let l = limiter(8);
    for i in 0..8 {
        assert!(
            l.check(&dev(&format!("a{i}"), "DeepSeek-V3.1"), T0)
                .unwrap()
                .allowed
        );
    }
    assert!(matches!(
        l.check(&dev("late", "DeepSeek-V3.1"), T0),
        Err(Error::TableFull)
    ));
    assert!(matches!(
        l.check(&dev("later", "DeepSeek-V3.1"), T0),
        Err(Error::TableFull)
    ));
    let s = l.stats(T0);
    assert_eq!((s.slots, s.used, s.table_full), (8, 8, 2));
    // Known keys still decide while the table is full.
    assert!(l.check(&dev("a3", "DeepSeek-V3.1"), T0).unwrap().allowed);
    // Next day every slot is stale: new keys get them.
    for i in 0..8 {
        assert!(
            l.check(&dev(&format!("b{i}"), "DeepSeek-V3.1"), T0 + DAY)
                .unwrap()
                .allowed
        );
    }
    assert_eq!(l.stats(T0 + DAY).used, 8);
    // And old keys start over on their own fresh day... once a slot frees.
    assert!(matches!(
        l.check(&dev("a0", "DeepSeek-V3.1"), T0 + DAY),
        Err(Error::TableFull)
    ));
}

#[test]
fn init_in_and_attach_share_counters() {
    let len = tollgate::region_size(128).unwrap();
    let mut mem = vec![0u64; len / 8 + 8];
    let base = mem.as_mut_ptr() as *mut u8;
    let aligned = unsafe { base.add(base.align_offset(64)) };
    let p = Policy::builtin();
    // SAFETY: `mem` outlives both limiters, is aligned and large enough.
    let a = unsafe { Limiter::init_in(&p, aligned, len) }.unwrap();
    let b = unsafe { Limiter::attach(&p, aligned, len) }.unwrap();
    let r = dev("shared", "DeepSeek-V3.1");
    for _ in 0..15 {
        assert!(a.check(&r, T0).unwrap().allowed);
        assert!(b.check(&r, T0).unwrap().allowed);
    }
    assert!(!a.check(&r, T0).unwrap().allowed);
    assert!(!b.check(&r, T0).unwrap().allowed);
    // Misaligned, short, and foreign memory are refused.
    let bad = unsafe { Limiter::attach(&p, aligned.add(8), len - 64) };
    assert!(matches!(
        bad,
        Err(Error::Region(tollgate::RegionError::Alignment))
    ));
    let short = unsafe { Limiter::attach(&p, aligned, len - 1) };
    assert!(matches!(
        short,
        Err(Error::Region(tollgate::RegionError::Size { .. }))
    ));
    drop((a, b));
    let mut zeros = vec![0u64; len / 8 + 8];
    let zb = zeros.as_mut_ptr() as *mut u8;
    let za = unsafe { zb.add(zb.align_offset(64)) };
    let foreign = unsafe { Limiter::attach(&p, za, len) };
    assert!(matches!(
        foreign,
        Err(Error::Region(tollgate::RegionError::Magic))
    ));
}

#[test]
fn file_region_survives_its_openers() {
    let dir = std::env::temp_dir().join(format!("tollgate-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("table");
    let _ = std::fs::remove_file(&path);
    let p = Policy::builtin();
    assert!(matches!(
        Limiter::open(&p, &path, 100, false),
        Err(Error::Io { .. })
    ));
    let r = dev("persist", "DeepSeek-V3.1");
    {
        let l = Limiter::open(&p, &path, 100, true).unwrap();
        for _ in 0..20 {
            assert!(l.check(&r, T0).unwrap().allowed);
        }
    }
    let l = Limiter::open(&p, &path, 0, false).unwrap();
    assert_eq!(l.check(&r, T0).unwrap().minute.remaining, 9);
    assert!(matches!(
        Limiter::open(&p, &path, 101, true),
        Err(Error::Region(tollgate::RegionError::SlotCount {
            found: 100,
            asked: 101
        }))
    ));
    // Truncated: a clear size error, not a SIGBUS.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(tollgate::region_size(100).unwrap() as u64 - 1)
        .unwrap();
    assert!(matches!(
        Limiter::open(&p, &path, 0, false),
        Err(Error::Region(tollgate::RegionError::Size { .. }))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A model resolved once is the same key as its name; handles are the
/// limiter's own, and go stale when its policy is replaced.
#[test]
fn model_handles_stand_for_their_names() {
    let mut l = Limiter::new(&Policy::builtin(), 64).unwrap();
    let h = l.model(b"DeepSeek-V3.1").unwrap();
    assert_eq!(l.model(b"no-such-model"), None);
    assert_eq!(tollgate::ModelHandle::from_raw(h.raw()), Some(h));
    assert_eq!(tollgate::ModelHandle::from_raw(0), None);
    let by_name = Request::new(b"acct", b"DeepSeek-V3.1", Tier::Developer);
    // The name is not read when a handle is given.
    let by_handle = Request::new(b"acct", b"ignored", Tier::Developer).handle(h);
    assert_eq!(l.check(&by_name, T0).unwrap().minute.remaining, 29);
    assert_eq!(l.check(&by_handle, T0).unwrap().minute.remaining, 28);
    let other = Limiter::new(&Policy::builtin(), 64).unwrap();
    assert!(matches!(
        other.check(&by_handle, T0),
        Err(Error::UnknownModel)
    ));
    let sibling = l.share(&Policy::builtin()).unwrap();
    assert!(matches!(
        sibling.check(&by_handle, T0),
        Err(Error::UnknownModel)
    ));
    l.set_policy(&Policy::builtin()).unwrap();
    assert!(matches!(l.check(&by_handle, T0), Err(Error::UnknownModel)));
    let h2 = l.model(b"DeepSeek-V3.1").unwrap();
    let r = Request::new(b"acct", b"", Tier::Developer).handle(h2);
    assert_eq!(l.check(&r, T0).unwrap().minute.remaining, 27);
}

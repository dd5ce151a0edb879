//! The `tollgate` operator command, run as a process: every subcommand, its
//! `--json` output parsed as JSON, and exit codes (0 ok, 1 failure, 2 usage).

use crate::procs;
#[cfg(feature = "redis")]
use crate::redis_servers;

use std::io::Write as _;
use std::process::Stdio;

use procs::*;
use serde_json::Value;

/// The built-in policy's own file: `--policy` with the numbers the
/// fixture's traffic was judged by.
const BUILTIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policy/infercom.toml");

fn json(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(o));
    serde_json::from_str(stdout(o).trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().expect("exited normally")
}

/// A region with known traffic: alice 25 on DeepSeek-V3.1, bob-0..4 20 each
/// on Qwen3-32B, all at NOW; carol 3 on gpt-oss-120b the day before.
fn fixture(dir: &Scratch) -> String {
    let f = dir.file("t.tg");
    let now = NOW.to_string();
    let day_before = (NOW - DAY).to_string();
    for args in [
        vec![
            "--account",
            "alice",
            "--count",
            "25",
            "--create-slots",
            "1000",
            "--now-ms",
            &now,
        ],
        vec![
            "--account",
            "bob",
            "--accounts",
            "5",
            "--count",
            "100",
            "--model",
            "Qwen3-32B",
            "--now-ms",
            &now,
        ],
        vec![
            "--account",
            "carol",
            "--count",
            "3",
            "--model",
            "gpt-oss-120b",
            "--now-ms",
            &day_before,
        ],
    ] {
        let mut a = vec![f.as_str()];
        a.extend(args);
        let o = run_worker(&a);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    f
}

const POLICY: &str = r#"
[models]
"m-one" = { region = "EU" }
"DeepSeek-V3.1" = { region = "EU" }
[tiers.free]
"m-one" = { rpm = 2, rpd = 20 }
[tiers.developer]
"m-one" = { rpm = 30, rpd = 1000 }
"DeepSeek-V3.1" = { rpm = 40, rpd = 2000 }
[tiers.enterprise]
"m-one" = { rpm = 300, rpd = 10000 }
[accounts."acme"]
"m-one" = { rpm = 600, rpd = 90000 }
"#;

#[test]
fn help_and_usage_errors() {
    let o = run(&["--help"]);
    assert_eq!(code(&o), 0);
    let help = stdout(&o);
    for cmd in [
        "demo",
        "stats",
        "top",
        "inspect",
        "reset",
        "resize",
        "verify",
        "policy check",
        "digest",
        "refusals",
        "--json",
        "--policy",
    ] {
        assert!(help.contains(cmd), "help lacks {cmd}");
    }
    assert!(
        !help.contains("hammer"),
        "no test worker in the shipped command"
    );
    assert_eq!(code(&run(&["stats", "--help"])), 0);
    // The worker of the multi-process tests is not a subcommand.
    assert_eq!(code(&run(&["__hammer", "x.tg", "--account", "a"])), 2);

    for (args, what) in [
        (vec![], "Usage"),
        (vec!["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (vec!["stats"], "<FILE>"),
        (vec!["stats", "a", "b"], "unexpected argument 'b'"),
        (
            vec!["stats", "a", "--bogus"],
            "unexpected argument '--bogus'",
        ),
        (vec!["top", "a", "--by", "week"], "--by"),
        (
            vec!["top", "a", "-n", "many"],
            "invalid value 'many' for '-n",
        ),
        (
            vec!["top", "a", "--tier", "gold"],
            "not free, developer or enterprise",
        ),
        (vec!["inspect", "a"], "--account"),
        (vec!["reset", "a"], "--account"),
        (vec!["resize", "a", "b"], "--slots"),
        (vec!["resize", "a", "b", "--slots", "0"], "--slots"),
        (vec!["policy"], "check"),
        (vec!["policy", "lint"], "unrecognized subcommand 'lint'"),
        (vec!["top", "a", "--by"], "a value is required for '--by"),
        (vec!["digest", "sk-secret"], "stdin"),
        (vec!["top", "a", "--tier", "free"], "--policy"),
    ] {
        let o = run(&args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(what), "{args:?}: {err}");
        assert!(
            err.contains("--help") || err.contains("help"),
            "{args:?} points at --help"
        );
    }
    // Options given twice: the last wins, as before.
    let o = run(&["policy", "check", BUILTIN, "--json", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn demo_tells_the_story_with_engine_numbers() {
    let o = run(&["demo"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.lines().count() <= 70, "{} lines", out.lines().count());
    assert!(!out.contains('\r'));
    // Request 1's headers: 2026-11-27T10:00:00Z, resets at 10:01 and midnight.
    assert!(out.contains("x-ratelimit-remaining-requests: 29\n"));
    assert!(out.contains("x-ratelimit-reset-requests: 1795773660\n"));
    assert!(out.contains("x-ratelimit-reset-requests-day: 1795824000\n"));
    assert!(out.contains("requests 1-30: all allowed"));
    assert!(out.contains("request 31 -> refused (limited_by=minute)"));
    assert!(out.contains("HTTP/1.1 429 Too Many Requests"));
    assert!(out.contains("retry-after: 30\n"));
    assert!(out.contains("a new minute: request 32 -> allowed"));
    // The day: 15000 in 500 minutes, then refused by the day in a fresh minute.
    assert!(out.contains("15000 allowed in 500 minutes"));
    assert!(out.contains("[18:20:00] request 15001 of the day -> refused (limited_by=day)"));
    assert!(out.contains("x-ratelimit-remaining-requests: 30\n"));
    assert!(out.contains("x-ratelimit-remaining-requests-day: 0\n"));
    assert!(out.contains("retry-after: 20400\n"), "5h40m to midnight");
    assert!(out.contains("HTTP/1.1 404 Not Found"));
    assert!(out.contains("no limit configured"));
    // Every body shown is valid JSON in the OpenAI shape.
    let bodies: Vec<Value> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[0]["error"]["type"], "rate_limit_exceeded");
    assert!(bodies[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("per day"));
    assert_eq!(bodies[2]["error"]["code"], "model_not_found");
}

#[test]
fn stats_reports_the_table() {
    let dir = Scratch::new("cli-stats");
    let f = fixture(&dir);
    let now = NOW.to_string();
    let o = run(&["stats", &f, "--now-ms", &now]);
    assert_eq!(code(&o), 0);
    let out = stdout(&o);
    assert!(out.contains("6 used today"), "{out}");
    assert!(out.contains("994 free"), "{out}");
    assert!(out.contains("144 per slot x 1000 slots"), "{out}");
    let j = json(&run(&["stats", &f, "--json", "--now-ms", &now]));
    assert_eq!(j["slots"], 1000);
    assert_eq!(j["used"], 6);
    assert_eq!(j["free"], 994);
    assert_eq!(j["table_full"], 0);
    assert_eq!(j["bytes_per_slot"], 144);
    assert_eq!(
        j["bytes"].as_u64().unwrap() as usize,
        tollgate::region_size(1000).unwrap()
    );
    assert_eq!(j["layout_version"], tollgate::LAYOUT_VERSION);
    assert_eq!(code(&run(&["stats", &dir.file("missing.tg")])), 1);
}

#[test]
#[cfg(feature = "redis")]
fn stats_and_top_read_a_table_of_leases() {
    use tollgate::lease::LeaseOptions;
    use tollgate::{LimiterOptions, Policy, Request, Tier};
    let server = redis_servers::Server::start();
    let dir = Scratch::new("cli-leases");
    let f = dir.file("l.tg");
    // Tomorrow, mid-minute: every window is open by Redis's clock.
    let now = (tollgate::now_ms() / 60_000 + 1_440) * 60_000 + 30_000;
    let mut l = LimiterOptions::new()
        .leases(true)
        .create(true)
        .open(&Policy::builtin(), &f, 64)
        .unwrap();
    l.connect(&server.url(), LeaseOptions::default()).unwrap();
    let r = Request::new(b"dora", b"DeepSeek-V3.1", Tier::Developer);
    for _ in 0..5 {
        assert!(l.check(&r, now).unwrap().allowed);
    }
    let held = {
        let s = l.lease_stats().unwrap();
        s.granted_units - 5
    };
    let now = now.to_string();
    let j = json(&run(&["stats", &f, "--json", "--now-ms", &now]));
    let bytes = tollgate::region_size_for_leases(64).unwrap() as u64;
    assert_eq!(j["bytes"].as_u64(), Some(bytes));
    assert_eq!(j["bytes_per_slot"], 208);
    assert_eq!(j["leases"]["keys_holding"], u64::from(held > 0));
    assert_eq!(j["leases"]["minute_units_held"], held);
    assert_eq!(j["leases"]["keys_down"], 0);
    let out = stdout(&run(&["stats", &f, "--now-ms", &now]));
    assert!(out.contains("one quota across hosts"), "{out}");
    assert!(out.contains("208 per slot x 64 slots"), "{out}");
    // top shows what the headers show: the global count less what is held.
    let j = json(&run(&["top", &f, "--json", "--now-ms", &now]));
    let top = j["top"].as_array().unwrap();
    assert_eq!(top[0]["account"], "dora");
    assert_eq!(top[0]["minute"], 5);
    assert_eq!(top[0]["day"], 5);
    // A local table has no lease section.
    let local = fixture(&dir);
    let j = json(&run(&["stats", &local, "--json"]));
    assert!(j.get("leases").is_none(), "{j}");
    l.disconnect();
}

#[test]
fn top_lists_the_busiest_keys() {
    let dir = Scratch::new("cli-top");
    let f = fixture(&dir);
    let now = NOW.to_string();
    // Without --policy: counts as stored, and no limits anyone did not name.
    let out = stdout(&run(&["top", &f, "--now-ms", &now]));
    let rows: Vec<&str> = out.lines().collect();
    assert!(
        rows[0].contains("counts only: --policy FILE adds the limits"),
        "{out}"
    );
    assert!(rows[1].starts_with("ACCOUNT"), "{out}");
    assert_eq!(
        rows[2].split_whitespace().collect::<Vec<_>>(),
        ["alice", "DeepSeek-V3.1", "25", "25"],
        "{out}"
    );
    assert!(!out.contains("/30"), "{out}");
    assert!(
        !out.contains("TOKENS"),
        "no token columns without tokens: {out}"
    );
    assert!(!out.contains("carol"), "yesterday's counts are not today's");
    let j = json(&run(&[
        "top", &f, "--by", "day", "-n", "3", "--json", "--now-ms", &now,
    ]));
    assert_eq!(j["keys"], 6);
    assert_eq!(j["policy"], Value::Null);
    let top = j["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(top[0]["account"], "alice");
    assert_eq!(top[0]["model"], "DeepSeek-V3.1");
    assert_eq!(
        (top[0]["day"].as_u64(), top[0]["rpd"].as_u64()),
        (Some(25), None)
    );
    assert_eq!(
        (top[1]["account"].as_str(), top[1]["minute"].as_u64()),
        (Some("bob-0"), Some(20))
    );
    // With the policy the proxies run: its limits, and its name.
    let out = stdout(&run(&["top", &f, "--now-ms", &now, "--policy", BUILTIN]));
    let rows: Vec<&str> = out.lines().collect();
    assert!(
        rows[0].contains("limits: developer tier of ") && rows[0].contains("infercom.toml"),
        "{out}"
    );
    assert!(
        rows[2].starts_with("alice") && rows[2].contains("25/30") && rows[2].contains("25/15000"),
        "{out}"
    );
    // A minute later the minute counts are gone, the day counts stay.
    let later = (NOW + 60_000).to_string();
    let j = json(&run(&["top", &f, "--json", "--now-ms", &later]));
    assert_eq!(j["top"][0]["minute"], 0);
    assert_eq!(j["top"][0]["day"], 25);
    // Limits come from the chosen policy and tier.
    let p = dir.path("p.toml");
    std::fs::write(&p, POLICY).unwrap();
    let j = json(&run(&[
        "top",
        &f,
        "--json",
        "--now-ms",
        &now,
        "--policy",
        p.to_str().unwrap(),
    ]));
    assert!(j["policy"].as_str().unwrap().ends_with("p.toml"));
    assert_eq!(
        (j["top"][0]["rpm"].as_u64(), j["top"][0]["rpd"].as_u64()),
        (Some(40), Some(2000))
    );
    assert_eq!(
        j["top"][1]["rpm"],
        Value::Null,
        "Qwen3-32B is not in that policy"
    );
    let j = json(&run(&[
        "top", &f, "--json", "--now-ms", &now, "--tier", "free", "--policy", BUILTIN,
    ]));
    assert_eq!(
        j["top"][0]["rpm"],
        Value::Null,
        "the built-in policy has no free tier"
    );
}

#[test]
fn inspect_peeks_without_counting() {
    let dir = Scratch::new("cli-inspect");
    let f = fixture(&dir);
    let now = NOW.to_string();
    let args = [
        "inspect",
        &f,
        "--account",
        "alice",
        "--model",
        "DeepSeek-V3.1",
        "--now-ms",
        &now,
        "--policy",
        BUILTIN,
    ];
    let out = stdout(&run(&args));
    assert!(out.contains("minute  25 of 30 used, 5 left"), "{out}");
    assert!(
        out.contains("policy  ") && out.contains("infercom.toml"),
        "{out}"
    );
    assert!(out.contains("x-ratelimit-remaining-requests: 5\n"), "{out}");
    let mut jargs = args.to_vec();
    jargs.push("--json");
    for _ in 0..3 {
        let j = json(&run(&jargs));
        let m = &j["models"][0];
        assert_eq!(
            (m["minute_used"].as_u64(), m["day_used"].as_u64()),
            (Some(25), Some(25)),
            "peeks count nothing"
        );
        assert_eq!(m["allowed"], true);
        assert_eq!(m["headers"]["x-ratelimit-remaining-requests-day"], 14975);
        assert_eq!(m["headers"]["x-ratelimit-reset-requests"], 1_795_773_660u64);
        assert!(m["headers"].get("retry-after").is_none());
    }
    // Fill the minute: now the peek shows the refusal and its retry-after.
    let o = run_worker(&[&f, "--account", "alice", "--count", "10", "--now-ms", &now]);
    assert_eq!(tally(&o).0, 5);
    let t = (NOW + 15_000).to_string();
    let j = json(&run(&[
        "inspect",
        &f,
        "--account",
        "alice",
        "--model",
        "DeepSeek-V3.1",
        "--json",
        "--now-ms",
        &t,
        "--policy",
        BUILTIN,
    ]));
    let m = &j["models"][0];
    assert_eq!(m["minute_used"], 30);
    assert_eq!(m["allowed"], false);
    assert_eq!(m["limited_by"], "minute");
    assert_eq!(m["retry_after"], 45);
    assert_eq!(m["headers"]["retry-after"], 45);
    // Without --model: every model of the policy.
    let j = json(&run(&[
        "inspect",
        &f,
        "--account",
        "bob-3",
        "--json",
        "--now-ms",
        &now,
        "--policy",
        BUILTIN,
    ]));
    let models = j["models"].as_array().unwrap();
    assert_eq!(models.len(), 12);
    let qwen = models.iter().find(|m| m["model"] == "Qwen3-32B").unwrap();
    assert_eq!(qwen["day_used"], 20);
    assert_eq!(qwen["counted"], true);
    let other = models
        .iter()
        .find(|m| m["model"] == "gpt-oss-120b")
        .unwrap();
    assert_eq!(
        (other["counted"].as_bool(), other["allowed"].as_bool()),
        (Some(false), Some(true))
    );
    // Without --policy: the models the account has counts on, counts only.
    let j = json(&run(&[
        "inspect",
        &f,
        "--account",
        "bob-3",
        "--json",
        "--now-ms",
        &now,
    ]));
    let models = j["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{models:?}");
    assert_eq!(models[0]["model"], "Qwen3-32B");
    assert!(models.iter().all(|m| m.get("allowed").is_none()));
    let out = stdout(&run(&[
        "inspect",
        &f,
        "--account",
        "bob-3",
        "--now-ms",
        &now,
    ]));
    assert!(out.contains("add --policy FILE"), "{out}");
    assert!(
        out.contains("model   Qwen3-32B\nminute  20 counted this UTC minute\n"),
        "{out}"
    );
    // Errors.
    let o = run(&[
        "inspect",
        &f,
        "--account",
        "alice",
        "--model",
        "Qwen3-32",
        "--policy",
        BUILTIN,
    ]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("unknown model `Qwen3-32`"), "{err}");
    assert!(err.contains("closest: Qwen3-32B"), "{err}");
    // No policy to judge it by: a model nobody counted has no counts.
    let out = stdout(&run(&[
        "inspect",
        &f,
        "--account",
        "alice",
        "--model",
        "gpt-5",
    ]));
    assert!(
        out.contains("no counts for this key: it has no slot on gpt-5"),
        "{out}"
    );
    let long = "x".repeat(65);
    assert_eq!(code(&run(&["inspect", &f, "--account", &long])), 1);
    // Enterprise plans from a policy file.
    let p = dir.path("p.toml");
    std::fs::write(&p, POLICY).unwrap();
    let j = json(&run(&[
        "inspect",
        &f,
        "--account",
        "acme",
        "--model",
        "m-one",
        "--tier",
        "enterprise",
        "--json",
        "--policy",
        p.to_str().unwrap(),
    ]));
    assert_eq!(j["models"][0]["headers"]["x-ratelimit-limit-requests"], 600);
    let j = json(&run(&[
        "inspect",
        &f,
        "--account",
        "alice",
        "--model",
        "DeepSeek-V3.1",
        "--tier",
        "free",
        "--json",
        "--policy",
        BUILTIN,
    ]));
    assert!(j["models"][0]["error"]
        .as_str()
        .unwrap()
        .contains("no limit configured"));
}

#[test]
fn reset_zeroes_an_account() {
    let dir = Scratch::new("cli-reset");
    let f = fixture(&dir);
    let now = NOW.to_string();
    let j = json(&run(&["reset", &f, "--account", "alice", "--json"]));
    assert_eq!(j["reset"], 1);
    let j = json(&run(&[
        "inspect",
        &f,
        "--account",
        "alice",
        "--model",
        "DeepSeek-V3.1",
        "--json",
        "--now-ms",
        &now,
    ]));
    assert_eq!(j["models"][0]["day_used"], 0);
    assert_eq!(j["models"][0]["counted"], true, "reset keeps the binding");
    let out = stdout(&run(&[
        "reset",
        &f,
        "--account",
        "bob-2",
        "--model",
        "Qwen3-32B",
    ]));
    assert!(out.contains("1 key zeroed"), "{out}");
    let out = stdout(&run(&["reset", &f, "--account", "nobody"]));
    assert!(out.contains("nothing to reset"), "{out}");
    let j = json(&run(&["top", &f, "--json", "--now-ms", &now]));
    assert_eq!(j["keys"], 4, "alice and bob-2 have no counts left");
    assert_eq!(code(&run(&["reset", &f, "--account", ""])), 1);
}

#[test]
fn resize_carries_counters() {
    let dir = Scratch::new("cli-resize");
    let f = fixture(&dir);
    let g = dir.file("big.tg");
    let now = NOW.to_string();
    let j = json(&run(&[
        "resize", &f, &g, "--slots", "5000", "--json", "--now-ms", &now,
    ]));
    assert_eq!(j["slots"], 5000);
    assert_eq!(j["carried"], 6);
    assert_eq!(j["stale"], 1);
    assert_eq!(j["unnamed"], 0);
    let j = json(&run(&[
        "top", &g, "--by", "day", "--json", "--now-ms", &now,
    ]));
    assert_eq!(j["keys"], 6);
    assert_eq!(j["top"][0]["account"], "alice");
    assert_eq!(j["top"][0]["day"], 25);
    // The limit carries on in the new table: alice has 5 left this minute.
    let o = run_worker(&[&g, "--account", "alice", "--count", "10", "--now-ms", &now]);
    assert_eq!(tally(&o).0, 5);
    assert_eq!(code(&run(&["verify", &g, "--now-ms", &now])), 0);
    // Human output, and the failures.
    let h = dir.file("small.tg");
    let out = stdout(&run(&["resize", &f, &h, "--slots", "64", "--now-ms", &now]));
    assert!(out.contains("carried 6 live keys"), "{out}");
    let o = run(&["resize", &f, &g, "--slots", "64"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    let o = run(&[
        "resize",
        &f,
        &dir.file("tiny.tg"),
        "--slots",
        "2",
        "--now-ms",
        &now,
    ]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("too small"), "{}", stderr(&o));
    assert!(!dir.path("tiny.tg").exists());
    assert_eq!(
        code(&run(&[
            "resize",
            &dir.file("none.tg"),
            &dir.file("x.tg"),
            "--slots",
            "64"
        ])),
        1
    );
}

#[test]
fn verify_reports_damage_with_exit_1() {
    let dir = Scratch::new("cli-verify");
    let f = fixture(&dir);
    let now = NOW.to_string();
    let o = run(&["verify", &f, "--now-ms", &now]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains(": OK"), "{}", stdout(&o));
    let j = json(&run(&["verify", &f, "--json", "--now-ms", &now]));
    assert_eq!(j["ok"], true);
    assert_eq!(
        (j["bound"].as_u64(), j["live"].as_u64()),
        (Some(7), Some(6))
    );
    assert_eq!(j["never_used"], 993);
    assert_eq!(j["problems"].as_array().unwrap().len(), 0);

    // Copy one bound slot (key and counts) onto a never-used one: a
    // duplicate key, which the protocol must never produce.
    let mut bytes = std::fs::read(&f).unwrap();
    let base = tollgate::region_size(1).unwrap() - tollgate::BYTES_PER_SLOT;
    let slot = |i: usize| base + i * 32;
    let bound = (0..1000)
        .find(|&i| bytes[slot(i)..slot(i) + 16].iter().any(|&b| b != 0))
        .unwrap();
    let free = (0..1000)
        .find(|&i| bytes[slot(i)..slot(i) + 32].iter().all(|&b| b == 0))
        .unwrap();
    let word: Vec<u8> = bytes[slot(bound)..slot(bound) + 32].to_vec();
    bytes[slot(free)..slot(free) + 32].copy_from_slice(&word);
    std::fs::write(&f, &bytes).unwrap();
    let o = run(&["verify", &f, "--now-ms", &now]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("PROBLEM"), "{}", stdout(&o));
    let o = run(&["verify", &f, "--json", "--now-ms", &now]);
    assert_eq!(code(&o), 1);
    let j: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(j["ok"], false);
    let problems = j["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["message"].as_str().unwrap().contains("duplicate")),
        "{problems:?}"
    );
}

#[test]
fn policy_check_validates_and_tabulates() {
    let builtin = concat!(env!("CARGO_MANIFEST_DIR"), "/policy/infercom.toml");
    let o = run(&["policy", "check", builtin]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("OK, 12 models, 0 enterprise accounts"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("DeepSeek-V3.1 ") && l.contains("30/15000")),
        "{out}"
    );
    let j = json(&run(&["policy", "check", builtin, "--json"]));
    assert_eq!(j["models"].as_array().unwrap().len(), 12);
    assert_eq!(j["models"][0]["free"], Value::Null);

    let dir = Scratch::new("cli-policy");
    let p = dir.path("p.toml");
    std::fs::write(&p, POLICY).unwrap();
    let out = stdout(&run(&["policy", "check", p.to_str().unwrap()]));
    assert!(out.contains("1 enterprise account"), "{out}");
    assert!(out.contains("acme: m-one 600/90000"), "{out}");
    let j = json(&run(&["policy", "check", p.to_str().unwrap(), "--json"]));
    assert_eq!(j["accounts"][0]["account"], "acme");
    assert_eq!(j["accounts"][0]["plan"][0]["rpd"], 90000);
    let m_one = j["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "m-one")
        .unwrap();
    assert_eq!(m_one["free"]["rpm"], 2);

    let bad = dir.path("bad.toml");
    std::fs::write(
        &bad,
        "[models]\n\"m\" = { region = \"EU\" }\n[tiers.developer]\n\"m\" = { rpm = 0, rpd = 5 }\n",
    )
    .unwrap();
    let o = run(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("bad.toml:4: tiers.developer.m.rpm: "), "{err}");
    let o = run(&["policy", "check", dir.file("none.toml").as_str()]);
    assert_eq!(code(&o), 1);
    // A bad --policy on any command is a failure, not a usage error.
    let o = run(&["top", "x.tg", "--policy", bad.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
}

/// The file's bytes, hashed: what a read-only command must leave alone.
fn checksum(path: &str) -> (usize, u64) {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).unwrap();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    (bytes.len(), h.finish())
}

#[test]
fn read_only_commands_change_no_byte() {
    let dir = Scratch::new("cli-ro");
    let f = dir.file("t.tg");
    let p = dir.path("p.toml");
    std::fs::write(&p, POLICY).unwrap();
    let p = p.to_str().unwrap();
    let now = NOW.to_string();
    // Proxies running a two-model policy made this table.
    for args in [
        vec![
            "--account",
            "alice",
            "--count",
            "5",
            "--create-slots",
            "256",
        ],
        vec!["--account", "bob", "--model", "m-one", "--count", "3"],
    ] {
        let mut a = vec![f.as_str(), "--policy", p, "--now-ms", &now];
        a.extend(args);
        assert!(run_worker(&a).status.success());
    }
    let before = checksum(&f);
    let bigger = dir.file("bigger.tg");
    let commands: Vec<Vec<&str>> = vec![
        vec!["stats", &f],
        vec!["stats", &f, "--json"],
        vec!["top", &f],
        vec!["top", &f, "--json", "--policy", BUILTIN],
        vec!["inspect", &f, "--account", "alice"],
        vec!["inspect", &f, "--account", "alice", "--json"],
        vec!["inspect", &f, "--account", "alice", "--policy", BUILTIN],
        vec!["inspect", &f, "--account", "nobody", "--policy", BUILTIN],
        vec![
            "inspect",
            &f,
            "--account",
            "carol",
            "--model",
            "Qwen3-32B",
            "--policy",
            BUILTIN,
            "--json",
        ],
        vec!["verify", &f],
        vec!["verify", &f, "--json"],
        vec!["refusals", &f],
        vec!["refusals", &f, "--json", "--account", "alice"],
        // resize only reads the table it copies.
        vec!["resize", &f, &bigger, "--slots", "512", "--now-ms", &now],
    ];
    for args in &commands {
        let o = run(args);
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
        assert_eq!(checksum(&f), before, "{args:?} changed the table");
    }
    let out = stdout(&run(&["stats", &f]));
    assert!(
        out.contains("models      2 registered: DeepSeek-V3.1, m-one"),
        "{out}"
    );
    assert_eq!(
        json(&run(&["stats", &f, "--json"]))["models"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A write command still writes.
    let o = run(&["reset", &f, "--account", "alice", "--policy", p]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_ne!(checksum(&f), before);
}

#[test]
fn counts_are_shown_as_stored_and_limits_only_from_a_named_policy() {
    let dir = Scratch::new("cli-counts");
    let f = dir.file("t.tg");
    let now = NOW.to_string();
    // The application runs DeepSeek-V3.1 at rpm = 35 (built-in: 30).
    let o = run_worker(&[
        &f,
        "--account",
        "app35",
        "--rpm",
        "35",
        "--rpd",
        "1000",
        "--count",
        "31",
        "--create-slots",
        "256",
        "--now-ms",
        &now,
    ]);
    assert_eq!(tally(&o).0, 31);
    let peek = [
        "inspect",
        &f,
        "--account",
        "app35",
        "--model",
        "DeepSeek-V3.1",
        "--now-ms",
        &now,
    ];
    let with = |extra: &[&str]| {
        let mut a = peek.to_vec();
        a.extend_from_slice(extra);
        run(&a)
    };
    // No policy named: the counts, and no limit or verdict made up.
    let out = stdout(&with(&[]));
    assert!(out.contains("minute  31 counted this UTC minute"), "{out}");
    assert!(out.contains("day     31 counted this UTC day"), "{out}");
    assert!(!out.contains("of 30") && !out.contains("refused"), "{out}");
    assert!(out.contains("add --policy FILE"), "{out}");
    let j = json(&with(&["--json"]));
    assert_eq!(j["policy"], Value::Null);
    let m = &j["models"][0];
    assert_eq!(
        (m["minute_used"].as_u64(), m["day_used"].as_u64()),
        (Some(31), Some(31))
    );
    assert!(
        m.get("allowed").is_none() && m.get("headers").is_none(),
        "{m}"
    );
    // The application's own policy: 31 of 35, allowed, and named.
    let p35 = dir.path("app35.toml");
    std::fs::write(
        &p35,
        "[models]\n\"DeepSeek-V3.1\" = { region = \"EU\" }\n[tiers.developer]\n\"DeepSeek-V3.1\" = { rpm = 35, rpd = 1000 }\n",
    )
    .unwrap();
    let p35 = p35.to_str().unwrap();
    let out = stdout(&with(&["--policy", p35]));
    assert!(out.contains(&format!("policy  {p35}\n")), "{out}");
    assert!(out.contains("minute  31 of 35 used, 4 left"), "{out}");
    assert!(out.contains("day     31 of 1000 used, 969 left"), "{out}");
    assert!(out.contains("next request: allowed"), "{out}");
    let j = json(&with(&["--policy", p35, "--json"]));
    assert_eq!(j["policy"], p35);
    let m = &j["models"][0];
    assert_eq!(
        (m["minute_used"].as_u64(), m["rpm"].as_u64()),
        (Some(31), Some(35))
    );
    assert_eq!(m["allowed"], true);
    assert_eq!(m["headers"]["x-ratelimit-remaining-requests"], 4);
    // Judged by the built-in table instead: refused, and still 31, not 30.
    let out = stdout(&with(&["--policy", BUILTIN]));
    assert!(out.contains("minute  31 of 30 used, 0 left"), "{out}");
    assert!(
        out.contains("next request: refused (limited_by=minute"),
        "{out}"
    );
}

#[test]
fn an_unseen_account_is_not_an_idle_one() {
    let dir = Scratch::new("cli-unseen");
    let f = fixture(&dir);
    let now = NOW.to_string();
    // A typo: no counts, and the accounts it was probably meant to be.
    let o = run(&["inspect", &f, "--account", "alcie", "--now-ms", &now]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("no counts for this key: it has no slot on any model"),
        "{out}"
    );
    assert!(
        out.contains("closest accounts with counts: alice\n"),
        "{out}"
    );
    let j = json(&run(&[
        "inspect",
        &f,
        "--account",
        "alcie",
        "--json",
        "--now-ms",
        &now,
    ]));
    assert_eq!(j["counted"], false);
    assert_eq!(j["suggestions"], serde_json::json!(["alice"]));
    let j = json(&run(&[
        "inspect",
        &f,
        "--account",
        "bob-9",
        "--json",
        "--now-ms",
        &now,
    ]));
    assert_eq!(
        j["suggestions"],
        serde_json::json!(["bob-0", "bob-1", "bob-2"])
    );
    let out = stdout(&run(&[
        "inspect",
        &f,
        "--account",
        "zzzzzzzz",
        "--now-ms",
        &now,
    ]));
    assert!(
        out.contains("no counts for this key") && !out.contains("closest"),
        "{out}"
    );
    // With a model and a policy: no counts, and what its first request gets.
    let out = stdout(&run(&[
        "inspect",
        &f,
        "--account",
        "alcie",
        "--model",
        MODEL,
        "--policy",
        BUILTIN,
        "--now-ms",
        &now,
    ]));
    assert!(out.contains("it has no slot on DeepSeek-V3.1"), "{out}");
    assert!(
        out.contains("x-ratelimit-remaining-requests: 30\n"),
        "{out}"
    );
    // carol counted yesterday: idle today, but seen.
    let out = stdout(&run(&[
        "inspect",
        &f,
        "--account",
        "carol",
        "--now-ms",
        &now,
    ]));
    assert!(!out.contains("no counts for this key"), "{out}");
    assert!(
        out.contains("model   gpt-oss-120b\nminute  0 counted"),
        "{out}"
    );
    let j = json(&run(&[
        "inspect",
        &f,
        "--account",
        "carol",
        "--json",
        "--now-ms",
        &now,
    ]));
    assert_eq!(j["counted"], true);
    assert_eq!(j["models"][0]["day_used"], 0);
}

/// `tollgate digest ARGS` with `input` on stdin.
fn digest(input: &[u8], args: &[&str]) -> std::process::Output {
    let mut c = tollgate(&[&["digest"], args].concat())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses its arguments reads nothing: ignore EPIPE.
    let _ = c.stdin.take().unwrap().write_all(input);
    c.wait_with_output().unwrap()
}

/// What the Python middleware's bearer_token_digest stores for `key`.
fn python_digest(key: &[u8]) -> String {
    let mut c = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib, sys\ntoken = sys.stdin.buffer.read().decode('latin-1')\nprint(hashlib.blake2b(token.encode('latin-1'), digest_size=16).hexdigest())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    c.stdin.take().unwrap().write_all(key).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success());
    stdout(&o).trim().to_string()
}

#[test]
fn digest_is_the_middlewares_account_id_read_from_stdin() {
    let long = "k".repeat(300);
    let keys: [&[u8]; 5] = [
        b"sk-proj-abc123",
        b"x",
        long.as_bytes(),
        b"key with spaces\tand tab",
        b"caf\xe9-latin-1",
    ];
    for key in keys {
        let want = python_digest(key);
        assert_eq!(want.len(), 32);
        // One trailing newline (as `echo` adds) is not part of the key.
        for input in [key.to_vec(), [key, b"\n"].concat()] {
            let o = digest(&input, &[]);
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            assert_eq!(stdout(&o), format!("{want}\n"), "{key:?}");
        }
        let j = json(&digest(key, &["--json"]));
        assert_eq!(j["digest"], want.as_str());
    }
    // Only one newline is stripped: the rest is the key's.
    let o = digest(b"sk-1\n\n", &[]);
    assert_eq!(stdout(&o).trim(), python_digest(b"sk-1\n"));
    // Nothing on stdin is a failure; a key in argv is refused unread.
    let o = digest(b"", &[]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no key on stdin"), "{}", stderr(&o));
    let o = digest(b"sk-1\n", &["sk-secret-in-argv"]);
    assert_eq!(code(&o), 2);
    assert!(stdout(&o).is_empty());
    assert!(!stderr(&o).contains("sk-secret"), "{}", stderr(&o));
    assert!(stderr(&o).contains("stdin"), "{}", stderr(&o));
}

#[test]
fn client_names_are_escaped_everywhere() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let dir = Scratch::new("cli-escape");
    let f = dir.file("t.tg");
    let now = NOW.to_string();
    let evil = "evil\x1b[2J\nx";
    let shown = "evil\\x1b[2J\\x0ax";
    for (acct, count) in [
        (OsStr::new(evil), "3"),
        (OsStr::from_bytes(b"bad\xff"), "2"),
        (OsStr::new("rtl\u{202e}gpj"), "1"),
    ] {
        let o = worker(&[])
            .args([OsStr::new(&f), OsStr::new("--account"), acct])
            .args(["--count", count, "--create-slots", "64", "--now-ms", &now])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let clean = |o: &std::process::Output| {
        assert_eq!(code(o), 0, "{}", stderr(o));
        assert!(!o.stdout.contains(&0x1b), "raw ESC reached the terminal");
        assert!(
            !o.stdout.contains(&0xff),
            "raw non-UTF-8 byte reached the terminal"
        );
        stdout(o)
    };
    let out = clean(&run(&["top", &f, "--now-ms", &now]));
    assert_eq!(out.lines().count(), 5, "one line per key: {out}");
    assert!(out.contains(shown), "{out}");
    assert!(out.contains("bad\\xff "), "{out}");
    assert!(out.contains("rtl\\u{202e}gpj "), "{out}");
    let j: Value =
        serde_json::from_str(&clean(&run(&["top", &f, "--json", "--now-ms", &now]))).unwrap();
    let accounts: Vec<&str> = j["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["account"].as_str().unwrap())
        .collect();
    assert_eq!(accounts, [shown, "bad\\xff", "rtl\u{202e}gpj"]);
    // inspect, reset: the same escaping, text and JSON.
    let out = clean(&run(&["inspect", &f, "--account", evil, "--now-ms", &now]));
    assert!(out.starts_with(&format!("account \"{shown}\" at")), "{out}");
    let out = clean(&run(&[
        "inspect",
        &f,
        "--account",
        "evil\x1b[2J",
        "--now-ms",
        &now,
    ]));
    assert!(
        out.contains(&format!("closest accounts with counts: {shown}")),
        "{out}"
    );
    let j: Value = serde_json::from_str(&clean(&run(&[
        "inspect",
        &f,
        "--account",
        evil,
        "--json",
        "--now-ms",
        &now,
    ])))
    .unwrap();
    assert_eq!(j["account"], shown);
    assert_eq!(j["models"][0]["minute_used"], 3);
    let out = clean(&run(&["reset", &f, "--account", evil]));
    assert!(out.contains(shown), "{out}");
}

#[test]
fn refusals_show_when_which_window_and_the_counts() {
    let dir = Scratch::new("cli-refusals");
    let f = dir.file("t.tg");
    let o = run(&["refusals", &f]);
    assert_eq!(code(&o), 1, "no table, no refusals: {}", stderr(&o));
    // alice runs over the minute at 10:00; bob over his day at 10:02; an
    // escape-laden account over its minute at 10:03.
    let evil = "evil\x1b[2J\nx";
    for (acct, extra, at) in [
        ("alice", vec!["--count", "35", "--create-slots", "256"], NOW),
        (
            "bob",
            vec!["--count", "5", "--rpm", "100", "--rpd", "3"],
            NOW + 120_000,
        ),
        (evil, vec!["--count", "31"], NOW + 180_000),
    ] {
        let at = at.to_string();
        let mut a = vec![f.as_str(), "--account", acct, "--now-ms", &at];
        a.extend(extra);
        assert!(run_worker(&a).status.success());
    }
    let o = run(&["refusals", &f]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!o.stdout.contains(&0x1b), "names are escaped");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("3 refusals recorded in"), "{out}");
    assert!(lines[1].starts_with("TIME (UTC)"), "{out}");
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        [
            "2026-11-27T10:00:00Z",
            "alice",
            MODEL,
            "minute",
            "30/30",
            "30/15000"
        ],
        "{out}"
    );
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["2026-11-27T10:02:00Z", "bob", MODEL, "day", "3/100", "3/3"],
        "{out}"
    );
    assert!(lines[4].contains("evil\\x1b[2J\\x0ax"), "{out}");
    assert!(
        !out.contains("RESERVE"),
        "no token column without a refusal on tokens: {out}"
    );
    let j = json(&run(&["refusals", &f, "--json", "--account", "bob"]));
    assert_eq!(j["recorded"], 3);
    let r = j["refusals"].as_array().unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["account"], "bob");
    assert_eq!(r[0]["at"], "2026-11-27T10:02:00Z");
    assert_eq!(r[0]["at_ms"], NOW + 120_000);
    assert_eq!(r[0]["limited_by"], "day");
    assert_eq!(r[0]["unit"], "requests");
    assert_eq!(r[0]["reserved"], 0);
    assert_eq!(
        (r[0]["day_count"].as_u64(), r[0]["day_limit"].as_u64()),
        (Some(3), Some(3))
    );
    let j = json(&run(&["refusals", &f, "--json", "--account", evil]));
    assert_eq!(j["refusals"][0]["account"], "evil\\x1b[2J\\x0ax");
    assert_eq!(j["refusals"][0]["minute_count"], 30);
    let out = stdout(&run(&["refusals", &f, "--account", "carol"]));
    assert!(
        out.contains("no refusals recorded for account \"carol\""),
        "{out}"
    );
}

/// Token windows in the operator views: `top` adds token columns (and
/// sorts by them), `stats` sums the table's tokens, `refusals` shows a
/// refusal on tokens in tokens against tpm/tpd, with its reservation.
#[test]
fn operator_views_show_token_windows() {
    let dir = Scratch::new("cli-tokens");
    let f = dir.file("t.tg");
    // alice: requests only; bob: 3 requests of 60 000 tokens; carol: 2 of
    // 400 fill her tpm of 1000 (with 200 left), then 10 more are refused on
    // tokens, at 10:00:05.
    for (acct, extra, at) in [
        ("alice", vec!["--count", "25", "--create-slots", "256"], NOW),
        (
            "bob",
            vec![
                "--count", "3", "--tokens", "60000", "--tpm", "200000", "--tpd", "5000000",
            ],
            NOW,
        ),
        (
            "carol",
            vec![
                "--count", "12", "--tokens", "400", "--tpm", "1000", "--tpd", "100000",
            ],
            NOW + 5_000,
        ),
    ] {
        let at = at.to_string();
        let mut a = vec![f.as_str(), "--account", acct, "--now-ms", &at];
        a.extend(extra);
        assert!(run_worker(&a).status.success());
    }
    let now = (NOW + 6_000).to_string();
    let out = stdout(&run(&["top", &f, "--now-ms", &now]));
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[1],
        ["ACCOUNT", "MODEL", "MINUTE", "DAY", "TOKENS", "MINUTE", "TOKENS", "DAY"],
        "{out}"
    );
    assert_eq!(rows[2], ["alice", MODEL, "25", "25", "0", "0"], "{out}");
    assert_eq!(
        rows[3],
        ["bob", MODEL, "3", "3", "180000", "180000"],
        "{out}"
    );
    assert_eq!(rows[4], ["carol", MODEL, "2", "2", "800", "800"], "{out}");
    let out = stdout(&run(&["top", &f, "--now-ms", &now, "--by", "tokens-day"]));
    assert!(
        out.lines().next().unwrap().contains("by tokens-day"),
        "{out}"
    );
    let first: Vec<&str> = out.lines().nth(2).unwrap().split_whitespace().collect();
    assert_eq!(first[0], "bob", "{out}");
    let j = json(&run(&[
        "top",
        &f,
        "--json",
        "--now-ms",
        &now,
        "--by",
        "tokens-minute",
    ]));
    assert_eq!(j["by"], "tokens-minute");
    let top = j["top"].as_array().unwrap();
    assert_eq!(
        (top[0]["account"].as_str(), top[0]["tokens_minute"].as_u64()),
        (Some("bob"), Some(180_000))
    );
    assert_eq!(top[1]["tokens_day"], 800);
    assert_eq!(top[2]["tokens_day"], 0);
    assert_eq!(top[0]["tpm"], Value::Null, "limits need --policy");
    // A minute later the token minute is gone, the day stays.
    let later = (NOW + 66_000).to_string();
    let j = json(&run(&[
        "top",
        &f,
        "--json",
        "--now-ms",
        &later,
        "--by",
        "tokens-day",
    ]));
    assert_eq!(
        (
            j["top"][0]["tokens_minute"].as_u64(),
            j["top"][0]["tokens_day"].as_u64()
        ),
        (Some(0), Some(180_000))
    );

    let out = stdout(&run(&["stats", &f, "--now-ms", &now]));
    assert!(
        out.contains("tokens      2 keys with tokens today: 180800 charged this UTC minute, 180800 this UTC day"),
        "{out}"
    );
    let j = json(&run(&["stats", &f, "--json", "--now-ms", &now]));
    assert_eq!(j["tokens"]["keys"], 2);
    assert_eq!(j["tokens"]["minute"], 180_800);
    assert_eq!(j["tokens"]["day"], 180_800);
    let j = json(&run(&["stats", &f, "--json", "--now-ms", &later]));
    assert_eq!(
        (j["tokens"]["minute"].as_u64(), j["tokens"]["day"].as_u64()),
        (Some(0), Some(180_800))
    );

    let out = stdout(&run(&["refusals", &f]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("1 refusal recorded in"), "{out}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["TIME", "(UTC)", "ACCOUNT", "MODEL", "WINDOW", "MINUTE", "DAY", "RESERVE"],
        "{out}"
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        [
            "2026-11-27T10:00:05Z",
            "carol",
            MODEL,
            "tokens_minute",
            "800/1000",
            "tokens",
            "800/100000",
            "tokens",
            "400"
        ],
        "{out}"
    );
    assert!(
        lines[4].starts_with("on tokens (tokens_minute, tokens_day)"),
        "{out}"
    );
    let j = json(&run(&["refusals", &f, "--json"]));
    let r = &j["refusals"][0];
    assert_eq!(r["limited_by"], "tokens_minute");
    assert_eq!(r["unit"], "tokens");
    assert_eq!(
        (r["minute_count"].as_u64(), r["minute_limit"].as_u64()),
        (Some(800), Some(1000))
    );
    assert_eq!(
        (r["day_count"].as_u64(), r["day_limit"].as_u64()),
        (Some(800), Some(100_000))
    );
    assert_eq!(r["reserved"], 400);
}

#[test]
fn stats_shows_clock_faults_and_table_full() {
    let dir = Scratch::new("cli-clock");
    let f = dir.file("t.tg");
    // A host whose clock ran two hours fast counted first; the corrected
    // clock then meets counts dated in its future.
    let fast = (NOW + 2 * 3_600_000).to_string();
    let now = NOW.to_string();
    for (at, extra) in [(&fast, vec!["--create-slots", "2"]), (&now, vec![])] {
        let mut a = vec![
            f.as_str(),
            "--account",
            "skewed",
            "--count",
            "3",
            "--now-ms",
            at,
        ];
        a.extend(extra);
        assert!(run_worker(&a).status.success());
    }
    // Two slots: a third key finds none (the worker reports it as an error).
    for acct in ["a", "b"] {
        run_worker(&[&f, "--account", acct, "--now-ms", &now]);
    }
    let j = json(&run(&["stats", &f, "--json", "--now-ms", &now]));
    assert!(j["clock_faults"].as_u64().unwrap() >= 1, "{j}");
    assert!(j["table_full"].as_u64().unwrap() >= 1, "{j}");
    let out = stdout(&run(&["stats", &f, "--now-ms", &now]));
    assert!(out.contains("clock       "), "{out}");
    assert!(out.contains("table full  "), "{out}");
}

/// A table made by the previous library (layout version 2, kept in
/// tests/fixtures: alpha 9 requests and beta 4 on 2025-11-27, gamma 3 the
/// day before) is refused by every open with a message naming `tollgate
/// resize`, which carries its counts into a current table.
#[test]
fn resize_carries_a_layout_2_table_over() {
    let dir = Scratch::new("cli-resize-v2");
    let old = dir.file("old.tg");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/region-v2.tg"),
        &old,
    )
    .unwrap();
    let t0: u64 = 1_764_237_600_000;
    let now = (t0 + 60_000).to_string();
    let o = run(&["stats", &old]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("layout version 2"), "{}", stderr(&o));
    assert!(stderr(&o).contains("tollgate resize"), "{}", stderr(&o));
    let e = tollgate::Limiter::open(&tollgate::Policy::builtin(), &old, 0, false).unwrap_err();
    assert!(
        matches!(
            e,
            tollgate::Error::Region(tollgate::RegionError::Version { found: 2 })
        ),
        "{e}"
    );
    let new = dir.file("new.tg");
    let j = json(&run(&[
        "resize", &old, &new, "--slots", "256", "--json", "--now-ms", &now,
    ]));
    assert_eq!(j["carried"], 2, "{j}");
    assert_eq!(j["stale"], 1, "{j}");
    let l = tollgate::Limiter::open(&tollgate::Policy::builtin(), &new, 0, false).unwrap();
    let peek = |acct: &[u8], model: &[u8]| {
        let r = tollgate::Request::new(acct, model, tollgate::Tier::Developer).cost(0);
        l.check(&r, t0 + 60_000).unwrap()
    };
    assert_eq!(peek(b"alpha", b"DeepSeek-V3.1").day.remaining, 15_000 - 9);
    assert_eq!(peek(b"beta", b"Qwen3-32B").day.remaining, 6_000 - 4);
    assert_eq!(peek(b"gamma", b"DeepSeek-V3.1").day.remaining, 15_000);
    assert_eq!(code(&run(&["verify", &new, "--now-ms", &now])), 0);
    // The old file is only read.
    let bytes = std::fs::read(&old).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/region-v2.tg"
        ))
        .unwrap()
    );
}

#[test]
fn operator_views_show_requests_in_flight_and_who_holds_them() {
    let dir = Scratch::new("cli-in-flight");
    let f = dir.file("t.tg");
    let p = dir.file("p.toml");
    let policy_text = "[models]\n\"m\" = { region = \"EU\" }\n[tiers.developer]\n\"m\" = { rpm = 100, rpd = 1000, max_in_flight = 3 }\n";
    std::fs::write(&p, policy_text).unwrap();
    let policy = tollgate::Policy::parse(policy_text, "p.toml").unwrap();
    // This process holds two of alice's requests.
    let l = tollgate::Limiter::open(&policy, &f, 64, true).unwrap();
    let req = tollgate::Request::new(b"alice", b"m", tollgate::Tier::Developer);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let d = l.check(&req, NOW).unwrap();
            d.in_flight.unwrap().admission.unwrap()
        })
        .collect();
    // A worker holds the third, and is killed holding it.
    let locks = dir.file("locks");
    std::fs::create_dir(&locks).unwrap();
    let mut w = worker(&[
        &f,
        "--policy",
        &p,
        "--account",
        "alice",
        "--model",
        "m",
        "--hold-ms",
        "600000",
        "--hold-exact",
        "--locks",
        &locks,
        "--now-ms",
        &NOW.to_string(),
    ])
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut a = [0u8; 1];
    std::io::Read::read_exact(w.stdout.as_mut().unwrap(), &mut a).unwrap();
    assert_eq!(&a, b"A");
    let (me, them) = (std::process::id(), w.id());
    let now = NOW.to_string();

    let out = stdout(&run(&["top", &f, "--now-ms", &now, "--policy", &p]));
    let row: Vec<&str> = out.lines().nth(2).unwrap().split_whitespace().collect();
    let mut pids = [format!("{me}x2"), them.to_string()];
    pids.sort();
    assert_eq!(row[..5], ["alice", "m", "3/100", "3/1000", "3/3"], "{out}");
    let mut shown: Vec<String> = row[5..].iter().map(|s| s.to_string()).collect();
    shown.sort();
    assert_eq!(shown, pids, "{out}");
    let j = json(&run(&[
        "top",
        &f,
        "--json",
        "--now-ms",
        &now,
        "--by",
        "in-flight",
        "--policy",
        &p,
    ]));
    assert_eq!(j["top"][0]["in_flight"], 3);
    assert_eq!(j["top"][0]["max_in_flight"], 3);

    let out = stdout(&run(&[
        "inspect",
        &f,
        "--account",
        "alice",
        "--model",
        "m",
        "--now-ms",
        &now,
        "--policy",
        &p,
    ]));
    assert!(
        out.contains("flight  3 of 3 running now, held by pid "),
        "{out}"
    );
    // Refused while three run: recorded, with the count.
    let d = l.check(&req, NOW).unwrap();
    assert_eq!(d.limited_by, tollgate::LimitedBy::InFlight);
    let out = stdout(&run(&["refusals", &f]));
    assert!(out.contains("in_flight") && out.contains("3/3"), "{out}");
    let j = json(&run(&["refusals", &f, "--json"]));
    assert_eq!(j["refusals"][0]["in_flight"], 3);
    assert_eq!(j["refusals"][0]["max_in_flight"], 3);

    w.kill().unwrap();
    w.wait().unwrap();
    let o = run(&["verify", &f, "--now-ms", &now]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("1 request in flight held by 1 process that died"),
        "{}",
        stdout(&o)
    );
    let out = stdout(&run(&[
        "inspect",
        &f,
        "--account",
        "alice",
        "--model",
        "m",
        "--now-ms",
        &now,
    ]));
    assert!(out.contains("dead: reclaimed at the next sweep"), "{out}");
    // A new process's first admission sweeps the dead one's unit back.
    let o = run_worker(&[
        &f,
        "--policy",
        &p,
        "--account",
        "alice",
        "--model",
        "m",
        "--count",
        "1",
        "--json",
        "--now-ms",
        &now,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = json(&run(&["stats", &f, "--json", "--now-ms", &now]));
    assert_eq!(j["in_flight"]["reclaimed"], 1, "{j}");
    assert_eq!(j["in_flight"]["refused"], 1, "{j}");
    for a in held {
        l.release(a, tollgate::Ending::Cut).unwrap();
    }
    let j = json(&run(&["stats", &f, "--json", "--now-ms", &now]));
    assert_eq!(j["in_flight"]["released_aborted"], 2, "{j}");
    let out = stdout(&run(&["stats", &f, "--now-ms", &now]));
    assert!(out.contains("in flight   "), "{out}");
}

//! Instructions per decision, counted by valgrind (callgrind): a figure the
//! shared, noisy bench machine cannot disturb. For each system and case the
//! program runs itself twice under valgrind, with N and 2N decisions, and
//! reports (I(2N) - I(N)) / N, which cancels setup.
//!
//!     cargo bench --bench icount         # needs valgrind (apt: valgrind)
//!
//! Instructions are not time (a locked 128-bit CAS is one instruction and
//! ~13 ns here), but they show where the hot path grows or shrinks.

use std::hint::black_box;
use std::process::Command;

use tollgate::{Ending, Limiter, Policy};

mod common;
use common::*;

const N: u64 = 200_000;
const CASES: [&str; 6] = [
    "hot_allow",
    "keys_10k_allow",
    "hot_deny",
    "hot_tokens",
    "hot_tokens_settle",
    "hot_in_flight",
];
/// Cases only tollgate has (token reservations and settling).
const TOKEN_CASES: [&str; 2] = ["hot_tokens", "hot_tokens_settle"];
/// An admission and its release: tollgate against a counter in a
/// Mutex<HashMap> (governor has no in-flight limit).
const IN_FLIGHT: &str = "hot_in_flight";
const SYSTEMS: [&str; 3] = ["tollgate", "governor", "mutex_hashmap"];

fn child(system: &str, case: &str, n: u64) {
    let deny = case == "hot_deny";
    let nkeys = if case == "keys_10k_allow" { 10_000 } else { 1 };
    let accts = accounts(nkeys, "org");
    let keys = joined(&accts);
    let (rpm, rpd) = if deny { (30, 15_000) } else { (HUGE, HUGE) };
    let policy = if deny {
        Policy::builtin()
    } else {
        huge_policy()
    };
    // Bring every key to its steady state (bound, and for deny: exhausted).
    let warm = if deny { 31 } else { 1 };
    if case == IN_FLIGHT {
        let a = &accts[0];
        if system == "mutex_hashmap" {
            let map = MutexInFlight::new(60_000);
            for _ in 0..n {
                let k = black_box(&keys[0]);
                assert!(map.acquire(k));
                map.release(k);
            }
            return;
        }
        let lim = Limiter::new(&in_flight_policy(60_000), 1 << 14).unwrap();
        let first = lim.check(&request(a), NOW_MS).unwrap();
        lim.release(
            first.in_flight.unwrap().admission.unwrap(),
            Ending::Complete,
        )
        .unwrap();
        for _ in 0..n {
            let d = lim.check(&request(black_box(a)), NOW_MS).unwrap();
            let adm = d.in_flight.and_then(|f| f.admission).unwrap();
            black_box(lim.release(adm, Ending::Complete).unwrap());
        }
        return;
    }
    if TOKEN_CASES.contains(&case) {
        // A key with token limits: each decision reserves 100 tokens (and,
        // settling, charges 60 instead once "answered").
        let mut text = policy_text_huge();
        text = text.replace(
            &format!("rpd = {HUGE} }}"),
            &format!("rpd = {HUGE}, tpm = {HUGE}, tpd = {HUGE} }}"),
        );
        let policy = Policy::parse(&text, "bench").unwrap();
        let lim = Limiter::new(&policy, 1 << 14).unwrap();
        let settle = case == "hot_tokens_settle";
        let a = &accts[0];
        lim.check(&request(a).tokens(100), NOW_MS).unwrap();
        for _ in 0..n {
            let d = lim
                .check(&request(black_box(a)).tokens(black_box(100)), NOW_MS)
                .unwrap();
            if settle {
                let t = d.tokens.and_then(|t| t.ticket).unwrap();
                black_box(lim.settle(t, Ending::Usage(60), NOW_MS).unwrap());
            } else {
                black_box(d);
            }
        }
        return;
    }
    match system {
        "tollgate" => {
            let lim = Limiter::new(&policy, 1 << 14).unwrap();
            for a in &accts {
                for _ in 0..warm {
                    lim.check(&request(a), NOW_MS).unwrap();
                }
            }
            for i in 0..n as usize {
                black_box(
                    lim.check(&request(black_box(&accts[i % nkeys])), NOW_MS)
                        .unwrap(),
                );
            }
        }
        "governor" => {
            let gov = GovernorPair::new(rpm, rpd);
            for k in &keys {
                for _ in 0..warm {
                    let _ = gov.check(k);
                }
            }
            for i in 0..n as usize {
                let _ = black_box(gov.check(black_box(&keys[i % nkeys])));
            }
        }
        "mutex_hashmap" => {
            let map = MutexMap::new(rpm, rpd);
            for k in &keys {
                for _ in 0..warm {
                    map.check(k, NOW_MS);
                }
            }
            for i in 0..n as usize {
                black_box(map.check(black_box(&keys[i % nkeys]), NOW_MS));
            }
        }
        other => panic!("unknown system {other}"),
    }
}

fn instructions(exe: &std::path::Path, system: &str, case: &str, n: u64) -> Option<u64> {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(exe)
        .env("TOLLGATE_ICOUNT_CHILD", format!("{system} {case} {n}"))
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.contains("refs:"))?;
    line.split_whitespace()
        .last()?
        .replace(',', "")
        .parse()
        .ok()
}

fn main() {
    if let Ok(spec) = std::env::var("TOLLGATE_ICOUNT_CHILD") {
        let f: Vec<&str> = spec.split(' ').collect();
        child(f[0], f[1], f[2].parse().unwrap());
        return;
    }
    let exe = std::env::current_exe().unwrap();
    if instructions(&exe, "tollgate", "hot_allow", 1).is_none() {
        println!("icount: valgrind not found; skipped");
        return;
    }
    println!("instructions per decision (callgrind):");
    println!(
        "{:<16} {:>10} {:>10} {:>14}",
        "case", SYSTEMS[0], SYSTEMS[1], SYSTEMS[2]
    );
    for case in CASES {
        let per: Vec<String> = SYSTEMS
            .iter()
            .map(|s| {
                if (TOKEN_CASES.contains(&case) && *s != "tollgate")
                    || (case == IN_FLIGHT && *s == "governor")
                {
                    return "-".to_string();
                }
                let a = instructions(&exe, s, case, N).unwrap();
                let b = instructions(&exe, s, case, 2 * N).unwrap();
                format!("{}", (b - a) / N)
            })
            .collect();
        println!("{case:<16} {:>10} {:>10} {:>14}", per[0], per[1], per[2]);
    }
}

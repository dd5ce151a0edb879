//! Workers hammering one shared table are SIGKILLed at random moments (200
//! kills), many while binding: half the workers bind a new key on every
//! request, and every other round starts a new day, so its 200 counted keys
//! rebind slots left stale. Afterwards `verify` finds no damage, no count ever exceeds
//! what was admitted plus the one decision each killed worker had in flight,
//! and the table still serves limits exactly. Every counted request also
//! reserves tokens it never settles (a holder killed with reservations):
//! each key's tokens are at least its requests' reservations (charged, the
//! safe direction) and exceed them by at most one reservation per kill (a
//! decision killed between its two CASes).

use crate::procs;

use std::io::Read;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use procs::*;
use tollgate::{Limiter, Policy};

const ROUNDS: usize = 50;
const WORKERS: usize = 4;
const KEYS: usize = 200;
const BIG: u32 = 1_000_000;
/// Tokens each counted request reserves.
const TOKENS: u32 = 7;
/// Days between rounds' counting days; churn workers live in the gap.
const CHURN_DAYS: u64 = 100_000;

/// xorshift64*: enough randomness for kill timing, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Worker {
    child: Child,
    ready: mpsc::Receiver<()>,
    output: std::thread::JoinHandle<Vec<u8>>,
}

/// A counting worker cycles over the KEYS fixed keys at `now`, reporting
/// each admission; a churning one binds a new key on every request, each a
/// day later than the last, starting far below `now`'s day so that it
/// rebinds stale slots but never takes the counting keys' live ones.
fn spawn(file: &str, now: u64, churn: Option<String>) -> Worker {
    let keys = KEYS.to_string();
    let big = BIG.to_string();
    let mut args: Vec<String> = [
        file,
        "--count",
        "1000",
        "--forever",
        "--stream",
        "--rpm",
        &big,
        "--rpd",
        &big,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match churn {
        None => args.extend(
            [
                "--account",
                "kill",
                "--accounts",
                &keys,
                "--now-ms",
                &now.to_string(),
                "--tokens",
                &TOKENS.to_string(),
                "--tpm",
                &(BIG * TOKENS).to_string(),
                "--tpd",
                &(BIG * TOKENS).to_string(),
            ]
            .map(String::from),
        ),
        Some(name) => args.extend(
            [
                "--account",
                &name,
                "--churn",
                // A worker left running long (a loaded machine is slow to
                // spawn the others) would otherwise reach the counting
                // day and take its keys' slots as stale.
                "--churn-days",
                &(CHURN_DAYS - 1).to_string(),
                "--now-ms",
                &(now - CHURN_DAYS * DAY).to_string(),
            ]
            .map(String::from),
        ),
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = worker(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker");
    let mut out = child.stdout.take().unwrap();
    let (tx, ready) = mpsc::channel();
    let output = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut told = false;
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    if !told {
                        told = true;
                        let _ = tx.send(());
                    }
                }
            }
        }
        all
    });
    Worker {
        child,
        ready,
        output,
    }
}

#[test]
fn sigkilled_workers_leave_an_exact_table() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill test seed {seed}");
    let mut rng = Rng(seed);
    let dir = Scratch::new("kill");
    let file = dir.file("t.tg");
    // Small: each day's keys must bind slots left stale by earlier days.
    create(dir.path("t.tg").as_path(), 320);
    let mut kills = 0;
    let mut admitted_total = 0u64;
    // Two rounds per simulated day: the second continues the first's counts.
    let mut reported = [0u64; KEYS];
    let mut day_kills = 0u64;
    let (mut unnamed_max, mut open_max) = (0, 0);
    for round in 0..ROUNDS {
        let now = NOW + (round / 2 + 1) as u64 * CHURN_DAYS * DAY;
        if round % 2 == 0 {
            reported = [0; KEYS];
            day_kills = 0;
        }
        let workers: Vec<Worker> = (0..WORKERS)
            .map(|w| {
                spawn(
                    &file,
                    now,
                    (w % 2 == 1).then(|| format!("churn{round}.{w}")),
                )
            })
            .collect();
        let mut outputs = Vec::new();
        for mut w in workers {
            // Wait until it has the table open, then let it run a moment.
            w.ready
                .recv_timeout(Duration::from_secs(20))
                .expect("worker never started");
            // Half the kills land in the first half millisecond (binding),
            // the rest anywhere in the next few.
            let wait = if rng.below(2) == 0 { 500 } else { 5_000 };
            std::thread::sleep(Duration::from_micros(rng.below(wait)));
            w.child.kill().expect("SIGKILL");
            let status = w.child.wait().unwrap();
            assert!(!status.success(), "worker exited by itself: {status:?}");
            kills += 1;
            day_kills += 1;
            outputs.push(w.output.join().unwrap());
        }
        for out in outputs {
            assert_eq!(out.first(), Some(&b'R'));
            assert_eq!(out.len() % 2, 1, "a torn report");
            for pair in out[1..].chunks(2) {
                let k = u16::from_le_bytes([pair[0], pair[1]]) as usize;
                assert!(k < KEYS, "stray key index {k}");
                reported[k] += 1;
                admitted_total += 1;
            }
        }
        // Every admission a worker reported is in the table, and at most one
        // more per killed worker (a decision made but not yet reported).
        let l = Limiter::open(&Policy::builtin(), &file, 0, false).unwrap();
        let mut extra = 0u64;
        let mut token_extra = 0u64;
        for (k, &rep) in reported.iter().enumerate() {
            let (_, day) = counts(&l, &format!("kill-{k}"), MODEL, BIG, BIG, now);
            assert!(
                day as u64 >= rep,
                "round {round} key {k}: table {day} < reported {rep} (seed {seed})"
            );
            extra += day as u64 - rep;
            let u = l
                .key_usage(format!("kill-{k}").as_bytes(), MODEL.as_bytes(), now)
                .unwrap();
            let tokens = u.map_or(0, |u| u.tokens_day) as u64;
            let owed = day as u64 * TOKENS as u64;
            assert!(
                tokens >= owed,
                "round {round} key {k}: {tokens} tokens < {day} requests' {owed} (seed {seed})"
            );
            token_extra += tokens - owed;
        }
        assert!(
            token_extra <= day_kills * TOKENS as u64,
            "round {round}: {token_extra} tokens beyond the requests', only {day_kills} kills (seed {seed})"
        );
        assert!(
            extra <= day_kills,
            "round {round}: {extra} admissions unaccounted for, only {day_kills} kills (seed {seed})"
        );
        let v = l.verify(now);
        assert!(v.ok(), "round {round} (seed {seed}): {:?}", v.problems);
        unnamed_max = unnamed_max.max(v.unnamed);
        open_max = open_max.max(v.open);
    }
    // How often a kill interrupted a bind (evidence the test reaches it).
    println!("kills {kills}; most unnamed slots seen {unnamed_max}, most open slots {open_max}");
    assert_eq!(kills, ROUNDS * WORKERS);
    assert!(admitted_total > 0);

    // The operator's view agrees.
    let last = NOW + ((ROUNDS - 1) / 2 + 1) as u64 * CHURN_DAYS * DAY;
    let o = run(&["verify", &file, "--now-ms", &last.to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    // And the table still serves exactly: a fresh key across processes.
    let now = (last + 60_000).to_string();
    let (admitted, _) = hammer_all(
        4,
        &[
            &file,
            "--account",
            "fresh",
            "--count",
            "60",
            "--rpm",
            "100",
            "--rpd",
            "100",
            "--now-ms",
            &now,
        ],
    );
    assert_eq!(admitted, 100);
    let l = Limiter::open(&Policy::builtin(), &file, 0, false).unwrap();
    assert!(l.verify(last + 60_000).ok());
}

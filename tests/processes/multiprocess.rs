//! One region file shared by many processes: exact limits across processes,
//! counters that outlive every opener, racing creators, and files that are
//! not regions. Workers are real processes (`tollgate-test-worker`).

use crate::procs;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use procs::*;
use tollgate::{Error, Limiter, Policy, RegionError};

const BIG: u32 = 1_000_000;

#[test]
fn one_key_minute_limit_is_exact_across_processes() {
    let dir = Scratch::new("mp-minute");
    let f = dir.file("t.tg");
    create(dir.path("t.tg").as_path(), 4096);
    let now = NOW.to_string();
    // 6 processes x 300 attempts at one key limited to 500 a minute.
    let (admitted, denied) = hammer_all(
        6,
        &[
            &f,
            "--account",
            "one",
            "--count",
            "300",
            "--rpm",
            "500",
            "--rpd",
            "100000",
            "--now-ms",
            &now,
        ],
    );
    assert_eq!(admitted, 500);
    assert_eq!(denied, 6 * 300 - 500);
    let l = Limiter::open(&Policy::builtin(), &f, 0, false).unwrap();
    assert_eq!(counts(&l, "one", MODEL, BIG, BIG, NOW), (500, 500));
}

#[test]
fn one_key_day_limit_is_exact_across_processes() {
    let dir = Scratch::new("mp-day");
    let f = dir.file("t.tg");
    create(dir.path("t.tg").as_path(), 4096);
    let now = NOW.to_string();
    // Each worker sends 120 a minute for 8 minutes against 100/minute and
    // 450/day: whatever the interleaving, the day stops them at exactly 450.
    let (admitted, _) = hammer_all(
        4,
        &[
            &f,
            "--account",
            "daily",
            "--count",
            "120",
            "--minutes",
            "8",
            "--rpm",
            "100",
            "--rpd",
            "450",
            "--now-ms",
            &now,
        ],
    );
    assert_eq!(admitted, 450);
    let l = Limiter::open(&Policy::builtin(), &f, 0, false).unwrap();
    let (_, day) = counts(&l, "daily", MODEL, BIG, BIG, NOW + 7 * 60_000);
    assert_eq!(day, 450);
}

#[test]
fn many_keys_are_each_exact_across_processes() {
    let dir = Scratch::new("mp-many");
    let f = dir.file("t.tg");
    create(dir.path("t.tg").as_path(), 256);
    let now = NOW.to_string();
    // 4 workers each cycle 40 attempts per key over 40 keys limited to 25.
    let (admitted, _) = hammer_all(
        4,
        &[
            &f,
            "--account",
            "many",
            "--accounts",
            "40",
            "--count",
            "1600",
            "--rpm",
            "25",
            "--rpd",
            "1000",
            "--model",
            "Qwen3-32B",
            "--now-ms",
            &now,
        ],
    );
    assert_eq!(admitted, 40 * 25);
    let l = Limiter::open(&Policy::builtin(), &f, 0, false).unwrap();
    for k in 0..40 {
        assert_eq!(
            counts(&l, &format!("many-{k}"), "Qwen3-32B", BIG, BIG, NOW),
            (25, 25),
            "many-{k}"
        );
    }
    let v = l.verify(NOW);
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!((v.bound, v.unnamed), (40, 0));
}

#[test]
fn counters_persist_after_every_opener_exits() {
    let dir = Scratch::new("mp-restart");
    let f = dir.file("t.tg");
    let now = NOW.to_string();
    // The first worker creates the file; nothing else has it open.
    let o = run_worker(&[
        &f,
        "--account",
        "keep",
        "--count",
        "7",
        "--create-slots",
        "128",
        "--now-ms",
        &now,
    ]);
    assert_eq!(tally(&o).0, 7);
    let o = run_worker(&[&f, "--account", "keep", "--count", "5", "--now-ms", &now]);
    assert_eq!(tally(&o).0, 5);
    // A third process (the operator's command) sees all twelve.
    let o = run(&[
        "inspect",
        &f,
        "--account",
        "keep",
        "--model",
        MODEL,
        "--json",
        "--now-ms",
        &now,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("\"minute_used\":12,\"day_used\":12"),
        "{}",
        stdout(&o)
    );
    // And the limit still holds across restarts: 30 a minute in all.
    let o = run_worker(&[&f, "--account", "keep", "--count", "40", "--now-ms", &now]);
    assert_eq!(tally(&o).0, 18);
    let l = Limiter::open(&Policy::builtin(), &f, 0, false).unwrap();
    assert_eq!(counts(&l, "keep", MODEL, BIG, BIG, NOW), (30, 30));
}

#[test]
fn racing_creators_all_end_on_one_region() {
    for round in 0..4 {
        let dir = Scratch::new("mp-race");
        let f = dir.file("t.tg");
        let go = dir.file("go");
        let now = NOW.to_string();
        let children: Vec<_> = (0..8)
            .map(|_| {
                worker(&[
                    &f,
                    "--account",
                    "race",
                    "--count",
                    "1",
                    "--create-slots",
                    "512",
                    "--wait-for",
                    &go,
                    "--rpm",
                    "100",
                    "--rpd",
                    "100",
                    "--now-ms",
                    &now,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        // Let them all reach the starting line, then release them at once.
        std::thread::sleep(std::time::Duration::from_millis(150));
        std::fs::write(&go, b"").unwrap();
        let admitted: u64 = children
            .into_iter()
            .map(|c| tally(&c.wait_with_output().unwrap()).0)
            .sum();
        assert_eq!(admitted, 8, "round {round}");
        // A count made by each is seen by all: had any worker formatted a
        // region of its own, its request would be missing here.
        let l = Limiter::open(&Policy::builtin(), &f, 0, false).unwrap();
        assert_eq!(
            counts(&l, "race", MODEL, BIG, BIG, NOW),
            (8, 8),
            "round {round}"
        );
        assert_eq!(l.stats(NOW).slots, 512);
        let mut names: Vec<String> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["go", "t.tg"], "no temporary files left behind");
    }
}

fn open_err(path: &std::path::Path) -> Error {
    Limiter::open(&Policy::builtin(), path, 0, false).expect_err("must not open")
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = Scratch::new("mp-bad");
    let good = dir.path("good.tg");
    create(&good, 100);
    let len = std::fs::metadata(&good).unwrap().len();
    assert_eq!(len as usize, tollgate::region_size(100).unwrap());
    let copy = |name: &str| {
        let p = dir.path(name);
        std::fs::copy(&good, &p).unwrap();
        p
    };
    let set_len = |p: &std::path::Path, n: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(n)
            .unwrap()
    };
    let poke = |p: &std::path::Path, at: usize, v: u8| {
        let mut b = std::fs::read(p).unwrap();
        b[at] = v;
        std::fs::write(p, b).unwrap();
    };

    let p = copy("truncated.tg");
    set_len(&p, len - 1);
    assert!(
        matches!(open_err(&p), Error::Region(RegionError::Size { needed, .. }) if needed as u64 == len)
    );

    let p = copy("extended.tg");
    set_len(&p, len + 4096);
    assert!(matches!(
        open_err(&p),
        Error::Region(RegionError::Size { .. })
    ));

    let p = copy("magic.tg");
    poke(&p, 0, b'X');
    assert!(matches!(open_err(&p), Error::Region(RegionError::Magic)));

    let p = copy("version.tg");
    poke(&p, 8, 77);
    assert!(matches!(
        open_err(&p),
        Error::Region(RegionError::Version { found: 77 })
    ));

    let p = copy("corrupt.tg");
    poke(&p, 16, 99); // slot count, now disagreeing with the checksum
    assert!(matches!(open_err(&p), Error::Region(RegionError::Corrupt)));

    let p = dir.path("empty.tg");
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(
        open_err(&p),
        Error::Region(RegionError::Size { len: 0, .. })
    ));

    let p = dir.path("text.tg");
    std::fs::write(&p, vec![b'x'; 20_000]).unwrap();
    assert!(matches!(open_err(&p), Error::Region(RegionError::Magic)));

    let p = dir.path("a-directory");
    std::fs::create_dir(&p).unwrap();
    let e = open_err(&p);
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("a-directory"), "{e}");

    let p = dir.path("missing.tg");
    let e = open_err(&p);
    assert!(
        matches!(&e, Error::Io { op: "open", source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e:?}"
    );
    assert!(!p.exists(), "opening without create must not create");

    // Asking for another slot count than the file holds.
    let e = Limiter::open(&Policy::builtin(), &good, 64, false).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Region(RegionError::SlotCount {
                found: 100,
                asked: 64
            })
        ),
        "{e:?}"
    );
    // Creating with no slots.
    assert!(matches!(
        Limiter::open(&Policy::builtin(), dir.path("zero.tg"), 0, true),
        Err(Error::Invalid(_))
    ));

    // The operator's command says the same, with the path, and exits 1.
    for name in [
        "truncated.tg",
        "magic.tg",
        "empty.tg",
        "a-directory",
        "missing.tg",
    ] {
        let f = dir.file(name);
        let o = run(&["verify", &f]);
        assert_eq!(o.status.code(), Some(1), "{name}");
        let err = stderr(&o);
        assert!(
            err.starts_with("tollgate: ") && err.contains(name),
            "{name}: {err}"
        );
    }

    // The good file survived all of this.
    Limiter::open(&Policy::builtin(), &good, 0, false).unwrap();
}

#[test]
fn unreadable_file_is_a_clear_error() {
    let dir = Scratch::new("mp-perm");
    // Let an unprivileged user reach the file (it still may not open it).
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = dir.path("locked.tg");
    create(&p, 16);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
    let f = dir.file("locked.tg");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        let e = open_err(&p);
        assert!(
            matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
            "{e:?}"
        );
        let o = run(&["stats", &f]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
        return;
    }
    // Root ignores file modes, so run the command as `nobody` instead.
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let reachable = {
        // The binary must be executable by `nobody` (every directory above it
        // searchable by others) for the privilege drop to mean anything.
        let mut ok = true;
        let mut d = std::path::Path::new(bin()).parent();
        while let Some(p) = d {
            let mode = std::fs::metadata(p)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            ok &= mode & 0o001 != 0;
            d = p.parent();
        }
        ok && std::env::temp_dir()
            .metadata()
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    };
    let Some(setpriv) = setpriv.filter(|_| reachable) else {
        eprintln!("note: running as root without setpriv (or with the binary unreachable by `nobody`): permission case skipped");
        return;
    };
    let o = std::process::Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            bin(),
            "stats",
            &f,
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("locked.tg") && err.contains("Permission denied"),
        "{err}"
    );
}

#[test]
fn tokens_settled_across_processes_equal_the_usage() {
    let dir = Scratch::new("mp-tokens");
    let f = dir.file("t.tg");
    create(dir.path("t.tg").as_path(), 4096);
    let now = NOW.to_string();
    let tpm = 60_000u64;
    // 6 processes reserve 700 tokens a request on one key and settle each
    // at once with a usage of their own drawing (350 to 1 225).
    let children: Vec<_> = (1..=6u64)
        .map(|seed| {
            let seed = (seed * 0x9E37_79B9).to_string();
            let args = [
                f.as_str(),
                "--account",
                "tok",
                "--count",
                "400",
                "--rpm",
                "100000",
                "--rpd",
                "100000",
                "--tokens",
                "700",
                "--tpm",
                "60000",
                "--tpd",
                "1000000",
                "--settle-seed",
                &seed,
                "--json",
                "--now-ms",
                &now,
            ];
            worker(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let (mut admitted, mut denied, mut used, mut excess) = (0, 0, 0, 0);
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        admitted += j["admitted"].as_u64().unwrap();
        denied += j["denied"].as_u64().unwrap();
        used += j["used"].as_u64().unwrap();
        excess += j["excess"].as_u64().unwrap();
    }
    assert!(
        admitted > 0 && denied > 0,
        "{admitted} admitted, {denied} denied"
    );
    let l = Limiter::open(&Policy::builtin(), &f, 0, false).unwrap();
    let u = l.key_usage(b"tok", MODEL.as_bytes(), NOW).unwrap().unwrap();
    // The table holds exactly what the upstream reported, within the bound.
    assert_eq!((u.tokens_minute as u64, u.tokens_day as u64), (used, used));
    assert!(used <= tpm + excess, "{used} > {tpm} + {excess}");
    assert_eq!((u.minute as u64, u.day as u64), (admitted, admitted));
}

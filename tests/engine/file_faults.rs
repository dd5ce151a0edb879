//! Region files under faults the OS hands us: a file system without room
//! for the table, a sparse file, and operators who must not write.

use std::path::{Path, PathBuf};
use std::process::Command;

use tollgate::{Error, Limiter, Policy, Request, Tier};

const NOW: u64 = 1_795_773_600_000;

/// A scratch directory; `mounted` when a tmpfs was mounted on it, the only
/// case its drop unmounts (an unmount of a plain directory prints a stray
/// "not mounted" into the test output).
struct Dir(PathBuf, bool);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("tollgate-ff-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d, false)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("umount")
                .arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tmpfs of `size` mounted on a fresh directory, or `None` (with a note)
/// where this process may not mount (not root, no tmpfs).
fn small_tmpfs(tag: &str, size: &str) -> Option<Dir> {
    let mut d = Dir::new(tag);
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&d.0)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("note: cannot mount a tmpfs here (needs root): skipped");
        return None;
    }
    d.1 = true;
    Some(d)
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Docker's /dev/shm is 64 MB and a million keys take 120 MB: the file was
/// made sparse, opened fine, and the first decision on an unbacked page
/// died of SIGBUS. Now the open fails, says how much was needed and free,
/// and leaves nothing behind.
#[test]
fn no_space_is_an_error_naming_the_bytes_and_leaves_no_file() {
    let Some(d) = small_tmpfs("nospace", "64k") else {
        return;
    };
    let path = d.0.join("t.tg");
    let err = Limiter::open(&Policy::builtin(), &path, 10_000, true).unwrap_err();
    let Error::NoSpace {
        path: shown,
        needed,
        free,
    } = &err
    else {
        panic!("expected NoSpace, got {err:?}");
    };
    assert_eq!(shown, &path.display().to_string());
    assert_eq!(*needed as usize, tollgate::region_size(10_000).unwrap());
    assert!(*free <= 64 * 1024, "free {free}");
    let msg = err.to_string();
    assert!(
        msg.contains(&needed.to_string()) && msg.contains("t.tg"),
        "{msg}"
    );
    assert_eq!(entries(&d.0), Vec::<String>::new(), "no file left behind");

    // A table that fits still works, through every page of it.
    let l = Limiter::open(&Policy::builtin(), &path, 150, true).unwrap();
    for i in 0..100 {
        let account = format!("acct-{i}");
        let r = Request::new(account.as_bytes(), b"DeepSeek-V3.1", Tier::Developer);
        l.check(&r, NOW).unwrap();
    }
}

/// A sparse file that an older library (or `truncate`, or a copy) left is
/// reserved on open: on a file system without room for it that is a clear
/// error, not a SIGBUS later.
#[test]
fn a_sparse_existing_file_is_reserved_or_refused() {
    let Some(d) = small_tmpfs("sparse", "128k") else {
        return;
    };
    let src = Dir::new("sparse-src");
    let made = src.0.join("t.tg");
    drop(Limiter::open(&Policy::builtin(), &made, 10_000, true).unwrap());
    // Copy only the header into a sparse file of the full size.
    let bytes = std::fs::read(&made).unwrap();
    let path = d.0.join("t.tg");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(bytes.len() as u64).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes[..4096], 0).unwrap();
    drop(f);
    let err = Limiter::open(&Policy::builtin(), &path, 0, false).unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err:?}");
}

fn checksum(path: &Path) -> u64 {
    // FNV-1a over the whole file: any changed byte shows.
    std::fs::read(path)
        .unwrap()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
}

/// A read-only handle changes no byte of the file: not by registering the
/// policy's model names, not by the stores a 128-bit atomic load makes, not
/// even by a decision; writes through it are refused.
#[test]
fn read_only_handles_change_no_byte() {
    let d = Dir::new("ro");
    let path = d.0.join("t.tg");
    let one = Policy::parse(
        "[models]\n\"DeepSeek-V3.1\" = { region = \"EU\" }\n[tiers.developer]\n\"DeepSeek-V3.1\" = { rpm = 30, rpd = 15000 }\n",
        "one",
    )
    .unwrap();
    let live = Limiter::open(&one, &path, 64, true).unwrap();
    let r = Request::new(b"acct", b"DeepSeek-V3.1", Tier::Developer);
    for _ in 0..3 {
        live.check(&r, NOW).unwrap();
    }
    let before = checksum(&path);

    let ro = Limiter::open_read_only(&Policy::builtin(), &path).unwrap();
    assert!(ro.is_read_only());
    assert_eq!(ro.region_models().len(), 1, "no names registered");
    let usage = ro.usage(NOW).unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!((usage[0].minute, usage[0].day), (3, 3));
    let peek = ro.check(&r.cost(0), NOW).unwrap();
    assert_eq!(peek.minute.remaining, 27);
    // A model the live table never saw has no counts, and no id is made.
    let other = Request::new(b"acct", b"gpt-oss-120b", Tier::Developer).cost(0);
    assert_eq!(ro.check(&other, NOW).unwrap().minute.remaining, 150);
    ro.check(&r, NOW).unwrap();
    assert!(matches!(ro.reset(b"acct", None), Err(Error::ReadOnly)));
    ro.verify(NOW);
    ro.stats(NOW);
    drop(ro);
    assert_eq!(checksum(&path), before, "read-only handle wrote the file");

    // The live table saw nothing of it, and read-only opens see live counts.
    assert_eq!(live.check(&r.cost(0), NOW).unwrap().minute.remaining, 27);
    live.check(&r, NOW).unwrap();
    let ro = Limiter::open_read_only(&one, &path).unwrap();
    assert_eq!(ro.usage(NOW).unwrap()[0].minute, 4);

    // Only existing files: read-only never creates.
    assert!(matches!(
        Limiter::open_read_only(&one, d.0.join("absent.tg")),
        Err(Error::Io { .. })
    ));
}

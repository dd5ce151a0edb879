//! Why the ambiguity rule exists, shown with real parsers: each body we
//! refuse as ambiguous is read differently by at least two of a first-wins
//! reading (cJSON's cJSON_GetObjectItem: first key equal ignoring case),
//! Python's json module, serde_json and Go's encoding/json (decoding into
//! `struct { Model string `json:"model"` }`: last key equal ignoring case);
//! and for each body we accept, no parser finds a model other than ours.
//!
//! Python runs as `python3`; Go is built from a temporary directory with
//! the standard library only (GOPROXY=off, GOTOOLCHAIN=local, caches in
//! the temporary directory). Without `go` on PATH that part is skipped,
//! with a note.

use crate::bodycheck;

use std::path::{Path, PathBuf};
use std::process::Command;

use bodycheck::Entries;
use serde_json::Value;
use tollgate::body::model_of;
use tollgate::BodyError;

/// Bodies we refuse (AmbiguousModel, or one model key that is no string).
/// Each has distinct values, so the disagreement shows; equal values are
/// refused all the same (the rule does not look at values), see the unit
/// tests.
const REFUSED: &[&str] = &[
    r#"{"model":"a","model":"b"}"#,
    r#"{"model":"a","Model":"b"}"#,
    r#"{"Model":"a","model":"b"}"#,
    r#"{"MODEL":"a","model":"b"}"#,
    r#"{"model":"a","\u006dodel":"b"}"#,
    r#"{"\u004dodel":"a","model":"b"}"#,
    r#"{"model":"a","mOdEl":"b","model":"c"}"#,
    r#"{"mOdEl":7,"model":"b"}"#,
    r#"{"model":"b","mOdEl":7}"#,
];

/// Bodies we accept, each with one model key.
const ACCEPTED: &[&str] = &[
    r#"{"model":"Qwen3-32B"}"#,
    r#"{"messages":[{"role":"user","content":"hi"}],"model":"DeepSeek-V3.1"}"#,
    r#"{"a":{"model":"x","Model":"y"},"model":"m"}"#,
    r#"{"b":[{"model":"x"}],"model":"m","c":{"MODEL":1}}"#,
    r#"{"model":"caf\u00e9 \ud83d\ude00"}"#,
    r#"{"\u006dodel":"esc"}"#,
    CASED,
];

/// Accepted, though exact-match parsers (Python, serde_json) see no model.
const CASED: &str = r#"{"Model":"cased"}"#;

/// What one parser made of a body: the model string, or none (absent,
/// not a string, or an error).
type Reading = Option<String>;

fn first_wins(body: &str) -> Reading {
    let Entries(entries) = bodycheck::parse(body.as_bytes(), false).expect("an object");
    entries
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("model"))
        .and_then(|(_, v)| v.as_str().map(str::to_owned))
}

fn serde(body: &str) -> Reading {
    let v: Value = serde_json::from_str(body).ok()?;
    v.get("model")?.as_str().map(str::to_owned)
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tollgate-upstreams-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes the bodies to files; returns their paths.
fn body_files(dir: &Path, bodies: &[&str]) -> Vec<PathBuf> {
    bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let p = dir.join(format!("body{i}.json"));
            std::fs::write(&p, b).unwrap();
            p
        })
        .collect()
}

/// One line per file: the model as a JSON string, or `null`.
fn lines(out: std::process::Output, who: &str) -> Vec<Reading> {
    assert!(
        out.status.success(),
        "{who}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Option<String>>(l).unwrap_or_else(|e| panic!("{who}: {l}: {e}"))
        })
        .collect()
}

const PY: &str = r#"
import json, sys
for path in sys.argv[1:]:
    try:
        d = json.loads(open(path, "rb").read())
        m = d.get("model") if isinstance(d, dict) else None
        print(json.dumps(m if isinstance(m, str) else None))
    except ValueError:
        print("null")
"#;

fn python(files: &[PathBuf]) -> Vec<Reading> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PY)
        .args(files)
        .output()
        .expect("python3 runs");
    lines(out, "python")
}

const GO: &str = r#"package main

import (
	"encoding/json"
	"fmt"
	"os"
)

func main() {
	for _, path := range os.Args[1:] {
		data, err := os.ReadFile(path)
		if err != nil {
			panic(err)
		}
		var v struct {
			Model string `json:"model"`
		}
		if err := json.Unmarshal(data, &v); err != nil {
			fmt.Println("null")
			continue
		}
		out, _ := json.Marshal(v.Model)
		fmt.Println(string(out))
	}
}
"#;

/// The Go reader built in `dir`, or None when `go` is not on PATH.
fn go_reader(dir: &Path) -> Option<PathBuf> {
    if Command::new("go").arg("version").output().is_err() {
        println!("note: `go` is not on PATH: the Go reading is skipped");
        return None;
    }
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("main.go"), GO).unwrap();
    std::fs::write(src.join("go.mod"), "module bodyreader\n\ngo 1.18\n").unwrap();
    let bin = dir.join("bodyreader");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("go build runs");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(bin)
}

fn go(bin: &Path, files: &[PathBuf]) -> Vec<Reading> {
    lines(
        Command::new(bin)
            .args(files)
            .output()
            .expect("Go reader runs"),
        "go",
    )
}

#[test]
fn upstream_parsers_disagree_where_we_refuse_and_agree_where_we_accept() {
    let dir = tmpdir("readers");
    let go_bin = go_reader(&dir);
    let all: Vec<&str> = REFUSED.iter().chain(ACCEPTED).copied().collect();
    let files = body_files(&dir, &all);
    let py = python(&files);
    let gos = go_bin.as_deref().map(|b| go(b, &files));
    for (i, body) in all.iter().enumerate() {
        let mut readings = vec![
            ("first-wins", first_wins(body)),
            ("python", py[i].clone()),
            ("serde_json", serde(body)),
        ];
        if let Some(g) = &gos {
            readings.push(("go", g[i].clone()));
        }
        println!("{body}\n    {readings:?}");
        let ours = model_of(body.as_bytes());
        if i < REFUSED.len() {
            assert!(
                matches!(ours, Err(BodyError::AmbiguousModel | BodyError::NoModel)),
                "{body}: {ours:?}"
            );
            let first = &readings[0].1;
            assert!(
                readings.iter().any(|(_, r)| r != first),
                "{body}: all parsers agree: {readings:?}"
            );
        } else {
            // No parser reaches another model than ours. An exact-match
            // parser finds none in {"Model":...}: it refuses the request
            // itself, and nothing is let through that we did not count.
            let m = ours.unwrap_or_else(|e| panic!("{body}: {e}"));
            for (who, r) in &readings {
                assert!(
                    r.is_none() || r.as_deref() == Some(m.as_str()),
                    "{body}: {who} read {r:?}, we {m:?}"
                );
            }
            // With the model key spelt `model` (after unescaping), every
            // parser reads exactly our model.
            if *body != CASED {
                for (who, r) in &readings {
                    assert_eq!(r.as_deref(), Some(m.as_str()), "{body}: {who}");
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

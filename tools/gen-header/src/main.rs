//! Writes include/tollgate.h with cbindgen, one section per file of the C
//! ABI (src/ffi.rs, then src/ffi/*.rs in reading order), so the header
//! reads in sections instead of cbindgen's order (all constants, then all
//! types, then all functions). The header is committed; CI runs this with
//! `--verify` and fails if the committed one differs.
//!
//! Usage: tollgate-gen-header [--verify] [REPOSITORY]   (default: cwd)

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The header's sections: (file, title). Each file of src/ffi must be here.
const SECTIONS: [(&str, &str); 11] = [
    ("src/ffi.rs", "Versions, statuses and limits"),
    (
        "src/ffi/guard.rs",
        "(no C items: the panic guard and argument checks)",
    ),
    ("src/ffi/policy.rs", "Policies"),
    ("src/ffi/limiter.rs", "Limiters and their tables"),
    ("src/ffi/check.rs", "Deciding: requests and decisions"),
    (
        "src/ffi/leases.rs",
        "One quota across hosts: joining a Redis quota store",
    ),
    ("src/ffi/render.rs", "Rendering a decision"),
    ("src/ffi/body.rs", "Request bodies: the model, scanned once"),
    (
        "src/ffi/tokens.rs",
        "Tokens: reservations, settling, and a response's usage",
    ),
    (
        "src/ffi/in_flight.rs",
        "In flight: admissions and their release",
    ),
    (
        "src/ffi/answer.rs",
        "Whole answers: status, headers and body for every outcome",
    ),
];

const HEADER: &str = "include/tollgate.h";

fn main() -> ExitCode {
    let mut verify = false;
    let mut root = PathBuf::from(".");
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--verify" => verify = true,
            "-h" | "--help" => {
                println!("usage: tollgate-gen-header [--verify] [REPOSITORY]");
                return ExitCode::SUCCESS;
            }
            a if a.starts_with('-') => {
                eprintln!("tollgate-gen-header: unknown option {a}");
                return ExitCode::from(2);
            }
            a => root = PathBuf::from(a),
        }
    }
    let text = match generate(&root) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tollgate-gen-header: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = root.join(HEADER);
    let old = std::fs::read(&path).ok();
    if verify {
        if old.as_deref() == Some(text.as_bytes()) {
            println!("{HEADER}: up to date");
            return ExitCode::SUCCESS;
        }
        eprintln!(
            "{HEADER} differs from what src/ffi generates: run `bash tests/gen_header.sh` and commit the header"
        );
        return ExitCode::FAILURE;
    }
    // Only touch the file when it changes, so make-style tools and editors
    // see no change when there is none.
    if old.as_deref() != Some(text.as_bytes()) {
        if let Err(e) = std::fs::write(&path, &text) {
            eprintln!("tollgate-gen-header: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{HEADER}: written");
    } else {
        println!("{HEADER}: up to date");
    }
    ExitCode::SUCCESS
}

/// The crate's version from its Cargo.toml (the first `version = "..."`,
/// which is [package]'s), for TG_VERSION_STRING.
fn crate_version(root: &Path) -> Result<String, String> {
    let manifest =
        std::fs::read_to_string(root.join("Cargo.toml")).map_err(|e| format!("Cargo.toml: {e}"))?;
    manifest
        .lines()
        .find_map(|l| {
            let v = l.strip_prefix("version")?.trim_start().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
        .ok_or_else(|| "Cargo.toml has no version".to_string())
}

fn generate(root: &Path) -> Result<String, String> {
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml"))
        .map_err(|e| format!("cbindgen.toml: {e}"))?;
    // The guard build.rs had: a new file of the C ABI must get a section,
    // or its items would silently be missing from the header.
    let dir = std::fs::read_dir(root.join("src/ffi")).map_err(|e| format!("src/ffi: {e}"))?;
    for entry in dir {
        let path = entry.map_err(|e| format!("src/ffi: {e}"))?.path();
        let rel = format!("src/ffi/{}", path.file_name().unwrap().to_string_lossy());
        if !SECTIONS.iter().any(|(f, _)| *f == rel) {
            return Err(format!(
                "{rel} is not a section of the header: add it to SECTIONS in tools/gen-header/src/main.rs"
            ));
        }
    }

    let version = crate_version(root)?;
    let mut out = String::new();
    out.push_str(config.header.as_deref().unwrap_or(""));
    out.push_str("\n\n#ifndef TOLLGATE_H\n#define TOLLGATE_H\n\n");
    out.push_str(config.autogen_warning.as_deref().unwrap_or(""));
    out.push_str("\n\n");
    for inc in &config.sys_includes {
        writeln!(out, "#include <{inc}>").unwrap();
    }
    writeln!(
        out,
        "\n/** The version this header describes, as text (tg_version_string() gives the library's). */\n#define TG_VERSION_STRING \"{version}\""
    )
    .unwrap();

    let scratch = std::env::temp_dir().join(format!("tollgate-gen-header-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let sections = write_sections(root, &config, &scratch, &mut out);
    let _ = std::fs::remove_dir_all(&scratch);
    sections?;
    out.push_str("\n#endif /* TOLLGATE_H */\n");
    Ok(out)
}

fn write_sections(
    root: &Path,
    config: &cbindgen::Config,
    scratch: &Path,
    out: &mut String,
) -> Result<(), String> {
    for (file, title) in SECTIONS {
        let mut section = config.clone();
        section.header = None;
        section.include_guard = None;
        section.autogen_warning = None;
        section.sys_includes = Vec::new();
        section.no_includes = true;
        // cbindgen takes a lone file for a crate root and would follow its
        // `mod` lines to src/*.rs (the core's modules): parse a copy
        // without them.
        let text = std::fs::read_to_string(root.join(file)).map_err(|e| format!("{file}: {e}"))?;
        let own: String = text
            .lines()
            .filter(|l| !(l.starts_with("mod ") && l.ends_with(';')))
            .flat_map(|l| [l, "\n"])
            .collect();
        let copy = scratch.join(file.replace('/', "_"));
        std::fs::write(&copy, own).map_err(|e| format!("{}: {e}", copy.display()))?;
        let mut bytes = Vec::new();
        cbindgen::Builder::new()
            .with_config(section)
            .with_src(&copy)
            .generate()
            .map_err(|e| format!("cbindgen could not read {file}: {e}"))?
            .write(&mut bytes);
        let text = String::from_utf8(bytes).map_err(|_| "cbindgen wrote non-UTF-8".to_string())?;
        if text.trim().is_empty() {
            continue;
        }
        let bar = "-".repeat(72 - 6 - title.len().min(60));
        writeln!(out, "\n/* ---- {title} {bar} */\n").unwrap();
        out.push_str(text.trim_matches('\n'));
        out.push('\n');
    }
    Ok(())
}

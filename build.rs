//! Writes include/tollgate.h with cbindgen, one section per file of the C
//! ABI (src/ffi.rs, then src/ffi/*.rs in reading order), so the header
//! reads in sections instead of cbindgen's order (all constants, then all
//! types, then all functions). The header is committed; CI regenerates it
//! and fails if it differs. The shared library gets its SONAME here too.

use std::fmt::Write as _;
use std::path::Path;

/// The header's sections: (file, title). Each file of src/ffi must be here.
const SECTIONS: [(&str, &str); 9] = [
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
        "src/ffi/answer.rs",
        "Whole answers: status, headers and body for every outcome",
    ),
];

fn main() {
    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    // The shared library's SONAME: callers record libtollgate.so.0, which
    // changes only when the ABI does.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtollgate.so.0");

    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let root = Path::new(&dir);
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    for entry in std::fs::read_dir(root.join("src/ffi")).expect("src/ffi") {
        let path = entry.expect("src/ffi entry").path();
        let rel = format!("src/ffi/{}", path.file_name().unwrap().to_string_lossy());
        assert!(
            SECTIONS.iter().any(|(f, _)| *f == rel),
            "{rel} is not a section of the header: add it to build.rs"
        );
    }

    let version = std::env::var("CARGO_PKG_VERSION").unwrap();
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
        let text = std::fs::read_to_string(root.join(file)).expect("section file");
        let own: String = text
            .lines()
            .filter(|l| !(l.starts_with("mod ") && l.ends_with(";")))
            .flat_map(|l| [l, "\n"])
            .collect();
        let copy = Path::new(&std::env::var("OUT_DIR").unwrap()).join(file.replace('/', "_"));
        std::fs::write(&copy, own).expect("write the section copy");
        let mut bytes = Vec::new();
        cbindgen::Builder::new()
            .with_config(section)
            .with_src(&copy)
            .generate()
            .unwrap_or_else(|e| panic!("cbindgen could not read {file}: {e}"))
            .write(&mut bytes);
        let text = String::from_utf8(bytes).expect("cbindgen writes UTF-8");
        if text.trim().is_empty() {
            continue;
        }
        let bar = "-".repeat(72 - 6 - title.len().min(60));
        writeln!(out, "\n/* ---- {title} {bar} */\n").unwrap();
        out.push_str(text.trim_matches('\n'));
        out.push('\n');
    }
    out.push_str("\n#endif /* TOLLGATE_H */\n");

    let path = root.join("include/tollgate.h");
    // Only touch the file when it changes, so builds don't dirty the tree.
    if std::fs::read(&path).ok().as_deref() != Some(out.as_bytes()) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, out).unwrap();
    }
}

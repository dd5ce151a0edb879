//! Writes include/tollgate.h from src/ffi.rs and src/ffi/*.rs with cbindgen
//! (given each file: it does not follow `mod` declarations by itself). The header is
//! committed; CI regenerates it and fails if it differs.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let mut config =
        cbindgen::Config::from_file(Path::new(&dir).join("cbindgen.toml")).expect("cbindgen.toml");
    // The one string constant, from the crate's version.
    let version = std::env::var("CARGO_PKG_VERSION").unwrap();
    config.after_includes = Some(format!(
        "\n/** The version this header describes, as text (tg_version_string() gives the library's). */\n#define TG_VERSION_STRING \"{version}\""
    ));
    // The shared library's SONAME: callers record libtollgate.so.0, which
    // changes only when the ABI does.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtollgate.so.0");
    let mut parts: Vec<_> = std::fs::read_dir(Path::new(&dir).join("src/ffi"))
        .expect("src/ffi")
        .map(|e| e.expect("src/ffi entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    parts.sort();
    let mut builder = cbindgen::Builder::new()
        .with_config(config)
        .with_src(Path::new(&dir).join("src/ffi.rs"));
    for p in parts {
        builder = builder.with_src(p);
    }
    let header = builder
        .generate()
        .expect("cbindgen could not read src/ffi.rs");
    let out = Path::new(&dir).join("include/tollgate.h");
    let mut bytes = Vec::new();
    header.write(&mut bytes);
    // Only touch the file when it changes, so builds don't dirty the tree.
    if std::fs::read(&out).ok().as_deref() != Some(&bytes[..]) {
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        std::fs::write(&out, &bytes).unwrap();
    }
}

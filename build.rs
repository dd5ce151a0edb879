//! The shared library's SONAME, the one thing the library's build needs
//! besides rustc. The C header is not written here: tests/gen_header.sh
//! writes and verifies include/tollgate.h, so a crate that depends on
//! tollgate builds no cbindgen and writes no file.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Callers record libtollgate.so.0, which changes only when the ABI does.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtollgate.so.0");
}

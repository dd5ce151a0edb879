#!/usr/bin/env bash
# Writes include/tollgate.h from the C ABI (src/ffi.rs, src/ffi/*.rs) with
# cbindgen, in one section per file (tools/gen-header):
#   bash tests/gen_header.sh           write it (after changing src/ffi)
#   bash tests/gen_header.sh --verify  fail if the committed header differs
# run-all's `header` suite runs the verify mode. The library's own build
# (build.rs) no longer writes it, so crates that depend on tollgate never
# build cbindgen.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet -p tollgate-gen-header -- "$@" "$PWD"

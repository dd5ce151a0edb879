#!/usr/bin/env bash
# The quick loop: the library's unit tests and the engine tests, in seconds.
# The full command is tests/run-all.sh; the lint command tests/lint.sh.
set -eu
cd "$(dirname "$0")/.."
cargo test --release --quiet --lib --test engine --test clock --test file_faults "$@"

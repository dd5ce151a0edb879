#!/usr/bin/env bash
# The quick loop: the library's unit tests and the engine tests (the
# engine's behaviour, clocks, file faults), in seconds, without any feature.
# The full command is tests/run-all.sh; the lint command tests/lint.sh.
set -eu
cd "$(dirname "$0")/.."
cargo test --release --quiet --lib --test engine "$@"

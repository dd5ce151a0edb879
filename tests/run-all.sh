#!/usr/bin/env bash
# Every test of the project, in one command (the README's, and CI's).
#   bash tests/run-all.sh            all suites
#   SKIP="nginx python" bash tests/run-all.sh   leave some out (local use)
# Each suite prints its own closing lines; the last line here sums the suites.
set -u
cd "$(dirname "$0")/.."
skip=" ${SKIP:-} "
passed=0
failed=0
failures=()

suite() {
    local name=$1
    shift
    if [[ $skip == *" $name "* ]]; then
        echo "== $name: skipped (SKIP)"
        return
    fi
    echo "== $name: $*"
    local t0=$SECONDS
    if "$@"; then
        passed=$((passed + 1))
        echo "== $name: ok ($((SECONDS - t0)) s)"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "== $name: FAILED ($((SECONDS - t0)) s)"
    fi
}

header_is_generated() {
    # build.rs regenerates include/tollgate.h; the committed one must match.
    cargo build --release --quiet &&
        git diff --exit-code -- include/tollgate.h
}

miri() {
    if ! cargo +nightly miri --version >/dev/null 2>&1; then
        echo "miri is not installed: rustup component add --toolchain nightly miri" >&2
        return 1
    fi
    # The core's unit tests (slot protocol, region, keys, decisions, the C
    # ABI's helpers, racing threads sized for miri). Operator walks over
    # whole tables (ops::) are too slow interpreted and run natively above.
    MIRIFLAGS="-Zmiri-disable-isolation" cargo +nightly miri test --lib -- --skip ops::
}

suite format cargo fmt --all -- --check
suite header header_is_generated
suite rust cargo test --release
suite miri miri
suite c-cpp bash tests/c/run.sh
suite python bash bindings/python/test.sh
suite nginx bash bindings/nginx/test.sh

echo
if [ "$failed" -gt 0 ]; then
    echo "failed suites: ${failures[*]}"
fi
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

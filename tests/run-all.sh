#!/usr/bin/env bash
# Every test of the project, in one command (the README's, and CI's). It
# first installs what the tests need (tests/setup.sh: Debian packages when
# root, miri, the pinned Python venv), then runs every suite.
#   bash tests/run-all.sh            all suites
#   SKIP="nginx python" bash tests/run-all.sh   leave some out (local use)
#   bash tests/quick.sh              the library's tests only, in seconds
# Each suite prints its own closing lines; the last line here sums the suites.
set -u
cd "$(dirname "$0")/.."
if ! bash tests/setup.sh; then
    echo "suites: 0 passed, 1 failed (set-up: tests/setup.sh)"
    exit 1
fi
export TOLLGATE_VENV="${TOLLGATE_VENV:-$PWD/.venv}"
export PATH="$TOLLGATE_VENV/bin:$PATH"
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

public_api() {
    # The crate's public API, listed by cargo-public-api (tests/setup.sh
    # installs it), must be the committed listing: an API change shows in
    # review as a change of tests/public-api.txt (tests/public_api.sh).
    bash tests/public_api.sh --verify
}

miri() {
    # The core's unit tests (slot protocol, region, keys, decisions, the C
    # ABI's helpers, racing threads sized for miri). Operator walks over
    # whole tables (operator::) are too slow interpreted and run natively above.
    # Without the default features (a library user's build) and with
    # `leases`: the lease layer runs over the memory store; the quota
    # store's client (feature `redis`) talks to sockets, which the
    # interpreter does not run.
    # The interpreter runs on one core: the tests in two halves at once,
    # built once before.
    local run=(env MIRIFLAGS=-Zmiri-disable-isolation
        cargo +nightly miri test --lib --no-default-features --features leases)
    local half=(lease:: policy::) a b pa ra rb
    "${run[@]}" --no-run || return 1
    a=$(mktemp)
    b=$(mktemp)
    "${run[@]}" -- --skip operator:: "${half[@]}" >"$a" 2>&1 &
    pa=$!
    "${run[@]}" -- --skip operator:: "${half[@]/#/--skip=}" >"$b" 2>&1
    rb=$?
    wait "$pa"
    ra=$?
    cat "$a" "$b"
    rm -f "$a" "$b"
    [[ $ra -eq 0 && $rb -eq 0 ]]
}

tower_layer() {
    # The tower layer (feature `tower`, off in the suites above), with the
    # quota store as a service would join it: its example is built first,
    # as its test runs it; then its unit tests and its doc test (the
    # README's sample), which need the feature too.
    cargo build --release --features tower,redis --examples &&
        cargo test --release --features tower,redis --test tower --lib &&
        cargo test --release --features tower,redis --doc
}

fuzz() {
    # Each libFuzzer target, seeded and bounded: a smoke run in CI (the long
    # runs are by hand, see fuzz/Cargo.toml). The seeded corpus tests in
    # `cargo test` (tests/checks/region_fuzz.rs, tests/checks/body_fuzz.rs) run too.
    local t log
    log=$(mktemp)
    for t in region_attach body_scan usage_scan; do
        if ! (cd fuzz && cargo +nightly fuzz run "$t" -- -seed=1 -runs=200000 -max_total_time=20 \
            -max_len=8192 -rss_limit_mb=2048) >"$log" 2>&1; then
            tail -n 40 "$log"
            rm -f "$log"
            return 1
        fi
        echo "fuzz $t: $(grep -E '^Done' "$log")"
    done
    rm -f "$log"
}

suite lint bash tests/lint.sh
# include/tollgate.h as tests/gen_header.sh writes it from src/ffi.
suite header bash tests/gen_header.sh --verify
suite api public_api
# With the command and the quota store (features `cli` and `redis`; a
# library user's default has neither): tests/store.rs and tests/leases.rs
# start real redis-server processes (a single server and 3-master
# Clusters) themselves, tests/processes.rs runs the `tollgate` command.
# The suites that start servers run beside a redis-server and an nginx they
# did not start (tests/bystanders.sh), which must survive them: a
# developer's own servers are never stopped by name, service or port.
suite rust bash tests/bystanders.sh cargo test --release --features cli,redis
suite tower tower_layer
suite miri miri
suite fuzz fuzz
suite c-cpp bash tests/bystanders.sh bash tests/c/run.sh
suite python bash tests/bystanders.sh bash bindings/python/test.sh
suite nginx bash tests/bystanders.sh bash bindings/nginx/test.sh

echo
if [ "$failed" -gt 0 ]; then
    echo "failed suites: ${failures[*]}"
fi
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

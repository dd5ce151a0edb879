#!/usr/bin/env bash
# C and C++ users' tests, against the real library:
#  1. tests/c/test_capi.c linked to libtollgate.so and, separately, statically
#     to libtollgate.a (both built with -std=c11 -Wall -Wextra -Werror -pedantic),
#     plus a sanitizer build against the shared library;
#     tests/c/test_disconnect_race.c (connect and disconnect beside decisions
#     on other threads) under AddressSanitizer and, separately,
#     ThreadSanitizer; with TOLLGATE_TSAN_RUST=1 also against a library
#     itself built with ThreadSanitizer (nightly, -Zbuild-std: minutes);
#  2. bindings/cpp/test_tollgate.cpp (C++17 wrapper, plus the conformance
#     table tests/conformance.json), also under sanitizers;
#  3. bindings/c/install.sh into a temporary prefix, then bindings/c/example.c
#     built against the installed copy through pkg-config and run.
# The quota-store test talks to a redis-server this script starts.
# Builds into target/ctest/. Set TOLLGATE_NO_BUILD=1 to skip the cargo build
# (the library with the quota store and the `tollgate` command the install
# test copies: --features cli,redis).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/target/ctest
rel=$root/target/release
cd "$root"

fail=0
step() { printf '\n== %s\n' "$*"; }
bad() { echo "FAIL: $*" >&2; fail=1; }

# Runs a test binary (bounded in time) and requires its last line to read "N passed, 0 failed".
run_counted() {
    local name=$1; shift
    local log=$out/$name.log rc=0
    timeout 90 "$@" >"$log" 2>&1 || rc=$?
    cat "$log"
    local last
    last=$(tail -n 1 "$log")
    if [ "$rc" -ne 0 ] || ! [[ "$last" =~ ^[0-9]+\ passed,\ 0\ failed$ ]]; then
        bad "$name (exit $rc, last line: '$last')"
    fi
}

if [ "${TOLLGATE_NO_BUILD:-0}" != 1 ]; then
    step "cargo build --release --features cli,redis"
    cargo build --release --features cli,redis
fi
for f in include/tollgate.h "$rel/libtollgate.so" "$rel/libtollgate.a"; do
    [ -f "$f" ] || { echo "missing $f" >&2; exit 1; }
done
mkdir -p "$out"
# Programs linked to the build tree's libtollgate.so record its SONAME,
# libtollgate.so.0, and look for that name at run time.
ln -sf libtollgate.so "$rel/libtollgate.so.0"

# A real redis-server for the quota-store test (test_leases): on 127.0.0.1,
# a free port, no persistence, stopped on exit.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tg-ctest-XXXXXX")
redis_pid=
cleanup() {
    if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
command -v redis-server >/dev/null || { echo "redis-server is missing: tests/setup.sh installs it" >&2; exit 1; }
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
    --daemonize no >"$tmp/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do
    redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
done
redis-cli -p "$redis_port" ping | grep -q PONG || { cat "$tmp/redis.log"; echo "redis-server did not start" >&2; exit 1; }
export TOLLGATE_TEST_REDIS_URL=redis://127.0.0.1:$redis_port/0

CC=${CC:-gcc}
CXX=${CXX:-g++}
CFLAGS=(-std=c11 -Wall -Wextra -Werror -pedantic -O1 -g)
# What a Rust staticlib needs from the system (rustc --print native-static-libs).
NATIVE_LIBS=(-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)

step "C test, shared library"
"$CC" "${CFLAGS[@]}" -Iinclude tests/c/test_capi.c -o "$out/test_capi_shared" \
    -L"$rel" -ltollgate -Wl,-rpath,"$rel" -lpthread
grep -q "$rel/libtollgate.so" <<<"$(ldd "$out/test_capi_shared")" || bad "test_capi_shared does not load $rel/libtollgate.so"
run_counted test_capi_shared "$out/test_capi_shared"

step "C test, static library"
"$CC" "${CFLAGS[@]}" -Iinclude tests/c/test_capi.c -o "$out/test_capi_static" \
    "$rel/libtollgate.a" "${NATIVE_LIBS[@]}"
if grep -q libtollgate <<<"$(ldd "$out/test_capi_static")"; then bad "test_capi_static links libtollgate dynamically"; fi
run_counted test_capi_static "$out/test_capi_static"

step "C test, shared library, AddressSanitizer + UBSan + LeakSanitizer"
# Catches the library writing past a caller's buffer (its copies go through
# the intercepted memcpy) and handles the C side leaks.
if "$CC" "${CFLAGS[@]}" -fsanitize=address,undefined -fno-omit-frame-pointer -Iinclude tests/c/test_capi.c \
    -o "$out/test_capi_asan" -L"$rel" -ltollgate -Wl,-rpath,"$rel" -lpthread 2>"$out/asan-build.log"; then
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        run_counted test_capi_asan "$out/test_capi_asan"
else
    cat "$out/asan-build.log"
    echo "SKIP: this compiler cannot build with -fsanitize=address,undefined (install libasan/libubsan)"
fi

step "C race test: connect and disconnect beside decisions, AddressSanitizer + UBSan"
# Issue 15: checker threads decide (and share, and read the lease counters)
# while the main thread connects and disconnects the handle, to a closed port
# and then to the redis-server above. A link freed while a decision holds it
# is a crash or a double free here.
race_src=tests/c/test_disconnect_race.c
if "$CC" "${CFLAGS[@]}" -fsanitize=address,undefined -fno-omit-frame-pointer -Iinclude "$race_src" \
    -o "$out/test_disconnect_race_asan" -L"$rel" -ltollgate -Wl,-rpath,"$rel" -lpthread 2>"$out/race-asan-build.log"; then
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        run_counted test_disconnect_race_asan "$out/test_disconnect_race_asan"
else
    cat "$out/race-asan-build.log"
    echo "SKIP: this compiler cannot build with -fsanitize=address,undefined (install libasan/libubsan)"
fi

step "C race test, ThreadSanitizer"
# libtollgate itself is not instrumented: its own ordering (Rust atomics, the
# futex-based std locks) is invisible to TSan, which would then take the
# malloc, free and memcmp it intercepts inside the library for races between
# threads that are in fact ordered. called_from_lib leaves those calls
# unchecked; TSan checks the test's side and fails on a crash inside the
# library. TOLLGATE_TSAN_RUST=1 (below) checks the library's own accesses.
printf 'called_from_lib:libtollgate.so\n' >"$tmp/tsan.supp"
if "$CC" "${CFLAGS[@]}" -fsanitize=thread -Iinclude "$race_src" \
    -o "$out/test_disconnect_race_tsan" -L"$rel" -ltollgate -Wl,-rpath,"$rel" -lpthread 2>"$out/race-tsan-build.log"; then
    TSAN_OPTIONS="suppressions=$tmp/tsan.supp halt_on_error=1" \
        run_counted test_disconnect_race_tsan "$out/test_disconnect_race_tsan"
else
    cat "$out/race-tsan-build.log"
    echo "SKIP: this compiler cannot build with -fsanitize=thread (install libtsan)"
fi

if [ "${TOLLGATE_TSAN_RUST:-0}" = 1 ]; then
    step "C race test, ThreadSanitizer over the library itself (nightly, -Zbuild-std)"
    # Every Rust access instrumented, std included, so nothing is suppressed.
    # The test links Rust's own TSan runtime (GCC's lacks entry points the
    # newer LLVM instrumentation calls); the C side is then not instrumented.
    tsan_target=$root/target/tsan
    triple=$(rustc -vV | sed -n 's/^host: //p')
    tsan_rel=$tsan_target/$triple/release
    if tsan_sysroot=$(rustc +nightly --print sysroot) \
        && tsan_rt=$tsan_sysroot/lib/rustlib/$triple/lib/librustc-nightly_rt.tsan.a \
        && RUSTFLAGS="-Zsanitizer=thread" CARGO_TARGET_DIR=$tsan_target \
            cargo +nightly build -Zbuild-std --target "$triple" --release --lib \
        && ln -sf libtollgate.so "$tsan_rel/libtollgate.so.0" \
        && "$CC" "${CFLAGS[@]}" -Iinclude "$race_src" -o "$out/test_disconnect_race_tsan_rust" \
            -L"$tsan_rel" -ltollgate -Wl,-rpath,"$tsan_rel" \
            -Wl,--whole-archive "$tsan_rt" -Wl,--no-whole-archive -lpthread -ldl -lm -lrt -lstdc++; then
        TSAN_OPTIONS=halt_on_error=1 \
            run_counted test_disconnect_race_tsan_rust "$out/test_disconnect_race_tsan_rust"
    else
        bad "test_disconnect_race_tsan_rust: building the instrumented library or the test failed (needs nightly with rust-src)"
    fi
fi

step "C++ wrapper test (with tests/conformance.json)"
# The test reads the conformance table with nlohmann/json (Debian
# nlohmann-json3-dev, installed by tests/setup.sh).
read -r -a JSON_CFLAGS <<<"$(pkg-config --cflags nlohmann_json 2>/dev/null || true)"
CXXFLAGS=(-std=c++17 -Wall -Wextra -Werror -O1 -g -Iinclude -Ibindings/cpp "${JSON_CFLAGS[@]}")
export TOLLGATE_CONFORMANCE=$root/tests/conformance.json
if ! "$CXX" "${CXXFLAGS[@]}" -x c++ -E - <<<'#include <nlohmann/json.hpp>' >/dev/null 2>&1; then
    bad "nlohmann/json.hpp not found: install nlohmann-json3-dev (tests/setup.sh does)"
else
    "$CXX" "${CXXFLAGS[@]}" bindings/cpp/test_tollgate.cpp \
        -o "$out/test_tollgate_cpp" -L"$rel" -ltollgate -Wl,-rpath,"$rel" -pthread
    run_counted test_tollgate_cpp "$out/test_tollgate_cpp"

    step "C++ wrapper test, AddressSanitizer + UBSan + LeakSanitizer"
    # Catches the wrapper's own memory faults (the body scan's memory, views
    # into it, the header callback) and leaks. -Wno-maybe-uninitialized: GCC
    # 12 warns falsely inside libstdc++'s <regex> under -fsanitize (GCC PR 105562).
    SAN=(-fsanitize=address,undefined -fno-omit-frame-pointer)
    if "$CXX" "${SAN[@]}" -x c++ - -o "$out/san-probe" <<<'int main() { return 0; }' 2>/dev/null; then
        "$CXX" "${CXXFLAGS[@]}" -Wno-maybe-uninitialized "${SAN[@]}" bindings/cpp/test_tollgate.cpp \
            -o "$out/test_tollgate_cpp_asan" -L"$rel" -ltollgate -Wl,-rpath,"$rel" -pthread
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
            run_counted test_tollgate_cpp_asan "$out/test_tollgate_cpp_asan"
    else
        echo "SKIP: this compiler cannot build with -fsanitize=address,undefined (install libasan/libubsan)"
    fi
fi

step "install into a temporary prefix, build example.c with pkg-config"
prefix=$tmp/prefix
bindings/c/install.sh --prefix "$prefix" --no-build
for f in lib/libtollgate.so lib/libtollgate.a include/tollgate.h include/tollgate.hpp lib/pkgconfig/tollgate.pc; do
    [ -e "$prefix/$f" ] || bad "install did not create $f"
done
if [ -x "$rel/tollgate" ]; then [ -x "$prefix/bin/tollgate" ] || bad "install did not copy bin/tollgate"; fi
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
pkg-config --exists tollgate || bad "pkg-config does not find tollgate"
[ "$(pkg-config --modversion tollgate)" = "$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)" ] \
    || bad "pkg-config version differs from Cargo.toml"
echo "pkg-config --cflags --libs tollgate: $(pkg-config --cflags --libs tollgate)"

# shellcheck disable=SC2046  # word splitting of pkg-config output is intended
cc -std=c11 -Wall -Wextra -Werror -pedantic bindings/c/example.c $(pkg-config --cflags --libs tollgate) -o "$tmp/example"
grep -q "$prefix/lib/libtollgate.so" <<<"$(LD_LIBRARY_PATH=$prefix/lib ldd "$tmp/example")" \
    || bad "example does not load the installed libtollgate.so"
LD_LIBRARY_PATH=$prefix/lib timeout 20 "$tmp/example" >"$out/example.out" || bad "example exited non-zero"
cat "$out/example.out"
check_out() { grep -qF -- "$1" "$out/example.out" || bad "example output lacks: $1"; }
check_out "30 allowed, 1 denied (limited by minute)"
check_out "HTTP/1.1 429 Too Many Requests"
check_out "x-ratelimit-limit-requests: 30"
check_out "x-ratelimit-remaining-requests: 0"
check_out "x-ratelimit-limit-requests-day: 15000"
check_out "x-ratelimit-remaining-requests-day: 14970"
check_out "retry-after: "
check_out '"type":"rate_limit_exceeded"'
check_out '"code":"rate_limit_exceeded"'
check_out "DeepSeek-V3.1"

# The same example linked statically through the .pc file's Libs.private.
# shellcheck disable=SC2046
cc -std=c11 bindings/c/example.c $(pkg-config --cflags tollgate) -o "$tmp/example_static" \
    -L"$prefix/lib" -Wl,-Bstatic -ltollgate -Wl,-Bdynamic \
    $(pkg-config --static --libs-only-l tollgate | sed 's/-ltollgate//')
if grep -q libtollgate <<<"$(ldd "$tmp/example_static")"; then bad "example_static links libtollgate dynamically"; fi
grep -qF "30 allowed, 1 denied" <<<"$(timeout 20 "$tmp/example_static")" || bad "static example output"

# C++ through the installed headers.
cat >"$tmp/hello.cpp" <<'CPP'
#include <tollgate.hpp>
#include <cstdio>
int main() {
    tollgate::Limiter lim(tollgate::Policy::builtin(), 16);
    tollgate::Request r;
    r.account = "installed";
    r.model = "gpt-oss-120b";
    auto d = lim.check(r);
    std::printf("%s %u\n", d.allowed ? "allowed" : "denied", d.minute_limit);
    return tollgate::version_number() == TG_VERSION_NUMBER && d.allowed ? 0 : 1;
}
CPP
# shellcheck disable=SC2046
c++ -std=c++17 -Wall -Wextra -Werror "$tmp/hello.cpp" $(pkg-config --cflags --libs tollgate) -o "$tmp/hello"
grep -qx "allowed 150" <<<"$(LD_LIBRARY_PATH=$prefix/lib timeout 20 "$tmp/hello")" || bad "installed C++ hello"

echo
if [ "$fail" -ne 0 ]; then
    echo "tests/c/run.sh: FAILED"
    exit 1
fi
echo "tests/c/run.sh: all passed"

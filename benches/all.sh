#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md in one run, side by side with what a user
# would pick instead, so the figures share one machine state. ~25 minutes.
#   bash benches/all.sh [OUT_DIR]      (default target/bench-all)
# Needs what tests/setup.sh installs (valgrind, nginx, redis-server, the .venv) and wrk
# and libclang-dev (the shared vs-governor bench installs them when root).
# BEFORE=/path/to/older/checkout also runs the shared governor comparison
# on that tree (built with `cargo build --release` there), for a before /
# after table from the same run.
# The load average is printed before and after: the machine may be shared.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/bench-all}
mkdir -p "$out"
cd "$root"
export PATH="$root/.venv/bin:$PATH"
step() { printf '\n== %s  (load: %s)\n' "$*" "$(cut -d' ' -f1-3 /proc/loadavg)"; }

step "build"
cargo build --release -q --features cli,redis
step "criterion: cargo bench --bench decide"
cargo bench -q --bench decide 2>&1 | tee "$out/decide.txt" | grep -E 'time:' || true
python3 benches/table.py | tee "$out/decide-table.txt"
step "instructions per decision: cargo bench --bench icount"
cargo bench -q --bench icount 2>&1 | tee "$out/icount.txt" | tail -n 6
step "memory: cargo bench --bench memory"
cargo bench -q --bench memory 2>&1 | tee "$out/memory.txt" | tail -n 6
if [ -n "${PROCS:-}" ]; then
step "processes and threads: cargo bench --bench procs"
cargo bench -q --bench procs 2>&1 | tee "$out/procs.txt" | grep -E 'time:|ratio' || true
fi
step "more than one host, own redis-server: cargo bench --features redis --bench redis"
cargo bench -q --features redis --bench redis 2>"$out/redis-progress.txt" | tee "$out/redis.txt" | awk '/^details:/ { d = 1 } !d' ||
    echo "the redis bench failed: see $out/redis-progress.txt"
step "C ABI vs governor: ../shared/bench/vs-governor/run.sh"
if [ -d "$root/../shared/bench/vs-governor" ]; then
    bash "$root/../shared/bench/vs-governor/run.sh" 2>&1 | tee "$out/vs-governor.txt" | tail -n 3
    if [ -n "${BEFORE:-}" ]; then
        step "the same on $BEFORE"
        TOLLGATE_DIR="$BEFORE" VS_GOVERNOR_TARGET="$out/vs-governor-before" \
            bash "$root/../shared/bench/vs-governor/run.sh" 2>&1 | tee "$out/vs-governor-before.txt" | tail -n 3
    fi
else
    echo "no ../shared/bench/vs-governor beside the checkout: skipped"
fi
step "nginx: PIN=1 WORKERS=1 THREADS=1 REPEAT=5 DURATION=3s benches/nginx.sh"
PIN=1 WORKERS=1 THREADS=1 REPEAT=5 DURATION=3s bash benches/nginx.sh 2>&1 | tee "$out/nginx.txt" | tail -n 30
step "Python: benches/python.py and benches/python_asgi.py"
(export TOLLGATE_LIBRARY=$root/target/release/libtollgate.so PYTHONPATH=$root/bindings/python/src; python3 benches/python.py && python3 benches/python_asgi.py) 2>&1 | tee "$out/python.txt" | tail -n 20
step "done: outputs in $out"

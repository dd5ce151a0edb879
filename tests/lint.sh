#!/usr/bin/env bash
# The lint command (CI runs it as a suite of tests/run-all.sh):
#   rustfmt and clippy (warnings are errors) over every target;
#   ruff and mypy --strict over the Python package (bindings/python/lint.sh);
#   nginx's C style over the module: 80 columns, spaces, no trailing blanks.
# Needs the project's venv on PATH for ruff and mypy (tests/setup.sh).
set -u
cd "$(dirname "$0")/.."
rc=0
step() {
    echo "-- lint: $*"
    "$@" || rc=1
}
nginx_style() {
    local f bad=0
    for f in bindings/nginx/*.c bindings/nginx/*.h; do
        [ -e "$f" ] || continue
        awk -v f="$f" '
            length > 80 { printf "%s:%d: longer than 80 columns\n", f, NR; bad = 1 }
            /\t/        { printf "%s:%d: tab\n", f, NR; bad = 1 }
            / +$/       { printf "%s:%d: trailing blanks\n", f, NR; bad = 1 }
            END { exit bad }' "$f" || bad=1
    done
    return $bad
}
step cargo fmt --all -- --check
# Every feature, every target: missing docs and unsafe blocks without a
# SAFETY comment are warnings in src/lib.rs, so errors here.
step cargo clippy --release --all-targets --features cli,tower,redis --quiet -- -D warnings
# The core alone (a library user's default, and what miri builds).
step cargo clippy --release --lib --no-default-features --quiet -- -D warnings
# The lease layer over the memory store alone (what miri runs).
step cargo clippy --release --lib --no-default-features --features leases --quiet -- -D warnings
# The API docs: no broken or private links.
step env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --features cli,tower,redis --quiet
# The header generator (tests/gen_header.sh).
step cargo clippy -p tollgate-gen-header --quiet -- -D warnings
if [ -f bindings/python/lint.sh ]; then
    step bash bindings/python/lint.sh
fi
step nginx_style
if [ $rc -eq 0 ]; then echo "lint: clean"; else echo "lint: FAILED"; fi
exit $rc

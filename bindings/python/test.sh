#!/usr/bin/env bash
# Builds the tollgate wheel (its build step runs `cargo build --release
# --lib --features redis`) and
# tests the installed package, with its bundled libtollgate.so, on every
# CPython the README claims:
#   - the full suite on the project venv's Python (3.11, tests/setup.sh): a
#     throwaway venv gets only the wheel, and sees the project venv's packages
#     (pytest, fastapi, uvicorn, httpx, openai) through a .pth file, so
#     nothing is downloaded for it;
#   - the core tests (check, headers, bodies, errors, the ASGI middleware,
#     the quota store: test_core, test_arguments, test_bodies, test_asgi,
#     test_redis but its uvicorn test) on every other
#     CPython >= 3.9 present: pyenv's ($PYENV_ROOT/versions/3.*) and
#     Debian's (/usr/bin/python3.N). Each gets a throwaway venv with the
#     wheel and, from PyPI, pytest (and FastAPI and httpx where they
#     install) at the versions tests/requirements.txt pins, with
#     tests/constraints-py310.txt, or tests/requirements-py39.txt where the
#     pinned pytest needs a newer Python. What does not install is said in
#     the output, and the test needing it is skipped.
#
# The packages for the full suite (pytest, fastapi, uvicorn, httpx, openai;
# setuptools and wheel to build) come from the python first on PATH, which
# tests/setup.sh makes the project venv's from the pinned tests/requirements.txt.
#
# PYTHON   the interpreter with those packages (default: python3 on PATH)
# TOLLGATE_PYTHONS  the interpreters for the core tests, instead of those
#          found (space-separated paths; set and empty: none)
# TOLLGATE_TEST_MODE=library skips the wheel: it builds the library and runs
#          the tests from src/ with TOLLGATE_LIBRARY pointing at target/release
#          (or $CARGO_TARGET_DIR/release), on PYTHON only.
# TOLLGATE_LIBRARY_BUILD  a built libtollgate.so for the wheel to carry,
#          instead of running cargo (setup.py).
#
# The tests start their own servers (redis-server, uvicorn) on free ports
# and stop only those, by pid: a developer's own servers are never touched.
# Extra arguments go to every pytest run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
mode="${TOLLGATE_TEST_MODE:-wheel}"
unset TOLLGATE_LIBRARY

need="pytest fastapi uvicorn httpx openai"
[ "$mode" = wheel ] && need="$need setuptools wheel"
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "bindings/python/test.sh: no Python interpreter '$PY'; run tests/setup.sh (it creates the" \
        "project venv at \$TOLLGATE_VENV, default $ROOT/.venv) or set PYTHON" >&2
    exit 1
fi
# shellcheck disable=SC2086 # $need is a word list
missing="$("$PY" - $need <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
)"
if [ -n "$missing" ]; then
    echo "bindings/python/test.sh: $("$PY" -c 'import sys; print(sys.executable)') lacks: $missing." >&2
    echo "  Run tests/setup.sh: it creates the project venv at \$TOLLGATE_VENV (default $ROOT/.venv)" >&2
    echo "  from tests/requirements.txt and puts it first on PATH; or set PYTHON to a python that has them." >&2
    exit 1
fi

# The quota store's tests (tests/test_redis.py) start real redis-server
# processes: Debian's package, installed here when missing (as root).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bindings/python/test.sh: redis-server and redis-cli are needed; install Debian's redis-server" \
            "package (tests/setup.sh does, as root)" >&2
        exit 1
    fi
    echo "== apt-get install redis-server (for tests/test_redis.py)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }
    # The package may start a service of its own (on port 6379): it is left
    # alone. The tests start theirs on free ports and stop only those, by pid.
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-py.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

cd "$HERE"
if [ "$mode" = wheel ]; then
    echo "== building the wheel (runs cargo build --release --lib --features redis)"
    # Build from a copy so build/ and *.egg-info never land in the work tree.
    mkdir -p "$WORK/pkg"
    cp -r "$HERE/pyproject.toml" "$HERE/setup.py" "$HERE/README.md" "$HERE/src" "$WORK/pkg/"
    TOLLGATE_REPO_ROOT="$ROOT" "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps \
        --no-build-isolation --no-index -w "$WORK/dist" "$WORK/pkg"
    whl="$(ls "$WORK"/dist/tollgate-*.whl)"
    echo "== built $(basename "$whl")"
    # A native library inside: the wheel must be platform-tagged, not "any".
    case "$(basename "$whl")" in *-py3-none-any.whl) echo "wheel is tagged pure Python" >&2; exit 1 ;; esac
    listing="$("$PY" -m zipfile -l "$whl")"
    for f in tollgate/libtollgate.so tollgate/py.typed tollgate/asgi.py; do
        grep -q "$f" <<<"$listing" || { echo "wheel lacks $f" >&2; exit 1; }
    done

    # The throwaway venv (same interpreter, its own pip from ensurepip, which
    # is bundled: no network) gets the wheel and nothing else.
    "$PY" -m venv "$WORK/venv"
    VPY="$WORK/venv/bin/python"
    "$VPY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps "$whl"
    # Then it sees the project venv's packages: every site-packages directory
    # of $PY, added by site.addsitedir (so their own .pth files work too)
    # after the venv's own, so the installed tollgate comes first.
    site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$PY" - "$site/zz_tollgate_project_venv.pth" <<'EOF'
import site, sys
dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
with open(sys.argv[1], "w") as f:
    f.write("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n")
EOF
    # Run from a directory where src/ is not importable, so the installed copy is tested.
    where_check() { # venv python, venv directory
        (cd "$WORK" && "$1" - "$2" <<'EOF'
import os, platform, sys, tollgate
where = os.path.realpath(tollgate.__file__)
if not where.startswith(os.path.realpath(sys.argv[1]) + os.sep):
    sys.exit(f"test.sh: imported tollgate from {where}, not from the throwaway venv")
print(f"== testing on CPython {platform.python_version()}:", tollgate.__file__, "lib",
      tollgate.library_path, tollgate.library_version())
EOF
        )
    }
    pytest_in() { # venv python, then test files and pytest's arguments
        local vpy=$1
        shift
        (cd "$WORK" && "$vpy" -m pytest -p no:cacheprovider --rootdir "$HERE/tests" -c /dev/null "$@")
    }
    pyver() { "$1" -c 'import platform; print(platform.python_version())'; }
    failed=()
    tested=()
    notes=()

    full_ver="$(pyver "$VPY")"
    export TOLLGATE_BENCH_PYTHON="$VPY"
    if where_check "$VPY" "$WORK/venv" && pytest_in "$VPY" "$HERE/tests" "$@"; then
        tested+=("$full_ver (full suite)")
    else
        failed+=("$full_ver (full suite)")
    fi
    unset TOLLGATE_BENCH_PYTHON

    # The other interpreters: every CPython >= 3.9 that pyenv or Debian has,
    # but not the one the full suite just ran on.
    if [ -n "${TOLLGATE_PYTHONS+set}" ]; then
        read -r -a others <<<"$TOLLGATE_PYTHONS"
    else
        others=()
        while IFS= read -r p; do
            others+=("$p")
        done < <(for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.*/bin/python3 /usr/bin/python3.[0-9]*; do
            case "$p" in *-config | *m) continue ;; esac
            [ -x "$p" ] && echo "$p"
        done | sort -V)
    fi
    same='import os, sys; print(os.path.realpath(sys.base_prefix), sys.version)'
    full_base="$("$PY" -c "$same")"
    core_tests=("$HERE/tests/test_core.py" "$HERE/tests/test_arguments.py" "$HERE/tests/test_bodies.py"
        "$HERE/tests/test_asgi.py" "$HERE/tests/test_redis.py")
    pins=(-c "$ROOT/tests/requirements.txt" -c "$HERE/tests/constraints-py310.txt")
    pipq=(--quiet --disable-pip-version-check)
    n=0
    for p in ${others[@]+"${others[@]}"}; do
        "$p" -c 'import sys; sys.exit(sys.version_info < (3, 9) or sys.implementation.name != "cpython")' \
            2>/dev/null || continue
        [ "$("$p" -c "$same")" = "$full_base" ] && continue
        n=$((n + 1))
        ver="$(pyver "$p")"
        echo "== CPython $ver ($p): core tests"
        venv="$WORK/venv-$n"
        if ! "$p" -m venv "$venv"; then
            failed+=("$ver ($p: no venv)")
            continue
        fi
        vpy="$venv/bin/python"
        log="$WORK/pip-$n.log"
        if "$vpy" -m pip install "${pipq[@]}" "${pins[@]}" pytest fastapi httpx >"$log" 2>&1; then
            got="pytest, FastAPI and httpx as pinned in tests/requirements.txt"
        elif "$vpy" -m pip install "${pipq[@]}" "${pins[@]}" pytest >"$log" 2>&1; then
            got="pytest as pinned in tests/requirements.txt; the pinned FastAPI does not install on $ver: its test is skipped"
        elif "$vpy" -m pip install "${pipq[@]}" -r "$HERE/tests/requirements-py39.txt" >"$log" 2>&1; then
            got="pytest from tests/requirements-py39.txt (the pinned one needs a newer Python); the pinned FastAPI does not install on $ver: its test is skipped"
        else
            tail -n 5 "$log" >&2
            failed+=("$ver ($p: pytest does not install)")
            continue
        fi
        echo "== installed $got"
        "$vpy" -m pip install "${pipq[@]}" --no-index --no-deps "$whl"
        if where_check "$vpy" "$venv" && pytest_in "$vpy" "${core_tests[@]}" "$@"; then
            tested+=("$ver (core tests)")
            case "$got" in *skipped*) notes+=("${got#*; }") ;; esac
        else
            failed+=("$ver (core tests, $p)")
        fi
    done

    list() { local IFS=,; echo "$*" | sed 's/,/, /g'; }
    echo "== python: passed on CPython $(list ${tested[@]+"${tested[@]}"})"
    for note in ${notes[@]+"${notes[@]}"}; do echo "== note: $note"; done
    if [ ${#failed[@]} -gt 0 ]; then
        echo "== python: FAILED on CPython $(list "${failed[@]}")" >&2
        exit 1
    fi
else
    echo "== cargo build --release --lib --features redis"
    (cd "$ROOT" && cargo build --release --lib --features redis)
    # Where cargo put it: CARGO_TARGET_DIR (relative to the root, where cargo
    # ran) when set, as the wheel's build step and bindings/nginx/build.sh take it.
    target="${CARGO_TARGET_DIR:-$ROOT/target}"
    case "$target" in /*) ;; *) target="$ROOT/$target" ;; esac
    export TOLLGATE_LIBRARY="$target/release/libtollgate.so"
    export PYTHONPATH="$HERE/src${PYTHONPATH:+:$PYTHONPATH}"
    cd "$HERE"
    exec "$PY" -m pytest -p no:cacheprovider tests "$@"
fi

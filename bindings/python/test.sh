#!/usr/bin/env bash
# Builds the tollgate wheel (its build step runs `cargo build --release`),
# installs it into a throwaway venv that sees the system's packages (pytest,
# fastapi, uvicorn, httpx, openai, limits), and runs the pytest suite
# against the installed package and its bundled libtollgate.so.
#
# Needs: cargo, gcc, python3 (>= 3.9) with setuptools >= 61 and wheel (pip
# installs wheel into the venv if it is missing), pytest, fastapi, uvicorn,
# httpx, openai.
# TOLLGATE_TEST_MODE=library skips the wheel: it builds the library and runs
# the tests from src/ with TOLLGATE_LIBRARY pointing at target/release.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-py.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
unset TOLLGATE_LIBRARY

cd "$HERE"
mode="${TOLLGATE_TEST_MODE:-wheel}"
if [ "$mode" = wheel ]; then
    "$PY" -m venv --system-site-packages "$WORK/venv"
    VPY="$WORK/venv/bin/python"
    if ! "$VPY" -c "import wheel" 2>/dev/null; then
        "$VPY" -m pip install --quiet --disable-pip-version-check wheel
    fi
    echo "== building the wheel (runs cargo build --release)"
    # Build from a copy so build/ and *.egg-info never land in the work tree.
    mkdir -p "$WORK/pkg"
    cp -r "$HERE/pyproject.toml" "$HERE/setup.py" "$HERE/README.md" "$HERE/src" "$WORK/pkg/"
    TOLLGATE_REPO_ROOT="$ROOT" "$VPY" -m pip wheel --quiet --disable-pip-version-check --no-deps \
        --no-build-isolation -w "$WORK/dist" "$WORK/pkg"
    whl="$(ls "$WORK"/dist/tollgate-*.whl)"
    echo "== built $(basename "$whl")"
    # A native library inside: the wheel must be platform-tagged, not "any".
    case "$(basename "$whl")" in *-py3-none-any.whl) echo "wheel is tagged pure Python" >&2; exit 1 ;; esac
    listing="$("$VPY" -m zipfile -l "$whl")"
    for f in tollgate/libtollgate.so tollgate/py.typed tollgate/asgi.py; do
        grep -q "$f" <<<"$listing" || { echo "wheel lacks $f" >&2; exit 1; }
    done
    "$VPY" -m pip install --quiet --disable-pip-version-check --no-deps "$whl"
    # Run from a directory where src/ is not importable, so the installed copy is tested.
    (cd "$WORK" && "$VPY" -c "import tollgate, sys; print('== testing', tollgate.__file__, 'lib', tollgate.library_path, tollgate.library_version())")
    export TOLLGATE_BENCH_PYTHON="$VPY"
    cd "$WORK"
    exec "$VPY" -m pytest -p no:cacheprovider --rootdir "$HERE/tests" -c /dev/null "$HERE/tests" "$@"
else
    echo "== cargo build --release --lib"
    (cd "$ROOT" && cargo build --release --lib)
    export TOLLGATE_LIBRARY="$ROOT/target/release/libtollgate.so"
    export PYTHONPATH="$HERE/src${PYTHONPATH:+:$PYTHONPATH}"
    cd "$HERE"
    exec "$PY" -m pytest -p no:cacheprovider tests "$@"
fi

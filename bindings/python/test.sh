#!/usr/bin/env bash
# Builds the tollgate wheel (its build step runs `cargo build --release`),
# installs it into a fresh throwaway venv, and runs the pytest suite against
# the installed package and its bundled libtollgate.so.
#
# The test packages (pytest, fastapi, uvicorn, httpx, openai; setuptools and
# wheel to build) come from the project's venv, which tests/setup.sh creates
# from the pinned tests/requirements.txt and puts first on PATH. The
# throwaway venv sees that venv's packages through a .pth file, so nothing is
# downloaded and only the wheel is installed into it.
#
# PYTHON   the interpreter with those packages (default: python3 on PATH)
# TOLLGATE_TEST_MODE=library skips the wheel: it builds the library and runs
#          the tests from src/ with TOLLGATE_LIBRARY pointing at target/release.
# Extra arguments go to pytest.
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

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-py.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

cd "$HERE"
if [ "$mode" = wheel ]; then
    echo "== building the wheel (runs cargo build --release)"
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
    (cd "$WORK" && "$VPY" - "$WORK/venv" <<'EOF'
import os, sys, tollgate
where = os.path.realpath(tollgate.__file__)
if not where.startswith(os.path.realpath(sys.argv[1]) + os.sep):
    sys.exit(f"test.sh: imported tollgate from {where}, not from the throwaway venv")
print("== testing", tollgate.__file__, "lib", tollgate.library_path, tollgate.library_version())
EOF
    )
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

#!/usr/bin/env bash
# ruff and mypy --strict over the package source, with the python first on
# PATH (tests/setup.sh puts the project venv there; it has both pinned).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$(command -v python3 || command -v python || true)"
if [ -z "$PY" ] || ! "$PY" -c 'import ruff, mypy' 2>/dev/null; then
    echo "bindings/python/lint.sh: ${PY:-no python on PATH} lacks ruff or mypy; run tests/setup.sh" \
        "(it creates the project venv and puts it first on PATH)" >&2
    exit 1
fi
cd "$HERE"
echo "== ruff check src ($PY)"
# No caches: nothing is written into the work tree. ruff reads its settings
# (3.9 target, 120 columns) from pyproject.toml; mypy 2 checks as 3.10 at the oldest.
"$PY" -m ruff check --no-cache src
echo "== mypy --strict src"
"$PY" -m mypy --strict --cache-dir=/dev/null src

#!/usr/bin/env bash
# Installs what the tests need, and nothing when it is all there already:
#   - Debian packages (C/C++ toolchain, nginx and its module headers,
#     valgrind, redis-server, Go for the body-parser comparison), with
#     apt-get when running as root, otherwise a list of what to install;
#   - the miri component of the nightly toolchain (rustup), cargo-fuzz and
#     cargo-public-api (from crates.io);
#   - the project's Python venv (TOLLGATE_VENV, default <repo>/.venv) with
#     the pinned packages of tests/requirements.txt;
#   - the official Node `openai` client, pinned in tests/clients (npm ci from
#     its package-lock.json), with Debian's nodejs and npm when the machine
#     has no node: the tests hold the answers to it and never download.
# tests/run-all.sh runs it first; run it alone to prepare a machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TOLLGATE_VENV:-$ROOT/.venv}"
say() { printf '== setup: %s\n' "$*"; }

apt_packages=(
    build-essential pkg-config binutils libc6-dev        # C/C++ tests, install test
    nlohmann-json3-dev                                   # C++ test reads tests/conformance.json
    nginx nginx-dev libpcre2-dev zlib1g-dev libssl-dev   # nginx module build
    libxslt1-dev libgd-dev libgeoip-dev                  # nginx-dev's configure needs these
    valgrind                                             # instruction counts
    redis-server                                         # multi-host tests
    golang-go                                            # body parsers upstreams use
    curl ca-certificates
)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages (run as root, or install them): ${missing[*]}" >&2
        exit 1
    fi
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian's nginx and redis-server packages may start services of their
    # own (ports 80 and 6379): they are left alone. The tests start their own
    # servers on free ports and stop only those, by pid (tests/bystanders.sh).
fi

if ! cargo +nightly miri --version >/dev/null 2>&1; then
    say "rustup: nightly toolchain with miri"
    rustup toolchain list | grep -q '^nightly' ||
        rustup toolchain install nightly --profile minimal >/dev/null
    rustup component add --toolchain nightly miri rust-src >/dev/null
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    say "cargo install cargo-fuzz (libFuzzer runs of the fuzz targets)"
    cargo install --quiet --locked cargo-fuzz
fi

# The public-API check (tests/public_api.sh): pinned, as its reading of
# rustdoc's JSON follows the nightly's format. About 3 minutes of build on
# two cores, once per machine.
if ! cargo public-api --version 2>/dev/null | grep -qF 0.52.0; then
    say "cargo install cargo-public-api 0.52.0 (the public-API check)"
    cargo install --quiet --locked cargo-public-api --version 0.52.0
fi

want="$(sha256sum "$ROOT/tests/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    py="${PYTHON:-python3}"
    say "venv $VENV ($("$py" -V 2>&1)) from tests/requirements.txt"
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
    echo "$want" >"$VENV/.requirements.sha256"
fi
# The Node client (tests/clients/package-lock.json) into tests/clients/node_modules,
# again only when the lock changed since the last install.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: node and npm are missing (run as root, or install Debian's nodejs and npm)" >&2
        exit 1
    fi
    say "apt-get install nodejs npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
CLIENTS="$ROOT/tests/clients"
want="$(sha256sum "$CLIENTS/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$CLIENTS/node_modules/.package-lock.sha256" 2>/dev/null)" != "$want" ]; then
    say "npm ci in tests/clients (node $(node --version))"
    (cd "$CLIENTS" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$CLIENTS/node_modules/.package-lock.sha256"
fi
say "ready"

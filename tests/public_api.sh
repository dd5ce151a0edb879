#!/usr/bin/env bash
# The crate's public Rust API, as cargo-public-api lists it from rustdoc's
# JSON (nightly; tests/setup.sh installs both), against the committed
# listing tests/public-api.txt:
#   bash tests/public_api.sh            rewrite the listing after an API change
#   bash tests/public_api.sh --verify   fail if the API differs from it (CI)
# Every feature is on (cli adds nothing to the library; tower and redis add
# modules), so the listing is the whole API. A change of the API is then a
# change of the listing in the same commit, seen in review: an item removed
# or changed is a breaking change and needs the minor version bumped (0.x)
# and a CHANGELOG entry. There are no release tags; the listing as of each
# release is the file at that release's commit (0.3.0: d9231fa), so
#   git diff d9231fa -- tests/public-api.txt
# is the API's change since (from 0.4.0 on; 0.3.0 predates the listing).
set -euo pipefail
cd "$(dirname "$0")/.."
listing=tests/public-api.txt
want_version=0.52.0
if ! cargo public-api --version 2>/dev/null | grep -qF "$want_version"; then
    echo "tests/public_api.sh: cargo-public-api $want_version is missing: run tests/setup.sh" >&2
    exit 1
fi
now=$(mktemp)
trap 'rm -f "$now"' EXIT
# Blanket impls (Into, From<T> for T...) are the compiler's, not ours; auto
# traits (Send, Sync, Unpin) stay: losing one breaks callers.
cargo public-api --features cli,tower,redis --omit blanket-impls --color never >"$now"
if [ "${1:-}" = --verify ]; then
    if diff -u "$listing" "$now"; then
        echo "public API: as $listing lists it ($(wc -l <"$listing") lines)"
        exit 0
    fi
    echo "public API differs from $listing (above: - listed, + now): if intended," \
        "run bash tests/public_api.sh and commit the listing" >&2
    exit 1
fi
cp "$now" "$listing"
echo "wrote $listing ($(wc -l <"$listing") lines)"

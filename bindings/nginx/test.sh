#!/bin/sh
# Builds the module and runs its end-to-end tests (real nginx, real
# libtollgate, the real tollgate command, real HTTP and openai clients).
#
#   bindings/nginx/test.sh [pytest args]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
"$here/build.sh"
# the file-zone tests run the operator command on nginx's live table
(cd "$here/../.." && "${CARGO:-cargo}" build --release --features cli,redis --bin tollgate)
cd "$here/tests"
PYTHONDONTWRITEBYTECODE=1 exec timeout 900 python3 -m pytest -q -p no:cacheprovider "$@" .

#!/bin/sh
# Installs tollgate for C and C++ users:
#   PREFIX/lib/libtollgate.so (+ soname links), PREFIX/lib/libtollgate.a,
#   PREFIX/include/tollgate.h, PREFIX/include/tollgate.hpp,
#   PREFIX/lib/pkgconfig/tollgate.pc, PREFIX/bin/tollgate (if built).
# Usage: bindings/c/install.sh [--prefix DIR] [--libdir DIR] [--no-build]
# DESTDIR is honoured for staged installs (the .pc file still says PREFIX).
set -eu

prefix=/usr/local
libdir=
build=1
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || { usage >&2; exit 2; }; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --libdir) [ $# -ge 2 ] || { usage >&2; exit 2; }; libdir=$2; shift 2 ;;
        --libdir=*) libdir=${1#--libdir=}; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$prefix" in /*) ;; *) prefix=$(pwd)/$prefix ;; esac
[ -n "$libdir" ] || libdir=$prefix/lib
dest=${DESTDIR:-}

root=$(cd "$(dirname "$0")/../.." && pwd)
rel=$root/target/release

# cargo only rebuilds what changed, so "if needed" is cargo's call; without
# cargo (a prebuilt tree) the artifacts must already be there. The library
# C users get joins a quota store (feature redis); the operator command
# comes along (feature cli).
if [ "$build" = 1 ] && command -v cargo >/dev/null 2>&1; then
    (cd "$root" && cargo build --release --features cli,redis)
fi
for f in "$rel/libtollgate.so" "$rel/libtollgate.a" "$root/include/tollgate.h"; do
    [ -f "$f" ] || { echo "install.sh: missing $f (run cargo build --release --features cli,redis)" >&2; exit 1; }
done

version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$root/Cargo.toml" | head -n 1)
[ -n "$version" ] || { echo "install.sh: no version in Cargo.toml" >&2; exit 1; }

# What the Rust staticlib needs from the system on Linux (rustc's
# --print native-static-libs for this crate); only used with --static.
libs_private="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"

install -d "$dest$libdir/pkgconfig" "$dest$prefix/include"

# Shared library: if it carries a soname, install the versioned file with
# the soname and dev links; otherwise the plain name is what links record.
soname=$(readelf -d "$rel/libtollgate.so" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
if [ -n "$soname" ] && [ "$soname" != libtollgate.so ]; then
    install -m 0755 "$rel/libtollgate.so" "$dest$libdir/libtollgate.so.$version"
    [ "$soname" = "libtollgate.so.$version" ] || ln -sf "libtollgate.so.$version" "$dest$libdir/$soname"
    ln -sf "$soname" "$dest$libdir/libtollgate.so"
else
    rm -f "$dest$libdir/libtollgate.so"
    install -m 0755 "$rel/libtollgate.so" "$dest$libdir/libtollgate.so"
fi
install -m 0644 "$rel/libtollgate.a" "$dest$libdir/libtollgate.a"
install -m 0644 "$root/include/tollgate.h" "$dest$prefix/include/tollgate.h"
install -m 0644 "$root/bindings/cpp/tollgate.hpp" "$dest$prefix/include/tollgate.hpp"

sed -e "s|@PREFIX@|$prefix|g" -e "s|@LIBDIR@|$libdir|g" -e "s|@VERSION@|$version|g" \
    -e "s|@LIBS_PRIVATE@|$libs_private|g" \
    "$root/bindings/c/tollgate.pc.in" | grep -v '^#' > "$dest$libdir/pkgconfig/tollgate.pc"
chmod 0644 "$dest$libdir/pkgconfig/tollgate.pc"

if [ -x "$rel/tollgate" ]; then
    install -d "$dest$prefix/bin"
    install -m 0755 "$rel/tollgate" "$dest$prefix/bin/tollgate"
fi

echo "installed tollgate $version into $dest$prefix"
# Refresh the loader cache for the system prefix only: adding a custom or
# temporary directory to /etc/ld.so.cache would outlive it.
case "$libdir" in
    /usr/lib|/usr/lib64|/usr/local/lib|/usr/local/lib64)
        if [ -z "$dest" ] && [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null 2>&1; then ldconfig || true; fi ;;
    *) echo "at run time: LD_LIBRARY_PATH=$libdir, or link with -Wl,-rpath,$libdir" ;;
esac
echo "use: cc app.c \$(pkg-config --cflags --libs tollgate)   (PKG_CONFIG_PATH=$libdir/pkgconfig if not searched)"

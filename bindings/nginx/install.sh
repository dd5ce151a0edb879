#!/bin/sh
# Installs ngx_http_tollgate_module.so where the installed nginx loads
# modules from, so the load_module line of the README and of
# examples/gateway.conf finds it:
#   MODULES/ngx_http_tollgate_module.so, MODULES being nginx's
#   --modules-path (nginx -V; Debian's /usr/lib/nginx/modules);
#   with --enable also /etc/nginx/modules-enabled/50-mod-http-tollgate.conf
#   (the load_module line; Debian's nginx.conf includes that directory).
# Usage: bindings/nginx/install.sh [--modules-path DIR] [--enable] [--no-build]
# DESTDIR is honoured for staged installs (the load_module line still says
# the path without it). NGINX names the nginx to ask (default: nginx).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
nginx=${NGINX:-nginx}
modules=
enable=0
build=1
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --modules-path) [ $# -ge 2 ] || { usage >&2; exit 2; }
            modules=$2; shift 2 ;;
        --modules-path=*) modules=${1#--modules-path=}; shift ;;
        --enable) enable=1; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [ -z "$modules" ]; then
    # the module is built for this nginx (build.sh): put it where it looks
    modules=$("$nginx" -V 2>&1 | tr ' ' '\n' \
              | sed -n 's/^--modules-path=//p' | head -n 1)
    [ -n "$modules" ] || modules=/usr/lib/nginx/modules
fi
case "$modules" in
    /*) ;;
    *) echo "install.sh: --modules-path must be absolute: $modules" >&2
       exit 2 ;;
esac
dest=${DESTDIR:-}

if [ "$build" = 1 ]; then
    "$here/build.sh"
fi
so=$here/build/ngx_http_tollgate_module.so
[ -f "$so" ] || {
    echo "install.sh: missing $so (run bindings/nginx/build.sh)" >&2; exit 1; }

install -D -m 0644 "$so" "$dest$modules/ngx_http_tollgate_module.so"
line="load_module $modules/ngx_http_tollgate_module.so;"
echo "installed $dest$modules/ngx_http_tollgate_module.so"

if [ "$enable" = 1 ]; then
    conf=$dest/etc/nginx/modules-enabled/50-mod-http-tollgate.conf
    install -d "$(dirname "$conf")"
    echo "$line" > "$conf"
    echo "wrote $conf"
else
    echo "load it from the main context of nginx.conf (or run with --enable):"
fi
echo "    $line"

#!/bin/sh
# Builds ngx_http_tollgate_module.so for the nginx installed on this machine
# (Debian's nginx 1.22.1 with the nginx-dev source tree).
#
#   bindings/nginx/build.sh
#
# 1. cargo build --release --lib --features redis at the repository root
#    (libtollgate.a, with the quota store tollgate_redis joins);
# 2. copies /usr/share/nginx/src to bindings/nginx/build/nginx (the system
#    tree is never modified) and configures it with Debian's own flags
#    (conf_flags, which include --with-compat) so the module's signature
#    matches /usr/sbin/nginx;
# 3. make modules; the result is bindings/nginx/build/ngx_http_tollgate_module.so
#
# Environment: NGINX_SRC (default /usr/share/nginx/src), CARGO (cargo),
# CARGO_TARGET_DIR (where cargo builds; the module links the library there).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
src=${NGINX_SRC:-/usr/share/nginx/src}
build=$here/build
cargo=${CARGO:-cargo}

(cd "$root" && "$cargo" build --release --lib --features redis)

target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in
    /*) ;;
    *) target_dir=$root/$target_dir ;;
esac
lib=$target_dir/release/libtollgate.a
[ -f "$lib" ] || { echo "build.sh: $lib is missing" >&2; exit 1; }
[ -f "$root/include/tollgate.h" ] || {
    echo "build.sh: $root/include/tollgate.h is missing" >&2; exit 1; }

[ -x "$src/configure" ] || {
    echo "build.sh: no nginx source tree at $src (apt-get install nginx-dev)" >&2
    exit 1
}

# The module's config reads TOLLGATE_LIB and TOLLGATE_INCLUDE when
# configure runs and writes them into objs/Makefile, so they go to configure
# (make never reads them), and a library elsewhere (another
# CARGO_TARGET_DIR) configures again.
export TOLLGATE_LIB="$lib" TOLLGATE_INCLUDE="$root/include"

# configure once per source tree and library; make rebuilds the module when
# its sources change
stamp=$build/nginx/.tollgate-configured
if [ ! -f "$stamp" ] || [ "$src/configure" -nt "$stamp" ] \
   || [ "$here/config" -nt "$stamp" ] \
   || [ "$(cat "$stamp")" != "$TOLLGATE_LIB $TOLLGATE_INCLUDE" ]; then
    rm -rf "$build/nginx"
    mkdir -p "$build"
    cp -a "$src" "$build/nginx"
    (
        cd "$build/nginx"
        flags=""
        if [ -f conf_flags ]; then
            # Debian's record of how its nginx was configured: a bash array
            flags=$(bash -c '. ./conf_flags && printf "%s\n" "${NGX_CONF_FLAGS[@]}"')
        else
            flags="--with-compat"
        fi
        # shellcheck disable=SC2086
        echo "$flags" | tr '\n' '\0' | xargs -0 ./configure \
            --with-cc-opt="-O2 -g -fstack-protector-strong -Wformat -Werror=format-security -D_FORTIFY_SOURCE=2" \
            --with-ld-opt="-Wl,-z,relro -Wl,-z,now" \
            --add-dynamic-module="$here" > "$build/configure.log" 2>&1 || {
                tail -30 "$build/configure.log" >&2; exit 1; }
    )
    echo "$TOLLGATE_LIB $TOLLGATE_INCLUDE" > "$stamp"
fi

# the .a is not a make dependency of the .so: relink every time
rm -f "$build/nginx/objs/ngx_http_tollgate_module.so"
make -C "$build/nginx" -f objs/Makefile modules \
    > "$build/make.log" 2>&1 || { tail -40 "$build/make.log" >&2; exit 1; }

cp "$build/nginx/objs/ngx_http_tollgate_module.so" "$build/"
echo "built $build/ngx_http_tollgate_module.so"

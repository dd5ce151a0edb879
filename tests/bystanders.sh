#!/usr/bin/env bash
# Runs a command (a test suite) next to servers it did not start, and fails
# if it stopped them: tests start their own servers on free ports and stop
# only those, by pid, never by process name, service or port.
#
#   bash tests/bystanders.sh COMMAND [ARGS...]
#
# Before the command, starts two bystanders, each on a free 127.0.0.1 port
# with its files in a temporary directory: a redis-server (in the
# foreground of a background job, so its pid is known) and an nginx (a
# minimal configuration, daemon on, its master's pid from its own pid
# file). After the command, each must still be running (the same pid, the
# same program) and answering (PING, GET /). Then they are stopped by pid.
# The exit status is the command's when it failed, else 1 when a bystander
# is gone, else 0. A bystander whose program is not installed is left out,
# with a note.
set -uo pipefail

if [ $# -eq 0 ]; then
    echo "usage: bash tests/bystanders.sh COMMAND [ARGS...]" >&2
    exit 2
fi

say() { printf '== bystanders: %s\n' "$*"; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tg-bystanders.XXXXXX")
chmod 755 "$tmp" # nginx's workers may run as another user
redis_pid=
nginx_pid=
nginx_workers=

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The program a pid runs now (so a pid reused by another program is not
# taken for the bystander).
exe_of() { readlink "/proc/$1/exe" 2>/dev/null; }

alive() { # pid, program path
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null && [ "$(exe_of "$1")" = "$2" ]
}

stop_pid() { # pid, program path: TERM, then KILL after 10 s
    local pid=$1 exe=$2 i
    alive "$pid" "$exe" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 200; i++)); do
        alive "$pid" "$exe" || return 0
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
}

redis_exe=$(command -v redis-server || true)
redis_cli=$(command -v redis-cli || true)
nginx_exe=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
# What /proc/PID/exe shows for each (Debian's redis-server is a link to
# redis-check-rdb, which acts by the name it is called by: run it by its name).
redis_real=
nginx_real=
[ -n "$redis_exe" ] && redis_real=$(readlink -f "$redis_exe")
[ -n "$nginx_exe" ] && nginx_real=$(readlink -f "$nginx_exe")

cleanup() {
    local w
    stop_pid "$nginx_pid" "$nginx_real"
    # Workers outlive a master that was killed (SIGKILL): stop those too.
    for w in $nginx_workers; do
        stop_pid "$w" "$nginx_real"
    done
    stop_pid "$redis_pid" "$redis_real"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

redis_answers() { [ "$("$redis_cli" -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" = PONG ]; }
nginx_answers() {
    if command -v curl >/dev/null 2>&1; then
        [ "$(curl -s --max-time 5 "http://127.0.0.1:$nginx_port/" 2>/dev/null)" = bystander ]
    else
        python3 -c 'import sys, urllib.request
sys.exit(urllib.request.urlopen(sys.argv[1], timeout=5).read() != b"bystander")' \
            "http://127.0.0.1:$nginx_port/" 2>/dev/null
    fi
}

wait_until() { # what, command...: up to 10 s
    local what=$1 i
    shift
    for ((i = 0; i < 200; i++)); do
        "$@" && return 0
        sleep 0.05
    done
    echo "bystanders.sh: $what did not start" >&2
    return 1
}

if [ -n "$redis_exe" ] && [ -n "$redis_cli" ]; then
    redis_port=$(free_port)
    mkdir "$tmp/redis"
    "$redis_exe" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        --dir "$tmp/redis" --logfile "$tmp/redis/redis.log" </dev/null >/dev/null 2>&1 &
    redis_pid=$!
    wait_until "the bystander redis-server (port $redis_port)" redis_answers || {
        cat "$tmp/redis/redis.log" >&2
        exit 1
    }
    say "redis-server pid $redis_pid on 127.0.0.1:$redis_port"
else
    say "no redis-server installed: none started"
fi

if [ -n "$nginx_exe" ]; then
    nginx_port=$(free_port)
    mkdir "$tmp/nginx"
    cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
error_log $tmp/nginx/error.log;
events { worker_connections 16; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    server {
        listen 127.0.0.1:$nginx_port;
        location / { return 200 "bystander"; }
    }
}
EOF
    if ! "$nginx_exe" -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf" \
        -g "pid $tmp/nginx/nginx.pid; daemon on;" </dev/null; then
        cat "$tmp/nginx/error.log" >&2 2>/dev/null
        echo "bystanders.sh: the bystander nginx did not start" >&2
        exit 1
    fi
    wait_until "the bystander nginx's pid file" test -s "$tmp/nginx/nginx.pid" || exit 1
    nginx_pid=$(cat "$tmp/nginx/nginx.pid")
    wait_until "the bystander nginx (port $nginx_port)" nginx_answers || {
        cat "$tmp/nginx/error.log" >&2
        exit 1
    }
    nginx_workers=$(pgrep -P "$nginx_pid" || true)
    say "nginx master pid $nginx_pid on 127.0.0.1:$nginx_port"
else
    say "no nginx installed: none started"
fi

"$@"
rc=$?

gone=()
if [ -n "$redis_pid" ] && ! { alive "$redis_pid" "$redis_real" && redis_answers; }; then
    gone+=("redis-server pid $redis_pid (127.0.0.1:$redis_port)")
fi
if [ -n "$nginx_pid" ] && ! { alive "$nginx_pid" "$nginx_real" && nginx_answers; }; then
    gone+=("nginx pid $nginx_pid (127.0.0.1:$nginx_port)")
fi

if [ ${#gone[@]} -gt 0 ]; then
    for g in "${gone[@]}"; do
        echo "bystanders.sh: '$*' stopped a server it did not start: $g" >&2
    done
    [ "$rc" -ne 0 ] && exit "$rc"
    exit 1
fi
[ -n "$redis_pid$nginx_pid" ] && say "still running after '$*': ${redis_pid:+redis-server pid $redis_pid}${redis_pid:+${nginx_pid:+, }}${nginx_pid:+nginx pid $nginx_pid}"
exit "$rc"

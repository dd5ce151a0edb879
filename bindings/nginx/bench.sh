#!/bin/bash
# Side-by-side throughput of nginx variants on 127.0.0.1, measured with wrk:
#
#   plain          no module loaded
#   module-off     module loaded, no tollgate in the location
#   limit_req      two limit_req zones (account; account+model), never
#                  refusing (burst=1000000 nodelay)
#   tollgate       tollgate, every request allowed (limits of 10^9)
#   tollgate-deny  tollgate with the built-in policy (30 RPM): after the
#                  first 30 requests every answer is the module's 429
#   post-plain     POST of a 180-byte chat completion JSON body, proxied to a
#                  second server block of the same nginx (return 200)
#   post-tollgate  the same with tollgate reading the model from the body
#
# The GET variants serve the same 12-byte static file from a location that
# runs the access phases (no `return`, which would skip them). The model
# comes from a request header (tollgate_model $http_x_model), the account
# from another ($http_x_account), for limit_req and tollgate alike: deriving
# the key (a regex map over the bearer key, an auth subrequest) costs the
# same whatever limiter uses it, so it is left out.
#
# Each variant runs with 1 and 2 workers, REPEAT times round-robin; the
# table shows the median requests per second and the median CPU time (user
# + system) the nginx workers spent per request. Then (INSTR=1, the
# default, needs valgrind) every variant runs once in a single nginx process
# under callgrind, which counts user-space instructions per request: a
# number the machine's load does not change.
#
#   bindings/nginx/bench.sh            (DURATION=8s REPEAT=3 CONNS=50)
#   SKIP_BUILD=1 WAIT_IDLE=0.5 bindings/nginx/bench.sh
#
# WAIT_IDLE=L first waits (30 min at most) for the 1-minute load average to
# drop below L; the load is printed with the results either way. Run as
# root, the script raises its own priority (NICE=-20; nginx and wrk inherit
# it) so that other work on the machine disturbs the numbers less.
# PIN=1 (with WORKERS=1) pins the nginx worker to CPU 1 and wrk to CPU 0.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
module=$here/build/ngx_http_tollgate_module.so
nginx=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
duration=${DURATION:-8s}
repeat=${REPEAT:-3}
threads=${THREADS:-2}
conns=${CONNS:-50}
variants=${VARIANTS:-"plain module-off limit_req tollgate tollgate-deny post-plain post-tollgate"}
workers_list=${WORKERS:-"1 2"}

[ "${SKIP_BUILD:-0}" = 1 ] || "$here/build.sh" >&2
if [ "$(id -u)" = 0 ]; then
    renice -n "${NICE:--20}" -p $$ > /dev/null
fi
command -v wrk >/dev/null || { echo "bench.sh: wrk is not installed" >&2; exit 1; }

work=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
chmod 755 "$work"
pidfile=$work/nginx.pid

stop_nginx() {
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        rm -f "$pidfile"
    fi
}
trap 'stop_nginx; rm -rf "$work"' EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port)
port2=$(free_port)
body='{"model":"Meta-Llama-3.1-8B-Instruct","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello."}],"max_tokens":16}'
cat > "$work/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
EOF

mkdir -p "$work/html" "$work/tmp"
printf "hello world\n" > "$work/html/file.txt"
cat > "$work/allow.toml" <<'EOF'
[models]
"Meta-Llama-3.1-8B-Instruct" = { region = "Global" }

[tiers.developer]
"Meta-Llama-3.1-8B-Instruct" = { rpm = 1000000000, rpd = 1000000000 }
EOF

write_conf() {   # variant workers [single]
    local variant=$1 workers=$2 load="" http="" loc="" post="" single=""
    local affinity=""
    [ "${PIN:-0}" = 1 ] && [ "$workers" = 1 ] && affinity="worker_cpu_affinity 10;"
    [ -n "${3:-}" ] && single="master_process off; daemon off;"
    case $variant in
    plain) ;;
    module-off)
        load="load_module $module;" ;;
    limit_req)
        http='limit_req_zone $http_x_account zone=acct:10m rate=100000000r/s;
    limit_req_zone "$http_x_account:$http_x_model" zone=am:10m rate=100000000r/s;'
        loc='limit_req zone=acct burst=1000000 nodelay;
            limit_req zone=am burst=1000000 nodelay;' ;;
    tollgate)
        load="load_module $module;"
        http="tollgate_zone name=tg size=10m policy=$work/allow.toml;"
        loc='tollgate tg;
            tollgate_account $http_x_account;
            tollgate_model $http_x_model;' ;;
    tollgate-deny)
        load="load_module $module;"
        http="tollgate_zone name=tg size=10m;"
        loc='tollgate tg;
            tollgate_account $http_x_account;
            tollgate_model $http_x_model;' ;;
    post-plain) ;;
    post-tollgate)
        load="load_module $module;"
        http="tollgate_zone name=tg size=10m policy=$work/allow.toml;"
        post='tollgate tg;
            tollgate_account $http_x_account;' ;;
    *) echo "unknown variant $variant" >&2; exit 1 ;;
    esac
    local user=""
    [ "$(id -u)" = 0 ] && user="user root;"
    cat > "$work/nginx.conf" <<EOF
$load
$user
$single
worker_processes $workers;
$affinity
error_log $work/error.log warn;
pid $pidfile;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $work/tmp/body;
    proxy_temp_path $work/tmp/proxy;
    fastcgi_temp_path $work/tmp/fastcgi;
    uwsgi_temp_path $work/tmp/uwsgi;
    scgi_temp_path $work/tmp/scgi;
    $http
    upstream backend {
        server 127.0.0.1:$port2;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$port;
        root $work/html;
        location / {
            $loc
        }
        location /v1/ {
            $post
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$port2;
        location / {
            default_type application/json;
            return 200 '{"ok":true}';
        }
    }
}
EOF
}

worker_ticks() {   # user+system clock ticks of the master's children
    local total=0 pid
    for pid in $(pgrep -P "$(cat "$pidfile")"); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

run_one() {   # variant workers -> prints "rps non2xx total cpu_us_per_req"
    write_conf "$1" "$2"
    "$nginx" -p "$work" -c "$work/nginx.conf"
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/file.txt" && break
        sleep 0.05
    done
    local url="http://127.0.0.1:$port/file.txt" script=() data=()
    case $1 in
    post-*)
        url="http://127.0.0.1:$port/v1/chat/completions"
        script=(-s "$work/post.lua")
        data=(-H 'Content-Type: application/json' -d "$body") ;;
    esac
    # warm up (and, for tollgate-deny, use up the minute)
    for _ in $(seq 40); do
        curl -s -o /dev/null -H 'X-Account: bench-account' \
            -H 'X-Model: Meta-Llama-3.1-8B-Instruct' "${data[@]}" "$url"
    done
    local pin=()
    [ "${PIN:-0}" = 1 ] && pin=(taskset -c 0)
    t0=$(worker_ticks)
    out=$("${pin[@]}" wrk -t"$threads" -c"$conns" -d"$duration" "${script[@]}" \
        -H 'X-Account: bench-account' \
        -H 'X-Model: Meta-Llama-3.1-8B-Instruct' "$url")
    t1=$(worker_ticks)
    stop_nginx
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    total=$(echo "$out" | awk '/requests in/ {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx or 3xx responses:/ {print $5}')
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$total" \
        'BEGIN {printf "%.2f", n ? d * 1e6 / hz / n : 0}')
    echo "$rps ${non2xx:-0} $total $cpu"
}

# The machine may be shared: optionally wait (up to 30 min) for it to calm
# down, and always report the load next to the numbers.
if [ -n "${WAIT_IDLE:-}" ]; then
    for _ in $(seq 360); do
        awk -v max="$WAIT_IDLE" '{exit !($1 < max)}' /proc/loadavg && break
        sleep 5
    done
fi
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

results=$work/results
: > "$results"
for r in $(seq "$repeat"); do
    for w in $workers_list; do
        for v in $variants; do
            line=$(run_one "$v" "$w")
            echo "$v $w $line" >> "$results"
            echo "run $r: $v workers=$w -> $line" >&2
        done
    done
done

# Instructions per request: the same variants in one process (master_process
# off) under callgrind, counted between a reset after the warm-up and a dump
# after wrk. User-space instructions only, but they do not depend on what
# else the machine is doing.
run_instr() {   # variant -> prints "instructions_per_request"
    local url="http://127.0.0.1:$port/file.txt" script=() data=() pid=""
    case $1 in
    post-*)
        url="http://127.0.0.1:$port/v1/chat/completions"
        script=(-s "$work/post.lua")
        data=(-H 'Content-Type: application/json' -d "$body") ;;
    esac
    write_conf "$1" 1 single
    rm -f "$work"/cg.*
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
        "$nginx" -p "$work" -c "$work/nginx.conf" > "$work/cg.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
        curl -s -o /dev/null "http://127.0.0.1:$port/file.txt" && break
        sleep 0.1
    done
    for _ in $(seq 40); do
        curl -s -o /dev/null -H 'X-Account: bench-account' \
            -H 'X-Model: Meta-Llama-3.1-8B-Instruct' "${data[@]}" "$url"
    done
    callgrind_control -z "$pid" > /dev/null
    out=$(wrk -t1 -c4 -d"${INSTR_DURATION:-5s}" "${script[@]}" \
        -H 'X-Account: bench-account' \
        -H 'X-Model: Meta-Llama-3.1-8B-Instruct' "$url")
    callgrind_control -d "$pid" > /dev/null
    # nginx under valgrind sometimes misses a TERM: insist, then KILL
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        kill -TERM "$pid" 2>/dev/null || true
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    total=$(echo "$out" | awk '/requests in/ {print $1}')
    ir=$(awk '/^totals:/ {print $2}' "$work"/cg.*.1)
    awk -v ir="$ir" -v n="$total" 'BEGIN {printf "%.0f", n ? ir / n : 0}'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo
echo "nginx $("$nginx" -v 2>&1 | sed 's/.*\///'), wrk -t$threads -c$conns -d$duration, median of $repeat, $(nproc) CPUs,"
echo "load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "post-* rows compare with post-plain, the others with plain."
echo
echo "| variant | workers | req/s (median) | runs | req/s vs plain | worker CPU µs/req | CPU vs plain | non-2xx share |"
echo "|---|---|---|---|---|---|---|---|"
for w in $workers_list; do
    for v in $variants; do
        case $v in post-*) b=post-plain ;; *) b=plain ;; esac
        base=$(awk -v b="$b" -v w="$w" '$1==b && $2==w {print $3}' "$results" | median)
        med=$(awk -v v="$v" -v w="$w" '$1==v && $2==w {print $3}' "$results" | median)
        runs=$(awk -v v="$v" -v w="$w" '$1==v && $2==w {printf "%s%d", sep, $3; sep=", "}' "$results")
        share=$(awk -v v="$v" -v w="$w" '$1==v && $2==w {n+=$4; t+=$5} END {printf "%.1f%%", t ? 100*n/t : 0}' "$results")
        rel=$(awk -v m="$med" -v b="$base" 'BEGIN {printf "%.1f%%", b ? 100*m/b : 0}')
        cpu=$(awk -v v="$v" -v w="$w" '$1==v && $2==w {print $6}' "$results" | median)
        cbase=$(awk -v b="$b" -v w="$w" '$1==b && $2==w {print $6}' "$results" | median)
        crel=$(awk -v m="$cpu" -v b="$cbase" 'BEGIN {printf "%.1f%%", b ? 100*m/b : 0}')
        printf '| %s | %s | %.0f | %s | %s | %.2f | %s | %s |\n' "$v" "$w" "$med" "$runs" "$rel" "$cpu" "$crel" "$share"
    done
done

if [ "${INSTR:-1}" = 1 ] && command -v valgrind > /dev/null; then
    echo
    echo "User-space instructions per request in one nginx process (callgrind, wrk -t1 -c4 -d${INSTR_DURATION:-5s}):"
    echo
    echo "| variant | instructions/request | vs plain |"
    echo "|---|---|---|"
    declare -A ir
    for v in $variants; do
        ir[$v]=$(run_instr "$v")
        echo "instructions: $v -> ${ir[$v]}" >&2
    done
    for v in $variants; do
        case $v in post-*) b=post-plain ;; *) b=plain ;; esac
        printf '| %s | %s | %s |\n' "$v" "${ir[$v]}" \
            "$(awk -v m="${ir[$v]}" -v b="${ir[$b]:-0}" 'BEGIN {printf "%+.1f%%", b ? 100*(m-b)/b : 0}')"
    done
fi

#!/bin/bash
# Side-by-side cost of nginx variants on 127.0.0.1, measured with wrk.
#
# Every limited variant sends what the module limits: a POST of a 180-byte
# chat completion JSON body to /v1/chat/completions, proxied (keepalive) to
# a second server block of the same nginx that answers `return 200`:
#
#   plain              no module loaded
#   module-off         module loaded, no tollgate in the location
#   limit_req          two limit_req zones (account; account+model), never
#                      refusing (burst=1000000 nodelay)
#   limit_req-headers  limit_req plus add_header of six headers with the
#                      names and value sizes of the module's: what a
#                      hand-written config pays for the same answer
#   tollgate           tollgate, the model read from the body, every request
#                      allowed (limits of 10^9), six headers added
#   tollgate-header    the same with the model from X-Model (tollgate_model
#                      $http_x_model), as limit_req keys it: the body is not
#                      scanned, so this is the like-for-like comparison
#   tollgate-deny      tollgate with a policy of 1 request a minute: after
#                      the warm-up every answer is the module's 429
#   get-plain          GET of a 12-byte static file, no module
#   get-tollgate       the same GET through a tollgate location: not
#                      limited (only POST is), passed unread
#
# The account comes from X-Account for limit_req and tollgate alike, and
# limit_req's second key from X-Model (nginx cannot read the body's model;
# the module does): deriving the account (a regex map over the bearer key,
# an auth subrequest) costs the same whatever limiter uses it.
#
# Each variant runs with 1 and 2 workers, REPEAT times round-robin; the
# table shows the median requests per second and the median CPU time (user
# + system) the nginx workers spent per request. Then (INSTR=1, the
# default, needs valgrind) every variant runs in a single nginx process
# (master_process off) under callgrind, which counts user-space
# instructions per request: a number the machine's load does not change.
# Two counts per variant, after N and after 2N more requests (curl on one
# connection: exact counts), so what a batch costs once cancels:
# (I(2N) - I(N)) / N. INSTR_ONLY=1 runs only this.
# ANNOTATE="tollgate ..." (default tollgate) prints callgrind_annotate's
# per-function view for those variants (CG_OUT=DIR keeps the files).
#
#   benches/nginx.sh            (DURATION=8s REPEAT=3 CONNS=50)
#   SKIP_BUILD=1 WAIT_IDLE=0.5 benches/nginx.sh
#   INSTR_ONLY=1 INSTR_N=4000 benches/nginx.sh
#
# WAIT_IDLE=L first waits (30 min at most) for the 1-minute load average to
# drop below L; the load is printed with the results either way. Run as
# root, the script raises its own priority (NICE=-20; nginx and wrk inherit
# it) so that other work on the machine disturbs the numbers less.
# PIN=1 (with WORKERS=1) pins the nginx worker to CPU 1 and wrk to CPU 0.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
here=$root/bindings/nginx
module=$here/build/ngx_http_tollgate_module.so
nginx=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
duration=${DURATION:-8s}
repeat=${REPEAT:-3}
threads=${THREADS:-2}
conns=${CONNS:-50}
variants=${VARIANTS:-"plain module-off limit_req limit_req-headers tollgate tollgate-header tollgate-deny get-plain get-tollgate"}
workers_list=${WORKERS:-"1 2"}
instr_n=${INSTR_N:-2000}
annotate=${ANNOTATE:-tollgate}

[ "${SKIP_BUILD:-0}" = 1 ] || "$here/build.sh" >&2
if [ "$(id -u)" = 0 ]; then
    renice -n "${NICE:--20}" -p $$ > /dev/null
fi
command -v wrk >/dev/null || { echo "benches/nginx.sh: wrk is not installed" >&2; exit 1; }

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
model=Meta-Llama-3.1-8B-Instruct
body='{"model":"'$model'","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello."}],"max_tokens":16}'
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
LUA
mkdir -p "$work/html" "$work/tmp"
printf "hello world\n" > "$work/html/file.txt"
cat > "$work/allow.toml" <<TOML
[models]
"$model" = { region = "Global" }

[tiers.developer]
"$model" = { rpm = 1000000000, rpd = 1000000000 }
TOML
# one request a minute: after the warm-up every request is refused (a
# minute refusal, as with the built-in policy, but never a pass mid-run)
cat > "$work/deny.toml" <<TOML
[models]
"$model" = { region = "Global" }

[tiers.developer]
"$model" = { rpm = 1, rpd = 1000000000 }
TOML

# the six headers of an allowed decision under allow.toml, by value size:
# limit 10^9 (10 digits), remaining 9 digits, resets 10 digits
add_headers='add_header x-ratelimit-limit-requests 1000000000;
            add_header x-ratelimit-remaining-requests 999999999;
            add_header x-ratelimit-reset-requests 1795816680;
            add_header x-ratelimit-limit-requests-day 1000000000;
            add_header x-ratelimit-remaining-requests-day 999999999;
            add_header x-ratelimit-reset-requests-day 1795824000;'

write_conf() {   # variant workers [single]
    local variant=$1 workers=$2 load="" http="" get="" post="" single=""
    local affinity="" limit_req
    [ "${PIN:-0}" = 1 ] && [ "$workers" = 1 ] && affinity="worker_cpu_affinity 10;"
    [ -n "${3:-}" ] && single="master_process off; daemon off;"
    limit_req='limit_req zone=acct burst=1000000 nodelay;
            limit_req zone=am burst=1000000 nodelay;'
    case $variant in
    plain|get-plain) ;;
    module-off)
        load="load_module $module;" ;;
    limit_req|limit_req-headers)
        http='limit_req_zone $http_x_account zone=acct:10m rate=100000000r/s;
    limit_req_zone "$http_x_account:$http_x_model" zone=am:10m rate=100000000r/s;'
        post=$limit_req
        [ "$variant" = limit_req-headers ] && post="$limit_req
            $add_headers" ;;
    tollgate|tollgate-header|tollgate-deny|get-tollgate)
        load="load_module $module;"
        http="tollgate_zone name=tg size=10m policy=$work/allow.toml;"
        [ "$variant" = tollgate-deny ] &&
            http="tollgate_zone name=tg size=10m policy=$work/deny.toml;"
        post='tollgate tg;
            tollgate_account $http_x_account;'
        [ "$variant" = tollgate-header ] && post="$post
            tollgate_model \$http_x_model;"
        [ "$variant" = get-tollgate ] && get=$post ;;
    *) echo "unknown variant $variant" >&2; exit 1 ;;
    esac
    local user=""
    [ "$(id -u)" = 0 ] && user="user root;"
    cat > "$work/nginx.conf" <<CONF
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
            $get
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
CONF
}

# what a variant sends: the URL, wrk's and curl's arguments
request_of() {   # variant
    case $1 in
    get-*)
        url="http://127.0.0.1:$port/file.txt"
        script=()
        data=() ;;
    *)
        url="http://127.0.0.1:$port/v1/chat/completions"
        script=(-s "$work/post.lua")
        data=(-H 'Content-Type: application/json' -d "$body") ;;
    esac
}

# warm up (and, for tollgate-deny, use up the minute)
warm_up() {
    for _ in $(seq 40); do
        curl -s -o /dev/null -H 'X-Account: bench-account' \
            -H "X-Model: $model" "${data[@]}" "$url"
    done
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
    request_of "$1"
    "$nginx" -p "$work" -c "$work/nginx.conf"
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/file.txt" && break
        sleep 0.05
    done
    warm_up
    local pin=()
    [ "${PIN:-0}" = 1 ] && pin=(taskset -c 0)
    t0=$(worker_ticks)
    out=$("${pin[@]}" wrk -t"$threads" -c"$conns" -d"$duration" "${script[@]}" \
        -H 'X-Account: bench-account' -H "X-Model: $model" "$url")
    t1=$(worker_ticks)
    stop_nginx
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    total=$(echo "$out" | awk '/requests in/ {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx or 3xx responses:/ {print $5}')
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$total" \
        'BEGIN {printf "%.2f", n ? d * 1e6 / hz / n : 0}')
    echo "$rps ${non2xx:-0} $total $cpu"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

if [ "${INSTR_ONLY:-0}" != 1 ]; then

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

echo
echo "nginx $("$nginx" -v 2>&1 | sed 's/.*\///'), wrk -t$threads -c$conns -d$duration, median of $repeat, $(nproc) CPUs,"
echo "load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "get-* rows compare with get-plain, the others with plain."
echo
echo "| variant | workers | req/s (median) | runs | req/s vs plain | worker CPU µs/req | CPU vs plain | non-2xx share |"
echo "|---|---|---|---|---|---|---|---|"
for w in $workers_list; do
    for v in $variants; do
        case $v in get-*) b=get-plain ;; *) b=plain ;; esac
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

fi

# Instructions per request: each variant in one process (master_process
# off) under callgrind. After the warm-up the counters are zeroed; curl
# sends exactly N requests on one keepalive connection, callgrind dumps
# (cg.PID.1), then 2N more and a second dump (cg.PID.2): the per-request
# cost is (I(2N) - I(N)) / N, so what a batch costs once (wrk connecting,
# the dump itself) cancels. User-space instructions only, nginx and the
# module alike, independent of what else the machine is doing.
run_instr() {   # variant -> prints "instructions_per_request"
    local pid="" n i1 i2
    write_conf "$1" 1 single
    request_of "$1"
    rm -f "$work"/cg.*
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
        "$nginx" -p "$work" -c "$work/nginx.conf" > "$work/cg.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
        curl -s -o /dev/null "http://127.0.0.1:$port/file.txt" && break
        sleep 0.1
    done
    warm_up
    callgrind_control -z "$pid" > /dev/null
    for n in "$instr_n" $((2 * instr_n)); do
        for _ in $(seq "$n"); do
            echo "url = \"$url\""
            echo 'output = "/dev/null"'
        done > "$work/urls"
        curl -s -K "$work/urls" -H 'X-Account: bench-account' \
            -H "X-Model: $model" "${data[@]}" > /dev/null
        callgrind_control -d "$pid" > /dev/null
    done
    # nginx under valgrind sometimes misses a TERM: insist, then KILL
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        kill -TERM "$pid" 2>/dev/null || true
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    i1=$(awk '/^totals:/ {print $2}' "$work/cg.$pid.1")
    i2=$(awk '/^totals:/ {print $2}' "$work/cg.$pid.2")
    if [ -n "${CG_OUT:-}" ]; then
        mkdir -p "$CG_OUT"
        cp "$work/cg.$pid.2" "$CG_OUT/callgrind.$1"
    fi
    cp "$work/cg.$pid.2" "$work/keep.$1"
    awk -v a="$i1" -v b="$i2" -v n="$instr_n" \
        'BEGIN {printf "%.0f", n ? (b - a) / n : 0}'
}

# callgrind_annotate's lines as instructions per request: "COUNT name",
# each function once (its debug info names some files twice)
per_request() {   # requests
    awk -v n="$1" -v root="$root/" '/^ *[0-9,]+ +\(/ {
        line = $0; c = $1; gsub(",", "", c)
        sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +(\* +)?/, "", line)
        sub(/ \[.*\]$/, "", line)
        while ((i = index(line, root)) > 0)
            line = substr(line, 1, i - 1) substr(line, i + length(root))
        if (seen[line]++) next
        printf "%8.0f  %s\n", c / n, line }'
}

if [ "${INSTR:-1}" = 1 ] && command -v valgrind > /dev/null; then
    echo
    echo "User-space instructions per request in one nginx process (callgrind, (I(2N) - I(N)) / N, N = $instr_n, curl on one connection):"
    echo
    echo "| variant | instructions/request | vs plain | vs limit_req-headers |"
    echo "|---|---|---|---|"
    declare -A ir
    for v in $variants; do
        ir[$v]=$(run_instr "$v")
        echo "instructions: $v -> ${ir[$v]}" >&2
    done
    for v in $variants; do
        case $v in get-*) b=get-plain ;; *) b=plain ;; esac
        printf '| %s | %s | %s | %s |\n' "$v" "${ir[$v]}" \
            "$(awk -v m="${ir[$v]}" -v b="${ir[$b]:-0}" 'BEGIN {printf "%+.0f", b ? m-b : 0}')" \
            "$(awk -v m="${ir[$v]}" -v b="${ir[limit_req-headers]:-0}" 'BEGIN {if (b) printf "%+.0f", m-b; else printf "-"}')"
    done
    for v in $annotate; do
        [ -f "$work/keep.$v" ] || continue
        echo
        echo "callgrind_annotate, $v: per request over the last 2N = $((2 * instr_n)) requests;"
        echo "inclusive (the module's and the library's functions, and the nginx"
        echo "functions that call them), then self (the top functions)"
        echo
        echo '```'
        callgrind_annotate --inclusive=yes --threshold=100 "$work/keep.$v" \
            2>/dev/null | per_request $((2 * instr_n)) \
            | grep -E 'tollgate|tg_|ngx_http_(core_run_phases|read_client|upstream_init|send_header|output_filter|finalize_request)' \
            | head -"${ANNOTATE_LINES:-40}" || true
        echo
        callgrind_annotate --inclusive=no --threshold=100 "$work/keep.$v" \
            2>/dev/null | per_request $((2 * instr_n)) \
            | grep -vE 'main|libc_start|0x000000000001ab70' \
            | head -"${ANNOTATE_LINES:-40}" || true
        echo '```'
    done
fi

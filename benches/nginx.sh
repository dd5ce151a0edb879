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
# In-flight variants (VARIANTS=in-flight: plain, limit_conn, tollgate,
# tollgate-in-flight; not in the default set):
#   limit_conn         nginx's own concurrency limit, one zone keyed by
#                      account (limit_conn conn 60000: never refusing)
#   tollgate-in-flight tollgate with max_in_flight = 60000 beside the
#                      windows: every request admitted, then released when
#                      its response ends (the pool cleanup)
#
# Token variants (VARIANTS=tokens runs them all; not in the default set):
# the same POST, proxied to an upstream location that answers a chat
# completion with a `usage` object (prompt 24, completion 9, total 33):
# as one JSON body (application/json, 316 bytes), or with the -sse suffix
# as a stream (text/event-stream, 10 chunks in OpenAI's
# stream_options.include_usage form, each with "usage":null, then the usage
# chunk and `data: [DONE]`; 2 449 bytes, sent by `return` in one buffer).
#
#   plain-usage        no module, the usage upstream (the baseline of the
#                      rows below; plain-sse for the -sse rows)
#   tollgate-usage     tollgate, request limits only (the policy of
#                      `tollgate`): what the token rows add to it
#   tollgate-tokens    tollgate, the model and the token estimate read from
#                      the body, a policy with rpm/rpd 10^9 and tpm/tpd
#                      4 000 000 000 (u32's range is the maximum): every
#                      request reserves its estimate (180 bytes / 4 + 16 of
#                      max_tokens = 61) in the access phase, the body
#                      filter reads the usage and settles the ticket (33)
#                      at the last buffer; twelve headers
#   tollgate-tokens-header  the same with the model from X-Model: the body
#                      is not read, the reservation is an empty body's
#                      estimate (default_max_output, 4096), settled to 33
#   after-response     the after-the-response counting of LiteLLM or Envoy
#                      AI Gateway, as a baseline: admission checks the
#                      request windows and that the token windows are not
#                      already full, reserves nothing, and the tokens are
#                      charged only when the usage is read. Plain nginx
#                      cannot read a response's usage and count it, so it
#                      is the same module configured to do that: the model
#                      from X-Model (nothing from the body) and a policy
#                      with [tokens] default_max_output = 0, so the
#                      reservation is 0 tokens, and the body filter settles
#                      the ticket with the usage (charging 33 after the
#                      response). It pays what a gateway counting afterwards
#                      pays in this design (a decision on the token window,
#                      the usage read, one charge), without a second
#                      process or store a real gateway would add: a lower
#                      bound on such a gateway's cost, not LiteLLM itself.
#                      (Its first warm-up request reserves from the body,
#                      through /bind/: see warm_up for why.)
#   plain-sse, tollgate-tokens-sse, after-response-sse, ... (any token
#                      variant with -sse): the same over the stream
#
# TTFB=1 (after the rest; TTFB_ONLY=1 for it alone, TTFB_N runs, default
# 300) measures the time to the first byte of a streamed answer: a small
# python upstream sends an SSE head and first chunk at once, the rest
# after 50 ms (proxy_buffering off); curl's time_starttransfer through a
# location without tollgate and through a tollgate-tokens location of the
# same nginx (1 worker), alternating, medians and their difference.
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
# COMPARE=VARIANT names the instruction table's last column (default
# limit_req-headers; after-response when only the token set runs).
# ANNOTATE="tollgate ..." (default tollgate) prints callgrind_annotate's
# per-function view for those variants (CG_OUT=DIR keeps the files).
#
#   benches/nginx.sh            (DURATION=8s REPEAT=3 CONNS=50)
#   SKIP_BUILD=1 WAIT_IDLE=0.5 benches/nginx.sh
#   INSTR_ONLY=1 INSTR_N=4000 benches/nginx.sh
#   VARIANTS=tokens DURATION=5s TTFB=1 benches/nginx.sh
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
in_flight_variants="plain limit_conn tollgate tollgate-in-flight"
token_variants="plain-usage tollgate-usage tollgate-tokens tollgate-tokens-header after-response plain-sse tollgate-tokens-sse tollgate-tokens-header-sse after-response-sse"
[ "$variants" = tokens ] && variants=$token_variants
[ "$variants" = in-flight ] && variants=$in_flight_variants
workers_list=${WORKERS:-"1 2"}
instr_n=${INSTR_N:-2000}
annotate=${ANNOTATE:-tollgate}
# the instruction table's last column compares with this variant (with its
# -sse twin for -sse rows)
compare=${COMPARE:-limit_req-headers}
case " $variants " in
*" limit_req-headers "*) ;;
*" after-response "*) compare=${COMPARE:-after-response} ;;
esac

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
# token limits never reached: u32's range is the policy's maximum, and one
# nginx run charges far less than 4 * 10^9 (each request settles to 33)
# an in-flight limit never reached (wrk's connections stay far below it):
# each request is admitted, then released when its response ends
cat > "$work/in-flight.toml" <<TOML
[models]
"$model" = { region = "Global" }

[tiers.developer]
"$model" = { rpm = 1000000000, rpd = 1000000000, max_in_flight = 60000 }
TOML
cat > "$work/tokens.toml" <<TOML
[models]
"$model" = { region = "Global" }

[tiers.developer]
"$model" = { rpm = 1000000000, rpd = 1000000000, tpm = 4000000000, tpd = 4000000000 }
TOML
# after the response: the same limits, nothing reserved (an empty body's
# estimate is default_max_output, here 0), usage charged when settled
cat > "$work/after.toml" <<TOML
[models]
"$model" = { region = "Global" }

[tiers.developer]
"$model" = { rpm = 1000000000, rpd = 1000000000, tpm = 4000000000, tpd = 4000000000 }

[tokens]
default_max_output = 0
TOML
# the upstream's answers with usage, as nginx config strings
usage_json='{"id":"chatcmpl-bench","object":"chat.completion","created":1765000000,"model":"'$model'","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":9,"total_tokens":33}}'
sse_chunk() {   # delta finish_reason
    printf 'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1765000000,"model":"%s","choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}],"usage":null}\\n\\n' "$model" "$1" "$2"
}
usage_sse=$(
    sse_chunk '{"role":"assistant","content":""}' null
    for w in Hello! " How" " can" " I" " help" " you" " today" "?"; do
        sse_chunk '{"content":"'"$w"'"}' null
    done
    sse_chunk '{}' '"stop"'
    printf 'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1765000000,"model":"%s","choices":[],"usage":{"prompt_tokens":24,"completion_tokens":9,"total_tokens":33}}\\n\\ndata: [DONE]\\n\\n' "$model"
)

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
    local affinity="" limit_req pass="http://backend" bind=""
    # token variants: the upstream answers with usage, JSON or (-sse) SSE
    case $variant in
    *-sse) variant=${variant%-sse}; pass="http://backend/usage-sse/" ;;
    plain-usage|tollgate-usage|tollgate-tokens*|after-response)
        pass="http://backend/usage-json/" ;;
    esac
    [ "${PIN:-0}" = 1 ] && [ "$workers" = 1 ] && affinity="worker_cpu_affinity 10;"
    [ -n "${3:-}" ] && single="master_process off; daemon off;"
    limit_req='limit_req zone=acct burst=1000000 nodelay;
            limit_req zone=am burst=1000000 nodelay;'
    case $variant in
    plain|get-plain|plain-usage) ;;
    tollgate-usage|tollgate-tokens|tollgate-tokens-header|after-response)
        load="load_module $module;"
        case $variant in
        tollgate-usage) http="tollgate_zone name=tg size=10m policy=$work/allow.toml;" ;;
        after-response) http="tollgate_zone name=tg size=10m policy=$work/after.toml;" ;;
        *) http="tollgate_zone name=tg size=10m policy=$work/tokens.toml;" ;;
        esac
        post='tollgate tg;
            tollgate_account $http_x_account;'
        bind=$post
        case $variant in
        tollgate-tokens-header|after-response) post="$post
            tollgate_model \$http_x_model;" ;;
        esac ;;
    module-off)
        load="load_module $module;" ;;
    limit_conn)
        http='limit_conn_zone $http_x_account zone=conn:10m;'
        post='limit_conn conn 60000;' ;;
    tollgate-in-flight)
        load="load_module $module;"
        http="tollgate_zone name=tg size=10m policy=$work/in-flight.toml;"
        post='tollgate tg;
            tollgate_account $http_x_account;' ;;
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
    # the token variants' locations (none in the other variants' configs,
    # which stay as they were): after-response's /bind/, the same zone with
    # the model and estimate from the body, for the warm-up's first request
    # (see warm_up), and the upstream's answers with usage
    local bind_location="" usage_locations=""
    [ "$pass" = http://backend ] || usage_locations="
        location /usage-json/ {
            default_type application/json;
            return 200 '$usage_json';
        }
        location /usage-sse/ {
            default_type text/event-stream;
            return 200 '$usage_sse';
        }"
    [ "$variant" = after-response ] && bind_location="
        location /bind/ {
            $bind
            proxy_pass $pass;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }"
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
            proxy_pass $pass;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }$bind_location
    }
    server {
        listen 127.0.0.1:$port2;
        location / {
            default_type application/json;
            return 200 '{"ok":true}';
        }$usage_locations
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
    bind_url=""
    case $1 in
    after-response*) bind_url="http://127.0.0.1:$port/bind/chat/completions" ;;
    esac
}

# warm up (and, for tollgate-deny, use up the minute)
warm_up() {
    # A key's token windows are bound to it by its first reservation of
    # more than 0 tokens: until then a settle finds them unbound and
    # charges nothing (the library's rule today, src/slot/tokens.rs), so
    # after-response's first request reserves from the body (61) through
    # /bind/ and its own 0-token reservations then settle as they should.
    [ -z "$bind_url" ] || curl -s -o /dev/null -H 'X-Account: bench-account' \
        -H "X-Model: $model" "${data[@]}" "$bind_url"
    for _ in $(seq 40); do
        curl -s -o /dev/null -H 'X-Account: bench-account' \
            -H "X-Model: $model" "${data[@]}" "$url"
    done
}

# a token variant's answers: two requests in a row, the second's remaining
# tokens must be 33 (the first's usage, settled) below the first's whatever
# was reserved: the bench measures requests that reserve and settle
check_settled() {   # variant
    local a b d=""
    case $1 in tollgate-tokens*|after-response*) ;; *) return 0 ;; esac
    for _ in 1 2 3; do
        a=$(curl -s -D - -o /dev/null -H 'X-Account: bench-account' \
            -H "X-Model: $model" "${data[@]}" "$url" |
            awk -F': ' 'tolower($1)=="x-ratelimit-remaining-tokens" {sub(/\r/, "", $2); print $2}')
        b=$(curl -s -D - -o /dev/null -H 'X-Account: bench-account' \
            -H "X-Model: $model" "${data[@]}" "$url" |
            awk -F': ' 'tolower($1)=="x-ratelimit-remaining-tokens" {sub(/\r/, "", $2); print $2}')
        d=$((${a:-0} - ${b:-0}))
        [ -n "$a" ] && [ "$d" = 33 ] && return 0
    done
    echo "benches/nginx.sh: $1: remaining tokens ${a:-none} then ${b:-none}, not 33 apart: usage not settled" >&2
    exit 1
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
    check_settled "$1"
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

# the variant a row compares with: get-plain, plain-sse, plain-usage, plain
base_of() {
    case $1 in
    get-*) echo get-plain ;;
    *-sse) echo plain-sse ;;
    plain-usage|tollgate-usage|tollgate-tokens*|after-response) echo plain-usage ;;
    *) echo plain ;;
    esac
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

if [ "${INSTR_ONLY:-0}" != 1 ] && [ "${TTFB_ONLY:-0}" != 1 ]; then

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
case " $variants " in
*-sse" "*|*" plain-usage "*|*" tollgate-usage "*|*" tollgate-tokens"*|*" after-response"*)
    echo "get-* rows compare with get-plain, -sse rows with plain-sse, the other token rows with plain-usage, the others with plain." ;;
*)  echo "get-* rows compare with get-plain, the others with plain." ;;
esac
echo
echo "| variant | workers | req/s (median) | runs | req/s vs plain | worker CPU µs/req | CPU vs plain | non-2xx share |"
echo "|---|---|---|---|---|---|---|---|"
for w in $workers_list; do
    for v in $variants; do
        b=$(base_of "$v")
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

if [ "${INSTR:-1}" = 1 ] && [ "${TTFB_ONLY:-0}" != 1 ] && command -v valgrind > /dev/null; then
    echo
    echo "User-space instructions per request in one nginx process (callgrind, (I(2N) - I(N)) / N, N = $instr_n, curl on one connection):"
    echo
    echo "| variant | instructions/request | vs plain | vs $compare |"
    echo "|---|---|---|---|"
    declare -A ir
    for v in $variants; do
        ir[$v]=$(run_instr "$v")
        echo "instructions: $v -> ${ir[$v]}" >&2
    done
    for v in $variants; do
        b=$(base_of "$v")
        c=$compare
        case $v in *-sse) [ -n "${ir[$c-sse]:-}" ] && c=$c-sse ;; esac
        printf '| %s | %s | %s | %s |\n' "$v" "${ir[$v]}" \
            "$(awk -v m="${ir[$v]}" -v b="${ir[$b]:-0}" 'BEGIN {printf "%+.0f", b ? m-b : 0}')" \
            "$(awk -v m="${ir[$v]}" -v b="${ir[$c]:-0}" 'BEGIN {if (b) printf "%+.0f", m-b; else printf "-"}')"
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

# Time to the first byte of a streamed answer, with and without tollgate's
# tokens (TTFB=1 or TTFB_ONLY=1): a python upstream answers every request
# with a chunked text/event-stream whose head and first chunk go out at
# once and the rest (8 chunks, the usage chunk, [DONE]) 50 ms later. One
# nginx, one worker, proxy_buffering off: /plain/ passes it untouched,
# /v1/ through tollgate-tokens (reserve from the body, the filter reading
# every chunk, settle). curl's time_starttransfer, the two alternating.
if [ "${TTFB:-0}" = 1 ] || [ "${TTFB_ONLY:-0}" = 1 ]; then
    ttfb_n=${TTFB_N:-300}
    port3=$(free_port)
    cat > "$work/stream.py" <<'PY'
import socket, socketserver, sys, time
first, rest = sys.stdin.read().split("\n\n", 1)
def chunk(s):
    b = s.encode()
    return b"%x\r\n%s\r\n" % (len(b), b)
head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
class H(socketserver.StreamRequestHandler):
    def handle(self):
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            n = 0
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    break
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    n = int(v)
            self.rfile.read(n)
            self.wfile.write(head + chunk(first + "\n\n"))
            self.wfile.flush()
            time.sleep(0.05)
            self.wfile.write(chunk(rest) + b"0\r\n\r\n")
            self.wfile.flush()
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
    printf '%b' "$usage_sse" | python3 "$work/stream.py" "$port3" &
    stream_pid=$!
    user=""
    [ "$(id -u)" = 0 ] && user="user root;"
    cat > "$work/nginx.conf" <<CONF
load_module $module;
$user
worker_processes 1;
error_log $work/error.log warn;
pid $pidfile;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/tmp/body;
    proxy_temp_path $work/tmp/proxy;
    fastcgi_temp_path $work/tmp/fastcgi;
    uwsgi_temp_path $work/tmp/uwsgi;
    scgi_temp_path $work/tmp/scgi;
    tollgate_zone name=tg size=10m policy=$work/tokens.toml;
    upstream stream {
        server 127.0.0.1:$port3;
        keepalive 8;
    }
    server {
        listen 127.0.0.1:$port;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
        location /plain/ {
            proxy_pass http://stream;
        }
        location /v1/ {
            tollgate tg;
            tollgate_account \$http_x_account;
            proxy_pass http://stream;
        }
    }
}
CONF
    "$nginx" -p "$work" -c "$work/nginx.conf"
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.05
    done
    : > "$work/ttfb"
    for i in $(seq $((ttfb_n + 10))); do
        for where in plain v1; do
            t=$(curl -s -o "$work/ttfb.body" -w '%{time_starttransfer}' \
                -H 'X-Account: bench-account' -H 'Content-Type: application/json' \
                -d "$body" "http://127.0.0.1:$port/$where/chat/completions")
            # the first 10 rounds warm up
            [ "$i" -gt 10 ] && echo "$where $t" >> "$work/ttfb"
        done
    done
    # the last answer came whole, and its usage was settled
    grep -q '^data: \[DONE\]' "$work/ttfb.body" ||
        echo "benches/nginx.sh: the streamed answer came incomplete" >&2
    stop_nginx
    kill "$stream_pid" 2>/dev/null || true
    wait "$stream_pid" 2>/dev/null || true
    q() {   # where quantile -> ms
        awk -v w="$1" '$1==w {print $2 * 1000}' "$work/ttfb" | sort -n |
            awk -v q="$2" '{a[NR]=$1} END {i=int(q*NR+0.5); if (i<1) i=1; printf "%.3f", a[i]}'
    }
    echo
    echo "Time to first byte of a streamed (SSE) answer through nginx, curl time_starttransfer, $ttfb_n runs each, alternating;"
    echo "load average $(cut -d' ' -f1-3 /proc/loadavg):"
    echo
    echo "| location | median ms | p10 ms | p90 ms |"
    echo "|---|---|---|---|"
    for where in plain v1; do
        case $where in plain) name="no tollgate" ;; *) name="tollgate-tokens" ;; esac
        printf '| %s | %s | %s | %s |\n' "$name" "$(q "$where" 0.5)" "$(q "$where" 0.1)" "$(q "$where" 0.9)"
    done
    echo
    echo "median difference: $(awk -v a="$(q v1 0.5)" -v b="$(q plain 0.5)" 'BEGIN {printf "%+.3f", a - b}') ms"
fi

"""End-to-end tests of ngx_http_tollgate_module: real nginx, real library,
real HTTP clients (http.client and the official openai package)."""

import concurrent.futures
import hashlib
import json
import os
import random
import re
import shutil
import string
import subprocess
import time

import openai
import pytest

from conftest import free_port, fresh_minute

HEADERS = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-requests-day",
    "x-ratelimit-remaining-requests-day",
    "x-ratelimit-reset-requests-day",
]

FREE_POLICY = """
[models]
"DeepSeek-V3.1" = { region = "EU" }
"gpt-oss-120b" = { region = "EU" }

[tiers.developer]
"DeepSeek-V3.1" = { rpm = 30, rpd = 15000 }
"gpt-oss-120b" = { rpm = 150, rpd = 50000 }

[tiers.free]
"DeepSeek-V3.1" = { rpm = 2, rpd = 5 }
"""


def assert_six(resp):
    for name in HEADERS:
        assert resp.header(name) is not None, (name, resp.headers)
        assert resp.header(name).isdigit(), (name, resp.header(name))
        assert len(resp.headers[name]) == 1, (name, resp.headers[name])


def client(nginx, key):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{nginx.port}/v1",
                         api_key=key, max_retries=0, timeout=20)


def ask(c, model="DeepSeek-V3.1"):
    return c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}])


# --- basics --------------------------------------------------------------

def test_allowed_request_is_proxied_with_six_headers(nginx):
    fresh_minute()
    nginx.start()
    body = json.dumps({"model": "DeepSeek-V3.1",
                       "messages": [{"role": "user", "content": "hi"}]})
    r = nginx.chat("acct-basic", body=body)
    assert r.status == 200
    assert_six(r)
    assert r.header("x-ratelimit-limit-requests") == "30"
    assert r.header("x-ratelimit-remaining-requests") == "29"
    assert r.header("x-ratelimit-limit-requests-day") == "15000"
    assert r.header("x-ratelimit-remaining-requests-day") == "14999"
    assert r.header("retry-after") is None
    assert r.header("x-tollgate-status") == "PASSED"
    assert r.header("x-tollgate-limited-by") == "NONE"
    assert r.header("x-tollgate-minute-remaining") == "29"
    assert r.header("x-tollgate-day-remaining") == "14999"
    # the upstream saw the body byte for byte
    assert r.header("x-body-sha256") == hashlib.sha256(
        body.encode()).hexdigest()
    # the variables are there in the log phase too (written after the
    # response, so wait for the line)
    assert nginx.wait_file(nginx.access_log, "200 PASSED NONE 29 14999\n")


def test_openai_client_31st_call_raises_rate_limit_error(nginx):
    fresh_minute()
    nginx.start()
    c = client(nginx, "sk-acct-openai")
    for i in range(30):
        raw = c.chat.completions.with_raw_response.create(
            model="DeepSeek-V3.1",
            messages=[{"role": "user", "content": "hello"}])
        assert raw.headers["x-ratelimit-remaining-requests"] == str(29 - i)
        assert raw.parse().choices[0].message.content == "ok"

    with pytest.raises(openai.RateLimitError) as info:
        ask(c)

    e = info.value
    assert e.status_code == 429
    h = e.response.headers
    assert h["x-ratelimit-limit-requests"] == "30"
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-remaining-requests-day"] == "14970"
    assert int(h["retry-after"]) >= 1
    assert int(h["x-ratelimit-reset-requests"]) > time.time() - 1
    assert e.response.headers["content-type"] == "application/json"
    err = e.response.json()["error"]
    assert err["type"] == "rate_limit_exceeded"
    assert err["code"] == "rate_limit_exceeded"
    assert "DeepSeek-V3.1" in err["message"]
    assert e.code == "rate_limit_exceeded"
    assert h["x-tollgate-status"] == "REJECTED"
    assert h["x-tollgate-limited-by"] == "MINUTE"

    # another account is not affected
    assert ask(client(nginx, "sk-other")).choices[0].message.content == "ok"


def test_unknown_model_is_openai_404(nginx):
    nginx.start()
    with pytest.raises(openai.NotFoundError) as info:
        ask(client(nginx, "acct-404"), model="gpt-9-ultra")
    e = info.value
    assert e.status_code == 404
    assert e.code == "model_not_found"
    assert "gpt-9-ultra" in e.response.json()["error"]["message"]
    assert e.response.headers["x-tollgate-status"] == "UNKNOWN_MODEL"
    assert "x-ratelimit-limit-requests" not in e.response.headers


def test_unknown_model_name_is_escaped_in_the_404(nginx):
    nginx.start()
    r = nginx.chat("acct-esc", body=json.dumps({"model": 'a"b\\c\n\u00e9'}))
    assert r.status == 404
    assert r.json()["error"]["message"].startswith(
        'The model `a"b\\c\n\u00e9` does not exist')


# the core's codes (the module's own 400s had none for a body not JSON)
@pytest.mark.parametrize("body, code", [
    (b"not json", "invalid_json"),
    (b"", "invalid_json"),
    (b'{"messages": []}', None),
    # one status in the core for "no model" and "model not a string"
    (b'{"model": 42}', None),
    (b'["DeepSeek-V3.1"]', "invalid_json"),
])
def test_bad_body_is_openai_400(nginx, body, code):
    nginx.start()
    r = nginx.chat("acct-400", body=body)
    assert r.status == 400
    assert r.header("content-type") == "application/json"
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["code"] == code
    assert r.header("x-tollgate-status") == "BAD_REQUEST"


def test_bad_json_raises_openai_bad_request(nginx):
    nginx.start()
    c = client(nginx, "acct-400b")
    with pytest.raises(openai.BadRequestError):
        c.post("/chat/completions", cast_to=object,
               body={"messages": [{"role": "user", "content": "no model"}]})


def test_missing_account_is_401(nginx):
    nginx.start()
    r = nginx.chat(None)
    assert r.status == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert r.header("x-tollgate-status") == "NO_ACCOUNT"


def test_tollgate_off_and_status_code(nginx):
    fresh_minute()
    locations = """
        location /v1/models {
            tollgate off;
            proxy_pass http://api;
        }
        location /v1/ {
            tollgate tg;
            tollgate_account $tg_account;
            tollgate_status 503;
            proxy_pass http://api;
        }
"""
    nginx.start(locations=locations)
    r = nginx.get("/v1/models")
    assert r.status == 200
    assert r.header("x-ratelimit-limit-requests") is None
    assert r.header("x-tollgate-status") is None

    for _ in range(30):
        assert nginx.chat("acct-503").status == 200
    r = nginx.chat("acct-503")
    assert r.status == 503
    assert_six(r)
    assert r.json()["error"]["type"] == "rate_limit_exceeded"


def test_model_from_a_variable_needs_no_body(nginx):
    fresh_minute()
    locations = """
        location /v1/ {
            tollgate tg;
            tollgate_account $tg_account;
            tollgate_model $http_x_model;
            proxy_pass http://api;
        }
"""
    nginx.start(locations=locations)
    # the body is not read: not JSON, and still passed on whole
    h = {"Authorization": "Bearer acct-var", "X-Model": "Qwen3-32B"}
    r = nginx.request("POST", "/v1/chat/completions", b"not json", h)
    assert r.status == 200
    assert r.header("x-body-length") == "8"
    assert r.header("x-ratelimit-limit-requests") == "30"
    assert r.header("x-ratelimit-remaining-requests") == "29"

    # no model in the variable: the core's "no model" answer
    r = nginx.request("POST", "/v1/chat/completions", b"{}",
                      {"Authorization": "Bearer acct-var"})
    assert r.status == 400
    assert r.json()["error"] == {
        "message": "you must provide a model parameter",
        "type": "invalid_request_error", "param": "model", "code": None}

    # only POST is limited (tg_method_limited), with the model from a
    # variable too
    r = nginx.get("/v1/models", headers=h)
    assert r.status == 200
    assert r.header("x-tollgate-status") == "NOT_LIMITED"
    assert r.header("x-ratelimit-limit-requests") is None


def test_values_with_text_and_captures_are_complex_values(nginx):
    """A lone "$name" is read by its index; anything else (text around a
    variable, a regex capture "$1") is still a complex value, evaluated per
    request."""
    fresh_minute()
    locations = """
        location /v1/ {
            tollgate tg;
            tollgate_account "org-$tg_account";
            tollgate_model "${http_x_family}-V3.1";
            proxy_pass http://api;
        }
        location /by-model/ {
            rewrite ^/by-model/([^/]+)/ /v1/chat/completions break;
            tollgate tg;
            # not the map of $tg_account: its regex would take over $1
            tollgate_account $http_x_account;
            tollgate_model $1;
            proxy_pass http://api;
        }
        location /empty/ {
            tollgate tg;
            tollgate_account "";
            tollgate_tier "";
            proxy_pass http://api;
        }
"""
    nginx.start(locations=locations)
    # an empty value is a value with no variables: no account, every time
    r = nginx.request("POST", "/empty/", b'{"model":"DeepSeek-V3.1"}',
                      {"Authorization": "Bearer acct-cv"})
    assert r.status == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    h = {"Authorization": "Bearer acct-cv", "X-Account": "acct-cv",
         "X-Family": "DeepSeek"}
    r = nginx.request("POST", "/v1/chat/completions", b"{}", h)
    assert r.status == 200
    assert r.header("x-ratelimit-remaining-requests") == "29"
    r = nginx.request("POST", "/by-model/DeepSeek-V3.1/chat", b"{}", h)
    assert r.status == 200
    # another account ("acct-cv", not "org-acct-cv"): its own count
    assert r.header("x-ratelimit-remaining-requests") == "29"
    r = nginx.request("POST", "/by-model/DeepSeek-V3.1/chat", b"{}", h)
    assert r.header("x-ratelimit-remaining-requests") == "28"
    r = nginx.request("POST", "/by-model/Nope-1/chat", b"{}", h)
    assert r.status == 404
    assert r.json()["error"]["code"] == "model_not_found"
    # no X-Family: the text alone names no model the policy knows
    r = nginx.request("POST", "/v1/chat/completions", b"{}",
                      {"Authorization": "Bearer acct-cv"})
    assert r.status == 404
    assert "`-V3.1`" in r.json()["error"]["message"]


def test_header_values_outlive_the_filter(nginx):
    """The response's header list points at the numbers in the request's
    context (tg_answer_header_fields): they are still there when the access
    log is written, for a pass and for a refusal."""
    fresh_minute()
    log = nginx.prefix / "sent.log"
    http_extra = (
        "log_format sent '$status l=$sent_http_x_ratelimit_limit_requests "
        "r=$sent_http_x_ratelimit_remaining_requests "
        "d=$sent_http_x_ratelimit_remaining_requests_day "
        "a=$sent_http_retry_after';")
    nginx.start(http_extra=http_extra,
                extra=f"access_log {log} sent;")
    for _ in range(30):
        assert nginx.chat("acct-sent").status == 200
    r = nginx.chat("acct-sent")
    assert r.status == 429
    retry = r.header("retry-after")
    assert nginx.wait_file(log, "200 l=30 r=29 d=14999 a=-\n")
    assert nginx.wait_file(log, "200 l=30 r=0 d=14970 a=-\n")
    assert nginx.wait_file(log, f"429 l=30 r=0 d=14970 a={retry}\n")


def test_get_is_not_limited_across_an_internal_redirect(nginx):
    """The answer to a method that is not limited is decided once, at
    configuration time, and found again after an internal redirect: the
    request is counted once, as NOT_LIMITED, in both locations."""
    fresh_minute()
    dead = free_port()  # nothing listens there: the proxy gets a 502
    locations = f"""
        location /v1/ {{
            tollgate tg;
            tollgate_account $tg_account;
            proxy_pass http://127.0.0.1:{dead};
            error_page 502 = /v1/fallback;
        }}
        location = /v1/fallback {{
            tollgate tg;
            tollgate_account $tg_account;
            tollgate_dry_run on;
            default_type text/plain;
            return 503 "down";
        }}
"""
    nginx.start(locations=locations)
    for _ in range(2):
        r = nginx.get("/v1/models", {"Authorization": "Bearer acct-nl"})
        assert r.status == 503
        assert r.header("x-tollgate-status") == "NOT_LIMITED"
        assert r.header("x-ratelimit-limit-requests") is None
    assert nginx.metrics()[("tollgate_decisions_total", frozenset(
        {"zone": "tg", "model": "(other)",
         "outcome": "not_limited"}.items()))] == 2


def test_get_is_not_limited_and_not_read(nginx):
    """A GET to a limited location was a 400 ("you must provide a model
    parameter"); the core limits only POST: the GET passes unlimited, its
    body unread, uncharged, as NOT_LIMITED."""
    fresh_minute()
    nginx.start()
    h = {"Authorization": "Bearer acct-get", "X-Tier": "gold"}
    r = nginx.get("/v1/models", headers=h)
    assert r.status == 200 and r.body == b"ok\n"
    assert r.header("x-tollgate-status") == "NOT_LIMITED"
    assert r.header("x-tollgate-limited-by") is None
    for name in HEADERS + ["retry-after"]:
        assert r.header(name) is None, name
    # a body that is not JSON is not read either: the upstream gets it
    r = nginx.request("GET", "/v1/models", b"not json", h)
    assert r.status == 200 and r.header("x-upstream") == "answered"
    # nor is an account needed
    assert nginx.get("/v1/models").status == 200
    # nothing was charged
    r = nginx.chat("acct-get")
    assert r.header("x-ratelimit-remaining-requests") == "29"
    assert nginx.metrics()[("tollgate_decisions_total", frozenset(
        {"zone": "tg", "model": "(other)",
         "outcome": "not_limited"}.items()))] == 3
    assert nginx.wait_file(nginx.access_log, "200 NOT_LIMITED - - -\n")


def test_tiers_from_a_header(nginx):
    fresh_minute()
    (nginx.prefix / "policy.toml").write_text(FREE_POLICY)
    nginx.start(zone=f"size=1m policy={nginx.prefix}/policy.toml")

    assert nginx.chat("acct-free", tier="free").status == 200
    assert nginx.chat("acct-free", tier="free").status == 200
    r = nginx.chat("acct-free", tier="free")
    assert r.status == 429
    assert r.header("x-ratelimit-limit-requests") == "2"
    assert r.header("x-ratelimit-limit-requests-day") == "5"

    # the same account as developer is a separate limit
    r = nginx.chat("acct-free", tier="developer")
    assert r.status == 200
    assert r.header("x-ratelimit-limit-requests") == "30"

    r = nginx.chat("acct-free", tier="platinum")
    assert r.status == 500
    assert r.header("x-tollgate-status") == "ERROR"
    assert 'unknown tier "platinum"' in nginx.log()

    # no limit configured for the free tier on this model: by default no
    # access (no number is invented)...
    r = nginx.chat("acct-free", tier="free", model="gpt-oss-120b")
    assert r.status == 403
    assert r.json()["error"]["code"] == "no_limit_configured"
    assert r.header("x-tollgate-status") == "NO_LIMIT"
    assert r.header("x-ratelimit-limit-requests") is None
    # ...and enterprise accounts need a plan (or an enterprise tier table)
    r = nginx.chat("acct-free", tier="enterprise")
    assert r.status == 403

    # ...or, if the operator says so, no limit at all
    nginx.reload(zone=f"size=1m policy={nginx.prefix}/policy.toml",
                 extra="tollgate_no_limit pass;")
    r = nginx.chat("acct-free", tier="free", model="gpt-oss-120b")
    assert r.status == 200
    assert r.header("x-tollgate-status") == "NO_LIMIT"
    assert r.header("x-ratelimit-limit-requests") is None


# --- exactness across workers ---------------------------------------------

def test_exact_across_four_workers(nginx):
    fresh_minute(needed=30)
    nginx.start(workers=4, reuseport=True)

    def one(_):
        r = nginx.chat("acct-race", model="gpt-oss-120b")
        return r.status, r.header("x-worker")

    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        results = list(pool.map(one, range(400)))

    statuses = [s for s, _ in results]
    assert statuses.count(200) == 150
    assert statuses.count(429) == 250
    assert len({w for _, w in results}) > 1, "one worker served everything"

    m = nginx.metrics()
    key = frozenset({"zone": "tg", "model": "gpt-oss-120b",
                     "outcome": "passed"}.items())
    assert m[("tollgate_decisions_total", key)] == 150
    key = frozenset({"zone": "tg", "model": "gpt-oss-120b",
                     "outcome": "rejected"}.items())
    assert m[("tollgate_decisions_total", key)] == 250


# --- reload ----------------------------------------------------------------

def test_reload_keeps_counters(nginx):
    fresh_minute(needed=20)
    nginx.start(workers=2)
    for _ in range(10):
        assert nginx.chat("acct-reload").status == 200
    nginx.reload()
    r = nginx.chat("acct-reload")
    assert r.status == 200
    assert r.header("x-ratelimit-remaining-requests") == "19"
    assert r.header("x-ratelimit-remaining-requests-day") == "14989"
    assert "reconfiguring" in nginx.log()


def test_changed_policy_takes_effect_on_reload(nginx):
    fresh_minute(needed=20)
    policy = nginx.prefix / "policy.toml"
    policy.write_text(FREE_POLICY)
    nginx.start(zone=f"size=1m policy={policy}")
    for _ in range(5):
        assert nginx.chat("acct-policy").status == 200

    policy.write_text(FREE_POLICY.replace("rpm = 30,", "rpm = 10,")
                      + '\n[models."Qwen3-32B"]\nregion = "Global"\n'
                      '[tiers.developer."Qwen3-32B"]\nrpm = 7\nrpd = 70\n')
    assert nginx.chat("acct-policy", model="Qwen3-32B").status == 404
    nginx.reload()

    # a model the new policy adds is known at once, with a metric row
    r = nginx.chat("acct-policy", model="Qwen3-32B")
    assert r.status == 200
    assert r.header("x-ratelimit-limit-requests") == "7"
    assert nginx.metrics()[("tollgate_decisions_total", frozenset(
        {"zone": "tg", "model": "Qwen3-32B", "outcome": "passed"}.items()))
    ] == 1

    # counters kept, compared against the new limit
    r = nginx.chat("acct-policy")
    assert r.status == 200
    assert r.header("x-ratelimit-limit-requests") == "10"
    assert r.header("x-ratelimit-remaining-requests") == "4"
    for _ in range(4):
        assert nginx.chat("acct-policy").status == 200
    r = nginx.chat("acct-policy")
    assert r.status == 429
    assert r.header("x-ratelimit-limit-requests") == "10"


def test_broken_policy_fails_nginx_t_with_file_and_line(nginx):
    policy = nginx.prefix / "broken.toml"
    policy.write_text('[models]\n"DeepSeek-V3.1" = { region = "EU" }\n\n'
                      '[tiers.developer]\n'
                      '"DeepSeek-V3.1" = { rpm = "thirty", rpd = 5 }\n')
    nginx.write(zone=f"size=1m policy={policy}")
    res = nginx.test_config()
    assert res.returncode != 0
    assert f"{policy}:5:" in res.stderr, res.stderr
    assert "test failed" in res.stderr

    policy.write_text('[models]\n"DeepSeek-V3.1" = { region = "EU" }\n\n'
                      '[tiers.developer]\n'
                      '"Nope" = { rpm = 3, rpd = 5 }\n')
    res = nginx.test_config()
    assert res.returncode != 0
    assert f"{policy}:5: " in res.stderr, res.stderr


def test_broken_policy_on_reload_keeps_the_running_config(nginx):
    fresh_minute()
    policy = nginx.prefix / "policy.toml"
    policy.write_text(FREE_POLICY)
    nginx.start(zone=f"size=1m policy={policy}")
    assert nginx.chat("acct-keep").status == 200

    policy.write_text("[tiers.developer\n")
    nginx.signal_reload()
    assert nginx.wait_log(f"invalid policy: {policy}:1")

    r = nginx.chat("acct-keep")
    assert r.status == 200
    assert r.header("x-ratelimit-remaining-requests") == "28"


# --- dry run, table full -------------------------------------------------

def test_dry_run_never_refuses(nginx):
    fresh_minute()
    policy = nginx.prefix / "policy.toml"
    policy.write_text(FREE_POLICY)
    nginx.start(zone=f"size=1m policy={policy}",
                extra="tollgate_dry_run on;")
    seen = []
    for _ in range(7):
        r = nginx.chat("acct-dry", tier="free")
        assert r.status == 200
        assert_six(r)
        seen.append(r.header("x-tollgate-status"))
    assert seen == ["PASSED", "PASSED"] + ["DRY_RUN"] * 5
    assert nginx.wait_log("tollgate: dry run, would answer 429 (DRY_RUN)")

    r = nginx.chat("acct-dry", model="no-such-model")
    assert r.status == 200
    assert r.header("x-tollgate-status") == "UNKNOWN_MODEL"
    assert r.header("x-upstream") == "answered"
    assert nginx.wait_log("tollgate: dry run, would answer 404 "
                          "(UNKNOWN_MODEL)")


def test_dry_run_pass_has_no_retry_after(nginx):
    fresh_minute()
    policy = nginx.prefix / "policy.toml"
    policy.write_text(FREE_POLICY)
    nginx.start(zone=f"size=1m policy={policy}",
                extra="tollgate_dry_run on;")
    for _ in range(3):
        r = nginx.chat("acct-dry-retry", tier="free")
    assert r.header("x-tollgate-status") == "DRY_RUN"
    assert r.header("retry-after") is None


def _fill_table(nginx, n):
    out = []
    for i in range(n):
        r = nginx.chat(f"acct-fill-{i}")
        out.append(r)
    return out


def _slots(nginx):
    return nginx.metrics()[("tollgate_table_slots",
                            frozenset({"zone": "tg"}.items()))]


def test_table_full_closed(nginx):
    nginx.start(zone="size=72k", extra="tollgate_table_full closed;")
    slots = _slots(nginx)
    assert 0 < slots < 200
    results = _fill_table(nginx, slots + 20)
    codes = [r.status for r in results]
    assert 0 < codes.count(200) <= slots
    assert codes.count(503) >= 20
    assert set(codes) == {200, 503}
    full = next(r for r in results if r.status == 503)
    assert full.json()["error"]["code"] == "rate_limiter_full"
    assert full.header("x-tollgate-status") == "TABLE_FULL"
    m = nginx.metrics()
    assert m[("tollgate_table_full_total",
              frozenset({"zone": "tg"}.items()))] == codes.count(503)
    assert m[("tollgate_table_used",
              frozenset({"zone": "tg"}.items()))] == codes.count(200)


def test_table_full_open(nginx):
    fresh_minute()
    nginx.start(zone="size=72k", extra="tollgate_table_full open;")
    slots = _slots(nginx)
    results = _fill_table(nginx, slots + 20)
    assert all(r.status == 200 for r in results)
    full = [r for r in results if r.header("x-tollgate-status") ==
            "TABLE_FULL"]
    assert len(full) >= 20
    assert all(r.header("x-ratelimit-limit-requests") is None for r in full)
    # already-tracked accounts keep being counted
    r = nginx.chat("acct-fill-0")
    assert r.header("x-tollgate-status") == "PASSED"
    assert r.header("x-ratelimit-remaining-requests") == "28"


def test_too_small_zone_is_refused(nginx):
    nginx.write(zone="size=32k")
    res = nginx.test_config()
    assert res.returncode != 0
    assert 'tollgate_zone "tg" is too small' in res.stderr


# --- request bodies --------------------------------------------------------

def test_spooled_body_yields_its_model_and_reaches_upstream_whole(nginx):
    fresh_minute()
    nginx.start(extra="client_body_buffer_size 1k; "
                      "client_max_body_size 20m;")
    rnd = random.Random(7)
    text = "".join(rnd.choice(string.ascii_letters + ' {}[]",:\\')
                   for _ in range(300_000))
    # the model comes last, after a long message full of JSON-like text
    body = json.dumps({
        "messages": [{"role": "user", "content": text},
                     {"role": "user", "content": '"model": "Qwen3-32B"'}],
        "metadata": {"model": "DeepSeek-R1-0528"},
        "model": "gpt-oss-120b",
    }).encode()
    r = nginx.chat("acct-big", body=body)
    assert r.status == 200, r.body[:300]
    assert r.header("x-ratelimit-limit-requests") == "150"
    assert r.header("x-body-length") == str(len(body))
    assert r.header("x-body-sha256") == hashlib.sha256(body).hexdigest()
    assert "a client request body is buffered to a temporary file" \
        in nginx.log()

    # chunked upload, spooled too
    r = nginx.chat("acct-big", body=body, chunked=True)
    assert r.status == 200
    assert r.header("x-ratelimit-remaining-requests") == "148"
    assert r.header("x-body-sha256") == hashlib.sha256(body).hexdigest()


def test_body_in_memory_reaches_upstream_whole(nginx):
    nginx.start()
    body = json.dumps({"model": "DeepSeek-V3.1", "messages": [
        {"role": "user", "content": "x" * 5000}]}).encode()
    r = nginx.chat("acct-mem", body=body)
    assert r.status == 200
    assert r.header("x-body-sha256") == hashlib.sha256(body).hexdigest()


class _Object(list):
    """A JSON object as its (key, value) pairs, duplicates kept."""


def _no_surrogates(v):
    if isinstance(v, str):
        v.encode("utf-8")  # a lone surrogate is not valid text
    elif isinstance(v, list):
        for x in v:
            _no_surrogates(x)


def body_model(body):
    """The module's rule for a body, with Python's json as the oracle for
    what is valid JSON: 400 (not JSON, not an object, no string model),
    "ambiguous" (two or more top-level keys equal to "model" after
    unescaping and ASCII case folding) or the model."""
    try:
        doc = json.loads(body, object_pairs_hook=_Object)
        _no_surrogates(doc)
    except (ValueError, UnicodeEncodeError):
        return 400
    if not isinstance(doc, _Object):
        return 400
    fold = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
    models = [v for k, v in doc if k.translate(fold) == "model"]
    if len(models) > 1:
        return "ambiguous"
    if not models or not isinstance(models[0], str):
        return 400
    return models[0]


LIMITS = {"gpt-oss-120b": "150", "DeepSeek-V3.1": "30",
          "DeepSeek-R1-0528": "60", "Meta-Llama-3.1-8B-Instruct": "1440",
          "DeepSeek-R1-Distill-Llama-70B": "240"}


@pytest.mark.parametrize("body, want", [
    ('{"model":"gpt-oss-120b"}', "gpt-oss-120b"),
    (' \n\t{ "model" :\r\n "gpt-oss-120b" } \n', "gpt-oss-120b"),
    ('{"mod\\u0065l":"gpt-oss-120b"}', "gpt-oss-120b"),
    ('{"model":"gpt\\u002doss-120b"}', "gpt-oss-120b"),
    ('{"model":"gpt-oss\\/120b"}', 404),
    ('{"metadata":{"model":"DeepSeek-V3.1"},"model":"gpt-oss-120b"}',
     "gpt-oss-120b"),
    ('{"model":"gpt-oss-120b","metadata":{"model":"DeepSeek-V3.1"}}',
     "gpt-oss-120b"),
    ('{"messages":[{"content":"\\"model\\":\\"DeepSeek-V3.1\\""}],'
     '"model":"gpt-oss-120b"}', "gpt-oss-120b"),
    ('{"a":[1,-2.5e+3,0.5E-2,true,false,null,{"model":"x"},[[]]],'
     '"model":"gpt-oss-120b"}', "gpt-oss-120b"),
    ('{"model":"DeepSeek-V3.1","model":"gpt-oss-120b"}', "ambiguous"),
    ('{"Model":"gpt-oss-120b"}', "gpt-oss-120b"),
    ('{"x":"\\ud83d\\ude00 \u00e9","model":"gpt-oss-120b"}',
     "gpt-oss-120b"),
    ('{"models":"DeepSeek-V3.1","model":"gpt-oss-120b","mode":"x"}',
     "gpt-oss-120b"),
    ('{"metadata":{"model":"gpt-oss-120b"}}', 400),
    ('{"model":null}', 400),
    ('{"model":["gpt-oss-120b"]}', 400),
    ('{"model":"gpt-oss-120b"', 400),
    ('{"model":"gpt-oss-120b"} x', 400),
    ('{"model":"gpt-oss-120b",}', 400),
    ('{"model":"gpt-oss-120b","n":01}', 400),
    ('{"model":"gpt-oss-120b","n":1.}', 400),
    ('{"model":"gpt-oss-120b","n":tru}', 400),
    ('{"model":"gpt-oss-120b","s":"\\x"}', 400),
    ('{"model":"gpt-oss-120b","s":"\\u12"}', 400),
    ('{"model":"gpt-oss-120b","s":"a\tb"}', 400),
    ("{'model':'gpt-oss-120b'}", 400),
    ('{"model":"nope"}', 404),
    ('{"model":"' + "a" * 300 + '"}', 404),
])
def test_json_scanner(nginx, body, want):
    nginx.start()
    seen = body_model(body)
    r = nginx.chat("acct-json", body=body)
    if want == 400:
        assert seen == 400
        assert r.status == 400, r.body
    elif want == "ambiguous":
        assert seen == "ambiguous"
        assert r.status == 400, r.body
        assert r.json()["error"]["code"] == "ambiguous_model"
    elif want == 404:
        assert isinstance(seen, str)
        assert r.status == 404, r.body
    else:
        assert seen == want
        assert r.status == 200
        assert r.header("x-ratelimit-limit-requests") == LIMITS[want]
        assert r.header("x-body-sha256") == hashlib.sha256(
            body.encode()).hexdigest()


def _random_value(rnd, depth):
    kind = rnd.randrange(7 if depth < 4 else 5)
    if kind == 0:
        return rnd.choice([True, False, None])
    if kind == 1:
        return rnd.choice([0, -1, 17, 3.25, -1e-7, 12345678901234])
    if kind in (2, 3, 4):
        alphabet = 'abc "\\/\n\t{}[]:,\u00e9\u4e2d\U0001f600model'
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(12)))
    if kind == 5:
        return [_random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    return {rnd.choice(["model", "m", "messages", "x"]):
            _random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))}


def test_json_scanner_against_python_on_random_documents(nginx):
    nginx.start()
    rnd = random.Random(20261127)
    for i in range(60):
        model = rnd.choice(sorted(LIMITS))
        doc = {k: _random_value(rnd, 1) for k in
               rnd.sample(["messages", "temperature", "tools", "metadata"],
                          rnd.randrange(5))}
        items = list(doc.items())
        items.insert(rnd.randrange(len(items) + 1), ("model", model))
        body = json.dumps(dict(items), ensure_ascii=rnd.random() < 0.5,
                          indent=rnd.choice([None, 0, 2, "\t"]),
                          separators=rnd.choice([None, (",", ":"),
                                                 (" , ", " : ")]))
        assert json.loads(body)["model"] == model
        r = nginx.chat(f"acct-rand-{i}", body=body)
        assert r.status == 200, (body, r.body)
        assert r.header("x-ratelimit-limit-requests") == LIMITS[model], body


def test_http2_body_is_read_and_proxied_whole(nginx, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    fresh_minute()
    h2 = free_port()
    nginx.start(h2_port=h2, extra="client_body_buffer_size 4k;")
    for size in (100, 200_000):
        body = json.dumps({"messages": [{"role": "user",
                                         "content": "y" * size}],
                           "model": "DeepSeek-V3.1"}).encode()
        path = tmp_path / "body.json"
        path.write_bytes(body)
        out = subprocess.run(
            [curl, "-s", "--http2-prior-knowledge", "-D", "-", "-o",
             os.devnull, "-H", "Authorization: Bearer acct-h2",
             "-H", "Content-Type: application/json",
             "--data-binary", f"@{path}",
             f"http://127.0.0.1:{h2}/v1/chat/completions"],
            capture_output=True, text=True, timeout=60, check=True).stdout
        assert out.startswith("HTTP/2 200"), out
        assert f"x-body-sha256: {hashlib.sha256(body).hexdigest()}" in out
        assert "x-ratelimit-limit-requests: 30" in out


def test_access_phase_refusals_are_not_charged(nginx):
    locations = """
        location /v1/ {
            deny all;
            tollgate tg;
            tollgate_account $tg_account;
            proxy_pass http://api;
        }
"""
    nginx.start(locations=locations)
    r = nginx.chat("acct-denied")
    assert r.status == 403
    assert r.header("x-tollgate-status") is None
    assert not any(v for (name, _), v in nginx.metrics().items()
                   if name == "tollgate_decisions_total")


# --- internal redirects ---------------------------------------------------

def test_internal_redirect_is_charged_once(nginx):
    fresh_minute()
    dead = free_port()  # nothing listens there: the proxy gets a 502
    locations = f"""
        location /v1/ {{
            tollgate tg;
            tollgate_account $tg_account;
            proxy_pass http://127.0.0.1:{dead};
            error_page 502 = /v1/fallback;
        }}
        location = /v1/fallback {{
            tollgate tg;
            tollgate_account $tg_account;
            default_type application/json;
            return 503 '{{"error":{{"message":"upstream down"}}}}';
        }}
"""
    nginx.start(locations=locations)
    r = nginx.chat("acct-redirect")
    assert r.status == 503
    assert r.header("x-ratelimit-remaining-requests") == "29"
    r = nginx.chat("acct-redirect")
    assert r.header("x-ratelimit-remaining-requests") == "28"


def test_upstream_ratelimit_headers_are_replaced(nginx):
    fresh_minute()
    nginx.start()
    r = nginx.chat("acct-dup")
    assert r.headers["x-ratelimit-limit-requests"] == ["30"]
    # the upstream sends its own when asked; the module's replace them
    r = nginx.request("POST", "/v1/chat/completions",
                      b'{"model":"DeepSeek-V3.1"}',
                      {"Authorization": "Bearer acct-dup",
                       "X-Upstream-Ratelimit": "1"})
    assert r.status == 200
    assert r.headers["x-ratelimit-limit-requests"] == ["30"]
    assert r.headers["x-ratelimit-remaining-requests"] == ["28"]
    assert r.headers["x-upstream-other"] == ["kept"]


# --- metrics -------------------------------------------------------------

def test_metrics_endpoint(nginx):
    fresh_minute()
    nginx.start()
    for _ in range(31):
        nginx.chat("acct-metrics")
    nginx.chat("acct-metrics", model="nope")
    nginx.chat("acct-metrics", body="{")
    text = nginx.get("/metrics")
    assert text.status == 200
    assert text.header("content-type").startswith("text/plain; version=0.0.4")
    body = text.body.decode()
    assert "# TYPE tollgate_decisions_total counter" in body
    m = nginx.metrics()

    def dec(model, outcome):
        return m[("tollgate_decisions_total", frozenset(
            {"zone": "tg", "model": model, "outcome": outcome}.items()))]

    assert dec("DeepSeek-V3.1", "passed") == 30
    assert dec("DeepSeek-V3.1", "rejected") == 1
    assert dec("(other)", "unknown_model") == 1
    assert dec("(other)", "bad_request") == 1
    # every model of the policy has its row from the start
    assert dec("Meta-Llama-3.1-8B-Instruct", "passed") == 0
    zone = frozenset({"zone": "tg"}.items())
    assert m[("tollgate_table_used", zone)] == 1
    # 1 MB at 144 bytes a slot (with the in-flight areas of 0.4)
    assert m[("tollgate_table_slots", zone)] > 6500
    assert m[("tollgate_region_bytes", zone)] > 0
    assert re.search(r'^tollgate_table_full_total\{zone="tg"\} 0$', body,
                     re.M)
    # clock faults (tg_stats.clock_faults): none with nginx's own clock;
    # test_file_zone makes one with a second process on the table
    assert "# TYPE tollgate_clock_faults_total counter" in body
    assert m[("tollgate_clock_faults_total", zone)] == 0
    assert dec("(other)", "not_limited") == 0


def test_json_scanner_against_python_on_mutated_documents(nginx):
    """Single-byte edits of valid bodies: the module must call a body valid
    exactly when Python's json module does (and the rule for "model")."""
    nginx.start()
    rnd = random.Random(4242)
    base = [
        '{"model":"gpt-oss-120b","messages":[{"role":"user",'
        '"content":"hi \\"there\\" \\\\ \\u00e9"}],"temperature":0.7,'
        '"stream":false,"stop":null,"n":1,"logit_bias":{"50256":-100}}',
        '{ "messages" : [ ] , "model" : "DeepSeek-V3.1" , "x" : [1,2e3,-0.5] }',
    ]
    for i in range(150):
        b = list(rnd.choice(base))
        for _ in range(rnd.randint(1, 2)):
            pos = rnd.randrange(len(b))
            op = rnd.randrange(3)
            ch = rnd.choice('{}[]":,\\ -+.0123456789eEtrufalsn\t\nabmodel')
            if op == 0:
                del b[pos]
            elif op == 1:
                b.insert(pos, ch)
            else:
                b[pos] = ch
        body = "".join(b)
        seen = body_model(body)
        if seen in (400, "ambiguous"):
            want = 400
        else:
            want = 200 if seen in LIMITS else 404
        r = nginx.chat(f"acct-mut-{i}", body=body)
        assert r.status == want, (body, r.status, r.body)

"""Accounts from API keys: $tollgate_bearer_digest is the library's digest
of the bearer key (tg_bearer_digest), so keys of any length are accounts,
and nginx, the Python middleware on the same table file, the tower layer
and `tollgate digest` (both the core's account_digest) count one key under
one account."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

from conftest import ROOT, TOLLGATE, WAIT, fresh_minute
from test_file_zone import setup, tollgate
from test_tollgate import assert_six

# a project API key as OpenAI hands them out: 164 characters
LONG_KEY = "sk-proj-" + ("Ab3_xY9-Qr7Lm2Kp" * 10)[:156]

DIGEST_LOCATION = """
        location /v1/ {
            tollgate tg;
            tollgate_account $tollgate_bearer_digest;
            # (add_header here replaces the server's)
            add_header X-Account $tollgate_bearer_digest always;
            add_header X-Tollgate-Status $tollgate_status always;
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
"""


def blake2b_hex(key):
    """What Python's bearer_token_digest computed before the core did."""
    return hashlib.blake2b(key.encode("latin-1"), digest_size=16).hexdigest()


def cli_digest(key):
    """`tollgate digest`: the core's account_digest, as the tower layer's
    bearer_digest calls it."""
    res = subprocess.run([str(TOLLGATE), "digest"], input=key,
                         capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_long_keys_are_accounts_by_their_digest(nginx):
    fresh_minute(needed=20)
    assert len(LONG_KEY) == 164
    nginx.start(locations=DIGEST_LOCATION)
    want = cli_digest(LONG_KEY)
    assert want == blake2b_hex(LONG_KEY) and len(want) == 32

    r = nginx.chat(LONG_KEY)
    assert r.status == 200 and r.header("x-upstream") == "answered"
    assert_six(r)
    assert r.header("x-ratelimit-remaining-requests") == "29"
    assert r.header("x-account") == want

    # the library reads the header as every binding does: the scheme in any
    # case, blanks around the key
    r = nginx.request("POST", "/v1/chat/completions",
                      json.dumps({"model": "DeepSeek-V3.1"}).encode(),
                      {"Authorization": f"bearer   {LONG_KEY}  ",
                       "Content-Type": "application/json"})
    assert r.status == 200
    assert r.header("x-ratelimit-remaining-requests") == "28"

    # another key, another account
    r = nginx.chat("sk-other")
    assert r.header("x-ratelimit-remaining-requests") == "29"
    assert r.header("x-account") == blake2b_hex("sk-other")

    # no bearer key: no account, the library's 401, before the body
    for auth in (None, "Basic dXNlcjpwYXNz", "Bearer "):
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        r = nginx.request("POST", "/v1/chat/completions", b"{", headers)
        assert r.status == 401, auth
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.header("x-tollgate-status") == "NO_ACCOUNT"
        assert r.header("x-account") is None

    # the key never reaches the table: the digest does
    assert LONG_KEY not in nginx.log()


PYTHON_HOST = textwrap.dedent("""
    import asyncio, json, sys
    import tollgate
    from tollgate.asgi import RateLimitMiddleware, bearer_token_digest

    region, policy, key = sys.argv[1:4]
    limiter = tollgate.Limiter.open(region, tollgate.Policy.load(policy),
                                    slots=0, create=False)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = RateLimitMiddleware(app, limiter, account=bearer_token_digest,
                             tier="developer")
    scope = {"type": "http", "method": "POST",
             "path": "/v1/chat/completions",
             "headers": [(b"authorization", b"Bearer " + key.encode()),
                         (b"content-type", b"application/json")]}
    body = json.dumps({"model": "DeepSeek-V3.1", "messages": []}).encode()
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return incoming.pop(0)

    async def send(msg):
        sent.append(msg)

    asyncio.run(mw(scope, receive, send))
    print(json.dumps({
        "status": sent[0]["status"],
        "headers": {k.decode(): v.decode() for k, v in sent[0]["headers"]},
        "account": bearer_token_digest(scope)}))
""")


def python_host(region, policy, key):
    """One request through the Python middleware on the same table file,
    in a process of its own (the package from the source tree, the library
    this build made)."""
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    env = dict(os.environ,
               PYTHONPATH=str(ROOT / "bindings" / "python" / "src"),
               TOLLGATE_LIBRARY=os.path.join(target, "release",
                                             "libtollgate.so"))
    res = subprocess.run([sys.executable, "-c", PYTHON_HOST, str(region),
                          str(policy), key], capture_output=True, text=True,
                         timeout=WAIT, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_nginx_and_python_count_one_key_under_one_account(nginx):
    fresh_minute(needed=25)
    policy, region, zone = setup(nginx)
    nginx.start(zone=zone, locations=DIGEST_LOCATION)
    for i in range(3):
        r = nginx.chat(LONG_KEY)
        assert r.status == 200
        assert r.header("x-ratelimit-remaining-requests") == str(29 - i)

    # a Python host on the same table counts the same account on
    py = python_host(region, policy, LONG_KEY)
    assert py["status"] == 200
    assert py["account"] == r.header("x-account") == cli_digest(LONG_KEY)
    assert py["headers"]["x-ratelimit-remaining-requests"] == "26"

    # and nginx sees the Python host's request
    r = nginx.chat(LONG_KEY)
    assert r.header("x-ratelimit-remaining-requests") == "25"

    # one key in the table, under its digest, with all five requests
    res = tollgate("inspect", region, "--account", cli_digest(LONG_KEY),
                   "--model", "DeepSeek-V3.1", "--policy", policy, "--json")
    assert res.returncode == 0, res.stderr
    (seen,) = json.loads(res.stdout)["models"]
    assert seen["minute_used"] == 5 and seen["day_used"] == 5

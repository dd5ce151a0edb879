"""RateLimitMiddleware driven directly through the ASGI interface."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

import tollgate
from tollgate.asgi import RateLimitMiddleware, account_digest, bearer_token, bearer_token_digest, header

from conftest import REPO, SMALL_POLICY

SIX = {
    b"x-ratelimit-limit-requests",
    b"x-ratelimit-remaining-requests",
    b"x-ratelimit-reset-requests",
    b"x-ratelimit-limit-requests-day",
    b"x-ratelimit-remaining-requests-day",
    b"x-ratelimit-reset-requests-day",
}


class EchoApp:
    """Answers 200 with the body it received, in two body messages."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            self.calls.append({"type": scope["type"]})
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.calls.append({"path": scope["path"], "body": body, "decision": scope.get("tollgate.decision"),
                           "answer": scope.get("tollgate.answer")})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"x-ratelimit-limit-requests", b"999")]})
        await send({"type": "http.response.body", "body": b"part1:", "more_body": True})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def request(app, body: bytes | None, *, method="POST", path="/v1/chat/completions", key="sk-test",
            chunks: int = 1, scope_type="http", disconnect=False):
    headers = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {"type": scope_type, "method": method, "path": path, "headers": headers}
    body = body or b""
    parts = [body[i * len(body) // chunks:(i + 1) * len(body) // chunks] for i in range(chunks)]
    incoming = [{"type": "http.request", "body": p, "more_body": i < chunks - 1} for i, p in enumerate(parts)]
    if disconnect:
        incoming = incoming[:1]
        incoming[0]["more_body"] = True
        incoming.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive():
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)

    async def send(msg):
        sent.append(msg)

    asyncio.run(app(scope, receive, send))
    if not sent:
        return None, {}, b""
    start = sent[0]
    assert start["type"] == "http.response.start"
    hdrs: dict[bytes, bytes] = {}
    for k, v in start["headers"]:
        assert k not in hdrs, f"duplicate header {k!r}"
        hdrs[k] = v
    return start["status"], hdrs, b"".join(m.get("body", b"") for m in sent[1:])


def chat(model="tiny", **extra) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


@pytest.fixture
def limiter():
    with tollgate.Limiter(tollgate.Policy.parse(SMALL_POLICY), slots=64) as lim:
        yield lim


@pytest.fixture
def app():
    return EchoApp()


def test_allowed_requests_reach_the_app_with_body_and_headers(limiter, app):
    mw = RateLimitMiddleware(app, limiter, account=bearer_token)
    body = chat(padding="x" * 10000)
    status, hdrs, out = request(mw, body, chunks=4)
    assert status == 200
    assert out == b"part1:" + body  # body replayed whole; response passed through
    assert app.calls[0]["body"] == body
    assert SIX <= set(hdrs)
    assert hdrs[b"x-ratelimit-limit-requests"] == b"5"  # ours replace the app's
    assert hdrs[b"x-ratelimit-remaining-requests"] == b"4"
    assert b"retry-after" not in hdrs
    assert app.calls[0]["decision"].allowed


def test_over_the_limit_is_a_429_with_headers_and_openai_body(limiter, app):
    mw = RateLimitMiddleware(app, limiter, account=bearer_token)
    for _ in range(5):
        assert request(mw, chat())[0] == 200
    status, hdrs, out = request(mw, chat())
    assert status == 429
    assert SIX <= set(hdrs) and int(hdrs[b"retry-after"]) > 0
    assert hdrs[b"x-ratelimit-remaining-requests"] == b"0"
    assert hdrs[b"content-type"] == b"application/json"
    err = json.loads(out)["error"]
    assert err["type"] == "rate_limit_exceeded" and err["code"] == "rate_limit_exceeded" and "tiny" in err["message"]
    assert len(app.calls) == 5
    # Another key has its own counters.
    assert request(mw, chat(), key="sk-other")[0] == 200


def test_unknown_model_is_an_openai_404(limiter, app):
    mw = RateLimitMiddleware(app, limiter, account=bearer_token)
    status, hdrs, out = request(mw, chat("gpt-9"))
    assert status == 404
    err = json.loads(out)["error"]
    assert err["code"] == "model_not_found" and "gpt-9" in err["message"] and err["param"] == "model"
    assert not app.calls


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1,2]", b'{"messages": []}', b'{"model": 5}', b"\xff\xfe"])
def test_bad_bodies_are_400(limiter, app, body):
    mw = RateLimitMiddleware(app, limiter, account=bearer_token)
    status, _, out = request(mw, body)
    assert status == 400
    assert json.loads(out)["error"]["type"] == "invalid_request_error"
    assert not app.calls


def test_non_http_and_unselected_requests_pass_through(limiter, app):
    mw = RateLimitMiddleware(app, limiter, account=bearer_token, paths=["/v1/chat/completions", "/v1/batch/*"])
    request(mw, None, scope_type="lifespan")
    request(mw, None, scope_type="websocket")
    assert [c["type"] for c in app.calls] == ["lifespan", "websocket"]
    status, hdrs, _ = request(mw, None, method="GET", path="/v1/models")
    assert status == 200 and b"x-ratelimit-remaining-requests" not in hdrs
    status, hdrs, _ = request(mw, b"not json", path="/v1/files")
    assert status == 200 and b"x-ratelimit-remaining-requests" not in hdrs
    assert request(mw, b"not json", path="/v1/batch/x")[0] == 400
    assert request(mw, chat(), path="/v1/batch/x")[0] == 200


def test_an_empty_model_is_the_cores_unknown_model(limiter, app):
    # The old middleware answered 400 itself; the library says 404.
    mw = RateLimitMiddleware(app, limiter, account=bearer_token)
    status, _, out = request(mw, b'{"model": ""}')
    assert status == 404 and json.loads(out)["error"]["code"] == "model_not_found"


def test_paths_callable(limiter, app):
    mw = RateLimitMiddleware(app, limiter, account=bearer_token, paths=lambda s: s["path"].endswith("/limited"))
    assert request(mw, b"x", path="/free")[0] == 200
    assert request(mw, b"x", path="/a/limited")[0] == 400


def test_the_library_decides_which_methods_are_limited(limiter, app):
    mw = RateLimitMiddleware(app, limiter, account=bearer_token)
    for method in ("GET", "PUT", "DELETE", "PATCH", "post"):
        # Unlimited and unread: the body is not even looked at.
        status, hdrs, _ = request(mw, b"not json", method=method)
        assert status == 200 and b"x-ratelimit-remaining-requests" not in hdrs, method
    assert request(mw, b"not json")[0] == 400
    # methods= is deprecated and can only narrow the library's rule.
    with pytest.warns(DeprecationWarning):
        none = RateLimitMiddleware(app, limiter, account=bearer_token, methods=[])
    assert request(none, b"not json")[0] == 200
    with pytest.warns(DeprecationWarning):
        post = RateLimitMiddleware(app, limiter, account=bearer_token, methods=["post"])
    assert request(post, b"not json")[0] == 400
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="PUT"):
        RateLimitMiddleware(app, limiter, account=bearer_token, methods=["POST", "PUT"])


def conformance_401_message() -> str:
    """The 401 message every binding sends: the conformance table's."""
    table = json.loads((REPO / "tests" / "conformance.json").read_text())
    case = next(c for c in table["cases"] if c["name"] == "no API key")
    return str(case["expect"]["body"]["error"]["message"])


def test_no_api_key_is_a_401_like_nginx(limiter, app):
    mw = RateLimitMiddleware(app, limiter, account=bearer_token)
    for key in (None, ""):
        status, hdrs, out = request(mw, chat(), key=key)
        assert status == 401
        assert hdrs[b"content-type"] == b"application/json" and int(hdrs[b"content-length"]) == len(out)
        assert json.loads(out) == {"error": {
            "message": conformance_401_message(),
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }}
        assert b"x-ratelimit-remaining-requests" not in hdrs
    # An account function answering "" has no key either.
    status, _, _ = request(RateLimitMiddleware(app, limiter, account=lambda s: b""), chat())
    assert status == 401
    assert not app.calls


def test_no_api_key_passes_unlimited_only_when_asked(limiter, app):
    mw = RateLimitMiddleware(app, limiter, account=bearer_token, on_no_account="allow")
    for _ in range(8):
        status, hdrs, _ = request(mw, chat(), key=None)
        assert status == 200 and b"x-ratelimit-remaining-requests" not in hdrs
    assert len(app.calls) == 8
    # A key that is present but unusable is never let through.
    assert request(mw, chat(), key="k" * 100)[0] == 401
    with pytest.raises(ValueError):
        RateLimitMiddleware(app, limiter, account=bearer_token, on_no_account="maybe")


def test_async_callables_tier_and_cost(limiter, app):
    async def account(scope):
        return header(scope, "authorization").split()[-1].encode()

    async def tier(scope):
        return "enterprise"

    mw = RateLimitMiddleware(app, limiter, account=account, tier=tier, cost=lambda scope, body: body.get("n", 1))
    status, hdrs, _ = request(mw, chat(n=10))
    assert status == 200 and hdrs[b"x-ratelimit-limit-requests"] == b"50"
    assert hdrs[b"x-ratelimit-remaining-requests"] == b"40"
    status, _, out = request(mw, chat(n=51))
    assert status == 400 and json.loads(out)["error"]["code"] == "cost_too_large"


def test_no_limit_configured(limiter, app):
    deny = RateLimitMiddleware(app, limiter, account=bearer_token, tier="free")
    status, _, out = request(deny, chat())
    assert status == 403 and json.loads(out)["error"]["code"] == "no_limit_configured"
    allow = RateLimitMiddleware(app, limiter, account=bearer_token, tier=tollgate.Tier.FREE, on_no_limit="allow")
    status, hdrs, _ = request(allow, chat())
    assert status == 200 and b"x-ratelimit-remaining-requests" not in hdrs


def test_table_full(app):
    with tollgate.Limiter(tollgate.Policy.parse(SMALL_POLICY), slots=4) as lim:
        slots = lim.stats().slots
        deny = RateLimitMiddleware(app, lim, account=bearer_token)
        for i in range(slots):
            assert request(deny, chat(), key=f"k{i}")[0] == 200
        status, _, out = request(deny, chat(), key="new")
        assert status == 503 and json.loads(out)["error"]["code"] == "rate_limiter_full"
        allow = RateLimitMiddleware(app, lim, account=bearer_token, on_table_full="allow")
        assert request(allow, chat(), key="new")[0] == 200


def test_unusable_account_is_a_401_that_quotes_nothing(limiter, app):
    # Longer than 64 bytes: no usable key (nginx answers the same); the
    # answer never carries the client's input back, however big.
    mw = RateLimitMiddleware(app, limiter, account=bearer_token)
    status, _, out = request(mw, chat(), key="k" * 100)
    assert status == 401 and json.loads(out)["error"]["code"] == "invalid_api_key"
    huge = RateLimitMiddleware(app, limiter, account=lambda scope: "a" * (1 << 20))
    status, _, out = request(huge, chat())
    assert status == 401 and len(out) < 1000
    digest = RateLimitMiddleware(app, limiter, account=bearer_token_digest)
    assert request(digest, chat(), key="k" * 100)[0] == 200


def test_body_cap_and_disconnect(limiter, app):
    mw = RateLimitMiddleware(app, limiter, account=bearer_token, max_body_bytes=100)
    status, headers, body = request(mw, chat(padding="x" * 200), chunks=3)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert request(mw, chat(), disconnect=True) == (None, {}, b"")
    assert not app.calls


def test_helpers():
    scope = {"headers": [(b"Authorization", b"Bearer  sk-abc "), (b"x-a", b"1")]}
    assert header(scope, "X-A") == "1" and header(scope, "x-b") is None
    assert bearer_token(scope) == "sk-abc"
    assert len(bearer_token_digest(scope)) == 32
    assert bearer_token({"headers": [(b"authorization", b"Basic abc")]}) is None
    assert bearer_token({"headers": []}) is None and bearer_token_digest({"headers": []}) is None
    assert bearer_token({"headers": [(b"authorization", b"Bearer\tsk-abc")]}) is None
    with pytest.raises(TypeError):
        RateLimitMiddleware(EchoApp(), None, account="nope")  # type: ignore[arg-type]


def test_bearer_digest_is_the_core_digest():
    # The library's digest keeps the one Python computed with hashlib before
    # (so tables made then keep their accounts), for keys of any length,
    # and is what `tollgate digest`, nginx and the tower layer give.
    import hashlib

    long_key = "sk-proj-" + "A1b2_C3d4-" * 15 + "xyz789"
    for key in ["sk-test", "k", long_key, "sk-\xe9\xff"]:
        want = hashlib.blake2b(key.encode("latin-1"), digest_size=16).hexdigest()
        scope = {"headers": [(b"authorization", b"Bearer " + key.encode("latin-1"))]}
        assert bearer_token_digest(scope) == want == account_digest(key) == account_digest(key.encode("latin-1"))
    assert len(long_key) > 64
    assert bearer_token_digest({"headers": [(b"authorization", b"Bearer sk-test")]}) == "c341dda362e14f03d05c78a3a7c7a93a"
    assert bearer_token_digest({"headers": [(b"authorization", b"Basic sk-test")]}) is None
    with pytest.raises(ValueError):
        RateLimitMiddleware(EchoApp(), None, account=bearer_token, on_table_full="maybe")  # type: ignore[arg-type]


def test_fastapi_add_middleware(limiter):
    # The README's way of installing it, through Starlette's middleware stack.
    # (test.sh runs this file on every Python it tests; the pinned FastAPI
    # installs on 3.11 and later.)
    fastapi = pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    api = fastapi.FastAPI()

    async def chat_endpoint(request):  # type: ignore[no-untyped-def]
        body = await request.json()
        return {"model": body["model"], "remaining": request.scope["tollgate.decision"].minute_remaining}

    # Set here, not written in the signature: FastAPI resolves annotations
    # in the module's globals, where fastapi is not imported.
    chat_endpoint.__annotations__ = {"request": fastapi.Request}
    api.post("/v1/chat/completions")(chat_endpoint)

    @api.get("/v1/models")
    async def models():
        return {"data": []}

    api.add_middleware(RateLimitMiddleware, limiter=limiter, account=bearer_token_digest, tier=lambda s: "developer")

    async def go():
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            auth = {"Authorization": "Bearer sk-" + "z" * 120}
            got = [await c.post("/v1/chat/completions", json={"model": "tiny"}, headers=auth) for _ in range(6)]
            models = await c.get("/v1/models", headers=auth)
            return got, models

    got, models = asyncio.run(go())
    assert [r.status_code for r in got] == [200] * 5 + [429]
    assert got[0].json() == {"model": "tiny", "remaining": 4}
    assert got[4].headers["x-ratelimit-remaining-requests"] == "0"
    assert got[5].json()["error"]["type"] == "rate_limit_exceeded" and "retry-after" in got[5].headers
    assert models.status_code == 200 and "x-ratelimit-limit-requests" not in models.headers


def test_options_are_checked_by_the_library(limiter, app):
    for bad in (99, 1000, -1, 1 << 40, (1 << 32) + 429):
        with pytest.raises(ValueError, match="refuse_status"):
            RateLimitMiddleware(app, limiter, account=bearer_token, refuse_status=bad)
    with pytest.raises(TypeError):
        RateLimitMiddleware(app, limiter, account=bearer_token, refuse_status="429")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gold"):
        RateLimitMiddleware(app, limiter, account=bearer_token, tier="gold")
    # Any case, as the library parses it; a Tier or its number by name.
    for tier in ("Developer", "DEVELOPER", tollgate.Tier.DEVELOPER, 1):
        mw = RateLimitMiddleware(app, limiter, account=bearer_token, tier=tier)
        assert request(mw, chat(), key=f"tier-{tier}")[1][b"x-ratelimit-limit-requests"] == b"5"


def test_refuse_status_and_dry_run(limiter, app):
    mw = RateLimitMiddleware(app, limiter, account=bearer_token, refuse_status=503)
    for _ in range(5):
        assert request(mw, chat())[0] == 200
    status, hdrs, out = request(mw, chat())
    assert status == 503 and b"retry-after" in hdrs
    assert json.loads(out)["error"]["code"] == "rate_limit_exceeded"
    dry = RateLimitMiddleware(app, limiter, account=bearer_token, dry_run=True)
    status, hdrs, _ = request(dry, chat())
    # A dry run's pass carries the six, not the refusal's retry-after.
    assert status == 200 and b"retry-after" not in hdrs and hdrs[b"x-ratelimit-remaining-requests"] == b"0"
    answer = app.calls[-1]["answer"]
    assert (answer.outcome, answer.status, answer.would_status) == ("DRY_RUN", 0, 429)
    assert not app.calls[-1]["decision"].allowed
    status, _, _ = request(dry, chat("gpt-9"))
    assert status == 200 and app.calls[-1]["answer"].would_status == 404


def test_cost_is_asked_only_when_the_library_would_count(limiter, app):
    asked = []

    def cost(scope, body):
        asked.append(body)
        return 2

    mw = RateLimitMiddleware(app, limiter, account=bearer_token, cost=cost)
    assert request(mw, chat(), key=None)[0] == 401
    assert request(mw, b"[1]")[0] == 400
    assert request(mw, b'{"model":"a","Model":"b"}')[0] == 400
    assert not asked
    status, hdrs, _ = request(mw, chat())
    assert status == 200 and hdrs[b"x-ratelimit-remaining-requests"] == b"3" and len(asked) == 1
    bad = RateLimitMiddleware(app, limiter, account=bearer_token, cost=lambda scope, body: "two")
    with pytest.raises(TypeError):
        request(bad, chat())

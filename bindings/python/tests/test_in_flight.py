"""In-flight limits from Python (issue 18, docs/in-flight.md), with the real
library: Limiter.check's releasable decisions; RateLimitMiddleware releasing
each admitted request however it ends, driven directly and through uvicorn
(tests/in_flight_app.py, policy in_flight_policy.toml: max_in_flight = 2),
with httpx, the official openai client and a raw socket; and processes
killed holding units on a shared table file."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import tollgate
from tollgate.asgi import RateLimitMiddleware, bearer_token

from conftest import HERE, subprocess_pythonpath

POLICY = HERE / "in_flight_policy.toml"
MODEL = "flight"
LIMIT = 2


def policy() -> tollgate.Policy:
    return tollgate.Policy.load(str(POLICY))


def limiter() -> tollgate.Limiter:
    return tollgate.Limiter(policy(), slots=64)


def counters(lim: tollgate.Limiter) -> tollgate.InFlightStats:
    f = lim.stats().in_flight
    assert f is not None
    return f


# ---- Limiter.check and Decision.release ------------------------------------

def test_check_admits_two_refuses_the_third_and_release_gives_a_unit_back() -> None:
    lim = limiter()
    a, b = lim.check("k", MODEL), lim.check("k", MODEL)
    assert a.allowed and b.allowed
    assert a.in_flight == tollgate.InFlight(limit=2, in_use=1, admitted=True)
    assert b.in_flight == tollgate.InFlight(limit=2, in_use=2, admitted=True)
    third = lim.check("k", MODEL)
    assert not third.allowed and third.limited_by == "in_flight" and third.retry_after == 0
    assert third.in_flight == tollgate.InFlight(limit=2, in_use=2, admitted=False)
    assert third.minute_remaining == b.minute_remaining  # the refusal charged nothing
    headers = third.headers
    assert headers["x-ratelimit-limit-in-flight"] == "2" and headers["x-ratelimit-in-flight"] == "2"
    assert "retry-after" not in headers and "x-should-retry" not in headers  # the answer's, not the decision's
    assert '"in-flight";q=2' in third.ietf_headers()["RateLimit-Policy"]
    assert '"in-flight";r=0' in third.ietf_headers()["RateLimit"]
    body = json.loads(third.error_body)
    assert body["error"]["code"] == "in_flight_limit_exceeded"
    assert third.release() is None and third.released  # holds nothing
    assert counters(lim) == tollgate.InFlightStats(in_use=2, completed=0, aborted=0, reclaimed=0, refused=1)

    assert a.release() == 1
    assert a.release() is None and a.release("cut") is None  # once: later calls do nothing
    assert a.released and not b.released
    c = lim.check("k", MODEL)
    assert c.allowed and c.in_flight is not None and c.in_flight.in_use == 2
    assert b.release("failed") == 1 and c.release("cut") == 0
    assert counters(lim) == tollgate.InFlightStats(in_use=0, completed=2, aborted=1, reclaimed=0, refused=1)


def test_other_keys_and_models_are_apart() -> None:
    lim = limiter()
    held = [lim.check("k", MODEL) for _ in range(LIMIT)]
    assert lim.check("other", MODEL).allowed  # per key
    d = lim.check("k", "open")  # a model without an in-flight limit: the hot path, nothing held
    assert d.allowed and d.in_flight is None and d.released and d.release() is None
    assert "x-ratelimit-in-flight" not in d.headers
    with lim.check("k", "open") as e:
        assert e.allowed
    assert all(h.release() is not None for h in held)


def test_a_context_manager_releases_complete_or_cut() -> None:
    lim = limiter()
    with lim.check("k", MODEL) as d:
        assert d.allowed and not d.released
        with lim.check("k", MODEL) as e:
            assert e.allowed
            assert not lim.check("k", MODEL).allowed
    assert d.released and e.released
    with pytest.raises(ZeroDivisionError):
        with lim.check("k", MODEL) as f:
            1 / 0  # noqa: B018
    assert f.released
    with lim.check("k", MODEL) as g:
        g.release("failed")  # released inside: the exit does nothing more
    f2 = counters(lim)
    assert (f2.in_use, f2.completed, f2.aborted, f2.refused) == (0, 3, 1, 1)


def test_a_decision_collected_unreleased_releases_as_cut() -> None:
    lim = limiter()
    d = lim.check("k", MODEL)
    assert d.allowed
    lim.check("k", MODEL)  # never kept
    gc.collect()
    assert counters(lim).aborted == 1 and counters(lim).in_use == 1
    del d
    gc.collect()
    f = counters(lim)
    assert (f.in_use, f.aborted, f.completed) == (0, 2, 0)
    assert all(lim.check("k", MODEL).allowed for _ in range(LIMIT))  # collected at once
    gc.collect()
    assert counters(lim).in_use == 0


def test_a_forked_child_never_releases_its_parents_decisions(tmp_path: Path) -> None:
    lim = tollgate.Limiter.open(str(tmp_path / "table"), policy(), slots=64)  # shared with the child
    d = lim.check("k", MODEL)
    pid = os.fork()
    if pid == 0:  # the child drops its copy: its parent's unit stays held
        code = 0
        try:
            del d
            gc.collect()
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert counters(lim).in_use == 1 and not d.released
    assert d.release() == 0


def test_an_answers_decision_holds_the_unit() -> None:
    from tollgate import _answer

    lim = limiter()
    body = json.dumps({"model": MODEL}).encode()
    ans = _answer.answer_request(lim, b"POST", b"acct", b"developer", body, 1, 0, 0)
    assert ans is not None and ans.status == 0
    d = ans.decision
    assert d is not None and d.in_flight == tollgate.InFlight(2, 1, True)
    assert (b"x-ratelimit-in-flight", b"1") in ans.headers
    del ans, d
    gc.collect()  # never read to the end, never released: released as cut
    f = counters(lim)
    assert (f.in_use, f.aborted) == (0, 1)


def test_release_refuses_a_bad_ending_and_keeps_the_unit() -> None:
    lim = limiter()
    d = lim.check("k", MODEL)
    for bad in ("maybe", 7, True, None):
        with pytest.raises(tollgate.InvalidArgument):
            d.release(bad)  # type: ignore[arg-type]
    assert not d.released
    assert d.release(tollgate._ffi.TG_END_USAGE) == 0  # a TG_END_* value; usage counts completed
    assert counters(lim).completed == 1


def test_peek_acheck_and_the_cached_hot_path() -> None:
    lim = limiter()
    p = lim.peek("k", MODEL)
    assert p.allowed and p.in_flight == tollgate.InFlight(2, 0, False) and p.released
    # the same key again and again: the hot path's kept request, decided by
    # tg_check_units each time
    for _ in range(5):
        with lim.check("k", MODEL) as d:
            assert d.in_flight == tollgate.InFlight(2, 1, True)

    async def two() -> list[tollgate.Decision]:
        return [await lim.acheck("k", MODEL), await lim.acheck("k", MODEL), await lim.acheck("k", MODEL)]

    got = asyncio.run(two())
    assert [d.allowed for d in got] == [True, True, False]
    for d in got:
        d.release()
    assert counters(lim).in_use == 0


def test_a_closed_limiter_cannot_release() -> None:
    lim = limiter()
    d = lim.check("k", MODEL)
    lim.close()
    with pytest.raises(tollgate.InvalidArgument):
        d.release()
    del d
    gc.collect()  # the finalizer finds the limiter closed and does nothing


def test_threads_never_hold_more_than_the_limit() -> None:
    lim = limiter()
    running = 0
    most = 0
    lock = threading.Lock()
    admitted = [0]

    def work() -> None:
        nonlocal running, most
        for _ in range(300):
            with lim.check("k", MODEL) as d:
                if not d.allowed:
                    continue
                with lock:
                    running += 1
                    most = max(most, running)
                    admitted[0] += 1
                time.sleep(0)
                with lock:
                    running -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most <= LIMIT and admitted[0] > 0
    f = counters(lim)
    assert f.in_use == 0 and f.completed == admitted[0]


# ---- RateLimitMiddleware driven directly ------------------------------------

class Streaming:
    """Sends its response start and a first chunk, then waits for ``go``
    (never reading receive), then raises (``fail``) or ends."""

    def __init__(self, fail: bool = False) -> None:
        self.go = asyncio.Event()
        self.started = asyncio.Event()
        self.fail = fail
        self.finished = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        self.started.set()
        await self.go.wait()
        if self.fail:
            raise RuntimeError("app failed")
        await send({"type": "http.response.body", "body": b"last", "more_body": False})
        self.finished = True


def scope(key: str = "sk-direct") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions",
            "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]}


class Channel:
    """An ASGI receive with the body, then http.disconnect once ``gone`` is
    set; and a send recording the messages."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        self.body = json.dumps({"model": MODEL}).encode()

    async def receive(self) -> dict[str, Any]:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def test_direct_release_after_the_last_chunk_or_cut_by_cancel_raise_and_disconnect() -> None:
    lim = limiter()

    async def main() -> None:
        # ends normally: released after the last chunk is sent
        app = Streaming()
        mw = RateLimitMiddleware(app, lim, account=bearer_token)
        ch = Channel()
        task = asyncio.ensure_future(mw(scope(), ch.receive, ch.send))
        await app.started.wait()
        assert counters(lim).in_use == 1
        start = ch.sent[0]
        assert (b"x-ratelimit-in-flight", b"1") in start["headers"]
        app.go.set()
        await task
        f = counters(lim)
        assert (f.in_use, f.completed, f.aborted) == (0, 1, 0)

        # a cancelled task
        app = Streaming()
        mw = RateLimitMiddleware(app, lim, account=bearer_token)
        ch = Channel()
        task = asyncio.ensure_future(mw(scope(), ch.receive, ch.send))
        await app.started.wait()
        assert counters(lim).in_use == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        f = counters(lim)
        assert (f.in_use, f.completed, f.aborted) == (0, 1, 1)

        # the app raising mid-stream
        app = Streaming(fail=True)
        mw = RateLimitMiddleware(app, lim, account=bearer_token)
        ch = Channel()
        task = asyncio.ensure_future(mw(scope(), ch.receive, ch.send))
        await app.started.wait()
        app.go.set()
        with pytest.raises(RuntimeError):
            await task
        f = counters(lim)
        assert (f.in_use, f.completed, f.aborted) == (0, 1, 2)

        # the client gone while the app, which never reads, goes on: the
        # unit comes back at the disconnect, not when the app ends
        app = Streaming()
        mw = RateLimitMiddleware(app, lim, account=bearer_token)
        ch = Channel()
        task = asyncio.ensure_future(mw(scope(), ch.receive, ch.send))
        await app.started.wait()
        assert counters(lim).in_use == 1
        ch.gone.set()
        for _ in range(100):
            await asyncio.sleep(0.001)
            if counters(lim).in_use == 0:
                break
        f = counters(lim)
        assert (f.in_use, f.completed, f.aborted) == (0, 1, 3)
        assert not task.done()
        app.go.set()
        await task  # ends later: nothing released twice
        f = counters(lim)
        assert (f.in_use, f.completed, f.aborted) == (0, 1, 3)

        # the third of three at once is the library's 429
        apps = [Streaming(), Streaming()]
        chans = [Channel(), Channel()]
        tasks = [asyncio.ensure_future(RateLimitMiddleware(a, lim, account=bearer_token)(scope(), c.receive, c.send))
                 for a, c in zip(apps, chans)]
        for a in apps:
            await a.started.wait()
        ch = Channel()
        await RateLimitMiddleware(Streaming(), lim, account=bearer_token)(scope(), ch.receive, ch.send)
        assert ch.sent[0]["status"] == 429
        assert json.loads(ch.sent[1]["body"])["error"]["code"] == "in_flight_limit_exceeded"
        for a in apps:
            a.go.set()
        await asyncio.gather(*tasks)
        f = counters(lim)
        assert (f.in_use, f.completed, f.aborted, f.refused) == (0, 3, 3, 1)

    asyncio.run(main())


def test_the_app_may_release_itself_and_the_middleware_does_not_again() -> None:
    lim = limiter()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["tollgate.decision"].release("failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    ch = Channel()
    asyncio.run(RateLimitMiddleware(app, lim, account=bearer_token)(scope(), ch.receive, ch.send))
    f = counters(lim)
    assert (f.in_use, f.completed, f.aborted) == (0, 1, 0)


def test_a_key_with_tokens_and_an_in_flight_limit_is_settled_and_released_once() -> None:
    lim = tollgate.Limiter(tollgate.Policy.parse("""
[models]
"both" = { region = "EU" }
[tiers.developer]
"both" = { rpm = 100, rpd = 1000, tpm = 100000, tpd = 1000000, max_in_flight = 1 }
"""), slots=64)
    d = lim.check("k", "both", tokens=10)
    assert d.allowed and d.tokens is not None and d.tokens.ticket is not None
    assert d.in_flight == tollgate.InFlight(1, 1, True)
    assert not lim.check("k", "both", tokens=10).allowed
    lim.settle(d.tokens.ticket, 5)
    assert d.release("usage") == 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"usage":{"prompt_tokens":1,"completion_tokens":2,'
                                                          b'"total_tokens":3}}'})

    ch = Channel()
    ch.body = json.dumps({"model": "both", "max_tokens": 10}).encode()
    asyncio.run(RateLimitMiddleware(app, lim, account=bearer_token)(scope(), ch.receive, ch.send))
    assert ch.sent[0]["status"] == 200
    f = counters(lim)
    assert (f.in_use, f.completed, f.aborted, f.refused) == (0, 2, 0, 1)
    after = lim.check("sk-direct", "both", tokens=1)  # the middleware's account
    assert after.tokens is not None and after.tokens.minute_remaining == 100000 - 3 - 1  # settled by the usage
    assert after.release() == 0


# ---- through uvicorn ----------------------------------------------------------

def serve(start_server: Any, env: dict[str, str] | None = None) -> Any:
    return start_server(env={"TOLLGATE_TEST_POLICY": str(POLICY), **(env or {})}, app="in_flight_app:app")


def headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "content-type": "application/json"}


def stream_body(**kw: Any) -> bytes:
    return json.dumps({"model": MODEL, "stream": True, "messages": [], **kw}).encode()


def state(c: httpx.Client) -> dict[str, Any]:
    return dict(c.get("/state").json())


def wait_for(c: httpx.Client, check: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        s = state(c)
        if check(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.02)


def test_two_streams_run_the_third_is_refused_then_the_next_admitted(start_server: Any) -> None:
    server = serve(start_server)
    key = f"sk-{uuid.uuid4().hex[:8]}"
    hold = f"h-{uuid.uuid4().hex}"
    with httpx.Client(base_url=server.url, timeout=30) as c:
        clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(2)]
        streams = [cl.send(cl.build_request("POST", "/v1/chat/completions", content=stream_body(hold=hold),
                                            headers=headers(key)), stream=True) for cl in clients]
        assert [s.status_code for s in streams] == [200, 200]
        assert [s.headers["x-ratelimit-in-flight"] for s in streams] == ["1", "2"]
        assert all(s.headers["x-ratelimit-limit-in-flight"] == "2" for s in streams)
        third = c.post("/v1/chat/completions", content=stream_body(), headers=headers(key))
        assert third.status_code == 429, third.text
        assert third.json()["error"]["code"] == "in_flight_limit_exceeded"
        assert "retry-after" not in third.headers
        assert third.headers["x-should-retry"] == "true"
        assert third.headers["x-ratelimit-in-flight"] == "2"
        assert third.headers["x-ratelimit-limit-in-flight"] == "2"
        # one ends (read to its end): the next is admitted
        c.get(f"/release?{hold}")
        first = streams[0].read()
        assert b"[DONE]" in first
        streams[0].close()
        nxt = c.post("/v1/chat/completions", content=stream_body(), headers=headers(key))
        assert nxt.status_code == 200 and b"[DONE]" in nxt.content
        streams[1].read()
        streams[1].close()
        for cl in clients:
            cl.close()
        s = wait_for(c, lambda s: s["stats"]["in_use"] == 0)
        assert s["stats"]["in_use"] == 0 and s["stats"]["completed"] == 3 and s["stats"]["refused"] == 1
        assert s["most"][key] == 2


def test_the_official_openai_client_holding_two_streams_gets_a_rate_limit_error(start_server: Any) -> None:
    server = serve(start_server)
    key = f"sk-{uuid.uuid4().hex[:8]}"
    hold = f"h-{uuid.uuid4().hex}"
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    streams = [client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                              extra_body={"hold": hold}) for _ in range(2)]
    firsts = [next(iter(s)) for s in streams]  # each has its first chunk: both running
    assert all(f.choices[0].delta.content == "first" for f in firsts)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    assert e.value.status_code == 429 and e.value.code == "in_flight_limit_exceeded"
    assert e.value.response.headers.get("retry-after") is None
    with httpx.Client(base_url=server.url, timeout=30) as c:
        c.get(f"/release?{hold}")
        for s in streams:
            assert [ch.choices[0].finish_reason for ch in s if ch.choices][-1] == "stop"
        again = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        assert [ch.choices[0].delta.content for ch in again if ch.choices][0] == "first"
        s = wait_for(c, lambda s: s["stats"]["in_use"] == 0)
        assert (s["stats"]["in_use"], s["stats"]["completed"], s["stats"]["refused"]) == (0, 3, 1)


def raw_stream(port: int, key: str, body: bytes) -> socket.socket:
    """A raw HTTP/1.1 request on its own socket, read up to the first chunk."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
                 + f"authorization: Bearer {key}\r\ncontent-type: application/json\r\n".encode()
                 + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    got = b""
    while b"first" not in got:
        part = sock.recv(65536)
        assert part, got
        got += part
    assert got.startswith(b"HTTP/1.1 200"), got
    return sock


def test_a_client_gone_mid_stream_gives_its_unit_back(start_server: Any) -> None:
    server = serve(start_server)
    key = f"sk-{uuid.uuid4().hex[:8]}"
    hold = f"never-{uuid.uuid4().hex}"  # never released: only the disconnect ends these
    with httpx.Client(base_url=server.url, timeout=30) as c:
        socks = [raw_stream(server.port, key, stream_body(hold=hold)) for _ in range(2)]
        assert c.post("/v1/chat/completions", content=stream_body(), headers=headers(key)).status_code == 429
        for s in socks:
            s.close()
        st = wait_for(c, lambda s: s["stats"]["in_use"] == 0 and s["running"].get(key) == 0)
        assert (st["stats"]["in_use"], st["stats"]["aborted"], st["stats"]["completed"]) == (0, 2, 0), st
        assert st["running"][key] == 0  # the app's streams were cut too
        ok = c.post("/v1/chat/completions", content=stream_body(), headers=headers(key))
        assert ok.status_code == 200 and ok.headers["x-ratelimit-in-flight"] == "1"


def test_the_app_raising_mid_stream_gives_its_unit_back(start_server: Any) -> None:
    server = serve(start_server)
    key = f"sk-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for _ in range(3):  # more than the limit: each failure gave its unit back
            with pytest.raises(httpx.HTTPError):
                c.post("/v1/chat/completions", content=stream_body(raise_after=True), headers=headers(key))
        st = wait_for(c, lambda s: s["stats"]["in_use"] == 0 and s["stats"]["aborted"] == 3)
        assert (st["stats"]["in_use"], st["stats"]["aborted"], st["stats"]["completed"]) == (0, 3, 0), st


def test_racing_clients_never_run_more_than_the_limit_in_the_app(start_server: Any) -> None:
    server = serve(start_server)
    key = f"sk-{uuid.uuid4().hex[:8]}"
    statuses: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for _ in range(8):
                r = c.post("/v1/chat/completions", content=stream_body(chunks=2, sleep=0.01), headers=headers(key))
                with lock:
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=client) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    with httpx.Client(base_url=server.url, timeout=30) as c:
        st = wait_for(c, lambda s: s["stats"]["in_use"] == 0)
    assert st["most"][key] <= LIMIT, st
    assert st["stats"]["in_use"] == 0 and st["stats"]["completed"] == statuses.count(200), st
    assert st["stats"]["refused"] == statuses.count(429), st


# ---- processes killed holding units --------------------------------------------

CHILD = """
import random, sys, time
import tollgate
lim = tollgate.Limiter.open(sys.argv[1], tollgate.Policy.load(sys.argv[2]), slots=64)
held = []
print("ready", flush=True)
while True:  # admit and release at random until killed
    d = lim.check("shared", "flight")
    if d.allowed:
        held.append(d)
    if held and (len(held) == 2 or random.random() < 0.3):
        held.pop(random.randrange(len(held))).release(random.choice(["complete", "cut"]))
    if random.random() < 0.05:
        time.sleep(0.002)
"""

FRESH = """
import json, sys
import tollgate
lim = tollgate.Limiter.open(sys.argv[1], tollgate.Policy.load(sys.argv[2]), slots=64)
got = [lim.check("shared", "flight") for _ in range(3)]
print(json.dumps([d.allowed for d in got]))
"""


def kill_at_random(table: str, env: dict[str, str], rng: random.Random, rounds: int) -> None:
    """Rounds of two children admitting and releasing on ``table``, each
    SIGKILLed at a random moment once it runs."""
    for _ in range(rounds):
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, table, str(POLICY)], env=env,
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.05))
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            assert p.wait(10) == -signal.SIGKILL
            assert p.stdout is not None
            p.stdout.close()


def test_units_of_processes_killed_at_random_come_back(tmp_path: Path) -> None:
    table = str(tmp_path / "table")
    env = dict(os.environ)
    env["PYTHONPATH"] = subprocess_pythonpath(env)
    lim = tollgate.Limiter.open(table, policy(), slots=64)
    lim.check("shared", MODEL).release()  # this process is a holder from now on
    rng = random.Random(18)
    kill_at_random(table, env, rng, 10)
    # A process that starts admitting sweeps the dead first: exactly the
    # limit. It exits holding two: they are released at exit (as cut).
    r = subprocess.run([sys.executable, "-c", FRESH, table, str(POLICY)], env=env, capture_output=True,
                       text=True, timeout=60, check=True)
    assert json.loads(r.stdout) == [True, True, False], r.stderr
    assert counters(lim).in_use == 0
    reclaimed = counters(lim).reclaimed
    # More killed; this process, registered before, gets their units back
    # at a refusal a second or more after the last sweep.
    kill_at_random(table, env, rng, 10)
    time.sleep(1.1)
    got = [lim.check("shared", MODEL) for _ in range(3)]
    assert [d.allowed for d in got] == [True, True, False]
    for d in got:
        d.release()
    f = counters(lim)
    assert f.in_use == 0 and f.reclaimed >= reclaimed > 0, f

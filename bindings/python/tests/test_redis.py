"""One quota across hosts (issue 11) from Python: limiters joined to a real
redis-server (started per test on a free port, no persistence, killed at
the end). Two tables stand for two hosts (two uvicorn servers in the last
test); the event loop is shown never to wait for Redis while it stalls
(DEBUG SLEEP), and a waiting check never to hold the GIL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import threading
import time
import uuid
from typing import Any

import pytest
from conftest import RedisServer

import tollgate
from tollgate.asgi import RateLimitMiddleware, bearer_token

MODEL = "DeepSeek-V3.1"
MESSAGES = [{"role": "user", "content": "Hello"}]


def room_in_minute(seconds: float) -> None:
    """Sleeps past the next UTC minute when fewer than ``seconds`` are left,
    so a test's decisions land in one minute window."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.2)


def counts(redis: RedisServer) -> dict[str, int]:
    """Every minute and day count in Redis, by window: {"m": .., "d": ..}
    (each test uses one key, so one of each)."""
    out: dict[str, int] = {}
    for key in redis.cli("--scan", "--pattern", "tg:*").split():
        kind = key.split(":")[-2]
        if kind in ("m", "d"):
            assert kind not in out, f"more than one {kind} count: {key}"
            out[kind] = int(redis.cli("GET", key))
    return out


def evalsha_calls(redis: RedisServer) -> int:
    """EVALSHA calls Redis ran (a NOSCRIPT answer, before the script's first
    load, is a failed call and not counted)."""
    for line in redis.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_evalsha:"):
            f = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
            return int(f["calls"]) - int(f["failed_calls"])
    return 0


def two_hosts(tmp_path, redis: RedisServer, **options: Any) -> tuple[tollgate.Limiter, tollgate.Limiter]:
    opts = {"hosts": 2, **options}
    return (
        tollgate.Limiter.open(tmp_path / "host-a", slots=256, redis=redis.url, redis_options=opts),
        tollgate.Limiter.open(tmp_path / "host-b", slots=256, redis=redis.url, redis_options=opts),
    )


def test_two_hosts_share_one_quota_with_leases(tmp_path, redis_server):
    a, b = two_hosts(tmp_path, redis_server)
    account = f"acct-{uuid.uuid4().hex[:8]}"
    room_in_minute(5)
    own = [0, 0]
    saw_other_host = [False, False]
    for i in range(30):
        host = i % 2
        d = (a, b)[host].check(account, MODEL)
        assert d.allowed, (i, d)
        own[host] += 1
        used = 30 - d.minute_remaining
        # The headers count what every host was granted as of this host's
        # last exchange with Redis, less what it still holds: at least its
        # own admissions, never more than the limit, both windows alike.
        assert own[host] <= used <= 30, (i, d)
        assert 15000 - d.day_remaining == used
        saw_other_host[host] |= used > own[host]
        h = d.headers
        assert h["x-ratelimit-limit-requests"] == "30"
        assert h["x-ratelimit-remaining-requests"] == str(d.minute_remaining)
    assert saw_other_host == [True, True]  # each host's headers counted the other's requests
    # The 31st is refused whichever host it reaches, and both show the global
    # count: 30 in the minute (neither host admitted more than 15 itself).
    for lim in (a, b):
        d = lim.check(account, MODEL)
        assert not d.allowed and d.limited_by == "minute"
        assert d.headers["x-ratelimit-remaining-requests"] == "0"
        assert d.headers["x-ratelimit-remaining-requests-day"] == "14970"
        assert 1 <= int(d.headers["retry-after"]) <= 60
    assert own == [15, 15]
    sa, sb = a.lease_stats(), b.lease_stats()
    assert sa is not None and sb is not None
    # Far fewer round trips than decisions: most were spent from leases.
    assert sa.from_leases + sb.from_leases >= 20, (sa, sb)
    assert sa.refused_by_store + sb.refused_by_store == 2
    a.close()
    b.close()
    # Every admitted request is in Redis, once, in both windows.
    assert counts(redis_server) == {"m": 30, "d": 30}


def test_exact_mode_one_round_trip_per_decision(tmp_path, redis_server):
    a, b = two_hosts(tmp_path, redis_server, mode="exact")
    joined = evalsha_calls(redis_server)  # each connect makes one call
    account = f"acct-{uuid.uuid4().hex[:8]}"
    room_in_minute(5)
    for i in range(30):
        d = (a, b)[i % 2].check(account, MODEL)
        assert d.allowed, (i, d)
        # Exact mode shows Redis's count after this decision.
        assert d.minute_remaining == 29 - i and d.day_remaining == 14999 - i
    d = a.check(account, MODEL)
    assert not d.allowed and d.minute_remaining == 0 and d.day_remaining == 14970
    assert evalsha_calls(redis_server) - joined == 31
    s = a.lease_stats()
    assert s is not None and s.mode == "exact"
    assert s.decisions == 16 and s.refills == 16 and s.from_leases == 0
    # Every check asked not to wait first (deferred), then waited.
    assert s.deferred == 16
    a.close()
    b.close()
    assert counts(redis_server) == {"m": 30, "d": 30}


def test_lease_stats_fields(tmp_path, redis_server):
    with tollgate.Limiter(slots=64, redis=redis_server.url, redis_options={"deadline": "200ms"}) as lim:
        account = f"acct-{uuid.uuid4().hex[:8]}"
        room_in_minute(3)
        for _ in range(5):
            assert lim.check(account, MODEL).allowed
        s = lim.lease_stats()
        assert isinstance(s, tollgate.LeaseStats)
        assert (s.mode, s.down_policy, s.redis_down, s.breaker) == ("leases", "local", False, "closed")
        assert s.decisions == 5
        assert s.from_leases + s.refills == 5 and s.refills >= 1
        assert s.granted_units >= 5
        assert s.connections >= 1 and s.store_connects >= 1
        assert s.store_calls >= s.refills and s.store_failures == s.store_timeouts == 0
        assert s.degraded == s.degraded_admitted == s.refused_by_store == 0
        assert s.last_latency_us > 0
        assert s.hosts >= 1  # auto: the live tables Redis counts
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.decisions = 0  # type: ignore[misc]
        shared = lim.share()
        assert shared.lease_stats() is not None  # a share is joined to the same link
        assert shared.check(account, MODEL).allowed
        shared.close()
        assert "joined" in repr(lim)
    with pytest.raises(tollgate.InvalidArgument, match="closed"):
        lim.lease_stats()
    with tollgate.Limiter(slots=64) as local:
        assert local.lease_stats() is None


@pytest.mark.parametrize(
    "options, words",
    [
        ({"nope": 1}, 'unknown option "nope" (known: mode, down, hosts'),
        ({"deadline": "fast"}, 'deadline: "fast" is not a duration above zero (such as 50ms, 2s, 1m)'),
        ({"hosts": 0}, 'hosts: "0" is not a whole number from 1 to'),
        ({"mode": "quick"}, 'mode: "quick" is not leases or exact'),
        ({"down": "maybe"}, 'down: "maybe" is not local, open or closed'),
    ],
)
def test_bad_options_raise_with_the_core_s_words(tmp_path, redis_server, options, words):
    with pytest.raises(tollgate.InvalidArgument) as e:
        tollgate.Limiter(slots=64, redis=redis_server.url, redis_options=options)
    assert words in str(e.value)
    # Checked before any table is made: no file left behind.
    path = tmp_path / "table"
    with pytest.raises(tollgate.InvalidArgument) as e:
        tollgate.Limiter.open(path, slots=64, redis=redis_server.url, redis_options=options)
    assert words in str(e.value)
    assert not path.exists()


def test_bad_arguments_and_urls(tmp_path, redis_server):
    with pytest.raises(tollgate.InvalidArgumentType):
        tollgate.Limiter(slots=64, redis=redis_server.url, redis_options={"hosts": True})
    with pytest.raises(tollgate.InvalidArgumentType):
        tollgate.Limiter(slots=64, redis=redis_server.url, redis_options={"deadline": 0.05})
    with pytest.raises(tollgate.InvalidArgumentType):
        tollgate.Limiter(slots=64, redis=redis_server.url, redis_options=[("hosts", 2)])  # type: ignore[arg-type]
    with pytest.raises(tollgate.InvalidArgument, match="redis_options needs redis"):
        tollgate.Limiter(slots=64, redis_options={"hosts": 2})
    with pytest.raises(tollgate.InvalidArgument, match="null byte"):
        tollgate.Limiter(slots=64, redis=redis_server.url + "\0x")
    with pytest.raises(tollgate.StoreError) as e:
        tollgate.Limiter(slots=64, redis="http://127.0.0.1/")
    assert "http://127.0.0.1/" in str(e.value)
    # Ints and strings both reach the core's parser as text.
    with tollgate.Limiter(slots=64, redis=redis_server.url,
                          redis_options={"hosts": 3, "deadline": "75ms", "down": "closed", "max_lease": "50"}) as lim:
        s = lim.lease_stats()
        assert s is not None and s.down_policy == "closed"


def test_local_table_refuses_to_join_and_leased_table_refuses_to_decide_alone(tmp_path, redis_server):
    local = tmp_path / "local"
    tollgate.Limiter.open(local, slots=64).close()
    with pytest.raises(tollgate.NotLeased) as e:
        tollgate.Limiter.open(local, slots=64, redis=redis_server.url)
    assert "local table" in str(e.value) and str(local) in str(e.value)

    leased = tmp_path / "leased"
    tollgate.Limiter.open(leased, slots=64, redis=redis_server.url).close()
    with tollgate.Limiter.open(leased, slots=64) as alone:
        with pytest.raises(tollgate.NotJoined, match="not joined"):
            alone.check("acct", MODEL)
        assert alone.lease_stats() is None
    # Joining again works, with the file as it was made.
    with tollgate.Limiter.open(leased, slots=64, create=False, redis=redis_server.url) as again:
        assert again.check("acct", MODEL).allowed


@pytest.mark.parametrize("create", [True, False])
def test_existing_files_opened_with_0_slots_say_not_leased_and_not_joined(tmp_path, redis_server, create):
    """slots=0 takes an existing file as it is (create on, the default, or
    off), so the errors the README documents for a file of the wrong kind
    are the ones raised, not "slot count must be 1 to 2^30 to create a
    region"; and they speak to a Python user, naming no Rust function."""
    local = tmp_path / "local"
    tollgate.Limiter.open(local, slots=64).close()
    with pytest.raises(tollgate.NotLeased) as e:
        tollgate.Limiter.open(local, None, 0, create, redis=redis_server.url)
    message = str(e.value)
    assert str(local) in message and "local table" in message and "formatted for quota leases" in message
    assert "::" not in message and "_for_leases" not in message, message

    leased = tmp_path / "leased"
    tollgate.Limiter.open(leased, slots=64, redis=redis_server.url).close()
    with tollgate.Limiter.open(leased, None, 0, create) as alone:
        assert alone.stats().slots == 64
        with pytest.raises(tollgate.NotJoined) as e:
            alone.check("acct", MODEL)
        assert "not joined" in str(e.value) and "::" not in str(e.value)
    with tollgate.Limiter.open(leased, None, 0, create, redis=redis_server.url) as again:
        assert again.stats().slots == 64
        assert again.check("acct", MODEL).allowed


def _debug_sleep(redis: RedisServer, seconds: float) -> subprocess.Popen[bytes]:
    """Stalls the server for ``seconds`` from another connection; returns
    once the stall has begun (a PING from a third connection waits)."""
    proc = subprocess.Popen(redis.cli_args("DEBUG", "SLEEP", str(seconds)), stdout=subprocess.DEVNULL)
    time.sleep(0.15)
    assert proc.poll() is None, "DEBUG SLEEP ended early"
    return proc


def test_sync_check_waiting_for_redis_lets_other_threads_run(redis_server):
    # A check that must wait for Redis holds no GIL while it waits: another
    # Python thread keeps running through the whole deadline (1 s; held, the
    # GIL would stop it that long).
    with tollgate.Limiter(slots=64, redis=redis_server.url, redis_options={"deadline": "1s"}) as lim:
        room_in_minute(4)
        stall = _debug_sleep(redis_server, 2)
        result: dict[str, Any] = {}

        def decide() -> None:
            t0 = time.monotonic()
            result["d"] = lim.check(f"acct-{uuid.uuid4().hex[:8]}", MODEL)
            result["took"] = time.monotonic() - t0

        worker = threading.Thread(target=decide)
        longest = 0.0
        last = time.monotonic()
        worker.start()
        while worker.is_alive():
            time.sleep(0.005)
            now = time.monotonic()
            longest = max(longest, now - last)
            last = now
        worker.join()
        stall.wait(timeout=10)
        print(f"sync check waited {result['took'] * 1000:.0f} ms; another thread's longest gap {longest * 1000:.1f} ms")
        assert result["took"] >= 0.8  # it did wait for Redis
        assert longest < 0.5
        # Redis did not answer within the deadline: the down policy (local,
        # 30 per host for one host) admitted it.
        assert result["d"].allowed
        s = lim.lease_stats()
        assert s is not None and s.degraded == 1 and s.degraded_admitted == 1


def test_set_policy_and_close_wait_for_checks_waiting_for_redis(redis_server):
    # The library forbids set_policy (and freeing) to overlap any call on the
    # handle; a check waiting for Redis has released the GIL, so the package
    # makes them wait for it (the order of events, not their times, is
    # checked).
    lim = tollgate.Limiter(slots=64, redis=redis_server.url, redis_options={"deadline": "600ms"})
    room_in_minute(5)
    events: list[str] = []

    def waiting_check(name: str) -> None:
        lim.check(f"acct-{uuid.uuid4().hex[:8]}", MODEL)
        events.append(name)

    def in_flight(deferred: int) -> None:
        # The no-wait call said "pending" (counted), then the wait began.
        while (lim.lease_stats() or pytest.fail("not joined")).deferred < deferred:
            time.sleep(0.005)
        time.sleep(0.1)

    stall = _debug_sleep(redis_server, 2.5)
    first = threading.Thread(target=waiting_check, args=("check 1",))
    first.start()
    in_flight(1)
    lim.set_policy(tollgate.Policy.default())
    events.append("set_policy")
    first.join()
    second = threading.Thread(target=waiting_check, args=("check 2",))
    second.start()
    in_flight(2)
    lim.close()
    events.append("close")
    second.join()
    stall.wait(timeout=10)
    assert events == ["check 1", "set_policy", "check 2", "close"]


def test_event_loop_never_waits_for_redis(redis_server):
    # During DEBUG SLEEP, an ASGI request that needs a grant, then an acheck
    # that needs one, are in flight while a ticker task keeps running: the
    # loop's longest stall stays far below the store's deadline (700 ms,
    # above the 300 ms threshold, so a decision made on the loop itself
    # would fail this test).
    deadline = 0.7
    lim = tollgate.Limiter(slots=64, redis=redis_server.url, redis_options={"deadline": f"{int(deadline * 1000)}ms"})

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = RateLimitMiddleware(app, lim, account=bearer_token)
    body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()

    async def asgi_request(key: str) -> tuple[int, dict[bytes, bytes]]:
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "headers": [(b"authorization", f"Bearer {key}".encode())]}
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(msg: dict[str, Any]) -> None:
            sent.append(msg)

        await mw(scope, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"])

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        stalls: list[float] = []

        async def ticker() -> None:
            last = loop.time()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = loop.time()
                stalls.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        stall = await asyncio.create_subprocess_exec(*redis_server.cli_args("DEBUG", "SLEEP", "2.5"),
                                                     stdout=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(0.15)
        assert stall.returncode is None, "DEBUG SLEEP ended early"
        out: dict[str, Any] = {}
        t0, n0 = time.monotonic(), len(stalls)
        out["status"], out["headers"] = await asgi_request(f"sk-{uuid.uuid4().hex[:8]}")
        out["took"], out["ticks"] = time.monotonic() - t0, len(stalls) - n0
        t0, n0 = time.monotonic(), len(stalls)
        out["decision"] = await lim.acheck(f"acct-{uuid.uuid4().hex[:8]}", MODEL)
        out["acheck_took"], out["acheck_ticks"] = time.monotonic() - t0, len(stalls) - n0
        done.set()
        await tick
        await stall.wait()
        out["longest"] = max(stalls)
        return out

    room_in_minute(6)
    r = asyncio.run(main())
    print(f"request {r['took'] * 1000:.0f} ms ({r['ticks']} ticks meanwhile), acheck {r['acheck_took'] * 1000:.0f} ms "
          f"({r['acheck_ticks']} ticks), the loop's longest stall {r['longest'] * 1000:.1f} ms")
    assert r["longest"] < 0.3
    # Each waited for Redis (the loop ticked on meanwhile) and was decided by
    # the down policy (local: one host, its 30), within the deadline and a
    # margin. The acheck had to open a new connection (the request's was
    # dropped after its timeout), which waits for the Redis client's
    # connection setup too: up to about twice the deadline today.
    assert 0.5 <= r["took"] < deadline + 0.5 and r["ticks"] >= 20
    assert 0.5 <= r["acheck_took"] < 2 * deadline + 0.5 and r["acheck_ticks"] >= 20
    assert r["status"] == 200 and r["headers"][b"x-ratelimit-limit-requests"] == b"30"
    assert r["decision"].allowed
    s = lim.lease_stats()
    assert s is not None
    assert s.degraded == 2 and s.degraded_admitted == 2 and s.deferred >= 2 and s.store_timeouts >= 2
    lim.close()


def test_two_uvicorn_hosts_and_the_openai_client(tmp_path, redis_server, start_server):
    # The interpreters test.sh gives only the core tests' packages skip this.
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    env = {"TOLLGATE_TEST_REDIS": redis_server.url, "TOLLGATE_TEST_REDIS_OPTIONS": json.dumps({"hosts": 2})}
    hosts = [start_server(env={**env, "TOLLGATE_TEST_TABLE": str(tmp_path / f"table-{n}")}) for n in "ab"]
    key = f"sk-{uuid.uuid4().hex[:16]}"
    clients = [openai.OpenAI(api_key=key, base_url=h.url + "/v1", max_retries=0, timeout=30) for h in hosts]
    room_in_minute(5)
    for i in range(30):
        raw = clients[i % 2].chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert raw.parse().choices[0].message.content == "echo 1"
        assert raw.headers["x-ratelimit-limit-requests"] == "30"
        used = 30 - int(raw.headers["x-ratelimit-remaining-requests"])
        assert i // 2 + 1 <= used <= 30
    for c in clients:
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model=MODEL, messages=MESSAGES)
        r = e.value.response
        assert r.status_code == 429 and e.value.code == "rate_limit_exceeded"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-remaining-requests-day"] == "14970"
        assert MODEL in r.json()["error"]["message"]
    for h in hosts:
        h.stop()  # the workers exit: the minute count stays what was admitted
    assert counts(redis_server)["m"] == 30

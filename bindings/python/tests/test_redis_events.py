"""What a joined limiter tells Python's logging (issue 16 item 6), and a join
that Redis's errors do not fail (issue 15 fault 1): limiters joined to real
redis-server processes of the tests' own (127.0.0.1, free ports, stopped by
pid) that are busy in a script (BUSY), that want a password the URL gets
wrong, and that go away and come back. The events reach the ``tollgate``
logger from a daemon thread per link, which ends with the link's last
handle."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import RedisServer, free_port, subprocess_pythonpath

import tollgate

MODEL = "DeepSeek-V3.1"
WAIT = 20.0
THREAD = "tollgate-lease-events"
# Fail fast while Redis is away, and probe again soon after.
FAST = {"deadline": "200ms", "cooldown": "50ms", "max_cooldown": "200ms"}


def account() -> str:
    return f"acct-{uuid.uuid4().hex[:8]}"


def until(what, timeout: float = WAIT, every: float = 0.05):
    """Polls ``what()`` until it returns something true; returns it (or the
    last falsy value once ``timeout`` has passed)."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)


def records(caplog, level: int | None = None, text: str = "") -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "tollgate" and (level is None or r.levelno == level) and text in r.getMessage()]


def event_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD]


class Busy:
    """Redis running a script that never ends (``EVAL "while true do end"``
    from a connection of its own, in the background): past 100 ms every
    other command is answered BUSY, until :meth:`end` (SCRIPT KILL)."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        redis.cli("CONFIG", "SET", "busy-reply-threshold", "100")
        self.proc = subprocess.Popen(redis.cli_args("EVAL", "while true do end", "0"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert until(lambda: "BUSY" in self.redis.cli("GET", "x")), "Redis never answered BUSY"

    def end(self) -> None:
        if self.proc.poll() is None:
            until(lambda: self.redis.cli("SCRIPT", "KILL") == "OK" or self.proc.poll() is not None)
            self.proc.wait(WAIT)
        assert self.redis.cli("PING") == "PONG"


@pytest.fixture
def busy(redis_server):
    made: list[Busy] = []

    def make() -> Busy:
        made.append(Busy(redis_server))
        return made[-1]

    yield make
    for b in made:
        b.end()


def test_joins_while_redis_is_busy_decides_by_the_down_policy_and_recovers(redis_server, busy, caplog):
    caplog.set_level(logging.INFO, logger="tollgate")
    acct = account()
    b = busy()
    # BUSY at the join is no error: the limiter joins and the down policy
    # decides (local: this host's share, 30 / 2 a minute)
    lim = tollgate.Limiter(slots=64, redis=redis_server.url, redis_options={"hosts": 2, **FAST})
    try:
        d = lim.check(acct, MODEL)
        assert d.allowed and d.minute_limit == 30, d
        s = lim.lease_stats()
        assert s is not None and s.redis_down and s.degraded >= 1, s
        # told once, with Redis's own reason, at WARNING
        warned = until(lambda: records(caplog, logging.WARNING, "BUSY"))
        assert warned, caplog.text
        assert "redis store unavailable" in warned[0].getMessage()
        assert "down policy" in warned[0].getMessage()
        # no thread of the library's logged it (ctypes cannot call Python
        # from there): the limiter's events thread did
        assert warned[0].threadName == THREAD
        b.end()
        # Redis serves again: decisions take leases from it, with no new join
        assert until(lambda: lim.check(account(), MODEL).allowed and not lim.lease_stats().redis_down)
        assert until(lambda: any(k.split(":")[-2] == "m"
                                 for k in redis_server.cli("--scan", "--pattern", "tg:*").split()))
        back = until(lambda: records(caplog, logging.INFO, "answers again"))
        assert back, caplog.text
        assert back[0].created > warned[0].created
        # each change told once, however many decisions were made meanwhile
        assert len(records(caplog, logging.WARNING, "redis store unavailable")) == 1
    finally:
        lim.close()


def test_a_wrong_password_is_no_join_error_and_never_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tollgate")
    secret = "wr0ng"
    server = RedisServer(tmp_path)
    try:
        server.cli("CONFIG", "SET", "requirepass", "r1ght-one")
        url = f"redis://default:{secret}@127.0.0.1:{server.port}/0"
        lim = tollgate.Limiter(slots=64, redis=url, redis_options=FAST)
        try:
            assert lim.check(account(), MODEL).allowed
            s = lim.lease_stats()
            assert s is not None and s.redis_down, s
            told = until(lambda: [r for r in records(caplog, logging.WARNING)
                                  if any(w in r.getMessage().upper() for w in ("WRONGPASS", "NOAUTH", "AUTH"))])
            assert told, caplog.text
            assert repr(lim).find(secret) < 0
        finally:
            lim.close()
        # a URL it cannot use fails the join, in words without the password
        for bad in (f"redis://default:{secret}@127.0.0.1:notaport/0",
                    f"redis://default:{secret}@[127.0.0.1:{server.port}/0",
                    f"rediss-nope://default:{secret}@127.0.0.1:{server.port}/0"):
            with pytest.raises(tollgate.TollgateError) as info:
                tollgate.Limiter(slots=64, redis=bad)
            assert isinstance(info.value, tollgate.StoreError), info.value
            for shown in (str(info.value), repr(info.value), repr(info.value.args)):
                assert secret not in shown, shown
        assert secret not in caplog.text
        assert all(secret not in r.getMessage() for r in caplog.records)
    finally:
        server.stop()


class Redis:
    """A redis-server on a port of the test's choosing (to come back on the
    same one), stopped by pid."""

    def __init__(self, dir: Path, port: int) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is missing"
        dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(dir), "--logfile", str(dir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok = until(lambda: self.proc.poll() is not None or subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "PING"],
            capture_output=True, text=True, timeout=10, check=False).stdout.strip() == "PONG")
        assert ok and self.proc.poll() is None, "redis-server did not start"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def test_redis_gone_and_back_is_told_once_each_way(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tollgate")
    port = free_port()
    redis = Redis(tmp_path / "first", port)
    lim = tollgate.Limiter(slots=256, redis=f"redis://127.0.0.1:{port}/0", redis_options=FAST)
    try:
        assert lim.check(account(), MODEL).allowed
        assert not lim.lease_stats().redis_down
        redis.stop()
        # many decisions while it is away (new keys: each needs Redis)
        for _ in range(40):
            assert lim.check(account(), MODEL).allowed
        assert lim.lease_stats().redis_down
        assert until(lambda: records(caplog, logging.WARNING, "redis store unavailable"))
        time.sleep(1.5)  # a few more reads of the events: nothing new
        assert len(records(caplog, logging.WARNING, "redis store unavailable")) == 1, caplog.text
        assert not records(caplog, logging.INFO, "answers again")

        redis = Redis(tmp_path / "again", port)
        assert until(lambda: lim.check(account(), MODEL).allowed and not lim.lease_stats().redis_down)
        assert until(lambda: records(caplog, logging.INFO, "answers again")), caplog.text
        time.sleep(1.0)
        assert len(records(caplog, logging.INFO, "answers again")) == 1, caplog.text
        assert len(records(caplog, logging.WARNING, "redis store unavailable")) == 1, caplog.text
    finally:
        lim.close()
        redis.stop()


def test_the_events_thread_ends_with_the_link_s_last_handle(redis_server):
    before = set(event_threads())

    def started() -> threading.Thread:
        (t,) = set(event_threads()) - before
        return t

    lim = tollgate.Limiter(slots=64, redis=redis_server.url)
    t = started()
    assert t.daemon
    # a share reads the same link's events: no second thread, and the
    # thread lives as long as one handle does
    share = lim.share()
    assert started() is t
    lim.close()
    time.sleep(0.2)
    assert t.is_alive()
    assert share.check(account(), MODEL).allowed
    share.close()
    t.join(WAIT)
    assert not t.is_alive()

    # collected without close(): the finalizer ends it too
    lim = tollgate.Limiter(slots=64, redis=redis_server.url)
    t = started()
    del lim
    gc.collect()
    t.join(WAIT)
    assert not t.is_alive()

    # a limiter not joined has none
    with tollgate.Limiter(slots=64):
        assert set(event_threads()) == before

    # many joins and closes, with shares, while the threads read: a closed
    # handle is never read (a crash here would end the test run)
    for _ in range(20):
        a = tollgate.Limiter(slots=64, redis=redis_server.url)
        b = a.share()
        a.check(account(), MODEL)
        b.close()
        a.close()
    assert until(lambda: set(event_threads()) <= before)


def test_the_events_thread_does_not_keep_the_interpreter_alive(redis_server):
    env = dict(os.environ)
    env["PYTHONPATH"] = subprocess_pythonpath(env)
    code = (
        "import tollgate\n"
        f"lim = tollgate.Limiter(slots=64, redis={redis_server.url!r})\n"
        "assert lim.check('acct-exit', 'DeepSeek-V3.1').allowed\n"
        "print('joined')\n"
    )
    t = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=WAIT, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "joined", res.stderr
    assert time.monotonic() - t < 10

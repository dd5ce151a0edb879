"""What a joined zone tells nginx's error log (issue 16 item 6), and a join
that Redis's errors do not fail (issue 15 fault 1): a real nginx whose
workers join a real redis-server of the test's own (127.0.0.1, a free
port, stopped by pid) while it is busy in a script (BUSY), and one that
goes away and comes back under a running nginx. Each worker logs its
zones' lease events from a timer of its own, once each."""

import re
import signal
import subprocess
import time

import pytest

from conftest import WAIT, fresh_minute
from test_redis import REDIS_CLI, Redis, api_location, joined, store_metrics

PREFIX = 'tollgate_redis: zone "tg": '


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path / "redis").start()
    yield r
    r.stop()


class Busy:
    """Redis running a script that never ends (EVAL "while true do end"
    from a connection of its own, in the background): past 100 ms every
    other command is answered BUSY, until end() (SCRIPT KILL)."""

    def __init__(self, redis):
        self.redis = redis
        redis.cli("CONFIG", "SET", "busy-reply-threshold", "100")
        self.proc = subprocess.Popen(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(redis.port), "EVAL",
             "while true do end", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert until(lambda: "BUSY" in redis.cli("GET", "x")), \
            "Redis never answered BUSY"

    def end(self):
        if self.proc.poll() is None:
            until(lambda: self.redis.cli("SCRIPT", "KILL") == "OK"
                  or self.proc.poll() is not None)
            self.proc.wait(WAIT)
        assert self.redis.cli("PING") == "PONG"


def until(what, timeout=WAIT, every=0.05):
    deadline = time.time() + timeout
    while True:
        got = what()
        if got or time.time() > deadline:
            return got
        time.sleep(every)


def lines(nginx, text):
    """The error log's lines holding text."""
    return [x for x in nginx.log().splitlines() if text in x]


def pid_of(line):
    """The pid of the process that wrote an error log line."""
    return int(re.search(r"\] (\d+)#\d+: ", line).group(1))


def test_a_worker_joins_while_redis_is_busy_and_recovers_alone(nginx, redis):
    fresh_minute(needed=30)
    busy = Busy(redis)
    try:
        nginx.start(http_extra=joined(redis.url, "hosts=2", "cooldown=50ms",
                                      "max_cooldown=200ms"),
                    locations=api_location(), workers=1)
        workers = nginx.workers()
        # joined all the same: decided by the down policy (local: 30 / 2),
        # not answered 500
        r = nginx.chat("acct-busy")
        assert r.status == 200, r.body
        assert r.header("x-ratelimit-limit-requests") == "30"
        m = store_metrics(nginx)
        assert m["tollgate_store_joined"] == 1
        assert m["tollgate_store_down"] == 1
        assert m["tollgate_store_degraded_total"] >= 1
        # told in the error log at warn, with Redis's own reason, by the
        # worker (not the master, not a thread of the library's)
        assert nginx.wait_log("BUSY")
        (warn,) = lines(nginx, "BUSY")
        assert "[warn]" in warn, warn
        assert PREFIX + "redis store unavailable: " in warn, warn
        assert "down policy" in warn, warn
        assert pid_of(warn) in workers, (warn, workers)
        assert "cannot join" not in nginx.log()
    finally:
        busy.end()

    # Redis serves again: decided with it, with no reload
    def decided_by_redis():
        r = nginx.chat(f"acct-after-{time.time()}")
        return (r.status == 200
                and store_metrics(nginx)["tollgate_store_down"] == 0
                and redis.minute_counts())

    assert until(decided_by_redis), nginx.log()
    assert nginx.workers() == workers
    assert nginx.wait_log("answers again"), nginx.log()
    (back,) = lines(nginx, "answers again")
    assert "[notice]" in back, back
    assert back.split(" [")[0] >= warn.split(" [")[0]
    assert PREFIX + "redis store answers again" in back, back
    assert len(lines(nginx, "redis store unavailable")) == 1, nginx.log()


def test_redis_gone_and_back_is_logged_once_each_way(nginx, redis, tmp_path):
    fresh_minute(needed=30)
    nginx.start(http_extra=joined(redis.url, "cooldown=50ms",
                                  "max_cooldown=200ms", "deadline=200ms"),
                locations=api_location(), workers=1)
    assert nginx.chat("acct-up").status == 200
    assert store_metrics(nginx)["tollgate_store_down"] == 0
    port = redis.port
    redis.stop()
    # many requests while it is away, each a new key that needs Redis
    for i in range(30):
        r = nginx.chat(f"acct-away-{i}")
        assert r.status == 200, r.body
    assert store_metrics(nginx)["tollgate_store_down"] == 1
    assert nginx.wait_log("redis store unavailable")
    time.sleep(2.5)  # two more ticks of the worker's timer: nothing new
    (gone,) = lines(nginx, "redis store unavailable")
    assert "[warn]" in gone and PREFIX in gone, gone
    assert not lines(nginx, "answers again")

    again = Redis(tmp_path / "again", port).start()
    try:
        def decided_by_redis():
            r = nginx.chat(f"acct-back-{time.time()}")
            return (r.status == 200
                    and store_metrics(nginx)["tollgate_store_down"] == 0)

        assert until(decided_by_redis), nginx.log()
        assert nginx.wait_log("answers again"), nginx.log()
        time.sleep(1.5)
        (back,) = lines(nginx, "answers again")
        assert "[notice]" in back and PREFIX in back, back
        assert len(lines(nginx, "redis store unavailable")) == 1, nginx.log()

        # the timer keeps no worker from a graceful shutdown
        t = time.time()
        nginx.proc.send_signal(signal.SIGQUIT)
        nginx.proc.wait(WAIT)
        assert time.time() - t < 5, time.time() - t
        assert "gracefully shutting down" in nginx.log()
    finally:
        again.stop()

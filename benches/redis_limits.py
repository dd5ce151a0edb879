#!/usr/bin/env python3
"""Python `limits` over Redis, for benches/redis.rs (which runs it against
its own redis-server and reads the one JSON line it prints).

Each decision is what a `limits` user writes for an RPM and an RPD limit:
``hit(per_minute, account, model) and hit(per_day, account, model)`` with
``FixedWindowRateLimiter`` on ``RedisStorage``: one EVALSHA (INCRBY, and
EXPIRE on the first hit) per window, not atomic across the two, and a hit
is charged even when it is refused. Its windows start at a key's first
hit, by this process's clock.

The phases are benches/redis.rs's: threads warm up for ``--warm`` seconds
(with ``--fill N``, the refusal loop's: one thread decides on the first key
until it is refused, at most N times), then all start together and decide for ``--seconds`` (or until each made
``--max`` decisions, 0 for no bound), cycling through the keys from their
own offsets; every decision is timed with ``time.perf_counter_ns``.
Commands: ``INFO commandstats`` after the timed phase less before (see
``spent``).

    python3 benches/redis_limits.py --url redis://127.0.0.1:6379/0 --threads 1 --keys 10000
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import threading
import time
from typing import Any, Callable, cast

import limits
import redis
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter


def accounts(n: int, prefix: str) -> list[str]:
    """The account names of benches/common: 24 bytes, distinct."""
    width = 23 - len(prefix)
    return [f"{prefix}-{i:0{width}d}" for i in range(n)]


def calls(conn: redis.Redis) -> dict[str, int]:
    """Calls so far per command, INFO itself left out (sent to count)."""
    stats = cast("dict[str, dict[str, Any]]", conn.info("commandstats"))
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}


def spent(before: dict[str, int], after: dict[str, int]) -> tuple[int, int]:
    """(sent by the clients, run by Redis), as benches/redis.rs counts them:
    Redis counts the commands a script runs among the calls, so when scripts
    ran, what the clients sent is EVALSHA, EVAL and SCRIPT."""

    def d(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    run = sum(d(k) for k in after)
    scripted = d("evalsha") + d("eval")
    return (scripted + d("script") if scripted else run), run


class Phase:
    """One phase: `threads` threads deciding until the time or `max` each."""

    def __init__(
        self, decide: Callable[[int], bool], keys: int, threads: int, seconds: float, most: int, timed: bool
    ) -> None:
        self.decide = decide
        self.keys = keys
        self.threads = threads
        self.seconds = seconds
        self.most = most
        self.timed = timed
        self.stop = threading.Event()
        self.barrier = threading.Barrier(threads + 1)
        self.results: list[tuple[int, int, int, int, list[int]]] = []
        self.lock = threading.Lock()

    def worker(self, t: int) -> None:
        k = t * self.keys // self.threads
        n = refused = 0
        lat: list[int] = []
        decide, keys, most, stop, timed = self.decide, self.keys, self.most, self.stop, self.timed
        clock = time.perf_counter_ns
        self.barrier.wait()
        start = clock()
        while (most == 0 or n < most) and not stop.is_set():
            if timed:
                t0 = clock()
                ok = decide(k)
                lat.append(clock() - t0)
            else:
                ok = decide(k)
            refused += not ok
            k = 0 if k + 1 == keys else k + 1
            n += 1
        end = clock()
        with self.lock:
            self.results.append((n, refused, start, end, lat))

    def run(self) -> tuple[int, int, float, list[int]]:
        ts = [threading.Thread(target=self.worker, args=(t,)) for t in range(self.threads)]
        for th in ts:
            th.start()
        self.barrier.wait()
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.seconds and any(th.is_alive() for th in ts):
            time.sleep(0.002)
        self.stop.set()
        for th in ts:
            th.join()
        first = min(r[2] for r in self.results)
        last = max(r[3] for r in self.results)
        lat = sorted(x for r in self.results for x in r[4])
        return sum(r[0] for r in self.results), sum(r[1] for r in self.results), (last - first) / 1e9, lat


def percentile(v: list[int], p: float) -> int:
    """Nearest rank, as benches/redis.rs computes it (0 if empty)."""
    if not v:
        return 0
    i = min(max(math.ceil(len(v) * p), 1), len(v))
    return v[i - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keys", type=int, default=1)
    ap.add_argument("--prefix", default="acct")
    ap.add_argument("--model", default="DeepSeek-V3.1")
    ap.add_argument("--rpm", type=int, required=True)
    ap.add_argument("--rpd", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warm", type=float, default=1.0)
    ap.add_argument("--max", type=int, default=0, help="decisions per thread at most (0: no bound)")
    ap.add_argument("--fill", type=int, default=0, help="first decide on key 0 until refused, at most N times")
    a = ap.parse_args()
    if a.threads < 1 or a.keys < 1 or a.seconds <= 0 or min(a.warm, a.max, a.fill) < 0:
        ap.error("--threads and --keys must be at least 1, --seconds above 0, --warm, --max and --fill at least 0")

    storage = RedisStorage(a.url)
    limiter = FixedWindowRateLimiter(storage)
    per_minute = limits.RateLimitItemPerMinute(a.rpm)
    per_day = limits.RateLimitItemPerDay(a.rpd)
    names = accounts(a.keys, a.prefix)
    model = a.model
    hit = limiter.hit

    def decide(k: int) -> bool:
        account = names[k]
        return hit(per_minute, account, model) and hit(per_day, account, model)

    if a.warm > 0:
        Phase(decide, a.keys, a.threads, a.warm, a.max, False).run()
    for _ in range(a.fill):
        if not decide(0):
            break
    conn = redis.Redis.from_url(a.url)
    before = calls(conn)
    decisions, refused, seconds, lat = Phase(decide, a.keys, a.threads, a.seconds, a.max, True).run()
    sent, run = spent(before, calls(conn))
    print(
        json.dumps(
            {
                "decisions": decisions,
                "refused": refused,
                "seconds": seconds,
                "p50_ns": percentile(lat, 0.50),
                "p99_ns": percentile(lat, 0.99),
                "p999_ns": percentile(lat, 0.999),
                "sent": sent,
                "run": run,
                "limits": limits.__version__,
                "redis_py": redis.__version__,
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()

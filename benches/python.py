#!/usr/bin/env python3
"""Decisions per second: tollgate (ctypes over libtollgate) against the
`limits` package, side by side in one process.

Each decision checks a per-minute and a per-day limit for one (account,
model) key, as a real gateway does, and reads the verdict:
  - tollgate: ``limiter.check(account, model)`` (one call decides both
    windows, all or nothing, and returns the full Decision), tested for
    truth; a second row also reads every field of each Decision (they are
    read from the library's bytes when asked for);
  - limits: ``hit(per_minute, account, model) and hit(per_day, account,
    model)`` with MemoryStorage, for FixedWindowRateLimiter and
    SlidingWindowCounterRateLimiter.
  - limits "+ header stats": the same, plus get_window_stats for both
    windows, which is what it takes to fill the six x-ratelimit-* headers the
    policy puts on every response (tollgate's Decision already has them).
Limits are set high enough that every decision admits (the common path).
Keys: 1 hot key, and 10 000 keys visited round-robin.

Two floors, in the same loop: a bare ctypes call of a library function that
does nothing (tg_version_number, no arguments), and tg_check_now through
ctypes with every argument made beforehand (what check() costs with no
Python around the call).

Time is the process's CPU time (time.process_time): on a shared machine,
wall-clock time also counts the moments other processes hold the CPU, which
says nothing about either limiter. Rounds interleave the contenders so what
noise remains hits all of them alike. The table shows each one's best
round (as timeit advises: slower rounds measure interference, not the code);
the speed-ups are given from the best rounds and, for a noisier but
interference-robust view, as the median of per-round ratios (each from
back-to-back runs). --wall uses wall-clock time instead.

    python3 benches/python.py [--decisions N] [--rounds R] [--wall]

from the repository root, with the package importable: after
``pip install ./bindings/python``, or against a release build as
``TOLLGATE_LIBRARY=target/release/libtollgate.so PYTHONPATH=bindings/python/src``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable

import tollgate

HUGE = 4_000_000_000  # under u32::MAX; rpm may not exceed rpd
MODEL = "DeepSeek-V3.1"
POLICY = f"""
[models]
"{MODEL}" = {{ region = "EU" }}
[tiers.developer]
"{MODEL}" = {{ rpm = {HUGE}, rpd = {HUGE} }}
"""


def refused() -> None:
    raise SystemExit("benches/python.py: a decision was refused; the limits are meant never to be reached")


def tollgate_runner(lim: tollgate.Limiter, keys: list[str], every_field: bool = False) -> Callable[[int], None]:
    check = lim.check

    if every_field:

        def run_fields(n: int) -> None:
            k = len(keys)
            for i in range(n):
                d = check(keys[i % k], MODEL)
                if not d.allowed:
                    refused()
                (d.limited_by, d.minute_limit, d.minute_remaining, d.minute_reset, d.day_limit)
                (d.day_remaining, d.day_reset, d.retry_after, d.model)

        return run_fields

    def run(n: int) -> None:
        k = len(keys)
        if k == 1:
            a = keys[0]
            for _ in range(n):
                if not check(a, MODEL):
                    refused()
        else:
            for i in range(n):
                if not check(keys[i % k], MODEL):
                    refused()

    return run


def floor_runner(keys: list[str], what: str) -> Callable[[int], None]:
    """The ctypes floors: the same loop around a bare call."""
    from tollgate import _ffi

    lib = ctypes.PyDLL(str(tollgate.library_path))  # as the package calls the hot path: holding the GIL
    if what == "noop":
        fn = lib.tg_version_number

        def run_noop(n: int) -> None:
            k = len(keys)
            for i in range(n):
                keys[i % k]
                fn()

        return run_noop

    lim = tollgate.Limiter(tollgate.Policy.parse(POLICY), slots=65536)
    handle = ctypes.byref(ctypes.c_char.from_address(lim._ptr().value or 0))
    model = MODEL.encode()
    reqs = []
    for a in keys:
        ab = a.encode()
        r = _ffi.TgRequest(0, ab, len(ab), model, len(model), _ffi.TG_TIER_DEVELOPER, 1, 0, 0)
        reqs.append(ctypes.byref(r))
    out = ctypes.byref(_ffi.TgDecision())
    fn = lib.tg_check_now

    def run_check(n: int) -> None:
        k = len(reqs)
        for i in range(n):
            if fn(handle, reqs[i % k], out):
                refused()

    run_check.keep = lim  # type: ignore[attr-defined]
    return run_check


def limits_runner(cls_name: str, keys: list[str], stats: bool = False) -> Callable[[int], None]:
    import limits
    from limits.storage import MemoryStorage

    cls = getattr(limits.strategies, cls_name)
    lim = cls(MemoryStorage())
    hit = lim.hit
    window = lim.get_window_stats
    minute = limits.RateLimitItemPerMinute(HUGE)
    day = limits.RateLimitItemPerDay(HUGE)

    if stats:

        def run_stats(n: int) -> None:
            k = len(keys)
            for i in range(n):
                a = keys[i % k]
                if hit(minute, a, MODEL) and hit(day, a, MODEL):
                    window(minute, a, MODEL)
                    window(day, a, MODEL)

        return run_stats

    def run(n: int) -> None:
        k = len(keys)
        if k == 1:
            a = keys[0]
            for _ in range(n):
                hit(minute, a, MODEL) and hit(day, a, MODEL)
        else:
            for i in range(n):
                a = keys[i % k]
                hit(minute, a, MODEL) and hit(day, a, MODEL)

    return run


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decisions", type=int, default=50_000, help="decisions per contender per round")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--wall", action="store_true", help="time with wall-clock time, not CPU time")
    args = ap.parse_args()
    clock = time.perf_counter if args.wall else time.process_time
    load_before = os.getloadavg()[0]

    import limits

    policy = tollgate.Policy.parse(POLICY)
    tmp = tempfile.TemporaryDirectory()
    results: dict[tuple[str, str], list[float]] = {}
    key_sets = {"1 key": ["acct-0"], "10 000 keys": [f"acct-{i}" for i in range(10_000)]}
    contenders: list[tuple[str, Callable[[list[str]], Callable[[int], None]]]] = [
        ("tollgate Limiter (process memory)", lambda ks: tollgate_runner(tollgate.Limiter(policy, slots=65536), ks)),
        (
            "tollgate Limiter, every Decision field read",
            lambda ks: tollgate_runner(tollgate.Limiter(policy, slots=65536), ks, every_field=True),
        ),
        (
            "tollgate Limiter.open (shared file)",
            lambda ks: tollgate_runner(
                tollgate.Limiter.open(os.path.join(tmp.name, f"t{len(ks)}"), policy, slots=65536), ks
            ),
        ),
        ("limits FixedWindowRateLimiter", lambda ks: limits_runner("FixedWindowRateLimiter", ks)),
        ("limits SlidingWindowCounterRateLimiter", lambda ks: limits_runner("SlidingWindowCounterRateLimiter", ks)),
        (
            "limits FixedWindowRateLimiter + header stats",
            lambda ks: limits_runner("FixedWindowRateLimiter", ks, stats=True),
        ),
        ("floor: ctypes call of tg_version_number (no-op)", lambda ks: floor_runner(ks, "noop")),
        ("floor: tg_check_now through ctypes, arguments prebuilt", lambda ks: floor_runner(ks, "check")),
    ]
    runners = {(name, kname): make(keys) for kname, keys in key_sets.items() for name, make in contenders}
    for run in runners.values():
        run(20_000)  # warm up: fill every key once, settle allocators
    for _ in range(args.rounds):
        for key, run in runners.items():
            t0 = clock()
            run(args.decisions)
            dt = clock() - t0
            results.setdefault(key, []).append(args.decisions / dt)

    best = {k: max(v) for k, v in results.items()}
    cmd = "python3 " + " ".join([sys.argv[0]] + sys.argv[1:])
    print(f"command: {cmd}")
    print(f"machine: {machine()}")
    print(
        f"python {platform.python_version()}, tollgate {tollgate.__version__} (lib {tollgate.library_version()}), "
        f"limits {limits.__version__}; best of {args.rounds} rounds x {args.decisions} decisions; "
        f"{'wall-clock' if args.wall else 'CPU'} time; load average {load_before:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end"
    )
    print()
    knames = list(key_sets)
    print(
        "| contender (one decision = minute + day limit) | "
        + " | ".join(f"{k}: ns per decision | {k}: decisions/s" for k in knames)
        + " |"
    )
    print("|---|" + "---:|---:|" * len(knames))
    for name, _ in contenders:
        print(f"| {name} | " + " | ".join(f"{1e9 / best[(name, k)]:,.0f} | {best[(name, k)]:,.0f}" for k in knames) + " |")
    print()
    ours_name = "tollgate Limiter (process memory)"

    def median_ratio(k: str, other: str) -> float:
        return statistics.median(a / b for a, b in zip(results[(ours_name, k)], results[(other, k)]))

    goals = {"limits FixedWindowRateLimiter": ("5x", "8x")}
    print(
        "| tollgate Limiter vs | "
        + " | ".join(f"{k}: best rounds (median of per-round ratios)" for k in knames)
        + " | goal |"
    )
    print("|---|" + "---:|" * len(knames) + "---|")
    for other in [
        "limits FixedWindowRateLimiter",
        "limits SlidingWindowCounterRateLimiter",
        "limits FixedWindowRateLimiter + header stats",
    ]:
        cells = [f"{best[(ours_name, k)] / best[(other, k)]:.1f}x ({median_ratio(k, other):.1f}x)" for k in knames]
        goal = " / ".join(goals[other]) if other in goals else ""
        print(f"| {other} | " + " | ".join(cells) + f" | {goal} |")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The official OpenAI clients against a gateway, for the nginx and ASGI
suites (tests/tower.rs does the same in Rust): both clients, Python's and
Node's, run as a user's program runs them (openai_call.py, openai_call.mjs),
at the same time, each with its own account; and what each must have done
after the core's answer, as its headers tell it.

The Node package is installed by tests/setup.sh (npm ci here); nothing is
downloaded at test time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
POLICY = HERE.parent / "conformance.toml"
CLIENTS = ("python", "node")

# A call that should give up promptly: seconds, with room for a loaded
# machine; the clients' own backoff before a useless retry is 0.5 s to 8 s.
PROMPT = 5.0
# How long a run may take before it counts as a client still waiting (a
# client sleeping through a day's retry-after waits hours).
WAIT = 30.0
# Late in a UTC minute: a refusal of the minute then asks for a short wait.
LATE_SECOND = 50.0


def node_ready() -> str:
    """The node executable, once the pinned package is in place."""
    node = shutil.which("node")
    pinned = json.loads((HERE / "package.json").read_text())["dependencies"]["openai"]
    have = HERE / "node_modules" / "openai" / "package.json"
    if node is None or not have.exists() or json.loads(have.read_text())["version"] != pinned:
        raise RuntimeError(f"node and openai {pinned} in {HERE}/node_modules are needed: run tests/setup.sh")
    return node


def run(base_url: str, model: str, *, before: int = 0, at_second: float | None = None,
        headers: dict[str, str] | None = None, wait: float = WAIT) -> dict[str, Any]:
    """Both clients at once, each making `before` calls that never retry,
    then one call at the client's defaults; {client: output}, or
    {client: {"still_waiting": seconds}} for a client that had not finished
    after `wait` seconds (it is killed)."""
    cmds = {
        "python": [sys.executable, str(HERE / "openai_call.py")],
        "node": [node_ready(), str(HERE / "openai_call.mjs")],
    }
    procs = {}
    for name, cmd in cmds.items():
        spec = {"base_url": base_url, "api_key": f"sk-{name}-{uuid.uuid4().hex[:12]}", "model": model,
                "before": before, "at_second": at_second, "headers": headers or {}}
        procs[name] = subprocess.Popen([*cmd, json.dumps(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=dict(os.environ))
    deadline = time.monotonic() + wait
    out: dict[str, Any] = {}
    for name, p in procs.items():
        try:
            stdout, stderr = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            out[name] = {"still_waiting": wait}
            continue
        assert p.returncode == 0, (name, stdout, stderr)
        out[name] = json.loads(stdout)
    return out


def seconds_to_midnight() -> float:
    return 86400 - time.time() % 86400


def each_client(out: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> None:
    """Runs `check` on each client's output; fails with every client's
    failures at once (one still waiting is one)."""
    failed = []
    for name in CLIENTS:
        got = out[name]
        if "still_waiting" in got:
            failed.append(f"{name}: still waiting after {got['still_waiting']} s, killed")
            continue
        try:
            check(got)
        except AssertionError as e:
            failed.append(f"{name}: {e}: {json.dumps(got)}")
    assert not failed, "\n".join(failed)


def check_day_limit(out: dict[str, Any]) -> None:
    """A refusal of the day window: each client gives up at once with a
    RateLimitError after its one attempt, told not to retry; retry-after
    stays the truth (midnight UTC)."""
    to_midnight = seconds_to_midnight()

    def check(got: dict[str, Any]) -> None:
        assert got["before"] == [200, 200, 200], "before"
        call = got["call"]
        assert len(call["attempts"]) == 1, f"{len(call['attempts'])} attempts"
        assert call["seconds"] < PROMPT, "slow"
        assert (call["ok"], call["error"], call["status"], call["code"]) == (
            False, "RateLimitError", 429, "rate_limit_exceeded"), "not a RateLimitError"
        first = call["attempts"][0]
        assert first["should_retry"] == "false", "x-should-retry"
        assert abs(int(first["retry_after"]) - to_midnight) <= PROMPT + 2, f"retry-after, {to_midnight} s to midnight"

    each_client(out, check)


def check_minute_limit(out: dict[str, Any]) -> None:
    """A refusal of the minute window: each client is told to retry, sleeps
    what retry-after says (both SDKs honour it up to 60 s and more), and its
    retry, in the next minute, gets through."""

    def check(got: dict[str, Any]) -> None:
        assert got["before"] == [200, 200], "before"
        call = got["call"]
        assert call["ok"], "not admitted"
        assert len(call["attempts"]) == 2, f"{len(call['attempts'])} attempts"
        first, second = call["attempts"]
        assert (first["status"], second["status"]) == (429, 200), "statuses"
        slept = second["at"] - first["at"]
        retry_after = int(first["retry_after"])
        assert retry_after - 0.5 <= slept <= retry_after + PROMPT, f"slept {slept} s for retry-after {retry_after}"
        assert first["should_retry"] == "true", "x-should-retry"

    each_client(out, check)


def check_failure(out: dict[str, Any]) -> None:
    """The limiter's own failure (500, here an unknown tier): a retry does
    not mend it, and neither client makes one."""

    def check(got: dict[str, Any]) -> None:
        call = got["call"]
        assert len(call["attempts"]) == 1, f"{len(call['attempts'])} attempts"
        assert call["seconds"] < PROMPT, "slow"
        assert (call["ok"], call["error"], call["status"]) == (False, "InternalServerError", 500), "not a 500"
        assert call["attempts"][0]["should_retry"] == "false", "x-should-retry"

    each_client(out, check)

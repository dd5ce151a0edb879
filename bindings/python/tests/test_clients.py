"""The official OpenAI clients, Python's and Node's at their default retries,
through RateLimitMiddleware in a real uvicorn server with the conformance
policy: each does what the library's x-should-retry and retry-after tell it
(tests/clients/harness.py at the repository root). Without x-should-retry,
Node's client sleeps through a day's retry-after (hours) and both retry the
limiter's 500."""

from __future__ import annotations

import sys
from typing import Any

from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "clients"))
import harness

DEVELOPER = {"x-tollgate-tier": "developer"}


def base(start_server: Any) -> str:
    server = start_server(env={"TOLLGATE_TEST_POLICY": str(harness.POLICY)})
    return f"{server.url}/v1"


def test_a_day_limit_429_is_not_retried(start_server: Any) -> None:
    harness.check_day_limit(harness.run(base(start_server), "tiny-day", before=3, headers=DEVELOPER))


def test_a_minute_limit_429_is_retried_after_retry_after(start_server: Any) -> None:
    out = harness.run(base(start_server), "tiny-minute", before=2, at_second=harness.LATE_SECOND,
                      headers=DEVELOPER, wait=60 + harness.WAIT)
    harness.check_minute_limit(out)


def test_the_limiters_500_is_not_retried(start_server: Any) -> None:
    harness.check_failure(harness.run(base(start_server), "DeepSeek-V3.1", headers={"x-tollgate-tier": "gold"}))

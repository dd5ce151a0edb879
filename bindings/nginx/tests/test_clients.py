"""The official OpenAI clients, Python's and Node's at their default retries,
through the real nginx with the conformance policy: each does what the
core's x-should-retry and retry-after tell it (tests/clients/harness.py).
Without x-should-retry, Node's client sleeps through a day's retry-after
(hours) and both retry the limiter's 500."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "clients"))
import harness

LOCATION = """
        location /v1/ {
            tollgate tg;
            tollgate_account $tg_account;
            tollgate_tier $http_x_tollgate_tier;
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
"""
DEVELOPER = {"x-tollgate-tier": "developer"}


def base(nginx):
    nginx.start(zone=f"size=1m policy={harness.POLICY}", locations=LOCATION)
    return f"http://127.0.0.1:{nginx.port}/v1"


def test_a_day_limit_429_is_not_retried(nginx):
    harness.check_day_limit(
        harness.run(base(nginx), "tiny-day", before=3, headers=DEVELOPER))


def test_a_minute_limit_429_is_retried_after_retry_after(nginx):
    harness.check_minute_limit(
        harness.run(base(nginx), "tiny-minute", before=2,
                    at_second=harness.LATE_SECOND, headers=DEVELOPER,
                    wait=60 + harness.WAIT))


def test_the_limiters_500_is_not_retried(nginx):
    harness.check_failure(
        harness.run(base(nginx), "DeepSeek-V3.1",
                    headers={"x-tollgate-tier": "gold"}))

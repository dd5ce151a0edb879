"""The conformance table (tests/conformance.json) through the real nginx:
every case sent to a location limited with the table's policy, the account
from the bearer token, the tier from x-tollgate-tier and default options,
in front of the real upstream; status, headers, body and $tollgate_status
must be the table's. A case's 'held' requests are held open by the upstream
(upstream.py's hold_account) until the case's request has its answer. Then
the same table with one answer changed in the core's options
(tollgate_status 503): only the over-limit cases change, so the module sends
the core's answer, not a copy of its own."""

import contextlib
import copy
import threading
import time

from conftest import WAIT, fresh_minute
import conformance

LOCATION = """
        location /v1/ {
            tollgate tg;
            tollgate_account $tg_account;
            tollgate_tier $http_x_tollgate_tier;
            %s
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # the table's upstream reports no usage (a reservation kept)
            proxy_set_header X-Upstream-No-Usage 1;
        }
"""


def run_table(nginx, upstream, extra=""):
    """Starts nginx with the table's policy and sends every case; returns
    [(case, response)]."""
    policy, cases = conformance.load()
    fresh_minute()
    nginx.start(zone=f"size=1m policy={policy}",
                locations=LOCATION % extra,
                http_extra="large_client_header_buffers 4 16k;")
    out = []
    for case in cases:
        req = case["request"]
        headers = {"X-Tollgate-Tier": req["tier"]}
        if req["account"] is not None:
            headers["Authorization"] = f"Bearer {req['account']}"
        body = req["body"].encode() if req["method"] == "POST" else None
        if body is not None:
            headers["Content-Type"] = "application/json"

        def send(req=req, headers=headers, body=body):
            return nginx.request(req["method"], "/v1/chat/completions",
                                 body, headers)

        out.append((case, conformance.run(
            case, send, lambda n, req=req, send=send:
            held(upstream, req["account"], n, send))))
    return out


@contextlib.contextmanager
def held(upstream, account, n, send):
    """n of the case's requests running, their answers held by the
    upstream until the block ends; then they finish, admitted."""
    upstream.state.hold_account(account)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(send()))
               for _ in range(n)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + WAIT
        while upstream.state.running(account) < n:
            assert time.monotonic() < deadline, "held requests not running"
            time.sleep(0.02)
        yield
    finally:
        upstream.state.release_account(account)
        for t in threads:
            t.join(WAIT)
    assert [a.status for a in answers] == [200] * n


def check(case, r):
    upstream = r.header("x-upstream") == "answered"
    conformance.check(case, r.status, r.header("x-tollgate-status"),
                      r.headers, None if upstream else r.body)


def test_every_case_of_the_table(nginx, upstream):
    results = run_table(nginx, upstream)
    assert len(results) >= 20
    for case, r in results:
        check(case, r)


def test_a_changed_answer_in_the_core_shows_up(nginx, upstream):
    changed = 0
    for case, r in run_table(nginx, upstream, "tollgate_status 503;"):
        if case["expect"]["outcome"] == "REJECTED":
            case = copy.deepcopy(case)
            case["expect"]["status"] = 503
            changed += 1
        check(case, r)
    # the minute, the day, the tokens and the in-flight refusals
    assert changed == 4

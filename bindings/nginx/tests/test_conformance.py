"""The conformance table (tests/conformance.json) through the real nginx:
every case sent to a location limited with the table's policy, the account
from the bearer token, the tier from x-tollgate-tier and default options,
in front of the real upstream; status, headers, body and $tollgate_status
must be the table's. Then the same table with one answer changed in the
core's options (tollgate_status 503): only the over-limit cases change, so
the module sends the core's answer, not a copy of its own."""

import copy

from conftest import fresh_minute
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


def run_table(nginx, extra=""):
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
        for _ in range(case.get("before", 0)):
            nginx.request(req["method"], "/v1/chat/completions", body,
                          headers)
        r = nginx.request(req["method"], "/v1/chat/completions", body,
                          headers)
        out.append((case, r))
    return out


def check(case, r):
    upstream = r.header("x-upstream") == "answered"
    conformance.check(case, r.status, r.header("x-tollgate-status"),
                      r.headers, None if upstream else r.body)


def test_every_case_of_the_table(nginx):
    results = run_table(nginx)
    assert len(results) >= 20
    for case, r in results:
        check(case, r)


def test_a_changed_answer_in_the_core_shows_up(nginx):
    changed = 0
    for case, r in run_table(nginx, "tollgate_status 503;"):
        if case["expect"]["outcome"] == "REJECTED":
            case = copy.deepcopy(case)
            case["expect"]["status"] = 503
            changed += 1
        check(case, r)
    assert changed == 3

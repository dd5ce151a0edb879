"""The conformance table (tests/conformance.json at the repository root, its
policy tests/conformance.toml) through the real stack: RateLimitMiddleware
in a uvicorn server, requests over HTTP with httpx. Every binding runs the
same table; the matching rules are tests/checks/conformance.rs's. A case's
'before' requests each run to their end first; its 'held' requests are
started first and kept open by the upstream (conformance_app.py) until the
case's request has its answer."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import REPO

TABLE = json.loads((REPO / "tests" / "conformance.json").read_text())
CASES: list[dict[str, Any]] = TABLE["cases"]
POLICY = REPO / TABLE["policy"]


def matches(want: Any, got: Any) -> bool:
    """conformance.rs's rule: 're:' strings are anchored regular
    expressions, objects match key for key (no more, no fewer), anything
    else is equal."""
    if isinstance(want, str) and isinstance(got, str):
        if want.startswith("re:"):
            return re.search(want[3:], got) is not None
        return want == got
    if isinstance(want, dict) and isinstance(got, dict):
        return want.keys() == got.keys() and all(matches(v, got[k]) for k, v in want.items())
    return bool(want == got) and type(want) is type(got)


def request(client: httpx.Client, case: dict[str, Any], hold: str | None = None) -> httpx.Request:
    r = case["request"]
    headers = {"x-tollgate-tier": r["tier"], "content-type": "application/json"}
    if r["account"] is not None:
        headers["authorization"] = f"Bearer {r['account']}"
    if hold is not None:
        headers["x-conformance-hold"] = hold
    return client.build_request(r["method"], "/v1/chat/completions", content=r["body"].encode(), headers=headers)


def send(client: httpx.Client, case: dict[str, Any]) -> httpx.Response:
    """The case's request, read to its end."""
    return client.send(request(client, case))


def send_holding(client: httpx.Client, case: dict[str, Any]) -> httpx.Response:
    """The case's request, after its ``held`` identical requests were started
    (each on its own connection, admitted: its headers are in) with their
    responses kept open by the upstream until this one has its answer; then
    they end, each read to its end."""
    name = f"hold-{uuid.uuid4().hex}"
    held: list[tuple[httpx.Client, httpx.Response]] = []
    try:
        for _ in range(case.get("held", 0)):
            c = httpx.Client(base_url=client.base_url, timeout=client.timeout)
            held.append((c, c.send(request(c, case, name), stream=True)))
            assert held[-1][1].status_code == 200, (case["name"], "a held request was not admitted")
        return send(client, case)
    finally:
        client.get(f"/release?{name}")
        for c, resp in held:
            resp.read()
            resp.close()
            c.close()


def check(case: dict[str, Any], resp: httpx.Response, want: dict[str, Any] | None = None) -> None:
    name = case["name"]
    want = want or case["expect"]
    assert resp.status_code == want["status"], (name, resp.status_code, resp.text)
    for h, v in want["headers"].items():
        assert h in resp.headers, (name, f"no header {h}", dict(resp.headers))
        assert len(resp.headers.get_list(h)) == 1, (name, f"header {h} sent twice")
        assert matches(v, resp.headers[h]), (name, h, resp.headers[h], v)
    for h in want.get("absent", []):
        assert h not in resp.headers, (name, f"header {h} sent", resp.headers[h])
    reached = resp.headers.get("x-upstream") == "reached"
    if want["body"] is None:
        # Passed to the upstream; it saw the library's outcome, or none for
        # a request passed unread.
        assert reached, (name, "not passed upstream", resp.text)
        seen = resp.headers["x-upstream-outcome"]
        assert seen == want["outcome"] or (seen == "unread" and want["outcome"] == "NOT_LIMITED"), (name, seen)
    else:
        assert not reached, (name, "passed upstream, expected an answer")
        assert matches(want["body"], resp.json()), (name, resp.text, want["body"])


def run_table(start_server, env: dict[str, str] | None = None) -> dict[str, httpx.Response]:
    server = start_server(env={"TOLLGATE_TEST_POLICY": str(POLICY), **(env or {})}, app="conformance_app:app")
    got = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for case in CASES:
            # Each 'before' request runs to its end before the next is sent.
            for _ in range(case.get("before", 0)):
                send(client, case)
            got[case["name"]] = send_holding(client, case)
    return got


def test_the_table_has_every_kind_of_answer():
    outcomes = {c["expect"]["outcome"] for c in CASES}
    assert {"PASSED", "REJECTED", "UNKNOWN_MODEL", "NO_LIMIT", "NO_ACCOUNT", "BAD_REQUEST", "NOT_LIMITED",
            "ERROR"} <= outcomes
    assert len({c["name"] for c in CASES}) == len(CASES)


def test_every_case_through_uvicorn(start_server):
    got = run_table(start_server)
    for case in CASES:
        check(case, got[case["name"]])


def over_limit(case: dict[str, Any]) -> bool:
    return bool(case["expect"]["outcome"] == "REJECTED")


def test_a_change_in_the_core_shows_up(start_server):
    # refuse_status goes to the library, which answers with it: the cases
    # over a limit change their status (nothing else), the rest are as the
    # table says. Nothing in the middleware knows 429.
    assert any(over_limit(c) for c in CASES)
    got = run_table(start_server, {"TOLLGATE_TEST_REFUSE_STATUS": "503"})
    for case in CASES:
        want = dict(case["expect"])
        if over_limit(case):
            want["status"] = 503
        check(case, got[case["name"]], want)


def test_dry_run_passes_every_case_and_keeps_what_it_would_have_sent(start_server):
    got = run_table(start_server, {"TOLLGATE_TEST_DRY_RUN": "1"})
    for case in CASES:
        want = case["expect"]
        resp = got[case["name"]]
        name = case["name"]
        assert resp.status_code == 200 and resp.headers["x-upstream"] == "reached", (name, resp.text)
        would = int(resp.headers["x-upstream-would-status"])
        assert would == (0 if want["body"] is None else want["status"]), (name, would)
        seen = resp.headers["x-upstream-outcome"]
        expected = "DRY_RUN" if over_limit(case) else want["outcome"]
        assert seen == expected or (seen == "unread" and expected == "NOT_LIMITED"), (name, seen)
        # The limit headers go on the upstream's response, as for an
        # admitted request (the body's content-type and the refusal's
        # retry-after and x-should-retry do not).
        for h, v in want["headers"].items():
            if h not in ("content-type", "retry-after", "x-should-retry"):
                assert matches(v, resp.headers.get(h, "")), (name, h, resp.headers.get(h))


@pytest.mark.parametrize(("want", "got", "ok"), [
    ("re:^[0-9]+$", "12", True),
    ("re:^[0-9]+$", "12a", False),
    ({"a": None}, {"a": None, "b": 1}, False),
    ({"a": "x"}, {"a": "x"}, True),
    (None, "null", False),
])
def test_matching_rules(want, got, ok):
    assert matches(want, got) is ok


def test_the_package_holds_no_answer_text_or_parsing_of_its_own():
    # Every answer above came from the library: the package names none of
    # the error codes, renders no JSON and parses no tier or header text.
    import tollgate

    pkg = Path(tollgate.__file__).parent
    sources = {p.name: p.read_text() for p in pkg.glob("*.py")}
    assert {"asgi.py", "_answer.py", "_decision.py", "_limiter.py", "_render.py"} <= sources.keys()
    for name, text in sources.items():
        for word in ("rate_limit_exceeded", "model_not_found", "invalid_request_error", "invalid_api_key",
                     "json.dumps"):
            assert word not in text, (name, word)
    assert "split(b\"\\r\\n\")" not in sources["asgi.py"]

"""The conformance table (tests/conformance.json at the repository root):
loading it and matching a received answer against a case, by the rules of
its "about" text and of tests/checks/conformance.rs. Standard library only and
independent of nginx, so any binding's tests can import it by path."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ContextManager, TypeVar

T = TypeVar("T")


def _table() -> pathlib.Path:
    """tests/conformance.json in the nearest directory above this file that
    has one, so the module works wherever in the repository it sits."""
    here = pathlib.Path(__file__).resolve()
    for d in here.parents:
        t = d / "tests" / "conformance.json"
        if t.is_file():
            return t
    raise FileNotFoundError(f"no tests/conformance.json above {here}")


TABLE = _table()


def load(
    path: pathlib.Path = TABLE,
) -> tuple[pathlib.Path, list[dict[str, Any]]]:
    """(the policy file, the cases) of the table at `path`."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    root = path.resolve().parents[1]
    return root / doc["policy"], list(doc["cases"])


def run(case: Mapping[str, Any], send: Callable[[], T],
        held: Callable[[int], ContextManager[Any]] | None = None) -> T:
    """Sends a case by the table's rules and returns the case's answer:
    the 'before' requests one after another, each to its end (`send` sends
    the case's request and reads its whole answer), then, within
    `held(n)`, the case's request. `held(n)` starts n identical requests
    that stay running (their responses held open) until it exits, when it
    lets them finish; it is needed only by a case with 'held'."""
    for _ in range(case.get("before", 0)):
        send()
    n = case.get("held", 0)
    if n == 0:
        return send()
    assert held is not None, f"{case['name']}: 'held' needs held()"
    with held(n):
        return send()


def matches(want: Any, got: Any) -> bool:
    """`got` matches `want`: strings equal, or a 're:' regular expression
    that matches; objects with the same keys, each matching; anything else
    equal."""
    if isinstance(want, str) and isinstance(got, str):
        if want.startswith("re:"):
            return re.search(want[3:], got) is not None
        return want == got
    if isinstance(want, dict) and isinstance(got, dict):
        return want.keys() == got.keys() and all(
            matches(v, got[k]) for k, v in want.items())
    return bool(want == got) and type(want) is type(got)


def check(case: Mapping[str, Any], status: int, outcome: str | None,
          headers: Mapping[str, Sequence[str]], body: bytes | None) -> None:
    """Asserts that an answer is the case's. `headers` maps lower-case
    names to every value sent; `body` is None when the request reached the
    upstream (the binding's own test says how it knows); `outcome` is the
    binding's name of it, or None when the binding does not expose one."""
    name = case["name"]
    want = case["expect"]
    assert status == want["status"], \
        f"{name}: status {status}, want {want['status']}"
    if outcome is not None:
        assert outcome == want["outcome"], \
            f"{name}: outcome {outcome}, want {want['outcome']}"
    for h, v in want["headers"].items():
        got = headers.get(h)
        assert got, f"{name}: no header {h} in {dict(headers)}"
        assert len(got) == 1, f"{name}: {h} sent {len(got)} times: {got}"
        assert matches(v, got[0]), f"{name}: {h}: {got[0]!r}, want {v!r}"
    for h in want.get("absent", []):
        assert h not in headers, f"{name}: header {h} sent: {headers[h]}"
    if want["body"] is None:
        assert body is None, f"{name}: answered {body!r}, want upstream"
        return
    assert body is not None, f"{name}: reached the upstream, want an answer"
    doc = json.loads(body)
    assert matches(want["body"], doc), \
        f"{name}: body {body!r}\nwant {want['body']!r}"

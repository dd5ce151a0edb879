"""The upstream behind RateLimitMiddleware for the conformance table
(tests/conformance.json), served by uvicorn: default options, the account
from the bearer token, the tier from the x-tollgate-tier header.

A request with ``x-conformance-hold: NAME`` (a case's ``held`` requests) gets
its response start and a first chunk at once, and its end only after ``GET
/release?NAME``: its in-flight unit is held until then.

Environment:
  TOLLGATE_TEST_POLICY         the table's policy file (tests/conformance.toml)
  TOLLGATE_TEST_REFUSE_STATUS  the middleware's refuse_status (unset: default)
  TOLLGATE_TEST_DRY_RUN        set: dry_run=True
"""

from __future__ import annotations

import asyncio
import os

import tollgate
from tollgate.asgi import ANSWER_SCOPE_KEY, RateLimitMiddleware, bearer_token, header

policy = tollgate.Policy.load(os.environ["TOLLGATE_TEST_POLICY"])
limiter = tollgate.Limiter(policy, slots=1024)
options = {}
if os.environ.get("TOLLGATE_TEST_REFUSE_STATUS"):
    options["refuse_status"] = int(os.environ["TOLLGATE_TEST_REFUSE_STATUS"])
if os.environ.get("TOLLGATE_TEST_DRY_RUN"):
    options["dry_run"] = True


async def upstream(scope, receive, send):
    """Answers 200 and says it was reached, and with which outcome of the
    library's (none: the request was passed unread)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    answer = scope.get(ANSWER_SCOPE_KEY)
    outcome = answer.outcome if answer is not None else "unread"
    would = str(answer.would_status if answer is not None else 0)
    hold = next((v.decode() for k, v in scope["headers"] if k == b"x-conformance-hold"), None)
    headers = [(b"x-upstream", b"reached"), (b"x-upstream-outcome", outcome.encode()),
               (b"x-upstream-would-status", would.encode())]
    if hold is None:
        await send({"type": "http.response.start", "status": 200, "headers": [*headers, (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    # Held: the client has the answer's headers (it was admitted), and the
    # response stays open until the case's request has its answer.
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"held\n", "more_body": True})
    await _released(hold).wait()
    await send({"type": "http.response.body", "body": b"done\n"})


_holds: dict[str, asyncio.Event] = {}


def _released(name: str) -> asyncio.Event:
    return _holds.setdefault(name, asyncio.Event())


async def health(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


limited = RateLimitMiddleware(
    upstream, limiter, account=bearer_token, tier=lambda scope: header(scope, "x-tollgate-tier") or "", **options
)


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/health":
        await health(scope, receive, send)
    elif scope["type"] == "http" and scope["path"] == "/release":
        _released(scope["query_string"].decode()).set()
        await health(scope, receive, send)
    else:
        await limited(scope, receive, send)

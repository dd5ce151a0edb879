"""The upstream behind RateLimitMiddleware for the conformance table
(tests/conformance.json), served by uvicorn: default options, the account
from the bearer token, the tier from the x-tollgate-tier header.

Environment:
  TOLLGATE_TEST_POLICY         the table's policy file (tests/conformance.toml)
  TOLLGATE_TEST_REFUSE_STATUS  the middleware's refuse_status (unset: default)
  TOLLGATE_TEST_DRY_RUN        set: dry_run=True
"""

from __future__ import annotations

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
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"x-upstream", b"reached"), (b"x-upstream-outcome", outcome.encode()),
        (b"x-upstream-would-status", would.encode()), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def health(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


limited = RateLimitMiddleware(
    upstream, limiter, account=bearer_token, tier=lambda scope: header(scope, "x-tollgate-tier") or "", **options
)


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/health":
        await health(scope, receive, send)
    else:
        await limited(scope, receive, send)

"""A small OpenAI-compatible FastAPI app behind RateLimitMiddleware, served
by uvicorn in the server tests.

Environment:
  TOLLGATE_TEST_TABLE   table file shared by all workers (Limiter.open);
                        unset: an in-process limiter
  TOLLGATE_TEST_POLICY  policy TOML file; unset: the built-in policy
  TOLLGATE_TEST_REDIS   the quota store's URL: the table (TOLLGATE_TEST_TABLE
                        or in-process) is then leased and joined to it
  TOLLGATE_TEST_REDIS_OPTIONS  its options, as a JSON object
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

import tollgate
from tollgate.asgi import RateLimitMiddleware, bearer_token, header

policy_file = os.environ.get("TOLLGATE_TEST_POLICY")
policy = tollgate.Policy.load(policy_file) if policy_file else tollgate.Policy.default()
table = os.environ.get("TOLLGATE_TEST_TABLE")
redis = os.environ.get("TOLLGATE_TEST_REDIS")
redis_options = json.loads(os.environ.get("TOLLGATE_TEST_REDIS_OPTIONS", "{}")) if redis else None
limiter = (
    tollgate.Limiter.open(table, policy, slots=1024, redis=redis, redis_options=redis_options)
    if table
    else tollgate.Limiter(policy, slots=1024, redis=redis, redis_options=redis_options)
)

api = FastAPI()
released = asyncio.Event()


@api.get("/health")
async def health() -> dict:
    return {"ok": True, "pid": os.getpid()}


@api.get("/release")
async def release() -> dict:
    released.set()
    return {"released": True}


def _chunk(model: str, content: str, finish: str | None = None) -> str:
    return "data: " + json.dumps({
        "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }) + "\n\n"


@api.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    model = body["model"]
    if body.get("stream"):
        async def events():
            yield _chunk(model, "first")
            # Reached by the client only if the first chunk was not held back:
            # the client asks /release after reading it.
            try:
                await asyncio.wait_for(released.wait(), timeout=10)
                yield _chunk(model, "released")
            except asyncio.TimeoutError:
                yield _chunk(model, "timeout")
            yield _chunk(model, "", "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    if body.get("hold"):
        # Keeps the connection busy so concurrent requests spread over workers.
        await asyncio.sleep(float(body["hold"]))
    decision = request.scope.get("tollgate.decision")
    return JSONResponse({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": f"echo {len(body.get('messages', []))}"},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        "remaining": decision.minute_remaining if decision else None,
    })


class WorkerPid:
    """Tags every response with the worker's pid (outermost layer, so 429s
    answered by the limiter carry it too)."""

    def __init__(self, app):
        self.app = app
        self.pid = str(os.getpid()).encode()

    async def __call__(self, scope, receive, send):
        async def tagged(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [(b"x-worker-pid", self.pid)]
            await send(message)

        await self.app(scope, receive, tagged if scope["type"] == "http" else send)


# The tier: developer, unless the request names one (x-tollgate-tier, as the
# conformance table sends it).
app = WorkerPid(RateLimitMiddleware(api, limiter, account=bearer_token,
                                    tier=lambda scope: header(scope, "x-tollgate-tier") or "developer"))

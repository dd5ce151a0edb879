"""An OpenAI-compatible streaming upstream behind RateLimitMiddleware with an
in-flight limit (tests/test_in_flight.py, policy in_flight_policy.toml).

It counts its own streams running per account (``GET /state``: now and the
most at once, with the table's in-flight counters), so a test can hold the
middleware to what the app saw. A streaming request's body says what the
stream does after its first chunk: ``hold`` (a name) waits until ``GET
/release?NAME``; ``sleep`` and ``chunks`` send that many chunks that far
apart; ``raise_after`` raises instead of ending.

Environment: TOLLGATE_TEST_POLICY (the policy file), TOLLGATE_TEST_TABLE
(a table file; unset: in process memory).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

import tollgate
from tollgate.asgi import RateLimitMiddleware, bearer_token

policy = tollgate.Policy.load(os.environ["TOLLGATE_TEST_POLICY"])
table = os.environ.get("TOLLGATE_TEST_TABLE")
limiter = tollgate.Limiter.open(table, policy, slots=256) if table else tollgate.Limiter(policy, slots=256)
api = FastAPI()

running: dict[str, int] = defaultdict(int)
most: dict[str, int] = defaultdict(int)
holds: dict[str, asyncio.Event] = {}


def _hold(name: str) -> asyncio.Event:
    return holds.setdefault(name, asyncio.Event())


@api.get("/health")
async def health() -> dict:
    return {"ok": True, "pid": os.getpid()}


@api.get("/release")
async def release(request: Request) -> dict:
    _hold(request.url.query).set()
    return {"released": request.url.query}


@api.get("/state")
async def state() -> dict:
    f = limiter.stats().in_flight
    return {"running": dict(running), "most": dict(most), "stats": None if f is None else f.__dict__}


def _chunk(model: str, content: str, finish: str | None = None) -> str:
    return "data: " + json.dumps({
        "id": "chatcmpl-f", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }) + "\n\n"


@api.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    model = body["model"]
    account = bearer_token(request.scope) or ""
    if not body.get("stream"):
        return JSONResponse({
            "id": "chatcmpl-f", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        })

    async def events():
        # The app's own count of its streams per account: from the stream's
        # start to its end, whatever ends it.
        running[account] += 1
        most[account] = max(most[account], running[account])
        try:
            yield _chunk(model, "first")
            if body.get("hold"):
                await asyncio.wait_for(_hold(body["hold"]).wait(), timeout=30)
            for _ in range(int(body.get("chunks", 0))):
                await asyncio.sleep(float(body.get("sleep", 0)))
                yield _chunk(model, "more")
            if body.get("raise_after"):
                raise RuntimeError("the upstream failed mid-stream")
            yield _chunk(model, "", "stop")
            yield "data: [DONE]\n\n"
        finally:
            running[account] -= 1

    return StreamingResponse(events(), media_type="text/event-stream")


app = RateLimitMiddleware(api, limiter, account=bearer_token, tier="developer")

"""An OpenAI-compatible upstream that reports token usage, behind
RateLimitMiddleware with a token-limited policy (tests/test_tokens.py).

Each request says what the upstream reports: the body's ``test_usage`` is
the total tokens of its usage (split into prompt and completion), ``stream``
streams it as server-sent events (usage in the last chunk when
``stream_options.include_usage``), ``test_status`` answers that status
without usage, and ``test_cut`` ends a stream after its first chunk without
usage or ``[DONE]`` (as an upstream reset does).

Environment: TOLLGATE_TEST_POLICY, the policy file.
"""

from __future__ import annotations

import json
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

import tollgate
from tollgate.asgi import RateLimitMiddleware, bearer_token

policy = tollgate.Policy.load(os.environ["TOLLGATE_TEST_POLICY"])
limiter = tollgate.Limiter(policy, slots=1024)
api = FastAPI()


@api.get("/health")
async def health() -> dict:
    return {"ok": True, "pid": os.getpid()}


def _usage(total: int) -> dict:
    prompt = total // 3
    return {"prompt_tokens": prompt, "completion_tokens": total - prompt, "total_tokens": total}


def _event(obj: dict) -> str:
    return "data: " + json.dumps(obj) + "\n\n"


@api.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    model = body["model"]
    total = int(body.get("test_usage", 10))
    if body.get("test_status"):
        return JSONResponse({"error": {"message": "upstream failed"}}, status_code=int(body["test_status"]))
    base = {"id": "chatcmpl-t", "created": int(time.time()), "model": model}
    if body.get("stream"):
        include = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            yield _event({**base, "object": "chat.completion.chunk",
                          "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]})
            if body.get("test_cut"):
                return
            yield _event({**base, "object": "chat.completion.chunk",
                          "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if include:
                yield _event({**base, "object": "chat.completion.chunk", "choices": [], "usage": _usage(total)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    return JSONResponse({
        **base,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": _usage(total),
    })


app = RateLimitMiddleware(api, limiter, account=bearer_token, tier="developer")

"""One chat completion through the official Python `openai` client at its
defaults (max_retries 2, its own retry rules), as a user's program makes it;
prints what happened as JSON. The twin of openai_call.mjs, with the same
spec (argv[1]) and output: see there."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import openai

spec = json.loads(sys.argv[1])
common: dict[str, Any] = {"base_url": spec["base_url"], "api_key": spec["api_key"],
                          "default_headers": spec.get("headers") or {}}
messages: Any = [{"role": "user", "content": "hi"}]

t0 = 0.0
attempts: list[dict[str, Any]] = []


def sent(request: Any) -> None:
    attempts.append({"at": time.monotonic() - t0})


def answered(response: Any) -> None:
    attempts[-1].update(status=response.status_code, retry_after=response.headers.get("retry-after"),
                        should_retry=response.headers.get("x-should-retry"))


# Every attempt the client makes, its retries too, seen by the HTTP client
# it sends them with.
client = openai.OpenAI(**common, http_client=openai.DefaultHttpxClient(
    event_hooks={"request": [sent], "response": [answered]}))

if spec.get("at_second") is not None:
    time.sleep((spec["at_second"] - time.time() % 60) % 60)

once = openai.OpenAI(**common, max_retries=0)
before: list[Any] = []
for _ in range(spec.get("before", 0)):
    try:
        once.chat.completions.create(model=spec["model"], messages=messages)
        before.append(200)
    except openai.APIStatusError as e:
        before.append(e.status_code)

call: dict[str, Any] = {}
t0 = time.monotonic()
try:
    c = client.chat.completions.create(model=spec["model"], messages=messages)
    call.update(ok=True, content=c.choices[0].message.content)
except openai.APIStatusError as e:
    call.update(ok=False, error=type(e).__name__, status=e.status_code, code=e.code)
call["seconds"] = time.monotonic() - t0
call["attempts"] = attempts
print(json.dumps({"client": f"python openai {openai.__version__}", "before": before, "call": call}))

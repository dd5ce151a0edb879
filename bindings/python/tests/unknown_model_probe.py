"""What the middleware keeps after answering unknown huge models, measured
in a process of its own: run by test_bodies.py's
test_unknown_huge_model_is_a_small_404_and_costs_nothing, not by pytest.

A measurement inside the test run counted whatever the rest of the run
allocated meanwhile: other tests' threads and garbage, pytest's own records
(captured output, recorded warnings), one-time interpreter caches, and a new
event loop per request. Here nothing runs but the middleware, on one event
loop; a warm-up round pays the one-time costs (imports, the json scanner,
ctypes prototypes, free lists) before the baseline, the garbage collector
runs before each reading, and the rounds are measured in two batches, N
then 2N, so that anything kept per model shows as growth in both.

Reads the policy text on stdin (a policy with the model "tiny"); prints one
JSON object: per batch, its rounds and the bytes the Python heap
(tracemalloc, every allocation of the process) and the C heap (glibc's
mallinfo2: the library's own allocations, and Python's large blocks; null
where the C library lacks it) grew by, and the table's used slots.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import sys
import tracemalloc
import uuid

# Before the package is imported, so its allocations are traced too.
tracemalloc.start()

import tollgate
from tollgate.asgi import RateLimitMiddleware, bearer_token

MIB = 1 << 20
WARM_UP = 2
BATCHES = (10, 20)


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")
    ]


_mallinfo2 = getattr(ctypes.CDLL(None), "mallinfo2", None)
if _mallinfo2 is not None:
    _mallinfo2.restype = MallInfo2
    _mallinfo2.argtypes = []


def c_heap() -> int | None:
    """Bytes in use in the C heap (every glibc arena, and mmapped blocks)."""
    if _mallinfo2 is None:
        return None
    m = _mallinfo2()
    return int(m.uordblks + m.hblkhd)


async def upstream(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def call(mw, body: bytes) -> tuple[int, bytes]:
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"content-type", b"application/json"), (b"authorization", b"Bearer sk-test")]}
    await mw(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def unknown_huge_model(mw) -> None:
    model = uuid.uuid4().hex + "m" * MIB
    status, out = await call(mw, json.dumps({"model": model}).encode())
    assert status == 404 and len(out) < 400, (status, out[:200])
    err = json.loads(out)["error"]
    assert err["code"] == "model_not_found" and model[: tollgate.BODY_MODEL_MAX] in err["message"], err


def reading(lim) -> tuple[int, int | None, int]:
    gc.collect()
    return tracemalloc.get_traced_memory()[0], c_heap(), lim.stats().used


async def main() -> None:
    policy = tollgate.Policy.parse(sys.stdin.read())
    with tollgate.Limiter(policy, slots=64) as lim:
        mw = RateLimitMiddleware(upstream, lim, account=bearer_token)
        status, _ = await call(mw, b'{"model":"tiny"}')
        assert status == 200, status
        for _ in range(WARM_UP):
            await unknown_huge_model(mw)
        batches = []
        before = reading(lim)
        for rounds in BATCHES:
            for _ in range(rounds):
                await unknown_huge_model(mw)
            after = reading(lim)
            batches.append({
                "rounds": rounds,
                "python_heap": after[0] - before[0],
                "c_heap": None if after[1] is None or before[1] is None else after[1] - before[1],
                "used_slots": [before[2], after[2]],
            })
            before = after
    print(json.dumps({"model_bytes": MIB, "batches": batches}))


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/env python3
"""In-process ASGI overhead of RateLimitMiddleware: CPU time per request of a
trivial app alone, behind the middleware (admitted: the limit is never
reached), and refused (429 every time). No server, no sockets: the ASGI
callables are driven directly, 100 accounts round-robin.

    python3 benches/python_asgi.py [N]   (tollgate importable: see benches/python.py)
"""

import asyncio
import sys
import time

import tollgate
from tollgate.asgi import RateLimitMiddleware, bearer_token

HUGE = 4_000_000_000
POLICY = f'''
[models]
"DeepSeek-V3.1" = {{ region = "EU" }}
"tiny" = {{ region = "EU" }}
[tiers.developer]
"DeepSeek-V3.1" = {{ rpm = {HUGE}, rpd = {HUGE} }}
"tiny" = {{ rpm = 1, rpd = 1 }}
'''
N = int(sys.argv[1]) if len(sys.argv) > 1 else 50000

async def app(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})

def scope_for(i):
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions",
            "headers": [(b"authorization", b"Bearer acct-%d" % (i % 100)), (b"content-type", b"application/json")]}

async def run(handler, body, n):
    msg = {"type": "http.request", "body": body, "more_body": False}
    async def receive():
        return msg
    async def send(m):
        pass
    scopes = [scope_for(i) for i in range(100)]
    t = time.process_time()
    for i in range(n):
        await handler(scopes[i % 100], receive, send)
    return (time.process_time() - t) / n * 1e6

async def main():
    lim = tollgate.Limiter(tollgate.Policy.parse(POLICY), slots=4096)
    mw = RateLimitMiddleware(app, lim, account=bearer_token, tier=lambda s: "developer")
    ok = b'{"model":"DeepSeek-V3.1","messages":[{"role":"user","content":"hi"}]}'
    no = b'{"model":"tiny","messages":[]}'
    base = await run(app, ok, N)
    adm = await run(mw, ok, N)
    ref = await run(mw, no, N)
    print(f"app alone {base:.2f} us; behind middleware: admitted {adm:.2f} us (overhead {adm-base:.2f}), refused 429 {ref:.2f} us")

asyncio.run(main())

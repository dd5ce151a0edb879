"""The middleware in a real server (uvicorn) driven by real clients: the
official `openai` package, and concurrent httpx requests against several
worker processes sharing one table file."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import away_from_minute_edge

SIX = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-requests-day",
    "x-ratelimit-remaining-requests-day",
    "x-ratelimit-reset-requests-day",
]
MESSAGES = [{"role": "user", "content": "Hello"}]


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.url + "/v1", max_retries=0, timeout=30)


def test_openai_client_thirty_then_rate_limit_error(start_server):
    server = start_server()
    c = client(server, f"sk-{uuid.uuid4().hex[:16]}")
    away_from_minute_edge()
    for i in range(30):
        raw = c.chat.completions.with_raw_response.create(model="DeepSeek-V3.1", messages=MESSAGES)
        completion = raw.parse()
        assert completion.choices[0].message.content == "echo 1"
        for h in SIX:
            assert raw.headers.get(h), h
        assert raw.headers["x-ratelimit-limit-requests"] == "30"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(29 - i)
        assert raw.headers["x-ratelimit-limit-requests-day"] == "15000"
        assert raw.headers["x-ratelimit-remaining-requests-day"] == str(14999 - i)
        assert "retry-after" not in raw.headers
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="DeepSeek-V3.1", messages=MESSAGES)
    r = e.value.response
    assert r.status_code == 429
    for h in SIX:
        assert r.headers.get(h), h
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-remaining-requests-day"] == "14970"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert int(r.headers["x-ratelimit-reset-requests"]) % 60 == 0
    err = r.json()["error"]
    assert err["type"] == "rate_limit_exceeded" and err["code"] == "rate_limit_exceeded"
    assert "DeepSeek-V3.1" in err["message"]
    assert e.value.code == "rate_limit_exceeded"

    # An unknown model is a 404 the client raises as NotFoundError, not a 429.
    with pytest.raises(openai.NotFoundError) as nf:
        c.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert nf.value.code == "model_not_found"
    # Unlimited routes are untouched.
    assert httpx.get(server.url + "/health").status_code == 200


def test_streaming_responses_keep_streaming(start_server):
    server = start_server()
    c = client(server, f"sk-{uuid.uuid4().hex[:16]}")
    raw = c.chat.completions.with_raw_response.create(model="DeepSeek-V3.1", messages=MESSAGES, stream=True)
    assert raw.headers["x-ratelimit-remaining-requests"] == "29"
    contents = []
    for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            contents.append(chunk.choices[0].delta.content)
            if len(contents) == 1:
                # The app holds its second chunk until this arrives; had the
                # middleware buffered the response, the first chunk could not
                # have reached us and the app would give up ("timeout").
                assert httpx.get(server.url + "/release", timeout=10).status_code == 200
    assert contents == ["first", "released"]


def _burst(url: str, key: str, n: int, hold: float) -> list[httpx.Response]:
    def one(_):
        # A fresh connection per request lets every worker accept some.
        with httpx.Client(timeout=60) as h:
            return h.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "tiny", "messages": MESSAGES, "hold": hold})

    with ThreadPoolExecutor(max_workers=24) as pool:
        return list(pool.map(one, range(n)))


def test_workers_share_one_table_file(start_server, tmp_path):
    from conftest import SMALL_POLICY

    policy = tmp_path / "policy.toml"
    # 20 per minute, 1000 per day for "tiny".
    policy.write_text(SMALL_POLICY.replace("rpm = 5, rpd = 8", "rpm = 20, rpd = 1000"))
    server = start_server(workers=2, env={
        "TOLLGATE_TEST_TABLE": str(tmp_path / "table"),
        "TOLLGATE_TEST_POLICY": str(policy),
    })
    both_workers_seen = False
    for attempt in range(4):
        away_from_minute_edge(margin=15)
        responses = _burst(server.url, f"sk-burst-{attempt}-{uuid.uuid4().hex[:8]}", 60, hold=0.3)
        codes = [r.status_code for r in responses]
        assert codes.count(200) == 20, codes
        assert codes.count(429) == 40, codes
        remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in responses if r.status_code == 200)
        assert remaining == list(range(20))  # each admitted request saw a distinct count
        for r in responses:
            if r.status_code == 429:
                assert json.loads(r.text)["error"]["type"] == "rate_limit_exceeded"
        pids = {r.headers["x-worker-pid"] for r in responses}
        admitting = {r.headers["x-worker-pid"] for r in responses if r.status_code == 200}
        print(f"burst {attempt}: workers answering {len(pids)}, admitting {len(admitting)}")
        if len(pids) >= 2 and len(admitting) >= 2:
            both_workers_seen = True
            break
    # The exact count above only shows sharing if both workers took part.
    assert both_workers_seen, "every burst was served by one worker"


def test_refusals_through_a_real_server_and_client(start_server):
    # What a client sees from uvicorn: a 4xx for every body, never a 500, and
    # the official client's own error types.
    server = start_server()
    url = server.url + "/v1/chat/completions"
    auth = {"Authorization": f"Bearer sk-{uuid.uuid4().hex[:16]}", "Content-Type": "application/json"}
    with httpx.Client(timeout=30) as h:
        for body, code in [
            (b"[" * 100_000, "invalid_json"),
            (b'{"model":"\\ud800","messages":[]}', "invalid_json"),
            (b'{"model":"DeepSeek-V3.1","Model":"gpt-9","messages":[]}', "ambiguous_model"),
        ]:
            r = h.post(url, content=body, headers=auth)
            assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text[:200]
        r = h.post(url, content=json.dumps({"model": "x" * (1 << 20)}), headers=auth)
        assert r.status_code == 404 and len(r.content) < 400
        r = h.post(url, json={"model": "DeepSeek-V3.1", "messages": MESSAGES})  # no key
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # The app limits raw bearer keys: one past 64 bytes is no usable key.
    with pytest.raises(openai.AuthenticationError) as e:
        client(server, "sk-" + "x" * 100).chat.completions.create(model="DeepSeek-V3.1", messages=MESSAGES)
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as bad:
        client(server, "sk-ok").chat.completions.create(
            model="DeepSeek-V3.1", messages=MESSAGES, extra_body={"MODEL": "gpt-9"}
        )
    assert bad.value.code == "ambiguous_model"

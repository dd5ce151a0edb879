"""Token limits from Python (docs/tokens.md): Limiter.check reserves,
Limiter.settle settles once, and RateLimitMiddleware reads each response's
usage as it passes and settles by itself, under the official openai client,
streaming and not (tests/tokens_app.py is the upstream)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

import tollgate

HERE = Path(__file__).resolve().parent
POLICY = HERE / "tokens_policy.toml"
T0 = 1_764_237_600.0  # 2025-11-27T10:00:00Z


def limiter() -> tollgate.Limiter:
    return tollgate.Limiter(tollgate.Policy.load(str(POLICY)), slots=64)


def test_check_reserves_and_settle_charges_the_usage() -> None:
    lim = limiter()
    d = lim.check("a", "tok-model", tokens=4000, now=T0)
    assert d.allowed and d.tokens is not None
    assert (d.tokens.minute_limit, d.tokens.minute_remaining, d.tokens.reserved) == (5000, 1000, 4000)
    names = [k for k, _ in d.header_items]
    assert b"x-ratelimit-remaining-tokens" in names and b"x-ratelimit-limit-tokens-day" in names
    refused = lim.check("a", "tok-model", tokens=2000, now=T0 + 1)
    # the core's order: requests, tokens, then retry-after
    assert [k for k, _ in refused.header_items][-1] == b"retry-after"
    assert len(refused.header_items) == 13
    ietf = refused.ietf_headers(now=T0 + 1)
    assert '"tokens-minute";q=5000;w=60' in ietf["RateLimit-Policy"]
    assert '"tokens-minute";r=1000;' in ietf["RateLimit"]
    assert not refused.allowed and refused.limited_by == "tokens_minute"
    assert refused.tokens is not None and refused.tokens.ticket is None
    assert refused.minute_remaining == 999  # the refused request was not counted
    ticket = d.tokens.ticket
    assert ticket is not None
    assert lim.settle(ticket, 1500, now=T0 + 2) == 1500
    with pytest.raises(RuntimeError):
        lim.settle(ticket, 1500, now=T0 + 2)
    after = lim.check("a", "tok-model", tokens=2000, now=T0 + 3)
    assert after.allowed and after.tokens is not None and after.tokens.minute_remaining == 5000 - 1500 - 2000


def test_responses_without_usage_follow_the_policy() -> None:
    lim = limiter()
    t = lim.check("b", "tok-model", tokens=1000, now=T0).tokens
    assert t is not None and t.ticket is not None
    assert lim.settle(t.ticket, ending="failed", now=T0) == 0
    t = lim.check("b", "tok-model", tokens=1000, now=T0).tokens
    assert t is not None and t.ticket is not None
    assert lim.settle(t.ticket, ending="cut", now=T0) == 1000
    with pytest.raises(tollgate.InvalidArgument):
        lim.settle(t.ticket, ending="maybe")


def test_a_reservation_over_the_limit_is_an_error() -> None:
    with pytest.raises(tollgate.TokensTooLarge):
        limiter().check("c", "tok-model", tokens=5001, now=T0)


# ---- through RateLimitMiddleware, with the official client

def client(start_server: Any, account: str) -> openai.OpenAI:
    server = start_server(env={"TOLLGATE_TEST_POLICY": str(POLICY)}, app="tokens_app:app")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=account, max_retries=0)


def chat(c: openai.OpenAI, usage: int, **kw: Any) -> Any:
    return c.chat.completions.with_raw_response.create(
        model="tok-model", messages=[{"role": "user", "content": "hello"}], max_tokens=1000,
        extra_body={"test_usage": usage, **kw.pop("extra", {})}, **kw)


def remaining(raw: Any) -> int:
    return int(raw.headers["x-ratelimit-remaining-tokens"])


def test_the_settled_usage_is_what_the_next_request_sees(start_server: Any) -> None:
    c = client(start_server, "acct-json")
    first = chat(c, 37)
    assert int(first.headers["x-ratelimit-limit-tokens"]) == 5000
    reserved = 5000 - remaining(first)
    assert reserved > 1000  # the output cap and the prompt's estimate
    second = chat(c, 37)
    # The first was settled to its 37 tokens before its body reached us.
    assert remaining(second) == 5000 - 37 - reserved
    assert second.parse().usage.total_tokens == 37


def test_a_stream_settles_from_its_last_chunk(start_server: Any) -> None:
    c = client(start_server, "acct-stream")
    reserved = 5000 - remaining(chat(c, 50))
    stream = c.chat.completions.create(
        model="tok-model", messages=[{"role": "user", "content": "hello"}], max_tokens=1000, stream=True,
        stream_options={"include_usage": True}, extra_body={"test_usage": 400})
    usage = [ch.usage for ch in stream if ch.usage is not None]
    assert usage and usage[-1].total_tokens == 400
    after = chat(c, 1)
    assert remaining(after) == 5000 - 50 - 400 - reserved


def test_no_usage_a_cut_stream_keeps_and_a_failed_response_gives_back(start_server: Any) -> None:
    c = client(start_server, "acct-cut")
    reserved = 5000 - remaining(chat(c, 0))  # settled to its usage, 0
    with c.chat.completions.with_streaming_response.create(
        model="tok-model", messages=[{"role": "user", "content": "hello"}], max_tokens=1000, stream=True,
        extra_body={"test_usage": 5, "test_cut": True},
    ) as raw:
        cut_reserved = 5000 - remaining(raw)
        for _ in raw.iter_lines():
            pass
    # The stream ended without usage or [DONE]: cut, its reservation kept.
    kept = chat(c, 0)
    assert remaining(kept) == 5000 - cut_reserved - reserved
    with pytest.raises(openai.InternalServerError):
        chat(c, 0, extra={"test_status": 500})
    # The 500 without usage gave its reservation back.
    again = chat(c, 0)
    assert remaining(again) == 5000 - cut_reserved - reserved


def test_a_token_429_and_a_too_large_request(start_server: Any) -> None:
    c = client(start_server, "acct-429")
    chat(c, 4900)  # settles to 4900 of the minute's 5000
    with pytest.raises(openai.RateLimitError) as e:
        chat(c, 1)
    err = e.value
    assert err.response.headers["x-ratelimit-remaining-tokens"] == "100"
    assert int(err.response.headers["retry-after"]) >= 1
    assert err.body["type"] == "tokens" and err.body["code"] == "tokens_rate_limit_exceeded"
    with pytest.raises(openai.BadRequestError) as big:
        c.chat.completions.create(model="tok-model", messages=[{"role": "user", "content": "x"}], max_tokens=6000)
    assert big.value.body["code"] == "tokens_too_large"

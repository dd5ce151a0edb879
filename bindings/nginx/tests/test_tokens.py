"""Token limits through nginx (docs/tokens.md): a request reserves its
body's estimate at admission, and ngx_http_tollgate_tokens_module reads the
response's usage as it passes and settles the reservation at its last
buffer, under the official openai client, JSON and SSE, proxy_buffering on
and off, HTTP/1.1 and HTTP/2 (upstream.py answers test_usage, test_status,
test_cut and test_delay)."""

import http.client
import json
import os
import shutil
import subprocess
import time

import openai
import pytest

from conftest import HERE, free_port, fresh_minute

POLICY = HERE / "tokens_policy.toml"
MODEL = "tok-model"

LOCATION = """
        location /v1/ {
            tollgate tg;
            tollgate_account $tg_account;
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering %(buffering)s;
            %(extra)s
            add_header X-Tokens-Reserved $tollgate_tokens_reserved always;
            add_header X-Tollgate-Limited-By $tollgate_limited_by always;
        }
"""


def start(nginx, buffering="on", extra="", policy=POLICY, **kw):
    nginx.start(zone=f"size=1m policy={policy}",
                locations=LOCATION % {"buffering": buffering,
                                      "extra": extra}, **kw)
    return nginx


def client(nginx, account):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{nginx.port}/v1",
                         api_key=account, max_retries=0)


def chat(c, usage, extra=None, **kw):
    return c.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}],
        max_tokens=1000, extra_body={"test_usage": usage, **(extra or {})},
        **kw)


def remaining(raw):
    return int(raw.headers["x-ratelimit-remaining-tokens"])


@pytest.mark.parametrize("buffering", ["on", "off"])
def test_the_settled_usage_is_what_the_next_request_sees(nginx, buffering):
    fresh_minute()
    c = client(start(nginx, buffering), f"acct-json-{buffering}")
    first = chat(c, 37)
    assert int(first.headers["x-ratelimit-limit-tokens"]) == 5000
    reserved = 5000 - remaining(first)
    assert reserved > 1000  # the output cap and the prompt's estimate
    assert int(first.headers["x-tokens-reserved"]) == reserved
    second = chat(c, 37)
    # nginx settled the first to its 37 tokens at its last buffer
    assert remaining(second) == 5000 - 37 - reserved
    assert second.parse().usage.total_tokens == 37


@pytest.mark.parametrize("buffering", ["on", "off"])
def test_a_stream_settles_from_its_last_chunk(nginx, buffering):
    fresh_minute()
    c = client(start(nginx, buffering), f"acct-stream-{buffering}")
    reserved = 5000 - remaining(chat(c, 50))
    stream = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}],
        max_tokens=1000, stream=True,
        stream_options={"include_usage": True},
        extra_body={"test_usage": 400})
    usage = [ch.usage for ch in stream if ch.usage is not None]
    assert usage and usage[-1].total_tokens == 400
    after = chat(c, 1)
    assert remaining(after) == 5000 - 50 - 400 - reserved


def test_a_response_spooled_to_a_file_is_read_for_its_usage(nginx):
    # small proxy buffers and a client that reads late: the 8 MB answer
    # goes through a temporary file, which the copy filter reads back for
    # the usage scan (r->filter_need_in_memory)
    fresh_minute()
    start(nginx, extra="proxy_buffer_size 4k; proxy_buffers 4 4k; "
                       "proxy_busy_buffers_size 8k;")
    body = json.dumps({"model": MODEL, "max_tokens": 1000,
                       "test_usage": 77, "test_pad": 8_000_000,
                       "messages": [{"role": "user", "content": "hello"}]})
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", body, {
            "Authorization": "Bearer acct-spooled",
            "Content-Type": "application/json"})
        time.sleep(1.5)
        resp = conn.getresponse()
        data = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200
    assert data["usage"]["total_tokens"] == 77
    assert "buffered to a temporary file" in nginx.log()
    assert "usage is not read" not in nginx.log()
    reserved = int(resp.getheader("x-tokens-reserved"))
    assert int(resp.getheader("x-ratelimit-remaining-tokens")) \
        == 5000 - reserved
    second = chat(client(nginx, "acct-spooled"), 1)
    assert remaining(second) == (5000 - 77
                                 - int(second.headers["x-tokens-reserved"]))


def test_a_cut_stream_keeps_and_a_failed_response_gives_back(nginx):
    fresh_minute()
    c = client(start(nginx), "acct-cut")
    reserved = 5000 - remaining(chat(c, 0))  # settled to its usage, 0
    with pytest.raises(Exception):
        with c.chat.completions.with_streaming_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}],
            max_tokens=1000, stream=True,
            extra_body={"test_usage": 5, "test_cut": True},
        ) as raw:
            cut_reserved = 5000 - remaining(raw)
            for _ in raw.iter_lines():
                pass
    # cut without usage or [DONE]: its reservation is kept
    kept = chat(c, 0)
    assert remaining(kept) == 5000 - cut_reserved - reserved
    with pytest.raises(openai.InternalServerError):
        chat(c, 0, extra={"test_status": 500})
    # the 500 without usage gave its reservation back
    again = chat(c, 0)
    assert remaining(again) == 5000 - cut_reserved - reserved


def test_a_token_429_and_a_too_large_request(nginx):
    fresh_minute()
    c = client(start(nginx), "acct-429")
    chat(c, 4900)  # settles to 4900 of the minute's 5000
    with pytest.raises(openai.RateLimitError) as e:
        chat(c, 1)
    err = e.value
    assert err.response.headers["x-ratelimit-remaining-tokens"] == "100"
    assert int(err.response.headers["retry-after"]) >= 1
    assert err.body["type"] == "tokens"
    assert err.body["code"] == "tokens_rate_limit_exceeded"
    assert err.response.headers["x-tollgate-limited-by"] == "TOKENS_MINUTE"
    with pytest.raises(openai.BadRequestError) as big:
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}],
            max_tokens=6000)
    assert big.value.status_code == 400
    assert big.value.body["code"] == "tokens_too_large"


def test_the_metrics_count_tokens_reserved_settled_and_refused(nginx):
    fresh_minute()
    c = client(start(nginx), "acct-metrics")
    first = chat(c, 37)
    second = chat(c, 4900)
    reserved = (5000 - remaining(first)) + (5000 - 37 - remaining(second))
    with pytest.raises(openai.RateLimitError):
        chat(c, 1)  # 63 tokens left this minute: refused on tokens
    m = nginx.metrics()

    def get(name, model=MODEL, **labels):
        labels = {"zone": "tg", "model": model, **labels}
        return m[(name, frozenset(labels.items()))]

    assert get("tollgate_tokens_reserved_total") == reserved
    # settled at each response's last buffer, before the client had it
    assert get("tollgate_tokens_settled_total") == 37 + 4900
    assert get("tollgate_token_refusals_total", window="minute") == 1
    assert get("tollgate_token_refusals_total", window="day") == 0
    # still counted as a rejection among the decisions, as before
    assert get("tollgate_decisions_total", outcome="rejected") == 1
    assert get("tollgate_decisions_total", outcome="passed") == 2
    # a model without token limits has its rows, at 0
    assert get("tollgate_tokens_reserved_total", model="plain-model") == 0
    page = nginx.get("/metrics").body.decode()
    for name in ("tollgate_tokens_reserved_total",
                 "tollgate_tokens_settled_total",
                 "tollgate_token_refusals_total"):
        assert page.count(f"# TYPE {name} counter\n") == 1
        # one family's samples together, after its TYPE line
        lines = page.splitlines()
        at = [i for i, line in enumerate(lines) if line.startswith(name)]
        assert at == list(range(at[0], at[0] + len(at)))
        assert lines[at[0] - 1] == f"# TYPE {name} counter"


def test_a_key_without_token_limits_has_no_token_headers(nginx):
    c = client(start(nginx), "acct-plain")
    raw = c.chat.completions.with_raw_response.create(
        model="plain-model", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert not any("tokens" in name.lower() for name in raw.headers)


def test_http2_settles_like_http1(nginx, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    fresh_minute()
    h2 = free_port()
    start(nginx, h2_port=h2)

    def h2_chat(usage, stream=False):
        body = {"model": MODEL, "max_tokens": 1000, "test_usage": usage,
                "messages": [{"role": "user", "content": "hello"}]}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        out = subprocess.run(
            [curl, "-s", "--http2-prior-knowledge", "-D", "-",
             "-H", "Authorization: Bearer acct-h2",
             "-H", "Content-Type: application/json",
             "--data-binary", json.dumps(body),
             f"http://127.0.0.1:{h2}/v1/chat/completions"],
            capture_output=True, text=True, timeout=60, check=True).stdout
        assert out.startswith("HTTP/2 200"), out
        head = dict(line.split(": ", 1) for line in
                    out.split("\n\n")[0].splitlines()[1:])
        return (int(head["x-ratelimit-remaining-tokens"]),
                int(head["x-tokens-reserved"]), out)

    left, reserved, _ = h2_chat(37)
    assert left == 5000 - reserved
    left, reserved2, out = h2_chat(200, stream=True)
    assert left == 5000 - 37 - reserved2
    assert '"total_tokens": 200' in out and "data: [DONE]" in out
    left, reserved3, _ = h2_chat(1)
    assert left == 5000 - 37 - 200 - reserved3


def test_the_first_chunk_of_a_slow_stream_is_not_delayed(nginx):
    # proxy_buffering off, as an SSE location has it: each chunk goes to
    # the client as it arrives, and the filter must not hold any back
    fresh_minute()
    c = client(start(nginx, "off"), "acct-slow")
    t0 = time.monotonic()
    stream = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}],
        max_tokens=1000, stream=True,
        stream_options={"include_usage": True},
        extra_body={"test_usage": 10, "test_delay": 1.0})
    chunks = iter(stream)
    first = next(chunks)
    took = time.monotonic() - t0
    assert first.choices[0].delta.content == "o"
    # the upstream sends the second chunk 1 s after the first
    assert took < 0.7, took
    rest = list(chunks)
    assert rest[-1].usage.total_tokens == 10
    assert time.monotonic() - t0 >= 1.9
    after = chat(c, 0)
    assert int(after.headers["x-ratelimit-remaining-tokens"]) > 0


def test_the_filter_reads_the_upstreams_bytes_before_gzip(nginx):
    # nginx compresses the answer after the filter read it: the usage is
    # still read, from the bytes as the upstream sent them
    fresh_minute()
    start(nginx, extra="gzip on; gzip_min_length 1; "
                       "gzip_types application/json text/event-stream;")
    c = client(nginx, "acct-gzip")
    first = chat(c, 33)
    assert first.headers["content-encoding"] == "gzip"
    reserved = 5000 - remaining(first)
    stream = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}],
        max_tokens=1000, stream=True,
        stream_options={"include_usage": True},
        extra_body={"test_usage": 44})
    assert [ch.usage.total_tokens for ch in stream if ch.usage] == [44]
    after = chat(c, 0)
    assert remaining(after) == (5000 - 33 - 44
                                - int(after.headers["x-tokens-reserved"]))
    assert reserved > 1000


def test_a_client_gone_or_an_upstream_cut_is_settled_as_cut(nginx):
    # the client closes after the first chunk: the pool cleanup settles the
    # reservation as cut, here with on_cut = "release" to see it settled
    fresh_minute()
    start(nginx, "off", policy=HERE / "tokens_release_policy.toml")
    body = json.dumps({"model": MODEL, "max_tokens": 1000, "stream": True,
                       "stream_options": {"include_usage": True},
                       "test_usage": 9, "test_delay": 1.0,
                       "messages": [{"role": "user", "content": "hello"}]})
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body, {
        "Authorization": "Bearer acct-gone",
        "Content-Type": "application/json"})
    resp = conn.getresponse()
    reserved = int(resp.getheader("x-tokens-reserved"))
    assert resp.fp.readline()  # the first chunk has come
    conn.sock.close()
    conn.close()
    time.sleep(2.5)  # nginx finds the client gone at its next write
    after = chat(client(nginx, "acct-gone"), 0)
    assert reserved > 1000
    assert remaining(after) == 5000 - int(after.headers["x-tokens-reserved"])
    # an upstream that cuts its stream: settled as cut too
    c = client(nginx, "acct-upstream-cut")
    with pytest.raises(Exception):
        with c.chat.completions.with_streaming_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}],
            max_tokens=1000, stream=True,
            extra_body={"test_usage": 5, "test_cut": True},
        ) as raw:
            assert 5000 - remaining(raw) > 1000
            for _ in raw.iter_lines():
                pass
    after = chat(c, 0)
    assert remaining(after) == 5000 - int(after.headers["x-tokens-reserved"])

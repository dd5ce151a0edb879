"""Bodies whose model is ambiguous: upstream parsers disagree on which of
two model keys wins (Go's encoding/json: the last, case-insensitively;
Python's json and serde_json: the last exact match; cJSON and simdjson: the
first), so charging one and forwarding the body would let a client pay for
a cheap model and be served an expensive one. The module refuses them, with
the library's scanner deciding."""

import hashlib

import openai
import pytest

from conftest import fresh_minute

AMBIGUOUS = (
    b'{"error":{"message":"The request body names the model more than once '
    b'(keys equal to \\"model\\" ignoring case or escapes); send exactly one '
    b'\\"model\\" key.","type":"invalid_request_error","param":"model",'
    b'"code":"ambiguous_model"}}')


def decisions(nginx, model, outcome):
    return nginx.metrics()[("tollgate_decisions_total", frozenset(
        {"zone": "tg", "model": model, "outcome": outcome}.items()))]


def assert_refused(r):
    assert r.status == 400, r.body
    assert r.header("content-type") == "application/json"
    assert r.body == AMBIGUOUS
    assert r.header("x-tollgate-status") == "BAD_REQUEST"
    assert r.header("x-ratelimit-limit-requests") is None
    assert r.header("x-body-sha256") is None  # never reached the upstream


def test_go_style_case_variant_is_refused_and_charges_nothing(nginx):
    fresh_minute()
    nginx.start()
    r = nginx.chat("acct-go", body='{"model":"Meta-Llama-3.1-8B-Instruct",'
                                   '"Model":"DeepSeek-V3.1"}')
    assert_refused(r)
    assert decisions(nginx, "(other)", "bad_request") == 1
    for model in ("Meta-Llama-3.1-8B-Instruct", "DeepSeek-V3.1"):
        assert decisions(nginx, model, "passed") == 0
        r = nginx.chat("acct-go", model=model)
        assert r.status == 200
        # the refused body counted against neither model
        assert r.header("x-ratelimit-remaining-requests-day") == str(
            int(r.header("x-ratelimit-limit-requests-day")) - 1)


@pytest.mark.parametrize("body", [
    '{"model":"DeepSeek-V3.1","model":"gpt-oss-120b"}',
    '{"model":"gpt-oss-120b","model":"gpt-oss-120b"}',
    '{"model":"gpt-oss-120b","\\u006dodel":"DeepSeek-V3.1"}',
    '{"\\u004dodel":"DeepSeek-V3.1","model":"gpt-oss-120b"}',
    '{"MODEL":"DeepSeek-V3.1","messages":[],"mOdEl":"gpt-oss-120b"}',
    # a second key that is not a string still makes the body ambiguous
    '{"model":"gpt-oss-120b","Model":null}',
])
def test_two_model_keys_are_refused(nginx, body):
    nginx.start()
    assert_refused(nginx.chat("acct-dup", body=body))


@pytest.mark.parametrize("body, limit", [
    ('{"model":"gpt-oss-120b","metadata":{"model":"DeepSeek-V3.1",'
     '"Model":"x"}}', "150"),
    ('{"messages":[{"model":"DeepSeek-V3.1"},{"Model":"x"}],'
     '"Model":"gpt-oss-120b"}', "150"),
    ('{"\\u006dodel":"DeepSeek-V3.1","models":"gpt-oss-120b"}', "30"),
])
def test_one_model_key_passes(nginx, body, limit):
    nginx.start()
    r = nginx.chat("acct-one", body=body)
    assert r.status == 200, r.body
    assert r.header("x-ratelimit-limit-requests") == limit
    assert r.header("x-body-sha256") == hashlib.sha256(
        body.encode()).hexdigest()


def test_spooled_ambiguous_body_is_refused(nginx):
    nginx.start(extra="client_body_buffer_size 1k; "
                      "client_max_body_size 20m;")
    text = "x" * 300_000
    body = ('{"model":"Meta-Llama-3.1-8B-Instruct","messages":[{"role":'
            '"user","content":"' + text + '"}],"Model":"DeepSeek-V3.1"}')
    r = nginx.chat("acct-spool", body=body)
    assert_refused(r)
    r = nginx.chat("acct-spool", body=body, chunked=True)
    assert_refused(r)
    assert "a client request body is buffered to a temporary file" \
        in nginx.log()
    # the same body with one model key goes through whole
    body = body.replace(',"Model":"DeepSeek-V3.1"', "")
    r = nginx.chat("acct-spool", body=body)
    assert r.status == 200
    assert r.header("x-ratelimit-limit-requests") == "1440"
    assert r.header("x-body-sha256") == hashlib.sha256(
        body.encode()).hexdigest()


def test_openai_client_with_an_extra_model_key(nginx):
    nginx.start()
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{nginx.port}/v1",
                      api_key="acct-sdk", max_retries=0, timeout=20)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(
            model="Meta-Llama-3.1-8B-Instruct",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"Model": "DeepSeek-V3.1"})
    assert info.value.code == "ambiguous_model"
    assert info.value.param == "model"


def test_too_deep_body_is_400_invalid_json(nginx):
    nginx.start()

    def nested(levels):
        # the top-level object is level 1
        return ('{"model":"gpt-oss-120b","x":' + "[" * (levels - 1)
                + "]" * (levels - 1) + "}")

    r = nginx.chat("acct-deep", body=nested(1025))
    assert r.status == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_json"
    assert err["message"] == "The request body nests deeper than 1024 levels."
    assert err["type"] == "invalid_request_error"
    r = nginx.chat("acct-deep", body=nested(1024))
    assert r.status == 200
    assert r.header("x-ratelimit-limit-requests") == "150"

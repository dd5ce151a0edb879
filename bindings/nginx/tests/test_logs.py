"""Client bytes in error.log lines: escaped (\\xHH for control bytes,
non-ASCII, '"' and '\\\\'), cut to a bounded length, and every refusal line
names the account."""

import json
import re

from conftest import fresh_minute
from test_tollgate import FREE_POLICY

FORGED = "x\n2026/12/01 00:00:00 [emerg] 1#1: FORGED\u001b[2J"

# nginx's own line prefix: "2026/12/01 20:00:00 [level] pid#tid: "
LINE = re.compile(rb"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[\w+\] \d+#\d+: ")


def log_bytes(nginx):
    data = nginx.error_log.read_bytes()
    # one line per event, no control byte but the newline, no ESC
    assert b"\x1b" not in data
    assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", data)
    for line in data.splitlines():
        assert LINE.match(line), line[:200]
    return data


def lines_with(data, text):
    return [x for x in data.splitlines() if text in x]


def test_forged_model_in_a_dry_run_log_line(nginx):
    nginx.start(extra="tollgate_dry_run on;")
    r = nginx.chat("acct-forge", body=json.dumps({"model": FORGED}))
    assert r.status == 200
    assert r.header("x-tollgate-status") == "UNKNOWN_MODEL"
    assert nginx.wait_log("tollgate: dry run, would answer 404")
    data = log_bytes(nginx)
    (line,) = lines_with(data, b"FORGED")
    assert b"tollgate: dry run, would answer 404 (UNKNOWN_MODEL) for " \
        b'account "acct-forge", model "x\\x0A2026/12/01 00:00:00 [emerg] ' \
        b'1#1: FORGED\\x1B[2J"' in line, line
    assert not lines_with(data, b"[emerg]")[1:]


def test_refusal_lines_name_the_account_escaped(nginx):
    fresh_minute()
    policy = nginx.prefix / "policy.toml"
    policy.write_text(FREE_POLICY)
    nginx.start(zone=f"size=1m policy={policy}",
                http_extra="large_client_header_buffers 4 32k;")

    # a 429: the line says which account and which model
    evil = 'cust\x1b[2J\x07"\\\xe9-42'
    for _ in range(3):
        r = nginx.chat(evil, tier="free")
    assert r.status == 429
    assert nginx.wait_log("tollgate: rejected")
    data = log_bytes(nginx)
    (line,) = lines_with(data, b"tollgate: rejected")
    assert b'tollgate: rejected, account "cust\\x1B[2J\\x07\\x22\\x5C' \
        b'\\xE9-42", model "DeepSeek-V3.1" limited by MINUTE in zone "tg"' \
        in line, line

    # a 10 KB account with control bytes: a 401, logged bounded
    huge = "\x1b]0;pwned\x07" + "A" * 10240
    r = nginx.chat(huge)
    assert r.status == 401
    assert nginx.wait_log("unusable account id")
    data = log_bytes(nginx)
    (line,) = lines_with(data, b"unusable account id")
    assert b'unusable account id "\\x1B]0;pwned\\x07AAAA' in line, line
    assert b'A..." of 10250 bytes' in line, line
    assert len(line) < 600, len(line)

    # an unknown tier from a client header is escaped too
    r = nginx.chat("acct-tier", tier="gold\x1b[1m" + "G" * 5000)
    assert r.status == 500
    assert nginx.wait_log("unknown tier")
    data = log_bytes(nginx)
    (line,) = lines_with(data, b"unknown tier")
    assert b'unknown tier "gold\\x1B[1mGGG' in line, line
    assert len(line) < 600, len(line)

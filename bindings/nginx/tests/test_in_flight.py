"""In-flight limits through nginx (docs/in-flight.md, issue 18): a key with
max_in_flight = 2 runs at most two requests at once, and the module releases
each admission exactly once however the request ends: its last buffer, a
client gone mid-stream, an upstream down or timed out, `return`, an
error_page or X-Accel-Redirect internal redirect, and a worker killed with
SIGKILL (its successor, or a refusal a second later, reclaims its units).
The upstream (upstream.py) holds streams open on demand and counts the
requests it serves at once per account: it must never see more than two."""

import http.client
import json
import os
import pathlib
import random
import re
import signal
import socket
import threading
import time
import uuid

import openai
import pytest

from conftest import HERE, WAIT, Nginx, free_port

POLICY = HERE / "in_flight_policy.toml"
MODEL = "flight-model"
LIMIT = 2

# nothing listens there: the upstream is down (502)
DOWN = free_port()

LOCATIONS = """
        location /v1/ {
            tollgate tg;
            tollgate_account $tg_account;
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }

        location /down/ {
            tollgate tg;
            tollgate_account $tg_account;
            proxy_pass http://127.0.0.1:%(down)d;
        }

        location /slow/ {
            tollgate tg;
            tollgate_account $tg_account;
            proxy_pass http://api/v1/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1s;
        }

        location /intercept/ {
            tollgate tg;
            tollgate_account $tg_account;
            proxy_pass http://api/v1/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_intercept_errors on;
            error_page 500 =200 /fallback.json;
        }

        # the error page's location is limited too: the request must not be
        # decided (nor its unit taken) a second time
        location = /fallback.json {
            internal;
            tollgate tg;
            tollgate_account $tg_account;
        }

        location /dry/ {
            tollgate tg;
            tollgate_account $tg_account;
            tollgate_dry_run on;
            proxy_pass http://api/v1/;
        }

        location = /returned {
            internal;
            return 200 "returned\\n";
        }

        location = /closed {
            internal;
            return 444;
        }
"""


def start(nginx, **kw):
    (nginx.prefix / "html").mkdir(parents=True, exist_ok=True)
    (nginx.prefix / "html" / "fallback.json").write_text('{"fallback":1}\n')
    nginx.start(zone=f"size=1m policy={POLICY}",
                locations=LOCATIONS % {"down": DOWN}, **kw)
    return nginx


def body(**extra):
    return json.dumps({"model": MODEL, "messages": [
        {"role": "user", "content": "hello"}], **extra})


def post(nginx, account, path="/v1/chat/completions", **extra):
    return nginx.request("POST", path, body(**extra), {
        "Authorization": f"Bearer {account}",
        "Content-Type": "application/json"})


class Stream:
    """A raw HTTP/1.1 stream through nginx, read as far as its headers and
    first event; read the rest with finish(), or drop it with close()."""

    def __init__(self, nginx, account, path="/v1/chat/completions",
                 **extra):
        self.sock = socket.create_connection(("127.0.0.1", nginx.port),
                                             timeout=WAIT)
        data = body(stream=True, **extra).encode()
        self.sock.sendall(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + account.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(data) + data)
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            self.headers[name.strip().lower()] = value.strip()
        if self.status == 200:
            while b"data: " not in self.buf:
                self._recv()

    def _recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def finish(self):
        """Reads to the stream's end (the last chunk); its events."""
        while not self.buf.endswith(b"0\r\n\r\n"):
            self._recv()
        self.sock.close()
        return self.buf

    def close(self):
        self.sock.close()


def in_flight(nginx, account):
    """The key's requests running now, as its next answer counts them (the
    answer's own admission excluded)."""
    r = post(nginx, account)
    assert r.status == 200, r.body
    return int(r.header("x-ratelimit-in-flight")) - 1


def metric(m, name, **labels):
    return m[(name, frozenset({"zone": "tg", **labels}.items()))]


def wait_for(predicate, what):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {WAIT} s: {what}")


def test_the_third_at_once_is_refused_until_one_ends(nginx, upstream):
    start(nginx)
    account = f"acct-{uuid.uuid4().hex[:8]}"
    tags = [uuid.uuid4().hex for _ in range(3)]
    first = Stream(nginx, account, test_hold=tags[0])
    second = Stream(nginx, account, test_hold=tags[1])
    assert (first.status, second.status) == (200, 200)
    assert first.headers["x-ratelimit-limit-in-flight"] == "2"
    assert first.headers["x-ratelimit-in-flight"] == "1"
    assert second.headers["x-ratelimit-in-flight"] == "2"
    assert upstream.state.running(account) == 2

    third = post(nginx, account, test_hold=tags[2])
    assert third.status == 429
    assert third.json()["error"]["code"] == "in_flight_limit_exceeded"
    assert third.header("retry-after") is None
    assert third.header("x-should-retry") == "true"
    assert third.header("x-ratelimit-in-flight") == "2"
    assert third.header("x-ratelimit-limit-in-flight") == "2"
    assert third.header("x-tollgate-limited-by") == "IN_FLIGHT"
    assert third.header("x-upstream") is None

    # one stream ends: the next is admitted, and it is the second running
    upstream.state.release(tags[0])
    assert b"data: [DONE]" in first.finish()
    fourth = Stream(nginx, account, test_hold=tags[2])
    assert fourth.status == 200
    assert fourth.headers["x-ratelimit-in-flight"] == "2"
    upstream.state.release(tags[1])
    upstream.state.release(tags[2])
    second.finish()
    fourth.finish()
    assert in_flight(nginx, account) == 0
    assert upstream.state.most(account) == LIMIT
    # a model without an in-flight limit has no in-flight headers
    plain = nginx.request("POST", "/v1/chat/completions",
                          json.dumps({"model": "plain-model"}),
                          {"Authorization": f"Bearer {account}"})
    assert plain.status == 200
    assert not any("in-flight" in h for h in plain.headers)


def test_the_openai_client_streams_two_and_the_third_is_refused(
        nginx, upstream):
    start(nginx)
    account = f"sk-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{nginx.port}/v1",
                      api_key=account, max_retries=0)

    def stream():
        return c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}],
            stream=True, extra_body={"test_hold": tag})

    streams = [stream(), stream()]
    firsts = [next(iter(s)) for s in streams]
    assert [f.choices[0].delta.content for f in firsts] == ["o", "o"]
    with pytest.raises(openai.RateLimitError) as e:
        stream()
    err = e.value
    assert err.status_code == 429
    assert err.code == "in_flight_limit_exceeded"
    assert err.response.headers["x-should-retry"] == "true"
    assert "retry-after" not in err.response.headers
    assert err.response.headers["x-ratelimit-in-flight"] == "2"
    upstream.state.release(tag)
    for s in streams:
        rest = list(s)
        assert rest[-1].choices[0].finish_reason == "stop"
    # both released at their ends: two more run at once
    tag = uuid.uuid4().hex
    again = [stream(), stream()]
    upstream.state.release(tag)
    for s in again:
        assert list(s)
    assert upstream.state.most(account) == LIMIT


def test_a_client_gone_mid_stream_gives_its_unit_back(nginx, upstream):
    start(nginx)
    account = f"acct-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex
    gone = [Stream(nginx, account, test_hold=tag) for _ in range(LIMIT)]
    assert [s.status for s in gone] == [200, 200]
    assert post(nginx, account).status == 429
    for s in gone:
        s.close()
    # nginx sees the client gone, finalizes (499) and releases as cut
    wait_for(lambda: metric(nginx.metrics(), "tollgate_in_flight") == 0,
             "both units released")
    m = nginx.metrics()
    assert metric(m, "tollgate_in_flight_releases_total",
                  cause="aborted") == 2
    assert metric(m, "tollgate_in_flight_releases_total",
                  cause="completed") == 0
    assert in_flight(nginx, account) == 0
    # the upstream's streams were closed too, never more than two
    wait_for(lambda: upstream.state.running(account) == 0, "upstream idle")
    assert upstream.state.most(account) == LIMIT


def test_released_however_the_request_ends(nginx, upstream):
    start(nginx)
    account = f"acct-{uuid.uuid4().hex[:8]}"

    # the upstream down: nginx's 502
    r = post(nginx, account, "/down/chat/completions")
    assert r.status == 502
    assert r.header("x-ratelimit-in-flight") == "1"
    assert in_flight(nginx, account) == 0

    # the upstream too slow to answer: nginx's 504
    r = post(nginx, account, "/slow/chat/completions", test_hold_for=5)
    assert r.status == 504
    assert in_flight(nginx, account) == 0

    # the upstream stops mid-stream: the response is cut at the timeout
    s = Stream(nginx, account, "/slow/chat/completions", test_hold_for=5)
    with pytest.raises(ConnectionError):
        s.finish()
    s.close()
    assert in_flight(nginx, account) == 0

    # the upstream's 500 answered by error_page from another location,
    # itself limited: decided once, released once
    before = metric(nginx.metrics(), "tollgate_decisions_total",
                    model=MODEL, outcome="passed")
    r = post(nginx, account, "/intercept/chat/completions",
             test_status=500)
    assert (r.status, r.body) == (200, b'{"fallback":1}\n')
    assert r.header("x-ratelimit-in-flight") == "1"
    assert metric(nginx.metrics(), "tollgate_decisions_total",
                  model=MODEL, outcome="passed") == before + 1
    assert in_flight(nginx, account) == 0

    # X-Accel-Redirect to a location that returns: `return` ends it
    r = post(nginx, account, test_accel="/returned")
    assert (r.status, r.body) == (200, b"returned\n")
    assert in_flight(nginx, account) == 0

    # `return 444`: closed with no response, released as cut
    with pytest.raises(http.client.RemoteDisconnected):
        post(nginx, account, test_accel="/closed")
    assert in_flight(nginx, account) == 0

    m = nginx.metrics()
    assert metric(m, "tollgate_in_flight") == 0
    assert metric(m, "tollgate_in_flight_refusals_total") == 0
    # cut: the mid-stream timeout and the 444; every other ran to its end
    assert metric(m, "tollgate_in_flight_releases_total",
                  cause="aborted") == 2
    passed = metric(m, "tollgate_decisions_total", model=MODEL,
                    outcome="passed")
    assert metric(m, "tollgate_in_flight_releases_total",
                  cause="completed") == passed - 2
    assert "tg_release() failed" not in nginx.log()
    assert upstream.state.most(account) == 1


def test_a_dry_run_passes_the_third_without_a_unit(nginx, upstream):
    start(nginx)
    account = f"acct-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex
    held = [Stream(nginx, account, test_hold=tag) for _ in range(LIMIT)]
    r = post(nginx, account, "/dry/chat/completions")
    assert r.status == 200
    assert r.header("x-upstream") == "answered"
    assert r.header("x-tollgate-status") == "DRY_RUN"
    assert r.header("x-tollgate-limited-by") == "IN_FLIGHT"
    assert r.header("x-ratelimit-in-flight") == "2"
    upstream.state.release(tag)
    for s in held:
        s.finish()
    # nothing was taken for it, so nothing was released twice
    assert in_flight(nginx, account) == 0
    m = nginx.metrics()
    assert metric(m, "tollgate_in_flight_releases_total",
                  cause="completed") == 3
    assert "tg_release() failed" not in nginx.log()


def test_the_metrics(nginx, upstream):
    start(nginx)
    page = nginx.get("/metrics").body.decode()
    for name, kind in (("tollgate_in_flight", "gauge"),
                       ("tollgate_in_flight_releases_total", "counter"),
                       ("tollgate_in_flight_refusals_total", "counter")):
        assert page.count(f"# TYPE {name} {kind}\n") == 1
        lines = page.splitlines()
        at = [i for i, line in enumerate(lines)
              if re.match(name + r"\{", line)]
        assert at == list(range(at[0], at[0] + len(at)))
        assert lines[at[0] - 1] == f"# TYPE {name} {kind}"
    account = f"acct-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex
    held = [Stream(nginx, account, test_hold=tag) for _ in range(LIMIT)]
    for _ in range(3):
        assert post(nginx, account).status == 429
    m = nginx.metrics()
    assert metric(m, "tollgate_in_flight") == 2
    assert metric(m, "tollgate_in_flight_refusals_total") == 3
    assert metric(m, "tollgate_decisions_total", model=MODEL,
                  outcome="rejected") == 3
    held[0].close()
    upstream.state.release(tag)
    held[1].finish()
    wait_for(lambda: metric(nginx.metrics(), "tollgate_in_flight") == 0,
             "released")
    m = nginx.metrics()
    assert metric(m, "tollgate_in_flight_releases_total",
                  cause="completed") + metric(
        m, "tollgate_in_flight_releases_total", cause="aborted") == 2
    assert metric(m, "tollgate_in_flight_releases_total",
                  cause="completed") >= 1
    assert metric(m, "tollgate_in_flight_releases_total",
                  cause="reclaimed") == 0


# ---- workers killed holding streams ---------------------------------------

# Kills are counted, the time only bounds them: some 40 s on a quiet
# machine, more when it is loaded.
KILL_SECONDS = 100.0
KILLS = 120


@pytest.fixture
def killable(tmp_path, upstream):
    """An nginx whose workers the test kills: the master's alert for each
    worker it killed is expected, any other alert or crash is not."""
    os.chmod(tmp_path, 0o755)
    n = Nginx(tmp_path / "nginx", upstream.port)
    n.killed = set()
    yield n
    n.stop()
    bad = []
    for line in n.log().splitlines():
        if not ("[alert]" in line or "[crit]" in line
                or "exited on signal" in line):
            continue
        m = re.search(r"worker process (\d+) exited on signal 9", line)
        if m and int(m.group(1)) in n.killed:
            continue
        bad.append(line)
    assert not bad, "\n".join(bad)


def socket_pids(nginx, ports, upstream_port):
    """The workers holding nginx's connections to the upstream from
    `ports`."""
    inodes = set()
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        local, remote = f[1], f[2]
        if (int(local.split(":")[1], 16) in ports
                and int(remote.split(":")[1], 16) == upstream_port):
            inodes.add(f[9])
    pids = set()
    for pid in nginx.workers():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                pids.add(pid)
                break
    return pids


def test_workers_killed_holding_streams(killable, upstream):
    nginx = start(killable, workers=2)
    account = f"acct-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    seen = {"200": 0, "429": 0, "cut": 0}
    other = []
    lock = threading.Lock()

    def client():
        rnd = random.Random()
        while not stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", nginx.port,
                                              timeout=WAIT)
            try:
                conn.request("POST", "/v1/chat/completions",
                             body(stream=True,
                                  test_hold_for=rnd.uniform(0.05, 0.6)),
                             {"Authorization": f"Bearer {account}",
                              "Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                key = str(resp.status)
            except (OSError, http.client.HTTPException):
                key = "cut"  # its worker was killed
            finally:
                conn.close()
            with lock:
                if key in seen:
                    seen[key] += 1
                else:
                    other.append(key)
            if key != "200":
                time.sleep(0.02)

    threads = [threading.Thread(target=client) for _ in range(LIMIT + 1)]
    for t in threads:
        t.start()
    rnd = random.Random()
    kills = 0
    started = time.monotonic()
    try:
        while (kills < KILLS
               and time.monotonic() - started < KILL_SECONDS):
            time.sleep(rnd.uniform(0.05, 0.5))
            workers = nginx.workers()
            if not workers:
                continue
            holding = socket_pids(nginx, set(upstream.state.peers(account)),
                                  upstream.port)
            if rnd.random() < 0.1:
                victims = workers  # all at once
            elif holding:
                victims = {rnd.choice(sorted(holding))}
            else:
                victims = {rnd.choice(sorted(workers))}
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                nginx.killed.add(pid)
                kills += 1
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)
    assert kills >= 100, kills
    assert not other, other
    assert seen["200"] > 20 and seen["cut"] > 0, seen
    wait_for(lambda: upstream.state.running(account) == 0, "upstream idle")
    assert upstream.state.most(account) <= LIMIT

    # The bound: a refusal a second after the last sweep sweeps again (and
    # a new worker's first admission registers and sweeps): the dead
    # workers' units come back, and the key admits exactly LIMIT again.
    time.sleep(1.1)
    tag = uuid.uuid4().hex
    held = []
    deadline = time.monotonic() + 2.5
    while len(held) < LIMIT and time.monotonic() < deadline:
        s = Stream(nginx, account, test_hold=tag)
        if s.status == 200:
            held.append(s)
        else:
            s.close()
            time.sleep(0.1)
    assert len(held) == LIMIT
    over = post(nginx, account)
    assert over.status == 429
    assert over.header("x-ratelimit-in-flight") == str(LIMIT)
    upstream.state.release(tag)
    for s in held:
        s.finish()
    assert in_flight(nginx, account) == 0
    assert upstream.state.most(account) <= LIMIT

    m = nginx.metrics()
    assert metric(m, "tollgate_in_flight") == 0
    reclaimed = metric(m, "tollgate_in_flight_releases_total",
                       cause="reclaimed")
    released = reclaimed + sum(
        metric(m, "tollgate_in_flight_releases_total", cause=c)
        for c in ("completed", "aborted"))
    passed = metric(m, "tollgate_decisions_total", model=MODEL,
                    outcome="passed")
    assert reclaimed > 0
    # every admission released once; a worker killed between its admission
    # and counting it in the metrics would leave one uncounted
    assert passed <= released <= passed + 3, (passed, released)

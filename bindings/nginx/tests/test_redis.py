"""One quota across hosts (tollgate_redis): real nginx instances joined to a
real redis-server started here (127.0.0.1, a free port, no persistence),
the official openai client, real stalls (DEBUG SLEEP) and a Redis that is
not there."""

import concurrent.futures
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

import openai
import pytest

from conftest import WAIT, Nginx, free_port, fresh_minute
from test_tollgate import FREE_POLICY, HEADERS, assert_six

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"

# a limit no test reaches, for keys that must hold leases
HIGH_POLICY = FREE_POLICY + """
[tiers.enterprise]
"DeepSeek-V3.1" = { rpm = 100000, rpd = 1000000 }
"""


class Redis:
    """One redis-server of the test's own: no persistence, DEBUG allowed
    from 127.0.0.1 (for DEBUG SLEEP), stopped at the end."""

    def __init__(self, tmp, port=None):
        self.dir = pathlib.Path(tmp)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--enable-debug-command", "local", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + WAIT
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited:\n"
                                   + (self.dir / "redis.log").read_text())
            if self.cli("PING", check=False) == "PONG":
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def cli(self, *args, check=True):
        res = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p",
                              str(self.port), *args],
                             capture_output=True, text=True, timeout=WAIT,
                             check=False)
        if check:
            assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def minute_counts(self):
        """Every minute window's count in Redis: {key: count}."""
        keys = self.cli("--scan", "--pattern", "tg:*:m:*").split()
        return {k: int(self.cli("GET", k)) for k in keys}

    def stall(self, seconds):
        """DEBUG SLEEP in the background: Redis answers nothing meanwhile."""
        return subprocess.Popen(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), "DEBUG",
             "SLEEP", str(seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


@pytest.fixture
def redis(tmp_path):
    if not os.path.exists(REDIS):
        pytest.fail("redis-server is missing (tests/setup.sh installs it)")
    r = Redis(tmp_path / "redis").start()
    yield r
    r.stop()


def check_log(n):
    bad = [line for line in n.log().splitlines()
           if "[alert]" in line or "[crit]" in line
           or "exited on signal" in line]
    assert not bad, "\n".join(bad)


@pytest.fixture
def hosts(tmp_path, upstream):
    """Two nginx instances: two gateway hosts, each with its own table."""
    os.chmod(tmp_path, 0o755)
    made = []

    def make(name):
        n = Nginx(tmp_path / name, upstream.port)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()
    for n in made:
        check_log(n)


def joined(redis_url, *options, zone="tg"):
    return f"tollgate_redis zone={zone} {redis_url} {' '.join(options)};"


# answered by nginx itself: its latency is the event loop's
UNLIMITED = """
        location /free/ {
            return 200 "free\\n";
        }
"""


def api_location(extra=""):
    return f"""
        location /v1/ {{
            tollgate tg;
            tollgate_account $tg_account;
            tollgate_tier $http_x_tier;
            # a location's add_header replaces the server's: all of them
            add_header X-Redis-Wait $tollgate_redis_wait always;
            add_header X-Tollgate-Status $tollgate_status always;
            add_header X-Tollgate-Limited-By $tollgate_limited_by always;
            {extra}
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
"""


def store_metrics(nginx):
    """{name: value} of the tollgate_store_* lines (one worker, one zone)."""
    out = {}
    for (name, labels), value in nginx.metrics().items():
        if name.startswith("tollgate_store_"):
            out[name] = value
    return out


def client(nginx, key):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{nginx.port}/v1",
                         api_key=key, max_retries=0, timeout=WAIT)


def chat_raw(c):
    return c.chat.completions.with_raw_response.create(
        model="DeepSeek-V3.1", messages=[{"role": "user", "content": "hi"}])


# --- two hosts, one quota ------------------------------------------------

def test_two_hosts_share_one_quota_through_redis(hosts, redis):
    fresh_minute(needed=30)
    a, b = hosts("a"), hosts("b")
    for n in (a, b):
        n.start(http_extra=joined(redis.url, "hosts=2"),
                locations=api_location(), workers=2)

    ca, cb = client(a, "sk-global"), client(b, "sk-global")
    remaining = []
    for i in range(30):
        raw = chat_raw(ca if i % 2 == 0 else cb)
        assert raw.parse().choices[0].message.content == "ok"
        h = raw.headers
        assert h["x-ratelimit-limit-requests"] == "30"
        assert h["x-tollgate-status"] == "PASSED"
        remaining.append(int(h["x-ratelimit-remaining-requests"]))
    # each host shows the global count as of its last exchange plus its
    # own spends since: never more left than this host's view allows,
    # and at the end what is left everywhere
    for i, left in enumerate(remaining):
        assert 0 <= left <= 29 - i // 2, remaining
    assert remaining[-2:] == [1, 0] or remaining[-1] == 0, remaining

    # the 31st, on either host, is refused with the global state
    for c in (ca, cb):
        with pytest.raises(openai.RateLimitError) as info:
            chat_raw(c)
        h = info.value.response.headers
        assert info.value.status_code == 429
        assert h["x-ratelimit-limit-requests"] == "30"
        assert h["x-ratelimit-remaining-requests"] == "0"
        assert h["x-ratelimit-remaining-requests-day"] == "14970"
        assert int(h["retry-after"]) >= 1
        assert h["x-tollgate-status"] == "REJECTED"
        assert h["x-tollgate-limited-by"] == "MINUTE"
        for name in HEADERS:
            assert name in h, name

    # Redis counted exactly what was admitted, on both hosts together
    assert list(redis.minute_counts().values()) == [30]

    # every request that needed Redis was parked off the event loop; the
    # two hosts' metrics say so
    for n in (a, b):
        m = store_metrics(n)
        assert m["tollgate_store_joined"] == 1
        assert m["tollgate_store_down"] == 0
        assert m["tollgate_store_park_failures_total"] == 0
        assert m["tollgate_store_parked"] == 0


def test_reload_hands_the_link_to_the_new_workers(nginx, redis):
    """Each worker joins on its own: the old workers give their unspent
    units back as they leave (exit_process), and the new ones join."""
    fresh_minute(needed=30)
    nginx.start(http_extra=joined(redis.url), locations=api_location(),
                workers=2)
    for _ in range(5):
        assert nginx.chat("acct-reload").status == 200
    (held,) = redis.minute_counts().values()
    assert held >= 5  # what was spent, and the leases held
    old = nginx.workers()
    nginx.reload()  # returns once the old workers are gone
    # Redis counts what was admitted, nothing of what the old workers held
    assert list(redis.minute_counts().values()) == [5]
    m = nginx.metrics()
    pids = {dict(labels)["pid"] for (name, labels) in m
            if name == "tollgate_store_joined"}
    assert pids and not pids & {str(p) for p in old}, (pids, old)
    assert store_metrics(nginx)["tollgate_store_joined"] == 1
    r = nginx.chat("acct-reload")
    assert r.status == 200
    assert int(r.header("x-ratelimit-remaining-requests")) <= 24
    assert sum(redis.minute_counts().values()) >= 6


# --- Redis stalls: the worker keeps answering ------------------------------

def timed(fn):
    t = time.monotonic()
    r = fn()
    return r, (time.monotonic() - t) * 1000.0


def test_a_stalled_redis_never_blocks_the_worker(nginx, redis, capsys):
    fresh_minute(needed=30)
    policy = nginx.prefix / "policy.toml"
    nginx.prefix.mkdir(parents=True, exist_ok=True)
    policy.write_text(HIGH_POLICY)
    # one worker: the parked request and the others share its event loop;
    # a deadline of 1 s keeps the request parked long enough to show it
    nginx.start(zone=f"size=1m policy={policy}",
                http_extra=joined(redis.url, "deadline=1s", "down=closed",
                                  "refill_interval=10s"),
                locations=api_location() + UNLIMITED, workers=1)

    # a key that holds a lease: used steadily before the stall
    for _ in range(60):
        r = nginx.chat("acct-warm", tier="enterprise")
        assert r.status == 200, r.body
    before = store_metrics(nginx)
    assert before["tollgate_store_from_leases_total"] >= 1

    stall = redis.stall(2)
    try:
        time.sleep(0.3)  # DEBUG SLEEP has begun
        pool = concurrent.futures.ThreadPoolExecutor(4)
        # a key with nothing held: its decision needs Redis
        parked = pool.submit(timed, lambda: nginx.chat("acct-cold"))
        time.sleep(0.1)
        # a client that gives up while its request is parked
        with socket.create_connection(("127.0.0.1", nginx.port)) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n"
                      b"Host: x\r\nAuthorization: Bearer acct-gone\r\n"
                      b"Content-Type: application/json\r\n"
                      b"Content-Length: 25\r\n\r\n"
                      b'{"model":"DeepSeek-V3.1"}')
        free, warm = [], []
        for _ in range(10):
            r, ms = timed(lambda: nginx.get("/free/x"))
            assert r.status == 200 and r.body == b"free\n"
            free.append(ms)
        still_parked = not parked.done()
        for _ in range(5):
            # proxied: its time is mostly the test upstream's
            r, ms = timed(lambda: nginx.chat("acct-warm", tier="enterprise"))
            assert r.status == 200, r.body
            # from the units held: not parked at all
            assert r.header("x-redis-wait") == "0"
            warm.append(ms)
        r, parked_ms = parked.result(WAIT)
    finally:
        stall.wait(WAIT)

    with capsys.disabled():
        print(f"\n  during DEBUG SLEEP 2: unlimited location max "
              f"{max(free):.1f} ms (median {sorted(free)[5]:.1f}), "
              f"leased key max {max(warm):.1f} ms; parked request "
              f"{parked_ms:.0f} ms (deadline 1000 ms)")
    # the worker answered while a request was parked on it
    assert still_parked
    assert max(free) < 500, free
    assert max(warm) < 500, warm
    # the parked request waited for the store's deadline, not the stall,
    # and got the down policy's answer (closed: a 429 from the minute)
    assert 1000 <= parked_ms < 1900, parked_ms
    assert r.status == 429, r.body
    assert r.header("x-tollgate-limited-by") == "MINUTE"
    assert r.header("x-ratelimit-remaining-requests") == "0"
    assert int(r.header("x-redis-wait")) >= 1000
    assert_six(r)

    m = store_metrics(nginx)
    assert m["tollgate_store_deferred_total"] >= 1
    assert m["tollgate_store_degraded_total"] >= 1
    assert m["tollgate_store_timeouts_total"] >= 1
    assert m["tollgate_store_parked"] == 0

    # Redis is back: a new key is decided by it again
    deadline = time.time() + WAIT
    while time.time() < deadline:
        r = nginx.chat(f"acct-after-{time.time()}")
        if r.status == 200:
            break
        time.sleep(0.1)
    assert r.status == 200, r.body
    assert nginx.wait_log("tollgate: rejected")


def test_a_full_thread_pool_queue_is_an_answer_not_a_wait(nginx, redis):
    """One thread and a queue of one: a third request that needs Redis while
    two wait finds no room; it is answered at once (the library's 503: busy,
    retry), not decided on the event loop, and counted."""
    fresh_minute(needed=30)
    render = nginx.render
    nginx.render = lambda **kw: render(**kw).replace(
        "events {", "thread_pool one threads=1 max_queue=1;\nevents {", 1)
    nginx.start(http_extra=joined(redis.url, "deadline=1s", "down=closed")
                + " tollgate_thread_pool one;",
                locations=api_location(), workers=1)
    stall = redis.stall(2)
    try:
        time.sleep(0.3)
        pool = concurrent.futures.ThreadPoolExecutor(3)
        first = pool.submit(nginx.chat, "acct-q1")
        second = pool.submit(nginx.chat, "acct-q2")
        time.sleep(0.2)
        third, ms = timed(lambda: nginx.chat("acct-q3"))
        answers = [first.result(WAIT), second.result(WAIT)]
    finally:
        stall.wait(WAIT)
    assert third.status == 503, third.body
    assert third.json()["error"]["code"] == "rate_limiter_busy"
    assert third.header("x-should-retry") == "true"
    assert ms < 500, ms
    # the two parked ones: the down policy's answer after the deadline, or
    # Redis's (the second waits its turn, and the stall may end meanwhile)
    assert 429 in [a.status for a in answers], [a.body for a in answers]
    assert {a.status for a in answers} <= {200, 429}
    assert nginx.wait_log('thread pool "one" queue overflow')
    m = store_metrics(nginx)
    assert m["tollgate_store_park_failures_total"] == 1
    assert m["tollgate_store_deferred_total"] == 3


def test_http2_requests_park_and_resume(nginx, redis, tmp_path):
    """Over HTTP/2 a parked stream resumes with its answer, and a client
    that drops the connection while its stream is parked leaves nothing
    broken behind."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    fresh_minute(needed=30)
    h2 = free_port()
    nginx.start(http_extra=joined(redis.url, "deadline=500ms", "down=closed"),
                locations=api_location(), workers=1, h2_port=h2)
    body = tmp_path / "body.json"
    body.write_text('{"model":"DeepSeek-V3.1","messages":[]}')

    def h2_chat(account, *extra):
        return subprocess.run(
            [curl, "-s", "--http2-prior-knowledge", "-D", "-", "-o",
             os.devnull, "-H", f"Authorization: Bearer {account}",
             "-H", "Content-Type: application/json", *extra,
             "--data-binary", f"@{body}",
             f"http://127.0.0.1:{h2}/v1/chat/completions"],
            capture_output=True, text=True, timeout=WAIT, check=False)

    # parked for its first grant, then admitted by Redis
    out = h2_chat("acct-h2").stdout
    assert out.startswith("HTTP/2 200"), out
    assert "x-ratelimit-remaining-requests: 29" in out, out

    stall = redis.stall(2)
    try:
        time.sleep(0.3)
        # gives up (closes the connection) while its stream is parked
        assert h2_chat("acct-h2-gone", "--max-time", "0.1").returncode != 0
        out = h2_chat("acct-h2-stalled").stdout
        assert out.startswith("HTTP/2 429"), out
        assert "x-redis-wait: " in out, out
    finally:
        stall.wait(WAIT)
    # Redis is back once the breaker lets a probe through
    deadline = time.time() + WAIT
    while time.time() < deadline:
        out = h2_chat("acct-h2").stdout
        if out.startswith("HTTP/2 200"):
            break
        time.sleep(0.1)
    assert out.startswith("HTTP/2 200"), out
    assert store_metrics(nginx)["tollgate_store_parked"] == 0


def test_graceful_shutdown_waits_for_parked_requests(nginx, redis):
    fresh_minute(needed=30)
    nginx.start(http_extra=joined(redis.url, "deadline=1s", "down=closed"),
                locations=api_location(), workers=1)
    stall = redis.stall(2)
    try:
        time.sleep(0.3)
        pool = concurrent.futures.ThreadPoolExecutor(1)
        parked = pool.submit(nginx.chat, "acct-quit")
        time.sleep(0.2)
        nginx.proc.send_signal(signal.SIGQUIT)
        r = parked.result(WAIT)
        nginx.proc.wait(WAIT)
    finally:
        stall.wait(WAIT)
    # answered before the worker left, which it did cleanly (the fixture
    # checks the log for alerts such as "open socket left")
    assert r.status == 429, r.body
    assert int(r.header("x-redis-wait")) >= 1000
    assert "gracefully shutting down" in nginx.log()


# --- Redis down at start ---------------------------------------------------

def test_redis_down_at_start_decides_by_the_down_policy(nginx, tmp_path):
    fresh_minute(needed=30)
    port = free_port()  # nothing listens there
    url = f"redis://127.0.0.1:{port}/0"
    nginx.start(http_extra=joined(url, "hosts=2", "cooldown=50ms"),
                locations=api_location(), workers=1)
    # local: this host admits its share, floor(30 / 2) a minute
    got = [nginx.chat("acct-down") for _ in range(16)]
    assert [r.status for r in got] == [200] * 15 + [429], \
        [(r.status, r.body) for r in got]
    assert got[0].header("x-ratelimit-limit-requests") == "30"
    assert got[-1].header("x-tollgate-limited-by") == "MINUTE"
    m = store_metrics(nginx)
    assert m["tollgate_store_joined"] == 1
    assert m["tollgate_store_down"] == 1
    assert m["tollgate_store_degraded_total"] == 16
    assert m["tollgate_store_degraded_admitted_total"] == 15

    # Redis comes up: what was admitted meanwhile is pushed
    redis = Redis(tmp_path / "late", port).start()
    try:
        deadline = time.time() + WAIT
        while time.time() < deadline:
            nginx.chat("acct-probe")
            if redis.minute_counts() and 15 in redis.minute_counts().values():
                break
            time.sleep(0.1)
        assert 15 in redis.minute_counts().values(), redis.minute_counts()
        assert store_metrics(nginx)["tollgate_store_down"] == 0
    finally:
        redis.stop()


# --- configuration errors ----------------------------------------------------

def emerg(res):
    assert res.returncode != 0, res.stderr
    return next(x for x in res.stderr.splitlines() if "[emerg]" in x)


def test_config_errors(nginx):
    url = "redis://127.0.0.1:1/0"
    for extra, says in [
        (f"tollgate_redis zone=tg {url} colour=red;",
         'invalid option "colour=red": unknown option "colour"'),
        (f"tollgate_redis zone=tg {url} down=sideways;",
         'down: "sideways" is not local, open or closed'),
        (f"tollgate_redis zone=tg {url} deadline=0ms;", "above zero"),
        (f"tollgate_redis zone=tg {url} hosts;", 'invalid parameter "hosts"'),
        ("tollgate_redis zone=tg http://nowhere;", '"http://nowhere"'),
        (f"tollgate_redis zone=nope {url};", 'unknown tollgate_zone "nope"'),
        (f"tollgate_redis {url} zone=tg;", "takes zone=NAME first"),
        (f"tollgate_redis zone=tg {url}; tollgate_redis zone=tg {url};",
         'has a "tollgate_redis" already'),
        ("tollgate_thread_pool nowhere;", 'unknown thread pool "nowhere"'),
    ]:
        nginx.write(http_extra=extra + (
            "" if "thread_pool" not in extra else joined(url)))
        line = emerg(nginx.test_config())
        assert says in line, (extra, line)
        assert "nginx.conf:" in line, line

    # a declared pool is taken
    nginx.write(http_extra=joined(url) + " tollgate_thread_pool tg;",
                extra="")
    conf = nginx.conf.read_text().replace(
        "events {", "thread_pool tg threads=2;\nevents {")
    nginx.conf.write_text(conf)
    res = nginx.test_config()
    assert res.returncode == 0, res.stderr


def test_a_zone_keeps_its_format(nginx):
    """A table is formatted for leases when it is made: a local file zone
    cannot be joined, a leased one cannot be used locally, and a running
    shared zone cannot change kind on reload."""
    url = "redis://127.0.0.1:1/0"
    region = nginx.prefix / "tg.region"
    nginx.write(zone=f"size=1m file={region}")
    assert nginx.test_config().returncode == 0  # makes a local file
    for zone in (f"size=1m file={region}", f"file={region}"):
        nginx.write(zone=zone, http_extra=joined(url))
        line = emerg(nginx.test_config())
        assert f'cannot open file "{region}"' in line, line
        assert "formatted for quota leases" in line, line
        assert "nginx.conf:" in line, line

    leased = nginx.prefix / "leased.region"
    nginx.write(zone=f"size=1m file={leased}", http_extra=joined(url))
    assert nginx.test_config().returncode == 0, nginx.test_config().stderr
    nginx.write(zone=f"size=1m file={leased}")
    line = emerg(nginx.test_config())
    assert "holds a table formatted for quota leases" in line, line
    assert "tollgate_redis zone=tg URL" in line, line
    assert "nginx.conf:" in line, line

    # a running local shared zone: the reload is refused, the old
    # configuration keeps answering
    nginx.start()
    assert nginx.chat("acct-kind").status == 200
    nginx.write(http_extra=joined(url))
    nginx.signal_reload()
    assert nginx.wait_log("holds a local table, not one formatted for "
                          "quota leases")
    assert nginx.chat("acct-kind").status == 200


# --- tokens across hosts -------------------------------------------------

def test_two_hosts_share_one_token_quota_through_redis(hosts, redis):
    """Each reservation is granted by Redis (on the thread pool), and each
    host settles through its lease thread: what one host's upstream
    reported is what the other host's next answer shows."""
    from test_tokens import LOCATION, POLICY, chat, remaining
    fresh_minute(needed=20)
    a, b = hosts("a"), hosts("b")
    for n in (a, b):
        n.start(zone=f"size=1m policy={POLICY}",
                http_extra=joined(redis.url, "hosts=2"),
                locations=LOCATION % {"buffering": "on", "extra": ""},
                workers=1)
    ca, cb = client(a, "sk-tokens"), client(b, "sk-tokens")

    first = chat(ca, 37)
    reserved = int(first.headers["x-tokens-reserved"])
    assert remaining(first) == 5000 - reserved
    time.sleep(1)  # host a's lease thread gives the unspent part back
    second = chat(cb, 37)
    again = int(second.headers["x-tokens-reserved"])
    assert remaining(second) == 5000 - 37 - again
    chat(ca, 4000)  # used beyond its reservation: the excess is pushed
    time.sleep(1)
    with pytest.raises(openai.RateLimitError) as e:
        chat(cb, 1)
    h = e.value.response.headers
    assert h["x-tollgate-limited-by"] == "TOKENS_MINUTE"
    assert h["x-ratelimit-remaining-tokens"] == str(5000 - 37 - 37 - 4000)
    assert e.value.body["code"] == "tokens_rate_limit_exceeded"
    # host a: two granted, both settled (one under, one over its
    # reservation); host b: one granted and settled, one refused
    for n, want in ((a, (2, 0, 2)), (b, (1, 1, 1))):
        m = store_metrics(n)
        assert m["tollgate_store_down"] == 0
        assert m["tollgate_store_park_failures_total"] == 0
        assert (m["tollgate_store_token_grants_total"],
                m["tollgate_store_token_refusals_total"],
                m["tollgate_store_token_settles_total"]) == want

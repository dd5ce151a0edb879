"""Harness for the nginx module tests: a real nginx (Debian's /usr/sbin/nginx
loading the built module) in its own prefix, in front of a tiny
OpenAI-compatible upstream, both on 127.0.0.1."""

import http.client
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from upstream import Upstream

HERE = pathlib.Path(__file__).resolve().parent
MODULE = pathlib.Path(os.environ.get(
    "TOLLGATE_NGINX_MODULE",
    HERE.parent / "build" / "ngx_http_tollgate_module.so"))
NGINX = os.environ.get("NGINX", shutil.which("nginx") or "/usr/sbin/nginx")
ROOT = HERE.parents[2]
# the operator command, built by test.sh (cargo build --release --bin tollgate)
TOLLGATE = pathlib.Path(os.environ.get(
    "TOLLGATE", pathlib.Path(os.environ.get("CARGO_TARGET_DIR",
                                            ROOT / "target"))
    .joinpath("release", "tollgate")))

# How long a test may wait for nginx to start, reload or stop. A bound on
# waiting, never an assertion about speed.
WAIT = 20.0

API_LOCATION = """
        location /v1/ {
            tollgate tg;
            tollgate_account $tg_account;
            tollgate_tier $http_x_tier;
            %(extra)s
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_minute(needed=25.0):
    """Waits for the next UTC minute if fewer than `needed` seconds remain in
    this one, so a test's requests share one minute window."""
    left = 60.0 - time.time() % 60.0
    if left < needed:
        time.sleep(left + 0.2)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lowercase name -> list of values
        self.body = body

    def header(self, name):
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    def json(self):
        return json.loads(self.body)


class Nginx:
    def __init__(self, prefix, upstream_port):
        self.prefix = pathlib.Path(prefix)
        self.upstream_port = upstream_port
        self.port = free_port()
        self.conf = self.prefix / "nginx.conf"
        self.error_log = self.prefix / "error.log"
        self.access_log = self.prefix / "access.log"
        self.proc = None
        self.gen = 0
        self.params = {}
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "html"):
            (self.prefix / d).mkdir(parents=True, exist_ok=True)

    # configuration -------------------------------------------------------

    def render(self, locations=None, http_extra="", zone="size=1m",
               workers=1, extra="", reuseport=False, h2_port=None):
        if locations is None:
            locations = API_LOCATION % {"extra": extra}
        user = "user root;" if os.geteuid() == 0 else ""
        p = self.prefix
        return f"""
load_module {MODULE};
{user}
worker_processes {workers};
daemon off;
master_process on;
error_log {self.error_log} info;
pid {p}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    log_format tg '$status $tollgate_status $tollgate_limited_by '
                  '$tollgate_minute_remaining $tollgate_day_remaining';
    access_log {self.access_log} tg;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    root {p}/html;

    tollgate_zone name=tg {zone};

    map $http_authorization $tg_account {{
        "~^Bearer\\s+(?<key>.+)$" $key;
        default "";
    }}

    upstream api {{
        server 127.0.0.1:{self.upstream_port};
        keepalive 16;
    }}

    {http_extra}

    server {{
        listen 127.0.0.1:{self.port}{" reuseport" if reuseport else ""};
        {f"listen 127.0.0.1:{h2_port} http2;" if h2_port else ""}
        add_header X-Tollgate-Status $tollgate_status always;
        add_header X-Tollgate-Limited-By $tollgate_limited_by always;
        add_header X-Tollgate-Minute-Remaining $tollgate_minute_remaining
                   always;
        add_header X-Tollgate-Day-Remaining $tollgate_day_remaining always;
        add_header X-Worker $pid always;

        location = /__gen {{ return 200 "{self.gen}"; }}
        location = /metrics {{ tollgate_metrics; }}
{locations}
    }}
}}
"""

    def write(self, **params):
        self.params = params
        self.conf.write_text(self.render(**params))

    # process control -----------------------------------------------------

    def test_config(self):
        return subprocess.run([NGINX, "-t", "-p", str(self.prefix), "-c",
                               str(self.conf)], capture_output=True,
                              text=True, timeout=WAIT)

    def start(self, **params):
        self.write(**params)
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + WAIT
        while time.time() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"nginx exited: {err}\n{self.log()}")
            try:
                if self.get("/__gen").body == str(self.gen).encode():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("nginx did not start\n" + self.log())

    def workers(self):
        """Pids of the master's children (its workers)."""
        out = set()
        for d in pathlib.Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                out.add(int(d.name))
        return out

    def reload(self, **params):
        """Rewrites the configuration (same parameters unless given) and
        reloads; returns once new workers answer with the new generation
        and the old workers are gone (so none answers a later request)."""
        self.gen += 1
        self.write(**(params or self.params))
        old = self.workers()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + WAIT
        while time.time() < deadline:
            try:
                if self.get("/__gen").body == str(self.gen).encode() \
                        and not old & self.workers():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("nginx did not reload\n" + self.log())

    def signal_reload(self):
        self.proc.send_signal(signal.SIGHUP)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        self.proc.stderr.close()
        self.proc = None

    def log(self):
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text):
        return self.wait_file(self.error_log, text)

    @staticmethod
    def wait_file(path, text):
        deadline = time.time() + WAIT
        while time.time() < deadline:
            try:
                if text in path.read_text(errors="replace"):
                    return True
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        return False

    # requests --------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, chunked=False):
        conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                          timeout=WAIT)
        try:
            hdrs = dict(headers or {})
            if chunked:
                conn.request(method, path, body=iter([body]), headers=hdrs,
                             encode_chunked=True)
            else:
                conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            out = {}
            for name, value in resp.getheaders():
                out.setdefault(name.lower(), []).append(value)
            return Response(resp.status, out, data)
        finally:
            conn.close()

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def chat(self, account, model="DeepSeek-V3.1", tier=None, body=None,
             **kw):
        headers = {"Content-Type": "application/json"}
        if account is not None:
            headers["Authorization"] = f"Bearer {account}"
        if tier is not None:
            headers["X-Tier"] = tier
        if body is None:
            body = json.dumps({"model": model, "messages": [
                {"role": "user", "content": "hello"}]})
        if isinstance(body, str):
            body = body.encode()
        return self.request("POST", "/v1/chat/completions", body, headers,
                            **kw)

    def metrics(self):
        """{(name, frozenset(labels.items())): value}"""
        out = {}
        for line in self.get("/metrics").body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.fullmatch(r'(\w+)\{(.*)\} (\d+)', line)
            assert m, line
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"',
                                     m.group(2)))
            out[(m.group(1), frozenset(labels.items()))] = int(m.group(3))
        return out


@pytest.fixture(scope="session")
def upstream():
    if not MODULE.exists():
        pytest.exit(f"{MODULE} is missing: run bindings/nginx/build.sh",
                    returncode=2)
    with Upstream() as up:
        yield up


@pytest.fixture
def nginx(tmp_path, upstream):
    # workers may run as another user: let them into the prefix
    os.chmod(tmp_path, 0o755)
    n = Nginx(tmp_path / "nginx", upstream.port)
    yield n
    n.stop()
    # no worker may have crashed or hit an internal error
    bad = [line for line in n.log().splitlines()
           if "[alert]" in line or "[crit]" in line
           or "exited on signal" in line]
    assert not bad, "\n".join(bad)

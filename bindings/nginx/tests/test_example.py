"""The shipped example runs as it is: examples/gateway.conf in a real nginx
with only its two addresses moved to free ports and its load_module line
pointed at the module just built; and install.sh puts the module where that
load_module line looks."""

import os
import re
import shutil
import subprocess
import time

from conftest import HERE, MODULE, NGINX, WAIT, fresh_minute
from test_accounts import LONG_KEY, blake2b_hex
from test_tollgate import HEADERS, assert_six

EXAMPLES = HERE.parent / "examples"
INSTALL = HERE.parent / "install.sh"


def load_line(text):
    (line,) = re.findall(r"^load_module [^;]+;$", text, re.M)
    return line


def start_example(nginx, upstream_port):
    text = (EXAMPLES / "gateway.conf").read_text()
    moves = [(load_line(text), f"load_module {MODULE};"),
             (r"^(\s+listen) 127\.0\.0\.1:8080;$",
              rf"\1 127.0.0.1:{nginx.port};"),
             (r"^(\s+server) 127\.0\.0\.1:8000;$",
              rf"\1 127.0.0.1:{upstream_port};")]
    for old, new in moves:
        if old.startswith("load_module"):
            assert text.count(old) == 1
            text = text.replace(old, new)
        else:
            text, n = re.subn(old, new, text, flags=re.M)
            assert n == 1, old
    nginx.conf.write_text(text)
    # the policy sits next to the configuration, as in examples/
    shutil.copy(EXAMPLES / "policy.toml", nginx.prefix / "policy.toml")

    # in the foreground, so the harness stops it by its pid
    nginx.proc = subprocess.Popen(
        [NGINX, "-p", str(nginx.prefix), "-c", str(nginx.conf),
         "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + WAIT
    while time.time() < deadline:
        if nginx.proc.poll() is not None:
            err = nginx.proc.stderr.read().decode(errors="replace")
            raise RuntimeError(f"nginx exited: {err}\n{nginx.log()}")
        try:
            if nginx.get("/v1/models").status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("nginx did not start\n" + nginx.log())


def test_the_example_gateway_runs_as_it_is(nginx, upstream):
    fresh_minute(needed=30)
    start_example(nginx, upstream.port)

    # a 164-character project key: its digest is the account
    for i in range(30):
        r = nginx.chat(LONG_KEY)
        assert r.status == 200, r.body
        assert r.header("x-upstream") == "answered"
        assert_six(r)
        assert r.header("x-ratelimit-limit-requests") == "30"
        assert r.header("x-ratelimit-remaining-requests") == str(29 - i)
        assert r.header("x-ratelimit-limit-requests-day") == "15000"
        assert r.header("x-ratelimit-remaining-requests-day") == str(
            14999 - i)

    r = nginx.chat(LONG_KEY)
    assert r.status == 429
    assert_six(r)
    assert r.header("x-ratelimit-remaining-requests") == "0"
    assert int(r.header("retry-after")) > 0
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.header("x-upstream") is None

    # another key is another account; the other model its own limit
    r = nginx.chat("sk-another-key")
    assert r.status == 200
    assert r.header("x-ratelimit-remaining-requests") == "29"
    r = nginx.chat(LONG_KEY, model="gpt-oss-120b")
    assert r.status == 200
    assert r.header("x-ratelimit-limit-requests") == "150"

    # no key: the library's 401; a model the policy lacks: its 404
    r = nginx.chat(None)
    assert r.status == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    r = nginx.chat(LONG_KEY, model="no-such-model")
    assert r.status == 404

    # listing models is not limited
    r = nginx.get("/v1/models", headers={"Authorization": "Bearer k"})
    assert r.status == 200
    assert not any(r.header(name) for name in HEADERS)

    m = nginx.metrics()
    label = {"zone": "api", "model": "DeepSeek-V3.1"}
    assert m[("tollgate_decisions_total", frozenset(
        dict(label, outcome="passed").items()))] == 31
    assert m[("tollgate_decisions_total", frozenset(
        dict(label, outcome="rejected").items()))] == 1
    slots = m[("tollgate_table_slots", frozenset({"zone": "api"}.items()))]
    assert 114000 < slots < 117000  # "16 MB: 115 000 keys" in the example

    # the access log names the account by its digest, never the key
    assert nginx.wait_file(nginx.prefix / "access.log",
                           blake2b_hex(LONG_KEY) + " [")
    access = (nginx.prefix / "access.log").read_text()
    assert LONG_KEY not in access
    assert " 429 REJECTED MINUTE m=0 " in access


def test_install_puts_the_module_where_the_example_loads_it(tmp_path):
    dest = tmp_path / "root"
    env = dict(os.environ, DESTDIR=str(dest), NGINX=NGINX)
    res = subprocess.run(["sh", str(INSTALL), "--no-build", "--enable"],
                         capture_output=True, text=True, timeout=WAIT,
                         env=env)
    assert res.returncode == 0, res.stderr

    # the path nginx itself names (nginx -V), which the example loads
    example = load_line((EXAMPLES / "gateway.conf").read_text())
    enabled = dest / "etc/nginx/modules-enabled/50-mod-http-tollgate.conf"
    assert enabled.read_text().strip() == example
    assert example in res.stdout
    path = example[len("load_module "):-1]
    installed = dest / path.lstrip("/")
    assert installed.read_bytes() == MODULE.read_bytes()
    assert oct(installed.stat().st_mode & 0o777) == "0o644"

    # elsewhere on request, and said so
    res = subprocess.run(["sh", str(INSTALL), "--no-build",
                          "--modules-path", "/opt/nginx/modules"],
                         capture_output=True, text=True, timeout=WAIT,
                         env=env)
    assert res.returncode == 0, res.stderr
    assert (dest / "opt/nginx/modules/ngx_http_tollgate_module.so").is_file()
    assert ("load_module /opt/nginx/modules/ngx_http_tollgate_module.so;"
            in res.stdout)
    res = subprocess.run(["sh", str(INSTALL), "--no-build",
                          "--modules-path", "relative/dir"],
                         capture_output=True, text=True, timeout=WAIT,
                         env=env)
    assert res.returncode == 2 and "absolute" in res.stderr

    # the module it installed is one nginx loads
    conf = tmp_path / "t.conf"
    temp = " ".join(f"{t}_temp_path {t};" for t in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"load_module {installed};\nevents {{}}\n"
                    f"http {{ {temp} tollgate_zone name=t size=1m; }}\n")
    res = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf),
                          "-g", f"pid {tmp_path}/nginx.pid; "
                          f"error_log {tmp_path}/error.log;"],
                         capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 0, res.stderr

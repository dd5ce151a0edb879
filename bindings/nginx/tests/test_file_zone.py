"""File-backed zones (tollgate_zone ... file=PATH): the table lives in a
region file the master maps before it forks, so counters survive a stop and
start and a binary upgrade, and the real `tollgate` command works on the
table nginx is counting in."""

import ctypes
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

from conftest import NGINX, ROOT, TOLLGATE, WAIT, fresh_minute
from test_tollgate import FREE_POLICY, HEADERS, assert_six


def tollgate(*args):
    if not TOLLGATE.exists():
        pytest.fail(f"{TOLLGATE} is missing: cargo build --release")
    return subprocess.run([str(TOLLGATE), *map(str, args)],
                          capture_output=True, text=True, timeout=WAIT)


def setup(nginx, size="size=1m"):
    policy = nginx.prefix / "policy.toml"
    policy.write_text(FREE_POLICY)
    region = nginx.prefix / "tg.region"
    return policy, region, f"{size} file={region} policy={policy}"


def test_counts_survive_stop_and_start(nginx):
    fresh_minute(needed=30)
    policy, region, zone = setup(nginx)
    assert not region.exists()
    nginx.start(zone=zone, workers=2)
    assert region.is_file()
    for i in range(5):
        r = nginx.chat("acct-file")
        assert r.status == 200
        assert r.header("x-ratelimit-remaining-requests") == str(29 - i)

    # the real "nginx -s stop": the master and its workers exit, the
    # mapping goes with them, the file stays
    subprocess.run([NGINX, "-p", str(nginx.prefix), "-c", str(nginx.conf),
                    "-s", "stop"], check=True, timeout=WAIT)
    nginx.proc.wait(WAIT)
    nginx.stop()
    nginx.start(zone=zone, workers=2)
    r = nginx.chat("acct-file")
    assert r.status == 200
    assert_six(r)
    assert r.header("x-ratelimit-remaining-requests") == "24"
    assert r.header("x-ratelimit-remaining-requests-day") == "14994"

    # without size= an existing file is taken as it is
    nginx.stop()
    nginx.start(zone=f"file={region} policy={policy}")
    r = nginx.chat("acct-file")
    assert r.header("x-ratelimit-remaining-requests") == "23"

    # metrics and variables work as for a shared-memory zone
    m = nginx.metrics()
    zone_label = frozenset({"zone": "tg"}.items())
    assert m[("tollgate_region_bytes", zone_label)] == region.stat().st_size
    # 1 MB at 144 bytes a slot (with the in-flight areas of 0.4)
    assert m[("tollgate_table_slots", zone_label)] > 6500
    assert m[("tollgate_table_used", zone_label)] == 1
    assert m[("tollgate_decisions_total", frozenset(
        {"zone": "tg", "model": "DeepSeek-V3.1",
         "outcome": "passed"}.items()))] == 1
    assert r.header("x-tollgate-status") == "PASSED"
    assert r.header("x-tollgate-minute-remaining") == "23"


def test_reload_keeps_counts_and_takes_the_new_policy(nginx):
    fresh_minute(needed=20)
    policy, region, zone = setup(nginx)
    nginx.start(zone=zone, workers=2)
    for _ in range(3):
        assert nginx.chat("acct-file-reload").status == 200
    policy.write_text(FREE_POLICY.replace("rpm = 30,", "rpm = 10,"))
    nginx.reload()
    r = nginx.chat("acct-file-reload")
    assert r.status == 200
    assert r.header("x-ratelimit-limit-requests") == "10"
    assert r.header("x-ratelimit-remaining-requests") == "6"


def test_tollgate_inspect_and_reset_work_on_the_live_table(nginx):
    fresh_minute(needed=30)
    policy, region, zone = setup(nginx)
    nginx.start(zone=zone, workers=2)
    for _ in range(4):
        last = nginx.chat("acct-cli", tier="free", model="DeepSeek-V3.1")
        nginx.chat("acct-cli", model="gpt-oss-120b")
    assert last.status == 429  # free: 2 a minute
    sent = {name: int(last.header(name)) for name in HEADERS}

    res = tollgate("inspect", region, "--account", "acct-cli", "--model",
                   "DeepSeek-V3.1", "--tier", "free", "--policy", policy,
                   "--json")
    assert res.returncode == 0, res.stderr
    (seen,) = json.loads(res.stdout)["models"]
    assert seen["minute_used"] == 2
    assert seen["day_used"] == 2
    assert seen["allowed"] is False
    for name in HEADERS:
        assert seen["headers"][name] == sent[name], name

    # the developer-tier key of the same account, counted by nginx too
    res = tollgate("inspect", region, "--account", "acct-cli", "--model",
                   "gpt-oss-120b", "--policy", policy, "--json")
    (seen,) = json.loads(res.stdout)["models"]
    r = nginx.chat("acct-cli", model="gpt-oss-120b")
    assert seen["minute_used"] == 4
    assert r.header("x-ratelimit-remaining-requests") == "145"

    res = tollgate("top", region, "--policy", policy, "--json")
    assert res.returncode == 0, res.stderr
    assert "acct-cli" in res.stdout

    # an operator's reset reaches nginx's workers at once
    res = tollgate("reset", region, "--account", "acct-cli", "--model",
                   "DeepSeek-V3.1", "--policy", policy)
    assert res.returncode == 0, res.stderr
    r = nginx.chat("acct-cli", tier="free")
    assert r.status == 200
    assert r.header("x-ratelimit-remaining-requests") == "1"


def test_file_of_another_size_is_refused(nginx):
    policy, region, zone = setup(nginx)
    nginx.start(zone=zone)
    assert nginx.chat("acct-size").status == 200
    held = nginx.metrics()[("tollgate_table_slots",
                            frozenset({"zone": "tg"}.items()))]
    nginx.stop()
    before = region.read_bytes()

    nginx.write(zone=f"size=2m file={region} policy={policy}")
    res = nginx.test_config()
    assert res.returncode != 0
    line = next(x for x in res.stderr.splitlines() if "[emerg]" in x)
    # the core's words (tg_last_error): the sizes and what to do
    assert f'cannot open file "{region}" with the ' in line, line
    assert f'region holds {held} slots, not the ' in line, line
    assert "grow it with `tollgate resize`" in line, line
    assert 'in nginx, 0 slots is a zone without "size"' in line, line
    # the file is left as it was
    assert region.read_bytes() == before

    # a missing file without size= cannot be created
    missing = nginx.prefix / "none" / "tg.region"
    nginx.write(zone=f"file={missing}")
    res = nginx.test_config()
    assert res.returncode != 0
    # the OS's reason, in the core's words
    assert f'cannot open file "{missing}": {missing}: open: No such file' \
        in res.stderr, res.stderr
    nginx.write(zone=f"size=1m file={missing}")
    res = nginx.test_config()
    assert f'cannot open file "{missing}" with the ' in res.stderr, res.stderr
    assert "No such file or directory" in res.stderr, res.stderr

    # a file that is not a region
    junk = nginx.prefix / "junk.region"
    junk.write_bytes(b"x" * 100000)
    nginx.write(zone=f"size=1m file={junk}")
    res = nginx.test_config()
    assert res.returncode != 0
    assert f'cannot open file "{junk}"' in res.stderr, res.stderr
    assert "not a tollgate region" in res.stderr, res.stderr


class Library:
    """The real libtollgate.so through ctypes, as a second process on the
    region file (another gateway with a wrong clock)."""

    class Request(ctypes.Structure):
        _fields_ = [("size", ctypes.c_uint32),
                    ("account", ctypes.c_char_p),
                    ("account_len", ctypes.c_size_t),
                    ("model", ctypes.c_char_p),
                    ("model_len", ctypes.c_size_t),
                    ("tier", ctypes.c_uint32),
                    ("cost", ctypes.c_uint32),
                    ("rpm", ctypes.c_uint32),
                    ("rpd", ctypes.c_uint32)]

    def __init__(self):
        path = pathlib.Path(os.environ.get(
            "CARGO_TARGET_DIR", ROOT / "target")) / "release" / \
            "libtollgate.so"
        if not path.exists():
            pytest.fail(f"{path} is missing: cargo build --release --lib")
        self.lib = ctypes.CDLL(str(path))
        self.lib.tg_check.argtypes = [ctypes.c_void_p,
                                      ctypes.POINTER(self.Request),
                                      ctypes.c_uint64, ctypes.c_void_p]

    def open(self, policy, region):
        p = ctypes.c_void_p()
        err = ctypes.create_string_buffer(512)
        assert self.lib.tg_policy_load(str(policy).encode(),
                                       ctypes.byref(p), err, 512) == 0, \
            err.value
        lim = ctypes.c_void_p()
        assert self.lib.tg_limiter_open(p, str(region).encode(), 0, 0,
                                        ctypes.byref(lim)) == 0
        self.lib.tg_policy_free(p)
        return lim

    def check(self, lim, account, model, now_ms):
        req = self.Request(0, account, len(account), model, len(model),
                           1, 1, 0, 0)
        decision = ctypes.create_string_buffer(256)
        return self.lib.tg_check(lim, ctypes.byref(req), now_ms, decision)


def test_clock_faults_are_a_metric(nginx):
    """tollgate_clock_faults_total is tg_stats.clock_faults: nginx reads its
    own clock, so the fault comes from another process on the same table
    counting with a clock an hour fast; nginx's next decision on that key
    meets counts dated ahead, re-dates them and the metric says so."""
    policy, region, zone = setup(nginx)
    nginx.start(zone=zone)
    label = frozenset({"zone": "tg"}.items())
    assert nginx.metrics()[("tollgate_clock_faults_total", label)] == 0

    lib = Library()
    lim = lib.open(policy, region)
    try:
        ahead = int(time.time() * 1000) + 3600 * 1000
        assert lib.check(lim, b"acct-clock", b"DeepSeek-V3.1", ahead) == 0
    finally:
        lib.lib.tg_limiter_free(lim)
    assert nginx.metrics()[("tollgate_clock_faults_total", label)] == 0

    assert nginx.chat("acct-clock").status == 200
    assert nginx.metrics()[("tollgate_clock_faults_total", label)] >= 1


def wait_pid(pid_file, not_pid=None):
    deadline = time.time() + WAIT
    while time.time() < deadline:
        try:
            pid = int(pid_file.read_text())
        except (FileNotFoundError, ValueError):
            pid = None
        if pid and pid != not_pid:
            return pid
        time.sleep(0.05)
    return None


def parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        # gone, or going: reading a dying process's stat fails with ESRCH
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_counts_survive_a_binary_upgrade(nginx):
    fresh_minute(needed=40)
    policy, region, zone = setup(nginx)
    # nginx changes binary only as a daemon (its parent must be gone)
    nginx.write(zone=zone, workers=2)
    nginx.conf.write_text(nginx.conf.read_text().replace("daemon off;",
                                                         "daemon on;"))
    pid_file = nginx.prefix / "nginx.pid"
    subprocess.run([NGINX, "-p", str(nginx.prefix), "-c", str(nginx.conf)],
                   check=True, timeout=WAIT)
    masters = []
    try:
        old = wait_pid(pid_file)
        assert old, nginx.log()
        masters.append(old)
        deadline = time.time() + WAIT
        while True:
            assert time.time() < deadline, nginx.log()
            try:
                if nginx.get("/__gen").status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        for _ in range(3):
            assert nginx.chat("acct-upgrade").status == 200

        # USR2: a new master of the same binary reads the configuration
        # and maps the same file; WINCH stops the old master's workers
        os.kill(old, signal.SIGUSR2)
        new = wait_pid(pid_file, not_pid=old)
        assert new, nginx.log()
        masters.append(new)
        os.kill(old, signal.SIGWINCH)

        # count on until a worker of the new master answers: every answer,
        # old worker or new, counts in the one table
        made = 3
        while True:
            assert time.time() < deadline + WAIT, nginx.log()
            r = nginx.chat("acct-upgrade")
            made += 1
            assert r.status == 200
            assert r.header("x-ratelimit-remaining-requests") == \
                str(30 - made)
            if parent_of(int(r.header("x-worker"))) == new:
                break
            time.sleep(0.05)

        # the upgrade is done: the old master goes
        os.kill(old, signal.SIGQUIT)
        r = nginx.chat("acct-upgrade")
        assert r.header("x-ratelimit-remaining-requests") == \
            str(30 - made - 1)
    finally:
        for pid in masters:
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + WAIT
        while any(alive(p) for p in masters) and time.time() < deadline:
            time.sleep(0.05)


def test_reload_to_another_size_keeps_the_running_table(nginx):
    fresh_minute()
    policy, region, zone = setup(nginx)
    nginx.start(zone=zone)
    assert nginx.chat("acct-resize").status == 200
    nginx.write(zone=f"size=2m file={region} policy={policy}")
    nginx.signal_reload()
    assert nginx.wait_log(f'cannot open file "{region}" with the ')
    r = nginx.chat("acct-resize")
    assert r.status == 200
    assert r.header("x-ratelimit-remaining-requests") == "28"

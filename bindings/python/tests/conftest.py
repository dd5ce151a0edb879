"""Shared fixtures. The package under test is whatever `import tollgate`
finds: test.sh installs it (or points TOLLGATE_LIBRARY at a fresh build)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent

# One small policy for the tests that need a limit of their own.
SMALL_POLICY = """
[models]
"DeepSeek-V3.1" = { region = "EU" }
"tiny" = { region = "Global" }

[tiers.developer]
"DeepSeek-V3.1" = { rpm = 30, rpd = 15000 }
"tiny" = { rpm = 5, rpd = 8 }

[tiers.enterprise]
"tiny" = { rpm = 50, rpd = 80 }

[accounts."big-corp"]
"tiny" = { rpm = 500, rpd = 800 }
"""

# A fixed instant, 5 s into a minute, for deterministic window tests.
T0 = 1_800_000_000.0 + 5  # 1800000000 is a multiple of 60


@pytest.fixture
def small_policy():
    import tollgate

    with tollgate.Policy.parse(SMALL_POLICY) as p:
        yield p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server on 127.0.0.1, on a free port, without persistence,
    in its own directory; killed (SIGKILL) by stop()."""

    def __init__(self, tmp_path: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None or shutil.which("redis-cli") is None:
            pytest.fail("redis-server and redis-cli are needed (Debian's redis-server package: "
                        "bindings/python/test.sh and tests/setup.sh install it)")
        self.port = free_port()
        self.dir = tmp_path / f"redis-{self.port}"
        self.dir.mkdir()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--enable-debug-command", "local", "--daemonize", "no", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while self.cli_ok("PING") != "PONG":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace") if (self.dir / "redis.log").exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli_args(self, *args: str) -> list[str]:
        return ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args]

    def cli_ok(self, *args: str) -> str | None:
        r = subprocess.run(self.cli_args(*args), capture_output=True, text=True, timeout=10, check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    def cli(self, *args: str) -> str:
        """One command through redis-cli, its reply as text."""
        r = subprocess.run(self.cli_args(*args), capture_output=True, text=True, timeout=10, check=True)
        return r.stdout.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def away_from_minute_edge(margin: float = 8.0) -> None:
    """Sleeps past the next UTC minute boundary when one is near, so a burst
    of real-clock requests lands in one minute window."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.2)


def subprocess_pythonpath(env: dict[str, str]) -> str:
    """PYTHONPATH for child processes: the tests' directory, and the
    directory the tests imported tollgate from, so children use the same."""
    import tollgate

    pkg_parent = str(Path(tollgate.__file__).resolve().parent.parent)
    return os.pathsep.join(filter(None, [str(HERE), pkg_parent, env.get("PYTHONPATH")]))


class Server:
    """uvicorn serving ``app`` (default tests/app_server.py) in a subprocess
    on 127.0.0.1."""

    def __init__(self, tmp_path: Path, workers: int = 1, env: dict[str, str] | None = None,
                 app: str = "app_server:app") -> None:
        self.port = free_port()
        self.log_path = tmp_path / f"uvicorn-{self.port}.log"
        self.workers = workers
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONPATH"] = subprocess_pythonpath(full_env)
        cmd = [
            sys.executable, "-m", "uvicorn", app,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(workers), "--log-level", "info", "--no-access-log",
        ]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(HERE), env=full_env,
                                     start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited early:\n{self.log_path.read_text()}")
            ready = self.log_path.read_text(errors="replace").count("Application startup complete")
            if ready >= self.workers:
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"uvicorn not ready in {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # The whole session: the supervisor and its workers.
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=5)
        self.log.close()


@pytest.fixture
def start_server(tmp_path):
    servers: list[Server] = []

    def start(workers: int = 1, env: dict[str, str] | None = None, app: str = "app_server:app") -> Server:
        s = Server(tmp_path, workers, env, app)
        servers.append(s)
        try:
            s.wait_ready()
        except Exception:
            s.stop()
            raise
        return s

    yield start
    for s in servers:
        s.stop()

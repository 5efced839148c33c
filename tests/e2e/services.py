"""Real processes for end-to-end tests: the API (uvicorn), Celery workers and the command line, each
started with its own environment and log file, stopped by process group, waited on with timeouts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.25) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class Services:
    """The processes of one test, all stopped when it ends."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLIFT_")}
        self.env["GRADLIFT_DEFAULT_PAIR"] = "toy"  # the tests' pair; `serve` defaults to smol
        self.env.update(env, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        for name in list(self.procs):
            self.stop(name)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(argv, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 45) -> None:
        """SIGTERM to the leader only (as a process manager would), or SIGKILL to the whole group."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        _kill_group(proc.pid)  # whatever the leader left behind (Celery pool children)

    def run(self, argv: list[str], timeout_s: float = 120) -> str:
        done = subprocess.run(argv, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def wait_healthy(self, name: str, timeout_s: float = 60) -> None:
        def answers() -> bool:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log_tail(name)}")
            try:
                return httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, timeout_s, f"{name} to answer on {self.base_url}")

    # The product's commands:

    def serve(self) -> None:
        self.start("serve", [str(BIN / "gradlift"), "serve", "--port", str(self.port)])
        self.wait_healthy("serve")

    def api(self) -> None:
        self.start("api", [str(BIN / "gradlift"), "api", "--port", str(self.port)])
        self.wait_healthy("api")

    def worker(self, name: str = "worker", module: str = "workers") -> None:
        self.start(name, [sys.executable, "-m", module])

    def migrate(self) -> None:
        self.run([str(BIN / "gradlift"), "migrate"])

    def make_key(self, org: str) -> str:
        return self.run([str(BIN / "gradlift"), "keys", "create", "--org", org]).strip().splitlines()[-1]

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)

"""Real peers for the worker tests: a private redis-server, a Celery worker subprocess, an external CRM.

The external CRM is a real HTTP server on a loopback port that checks the HMAC signature and applies
each Idempotency-Key once, counting what it applied and what it recognised as a repeat.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.services import free_port, require_binary, tcp_reachable
from workers.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify

CHECKOUT = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


class RedisServer:
    """redis-server on a private port, without persistence: a restart loses every queued task."""

    def __init__(self, directory: Path) -> None:
        self.binary = require_binary("redis-server", "redis-server")
        self.port = free_port()
        self.directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
        ]
        log = (self.directory / "redis.log").open("ab")
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: tcp_reachable("127.0.0.1", self.port, 0.2), 10, "redis-server to listen")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None


class CeleryWorker:
    """`celery -A workers.app worker -B` in its own process group, so SIGKILL takes the pool down too."""

    def __init__(self, env: dict[str, str], log_path: Path, *, concurrency: int = 2) -> None:
        self.env = env
        self.log_path = log_path
        self.concurrency = concurrency
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        schedule = self.log_path.with_suffix(".schedule")
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.app",
            "worker",
            "-B",
            "-s",
            str(schedule),
            "--pool",
            "prefork",
            "--concurrency",
            str(self.concurrency),
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            command, env=self.env, cwd=CHECKOUT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes, mid-task, with no chance to clean up."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(10)
        self._process = None

    def stop(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()
        self._process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class ExternalCrm:
    """The receiving end of the webhook; `up()`/`down()` open and close its listening socket."""

    def __init__(self, secret: str, *, delay_s: float = 0.0) -> None:
        self.secret = secret.encode()
        self.port = free_port()
        self.delay_s = delay_s
        self.applied: dict[str, dict[str, object]] = {}
        self.repeats: Counter[str] = Counter()
        self.bad_signatures = 0
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/crm/events"

    def applied_count(self) -> int:
        with self._lock:
            return len(self.applied)

    def up(self) -> None:
        crm = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if crm.delay_s:
                    time.sleep(crm.delay_s)
                status = crm.receive(
                    self.headers.get(IDEMPOTENCY_HEADER, ""), self.headers.get(SIGNATURE_HEADER, ""), body
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(5)
            self._server = None

    def receive(self, key: str, signature: str, body: bytes) -> int:
        if not key or not verify(self.secret, body, signature, now=time.time()):
            with self._lock:
                self.bad_signatures += 1
            return 401
        with self._lock:
            if key in self.applied:
                self.repeats[key] += 1
                return 200  # idempotent: the same answer, nothing applied again
            self.applied[key] = json.loads(body)
        return 201


@contextlib.contextmanager
def external_crm(secret: str, *, delay_s: float = 0.0) -> Iterator[ExternalCrm]:
    crm = ExternalCrm(secret, delay_s=delay_s)
    crm.up()
    try:
        yield crm
    finally:
        crm.down()

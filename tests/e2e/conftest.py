"""`switchboard serve` as a real subprocess on free ports with its own SQLite database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def switchboard_command() -> list[str]:
    script = Path(sys.executable).with_name("switchboard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "switchboard"]


@dataclass(frozen=True)
class RunningServer:
    http_port: int
    sip_port: int
    data_dir: Path
    log_path: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def sip_uri(self) -> str:
        return f"sip:agent@127.0.0.1:{self.sip_port}"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'switchboard.db'}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("serve")
    http_port, sip_port = free_port(), free_port(socket.SOCK_DGRAM)
    log_path = data_dir / "serve.log"
    env = dict(os.environ, SWITCHBOARD_DATA_DIR=str(data_dir), SWITCHBOARD_LOG_LEVEL="INFO")
    env.pop("SWITCHBOARD_DATABASE_URL", None)
    # Keep the server's RTP ports apart from other servers a test run may start.
    rtp_low = 20000 + (sip_port % 400) * 20
    env.update(SWITCHBOARD_RTP_PORT_MIN=str(rtp_low), SWITCHBOARD_RTP_PORT_MAX=str(rtp_low + 19))
    command = [
        *switchboard_command(),
        "serve",
        "--http-port",
        str(http_port),
        "--sip-port",
        str(sip_port),
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    running = RunningServer(http_port, sip_port, data_dir, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"switchboard serve exited with {process.returncode}:\n{running.log()}")
            try:
                with urllib.request.urlopen(f"{running.api}/healthz", timeout=1) as response:
                    if json.load(response)["status"] == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"switchboard serve did not become healthy:\n{running.log()}")
            time.sleep(0.2)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

"""`switchboard serve` as a real subprocess on free ports with its own SQLite database."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crm.scratch import create_postgres_database, drop_postgres_database
from tests.crm.databases import require_postgres
from tests.services import free_port


def switchboard_command() -> list[str]:
    script = Path(sys.executable).with_name("switchboard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "switchboard"]


@dataclass(frozen=True)
class RunningServer:
    http_port: int
    sip_port: int
    data_dir: Path
    log_path: Path
    database_url: str

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def sip_uri(self) -> str:
        return f"sip:agent@127.0.0.1:{self.sip_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# The recogniser's phone-band mapping takes seconds to fit and depends only on the acoustic model (its file
# name carries a hash of the recipe): every server of a test run starts from the first one's fit.
_MAPPING_CACHE = Path(tempfile.gettempdir()) / f"switchboard-test-speech-{os.getuid()}"


def _reuse_phone_band_mapping(data_dir: Path) -> None:
    speech = data_dir / "speech"
    for cached in _MAPPING_CACHE.glob("phone-band-mapping-*.npz"):
        speech.mkdir(parents=True, exist_ok=True)
        if not (speech / cached.name).exists():
            shutil.copyfile(cached, speech / cached.name)


def _keep_phone_band_mapping(data_dir: Path) -> None:
    for fitted in (data_dir / "speech").glob("phone-band-mapping-*.npz"):
        target = _MAPPING_CACHE / fitted.name
        if not target.exists():
            _MAPPING_CACHE.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(fitted, partial)
            partial.replace(target)


@contextlib.contextmanager
def running_server(
    data_dir: Path, database_url: str | None = None, env: dict[str, str] | None = None
) -> Iterator[RunningServer]:
    """`switchboard serve` in a subprocess; SQLite under data_dir unless a database URL is given.
    `env` adds or overrides variables (e.g. SWITCHBOARD_STT) for this server only."""
    http_port, sip_port = free_port(), free_port(socket.SOCK_DGRAM)
    log_path = data_dir / "serve.log"
    environment = dict(os.environ, SWITCHBOARD_DATA_DIR=str(data_dir), SWITCHBOARD_LOG_LEVEL="INFO")
    environment.pop("SWITCHBOARD_DATABASE_URL", None)
    if database_url is not None:
        environment["SWITCHBOARD_DATABASE_URL"] = database_url
    # Keep the server's RTP ports apart from other servers a test run may start.
    rtp_low = 20000 + (sip_port % 400) * 20
    environment.update(SWITCHBOARD_RTP_PORT_MIN=str(rtp_low), SWITCHBOARD_RTP_PORT_MAX=str(rtp_low + 19))
    environment.update(env or {})
    command = [*switchboard_command(), "serve", "--http-port", str(http_port), "--sip-port", str(sip_port)]
    _reuse_phone_band_mapping(data_dir)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=environment)
    running = RunningServer(
        http_port, sip_port, data_dir, log_path, database_url or f"sqlite:///{data_dir / 'switchboard.db'}"
    )
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
        _keep_phone_band_mapping(data_dir)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("serve")
    if request.param == "sqlite":
        with running_server(data_dir) as running:
            yield running
        return
    admin_url = require_postgres()
    database_url = create_postgres_database(admin_url, prefix="switchboard_e2e")
    try:
        with running_server(data_dir, database_url) as running:
            yield running
    finally:
        drop_postgres_database(admin_url, database_url)


def run_test_call(server: RunningServer, caller: str, lines: list[str]) -> dict[str, Any]:
    """`switchboard call ... --json` against a running server; the parsed result."""
    command = [
        *switchboard_command(),
        "call",
        server.sip_uri,
        "--from",
        caller,
        "--api",
        server.api,
        "--json",
    ]
    for line in lines:
        command += ["--say", line]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr + server.log()
    result: dict[str, Any] = json.loads(completed.stdout)
    return result

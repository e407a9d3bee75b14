"""Real services the tests talk to, and what to do when one is missing.

On a newcomer's machine a missing sipp, PostgreSQL or Redis skips the tests that need it, with the reason.
CI sets SWITCHBOARD_REQUIRE_SERVICES=1 (see .ci/run), which turns those skips into failures so the real-peer
tests always run there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import NoReturn

import pytest

REQUIRE_SERVICES = os.environ.get("SWITCHBOARD_REQUIRE_SERVICES") == "1"
POSTGRES_URL = os.environ.get(
    "SWITCHBOARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def unavailable(reason: str) -> NoReturn:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (SWITCHBOARD_REQUIRE_SERVICES=1 makes this a failure)", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not found on PATH (install the Debian package {package})")
    return path


def tcp_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nobody is bound to right now (TCP by default, UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_udp_bound(port: int, process: subprocess.Popen[str], timeout: float = 5.0) -> None:
    """A peer process is listening once its UDP port can no longer be bound (no sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.02)
    raise AssertionError(f"process {process.args!r} did not bind UDP port {port}")

"""sipp as the other party of a test: started on free loopback ports, run in the test's own directory, and
read back (exit code, final statistics and message table, -trace_err and -trace_logs files)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import free_port

SCENARIOS = Path(__file__).resolve().parent
SIPP_SHARE = Path("/usr/share/sip-tester")  # telephone-event captures shipped with Debian's sip-tester
LOOPBACK = "127.0.0.1"
SIPP_TIMEOUT = "30s"

Addr = tuple[str, int]


# --- ports --------------------------------------------------------------------------------------------
def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def free_media_port() -> int:
    """An even port with the three above it free too: sipp's RTP echo binds port and port + 2."""
    for _ in range(50):
        base = free_udp_port() & ~1
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + 4):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind((LOOPBACK, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise OSError("no free block of 4 UDP ports for sipp's media")


async def wait_bound(port: int, timeout: float = 5.0) -> None:
    """Until some process (sipp) has bound `port`: binding it ourselves then fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"sipp did not bind UDP port {port} within {timeout} s")


# --- sipp ---------------------------------------------------------------------------------------------
_TABLE_COLUMNS = ("Messages", "Retrans", "Timeout", "Unexp.", "Unexpected-Msg", "Lost")


@dataclass(frozen=True, slots=True)
class MessageRow:
    """One line of sipp's final message table, e.g. `ACK ---------->  10  0  4`."""

    message: str
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class SippResult:
    scenario: str
    command: tuple[str, ...]
    returncode: int
    output: str  # sipp's final screens (stdout and stderr)
    errors: str  # -trace_err: the unexpected messages sipp saw
    logs: str  # -trace_logs: what the scenario's <log> actions wrote

    def counter(self, name: str) -> int:
        """A cumulative value of the statistics screen ("Successful call", "Failed call", ...)."""
        found = re.findall(rf"{re.escape(name)}\s*\|\s*\d+\s*\|\s*(\d+)", self.output)
        return int(found[-1]) if found else 0

    @property
    def successful(self) -> int:
        return self.counter("Successful call")

    @property
    def failed(self) -> int:
        return self.counter("Failed call")

    def message_rows(self) -> list[MessageRow]:
        """The last message table: counts per column, read by the header's column positions."""
        lines = self.output.splitlines()
        headers = [i for i, line in enumerate(lines) if "Messages" in line and "Retrans" in line]
        if not headers:
            return []
        header = lines[headers[-1]]
        starts = sorted((header.index(name), name) for name in _TABLE_COLUMNS if name in header)
        rows: list[MessageRow] = []
        for line in lines[headers[-1] + 1 :]:
            match = re.match(r"\s*(\S+)\s+(?:<-+|-+>)", line)
            if match is None:
                if line.strip().startswith("[") or "Pause" in line:
                    continue
                break
            counts: dict[str, int] = {}
            for index, (start, name) in enumerate(starts):
                end = starts[index + 1][0] if index + 1 < len(starts) else len(line)
                cell = line[start:end].strip()
                if cell.isdigit():
                    counts[name] = int(cell)
            rows.append(MessageRow(match.group(1), counts))
        return rows

    def column_total(self, column: str) -> int:
        return sum(row.counts.get(column, 0) for row in self.message_rows())

    def explain(self) -> str:
        """Everything useful when a scenario failed, for the assertion message."""
        tail = "\n".join(self.output.splitlines()[-60:])
        return (
            f"sipp {self.scenario} exited {self.returncode}\ncommand: {' '.join(self.command)}\n"
            f"--- output (tail) ---\n{tail}\n--- unexpected messages ---\n{self.errors or '(none)'}\n"
            f"--- scenario logs ---\n{self.logs or '(none)'}"
        )


@dataclass(eq=False)
class SippProcess:
    """A running sipp; `port` is its SIP port (the address to call when sipp is the UAS)."""

    scenario: str
    command: tuple[str, ...]
    workdir: Path
    port: int
    media_port: int
    process: asyncio.subprocess.Process

    async def wait(self, timeout: float = 45.0) -> SippResult:
        try:
            stdout, _ = await asyncio.wait_for(self.process.communicate(), timeout)
        except TimeoutError:
            self.kill()
            stdout, _ = await self.process.communicate()
            pytest.fail(
                f"sipp {self.scenario} still running after {timeout} s:\n{stdout.decode(errors='replace')}"
            )
        stem = Path(self.scenario).stem
        pid = self.process.pid
        return SippResult(
            scenario=self.scenario,
            command=self.command,
            returncode=self.process.returncode if self.process.returncode is not None else -1,
            output=stdout.decode(errors="replace"),
            errors=_read(self.workdir / f"{stem}_{pid}_errors.log"),
            logs=_read(self.workdir / f"{stem}_{pid}_logs.log"),
        )

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


class Sipp:
    """Starts sipp on free loopback ports with the suite's defaults: one call, a global timeout that
    fails the run, unexpected messages traced, and <log> actions written."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self._running: list[SippProcess] = []

    def add_file(self, name: str, content: bytes) -> Path:
        path = self.workdir / name
        path.write_bytes(content)
        return path

    def copy_shared(self, *names: str) -> None:
        """Media files sipp itself ships (the RFC 4733 captures): copied where the scenario finds them."""
        for name in names:
            source = SIPP_SHARE / name
            if not source.exists():
                pytest.fail(f"{source} is missing: the sip-tester package is incomplete")
            shutil.copy(source, self.workdir / name)

    async def start(
        self,
        scenario: str,
        *,
        remote: Addr | None = None,
        calls: int = 1,
        args: Sequence[str] = (),
        service: str = "agent",
        media_port: int | None = None,
    ) -> SippProcess:
        shutil.copy(SCENARIOS / scenario, self.workdir / scenario)
        port = free_udp_port()
        media_port = media_port or free_media_port()
        command = [
            self.binary,
            "-sf",
            scenario,
            "-i",
            LOOPBACK,
            "-p",
            str(port),
            "-mi",
            LOOPBACK,
            "-mp",
            str(media_port),
            "-s",
            service,
            "-m",
            str(calls),
            "-timeout",
            SIPP_TIMEOUT,
            "-timeout_error",
            "-nostdin",
            "-trace_err",
            "-trace_logs",
            *args,
        ]
        if remote is not None:
            command.append(f"{remote[0]}:{remote[1]}")
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=self.workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        running = SippProcess(scenario, tuple(command), self.workdir, port, media_port, process)
        self._running.append(running)
        if remote is None:  # sipp is the UAS: do not call it before it listens
            await wait_bound(port)
        return running

    async def run(
        self,
        scenario: str,
        *,
        remote: Addr | None = None,
        calls: int = 1,
        args: Sequence[str] = (),
        media_port: int | None = None,
        timeout: float = 45.0,
    ) -> SippResult:
        running = await self.start(scenario, remote=remote, calls=calls, args=args, media_port=media_port)
        return await running.wait(timeout)

    def kill_all(self) -> None:
        for running in self._running:
            running.kill()

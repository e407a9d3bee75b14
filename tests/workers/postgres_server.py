"""A PostgreSQL server owned by one test: initdb into a temporary directory, a private port, and
stop/start at will (the shared test server must never be stopped by a test)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from tests.services import free_port, unavailable


def _bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not candidates:
        unavailable("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (Debian postgresql)")
    return Path(candidates[-1]).parent


class PrivatePostgres:
    def __init__(self, directory: Path) -> None:
        self.bin = _bin_dir()
        self.port = free_port()
        self.directory = directory
        self.data = directory / "data"
        # PostgreSQL refuses to run as root: run it as the `postgres` account when we are root.
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                unavailable("running as root and runuser is missing: cannot start a private PostgreSQL")
            self._as_user = [runuser, "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as_user, *command], capture_output=True, timeout=60, check=False)
        if done.returncode:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
            )

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._as_user:
            shutil.chown(self.directory, "postgres", "postgres")
            self.directory.chmod(0o700)
            # The test's tmp_path parents must be traversable by the postgres account.
            for parent in self.directory.parents:
                if str(parent).startswith("/tmp/") and parent.stat().st_mode & 0o001 == 0:
                    parent.chmod(parent.stat().st_mode | 0o001)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.directory / "server.log"),
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def stop_if_running(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [
                    *self._as_user,
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
            )

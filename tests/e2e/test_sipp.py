"""sipp, a real SIP peer, places calls against `switchboard serve`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.e2e.conftest import RunningServer
from tests.services import free_port, require_binary


def test_sipp_uac_five_calls_succeed(server: RunningServer, tmp_path: Path) -> None:
    sipp = require_binary("sipp", "sip-tester")
    completed = subprocess.run(
        [
            sipp,
            "-sn",
            "uac",
            f"127.0.0.1:{server.sip_port}",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port()),
            "-m",
            "5",
            "-l",
            "5",
            "-timeout",
            "60s",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output + server.log()
    successful = re.findall(r"Successful call\s+\|\s+\d+\s+\|\s+(\d+)", output)
    failed = re.findall(r"Failed call\s+\|\s+\d+\s+\|\s+(\d+)", output)
    assert successful and int(successful[-1]) == 5, output
    assert failed and int(failed[-1]) == 0, output

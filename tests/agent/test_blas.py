"""Limiting numpy's OpenBLAS to one thread in a running process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.blas import _loaded_openblas, limit_blas_threads


def test_the_loaded_library_is_limited_after_load() -> None:
    """In a fresh interpreter (this one's BLAS is left alone): numpy's OpenBLAS is found, and after the
    call it reports one thread."""
    script = (
        "import numpy\n"
        "from agent.blas import blas_threads, limit_blas_threads\n"
        "before = blas_threads()\n"
        "assert before, 'numpy wheels bundle OpenBLAS'\n"
        "after = limit_blas_threads(1)\n"
        "assert after.keys() == before.keys() and set(after.values()) == {1}, after\n"
        "assert set(blas_threads().values()) == {1}\n"
        "print('ok')\n"
    )
    env_free = {key: value for key, value in os.environ.items() if "NUM_THREADS" not in key}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env=env_free,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_only_mapped_openblas_libraries_are_found(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 1 /opt/x/numpy.libs/libscipy_openblas64_-32a4b2a6.so\n"
        "7f01-7f02 r--p 00001000 08:01 1 /opt/x/numpy.libs/libscipy_openblas64_-32a4b2a6.so\n"
        "7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libopenblas.so.0\n"
        "7f03-7f04 r-xp 00000000 08:01 3 /usr/lib/libm.so.6\n"
        "7f04-7f05 rw-p 00000000 00:00 0 \n"
        "7f05-7f06 rw-p 00000000 00:00 0 [heap]\n",
        encoding="ascii",
    )
    assert _loaded_openblas(maps) == [
        "/opt/x/numpy.libs/libscipy_openblas64_-32a4b2a6.so",
        "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    ]
    assert _loaded_openblas(tmp_path / "missing") == []


def test_a_thread_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        limit_blas_threads(0)

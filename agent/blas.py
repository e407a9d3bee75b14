"""Keep numpy's OpenBLAS to the calling thread in processes that already run one busy thread per core.

OpenBLAS starts a thread per core at load and hands each matrix product above a small size to all of
them; after a product its threads spin for a while waiting for the next one. A speech worker multiplies
small matrices many times a second (the phone-band mapping of every fed frame, larger when a loaded
server sends several frames at once), so its helper threads were nearly always spinning. Measured with
``perf record -a`` during ``switchboard bench agent --calls 100``: the helper threads of the two speech
workers took 12.8 % of all CPU on this 2-core machine, against 57 % for the decoding itself, and that
time came out of the other worker's core. One thread per process is what the pool's design assumes.

The library is found among the process's mapped files and limited through its own entry point
(``openblas_set_num_threads``, or the symbol-suffixed name of the scipy-openblas build numpy wheels
ship), which takes effect after load, unlike ``OPENBLAS_NUM_THREADS``.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

__all__ = ["blas_threads", "limit_blas_threads"]

_SETTERS: Final = (
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads64_",
)
_GETTERS: Final = (
    "openblas_get_num_threads",
    "openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads64_",
)


def _loaded_openblas(maps: Path = Path("/proc/self/maps")) -> list[str]:
    """Paths of the OpenBLAS shared libraries mapped into this process (none where /proc is missing)."""
    try:
        lines = maps.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    found: dict[str, None] = {}
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6:
            path = fields[5].strip()
            name = Path(path).name.lower()
            if "openblas" in name and ".so" in name:
                found[path] = None
    return list(found)


def _entry_point(path: str, names: tuple[str, ...]) -> ctypes._NamedFuncPointer | None:
    try:
        library = ctypes.CDLL(path)  # already loaded: this only looks it up
    except OSError:
        return None
    for name in names:
        function = getattr(library, name, None)
        if function is not None:
            return function  # type: ignore[no-any-return]
    return None


def limit_blas_threads(count: int = 1) -> dict[str, int]:
    """Limit every loaded OpenBLAS to ``count`` threads; returns each library's thread count afterwards."""
    if count < 1:
        raise ValueError(f"BLAS thread count must be at least 1, got {count}")
    result: dict[str, int] = {}
    for path in _loaded_openblas():
        setter = _entry_point(path, _SETTERS)
        if setter is None:
            log.warning("%s has no openblas_set_num_threads; left as it is", path)
            continue
        setter.argtypes = [ctypes.c_int]
        setter.restype = None
        setter(count)
        threads = _thread_count(path)
        result[path] = count if threads is None else threads
    return result


def blas_threads() -> dict[str, int]:
    """Each loaded OpenBLAS library and the number of threads it will use for a product."""
    result: dict[str, int] = {}
    for path in _loaded_openblas():
        threads = _thread_count(path)
        if threads is not None:
            result[path] = threads
    return result


def _thread_count(path: str) -> int | None:
    getter = _entry_point(path, _GETTERS)
    if getter is None:
        return None
    getter.argtypes = []
    getter.restype = ctypes.c_int
    return int(getter())

"""How fast the (shared) bench machine runs right now, so that figures from different runs can be compared.

The same code measured 12.7 us of CPU per call per media tick one hour and 20 us the next on this
machine, with nothing else running in it: its host is shared. Every benchmark therefore prints this
figure beside its own: the best of a few timings of a fixed pure-Python loop (lower is faster).
"""

from __future__ import annotations

import time

__all__ = ["python_loop_ms"]


def python_loop_ms(iterations: int = 2_000_000, repeats: int = 3) -> float:
    """Milliseconds for the fastest of `repeats` runs of a fixed integer-summing loop."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        total = 0
        for value in range(iterations):
            total += value
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)

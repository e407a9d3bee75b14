"""The media benchmark's measuring parts: the load generator's analysis, and a short run end to end.

Figures are not asserted (they depend on the machine); what is checked is that every packet is accounted
for and that the analysis computes what it says from the kernel timestamps it is given.
"""

from __future__ import annotations

import math
import select

import numpy as np
import pytest

from bench.media import run_media_bench
from bench.media_load import _analyse

MS = 1_000_000  # nanoseconds


def test_analysis_of_arrivals_per_stream() -> None:
    # Two streams, received interleaved. Stream 0: 20 ms, 23 ms, 18 ms; a packet (seq 12) missing. Stream 1:
    # exactly 20 ms, but its last interval ends after the window.
    records = [
        (0, 10, 1000 * MS),
        (1, 500, 1005 * MS),
        (0, 11, 1020 * MS),
        (1, 501, 1025 * MS),
        (0, 13, 1043 * MS),
        (1, 502, 1045 * MS),
        (0, 14, 1061 * MS),
        (1, 503, 1065 * MS),
    ]
    index, seq, arrival = (np.array(column) for column in zip(*records, strict=True))
    figures = _analyse(
        index.astype(np.int32), seq.astype(np.uint16), arrival.astype(np.int64), 1000 * MS, 1062 * MS
    )
    # Stream 0: |20-20|, |23-20|, |18-20|; stream 1: 0, 0 (its 1045 -> 1065 interval ends after the window).
    assert figures["intervals"] == 5
    assert figures["gaps"] == 1
    assert figures["max_ms"] == pytest.approx(3.0)
    assert figures["p50_ms"] == pytest.approx(0.0)
    assert figures["p99_ms"] == pytest.approx(3.0)


def test_analysis_counts_a_sequence_wrap_as_no_gap() -> None:
    index = np.zeros(3, np.int32)
    seq = np.array([0xFFFE, 0xFFFF, 0], np.uint16)
    arrival = np.array([0, 20 * MS, 40 * MS], np.int64)
    figures = _analyse(index, seq, arrival, 0, 100 * MS)
    assert (figures["intervals"], figures["gaps"], figures["max_ms"]) == (2, 0, 0.0)


def test_analysis_with_nothing_received() -> None:
    empty = _analyse(np.zeros(0, np.int32), np.zeros(0, np.uint16), np.zeros(0, np.int64), 0, 1)
    assert empty["intervals"] == 0 and math.isnan(empty["p99_ms"])


@pytest.mark.skipif(not hasattr(select, "epoll"), reason="the benchmark's generator uses recvmmsg (Linux)")
def test_short_run_accounts_for_every_packet() -> None:
    # This runs in a test worker with a large heap. The full garbage collection the bench makes comes
    # before the generator starts: at the start of the window it stalled the media clock for as long as
    # the window (over a second in a worker that has run half the suite), so the generator measured no
    # interval at all.
    result = run_media_bench(10, seconds=1.0, warmup=0.5, phases=2, ports=(56000, 56999))
    assert result.calls == 10 and result.clock_phases == 2
    # The generator sends from 0.5 s after the start until the end of the window: 10 streams, 50 per second.
    assert 10 * 50 * 1.3 <= result.packets_to_sut <= 10 * 50 * 1.6
    assert result.packets_received_by_sut == result.packets_to_sut and result.lost_to_sut == 0
    assert result.lost_from_sut == 0 and result.generator_socket_overflow == 0
    # The SUT sends one packet per stream per tick from before the start, in sequence (lost_from_sut
    # above). A late tick sends one packet, not a burst, so on a loaded machine the generator hears a few
    # less than it sent.
    assert result.packets_received_by_generator >= result.packets_to_sut * 0.8
    assert result.frames_to_vad > 0.8 * result.packets_to_sut
    assert not math.isnan(result.send_interval_error_p99_ms)

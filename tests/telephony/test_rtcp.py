from __future__ import annotations

import struct

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from telephony.rtcp import (
    Goodbye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    SdesChunk,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
    build_compound,
    ntp_middle,
    ntp_timestamp,
    parse_compound,
    round_trip_seconds,
)

# An SR with one report block and an SDES CNAME, laid out by hand from RFC 3550 sections 6.4.1 and 6.5:
# V=2 RC=1 PT=200 length=12 words; then V=2 SC=1 PT=202 length=6 words.
SR_WIRE = (
    bytes.fromhex("81c8000c")
    + struct.pack("!IQIII", 0x11111111, 0xE8D4A51000000000 | 0x80000000, 48000, 300, 48000)
    + struct.pack("!IIIIII", 0x22222222, 0x05 << 24 | 0x000010, 0x0001_0010, 37, 0x12345678, 0x00018000)
)
SDES_WIRE = bytes.fromhex("81ca0006") + struct.pack("!I", 0x11111111) + b"\x01\x10user@example.com" + bytes(2)


def test_sender_report_fields_and_round_trip() -> None:
    [report] = parse_compound(SR_WIRE)
    assert isinstance(report, SenderReport)
    assert (report.ssrc, report.rtp_timestamp, report.packet_count, report.octet_count) == (
        0x11111111,
        48000,
        300,
        48000,
    )
    [block] = report.reports
    assert block == ReportBlock(0x22222222, 5, 16, 0x10010, 37, 0x12345678, 0x18000)
    assert bytes(report) == SR_WIRE


def test_compound_with_sdes() -> None:
    packets = parse_compound(SR_WIRE + SDES_WIRE)
    assert isinstance(packets[1], SourceDescription)
    assert packets[1].chunks[0].cname == "user@example.com"
    assert build_compound(packets) == SR_WIRE + SDES_WIRE


def test_receiver_report_and_negative_loss() -> None:
    block = ReportBlock(7, 0, -3, 70000, 12, 0, 0)  # duplicates make cumulative loss negative
    wire = bytes(ReceiverReport(0xABCDEF01, (block, block)))
    assert wire[:4] == bytes.fromhex("82c9000d")
    [parsed] = parse_compound(wire)
    assert parsed == ReceiverReport(0xABCDEF01, (block, block))
    assert wire[12:16] == bytes.fromhex("00fffffd")  # 24-bit two's complement


def test_sdes_several_chunks_and_items() -> None:
    sdes = SourceDescription(
        (SdesChunk(1, ((1, b"a@b"), (2, b"Alice"))), SdesChunk(2, ((1, b"exactly4"),)), SdesChunk(3, ()))
    )
    wire = bytes(sdes)
    assert len(wire) % 4 == 0
    assert parse_compound(wire) == [sdes]
    assert sdes.chunks[2].cname is None


def test_bye_with_and_without_reason() -> None:
    for bye in (Goodbye((1, 2)), Goodbye((3,), "call ended")):
        wire = bytes(bye)
        assert len(wire) % 4 == 0
        assert parse_compound(wire) == [bye]


def test_unknown_types_are_kept_and_padding_stripped() -> None:
    app = bytes.fromhex("80cc0002") + b"NAME" + b"data"  # APP (204)
    padded_bye = bytes.fromhex("a1cb0002") + struct.pack("!I", 9) + b"\x00\x00\x00\x04"
    packets = parse_compound(SR_WIRE + app + padded_bye)
    assert packets[1] == UnknownRtcp(204, 0, b"NAMEdata")
    assert packets[2] == Goodbye((9,))


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"", "empty"),
        (SR_WIRE[:3], "truncated RTCP header"),
        (bytes([0x41]) + SR_WIRE[1:], "version"),
        (SR_WIRE[:-4], "exceeds"),
        (bytes.fromhex("82c80007") + SR_WIRE[4:32], "truncated sender report"),
        (bytes.fromhex("81c90001") + bytes(4), "truncated receiver report"),
        (bytes.fromhex("81ca0001") + bytes(4), "without terminating"),
        (bytes.fromhex("81ca0002") + bytes(4) + b"\x01\x09ab", "truncated SDES item"),
        (bytes.fromhex("82cb0001") + bytes(4), "truncated BYE"),
        (bytes.fromhex("81cb0002") + bytes(4) + b"\x09abc", "truncated BYE reason"),
        (bytes.fromhex("a1cb0001") + b"\x00\x00\x00\x00", "padding"),
        (bytes.fromhex("a1cb0001") + b"\x00\x00\x00\x04" + SR_WIRE, "padding"),  # not the last packet
        (bytes.fromhex("8000" + "0001") + bytes(4), "not an RTCP packet type"),
    ],
)
def test_malformed_rtcp(wire: bytes, message: str) -> None:
    with pytest.raises(RtcpError, match=message):
        parse_compound(wire)


@settings(max_examples=500, deadline=None, database=None)
@given(st.binary(max_size=96))
def test_only_rtcp_error_escapes(data: bytes) -> None:
    try:
        packets = parse_compound(bytes([0x80 | (data[0] & 0x3F if data else 0)]) + data[1:])
    except RtcpError:
        return
    assert parse_compound(build_compound(packets)) == packets


def test_serialiser_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        bytes(ReportBlock(1, 256, 0, 0, 0, 0, 0))
    with pytest.raises(ValueError):
        bytes(ReportBlock(1, 0, 1 << 23, 0, 0, 0, 0))
    with pytest.raises(ValueError):
        bytes(ReceiverReport(1, (ReportBlock(1, 0, 0, 0, 0, 0, 0),) * 32))
    with pytest.raises(ValueError):
        bytes(Goodbye((1,), "x" * 256))


# --- RFC 3550 appendix A statistics -----------------------------------------------------------------------


def feed(stats: ReceptionStats, seqs: list[int], start: int = 0) -> None:
    for i, seq in enumerate(seqs, start):
        stats.update(seq & 0xFFFF, 160 * i, 160 * i)  # arrival in timestamp units: 20 ms apart


def test_probation_then_in_order_packets_lose_nothing() -> None:
    stats = ReceptionStats(0x55, 100)
    assert not stats.update(100, 0, 0)  # A.1: a new source is on probation for its first packet
    assert stats.update(101, 160, 160)
    feed(stats, list(range(102, 200)), start=2)
    assert (stats.expected, stats.received, stats.lost) == (99, 99, 0)
    assert stats.report_block(4.0).fraction_lost == 0


def test_loss_and_fraction_lost_per_interval() -> None:
    stats = ReceptionStats(1, 0)
    feed(stats, [0, 1])
    # 100 expected in the next interval, 25 of them missing.
    seqs = [s for s in range(2, 102) if s % 4 != 0]
    feed(stats, seqs, start=2)
    first = stats.report_block(2.0)
    assert first.packets_lost == 25
    # Packet 0 was the probation packet, so the first interval expects 1..101: 101 packets, 25 lost.
    assert first.fraction_lost == (25 << 8) // 101
    feed(stats, list(range(102, 202)), start=102)
    second = stats.report_block(4.0)
    assert (second.packets_lost, second.fraction_lost) == (25, 0)
    assert second.highest_sequence == 201


def test_wrap_around_counts_cycles() -> None:
    stats = ReceptionStats(1, 65530)
    feed(stats, list(range(65530, 65546)))
    assert stats.cycles == 1 << 16
    assert stats.extended_max == 65545
    assert stats.lost == 0


def test_duplicates_make_loss_negative() -> None:
    stats = ReceptionStats(1, 10)
    feed(stats, [10, 11, 12, 12, 13, 13])
    assert stats.lost == -2


def test_sequence_restart_needs_two_sequential_packets() -> None:
    stats = ReceptionStats(1, 10)
    feed(stats, list(range(10, 20)))
    assert not stats.update(40000, 0, 8000)
    assert stats.update(40001, 160, 8160)
    assert stats.base_seq == 40001 and stats.received == 1


def test_jitter_matches_the_rfc_estimator() -> None:
    stats = ReceptionStats(1, 0)
    reference = 0.0
    previous_transit: float | None = None
    # Packets sent every 20 ms, arriving alternately 0 and 10 ms late, with one 50 ms outlier.
    delays = [0.0 if i % 2 else 0.010 for i in range(200)]
    delays[120] = 0.050
    for i, delay in enumerate(delays):
        arrival = 10.0 + i * 0.02 + delay
        counted = stats.update(i, 160 * i, int(arrival * 8000))
        transit = arrival * 8000 - 160 * i
        if counted and i >= 2:  # the stats count from the second packet (probation) on
            if previous_transit is not None:
                reference += (abs(transit - previous_transit) - reference) / 16
            previous_transit = transit
        elif counted:
            previous_transit = transit
    assert abs(stats.jitter - reference) <= 1.5
    assert 70 <= stats.jitter <= 90  # 10 ms = 80 samples of alternating delay
    assert stats.jitter_ms == pytest.approx(stats.jitter / 8, abs=0.2)


def test_constant_delay_has_no_jitter_and_events_do_not_count() -> None:
    stats = ReceptionStats(1, 0)
    for i in range(50):
        stats.update(i, 160 * i, 24_000 + 160 * i)
    # Telephone-event packets keep their start timestamp: they must not look like jitter.
    for i in range(50, 60):
        stats.update(i, 160 * 50, 24_000 + 160 * i, timed=False)
    assert stats.jitter == 0


def test_lsr_dlsr_and_round_trip() -> None:
    stats = ReceptionStats(1, 0)
    feed(stats, [0, 1, 2])
    sent_at = 1_700_000_000.25
    sr = SenderReport(1, ntp_timestamp(sent_at), 0, 3, 480)
    stats.note_sender_report(sr, arrival=100.0)
    block = stats.report_block(now=101.5)
    assert block.last_sr == ntp_middle(ntp_timestamp(sent_at))
    assert block.delay_since_last_sr == int(1.5 * 65536)
    # The far end gets our block back 0.1 s after sending its SR + 1.5 s hold + 0.15 s return.
    rtt = round_trip_seconds(block, ntp_timestamp(sent_at + 1.75))
    assert rtt == pytest.approx(0.25, abs=1 / 65536)
    assert round_trip_seconds(ReportBlock(1, 0, 0, 0, 0, 0, 0), ntp_timestamp(sent_at)) is None


class _Rfc3550Reference:
    """RFC 3550 A.1 (update_seq) and A.8 (the integer jitter) transcribed, with C's 32-bit int arithmetic."""

    def __init__(self, seq: int) -> None:
        self._init_seq(seq)
        self.max_seq = (seq - 1) & 0xFFFF
        self.probation = 2
        self.transit: int | None = None
        self.jitter = 0  # scaled by 16, A.8's integer form

    def _init_seq(self, seq: int) -> None:
        self.base_seq, self.max_seq, self.bad_seq = seq, seq, (1 << 16) + 1
        self.cycles = self.received = 0

    def update_seq(self, seq: int) -> bool:
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self.probation = 1
                self.max_seq = seq
            return False
        if udelta < 3000:
            if seq < self.max_seq:
                self.cycles += 1 << 16
            self.max_seq = seq
        elif udelta <= (1 << 16) - 100:
            if seq == self.bad_seq:
                self._init_seq(seq)
                self.transit = None  # a new source in effect: no transit to compare with
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        self.received += 1
        return True

    def update(self, seq: int, timestamp: int, arrival: int) -> bool:
        counted = self.update_seq(seq)
        if counted:
            transit = _int32(arrival - timestamp)
            if self.transit is not None:
                d = abs(_int32(transit - self.transit))
                self.jitter += d - ((self.jitter + 8) >> 4)
            self.transit = transit
        return counted


def _int32(value: int) -> int:
    return (value + (1 << 31) & 0xFFFF_FFFF) - (1 << 31)


@settings(max_examples=300, deadline=None, database=None)
@given(
    # Often close to a wrap of the sequence number and of the timestamp.
    first_seq=st.one_of(st.integers(0, 0xFFFF), st.integers(0xFFFF - 20, 0xFFFF)),
    first_ts=st.one_of(st.integers(0, 0xFFFF_FFFF), st.integers(0xFFFF_FFFF - 2_000, 0xFFFF_FFFF)),
    steps=st.lists(
        st.tuples(
            st.sampled_from([1, 1, 1, 1, 1, 2, 0, -1, 5, 4000, -300, 30000]),  # sequence number step
            st.integers(-2, 2),  # timestamp skew, in 5 ms steps
            st.integers(0, 400),  # arrival delay, in timestamp units
        ),
        max_size=300,
    ),
)
def test_statistics_follow_the_rfc_appendix(
    first_seq: int, first_ts: int, steps: list[tuple[int, int, int]]
) -> None:
    ours, reference = ReceptionStats(1, first_seq), _Rfc3550Reference(first_seq)
    seq, ts, clock = first_seq, first_ts, 10**9
    for step, skew, delay in steps:
        seq = (seq + step) & 0xFFFF
        ts = (ts + 160 * step + 40 * skew) & 0xFFFF_FFFF  # wraps 32 bits for many starting points
        clock += 160 * max(step, 0)
        assert ours.update(seq, ts, clock + delay) == reference.update(seq, ts, clock + delay)
        assert (ours.max_seq, ours.cycles, ours.received) == (
            reference.max_seq,
            reference.cycles,
            reference.received,
        )
        assert ours.jitter == reference.jitter >> 4

from __future__ import annotations

import struct

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from telephony.rtp import RtpError, RtpPacket, RtpSender, TelephoneEvent, is_rtcp

# A PCMU packet as a typical PBX sends it: V=2, no padding/extension/CSRC, M=1, PT=0, seq 0x1234,
# timestamp 0xDEADBEEF, SSRC 0x01020304, then 160 bytes of payload.
PCMU_PACKET = bytes.fromhex("80801234deadbeef01020304") + b"\xff" * 160


def test_parse_plain_pcmu_packet() -> None:
    packet = RtpPacket.parse(PCMU_PACKET)
    assert (packet.payload_type, packet.sequence_number, packet.timestamp, packet.ssrc) == (
        0,
        0x1234,
        0xDEADBEEF,
        0x01020304,
    )
    assert packet.marker and packet.payload == b"\xff" * 160
    assert (packet.csrc, packet.extension, packet.padding) == ([], None, 0)
    assert bytes(packet) == PCMU_PACKET


def test_padding_is_stripped_and_restored() -> None:
    # P bit set, 3 payload octets, then 4 padding octets ending in the count.
    data = bytes.fromhex("a0080001000000a000000001") + b"abc" + b"\x00\x00\x00\x04"
    packet = RtpPacket.parse(data)
    assert (packet.payload_type, packet.payload, packet.padding) == (8, b"abc", 4)
    assert bytes(packet) == data


def test_extension_and_csrc() -> None:
    header = bytes.fromhex("92") + bytes([101]) + struct.pack("!HII", 7, 1000, 0xCAFEBABE)
    csrc = struct.pack("!II", 11, 22)
    extension = struct.pack("!HH", 0xBEDE, 2) + bytes(range(8))
    data = header + csrc + extension + b"\x01\x02\x03\x04"
    packet = RtpPacket.parse(data)
    assert packet.csrc == [11, 22]
    assert packet.extension == (0xBEDE, bytes(range(8)))
    assert packet.payload == b"\x01\x02\x03\x04" and packet.payload_type == 101
    assert bytes(packet) == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (PCMU_PACKET[:11], "too short"),
        (bytes([0x40]) + PCMU_PACKET[1:], "version"),  # version 1
        (bytes([0x83]) + PCMU_PACKET[1:12] + b"\x00" * 8, "CSRC"),  # claims 3 CSRCs, has 2
        (bytes([0x90]) + PCMU_PACKET[1:12] + b"\xbe\xde", "extension"),
        (bytes([0x90]) + PCMU_PACKET[1:12] + b"\xbe\xde\x00\x05" + b"\x00" * 8, "extension"),
        (bytes([0xA0]) + PCMU_PACKET[1:12] + b"ab\x00", "padding"),  # padding count 0
        (bytes([0xA0]) + PCMU_PACKET[1:12] + b"ab\x09", "padding"),  # more padding than packet
    ],
)
def test_truncated_or_invalid_packets(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


@settings(max_examples=500, deadline=None, database=None)
@given(st.binary(max_size=64))
def test_only_rtp_error_escapes_and_valid_packets_round_trip(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    assert RtpPacket.parse(bytes(packet)) == packet


def test_serialise_rejects_out_of_range_fields() -> None:
    for packet in [
        RtpPacket(128, 0, 0, 0),
        RtpPacket(0, 65536, 0, 0),
        RtpPacket(0, 0, 2**32, 0),
        RtpPacket(0, 0, 0, 0, csrc=list(range(16))),
        RtpPacket(0, 0, 0, 0, extension=(1, b"abc")),
    ]:
        with pytest.raises(ValueError):
            bytes(packet)


def test_rtcp_demultiplexing() -> None:
    receiver_report = bytes.fromhex("81c90007") + bytes(28)  # RR, PT 201
    sender_report = bytes.fromhex("80c80006") + bytes(24)  # SR, PT 200
    assert is_rtcp(receiver_report) and is_rtcp(sender_report)
    assert not is_rtcp(PCMU_PACKET)
    # Marker set on PT 0 gives 0x80, far from the RTCP range; PT 72-95 with marker would collide (RFC 5761).
    assert not is_rtcp(bytes.fromhex("80e5") + bytes(10))  # PT 101 with marker: 0xE5 = 229
    assert not is_rtcp(b"\x80")


# --- RFC 4733 telephone events -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "event", "digit", "end", "volume", "duration"),
    [
        (bytes.fromhex("050a00a0"), 5, "5", False, 10, 160),
        (bytes.fromhex("0a8a0320"), 10, "*", True, 10, 800),
        (bytes.fromhex("0b3f0000"), 11, "#", False, 63, 0),
        (bytes.fromhex("0f80ffff"), 15, "D", True, 0, 65535),
        (bytes.fromhex("10000140"), 16, "!", False, 0, 320),
        (bytes.fromhex("4000") + bytes(2), 64, "", False, 0, 0),  # a tone event, not a key
    ],
)
def test_telephone_event(
    payload: bytes, event: int, digit: str, end: bool, volume: int, duration: int
) -> None:
    parsed = TelephoneEvent.parse(payload)
    assert (parsed.event, parsed.digit, parsed.end, parsed.volume, parsed.duration) == (
        event,
        digit,
        end,
        volume,
        duration,
    )
    assert bytes(parsed) == payload


def test_telephone_event_reserved_bit_and_redundancy_are_ignored() -> None:
    # R bit set, and a second (redundant) block after the first: only the first block counts.
    parsed = TelephoneEvent.parse(bytes.fromhex("01ca0640") + bytes.fromhex("02800320"))
    assert (parsed.digit, parsed.end, parsed.volume, parsed.duration) == ("1", True, 10, 1600)


def test_telephone_event_errors() -> None:
    with pytest.raises(RtpError):
        TelephoneEvent.parse(b"\x01\x8a\x06")
    with pytest.raises(ValueError):
        bytes(TelephoneEvent(1, False, 64, 0))
    with pytest.raises(ValueError):
        TelephoneEvent.for_digit("E")
    assert TelephoneEvent.for_digit("a", end=True) == TelephoneEvent(12, True, 10, 0)


# --- sender --------------------------------------------------------------------------------------------


def test_sender_advances_sequence_and_timestamp() -> None:
    sender = RtpSender(0, ssrc=0x11223344)
    first_seq, first_ts = sender.sequence_number, sender.timestamp
    packets = [sender.packetize(b"\xff" * 160, 160, marker=(i == 0)) for i in range(3)]
    assert [p.sequence_number for p in packets] == [(first_seq + i) & 0xFFFF for i in range(3)]
    assert [p.timestamp for p in packets] == [(first_ts + 160 * i) & 0xFFFFFFFF for i in range(3)]
    assert [p.marker for p in packets] == [True, False, False]
    assert {p.ssrc for p in packets} == {0x11223344}
    assert (sender.packets_sent, sender.octets_sent) == (3, 480)
    sender.skip(800)
    assert sender.packetize(b"", 160).timestamp == (first_ts + 160 * 3 + 800) & 0xFFFFFFFF


def test_sender_wraps_around() -> None:
    sender = RtpSender(8)
    sender.sequence_number = 0xFFFE
    sender.timestamp = 0xFFFFFFFF - 159
    packets = [sender.packetize(b"\xd5" * 160, 160) for _ in range(3)]
    assert [p.sequence_number for p in packets] == [0xFFFE, 0xFFFF, 0]
    assert [p.timestamp for p in packets] == [0xFFFFFF60, 0, 160]
    for packet in packets:
        assert RtpPacket.parse(bytes(packet)) == packet


def test_sender_starts_at_random_values() -> None:
    senders = [RtpSender(0) for _ in range(20)]
    assert len({s.ssrc for s in senders}) > 1
    assert len({s.sequence_number for s in senders}) > 1
    assert len({s.timestamp for s in senders}) > 1


def test_packet_bytes_wrap_around_like_packetize() -> None:
    # packet_bytes (the per-tick path) does its own arithmetic; it must agree with packetize at the wraps.
    fast, reference = RtpSender(0, ssrc=0xCAFE), RtpSender(0, ssrc=0xCAFE)
    for sender in (fast, reference):
        sender.sequence_number = 0xFFFE
        sender.timestamp = 0xFFFFFFFF - 200
    payloads = [bytes([i]) * 160 for i in range(4)]
    got = [fast.packet_bytes(payload, 160, marker=i == 0) for i, payload in enumerate(payloads)]
    expected = [bytes(reference.packetize(payload, 160, marker=i == 0)) for i, payload in enumerate(payloads)]
    assert got == expected
    assert [RtpPacket.parse(data).sequence_number for data in got] == [0xFFFE, 0xFFFF, 0, 1]
    assert (
        (fast.sequence_number, fast.timestamp)
        == (reference.sequence_number, reference.timestamp)
        == (
            2,
            (0xFFFFFFFF - 200 + 640) & 0xFFFFFFFF,
        )
    )
    assert (fast.packets_sent, fast.octets_sent) == (reference.packets_sent, reference.octets_sent)

"""RTP packets (RFC 3550), RFC 4733 telephone-event payloads, and the sender-side sequence/timestamp state.

Pure data and arithmetic: sockets and pacing live in telephony.media.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass, field

RTP_VERSION = 2
HEADER_SIZE = 12
_HEADER = struct.Struct("!BBHII")
_pack_header = _HEADER.pack
_EXTENSION_HEADER = struct.Struct("!HH")
_EVENT = struct.Struct("!BBH")

# RFC 4733 section 3.2: events 0-9, 10 '*', 11 '#', 12-15 'A'-'D', 16 hook flash (written '!' here).
DTMF_KEYS = "0123456789*#ABCD!"


class RtpError(Exception):
    """A datagram that is not a valid RTP packet (counted and dropped, never answered)."""


@dataclass(slots=True)
class RtpPacket:
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    # (profile-defined 16 bits, data whose length is a multiple of 4), RFC 3550 section 5.3.1.
    extension: tuple[int, bytes] | None = None
    # Number of padding octets, including the final count octet; 0 means no padding.
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        if len(data) < HEADER_SIZE:
            raise RtpError(f"packet too short ({len(data)} bytes)")
        first, second, sequence_number, timestamp, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != RTP_VERSION:
            raise RtpError(f"RTP version {first >> 6}")
        csrc_count = first & 0x0F
        offset = HEADER_SIZE + 4 * csrc_count
        if len(data) < offset:
            raise RtpError("truncated CSRC list")
        csrc = list(struct.unpack_from(f"!{csrc_count}I", data, HEADER_SIZE))
        extension = None
        if first & 0x10:
            if len(data) < offset + 4:
                raise RtpError("truncated header extension")
            profile, words = _EXTENSION_HEADER.unpack_from(data, offset)
            offset += 4
            if len(data) < offset + 4 * words:
                raise RtpError("truncated header extension")
            extension = (profile, data[offset : offset + 4 * words])
            offset += 4 * words
        end = len(data)
        padding = 0
        if first & 0x20:
            padding = data[-1]
            if padding == 0 or end - padding < offset:
                raise RtpError("invalid padding length")
            end -= padding
        return cls(
            payload_type=second & 0x7F,
            sequence_number=sequence_number,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=data[offset:end],
            marker=bool(second & 0x80),
            csrc=csrc,
            extension=extension,
            padding=padding,
        )

    def __bytes__(self) -> bytes:
        if not (
            0 <= self.payload_type <= 127
            and 0 <= self.sequence_number <= 0xFFFF
            and 0 <= self.timestamp <= 0xFFFFFFFF
            and 0 <= self.ssrc <= 0xFFFFFFFF
            and len(self.csrc) <= 15
            and all(0 <= source <= 0xFFFFFFFF for source in self.csrc)
            and 0 <= self.padding <= 255
        ):
            raise ValueError("RTP header field out of range")
        first = RTP_VERSION << 6 | len(self.csrc)
        if self.padding:
            first |= 0x20
        if self.extension is not None:
            first |= 0x10
        header = _HEADER.pack(
            first,
            self.payload_type | (0x80 if self.marker else 0),
            self.sequence_number,
            self.timestamp,
            self.ssrc,
        )
        parts = [header, struct.pack(f"!{len(self.csrc)}I", *self.csrc)]
        if self.extension is not None:
            profile, ext_data = self.extension
            if len(ext_data) % 4 or len(ext_data) > 4 * 0xFFFF:
                raise ValueError("RTP header extension must be a whole number of 32-bit words")
            parts += [_EXTENSION_HEADER.pack(profile, len(ext_data) // 4), ext_data]
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(parts)


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 section 4: on a shared port, second octet 192-223 (RTCP SR/RR/SDES/BYE/APP...) is RTCP."""
    return len(data) >= 2 and data[0] >> 6 == RTP_VERSION and 192 <= data[1] <= 223


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 named-event payload block: event code, end bit, volume (-dBm0) and duration (samples)."""

    event: int
    end: bool
    volume: int
    duration: int

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        # Redundant blocks for earlier events may follow (section 2.5.1.5); the first one is current.
        if len(payload) < _EVENT.size:
            raise RtpError(f"telephone-event payload too short ({len(payload)} bytes)")
        event, flags, duration = _EVENT.unpack_from(payload)
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)

    @classmethod
    def for_digit(
        cls, digit: str, *, end: bool = False, volume: int = 10, duration: int = 0
    ) -> TelephoneEvent:
        index = DTMF_KEYS.find(digit.upper()) if len(digit) == 1 else -1
        if index < 0:
            raise ValueError(f"not a DTMF key: {digit!r}")
        return cls(index, end, volume, duration)

    def __bytes__(self) -> bytes:
        if not (0 <= self.event <= 255 and 0 <= self.volume <= 63 and 0 <= self.duration <= 0xFFFF):
            raise ValueError("telephone-event field out of range")
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)

    @property
    def digit(self) -> str:
        """The key for DTMF events 0-16; an empty string for other events (tones, line signals)."""
        return DTMF_KEYS[self.event] if self.event < len(DTMF_KEYS) else ""


class RtpSender:
    """Sequence number, timestamp and SSRC bookkeeping for one outgoing stream (RFC 3550 section 5.1)."""

    __slots__ = (
        "clock_rate",
        "octets_sent",
        "packets_sent",
        "payload_type",
        "sequence_number",
        "ssrc",
        "timestamp",
    )

    def __init__(self, payload_type: int, ssrc: int | None = None, clock_rate: int = 8000) -> None:
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        # Random initial values make known-plaintext attacks on encrypted streams harder (section 5.1).
        self.sequence_number = secrets.randbits(16)
        self.timestamp = secrets.randbits(32)
        self.packets_sent = 0
        self.octets_sent = 0

    def packetize(self, payload: bytes, samples: int, marker: bool = False) -> RtpPacket:
        """The next packet, carrying `samples` sampling instants; advances sequence and timestamp."""
        packet = RtpPacket(
            payload_type=self.payload_type,
            sequence_number=self.sequence_number,
            timestamp=self.timestamp,
            ssrc=self.ssrc,
            payload=payload,
            marker=marker,
        )
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return packet

    def packet_bytes(self, payload: bytes, samples: int, marker: bool = False) -> bytes:
        """`bytes(packetize(...))` without building an RtpPacket: the per-tick path of every call."""
        sequence_number = self.sequence_number
        timestamp = self.timestamp
        data = _pack_header(
            0x80,
            self.payload_type | 0x80 if marker else self.payload_type,
            sequence_number,
            timestamp,
            self.ssrc,
        )
        # Compare and subtract rather than mask: cheaper on Python ints of more than 30 bits.
        sequence_number += 1
        self.sequence_number = sequence_number if sequence_number <= 0xFFFF else 0
        timestamp += samples
        self.timestamp = timestamp if timestamp <= 0xFFFFFFFF else timestamp - 0x1_0000_0000
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return data + payload

    def event_packet_bytes(self, payload_type: int, timestamp: int, payload: bytes, marker: bool) -> bytes:
        """A packet stamped with an earlier timestamp, as every packet of one RFC 4733 event is.

        Only the sequence number advances; the caller keeps the sampling clock going with `skip()`.
        """
        second = payload_type | (0x80 if marker else 0)
        data = _HEADER.pack(0x80, second, self.sequence_number, timestamp, self.ssrc) + payload
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return data

    def room(self, samples: int) -> int:
        """How many more packets of `samples` each go out before the sequence number or the timestamp
        wraps: a caller stamping a stretch of packets itself (see `account`) needs no modulo until then."""
        return min(0xFFFF - self.sequence_number, (0xFFFF_FFFF - self.timestamp) // samples)

    def account(self, packets: int, samples: int, payload_bytes: int) -> None:
        """As `packets` calls of packet_bytes() with `samples` and payloads of `payload_bytes` each, for a
        caller that stamped them itself: sequence number and timestamp from here on, within `room()`."""
        self.sequence_number += packets
        self.timestamp += packets * samples
        self.packets_sent += packets
        self.octets_sent += packets * payload_bytes

    def skip(self, samples: int) -> None:
        """Account for time in which nothing was sent (silence suppression): the timestamp still advances."""
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF

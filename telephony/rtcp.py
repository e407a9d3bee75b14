"""RTCP (RFC 3550 section 6): SR, RR, SDES and BYE packets, and per-source reception statistics.

Pure data and arithmetic like telephony.rtp: the media stream feeds arrival times in and sends the bytes.
`ReceptionStats` follows the RFC's appendix code exactly (A.1 sequence validation, A.3 loss, A.8 jitter),
because the far end's monitoring compares our report blocks with its own counts.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

RTCP_VERSION = 2
SR, RR, SDES, BYE = 200, 201, 202, 203
SDES_CNAME = 1
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)

_COMMON = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IQIII")  # SSRC, NTP timestamp, RTP timestamp, packet count, octet count
_REPORT_BLOCK = struct.Struct("!IIIIII")
_SSRC = struct.Struct("!I")


class RtcpError(Exception):
    """A datagram that is not valid RTCP (counted and dropped, never answered)."""


def ntp_timestamp(unix_time: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point, seconds since 1900) for a Unix time."""
    return int((unix_time + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFF_FFFF_FFFF_FFFF


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the unit of LSR and DLSR (1/65536 s)."""
    return (ntp >> 16) & 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report (RFC 3550 section 6.4.1) about the source `ssrc`."""

    ssrc: int
    fraction_lost: int  # lost fraction since the previous report, in 1/256
    packets_lost: int  # cumulative; signed 24 bits (duplicates can make it negative)
    highest_sequence: int  # extended: cycles << 16 | highest sequence number received
    jitter: int  # interarrival jitter in timestamp units
    last_sr: int  # middle 32 bits of the NTP timestamp of the last SR from `ssrc`, 0 if none
    delay_since_last_sr: int  # in 1/65536 s

    @classmethod
    def parse(cls, data: bytes, offset: int = 0) -> ReportBlock:
        if len(data) < offset + _REPORT_BLOCK.size:
            raise RtcpError("truncated report block")
        ssrc, loss, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        lost = loss & 0xFFFFFF
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, loss >> 24, lost, highest, jitter, lsr, dlsr)

    def __bytes__(self) -> bytes:
        if not (0 <= self.fraction_lost <= 255 and -(1 << 23) <= self.packets_lost < 1 << 23):
            raise ValueError("report block loss field out of range")
        loss = self.fraction_lost << 24 | (self.packets_lost & 0xFFFFFF)
        return _REPORT_BLOCK.pack(
            self.ssrc, loss, self.highest_sequence, self.jitter, self.last_sr, self.delay_since_last_sr
        )


def _header(packet_type: int, count: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise ValueError("RTCP packet body must be a whole number of 32-bit words")
    if count > 31:
        raise ValueError("at most 31 report blocks, chunks or sources per RTCP packet")
    return _COMMON.pack(RTCP_VERSION << 6 | count, packet_type, len(body) // 4) + body


def _reports(data: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    return tuple(ReportBlock.parse(data, offset + i * _REPORT_BLOCK.size) for i in range(count))


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> SenderReport:
        if len(body) < _SENDER_INFO.size + count * _REPORT_BLOCK.size:
            raise RtcpError("truncated sender report")
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body)
        # Profile-specific extensions may follow the report blocks (section 6.4.1); they are ignored.
        return cls(ssrc, ntp, rtp_ts, packets, octets, _reports(body, _SENDER_INFO.size, count))

    def __bytes__(self) -> bytes:
        info = _SENDER_INFO.pack(
            self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
        )
        return _header(SR, len(self.reports), info + b"".join(bytes(r) for r in self.reports))


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> ReceiverReport:
        if len(body) < 4 + count * _REPORT_BLOCK.size:
            raise RtcpError("truncated receiver report")
        return cls(_SSRC.unpack_from(body)[0], _reports(body, 4, count))

    def __bytes__(self) -> bytes:
        blocks = b"".join(bytes(r) for r in self.reports)
        return _header(RR, len(self.reports), _SSRC.pack(self.ssrc) + blocks)


@dataclass(frozen=True, slots=True)
class SdesChunk:
    ssrc: int
    items: tuple[tuple[int, bytes], ...]  # (item type, value): CNAME is type 1

    @property
    def cname(self) -> str | None:
        for kind, value in self.items:
            if kind == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(frozen=True, slots=True)
class SourceDescription:
    chunks: tuple[SdesChunk, ...]

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> SourceDescription:
        chunks = []
        offset = 0
        for _ in range(count):
            if len(body) < offset + 4:
                raise RtcpError("truncated SDES chunk")
            ssrc = _SSRC.unpack_from(body, offset)[0]
            offset += 4
            items = []
            while True:
                if offset >= len(body):
                    raise RtcpError("SDES chunk without terminating null item")
                kind = body[offset]
                if kind == 0:
                    # The item list ends with a null octet, then padding to the next 32-bit boundary.
                    offset = (offset + 4) & ~3
                    break
                if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
                    raise RtcpError("truncated SDES item")
                length = body[offset + 1]
                items.append((kind, body[offset + 2 : offset + 2 + length]))
                offset += 2 + length
            chunks.append(SdesChunk(ssrc, tuple(items)))
        return cls(tuple(chunks))

    def __bytes__(self) -> bytes:
        body = bytearray()
        for chunk in self.chunks:
            body += _SSRC.pack(chunk.ssrc)
            for kind, value in chunk.items:
                if not (1 <= kind <= 255 and len(value) <= 255):
                    raise ValueError("SDES item type must be 1-255 and its value at most 255 octets")
                body += bytes([kind, len(value)]) + value
            body += bytes(4 - len(body) % 4)  # null item plus padding, always at least one octet
        return _header(SDES, len(self.chunks), bytes(body))


@dataclass(frozen=True, slots=True)
class Goodbye:
    sources: tuple[int, ...]
    reason: str = ""

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> Goodbye:
        end = 4 * count
        if len(body) < end:
            raise RtcpError("truncated BYE")
        sources = struct.unpack_from(f"!{count}I", body)
        reason = ""
        if len(body) > end:
            length = body[end]
            if len(body) < end + 1 + length:
                raise RtcpError("truncated BYE reason")
            # surrogateescape: a reason in another encoding survives a parse/serialise round trip.
            reason = body[end + 1 : end + 1 + length].decode("utf-8", "surrogateescape")
        return cls(tuple(sources), reason)

    def __bytes__(self) -> bytes:
        body = struct.pack(f"!{len(self.sources)}I", *self.sources)
        if self.reason:
            text = self.reason.encode("utf-8", "surrogateescape")
            if len(text) > 255:
                raise ValueError("BYE reason longer than 255 octets")
            body += bytes([len(text)]) + text
            body += bytes(-len(body) % 4)
        return _header(BYE, len(self.sources), body)


@dataclass(frozen=True, slots=True)
class UnknownRtcp:
    """APP, XR, feedback and other packet types: kept raw so a compound packet still parses."""

    packet_type: int
    count: int
    body: bytes

    def __bytes__(self) -> bytes:
        return _header(self.packet_type, self.count, self.body)


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Goodbye | UnknownRtcp

_PARSERS: dict[int, Callable[[int, bytes], RtcpPacket]] = {
    SR: SenderReport.parse_body,
    RR: ReceiverReport.parse_body,
    SDES: SourceDescription.parse_body,
    BYE: Goodbye.parse_body,
}


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Every packet of a compound RTCP datagram; RtcpError if any part is malformed (RFC 3550 A.2)."""
    packets: list[RtcpPacket] = []
    offset = 0
    if not data:
        raise RtcpError("empty RTCP datagram")
    while offset < len(data):
        if len(data) < offset + 4:
            raise RtcpError("truncated RTCP header")
        first, packet_type, words = _COMMON.unpack_from(data, offset)
        if first >> 6 != RTCP_VERSION:
            raise RtcpError(f"RTCP version {first >> 6}")
        end = offset + 4 + 4 * words
        if end > len(data):
            raise RtcpError("RTCP length field exceeds the datagram")
        body = data[offset + 4 : end]
        if first & 0x20:
            # Only the last packet of a compound may be padded (section 6.4.1 / A.2).
            if end != len(data) or not body or not 0 < body[-1] <= len(body):
                raise RtcpError("invalid RTCP padding")
            body = body[: -body[-1]]
        count = first & 0x1F
        parser = _PARSERS.get(packet_type)
        if parser is not None:
            packets.append(parser(count, body))
        elif 192 <= packet_type <= 223:
            packets.append(UnknownRtcp(packet_type, count, body))
        else:
            raise RtcpError(f"not an RTCP packet type: {packet_type}")
        offset = end
    return packets


def build_compound(packets: list[RtcpPacket]) -> bytes:
    return b"".join(bytes(packet) for packet in packets)


# --- reception statistics (RFC 3550 appendix A) -----------------------------------------------------------

RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2


def _wrapped_transit_delta(delta: int) -> int:
    """|D(i-1, i)| of A.8: the transit difference taken modulo 2^32, as a signed 32-bit number."""
    d = delta & 0xFFFF_FFFF
    if d & 0x8000_0000:
        d = (1 << 32) - d
    return d


class ReceptionStats:
    """Sequence validation, loss and interarrival jitter for one remote source, as in RFC 3550 A.1/A.3/A.8.

    Packet arrival times are given in RTP timestamp units (the payload's clock rate, any origin); the
    arrival of a sender report, for DLSR, in seconds.
    """

    __slots__ = (
        "_jitter_q4",
        "_last_sr",
        "_last_sr_arrival",
        "_transit",
        "bad_seq",
        "base_seq",
        "clock_rate",
        "cycles",
        "expected_prior",
        "max_seq",
        "probation",
        "received",
        "received_prior",
        "ssrc",
    )

    def __init__(self, ssrc: int, sequence_number: int, clock_rate: int = 8000) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        # A new source must deliver MIN_SEQUENTIAL packets in sequence before it counts (A.1).
        self._init_seq(sequence_number)
        self.max_seq = (sequence_number - 1) & 0xFFFF
        self.probation = MIN_SEQUENTIAL
        self._transit: int | None = None
        self._jitter_q4 = 0  # jitter scaled by 16, the integer form of A.8
        self._last_sr = 0
        self._last_sr_arrival: float | None = None

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1  # so seq == bad_seq is false
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def update(self, seq: int, timestamp: int, arrival: int, *, timed: bool = True) -> bool:
        """Account one packet; False if A.1 does not count it (probation, or a wild jump being confirmed).

        `arrival` is the arrival time in RTP timestamp units, any origin (A.8: "in the same units" as the
        timestamp). `timed` is False for packets whose RTP timestamp does not follow the sampling clock
        (RFC 4733 events keep the event's start timestamp), which would otherwise inflate the jitter.
        """
        if seq - self.max_seq == 1 and not self.probation:
            # The next packet in order, nearly every time: the same result as below, with less work. (The
            # wrap from 65535 to 0 takes the general path, which counts the cycle.)
            self.max_seq = seq
            self.received += 1
            if timed:
                # A.8 with the transit kept unreduced: the difference of two transits is congruent to the
                # RFC's modulo 2^32, and a small one is the same number without two 32-bit masks.
                transit = arrival - timestamp
                previous = self._transit
                if previous is not None:
                    d = transit - previous
                    if d < 0:
                        d = -d
                    if d >= 0x8000_0000:  # the timestamp wrapped: reduce as the RFC does
                        d = _wrapped_transit_delta(transit - previous)
                    jitter_q4 = self._jitter_q4
                    self._jitter_q4 = jitter_q4 + d - ((jitter_q4 + 8) >> 4)
                self._transit = transit
            return True
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    self._update_jitter(timestamp, arrival, timed)
                    return True
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += RTP_SEQ_MOD  # wrapped
            self.max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            if seq == self.bad_seq:
                # Two sequential packets after a very large jump: the source restarted its numbering.
                self._init_seq(seq)
                self._transit = None
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # Otherwise a duplicate or a reordered packet: counted as received, as the RFC does.
        self.received += 1
        self._update_jitter(timestamp, arrival, timed)
        return True

    def in_order_state(self) -> tuple[int, int, int] | None:
        """(sequence number expected next, transit, jitter * 16), when the next packet in order would take
        update()'s fast path and carry on an estimate; None otherwise (probation, no transit yet, or the
        sequence number is about to wrap, which the general path counts).

        With `account_in_order`, this lets a caller that checks each packet against the expected number
        itself run A.8 on its own for a stretch of in-order packets and count them in one go (the steady
        run of telephony.media).
        """
        if self.probation or self._transit is None or self.max_seq == 0xFFFF:
            return None
        return self.max_seq + 1, self._transit, self._jitter_q4

    def account_in_order(self, count: int, transit: int, jitter_q4: int) -> None:
        """As `count` calls of update() with timed packets that followed max_seq in order without a wrap,
        after which A.8 stood at `transit` and `jitter_q4` (see in_order_state)."""
        if count > 0:
            self.max_seq += count
            self.received += count
            self._transit = transit
            self._jitter_q4 = jitter_q4

    def _update_jitter(self, timestamp: int, arrival: int, timed: bool) -> None:
        if not timed:
            return
        transit = arrival - timestamp
        if self._transit is not None:
            d = _wrapped_transit_delta(transit - self._transit)
            self._jitter_q4 += d - ((self._jitter_q4 + 8) >> 4)
        self._transit = transit

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return 0 if self.probation else self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost (A.3), clamped to the 24-bit signed field of a report block."""
        return max(-(1 << 23), min((1 << 23) - 1, self.expected - self.received))

    @property
    def jitter(self) -> int:
        """Interarrival jitter in timestamp units, as carried in a report block."""
        return self._jitter_q4 >> 4

    @property
    def jitter_ms(self) -> float:
        return self._jitter_q4 / 16 * 1000 / self.clock_rate

    def note_sender_report(self, report: SenderReport, arrival: float) -> None:
        self._last_sr = ntp_middle(report.ntp_timestamp)
        self._last_sr_arrival = arrival

    def report_block(self, now: float) -> ReportBlock:
        """The block for our next SR/RR; advances the interval used for the fraction lost (A.3)."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        self.expected_prior = expected
        received_interval = self.received - self.received_prior
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self._last_sr_arrival is not None:
            dlsr = int((now - self._last_sr_arrival) * 65536) & 0xFFFF_FFFF
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=self.lost,
            highest_sequence=self.extended_max & 0xFFFF_FFFF,
            jitter=self.jitter & 0xFFFF_FFFF,
            last_sr=self._last_sr,
            delay_since_last_sr=dlsr,
        )


def round_trip_seconds(block: ReportBlock, arrival_ntp: int) -> float | None:
    """RTT from a report about our stream (section 6.4.1): arrival - LSR - DLSR; None without an SR echo."""
    if block.last_sr == 0:
        return None
    rtt = (ntp_middle(arrival_ntp) - block.last_sr - block.delay_since_last_sr) & 0xFFFF_FFFF
    if rtt & 0x8000_0000:  # clocks disagree or a stale report: not a meaningful RTT
        return None
    return rtt / 65536

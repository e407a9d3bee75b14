"""RTP/RTCP media for one call, paced by the shared media clock (telephony.media_io).

The `MediaClock` ticks every 20 ms at absolute deadlines (`loop.call_at(t0 + k * ptime)`), so pacing error
never accumulates, however long a tick's work takes. On every tick each `RtpStream` hands one frame from
its jitter buffer to the agent (so the agent's audio is paced by the same clock as ours, and bursts or gaps
on the network do not reach it) and sends exactly one packet: speech from its playout queue, silence so
the far end's jitter buffer and NAT stay fed, or an RFC 4733 digit. One timer (or a few phases) for all
calls costs a few wake-ups per 20 ms instead of one per call.

The receive path runs per datagram and the send path per tick for every call, so both avoid building
dataclasses: a plain PCMU packet is unpacked with one struct call, and the codec is the audioop function
itself (figures in bench/media.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import random
import select
import socket
import struct
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from telephony.codecs import G711Codec, codec_for
from telephony.jitter import Arrival, JitterBuffer, PlayoutPolicy
from telephony.media_io import MediaClock as MediaClock
from telephony.media_io import MediaSockets, MediaSocketTransport, Protocol_
from telephony.rtcp import (
    SDES_CNAME,
    Goodbye,
    ReceiverReport,
    ReceptionStats,
    RtcpError,
    RtcpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    build_compound,
    ntp_timestamp,
    parse_compound,
    round_trip_seconds,
)
from telephony.rtp import RtpError, RtpPacket, RtpSender, TelephoneEvent, is_rtcp

if sys.version_info < (3, 13):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
else:  # pragma: no cover - exercised on 3.13+ only
    import audioop

log = logging.getLogger(__name__)

FRAME_MS = 20
FRAME_S = FRAME_MS / 1000
SAMPLES_PER_FRAME = 160  # 8 kHz * 20 ms
PCM_FRAME_BYTES = SAMPLES_PER_FRAME * 2
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
DTMF_END_REPEATS = 3  # RFC 4733 section 2.5.1.4: the end packet is sent three times
RTCP_INTERVAL_TICKS = 250  # 5 s, the RFC 3550 section 6.2 minimum, randomised by 0.5-1.5 per report

AudioSink = Callable[[bytes], None]  # receives one 20 ms PCM16 frame
DtmfSink = Callable[[str], None]

_SEQ_TS_SSRC = struct.Struct("!HII")
_monotonic = time.monotonic
# One CNAME per process (RFC 3550 section 6.5.1: it names the endpoint, not the stream).
_CNAME = f"switchboard-{os.getpid()}-{random.getrandbits(32):08x}@{socket.gethostname()}".encode()[:255]


class DtmfUnavailable(Exception):
    """send_dtmf() on a call whose SDP did not negotiate telephone-event (use SIP INFO instead)."""


@dataclass(slots=True)
class MediaStats:
    packets_sent: int = 0
    packets_received: int = 0
    packets_malformed: int = 0
    packets_ignored: int = 0  # wrong payload type, duplicates, late
    speech_frames_sent: int = 0
    rtcp_sent: int = 0
    rtcp_received: int = 0
    rtcp_malformed: int = 0


@dataclass(frozen=True, slots=True)
class MediaReport:
    """One call's media quality, for logs and call records."""

    packets_sent: int
    packets_received: int
    lost: int  # RFC 3550 A.3 cumulative loss of the current remote source
    jitter_ms: float  # RFC 3550 A.8 interarrival jitter
    late: int  # arrived after their playout time
    duplicates: int
    concealed: int  # 20 ms frames made up for missing packets
    discarded: int  # held packets dropped to bring delay back to the target
    malformed: int
    playout_delay_ms: int  # the jitter buffer's current target
    round_trip_ms: float | None  # from the far end's last report about us (LSR/DLSR)
    remote_lost: int | None  # what the far end reports about our stream
    remote_jitter_ms: float | None
    rtcp_sent: int
    rtcp_received: int


@dataclass(slots=True)
class _OutgoingEvent:
    code: int
    start: int  # RTP timestamp of the event's first packet, carried by all its packets
    total: int  # samples
    elapsed: int = 0
    end_packets_sent: int = 0


class RtpStream(asyncio.DatagramProtocol):
    """Symmetric RTP for one call: G.711 in and out, RFC 4733 digits both ways, RTCP, paced playout."""

    def __init__(
        self,
        clock: MediaClock,
        *,
        codec: str,
        payload_type: int,
        telephone_event_pt: int | None,
        remote: tuple[str, int],
        on_audio: AudioSink,
        on_dtmf: DtmfSink | None = None,
        playout: PlayoutPolicy | None = None,
    ) -> None:
        self._clock = clock
        self._codec: G711Codec = codec_for(codec)
        # The audioop functions themselves, called with the sample width: one C call per frame.
        pcmu = self._codec.name == "PCMU"
        self._decode = audioop.ulaw2lin if pcmu else audioop.alaw2lin
        self._encode = audioop.lin2ulaw if pcmu else audioop.lin2alaw
        self._payload_type = payload_type
        self._telephone_event_pt = telephone_event_pt
        self._remote = remote
        self._rtcp_remote = (remote[0], remote[1] + 1)
        self._on_audio = on_audio
        self._on_dtmf = on_dtmf
        self._sender = RtpSender(payload_type, ssrc=random.getrandbits(32))
        self._silence = self._codec.encode(bytes(PCM_FRAME_BYTES))
        self._silence_pcm = bytes(PCM_FRAME_BYTES)
        self._playout: collections.deque[bytes] = collections.deque()
        self._jitter = JitterBuffer(playout)
        self._reception: ReceptionStats | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._rtcp_transport: asyncio.DatagramTransport | None = None
        self._latched = False
        self._rtcp_latched = False
        self._last_event_ts: int | None = None
        self._drained: asyncio.Event | None = None
        self._talkspurt_start = True
        self._resume_marker = False
        self.direction = "sendrecv"
        self._direction_sends = True
        self._peer_sends = True
        self._dtmf_queue: collections.deque[tuple[int, int]] = collections.deque()  # (event, samples)
        self._event: _OutgoingEvent | None = None
        self._closing = False
        self._quiet_ticks = 0
        self._timeout_fired = False
        self._rtcp_countdown = random.randint(RTCP_INTERVAL_TICKS // 4, RTCP_INTERVAL_TICKS * 3 // 4)
        self._sent_since_report = False
        self._remote_report: tuple[int, float] | None = None  # (cumulative lost, jitter ms) about us
        self._round_trip: float | None = None
        self.remote_bye = False  # the far end sent RTCP BYE
        self.sending = True  # cleared by the UA until the call is answered
        self.stats = MediaStats()
        self.frames_played = 0  # speech frames actually put on the wire (what the caller can have heard)
        # Called after each speech frame goes out, with the running count: lets a test caller time its own
        # speech to the packet, not to when it queued the audio.
        self.on_speech_sent: Callable[[int], None] | None = None
        self.rtp_timeout_s: float | None = None  # no RTP for this long while the peer should send ...
        self.on_timeout: Callable[[], None] | None = None  # ... calls this once (the UA sends BYE)

    # --- where media goes ---------------------------------------------------------------------------
    @property
    def remote(self) -> tuple[str, int]:
        return self._remote

    @remote.setter
    def remote(self, addr: tuple[str, int]) -> None:
        self._remote = addr
        self._rtcp_remote = (addr[0], addr[1] + 1)

    def update_remote(self, addr: tuple[str, int]) -> None:
        """A re-INVITE moved the peer's media: send there, and latch again to where it really comes from."""
        self.remote = addr
        self._latched = False
        self._rtcp_latched = False
        self._quiet_ticks = 0

    def set_direction(self, direction: str) -> None:
        """Our direction after offer/answer (RFC 3264 section 6.1); on hold we stop sending, not ticking."""
        if direction not in DIRECTIONS:
            raise ValueError(f"not an SDP direction: {direction!r}")
        self.direction = direction
        self._direction_sends = direction in ("sendrecv", "sendonly")
        self._peer_sends = direction in ("sendrecv", "recvonly")
        self._quiet_ticks = 0
        self._timeout_fired = False

    # --- asyncio.DatagramProtocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport, but has its interface.
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._clock.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._clock.discard(self)
        self._transport = None
        if self._rtcp_transport is not None:
            self._rtcp_transport.close()
            self._rtcp_transport = None
        if self._drained is not None:
            self._drained.set()

    def attach_rtcp(self, transport: asyncio.DatagramTransport) -> None:
        self._rtcp_transport = transport

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP socket error: %s", exc)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 12 and data[0] == 0x80:
            # The usual packet: version 2, no padding, extension or CSRC.
            second = data[1]
            payload_type = second & 0x7F
            marker = second > 0x7F
            seq, timestamp, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
            payload = data[12:]
            if 192 <= second <= 223:  # RFC 5761 rtcp-mux: SR/RR/SDES/BYE on the RTP port
                self.rtcp_received(data, addr)
                return
        elif is_rtcp(data):
            self.rtcp_received(data, addr)
            return
        else:
            try:
                packet = RtpPacket.parse(data)
            except RtpError:
                self.stats.packets_malformed += 1
                return
            payload_type, marker, seq = packet.payload_type, packet.marker, packet.sequence_number
            timestamp, ssrc, payload = packet.timestamp, packet.ssrc, packet.payload
        self.stats.packets_received += 1
        self._quiet_ticks = 0
        if not self._latched:
            # Symmetric RTP (RFC 4961): answer where the media really comes from, which is what crosses NAT.
            self._latched = True
            if addr != self._remote:
                self._remote = addr
                if not self._rtcp_latched:
                    self._rtcp_remote = (addr[0], addr[1] + 1)
        reception = self._reception
        if reception is None or reception.ssrc != ssrc:
            reception = self._reception = ReceptionStats(ssrc, seq)
        if payload_type == self._payload_type:
            reception.update(seq, timestamp, _monotonic())
            arrival = self._jitter.push(seq, ssrc, marker, self._decode(payload, 2))
            if arrival is Arrival.DUPLICATE or arrival is Arrival.LATE:
                self.stats.packets_ignored += 1
        elif payload_type == self._telephone_event_pt and payload_type is not None:
            reception.update(seq, timestamp, _monotonic(), timed=False)
            # The digit's time is silence in the audio (the caller's phone mutes voice while it signals).
            self._jitter.push(seq, ssrc, marker, self._silence_pcm)
            self._handle_event(payload, timestamp)
        else:
            self.stats.packets_ignored += 1

    def _handle_event(self, payload: bytes, timestamp: int) -> None:
        try:
            event = TelephoneEvent.parse(payload)
        except RtpError:
            self.stats.packets_malformed += 1
            return
        # RFC 4733: one event = one RTP timestamp; the end packet is sent three times.
        if event.end and timestamp != self._last_event_ts:
            self._last_event_ts = timestamp
            if self._on_dtmf is not None and event.digit:
                self._on_dtmf(event.digit)

    # --- RTCP ---------------------------------------------------------------------------------------
    def rtcp_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            packets = parse_compound(data)
        except RtcpError as exc:
            self.stats.rtcp_malformed += 1
            log.debug("malformed RTCP from %s: %s", addr, exc)
            return
        self.stats.rtcp_received += 1
        if not self._rtcp_latched:
            self._rtcp_latched = True
            self._rtcp_remote = addr
        arrival_ntp = ntp_timestamp(time.time())
        for packet in packets:
            if isinstance(packet, SenderReport | ReceiverReport):
                if (
                    isinstance(packet, SenderReport)
                    and self._reception is not None
                    and packet.ssrc == self._reception.ssrc
                ):
                    self._reception.note_sender_report(packet, _monotonic())
                for block in packet.reports:
                    if block.ssrc == self._sender.ssrc:
                        self._remote_report = (block.packets_lost, block.jitter * 1000 / 8000)
                        rtt = round_trip_seconds(block, arrival_ntp)
                        if rtt is not None:
                            self._round_trip = rtt
            elif isinstance(packet, Goodbye) and (
                self._reception is None or self._reception.ssrc in packet.sources
            ):
                self.remote_bye = True

    def _rtcp_compound(self, bye: bool = False) -> bytes:
        now = _monotonic()
        reports = () if self._reception is None else (self._reception.report_block(now),)
        first: RtcpPacket
        if self._sent_since_report:
            sender = self._sender
            first = SenderReport(
                ssrc=sender.ssrc,
                ntp_timestamp=ntp_timestamp(time.time()),
                # The packet sent on this tick carried the sampling instant of "now".
                rtp_timestamp=(sender.timestamp - SAMPLES_PER_FRAME) & 0xFFFFFFFF,
                packet_count=sender.packets_sent & 0xFFFFFFFF,
                octet_count=sender.octets_sent & 0xFFFFFFFF,
                reports=reports,
            )
        else:
            first = ReceiverReport(self._sender.ssrc, reports)
        cname = SdesChunk(self._sender.ssrc, ((SDES_CNAME, _CNAME),))
        packets: list[RtcpPacket] = [first, SourceDescription((cname,))]
        if bye:
            packets.append(Goodbye((self._sender.ssrc,)))
        self._sent_since_report = False
        return build_compound(packets)

    def send_rtcp_report(self) -> None:
        """Send an SR (or RR) now instead of at the next randomised interval, e.g. just before hanging up."""
        self._send_rtcp()

    def _send_rtcp(self, bye: bool = False) -> None:
        if self._rtcp_transport is None:
            return
        self._rtcp_transport.sendto(self._rtcp_compound(bye), self._rtcp_remote)
        self.stats.rtcp_sent += 1

    # --- playout ------------------------------------------------------------------------------------
    def play(self, pcm16: bytes) -> None:
        """Queue PCM16 8 kHz audio; it goes out one 20 ms frame per media-clock tick."""
        if len(pcm16) % PCM_FRAME_BYTES:
            pcm16 += bytes(PCM_FRAME_BYTES - len(pcm16) % PCM_FRAME_BYTES)
        for start in range(0, len(pcm16), PCM_FRAME_BYTES):
            self._playout.append(pcm16[start : start + PCM_FRAME_BYTES])
        if self._drained is not None:
            self._drained.clear()

    def flush(self) -> int:
        """Drop everything not yet sent (barge-in); returns the number of frames dropped."""
        dropped = len(self._playout)
        self._playout.clear()
        self._talkspurt_start = True
        if self._drained is not None:
            self._drained.set()
        return dropped

    @property
    def queued_frames(self) -> int:
        return len(self._playout)

    async def wait_drained(self) -> None:
        if not self._playout:
            return
        if self._drained is None:
            self._drained = asyncio.Event()
        self._drained.clear()
        await self._drained.wait()

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """Queue an RFC 4733 digit; while it plays, it replaces audio on the wire (no interleaving)."""
        if self._telephone_event_pt is None:
            raise DtmfUnavailable("telephone-event was not negotiated for this call")
        if not 40 <= duration_ms <= 8000:  # the duration field holds at most 65535 samples
            raise ValueError(f"DTMF duration {duration_ms} ms outside 40-8000 ms")
        event = TelephoneEvent.for_digit(digit).event
        self._dtmf_queue.append((event, duration_ms * 8))

    def on_tick(self, frames: int = 1) -> None:
        if frames > 1:
            self._catch_up(frames - 1)
        frame = self._jitter.pop()
        if frame is not None:
            self._on_audio(frame)
        if self.rtp_timeout_s is not None and self._peer_sends and self.sending:
            self._quiet_ticks += frames
            if not self._timeout_fired and self._quiet_ticks * FRAME_S >= self.rtp_timeout_s:
                self._timeout_fired = True
                if self.on_timeout is not None:
                    self.on_timeout()
        transport = self._transport
        if transport is None:
            return
        self._rtcp_countdown -= frames
        if self._rtcp_countdown <= 0:
            self._rtcp_countdown = random.randint(RTCP_INTERVAL_TICKS // 2, RTCP_INTERVAL_TICKS * 3 // 2)
            self._send_rtcp()
        if not (self.sending and self._direction_sends):
            # RFC 3550 section 5.1: the timestamp keeps following real time while we are silent (hold), so
            # the far end can place the next packet; its marker bit says a new talkspurt starts.
            self._sender.skip(SAMPLES_PER_FRAME * frames)
            self._resume_marker = True
            return
        if self._event is not None or self._dtmf_queue:
            data = self._next_event_packet()
        elif self._playout:
            payload = self._encode(self._playout.popleft(), 2)
            marker = self._talkspurt_start or self._resume_marker
            self._talkspurt_start = self._resume_marker = False
            data = self._sender.packet_bytes(payload, SAMPLES_PER_FRAME, marker)
            transport.sendto(data, self._remote)
            self.stats.packets_sent += 1
            self._sent_since_report = True
            self.stats.speech_frames_sent += 1
            self.frames_played += 1
            if self.on_speech_sent is not None:
                self.on_speech_sent(self.frames_played)
            if not self._playout and self._drained is not None:
                self._drained.set()
            return
        else:
            marker = self._resume_marker
            self._resume_marker = False
            self._talkspurt_start = True
            data = self._sender.packet_bytes(self._silence, SAMPLES_PER_FRAME, marker)
        transport.sendto(data, self._remote)
        self.stats.packets_sent += 1
        self._sent_since_report = True

    def _catch_up(self, frames: int) -> None:
        # The clock was late: what arrived meanwhile goes to the agent now instead of being trimmed later
        # as excess delay (the agent consumes frames, it does not play them in real time). The loop runs
        # timers before reading sockets, so read what is waiting first.
        # In steps smaller than the jitter buffer's cap, or a long hold-up would be trimmed as a burst.
        reader = self._transport if isinstance(self._transport, MediaSocketTransport) else None
        while frames > 0:
            step = min(frames, 8)
            frames -= step
            if reader is not None:
                reader.read_pending(step)
            for _ in range(step):
                frame = self._jitter.pop()
                if frame is not None:
                    self._on_audio(frame)

    def _next_event_packet(self) -> bytes:
        assert self._telephone_event_pt is not None
        sender = self._sender
        marker = False
        event = self._event
        if event is None:
            code, total = self._dtmf_queue.popleft()
            event = self._event = _OutgoingEvent(code, sender.timestamp, total)
            marker = True  # RFC 4733 section 2.5.1.2: the first packet of an event
        # Each packet carries the duration so far; the last one, with the end bit, the whole duration.
        event.elapsed = min(event.elapsed + SAMPLES_PER_FRAME, event.total)
        end = event.elapsed >= event.total
        if end:
            event.end_packets_sent += 1
            if event.end_packets_sent >= DTMF_END_REPEATS:
                self._event = None
        payload = bytes(TelephoneEvent(event.code, end, 10, event.elapsed))
        data = sender.event_packet_bytes(
            self._telephone_event_pt, event.start, payload, marker or self._resume_marker
        )
        self._resume_marker = False
        sender.skip(SAMPLES_PER_FRAME)
        return data

    def report(self) -> MediaReport:
        reception = self._reception
        jitter = self._jitter
        remote = self._remote_report
        return MediaReport(
            packets_sent=self.stats.packets_sent,
            packets_received=self.stats.packets_received,
            lost=reception.lost if reception is not None else 0,
            jitter_ms=round(reception.jitter_ms, 3) if reception is not None else 0.0,
            late=jitter.late,
            duplicates=jitter.duplicates,
            concealed=jitter.concealed,
            discarded=jitter.discarded,
            malformed=self.stats.packets_malformed,
            playout_delay_ms=jitter.target * FRAME_MS,
            round_trip_ms=None if self._round_trip is None else round(self._round_trip * 1000, 3),
            remote_lost=None if remote is None else remote[0],
            remote_jitter_ms=None if remote is None else remote[1],
            rtcp_sent=self.stats.rtcp_sent,
            rtcp_received=self.stats.rtcp_received,
        )

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.stats.packets_received or self.stats.packets_sent:
            log.info("media closed: %s", self.report())
        if self._transport is not None:
            with contextlib.suppress(OSError):
                self._send_rtcp(bye=True)  # RFC 3550 section 6.6: say we are leaving
            self._transport.close()
        elif self._rtcp_transport is not None:
            self._rtcp_transport.close()
            self._rtcp_transport = None


class RtcpEndpoint(asyncio.DatagramProtocol):
    """The RTCP socket (RTP port + 1) of one stream."""

    def __init__(self, stream: RtpStream) -> None:
        self._stream = stream

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._stream.rtcp_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("RTCP socket error: %s", exc)


class RtpPortPool:
    """Hands out even UDP ports for RTP with the odd port above for RTCP, from a configured range.

    On Linux the sockets are read through one `MediaSockets` epoll set (`shared_reader`); elsewhere, or
    with `shared_reader=False`, each socket is an ordinary asyncio datagram endpoint.
    """

    def __init__(self, low: int, high: int, *, shared_reader: bool | None = None) -> None:
        if low >= high:
            raise ValueError(f"empty RTP port range {low}-{high}")
        self._low = low + (low % 2)
        self._high = high - 1  # highest RTP port that leaves room for its RTCP port
        if self._low > self._high:
            raise ValueError(f"RTP port range {low}-{high} has no even/odd pair")
        self._next = self._low
        self._shared_reader = hasattr(select, "epoll") if shared_reader is None else shared_reader
        self._sockets: MediaSockets | None = None

    async def open(
        self, host: str, factory: Callable[[], RtpStream]
    ) -> tuple[asyncio.DatagramTransport, RtpStream, int]:
        span = (self._high - self._low) // 2 + 1
        for _ in range(span):
            port = self._next
            self._next += 2
            if self._next > self._high:
                self._next = self._low
            try:
                transport, stream = await self._bind(host, port, factory)
            except OSError:
                continue
            try:
                rtcp_transport, _ = await self._bind(host, port + 1, functools.partial(RtcpEndpoint, stream))
            except OSError:
                transport.close()
                continue
            stream.attach_rtcp(rtcp_transport)
            return transport, stream, port
        raise OSError(f"no free RTP/RTCP port pair in {self._low}-{self._high + 1}")

    async def _bind(
        self, host: str, port: int, factory: Callable[[], Protocol_]
    ) -> tuple[asyncio.DatagramTransport, Protocol_]:
        loop = asyncio.get_running_loop()
        if not self._shared_reader:
            return await loop.create_datagram_endpoint(factory, local_addr=(host, port))
        if self._sockets is None or self._sockets.closed or self._sockets.loop is not loop:
            self._sockets = MediaSockets(loop)
        return self._sockets.bind(host, port, factory)

"""RTP/RTCP media for one call, paced by the shared media clock (telephony.media_io).

The `MediaClock` ticks every 20 ms at absolute deadlines (`loop.call_at(t0 + k * ptime)`), so pacing error
never accumulates, however long a tick's work takes. On every tick each `RtpStream` hands one frame from
its jitter buffer to the agent (so the agent's audio is paced by the same clock as ours, and bursts or gaps
on the network do not reach it) and sends exactly one packet: speech from its playout queue, silence so
the far end's jitter buffer and NAT stay fed, or an RFC 4733 digit. One timer (or a few phases) for all
calls costs a few wake-ups per 20 ms instead of one per call.

The receive path runs per datagram and the send path per tick for every call, a thousand calls on one
core (bench/media.py), so both are written for it. Once a stream has latched, the shared epoll reader
(telephony.media_io) reads each datagram into the stream's inbox with its arrival stamp and nothing else;
the tick takes it through the statistics and the jitter buffer just before it plays a frame, so each
call's state is touched once per tick. The jitter buffer holds payloads and the frame is decoded as it is
played; speech is encoded when it is queued. A plain PCMU packet is unpacked with one struct call and never
becomes a dataclass, and the stream has slots (more than 30 attributes would make its __dict__ a hash
table). While a call does nothing but audio in and audio out, its ticks are steady runs
(telephony.media_run), which do the jitter buffer's, the statistics' and the sender's counting themselves.
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
from typing import Any, cast

from telephony.codecs import G711Codec, codec_for
from telephony.jitter import Arrival, JitterBuffer, PlayoutPolicy
from telephony.media_io import FRAME_S as FRAME_S
from telephony.media_io import SAMPLES_PER_FRAME as SAMPLES_PER_FRAME
from telephony.media_io import MediaClock as MediaClock
from telephony.media_io import MediaSockets, MediaSocketTransport, Protocol_, arrival_stamp
from telephony.media_run import SteadyRun
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
PCM_FRAME_BYTES = SAMPLES_PER_FRAME * 2
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
DTMF_END_REPEATS = 3  # RFC 4733 section 2.5.1.4: the end packet is sent three times
RTCP_INTERVAL_TICKS = 250  # 5 s, the RFC 3550 section 6.2 minimum, randomised by 0.5-1.5 per report

AudioSink = Callable[[bytes], None]  # receives one 20 ms PCM16 frame
DtmfSink = Callable[[str], None]

_unpack_seq_ts_ssrc = struct.Struct("!HII").unpack_from
_monotonic = time.monotonic
_write = os.write
# One CNAME per process (RFC 3550 section 6.5.1: it names the endpoint, not the stream).
_CNAME = f"switchboard-{os.getpid()}-{random.getrandbits(32):08x}@{socket.gethostname()}".encode()[:255]


_DUPLICATE, _LATE = Arrival.DUPLICATE, Arrival.LATE


@functools.lru_cache(maxsize=64)
def _frame_splitter(frames: int) -> struct.Struct:
    """Cuts `frames` payloads of 20 ms out of a chunk in one C call (a slice per frame costs 4x more)."""
    return struct.Struct(f"{SAMPLES_PER_FRAME}s" * frames)


def _not_connected(data: bytes, addr: tuple[str, int]) -> None:
    """The send path before connection_made and after the socket closed: there is nothing to send on."""


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


class RtpStream(SteadyRun, asyncio.DatagramProtocol):
    """Symmetric RTP for one call: G.711 in and out, RFC 4733 digits both ways, RTCP, paced playout."""

    # Slots, because with more than 30 attributes an instance's __dict__ is a full hash table (1.5 KB) read
    # all over on every packet; a thousand calls then miss the CPU caches much more. __dict__ stays for
    # whatever a test or benchmark hangs on one stream (e.g. wrapping datagram_received).
    __slots__ = (
        "__dict__",
        "_ahead",
        "_clock",
        "_closing",
        "_codec",
        "_connected",
        "_decode",
        "_direction_sends",
        "_drained",
        "_dtmf_queue",
        "_event",
        "_fd",
        "_inbox",
        "_jitter",
        "_last_event_ts",
        "_latched",
        "_on_audio",
        "_on_dtmf",
        "_payload_type",
        "_peer_sends",
        "_playout",
        "_quiet_ticks",
        "_reading_inbox",
        "_reception",
        "_remote",
        "_remote_report",
        "_resume_marker",
        "_round_trip",
        "_rtcp_countdown",
        "_rtcp_latched",
        "_rtcp_remote",
        "_rtcp_transport",
        "_rtp_timeout_s",
        "_send_failed",
        "_sender",
        "_sending",
        "_sendto",
        "_sent_at_report",
        "_silence",
        "_sock",
        "_stats",
        "_talkspurt_start",
        "_telephone_event_pt",
        "_timeout_fired",
        "_transport",
        "direction",
        "frames_played",
        "on_speech_sent",
        "on_timeout",
        "remote_bye",
    )

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
        # The audioop function itself, called with the sample width: one C call per packet.
        self._decode = audioop.ulaw2lin if self._codec.name == "PCMU" else audioop.alaw2lin
        self._payload_type = payload_type
        self._telephone_event_pt = telephone_event_pt
        self._remote = remote
        self._rtcp_remote = (remote[0], remote[1] + 1)
        self._on_audio = on_audio
        self._on_dtmf = on_dtmf
        self._sender = RtpSender(payload_type, ssrc=random.getrandbits(32))
        self._silence = self._codec.encode(bytes(PCM_FRAME_BYTES))
        self._playout: collections.deque[bytes] = collections.deque()
        # The buffer holds payloads, decoded as each frame is played (see telephony.jitter).
        self._jitter = JitterBuffer(playout, frame_bytes=SAMPLES_PER_FRAME, codec=self._codec)
        self._reception: ReceptionStats | None = None
        self._transport: asyncio.DatagramTransport | None = None
        # The socket itself on the shared epoll reader (sent on by each tick, written to by its fd once
        # connected), or else the transport's sendto. Not bound methods: one object fewer per packet.
        self._sock: socket.socket | None = None
        self._fd = -1
        self._connected = False  # the socket is connected to the remote address (see _latch)
        self._sendto: Callable[[bytes, tuple[str, int]], object] = _not_connected
        self._send_failed: Callable[[OSError], None] = self.error_received
        # Datagrams read since the last tick, each followed by its arrival stamp: bytes, int, bytes, ...
        # (no tuple per packet, which would also bring the garbage collector round more often). The epoll
        # reader appends to this very list once latched, so it is emptied, never replaced.
        self._inbox: list[Any] = []
        self._reading_inbox = False  # the epoll reader reads the socket into the inbox (see _latch)
        self._rtcp_transport: asyncio.DatagramTransport | None = None
        self._latched = False
        self._rtcp_latched = False
        self._last_event_ts: int | None = None
        self._drained: asyncio.Event | None = None
        self._talkspurt_start = True
        self._resume_marker = False
        self._ahead = False  # this talkspurt went out a tick early (see `_send_ahead`)
        self.direction = "sendrecv"
        self._direction_sends = True
        self._peer_sends = True
        self._dtmf_queue: collections.deque[tuple[int, int]] = collections.deque()  # (event, samples)
        self._event: _OutgoingEvent | None = None
        self._closing = False
        self._quiet_ticks = 0
        self._timeout_fired = False
        self._rtcp_countdown = random.randint(RTCP_INTERVAL_TICKS // 4, RTCP_INTERVAL_TICKS * 3 // 4)
        self._sent_at_report = 0  # the sender's packet count at our last RTCP report
        self._remote_report: tuple[int, float] | None = None  # (cumulative lost, jitter ms) about us
        self._round_trip: float | None = None
        self.remote_bye = False  # the far end sent RTCP BYE
        self._sending = True  # cleared by the UA until the call is answered (see `sending`)
        self._stats = MediaStats()
        self.frames_played = 0  # speech frames actually put on the wire (what the caller can have heard)
        # Called after each speech frame goes out, with the running count: lets a test caller time its own
        # speech to the packet, not to when it queued the audio.
        self.on_speech_sent: Callable[[int], None] | None = None
        self._rtp_timeout_s: float | None = None  # see `rtp_timeout_s`
        self.on_timeout: Callable[[], None] | None = None  # called once at the RTP timeout (the UA sends BYE)
        self._init_run(payload_type)

    @property
    def sending(self) -> bool:
        """Whether ticks send (the UA clears it until the call is answered)."""
        return self._sending

    @sending.setter
    def sending(self, sending: bool) -> None:
        if self._run_end:
            self._end_run()
        self._sending = sending

    @property
    def rtp_timeout_s(self) -> float | None:
        """No RTP for this long while the peer should send calls `on_timeout`, once; None: never."""
        return self._rtp_timeout_s

    @rtp_timeout_s.setter
    def rtp_timeout_s(self, seconds: float | None) -> None:
        if self._run_end:
            self._end_run()
        self._rtp_timeout_s = seconds

    @property
    def stats(self) -> MediaStats:
        """The counters so far. The per-tick ones are kept by the sender and copied in here when asked:
        every RTP packet built is sent, and every speech frame sent is one played."""
        if self._run_end:
            self._end_run()
        stats = self._stats
        stats.packets_sent = self._sender.packets_sent
        stats.speech_frames_sent = self.frames_played
        return stats

    # --- where media goes ---------------------------------------------------------------------------
    @property
    def remote(self) -> tuple[str, int]:
        return self._remote

    @remote.setter
    def remote(self, addr: tuple[str, int]) -> None:
        self._unconnect()
        self._remote = addr
        self._rtcp_remote = (addr[0], addr[1] + 1)

    def _unconnect(self) -> None:
        if self._connected:
            self._connected = False
            self._fd = -1
            if isinstance(self._transport, MediaSocketTransport):
                with contextlib.suppress(OSError):  # closed meanwhile: nothing left to undo
                    self._transport.disconnect_peer()

    def update_remote(self, addr: tuple[str, int]) -> None:
        """A re-INVITE moved the peer's media: send there, and latch again to where it really comes from."""
        if self._run_end:
            self._end_run()
        if self._inbox:
            self._take_inbox()  # what came before the move, attributed to the source it came from
        self.remote = addr
        if self._reading_inbox and isinstance(self._transport, MediaSocketTransport):
            self._transport.set_inbox(None)  # source addresses matter again until the next latch
        self._reading_inbox = False
        self._latched = False
        self._rtcp_latched = False
        self._quiet_ticks = 0

    def set_direction(self, direction: str) -> None:
        """Our direction after offer/answer (RFC 3264 section 6.1); on hold we stop sending, not ticking."""
        if direction not in DIRECTIONS:
            raise ValueError(f"not an SDP direction: {direction!r}")
        if self._run_end:
            self._end_run()
        self.direction = direction
        self._direction_sends = direction in ("sendrecv", "sendonly")
        self._peer_sends = direction in ("sendrecv", "recvonly")
        self._quiet_ticks = 0
        self._timeout_fired = False

    # --- asyncio.DatagramProtocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport, but has its interface.
        self._transport = cast(asyncio.DatagramTransport, transport)
        if isinstance(transport, MediaSocketTransport):
            self._sock = transport.get_extra_info("socket")
            self._send_failed = transport.send_failed
        else:
            self._sendto = self._transport.sendto
        self._clock.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._run_end:
            self._end_run()
        self._clock.discard(self)
        self._transport = None
        self._sock = None
        self._connected = False
        self._fd = -1
        self._sendto = _not_connected
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
        self._packet_received(data, addr, arrival_stamp())

    def _packet_received(self, data: bytes, addr: tuple[str, int], arrival: int) -> None:
        """One datagram, arrived at `arrival` (an arrival stamp: telephony.media_io.ARRIVAL_RATE)."""
        if len(data) >= 12 and data[0] == 0x80:
            # The usual packet: version 2, no padding, extension or CSRC.
            second = data[1]
            if 192 <= second <= 223:  # RFC 5761 rtcp-mux: SR/RR/SDES/BYE on the RTP port
                self.rtcp_received(data, addr)
                return
            seq, timestamp, ssrc = _unpack_seq_ts_ssrc(data, 2)
            payload_type, marker, payload = second & 0x7F, second > 0x7F, data[12:]
        elif is_rtcp(data):
            self.rtcp_received(data, addr)
            return
        else:
            try:
                packet = RtpPacket.parse(data)
            except RtpError:
                self._stats.packets_malformed += 1
                return
            payload_type, marker, seq = packet.payload_type, packet.marker, packet.sequence_number
            timestamp, ssrc, payload = packet.timestamp, packet.ssrc, packet.payload
        if not self._latched:
            self._latch(addr)
        self._stats.packets_received += 1
        self._quiet_ticks = 0
        reception = self._reception
        if reception is None or reception.ssrc != ssrc:
            reception = self._reception = ReceptionStats(ssrc, seq)
        if payload_type == self._payload_type:
            reception.update(seq, timestamp, arrival)
            result = self._jitter.push(seq, ssrc, marker, payload)
            if result is _DUPLICATE or result is _LATE:
                self._stats.packets_ignored += 1
        elif payload_type == self._telephone_event_pt and payload_type is not None:
            reception.update(seq, timestamp, arrival, timed=False)
            # The digit's time is silence in the audio (the caller's phone mutes voice while it signals).
            self._jitter.push(seq, ssrc, marker, self._silence)
            self._handle_event(payload, timestamp)
        else:
            self._stats.packets_ignored += 1

    def _latch(self, addr: tuple[str, int]) -> None:
        """Symmetric RTP (RFC 4961): answer where the media really comes from, which is what crosses NAT.

        On the shared epoll reader the socket is then read into the stream's inbox, without source
        addresses. When the media comes from exactly where the SDP said, the socket is also connected
        there: the kernel then routes each packet without a lookup and drops datagrams from anywhere
        else, which are not this call's media. Media from elsewhere (NAT) leaves the socket unconnected:
        a stray packet that happened to come first must not shut the real media out.
        """
        self._latched = True
        where_the_sdp_said = addr == self._remote
        if not where_the_sdp_said:
            self._remote = addr
            if not self._rtcp_latched:
                self._rtcp_remote = (addr[0], addr[1] + 1)
        transport = self._transport
        if self._sock is None or not isinstance(transport, MediaSocketTransport):
            return  # an asyncio endpoint: datagram_received per datagram, as before latching
        if where_the_sdp_said and not self._connected:
            try:
                transport.connect_peer(addr)
                self._connected = True
                self._fd = transport.fd
            except OSError as exc:
                log.debug("RTP socket not connected to %s: %s", addr, exc)
        # Each datagram now only goes into the inbox with its arrival stamp: the next tick takes it through
        # the statistics and the jitter buffer (`_take_inbox`) just before it pops a frame, so the call's
        # state is touched once per tick, not once on arrival and again, out of the CPU caches by then,
        # on the tick. The buffer sees the same pushes and pops in the same order as on arrival: nothing
        # else happens to it between two ticks.
        transport.set_inbox(self._inbox, self._inbox_full)
        self._reading_inbox = True

    def _inbox_full(self) -> None:
        # The clock no longer ticks this stream (its tick failed): work through what was read now.
        if self._run_end:
            self._end_run()
        self._take_inbox()

    def _take_inbox(self) -> None:
        """Account and buffer what the epoll reader queued, in arrival order."""
        inbox = self._inbox
        # A copy, emptied first: a callback below (a digit, say) may look at the stream or have the socket
        # read again, and what that adds belongs to the next round.
        items = inbox.copy()
        inbox.clear()
        pt = self._payload_type
        stats = self._stats
        jitter = self._jitter
        for i in range(0, len(items), 2):
            data = items[i]
            if len(data) <= 12 or data[0] != 0x80 or data[1] != pt:
                # Anything but our plain audio, attributed to the latched source: with rtcp-mux, RTCP
                # comes from the peer's RTP address, which is where we latched.
                self._packet_received(data, self._remote, items[i + 1])
                continue
            # _packet_received for our payload type without marker, CSRC, extension or padding: inline,
            # as this runs for every packet of every call.
            seq, timestamp, ssrc = _unpack_seq_ts_ssrc(data, 2)
            stats.packets_received += 1
            self._quiet_ticks = 0
            reception = self._reception
            if reception is None or reception.ssrc != ssrc:
                reception = self._reception = ReceptionStats(ssrc, seq)
            reception.update(seq, timestamp, items[i + 1])
            result = jitter.push(seq, ssrc, False, data[12:])
            if result is _DUPLICATE or result is _LATE:
                stats.packets_ignored += 1

    def _handle_event(self, payload: bytes, timestamp: int) -> None:
        try:
            event = TelephoneEvent.parse(payload)
        except RtpError:
            self._stats.packets_malformed += 1
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
            self._stats.rtcp_malformed += 1
            log.debug("malformed RTCP from %s: %s", addr, exc)
            return
        self._stats.rtcp_received += 1
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
        if self._run_end:
            self._end_run()
        now = _monotonic()
        reports = () if self._reception is None else (self._reception.report_block(now),)
        first: RtcpPacket
        if self._sender.packets_sent != self._sent_at_report:  # we sent since the last report
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
        self._sent_at_report = self._sender.packets_sent
        return build_compound(packets)

    def send_rtcp_report(self) -> None:
        """Send an SR (or RR) now instead of at the next randomised interval, e.g. just before hanging up."""
        self._send_rtcp()

    def _send_rtcp(self, bye: bool = False) -> None:
        if self._rtcp_transport is None:
            return
        self._rtcp_transport.sendto(self._rtcp_compound(bye), self._rtcp_remote)
        self._stats.rtcp_sent += 1

    # --- playout ------------------------------------------------------------------------------------
    def play(self, pcm16: bytes) -> None:
        """Queue PCM16 8 kHz audio; it goes out one 20 ms frame per media-clock tick (a talkspurt a tick
        early: `_send_ahead`).

        Encoded here, in one go for the whole chunk (G.711 is sample by sample, so this is the same as
        encoding frame by frame), so each tick only takes a ready payload.
        """
        if len(pcm16) % PCM_FRAME_BYTES:
            pcm16 += bytes(PCM_FRAME_BYTES - len(pcm16) % PCM_FRAME_BYTES)
        encoded = self._codec.encode(pcm16)
        starts = not self._playout
        self._playout.extend(_frame_splitter(len(encoded) // SAMPLES_PER_FRAME).unpack(encoded))
        if self._drained is not None:
            self._drained.clear()
        if starts and self._talkspurt_start:
            self._send_ahead()

    def _send_ahead(self) -> None:
        """A talkspurt's first packet goes out now, not at the next tick, and the rest of the talkspurt a
        tick early too; the first tick with nothing to say sends nothing, which brings the stream back.

        A reply is queued a few milliseconds after the tick that ended the caller's turn, so waiting for
        the next tick would add most of 20 ms to every turn. Sequence numbers and timestamps run on
        unbroken; to the far end the talkspurt's packets come a little earlier than the silence before
        them, never later than its first (a jitter buffer that starts playing at the marker does not run
        dry), and the pause after them is one packet short (only silence is left out).
        """
        if (
            self._ahead
            or self._closing
            or self._transport is None
            or not (self._sending and self._direction_sends)
            or self._event is not None
            or self._dtmf_queue
        ):
            return
        if self._run_end:
            self._end_run()
        self._ahead = True
        self._put_on_wire(self._speech_packet())

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
        if self._run_end:
            self._end_run()  # the next tick sends the digit
        self._dtmf_queue.append((event, duration_ms * 8))

    def _tick(self, frames: int) -> None:
        """The general tick: what came in through the jitter buffer, a frame out to the agent, a packet
        out; then a steady run starts if everything is steady (telephony.media_run)."""
        if self._inbox:
            self._take_inbox()
        if frames > 1:
            self._catch_up(frames - 1)
        frame = self._jitter.pop()
        if frame is not None:
            self._on_audio(self._decode(frame, 2))
        if self._rtp_timeout_s is not None and self._peer_sends and self._sending:
            self._quiet_ticks += frames
            if not self._timeout_fired and self._quiet_ticks * FRAME_S >= self._rtp_timeout_s:
                self._timeout_fired = True
                if self.on_timeout is not None:
                    self.on_timeout()
        if self._transport is None:
            return
        self._rtcp_countdown -= frames
        if self._rtcp_countdown <= 0:
            self._rtcp_countdown = random.randint(RTCP_INTERVAL_TICKS // 2, RTCP_INTERVAL_TICKS * 3 // 2)
            self._send_rtcp()
        if not (self._sending and self._direction_sends):
            # RFC 3550 section 5.1: the timestamp keeps following real time while we are silent (hold), so
            # the far end can place the next packet; its marker bit says a new talkspurt starts.
            self._sender.skip(SAMPLES_PER_FRAME * (frames - 1 if self._ahead else frames))
            self._ahead = False
            self._resume_marker = True
            return
        if self._event is not None or self._dtmf_queue:
            data = self._next_event_packet()
        elif self._playout:
            data = self._speech_packet()
        elif self._ahead:
            # The talkspurt went out a tick early (`_send_ahead`): this tick's silence is left out.
            self._ahead = False
            self._talkspurt_start = True
            data = b""
        else:
            marker = self._resume_marker
            self._resume_marker = False
            self._talkspurt_start = True
            data = self._sender.packet_bytes(self._silence, SAMPLES_PER_FRAME, marker)
        if data:
            self._put_on_wire(data)
        if frames == 1 and self._reading_inbox and not self._inbox:
            # Not after a late tick: the clock is likely late again next time, and a run would only end.
            self._start_run()

    def _speech_packet(self) -> bytes:
        """The next queued frame as a packet (marked if it starts a talkspurt), counted as played."""
        marker = self._talkspurt_start or self._resume_marker
        if marker:
            self._talkspurt_start = self._resume_marker = False
        data = self._sender.packet_bytes(self._playout.popleft(), SAMPLES_PER_FRAME, marker)
        self.frames_played += 1
        if self.on_speech_sent is not None:
            self.on_speech_sent(self.frames_played)
        if not self._playout and self._drained is not None:
            self._drained.set()
        return data

    def _put_on_wire(self, data: bytes) -> None:
        try:
            if self._connected:
                _write(self._fd, data)  # cheaper than the socket's send, to the same connected socket
            elif (sock := self._sock) is not None:
                sock.sendto(data, self._remote)
            else:
                self._sendto(data, self._remote)
        except OSError as exc:
            self._send_failed(exc)

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
                if self._inbox:
                    self._take_inbox()
            for _ in range(step):
                frame = self._jitter.pop()
                if frame is not None:
                    self._on_audio(self._decode(frame, 2))

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
        if self._run_end:
            self._end_run()
        if self._inbox:
            self._take_inbox()
        reception = self._reception
        jitter = self._jitter
        remote = self._remote_report
        return MediaReport(
            packets_sent=self._sender.packets_sent,
            packets_received=self._stats.packets_received,
            lost=reception.lost if reception is not None else 0,
            jitter_ms=round(reception.jitter_ms, 3) if reception is not None else 0.0,
            late=jitter.late,
            duplicates=jitter.duplicates,
            concealed=jitter.concealed,
            discarded=jitter.discarded,
            malformed=self._stats.packets_malformed,
            playout_delay_ms=jitter.target * FRAME_MS,
            round_trip_ms=None if self._round_trip is None else round(self._round_trip * 1000, 3),
            remote_lost=None if remote is None else remote[0],
            remote_jitter_ms=None if remote is None else remote[1],
            rtcp_sent=self._stats.rtcp_sent,
            rtcp_received=self._stats.rtcp_received,
        )

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._run_end:
            self._end_run()
        if self._stats.packets_received or self._sender.packets_sent:
            log.info("media closed: %s", self.report())
        if self._transport is not None:
            with contextlib.suppress(OSError):
                self._send_rtcp(bye=True)  # RFC 3550 section 6.6: say we are leaving
            # No tick between now and connection_lost (called soon) may send on the closed socket.
            self._clock.discard(self)
            self._sock = None
            self._connected = False
            self._fd = -1
            self._sendto = _not_connected
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

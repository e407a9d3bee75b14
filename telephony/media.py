"""RTP media for one call, paced by a shared media clock.

One `MediaClock` per process ticks every 20 ms at absolute deadlines (`loop.call_at(t0 + k * ptime)`), so
pacing error never accumulates, however long a tick's work takes; every active `RtpStream` sends exactly one
packet per tick (speech from its playout queue, or silence so the far end's jitter buffer and NAT stay fed).
A single timer for all calls costs one wake-up per 20 ms instead of one per call.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from telephony.codecs import G711Codec, codec_for
from telephony.rtp import RtpError, RtpPacket, RtpSender, TelephoneEvent

log = logging.getLogger(__name__)

FRAME_MS = 20
SAMPLES_PER_FRAME = 160  # 8 kHz * 20 ms
PCM_FRAME_BYTES = SAMPLES_PER_FRAME * 2

AudioSink = Callable[[bytes], None]  # receives one 20 ms PCM16 frame
DtmfSink = Callable[[str], None]


class MediaClock:
    """Drives every registered stream once per frame interval at absolute deadlines."""

    def __init__(self, interval: float = FRAME_MS / 1000) -> None:
        self._interval = interval
        self._streams: set[RtpStream] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next = 0.0
        self.late_ticks = 0

    def add(self, stream: RtpStream) -> None:
        self._streams.add(stream)
        if self._handle is None:
            self._loop = asyncio.get_running_loop()
            self._next = self._loop.time() + self._interval
            self._handle = self._loop.call_at(self._next, self._tick)

    def discard(self, stream: RtpStream) -> None:
        self._streams.discard(stream)
        if not self._streams and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        assert self._loop is not None
        for stream in tuple(self._streams):
            try:
                stream.on_tick()
            except Exception:  # one broken stream must not stop the clock for every other call
                log.exception("media tick failed for %s", stream)
                self._streams.discard(stream)
        now = self._loop.time()
        self._next += self._interval
        if self._next < now:
            # We fell behind by more than a frame (e.g. a paused process): skip the missed ticks instead of
            # bursting packets, which the far end would have to discard anyway.
            missed = int((now - self._next) / self._interval) + 1
            self.late_ticks += missed
            self._next += missed * self._interval
        self._handle = self._loop.call_at(self._next, self._tick) if self._streams else None


@dataclass(slots=True)
class MediaStats:
    packets_sent: int = 0
    packets_received: int = 0
    packets_malformed: int = 0
    packets_ignored: int = 0  # wrong payload type, duplicates, late
    speech_frames_sent: int = 0


class RtpStream(asyncio.DatagramProtocol):
    """Symmetric RTP for one call: G.711 in and out, RFC 4733 digits in, paced playout out."""

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
    ) -> None:
        self._clock = clock
        self._codec: G711Codec = codec_for(codec)
        self._payload_type = payload_type
        self._telephone_event_pt = telephone_event_pt
        self.remote = remote
        self._on_audio = on_audio
        self._on_dtmf = on_dtmf
        self._sender = RtpSender(payload_type, ssrc=random.getrandbits(32))
        self._silence = self._codec.encode(bytes(PCM_FRAME_BYTES))
        self._playout: collections.deque[bytes] = collections.deque()
        self._transport: asyncio.DatagramTransport | None = None
        self._latched = False
        self._last_seq: int | None = None
        self._last_event_ts: int | None = None
        self._drained: asyncio.Event | None = None
        self._talkspurt_start = True
        self.sending = True
        self.stats = MediaStats()
        self.frames_played = 0  # speech frames actually put on the wire (what the caller can have heard)
        # Called after each speech frame goes out, with the running count: lets a test caller time its own
        # speech to the packet, not to when it queued the audio.
        self.on_speech_sent: Callable[[int], None] | None = None

    # --- asyncio.DatagramProtocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport, but has its interface.
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._clock.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._clock.discard(self)
        self._transport = None
        if self._drained is not None:
            self._drained.set()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self.stats.packets_malformed += 1
            return
        self.stats.packets_received += 1
        if not self._latched and addr != self.remote:
            # Symmetric RTP (RFC 4961): answer where the media really comes from, which is what crosses NAT.
            self.remote = addr
        self._latched = True
        if packet.payload_type == self._telephone_event_pt:
            self._handle_event(packet)
            return
        if packet.payload_type != self._payload_type:
            self.stats.packets_ignored += 1
            return
        if self._last_seq is not None:
            delta = (packet.sequence_number - self._last_seq) & 0xFFFF
            if delta == 0 or delta > 0x8000:  # duplicate or late (reordered behind a newer packet)
                self.stats.packets_ignored += 1
                return
        self._last_seq = packet.sequence_number
        pcm = self._codec.decode(packet.payload)
        # Deliver in 20 ms frames whatever ptime the peer uses.
        for start in range(0, len(pcm) - PCM_FRAME_BYTES + 1, PCM_FRAME_BYTES):
            self._on_audio(pcm[start : start + PCM_FRAME_BYTES])

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP socket error: %s", exc)

    def _handle_event(self, packet: RtpPacket) -> None:
        try:
            event = TelephoneEvent.parse(packet.payload)
        except RtpError:
            self.stats.packets_malformed += 1
            return
        # RFC 4733: one event = one RTP timestamp; the end packet is sent three times.
        if event.end and packet.timestamp != self._last_event_ts:
            self._last_event_ts = packet.timestamp
            if self._on_dtmf is not None and event.digit:
                self._on_dtmf(event.digit)

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

    def on_tick(self) -> None:
        if self._transport is None or not self.sending:
            return
        if self._playout:
            payload = self._codec.encode(self._playout.popleft())
            marker = self._talkspurt_start
            self._talkspurt_start = False
            self.stats.speech_frames_sent += 1
            self.frames_played += 1
            speech = True
        else:
            payload = self._silence
            marker = False
            speech = False
            self._talkspurt_start = True
        packet = self._sender.packetize(payload, SAMPLES_PER_FRAME, marker=marker)
        self._transport.sendto(bytes(packet), self.remote)
        self.stats.packets_sent += 1
        if speech:
            if self.on_speech_sent is not None:
                self.on_speech_sent(self.frames_played)
            if not self._playout and self._drained is not None:
                self._drained.set()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class RtpPortPool:
    """Hands out even UDP ports (RTP convention; RTCP would take port + 1) from a configured range."""

    def __init__(self, low: int, high: int) -> None:
        if low >= high:
            raise ValueError(f"empty RTP port range {low}-{high}")
        self._low = low + (low % 2)
        self._high = high
        self._next = self._low

    async def open(
        self, host: str, factory: Callable[[], RtpStream]
    ) -> tuple[asyncio.DatagramTransport, RtpStream, int]:
        loop = asyncio.get_running_loop()
        span = (self._high - self._low) // 2 + 1
        for _ in range(span):
            port = self._next
            self._next += 2
            if self._next > self._high:
                self._next = self._low
            try:
                transport, protocol = await loop.create_datagram_endpoint(factory, local_addr=(host, port))
            except OSError:
                continue
            return transport, protocol, port
        raise OSError(f"no free RTP port in {self._low}-{self._high}")

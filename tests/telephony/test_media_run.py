"""The steady run of RtpStream (telephony/media.py) against the same stream without it.

Two streams get the same datagrams over loopback, read in the same epoll pass (so with the same arrival
stamps), and the same calls from the agent's side, tick by tick without the clock: one plays its steady
stretches through the run, the other ticks every packet through the jitter buffer, the RFC 3550 statistics
and the sender. What they hand the agent, what they put on the wire, and every counter and field of the
objects behind them must be the same after every tick.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from telephony.jitter import JitterBuffer, PlayoutPolicy
from telephony.media import MediaClock, RtcpEndpoint, RtpStream
from telephony.media_io import MediaSockets, MediaSocketTransport
from telephony.rtcp import ReceptionStats, SenderReport, parse_compound
from telephony.rtp import RtpPacket, RtpSender, TelephoneEvent

HOST = "127.0.0.1"
PCMU = 0


@dataclass
class Side:
    """One stream of the pair and everything it gave out."""

    stream: RtpStream
    port: int
    peer: socket.socket  # where it sends RTP
    rtcp_peer: socket.socket  # and RTCP
    heard: list[bytes] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)
    speech_sent: list[int] = field(default_factory=list)
    general_ticks: int = 0  # ticks that did not go through the steady run

    def sent(self) -> list[bytes]:
        return _drain(self.peer)

    def rtcp_sent(self) -> list[bytes]:
        return _drain(self.rtcp_peer)


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(2048))
        except BlockingIOError:
            return out


def _peer_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


def _open_side(sockets: MediaSockets, clock: MediaClock, source: socket.socket, runs: bool) -> Side:
    peer, rtcp_peer = _peer_socket(), _peer_socket()
    holder: list[Side] = []

    def factory() -> RtpStream:
        stream = RtpStream(
            clock,
            codec="PCMU",
            payload_type=PCMU,
            telephone_event_pt=101,
            # The SDP names the traffic source, so the stream latches there and connects its socket.
            remote=source.getsockname(),
            on_audio=lambda frame: holder[0].heard.append(frame),
            on_dtmf=lambda digit: holder[0].digits.append(digit),
        )
        if not runs:
            stream._start_run = lambda: None  # type: ignore[method-assign]
        return stream

    transport, stream = sockets.bind(HOST, 0, factory)
    rtcp_transport, _ = sockets.bind(HOST, 0, lambda: RtcpEndpoint(stream))
    stream.attach_rtcp(rtcp_transport)
    side = Side(stream, transport.get_extra_info("sockname")[1], peer, rtcp_peer)
    holder.append(side)
    stream.on_speech_sent = side.speech_sent.append
    # The same outgoing numbering and RTCP schedule for both, so their packets can be compared.
    sender = stream._sender
    sender.ssrc, sender.sequence_number, sender.timestamp = 0x51DE, 0xFF00, 0xFFFF_0000
    stream._rtcp_countdown = 180
    general = stream._tick

    def counted(frames: int) -> None:
        side.general_ticks += 1
        general(frames)

    stream._tick = counted  # type: ignore[method-assign]
    return side


class Traffic:
    """The far end: RTP of one source with losses, bursts, reordering, duplicates, digits and changes."""

    def __init__(self, rng: random.Random, source: socket.socket) -> None:
        self.rng = rng
        self.source = source
        self.seq = 0xFFA0  # wraps early in the run
        self.ts = rng.getrandbits(32)
        self.ssrc = rng.getrandbits(32)
        self.held_back: list[bytes] = []
        self.last: bytes | None = None
        self.event_ts = 0

    def _audio(self, marker: bool = False) -> bytes:
        payload = bytes((self.seq + i) & 0xFF for i in range(160))
        packet = bytes(RtpPacket(PCMU, self.seq, self.ts, self.ssrc, payload, marker=marker))
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 160) & 0xFFFF_FFFF
        return packet

    def _event(self, end: bool) -> bytes:
        body = bytes(TelephoneEvent.for_digit("5", end=end, duration=320))
        packet = bytes(RtpPacket(101, self.seq, self.event_ts, self.ssrc, body))
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 160) & 0xFFFF_FFFF
        return packet

    def tick(self, steady: bool) -> list[bytes]:
        """The datagrams of one 20 ms interval."""
        late, self.held_back = self.held_back, []
        if self.rng.random() < 0.03:  # this one arrives with the next (a packet close to the tick)
            self.held_back = [self._audio()]
            return late
        if steady or self.rng.random() < 0.8:
            packets = [self._audio()]
        else:
            kind = self.rng.choice(
                ["loss", "burst", "late", "reorder", "duplicate", "marker", "digit", "ssrc", "jitter", "mux"]
            )
            if kind == "loss":
                self._audio()
                packets = [self._audio()]
            elif kind == "burst":
                packets = [self._audio(), self._audio()]
            elif kind == "late":
                packets = []
            elif kind == "reorder":
                first, second = self._audio(), self._audio()
                packets = [second, first]
            elif kind == "duplicate":
                packets = [self._audio()]
                packets.append(self.last or packets[0])
            elif kind == "marker":
                packets = [self._audio(marker=True)]
            elif kind == "digit":
                self.event_ts = self.ts
                packets = [self._event(False), self._event(True)]
            elif kind == "ssrc":
                self.ssrc = self.rng.getrandbits(32)
                self.seq = self.rng.getrandbits(16)
                packets = [self._audio()]
            elif kind == "jitter":
                self.ts = (self.ts + self.rng.choice([-480, -80, 40, 400, 3000])) & 0xFFFF_FFFF
                packets = [self._audio()]
            else:  # an RTCP receiver report on the RTP port (rtcp-mux)
                packets = [struct.pack("!BBHI", 0x80, 201, 1, self.ssrc), self._audio()]
        if packets:
            self.last = packets[-1]
        return late + packets


def _state(side: Side) -> dict[str, Any]:
    """Everything the run accounts for, read without ending it (so comparisons do not change the runs)."""
    stream = side.stream
    jitter: JitterBuffer = stream._jitter
    reception: ReceptionStats | None = stream._reception
    sender: RtpSender = stream._sender
    return {
        "jitter": {name: getattr(jitter, name) for name in JitterBuffer.__slots__ if name != "_codec"},
        "reception": None
        if reception is None
        else {name: getattr(reception, name) for name in ReceptionStats.__slots__},
        "sender": {name: getattr(sender, name) for name in RtpSender.__slots__},
        "stats": stream._stats,
        "quiet": stream._quiet_ticks,
        "rtcp_countdown": stream._rtcp_countdown,
        "frames_played": stream.frames_played,
        "talkspurt": (stream._talkspurt_start, stream._resume_marker, stream._ahead),
    }


def _settled(side: Side) -> dict[str, Any]:
    if side.stream._run_end:
        side.stream._end_run()
    return _state(side)


def _rtcp_fields(datagrams: list[bytes]) -> list[Any]:
    # NTP timestamps and delays since the last SR depend on when each stream built its report.
    out: list[Any] = []
    for datagram in datagrams:
        for packet in parse_compound(datagram):
            if isinstance(packet, SenderReport):
                out.append(("SR", packet.rtp_timestamp, packet.packet_count, packet.octet_count))
                out.extend(("block", b.packets_lost, b.highest_sequence, b.jitter) for b in packet.reports)
            else:
                out.append(type(packet).__name__)
    return out


def _resume(stream: RtpStream) -> None:
    stream.set_direction("sendrecv")
    stream.sending = True


class AgentSide:
    """What the agent and the UA do to both streams: replies, barge-in, digits, hold, reports."""

    def __init__(self, rng: random.Random, sides: list[Side]) -> None:
        self.rng = rng
        self.streams = [side.stream for side in sides]
        self.resume_at: int | None = None  # the end of a hold, or of not sending yet

    def tick(self, tick: int) -> list[str]:
        """Act before this tick; returns what was done, for a failure message."""
        rng, done = self.rng, []
        if tick % 97 == 5 or rng.random() < 0.01:
            frames = rng.choice([1, 7, 50, 120])
            speech = bytes(rng.getrandbits(8) for _ in range(320)) * frames  # noise, as PCM16
            self._each(lambda stream: stream.play(speech))
            done.append(f"play {frames} frames")
        if rng.random() < 0.004:
            self._each(lambda stream: stream.flush())
            done.append("flush")
        if rng.random() < 0.003:
            self._each(lambda stream: stream.send_dtmf("7", duration_ms=60))
            done.append("dtmf out")
        if self.resume_at == tick:
            self.resume_at = None
            self._each(_resume)
            done.append("resume")
        elif self.resume_at is None and rng.random() < 0.004:
            self.resume_at = tick + rng.randint(1, 60)
            if rng.random() < 0.3:
                self._each(lambda stream: setattr(stream, "sending", False))
                done.append("not sending")
            else:
                direction = rng.choice(["sendonly", "recvonly", "inactive"])
                self._each(lambda stream: stream.set_direction(direction))
                done.append(direction)
        if rng.random() < 0.003:
            timeout = rng.choice([None, 0.5, 30.0])
            self._each(lambda stream: setattr(stream, "rtp_timeout_s", timeout))
            done.append(f"rtp_timeout_s={timeout}")
        if rng.random() < 0.003:
            self._each(lambda stream: stream.report())
            done.append("report")
        return done

    def _each(self, action: Callable[[RtpStream], object]) -> None:
        for stream in self.streams:
            action(stream)


def _scenario(seed: int, ticks: int) -> None:
    async def run() -> None:
        rng = random.Random(seed)
        loop = asyncio.get_running_loop()
        sockets = MediaSockets(loop)
        clock = MediaClock()  # never ticks by itself: nothing here yields to the event loop
        source = _peer_socket()
        sides = [_open_side(sockets, clock, source, runs) for runs in (True, False)]
        traffic = Traffic(rng, source)
        agent = AgentSide(rng, sides)
        steady_until = 0
        try:
            for tick in range(ticks):
                if rng.random() < 0.01:
                    steady_until = tick + rng.randint(50, 400)  # long calm stretches, as calls mostly are
                actions = agent.tick(tick)
                for packet in traffic.tick(steady=tick < steady_until):
                    for side in sides:
                        source.sendto(packet, (HOST, side.port))
                for _ in range(3):  # one datagram per socket per pass: both streams read in the same pass
                    sockets.read_ready()
                frames = 1 if tick < steady_until or rng.random() < 0.97 else rng.randint(2, 4)
                for side in sides:
                    side.stream.on_tick(frames)
                run, plain = sides
                where = f"seed {seed}, tick {tick}, frames {frames}, {actions}"
                assert run.heard == plain.heard, where
                assert run.sent() == plain.sent(), where
                assert run.digits == plain.digits and run.speech_sent == plain.speech_sent, where
                assert _rtcp_fields(run.rtcp_sent()) == _rtcp_fields(plain.rtcp_sent()), where
                if not run.stream._run_end:
                    assert _state(run) == _state(plain), where
            assert _settled(sides[0]) == _settled(sides[1])
            assert sides[0].stream.report() == sides[1].stream.report()
            assert sides[1].general_ticks == ticks
            # The comparison means something only if the run did most of the work.
            assert sides[0].general_ticks < ticks // 2, sides[0].general_ticks
        finally:
            for side in sides:
                side.stream.close()
                side.peer.close()
                side.rtcp_peer.close()
            source.close()
            await asyncio.sleep(0.01)

    asyncio.run(run())


@pytest.mark.parametrize("seed", range(12))
def test_steady_run_leaves_everything_as_ticking_every_packet_would(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The randomised RTCP interval, the same for both streams.
    monkeypatch.setattr("telephony.media.random.randint", lambda low, high: (low + high) // 2)
    _scenario(seed, 1500)


def test_a_run_needs_the_epoll_reader() -> None:
    async def run() -> None:
        clock = MediaClock()
        source = _peer_socket()
        heard: list[bytes] = []
        transport, stream = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: RtpStream(
                clock,
                codec="PCMU",
                payload_type=PCMU,
                telephone_event_pt=None,
                remote=source.getsockname(),
                on_audio=heard.append,
            ),
            local_addr=(HOST, 0),
        )
        assert not isinstance(transport, MediaSocketTransport)
        for seq in range(20):
            source.sendto(
                bytes(RtpPacket(PCMU, seq, seq * 160, 9, bytes(160))), transport.get_extra_info("sockname")
            )
            await asyncio.sleep(0.001)
            stream.on_tick()
        assert heard and not stream._run_end
        stream.close()
        source.close()

    asyncio.run(run())


# --- the bulk accounting of each part, against doing it packet by packet ---------------------------------


@pytest.mark.parametrize("uneven", [False, True], ids=["one packet a tick", "late packets"])
def test_jitter_buffer_accounts_steady_ticks_as_push_and_pop(uneven: bool) -> None:
    policy = PlayoutPolicy(shrink_window=5, relax_after=40, min_delay_frames=1)
    rng = random.Random(7)
    for count in (1, 3, 4, 5, 6, 17, 70, 130):
        one, bulk = JitterBuffer(policy, frame_bytes=160), JitterBuffer(policy, frame_bytes=160)
        seq = 65_500
        for buffer in (one, bulk):
            buffer.target = 2  # above the policy's minimum, so a window end may relax it
        for _ in range(7):
            for buffer in (one, bulk):
                buffer.push(seq & 0xFFFF, 5, False, seq.to_bytes(4, "big") * 40)
                buffer.pop()
            seq += 1
        held = bulk.steady_held(seq & 0xFFFF, 5)
        assert held is not None and bulk.steady_held((seq + 1) & 0xFFFF, 5) is None
        count = min(count, bulk.steady_ticks())
        played: list[bytes] = []
        log: list[tuple[int, int, int, int]] = []
        pushed = 0
        for tick in range(count):
            # A packet late by a tick: none this tick, two the next (while something is held to play).
            packets = 1
            if uneven and held and (not log or log[-1][2] != 0) and rng.random() < 0.3:
                packets = 0
            elif log and log[-1][2] == 0 and log[-1][0] == tick - 1:
                packets = 2
            for _ in range(packets):
                one.push(seq & 0xFFFF, 5, False, seq.to_bytes(4, "big") * 40)
                held.append(seq.to_bytes(4, "big") * 40)
                seq += 1
            pushed += packets
            frame = one.pop()
            assert frame == held.pop(0)
            played.append(frame)
            if packets != 1:
                log.append((tick, len(held), packets, 0))
        bulk.account_steady(pushed, held, played[-1], log)
        assert {n: getattr(bulk, n) for n in JitterBuffer.__slots__ if n != "policy"} == {
            n: getattr(one, n) for n in JitterBuffer.__slots__ if n != "policy"
        }, count
        assert not uneven or count < 5 or log
    # The run stops short of the window end that relaxes the target.
    assert one.target == 2


def test_reception_stats_account_in_order_packets_as_update() -> None:
    one, bulk = ReceptionStats(3, 100), ReceptionStats(3, 100)
    rng = random.Random(4)
    for seq in range(100, 104):
        for stats in (one, bulk):
            stats.update(seq, seq * 160, seq * 160 + 900)
    state = bulk.in_order_state()
    assert state is not None
    expected, transit, jitter_q4 = state
    for seq in range(104, 300):
        arrival = seq * 160 + 900 + rng.randint(-60, 60)
        one.update(seq, seq * 160, arrival)
        new_transit = arrival - seq * 160
        d = abs(new_transit - transit)
        jitter_q4 += d - ((jitter_q4 + 8) >> 4)
        transit = new_transit
    bulk.account_in_order(300 - expected, transit, jitter_q4)
    assert {n: getattr(bulk, n) for n in ReceptionStats.__slots__} == {
        n: getattr(one, n) for n in ReceptionStats.__slots__
    }
    one.max_seq = 0xFFFF
    assert one.in_order_state() is None  # the wrap is counted by update() itself


def test_sender_accounts_frames_as_packet_bytes() -> None:
    for sequence_number, timestamp in ((0xFFF0, 0x1000), (0x1000, 0xFFFF_F000)):
        one, bulk = RtpSender(0, ssrc=1), RtpSender(0, ssrc=1)
        one.sequence_number = bulk.sequence_number = sequence_number
        one.timestamp = bulk.timestamp = timestamp
        room = bulk.room(160)
        for _ in range(room):
            one.packet_bytes(bytes(160), 160)
        bulk.account(room, 160, 160)
        assert {n: getattr(bulk, n) for n in RtpSender.__slots__} == {
            n: getattr(one, n) for n in RtpSender.__slots__
        }
        one.packet_bytes(bytes(160), 160)  # one more wraps the sequence number or the timestamp
        assert one.sequence_number == 0 or one.timestamp < 160

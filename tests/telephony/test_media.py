"""RtpStream over real loopback UDP sockets, against a raw socket peer that decodes what it receives."""

from __future__ import annotations

import asyncio
import itertools
import math
import socket
import struct
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from telephony.codecs import pcm16_to_ulaw, ulaw_to_pcm16
from telephony.media import DtmfUnavailable, MediaClock, RtpPortPool, RtpStream
from telephony.media_io import MediaSocketTransport
from telephony.rtcp import Goodbye, ReceiverReport, SenderReport, SourceDescription, parse_compound
from telephony.rtp import RtpPacket, TelephoneEvent

if sys.version_info < (3, 13):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
else:  # pragma: no cover - exercised on 3.13+ only
    import audioop

HOST = "127.0.0.1"
SILENCE = b"\xff" * 160


class Peer(asyncio.DatagramProtocol):
    """The far end: records every datagram and sends whatever a test gives it."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def rtp(self) -> list[RtpPacket]:
        return [RtpPacket.parse(data) for data in self.received]


@dataclass
class Call:
    stream: RtpStream
    port: int
    heard: list[bytes] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)

    @property
    def addr(self) -> tuple[str, int]:
        return HOST, self.port


OpenCall = Callable[..., Awaitable[Call]]


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def open_peer() -> Peer:
    _, peer = await asyncio.get_running_loop().create_datagram_endpoint(Peer, local_addr=(HOST, 0))
    return peer


@pytest.fixture(params=[True, False], ids=["epoll-reader", "asyncio-endpoints"])
async def media(request: pytest.FixtureRequest) -> AsyncIterator[OpenCall]:
    clock = MediaClock()
    pool = RtpPortPool(41000, 41999, shared_reader=request.param)
    calls: list[Call] = []

    async def open_call(remote: tuple[str, int], telephone_event_pt: int | None = 101) -> Call:
        holder: list[Call] = []

        def factory() -> RtpStream:
            return RtpStream(
                clock,
                codec="PCMU",
                payload_type=0,
                telephone_event_pt=telephone_event_pt,
                remote=remote,
                on_audio=lambda frame: holder[0].heard.append(frame),
                on_dtmf=lambda digit: holder[0].digits.append(digit),
            )

        _, stream, port = await pool.open(HOST, factory)
        holder.append(Call(stream, port))
        calls.append(holder[0])
        return holder[0]

    yield open_call
    for call in calls:
        call.stream.close()
    await asyncio.sleep(0.01)


def rtp(
    seq: int, payload: bytes = b"\x7f" * 160, *, pt: int = 0, ts: int | None = None, ssrc: int = 7
) -> bytes:
    return bytes(RtpPacket(pt, seq & 0xFFFF, (160 * seq if ts is None else ts) & 0xFFFFFFFF, ssrc, payload))


def audio_packets(peer: Peer) -> list[RtpPacket]:
    return [p for p in peer.rtp() if p.payload_type == 0]


async def test_audio_both_ways_through_the_jitter_buffer(media: OpenCall) -> None:
    peer = await open_peer()
    call = await media(peer.addr)
    call.stream.play(b"\x10\x20" * 1600)  # ten frames
    # Arrive out of order, with a duplicate: the agent still hears ten frames in order, once each.
    order = [0, 1, 3, 2, 4, 5, 5, 6, 8, 7, 9]
    for seq in order:
        peer.send(rtp(seq, pcm16_to_ulaw(seq.to_bytes(2, "little") * 160)), call.addr)
    await until(lambda: len(call.heard) == 10 and call.stream.queued_frames == 0)
    # The last speech packet may still be on its way to the peer (a late tick catches up in one go).
    await until(lambda: sum(p.payload != SILENCE for p in audio_packets(peer)) >= 10)
    expected = [ulaw_to_pcm16(pcm16_to_ulaw(seq.to_bytes(2, "little") * 160)) for seq in range(10)]
    assert call.heard == expected
    report = call.stream.report()
    # RFC 3550 A.3 counts the duplicate as received, so cumulative loss is -1.
    assert (report.packets_received, report.duplicates, report.late, report.lost) == (11, 1, 0, -1)
    speech = [p for p in audio_packets(peer) if p.payload != SILENCE]
    assert len(speech) == 10 and speech[0].marker
    assert all(
        (b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in itertools.pairwise(peer.rtp())
    )


async def test_symmetric_latching_and_update_remote(media: OpenCall) -> None:
    nowhere = ("127.0.0.1", 9)  # the SDP said one thing; media comes from elsewhere (NAT)
    first, second, third = await open_peer(), await open_peer(), await open_peer()
    call = await media(nowhere)
    first.send(rtp(1), call.addr)
    await until(lambda: len(first.received) >= 2)
    assert call.stream.remote == first.addr
    # A re-INVITE moves the media: packets go to the new address at once ...
    call.stream.update_remote(second.addr)
    await until(lambda: len(second.received) >= 2)
    # ... and the next source seen is latched again (the new address was behind NAT too).
    third.send(rtp(2), call.addr)
    await until(lambda: len(third.received) >= 2)
    assert call.stream.remote == third.addr
    sent_to_first = len(first.received)
    await until(lambda: len(third.received) >= 5)
    assert len(first.received) == sent_to_first


async def test_hold_keeps_ssrc_sequence_and_timestamp_continuous(
    media: OpenCall,
) -> None:
    peer = await open_peer()
    call = await media(peer.addr)
    await until(lambda: len(peer.received) >= 3)
    call.stream.set_direction("recvonly")  # the caller put us on hold: we must not send
    held_at = len(peer.received)
    peer.send(rtp(1), call.addr)
    peer.send(rtp(2), call.addr)
    await until(lambda: len(call.heard) >= 2)  # still receiving while on hold
    count_on_hold = len(peer.received)
    assert count_on_hold - held_at <= 1  # at most a packet already in flight
    call.stream.set_direction("sendrecv")
    await until(lambda: len(peer.received) >= count_on_hold + 3)
    packets = peer.rtp()
    before, after = packets[count_on_hold - 1], packets[count_on_hold]
    assert after.ssrc == before.ssrc
    assert (after.sequence_number - before.sequence_number) & 0xFFFF == 1
    gap = (after.timestamp - before.timestamp) & 0xFFFFFFFF
    assert gap % 160 == 0 and gap > 160  # the timestamp followed the clock through the hold
    assert after.marker and not packets[count_on_hold + 1].marker
    for direction in ("inactive", "sendonly"):
        call.stream.set_direction(direction)
    with pytest.raises(ValueError):
        call.stream.set_direction("both")


async def test_dtmf_out_rfc4733(media: OpenCall) -> None:
    peer = await open_peer()
    call = await media(peer.addr)
    call.stream.play(b"\x10\x20" * 160 * 50)  # speech queued: the digits must not interleave with it
    await until(lambda: len(peer.received) >= 2)
    call.stream.send_dtmf("5", duration_ms=100)
    call.stream.send_dtmf("#", duration_ms=60)
    await until(lambda: sum(1 for p in peer.rtp() if p.payload_type == 101) >= 12)
    await until(lambda: peer.rtp()[-1].payload_type == 0)
    packets = peer.rtp()
    start = next(i for i, p in enumerate(packets) if p.payload_type == 101)
    events = packets[start : start + 12]
    assert all(p.payload_type == 101 for p in events)  # contiguous: no audio in between
    five, pound = events[:7], events[7:]  # 100 ms: 4 updates + 3 ends; 60 ms: 2 updates + 3 ends
    for group, key, total in ((five, "5", 800), (pound, "#", 480)):
        decoded = [TelephoneEvent.parse(p.payload) for p in group]
        assert {p.timestamp for p in group} == {group[0].timestamp}
        assert [p.marker for p in group] == [True] + [False] * (len(group) - 1)
        assert {e.digit for e in decoded} == {key}
        updates = [e.duration for e in decoded if not e.end]
        assert updates == list(range(160, total, 160))
        ends = [e for e in decoded if e.end]
        assert len(ends) == 3 and {e.duration for e in ends} == {total}
    assert pound[0].timestamp - five[0].timestamp == 160 * len(five)
    after = packets[start + 12]
    assert after.payload_type == 0 and after.payload != SILENCE
    assert after.timestamp == pound[0].timestamp + 160 * len(pound)  # audio resumes on the clock
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in itertools.pairwise(packets))
    with pytest.raises(ValueError):
        call.stream.send_dtmf("X")
    with pytest.raises(ValueError):
        call.stream.send_dtmf("1", duration_ms=10_000)


async def test_dtmf_needs_telephone_event(media: OpenCall) -> None:
    peer = await open_peer()
    call = await media(peer.addr, telephone_event_pt=None)
    with pytest.raises(DtmfUnavailable):
        call.stream.send_dtmf("1")


async def test_dtmf_in_reported_once_per_event(media: OpenCall) -> None:
    peer = await open_peer()
    call = await media(peer.addr)
    seq = itertools.count(1)

    def event(digit: str, ts: int, duration: int, end: bool = False) -> bytes:
        return rtp(
            next(seq), bytes(TelephoneEvent.for_digit(digit, end=end, duration=duration)), pt=101, ts=ts
        )

    for duration in (160, 320, 480):
        peer.send(event("7", 8000, duration), call.addr)
    for _ in range(3):  # the end packet, three times
        peer.send(event("7", 8000, 640, end=True), call.addr)
    peer.send(event("8", 9000, 640, end=True), call.addr)
    await until(lambda: len(call.digits) == 2)
    await asyncio.sleep(0.05)
    assert call.digits == ["7", "8"]


async def test_rtp_timeout_fires_once_and_only_while_the_peer_should_send(
    media: OpenCall,
) -> None:
    peer = await open_peer()
    fired: list[str] = []
    quiet = await media(peer.addr)
    quiet.stream.rtp_timeout_s = 0.1
    quiet.stream.on_timeout = lambda: fired.append("quiet")
    holding = await media(peer.addr)
    holding.stream.set_direction("sendonly")  # we hold the caller: no media expected from them
    holding.stream.rtp_timeout_s = 0.1
    holding.stream.on_timeout = lambda: fired.append("holding")
    fed = await media(peer.addr)
    fed.stream.rtp_timeout_s = 0.2
    fed.stream.on_timeout = lambda: fired.append("fed")
    for seq in range(25):
        peer.send(rtp(seq), fed.addr)
        await asyncio.sleep(0.02)
    assert fired == ["quiet"]
    await until(lambda: "fed" in fired)  # and once the feed stops, it fires too
    await asyncio.sleep(0.2)
    assert sorted(fired) == ["fed", "quiet"]


async def test_rtcp_reports_between_two_streams(media: OpenCall) -> None:
    a = await media(("127.0.0.1", 9))
    b = await media(a.addr)
    a.stream.update_remote(b.addr)
    await until(lambda: len(a.heard) >= 5 and len(b.heard) >= 5)
    a.stream.send_rtcp_report()  # SR from a: b learns LSR
    await until(lambda: b.stream.report().rtcp_received >= 1)
    b.stream.send_rtcp_report()  # SR from b with a block about a, echoing LSR/DLSR
    await until(lambda: a.stream.report().round_trip_ms is not None)
    report = a.stream.report()
    assert report.round_trip_ms is not None and 0 <= report.round_trip_ms < 1000
    assert report.remote_lost == 0 and report.remote_jitter_ms is not None
    assert report.rtcp_sent >= 1 and report.rtcp_received >= 1
    assert report.lost == 0 and report.packets_received >= 5
    b.stream.close()
    await until(lambda: a.stream.remote_bye)


async def test_rtcp_socket_and_what_it_sends(media: OpenCall) -> None:
    peer = await open_peer()
    call = await media(peer.addr)
    with pytest.raises(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, call.port + 1))  # the pool bound RTCP on port + 1
    rtcp_peer = Peer()
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: rtcp_peer, local_addr=(HOST, 0))
    peer.send(rtp(1), call.addr)
    peer.send(rtp(2), call.addr)
    await until(lambda: len(call.heard) >= 1)
    # RTCP goes to the RTP address + 1 until the far end's RTCP arrives from somewhere else.
    rtcp_peer.send(bytes(ReceiverReport(7)), (HOST, call.port + 1))
    await until(lambda: call.stream.report().rtcp_received == 1)
    call.stream.send_rtcp_report()
    await until(lambda: len(rtcp_peer.received) >= 1)
    compound = parse_compound(rtcp_peer.received[-1])
    assert isinstance(compound[0], SenderReport) and isinstance(compound[1], SourceDescription)
    assert compound[1].chunks[0].cname
    [block] = compound[0].reports
    assert block.ssrc == 7 and block.packets_lost == 0
    call.stream.close()
    await until(lambda: isinstance(parse_compound(rtcp_peer.received[-1])[-1], Goodbye))


async def test_garbage_is_counted_and_dropped(media: OpenCall) -> None:
    peer = await open_peer()
    call = await media(peer.addr)
    for junk in (b"\x80", b"\x00" * 20, b"\x90\x00" + bytes(10)):
        peer.send(junk, call.addr)
    peer.send(bytes.fromhex("81c90007") + bytes(4), call.addr)  # rtcp-mux RR, truncated
    peer.send(b"\x81\xc9\x00\x01", (HOST, call.port + 1))
    peer.send(rtp(1), call.addr)
    await until(lambda: call.stream.stats.packets_received == 1)
    await until(lambda: call.stream.stats.rtcp_malformed == 2)
    assert call.stream.stats.packets_malformed == 3


async def test_port_pool_skips_pairs_whose_rtcp_port_is_taken(
    media: OpenCall,
) -> None:
    squatters = []
    for _ in range(20):  # the kernel hands out ephemeral ports in no particular parity
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        squatter.bind((HOST, 0))
        squatters.append(squatter)
        if squatter.getsockname()[1] % 2:
            break
    busy = squatters[-1].getsockname()[1]  # an odd port: the RTCP half of a pair
    try:
        if busy % 2 == 0:
            pytest.skip("could not reserve an odd port")
        pool = RtpPortPool(busy - 1, busy + 2)
        clock = MediaClock()
        _, stream, port = await pool.open(
            HOST,
            lambda: RtpStream(
                clock,
                codec="PCMU",
                payload_type=0,
                telephone_event_pt=None,
                remote=(HOST, 9),
                on_audio=lambda frame: None,
            ),
        )
        assert port == busy + 1
        stream.close()
    finally:
        for squatter in squatters:
            squatter.close()
    with pytest.raises(ValueError):
        RtpPortPool(41001, 41001)


class Ticker:
    def __init__(self, fail: bool = False) -> None:
        self.ticks = 0
        self.fail = fail

    def on_tick(self, frames: int = 1) -> None:
        self.ticks += frames  # a late tick stands for several
        if self.fail:
            raise RuntimeError("a broken stream")


async def test_media_clock_phases_tick_every_stream_once_per_interval() -> None:
    clock = MediaClock(phases=4)
    tickers = [Ticker() for _ in range(8)]
    broken = Ticker(fail=True)
    for ticker in [*tickers, broken]:
        clock.add(ticker)
    await until(lambda: min(t.ticks for t in tickers) >= 10)
    counts = [t.ticks for t in tickers]
    assert max(counts) - min(counts) <= 1  # phases differ by a fraction of an interval, never a tick
    assert len(clock) == 8  # the broken one was dropped after its exception; the others carry on
    for ticker in tickers:
        clock.discard(ticker)
    assert len(clock) == 0
    stopped = [t.ticks for t in tickers]
    await asyncio.sleep(0.06)
    assert [t.ticks for t in tickers] == stopped
    with pytest.raises(ValueError):
        MediaClock(phases=0)


async def test_late_tick_hands_over_what_arrived_meanwhile(media: OpenCall) -> None:
    peer = await open_peer()
    call = await media(peer.addr)
    if not isinstance(call.stream._transport, MediaSocketTransport):
        pytest.skip("only the epoll reader can read a socket on demand")
    # Ten packets land while the process is held up; the next tick stands for five intervals. No await
    # in between: the loop has not read the socket yet.
    for seq in range(10):
        peer.send(rtp(seq), call.addr)
    call.stream.on_tick(5)
    assert len(call.heard) == 3  # two intervals of priming (40 ms), then three frames at once
    await until(lambda: call.stream.report().packets_received == 10)  # the rest in the loop's own time
    assert call.stream.report().discarded == 0


async def test_media_from_the_sdp_address_shuts_out_other_sources(media: OpenCall) -> None:
    peer, stranger = await open_peer(), await open_peer()
    call = await media(peer.addr)
    peer.send(rtp(1), call.addr)
    await until(lambda: call.stream.report().packets_received == 1)
    stranger.send(rtp(500, ssrc=99), call.addr)
    peer.send(rtp(2), call.addr)
    await until(lambda: call.stream.report().packets_received >= 2)
    await asyncio.sleep(0.05)
    if isinstance(call.stream._transport, MediaSocketTransport):
        # Latched where the SDP said: the socket is connected there, so the kernel drops the rest.
        assert call.stream.report().packets_received == 2
    else:
        assert call.stream.report().packets_received == 3
    assert call.stream.remote == peer.addr
    # A re-INVITE moves the media: anyone may be latched again, and is then answered.
    call.stream.update_remote(stranger.addr)
    before = call.stream.report().packets_received
    stranger.send(rtp(501, ssrc=99), call.addr)
    await until(lambda: call.stream.report().packets_received == before + 1)
    sent_to_stranger = len(stranger.received)
    await until(lambda: len(stranger.received) >= sent_to_stranger + 2)


async def test_media_latched_elsewhere_than_the_sdp_said_shuts_nothing_out(media: OpenCall) -> None:
    peer, stray = await open_peer(), await open_peer()
    call = await media(peer.addr)
    stray.send(rtp(1, ssrc=99), call.addr)  # a stray packet comes first: latched there, as NAT would look
    await until(lambda: call.stream.report().packets_received == 1)
    assert call.stream.remote == stray.addr
    peer.send(rtp(7), call.addr)  # the real media still gets in
    await until(lambda: call.stream.report().packets_received == 2)


async def test_queued_speech_goes_out_encoded_frame_by_frame(media: OpenCall) -> None:
    peer = await open_peer()
    call = await media(peer.addr)
    # 0.3 s plus a partial frame, long enough to be encoded in one go, not a frame at a time.
    samples = [int(9000 * math.sin(i / 7) + 3000 * math.sin(i / 3)) for i in range(2400 + 50)]
    pcm = struct.pack(f"<{len(samples)}h", *samples)
    call.stream.play(pcm)
    await until(lambda: call.stream.queued_frames == 0 and len(audio_packets(peer)) >= 18)
    padded = pcm + bytes(320 - len(pcm) % 320)
    reference = [audioop.lin2ulaw(padded[i : i + 320], 2) for i in range(0, len(padded), 320)]
    assert [p.payload for p in audio_packets(peer) if p.payload != SILENCE][: len(reference)] == reference


async def test_a_talkspurt_goes_out_a_tick_early_and_the_pause_after_it_brings_the_stream_back(
    media: OpenCall,
) -> None:
    """A reply queued between ticks starts at once, not at the next tick, and the rest of it follows a
    tick early; the first tick of silence after it sends nothing. The far end sees unbroken sequence
    numbers and timestamps and one packet per tick overall."""
    peer = await open_peer()
    call = await media(peer.addr)
    stream = call.stream
    stream._clock.discard(stream)  # ticked by hand from here on
    for _ in range(3):
        stream.on_tick(1)
    await until(lambda: len(peer.received) == 3)
    frames = [bytes([n]) * 2 * 160 for n in range(1, 6)]
    stream.play(b"".join(frames))
    assert stream.queued_frames == 4 and stream.frames_played == 1  # the first frame went out in play()
    await until(lambda: len(peer.received) == 4)
    for _ in range(4):  # one frame per tick, a tick ahead
        stream.on_tick(1)
    await until(lambda: len(peer.received) == 8)
    assert stream.queued_frames == 0
    stream.on_tick(1)  # the first tick of silence is left out ...
    stream.on_tick(1)  # ... and the next one sends it
    await until(lambda: len(peer.received) >= 9)
    await asyncio.sleep(0.02)
    packets = peer.rtp()
    assert len(packets) == 9  # nine ticks, nine packets
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in itertools.pairwise(packets))
    assert all((b.timestamp - a.timestamp) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(packets))
    assert [p.payload for p in packets[3:8]] == [audioop.lin2ulaw(frame, 2) for frame in frames]
    assert [p.marker for p in packets] == [False, False, False, True, False, False, False, False, False]
    assert packets[8].payload == SILENCE
    # The next reply starts at once again.
    stream.play(frames[0])
    assert stream.frames_played == 6 and stream.queued_frames == 0


async def test_a_stream_that_no_longer_ticks_does_not_hoard_datagrams(media: OpenCall) -> None:
    peer = await open_peer()
    call = await media(peer.addr)
    if not isinstance(call.stream._transport, MediaSocketTransport):
        pytest.skip("only the epoll reader keeps datagrams for the next tick")
    peer.send(rtp(0), call.addr)
    await until(lambda: call.stream.stats.packets_received == 1)  # latched: the inbox is in use
    call.stream._clock.discard(call.stream)  # as if its tick had failed: the clock drops it
    for seq in range(1, 80):
        peer.send(rtp(seq), call.addr)
    # Without ticks, the inbox is worked through once it holds 64 datagrams.
    await until(lambda: call.stream.stats.packets_received >= 65)


async def test_media_clock_streams_joining_and_leaving_during_a_tick() -> None:
    clock = MediaClock()
    late = Ticker()

    class Host(Ticker):
        def on_tick(self, frames: int = 1) -> None:
            super().on_tick(frames)
            if self.ticks == 2:
                clock.add(late)  # a call set up from within a tick
                clock.discard(leaving)  # and another hung up

    host, leaving = Host(), Ticker()
    clock.add(host)
    clock.add(leaving)
    await until(lambda: host.ticks >= 6)
    assert leaving.ticks in (1, 2)  # it may still get the tick it was discarded in, not any later one
    assert host.ticks - 2 - 1 <= late.ticks <= host.ticks - 2
    assert len(clock) == 2

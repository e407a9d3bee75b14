"""The asyncio SIP user agent over real UDP sockets on loopback, driven by a raw SIP client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from telephony.media import MediaClock, RtpPortPool
from telephony.rtp import RtpPacket
from telephony.sdp import SessionDescription
from telephony.sip.message import SipRequest, SipResponse, parse_message
from telephony.sip.ua import SipCall, UserAgent

OFFER_PCMU = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\na=ptime:20\r\n"
)
OFFER_G729 = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n"
)


class RawPeer(asyncio.DatagramProtocol):
    """A SIP peer that speaks bytes: what we send is exactly what the agent receives."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.inbox.put_nowait(data)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    async def receive(self, timeout: float = 2.0) -> SipRequest | SipResponse:
        return parse_message(await asyncio.wait_for(self.inbox.get(), timeout))

    async def expect_silence(self, seconds: float = 0.3) -> None:
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(self.inbox.get(), seconds)
            pytest.fail(f"unexpected datagram: {data!r}")

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port


def request(
    method: str,
    port: int,
    *,
    call_id: str = "call-1@test",
    branch: str = "z9hG4bK-1",
    cseq: int = 1,
    to_tag: str | None = None,
    body: str = "",
    from_user: str = "+15550100002",
) -> bytes:
    to = "<sip:agent@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:agent@127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}",
        "Max-Forwards: 70",
        f"From: <sip:{from_user}@127.0.0.1>;tag=caller-tag",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:caller@127.0.0.1:{port}>",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


Harness = tuple[UserAgent, RawPeer, list[SipCall]]


@pytest.fixture
async def harness() -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    opened: list[tuple[UserAgent, RawPeer]] = []

    async def start(
        handler: Callable[[SipCall], Awaitable[None]] | None = None, max_calls: int = 10
    ) -> Harness:
        calls: list[SipCall] = []

        async def on_call(call: SipCall) -> None:
            calls.append(call)
            if handler is not None:
                await handler(call)
            else:
                await call.ended.wait()

        ua = UserAgent(
            advertised_host="127.0.0.1",
            port_pool=RtpPortPool(36000, 36999),
            clock=MediaClock(),
            on_call=on_call,
            max_calls=max_calls,
        )
        await ua.start("127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(RawPeer, local_addr=("127.0.0.1", 0))
        opened.append((ua, peer))
        return ua, peer, calls

    yield start
    for ua, peer in opened:
        await ua.close()
        if peer.transport is not None:
            peer.transport.close()


async def answered_call(ua: UserAgent, peer: RawPeer, media_port: int = 9) -> SipResponse:
    peer.send(request("INVITE", peer.port, body=OFFER_PCMU.format(port=media_port)), ("127.0.0.1", ua.port))
    statuses = []
    while True:
        response = await peer.receive()
        assert isinstance(response, SipResponse)
        statuses.append(response.status)
        if response.status >= 200:
            break
    assert statuses == [100, 180, 200]
    return response


async def test_options_is_answered_with_allow(harness: Callable[..., Awaitable[Harness]]) -> None:
    ua, peer, _ = await harness()
    peer.send(request("OPTIONS", peer.port), ("127.0.0.1", ua.port))
    response = await peer.receive()
    assert isinstance(response, SipResponse)
    assert response.status == 200
    assert "INVITE" in (response.headers.get("Allow") or "")


async def test_invite_answered_then_caller_hangs_up(harness: Callable[..., Awaitable[Harness]]) -> None:
    ua, peer, calls = await harness()
    ok = await answered_call(ua, peer)
    answer = SessionDescription.parse(ok.body)
    assert answer.media[0].formats[0] == 0
    to_tag = ok.headers["To"].split("tag=")[1]
    peer.send(request("ACK", peer.port, branch="z9hG4bK-ack", to_tag=to_tag), ("127.0.0.1", ua.port))
    for _ in range(50):
        if calls:
            break
        await asyncio.sleep(0.02)
    assert len(calls) == 1 and calls[0].remote_number == "+15550100002"
    peer.send(request("BYE", peer.port, branch="z9hG4bK-bye", cseq=2, to_tag=to_tag), ("127.0.0.1", ua.port))
    bye_ok = await peer.receive()
    assert isinstance(bye_ok, SipResponse) and bye_ok.status == 200
    await asyncio.wait_for(calls[0].ended.wait(), 1)
    assert calls[0].hangup_by == "caller"
    assert not ua.calls


async def test_retransmitted_invite_is_answered_from_the_transaction(
    harness: Callable[..., Awaitable[Harness]],
) -> None:
    ua, peer, _ = await harness()
    ok = await answered_call(ua, peer)
    peer.send(request("INVITE", peer.port, body=OFFER_PCMU.format(port=9)), ("127.0.0.1", ua.port))
    again = await peer.receive()
    assert isinstance(again, SipResponse) and again.status == 200
    assert again.body == ok.body  # same answer, no second call set up
    assert len(ua.calls) == 1


async def test_unanswered_2xx_is_retransmitted_until_ack(harness: Callable[..., Awaitable[Harness]]) -> None:
    ua, peer, _ = await harness()
    ok = await answered_call(ua, peer)
    # No ACK: RFC 3261 13.3.1.4 retransmits the 2xx after T1 (0.5 s).
    again = await peer.receive(timeout=1.5)
    assert isinstance(again, SipResponse) and again.status == 200
    assert again.headers["Call-ID"] == ok.headers["Call-ID"]


async def test_no_common_codec_gets_488(harness: Callable[..., Awaitable[Harness]]) -> None:
    ua, peer, _ = await harness()
    peer.send(request("INVITE", peer.port, body=OFFER_G729.format(port=9)), ("127.0.0.1", ua.port))
    statuses = [(await peer.receive()), (await peer.receive())]
    assert [r.status for r in statuses if isinstance(r, SipResponse)] == [100, 488]
    assert not ua.calls


async def test_over_capacity_gets_503_with_retry_after(harness: Callable[..., Awaitable[Harness]]) -> None:
    ua, peer, _ = await harness(max_calls=1)
    await answered_call(ua, peer)
    peer.send(
        request(
            "INVITE", peer.port, call_id="call-2@test", branch="z9hG4bK-2", body=OFFER_PCMU.format(port=9)
        ),
        ("127.0.0.1", ua.port),
    )
    _trying, refused = await peer.receive(), await peer.receive()
    assert isinstance(refused, SipResponse) and refused.status == 503
    assert refused.headers.get("Retry-After") == "5"


async def test_malformed_request_gets_400_with_reason(harness: Callable[..., Awaitable[Harness]]) -> None:
    ua, peer, _ = await harness()
    bad = request("OPTIONS", peer.port).replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS")
    peer.send(bad, ("127.0.0.1", ua.port))
    # The 400 echoes the broken CSeq (RFC 3261 8.2.6.2), so read its status line as bytes.
    raw = await asyncio.wait_for(peer.inbox.get(), 2)
    status_line = raw.split(b"\r\n", 1)[0].decode()
    assert status_line.startswith("SIP/2.0 400 ")
    assert "CSeq" in status_line
    peer.send(b"\x00\xff garbage that is not SIP at all\r\n\r\n", ("127.0.0.1", ua.port))
    await peer.expect_silence()
    assert ua.malformed == 2
    # Still serving after garbage.
    peer.send(request("OPTIONS", peer.port, branch="z9hG4bK-after"), ("127.0.0.1", ua.port))
    assert (await peer.receive()).status == 200  # type: ignore[union-attr]


async def test_agent_hangup_sends_bye_and_rtp_flows_both_ways(
    harness: Callable[..., Awaitable[Harness]],
) -> None:
    loop = asyncio.get_running_loop()
    media_in: asyncio.Queue[bytes] = asyncio.Queue()
    rtp_peer: RawPeer
    _, rtp_peer = await loop.create_datagram_endpoint(RawPeer, local_addr=("127.0.0.1", 0))
    heard: list[bytes] = []

    async def speak_then_hang_up(call: SipCall) -> None:
        call.audio_sink = heard.append
        call.play(b"\x10\x20" * 1600)  # 200 ms of audio
        await call.wait_drained()
        await call.hangup()

    ua, peer, calls = await harness(handler=speak_then_hang_up)
    ok = await answered_call(ua, peer, media_port=rtp_peer.port)
    to_tag = ok.headers["To"].split("tag=")[1]
    answer = SessionDescription.parse(ok.body)
    agent_media = ("127.0.0.1", answer.media[0].port)
    peer.send(request("ACK", peer.port, branch="z9hG4bK-ack", to_tag=to_tag), ("127.0.0.1", ua.port))
    while not calls:
        await asyncio.sleep(0.005)
    for seq in range(5):
        packet = RtpPacket(
            payload_type=0, sequence_number=seq, timestamp=seq * 160, ssrc=7, payload=b"\x7f" * 160
        )
        rtp_peer.send(bytes(packet), agent_media)
    bye = await peer.receive(timeout=3)
    assert isinstance(bye, SipRequest) and bye.method == "BYE"
    peer.send(
        b"SIP/2.0 200 OK\r\n"
        + b"".join(
            f"{name}: {bye.headers[name]}\r\n".encode() for name in ("Via", "From", "To", "Call-ID", "CSeq")
        )
        + b"Content-Length: 0\r\n\r\n",
        ("127.0.0.1", ua.port),
    )
    while not rtp_peer.inbox.empty():
        media_in.put_nowait(rtp_peer.inbox.get_nowait())
    packets = [RtpPacket.parse(media_in.get_nowait()) for _ in range(media_in.qsize())]
    speech = [p for p in packets if p.payload != b"\xff" * 160]
    assert len(speech) == 10  # 200 ms in 20 ms packets
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in itertools.pairwise(packets))
    assert len(heard) == 5 and all(len(frame) == 320 for frame in heard)
    assert calls[0].hangup_by == "agent"
    assert rtp_peer.transport is not None
    rtp_peer.transport.close()

"""The asyncio SIP user agent over real UDP sockets on loopback, driven by a raw SIP client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from telephony.media import MediaClock, RtpPortPool, RtpStream
from telephony.rtp import RtpPacket
from telephony.sdp import SessionDescription
from telephony.sip.call import dtmf_from_info
from telephony.sip.errors import SipParseError
from telephony.sip.message import SipRequest, SipResponse, parse_message
from telephony.sip.ua import SipCall, UserAgent
from tests.telephony.sip_samples import load_sip

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

    async def response(self, status: int | None = None, timeout: float = 3.0) -> SipResponse:
        """The next response (with this status), skipping retransmissions and requests."""
        while True:
            message = await self.receive(timeout)
            if isinstance(message, SipResponse) and (status is None or message.status == status):
                return message

    async def request(self, method: str, timeout: float = 3.0) -> SipRequest:
        while True:
            message = await self.receive(timeout)
            if isinstance(message, SipRequest) and message.method == method:
                return message

    async def expect_silence(self, seconds: float = 0.3) -> None:
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(self.inbox.get(), seconds)
            pytest.fail(f"unexpected datagram: {data!r}")

    def drain(self) -> list[bytes]:
        items = []
        while not self.inbox.empty():
            items.append(self.inbox.get_nowait())
        return items

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
    content_type: str = "application/sdp",
    extra: tuple[str, ...] = (),
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
        *extra,
    ]
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def reply(to: SipRequest, status: int, reason: str = "OK", extra: str = "") -> bytes:
    copied = "".join(f"{n}: {to.headers[n]}\r\n" for n in ("Via", "From", "To", "Call-ID", "CSeq"))
    return f"SIP/2.0 {status} {reason}\r\n{copied}{extra}Content-Length: 0\r\n\r\n".encode()


Harness = tuple[UserAgent, RawPeer, list[SipCall]]
StartHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def harness() -> AsyncIterator[StartHarness]:
    opened: list[tuple[UserAgent, RawPeer]] = []

    async def start(
        handler: Callable[[SipCall], Awaitable[None]] | None = None, max_calls: int = 10, **options: object
    ) -> Harness:
        calls: list[SipCall] = []

        async def on_call(call: SipCall) -> None:
            calls.append(call)
            if handler is not None:
                await handler(call)
            else:
                await call.ended.wait()

        pool = options.pop("port_pool", None)
        ua = UserAgent(
            advertised_host="127.0.0.1",
            port_pool=pool if isinstance(pool, RtpPortPool) else RtpPortPool(36000, 36999),
            clock=MediaClock(),
            on_call=on_call,
            max_calls=max_calls,
            **options,  # type: ignore[arg-type]
        )
        await ua.start("127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(RawPeer, local_addr=("127.0.0.1", 0))
        opened.append((ua, peer))
        return ua, peer, calls

    yield start
    for ua, peer in opened:
        await ua.close(grace_s=0.05)  # the raw peer never answers our BYEs
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


async def confirmed_call(ua: UserAgent, peer: RawPeer, calls: list[SipCall], media_port: int = 9) -> str:
    """INVITE, 200, ACK; returns the agent's tag once the agent's handler runs."""
    ok = await answered_call(ua, peer, media_port)
    to_tag = ok.headers["To"].split("tag=")[1]
    peer.send(request("ACK", peer.port, branch="z9hG4bK-ack", to_tag=to_tag), ("127.0.0.1", ua.port))
    for _ in range(100):
        if calls:
            break
        await asyncio.sleep(0.01)
    assert calls
    return to_tag


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition not reached")


# --- the basics ----------------------------------------------------------------------------------------


async def test_options_is_answered_with_allow(harness: StartHarness) -> None:
    ua, peer, _ = await harness()
    peer.send(request("OPTIONS", peer.port), ("127.0.0.1", ua.port))
    response = await peer.response()
    assert response.status == 200
    assert "INFO" in response.headers.get_all("Allow")


async def test_invite_answered_then_caller_hangs_up(harness: StartHarness) -> None:
    ua, peer, calls = await harness()
    ok = await answered_call(ua, peer)
    answer = SessionDescription.parse(ok.body)
    assert answer.media[0].formats[0] == 0
    to_tag = await confirmed_call_from(ua, peer, calls, ok)
    assert calls[0].remote_number == "+15550100002"
    peer.send(request("BYE", peer.port, branch="z9hG4bK-bye", cseq=2, to_tag=to_tag), ("127.0.0.1", ua.port))
    assert (await peer.response()).status == 200
    await asyncio.wait_for(calls[0].ended.wait(), 1)
    assert calls[0].hangup_by == "caller" and calls[0].end_reason == "bye"
    assert not ua.calls


async def confirmed_call_from(ua: UserAgent, peer: RawPeer, calls: list[SipCall], ok: SipResponse) -> str:
    to_tag = ok.headers["To"].split("tag=")[1]
    peer.send(request("ACK", peer.port, branch="z9hG4bK-ack", to_tag=to_tag), ("127.0.0.1", ua.port))
    await wait_until(lambda: bool(calls))
    return to_tag


async def test_retransmitted_invite_is_answered_from_the_transaction(harness: StartHarness) -> None:
    ua, peer, _ = await harness()
    ok = await answered_call(ua, peer)
    peer.send(request("INVITE", peer.port, body=OFFER_PCMU.format(port=9)), ("127.0.0.1", ua.port))
    again = await peer.response()
    assert again.status == 200
    assert again.body == ok.body  # same answer, no second call set up
    assert len(ua.calls) == 1


async def test_unanswered_2xx_is_retransmitted_until_ack(harness: StartHarness) -> None:
    ua, peer, calls = await harness()
    ok = await answered_call(ua, peer)
    # No ACK: RFC 3261 13.3.1.4 retransmits the 2xx after T1 (0.5 s).
    again = await peer.response(timeout=1.5)
    assert again.status == 200 and again.headers["Call-ID"] == ok.headers["Call-ID"]
    await confirmed_call_from(ua, peer, calls, ok)
    peer.drain()
    await peer.expect_silence(1.2)  # the ACK stopped the retransmissions


async def test_missing_ack_ends_the_call_with_bye(harness: StartHarness) -> None:
    from telephony.sip.transaction import TimerConfig

    ua, peer, _ = await harness(timers=TimerConfig(t1=0.02, t2=0.08))
    await answered_call(ua, peer)
    bye = await peer.request("BYE", timeout=3)  # 64*T1 = 1.28 s without ACK
    assert bye.headers["Call-ID"] == "call-1@test"
    peer.send(reply(bye, 200), ("127.0.0.1", ua.port))
    await wait_until(lambda: not ua.calls)


async def test_no_common_codec_gets_488_at_once(harness: StartHarness) -> None:
    ua, peer, _ = await harness()
    peer.send(request("INVITE", peer.port, body=OFFER_G729.format(port=9)), ("127.0.0.1", ua.port))
    refused = await peer.receive()
    assert isinstance(refused, SipResponse) and refused.status == 488
    # Timer G retransmits the failure until the ACK arrives (17.2.1) ...
    assert (await peer.response(timeout=1.5)).status == 488
    tag = refused.headers["To"].split("tag=")[1] if "tag=" in refused.headers["To"] else None
    peer.send(request("ACK", peer.port, to_tag=tag), ("127.0.0.1", ua.port))
    peer.drain()
    await peer.expect_silence(1.2)  # ... and not after
    assert not ua.calls


async def test_over_capacity_gets_503_with_retry_after_at_once(harness: StartHarness) -> None:
    ua, peer, calls = await harness(max_calls=1)
    await confirmed_call(ua, peer, calls)
    peer.drain()
    second = request(
        "INVITE", peer.port, call_id="call-2@test", branch="z9hG4bK-2", body=OFFER_PCMU.format(port=9)
    )
    peer.send(second, ("127.0.0.1", ua.port))
    refused = await peer.receive()  # no 100 Trying first
    assert isinstance(refused, SipResponse) and refused.status == 503
    assert refused.headers.get("Retry-After") == "5"


async def test_malformed_request_gets_400_with_reason(harness: StartHarness) -> None:
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
    assert (await peer.response()).status == 200
    assert ua.open_transactions >= 1  # the OPTIONS waits out Timer J, then goes


@pytest.mark.parametrize(
    ("method", "status"), [("SUBSCRIBE", 405), ("FROBNICATE", 501), ("BYE", 481), ("INFO", 481)]
)
async def test_requests_we_do_not_serve(harness: StartHarness, method: str, status: int) -> None:
    ua, peer, _ = await harness()
    peer.send(request(method, peer.port), ("127.0.0.1", ua.port))
    assert (await peer.response()).status == status


async def test_required_extension_gets_420(harness: StartHarness) -> None:
    ua, peer, _ = await harness()
    invite = request("INVITE", peer.port, body=OFFER_PCMU.format(port=9), extra=("Require: 100rel",))
    peer.send(invite, ("127.0.0.1", ua.port))
    refused = await peer.response()
    assert refused.status == 420 and refused.headers["Unsupported"] == "100rel"


async def test_agent_hangup_sends_bye_and_rtp_flows_both_ways(harness: StartHarness) -> None:
    loop = asyncio.get_running_loop()
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
    answer = SessionDescription.parse(ok.body)
    agent_media = ("127.0.0.1", answer.media[0].port)
    await confirmed_call_from(ua, peer, calls, ok)
    for seq in range(5):
        packet = RtpPacket(
            payload_type=0, sequence_number=seq, timestamp=seq * 160, ssrc=7, payload=b"\x7f" * 160
        )
        rtp_peer.send(bytes(packet), agent_media)
    bye = await peer.request("BYE", timeout=3)
    peer.send(reply(bye, 200), ("127.0.0.1", ua.port))
    packets = [RtpPacket.parse(data) for data in rtp_peer.drain() if data[1] & 0x7F in (0, 101)]
    speech = [p for p in packets if p.payload != b"\xff" * 160]
    assert len(speech) == 10  # 200 ms in 20 ms packets
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in itertools.pairwise(packets))
    await wait_until(lambda: len(heard) == 5)
    assert all(len(frame) == 320 for frame in heard)
    assert calls[0].hangup_by == "agent"
    assert rtp_peer.transport is not None
    rtp_peer.transport.close()


# --- CANCEL, ringing ------------------------------------------------------------------------------------


async def test_cancel_while_ringing_gets_487(harness: StartHarness) -> None:
    ua, peer, calls = await harness(ring_ms=3000)
    peer.send(request("INVITE", peer.port, body=OFFER_PCMU.format(port=9)), ("127.0.0.1", ua.port))
    assert (await peer.response(180)).status == 180
    peer.send(request("CANCEL", peer.port), ("127.0.0.1", ua.port))
    cancelled = await peer.response(200)
    assert cancelled.headers["CSeq"] == "1 CANCEL"
    terminated = await peer.response(487)
    assert terminated.headers["CSeq"] == "1 INVITE"
    peer.send(
        request("ACK", peer.port, to_tag=terminated.headers["To"].split("tag=")[1]), ("127.0.0.1", ua.port)
    )
    await asyncio.sleep(0.1)
    peer.drain()
    await peer.expect_silence(0.8)
    assert not ua.calls and not calls
    # A CANCEL for nothing at all.
    peer.send(request("CANCEL", peer.port, branch="z9hG4bK-none"), ("127.0.0.1", ua.port))
    assert (await peer.response()).status == 481


async def test_close_refuses_a_ringing_invite_with_503(harness: StartHarness) -> None:
    # Shutting down while a call rings: the caller hears 503 at once (RFC 3261 21.5.4, no Retry-After, so
    # its proxy may try another server) instead of retransmitting into a dead socket until Timer B.
    ua, peer, calls = await harness(ring_ms=3000)
    peer.send(request("INVITE", peer.port, body=OFFER_PCMU.format(port=9)), ("127.0.0.1", ua.port))
    ringing = await peer.response(180)
    await ua.close(grace_s=0.1)
    refused = await peer.response(503)
    assert refused.headers["CSeq"] == "1 INVITE"
    assert refused.headers["To"] == ringing.headers["To"]
    assert "Retry-After" not in refused.headers
    await peer.expect_silence(0.3)
    assert not ua.calls and not calls


class GatedPortPool(RtpPortPool):
    """Holds every open() until `release` is set (the answer is then half-way: ringing over, RTP socket
    still being opened), and remembers the ports it handed out."""

    def __init__(self) -> None:
        super().__init__(36000, 36999)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.ports: list[int] = []

    async def open(
        self, host: str, factory: Callable[[], RtpStream]
    ) -> tuple[asyncio.DatagramTransport, RtpStream, int]:
        self.entered.set()
        await self.release.wait()
        opened = await super().open(host, factory)
        self.ports.append(opened[2])
        return opened


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("answering", [False, True], ids=["ringing", "opening-rtp"])
async def test_bye_in_the_early_dialog_ends_the_invite_with_487(
    harness: StartHarness, answering: bool
) -> None:
    # RFC 3261 15: the caller may send BYE in an early dialog; 15.1.2: 200 to it, 487 to the INVITE. The
    # call is never answered after it, even when the BYE arrives while the RTP socket is being opened.
    pool = GatedPortPool()
    if not answering:
        pool.release.set()
    ua, peer, calls = await harness(ring_ms=0 if answering else 1000, port_pool=pool)
    peer.send(request("INVITE", peer.port, body=OFFER_PCMU.format(port=9)), ("127.0.0.1", ua.port))
    ringing = await peer.response(180)
    to_tag = ringing.headers["To"].split("tag=")[1]
    if answering:
        await asyncio.wait_for(pool.entered.wait(), 2)
    bye = request("BYE", peer.port, branch="z9hG4bK-bye", cseq=2, to_tag=to_tag)
    peer.send(bye, ("127.0.0.1", ua.port))
    responses = [await peer.response(), await peer.response()]
    assert sorted((r.status, r.headers["CSeq"]) for r in responses) == [(200, "2 BYE"), (487, "1 INVITE")]
    assert all(r.headers["To"] == ringing.headers["To"] for r in responses)
    peer.send(request("ACK", peer.port, to_tag=to_tag), ("127.0.0.1", ua.port))
    pool.release.set()
    await asyncio.sleep(1.1 if not answering else 0.1)  # past the ring time / the socket's opening
    await peer.expect_silence(0.5)  # no 200 to the INVITE, ever
    assert not ua.calls and not calls
    assert len(pool.ports) == (1 if answering else 0)  # a socket opened before the BYE was seen: closed
    await wait_until(lambda: all(port_is_free(port) for port in pool.ports))
    # The dialog is gone with the INVITE: another BYE in it finds nothing.
    peer.send(request("BYE", peer.port, branch="z9hG4bK-bye2", cseq=3, to_tag=to_tag), ("127.0.0.1", ua.port))
    assert (await peer.response()).status == 481


# --- admission -----------------------------------------------------------------------------------------


async def test_allowlist_refuses_other_sources_with_403(harness: StartHarness) -> None:
    ua, peer, _ = await harness(allowlist=["192.0.2.0/24"])
    peer.send(request("INVITE", peer.port, body=OFFER_PCMU.format(port=9)), ("127.0.0.1", ua.port))
    assert (await peer.response()).status == 403
    allowed, allowed_peer, _ = await harness(allowlist=["127.0.0.0/8"])
    allowed_peer.send(request("OPTIONS", allowed_peer.port), ("127.0.0.1", allowed.port))
    assert (await allowed_peer.response()).status == 200


async def test_scanners_are_dropped_and_blocked(harness: StartHarness) -> None:
    ua, peer, _ = await harness()
    probe = request("OPTIONS", peer.port, extra=("User-Agent: friendly-scanner",))
    peer.send(probe, ("127.0.0.1", ua.port))
    await peer.expect_silence(0.3)
    # The source stays blocked for a while: even a clean request from it goes unanswered.
    peer.send(request("OPTIONS", peer.port, branch="z9hG4bK-clean"), ("127.0.0.1", ua.port))
    await peer.expect_silence(0.3)
    assert ua.admission.dropped_scanners == 1
    assert ua.open_transactions == 0


# --- in-dialog requests --------------------------------------------------------------------------------


async def test_info_dtmf_reaches_the_sink(harness: StartHarness) -> None:
    digits: list[str] = []

    async def collect(call: SipCall) -> None:
        call.dtmf_sink = digits.append
        await call.ended.wait()

    ua, peer, calls = await harness(handler=collect)
    tag = await confirmed_call(ua, peer, calls)
    bodies = [
        ("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"),
        ("application/dtmf-relay", "Signal=#\r\nDuration=160\r\n"),
        ("application/dtmf", "7"),
    ]
    for cseq, (content_type, body) in enumerate(bodies, start=2):
        info = request(
            "INFO",
            peer.port,
            branch=f"z9hG4bK-i{cseq}",
            cseq=cseq,
            to_tag=tag,
            body=body,
            content_type=content_type,
        )
        peer.send(info, ("127.0.0.1", ua.port))
        assert (await peer.response()).status == 200
    odd = request(
        "INFO", peer.port, branch="z9hG4bK-i9", cseq=9, to_tag=tag, body="x", content_type="text/plain"
    )
    peer.send(odd, ("127.0.0.1", ua.port))
    unsupported = await peer.response()
    assert unsupported.status == 415 and "application/dtmf-relay" in unsupported.headers["Accept"]
    assert digits == ["5", "#", "7"]


@pytest.mark.parametrize(("name", "digit"), [("sipp_info_dtmf_relay.txt", "4"), ("sipp_info_dtmf.txt", "7")])
def test_captured_info_requests_carry_digits(name: str, digit: str) -> None:
    info = parse_message(load_sip(name))
    assert isinstance(info, SipRequest)
    assert dtmf_from_info(info) == digit
    info.body = b"Signal=X\r\n"
    with pytest.raises(SipParseError):
        dtmf_from_info(info)


async def test_out_of_order_cseq_gets_500(harness: StartHarness) -> None:
    ua, peer, calls = await harness()
    tag = await confirmed_call(ua, peer, calls)
    peer.send(request("INFO", peer.port, branch="z9hG4bK-a", cseq=5, to_tag=tag), ("127.0.0.1", ua.port))
    assert (await peer.response()).status == 200
    peer.send(request("INFO", peer.port, branch="z9hG4bK-b", cseq=4, to_tag=tag), ("127.0.0.1", ua.port))
    assert (await peer.response()).status == 500
    peer.send(
        request("BYE", peer.port, branch="z9hG4bK-c", cseq=6, to_tag="not-ours"), ("127.0.0.1", ua.port)
    )
    assert (await peer.response()).status == 481


def hold_offer(port: int, direction: str, host: str = "127.0.0.1", version: int = 2) -> str:
    return (
        OFFER_PCMU.format(port=port)
        .replace("o=- 1 1", f"o=- 1 {version}")
        .replace("c=IN IP4 127.0.0.1", f"c=IN IP4 {host}")
        + f"a={direction}\r\n"
    )


async def test_reinvite_holds_resumes_and_moves_media(harness: StartHarness) -> None:
    ua, peer, calls = await harness()
    ok = await answered_call(ua, peer, media_port=40000)
    tag = await confirmed_call_from(ua, peer, calls, ok)
    call = calls[0]
    first_version = SessionDescription.parse(ok.body).origin.split()[2]

    async def reinvite(cseq: int, body: str) -> SessionDescription:
        peer.send(
            request("INVITE", peer.port, branch=f"z9hG4bK-re{cseq}", cseq=cseq, to_tag=tag, body=body),
            ("127.0.0.1", ua.port),
        )
        answer = await peer.response(200)
        peer.send(
            request("ACK", peer.port, branch=f"z9hG4bK-ra{cseq}", cseq=cseq, to_tag=tag),
            ("127.0.0.1", ua.port),
        )
        return SessionDescription.parse(answer.body)

    held = await reinvite(2, hold_offer(40000, "sendonly"))
    assert held.media[0].direction == "recvonly"
    assert held.origin.split()[2] == str(int(first_version) + 1)  # a changed description, a new version
    assert call.media.direction == "recvonly" and call.media.remote == ("127.0.0.1", 40000)
    resumed = await reinvite(3, hold_offer(40002, "sendrecv", version=3))
    assert resumed.media[0].direction == "sendrecv"
    assert call.media.direction == "sendrecv"
    assert call.media.remote == ("127.0.0.1", 40002)  # the re-INVITE moved the peer's media
    inactive = await reinvite(4, hold_offer(40002, "inactive", version=4))
    assert inactive.media[0].direction == "inactive" and call.media.direction == "inactive"
    old_style = await reinvite(5, hold_offer(40002, "sendrecv", host="0.0.0.0", version=5))
    assert old_style.media[0].port == resumed.media[0].port and call.media.direction == "inactive"
    assert call.state == "confirmed"


async def test_reinvite_with_an_unusable_codec_keeps_the_call(harness: StartHarness) -> None:
    ua, peer, calls = await harness()
    tag = await confirmed_call(ua, peer, calls)
    peer.send(
        request("INVITE", peer.port, branch="z9hG4bK-g", cseq=2, to_tag=tag, body=OFFER_G729.format(port=9)),
        ("127.0.0.1", ua.port),
    )
    assert (await peer.response(488)).status == 488
    assert calls[0].state == "confirmed" and calls[0].negotiated.codec == "PCMU"


async def test_late_offer_initial_invite_takes_the_answer_from_the_ack(harness: StartHarness) -> None:
    loop = asyncio.get_running_loop()
    _, rtp_peer = await loop.create_datagram_endpoint(RawPeer, local_addr=("127.0.0.1", 0))
    ua, peer, calls = await harness()
    peer.send(request("INVITE", peer.port), ("127.0.0.1", ua.port))
    ok = await peer.response(200)
    offer = SessionDescription.parse(ok.body)
    assert offer.media[0].formats[0] == 0 and offer.media[0].direction == "sendrecv"
    tag = ok.headers["To"].split("tag=")[1]
    answer = OFFER_PCMU.format(port=rtp_peer.port)
    peer.send(
        request("ACK", peer.port, branch="z9hG4bK-ack", to_tag=tag, body=answer), ("127.0.0.1", ua.port)
    )
    await wait_until(lambda: bool(calls))
    call = calls[0]
    assert call.media.remote == ("127.0.0.1", rtp_peer.port) and call.media.direction == "sendrecv"
    packet = await asyncio.wait_for(rtp_peer.inbox.get(), 1.0)  # our RTP goes to the answered address
    assert RtpPacket.parse(packet).payload_type == 0
    # A re-INVITE without SDP: we offer again (PCMU only), the answer comes in its ACK.
    peer.send(request("INVITE", peer.port, branch="z9hG4bK-r", cseq=2, to_tag=tag), ("127.0.0.1", ua.port))
    reoffer = SessionDescription.parse((await peer.response(200)).body)
    assert reoffer.media[0].formats == [0, 101]
    held = hold_offer(rtp_peer.port, "recvonly")
    peer.send(
        request("ACK", peer.port, branch="z9hG4bK-ra", cseq=2, to_tag=tag, body=held), ("127.0.0.1", ua.port)
    )
    await wait_until(lambda: call.media.direction == "sendonly")
    assert rtp_peer.transport is not None
    rtp_peer.transport.close()


def sdp_version(body: bytes) -> int:
    return int(SessionDescription.parse(body).origin.split()[2])  # o=<user> <id> <version> ...


async def solicit_offer(ua: UserAgent, peer: RawPeer, tag: str, cseq: int, answer: str) -> SipResponse:
    """A re-INVITE without SDP (RFC 3261 14.2); its 200 carries our offer, and `answer` goes in the ACK."""
    peer.send(
        request("INVITE", peer.port, branch=f"z9hG4bK-so{cseq}", cseq=cseq, to_tag=tag),
        ("127.0.0.1", ua.port),
    )
    offered = await peer.response(200)
    assert offered.headers["CSeq"] == f"{cseq} INVITE"
    assert offered.headers["Content-Type"] == "application/sdp"
    peer.send(
        request("ACK", peer.port, branch=f"z9hG4bK-sa{cseq}", cseq=cseq, to_tag=tag, body=answer),
        ("127.0.0.1", ua.port),
    )
    return offered


async def test_reinvite_without_sdp_gets_our_offer_and_the_ack_brings_the_answer(
    harness: StartHarness,
) -> None:
    ua, peer, calls = await harness()
    ok = await answered_call(ua, peer, media_port=40000)
    tag = await confirmed_call_from(ua, peer, calls, ok)
    call = calls[0]

    # Nothing changed since our answer: the offer is that description, o= version and all (RFC 3264 8).
    first = await solicit_offer(ua, peer, tag, 2, hold_offer(40002, "recvonly"))
    assert first.body == ok.body
    await wait_until(lambda: call.media.direction == "sendonly")  # the answer in the ACK is applied
    assert call.media.remote == ("127.0.0.1", 40002)

    # An ACK without the answer: the session goes on exactly as it was; no BYE.
    second = await solicit_offer(ua, peer, tag, 3, "")
    assert second.body == ok.body
    await peer.expect_silence(0.6)  # our 200 is not resent either: the ACK was taken
    assert call.state == "confirmed" and call.media.direction == "sendonly"
    assert call.media.remote == ("127.0.0.1", 40002)

    # The caller holds us with an offer; our answer says recvonly (a new version). A solicited offer is
    # made as for a new call (sendrecv), so it differs from that answer: the next version again.
    peer.send(
        request(
            "INVITE", peer.port, branch="z9hG4bK-h4", cseq=4, to_tag=tag, body=hold_offer(40002, "sendonly")
        ),
        ("127.0.0.1", ua.port),
    )
    held = await peer.response(200)
    assert sdp_version(held.body) == sdp_version(ok.body) + 1
    peer.send(request("ACK", peer.port, branch="z9hG4bK-ha4", cseq=4, to_tag=tag), ("127.0.0.1", ua.port))
    third = await solicit_offer(ua, peer, tag, 5, hold_offer(40002, "sendrecv", version=3))
    assert sdp_version(third.body) == sdp_version(held.body) + 1
    offer = SessionDescription.parse(third.body)
    assert offer.media_direction(offer.media[0]) == "sendrecv" and offer.media[0].formats == [0, 101]
    await wait_until(lambda: call.media.direction == "sendrecv")

    # An answer we cannot use (it drops the only codec we offered) cannot be refused any more: BYE.
    await solicit_offer(ua, peer, tag, 6, OFFER_G729.format(port=40002))
    bye = await peer.request("BYE")
    peer.send(reply(bye, 200), ("127.0.0.1", ua.port))
    await asyncio.wait_for(call.ended.wait(), 2)
    assert call.end_reason == "bad-answer" and call.hangup_by == "agent"


OFFER_WITH_VIDEO = OFFER_PCMU + "m=video {video} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"


async def test_our_offer_keeps_the_stream_we_refused_in_its_place(harness: StartHarness) -> None:
    ua, peer, calls = await harness()
    invite = request("INVITE", peer.port, body=OFFER_WITH_VIDEO.format(port=40000, video=40010))
    peer.send(invite, ("127.0.0.1", ua.port))
    ok = await peer.response(200)
    answer = SessionDescription.parse(ok.body)
    assert [(m.media, m.port == 0) for m in answer.media] == [("audio", False), ("video", True)]
    tag = await confirmed_call_from(ua, peer, calls, ok)

    # RFC 3264 8: the new offer keeps every m= line; the refused video stays refused (port 0), in place.
    offered = await solicit_offer(ua, peer, tag, 2, OFFER_WITH_VIDEO.format(port=40004, video=0))
    offer = SessionDescription.parse(offered.body)
    assert [(m.media, m.port == 0) for m in offer.media] == [("audio", False), ("video", True)]
    assert offered.body == ok.body  # and so nothing changed: same version
    await wait_until(lambda: calls[0].media.remote == ("127.0.0.1", 40004))


async def test_reinvite_without_sdp_before_the_ack_of_the_invite(harness: StartHarness) -> None:
    ua, peer, _ = await harness()
    ok = await answered_call(ua, peer, media_port=40000)
    tag = ok.headers["To"].split("tag=")[1]
    [call] = ua.calls.values()
    # The re-INVITE overtakes the INVITE's ACK (RFC 5407 3.1.5); its 200 carries our offer.
    peer.send(
        request("INVITE", peer.port, branch="z9hG4bK-early", cseq=2, to_tag=tag), ("127.0.0.1", ua.port)
    )
    offered = await peer.response(200)
    assert offered.headers["CSeq"] == "2 INVITE" and offered.body == ok.body
    # The INVITE's ACK has no SDP, rightly: the answer to our offer comes in the re-INVITE's ACK only.
    peer.send(request("ACK", peer.port, branch="z9hG4bK-ack", to_tag=tag), ("127.0.0.1", ua.port))
    await wait_until(lambda: call.state == "confirmed")
    peer.send(
        request(
            "ACK", peer.port, branch="z9hG4bK-ack2", cseq=2, to_tag=tag, body=hold_offer(40006, "sendrecv")
        ),
        ("127.0.0.1", ua.port),
    )
    await wait_until(lambda: call.media.remote == ("127.0.0.1", 40006))
    peer.drain()
    await peer.expect_silence(0.6)  # no BYE
    assert call.state == "confirmed"


async def test_rtp_timeout_sends_bye_with_reason(harness: StartHarness) -> None:
    ua, peer, calls = await harness(rtp_timeout_s=0.3)
    await confirmed_call(ua, peer, calls)
    bye = await peer.request("BYE", timeout=3)
    assert bye.headers["Reason"] == 'SIP;cause=408;text="RTP timeout"'
    peer.send(reply(bye, 200), ("127.0.0.1", ua.port))
    await asyncio.wait_for(calls[0].ended.wait(), 1)
    assert calls[0].hangup_by == "agent" and calls[0].end_reason == "rtp-timeout"


# --- transfer ------------------------------------------------------------------------------------------


def notify(port: int, tag: str, cseq: int, sipfrag: str, state: str) -> bytes:
    return request(
        "NOTIFY",
        port,
        branch=f"z9hG4bK-n{cseq}",
        cseq=cseq,
        to_tag=tag,
        body=sipfrag,
        content_type="message/sipfrag;version=2.0",
        extra=("Event: refer", f"Subscription-State: {state}"),
    )


async def test_blind_transfer_with_refer_and_notify(harness: StartHarness) -> None:
    results: list[bool] = []

    async def transfer(call: SipCall) -> None:
        results.append(await call.transfer("sip:escalation@127.0.0.1:5099"))
        await call.ended.wait()

    ua, peer, calls = await harness(handler=transfer)
    tag = await confirmed_call(ua, peer, calls)
    refer = await peer.request("REFER")
    assert refer.headers["Refer-To"] == "<sip:escalation@127.0.0.1:5099>"
    assert refer.uri == f"sip:caller@127.0.0.1:{peer.port}"  # the remote target (our Contact)
    peer.send(reply(refer, 202, "Accepted"), ("127.0.0.1", ua.port))
    peer.send(
        notify(peer.port, tag, 2, "SIP/2.0 100 Trying\r\n", "active;expires=60"), ("127.0.0.1", ua.port)
    )
    assert (await peer.response()).status == 200
    # A NOTIFY that is not about the transfer is refused, and the transfer goes on.
    peer.send(notify(peer.port, tag, 3, "garbage", "active"), ("127.0.0.1", ua.port))
    assert (await peer.response()).status == 400
    peer.send(
        notify(peer.port, tag, 4, "SIP/2.0 200 OK\r\n", "terminated;reason=noresource"),
        ("127.0.0.1", ua.port),
    )
    assert (await peer.response()).status == 200
    bye = await peer.request("BYE")
    peer.send(reply(bye, 200), ("127.0.0.1", ua.port))
    await wait_until(lambda: bool(results))
    assert results == [True]
    assert calls[0].end_reason == "transfer"


async def test_refused_transfer_keeps_the_call(harness: StartHarness) -> None:
    results: list[bool] = []

    async def transfer(call: SipCall) -> None:
        results.append(await call.transfer("sip:escalation@127.0.0.1"))
        await call.ended.wait()

    ua, peer, calls = await harness(handler=transfer)
    tag = await confirmed_call(ua, peer, calls)
    refer = await peer.request("REFER")
    peer.send(reply(refer, 202, "Accepted"), ("127.0.0.1", ua.port))
    peer.send(notify(peer.port, tag, 2, "SIP/2.0 486 Busy Here\r\n", "terminated"), ("127.0.0.1", ua.port))
    assert (await peer.response()).status == 200
    await wait_until(lambda: bool(results))
    assert results == [False] and calls[0].state == "confirmed"
    # A NOTIFY after the transfer is over has no subscription left.
    peer.send(notify(peer.port, tag, 3, "SIP/2.0 200 OK\r\n", "terminated"), ("127.0.0.1", ua.port))
    assert (await peer.response()).status == 481

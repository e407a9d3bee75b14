"""SIP over stream transports: Content-Length framing (RFC 3261 18.3), TCP and TLS on loopback sockets."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from telephony.media import MediaClock, RtpPortPool
from telephony.sip.call import CallFailed
from telephony.sip.message import SipRequest, SipResponse, Via, parse_message
from telephony.sip.transport import KEEPALIVE_PING, FramingError, StreamFramer
from telephony.sip.ua import SipCall, UserAgent
from tests.services import unavailable
from tests.telephony import listening
from tests.telephony.listening import start_with_tcp
from tests.telephony.sip_samples import load_sip
from tests.telephony.test_ua import OFFER_PCMU, request

INVITE = load_sip("sipp_uac_invite.txt")
OK = load_sip("response_200_ok.txt")


# --- framing ------------------------------------------------------------------------------------------


def test_framer_reassembles_messages_cut_anywhere() -> None:
    stream = INVITE + OK + INVITE
    for chunk in (1, 7, 100, len(stream)):
        framer = StreamFramer()
        out: list[bytes] = []
        for start in range(0, len(stream), chunk):
            out += framer.feed(stream[start : start + chunk])
        assert out == [INVITE, OK, INVITE]
        assert framer.buffered == 0


def test_framer_reports_keepalive_pings_and_skips_stray_crlf() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []  # maybe half a ping
    assert framer.feed(b"\r\n") == [KEEPALIVE_PING]
    assert framer.feed(INVITE + b"\r\n" + OK) == [INVITE, OK]


def test_framer_without_content_length_frames_an_empty_body() -> None:
    bare = b"OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\n\n"
    assert StreamFramer().feed(bare + bare) == [bare, bare]


@pytest.mark.parametrize(
    "data",
    [
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 70000\r\n\r\n",
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\n",
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n",
        b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * 70000,
    ],
    ids=["too-long-body", "conflicting-length", "negative-length", "endless-header"],
)
def test_framer_refuses_what_cannot_be_framed(data: bytes) -> None:
    with pytest.raises(FramingError):
        StreamFramer().feed(data)


# --- real stream transports ---------------------------------------------------------------------------


class StreamPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = StreamFramer()
        self.pending: list[bytes] = []

    async def receive(self, timeout: float = 3.0) -> SipRequest | SipResponse:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            assert data, "connection closed"
            self.pending += [m for m in self.framer.feed(data) if m != KEEPALIVE_PING]
        return parse_message(self.pending.pop(0))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


@pytest.fixture
async def agents() -> AsyncIterator[list[UserAgent]]:
    started: list[UserAgent] = []
    yield started
    for ua in started:
        await ua.close()


async def start_agent(
    agents: list[UserAgent], low: int, **options: object
) -> tuple[UserAgent, list[SipCall]]:
    calls: list[SipCall] = []

    async def on_call(call: SipCall) -> None:
        calls.append(call)
        await call.ended.wait()

    def make() -> UserAgent:
        return UserAgent(
            advertised_host="127.0.0.1",
            port_pool=RtpPortPool(low, low + 99),
            clock=MediaClock(),
            on_call=on_call,
            **options,  # type: ignore[arg-type]
        )

    # TCP on the UDP port's number for sure: with port 0 it was missing now and then (KeyError 'TCP').
    ua = await start_with_tcp(make)
    agents.append(ua)
    return ua, calls


def over(transport: str, data: bytes) -> bytes:
    return data.replace(b"SIP/2.0/UDP", f"SIP/2.0/{transport}".encode())


def tcp_listener_with_free_udp_twin() -> socket.socket:
    """A TCP socket listening on a port whose UDP port of the same number is free: what made agents that
    picked their UDP port themselves (port 0) start without TCP now and then."""
    for _ in range(100):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(listener.getsockname())
            except OSError:
                listener.close()
                continue
        return listener
    pytest.fail("no TCP port with a free UDP twin")


async def test_agents_that_need_tcp_never_start_on_a_taken_tcp_port(
    agents: list[UserAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    def make() -> UserAgent:
        ua = UserAgent(advertised_host="127.0.0.1", port_pool=RtpPortPool(37900, 37999), clock=MediaClock())
        agents.append(ua)
        return ua

    with tcp_listener_with_free_udp_twin() as listener:
        taken: int = listener.getsockname()[1]
        plain = make()
        await plain.start("127.0.0.1", taken)
        assert plain.port == taken and "TCP" not in plain.ports  # the flake: UDP only, a warning logged
        await plain.close()
        # start_with_tcp is offered the same port first (as if someone took its TCP twin after the check),
        # then a free one: it leaves the taken one and ends up with TCP.
        offered = iter([taken])
        real_pick = listening.free_udp_and_tcp_port
        monkeypatch.setattr(
            listening, "free_udp_and_tcp_port", lambda host: next(offered, None) or real_pick(host)
        )
        ua = await start_with_tcp(make)
    assert ua.port != taken and ua.ports["TCP"] == ua.port


async def test_options_over_tcp_in_pieces_and_keepalive(agents: list[UserAgent]) -> None:
    ua, _ = await start_agent(agents, 37000)
    assert ua.ports["TCP"] == ua.port
    peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", ua.ports["TCP"]))
    options = over("TCP", request("OPTIONS", 5060))
    await peer.send(options[:30])
    await asyncio.sleep(0.05)
    await peer.send(options[30:])
    response = await peer.receive()
    assert isinstance(response, SipResponse) and response.status == 200
    assert Via.parse(response.headers["Via"]).transport == "TCP"
    await peer.send(KEEPALIVE_PING)
    assert await asyncio.wait_for(peer.reader.readexactly(2), 2) == b"\r\n"  # RFC 5626 pong
    peer.writer.close()


async def test_call_over_tcp_reuses_the_connection_for_our_bye(agents: list[UserAgent]) -> None:
    ua, calls = await start_agent(agents, 37100)
    peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", ua.ports["TCP"]))
    await peer.send(over("TCP", request("INVITE", 5060, body=OFFER_PCMU.format(port=9))))
    statuses: list[int] = []
    while not statuses or statuses[-1] < 200:
        response = await peer.receive()
        assert isinstance(response, SipResponse)
        statuses.append(response.status)
    assert statuses == [100, 180, 200]
    to_tag = response.headers["To"].split("tag=")[1]
    assert ";transport=tcp" in response.headers["Contact"]
    await peer.send(over("TCP", request("ACK", 5060, branch="z9hG4bK-ack", to_tag=to_tag)))
    while not calls:
        await asyncio.sleep(0.01)
    hangup = asyncio.create_task(calls[0].hangup())
    bye = await peer.receive()
    assert isinstance(bye, SipRequest) and bye.method == "BYE"
    assert Via.parse(bye.headers["Via"]).transport == "TCP"
    await peer.send(
        b"SIP/2.0 200 OK\r\n"
        + b"".join(f"{n}: {bye.headers[n]}\r\n".encode() for n in ("Via", "From", "To", "Call-ID", "CSeq"))
        + b"Content-Length: 0\r\n\r\n"
    )
    await asyncio.wait_for(hangup, 2)
    assert calls[0].hangup_by == "agent"
    peer.writer.close()


async def test_user_agents_call_each_other_over_tcp(agents: list[UserAgent]) -> None:
    callee, calls = await start_agent(agents, 37200)
    caller, _ = await start_agent(agents, 37300, user="caller")
    call = await caller.invite(
        f"sip:agent@127.0.0.1:{callee.ports['TCP']};transport=tcp", from_uri="<sip:+15550100009@127.0.0.1>"
    )
    assert call.transport == "TCP" and call.state == "confirmed"
    while not calls:
        await asyncio.sleep(0.01)
    assert calls[0].transport == "TCP" and calls[0].remote_number == "+15550100009"
    await call.hangup()
    await asyncio.wait_for(calls[0].ended.wait(), 2)
    assert calls[0].hangup_by == "caller"


async def test_unreachable_tcp_peer_fails_fast(agents: list[UserAgent]) -> None:
    caller, _ = await start_agent(agents, 37400, user="caller")
    with pytest.raises(CallFailed) as failure:
        await asyncio.wait_for(caller.invite("sip:nobody@127.0.0.1:9;transport=tcp"), 5)
    assert failure.value.status == 503  # the transport error, not 32 s of Timer B
    assert caller.open_transactions == 0


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl not found on PATH (install the Debian package openssl)")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_with_a_self_signed_certificate(agents: list[UserAgent], tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    callee, calls = await start_agent(agents, 37500, tls_server=server_context)
    tls_port = callee.ports["TLS"]
    # A raw TLS client first: the listener speaks SIP inside TLS.
    peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", tls_port, ssl=client_context))
    await peer.send(over("TLS", request("OPTIONS", 5061)))
    response = await peer.receive()
    assert isinstance(response, SipResponse) and response.status == 200
    peer.writer.close()
    # Then a whole call from another user agent that verifies the certificate.
    caller, _ = await start_agent(agents, 37600, user="caller", tls_client=client_context)
    call = await caller.invite(f"sip:agent@127.0.0.1:{tls_port};transport=tls")
    assert call.transport == "TLS"
    while not calls:
        await asyncio.sleep(0.01)
    assert calls[0].transport == "TLS"
    await calls[0].hangup()
    await asyncio.wait_for(call.ended.wait(), 2)
    assert call.hangup_by == "callee"


async def test_tls_refuses_an_unverified_server(agents: list[UserAgent], tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    callee, _ = await start_agent(agents, 37700, tls_server=server_context)
    caller, _ = await start_agent(agents, 37800, user="caller")  # system CAs only: the cert is unknown
    with pytest.raises(CallFailed) as failure:
        await asyncio.wait_for(caller.invite(f"sip:agent@127.0.0.1:{callee.ports['TLS']};transport=tls"), 5)
    assert failure.value.status == 503

"""The user agent as a client: INVITE through a trunk with digest auth, CANCEL, REGISTER with refresh."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from telephony.media import MediaClock, RtpPortPool
from telephony.sip.auth import Credentials, verify_digest
from telephony.sip.message import SipRequest, Via, make_response
from telephony.sip.outbound import RegistrationConfig, SipTrunk
from telephony.sip.transaction import TimerConfig
from telephony.sip.ua import CallFailed, UserAgent
from tests.telephony.test_ua import OFFER_PCMU, RawPeer

PASSWORD = "s3cret-trunk"
CHALLENGE_MD5 = 'Digest realm="carrier.example", nonce="n-1", qop="auth", algorithm=MD5'
CHALLENGE_SHA = 'Digest realm="carrier.example", nonce="n-2", qop="auth", algorithm=SHA-256'

Start = Callable[..., Awaitable[tuple[UserAgent, RawPeer]]]


@pytest.fixture
async def client() -> AsyncIterator[Start]:
    opened: list[tuple[UserAgent, RawPeer]] = []

    async def start(**options: object) -> tuple[UserAgent, RawPeer]:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(RawPeer, local_addr=("127.0.0.1", 0))
        factory = options.pop("factory", None)
        if callable(factory):
            options.update(factory(peer.port))
        ua = UserAgent(
            advertised_host="127.0.0.1",
            port_pool=RtpPortPool(38000, 38999),
            clock=MediaClock(),
            user="switchboard",
            **options,  # type: ignore[arg-type]
        )
        await ua.start("127.0.0.1", 0)
        opened.append((ua, peer))
        return ua, peer

    yield start
    for ua, peer in opened:
        await ua.close(grace_s=0.2)
        if peer.transport is not None:
            peer.transport.close()


def answer(
    request: SipRequest, status: int, *, extra: list[tuple[str, str]] | None = None, sdp: str = ""
) -> bytes:
    response = make_response(
        request,
        status,
        to_tag="trunk-tag" if status > 100 else None,
        body=sdp.encode(),
        content_type="application/sdp" if sdp else None,
        extra=extra,
    )
    return bytes(response)


def ua_addr(ua: UserAgent) -> tuple[str, int]:
    return ("127.0.0.1", ua.port)


async def test_invite_through_a_trunk_answers_a_407_challenge(client: Start) -> None:
    ua, peer = await client(
        factory=lambda port: {
            "trunks": [SipTrunk("carrier", "127.0.0.1", port, username="agent-7", password=PASSWORD)]
        }
    )
    placing = asyncio.create_task(ua.invite("+15550100003", trunk="carrier"))
    first = await peer.request("INVITE")
    assert first.uri == "sip:+15550100003@127.0.0.1" and "Proxy-Authorization" not in first.headers
    peer.send(answer(first, 100), ua_addr(ua))
    peer.send(answer(first, 407, extra=[("Proxy-Authenticate", CHALLENGE_MD5)]), ua_addr(ua))
    ack = await peer.request("ACK")  # the transaction's own ACK for the 407, same branch (17.1.1.3)
    assert Via.parse(ack.headers["Via"]).branch == Via.parse(first.headers["Via"]).branch
    second = await peer.request("INVITE")
    assert second.headers["Call-ID"] == first.headers["Call-ID"]
    assert int(second.headers["CSeq"].split()[0]) == int(first.headers["CSeq"].split()[0]) + 1
    assert verify_digest("INVITE", second.uri, second.headers["Proxy-Authorization"], PASSWORD, nonce="n-1")
    sdp = OFFER_PCMU.format(port=41000)
    peer.send(
        answer(second, 200, sdp=sdp, extra=[("Contact", f"<sip:trunk@127.0.0.1:{peer.port}>")]), ua_addr(ua)
    )
    call = await asyncio.wait_for(placing, 3)
    ack2 = await peer.request("ACK")
    assert ack2.headers["CSeq"] == second.headers["CSeq"].replace("INVITE", "ACK")
    assert Via.parse(ack2.headers["Via"]).branch != Via.parse(second.headers["Via"]).branch
    assert call.state == "confirmed" and call.media.remote == ("127.0.0.1", 41000)
    # A retransmitted 200 means our ACK was lost: it is sent again (13.2.2.4).
    peer.send(answer(second, 200, sdp=sdp), ua_addr(ua))
    assert (await peer.request("ACK")).headers["CSeq"] == ack2.headers["CSeq"]
    # The trunk challenges the BYE too: the same credentials answer it.
    hangup = asyncio.create_task(call.hangup())
    bye = await peer.request("BYE")
    assert bye.uri == f"sip:trunk@127.0.0.1:{peer.port}"
    peer.send(answer(bye, 401, extra=[("WWW-Authenticate", CHALLENGE_SHA)]), ua_addr(ua))
    bye2 = await peer.request("BYE")
    assert "algorithm=SHA-256" in bye2.headers["Authorization"]
    assert verify_digest("BYE", bye2.uri, bye2.headers["Authorization"], PASSWORD, nonce="n-2")
    peer.send(answer(bye2, 200), ua_addr(ua))
    await asyncio.wait_for(hangup, 3)
    assert call.hangup_by == "caller"


async def test_wrong_credentials_fail_the_call(client: Start) -> None:
    ua, peer = await client()
    placing = asyncio.create_task(
        ua.invite(f"sip:+15550100004@127.0.0.1:{peer.port}", credentials=Credentials("agent-7", "wrong"))
    )
    for _ in range(2):
        invite = await peer.request("INVITE")
        peer.send(answer(invite, 401, extra=[("WWW-Authenticate", CHALLENGE_MD5)]), ua_addr(ua))
    with pytest.raises(CallFailed) as failure:
        await asyncio.wait_for(placing, 3)
    assert failure.value.status == 401
    assert not ua.calls


async def test_ringing_too_long_sends_cancel(client: Start) -> None:
    ua, peer = await client(timers=TimerConfig(timer_c=0.3))
    placing = asyncio.create_task(ua.invite(f"sip:+15550100005@127.0.0.1:{peer.port}"))
    invite = await peer.request("INVITE")
    peer.send(answer(invite, 180), ua_addr(ua))
    cancel = await peer.request("CANCEL", timeout=3)
    assert Via.parse(cancel.headers["Via"]).branch == Via.parse(invite.headers["Via"]).branch
    peer.send(answer(cancel, 200), ua_addr(ua))
    peer.send(answer(invite, 487), ua_addr(ua))
    with pytest.raises(CallFailed) as failure:
        await asyncio.wait_for(placing, 3)
    assert failure.value.status == 487


async def test_register_with_challenge_refresh_and_unregister(client: Start) -> None:
    ua, peer = await client(
        factory=lambda port: {
            "registrations": [
                RegistrationConfig(
                    registrar=f"sip:127.0.0.1:{port}",
                    aor="sip:1001@pbx.example",
                    username="1001",
                    password=PASSWORD,
                    expires=2,
                )
            ]
        }
    )
    first = await peer.request("REGISTER")
    assert first.headers["To"] == "<sip:1001@pbx.example>" and first.headers["Expires"] == "2"
    assert first.headers["Contact"] == f"<sip:1001@127.0.0.1:{ua.port}>"
    peer.send(answer(first, 401, extra=[("WWW-Authenticate", CHALLENGE_MD5)]), ua_addr(ua))
    second = await peer.request("REGISTER")
    assert verify_digest("REGISTER", second.uri, second.headers["Authorization"], PASSWORD)
    contact = f"{second.headers['Contact']};expires=2"
    peer.send(answer(second, 200, extra=[("Contact", contact)]), ua_addr(ua))
    await asyncio.sleep(0.05)
    assert ua.registrations[0].registered(asyncio.get_running_loop().time())
    # Refreshed before expiry (at half of 2 s), same Call-ID, next CSeq, credentials sent up front.
    refresh = await peer.request("REGISTER", timeout=3)
    assert refresh.headers["Call-ID"] == first.headers["Call-ID"]
    assert int(refresh.headers["CSeq"].split()[0]) == int(second.headers["CSeq"].split()[0]) + 1
    assert "Authorization" in refresh.headers
    peer.send(answer(refresh, 200, extra=[("Contact", contact)]), ua_addr(ua))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(ua.close(grace_s=0.2))
    goodbye = await peer.request("REGISTER", timeout=3)
    assert goodbye.headers["Expires"] == "0"
    peer.send(answer(goodbye, 200), ua_addr(ua))
    await asyncio.wait_for(closing, 3)

"""The user agent as a client: INVITE through a trunk with digest auth, CANCEL, REGISTER with refresh, and
the 2xx that comes when no call wants it any more (after Timer B, across our CANCEL, from a second fork)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from telephony.media import MediaClock, RtpPortPool
from telephony.sip.auth import Credentials, verify_digest
from telephony.sip.message import SipRequest, SipResponse, Via, make_response
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
    # 13.2.2.4: the ACK carries the INVITE's credentials.
    assert ack2.headers["Proxy-Authorization"] == second.headers["Proxy-Authorization"]
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


async def test_giving_up_on_an_invite_that_answered_a_challenge_cancels_that_invite(client: Start) -> None:
    # The CANCEL must match the INVITE ringing now (9.1): the authorised one, with its own branch and
    # CSeq, not the first one, whose transaction the 407 ended.
    ua, peer = await client(
        factory=lambda port: {
            "trunks": [SipTrunk("carrier", "127.0.0.1", port, username="agent-7", password=PASSWORD)]
        }
    )
    placing = asyncio.create_task(ua.invite("+15550100009", trunk="carrier"))
    first = await peer.request("INVITE")
    peer.send(answer(first, 100), ua_addr(ua))
    peer.send(answer(first, 407, extra=[("Proxy-Authenticate", CHALLENGE_MD5)]), ua_addr(ua))
    second = await peer.request("INVITE")
    peer.send(answer(second, 180), ua_addr(ua))
    await asyncio.sleep(0.05)
    placing.cancel()
    cancel = await peer.request("CANCEL", timeout=1)
    assert Via.parse(cancel.headers["Via"]).branch == Via.parse(second.headers["Via"]).branch
    assert cancel.headers["CSeq"] == second.headers["CSeq"].replace("INVITE", "CANCEL")
    peer.send(answer(cancel, 200), ua_addr(ua))
    peer.send(answer(second, 487), ua_addr(ua))
    with pytest.raises(asyncio.CancelledError):
        await placing


async def test_close_cancels_an_invite_ringing_out(client: Start) -> None:
    # Shutting down while our call rings: a CANCEL (9.1), so the called phone stops ringing, and the
    # INVITE's 487 ends invite().
    ua, peer = await client()
    placing = asyncio.create_task(ua.invite(f"sip:+15550100008@127.0.0.1:{peer.port}"))
    invite = await peer.request("INVITE")
    peer.send(answer(invite, 180), ua_addr(ua))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(ua.close(grace_s=2))
    cancel = await peer.request("CANCEL", timeout=1)
    assert Via.parse(cancel.headers["Via"]).branch == Via.parse(invite.headers["Via"]).branch
    peer.send(answer(cancel, 200), ua_addr(ua))
    peer.send(answer(invite, 487), ua_addr(ua))
    with pytest.raises(CallFailed) as failure:
        await asyncio.wait_for(placing, 1)
    assert failure.value.status == 487
    await asyncio.wait_for(closing, 1)  # well within the grace: the 487 ended the wait
    assert not ua.calls


async def test_close_ends_an_invite_still_waiting_for_its_answer(client: Start) -> None:
    # close() stops the timers of our client transactions, so no answer or timeout could end a pending
    # invite() any more: close() must end it itself, and refuse requests sent afterwards. With no
    # provisional response yet, 9.1 does not allow a CANCEL.
    ua, peer = await client()
    placing = asyncio.create_task(ua.invite(f"sip:+15550100006@127.0.0.1:{peer.port}"))
    await peer.request("INVITE")
    await asyncio.sleep(0.05)
    assert not placing.done()
    await asyncio.wait_for(ua.close(grace_s=0.2), 2)
    with pytest.raises(CallFailed) as failure:
        await asyncio.wait_for(placing, 0.5)
    assert (failure.value.status, failure.value.reason) == (503, "user agent closed")
    with pytest.raises(CallFailed) as refused:
        await asyncio.wait_for(ua.invite(f"sip:+15550100007@127.0.0.1:{peer.port}"), 0.5)
    assert (refused.value.status, refused.value.reason) == (503, "user agent closed")
    assert not ua.calls


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


# --- a 2xx no call takes any more (RFC 3261 13.2.2.4) -------------------------------------------------------
def late_ok(invite: SipRequest, to_tag: str, peer: RawPeer) -> bytes:
    response = make_response(
        invite,
        200,
        to_tag=to_tag,
        body=OFFER_PCMU.format(port=41000).encode(),
        content_type="application/sdp",
        extra=[("Contact", f"<sip:{to_tag}@127.0.0.1:{peer.port}>")],
    )
    return bytes(response)


def cseq_number(message: SipRequest | SipResponse) -> int:
    return int(message.headers["CSeq"].split()[0])


async def expect_ack_then_bye(
    ua: UserAgent, peer: RawPeer, invite: SipRequest, to_tag: str
) -> tuple[SipRequest, SipRequest]:
    """The ACK and the BYE a 2xx from `to_tag` gets when nobody wants its dialog; the BYE answered 200."""
    ack = await peer.request("ACK")
    assert ack.headers["CSeq"] == f"{cseq_number(invite)} ACK"
    assert ack.headers["To"].endswith(f";tag={to_tag}")
    assert ack.headers["Call-ID"] == invite.headers["Call-ID"]
    assert ack.uri == f"sip:{to_tag}@127.0.0.1:{peer.port}"  # sent to the Contact of the 2xx
    bye = await peer.request("BYE")
    assert bye.headers["CSeq"] == f"{cseq_number(invite) + 1} BYE"
    assert bye.headers["To"] == ack.headers["To"] and bye.headers["From"] == invite.headers["From"]
    peer.send(answer(bye, 200), ua_addr(ua))
    return ack, bye


async def test_2xx_after_the_invite_timed_out_gets_ack_then_one_bye(client: Start) -> None:
    ua, peer = await client(timers=TimerConfig(t1=0.02, t2=0.08, t4=0.05))  # Timer B: 64*T1 = 1.28 s
    placing = asyncio.create_task(ua.invite(f"sip:+15550100006@127.0.0.1:{peer.port}"))
    invite = await peer.request("INVITE")
    with pytest.raises(CallFailed) as failure:
        await asyncio.wait_for(placing, 3)
    assert failure.value.status == 408
    peer.drain()  # the INVITE's retransmissions

    # The callee answers after all: the session it sets up is ACKed and ended, never handed to anyone.
    peer.send(late_ok(invite, "late", peer), ua_addr(ua))
    ack, _ = await expect_ack_then_bye(ua, peer, invite, "late")
    # The 200 again (our ACK got lost): the same ACK again, and no second BYE.
    peer.send(late_ok(invite, "late", peer), ua_addr(ua))
    again = await peer.request("ACK")
    assert again.headers["Via"] == ack.headers["Via"] and again.headers["CSeq"] == ack.headers["CSeq"]
    await peer.expect_silence(0.5)
    assert ua.calls == {}


async def test_2xx_crossing_our_cancel_gets_ack_then_bye(client: Start) -> None:
    ua, peer = await client()
    placing = asyncio.create_task(ua.invite(f"sip:+15550100007@127.0.0.1:{peer.port}"))
    invite = await peer.request("INVITE")
    peer.send(answer(invite, 180), ua_addr(ua))
    await asyncio.sleep(0.05)
    placing.cancel()  # the caller of invite() gives up while it rings
    cancel = await peer.request("CANCEL")
    # The callee had already answered: 200 to the CANCEL, and a 200 to the INVITE instead of a 487.
    peer.send(answer(cancel, 200), ua_addr(ua))
    peer.send(late_ok(invite, "crossed", peer), ua_addr(ua))
    await expect_ack_then_bye(ua, peer, invite, "crossed")
    with pytest.raises(asyncio.CancelledError):
        await placing
    assert ua.calls == {}


async def test_a_second_2xx_from_a_forked_invite_gets_its_own_ack_and_a_bye(client: Start) -> None:
    ua, peer = await client()
    placing = asyncio.create_task(ua.invite(f"sip:+15550100008@127.0.0.1:{peer.port}"))
    invite = await peer.request("INVITE")
    peer.send(late_ok(invite, "first", peer), ua_addr(ua))
    call = await asyncio.wait_for(placing, 3)
    first_ack = await peer.request("ACK")
    assert first_ack.headers["To"].endswith(";tag=first")

    # A forking proxy passes on a 2xx from a second phone: its own ACK (its To tag), then BYE.
    peer.send(late_ok(invite, "second", peer), ua_addr(ua))
    await expect_ack_then_bye(ua, peer, invite, "second")
    # The first phone's 200 again: the first dialog's ACK, not the second's, and the call goes on.
    peer.send(late_ok(invite, "first", peer), ua_addr(ua))
    again = await peer.request("ACK")
    assert again.headers["To"] == first_ack.headers["To"] and again.headers["Via"] == first_ack.headers["Via"]
    await peer.expect_silence(0.3)
    assert call.state == "confirmed" and call.remote_tag == "first" and list(ua.calls) == [call.call_id]

"""Signatures on the webhooks and the WebSocket handshake, status callbacks, and the over-capacity answer."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable

import httpx
import pytest
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from telephony.twilio.twiml import over_capacity_twiml
from tests.e2e.conftest import RunningServer
from tests.telephony.twilio.conftest import MAX_CALLS, PUBLIC_URL
from tests.telephony.twilio.twilio_peer import TwilioPeer, fetch_call_record, parse_stream_twiml

pytestmark = pytest.mark.e2e


async def finish(peer: TwilioPeer) -> None:
    """What Twilio reports once a call is over; frees the place the voice webhook held for it."""
    response = await peer.post("/twilio/status", peer.webhook_params("completed", CallDuration="1"))
    assert response.status_code == 204


async def test_a_valid_webhook_signature_is_accepted(
    twilio_server: RunningServer, new_peer: Callable[..., TwilioPeer]
) -> None:
    peer = new_peer()
    response = await peer.post("/twilio/voice", peer.webhook_params())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    twiml = parse_stream_twiml(response.text)
    # The stream URL is on the public host, without a query string; the call comes back as parameters.
    assert twiml.url == "wss://switchboard.example.test/twilio/stream"
    assert twiml.parameters == {
        "caller": peer.from_number,
        "called": peer.to_number,
        "callSid": peer.call_sid,
    }
    await finish(peer)


@pytest.mark.parametrize("path", ["/twilio/voice", "/twilio/status"])
async def test_bad_webhook_signatures_are_rejected(
    twilio_server: RunningServer, new_peer: Callable[..., TwilioPeer], path: str
) -> None:
    peer = new_peer()
    params = peer.webhook_params()
    wrong_token = RequestValidator("not-our-token").compute_signature(PUBLIC_URL + path, params)
    assert (await peer.post(path, params, signature=wrong_token)).status_code == 403
    tampered = {**params, "From": "+15550100001"}  # signed as Marcus, sent as Dana
    assert (await peer.post(path, tampered, signature=peer.signature(path, params))).status_code == 403
    assert (await peer.post(path, params, signature=None)).status_code == 403
    # Signed over the address the server listens on rather than the public URL Twilio used.
    local = peer.signature(twilio_server.api + path, params)
    assert (await peer.post(path, params, signature=local)).status_code == 403


async def test_websocket_handshake_signatures(
    twilio_server: RunningServer, new_peer: Callable[..., TwilioPeer]
) -> None:
    peer = new_peer()
    stream_url = f"{PUBLIC_URL.replace('https', 'wss')}/twilio/stream"
    local = peer.local_url(stream_url)
    valid = peer.signature(stream_url)
    async with connect(local, additional_headers={"X-Twilio-Signature": valid}) as websocket:
        await websocket.send('{"event": "connected", "protocol": "Call", "version": "1.0.0"}')
    rejected = {
        "wrong token": RequestValidator("not-our-token").compute_signature(stream_url, {}),
        "another URL": peer.signature(stream_url + "?account=other"),
        "http scheme": peer.signature(f"{PUBLIC_URL}/twilio/stream"),
    }
    for reason, signature in [*rejected.items(), ("missing", None)]:
        headers = {} if signature is None else {"X-Twilio-Signature": signature}
        with pytest.raises(InvalidStatus) as raised:
            async with connect(local, additional_headers=headers):
                pass
        assert raised.value.response.status_code == 403, reason


async def test_status_callbacks_are_idempotent_and_order_insensitive(
    twilio_server: RunningServer, new_peer: Callable[..., TwilioPeer]
) -> None:
    peer = new_peer(from_number="+15550009999", to_number="+15550100001")

    async def status(value: str, **extra: str) -> int:
        params = {**peer.webhook_params(value, **extra), "Direction": "outbound-api"}
        return (await peer.post("/twilio/status", params)).status_code

    assert await status("initiated", SequenceNumber="0") == 204
    assert await status("in-progress", SequenceNumber="2") == 204
    assert await status("ringing", SequenceNumber="1") == 204  # arrived late: no step back
    record = await fetch_call_record(twilio_server.api, peer.call_sid, ended=False)
    assert (record["status"], record["direction"], record["ended_at"]) == (
        "in-progress",
        "outbound-api",
        None,
    )

    assert await status("completed", SequenceNumber="3", CallDuration="42") == 204
    first = await fetch_call_record(twilio_server.api, peer.call_sid)
    for late in ("completed", "ringing", "busy"):  # retried and stray callbacks after the end
        assert await status(late, CallDuration="99") == 204
    again = await fetch_call_record(twilio_server.api, peer.call_sid)
    assert first == again
    assert (again["status"], again["duration_s"], again["transport"]) == ("completed", 42, "twilio")

    assert await status("exploded") == 400
    response = await peer.post("/twilio/status", {"CallStatus": "ringing"})
    assert response.status_code == 400


async def test_over_capacity_callers_hear_a_polite_message_not_an_error(
    twilio_server: RunningServer, new_peer: Callable[..., TwilioPeer]
) -> None:
    streaming = new_peer()
    await streaming.call()
    admitted = [new_peer() for _ in range(MAX_CALLS - 1)]
    for peer in admitted:
        assert (await peer.post("/twilio/voice", peer.webhook_params())).status_code == 200
    turned_away = new_peer()
    response = await turned_away.post("/twilio/voice", turned_away.webhook_params())
    assert response.status_code == 200
    root = ET.fromstring(response.text)
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert "busy" in (root[0].text or "")

    # Places come back as calls end: a status callback for the admitted ones, `stop` for the stream.
    for peer in admitted:
        await finish(peer)
    await streaming.stop()
    await fetch_call_record(twilio_server.api, streaming.call_sid)
    await asyncio.sleep(0.2)
    again = new_peer()
    response = await again.post("/twilio/voice", again.webhook_params())
    assert parse_stream_twiml(response.text).url.endswith("/twilio/stream")
    await finish(again)


def test_an_overflow_number_is_dialled_instead() -> None:
    root = ET.fromstring(over_capacity_twiml("All lines are busy.", "+15550107777"))
    assert [(child.tag, child.text) for child in root] == [("Dial", "+15550107777")]


async def test_unreadable_webhook_bodies_get_a_4xx_not_a_500(twilio_server: RunningServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{twilio_server.api}/twilio/voice", content=b"\xff\xfe\xfd")
    assert response.status_code in (400, 403)

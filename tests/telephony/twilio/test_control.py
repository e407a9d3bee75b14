"""TwilioCallControl through the real SDK against a local server implementing the REST endpoints it uses.

The server plays api.twilio.com for `POST /2010-04-01/Accounts/{AccountSid}/Calls.json` (create) and
`POST .../Calls/{CallSid}.json` (update), as Twilio documents them: HTTP basic auth with the account SID and
auth token, form-encoded bodies with repeated names for lists, JSON Call resources back (201 on create),
and Twilio's error body ({code, message, more_info, status}) on failure. The SDK reaches it through its own
HTTP-client seam: a `TwilioHttpClient` subclass that only swaps the origin of each URL.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest
from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped]
from twilio.http.response import Response  # type: ignore[import-untyped]

from telephony.twilio.control import (
    CallControlRejected,
    CallControlUnavailable,
    OutboundCallOptions,
    TwilioCallControl,
)
from telephony.twilio.endpoint import place_agent_call
from telephony.twilio.twiml import DialNumber, DialQueue, DialSip, EnqueueCaller

ACCOUNT = "AC" + "1" * 32
TOKEN = "local-test-token"
LIVE_CALL = "CA" + "a" * 32
ENDED_CALL = "CA" + "e" * 32
_CALLS = re.compile(r"^/2010-04-01/Accounts/(AC[0-9a-f]{32})/Calls(?:/(CA[0-9a-f]{32}))?\.json$")


@dataclass
class RecordedRequest:
    method: str
    path: str
    form: dict[str, list[str]]
    content_type: str | None


@dataclass
class FakeTwilioApi:
    """State behind the handler: calls by SID, and every request that passed authentication."""

    requests: list[RecordedRequest] = field(default_factory=list)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_with: int | None = None  # answer every request with this status (5xx outage)
    created: int = 0


def _call_resource(sid: str, to: str, from_: str, status: str, direction: str) -> dict[str, Any]:
    return {
        "sid": sid,
        "account_sid": ACCOUNT,
        "to": to,
        "from": from_,
        "status": status,
        "direction": direction,
        "answered_by": None,
        "api_version": "2010-04-01",
        "date_created": "Mon, 23 Nov 2026 10:00:00 +0000",
        "date_updated": "Mon, 23 Nov 2026 10:00:00 +0000",
        "start_time": None,
        "end_time": None,
        "duration": None,
        "parent_call_sid": None,
        "uri": f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json",
    }


def _error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


class _Handler(BaseHTTPRequestHandler):
    api: FakeTwilioApi

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        api = self.api
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        expected = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self._reply(401, _error(401, 20003, "Authenticate"))
            return
        match = _CALLS.match(self.path)
        if match is None or match.group(1) != ACCOUNT:
            self._reply(404, _error(404, 20404, f"The requested resource {self.path} was not found"))
            return
        form = parse_qs(body, keep_blank_values=True)
        api.requests.append(RecordedRequest("POST", self.path, form, self.headers.get("Content-Type")))
        if api.fail_with is not None:
            self._reply(api.fail_with, _error(api.fail_with, 20500, "Internal Server Error"))
            return
        sid = match.group(2)
        if sid is None:
            api.created += 1
            new_sid = f"CA{api.created:032x}"
            created = _call_resource(new_sid, form["To"][0], form["From"][0], "queued", "outbound-api")
            api.calls[new_sid] = created
            self._reply(201, created)
            return
        call = api.calls.get(sid)
        if call is None:
            self._reply(404, _error(404, 20404, f"The requested resource {self.path} was not found"))
            return
        if call["status"] != "in-progress":
            self._reply(400, _error(400, 21220, "Call is not in-progress. Cannot redirect."))
            return
        if form.get("Status") == ["completed"]:
            call["status"] = "completed"
        self._reply(200, call)


class LocalApiHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """The SDK's own HTTP client, sending each request to `origin` instead of https://*.twilio.com."""

    def __init__(self, origin: str) -> None:
        super().__init__(timeout=5)
        self._origin = urlsplit(origin)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        parts = urlsplit(url)
        assert parts.netloc == "api.twilio.com", url
        local = urlunsplit((self._origin.scheme, self._origin.netloc, parts.path, parts.query, ""))
        return super().request(method, local, *args, **kwargs)


@pytest.fixture
def api() -> Iterator[tuple[FakeTwilioApi, str]]:
    state = FakeTwilioApi()
    state.calls[LIVE_CALL] = _call_resource(
        LIVE_CALL, "+15550009999", "+15550100002", "in-progress", "inbound"
    )
    state.calls[ENDED_CALL] = _call_resource(
        ENDED_CALL, "+15550009999", "+15550100003", "completed", "inbound"
    )
    handler = type("Handler", (_Handler,), {"api": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def control_for(origin: str, token: str = TOKEN) -> TwilioCallControl:
    return TwilioCallControl(ACCOUNT, token, http_client=LocalApiHttpClient(origin))


def test_hangup_posts_status_completed(api: tuple[FakeTwilioApi, str]) -> None:
    state, origin = api
    snapshot = control_for(origin).hangup(LIVE_CALL)
    assert snapshot.sid == LIVE_CALL
    assert snapshot.status == "completed"
    (request,) = state.requests
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{LIVE_CALL}.json"
    assert request.content_type == "application/x-www-form-urlencoded"
    assert request.form == {"Status": ["completed"]}


@pytest.mark.parametrize(
    ("target", "verb", "inner"),
    [
        (DialNumber("+15550101234", caller_id="+15550009999"), "Dial", "Number"),
        (DialSip("sip:frontdesk@pbx.example.com"), "Dial", "Sip"),
        (DialQueue("service-desk"), "Dial", "Queue"),
        (EnqueueCaller("callbacks"), "Enqueue", None),
    ],
)
def test_transfer_redirects_the_live_call_to_dial_twiml(
    api: tuple[FakeTwilioApi, str], target: Any, verb: str, inner: str | None
) -> None:
    state, origin = api
    snapshot = control_for(origin).transfer(LIVE_CALL, target, announcement="Connecting you now.")
    assert snapshot.status == "in-progress"
    (request,) = state.requests
    assert set(request.form) == {"Twiml"}
    response = ET.fromstring(request.form["Twiml"][0])
    say, action = list(response)
    assert (say.tag, say.text) == ("Say", "Connecting you now.")
    assert action.tag == verb
    if inner is None:
        assert action.text == "callbacks"
        return
    (child,) = list(action)
    assert child.tag == inner
    assert child.text in ("+15550101234", "sip:frontdesk@pbx.example.com", "service-desk")
    if isinstance(target, DialNumber):
        assert action.get("callerId") == "+15550009999"


def test_place_call_sends_stream_twiml_status_callbacks_and_machine_detection(
    api: tuple[FakeTwilioApi, str],
) -> None:
    state, origin = api
    options = OutboundCallOptions(
        status_callback="https://switchboard.example.test/twilio/status",
        machine_detection="DetectMessageEnd",
        machine_detection_timeout_s=15,
        async_amd=True,
        async_amd_status_callback="https://switchboard.example.test/twilio/status",
        ring_timeout_s=25,
    )
    snapshot = control_for(origin).place_call(
        "+15550100001",
        "+15550009999",
        stream_url="wss://switchboard.example.test/twilio/stream",
        parameters={"caller": "+15550100001", "campaign": "reminders"},
        options=options,
    )
    assert snapshot.status == "queued"
    assert snapshot.direction == "outbound-api"
    assert snapshot.sid in state.calls
    (request,) = state.requests
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
    form = request.form
    assert form["To"] == ["+15550100001"]
    assert form["From"] == ["+15550009999"]
    assert form["StatusCallback"] == ["https://switchboard.example.test/twilio/status"]
    assert form["StatusCallbackMethod"] == ["POST"]
    assert form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert form["MachineDetection"] == ["DetectMessageEnd"]
    assert form["MachineDetectionTimeout"] == ["15"]
    assert form["AsyncAmd"] == ["true"]
    assert form["AsyncAmdStatusCallback"] == ["https://switchboard.example.test/twilio/status"]
    assert form["Timeout"] == ["25"]
    stream = ET.fromstring(form["Twiml"][0]).find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://switchboard.example.test/twilio/stream"
    assert {p.get("name"): p.get("value") for p in stream.findall("Parameter")} == {
        "caller": "+15550100001",
        "campaign": "reminders",
    }


def test_an_agent_call_streams_to_the_public_url_with_the_callee_as_caller(
    api: tuple[FakeTwilioApi, str],
) -> None:
    state, origin = api
    place_agent_call(control_for(origin), "https://voice.example.test/", "+15550100003", "+15550009999")
    form = state.requests[0].form
    assert form["StatusCallback"] == ["https://voice.example.test/twilio/status"]
    stream = ET.fromstring(form["Twiml"][0]).find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://voice.example.test/twilio/stream"
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert parameters == {"caller": "+15550100003", "called": "+15550009999"}


def test_a_finished_call_is_rejected_with_twilios_error_code(api: tuple[FakeTwilioApi, str]) -> None:
    _, origin = api
    with pytest.raises(CallControlRejected) as raised:
        control_for(origin).transfer(ENDED_CALL, DialNumber("+15550101234"))
    assert (raised.value.status, raised.value.code) == (400, 21220)


def test_an_unknown_call_and_a_wrong_token_are_rejected(api: tuple[FakeTwilioApi, str]) -> None:
    _, origin = api
    with pytest.raises(CallControlRejected) as raised:
        control_for(origin).hangup("CA" + "0" * 32)
    assert (raised.value.status, raised.value.code) == (404, 20404)
    with pytest.raises(CallControlRejected) as raised:
        control_for(origin, token="wrong").hangup(LIVE_CALL)
    assert (raised.value.status, raised.value.code) == (401, 20003)


def test_server_errors_and_no_connection_are_unavailable(api: tuple[FakeTwilioApi, str]) -> None:
    state, origin = api
    state.fail_with = 503
    with pytest.raises(CallControlUnavailable):
        control_for(origin).hangup(LIVE_CALL)
    with pytest.raises(CallControlUnavailable):
        control_for("http://127.0.0.1:9").hangup(LIVE_CALL)  # discard port: nothing listens

"""REFER building and NOTIFY/sipfrag progress (RFC 3515), by hand and against sipp as the transferee."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from telephony.sip.errors import SipParseError, SipUsageError
from telephony.sip.message import NameAddr, SipRequest, SipResponse, Via, make_response, parse_message
from telephony.sip.refer import TransferProgress, build_refer, parse_refer_notify, parse_sipfrag
from tests.services import free_port, require_binary, wait_until_udp_bound

DIALOG = {
    "call_id": "c0ffee@192.0.2.10",
    "local_uri": "<sip:agent@switchboard.test>",
    "local_tag": "ours1",
    "remote_uri": '"Caller" <sip:+4930123@trunk.example.net>',
    "remote_tag": "theirs1",
    "remote_target": "sip:+4930123@198.51.100.7:5060",
    "cseq": 42,
    "local_host": "192.0.2.10",
    "local_port": 5070,
    "contact": "<sip:agent@192.0.2.10:5070>",
}


def refer(**overrides: object) -> SipRequest:
    arguments: dict[str, object] = {**DIALOG, "refer_to": "sip:queue@pbx.example.com", **overrides}
    return build_refer(**arguments)  # type: ignore[arg-type]


def notify(body: bytes, *, event: str | None = "refer", state: str | None = "active;expires=60",
           content_type: str | None = "message/sipfrag;version=2.0") -> SipRequest:  # fmt: skip
    lines = [
        "NOTIFY sip:agent@192.0.2.10:5070 SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKn1",
        "From: <sip:+4930123@trunk.example.net>;tag=theirs1",
        "To: <sip:agent@switchboard.test>;tag=ours1",
        "Call-ID: c0ffee@192.0.2.10",
        "CSeq: 7 NOTIFY",
    ]
    if event is not None:
        lines.append(f"Event: {event}")
    if state is not None:
        lines.append(f"Subscription-State: {state}")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    assert isinstance(message, SipRequest)
    return message


# --------------------------------------------------------------------------------------------------------
# REFER


def test_refer_shape() -> None:
    request = refer(user_agent="Switchboard/test")
    parsed = parse_message(bytes(request))
    assert isinstance(parsed, SipRequest) and parsed.method == "REFER"
    assert request.uri == "sip:+4930123@198.51.100.7:5060"
    headers = request.headers
    assert NameAddr.parse(headers["From"]).tag == "ours1"
    assert headers["To"] == '"Caller" <sip:+4930123@trunk.example.net>;tag=theirs1'
    assert (headers["Call-ID"], headers["CSeq"]) == ("c0ffee@192.0.2.10", "42 REFER")
    assert headers["Refer-To"] == "<sip:queue@pbx.example.com>"
    assert headers["Referred-By"] == "<sip:agent@switchboard.test>"
    assert headers["Contact"] == "<sip:agent@192.0.2.10:5070>"
    assert headers["User-Agent"] == "Switchboard/test"
    assert "Route" not in headers
    via = Via.parse(headers["Via"])
    assert (via.host, via.port) == ("192.0.2.10", 5070) and via.branch and via.branch.startswith("z9hG4bK")


def test_refer_to_with_params_and_headers_stays_in_brackets() -> None:
    target = "sip:+4930999@pbx.example.com;user=phone?Replaces=abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2"
    request = refer(refer_to=target, referred_by='"Switchboard" <sip:bot@switchboard.test>;cid=x')
    assert request.headers["Refer-To"] == f"<{target}>"
    assert NameAddr.parse(request.headers["Refer-To"]).uri == target
    assert request.headers["Referred-By"] == '"Switchboard" <sip:bot@switchboard.test>'
    parsed = parse_message(bytes(request))
    assert isinstance(parsed, SipRequest) and parsed.headers.get("r") == f"<{target}>"  # compact form


def test_refer_to_tel_uri() -> None:
    assert refer(refer_to="tel:+4930999").headers["Refer-To"] == "<tel:+4930999>"


def test_loose_route_set() -> None:
    routes = ["<sip:edge.example.net;lr>", "<sip:core.example.net;lr>"]
    request = refer(route_set=routes)
    assert request.uri == DIALOG["remote_target"]
    assert request.headers.get_all("Route") == routes


def test_strict_route_set() -> None:
    request = refer(route_set=["<sip:strict.example.net>", "<sip:core.example.net;lr>"])
    assert request.uri == "sip:strict.example.net"
    assert request.headers.get_all("Route") == ["<sip:core.example.net;lr>", f"<{DIALOG['remote_target']}>"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"refer_to": "queue@pbx"},
        {"refer_to": "<sip:queue@pbx"},
        {"refer_to": "sip:queue@[::1"},
        {"cseq": 0},
        {"cseq": 2**31},
        {"local_uri": "agent"},
        {"route_set": ["<sip:bad host>"]},
    ],
)
def test_bad_refer_input_is_a_usage_error(overrides: dict[str, object]) -> None:
    with pytest.raises(SipUsageError):
        refer(**overrides)


# --------------------------------------------------------------------------------------------------------
# sipfrag


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"SIP/2.0 200 OK", (200, "OK")),
        (b"SIP/2.0 100 Trying\r\n", (100, "Trying")),
        (b"\r\nSIP/2.0 503 Service  Unavailable\r\nRetry-After: 30\r\n\r\n", (503, "Service Unavailable")),
        (b"sip/2.0 486 Busy Here\n", (486, "Busy Here")),
        (b"SIP/2.0 180", (180, "")),
        (b"SIP/2.0 603 D\xc3\xa9clin\xc3\xa9\r\n", (603, "D\u00e9clin\u00e9")),
    ],
)
def test_parse_sipfrag(body: bytes, expected: tuple[int, str]) -> None:
    assert parse_sipfrag(body) == expected


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n", b"HTTP/1.1 200 OK", b"SIP/2.0 20 OK", b"SIP/2.0 700 Nope", b"SIP/2.0 2x0 OK",
     b"INVITE sip:a@b SIP/2.0", b"SIP/2.0 \xff\xfe", b"SIP/2.0 200 OK\r\n" + b"X" * 9000],
)  # fmt: skip
def test_malformed_sipfrag_raises_400(body: bytes) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_sipfrag(body)
    assert caught.value.status == 400


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60).map(lambda tail: b"SIP/2.0 " + tail) | st.binary(max_size=60))
def test_sipfrag_parser_only_raises_sip_parse_error(body: bytes) -> None:
    try:
        status, reason = parse_sipfrag(body)
    except SipParseError:
        return
    assert 100 <= status <= 699 and "\n" not in reason


# --------------------------------------------------------------------------------------------------------
# NOTIFY


@pytest.mark.parametrize(
    ("body", "state", "expected"),
    [
        (b"SIP/2.0 100 Trying\r\n", "active;expires=60", TransferProgress(100, "Trying", False)),
        (b"SIP/2.0 180 Ringing\r\n", "pending", TransferProgress(180, "Ringing", False)),
        (b"SIP/2.0 200 OK\r\n", "terminated;reason=noresource", TransferProgress(200, "OK", True)),
        (
            b"SIP/2.0 486 Busy Here\r\n",
            "terminated;reason=noresource",
            TransferProgress(486, "Busy Here", True),
        ),
        # A final status ends the transfer even if the notifier forgot to terminate the subscription.
        (b"SIP/2.0 200 OK\r\n", "active", TransferProgress(200, "OK", True)),
        # Terminated before any final answer (subscription timeout): over, and not a success.
        (b"SIP/2.0 180 Ringing\r\n", "terminated;reason=timeout", TransferProgress(180, "Ringing", True)),
        # An unknown state from some extension counts as pending.
        (b"SIP/2.0 183 Session Progress\r\n", "waiting", TransferProgress(183, "Session Progress", False)),
    ],
)
def test_parse_refer_notify(body: bytes, state: str, expected: TransferProgress) -> None:
    progress = parse_refer_notify(notify(body, state=state))
    assert progress == expected
    assert progress.succeeded == (expected.final and expected.status == 200)


def test_notify_event_id_and_compact_headers() -> None:
    raw = (
        b"NOTIFY sip:agent@192.0.2.10:5070 SIP/2.0\r\nv: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKx\r\n"
        b"f: <sip:a@b>;tag=1\r\nt: <sip:c@d>;tag=2\r\ni: x\r\nCSeq: 3 NOTIFY\r\no: refer;id=42\r\n"
        b"Subscription-State: terminated\r\nc: message/sipfrag\r\nl: 15\r\n\r\nSIP/2.0 200 OK\r\n"
    )
    message = parse_message(raw)
    assert isinstance(message, SipRequest)
    assert parse_refer_notify(message) == TransferProgress(200, "OK", True, 42)


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"event": "presence"}, 489),
        ({"event": "refer;id=x"}, 400),
        ({"event": None}, 400),
        ({"state": None}, 400),
        ({"state": "@@"}, 400),
        ({"content_type": "application/sdp"}, 415),
        ({"body": b""}, 400),
        ({"body": b"v=0\r\n"}, 400),
    ],
)
def test_bad_notify_gets_the_right_error_status(kwargs: dict[str, object], status: int) -> None:
    body = kwargs.pop("body", b"SIP/2.0 200 OK\r\n")
    assert isinstance(body, bytes)
    request = notify(body, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SipParseError) as caught:
        parse_refer_notify(request)
    assert caught.value.status == status
    # The shell answers with the carried status; the response must be buildable and serialisable.
    assert bytes(make_response(request, caught.value.status, caught.value.reason))


def test_notify_without_content_type_is_still_read() -> None:
    assert parse_refer_notify(notify(b"SIP/2.0 200 OK", content_type=None)).succeeded


def test_non_notify_is_a_usage_error() -> None:
    with pytest.raises(SipUsageError):
        parse_refer_notify(refer())


# --------------------------------------------------------------------------------------------------------
# sipp as the transferee: checks our REFER with its parser, reports progress with two NOTIFYs


SIPP_TRANSFEREE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="transferee accepting a REFER and reporting progress">
  <recv request="REFER">
    <action>
      <ereg regexp="&lt;sip:queue@pbx.example.com&gt;" search_in="hdr" header="Refer-To:" check_it="true"
            assign_to="target" />
      <ereg regexp="&lt;sip:agent@switchboard.test&gt;" search_in="hdr" header="Referred-By:" check_it="true"
            assign_to="referrer" />
      <ereg regexp="tag=([A-Za-z0-9]+)" search_in="hdr" header="From:" check_it="true"
            assign_to="junk,fromtag" />
      <ereg regexp="&lt;(sip:[^&gt;]*)&gt;" search_in="hdr" header="Contact:" check_it="true"
            assign_to="whole,contact" />
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 202 Accepted
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:transferee@[local_ip]:[local_port]>
X-Checked: [$target] [$referrer] [$junk] [$whole]
Content-Length: 0

]]></send>
  <send><![CDATA[
NOTIFY [$contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:+4930123@trunk.example.net>;tag=theirs1
To: <sip:agent@switchboard.test>;tag=[$fromtag]
Call-ID: [call_id]
CSeq: 1 NOTIFY
Contact: <sip:transferee@[local_ip]:[local_port]>
Event: refer
Subscription-State: active;expires=60
Content-Type: message/sipfrag;version=2.0
Content-Length: [len]

SIP/2.0 100 Trying
]]></send>
  <recv response="200" />
  <send><![CDATA[
NOTIFY [$contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:+4930123@trunk.example.net>;tag=theirs1
To: <sip:agent@switchboard.test>;tag=[$fromtag]
Call-ID: [call_id]
CSeq: 2 NOTIFY
Contact: <sip:transferee@[local_ip]:[local_port]>
Event: refer
Subscription-State: terminated;reason=noresource
Content-Type: message/sipfrag;version=2.0
Content-Length: [len]

SIP/2.0 200 OK
]]></send>
  <recv response="200" />
</scenario>
"""


def test_blind_transfer_against_sipp(tmp_path: Path) -> None:
    sipp = require_binary("sipp", "sip-tester")
    scenario = tmp_path / "transferee.xml"
    scenario.write_text(SIPP_TRANSFEREE)
    port = free_port(socket.SOCK_DGRAM)
    process = subprocess.Popen(
        [sipp, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-nostdin",
         "-timeout", "15s", "-timeout_error", "-trace_err"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    progress: list[TransferProgress] = []
    statuses: list[int] = []
    try:
        wait_until_udp_bound(port, process)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5)
            local_port = sock.getsockname()[1]
            request = refer(
                remote_target=f"sip:transferee@127.0.0.1:{port}",
                local_host="127.0.0.1",
                local_port=local_port,
                contact=f"<sip:agent@127.0.0.1:{local_port}>",
            )
            sock.sendto(bytes(request), ("127.0.0.1", port))
            while not progress or not progress[-1].final:
                data, peer = sock.recvfrom(65535)
                message = parse_message(data)
                if isinstance(message, SipResponse):
                    statuses.append(message.status)
                    continue
                progress.append(parse_refer_notify(message))
                sock.sendto(bytes(make_response(message, 200)), peer)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert statuses == [202], output
    assert progress == [TransferProgress(100, "Trying", False), TransferProgress(200, "OK", True)], output
    assert progress[-1].succeeded
    assert process.returncode == 0, output


@settings(max_examples=300, deadline=None)
@given(
    event=st.one_of(
        st.none(), st.sampled_from(["refer", "refer;id=7", "Refer ; id = 7"]), st.text(max_size=20)
    ),
    state=st.one_of(st.none(), st.sampled_from(["active", "terminated;reason=x"]), st.text(max_size=20)),
    content_type=st.one_of(st.none(), st.just("message/sipfrag"), st.text(max_size=20)),
    body=st.one_of(st.just(b"SIP/2.0 200 OK\r\n"), st.binary(max_size=40)),
)
def test_any_notify_yields_progress_or_an_answerable_error(
    event: str | None, state: str | None, content_type: str | None, body: bytes
) -> None:
    try:
        request = notify(body, event=event, state=state, content_type=content_type)
    except (SipParseError, SipUsageError):
        return  # not even a parseable NOTIFY: the message layer already answered it
    try:
        progress = parse_refer_notify(request)
    except SipParseError as exc:
        assert exc.status in (400, 415, 489)
        return
    assert 100 <= progress.status <= 699

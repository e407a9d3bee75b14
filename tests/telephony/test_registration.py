"""REGISTER client state machine: driven by hand with an injected clock, then against sipp as registrar."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from telephony.sip.auth import Credentials, DigestAuthorization, DigestChallenge, verify_digest
from telephony.sip.errors import SipUsageError
from telephony.sip.message import SipRequest, SipResponse, Via, make_response, parse_cseq, parse_message
from telephony.sip.registration import (
    BACKOFF_BASE_S,
    BACKOFF_MAX_S,
    Challenge,
    Failed,
    Ignored,
    Provisional,
    Registered,
    Registration,
    RegistrationState,
    Retry,
    Unregistered,
    refresh_interval,
)
from tests.services import free_port, require_binary, wait_until_udp_bound

CONTACT = "sip:agent@192.0.2.10:5070"


def registration(credentials: Credentials | None = None, expires: int = 3600) -> Registration:
    return Registration(
        registrar="sip:pbx.example.com",
        aor="sip:1001@pbx.example.com",
        contact=CONTACT,
        credentials=credentials,
        expires=expires,
        local_host="192.0.2.10",
        local_port=5070,
        user_agent="Switchboard/test",
    )


def reply(
    request: SipRequest, status: int, *extra: tuple[str, str], reason: str | None = None
) -> SipResponse:
    # Through the wire format, so what we consume is what a registrar could really send.
    response = make_response(request, status, reason, to_tag="reg", extra=list(extra))
    parsed = parse_message(bytes(response))
    assert isinstance(parsed, SipResponse)
    return parsed


def registered_with(reg: Registration, now: float = 100.0, expires: int = 600) -> SipRequest:
    request = reg.next_request()
    event = reg.handle_response(reply(request, 200, ("Contact", f"<{CONTACT}>;expires={expires}")), now)
    assert isinstance(event, Registered)
    return request


# --------------------------------------------------------------------------------------------------------
# Requests


def test_register_request_shape() -> None:
    reg = registration()
    request = reg.next_request()
    parsed = parse_message(bytes(request))
    parsed.headers.remove("Content-Length")
    assert parsed == request
    assert (request.method, request.uri) == ("REGISTER", "sip:pbx.example.com")
    headers = request.headers
    assert headers["To"] == "<sip:1001@pbx.example.com>"
    assert headers["From"].startswith("<sip:1001@pbx.example.com>;tag=")
    assert headers["Contact"] == f"<{CONTACT}>"
    assert headers["Expires"] == "3600"
    assert headers["User-Agent"] == "Switchboard/test"
    via = Via.parse(headers["Via"])
    assert (via.transport, via.host, via.port, "rport" in via.params) == ("UDP", "192.0.2.10", 5070, True)
    assert "Authorization" not in headers
    assert reg.state is RegistrationState.REGISTERING and reg.outstanding is request
    assert reg.destination == ("pbx.example.com", 5060)


def test_refreshes_keep_call_id_and_increase_cseq() -> None:
    reg = registration()
    first = registered_with(reg)
    second = registered_with(reg)
    assert first.headers["Call-ID"] == second.headers["Call-ID"] == reg.call_id
    assert parse_cseq(second.headers["CSeq"])[0] == parse_cseq(first.headers["CSeq"])[0] + 1
    assert Via.parse(first.headers["Via"]).branch != Via.parse(second.headers["Via"]).branch
    assert first.headers["From"] == second.headers["From"]


def test_only_one_register_at_a_time() -> None:
    reg = registration()
    reg.next_request()
    with pytest.raises(SipUsageError):
        reg.next_request()
    with pytest.raises(SipUsageError):
        reg.unregister()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"registrar": "pbx.example.com"},
        {"registrar": "tel:+4930123"},
        {"aor": "sip:"},
        {"contact": "<sip:agent@host"},
        {"expires": 0},
        {"local_port": 0},
    ],
)
def test_bad_configuration_is_a_usage_error(kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {
        "registrar": "sip:pbx.example.com",
        "aor": "sip:1001@pbx.example.com",
        "contact": CONTACT,
        "credentials": None,
        "local_host": "192.0.2.10",
        "local_port": 5070,
        **kwargs,
    }
    with pytest.raises(SipUsageError):
        Registration(**arguments)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Success and expiry


@pytest.mark.parametrize(("expires", "refresh"), [(3600, 3568), (600, 568), (64, 32), (60, 30), (20, 10)])
def test_refresh_interval(expires: int, refresh: float) -> None:
    assert refresh_interval(expires) == refresh


@pytest.mark.parametrize(
    ("extra", "granted"),
    [
        ([("Contact", f"<{CONTACT}>;expires=120"), ("Expires", "900")], 120),
        (
            [("Contact", "<sip:agent@192.0.2.99:5060>;expires=30"), ("Contact", f"<{CONTACT}>;expires=240")],
            240,
        ),
        ([("Contact", "<SIP:agent@192.0.2.10:5070;transport=udp>;expires=50;q=0.5")], 50),
        ([("Contact", f"<{CONTACT}>"), ("Expires", "900")], 900),
        ([("Contact", "<sip:someone-else@192.0.2.99>;expires=30"), ("Expires", "700")], 700),
        ([("Expires", "soon")], 3600),
        ([("Contact", f"<{CONTACT}>;expires=-5")], 3600),
        ([], 3600),
    ],
)
def test_granted_expires(extra: list[tuple[str, str]], granted: int) -> None:
    reg = registration()
    event = reg.handle_response(reply(reg.next_request(), 200, *extra), 1000.0)
    assert event == Registered(granted, 1000.0 + refresh_interval(granted))
    assert reg.refresh_at() == event.refresh_at
    assert reg.state is RegistrationState.REGISTERED and reg.granted_expires == granted
    assert reg.registered(1000.0 + granted - 0.1) and not reg.registered(1000.0 + granted)


def test_binding_granted_zero_is_a_failure() -> None:
    reg = registration()
    event = reg.handle_response(reply(reg.next_request(), 200, ("Contact", f"<{CONTACT}>;expires=0")), 5.0)
    assert isinstance(event, Failed) and not event.permanent and event.retry_at == 5.0 + BACKOFF_BASE_S


def test_provisional_and_stray_responses() -> None:
    reg = registration()
    assert isinstance(reg.handle_response(reply(registration().next_request(), 200), 0.0), Ignored)
    request = reg.next_request()
    assert reg.handle_response(reply(request, 100), 0.0) == Provisional(100)
    assert reg.outstanding is request
    other_call = reply(request, 200)
    other_call.headers.set("Call-ID", "someone-else")
    assert isinstance(reg.handle_response(other_call, 0.0), Ignored)
    old_cseq = reply(request, 200)
    old_cseq.headers.set("CSeq", "0 REGISTER")
    assert isinstance(reg.handle_response(old_cseq, 0.0), Ignored)
    assert isinstance(reg.handle_response(reply(request, 200), 0.0), Registered)
    assert isinstance(reg.handle_response(reply(request, 200), 0.0), Ignored)  # a retransmitted 200


# --------------------------------------------------------------------------------------------------------
# Authentication


def test_challenge_then_register_then_preauthorized_refresh() -> None:
    reg = registration(Credentials("1001", "s3cret"))
    first = reg.next_request()
    challenge = DigestChallenge("pbx", "nonce-1", "SHA-256", ("auth",), "op")
    event = reg.handle_response(reply(first, 401, ("WWW-Authenticate", str(challenge))), 10.0)
    assert isinstance(event, Challenge)
    second = event.request
    assert reg.outstanding is second and reg.state is RegistrationState.REGISTERING
    assert parse_cseq(second.headers["CSeq"])[0] == parse_cseq(first.headers["CSeq"])[0] + 1
    assert verify_digest("REGISTER", "sip:pbx.example.com", second.headers["Authorization"], "s3cret")
    registered = reg.handle_response(reply(second, 200, ("Expires", "300")), 11.0)
    assert registered == Registered(300, 11.0 + 268)
    # The refresh answers the cached challenge up front (nc=2) instead of waiting for another 401.
    refresh = reg.next_request()
    assert parse_cseq(refresh.headers["CSeq"])[0] == parse_cseq(second.headers["CSeq"])[0] + 1
    value = refresh.headers["Authorization"]
    assert DigestAuthorization.parse(value).nc == "00000002"
    assert verify_digest("REGISTER", "sip:pbx.example.com", value, "s3cret", nonce="nonce-1")
    # The registrar no longer knows nonce-1: one more challenge round, then success.
    fresh = DigestChallenge("pbx", "nonce-2", "SHA-256", ("auth",), "op")
    event = reg.handle_response(reply(refresh, 401, ("WWW-Authenticate", str(fresh))), 280.0)
    assert isinstance(event, Challenge)
    assert DigestAuthorization.parse(event.request.headers["Authorization"]).nonce == "nonce-2"
    assert isinstance(reg.handle_response(reply(event.request, 200), 280.5), Registered)


def test_wrong_password_fails_permanently_instead_of_looping() -> None:
    reg = registration(Credentials("1001", "wrong"))
    event = reg.handle_response(
        reply(reg.next_request(), 401, ("WWW-Authenticate", 'Digest realm="pbx", nonce="a"')), 0.0
    )
    assert isinstance(event, Challenge)
    event2 = reg.handle_response(
        reply(event.request, 401, ("WWW-Authenticate", 'Digest realm="pbx", nonce="b"')), 1.0
    )
    assert event2 == Failed(401, "Unauthorized", 1.0 + BACKOFF_MAX_S, True)
    assert reg.state is RegistrationState.FAILED and reg.refresh_at() == 1.0 + BACKOFF_MAX_S


def test_challenge_without_credentials_fails() -> None:
    reg = registration()
    event = reg.handle_response(
        reply(reg.next_request(), 407, ("Proxy-Authenticate", 'Digest realm="p", nonce="n"')), 0.0
    )
    assert isinstance(event, Failed) and event.status == 407 and event.permanent


# --------------------------------------------------------------------------------------------------------
# 423 and failures


def test_interval_too_brief_retries_with_min_expires() -> None:
    reg = registration(expires=60)
    first = reg.next_request()
    event = reg.handle_response(reply(first, 423, ("Min-Expires", "1800")), 0.0)
    assert isinstance(event, Retry) and event.status == 423
    assert event.request.headers["Expires"] == "1800"
    assert parse_cseq(event.request.headers["CSeq"])[0] == parse_cseq(first.headers["CSeq"])[0] + 1
    assert reg.outstanding is event.request
    assert isinstance(reg.handle_response(reply(event.request, 200), 1.0), Registered)
    assert reg.next_request().headers["Expires"] == "1800"  # refreshes keep the longer interval


@pytest.mark.parametrize(
    "extra", [[], [("Min-Expires", "60")], [("Min-Expires", "30")], [("Min-Expires", "x")]]
)
def test_interval_too_brief_without_usable_min_expires_fails(extra: list[tuple[str, str]]) -> None:
    reg = registration(expires=60)
    event = reg.handle_response(reply(reg.next_request(), 423, *extra), 0.0)
    assert isinstance(event, Failed) and event.status == 423 and event.permanent


@pytest.mark.parametrize("status", [403, 404, 400, 302, 603])
def test_permanent_failures_advise_a_long_wait(status: int) -> None:
    reg = registration()
    event = reg.handle_response(reply(reg.next_request(), status), 50.0)
    assert isinstance(event, Failed)
    assert (event.status, event.permanent, event.retry_at) == (status, True, 50.0 + BACKOFF_MAX_S)


def test_transient_failures_back_off_exponentially_and_reset_on_success() -> None:
    reg = registration()
    now = 0.0
    waits = []
    for _ in range(8):
        event = reg.handle_response(reply(reg.next_request(), 500), now)
        assert isinstance(event, Failed) and not event.permanent and event.retry_at is not None
        waits.append(event.retry_at - now)
        now = event.retry_at
    assert waits == [30, 60, 120, 240, 480, 960, 1800, 1800]
    registered_with(reg, now)
    event = reg.handle_response(reply(reg.next_request(), 503), now)
    assert isinstance(event, Failed) and event.retry_at == now + 30


@pytest.mark.parametrize(("value", "wait"), [("120", 120), ("90;duration=3600", 90), ("45 (overloaded)", 45)])
def test_retry_after_is_honoured(value: str, wait: int) -> None:
    reg = registration()
    event = reg.handle_response(reply(reg.next_request(), 503, ("Retry-After", value)), 7.0)
    assert event == Failed(503, "Service Unavailable", 7.0 + wait, False)


def test_timeout_is_a_transient_failure_and_frees_the_slot() -> None:
    reg = registration()
    reg.next_request()
    assert reg.timed_out(32.0) == Failed(408, "Request Timeout", 32.0 + BACKOFF_BASE_S, False)
    assert reg.outstanding is None
    with pytest.raises(SipUsageError):
        reg.timed_out(33.0)
    reg.next_request()


def test_failed_refresh_keeps_the_binding_until_it_expires() -> None:
    reg = registration()
    registered_with(reg, now=0.0, expires=600)
    event = reg.handle_response(reply(reg.next_request(), 503), 568.0)
    assert isinstance(event, Failed)
    assert reg.registered(599.0) and not reg.registered(600.0)


# --------------------------------------------------------------------------------------------------------
# Unregister


def test_unregister() -> None:
    reg = registration(Credentials("1001", "p"))
    registered_with(reg)
    request = reg.unregister()
    assert request.headers["Expires"] == "0"
    states = [reg.state]
    assert reg.refresh_at() is None
    assert reg.handle_response(reply(request, 200), 200.0) == Unregistered()
    states.append(reg.state)
    assert states == [RegistrationState.UNREGISTERING, RegistrationState.UNREGISTERED]
    assert reg.refresh_at() is None and not reg.registered(200.0)


def test_failed_unregister_is_not_retried() -> None:
    reg = registration()
    registered_with(reg)
    event = reg.handle_response(reply(reg.unregister(), 500), 200.0)
    assert event == Failed(500, "Server Internal Error", None, False)
    assert reg.refresh_at() is None


def test_challenged_unregister_is_answered() -> None:
    reg = registration(Credentials("1001", "p"))
    registered_with(reg)
    request = reg.unregister()
    event = reg.handle_response(
        reply(request, 401, ("WWW-Authenticate", 'Digest realm="pbx", nonce="z"')), 0.0
    )
    assert isinstance(event, Challenge) and event.request.headers["Expires"] == "0"
    assert reg.handle_response(reply(event.request, 200), 1.0) == Unregistered()


# --------------------------------------------------------------------------------------------------------
# sipp as the registrar: it challenges, then checks our answer with its own digest code (verifyauth)


SIPP_REGISTRAR = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="challenging registrar: register, refresh, unregister">
  <recv request="REGISTER" />
  <send><![CDATA[
SIP/2.0 401 Unauthorized
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
WWW-Authenticate: Digest realm="sb.test", nonce="[pid]x[call_number]", opaque="o", qop="auth", algorithm=MD5
Content-Length: 0

]]></send>
  <label id="authenticate" />
  <recv request="REGISTER">
    <action>
      <verifyauth assign_to="authvalid" username="agent" password="s3cret" />
      <ereg regexp="Expires: *0" search_in="msg" check_it="false" assign_to="leaving" />
    </action>
  </recv>
  <nop hide="true" test="authvalid" next="good" />
  <send next="end"><![CDATA[
SIP/2.0 403 Forbidden
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <label id="good" />
  <nop hide="true" test="leaving" next="bye" />
  <send next="authenticate"><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Contact:];expires=60
Content-Length: 0

]]></send>
  <label id="bye" />
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <label id="end" />
</scenario>
"""


def _exchange(sock: socket.socket, request: SipRequest, peer: tuple[str, int]) -> SipResponse:
    sock.sendto(bytes(request), peer)
    data, _ = sock.recvfrom(65535)
    message = parse_message(data)
    assert isinstance(message, SipResponse)
    return message


@pytest.mark.parametrize("password", ["s3cret", "wrong"])
def test_against_sipp_registrar(tmp_path: Path, password: str) -> None:
    sipp = require_binary("sipp", "sip-tester")
    scenario = tmp_path / "registrar.xml"
    scenario.write_text(SIPP_REGISTRAR)
    port = free_port(socket.SOCK_DGRAM)
    process = subprocess.Popen(
        [sipp, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-nostdin",
         "-timeout", "15s", "-timeout_error", "-trace_err"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    events: list[object] = []
    try:
        wait_until_udp_bound(port, process)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5)
            local_port = sock.getsockname()[1]
            reg = Registration(
                registrar=f"sip:127.0.0.1:{port}",
                aor="sip:agent@switchboard.test",
                contact=f"sip:agent@127.0.0.1:{local_port}",
                credentials=Credentials("agent", password),
                expires=60,
                local_host="127.0.0.1",
                local_port=local_port,
            )
            assert reg.destination == ("127.0.0.1", port)
            now = 0.0
            request = reg.next_request()
            while True:
                event = reg.handle_response(_exchange(sock, request, reg.destination), now)
                events.append(event)
                if isinstance(event, Challenge):
                    request = event.request
                    continue
                break
            if password == "s3cret":
                assert isinstance(event, Registered) and event.expires == 60
                # Refresh: sipp checks the pre-authorized credentials (same nonce, nc=2) without a new 401.
                now = event.refresh_at
                refresh = reg.next_request()
                assert DigestAuthorization.parse(refresh.headers["Authorization"]).nc == "00000002"
                events.append(reg.handle_response(_exchange(sock, refresh, reg.destination), now))
                events.append(reg.handle_response(_exchange(sock, reg.unregister(), reg.destination), now))
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    if password == "s3cret":
        assert [type(event) for event in events] == [Challenge, Registered, Registered, Unregistered], output
        assert process.returncode == 0, output
    else:
        assert [type(event) for event in events] == [Challenge, Failed], output
        assert events[-1] == Failed(403, "Forbidden", BACKOFF_MAX_S, True)


# --------------------------------------------------------------------------------------------------------
# Whatever the registrar sends, an event comes out


header_text = st.text(
    alphabet=st.sampled_from('0123456789 ;=,"<>:@.-_abcdefsipx\\\t' + "\u00e9\u0663"), max_size=60
)

USABLE_VALUES = ['Digest realm="r", nonce="n"', f"<{CONTACT}>;expires=9", "120"]


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from([100, 180, 200, 202, 301, 401, 403, 407, 423, 480, 500, 503, 603]),
    fields=st.lists(
        st.tuples(
            st.sampled_from(["Contact", "Expires", "Min-Expires", "Retry-After", "WWW-Authenticate",
                             "Proxy-Authenticate"]),
            st.one_of(header_text, st.sampled_from(USABLE_VALUES)),
        ),
        max_size=5,
    ),
)  # fmt: skip
def test_any_response_yields_an_event(status: int, fields: list[tuple[str, str]]) -> None:
    reg = registration(Credentials("1001", "p"))
    request = reg.next_request()
    response = make_response(request, status, to_tag="x")
    for name, value in fields:
        response.headers.add(name, value)
    event = reg.handle_response(response, 0.0)
    assert isinstance(event, (Registered, Challenge, Retry, Failed, Provisional))
    assert (reg.outstanding is None) == isinstance(event, (Registered, Failed))

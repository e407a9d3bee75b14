from __future__ import annotations

import pytest

from telephony.sip.message import (
    MAX_MESSAGE_SIZE,
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    SipUsageError,
    Via,
    generate_branch,
    generate_call_id,
    generate_tag,
    make_response,
    parse_cseq,
    parse_message,
)
from tests.telephony.sip_samples import load_sip, sample_names


def parse_request(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


def parse_error(data: bytes) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    return info.value


def without_header(data: bytes, name: bytes) -> bytes:
    return b"\r\n".join(
        line for line in data.split(b"\r\n") if not line.lower().startswith(name.lower() + b":")
    )


# --- the samples ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sample_names())
def test_every_sample_parses_and_survives_a_round_trip(name: str) -> None:
    message = parse_message(load_sip(name))
    again = parse_message(bytes(message))
    assert again == message
    # Serialising twice is stable byte for byte.
    assert bytes(again) == bytes(message)


def test_sipp_uac_invite() -> None:
    invite = parse_request(load_sip("sipp_uac_invite.txt"))
    assert invite.method == "INVITE"
    assert invite.uri == "sip:service@127.0.0.1:5060"
    assert invite.headers["Call-ID"] == "1-25143@127.0.1.1"
    assert parse_cseq(invite.headers["CSeq"]) == (1, "INVITE")
    assert len(invite.body) == 129  # "Content-Length:   129" (sipp pads the value)
    assert invite.body.startswith(b"v=0\r\n") and invite.body.endswith(b"a=rtpmap:0 PCMU/8000\r\n")
    sender = NameAddr.parse(invite.headers["From"])
    assert sender.display == "sipp" and sender.tag == "25143SIPpTag001"
    assert NameAddr.parse(invite.headers["Contact"]).uri == "sip:sipp@127.0.1.1:5061"


def test_compact_forms_and_folded_lines() -> None:
    invite = parse_request(load_sip("compact_folded_invite.txt"))
    names = [name for name, _ in invite.headers.items()]
    assert names == [
        "Via",
        "Max-Forwards",
        "To",
        "From",
        "Call-ID",
        "CSeq",
        "Contact",
        "Supported",
        "Subject",
        "Content-Type",
        "Content-Length",
    ]
    assert invite.headers["CSeq"] == "314159 INVITE"  # folded onto a tab-indented line
    assert invite.headers["To"] == '"Switchboard" <sip:agent@switchboard.example.com>'
    assert NameAddr.parse(invite.headers["From"]).tag == "1928301774"
    assert invite.headers.get_all("k") == ["timer", "100rel"]
    assert invite.headers.get_all("Subject") == ["Booking, please hold"]  # free text is never split
    assert invite.headers["i"] == "a84b4c76e66710@pc33.example.org"
    assert Via.parse(invite.headers["Via"]).host == "pc33.example.org"
    assert len(invite.body) == int(invite.headers["Content-Length"])
    serialised = bytes(invite)
    assert b"\r\nCall-ID: a84b4c76e66710@pc33.example.org\r\n" in serialised
    assert b"\r\ni:" not in serialised


def test_carrier_invite_with_many_vias() -> None:
    invite = parse_request(load_sip("carrier_trunk_invite.txt"))
    vias = [Via.parse(value) for value in invite.headers.get_all("Via")]
    assert [via.branch for via in vias] == [
        "z9hG4bK1e0c.8b7a3f91a2d4e5c60.0",
        "z9hG4bKsbc-7731-aa90c2",
        "z9hG4bKcore4f2d",
        "z9hG4bKedge0091",
    ]
    assert vias[1].params["received"] == "192.0.2.201" and vias[1].params["rport"] == "5060"
    assert vias[2].transport == "TCP" and vias[3].port is None
    assert invite.headers["Via"] == invite.headers.get_all("Via")[0]
    assert invite.headers.get_all("P-Asserted-Identity") == [
        "<sip:+14155550123@192.0.2.200;user=phone>",
        "<tel:+14155550123>",
    ]
    assert invite.headers.get_all("Date") == ["Tue, 18 Nov 2026 09:41:07 GMT"]
    assert SipUri.parse(invite.uri).params == {"user": "phone"}


# --- make_response -------------------------------------------------------------------------------------


def test_response_copies_the_transaction_headers_in_order() -> None:
    invite = parse_request(load_sip("carrier_trunk_invite.txt"))
    ringing = make_response(invite, 180, to_tag="our-tag")
    assert ringing.reason == "Ringing"
    assert ringing.headers.get_all("Via") == invite.headers.get_all("Via")
    assert ringing.headers["From"] == invite.headers["From"]
    assert NameAddr.parse(ringing.headers["To"]).tag == "our-tag"
    assert ringing.headers["Call-ID"] == invite.headers["Call-ID"]
    assert ringing.headers["CSeq"] == "102 INVITE"
    # Dialog-creating responses carry the Record-Route set (RFC 3261 section 12.1.1); failures do not.
    assert ringing.headers.get_all("Record-Route") == invite.headers.get_all("Record-Route")
    assert "Record-Route" not in make_response(invite, 486).headers
    response = parse_message(bytes(ringing))
    assert isinstance(response, SipResponse) and response.status == 180


def test_response_keeps_an_existing_to_tag_and_adds_body_and_extras() -> None:
    reinvite = parse_request(load_sip("hold_reinvite.txt"))
    ok = make_response(
        reinvite,
        200,
        to_tag="ignored",
        body=b"v=0\r\n",
        content_type="application/sdp",
        extra=[("Contact", "<sip:agent@203.0.113.50>"), ("Allow", "INVITE, ACK, BYE")],
    )
    assert NameAddr.parse(ok.headers["To"]).tag == "8d1e2f3a4b5c6d7e"
    raw = bytes(ok)
    assert raw.startswith(b"SIP/2.0 200 OK\r\n")
    assert raw.endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")
    parsed = parse_message(raw)
    assert parsed.headers["Content-Type"] == "application/sdp"
    assert parsed.headers.get_all("Allow") == ["INVITE", "ACK", "BYE"]


def test_trying_echoes_timestamp_and_custom_reason() -> None:
    options = parse_request(load_sip("options_keepalive.txt"))
    options.headers.add("Timestamp", "54.8")
    assert make_response(options, 100).headers["Timestamp"] == "54.8"
    assert make_response(options, 488, "Offer Required In INVITE").reason == "Offer Required In INVITE"
    with pytest.raises(SipUsageError):
        make_response(options, 99)
    with pytest.raises(SipUsageError):
        bytes(make_response(options, 400, "Bad\r\nInjected: yes"))


# --- line endings, lengths, sizes ----------------------------------------------------------------------


def test_bare_lf_line_endings_are_accepted() -> None:
    crlf = load_sip("bye.txt")
    assert parse_message(crlf.replace(b"\r\n", b"\n")) == parse_message(crlf)
    # Mixed endings within one message, and leading keep-alive CRLFs (RFC 3261 section 7.5).
    mixed = b"\r\n\r\n" + crlf.replace(b"\r\n", b"\n", 3)
    assert parse_message(mixed) == parse_message(crlf)


def test_body_without_content_length_is_the_rest_of_the_datagram() -> None:
    invite = without_header(load_sip("sipp_uac_invite.txt"), b"Content-Length")
    request = parse_request(invite)
    assert request.body == invite.split(b"\r\n\r\n", 1)[1]
    assert b"Content-Length: 129\r\n" in bytes(request)


def test_bytes_beyond_content_length_are_ignored() -> None:
    request = parse_request(load_sip("sipp_uac_invite.txt") + b"garbage after the body")
    assert request.body.endswith(b"PCMU/8000\r\n")


def test_content_length_beyond_the_datagram_is_rejected_with_a_partial_request() -> None:
    data = load_sip("sipp_uac_invite.txt").replace(b"Content-Length:   129", b"Content-Length: 4000")
    error = parse_error(data)
    assert (error.status, error.reason) == (400, "Content-Length exceeds datagram")
    assert error.partial is not None and error.partial.method == "INVITE"
    response = make_response(error.partial, error.status, error.reason)
    assert bytes(response).startswith(b"SIP/2.0 400 Content-Length exceeds datagram\r\n")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"12a", "Malformed Content-Length header"),
        (b"-1", "Malformed Content-Length header"),
        (b"9" * 5000, "Content-Length exceeds datagram"),  # more digits than int() accepts by default
    ],
)
def test_malformed_content_length(value: bytes, reason: str) -> None:
    error = parse_error(load_sip("bye.txt").replace(b"Content-Length: 0", b"Content-Length: " + value))
    assert (error.status, error.reason) == (400, reason)
    assert error.partial is not None


def test_conflicting_content_lengths() -> None:
    data = load_sip("bye.txt").replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 3")
    assert parse_error(data + b"abc").reason == "Conflicting Content-Length headers"


def test_oversized_message_is_rejected_as_too_large() -> None:
    data = load_sip("bye.txt").replace(
        b"Subject:", b"X-Padding: " + b"a" * MAX_MESSAGE_SIZE + b"\r\nSubject:"
    )
    error = parse_error(data)
    assert (error.status, error.reason) == (513, "Message Too Large")
    assert error.partial is not None and error.partial.headers["Call-ID"] == "1-25143@127.0.1.1"


# --- malformed requests --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header(name: str) -> None:
    error = parse_error(without_header(load_sip("sipp_uac_invite.txt"), name.encode()))
    assert (error.status, error.reason) == (400, f"Missing {name} header")
    assert error.partial is None  # a response could not carry the missing header


def test_missing_max_forwards_is_allowed() -> None:
    parse_request(without_header(load_sip("bye.txt"), b"Max-Forwards"))


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b"CSeq: 2 BYE", b"CSeq: 2 INVITE", "CSeq method does not match request method"),
        (b"CSeq: 2 BYE", b"CSeq: two BYE", "Malformed CSeq header"),
        (b"CSeq: 2 BYE", b"CSeq: 4294967296 BYE", "Malformed CSeq header"),
        (b"Max-Forwards: 70", b"Max-Forwards: seventy", "Malformed Max-Forwards header"),
        (b"Max-Forwards: 70", b"Max-Forwards: 256", "Malformed Max-Forwards header"),
        (
            b"From: sipp <sip:sipp@127.0.1.1:5061>",
            b"From: sipp <sip:sipp@127.0.1.1:5061",
            "Malformed From header",
        ),
        (b"To: service <", b"To: service <<", "Malformed To header"),
        (
            b"Call-ID: 1-25143@127.0.1.1",
            b"Call-ID: 1-25143@127.0.1.1\r\ni: other",
            "Multiple Call-ID headers",
        ),
        (b"Call-ID: 1-25143@127.0.1.1", b"Call-ID:", "Malformed Call-ID header"),
        (b"Subject: Performance Test", b"Subject Performance Test", "Malformed header line"),
        (b"Subject: Performance Test", b"Subj@ct: Performance Test", "Malformed header line"),
        (b"Subject: Performance Test", b"Subject: Perf\x00rmance", "Control character in header section"),
        (b"Subject: Performance Test", b"Subject: \xff\xfe", "Invalid UTF-8 in header section"),
        (
            b"BYE sip:agent@203.0.113.50:5060 SIP/2.0",
            b"BYE sip:agent@203.0.113.50:5060 SIP/3.0",
            "Version Not Supported",
        ),
        (
            b"BYE sip:agent@203.0.113.50:5060 SIP/2.0",
            b"BYE http://example.com/ SIP/2.0",
            "Unsupported URI Scheme",
        ),
        (b"BYE sip:agent@203.0.113.50:5060 SIP/2.0", b"BYE sip:agent@[::1 SIP/2.0", "Malformed Request-URI"),
    ],
)
def test_malformed_request_keeps_a_partial_request_to_answer(old: bytes, new: bytes, reason: str) -> None:
    data = load_sip("bye.txt")
    assert old in data
    error = parse_error(data.replace(old, new))
    assert error.reason == reason
    expected_status = {"Version Not Supported": 505, "Unsupported URI Scheme": 416}.get(reason, 400)
    assert error.status == expected_status
    assert error.partial is not None
    # The whole point of `partial`: an error response can be sent back to the top Via.
    raw = bytes(make_response(error.partial, error.status, error.reason))
    assert raw.startswith(f"SIP/2.0 {expected_status} {reason}\r\n".encode())
    assert b"\r\nVia: SIP/2.0/UDP 127.0.1.1:5061;branch=z9hG4bK-25143-1-5\r\n" in raw


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"", 400, "Empty message"),
        (b"\r\n\r\n", 400, "Empty message"),
        (b"HELLO\r\n\r\n", 400, "Malformed request line"),
        (b"INVITE  sip:a@b SIP/2.0\r\n\r\n", 400, "Malformed request line"),
        (b"INVITE sip:a@b HTTP/1.1\r\n\r\n", 400, "Malformed request line"),
        (b"INV(TE sip:a@b SIP/2.0\r\n\r\n", 400, "Malformed request line"),
        (b"INVITE sip:a@b SIP/2.0\r\n \tfolded-first\r\n\r\n", 400, "Malformed header line"),
        (b"\xc3\x28 sip:a@b SIP/2.0\r\n\r\n", 400, "Invalid UTF-8 in start line"),
        (b"SIP/2.0 2000 OK\r\n\r\n", 400, "Malformed status line"),
        (b"SIP/1.0 200 OK\r\n\r\n", 505, "Version Not Supported"),
    ],
)
def test_garbage_has_no_partial(data: bytes, status: int, reason: str) -> None:
    error = parse_error(data)
    assert (error.status, error.reason, error.partial) == (status, reason, None)


def test_unusable_top_via_leaves_nothing_to_answer() -> None:
    data = load_sip("bye.txt").replace(b"Via: SIP/2.0/UDP 127.0.1.1:5061", b"Via: SIP/2.0/UDP")
    error = parse_error(data)
    assert (error.status, error.reason, error.partial) == (400, "Malformed Via header", None)


def test_malformed_lower_via_is_rejected_with_partial() -> None:
    data = load_sip("bye.txt").replace(b"Max-Forwards: 70", b"Via: SIP/2.0/UDP bad host\r\nMax-Forwards: 70")
    error = parse_error(data)
    assert error.reason == "Malformed Via header" and error.partial is not None


def test_responses_are_checked_too() -> None:
    ok = load_sip("response_200_ok.txt")
    response = parse_message(ok)
    assert isinstance(response, SipResponse)
    assert (response.status, response.reason) == (200, "OK")
    assert parse_error(without_header(ok, b"CSeq")).reason == "Missing CSeq header"
    assert parse_error(ok.replace(b"CSeq: 1 INVITE", b"CSeq: x")).reason == "Malformed CSeq header"
    no_reason = parse_message(load_sip("response_180_ringing.txt").replace(b"180 Ringing", b"180"))
    assert isinstance(no_reason, SipResponse) and no_reason.reason == ""


def test_parse_error_reason_cannot_break_a_status_line() -> None:
    error = SipParseError(400, "Bad\r\nInjected: header")
    assert error.reason == "Bad Injected: header"
    assert str(error) == "400 Bad Injected: header"


# --- headers -------------------------------------------------------------------------------------------


def test_headers_multimap() -> None:
    headers = Headers([("v", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("From", "<sip:a@b>;tag=1")])
    headers.add("VIA", "SIP/2.0/UDP b;branch=z9hG4bK2, SIP/2.0/UDP c;branch=z9hG4bK3")
    headers.add("Contact", '"Doe, John" <sip:jd@h;x=1,2>, <sip:other@h>')
    headers.add("WWW-Authenticate", 'Digest realm="a", nonce="b", algorithm=MD5')
    assert "via" in headers and "i" not in headers and 3 not in headers
    assert headers.get_all("via") == [
        "SIP/2.0/UDP a;branch=z9hG4bK1",
        "SIP/2.0/UDP b;branch=z9hG4bK2",
        "SIP/2.0/UDP c;branch=z9hG4bK3",
    ]
    assert headers.get_all("m") == ['"Doe, John" <sip:jd@h;x=1,2>', "<sip:other@h>"]
    assert headers.get_all("www-authenticate") == ['Digest realm="a", nonce="b", algorithm=MD5']
    assert headers.get("Call-ID") is None and headers.get("Call-ID", "x") == "x"
    with pytest.raises(KeyError):
        headers["Call-ID"]
    headers.set("via", "SIP/2.0/UDP z;branch=z9hG4bK9")
    assert headers.items()[0] == ("Via", "SIP/2.0/UDP z;branch=z9hG4bK9")
    assert headers.get_all("Via") == ["SIP/2.0/UDP z;branch=z9hG4bK9"]
    headers.remove("CONTACT")
    assert "Contact" not in headers
    assert headers == Headers(headers.items()) and headers != Headers()
    with pytest.raises(SipUsageError):
        headers.add("X-Evil", "a\r\nInjected: 1")
    with pytest.raises(SipUsageError):
        headers.add("Bad Name", "x")


# --- addresses -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "display", "uri", "params", "rendered"),
    [
        ('"Bob" <sip:bob@x>;tag=1', "Bob", "sip:bob@x", {"tag": "1"}, '"Bob" <sip:bob@x>;tag=1'),
        ("<sip:x>", None, "sip:x", {}, "<sip:x>"),
        ("sip:x;tag=1", None, "sip:x", {"tag": "1"}, "<sip:x>;tag=1"),
        (
            "Front  Desk <sip:2001@h;user=phone>;TAG=a",
            "Front Desk",
            "sip:2001@h;user=phone",
            {"tag": "a"},
            None,
        ),
        (r'"Quote \"Q\" \\" <tel:+1555>', 'Quote "Q" \\', "tel:+1555", {}, r'"Quote \"Q\" \\" <tel:+1555>'),
        ('<sip:a@b>;+sip.instance="<urn:uuid:1;2>";expires=60', None, "sip:a@b", None, None),
    ],
)
def test_name_addr(
    text: str, display: str | None, uri: str, params: dict[str, str | None] | None, rendered: str | None
) -> None:
    address = NameAddr.parse(text)
    assert (address.display, address.uri) == (display, uri)
    if params is not None:
        assert address.params == params
    if rendered is not None:
        assert str(address) == rendered
    assert NameAddr.parse(str(address)) == address


def test_name_addr_with_quoted_param_keeps_it_whole() -> None:
    address = NameAddr.parse('<sip:a@b>;+sip.instance="<urn:uuid:1;2>";expires=60')
    assert address.params == {"+sip.instance": '"<urn:uuid:1;2>"', "expires": "60"}
    assert address.tag is None


@pytest.mark.parametrize(
    "text", ["", '"unterminated <sip:a>', "<sip:a", "Bob sip:a", "<nocolon>", "<sip:a>x"]
)
def test_malformed_name_addr(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        NameAddr.parse(text)
    assert info.value.status == 400


URI_CASES = {
    "sip:alice@atlanta.com": SipUri("sip", "alice", "atlanta.com"),
    "SIP:alice:secret@atlanta.com:5061": SipUri("sip", "alice", "atlanta.com", 5061, password="secret"),
    "sips:[2001:db8::10]:5061;transport=tls": SipUri(
        "sips", None, "2001:db8::10", 5061, {"transport": "tls"}
    ),
    "sip:+1555;npdi@gw.example.com;user=phone;lr": SipUri(
        "sip", "+1555;npdi", "gw.example.com", None, {"user": "phone", "lr": None}
    ),
    "sip:bob@h?subject=project&priority=urgent": SipUri(
        "sip", "bob", "h", headers={"subject": "project", "priority": "urgent"}
    ),
    "tel:+1-201-555-0123;phone-context=example.com": SipUri(
        "tel", "+1-201-555-0123", "", None, {"phone-context": "example.com"}
    ),
    "sip:10.0.0.1": SipUri("sip", None, "10.0.0.1"),
}


@pytest.mark.parametrize(("text", "expected"), URI_CASES.items())
def test_sip_uri(text: str, expected: SipUri) -> None:
    uri = SipUri.parse(text)
    assert uri == expected
    assert SipUri.parse(str(uri)) == uri


@pytest.mark.parametrize(
    "text",
    ["", "alice@atlanta.com", "http://example.com", "sip:", "sip:@host", "sip:a@", "sip:a@host:99999",
     "sip:a@host:50x", "sip:a@[::1", "sip:a@ho st", "sip:a@host;;x", "sip:a@h?nohdr", "tel:", "tel:abc!"],
)  # fmt: skip
def test_malformed_sip_uri(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        SipUri.parse(text)
    assert info.value.status == 400


def test_via() -> None:
    via = Via.parse("SIP / 2.0 / udp [2001:db8::9]:5062 ;rport;branch=z9hG4bKabc;received=192.0.2.1")
    assert (via.transport, via.host, via.port) == ("UDP", "2001:db8::9", 5062)
    assert via.branch == "z9hG4bKabc" and via.params["rport"] is None
    assert str(via) == "SIP/2.0/UDP [2001:db8::9]:5062;rport;branch=z9hG4bKabc;received=192.0.2.1"
    assert Via.parse(str(via)) == via
    assert Via.parse("SIP/2.0/TCP host").branch is None
    for bad in ["SIP/2.0 host", "SIP/2.0/UDP", "SIP/3.0/UDP h", "SIP/2.0/UDP h:port", "SIP/2.0/UDP h;=x"]:
        with pytest.raises(SipParseError):
            Via.parse(bad)


def test_parse_cseq() -> None:
    assert parse_cseq("  4711   INVITE ") == (4711, "INVITE")
    assert parse_cseq("2147483647 BYE") == (2**31 - 1, "BYE")
    for bad in ["", "1", "INVITE 1", "1 INVITE extra", "2147483648 BYE", "-1 BYE", "١ BYE"]:
        with pytest.raises(SipParseError):
            parse_cseq(bad)


def test_generated_identifiers_are_unique_and_well_formed() -> None:
    branches = {generate_branch() for _ in range(1000)}
    assert len(branches) == 1000 and all(b.startswith("z9hG4bK") for b in branches)
    assert len({generate_tag() for _ in range(1000)}) == 1000
    call_id = generate_call_id("198.51.100.7")
    assert call_id.endswith("@198.51.100.7") and " " not in call_id

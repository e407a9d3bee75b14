"""Mutation fuzzing of the SIP parser: whatever arrives, only SipParseError may come out.

Starts from the realistic messages in tests/data/sip and applies byte- and line-level mutations biased
towards the characters the grammar cares about. Messages that still parse must survive a serialise/parse
round trip, and every error must be answerable.
"""

from __future__ import annotations

import contextlib

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from telephony.sip.message import (
    NameAddr,
    SipParseError,
    SipRequest,
    SipUri,
    Via,
    make_response,
    parse_cseq,
    parse_message,
)
from tests.telephony.sip_samples import load_sip, sample_names

SAMPLES = [load_sip(name) for name in sample_names()]

INTERESTING = [
    b"\r\n", b"\n", b"\r", b" ", b"\t", b"\r\n ", b":", b";", b",", b"<", b">", b'"', b"\\", b"=", b"@",
    b"[", b"]", b"?", b"&", b"/", b"\x00", b"\x7f", b"\xff", b"\xc3\xa9", b"\xc3", b"SIP/2.0", b"SIP/3.0",
    b"z9hG4bK", b";tag=", b"Content-Length: 99999\r\n", b"l: 3\r\n", b"v: SIP/2.0/UDP x\r\n",
    b"CSeq: 1 OPTIONS\r\n", b"Via: \r\n", b"i:\r\n", b"sip:", b"tel:", b"sips:[::1]:", b"65536", b"-1",
    b"2147483648", b"\r\n\r\n", b"9" * 5000,
]  # fmt: skip

chunks = st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=8))


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "duplicate", "line"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "replace" and data:
            data[position : position + 1] = draw(chunks)
        elif kind == "insert":
            data[position:position] = draw(chunks)
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 40))]
        elif kind == "truncate":
            del data[position:]
        elif kind == "duplicate":
            data[position:position] = data[position : position + draw(st.integers(1, 80))]
        else:
            lines = bytes(data).split(b"\r\n")
            index = draw(st.integers(0, len(lines) - 1))
            action = draw(st.sampled_from(["drop", "copy", "value", "swap"]))
            if action == "drop":
                del lines[index]
            elif action == "copy":
                lines.insert(draw(st.integers(0, len(lines))), lines[index])
            elif action == "value":
                name = lines[index].split(b":", 1)[0]
                lines[index] = name + b": " + b"".join(draw(st.lists(chunks, max_size=6)))
            else:
                other = draw(st.integers(0, len(lines) - 1))
                lines[index], lines[other] = lines[other], lines[index]
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


@settings(max_examples=3000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages())
def test_only_sip_parse_error_escapes(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipParseError as error:
        assert error.status in (400, 416, 505, 513)
        assert error.reason and "\r" not in error.reason and "\n" not in error.reason
        if error.partial is not None:
            # What the user agent does with it: answer. That must never blow up either.
            raw = bytes(make_response(error.partial, error.status, error.reason))
            assert raw.startswith(f"SIP/2.0 {error.status} ".encode())
        return
    # Serialising is a fixed point (Content-Length is always written, so compare the bytes, not the maps).
    again = parse_message(bytes(message))
    assert bytes(again) == bytes(message)
    assert again.body == message.body
    if isinstance(message, SipRequest):
        # A request that parses is safe to act on: the headers a transaction needs are all usable.
        Via.parse(message.headers["Via"])
        NameAddr.parse(message.headers["From"])
        NameAddr.parse(message.headers["To"])
        assert parse_cseq(message.headers["CSeq"])[1] == message.method
        bytes(make_response(message, 200, to_tag="t"))


@settings(max_examples=1000, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_sip_parse_error(data: bytes) -> None:
    with contextlib.suppress(SipParseError):
        parse_message(data)


header_values = st.text(
    alphabet=st.sampled_from(list('sip:tel<>"\\;,=@[]?&/ 0123456789abcfz.-_%+\tSIP/2.0UDé'))
)


@settings(max_examples=1000, deadline=None, database=None)
@given(header_values)
def test_header_value_parsers_raise_only_sip_parse_error(text: str) -> None:
    for parse in (SipUri.parse, NameAddr.parse, Via.parse, parse_cseq):
        try:
            parsed = parse(text)
        except SipParseError as error:
            assert error.status == 400
            continue
        if isinstance(parsed, (SipUri, NameAddr, Via)):
            # What parses must render to something that parses back to the same value.
            assert type(parsed).parse(str(parsed)) == parsed

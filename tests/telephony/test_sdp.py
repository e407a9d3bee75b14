from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from telephony.sdp import (
    MediaDescription,
    NegotiatedMedia,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    build_offer,
    negotiate_answer,
    parse_answer,
)
from tests.telephony.sip_samples import sample_names, sdp_body


def answer_offer(
    offer: SessionDescription,
    *,
    local_host: str = "203.0.113.50",
    supported: tuple[str, ...] = ("PCMU", "PCMA"),
    session_version: int = 1,
) -> tuple[SessionDescription, NegotiatedMedia]:
    return negotiate_answer(
        offer,
        local_host=local_host,
        local_port=40000,
        session_id=777,
        session_version=session_version,
        supported=supported,
    )


def sdp(*lines: str) -> SessionDescription:
    return SessionDescription.parse("\r\n".join(lines) + "\r\n")


HEAD = ("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0")


def offer_from(sample: str) -> SessionDescription:
    return SessionDescription.parse(sdp_body(sample))


def test_sipp_default_offer_pcmu_only() -> None:
    offer = offer_from("sipp_uac_invite.txt")
    assert offer.origin == "user1 53655765 2353687637 IN IP4 127.0.1.1"
    assert offer.connection == "127.0.1.1"
    [audio] = offer.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == ("audio", 6000, "RTP/AVP", [0])
    answer, media = answer_offer(offer)
    assert media == NegotiatedMedia("127.0.1.1", 6000, 0, "PCMU", None, 20, "sendrecv")
    text = bytes(answer).decode()
    assert text == (
        "v=0\r\n"
        "o=- 777 1 IN IP4 203.0.113.50\r\n"
        "s=-\r\n"
        "c=IN IP4 203.0.113.50\r\n"
        "t=0 0\r\n"
        "m=audio 40000 RTP/AVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )


def test_softphone_with_many_codecs_gets_the_first_g711_and_the_8khz_event() -> None:
    offer = offer_from("softphone_invite.txt")
    audio = offer.media[0]
    assert audio.formats == [96, 97, 98, 9, 0, 8, 18, 101, 99, 100]
    assert audio.rtpmap[96] == "opus/48000/2" and audio.fmtp[96] == "useinbandfec=1"
    assert ("rtcp-fb", "* trr-int 1000") in audio.attributes
    assert offer.attributes[0][0] == "rtcp-xr"
    answer, media = answer_offer(offer)
    # opus, speex and G722 come first in the offer but are not ours; PCMU (static 0, no rtpmap) is next.
    assert (media.codec, media.payload_type) == ("PCMU", 0)
    assert media.telephone_event_pt == 100  # not 101 (48 kHz) nor 99 (16 kHz)
    [answered] = answer.media
    assert answered.formats == [0, 100]
    assert answered.rtpmap == {0: "PCMU/8000", 100: "telephone-event/8000"}
    assert answered.fmtp == {100: "0-16"}


def test_pcmu_can_be_refused_by_configuration() -> None:
    _, media = answer_offer(offer_from("softphone_invite.txt"), supported=("PCMA",))
    assert (media.codec, media.payload_type) == ("PCMA", 8)


def test_carrier_pcma_only_with_telephone_event() -> None:
    offer = offer_from("carrier_trunk_invite.txt")
    answer, media = answer_offer(offer)
    assert media == NegotiatedMedia("192.0.2.210", 31874, 8, "PCMA", 101, 20, "sendrecv")
    assert b"m=audio 40000 RTP/AVP 8 101\r\n" in bytes(answer)
    assert b"a=fmtp:101 0-16\r\n" in bytes(answer)


def test_offer_order_is_respected() -> None:
    offer = offer_from("asterisk_pjsip_invite.txt")
    assert offer.media[0].formats == [0, 8, 3, 9, 101]
    _, media = answer_offer(offer)
    assert media.codec == "PCMU"
    pcma_first = SessionDescription.parse(sdp_body("asterisk_pjsip_invite.txt").replace(b"0 8 3", b"8 0 3"))
    assert answer_offer(pcma_first)[1].codec == "PCMA"


def test_dynamic_payload_type_for_g711_is_echoed() -> None:
    offer = SessionDescription.parse(
        "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"
        "m=audio 5004 RTP/AVP 112 113\na=rtpmap:112 pcmu/8000/1\na=rtpmap:113 telephone-event/8000\n"
    )
    _, media = answer_offer(offer)
    assert (media.payload_type, media.codec, media.telephone_event_pt) == (112, "PCMU", 113)


@pytest.mark.parametrize(
    ("direction", "answer_direction"),
    [("sendonly", "recvonly"), ("recvonly", "sendonly"), ("inactive", "inactive"), ("sendrecv", "sendrecv")],
)
def test_direction_is_mirrored(direction: str, answer_direction: str) -> None:
    body = sdp_body("hold_reinvite.txt").replace(b"a=sendonly", f"a={direction}".encode())
    answer, media = answer_offer(SessionDescription.parse(body))
    assert media.direction == answer_direction
    assert answer.media[0].direction == answer_direction


def test_hold_reinvite_sendonly() -> None:
    offer = offer_from("hold_reinvite.txt")
    assert offer.media[0].direction == "sendonly"
    assert offer.media_direction(offer.media[0]) == "sendonly"
    _, media = answer_offer(offer, session_version=2)
    assert media.direction == "recvonly"


def test_session_level_direction_and_media_level_connection() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=inactive\r\n"
        "m=audio 5004 RTP/AVP 0\r\nc=IN IP4 198.51.100.9\r\n"
    )
    _, media = answer_offer(offer)
    assert (media.remote_host, media.direction) == ("198.51.100.9", "inactive")


def test_other_streams_are_refused_in_place() -> None:
    offer = SessionDescription.parse(
        "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"
        "m=video 5006 RTP/AVP 96\na=rtpmap:96 H264/90000\n"
        "m=audio 5008 RTP/SAVP 0\n"
        "m=audio 5004 RTP/AVP 0\n"
        "m=image 5010 udptl t38\n"
    )
    answer, media = answer_offer(offer)
    assert media.remote_port == 5004
    assert [(m.media, m.port, m.proto) for m in answer.media] == [
        ("video", 0, "RTP/AVP"),
        ("audio", 0, "RTP/SAVP"),
        ("audio", 40000, "RTP/AVP"),
        ("image", 0, "udptl"),
    ]
    assert b"m=image 0 udptl t38\r\n" in bytes(answer)
    # The offerer reads our answer back the same way.
    assert SessionDescription.parse(bytes(answer)).media[2].formats == [0]


@pytest.mark.parametrize(
    "media_line",
    [
        "m=audio 5004 RTP/AVP 18 96\na=rtpmap:96 opus/48000/2",  # G.729 and opus only
        "m=audio 5004 RTP/AVP 96\na=rtpmap:96 PCMU/16000",  # wrong clock rate
        "m=audio 5004 RTP/SAVP 0",  # SRTP only
        "m=audio 0 RTP/AVP 0",  # the only audio stream is disabled
        "m=video 5004 RTP/AVP 0",
    ],
)
def test_no_common_codec(media_line: str) -> None:
    offer = SessionDescription.parse(
        f"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n{media_line}\n"
    )
    with pytest.raises(NoCommonCodec):
        answer_offer(offer)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "o=- 1 1 IN IP4 h\ns=-\n",  # no v= first
        "v=1\no=- 1 1 IN IP4 h\ns=-\n",
        "v=0\ns=-\n",  # no o=
        "v=0\no=- 1 1 IN IP4 h\n",  # no s=
        "v=0\no=- 1 1 IN IP4\ns=-\n",
        "v=0\no=- 1 1 IN IP4 h\ns=-\nc=IN IP4\n",
        "v=0\no=- 1 1 IN IP4 h\ns=-\nc=ATM NSAP x\n",
        "v=0\no=- 1 1 IN IP4 h\ns=-\nthis is not sdp\n",
        "v=0\no=- 1 1 IN IP4 h\ns=-\nm=audio\n",
        "v=0\no=- 1 1 IN IP4 h\ns=-\nm=audio 99999 RTP/AVP 0\n",
        "v=0\no=- 1 1 IN IP4 h\ns=-\nm=audio " + "9" * 5000 + " RTP/AVP 0\n",  # past int()'s digit limit
        "v=0\no=- 1 1 IN IP4 h\ns=-\nm=audio 5004 RTP/AVP PCMU\n",
        "v=0\no=- 1 1 IN IP4 h\ns=-\nm=audio 5004 RTP/AVP 128\n",
        "v=0\no=- 1 1 IN IP4 h\ns=-\nm=audio 5004 RTP/AVP 0\na=rtpmap:x PCMU/8000\n",
        "v=0\no=- 1 1 IN IP4 h\ns=-\nm=audio 5004 RTP/AVP 0\na=rtpmap:0 PCMU\n",
        "v=0\no=- 1 1 IN IP4 h\ns=-\nm=audio 5004 RTP/AVP 0\na=ptime:twenty\n",
    ],
)
def test_malformed_sdp(text: str) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(text)
    with pytest.raises(SdpError):
        SessionDescription.parse(b"v=0\r\no=- 1 1 IN IP4 h\r\ns=\xff\r\n")


def test_audio_without_any_connection_address_is_malformed() -> None:
    offer = SessionDescription.parse("v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nm=audio 5004 RTP/AVP 0\n")
    with pytest.raises(SdpError):
        answer_offer(offer)


@pytest.mark.parametrize("name", [n for n in sample_names() if "invite" in n or "200" in n])
def test_round_trip(name: str) -> None:
    parsed = SessionDescription.parse(sdp_body(name))
    again = SessionDescription.parse(bytes(parsed))
    assert again == parsed
    assert bytes(again) == bytes(parsed)


def test_ipv6_connection_round_trip() -> None:
    answer, _ = answer_offer(offer_from("sipp_uac_invite.txt"), local_host="2001:db8::5")
    assert b"c=IN IP6 2001:db8::5\r\n" in bytes(answer)
    assert b"o=- 777 1 IN IP6 2001:db8::5\r\n" in bytes(answer)
    assert SessionDescription.parse(bytes(answer)).connection == "2001:db8::5"


# --- UAC side ------------------------------------------------------------------------------------------


def test_build_offer() -> None:
    offer = build_offer(local_host="203.0.113.50", local_port=40002, session_id=5, codecs=("PCMA", "PCMU"))
    text = bytes(offer).decode()
    assert "m=audio 40002 RTP/AVP 8 0 101\r\n" in text
    assert "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n" in text
    assert "a=ptime:20\r\na=sendrecv\r\n" in text
    with pytest.raises(ValueError):
        build_offer(local_host="h", local_port=1, session_id=1, codecs=("G729",))


def test_offer_answer_between_our_own_two_sides() -> None:
    offer = build_offer(local_host="192.0.2.1", local_port=40000, session_id=1)
    answer, answerer_view = negotiate_answer(
        SessionDescription.parse(bytes(offer)), local_host="192.0.2.2", local_port=41000, session_id=2
    )
    offerer_view = parse_answer(offer, SessionDescription.parse(bytes(answer)))
    assert offerer_view == NegotiatedMedia("192.0.2.2", 41000, 0, "PCMU", 101, 20, "sendrecv")
    assert (answerer_view.remote_host, answerer_view.remote_port) == ("192.0.2.1", 40000)


def test_parse_answer_from_a_pbx() -> None:
    offer = build_offer(local_host="203.0.113.50", local_port=40000, session_id=1)
    media = parse_answer(offer, offer_from("response_200_ok.txt"))
    assert media == NegotiatedMedia("192.0.2.200", 17322, 0, "PCMU", 101, 20, "sendrecv")
    held = SessionDescription.parse(sdp_body("response_200_ok.txt").replace(b"a=sendrecv", b"a=recvonly"))
    assert parse_answer(offer, held).direction == "sendonly"


def test_parse_answer_rejections() -> None:
    offer = build_offer(local_host="203.0.113.50", local_port=40000, session_id=1, codecs=("PCMU",))
    refused = sdp_body("response_200_ok.txt").replace(b"m=audio 17322", b"m=audio 0")
    with pytest.raises(NoCommonCodec):
        parse_answer(offer, SessionDescription.parse(refused))
    not_offered = sdp_body("response_200_ok.txt").replace(b"RTP/AVP 0 101", b"RTP/AVP 8 101")
    with pytest.raises(NoCommonCodec):
        parse_answer(offer, SessionDescription.parse(not_offered))
    extra_stream = (
        bytes(SessionDescription.parse(sdp_body("response_200_ok.txt"))) + b"m=video 0 RTP/AVP 96\r\n"
    )
    with pytest.raises(SdpError):
        parse_answer(offer, SessionDescription.parse(extra_stream))


def test_media_description_static_encodings() -> None:
    media = MediaDescription("audio", 1, "RTP/AVP", [0, 8, 97], rtpmap={97: "iLBC/8000"})
    assert [media.encoding(pt) for pt in media.formats] == ["PCMU/8000", "PCMA/8000", "iLBC/8000"]


sdp_lines = st.lists(
    st.one_of(
        st.sampled_from(sdp_body("softphone_invite.txt").decode().split("\r\n")),
        st.text(alphabet="vosctma=:/ 0123456789IPNRTAVUMpcmu-", max_size=30),
    ),
    max_size=25,
)


@settings(max_examples=600, deadline=None, database=None)
@given(sdp_lines)
def test_only_sdp_errors_escape(lines: list[str]) -> None:
    try:
        offer = SessionDescription.parse("v=0\r\n" + "\r\n".join(lines))
        answer_offer(offer)
    except (SdpError, NoCommonCodec):
        pass

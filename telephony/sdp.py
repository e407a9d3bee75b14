"""SDP (RFC 4566) parsing and serialising, and the offer/answer rules of RFC 3264 for one G.711 audio stream.

Only what a telephone call needs is modelled as fields (connection, rtpmap, fmtp, ptime, direction);
every other line is kept in order so a parsed description serialises back without losing anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}

# RFC 3551 table 4: static payload types a peer may offer without an rtpmap line.
STATIC_PAYLOAD_TYPES = {
    0: "PCMU/8000",
    3: "GSM/8000",
    4: "G723/8000",
    8: "PCMA/8000",
    9: "G722/8000",
    18: "G729/8000",
}
_G711_PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}
# Events 0-15 are the DTMF keys, 16 is hook flash (RFC 4733 section 3.2).
TELEPHONE_EVENTS = "0-16"
ANSWER_PTIME = 20

_LINE_RE = re.compile(r"([a-z])=(.*)")


class SdpError(Exception):
    """The session description is malformed (the peer's fault: answer 400)."""


class NoCommonCodec(Exception):
    """The offer or answer has no audio stream we can use."""


@dataclass
class MediaDescription:
    media: str
    port: int
    proto: str
    formats: list[int]
    rtpmap: dict[int, str] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    direction: str | None = None
    ptime: int | None = None
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    # Non-numeric format tokens (e.g. 't38' on an 'image udptl' line) and lines other than c= / a=.
    other_formats: list[str] = field(default_factory=list)
    other_lines: list[tuple[str, str]] = field(default_factory=list)
    port_count: int | None = None

    def encoding(self, payload_type: int) -> str | None:
        """'PCMU/8000' for a payload type, from the rtpmap or the static table."""
        return self.rtpmap.get(payload_type, STATIC_PAYLOAD_TYPES.get(payload_type))


@dataclass
class SessionDescription:
    origin: str
    session_name: str
    connection: str | None
    media: list[MediaDescription]
    direction: str | None = None
    timing: str = "0 0"
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    other_lines: list[tuple[str, str]] = field(default_factory=list)
    version: int = 0

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SdpError("SDP is not valid UTF-8") from exc
        lines = [line.rstrip("\r") for line in data.split("\n")]
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            raise SdpError("empty SDP")
        session = cls(origin="", session_name="", connection=None, media=[])
        seen_origin = seen_name = False
        current: MediaDescription | None = None
        for number, line in enumerate(lines, 1):
            match = _LINE_RE.fullmatch(line)
            if match is None:
                raise SdpError(f"line {number} is not 'x=value': {line[:40]!r}")
            kind, value = match.groups()
            if number == 1:
                if kind != "v" or value.strip() != "0":
                    raise SdpError("SDP must start with v=0")
                continue
            if kind == "m":
                current = _parse_media_line(value)
                session.media.append(current)
            elif current is not None:
                _apply_media_line(current, kind, value)
            elif kind == "o":
                if len(value.split()) != 6:
                    raise SdpError("malformed o= line")
                session.origin, seen_origin = value, True
            elif kind == "s":
                session.session_name, seen_name = value, True
            elif kind == "c":
                session.connection = _parse_connection(value)
            elif kind == "t":
                session.timing = value
            elif kind == "a":
                name, attr_value = _split_attribute(value)
                if name in DIRECTIONS and attr_value is None:
                    session.direction = name
                else:
                    session.attributes.append((name, attr_value))
            else:
                session.other_lines.append((kind, value))
        if not seen_origin:
            raise SdpError("missing o= line")
        if not seen_name:
            raise SdpError("missing s= line")
        return session

    def __bytes__(self) -> bytes:
        lines = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name or '-'}"]
        lines += [f"{kind}={value}" for kind, value in self.other_lines if kind in "iuep"]
        if self.connection is not None:
            lines.append(f"c={_format_connection(self.connection)}")
        lines += [f"{kind}={value}" for kind, value in self.other_lines if kind == "b"]
        lines.append(f"t={self.timing}")
        lines += [f"{kind}={value}" for kind, value in self.other_lines if kind not in "iuepb"]
        if self.direction is not None:
            lines.append(f"a={self.direction}")
        lines += [_format_attribute(name, value) for name, value in self.attributes]
        for media in self.media:
            lines += _media_lines(media)
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def audio(self) -> MediaDescription | None:
        """The first audio stream that is not disabled (port 0)."""
        return next((m for m in self.media if m.media == "audio" and m.port != 0), None)

    def media_connection(self, media: MediaDescription) -> str | None:
        return media.connection or self.connection

    def media_direction(self, media: MediaDescription) -> str:
        return media.direction or self.direction or "sendrecv"


def _split_attribute(value: str) -> tuple[str, str | None]:
    name, colon, attr_value = value.partition(":")
    return name.strip(), (attr_value if colon else None)


def _format_attribute(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


def _parse_connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"malformed c= line: {value[:40]!r}")
    # A multicast TTL or address count ('/127') is meaningless for a unicast phone call; keep the address.
    return parts[2].split("/")[0]


def _format_connection(address: str) -> str:
    return f"IN {'IP6' if ':' in address else 'IP4'} {address}"


def _parse_int(text: str, what: str, upper: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) > upper:
        raise SdpError(f"malformed {what}: {text[:20]!r}")
    return int(text)


def _parse_media_line(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"malformed m= line: {value[:60]!r}")
    media, port_text, proto, *tokens = parts
    port_text, slash, count_text = port_text.partition("/")
    port = _parse_int(port_text, "m= port", 65535)
    count = _parse_int(count_text, "m= port count", 65535) if slash else None
    description = MediaDescription(media, port, proto, [], port_count=count)
    for token in tokens:
        if proto.upper().startswith("RTP/"):
            description.formats.append(_parse_int(token, "payload type", 127))
        else:
            description.other_formats.append(token)
    return description


def _apply_media_line(media: MediaDescription, kind: str, value: str) -> None:
    if kind == "c":
        media.connection = _parse_connection(value)
        return
    if kind != "a":
        media.other_lines.append((kind, value))
        return
    name, attr_value = _split_attribute(value)
    if name in DIRECTIONS and attr_value is None:
        media.direction = name
    elif name in ("rtpmap", "fmtp") and attr_value is not None:
        pt_text, _, rest = attr_value.strip().partition(" ")
        payload_type = _parse_int(pt_text, f"{name} payload type", 127)
        if name == "rtpmap":
            if not re.fullmatch(r"[^/\s]+/\d+(/\d+)?", rest.strip()):
                raise SdpError(f"malformed rtpmap: {attr_value[:40]!r}")
            media.rtpmap[payload_type] = rest.strip()
        else:
            media.fmtp[payload_type] = rest.strip()
    elif name == "ptime" and attr_value is not None:
        media.ptime = _parse_int(attr_value.strip(), "ptime", 1000)
    else:
        media.attributes.append((name, attr_value))


def _media_lines(media: MediaDescription) -> list[str]:
    port = str(media.port) if media.port_count is None else f"{media.port}/{media.port_count}"
    formats = [str(pt) for pt in media.formats] + media.other_formats
    lines = [f"m={media.media} {port} {media.proto} {' '.join(formats)}"]
    lines += [f"{kind}={value}" for kind, value in media.other_lines if kind == "i"]
    if media.connection is not None:
        lines.append(f"c={_format_connection(media.connection)}")
    lines += [f"{kind}={value}" for kind, value in media.other_lines if kind != "i"]
    # Maps for payload types missing from the m= line are odd but kept, so nothing is lost in a round trip.
    stray = sorted((set(media.rtpmap) | set(media.fmtp)) - set(media.formats))
    for payload_type in [*media.formats, *stray]:
        if payload_type in media.rtpmap:
            lines.append(f"a=rtpmap:{payload_type} {media.rtpmap[payload_type]}")
        if payload_type in media.fmtp:
            lines.append(f"a=fmtp:{payload_type} {media.fmtp[payload_type]}")
    if media.ptime is not None:
        lines.append(f"a=ptime:{media.ptime}")
    if media.direction is not None:
        lines.append(f"a={media.direction}")
    lines += [_format_attribute(name, value) for name, value in media.attributes]
    return lines


@dataclass(frozen=True)
class NegotiatedMedia:
    remote_host: str
    remote_port: int
    payload_type: int
    codec: str  # "PCMU" or "PCMA"
    telephone_event_pt: int | None
    ptime: int
    direction: str  # ours: what we may do (sendrecv / sendonly / recvonly / inactive)


def _codec_name(media: MediaDescription, payload_type: int) -> str | None:
    """'PCMU' when the payload type is 8 kHz mono G.711 (or anything else we might support), else None."""
    encoding = media.encoding(payload_type)
    if encoding is None:
        return None
    name, _, rest = encoding.partition("/")
    rate, _, channels = rest.partition("/")
    if rate != "8000" or channels not in ("", "1"):
        return None
    return name.upper()


def _telephone_event_pt(media: MediaDescription) -> int | None:
    for payload_type in media.formats:
        encoding = media.rtpmap.get(payload_type, "")
        if encoding.lower() in ("telephone-event/8000", "telephone-event/8000/1"):
            return payload_type
    return None


def _origin(session_id: int, session_version: int, host: str) -> str:
    return f"- {session_id} {session_version} IN {'IP6' if ':' in host else 'IP4'} {host}"


def _audio_stream(
    local_port: int, codec: str, payload_type: int, telephone_event_pt: int | None, direction: str
) -> MediaDescription:
    formats = [payload_type] + ([telephone_event_pt] if telephone_event_pt is not None else [])
    stream = MediaDescription(
        "audio", local_port, "RTP/AVP", formats, direction=direction, ptime=ANSWER_PTIME
    )
    stream.rtpmap[payload_type] = f"{codec}/8000"
    if telephone_event_pt is not None:
        stream.rtpmap[telephone_event_pt] = "telephone-event/8000"
        stream.fmtp[telephone_event_pt] = TELEPHONE_EVENTS
    return stream


def _rejected(offered: MediaDescription) -> MediaDescription:
    # RFC 3264 section 6: a refused stream keeps its place, with port 0 and the offered formats.
    return MediaDescription(
        offered.media, 0, offered.proto, list(offered.formats), other_formats=list(offered.other_formats)
    )


def negotiate_answer(
    offer: SessionDescription,
    *,
    local_host: str,
    local_port: int,
    session_id: int,
    session_version: int = 1,
    supported: tuple[str, ...] = ("PCMU", "PCMA"),
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer an offer (RFC 3264 section 6): accept the first usable audio stream, refuse every other one.

    The codec is the first one in the offer's order that we support: the offerer lists its preference, and
    following it avoids transcoding on their side.
    """
    chosen: tuple[int, str, int, str] | None = None  # (index, codec, payload type, remote host)
    for index, stream in enumerate(offer.media):
        if stream.media != "audio" or stream.port == 0 or stream.proto.upper() != "RTP/AVP":
            continue
        host = offer.media_connection(stream)
        if host is None:
            raise SdpError("audio stream without a connection address")
        for payload_type in stream.formats:
            name = _codec_name(stream, payload_type)
            if name is not None and name in supported:
                chosen = (index, name, payload_type, host)
                break
        if chosen is not None:
            break
    if chosen is None:
        raise NoCommonCodec("no offered audio stream carries a codec we support")
    index, codec, payload_type, remote_host = chosen
    offered = offer.media[index]
    event_pt = _telephone_event_pt(offered)
    direction = _ANSWER_DIRECTION[offer.media_direction(offered)]
    answer = SessionDescription(
        origin=_origin(session_id, session_version, local_host),
        session_name="-",
        connection=local_host,
        media=[
            _audio_stream(local_port, codec, payload_type, event_pt, direction)
            if i == index
            else _rejected(m)
            for i, m in enumerate(offer.media)
        ],
    )
    negotiated = NegotiatedMedia(
        remote_host=remote_host,
        remote_port=offered.port,
        payload_type=payload_type,
        codec=codec,
        telephone_event_pt=event_pt,
        ptime=ANSWER_PTIME,
        direction=direction,
    )
    return answer, negotiated


def build_offer(
    *,
    local_host: str,
    local_port: int,
    session_id: int,
    session_version: int = 1,
    codecs: tuple[str, ...] = ("PCMU", "PCMA"),
    telephone_event_pt: int = 101,
) -> SessionDescription:
    unknown = [codec for codec in codecs if codec not in _G711_PAYLOAD_TYPES]
    if unknown or not codecs:
        raise ValueError(f"can only offer PCMU and PCMA, not {unknown or 'nothing'}")
    formats = [_G711_PAYLOAD_TYPES[codec] for codec in codecs] + [telephone_event_pt]
    stream = MediaDescription(
        "audio", local_port, "RTP/AVP", formats, ptime=ANSWER_PTIME, direction="sendrecv"
    )
    for codec in codecs:
        stream.rtpmap[_G711_PAYLOAD_TYPES[codec]] = f"{codec}/8000"
    stream.rtpmap[telephone_event_pt] = "telephone-event/8000"
    stream.fmtp[telephone_event_pt] = TELEPHONE_EVENTS
    return SessionDescription(
        origin=_origin(session_id, session_version, local_host),
        session_name="-",
        connection=local_host,
        media=[stream],
    )


def parse_answer(offer: SessionDescription, answer: SessionDescription) -> NegotiatedMedia:
    """What to send where, from the answer to our offer (RFC 3264 section 7)."""
    if len(answer.media) != len(offer.media):
        raise SdpError(f"answer has {len(answer.media)} media lines, the offer had {len(offer.media)}")
    for offered, answered in zip(offer.media, answer.media, strict=True):
        if offered.media != "audio" or answered.media != "audio" or answered.port == 0 or offered.port == 0:
            continue
        host = answer.media_connection(answered)
        if host is None:
            raise SdpError("audio stream without a connection address")
        offered_codecs = {_codec_name(offered, pt) for pt in offered.formats}
        for payload_type in answered.formats:
            name = _codec_name(answered, payload_type)
            if name is not None and name in _G711_PAYLOAD_TYPES and name in offered_codecs:
                return NegotiatedMedia(
                    remote_host=host,
                    remote_port=answered.port,
                    payload_type=payload_type,
                    codec=name,
                    telephone_event_pt=_telephone_event_pt(answered),
                    ptime=answered.ptime or ANSWER_PTIME,
                    direction=_ANSWER_DIRECTION[answer.media_direction(answered)],
                )
    raise NoCommonCodec("the answer accepted no audio stream with a codec we offered")

"""Twilio Media Streams, the bidirectional WebSocket protocol of `<Connect><Stream>`, without any I/O.

Like h11, a `MediaStreamConnection` turns one received text message into one typed event (`receive`)
and builds the text of the messages we send (`media`, `mark`, `clear`). It owns no socket and no clock:
the WebSocket endpoint (telephony.twilio.endpoint) feeds it and writes what it returns.

Message shapes follow Twilio's "Media Streams - WebSocket Messages" reference:

- from Twilio: `connected` {protocol, version}; `start` {sequenceNumber, streamSid, start: {streamSid,
  accountSid, callSid, tracks, customParameters, mediaFormat: {encoding, sampleRate, channels}}};
  `media` {sequenceNumber, streamSid, media: {track, chunk, timestamp, payload}}; `dtmf` {sequenceNumber,
  streamSid, dtmf: {track, digit}}; `mark` {sequenceNumber, streamSid, mark: {name}}; `stop`
  {sequenceNumber, streamSid, stop: {accountSid, callSid}}. Numbers inside are strings ("1").
- to Twilio: `media` {streamSid, media: {payload}}, `mark` {streamSid, mark: {name}}, `clear` {streamSid}.

What the peer gets wrong raises a `RemoteProtocolError` subclass; all but `UnsupportedMediaFormat` leave
the connection usable, so the endpoint logs, counts and carries on with the next message.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "EXPECTED_MEDIA_FORMAT",
    "FRAME_MS",
    "Connected",
    "DtmfReceived",
    "LocalProtocolError",
    "MalformedMessage",
    "MarkReceived",
    "MediaFormat",
    "MediaReceived",
    "MediaStreamConnection",
    "MediaStreamEvent",
    "OutOfOrderMessage",
    "RemoteProtocolError",
    "StreamStarted",
    "StreamState",
    "StreamStats",
    "StreamStopped",
    "UnexpectedMessage",
    "UnknownEvent",
    "UnsupportedMediaFormat",
]

FRAME_MS: Final = 20
_BYTES_PER_MS: Final = 8  # mu-law at 8 kHz: one byte per sample
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")


# --- errors, split by who is at fault ----------------------------------------------------------------
class RemoteProtocolError(Exception):
    """Twilio (or whatever is on the other end) sent something this protocol does not allow."""

    fatal = False  # True when the stream cannot go on (nothing after it can be understood)


class MalformedMessage(RemoteProtocolError):
    """Not JSON, not an object, or a field missing or of the wrong type."""


class UnknownEvent(RemoteProtocolError):
    """An `event` this implementation does not know; ignored so that protocol additions do not end calls."""


class UnexpectedMessage(RemoteProtocolError):
    """A well-formed message at the wrong time: media before `start`, a second `start`, data after `stop`,
    or a `streamSid` that is not this stream's."""


class OutOfOrderMessage(RemoteProtocolError):
    """A `sequenceNumber` or media `chunk` that is not after the last one seen: a duplicate or a replay."""


class UnsupportedMediaFormat(RemoteProtocolError):
    """`start` announced audio we cannot decode (Media Streams documents mu-law, 8000 Hz, mono only)."""

    fatal = True


class LocalProtocolError(Exception):
    """Our own code misused the connection, e.g. sent media before the stream started (a bug here)."""


# --- events -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str
    sample_rate: int
    channels: int


EXPECTED_MEDIA_FORMAT: Final = MediaFormat("audio/x-mulaw", 8000, 1)


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class StreamStarted:
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str]
    media_format: MediaFormat


@dataclass(frozen=True, slots=True)
class MediaReceived:
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes  # mu-law, any length (Twilio sends 20 ms = 160 bytes)
    # Audio missing before this chunk, from the timestamps: the endpoint fills it with silence so the
    # agent's stream time (VAD hangover, turn timing) keeps following the caller's.
    gap_ms: int = 0


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    track: str
    digit: str


@dataclass(frozen=True, slots=True)
class MarkReceived:
    name: str


@dataclass(frozen=True, slots=True)
class StreamStopped:
    account_sid: str
    call_sid: str


MediaStreamEvent = Connected | StreamStarted | MediaReceived | DtmfReceived | MarkReceived | StreamStopped


class StreamState(enum.Enum):
    AWAITING_START = "awaiting-start"  # `connected` may or may not have arrived yet
    STREAMING = "streaming"
    STOPPED = "stopped"


@dataclass(slots=True)
class StreamStats:
    messages: int = 0
    media_messages: int = 0
    malformed: int = 0
    unexpected: int = 0
    unknown_events: int = 0
    out_of_order: int = 0
    sequence_gaps: int = 0  # messages missing between two sequence numbers
    media_gap_ms: int = 0  # audio missing according to media timestamps
    marks_sent: int = 0
    clears_sent: int = 0


# --- field access that raises MalformedMessage --------------------------------------------------------
def _object(message: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = message.get(key)
    if not isinstance(value, dict):
        raise MalformedMessage(f"{key!r} must be an object")
    return value


def _string(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedMessage(f"{key!r} must be a non-empty string")
    return value


def _counter(message: Mapping[str, Any], key: str) -> int:
    """A decimal count sent as a string ("1"); a JSON integer is taken too."""
    value = message.get(key)
    if isinstance(value, bool):
        raise MalformedMessage(f"{key!r} must be a decimal number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise MalformedMessage(f"{key!r} must be a decimal number, got {value!r}")
    if number < 0:
        raise MalformedMessage(f"{key!r} must not be negative")
    return number


def _integer(message: Mapping[str, Any], key: str) -> int:
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessage(f"{key!r} must be an integer")
    return value


@dataclass(slots=True)
class _Sequencing:
    last_sequence: int | None = None
    last_chunk: int | None = None
    next_timestamp_ms: int | None = None


class MediaStreamConnection:
    """The protocol state of one Media Stream: what has been received, and builders for what we send."""

    def __init__(self) -> None:
        self.state = StreamState.AWAITING_START
        self.stats = StreamStats()
        self.started: StreamStarted | None = None
        self._connected_seen = False
        self._seq = _Sequencing()

    @property
    def stream_sid(self) -> str:
        if self.started is None:
            raise LocalProtocolError("the stream has not started: no streamSid yet")
        return self.started.stream_sid

    # --- receiving ----------------------------------------------------------------------------------
    def receive(self, text: str | bytes) -> MediaStreamEvent:
        """Parse and check one WebSocket message; raises a RemoteProtocolError for a bad one."""
        self.stats.messages += 1
        try:
            return self._receive(text)
        except UnknownEvent:
            self.stats.unknown_events += 1
            raise
        except OutOfOrderMessage:
            self.stats.out_of_order += 1
            raise
        except UnexpectedMessage:
            self.stats.unexpected += 1
            raise
        except RemoteProtocolError:
            self.stats.malformed += 1
            raise

    def _receive(self, text: str | bytes) -> MediaStreamEvent:
        try:
            message = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedMessage(f"not JSON: {exc}") from None
        if not isinstance(message, dict):
            raise MalformedMessage("a message must be a JSON object")
        event = message.get("event")
        if not isinstance(event, str):
            raise MalformedMessage("'event' must be a string")
        if event == "connected":
            return self._on_connected(message)
        if event not in ("start", "media", "dtmf", "mark", "stop"):
            raise UnknownEvent(f"unknown event {event[:40]!r}")
        if self.state is StreamState.STOPPED:
            raise UnexpectedMessage(f"{event!r} after 'stop'")
        if event == "start":
            return self._on_start(message)
        if self.state is StreamState.AWAITING_START:
            raise UnexpectedMessage(f"{event!r} before 'start'")
        if _string(message, "streamSid") != self.stream_sid:
            raise UnexpectedMessage(f"{event!r} for another stream")
        if event == "media":
            return self._on_media(message)
        self._check_sequence(message)
        if event == "dtmf":
            dtmf = _object(message, "dtmf")
            digit = _string(dtmf, "digit")
            if digit not in DTMF_DIGITS:
                raise MalformedMessage(f"not a DTMF digit: {digit[:8]!r}")
            return DtmfReceived(track=_string(dtmf, "track"), digit=digit)
        if event == "mark":
            return MarkReceived(name=_string(_object(message, "mark"), "name"))
        stop = _object(message, "stop")
        stopped = StreamStopped(account_sid=_string(stop, "accountSid"), call_sid=_string(stop, "callSid"))
        self.state = StreamState.STOPPED
        return stopped

    def _on_connected(self, message: Mapping[str, Any]) -> Connected:
        if self._connected_seen or self.state is not StreamState.AWAITING_START:
            raise UnexpectedMessage("a second 'connected'")
        connected = Connected(protocol=_string(message, "protocol"), version=_string(message, "version"))
        self._connected_seen = True
        return connected

    def _on_start(self, message: Mapping[str, Any]) -> StreamStarted:
        if self.state is not StreamState.AWAITING_START:
            raise UnexpectedMessage("a second 'start'")
        sequence = _counter(message, "sequenceNumber")
        start = _object(message, "start")
        tracks = start.get("tracks")
        if not isinstance(tracks, list) or not all(isinstance(track, str) for track in tracks):
            raise MalformedMessage("'tracks' must be a list of strings")
        parameters = start.get("customParameters", {})
        if not isinstance(parameters, dict) or not all(
            isinstance(value, str) for value in parameters.values()
        ):
            raise MalformedMessage("'customParameters' must map names to strings")
        media_format = _object(start, "mediaFormat")
        started = StreamStarted(
            stream_sid=_string(start, "streamSid"),
            account_sid=_string(start, "accountSid"),
            call_sid=_string(start, "callSid"),
            tracks=tuple(tracks),
            custom_parameters=dict(parameters),
            media_format=MediaFormat(
                encoding=_string(media_format, "encoding"),
                sample_rate=_integer(media_format, "sampleRate"),
                channels=_integer(media_format, "channels"),
            ),
        )
        top_sid = message.get("streamSid")
        if top_sid is not None and top_sid != started.stream_sid:
            raise MalformedMessage("'streamSid' differs from 'start.streamSid'")
        if started.media_format != EXPECTED_MEDIA_FORMAT:
            raise UnsupportedMediaFormat(f"cannot decode {started.media_format}")
        self.started = started
        self.state = StreamState.STREAMING
        self._seq.last_sequence = sequence
        return started

    def _on_media(self, message: Mapping[str, Any]) -> MediaReceived:
        media = _object(message, "media")
        chunk = _counter(media, "chunk")
        timestamp = _counter(media, "timestamp")
        try:
            payload = base64.b64decode(_string(media, "payload"), validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage("'payload' is not base64") from None
        track = _string(media, "track")
        seq = self._seq
        if seq.last_chunk is not None and chunk <= seq.last_chunk:
            raise OutOfOrderMessage(f"media chunk {chunk} after chunk {seq.last_chunk}")
        if seq.next_timestamp_ms is not None and timestamp + FRAME_MS <= seq.next_timestamp_ms:
            # More than a frame behind the audio already received: a replay, not jitter.
            raise OutOfOrderMessage(f"media timestamp {timestamp} ms, expected {seq.next_timestamp_ms} ms")
        self._check_sequence(message)
        gap = 0
        if seq.next_timestamp_ms is not None and timestamp - seq.next_timestamp_ms >= FRAME_MS:
            gap = timestamp - seq.next_timestamp_ms
            self.stats.media_gap_ms += gap
        seq.last_chunk = chunk
        seq.next_timestamp_ms = timestamp + len(payload) // _BYTES_PER_MS
        self.stats.media_messages += 1
        return MediaReceived(track=track, chunk=chunk, timestamp_ms=timestamp, payload=payload, gap_ms=gap)

    def _check_sequence(self, message: Mapping[str, Any]) -> None:
        sequence = _counter(message, "sequenceNumber")
        last = self._seq.last_sequence
        if last is not None:
            if sequence <= last:
                raise OutOfOrderMessage(f"sequenceNumber {sequence} after {last}")
            self.stats.sequence_gaps += sequence - last - 1
        self._seq.last_sequence = sequence

    # --- sending ------------------------------------------------------------------------------------
    def media(self, mulaw: bytes) -> str:
        """A `media` message playing these mu-law bytes (no file header: raw 8 kHz samples)."""
        if not mulaw:
            raise LocalProtocolError("a media message needs audio")
        return self._outgoing("media", media={"payload": base64.b64encode(mulaw).decode("ascii")})

    def mark(self, name: str) -> str:
        """A `mark`: Twilio echoes it back once the audio sent before it has been played."""
        if not name:
            raise LocalProtocolError("a mark needs a name")
        self.stats.marks_sent += 1
        return self._outgoing("mark", mark={"name": name})

    def clear(self) -> str:
        """A `clear`: Twilio drops the audio it has buffered but not yet played."""
        self.stats.clears_sent += 1
        return self._outgoing("clear")

    def _outgoing(self, event: str, **body: dict[str, str]) -> str:
        if self.state is not StreamState.STREAMING:
            raise LocalProtocolError(f"cannot send {event!r} while the stream is {self.state.value}")
        return json.dumps({"event": event, "streamSid": self.stream_sid, **body}, separators=(",", ":"))

"""MediaStreamConnection fed messages shaped as in Twilio's Media Streams reference, and broken ones."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from telephony.twilio.stream import (
    Connected,
    DtmfReceived,
    LocalProtocolError,
    MalformedMessage,
    MarkReceived,
    MediaReceived,
    MediaStreamConnection,
    OutOfOrderMessage,
    StreamStarted,
    StreamState,
    StreamStopped,
    UnexpectedMessage,
    UnknownEvent,
    UnsupportedMediaFormat,
)

STREAM = "MZ18ad3ab5a668481ce02b83e7395059f0"
ACCOUNT = "AC25e16e9a716a4a1786a7c83f58e30482"
CALL = "CA5ba28bd4fa6fb4c14e1f7a8b0a0ea1c2"

CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start(sequence: int = 1, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "accountSid": ACCOUNT,
        "streamSid": STREAM,
        "callSid": CALL,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"caller": "+15550100002"},
    }
    body.update(overrides)
    return {"event": "start", "sequenceNumber": str(sequence), "start": body, "streamSid": STREAM}


def media(sequence: int, chunk: int, timestamp: int, payload: bytes = b"\xff" * 160) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": str(sequence),
        "media": {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str(timestamp),
            "payload": base64.b64encode(payload).decode(),
        },
        "streamSid": STREAM,
    }


def started() -> MediaStreamConnection:
    connection = MediaStreamConnection()
    connection.receive(json.dumps(CONNECTED))
    connection.receive(json.dumps(start()))
    return connection


def test_a_whole_stream_in_order() -> None:
    connection = MediaStreamConnection()
    assert connection.receive(json.dumps(CONNECTED)) == Connected("Call", "1.0.0")
    event = connection.receive(json.dumps(start()))
    assert isinstance(event, StreamStarted)
    assert (event.stream_sid, event.call_sid, event.account_sid) == (STREAM, CALL, ACCOUNT)
    assert event.tracks == ("inbound",)
    assert event.custom_parameters == {"caller": "+15550100002"}
    assert connection.started == event

    first = connection.receive(json.dumps(media(2, 1, 0, b"\x01" * 160)))
    assert first == MediaReceived("inbound", 1, 0, b"\x01" * 160)
    dtmf = {
        "event": "dtmf",
        "streamSid": STREAM,
        "sequenceNumber": "3",
        "dtmf": {"track": "inbound_track", "digit": "5"},
    }
    assert connection.receive(json.dumps(dtmf)) == DtmfReceived("inbound_track", "5")
    mark = {"event": "mark", "sequenceNumber": "4", "streamSid": STREAM, "mark": {"name": "f12"}}
    assert connection.receive(json.dumps(mark)) == MarkReceived("f12")
    stop = {
        "event": "stop",
        "sequenceNumber": "5",
        "streamSid": STREAM,
        "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    }
    assert connection.receive(json.dumps(stop)) == StreamStopped(ACCOUNT, CALL)
    assert connection.state is StreamState.STOPPED
    assert connection.stats.malformed == connection.stats.unexpected == 0


def test_outgoing_messages_have_the_documented_shape() -> None:
    connection = started()
    assert json.loads(connection.media(b"\x7f" * 160)) == {
        "event": "media",
        "streamSid": STREAM,
        "media": {"payload": base64.b64encode(b"\x7f" * 160).decode()},
    }
    assert json.loads(connection.mark("f50")) == {
        "event": "mark",
        "streamSid": STREAM,
        "mark": {"name": "f50"},
    }
    assert json.loads(connection.clear()) == {"event": "clear", "streamSid": STREAM}
    assert (connection.stats.marks_sent, connection.stats.clears_sent) == (1, 1)


def test_nothing_can_be_sent_before_start_or_after_stop() -> None:
    connection = MediaStreamConnection()
    with pytest.raises(LocalProtocolError):
        connection.media(b"\xff" * 160)
    connection = started()
    stop = {
        "event": "stop",
        "sequenceNumber": "2",
        "streamSid": STREAM,
        "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    }
    connection.receive(json.dumps(stop))
    with pytest.raises(LocalProtocolError):
        connection.clear()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", MalformedMessage),
        ('{"event": "media"', MalformedMessage),
        ("[1, 2]", MalformedMessage),
        ('{"no": "event"}', MalformedMessage),
        (json.dumps({"event": "transcription", "streamSid": STREAM}), UnknownEvent),
        (
            json.dumps({**media(2, 1, 0), "media": {"track": "inbound", "chunk": "1", "timestamp": "0"}}),
            MalformedMessage,
        ),
        (
            json.dumps(
                {
                    **media(2, 1, 0),
                    "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "%%"},
                }
            ),
            MalformedMessage,
        ),
        (json.dumps({**media(2, 1, 0), "sequenceNumber": "two"}), MalformedMessage),
        (json.dumps({**media(2, 1, 0), "streamSid": "MZother"}), UnexpectedMessage),
        (
            json.dumps(
                {
                    "event": "dtmf",
                    "streamSid": STREAM,
                    "sequenceNumber": "2",
                    "dtmf": {"track": "inbound_track", "digit": "x"},
                }
            ),
            MalformedMessage,
        ),
        (
            json.dumps({"event": "mark", "streamSid": STREAM, "sequenceNumber": "2", "mark": {}}),
            MalformedMessage,
        ),
        (json.dumps(start(2)), UnexpectedMessage),
        (json.dumps(CONNECTED), UnexpectedMessage),
    ],
)
def test_bad_messages_raise_and_leave_the_stream_usable(text: str, error: type[Exception]) -> None:
    connection = started()
    with pytest.raises(error):
        connection.receive(text)
    # The next good message is taken as if nothing had happened.
    assert isinstance(connection.receive(json.dumps(media(3, 1, 0))), MediaReceived)
    assert connection.state is StreamState.STREAMING


def test_binary_garbage_is_malformed() -> None:
    connection = started()
    with pytest.raises(MalformedMessage):
        connection.receive(b"\xff\xfe\x00garbage")


def test_messages_before_start_are_unexpected() -> None:
    connection = MediaStreamConnection()
    with pytest.raises(UnexpectedMessage):
        connection.receive(json.dumps(media(2, 1, 0)))
    assert isinstance(connection.receive(json.dumps(start())), StreamStarted)
    assert connection.stats.unexpected == 1


def test_start_without_connected_is_accepted() -> None:
    assert isinstance(MediaStreamConnection().receive(json.dumps(start())), StreamStarted)


def test_other_media_formats_are_fatal() -> None:
    connection = MediaStreamConnection()
    wideband = start(mediaFormat={"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1})
    with pytest.raises(UnsupportedMediaFormat) as raised:
        connection.receive(json.dumps(wideband))
    assert raised.value.fatal
    assert connection.state is StreamState.AWAITING_START


def test_duplicates_and_replays_are_dropped_and_gaps_counted() -> None:
    connection = started()
    connection.receive(json.dumps(media(2, 1, 0)))
    with pytest.raises(OutOfOrderMessage):
        connection.receive(json.dumps(media(2, 1, 0)))  # the same message twice
    with pytest.raises(OutOfOrderMessage):
        connection.receive(json.dumps(media(3, 1, 20)))  # a new sequence number, but an old chunk
    with pytest.raises(OutOfOrderMessage):
        connection.receive(json.dumps(media(3, 2, 0)))  # timestamp going back a whole frame
    event = connection.receive(json.dumps(media(5, 2, 20)))  # sequence 3 and 4 never came
    assert isinstance(event, MediaReceived)
    assert event.gap_ms == 0
    assert connection.stats.sequence_gaps == 2
    assert connection.stats.out_of_order == 3


def test_a_timestamp_jump_is_reported_as_missing_audio() -> None:
    connection = started()
    connection.receive(json.dumps(media(2, 1, 0)))
    connection.receive(json.dumps(media(3, 2, 21)))  # 1 ms of jitter is not a gap
    event = connection.receive(json.dumps(media(4, 3, 101)))
    assert isinstance(event, MediaReceived)
    assert event.gap_ms == 60  # chunks for 41..100 ms are missing
    assert connection.stats.media_gap_ms == 60


def test_anything_after_stop_is_unexpected() -> None:
    connection = started()
    stop = {
        "event": "stop",
        "sequenceNumber": "2",
        "streamSid": STREAM,
        "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    }
    connection.receive(json.dumps(stop))
    with pytest.raises(UnexpectedMessage):
        connection.receive(json.dumps(media(3, 1, 0)))

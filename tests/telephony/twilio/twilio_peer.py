"""Twilio's side of a call, played for tests: the voice webhook, then a Media Stream in real time.

It follows the published formats (Programmable Voice webhooks, Media Streams WebSocket messages) and
Twilio's behaviour where the tests depend on it:
- requests are signed (`X-Twilio-Signature`) over the public URL, as Twilio signs what it requested;
- `connected` then `start` (sequenceNumber 1), then a `media` message every 20 ms by the clock, silence
  included, with sequenceNumber / chunk / timestamp counting up;
- audio received from the server is played out at 20 ms per frame; a received `mark` is echoed once the
  audio queued before it has been played; `clear` drops the queued audio and echoes its pending marks.
Everything received is timestamped, so tests can measure what a phone would.
"""

from __future__ import annotations

import array
import asyncio
import base64
import collections
import contextlib
import itertools
import json
import sys
import time
import urllib.parse
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import httpx
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

if sys.version_info < (3, 13):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
else:  # pragma: no cover
    import audioop

FRAME_S = 0.02
MULAW_FRAME = 160
SILENCE = b"\xff" * MULAW_FRAME
SPEECH_LEVEL = 300  # |sample| above this is speech; espeak's silence is exact zero
END_OF_TURN_SILENCE_S = 1.2

_sids = itertools.count(1)


def new_sid(prefix: str) -> str:
    return f"{prefix}{time.time_ns() % 10**12:012x}{next(_sids):020x}"


def is_speech(pcm16: bytes) -> bool:
    samples = array.array("h", pcm16)
    return max(samples, default=0) > SPEECH_LEVEL or -min(samples, default=0) > SPEECH_LEVEL


def trim_leading_silence(pcm16: bytes) -> bytes:
    samples = array.array("h", pcm16)
    for index, sample in enumerate(samples):
        if abs(sample) > SPEECH_LEVEL:
            start = index - index % 160
            return pcm16[start * 2 :]
    return b""


@dataclass
class StreamTwiml:
    url: str
    parameters: dict[str, str]


def parse_stream_twiml(body: str) -> StreamTwiml:
    root = ET.fromstring(body)
    stream = root.find("./Connect/Stream")
    assert stream is not None, body
    url = stream.get("url")
    assert url is not None
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return StreamTwiml(url, parameters)


@dataclass
class Utterance:
    """Caller audio queued for sending; its times are filled in as frames go out."""

    frames: collections.deque[tuple[bytes, bool]]  # (mu-law frame, voiced)
    first_voiced_sent_at: float | None = None
    last_voiced_sent_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Received:
    at: float
    message: dict[str, Any]


class TwilioPeer:
    def __init__(
        self,
        *,
        server: str,
        public: str,
        auth_token: str,
        from_number: str = "+15550100002",
        to_number: str = "+15550009999",
        account_sid: str | None = None,
        call_sid: str | None = None,
        echo_marks: bool = True,
    ) -> None:
        self.server = server.rstrip("/")  # where the server really listens: http://127.0.0.1:port
        self.public = public.rstrip("/")  # what Twilio would use: https://switchboard.example.test
        self.validator = RequestValidator(auth_token)
        self.from_number = from_number
        self.to_number = to_number
        self.account_sid = account_sid or new_sid("AC")
        self.call_sid = call_sid or new_sid("CA")
        self.stream_sid = new_sid("MZ")
        self.echo_marks = echo_marks  # False: a peer that loses (or never sends) mark echoes
        self.received: list[Received] = []
        self.heard: list[tuple[float, bool]] = []  # (played at, voiced) per agent frame
        self.marks_echoed: list[tuple[float, str]] = []
        self.clears: list[float] = []
        self.server_closed = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._dialled = False  # the voice webhook answered with a stream
        self._sequence = 0
        self._chunk = 0
        self._outgoing: collections.deque[Utterance] = collections.deque()
        self._playback: collections.deque[bytes | str] = collections.deque()  # frames and mark names
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> TwilioPeer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # A failed test must not leave its call holding one of the server's places.
        if self._ws is not None and not self.server_closed.is_set():
            await self.drop()
        elif self._ws is None and self._dialled:
            await self.post("/twilio/status", self.webhook_params("completed"))

    # --- webhooks -----------------------------------------------------------------------------------
    def webhook_params(self, status: str = "ringing", **extra: str) -> dict[str, str]:
        return {
            "CallSid": self.call_sid,
            "AccountSid": self.account_sid,
            "From": self.from_number,
            "To": self.to_number,
            "CallStatus": status,
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
            **extra,
        }

    def signature(self, path_or_url: str, params: dict[str, str] | None = None) -> str:
        url = path_or_url if "://" in path_or_url else self.public + path_or_url
        signature: str = self.validator.compute_signature(url, params or {})
        return signature

    async def post(
        self, path: str, params: dict[str, str], *, signature: str | None = "valid"
    ) -> httpx.Response:
        headers = {}
        if signature == "valid":
            headers["X-Twilio-Signature"] = self.signature(path, params)
        elif signature is not None:
            headers["X-Twilio-Signature"] = signature
        async with httpx.AsyncClient() as client:
            return await client.post(self.server + path, data=params, headers=headers, timeout=10)

    async def dial(self) -> StreamTwiml:
        response = await self.post("/twilio/voice", self.webhook_params())
        assert response.status_code == 200, response.text
        twiml = parse_stream_twiml(response.text)
        self._dialled = True
        return twiml

    # --- the Media Stream ---------------------------------------------------------------------------
    def local_url(self, public_url: str) -> str:
        """The server's real address for a ws(s):// URL on the public host."""
        parts = urllib.parse.urlsplit(public_url)
        local = urllib.parse.urlsplit(self.server)
        scheme = "wss" if local.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, local.netloc, parts.path, parts.query, ""))

    async def open_stream(self, twiml: StreamTwiml, *, signature: str | None = "valid") -> None:
        headers = {}
        if signature == "valid":
            headers["X-Twilio-Signature"] = self.signature(twiml.url)
        elif signature is not None:
            headers["X-Twilio-Signature"] = signature
        self._ws = await connect(self.local_url(twiml.url), additional_headers=headers, compression=None)
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"}, sequenced=False)
        await self.send(
            {
                "event": "start",
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": twiml.parameters,
                },
            }
        )
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._clock())]

    async def call(self) -> None:
        """The webhook, then the stream it points at."""
        await self.open_stream(await self.dial())

    async def send(self, message: dict[str, Any], *, sequenced: bool = True) -> None:
        if sequenced:
            self._sequence += 1
            message = {
                "event": message["event"],
                "sequenceNumber": str(self._sequence),
                **message,
                "streamSid": self.stream_sid,
            }
        await self.send_raw(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        assert self._ws is not None
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(data)

    def say(self, pcm16: bytes) -> Utterance:
        """Queue caller speech; it goes out one 20 ms frame per tick in place of silence."""
        frames: collections.deque[tuple[bytes, bool]] = collections.deque()
        for start in range(0, len(pcm16) - len(pcm16) % 320, 320):
            frame = pcm16[start : start + 320]
            frames.append((audioop.lin2ulaw(frame, 2), is_speech(frame)))
        utterance = Utterance(frames)
        self._outgoing.append(utterance)
        return utterance

    async def press(self, digit: str) -> None:
        await self.send({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": digit}})

    async def stop(self) -> None:
        """Hang up the way Twilio does: `stop`, then close the socket."""
        await self.send({"event": "stop", "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})
        await self.close()

    async def drop(self) -> None:
        """Lose the connection: no `stop`, no close handshake, the TCP connection just goes."""
        for task in self._tasks:
            task.cancel()
        if self._ws is not None:
            self._ws.transport.abort()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)

    async def _clock(self) -> None:
        """Every 20 ms by absolute deadline: send one caller frame, play one agent frame."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for tick in itertools.count(1):
            await asyncio.sleep(max(0.0, start + tick * FRAME_S - loop.time()))
            now = time.monotonic()
            await self._send_frame(now)
            await self._play_frame(now)

    async def _send_frame(self, now: float) -> None:
        frame, voiced = SILENCE, False
        utterance = self._outgoing[0] if self._outgoing else None
        if utterance is not None:
            frame, voiced = utterance.frames.popleft()
            if voiced:
                utterance.last_voiced_sent_at = now
                if utterance.first_voiced_sent_at is None:
                    utterance.first_voiced_sent_at = now
            if not utterance.frames:
                self._outgoing.popleft()
                utterance.done.set()
        self._chunk += 1
        media = {
            "track": "inbound",
            "chunk": str(self._chunk),
            "timestamp": str((self._chunk - 1) * 20),
            "payload": base64.b64encode(frame).decode(),
        }
        await self.send({"event": "media", "media": media})

    async def _play_frame(self, now: float) -> None:
        # Marks at the head: the audio before them finished playing at the end of the last tick.
        while self._playback and isinstance(self._playback[0], str):
            await self._echo_mark(str(self._playback.popleft()), now)
        if self._playback:
            frame = self._playback.popleft()
            assert isinstance(frame, bytes)
            self.heard.append((now, is_speech(audioop.ulaw2lin(frame, 2))))

    async def _echo_mark(self, name: str, now: float) -> None:
        if not self.echo_marks:
            return
        self.marks_echoed.append((now, name))
        await self.send({"event": "mark", "mark": {"name": name}})

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for data in self._ws:
                now = time.monotonic()
                message = json.loads(data)
                self.received.append(Received(now, message))
                event = message.get("event")
                if event == "media":
                    payload = base64.b64decode(message["media"]["payload"])
                    for start in range(0, len(payload), MULAW_FRAME):
                        self._playback.append(payload[start : start + MULAW_FRAME])
                elif event == "mark":
                    self._playback.append(str(message["mark"]["name"]))
                elif event == "clear":
                    self.clears.append(now)
                    pending = [item for item in self._playback if isinstance(item, str)]
                    self._playback.clear()
                    for name in pending:
                        await self._echo_mark(name, now)
        except ConnectionClosed:
            pass
        finally:
            self.server_closed.set()

    # --- listening ----------------------------------------------------------------------------------
    def speech_times(self) -> list[float]:
        return [at for at, voiced in self.heard if voiced]

    async def wait_agent_turn_end(self, timeout: float = 20.0) -> None:
        """Until the agent has spoken and then been silent for a while (or closed the stream)."""
        deadline = time.monotonic() + timeout
        start = len(self.speech_times())
        while time.monotonic() < deadline and not self.server_closed.is_set():
            times = self.speech_times()
            if len(times) > start and time.monotonic() - times[-1] >= END_OF_TURN_SILENCE_S:
                return
            await asyncio.sleep(0.05)
        assert self.server_closed.is_set(), "the agent did not finish its turn"

    async def wait_agent_speaking(self, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            times = self.speech_times()
            if times:
                return times[0]
            await asyncio.sleep(0.01)
        raise AssertionError("the agent never spoke")

    def messages(self, event: str) -> list[Received]:
        return [item for item in self.received if item.message.get("event") == event]


async def fetch_call_record(
    api: str, call_sid: str, *, ended: bool = True, timeout: float = 15
) -> dict[str, Any]:
    """The call from the transcript API, once the server has finished it if `ended`."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            response = await client.get(f"{api}/api/calls/{call_sid}")
            if response.status_code == 200:
                record: dict[str, Any] = response.json()
                if not ended or record["ended_at"] is not None:
                    return record
            assert time.monotonic() < deadline, f"call {call_sid} not ended in {timeout} s"
            await asyncio.sleep(0.1)

"""The HTTP side of Twilio: the voice webhook, the Media Streams WebSocket and call status callbacks.

- `POST /twilio/voice`: Twilio asks what to do with an inbound call. We answer `<Connect><Stream>` to our
  WebSocket, with the caller's number and the CallSid as `<Parameter>`s, or, over capacity, a polite
  message and a hang-up (or a `<Dial>` to the overflow number). Whatever goes wrong, Twilio gets TwiML:
  a 500 here would make the caller hear Twilio's "application error" message.
- `WS /twilio/stream`: one Media Stream per call, driven through `MediaStreamConnection` (parsing,
  order checks) and `TwilioCall` (the agent's transport), into the same `run_agent` as SIP calls.
- `POST /twilio/status`: call progress (ringing, in-progress, completed, busy, no-answer, failed...)
  recorded on the call row; late or repeated callbacks change nothing.

Every request, the WebSocket handshake included, must carry a valid `X-Twilio-Signature` (403 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response, WebSocket
from starlette.websockets import WebSocketState

from agent.transport import CallTransport
from telephony.media import MediaClock
from telephony.twilio.call import TwilioCall
from telephony.twilio.control import CallSnapshot, OutboundCallOptions, TwilioCallControl
from telephony.twilio.signature import (
    SIGNATURE_HEADER,
    FormParams,
    SignatureCheck,
    public_url_for,
    websocket_base,
)
from telephony.twilio.stream import MediaStreamConnection, RemoteProtocolError, StreamStarted
from telephony.twilio.twiml import (
    CALL_SID_PARAMETER,
    CALLED_PARAMETER,
    CALLER_PARAMETER,
    over_capacity_twiml,
    stream_twiml,
)

__all__ = [
    "CALL_STATUSES",
    "AgentHost",
    "CallInput",
    "CallStatusRecords",
    "TwilioEndpoint",
    "TwilioSettings",
    "place_agent_call",
]

log = logging.getLogger(__name__)

VOICE_PATH = "/twilio/voice"
STREAM_PATH = "/twilio/stream"
STATUS_PATH = "/twilio/status"
# The CallStatus values of Twilio's Call resource; `initiated` is the name of the first progress event and
# is taken as a status too, since callbacks are recorded as they come.
CALL_STATUSES = frozenset(
    {"queued", "initiated", "ringing", "in-progress", "completed", "busy", "no-answer", "failed", "canceled"}
)
TERMINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
START_TIMEOUT_S = 10.0  # Twilio sends `connected` and `start` right after the handshake
CLOSE_GRACE_S = 2.0
AGENT_EXIT_TIMEOUT_S = 10.0
XML = "application/xml"


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    auth_token: str | None
    account_sid: str | None = None
    public_url: str | None = None  # https://voice.example.com: what Twilio reaches us at
    validate_signatures: bool = True
    max_calls: int = 200  # shared with the SIP calls counted by `other_calls`
    overflow_number: str | None = None
    over_capacity_message: str = (
        "Thank you for calling. All of our lines are busy right now. Please call again in a few minutes."
    )
    # A call admitted by the voice webhook holds its place this long while its stream connects.
    admission_hold_s: float = 30.0


class CallInput(Protocol):
    """What a transport feeds: the agent's call session."""

    def on_audio(self, frame: bytes) -> None: ...

    def on_dtmf(self, digit: str) -> None: ...


class CallStatusRecords(Protocol):
    def record_status(
        self,
        call_id: str,
        status: str,
        *,
        from_number: str | None,
        to: str | None,
        direction: str | None,
        duration_s: int | None,
        answered_by: str | None,
        at: dt.datetime,
    ) -> bool: ...


class AgentHost(Protocol):
    """The process that runs agents (switchboard.server.Switchboard)."""

    @property
    def clock(self) -> MediaClock: ...

    @property
    def executor(self) -> Executor: ...

    @property
    def call_log(self) -> CallStatusRecords: ...

    async def run_agent(
        self,
        *,
        call_id: str,
        transport: CallTransport,
        caller_number: str,
        to_uri: str,
        transport_name: str,
        ended: asyncio.Event,
        attach: Callable[[CallInput], None],
        hangup_by: Callable[[], str | None],
    ) -> None: ...


def _status_time(value: str | None) -> dt.datetime:
    """Twilio's `Timestamp` (RFC 2822) when present and readable, else now."""
    if value:
        with contextlib.suppress(TypeError, ValueError):
            parsed = email.utils.parsedate_to_datetime(value)
            if parsed.tzinfo is not None:
                return parsed
    return dt.datetime.now(dt.UTC)


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def place_agent_call(
    control: TwilioCallControl,
    public_url: str,
    to: str,
    from_number: str,
    *,
    options: OutboundCallOptions | None = None,
) -> CallSnapshot:
    """Dial `to` from one of our Twilio numbers; when answered, the agent talks to them over a stream.

    The callee goes in the `caller` parameter: it is the customer the agent looks up and talks to. Status
    callbacks come to /twilio/status unless `options` says otherwise. Blocking: run it in a worker thread.
    """
    base = public_url.rstrip("/")
    return control.place_call(
        to,
        from_number,
        stream_url=websocket_base(base) + STREAM_PATH,
        parameters={CALLER_PARAMETER: to, CALLED_PARAMETER: from_number},
        options=options or OutboundCallOptions(status_callback=base + STATUS_PATH),
    )


class TwilioEndpoint:
    """The three Twilio routes and the bookkeeping they share (admitted and streaming calls)."""

    def __init__(
        self,
        settings: TwilioSettings,
        host: AgentHost,
        *,
        other_calls: Callable[[], int] = lambda: 0,
        control: TwilioCallControl | None = None,
    ) -> None:
        self.settings = settings
        self._host = host
        self._other_calls = other_calls
        self._signatures = SignatureCheck(settings.auth_token, enforce=settings.validate_signatures)
        if control is None and settings.account_sid and settings.auth_token:
            control = TwilioCallControl(settings.account_sid, settings.auth_token)
        self.control = control
        self._admitted: dict[str, float] = {}  # CallSid -> monotonic deadline for its stream
        self.calls: dict[str, TwilioCall] = {}  # CallSid -> live stream

    # --- capacity -----------------------------------------------------------------------------------
    def active_calls(self) -> int:
        now = time.monotonic()
        for sid in [sid for sid, deadline in self._admitted.items() if deadline < now]:
            del self._admitted[sid]
        return self._other_calls() + len(self.calls) + len(self._admitted.keys() - self.calls.keys())

    def _admit(self, call_sid: str) -> bool:
        if call_sid in self._admitted or call_sid in self.calls:
            return True
        if self.active_calls() >= self.settings.max_calls:
            return False
        self._admitted[call_sid] = time.monotonic() + self.settings.admission_hold_s
        return True

    def stream_url(self, request_base: str) -> str:
        base = self.settings.public_url or request_base
        return websocket_base(base).rstrip("/") + STREAM_PATH

    # --- routes -------------------------------------------------------------------------------------
    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route(VOICE_PATH, self.voice, methods=["POST"], include_in_schema=False)
        router.add_api_route(STATUS_PATH, self.status, methods=["POST"], include_in_schema=False)
        router.add_api_websocket_route(STREAM_PATH, self.stream)
        return router

    async def _signed_form(self, request: Request) -> FormParams | None:
        # Twilio posts application/x-www-form-urlencoded; parsed here rather than with Starlette's form
        # parser, which needs python-multipart. Blank values stay: Twilio signs them too.
        body = (await request.body()).decode("utf-8")
        params = FormParams.from_pairs(parse_qsl(body, keep_blank_values=True))
        url = public_url_for(self.settings.public_url, str(request.url))
        if self._signatures.is_valid(url, params, request.headers.get(SIGNATURE_HEADER)):
            return params
        log.warning("rejected %s from %s: bad or missing signature", request.url.path, request.client)
        return None

    async def voice(self, request: Request) -> Response:
        try:
            params = await self._signed_form(request)
        except (UnicodeDecodeError, ValueError) as exc:
            log.warning("unreadable voice webhook from %s: %s", request.client, exc)
            return Response(status_code=400)
        if params is None:
            return Response(status_code=403)
        try:
            return await self._answer(request, params)
        except Exception:
            log.exception("voice webhook failed; telling the caller we are busy")
            return self._over_capacity()

    async def _answer(self, request: Request, params: FormParams) -> Response:
        call_sid = params.first("CallSid")
        if not call_sid:
            return Response(status_code=400)
        caller = params.first("From") or "anonymous"
        called = params.first("To") or ""
        if not self._admit(call_sid):
            log.warning("call %s from %s turned away: %d calls active", call_sid, caller, self.active_calls())
            return self._over_capacity()
        status = params.first("CallStatus")
        if status in CALL_STATUSES:
            try:
                await self._record_status(call_sid, status, params)
            except Exception:  # the call can still be answered; the agent logs it when it starts
                log.exception("could not record status %s of call %s", status, call_sid)
        parameters = {CALLER_PARAMETER: caller, CALLED_PARAMETER: called, CALL_SID_PARAMETER: call_sid}
        twiml = stream_twiml(self.stream_url(str(request.base_url)), parameters)
        return Response(content=twiml, media_type=XML)

    def _over_capacity(self) -> Response:
        twiml = over_capacity_twiml(self.settings.over_capacity_message, self.settings.overflow_number)
        return Response(content=twiml, media_type=XML)

    async def status(self, request: Request) -> Response:
        try:
            params = await self._signed_form(request)
        except (UnicodeDecodeError, ValueError) as exc:
            log.warning("unreadable status callback from %s: %s", request.client, exc)
            return Response(status_code=400)
        if params is None:
            return Response(status_code=403)
        call_sid = params.first("CallSid")
        status = params.first("CallStatus")
        if not call_sid or status not in CALL_STATUSES:
            return Response(status_code=400)
        try:
            await self._record_status(call_sid, status, params)
        except Exception:
            # Twilio can do nothing about an error here: a 500 would only fill its debugger.
            log.exception("could not record status %s of call %s", status, call_sid)
        if status in TERMINAL_STATUSES:
            self._admitted.pop(call_sid, None)
        return Response(status_code=204)

    async def _record_status(self, call_sid: str, status: str, params: FormParams) -> None:
        records = self._host.call_log
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._host.executor,
            lambda: records.record_status(
                call_sid,
                status,
                from_number=params.first("From"),
                to=params.first("To"),
                direction=params.first("Direction"),
                duration_s=_int_or_none(params.first("CallDuration")),
                answered_by=params.first("AnsweredBy"),
                at=_status_time(params.first("Timestamp")),
            ),
        )

    # --- the Media Stream ---------------------------------------------------------------------------
    async def stream(self, websocket: WebSocket) -> None:
        url = public_url_for(self.settings.public_url, str(websocket.url), websocket=True)
        if not self._signatures.is_valid(url, None, websocket.headers.get(SIGNATURE_HEADER)):
            log.warning(
                "rejected a Media Stream from %s: bad or missing %s", websocket.client, SIGNATURE_HEADER
            )
            await _deny(websocket)
            return
        await websocket.accept()
        connection = MediaStreamConnection()
        started = await _await_start(websocket, connection)
        if started is None:
            await _close_quietly(websocket)
            return
        if started.call_sid in self.calls:
            log.warning("second stream for call %s refused", started.call_sid)
            await _close_quietly(websocket, code=1008)
            return
        if not self._admit(started.call_sid):
            log.warning("stream of call %s refused: at capacity", started.call_sid)
            await _close_quietly(websocket, code=1013)
            return
        await _StreamSession(self, websocket, connection, started).run()


class _StreamSession:
    """One accepted Media Stream: a reader task, a writer task and the agent, until the call ends."""

    def __init__(
        self,
        endpoint: TwilioEndpoint,
        websocket: WebSocket,
        connection: MediaStreamConnection,
        started: StreamStarted,
    ) -> None:
        self._endpoint = endpoint
        self._websocket = websocket
        self._connection = connection
        self._started = started
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        host = endpoint._host
        self.call = TwilioCall(
            connection=connection,
            clock=host.clock,
            send=self._outbox.put_nowait,
            close=self._close,
            control=endpoint.control,
            executor=host.executor,
        )

    async def run(self) -> None:
        endpoint, call, started = self._endpoint, self.call, self._started
        endpoint.calls[started.call_sid] = call
        endpoint._admitted.pop(started.call_sid, None)
        parameters = started.custom_parameters
        writer = self._writer = asyncio.create_task(self._write())

        def attach(session: CallInput) -> None:
            call.audio_sink = session.on_audio
            call.dtmf_sink = session.on_dtmf

        agent = asyncio.create_task(
            endpoint._host.run_agent(
                call_id=started.call_sid,
                transport=call,
                caller_number=parameters.get(CALLER_PARAMETER) or "anonymous",
                to_uri=parameters.get(CALLED_PARAMETER) or "",
                transport_name="twilio",
                ended=call.ended,
                attach=attach,
                hangup_by=lambda: call.hangup_by,
            )
        )
        log.info("call %s: Media Stream %s started", started.call_sid, started.stream_sid)
        reader = self._reader = asyncio.create_task(self._read())
        try:
            # wait() rather than await: a reader cancelled after our own close is not our cancellation.
            await asyncio.wait({reader})
            if not reader.cancelled() and reader.exception() is not None:
                log.error("call %s: stream reader failed", started.call_sid, exc_info=reader.exception())
        finally:
            reader.cancel()
            call.remote_ended()  # no-op when the agent hung up first
            await self._wind_down(agent, writer)

    async def _wind_down(self, agent: asyncio.Task[None], writer: asyncio.Task[None]) -> None:
        endpoint, call, call_sid = self._endpoint, self.call, self._started.call_sid
        # The agent writes the end of the call to the CRM on its way out: give it time to.
        done, _ = await asyncio.wait({agent}, timeout=AGENT_EXIT_TIMEOUT_S)
        if agent not in done:
            log.error("call %s: agent still running after the stream ended", call_sid)
            agent.cancel()
        failed = agent not in done or agent.cancelled() or agent.exception() is not None
        if agent in done and not agent.cancelled() and agent.exception() is not None:
            log.error("call %s: agent failed", call_sid, exc_info=agent.exception())
        if failed:
            # The agent did not get to log the end of the call; what Twilio would report will do.
            with contextlib.suppress(Exception):
                await endpoint._record_status(call_sid, "completed", FormParams())
        self._outbox.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, CLOSE_GRACE_S)
        await _close_quietly(self._websocket)
        endpoint.calls.pop(call_sid, None)
        stats = self._connection.stats
        log.info(
            "call %s: stream over (%s); %d messages, %d malformed, %d unexpected, %d out of order, "
            "%d missing, %d ms of audio missing; %d frames sent, %d heard, %d dropped by barge-in",
            call_sid,
            call.hangup_by,
            stats.messages,
            stats.malformed,
            stats.unexpected,
            stats.out_of_order,
            stats.sequence_gaps,
            stats.media_gap_ms,
            call.frames_played,
            call.frames_heard,
            call.frames_dropped,
        )

    async def _read(self) -> None:
        call, connection = self.call, self._connection
        while not call.ended.is_set():
            text = await _next_message(self._websocket)
            if text is None:
                if not call.ended.is_set():
                    log.info("call %s: socket closed without 'stop'", call.call_sid)
                return
            try:
                event = connection.receive(text)
            except RemoteProtocolError as exc:
                log.info("call %s: ignored message: %s", call.call_sid, exc)
                if exc.fatal:
                    return
                continue
            call.on_event(event)

    async def _write(self) -> None:
        while True:
            text = await self._outbox.get()
            if text is None:
                return
            try:
                await self._websocket.send_text(text)
            except Exception:  # the peer went away; the reader notices and ends the call
                return

    async def _close(self) -> None:
        """The agent hangs up: let what is queued go out, then close the socket."""
        self._outbox.put_nowait(None)
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_GRACE_S)
        await _close_quietly(self._websocket)
        # The pending read ends when the peer answers the close; one that never does is not waited for.
        if self._reader is not None:
            asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._reader.cancel)


async def _next_message(websocket: WebSocket) -> str | bytes | None:
    """The next data message, or None once the socket is closed (by either side)."""
    if websocket.client_state is not WebSocketState.CONNECTED:
        return None
    try:
        message = await websocket.receive()
    except Exception:
        return None
    if message["type"] != "websocket.receive":
        return None
    text: str | None = message.get("text")
    if text is not None:
        return text
    data: bytes | None = message.get("bytes")
    return data if data is not None else ""


async def _await_start(websocket: WebSocket, connection: MediaStreamConnection) -> StreamStarted | None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.warning("Media Stream from %s sent no 'start'", websocket.client)
            return None
        try:
            text = await asyncio.wait_for(_next_message(websocket), remaining)
        except TimeoutError:
            continue
        if text is None:
            return None
        try:
            event = connection.receive(text)
        except RemoteProtocolError as exc:
            log.info("Media Stream before 'start': ignored message: %s", exc)
            if exc.fatal:
                return None
            continue
        if isinstance(event, StreamStarted):
            return event


async def _deny(websocket: WebSocket) -> None:
    """Refuse the handshake with HTTP 403: a close before accept is answered that way by the server."""
    await websocket.close(code=1008)


async def _close_quietly(websocket: WebSocket, code: int = 1000) -> None:
    if websocket.client_state is WebSocketState.DISCONNECTED or websocket.application_state is (
        WebSocketState.DISCONNECTED
    ):
        return
    with contextlib.suppress(Exception):
        await websocket.close(code=code)
